"""Peak memory of encoding many sentences: embedhub (torch) vs sentence-transformers, all-MiniLM-L6-v2.

For each size (default 2,000 / 20,000 / 200,000 sentences) and each side, a fresh Python
process loads the model, builds the input list (the unique sentences of the STS-B *train*
split, columns 5 and 6, in file order, cycled to reach the size), warms up on 256 of them,
then resets the kernel's peak-RSS mark (``/proc/self/clear_refs``) and encodes all of them
once. The figure is the peak resident set during that call (``VmHWM``) minus the resident set
just before it: what encoding added on top of the loaded model and the inputs. The output
itself (``N x 384`` float32) is part of it; "beyond output" is the rest. Both sides use the
same batch size, torch thread count and normalisation; the first 1,000 rows of the two sides
are compared by cosine.

Run (once, on a quiet machine: 200,000 sentences take minutes per side on 2 cores)::

    . .venv/bin/activate
    python benchmarks/encode_memory.py                          # 2000 20000 200000, both sides
    python benchmarks/encode_memory.py --sizes 2000 20000       # quicker
    python benchmarks/encode_memory.py --json memory.json       # also write the figures as JSON
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    minilm_folder,
    print_table,
    proc_status_kib,
    run_cli,
    stsb_pairs,
    unique_sentences,
    uptime_line,
)

SIDES = ("embedhub", "sentence-transformers")
MODEL_ALIAS = "all-MiniLM-L6-v2"
WARMUP = 256
COMPARE_ROWS = 1000


# ---------------------------------------------------------------------------- child: one side, one size
def model_folder(args: argparse.Namespace) -> Path:
    """``--model``, else the packaged all-MiniLM-L6-v2."""
    if args.model is not None:
        return args.model
    return minilm_folder()


def sentence_pool(path: Path | None) -> list[str]:
    """Every unique sentence of STS-B train or an STS-B csv (:func:`harness.stsb_pairs`), in file order."""
    return list(unique_sentences(stsb_pairs(path)))


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(side: str, n: int, args: argparse.Namespace, rows_file: Path) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    folder = model_folder(args)
    pool = sentence_pool(args.data)
    texts = [pool[i % len(pool)] for i in range(n)]
    if side == "embedhub":
        import embedhub

        model = embedhub.load(str(folder), device="cpu")

        def encode(x: list[str]) -> np.ndarray:
            return model.encode(x, batch_size=args.batch_size, show_progress_bar=False)
    else:
        from sentence_transformers import SentenceTransformer

        peer = SentenceTransformer(str(folder), device="cpu", local_files_only=True)

        def encode(x: list[str]) -> np.ndarray:
            return peer.encode(
                x, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False,
                convert_to_numpy=True,
            )

    encode(texts[:WARMUP])
    gc.collect()
    reset = _reset_peak()
    before = proc_status_kib("VmRSS")
    start = time.perf_counter()
    out = encode(texts)
    seconds = time.perf_counter() - start
    peak = proc_status_kib("VmHWM")  # without a reset (refused): the peak of the whole process
    out = np.asarray(out)
    np.save(rows_file, out[:COMPARE_ROWS])
    return {
        "side": side,
        "n": n,
        "unique_sentences": len(pool),
        "shape": list(out.shape),
        "dtype": str(out.dtype),
        "seconds": seconds,
        "rss_before_mib": before / 1024,
        "peak_mib": peak / 1024,
        "growth_mib": (peak - before) / 1024,
        "output_mib": out.nbytes / 2**20,
        "peak_reset": reset,
    }


# ---------------------------------------------------------------------------- parent
def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return re.search(r"^Model name:\s+(.+)$", text, re.M).group(1).strip()
    except (OSError, subprocess.CalledProcessError, AttributeError):
        return platform.processor() or "?"


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    print(f"uptime: {uptime_line()}")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            rows: dict[str, Any] = {}
            for side in args.sides:
                rows_file = Path(tmp) / f"{side}-{n}.npy"
                cmd = [sys.executable, __file__, "--child", side, str(n), "--rows-file", str(rows_file),
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
                cmd += ["--data", str(args.data)] if args.data is not None else []
                if args.model is not None:
                    cmd += ["--model", str(args.model)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{side} n={n} failed:\n{proc.stderr[-4000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"  {side:22s} n={n:>7}: +{r['growth_mib']:.1f} MiB in {r['seconds']:.1f} s", flush=True)
                results.append(r)
                rows[side] = np.load(rows_file)
            if len(rows) == 2:
                a, b = rows.values()
                cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
                for r in results[-2:]:
                    r["min_cosine_first_rows"] = float(cos.min())
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": args.threads,
        "batch_size": args.batch_size,
        "platform": platform.platform(),
        "model": str(args.model) if args.model is not None else MODEL_ALIAS,
        "results": results,
    }


def report(r: dict[str, Any]) -> None:
    print(
        f"\n{Path(r['model']).name}, STS-B train sentences cycled, batch {r['batch_size']}, {r['torch_threads']} torch "
        f"threads, CPU {r['cpu']} ({r['cpus']} CPUs); each row a fresh process\n"
    )
    rows = [["side", "sentences", "output", "peak RSS growth", "beyond output", "growth / output", "s", "sent/s"]]
    for x in r["results"]:
        rows.append(
            [
                x["side"],
                f"{x['n']:,}",
                f"{x['output_mib']:.1f} MiB",
                f"{x['growth_mib']:.1f} MiB",
                f"{x['growth_mib'] - x['output_mib']:.1f} MiB",
                f"{x['growth_mib'] / x['output_mib']:.2f}x",
                f"{x['seconds']:.1f}",
                f"{x['n'] / x['seconds']:.0f}",
            ]
        )
    print_table(rows)
    cos = [x["min_cosine_first_rows"] for x in r["results"] if "min_cosine_first_rows" in x]
    if cos:
        print(f"\ncosine embedhub vs peer, first {COMPARE_ROWS} rows of each size: min {min(cos):.6f}")
    if not all(x["peak_reset"] for x in r["results"]):
        print("WARNING: /proc/self/clear_refs was refused: peaks include loading the model")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000, 200000])
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every process")
    p.add_argument("--data", type=Path, default=None,
                   help="an STS-B csv to take sentences from (default: STS-B train via embedhub.data)")
    p.add_argument("--model", type=Path, default=None,
                   help="a sentence-transformers model folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--child", nargs=2, metavar=("SIDE", "N"), help=argparse.SUPPRESS)
    p.add_argument("--rows-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.sizes + [args.batch_size, args.threads]) < 1:
        p.error("--sizes, --batch-size and --threads must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        side, n = args.child
        print(json.dumps(child(side, int(n), args, args.rows_file)))
        return 0
    return run_cli(lambda _=None: args, run, report)


if __name__ == "__main__":
    sys.exit(main())
