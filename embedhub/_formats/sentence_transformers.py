"""sentence-transformers folders: ``modules.json`` with Transformer, Pooling, Dense and Normalize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._errors import UnknownFormatError
from .._modules import POOLING_MODES, Head, Pooling, TransformersTextTower
from .._weights import find_safetensors, load_strict, read_safetensors
from ._hf import from_pretrained, read_json, text_preprocessor

NAME = "sentence-transformers"
MARKER = "modules.json"
ALLOW_PATTERNS = ["*.json", "*/*.json", "*.safetensors", "*/*.safetensors", "*.txt", "*.model", "*/*.txt", "*/*.model"]
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ACTIVATIONS = {f"torch.nn.modules.activation.{n}": n for n in ("Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")}
_ACTIVATIONS |= {"torch.nn.modules.linear.Identity": "Identity"}


def matches(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _kind(module_type: str) -> str:
    return module_type.rsplit(".", 1)[-1]


def pooling_modes(cfg: dict[str, Any]) -> list[str]:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = [m for k, m in _LEGACY_POOLING.items() if cfg.get(k)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    if not modes:
        raise UnknownFormatError(f"pooling config names no pooling mode: {cfg}")
    # sentence-transformers concatenates legacy flags in its own fixed order
    return sorted(modes, key=POOLING_MODES.index) if mode is None else modes


def _dense(folder: Path, index: int) -> tuple[dict[str, Any], dict]:
    cfg = read_json(folder / "config.json")
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")
    if act not in _ACTIVATIONS:
        raise UnknownFormatError(
            f"Dense module {index} ({folder.name}) uses activation {act!r}; supported: {sorted(_ACTIVATIONS)}"
        )
    spec = {
        "in_features": int(cfg["in_features"]),
        "out_features": int(cfg["out_features"]),
        "bias": bool(cfg.get("bias", True)),
        "activation": _ACTIVATIONS[act],
    }
    return spec, read_safetensors(find_safetensors(folder))


def load(folder: Path, *, trust_remote_code: bool = False) -> dict[str, Any]:
    """Build the text tower and tokenizer of a sentence-transformers folder (strictly)."""
    from transformers import AutoModel

    modules = read_json(folder / MARKER)
    kinds = [_kind(m.get("type", "")) for m in modules]
    if not kinds or kinds[0] != "Transformer":
        raise UnknownFormatError(f"{folder}/modules.json must start with a Transformer module, found {kinds}")
    supported = {"Transformer", "Pooling", "Dense", "Normalize"}
    unknown = [k for k in kinds if k not in supported]
    if unknown or kinds.count("Transformer") != 1 or kinds.count("Pooling") != 1:
        raise UnknownFormatError(
            f"{folder}/modules.json has modules {kinds}; embedhub loads Transformer, Pooling, Dense and Normalize "
            f"(one Transformer, one Pooling){'; unsupported: ' + ', '.join(unknown) if unknown else ''}"
        )
    tdir = folder / modules[0].get("path", "")
    st_cfg_path = next(
        (p for p in (tdir / "sentence_bert_config.json", folder / "sentence_bert_config.json") if p.is_file()), None
    )
    st_cfg = read_json(st_cfg_path) if st_cfg_path else {}
    backbone = from_pretrained(
        AutoModel, tdir, what="sentence-transformers Transformer", trust_remote_code=trust_remote_code
    )
    max_len = st_cfg.get("max_seq_length")
    fallback = int(getattr(backbone.config, "max_position_embeddings", 512))
    text = text_preprocessor(
        tdir,
        max_length=int(max_len) if max_len else None,
        lowercase=bool(st_cfg.get("do_lower_case", False)),
        fallback_max_length=fallback,
    )
    text.max_length = min(text.max_length, fallback)
    text.tokenizer.enable_truncation(max_length=text.max_length)

    pooling = None
    dense_specs: list[dict[str, Any]] = []
    dense_states: list[dict] = []
    normalize = False
    for i, (m, kind) in enumerate(zip(modules[1:], kinds[1:]), start=1):
        mdir = folder / m.get("path", "")
        if kind == "Pooling":
            if dense_specs or normalize:
                raise UnknownFormatError(f"{folder}: Pooling must come right after Transformer")
            pooling = Pooling(pooling_modes(read_json(mdir / "config.json")))
        elif kind == "Dense":
            spec, state = _dense(mdir, i)
            dense_specs.append(spec)
            dense_states.append(state)
        elif kind == "Normalize":
            normalize = True
    head = Head(dense_specs, normalize=normalize)
    for j, state in enumerate(dense_states):
        load_strict(head[j], state, what=f"Dense module {j + 1}")
    hidden = int(backbone.config.hidden_size)
    embed_dim = dense_specs[-1]["out_features"] if dense_specs else hidden * len(pooling.modes)
    tower = TransformersTextTower(backbone, pooling, head)
    spec = {
        "embed_dim": embed_dim,
        "towers": {
            "text": {
                "backbone": {"library": "transformers"},
                "pooling": pooling.modes,
                "head": head.spec(),
                "preprocess": text.config(),
            }
        },
    }
    return {"towers": {"text": tower}, "preprocessors": {"text": text}, "embed_dim": embed_dim, "spec": spec}
