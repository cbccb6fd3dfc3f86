"""ONNX export with a parity gate (installed as ``embedhub.export``; ``embedhub export`` on the CLI).

>>> from embedhub.export import export            # doctest: +SKIP
>>> export("all-MiniLM-L6-v2", "minilm-onnx")     # doctest: +SKIP
"""

from __future__ import annotations

from ._export import GATES, INT8_ERROR_BUDGET, ParityError, export

__all__ = ["GATES", "INT8_ERROR_BUDGET", "ParityError", "export"]
