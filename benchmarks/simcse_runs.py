"""STS-B results of the sentence recipes (SimCSE, ESimCSE) from a strong and a weak start, several seeds.

Each run is ``python -m training.simcse [esimcse] ...`` in its own process, on real unlabelled
sentences (by default ``python -m training.corpora stsb,wordnet,fortunes``: the unique STS-B train
sentences without their scores, WordNet's usage examples and Debian's fortunes, 72,233 lines),
evaluated by the recipe: STS-B dev Spearman every ``--eval-every`` steps with the best weights kept,
STS-B test Spearman of the best weights at the end.

Starts:

- ``strong``: all-MiniLM-L6-v2 itself (STS-B test 82.03): the recipes must not degrade it;
- ``weak``: the first two of all-MiniLM-L6-v2's six transformer layers with its mean pooling
  (built here, ``runs/simcse-bench/minilm-l2``): a real pretrained encoder, three times cheaper per step,
  that scores far below the full model on STS-B, so that the recipes have room to improve it;
- any folder ``embedhub.load`` reads.

Run (5 to 8 minutes per weak-start run on 2 CPU cores at the defaults)::

    python benchmarks/simcse_runs.py --start weak --seeds 0 1 2             # SimCSE and ESimCSE, 3 seeds
    python benchmarks/simcse_runs.py --start strong --lr 1e-5 --steps 100 --seeds 0

It prints a table (start, each run, mean and standard deviation over seeds), and writes
``<out>/results.json`` and ``<out>/dev_curves.png`` (STS-B dev Spearman against step, one line a run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from harness import RECIPE_SOURCES, prepare, run_recipe

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per recipe: mean and standard deviation of STS-B test over seeds, and the gain over the start."""
    out = {}
    for recipe in dict.fromkeys(r["recipe"] for r in runs):
        tests = [r["test"] for r in runs if r["recipe"] == recipe]
        start = runs[0]["start_test"]
        out[recipe] = {"mean": statistics.fmean(tests), "std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                       "min": min(tests), "max": max(tests), "gain": statistics.fmean(tests) - start, "n": len(tests)}
    return out


def plot(runs: list[dict[str, Any]], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"simcse": "tab:blue", "esimcse": "tab:orange"}
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for r in runs:
        steps, dev = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot(steps, dev, marker="o", ms=3, lw=1, color=colours.get(r["recipe"]),
                label=f"{r['recipe']} seed {r['seed']}: test {r['test']:.2f}")
    ax.set(xlabel="optimiser step", ylabel="STS-B dev Spearman x100", title=title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", default="weak", help="weak | strong | a model folder or name")
    parser.add_argument("--data", help="a sentence file (default: built from --sources)")
    parser.add_argument("--sources", default=RECIPE_SOURCES,
                        help="training.corpora sources for the default sentence file")
    parser.add_argument("--recipes", nargs="+", default=["simcse", "esimcse"], choices=["simcse", "esimcse"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "simcse-bench")
    parser.add_argument("extra", nargs="*", help="more recipe settings, key=value")
    args = parser.parse_args()
    work = args.out
    work.mkdir(parents=True, exist_ok=True)
    start, data = prepare(args.start, args.data, work, args.sources)
    label = args.start if args.start in ("weak", "strong") else Path(args.start).name
    runs = []
    for seed in args.seeds:
        for recipe in args.recipes:
            out = work / f"{label}-{recipe}-seed{seed}"
            r = run_recipe(recipe, start, data, out, seed=seed, steps=args.steps, lr=args.lr,
                           eval_every=args.eval_every, batch_size=args.batch_size, threads=args.threads,
                           extra=args.extra)
            print(f"{recipe:8s} seed {seed}: STS-B test {r['start_test']:.2f} -> {r['test']:.2f} "
                  f"(best dev {r['best_dev']:.2f} at step {r['best_step']}; {r['wall_seconds']:.0f} s, "
                  f"{r['sentences_per_second']} sentences/s)", flush=True)
            runs.append(r)
    summary = summarise(runs)
    print(f"\nstart {label} ({start}): STS-B test {runs[0]['start_test']:.2f}")
    print("| recipe | STS-B test (mean ± sd over seeds) | min-max | gain over start | seeds |")
    print("|---|---|---|---|---|")
    for recipe, s in summary.items():
        print(f"| {recipe} | {s['mean']:.2f} ± {s['std']:.2f} | {s['min']:.2f}-{s['max']:.2f} | "
              f"{s['gain']:+.2f} | {s['n']} |")
    title = f"{label} start (test {runs[0]['start_test']:.2f}), lr {args.lr:g}, batch {args.batch_size}"
    plot(runs, work / f"{label}_dev_curves.png", title)
    record = {"start": start, "label": label, "data": str(data), "args": {k: str(v) for k, v in vars(args).items()},
              "summary": summary, "runs": runs, "cpu": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    (work / f"{label}_results.json").write_text(json.dumps(record, indent=2))
    print(f"\nwrote {work / f'{label}_results.json'} and {work / f'{label}_dev_curves.png'}")


if __name__ == "__main__":
    main()
