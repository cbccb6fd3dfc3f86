"""Walks sentence-transformers' own module classes and the config keys each reads or writes (from the installed
package) and fails when one is neither supported nor refused by name in embedhub's tables."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_bert

import embedhub
from embedhub import ConfigError
from embedhub.formats.sentence_transformers import MODULE_CLASSES, MODULE_KEYS, REFUSED_CLASSES, REFUSED_KEYS

st = pytest.importorskip("sentence_transformers")

PACKAGES = ["sentence_transformers.base.modules", "sentence_transformers.sentence_transformer.modules",
            "sentence_transformers.sparse_encoder.modules", "sentence_transformers.cross_encoder.modules",
            "sentence_transformers.multi_vector_encoder.modules"]
#: the places a module class is named from in modules.json: its package exports and the legacy package
PREFIXES = ["sentence_transformers.models", "sentence_transformers.base.modules",
            "sentence_transformers.sentence_transformer.modules"]


def _module_classes() -> dict[str, type]:
    from sentence_transformers.base.modules.module import Module

    found: dict[str, type] = {}
    for package in PACKAGES:
        mod = importlib.import_module(package)
        for name in dir(mod):
            obj = getattr(mod, name)
            if inspect.isclass(obj) and issubclass(obj, Module):
                found[obj.__name__] = obj
    return found


CLASSES = _module_classes()
SUPPORTED = sorted(set(MODULE_CLASSES.values()))


def _paths(cls: type) -> set[str]:
    """Every class path sentence-transformers writes (the defining module) or resolves to ``cls`` from its package
    exports, the legacy ``sentence_transformers.models`` and the deprecated aliases of the defining module."""
    from sentence_transformers.util.deprecated_import import DEPRECATED_MODULE_PATHS
    from sentence_transformers.util.misc import import_from_string

    stm = importlib.import_module("sentence_transformers.sentence_transformer.modules")
    names = {cls.__name__} | {n for n in dir(stm) if getattr(stm, n) is cls}
    prefixes = {cls.__module__, *PREFIXES} | {a for a, t in DEPRECATED_MODULE_PATHS.items() if t == cls.__module__}
    out = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for prefix in prefixes:
            for name in names:
                try:
                    if import_from_string(f"{prefix}.{name}") is cls:
                        out.add(f"{prefix}.{name}")
                except ImportError:
                    pass
    return out


def test_the_walk_finds_sentence_transformers_modules():
    assert {"Transformer", "Pooling", "Dense", "Normalize", "StaticEmbedding", "CLIPModel", "Router"} <= set(CLASSES)
    assert len(CLASSES) >= 20


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_every_module_class_is_supported_or_refused_by_name(name):
    cls = CLASSES[name]
    if name not in SUPPORTED:
        assert name in REFUSED_CLASSES, f"sentence-transformers' {name} is neither supported nor refused"
        return
    ours = {p for p, kind in MODULE_CLASSES.items() if kind == name}
    written = f"{cls.__module__}.{cls.__name__}"
    assert written in ours, f"the path sentence-transformers writes for {name} is not matched: {written}"
    assert ours == _paths(cls), f"{name}: paths differ from what sentence-transformers resolves"


def test_every_path_in_the_table_resolves_to_its_class():
    from sentence_transformers.util.misc import import_from_string

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, kind in MODULE_CLASSES.items():
            assert import_from_string(path) is CLASSES[kind], path


def _init_keys(cls: type, *skip: str) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    variadic = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return {n for n, p in params.items() if n not in ("self", *skip) and p.kind not in variadic}


def _source_keys(obj, pattern: str) -> set[str]:
    return set(re.findall(pattern, inspect.getsource(obj)))


def _st_keys(kind: str) -> set[str]:
    """The config keys sentence-transformers reads for a module kind: its config_keys, its constructor's
    arguments (``Module.load`` passes the config to it), renamed legacy keys, and keys a save writes."""
    from sentence_transformers.util.decorators import transformer_kwargs_decorator

    cls = CLASSES[kind]
    keys = set(getattr(cls, "config_keys", [])) | set(getattr(cls, "config_key_renames", {}))
    if kind in ("Transformer", "CLIPModel"):
        transformer = CLASSES["Transformer"]
        keys |= set(transformer.config_keys) | _init_keys(transformer, "model_name_or_path")
        keys |= _source_keys(transformer_kwargs_decorator, r'"(\w+)": "\w+_kwargs"')  # model_args, ...
        keys |= _source_keys(transformer_kwargs_decorator, r'if "(\w+)" in kwargs')  # cache_dir
        if kind == "CLIPModel":
            keys |= _init_keys(cls, "model_name_or_path") | _source_keys(cls.__init__, r'if "(\w+)" in kwargs')
    elif kind == "Pooling":
        from sentence_transformers.sentence_transformer.modules.pooling import _LEGACY_POOLING_MODE_KWARGS

        keys |= _init_keys(cls) | set(_LEGACY_POOLING_MODE_KWARGS)
    elif kind == "Router":
        keys = {f"parameters.{k}" for k in cls.config_keys} | _source_keys(cls.save, r'"(types|structure)"')
    elif kind == "StaticEmbedding":
        assert "load_config" not in inspect.getsource(cls.load), "StaticEmbedding now reads a config"
    else:
        keys |= _init_keys(cls)
    return keys


@pytest.mark.parametrize("kind", SUPPORTED)
def test_every_config_key_is_supported_or_refused_by_name(kind, written_keys):
    keys = _st_keys(kind) | written_keys.get(kind, set())
    unknown = sorted(k for k in keys if k not in MODULE_KEYS[kind] and k not in REFUSED_KEYS.get(kind, {}))
    assert not unknown, f"{kind} config keys neither supported nor refused: {unknown}"


# ------------------------------------------------------------------------------------------ real saves
@pytest.fixture(scope="module")
def saved(tmp_path_factory, minilm_path) -> Path:
    """Every supported module kind but CLIPModel, saved by sentence-transformers: a Router whose document
    route is Transformer, Pooling, Dense, Dropout, and whose query route is a StaticEmbedding and a Dense;
    then a Normalize."""
    from sentence_transformers.base.modules import Router
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Dropout, Normalize, Pooling, StaticEmbedding
    from tokenizers import Tokenizer

    hf = save_tiny_bert(tmp_path_factory.mktemp("keys_hf"), minilm_path, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32)
    static = StaticEmbedding(Tokenizer.from_file(str(minilm_path / "tokenizer.json")), embedding_dim=8)
    router = Router.for_query_document(query_modules=[static, Dense(8, 12)],
                                       document_modules=[Transformer(str(hf), max_seq_length=20), Pooling(16),
                                                         Dense(16, 12), Dropout(0.1)])
    folder = tmp_path_factory.mktemp("keys_st")
    st.SentenceTransformer(modules=[router, Normalize()], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def written_keys(saved) -> dict[str, set[str]]:
    """kind -> the keys the save above wrote into that kind's config files."""
    router = json.loads((saved / "router_config.json").read_text())
    out: dict[str, set[str]] = {"Router": {"types", "structure"} | {f"parameters.{k}" for k in router["parameters"]}}
    for model_id, path in router["types"].items():
        kind = MODULE_CLASSES[path]
        name = "sentence_bert_config.json" if kind == "Transformer" else "config.json"
        if (saved / model_id / name).is_file():
            out.setdefault(kind, set()).update(json.loads((saved / model_id / name).read_text()))
    out.setdefault("Normalize", set()).update(json.loads((saved / "1_Normalize" / "config.json").read_text()))
    return out


def test_the_save_with_every_kind_loads_with_the_peers_numbers(saved):
    from embedhub.formats.sentence_transformers import FORMAT as fmt

    texts = ["a rocket launch at night", "A CAT sleeps", "x " * 40]
    peer = st.SentenceTransformer(str(saved), device="cpu")
    parts = fmt.load(saved)
    for task, ref in (("query", peer.encode_query(texts)), ("document", peer.encode_document(texts))):
        tower, pre = parts.routes[task]["text"]
        model = embedhub.EmbeddingModel({"text": tower}, {"text": pre}, embed_dim=12, name=task, format="st")
        torch.testing.assert_close(torch.from_numpy(model.encode(texts)), torch.from_numpy(ref), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["Transformer", "Pooling", "Dense", "Dropout", "Normalize", "Router"])
def test_an_unknown_key_in_any_module_config_is_refused_by_name(saved, tmp_path, kind):
    folder = tmp_path / "m"
    shutil.copytree(saved, folder)
    router = json.loads((folder / "router_config.json").read_text())
    if kind == "Router":
        target = folder / "router_config.json"
    elif kind == "Normalize":
        target = folder / "1_Normalize" / "config.json"
    else:
        model_id = next(m for m, p in router["types"].items() if MODULE_CLASSES[p] == kind)
        target = folder / model_id / ("sentence_bert_config.json" if kind == "Transformer" else "config.json")
    data = json.loads(target.read_text())
    (data["parameters"] if kind == "Router" else data)["surprise_key"] = 1
    target.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        embedhub.load(folder, device="cpu")
    assert target.name in str(err.value) and "surprise_key" in str(err.value)


def test_every_model2vec_config_key_is_supported_or_refused_by_name():
    """The keys model2vec's own config type declares (and its save writes) are each read or refused."""
    types = pytest.importorskip("model2vec.types")
    from embedhub.formats import model2vec as fmt

    keys = set(types.StaticModelConfig.__annotations__)
    assert {"normalize", "max_length", "model_type"} <= keys
    unknown = sorted(k for k in keys if k not in fmt.CONFIG_KEYS and k not in fmt.REFUSED_KEYS)
    assert not unknown, f"model2vec config keys neither supported nor refused: {unknown}"
