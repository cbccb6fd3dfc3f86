"""Unsupervised SimCSE: embedhub's recipe against sentence-transformers' own training, side by side.

The peer is sentence-transformers' SimCSE: ``MultipleNegativesRankingLoss`` (scale 20, i.e.
temperature 0.05, cosine) on (s, s) pairs through ``SentenceTransformerTrainer``, dropout on, so
the two columns are two dropout views. Both sides get the same start model, sentences, batch size,
optimiser steps, learning rate (AdamW, cosine decay, no warm-up, gradient clipping at 1.0), max
length (32 tokens) and thread count; each runs in its own process.

1. **Quality**: one run of ``--steps`` steps each (seed 0); STS-B test Spearman of the final
   weights (embedhub's recipe evaluates only at the end here, so it keeps the final weights too).
2. **Throughput**: ``--reps`` alternating pairs of short runs (``--speed-steps`` steps), the
   training time of each: embedhub's from its log (the training loop, without evaluation), the
   peer's ``train_runtime``. Sentences per second = steps x batch / seconds; the median of each side,
   and the median of the per-pair ratios (above 1.0 means embedhub is faster).

Run (on a quiet machine; about 15 minutes on 2 CPU cores at the defaults)::

    python benchmarks/simcse_vs_st.py                        # weak start (MiniLM's first 2 layers)
    python benchmarks/simcse_vs_st.py --start strong --lr 1e-5 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import offline, prepare, run_recipe  # noqa: E402

offline()

PEER = "sentence-transformers"


def peer_train(start: str, data: str, out: str, *, steps: int, lr: float, batch_size: int, max_length: int,
               threads: int, seed: int, sts_dir: str, evaluate: bool) -> dict[str, Any]:
    """sentence-transformers' unsupervised SimCSE (runs in a child process: ``--peer-child``)."""
    import numpy as np
    import torch
    from datasets import Dataset
    from scipy.stats import spearmanr
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    torch.set_num_threads(threads)
    model = SentenceTransformer(start, device="cpu")
    eval_length = model.max_seq_length
    model.max_seq_length = max_length
    sentences = [s.strip() for s in open(data, encoding="utf-8") if s.strip()]
    dataset = Dataset.from_dict({"anchor": sentences, "positive": sentences})
    args = SentenceTransformerTrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr, max_steps=steps, warmup_steps=0,
        lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0, seed=seed, save_strategy="no",
        report_to=[], logging_steps=max(1, steps // 5), use_cpu=True, dataloader_drop_last=True,
        disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset,
                                         loss=losses.MultipleNegativesRankingLoss(model, scale=20.0))
    result = trainer.train()
    record: dict[str, Any] = {"train_seconds": result.metrics["train_runtime"]}
    if evaluate:
        from embedhub.data import read_stsb

        rows = read_stsb("test", folder=sts_dir or None)
        model.max_seq_length = eval_length
        model.eval()
        a = model.encode([r[0] for r in rows], normalize_embeddings=True, batch_size=128)
        b = model.encode([r[1] for r in rows], normalize_embeddings=True, batch_size=128)
        gold = np.array([r[2] for r in rows])
        record["test"] = float(spearmanr((a * b).sum(1), gold).statistic * 100)
    return record


def run_peer(start: str, data: Path, out: Path, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--peer-child", json.dumps({"start": start, "data": str(data), "out": str(out),
                                                                **kw})]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"the peer's run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--peer-child"]:
        print(json.dumps(peer_train(**json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", default="weak", help="weak | strong | a model folder")
    parser.add_argument("--data", help="a sentence file (default: STS-B train, WordNet examples, fortunes)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed-steps", type=int, default=40)
    parser.add_argument("--reps", type=int, default=3, help="alternating speed pairs (0: none)")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "simcse-bench")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} at start: throughput figures will be noisy", file=sys.stderr)
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    start, data = prepare(args.start, args.data, work)
    sts_dir = ""  # STS-B where embedhub.data finds it (`embedhub data stsb` gets it)
    common = dict(lr=args.lr, batch_size=args.batch_size, threads=args.threads)
    ours_extra = [f"max_length={args.max_length}", f"sts_dir={sts_dir}"]
    peer_kw = dict(max_length=args.max_length, sts_dir=sts_dir, **common)
    record: dict[str, Any] = {"start": start, "data": str(data), "args": {k: str(v) for k, v in vars(args).items()},
                              "load_at_start": load, "date": time.strftime("%Y-%m-%d")}
    if not args.skip_quality:
        ours = run_recipe("simcse", start, data, work / "vs-ours", seed=0, steps=args.steps, eval_every=args.steps,
                          extra=ours_extra, **common)
        peer = run_peer(start, data, work / "vs-peer", steps=args.steps, seed=0, evaluate=True, **peer_kw)
        record["quality"] = {"start_test": ours["start_test"], "embedhub_test": ours["test"], "peer_test": peer["test"]}
        print(f"STS-B test Spearman after {args.steps} steps: start {ours['start_test']:.2f}, "
              f"embedhub {ours['test']:.2f}, {PEER} {peer['test']:.2f}", flush=True)
    if args.reps:
        speed: list[dict[str, float]] = []
        n = args.speed_steps * args.batch_size
        for rep in range(args.reps):
            ours = run_recipe("simcse", start, data, work / "speed-ours", seed=rep, steps=args.speed_steps,
                              eval_every=args.speed_steps, extra=ours_extra, **common)
            peer = run_peer(start, data, work / "speed-peer", steps=args.speed_steps, seed=rep, evaluate=False,
                            **peer_kw)
            row = {"embedhub": n / ours["train_seconds"], "peer": n / peer["train_seconds"]}
            row["ratio"] = row["embedhub"] / row["peer"]
            speed.append(row)
            print(f"rep {rep}: embedhub {row['embedhub']:.1f} sentences/s, {PEER} {row['peer']:.1f}, "
                  f"ratio {row['ratio']:.3f}", flush=True)
        med = {k: statistics.median(r[k] for r in speed) for k in ("embedhub", "peer", "ratio")}
        record["speed"] = {"reps": speed, "median": med}
        print(f"\ntraining throughput (median of {args.reps}): embedhub {med['embedhub']:.1f} sentences/s, "
              f"{PEER} {med['peer']:.1f}; ratio {med['ratio']:.3f}")
    name = "vs_st_quality.json" if not args.reps else "vs_st_speed.json" if args.skip_quality else "vs_st.json"
    (work / name).write_text(json.dumps(record, indent=2))
    print(f"wrote {work / name}")


if __name__ == "__main__":
    main()
