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
import importlib
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness  # before numpy and torch: it records the load average the script started at
import numpy as np
import torch
from harness import (
    MAX_TOKENS,
    Encoder,
    add_data_option,
    add_json_option,
    args_record,
    embedhub_encoder,
    first_sentences,
    machine,
    minilm_folder,
    minilm_tokenizer,
    offline,
    package_versions,
    padded_tokens,
    peak_rss_mib,
    print_load,
    print_table,
    row_cosines,
    run_cli,
    st_encoder,
    stsb_pairs,
    timed,
)

LOAD_AT_START = harness.LOAD_AT_START
offline()

MODEL_ALIAS = "all-MiniLM-L6-v2"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------- inputs
def load_sentences(path: Path | None, n: int) -> list[str]:
    """The first ``n`` unique sentences of STS-B (:func:`harness.stsb_pairs`), in file order."""
    return first_sentences(stsb_pairs(path), n, path or "STS-B train")


def token_stats(folder: Path, sentences: list[str], batch_size: int) -> dict[str, Any]:
    """Tokens after truncation at ``MAX_TOKENS`` (special tokens included), from the model's tokenizer.json.

    ``padded_*`` is the work actually computed when batches are cut after sorting by length:
    embedhub sorts by token count, sentence-transformers by character count.
    """
    tok = minilm_tokenizer(folder)
    lengths = np.array([len(e.ids) for e in tok.encode_batch(sentences)], dtype=np.int64)
    by_tokens = np.argsort(-lengths, kind="stable")
    by_chars = np.argsort([-len(s) for s in sentences], kind="stable")
    return {
        "tokens": int(lengths.sum()),
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "truncated": int((lengths >= MAX_TOKENS).sum()),
        "padded_embedhub": padded_tokens(lengths, by_tokens, batch_size),
        "padded_peer": padded_tokens(lengths, by_chars, batch_size),
    }


# ---------------------------------------------------------------------------- encoders
def make_embedhub(device: str, dtype: torch.dtype, batch_size: int) -> Encoder:
    return embedhub_encoder(MODEL_ALIAS, device, batch_size, dtype=dtype)


def make_peer(folder: Path, device: str, dtype: torch.dtype, batch_size: int) -> Encoder:
    return st_encoder(folder, device, batch_size, dtype=None if dtype == torch.float32 else dtype)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = args.device, DTYPES[args.dtype]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    if dtype == torch.float16 and not device.startswith("cuda"):
        raise SystemExit("--dtype float16 is for --device cuda; on CPU use float32 (or bfloat16)")

    load = LOAD_AT_START
    print_load(load)

    torch.set_num_threads(args.threads)
    folder = minilm_folder()
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
        "machine": machine(
            {"torch_threads": torch.get_num_threads()},
            load,
            gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
        ),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **_versions()},
        "args": args_record(args),
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
    return package_versions(("embedhub", "sentence-transformers", "transformers", "tokenizers"), missing="?")


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
    add_data_option(p)
    add_json_option(p)
    args = p.parse_args(argv)
    if min(args.n, args.batch_size, args.threads, args.reps) < 1 or args.warmup < 0:
        p.error("--n, --batch-size, --threads and --reps must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_cli(parse_args, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
