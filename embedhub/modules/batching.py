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
        stop = min(start + _rows(lengths[order[start]], batch_size, max_tokens), n)  # sorted: the first is longest
        batches.append(order[start:stop])
        start = stop
    return batches


def first_come_batch(lengths: np.ndarray, requests: np.ndarray, batch_size: int,
                     max_tokens: int | None = None) -> np.ndarray:
    """Indices of the next batch when requests are served in the order they came: the items of the oldest
    request (``requests[i]``: the arrival rank of item ``i``'s request, smaller is older), longest first, then
    those of the next requests in turn, each request's longest first, while the batch keeps within the bounds of
    :func:`plan_batches`. It stops at the first item that does not fit, so no request is passed over; a
    request larger than a batch runs in batches of its own, cut from its items sorted by length.

    >>> first_come_batch(np.array([5, 9, 1, 5, 7]), np.array([0, 0, 1, 2, 2]), 3).tolist()
    [1, 0, 2]
    """
    batch_size, max_tokens = check_batching(batch_size, max_tokens)
    lengths = np.asarray(lengths)
    order = np.lexsort((-lengths, np.asarray(requests)))  # by request, then longest first (stable)
    longest, taken = 0, 0
    for i in order:
        longest = max(longest, int(lengths[i]))
        if taken and taken + 1 > _rows(longest, batch_size, max_tokens):
            break
        taken += 1
    return order[:taken]


def _rows(longest: Any, batch_size: int, max_tokens: int | None) -> int:
    """Rows a batch whose longest row is ``longest`` tokens may hold: ``batch_size``, fewer when ``max_tokens``
    padded tokens would be exceeded (always at least one)."""
    if max_tokens is None:
        return batch_size
    return min(batch_size, max(1, max_tokens // max(int(longest), 1)))
