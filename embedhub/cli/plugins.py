"""Commands of packages built on the library (``embedhub export``, ``embedhub train``, ``embedhub demo``), found
through the ``embedhub.commands`` entry points."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:

    pass
from embedhub.cli.inputs import UsageError


def add_plugins(sub: argparse._SubParsersAction) -> None:
    """Commands of packages built on the library (``embedhub export``, ``embedhub train``).

    They register through the ``embedhub.commands`` entry-point group, each a ``register(subparsers)``
    function, so the library never imports them by name.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="embedhub.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a plugin whose own dependencies are missing
            broken = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            broken.set_defaults(func=_unavailable(ep.name, exc))
            continue
        register(sub)


def _unavailable(name: str, exc: Exception):
    def run(args: argparse.Namespace) -> int:
        raise UsageError(f"the {name} command cannot load: {exc}")

    return run
