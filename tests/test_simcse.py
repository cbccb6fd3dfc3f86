"""The sentence recipes (training/simcse.py) end to end on a tiny random BERT and real STS-B sentences:
SimCSE and ESimCSE runs finish and write a folder that embedhub and sentence-transformers load with the
embeddings the run evaluated, a dev curve that starts at step 0 and a card with the user's config; an
interrupted ESimCSE or supervised SimCSE run resumes to the uninterrupted result; supervised SimCSE puts
anchors, positives and hard negatives through one forward; over-long lines are truncated to max_length
tokens; bad input is a clear error with exit status 2; two torchrun ranks reproduce one process."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import stsb_lines, stsb_rows, write_stsb_csv

pytest.importorskip("sentence_transformers")

from training.config import SimCSEConfig  # noqa: E402


def _rows(name: str) -> list[list[str]]:
    """STS-B's ``name`` (sts-{split}.csv) as rows of its original fields, whatever the source; skips when absent."""
    split = name.removeprefix("sts-").removesuffix(".csv")
    return [line.split("\t") for line in stsb_lines(stsb_rows(split))]


@pytest.fixture(scope="module")
def sentences(tmp_path_factory) -> Path:
    """200 distinct STS-B train sentences (their scores dropped), one a line."""
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
    """The first 200 pairs of STS-B dev and test in the original layout (cut to keep the test short)."""
    return write_stsb_csv(tmp_path_factory.mktemp("sts"), {"dev": 200, "test": 200})


@pytest.fixture(scope="module")
def triplets(tmp_path_factory) -> Path:
    """60 real STS-B train rows as a CSV of (anchor, positive, negative): a pair scored >= 4 and a sentence
    of a pair scored <= 1."""
    rows = _rows("sts-train.csv")
    close = [(r[5], r[6]) for r in rows if float(r[4]) >= 4][:60]
    far = [r[5] for r in rows if float(r[4]) <= 1][:60]
    path = tmp_path_factory.mktemp("triplets") / "nli.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["anchor", "positive", "negative"])
        w.writerows((a, p, n) for (a, p), n in zip(close, far))
    return path


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in _log(run) if "loss" in r]


def _card_config(model: Path) -> dict:
    """The training config a model card records (its yaml block)."""
    import yaml

    from embedhub.hub import read_card

    text = read_card(model).text
    return yaml.safe_load(text.split("## Training config", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0])


RUN_ARGS = ["max_steps=10", "batch_size=16", "eval_every_steps=5", "lr=1e-3", "queue_size=32", "checkpoint_every=1"]


def _run(recipe: str, tower: Path, data: Path, sts: Path, out: Path, *extra: str) -> int:
    from training.simcse import main

    return main([recipe, f"text_tower={tower}", f"data={data}", f"sts_dir={sts}", f"output={out}", *RUN_ARGS, *extra])


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
    assert results["mode"] == "unsupervised"
    for key in ("sts_test_spearman", "sts_test_spearman_start", "sts_dev_spearman_best"):
        assert math.isfinite(m[key]) and -100 <= m[key] <= 100, (key, m[key])
    evals = [r for r in _log(out) if "eval" in r]
    # STS-B dev before training (the curve's start), then every eval_every_steps
    assert [(e["step"], e["epoch"]) for e in evals] == [(0, 0), (5, 1), (10, 2)]
    assert m["best_step"] in (5, 10) and m["sts_dev_spearman_best"] == max(e["eval"]["sts_dev_spearman"]
                                                                           for e in evals[1:])
    assert (out / "training.png").is_file()
    # the dev curve beside the run and in the model folder, shown by the card
    for png in (out / "sts_dev.png", out / "model" / "sts_dev.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["curve"] == str(out / "model" / "sts_dev.png")
    from embedhub.hub import linked_images, read_card

    assert linked_images(out / "model") == ["sts_dev.png"] and "sts_dev.png" in read_card(out / "model").text
    # the card records the user's config (max_steps=10, epochs=1), not the trainer's rounds (epochs=2)
    card = _card_config(out / "model")
    assert (card["max_steps"], card["epochs"], card["eval_every_steps"]) == (10, 1, 5)

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


def test_an_esimcse_run_killed_with_sigkill_resumes_to_the_uninterrupted_result(tiny_st_dir, sentences, sts_dir,
                                                                                 tmp_path):
    """A run killed (SIGKILL, still running) after its checkpoint at step >= 4 resumes with ``--resume`` to the
    uninterrupted run: queue, momentum encoder, best weights and RNG travel in the checkpoint, the steps redone
    after it are not logged twice, and the step-0 evaluation is logged once."""
    import signal
    import time

    from safetensors.torch import load_file

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run("esimcse", tiny_st_dir, sentences, sts_dir, whole) == 0
    root = Path(__file__).resolve().parents[1]
    args = [f"text_tower={tiny_st_dir}", f"data={sentences}", f"sts_dir={sts_dir}", f"output={cut}", *RUN_ARGS]
    proc = subprocess.Popen([sys.executable, "-m", "training.simcse", "esimcse", *args], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    state = cut / "checkpoint" / "state.json"
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            try:
                if json.loads(state.read_text())["step"] >= 4:
                    proc.send_signal(signal.SIGSTOP)  # hold it mid-run, then kill it
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = json.loads(state.read_text())["step"]
    assert 4 <= killed_at < 10 and not (cut / "results.json").exists()
    assert _run("esimcse", tiny_st_dir, sentences, sts_dir, cut, "--resume") == 0

    assert _losses(cut) == pytest.approx(_losses(whole), abs=1e-5) and len(_losses(whole)) == 10
    steps = [[r["step"] for r in _log(run) if "eval" in r] for run in (whole, cut)]
    assert steps[0] == steps[1] == [0, 5, 10]
    w1 = load_file(str(whole / "model" / "text" / "model.safetensors"))
    w2 = load_file(str(cut / "model" / "text" / "model.safetensors"))
    assert w1.keys() == w2.keys() and len(w1) > 20
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


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


def test_a_missing_sts_file_and_a_wrong_data_suffix_are_refused_before_training(tiny_st_dir, sentences, sts_dir,
                                                                                tmp_path, capsys):
    assert _run("simcse", tiny_st_dir, sentences, tmp_path, tmp_path / "out") == 2
    assert "sts_dir=" in capsys.readouterr().err
    only_dev = tmp_path / "only_dev"
    only_dev.mkdir()
    (only_dev / "sts-dev.csv").write_bytes((sts_dir / "sts-dev.csv").read_bytes())
    assert _run("simcse", tiny_st_dir, sentences, only_dev, tmp_path / "out") == 2
    assert f"sts_dir='{only_dev}': expected a folder holding STS-B's sts-test.csv" in capsys.readouterr().err
    tsv = tmp_path / "s.tsv"
    tsv.write_text("a\nb\n")
    assert _run("esimcse", tiny_st_dir, tsv, tmp_path, tmp_path / "out") == 2
    assert "data=" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _parquet(path: Path, columns: dict[str, list]) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize(("recipe", "name", "content", "message"), [
    ("simcse", "empty.csv", "", "no sentences"),
    ("simcse", "one.csv", "anchor,positive\na cat sleeps.,a sleeping cat.\n", "1 (anchor, positive) row"),
    ("simcse", "rows.csv", "anchor,positive,negative\na,b,c\nd,e\n", "row 2 (line 3): 2 fields, the header names 3"),
    ("simcse", "rows.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": ["d"]}\n',
     "line 2: field 'positive' is list"),
    ("simcse", "rows.jsonl", '{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": "d", "positive": "e"}\n',
     "line 2: no 'negative' field (the first row has one"),
    ("simcse", "s.parquet", {"sentence": ["a.", "b.", "c."]},
     "no column 'text' (text_column: sentences) nor 'anchor' and 'positive' (pairs); columns present: ['sentence']"),
    ("simcse", "s.parquet", {"anchor": ["a.", "b."], "negative": ["c.", "d."]},
     "no column 'positive' for the 'anchor' column"),
    ("esimcse", "pairs.csv", "anchor,positive\na,b\nc,d\n", "ESimCSE is unsupervised"),
    ("esimcse", "pairs.parquet", {"anchor": ["a.", "b."], "positive": ["c.", "d."]}, "ESimCSE is unsupervised"),
])
def test_bad_rows_columns_and_modes_exit_2_naming_the_problem(recipe, name, content, message, tiny_st_dir, sts_dir,
                                                              tmp_path, capsys):
    data = tmp_path / name
    if isinstance(content, dict):
        _parquet(data, content)
    else:
        data.write_text(content, encoding="utf-8")
    assert _run(recipe, tiny_st_dir, data, sts_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err and str(data) in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "model").exists()


def test_supervised_simcse_puts_anchors_positives_and_hard_negatives_through_one_forward(tiny_st_dir, triplets,
                                                                                        sts_dir, tmp_path):
    """With dropout off, the loss of a batch is simcse_loss of the anchors', positives' and negatives'
    embeddings computed apart (one forward of the concatenated token lists changes nothing but padding);
    batches are length-bucketed by the anchor and each epoch holds every row once."""
    from training.losses import simcse_loss
    from training.recipe import load_config
    from training.simcse import SimCSESetup

    cfg = load_config(SimCSEConfig, overrides=[f"text_tower={tiny_st_dir}", f"data={triplets}", f"sts_dir={sts_dir}",
                                               f"output={tmp_path}", "batch_size=8", "dropout=0", "length_buckets=4"])
    setup = SimCSESetup(cfg)
    assert setup.supervised and len(setup.data) == 60
    calls = []
    forward = type(setup.model).forward

    def spy(module, input_ids, attention_mask):
        calls.append(input_ids.shape)
        return forward(module, input_ids, attention_mask)

    setup.model.forward = spy.__get__(setup.model)
    model = setup.model.eval()
    it = setup._all_batches()
    epoch = [next(it) for _ in range(8)]  # 60 rows: a window of 32 (4 batches), then one of 28 (3 + a 4)
    assert sorted(r for b in epoch for r in b) == sorted(setup.data.stream(seed=0, epoch=0))
    for window in (epoch[:4], epoch[4:]):  # batches of a window hold disjoint ranges of anchor lengths
        spans = sorted((min(len(r[0]) for r in b), max(len(r[0]) for r in b)) for b in window)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:])), spans
    rows = epoch[0]
    with torch.no_grad():
        loss = setup.loss_fn(model, (0, rows))
        assert calls == [torch.Size([24, calls[0][1]])]  # one forward: 8 anchors, 8 positives, 8 negatives
        a, p, n = (setup._forward(model, setup._ids([r[i] for r in rows])) for i in range(3))
    assert float(loss) == pytest.approx(float(simcse_loss(a, p, temperature=0.05, hard_negatives=n)), abs=1e-5)
    assert float(loss) != pytest.approx(float(simcse_loss(a, n, temperature=0.05, hard_negatives=p)), abs=1e-3)
    assert float(loss) != pytest.approx(float(simcse_loss(a, p, temperature=0.05)), abs=1e-3)


def test_a_supervised_run_finishes_and_resumes_to_the_uninterrupted_result(tiny_st_dir, triplets, sts_dir,
                                                                          tmp_path):
    from safetensors.torch import load_file

    from training.simcse import main

    def run(out: Path, *extra: str) -> int:  # epochs=1 (no max_steps): 60 rows, batch 8 -> 8 steps, 3 rounds
        return main([f"text_tower={tiny_st_dir}", f"data={triplets}", f"sts_dir={sts_dir}", f"output={out}",
                     "batch_size=8", "eval_every_steps=3", "lr=1e-3", "checkpoint_every=1", *extra])

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run(whole) == 0
    results = json.loads((whole / "results.json").read_text())
    assert results["mode"] == "supervised" and results["columns"] == ["anchor", "positive", "negative"]
    assert results["train_sentences"] == 60 and results["steps"] == 8
    assert [r["step"] for r in _log(whole) if "eval" in r] == [0, 3, 6, 8]
    card = _card_config(whole / "model")
    assert (card["epochs"], card["max_steps"]) == (1, 0)  # the user's, not the trainer's 3 rounds
    assert run(cut, "stop_after_steps=4") == 0 and not (cut / "results.json").exists()
    assert run(cut, "--resume") == 0
    assert _losses(cut) == pytest.approx(_losses(whole), abs=1e-5) and len(_losses(whole)) == 8
    w1 = load_file(str(whole / "model" / "text" / "model.safetensors"))
    w2 = load_file(str(cut / "model" / "text" / "model.safetensors"))
    assert w1.keys() == w2.keys() and len(w1) > 20
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)


def test_over_long_and_invalid_lines_are_truncated_or_skipped_and_counted(tiny_st_dir, sentences, sts_dir, tmp_path,
                                                                        monkeypatch):
    """A line of 5,000 words and a line of 1 MB train truncated to max_length tokens (every training forward
    sees at most max_length); lines that are not UTF-8 are skipped and counted in results.json."""
    from training import simcse

    words = " ".join((sentences.read_text(encoding="utf-8").split() * 5)[:5000])
    assert len(words.split()) == 5000
    short = sentences.read_text(encoding="utf-8").splitlines()[:40]
    data = tmp_path / "long.txt"
    data.write_bytes("\n".join(short[:20]).encode() + b"\n\xff\xfe\xfd not UTF-8\n" + words.encode() + b"\n"
                     + b"spam " * 200_000 + b"\n" + "\n".join(short[20:]).encode() + b"\ncaf\xe9\n")
    seen, lengths = [], []
    forward, truncate = simcse.SimCSEModel.forward, simcse.SimCSESetup._truncate

    def spy_forward(self, input_ids, attention_mask):
        seen.append(input_ids.shape[1])
        return forward(self, input_ids, attention_mask)

    def spy_truncate(self, ids):
        lengths.append(len(ids))
        return truncate(self, ids)

    monkeypatch.setattr(simcse.SimCSEModel, "forward", spy_forward)
    monkeypatch.setattr(simcse.SimCSESetup, "_truncate", spy_truncate)
    # 42 sentences, batch 8: one epoch is 6 batches (the last holds the two longest), all trained on
    out = tmp_path / "out"
    assert _run("simcse", tiny_st_dir, data, sts_dir, out, "max_length=16", "batch_size=8", "max_steps=6",
                "eval_every_steps=6", "length_buckets=8") == 0
    results = json.loads((out / "results.json").read_text())
    assert results["train_sentences"] == 42 and results["invalid_utf8_lines"] == 2
    assert results["sentences_cut_to_max_chars"] == 2  # both over max(4096, 128 x 16) characters
    # token lists longer than max_length came in (cut by the tokenizer at the tower's own 64), 16 went out
    assert len(seen) == 6 and max(seen) == 16 and max(lengths) == 64
    assert len(_losses(out)) == 6 and all(math.isfinite(x) for x in _losses(out))


def test_torchrun_two_ranks_reproduce_one_process_and_esimcse_finishes(tiny_st_dir, sentences, sts_dir, tmp_path):
    """SimCSE under torchrun (2 gloo processes, 4 sentences each of a global batch of 8) gives the losses and
    weights of one process on the same global batch (dropout off: the two runs draw different masks);
    an ESimCSE torchrun run finishes with a model folder."""
    from safetensors.torch import load_file

    import embedhub

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    common = [f"text_tower={tiny_st_dir}", f"data={sentences}", f"sts_dir={sts_dir}", "batch_size=8", "max_steps=6",
              "eval_every_steps=3", "lr=1e-3", "dropout=0", "threads=1", "queue_size=16"]

    def torchrun(*args: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "training.simcse", *args]
        run = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]

    assert _run("simcse", tiny_st_dir, sentences, sts_dir, tmp_path / "one", *common) == 0
    torchrun("simcse", *common, f"output={tmp_path / 'two'}")
    torchrun("esimcse", *common, "dropout=0.1", f"output={tmp_path / 'esimcse'}")
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two", "esimcse")}
    assert [results[n]["world_size"] for n in ("one", "two", "esimcse")] == [1, 2, 2]
    l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(l1) == len(l2) == 6 and l1 == pytest.approx(l2, abs=1e-5)
    w1 = load_file(str(tmp_path / "one" / "model" / "text" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "model" / "text" / "model.safetensors"))
    assert w1.keys() == w2.keys() and len(w1) > 20
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    texts = [r[5] for r in _rows("sts-test.csv")[:16]]
    trained = embedhub.load(tmp_path / "one" / "model", device="cpu").encode_text(texts, show_progress_bar=False)
    start = embedhub.load(tiny_st_dir, device="cpu").encode_text(texts, show_progress_bar=False)
    moved = float(np.abs(trained - start).max())
    print(f"\ntwo gloo ranks vs one process: max |weight diff| {diff:.2e}, embeddings moved {moved:.2e}")
    assert diff < 1e-5 and moved > 1e-3  # the weights compared are trained ones
    model = embedhub.load(tmp_path / "esimcse" / "model", device="cpu")
    assert model.encode_text(texts, show_progress_bar=False).shape == (16, 32)


def test_sentence_file_streams_every_sentence_once_skips_invalid_utf8_and_shuffles_by_seed_and_epoch(tmp_path):
    from training.data.sentences import SentenceFile

    path = tmp_path / "s.txt"
    lines = [f"sentence number {i}." for i in range(50)]
    text = "\n".join(lines[:20]).encode() + b"\n\xff\xfe not UTF-8\n\n" + "\n".join(lines[20:]).encode() + b"\n"
    path.write_bytes(text)
    data = SentenceFile(path, shuffle_buffer=8)  # a buffer smaller than the file: streamed, not read whole
    assert len(data) == 50 and data.invalid == 1
    e0 = list(data.stream(seed=3, epoch=0))
    assert sorted(e0) == sorted(lines) and e0 != lines
    assert e0 == list(data.stream(seed=3, epoch=0)) and e0 != list(data.stream(seed=3, epoch=1))


def test_the_plots_put_evaluations_against_the_optimiser_step_and_mark_start_and_best(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from training.loop import plot_eval_curve, plot_log

    log = tmp_path / "log.jsonl"
    records = [{"step": 0, "epoch": 0, "eval": {"sts_dev_spearman": 20.0}}]
    for step in range(1, 9):
        records.append({"step": step, "epoch": (step - 1) // 4, "loss": 2.0 / step})
        if step % 4 == 0:
            records.append({"step": step, "epoch": step // 4, "eval": {"sts_dev_spearman": 20.0 + step}})
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    drawn = []
    plot = Axes.plot

    def spy(self, *args, **kwargs):
        drawn.append((list(args[0]), list(args[1]), kwargs.get("label")))
        return plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    assert plot_log(log, tmp_path / "training.png") == tmp_path / "training.png"
    assert drawn[-1][:2] == ([0, 4, 8], [20.0, 24.0, 28.0])  # evaluations at steps, not epochs
    drawn.clear()
    pngs = [tmp_path / "a.png", tmp_path / "b.png"]
    assert plot_eval_curve(log, pngs, "sts_dev_spearman", label="dev", title="t", best_step=8) == pngs
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert drawn == [([0, 4, 8], [20.0, 24.0, 28.0], "dev"), ([0], [20.0], "start: 20.00"),
                     ([8], [28.0], "best: 28.00 (step 8)")]
    assert plot_eval_curve(log, pngs, "missing", label="dev", title="t") == []
