"""The order of a run's data: one torch generator per (seed, epoch), so every rank and a resumed run see the
same order (torch is imported when called: the data readers that use this stay light to import).

>>> epoch_order(5, seed=0, epoch=1).tolist() == epoch_order(5, seed=0, epoch=1).tolist()
True
"""

from __future__ import annotations

from typing import Any


def epoch_generator(seed: int, epoch: int) -> Any:
    """The torch generator of ``epoch`` in a run seeded with ``seed`` (the source of :func:`epoch_order`).

    >>> import torch
    >>> g1, g2 = epoch_generator(0, 1), epoch_generator(0, 1)
    >>> torch.randint(100, (3,), generator=g1).tolist() == torch.randint(100, (3,), generator=g2).tolist()
    True
    """
    import torch

    return torch.Generator().manual_seed(seed * 1000 + epoch)


def epoch_order(n: int, seed: int, epoch: int) -> Any:
    """The shuffled order of ``n`` items in ``epoch`` of a run seeded with ``seed``: a torch permutation
    that is the same on every rank and after a resume.

    >>> epoch_order(5, seed=0, epoch=1).tolist() == epoch_order(5, seed=0, epoch=1).tolist()
    True
    """
    import torch

    return torch.randperm(n, generator=epoch_generator(seed, epoch))


__all__ = ["epoch_generator", "epoch_order"]
