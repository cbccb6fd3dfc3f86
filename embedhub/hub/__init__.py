"""The Hugging Face Hub: name resolution and downloads (:mod:`.download`), aliases (:mod:`.aliases`), model
cards (:mod:`.card`) and publishing (:mod:`.publish`).

>>> from embedhub.hub import Result, write_card, push_folder
>>> write_card("runs/lit/model", model_id="acme/lit-fashion", modalities=("text", "image"),
...            results=[Result("zero-shot-image-classification", "Fashion-MNIST",
...                            "zalando-datasets/fashion_mnist", "accuracy", 0.712)])  # doctest: +SKIP
>>> push_folder("runs/lit/model", "acme/lit-fashion")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports

if TYPE_CHECKING:
    from embedhub.hub.card import Result, card_results, linked_images, pipeline_tag_for, read_card, usage_snippet
    from embedhub.hub.card import write_card
    from embedhub.hub.publish import PUSH_DEFAULT_MESSAGE, check_names, push_folder, resolve_token, upload_files

__getattr__, __dir__ = lazy_exports(__name__)
__all__ = [
    "PUSH_DEFAULT_MESSAGE", "Result", "card_results", "check_names", "linked_images", "pipeline_tag_for",
    "push_folder", "read_card", "resolve_token", "upload_files", "usage_snippet", "write_card",
]
