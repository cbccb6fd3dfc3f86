"""Publishing to the Hugging Face Hub: model cards and uploads.

>>> from embedhub.hub import Result, write_card, push_folder
>>> write_card("runs/lit/model", model_id="acme/lit-fashion", modalities=("text", "image"),
...            results=[Result("zero-shot-image-classification", "Fashion-MNIST",
...                            "zalando-datasets/fashion_mnist", "accuracy", 0.712)])  # doctest: +SKIP
>>> push_folder("runs/lit/model", "acme/lit-fashion")  # doctest: +SKIP
"""

from __future__ import annotations

from ._card import Result, card_results, linked_images, pipeline_tag_for, read_card, usage_snippet, write_card
from ._publish import PUSH_DEFAULT_MESSAGE, check_names, push_folder, upload_files


def resolve_token(token: str | None = None) -> str:
    """The Hub token an upload would use (``token``, else ``HF_TOKEN`` / ``hf auth login``); a
    :class:`~embedhub.PublishError` saying how to provide one when there is none. No network call."""
    from ._publish import _resolve_token

    return _resolve_token(token, None)


__all__ = [
    "PUSH_DEFAULT_MESSAGE",
    "Result",
    "card_results",
    "check_names",
    "linked_images",
    "pipeline_tag_for",
    "push_folder",
    "read_card",
    "resolve_token",
    "upload_files",
    "usage_snippet",
    "write_card",
]
