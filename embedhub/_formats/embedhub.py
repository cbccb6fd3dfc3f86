"""embedhub's own format: ``embedhub_config.json`` + ``model.safetensors`` + per-tower files.

Layout::

    embedhub_config.json   # format version, embed_dim, logit_scale, templates, one entry per tower
    model.safetensors      # every torch tower's weights, keys prefixed "text." / "image."
    text/config.json       # transformers config of the text backbone
    text/tokenizer.json    # fast tokenizer (or open_clip's tokenizer files)
    onnx/text.onnx         # optional: ONNX graphs written by `embedhub export`
    onnx/image.onnx
    onnx/export_metadata.json

A tower entry names its backbone (``{"library": "transformers"}`` or
``{"library": "timm", "architecture": "efficientnet_lite0", "kwargs": {...}}``), its pooling (text),
its head (dense layers, normalise), its preprocessing (tokenizer or image config) and, when
exported, its ONNX graph (``"onnx": "onnx/text.onnx"``). A folder may hold torch weights, ONNX
graphs or both; ``backend="auto"`` takes ONNX when every tower has a graph.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from .._errors import UnknownFormatError, require
from .._modules import Head, Pooling, TimmImageTower, TransformersTextTower
from .._preprocess import load_preprocessor
from .._weights import find_safetensors, load_strict, read_safetensors
from ._hf import read_json

if TYPE_CHECKING:
    from .._model import EmbeddingModel

NAME = "embedhub"
MARKER = "embedhub_config.json"
FORMAT_VERSION = 1
ALLOW_PATTERNS = ["*.json", "*/*.json", "*.safetensors", "*.txt", "*/*.txt", "*/*.model", "onnx/*.onnx", "onnx/*.data"]


def matches(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _text_tower(folder: Path, spec: dict[str, Any], trust_remote_code: bool) -> nn.Module:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(
        str(folder / "text"), local_files_only=True, trust_remote_code=trust_remote_code
    )
    backbone = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    return TransformersTextTower(backbone, Pooling(spec["pooling"]), Head(**spec.get("head", {})))


def _image_tower(spec: dict[str, Any]) -> nn.Module:
    bb = spec["backbone"]
    timm = require("timm", "open-clip", "timm image towers")
    backbone = timm.create_model(bb["architecture"], pretrained=False, num_classes=0, **bb.get("kwargs", {}))
    tower = TimmImageTower(backbone, Head(**spec.get("head", {})))
    tower.architecture = (bb["architecture"], dict(bb.get("kwargs", {})))
    return tower


#: the backbone library each modality's torch tower is built with
_BACKBONES = {"text": "transformers", "image": "timm"}


def has_onnx(folder: Path) -> bool:
    """Whether ``folder`` is in embedhub's format and every tower has an ONNX graph."""
    if not matches(folder):
        return False
    towers = read_json(folder / MARKER).get("towers", {})
    return bool(towers) and all(spec.get("onnx") for spec in towers.values())


def load(
    folder: Path,
    *,
    trust_remote_code: bool = False,
    backend: str = "torch",
    device: Any = None,
    threads: int | None = None,
) -> dict[str, Any]:
    cfg = read_json(folder / MARKER)
    version = cfg.get("format_version")
    if version != FORMAT_VERSION:
        raise UnknownFormatError(f"{folder / MARKER}: format_version {version!r}; this embedhub reads {FORMAT_VERSION}")
    specs = cfg.get("towers", {})
    if not specs:
        raise UnknownFormatError(f"{folder / MARKER} names no towers")
    unknown = [m for m in specs if m not in _BACKBONES]
    if unknown:
        raise UnknownFormatError(f"{folder / MARKER}: unknown modality {unknown[0]!r} (expected text, image)")
    if backend == "auto":
        backend = "onnx" if has_onnx(folder) else "torch"
    pre = {m: load_preprocessor(folder / m, spec["preprocess"]) for m, spec in specs.items()}
    towers: dict[str, Any] = {}
    if backend == "onnx":
        from .._backends import OnnxRunner, check_int8_cpu

        missing = [m for m, spec in specs.items() if not spec.get("onnx")]
        if missing:
            raise UnknownFormatError(
                f"{folder} has no ONNX graph for its {' and '.join(missing)} tower; write one with "
                f"`embedhub export {folder} --output DIR`, or load with backend='torch'"
            )
        towers = {m: OnnxRunner(folder / spec["onnx"], device=device, threads=threads) for m, spec in specs.items()}
        if device.type == "cpu":
            check_int8_cpu(folder)
    else:
        for m, spec in specs.items():
            lib = spec.get("backbone", {}).get("library")
            if lib is None:
                raise UnknownFormatError(f"{folder} has only an ONNX graph for its {m} tower; use backend='onnx'")
            if lib != _BACKBONES[m]:
                raise UnknownFormatError(f"{m} backbone library {lib!r} not supported (expected {_BACKBONES[m]})")
            towers[m] = _text_tower(folder, spec, trust_remote_code) if m == "text" else _image_tower(spec)
        load_strict(nn.ModuleDict(towers), read_safetensors(find_safetensors(folder)), what="embedhub model")
    return {
        "towers": towers,
        "preprocessors": pre,
        "embed_dim": int(cfg["embed_dim"]),
        "logit_scale": cfg.get("logit_scale"),
        "templates": cfg.get("templates"),
        "spec": cfg,
    }


def tower_spec(modality: str, tower: Any) -> dict[str, Any]:
    """The config entry of a torch tower; an error for towers this format cannot rebuild."""
    if isinstance(tower, TransformersTextTower):
        return {"backbone": {"library": "transformers"}, "pooling": tower.pooling.modes, "head": tower.head.spec()}
    if isinstance(tower, TimmImageTower) and hasattr(tower, "architecture"):
        arch, kwargs = tower.architecture
        return {"backbone": {"library": "timm", "architecture": arch, "kwargs": kwargs}, "head": tower.head.spec()}
    raise NotImplementedError(
        f"the {modality} tower ({type(tower).__name__}) cannot be written as torch weights in embedhub's format; "
        "models loaded from open_clip or transformers CLIP folders keep their own format (or export to ONNX)"
    )


def can_write_torch(model: EmbeddingModel) -> bool:
    """Whether every tower of ``model`` is a torch tower this format can rebuild."""
    try:
        for m in model.modalities:
            tower_spec(m, model.towers[m] if m in model.towers else None)
    except NotImplementedError:
        return False
    return True


def write(
    model: EmbeddingModel,
    folder: Path,
    *,
    torch_weights: bool = True,
    extra: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Path:
    """Write ``model`` atomically (a temporary folder renamed into place).

    ``torch_weights=False`` writes config and preprocessing only; ``extra(tmp_folder, config)``
    may add files (ONNX graphs) and config entries before the config is written.
    """
    from safetensors.torch import save_model

    specs = {
        m: tower_spec(m, model.towers[m] if m in model.towers else None) if torch_weights else {}
        for m in model.modalities
    }
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for m in model.modalities:
            specs[m]["preprocess"] = model.preprocessors[m].save(tmp / m)
        if torch_weights and "text" in specs:
            model.towers["text"].backbone.config.to_json_file(str(tmp / "text" / "config.json"))
        cfg = {
            "format_version": FORMAT_VERSION,
            "embed_dim": model.embed_dim,
            "logit_scale": model.logit_scale,
            "templates": list(model.templates),
            "towers": specs,
        }
        if extra is not None:
            extra(tmp, cfg)
        (tmp / MARKER).write_text(json.dumps(cfg, indent=2) + "\n")
        if torch_weights:
            save_model(nn.ModuleDict({m: model.towers[m] for m in model.modalities}), str(tmp / "model.safetensors"))
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


def save(model: EmbeddingModel, folder: Path) -> Path:
    """``model.save_pretrained``: torch weights in embedhub's format."""
    return write(model, folder)
