"""sentence-transformers folders: ``modules.json`` with Transformer, Pooling, Dense and Normalize."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._contract import Format, LoadOptions, ModelParts
from .._errors import ConfigError, UnknownFormatError
from .._folder import ConfigView, ModelFolder
from .._weights import check_config_fits, find_safetensors, header_shapes, load_strict, read_safetensors
from ..modules import POOLING_MODES, Head, Pooling, TransformersTextTower
from ._hf import build_transformers, text_preprocessor

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
#: the module types embedhub loads; any other class path (custom code) is refused
_KINDS = {"Transformer", "Pooling", "Dense", "Normalize"}


def matches(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _kind(module_type: str) -> str:
    return module_type.rsplit(".", 1)[-1]


def pooling_modes(cfg: dict[str, Any] | ConfigView) -> list[str]:
    view = cfg if isinstance(cfg, ConfigView) else ConfigView(cfg, "pooling config")
    if "pooling_mode" in view:
        raw = view.data["pooling_mode"]
        modes = view.strings("pooling_mode", choices=POOLING_MODES) if isinstance(raw, list) else [
            view.str("pooling_mode", choices=POOLING_MODES)]
        return modes
    modes = [m for k, m in _LEGACY_POOLING.items() if view.bool(k, False)]
    if not modes:
        raise ConfigError(f"{view.file}: names no pooling mode (pooling_mode, or a pooling_mode_* flag set to true)",
                          file=str(view.file), key="pooling_mode")
    # sentence-transformers concatenates legacy flags in its own fixed order
    return sorted(modes, key=POOLING_MODES.index)


def _dense(folder: ModelFolder, index: int, in_features: int) -> tuple[dict[str, Any], dict]:
    cfg = folder.config("config.json")
    act = cfg.str("activation_function", "torch.nn.modules.activation.Tanh", choices=sorted(_ACTIVATIONS))
    spec = {
        "in_features": cfg.int("in_features", min=1, max=1 << 20),
        "out_features": cfg.int("out_features", min=1, max=1 << 20),
        "bias": cfg.bool("bias", True),
        "activation": _ACTIVATIONS[act],
    }
    if spec["in_features"] != in_features:
        raise cfg.error("in_features", f"{in_features} (the width of what module {index - 1} outputs)",
                        spec["in_features"])
    files = find_safetensors(folder)
    check_config_fits(cfg.data, header_shapes(files), file=cfg.file)
    return spec, read_safetensors(files)


def _modules(folder: ModelFolder) -> list[tuple[str, ModelFolder]]:
    raw = folder.read_json(MARKER)
    file = folder / MARKER
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{file}: expected a non-empty list of modules, found {type(raw).__name__}", file=str(file))
    out = []
    for i, m in enumerate(raw):
        view = ConfigView(m, file, prefix=f"[{i}].")
        kind = _kind(view.str("type"))
        if kind not in _KINDS:
            raise ConfigError(
                f"{file}: module {i} has type {view.data['type']!r}; embedhub loads Transformer, Pooling, Dense and "
                "Normalize (custom module classes would run code)", file=str(file), key=f"[{i}].type",
            )
        path = view.str("path", "")
        if kind == "Normalize":  # holds no files; its folder may be absent
            folder.path(path or ".", what=f"module {i} path")
            out.append((kind, folder))
        else:
            out.append((kind, folder.sub(path, what=f"module {i} path") if path else folder))
    kinds = [k for k, _ in out]
    if kinds[0] != "Transformer" or kinds.count("Transformer") != 1 or kinds.count("Pooling") != 1:
        raise UnknownFormatError(
            f"{file} has modules {kinds}; embedhub loads one Transformer first, one Pooling, then Dense and Normalize"
        )
    return out


def load(folder: Path | ModelFolder, *, trust_remote_code: bool = False) -> ModelParts:
    """Build the text tower and tokenizer of a sentence-transformers folder (strictly)."""
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    modules = _modules(folder)
    tdir = modules[0][1]
    st_cfg = next((f.config("sentence_bert_config.json") for f in (tdir, folder) if f.has("sentence_bert_config.json")),
                  ConfigView({}, tdir / "sentence_bert_config.json"))
    backbone = build_transformers(tdir, "AutoModel", what="sentence-transformers Transformer",
                                  trust_remote_code=trust_remote_code)
    positions = int(getattr(backbone.config, "max_position_embeddings", 512))
    max_len = st_cfg.int("max_seq_length", None, min=1)
    text = text_preprocessor(tdir, max_length=max_len, lowercase=st_cfg.bool("do_lower_case", False),
                             fallback_max_length=positions, trust_remote_code=trust_remote_code)
    text.max_length = min(text.max_length, positions)
    text.tokenizer.enable_truncation(max_length=text.max_length)

    hidden = int(backbone.config.hidden_size)
    pooling = None
    dense_specs: list[dict[str, Any]] = []
    dense_states: list[dict] = []
    normalize = False
    width = hidden
    for i, (kind, mdir) in enumerate(modules[1:], start=1):
        if kind == "Pooling":
            if dense_specs or normalize:
                raise UnknownFormatError(f"{folder.root}: Pooling must come right after Transformer")
            pcfg = mdir.config("config.json")
            pooling = Pooling(pooling_modes(pcfg), include_prompt=pcfg.bool("include_prompt", True))
            dim = pcfg.int("word_embedding_dimension", hidden, min=1)
            if dim != hidden:
                raise pcfg.error("word_embedding_dimension", f"{hidden} (the Transformer's hidden_size)", dim)
            width = hidden * len(pooling.modes)
        elif kind == "Dense":
            spec, state = _dense(mdir, i, width)
            dense_specs.append(spec)
            dense_states.append(state)
            width = spec["out_features"]
        elif kind == "Normalize":
            normalize = True
    head = Head(dense_specs, normalize=normalize)
    for j, state in enumerate(dense_states):
        load_strict(head[j], state, what=f"Dense module {j + 1}")
    tower = TransformersTextTower(backbone, pooling, head)
    spec = {
        "embed_dim": width,
        "towers": {
            "text": {
                "backbone": {"library": "transformers"},
                "pooling": pooling.modes,
                "head": head.spec(),
                "preprocess": text.config(),
            }
        },
    }
    from . import _st_config

    settings = _st_config.read(folder, width=width)  # config_sentence_transformers.json
    return ModelParts(towers={"text": tower}, preprocessors={"text": text}, embed_dim=width, config=spec,
                      normalized=normalize, **_st_config.parts_kwargs(settings))


class SentenceTransformersFormat(Format):
    """sentence-transformers folders (``modules.json``)."""

    name = NAME
    marker = MARKER
    allow_patterns = tuple(ALLOW_PATTERNS)

    def load(self, folder: ModelFolder, options: LoadOptions) -> ModelParts:
        return load(folder, trust_remote_code=options.trust_remote_code)


FORMAT = SentenceTransformersFormat()
