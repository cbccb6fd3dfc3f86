"""ONNX export of a prompted, truncated dot-product model: the folder keeps its prompts, similarity and
truncation, and backend="onnx" gives torch's vectors for prompts, truncation and quantised precisions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedhub

st = pytest.importorskip("sentence_transformers")
pytest.importorskip("onnxruntime")
PROMPTS = {"query": "query: ", "document": "passage: "}
TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "The cat sleeps on the sofa.",
         "Two dogs run through a field.", "A child is reading a book.", "Someone is cooking pasta.",
         "The train leaves at noon.", "The stock market fell today."]


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, tiny_st_dir) -> tuple[Path, Path]:
    """A tiny model saved by sentence-transformers with prompts, a default prompt, dot similarity and
    truncate_dim 16, and its parity-gated ONNX export."""
    from export import export

    folder = tmp_path_factory.mktemp("prompted_st")
    peer = st.SentenceTransformer(str(tiny_st_dir), device="cpu", prompts=PROMPTS, default_prompt_name="document",
                                  similarity_fn_name="dot", truncate_dim=16)
    peer.save(str(folder))
    out = export(str(folder), tmp_path_factory.mktemp("prompted_onnx") / "onnx", verbose=False)
    return folder, out


def test_export_keeps_prompts_similarity_and_truncation(prompted):
    folder, out = prompted
    torch_model = embedhub.load(folder, device="cpu")
    onnx_model = embedhub.load(out, backend="onnx", device="cpu")
    assert onnx_model.backend == "onnx"
    for attr in ("prompts", "default_prompt_name", "similarity_fn_name", "truncate_dim"):
        assert getattr(onnx_model, attr) == getattr(torch_model, attr), attr
    assert onnx_model.truncate_dim == 16 and onnx_model.similarity_fn_name == "dot"
    peer = st.SentenceTransformer(str(folder), device="cpu")
    for encode in ("encode", "encode_query", "encode_document"):
        ours = getattr(onnx_model, encode)(TEXTS)
        ref = getattr(torch_model, encode)(TEXTS)
        theirs = getattr(peer, encode)(TEXTS)
        assert ours.shape == (len(TEXTS), 16)
        for other in (ref, theirs):
            cos = (ours * other).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(other, axis=1)
            assert cos.min() > 1 - 1e-5, encode
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-4)
    # a prompt name the model does not have is refused on the ONNX backend too, listing the prompts
    with pytest.raises(ValueError, match="'query'"):
        onnx_model.encode(TEXTS, prompt_name="passage")


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_onnx_quantised_and_truncated_outputs_equal_torch(prompted, precision):
    """Quantisation and truncation run after the graph: the codes equal torch's (and the peer's) exactly."""
    folder, out = prompted
    torch_model = embedhub.load(folder, device="cpu")
    onnx_model = embedhub.load(out, backend="onnx", device="cpu")
    peer = st.SentenceTransformer(str(folder), device="cpu")
    for dim in (8, None):
        ours = onnx_model.encode_query(TEXTS, truncate_dim=dim, precision=precision)
        ref = torch_model.encode_query(TEXTS, truncate_dim=dim, precision=precision)
        theirs = peer.encode_query(TEXTS, truncate_dim=dim, precision=precision)
        assert ours.dtype == ref.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, ref)
        np.testing.assert_array_equal(ours, theirs)


def test_export_refuses_prompts_that_pooling_leaves_out(tmp_path, tiny_st_dir):
    """include_prompt: false pools without the prompt's tokens, which a graph with pooling inside cannot do:
    refused before any work, naming the setting."""
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    from export import export

    transformer = Transformer(str(tiny_st_dir), max_seq_length=64)
    peer = st.SentenceTransformer(modules=[transformer, Pooling(32, pooling_mode="mean", include_prompt=False)],
                                  device="cpu", prompts={"query": "Represent this query: "})
    peer.save(str(tmp_path / "instructor"))
    model = embedhub.load(tmp_path / "instructor", device="cpu")
    with pytest.raises(ValueError, match="include_prompt"):
        export(model, tmp_path / "onnx", verbose=False)
    assert not (tmp_path / "onnx").exists()
