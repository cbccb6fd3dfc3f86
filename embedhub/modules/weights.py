"""Strict, pickle-free weight loading from safetensors.

Every weights file is named through :class:`~embedhub._io.folder.ModelFolder` (so it stays inside the
model folder), every tensor read is checked for NaN/Inf, and a model's expected shapes are
compared with the files' headers before anything large is allocated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedhub._io.folder import ModelFolder, shown
from embedhub.errors import ConfigError, WeightsError

_PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl"}
#: config keys that count layers: each layer holds at least one tensor of the weights
LAYER_KEYS = frozenset({"num_hidden_layers", "n_layers", "num_layers", "layers", "n_layer", "encoder_layers",
                        "num_encoder_layers", "depth"})
#: config keys that size a tensor dimension in every architecture that has them
SIZE_KEYS = frozenset({"hidden_size", "intermediate_size", "vocab_size", "projection_dim", "d_model", "dim",
                       "hidden_dim", "width", "embed_dim", "in_features", "out_features", "d_ff", "ffn_dim",
                       "n_embd", "n_inner"})


def check_config_fits(config: Any, shapes: dict[str, tuple[int, ...]], *, file: Any, prefix: str = "") -> None:
    """Refuse, before anything is built, a config whose layer counts or sizes cannot fit the weights:
    a layer count above the number of tensors in the files, a size above their largest dimension
    (``num_hidden_layers: 20000`` or ``hidden_size: 10**12`` would allocate for minutes first).
    A :class:`ConfigError` names ``file`` and the key."""
    if not shapes:
        return
    n_tensors = len(shapes)
    largest = max((d for shape in shapes.values() for d in shape), default=0)
    stack: list[tuple[Any, str, int]] = [(config, prefix, 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > 16:
            continue
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            key = f"{where}{k}" if isinstance(k, str) else f"{where.rstrip('.')}[{k}]"
            if isinstance(v, (dict, list)) and not (k in LAYER_KEYS and isinstance(v, list)):
                stack.append((v, f"{key}.", depth + 1))
                continue
            if k in LAYER_KEYS:
                counts = v if isinstance(v, list) else [v]
                total = sum(c for c in counts if isinstance(c, int) and not isinstance(c, bool))
                if total > n_tensors:
                    raise ConfigError(f"{file}: {key}: expected at most {n_tensors} layers (the weights hold "
                                      f"{n_tensors} tensors), found {v!r:.60}", file=str(file), key=key)
            elif k in SIZE_KEYS and isinstance(v, int) and not isinstance(v, bool) and v > largest:
                raise ConfigError(f"{file}: {key}: expected at most {largest} (the largest dimension of any "
                                  f"tensor in the weights), found {v!r:.60}", file=str(file), key=key)


def find_safetensors(folder: ModelFolder, names: tuple[str, ...] = ("model.safetensors",)) -> list[Path]:
    """The safetensors file(s) of a folder (sharded ones through their index); never a pickle."""
    if not isinstance(folder, ModelFolder):
        folder = ModelFolder(folder)
    for name in names:
        if folder.has(name):
            return [folder.file(name, what="weights file")]
        index_name = f"{name}.index.json"
        if folder.has(index_name):
            index = folder.config(index_name, what="weights index")
            weight_map = index.view("weight_map")
            shards = set()
            for tensor, shard in weight_map.data.items():
                if not isinstance(shard, str) or not shard.endswith(".safetensors"):
                    raise weight_map.error(tensor, "the name of a .safetensors shard", shard)
                shards.add(shard)
            if not shards:
                raise index.error("weight_map", "a non-empty map of tensor names to shard files", {})
            return [folder.file(s, what=f"weights shard named in {index_name}") for s in sorted(shards)]
    pickles = sorted(shown(p.name) for p in folder.root.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise WeightsError(
            f"{folder.root} has weights only as pickle files ({', '.join(pickles)}); embedhub loads "
            f"safetensors only and never unpickles. Convert them once with a trusted tool, e.g. "
            f"`safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')`"
        )
    raise WeightsError(f"{folder.root} has no weights file: expected one of {', '.join(names)}")


def header_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors headers only (no tensor data)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    shapes[k] = tuple(fh.get_slice(k).get_shape())
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"cannot read weights {f}: corrupted or truncated safetensors file ({exc})") from exc
    return shapes


def is_finite(t: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf: a float sum first (NaN or Inf propagates into it; five
    times faster than ``isfinite`` on a whole model), the exact check only when the sum overflowed."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if torch.isfinite(t.sum()):
        return True
    return bool(torch.isfinite(t).all())


def read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files``; a tensor holding NaN or Inf is a :class:`WeightsError` naming it."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            part = load_file(str(f))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers/data
            raise WeightsError(f"cannot read weights {f}: corrupted or truncated safetensors file ({exc})") from exc
        for k, v in part.items():
            if not is_finite(v):
                raise WeightsError(f"weights file {f} holds NaN or Inf in tensor {k!r}")
            if k in state:  # two shards with one tensor: which one the model gets must not depend on file order
                raise WeightsError(f"tensor {k!r} is in more than one weights file (again in {f}); a model's "
                                   "shards must each hold different tensors")
        state.update(part)
    return state


def _strip_prefix(expected: set[str], keys: list[str], prefix: str) -> dict[str, str]:
    """Checkpoint key -> model key: ``prefix`` removed, or a wrapper's prefix (``"bert."``) detected."""
    mapping = {k: k[len(prefix):] if prefix and k.startswith(prefix) else k for k in keys}
    if expected and not any(v in expected for v in mapping.values()):
        # e.g. a BertModel checkpoint saved from BertForX ("bert.embeddings...")
        for cand in sorted({v.split(".", 1)[0] + "." for v in mapping.values() if "." in v}):
            stripped = {k: v[len(cand):] for k, v in mapping.items() if v.startswith(cand)}
            if any(v in expected for v in stripped.values()):
                return stripped
    return mapping


def check_shapes(
    module: nn.Module, shapes: dict[str, tuple[int, ...]], *, what: str, prefix: str = ""
) -> dict[str, str]:
    """Compare ``module``'s state with checkpoint ``shapes`` (works on the meta device); returns the
    checkpoint-key -> module-key map of the tensors to load. Any missing, unexpected or mis-shaped
    tensor is a :class:`WeightsError`.

    Tolerated: buffers present in old checkpoints (``position_ids``), a ``prefix`` such as ``"bert."``
    on every key, and missing parameters tied to one that is present.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    buffers = {name for name, _ in module.named_buffers()}
    mapping = _strip_prefix(set(expected), list(shapes), prefix)
    unexpected = [k for k, v in mapping.items() if v not in expected and v not in buffers]
    mapping = {k: v for k, v in mapping.items() if v in expected}
    present = set(mapping.values())
    missing = [k for k in expected if k not in present]
    if missing:
        params = dict(module.named_parameters(remove_duplicate=False))
        present_ids = {id(params[k]) for k in present if k in params}
        missing = [k for k in missing if not (k in params and id(params[k]) in present_ids)]
    shape_errors = [
        f"{v}: checkpoint {shapes[k]} vs model {expected[v]}" for k, v in mapping.items() if shapes[k] != expected[v]
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
    return mapping


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], *, what: str, prefix: str = "") -> None:
    """Load ``state`` into ``module``; any missing, unexpected or mis-shaped tensor is an error (a state
    from :func:`read_safetensors` has been checked for NaN/Inf already)."""
    mapping = check_shapes(module, {k: tuple(v.shape) for k, v in state.items()}, what=what, prefix=prefix)
    current = module.state_dict()
    loaded = {v: state[k] for k, v in mapping.items()}
    tied = len(list(module.named_parameters(remove_duplicate=False))) != len(list(module.parameters()))
    if set(loaded) == set(current) and not tied:
        # every tensor is in the file and no parameter is shared: take the read tensors as they are, in
        # the module's dtypes, instead of copying them into freshly allocated ones
        loaded = {k: t.to(current[k].dtype) for k, t in loaded.items()}
        module.load_state_dict(loaded, strict=False, assign=True)
    else:
        module.load_state_dict(loaded, strict=False)


def build_checked(factory, files: list[Path], *, what: str, prefix: str = "", config: Any = None,
                  config_file: Any = None, config_prefix: str = "") -> nn.Module:
    """``factory()`` built on the meta device first and checked against the files' headers, so a config
    that does not fit its weights fails before any memory is allocated; then built for real and loaded.
    ``config`` (read from ``config_file``) is first checked with :func:`check_config_fits`, so even the
    meta build is bounded by the weights."""
    shapes = header_shapes(files)
    if config is not None:
        check_config_fits(config, shapes, file=config_file or what, prefix=config_prefix)
    try:
        with torch.device("meta"):
            check_shapes(factory(), shapes, what=what, prefix=prefix)
        module = factory()
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, AssertionError, RuntimeError,
            OverflowError, MemoryError) as exc:
        if isinstance(exc, (WeightsError, ConfigError)):
            raise
        raise ConfigError(f"the {what} config cannot be built: {type(exc).__name__}: {exc}") from exc
    load_strict(module, read_safetensors(files), what=what, prefix=prefix)
    return module
