"""The batching engine of one served model: the items of every waiting request, batched by a padded-token
budget, run on one model thread, each request handed its rows in order.

Requests come from an asyncio server; the engine's queue is bounded (a full queue refuses a request at once
rather than letting latency grow without bound), a cancelled request's queued items are dropped, and a
failure of the model thread is kept and reported (:attr:`Engine.failure`) rather than hidden.

>>> engine = Engine(model, max_batch_tokens=8192)          # doctest: +SKIP
>>> vectors = await engine.embed(stages, stages.prepare(["a cat", "a dog"]))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from embedhub.errors import ArgumentError
from embedhub.modules.batching import batch_rows, check_positive_int, first_come_batch

#: padded tokens per text batch on a CPU: a batch that outgrows the caches runs fewer texts per second
#: (all-MiniLM-L6-v2, 2 cores, 206-token texts: 32.0 texts/s at 16 per batch, 26.3 at 64; benchmarks/model_rate.py)
CPU_BATCH_TOKENS = 4096
#: padded tokens per text batch on an accelerator
GPU_BATCH_TOKENS = 16384


class Overloaded(Exception):
    """The engine's queue is full: retry after :attr:`retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class EngineFailed(Exception):
    """The model thread failed (or stopped); the engine takes no more work."""


@dataclass(eq=False)
class _Job:
    """One request's items: rows arrive from the model thread, the future resolves when all have. ``finish``:
    the ``truncate_dim`` and ``normalize`` its rows are finished with (empty: the model's defaults, which the
    model thread applies to a whole batch at once)."""

    stages: Any
    n: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    rows: list[Any] = field(default_factory=list)
    remaining: int = 0
    cancelled: bool = False
    queued: int = 0  # its items still in the engine's queue
    queued_seconds: float = 0.0
    finish: dict[str, Any] = field(default_factory=dict)

    def deliver(self, index: int, row: Any) -> bool:
        """Store one row (model thread); True when it was the last."""
        self.rows[index] = row
        self.remaining -= 1
        return self.remaining == 0


@dataclass(eq=False)
class _Item:
    job: _Job
    index: int
    value: Any
    cost: int
    seconds: float = 0.0  # the model time it is expected to take (cost / the measured rate), 0 before a measure


@dataclass(eq=False)
class _Call:
    """A function to run on the model thread between batches (zero-shot, which runs the model itself)."""

    fn: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: bool = False


class Engine:
    """Batches the items of all waiting requests of one model on one model thread.

    ``max_batch_tokens``: padded tokens per text batch (rows x longest row; default :data:`CPU_BATCH_TOKENS` on a
    CPU, :data:`GPU_BATCH_TOKENS` on an accelerator); ``max_batch_size``: rows per batch;
    ``max_queue``: items waiting at most; ``max_wait``: seconds of model time the waiting items may take at most,
    estimated from the rate (tokens or images per second) measured on the full batches (16 rows or more) run
    so far; before the first, only ``max_queue`` applies. A request that
    would go beyond either is refused with :class:`Overloaded`, unless the queue is empty (one request larger
    than the queue still runs alone); so the latency of an accepted request stays bounded under overload.
    ``window``: queued items taken at a time to cut the next batch from (default: 4 batches' rows; the oldest
    request's items are always taken whole); requests are answered in the order they came (short texts apart
    from long ones), and a request larger than a batch is cut by length as ``encode`` cuts it.
    ``observe(event, **values)`` receives ``"batch"`` events (rows, padded_tokens, requests, seconds).
    """

    def __init__(self, model: Any, *, max_batch_tokens: int | None = None, max_batch_size: int = 256,
                 max_queue: int = 4096, max_wait: float | None = 2.0, window: int | None = None,
                 observe: Callable[..., None] | None = None, name: str = "model"):
        self.model = model
        self.name = name
        if max_batch_tokens is None:
            device = getattr(getattr(model, "device", None), "type", "cpu")
            max_batch_tokens = CPU_BATCH_TOKENS if device == "cpu" else GPU_BATCH_TOKENS
        self.max_batch_tokens = check_positive_int("max_batch_tokens", max_batch_tokens)
        self.max_batch_size = check_positive_int("max_batch_size", max_batch_size)
        self.max_queue = check_positive_int("max_queue", max_queue)
        self.window = check_positive_int("window", window or 4 * self.max_batch_size)
        if max_wait is not None and (isinstance(max_wait, bool) or not isinstance(max_wait, (int, float))
                                     or not 0 < max_wait < float("inf")):
            raise ArgumentError(f"max_wait must be a positive number of seconds or None, got {max_wait!r}")
        self.max_wait = None if max_wait is None else float(max_wait)
        self._rate: dict[str, float] = {}  # modality -> cost per second of model time (moving average)
        self._queued_seconds = 0.0
        self._observe = observe or (lambda event, **values: None)
        self._queue: deque[_Item | _Call] = deque()
        self._cond = threading.Condition()
        self._queued = 0  # items (not calls) admitted and not yet run: in the queue or in the model thread's window
        self._in_flight = 0  # jobs submitted and not yet answered
        self._stopping = False
        self._thread: threading.Thread | None = None
        #: why the engine stopped working (``None`` while it works)
        self.failure: str | None = None

    # ---------------------------------------------------------------- state
    def start(self) -> Engine:
        """Start the model thread (idempotent)."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"embedhub-engine-{self.name}", daemon=True)
                self._thread.start()
        return self

    @property
    def healthy(self) -> bool:
        """True while the model thread runs and has not failed."""
        return self.failure is None and self._thread is not None and self._thread.is_alive()

    @property
    def queued(self) -> int:
        """Items waiting for their batch: in the queue, or taken into the model thread's window and not yet run."""
        return self._queued

    @property
    def queued_seconds(self) -> float:
        """Model time the waiting items are expected to take (0 until a batch has been measured)."""
        return max(0.0, self._queued_seconds)

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet answered."""
        return self._in_flight

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish the queued work, then stop the model thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def check_admission(self, n: int) -> None:
        """Raise :class:`EngineFailed` or :class:`Overloaded` when ``n`` more items would not be taken."""
        if self.failure is not None:
            raise EngineFailed(self.failure)
        if self._stopping:
            raise EngineFailed("the server is shutting down")
        if self._queued and self._queued + n > self.max_queue:
            raise Overloaded(f"{self.name}: {self._queued} items are waiting and the queue holds {self.max_queue}; "
                             "retry later", retry_after=1)
        wait = self.queued_seconds
        if self._queued and self.max_wait is not None and wait > self.max_wait:
            raise Overloaded(f"{self.name}: the queue holds {wait:.2f} s of work, over the {self.max_wait:g} s "
                             "a request may wait; retry later", retry_after=max(1, math.ceil(wait)))

    # ---------------------------------------------------------------- requests
    async def embed(self, stages: Any, prepared: list[Any], *, truncate_dim: int | None = None,
                    normalize: bool | None = None) -> np.ndarray:
        """The embeddings of prepared items (``stages.prepare``'s output), in order, as
        ``encode(..., truncate_dim=, normalize=)`` returns them: ``stages.finish(stages.run(prepared), ...)``.
        The model thread finishes the rows (a whole batch at once for the model's defaults).

        Cancelling the awaiting task drops the request's items that are still queued."""
        finish = {k: v for k, v in (("truncate_dim", truncate_dim), ("normalize", normalize)) if v is not None}
        if finish or not prepared:  # a bad width or mode fails here, in the request, not in the model thread
            empty = stages.finish(torch.empty(0, self.model.embed_dim), **finish)
            if not prepared:
                return empty
        loop = asyncio.get_running_loop()
        job = _Job(stages, len(prepared), loop, loop.create_future(), [None] * len(prepared), len(prepared),
                   finish=finish)
        rate = self._rate.get(stages.modality)
        items = [_Item(job, i, x, c, c / rate if rate else 0.0)
                 for i, (x, c) in enumerate(zip(prepared, (int(stages.cost(x)) for x in prepared)))]
        with self._cond:
            self.check_admission(len(items))
            self._queue.extend(items)
            job.queued, job.queued_seconds = len(items), sum(it.seconds for it in items)
            self._queued += job.queued
            self._queued_seconds += job.queued_seconds
            self._in_flight += 1
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._cond:  # its waiting items stop counting at once (they are dropped when reached)
                job.cancelled = True
                self._queued -= job.queued
                self._queued_seconds -= job.queued_seconds
                job.queued, job.queued_seconds = 0, 0.0
            raise
        finally:
            with self._cond:
                self._in_flight -= 1

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the model thread (between batches) and return its result."""
        loop = asyncio.get_running_loop()
        call = _Call(fn, loop, loop.create_future())
        with self._cond:
            self.check_admission(1)
            self._queue.append(call)
            self._in_flight += 1
            self._cond.notify()
        try:
            return await call.future
        except asyncio.CancelledError:
            call.cancelled = True
            raise
        finally:
            with self._cond:
                self._in_flight -= 1

    # ---------------------------------------------------------------- the model thread
    def _take(self) -> tuple[list[_Item], list[_Item]] | _Call | None:
        """The next window: up to ``window`` queued items of the first item's batch key, in order, with every
        item taken off the queue meanwhile (in order: the window's and those of other keys, which
        :meth:`_run_window` puts back with what it does not run); or the call at the front; ``None`` when
        stopping with nothing left."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue[0]
            if isinstance(first, _Call):
                self._queue.popleft()
                return first
            key, taken, popped = first.job.stages.key, [], []
            while self._queue:
                item = self._queue[0]
                if isinstance(item, _Call) or (len(taken) >= self.window and item.job is not first.job):
                    break  # the oldest request is taken whole, so it is cut by length as encode cuts it
                self._queue.popleft()
                if item.job.cancelled:  # counted off when it was cancelled
                    continue
                popped.append(item)
                if item.job.stages.key == key:
                    taken.append(item)  # still counted as waiting until its batch has run
            return taken, popped

    def _loop(self) -> None:
        try:
            while True:
                work = self._take()
                if work is None:
                    return
                if isinstance(work, _Call):
                    self._run_call(work)
                else:
                    self._run_window(*work)
        except BaseException as exc:  # the model failed: keep why, fail every waiting request
            self._fail(f"{type(exc).__name__}: {exc}")

    def _run_call(self, call: _Call) -> None:
        if call.cancelled:
            return
        try:
            result = call.fn()
        except Exception as exc:  # the call's own error (bad labels, ...) goes to its request
            call.loop.call_soon_threadsafe(_settle, call.future, None, exc)
            return
        call.loop.call_soon_threadsafe(_settle, call.future, result, None)

    def _run_window(self, items: list[_Item], popped: list[_Item]) -> None:
        """Run the next batch of the window: the oldest request's items (longest first), then the next requests'
        of similar lengths in the order they came, within the batch bounds
        (:func:`~embedhub.modules.batching.first_come_batch`); the rest goes back to the front of the queue in
        its order. So a newer request runs ahead of an older one only where the older one's items would pad a row
        much (or not fit), a short text is not padded to a long one's length, and a large request is cut into
        batches of similar lengths."""
        if not items:
            self._put_back(popped, ())
            return
        stages = items[0].job.stages
        lengths = np.fromiter((it.cost for it in items), dtype=np.int64, count=len(items))
        rank: dict[int, int] = {}
        requests = np.fromiter((rank.setdefault(id(it.job), len(rank)) for it in items), dtype=np.int64,
                               count=len(items))
        budget = self.max_batch_tokens if stages.modality == "text" else None
        chosen = [items[r] for r in first_come_batch(lengths, requests, self.max_batch_size, budget)]
        self._put_back(popped, chosen)
        try:
            self._run_batch(stages, chosen)
        except BaseException as exc:  # its requests fail (once); the engine's failure answers those still queued
            error = EngineFailed(f"{type(exc).__name__}: {exc}")
            for job in {it.job for it in chosen}:
                _settle_threadsafe(job.loop, job.future, error)
            raise

    def _put_back(self, popped: list[_Item], chosen: Any) -> None:
        """Return the items taken off the queue that do not run now to its front, in their order."""
        running = {id(it) for it in chosen}
        back = [it for it in popped if id(it) not in running and not it.job.cancelled]
        if back:
            with self._cond:
                self._queue.extendleft(reversed(back))

    def _ran(self, items: list[_Item]) -> None:
        """Count ``items`` off the waiting work (those of cancelled requests were counted off when cancelled)."""
        with self._cond:
            for it in items:
                if not it.job.cancelled:
                    self._queued -= 1
                    self._queued_seconds -= it.seconds
                    it.job.queued -= 1
                    it.job.queued_seconds -= it.seconds

    def _run_batch(self, stages: Any, rows: list[_Item]) -> None:
        """One batch of a window through the model (its items of cancelled requests left out); the batch leaves
        the waiting work before its rows are handed over. A failure (of the model or of finishing the rows)
        propagates to :meth:`_run_window`, which fails every request of the batch (and the engine's failure those
        still queued)."""
        batch = [it for it in rows if not it.job.cancelled]
        if not batch:
            self._ran(rows)
        else:
            start = time.perf_counter()
            try:
                emb = stages.run([it.value for it in batch])
            except BaseException:
                self._ran(rows)
                raise
            seconds = time.perf_counter() - start
            jobs = {it.job for it in batch}
            cost = sum(it.cost for it in batch)
            longest = max(it.cost for it in batch)
            # full by the token budget too (long texts: fewer than 16 rows fit)
            full = batch_rows(longest, min(16, self.max_batch_size),
                              self.max_batch_tokens if stages.modality == "text" else None)
            if len(batch) >= full:  # the rate of full batches, as a long queue runs them
                rate = cost / max(seconds, 1e-6)
                old = self._rate.get(stages.modality)
                self._rate[stages.modality] = rate if old is None else 0.7 * old + 0.3 * rate
            self._observe("batch", rows=len(batch), padded_tokens=len(batch) * longest,
                          requests=len(jobs), seconds=seconds)
            self._ran(rows)
            finished = stages.finish(emb) if any(not it.job.finish for it in batch) else None
            for i, it in enumerate(batch):
                job = it.job
                if job.deliver(it.index, emb[i] if job.finish else finished[i]):
                    try:
                        out = (stages.finish(torch.stack(job.rows), **job.finish) if job.finish
                               else np.stack(job.rows))
                    except Exception as exc:  # this request's own finishing error, not the model's
                        job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
                        continue
                    job.loop.call_soon_threadsafe(_settle, job.future, out, None)

    def _fail(self, reason: str) -> None:
        with self._cond:
            self.failure = reason
            waiting, self._queue = list(self._queue), deque()
            self._queued, self._queued_seconds = 0, 0.0
            for w in waiting:  # counted off here: a request cancelled before its failure arrives subtracts nothing
                if isinstance(w, _Item):
                    w.job.queued, w.job.queued_seconds = 0, 0.0
        error = EngineFailed(reason)
        owners = {w.job if isinstance(w, _Item) else w for w in waiting}  # jobs and calls: each answered once
        for owner in owners:
            _settle_threadsafe(owner.loop, owner.future, error)


def _settle_threadsafe(loop: asyncio.AbstractEventLoop, future: asyncio.Future, error: BaseException) -> None:
    """Fail ``future`` from the model thread (nothing to do when its event loop has closed)."""
    try:
        loop.call_soon_threadsafe(_settle, future, None, error)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Resolve ``future`` on its loop, unless its request has gone (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


__all__ = ["Engine", "EngineFailed", "Overloaded"]
