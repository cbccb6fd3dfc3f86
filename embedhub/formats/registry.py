"""The registry of formats (built-in ones first), detection, and saving in embedhub's own format;
re-exported by :mod:`embedhub.formats`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from embedhub._io.folder import ConfigView, ModelFolder, shown
from embedhub.errors import UnknownFormatError
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.modules.weights import find_safetensors, load_strict, read_safetensors

__all__ = [
    "ConfigView",
    "Format",
    "LoadOptions",
    "ModelFolder",
    "ModelParts",
    "can_save_torch",
    "check_writable",
    "detect",
    "find_safetensors",
    "load_strict",
    "format_names",
    "get_format",
    "model_files",
    "read_safetensors",
    "register_format",
    "save_embedhub",
    "unregister_format",
]


_FORMATS: list[Format] = []


def register_format(fmt: Format, *, before: str | None = None, overwrite: bool = False) -> None:
    """Add ``fmt`` to the formats :func:`embedhub.load` detects (last, or ``before`` the named one).

    Example: ``register_format(MyFormat(), before="sentence-transformers")``.
    """
    if not isinstance(fmt, Format):
        raise TypeError(f"register_format takes a Format instance, got {fmt!r}")
    if not fmt.name:
        raise ValueError(f"{type(fmt).__name__}.name must be a non-empty string")
    if type(fmt).matches is Format.matches and not fmt.marker:
        raise ValueError(f"{type(fmt).__name__} needs a marker file or its own matches()")
    if not fmt.allow_patterns:
        raise ValueError(f"{type(fmt).__name__}.allow_patterns must list the files the format needs")
    names = format_names()
    if fmt.name in names:
        if not overwrite:
            raise ValueError(f"format {fmt.name!r} is already registered; pass overwrite=True to replace it")
        unregister_format(fmt.name)
        names = format_names()
    if before is not None and before not in names:
        raise ValueError(f"before={before!r} is not a registered format; registered: {names}")
    _FORMATS.insert(names.index(before) if before is not None else len(_FORMATS), fmt)


def unregister_format(name: str) -> None:
    """Remove the format registered as ``name`` (nothing happens when there is none)."""
    _FORMATS[:] = [f for f in _FORMATS if f.name != name]


def format_names() -> list[str]:
    """The registered formats' names, in detection order."""
    return [f.name for f in _FORMATS]


def get_format(name: str) -> Format:
    """The registered format called ``name``."""
    for f in _FORMATS:
        if f.name == name:
            return f
    raise KeyError(f"no format {name!r}; registered: {format_names()}")


def detect(folder: str | os.PathLike) -> Format:
    """The first registered format whose markers ``folder`` holds, else an :class:`UnknownFormatError`
    that lists what each format expects and what the folder holds."""
    folder = Path(folder)
    for fmt in _FORMATS:
        if fmt.matches(folder):
            return fmt
    present = sorted(shown(p.name) for p in folder.iterdir())[:20] if folder.is_dir() else []
    expected = ", ".join(f"{f.marker or 'its own marker files'} ({f.name})" for f in _FORMATS)
    raise UnknownFormatError(
        f"{shown(folder)} matches no format embedhub loads. Expected one of: {expected}. "
        f"Found: {', '.join(present) or 'no files'}"
    )


def model_files(folder: str | os.PathLike) -> list[str]:
    """The files (relative POSIX paths, sorted) of ``folder`` that its format needs: exactly the files
    a real load of it opens (every backend the folder has), so a file the loader does not read is not
    listed and a nested module or weight shard is; for a folder embedhub saved, also every file its
    ``.embedhub_files.json`` record lists (the sentence-transformers layout written beside embedhub's own).
    What ``push_to_hub`` uploads and what the model's
    fingerprint hashes. The list is kept while none of those files changes.

    >>> model_files("my-model")  # doctest: +SKIP
    ['embedhub_config.json', 'model.safetensors', 'text/config.json', 'text/tokenizer.json']
    """
    from embedhub._io.manifest import open_record

    files = set(detect(folder).files(folder))
    written = open_record(folder)  # a folder embedhub saved: the files its record lists (checked) belong to it too
    if written is not None:
        files.update(written.files)
    return sorted(files)


def _register_builtins() -> None:
    from embedhub.formats import embedhub, hf_clip, model2vec, open_clip, sentence_transformers, transformers_encoder

    for module in (embedhub, sentence_transformers, open_clip, hf_clip, model2vec):
        register_format(module.FORMAT)
    from embedhub.formats import delegated

    register_format(delegated.FORMAT, before=sentence_transformers.FORMAT.name)
    # plain transformers encoders (mean pooling, as sentence-transformers' fallback): tried after all others
    register_format(transformers_encoder.FORMAT)


_register_builtins()


# ------------------------------------------------------------------------------ writing embedhub's own format
def save_embedhub(model: Any, folder: str | os.PathLike, *, torch_weights: bool = True, extra: Any = None,
                  check: Any = None) -> Path:
    """Write ``model`` in embedhub's format, atomically: a staging folder beside ``folder`` (``mkdtemp``), its
    files recorded in ``.embedhub_files.json`` (path, size, SHA-256), then switched into place.

    A re-save into a folder embedhub wrote replaces only the files its record lists (files you added
    stay); until the switch is complete the folder loads only as the old model or the new one.
    ``torch_weights=False`` writes config and preprocessing only; ``extra(staging_folder, config)``
    may add files (ONNX graphs) and config entries before the config is written; ``check(staging_folder)``
    runs on the complete folder before it is recorded and switched (it may add files; an error leaves
    ``folder`` as it was). Refuses a folder that holds files and is not an embedhub model (see
    :func:`check_writable`).
    """
    from embedhub.formats.embedhub import write

    return write(model, Path(folder), torch_weights=torch_weights, extra=extra, check=check)


def can_save_torch(model: Any) -> bool:
    """Whether every tower of ``model`` is a registered tower kind embedhub's format can rebuild."""
    from embedhub.formats.embedhub import can_write_torch

    return can_write_torch(model)


def check_writable(folder: str | os.PathLike) -> None:
    """A ``FileExistsError`` when ``folder`` holds files and is neither a folder embedhub saved or exported
    into nor an embedhub model folder (a save replaces only files embedhub wrote and never touches anything
    else)."""
    from embedhub.formats.embedhub import check_writable as check

    check(Path(folder))
