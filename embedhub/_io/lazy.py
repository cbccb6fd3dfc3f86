"""Lazy exports for package ``__init__`` files: a public name is imported from its module on first use, so
``import embedhub`` and ``embedhub --help`` stay free of torch (huggingface_hub's pattern).

The package's ``if TYPE_CHECKING:`` block is the one list of what it exports and from where: type checkers and
the API reference read it statically, and :func:`lazy_exports` reads it to know which module to import.

>>> import embedhub.hub
>>> "push_folder" in dir(embedhub.hub)
True
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


@functools.cache
def exports_of(init_file: str) -> dict[str, str]:
    """``{public name: defining module}`` from the ``if TYPE_CHECKING:`` imports of a package's ``__init__``.

    >>> exports_of(__import__("embedhub.hub").hub.__file__)["push_folder"]
    'embedhub.hub.publish'
    """
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))
    table: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for imp in node.body:
                if isinstance(imp, ast.ImportFrom) and imp.module:
                    table.update({a.asname or a.name: imp.module for a in imp.names})
    return table


def lazy_exports(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: each name of its ``TYPE_CHECKING`` imports is imported from its
    module on first access, then kept in the package."""

    def __getattr__(name: str) -> Any:
        module = exports_of(sys.modules[package].__file__).get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports_of(sys.modules[package].__file__)))

    return __getattr__, __dir__
