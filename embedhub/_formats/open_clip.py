"""open_clip hub folders: ``open_clip_config.json`` + ``open_clip_model.safetensors``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .._errors import UnknownFormatError, require
from .._modules import OpenCLIPTower
from .._preprocess import ImageConfig, ImagePreprocessor, OpenCLIPTextPreprocessor
from .._weights import find_safetensors, load_strict, read_safetensors
from ._hf import read_json

NAME = "open_clip"
MARKER = "open_clip_config.json"
ALLOW_PATTERNS = ["*.json", "open_clip_model.safetensors", "*.txt", "*.model"]
_INTERP = {"bicubic", "bilinear", "nearest"}


def matches(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def build(model_cfg: dict[str, Any]):
    """The open_clip model class for ``model_cfg``, as open_clip's factory picks it, without any download."""
    open_clip = require("open_clip", "open-clip", "loading open_clip models")
    cfg = copy.deepcopy(model_cfg)
    if "vision_cfg" not in cfg or "text_cfg" not in cfg or "embed_dim" not in cfg:
        raise UnknownFormatError("open_clip model_cfg needs embed_dim, vision_cfg and text_cfg")
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    if "multimodal_cfg" in cfg:
        raise UnknownFormatError("open_clip CoCa models (multimodal_cfg) are not supported for embedding")
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


def image_config(model_cfg: dict[str, Any], pp: dict[str, Any]) -> ImageConfig:
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = pp.get("size", model_cfg["vision_cfg"].get("image_size", 224))
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise UnknownFormatError(f"non-square open_clip image size {size} is not supported")
        size = size[0]
    mode = pp.get("resize_mode", "shortest")
    interp = pp.get("interpolation", "bicubic")
    if interp not in _INTERP or mode not in ("shortest", "squash", "longest"):
        raise UnknownFormatError(f"open_clip preprocess_cfg not supported: interpolation={interp}, resize_mode={mode}")
    return ImageConfig(
        size=int(size),
        crop_size=None if mode == "squash" else (int(size), int(size)),
        mean=tuple(pp.get("mean") or OPENAI_DATASET_MEAN),
        std=tuple(pp.get("std") or OPENAI_DATASET_STD),
        interpolation=interp,
        resize_mode=mode,
        backend="pil",
        crop_rounding="round",
    )


def load(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    cfg = read_json(folder / MARKER)
    if "model_cfg" not in cfg:
        raise UnknownFormatError(f"{folder / MARKER} has no 'model_cfg'")
    model_cfg = cfg["model_cfg"]
    model = build(model_cfg)
    state = read_safetensors(find_safetensors(folder, ("open_clip_model.safetensors", "model.safetensors")))
    load_strict(model, state, what="open_clip model")
    text = OpenCLIPTextPreprocessor.from_folder(folder)
    image = ImagePreprocessor(image_config(model_cfg, cfg.get("preprocess_cfg", {})))
    logit_scale = float(model.logit_scale.exp().item()) if getattr(model, "logit_scale", None) is not None else None
    return {
        "towers": {"text": OpenCLIPTower(model, "text"), "image": OpenCLIPTower(model, "image")},
        "preprocessors": {"text": text, "image": image},
        "embed_dim": int(model_cfg["embed_dim"]),
        "logit_scale": logit_scale,
        "spec": None,
    }
