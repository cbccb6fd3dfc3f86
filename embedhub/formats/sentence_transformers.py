"""sentence-transformers folders: ``modules.json`` naming sentence-transformers' own module classes.

A module class is matched by its full class path (:data:`MODULE_CLASSES`: every path sentence-transformers
writes into ``modules.json`` or resolves to the class), never by a suffix. Supported modules: ``Transformer``
(a transformers text encoder, or a CLIP model), ``CLIPModel``, ``StaticEmbedding``, ``Router`` (routes per
task, e.g. query / document), ``Pooling``, ``Dense``, ``Normalize`` and ``Dropout``. Every key of their configs
is either honoured (:data:`MODULE_KEYS`) or refused by name (:data:`REFUSED_KEYS`); an unknown key is a
:class:`ConfigError`. sentence-transformers modules embedhub does not rebuild are refused with a reason
(:data:`REFUSED_CLASSES`), and a class outside sentence-transformers (custom code) is refused unless the user
passes ``trust_remote_code=True``.

>>> MODULE_CLASSES["sentence_transformers.models.Transformer"]
'Transformer'
>>> "custom_st.Transformer" in MODULE_CLASSES
False
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub.errors import ConfigError, UnknownFormatError, WeightsError
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.modules.hf import build_transformers, usable_positions
from embedhub.modules.preprocess import HFTextPreprocessor, text_preprocessor
from embedhub.modules.towers import POOLING_MODES, Head, Pooling, Tower, TransformersTextTower
from embedhub.modules.weights import check_config_fits, find_safetensors, header_shapes, load_strict, read_safetensors

NAME = "sentence-transformers"
MARKER = "modules.json"
ALLOW_PATTERNS = ["*.json", "*/*.json", "*.safetensors", "*/*.safetensors", "*.txt", "*.model", "*/*.txt", "*/*.model"]

_ST = "sentence_transformers"
_BASE = f"{_ST}.base.modules"
_STM = f"{_ST}.sentence_transformer.modules"
_LEGACY = f"{_ST}.models"

#: full class path -> module kind: every path sentence-transformers 6 writes into modules.json (the defining
#: module), its package exports, the legacy ``sentence_transformers.models.X`` paths older releases wrote, and
#: its deprecated module aliases (tests/test_st_keys.py checks this table against the installed package)
MODULE_CLASSES: dict[str, str] = {
    **dict.fromkeys([f"{_BASE}.Transformer", f"{_BASE}.transformer.Transformer", f"{_LEGACY}.Transformer",
                     f"{_LEGACY}.Transformer.Transformer", f"{_STM}.Transformer"], "Transformer"),
    **dict.fromkeys([f"{_LEGACY}.Pooling", f"{_LEGACY}.Pooling.Pooling", f"{_STM}.Pooling", f"{_STM}.pooling.Pooling"],
                    "Pooling"),
    **dict.fromkeys([f"{_BASE}.Dense", f"{_BASE}.dense.Dense", f"{_LEGACY}.Dense", f"{_LEGACY}.Dense.Dense",
                     f"{_STM}.Dense"], "Dense"),
    **dict.fromkeys([f"{_BASE}.Normalize", f"{_BASE}.normalize.Normalize", f"{_LEGACY}.Normalize",
                     f"{_LEGACY}.Normalize.Normalize", f"{_STM}.Normalize", f"{_STM}.normalize.Normalize"],
                    "Normalize"),
    **dict.fromkeys([f"{_LEGACY}.Dropout", f"{_LEGACY}.Dropout.Dropout", f"{_STM}.Dropout", f"{_STM}.dropout.Dropout"],
                    "Dropout"),
    **dict.fromkeys([f"{_LEGACY}.CLIPModel", f"{_LEGACY}.CLIPModel.CLIPModel", f"{_STM}.CLIPModel",
                     f"{_STM}.clip_model.CLIPModel"], "CLIPModel"),
    **dict.fromkeys([f"{_LEGACY}.StaticEmbedding", f"{_LEGACY}.StaticEmbedding.StaticEmbedding",
                     f"{_STM}.StaticEmbedding", f"{_STM}.static_embedding.StaticEmbedding"], "StaticEmbedding"),
    **dict.fromkeys([f"{_BASE}.Router", f"{_BASE}.router.Router", f"{_BASE}.router.Asym", f"{_LEGACY}.Router",
                     f"{_LEGACY}.Router.Router", f"{_LEGACY}.Router.Asym", f"{_LEGACY}.Asym", f"{_LEGACY}.Asym.Asym",
                     f"{_LEGACY}.Asym.Router", f"{_STM}.Router", f"{_STM}.Asym"], "Router"),
}

#: sentence-transformers module classes (by class name, under ``sentence_transformers.``) embedhub refuses, and why
REFUSED_CLASSES: dict[str, str] = {
    "BoW": "a bag-of-words module with its own vocabulary and weighting, not rebuilt by embedhub",
    "CNN": "a convolution over word embeddings (pre-transformer models), not rebuilt by embedhub",
    "LSTM": "an LSTM over word embeddings (pre-transformer models), not rebuilt by embedhub",
    "LayerNorm": "a layer norm on the sentence embedding, not rebuilt by embedhub's head",
    "WeightedLayerPooling": "pooling over several hidden layers, not rebuilt by embedhub",
    "WordEmbeddings": "GloVe-style word embeddings with their own tokenizer, not rebuilt by embedhub",
    "WordWeights": "per-word weights from a vocabulary file, not rebuilt by embedhub",
    "Module": "the abstract base class of modules; a saved model never holds it",
    "InputModule": "the abstract base class of input modules; a saved model never holds it",
    "MLMTransformer": "a SparseEncoder module (sparse vocabulary vectors); embedhub makes dense embeddings",
    "SpladePooling": "a SparseEncoder module (sparse vocabulary vectors); embedhub makes dense embeddings",
    "SparseStaticEmbedding": "a SparseEncoder module (sparse vocabulary vectors); embedhub makes dense embeddings",
    "SparseAutoEncoder": "a SparseEncoder module (sparse vectors); embedhub makes dense embeddings",
    "LogitScore": "a CrossEncoder module (scores pairs); embedhub makes embeddings",
    "MultiVectorMask": "a MultiVectorEncoder module (one vector per token); embedhub makes one vector per input",
    "BaseTokenPooling": "a MultiVectorEncoder module (one vector per token); embedhub makes one vector per input",
    "HierarchicalTokenPooling": "a MultiVectorEncoder module (token vectors); embedhub makes one vector per input",
    "LambdaTokenPooling": "a MultiVectorEncoder module (token vectors); embedhub makes one vector per input",
}

#: the config keys each supported module reads, and how (a key whose value is checked to be neutral says so)
MODULE_KEYS: dict[str, dict[str, str]] = {
    "Transformer": {
        "max_seq_length": "truncation length of the tokenizer",
        "do_lower_case": "lowercases texts before tokenising",
        "transformer_task": "'feature-extraction' only (other tasks are not embedding models)",
        "modality_config": "text via forward/last_hidden_state, or a CLIP model's get_text/image_features",
        "module_output_name": "must match the modality_config: token_embeddings, or sentence_embedding for CLIP",
        "unpad_inputs": "flash-attention unpadding switch: the same numbers padded, so any value loads",
        "backend": "sentence-transformers replaces it with the caller's backend; ignored the same way",
        "model_kwargs": "only trust_remote_code, which sentence-transformers strips from configs",
        "model_args": "legacy name of model_kwargs (wins over it, as in sentence-transformers)",
        "config_kwargs": "only trust_remote_code, which sentence-transformers strips from configs",
        "config_args": "legacy name of config_kwargs (wins over it, as in sentence-transformers)",
        "processor_kwargs": "model_max_length (truncation length), and trust_remote_code (stripped)",
        "tokenizer_args": "legacy name of processor_kwargs (wins over it, as in sentence-transformers)",
        "processing_kwargs": "only empty: per-modality processor call arguments are not rebuilt",
        "query_length": "only null: per-task truncation lengths (ColBERT) are not rebuilt",
        "document_length": "only null: per-task truncation lengths (ColBERT) are not rebuilt",
        "query_expansion": "only null: ColBERT query expansion is not rebuilt",
        "tokenizer_name_or_path": "only null: a tokenizer from another repository is not fetched",
        "cache_dir": "only null: a download location is not a model setting",
    },
    "Pooling": {
        "embedding_dimension": "checked against the width of the token embeddings",
        "word_embedding_dimension": "legacy name of embedding_dimension, checked the same way",
        "pooling_mode": "cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken (or a list: concatenated)",
        **{k: "legacy pooling flag; pooling_mode wins, and flags that disagree with it are refused"
           for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens", "pooling_mode_mean_tokens",
                     "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                     "pooling_mode_lasttoken")},
        "include_prompt": "whether prompt tokens are pooled (read with the model's prompts)",
    },
    "Dense": {
        "in_features": "checked against the width of what feeds the layer",
        "out_features": "width of the layer",
        "bias": "whether the layer has a bias",
        "activation_function": "a torch.nn activation: Tanh, ReLU, GELU, Sigmoid, SiLU or Identity",
        "module_input_name": "only sentence_embedding (a Dense over token embeddings is not rebuilt)",
        "module_output_name": "only sentence_embedding (or null: the input name)",
        "use_residual": "adds the input back (through its own projection when the widths differ)",
        "init_weight": "only null (weights come from model.safetensors)",
        "init_bias": "only null (weights come from model.safetensors)",
    },
    "Normalize": {
        "module_input_name": "only sentence_embedding (normalising token embeddings is not rebuilt)",
        "module_output_name": "only sentence_embedding (or null: the input name)",
    },
    "Dropout": {"dropout": "a rate in [0, 1]; dropout does nothing at inference"},
    "CLIPModel": {},  # the Transformer keys (below), read from the CLIP module's own folder
    "StaticEmbedding": {},  # reads tokenizer.json and model.safetensors only, no config
    "Router": {
        "types": "route module id -> module class (matched like modules.json)",
        "structure": "route name -> its module ids, in order",
        "parameters.default_route": "the route of encode() without a task",
        "parameters.allow_empty_key": "with no default_route, the first route is the default",
        "parameters.route_mappings": "(task, modality) -> route, resolved as sentence-transformers does",
    },
}
MODULE_KEYS["CLIPModel"] = dict(MODULE_KEYS["Transformer"])

#: config keys sentence-transformers reads that embedhub refuses (a ConfigError naming file and key), and why
REFUSED_KEYS: dict[str, dict[str, str]] = {
    "CLIPModel": {
        "processor_name": "a processor from another repository is not fetched",
        "_from_auto_load": "an argument of the loader, not a setting",
    },
}

_TEXT_FORWARD = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
_ACTIVATIONS = {}
for _n in ("Tanh", "ReLU", "GELU", "Sigmoid", "SiLU"):
    _ACTIVATIONS[f"torch.nn.modules.activation.{_n}"] = _ACTIVATIONS[f"torch.nn.{_n}"] = _n
_ACTIVATIONS["torch.nn.modules.linear.Identity"] = _ACTIVATIONS["torch.nn.Identity"] = "Identity"
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: the names sentence-transformers tries, in order, for a Transformer module's config
_TRANSFORMER_CONFIGS = ("sentence_bert_config.json", "sentence_roberta_config.json", "sentence_distilbert_config.json",
                        "sentence_camembert_config.json", "sentence_albert_config.json",
                        "sentence_xlm-roberta_config.json", "sentence_xlnet_config.json")
_SENTENCE = "sentence_embedding"


@dataclass
class _Module:
    """One module of a pipeline: its kind, folder, and where it is declared (for messages)."""

    kind: str
    folder: ModelFolder
    where: str  # e.g. "module 1" or "Router module 'query_0_Transformer'"
    file: Path
    #: whether the module has a folder of its own (a Normalize declared without one reads nothing)
    own_folder: bool = True


def module_kind(class_path: str, *, file: Path | str, where: str, key: str | None = None,
                trust_remote_code: bool = False) -> str:
    """The kind of the module class ``class_path`` (its full path, as :data:`MODULE_CLASSES` lists it);
    a :class:`ConfigError` naming ``file``, ``where`` and the class for anything else.

    >>> module_kind("sentence_transformers.models.Pooling", file="modules.json", where="module 1")
    'Pooling'
    """
    kind = MODULE_CLASSES.get(class_path)
    if kind is not None:
        return kind
    key = key or where
    name = class_path.rsplit(".", 1)[-1]
    if class_path.startswith(f"{_ST}.") and name in REFUSED_CLASSES:
        raise ConfigError(f"{file}: {where} is sentence-transformers' {name} ({class_path!r}): "
                          f"{REFUSED_CLASSES[name]}", file=str(file), key=key)
    if class_path.startswith(f"{_ST}."):
        raise ConfigError(
            f"{file}: {where} has type {class_path!r}, which is not a module class of sentence-transformers "
            f"that embedhub loads (supported: {', '.join(sorted(set(MODULE_CLASSES.values())))})",
            file=str(file), key=key,
        )
    if trust_remote_code:
        raise ConfigError(
            f"{file}: {where} has type {class_path!r}, a custom module class (code shipped with the model); "
            "embedhub cannot rebuild it, so only its owning library can run it", file=str(file), key=key,
        )
    raise ConfigError(
        f"{file}: {where} has type {class_path!r}, a custom module class: loading it runs code from the model "
        "folder. embedhub never runs such code unless you pass trust_remote_code=True, which runs the folder's "
        "code through sentence-transformers", file=str(file), key=key,
    )


def _entries(folder: ModelFolder, *, trust_remote_code: bool) -> list[_Module]:
    raw = folder.read_json(MARKER)
    file = folder / MARKER
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{file}: expected a non-empty list of modules, found {type(raw).__name__}", file=str(file))
    out = []
    for i, m in enumerate(raw):
        view = ConfigView(m, file, prefix=f"[{i}].")
        view.only({"idx", "name", "path", "type", "kwargs"}, what="module key")
        where = f"module {i}"
        kind = module_kind(view.str("type"), file=file, where=f"{where} ([{i}].type)", key=f"[{i}].type",
                           trust_remote_code=trust_remote_code)
        if view.data.get("kwargs"):
            raise ConfigError(f"{file}: [{i}].kwargs: forward arguments of a module ({view.data['kwargs']!r}) "
                              "are not supported", file=str(file), key=f"[{i}].kwargs")
        path = view.str("path", "")
        if kind in ("Normalize", "Dropout") and (not path or not folder.has_dir(path)):  # they need no files
            if path:
                folder.path(path, what=f"module {i} path")
            out.append(_Module(kind, folder, where, file, own_folder=False))
            continue
        out.append(_Module(kind, folder.sub(path, what=f"module {i} path") if path else folder, where, file))
    return out


# ------------------------------------------------------------------------------------------ module configs
def _transformer_config(folder: ModelFolder) -> ConfigView:
    for name in _TRANSFORMER_CONFIGS:
        if folder.has(name):
            return folder.config(name)
    return ConfigView({}, folder / "sentence_bert_config.json")


@dataclass
class _TransformerSettings:
    clip: bool = False
    max_length: int | None = None
    lowercase: bool = False


def _null_only(cfg: ConfigView, key: str, what: str) -> None:
    if key in cfg and cfg.data[key] not in ({}, [], ""):
        raise ConfigError(f"{cfg.file}: {cfg.prefix}{key} is set ({cfg.data[key]!r}); {what}",
                          file=str(cfg.file), key=cfg.prefix + key)


def _kwargs_dict(cfg: ConfigView, new: str, old: str, allowed: set[str]) -> dict[str, Any]:
    """A ``*_kwargs`` dict of a Transformer config (legacy ``*_args`` wins, as in sentence-transformers);
    ``trust_remote_code`` is dropped as sentence-transformers drops it, any other key but ``allowed`` is refused."""
    out: dict[str, Any] = {}
    for key in (new, old):  # the legacy name is applied last: it wins
        if key not in cfg:
            continue
        sub = cfg.view(key)
        for k in sub.keys():
            if k == "trust_remote_code":
                continue
            if k not in allowed:
                raise ConfigError(
                    f"{cfg.file}: {key}.{k} is set ({sub.data[k]!r}); embedhub does not forward arguments to "
                    f"transformers from a module config (supported in {key}: {sorted(allowed) or 'none'})",
                    file=str(cfg.file), key=f"{key}.{k}",
                )
            out[k] = sub.data[k]
    return out


def _read_transformer(mod: _Module) -> _TransformerSettings:
    cfg = _transformer_config(mod.folder)
    allowed = set(MODULE_KEYS[mod.kind]) | set(REFUSED_KEYS.get(mod.kind, {}))
    cfg.only(allowed, what=f"{mod.kind} config key")
    for key, why in REFUSED_KEYS.get(mod.kind, {}).items():
        if key in cfg:
            raise ConfigError(f"{cfg.file}: {key}: {why}", file=str(cfg.file), key=key)
    cfg.str("transformer_task", "feature-extraction", choices=["feature-extraction"])
    cfg.bool("do_lower_case", False)
    if "unpad_inputs" in cfg:
        cfg.bool("unpad_inputs")
    if "backend" in cfg:
        cfg.str("backend")
    for key in ("processing_kwargs", "query_length", "document_length", "query_expansion", "tokenizer_name_or_path",
                "cache_dir"):
        _null_only(cfg, key, MODULE_KEYS["Transformer"][key])
    _kwargs_dict(cfg, "model_kwargs", "model_args", set())
    _kwargs_dict(cfg, "config_kwargs", "config_args", set())
    proc = _kwargs_dict(cfg, "processor_kwargs", "tokenizer_args", {"model_max_length"})
    settings = _TransformerSettings(lowercase=cfg.bool("do_lower_case", False))
    # what sentence-transformers does: an explicit model_max_length wins over max_seq_length
    settings.max_length = cfg.int("max_seq_length", None, min=1)
    if "model_max_length" in proc:
        settings.max_length = ConfigView(proc, cfg.file, prefix="processor_kwargs.").int("model_max_length", min=1)
    settings.clip = _modality(cfg, mod)
    return settings


def _modality(cfg: ConfigView, mod: _Module) -> bool:
    """Whether the module is a CLIP model (text and image features) rather than a text encoder."""
    default_clip = mod.kind == "CLIPModel"
    raw = cfg.data.get("modality_config")
    out_name = cfg.str("module_output_name", None)
    if raw is None:
        clip = default_clip
    else:
        mc = cfg.view("modality_config")
        if mc.data == _TEXT_FORWARD:
            clip = False
        elif set(mc.keys()) == {"text", "image"}:
            for modality, method in (("text", "get_text_features"), ("image", "get_image_features")):
                entry = mc.view(modality)
                entry.only({"method", "method_output_name"}, what="modality_config entry key")
                entry.str("method", choices=[method])
                if entry.data.get("method_output_name") not in (None, "pooler_output"):
                    raise entry.error("method_output_name", "'pooler_output' or null",
                                      entry.data.get("method_output_name"))
            clip = True
        else:
            raise ConfigError(
                f"{cfg.file}: modality_config {raw!r} is not one embedhub rebuilds (text through forward and "
                "last_hidden_state, or a CLIP model's get_text_features and get_image_features)",
                file=str(cfg.file), key="modality_config",
            )
    expected = _SENTENCE if clip else "token_embeddings"
    if out_name is not None and out_name != expected:
        raise cfg.error("module_output_name", repr(expected), out_name)
    return clip


def pooling_modes(cfg: dict[str, Any] | ConfigView) -> list[str]:
    """The pooling modes of a Pooling config, as sentence-transformers reads them: ``pooling_mode`` (a mode
    or a list, concatenated in order), else the legacy ``pooling_mode_*`` flags in their fixed order (none
    set: mean). Flags set next to a ``pooling_mode`` they disagree with are refused.

    >>> pooling_modes({"pooling_mode_cls_token": True})
    ['cls']
    """
    view = cfg if isinstance(cfg, ConfigView) else ConfigView(cfg, "pooling config")
    flagged = [m for k, m in _LEGACY_POOLING.items() if view.bool(k, False)]
    if "pooling_mode" not in view:
        return flagged or ["mean"]
    raw = view.data["pooling_mode"]
    modes = view.strings("pooling_mode", choices=POOLING_MODES) if isinstance(raw, list) else [
        view.str("pooling_mode", choices=POOLING_MODES)]
    if flagged and sorted(flagged) != sorted(modes):
        flags = [k for k in _LEGACY_POOLING if view.data.get(k) is True]
        raise ConfigError(
            f"{view.file}: pooling_mode {raw!r} and the legacy flags {flags} (set to true) disagree; "
            "sentence-transformers would use pooling_mode and ignore the flags, embedhub refuses the ambiguity",
            file=str(view.file), key=flags[0],
        )
    return modes


def _pooling(mod: _Module, width: int) -> tuple[Pooling, bool]:
    cfg = mod.folder.config("config.json")
    cfg.only(MODULE_KEYS["Pooling"], what="Pooling config key")
    for key in ("embedding_dimension", "word_embedding_dimension"):
        dim = cfg.int(key, None, min=1)
        if dim is not None and dim != width:
            raise cfg.error(key, f"{width} (the width of the token embeddings)", dim)
    include_prompt = cfg.bool("include_prompt", True)
    return Pooling(pooling_modes(cfg), include_prompt=include_prompt), include_prompt


def _dense(mod: _Module, in_features: int) -> tuple[dict[str, Any], dict]:
    cfg = mod.folder.config("config.json")
    cfg.only(MODULE_KEYS["Dense"], what="Dense config key")
    if "activation_function" in cfg.data and cfg.data["activation_function"] not in _ACTIVATIONS:
        raise cfg.error("activation_function", f"one of {sorted(_ACTIVATIONS)} (other activations would run code "
                        "or are not rebuilt)", cfg.data["activation_function"])
    act = cfg.str("activation_function", "torch.nn.modules.activation.Tanh", choices=sorted(_ACTIVATIONS))
    cfg.str("module_input_name", _SENTENCE, choices=[_SENTENCE])
    cfg.str("module_output_name", _SENTENCE, choices=[_SENTENCE])
    for key in ("init_weight", "init_bias"):
        _null_only(cfg, key, MODULE_KEYS["Dense"][key])
    spec = {
        "in_features": cfg.int("in_features", min=1, max=1 << 20),
        "out_features": cfg.int("out_features", min=1, max=1 << 20),
        "bias": cfg.bool("bias", True),
        "activation": _ACTIVATIONS[act],
    }
    if cfg.bool("use_residual", False):
        spec["residual"] = True
    if spec["in_features"] != in_features:
        raise cfg.error("in_features", f"{in_features} (the width of what the module before it outputs)",
                        spec["in_features"])
    files = find_safetensors(mod.folder)
    check_config_fits(cfg.data, header_shapes(files), file=cfg.file)
    return spec, read_safetensors(files)


def _small_config(mod: _Module) -> ConfigView | None:
    """The config.json of a Normalize / Dropout module (they may have no folder or no file)."""
    if mod.own_folder and mod.folder.has("config.json"):
        return mod.folder.config("config.json")
    return None


# ------------------------------------------------------------------------------------------ towers
class StaticEmbeddingTower(Tower):
    """sentence-transformers' ``StaticEmbedding``: the mean of per-token vectors (``nn.EmbeddingBag``), then a head.

    >>> tower = StaticEmbeddingTower(torch.eye(4), Head())
    >>> tower(torch.tensor([[1, 2]]), torch.tensor([[1, 1]])).tolist()
    [[0.0, 0.5, 0.5, 0.0]]
    """

    modality = "text"

    def __init__(self, weights: torch.Tensor, head: Head):
        super().__init__()
        self.embedding = nn.EmbeddingBag.from_pretrained(weights, freeze=True, mode="mean")
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.bool()
        flat = input_ids[mask]
        lengths = mask.sum(dim=1)
        offsets = torch.cumsum(lengths, 0) - lengths
        return self.head(self.embedding(flat, offsets))

    @property
    def output_dim(self) -> int:
        return self.head.output_dim(int(self.embedding.embedding_dim))


class _HeadTower(Tower):
    """A tower whose embeddings pass through a head (a Normalize after a CLIP module)."""

    def __init__(self, inner: Tower, head: Head):
        super().__init__()
        self.inner = inner
        self.head = head
        self.modality = inner.modality

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.head(self.inner(**batch))

    @property
    def output_dim(self) -> int:
        return self.head.output_dim(self.inner.output_dim)

    def onnx_hints(self) -> dict[str, Any]:
        return self.inner.onnx_hints()


class StaticTextPreprocessor(HFTextPreprocessor):
    """The tokenizer of a ``StaticEmbedding``: no special tokens and no padding, truncation only as
    ``tokenizer.json`` itself sets it (sentence-transformers' ``encode_batch(..., add_special_tokens=False)``)."""

    def __init__(self, tokenizer: Any, *, lowercase: bool = False):
        truncation = tokenizer.truncation
        super().__init__(tokenizer, max_length=int(truncation["max_length"]) if truncation else 1 << 30,
                         pad_id=0, lowercase=lowercase)
        if truncation:
            tokenizer.enable_truncation(**truncation)
        else:
            tokenizer.no_truncation()
        self.truncated = bool(truncation)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def collate(self, ids: list[list[int]]) -> dict[str, Any]:
        from embedhub.modules.preprocess import pad_batch

        return pad_batch(ids, max(1, max((len(x) for x in ids), default=1)), self.pad_id)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "add_special_tokens": False}


def static_embedding(folder: ModelFolder, *, what: str,
                     integer_ok: bool = False) -> tuple[torch.Tensor, StaticTextPreprocessor]:
    """The per-token vectors and the tokenizer of a static-embedding folder (sentence-transformers'
    ``StaticEmbedding`` or model2vec: ``embedding.weight``, or ``embeddings`` with an optional ``mapping``
    and per-token ``weights``, folded as sentence-transformers folds them)."""
    from tokenizers import Tokenizer

    data = folder.read_bytes("tokenizer.json", what=f"{what} tokenizer", max_bytes=1 << 30)
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:
        raise ConfigError(f"{folder / 'tokenizer.json'} is not a valid tokenizers file: {exc}",
                          file=str(folder / "tokenizer.json")) from exc
    files = find_safetensors(folder)
    state = read_safetensors(files)
    file = files[0]
    if "embedding.weight" in state:
        extra = sorted(set(state) - {"embedding.weight"})
        weights = state["embedding.weight"]
    else:
        extra = sorted(set(state) - {"embeddings", "mapping", "weights"})
        if "embeddings" not in state:
            raise WeightsError(f"{file}: a {what} needs a tensor 'embedding.weight' or 'embeddings'; "
                               f"found {sorted(state)[:5]}")
        weights = state["embeddings"]
    if extra:
        raise WeightsError(f"{file}: unexpected tensors {extra[:5]} in a {what}")
    if integer_ok and weights.dtype == torch.int8:  # model2vec's int8 vectors are averaged as float32
        weights = weights.float()
    if weights.ndim != 2 or not weights.is_floating_point() or weights.shape[0] < 1:
        raise WeightsError(f"{file}: the {what} vectors must be a 2-D float tensor, found {tuple(weights.shape)} "
                           f"{weights.dtype}")
    if "embedding.weight" not in state:
        mapping, scale = state.get("mapping"), state.get("weights")
        if mapping is not None:
            if mapping.ndim != 1 or mapping.is_floating_point() or mapping.is_complex():
                raise WeightsError(f"{file}: 'mapping' must be a 1-D integer tensor, found {tuple(mapping.shape)} "
                                   f"{mapping.dtype}")
            if len(mapping) and (int(mapping.min()) < 0 or int(mapping.max()) >= weights.shape[0]):
                raise WeightsError(f"{file}: 'mapping' holds rows outside the {weights.shape[0]} vectors")
            weights = weights[mapping.long()]
        if scale is not None:
            if scale.ndim != 1 or scale.shape[0] != weights.shape[0] or not scale.is_floating_point():
                raise WeightsError(f"{file}: 'weights' must be a float vector of {weights.shape[0]} entries, "
                                   f"found {tuple(scale.shape)} {scale.dtype}")
            dtype = torch.promote_types(weights.dtype, torch.float32)
            weights = (weights.to(dtype) * scale[:, None]).to(dtype)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if weights.shape[0] < vocab:
        raise WeightsError(f"{file}: {weights.shape[0]} token vectors for a tokenizer of {vocab} tokens")
    return weights.float().contiguous(), StaticTextPreprocessor(tok)


@dataclass
class _Pipeline:
    towers: dict[str, Any]
    preprocessors: dict[str, Any]
    width: int
    spec: dict[str, Any] | None = None
    logit_scale: float | None = None
    normalized: bool = False
    include_prompt: bool = True


def _pipeline(mods: list[_Module], *, trust_remote_code: bool) -> _Pipeline:
    """Towers for one chain of modules: an input module (Transformer, CLIPModel, StaticEmbedding), then
    Pooling (after a text Transformer), Dense, Normalize and Dropout modules."""
    first = mods[0]
    if first.kind not in ("Transformer", "CLIPModel", "StaticEmbedding"):
        raise ConfigError(f"{first.file}: {first.where} is a {first.kind} module; the first module must be a "
                          "Transformer, CLIPModel, StaticEmbedding or Router", file=str(first.file), key=first.where)
    pooling: Pooling | None = None
    include_prompt = True
    settings = None
    backbone = None
    clip_parts = None
    static = None
    if first.kind == "StaticEmbedding":
        static = static_embedding(first.folder, what="StaticEmbedding module")
        width = int(static[0].shape[1])
        pooled = True
    else:
        settings = _read_transformer(first)
        if settings.clip:
            from embedhub.formats import hf_clip

            clip_parts = hf_clip.FORMAT.load(first.folder, LoadOptions(trust_remote_code=trust_remote_code))
            text = clip_parts.preprocessors["text"]
            positions = int(clip_parts.towers["text"].clip.config.text_config.max_position_embeddings)
            if settings.max_length is not None:
                text.max_length = min(settings.max_length, positions)
                text.tokenizer.enable_truncation(max_length=text.max_length)
            text.lowercase = settings.lowercase
            width, pooled = clip_parts.embed_dim, True
        else:
            backbone = build_transformers(first.folder, "AutoModel", what=f"sentence-transformers {first.kind}",
                                          trust_remote_code=trust_remote_code)
            width, pooled = int(backbone.config.hidden_size), False
    dense_specs: list[dict[str, Any]] = []
    dense_states: list[dict] = []
    normalize = False
    for mod in mods[1:]:
        if mod.kind == "Pooling":
            if pooled:
                raise ConfigError(f"{mod.file}: {mod.where} is a Pooling module, but what comes before it is "
                                  "already one vector per input (Pooling follows a text Transformer, once)",
                                  file=str(mod.file), key=mod.where)
            pooling, include_prompt = _pooling(mod, width)
            width, pooled = width * len(pooling.modes), True
        elif not pooled:
            raise ConfigError(f"{mod.file}: {mod.where} is a {mod.kind} module before any Pooling; it would "
                              "act on token embeddings, which embedhub does not rebuild", file=str(mod.file),
                              key=mod.where)
        elif mod.kind == "Dense":
            if normalize:
                raise ConfigError(f"{mod.file}: {mod.where} is a Dense module after a Normalize; embedhub rebuilds "
                                  "Dense layers followed by one Normalize", file=str(mod.file), key=mod.where)
            if clip_parts is not None:
                raise ConfigError(f"{mod.file}: {mod.where} is a Dense module after a CLIP model; not rebuilt",
                                  file=str(mod.file), key=mod.where)
            spec, state = _dense(mod, width)
            dense_specs.append(spec)
            dense_states.append(state)
            width = spec["out_features"]
        elif mod.kind == "Normalize":
            cfg = _small_config(mod)
            if cfg is not None:
                cfg.only(MODULE_KEYS["Normalize"], what="Normalize config key")
                cfg.str("module_input_name", _SENTENCE, choices=[_SENTENCE])
                cfg.str("module_output_name", _SENTENCE, choices=[_SENTENCE])
            normalize = True
        elif mod.kind == "Dropout":
            cfg = _small_config(mod)
            if cfg is not None:
                cfg.only(MODULE_KEYS["Dropout"], what="Dropout config key")
                cfg.float("dropout", 0.2, min=0.0, max=1.0)
        else:
            raise ConfigError(f"{mod.file}: {mod.where} is a {mod.kind} module; it can only be the first module",
                              file=str(mod.file), key=mod.where)
    if not pooled:
        raise UnknownFormatError(f"{first.file}: the Transformer of {first.where} is followed by no Pooling module; "
                                 "embedhub needs one vector per input")
    head = Head(dense_specs, normalize=normalize)
    for j, state in enumerate(dense_states):
        load_strict(head[j], state, what=f"Dense module {j + 1}")
    if static is not None:
        weights, text = static
        return _Pipeline({"text": StaticEmbeddingTower(weights, head)}, {"text": text}, width,
                         normalized=normalize, include_prompt=include_prompt)
    if clip_parts is not None:
        towers = {m: (_HeadTower(t, head) if len(head) else t) for m, t in clip_parts.towers.items()}
        return _Pipeline(towers, clip_parts.preprocessors, width, logit_scale=clip_parts.logit_scale,
                         normalized=normalize)
    assert backbone is not None and pooling is not None and settings is not None
    positions = usable_positions(backbone.config)
    text = text_preprocessor(first.folder, max_length=settings.max_length, lowercase=settings.lowercase,
                             fallback_max_length=positions, trust_remote_code=trust_remote_code)
    text.max_length = min(text.max_length, positions)
    text.tokenizer.enable_truncation(max_length=text.max_length)
    tower = TransformersTextTower(backbone, pooling, head)
    spec = {
        "embed_dim": width,
        "towers": {"text": {"backbone": {"library": "transformers"}, "pooling": pooling.modes, "head": head.spec(),
                            "preprocess": text.config()}},
    }
    return _Pipeline({"text": tower}, {"text": text}, width, spec=spec, normalized=normalize,
                     include_prompt=include_prompt)


# ------------------------------------------------------------------------------------------ Router
def _route_key(raw: str, view: ConfigView) -> tuple[str | None, str | tuple[str, ...] | None]:
    """A route_mappings key as sentence-transformers writes it (``str((task, modality))``)."""
    try:
        key = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        key = None
    ok = isinstance(key, tuple) and len(key) == 2 and all(
        k is None or isinstance(k, str) or (isinstance(k, tuple) and all(isinstance(x, str) for x in k)) for k in key)
    if not ok or isinstance(key[0], tuple):
        raise ConfigError(f"{view.file}: {view.prefix}{raw!r} is not a (task, modality) route key",
                          file=str(view.file), key=view.prefix + raw)
    task, modality = key
    if isinstance(modality, tuple):
        modality = tuple(sorted(modality))
    return task, modality


def _router(mod: _Module, rest: list[_Module], *, trust_remote_code: bool):
    """The routes of a Router module: ``{task: {modality: (tower, preprocessor)}}`` and the default route."""
    folder = mod.folder
    name = "router_config.json" if folder.has("router_config.json") else "config.json"
    cfg = folder.config(name)
    cfg.only({"types", "structure", "parameters"}, what="Router config key")
    types = cfg.view("types")
    structure = cfg.view("structure")
    params = cfg.view("parameters", {})
    params.only({"default_route", "allow_empty_key", "route_mappings"}, what="Router parameter")
    built: dict[str, _Module] = {}
    for model_id in types.keys():
        kind = module_kind(types.str(model_id), file=cfg.file, where=f"Router module {model_id!r} (types.{model_id})",
                           key=f"types.{model_id}", trust_remote_code=trust_remote_code)
        if kind == "Router":
            raise ConfigError(f"{cfg.file}: types.{model_id}: a Router inside a Router is not supported",
                              file=str(cfg.file), key=f"types.{model_id}")
        sub = folder.sub(model_id, what=f"Router module {model_id!r}")
        built[model_id] = _Module(kind, sub, f"Router module {model_id!r}", cfg.file)
    names = list(structure.keys())
    if not names:
        raise cfg.error("structure", "at least one route")
    pipelines: dict[str, _Pipeline] = {}
    for route in names:
        ids = structure.data[route]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise structure.error(route, "a non-empty list of module ids", ids)
        missing = [i for i in ids if i not in built]
        if missing:
            raise structure.error(route, f"module ids listed in types ({sorted(built)})", missing)
        pipelines[route] = _pipeline([built[i] for i in ids] + rest, trust_remote_code=trust_remote_code)
    widths = {r: p.width for r, p in pipelines.items()}
    if len(set(widths.values())) > 1:
        raise ConfigError(f"{cfg.file}: the routes give embeddings of different widths {widths}; their vectors "
                          "could not be compared", file=str(cfg.file), key="structure")
    default = params.str("default_route", None)
    if default is not None and default not in pipelines:
        raise params.error("default_route", f"one of the routes {names}", default)
    if default is None and params.bool("allow_empty_key", True):
        default = names[0]
    mappings: dict[tuple[Any, Any], str] = {}
    rm = params.view("route_mappings", {})
    for raw in rm.keys():
        target = rm.str(raw)
        if target not in pipelines:
            raise rm.error(raw, f"one of the routes {names}", target)
        mappings[_route_key(raw, rm)] = target

    def resolve(task: str | None, modality: str) -> str | None:
        for key in ((task, modality), (task, None), (None, modality), (None, None)):
            if key in mappings:
                return mappings[key]
        if task and task in pipelines:
            return task
        if modality in pipelines:
            return modality
        return None if task is not None else default

    modalities = sorted({m for p in pipelines.values() for m in p.towers})
    tasks = list(dict.fromkeys([*names, *(t for t, _ in mappings if t is not None)]))
    routes: dict[str, dict[str, tuple[Any, Any]]] = {}
    for task in tasks:
        entry = {}
        for modality in modalities:
            route = resolve(task, modality)
            if route is not None and modality in pipelines[route].towers:
                entry[modality] = (pipelines[route].towers[modality], pipelines[route].preprocessors[modality])
        if entry:
            routes[task] = entry
    # encode() without a task: the task whose routes are the same for every modality (the default route first)
    plain = {m: resolve(None, m) for m in modalities}
    candidates = [t for t in dict.fromkeys([default, *routes]) if t in routes]
    default_task = next((t for t in candidates if all(resolve(t, m) == plain[m] for m in modalities)), None)
    if default_task is None:
        raise ConfigError(
            f"{cfg.file}: encode() without a task resolves to the routes {plain}, which match no task's routes; "
            "embedhub needs a default route that is one of the tasks", file=str(cfg.file), key="parameters")
    return routes, default_task, pipelines


# ------------------------------------------------------------------------------------------ load


class SentenceTransformersFormat(Format, name=NAME, marker=MARKER, allow_patterns=ALLOW_PATTERNS):
    """sentence-transformers folders (``modules.json``)."""

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """Build the towers and preprocessors of a sentence-transformers folder (strictly)."""
        folder, options = self.opened(folder, options)
        trust_remote_code = options.trust_remote_code
        mods = _entries(folder, trust_remote_code=trust_remote_code)
        for mod in mods[1:]:
            if mod.kind == "Router":
                raise ConfigError(f"{mod.file}: {mod.where} is a Router; embedhub loads a Router as the first module",
                                  file=str(mod.file), key=mod.where)
        from embedhub.formats import st_config

        if mods[0].kind == "Router":
            routes, default_task, pipelines = _router(mods[0], mods[1:], trust_remote_code=trust_remote_code)
            towers = {m: tp[0] for m, tp in routes[default_task].items()}
            pre = {m: tp[1] for m, tp in routes[default_task].items()}
            width = next(iter(pipelines.values())).width
            settings = st_config.read(folder, width=width)  # config_sentence_transformers.json
            return ModelParts(towers=towers, preprocessors=pre, embed_dim=width, routes=routes,
                              default_route=default_task, normalized=all(p.normalized for p in pipelines.values()),
                              **st_config.parts_kwargs(settings))
        pipe = _pipeline(mods, trust_remote_code=trust_remote_code)
        settings = st_config.read(folder, width=pipe.width)  # config_sentence_transformers.json
        return ModelParts(towers=pipe.towers, preprocessors=pipe.preprocessors, embed_dim=pipe.width,
                          logit_scale=pipe.logit_scale, config=pipe.spec, normalized=pipe.normalized,
                          **st_config.parts_kwargs(settings))


FORMAT = SentenceTransformersFormat()
