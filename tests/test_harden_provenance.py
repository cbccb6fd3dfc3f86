"""Provenance from what the loader opens: the fingerprint's folder hash, the upload list and the Hub
download list are the files a load of the model opened, never glob patterns.

Real model folders (tiny sentence-transformers models built by conftest) in layouts a glob misses:
nested module paths, weight shards named by an index in nested folders, symlinked module folders.
The public Hub cannot be reached here, so ``huggingface_hub.snapshot_download`` is replaced by a
recording double that serves a local "remote" folder into a Hub-cache snapshot layout with
huggingface_hub's own ``filter_repo_objects`` (the only test double; everything else is real).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import RecordingHub, perturbed_copy

import embedhub
from embedhub.errors import ConfigError, FingerprintMismatchError
from embedhub.formats import model_files
from embedhub.hub.publish import upload_files

TEXTS = ["a photo of a cat", "a rocket launch at night"]
_TRANSFORMER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                      "special_tokens_map.json", "sentence_bert_config.json")


def _nested(src: Path, dest: Path, *, t: str = "m/t", p: str = "m/p") -> Path:
    """``src`` (a sentence-transformers folder) rewritten with its modules in nested folders ``t`` and ``p``."""
    dest.mkdir(parents=True)
    modules = json.loads((src / "modules.json").read_text())
    for m in modules:
        kind = m["type"].rsplit(".", 1)[-1]
        target = dest / (t if kind == "Transformer" else p)
        target.mkdir(parents=True, exist_ok=True)
        srcdir = src / m["path"] if m["path"] else src
        names = _TRANSFORMER_FILES if kind == "Transformer" else [x.name for x in srcdir.iterdir() if x.is_file()]
        for name in names:
            if (srcdir / name).is_file():
                shutil.copyfile(srcdir / name, target / name)
        m["path"] = t if kind == "Transformer" else p
    (dest / "modules.json").write_text(json.dumps(modules))
    return dest


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_st_dir) -> tuple[Path, Path]:
    """Two different models (other weights) in the same nested layout."""
    root = tmp_path_factory.mktemp("nested")
    a = _nested(tiny_st_dir, root / "a")
    b = perturbed_copy(a, root / "b", "m/t/model.safetensors")
    return a, b


def test_nested_module_paths_are_in_the_fingerprint(pair, tmp_path):
    a, b = pair
    ma, mb = embedhub.load(a, device="cpu"), embedhub.load(b, device="cpu")
    assert not np.allclose(ma.encode(TEXTS), mb.encode(TEXTS), atol=1e-3)
    files = model_files(a)
    assert {"modules.json", "m/t/config.json", "m/t/model.safetensors", "m/t/tokenizer.json",
            "m/p/config.json"} <= set(files)
    assert sorted(ma.source_files) == files
    assert ma.fingerprint.id != mb.fingerprint.id
    path = tmp_path / "a.npy"
    embedhub.write_embeddings(path, ma.encode(TEXTS), ma.fingerprint)
    with pytest.raises(FingerprintMismatchError):
        embedhub.read_embeddings(path, expect=mb.fingerprint)
    embedhub.read_embeddings(path, expect=ma.fingerprint)


def test_nested_index_shards_are_in_the_fingerprint(tmp_path, tiny_st_dir):
    from safetensors.torch import load_file, save_file

    def sharded(dest: Path, noise: float) -> Path:
        folder = _nested(tiny_st_dir, dest, t="t", p="p")
        state = load_file(str(folder / "t" / "model.safetensors"))
        (folder / "t" / "model.safetensors").unlink()
        keys = sorted(state)
        half = len(keys) // 2
        (folder / "t" / "w" / "x").mkdir(parents=True)
        shards = {"w/x/s1.safetensors": keys[:half], "w/x/s2.safetensors": keys[half:]}
        for rel, names in shards.items():
            save_file({k: state[k] + noise if state[k].is_floating_point() else state[k] for k in names},
                      str(folder / "t" / rel), metadata={"format": "pt"})
        index = {"weight_map": {k: rel for rel, names in shards.items() for k in names}}
        (folder / "t" / "model.safetensors.index.json").write_text(json.dumps(index))
        return folder

    a, b = sharded(tmp_path / "a", 0.0), sharded(tmp_path / "b", 0.05)
    files = model_files(a)
    assert {"t/model.safetensors.index.json", "t/w/x/s1.safetensors", "t/w/x/s2.safetensors"} <= set(files)
    fa, fb = embedhub.load(a, device="cpu").fingerprint, embedhub.load(b, device="cpu").fingerprint
    assert fa.source != fb.source


def test_only_files_the_loader_reads_change_the_fingerprint(tmp_path, tiny_st_dir):
    folder = _nested(tiny_st_dir, tmp_path / "m")
    before = embedhub.load(folder, device="cpu").fingerprint
    (folder / "m" / "t" / "notes.safetensors").write_bytes(b"not read by the loader")
    (folder / "m" / "extra").mkdir()
    (folder / "m" / "extra" / "config.json").write_text("{}")
    assert embedhub.load(folder, device="cpu").fingerprint == before
    assert "m/t/notes.safetensors" not in model_files(folder)
    cfg = json.loads((folder / "m" / "p" / "config.json").read_text())
    cfg["pooling_mode"] = "cls"
    (folder / "m" / "p" / "config.json").write_text(json.dumps(cfg))
    after = embedhub.load(folder, device="cpu").fingerprint
    assert after.source != before.source


def test_an_optional_file_that_appears_changes_the_record(tmp_path, tiny_st_dir):
    """``sentence_bert_config.json`` is looked for and was absent: once it is there it is read and counted."""
    folder = _nested(tiny_st_dir, tmp_path / "m")
    (folder / "m" / "t" / "sentence_bert_config.json").unlink()
    first = model_files(folder)
    assert "m/t/sentence_bert_config.json" not in first
    (folder / "m" / "t" / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    assert "m/t/sentence_bert_config.json" in model_files(folder)


def test_symlinked_module_folder_is_recorded_under_its_path(tmp_path, tiny_st_dir):
    folder = _nested(tiny_st_dir, tmp_path / "m")
    os.rename(folder / "m" / "t", folder / "real_t")
    os.symlink(folder / "real_t", folder / "m" / "t")
    model = embedhub.load(folder, device="cpu")
    assert "m/t/model.safetensors" in model.source_files and not any(f.startswith("real_t") for f in model.source_files)
    before = model.fingerprint
    other = perturbed_copy(folder / "real_t", tmp_path / "other_t", "model.safetensors")
    shutil.copyfile(other / "model.safetensors", folder / "real_t" / "model.safetensors")
    assert embedhub.load(folder, device="cpu").fingerprint.source != before.source
    # a module link that leaves the folder is refused, naming the path
    outside = tmp_path / "outside"
    shutil.copytree(folder / "real_t", outside)
    (folder / "m" / "t").unlink()
    os.symlink(outside, folder / "m" / "t")
    with pytest.raises(ConfigError, match="outside the model folder"):
        embedhub.load(folder, device="cpu")


def test_upload_list_is_the_files_read(tmp_path, tiny_st_dir):
    folder = _nested(tiny_st_dir, tmp_path / "m")
    (folder / "README.md").write_text("# card\n")
    (folder / "m" / "t" / "optimizer.json").write_text("{}")
    model = embedhub.load(folder, device="cpu")
    assert upload_files(folder) == sorted([*model.source_files, "README.md"])


def test_non_utf8_names_in_a_folder_are_handled(tmp_path, tiny_st_dir):
    folder = _nested(tiny_st_dir, tmp_path / "m")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(os.fsencode(folder), b"stray-\xff.json"), "wb") as fh:
        fh.write(b"{}")
    model = embedhub.load(folder, device="cpu")
    assert model.fingerprint.source.startswith("folder:")
    assert "modules.json" in upload_files(folder)
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["path"] = "m/\udcff"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ConfigError, match="UTF-8") as info:
        embedhub.load(folder, device="cpu")
    str(info.value).encode("utf-8")  # the message itself can be printed


# ------------------------------------------------------------------------------------- doubled Hub
def test_hub_download_list_is_the_files_read(tmp_path, tiny_st_dir, monkeypatch):
    import huggingface_hub

    remote = _nested(tiny_st_dir, tmp_path / "remote")
    (remote / "m" / "t" / "pytorch_model.bin").write_bytes(b"never downloaded")
    (remote / "m" / "t" / "unused.safetensors").write_bytes(b"never downloaded")
    hub = RecordingHub(remote, tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    model = embedhub.load("org/nested", device="cpu", token=False)
    local = embedhub.load(remote, device="cpu")
    np.testing.assert_allclose(model.encode(TEXTS), local.encode(TEXTS), atol=1e-6)
    assert model.revision == hub.sha and model.fingerprint.source == "hub:org/nested"
    weights = {f for f in hub.served if not f.endswith(".json")}
    assert weights == {f for f in model.source_files if not f.endswith(".json")}
    assert set(model.source_files) <= hub.served
    assert "m/t/pytorch_model.bin" not in hub.served and "m/t/unused.safetensors" not in hub.served
    assert 2 <= len(hub.calls) <= 10
    # every download after the first asks for literal paths only: those the loader looked for
    later = {p for call in hub.calls[1:] for p in call}
    assert not any("*" in p for p in later)
    assert {f for f in model.source_files if not f.endswith(".json")} <= later


def test_a_loaded_model_keeps_its_fingerprint_when_its_folder_is_resaved(tmp_path, tiny_st_dir, other_st_dir):
    """The fingerprint describes the model as loaded: another model saved into its folder afterwards gives
    the loaded model no other model's fingerprint, and its vectors are refused as the new model's."""
    folder = embedhub.load(tiny_st_dir, device="cpu").save_pretrained(tmp_path / "m")
    a = embedhub.load(folder, device="cpu")  # fingerprint not read yet
    embedhub.load(other_st_dir, device="cpu").save_pretrained(folder)
    b = embedhub.load(folder, device="cpu")
    assert not np.allclose(a.encode(["a cat"]), b.encode(["a cat"]))
    assert a.fingerprint.id != b.fingerprint.id and a.fingerprint.source.startswith("memory:")
    stored = embedhub.write_embeddings(tmp_path / "a.parquet", a.encode(["a cat", "a dog"]), a.fingerprint)
    with pytest.raises(FingerprintMismatchError):
        embedhub.read_embeddings(stored, expect=b.fingerprint)


def test_weights_rewritten_in_place_with_the_same_size_and_mtime_change_the_fingerprint(tmp_path, tiny_st_dir):
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(tiny_st_dir, tmp_path / "m")
    a = embedhub.load(folder, device="cpu")
    first = a.fingerprint
    weights = folder / "model.safetensors"
    st = os.stat(weights)
    tensors = load_file(str(weights))
    name = next(k for k, v in tensors.items() if v.ndim == 2)
    tensors[name] = tensors[name] * 2
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    data = (tmp_path / "w.safetensors").read_bytes()
    assert len(data) == st.st_size
    weights.write_bytes(data)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only ctime tells
    b = embedhub.load(folder, device="cpu")
    assert b.fingerprint.id != first.id
    assert a.fingerprint.id == first.id  # taken before the change, kept


def test_a_hub_cache_layout_whose_blob_store_is_a_link_reads_nothing_outside(tmp_path, tiny_st_dir, other_st_dir):
    """A folder shaped like a Hub cache snapshot (a git clone or tarball can carry one) whose ``blobs`` is a
    symlink to ``/``: files resolving through it are outside the model folder."""
    repo = tmp_path / "models--org--name"
    snap = repo / "snapshots" / ("a" * 40)
    snap.parent.mkdir(parents=True)
    shutil.copytree(tiny_st_dir, snap)
    (repo / "blobs").symlink_to("/")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to("../../blobs" + str((other_st_dir / "model.safetensors").resolve()))
    with pytest.raises(ConfigError, match="outside the model folder"):
        embedhub.load(snap, device="cpu")
    # a real blob store (a folder of files named by hash) still serves its snapshot's links
    (repo / "blobs").unlink()
    (repo / "blobs").mkdir()
    shutil.copy(tiny_st_dir / "model.safetensors", repo / "blobs" / ("b" * 64))
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to("../../blobs/" + "b" * 64)
    assert embedhub.load(snap, device="cpu").encode(["a cat"]).shape[0] == 1
    # but only files directly in it, not paths below it
    (repo / "blobs" / "sub").mkdir()
    shutil.copy(tiny_st_dir / "model.safetensors", repo / "blobs" / "sub" / "w")
    (snap / "model.safetensors").unlink()
    (snap / "model.safetensors").symlink_to("../../blobs/sub/w")
    with pytest.raises(ConfigError, match="outside the model folder"):
        embedhub.load(snap, device="cpu")


def test_a_stored_fingerprint_nested_deep_is_a_provenance_error():
    from embedhub import Fingerprint
    from embedhub.errors import ProvenanceError

    with pytest.raises(ProvenanceError, match="emb.npy.fingerprint.json"):
        Fingerprint.from_json("[" * 200_000 + "]" * 200_000, path="emb.npy.fingerprint.json")


def test_a_tensor_in_two_shards_is_refused(tmp_path, tiny_st_dir):
    """Two shards holding one tensor: which value the model gets would depend on file order."""
    from safetensors.torch import load_file, save_file

    from embedhub.errors import WeightsError

    folder = shutil.copytree(tiny_st_dir, tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    first = sorted(tensors)[0]
    save_file(tensors, str(folder / "a.safetensors"), metadata={"format": "pt"})
    save_file({first: tensors[first] + 1.0}, str(folder / "b.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "a.safetensors" for k in tensors} | {"unused": "b.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(WeightsError, match="more than one weights file"):
        embedhub.load(folder, device="cpu")
