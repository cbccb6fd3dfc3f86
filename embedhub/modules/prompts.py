"""Zero-shot prompts: every label in every template, and CLIP's prompt ensemble (one embedding per label).

>>> template_prompts(["cat", "dog"], ["a photo of a {}.", "a {}"])
['a photo of a cat.', 'a cat', 'a photo of a dog.', 'a dog']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
