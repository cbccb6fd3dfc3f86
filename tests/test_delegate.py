"""Folders that ask for code: refused by name, or (trust_remote_code=True) loaded by their own library and
wrapped in embedhub's batching, errors and fingerprints; the vectors are the library's own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import RecordingHub

import embedhub
from embedhub import ConfigError, InputError, InputTypeError, ModalityError, WeightsError

st = pytest.importorskip("sentence_transformers")

#: a custom sentence-transformers Transformer (the jina-embeddings-v3 ``custom_st.Transformer`` pattern) that
#: changes the token embeddings, so a load that ignores it gives other vectors; importing it leaves a marker
CUSTOM_ST = '''
from pathlib import Path

from sentence_transformers.base.modules.transformer import Transformer as _Base

Path({marker!r}).write_text("imported")


class Transformer(_Base):
    def forward(self, features, **kwargs):
        out = super().forward(features, **kwargs)
        out["token_embeddings"] = out["token_embeddings"] * 2.0 + 1.0
        return out
'''

#: a custom transformers architecture through config.json's auto_map: BERT whose output is scaled
CONFIGURATION = '''
from transformers import BertConfig


class ScaledBertConfig(BertConfig):
    model_type = "scaled-bert"
'''
MODELING = '''
from transformers import BertModel

from .configuration_scaled import ScaledBertConfig


class ScaledBertModel(BertModel):
    config_class = ScaledBertConfig

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.last_hidden_state = out.last_hidden_state * 3.0 - 0.5
        return out
'''

TEXTS = ["A man is playing a guitar.", "short", "A much longer sentence that has a lot of different words in it, "
         "so that it sorts first among these.", "x", "Two dogs run across a field of grass.", "ok then"] * 3


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    out = change(data)
    path.write_text(json.dumps(data if out is None else out))


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


@pytest.fixture(scope="module")
def marker(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("marker") / "imported.txt"


@pytest.fixture(scope="module")
def custom_dir(tmp_path_factory, tiny_st_dir, marker) -> Path:
    folder = tmp_path_factory.mktemp("custom_st") / "m"
    shutil.copytree(tiny_st_dir, folder)
    (folder / "custom_st.py").write_text(CUSTOM_ST.format(marker=str(marker)))
    _edit(folder / "modules.json", lambda m: m[0].update(type="custom_st.Transformer"))
    return folder


@pytest.fixture(scope="module")
def custom(custom_dir):
    return embedhub.load(custom_dir, device="cpu", trust_remote_code=True)


@pytest.fixture(scope="module")
def peer(custom_dir):
    return st.SentenceTransformer(str(custom_dir), device="cpu", trust_remote_code=True)


def test_custom_module_refused_by_name_without_trust(tmp_path, tiny_st_dir):
    marker = tmp_path / "imported.txt"
    folder = tmp_path / "m"
    shutil.copytree(tiny_st_dir, folder)
    (folder / "custom_st.py").write_text(CUSTOM_ST.format(marker=str(marker)))
    _edit(folder / "modules.json", lambda m: m[0].update(type="custom_st.Transformer"))
    with pytest.raises(ConfigError, match=r"modules.json: module 0 type 'custom_st.Transformer'.*"
                                          r"trust_remote_code=True") as err:
        embedhub.load(folder, device="cpu")
    assert err.value.file == str(folder / "modules.json") and err.value.key == "[0].type"
    assert not marker.exists()  # no code ran, and the built-in loader did not take it for its Transformer
    assert embedhub.formats.detect(folder).name == "remote-code"


def test_auto_map_refused_by_name_without_trust(tmp_path, tiny_st_dir):
    folder = tmp_path / "m"
    shutil.copytree(tiny_st_dir, folder)
    _edit(folder / "config.json", lambda c: c.update(auto_map={"AutoModel": "modeling_scaled.ScaledBertModel"}))
    with pytest.raises(ConfigError, match=r"config.json: auto_map .*modeling_scaled.*trust_remote_code=True") as err:
        embedhub.load(folder, device="cpu")
    assert err.value.key == "auto_map"


def test_custom_module_gives_the_librarys_vectors(custom, peer, tiny_st_dir):
    ours = custom.encode(TEXTS, normalize=False, batch_size=4)
    theirs = peer.encode(TEXTS, batch_size=4)
    assert custom.format == "remote-code" and ours.shape == theirs.shape
    assert _cos_min(ours, theirs) > 1 - 1e-5
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    normalized = custom.encode(TEXTS)
    np.testing.assert_allclose(normalized, peer.encode(TEXTS, normalize_embeddings=True), atol=1e-5)
    # the custom module matters: the same folder without it gives other vectors
    plain = embedhub.load(tiny_st_dir, device="cpu").encode(TEXTS, normalize=False)
    assert _cos_min(ours, plain) < 0.99


def test_delegated_model_keeps_embedhubs_batching_and_errors(custom):
    whole = custom.encode(TEXTS, batch_size=64)
    np.testing.assert_allclose(custom.encode(TEXTS, batch_size=2), whole, atol=1e-6)
    np.testing.assert_allclose(custom.encode(TEXTS, batch_size=3, max_tokens=20), whole, atol=1e-6)
    np.testing.assert_allclose(custom.encode(TEXTS[::-1])[::-1], whole, atol=1e-6)  # input order kept
    assert custom.encode("one text").shape == (custom.embed_dim,)
    with pytest.raises(InputTypeError, match=r"inputs\[1\]"):
        custom.encode(["fine", None])
    with pytest.raises(InputError, match=r"inputs\[2\]"):
        custom.encode(["fine", "also fine", "bad \ud800 surrogate"])
    with pytest.raises(ModalityError):
        custom.encode_image([np.zeros((8, 8, 3), dtype=np.uint8)])


def test_fingerprint_and_record_cover_every_file(custom, custom_dir, tmp_path, marker):
    files = set(custom.source_files)
    assert {"custom_st.py", "modules.json", "model.safetensors", "1_Pooling/config.json", "tokenizer.json"} <= files
    assert set(embedhub.formats.model_files(custom_dir)) == files
    other = tmp_path / "m"
    shutil.copytree(custom_dir, other)
    (other / "custom_st.py").write_text(CUSTOM_ST.format(marker=str(marker)).replace("* 2.0", "* 2.5"))
    changed = embedhub.load(other, device="cpu", trust_remote_code=True)
    assert changed.fingerprint.id != custom.fingerprint.id
    assert _cos_min(changed.encode(TEXTS), custom.encode(TEXTS)) < 1 - 1e-4


def test_save_copies_the_source_files(custom, custom_dir, tmp_path):
    saved = custom.save_pretrained(tmp_path / "saved")
    for rel in custom.source_files:
        assert (saved / rel).read_bytes() == (custom_dir / rel).read_bytes(), rel
    with pytest.raises(ConfigError, match="custom_st.Transformer"):
        embedhub.load(saved, device="cpu")
    again = embedhub.load(saved, device="cpu", trust_remote_code=True)
    np.testing.assert_array_equal(again.encode(TEXTS), custom.encode(TEXTS))


def test_auto_map_architecture_is_delegated(tmp_path, tiny_st_dir):
    folder = tmp_path / "m"
    shutil.copytree(tiny_st_dir, folder)
    (folder / "configuration_scaled.py").write_text(CONFIGURATION)
    (folder / "modeling_scaled.py").write_text(MODELING)
    _edit(folder / "config.json", lambda c: c.update(
        model_type="scaled-bert", architectures=["ScaledBertModel"],
        auto_map={"AutoConfig": "configuration_scaled.ScaledBertConfig",
                  "AutoModel": "modeling_scaled.ScaledBertModel"}))
    model = embedhub.load(folder, device="cpu", trust_remote_code=True)
    peer = st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    ours, theirs = model.encode(TEXTS, normalize=False), peer.encode(TEXTS)
    assert _cos_min(ours, theirs) > 1 - 1e-5
    plain = embedhub.load(tiny_st_dir, device="cpu").encode(TEXTS, normalize=False)
    assert not np.allclose(ours, plain, atol=1e-3)  # the custom architecture ran
    assert {"configuration_scaled.py", "modeling_scaled.py"} <= set(model.source_files)


def test_trusted_folder_still_checked(tmp_path, custom_dir):
    folder = tmp_path / "pickle"
    shutil.copytree(custom_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(WeightsError, match=r"pytorch_model.bin.*never unpickles"):
        embedhub.load(folder, device="cpu", trust_remote_code=True)
    folder = tmp_path / "other-repo"
    shutil.copytree(custom_dir, folder)
    _edit(folder / "config.json", lambda c: c.update(auto_map={"AutoModel": "org/evil--modeling.Model"}))
    with pytest.raises(ConfigError, match=r"another repository"):
        embedhub.load(folder, device="cpu", trust_remote_code=True)
    folder = tmp_path / "link"
    shutil.copytree(custom_dir, folder)
    (folder / "escape.json").symlink_to(tmp_path / "pickle" / "config.json")
    with pytest.raises(ConfigError, match="outside the model folder"):
        embedhub.load(folder, device="cpu", trust_remote_code=True)


def test_delegated_model_encodes_in_worker_processes(custom):
    """The custom classes travel to a spawned worker; its vectors are this process's exactly."""
    texts = TEXTS * 2
    ours = custom.encode(texts, device=["cpu"], batch_size=4, chunk_size=8)
    np.testing.assert_array_equal(ours, custom.encode(texts, batch_size=4))


def test_hub_repo_downloads_code_only_with_consent(custom, custom_dir, tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub = RecordingHub(custom_dir, tmp_path / "refused", sha="d" * 40, repo="org--custom")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    with pytest.raises(ConfigError, match="custom_st.Transformer"):
        embedhub.load("org/custom", device="cpu", token=False)
    assert all(f.endswith(".json") for f in hub.served)  # neither code nor weights were fetched
    hub = RecordingHub(custom_dir, tmp_path / "trusted", sha="d" * 40, repo="org--custom")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    model = embedhub.load("org/custom", device="cpu", token=False, trust_remote_code=True)
    assert {"custom_st.py", "model.safetensors", "tokenizer.json"} <= hub.served
    assert set(model.source_files) == hub.served
    np.testing.assert_array_equal(model.encode(TEXTS), custom.encode(TEXTS))


def test_router_naming_a_custom_class_is_delegated_with_trust(tmp_path, tiny_st_dir):
    """A Router whose router_config.json names a class of the folder's own code: refused by name without
    trust_remote_code; with it, sentence-transformers runs it and both routes give the library's vectors."""
    import sentence_transformers as st
    from sentence_transformers.base.modules import Router
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    folder = tmp_path / "router"
    router = Router.for_query_document(query_modules=[Transformer(str(tiny_st_dir)), Pooling(32)],
                                       document_modules=[Transformer(str(tiny_st_dir)), Pooling(32), Normalize()])
    st.SentenceTransformer(modules=[router], device="cpu").save(str(folder))
    (folder / "custom_pool.py").write_text(
        "from sentence_transformers.sentence_transformer.modules import Pooling as _P\n\n"
        "class Pooling(_P):\n    def forward(self, features, **kw):\n"
        "        out = super().forward(features, **kw)\n"
        "        out['sentence_embedding'] = out['sentence_embedding'] * 2 + 1\n        return out\n")
    config = folder / json.loads((folder / "modules.json").read_text())[0]["path"] / "router_config.json"
    data = json.loads(config.read_text())
    data["types"]["document_1_Pooling"] = "custom_pool.Pooling"
    config.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"router_config.json.*custom_pool.Pooling") as info:
        embedhub.load(folder, device="cpu")
    assert info.value.key == "types.document_1_Pooling"
    model = embedhub.load(folder, device="cpu", trust_remote_code=True)
    peer = st.SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    for ours, theirs in ((model.encode_query(TEXTS), peer.encode_query(TEXTS)),
                         (model.encode_document(TEXTS), peer.encode_document(TEXTS))):
        cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
        assert cos.min() > 1 - 1e-5
