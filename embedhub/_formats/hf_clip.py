"""transformers CLIP folders: ``config.json`` of a ``CLIPModel`` + processor files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import UnknownFormatError
from .._modules import HFCLIPTower
from .._preprocess import ImageConfig, ImagePreprocessor
from ._hf import from_pretrained, read_json, text_preprocessor

NAME = "transformers-clip"
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def matches(folder: Path) -> bool:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return False
    c = read_json(cfg)
    return c.get("model_type") == "clip" or "CLIPModel" in (c.get("architectures") or [])


def image_config(folder: Path) -> ImageConfig:
    path = folder / "preprocessor_config.json"  # transformers 4.x and most Hub repos
    if path.is_file():
        p = read_json(path)
    elif (folder / "processor_config.json").is_file():  # transformers 5 nests it in the processor's config
        path = folder / "processor_config.json"
        p = read_json(path).get("image_processor", {})
    else:
        raise UnknownFormatError(
            f"{folder} has a CLIPModel but no preprocessor_config.json or processor_config.json "
            "(save the CLIPProcessor too)"
        )
    size = p.get("size", 224)
    crop = p.get("crop_size", size)
    if isinstance(size, dict):
        if "shortest_edge" in size:
            size, mode = int(size["shortest_edge"]), "shortest"
        else:
            size, mode = int(size["height"]), "squash"
    else:
        size, mode = int(size), "shortest"
    if isinstance(crop, dict):
        crop = (int(crop["height"]), int(crop["width"]))
    elif crop is not None:
        crop = (int(crop), int(crop))
    resample = p.get("resample", 3)
    if resample not in _RESAMPLE:
        raise UnknownFormatError(f"{path}: resample {resample} not supported (nearest, bilinear, bicubic)")
    # transformers 5's CLIPImageProcessor resizes uint8 tensors with torchvision; the *Pil classes use PIL
    kind = str(p.get("image_processor_type", "CLIPImageProcessor"))
    return ImageConfig(
        size=size if p.get("do_resize", True) else 0,
        crop_size=crop if p.get("do_center_crop", True) else None,
        mean=tuple(p.get("image_mean", ImageConfig.mean)) if p.get("do_normalize", True) else (0.0, 0.0, 0.0),
        std=tuple(p.get("image_std", ImageConfig.std)) if p.get("do_normalize", True) else (1.0, 1.0, 1.0),
        interpolation=_RESAMPLE[resample],
        resize_mode=mode,
        backend="pil" if kind.endswith("Pil") else "torchvision",
        crop_rounding="floor",
        rescale_factor=float(p.get("rescale_factor", 1 / 255)) if p.get("do_rescale", True) else 1.0,
    )


def load(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    from transformers import CLIPModel

    model = from_pretrained(CLIPModel, folder, what="CLIPModel", trust_remote_code=trust_remote_code)
    text = text_preprocessor(folder, fallback_max_length=int(model.config.text_config.max_position_embeddings))
    text.max_length = min(text.max_length, int(model.config.text_config.max_position_embeddings))
    text.tokenizer.enable_truncation(max_length=text.max_length)
    image = ImagePreprocessor(image_config(folder))
    embed_dim = int(model.config.projection_dim)
    return {
        "towers": {"text": HFCLIPTower(model, "text"), "image": HFCLIPTower(model, "image")},
        "preprocessors": {"text": text, "image": image},
        "embed_dim": embed_dim,
        "logit_scale": float(model.logit_scale.exp().item()),
        "spec": None,
    }
