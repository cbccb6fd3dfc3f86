"""A faiss vector index over SDK embeddings, saved next to the embeddings and the model's fingerprint.

A folder holds three files, written together through a staging folder (``index.json`` last):

- ``embeddings.parquet``: the vectors ``model.encode_document`` makes (L2-normalised for cosine models),
  item ids and inputs (text, or image path), with the model's fingerprint in the parquet metadata
  (``embedhub.write_embeddings``);
- ``index.faiss``: a flat faiss index over those vectors that ranks by the model's similarity
  (``embedhub.store.VectorIndex``: inner product over unit rows for cosine, over raw vectors for dot,
  L2 for euclidean, L1 for manhattan), read back with the fingerprint and ids of ``embeddings.parquet``;
- ``index.json``: the fingerprint, the similarity, the item count, ids and a digest of the items.

:meth:`VectorIndex.open` reuses a saved index only when its fingerprint equals ``model.fingerprint``,
the items are the same and the faiss vectors are the fingerprinted ones; otherwise it rebuilds. An
index answers :meth:`VectorIndex.query` only for the model whose fingerprint it holds.

>>> import embedhub
>>> model = embedhub.load("all-MiniLM-L6-v2")                                  # doctest: +SKIP
>>> texts = ["A man is playing a guitar.", "A cat sleeps on the sofa."]
>>> index = VectorIndex.open(index_folder("texts:example"), model, texts)      # doctest: +SKIP
>>> index.query(model, "someone plays music", k=1)                              # doctest: +SKIP
[[('0', 0.52...)]]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import embedhub
from embedhub.errors import require
from embedhub.store import VectorIndex as FingerprintedIndex
from embedhub.store import install_folder

from .._common import embedhub_home as cache_home

EMBEDDINGS = "embeddings.parquet"
FAISS_FILE = "index.faiss"
META = "index.json"
#: version of the ``index.json`` record this module writes and reads
INDEX_VERSION = 1
#: one ``(item id, score)`` per result; the score is the model's similarity (cosine, dot, minus a distance)
Hit = tuple[str, float]
#: ``reader(item id, image file)``: what is embedded for an image file (see :meth:`VectorIndex.build`)
Reader = Callable[[str, Path], Any]


class StaleIndexError(ValueError):
    """A saved index cannot serve the model and items at hand; ``reason`` says why (one line)."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"index {folder}: {reason}")
        self.folder = folder
        self.reason = reason


def index_folder(key: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of the index of a collection named ``key``: ``<root>/<16 hex of SHA-256(key)>``, with
    ``root`` defaulting to ``cache_home()/demo-index``.

    The model is not part of the key: opening the folder with another model rebuilds it in place.

    >>> index_folder("texts:wordnet", root="/tmp/idx")
    PosixPath('/tmp/idx/e33a05f0e8ca2493')
    """
    base = Path(root) if root is not None else cache_home() / "demo-index"
    return base / hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def items_digest(items: Sequence[str | Path], ids: Sequence[str]) -> str:
    """SHA-256 over the items: each id with its text, or its image path, size and modification time.

    An image file replaced under the same name changes its size or time and so the digest.
    """
    digest = hashlib.sha256()
    for item_id, item in zip(ids, items, strict=True):
        if isinstance(item, Path):
            st = os.lstat(item)  # a link is its own entry, never the file it points to
            part = f"image\0{item_id}\0{item}\0{st.st_size}\0{st.st_mtime_ns}"
        else:
            part = f"text\0{item_id}\0{item}"
        digest.update(part.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def _check_items(items: Sequence[str | Path], ids: Sequence[str] | None) -> tuple[list[str | Path], list[str]]:
    items = list(items)
    if not items:
        raise ValueError("an index needs at least one item; got none")
    for i, item in enumerate(items):
        if not isinstance(item, (str, Path)):
            raise TypeError(f"items[{i}] is a {type(item).__name__}; items are texts (str) or image files (Path)")
    if ids is None:
        ids = [str(item) if isinstance(item, Path) else str(i) for i, item in enumerate(items)]
    ids = [str(x) for x in ids]
    if len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids for {len(items)} items; give one id per item")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for i, x in enumerate(ids):
            if x in seen:
                raise ValueError(f"ids[{i}] = {x!r} repeats ids[{seen[x]}]; ids must be unique")
            seen[x] = i
    return items, ids


class VectorIndex:
    """Exact search over the embeddings of ``items`` with the model's similarity (``model.similarity_fn_name``):
    the ranking ``model.similarity`` gives.

    ``reused`` says whether :meth:`open` found the saved index usable; ``rebuilt_because`` why not.

    >>> index = VectorIndex.open("idx", model, ["a cat", "a dog"])   # doctest: +SKIP
    >>> index.search(model.encode(["kitten"]), k=1)                   # doctest: +SKIP
    [[('0', 0.71...)]]
    """

    def __init__(self, folder: Path, fingerprint: Any, ids: list[str], inputs: list[str], index: FingerprintedIndex):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.ids = ids
        self.inputs = inputs
        self.index = index
        self.reused = False
        self.rebuilt_because: str | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"VectorIndex({str(self.folder)!r}, items={len(self)}, fingerprint={self.fingerprint.id!r})"

    # ------------------------------------------------------------------ building and opening
    @classmethod
    def build(
        cls,
        folder: str | os.PathLike,
        model: embedhub.EmbeddingModel,
        items: Sequence[str | Path],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        reader: Reader | None = None,
    ) -> VectorIndex:
        """Embed ``items`` (texts as ``str``, image files as ``Path``) with ``model`` and save the index in
        ``folder``, replacing what was there. An unreadable item raises ``embedhub.InputError`` naming its id.

        ``reader(id, path)`` turns each image file into what is embedded (e.g. a bounded, format-checked
        decode); without it the model reads the files itself.
        """
        _faiss()
        folder = Path(folder)
        items, ids = _check_items(items, ids)
        digest = items_digest(items, ids)
        try:
            if reader is None:
                emb = model.encode_document(items, batch_size=batch_size, show_progress_bar=show_progress_bar)
            else:
                emb = _encode_read(model, items, ids, reader, batch_size, show_progress_bar)
        except embedhub.InputError as exc:
            where = f"item {ids[exc.index]!r}" if exc.index is not None else "an item"
            raise embedhub.InputError(f"{where} cannot be embedded: {exc.detail}", index=exc.index) from exc
        emb = np.ascontiguousarray(emb, dtype=np.float32).reshape(len(items), -1)
        fingerprint = model.fingerprint
        inputs = [str(x) for x in items]
        index = FingerprintedIndex.build(emb, fingerprint, ids=ids, similarity=model.similarity_fn_name,
                                         backend="faiss")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            embedhub.write_embeddings(staging / EMBEDDINGS, emb, fingerprint, ids=ids, inputs=inputs)
            index.save(staging, ids_file=None)  # ids and fingerprint: in EMBEDDINGS
            record = {
                "embedhub_demo_index": INDEX_VERSION,
                "fingerprint": fingerprint.to_dict(),
                "count": len(ids),
                "dim": int(emb.shape[1]),
                "faiss": index.kind,
                "similarity": index.similarity,
                "items_sha256": digest,
                "ids": ids,
            }
            (staging / META).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            install_folder(staging, folder, last=META)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return cls(folder, fingerprint, ids, inputs, index)

    @classmethod
    def load(
        cls, folder: str | os.PathLike, model: embedhub.EmbeddingModel, *, items_sha256: str | None = None
    ) -> VectorIndex:
        """The index saved in ``folder`` if it serves ``model`` (and items of digest ``items_sha256`` when
        given); otherwise :class:`StaleIndexError` with the reason. Vectors are read only after the
        fingerprint in ``index.json`` matched, and ``read_embeddings(..., expect=model.fingerprint)``
        checks them again; the faiss vectors must equal them exactly.
        """
        _faiss()
        folder = Path(folder)
        want = model.fingerprint
        meta_path = folder / META
        if not meta_path.is_file():
            raise StaleIndexError(folder, f"no saved index ({META} missing)")
        try:
            record = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StaleIndexError(folder, f"{META} is unreadable: {exc}") from None
        if not isinstance(record, dict) or record.get("embedhub_demo_index") != INDEX_VERSION:
            raise StaleIndexError(folder, f"{META} is not a version-{INDEX_VERSION} demo index record")
        saved = record.get("fingerprint")
        saved_id = saved.get("id") if isinstance(saved, dict) else None
        if saved_id != want.id:
            raise StaleIndexError(folder, f"saved for model fingerprint {saved_id}, the model's is {want.id}")
        if record.get("similarity") != model.similarity_fn_name:
            raise StaleIndexError(folder, f"saved for similarity {record.get('similarity')!r}, the model's is "
                                  f"{model.similarity_fn_name!r}")
        if items_sha256 is not None and record.get("items_sha256") != items_sha256:
            raise StaleIndexError(folder, "the items changed since the index was saved")
        try:
            stored = embedhub.read_embeddings(folder / EMBEDDINGS, expect=want)
        except (embedhub.FingerprintMismatchError, embedhub.EmbeddingsFileError) as exc:
            raise StaleIndexError(folder, f"{EMBEDDINGS}: {exc}") from None
        ids = [str(x) for x in stored.ids]
        if ids != record.get("ids") or record.get("count") != len(ids):
            raise StaleIndexError(folder, f"{EMBEDDINGS} holds other items than {META} lists")
        emb = stored.embeddings
        try:
            index = FingerprintedIndex.load(folder, similarity=model.similarity_fn_name, expect=want,
                                            ids_file=EMBEDDINGS)
        except ValueError as exc:
            raise StaleIndexError(folder, f"{FAISS_FILE}: {str(exc).splitlines()[0]}") from None
        if not np.array_equal(index.stored(), index.prepare(emb)):
            raise StaleIndexError(folder, f"{FAISS_FILE} holds other vectors than {EMBEDDINGS}")
        inputs = stored.inputs if stored.inputs is not None else ids
        return cls(folder, stored.fingerprint, ids, list(inputs), index)

    @classmethod
    def open(
        cls,
        folder: str | os.PathLike,
        model: embedhub.EmbeddingModel,
        items: Sequence[str | Path],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        reader: Reader | None = None,
        say: Callable[[str], None] | None = None,
    ) -> VectorIndex:
        """The saved index of ``items`` in ``folder`` when it was made by ``model`` (same fingerprint) from
        the same items; otherwise a new one built and saved there (``rebuilt_because`` says why).
        ``say(line)`` is told which of the two happens (before a build starts, as it may take a while).

        >>> VectorIndex.open(index_folder("texts:demo"), model, ["a cat", "a dog"]).reused  # doctest: +SKIP
        True
        """
        folder = Path(folder)
        items, ids = _check_items(items, ids)
        try:
            index = cls.load(folder, model, items_sha256=items_digest(items, ids))
        except StaleIndexError as exc:
            if say is not None:
                say(f"building the index of {len(items):,} items with {model.name} ({exc.reason.rstrip('.')}) "
                    f"in {folder}")
            index = cls.build(folder, model, items, ids=ids, batch_size=batch_size,
                              show_progress_bar=show_progress_bar, reader=reader)
            index.rebuilt_because = exc.reason
            return index
        index.reused = True
        if say is not None:
            say(f"loaded the saved index of {len(items):,} items from {folder}")
        return index

    # ------------------------------------------------------------------ searching
    def search(self, vectors: Any, k: int) -> list[list[Hit]]:
        """The ``k`` nearest items (by the model's similarity) of each row of ``vectors`` (``(N, D)`` or ``(D,)``,
        made by the model of :attr:`fingerprint`), best first, as ``(id, score)``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        q = q.reshape(1, -1) if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.index.dim:
            raise ValueError(f"query vectors of shape {np.shape(vectors)}; the index holds {self.index.dim}-d vectors")
        return self.index.hits(q, int(min(k, len(self))))

    def query(self, model: embedhub.EmbeddingModel, inputs: Any, k: int) -> list[list[Hit]]:
        """Embed ``inputs`` (texts ``str``, images ``Path``/``PIL.Image``) with ``model.encode_query`` (its query
        prompt, if any) and :meth:`search`.

        A model of another fingerprint than the index's raises ``embedhub.FingerprintMismatchError``
        before anything is embedded: the index is never queried across models.
        """
        model.fingerprint.check(self.fingerprint, what=f"index {self.folder}", expected="model", found="index")
        return self.search(model.encode_query(inputs if isinstance(inputs, list) else [inputs]), k)


def _encode_read(model: embedhub.EmbeddingModel, items: list[str | Path], ids: list[str], reader: Reader,
                 batch_size: int, show_progress_bar: bool | None) -> np.ndarray:
    """``model.encode`` over ``items`` with image files read by ``reader``, one batch in memory at a time."""
    from tqdm.auto import tqdm

    parts = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="embedding images", disable=not show_progress_bar, total=len(starts)):
        batch = [reader(i, x) if isinstance(x, Path) else x
                 for i, x in zip(ids[start:start + batch_size], items[start:start + batch_size])]
        try:
            parts.append(model.encode_document(batch, batch_size=batch_size, show_progress_bar=False))
        except embedhub.InputError as exc:
            at = None if exc.index is None else start + exc.index
            raise embedhub.InputError(exc.detail, index=at) from exc
    return np.concatenate([np.asarray(p, dtype=np.float32).reshape(len(p), -1) for p in parts])


def _faiss() -> Any:
    return require("faiss", "demo", "the retrieval demo's vector index")
