"""Encoding in several processes, one per device, as sentence-transformers' multi-process pool does it.

``model.start_multi_process_pool(["cuda:0", "cuda:1"])`` starts one worker process per device (``spawn``;
each receives the model once, its tensors shared in memory, never written to disk) and returns a reusable
:class:`MultiProcessPool`; ``model.encode(inputs, pool=pool)`` cuts the inputs into chunks, hands each to an
idle worker and puts the results back in input order; ``model.encode(inputs, device=["cpu", "cpu"])``
starts a pool for that call and stops it after. ``model.stop_multi_process_pool(pool)`` (or leaving a
``with pool:`` block) stops the workers. The workers hold the model as it was when the pool started (start a
new pool after changing its weights). CPU workers use this process's torch thread count, so that their sums
run in the same order as here.

The vectors are exactly the single-process ones: the parent tokenises the texts and plans the batches as
:meth:`EmbeddingModel.encode` does (length-sorted windows, ``batch_size`` / ``max_tokens``), and each chunk
is a run of whole planned batches, so every worker runs the very batches one process would. Every keyword
of ``encode`` goes to the workers, except ``precision``: the workers return floats and the parent quantises
the whole output (int8 ranges come from all embeddings, as sentence-transformers computes them).

An error in a chunk is raised in the caller with its type (an input error names the input by its place in
the whole input); a worker that dies stops the pool and raises :class:`PoolError` naming the chunk it held.

>>> with model.start_multi_process_pool(["cpu", "cpu"]) as pool:  # doctest: +SKIP
...     emb = model.encode(texts, pool=pool, chunk_size=1000)
"""

from __future__ import annotations

import functools
import inspect
import math
import pickle
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from embedhub.errors import ArgumentError, InputError, ItemError, ModalityError, PoolError
from embedhub.modules.batching import check_batching, check_positive_int, plan_batches, text_windows
from embedhub.modules.inputs import as_items, modality_of
from embedhub.modules.preprocess import token_lengths

#: a worker that does not exit this many seconds after it was asked to is terminated
STOP_TIMEOUT = 10.0


class MultiProcessPool:
    """Worker processes, one per device, each holding the model; reusable until :meth:`stop`.

    >>> pool = model.start_multi_process_pool(["cpu", "cpu"])  # doctest: +SKIP
    >>> pool.devices  # doctest: +SKIP
    ['cpu', 'cpu']
    >>> pool.stop()  # doctest: +SKIP
    """

    def __init__(self, model: Any, devices: Sequence[str]):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.devices = list(devices)
        self.model_name = str(getattr(model, "name", "model"))
        self._model_id = id(model)
        self.processes: list[Any] = []
        self._pids: list[int | None] = []
        self._conns: list[Any] = []
        self.stopped = False
        #: CPU workers run with this process's torch thread count: CPU kernels sum in an order that depends
        #: on it, and with the same count the workers' vectors equal this process's bit for bit (lower it
        #: with ``torch.set_num_threads`` before starting the pool to share the cores instead)
        threads = torch.get_num_threads()
        ends = []
        for device in self.devices:
            parent, child = ctx.Pipe(duplex=True)
            cpu = torch.device(device).type == "cpu"
            self.processes.append(ctx.Process(target=_worker, args=(model, device, child, threads if cpu else None),
                                              daemon=True, name=f"embedhub-encode-{device}"))
            self._conns.append(parent)
            ends.append(child)
        try:
            _start_all(self.processes)
        except BaseException:
            self._pids = [p.pid for p in self.processes]
            self.stop()
            raise
        finally:
            for child in ends:
                child.close()
        self._pids = [p.pid for p in self.processes]

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids (kept after :meth:`stop`, to check that they are gone)."""
        return list(self._pids)

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "running"
        return f"MultiProcessPool(devices={self.devices}, {state})"

    def __enter__(self) -> MultiProcessPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Ask every worker to exit, terminate those that do not, and reap them all (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        started = [p for p in self.processes if p.pid is not None]
        for p in started:
            p.join(timeout=STOP_TIMEOUT)
        for p in started:
            if p.is_alive():
                p.terminate()
                p.join(timeout=STOP_TIMEOUT)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self._conns:
            conn.close()
        for p in started:
            p.close()

    close = stop


def _start_all(processes: list[Any]) -> None:
    """Start the processes side by side: a spawn start returns once the child has read the model, which it
    does after importing torch, so one at a time would add up those imports."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(processes)) as ex:
        for future in [ex.submit(p.start) for p in processes]:
            future.result()


# ------------------------------------------------------------------------------ worker side
def _place(model: Any, device: str) -> None:
    """Move ``model``'s towers and runners to ``device`` (in a worker, on its own copy)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    model.towers.to(dev)
    for runner in model._runners.values():
        runner.device = dev
    model.device = dev


def _describe(exc: BaseException) -> tuple[Any, str, str, int | None, str]:
    """What the parent needs to raise ``exc`` again: the exception (when it pickles), its type name, its
    message, its input index (an :class:`ItemError`) and the formatted traceback."""
    try:
        carried: Any = pickle.loads(pickle.dumps(exc))
    except Exception:
        carried = None
    index = exc.index if isinstance(exc, ItemError) else None
    detail = exc.detail if isinstance(exc, ItemError) else str(exc)
    return carried, type(exc).__name__, detail, index, "".join(traceback.format_exception(exc))


def _worker(model: Any, device: str, conn: Any, threads: int | None) -> None:
    """A worker's loop: ``(chunk, method, items, kwargs)`` in, ``("ok", chunk, array)`` or ``("error", chunk,
    description)`` out; ``None`` or a closed pipe (the parent exited) ends it."""
    try:
        if threads:
            torch.set_num_threads(threads)
        _place(model, device)
    except BaseException as exc:  # reported, then the worker exits: the parent sees a dead worker with a reason
        try:
            conn.send(("failed", None, _describe(exc)))
        except (OSError, ValueError):
            pass
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        chunk, method, items, kwargs = message
        try:
            out = getattr(model, method)(items, **kwargs)
            reply: tuple[Any, ...] = ("ok", chunk, np.ascontiguousarray(out))
        except Exception as exc:
            reply = ("error", chunk, _describe(exc))
        conn.send(reply)


# ------------------------------------------------------------------------------ parent side
def default_devices(model: Any) -> list[str]:
    """As sentence-transformers: every CUDA device when the model is on CUDA, else 4 CPU workers."""
    if torch.device(model.device).type == "cuda" and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"] * 4


def check_devices(devices: Any) -> list[str]:
    """``devices`` as a non-empty list of device names this machine has; a ``ValueError`` naming the bad one."""
    if isinstance(devices, (str, torch.device)) or not isinstance(devices, (list, tuple)) or not devices:
        raise ArgumentError(f"target devices must be a non-empty list such as ['cuda:0', 'cuda:1'] or ['cpu', 'cpu'], "
                         f"got {devices!r}")
    out = []
    for i, d in enumerate(devices):
        try:
            dev = torch.device(d)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ArgumentError(f"devices[{i}] = {d!r} is not a torch device ({exc})") from None
        if dev.type not in ("cpu", "cuda"):
            raise ArgumentError(f"devices[{i}] = {d!r}: the pool runs on 'cpu' and 'cuda' devices")
        if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
            raise ArgumentError(f"devices[{i}] = {d!r}: this machine has {torch.cuda.device_count()} CUDA devices")
        out.append(str(dev))
    return out


def start_pool(model: Any, target_devices: Sequence[str] | None = None) -> MultiProcessPool:
    """A :class:`MultiProcessPool` of ``model`` on ``target_devices`` (default: :func:`default_devices`)."""
    from embedhub.modules.backends import TorchRunner

    kinds = [type(r).__name__ for r in model._runners.values() if not isinstance(r, TorchRunner)]
    if kinds:
        raise ArgumentError(f"{model.name}: multi-process encoding runs torch towers; this model runs on "
                         f"{', '.join(kinds)} (load it with backend='torch')")
    devices = check_devices(default_devices(model) if target_devices is None else target_devices)
    return MultiProcessPool(model, devices)


def pooled(method: Callable[..., Any]) -> Callable[..., Any]:
    """Give an encode method the keywords ``pool``, ``device`` (a list of devices starts a pool for the call)
    and ``chunk_size``; without them the method runs as it is, in this process."""

    sig = inspect.signature(method)
    first = list(sig.parameters)[1]  # the inputs, whatever the method calls them

    @functools.wraps(method)
    def encode(self: Any, *args: Any, pool: MultiProcessPool | None = None, device: Any = None,
               chunk_size: int | None = None, **kwargs: Any) -> Any:
        if isinstance(device, (str, torch.device)):
            if torch.device(device) != torch.device(self.device):
                raise ArgumentError(f"device={str(device)!r}: {self.name} is on {self.device}; load it on that device, "
                                 "or pass a list of devices (device=['cuda:0', 'cuda:1']) to encode in several "
                                 "processes")
            device = None
        if pool is None and device is None:
            if chunk_size is not None:
                raise ArgumentError("chunk_size applies to multi-process encoding: pass pool= or a list of devices")
            return method(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)  # an unknown keyword or a missing input fails here, at once
        named = dict(bound.arguments)
        inputs = named.pop(first)
        named.pop(list(sig.parameters)[0])
        for name, param in sig.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD and name in named:
                named.update(named.pop(name))
        return encode_in_pool(self, method, inputs, named, pool=pool, devices=device, chunk_size=chunk_size)

    extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=a)
             for n, a in (("pool", "MultiProcessPool | None"), ("device", "str | list[str] | None"),
                          ("chunk_size", "int | None"))]
    params = list(sig.parameters.values())
    tail = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    encode.__signature__ = sig.replace(parameters=head + extra + tail)  # type: ignore[attr-defined]
    return encode


def _chunks_of(runs: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Consecutive runs (whole batches) joined into chunks of at most ``size`` rows (a larger run alone)."""
    chunks: list[np.ndarray] = []
    current: list[np.ndarray] = []
    rows = 0
    for run in runs:
        if current and rows + len(run) > size:
            chunks.append(np.concatenate(current))
            current, rows = [], 0
        current.append(run)
        rows += len(run)
    if current:
        chunks.append(np.concatenate(current))
    return chunks


def _prompt(model: Any, kwargs: dict[str, Any]) -> str:
    """The text put before each input, as encode chooses it: ``prompt``, else the prompt of ``prompt_name``,
    else the model's default prompt (``""`` when there is none)."""
    if isinstance(kwargs.get("prompt"), str):
        return kwargs["prompt"]
    prompts = getattr(model, "prompts", None) or {}
    name = kwargs.get("prompt_name") or getattr(model, "default_prompt_name", None)
    value = prompts.get(name) if isinstance(prompts, dict) and name else None
    return value if isinstance(value, str) else ""


def _plan(model: Any, items: list[Any], kinds: list[str], batch_size: int, max_tokens: int | None,
          chunk_size: int, prompt: str = "") -> list[np.ndarray]:
    """Chunks of input positions, each a run of the whole batches one process would make (texts are measured
    with their prompt, as encode measures them)."""
    chunks: list[np.ndarray] = []
    text = np.fromiter((i for i, k in enumerate(kinds) if k == "text"), dtype=np.int64)
    if len(text):
        pre = model.preprocessors["text"]
        for window in text_windows(len(text), batch_size):
            rows = text[window.start : window.stop]
            try:
                ids = pre.tokenize([prompt + items[i] for i in rows])
            except InputError as exc:  # about a text of this window: name it by its place in the inputs
                if exc.index is None or not 0 <= exc.index < len(rows):
                    raise
                at = int(rows[exc.index])
                raise InputError(f"inputs[{at}]: {exc.detail}", index=at) from None
            batches = [rows[b] for b in plan_batches(token_lengths(ids), batch_size, max_tokens)]
            chunks += _chunks_of(batches, chunk_size)
    image = np.fromiter((i for i, k in enumerate(kinds) if k == "image"), dtype=np.int64)
    if len(image):
        step = max(1, chunk_size // batch_size) * batch_size
        chunks += [image[s : s + step] for s in range(0, len(image), step)]
    return chunks


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: int) -> None:
        pass


def _shown(rows: np.ndarray) -> str:
    listed = ", ".join(f"inputs[{int(i)}]" for i in rows[:5])
    return f"{len(rows)} inputs: {listed}{', ...' if len(rows) > 5 else ''}"


def _raise_from_worker(description: tuple[Any, str, str, int | None, str], rows: np.ndarray, chunk: int,
                       total: int, where: str) -> None:
    carried, kind, detail, index, trace = description
    if isinstance(carried, ItemError) and index is not None and 0 <= index < len(rows):
        at = int(rows[index])
        raise type(carried)(f"inputs[{at}]: {detail}", index=at)
    if isinstance(carried, BaseException):
        carried.add_note(f"(raised by {where} while encoding chunk {chunk + 1} of {total}, {_shown(rows)})")
        raise carried
    raise PoolError(f"{where} failed on chunk {chunk + 1} of {total} ({_shown(rows)}) with {kind}: {detail}\n{trace}")


def encode_in_pool(model: Any, method: Callable[..., Any], inputs: Any, kwargs: dict[str, Any], *,
                   pool: MultiProcessPool | None, devices: Any, chunk_size: int | None) -> Any:
    """``method(model, inputs, **kwargs)`` computed by the workers of ``pool`` (or of a pool started on
    ``devices`` for this call); see the module docstring."""
    if pool is not None and devices is not None:
        raise ArgumentError("pass either pool= or a list of devices, not both")
    if pool is not None and not isinstance(pool, MultiProcessPool):
        raise TypeError(f"pool must be a MultiProcessPool from model.start_multi_process_pool(), got "
                        f"{type(pool).__name__}")
    chunk_size = check_positive_int("chunk_size", chunk_size, optional=True)
    reference = method  # encode_text / encode_image take encode's keywords through **kwargs: checked against encode
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(method).parameters.values()):
        reference = getattr(type(model).encode, "__wrapped__", type(model).encode)
    bound = inspect.signature(reference).bind(model, inputs, **kwargs)  # an unknown keyword fails here, at once
    bound.apply_defaults()
    args = dict(bound.arguments)
    batch_size, max_tokens = check_batching(args.get("batch_size", 32), args.get("max_tokens"))
    convert_to = args.get("convert_to", "numpy")
    if convert_to not in ("numpy", "torch"):
        raise ArgumentError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
    items, single = as_items(inputs)
    if not items:
        return method(model, inputs, **kwargs)
    only = {"encode_text": "text", "encode_image": "image"}.get(method.__name__)
    kinds = [modality_of(x, i) for i, x in enumerate(items)]
    for i, kind in enumerate(kinds):
        if (only is not None and kind != only) or kind not in model._runners:
            allowed = only or " and ".join(model.modalities)
            raise ModalityError(f"inputs[{i}] is {kind}; {model.name}'s {method.__name__} takes {allowed} only",
                                index=i)
    precision = kwargs.get("precision")
    worker_kwargs = dict(kwargs, show_progress_bar=False, convert_to="numpy")
    if precision not in (None, "float32"):
        worker_kwargs["precision"] = "float32"
    own = pool is None
    if own:
        pool = start_pool(model, devices)
    try:
        if pool.stopped:
            raise PoolError(f"{pool!r} is stopped; start a new one with model.start_multi_process_pool()")
        if pool._model_id != id(model):
            raise ArgumentError(f"this pool holds {pool.model_name}, not {model.name}; start a pool of this model")
        size = chunk_size or max(1, min(math.ceil(len(items) / len(pool.processes) / 10), 5000))
        chunks = _plan(model, items, kinds, batch_size, max_tokens, size, _prompt(model, args))
        out = _run(pool, method.__name__, items, chunks, worker_kwargs, bool(args.get("show_progress_bar")))
    finally:
        if own:
            pool.stop()
    if precision not in (None, "float32"):
        from embedhub.modules.quantize import quantize_embeddings

        out = quantize_embeddings(out, precision)
    result = torch.from_numpy(out) if convert_to == "torch" else out
    return result[0] if single else result


def _run(pool: MultiProcessPool, method: str, items: list[Any], chunks: list[np.ndarray], kwargs: dict[str, Any],
         progress: bool) -> np.ndarray:
    from multiprocessing.connection import wait

    from tqdm.auto import tqdm

    out: np.ndarray | None = None
    busy: dict[int, int] = {}  # worker -> chunk it holds
    failure: tuple[Any, int, str] | None = None
    queue = list(range(len(chunks)))[::-1]
    total = len(chunks)

    def where(w: int) -> str:
        return f"worker {w} ({pool.devices[w]}, pid {pool.pids[w]})"

    def died(w: int, reason: str) -> PoolError:
        chunk = busy.get(w)
        held = f" before finishing chunk {chunk + 1} of {total} ({_shown(chunks[chunk])})" if chunk is not None else ""
        message = (f"{where(w)} of the multi-process pool {reason}{held}; the pool is stopped (start a new one "
                   "to go on)")
        pool.stop()
        return PoolError(message)

    def dispatch(w: int) -> None:
        if failure is not None or not queue:
            return
        chunk = queue.pop()
        busy[w] = chunk
        try:
            pool._conns[w].send((chunk, method, [items[i] for i in chunks[chunk]], kwargs))
        except (OSError, ValueError):
            code = pool.processes[w].exitcode
            raise died(w, f"is gone (exit code {code})") from None

    try:
        with tqdm(total=total, desc="chunks", unit="chunk") if progress else _NoBar() as bar:
            for w in range(len(pool.processes)):
                dispatch(w)
            while busy:
                conns = {pool._conns[w]: w for w in busy}
                sentinels = {pool.processes[w].sentinel: w for w in busy}
                ready = wait([*conns, *sentinels])
                for w in sorted({conns.get(r, sentinels.get(r)) for r in ready}):
                    conn = pool._conns[w]
                    if not conn.poll():  # only the sentinel: the process ended without a word
                        pool.processes[w].join(timeout=STOP_TIMEOUT)
                        raise died(w, f"died (exit code {pool.processes[w].exitcode})")
                    try:
                        kind, chunk, payload = conn.recv()
                    except (EOFError, OSError):
                        pool.processes[w].join(timeout=STOP_TIMEOUT)
                        raise died(w, f"died (exit code {pool.processes[w].exitcode})") from None
                    if kind == "failed":
                        raise died(w, f"could not start on {pool.devices[w]} ({payload[1]}: {payload[2]})")
                    del busy[w]
                    if kind == "error":
                        failure = failure or (payload, chunk, where(w))
                    elif failure is None:
                        if out is None:
                            out = np.empty((len(items), *payload.shape[1:]), dtype=payload.dtype)
                        out[chunks[chunk]] = payload
                        bar.update(1)
                    dispatch(w)
    except BaseException:
        if not pool.stopped and busy:  # interrupted with chunks in flight: their workers are in an unknown state
            pool.stop()
        raise
    if failure is not None:
        description, chunk, worker = failure
        _raise_from_worker(description, chunks[chunk], chunk, total, worker)
    assert out is not None
    return out
