"""The Ray Data engine of :func:`embedhub.embed_corpus`.

One dataset row per pending chunk; ``flat_map`` reads each chunk into one row per item (images decoded
there, in CPU tasks spread over the cluster); ``map_batches`` with an actor pool embeds them (one model
per actor, a GPU per actor when the cluster has GPUs); the driver gathers each chunk's rows and hands the
finished chunk to the job, which writes the same shard files and manifest as the local engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from embedhub.errors import JobError
from embedhub.jobs.corpus import Chunk, ItemReader, decode_image, read_chunk
from embedhub.store.fingerprint import Fingerprint
from embedhub.store.job_folder import empty_rows, plain

#: rows per actor call: a few model batches, so the actor keeps its sorted-by-length batching
ROWS_PER_CALL = 4


def _chunk_row(chunk: Chunk) -> dict[str, Any]:
    return {"index": chunk.index, "kind": chunk.kind, "source": chunk.source, "start": chunk.start,
            "stop": chunk.stop, "first_id": chunk.first_id, "offset": chunk.offset, "paths": list(chunk.paths),
            "line": chunk.line, "modality": chunk.modality}


def _read_rows(row: dict[str, Any], *, reading: dict[str, Any]) -> list[dict[str, Any]]:
    """One chunk -> one row per item: ``shard``, ``pos``, ``id``, ``text`` or ``image``, ``error`` ("" if none)."""
    chunk = Chunk(int(row["index"]), row["kind"], row["source"], int(row["start"]), int(row["stop"]),
                  int(row["first_id"]), int(row["offset"]), tuple(row["paths"]), int(row["line"]), row["modality"])
    rows = read_chunk(chunk, **reading)
    image = chunk.modality == "image"
    column, blank = ("image", np.zeros((1, 1, 3), np.uint8)) if image else ("text", "")
    # rows that failed to read first, then the items in order: the order the local engine lists errors in
    out = [{"shard": chunk.index, "id": row_id, column: blank, "error": reason} for row_id, reason in rows.errors]
    with ItemReader(chunk) as reader:  # tar members are read here, one at a time
        for row_id, item in zip(rows.ids, rows.items):
            value = item
            if image:
                data = reader(item)
                value = data if isinstance(data, str) else decode_image(data)
            error = value if isinstance(value, str) and image else ""
            out.append({"shard": chunk.index, "id": row_id, column: blank if error else value, "error": error})
    for pos, r in enumerate(out):
        r["pos"] = pos
    return out


class _Encoder:
    """One model replica (a Ray actor): embeds the rows without an error, returns every row's vector."""

    def __init__(self, name: str, load_args: dict[str, Any], device: str, fingerprint: dict[str, Any],
                 encode: dict[str, Any], threads: int | None):
        import torch

        from embedhub.loader import load

        if threads:
            torch.set_num_threads(threads)
        self.model = load(name, device=device, **load_args)
        from embedhub.store.embeddings import encode_fingerprint

        expected = Fingerprint.from_dict(fingerprint)
        options = {k: encode.get(k) for k in ("normalize", "prompt_name", "prompt", "truncate_dim")}
        found = encode_fingerprint(self.model, precision=encode.get("precision", "float32"), **options)
        expected.check(found, what=f"the model loaded by a Ray actor ({name})", expected="driver", found="actor")
        self.encode = encode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = "image" if "image" in batch else "text"
        ok = np.flatnonzero(batch["error"] == "")
        emb = empty_rows(self.model, self.encode, len(batch["error"]))
        if ok.size:
            items = [batch[column][i] for i in ok]
            emb[ok] = self.model.encode(items, show_progress_bar=False, **self.encode)
        return {"shard": batch["shard"], "pos": batch["pos"], "id": batch["id"], "error": batch["error"],
                "embedding": emb}


def run_ray(
    name: str,
    load_args: dict[str, Any],
    device: str,
    fingerprint: Fingerprint,
    pending: list[Chunk],
    done: Callable[[Chunk, list, np.ndarray, list], None],
    *,
    reading: dict[str, Any],
    encode: dict[str, Any],
    address: str | None = None,
    actors: int | None = None,
    bar: Any,
    threads: int | None = None,
) -> None:
    """Embed ``pending`` on Ray Data, calling ``done(chunk, ids, emb, errors)`` as each chunk completes."""
    import os

    import ray

    if not pending:
        return
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # the Ray processes started here log errors only
        # a new Ray instance on this machine unless an address is named (RAY_ADDRESS counts): never a cluster
        # that `ray start` once left in /tmp/ray, which ray.init() would otherwise join (or fail to, if it is gone)
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n = actors or max(gpus, 1)
        per_actor_cpus = 1
        actor_device = "cuda" if gpus else ("cpu" if device == "auto" else device)
        ds = ray.data.from_items([_chunk_row(c) for c in pending], override_num_blocks=len(pending))
        # reads take no CPU slot: the actors hold them all on a CPU-only machine, and reading must not wait on
        # them; at most one read per actor, plus one, runs at a time
        ds = ds.flat_map(_read_rows, fn_kwargs={"reading": reading}, num_cpus=0,
                         compute=ray.data.TaskPoolStrategy(size=n + 1))
        ds = ds.map_batches(
            _Encoder,
            fn_constructor_kwargs={"name": name, "load_args": load_args, "device": actor_device,
                                   "fingerprint": fingerprint.to_dict(), "encode": encode,
                                   "threads": threads or per_actor_cpus},
            batch_size=encode["batch_size"] * ROWS_PER_CALL,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n),
            num_cpus=per_actor_cpus,
            num_gpus=1 if gpus else 0,
        )
        by_index = {c.index: c for c in pending}
        parts: dict[int, list[dict[str, np.ndarray]]] = {}
        seen: dict[int, int] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            shards = batch["shard"]
            for shard in np.unique(shards):
                rows = {k: v[shards == shard] for k, v in batch.items()}
                key = int(shard)
                parts.setdefault(key, []).append(rows)
                seen[key] = seen.get(key, 0) + len(rows["pos"])
                bar.update(int((rows["error"] == "").sum()))
                if seen[key] == by_index[key].rows:
                    _finish(by_index[key], parts.pop(key), done)
        if parts:
            missing = ", ".join(str(k) for k in sorted(parts))
            raise JobError(f"Ray returned part of shard(s) {missing} only; run the job again to redo them")
    finally:
        if started:
            ray.shutdown()


def _finish(chunk: Chunk, parts: list[dict[str, np.ndarray]], done: Callable) -> None:
    """A chunk's rows back in input order; errors apart."""
    cols = {k: np.concatenate([p[k] for p in parts]) for k in ("pos", "id", "error", "embedding")}
    order = np.argsort(cols["pos"], kind="stable")
    ok = [i for i in order if cols["error"][i] == ""]
    bad = [i for i in order if cols["error"][i] != ""]
    ids = [plain(cols["id"][i]) for i in ok]
    errors = [(plain(cols["id"][i]), str(cols["error"][i])) for i in bad]
    done(chunk, ids, np.ascontiguousarray(cols["embedding"][ok]), errors)
