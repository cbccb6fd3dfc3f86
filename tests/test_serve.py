"""``embedhub serve`` through real HTTP: the official ``openai`` client against a running server (a
subprocess, as users start it), concurrency, bad input and faults, SIGTERM, and the engine's cancellation.

Every vector is compared with ``embedhub.load(...).encode(...)`` of the same model in this process."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="pip install 'embedhub[serve]'")
pytest.importorskip("uvicorn", reason="pip install 'embedhub[serve]'")
pytest.importorskip("prometheus_client", reason="pip install 'embedhub[serve]'")
httpx = pytest.importorskip("httpx", reason="pip install 'embedhub[serve]'")

KEY = "sk-test-0123456789"
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0, **headers: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2, headers=headers).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy after {timeout} s")


@contextlib.contextmanager
def server_process(*args: str, env: dict[str, str] | None = None):
    """``embedhub serve ARGS`` as a subprocess on a free port; yields (base url, process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "embedhub", "serve", "--port", str(port), "--threads", "1", *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


@contextlib.contextmanager
def running(app):
    """``app`` under a real uvicorn server in a thread of this process (for tests that reach into it)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(blob: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(blob).decode()


def sentences(n: int, seed: int = 0, lengths: tuple[int, ...] = (1, 3, 8, 20, 60, 150)) -> list[str]:
    """``n`` texts of mixed lengths (``lengths`` words) built from a fixed vocabulary."""
    rng = np.random.default_rng(seed)
    words = ("the a man woman dog cat plays guitar runs quickly over bridge river city night music photo of small "
             "large red green blue eats food table sits under tree sky stars reads book writes letter").split()
    return [" ".join(rng.choice(words, size=k)) + "." for k in rng.choice(lengths, size=n)]


@pytest.fixture(scope="module")
def clip_model(open_clip_dir):
    import embedhub

    return embedhub.load(open_clip_dir, device="cpu")


@pytest.fixture(scope="module")
def server(minilm_path, open_clip_dir):
    """One server process: all-MiniLM-L6-v2 as 'minilm' and a tiny open_clip model as 'clip', with an API key."""
    # --max-queue-wait 60: these tests check answers under concurrency on a shared 2-core machine, not shedding
    with server_process("--model", f"minilm={minilm_path}", "--model", f"clip={open_clip_dir}",
                        "--max-body-bytes", str(4 << 20), "--max-text-chars", "100000", "--max-queue-wait", "60",
                        env={"EMBEDHUB_API_KEY": KEY}) as (url, proc):
        wait_healthy(url, proc)
        yield url


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai", reason="pip install openai")
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def post(url: str, body, *, key: str | None = KEY, raw: bytes | None = None, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    if raw is not None:
        return httpx.post(f"{url}/v1/embeddings", content=raw, headers=headers, timeout=60, **kw)
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=60, **kw)


def assert_openai_error(resp, status: int, *words: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err["message"]
    return err


# ---------------------------------------------------------------------------- the openai client
def test_openai_client_float_base64_dimensions_and_2048_inputs(client, minilm):
    texts = sentences(24, lengths=(1, 3, 8, 20, 60))
    # the client's default asks for base64 and decodes it; float is asked explicitly
    for fmt in (None, "float", "base64"):
        kw = {} if fmt is None else {"encoding_format": fmt}
        r = client.embeddings.create(model="minilm", input=texts, **kw)
        if fmt == "base64":  # asked explicitly, the client hands the string over: little-endian float32
            got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in r.data])
        else:
            got = np.array([d.embedding for d in r.data], dtype=np.float32)
        assert [d.index for d in r.data] == list(range(len(texts)))
        np.testing.assert_allclose(got, minilm.encode(texts), atol=1e-6)
    assert r.model == "minilm" and r.usage.prompt_tokens == sum(len(x) for x in minilm.stages().prepare(texts))
    one = client.embeddings.create(model="minilm", input="A man is playing a guitar.")
    np.testing.assert_allclose(one.data[0].embedding, minilm.encode("A man is playing a guitar."), atol=1e-6)
    r = client.embeddings.create(model="minilm", input=texts[:5], dimensions=64)
    got = np.array([d.embedding for d in r.data])
    assert got.shape == (5, 64)
    np.testing.assert_allclose(got, minilm.encode(texts[:5], truncate_dim=64, normalize=True), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)  # renormalised after truncation
    many = sentences(2048, seed=1, lengths=(1, 2, 4, 8))
    r = client.embeddings.create(model="minilm", input=many)  # base64 on the wire, decoded by the client
    assert len(r.data) == 2048
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), minilm.encode(many), atol=1e-6)


def test_token_id_inputs_equal_the_text(client, minilm):
    texts = ["A man is playing a guitar.", "hello world", " ".join(["word"] * 400)]  # the last is truncated
    tok = minilm.stages()._pre.tokenizer
    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    r = client.embeddings.create(model="minilm", input=ids, encoding_format="float")
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), minilm.encode(texts), atol=1e-6)
    r = client.embeddings.create(model="minilm", input=ids[0], encoding_format="float")  # one token list
    np.testing.assert_allclose(r.data[0].embedding, minilm.encode(texts[0]), atol=1e-6)
    long = " ".join(["music"] * 3000)  # one input of 3000 token ids (more than 2048): truncated like the text
    r = client.embeddings.create(model="minilm", input=tok.encode(long, add_special_tokens=False).ids,
                                 encoding_format="float")
    assert len(r.data) == 1
    np.testing.assert_allclose(r.data[0].embedding, minilm.encode(long), atol=1e-6)


def test_images_two_models_zero_shot_models_and_fingerprint(client, server, clip_model, minilm, photos):
    blobs = [png_bytes(p.resize((48, 40))) for p in photos[:3]]
    r = client.embeddings.create(model="clip", input=[data_uri(b) for b in blobs], encoding_format="float",
                                 extra_body={"modality": "image"})
    np.testing.assert_allclose(np.array([d.embedding for d in r.data]), clip_model.encode_image(blobs), atol=1e-6)
    # the same route serves the other model's texts, each model by its name
    r = client.embeddings.create(model="clip", input=["a photo of a cat"], encoding_format="float")
    np.testing.assert_allclose(r.data[0].embedding, clip_model.encode_text(["a photo of a cat"])[0], atol=1e-6)
    raw = client.embeddings.with_raw_response.create(model="minilm", input="hi")
    assert raw.headers["x-embedhub-fingerprint"] == minilm.fingerprint.id
    raw = client.embeddings.with_raw_response.create(model="minilm", input="hi", dimensions=32)
    assert raw.headers["x-embedhub-fingerprint"] == minilm.fingerprint_for(truncate_dim=32, normalize=True).id
    assert raw.headers["x-embedhub-fingerprint"] != minilm.fingerprint.id
    listed = {m.id: m for m in client.models.list().data}
    assert set(listed) == {"minilm", "clip"}
    assert listed["minilm"].model_extra["fingerprint"] == minilm.fingerprint.id
    labels = ["cat", "rocket", "coffee"]
    resp = httpx.post(f"{server}/v1/zero-shot", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"model": "clip", "input": [data_uri(b) for b in blobs], "labels": labels})
    assert resp.status_code == 200, resp.text
    got = np.array([d["probabilities"] for d in resp.json()["data"]])
    np.testing.assert_allclose(got, clip_model.zero_shot(blobs, labels), atol=1e-6)
    resp = httpx.post(f"{server}/v1/zero-shot", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                      json={"model": "minilm", "input": [data_uri(blobs[0])], "labels": labels})
    assert_openai_error(resp, 400, "zero-shot needs a text and an image tower")


# ---------------------------------------------------------------------------- batching across requests
def test_32_concurrent_clients_get_their_own_rows_and_batches_mix(server, minilm):
    rng = np.random.default_rng(3)
    pool = sentences(300, seed=4, lengths=(1, 3, 8, 20, 40))
    rows = dict(zip(pool, minilm.encode(pool)))  # one text's vector is the same in any batch (to 1e-6)
    requests = [[pool[j] for j in rng.choice(300, size=int(rng.integers(1, 5)))] for _ in range(400)]
    answers: list = [None] * len(requests)

    async def worker(k: int, http) -> None:
        for i in range(k, len(requests), 32):
            resp = await http.post("/v1/embeddings", json={"model": "minilm", "input": requests[i]})
            assert resp.status_code == 200, resp.text
            answers[i] = np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=server, timeout=120, headers={"Authorization": f"Bearer {KEY}"},
                                     limits=httpx.Limits(max_connections=64)) as http:
            await asyncio.gather(*(worker(k, http) for k in range(32)))

    asyncio.run(main())
    for texts, got in zip(requests, answers):
        np.testing.assert_allclose(got, np.stack([rows[t] for t in texts]), atol=1e-5)
    metrics = httpx.get(f"{server}/metrics", timeout=10).text
    mixed = next(float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith('embedhub_batches_mixed_total{model="minilm"}'))
    assert mixed > 0, "no batch held the items of two requests"
    assert 'embedhub_batch_padded_tokens_bucket{le="+Inf",model="minilm"}' in metrics
    assert 'embedhub_requests_total{route="/v1/embeddings",status="200"}' in metrics


# ---------------------------------------------------------------------------- bad input and faults
def bomb_png() -> bytes:
    """A 1x1 PNG whose header claims 100000 x 100000 pixels (a decompression bomb's header)."""
    from PIL import Image

    blob = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    ihdr = blob.index(b"IHDR")
    blob[ihdr + 4: ihdr + 12] = struct.pack(">II", 100_000, 100_000)
    crc = zlib.crc32(bytes(blob[ihdr: ihdr + 17]))
    blob[ihdr + 17: ihdr + 21] = struct.pack(">I", crc)
    return bytes(blob)


@pytest.mark.parametrize("case", [
    "malformed json", "not an object", "input missing", "input number", "empty string", "empty list",
    "mixed list", "2049 items", "float token id", "token id out of vocabulary", "unknown model", "model number",
    "dimensions 0", "dimensions above width", "dimensions string", "bad encoding_format", "bad input_type",
    "unknown prompt_name", "bad base64", "not an image", "decompression bomb", "image url off", "image as text list",
    "too long text", "body over limit", "10 MB string", "deep nesting", "bad modality", "float list", "null list",
    "object list", "NaN list", "zero-shot too many texts", "image on a text model",
])
def test_bad_requests_get_openai_errors_and_the_server_answers(server, case, minilm, minilm_path, open_clip_dir):
    big = "x" * (10 << 20)
    bodies = {
        "malformed json": (400, b'{"model": "minilm", "input": ', "not valid JSON"),
        "not an object": (400, b'["minilm"]', "JSON object"),
        "input missing": (400, {"model": "minilm"}, "'input' must be"),
        "input number": (400, {"model": "minilm", "input": 3.5}, "'input' must be"),
        "empty string": (400, {"model": "minilm", "input": ["ok", ""]}, "input[1] is an empty string"),
        "empty list": (400, {"model": "minilm", "input": []}, "empty list"),
        "mixed list": (400, {"model": "minilm", "input": ["a", 3]}, "input[1]"),
        "2049 items": (400, {"model": "minilm", "input": ["a"] * 2049}, "2049 items; at most 2048"),
        "float token id": (400, {"model": "minilm", "input": [[101, 2.5]]}, "input[0][1]"),
        "token id out of vocabulary": (422, {"model": "minilm", "input": [[7592, 30522]]}, "input[0][1] = 30522"),
        "unknown model": (404, {"model": "gpt-4", "input": "a"}, "'gpt-4' does not exist"),
        "model number": (400, {"model": 7, "input": "a"}, "'model' must be a string"),
        "dimensions 0": (400, {"model": "minilm", "input": "a", "dimensions": 0}, "between 1 and 384"),
        "dimensions above width": (400, {"model": "minilm", "input": "a", "dimensions": 385}, "between 1 and 384"),
        "dimensions string": (400, {"model": "minilm", "input": "a", "dimensions": "64"}, "'dimensions' must be"),
        "bad encoding_format": (400, {"model": "minilm", "input": "a", "encoding_format": "int8"}, "'float' or"),
        "bad input_type": (400, {"model": "minilm", "input": "a", "input_type": "passage"}, "'query' or"),
        "unknown prompt_name": (400, {"model": "minilm", "input": "a", "prompt_name": "nope"}, "'nope'"),
        "bad base64": (400, {"model": "clip", "modality": "image", "input": "data:image/png;base64,@@@"},
                       "not valid base64"),
        "not an image": (422, {"model": "clip", "modality": "image", "input": data_uri(b"hello, not a png")},
                         "input[0]"),
        "decompression bomb": (422, {"model": "clip", "modality": "image", "input": [data_uri(bomb_png())]},
                               "input[0]"),
        "image url off": (400, {"model": "clip", "modality": "image", "input": "http://169.254.169.254/x.png"},
                          "--allow-image-urls"),
        "image as text list": (400, {"model": "clip", "modality": "image", "input": [[1, 2]]}, "data URI"),
        "too long text": (400, {"model": "minilm", "input": "y" * 100_001}, "100001 characters"),
        "body over limit": (413, {"model": "minilm", "input": ["z" * 90_000] * 50}, "bytes"),
        "10 MB string": (413, {"model": "minilm", "input": big}, "bytes"),
        "deep nesting": (400, b'{"model": "minilm", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                         "not valid JSON"),
        "bad modality": (400, {"model": "minilm", "modality": "audio", "input": "a"}, "'modality'"),
        "float list": (400, {"model": "minilm", "input": [1.5]}, "input[0]"),
        "null list": (400, {"model": "minilm", "input": ["a", None]}, "input[1]"),
        "object list": (400, {"model": "minilm", "input": [{}]}, "input[0]"),
        "NaN list": (400, b'{"model": "minilm", "input": [NaN]}', "not valid JSON"),
        "image on a text model": (400, {"model": "minilm", "modality": "image", "input": data_uri(bomb_png())},
                                  "minilm has no image tower"),
        "zero-shot too many texts": (400, {"model": "clip", "input": [data_uri(bomb_png())], "labels": ["a"] * 30,
                                           "templates": ["{}"] * 100}, "3000 texts"),
    }
    status, body, words = bodies[case]
    if case == "zero-shot too many texts":
        resp = httpx.post(f"{server}/v1/zero-shot", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    else:
        resp = post(server, None, raw=body) if isinstance(body, bytes) else post(server, body)
    assert_openai_error(resp, status, words)
    assert str(minilm_path) not in resp.text and str(open_clip_dir) not in resp.text  # served names, no paths
    ok = post(server, {"model": "minilm", "input": "still here", "encoding_format": "float"})
    assert ok.status_code == 200
    np.testing.assert_allclose(ok.json()["data"][0]["embedding"], minilm.encode("still here"), atol=1e-6)


def test_api_key_checked_and_health_metrics_open(server):
    for key in (None, "sk-test-012345678", KEY + "x", "wrong", KEY.upper()):
        resp = post(server, {"model": "minilm", "input": "a"}, key=key)
        assert_openai_error(resp, 401, "API key")
    for header in (f"bearer {KEY}", f"BEARER  {KEY}"):  # the scheme is case-insensitive (RFC 7235)
        resp = httpx.post(f"{server}/v1/embeddings", json={"model": "minilm", "input": "a"}, timeout=30,
                          headers={"Authorization": header})
        assert resp.status_code == 200, resp.text
    for header in (f"Basic {KEY}", KEY, f"Bearer{KEY}"):
        resp = httpx.post(f"{server}/v1/embeddings", json={"model": "minilm", "input": "a"}, timeout=30,
                          headers={"Authorization": header})
        assert_openai_error(resp, 401, "API key")
    resp = httpx.get(f"{server}/v1/models", timeout=10)
    assert_openai_error(resp, 401, "API key")
    assert httpx.get(f"{server}/health", timeout=10).status_code == 200
    assert httpx.get(f"{server}/metrics", timeout=10).status_code == 200
    assert_openai_error(httpx.get(f"{server}/v2/nothing", timeout=10), 404)


def test_auth_all_closes_health_and_metrics(minilm):
    from embedhub.serve import create_app

    app = create_app({"m": minilm}, api_key="k1", auth_all=True)
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, Authorization="Bearer k1")
        for path in ("/health", "/metrics"):
            assert_openai_error(httpx.get(url + path, timeout=10), 401, "API key")
            assert httpx.get(url + path, timeout=10, headers={"Authorization": "Bearer k1"}).status_code == 200
    finally:
        srv.should_exit = True
        t.join(30)


def test_embeddings_answer_alike_on_the_fast_path_and_through_fastapi(minilm, monkeypatch):
    """``POST /v1/embeddings`` skips FastAPI's layers: its answers (vectors, errors, headers, metrics) equal those of
    FastAPI's own route for it, at the root and under a mount point (``root_path``)."""
    from embedhub.serve import app as app_module
    from embedhub.serve import create_app

    bodies = [{"model": "m", "input": ["a dog runs.", "two cats"]},
              {"model": "m", "input": "a dog", "encoding_format": "base64", "dimensions": 32},
              b"{not json", {"model": "nope", "input": "x"}, {"model": "m", "input": "x", "dimensions": 0},
              {"model": "m", "input": ""}, {"model": "m", "input": [[1, 2, 10**9]]}]

    async def answers(root: str) -> tuple[list, str]:
        app = create_app({"m": minilm}, api_key="k")
        transport = httpx.ASGITransport(app=app, root_path=root)
        out = []
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            for key in ("k", "wrong"):
                for body in bodies:
                    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
                    r = await c.post(f"{root}/v1/embeddings", headers={"Authorization": f"Bearer {key}"}, **kw)
                    out.append((r.status_code, r.json(), r.headers.get("x-embedhub-fingerprint"),
                                r.headers.get("content-type")))
            metrics = (await c.get(f"{root}/metrics")).text
        app.state.embedhub.stop()
        counts = sorted(line for line in metrics.splitlines() if line.startswith("embedhub_requests_total{"))
        return out, counts

    fast, mounted = asyncio.run(answers("")), asyncio.run(answers("/api"))
    monkeypatch.setattr(app_module._HotPath, "__call__",  # every request through FastAPI's route
                        lambda self, scope, receive, send: self.app(scope, receive, send))
    routed = asyncio.run(answers(""))
    assert fast == routed == mounted
    statuses = [a[0] for a in fast[0]]
    assert statuses == [200, 200, 400, 404, 400, 400, 422] + [401] * 7, statuses
    assert 'embedhub_requests_total{route="/v1/embeddings",status="200"} 2.0' in fast[1]
    vectors = [d["embedding"] for d in fast[0][0][1]["data"]]
    np.testing.assert_allclose(vectors, minilm.encode(["a dog runs.", "two cats"]), atol=1e-6)


def test_a_client_gone_before_its_body_arrived_is_counted_499_not_a_server_failure(minilm, caplog):
    """A client that disconnects mid-body is answered (and counted) 499, as one gone while its items wait, not
    as a 500 with the server's error logged."""
    from embedhub.serve import create_app

    async def main():
        app = create_app({"m": minilm})
        messages = [{"type": "http.request", "body": b'{"model": "m", "in', "more_body": True},
                    {"type": "http.disconnect"}]
        sent: list[dict] = []

        async def receive():
            return messages.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"",
                 "root_path": "", "headers": [(b"content-length", b"40")], "client": ("127.0.0.1", 1),
                 "server": ("test", 80)}
        await app(scope, receive, send)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            metrics = (await c.get("/metrics")).text
        app.state.embedhub.stop()
        return sent[0]["status"], metrics

    with caplog.at_level("ERROR", logger="embedhub.serve"):
        status, metrics = asyncio.run(main())
    assert status == 499 and 'embedhub_requests_total{route="/v1/embeddings",status="499"} 1.0' in metrics
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_embeddings_keep_middleware_and_handlers_added_to_the_app_and_metrics_name_routes_under_root_slash(minilm):
    """Middleware (CORS) and error handlers added to the app after ``create_app`` apply to ``POST /v1/embeddings``
    as to every route; under a root path of ``/`` the metrics still name the routes (as Starlette's router reads
    the path), not 'other'."""
    from fastapi.responses import JSONResponse
    from starlette.middleware.cors import CORSMiddleware

    from embedhub.serve import create_app
    from embedhub.serve.app import APIError

    async def own_error(request, exc):
        return JSONResponse({"own": exc.status}, status_code=exc.status)

    async def main():
        app = create_app({"m": minilm})
        app.add_middleware(CORSMiddleware, allow_origins=["https://example.org"])
        app.add_exception_handler(APIError, own_error)
        slash = create_app({"m": minilm})
        out = []
        for a, root in ((app, ""), (slash, "/")):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=a, root_path=root),
                                         base_url="http://test") as c:
                headers = {"Origin": "https://example.org"}
                out.append(await c.post("/v1/embeddings", json={"model": "m", "input": "a dog"}, headers=headers))
                out.append(await c.post("/v1/embeddings", json={"model": "nope", "input": "a dog"}))
                out.append(await c.get("/metrics"))
            a.state.embedhub.stop()
        return out

    ok, own, _, slash_ok, _, metrics = asyncio.run(main())
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://example.org"
    assert own.status_code == 404 and own.json() == {"own": 404}
    assert slash_ok.status_code == 200
    assert 'embedhub_requests_total{route="/v1/embeddings",status="200"} 1.0' in metrics.text
    assert 'embedhub_requests_total{route="/v1/embeddings",status="404"} 1.0' in metrics.text


def test_engine_failure_turns_health_503_and_says_why(minilm_path):
    import embedhub
    from embedhub.serve import create_app

    model = embedhub.load(minilm_path, device="cpu")
    healthy = embedhub.load(minilm_path, device="cpu")
    with running(create_app({"broken": model, "fine": healthy})) as url:
        assert post(url, {"model": "broken", "input": "ok"}, key=None).status_code == 200

        def out_of_memory(batch):  # a fault injected into the model thread: the tower runs out of memory
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

        served = _STATES[-1].models["broken"]
        for st in served._stages.values():  # the stages the server made for the first request
            st._run = out_of_memory
        err = assert_openai_error(post(url, {"model": "broken", "input": "boom"}, key=None), 503, "out of memory")
        assert err["type"] == "server_error"
        health = httpx.get(f"{url}/health", timeout=10)
        assert health.status_code == 503
        assert "out of memory" in health.json()["models"]["broken"]["reason"]
        assert health.json()["models"]["fine"]["state"] == "ready"
        assert_openai_error(post(url, {"model": "broken", "input": "again"}, key=None), 503, "out of memory")
        assert post(url, {"model": "fine", "input": "still served"}, key=None).status_code == 200


_STATES: list = []


@pytest.fixture(autouse=True)
def _track_states(monkeypatch):
    """Keep every ServeState made by create_app in this module (to reach a running app's engines)."""
    from embedhub.serve import app as app_module

    original = app_module.ServeState.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        _STATES.append(self)

    monkeypatch.setattr(app_module.ServeState, "__init__", init)
    yield
    _STATES.clear()


def test_full_queue_answers_429_with_retry_after_then_recovers(minilm):
    from embedhub.serve import create_app

    gate = threading.Event()
    with running(create_app({"m": minilm}, max_queue=8)) as url:
        engine = _STATES[-1].models["m"].engine

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                blocker = asyncio.ensure_future(engine_call(engine, gate.wait))
                await asyncio.sleep(0.2)
                first = asyncio.ensure_future(http.post("/v1/embeddings", json={"model": "m", "input": ["a"] * 6}))
                while engine.queued < 6:
                    await asyncio.sleep(0.02)
                refused = await http.post("/v1/embeddings", json={"model": "m", "input": ["b"] * 3})
                gate.set()
                done = await first
                await blocker
                return refused, done

        refused, done = asyncio.run(scenario())
        err = assert_openai_error(refused, 429, "queue")
        assert err["type"] == "rate_limit_error" and refused.headers["retry-after"] == "1"
        assert done.status_code == 200
        assert post(url, {"model": "m", "input": ["b"] * 3}, key=None).status_code == 200


async def engine_call(engine, fn):
    """``fn`` run on the engine's model thread from another event loop (a thread of its own)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, lambda: asyncio.run(engine.call(fn)))


def test_client_disconnect_cancels_its_queued_items(minilm):
    from embedhub.serve import create_app

    gate = threading.Event()
    with running(create_app({"m": minilm})) as url:
        engine = _STATES[-1].models["m"].engine
        stages = _STATES[-1].models["m"].stages("text", None, None)
        ran: list[int] = []
        original = stages.run
        stages.run = lambda items: (ran.append(len(items)), original(items))[1]
        blocker = threading.Thread(target=lambda: asyncio.run(engine.call(gate.wait)))
        blocker.start()
        time.sleep(0.2)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while its items wait
            httpx.post(f"{url}/v1/embeddings", json={"model": "m", "input": sentences(50)}, timeout=1.0)
        deadline = time.monotonic() + 10
        while engine.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        gate.set()
        blocker.join(10)
        assert post(url, {"model": "m", "input": "after"}, key=None).status_code == 200
        assert sum(ran) == 1, f"the disconnected request's items ran: batches of {ran}"
        assert engine.queued == 0 and engine.in_flight == 0


def test_sigterm_with_50_requests_in_flight_answers_them_all(minilm_path, minilm):
    texts = [" ".join(["music"] * 120)] * 4  # 4 long texts per request: 50 requests keep one thread busy for seconds
    with server_process("--model", f"m={minilm_path}", "--max-queue-wait", "600") as (url, proc):
        wait_healthy(url, proc)
        results: list = []

        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=300,
                                         limits=httpx.Limits(max_connections=60)) as http:
                tasks = [asyncio.ensure_future(http.post("/v1/embeddings", json={"model": "m", "input": texts}))
                         for _ in range(50)]
                held, deadline = 0.0, time.monotonic() + 60
                while held < 50 and time.monotonic() < deadline:  # until the server holds all 50
                    await asyncio.sleep(0.05)
                    metrics = (await http.get("/metrics")).text
                    line = next(x for x in metrics.splitlines() if x.startswith('embedhub_in_flight_requests{'))
                    held = float(line.split()[-1])
                assert held == 50
                proc.send_signal(signal.SIGTERM)
                results.extend(await asyncio.gather(*tasks, return_exceptions=True))

        asyncio.run(main())
        assert proc.wait(120) in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM once it has drained
        statuses = [getattr(r, "status_code", r) for r in results]
        assert statuses == [200] * 50, (statuses, proc.stderr.read()[-3000:])
        want = minilm.encode(texts)
        for r in results:
            np.testing.assert_allclose(np.array([d["embedding"] for d in r.json()["data"]]), want, atol=1e-5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health", timeout=5)


# ---------------------------------------------------------------------------- the model's stages
def test_stages_equal_encode_and_check_token_ids(minilm, clip_model, photos):
    from embedhub.errors import ArgumentError, InputError

    texts = sentences(30, seed=5)
    st = minilm.stages("text")
    np.testing.assert_allclose(st.finish(st.run(st.prepare(texts))), minilm.encode(texts), atol=1e-6)
    np.testing.assert_allclose(st.finish(st.run(st.prepare(texts)), truncate_dim=16),
                               minilm.encode(texts, truncate_dim=16), atol=1e-6)
    with pytest.raises(InputError, match=r"inputs\[1\]\[0\] = -1"):
        st.prepare_token_ids([[5], [-1]])
    with pytest.raises(InputError, match=r"inputs\[0\] is an empty list"):
        st.prepare_token_ids([[]])
    blobs = [png_bytes(p.resize((40, 40))) for p in photos[:2]]
    im = clip_model.stages("image")
    np.testing.assert_allclose(im.finish(im.run(im.prepare(blobs))), clip_model.encode_image(blobs), atol=1e-6)
    with pytest.raises(ArgumentError, match="prompt"):
        minilm.stages("text", prompt="query: ").prepare_token_ids([[5]])


def test_serve_cli_parses_models_and_refuses_bad_flags(tmp_path):
    from embedhub.serve.run import parse_model_args

    assert parse_model_args(["a", "b=/x"]) == {"a": "a", "b": "/x"}
    folder = tmp_path / "odd=name"
    folder.mkdir()
    assert parse_model_args([str(folder)]) == {str(folder): str(folder)}  # an existing path is a path
    from embedhub.errors import ArgumentError

    with pytest.raises(ArgumentError, match="twice"):
        parse_model_args(["a=x", "a=y"])
    run = subprocess.run([sys.executable, "-m", "embedhub", "serve", "--model", "x", "--replicas", "2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--engine ray" in run.stderr
    run = subprocess.run([sys.executable, "-m", "embedhub", "serve", "--model", "x", "--port", "99999"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "99999 is not a port" in run.stderr
    run = subprocess.run([sys.executable, "-m", "embedhub", "serve", "--model", "x", "--auth-all"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "EMBEDHUB_API_KEY": ""})
    assert run.returncode == 2 and "API key" in run.stderr


def test_a_model_that_fails_to_load_is_reported_by_health(tmp_path):
    with server_process("--model", f"bad={tmp_path}") as (url, proc):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                health = httpx.get(f"{url}/health", timeout=2)
                if health.json()["status"] == "failed":
                    break
            time.sleep(0.2)
        assert health.status_code == 503 and "bad" in health.json()["models"]
        assert health.json()["models"]["bad"]["reason"].startswith(f"loading {tmp_path}")
        err = assert_openai_error(post(url, {"model": "bad", "input": "a"}), 503, "failed to load")
        assert str(tmp_path) not in err["message"]  # no path of the server's machine in an answer
        assert err["code"] == "engine_failed"
        assert json.loads(httpx.get(f"{url}/v1/models", timeout=5).text)["data"][0]["state"] == "failed"


def test_ray_serve_two_replicas_give_the_single_process_vectors(minilm_path, minilm):
    """``--engine ray --replicas 2`` on a local Ray instance: the openai client gets encode's vectors, both
    replicas answer, and SIGTERM ends the command and its Ray instance."""
    pytest.importorskip("ray.serve", reason="pip install 'embedhub[serve-ray]'")
    openai = pytest.importorskip("openai", reason="pip install openai")
    from concurrent.futures import ThreadPoolExecutor

    texts = sentences(24, seed=11, lengths=(2, 8, 30))
    with server_process("--engine", "ray", "--replicas", "2", "--model", f"minilm={minilm_path}",
                        env={"RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}) as (url, proc):
        wait_healthy(url, proc, timeout=240)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=2, timeout=120)

        def one(i: int) -> np.ndarray:
            r = client.embeddings.create(model="minilm", input=texts[i % 24: i % 24 + 3], encoding_format="float")
            return np.array([d.embedding for d in r.data])

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, range(48)))
        for i, g in enumerate(got):
            np.testing.assert_allclose(g, minilm.encode(texts[i % 24: i % 24 + 3]), atol=1e-6)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        log = proc.stdout.read() + proc.stderr.read()
    answering = {line.split("pid=")[1].split(")")[0] for line in log.splitlines()
                 if "ServeReplica:embedhub" in line and "POST /v1/embeddings 200" in line}
    assert len(answering) == 2, f"replicas that answered: {answering}"


def test_queue_refuses_beyond_max_wait_seconds_of_measured_work(minilm):
    """Once full batches have been timed, a queue holding more than ``max_wait`` seconds of model work refuses
    new requests (Retry-After: the whole seconds it holds); it takes them again once drained."""
    from embedhub.serve import Engine, Overloaded

    engine = Engine(minilm, max_wait=0.05, max_batch_size=32, name="m").start()
    stages = minilm.stages()

    async def main():
        assert engine.queued_seconds == 0.0
        await engine.embed(stages, stages.prepare(sentences(64, seed=2, lengths=(8,))))  # two full batches timed
        gate = threading.Event()
        blocker = asyncio.ensure_future(engine.call(gate.wait))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(engine.embed(stages, stages.prepare(sentences(300, seed=3, lengths=(40,)))))
        await asyncio.sleep(0.1)
        assert engine.queued == 300 and engine.queued_seconds > 0.05
        with pytest.raises(Overloaded, match="s of work") as refused:
            await engine.embed(stages, stages.prepare(["one more"]))
        assert refused.value.retry_after >= 1
        gate.set()
        assert (await waiting).shape == (300, 384)
        await blocker
        assert engine.queued == 0 and engine.queued_seconds == pytest.approx(0.0, abs=1e-9)
        assert (await engine.embed(stages, stages.prepare(["one more"]))).shape == (1, 384)

    try:
        asyncio.run(main())
    finally:
        engine.stop()


def in_one_window(engine, submit, *, return_exceptions: bool = False) -> list:
    """Start ``engine``, hold its model thread on a call while ``await submit()`` queues requests (the futures it
    returns), so they wait as one window; then let it run and return their results in order."""
    gate = threading.Event()

    async def main():
        engine.start()
        blocker = asyncio.ensure_future(engine.call(gate.wait))
        await asyncio.sleep(0.1)
        jobs = await submit()
        await asyncio.sleep(0.1)
        gate.set()
        await blocker
        return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=return_exceptions), 30)

    try:
        return asyncio.run(main())
    finally:
        engine.stop(5)


def one_text_each(engine, stages, texts: list[str]) -> tuple[list, list[int], list[dict]]:
    """Send each of ``texts`` as its own request, all in one window (:func:`in_one_window`): their results in
    order, the indices of the requests in the order they were answered, and the engine's batch events."""
    done: list[int] = []
    batches: list[dict] = []
    engine._observe = lambda event, **v: batches.append(v)

    async def one(i: int, text: str):
        out = await engine.embed(stages, stages.prepare([text]))
        done.append(i)
        return out

    async def submit():
        return [asyncio.ensure_future(one(i, t)) for i, t in enumerate(texts)]

    return in_one_window(engine, submit), done, batches


def test_engine_finishes_each_request_of_a_batch_with_its_own_width(minilm):
    """One batch holds requests at the model's defaults (finished for the whole batch on the model thread) and at
    truncated widths: each request's rows equal encode's with its own settings; a width above the model's fails
    that request before it queues, and the engine keeps working."""
    from embedhub.errors import EmbedhubError
    from embedhub.serve import Engine

    engine = Engine(minilm, name="m")
    stages = minilm.stages()
    texts = [sentences(3, seed=i, lengths=(8, 12, 20)) for i in range(6)]  # of similar lengths: one batch
    dims = [None, 16, None, 64, 384, None]

    async def submit():
        jobs = [asyncio.ensure_future(engine.embed(stages, stages.prepare(t), truncate_dim=d,
                                                   normalize=None if d is None else True))
                for t, d in zip(texts, dims)]
        with pytest.raises(EmbedhubError, match="385"):
            await engine.embed(stages, stages.prepare(["too wide"]), truncate_dim=385)
        return jobs

    batches: list[int] = []
    engine._observe = lambda event, **v: batches.append(v["requests"])
    results = in_one_window(engine, submit)
    assert batches == [6] and engine.failure is None  # one batch mixed all six
    for t, d, got in zip(texts, dims, results):
        want = minilm.encode(t) if d is None else minilm.encode(t, truncate_dim=d, normalize=True)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_requests_are_answered_in_the_order_they_came(minilm):
    """Requests of one text each, alternating shorter and longer (of similar lengths: within 32 tokens), batches
    of 2 rows: the batches are the requests in arrival order. Cutting the window by length instead would put
    the two shortest texts (the oldest and a newer one) in the first batch, ahead of an older longer text."""
    from embedhub.serve import Engine

    engine = Engine(minilm, max_batch_size=2, name="m")
    stages = minilm.stages()
    texts = ["a dog.", " ".join(["the long sentence goes on"] * 5), " ".join(["another long one"] * 7),
             "a cat.", " ".join(["and a third long sentence"] * 4), "a bird."]
    lengths = [stages.cost(x) for x in stages.prepare(texts)]
    assert max(lengths) - min(lengths) <= 32 and max(lengths) > 2 * min(lengths), lengths
    results, done, batches = one_text_each(engine, stages, texts)
    assert [b["rows"] for b in batches] == [2, 2, 2], batches
    assert [set(done[k:k + 2]) for k in (0, 2, 4)] == [{0, 1}, {2, 3}, {4, 5}], done
    for text, got in zip(texts, results):
        np.testing.assert_allclose(got, minilm.encode([text]), atol=1e-6)
    assert engine.queued == 0


def test_short_texts_are_not_padded_to_the_length_of_long_ones(minilm):
    """Requests of one text each, alternating short (a few tokens) and long (over 60), batches of 4 rows: the
    oldest request's batch takes the newer short texts and leaves the long ones for the next batch, so no short
    text is padded to a long one's length; each group keeps the order the requests came in."""
    from embedhub.serve import Engine

    engine = Engine(minilm, max_batch_size=4, name="m")
    stages = minilm.stages()
    texts = ["a dog.", " ".join(["the long sentence goes on"] * 12), "a cat.",
             " ".join(["another long one"] * 20), "a bird.", " ".join(["and a third long sentence"] * 13)]
    lengths = [stages.cost(x) for x in stages.prepare(texts)]
    assert min(lengths[1::2]) - max(lengths[::2]) > 32, lengths
    results, done, batches = one_text_each(engine, stages, texts)
    assert set(done[:3]) == {0, 2, 4} and set(done[3:]) == {1, 3, 5}, done
    padded = [b["padded_tokens"] for b in batches]
    assert padded == [3 * max(lengths[::2]), 3 * max(lengths[1::2])], (padded, lengths)
    for text, got in zip(texts, results):
        np.testing.assert_allclose(got, minilm.encode([text]), atol=1e-6)


def test_a_large_request_is_cut_into_batches_of_similar_lengths(minilm):
    """One request of 24 texts of mixed lengths, batches of 8 rows: the engine runs the batches `encode` plans
    (longest first, the same padded tokens), and the rows come back in the request's order."""
    from embedhub.modules.batching import plan_batches
    from embedhub.serve import Engine

    engine = Engine(minilm, max_batch_size=8, name="m")
    stages = minilm.stages()
    rng = np.random.default_rng(3)
    texts = [" ".join(["word"] * int(n)) for n in rng.integers(1, 60, size=24)]
    padded: list[int] = []
    engine._observe = lambda event, **v: padded.append(v["padded_tokens"])

    async def submit():
        return [asyncio.ensure_future(engine.embed(stages, stages.prepare(texts)))]

    (got,) = in_one_window(engine, submit)
    lengths = np.array([int(stages.cost(x)) for x in stages.prepare(texts)])
    want = [len(b) * int(lengths[b].max()) for b in plan_batches(lengths, 8, engine.max_batch_tokens)]
    assert padded == want, (padded, want)
    np.testing.assert_allclose(got, minilm.encode(texts), atol=1e-6)


def test_first_come_batch_serves_the_oldest_request_then_similar_lengths_in_order():
    """Random windows: the batch keeps the row and padded-token bounds; it starts with the oldest request's items,
    longest first, cut as ``plan_batches`` cuts them; each later item, in the order of the requests, joined
    without padding any row much (no longer than the batch's longest and similar to it, or longer and the
    shortest row similar to it); and no item left out could join the batch."""
    from embedhub.modules.batching import first_come_batch, plan_batches, similar

    rng = np.random.default_rng(0)
    for _ in range(500):
        n, size = int(rng.integers(1, 60)), int(rng.integers(1, 20))
        lengths = rng.integers(1, 300, size=n) if rng.random() < 0.7 else rng.choice([8, 12, 200, 230], size=n)
        requests = np.sort(rng.integers(0, int(rng.integers(1, n + 1)), size=n))
        budget = None if rng.random() < 0.3 else int(rng.integers(1, 3000))
        got = first_come_batch(lengths, requests, size, budget).tolist()
        case = (lengths.tolist(), requests.tolist(), size, budget, got)

        def fits(rows: list[int], size=size, budget=budget, lengths=lengths) -> bool:
            return len(rows) <= size and (budget is None or len(rows) * lengths[rows].max() <= budget)

        def joins(i: int, rows: list[int], lengths=lengths) -> bool:
            m, lo, hi = int(lengths[i]), int(lengths[rows].min()), int(lengths[rows].max())
            return similar(hi, m) if m <= hi else similar(m, lo)

        assert len(got) >= 1 and (len(got) == 1 or fits(got)), case
        oldest = np.flatnonzero(requests == requests.min())
        first = oldest[plan_batches(lengths[oldest], size, budget)[0]].tolist()
        assert got[:len(first)] == first, case
        later = got[len(first):]
        if len(first) < len(oldest):  # the oldest request fills the batch
            assert not later, case
            continue
        assert [requests[i] for i in later] == sorted(requests[i] for i in later), case
        for k, i in enumerate(later):
            assert joins(i, got[:len(first) + k]), (case, i)
        for i in sorted(set(range(n)) - set(got)):
            assert not (fits([*got, i]) and joins(i, got)), (case, i)


def test_a_failing_batch_fails_every_request_of_its_window(minilm):
    """The model thread fails in the second batch of a window: all four requests get EngineFailed (none hangs),
    and the engine refuses new work, saying why."""
    from embedhub.serve import Engine, EngineFailed

    engine = Engine(minilm, max_batch_size=2, name="m")
    stages = minilm.stages()
    calls: list[int] = []
    real_run = stages.run

    def second_fails(items):
        calls.append(len(items))
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")
        return real_run(items)

    stages.run = second_fails

    async def submit():
        return [asyncio.ensure_future(engine.embed(stages, stages.prepare([f"text {i}"]))) for i in range(4)]

    results = in_one_window(engine, submit, return_exceptions=True)
    kinds = [type(r).__name__ for r in results]
    assert kinds.count("EngineFailed") >= 2 and set(kinds) <= {"ndarray", "EngineFailed"}, kinds
    assert all(isinstance(r, EngineFailed) for r in results[-2:])  # the window's later batch failed too
    assert engine.failure == "RuntimeError: CUDA out of memory" and not engine.healthy
    with pytest.raises(EngineFailed, match="out of memory"):
        engine.check_admission(1)


def test_a_failure_finishing_rows_on_the_model_thread_answers_every_request(minilm):
    """The model thread fails after the tower ran, while finishing a batch's rows: every request of the window
    gets EngineFailed once (none waits forever), and the engine says why."""
    from embedhub.serve import Engine, EngineFailed

    engine = Engine(minilm, max_batch_size=2, name="m")
    stages = minilm.stages()  # stages of its own: the patch below stays on them
    real_finish = stages.finish

    def fails_on_the_model_thread(emb, **kw):
        if emb.shape[0] and threading.current_thread().name.startswith("embedhub-engine"):
            raise MemoryError("out of memory while finishing")
        return real_finish(emb, **kw)

    stages.finish = fails_on_the_model_thread

    async def submit():
        return [asyncio.ensure_future(engine.embed(stages, stages.prepare([f"text {i}"] * (1 + i % 2)),
                                                   **({"truncate_dim": 8} if i == 3 else {}))) for i in range(4)]

    results = in_one_window(engine, submit, return_exceptions=True)
    assert all(isinstance(r, EngineFailed) for r in results), results
    assert not engine.healthy and "out of memory while finishing" in engine.failure


def test_cancelled_requests_stop_counting_against_the_queue_at_once(minilm):
    from embedhub.serve import Engine

    engine = Engine(minilm, max_queue=100, name="m").start()
    stages = minilm.stages()
    gate = threading.Event()

    async def main():
        blocker = asyncio.ensure_future(engine.call(gate.wait))
        await asyncio.sleep(0.1)
        gone = asyncio.ensure_future(engine.embed(stages, stages.prepare(["x"] * 90)))
        await asyncio.sleep(0.05)
        assert engine.queued == 90
        gone.cancel()
        await asyncio.sleep(0.05)
        assert engine.queued == 0 and engine.queued_seconds == 0.0  # before the model thread reaches them
        kept = asyncio.ensure_future(engine.embed(stages, stages.prepare(["y"] * 60)))  # fits: 60 <= 100
        await asyncio.sleep(0.05)
        assert engine.queued == 60
        gate.set()
        await blocker
        return await kept

    try:
        assert asyncio.run(main()).shape == (60, 384)
    finally:
        engine.stop(5)
    assert engine.queued == 0


def fake_dns(monkeypatch, answers: dict) -> list[str]:
    """Make ``socket.getaddrinfo`` answer the names of ``answers`` (each an address, a list of them, or a function
    of how many times the name was looked up, from 1, giving them) and every other name as before; the list of
    the names of ``answers`` looked up, in order, is returned and grows as they are."""
    real_getaddrinfo = socket.getaddrinfo
    asked: list[str] = []

    def resolve(host, *args, **kwargs):
        if host not in answers:
            return real_getaddrinfo(host, *args, **kwargs)
        asked.append(host)
        found = answers[host]
        found = found(asked.count(host)) if callable(found) else found
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (a, args[0] if args else 80)) for a in ([found] if isinstance(found, str) else found)]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return asked


def tls_for(name: str, folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority and a server certificate for ``name`` signed by it, written to ``folder``:
    (CA certificate, server certificate, server key), PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "embedhub test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@contextlib.contextmanager
def image_host(blob: bytes, tls: tuple[Path, Path] | None = None):
    """A real HTTP(S) server on 127.0.0.1 that answers every GET with ``blob`` (a PNG) and records the Host
    headers (and TLS server names) it was sent; ``tls``: (certificate, key). Yields (port, hosts, server names)."""
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hosts: list[str] = []
    names: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hosts.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        ctx.sni_callback = lambda sock, name, context: names.append(name)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], hosts, names
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_an_image_url_is_fetched_from_the_address_that_was_checked(scheme, clip_model, photos, monkeypatch, tmp_path):
    """DNS rebinding: a name that resolves to an allowed address for the check and to another one afterwards.
    The server connects to the address it checked, sending the name as Host (and, over TLS, as the server name
    the certificate is verified against), so the image arrives and equals ``encode_image``; the name is resolved
    once. The hosting (a real HTTP(S) server on 127.0.0.1, its certificate from a test CA) and the DNS answers
    are this machine's (no network here): ``_fetchable`` lets 127.0.0.1 alone pass as public, and later answers
    for the name point at 127.0.0.2, where nothing listens."""
    import embedhub.serve.app as serve_app
    from embedhub.serve import Limits, create_app

    blob = png_bytes(photos[0].resize((48, 40)))
    tls = None
    if scheme == "https":
        ca, cert, key = tls_for("images.test", tmp_path)
        tls = (cert, key)
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the test CA is the only one trusted
    asked = fake_dns(monkeypatch, {"images.test": lambda k: "127.0.0.1" if k == 1 else "127.0.0.2"})  # rebinding
    monkeypatch.setattr(serve_app, "_fetchable", lambda address: str(address) == "127.0.0.1")
    with image_host(blob, tls) as (port, hosts, names), \
            running(create_app({"clip": clip_model}, limits=Limits(allow_image_urls=True))) as url:
        image_url = f"{scheme}://images.test:{port}/cat.png"
        resp = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
            "model": "clip", "modality": "image", "input": [image_url], "encoding_format": "float"})
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(resp.json()["data"][0]["embedding"], clip_model.encode_image([blob])[0],
                                   atol=1e-6)
        assert asked == ["images.test"] and hosts == [f"images.test:{port}"]
        assert names == (["images.test"] if tls else [])
        # an address that is not allowed is refused at the check, before any connection
        resp = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
            "model": "clip", "modality": "image", "input": [image_url]})
        assert_openai_error(resp, 400, "not a public address")
        assert hosts == [f"images.test:{port}"]


@pytest.mark.parametrize("address, fetchable", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("64:ff9b::808:808", True), ("2002:808:808::1", True),
    ("::ffff:10.0.0.1", False), ("64:ff9b::a00:1", False), ("64:ff9b::a9fe:a9fe", False),
    ("64:ff9b:1::808:808", False), ("2002:a00:1::1", False), ("2002:a9fe:a9fe::", False), ("::10.0.0.1", False),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", False), ("fec0::1", False)])
def test_an_ipv6_address_that_carries_a_private_ipv4_one_is_not_fetched(address, fetchable):
    """A NAT64 (64:ff9b::/96), 6to4, Teredo, mapped or IPv4-compatible address reaches the IPv4 address it carries
    through a translating network: it is fetchable only when that address is; the NAT64 local-use prefix and
    site-local addresses never are."""
    import ipaddress

    from embedhub.serve.app import _fetchable

    assert _fetchable(ipaddress.ip_address(address)) is fetchable


def test_malformed_image_url_ports_and_uppercase_schemes_get_a_400(clip_model, monkeypatch):
    """A port Python's URL parser rejects ('+80', out of range) is a 400 naming the input, not a 500; a name
    whose answer is a NAT64 address of a private host is refused before any connection; 'HTTPS://' is a URL
    (schemes are case-insensitive), checked like any other. DNS answers are this machine's (no network here)."""
    from embedhub.serve import Limits, create_app

    fake_dns(monkeypatch, {"private.test": "10.0.0.7", "nat64.test": "64:ff9b::a00:7"})
    with running(create_app({"clip": clip_model}, limits=Limits(allow_image_urls=True))) as url:
        def refused(image_url: str, *words: str) -> None:
            resp = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
                "model": "clip", "modality": "image", "input": ["data:image/png;base64,AAAA", image_url]})
            err = assert_openai_error(resp, 400, "input[1]", *words)
            assert err["param"] == "input"

        refused("http://private.test:+80/x.png", "port is malformed")
        refused("http://private.test:99999/x.png", "port is malformed")
        refused("http://nat64.test/x.png", "not a public address")
        refused("HTTPS://private.test/x.png", "not a public address")


def test_an_image_url_redirect_chain_stops_at_the_fetch_deadline(monkeypatch):
    """Each hop of a redirect chain gets what is left of ``url_timeout``, not a fresh timeout: hops that each
    answer slowly end the fetch at its deadline (a 400) instead of holding the fetching thread for every hop.
    The host is a real local server standing in for a public one (``_fetchable`` lets 127.0.0.1 pass)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import embedhub.serve.app as serve_app
    from embedhub.serve import Limits
    from embedhub.serve.app import APIError, _fetch

    seen: list[str] = []

    class SlowRedirect(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.path)
            time.sleep(0.6)
            self.send_response(302)
            self.send_header("Location", f"/hop{len(seen)}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowRedirect)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(serve_app, "_fetchable", lambda address: str(address) == "127.0.0.1")
    limits = Limits(allow_image_urls=True, url_timeout=1.0)
    try:
        with pytest.raises(APIError) as failed:
            _fetch(f"http://127.0.0.1:{httpd.server_address[1]}/x.png", 2, limits, time.monotonic() + 1.0)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert failed.value.status == 400 and "input[2]" in failed.value.message
    assert len(seen) <= 2, seen  # 0.6 s a hop: the second hop runs out of the 1 s; without the deadline, 4 hops


def test_an_image_url_is_fetched_from_the_next_checked_address_when_one_refuses(photos, monkeypatch):
    """A name with two public addresses whose first takes no connections (a dead node of a round-robin name): the
    fetch tries the next checked address, as a client resolving the name itself would, without resolving again.
    The hosting and DNS answers are this machine's (no network here): ``_fetchable`` lets 127.0.0.1 and 127.0.0.3
    pass as public; nothing listens on 127.0.0.3."""
    import embedhub.serve.app as serve_app
    from embedhub.serve import Limits
    from embedhub.serve.app import _fetch

    blob = png_bytes(photos[0].resize((24, 20)))
    asked = fake_dns(monkeypatch, {"images.test": ["127.0.0.3", "127.0.0.1"]})
    monkeypatch.setattr(serve_app, "_fetchable", lambda address: str(address) in ("127.0.0.1", "127.0.0.3"))
    with image_host(blob) as (port, hosts, _):
        got = _fetch(f"http://images.test:{port}/cat.png", 0, Limits(allow_image_urls=True), time.monotonic() + 10)
    assert got == blob and asked == ["images.test"] and hosts == [f"images.test:{port}"]


def test_an_image_host_dripping_its_headers_is_cut_off_at_the_fetch_deadline(monkeypatch):
    """A host that sends its response headers a byte at a time keeps every read within its timeout; the fetch's
    deadline shuts the connection down, so the fetching thread is free again at ``url_timeout`` (a 400 saying so)
    rather than when the host has finished. A real local server stands in for a public host (``_fetchable``)."""
    import embedhub.serve.app as serve_app
    from embedhub.serve import Limits
    from embedhub.serve.app import APIError, _fetch

    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Padding: " + b"x" * 60 + b"\r\n\r\n"
    sent: list[int] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def drip():
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            try:
                for i in range(len(head)):
                    conn.sendall(head[i:i + 1])
                    sent.append(i)
                    time.sleep(0.05)
            except OSError:  # the client shut the connection down
                pass

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    monkeypatch.setattr(serve_app, "_fetchable", lambda address: str(address) == "127.0.0.1")
    limits = Limits(allow_image_urls=True, url_timeout=1.0)
    try:
        with pytest.raises(APIError) as failed:
            _fetch(f"http://127.0.0.1:{listener.getsockname()[1]}/x.png", 1, limits, time.monotonic() + 1.0)
        thread.join(30)
    finally:
        listener.close()
    assert failed.value.status == 400 and "input[1]" in failed.value.message and "took over" in failed.value.message
    assert len(sent) < len(head)  # cut off before the host had sent its headers (about 5 s of them)


def test_stalled_bodies_get_408_and_image_urls_reach_public_hosts_only(minilm, clip_model):
    from embedhub.serve import Limits, create_app
    from embedhub.serve.app import APIError, _public_host

    for url in ("http://127.0.0.1/x.png", "http://localhost:1/x.png", "http://10.1.2.3/x.png",
                "http://169.254.169.254/latest/meta-data", "http://[::1]/x.png", "http://0.0.0.0/x.png",
                "file:///etc/passwd"):
        with pytest.raises(APIError) as refused:
            _public_host(url, 3)
        assert refused.value.status == 400 and "input[3]" in refused.value.message
    limits = Limits(body_timeout=1.0, allow_image_urls=True)
    with running(create_app({"m": minilm, "clip": clip_model}, limits=limits)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # promises 1000 bytes, sends 10
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")
            answer = sock.recv(4096).decode()
            sock.settimeout(5)
            rest = sock.recv(4096)
            while rest:  # the server closes the connection after answering (a stalled client holds nothing)
                answer += rest.decode()
                rest = sock.recv(4096)
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 1 s" in answer
        resp = httpx.post(f"{url}/v1/embeddings", timeout=30, json={
            "model": "clip", "modality": "image", "input": [f"{url}/health"]})  # the server itself
        assert_openai_error(resp, 400, "not a public address")
        assert post(url, {"model": "m", "input": "still here"}, key=None).status_code == 200


def test_an_image_its_preprocessor_cannot_resize_is_a_422_and_the_engine_keeps_working(clip_model, photos):
    """An image of extreme aspect ratio (70000 x 1: few pixels, but resizing its shortest side would make
    hundreds of megapixels) is refused while it is decoded, as a 422 naming the item, not on the model thread,
    where it would fail the engine for every request."""
    from PIL import Image

    from embedhub.serve import create_app

    thin = png_bytes(Image.new("RGB", (70000, 1), (120, 30, 200)))
    photo = data_uri(png_bytes(photos[0]))
    with running(create_app({"clip": clip_model})) as url:
        refused = httpx.post(f"{url}/v1/embeddings", json={"model": "clip", "modality": "image",
                                                           "input": [photo, data_uri(thin)]}, timeout=60)
        assert refused.status_code == 422 and "input[1]" in refused.json()["error"]["message"], refused.text
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        ok = httpx.post(f"{url}/v1/embeddings", json={"model": "clip", "modality": "image",
                                                      "input": [photo]}, timeout=60)
        assert ok.status_code == 200


def test_batches_full_by_the_token_budget_are_timed_so_the_queue_stays_bounded_in_time(minilm):
    """Texts so long that the token budget stops a batch before 16 rows (here 2048 tokens, ~200-token texts: 10
    rows; a 512-token model at 4096 alike) still give the engine its rate, so ``max_wait`` refuses beyond it."""
    from embedhub.serve import Engine, Overloaded

    engine = Engine(minilm, max_batch_tokens=2048, max_wait=0.05, name="m").start()
    stages = minilm.stages()
    prepared = stages.prepare(sentences(40, seed=5, lengths=(150,)))
    assert max(map(len, prepared)) * 16 > 2048

    async def main():
        await engine.embed(stages, prepared[:20])  # two batches, each full by tokens
        assert engine._rate.get("text", 0) > 0
        gate = threading.Event()
        blocker = asyncio.ensure_future(engine.call(gate.wait))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(engine.embed(stages, prepared))
        await asyncio.sleep(0.1)
        assert engine.queued_seconds > 0.05
        with pytest.raises(Overloaded):
            await engine.embed(stages, prepared[:1])
        gate.set()
        await blocker
        await waiting

    try:
        asyncio.run(main())
    finally:
        engine.stop()


def test_a_request_cancelled_after_the_engine_failed_leaves_the_queue_count_at_zero(minilm):
    """The model thread fails while a request waits; its client goes before the failure reaches it: the queue
    count stays 0 (the failure emptied the queue), never negative."""
    from embedhub.serve import Engine

    engine = Engine(minilm, max_batch_size=1, name="m").start()
    stages = minilm.stages()
    real_run = stages.run

    def fails(items):
        raise RuntimeError("device lost")

    stages.run = fails

    async def main():
        first = asyncio.ensure_future(engine.embed(stages, stages.prepare(["a"])))
        second = asyncio.ensure_future(engine.embed(stages, stages.prepare(["b", "c", "d"])))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        time.sleep(0.3)  # the event loop is busy while the model thread fails
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        stages.run = real_run
        engine.stop(5)
    assert not engine.healthy and engine.queued == 0 and engine.in_flight == 0


def test_a_request_larger_than_the_window_is_cut_by_length_as_encode_cuts_it():
    """A request of more items than the engine's window (2048 > 4 x 256) is taken whole, so its batches are
    plan_batches' (encode's), not a window's at a time, which padded short texts to long ones."""
    from embedhub.modules.batching import plan_batches
    from embedhub.serve import Engine

    class Model:
        embed_dim = 2
        device = torch.device("cpu")

    class Stages:
        modality, key = "text", ("text", None, None)
        batches: list = []

        def cost(self, x):
            return x

        def run(self, items):
            self.batches.append(sorted(items, reverse=True))
            return torch.zeros(len(items), 2)

        def finish(self, emb, **kw):
            return emb.numpy()

    lengths = [int(x) for x in np.random.default_rng(0).choice([4, 16, 64, 128, 256], size=2048)]
    engine = Engine(Model(), max_batch_tokens=4096, max_wait=None).start()
    stages = Stages()
    try:
        asyncio.run(engine.embed(stages, lengths))
    finally:
        engine.stop()
    planned = [sorted((lengths[i] for i in b), reverse=True) for b in plan_batches(np.array(lengths), 256, 4096)]
    assert stages.batches == planned


def test_first_come_batch_of_no_items_is_empty():
    from embedhub.modules.batching import first_come_batch

    assert first_come_batch(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), 4, 10).tolist() == []


def test_large_bodies_are_parsed_one_at_a_time(minilm, monkeypatch):
    """Parsing holds the interpreter's lock and a body's objects can take 20x its bytes: concurrent large bodies
    are parsed one after another (peak memory of one parse), each still answered."""
    import embedhub.serve.app as serve_app
    from embedhub.serve import create_app

    real, state = serve_app._loads, {"now": 0, "most": 0}
    lock = threading.Lock()

    def counting(body):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.05)
            return real(body)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(serve_app, "_loads", counting)
    body = json.dumps({"model": "m", "input": [[]] * 200_000}).encode()  # over the offload size: a worker parses
    with running(create_app({"m": minilm})) as url:
        def post(_):
            return httpx.post(f"{url}/v1/embeddings", content=body, timeout=60,
                              headers={"content-type": "application/json"}).status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            codes = list(pool.map(post, range(6)))
    assert codes == [400] * 6 and state["most"] == 1
