"""Folders in transformers' layout (config.json, tokenizer files), read without handing the folder
to transformers: the config is parsed and allow-listed here, the model is built from it and the
weights are loaded strictly from safetensors; tokenizers come from ``tokenizer.json`` through the
``tokenizers`` library (no code), or from a sanitised copy of the vocabulary files.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub.errors import ConfigError

#: keys every transformers config may carry besides its class's own arguments (read, or harmless)
_COMMON_KEYS = {
    "model_type", "architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
    "output_attentions", "output_hidden_states", "return_dict", "use_return_dict", "id2label", "label2id",
    "pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "tie_word_embeddings",
    "is_encoder_decoder", "is_decoder", "add_cross_attention", "chunk_size_feed_forward", "problem_type",
    "gradient_checkpointing", "use_cache", "initializer_factor", "finetuning_task", "prefix", "task_specific_params",
    "torchscript", "tokenizer_class", "num_labels", "cross_attention_hidden_size", "tie_encoder_decoder",
}
#: keys that load code or other repos, or change how weights are read: never forwarded without consent
_CODE_KEYS = {"auto_map", "custom_pipelines", "quantization_config", "trust_remote_code", "attn_implementation",
              "_attn_implementation", "base_model_name_or_path", "adapter_config", "peft_config"}
#: integer config keys that must be at least 1
_POSITIVE = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
             "max_position_embeddings", "projection_dim", "image_size", "patch_size", "num_channels", "type_vocab_size",
             "dim", "n_layers", "n_heads", "hidden_dim", "d_model", "num_layers", "num_heads"}


def _annotation_types(annotation: Any) -> tuple[type, ...] | None:
    """Python types a config argument's annotation admits, or None to skip the check."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text in ("", "inspect._empty", "_empty") or "Any" in text:
        return None
    types: list[type] = []
    for part in re.split(r"\s*\|\s*|Optional\[|Union\[|\]|,\s*", text):
        part = part.strip()
        head = part.split("[", 1)[0]
        if head == "int":
            types.append(int)
        elif head == "float":
            types += [float, int]
        elif head == "bool":
            types.append(bool)
        elif head in ("str", "Literal", "torch.dtype"):
            types.append(str)
        elif head == "None":
            types.append(type(None))
        elif head in ("list", "tuple", "List", "Tuple"):
            types.append(list)
        elif head in ("dict", "Dict"):
            types.append(dict)
        elif head:
            return None  # another class (a sub-config): checked recursively or by its own constructor
    return tuple(types) or None


def _check_value(view: ConfigView, key: str, value: Any, types: tuple[type, ...]) -> None:
    ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool) and bool not in types) for t in types)
    if not ok:
        names = sorted({t.__name__.replace("NoneType", "null") for t in types})
        raise view.error(key, " or ".join(names), value)
    if isinstance(value, int) and not isinstance(value, bool) and key in _POSITIVE and value < 1:
        raise view.error(key, "an integer >= 1", value)
    if isinstance(value, float) and value != value:  # NaN
        raise view.error(key, "a number", value)


def config_class(model_type: str):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        return None


def clean_config(view: ConfigView, cls: Any, *, trust_remote_code: bool) -> dict[str, Any]:
    """The keys of a transformers config that ``cls`` takes, type-checked against its signature;
    keys that would run code or fetch another repo are refused, unknown keys dropped."""
    risky = sorted(k for k in view.data if k in _CODE_KEYS and view.data[k] not in (None, {}, "", False))
    if risky and not trust_remote_code:
        raise ConfigError(
            f"{view.file}: {view.prefix}{risky[0]} asks for custom code or another repository; embedhub never "
            "runs remote code or follows such keys unless you pass trust_remote_code=True",
            file=str(view.file), key=view.prefix + risky[0],
        )
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
              if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    sub_configs = getattr(cls, "sub_configs", {}) or {}
    out: dict[str, Any] = {}
    for key, value in view.data.items():
        if key in _CODE_KEYS or key in ("torch_dtype", "dtype", "_name_or_path", "transformers_version"):
            continue
        if key in sub_configs:
            sub_cls = sub_configs[key]
            if value is None:
                continue
            out[key] = clean_config(view.view(key), sub_cls, trust_remote_code=trust_remote_code)
            continue
        if key not in params and key not in _COMMON_KEYS:
            continue  # not an argument of this architecture: not forwarded
        if key in params:
            types = _annotation_types(params[key].annotation)
            if types is not None:
                _check_value(view, key, value, types)
        out[key] = value
    return out


def transformers_config(folder: ModelFolder, *, trust_remote_code: bool, expect: str | None = None):
    """The validated ``PretrainedConfig`` of ``folder/config.json``.

    ``expect`` names the model type a format requires (``"clip"``); the config must be of an
    architecture transformers itself implements.
    """
    view = folder.config("config.json")
    model_type = view.str("model_type")
    if expect is not None and model_type != expect:
        raise view.error("model_type", repr(expect), model_type)
    cls = config_class(model_type)
    if cls is None:
        raise ConfigError(
            f"{view.file}: model_type {model_type!r} is not an architecture of the installed transformers; "
            "custom architectures need trust_remote_code=True", file=str(view.file), key="model_type",
        )
    cleaned = clean_config(view, cls, trust_remote_code=trust_remote_code)
    cleaned.pop("model_type", None)
    try:
        return cls(**cleaned)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
        raise ConfigError(f"{view.file}: not a valid {cls.__name__}: {exc}", file=str(view.file)) from exc


#: architectures whose position ids start after the padding index (transformers' create_position_ids_from_input_ids)
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text", "ibert",
                     "roberta-prelayernorm", "xmod", "mpnet", "luke"}


def usable_positions(config: Any, default: int = 512) -> int:
    """How many tokens the text backbone of ``config`` embeds: ``max_position_embeddings``, less the
    ``pad_token_id + 1`` positions that RoBERTa-style models skip (514 -> 512 for xlm-roberta)."""
    positions = int(getattr(config, "max_position_embeddings", default) or default)
    if getattr(config, "model_type", None) in _OFFSET_POSITIONS:
        pad = getattr(config, "pad_token_id", None)
        positions -= (int(pad) if isinstance(pad, int) and pad >= 0 else 1) + 1
    return max(positions, 1)


def build_transformers(
    folder: ModelFolder, kind: str, *, what: str, trust_remote_code: bool, expect: str | None = None
):
    """A transformers model (``kind``: ``"AutoModel"`` or ``"CLIPModel"``) built from the folder's
    validated config, weights loaded strictly from its safetensors; no file is handed to transformers."""
    import transformers

    from embedhub.modules.weights import build_checked, find_safetensors

    files = find_safetensors(folder)
    view = folder.config("config.json")
    if trust_remote_code and "auto_map" in view:
        return _from_pretrained_trusted(getattr(transformers, kind), folder, what=what)
    config = transformers_config(folder, trust_remote_code=trust_remote_code, expect=expect)
    cls = getattr(transformers, kind)

    def factory():
        # random initialisation is skipped: the strict load that follows sets every parameter and
        # persistent buffer (a missing one is an error), and non-persistent buffers are built in __init__
        with _no_init():
            return cls.from_config(config) if kind == "AutoModel" else cls(config)

    model = build_checked(factory, files, what=what, config=view.data, config_file=view.file)
    return model.eval()


def _no_init():
    import contextlib

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise, then overwrite
        return contextlib.nullcontext()
    return no_init_weights()



def _from_pretrained_trusted(cls: Any, folder: ModelFolder, *, what: str):
    """transformers' own loader, for configs with custom code the user allowed (``trust_remote_code=True``)."""
    from embedhub.errors import WeightsError

    for code in sorted(folder.root.glob("*.py")):  # the custom code transformers imports: part of the model
        folder.file(code.name, what="custom code file")
    try:
        model, info = cls.from_pretrained(str(folder.root), use_safetensors=True, local_files_only=True,
                                          output_loading_info=True, trust_remote_code=True)
    except Exception as exc:
        raise WeightsError(f"cannot load the {what} weights from {folder.root}: {exc}") from exc
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        detail = "; ".join(f"{k}: {list(v)[:3]}" for k, v in problems.items())
        raise WeightsError(f"weights in {folder.root} do not match the {what} architecture (strict load): {detail}")
    return model.eval()
