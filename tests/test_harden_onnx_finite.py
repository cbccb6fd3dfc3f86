"""Non-finite embeddings are an error naming the items and the model, on every backend and modality.

A hostile export keeps the integrity check happy (its recorded SHA-256 is updated after the edit), so
only the check of the computed vectors can catch a NaN weight in an ONNX graph; torch towers whose
weights turn NaN after loading are caught the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from embedhub.modules.backends import sha256_file  # noqa: E402
from export import export  # noqa: E402

TEXTS = ["a photo of a cat", "the quick brown fox", "x", "a dog on a sofa"]


def _poison(folder: Path, rel: str, pick) -> str:
    """Set one value of a float initializer chosen by ``pick(tensors)`` to NaN, save the graph and record
    its new hash in the export metadata (what a hostile author does); returns the initializer's name."""
    path = folder / rel
    proto = onnx.load(str(path))
    floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 8]
    target = pick(floats)
    arr = numpy_helper.to_array(target).copy()
    arr.reshape(-1)[0] = np.nan
    target.CopyFrom(numpy_helper.from_array(arr, target.name))
    onnx.save(proto, str(path))
    meta_path = folder / "onnx" / "export_metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"][rel] = sha256_file(path)
    meta_path.write_text(json.dumps(meta))
    from embedhub._io.manifest import record

    record(folder)  # and the file record, as a hostile author would: only the finite check can catch it
    return target.name


@pytest.fixture(scope="module")
def text_onnx(tmp_path_factory, tiny_embedhub_dir) -> Path:
    return export(tiny_embedhub_dir, tmp_path_factory.mktemp("t") / "onnx", verbose=False)


@pytest.fixture(scope="module")
def clip_onnx(tmp_path_factory, open_clip_dir) -> Path:
    return export(open_clip_dir, tmp_path_factory.mktemp("c") / "onnx", verbose=False)


def test_nan_initializer_in_a_text_graph_is_an_error_naming_items_and_model(text_onnx, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(text_onnx, folder)
    good = embedhub.load(str(folder), backend="onnx", device="cpu").encode(TEXTS)
    assert np.isfinite(good).all()
    # a bias-like vector: every row goes through it (the last float initializer of the graph)
    _poison(folder, "onnx/text.onnx", lambda ts: ts[-1])
    model = embedhub.load(str(folder), backend="onnx", device="cpu")  # the integrity check passes
    assert model.backend == "onnx"
    with pytest.raises(embedhub.WeightsError) as info:
        model.encode(TEXTS, batch_size=2)
    msg = str(info.value)
    assert "NaN or infinite" in msg and "text tower (onnx" in msg and "text.onnx" in msg
    assert "inputs[0]" in msg and "inputs[3]" in msg, msg
    with pytest.raises(embedhub.WeightsError, match=r"inputs\[0\]"):
        model.encode("one text")
    with pytest.raises(embedhub.WeightsError, match=r"inputs\[0\]"):  # normalize=False: no NaN gets out either
        model.encode(["one text"], normalize=False)


def test_nan_initializer_in_an_image_graph_is_caught_text_still_works(clip_onnx, tmp_path, photos):
    folder = tmp_path / "m"
    shutil.copytree(clip_onnx, folder)
    _poison(folder, "onnx/image.onnx", lambda ts: ts[-1])
    model = embedhub.load(str(folder), backend="onnx", device="cpu")
    with pytest.raises(embedhub.WeightsError, match=r"image tower \(onnx.*inputs\[1\], inputs\[2\]"):
        model.encode(["a cat", photos[0], photos[1]])
    assert np.isfinite(model.encode(TEXTS)).all()  # the clean text graph is unaffected


def test_nan_weights_in_a_torch_tower_are_an_error(tiny_embedhub_dir):
    model = embedhub.load(str(tiny_embedhub_dir), device="cpu")
    good = model.encode(TEXTS)
    name, param = next((n, p) for n, p in model.towers.named_parameters() if "bias" in n and p.ndim == 1)
    with torch.no_grad():
        saved = param.detach().clone()
        param[0] = float("inf")
        try:
            with pytest.raises(embedhub.WeightsError, match=r"text tower \(torch\).*inputs\[0\].*inputs\[3\]"):
                model.encode(TEXTS)
        finally:
            param.copy_(saved)
    np.testing.assert_allclose(model.encode(TEXTS), good, atol=1e-6)


def test_nan_weights_in_a_torch_image_tower_name_only_the_images(open_clip_dir, photos):
    model = embedhub.load(str(open_clip_dir), device="cpu")
    param = next(p for n, p in model.towers["image"].named_parameters() if "visual" in n and p.ndim >= 1)
    with torch.no_grad():
        param.fill_(float("nan"))
    with pytest.raises(embedhub.WeightsError, match=r"image tower \(torch\)") as info:
        model.encode([photos[0], "text", photos[1]])
    assert "inputs[0], inputs[2]" in str(info.value) and "inputs[1]" not in str(info.value)
