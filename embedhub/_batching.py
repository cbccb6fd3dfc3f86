"""Batch planning shared by every backend: sort by length, cut batches, restore order."""

from __future__ import annotations

import numpy as np


def plan_batches(lengths: np.ndarray, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Index arrays of batches, longest first; each at most ``batch_size`` rows and, when
    ``max_tokens`` is set, at most ``max_tokens`` padded tokens (rows x longest row).

    >>> [b.tolist() for b in plan_batches(np.array([3, 9, 1, 5]), 2)]
    [[1, 3], [0, 2]]
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        stop = min(start + batch_size, n)
        if max_tokens is not None:
            longest = max(int(lengths[order[start]]), 1)  # rows are sorted: the first is the longest
            stop = min(stop, start + max(1, max_tokens // longest))
        batches.append(order[start:stop])
        start = stop
    return batches
