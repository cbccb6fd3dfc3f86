"""open_clip models: their configs checked field by field (no code, no download), the model built from them,
their image preprocessing, and the tower that runs one side of a built model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub.errors import ConfigError, UnknownFormatError, require
from embedhub.modules.preprocess import ImageConfig
from embedhub.modules.towers import CLIPTower

_INTERP = {"bicubic", "bilinear", "nearest"}

#: model_cfg keys passed to open_clip's CLIP / CustomTextCLIP (everything else is refused)
_MODEL_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
               "nonscalar_logit_scale", "custom_text", "cast_dtype", "output_dict"}
#: keys of vision_cfg / text_cfg that name code, another repo or a file: only with trust_remote_code
_REMOTE = {"hf_model_name": "a Hugging Face text model (a download of another repository)",
           "hf_tokenizer_name": "a Hugging Face tokenizer"}
_POSITIVE_INTS = {"width", "head_width", "patch_size", "image_size", "context_length", "vocab_size", "heads",
                  "layers", "attn_pooler_queries", "attn_pooler_heads"}


def _check_dataclass_cfg(view: ConfigView, cls: Any, *, trust_remote_code: bool,
                         local_text_config: bool = False) -> dict[str, Any]:
    """``view`` checked against open_clip's config dataclass ``cls``: known fields only, each of the
    type its default has; kwargs dicts may hold only plain numbers, booleans and strings."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    view.only(fields, what=f"{cls.__name__} field")
    out: dict[str, Any] = {}
    for key, value in view.data.items():
        if value is None:
            out[key] = None
            continue
        if key == "hf_model_name" and value and not isinstance(value, str):
            raise view.error(key, "the name of a Hugging Face text model", value)
        if key in _REMOTE and value and not (trust_remote_code or local_text_config) and key != "hf_tokenizer_name":
            raise ConfigError(
                f"{view.file}: {view.prefix}{key} names {_REMOTE[key]} ({value!r}) and the folder holds no config.json "
                "of it; put that model's transformers config.json beside open_clip_config.json (embedhub builds it "
                "from there and never fetches another repository or runs its code unless you pass "
                "trust_remote_code=True)", file=str(view.file), key=view.prefix + key)
        if key == "timm_model_name":
            timm = require("timm", "open-clip", "timm image towers")
            if not isinstance(value, str) or ":" in value or not timm.is_model(value):
                raise view.error(key, "the name of an architecture built into timm (no hf-hub: or local paths)",
                                 value)
        elif key in ("layers", "image_size") and isinstance(value, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
                raise view.error(key, "a positive integer or a list of them", value)
        elif key in ("act_kwargs", "norm_kwargs", "tokenizer_kwargs"):
            sub = view.view(key)
            bad = [k for k, v in sub.data.items() if not isinstance(v, (int, float, bool, str)) or k == "device"]
            if bad:
                raise sub.error(bad[0], "a plain number, boolean or string", sub.data[bad[0]])
        else:
            default = fields[key].default
            if isinstance(default, bool):
                view.bool(key)
            elif isinstance(default, int):
                view.int(key, min=1 if key in _POSITIVE_INTS else None)
            elif isinstance(default, float):
                view.float(key)
            elif isinstance(default, str):
                view.str(key)
            elif key in _POSITIVE_INTS:
                view.int(key, min=1)
        out[key] = value
    if view.data.get("timm_model_pretrained"):
        raise view.error("timm_model_pretrained", "false (pretrained timm weights would be downloaded)", True)
    return out


def validate_model_cfg(model_cfg: dict[str, Any] | ConfigView, *, trust_remote_code: bool = False,
                       local_text_config: bool = False) -> dict[str, Any]:
    """An open_clip ``model_cfg`` allow-listed and type-checked (a :class:`ConfigError` naming the key);
    ``local_text_config``: an ``hf_model_name`` text tower is built from a transformers config the caller has."""
    open_clip = require("open_clip", "open-clip", "loading open_clip models")
    view = model_cfg if isinstance(model_cfg, ConfigView) else ConfigView(model_cfg, "open_clip model_cfg")
    if "multimodal_cfg" in view.data:
        raise UnknownFormatError("open_clip CoCa models (multimodal_cfg) are not supported for embedding")
    view.only(_MODEL_KEYS, what="model_cfg key")
    cfg = {k: v for k, v in view.data.items()}
    cfg["embed_dim"] = view.int("embed_dim", min=1, max=1 << 16)
    cfg["vision_cfg"] = _check_dataclass_cfg(view.view("vision_cfg"), open_clip.model.CLIPVisionCfg,
                                             trust_remote_code=trust_remote_code)
    cfg["text_cfg"] = _check_dataclass_cfg(view.view("text_cfg"), open_clip.model.CLIPTextCfg,
                                           trust_remote_code=trust_remote_code, local_text_config=local_text_config)
    text = view.view("text_cfg")
    if text.data.get("hf_model_name"):
        from open_clip.hf_model import _POOLERS

        text.str("hf_pooler_type", None, choices=sorted(_POOLERS))
        text.str("hf_proj_type", None, choices=["linear", "mlp"])
    for key in ("quick_gelu", "nonscalar_logit_scale", "custom_text", "output_dict"):
        view.bool(key, False)
    for key in ("init_logit_scale", "init_logit_bias"):
        view.float(key, None)
    view.str("cast_dtype", None, choices=["fp16", "bf16", "fp32"])
    return cfg


def text_config(folder: ModelFolder, model_cfg: dict[str, Any]):
    """The transformers config of an ``hf_model_name`` text tower, from the folder's ``config.json`` (an
    architecture the installed transformers ships and open_clip's ``arch_dict`` knows, validated key by key;
    never fetched), or ``None`` when there is no such tower or no such file.

    >>> text_config(ModelFolder("xlm-roberta-clip"), model_cfg).model_type  # doctest: +SKIP
    'xlm-roberta'
    """
    if not model_cfg.get("text_cfg", {}).get("hf_model_name") or not folder.has("config.json"):
        return None
    from open_clip.hf_configs import arch_dict

    from embedhub.modules.hf import transformers_config

    config = transformers_config(folder, trust_remote_code=False)
    if config.model_type not in arch_dict:
        view = folder.config("config.json")
        raise view.error("model_type", f"one of open_clip's text architectures {sorted(arch_dict)}", config.model_type)
    return config


def build_open_clip(model_cfg: dict[str, Any], *, trust_remote_code: bool = False, hf_config: Any = None) -> Any:
    """An open_clip model (random weights) from an open_clip ``model_cfg``, validated field by field as a loaded
    folder's is: the model class open_clip's factory picks, without any download; an ``hf_model_name`` text tower
    is built from ``hf_config`` (see :func:`text_config`) when given.

    >>> build_open_clip(open_clip.get_model_config("ViT-B-32"))  # doctest: +SKIP
    """
    open_clip = require("open_clip", "open-clip", "loading open_clip models")
    cfg = copy.deepcopy(validate_model_cfg(model_cfg, trust_remote_code=trust_remote_code,
                                           local_text_config=hf_config is not None))
    if "timm_model_name" in cfg["vision_cfg"]:
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if cfg["text_cfg"].get("hf_model_name"):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or bool(cfg["text_cfg"].get("hf_model_name"))
    cfg.pop("cast_dtype", None)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    if hf_config is None:
        return cls(**cfg)
    import tempfile

    # open_clip's HFTextEncoder reads AutoConfig.from_pretrained(hf_model_name): a folder holding only the
    # validated config (no auto_map, no code), so nothing is fetched and the modules are exactly open_clip's
    with tempfile.TemporaryDirectory(prefix="embedhub-hf-text-") as tmp:
        hf_config.to_json_file(str(Path(tmp) / "config.json"))
        cfg["text_cfg"]["hf_model_name"] = tmp
        return cls(**cfg)


def open_clip_image_config(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | ConfigView | None = None
                           ) -> ImageConfig:
    """The image preprocessing ``embedhub.load`` uses for an open_clip folder with this config."""
    pp = preprocess_cfg or {}
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    p = pp if isinstance(pp, ConfigView) else ConfigView(pp, "open_clip preprocess_cfg")
    size = p.data.get("size")
    if size is None:
        size = model_cfg["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise p.error("size", "a square size (one integer, or two equal ones)", size)
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 16384:
        raise p.error("size", "an integer in [1, 16384]", size)
    mode = p.str("resize_mode", "shortest", choices=["shortest", "squash", "longest"])
    interp = p.str("interpolation", "bicubic", choices=sorted(_INTERP))
    return ImageConfig(
        size=int(size),
        crop_size=None if mode == "squash" else (int(size), int(size)),
        mean=p.floats("mean", tuple(OPENAI_DATASET_MEAN), length=3),
        std=p.floats("std", tuple(OPENAI_DATASET_STD), length=3, positive=True),
        interpolation=interp,
        resize_mode=mode,
        backend="pil",
        crop_rounding="round",
    )


class OpenCLIPTower(CLIPTower):
    """One side of an open_clip model: ``encode_text`` or ``encode_image`` (unnormalised)."""

    def text_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.clip.encode_text(batch["input_ids"])

    def image_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.clip.encode_image(batch["pixel_values"])

    @property
    def output_dim(self) -> int:
        proj = self.clip.text_projection if self.modality == "text" else getattr(self.clip.visual, "proj", None)
        if isinstance(proj, nn.Linear):
            return int(proj.out_features)
        if proj is not None:
            return int(proj.shape[-1])
        return int(getattr(self.clip.visual, "output_dim", 0))

    def attention_shape(self) -> tuple[int, int]:
        tr = self.clip.transformer if self.modality == "text" else getattr(self.clip.visual, "transformer", None)
        blocks = getattr(tr, "resblocks", None)
        if blocks:  # nn.MultiheadAttention in the residual blocks
            attn = blocks[0].attn
            return int(attn.num_heads), int(attn.embed_dim)
        return 0, 0
