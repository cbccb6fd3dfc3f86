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

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from embedhub.errors import CorpusError, JobError, ModalityError, require
from embedhub.jobs.corpus import (
    Chunk,
    expand_input,
    modality_of,
    plan_corpus,
)
from embedhub.modules.batching import check_positive_int
from embedhub.store.job_folder import (
    ERRORS,
)

if TYPE_CHECKING:
    from embedhub.model import EmbeddingModel
from embedhub.jobs.job import EmbedJobResult, Job, note, progress_bar
from embedhub.jobs.local import run_local

DEFAULT_SHARD_ROWS = {"text": 10_000, "image": 1_000}


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
    with Job(out, fingerprint, restart=restart, similarity=similarity_of(loaded)) as job:
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
            note(f"{out}: {resumed} of {len(plan.chunks)} shards done by an earlier run; {len(pending)} to go")
        encode = dict(batch_size=batch_size, max_tokens=max_tokens, **encode_options(options))
        reading = dict(text_column=text_column, id_column=id_column, column=column)
        total = sum(c.rows for c in pending)
        bar = progress_bar(total, plan.modality, progress)
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
