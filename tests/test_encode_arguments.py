"""Bad arguments to encode / similarity / quantize_embeddings: each an embedhub error of its own type that
names the argument, what it got and what is allowed, raised before any input is read."""

from __future__ import annotations

import numpy as np
import pytest

import embedhub
from embedhub import ArgumentError, InputError, ModalityError


@pytest.fixture(scope="module")
def model(tiny_st_dir):
    return embedhub.load(tiny_st_dir)


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"prompt_name": "nope"}, "'query'"),           # lists the model's prompts
    ({"truncate_dim": 0}, "truncate_dim"),
    ({"truncate_dim": 10_000}, "truncate_dim"),
    ({"truncate_dim": True}, "truncate_dim"),
    ({"precision": "int4"}, "'ubinary'"),          # lists the precisions
    ({"normalize": "yes"}, "normalize"),
    ({"task": 3}, "task"),
])
def test_bad_arguments_are_argument_errors(model, kwargs, named):
    with pytest.raises(ArgumentError, match=named) as info:
        model.encode(["a", None], **kwargs)  # the None would be an InputTypeError: arguments are checked first
    assert isinstance(info.value, ValueError)


def test_prompt_with_images_is_a_modality_error(hf_clip_dir, photos):
    clip = embedhub.load(hf_clip_dir)
    with pytest.raises(ModalityError, match="prompt"):
        clip.encode(photos[:1], prompt="query: ")


def test_similarity_and_quantize_arguments(model):
    emb = model.encode(["a", "b", "c"])
    with pytest.raises(ArgumentError, match="sizes differ"):
        model.similarity(emb, emb[:, :5])
    with pytest.raises(ArgumentError, match="one shape"):
        model.similarity_pairwise(emb, emb[:2])
    with pytest.raises(ArgumentError, match="precision"):
        embedhub.quantize_embeddings(emb, "float8")
    with pytest.raises(InputError, match=r"\(5, 3\)"):
        embedhub.quantize_embeddings(emb, "int8", calibration_embeddings=np.ones((5, 3), np.float32))


def test_quantize_refuses_non_finite_data_and_inverted_ranges():
    x = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    bad = x.copy()
    bad[3, 5] = np.nan
    with pytest.raises(InputError, match=r"calibration_embeddings .*NaN.*row 3"):
        embedhub.quantize_embeddings(x, "int8", calibration_embeddings=bad)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        with pytest.raises(InputError, match=r"^embeddings .*row 3"):
            embedhub.quantize_embeddings(bad, precision)
    with pytest.raises(InputError, match="ranges .*infinite"):
        embedhub.quantize_embeddings(x, "uint8", ranges=np.array([[-np.inf] * 32, [np.inf] * 32]))
    with pytest.raises(InputError, match="minimum.*exceeds.*dimension 0"):
        embedhub.quantize_embeddings(x, "uint8", ranges=np.array([[1.0] * 32, [-1.0] * 32]))


def test_load_and_pool_arguments(tiny_st_dir, model):
    for bad in (0, True, 4.5):
        with pytest.raises(ArgumentError, match="truncate_dim"):
            embedhub.load(tiny_st_dir, truncate_dim=bad)
    with pytest.raises(ArgumentError, match="chunk_size"):
        model.encode(["a", "b"], device=["cpu", "cpu"], chunk_size=0)
    with pytest.raises(ArgumentError, match="dims"):
        embedhub.write_embeddings("x.npy", np.ones((2, 3), np.float32), model.fingerprint)
