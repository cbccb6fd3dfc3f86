"""Export an embedhub model to ONNX, behind a parity gate.

Every tower becomes one graph with pooling and projection inside; the tokeniser (with the model's
prompts), image preprocessing, the L2 normalisation, Matryoshka truncation and output quantisation
stay outside and are the SDK's own (the folder keeps the prompts, similarity and truncate_dim), so
``encode(..., normalize=False)`` gives the same numbers on both backends (the metadata records
``"normalized_output": false``). After export the folder is loaded with ``backend="onnx"`` and
compared with the torch model on real inputs, direction and length of every row; the folder is
only moved into place when every gate holds. The metadata records the SHA-256 of every graph,
external-data and weights file, which ``backend="onnx"`` checks at load.

The folder holds what ``backend="onnx"`` needs (config, preprocessing, graphs, metadata); a torch copy
of the weights (``backend="torch"`` on the same folder) is written only with ``keep_torch=True``
(``--keep-torch``): the gate compares against the model in memory and never reads it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

import embedhub
from embedhub import EmbeddingModel
from embedhub.formats import can_save_torch, check_writable, save_embedhub
from embedhub.modules import EXPORT_METADATA, int8_dot_kernel, onnx_tensors, plan_batches, token_lengths
from embedhub.store import sha256_file

from ._data import CALIBRATION_TEXTS, GATE_TEXTS, gate_images
from ._int8 import ALPHAS, Protect, quantize_int8

Precision = Literal["fp32", "fp16", "int8"]

#: per-row agreement between ONNX Runtime and torch (unnormalised outputs) that each precision must reach:
#: cosine (``min``, ``mean``) and relative length ``| |onnx| / |torch| - 1 |`` (``norm``, the largest over rows)
GATES: dict[str, dict[str, float]] = {
    "fp32": {"min": 0.99999, "norm": 1e-3},
    "fp16": {"min": 0.999, "norm": 1e-2},
    "int8": {"min": 0.97, "mean": 0.99, "norm": 0.1},
}
#: int8: smooth activation outliers into the weights, quantise every MatMul / Attention / Gemm per tensor,
#: and if the error (1 - mean cosine on the calibration inputs) exceeds this, protect the most sensitive
#: nodes (kept fp32 by default, or per-token int8 with ``int8_protect="per-token"``) until the summed
#: error of the others, each measured alone, is within it (see export/_int8.py)
INT8_ERROR_BUDGET = 0.006
_INPUTS = {"text": ["input_ids", "attention_mask"], "image": ["pixel_values"]}
#: graphs larger than this (bytes) keep their weights in ``onnx/<modality>.onnx.data`` (protobuf's limit is 2 GiB);
#: a graph the earlier steps already wrote with external data is written so too
EXTERNAL_DATA_ABOVE = 1_500_000_000


class ParityError(RuntimeError):
    """The exported graphs disagree with torch beyond the gate; nothing was written."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass
class _Step:
    name: str
    nodes: int
    ops: dict[str, int] = field(default_factory=dict)
    note: str = ""


class _Graph(nn.Module):
    """A tower taking positional inputs: the function each ONNX graph computes (unnormalised
    embeddings, as the torch tower returns them; ``encode`` normalises)."""

    def __init__(self, tower: nn.Module, modality: str):
        super().__init__()
        self.tower, self.modality = tower, modality

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(_INPUTS[self.modality], args))
        return self.tower(**batch).float()


def _eager(tower: nn.Module) -> nn.Module:
    """A copy of ``tower`` whose transformers modules use eager attention (traceable, and the
    pattern ONNX Runtime's fusions recognise)."""
    tower = copy.deepcopy(tower).cpu().float().eval()
    for module in tower.modules():
        if hasattr(module, "set_attn_implementation") and hasattr(module, "config"):
            module.set_attn_implementation("eager")
    return tower


def _example(model: EmbeddingModel, modality: str) -> tuple[torch.Tensor, ...]:
    if modality == "text":
        pre = model.preprocessors["text"]
        batch = pre.collate(pre.tokenize(["a short one", "a somewhat longer example sentence for tracing"]))
    else:
        batch = model.preprocessors["image"](gate_images()[:2])
    return tuple(torch.from_numpy(batch[k]) for k in _INPUTS[modality])


def _torch_to_onnx(model: EmbeddingModel, modality: str, path: Path, opset: int) -> None:
    import warnings

    graph = _Graph(_eager(model.towers[modality]), modality).eval()
    names = _INPUTS[modality]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} if modality == "text" else {names[0]: {0: "batch"}}
    axes["embeddings"] = {0: "batch"}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # nn.MultiheadAttention's fused kernel has no ONNX form
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, _example(model, modality), str(path), input_names=names,
                              output_names=["embeddings"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _stats(path: Path, name: str, note: str = "") -> _Step:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    ops = Counter(n.op_type for n in g.node)
    keep = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu",
            "FastGelu", "Gelu", "QuickGelu", "LayerNormalization", "MatMul", "MatMulInteger", "DynamicQuantizeMatMul",
            "QAttention", "DynamicQuantizeLinear", "Gemm", "Conv")
    return _Step(name, len(g.node), {k: v for k, v in sorted(ops.items()) if k in keep}, note)


def _optimize(model: EmbeddingModel, modality: str, src: Path, dst: Path) -> str:
    """onnxruntime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, ...) where they apply."""
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    tower = model.towers[modality]
    hints = tower.onnx_hints() if hasattr(tower, "onnx_hints") else {"optimizer": None}
    family = hints["optimizer"]
    if family is None:
        shutil.copyfile(src, dst)
        return "no transformer fusions for this architecture (ONNX Runtime's session optimisations still run)"
    heads, hidden = int(hints.get("num_heads", 0)), int(hints.get("hidden_size", 0))
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimize_model(str(src), model_type=family, num_heads=heads, hidden_size=hidden, opt_level=1)
    opt.save_model_to_file(str(dst))
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return f"onnxruntime.transformers optimizer ({family}): {fused}"


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def _feed(model: EmbeddingModel, modality: str, calibration: list) -> list[dict[str, np.ndarray]]:
    pre = model.preprocessors[modality]
    if modality == "text":
        ids = pre.tokenize(list(calibration))
        return [pre.collate([ids[i] for i in rows]) for rows in plan_batches(token_lengths(ids), 16)]
    return [pre(calibration[s : s + 8]) for s in range(0, len(calibration), 8)]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _bar(total: int, desc: str, unit: str, show: bool) -> Any:
    """A tqdm bar on stderr (``show=False``: a silent one that counts the same)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show, leave=True)


def _gate(torch_model: EmbeddingModel, onnx_model: EmbeddingModel, precision: str, texts: list[str],
          images: list, batch_sizes: tuple[int, ...], show_progress_bar: bool = False) -> dict[str, Any]:
    """Both backends' unnormalised embeddings compared row by row: cosine and relative length (one bar step
    per input encoded: once by torch, once by ONNX Runtime per batch size)."""
    report: dict[str, Any] = {"precision": precision, "thresholds": GATES[precision], "modalities": {}}
    ok = True
    total = sum(len(texts if m == "text" else images) for m in onnx_model.modalities) * (1 + len(batch_sizes))
    with _bar(total, f"parity gate ({precision})", "input", show_progress_bar) as bar:
        for modality in onnx_model.modalities:
            ok &= _gate_modality(torch_model, onnx_model, modality, texts if modality == "text" else images,
                                 precision, batch_sizes, report, bar)
    report["passed"] = ok
    return report


def _gate_modality(torch_model: EmbeddingModel, onnx_model: EmbeddingModel, modality: str, inputs: list,
                   precision: str, batch_sizes: tuple[int, ...], report: dict[str, Any], bar: Any) -> bool:
    """One modality of :func:`_gate`: its entry in ``report``; whether it passed."""
    bar.set_postfix_str(f"{modality}, torch")
    ref = torch_model.encode(inputs, batch_size=max(batch_sizes), normalize=False, show_progress_bar=False)
    bar.update(len(inputs))
    got = []
    for bs in batch_sizes:
        bar.set_postfix_str(f"{modality}, onnx batch size {bs}")
        got.append(onnx_model.encode(inputs, batch_size=bs, normalize=False, show_progress_bar=False))
        bar.update(len(inputs))
    cos = np.concatenate([_cosines(g, ref) for g in got])
    ref_norm = np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
    norm_err = np.concatenate([np.abs(np.linalg.norm(g, axis=1) / ref_norm - 1) for g in got])
    entry = {"inputs": len(inputs), "batch_sizes": list(batch_sizes), "min_cosine": float(cos.min()),
             "mean_cosine": float(cos.mean()), "max_norm_error": float(norm_err.max())}
    gate = GATES[precision]
    entry["passed"] = bool(cos.min() >= gate["min"] and cos.mean() >= gate.get("mean", -1.0)
                           and norm_err.max() <= gate["norm"])
    report["modalities"][modality] = entry
    return entry["passed"]


def _external_locations(path: Path) -> list[str]:
    """The external-data files (relative to the graph) the graph at ``path`` names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sorted({e.value for t in onnx_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL
                   for e in t.external_data if e.key == "location"})


def _write_graph(src: Path, dst: Path) -> None:
    """Copy a graph into the model folder: as one file, or, when it is large (or already kept its
    weights outside), with every weight in one ``<dst name>.data`` file beside it."""
    import onnx

    if not _external_locations(src) and src.stat().st_size <= EXTERNAL_DATA_ABOVE:
        shutil.copyfile(src, dst)
        return
    model = onnx.load(str(src))  # with its external data
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{dst.name}.data", size_threshold=1024)


def _hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every graph and external-data file under ``onnx/`` and of every safetensors weights file."""
    files = [p for p in sorted((folder / "onnx").iterdir()) if p.is_file() and p != folder / EXPORT_METADATA]
    files += sorted(p for p in folder.rglob("*.safetensors") if p.is_file())
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def export(
    model: str | os.PathLike | EmbeddingModel,
    output: str | os.PathLike,
    *,
    dtype: Literal["fp32", "fp16"] = "fp32",
    quantize: Literal["int8"] | None = None,
    opset: int = 17,
    optimize: bool = True,
    keep_torch: bool = False,
    gate_texts: list[str] | None = None,
    gate_image_inputs: list | None = None,
    calibration_texts: list[str] | None = None,
    batch_sizes: tuple[int, ...] = (1, 7, 32),
    int8_error_budget: float = INT8_ERROR_BUDGET,
    int8_protect: Protect = "fp32",
    int8_smooth: bool = True,
    verbose: bool = True,
    show_progress_bar: bool | None = None,
) -> Path:
    """Export ``model`` (a name ``embedhub.load`` takes, or a loaded torch model) to ``output``.

    Writes an embedhub model folder with ``onnx/<modality>.onnx`` graphs (unnormalised outputs) and
    ``onnx/export_metadata.json`` (gate figures, steps, versions, ``normalized_output: false`` and the
    SHA-256 of every graph, external-data and weights file) that ``embedhub.load(output, backend="onnx")``
    loads. Raises :class:`ParityError` and writes nothing
    when ONNX Runtime and torch disagree beyond :data:`GATES`. ``int8_protect`` chooses how the
    calibration-selected sensitive nodes of an int8 export are kept: ``"fp32"`` or ``"per-token"``;
    ``int8_smooth=False`` leaves out the SmoothQuant scaling that int8 tries first (export/_int8.py).

    The folder holds only what ``backend="onnx"`` needs; ``keep_torch=True`` also writes the torch weights
    (for formats embedhub can rebuild), so ``backend="torch"`` loads the same folder and both backends'
    fingerprints name one source. Without them, ``backend="torch"`` on the folder is an
    :class:`embedhub.UnknownFormatError` naming the source model and ``keep_torch``. ``verbose`` prints each
    step (stdout); ``show_progress_bar`` (default: as ``verbose``) shows tqdm bars on stderr over int8
    calibration batches, per-node sensitivity runs and the parity gate's inputs.

    >>> export("all-MiniLM-L6-v2", "minilm-onnx", quantize="int8")   # doctest: +SKIP
    """
    from embedhub.errors import require

    onnx = require("onnx", "export", "ONNX export")
    ort = require("onnxruntime", "export", "ONNX export")

    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"dtype must be 'fp32' or 'fp16', got {dtype!r}")
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and dtype != "fp32":
        raise ValueError("int8 quantisation starts from fp32 weights: use dtype='fp32' with quantize='int8'")
    precision: Precision = "int8" if quantize else dtype
    say = print if verbose else (lambda *a, **k: None)
    bars = verbose if show_progress_bar is None else bool(show_progress_bar)
    src = model if isinstance(model, EmbeddingModel) else embedhub.load(model, device="cpu")
    if src.backend != "torch":
        raise ValueError(f"export needs a torch model; {src.name} runs on {src.backend}")
    text = src.towers["text"] if "text" in src.towers else None
    if getattr(getattr(text, "pooling", None), "include_prompt", True) is False and any(src.prompts.values()):
        raise ValueError(f"{src.name}'s text pooling leaves the prompt's tokens out (include_prompt: false) and the "
                         f"model has prompts {sorted(k for k, v in src.prompts.items() if v)}: pooling runs inside the "
                         "ONNX graph, which sees no prompt boundary; keep this model on backend='torch'")
    if getattr(src, "routes", ()):
        raise ValueError(
            f"{src.name} routes its inputs by task (a sentence-transformers Router: routes {list(src.routes)}); "
            "an export holds one graph per modality, so encode_query / encode_document would lose their own "
            "towers: its export is not supported (use backend='torch')")
    text_pre = src.preprocessors.get("text")
    if text_pre is not None and text_pre.config().get("add_special_tokens") is False:
        raise ValueError(
            f"{src.name}: its text tower is a static embedding table (sentence-transformers StaticEmbedding or "
            "model2vec: tokens without special tokens, averaged), which embedhub does not export; it is a table "
            "lookup, already fast on backend='torch'")
    image_pre = src.preprocessors.get("image")
    if image_pre is not None and image_pre.config().get("kind") == "naflex":
        raise ValueError(
            f"{src.name}: its image tower takes Siglip2ImageProcessor's NaFlex patches (pixel_attention_mask and "
            "spatial_shapes: a patch grid of its own per image), which a traced ONNX graph would fix to one grid; "
            "its export is not supported (use backend='torch')")
    if keep_torch and not can_save_torch(src):
        raise ValueError(
            f"keep_torch=True (--keep-torch): embedhub cannot write the torch towers of {src.name} (a {src.format} "
            "model) in its own format, so its export holds only the ONNX graphs; export without keep_torch and "
            f"load {src.name} itself for the torch backend")
    texts = list(gate_texts or GATE_TEXTS)
    images = list(gate_image_inputs or gate_images())
    calib = {"text": list(calibration_texts or CALIBRATION_TEXTS), "image": gate_images()[::2]}
    output = Path(output)
    check_writable(output)  # never replaces a folder of the user's files
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embedhub-export-") as tmpdir:
        work = Path(tmpdir)
        graphs: dict[str, Path] = {}
        steps: dict[str, list[dict[str, Any]]] = {}
        for modality in src.modalities:
            say(f"[export] {modality}: torch -> ONNX (opset {opset})")
            mwork = work / modality  # one folder per tower: external-data files are named after tensors
            mwork.mkdir()
            raw = mwork / f"{modality}.raw.onnx"
            _torch_to_onnx(src, modality, raw, opset)
            log = [_stats(raw, "torch.onnx.export")]
            cur = raw
            if optimize:
                say(f"[export] {modality}: graph optimisation")
                nxt = mwork / f"{modality}.opt.onnx"
                note = _optimize(src, modality, cur, nxt)
                cur = nxt
                log.append(_stats(cur, "graph optimisation", note))
            if precision == "fp16":
                nxt = mwork / f"{modality}.fp16.onnx"
                _to_fp16(cur, nxt)
                cur = nxt
                log.append(_stats(cur, "fp16", "weights and activations fp16, inputs/outputs kept fp32"))
            if precision == "int8":
                say(f"[export] {modality}: int8 calibration")
                nxt = mwork / f"{modality}.int8.onnx"
                note = quantize_int8(cur, nxt, _feed(src, modality, calib[modality]), int8_error_budget, mwork,
                                     protect=int8_protect, alphas=ALPHAS if int8_smooth else (),
                                     show_progress_bar=bars)
                cur = nxt
                log.append(_stats(cur, "int8", note))
            graphs[modality] = cur
            steps[modality] = [s.__dict__ for s in log]

        def add_graphs(folder: Path, cfg: dict[str, Any]) -> None:
            (folder / "onnx").mkdir()
            for modality, path in graphs.items():
                _write_graph(path, folder / "onnx" / f"{modality}.onnx")
                cfg["towers"][modality]["onnx"] = f"onnx/{modality}.onnx"

        with_torch = keep_torch and can_save_torch(src)
        try:
            pooling = src.fingerprint.pooling
        except embedhub.EmbedhubError:  # a model whose provenance cannot be read: no pooling recorded
            pooling = None
        result: dict[str, Any] = {}

        def gate(staging: Path) -> None:
            """The complete folder, before it is switched into place: loaded as users will load it and compared
            with torch; the metadata (with the gate's figures) is part of what is recorded."""
            meta: dict[str, Any] = {
                "precision": precision,
                "opset": opset,
                "source": src.name,
                "source_format": src.format,
                "torch_weights_kept": with_torch,
                # the text pooling, for fingerprints: a folder without the torch copy has no tower config
                **({"pooling": pooling} if pooling else {}),
                "normalized_output": False,
                "sha256": _hashes(staging),
                "gate": None,
                "steps": steps,
                "seconds": None,
                "cpu": {"torch_capability": torch.backends.cpu.get_cpu_capability(),
                        "int8_dot_kernel": int8_dot_kernel()},
                "versions": {"embedhub": embedhub.__version__, "torch": torch.__version__,
                             "onnx": onnx.__version__, "onnxruntime": ort.__version__},
            }
            meta_path = staging / EXPORT_METADATA
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")  # the gate loads the folder as users will
            counts = {"text": f"{len(texts)} texts", "image": f"{len(images)} images"}
            say(f"[export] parity gate ({precision}): {', '.join(counts[m] for m in src.modalities)}, "
                f"batch sizes {batch_sizes}")
            onnx_model = embedhub.load(staging, backend="onnx", device="cpu")
            report = _gate(src, onnx_model, precision, texts, images, batch_sizes, show_progress_bar=bars)
            del onnx_model
            meta["gate"], meta["seconds"] = report, round(time.perf_counter() - t0, 1)
            if not report["passed"]:
                raise ParityError(
                    f"parity gate failed for {precision}: "
                    + "; ".join(f"{m}: min cosine {e['min_cosine']:.6f}, mean {e['mean_cosine']:.6f}, "
                                f"max norm error {e['max_norm_error']:.2e}" for m, e in report["modalities"].items())
                    + f" (needs {GATES[precision]}); nothing written to {output}",
                    meta,
                )
            meta_path.write_text(json.dumps(meta, indent=2) + "\n")
            result["report"] = report

        # staged beside ``output`` and switched into place: into an earlier export only the files embedhub
        # recorded there are replaced (files you added stay)
        save_embedhub(src, output, torch_weights=with_torch, extra=add_graphs, check=gate)
        report = result["report"]
    for m, e in report["modalities"].items():
        say(f"[export] {m}: min cosine {e['min_cosine']:.6f}, mean {e['mean_cosine']:.6f}, "
            f"max norm error {e['max_norm_error']:.2e} -> passed")
    say(f"[export] wrote {output}")
    return output
