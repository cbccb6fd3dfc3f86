"""ONNX image-encoding speed: embedhub's exported open_clip ViT-B/32 image tower against open_clip on torch.

The model is open_clip's ViT-B-32 architecture with random weights
(``open_clip.create_model("ViT-B-32", pretrained=None)``: nothing is downloaded, and this script
refuses every network connection while it runs), saved in open_clip's hub format
(``open_clip_config.json`` + ``open_clip_model.safetensors``) into a temporary folder, exported
with ``export(folder, out)`` in a child process, and loaded with
``embedhub.load(out, backend="onnx", threads=N)``. Random weights run the same FLOPs as trained
ones; the cosines below compare two runtimes of the same weights.

Inputs: the first ``--images`` (256) Fashion-MNIST test images (``apt-get install
dataset-fashion-mnist``, read from ``/usr/share/datasets/fashion-mnist``) as RGB PIL images, else
crops of scikit-image's sample photos. Pixel tensors are made once with open_clip's own
preprocessing (``open_clip.image_transform``); rows 1 and 2 take exactly those tensors. Rows
(batch ``--batch-size``, ``--threads`` threads: ``torch.set_num_threads`` and onnxruntime
``intra_op_num_threads``):

1. open_clip torch fp32: ``model.encode_image(pixels)``, L2-normalised, under ``torch.no_grad`` (reference)
2. embedhub onnx fp32, image graph only, on the same pixel tensors (the loaded model's onnxruntime
   runner, which ``encode_image`` calls per batch)
3. embedhub onnx fp32, ``encode_image(PIL images)`` (embedhub's own preprocessing included)
4. open_clip torch fp32 with its preprocessing included (PIL -> ``image_transform`` -> ``encode_image``)
5. embedhub torch fp32, ``encode_image(PIL images)`` (context)
6. embedhub onnx int8 (``export(folder, out, quantize="int8")``), image graph only, same pixel tensors
7. embedhub onnx int8, ``encode_image(PIL images)``

Each row is loaded and warmed up once, then rows alternate (1 2 3 4 5 1 2 ...) for ``--reps``
repetitions; a ratio is the median over repetitions of (reference seconds / row seconds).

Run (on a quiet machine: check ``uptime`` first)::

    . .venv/bin/activate
    python benchmarks/onnx_image.py                 # 256 images, batch 32, 2 threads, 3 reps
    python benchmarks/onnx_image.py --json onnx_image.json

It prints the load average, the machine's fp32 matmul rate, the work (images, GFLOP per image from
the architecture, the ceiling in images/s), the export steps of the image graph and the graph as
onnxruntime runs it, then one row per encoder: images/s (median), ratio to row 1, min and mean
cosine of every image against row 1's embedding from the same repetition, effective GFLOP/s and
share of the matmul rate, load seconds, peak RSS after the row's load + warm-up and its growth.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness  # before numpy and torch: it records the load average the script started at
import numpy as np
import torch
from harness import (
    CpuWatch,
    args_record,
    graph_ops,
    machine,
    matmul_gflops,
    offline,
    one_line,
    package_versions,
    parse_with_json,
    peak_rss_mib,
    print_load,
    print_rows,
    print_table,
    row_cosines,
    rss_mib,
    run_cli,
    run_export,
)

LOAD_AT_START = harness.LOAD_AT_START
offline()

ARCH = "ViT-B-32"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
TARGET = 1.5  # the target for embedhub onnx over open_clip torch

Encoder = Callable[[], np.ndarray]  # one full pass over the benchmark's images


# ---------------------------------------------------------------------------- no network
class NetworkBlocked(OSError):
    pass


NETWORK_ATTEMPTS: list[str] = []


def block_network() -> None:
    """Refuse every TCP/UDP connection from this process (and record the attempt), so that a load
    that tries to download fails loudly instead of quietly fetching weights."""
    connect = socket.socket.connect

    def offline(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            NETWORK_ATTEMPTS.append(str(address))
            raise NetworkBlocked(f"network blocked by onnx_image.py: connect to {address}")
        return connect(sock, address)

    socket.socket.connect = offline  # type: ignore[method-assign]


# ---------------------------------------------------------------------------- inputs
def fashion_mnist(n: int, path: Path = FASHION_MNIST) -> list[Any]:
    """The first ``n`` test images of Fashion-MNIST (28x28 grey) as RGB PIL images."""
    from PIL import Image

    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, count, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051:
        raise ValueError(f"{path} is not an idx3 image file (magic {magic})")
    pixels = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    return [Image.fromarray(a, mode="L").convert("RGB") for a in pixels[:n]]


def skimage_crops(n: int) -> list[Any]:
    """``n`` RGB crops (varied positions and sizes) of scikit-image's sample photographs."""
    from PIL import Image
    from skimage import data

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "cat", "camera"):
        img = np.asarray(getattr(data, name)())
        photos.append(np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3])
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out.append(Image.fromarray(np.ascontiguousarray(img[top : top + ch, left : left + cw])))
    return out


def load_images(n: int) -> tuple[list[Any], str]:
    if FASHION_MNIST.is_file():
        return fashion_mnist(n), f"Fashion-MNIST test images 0-{n - 1} (28x28 grey -> RGB)"
    return skimage_crops(n), f"{n} crops of scikit-image sample photos (Fashion-MNIST not installed)"


# ---------------------------------------------------------------------------- model and work
def save_open_clip(model: torch.nn.Module, folder: Path) -> Path:
    """``model`` (open_clip ``ARCH``) in open_clip's hub format, which ``embedhub.load`` reads."""
    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": open_clip.get_model_config(ARCH), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def vit_gflop_per_image(vision_cfg: dict[str, Any], embed_dim: int) -> float:
    """Forward GFLOP of an open_clip ViT image tower for one image.

    Tokens L = patches + 1 (class token), width d, MLP width m: per layer QKV 2*L*d*3d, output
    projection 2*L*d*d, MLP 2*2*L*d*m, attention scores and weighted sum 2*2*L*L*d; plus the patch
    embedding (a matmul of patches x 3*p*p x d) and the final projection. Norms and GELU are left out.
    """
    size, patch, d, layers = (vision_cfg[k] for k in ("image_size", "patch_size", "width", "layers"))
    m = int(d * vision_cfg.get("mlp_ratio", 4.0))
    patches = (size // patch) ** 2
    L = patches + 1
    per_layer = 2 * L * d * 3 * d + 2 * L * d * d + 2 * 2 * L * d * m + 2 * 2 * L * L * d
    return (layers * per_layer + 2 * patches * 3 * patch * patch * d + 2 * d * embed_dim) / 1e9


# ---------------------------------------------------------------------------- the run
def timed(encode: Encoder) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = encode()
    return time.perf_counter() - start, out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import open_clip

    import embedhub

    print_load(LOAD_AT_START)
    block_network()
    torch.set_num_threads(args.threads)
    rate = matmul_gflops("cpu")
    print(f"matmul rate (cpu, {args.threads} torch threads, float32): {rate:.1f} GFLOP/s\n")

    images, source = load_images(args.images)
    model_cfg = open_clip.get_model_config(ARCH)
    gflop_image = vit_gflop_per_image(model_cfg["vision_cfg"], model_cfg["embed_dim"])
    bs, th = args.batch_size, args.threads
    tmp = tempfile.TemporaryDirectory(prefix="onnx-image-bench-")
    rows: list[dict[str, Any]] = []
    encoders: list[Encoder] = []
    peak_before = peak_after_imports = peak_rss_mib()
    held_before = rss_mib()

    def add_row(name: str, make: Callable[[], Encoder]) -> None:
        """Load (``make``) and warm up one row; record its load time and memory."""
        nonlocal peak_before, held_before
        print(f"loading + warm-up: {name} ...", flush=True)
        start = time.perf_counter()
        try:
            encode = make()
            load_s = time.perf_counter() - start
            timed(encode)
        except Exception as exc:  # a row that cannot run here is a row with its reason, not a crash
            if not rows:
                raise
            rows.append({"name": name, "error": one_line(exc)})
            return
        peak, held = peak_rss_mib(), rss_mib()
        rows.append({"name": name, "load_s": load_s, "peak_rss_mib": peak, "peak_growth_mib": peak - peak_before,
                     "rss_held_mib": held - held_before, "seconds": [], "ratios": [], "cos_min": 1.0,
                     "cos_means": [], "own_cpu_cores": [], "others_cpu_cores": []})  # fmt: skip
        encoders.append(encode)
        peak_before, held_before = peak, held

    # row 1 first, so that its memory is the open_clip model's; saving and exporting come after it
    model: Any = None
    preprocess: Any = None
    pixels = torch.empty(0)

    def open_clip_pixels() -> Encoder:
        nonlocal model, preprocess, pixels
        torch.manual_seed(0)
        model = open_clip.create_model(ARCH, pretrained=None, device="cpu").eval()
        preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
        pixels = torch.stack([preprocess(img) for img in images])

        def encode() -> np.ndarray:
            with torch.no_grad():
                out = [model.encode_image(pixels[s : s + bs], normalize=True) for s in range(0, len(pixels), bs)]
            return torch.cat(out).float().numpy()

        return encode

    add_row("open_clip torch fp32, pixel tensors (reference)", open_clip_pixels)

    folder = save_open_clip(model, Path(tmp.name) / "open_clip")
    peak_after_save = peak_rss_mib()
    print(f"exporting {ARCH} (random weights, both towers) ...", flush=True)
    exp = run_export("fp32", folder, Path(tmp.name) / "onnx", th, modality="image")
    peak_before, held_before = peak_rss_mib(), rss_mib()
    eh_onnx: Any = None

    def embedhub_onnx() -> Any:
        nonlocal eh_onnx
        if eh_onnx is None:
            eh_onnx = embedhub.load(exp.folder, backend="onnx", device="cpu", threads=th)
        return eh_onnx

    def embedhub_onnx_pixels(loaded: Any = None) -> Encoder:
        runner = (loaded or embedhub_onnx())._runners["image"]  # what encode_image runs on each batch
        arrays = pixels.numpy()

        def encode() -> np.ndarray:
            out = [runner({"pixel_values": arrays[s : s + bs]}) for s in range(0, len(arrays), bs)]
            return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()

        return encode

    def embedhub_pil(backend: str, loaded: Any = None) -> Encoder:
        m = loaded or (embedhub_onnx() if backend == "onnx" else embedhub.load(folder, device="cpu"))

        def encode() -> np.ndarray:
            return m.encode_image(images, batch_size=bs, show_progress_bar=False)

        return encode

    def open_clip_pil() -> Encoder:
        def encode() -> np.ndarray:
            out = []
            with torch.no_grad():
                for s in range(0, len(images), bs):
                    batch = torch.stack([preprocess(img) for img in images[s : s + bs]])
                    out.append(model.encode_image(batch, normalize=True))
            return torch.cat(out).float().numpy()

        return encode

    add_row("embedhub onnx fp32, pixel tensors (graph only)", embedhub_onnx_pixels)
    add_row("embedhub onnx fp32, encode_image(PIL)", lambda: embedhub_pil("onnx"))
    add_row("open_clip torch fp32, preprocess + encode_image", open_clip_pil)
    if not args.skip_torch_context:
        add_row("embedhub torch fp32, encode_image(PIL)", lambda: embedhub_pil("torch"))
    exp8 = None
    if not args.skip_int8:
        print(f"exporting {ARCH} int8 (~3 min on 2 cores, ~11 with per-node probes) ...", flush=True)
        exp8 = run_export("int8", folder, Path(tmp.name) / "onnx-int8", th, modality="image", quantize="int8")
        peak_before, held_before = peak_rss_mib(), rss_mib()
        int8_model = embedhub.load(exp8.folder, backend="onnx", device="cpu", threads=th)
        add_row("embedhub onnx int8, pixel tensors (graph only)", lambda: embedhub_onnx_pixels(int8_model))
        add_row("embedhub onnx int8, encode_image(PIL)", lambda: embedhub_pil("onnx", int8_model))
    live = [r for r in rows if "error" not in r]

    outs: list[np.ndarray] = []
    for rep in range(args.reps):
        print(f"rep {rep + 1}/{args.reps} ...", flush=True)
        outs = []
        for row, encode in zip(live, encoders):  # 1 2 3 ... 1 2 3 ...
            with CpuWatch() as cpu:
                seconds, out = timed(encode)
            row["seconds"].append(seconds)
            row["own_cpu_cores"].append(cpu.own)
            row["others_cpu_cores"].append(cpu.others)
            outs.append(out)
        for row, out in zip(live, outs):
            cos = row_cosines(out, outs[0])
            row["cos_min"] = min(row["cos_min"], float(cos.min()))
            row["cos_means"].append(float(cos.mean()))
            row["ratios"].append(live[0]["seconds"][-1] / row["seconds"][-1])

    peak_end = peak_rss_mib()  # before the graph inspection below
    n = len(images)
    for row in live:
        median = statistics.median(row["seconds"])
        row.update(
            images_per_s=n / median,
            median_ratio=statistics.median(row["ratios"]),
            cos_mean=statistics.fmean(row.pop("cos_means")),
            gflops=n * gflop_image / median,
            matmul_share=n * gflop_image / median / rate,
        )
    graph = graph_ops(exp.folder / "onnx" / "image.onnx", th)  # after the rows: it holds the graph in memory too
    # how different the images' embeddings are from each other (random weights can collapse them)
    spread = outs[0] @ outs[0].T
    off_diagonal = spread[~np.eye(len(spread), dtype=bool)]
    tmp.cleanup()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine({"threads": args.threads}, LOAD_AT_START, matmul_gflops=rate),
        "versions": versions(),
        "args": args_record(args),
        "images": n,
        "source": source,
        "arch": ARCH,
        "gflop_per_image": gflop_image,
        "export": {"seconds": exp.seconds, "steps": exp.steps, "gate": exp.gate},
        "export_int8": {"seconds": exp8.seconds, "steps": exp8.steps, "gate": exp8.gate} if exp8 else None,
        "graph": graph,
        "pairwise_cosine_of_reference": {"min": float(off_diagonal.min()), "mean": float(off_diagonal.mean())},
        "network_attempts": NETWORK_ATTEMPTS,
        "peak_rss_after_imports_mib": peak_after_imports,
        "peak_rss_after_save_mib": peak_after_save,
        "peak_rss_final_mib": peak_end,
        "rows": rows,
    }


def versions() -> dict[str, str]:
    packages = ("torch", "embedhub", "open_clip_torch", "onnxruntime", "onnx", "pillow")
    return {"python": platform.python_version(), **package_versions(packages)}


# ---------------------------------------------------------------------------- report
def report(r: dict[str, Any]) -> None:
    m, a, v = r["machine"], r["args"], r["versions"]
    ceiling = m["matmul_gflops"] / r["gflop_per_image"]
    print(
        f"\n{r['arch']} image tower (open_clip, random weights), {r['images']} images: {r['source']}; "
        f"{r['gflop_per_image']:.2f} GFLOP per image, {r['images'] * r['gflop_per_image']:.0f} GFLOP per pass"
    )
    print(
        f"cpu, {m['threads']} threads (torch and onnxruntime intra-op), batch {a['batch_size']}, 1 warm-up + "
        f"{a['reps']} alternating reps; matmul rate {m['matmul_gflops']:.1f} GFLOP/s (float32), so the ceiling is "
        f"{ceiling:.1f} images/s"
    )
    print(
        f"torch {v['torch']}, open_clip {v['open_clip_torch']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}; "
        f"network connections attempted: {len(r['network_attempts'])}\n"
    )
    steps = [["step", "nodes", "fused / key ops"]]
    for s in r["export"]["steps"]:
        steps.append([s["name"], str(s["nodes"]), ", ".join(f"{k} {n}" for k, n in s["ops"].items())])
    g = r["graph"]
    steps.append(["onnxruntime session (ORT_ENABLE_ALL)", str(g["session_nodes"]),
                  ", ".join(f"{k} {n}" for k, n in g["session_ops"].items())])  # fmt: skip
    print_table(steps, left=(0, 2))
    for s in r["export"]["steps"]:
        if s["note"]:
            print(f"  {s['name']}: {s['note']}")
    gate = r["export"]["gate"]
    print(
        f"export (both towers): {r['export']['seconds']:.1f} s; image parity gate min cosine "
        f"{gate['min_cosine']:.6f}, mean {gate['mean_cosine']:.6f}\n"
    )
    if r.get("export_int8"):
        e8 = r["export_int8"]
        print(f"int8 export (both towers): {e8['seconds']:.1f} s; image parity gate min cosine "
              f"{e8['gate']['min_cosine']:.6f}, mean {e8['gate']['mean_cosine']:.6f}")
        for s in e8["steps"]:
            print(f"  {s['name']}: {s['nodes']} nodes, " + ", ".join(f"{k} {n}" for k, n in s["ops"].items())
                  + (f"; {s['note']}" if s["note"] else ""))
        print()

    table = [["row", "images/s", "ratio", "min cos", "mean cos", "GFLOP/s", "% matmul", "load s", "peak RSS",
              "peak growth", "RSS held"]]  # fmt: skip
    notes = []
    for i, row in enumerate(r["rows"], 1):
        name = f"{i}. {row['name']}"
        if "error" in row:
            table.append([name, *["n/a"] * 6, "-", "-", "-", "-"])
            notes.append(f"row {i} n/a: {row['error']}")
            continue
        table.append(
            [
                name,
                f"{row['images_per_s']:.1f}",
                f"{row['median_ratio']:.3f}",
                f"{row['cos_min']:.6f}",
                f"{row['cos_mean']:.6f}",
                f"{row['gflops']:.1f}",
                f"{100 * row['matmul_share']:.0f}%",
                f"{row['load_s']:.1f}",
                f"{row['peak_rss_mib']:.0f} MiB",
                f"+{row['peak_growth_mib']:.0f} MiB",
                f"{row['rss_held_mib']:+.0f} MiB",
            ]
        )
        cpu = ", ".join(f"{x:.2f}/{y:.2f}" for x, y in zip(row["own_cpu_cores"], row["others_cpu_cores"]))
        notes.append(
            f"row {i} ratio per rep: {', '.join(f'{x:.3f}' for x in row['ratios'])}; s/pass "
            f"{', '.join(f'{x:.2f}' for x in row['seconds'])}; cores own/others per rep: {cpu}"
        )
    print_rows(table, notes, [x for row in r["rows"] for x in row.get("others_cpu_cores", [])])
    by_name = {row["name"]: row for row in r["rows"] if "error" not in row}
    ends = [by_name.get(k) for k in ("embedhub onnx fp32, encode_image(PIL)",
                                      "open_clip torch fp32, preprocess + encode_image")]  # fmt: skip
    if all(ends):
        e2e = [b / a for a, b in zip(ends[0]["seconds"], ends[1]["seconds"])]
        print(f"end to end (row 3 / row 4, both with preprocessing): median {statistics.median(e2e):.3f}")
    best = max((row["median_ratio"] for row in by_name.values()), default=0.0)
    rows1 = r["rows"][0]
    print(
        f"target {TARGET}x over open_clip torch; the fp32 matmul ceiling allows at most "
        f"{ceiling / rows1['images_per_s']:.2f}x over row 1 here (row 1 runs at {100 * rows1['matmul_share']:.0f}% "
        f"of the matmul rate); best ratio measured {best:.3f}"
    )
    pc = r["pairwise_cosine_of_reference"]
    print(
        f"spread of the reference embeddings (cosine between different images): min {pc['min']:.4f}, "
        f"mean {pc['mean']:.4f}"
    )
    print(
        "ratio: row's images/s over row 1's (median of per-rep ratios; > 1 is faster). cosine: every image of every "
        "rep against row 1's embedding from the same rep. Row 3 reuses row 2's loaded model. peak RSS: this "
        "process's peak after the row's load + warm-up (rows load in order, so it includes the rows above); peak "
        "growth: over the step before; RSS held: growth of the current RSS (what the row keeps). Peak after "
        f"imports {r['peak_rss_after_imports_mib']:.0f} MiB; after saving the weights to safetensors "
        f"{r['peak_rss_after_save_mib']:.0f} MiB; after the timed reps {r['peak_rss_final_mib']:.0f} MiB. The "
        "export ran in a child process."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=256, help="number of images (default 256)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    p.add_argument("--reps", type=int, default=3, help="timed alternating repetitions")
    p.add_argument("--skip-torch-context", action="store_true", help="leave out row 5 (embedhub torch)")
    p.add_argument("--skip-int8", action="store_true", help="leave out the int8 export and its rows (3-11 min)")
    return parse_with_json(p, argv, "images", "batch_size", "threads", "reps")


def main(argv: list[str] | None = None) -> int:
    return run_cli(parse_args, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
