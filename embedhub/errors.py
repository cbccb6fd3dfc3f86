"""Errors raised by embedhub.

Each error subclasses a builtin too, so callers can catch either
(``except FileNotFoundError`` catches :class:`ModelNotCachedError`).
"""

from __future__ import annotations

import os
from pathlib import Path


class EmbedhubError(Exception):
    """Base class of every error embedhub raises on purpose."""


class ArgumentError(EmbedhubError, ValueError):
    """An argument of a call outside what it allows (``truncate_dim=0``, ``precision="int4"``, an unknown
    ``task``); the message names the argument, what it got and what is allowed."""


class ModelNotFoundError(EmbedhubError, LookupError):
    """A model name is neither a local folder, a known alias nor a Hub repo id."""


class ModelNotCachedError(ModelNotFoundError, FileNotFoundError):
    """Offline (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) and the model is not cached."""


class UnknownFormatError(EmbedhubError, ValueError):
    """A folder's files match none of the formats embedhub loads."""


class ConfigError(UnknownFormatError):
    """A model folder's config is malformed or unsafe: a key of the wrong type or range, a path
    that leaves the folder, an option that would run code. ``file`` and ``key`` say where."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        super().__init__(message)
        self.file = file
        self.key = key


class WeightsError(EmbedhubError, RuntimeError):
    """Weights are missing, corrupted, unsafe (pickle) or do not match the architecture."""


class ItemError(EmbedhubError):
    """An error about one input item: ``index`` is its position in the inputs (``None`` when the
    error is about the call as a whole) and ``detail`` the message without the ``inputs[i]`` prefix."""

    def __init__(self, message: str, *, index: int | None = None):
        super().__init__(message)
        self.index = index
        prefix = f"inputs[{index}]"
        found = index is not None and message.startswith(prefix)
        self.detail = message[len(prefix) :].lstrip(": ") if found else message


class ModalityError(ItemError, ValueError):
    """An input's modality (text or image) is not supported by the model."""


class InputError(ItemError, ValueError):
    """An input item cannot be used: corrupt or truncated image, image too large, ..."""


class InputTypeError(ItemError, TypeError):
    """An input item has a type embedhub cannot embed (None, a number, a nested list, ...)."""


class FingerprintMismatchError(EmbedhubError, ValueError):
    """Stored embeddings were made by another model (or backend, dtype, pooling) than the one at hand."""


class ProvenanceError(FingerprintMismatchError):
    """Stored embeddings whose provenance is missing or malformed, so they cannot be checked against a model.

    ``path`` is the file (``None`` for a fingerprint given as data) and ``field`` the fingerprint
    field at fault (``None`` when the whole record is missing or unreadable). A subclass of
    :class:`FingerprintMismatchError`: ``except FingerprintMismatchError`` refuses every vector
    whose model cannot be confirmed.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, field: str | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.field = field


class EmbeddingsFileError(EmbedhubError, ValueError):
    """A file of stored embeddings cannot be written or read: unknown extension, not a 2-d float
    matrix, empty or null rows, an unreadable file. ``path`` names the file."""

    def __init__(self, message: str, *, path: str | os.PathLike[str]):
        super().__init__(message)
        self.path = Path(path)


class CorpusError(EmbedhubError, ValueError):
    """A corpus cannot be embedded as a whole (``embedhub embed``): no rows, a missing text or id column,
    ids that repeat, an unreadable file. ``path`` names the input; ``column`` the column at fault and
    ``ids`` the repeated ids, when that is the problem."""

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, column: str | None = None,
                 ids: list | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.column = column
        self.ids = ids or []


class JobError(EmbedhubError, ValueError):
    """A batch-embedding job cannot use its output folder: not a job's folder, or a job over another
    input or with other settings (``restart=True`` / ``--restart`` starts it over)."""


class PoolError(EmbedhubError, RuntimeError):
    """A multi-process pool cannot encode: a worker died or could not start (the pool is then stopped), or
    the pool was stopped before."""


class PublishError(EmbedhubError, ValueError):
    """A model cannot be saved or pushed: invalid repo id or revision, not a model folder, no token, ..."""


class MissingDependencyError(EmbedhubError, ImportError):
    """An optional dependency is missing; the message names the pip extra to install."""


def require(module: str, extra: str, purpose: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'embedhub[extra]'``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package, which is not installed: pip install 'embedhub[{extra}]'"
        ) from exc


class DataNotFoundError(EmbedhubError, FileNotFoundError):
    """A dataset (STS-B) is on none of the places it is looked for, or ``$EMBEDHUB_STSB_DIR`` names a folder
    without it; the message names the command that gets it (``embedhub data stsb``)."""


class DataFileError(EmbedhubError, ValueError):
    """A dataset file is malformed: too few columns, a score that is not a number in range, not UTF-8, oversized.
    ``path`` names the file and ``row`` the 1-based row at fault (``None`` when the file as a whole is)."""

    def __init__(self, message: str, *, path: str | os.PathLike[str], row: int | None = None):
        super().__init__(message)
        self.path = Path(path)
        self.row = row

__all__ = [
    "ArgumentError",
    "ConfigError",
    "CorpusError",
    "DataFileError",
    "DataNotFoundError",
    "EmbeddingsFileError",
    "EmbedhubError",
    "FingerprintMismatchError",
    "InputError",
    "InputTypeError",
    "ItemError",
    "JobError",
    "MissingDependencyError",
    "ModalityError",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "PoolError",
    "ProvenanceError",
    "PublishError",
    "require",
    "UnknownFormatError",
    "WeightsError",
]
