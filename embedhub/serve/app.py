"""The OpenAI-compatible embedding server: ``POST /v1/embeddings`` (texts, token ids, images),
``POST /v1/zero-shot``, ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

FastAPI (on Starlette) because Ray Serve's ingress takes a FastAPI app as it is, and ``/docs`` comes with it;
request bodies are read and checked here (bounded size, typed checks naming the field) so that every error
has OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

>>> app = create_app({"minilm": "all-MiniLM-L6-v2"})       # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, port=8080)             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedhub.errors import ArgumentError, EmbedhubError, ItemError, ModalityError, require
from embedhub.serve.engine import Engine, EngineFailed, Overloaded
from embedhub.serve.metrics import Metrics

_requests = require("starlette.requests", "serve", "embedhub serve")
Request = _requests.Request  # resolves the routes' annotations

log = logging.getLogger("embedhub.serve")

#: bodies (and responses) larger than this are parsed (and written) on a worker thread, off the event loop
_OFFLOAD_BYTES = 256 << 10
#: large bodies are parsed one at a time: parsing holds the interpreter's lock, so parsing several at once is no
#: quicker, and a body's parsed objects can take 20x its bytes (8 MiB of ``[],`` is 2.8 million lists)
_PARSER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedhub-parse")
#: the fingerprint id of the vectors of a response
FINGERPRINT_HEADER = "X-Embedhub-Fingerprint"
_DATA_URI = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[A-Za-z0-9=.+-]+)*;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """What one request may hold. ``max_body_bytes``: the JSON body; ``max_items``: inputs per request
    (OpenAI's 2048); ``max_text_chars``: characters per text; ``max_image_bytes`` and ``max_image_pixels``:
    per image (decoded); ``url_timeout``: seconds to fetch a request's image URLs (with ``allow_image_urls``);
    ``body_timeout``: seconds to receive a request body (408 beyond)."""

    max_body_bytes: int = 8 << 20
    max_items: int = 2048
    max_text_chars: int = 200_000
    max_image_bytes: int = 10 << 20
    max_image_pixels: int = 40_000_000
    url_timeout: float = 10.0
    allow_image_urls: bool = False
    body_timeout: float = 30.0


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Served:
    """One served model: its name, engine and (once loaded) model; stages cached per request options."""

    def __init__(self, name: str, source: Any, engine_options: dict[str, Any], metrics: Metrics):
        self.name, self.source = name, source
        self.model: Any = None if isinstance(source, (str, os.PathLike)) else source
        self.engine: Engine | None = None
        self.state = "loading" if self.model is None else "ready"
        self.reason: str | None = None
        self._engine_options, self._metrics = engine_options, metrics
        self._stages: dict[tuple, Any] = {}
        self._fingerprints: dict[tuple, str] = {}
        self._lock = threading.Lock()
        if self.model is not None:
            self._start_engine()

    def _start_engine(self) -> None:
        self.engine = Engine(self.model, name=self.name, observe=self._metrics.observer(self.name),
                             **self._engine_options).start()

    def load(self, load_options: dict[str, Any]) -> None:
        """Load the model (a name or folder) and start its engine; a failure is kept as the reason."""
        if self.model is not None:
            return
        try:
            from embedhub.loader import load

            self.model = load(self.source, **load_options)
            self._start_engine()
            self.state = "ready"
        except Exception as exc:  # reported by /health and to every request for this model
            self.state, self.reason = "failed", f"loading {self.source}: {type(exc).__name__}: {exc}"
            log.error("embedhub serve: %s", self.reason)

    def health(self) -> tuple[str, str | None]:
        if self.state != "ready":
            return self.state, self.reason
        assert self.engine is not None
        if not self.engine.healthy:
            return "failed", self.engine.failure or "the model thread stopped"
        return "ready", None

    def fingerprint_id(self, stages: Any, dims: int | None) -> str:
        """The fingerprint id of ``stages``' vectors at ``dims`` (renormalised) or the model's width (cached)."""
        key = (id(stages), dims)
        found = self._fingerprints.get(key)
        if found is None:
            found = stages.fingerprint(truncate_dim=dims, normalize=True if dims is not None else None).id
            self._fingerprints[key] = found
        return found

    def stages(self, modality: str, role: str | None, prompt_name: str | None) -> Any:
        key = (modality, role, prompt_name)
        with self._lock:
            if key not in self._stages:
                self._stages[key] = self.model.stages(modality, role=role, prompt_name=prompt_name)
            return self._stages[key]


class ServeState:
    """Everything a server app holds: the models, the tokenising threads, the limits, the metrics."""

    def __init__(self, models: Mapping[str, Any], *, api_key: str | None, auth_all: bool, limits: Limits,
                 engine_options: dict[str, Any], load_options: dict[str, Any], workers_tokenize: int):
        self.metrics = Metrics()
        self.limits = limits
        self.api_key = api_key.encode() if api_key else None
        self.auth_all = auth_all
        self.load_options = load_options
        self.models = {name: _Served(name, src, engine_options, self.metrics) for name, src in models.items()}
        self.pool = ThreadPoolExecutor(max_workers=workers_tokenize, thread_name_prefix="embedhub-tokenize")
        #: image URLs are fetched on threads of their own, so a slow host cannot hold up tokenising
        self.url_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="embedhub-fetch")
        self._loader: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.draining = False

    def start(self) -> None:
        """Load the models named by strings in a background thread (``/health`` says 503 meanwhile)."""
        if self._loader is not None:  # every request calls this: no lock once started
            return
        with self._start_lock:
            if self._loader is None:
                self._loader = threading.Thread(target=self._load_all, name="embedhub-load", daemon=True)
                self._loader.start()

    def _load_all(self) -> None:
        for served in self.models.values():
            served.load(self.load_options)

    def stop(self) -> None:
        """Finish queued work and stop the engines (after the HTTP server stopped taking requests)."""
        self.draining = True
        for served in self.models.values():
            if served.engine is not None:
                served.engine.stop()
        self.pool.shutdown(wait=False)
        self.url_pool.shutdown(wait=False)

    def check_key(self, authorization: str | None) -> None:
        """401 unless the request carries ``Authorization: Bearer <key>`` (compared in constant time)."""
        if self.api_key is None:
            return
        scheme, _, token = (authorization or "").strip().partition(" ")
        given = token.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""
        if not secrets.compare_digest(given, self.api_key):
            raise APIError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def served(self, name: Any) -> _Served:
        if not isinstance(name, str):
            raise APIError(400, f"'model' must be a string naming a served model: one of {sorted(self.models)}",
                           param="model")
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"The model {name!r} does not exist on this server; it serves {sorted(self.models)}",
                           param="model", code="model_not_found")
        state, reason = served.health()
        if state == "loading":
            raise APIError(503, f"The model {name!r} is still loading; retry shortly", type="server_error",
                           code="model_loading", headers={"Retry-After": "5"})
        if state == "failed":
            why = "failed to load (the server's log and /health say why)" if served.engine is None else \
                f"is unavailable: {reason}"
            raise APIError(503, f"The model {name!r} {why}", type="server_error", code="engine_failed")
        return served


# -------------------------------------------------------------------- request parsing
async def read_json(request: Any, limit: int, timeout: float = 30.0) -> dict[str, Any]:
    """The request's JSON object, read up to ``limit`` bytes within ``timeout`` seconds (413 / 408 beyond; 400
    when not a JSON object). A large body is parsed off the event loop."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise APIError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise APIError(413, f"The request body has {int(declared)} bytes; this server takes at most {limit}",
                           code="request_too_large")
    body = bytearray()

    async def receive() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise APIError(413, f"The request body is over {limit} bytes, the most this server takes",
                               code="request_too_large")

    try:
        async with asyncio.timeout(timeout):
            await receive()
    except TimeoutError:
        raise APIError(408, f"The request body did not arrive within {timeout:g} s", code="request_timeout",
                       headers={"Connection": "close"}) from None
    except _requests.ClientDisconnect:  # gone before its body arrived: not a failure of the server
        raise APIError(499, "The client closed the request", code="client_closed") from None
    try:
        if len(body) > _OFFLOAD_BYTES:
            data = await asyncio.get_running_loop().run_in_executor(_PARSER, _loads, bytes(body))
        else:
            data = _loads(bytes(body))
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"The body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise APIError(400, f"The body must be a JSON object, got {type(data).__name__}")
    return data


def _field(data: dict[str, Any], name: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise APIError(400, f"'{name}' must be {what}, got {json.dumps(value)[:100]}", param=name)
    return value


def parse_text_input(value: Any, limits: Limits) -> tuple[list[str] | None, list[list[int]] | None]:
    """``input`` of an embeddings request as texts, or as token-id lists; 400 naming the item otherwise."""
    what = "a string, a list of strings, a list of token ids or a list of token-id lists"
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        shown = "an empty list" if value == [] else json.dumps(value)[:100] if value is not None else "missing"
        raise APIError(400, f"'input' must be {what}; got {shown}", param="input")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):  # one input as token ids
        value = [value]
    elif len(value) > limits.max_items:
        raise APIError(400, f"'input' has {len(value)} items; at most {limits.max_items} per request",
                       param="input", code="too_many_inputs")
    if all(isinstance(x, str) for x in value):
        for i, x in enumerate(value):
            if not x:
                raise APIError(400, f"input[{i}] is an empty string; every input must hold text", param="input")
            if len(x) > limits.max_text_chars:
                raise APIError(400, f"input[{i}] has {len(x)} characters; this server takes at most "
                               f"{limits.max_text_chars} per text", param="input", code="input_too_long")
        return value, None
    if all(isinstance(x, list) for x in value):
        for i, row in enumerate(value):
            if not row:
                raise APIError(400, f"input[{i}] is an empty list of token ids", param="input")
            if len(row) > limits.max_text_chars:
                raise APIError(400, f"input[{i}] has {len(row)} token ids; at most {limits.max_text_chars}",
                               param="input", code="input_too_long")
            for j, t in enumerate(row):
                if isinstance(t, bool) or not isinstance(t, int):
                    raise APIError(400, f"input[{i}][{j}] must be a token id (an integer), got "
                                   f"{json.dumps(t)[:60]}", param="input")
        return None, value
    kind = str if isinstance(value[0], str) else list
    bad = next((i for i, x in enumerate(value) if not isinstance(x, kind)), 0)
    raise APIError(400, f"'input' must be {what}; input[{bad}] is {json.dumps(value[bad])[:60]}", param="input")


def parse_image_input(value: Any, limits: Limits) -> list[str]:
    """``input`` of an image request: data URIs (or http(s) URLs when allowed), one or a list."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
        raise APIError(400, "'input' of an image request must be a data URI ('data:image/png;base64,...') or a "
                       "list of them", param="input")
    if len(value) > limits.max_items:
        raise APIError(400, f"'input' has {len(value)} items; at most {limits.max_items} per request",
                       param="input", code="too_many_inputs")
    return value


def decode_image(item: str, index: int, limits: Limits) -> bytes:
    """The bytes of a data URI (base64, whitespace allowed), bounded by ``max_image_bytes``; URLs are fetched by
    :func:`image_bytes`."""
    m = _DATA_URI.match(item[:200])
    if m is not None:
        payload = item[m.end():]
        if len(payload) > (limits.max_image_bytes * 4) // 3 * 1.05 + 4:  # line breaks of wrapped base64 allowed
            raise APIError(413, f"input[{index}] is over {limits.max_image_bytes} bytes, the most per image",
                           param="input", code="image_too_large")
        payload = "".join(payload.split())
        if len(payload) > (limits.max_image_bytes * 4) // 3 + 4:
            raise APIError(413, f"input[{index}] is over {limits.max_image_bytes} bytes, the most per image",
                           param="input", code="image_too_large")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, f"input[{index}] is not valid base64 after its 'data:...;base64,' prefix",
                           param="input") from None
    raise APIError(400, f"input[{index}] must be a data URI ('data:image/png;base64,...')"
                   + (" or an http(s) URL" if limits.allow_image_urls else ""), param="input")


def _public_host(url: str, index: int) -> list[str]:
    """The addresses to fetch ``url`` from, in the resolver's order: its host resolved once, refused when any
    address it resolves to is loopback, private, link-local or otherwise not public."""
    import ipaddress
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bracketed host that is no IPv6 address, a port that is no number in 0-65535
        raise APIError(400, f"input[{index}]: the URL's host or port is malformed", param="input") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise APIError(400, f"input[{index}]: only http(s) URLs with a host are fetched", param="input")
    try:
        infos = socket.getaddrinfo(parts.hostname, port or (443 if parts.scheme == "https" else 80),
                                   proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise APIError(400, f"input[{index}]: the URL's host does not resolve", param="input") from None
    addresses = list(dict.fromkeys(info[4][0].split("%")[0] for info in infos))  # without an IPv6 zone
    if not all(_fetchable(ipaddress.ip_address(a)) for a in addresses):
        raise APIError(400, f"input[{index}]: the URL's host is not a public address; this server fetches "
                       "public URLs only", param="input", code="image_url_refused")
    return addresses


def _fetchable(address: Any) -> bool:
    """Whether an image URL may be fetched from ``address`` (an ``ipaddress`` address): public, not multicast
    nor IPv6 site-local (fec0::/10), and so is every IPv4 address an IPv6 one carries (mapped, NAT64, 6to4,
    Teredo, IPv4-compatible), which a translating network would connect to.

    >>> import ipaddress
    >>> [_fetchable(ipaddress.ip_address(a)) for a in ("8.8.8.8", "64:ff9b::808:808", "64:ff9b::a00:1")]
    [True, True, False]
    """
    if not address.is_global or address.is_multicast or getattr(address, "is_site_local", False):
        return False
    return all(inner.is_global and not inner.is_multicast for inner in _carried_ipv4(address))


def _carried_ipv4(address: Any) -> list[Any]:
    """The IPv4 addresses an IPv6 ``address`` carries (none for an IPv4 one); the NAT64 local-use prefix
    (64:ff9b:1::/48, where the IPv4 address may sit anywhere) counts as carrying 0.0.0.0, never fetchable."""
    import ipaddress

    if address.version != 6:
        return []
    carried = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    value = int(address)
    if address in ipaddress.ip_network("64:ff9b::/96") or value >> 32 == 0:  # NAT64 well-known, IPv4-compatible
        carried.append(ipaddress.IPv4Address(value & 0xFFFFFFFF))
    if address in ipaddress.ip_network("64:ff9b:1::/48"):
        carried.append(ipaddress.IPv4Address(0))
    return [a for a in carried if a is not None]


def _fetch(url: str, index: int, limits: Limits, deadline: float) -> bytes:
    """GET an image URL of a public host: at most ``max_image_bytes`` before ``deadline`` (``time.monotonic``),
    following at most 3 redirects, each checked as the first URL."""
    import httpx

    try:
        with httpx.Client(timeout=limits.url_timeout, follow_redirects=False) as client, _Deadline(deadline) as cut:
            for _ in range(4):
                left = deadline - time.monotonic()  # each hop within what is left of the request's time
                if left <= 0:
                    raise APIError(400, f"input[{index}]: fetching the URL took over {limits.url_timeout:g} s",
                                   param="input")
                # connect to the addresses just checked, not to the name again: a name that resolves to a public
                # address for the check and to a private one for the connection (DNS rebinding) reaches nothing
                target = httpx.URL(url)
                resp = _connect(client, target, _public_host(url, index), limits.url_timeout, deadline, cut.trace)
                with contextlib.closing(resp):
                    if resp.is_redirect and "location" in resp.headers:
                        url = str(target.join(resp.headers["location"]))
                        continue
                    if resp.status_code != 200:
                        raise APIError(400, f"input[{index}]: fetching the URL gave HTTP {resp.status_code}",
                                       param="input")
                    data = bytearray()
                    for chunk in resp.iter_bytes():
                        data += chunk
                        if len(data) > limits.max_image_bytes:
                            raise APIError(413, f"input[{index}]: the image at the URL is over "
                                           f"{limits.max_image_bytes} bytes", param="input", code="image_too_large")
                        if time.monotonic() > deadline:
                            raise APIError(400, f"input[{index}]: fetching the URL took over "
                                           f"{limits.url_timeout:g} s", param="input")
                    return bytes(data)
            raise APIError(400, f"input[{index}]: the URL redirects more than 3 times", param="input")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        if time.monotonic() >= deadline:  # the deadline shut the connection down
            raise APIError(400, f"input[{index}]: fetching the URL took over {limits.url_timeout:g} s",
                           param="input") from None
        raise APIError(400, f"input[{index}]: the URL could not be fetched ({type(exc).__name__})",
                       param="input") from None


class _Deadline:
    """Shuts a fetch's connections down at ``deadline`` (``time.monotonic``), so that no read outlasts it, not even
    one of a host that sends its headers or TLS handshake a byte at a time (each read in time); pass
    :meth:`trace` as the requests' ``trace`` extension.

    >>> with _Deadline(time.monotonic() + 5) as cut:
    ...     callable(cut.trace)
    True
    """

    def __init__(self, deadline: float):
        self.deadline = deadline
        self._sockets: list[Any] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._expired = False

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace callback: keeps a handle on each connection's socket as it connects."""
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                with self._lock:
                    self._sockets.append(sock.dup())
                    if self._expired:
                        self._shut(self._sockets[-1])

    @staticmethod
    def _shut(sock: Any) -> None:
        import socket

        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _expire(self) -> None:
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                self._shut(sock)

    def __enter__(self) -> _Deadline:
        self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()


def _connect(client: Any, target: Any, addresses: list[str], timeout: float, deadline: float,
             trace: Any = None) -> Any:
    """The streamed response to GET ``target`` (an ``httpx.URL``) from the first of ``addresses`` that takes the
    connection (as a client resolving the name itself would try them), each try within ``timeout`` seconds and
    before ``deadline``; sent with the URL's name as ``Host`` and, over TLS, as the server name the certificate
    is verified against; ``trace``: httpcore's trace callback."""
    import httpx

    extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
    if trace is not None:
        extensions["trace"] = trace
    for k, address in enumerate(addresses):
        left = deadline - time.monotonic()
        if left <= 0:
            raise httpx.ConnectTimeout("the fetch's time ran out")
        request = client.build_request("GET", target.copy_with(host=address), extensions=extensions,
                                       headers={"Host": target.netloc.decode("ascii")}, timeout=min(timeout, left))
        try:
            return client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            if k == len(addresses) - 1:
                raise
    raise httpx.ConnectError("no address")  # the resolver gave none (getaddrinfo raises instead)


async def image_bytes(uris: list[str], limits: Limits, pool: ThreadPoolExecutor) -> tuple[list[bytes], set[int]]:
    """The bytes of each image of a request (data URIs decoded; URLs fetched on ``pool``, the threads kept for
    URLs, all within ``url_timeout`` seconds) and the indices that came from URLs."""
    loop = asyncio.get_running_loop()
    urls = {i for i, u in enumerate(uris) if u[:8].lower().startswith(("http://", "https://"))}  # any case
    if urls and not limits.allow_image_urls:
        i = min(urls)
        raise APIError(400, f"input[{i}] is a URL; this server fetches no URLs (start it with --allow-image-urls "
                       "to allow them); send the image as a data URI", param="input", code="image_urls_off")
    blobs: list[Any] = [None] * len(uris)
    for i, u in enumerate(uris):
        if i not in urls:
            blobs[i] = decode_image(u, i, limits)
    if urls:
        deadline = time.monotonic() + limits.url_timeout
        fetches = [loop.run_in_executor(pool, _fetch, uris[i], i, limits, deadline) for i in sorted(urls)]
        try:
            fetched = await asyncio.wait_for(asyncio.gather(*fetches), limits.url_timeout + 1)
        except asyncio.TimeoutError:
            raise APIError(400, f"fetching the request's image URLs took over {limits.url_timeout:g} s",
                           param="input") from None
        for i, blob in zip(sorted(urls), fetched):
            blobs[i] = blob
    return blobs, urls


def _item_error(exc: Exception, served: Any = None) -> APIError:
    """An input the model cannot take (422), named as the model named it."""
    message = _public(str(exc), served).replace("inputs[", "input[")
    return APIError(422, message, param="input", code="invalid_input")


# -------------------------------------------------------------------- the app
def create_app(
    models: Mapping[str, Any] | Sequence[Any],
    *,
    api_key: str | None = None,
    auth_all: bool = False,
    limits: Limits | None = None,
    max_batch_tokens: int | None = None,
    max_batch_size: int = 256,
    max_queue: int = 4096,
    max_queue_wait: float | None = 2.0,
    workers_tokenize: int = 2,
    load_options: Mapping[str, Any] | None = None,
) -> Any:
    """An ASGI (FastAPI) app serving ``models``: a dict served name -> model name, folder or loaded
    :class:`~embedhub.EmbeddingModel` (a list serves each under its own name). Models given by name load in a
    background thread when the app starts (``/health`` answers 503 until they have).

    ``api_key``: requests must send ``Authorization: Bearer <key>`` (``/health`` and ``/metrics`` too when
    ``auth_all``); ``max_batch_tokens`` / ``max_batch_size``: one model batch (tokens: default 4096 on a CPU, 16384
    on an accelerator); ``max_queue`` (items) and
    ``max_queue_wait`` (seconds of model time, measured): what may wait per model before requests are refused
    with 429; ``workers_tokenize``: threads tokenising and decoding requests.

    >>> app = create_app({"minilm": embedhub.load("all-MiniLM-L6-v2")})   # doctest: +SKIP
    """
    fastapi = require("fastapi", "serve", "embedhub serve")
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if api_key is not None and (not isinstance(api_key, str) or not api_key.isascii() or not api_key.isprintable()
                                or " " in api_key or not api_key):
        raise ArgumentError("api_key must be a non-empty string of printable ASCII without spaces (it travels in an "
                            "HTTP header)")
    if not isinstance(models, Mapping):
        models = {_served_name(m): m for m in models}
    if not models:
        raise ArgumentError("create_app needs at least one model to serve")
    for name in models:
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"served model names must be non-empty strings, got {name!r}")
    state = ServeState(dict(models), api_key=api_key, auth_all=auth_all, limits=limits or Limits(),
                       engine_options={"max_batch_tokens": max_batch_tokens, "max_batch_size": max_batch_size,
                                       "max_queue": max_queue, "max_wait": max_queue_wait},
                       load_options=dict(load_options or {}), workers_tokenize=workers_tokenize)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any):
        state.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, state.stop)

    app = fastapi.FastAPI(title="embedhub", lifespan=lifespan)
    app.state.embedhub = state
    metrics = state.metrics

    def error_response(err: APIError) -> Any:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Any, exc: APIError) -> Any:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Any, exc: Any) -> Any:
        return error_response(APIError(exc.status_code, str(exc.detail), code="not_found"
                                       if exc.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _server_error(request: Any, exc: Exception) -> Any:
        log.exception("embedhub serve: unexpected error")
        return error_response(APIError(500, f"The server failed: {type(exc).__name__}", type="server_error"))

    async def hot_embeddings(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``POST /v1/embeddings`` as FastAPI answers it (the same handler, errors and metrics), without its
        layers."""
        request = Request(scope, receive, send)
        try:
            response = await embeddings(request)
        except APIError as exc:
            response = error_response(exc)
        except Exception as exc:
            response = await _server_error(request, exc)
        await response(scope, receive, send)

    build_stack = app.build_middleware_stack
    hot = _Observe(hot_embeddings, state=state)
    own: dict[str, Any] = {}  # the app's own middleware and error handlers, recorded once it is built

    def build_middleware_stack() -> Any:
        """FastAPI's stack, with the fast path in front unless middleware or error handlers were added to the
        app after :func:`create_app` (they apply to every route, so the fast path would skip them)."""
        stack = build_stack()
        if app.user_middleware == own.get("middleware") and app.exception_handlers == own.get("handlers"):
            return _HotPath(stack, hot)
        return stack

    app.build_middleware_stack = build_middleware_stack

    app.add_middleware(_Observe, state=state)

    @app.get("/health")
    async def health(request: Request) -> Any:
        if state.auth_all:
            state.check_key(request.headers.get("authorization"))
        report = {}
        for name, served in state.models.items():
            st, reason = served.health()
            report[name] = {"state": st, **({"reason": reason} if reason else {})}
            if served.engine is not None:
                metrics.healthy.labels(name).set(1.0 if st == "ready" else 0.0)
        ok = all(v["state"] == "ready" for v in report.values()) and not state.draining
        status = "ok" if ok else "draining" if state.draining else (
            "loading" if any(v["state"] == "loading" for v in report.values()) else "failed")
        return JSONResponse({"status": status, "models": report}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Any:
        if state.auth_all:
            state.check_key(request.headers.get("authorization"))
        for name, served in state.models.items():
            if served.engine is not None:
                metrics.queue.labels(name).set(served.engine.queued)
                metrics.in_flight.labels(name).set(served.engine.in_flight)
                metrics.healthy.labels(name).set(1.0 if served.engine.healthy else 0.0)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Any:
        state.check_key(request.headers.get("authorization"))
        data = []
        for name, served in state.models.items():
            entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "embedhub",
                                     "state": served.health()[0]}
            if served.model is not None:
                m = served.model
                entry.update(modalities=list(m.modalities), dimensions=int(m.truncate_dim or m.embed_dim),
                             max_input_tokens=m.max_seq_length, fingerprint=m.fingerprint.id,
                             prompts=sorted(k for k, v in m.prompts.items() if v))
            data.append(entry)
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        state.check_key(request.headers.get("authorization"))
        data = await read_json(request, state.limits.max_body_bytes, state.limits.body_timeout)
        served = state.served(data.get("model"))
        modality = _field(data, "modality", (str,), "'text' or 'image'", "text")
        if modality not in ("text", "image"):
            raise APIError(400, f"'modality' must be 'text' or 'image', got {modality!r}", param="modality")
        fmt = _field(data, "encoding_format", (str,), "'float' or 'base64'", "float")
        if fmt not in ("float", "base64"):
            raise APIError(400, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}",
                           param="encoding_format")
        _field(data, "user", (str,), "a string")
        model = served.model
        dims = _field(data, "dimensions", (int,), "a positive integer")
        if dims is not None and not 1 <= dims <= model.embed_dim:
            raise APIError(400, f"'dimensions' must be between 1 and {model.embed_dim} for {served.name}, got "
                           f"{dims}", param="dimensions")
        role = _field(data, "input_type", (str,), "'query' or 'document'")
        if role is not None and role not in ("query", "document"):
            raise APIError(400, f"'input_type' must be 'query' or 'document', got {role!r}", param="input_type")
        prompt_name = _field(data, "prompt_name", (str,), "a string naming one of the model's prompts")
        try:
            stages = served.stages(modality, role, prompt_name)
        except ModalityError as exc:
            raise APIError(400, _public(str(exc), served), param="modality") from None
        except ArgumentError as exc:
            param = "prompt_name" if prompt_name else "input_type"
            raise APIError(400, _public(str(exc), served), param=param) from None
        engine = served.engine
        assert engine is not None
        raw_input = data.get("input")
        limits = state.limits
        loop = asyncio.get_running_loop()
        if modality == "image":
            uris = parse_image_input(raw_input, limits)
            _admit(engine, len(uris))
            blobs, from_urls = await image_bytes(uris, limits, state.url_pool)
            prepared = await _prepare(loop, state.pool, lambda: stages.prepare(
                blobs, max_image_pixels=limits.max_image_pixels), from_urls, served)
            tokens = 0
        else:
            texts, ids = parse_text_input(raw_input, limits)
            n = len(texts) if texts is not None else len(ids or [])
            _admit(engine, n)
            fn = (lambda: stages.prepare(texts)) if texts is not None else (lambda: stages.prepare_token_ids(ids))
            small = texts is not None and len(texts) <= 8 and sum(map(len, texts)) <= _INLINE_CHARS
            prepared = await _prepare(loop, None if small else state.pool, fn, served=served)
            tokens = sum(len(x) for x in prepared)
        vectors = await _run(request, engine, stages, prepared, dims)
        metrics.items.labels(served.name, modality).inc(len(prepared))
        fingerprint = served.fingerprint_id(stages, dims)

        def write() -> bytes:
            out = [{"object": "embedding", "index": i,
                    "embedding": _b64(v) if fmt == "base64" else v} for i, v in enumerate(vectors)]
            body = {"object": "list", "data": out, "model": served.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            return _dumps(body)

        big = vectors.shape[0] * vectors.shape[1] * (4 if fmt == "base64" else 20) > _OFFLOAD_BYTES
        content = await loop.run_in_executor(None, write) if big else write()
        return Response(content, media_type="application/json", headers={FINGERPRINT_HEADER: fingerprint})

    @app.post("/v1/zero-shot")
    async def zero_shot(request: Request) -> Any:
        state.check_key(request.headers.get("authorization"))
        data = await read_json(request, state.limits.max_body_bytes, state.limits.body_timeout)
        served = state.served(data.get("model"))
        model = served.model
        if not {"text", "image"} <= set(model.modalities):
            raise APIError(400, f"{served.name} embeds only {' and '.join(model.modalities)}; zero-shot needs a "
                           "text and an image tower", param="model")
        uris = parse_image_input(data.get("input", data.get("image")), state.limits)
        labels = data.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels) \
                or len(labels) > state.limits.max_items:
            raise APIError(400, f"'labels' must be a list of 1 to {state.limits.max_items} non-empty strings",
                           param="labels")
        templates = data.get("templates")
        if templates is not None and (not isinstance(templates, list) or not templates
                                      or not all(isinstance(x, str) for x in templates) or len(templates) > 100):
            raise APIError(400, "'templates' must be a list of 1 to 100 strings, each with one '{}'",
                           param="templates")
        texts = len(labels) * len(templates if templates is not None else model.templates)
        if texts > state.limits.max_items:
            raise APIError(400, f"labels x templates is {texts} texts; at most {state.limits.max_items} per request",
                           param="labels", code="too_many_inputs")
        engine = served.engine
        assert engine is not None
        limits = state.limits
        _admit(engine, len(uris) + texts)
        loop = asyncio.get_running_loop()
        blobs, from_urls = await image_bytes(uris, limits, state.url_pool)
        images = await _prepare(loop, state.pool, lambda: served.stages("image", None, None).prepare(
            blobs, max_image_pixels=limits.max_image_pixels), from_urls, served)
        try:
            with _engine_errors(engine):
                probs = await engine.call(lambda: model.zero_shot(images, labels, templates))
        except (EmbedhubError, ValueError, TypeError) as exc:
            raise APIError(400, _public(str(exc), served), param="templates" if templates else "labels") from None
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        return {"object": "list", "model": served.name, "labels": labels,
                "data": [{"object": "zero_shot", "index": i, "probabilities": p.tolist()} for i, p in
                         enumerate(probs)]}

    own.update(middleware=list(app.user_middleware), handlers=dict(app.exception_handlers))
    return app


_ROUTES = ("/v1/embeddings", "/v1/zero-shot", "/v1/models", "/health", "/metrics")


class _HotPath:
    """ASGI: ``POST /v1/embeddings`` straight to ``hot`` (its handler, with the same answers and metrics), past
    FastAPI's middleware, routing and dependency layers, which took as much of the event loop per request as the
    handler itself (on 2 cores the event loop shares them with the model); every other request to ``app``."""

    def __init__(self, app: Any, hot: Any):
        self.app, self.hot = app, hot

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) == "/v1/embeddings":
            await self.hot(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def _route_path(scope: dict[str, Any]) -> str:
    """The request's path below the app's mount point (``root_path``), as Starlette's router matches it: the
    root is cut only where a ``/`` follows it (a root of ``/`` leaves ``/v1/embeddings`` as it is)."""
    path, root = scope["path"], scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root):] if path[len(root)] == "/" else path


class _Observe:
    """ASGI middleware: starts the models' loading on the first request and counts every answer by route
    and status with its latency."""

    def __init__(self, app: Any, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.state.start()
        start, status = time.perf_counter(), [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = _route_path(scope)
            route = path if path in _ROUTES else "other"
            self.state.metrics.requests.labels(route, str(status[0])).inc()
            self.state.metrics.latency.labels(route).observe(time.perf_counter() - start)


def _served_name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return str(getattr(model, "name", "model"))


@contextlib.contextmanager
def _engine_errors(engine: Engine) -> Iterator[None]:
    """The engine's refusals as answers: a full queue 429 (with ``Retry-After``), a failed engine 503."""
    try:
        yield
    except Overloaded as exc:
        raise APIError(429, str(exc), type="rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(exc.retry_after)}) from None
    except EngineFailed as exc:
        raise APIError(503, f"{engine.name}'s engine failed: {exc}", type="server_error",
                       code="engine_failed") from None


def _admit(engine: Engine, n: int) -> None:
    """Refuse at once, before any tokenising, what the engine would not take."""
    with _engine_errors(engine):
        engine.check_admission(n)


#: a request of at most 8 texts and this many characters is tokenised on the event loop (tens of microseconds,
#: less than the hand-over to a worker thread); larger ones on the tokenising threads
_INLINE_CHARS = 2000


async def _prepare(loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor | None, fn: Any,
                   from_urls: set[int] = frozenset(), served: Any = None) -> list[Any]:
    """Tokenise or decode on a worker thread (inline when ``pool`` is None); the model's input errors become
    422s naming the item (for an image fetched from a URL, without quoting what the URL returned)."""
    try:
        return fn() if pool is None else await loop.run_in_executor(pool, fn)
    except APIError:
        raise
    except (ItemError, EmbedhubError) as exc:
        index = getattr(exc, "index", None)
        if index in from_urls:
            raise APIError(422, f"input[{index}]: what the URL returned is not an image this server decodes (PNG, "
                           "JPEG, WebP, GIF, BMP or TIFF within the pixel limit)", param="input",
                           code="invalid_input") from None
        raise _item_error(exc, served) from None


#: requests of at most this many inputs are not watched for a disconnect (two tasks fewer per request: the
#: latency of one short text); their few items run even if the client has gone
_UNWATCHED_ITEMS = 4


async def _run(request: Any, engine: Engine, stages: Any, prepared: list[Any], dims: int | None = None) -> Any:
    """The engine's vectors for ``prepared`` (``dims``: truncated to that width and renormalised); a client that
    disconnects cancels its queued items (requests of more than :data:`_UNWATCHED_ITEMS` inputs)."""
    finish = {} if dims is None else {"truncate_dim": dims, "normalize": True}
    if len(prepared) <= _UNWATCHED_ITEMS:
        with _engine_errors(engine):
            return await engine.embed(stages, prepared, **finish)
    task = asyncio.ensure_future(engine.embed(stages, prepared, **finish))
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()
            raise APIError(499, "The client closed the request", code="client_closed")
        with _engine_errors(engine):
            return task.result()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


async def _disconnected(request: Any) -> None:
    """Returns when the client has gone (the ASGI ``http.disconnect`` message)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


def _public(message: str, served: Any) -> str:
    """``message`` with the model's own name (often a folder path of this machine) replaced by its served name."""
    if served is None:
        return message
    for private in {str(getattr(served.model, "name", "")), os.fspath(served.source)
                    if isinstance(served.source, (str, os.PathLike)) else ""} - {""}:
        message = message.replace(private, served.name)
    return message


def _loads(body: bytes) -> Any:
    """A request body's JSON (orjson when installed: several times faster than json, which matters as parsing
    holds the interpreter's lock; NaN and Infinity literals are refused as they are not JSON)."""
    try:
        import orjson
    except ImportError:
        return json.loads(body, parse_constant=_refuse_constant)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _dumps(body: dict[str, Any]) -> bytes:
    """JSON of a response whose embeddings are float32 numpy rows (orjson when installed: float32 values written
    in their shortest exact form; else the json module, as float64)."""
    try:
        import orjson
    except ImportError:
        for row in body["data"]:
            if isinstance(row["embedding"], np.ndarray):
                row["embedding"] = row["embedding"].tolist()
        return json.dumps(body, separators=(",", ":")).encode()
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _b64(vector: np.ndarray) -> str:
    """OpenAI's ``encoding_format: base64``: the little-endian float32 bytes."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


__all__ = ["FINGERPRINT_HEADER", "APIError", "Limits", "ServeState", "create_app"]
