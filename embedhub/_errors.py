"""Errors raised by embedhub.

Each error subclasses a builtin too, so callers can catch either
(``except FileNotFoundError`` catches :class:`ModelNotCachedError`).
"""

from __future__ import annotations


class EmbedhubError(Exception):
    """Base class of every error embedhub raises on purpose."""


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


class ModalityError(EmbedhubError, ValueError):
    """An input's modality (text or image) is not supported by the model."""


class InputError(EmbedhubError, ValueError):
    """An input item cannot be used: corrupt or truncated image, image too large, ..."""


class InputTypeError(EmbedhubError, TypeError):
    """An input item has a type embedhub cannot embed (None, a number, a nested list, ...)."""


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
