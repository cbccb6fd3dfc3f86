"""Backends: what runs a tower on a preprocessed batch.

A runner takes the arrays the preprocessors make (``input_ids``/``attention_mask`` or
``pixel_values``) and returns float32 embeddings ``(B, D)`` as a torch tensor. Batching,
ordering and normalisation are the model's, shared by every backend.

ONNX graphs come from an untrusted model folder, so :func:`load_onnx_towers` checks each one
before ONNX Runtime opens it: the graph and every external-data file it names lie inside the
folder, their SHA-256 match what the export recorded (``onnx/export_metadata.json``), and the
graph's inputs and output are those of its tower (names, element types, ranks, width).
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub._io.hashing import sha256_file
from embedhub.errors import ConfigError, WeightsError, require

Backend = Literal["torch", "onnx", "auto"]


class Runner(Protocol):
    backend: str

    def __call__(self, batch: dict[str, np.ndarray]) -> torch.Tensor: ...


class TorchRunner:
    """Runs an ``nn.Module`` tower under ``torch.inference_mode`` on a fixed device."""

    backend = "torch"

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype):
        self.module, self.device, self.dtype = module, device, dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        tensors = {k: torch.from_numpy(v).to(self.device, non_blocking=True) for k, v in batch.items()}
        if "pixel_values" in tensors:
            tensors["pixel_values"] = tensors["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            return self.module(**tensors).float()


def int8_dot_kernel() -> str:
    """How this CPU multiplies uint8 x int8 in onnxruntime: ``"vnni"`` (AVX-512 VNNI, AVX-VNNI or
    AMX: exact 32-bit accumulation), ``"no-vnni"`` (an x86 CPU without them: onnxruntime's AVX2
    ``vpmaddubsw`` kernels add pairs of products in 16 bits, which can saturate) or ``"unknown"``.

    >>> int8_dot_kernel() in ("vnni", "no-vnni", "unknown")
    True
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "unknown"
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    have = set(flags.split(":", 1)[1].split())
    return "vnni" if have & {"avx512_vnni", "avx_vnni", "amx_int8"} else "no-vnni"


def check_int8_cpu(meta: ConfigView | str | os.PathLike | None, where: str | os.PathLike | None = None) -> None:
    """Warn when an export's int8 graphs (``meta``: its ``onnx/export_metadata.json``, or the model
    folder to read it from) were gated on a VNNI CPU and this CPU has no VNNI: the gate's figures do
    not carry over to saturating AVX2 kernels."""
    if isinstance(meta, (str, os.PathLike)):
        where = where or meta
        meta = read_export_metadata(meta)
    if meta is None or meta.raw("precision", None) != "int8":
        return
    cpu, gate = meta.raw("cpu", {}), meta.raw("gate", {})
    exported_on = cpu.get("int8_dot_kernel") if isinstance(cpu, dict) else None
    if exported_on == "vnni" and int8_dot_kernel() == "no-vnni":
        thresholds = gate.get("thresholds") if isinstance(gate, dict) else None
        warnings.warn(
            f"{where}: this int8 model passed its parity gate on a CPU with VNNI, but this CPU has none; "
            "onnxruntime's int8 kernels here add products in 16 bits and can saturate, so accuracy may be "
            f"below the gate's {thresholds}. Re-export on this machine "
            "(`embedhub export MODEL --output DIR --quantize int8`) to gate it here.",
            stacklevel=4,
        )


def onnx_providers(device: torch.device) -> list[str]:
    """CUDA first when asked for and available (onnxruntime-gpu), else CPU."""
    ort = require("onnxruntime", "onnx", "backend='onnx'")
    available = ort.get_available_providers()
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise ValueError(
                "device='cuda' with backend='onnx' needs onnxruntime-gpu: pip install 'embedhub[onnx-gpu]' "
                f"(available providers: {available})"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRunner:
    """One ONNX Runtime session per graph, created once; IO binding on CUDA.

    Graph inputs are named like the preprocessors' arrays; the first output is the embedding.
    ``normalized_output``: whether the graph L2-normalises its output itself (exports before
    ``"normalized_output": false`` was recorded did), so that ``normalize=False`` cannot be honoured.
    """

    backend = "onnx"

    def __init__(self, path: Path, *, device: torch.device, threads: int | None = None,
                 normalized_output: bool = True):
        ort = require("onnxruntime", "onnx", "backend='onnx'")
        if not Path(path).is_file():
            raise WeightsError(f"ONNX graph {path} does not exist")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.device = device
        self.path = Path(path)
        self.normalized_output = bool(normalized_output)
        try:
            self.session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=onnx_providers(device))
        except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
            raise WeightsError(f"cannot load ONNX graph {path}: {exc}") from exc
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self._cuda = device.type == "cuda"

    def __call__(self, batch: dict[str, np.ndarray]) -> torch.Tensor:
        feed = {k: np.ascontiguousarray(batch[k]) for k in self.input_names}
        if not self._cuda:
            return torch.from_numpy(self.session.run([self.output_name], feed)[0]).float()
        binding = self.session.io_binding()
        for name, arr in feed.items():
            binding.bind_cpu_input(name, arr)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()[0]
        return torch.from_dlpack(out.to_dlpack()).float() if hasattr(out, "to_dlpack") else torch.from_numpy(
            out.numpy()
        ).float()


#: where an export records its gate, steps and file hashes
EXPORT_METADATA = "onnx/export_metadata.json"
_INT64, _FLOAT = 7, 1  # onnx.TensorProto element types
_OUTPUT_TYPES = {1: "float", 10: "float16", 11: "double"}
_TYPE_NAMES = {1: "float", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "double", 16: "bfloat16"}
#: the inputs a tower's graph may take: name -> (element type, rank); the first is required
_GRAPH_INPUTS: dict[str, dict[str, tuple[int, int]]] = {
    "text": {"input_ids": (_INT64, 2), "attention_mask": (_INT64, 2)},
    "image": {"pixel_values": (_FLOAT, 4)},
}


def read_export_metadata(folder: ModelFolder | str | os.PathLike) -> ConfigView | None:
    """An export's ``onnx/export_metadata.json`` (``folder``: the model folder) as a checked view (a bounded
    UTF-8 JSON object, finite numbers), or ``None`` when the folder has none; a malformed record is a
    :class:`ConfigError`. The one reader of the record: the ONNX loader, fingerprints and ``embedhub export``
    use it.

    >>> read_export_metadata("minilm-onnx").str("precision")  # doctest: +SKIP
    'fp32'
    """
    if not isinstance(folder, ModelFolder):
        folder = ModelFolder(folder)
    return folder.config(EXPORT_METADATA, what="ONNX export metadata") if folder.has(EXPORT_METADATA) else None


def recorded_sha256(meta: ConfigView | None) -> dict[str, str] | None:
    """The ``sha256`` map (folder-relative path -> hex digest) an export recorded, ``None`` if it has none."""
    if meta is None or "sha256" not in meta:
        return None
    hashes = meta.view("sha256")
    return {rel: hashes.str(rel) for rel in hashes.keys()}


def check_sha256(folder: ModelFolder, rel: str, path: Path, hashes: dict[str, str]) -> None:
    """A :class:`WeightsError` naming ``rel``, the recorded and the found hash when they differ (or
    when the export recorded none for ``rel``)."""
    key = PurePosixPath(rel).as_posix()
    if key not in hashes:
        raise WeightsError(
            f"{folder.root}: {key} has no SHA-256 in {EXPORT_METADATA} (recorded: {sorted(hashes)}); "
            "it is not a file this export wrote"
        )
    found = sha256_file(path)
    if found != hashes[key].lower():
        raise WeightsError(
            f"{folder.root}: {key} is not the file the export wrote: SHA-256 expected {hashes[key]}, "
            f"found {found} (a graph or weights file from another export, or a corrupted download)"
        )


def load_onnx_towers(folder: ModelFolder, graphs: dict[str, str], *, embed_dim: int, device: torch.device,
                     threads: int | None) -> dict[str, OnnxRunner]:
    """One :class:`OnnxRunner` per modality of ``graphs`` (modality -> folder-relative graph path).

    Before ONNX Runtime opens a graph: the graph and the external-data files it names must be
    regular files inside ``folder`` (else :class:`ConfigError`); their SHA-256 must match
    ``onnx/export_metadata.json`` (else :class:`WeightsError`; an export that recorded none loads
    with a warning); its inputs must be the tower's (``input_ids``/``attention_mask`` int64, or
    ``pixel_values`` float) and its output ``(batch, embed_dim)`` (else :class:`WeightsError`).
    """
    onnx = require("onnx", "onnx", "backend='onnx'")
    require("onnxruntime", "onnx", "backend='onnx'")
    meta = read_export_metadata(folder)
    normalized = meta.bool("normalized_output", True) if meta is not None else True
    hashes = recorded_sha256(meta)
    if hashes is None:
        warnings.warn(
            f"{folder.root}: {EXPORT_METADATA} records no SHA-256 of the ONNX graphs (an older export, or one "
            "made by hand), so they cannot be checked against the export that wrote them; re-export the model "
            "(`embedhub export`) to record them",
            stacklevel=3,
        )
    runners: dict[str, OnnxRunner] = {}
    for modality, rel in graphs.items():
        if modality not in _GRAPH_INPUTS:
            raise ConfigError(f"{folder.root}: ONNX graph for unknown modality {modality!r} (expected text, image)")
        path = folder.file(rel, what=f"{modality} ONNX graph")
        if hashes is not None:
            check_sha256(folder, rel, path, hashes)
        try:
            proto = onnx.load(os.fspath(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError, onnx's own errors
            raise WeightsError(f"{folder.root}: {rel} is not an ONNX model: {exc}") from exc
        for data_rel in _external_files(folder, rel, proto):
            if hashes is not None:
                check_sha256(folder, data_rel, folder.file(data_rel, what=f"external data of {rel}"), hashes)
        _check_signature(proto, f"{folder.root}: {rel}", modality, embed_dim)
        del proto
        runners[modality] = OnnxRunner(folder / rel, device=device, threads=threads, normalized_output=normalized)
    if device.type == "cpu":
        check_int8_cpu(meta, folder.root)
    return runners


def _node_tensors(nodes: Any) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from (attr.sparse_tensor.values, attr.sparse_tensor.indices)
            for sparse in attr.sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of ``graph``: initializers, sparse initializers, node attributes, subgraphs."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def onnx_tensors(proto: Any) -> Iterator[Any]:
    """Every ``TensorProto`` of an ONNX ``ModelProto``: the graph's and its subgraphs' initializers,
    sparse initializers, node attributes, and those of its functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        yield from _node_tensors(function.node)


def _external_files(folder: ModelFolder, rel: str, proto: Any) -> list[str]:
    """The folder-relative paths of the external-data files ``proto`` (the graph at ``rel``) names.

    ONNX Runtime opens a tensor's ``location`` relative to the graph's folder; one that is
    absolute, climbs out with ``..``, resolves outside ``folder`` or is not a regular file there
    (onnxruntime's ``*/_ORT_MEM_ADDR_/*`` reads process memory) is a :class:`ConfigError`.
    """
    from onnx import TensorProto

    base = PurePosixPath(rel.replace("\\", "/")).parent
    found: dict[str, None] = {}
    for tensor in onnx_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if not location:
            raise WeightsError(f"{folder.root}: {rel}: tensor {tensor.name!r} is stored externally but names no file")
        data_rel = (base / location).as_posix() if not PurePosixPath(location).is_absolute() else location
        try:
            folder.file(data_rel, what=f"external data of {rel}")
        except ConfigError as exc:
            raise ConfigError(
                f"{folder.root}: {rel}: tensor {tensor.name!r} keeps its data in {location!r}, which is not a "
                f"file inside the model folder ({exc})",
                file=str(folder / rel), key=tensor.name,
            ) from None
        found[data_rel] = None
    for node in proto.graph.node:
        if node.op_type == "EPContext":  # compiled-EP blobs: may name files anywhere; never written by export
            raise ConfigError(f"{folder.root}: {rel}: EPContext node {node.name!r} is not supported",
                              file=str(folder / rel))
    return list(found)


def _type_name(elem_type: int) -> str:
    return _TYPE_NAMES.get(elem_type, f"type {elem_type}")


def _dims(value_info: Any) -> list[int | str] | None:
    """A graph input's or output's shape (ints for fixed axes, names for symbolic ones), or None."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]


def _check_signature(proto: Any, where: str, modality: str, embed_dim: int) -> None:
    """The graph's inputs are its tower's (names, element types, ranks) and its first output is
    ``(batch, embed_dim)``; else a :class:`WeightsError` saying what was found."""
    graph = proto.graph
    consts = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in consts}
    allowed = _GRAPH_INPUTS[modality]
    required = next(iter(allowed))
    found = {n: _type_name(v.type.tensor_type.elem_type) for n, v in inputs.items()}
    if required not in inputs or set(inputs) - set(allowed):
        other = next(m for m in _GRAPH_INPUTS if m != modality)
        hint = (f"; it takes the {other} tower's inputs: is it the {other} graph?"
                if set(inputs) and set(inputs) <= set(_GRAPH_INPUTS[other]) else "")
        raise WeightsError(
            f"{where}: {modality} graphs take {list(allowed)} (with {required!r} required), "
            f"but this graph takes {found}{hint}"
        )
    for name, value in inputs.items():
        want_type, want_rank = allowed[name]
        elem, dims = value.type.tensor_type.elem_type, _dims(value)
        if elem != want_type:
            raise WeightsError(
                f"{where}: input {name!r} must be {_type_name(want_type)}, the graph declares {_type_name(elem)}"
            )
        if dims is not None and len(dims) != want_rank:
            raise WeightsError(f"{where}: input {name!r} must have {want_rank} axes, the graph declares {dims}")
    if not graph.output:
        raise WeightsError(f"{where}: the graph has no output")
    out = graph.output[0]
    elem, dims = out.type.tensor_type.elem_type, _dims(out)
    if elem not in _OUTPUT_TYPES:
        raise WeightsError(
            f"{where}: output {out.name!r} must be a float tensor (the embeddings), the graph declares "
            f"{_type_name(elem)}"
        )
    if dims is not None and len(dims) != 2:
        raise WeightsError(f"{where}: output {out.name!r} must be (batch, {embed_dim}), the graph declares {dims}")
    if dims is not None and isinstance(dims[-1], int) and dims[-1] > 0 and dims[-1] != embed_dim:
        raise WeightsError(
            f"{where}: output {out.name!r} has {dims[-1]} dims, but the model's embed_dim is {embed_dim} "
            "(a graph of another model?)"
        )
