"""Plain transformers encoder folders (``config.json`` + tokenizer + safetensors, no ``modules.json``), e.g.
facebook/contriever or princeton-nlp SimCSE: loaded as ``SentenceTransformer(folder)`` loads them, a
Transformer with mean pooling over the last hidden state, with a logged warning naming the fallback.

Tried after every other format, so a CLIP (or other recognised) ``config.json`` never reaches it. An
architecture it cannot build as a text encoder is refused with an error naming the architecture.
"""

from __future__ import annotations

import logging
from pathlib import Path

from embedhub._io.folder import ModelFolder
from embedhub.errors import ConfigError, UnknownFormatError
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.modules.hf import build_transformers, config_class, usable_positions
from embedhub.modules.preprocess import text_preprocessor
from embedhub.modules.towers import Head, Pooling, TransformersTextTower

NAME = "transformers"
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]
logger = logging.getLogger(__name__)


def _architecture(view) -> str:
    archs = view.data.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    model_type = f"model_type {view.data.get('model_type')!r}"
    return f"{arch} ({model_type})" if arch else model_type


def _check_text_encoder(view, cls, what: str) -> None:
    """Refuse architectures that are not text encoders embedhub can mean-pool, naming the architecture."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    sub = set(getattr(cls, "sub_configs", {}) or {})
    if sub & {"vision_config", "audio_config", "text_config"}:
        raise ConfigError(
            f"{view.file}: {what} is not a text encoder embedhub can mean-pool (it has {sorted(sub)}); no "
            "format embedhub registers loads this architecture", file=str(view.file), key="model_type",
        )
    if getattr(cls, "is_encoder_decoder", False) or view.data.get("is_encoder_decoder"):
        raise ConfigError(
            f"{view.file}: {what} is an encoder-decoder model; sentence-transformers embeds with its encoder "
            "only, which embedhub does not rebuild", file=str(view.file), key="model_type",
        )
    try:
        model_cls = MODEL_MAPPING[cls]
    except (KeyError, ValueError):
        raise ConfigError(f"{view.file}: {what} has no base model class in the installed transformers; no format "
                          "embedhub registers loads it", file=str(view.file), key="model_type") from None
    if "input_ids" not in inspect.signature(model_cls.forward).parameters:
        raise ConfigError(
            f"{view.file}: {what} ({model_cls.__name__}) does not take text (input_ids); no format embedhub "
            "registers loads this architecture", file=str(view.file), key="model_type",
        )


class TransformersEncoderFormat(Format, name=NAME, marker="config.json", allow_patterns=ALLOW_PATTERNS):
    """Plain transformers encoder folders: mean pooling, as sentence-transformers' fallback."""

    def matches(self, folder: Path) -> bool:
        """A folder with a ``config.json`` object (the formats tried before this one did not claim it)."""
        return isinstance(self.marker_json(folder), dict)

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """A mean-pooled transformers text encoder, as sentence-transformers builds one for a folder without
        ``modules.json``."""
        folder, options = self.opened(folder, options)
        trust_remote_code = options.trust_remote_code
        view = folder.config("config.json")
        what = _architecture(view)
        model_type = view.str("model_type", None)
        if model_type is None:
            raise view.error("model_type", "the model_type of a transformers architecture")
        archs = view.data.get("architectures") or []
        if any(isinstance(a, str) and a.endswith("ForCausalLM") for a in archs) and view.data.get("is_causal", True):
            raise ConfigError(
                f"{view.file}: {what} is a causal language model; sentence-transformers embeds such a folder with "
                "last-token pooling, which embedhub does not rebuild without a modules.json (save it with "
                "sentence-transformers to give it one)", file=str(view.file), key="architectures",
            )
        cls = config_class(model_type)
        if cls is not None:
            _check_text_encoder(view, cls, what)
        if not (folder.has("tokenizer.json") or folder.has("tokenizer_config.json")):
            raise UnknownFormatError(
                f"{folder.root}: {what} has no tokenizer (tokenizer.json or tokenizer_config.json)")
        backbone = build_transformers(folder, "AutoModel", what=f"transformers encoder {what}",
                                      trust_remote_code=trust_remote_code)
        hidden = getattr(backbone.config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ConfigError(f"{view.file}: {what} has no hidden_size; not a text encoder embedhub can mean-pool",
                              file=str(view.file), key="hidden_size")
        positions = usable_positions(backbone.config)
        text = text_preprocessor(folder, fallback_max_length=positions, trust_remote_code=trust_remote_code)
        text.max_length = min(text.max_length, positions)
        text.tokenizer.enable_truncation(max_length=text.max_length)
        logger.warning(
            "%s has no modules.json: loading it as sentence-transformers does, as a transformers encoder (%s) with "
            "mean pooling over its last hidden state", folder.root, what,
        )
        pooling, head = Pooling(["mean"]), Head()
        spec = {
            "embed_dim": hidden,
            "towers": {"text": {"backbone": {"library": "transformers"}, "pooling": ["mean"], "head": head.spec(),
                                "preprocess": text.config()}},
        }
        return ModelParts(towers={"text": TransformersTextTower(backbone, pooling, head)}, preprocessors={"text": text},
                          embed_dim=hidden, config=spec)


FORMAT = TransformersEncoderFormat()
