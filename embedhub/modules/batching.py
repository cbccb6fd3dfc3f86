"""Batch planning shared by every backend: validate the sizes, sort by length, cut batches, restore order."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from embedhub.errors import ArgumentError

#: texts are tokenised this many at a time (rounded up to a multiple of ``batch_size``) and
#: sorted by length within that window, so memory beyond the output stays flat as inputs grow
TEXT_WINDOW = 4096


def check_positive_int(name: str, value: Any, *, optional: bool = False) -> int | None:
    """``value`` as an ``int`` >= 1 (or ``None`` when ``optional``); ``TypeError`` / ``ValueError``
    naming the argument and the value otherwise.

    >>> check_positive_int("batch_size", 8)
    8
    >>> check_positive_int("batch_size", 2.5)
    Traceback (most recent call last):
    ...
    TypeError: batch_size must be an int >= 1, got 2.5 (float)
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "an int >= 1 or None" if optional else "an int >= 1"
        raise TypeError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ArgumentError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def check_batching(batch_size: Any, max_tokens: Any) -> tuple[int, int | None]:
    """Validated ``(batch_size, max_tokens)``: the one check every modality and backend goes through."""
    return check_positive_int("batch_size", batch_size), check_positive_int("max_tokens", max_tokens, optional=True)


def text_windows(n: int, batch_size: int, window: int | None = None) -> list[range]:
    """Consecutive ranges covering ``0..n``, each a whole number of ``batch_size`` rows and about ``window``
    (default :data:`TEXT_WINDOW`) long.

    >>> [(r.start, r.stop) for r in text_windows(10, 4, window=6)]
    [(0, 8), (8, 10)]
    """
    size = max(1, -(-(window or TEXT_WINDOW) // batch_size)) * batch_size
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Index arrays of batches, longest first; each at most ``batch_size`` rows and, when
    ``max_tokens`` is set, at most ``max_tokens`` padded tokens (rows x longest row).

    >>> [b.tolist() for b in plan_batches(np.array([3, 9, 1, 5]), 2)]
    [[1, 3], [0, 2]]
    """
    batch_size, max_tokens = check_batching(batch_size, max_tokens)
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        stop = min(start + batch_rows(lengths[order[start]], batch_size, max_tokens), n)  # sorted: the first is longest
        batches.append(order[start:stop])
        start = stop
    return batches


#: a row of ``n`` tokens in a batch padded to ``top`` is padded little when ``top`` is at most twice ``n``, or at most
#: this many tokens more (so short texts always share a batch: their padding costs little); see
#: :func:`first_come_batch`
SIMILAR_TOKENS = 32


def similar(top: int, n: int) -> bool:
    """Whether a row of ``n`` tokens padded to ``top`` is padded little (:data:`SIMILAR_TOKENS`).

    >>> similar(60, 30), similar(40, 9), similar(200, 12)
    (True, True, False)
    """
    return top <= 2 * n or top - n <= SIMILAR_TOKENS


def first_come_batch(lengths: np.ndarray, requests: np.ndarray, batch_size: int,
                     max_tokens: int | None = None) -> np.ndarray:
    """Indices of the next batch when requests are served in the order they came: the items of the oldest request
    (``requests[i]``: the arrival rank of item ``i``'s request, smaller is older), longest first and cut as
    :func:`plan_batches` cuts them; then the items of the next requests in turn, each request's longest first,
    that keep the batch within the bounds of :func:`plan_batches` and pad no row much because they joined
    (:func:`similar`: an item no longer than the batch's longest is :func:`similar` to it; a longer one keeps
    the shortest row :func:`similar`). So a newer request runs ahead of an older one only where the older one's
    items would pad a row much (or not fit), and a short text is not padded to a long one's length.

    >>> first_come_batch(np.array([5, 9, 1, 5, 7]), np.array([0, 0, 1, 2, 2]), 3).tolist()
    [1, 0, 2]
    >>> first_come_batch(np.array([200, 10, 180, 12]), np.array([0, 1, 2, 3]), 8).tolist()   # 10, 12 wait
    [0, 2]
    >>> first_come_batch(np.array([150, 3, 90, 300]), np.array([0, 0, 1, 2]), 8).tolist()   # 300 would pad 3
    [0, 1, 2]
    """
    batch_size, max_tokens = check_batching(batch_size, max_tokens)
    lengths, requests = np.asarray(lengths), np.asarray(requests)
    if not len(lengths):
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-lengths, requests))  # by request, then longest first (stable)
    oldest = requests[order[0]]
    chosen: list[int] = []
    lo = hi = int(lengths[order[0]])
    for i in order:
        n = int(lengths[i])
        fits = len(chosen) < batch_rows(max(hi, n), batch_size, max_tokens)
        if requests[i] == oldest:
            if chosen and not fits:
                break  # the rest of the oldest request runs in batches of its own
        elif not fits or not (similar(hi, n) if n <= hi else similar(n, lo)):
            continue
        chosen.append(i)
        lo, hi = min(lo, n), max(hi, n)
        if len(chosen) == batch_size:
            break
    return np.asarray(chosen, dtype=order.dtype)


def batch_rows(longest: Any, batch_size: int, max_tokens: int | None) -> int:
    """Rows a batch whose longest row is ``longest`` tokens may hold: ``batch_size``, fewer when ``max_tokens``
    padded tokens would be exceeded (always at least one)."""
    if max_tokens is None:
        return batch_size
    return min(batch_size, max(1, max_tokens // max(int(longest), 1)))
