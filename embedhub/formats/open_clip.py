"""open_clip hub folders: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""

from __future__ import annotations

from pathlib import Path

from embedhub._io.folder import ModelFolder
from embedhub.errors import ConfigError
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.modules.open_clip import (
    OpenCLIPTower,
    build_open_clip,
    open_clip_image_config,
    text_config,
    validate_model_cfg,
)
from embedhub.modules.preprocess import ImagePreprocessor, OpenCLIPTextPreprocessor
from embedhub.modules.weights import build_checked, find_safetensors

NAME = "open_clip"
MARKER = "open_clip_config.json"
ALLOW_PATTERNS = ["*.json", "open_clip_model.safetensors", "*.txt", "*.model"]


class OpenCLIPFormat(Format, name=NAME, marker=MARKER, allow_patterns=ALLOW_PATTERNS):
    """open_clip folders (``open_clip_config.json``)."""

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """The text and image towers of an open_clip model, its preprocessing and its logit scale and bias."""
        folder, options = self.opened(folder, options)
        trust_remote_code = options.trust_remote_code
        cfg = folder.config(MARKER)
        model_view = cfg.view("model_cfg")
        hf_text = text_config(folder, model_view.data)
        model_cfg = validate_model_cfg(model_view, trust_remote_code=trust_remote_code,
                                       local_text_config=hf_text is not None)
        files = find_safetensors(folder, ("open_clip_model.safetensors", "model.safetensors"))
        model = build_checked(
            lambda: build_open_clip(model_cfg, trust_remote_code=trust_remote_code, hf_config=hf_text), files,
            what="open_clip model", config=model_cfg, config_file=cfg.file, config_prefix="model_cfg.")
        text = OpenCLIPTextPreprocessor.from_folder(folder, trust_remote_code=trust_remote_code)
        image = ImagePreprocessor(open_clip_image_config(model_cfg, cfg.view("preprocess_cfg", {})))
        logit_scale = float(model.logit_scale.exp().item()) if getattr(model, "logit_scale", None) is not None else None
        bias = getattr(model, "logit_bias", None)  # SigLIP (init_logit_bias): the trained value, from the weights
        if bias is not None and bias.numel() != 1:
            raise ConfigError(f"{cfg.file}: model_cfg gives a logit_bias of {bias.numel()} values; zero-shot needs one",
                              file=str(cfg.file), key="model_cfg.init_logit_bias")
        return ModelParts(
            towers={"text": OpenCLIPTower(model, "text"), "image": OpenCLIPTower(model, "image")},
            preprocessors={"text": text, "image": image},
            embed_dim=int(model_cfg["embed_dim"]),
            logit_scale=logit_scale,
            logit_bias=float(bias.item()) if bias is not None else None,
        )


FORMAT = OpenCLIPFormat()
