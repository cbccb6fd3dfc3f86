"""The server as a Ray Serve deployment: ``replicas`` copies of the same app (the server keeps no state
between requests, so any replica answers any request), on a local Ray instance or a cluster.

>>> serve_on_ray({"minilm": "all-MiniLM-L6-v2"}, replicas=2, port=8080)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

from embedhub.errors import ArgumentError, require
from embedhub.serve.app import create_app


def ray_app(models: Mapping[str, Any], *, replicas: int = 1, num_cpus: float | None = None,
            **app_options: Any) -> Any:
    """A bound Ray Serve application of :func:`create_app` (``replicas`` copies, each loading the models
    itself: ``models`` maps served names to model names or folders every replica can reach)."""
    require("ray.serve", "serve-ray", "embedhub serve --engine ray")
    from ray import serve

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ArgumentError(f"replicas must be an int >= 1, got {replicas!r}")
    sources: dict[str, str] = {}
    for name, source in models.items():
        if not isinstance(source, (str, os.PathLike)):
            raise ArgumentError(f"{name!r}: on Ray every replica loads its models; give a model name or folder")
        sources[name] = os.fspath(source)

    def build() -> Any:
        app = create_app(sources, **app_options)
        app.state.embedhub.start()  # load now, not on the first request
        return app

    options: dict[str, Any] = {"name": "embedhub", "num_replicas": replicas}
    if num_cpus is not None:
        options["ray_actor_options"] = {"num_cpus": num_cpus}
    return serve.deployment(serve.ingress(build)(), **options).bind()


def serve_on_ray(models: Mapping[str, Any], *, host: str = "127.0.0.1", port: int = 8080, replicas: int = 1,
                 address: str | None = None, **app_options: Any) -> None:
    """Start Ray Serve (``address``: a Ray cluster, else a new local instance), deploy :func:`ray_app` at ``/``
    and block until SIGTERM or Ctrl-C, then shut the deployment down."""
    ray = require("ray", "serve-ray", "embedhub serve --engine ray")
    from ray import serve

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(ray_app(models, replicas=replicas, **app_options), name="embedhub", route_prefix="/")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"embedhub serve: {replicas} replica(s) on Ray Serve at http://{host}:{port}", flush=True)
    stop.wait()
    if address is not None:  # a cluster that outlives this command: remove this application from it
        done = threading.Thread(target=serve.delete, args=("embedhub",), daemon=True)
        done.start()
        done.join(60)
    ray.shutdown()  # a local instance started above ends with it


__all__ = ["ray_app", "serve_on_ray"]
