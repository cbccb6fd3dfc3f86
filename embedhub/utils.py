"""Small helpers shared by the SDK, the training recipes, export and the demos.

>>> from embedhub.utils import template_prompts
>>> template_prompts(["cat", "dog"], ["a photo of a {}.", "a {}"])
['a photo of a cat.', 'a cat', 'a photo of a dog.', 'a dog']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._atomic import atomic_write, install_folder
from ._backends import int8_dot_kernel, sha256_file
from ._backends import model_tensors as onnx_tensors
from ._batching import plan_batches
from ._corpus import tar_keys
from ._errors import require
from ._inputs import load_image
from ._preprocess import token_lengths
from ._search import SearchIndex, hamming, similarity_scores

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


def template_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every label in every template, label-major: ``len(labels) * len(templates)`` prompts."""
    return [t.format(label) for label in labels for t in templates]


def average_templates(embeddings: Any, n_labels: int) -> Any:
    """One embedding per label: the renormalised mean over its templates (CLIP's prompt ensemble).

    ``embeddings`` holds the :func:`template_prompts` rows (label-major), as a torch tensor.

    >>> import torch
    >>> average_templates(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 0.0]]), 2)
    tensor([[0.7071, 0.7071],
            [1.0000, 0.0000]])
    """
    import torch

    if n_labels < 1 or embeddings.shape[0] % n_labels:
        raise ValueError(f"{embeddings.shape[0]} prompt embeddings cannot be split evenly over {n_labels} labels")
    mean = embeddings.reshape(n_labels, embeddings.shape[0] // n_labels, -1).mean(1)
    return torch.nn.functional.normalize(mean, dim=-1)


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
