"""Prompts, roles and config_sentence_transformers.json against sentence-transformers itself.

Every model here is built and saved by sentence-transformers (tiny random BERT with a real tokenizer);
embedhub loads the folder and must give what ``SentenceTransformer(folder)`` gives.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from st_peer import assert_close, build_st, peer

import embedhub
from embedhub import ConfigError, ModalityError
from embedhub._io.manifest import record

pytest.importorskip("sentence_transformers")

TEXTS = ["A man is playing a guitar.", "x", "Plants grow from seeds when they are watered every single day.",
         "Who wrote the book about the whale?"]
PROMPTS = {"query": "query: ", "document": "passage: ", "classification": "Classify the topic of this text: "}


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, tiny_st_dir):
    """A model with query/document/classification prompts and the classification prompt as default."""
    folder = build_st(tiny_st_dir, tmp_path_factory.mktemp("prompted"), prompts=PROMPTS,
                      default_prompt_name="classification")
    return folder, peer(folder), embedhub.load(folder, device="cpu")


def test_prompts_and_default_read_from_the_config(prompted):
    _, theirs, ours = prompted
    assert ours.prompts == theirs.prompts
    assert ours.default_prompt_name == theirs.default_prompt_name == "classification"


@pytest.mark.parametrize("kwargs", [{}, {"prompt_name": "query"}, {"prompt_name": "document"},
                                    {"prompt": "Represent this sentence: "}, {"prompt": ""},
                                    {"prompt": "custom: ", "prompt_name": "query"}])
def test_encode_with_prompts_matches_the_peer(prompted, kwargs):
    _, theirs, ours = prompted
    # the default prompt applies to plain encode; prompt wins over prompt_name; "" disables the default
    assert_close(ours.encode(TEXTS, normalize=False, **kwargs), theirs.encode(TEXTS, **kwargs))
    assert_close(ours.encode(TEXTS, **kwargs), theirs.encode(TEXTS, normalize_embeddings=True, **kwargs))


def test_default_prompt_changes_the_vectors(prompted):
    """A check that the parity above is not trivially met: the default prompt moves every vector."""
    _, _, ours = prompted
    plain = ours.encode(TEXTS, prompt="")
    default = ours.encode(TEXTS)
    assert np.all((plain * default).sum(1) < 0.9999)


def test_encode_query_and_document_match_the_peer(prompted):
    _, theirs, ours = prompted
    assert_close(ours.encode_query(TEXTS, normalize=False), theirs.encode_query(TEXTS))
    assert_close(ours.encode_document(TEXTS, normalize=False), theirs.encode_document(TEXTS))
    assert_close(ours.encode_query(TEXTS, prompt_name="classification", normalize=False),
                 theirs.encode_query(TEXTS, prompt_name="classification"))
    single = ours.encode_query(TEXTS[0], normalize=False)
    assert single.shape == (32,)
    assert_close(single, theirs.encode_query(TEXTS[0]))


def test_query_without_its_prompt_keeps_the_default_out(tmp_path, tiny_st_dir):
    """As in sentence-transformers: "query" is always a prompt (empty unless set), so encode_query of a model
    with only a default prompt encodes without a prompt, and encode_document falls back to passage/corpus."""
    folder = build_st(tiny_st_dir, tmp_path / "m", prompts={"passage": "p: ", "task": "t: "},
                      default_prompt_name="task")
    theirs, ours = peer(folder), embedhub.load(folder, device="cpu")
    assert ours.prompts == theirs.prompts
    assert_close(ours.encode_query(TEXTS, normalize=False), theirs.encode_query(TEXTS))
    assert_close(ours.encode_document(TEXTS, normalize=False), theirs.encode_document(TEXTS))
    assert_close(ours.encode(TEXTS, normalize=False), theirs.encode(TEXTS))


def test_unknown_prompt_name_lists_the_prompts(prompted):
    _, _, ours = prompted
    with pytest.raises(ValueError, match="prompt_name 'clustering' is not one of") as info:
        ours.encode(TEXTS, prompt_name="clustering")
    assert all(repr(name) in str(info.value) for name in PROMPTS)
    with pytest.raises(ValueError, match="prompt must be a string"):
        ours.encode(TEXTS, prompt=3)


@pytest.mark.parametrize("pooling", ["mean", "cls", "lasttoken", "weightedmean", ("mean", "max")])
def test_include_prompt_false_matches_the_peer(tmp_path, tiny_st_dir, pooling):
    """INSTRUCTOR-style pooling: the prompt's tokens are left out of the pooling, exactly as the peer counts
    them; texts truncated by max_seq_length (12 tokens) keep the same cut."""
    folder = build_st(tiny_st_dir, tmp_path / "m", pooling=pooling, include_prompt=False, max_seq_length=12,
                      prompts={"query": "Represent the question for retrieving documents: "})
    assert json.loads((folder / "1_Pooling" / "config.json").read_text())["include_prompt"] is False
    theirs, ours = peer(folder), embedhub.load(folder, device="cpu")
    for kwargs in ({"prompt_name": "query"}, {"prompt": "short: "}, {}):
        assert_close(ours.encode(TEXTS, normalize=False, **kwargs), theirs.encode(TEXTS, **kwargs))
    if pooling == "lasttoken":
        return  # the last token is after the prompt either way
    with_prompt = ours.encode(TEXTS, prompt="short: ", normalize=False)
    # leaving the prompt out is not the same as pooling over it
    folder2 = build_st(tiny_st_dir, tmp_path / "m2", pooling=pooling, max_seq_length=12)
    pooled_over = embedhub.load(folder2, device="cpu").encode(TEXTS, prompt="short: ", normalize=False)
    assert not np.allclose(with_prompt, pooled_over)


def test_a_prompt_for_images_is_an_error(tiny_embedhub_dir, photos):
    model = embedhub.load(tiny_embedhub_dir, device="cpu")
    with pytest.raises(ModalityError, match=r"inputs\[1\] is an image, but a prompt"):
        model.encode(["a text", photos[0]], prompt="query: ")
    with pytest.raises(ModalityError, match="image, but a prompt"):
        model.encode_image(photos[:1], prompt_name="query")
    # the query role without an explicit prompt embeds images as they are
    np.testing.assert_allclose(model.encode_query(photos[:1]), model.encode(photos[:1]), atol=1e-6)


# ---------------------------------------------------------------------------- config_sentence_transformers.json
@pytest.fixture(scope="module")
def all_options(tmp_path_factory, tiny_st_dir):
    """A folder saved with every model-level option sentence-transformers has set."""
    return build_st(tiny_st_dir, tmp_path_factory.mktemp("all_options"), prompts=PROMPTS,
                    default_prompt_name="query", similarity_fn_name="manhattan", truncate_dim=16)


def test_every_key_sentence_transformers_writes_is_handled(all_options):
    """Walks the keys the installed sentence-transformers writes into config_sentence_transformers.json
    (and the ones it reads there): each must be honoured or refused by embedhub, never ignored."""
    from sentence_transformers import SentenceTransformer

    from embedhub.formats import st_config

    written = set(json.loads((all_options / st_config.FILE).read_text()))
    loaded = SentenceTransformer(str(all_options), device="cpu")
    produced = set(loaded._get_model_config())  # what a save of a loaded model writes
    read = {"requirements"}  # read by sentence-transformers' loader (check_version_requirements)
    unhandled = (written | produced | read) - set(st_config.HONOURED)
    assert not unhandled, f"keys of {st_config.FILE} neither honoured nor refused: {sorted(unhandled)}"


def test_all_options_match_the_peer(all_options):
    theirs, ours = peer(all_options), embedhub.load(all_options, device="cpu")
    assert (ours.similarity_fn_name, ours.truncate_dim, ours.default_prompt_name) == (
        theirs.similarity_fn_name, theirs.truncate_dim, theirs.default_prompt_name)
    a, b = ours.encode(TEXTS), theirs.encode(TEXTS)  # manhattan, no Normalize: raw, truncated to 16
    assert a.shape == (len(TEXTS), 16)
    assert_close(a, b)
    np.testing.assert_allclose(ours.similarity(a, a), theirs.similarity(b, b).numpy(), rtol=1e-4, atol=1e-4)


def _with_config(src, dest, **changes):
    shutil.copytree(src, dest)
    path = dest / "config_sentence_transformers.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is KeyError:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))
    return dest


@pytest.mark.parametrize(("changes", "key"), [
    ({"model_type": "SparseEncoder"}, "model_type"),
    ({"max_active_dims": 64}, "max_active_dims"),
    ({"similarity_fn_name": "maxsim"}, "similarity_fn_name"),
    ({"truncate_dim": 33}, "truncate_dim"),
    ({"truncate_dim": 0}, "truncate_dim"),
    ({"default_prompt_name": "clustering"}, "default_prompt_name"),
    ({"prompts": ["query: "]}, "prompts"),
    ({"prompts": {"query": 3}}, "prompts.query"),
    ({"prompts": {"query": "q" * 20000}}, "prompts.query"),
    ({"__version__": "6.3.0"}, "__version__"),
    ({"requirements": {"transformers": "<1.0"}}, "requirements.transformers"),
])
def test_refused_keys_name_file_and_key(all_options, tmp_path, changes, key):
    folder = _with_config(all_options, tmp_path / "m", **changes)
    with pytest.raises(ConfigError) as info:
        embedhub.load(folder, device="cpu")
    assert info.value.key == key
    assert "config_sentence_transformers.json" in str(info.value) and str(info.value.file).endswith(
        "config_sentence_transformers.json")


def test_requirements_that_hold_load_as_in_the_peer(all_options, tmp_path):
    folder = _with_config(all_options, tmp_path / "m", requirements={"torch": ">=1.0", "pytorch": {"specifier": ">=1"}})
    assert embedhub.load(folder, device="cpu").truncate_dim == peer(folder).truncate_dim == 16
    bad = _with_config(all_options, tmp_path / "bad", requirements={"transformers": "<1.0"})
    with pytest.raises(ImportError):
        peer(bad)  # the peer refuses the same folder


def test_null_settings_read_as_the_peer_reads_them(all_options, tmp_path):
    folder = _with_config(all_options, tmp_path / "m", similarity_fn_name=None, truncate_dim=None,
                          default_prompt_name=None, prompts={"query": None, "document": "d: "})
    theirs, ours = peer(folder), embedhub.load(folder, device="cpu")
    assert ours.prompts == theirs.prompts == {"query": "", "document": "d: "}
    assert (ours.similarity_fn_name, ours.truncate_dim, ours.default_prompt_name) == ("cosine", None, None)
    assert theirs.similarity_fn_name == "cosine"


# ---------------------------------------------------------------------------- embedhub's own format
def test_settings_survive_save_and_load_in_both_layouts(all_options, tmp_path):
    from embedhub.hub.card import read_card, write_card

    ours = embedhub.load(all_options, device="cpu")
    saved = ours.save_pretrained(tmp_path / "saved")
    cfg = json.loads((saved / "embedhub_config.json").read_text())
    assert cfg["prompts"]["query"] == "query: " and cfg["similarity_fn_name"] == "manhattan"
    assert cfg["truncate_dim"] == 16 and cfg["default_prompt_name"] == "query"
    again = embedhub.load(saved, device="cpu")
    assert again.format == "embedhub"
    assert (again.prompts, again.default_prompt_name, again.similarity_fn_name, again.truncate_dim) == (
        ours.prompts, ours.default_prompt_name, ours.similarity_fn_name, ours.truncate_dim)
    np.testing.assert_allclose(again.encode_query(TEXTS), ours.encode_query(TEXTS), atol=1e-6)
    # the sentence-transformers layout written beside it: the peer sees the same prompts and similarity
    theirs = peer(saved)
    assert theirs.prompts == ours.prompts and theirs.default_prompt_name == "query"
    assert theirs.similarity_fn_name == "manhattan" and theirs.truncate_dim == 16
    assert_close(again.encode_query(TEXTS), theirs.encode_query(TEXTS))
    assert_close(again.encode(TEXTS), theirs.encode(TEXTS))
    # the model card shows them
    write_card(saved, model_id="acme/tiny", modalities=("text",), embed_dim=32, prompts=again.prompts,
               default_prompt_name=again.default_prompt_name, similarity_fn_name=again.similarity_fn_name,
               truncate_dim=again.truncate_dim)
    text = str(read_card(saved))
    assert "Classify the topic of this text: " in text and "`manhattan`" in text
    assert "first 16 dimensions" in text and "model.encode_query(queries)" in text


def test_include_prompt_false_survives_both_layouts(tmp_path, tiny_st_dir):
    folder = build_st(tiny_st_dir, tmp_path / "m", pooling="mean", include_prompt=False,
                      prompts={"query": "Represent the question: "})
    ours = embedhub.load(folder, device="cpu")
    saved = ours.save_pretrained(tmp_path / "saved")
    again, theirs = embedhub.load(saved, device="cpu"), peer(saved)
    assert_close(again.encode_query(TEXTS, normalize=False), ours.encode_query(TEXTS, normalize=False))
    assert_close(again.encode_query(TEXTS, normalize=False), theirs.encode_query(TEXTS))


@pytest.mark.parametrize(("changes", "key"), [
    ({"prompts": {"query": None}}, "prompts.query"),
    ({"prompts": {"query": "q" * 20000}}, "prompts.query"),
    ({"prompts": "query: "}, "prompts"),
    ({"default_prompt_name": "nope"}, "default_prompt_name"),
    ({"similarity_fn_name": "jaccard"}, "similarity_fn_name"),
    ({"truncate_dim": 64}, "truncate_dim"),
    ({"truncate_dim": "16"}, "truncate_dim"),
])
def test_embedhub_config_settings_are_validated(all_options, tmp_path, changes, key):
    saved = embedhub.load(all_options, device="cpu").save_pretrained(tmp_path / "saved")
    path = saved / "embedhub_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    record(saved)  # as if embedhub had written it so: only the config's check can refuse it
    with pytest.raises(ConfigError) as info:
        embedhub.load(saved, device="cpu")
    assert info.value.key == key
