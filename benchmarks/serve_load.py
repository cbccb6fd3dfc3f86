"""Embedding servers under load: ``embedhub serve`` against infinity-emb and a plain FastAPI + sentence-transformers
endpoint, all serving the same local all-MiniLM-L6-v2 folder on the same threads, in one run.

**Closed loop** (the default). Each selected server runs as a subprocess with ``--threads`` threads (OMP, MKL,
OpenBLAS and Rayon thread counts in its environment; ``--threads`` for embedhub serve and st_server.py, which set
torch's; torch reads ``OMP_NUM_THREADS`` in infinity). All are started one after the other (each waits until its
``/health`` answers 200), warmed up, and their vectors checked: a sample of short and long texts, 8 requests in
flight, each row against sentence-transformers' ``encode(normalize_embeddings=True)`` in this process (cosine >
0.9999, rows in order). Then, for ``--reps`` repetitions, every setting (texts x clients) runs against each server
in turn, the servers' order rotating per repetition, so the sides alternate as in the other benchmarks while idle
servers wait. A setting is ``--clients`` closed-loop clients (asyncio, one ``httpx.AsyncClient`` with one
connection each) sending ``--per-request`` texts per request for ``--duration`` seconds:

- short texts: the first ``--n-short`` unique STS-B train sentences (file order, as ``encode_text.py``);
- long texts: consecutive unique STS-B train sentences joined until they reach ~``--long-tokens`` tokens (200).

Per server and setting: sentences/s (of 200 answers), p50 and p99 latency in ms (200 answers, client side,
connection included), the other answers by status, the CPU the client (this process), the server and everything
else took (in cores), the server's RSS. The ratios embedhub / infinity and embedhub / st-server are the medians of
the per-repetition ratios. Every figure is also given over the quiet repetitions only (other processes took at most
0.2 cores meanwhile; on a shared machine the others are what decides the figures). The direct baseline:
``embedhub.load(folder).encode(text)`` in this process, one short text per call, measured right before embedhub
serve's 1-client short setting; the report gives embedhub serve's 1-client p50 minus that p50 per repetition (the
HTTP, JSON and scheduling cost of one request), and the p50 of ``GET /health`` on the same kind of client (the HTTP
round trip alone, no model work).

**Overload** (``--overload``): against one server (``--overload-server``, default embedhub): its sustainable rate
(closed loop, 64 clients, ``--overload-texts``), its p99 there and at 1 client; then an open-loop generator sends
``--overload-factor`` (10) times that request rate for ``--overload-seconds`` (30), each request with a client
timeout (``--request-timeout``), over at most ``--overload-connections`` connections. It counts every outcome
(statuses, timeouts, connection errors, requests it could not send), the p99 of the 200s against the p99 at the
sustainable rate, the server's RSS (process and children, psutil) before, at peak during and after, and checks the
server answers normally afterwards (sequential requests, vectors against the reference).

Run (a quiet machine; the load generator shares the cores with the servers, its CPU share is reported)::

    . .venv/bin/activate
    bash benchmarks/setup_infinity.sh                     # once: infinity-emb in /work/venvs/infinity
    python benchmarks/serve_load.py                       # 3 servers, 1/8/64 clients, short+long, 8 s, 2 reps
    python benchmarks/serve_load.py --duration 3 --reps 1 --clients 1,64 --servers embedhub,infinity
    python benchmarks/serve_load.py --json serve.json --plot serve.png
    python benchmarks/serve_load.py --overload --json overload.json   # only the overload test
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness  # before numpy and torch: it records the load average the script started at
import numpy as np
from harness import (
    add_data_option,
    args_record,
    first_sentences,
    machine,
    minilm_folder,
    minilm_tokenizer,
    offline,
    package_versions,
    print_load,
    print_table,
    run_cli,
    stsb_pairs,
    uptime_line,
)

LOAD_AT_START = harness.LOAD_AT_START
offline()

SERVED = "all-MiniLM-L6-v2"  # the model name every server serves the folder under
SERVERS = ("embedhub", "infinity", "st")
LABELS = {"embedhub": "embedhub serve", "infinity": "infinity-emb", "st": "FastAPI + sentence-transformers"}
DEFAULT_INFINITY_VENV = Path(os.environ.get("INFINITY_VENV", "/work/venvs/infinity"))
COSINE_MIN = 0.9999
HERE = Path(__file__).resolve().parent
NOT_SENT = "not sent (connection cap)"
CONTENDED = 0.2  # cores other processes took during a setting, above which its figures are not trustworthy
MAX_RETRY_AFTER = 5.0  # seconds a closed-loop client waits after a 429 at most
#: seconds a closed-loop client keeps an idle connection: under uvicorn's keep-alive timeout (5 s), so a client
#: back from a Retry-After wait opens a new connection rather than racing the server closing its old one
CLIENT_KEEPALIVE_S = 4.0
IDLE_S = 2.0  # the open-loop generator reuses a keep-alive connection idle at most this long (uvicorn closes at 5 s)


# ---------------------------------------------------------------------------- texts
def build_texts(data: Path | None, n_short: int, n_long: int, long_tokens: int, folder: Path) -> dict[str, Any]:
    """Short texts (the first ``n_short`` unique STS-B sentences) and long ones (consecutive unique sentences joined
    until each has at least ``long_tokens`` tokens), with their token counts (special tokens included, truncated at
    256 as the model reads them)."""
    tok = minilm_tokenizer(folder)
    pool = first_sentences(stsb_pairs(data), n_short, data or "STS-B train")
    every = list(harness.unique_sentences(stsb_pairs(data)))
    inner = [len(e.ids) - 2 for e in tok.encode_batch(every)]
    long: list[str] = []
    part: list[str] = []
    count = 0
    for text, n in zip(every, inner):
        part.append(text)
        count += n
        if count >= long_tokens - 2:
            long.append(" ".join(part))
            part, count = [], 0
            if len(long) == n_long:
                break
    if len(long) < n_long:
        raise SystemExit(f"STS-B holds only {len(long)} texts of {long_tokens} tokens; asked for --n-long {n_long}")
    out: dict[str, Any] = {"short": pool, "long": long}
    for kind in ("short", "long"):
        lengths = [len(e.ids) for e in tok.encode_batch(out[kind])]
        out[f"{kind}_tokens"] = {"texts": len(lengths), "mean": float(np.mean(lengths)), "max": int(max(lengths)),
                                 "min": int(min(lengths))}  # fmt: skip
    return out


def request_bodies(texts: list[str], per_request: int) -> list[bytes]:
    """One OpenAI embeddings request body per group of ``per_request`` consecutive texts (a string when 1)."""
    bodies = []
    for start in range(0, len(texts), per_request):
        group = [texts[(start + j) % len(texts)] for j in range(per_request)]
        payload = group[0] if per_request == 1 else group
        bodies.append(json.dumps({"model": SERVED, "input": payload, "encoding_format": "float"}).encode())
    return bodies


# ---------------------------------------------------------------------------- servers
@dataclass
class Server:
    """A server under test: how it starts, where it answers, its process once started."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health_path: str = "/health"
    path: str = "/v1/embeddings"
    log: Path | None = None
    proc: subprocess.Popen | None = None
    start_seconds: float = float("nan")
    failure: str | None = None
    rss: dict[str, float] = field(default_factory=dict)
    check: dict[str, float] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base + self.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[key] = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0",
               PYTHONUNBUFFERED="1")  # fmt: skip
    return env


def make_server(name: str, args: argparse.Namespace, folder: Path) -> Server:
    """The command line of server ``name`` on a free port of 127.0.0.1."""
    port, env, threads = free_port(), thread_env(args.threads), str(args.threads)
    if name == "embedhub":
        argv = [sys.executable, "-m", "embedhub", "serve", "--model", f"{SERVED}={folder}", "--host", "127.0.0.1",
                "--port", str(port), "--threads", threads, *shlex.split(args.embedhub_args)]  # fmt: skip
    elif name == "infinity":
        exe = args.infinity_venv / "bin" / "infinity_emb"
        if not exe.is_file():
            raise FileNotFoundError(f"{exe} not found: run `bash benchmarks/setup_infinity.sh` or pass --infinity-venv")
        argv = [str(exe), "v2", "--model-id", str(folder), "--served-model-name", SERVED, "--engine", "torch",
                "--device", "cpu", "--batch-size", str(args.infinity_batch_size), "--no-vector-disk-cache",
                "--url-prefix", "/v1", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                *shlex.split(args.infinity_args)]  # fmt: skip
    elif name == "st":
        argv = [sys.executable, str(HERE / "st_server.py"), "--model", str(folder), "--name", SERVED,
                "--port", str(port), "--threads", threads]  # fmt: skip
    else:
        raise ValueError(f"unknown server {name!r}; expected one of {', '.join(SERVERS)}")
    return Server(name, argv, env, port)


def process_tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss_mib(pid: int) -> float:
    """Resident memory of the process ``pid`` and its children, MiB."""
    import psutil

    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by the process ``pid`` and its live children."""
    import psutil

    total = 0.0
    for p in process_tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start(server: Server, logs: Path, timeout: float) -> bool:
    """Start ``server`` and wait until ``/health`` answers 200; False (with ``server.failure``) when it exits or does
    not get healthy within ``timeout`` seconds."""
    import httpx

    server.log = logs / f"{server.name}.log"
    t0 = time.perf_counter()
    with open(server.log, "wb") as out:
        server.proc = subprocess.Popen(server.argv, env=server.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=harness.REPO)  # fmt: skip
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.perf_counter() - t0 < timeout:
            if server.proc.poll() is not None:
                server.failure = f"exited with {server.proc.returncode} before /health answered 200"
                return False
            try:
                if client.get(server.base + server.health_path).status_code == 200:
                    server.start_seconds = time.perf_counter() - t0
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
    server.failure = f"/health did not answer 200 within {timeout:.0f} s"
    stop(server)
    return False


def stop(server: Server) -> None:
    """SIGTERM the server's process group (started in its own session), SIGKILL after 20 s."""
    proc = server.proc
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------- closed-loop load
def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop when it is installed (a cheaper loop leaves more CPU to the servers)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def machine_busy_s() -> float:
    return harness.CpuWatch._machine_busy_s()


def percentiles(lat_s: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms; nan when empty."""
    if not lat_s:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(lat_s) * 1e3, [50, 99])
    return float(p50), float(p99)


def _retry_after(value: str | None) -> float:
    """A 429's ``Retry-After`` in seconds (a number; 1 when missing or not a number), at most ``MAX_RETRY_AFTER``."""
    try:
        seconds = float(value) if value is not None else 1.0
    except ValueError:
        seconds = 1.0
    if seconds != seconds:  # "nan" parses as a float but is not a number of seconds
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


async def closed_loop(url: str, bodies: list[bytes], clients: int, duration: float, per_request: int,
                      timeout: float, max_requests: int, library: str = "aiohttp") -> dict[str, Any]:  # fmt: skip
    """``clients`` closed-loop clients, each with its own connection, sending the next body of ``bodies`` (a shared
    counter) until ``duration`` seconds have passed or ``max_requests`` were sent; their outcomes. A client that gets
    a 429 waits its ``Retry-After`` (at most ``MAX_RETRY_AFTER`` s) before its next request. ``library``: the HTTP
    client, ``aiohttp`` (default) or ``httpx``."""
    counter = itertools.count()
    lat: list[float] = []
    statuses: Counter[str] = Counter()
    headers = {"content-type": "application/json"}
    t0 = time.perf_counter()
    deadline = t0 + duration
    last_done = t0
    new_client = _CLIENTS[library]

    async def client() -> None:
        nonlocal last_done
        async with new_client(timeout) as send:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= max_requests:
                    return
                start_t = time.perf_counter()
                status, retry_after = await send(url, bodies[i % len(bodies)], headers)
                end_t = time.perf_counter()
                last_done = max(last_done, end_t)
                statuses[status] += 1
                if status == "200":
                    lat.append(end_t - start_t)
                if retry_after > 0:  # as the openai client does: wait before the next request
                    await asyncio.sleep(min(retry_after, max(deadline - time.perf_counter(), 0.0)))

    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = last_done - t0
    p50, p99 = percentiles(lat)
    ok = statuses.get("200", 0)
    return {"requests": sum(statuses.values()), "ok": ok, "sentences": ok * per_request, "elapsed_s": elapsed,
            "sentences_per_s": ok * per_request / elapsed if elapsed > 0 else 0.0, "p50_ms": p50, "p99_ms": p99,
            "errors": {k: v for k, v in statuses.items() if k != "200"}}  # fmt: skip


@contextlib.asynccontextmanager
async def _aiohttp_client(timeout: float) -> AsyncIterator[Callable[..., Awaitable[tuple[str, float]]]]:
    """A ``send(url, body, headers, method="POST") -> (status, retry_after)`` on one aiohttp connection."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=1, keepalive_timeout=CLIENT_KEEPALIVE_S)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as c:

        async def send(url: str, body: bytes | None, headers: dict[str, str],
                       method: str = "POST") -> tuple[str, float]:
            try:
                async with c.request(method, url, data=body, headers=headers) as r:
                    await r.read()
                    retry = _retry_after(r.headers.get("retry-after")) if r.status == 429 else 0.0
                    return str(r.status), retry
            except asyncio.TimeoutError:
                return "timeout", 0.0
            except aiohttp.ClientError as exc:
                return type(exc).__name__, 0.0

        yield send


@contextlib.asynccontextmanager
async def _httpx_client(timeout: float) -> AsyncIterator[Callable[..., Awaitable[tuple[str, float]]]]:
    """As :func:`_aiohttp_client`, on one ``httpx.AsyncClient`` connection."""
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=CLIENT_KEEPALIVE_S)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as c:

        async def send(url: str, body: bytes | None, headers: dict[str, str],
                       method: str = "POST") -> tuple[str, float]:
            try:
                r = await c.request(method, url, content=body, headers=headers)
                await r.aread()
            except httpx.TimeoutException:
                return "timeout", 0.0
            except httpx.HTTPError as exc:
                return type(exc).__name__, 0.0
            retry = _retry_after(r.headers.get("retry-after")) if r.status_code == 429 else 0.0
            return str(r.status_code), retry

        yield send


#: the closed-loop clients' HTTP libraries (``--client``)
_CLIENTS = {"aiohttp": _aiohttp_client, "httpx": _httpx_client}


def measure(server: Server, bodies: list[bytes], clients: int, args: argparse.Namespace,
            duration: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One closed-loop setting against ``server``, with the CPU the client, the server and the rest used meanwhile."""
    pid = server.proc.pid
    wall0, own0, srv0, busy0 = time.perf_counter(), time.process_time(), tree_cpu_s(pid), machine_busy_s()
    out = run_async(closed_loop(server.url, bodies, clients, duration or args.duration, args.per_request,
                                args.request_timeout, args.max_requests, args.client))  # fmt: skip
    wall = time.perf_counter() - wall0
    own, srv, busy = time.process_time() - own0, tree_cpu_s(pid) - srv0, machine_busy_s() - busy0
    out["cpu_cores"] = {"client": own / wall, "server": srv / wall, "others": max(busy - own - srv, 0.0) / wall}
    out["server_rss_mib"] = tree_rss_mib(pid)
    return out


# ---------------------------------------------------------------------------- vectors
def fetch_vectors(server: Server, texts: list[str], concurrency: int = 8) -> np.ndarray:
    """Each text embedded by ``server`` (one text per request, ``concurrency`` in flight), checked for OpenAI's
    response shape."""
    import httpx

    async def go() -> list[list[float]]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=60.0, trust_env=False) as c:

            async def one(text: str) -> list[float]:
                async with sem:
                    r = await c.post(server.url, json={"model": SERVED, "input": [text], "encoding_format": "float"})
                if r.status_code != 200:
                    raise RuntimeError(f"{server.name}: status {r.status_code} for a check request: {r.text[:300]}")
                body = r.json()
                data = body.get("data") if isinstance(body, dict) else None
                if body.get("object") != "list" or not isinstance(data, list) or len(data) != 1 \
                        or data[0].get("index") != 0 or data[0].get("object") != "embedding":
                    raise RuntimeError(f"{server.name}: not the OpenAI embeddings shape: {r.text[:300]}")
                return data[0]["embedding"]

            return await asyncio.gather(*(one(t) for t in texts))

    return np.asarray(run_async(go()), dtype=np.float64)


def check_vectors(server: Server, texts: list[str], reference: np.ndarray) -> dict[str, float]:
    """Cosine of every row ``server`` returns for ``texts`` against ``reference``."""
    got = fetch_vectors(server, texts)
    if got.shape != reference.shape:
        raise RuntimeError(f"{server.name}: vectors of shape {got.shape}, expected {reference.shape}")
    cos = harness.row_cosines(got, reference)
    return {"rows": len(texts), "min": float(cos.min()), "mean": float(cos.mean())}


# ---------------------------------------------------------------------------- direct baseline
def direct_p50(model: Any, texts: list[str], seconds: float, max_calls: int = 500) -> dict[str, float]:
    """p50 and p99 of ``model.encode(text)`` over the short texts in order (10 untimed calls first)."""
    for text in texts[:10]:
        model.encode(text, show_progress_bar=False)
    lat: list[float] = []
    end = time.perf_counter() + seconds
    for text in itertools.cycle(texts):
        t = time.perf_counter()
        model.encode(text, show_progress_bar=False)
        lat.append(time.perf_counter() - t)
        if len(lat) >= max_calls or (time.perf_counter() > end and len(lat) >= 50):
            break
    p50, p99 = percentiles(lat)
    return {"calls": len(lat), "p50_ms": p50, "p99_ms": p99}


def health_p50(server: Server, calls: int = 200, library: str = "aiohttp") -> float:
    """p50 in ms of ``GET /health`` on one keep-alive connection of the load's HTTP client (``library``): the HTTP
    round trip with no model work, the floor under any request's latency."""

    async def go() -> list[float]:
        lat = []
        async with _CLIENTS[library](10.0) as send:
            for i in range(calls + 10):
                t = time.perf_counter()
                status, _ = await send(server.base + server.health_path, None, {}, "GET")
                if status != "200":
                    raise RuntimeError(f"{server.name}: GET {server.health_path} answered {status}")
                if i >= 10:
                    lat.append(time.perf_counter() - t)
        return lat

    return percentiles(run_async(go()))[0]


def direct_watched(model: Any, texts: list[str], seconds: float) -> dict[str, float]:
    """:func:`direct_p50`, with the CPU other processes took meanwhile (``others``, cores)."""
    with harness.CpuWatch() as watch:
        out = direct_p50(model, texts, seconds)
    return {**out, "others": watch.others}


# ---------------------------------------------------------------------------- open-loop overload
class RawClient:
    """A lean HTTP/1.1 client for the open-loop generator: keep-alive connections reused from an idle list (when idle
    under ``IDLE_S``), new ones opened up to ``max_connections``; each request bounded by ``timeout`` seconds
    (connecting included)."""

    def __init__(self, port: int, path: str, max_connections: int, timeout: float) -> None:
        self.port, self.max_connections, self.timeout = port, max_connections, timeout
        self.head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        self.idle: list[tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter], float]] = []  # (conn, idle since)
        self.open = 0
        self.peak_open = 0
        self.statuses: Counter[str] = Counter()
        self.lat_ok: list[float] = []
        self.lat_429: list[float] = []

    async def _roundtrip(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
                         payload: bytes) -> tuple[str, bool, tuple[Any, Any]]:  # fmt: skip
        if conn is None:
            conn = await asyncio.open_connection("127.0.0.1", self.port, limit=2**22)
        reader, writer = conn
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.readexactly(int(headers.get("content-length", "0")))
        return status, headers.get("connection", "").lower() != "close", conn

    async def send(self, body: bytes) -> None:
        conn = None
        while self.idle and conn is None:  # a connection idle past IDLE_S may be closing on the server's side
            conn, since = self.idle.pop()
            if time.monotonic() - since > IDLE_S:
                self._drop(conn)
                conn = None
        if conn is None:
            if self.open >= self.max_connections:
                self.statuses[NOT_SENT] += 1
                return
            self.open += 1
            self.peak_open = max(self.peak_open, self.open)
        payload = self.head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        t = time.perf_counter()
        try:
            status, keep, conn = await asyncio.wait_for(self._roundtrip(conn, payload), self.timeout)
        except asyncio.TimeoutError:
            self.statuses["timeout"] += 1
            self._drop(conn)
            return
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            self.statuses[f"connection error ({type(exc).__name__})"] += 1
            self._drop(conn)
            return
        dt = time.perf_counter() - t
        self.statuses[status] += 1
        (self.lat_ok if status == "200" else self.lat_429 if status == "429" else []).append(dt)
        if keep:
            self.idle.append((conn, time.monotonic()))
        else:
            self._drop(conn)

    def _drop(self, conn: tuple[Any, Any] | None) -> None:
        self.open -= 1
        if conn is not None:
            conn[1].close()

    def close(self) -> None:
        for (_, writer), _since in self.idle:
            writer.close()
        self.idle.clear()


async def open_loop(client: RawClient, bodies: list[bytes], rate: float, seconds: float) -> dict[str, Any]:
    """Send ``rate`` requests per second for ``seconds`` (on schedule, whatever the answers), then wait for all."""
    tasks: set[asyncio.Task] = set()
    sent = 0
    t0 = time.perf_counter()
    max_lag = 0.0
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            break
        due = min(int(elapsed * rate) + 1, int(seconds * rate))
        max_lag = max(max_lag, (due - sent) / rate)
        while sent < due:
            task = asyncio.create_task(client.send(bodies[sent % len(bodies)]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.001)
    send_seconds = time.perf_counter() - t0
    if tasks:
        await asyncio.wait(set(tasks))
    client.close()
    return {"scheduled_rate": rate, "sent": sent, "send_seconds": send_seconds, "achieved_rate": sent / send_seconds,
            "max_schedule_lag_s": max_lag, "drain_seconds": time.perf_counter() - t0 - send_seconds}  # fmt: skip


class RssSampler(threading.Thread):
    """The server tree's RSS every ``every`` seconds while running; ``peak`` the highest seen."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.samples = pid, every, 0.0, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            self.samples += 1
            self._done.wait(self.every)

    def stop(self) -> None:
        self._done.set()
        self.join()


def overload(server: Server, texts: dict[str, Any], check: tuple[list[str], np.ndarray],
             args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """The overload test against a started, warmed-up ``server`` (see the module docstring)."""
    from tqdm import tqdm

    kind = args.overload_texts
    bodies = request_bodies(texts[kind], args.per_request)
    tqdm.write(f"overload: {server.name}, {kind} texts: 1 client, then 64 clients for {args.duration:.0f} s each")
    single = measure(server, bodies, 1, args)
    sustained = measure(server, bodies, 64, args)
    req_rate = sustained["ok"] / sustained["elapsed_s"]
    rate = args.overload_factor * req_rate
    pid = server.proc.pid
    time.sleep(2.0)
    rss_before = tree_rss_mib(pid)
    tqdm.write(f"overload: sustainable {sustained['sentences_per_s']:.1f} sentences/s ({req_rate:.1f} requests/s); "
               f"sending {rate:.0f} requests/s for {args.overload_seconds:.0f} s")  # fmt: skip
    client = RawClient(server.port, server.path, args.overload_connections, args.request_timeout)
    sampler = RssSampler(pid)
    sampler.start()
    wall0, own0, srv0, busy0 = time.perf_counter(), time.process_time(), tree_cpu_s(pid), machine_busy_s()
    try:
        gen = run_async(open_loop(client, bodies, rate, args.overload_seconds))
    finally:
        sampler.stop()
    wall = time.perf_counter() - wall0
    own, srv = time.process_time() - own0, tree_cpu_s(pid) - srv0
    cpu = {"client": own / wall, "server": srv / wall, "others": max(machine_busy_s() - busy0 - own - srv, 0.0) / wall}
    alive_during = server.proc.poll() is None
    time.sleep(3.0)
    rss_after = tree_rss_mib(pid)
    # Afterwards: sequential requests answer 200, at the unloaded latency, with the right vectors.
    after = measure(server, bodies, 1, args, duration=min(args.duration, 5.0))
    try:
        after_check = check_vectors(server, *check)
    except RuntimeError as exc:
        after_check = {"error": str(exc)}
    p50_ok, p99_ok = percentiles(client.lat_ok)
    p50_429, p99_429 = percentiles(client.lat_429)
    statuses = dict(client.statuses)
    capped = statuses.get(NOT_SENT, 0)  # the generator's limit, not the server's answer
    bad = {k: v for k, v in statuses.items() if k not in ("200", "429", NOT_SENT)}
    ok = statuses.get("200", 0)
    result = {
        "server": server.name, "texts": kind, "per_request": args.per_request, "single": single,
        "sustained": sustained, "sustained_requests_per_s": req_rate, "factor": args.overload_factor,
        "generator": gen, "peak_connections": client.peak_open, "statuses": statuses, "not_200_or_429": bad,
        "accepted_sentences_per_s": ok * args.per_request / args.overload_seconds,
        "p50_ok_ms": p50_ok, "p99_ok_ms": p99_ok, "p50_429_ms": p50_429, "p99_429_ms": p99_429,
        "p99_ratio_vs_sustained": p99_ok / sustained["p99_ms"], "p99_ratio_vs_single": p99_ok / single["p99_ms"],
        "rss_mib": {"before": rss_before, "peak": max(sampler.peak, rss_before), "after": rss_after,
                    "samples": sampler.samples},
        "cpu_cores": cpu, "alive_during": alive_during, "after": after, "after_check": after_check,
    }  # fmt: skip
    rss = result["rss_mib"]
    result["goals"] = {
        "only 200 or 429": not bad,
        "p99 of 200s <= 2x p99 at the sustainable rate": result["p99_ratio_vs_sustained"] <= 2.0,
        "RSS peak <= before + 300 MB": rss["peak"] - rss["before"] <= 300e6 / 2**20,
        "answers normally after": (set(after["errors"]) == set() and after["ok"] > 0
                                   and after_check.get("min", 0.0) > COSINE_MIN),
        f"generator sent {args.overload_factor:g}x on schedule": gen["achieved_rate"] >= 0.95 * rate and not capped,
    }  # fmt: skip
    return result


# ---------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    print_load(LOAD_AT_START)
    import torch

    torch.set_num_threads(args.threads)
    folder = args.model or minilm_folder()
    texts = build_texts(args.data, args.n_short, args.n_long, args.long_tokens, folder)
    kinds = [k for k in ("short", "long") if k in args.texts]
    print(f"texts: short {texts['short_tokens']}, long {texts['long_tokens']} (tokens, special tokens included)")

    # The reference vectors for the checks: sentence-transformers in this process.
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    check_texts = texts["short"][: args.check] + texts["long"][: max(args.check // 4, 1)]
    reference = np.asarray(st.encode(check_texts, normalize_embeddings=True, show_progress_bar=False), np.float64)
    del st

    servers: dict[str, Server] = {}
    failed: dict[str, str] = {}
    logs = Path(tempfile.mkdtemp(prefix="serve_load-logs-"))
    wanted = ["embedhub"] if args.overload and not args.servers_given else args.servers
    if args.overload and args.overload_server not in wanted:
        wanted.append(args.overload_server)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine({"threads": args.threads}, LOAD_AT_START, uptime_at_start=uptime_line(),
                           cpu=_cpu_name(), cpu_capability=torch.backends.cpu.get_cpu_capability()),  # fmt: skip
        "versions": {"python": platform.python_version(), **package_versions(
            ("embedhub", "torch", "sentence-transformers", "transformers", "aiohttp", "httpx", "uvicorn", "fastapi"),
            "?"),
            "infinity-emb": _infinity_version(args.infinity_venv)},  # fmt: skip
        "args": args_record(args), "model": str(folder),
        "texts": {k: texts[f"{k}_tokens"] for k in ("short", "long")},
    }
    try:
        for name in wanted:
            try:
                server = make_server(name, args, folder)
            except FileNotFoundError as exc:
                failed[name] = str(exc)
                tqdm.write(f"SKIPPED {name}: {exc}")
                continue
            tqdm.write(f"starting {LABELS[name]}: {shlex.join(server.argv)}")
            if not start(server, logs, args.start_timeout):
                failed[name] = f"{server.failure}; log {server.log}:\n{log_tail(server.log)}"
                tqdm.write(f"SKIPPED {name}: {failed[name]}")
                continue
            server.rss["healthy"] = tree_rss_mib(server.proc.pid)
            tqdm.write(f"  healthy after {server.start_seconds:.1f} s; warming up; checking vectors")
            for kind in kinds:
                measure(server, request_bodies(texts[kind], args.per_request), min(8, max(args.clients)), args,
                        duration=args.warmup)  # fmt: skip
            try:
                server.check = check_vectors(server, check_texts, reference)
            except RuntimeError as exc:
                failed[name] = f"vector check failed: {exc}"
                tqdm.write(f"SKIPPED {name}: {failed[name]}")
                stop(server)
                continue
            servers[name] = server
            tqdm.write(f"  vectors: min cosine {server.check['min']:.6f} over {len(check_texts)} rows")
        result["failed"] = failed
        result["servers"] = {n: {"label": LABELS[n], "command": shlex.join(s.argv), "start_seconds": s.start_seconds,
                                 "rss_mib_healthy": s.rss["healthy"], "check": s.check}
                             for n, s in servers.items()}  # fmt: skip
        if not servers:
            raise SystemExit("no server started; see the messages above")

        if not args.overload:
            result.update(closed_loop_matrix(servers, texts, kinds, folder, args))
        else:
            if args.overload_server not in servers:
                why = failed.get(args.overload_server)
                raise SystemExit(f"--overload-server {args.overload_server} did not start: {why}")
            result["overload"] = overload(servers[args.overload_server], texts, (check_texts, reference), args)
        for name, server in servers.items():
            result["servers"][name]["rss_mib_end"] = tree_rss_mib(server.proc.pid)
            result["servers"][name]["alive_at_end"] = server.proc.poll() is None
    finally:
        for server in servers.values():
            stop(server)
    result["uptime_at_end"] = uptime_line()
    result["logs"] = str(logs)
    if args.plot is not None and "summary" in result:
        plot(result, args.plot)
    return result


def closed_loop_matrix(servers: dict[str, Server], texts: dict[str, Any], kinds: list[str], folder: Path,
                       args: argparse.Namespace) -> dict[str, Any]:  # fmt: skip
    """Every setting against every server, alternating, ``--reps`` times; the direct baseline; medians and ratios."""
    from tqdm import tqdm

    direct_model = None
    if "embedhub" in servers and 1 in args.clients and "short" in kinds:
        import embedhub

        direct_model = embedhub.load(str(folder), device="cpu")
    order = list(servers)
    runs: list[dict[str, Any]] = []
    direct: list[dict[str, float]] = []
    bodies = {k: request_bodies(texts[k], args.per_request) for k in kinds}
    total = args.reps * len(kinds) * len(args.clients) * len(order)
    with tqdm(total=total, desc="settings", unit="setting") as bar:
        for rep in range(args.reps):
            rotated = order[rep % len(order):] + order[: rep % len(order)]
            for kind in kinds:
                for clients in args.clients:
                    for name in rotated:
                        if name == "embedhub" and clients == 1 and kind == "short" and direct_model is not None:
                            direct.append({**direct_watched(direct_model, texts["short"], min(args.duration, 5.0)),
                                           "health_p50_ms": health_p50(servers[name], library=args.client)})
                        bar.set_postfix_str(f"rep {rep + 1} {kind} {clients} clients {name}")
                        out = measure(servers[name], bodies[kind], clients, args)
                        runs.append({"server": name, "texts": kind, "clients": clients, "rep": rep, **out})
                        bar.update()
    return {"runs": runs, "direct": direct, **summarise(runs, direct, kinds, args.clients, order)}


def _quiet(run: dict[str, Any]) -> bool:
    return run["cpu_cores"]["others"] <= CONTENDED


def summarise(runs: list[dict[str, Any]], direct: list[dict[str, float]], kinds: list[str], clients: list[int],
              order: list[str]) -> dict[str, Any]:  # fmt: skip
    """Medians per server and setting (over all repetitions, and over the quiet ones: other processes took at most
    ``CONTENDED`` cores), and the medians of the per-repetition ratios embedhub / peer (all, and quiet pairs only)."""

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    summary: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for kind in kinds:
        for c in clients:
            key = f"{kind}/{c}"
            summary[key] = {}
            for name in order:
                rs = [r for r in runs if r["server"] == name and r["texts"] == kind and r["clients"] == c]
                quiet = [r for r in rs if _quiet(r)]
                errors: Counter[str] = Counter()
                for r in rs:
                    errors.update(r["errors"])
                summary[key][name] = {
                    "sentences_per_s": med([r["sentences_per_s"] for r in rs]),
                    "p50_ms": med([r["p50_ms"] for r in rs]), "p99_ms": med([r["p99_ms"] for r in rs]),
                    "quiet_reps": len(quiet),
                    "quiet_sentences_per_s": med([r["sentences_per_s"] for r in quiet]),
                    "quiet_p50_ms": med([r["p50_ms"] for r in quiet]),
                    "quiet_p99_ms": med([r["p99_ms"] for r in quiet]),
                    "requests": sum(r["requests"] for r in rs), "errors": dict(errors),
                    "cpu_client": med([r["cpu_cores"]["client"] for r in rs]),
                    "cpu_server": med([r["cpu_cores"]["server"] for r in rs]),
                    "cpu_others": med([r["cpu_cores"]["others"] for r in rs]),
                    "rss_mib": max(r["server_rss_mib"] for r in rs),
                }  # fmt: skip
            if "embedhub" in order:
                mine = {r["rep"]: r for r in runs if r["server"] == "embedhub" and r["texts"] == kind
                        and r["clients"] == c}  # fmt: skip
                ratios[key] = {}
                for peer in (p for p in order if p != "embedhub"):
                    pairs = [(mine[r["rep"]], r) for r in runs if r["server"] == peer and r["texts"] == kind
                             and r["clients"] == c and r["rep"] in mine and r["sentences_per_s"] > 0]  # fmt: skip
                    quiet = [(a, b) for a, b in pairs if _quiet(a) and _quiet(b)]
                    ratios[key][peer] = {
                        "throughput": med([a["sentences_per_s"] / b["sentences_per_s"] for a, b in pairs]),
                        "p99": med([a["p99_ms"] / b["p99_ms"] for a, b in pairs]),
                        "throughput_per_rep": [a["sentences_per_s"] / b["sentences_per_s"] for a, b in pairs],
                        "quiet_pairs": len(quiet),
                        "quiet_throughput": med([a["sentences_per_s"] / b["sentences_per_s"] for a, b in quiet]),
                        "quiet_p99": med([a["p99_ms"] / b["p99_ms"] for a, b in quiet]),
                    }  # fmt: skip
    out: dict[str, Any] = {"summary": summary, "ratios": ratios}
    goals: dict[str, Any] = {}
    serve_1 = {r["rep"]: r for r in runs if r["server"] == "embedhub" and r["texts"] == "short" and r["clients"] == 1}
    if direct and serve_1:
        # direct[i] was measured right before repetition i's embedhub 1-client short setting
        gaps = [(serve_1[i]["p50_ms"] - d["p50_ms"], _quiet(serve_1[i]) and d["others"] <= CONTENDED)
                for i, d in enumerate(direct) if i in serve_1]  # fmt: skip
        out["direct_p50_ms"] = med([d["p50_ms"] for d in direct])
        out["serve_minus_direct_p50_ms"] = med([g for g, _ in gaps])
        out["serve_minus_direct_p50_ms_per_rep"] = [g for g, _ in gaps]
        out["quiet_serve_minus_direct_p50_ms"] = med([g for g, q in gaps if q])
        out["quiet_gap_reps"] = sum(q for _, q in gaps)
        out["health_p50_ms"] = med([d["health_p50_ms"] for d in direct if "health_p50_ms" in d])
        gap = out["quiet_serve_minus_direct_p50_ms"]
        if gap == gap:
            goals["1 client: embedhub serve p50 - direct encode p50 <= 2 ms (quiet reps)"] = gap <= 2.0
    for kind in kinds:
        r = ratios.get(f"{kind}/64", {}).get("infinity")
        if r is not None and r["quiet_pairs"]:
            goals[f"{kind}, 64 clients: throughput >= 1.5x infinity (quiet pairs)"] = r["quiet_throughput"] >= 1.5
            goals[f"{kind}, 64 clients: p99 <= infinity's (quiet pairs)"] = r["quiet_p99"] <= 1.0
    out["goals"] = goals
    return out


# ---------------------------------------------------------------------------- report
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _infinity_version(venv: Path) -> str:
    dist = sorted((venv / "lib").glob("python3*/site-packages/infinity_emb-*.dist-info"))
    return dist[0].name.removesuffix(".dist-info").split("-", 1)[1] if dist else "not installed"


def _errors(errors: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(errors.items())) or "-"


def report(r: dict[str, Any]) -> None:
    a, m = r["args"], r["machine"]
    print(f"\n{m['cpu']} ({m['cpu_capability']}), {m['cpus']} CPUs, {a['threads']} threads per server; "
          f"uptime at start: {m['uptime_at_start']}; at end: {r['uptime_at_end']}")  # fmt: skip
    print(f"versions: {r['versions']}")
    for kind, t in r["texts"].items():
        print(f"{kind} texts: {t['texts']}, tokens mean {t['mean']:.1f}, min {t['min']}, max {t['max']}")
    for name, info in r["failed"].items():
        print(f"NOT RUN {name}: {info}")
    for name, s in r["servers"].items():
        c = s["check"]
        print(f"{LABELS[name]}: healthy after {s['start_seconds']:.1f} s, RSS {s['rss_mib_healthy']:.0f} MiB; "
              f"vectors vs sentence-transformers: min cosine {c['min']:.6f} over {c['rows']} rows")  # fmt: skip
    if "summary" in r:
        print(f"\nclosed loop, {a['per_request']} text(s) per request, {a['duration']:g} s per setting, "
              f"{a['reps']} rep(s), medians over reps")  # fmt: skip
        rows = [["texts", "clients", "server", "sent/s", "p50 ms", "p99 ms", "quiet: reps", "sent/s", "p50 ms",
                 "p99 ms", "errors", "CPU client/server/other", "RSS MiB"]]  # fmt: skip
        for key, per in r["summary"].items():
            kind, c = key.split("/")
            for name, s in per.items():
                rows.append([kind, c, name, f"{s['sentences_per_s']:.1f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}",
                             f"{s['quiet_reps']}/{a['reps']}", f"{s['quiet_sentences_per_s']:.1f}",
                             f"{s['quiet_p50_ms']:.1f}", f"{s['quiet_p99_ms']:.1f}", _errors(s["errors"]),
                             f"{s['cpu_client']:.2f}/{s['cpu_server']:.2f}/{s['cpu_others']:.2f}",
                             f"{s['rss_mib']:.0f}"])  # fmt: skip
        print_table(rows, left=(0, 2, 10))
        print(harness.contention_summary([x["cpu_cores"]["others"] for x in r["runs"]]))
        print(f"quiet: the repetitions during which other processes took at most {CONTENDED} cores; their medians")
        if r["ratios"]:
            print("\nembedhub serve / peer (median of per-rep ratios): throughput (>1: embedhub faster), p99 (<1: "
                  "embedhub lower)")  # fmt: skip
            rows = [["texts", "clients", "peer", "throughput ratio", "p99 ratio", "quiet pairs", "throughput ratio",
                     "p99 ratio"]]  # fmt: skip
            for key, per in r["ratios"].items():
                kind, c = key.split("/")
                for peer, x in per.items():
                    rows.append([kind, c, peer, f"{x['throughput']:.2f}", f"{x['p99']:.2f}", str(x["quiet_pairs"]),
                                 f"{x['quiet_throughput']:.2f}", f"{x['quiet_p99']:.2f}"])  # fmt: skip
            print_table(rows, left=(0, 2))
        if "direct_p50_ms" in r:
            per_rep = ", ".join(f"{g:+.2f}" for g in r["serve_minus_direct_p50_ms_per_rep"])
            print(f"\ndirect embedhub.load(folder).encode(text), one short text: p50 {r['direct_p50_ms']:.2f} ms; "
                  f"embedhub serve at 1 client minus direct, per rep: {per_rep} ms; median "
                  f"{r['serve_minus_direct_p50_ms']:+.2f} ms; over the {r['quiet_gap_reps']} quiet reps "
                  f"{r['quiet_serve_minus_direct_p50_ms']:+.2f} ms; GET /health round trip (no model) p50 "
                  f"{r.get('health_p50_ms', float('nan')):.2f} ms")  # fmt: skip
        for goal, met in r["goals"].items():
            print(f"goal {'MET' if met else 'NOT MET'}: {goal}")
    if "overload" in r:
        o = r["overload"]
        g, rss = o["generator"], o["rss_mib"]
        print(f"\noverload against {LABELS[o['server']]} ({o['texts']} texts, {o['per_request']} per request)")
        print(f"  1 client: {o['single']['sentences_per_s']:.1f} sent/s, p50 {o['single']['p50_ms']:.1f} ms, p99 "
              f"{o['single']['p99_ms']:.1f} ms")  # fmt: skip
        print(f"  sustainable (64 clients): {o['sustained']['sentences_per_s']:.1f} sent/s "
              f"({o['sustained_requests_per_s']:.1f} req/s), p50 {o['sustained']['p50_ms']:.1f} ms, p99 "
              f"{o['sustained']['p99_ms']:.1f} ms, errors {_errors(o['sustained']['errors'])}")  # fmt: skip
        print(f"  open loop: scheduled {g['scheduled_rate']:.0f} req/s ({o['factor']:g}x), sent {g['sent']} in "
              f"{g['send_seconds']:.1f} s = {g['achieved_rate']:.0f} req/s (max lag {g['max_schedule_lag_s']:.2f} s), "
              f"drained in {g['drain_seconds']:.1f} s, peak {o['peak_connections']} connections")  # fmt: skip
        print(f"  outcomes: {_errors(o['statuses'])}")
        print(f"  accepted: {o['accepted_sentences_per_s']:.1f} sent/s; 200s p50 {o['p50_ok_ms']:.1f} ms, p99 "
              f"{o['p99_ok_ms']:.1f} ms = {o['p99_ratio_vs_sustained']:.2f}x the sustainable p99 "
              f"({o['p99_ratio_vs_single']:.2f}x the 1-client p99); 429s p50 {o['p50_429_ms']:.1f} ms, p99 "
              f"{o['p99_429_ms']:.1f} ms")  # fmt: skip
        print(f"  server RSS: before {rss['before']:.0f} MiB, peak {rss['peak']:.0f} MiB "
              f"({rss['peak'] - rss['before']:+.0f}), after {rss['after']:.0f} MiB; CPU during: client "
              f"{o['cpu_cores']['client']:.2f}, server {o['cpu_cores']['server']:.2f}, other processes "
              f"{o['cpu_cores']['others']:.2f} cores (during 1 client / 64 clients: "
              f"{o['single']['cpu_cores']['others']:.2f} / {o['sustained']['cpu_cores']['others']:.2f})")  # fmt: skip
        af, ac = o["after"], o["after_check"]
        print(f"  after: 1 client {af['ok']} x 200, errors {_errors(af['errors'])}, p50 {af['p50_ms']:.1f} ms; "
              f"vectors {ac}")  # fmt: skip
        for goal, met in o["goals"].items():
            print(f"goal {'MET' if met else 'NOT MET'}: {goal}")
    print(f"server logs: {r['logs']}")


def plot(r: dict[str, Any], path: Path) -> None:
    """Throughput and p99 against the client count, a line per server (solid short texts, dashed long): medians
    over the quiet repetitions of a setting, over all where none was quiet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"embedhub": "tab:blue", "infinity": "tab:orange", "st": "tab:green"}
    for kind, style in (("short", "-"), ("long", "--")):
        keys = [k for k in r["summary"] if k.startswith(kind + "/")]
        if not keys:
            continue
        xs = [int(k.split("/")[1]) for k in keys]
        for name in r["summary"][keys[0]]:
            cells = [r["summary"][k][name] for k in keys]  # the quiet repetitions' medians where there are any
            thr = [c["quiet_sentences_per_s"] if c.get("quiet_reps") else c["sentences_per_s"] for c in cells]
            p99 = [c["quiet_p99_ms"] if c.get("quiet_reps") else c["p99_ms"] for c in cells]
            label = f"{LABELS[name]}, {kind}"
            ax_t.plot(xs, thr, style, marker="o", color=colors[name], label=label)
            ax_p.plot(xs, p99, style, marker="o", color=colors[name], label=label)
    ticks = sorted({int(k.split("/")[1]) for k in r["summary"]})
    for ax, title in ((ax_t, "throughput (sentences/s)"), (ax_p, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_p.set_yscale("log")
    ax_t.legend(fontsize=7)
    fig.suptitle(f"all-MiniLM-L6-v2, {r['args']['threads']} threads per server, {r['machine']['cpus']} CPUs shared "
                 f"with the load generator", fontsize=9)  # fmt: skip
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------- arguments
def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers like 1,8,64") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 1")
    return values


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in names if x not in allowed]
        if not names or unknown:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated subset of {','.join(allowed)}")
        return list(dict.fromkeys(names))

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=_names(SERVERS), default=None,
                   help="comma-separated, of embedhub,infinity,st (default all three; with --overload: embedhub)")
    p.add_argument("--clients", type=_ints, default=[1, 8, 64], help="concurrent clients per setting (1,8,64)")
    p.add_argument("--texts", type=_names(("short", "long")), default=["short", "long"], help="short,long")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per setting (8)")
    p.add_argument("--reps", type=int, default=2, help="repetitions of every setting, servers alternating (2)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load per server and text kind before (3)")
    p.add_argument("--per-request", type=int, default=1, help="texts per request (1)")
    p.add_argument("--threads", type=int, default=2, help="threads of every server, and of this process's torch (2)")
    p.add_argument("--n-short", type=int, default=2000, help="short texts: unique STS-B train sentences (2000)")
    p.add_argument("--n-long", type=int, default=256, help="long texts (256)")
    p.add_argument("--long-tokens", type=int, default=200, help="tokens per long text, at least (200)")
    p.add_argument("--check", type=int, default=64, help="short texts in each server's vector check (64; long: /4)")
    p.add_argument("--client", choices=tuple(_CLIENTS), default="aiohttp",
                   help="the closed-loop clients' HTTP library (aiohttp; httpx's AsyncClient took 0.3 of 2 cores at 64 "
                        "clients where aiohttp took 0.05, CPU the servers then lack)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="client timeout per request, s (30)")
    p.add_argument("--max-requests", type=int, default=200_000, help="bound on the requests of one setting")
    p.add_argument("--start-timeout", type=float, default=240.0, help="seconds a server has to get healthy (240)")
    p.add_argument("--model", type=Path, default=None, help="a sentence-transformers folder (default: the packaged "
                   "all-MiniLM-L6-v2)")  # fmt: skip
    p.add_argument("--infinity-venv", type=Path, default=DEFAULT_INFINITY_VENV,
                   help=f"infinity-emb's environment (default $INFINITY_VENV or {DEFAULT_INFINITY_VENV})")
    p.add_argument("--infinity-batch-size", type=int, default=32, help="infinity's --batch-size (32, its default)")
    p.add_argument("--infinity-args", default="", help="more infinity_emb v2 options")
    p.add_argument("--embedhub-args", default="", help="more `embedhub serve` options, e.g. '--max-queue 256'")
    p.add_argument("--overload", action="store_true", help="run the overload test instead of the closed-loop table")
    p.add_argument("--overload-server", choices=SERVERS, default="embedhub")
    p.add_argument("--overload-texts", choices=("short", "long"), default="long",
                   help="texts of the overload test (long: the request rate a Python generator on 2 shared cores "
                        "can send 10x of)")  # fmt: skip
    p.add_argument("--overload-factor", type=float, default=10.0, help="x the sustainable request rate (10)")
    p.add_argument("--overload-seconds", type=float, default=30.0, help="seconds of overload (30)")
    p.add_argument("--overload-connections", type=int, default=4096,
                   help="connections the generator may open (4096)")
    p.add_argument("--plot", type=Path, default=None, help="write a chart of throughput and p99 (PNG)")
    add_data_option(p)
    args = harness.parse_with_json(p, argv, "duration", "reps", "per_request", "threads", "n_short", "n_long",
                                   "check", "request_timeout", "max_requests", "overload_seconds",
                                   "overload_connections", "infinity_batch_size", "long_tokens")  # fmt: skip
    if args.client == "aiohttp" and importlib.util.find_spec("aiohttp") is None:
        p.error("--client aiohttp (the default) needs aiohttp: pip install aiohttp, or pass --client httpx")
    if args.warmup < 0 or args.overload_factor <= 0:
        p.error("--warmup must be >= 0 and --overload-factor > 0")
    if args.long_tokens > harness.MAX_TOKENS:
        p.error(f"--long-tokens must be <= {harness.MAX_TOKENS} (the model reads no more)")
    if args.model is not None and not (args.model / "modules.json").is_file():
        p.error(f"--model {args.model}: expected a sentence-transformers folder (with modules.json)")
    args.servers_given = args.servers is not None
    if args.servers is None:
        args.servers = list(SERVERS)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_cli(parse_args, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
