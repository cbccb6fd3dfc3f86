"""A two-tower model for training: backbones (frozen or not), projection heads, a logit scale;
and its export to an embedhub model folder that ``embedhub.load`` reads. Also the other towers the
end-to-end recipe trains: an open_clip CLIP from scratch, built from an open_clip model config
(:func:`open_clip_config` is also the check of the ``open_clip_model`` config key).

>>> head_spec("linear", 384, 256)
[{'in_features': 384, 'out_features': 256, 'bias': False}]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

import embedhub
from embedhub import EmbeddingModel
from embedhub.modules import Head, ImageConfig, ImagePreprocessor, TimmImageTower, TransformersTextTower

from .errors import ConfigValueError


def head_spec(kind: str, in_dim: int, out_dim: int) -> list[dict[str, Any]]:
    if kind == "linear":
        return [{"in_features": in_dim, "out_features": out_dim, "bias": False}]
    if kind == "mlp":
        return [{"in_features": in_dim, "out_features": 2 * out_dim, "activation": "GELU"},
                {"in_features": 2 * out_dim, "out_features": out_dim}]
    raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")


class TextBackbone(nn.Module):
    """An SDK text tower without its final normalisation: token ids -> pooled (dense) features."""

    def __init__(self, tower: TransformersTextTower):
        super().__init__()
        self.backbone, self.pooling = tower.backbone, tower.pooling
        self.dense = tower.head.without_normalize()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.dense(self.pooling(hidden, attention_mask))


class DualEncoder(nn.Module):
    """Image and text backbones, a projection head on each, a learnable logit scale (log-space)."""

    def __init__(self, image_backbone: nn.Module, image_dim: int, text_backbone: nn.Module, text_dim: int,
                 *, embed_dim: int, head: str = "linear", init_logit_scale: float = math.log(1 / 0.07)):
        super().__init__()
        self.image_backbone, self.text_backbone = image_backbone, text_backbone
        self.image_head = Head(head_spec(head, image_dim, embed_dim))
        self.text_head = Head(head_spec(head, text_dim, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))

    def freeze(self, image: bool, text: bool) -> None:
        for module, frozen in ((self.image_backbone, image), (self.text_backbone, text)):
            module.requires_grad_(not frozen)
            if frozen:
                module.eval()

    def train(self, mode: bool = True) -> DualEncoder:
        """Like ``nn.Module.train``, but frozen backbones stay in eval mode (no dropout, fixed BatchNorm)."""
        super().train(mode)
        for module in (self.image_backbone, self.text_backbone):
            if not any(p.requires_grad for p in module.parameters()):
                module.eval()
        return self

    def encode_image(self, x: torch.Tensor, *, features: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.image_head(x if features else self.image_backbone(x)), dim=-1)

    def encode_text(self, x: Any, *, features: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.text_head(x if features else self.text_backbone(**x)), dim=-1)


def build_towers(cfg) -> tuple[nn.Module, int, Any, nn.Module, int, Any]:
    """(image backbone, its width, its preprocessor, text backbone, its width, its tokeniser) from the config."""
    import timm

    if cfg.image_tower == "efficientnet_lite0" and cfg.image_pretrained:
        from .towers import efficientnet_lite0, efficientnet_lite0_preprocess

        image = efficientnet_lite0(pretrained=True)  # weights converted into timm's architecture (TIMM_ARCH)
        pp = efficientnet_lite0_preprocess()
        mean, std = tuple(pp["mean"]), tuple(pp["std"])
    else:
        image = timm.create_model(cfg.image_tower, pretrained=False, num_classes=0)
        dc = image.pretrained_cfg
        mean, std = tuple(dc.get("mean", (0.5,) * 3)), tuple(dc.get("std", (0.5,) * 3))
    pre = ImagePreprocessor(ImageConfig(size=cfg.image_size, crop_size=(cfg.image_size, cfg.image_size),
                                        mean=mean, std=std, interpolation="bicubic"))
    sdk = embedhub.load(cfg.text_tower, device="cpu")
    if "text" not in sdk.towers or not isinstance(sdk.towers["text"], TransformersTextTower):
        raise ValueError(f"text tower {cfg.text_tower!r} must be a transformers text model (sentence-transformers, "
                         "embedhub)")
    text = TextBackbone(sdk.towers["text"])
    return image, int(image.num_features), pre, text, _width(text, sdk), sdk.preprocessors["text"]


def _width(text: TextBackbone, sdk: EmbeddingModel) -> int:
    dense = [m for m in text.dense if hasattr(m, "linear")]
    return dense[-1].linear.out_features if dense else sdk.embed_dim


def prompt_settings(cfg: Any, base: EmbeddingModel | None = None) -> dict[str, Any]:
    """The ``prompts`` and ``default_prompt_name`` a trained model keeps: the config's (``prompts``,
    ``default_prompt_name``), else those of ``base``, the model the text tower came from.

    >>> prompt_settings(SimCSEConfig.__new__(SimCSEConfig))  # doctest: +SKIP
    {'prompts': None, 'default_prompt_name': None}
    """
    prompts = dict(getattr(cfg, "prompts", None) or {})
    default = getattr(cfg, "default_prompt_name", "") or None
    if not prompts and base is not None:
        prompts = {k: v for k, v in (getattr(base, "prompts", None) or {}).items() if v}
        default = default or getattr(base, "default_prompt_name", None)
    return {"prompts": prompts or None, "default_prompt_name": default}


def to_embedding_model(model: DualEncoder, image_pre: Any, text_pre: Any, *,
                       templates: tuple[str, ...], prompts: dict[str, str] | None = None,
                       default_prompt_name: str | None = None) -> EmbeddingModel:
    """The trained model as an embedhub model (transformers text tower + timm image tower)."""
    layers = [m for m in model.text_backbone.dense if hasattr(m, "spec")] + list(model.text_head)
    text_head = Head([m.spec() for m in layers])
    for target, source in zip(text_head, layers):
        target.load_state_dict(source.state_dict())
    text = TransformersTextTower(model.text_backbone.backbone, model.text_backbone.pooling, text_head)
    image = TimmImageTower(model.image_backbone, model.image_head)  # rebuilt from the timm architecture it records
    return EmbeddingModel({"text": text, "image": image}, {"text": text_pre, "image": image_pre},
                          embed_dim=model.image_head[-1].linear.out_features, name="trained", format="embedhub",
                          logit_scale=model.logit_scale.detach().exp().item(), templates=templates,
                          prompts=prompts, default_prompt_name=default_prompt_name)


def images_to_array(images: Any) -> list:
    """uint8 grayscale/RGB arrays (or PIL images) -> RGB PIL images, decoded as ``encode`` decodes them."""
    from embedhub.modules import load_image

    return [load_image(img, i) for i, img in enumerate(images)]


# ------------------------------------------------------------------------------ open_clip from scratch
class OpenClipDual(nn.Module):
    """An open_clip CLIP trained from scratch, with the recipe's encode_image/encode_text interface."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, pixels: torch.Tensor, *, features: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_image(pixels), dim=-1)

    def encode_text(self, tokens: dict[str, torch.Tensor], *, features: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_text(tokens["input_ids"]), dim=-1)


def open_clip_config(name: str) -> dict[str, Any]:
    """An open_clip model config by name (bundled with open_clip, no download) or from a JSON file."""
    import open_clip

    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigValueError("open_clip_model", name, f"an existing JSON model config ({path} not found)")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            cfg = cfg.get("model_cfg", cfg)
        except (ValueError, AttributeError) as exc:
            raise ConfigValueError("open_clip_model", name,
                                   f"a JSON object of an open_clip model config ({exc})") from None
        if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            raise ConfigValueError("open_clip_model", name,
                                   "a JSON model config with embed_dim, vision_cfg and text_cfg (as open_clip's own)")
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ConfigValueError("open_clip_model", name,
                                   f"an open_clip model config name or .json file, e.g. {open_clip.list_models()[-4:]}")
    if "hf_tokenizer_name" in cfg.get("text_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ConfigValueError("open_clip_model", name, "a config with a CLIP text tower (Hugging Face text towers "
                               "need a download)")
    return cfg


def open_clip_towers(name: str, seed: int) -> tuple[OpenClipDual, Any, Any, dict[str, Any]]:
    """(model, image preprocessor, tokeniser, model config) of a randomly initialised open_clip CLIP."""
    from open_clip.tokenizer import SimpleTokenizer

    from embedhub.modules import ImagePreprocessor, OpenCLIPTextPreprocessor, build_open_clip, open_clip_image_config

    cfg = open_clip_config(name)
    torch.manual_seed(seed)
    clip = build_open_clip(cfg)
    context = int(cfg["text_cfg"].get("context_length", 77))
    text_pre = OpenCLIPTextPreprocessor(SimpleTokenizer(context_length=context), max_length=context)
    image_pre = ImagePreprocessor(open_clip_image_config(cfg))  # what embedhub.load will use for the saved folder
    return OpenClipDual(clip), image_pre, text_pre, cfg
