"""Run the server: one process under uvicorn, or replicas on Ray Serve.

>>> serve({"minilm": "all-MiniLM-L6-v2"}, port=8080)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from embedhub.errors import ArgumentError, require
from embedhub.serve.app import Limits, create_app

log = logging.getLogger("embedhub.serve")


def parse_model_args(values: list[str]) -> dict[str, str]:
    """``--model`` values as served name -> model: ``NAME`` (served as given) or ``SERVED=NAME``.

    >>> parse_model_args(["all-MiniLM-L6-v2", "clip=/models/clip"])
    {'all-MiniLM-L6-v2': 'all-MiniLM-L6-v2', 'clip': '/models/clip'}
    """
    out: dict[str, str] = {}
    for value in values:
        served, sep, source = value.partition("=")
        if not sep or os.path.exists(value):
            served, source = value, value
        if not served or not source:
            raise ArgumentError(f"--model {value!r}: write NAME or SERVED_NAME=NAME")
        if served in out:
            raise ArgumentError(f"--model: the served name {served!r} is given twice")
        out[served] = source
    return out


def serve(models: Mapping[str, Any], *, host: str = "127.0.0.1", port: int = 8080, engine: str = "local",
          replicas: int = 1, address: str | None = None, threads: int | None = None, log_level: str = "info",
          graceful_seconds: float = 30.0, max_connections: int | None = 1024, **app_options: Any) -> None:
    """Serve ``models`` until SIGTERM / Ctrl-C: a SIGTERM stops taking connections, answers the requests in
    flight (up to ``graceful_seconds``), then exits. ``engine="ray"`` runs ``replicas`` copies on Ray Serve
    (``address``: a Ray cluster; default a local instance). ``max_connections``: connections and requests
    served at once (uvicorn answers 503 beyond). ``app_options`` are :func:`create_app`'s."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        app_options.setdefault("load_options", {}).setdefault("threads", threads)
    if engine == "ray":
        from embedhub.serve.ray_serve import serve_on_ray

        serve_on_ray(models, host=host, port=port, replicas=replicas, address=address, **app_options)
        return
    if engine != "local":
        raise ArgumentError(f"engine must be 'local' or 'ray', got {engine!r}")
    uvicorn = require("uvicorn", "serve", "embedhub serve")
    app = create_app(models, **app_options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_seconds,
                access_log=False, limit_concurrency=max_connections)


__all__ = ["Limits", "parse_model_args", "serve"]
