"""benchmarks/serve_load.py's load generators count every request's outcome: against a small local server that
answers 200, 429 or too late, each request sent is counted once, under its status or as a timeout."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
serve_load = pytest.importorskip("serve_load")
uvicorn = pytest.importorskip("uvicorn")


def _app(slow_s: float):
    """An ASGI app: POST /v1/embeddings answers 429 for input "busy", sleeps ``slow_s`` for "slow", else 200."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def embeddings(request: Request) -> JSONResponse:
        text = (await request.json())["input"]
        if text == "busy":
            return JSONResponse({"error": {"message": "full"}}, status_code=429, headers={"retry-after": "0"})
        if text == "slow":
            await asyncio.sleep(slow_s)
        row = {"object": "embedding", "embedding": [0.6, 0.8], "index": 0}
        return JSONResponse({"object": "list", "data": [row], "model": "m"})

    return Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])])


@pytest.fixture(scope="module")
def server():
    """The app under uvicorn on a free port of 127.0.0.1, in a thread of this process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app(slow_s=1.0), host="127.0.0.1", port=port, log_level="error", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    yield serve_load.Server("test", [], {}, port)
    srv.should_exit = True
    thread.join(10)


def _bodies(texts: list[str]) -> list[bytes]:
    return [json.dumps({"model": "m", "input": t}).encode() for t in texts]


def test_request_bodies_group_texts_in_order():
    bodies = serve_load.request_bodies(["a", "b", "c"], 2)
    assert [json.loads(b)["input"] for b in bodies] == [["a", "b"], ["c", "a"]]
    assert json.loads(serve_load.request_bodies(["a"], 1)[0])["input"] == "a"


def test_retry_after_is_read_and_bounded():
    assert serve_load._retry_after("2") == 2.0
    assert serve_load._retry_after(None) == serve_load._retry_after("soon") == 1.0
    assert serve_load._retry_after("3600") == serve_load.MAX_RETRY_AFTER
    assert serve_load._retry_after("-1") == 0.0
    assert serve_load._retry_after("nan") == 1.0  # parses as a float, but is not a number of seconds


def test_the_default_client_library_is_checked_when_the_arguments_are_read(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # not installed
    with pytest.raises(SystemExit):
        serve_load.parse_args(["--client", "aiohttp"])
    assert "aiohttp" in capsys.readouterr().err
    assert serve_load.parse_args(["--client", "httpx"]).client == "httpx"


@pytest.mark.parametrize("library", ["aiohttp", "httpx"])
def test_a_client_back_from_retry_after_does_not_race_the_server_closing_its_idle_connection(library, monkeypatch):
    """The server closes idle connections after 1 s and asks clients to retry after 1 s: a client keeps an idle
    connection for less than that (here 0.5 s), so it reconnects; every answer is a 429, no connection error."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(_app(slow_s=0.0), host="127.0.0.1", port=port, log_level="error", lifespan="off",
                            timeout_keep_alive=1)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.setattr(serve_load, "CLIENT_KEEPALIVE_S", 0.5)
    monkeypatch.setattr(serve_load, "_retry_after", lambda value: 1.0)
    try:
        url = serve_load.Server("test", [], {}, port).url
        out = serve_load.run_async(serve_load.closed_loop(url, _bodies(["busy"]), clients=8, duration=3.5,
                                                          per_request=1, timeout=5.0, max_requests=1000,
                                                          library=library))
    finally:
        srv.should_exit = True
        thread.join(10)
    assert out["errors"] == {"429": out["requests"]} and out["requests"] >= 16, out["errors"]


def test_closed_loop_counts_200_and_429(server):
    out = serve_load.run_async(serve_load.closed_loop(server.url, _bodies(["x", "busy", "y", "z"]), clients=3,
                                                      duration=60.0, per_request=1, timeout=5.0, max_requests=40))
    assert out["requests"] == 40
    assert out["ok"] == 30 and out["errors"] == {"429": 10}
    assert out["sentences"] == 30 and out["sentences_per_s"] > 0
    assert 0 < out["p50_ms"] <= out["p99_ms"]


def test_open_loop_counts_every_outcome_and_times_out(server):
    client = serve_load.RawClient(server.port, server.path, max_connections=50, timeout=0.3)
    gen = serve_load.run_async(serve_load.open_loop(client, _bodies(["x", "busy", "slow", "y"]), rate=80.0,
                                                    seconds=0.5))
    assert gen["sent"] == 40
    assert sum(client.statuses.values()) == 40
    assert client.statuses["200"] == 20 and client.statuses["429"] == 10 and client.statuses["timeout"] == 10
    assert len(client.lat_ok) == 20 and len(client.lat_429) == 10
    assert all(dt < 0.3 for dt in client.lat_ok)


def test_open_loop_refuses_beyond_its_connection_cap(server):
    client = serve_load.RawClient(server.port, server.path, max_connections=2, timeout=2.0)
    serve_load.run_async(serve_load.open_loop(client, _bodies(["slow"]), rate=40.0, seconds=0.25))
    assert client.statuses["200"] == 2
    assert client.statuses[serve_load.NOT_SENT] == 8
    assert client.peak_open == 2
