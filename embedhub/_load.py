"""``embedhub.load``: name -> folder -> format -> model."""

from __future__ import annotations

import os

import torch

from ._backends import Backend
from ._folder import ModelFolder
from ._hub import download, resolve
from ._manifest import check_record
from ._model import EmbeddingModel

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use device='auto' or 'cpu')")
    return dev


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype} not supported; use float32, float16 or bfloat16")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load(
    name: str | os.PathLike,
    *,
    revision: str | None = None,
    backend: Backend = "torch",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    threads: int | None = None,
) -> EmbeddingModel:
    """Load an embedding model by Hub repo id (``org/name[@revision]``), local folder or alias.

    The format (embedhub, sentence-transformers, open_clip, transformers CLIP) is detected from
    the files; weights load from safetensors only, strictly. ``backend="onnx"`` runs the ONNX
    graphs of a folder written by ``embedhub export`` on ONNX Runtime (CUDA when ``device`` is a
    GPU and onnxruntime-gpu is installed, with ``threads`` intra-op threads); ``"auto"`` takes
    them when present, else torch.

    >>> model = embedhub.load("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> model = embedhub.load("openai/clip-vit-base-patch32@main", device="cuda")  # doctest: +SKIP
    """
    if backend not in ("torch", "onnx", "auto"):
        raise ValueError(f"backend {backend!r} is not available; supported: 'torch', 'onnx', 'auto'")
    dev, dt = _device(device), _dtype(dtype)
    from .formats import LoadOptions, detect

    src = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    fmt = detect(src.folder)
    folder = src.folder
    if src.repo_id is not None:
        folder = download(
            src.repo_id,
            list(fmt.allow_patterns),
            revision=src.revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            token=token,
        )
    if not fmt.supports_onnx:
        if backend == "onnx":
            raise ValueError(
                f"{name} is a {fmt.name} model without embedhub ONNX graphs; export it first with "
                f"`embedhub export {name} --output DIR`, then load DIR with backend='onnx'"
            )
        backend = "torch"
    options = LoadOptions(trust_remote_code=trust_remote_code, backend=backend, device=dev, threads=threads)
    model_folder = ModelFolder(folder)
    parts = fmt.load(model_folder, options)
    check_record(model_folder.record)  # a folder embedhub wrote holds exactly the files it recorded
    return EmbeddingModel(
        parts.towers,
        parts.preprocessors,
        embed_dim=parts.embed_dim,
        name=str(name),
        format=fmt.name,
        folder=folder,
        logit_scale=parts.logit_scale,
        templates=parts.templates,
        device=dev,
        dtype=dt,
        spec=parts.config,
        repo_id=src.repo_id,
        revision=(_snapshot_revision(folder) if src.repo_id is not None else None) or src.revision,
    )


def _snapshot_revision(folder) -> str | None:
    """The commit hash of a Hub snapshot folder (``.../snapshots/<sha>``), else ``None``."""
    import re

    name = folder.name if folder.parent.name == "snapshots" else ""
    return name if re.fullmatch(r"[0-9a-f]{40}", name) else None
