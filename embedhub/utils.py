"""Small helpers shared by the SDK, the training recipes, export and the demos.

>>> from embedhub.utils import template_prompts
>>> template_prompts(["cat", "dog"], ["a photo of a {}.", "a {}"])
['a photo of a cat.', 'a cat', 'a photo of a dog.', 'a dog']
"""

from __future__ import annotations

from typing import Any

from embedhub._io.atomic import atomic_write, install_folder
from embedhub.errors import require
from embedhub.jobs.corpus import tar_keys
from embedhub.modules.backends import int8_dot_kernel, onnx_tensors, sha256_file
from embedhub.modules.batching import plan_batches
from embedhub.modules.inputs import load_image
from embedhub.modules.preprocess import token_lengths
from embedhub.modules.prompts import average_templates, template_prompts
from embedhub.store.index import SearchIndex, hamming, similarity_scores

__all__ = [
    "SearchIndex",
    "atomic_write",
    "average_templates",
    "epoch_generator",
    "epoch_order",
    "hamming",
    "install_folder",
    "int8_dot_kernel",
    "load_image",
    "onnx_tensors",
    "plan_batches",
    "require",
    "sha256_file",
    "similarity_scores",
    "tar_keys",
    "template_prompts",
    "token_lengths",
]


def epoch_generator(seed: int, epoch: int) -> Any:
    """The torch generator of ``epoch`` in a run seeded with ``seed`` (the source of :func:`epoch_order`)."""
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
