"""Model folder formats: one explicit contract, a registry users can extend, detection.

A format is a :class:`Format` subclass: its ``name``, the ``marker`` file that identifies it (or its
own :meth:`Format.matches`), the file patterns it may own (``allow_patterns``: what saving into an
earlier save replaces), and :meth:`Format.load`, which turns a folder into a typed
:class:`ModelParts`, opening every file through the :class:`ModelFolder` it is given. The files a
load opens are the model's files: its fingerprint, what is downloaded for it and what
``push_to_hub`` uploads (:func:`model_files`). Built-in formats, tried in this order: embedhub,
remote-code (folders that ask for code), sentence-transformers, open_clip, transformers CLIP, model2vec,
and last plain transformers encoders (mean pooling).

>>> from embedhub.formats import Format, ModelParts, register_format, format_names
>>> class MyFormat(Format):
...     name, marker, allow_patterns = "my-format", "my_format.json", ("*.json", "*.safetensors")
...     def load(self, folder, options):
...         ...  # build towers and preprocessors from the folder's files
>>> register_format(MyFormat())
>>> format_names()[-1]
'my-format'
>>> unregister_format("my-format")

The built-in formats live one per module in this package (``embedhub.formats.sentence_transformers``, ...);
each defines one :class:`Format` subclass and its instance ``FORMAT``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports

if TYPE_CHECKING:
    from embedhub._io.folder import ConfigView, ModelFolder
    from embedhub.formats.contract import Format, LoadOptions, ModelParts
    from embedhub.formats.registry import can_save_torch, check_writable, detect, format_names, get_format
    from embedhub.formats.registry import model_files, register_format, save_embedhub, unregister_format
    from embedhub.modules.weights import find_safetensors, load_strict, read_safetensors

__getattr__, __dir__ = lazy_exports(__name__)
__all__ = [
    "ConfigView", "Format", "LoadOptions", "ModelFolder", "ModelParts", "can_save_torch", "check_writable",
    "detect", "find_safetensors", "format_names", "get_format", "load_strict", "model_files", "read_safetensors",
    "register_format", "save_embedhub", "unregister_format",
]
