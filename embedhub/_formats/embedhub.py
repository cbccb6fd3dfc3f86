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
from .._folder import ConfigView, ModelFolder
from .._modules import ACTIVATIONS, POOLING_MODES, Head, Pooling, TimmImageTower, TransformersTextTower
from .._preprocess import load_preprocessor
from .._weights import find_safetensors, load_strict, read_safetensors

if TYPE_CHECKING:
    from .._model import EmbeddingModel

NAME = "embedhub"
MARKER = "embedhub_config.json"
FORMAT_VERSION = 1
ALLOW_PATTERNS = ["*.json", "*/*.json", "*.safetensors", "*.txt", "*/*.txt", "*/*.model", "onnx/*.onnx", "onnx/*.data"]


def matches(folder: Path) -> bool:
    return (folder / MARKER).is_file()


#: timm.create_model keyword arguments a config may set (others could load a checkpoint or fetch a config)
_TIMM_KWARGS = {"in_chans", "drop_rate", "drop_path_rate", "global_pool", "img_size"}


def _text_tower(folder: ModelFolder, spec: ConfigView, trust_remote_code: bool) -> tuple[nn.Module, int]:
    from transformers import AutoModel

    from ._hf import transformers_config

    config = transformers_config(folder.sub("text"), trust_remote_code=trust_remote_code)
    backbone = AutoModel.from_config(config)
    hidden = int(config.hidden_size)
    pooling = Pooling(spec.strings("pooling", choices=POOLING_MODES))
    head, width = _head(spec, hidden * len(pooling.modes))
    return TransformersTextTower(backbone, pooling, head), width


def _image_tower(spec: ConfigView) -> tuple[nn.Module, int]:
    bb = spec.view("backbone")
    bb.only({"library", "architecture", "kwargs"}, what="backbone key")
    timm = require("timm", "open-clip", "timm image towers")
    arch = bb.str("architecture")
    if ":" in arch or not timm.is_model(arch):
        raise bb.error("architecture", "the name of an architecture built into timm", arch)
    kwargs = bb.view("kwargs", {})
    kwargs.only(_TIMM_KWARGS, what="timm keyword argument")
    checked = {
        k: (kwargs.int(k, min=1) if k in ("in_chans", "img_size") else kwargs.str(k) if k == "global_pool"
            else kwargs.float(k, min=0.0, max=1.0))
        for k in kwargs.keys()
    }
    try:
        backbone = timm.create_model(arch, pretrained=False, num_classes=0, **checked)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise bb.error("kwargs", f"arguments {arch} accepts ({exc})", kwargs.data) from exc
    head, width = _head(spec, int(backbone.num_features))
    tower = TimmImageTower(backbone, head)
    tower.architecture = (arch, checked)
    return tower, width


def _head(spec: ConfigView, width: int) -> tuple[Head, int]:
    """The tower's head from its config, each dense layer's input checked against what feeds it."""
    head = spec.view("head", {})
    head.only({"dense", "normalize"}, what="head key")
    raw = head.data.get("dense") or []
    if not isinstance(raw, list):
        raise head.error("dense", "a list of dense layers", raw)
    layers = []
    for i, d in enumerate(raw):
        v = ConfigView(d, spec.file, prefix=f"{head.prefix}dense[{i}].")
        v.only({"in_features", "out_features", "bias", "activation"}, what="dense key")
        layer = {
            "in_features": v.int("in_features", min=1, max=1 << 20),
            "out_features": v.int("out_features", min=1, max=1 << 20),
            "bias": v.bool("bias", True),
            "activation": v.str("activation", "Identity", choices=sorted(ACTIVATIONS)),
        }
        if layer["in_features"] != width:
            raise v.error("in_features", f"{width} (the width of what feeds this layer)", layer["in_features"])
        width = layer["out_features"]
        layers.append(layer)
    return Head(layers, normalize=head.bool("normalize", False)), width


#: the backbone library each modality's torch tower is built with
_BACKBONES = {"text": "transformers", "image": "timm"}


def read_config(folder: ModelFolder) -> tuple[ConfigView, dict[str, ConfigView]]:
    """The validated top level of ``embedhub_config.json`` and its tower entries."""
    cfg = folder.config(MARKER)
    version = cfg.int("format_version")
    if version != FORMAT_VERSION:
        raise cfg.error("format_version", f"{FORMAT_VERSION} (the version this embedhub reads)", version)
    cfg.int("embed_dim", min=1, max=1 << 16)
    cfg.float("logit_scale", None, min=0.0)
    templates = cfg.data.get("templates")
    if templates is not None:
        ok = isinstance(templates, list) and all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
        if not ok:
            raise cfg.error("templates", "a list of strings with one '{}' each", templates)
    towers = cfg.view("towers")
    if not towers.data:
        raise towers.error("towers", "at least one tower (text, image)", {})
    towers.only(_BACKBONES, what="modality")
    return cfg, {m: towers.view(m) for m in towers.keys()}


def load(
    folder: Path | ModelFolder,
    *,
    trust_remote_code: bool = False,
    backend: str = "torch",
    device: Any = None,
    threads: int | None = None,
) -> dict[str, Any]:
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    cfg, specs = read_config(folder)
    embed_dim = cfg.int("embed_dim")
    for spec in specs.values():
        spec.only({"backbone", "pooling", "head", "preprocess", "onnx"}, what="tower key")
    if backend == "auto":
        backend = "onnx" if all(spec.str("onnx", None) for spec in specs.values()) else "torch"
    pre = {m: load_preprocessor(folder.sub(m) if folder.has_dir(m) else folder, spec.view("preprocess"),
                                file=folder / MARKER) for m, spec in specs.items()}
    towers: dict[str, Any] = {}
    if backend == "onnx":
        from .._backends import load_onnx_towers

        missing = [m for m, spec in specs.items() if not spec.str("onnx", None)]
        if missing:
            raise UnknownFormatError(
                f"{folder.root} has no ONNX graph for its {' and '.join(missing)} tower; write one with "
                f"`embedhub export {folder.root} --output DIR`, or load with backend='torch'"
            )
        graphs = {m: spec.str("onnx") for m, spec in specs.items()}
        towers = load_onnx_towers(folder, graphs, embed_dim=embed_dim, device=device, threads=threads)
    else:
        files = None
        for m, spec in specs.items():
            bb = spec.view("backbone", {})
            lib = bb.str("library", None, choices=sorted(set(_BACKBONES.values())))
            if lib is None:
                raise UnknownFormatError(f"{folder.root} has only an ONNX graph for its {m} tower; use backend='onnx'")
            if lib != _BACKBONES[m]:
                raise bb.error("library", repr(_BACKBONES[m]), lib)
            tower, width = _text_tower(folder, spec, trust_remote_code) if m == "text" else _image_tower(spec)
            if width != embed_dim:
                raise cfg.error("embed_dim", f"{width} (what the {m} tower outputs)", embed_dim)
            towers[m] = tower
        files = find_safetensors(folder)
        if all(spec.str("onnx", None) for spec in specs.values()):  # an export: its weights' hash is recorded
            from .._backends import check_sha256, read_export_metadata, recorded_sha256

            hashes = recorded_sha256(read_export_metadata(folder))
            if hashes is not None and "model.safetensors" in hashes:
                check_sha256(folder, "model.safetensors", files[0], hashes)
        load_strict(nn.ModuleDict(towers), read_safetensors(files), what="embedhub model")
        text_pre = pre.get("text")
        positions = getattr(getattr(towers.get("text"), "backbone", None), "config", None)
        positions = getattr(positions, "max_position_embeddings", None)
        if text_pre is not None and positions and text_pre.max_length > int(positions):
            raise specs["text"].view("preprocess").error(
                "max_length", f"at most {positions} (the text backbone's max_position_embeddings)",
                text_pre.max_length)
    return {
        "towers": towers,
        "preprocessors": pre,
        "embed_dim": embed_dim,
        "logit_scale": cfg.data.get("logit_scale"),
        "templates": cfg.data.get("templates"),
        "spec": cfg.data,
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
    check_writable(folder)
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
        if folder.exists() and any(folder.iterdir()):
            move_files_into(tmp, folder)
        else:
            if folder.exists():
                folder.rmdir()  # empty
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def check_writable(folder: Path) -> None:
    """Refuse to write a model into ``folder`` when it holds files and is not an embedhub model:
    embedhub writes its files alongside what it wrote before, and never touches anything else."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(f"{folder} exists and is not a folder; choose a new or empty folder to save into")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise FileExistsError(
            f"{folder} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''}) and is not an "
            "embedhub model folder; save into a new or empty folder (embedhub never replaces files it did not write)"
        )


def move_files_into(src: Path, dst: Path) -> None:
    """Move every file of ``src`` into ``dst``, each with an atomic rename, the config last; files
    already in ``dst`` that ``src`` does not hold stay as they are."""
    files = sorted((p for p in src.rglob("*") if p.is_file()), key=lambda p: p.name == MARKER)
    for f in files:
        target = dst / f.relative_to(src)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise FileExistsError(f"{target} exists and is not a regular file; embedhub will not replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
    shutil.rmtree(src)


def save(model: EmbeddingModel, folder: Path) -> Path:
    """``model.save_pretrained``: torch weights in embedhub's format."""
    return write(model, folder)
