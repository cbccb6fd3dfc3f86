"""Batch embedding of large corpora (``embedhub embed``): sharded, resumable, local or on Ray Data.

An output folder holds ``shards/part-NNNNN.parquet`` (``id``, ``embedding``; the model's fingerprint and
the source rows in the schema metadata), ``manifest.json`` (the completed shards with their SHA-256,
rewritten atomically after each), ``errors.jsonl`` (rows that could not be embedded) and, when asked,
``index.faiss`` with ``index_ids.parquet`` (row ``i`` of the index is id ``i`` of that file).

>>> import embedhub
>>> result = embedhub.embed_corpus("all-MiniLM-L6-v2", "passages.parquet", "emb/")  # doctest: +SKIP
>>> embedhub.read_embeddings("emb/").embeddings.shape                                 # doctest: +SKIP
(1000000, 384)
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedhub.errors import CorpusError, FingerprintMismatchError, JobError, ModalityError, require
from embedhub.jobs.corpus import (
    Chunk,
    ChunkRows,
    ItemReader,
    Plan,
    count,
    decode_image,
    expand_input,
    modality_of,
    plan_corpus,
    read_chunk,
)
from embedhub.modules.batching import TEXT_WINDOW, check_positive_int
from embedhub.modules.inputs import MAX_IMAGE_BYTES
from embedhub.store.fingerprint import Fingerprint
from embedhub.store.job_folder import (
    ERRORS,
    INDEX,
    INDEX_IDS,
    LEDGER,
    LOCK,
    MANIFEST,
    MANIFEST_VERSION,
    SHARD_KEY,
    SHARDS,
    STAGING,
    Ledger,
    clear_staging,
    empty_rows,
    entry_kind,
    entry_problem,
    plain,
    put,
    read_manifest,
    shard_name,
    shard_problem,
)

if TYPE_CHECKING:
    from embedhub.model import EmbeddingModel

DEFAULT_SHARD_ROWS = {"text": 10_000, "image": 1_000}
#: images decoding ahead of the model, per worker process
DECODE_AHEAD = 64
#: bytes the decode pipeline may hold at once (image files read and not yet decoded, decoded pixels not yet
#: encoded); a single larger image still passes alone
DECODE_BYTES = 512 << 20


@dataclass(frozen=True)
class EmbedJobResult:
    """What :func:`embed_corpus` did: ``rows`` embedded in ``shards`` (``resumed`` of them by an earlier
    run), ``errors`` rows skipped (listed in ``errors_file``), ``seconds`` this run took."""

    output: Path
    fingerprint: Fingerprint
    rows: int
    shards: int
    resumed: int
    errors: int
    seconds: float
    errors_file: Path | None
    index: Path | None


def embed_corpus(
    model: str | os.PathLike | EmbeddingModel,
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    engine: Literal["local", "ray"] = "local",
    address: str | None = None,
    backend: str | None = None,
    device: str = "auto",
    revision: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    batch_size: int = 32,
    max_tokens: int | None = None,
    shard_rows: int | None = None,
    text_column: str = "text",
    id_column: str | None = None,
    column: int = 0,
    normalize: bool | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    truncate_dim: int | None = None,
    precision: str = "float32",
    index: Literal["faiss"] | None = None,
    on_error: Literal["skip", "fail"] = "skip",
    restart: bool = False,
    workers: int | None = None,
    actors: int | None = None,
    progress: bool = True,
) -> EmbedJobResult:
    """Embed a corpus into parquet shards under ``output``, resuming where an earlier run stopped.

    ``input``: any input :func:`embedhub.jobs.corpus.read_corpus` reads (``embedhub encode`` takes the same): a
    ``.txt`` file, a ``.jsonl`` or ``.parquet`` file with ``text_column`` (``"image"``: image paths), a
    ``.tsv``/``.csv`` file (its ``column``, 0-based), a folder tree of images (ids: relative paths), webdataset
    ``.tar`` shards (ids: sample keys), or a glob of such files; ids from ``id_column`` (``.jsonl``/``.parquet``),
    else row numbers. Rows are cut into shards of ``shard_rows`` (default 10,000 texts or 1,000
    images); each finished shard is recorded in the manifest, so a re-run skips it and never writes a
    row twice. An ``output`` of another model (fingerprint), input or shard size is refused unless
    ``restart=True``. Rows that cannot be embedded (a corrupt image, a null text) are skipped and listed
    in ``errors.jsonl`` (``on_error="fail"`` stops at the first, naming it).

    ``normalize``, ``prompt_name``, ``prompt``, ``truncate_dim`` and ``precision`` are ``encode``'s (the
    vectors are those ``model.encode(texts, ...)`` returns, e.g. ``prompt_name="document"`` for a model with
    document prompts, or ``precision="ubinary"`` for packed bits); the fingerprint records them, so a resumed
    job with another truncation or precision is refused. ``index="faiss"`` builds a flat index with the model's
    similarity (inner product, L2 or L1; Hamming distance for binary vectors).

    ``engine="local"`` runs in this process (images decode in ``workers`` processes, a bounded number
    ahead of the model); ``engine="ray"`` runs Ray Data: read tasks, then ``actors`` model replicas (one
    GPU each when the cluster has GPUs), on ``ray.init(address)``. ``model`` is a name for ``load``
    (``backend``, ``device``, ``revision``, ``dtype``, ``threads`` apply) or, locally, a loaded model.

    >>> embed_corpus("all-MiniLM-L6-v2", "docs/*.jsonl", "emb", id_column="doc_id", index="faiss")  # doctest: +SKIP
    EmbedJobResult(output=PosixPath('emb'), ..., rows=20000, shards=2, ...)
    """
    start = time.perf_counter()
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if index not in (None, "faiss"):
        raise ValueError(f"index must be None or 'faiss', got {index!r}")
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    from embedhub.store.index import check_precision

    precision = check_precision(precision)
    if precision in ("int8", "uint8"):
        raise ValueError(f"precision={precision!r} calibrates each dimension's range on the vectors of one encode "
                         "call, so the shards of a job would hold codes of different scales; embed in float32 (or "
                         "binary/ubinary) and quantise once with embedhub.quantize_embeddings(..., ranges=...)")
    truncate_dim = check_positive_int("truncate_dim", truncate_dim, optional=True)
    if normalize is not None and not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True, False or None, got {normalize!r}")
    batch_size = check_positive_int("batch_size", batch_size)
    max_tokens = check_positive_int("max_tokens", max_tokens, optional=True)
    shard_rows = check_positive_int("shard_rows", shard_rows, optional=True)
    workers = check_positive_int("workers", workers, optional=True)
    actors = check_positive_int("actors", actors, optional=True)
    if engine == "ray":
        require("ray.data", "ray", "the ray engine")
        if not isinstance(model, (str, os.PathLike)):
            raise TypeError("engine='ray' loads the model in each actor: pass its name or folder, not a loaded model")
    if index == "faiss":
        require("faiss", "faiss", "building a faiss index")
    out = Path(output)
    from embedhub.store.embeddings import utf8_path_problem

    problem = utf8_path_problem(out, "output folder")
    if problem:
        raise JobError(problem)
    kind, _ = expand_input(input)
    modality = modality_of(kind, text_column)
    shard_rows = shard_rows or DEFAULT_SHARD_ROWS[modality]
    load_args = {"revision": revision, "backend": backend, "dtype": dtype, "threads": threads}
    name: str | None = None
    if isinstance(model, (str, os.PathLike)):
        from embedhub.loader import load

        name = os.fspath(model)
        if Path(name).is_dir():  # actors may run elsewhere: a folder is named absolutely
            name = str(Path(name).resolve())
        loaded = load(name, device="cpu" if engine == "ray" else device, **load_args)
    else:
        loaded = model
    if modality not in loaded.modalities:
        raise ModalityError(f"{input} holds {modality}s, but {loaded.name} embeds only "
                            f"{' and '.join(loaded.modalities)}")
    from embedhub.store.embeddings import encode_fingerprint

    options = {"normalize": normalize, "prompt_name": prompt_name, "prompt": prompt, "truncate_dim": truncate_dim,
               "precision": precision}
    fingerprint = encode_fingerprint(loaded, **options)
    with _Job(out, fingerprint, restart=restart, similarity=similarity_of(loaded)) as job:
        plan = plan_corpus(input, shard_rows=shard_rows, text_column=text_column, id_column=id_column, column=column)
        settings = {"input": os.fspath(input), "shard_rows": shard_rows, "text_column": text_column,
                    "id_column": id_column, "modality": plan.modality}
        if kind == "table":  # which column of a .tsv/.csv file
            settings["column"] = column
        if fingerprint.role is not None:  # not part of the fingerprint's id, but one job's rows share one prompt
            settings["prompt_role"] = fingerprint.role
        job.start(plan, settings)
        pending = job.pending()
        resumed = len(plan.chunks) - len(pending)
        if resumed:
            _note(f"{out}: {resumed} of {len(plan.chunks)} shards done by an earlier run; {len(pending)} to go")
        encode = dict(batch_size=batch_size, max_tokens=max_tokens, **encode_options(options))
        reading = dict(text_column=text_column, id_column=id_column, column=column)
        total = sum(c.rows for c in pending)
        bar = _bar(total, plan.modality, progress)
        try:
            def done(chunk: Chunk, ids: list, emb: np.ndarray, errors: list) -> None:
                if errors and on_error == "fail":
                    row_id, reason = errors[0]
                    raise CorpusError(f"{chunk.source}: row {row_id!r} cannot be embedded: {reason} "
                                      f"({len(errors)} such rows in shard {chunk.index}; on_error='skip' lists them "
                                      f"in {ERRORS} instead)", path=chunk.source, ids=[row_id])
                job.complete(chunk, ids, emb, errors)
                bar.update(len(errors))

            if engine == "local":
                if threads and loaded.backend == "torch":  # ONNX Runtime got its threads at load
                    import torch

                    torch.set_num_threads(threads)
                run_local(loaded, pending, done, reading=reading, encode=encode, workers=workers, bar=bar)
            else:
                from embedhub.jobs.ray_engine import run_ray

                del loaded
                run_ray(name, load_args, device, fingerprint, pending, done, reading=reading, encode=encode,
                        address=address, actors=actors, threads=threads, bar=bar)
        finally:
            bar.close()
        return job.finish(index, resumed=resumed, seconds=time.perf_counter() - start)


def similarity_of(model: Any) -> str:
    """The similarity function ``model`` ranks with (``model.similarity_fn_name``; cosine for a model without one)."""
    return str(getattr(model, "similarity_fn_name", None) or "cosine")


def encode_options(options: dict[str, Any]) -> dict[str, Any]:
    """``encode``'s keywords for ``options``, leaving out those at their defaults.

    >>> encode_options({"normalize": None, "truncate_dim": 64, "precision": "float32"})
    {'truncate_dim': 64}
    """
    defaults = {"normalize": None, "prompt_name": None, "prompt": None, "truncate_dim": None, "precision": "float32"}
    return {k: v for k, v in options.items() if v != defaults.get(k, object())}


def _note(message: str) -> None:
    print(f"embedhub: {message}", file=sys.stderr)


def _bar(total: int, modality: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"embedding {modality}s", unit="row", unit_scale=True, disable=not progress,
                smoothing=0.1)


# ---------------------------------------------------------------------------------------------- local engine
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


class _Job:
    """An output folder: its ledger, lock, manifest, shard files, errors file and index."""

    def __init__(self, out: Path, fingerprint: Fingerprint, *, restart: bool, similarity: str = "cosine"):
        self.out, self.fingerprint, self.restart = out, fingerprint, restart
        #: the model's similarity function: the metric of the index
        self.similarity = similarity
        self.manifest: dict[str, Any] = {}
        self.ledger = Ledger(out)
        self._lock: Any = None

    # -- lock: one job per folder at a time (released by the OS if the process dies)
    def __enter__(self) -> _Job:
        import fcntl

        if self.out.exists() and not self.out.is_dir():
            raise JobError(f"output {self.out} is a file; expected a folder (new, empty, or of an earlier run)")
        self._adopt()
        self.ledger.record(LOCK, STAGING)
        try:  # never through a link
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JobError(f"output {self.out}: cannot open its lock file {LOCK} ({exc.strerror}; a link?)") from None
        self._lock = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise JobError(f"output {self.out} is in use by another running job") from None
        try:
            self._open_manifest()
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.close()

    def _adopt(self) -> None:
        """Never write among a user's files: the folder must be new, empty, or a job's holding only what the job
        wrote (its ledger says which). A folder without a ledger is never a job's, whatever it holds (a copied
        manifest does not make a user's files the job's to delete)."""
        if not self.out.is_dir():
            self.out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in self.out.iterdir())
        if not names:  # empty: no entry at all
            self.ledger.create({STAGING}, new=True)
            return
        if LEDGER not in names:
            raise JobError(f"output {self.out} is not an embedhub embed folder (it holds "
                           f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); give a new or empty folder "
                           f"(a job's folder holds its {LEDGER} ledger)")
        try:
            self.ledger.load()
        except JobError as exc:
            raise JobError(f"output {self.out} is not usable: {exc}; give a new or empty folder") from None
        self._check_foreign(names)

    def _check_foreign(self, names: list[str]) -> None:
        """A :class:`JobError` naming the files embedhub did not write here (nothing is touched)."""
        owned = self.ledger.names
        others = [n for n in names if n != LEDGER and n not in owned]
        for folder in (SHARDS, STAGING):
            kind = entry_kind(self.out / folder)
            if kind not in (None, "folder"):
                others.append(f"{folder} (a {kind}, not a folder embedhub made)")
        if entry_kind(self.out / SHARDS) == "folder" and SHARDS in owned:
            others += [f"{SHARDS}/{p.name}" for p in sorted((self.out / SHARDS).iterdir())
                       if f"{SHARDS}/{p.name}" not in owned]
        if others:
            if not owned:
                raise JobError(f"output {self.out} is not an embedhub embed folder (it holds "
                               f"{', '.join(others[:5])}); give a new or empty folder")
            raise JobError(f"output {self.out} holds {count(len(others), 'file')} embedhub did not write "
                           f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}); move them out, or give "
                           "a new or empty folder")

    def _open_manifest(self) -> None:
        """An earlier run's manifest: refused if another model's (unless restarting, which clears the folder)."""
        self._check_foreign(sorted(p.name for p in self.out.iterdir()))
        manifest = self.out / MANIFEST
        if self.restart:
            self._clear()
            return
        if entry_kind(manifest) is None:
            return
        self.manifest = read_manifest(manifest, entries=False)
        try:
            stored = Fingerprint.from_dict(self.manifest["fingerprint"], path=manifest)
        except FingerprintMismatchError as exc:  # a malformed fingerprint record (ProvenanceError)
            raise JobError(f"{exc}; pass restart=True (--restart) to start over (it deletes only the files the "
                           "job wrote), or give another output folder") from None
        try:
            self.fingerprint.check(stored, what=str(self.out), expected="this job", found="folder")
        except FingerprintMismatchError as exc:
            raise type(exc)(f"{exc}. Pass restart=True (--restart) to delete its shards and start over, or give "
                            "another output folder") from None

    def _clear(self) -> None:
        """Delete what the ledger records (links themselves, never what they point to), and stale temporaries."""
        removed = 0
        for rel in sorted(self.ledger.names - {LOCK, SHARDS, STAGING}, reverse=True):
            if entry_kind(self.out / rel) in ("file", "link"):
                (self.out / rel).unlink()
                removed += 1
        clear_staging(self.out)
        if SHARDS in self.ledger.names and entry_kind(self.out / SHARDS) == "folder":
            try:
                (self.out / SHARDS).rmdir()
            except OSError:  # not empty: something appeared since the check; it stays
                pass
        self.ledger.create({n for n in self.ledger.names if entry_kind(self.out / n) is not None} | {LOCK, STAGING})
        self.manifest = {}
        if removed:
            _note(f"{self.out}: restarted (earlier shards deleted)")

    def start(self, plan: Plan, settings: dict[str, Any]) -> None:
        """Check an earlier run's settings against this one's; drop shards whose files are missing or changed.
        Every shard file the plan will write is recorded in the ledger first (a kill can leave any of them)."""
        self.plan = plan
        self.ledger.record(SHARDS, *(shard_name(c) for c in plan.chunks))
        if self.manifest:
            before = self.manifest["settings"]
            # the same files named another way (a relative path, another glob) are the same input
            changed = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items()
                       if before.get(k) != v and k != "input"]
            if not changed and self.manifest["digest"] != plan.digest:
                changed = ["the input files changed (names, sizes or modification times) since that run"]
                if before.get("input") != settings["input"]:
                    changed.insert(0, f"input: {before.get('input')!r} then, {settings['input']!r} now")
            if changed:
                raise JobError(f"output {self.out} holds a job over another input or with other settings "
                               f"({'; '.join(changed)}); pass restart=True (--restart) to start over, or give "
                               "another output folder")
            for key, value in (("shards_total", len(plan.chunks)), ("rows", plan.rows)):
                if self.manifest[key] != value:
                    _note(f"{self.out}: the manifest records {key} {self.manifest[key]}, the input has {value}; "
                          "corrected")
                    self.manifest[key] = value
            chunks = {str(c.index): c for c in plan.chunks}
            for key, entry in list(self.manifest["shards"].items()):
                chunk = chunks.get(key)
                problem = entry_problem(key, entry, len(plan.chunks))
                if problem:
                    problem = f"its manifest entry is wrong: {problem}"
                elif chunk is None:
                    problem = "the input has no such shard"
                elif {k: entry[k] for k in ("source", "start", "stop")} != chunk.describe():
                    problem = "the manifest records other rows than the input's shard"
                else:
                    problem = shard_problem(self.out / entry["file"], entry)
                if problem:
                    label = key if key.isascii() and key.isdigit() and len(key) < 20 else f"{key!r:.40}"
                    _note(f"{self.out}: shard {label} will be redone: {problem}")
                    del self.manifest["shards"][key]
            self.manifest["complete"] = False
        else:
            self.manifest = {
                "embedhub_embed_job": MANIFEST_VERSION,
                "fingerprint": self.fingerprint.to_dict(),
                "settings": settings,
                "digest": plan.digest,
                "rows": plan.rows,
                "shards_total": len(plan.chunks),
                "shards": {},
                "complete": False,
            }
        clear_staging(self.out)  # what a run killed mid-write left
        self._save()

    def pending(self) -> list[Chunk]:
        return [c for c in self.plan.chunks if str(c.index) not in self.manifest["shards"]]

    def complete(self, chunk: Chunk, ids: list, emb: np.ndarray, errors: list[tuple[Any, str]]) -> None:
        """Write ``chunk``'s shard file, then record it in the manifest (in that order)."""
        from embedhub._io.hashing import sha256_file
        from embedhub.store.embeddings import write_embeddings

        rel = shard_name(chunk)
        self.ledger.record(SHARDS, rel)
        meta = dict(chunk.describe(), shard=chunk.index, errors=len(errors))
        staged = self.out / STAGING / Path(rel).name
        write_embeddings(staged, emb, self.fingerprint, ids=ids, metadata={SHARD_KEY: json.dumps(meta)})
        (self.out / SHARDS).mkdir(exist_ok=True)
        os.replace(staged, self.out / rel)
        entry = dict(meta, file=rel, rows=len(emb), sha256=sha256_file(self.out / rel),
                     error_rows=[[plain(i), r] for i, r in errors])
        self.manifest["shards"][str(chunk.index)] = entry
        self._save()

    def finish(self, index: str | None, *, resumed: int, seconds: float) -> EmbedJobResult:
        shards = [self.manifest["shards"][str(c.index)] for c in self.plan.chunks]
        errors = [{"id": i, "reason": r, "shard": e["shard"], "source": e["source"]}
                  for e in shards for i, r in e["error_rows"]]
        errors_file = None
        if errors:
            self.ledger.record(ERRORS)
            errors_file = put(self.out, ERRORS, "".join(json.dumps(e) + "\n" for e in errors))
            _note(f"{len(errors)} rows could not be embedded; listed in {errors_file}")
        elif ERRORS in self.ledger.names and entry_kind(self.out / ERRORS) in ("file", "link"):
            (self.out / ERRORS).unlink()
        index_path = None
        if index == "faiss":
            index_path = self._build_index(shards)
        self.manifest["complete"] = True
        self._save()
        rows = sum(e["rows"] for e in shards)
        return EmbedJobResult(self.out, self.fingerprint, rows, len(shards), resumed, len(errors), seconds,
                              errors_file, index_path)

    def _build_index(self, shards: list[dict[str, Any]]) -> Path:
        """A flat faiss index over every shard, in shard order, searching with the model's similarity (inner
        product for dot and, over unit rows, cosine; L2 for euclidean; L1 for manhattan) or, for binary vectors,
        by Hamming distance, saved as :data:`INDEX` and :data:`INDEX_IDS` (:class:`embedhub.store.VectorIndex`)."""
        from embedhub.store.embeddings import read_embeddings_file
        from embedhub.store.index import VectorIndex

        self.ledger.record(INDEX, INDEX_IDS)
        idx = VectorIndex(self.fingerprint.dim, similarity=self.similarity, precision=self.fingerprint.precision,
                          backend="faiss", fingerprint=self.fingerprint)
        for entry in shards:
            stored = read_embeddings_file(self.out / entry["file"], expect=self.fingerprint)
            idx.add(stored.embeddings, ids=stored.ids)
        idx.save(self.out, ids_file=INDEX_IDS, put=put)  # the id of index row i, with the vectors' fingerprint
        self.manifest["index"] = {"file": INDEX, "ids": INDEX_IDS, "rows": len(idx), "kind": idx.kind,
                                  "similarity": self.similarity, "precision": self.fingerprint.precision}
        return self.out / INDEX

    def _save(self) -> None:
        self.ledger.record(MANIFEST)
        put(self.out, MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
