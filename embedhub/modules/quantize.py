"""Output precision of embeddings: scalar (int8/uint8) and binary quantisation, as sentence-transformers does it.

The results are exactly those of ``sentence_transformers.quantization.quantize_embeddings``:

>>> import numpy as np
>>> quantize_embeddings(np.array([[0.5, -1.0, 0.0, 2.0]], dtype=np.float32), "ubinary")
array([[144]], dtype=uint8)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from embedhub.errors import ArgumentError, InputError

#: the precisions :func:`quantize_embeddings` and ``EmbeddingModel.encode`` produce
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")
#: the numpy dtype of each precision's output
PRECISION_DTYPES: dict[str, Any] = {
    "float32": np.float32, "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8,
}


def check_precision(precision: Any) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`; a ``ValueError`` naming them otherwise.

    >>> check_precision("int8")
    'int8'
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ArgumentError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}; got {precision!r}")
    return precision


def output_width(dim: int, precision: str) -> int:
    """The number of columns of ``dim``-wide embeddings at ``precision`` (binary packs 8 dims a byte).

    >>> output_width(384, "binary"), output_width(10, "ubinary"), output_width(10, "int8")
    (48, 2, 10)
    """
    return (dim + 7) // 8 if precision.endswith("binary") else dim


def _float_matrix(name: str, value: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().to("cpu", torch.float32).numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(value, list) and value and not isinstance(value[0], (int, float)):
        value = np.stack([np.asarray(v) for v in value])
    arr = np.asarray(value)
    if arr.dtype in (np.int8, np.uint8):
        raise InputError(f"{name} must be float embeddings to quantise, not {arr.dtype} (already quantised)")
    if arr.dtype.kind not in "fiu" or arr.ndim not in (1, 2):
        raise InputError(f"{name} must be a 1-d or 2-d array of floats; got {arr.dtype} of shape {arr.shape}")
    return arr


def _check_finite(name: str, arr: np.ndarray) -> None:
    """An :class:`InputError` naming the first row holding NaN or an infinity."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr.reshape(-1, arr.shape[-1])).all(axis=1))
        more = " and others" if rows.size > 1 else ""
        raise InputError(f"{name} hold NaN or infinite values (row {int(rows[0])}{more}); quantisation needs finite "
                         "numbers")


def quantize_embeddings(
    embeddings: Any,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Quantise float embeddings ``(N, D)`` (or ``(D,)``) to ``precision``.

    ``int8``/``uint8``: each dimension's ``[min, max]`` (from ``ranges``, a ``(2, D)`` array, else from
    ``calibration_embeddings``, else from ``embeddings`` themselves, which then need at least two rows)
    is cut into 256 buckets. ``binary``/``ubinary``: one bit per dimension (``> 0``), packed 8 to a
    byte (``binary`` offset by -128 into int8). ``float32``: a float32 copy. Identical results to
    sentence-transformers' ``quantize_embeddings``.

    >>> import numpy as np
    >>> e = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], dtype=np.float32)
    >>> quantize_embeddings(e, "uint8")
    array([[  0, 254],
           [254,   0],
           [127, 127]], dtype=uint8)
    """
    precision = check_precision(precision)
    emb = _float_matrix("embeddings", embeddings)
    dim = emb.shape[-1]
    if emb.ndim == 2 and emb.shape[0] == 0:
        if precision == "float32":
            return emb.astype(np.float32)
        return np.zeros((0, output_width(dim, precision)), dtype=PRECISION_DTYPES[precision])
    if precision == "float32":
        return emb.astype(np.float32)
    _check_finite("embeddings", emb)  # a NaN or inf would become an arbitrary code
    if precision.endswith("int8"):
        if ranges is None:
            if calibration_embeddings is not None:
                cal = _float_matrix("calibration_embeddings", calibration_embeddings)
                if cal.shape[-1] != dim or cal.ndim != 2 or cal.shape[0] == 0:
                    raise InputError(
                        f"calibration_embeddings must be a non-empty (N, {dim}) array, as wide as the embeddings "
                        f"({dim}); got shape {cal.shape}")
            else:
                if emb.ndim == 1 or emb.shape[0] == 1:
                    raise InputError(
                        f"cannot compute {precision} quantization ranges from a single embedding; pass ranges or "
                        "calibration_embeddings from a representative set of embeddings")
                cal = emb
            _check_finite("calibration_embeddings", cal)
            ranges = np.vstack((np.min(cal, axis=0), np.max(cal, axis=0)))
        else:
            ranges = np.asarray(ranges)
            if ranges.shape != (2, dim) or ranges.dtype.kind not in "fiu":
                raise InputError(f"ranges must be a (2, {dim}) array of per-dimension [min; max]; got {ranges.dtype} "
                                 f"of shape {ranges.shape}")
            _check_finite("ranges", ranges)
            bad = np.flatnonzero(ranges[0] > ranges[1])
            if bad.size:
                raise InputError(f"ranges[0] (the minimum) exceeds ranges[1] (the maximum) in dimension {int(bad[0])} "
                                 f"({ranges[0, bad[0]]} > {ranges[1, bad[0]]}); pass [min; max] per dimension")
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((emb - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    if precision == "binary":
        return (np.packbits(emb > 0, axis=-1) - 128).astype(np.int8)
    return np.packbits(emb > 0, axis=-1)
