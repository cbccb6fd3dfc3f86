"""Backends: what runs a tower on a preprocessed batch.

A runner takes the arrays the preprocessors make (``input_ids``/``attention_mask`` or
``pixel_values``) and returns float32 embeddings ``(B, D)`` as a torch tensor. Batching,
ordering and normalisation are the model's, shared by every backend.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from ._errors import WeightsError, require

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


def check_int8_cpu(folder: Path) -> None:
    """Warn when ``folder``'s int8 graphs were gated on a VNNI CPU and this CPU has no VNNI: the
    parity gate's figures do not carry over to saturating AVX2 kernels."""
    meta_path = folder / "onnx" / "export_metadata.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return
    exported_on = meta.get("cpu", {}).get("int8_dot_kernel")
    if meta.get("precision") == "int8" and exported_on == "vnni" and int8_dot_kernel() == "no-vnni":
        warnings.warn(
            f"{folder}: this int8 model passed its parity gate on a CPU with VNNI, but this CPU has none; "
            "onnxruntime's int8 kernels here add products in 16 bits and can saturate, so accuracy may be "
            f"below the gate's {meta.get('gate', {}).get('thresholds')}. Re-export on this machine "
            "(`embedhub export MODEL --output DIR --quantize int8`) to gate it here.",
            stacklevel=3,
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
    """

    backend = "onnx"

    def __init__(self, path: Path, *, device: torch.device, threads: int | None = None):
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
