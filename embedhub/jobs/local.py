"""The local engine of an embedding job: chunks read one ahead in a thread, images decoded in worker processes
within a memory bound, batches encoded in this process, shards handed back in order."""

from __future__ import annotations

import os
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from embedhub.errors import JobError
from embedhub.jobs.corpus import (
    Chunk,
    ChunkRows,
    ItemReader,
    decode_image,
    read_chunk,
)
from embedhub.modules.batching import TEXT_WINDOW
from embedhub.modules.inputs import MAX_IMAGE_BYTES
from embedhub.store.job_folder import (
    empty_rows,
)

if TYPE_CHECKING:
    from embedhub.model import EmbeddingModel


#: images decoding ahead of the model, per worker process
DECODE_AHEAD = 64
#: bytes the decode pipeline may hold at once (image files read and not yet decoded, decoded pixels not yet
#: encoded); a single larger image still passes alone
DECODE_BYTES = 512 << 20


def run_local(
    model: EmbeddingModel,
    pending: list[Chunk],
    done: Callable[[Chunk, list, np.ndarray, list], None],
    *,
    reading: dict[str, Any],
    encode: dict[str, Any],
    bar: Any,
    workers: int | None = None,
) -> None:
    """Embed ``pending`` chunks with ``model`` in this process, calling ``done(chunk, ids, emb, errors)``
    per chunk. The next chunk is read (and its images decoded in ``workers`` processes) while this one
    encodes; texts go through ``encode`` in the windows it would use itself, so results equal one call."""
    images = bool(pending) and pending[0].modality == "image"
    pool = None
    if images:
        workers = workers or max(1, min(8, (os.cpu_count() or 2) - 1))
        pool = _decode_pool(workers)
    feed = _Feed(pending, reading, pool, ahead=DECODE_AHEAD * (workers or 1), decoding=2 * (workers or 1))
    size = encode["batch_size"]
    # texts: the windows encode uses itself (so the batches equal one call's); images: a few batches, encoded
    # as they arrive from the workers while the next ones decode
    window = size * 4 if images else max(1, -(-TEXT_WINDOW // size)) * size
    try:
        for chunk, rows, decoded in feed:
            items = decoded() if decoded is not None else zip(rows.ids, rows.items)
            ids, emb, errors = _encode_rows(model, rows, items, images=images, window=window, encode=encode, bar=bar)
            done(chunk, ids, emb, errors)
    finally:
        feed.close()
        if pool is not None:
            pool.terminate()


def _decode_pool(workers: int) -> Any:
    """``workers`` spawned processes for :func:`decode_image`, all started here, before any work.

    They are started without the preparation data that makes a spawned child re-run the parent's
    ``__main__`` script: decoding needs only embedhub, so a script that calls :func:`embed_corpus` at
    top level (no ``if __name__ == "__main__":`` guard) works, and is not run again in each worker.
    """
    import multiprocessing
    import types

    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__ / __spec__: nothing to re-import
    try:
        return multiprocessing.get_context("spawn").Pool(workers)
    finally:
        sys.modules["__main__"] = main


def _encode_rows(model: EmbeddingModel, rows: ChunkRows, items: Iterator[tuple[Any, Any]], *, images: bool,
                 window: int, encode: dict[str, Any], bar: Any) -> tuple[list[Any], np.ndarray, list[tuple[Any, str]]]:
    """One chunk's ids, vectors and errors from ``(id, item)`` pairs; ``window`` rows per ``encode`` call, as
    the items arrive."""
    errors = list(rows.errors)
    ids: list[Any] = []
    parts: list[np.ndarray] = []
    batch: list[Any] = []

    def flush() -> None:
        parts.append(model.encode(batch, show_progress_bar=False, **encode))
        bar.update(len(batch))
        batch.clear()

    for row_id, item in items:
        if images and isinstance(item, str):  # an image that did not decode: the reason
            errors.append((row_id, item))
            continue
        ids.append(row_id)
        batch.append(item)
        if len(batch) == window:
            flush()
    if batch:
        flush()
    emb = np.concatenate(parts) if parts else empty_rows(model, encode)
    return ids, emb, errors


class _InFlight:
    """What the decode pipeline holds at once: at most ``items`` images submitted and not yet encoded, at most
    ``decoding`` of them not yet decoded (each worker holds one), and at most ``limit`` bytes in all (file
    bytes until an image decodes, then its pixels); one image always passes, however large."""

    def __init__(self, items: int, decoding: int, limit: int):
        self.items, self.decoding, self.limit = items, decoding, limit
        self.count = self.pending = self.bytes = 0
        self.cond = threading.Condition()

    def take(self, size: int, stop: threading.Event) -> bool:
        with self.cond:
            while self.count and (self.count >= self.items or self.pending >= self.decoding
                                  or self.bytes + size > self.limit):
                if stop.is_set():
                    return False
                self.cond.wait(0.1)
            self.count, self.pending, self.bytes = self.count + 1, self.pending + 1, self.bytes + size
            return True

    def decoded(self, before: int, after: int) -> None:
        with self.cond:
            self.pending -= 1
            self.bytes += after - before
            self.cond.notify_all()

    def release(self, size: int) -> None:
        with self.cond:
            self.count -= 1
            self.bytes -= size
            self.cond.notify_all()


class _Decoding:
    """One image in the pool: its result and the bytes it is charged while in flight."""

    def __init__(self, budget: _InFlight, size: int):
        self.budget, self.size, self.ready = budget, size, threading.Event()
        self.value: Any = None

    def finish(self, value: Any) -> None:
        after = value.nbytes if isinstance(value, np.ndarray) else 0
        self.budget.decoded(self.size, after)
        self.size, self.value = after, value
        self.ready.set()

    def fail(self, exc: BaseException) -> None:
        self.finish(JobError(f"an image decode worker failed ({type(exc).__name__}: {exc})"))


class _Feed:
    """Chunks read one ahead in a thread; their images decode in ``pool`` within the bounds of :class:`_InFlight`."""

    _END = object()

    def __init__(self, chunks: list[Chunk], reading: dict[str, Any], pool: Any, ahead: int, decoding: int):
        self.chunks, self.reading, self.pool = chunks, reading, pool
        self.workers = list(getattr(pool, "_pool", []))  # the processes started with the pool
        self.budget = _InFlight(ahead, decoding, DECODE_BYTES)
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._produce, daemon=True, name="embedhub-read")
        self.thread.start()

    def _produce(self) -> None:
        try:
            for chunk in self.chunks:
                rows = read_chunk(chunk, **self.reading)
                futures: queue.Queue | None = queue.Queue() if self.pool is not None else None
                self.put((chunk, rows, futures))
                if futures is not None:
                    with ItemReader(chunk) as reader:
                        for row_id, item in zip(rows.ids, rows.items):
                            size = min(ItemReader.size(item), MAX_IMAGE_BYTES + 1)
                            if not self.budget.take(size, self.stop):
                                return
                            job = _Decoding(self.budget, size)
                            data = reader(item)  # a tar member's bytes, read only now
                            if isinstance(data, str):
                                job.finish(data)
                            else:
                                self.pool.apply_async(decode_image, (data,), callback=job.finish,
                                                      error_callback=job.fail)
                            futures.put((row_id, job))
                if self.stop.is_set():
                    return
            self.put(self._END)
        except BaseException as exc:  # raised again in the consumer
            self.put(exc)

    def put(self, value: Any) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(value, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[Chunk, ChunkRows, Callable[[], Iterator[Any]] | None]]:
        while True:
            value = self.queue.get()
            if value is self._END:
                return
            if isinstance(value, BaseException):
                raise value
            chunk, rows, futures = value
            yield chunk, rows, (None if futures is None else self._results(futures, len(rows.items)))

    def _results(self, futures: queue.Queue, n: int) -> Callable[[], Iterator[tuple[Any, Any]]]:
        def results() -> Iterator[tuple[Any, Any]]:
            for _ in range(n):
                while True:
                    try:
                        row_id, job = futures.get(timeout=0.5)
                        break
                    except queue.Empty:
                        if not self.thread.is_alive():  # the reader failed: its error is next in the queue
                            value = self.queue.get()
                            if isinstance(value, BaseException):
                                raise value from None
                            raise JobError("image reading stopped before the shard was read") from None
                while not job.ready.wait(0.5):
                    dead = [p for p in self.workers if p.exitcode is not None]
                    if dead:  # its task is lost with it: the pool would wait for it forever
                        raise JobError(f"an image decode worker died (exit code {dead[0].exitcode}; out of memory?) "
                                       "while decoding the image of row " f"{row_id!r}; run the job again to resume")
                value = job.value
                self.budget.release(job.size)
                if isinstance(value, BaseException):
                    raise value
                yield row_id, value

        return results

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
