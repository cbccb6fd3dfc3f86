"""Fingerprints record prompt role, truncation and precision: query and document vectors of one model stay
comparable, vectors of another truncation or precision are refused; the model's prompts, similarity and
truncation are part of what identifies it."""

from __future__ import annotations

import json
import shutil

import pytest
from st_peer import build_st

import embedhub
from embedhub import Fingerprint, FingerprintMismatchError, ProvenanceError

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_st_dir):
    folder = build_st(tiny_st_dir, tmp_path_factory.mktemp("fp"), prompts={"query": "q: ", "document": "d: "})
    return embedhub.load(folder, device="cpu")


def test_roles_share_an_id_and_are_recorded(model):
    q, d = model.fingerprint_for(prompt_name="query"), model.fingerprint_for(prompt_name="document")
    assert (q.role, d.role) == ("query", "document")
    assert q.id == d.id == model.fingerprint.id
    q.check(d, what="document vectors")  # comparable: no error
    literal = model.fingerprint_for(prompt="Represent this: ")
    assert literal.role.startswith("prompt:") and literal.id == q.id
    with pytest.raises(ValueError, match="prompt_name 'nope' is not one of"):
        model.fingerprint_for(prompt_name="nope")


@pytest.mark.parametrize("kwargs", [{"truncate_dim": 16}, {"precision": "binary"}, {"precision": "int8"},
                                    {"normalize": False}])
def test_truncation_precision_and_normalisation_change_the_id(model, kwargs):
    base, other = model.fingerprint_for(), model.fingerprint_for(**kwargs)
    assert other.id != base.id
    with pytest.raises(FingerprintMismatchError) as info:
        base.check(other, what="stored.npy")
    assert set(info.value.differences) == {"dim" if "truncate_dim" in kwargs else next(iter(kwargs)).replace(
        "normalize", "normalized")}


def test_stored_form_round_trips_and_float32_ids_are_unchanged(model):
    fp = model.fingerprint_for(prompt_name="query", truncate_dim=8, precision="ubinary")
    back = Fingerprint.from_dict(json.loads(fp.to_json()))
    assert back == fp and back.id == fp.id and back.role == "query" and back.precision == "ubinary"
    plain = model.fingerprint
    assert set(plain.to_dict()) == {"id", "source", "revision", "format", "backend", "dtype", "pooling",
                                    "normalized", "dim"}  # as stored before precision and role were recorded
    record = dict(fp.to_dict(), precision="int4")
    with pytest.raises(ProvenanceError) as info:
        Fingerprint.from_dict(record)
    assert info.value.field == "precision"
    with pytest.raises(ValueError, match="precision must be one of"):
        model.fingerprint_for(precision="fp8")


def test_the_model_fingerprint_covers_its_settings(tmp_path, tiny_st_dir):
    """Same weights, other prompts / similarity / truncation in config_sentence_transformers.json: another id."""
    base = build_st(tiny_st_dir, tmp_path / "base")
    ids = {embedhub.load(base, device="cpu").fingerprint.id}
    for key, value in (("prompts", {"query": "q: "}), ("similarity_fn_name", "euclidean"), ("truncate_dim", 16)):
        folder = shutil.copytree(base, tmp_path / key)
        path = folder / "config_sentence_transformers.json"
        cfg = json.loads(path.read_text())
        cfg[key] = {**cfg["prompts"], **value} if key == "prompts" else value
        path.write_text(json.dumps(cfg))
        ids.add(embedhub.load(folder, device="cpu").fingerprint.id)
    assert len(ids) == 4


def test_memory_fingerprint_covers_settings(model):
    from embedhub import EmbeddingModel

    def built(**settings):
        return EmbeddingModel(dict(model.towers), model.preprocessors, embed_dim=32, name="m", format="test",
                              **settings)

    ids = {built().fingerprint.id, built(prompts={"query": "q: "}).fingerprint.id,
           built(similarity_fn_name="dot").fingerprint.id, built(truncate_dim=8).fingerprint.id}
    assert len(ids) == 4
