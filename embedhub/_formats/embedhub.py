"""embedhub's own format: ``embedhub_config.json`` + ``model.safetensors`` + per-tower files.

Layout::

    embedhub_config.json   # format version, embed_dim, logit_scale, templates, one entry per tower
    model.safetensors      # every tower's weights, keys prefixed "text." / "image."
    text/config.json       # transformers config of the text backbone
    text/tokenizer.json    # fast tokenizer

A tower entry names its backbone (``{"library": "transformers"}`` or
``{"library": "timm", "architecture": "efficientnet_lite0", "kwargs": {...}}``), its pooling (text),
its head (dense layers, normalise) and its preprocessing (tokenizer or image config).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .._errors import UnknownFormatError, require
from .._modules import Head, Pooling, TimmImageTower, TransformersTextTower
from .._preprocess import HFTextPreprocessor, ImageConfig, ImagePreprocessor
from .._weights import find_safetensors, load_strict, read_safetensors
from ._hf import read_json

if TYPE_CHECKING:
    from .._model import EmbeddingModel

NAME = "embedhub"
MARKER = "embedhub_config.json"
FORMAT_VERSION = 1
ALLOW_PATTERNS = ["*.json", "*/*.json", "*.safetensors", "*.txt", "*/*.txt"]


def matches(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _text_tower(folder: Path, spec: dict[str, Any], trust_remote_code: bool):
    from transformers import AutoConfig, AutoModel

    bb = spec.get("backbone", {})
    if bb.get("library") != "transformers":
        raise UnknownFormatError(f"text backbone library {bb.get('library')!r} not supported (expected transformers)")
    sub = folder / "text"
    config = AutoConfig.from_pretrained(str(sub), local_files_only=True, trust_remote_code=trust_remote_code)
    backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    tower = TransformersTextTower(backbone, Pooling(spec["pooling"]), Head(**spec.get("head", {})))
    pre = spec["preprocess"]
    text = HFTextPreprocessor(
        sub / pre.get("file", "tokenizer.json"),
        max_length=int(pre["max_length"]),
        pad_id=pre.get("pad_id"),
        pad_to=pre.get("pad_to"),
        lowercase=pre.get("lowercase", False),
    )
    return tower, text


def _image_tower(spec: dict[str, Any]):
    bb = spec.get("backbone", {})
    if bb.get("library") != "timm":
        raise UnknownFormatError(f"image backbone library {bb.get('library')!r} not supported (expected timm)")
    timm = require("timm", "open-clip", "timm image towers")
    backbone = timm.create_model(bb["architecture"], pretrained=False, num_classes=0, **bb.get("kwargs", {}))
    tower = TimmImageTower(backbone, Head(**spec.get("head", {})))
    tower.architecture = (bb["architecture"], dict(bb.get("kwargs", {})))
    pre = dict(spec["preprocess"])
    pre.pop("kind", None)
    return tower, ImagePreprocessor(ImageConfig.from_dict(pre))


def load(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    cfg = read_json(folder / MARKER)
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise UnknownFormatError(f"{folder / MARKER}: format_version {version!r}; this embedhub reads {FORMAT_VERSION}")
    towers: dict[str, nn.Module] = {}
    pre: dict[str, Any] = {}
    for modality, spec in cfg.get("towers", {}).items():
        if modality == "text":
            towers["text"], pre["text"] = _text_tower(folder, spec, trust_remote_code)
        elif modality == "image":
            towers["image"], pre["image"] = _image_tower(spec)
        else:
            raise UnknownFormatError(f"{folder / MARKER}: unknown modality {modality!r} (expected text, image)")
    if not towers:
        raise UnknownFormatError(f"{folder / MARKER} names no towers")
    load_strict(nn.ModuleDict(towers), read_safetensors(find_safetensors(folder)), what="embedhub model")
    return {
        "towers": towers,
        "preprocessors": pre,
        "embed_dim": int(cfg["embed_dim"]),
        "logit_scale": cfg.get("logit_scale"),
        "templates": cfg.get("templates"),
        "spec": cfg,
    }


def tower_spec(modality: str, tower: nn.Module, preprocessor: Any) -> dict[str, Any]:
    if isinstance(tower, TransformersTextTower):
        return {
            "backbone": {"library": "transformers"},
            "pooling": tower.pooling.modes,
            "head": tower.head.spec(),
            "preprocess": preprocessor.config(),
        }
    if isinstance(tower, TimmImageTower) and hasattr(tower, "architecture"):
        arch, kwargs = tower.architecture
        return {
            "backbone": {"library": "timm", "architecture": arch, "kwargs": kwargs},
            "head": tower.head.spec(),
            "preprocess": preprocessor.config(),
        }
    raise NotImplementedError(
        f"the {modality} tower ({type(tower).__name__}) cannot be written in embedhub's format; "
        "models loaded from open_clip or transformers CLIP folders stay in their own format"
    )


def save(model: EmbeddingModel, folder: Path) -> Path:
    """Write ``model`` atomically (a temporary folder renamed into place)."""
    from safetensors.torch import save_model

    specs = {m: tower_spec(m, model.towers[m], model.preprocessors[m]) for m in model.modalities}
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        if "text" in specs:
            (tmp / "text").mkdir()
            model.towers["text"].backbone.config.to_json_file(str(tmp / "text" / "config.json"))
            model.preprocessors["text"].tokenizer.save(str(tmp / "text" / "tokenizer.json"))
        cfg = {
            "format_version": FORMAT_VERSION,
            "embed_dim": model.embed_dim,
            "logit_scale": model.logit_scale,
            "templates": list(model.templates),
            "towers": specs,
        }
        (tmp / MARKER).write_text(json.dumps(cfg, indent=2) + "\n")
        cpu = nn.ModuleDict({m: model.towers[m] for m in model.modalities})
        save_model(cpu, str(tmp / "model.safetensors"))
        if folder.exists():
            backup = folder.with_name(folder.name + ".old")
            os.replace(folder, backup)
            os.replace(tmp, folder)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
