"""Recipe configs: one dataclass per recipe, loadable from YAML and overridable as ``key=value``.

>>> cfg = load_config(ClipConfig, yaml_path=None, overrides=["lr=1e-3", "epochs=2"])
>>> cfg.lr, cfg.epochs
(0.001, 2)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

FASHION_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a grayscale picture of a {}.",
    "a product photo of a {}.",
)


@dataclass
class TrainConfig:
    """Settings every recipe shares (the loop, data, towers, optimiser)."""

    output: str = "runs/clip"  # run folder: checkpoints, log.jsonl, plot, final model in output/model
    seed: int = 0
    threads: int = 2  # torch intra-op threads on CPU
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast where the device supports it)
    # data
    data: str = "fashion-mnist"  # fashion-mnist | captions file (CSV/JSONL) beside its images | wds:<shard pattern>
    eval_data: str = ""  # pairs to evaluate on (same forms as data); "" = Fashion-MNIST test, or held-out pairs
    eval_pairs: int = 1000  # captioned data without eval_data: this many pairs (the first) are held out
    templates: tuple[str, ...] = FASHION_TEMPLATES
    holdout_classes: tuple[str, ...] = ()  # labelled sets: classes kept out of training, reported apart
    train_limit: int = 0  # 0 = all training samples
    eval_limit: int = 0  # 0 = all evaluation samples
    image_size: int = 96
    feature_cache: str = ""  # folder for frozen-tower features, reused by runs with the same towers and data
    # towers
    image_tower: str = "efficientnet_lite0"  # timm name (efficientnet_lite0 gets the packaged ImageNet weights)
    image_pretrained: bool = True
    text_tower: str = "all-MiniLM-L6-v2"  # any text model embedhub.load takes
    open_clip_model: str = ""  # from scratch: an open_clip model config name (e.g. ViT-B-32) or JSON file;
    #                            replaces image_tower/text_tower, trains both towers, saves an open_clip folder
    freeze_image: bool = True
    freeze_text: bool = True
    embed_dim: int = 256
    head: str = "linear"  # linear | mlp
    # optimisation
    epochs: int = 10
    batch_size: int = 256
    accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    grad_clip: float = 1.0
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    eval_every: int = 1  # epochs
    checkpoint_every: int = 50  # optimiser steps
    resume: bool = False
    stop_after_steps: int = 0  # > 0: checkpoint and stop after this many optimiser steps (time-boxed jobs)


@dataclass
class ClipConfig(TrainConfig):
    loss: str = "clip"  # clip | siglip | dcl


@dataclass
class ProtoClipConfig(TrainConfig):
    output: str = "runs/protoclip"
    episode_size: int = 20000
    clusters: int = 64
    kmeans_iters: int = 20
    kmeans_restarts: int = 3
    proto_dim: int = 128
    teacher_temperature: float = 0.01
    external_teacher: str = ""  # a sentence model embedhub.load takes, or "" for none


@dataclass
class PmrlConfig(TrainConfig):
    output: str = "runs/pmrl"
    objective: str = "pmrl"  # pmrl | anchored (pairwise CLIP with the image as anchor, the baseline)
    audio_variants: int = 3  # spoken versions of each caption (espeak-ng voices / speeds)
    inter: str = "modalities"  # modalities | reference (see embedhub.losses.pmrl_loss)
    tau_intra: float = 0.05
    tau_inter: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 2.0


C = TypeVar("C", bound=TrainConfig)


def _coerce(value: str, typ: Any) -> Any:
    text = str(typ)
    if typ is bool or text == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    if typ is int or text == "int":
        return int(value)
    if typ is float or text == "float":
        return float(value)
    if text.startswith("tuple"):
        parsed = json.loads(value) if value.startswith("[") else [v for v in value.split(",") if v]
        inner = float if "float" in text else str
        return tuple(inner(v) for v in parsed)
    return value


def load_config(cls: type[C], yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Defaults, then the YAML file, then ``key=value`` overrides; unknown keys are errors."""
    values: dict[str, Any] = {}
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if yaml_path:
        import yaml

        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        unknown = sorted(set(loaded) - names)
        if unknown:
            raise ValueError(f"{yaml_path}: unknown config keys {unknown}; known: {sorted(names)}")
        values.update({k: tuple(v) if isinstance(v, list) else v for k, v in loaded.items()})
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        key = key.lstrip("-").replace("-", "_")
        if key not in names:
            raise ValueError(f"unknown config key {key!r}; known: {sorted(names)}")
        try:
            values[key] = _coerce(value, hints[key])
        except ValueError as exc:
            raise ValueError(f"override {item!r}: {exc}") from exc
    return cls(**values)


def recipe_main(cls: type[C], run: Any, argv: list[str] | None = None) -> int:
    """A recipe's command line: ``[--config FILE] [--resume] [key=value ...]`` -> ``run(config)``."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    yaml_path = None
    if "--config" in argv:
        i = argv.index("--config")
        yaml_path = argv[i + 1]
        del argv[i : i + 2]
    if "--resume" in argv:
        argv.remove("--resume")
        argv.append("resume=true")
    from .dist import destroy

    try:
        run(load_config(cls, yaml_path, argv))
    finally:
        destroy()  # leave torchrun's process group cleanly
    return 0


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


__all__ = ["ClipConfig", "PmrlConfig", "ProtoClipConfig", "TrainConfig", "load_config", "recipe_main", "to_dict"]
