"""transformers CLIP folders: ``config.json`` of a ``CLIPModel`` + processor files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._contract import Format, LoadOptions, ModelParts
from .._errors import UnknownFormatError
from .._folder import ModelFolder
from .._preprocess import ImageConfig, ImagePreprocessor
from ..modules import HFCLIPTower
from ._hf import build_transformers, text_preprocessor

NAME = "transformers-clip"
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def matches(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    c = ModelFolder(folder).read_json("config.json")
    if not isinstance(c, dict):
        return False
    archs = c.get("architectures")
    return c.get("model_type") == "clip" or (isinstance(archs, list) and "CLIPModel" in archs)


def _size(view, key: str, default: Any) -> tuple[int, str] | tuple[int, int] | None:
    """A transformers image-processor size: an int, or a dict of shortest_edge / height+width."""
    raw = view.data.get(key, default)
    if raw is None:
        return None
    if isinstance(raw, dict):
        sub = view.view(key)
        if "shortest_edge" in sub:
            return sub.int("shortest_edge", min=1, max=16384), "shortest"
        return sub.int("height", min=1, max=16384), sub.int("width", min=1, max=16384)
    return view.int(key, default, min=1, max=16384), "shortest"


def image_config(folder: Path | ModelFolder) -> ImageConfig:
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    if folder.has("preprocessor_config.json"):  # transformers 4.x and most Hub repos
        p = folder.config("preprocessor_config.json")
    elif folder.has("processor_config.json"):  # transformers 5 nests it in the processor's config
        p = folder.config("processor_config.json").view("image_processor", {})
    else:
        raise UnknownFormatError(
            f"{folder.root} has a CLIPModel but no preprocessor_config.json or processor_config.json "
            "(save the CLIPProcessor too)"
        )
    size = _size(p, "size", 224)
    if size is None or len(size) != 2:
        raise p.error("size", "an integer or {shortest_edge} / {height, width}", p.data.get("size"))
    if size[1] == "shortest":
        size, mode = size[0], "shortest"
    else:
        size, mode = size[0], "squash"
    crop = _size(p, "crop_size", size)
    if crop is not None:
        crop = (crop[0], crop[0]) if crop[1] == "shortest" else crop
    resample = p.int("resample", 3)
    if resample not in _RESAMPLE:
        raise p.error("resample", f"one of {sorted(_RESAMPLE)} (nearest, bilinear, bicubic)", resample)
    # transformers 5's CLIPImageProcessor resizes uint8 tensors with torchvision; the *Pil classes use PIL
    kind = p.str("image_processor_type", "CLIPImageProcessor")
    normalize = p.bool("do_normalize", True)
    return ImageConfig(
        size=size if p.bool("do_resize", True) else 0,
        crop_size=crop if p.bool("do_center_crop", True) else None,
        mean=p.floats("image_mean", ImageConfig.mean, length=3) if normalize else (0.0, 0.0, 0.0),
        std=p.floats("image_std", ImageConfig.std, length=3, positive=True) if normalize else (1.0, 1.0, 1.0),
        interpolation=_RESAMPLE[resample],
        resize_mode=mode,
        backend="pil" if kind.endswith("Pil") else "torchvision",
        crop_rounding="floor",
        rescale_factor=p.float("rescale_factor", 1 / 255, positive=True) if p.bool("do_rescale", True) else 1.0,
    )


def load(folder: Path | ModelFolder, *, trust_remote_code: bool = False) -> ModelParts:
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    model = build_transformers(folder, "CLIPModel", what="CLIPModel", trust_remote_code=trust_remote_code,
                               expect="clip")
    text = text_preprocessor(folder, fallback_max_length=int(model.config.text_config.max_position_embeddings),
                             trust_remote_code=trust_remote_code)
    text.max_length = min(text.max_length, int(model.config.text_config.max_position_embeddings))
    text.tokenizer.enable_truncation(max_length=text.max_length)
    image = ImagePreprocessor(image_config(folder))
    embed_dim = int(model.config.projection_dim)
    return ModelParts(
        towers={"text": HFCLIPTower(model, "text"), "image": HFCLIPTower(model, "image")},
        preprocessors={"text": text, "image": image},
        embed_dim=embed_dim,
        logit_scale=float(model.logit_scale.exp().item()),
    )


class HFCLIPFormat(Format):
    """transformers CLIP folders (``config.json`` of a ``CLIPModel``)."""

    name = NAME
    marker = "config.json"
    allow_patterns = tuple(ALLOW_PATTERNS)

    def matches(self, folder: Path) -> bool:
        return matches(folder)

    def load(self, folder: ModelFolder, options: LoadOptions) -> ModelParts:
        return load(folder, trust_remote_code=options.trust_remote_code)


FORMAT = HFCLIPFormat()
