"""Provenance fingerprints (``model.fingerprint``) and stored embeddings (``write_embeddings`` /
``read_embeddings``), with real models in real formats: the packaged all-MiniLM-L6-v2, tiny random
models written by sentence-transformers, open_clip and transformers, their ONNX exports, and a Hub
snapshot in the real Hugging Face cache layout (the public Hub cannot be reached here; the cache is
what ``huggingface_hub`` reads offline, so no test double is involved).
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub
from embedhub import EmbeddingsFileError, Fingerprint, ProvenanceError, read_embeddings, write_embeddings
from embedhub.errors import FingerprintMismatchError
from embedhub.store.embeddings import PARQUET_KEY, sidecar_path

TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "The stock market fell sharply."]
SHA = "c" * 40


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _parts(**change) -> dict:
    parts = {
        "source": "folder:0123456789abcdef",
        "revision": None,
        "format": "sentence-transformers",
        "backend": "torch",
        "dtype": "fp32",
        "pooling": "mean",
        "normalized": True,
        "dim": 4,
    }
    return {**parts, **change}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_st_dir) -> dict[str, Path]:
    """tiny_st_dir exported to ONNX at fp32 (torch weights kept), at fp16, and at fp32 without its torch copy."""
    pytest.importorskip("onnxruntime")
    from export import export

    root = tmp_path_factory.mktemp("exports")
    return {
        "fp32": export(tiny_st_dir, root / "fp32", verbose=False, keep_torch=True),
        "fp16": export(tiny_st_dir, root / "fp16", dtype="fp16", verbose=False),
        "onnx_only": export(tiny_st_dir, root / "onnx_only", verbose=False),
    }


# ---------------------------------------------------------------------------------------------- the value
def test_id_is_stable_and_round_trips():
    fp = Fingerprint(**_parts())
    # the id is a hash of the canonical JSON of the parts: a change of scheme shows up here
    canonical = json.dumps(_parts(), sort_keys=True, separators=(",", ":")).encode()
    assert fp.id == "eh1-" + hashlib.sha256(canonical).hexdigest()[:16]
    assert fp.to_dict() == {"id": fp.id, **_parts()}
    assert Fingerprint.from_dict(fp.to_dict()) == fp
    assert Fingerprint.from_json(fp.to_json()) == fp
    assert Fingerprint.from_dict(_parts()) == fp  # the id is optional on the way in
    assert fp.with_normalized(False).normalized is False and fp.with_normalized(False).id != fp.id
    assert fp.with_normalized(False).with_normalized(True) == fp
    ids = {Fingerprint(**_parts(**{k: v})).id for k, v in
           [("source", "hub:a/b"), ("revision", SHA), ("format", "embedhub"), ("backend", "onnx"),
            ("dtype", "bf16"), ("pooling", "cls"), ("normalized", False), ("dim", 8)]}
    assert len(ids) == 8 and fp.id not in ids  # every part changes the id


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("source", "folder:xyz", "'source' must be 'hub:org/name', 'folder:<16 hex>' or 'memory:<16 hex>'"),
        ("source", 7, "'source' must be"),
        ("revision", 3, "'revision' must be null or a non-empty string"),
        ("format", "", "'format' must be a non-empty string"),
        ("backend", "tensorflow", "'backend' must be one of 'torch', 'onnx'"),
        ("dtype", None, "'dtype' must be a non-empty string"),
        ("pooling", ["mean"], "'pooling' must be null or a non-empty string"),
        ("normalized", "yes", "'normalized' must be true or false"),
        ("normalized", 1, "'normalized' must be true or false"),
        ("dim", "384", "'dim' must be an integer"),
        ("dim", True, "'dim' must be an integer"),
        ("dim", 0, "'dim' must be an integer from 1"),
    ],
)
def test_malformed_field_is_named(field, value, expected):
    with pytest.raises(ProvenanceError, match=expected) as err:
        Fingerprint.from_dict(_parts(**{field: value}), path="emb.parquet")
    assert err.value.field == field and str(err.value).startswith("emb.parquet: ")
    assert isinstance(err.value, FingerprintMismatchError)


def test_malformed_records_are_refused():
    good = Fingerprint(**_parts()).to_dict()
    with pytest.raises(ProvenanceError, match="lacks field\\(s\\) 'dim'") as err:
        Fingerprint.from_dict({k: v for k, v in good.items() if k != "dim"})
    assert err.value.field == "dim"
    with pytest.raises(ProvenanceError, match="unknown field\\(s\\) 'model'"):
        Fingerprint.from_dict({**good, "model": "x"})
    with pytest.raises(ProvenanceError, match="field 'id' is 'eh1-0000000000000000' but its parts give") as err:
        Fingerprint.from_dict({**good, "id": "eh1-0000000000000000"})  # parts edited after the id was computed
    assert err.value.field == "id"
    with pytest.raises(ProvenanceError, match="must be a JSON object, found list"):
        Fingerprint.from_dict([good])
    with pytest.raises(ProvenanceError, match="not valid JSON"):
        Fingerprint.from_json(b"{\"source\": ")


def test_check_names_both_ids_and_every_differing_part():
    model = Fingerprint(**_parts())
    stored = Fingerprint(**_parts(backend="onnx", dtype="int8"))
    model.check(Fingerprint(**_parts()), what="x")  # equal: no error
    with pytest.raises(FingerprintMismatchError) as err:
        model.check(stored, what="emb.npy")
    msg = str(err.value)
    assert msg.startswith("emb.npy holds embeddings of fingerprint")
    assert stored.id in msg and model.id in msg
    assert "backend: 'onnx' (stored) vs 'torch' (model)" in msg and "dtype: 'int8' (stored) vs 'fp32' (model)" in msg
    assert "pooling" not in msg and "source" not in msg
    assert err.value.differences == {"backend": ("torch", "onnx"), "dtype": ("fp32", "int8")}
    assert err.value.expected == model and err.value.found == stored


# ---------------------------------------------------------------------------------------------- models
def test_same_model_loaded_twice_is_equal(minilm_path, tiny_embedhub_dir, tmp_path):
    a = embedhub.load(minilm_path, device="cpu").fingerprint
    b = embedhub.load(str(minilm_path), device="cpu").fingerprint
    assert a == b and a.id == b.id
    assert a.source.startswith("folder:") and a.revision is None
    assert (a.format, a.backend, a.dtype, a.pooling, a.normalized, a.dim) == (
        "sentence-transformers", "torch", "fp32", "mean", True, 384)
    assert embedhub.load("all-MiniLM-L6-v2", device="cpu").fingerprint == a  # the alias loads the same folder

    t1 = embedhub.load(tiny_embedhub_dir, device="cpu").fingerprint
    assert embedhub.load(tiny_embedhub_dir, device="cpu").fingerprint == t1
    copy = tmp_path / "copy"
    shutil.copytree(tiny_embedhub_dir, copy)
    (copy / "notes.md").write_text("not a model file")  # files the format does not need do not count
    assert embedhub.load(copy, device="cpu").fingerprint == t1  # the content, not the path
    assert (t1.format, t1.pooling, t1.dim) == ("embedhub", "mean", 32)


def test_different_models_differ(minilm_path, tiny_st_dir, other_st_dir, tiny_embedhub_dir, open_clip_dir,
                                 hf_clip_dir):
    fps = {
        name: embedhub.load(folder, device="cpu").fingerprint
        for name, folder in [("minilm", minilm_path), ("tiny_st", tiny_st_dir), ("other_st", other_st_dir),
                             ("tiny_embedhub", tiny_embedhub_dir), ("open_clip", open_clip_dir),
                             ("hf_clip", hf_clip_dir)]
    }
    assert len({fp.id for fp in fps.values()}) == len(fps)
    assert len({fp.source for fp in fps.values()}) == len(fps)
    # same architecture and width, other weights: only the content hash tells them apart
    assert fps["tiny_st"].differences(fps["other_st"]).keys() == {"source"}
    assert fps["open_clip"].pooling is None and fps["hf_clip"].pooling is None
    assert (fps["open_clip"].format, fps["hf_clip"].format) == ("open_clip", "transformers-clip")


def test_backends_and_precisions_differ(tiny_st_dir, exports):
    torch_fp = embedhub.load(exports["fp32"], device="cpu").fingerprint
    onnx_fp = embedhub.load(exports["fp32"], backend="onnx", device="cpu").fingerprint
    assert torch_fp.differences(onnx_fp) == {"backend": ("torch", "onnx")}
    assert onnx_fp.pooling == "mean" and onnx_fp.dtype == "fp32"  # pooling from the config: no torch tower
    assert embedhub.load(exports["fp32"], backend="onnx", device="cpu").fingerprint == onnx_fp
    fp16 = embedhub.load(exports["fp16"], backend="onnx", device="cpu").fingerprint
    assert fp16.dtype == "fp16" and fp16.id != onnx_fp.id
    assert embedhub.load(tiny_st_dir, device="cpu").fingerprint.source != torch_fp.source  # another folder


def test_export_without_its_torch_copy_has_a_stable_onnx_fingerprint(tiny_st_dir, exports, tmp_path):
    """No torch copy: the ONNX fingerprint hashes the files the ONNX load opens, so it is the same on every
    load and for a copy of the folder; it differs from the export with a copy in ``source`` only (another
    folder: its metadata records other files), and a torch load names the source model and --keep-torch."""
    from embedhub.formats import model_files

    folder = exports["onnx_only"]
    assert not list(folder.rglob("*.safetensors"))
    files = model_files(folder)  # what push_to_hub uploads and the fingerprint hashes: what the ONNX load opens
    assert {"embedhub_config.json", "onnx/text.onnx", "onnx/export_metadata.json"} <= set(files)
    assert not [f for f in files if f.endswith(".safetensors")]
    fp = embedhub.load(folder, backend="onnx", device="cpu").fingerprint
    assert fp.backend == "onnx" and fp.dtype == "fp32" and fp.pooling == "mean" and fp.source.startswith("folder:")
    assert embedhub.load(folder, backend="auto", device="cpu").fingerprint == fp
    shutil.copytree(folder, tmp_path / "copy")
    assert embedhub.load(tmp_path / "copy", backend="onnx", device="cpu").fingerprint == fp
    with_copy = embedhub.load(exports["fp32"], backend="onnx", device="cpu").fingerprint
    assert fp.differences(with_copy).keys() == {"source"}
    emb = embedhub.load(folder, backend="onnx", device="cpu").encode(TEXTS)
    write_embeddings(tmp_path / "e.npy", emb, fp)
    again = embedhub.load(folder, backend="onnx", device="cpu").fingerprint
    assert read_embeddings(tmp_path / "e.npy", expect=again).embeddings.shape == (3, 32)
    assert embedhub.load(folder, device="cpu").backend == "onnx"  # without backend=: its ONNX graphs
    with pytest.raises(embedhub.UnknownFormatError, match="--keep-torch") as err:
        embedhub.load(folder, backend="torch", device="cpu")
    source = json.loads((folder / "onnx" / "export_metadata.json").read_text())["source"]
    assert f"ONNX export of {source!r}" in str(err.value) and Path(source).name == tiny_st_dir.name


def test_dtypes_differ(tiny_st_dir):
    fp32 = embedhub.load(tiny_st_dir, device="cpu").fingerprint
    bf16 = embedhub.load(tiny_st_dir, device="cpu", dtype="bfloat16").fingerprint
    fp16 = embedhub.load(tiny_st_dir, device="cpu", dtype=torch.float16).fingerprint
    assert fp32.differences(bf16) == {"dtype": ("fp32", "bf16")}
    assert fp16.dtype == "fp16" and len({fp32.id, bf16.id, fp16.id}) == 3


def test_model_in_memory_hashes_its_weights(tiny_st_dir, tmp_path):
    from embedhub import EmbeddingModel

    src = embedhub.load(tiny_st_dir, device="cpu")

    def build(tower) -> EmbeddingModel:
        return EmbeddingModel({"text": tower}, dict(src.preprocessors), embed_dim=32, name="m", format="embedhub")

    fp = build(src.towers["text"]).fingerprint
    assert fp.source.startswith("memory:") and fp.revision is None and fp.pooling == "mean"
    assert build(src.towers["text"]).fingerprint == fp  # the same weights built twice
    (tmp_path / "notes").mkdir()
    stale = build(src.towers["text"])
    stale.folder = tmp_path / "notes"  # a folder that holds no model: the weights are hashed instead
    assert stale.fingerprint == fp
    changed = copy.deepcopy(src.towers["text"])
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    assert build(changed).fingerprint.differences(fp).keys() == {"source"}
    saved = build(src.towers["text"])
    saved.save_pretrained(tmp_path / "saved")
    reloaded = embedhub.load(tmp_path / "saved", device="cpu").fingerprint
    assert reloaded.source.startswith("folder:") and reloaded.differences(fp).keys() == {"source"}


def test_hub_snapshot_names_repo_and_commit(tmp_path, tiny_st_dir):
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-st"
    shutil.copytree(tiny_st_dir, repo / "snapshots" / SHA)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    by_id = embedhub.load("tiny-org/tiny-st", device="cpu", cache_dir=cache).fingerprint
    assert (by_id.source, by_id.revision) == ("hub:tiny-org/tiny-st", SHA)
    assert embedhub.load(f"tiny-org/tiny-st@{SHA}", device="cpu", cache_dir=cache).fingerprint == by_id
    assert embedhub.load(tiny_st_dir, device="cpu").fingerprint.source.startswith("folder:")


# ---------------------------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def tiny(tiny_st_dir):
    model = embedhub.load(tiny_st_dir, device="cpu")
    return model, model.encode(TEXTS)


def test_npy_round_trip_with_sidecar(tiny, tmp_path):
    model, emb = tiny
    out = write_embeddings(tmp_path / "emb.npy", emb, model.fingerprint)
    side = sidecar_path(out)
    assert side.name == "emb.npy.fingerprint.json" and sorted(p.name for p in tmp_path.iterdir()) == [
        "emb.npy", "emb.npy.fingerprint.json"]
    record = json.loads(side.read_text())
    assert record["fingerprint"] == model.fingerprint.to_dict() and (record["rows"], record["dim"]) == (3, 32)
    np.testing.assert_array_equal(np.load(out), emb)  # a plain .npy that any tool reads
    stored = read_embeddings(out, expect=model.fingerprint)
    np.testing.assert_array_equal(stored.embeddings, emb)
    assert stored.embeddings.dtype == np.float32 and stored.fingerprint == model.fingerprint
    assert stored.ids.tolist() == [0, 1, 2] and stored.inputs is None and len(stored) == 3


def test_parquet_round_trip_with_metadata(tiny, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    model, emb = tiny
    out = write_embeddings(tmp_path / "emb.parquet", emb, model.fingerprint, ids=["a", "b", "c"], inputs=TEXTS)
    table = pq.read_table(out)
    assert table.column_names == ["id", "input", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert json.loads(table.schema.metadata[PARQUET_KEY]) == model.fingerprint.to_dict()
    stored = read_embeddings(out, expect=model.fingerprint)
    np.testing.assert_array_equal(stored.embeddings, emb)
    assert stored.ids == ["a", "b", "c"] and stored.inputs == TEXTS
    assert stored.embeddings.flags.writeable and stored.embeddings.flags.c_contiguous
    assert [p.name for p in tmp_path.iterdir()] == ["emb.parquet"]  # no temporary file left


def test_a_process_that_read_parquet_embeddings_exits_cleanly(minilm_path, tmp_path):
    """Reading a parquet file of embeddings, then exiting: status 0 in each of 12 processes (pyarrow 26 reading a
    Python file object with its I/O thread pre-buffering aborted about half of such processes at exit: "terminate
    called without an active exception")."""
    import subprocess
    import sys

    model = embedhub.load(minilm_path, device="cpu")
    out = write_embeddings(tmp_path / "emb.parquet", model.encode(TEXTS[:2]), model.fingerprint)
    code = f"import embedhub; assert len(embedhub.read_embeddings({str(out)!r})) == 2"
    statuses = [subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=120).returncode for _ in range(12)]  # one after the other: aborts more often
    assert statuses == [0] * 12, statuses


def test_other_fingerprint_is_refused_naming_both(tiny, other_st_dir, tmp_path):
    model, emb = tiny
    other = embedhub.load(other_st_dir, device="cpu").fingerprint
    for name in ("emb.npy", "emb.parquet"):
        out = write_embeddings(tmp_path / name, emb, model.fingerprint)
        with pytest.raises(FingerprintMismatchError) as err:
            read_embeddings(out, expect=other)
        msg = str(err.value)
        assert model.fingerprint.id in msg and other.id in msg and "source:" in msg
        assert f"{model.fingerprint.source!r} (file) vs {other.source!r} (expected)" in msg
        with pytest.raises(FingerprintMismatchError, match="normalized: True \\(file\\) vs False"):
            read_embeddings(out, expect=model.fingerprint.with_normalized(False))
        assert read_embeddings(out).fingerprint == model.fingerprint  # without expect: read, provenance returned


def test_file_without_provenance(tiny, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    model, emb = tiny
    bare = tmp_path / "bare.npy"
    np.save(bare, emb)
    foreign = tmp_path / "foreign.parquet"  # what another tool writes: list<double>, no embedhub metadata
    pq.write_table(pa.table({"embedding": pa.array(emb.astype(np.float64).tolist())}), foreign)
    for path, why in [(bare, "no bare.npy.fingerprint.json beside it"), (foreign, "no 'embedhub.fingerprint' key")]:
        stored = read_embeddings(path)
        assert stored.fingerprint is None
        np.testing.assert_allclose(stored.embeddings, emb, atol=1e-7)
        with pytest.raises(ProvenanceError, match="has no provenance") as err:
            read_embeddings(path, expect=model.fingerprint)
        assert why in str(err.value) and model.fingerprint.id in str(err.value)


def test_sidecar_of_another_matrix_is_refused(tiny, tmp_path):
    model, emb = tiny
    out = write_embeddings(tmp_path / "emb.npy", emb, model.fingerprint)
    np.save(out, emb[::-1].copy())  # the .npy replaced by another tool, the sidecar left as it was
    for expect in (None, model.fingerprint):
        with pytest.raises(ProvenanceError, match="was replaced or changed after its fingerprint was written") as err:
            read_embeddings(out, expect=expect)
        assert err.value.field == "sha256"
    np.save(out, emb[:2])
    with pytest.raises(ProvenanceError, match="records rows = 3 but emb.npy holds 2"):
        read_embeddings(out)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda r: r["fingerprint"].update(normalized="yes"), "'normalized' must be true or false"),
        (lambda r: r["fingerprint"].update(dim=64), "field 'id' is"),
        (lambda r: r.update(embedhub_embeddings=2), "'embedhub_embeddings' must be 1"),
        (lambda r: r.pop("fingerprint"), "no 'fingerprint' record"),
    ],
)
def test_malformed_sidecar_is_refused(tiny, tmp_path, edit, expected):
    model, emb = tiny
    out = write_embeddings(tmp_path / "emb.npy", emb, model.fingerprint)
    record = json.loads(sidecar_path(out).read_text())
    edit(record)
    sidecar_path(out).write_text(json.dumps(record))
    with pytest.raises(ProvenanceError, match=expected):
        read_embeddings(out)
    sidecar_path(out).write_text("{not json")
    with pytest.raises(ProvenanceError, match="emb.npy.fingerprint.json is not valid JSON"):
        read_embeddings(out)


def test_malformed_parquet_metadata_is_refused(tiny, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    model, emb = tiny
    out = write_embeddings(tmp_path / "emb.parquet", emb, model.fingerprint)
    table = pq.read_table(out)
    broken = dict(model.fingerprint.to_dict(), dim="32")
    pq.write_table(table.replace_schema_metadata({PARQUET_KEY: json.dumps(broken).encode()}), out)
    with pytest.raises(ProvenanceError, match="'dim' must be an integer") as err:
        read_embeddings(out)
    assert err.value.field == "dim" and err.value.path == out
    other_dim = Fingerprint(**{**{k: v for k, v in model.fingerprint.to_dict().items() if k != "id"}, "dim": 64})
    pq.write_table(table.replace_schema_metadata({PARQUET_KEY: other_dim.to_json().encode()}), out)
    with pytest.raises(ProvenanceError, match="says 64 dims but the file holds 32"):
        read_embeddings(out)


def test_bad_writes_leave_nothing(tiny, tmp_path):
    model, emb = tiny
    fp = model.fingerprint
    out = tmp_path / "emb.npy"
    with pytest.raises(ValueError, match="embeddings have 32 dims but fingerprint .* is of a 384-dim model"):
        write_embeddings(out, emb, Fingerprint(**_parts(dim=384)))
    bad = emb.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        write_embeddings(out, bad, fp)
    with pytest.raises(ValueError, match="a .npy file holds the matrix only; write a .parquet file to keep ids"):
        write_embeddings(out, emb, fp, ids=[1, 2, 3])
    with pytest.raises(EmbeddingsFileError, match="unknown embeddings file extension '.csv'"):
        write_embeddings(tmp_path / "emb.csv", emb, fp)
    with pytest.raises(TypeError, match="fingerprint must be an embedhub.Fingerprint"):
        write_embeddings(out, emb, fp.to_dict())
    with pytest.raises(ValueError, match="ids\\[2\\] = 'a' repeats ids\\[0\\]"):
        write_embeddings(tmp_path / "e.parquet", emb, fp, ids=["a", "b", "a"])
    with pytest.raises(ValueError, match="inputs has 2 items but embeddings have 3 rows"):
        write_embeddings(tmp_path / "e.parquet", emb, fp, inputs=TEXTS[:2])
    assert list(tmp_path.iterdir()) == []
    # an earlier file stays as it was when a later write fails
    write_embeddings(out, emb, fp)
    before = out.read_bytes(), sidecar_path(out).read_bytes()
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        write_embeddings(out, bad, fp)
    assert (out.read_bytes(), sidecar_path(out).read_bytes()) == before


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"not numpy")
    with pytest.raises(EmbeddingsFileError, match="x.npy is not a .npy array file"):
        read_embeddings(tmp_path / "x.npy")
    np.save(tmp_path / "ints.npy", np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(EmbeddingsFileError, match="expected a 2-d float array \\(N x D\\), got int64"):
        read_embeddings(tmp_path / "ints.npy")
    with pytest.raises(EmbeddingsFileError, match="cannot read .*missing.parquet"):
        read_embeddings(tmp_path / "missing.parquet")
    (tmp_path / "x.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(EmbeddingsFileError, match="x.parquet is not a readable parquet file"):
        read_embeddings(tmp_path / "x.parquet")
