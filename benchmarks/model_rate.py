"""The model's own rate on ``serve_load.py``'s texts: ``embedhub.load(folder).encode`` at each batch size, in this
process, on ``--threads`` threads. No server can answer faster than its model runs: this is the ceiling of
``serve_load.py``'s throughput on the same machine.

Run on a quiet machine::

    python benchmarks/model_rate.py                       # short and long texts, batch sizes 1..128
    python benchmarks/model_rate.py --json rate.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import harness  # noqa: F401  (before numpy and torch: it records the load average the script started at)
import serve_load


def rates(batch_sizes: list[int], threads: int, seconds: float) -> dict[str, dict[int, float]]:
    """Sentences per second of ``encode`` for short and long texts at each batch size (best of 3 passes of at
    least ``seconds`` each)."""
    import torch
    from tqdm import tqdm

    import embedhub

    torch.set_num_threads(threads)
    folder = serve_load.minilm_folder()
    texts = serve_load.build_texts(None, 2000, 256, 200, folder)
    model = embedhub.load(str(folder), device="cpu", threads=threads)
    out: dict[str, dict[int, float]] = {}
    with tqdm(total=2 * len(batch_sizes), desc="batch sizes", unit="size") as bar:
        for kind in ("short", "long"):
            pool = texts[kind]
            model.encode(pool[:64], batch_size=64)  # warm-up
            out[kind] = {}
            for size in batch_sizes:
                best = 0.0
                for _ in range(3):
                    done, start, i = 0, time.perf_counter(), 0
                    while time.perf_counter() - start < seconds:
                        batch = [pool[(i + j) % len(pool)] for j in range(size)]
                        model.encode(batch, batch_size=size, show_progress_bar=False)
                        done, i = done + size, i + size
                    best = max(best, done / (time.perf_counter() - start))
                out[kind][size] = best
                bar.update(1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", default="1,4,8,16,32,64,128", help="comma-separated (1,4,8,16,32,64,128)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per pass, best of 3 (2)")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    if not sizes or min(sizes) < 1:
        p.error("--batch-sizes: positive integers, comma-separated")
    result = rates(sizes, args.threads, args.seconds)
    print("| batch size | " + " | ".join(str(s) for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for kind, row in result.items():
        print(f"| {kind} (sentences/s) | " + " | ".join(f"{row[s]:.1f}" for s in sizes) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({"threads": args.threads, "rates": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
