"""Strict, pickle-free weight loading from safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._errors import WeightsError

_PICKLE_NAMES = ("pytorch_model.bin", "open_clip_pytorch_model.bin", "model.pt", "model.pth", "model.ckpt")


def find_safetensors(folder: Path, names: tuple[str, ...] = ("model.safetensors",)) -> list[Path]:
    """The safetensors file(s) of a folder (sharded ones through their index); never a pickle."""
    for name in names:
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
    pickles = [p.name for p in folder.iterdir() if p.name in _PICKLE_NAMES or p.suffix in {".bin", ".pt", ".pth"}]
    if pickles:
        raise WeightsError(
            f"{folder} has weights only as pickle files ({', '.join(sorted(pickles))}); embedhub loads "
            f"safetensors only and never unpickles. Convert them once with a trusted tool, e.g. "
            f"`safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')`"
        )
    raise WeightsError(f"{folder} has no weights file: expected one of {', '.join(names)}")


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers/data
            raise WeightsError(f"cannot read weights {f}: corrupted or truncated safetensors file ({exc})") from exc
    return state


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, what: str, prefix: str = "") -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped tensor is an error.

    Tolerated: non-persistent buffers present in old checkpoints (``position_ids``), a
    ``prefix`` such as ``"bert."`` on every key, and missing parameters that are tied to one present.
    """
    expected = module.state_dict()
    if prefix:
        state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
    if expected and not any(k in expected for k in state):
        # e.g. a BertModel checkpoint saved from BertForX ("bert.embeddings...")
        for cand in {k.split(".", 1)[0] + "." for k in state if "." in k}:
            stripped = {k[len(cand) :]: v for k, v in state.items() if k.startswith(cand)}
            if any(k in expected for k in stripped):
                state = stripped
                break
    buffers = {name for name, _ in module.named_buffers()}
    unexpected = [k for k in state if k not in expected and k not in buffers]
    state = {k: v for k, v in state.items() if k in expected}
    missing = [k for k in expected if k not in state]
    if missing:
        params = dict(module.named_parameters(remove_duplicate=False))
        present_ptrs = {params[k].data_ptr() for k in state if k in params}
        missing = [k for k in missing if not (k in params and params[k].data_ptr() in present_ptrs)]
    shape_errors = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shape_errors:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
        if shape_errors:
            parts.append(f"shape mismatch: {'; '.join(shape_errors[:3])}")
        raise WeightsError(f"weights do not match the {what} architecture (strict load): " + "; ".join(parts))
    module.load_state_dict(state, strict=False)
    for k, v in state.items():
        if not torch.isfinite(v).all() if v.is_floating_point() else False:
            raise WeightsError(f"weights of the {what} contain NaN or Inf in {k}")
