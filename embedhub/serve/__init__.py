"""``embedhub serve``: an OpenAI-compatible embedding server (texts, token ids and images) batching the
inputs of concurrent requests on one model thread per model.

>>> from embedhub.serve import create_app                     # doctest: +SKIP
>>> app = create_app({"minilm": "all-MiniLM-L6-v2"})           # doctest: +SKIP

Needs ``pip install 'embedhub[serve]'`` (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports

if TYPE_CHECKING:
    from embedhub.serve.app import FINGERPRINT_HEADER, APIError, Limits, create_app
    from embedhub.serve.engine import Engine, EngineFailed, Overloaded
    from embedhub.serve.run import serve

__all__ = ["FINGERPRINT_HEADER", "APIError", "Engine", "EngineFailed", "Limits", "Overloaded", "create_app", "serve"]

__getattr__, __dir__ = lazy_exports(__name__)
