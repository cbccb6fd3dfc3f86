"""ONNX graphs from an untrusted folder (issue 9): paths and external data stay inside the folder
(item 2), ``normalize=False`` gives torch's numbers (item 6), graphs are checked against the
hashes the export recorded and against their tower's signature at load (item 8).

Every folder here is a real export of a tiny real open_clip model, with one hostile change."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402  (after the importorskips)

from embedhub._io.folder import ModelFolder  # noqa: E402
from embedhub.modules.backends import load_onnx_towers, sha256_file  # noqa: E402
from export import _export, export  # noqa: E402

TEXTS = ["a photo of a cat", "the quick brown fox jumps over the lazy dog", "x"]
CPU = torch.device("cpu")


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _meta(folder: Path) -> dict:
    return json.loads((folder / "onnx" / "export_metadata.json").read_text())


def _write_meta(folder: Path, meta: dict) -> None:
    """Write the metadata, and record the folder's files anew, as a hostile author (or an older export,
    with no record) would leave them: only the checks that do not rely on the record can catch the edit."""
    from embedhub._io.manifest import record

    (folder / "onnx" / "export_metadata.json").write_text(json.dumps(meta))
    record(folder)


def _rehash(folder: Path, *rels: str) -> None:
    """What a hostile author does after editing a file: record its new hash, so only the checks
    that do not rely on the hash can catch the edit."""
    meta = _meta(folder)
    for rel in rels:
        meta["sha256"][rel] = sha256_file(folder / rel)
    _write_meta(folder, meta)


def _towers(folder: Path, graphs: dict[str, str] | None = None, embed_dim: int = 32):
    graphs = graphs or {"text": "onnx/text.onnx", "image": "onnx/image.onnx"}
    return load_onnx_towers(ModelFolder(folder), graphs, embed_dim=embed_dim, device=CPU, threads=1)


@pytest.fixture(scope="module")
def clip_onnx(tmp_path_factory, open_clip_dir) -> Path:
    """The tiny open_clip fixture exported to ONNX fp32 (seed 0)."""
    return export(open_clip_dir, tmp_path_factory.mktemp("a") / "clip-onnx", verbose=False)


@pytest.fixture(scope="module")
def other_clip_onnx(tmp_path_factory) -> Path:
    """The same architecture with other weights (seed 1), saved by open_clip and exported."""
    from conftest import save_tiny_open_clip

    src = save_tiny_open_clip(tmp_path_factory.mktemp("b") / "clip", seed=1)
    return export(src, tmp_path_factory.mktemp("b") / "clip-onnx", verbose=False)


@pytest.fixture()
def copy(tmp_path, clip_onnx) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(clip_onnx, folder)
    return folder


# ---------------------------------------------------------------- item 6: normalize=False on ONNX


def test_onnx_gives_torch_numbers_with_and_without_normalisation(open_clip_dir, clip_onnx, photos):
    meta = _meta(clip_onnx)
    assert meta["normalized_output"] is False
    assert all(e["max_norm_error"] <= meta["gate"]["thresholds"]["norm"] for e in meta["gate"]["modalities"].values())
    torch_model = embedhub.load(open_clip_dir, device="cpu")
    onnx_model = embedhub.load(clip_onnx, backend="onnx")
    assert {m: r.normalized_output for m, r in onnx_model._runners.items()} == {"text": False, "image": False}
    for inputs in (TEXTS, photos):
        raw = torch_model.encode(inputs, normalize=False)
        assert np.linalg.norm(raw, axis=1).min() > 2  # open_clip's projections are not unit vectors
        for normalize in (True, False):
            ref = torch_model.encode(inputs, normalize=normalize)
            got = onnx_model.encode(inputs, normalize=normalize)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_export_before_normalized_output_refuses_normalize_false(copy, open_clip_dir):
    """An older export: L2 normalisation inside the graph and no ``normalized_output`` key. Its
    runners say so, and ``normalize=False`` (which it cannot honour) is refused."""
    for modality in ("text", "image"):  # append the old graphs' normalisation to the output
        path = copy / "onnx" / f"{modality}.onnx"
        model = onnx.load(str(path))
        g = model.graph
        out = g.output[0].name
        for node in g.node:
            node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
        g.initializer.append(onnx.numpy_helper.from_array(np.array(1e-12, np.float32), "l2_eps"))
        g.node.extend([
            helper.make_node("ReduceL2", [f"{out}_raw"], ["l2_norm"], axes=[-1], keepdims=1),
            helper.make_node("Max", ["l2_norm", "l2_eps"], ["l2_norm_c"]),
            helper.make_node("Div", [f"{out}_raw", "l2_norm_c"], [out]),
        ])
        onnx.save(model, str(path))
    _rehash(copy, "onnx/text.onnx", "onnx/image.onnx")
    meta = _meta(copy)
    del meta["normalized_output"]
    _write_meta(copy, meta)
    assert {m: r.normalized_output for m, r in _towers(copy).items()} == {"text": True, "image": True}
    model = embedhub.load(copy, backend="onnx")
    ref = embedhub.load(open_clip_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="normalize=False"):
        model.encode(TEXTS, normalize=False)


# ---------------------------------------------------------------- item 8: hashes and signatures


def test_swapped_graph_of_the_same_architecture_is_refused(copy, clip_onnx, other_clip_onnx, open_clip_dir):
    expected, found = sha256_file(copy / "onnx" / "text.onnx"), sha256_file(other_clip_onnx / "onnx" / "text.onnx")
    shutil.copyfile(other_clip_onnx / "onnx" / "text.onnx", copy / "onnx" / "text.onnx")
    with pytest.raises(embedhub.WeightsError, match="onnx/text.onnx is not the file the export wrote") as err:
        embedhub.load(copy, backend="onnx")
    assert f"expected {expected}" in str(err.value) and f"found {found}" in str(err.value)
    # without the recorded hashes (an older export) the same swap loads, with a warning, and gives other numbers
    meta = _meta(copy)
    del meta["sha256"]
    _write_meta(copy, meta)
    with pytest.warns(UserWarning, match="records no SHA-256 of the ONNX graphs"):
        swapped = embedhub.load(copy, backend="onnx")
    ref = embedhub.load(open_clip_dir, device="cpu").encode(TEXTS)
    assert _cos(swapped.encode(TEXTS), ref).max() < 0.9


def test_export_without_hashes_loads_with_a_warning(copy, open_clip_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embedhub.load(copy, backend="onnx")  # hashes recorded and matching: no warning
    meta = _meta(copy)
    del meta["sha256"]
    _write_meta(copy, meta)
    with pytest.warns(UserWarning, match="re-export the model"):
        model = embedhub.load(copy, backend="onnx")
    np.testing.assert_allclose(model.encode(TEXTS), embedhub.load(open_clip_dir, device="cpu").encode(TEXTS),
                               atol=1e-5)


def test_graph_of_the_other_tower_fails_at_load(copy):
    with pytest.raises(embedhub.WeightsError, match=r"image graphs take \['pixel_values'\].*is it the text graph"):
        _towers(copy, {"image": "onnx/text.onnx"})
    shutil.copyfile(copy / "onnx" / "image.onnx", copy / "onnx" / "text.onnx")
    _rehash(copy, "onnx/text.onnx")
    with pytest.raises(embedhub.WeightsError,
                       match=r"text.onnx: text graphs take \['input_ids', 'attention_mask'\].*"
                             r"takes \{'pixel_values': 'float'\}; .* is it the image graph\?"):
        embedhub.load(copy, backend="onnx")


def test_graph_signature_is_checked_at_load(copy):
    with pytest.raises(embedhub.WeightsError, match=r"'embeddings' has 32 dims, but the model's embed_dim is 16"):
        _towers(copy, embed_dim=16)
    path = copy / "onnx" / "text.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    onnx.save(model, str(path))
    _rehash(copy, "onnx/text.onnx")
    with pytest.raises(embedhub.WeightsError, match=r"input 'input_ids' must be int64, the graph declares int32"):
        _towers(copy)


def test_export_records_the_hash_of_every_file(tiny_st_dir, tmp_path, monkeypatch):
    """A graph written with external data (forced here: only graphs over 1.5 GB get it by default):
    the metadata records graph, data and torch weights; a changed data file is refused at load."""
    monkeypatch.setattr(_export, "EXTERNAL_DATA_ABOVE", 0)
    out = export(tiny_st_dir, tmp_path / "ext", verbose=False, keep_torch=True)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.suffix in (".onnx", ".data", ".safetensors")}
    assert files == {"onnx/text.onnx", "onnx/text.onnx.data", "model.safetensors", "text/model.safetensors"}
    assert _meta(out)["sha256"] == {rel: sha256_file(out / rel) for rel in files}
    ref = embedhub.load(tiny_st_dir, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(embedhub.load(out, backend="onnx").encode(TEXTS), ref, atol=1e-5)
    data = out / "onnx" / "text.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    with pytest.raises(embedhub.WeightsError, match=r"onnx/text.onnx.data is not the file the export wrote"):
        embedhub.load(out, backend="onnx")


# ---------------------------------------------------------------- item 2: paths stay inside the folder


@pytest.fixture()
def external(tmp_path, tiny_st_dir, monkeypatch) -> Path:
    """A real export whose text graph keeps its weights in ``onnx/text.onnx.data``."""
    monkeypatch.setattr(_export, "EXTERNAL_DATA_ABOVE", 0)
    return export(tiny_st_dir, tmp_path / "ext", verbose=False)


def _relocate(folder: Path, location: str) -> None:
    path = folder / "onnx" / "text.onnx"
    model = onnx.load(str(path), load_external_data=False)
    moved = 0
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
                moved += 1
    assert moved
    onnx.save(model, str(path))
    _rehash(folder, "onnx/text.onnx")


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "*/_ORT_MEM_ADDR_/*"])
def test_external_data_outside_the_folder_is_refused(external, location):
    _relocate(external, location)
    with pytest.raises(embedhub.ConfigError, match=rf"keeps its data in '{location.replace('*', '.')}'"):
        embedhub.load(external, backend="onnx")


def test_external_data_symlinked_outside_is_refused(external, tmp_path):
    outside = tmp_path / "outside.data"
    shutil.move(external / "onnx" / "text.onnx.data", outside)
    os.symlink(outside, external / "onnx" / "text.onnx.data")
    with pytest.raises(embedhub.ConfigError, match=r"outside the model folder"):
        embedhub.load(external, backend="onnx")


def test_graph_paths_and_symlinks_stay_inside(copy, other_clip_onnx):
    outside = other_clip_onnx / "onnx" / "text.onnx"
    for rel in ("../" * 8 + str(outside).lstrip("/"), str(outside)):
        with pytest.raises(embedhub.ConfigError, match="must be relative to the model folder"):
            _towers(copy, {"text": rel})
    (copy / "onnx" / "text.onnx").unlink()
    os.symlink(outside, copy / "onnx" / "text.onnx")
    with pytest.raises(embedhub.ConfigError, match=r"text ONNX graph 'onnx/text.onnx' resolves to .*outside the model"):
        embedhub.load(copy, backend="onnx")
