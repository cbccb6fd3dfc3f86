"""The sentence recipe keeps prompts in the model it trains: embedhub and sentence-transformers both load them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import stsb_rows, write_stsb_csv

import embedhub

pytest.importorskip("scipy")
st = pytest.importorskip("sentence_transformers")
PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> tuple[Path, Path]:
    """40 real STS-B train sentences and the first 40 pairs of STS-B dev and test."""
    rows = stsb_rows("train")
    folder = write_stsb_csv(tmp_path_factory.mktemp("recipe_data"), {"dev": 40, "test": 40})
    sentences = list(dict.fromkeys(s.strip() for r in rows for s in r[:2] if s.strip()))[:40]
    (folder / "train.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    return folder / "train.txt", folder


def _run(tower: Path, data: tuple[Path, Path], out: Path, *extra: str) -> int:
    from training.simcse import main

    return main(["simcse", f"text_tower={tower}", f"data={data[0]}", f"sts_dir={data[1]}", f"output={out}",
                 "max_steps=2", "batch_size=8", "eval_every_steps=2", "checkpoint_every=0", *extra])


def test_simcse_run_saves_prompts_that_encode_query_and_the_peer_use(tiny_st_dir, small_data, tmp_path):
    out = tmp_path / "run"
    assert _run(tiny_st_dir, small_data, out, f"prompts={json.dumps(PROMPTS)}", "default_prompt_name=query") == 0
    model = embedhub.load(out / "model", device="cpu")
    assert {k: v for k, v in model.prompts.items() if v} == PROMPTS and model.default_prompt_name == "query"
    texts = ["A man is playing a guitar.", "A cat sleeps on the sofa."]
    peer = st.SentenceTransformer(str(out / "model"), device="cpu")
    assert peer.prompts["query"] == "query: " and peer.prompts["document"] == "passage: "
    for ours, theirs in ((model.encode_query(texts), peer.encode_query(texts)),
                         (model.encode_document(texts), peer.encode_document(texts)),
                         (model.encode(texts), peer.encode(texts))):
        cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
        assert cos.min() > 1 - 1e-5
    plain = model.encode(texts, prompt="")
    assert not np.allclose(model.encode_query(texts), plain, atol=1e-4)  # the prompt changes the vectors


def test_a_default_prompt_that_is_not_a_prompt_is_refused(tiny_st_dir, small_data, tmp_path, capsys):
    out = tmp_path / "bad"
    assert _run(tiny_st_dir, small_data, out, f"prompts={json.dumps(PROMPTS)}", "default_prompt_name=passage") == 2
    err = capsys.readouterr().err
    assert "default_prompt_name" in err and "'document', 'query'" in err
    assert _run(tiny_st_dir, small_data, out, "prompts={not json") == 2
    assert "prompts" in capsys.readouterr().err
