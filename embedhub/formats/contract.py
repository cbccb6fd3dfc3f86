"""The format contract (see :mod:`embedhub.formats`, which re-exports it and holds the registry)."""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from embedhub._io.folder import ModelFolder, Record


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
    #: named prompts (``{"query": "query: "}``) prepended to texts by ``encode(prompt_name=...)``
    prompts: dict[str, str] | None = None
    #: the prompt ``encode`` applies when no prompt or prompt name is given
    default_prompt_name: str | None = None
    #: "cosine", "dot", "euclidean" or "manhattan": what ``similarity`` computes and whether encode normalises
    similarity_fn_name: str | None = None
    #: the width ``encode`` truncates to by default (Matryoshka models)
    truncate_dim: int | None = None
    #: SigLIP's learned bias of the image-text logits
    logit_bias: float | None = None
    #: whether the towers end in an L2 normalisation (a Normalize module); ``None``: read from the towers
    normalized: bool | None = None
    #: task ("query", "document", ...) -> {modality: (tower, preprocessor)}: towers chosen by ``encode(task=...)``
    routes: dict[str, dict[str, tuple[Any, Any]]] | None = None
    #: the route of a call without a task (or with a task that names no route and no default exists: an error)
    default_route: str | None = None


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
    #: glob patterns (relative, ``/``-separated; ``*`` does not cross folders) of the files the format may own:
    #: what saving into an earlier save replaces. What a model needs (its fingerprint, upload and download
    #: lists) is what a load of it opens: :meth:`files`
    allow_patterns: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`load` can run the model on ONNX Runtime (``backend="onnx"``)
    supports_onnx: ClassVar[bool] = False

    def __init_subclass__(cls, *, name: str | None = None, marker: str | None = None,
                          allow_patterns: Sequence[str] | None = None, **kwargs: Any) -> None:
        """Class keywords set :attr:`name`, :attr:`marker` and :attr:`allow_patterns`:
        ``class MyFormat(Format, name="mine", marker="my_config.json", allow_patterns=["*.json"])``."""
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.name = name
        if marker is not None:
            cls.marker = marker
        if allow_patterns is not None:
            cls.allow_patterns = tuple(allow_patterns)

    def matches(self, folder: Path) -> bool:
        """Whether ``folder`` is in this format (a cheap check of marker files; no weights are read)."""
        return bool(self.marker) and (Path(folder) / self.marker).is_file()

    def marker_json(self, folder: Path, *, errors: bool = False) -> Any:
        """The JSON of the :attr:`marker` file in ``folder`` (read through :class:`ModelFolder`, checked), for
        a :meth:`matches` that looks inside it; ``None`` when there is none, or (unless ``errors``) when it
        cannot be read."""
        if not (Path(folder) / self.marker).is_file():
            return None
        try:
            return ModelFolder(folder).read_json(self.marker)
        except Exception:
            if errors:
                raise
            return None

    @staticmethod
    def opened(folder: Path | ModelFolder, options: LoadOptions | None) -> tuple[ModelFolder, LoadOptions]:
        """``folder`` as a :class:`ModelFolder` and ``options`` (the defaults when ``None``): what :meth:`load`
        works on, so that it may also be called with a path alone.

        >>> Format.opened(Path("."), None)[1]
        LoadOptions(trust_remote_code=False, backend='torch', device=None, threads=None)
        """
        return (folder if isinstance(folder, ModelFolder) else ModelFolder(folder)), options or LoadOptions()

    def load(self, folder: ModelFolder, options: LoadOptions) -> ModelParts:
        """Build the model's parts from ``folder`` (every file read through ``folder``, so it stays inside)."""
        raise NotImplementedError(f"format {self.name!r} does not implement load()")

    def record_backends(self, folder: ModelFolder) -> tuple[str, ...]:
        """The backends :meth:`files` loads ``folder`` with (their files together are the model's)."""
        return ("torch",)

    def files(self, folder: str | os.PathLike) -> list[str]:
        """The files of ``folder`` this format needs, as sorted relative POSIX paths: exactly the files a
        load of it opens (through :class:`ModelFolder`), with each backend of :meth:`record_backends`.
        The list is kept while none of those files changes and no file the load looked for appears."""
        return recorded_files(self, folder)

    def pattern_files(self, folder: str | os.PathLike) -> list[str]:
        """The files of ``folder`` that match :attr:`allow_patterns`, as sorted relative POSIX paths
        (hidden files, and links that leave the folder, are left out)."""
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


#: (resolved folder, format name, backend) -> (the files read and the paths probed with their state, files read)
_RECORDS: dict[tuple[str, str, str], tuple[tuple[Any, ...], list[str]]] = {}


def _state(root: Path, record: Record) -> tuple[Any, ...] | None:
    """What a record depends on: each file read (size, mtime, inode) and each path probed and absent."""
    out: list[Any] = []
    for rel in sorted(record.read):
        try:
            st = os.stat(root / rel)
        except OSError:
            return None
        out.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    out.extend((rel, os.path.lexists(root / rel)) for rel in sorted(record.missing))
    return tuple(out)


def remember(fmt: Format, folder: ModelFolder, backend: str) -> list[str]:
    """Keep the record of a finished load of ``folder`` with ``backend`` (so :func:`recorded_files` need
    not load it again while its files stay as they are); returns the files it read, sorted."""
    files = folder.record.files()
    state = _state(folder.root, folder.record)
    if state is not None and not folder.prefix:
        _RECORDS[(str(folder.root), fmt.name, backend)] = (state, files)
    return files


def _cached(root: Path, fmt: Format, backend: str) -> list[str] | None:
    entry = _RECORDS.get((str(root), fmt.name, backend))
    if entry is None:
        return None
    record = Record()
    for item in entry[0]:
        (record.read if len(item) == 4 else record.missing).setdefault(item[0])
    return list(entry[1]) if _state(root, record) == entry[0] else None


def recorded_files(fmt: Format, folder: str | os.PathLike) -> list[str]:
    """The files loads of ``folder`` in format ``fmt`` open (sorted), from real loads on the CPU with
    each backend of :meth:`Format.record_backends`; reused while none of those files changes and no
    path a load probed appears."""
    import torch

    root = Path(folder).resolve()
    files: set[str] = set()
    for backend in fmt.record_backends(ModelFolder(root)):
        found = _cached(root, fmt, backend)
        if found is None:
            mf = ModelFolder(root)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fmt.load(mf, LoadOptions(backend=backend, device=torch.device("cpu")))  # type: ignore[arg-type]
            found = remember(fmt, mf, backend)
        files.update(found)
    return sorted(files)


class ModelLike(Protocol):
    """What the layers below :class:`embedhub.EmbeddingModel` read of a model (saving, fingerprints), so that
    they describe it without importing it."""

    towers: dict[str, Any]
    preprocessors: dict[str, Any]
    embed_dim: int
    modalities: tuple[str, ...]
    logit_scale: float | None
    logit_bias: float | None
    similarity_fn_name: str
    prompts: dict[str, str]
    default_prompt_name: str | None
    truncate_dim: int | None
    templates: Any
    backend: str
    config: dict[str, Any]
    folder: Any
    format: str | None
    source_files: Any
    default_normalize: bool

    @property
    def dtype(self) -> Any: ...

    def safetensors(self) -> Any: ...

    def save_pretrained(self, folder: Any, *args: Any, **kwargs: Any) -> Any: ...
