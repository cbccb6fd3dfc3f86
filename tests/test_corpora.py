"""training/corpora.py: real unlabelled sentences from STS-B train, WordNet and fortunes, written as the
sentence recipes' input."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import stsb_folder, stsb_rows

from training.corpora import FORTUNES, WORDNET, fortunes, main, stsb_sentences, unique, wordnet_examples, write_corpus
from training.errors import DataError, MissingDataError


def _need(path: Path, package: str) -> None:
    if not path.exists():
        pytest.skip(f"{path} not here (apt-get install {package})")


def test_stsb_gives_both_sentences_of_every_train_row_without_the_scores():
    rows = stsb_rows("train")
    got = list(stsb_sentences())
    assert got == [s for row in rows for s in row[:2]] == list(stsb_sentences(stsb_folder()))
    assert len(got) == 2 * len(rows) == 2 * 5749


def test_wordnet_and_fortunes_give_real_sentences_without_markup():
    _need(WORDNET / "data.noun", "wordnet-base")
    _need(FORTUNES / "fortunes", "fortunes")
    examples = list(unique(wordnet_examples()))
    assert len(examples) > 40_000
    assert not any('"' in s or " | " in s for s in examples)
    entries = list(fortunes(max_words=60))
    assert len(entries) > 10_000
    assert not any(s == "%" or "\n" in s or len(s.split()) > 60 for s in entries)
    assert len(list(fortunes(max_words=10))) < len(entries)


def test_write_corpus_writes_each_sentence_once_and_refuses_unknown_sources(tmp_path, capsys):
    stsb_folder()  # skips when STS-B is absent
    out = tmp_path / "sub" / "stsb.txt"
    n = write_corpus(["stsb", "stsb"], out)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert n == len(lines) == len({s.lower() for s in lines}) > 10_000
    assert set(lines) <= {" ".join(s.split()) for s in stsb_sentences()}
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(DataError, match=r"unknown sentence source\(s\) \['news'\]"):
        write_corpus(["stsb", "news"], tmp_path / "x.txt")
    assert not (tmp_path / "x.txt").exists()
    with pytest.raises(SystemExit) as exc:
        main(["nope", str(tmp_path / "y.txt")])
    assert exc.value.code == 2 and "unknown sentence source" in capsys.readouterr().err


def test_a_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(MissingDataError, match=r"sts-train.csv: STS-B's train split is not in .*`embedhub data stsb`"):
        list(stsb_sentences(tmp_path))
    (tmp_path / "sts-train.csv").write_text("g\tf\t2012\t1\t2.5\tA man plays.\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"sts-train.csv, row 1: expected at least 7 tab-separated fields"):
        list(stsb_sentences(tmp_path))
    with pytest.raises(DataError, match="data.noun not found: apt-get install wordnet-base"):
        list(wordnet_examples(tmp_path))
    with pytest.raises(DataError, match="no fortune files: apt-get install fortunes"):
        list(fortunes(tmp_path))
