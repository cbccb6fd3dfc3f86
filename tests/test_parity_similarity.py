"""Similarity functions, normalize=None, Matryoshka truncation and output precision against
sentence-transformers itself (models built and saved by sentence-transformers; quantised outputs equal
exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from st_peer import assert_close, build_st, peer

import embedhub
from embedhub import EmbeddingModel, InputError

st = pytest.importorskip("sentence_transformers")

TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today.",
         "Plants grow from seeds.", "x", "Who wrote the book about the whale and the captain?"]
FNS = ("cosine", "dot", "euclidean", "manhattan")
PRECISIONS = ("int8", "uint8", "binary", "ubinary")


@pytest.fixture(scope="module", params=FNS)
def by_fn(request, tmp_path_factory, tiny_st_dir):
    """One model per similarity function (no Normalize module), with a Dense layer."""
    folder = build_st(tiny_st_dir, tmp_path_factory.mktemp(f"sim_{request.param}"), dense=24,
                      similarity_fn_name=request.param)
    return request.param, peer(folder), embedhub.load(folder, device="cpu")


def test_similarity_follows_the_model(by_fn):
    fn, theirs, ours = by_fn
    assert ours.similarity_fn_name == theirs.similarity_fn_name == fn
    a, b = theirs.encode(TEXTS[:3]), theirs.encode(TEXTS[3:])
    np.testing.assert_allclose(ours.similarity(a, b), theirs.similarity(a, b).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.similarity_pairwise(a, b), theirs.similarity_pairwise(a, b).numpy(),
                               rtol=1e-5, atol=1e-5)
    single = ours.similarity(a[0], b)  # one vector against many, as the peer takes it
    np.testing.assert_allclose(single, theirs.similarity(a[0], b).numpy(), rtol=1e-5, atol=1e-5)
    if fn != "cosine":  # a check that could fail: the function differs from cosine on these vectors
        assert not np.allclose(ours.similarity(a, b), EmbeddingModel.similarity(a, b), atol=1e-3)


def test_normalize_none_is_what_the_model_defines(by_fn):
    """normalize=None: cosine models come back L2-normalised, the others (no Normalize module) raw, which
    is the peer's default output; explicit True/False always win."""
    fn, theirs, ours = by_fn
    default = ours.encode(TEXTS)
    norms = np.linalg.norm(default, axis=1)
    if fn == "cosine":
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
        assert_close(default, theirs.encode(TEXTS, normalize_embeddings=True))
    else:
        assert not np.allclose(norms, 1.0, atol=1e-3)
        assert_close(default, theirs.encode(TEXTS))
    assert_close(ours.encode(TEXTS, normalize=False), theirs.encode(TEXTS))
    assert_close(ours.encode(TEXTS, normalize=True), theirs.encode(TEXTS, normalize_embeddings=True))
    assert ours.fingerprint.normalized is (fn == "cosine")


def test_dot_model_with_normalize_module_is_normalised(tmp_path, tiny_st_dir):
    folder = build_st(tiny_st_dir, tmp_path / "m", normalize=True, similarity_fn_name="dot")
    theirs, ours = peer(folder), embedhub.load(folder, device="cpu")
    assert ours.normalized and ours.default_normalize()
    assert_close(ours.encode(TEXTS), theirs.encode(TEXTS))
    np.testing.assert_allclose(np.linalg.norm(ours.encode(TEXTS), axis=1), 1.0, atol=1e-5)


def test_class_level_similarity_is_cosine():
    a = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(EmbeddingModel.similarity(a, a), st.util.cos_sim(a, a).numpy(), atol=1e-6)
    np.testing.assert_allclose(EmbeddingModel.similarity_pairwise(a, a[::-1]),
                               st.util.pairwise_cos_sim(a, a[::-1].copy()).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        EmbeddingModel.similarity(a, np.ones((1, 3), dtype=np.float32))


# ---------------------------------------------------------------------------- Matryoshka truncation
@pytest.fixture(scope="module")
def matryoshka(tmp_path_factory, tiny_st_dir):
    folder = build_st(tiny_st_dir, tmp_path_factory.mktemp("matryoshka"), truncate_dim=16,
                      similarity_fn_name="cosine", prompts={"query": "query: "})
    return folder, peer(folder), embedhub.load(folder, device="cpu")


def test_truncate_dim_from_the_config(matryoshka):
    _, theirs, ours = matryoshka
    assert ours.truncate_dim == theirs.truncate_dim == 16
    out = ours.encode(TEXTS, normalize=False)
    assert out.shape == (len(TEXTS), 16)
    assert_close(out, theirs.encode(TEXTS))
    assert_close(ours.encode_query(TEXTS, normalize=False), theirs.encode_query(TEXTS))
    assert ours.fingerprint.dim == 16


def test_truncate_dim_on_load_and_encode(matryoshka):
    folder, theirs, ours = matryoshka
    assert_close(ours.encode(TEXTS, truncate_dim=8, normalize=False), theirs.encode(TEXTS, truncate_dim=8))
    # truncate first, then normalise
    got = ours.encode(TEXTS, truncate_dim=8)
    assert_close(got, theirs.encode(TEXTS, truncate_dim=8, normalize_embeddings=True))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    loaded = embedhub.load(folder, device="cpu", truncate_dim=24)
    assert_close(loaded.encode(TEXTS, normalize=False), peer(folder, truncate_dim=24).encode(TEXTS))
    assert loaded.encode(TEXTS, truncate_dim=32).shape == (len(TEXTS), 32)  # full width on request


@pytest.mark.parametrize("bad", [0, -1, 33, 2.5, "8", True])
def test_bad_truncate_dim_is_refused_before_work(matryoshka, bad):
    folder, _, ours = matryoshka
    with pytest.raises(ValueError, match="truncate_dim"):
        ours.encode(TEXTS, truncate_dim=bad)
    with pytest.raises(ValueError, match="truncate_dim"):
        ours.fingerprint_for(truncate_dim=bad)
    with pytest.raises(ValueError, match="truncate_dim"):
        embedhub.load(folder, device="cpu", truncate_dim=bad)


# ---------------------------------------------------------------------------- precision
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("normalize", [False, True])
def test_precision_equals_the_peer_exactly(matryoshka, precision, normalize):
    _, theirs, ours = matryoshka
    for kwargs in ({}, {"truncate_dim": 8}, {"prompt_name": "query"}):
        got = ours.encode(TEXTS, precision=precision, normalize=normalize, **kwargs)
        want = theirs.encode(TEXTS, precision=precision, normalize_embeddings=normalize, **kwargs)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    as_torch = ours.encode(TEXTS, precision=precision, convert_to="torch")
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype in (torch.int8, torch.uint8)


def test_precision_errors_are_typed_and_early(matryoshka):
    _, _, ours = matryoshka
    with pytest.raises(ValueError, match="precision must be one of"):
        ours.encode(TEXTS, precision="int4")
    with pytest.raises(InputError, match="at least 2 inputs"):
        ours.encode(TEXTS[0], precision="int8")
    assert ours.encode(TEXTS[0], precision="ubinary").shape == (2,)  # binary needs no calibration


def test_quantize_embeddings_equals_the_peer():
    from sentence_transformers.quantization import quantize_embeddings as theirs

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 37)).astype(np.float32)
    cal = rng.normal(size=(200, 37)).astype(np.float32)
    ranges = np.vstack([cal.min(0), cal.max(0)])
    for precision in ("float32", *PRECISIONS):
        np.testing.assert_array_equal(embedhub.quantize_embeddings(emb, precision), theirs(emb, precision))
        np.testing.assert_array_equal(embedhub.quantize_embeddings(torch.from_numpy(emb), precision),
                                      theirs(torch.from_numpy(emb), precision))
    for precision in ("int8", "uint8"):
        np.testing.assert_array_equal(embedhub.quantize_embeddings(emb, precision, calibration_embeddings=cal),
                                      theirs(emb, precision, calibration_embeddings=cal))
        np.testing.assert_array_equal(embedhub.quantize_embeddings(emb, precision, ranges=ranges),
                                      theirs(emb, precision, ranges=ranges))
        np.testing.assert_array_equal(embedhub.quantize_embeddings(emb[0], precision, ranges=ranges),
                                      theirs(emb[0], precision, ranges=ranges))


def test_quantize_embeddings_refuses_bad_input():
    emb = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    with pytest.raises(InputError, match=r"calibration_embeddings must be a non-empty \(N, 8\) array.*\(4, 7\)"):
        embedhub.quantize_embeddings(emb, "int8", calibration_embeddings=np.zeros((4, 7), np.float32))
    with pytest.raises(InputError, match=r"ranges must be a \(2, 8\) array"):
        embedhub.quantize_embeddings(emb, "uint8", ranges=np.zeros((2, 5)))
    with pytest.raises(InputError, match="single embedding"):
        embedhub.quantize_embeddings(emb[:1], "int8")
    with pytest.raises(InputError, match="already quantised"):
        embedhub.quantize_embeddings(emb.astype(np.int8), "binary")
    with pytest.raises(ValueError, match="precision must be one of"):
        embedhub.quantize_embeddings(emb, "fp16")


def test_truncating_a_model_that_ends_in_normalize_keeps_the_peers_values(tmp_path, tiny_st_dir):
    """The Normalize module acts on the full width; with truncate_dim the peer returns the first dims of that
    unit vector (not renormalised), so its dot-product scores and rankings differ from renormalised rows."""
    folder = build_st(tiny_st_dir, tmp_path / "m", normalize=True, similarity_fn_name="dot")
    for ours, theirs, kwargs in (
        (embedhub.load(folder, device="cpu", truncate_dim=8), peer(folder, truncate_dim=8), {}),
        (embedhub.load(folder, device="cpu"), peer(folder), {"truncate_dim": 8}),
    ):
        got, want = ours.encode(TEXTS, **kwargs), theirs.encode(TEXTS, **kwargs)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert np.linalg.norm(got, axis=1).max() < 0.999  # first dims of unit vectors
        np.testing.assert_allclose(ours.similarity(got, got), theirs.similarity(want, want).numpy(), atol=1e-5)
        # normalize=True still truncates first, then normalises (sentence-transformers' normalize_embeddings)
        np.testing.assert_allclose(ours.encode(TEXTS, normalize=True, **kwargs),
                                   theirs.encode(TEXTS, normalize_embeddings=True, **kwargs), atol=1e-5)
