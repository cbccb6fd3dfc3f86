"""Batch embedding jobs: ``embed_corpus`` (local engine, Ray with 1 and 2 actors) vs a plain ``encode`` loop,
and the job's peak memory as the corpus grows.

**Throughput** (all-MiniLM-L6-v2, the first ``--n`` unique STS-B sentences of train+dev+test, cycled with a
counter when ``--n`` is larger, written as JSONL with an id field). In one process, the torch sides with
``--threads`` threads alternate A B A B for ``--reps`` repetitions:

- ``plain``: read the JSONL into a list, then ``for each --shard-rows slice: model.encode(slice)``
  (the loop users write by hand; nothing is written to disk);
- ``local``: ``embed_corpus(engine="local")`` into a new folder (reading, shards, manifest included).

Then, once each, ``embed_corpus(engine="ray", actors=1)`` and ``actors=2`` on a local Ray instance started
beforehand with ``--threads`` CPUs (its start-up is reported apart; each actor has 1 CPU and 1 torch thread).
Every job's vectors are compared with the plain loop's (max abs difference).

**Memory**: for each of ``--mem-sizes`` rows of synthetic short texts ("<sentence> #<i>") a fresh process
runs the local engine with a 1-layer 384-dim BERT (MiniLM's tokenizer, random weights: the rows/s are
not MiniLM's, the memory of the job is what is measured) and reports its peak RSS (``VmHWM``). The same
rows as one float32 array would take rows x 384 x 4 bytes.

Run on a quiet machine::

    . .venv/bin/activate
    python benchmarks/embed_job.py                              # 20000 sentences, 3 reps; memory at 0.25M/1M/2M rows
    python benchmarks/embed_job.py --n 4000 --mem-sizes 100000  # quicker
    python benchmarks/embed_job.py --json embed_job.json
    python benchmarks/embed_job.py --no-ray --mem-sizes --device cuda --dtype float16   # on a GPU
    python benchmarks/embed_job.py --no-ray --mem-sizes --tiny --batch-size 256  # the job's own CPU work, on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import minilm_folder, proc_status_kib, unique_sentences


def sentences(n: int, stsb: Path | None = None) -> list[str]:
    """``n`` sentences: STS-B's unique ones (all splits; ``stsb``: a folder of it, default where embedhub.data finds
    it), repeated with a number when more are asked for."""
    from embedhub.data import read_stsb

    pairs = ((a, b) for split in ("train", "dev", "test") for a, b, _ in read_stsb(split, folder=stsb))
    base = list(unique_sentences(pairs))
    return [base[i] if i < len(base) else f"{base[i % len(base)]} #{i}" for i in range(n)]


def write_jsonl(path: Path, texts) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"id": f"r{i}", "text": t}) + "\n")


def minilm() -> str:
    return str(minilm_folder())


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``)."""
    return proc_status_kib("VmHWM") / 1024


# ---------------------------------------------------------------------------------------------- throughput
def throughput(args: argparse.Namespace, work: Path) -> dict:
    import torch

    import embedhub

    torch.set_num_threads(args.threads)
    corpus = work / "corpus.jsonl"
    write_jsonl(corpus, sentences(args.n, args.stsb))
    name = tiny_model(work / "tiny") if args.tiny else minilm()
    model = embedhub.load(name, device=args.device, dtype=args.dtype)

    def plain() -> np.ndarray:
        with open(corpus, encoding="utf-8") as fh:
            texts = [json.loads(line)["text"] for line in fh]
        parts = [model.encode(texts[s:s + args.shard_rows], batch_size=args.batch_size, show_progress_bar=False)
                 for s in range(0, len(texts), args.shard_rows)]
        return np.concatenate(parts)

    def job(engine: str, actors: int | None = None) -> np.ndarray:
        out = work / f"out-{engine}-{actors}"
        shutil.rmtree(out, ignore_errors=True)
        embedhub.embed_corpus(model if engine == "local" else name, corpus, out, engine=engine, actors=actors,
                              device=args.device, dtype=args.dtype, id_column="id", batch_size=args.batch_size,
                              shard_rows=args.shard_rows,
                              progress=False)
        return embedhub.read_embeddings(out).embeddings

    reference = plain()  # warm-up
    times: dict[str, list[float]] = {"plain": [], "local": []}
    diffs: dict[str, float] = {}
    for _ in range(args.reps):
        for side, fn in (("plain", plain), ("local", lambda: job("local"))):
            t = time.perf_counter()
            emb = fn()
            times[side].append(time.perf_counter() - t)
            diffs[side] = float(np.abs(emb - reference).max())
    ratios = [p / loc for p, loc in zip(times["plain"], times["local"])]
    result = {"rows": args.n, "reps": args.reps, "model": "tiny (1 layer)" if args.tiny else "all-MiniLM-L6-v2",
              "times": times, "ratio_local_vs_plain": statistics.median(ratios),
              "ratios": ratios}
    if not args.no_ray:
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)
        result["ray_init_s"] = time.perf_counter() - t
        for actors in (1, 2):
            t = time.perf_counter()
            emb = job("ray", actors)
            times[f"ray-{actors}"] = [time.perf_counter() - t]
            diffs[f"ray-{actors}"] = float(np.abs(emb - reference).max())
        ray.shutdown()
    result["max_abs_diff_vs_plain"] = diffs
    result["rows_per_s"] = {k: args.n / statistics.median(v) for k, v in times.items()}
    return result


# ---------------------------------------------------------------------------------------------- memory
def tiny_model(folder: Path) -> str:
    """A 1-layer 384-dim BERT with MiniLM's tokenizer, random weights, saved by sentence-transformers."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf = folder / "hf"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=384, max_position_embeddings=128)
    transformers.BertModel(config).save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(Path(minilm()) / name, hf / name)
    st = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=64), Pooling(384, pooling_mode="mean")],
                             device="cpu")
    st.save(str(folder / "st"))
    return str(folder / "st")


def memory_child(args: argparse.Namespace) -> None:
    import torch

    import embedhub

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    result = embedhub.embed_corpus(args.model, args.corpus, args.out, id_column="id", shard_rows=args.shard_rows,
                                   batch_size=args.batch_size, progress=False)
    print(json.dumps({"rows": result.rows, "seconds": time.perf_counter() - t, "peak_rss_mib": peak_rss_mib()}))


def memory(args: argparse.Namespace, work: Path) -> list[dict]:
    model = tiny_model(work / "tiny")
    base = sentences(10_000)
    rows = []
    for size in args.mem_sizes:
        corpus = work / f"synthetic-{size}.jsonl"
        write_jsonl(corpus, (f"{base[i % len(base)]} #{i}" for i in range(size)))
        out = work / f"mem-{size}"
        cmd = [sys.executable, __file__, "--child-memory", "--model", model, "--corpus", str(corpus), "--out", str(out),
               "--threads", str(args.threads), "--shard-rows", str(args.shard_rows), "--batch-size",
               str(args.batch_size)]
        child = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
        child["one_array_mib"] = size * 384 * 4 / 2**20
        child["corpus_mib"] = corpus.stat().st_size / 2**20
        rows.append(child)
        print(f"  {size:>9} rows: peak RSS {child['peak_rss_mib']:.0f} MiB "
              f"(one float32 array: {child['one_array_mib']:.0f} MiB), {child['rows'] / child['seconds']:.0f} rows/s",
              file=sys.stderr)
        corpus.unlink()
        shutil.rmtree(out)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-rows", type=int, default=5000)
    p.add_argument("--mem-sizes", type=int, nargs="*", default=[250_000, 1_000_000, 2_000_000])
    p.add_argument("--no-ray", action="store_true")
    p.add_argument("--tiny", action="store_true",
                   help="the throughput part with the memory part's 1-layer BERT: a model fast enough on a CPU for "
                        "the job's own CPU work (reading, tokenising, writing) to show, as it does on a GPU")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the throughput part)")
    p.add_argument("--dtype", default=None, help="e.g. float16 on cuda (the throughput part)")
    p.add_argument("--stsb", type=Path, default=None,
                   help="STS-B folder (default: where embedhub.data finds it)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_memory:
        memory_child(args)
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        report = {"throughput": throughput(args, work)}
        t = report["throughput"]
        label = "a 1-layer 384-dim BERT (random weights)" if args.tiny else "all-MiniLM-L6-v2"
        print(f"\n{t['rows']} sentences, {label}, batch {args.batch_size}, shards of {args.shard_rows}")
        print("| side | rows/s | s/pass (median) | max abs diff vs plain |\n|---|---:|---:|---:|")
        for side, secs in t["times"].items():
            print(f"| {side} | {t['rows_per_s'][side]:.1f} | {statistics.median(secs):.2f} | "
                  f"{t['max_abs_diff_vs_plain'][side]:.1e} |")
        print(f"\nlocal engine / plain loop throughput: median {t['ratio_local_vs_plain']:.3f} "
              f"(per rep: {', '.join(f'{r:.3f}' for r in t['ratios'])})")
        if "ray_init_s" in t:
            print(f"ray.init (not in the Ray rows above): {t['ray_init_s']:.1f} s")
        if args.mem_sizes:
            report["memory"] = memory(args, work)
            print("\n| rows | corpus JSONL | peak RSS of the job | as one float32 array | rows/s (1-layer model) |")
            print("|---:|---:|---:|---:|---:|")
            for m in report["memory"]:
                print(f"| {m['rows']:,} | {m['corpus_mib']:.0f} MiB | {m['peak_rss_mib']:.0f} MiB | "
                      f"{m['one_array_mib']:.0f} MiB | {m['rows'] / m['seconds']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
