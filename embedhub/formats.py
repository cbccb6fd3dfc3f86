"""Model folder formats: detection, and the files each format needs.

>>> from embedhub.formats import model_files
>>> model_files("my-model")  # doctest: +SKIP
['embedhub_config.json', 'model.safetensors', 'text/config.json', 'text/tokenizer.json']
"""

from __future__ import annotations

from ._formats import detect, model_files

__all__ = ["detect", "model_files"]
