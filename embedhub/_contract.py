"""The format contract (see :mod:`embedhub.formats`, which re-exports it and holds the registry)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ._folder import ModelFolder


@dataclass
class ModelParts:
    """What a format's :meth:`Format.load` returns: the pieces of an :class:`~embedhub.EmbeddingModel`."""

    #: one tower per modality ("text", "image"): torch modules, or ONNX Runtime runners
    towers: dict[str, Any]
    #: the matching preprocessors (tokenizer, image transform)
    preprocessors: dict[str, Any]
    #: the width of the embeddings every tower returns
    embed_dim: int
    #: CLIP's learned temperature (``exp`` of the log scale), for zero-shot probabilities
    logit_scale: float | None = None
    #: zero-shot prompt templates shipped with the model
    templates: Sequence[str] | None = None
    #: the model's config in embedhub's format, when the format can express it
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`embedhub.load` asks a format to load: code trust, backend, device, threads."""

    trust_remote_code: bool = False
    #: "torch" or "onnx" ("auto" reaches only formats that support ONNX; the others get "torch")
    backend: Literal["torch", "onnx", "auto"] = "torch"
    device: Any = None
    threads: int | None = None


class Format:
    """The contract of a model folder format (subclass it and :func:`register_format` an instance)."""

    name: ClassVar[str] = ""
    #: the file whose presence identifies the format (used by the default :meth:`matches`)
    marker: ClassVar[str] = ""
    #: glob patterns (relative, ``/``-separated; ``*`` does not cross folders) of the files the format needs
    allow_patterns: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`load` can run the model on ONNX Runtime (``backend="onnx"``)
    supports_onnx: ClassVar[bool] = False

    def matches(self, folder: Path) -> bool:
        """Whether ``folder`` is in this format (a cheap check of marker files; no weights are read)."""
        return bool(self.marker) and (Path(folder) / self.marker).is_file()

    def load(self, folder: ModelFolder, options: LoadOptions) -> ModelParts:
        """Build the model's parts from ``folder`` (every file read through ``folder``, so it stays inside)."""
        raise NotImplementedError(f"format {self.name!r} does not implement load()")

    def files(self, folder: str | os.PathLike) -> list[str]:
        """The files of ``folder`` this format needs, as sorted relative POSIX paths (hidden files, and
        links that leave the folder, are left out)."""
        folder = Path(folder)
        root = folder.resolve()
        snapshot = folder.parent.name == "snapshots"  # a Hub cache snapshot links into its blob store
        out = []
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if any(part.startswith(".") for part in rel.split("/")) or not p.is_file():
                continue
            if not snapshot and not p.resolve().is_relative_to(root):
                continue
            if any(_glob(rel, pat) for pat in self.allow_patterns):
                out.append(rel)
        return out


def _glob(rel: str, pattern: str) -> bool:
    return rel.count("/") == pattern.count("/") and fnmatch.fnmatchcase(rel, pattern)
