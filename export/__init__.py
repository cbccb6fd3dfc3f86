"""ONNX export with a parity gate (installed as ``embedhub.export``; ``embedhub export`` on the CLI).

>>> from embedhub.export import export            # doctest: +SKIP
>>> export("all-MiniLM-L6-v2", "minilm-onnx")     # doctest: +SKIP

The names load on first use, so that ``embedhub --help`` (which lists the ``export`` command) imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._export import GATES, INT8_ERROR_BUDGET, ParityError, export

__all__ = ["GATES", "INT8_ERROR_BUDGET", "ParityError", "export"]


def __getattr__(name: str):
    if name in __all__:
        from . import _export

        return getattr(_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
