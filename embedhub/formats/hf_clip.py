"""transformers CLIP-family folders: ``config.json`` of a ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model``
+ processor files. SigLIP keeps its ``logit_bias`` (zero-shot with a sigmoid), pads text to its
processor's max length, and SigLIP 2's NaFlex images keep their variable patch grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from embedhub._io.folder import ModelFolder
from embedhub.errors import UnknownFormatError
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.modules.hf import build_transformers
from embedhub.modules.preprocess import (
    ImageConfig,
    ImagePreprocessor,
    NaFlexImagePreprocessor,
    TransformersTextPreprocessor,
    text_preprocessor,
    transformers_tokenizer,
)
from embedhub.modules.towers import HFCLIPTower

NAME = "transformers-clip"
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


#: model_type -> the transformers class of the dual-tower model embedhub loads
SUPPORTED = {"clip": "CLIPModel", "siglip": "SiglipModel", "siglip2": "Siglip2Model"}
#: model types and architecture prefixes of the CLIP family (their folders come here, to load or be refused by name)
_FAMILY_TYPES = ("clip", "siglip", "siglip2")
_FAMILY_ARCHS = ("CLIP", "Siglip", "Siglip2")


def _family(c: dict[str, Any]) -> bool:
    mt = c.get("model_type")
    archs = c.get("architectures")
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    return (isinstance(mt, str) and (mt in _FAMILY_TYPES or mt.startswith(tuple(t + "_" for t in _FAMILY_TYPES)))) \
        or any(a.startswith(_FAMILY_ARCHS) for a in archs)


def architecture(folder: ModelFolder) -> tuple[str, str]:
    """``(model_type, transformers class)`` of a CLIP-family folder embedhub loads; an
    :class:`UnknownFormatError` naming the architecture found otherwise (a vision- or text-only
    model, a classifier head, ...).

    >>> architecture(ModelFolder("siglip-base-patch16-224"))  # doctest: +SKIP
    ('siglip', 'SiglipModel')
    """
    view = folder.config("config.json")
    mt = view.data.get("model_type")
    archs = view.data.get("architectures")
    found = ", ".join(a for a in archs if isinstance(a, str)) if isinstance(archs, list) and archs else None
    cls = SUPPORTED.get(mt) if isinstance(mt, str) else None
    if cls is None or (found is not None and cls not in archs):
        raise UnknownFormatError(
            f"{view.file}: architecture {found or '(none listed)'} (model_type {mt!r}) is not one embedhub loads; "
            f"it loads the dual-tower {', '.join(SUPPORTED.values())} (model_type {', '.join(SUPPORTED)}) with "
            "both towers and their processor files")
    return mt, cls


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


#: SigLIP image-processor keys (transformers' SiglipImageProcessor / Siglip2ImageProcessor and their Pil
#: variants): each is read below; any other key is refused by name
_SIGLIP_IMAGE_KEYS = {"do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean", "image_std",
                      "image_processor_type", "processor_class", "resample", "rescale_factor", "size"}
_NAFLEX_KEYS = _SIGLIP_IMAGE_KEYS - {"size"} | {"patch_size", "max_num_patches"}
#: the image processor each architecture's processor class uses
_IMAGE_PROCESSORS = {"clip": ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast"),
                     "siglip": ("SiglipImageProcessor", "SiglipImageProcessorPil", "SiglipImageProcessorFast"),
                     "siglip2": ("Siglip2ImageProcessor", "Siglip2ImageProcessorFast")}
#: what ``Siglip2Processor.__call__`` passes its image processor (its ``images_kwargs``): these win over the
#: image processor's own config, so a config that says otherwise is refused (the two calls would differ)
_NAFLEX_CALL = {"patch_size": 16, "max_num_patches": 256}


def _processor_view(folder: ModelFolder, what: str):
    if folder.has("preprocessor_config.json"):  # transformers 4.x and most Hub repos
        return folder.config("preprocessor_config.json")
    if folder.has("processor_config.json"):  # transformers 5 nests it in the processor's config
        return folder.config("processor_config.json").view("image_processor", {})
    raise UnknownFormatError(
        f"{folder.root} has a {what} but no preprocessor_config.json or processor_config.json "
        f"(save its processor too)"
    )


def image_config(folder: Path | ModelFolder, model_type: str = "clip") -> ImageConfig:
    """The image preprocessing of a CLIP-family folder, read from its image-processor config with the
    defaults of that processor class (SigLIP: squash to ``size``, no crop, mean/std 0.5).

    >>> image_config("siglip-base-patch16-224", "siglip").resize_mode  # doctest: +SKIP
    'squash'
    """
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    p = _processor_view(folder, SUPPORTED.get(model_type, "CLIPModel"))
    kind = p.str("image_processor_type", _IMAGE_PROCESSORS[model_type][0])
    if kind not in _IMAGE_PROCESSORS[model_type]:
        raise p.error("image_processor_type", f"one of {', '.join(_IMAGE_PROCESSORS[model_type])} (the "
                      f"{SUPPORTED[model_type]} processor's)", kind)
    siglip = model_type != "clip"
    if siglip:
        p.only(_NAFLEX_KEYS if model_type == "siglip2" else _SIGLIP_IMAGE_KEYS, what=f"{kind} key")
        if p.data.get("do_convert_rgb") is False:
            raise p.error("do_convert_rgb", "true (embedhub feeds RGB images)", False)
    if model_type == "siglip2":
        size: Any = (1, 1)  # NaFlex: no fixed size
    elif siglip:
        size = _size(p, "size", None) if "size" in p else (224, 224)
    else:
        size = _size(p, "size", 224)
    if size is None or len(size) != 2:
        raise p.error("size", "an integer or {shortest_edge} / {height, width}", p.data.get("size"))
    if size[1] == "shortest":
        size, mode = size[0], "shortest"
    else:
        if size[0] != size[1]:
            raise p.error("size", "a square {height, width} (embedhub's squash resize is square)", p.data["size"])
        size, mode = size[0], "squash"
    crop = _size(p, "crop_size", size) if not siglip else None
    if crop is not None:
        crop = (crop[0], crop[0]) if crop[1] == "shortest" else crop
    resample = p.int("resample", 2 if model_type == "siglip2" else 3)
    if resample not in _RESAMPLE:
        raise p.error("resample", f"one of {sorted(_RESAMPLE)} (nearest, bilinear, bicubic)", resample)
    # transformers 5's image processors resize uint8 tensors with torchvision; the *Pil classes use PIL
    normalize = p.bool("do_normalize", True)
    mean, std = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) if siglip else (ImageConfig.mean, ImageConfig.std)
    do_resize = p.bool("do_resize", True)
    if model_type == "siglip2":
        if not do_resize:
            raise p.error("do_resize", "true (NaFlex images are resized to whole patches)", False)
        size, crop = 1, (1, 1)  # NaFlex: each image gets its own size (NaFlexImagePreprocessor)
    return ImageConfig(
        size=size if do_resize else 0,
        crop_size=crop if (not siglip and p.bool("do_center_crop", True)) or model_type == "siglip2" else None,
        mean=p.floats("image_mean", mean, length=3) if normalize else (0.0, 0.0, 0.0),
        std=p.floats("image_std", std, length=3, positive=True) if normalize else (1.0, 1.0, 1.0),
        interpolation=_RESAMPLE[resample],
        resize_mode=mode,
        backend="pil" if kind.endswith("Pil") else "torchvision",
        crop_rounding="floor",
        rescale_factor=p.float("rescale_factor", 1 / 255, positive=True) if p.bool("do_rescale", True) else 1.0,
    )


def image_preprocessor(folder: ModelFolder, model_type: str, model: Any = None) -> ImagePreprocessor:
    """The folder's image preprocessor: a fixed-size one, or SigLIP 2's NaFlex patches (``model``: the
    loaded ``Siglip2Model``, whose patch size must be the processor's).

    >>> image_preprocessor(folder, "siglip2", model).max_num_patches  # doctest: +SKIP
    256
    """
    cfg = image_config(folder, model_type)
    if model_type != "siglip2":
        return ImagePreprocessor(cfg)
    p = _processor_view(folder, "Siglip2Model")
    for key, value in _NAFLEX_CALL.items():
        if p.int(key, value) != value:
            raise p.error(key, f"{value} (Siglip2Processor passes {key}={value} to its image processor, so the "
                          "processor and the image processor called alone would give different patches)", p.data[key])
    patch = int(model.config.vision_config.patch_size)
    if patch != _NAFLEX_CALL["patch_size"]:
        raise UnknownFormatError(f"{folder / 'config.json'}: vision_config.patch_size is {patch} but "
                                 f"Siglip2Processor cuts images into {_NAFLEX_CALL['patch_size']}-pixel patches")
    return NaFlexImagePreprocessor(cfg, **_NAFLEX_CALL)


#: text defaults of each processor class's ``__call__`` (transformers' ``text_kwargs``): SigLIP 2 pads to 64
#: tokens; SigLIP's model cards call its processor with ``padding="max_length"`` (the tokenizer's
#: ``model_max_length``), the padding it was trained with
_TEXT_MAX_LENGTH = {"siglip2": 64}


class HFSiglipTower(HFCLIPTower):
    """One side of a transformers ``SiglipModel`` / ``Siglip2Model``: ``get_text_features`` or
    ``get_image_features`` (with SigLIP 2's ``pixel_attention_mask`` and ``spatial_shapes``).

    >>> HFSiglipTower(siglip_model, "text")(input_ids=ids, attention_mask=mask).shape  # doctest: +SKIP
    torch.Size([2, 768])
    """

    def image_features(self, batch: dict[str, torch.Tensor]) -> Any:
        if "spatial_shapes" in batch:  # NaFlex (Siglip2): patches of each image's own shape
            return self.clip.get_image_features(pixel_values=batch["pixel_values"],
                                                pixel_attention_mask=batch["pixel_attention_mask"],
                                                spatial_shapes=batch["spatial_shapes"])
        return super().image_features(batch)

    @property
    def output_dim(self) -> int:
        cfg = self.clip.config
        if self.modality == "text":
            return int(getattr(cfg.text_config, "projection_size", None) or cfg.text_config.hidden_size)
        return int(cfg.vision_config.hidden_size)


def _siglip_text(folder: ModelFolder, model: Any, model_type: str, *,
                 trust_remote_code: bool) -> TransformersTextPreprocessor:
    """SigLIP's tokenizer (transformers' own class) padded as its processor pads: to ``max_length``."""
    if folder.has("processor_config.json"):
        proc = folder.config("processor_config.json")
        call = [k for k in ("text_kwargs", "images_kwargs", "common_kwargs") if k in proc]
        if call:
            raise proc.error(call[0], "absent (call options saved with the processor are not reproduced)")
    tok = transformers_tokenizer(folder, trust_remote_code=trust_remote_code)
    positions = int(model.config.text_config.max_position_embeddings)
    length = _TEXT_MAX_LENGTH.get(model_type)
    if length is None:
        mml = getattr(tok, "model_max_length", None)
        # a tokenizer without a model_max_length (SigLIP 2's fixed-resolution repos ship Gemma's): their model
        # cards pad to the text model's positions (padding="max_length", max_length=64)
        length = mml if isinstance(mml, int) and 1 <= mml < 1_000_000 else positions
    if length > positions:
        raise UnknownFormatError(
            f"{folder.root}: the processor pads text to {length} tokens but the text model has "
            f"max_position_embeddings {positions}")
    return TransformersTextPreprocessor(tok, max_length=length, pad_to=length)


class HFCLIPFormat(Format, name=NAME, marker="config.json", allow_patterns=ALLOW_PATTERNS):
    """transformers CLIP-family folders (``config.json`` of a ``CLIPModel``, ``SiglipModel`` or ``Siglip2Model``)."""

    def matches(self, folder: Path) -> bool:
        """A ``config.json`` of the CLIP family (``clip``, ``siglip``, ``siglip2``)."""
        config = self.marker_json(folder, errors=True)
        return isinstance(config, dict) and _family(config)

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """The text and image towers of a transformers CLIP or SigLIP model, with its processors' settings."""
        folder, options = self.opened(folder, options)
        trust_remote_code = options.trust_remote_code
        model_type, cls = architecture(folder)
        model = build_transformers(folder, cls, what=cls, trust_remote_code=trust_remote_code, expect=model_type)
        if model_type == "clip":
            text = text_preprocessor(folder, fallback_max_length=int(model.config.text_config.max_position_embeddings),
                                     trust_remote_code=trust_remote_code)
            text.max_length = min(text.max_length, int(model.config.text_config.max_position_embeddings))
            text.tokenizer.enable_truncation(max_length=text.max_length)
            towers = {"text": HFCLIPTower(model, "text"), "image": HFCLIPTower(model, "image")}
            embed_dim, bias = int(model.config.projection_dim), None
        else:
            text = _siglip_text(folder, model, model_type, trust_remote_code=trust_remote_code)
            towers = {"text": HFSiglipTower(model, "text"), "image": HFSiglipTower(model, "image")}
            embed_dim, bias = towers["text"].output_dim, float(model.logit_bias.item())
            if towers["image"].output_dim != embed_dim:
                raise UnknownFormatError(
                    f"{folder / 'config.json'}: the text tower gives {embed_dim} dimensions and "
                    f"the image tower {towers['image'].output_dim}; they must embed into one space")
        return ModelParts(
            towers=towers,
            preprocessors={"text": text, "image": image_preprocessor(folder, model_type, model)},
            embed_dim=embed_dim,
            logit_scale=float(model.logit_scale.exp().item()),
            logit_bias=bias,
        )


FORMAT = HFCLIPFormat()
