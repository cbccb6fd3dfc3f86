"""Building blocks of embedhub models: towers, pooling, heads, preprocessing, and the registry of tower kinds.

A tower maps a preprocessed batch (``input_ids``/``attention_mask`` or ``pixel_values``) to one
embedding per row; normalisation is applied by the model, not the tower. Each tower kind owns its
config entry in ``embedhub_config.json`` (:meth:`Tower.get_config`), the files it keeps beside the
weights (:meth:`Tower.save_files`), how it is rebuilt (:meth:`Tower.from_config`) and what ONNX
export needs to know (:meth:`Tower.onnx_hints`). A new kind is one class plus one registration:

>>> @register_tower
... class MeanEmbeddingTower(Tower):
...     kind, modality, config_keys = "mean-embedding", "text", ("vocab_size", "dim")
...     def __init__(self, vocab_size: int, dim: int):
...         super().__init__()
...         self.embedding = nn.Embedding(vocab_size, dim)
...     def forward(self, input_ids, attention_mask):
...         mask = attention_mask.unsqueeze(-1).float()
...         return (self.embedding(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
...     @property
...     def output_dim(self) -> int:
...         return self.embedding.embedding_dim
...     def get_config(self) -> dict:
...         return {"vocab_size": self.embedding.num_embeddings, "dim": self.embedding.embedding_dim}
...     @classmethod
...     def from_config(cls, config, folder, *, trust_remote_code=False):
...         return cls(config.int("vocab_size", min=1), config.int("dim", min=1))
>>> "mean-embedding" in tower_kinds()
True
>>> unregister_tower("mean-embedding")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports

if TYPE_CHECKING:
    from embedhub._io.folder import ConfigView, ModelFolder
    from embedhub.modules.backends import EXPORT_METADATA, int8_dot_kernel, onnx_tensors, read_export_metadata
    from embedhub.modules.batching import plan_batches
    from embedhub.modules.inputs import load_image
    from embedhub.modules.open_clip import OpenCLIPTower, build_open_clip, open_clip_image_config
    from embedhub.modules.preprocess import HFTextPreprocessor, ImageConfig, ImagePreprocessor
    from embedhub.modules.preprocess import OpenCLIPTextPreprocessor, TextPreprocessor, load_preprocessor
    from embedhub.modules.preprocess import token_lengths
    from embedhub.modules.prompts import average_templates, template_prompts
    from embedhub.modules.towers import ACTIVATIONS, POOLING_MODES, TIMM_KWARGS, CLIPTower, Dense, Head, HFCLIPTower
    from embedhub.modules.towers import Normalize, Pooling, TimmImageTower, Tower, TransformersTextTower, is_saveable
    from embedhub.modules.towers import register_tower, tower_class, tower_kinds, unregister_tower

__getattr__, __dir__ = lazy_exports(__name__)
__all__ = [
    "ACTIVATIONS", "CLIPTower", "ConfigView", "Dense", "EXPORT_METADATA", "HFCLIPTower", "HFTextPreprocessor", "Head",
    "ImageConfig", "ImagePreprocessor", "ModelFolder", "Normalize", "OpenCLIPTextPreprocessor", "OpenCLIPTower",
    "POOLING_MODES", "Pooling", "TIMM_KWARGS", "TextPreprocessor", "TimmImageTower", "Tower", "TransformersTextTower",
    "average_templates", "build_open_clip", "int8_dot_kernel", "is_saveable", "load_image", "load_preprocessor",
    "onnx_tensors", "open_clip_image_config", "plan_batches", "read_export_metadata", "register_tower",
    "template_prompts", "token_lengths", "tower_class", "tower_kinds", "unregister_tower",
]
