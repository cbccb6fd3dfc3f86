"""Nearest-neighbour search with a model's own similarity: one fingerprinted index for every search embedhub does.

``embedhub search``, the ``embedhub embed --index faiss`` index and the retrieval demo all search through
:class:`VectorIndex` (``SearchIndex`` is its older name), so a ranking is always the one ``model.similarity``
gives, and an index knows the :class:`~embedhub.store.Fingerprint` of the vectors it holds:

======================= ============================================ ==========================================
model / precision       faiss index                                  score (higher is better)
======================= ============================================ ==========================================
``cosine``              ``IndexFlatIP`` over L2-normalised vectors   cosine similarity
``dot``                 ``IndexFlatIP`` over the raw vectors         dot product
``euclidean``           ``IndexFlatL2``                              minus the euclidean distance
``manhattan``           ``IndexFlat(d, METRIC_L1)``                  minus the manhattan distance
``binary`` / ``ubinary`` ``IndexBinaryFlat`` (Hamming distance)      minus the Hamming distance, or the rescored
                                                                     float score (see :meth:`VectorIndex.search`)
``int8`` / ``uint8``    the float index of the similarity, over the  the similarity of the codes
                        integer codes
======================= ============================================ ==========================================

Without faiss (or with ``backend="numpy"``) the same search runs exactly in numpy/torch, with the same
formulas as sentence-transformers' ``cos_sim`` / ``dot_score`` / ``euclidean_sim`` / ``manhattan_sim``;
ties rank the lower row first.

An index folder (:meth:`VectorIndex.save`, :meth:`VectorIndex.load`) holds ``index.faiss`` (the faiss index)
and ``index_ids.parquet`` (the id of row ``i`` in row ``i``, the fingerprint and the similarity in its
metadata); loading reads the fingerprint first and refuses another model's (``expect=``).

>>> import numpy as np
>>> index = VectorIndex(2, similarity="dot", backend="numpy")
>>> index.add(np.array([[1.0, 0.0], [3.0, 0.0]], dtype=np.float32), ids=["a", "b"])
>>> index.search(np.array([[1.0, 0.0]], dtype=np.float32), k=2)[1].tolist()
[[1, 0]]
>>> index.hits(np.array([[1.0, 0.0]], dtype=np.float32), k=1)
[[('b', 3.0)]]
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedhub._io.atomic import atomic_write
from embedhub.errors import EmbeddingsFileError, ProvenanceError
from embedhub.modules.quantize import PRECISION_DTYPES, PRECISIONS, check_precision, output_width
from embedhub.store.fingerprint import PARQUET_KEY, Fingerprint

#: the similarity functions of sentence-transformers' ``similarity_fn_name`` (as modules.similarity.SIMILARITY_FNS)
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
BINARY = ("binary", "ubinary")
#: candidates per hit retrieved by Hamming distance before float rescoring (``--rescore-multiplier``)
RESCORE_MULTIPLIER = 4
#: elements of the score (or XOR) block computed at once by the numpy backend
_BLOCK = 1 << 24
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

#: the files of an index folder: the faiss index, and the ids of its rows (with fingerprint and similarity)
FAISS_FILE = "index.faiss"
IDS_FILE = "index_ids.parquet"
#: the parquet metadata key of the index record (similarity, precision, rows) in the ids file
INDEX_KEY = b"embedhub.index"
INDEX_VERSION = 1
#: bytes a flat faiss file may hold beyond its rows (header and counts); larger files are refused unread
_FAISS_HEADER_MAX = 4096
#: bytes of the index record in the ids file's metadata
_RECORD_MAX = 1 << 16

Backend = Literal["auto", "faiss", "numpy"]
#: ``put(folder, name, write)``: write the file ``folder/name`` atomically (``write(tmp)`` fills a temporary path)
Put = Callable[[Path, str, Callable[[str], None]], Any]

__all__ = ["FAISS_FILE", "IDS_FILE", "PRECISIONS", "SIMILARITIES", "SearchIndex", "VectorIndex", "check_precision",
           "hamming", "pack_bits", "similarity_scores", "to_ubinary", "unpack_bits"]


def check_similarity(name: Any) -> str:
    """``name`` when it is a similarity embedhub searches with; a ``ValueError`` listing them otherwise."""
    if name not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {', '.join(map(repr, SIMILARITIES))}, got {name!r}")
    return str(name)


def stored_width(dim: int, precision: str) -> int:
    """Columns of the array ``encode(..., precision=precision)`` returns for ``dim``-wide vectors (binary
    precisions pack 8 dimensions a byte).

    >>> stored_width(384, "float32"), stored_width(384, "ubinary"), stored_width(20, "binary")
    (384, 48, 3)
    """
    return output_width(int(dim), check_precision(precision))


def stored_dtype(precision: str) -> np.dtype:
    """The numpy dtype of ``encode(..., precision=precision)``'s output (as sentence-transformers returns it).

    >>> stored_dtype("binary"), stored_dtype("uint8")
    (dtype('int8'), dtype('uint8'))
    """
    return np.dtype(PRECISION_DTYPES[check_precision(precision)])


def to_ubinary(codes: Any) -> np.ndarray:
    """Packed bits as ``uint8`` bytes: ``ubinary`` codes as they are, ``binary`` codes (sentence-transformers'
    ``packbits - 128`` as int8) shifted back, so both give the same Hamming distances.

    >>> to_ubinary(np.array([[-128, 127]], dtype=np.int8)).tolist()
    [[0, 255]]
    """
    arr = np.asarray(codes)
    if arr.dtype == np.int8:
        return np.ascontiguousarray(arr).view(np.uint8) ^ np.uint8(0x80)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    raise ValueError(f"packed binary codes must be int8 (precision 'binary') or uint8 ('ubinary'), got {arr.dtype}")


def pack_bits(vectors: Any) -> np.ndarray:
    """Float vectors -> ``ubinary`` codes: one bit per dimension, set where the value is > 0."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def unpack_bits(codes: Any, dim: int) -> np.ndarray:
    """Packed codes (``binary`` or ``ubinary``) -> float32 0/1 vectors of ``dim`` dimensions (padding bits cut)."""
    return np.unpackbits(to_ubinary(codes), axis=-1)[..., :dim].astype(np.float32)


def hamming(queries: Any, docs: Any) -> np.ndarray:
    """Exact Hamming distances ``(Q, N)`` (int32) between packed codes, computed in numpy.

    >>> hamming(np.array([[0b1011]], np.uint8), np.array([[0b0001], [0b1011]], np.uint8)).tolist()
    [[2, 0]]
    """
    q, d = to_ubinary(queries), to_ubinary(docs)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"packed codes of shapes {q.shape} and {d.shape} cannot be compared")
    out = np.empty((q.shape[0], d.shape[0]), dtype=np.int32)
    rows = max(1, _BLOCK // max(1, d.shape[0] * d.shape[1]))
    for start in range(0, q.shape[0], rows):
        block = np.bitwise_xor(q[start : start + rows, None, :], d[None, :, :])
        out[start : start + rows] = _POPCOUNT[block].sum(axis=-1, dtype=np.int32)
    return out


def similarity_scores(queries: Any, docs: Any, similarity: str = "cosine") -> np.ndarray:
    """The ``(Q, N)`` float32 scores of ``similarity``: ``model.similarity``'s numbers (sentence-transformers'
    ``cos_sim``, ``dot_score``, ``euclidean_sim``, ``manhattan_sim``).

    >>> similarity_scores(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]), "euclidean").tolist()
    [[-5.0]]
    """
    from embedhub.modules.similarity import similarity_matrix

    return similarity_matrix(queries, docs, check_similarity(similarity))


def _faiss(backend: Backend) -> Any:
    if backend == "numpy":
        return None
    try:
        import faiss
    except ImportError:
        if backend == "faiss":
            from embedhub.errors import require

            require("faiss", "faiss", "a faiss index")
        return None
    return faiss


def _top(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best columns of each row, best first; ties: the lower column first."""
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows.astype(np.int64)


class VectorIndex:
    """Exact nearest-neighbour search over vectors of one model, with its similarity and output precision,
    the ids of its rows and the fingerprint of its vectors.

    ``dim`` is the model's (or the truncated) width in floats; ``binary``/``ubinary`` vectors are added as
    packed codes of ``ceil(dim / 8)`` bytes, ``int8``/``uint8`` as codes of ``dim`` columns.
    ``backend="auto"`` uses faiss when it is installed (``kind`` names the faiss index), else numpy.
    ``fingerprint`` (the vectors' :class:`~embedhub.store.Fingerprint`) must agree with ``dim`` and
    ``precision``; :meth:`build` takes both from it. ``ids`` is the id of each row (``None``: row numbers).

    >>> index = VectorIndex(3, similarity="euclidean")
    >>> index.add(np.eye(3, dtype=np.float32))
    >>> scores, rows = index.search(np.array([[0.0, 0.9, 0.0]], dtype=np.float32), k=1)
    >>> rows.tolist(), round(float(scores[0, 0]), 3)
    ([[1]], -0.1)
    """

    def __init__(self, dim: int, *, similarity: str = "cosine", precision: str = "float32",
                 backend: Backend = "auto", fingerprint: Fingerprint | None = None):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if backend not in ("auto", "faiss", "numpy"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'numpy', got {backend!r}")
        self.dim = int(dim)
        self.similarity = check_similarity(similarity)
        self.precision = check_precision(precision)
        if fingerprint is not None:
            if not isinstance(fingerprint, Fingerprint):
                raise TypeError(f"fingerprint must be an embedhub Fingerprint, got {type(fingerprint).__name__}")
            if (fingerprint.dim, fingerprint.precision) != (self.dim, self.precision):
                raise ValueError(f"fingerprint {fingerprint.id} is of {fingerprint.dim}-dim {fingerprint.precision} "
                                 f"vectors; this index holds {self.dim}-dim {self.precision} ones")
        #: the fingerprint of the vectors (None: not known)
        self.fingerprint = fingerprint
        #: the id of each row (None: the row numbers)
        self.ids: list[Any] | None = None
        self._id_kind: str | None = None  # "str" or "int", once known
        self._seen: set[Any] = set()
        self.binary = self.precision in BINARY
        self.width = stored_width(self.dim, self.precision)
        self.faiss = _faiss(backend)
        self._parts: list[np.ndarray] = []  # the numpy backend's rows (a faiss index holds its own)
        self._cache: np.ndarray | None = None  # stored(), until the next add
        self.index: Any = self._new_faiss_index() if self.faiss is not None else None

    # ------------------------------------------------------------------ faiss
    def _new_faiss_index(self) -> Any:
        faiss = self.faiss
        if self.binary:
            return faiss.IndexBinaryFlat(8 * self.width)
        if self.similarity in ("cosine", "dot"):
            return faiss.IndexFlatIP(self.dim)
        if self.similarity == "euclidean":
            return faiss.IndexFlatL2(self.dim)
        return faiss.IndexFlat(self.dim, faiss.METRIC_L1)

    @property
    def kind(self) -> str:
        """The faiss index class (``"IndexFlatIP"``, ``"IndexFlatL2"``, ``"IndexFlatL1"``, ``"IndexBinaryFlat"``),
        or ``"numpy"``."""
        if self.index is None:
            return "numpy"
        if not self.binary and self.similarity == "manhattan":
            return "IndexFlatL1"
        return type(self.index).__name__

    def __len__(self) -> int:
        if self.index is not None:
            return int(self.index.ntotal)
        return sum(len(a) for a in self._parts)

    def __repr__(self) -> str:
        fp = f", fingerprint={self.fingerprint.id!r}" if self.fingerprint is not None else ""
        return (f"VectorIndex(dim={self.dim}, similarity={self.similarity!r}, precision={self.precision!r}, "
                f"kind={self.kind!r}, rows={len(self)}{fp})")

    @classmethod
    def build(cls, vectors: Any, fingerprint: Fingerprint, *, ids: Any = None, similarity: str = "cosine",
              backend: Backend = "auto") -> VectorIndex:
        """An index of ``vectors`` (what the model of ``fingerprint`` made: its width and precision) with the
        ids ``ids`` (``None``: row numbers), ranking by ``similarity`` (the model's ``similarity_fn_name``).

        >>> fp = Fingerprint("memory:0123456789abcdef", None, "embedhub", "torch", "fp32", "mean", True, 2)
        >>> VectorIndex.build(np.eye(2, dtype=np.float32), fp, ids=["x", "y"], backend="numpy").ids
        ['x', 'y']
        """
        if not isinstance(fingerprint, Fingerprint):
            raise TypeError(f"fingerprint must be an embedhub Fingerprint, got {type(fingerprint).__name__}")
        out = cls(fingerprint.dim, similarity=similarity, precision=fingerprint.precision, backend=backend,
                  fingerprint=fingerprint)
        out.add(vectors, ids=ids)
        return out

    # ------------------------------------------------------------------ adding
    def prepare(self, vectors: Any) -> np.ndarray:
        """What the index stores for ``vectors``: float32 (unit rows for cosine; integer codes as floats), or
        ``ubinary`` bytes for packed codes. Checked against the index's precision and width."""
        arr = np.asarray(vectors.detach().cpu().numpy() if hasattr(vectors, "detach") else vectors)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.width:
            raise ValueError(f"vectors of shape {arr.shape}; this {self.precision} index of a {self.dim}-dim model "
                             f"holds rows of {self.width} values")
        want = stored_dtype(self.precision)
        if self.precision != "float32" and arr.dtype != want:
            raise ValueError(f"{self.precision} vectors must be {want} (encode(..., precision={self.precision!r})), "
                             f"got {arr.dtype}")
        if self.precision == "float32" and not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"float32 vectors must be floats, got {arr.dtype}")
        if self.binary:
            return to_ubinary(arr)
        out = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(out).all():
            raise ValueError("vectors hold NaN or infinite values")
        if self.similarity == "cosine":
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1).astype(np.float32)
        return np.ascontiguousarray(out, dtype=np.float32)

    def add(self, vectors: Any, ids: Any = None) -> None:
        """Append rows (as :meth:`prepare` checks them); row ``i`` of all added is result row ``i``.

        ``ids`` (str or int, unique in the index, one per row) are given with every add or never."""
        arr = self.prepare(vectors)
        self._add_ids(ids, len(arr), len(self))
        self._cache = None
        if self.index is not None:
            self.index.add(arr)
        else:
            self._parts.append(arr)

    def _add_ids(self, ids: Any, n: int, before: int) -> None:
        """Record the ids of ``n`` rows added after ``before`` rows (checked: str or int, unique)."""
        if ids is None:
            if self.ids is not None and n:
                raise ValueError(f"this index has ids for its {before} rows; give ids for the {n} new ones too")
            return
        if self.ids is None and before:
            raise ValueError(f"this index holds {before} rows without ids; ids must come with every add")
        if isinstance(ids, np.ndarray) and ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer):
            new, kind = ids.tolist(), "int"
        else:
            new = list(ids)
            kinds = [_id_kind(x) for x in new]
            kind = kinds[0] if new else None
            bad = next((i for i, t in enumerate(kinds) if t is None or t != kind), None)
            if bad is not None:
                raise ValueError(f"ids[{bad}] = {new[bad]!r:.80} ({type(new[bad]).__name__}); ids are all str or "
                                 "all int")
            new = [str(x) for x in new] if kind == "str" else [int(x) for x in new]
        if len(new) != n:
            raise ValueError(f"{len(new)} ids for {n} rows; give one id per row")
        if not new:
            return
        if self._id_kind not in (None, kind):
            raise ValueError(f"{kind} ids for an index of {self._id_kind} ids; ids are all str or all int")
        fresh = set(new)
        if len(fresh) != len(new) or not self._seen.isdisjoint(fresh):
            seen = set(self._seen)
            for i, x in enumerate(new):
                if x in seen:
                    raise ValueError(f"ids[{i}] = {x!r:.80} is already in the index; ids must be unique")
                seen.add(x)
        self._seen |= fresh
        self._id_kind = kind
        if self.ids is None:
            self.ids = []
        self.ids.extend(new)

    def stored(self) -> np.ndarray:
        """Every stored row (as :meth:`prepare` made it: float32, or ``ubinary`` bytes), in order."""
        if self._cache is None:
            n = len(self)
            if self.index is None:
                self._cache = np.concatenate(self._parts) if self._parts else np.empty(
                    (0, self.width), np.uint8 if self.binary else np.float32)
                self._parts = [self._cache]
            elif self.binary:
                self._cache = self.faiss.vector_to_array(self.index.xb).reshape(n, self.width)
            else:
                self._cache = self.index.reconstruct_n(0, n) if n else np.empty((0, self.dim), np.float32)
        return self._cache

    # ------------------------------------------------------------------ searching
    def search(self, queries: Any, k: int, *, rescore_multiplier: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each query: ``(scores, rows)``, both ``(Q, min(k, len))``, best first.

        ``queries`` are float vectors of the model (``dim`` wide), or codes of the index's precision.
        Binary indexes quantise float queries (a bit per dimension > 0) and rank by Hamming distance (score:
        minus the distance); with ``rescore_multiplier`` the ``k * rescore_multiplier`` nearest by Hamming are
        rescored with the float query against the unpacked bits (score: their dot product), as
        sentence-transformers' quantisation guide does, which needs float queries.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if rescore_multiplier is not None and (isinstance(rescore_multiplier, bool) or not isinstance(
                rescore_multiplier, (int, np.integer)) or rescore_multiplier < 1):
            raise ValueError(f"rescore_multiplier must be a positive integer or None, got {rescore_multiplier!r}")
        q = np.asarray(queries.detach().cpu().numpy() if hasattr(queries, "detach") else queries)
        q = q.reshape(1, -1) if q.ndim == 1 else q
        k = int(min(k, len(self)))
        if k == 0:
            return np.empty((len(q), 0), np.float32), np.empty((len(q), 0), np.int64)
        if self.binary:
            return self._search_binary(q, k, rescore_multiplier)
        if rescore_multiplier is not None:
            raise ValueError(f"rescoring needs a binary index; this one holds {self.precision} vectors")
        if self.precision != "float32" and q.dtype != stored_dtype(self.precision):
            raise ValueError(f"queries of a {self.precision} index must be {self.precision} codes made with the "
                             f"documents' quantisation ranges, got {q.dtype}")
        prepared = self.prepare(q.astype(np.float32) if self.precision != "float32" else q)
        if self.index is None:
            return self._numpy_search(prepared, k)
        dist, rows = self._faiss_top(prepared, k)
        if self.similarity == "euclidean":
            scores = -np.sqrt(np.maximum(dist, 0))
        elif self.similarity == "manhattan":
            scores = -dist
        else:
            scores = dist
        return scores.astype(np.float32), rows.astype(np.int64)

    def _faiss_top(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's ``k`` nearest with ties as the numpy backend ranks them, the lower row first (faiss orders equal
        scores by its heap): rows tied with the ``k``-th are fetched too (doubling), then sorted by score and row."""
        n = len(self)
        wide = min(n, k + 1)
        while True:
            dist, rows = self.index.search(x, wide)
            if wide >= n or not (dist[:, wide - 1] == dist[:, k - 1]).any():
                break
            wide = min(n, 2 * wide)
        larger_better = not self.binary and self.similarity in ("cosine", "dot")
        order = np.lexsort((rows, -dist if larger_better else dist), axis=-1)[:, :k]
        return np.take_along_axis(dist, order, 1), np.take_along_axis(rows, order, 1)

    def hits(self, queries: Any, k: int, *, rescore_multiplier: int | None = None) -> list[list[tuple[Any, float]]]:
        """:meth:`search` as ``(id, score)`` pairs per query, best first (ids are row numbers without ``ids``)."""
        scores, rows = self.search(queries, k, rescore_multiplier=rescore_multiplier)
        ids = self.ids if self.ids is not None else range(len(self))
        return [[(ids[r], float(s)) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    def _numpy_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        docs = self.stored()
        sim = "dot" if self.similarity == "cosine" else self.similarity  # both sides are unit rows already
        out_s = np.empty((len(q), k), np.float32)
        out_r = np.empty((len(q), k), np.int64)
        rows = max(1, _BLOCK // max(1, len(docs)))
        for start in range(0, len(q), rows):
            s, r = _top(similarity_scores(q[start : start + rows], docs, sim), k)
            out_s[start : start + rows], out_r[start : start + rows] = s, r
        return out_s, out_r

    def _search_binary(self, q: np.ndarray, k: int, multiplier: int | None) -> tuple[np.ndarray, np.ndarray]:
        floats = np.issubdtype(q.dtype, np.floating)
        if floats:
            if q.shape[1] != self.dim:
                raise ValueError(f"float queries of width {q.shape[1]}; this index holds {self.dim}-dim vectors")
            codes = pack_bits(q)
        else:
            codes = self.prepare(q)
            if multiplier is not None:
                raise ValueError("rescoring needs float queries (encode them with precision='float32')")
        wide = int(min(len(self), k * multiplier)) if multiplier else k
        if self.index is not None:
            dist, rows = self._faiss_top(codes, wide)
            dist, rows = dist.astype(np.int32), rows.astype(np.int64)
        else:
            s, rows = _top(-hamming(codes, self.stored()).astype(np.float32), wide)
            dist = (-s).astype(np.int32)
        if not multiplier:
            return (-dist).astype(np.float32), rows
        bits = unpack_bits(self.stored()[rows.reshape(-1)], self.dim).reshape(len(q), wide, self.dim)
        rescored = np.einsum("qd,qkd->qk", q.astype(np.float32), bits)
        order = np.argsort(-rescored, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(rescored, order, 1).astype(np.float32), np.take_along_axis(rows, order, 1)

    # ------------------------------------------------------------------ files
    def _faiss_index(self) -> Any:
        """The faiss index of the rows (the numpy backend's rows copied into one)."""
        if self.index is not None:
            return self.index
        out = VectorIndex(self.dim, similarity=self.similarity, precision=self.precision, backend="faiss")
        if len(self):
            out.index.add(self.stored())
        return out.index

    def write_faiss(self, path: str | os.PathLike) -> None:
        """Write the rows as a faiss index file at ``path`` (``faiss.write_index``, or ``write_index_binary``)."""
        faiss = self.faiss or _faiss("faiss")
        index = self._faiss_index()
        if self.binary:
            faiss.write_index_binary(index, os.fspath(path))
        else:
            faiss.write_index(index, os.fspath(path))

    def save(self, folder: str | os.PathLike, *, ids_file: str | None = IDS_FILE, put: Put | None = None) -> Path:
        """Write the index folder: :data:`FAISS_FILE`, then ``ids_file`` (the id of each row, the fingerprint and
        the index record in its metadata; ``None``: the caller keeps ids and fingerprint in a file of its own).
        ``put(folder, name, write)`` writes each file atomically (default: :func:`~embedhub.store.atomic_write`).

        >>> index.save("emb/")   # doctest: +SKIP
        PosixPath('emb')
        """
        if self.fingerprint is None:
            raise ValueError("an index is saved with the fingerprint of its vectors; give fingerprint= (or build it "
                             "with VectorIndex.build)")
        folder = Path(folder)
        write: Put = put or (lambda f, name, w: atomic_write(f / name, w))
        write(folder, FAISS_FILE, self.write_faiss)
        if ids_file is None:
            return folder
        import pyarrow as pa
        import pyarrow.parquet as pq

        ids = self.ids if self.ids is not None else list(range(len(self)))
        kind = pa.string() if self._id_kind == "str" else pa.int64()
        record = {"embedhub_index": INDEX_VERSION, "similarity": self.similarity, "precision": self.precision,
                  "rows": len(self)}
        table = pa.table({"id": pa.array(ids, type=kind)}, metadata={
            PARQUET_KEY: self.fingerprint.to_json().encode(), INDEX_KEY: json.dumps(record).encode()})
        write(folder, ids_file, lambda tmp: pq.write_table(table, tmp))
        return folder

    @classmethod
    def read_faiss(cls, path: str | os.PathLike, dim: int, *, similarity: str = "cosine", precision: str = "float32",
                   fingerprint: Fingerprint | None = None, rows: int | None = None) -> VectorIndex:
        """The faiss index file at ``path``, checked to be the index of ``dim``, ``similarity`` and ``precision``
        (class, metric, width) and, with ``rows``, to hold that many rows (a larger file is refused unread);
        a ``ValueError`` says what differs."""
        out = cls(dim, similarity=similarity, precision=precision, backend="faiss", fingerprint=fingerprint)
        faiss, path = out.faiss, Path(path)
        if rows is not None:
            _regular(path, "faiss index", ValueError)
            limit = _FAISS_HEADER_MAX + rows * (out.width if out.binary else 4 * out.dim)
            if path.lstat().st_size > limit:
                raise ValueError(f"{path} is {path.lstat().st_size:,} bytes, more than a flat index of {rows:,} rows "
                                 f"of {dim} dims holds ({limit:,}); not this index's faiss file")
        try:
            index = (faiss.read_index_binary if out.binary else faiss.read_index)(os.fspath(path))
        except RuntimeError as exc:
            raise ValueError(f"{path} is not a readable faiss index: {str(exc).splitlines()[0]}") from None
        want = out.index
        same = type(index) is type(want) and index.d == want.d and getattr(index, "metric_type", None) == getattr(
            want, "metric_type", None)
        if not same:
            found = f"{type(index).__name__} of {index.d} dims"
            raise ValueError(f"{path} holds a {found}; expected the {out.kind} of {want.d} dims of a "
                             f"{similarity} model's {precision} vectors")
        if rows is not None and index.ntotal != rows:
            raise ValueError(f"{path} holds {index.ntotal:,} rows; its ids are {rows:,}")
        out.index = index
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int | None = None, *, similarity: str | None = None,
             precision: str | None = None, expect: Fingerprint | None = None,
             ids_file: str = IDS_FILE) -> VectorIndex:
        """The index saved in the folder ``path`` by :meth:`save` (or by ``embedhub embed --index faiss``).

        The fingerprint in ``ids_file`` is read first: with ``expect`` (the model's fingerprint) an index of
        another model's vectors raises :class:`~embedhub.errors.FingerprintMismatchError` before the vectors are
        read. ``similarity`` is the index record's; ``similarity=`` is needed only for a file without one (an
        id file written before the record was, an embeddings file of the caller's), and must agree with it.
        Only the ``id`` column is read, and a faiss file larger than its rows need is refused unread.

        ``path`` naming a faiss file instead is the older form: that file alone, with ``dim``, ``similarity``
        and ``precision`` given (:meth:`read_faiss`).

        >>> VectorIndex.load("emb/", expect=model.fingerprint).hits(model.encode(["a query"]), k=3)  # doctest: +SKIP
        """
        path = Path(path)
        if not path.is_dir():
            if dim is None:
                raise ValueError(f"{path} is not an index folder; a faiss file alone is read with its dim, "
                                 "similarity and precision (VectorIndex.load(path, dim, similarity=, precision=))")
            return cls.read_faiss(path, dim, similarity=similarity or "cosine", precision=precision or "float32",
                                  fingerprint=expect)
        fingerprint, record, ids, kind = _read_ids(path / ids_file)
        if expect is not None:
            expect.check(fingerprint, what=f"index {path}", expected="model", found="index")
        saved = record.get("similarity") if record else None
        if saved is not None and similarity is not None and saved != similarity:
            raise ValueError(f"index {path} ranks by {saved!r} similarity, not {similarity!r}")
        similarity = saved or similarity
        if similarity is None:
            raise ValueError(f"{path / ids_file} records no similarity; pass similarity= (an embed job's "
                             "manifest.json names it under index.similarity)")
        out = cls.read_faiss(path / FAISS_FILE, fingerprint.dim, similarity=similarity,
                             precision=fingerprint.precision, fingerprint=fingerprint, rows=len(ids))
        out._add_ids(np.asarray(ids, dtype=np.int64) if kind == "int" else ids, len(ids), 0)
        return out


#: the name this class had before it held ids and a fingerprint
SearchIndex = VectorIndex


def _id_kind(value: Any) -> str | None:
    """``"str"`` or ``"int"`` for a row id, None for anything else (a bool is not an int id)."""
    if isinstance(value, str):
        return "str"
    return "int" if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else None


def _regular(path: Path, what: str, error: type[Exception]) -> None:
    """Refuse anything at ``path`` but a regular file (a link is never followed)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: no {what} there") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: expected a regular {what} file, found {'a link' if stat.S_ISLNK(mode) else 'no file'}")


def _read_ids(path: Path) -> tuple[Fingerprint, dict[str, Any] | None, list[Any], str]:
    """The fingerprint, index record, ids and id kind (``"str"``/``"int"``) of an index's ids file, reading
    its footer and its ``id`` column only."""
    def bad(problem: str) -> EmbeddingsFileError:
        return EmbeddingsFileError(f"{path}: {problem}", path=path)

    try:
        _regular(path, "index ids", FileNotFoundError)
    except FileNotFoundError as exc:
        raise bad(str(exc).split(": ", 1)[1]) from None
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with open(path, "rb") as fh:
            meta = pq.read_schema(fh).metadata or {}
            if PARQUET_KEY not in meta:
                raise bad("no embedhub fingerprint in its metadata; not the ids of an embedhub index")
            fingerprint = Fingerprint.from_json(meta[PARQUET_KEY], path=path)  # before any row is read
            fh.seek(0)
            table = pq.read_table(fh, columns=["id"], pre_buffer=False)  # see embeddings._read_parquet
    except (EmbeddingsFileError, ProvenanceError):
        raise
    except OSError as exc:
        raise bad(f"cannot read it ({exc.strerror or exc})") from None
    except (pa.ArrowException, ValueError, KeyError) as exc:
        raise bad(f"not a readable parquet file with an 'id' column ({exc})") from None
    record = None
    if INDEX_KEY in meta:
        raw = meta[INDEX_KEY]
        try:
            record = json.loads(raw) if len(raw) <= _RECORD_MAX else None
        except (UnicodeDecodeError, ValueError):
            record = None
        if not isinstance(record, dict) or record.get("embedhub_index") != INDEX_VERSION:
            raise bad(f"its {INDEX_KEY.decode()} record is not a version-{INDEX_VERSION} index record")
    col = table.column("id")
    if col.null_count:
        raise bad("column 'id' holds nulls")
    if pa.types.is_integer(col.type):
        return fingerprint, record, col.to_numpy().tolist(), "int"
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise bad(f"column 'id' must be strings or integers, found {col.type}")
    return fingerprint, record, col.to_pylist(), "str"
