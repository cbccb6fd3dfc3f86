"""The recipes' errors: the bottom of ``training`` (it imports nothing of the package).

A recipe command prints a :class:`RecipeError` and exits 2 (bad usage, config or data), without a traceback.

>>> try:
...     raise ConfigValueError("epochs", -1, "an integer >= 1")
... except RecipeError as exc:
...     print(exc)
epochs=-1: expected an integer >= 1
"""

from __future__ import annotations

from typing import Any


class RecipeError(ValueError):
    """A recipe cannot run with what it was given (the config, its file, the data it names): the recipe
    commands print the message and exit 2 (bad usage or bad input), without a traceback."""


class ConfigValueError(RecipeError):
    """A config value of the wrong type, out of range or not one of the choices; ``key``, ``value`` and
    ``expected`` say which and why."""

    def __init__(self, key: str, value: Any, expected: str, source: str | None = None):
        self.key, self.value, self.expected, self.source = key, value, expected, source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}={value!r}: expected {expected}")


class DataError(RecipeError):
    """Training data that cannot be read as the config says: the message names the file and the line,
    shard member or sample."""


class MissingDataError(DataError, FileNotFoundError):
    """A file the data names (an image of a captions file, a shard) does not exist."""


__all__ = ["ConfigValueError", "DataError", "MissingDataError", "RecipeError"]
