"""sentence-transformers module folders built and saved by sentence-transformers itself (tiny random weights):
full class paths, every module config key honoured (parity with ``SentenceTransformer(folder).encode``) or
refused by name, CLIPModel / StaticEmbedding / Router modules, and plain transformers encoder folders."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_bert

import embedhub
from embedhub import ConfigError, EmbeddingModel

st = pytest.importorskip("sentence_transformers")

TEXTS = ["A man is playing a GUITAR on stage.", "a cat", "The quick brown fox jumps over the lazy dog " * 6, "x"]


def _cos_close(ours: np.ndarray, ref: np.ndarray, tol: float = 1e-5) -> None:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    cos = (ours * ref).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert np.all(1 - cos < tol), 1 - cos


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    out = change(data)
    path.write_text(json.dumps(data if out is None else out))


def _peer(folder: Path, **kwargs):
    return st.SentenceTransformer(str(folder), device="cpu", **kwargs)


@pytest.fixture(scope="module")
def bert_hf(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT saved by transformers, with all-MiniLM-L6-v2's tokenizer files (no modules.json)."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert_hf"), minilm_path)


@pytest.fixture(scope="module")
def st_text(tmp_path_factory, bert_hf) -> Path:
    """Transformer + Pooling (mean) saved by sentence-transformers."""
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    folder = tmp_path_factory.mktemp("st_text")
    st.SentenceTransformer(modules=[Transformer(str(bert_hf)), Pooling(32)], device="cpu").save(str(folder))
    return folder


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# ---------------------------------------------------------------------------------------- full class paths
@pytest.mark.parametrize("kind", ["custom_st.Transformer", "evil.Pooling"])
def test_custom_module_classes_are_refused_by_full_path(st_text, tmp_path, kind):
    folder = _copy(st_text, tmp_path / "m")
    index = 0 if kind.endswith("Transformer") else 1
    _edit(folder / "modules.json", lambda m: m[index].update(type=kind))
    with pytest.raises(ConfigError) as err:
        embedhub.load(folder, device="cpu")
    msg = str(err.value)
    assert "modules.json" in msg and f"module {index}" in msg and repr(kind) in msg
    assert "trust_remote_code=True" in msg and "sentence-transformers" in msg
    assert err.value.key == f"[{index}].type" and Path(err.value.file).name == "modules.json"
    # sentence-transformers refuses it as well without trust_remote_code
    with pytest.raises(ValueError, match="trust_remote_code"):
        _peer(folder)


@pytest.mark.parametrize("paths", [
    ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling"),
    ("sentence_transformers.sentence_transformer.modules.Transformer",
     "sentence_transformers.sentence_transformer.modules.pooling.Pooling"),
])
def test_every_path_sentence_transformers_writes_loads(st_text, tmp_path, paths):
    folder = _copy(st_text, tmp_path / "m")
    _edit(folder / "modules.json", lambda m: [e.update(type=p) for e, p in zip(m, paths)] and None)
    _cos_close(embedhub.load(folder, device="cpu").encode(TEXTS), _peer(folder).encode(TEXTS))


def test_a_suffix_is_not_a_class(st_text, tmp_path):
    folder = _copy(st_text, tmp_path / "m")
    _edit(folder / "modules.json", lambda m: m[1].update(type="sentence_transformers.models.MyPooling"))
    with pytest.raises(ConfigError, match="not a module class of sentence-transformers"):
        embedhub.load(folder, device="cpu")


# ---------------------------------------------------------------------------------------- Transformer keys
@pytest.mark.parametrize("change", [
    {"max_seq_length": 9},
    {"do_lower_case": True},
    {"tokenizer_args": {"model_max_length": 7}},
    {"processor_kwargs": {"model_max_length": 11}, "max_seq_length": 30},
    {"unpad_inputs": True},
    {"backend": "onnx"},
    {"model_args": {"trust_remote_code": True}},
])
def test_transformer_keys_are_honoured(st_text, tmp_path, change):
    folder = _copy(st_text, tmp_path / "m")
    _edit(folder / "sentence_bert_config.json", lambda c: c.update(change))
    ours, peer = embedhub.load(folder, device="cpu"), _peer(folder)
    _cos_close(ours.encode(TEXTS), peer.encode(TEXTS))
    assert ours.max_seq_length == peer.max_seq_length


def test_legacy_transformer_config_name(st_text, tmp_path):
    folder = _copy(st_text, tmp_path / "m")
    (folder / "sentence_bert_config.json").rename(folder / "sentence_roberta_config.json")
    _edit(folder / "sentence_roberta_config.json", lambda c: c.update(max_seq_length=5))
    _cos_close(embedhub.load(folder, device="cpu").encode(TEXTS), _peer(folder).encode(TEXTS))


@pytest.mark.parametrize(("change", "key"), [
    ({"not_a_key": 1}, "not_a_key"),
    ({"model_args": {"torch_dtype": "float16"}}, "model_args.torch_dtype"),
    ({"config_kwargs": {"hidden_dropout_prob": 0.5}}, "config_kwargs.hidden_dropout_prob"),
    ({"tokenizer_args": {"padding_side": "left"}}, "tokenizer_args.padding_side"),
    ({"query_expansion": {"length": 32}}, "query_expansion"),
    ({"query_length": 16}, "query_length"),
    ({"processing_kwargs": {"text": {"max_length": 4}}}, "processing_kwargs"),
    ({"tokenizer_name_or_path": "bert-base-uncased"}, "tokenizer_name_or_path"),
    ({"transformer_task": "sequence-classification"}, "transformer_task"),
    ({"modality_config": {"text": {"method": "forward", "method_output_name": "pooler_output"}}}, "modality_config"),
    ({"module_output_name": "sentence_embedding"}, "module_output_name"),
])
def test_transformer_keys_are_refused_by_name(st_text, tmp_path, change, key):
    folder = _copy(st_text, tmp_path / "m")
    _edit(folder / "sentence_bert_config.json", lambda c: c.update(change))
    with pytest.raises(ConfigError) as err:
        embedhub.load(folder, device="cpu")
    assert "sentence_bert_config.json" in str(err.value) and key in str(err.value)


# ---------------------------------------------------------------------------------------- Pooling / Dense / ...
@pytest.fixture(scope="module")
def st_head(tmp_path_factory, bert_hf) -> Path:
    """Transformer, Pooling (cls + mean), Dense (GELU), Dropout, Dense (Identity), Normalize."""
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Dropout, Normalize, Pooling
    from torch import nn

    torch.manual_seed(1)
    modules = [Transformer(str(bert_hf)), Pooling(32, pooling_mode=("cls", "mean")),
               Dense(64, 24, activation_function=nn.GELU()), Dropout(0.3),
               Dense(24, 16, bias=False, activation_function=nn.Identity()), Normalize()]
    folder = tmp_path_factory.mktemp("st_head")
    st.SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def test_pooling_dense_dropout_normalize_parity(st_head):
    model = embedhub.load(st_head, device="cpu")
    assert model.embed_dim == 16
    np.testing.assert_allclose(model.encode(TEXTS, normalize=False), _peer(st_head).encode(TEXTS), atol=1e-5)


@pytest.mark.parametrize("change", [
    {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True},  # agree with pooling_mode
    {"word_embedding_dimension": 32},
    {"include_prompt": True},
])
def test_pooling_keys_that_agree_load(st_head, tmp_path, change):
    folder = _copy(st_head, tmp_path / "m")
    _edit(folder / "1_Pooling" / "config.json", lambda c: c.update(change))
    _cos_close(embedhub.load(folder, device="cpu").encode(TEXTS), _peer(folder).encode(TEXTS))


@pytest.mark.parametrize("flags", [{}, {"pooling_mode_max_tokens": True, "pooling_mode_cls_token": True},
                                   {"pooling_mode_mean_tokens": False}])
def test_legacy_pooling_flags_alone(st_text, tmp_path, flags):
    """Without pooling_mode, the flags decide in sentence-transformers' fixed order (none set: mean)."""
    folder = _copy(st_text, tmp_path / "m")
    _edit(folder / "1_Pooling" / "config.json", lambda c: {"word_embedding_dimension": 32, **flags})
    _cos_close(embedhub.load(folder, device="cpu").encode(TEXTS), _peer(folder).encode(TEXTS))


@pytest.mark.parametrize(("file", "change", "key"), [
    ("1_Pooling/config.json", {"pooling_mode_max_tokens": True}, "pooling_mode_max_tokens"),
    ("1_Pooling/config.json", {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False},
     "pooling_mode_cls_token"),
    ("1_Pooling/config.json", {"pooling_mode": "lasttoken", "pooling_mode_mean_tokens": True}, "pooling_mode"),
    ("1_Pooling/config.json", {"normalize": True}, "normalize"),
    ("2_Dense/config.json", {"module_input_name": "token_embeddings"}, "module_input_name"),
    ("2_Dense/config.json", {"activation_function": "my_pkg.Swish"}, "activation_function"),
    ("2_Dense/config.json", {"activation_function": "torch.nn.modules.activation.Softplus"}, "activation_function"),
    ("2_Dense/config.json", {"dropout": 0.1}, "dropout"),
    ("3_Dropout/config.json", {"p": 0.1}, "p"),
    ("5_Normalize/config.json", {"module_input_name": "token_embeddings"}, "module_input_name"),
    ("5_Normalize/config.json", {"dim": -1}, "dim"),
])
def test_module_keys_are_refused_by_name(st_head, tmp_path, file, change, key):
    folder = _copy(st_head, tmp_path / "m")
    _edit(folder / file, lambda c: c.update(change))
    with pytest.raises(ConfigError) as err:
        embedhub.load(folder, device="cpu")
    assert file.split("/")[0] in str(err.value) and key in str(err.value)


def test_residual_dense_layers(bert_hf, tmp_path):
    """use_residual: the input added back, through a projection when the widths differ; kept by embedhub's
    own format and by the sentence-transformers layout it writes."""
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling

    torch.manual_seed(5)
    modules = [Transformer(str(bert_hf)), Pooling(32), Dense(32, 32, use_residual=True),
               Dense(32, 16, use_residual=True)]
    st.SentenceTransformer(modules=modules, device="cpu").save(str(tmp_path / "st"))
    model = embedhub.load(tmp_path / "st", device="cpu")
    ref = _peer(tmp_path / "st").encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, normalize=False), ref, atol=1e-5)
    model.save_pretrained(tmp_path / "own")
    np.testing.assert_allclose(embedhub.load(tmp_path / "own", device="cpu").encode(TEXTS, normalize=False), ref,
                               atol=1e-5)
    if (tmp_path / "own" / "modules.json").is_file():  # the sentence-transformers layout written beside it
        np.testing.assert_allclose(_peer(tmp_path / "own").encode(TEXTS), ref, atol=1e-5)


def test_dense_after_normalize_is_refused(st_head, tmp_path):
    folder = _copy(st_head, tmp_path / "m")
    _edit(folder / "modules.json", lambda m: [m[0], m[1], m[5], m[2]])
    with pytest.raises(ConfigError, match="Dense module after a Normalize"):
        embedhub.load(folder, device="cpu")


# ---------------------------------------------------------------------------------------- StaticEmbedding
def _static(minilm_path: Path, dim: int = 32, seed: int = 2):
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer

    torch.manual_seed(seed)
    return StaticEmbedding(Tokenizer.from_file(str(minilm_path / "tokenizer.json")), embedding_dim=dim)


@pytest.fixture(scope="module")
def st_static(tmp_path_factory, minilm_path) -> Path:
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    folder = tmp_path_factory.mktemp("st_static")
    torch.manual_seed(3)
    modules = [_static(minilm_path), Dense(32, 16), Normalize()]
    st.SentenceTransformer(modules=modules, device="cpu").save(str(folder))
    return folder


def test_static_embedding_export_is_refused_by_name(st_static, tmp_path):
    pytest.importorskip("onnxruntime")
    from export import export

    with pytest.raises(ValueError, match="static embedding table"):
        export(str(st_static), tmp_path / "onnx", verbose=False)
    assert not (tmp_path / "onnx").exists()


def test_static_embedding_parity(st_static):
    modules = json.loads((st_static / "modules.json").read_text())
    assert modules[0]["type"].endswith("static_embedding.StaticEmbedding")
    model = embedhub.load(st_static, device="cpu")
    texts = [*TEXTS, "", "unseen-tokens ☃ 😀"]
    assert model.embed_dim == 16 and model.format == "sentence-transformers"
    _cos_close(model.encode(texts, normalize=False), _peer(st_static).encode(texts))


def test_static_embedding_legacy_path_is_not_custom_code(st_static, tmp_path):
    folder = _copy(st_static, tmp_path / "m")
    _edit(folder / "modules.json", lambda m: m[0].update(type="sentence_transformers.models.StaticEmbedding"))
    _cos_close(embedhub.load(folder, device="cpu").encode(TEXTS), _peer(folder).encode(TEXTS))


def test_model2vec_folder_loads_as_static_embedding(tmp_path, minilm_path):
    """A folder model2vec itself saved (vocabulary-quantised: embeddings + mapping + per-token weights)."""
    model2vec = pytest.importorskip("model2vec")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    rng = np.random.default_rng(0)
    static = model2vec.StaticModel(rng.standard_normal((50, 24)).astype(np.float32), tok, normalize=True,
                                   weights=rng.uniform(0.5, 2, vocab).astype(np.float32),
                                   token_mapping=rng.integers(0, 50, vocab))
    static.save_pretrained(tmp_path / "m2v")
    model = embedhub.load(tmp_path / "m2v", device="cpu")
    assert model.embed_dim == 24
    _cos_close(model.encode(TEXTS), _peer(tmp_path / "m2v").encode(TEXTS))
    # short texts without unknown tokens: model2vec's own numbers too
    _cos_close(model.encode(TEXTS[:2]), static.encode(TEXTS[:2]))


@pytest.mark.parametrize("max_length", [6, None])
def test_model2vec_folder_without_modules_json_gives_model2vecs_numbers(tmp_path, minilm_path, max_length):
    """An older model2vec layout (no modules.json): encoded as model2vec's StaticModel.encode does (unknown
    tokens dropped, texts cut at max_length tokens, normalised as the config says)."""
    model2vec = pytest.importorskip("model2vec")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_path / "tokenizer.json"))
    vocab = tok.get_vocab_size()
    rng = np.random.default_rng(1)
    static = model2vec.StaticModel(rng.standard_normal((40, 16)).astype(np.float32), tok, normalize=True,
                                   weights=rng.uniform(0.5, 2, vocab).astype(np.float32),
                                   token_mapping=rng.integers(0, 40, vocab), max_length=max_length,
                                   config={"model_type": "model2vec", "architectures": ["StaticModel"],
                                           "tokenizer_name": "all-MiniLM-L6-v2", "apply_pca": 16, "hidden_dim": 16})
    folder = tmp_path / "m2v"
    static.save_pretrained(folder)
    (folder / "modules.json").unlink()
    shutil.rmtree(folder / "1_Normalize", ignore_errors=True)
    texts = [*TEXTS, "snow ☃ and 😀 ☃☃", "", "UNSEEN ☃"]
    model = embedhub.load(folder, device="cpu")
    assert model.format == "model2vec" and model.embed_dim == 16
    peer = model2vec.StaticModel.from_pretrained(str(folder))
    ref = peer.encode(texts)
    ours = model.encode(texts, normalize=False)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    _edit(folder / "config.json", lambda c: c.update(head_config={"classes": ["a"]}))
    with pytest.raises(ConfigError, match="head_config"):
        embedhub.load(folder, device="cpu")


# ---------------------------------------------------------------------------------------- CLIPModel
@pytest.fixture(scope="module")
def st_clip_legacy(tmp_path_factory, hf_clip_dir) -> Path:
    """The sentence-transformers/clip-ViT-B-32 layout: a transformers CLIP folder in 0_CLIPModel."""
    folder = tmp_path_factory.mktemp("st_clip_legacy")
    shutil.copytree(hf_clip_dir, folder / "0_CLIPModel")
    (folder / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}]))
    return folder


@pytest.fixture(scope="module")
def st_clip_saved(tmp_path_factory, hf_clip_dir) -> Path:
    """A CLIPModel module and a Normalize, saved by sentence-transformers 6."""
    from sentence_transformers.sentence_transformer.modules import CLIPModel, Normalize

    folder = tmp_path_factory.mktemp("st_clip_saved")
    st.SentenceTransformer(modules=[CLIPModel(str(hf_clip_dir)), Normalize()], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="module")
def st_clip_transformer(tmp_path_factory, hf_clip_dir) -> Path:
    """sentence-transformers 6's own way: a Transformer module on a CLIP folder (get_text/image_features)."""
    from sentence_transformers.base.modules.transformer import Transformer

    folder = tmp_path_factory.mktemp("st_clip_transformer")
    st.SentenceTransformer(modules=[Transformer(str(hf_clip_dir))], device="cpu").save(str(folder))
    assert "get_image_features" in (folder / "sentence_bert_config.json").read_text()
    return folder


@pytest.mark.parametrize("which", ["st_clip_legacy", "st_clip_saved", "st_clip_transformer"])
def test_clip_module_text_and_images(request, which, photos):
    folder = request.getfixturevalue(which)
    model, peer = embedhub.load(folder, device="cpu"), _peer(folder)
    assert model.modalities == ("text", "image") and model.embed_dim == 24
    texts = ["a photo of an astronaut", "a cat", "a cup of coffee on a wooden table"]
    _cos_close(model.encode(texts), peer.encode(texts))
    _cos_close(model.encode(photos), peer.encode(photos))
    mixed = model.encode([texts[0], photos[1]])
    _cos_close(mixed, np.stack([peer.encode(texts[0]), peer.encode(photos[1])]))


def test_clip_module_keys(st_clip_legacy, tmp_path):
    folder = _copy(st_clip_legacy, tmp_path / "m")
    (folder / "0_CLIPModel" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 5}))
    texts = ["a photo of an astronaut riding a horse on the moon", "a cat"]
    _cos_close(embedhub.load(folder, device="cpu").encode(texts), _peer(folder).encode(texts))
    (folder / "0_CLIPModel" / "sentence_bert_config.json").write_text(json.dumps({"processor_name": "other/repo"}))
    with pytest.raises(ConfigError, match="processor_name"):
        embedhub.load(folder, device="cpu")


# ---------------------------------------------------------------------------------------- Router
@pytest.fixture(scope="module")
def st_router(tmp_path_factory, bert_hf, minilm_path) -> Path:
    """Router.for_query_document: a StaticEmbedding for queries, Transformer + Pooling for documents, then
    a Normalize after the Router."""
    from sentence_transformers.base.modules import Router
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    router = Router.for_query_document(query_modules=[_static(minilm_path, seed=4)],
                                       document_modules=[Transformer(str(bert_hf)), Pooling(32)])
    folder = tmp_path_factory.mktemp("st_router")
    st.SentenceTransformer(modules=[router, Normalize()], device="cpu").save(str(folder))
    return folder


def _route_model(parts, task: str) -> EmbeddingModel:
    towers = {m: tp[0] for m, tp in parts.routes[task].items()}
    pre = {m: tp[1] for m, tp in parts.routes[task].items()}
    return EmbeddingModel(towers, pre, embed_dim=parts.embed_dim, name=task, format="sentence-transformers")


def test_router_routes_match_encode_query_and_document(st_router):
    from embedhub.formats.sentence_transformers import FORMAT as fmt

    parts = fmt.load(st_router)
    peer = _peer(st_router)
    assert set(parts.routes) == {"query", "document"} and parts.default_route == "document"
    _cos_close(_route_model(parts, "query").encode(TEXTS), peer.encode_query(TEXTS))
    _cos_close(_route_model(parts, "document").encode(TEXTS), peer.encode_document(TEXTS))
    # the two routes differ, and encode() without a task takes the default route, as the peer does
    assert not np.allclose(peer.encode_query(TEXTS), peer.encode_document(TEXTS), atol=1e-3)
    _cos_close(embedhub.load(st_router, device="cpu").encode(TEXTS), peer.encode(TEXTS))


def test_router_through_encode_query_and_encode_document(st_router):
    model, peer = embedhub.load(st_router, device="cpu"), _peer(st_router)
    assert set(model.routes) == {"query", "document"} and model.default_route == "document"
    _cos_close(model.encode_query(TEXTS), peer.encode_query(TEXTS))
    _cos_close(model.encode_document(TEXTS), peer.encode_document(TEXTS))
    _cos_close(model.encode(TEXTS, task="query"), peer.encode(TEXTS, task="query"))
    _cos_close(model.encode(TEXTS), peer.encode(TEXTS))


def test_router_export_is_refused_by_name(st_router, tmp_path):
    """One graph per modality cannot hold a query and a document tower: refused before any file is written."""
    pytest.importorskip("onnxruntime")
    from export import export

    with pytest.raises(ValueError, match=r"routes its inputs by task .*'query'"):
        export(str(st_router), tmp_path / "onnx", verbose=False)
    assert not (tmp_path / "onnx").exists()


def test_router_default_route_and_mappings(st_router, tmp_path):
    from embedhub.formats.sentence_transformers import FORMAT as fmt

    folder = _copy(st_router, tmp_path / "m")
    cfg = folder / json.loads((folder / "modules.json").read_text())[0]["path"] / "router_config.json"
    _edit(cfg, lambda c: c["parameters"].update(default_route="query",
                                                route_mappings={"('search', None)": "query"}))
    parts, peer = fmt.load(folder), _peer(folder)
    assert parts.default_route == "query" and set(parts.routes) == {"query", "document", "search"}
    _cos_close(embedhub.load(folder, device="cpu").encode(TEXTS), peer.encode(TEXTS))
    _cos_close(_route_model(parts, "search").encode(TEXTS), peer.encode(TEXTS, task="search"))
    _edit(cfg, lambda c: c["parameters"].update(default_route="nowhere"))
    with pytest.raises(ConfigError, match="default_route"):
        embedhub.load(folder, device="cpu")
    _edit(cfg, lambda c: c["types"].update({"query_0_StaticEmbedding": "custom.Static"}))
    with pytest.raises(ConfigError, match="router_config.json.*custom.Static.*trust_remote_code=True"):
        embedhub.load(folder, device="cpu")


# ---------------------------------------------------------------------------------------- plain transformers
def test_plain_encoder_folder_mean_pooling_with_warning(bert_hf, caplog):
    with caplog.at_level(logging.WARNING, logger="embedhub"):
        model = embedhub.load(bert_hf, device="cpu")
    assert model.format == "transformers"
    assert any("no modules.json" in r.getMessage() and "mean pooling" in r.getMessage() for r in caplog.records)
    peer = _peer(bert_hf)
    _cos_close(model.encode(TEXTS), peer.encode(TEXTS))
    assert model.max_seq_length == peer.max_seq_length


def test_clip_config_still_goes_to_the_clip_format(hf_clip_dir):
    assert embedhub.load(hf_clip_dir, device="cpu").format == "transformers-clip"


@pytest.mark.parametrize(("config", "named"), [
    ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "Qwen2ForCausalLM"),
    ({"model_type": "no-such-architecture"}, "no-such-architecture"),
    ({"model_type": "vit", "architectures": ["ViTModel"]}, "ViTModel"),
    ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, "T5ForConditionalGeneration"),
    ({"model_type": "blip", "architectures": ["BlipModel"]}, "BlipModel"),
])
def test_plain_folder_refusals_name_the_architecture(bert_hf, tmp_path, config, named):
    folder = _copy(bert_hf, tmp_path / "m")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(embedhub.UnknownFormatError) as err:
        embedhub.load(folder, device="cpu")
    assert named in str(err.value) and "CLIP" not in str(err.value)


@pytest.mark.parametrize("which", ["st_static", "st_router", "bert_hf", "st_clip_saved"])
def test_new_layouts_save_and_load_back(request, which, tmp_path):
    model = embedhub.load(request.getfixturevalue(which), device="cpu")
    model.save_pretrained(tmp_path / "saved")
    again = embedhub.load(tmp_path / "saved", device="cpu")
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_roberta_positions_after_the_padding_index_bound_the_text_length(tmp_path, minilm_path):
    """RoBERTa-style position ids start after the padding index: a 66-position model with pad id 0 embeds 65
    tokens. A long text is truncated there, and equals transformers' own mean pooling of the truncated ids."""
    import transformers

    folder = tmp_path / "roberta"
    torch.manual_seed(1)
    config = transformers.RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=66, pad_token_id=0)
    transformers.RobertaModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(minilm_path / name, folder / name)
    model = embedhub.load(folder, device="cpu")
    assert model.max_seq_length == 65
    long = "word " * 300
    got = model.encode([long], normalize=False)
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    ref = transformers.AutoModel.from_pretrained(str(folder)).eval()
    ids = tok([long], truncation=True, max_length=65, return_tensors="pt")
    with torch.no_grad():
        want = ref(**{k: v for k, v in ids.items() if k != "token_type_ids"}).last_hidden_state.mean(1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
