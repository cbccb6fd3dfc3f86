"""Deprecated: the training losses moved to :mod:`embedhub.training.losses`; this path goes away in the next
release. Importing it warns (``DeprecationWarning``) and gives the same objects.

>>> import warnings
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore", DeprecationWarning)
...     from embedhub.losses import ClipLoss
>>> from embedhub.training.losses import ClipLoss as moved
>>> ClipLoss is moved
True
"""

from __future__ import annotations

import warnings

from embedhub.training.losses import (
    ClipLoss,
    EmbeddingQueue,
    SimCSELoss,
    back_translate,
    clip_loss,
    dcl_loss,
    gather_features,
    gather_rows,
    kmeans,
    momentum_update,
    pmrl_loss,
    prototype_loss,
    siglip_loss,
    simcse_loss,
    singular_values,
    word_repetition,
)

warnings.warn("embedhub.losses moved to embedhub.training.losses; the old path goes away in the next release",
              DeprecationWarning, stacklevel=2)

__all__ = ["ClipLoss", "EmbeddingQueue", "SimCSELoss", "back_translate", "clip_loss", "dcl_loss", "gather_features",
           "gather_rows", "kmeans", "momentum_update", "pmrl_loss", "prototype_loss", "siglip_loss", "simcse_loss",
           "singular_values", "word_repetition"]
