"""``embedhub.load``: name -> folder -> format -> model."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from embedhub._io.folder import ModelFolder
from embedhub._io.manifest import check_record
from embedhub.errors import ArgumentError, ModelNotFoundError
from embedhub.hub.download import CONFIG_PATTERNS, download, literal_pattern, resolve
from embedhub.model import EmbeddingModel
from embedhub.modules.backends import Backend

#: at most this many downloads follow the first (config files): each fetches the files the last load asked for
MAX_FETCH_ROUNDS = 8

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
    backend: Backend | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    threads: int | None = None,
    truncate_dim: int | None = None,
) -> EmbeddingModel:
    """Load an embedding model by Hub repo id (``org/name[@revision]``), local folder or alias.

    The format (embedhub, sentence-transformers, open_clip, transformers CLIP) is detected from
    the files; weights load from safetensors only, strictly. ``backend="onnx"`` runs the ONNX
    graphs of a folder written by ``embedhub export`` on ONNX Runtime (CUDA when ``device`` is a
    GPU and onnxruntime-gpu is installed, with ``threads`` intra-op threads); ``"auto"`` takes
    them when present, else torch; the default (``None``) is torch, or ONNX for an export written
    without its torch copy. ``truncate_dim`` makes ``encode`` keep the first that many dims
    (Matryoshka models; default: the model config's, else none).
    A folder whose configs ask for code (a custom module class in
    ``modules.json``, an ``auto_map``) is refused, naming the file and entry, unless ``trust_remote_code=True``:
    then its own library (sentence-transformers) loads it, and embedhub batches, checks and fingerprints it.

    >>> model = embedhub.load("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> model = embedhub.load("openai/clip-vit-base-patch32@main", device="cuda")  # doctest: +SKIP
    """
    if backend is not None and backend not in ("torch", "onnx", "auto"):
        raise ValueError(f"backend {backend!r} is not available; supported: 'torch', 'onnx', 'auto'")
    if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int)
                                     or truncate_dim < 1):
        raise ArgumentError(f"truncate_dim must be None or a positive integer; got {truncate_dim!r}")
    dev, dt = _device(device), _dtype(dtype)
    from embedhub.formats.contract import LoadOptions
    from embedhub.formats.registry import detect

    src = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    fmt = detect(src.folder)
    fetch = None
    if src.repo_id is not None:
        def fetch(paths: list[str]) -> Path:
            return download(src.repo_id, [literal_pattern(p) for p in paths], revision=src.revision,
                            cache_dir=cache_dir, local_files_only=local_files_only, token=token)
    if backend is None:  # torch, unless the folder is an export that has only its ONNX graphs
        from embedhub.formats.embedhub import default_backend

        backend = default_backend(src.folder) if fmt.supports_onnx else "torch"
    if not fmt.supports_onnx:
        if backend == "onnx":
            raise ValueError(
                f"{name} is a {fmt.name} model without embedhub ONNX graphs; export it first with "
                f"`embedhub export {name} --output DIR`, then load DIR with backend='onnx'"
            )
        backend = "torch"
    options = LoadOptions(trust_remote_code=trust_remote_code, backend=backend, device=dev, threads=threads)
    parts, loaded = load_recorded(fmt, src.folder, options, fetch)
    folder = loaded.root
    model = EmbeddingModel(
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
        prompts=parts.prompts,
        default_prompt_name=parts.default_prompt_name,
        similarity_fn_name=parts.similarity_fn_name,
        truncate_dim=truncate_dim if truncate_dim is not None else parts.truncate_dim,
        logit_bias=parts.logit_bias,
        normalized=parts.normalized,
        routes=parts.routes,
        default_route=parts.default_route,
    )
    from embedhub.formats.contract import remember

    #: the files the load opened: what the fingerprint hashes, what saving copies and pushing uploads
    model.source_files = tuple(remember(fmt, loaded, options.backend))
    from embedhub.store.fingerprint import file_stats

    #: how those files were when loaded: a fingerprint taken after they change describes the weights in memory
    model.source_stats = file_stats(loaded.root, model.source_files)
    return model


def load_recorded(fmt: Any, folder: Path, options: Any,
                  fetch: Callable[[list[str]], Path] | None = None) -> tuple[Any, ModelFolder]:
    """``fmt.load`` of ``folder``, recording every file it opens; returns the parts and the folder with
    its record.

    With ``fetch`` (a Hub repo, of which only the config files are here yet) the load runs to a fixed
    point: each time it looks for files that are not here, ``fetch(paths)`` downloads exactly those
    (the loader asks for weights, shards named by an index, tokenizer and module files as it reads
    the configs naming them) and the load runs again, for at most :data:`MAX_FETCH_ROUNDS` rounds.
    """
    asked: set[str] = set()
    for _ in range(MAX_FETCH_ROUNDS + 1):
        mf = ModelFolder(folder)
        try:
            parts, error = fmt.load(mf, options), None
        except Exception as exc:  # a file not downloaded yet shows as any loader error; re-raised when final
            parts, error = None, exc
        new = [p for p in mf.record.missing if p not in asked and not _is_config(p)]
        if fetch is None or not new:
            if error is not None:
                raise error
            check_record(mf.manifest)  # a folder embedhub wrote holds exactly the files it recorded
            return parts, mf
        asked.update(new)
        folder = fetch(sorted(asked))
    raise ModelNotFoundError(
        f"{folder}: loading still asked for new files after {MAX_FETCH_ROUNDS} downloads "
        f"(last: {', '.join(sorted(new)[:5])}); the repository's configs name a chain of files too long to follow"
    )


def _is_config(rel: str) -> bool:
    """Whether the first download (config files) already fetched ``rel`` if the repo has it."""
    return any(fnmatch.fnmatch(rel, pat) for pat in CONFIG_PATTERNS)


def _snapshot_revision(folder) -> str | None:
    """The commit hash of a Hub snapshot folder (``.../snapshots/<sha>``), else ``None``."""
    import re

    name = folder.name if folder.parent.name == "snapshots" else ""
    return name if re.fullmatch(r"[0-9a-f]{40}", name) else None
