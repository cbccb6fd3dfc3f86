"""Nearest-neighbour search with a model's own similarity: one index for every search embedhub does.

``embedhub search``, the ``embedhub embed --index faiss`` index and the retrieval demo all search through
:class:`SearchIndex`, so a ranking is always the one ``model.similarity`` gives:

======================= ============================================ ==========================================
model / precision       faiss index                                  score (higher is better)
======================= ============================================ ==========================================
``cosine``              ``IndexFlatIP`` over L2-normalised vectors   cosine similarity
``dot``                 ``IndexFlatIP`` over the raw vectors         dot product
``euclidean``           ``IndexFlatL2``                              minus the euclidean distance
``manhattan``           ``IndexFlat(d, METRIC_L1)``                  minus the manhattan distance
``binary`` / ``ubinary`` ``IndexBinaryFlat`` (Hamming distance)      minus the Hamming distance, or the rescored
                                                                     float score (see :meth:`SearchIndex.search`)
``int8`` / ``uint8``    the float index of the similarity, over the  the similarity of the codes
                        integer codes
======================= ============================================ ==========================================

Without faiss (or with ``backend="numpy"``) the same search runs exactly in numpy/torch, with the same
formulas as sentence-transformers' ``cos_sim`` / ``dot_score`` / ``euclidean_sim`` / ``manhattan_sim``;
ties rank the lower row first.

>>> import numpy as np
>>> index = SearchIndex(2, similarity="dot", backend="numpy")
>>> index.add(np.array([[1.0, 0.0], [3.0, 0.0]], dtype=np.float32))
>>> index.search(np.array([[1.0, 0.0]], dtype=np.float32), k=2)[1].tolist()
[[1, 0]]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedhub.modules.quantize import PRECISION_DTYPES, PRECISIONS, check_precision, output_width

#: the similarity functions of sentence-transformers' ``similarity_fn_name`` (as modules.similarity.SIMILARITY_FNS)
SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")
BINARY = ("binary", "ubinary")
#: candidates per hit retrieved by Hamming distance before float rescoring (``--rescore-multiplier``)
RESCORE_MULTIPLIER = 4
#: elements of the score (or XOR) block computed at once by the numpy backend
_BLOCK = 1 << 24
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

Backend = Literal["auto", "faiss", "numpy"]

__all__ = ["PRECISIONS", "SIMILARITIES", "SearchIndex", "check_precision", "hamming", "pack_bits",
           "similarity_scores", "to_ubinary", "unpack_bits"]


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


class SearchIndex:
    """Exact nearest-neighbour search over vectors of one model, with its similarity and output precision.

    ``dim`` is the model's (or the truncated) width in floats; ``binary``/``ubinary`` vectors are added as
    packed codes of ``ceil(dim / 8)`` bytes, ``int8``/``uint8`` as codes of ``dim`` columns.
    ``backend="auto"`` uses faiss when it is installed (``kind`` names the faiss index), else numpy.

    >>> index = SearchIndex(3, similarity="euclidean")
    >>> index.add(np.eye(3, dtype=np.float32))
    >>> scores, rows = index.search(np.array([[0.0, 0.9, 0.0]], dtype=np.float32), k=1)
    >>> rows.tolist(), round(float(scores[0, 0]), 3)
    ([[1]], -0.1)
    """

    def __init__(self, dim: int, *, similarity: str = "cosine", precision: str = "float32",
                 backend: Backend = "auto"):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if backend not in ("auto", "faiss", "numpy"):
            raise ValueError(f"backend must be 'auto', 'faiss' or 'numpy', got {backend!r}")
        self.dim = int(dim)
        self.similarity = check_similarity(similarity)
        self.precision = check_precision(precision)
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
        return (f"SearchIndex(dim={self.dim}, similarity={self.similarity!r}, precision={self.precision!r}, "
                f"kind={self.kind!r}, rows={len(self)})")

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

    def add(self, vectors: Any) -> None:
        """Append rows (as :meth:`prepare` checks them); row ``i`` of all added is result row ``i``."""
        arr = self.prepare(vectors)
        self._cache = None
        if self.index is not None:
            self.index.add(arr)
        else:
            self._parts.append(arr)

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
        dist, rows = self.index.search(prepared, k)
        if self.similarity == "euclidean":
            scores = -np.sqrt(np.maximum(dist, 0))
        elif self.similarity == "manhattan":
            scores = -dist
        else:
            scores = dist
        return scores.astype(np.float32), rows.astype(np.int64)

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
            dist, rows = self.index.search(codes, wide)
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
    def save(self, path: str | os.PathLike) -> None:
        """Write the faiss index to ``path`` (``faiss.write_index``, or ``write_index_binary``)."""
        if self.index is None:
            raise ValueError("only a faiss index can be saved; build it with backend='faiss'")
        if self.binary:
            self.faiss.write_index_binary(self.index, os.fspath(path))
        else:
            self.faiss.write_index(self.index, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, dim: int, *, similarity: str = "cosine",
             precision: str = "float32") -> SearchIndex:
        """The faiss index saved at ``path`` by :meth:`save`, checked to be the index of ``dim``, ``similarity``
        and ``precision`` (class, metric, width); a ``ValueError`` says what differs."""
        out = cls(dim, similarity=similarity, precision=precision, backend="faiss")
        faiss, path = out.faiss, Path(path)
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
        out.index = index
        return out
