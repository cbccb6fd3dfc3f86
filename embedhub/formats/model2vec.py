"""model2vec folders without ``modules.json`` (``config.json`` of model type ``model2vec``, ``tokenizer.json``,
``model.safetensors``): static embeddings, encoded as model2vec's ``StaticModel.encode`` does. (A folder
model2vec saves with a ``modules.json`` is a sentence-transformers ``StaticEmbedding`` folder and loads with
sentence-transformers' numbers.)

model2vec's encoding: no special tokens, the unknown token dropped, texts cut to ``max_length`` tokens (first
to ``max_length`` times the median token length in characters), the mean of the token vectors (vocabulary-
quantised models: ``embeddings[mapping[id]] * weights[id]``), L2-normalised when the config says ``normalize``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedhub._io.folder import ModelFolder
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.formats.sentence_transformers import StaticEmbeddingTower, StaticTextPreprocessor, static_embedding
from embedhub.modules.towers import Head

NAME = "model2vec"
ALLOW_PATTERNS = ["config.json", "tokenizer.json", "model.safetensors"]
DEFAULT_MAX_LENGTH = 512  # model2vec's default when the config has no max_length

#: config.json keys: what each does for encoding (the others are metadata of how the model was distilled)
CONFIG_KEYS: dict[str, str] = {
    "model_type": "'model2vec'",
    "architectures": "['StaticModel']",
    "normalize": "L2-normalise the embeddings",
    "max_length": "tokens kept per text (null: all)",
    "embedding_dtype": "metadata: dtype of the stored vectors (float, or int8 read as float32)",
    "vocabulary_quantization": "metadata: number of stored vectors of a vocabulary-quantised model",
    "hidden_dim": "width of the vectors (checked)",
    "tokenizer_name": "metadata: the tokenizer the model was distilled with",
    "apply_pca": "metadata: PCA applied when distilling",
    "apply_zipf": "metadata: Zipf weighting applied when distilling",
    "sif_coefficient": "metadata: SIF weighting applied when distilling",
    "seq_length": "metadata: sequence length used when distilling",
    "pooling": "metadata: pooling used when distilling",
    "language": "metadata: languages of the model",
    "base_model": "metadata: the model it was distilled from",
}
#: keys refused with a reason
REFUSED_KEYS: dict[str, str] = {
    "head_config": "a classifier head (model2vec's StaticModelPipeline), not an embedding model",
}


def _unk_id(tokenizer: Any) -> int | None:
    """The unknown token's id, found as model2vec finds it."""
    model = tokenizer.model
    if hasattr(model, "unk_token"):
        token = model.unk_token
        return None if token is None else tokenizer.token_to_id(token)
    unk = json.loads(tokenizer.to_str())["model"].get("unk_id")
    return unk if isinstance(unk, int) else None


class Model2VecPreprocessor(StaticTextPreprocessor):
    """model2vec's tokenisation (see the module docstring).

    >>> pre = Model2VecPreprocessor(tokenizer, max_length=8)  # doctest: +SKIP
    """

    def __init__(self, tokenizer: Any, *, max_length: int | None):
        import numpy as np

        super().__init__(tokenizer)
        if max_length is None:
            tokenizer.no_truncation()
        else:
            tokenizer.enable_truncation(max_length)
        self.max_length = max_length if max_length is not None else 1 << 30
        self.model_max_length = max_length
        self.unk_id = _unk_id(tokenizer)
        tokens = sorted(tokenizer.get_vocab().items(), key=lambda x: x[1])
        self.median_token_length = int(np.median([len(t) for t, _ in tokens]))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if self.model_max_length is not None:
            cut = self.model_max_length * self.median_token_length
            texts = [t[:cut] for t in texts]
        out = [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
        if self.unk_id is not None:
            out = [[i for i in ids if i != self.unk_id] for ids in out]
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "drop_unknown": self.unk_id is not None}


class Model2VecFormat(Format, name=NAME, marker="config.json", allow_patterns=ALLOW_PATTERNS):
    """model2vec static-embedding folders without a ``modules.json``."""

    def matches(self, folder: Path) -> bool:
        """A ``config.json`` whose ``model_type`` is ``model2vec``."""
        config = self.marker_json(folder)
        return isinstance(config, dict) and config.get("model_type") == "model2vec"

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """A model2vec static model: per-token vectors, their mean, normalised as its config says."""
        folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
        cfg = folder.config("config.json")
        cfg.only(set(CONFIG_KEYS) | set(REFUSED_KEYS), what="model2vec config key")
        for key, why in REFUSED_KEYS.items():
            if key in cfg:
                raise cfg.error(key, f"nothing ({why})", cfg.data[key])
        cfg.str("model_type", choices=["model2vec"])
        weights, static = static_embedding(folder, what="model2vec model", integer_ok=True)
        unlimited = "max_length" in cfg.data and cfg.data["max_length"] is None
        max_length = None if unlimited else cfg.int("max_length", DEFAULT_MAX_LENGTH, min=1)
        for key in ("embedding_dtype", "tokenizer_name"):
            cfg.str(key, None)
        cfg.int("vocabulary_quantization", None, min=1)
        if "hidden_dim" in cfg and cfg.int("hidden_dim", min=1) != weights.shape[1]:
            raise cfg.error("hidden_dim", f"{weights.shape[1]} (the width of the stored vectors)",
                            cfg.data["hidden_dim"])
        head = Head(normalize=cfg.bool("normalize", False))
        tower = StaticEmbeddingTower(weights, head)
        pre = Model2VecPreprocessor(static.tokenizer, max_length=max_length)
        return ModelParts(towers={"text": tower}, preprocessors={"text": pre}, embed_dim=int(weights.shape[1]))


FORMAT = Model2VecFormat()
