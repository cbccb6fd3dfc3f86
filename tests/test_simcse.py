"""The sentence recipes (training/simcse.py) end to end on a tiny random BERT and real STS-B sentences:
SimCSE and ESimCSE runs finish and write a folder that embedhub and sentence-transformers load with the
embeddings the run evaluated; an interrupted ESimCSE run resumes to the uninterrupted result; bad input
is a clear error with exit status 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import STSB

pytest.importorskip("sentence_transformers")


def _rows(name: str) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in (STSB / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> Path:
    """200 distinct STS-B train sentences (their scores dropped), one a line."""
    if not STSB.is_dir():
        pytest.skip(f"{STSB} (STS-B) is not here")
    out: list[str] = []
    for row in _rows("sts-train.csv"):
        for s in row[5:7]:
            if s.strip() and s.strip() not in out:
                out.append(s.strip())
    path = tmp_path_factory.mktemp("sentences") / "train.txt"
    path.write_text("\n".join(out[:200]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def sts_dir(tmp_path_factory, sentences) -> Path:
    """The first 200 pairs of STS-B dev and test (the real files, cut to keep the test short)."""
    folder = tmp_path_factory.mktemp("sts")
    for name in ("sts-dev.csv", "sts-test.csv"):
        lines = (STSB / name).read_text(encoding="utf-8").splitlines(keepends=True)[:200]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


def _run(recipe: str, tower: Path, data: Path, sts: Path, out: Path, *extra: str) -> int:
    from training.simcse import main

    return main([recipe, f"text_tower={tower}", f"data={data}", f"sts_dir={sts}", f"output={out}", "max_steps=10",
                 "batch_size=16", "eval_every_steps=5", "lr=1e-3", "queue_size=32", "checkpoint_every=1", *extra])


def _sts_test(model, sts: Path) -> float:
    from scipy.stats import spearmanr

    rows = _rows("sts-test.csv")[:200]
    a = model.encode_text([r[5] for r in rows], show_progress_bar=False)
    b = model.encode_text([r[6] for r in rows], show_progress_bar=False)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(spearmanr(cos, [float(r[4]) for r in rows]).statistic * 100)


@pytest.mark.parametrize("recipe", ["simcse", "esimcse"])
def test_a_run_writes_a_folder_that_embedhub_and_sentence_transformers_load(recipe, tiny_st_dir, sentences, sts_dir,
                                                                            tmp_path):
    import sentence_transformers as st

    import embedhub

    out = tmp_path / recipe
    assert _run(recipe, tiny_st_dir, sentences, sts_dir, out) == 0
    results = json.loads((out / "results.json").read_text())
    m = results["metrics"]
    assert results["recipe"] == recipe and results["steps"] == 10 and results["train_sentences"] == 200
    for key in ("sts_test_spearman", "sts_test_spearman_start", "sts_dev_spearman_best"):
        assert math.isfinite(m[key]) and -100 <= m[key] <= 100, (key, m[key])
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if "eval" in x]
    assert [e["step"] for e in evals] == [5, 10]  # STS-B dev every eval_every_steps
    assert m["best_step"] in (5, 10) and m["sts_dev_spearman_best"] == max(e["eval"]["sts_dev_spearman"]
                                                                           for e in evals)
    assert (out / "training.png").is_file()

    ours = embedhub.load(out / "model", device="cpu")
    # the saved folder gives the embeddings the run evaluated: the same STS-B test figure
    assert _sts_test(ours, sts_dir) == pytest.approx(m["sts_test_spearman"], abs=1e-3)
    start = embedhub.load(tiny_st_dir, device="cpu")
    texts = [r[5] for r in _rows("sts-test.csv")[:32]]
    a = ours.encode_text(texts, show_progress_bar=False)
    assert not np.allclose(a, start.encode_text(texts, show_progress_bar=False), atol=1e-4)  # it trained
    peer = st.SentenceTransformer(str(out / "model"), device="cpu")
    b = peer.encode(texts, convert_to_numpy=True)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99999


def test_an_interrupted_esimcse_run_resumes_to_the_uninterrupted_result(tiny_st_dir, sentences, sts_dir, tmp_path):
    """Queue, momentum encoder, best weights and RNG travel in the checkpoint: same log and same model."""
    from safetensors.torch import load_file

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run("esimcse", tiny_st_dir, sentences, sts_dir, whole) == 0
    assert _run("esimcse", tiny_st_dir, sentences, sts_dir, cut, "stop_after_steps=7") == 0
    assert not (cut / "results.json").exists()
    assert _run("esimcse", tiny_st_dir, sentences, sts_dir, cut, "--resume") == 0

    def losses(run: Path) -> list[float]:
        return [json.loads(x)["loss"] for x in (run / "log.jsonl").read_text().splitlines() if '"loss"' in x]

    assert losses(cut) == pytest.approx(losses(whole), abs=1e-5) and len(losses(whole)) == 10
    w1 = load_file(str(whole / "model" / "model.safetensors"))
    w2 = load_file(str(cut / "model" / "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


@pytest.mark.parametrize(("lines", "extra", "message"), [
    ("", (), "no sentences"),
    ("\n  \n", (), "no sentences"),
    ("only one sentence here.\n", (), "1 sentence"),
    ("a.\nb.\nc.\n", ("batch_size=1",), "batch_size=1: expected an integer >= 2"),
    ('{"text": "a."}\n{"txt": "b."}\n', (), "line 2: expected an object with a string 'text' field"),
])
def test_bad_input_is_a_clear_error_with_exit_status_2(lines, extra, message, tiny_st_dir, sts_dir, tmp_path, capsys):
    data = tmp_path / ("data.jsonl" if lines.startswith("{") else "data.txt")
    data.write_text(lines, encoding="utf-8")
    assert _run("simcse", tiny_st_dir, data, sts_dir, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


def test_a_missing_sts_file_and_a_wrong_data_suffix_are_refused_before_training(tiny_st_dir, sentences, tmp_path,
                                                                                capsys):
    assert _run("simcse", tiny_st_dir, sentences, tmp_path, tmp_path / "out") == 2
    assert "sts_dir=" in capsys.readouterr().err
    csv = tmp_path / "s.csv"
    csv.write_text("a\nb\n")
    assert _run("esimcse", tiny_st_dir, csv, tmp_path, tmp_path / "out") == 2
    assert "data=" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_sentence_file_streams_every_sentence_once_skips_invalid_utf8_and_shuffles_by_seed_and_epoch(tmp_path):
    from training.sentences import SentenceFile

    path = tmp_path / "s.txt"
    lines = [f"sentence number {i}." for i in range(50)]
    text = "\n".join(lines[:20]).encode() + b"\n\xff\xfe not UTF-8\n\n" + "\n".join(lines[20:]).encode() + b"\n"
    path.write_bytes(text)
    data = SentenceFile(path, shuffle_buffer=8)  # a buffer smaller than the file: streamed, not read whole
    assert len(data) == 50 and data.invalid == 1
    e0 = list(data.stream(seed=3, epoch=0))
    assert sorted(e0) == sorted(lines) and e0 != lines
    assert e0 == list(data.stream(seed=3, epoch=0)) and e0 != list(data.stream(seed=3, epoch=1))
