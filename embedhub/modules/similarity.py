"""Similarity functions of embedding models, with sentence-transformers' exact numbers.

``cosine`` and ``dot`` are similarities; ``euclidean`` and ``manhattan`` are negative distances,
so that for every function a larger score means more similar.

>>> import numpy as np
>>> a = np.array([[1.0, 0.0]], dtype=np.float32); b = np.array([[0.0, 2.0]], dtype=np.float32)
>>> similarity_matrix(a, b, "manhattan")
array([[-3.]], dtype=float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from embedhub.errors import ArgumentError

#: the similarity functions a model may name (``similarity_fn_name``)
SIMILARITY_FNS: tuple[str, ...] = ("cosine", "dot", "euclidean", "manhattan")


def check_similarity_fn(name: Any) -> str:
    """``name`` when it is one of :data:`SIMILARITY_FNS` (``"dot_product"`` is read as ``"dot"``, as
    sentence-transformers' ``SimilarityFunction`` does); a ``ValueError`` otherwise.

    >>> check_similarity_fn("dot_product")
    'dot'
    """
    if name == "dot_product":
        return "dot"
    if not isinstance(name, str) or name not in SIMILARITY_FNS:
        raise ArgumentError(f"similarity_fn_name must be one of {', '.join(map(repr, SIMILARITY_FNS))}; got {name!r}")
    return name


def _tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach().to("cpu")
    else:
        if isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            value = torch.stack([v.detach().to("cpu") for v in value]).numpy()
        t = torch.as_tensor(np.ascontiguousarray(value))
    if not (t.is_floating_point() or t.dtype in (torch.int8, torch.uint8, torch.int32, torch.int64)):
        raise ArgumentError(f"{name} must be an array of numbers, got {t.dtype}")
    if t.ndim not in (1, 2) or t.shape[-1] == 0:
        raise ArgumentError(f"{name} must be a (N, D) or (D,) array of embeddings; got shape {tuple(t.shape)}")
    return t.to(torch.float32)


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _tensor("a", a), _tensor("b", b)
    if ta.shape[-1] != tb.shape[-1]:
        raise ArgumentError(f"embedding sizes differ: {ta.shape[-1]} vs {tb.shape[-1]}")
    return ta, tb


def similarity_matrix(a: Any, b: Any, fn: str = "cosine") -> np.ndarray:
    """Scores ``(len(a), len(b))`` of every row of ``a`` against every row of ``b`` under ``fn``.

    >>> similarity_matrix(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    fn = check_similarity_fn(fn)
    ta, tb = _pair(a, b)
    ta, tb = ta.reshape(-1, ta.shape[-1]), tb.reshape(-1, tb.shape[-1])
    if fn == "cosine":
        nf = torch.nn.functional.normalize
        out = torch.mm(nf(ta, p=2, dim=-1), nf(tb, p=2, dim=-1).T)
    elif fn == "dot":
        out = torch.mm(ta, tb.T)
    elif fn == "euclidean":
        out = -torch.cdist(ta, tb, p=2.0)
    else:
        out = -torch.cdist(ta, tb, p=1.0)
    return out.numpy()


def similarity_pairwise(a: Any, b: Any, fn: str = "cosine") -> np.ndarray:
    """Scores ``(N,)`` of ``a[i]`` against ``b[i]`` under ``fn`` (``a`` and ``b`` of one shape).

    >>> similarity_pairwise(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), "euclidean")
    array([-0., -0.], dtype=float32)
    """
    fn = check_similarity_fn(fn)
    ta, tb = _pair(a, b)
    if ta.shape != tb.shape:
        raise ArgumentError(f"pairwise similarity needs a and b of one shape; got {tuple(ta.shape)} and "
                            f"{tuple(tb.shape)}")
    if fn == "cosine":
        nf = torch.nn.functional.normalize
        out = (nf(ta, p=2, dim=-1) * nf(tb, p=2, dim=-1)).sum(dim=-1)
    elif fn == "dot":
        out = (ta * tb).sum(dim=-1)
    elif fn == "euclidean":
        out = -torch.linalg.vector_norm(ta - tb, dim=-1)
    else:
        out = -torch.sum(torch.abs(ta - tb), dim=-1)
    return out.numpy()
