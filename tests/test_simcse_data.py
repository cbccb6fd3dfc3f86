"""The sentence recipes' input (training/sentences.py) on real STS-B sentences: .csv/.jsonl/.parquet files
of (anchor, positive[, negative]) rows are supervised, files of sentences unsupervised; parquet is read in
record batches, never whole; null, empty and invalid UTF-8 rows are skipped and counted; a bad row or a
missing column is a DataError naming the file, the line or row and the field; a line without end is read
in bounded chunks; the config accepts .csv/.parquet and refuses pairs for ESimCSE."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

import pytest
from conftest import stsb_rows

from training.config import ESimCSEConfig, SimCSEConfig
from training.data.sentences import SentenceFile, data_mode
from training.errors import ConfigValueError, DataError
from training.recipe import load_config

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def triplets() -> list[tuple[str, str, str]]:
    """Real STS-B train rows: (sentence 1, sentence 2 of a pair scored >= 4, a sentence of a pair scored <= 1)."""
    rows = stsb_rows("train")
    close = [(a, b) for a, b, score in rows if score >= 4][:60]
    far = [a for a, _, score in rows if score <= 1][:60]
    return [(a, p, n) for (a, p), n in zip(close, far)]


def _all(data: SentenceFile) -> list:
    return sorted(data.stream(seed=0, epoch=0))


def test_csv_rows_with_quoted_commas_and_newlines_are_supervised_triplets(triplets, tmp_path):
    path = tmp_path / "nli.csv"
    tricky = ("a man, smiling, plays\n a guitar", 'he plays "music"', "nobody, anywhere")
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["negative", "anchor", "positive"])  # any column order
        for a, p, n in [*triplets, tricky]:
            w.writerow([n, a, p])
    data = SentenceFile(path)
    assert data.mode == "supervised" and data.columns == ("anchor", "positive", "negative")
    assert len(data) == len(triplets) + 1 and data.invalid == data.empty == 0
    assert _all(data) == sorted([(a.strip(), p.strip(), n.strip()) for a, p, n in [*triplets, tricky]])
    assert data_mode(path) == "supervised"
    # a file of pairs, with a byte-order mark as spreadsheets write it
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(b"\xef\xbb\xbfanchor,positive\r\n" + "".join(f'"{a}","{p}"\r\n' for a, p, _ in triplets)
                      .encode())
    data = SentenceFile(pairs)
    assert data.columns == ("anchor", "positive") and _all(data) == sorted((a, p) for a, p, _ in triplets)
    # a csv of sentences: its text_column makes it unsupervised
    sentences = tmp_path / "sentences.csv"
    sentences.write_text("id,sentence\n" + "".join(f'{i},"{a}"\n' for i, (a, _, _) in enumerate(triplets)))
    data = SentenceFile(sentences, text_column="sentence")
    assert data.mode == "unsupervised" and _all(data) == sorted(a for a, _, _ in triplets)


def test_jsonl_pairs_are_supervised_and_jsonl_sentences_stay_unsupervised(triplets, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"anchor": a, "positive": p, "score": 5}) + "\n" for a, p, _ in triplets))
    data = SentenceFile(pairs)
    assert data.mode == "supervised" and data.columns == ("anchor", "positive") and len(data) == len(triplets)
    assert _all(data) == sorted((a, p) for a, p, _ in triplets)
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": a, "anchor": "ignored"}) + "\n" for a, _, _ in triplets))
    data = SentenceFile(texts)
    assert data.mode == "unsupervised" and _all(data) == sorted(a for a, _, _ in triplets)


def test_parquet_is_read_in_record_batches_never_whole(triplets, tmp_path, monkeypatch):
    path = tmp_path / "rows.parquet"
    cols = list(zip(*triplets))
    table = pa.table({"anchor": list(cols[0]), "positive": list(cols[1]), "negative": list(cols[2]),
                      "sentence": list(cols[0])})
    pq.write_table(table, path, row_group_size=16)

    def whole(*args, **kwargs):
        raise AssertionError("the parquet file was read whole")

    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    calls = []
    iter_batches = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return iter_batches(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    data = SentenceFile(path)
    assert data.mode == "supervised" and data.columns == ("anchor", "positive", "negative")
    assert _all(data) == sorted(triplets)
    assert calls and all(c["batch_size"] <= 1024 and set(c["columns"]) == set(data.columns) for c in calls)
    data = SentenceFile(path, text_column="sentence")  # the text column, when the file has it, is sentences
    assert data.mode == "unsupervised" and _all(data) == sorted(cols[0])


def test_null_empty_and_invalid_utf8_rows_are_skipped_and_counted(triplets, tmp_path):
    good = triplets[:5]
    # parquet: nulls and blanks in any column, bytes that are not UTF-8 in a binary column
    anchors = [a.encode() for a, _, _ in good] + [None, b"  ", b"\xff\xfe bad", b"fine anchor"]
    positives = [p for _, p, _ in good] + ["x", "y", "z", None]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"anchor": pa.array(anchors, pa.binary()), "positive": positives}), path)
    data = SentenceFile(path)
    assert len(data) == 5 and data.empty == 3 and data.invalid == 1
    assert _all(data) == sorted((a, p) for a, p, _ in good)
    # csv: an empty value and a row that is not UTF-8 (in a quoted field spanning two lines)
    path = tmp_path / "rows.csv"
    body = "".join(f'"{a}","{p}"\n' for a, p, _ in good).encode()
    path.write_bytes(b"anchor,positive\n" + body + b'"",x\n"caf\xe9\nbar",y\n')
    data = SentenceFile(path)
    assert len(data) == 5 and data.empty == 1 and data.invalid == 1
    # jsonl: null and blank values, a line that is not UTF-8
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"anchor": a, "positive": p}).encode() for a, p, _ in good]
    lines += [b'{"anchor": null, "positive": "x"}', b'{"anchor": "a", "positive": " "}', b'{"anchor": "\xff"}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    data = SentenceFile(path)
    assert len(data) == 5 and data.empty == 2 and data.invalid == 1
    # a parquet column of sentences with nulls and blanks
    path = tmp_path / "sentences.parquet"
    pq.write_table(pa.table({"text": [a for a, _, _ in good] + [None, "", "  "]}), path)
    data = SentenceFile(path)
    assert len(data) == 5 and data.empty == 3 and _all(data) == sorted(a for a, _, _ in good)


BAD = [
    ("rows.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c"}\n', "line 2: no 'positive' field"),
    ("rows.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": 3}\n',
     "line 2: field 'positive' is int"),
    ("rows.jsonl", '{"anchor": "a", "positive": "b", "negative": "c"}\n{"anchor": "a", "positive": "b", '
     '"negative": "c"}\n{"anchor": "d", "positive": "e"}\n', "line 3: no 'negative' field (the first row has one"),
    ("rows.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": "d", "negative": "e"}\n',
     "line 2: a 'negative' field, but the first row has none"),
    ("rows.jsonl", '{"anchor": "a", "positive": "b"}\n["c", "d"]\n', "line 2: expected an object with string fields"),
    ("rows.jsonl", '{"anchor": "a", "positive": "b"}\n{"anchor": "c",\n', "line 2: not valid JSON"),
    ("rows.jsonl", '{"anchor": "a"}\n', "no column 'positive' for the 'anchor' column"),
    ("rows.csv", "anchor,positive,negative\na,b,c\nd,e\n", "row 2 (line 3): 2 fields, the header names 3"),
    ("rows.csv", "anchor,positive,negative\na,b,c\nd,e\n", "no value for ['negative']"),
    ("rows.csv", "anchor,negative\na,b\n", "no column 'positive' for the 'anchor' column"),
    ("rows.csv", "sentence,score\na,1\n", "no column 'text' (text_column: sentences) nor 'anchor' and 'positive'"),
    ("rows.csv", "anchor,positive\n" + '"never closed,' + "x" * 200_000 + "\n", "row 1 (line 2): not valid CSV"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD)
def test_a_bad_row_is_an_error_naming_the_file_the_line_and_the_field(name, text, message, tmp_path):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as exc:
        SentenceFile(path)
    assert str(path) in str(exc.value) and message in str(exc.value), str(exc.value)


def test_a_missing_or_non_string_parquet_column_is_an_error_naming_it_and_the_columns_present(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"sentence": ["a", "b"], "score": [1, 2]}), path)
    with pytest.raises(DataError) as exc:
        SentenceFile(path, text_column="body")
    assert str(path) in str(exc.value) and "no column 'body'" in str(exc.value)
    assert "columns present: ['sentence', 'score']" in str(exc.value)
    with pytest.raises(DataError, match="column 'score' is int64, expected strings"):
        SentenceFile(path, text_column="score")
    pq.write_table(pa.table({"anchor": ["a", "b"], "score": [1, 2]}), path)
    with pytest.raises(DataError, match=r"no column 'positive' .*columns present: \['anchor', 'score'\]"):
        SentenceFile(path)
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        SentenceFile(path)


def test_a_line_without_end_is_read_in_bounded_chunks_and_cut(tmp_path):
    """A 24 MB line (3-byte characters, no newline at all) costs the reader a few kB, not the line."""
    path = tmp_path / "s.txt"
    with open(path, "wb") as f:
        f.write(b"a first sentence.\n" + "\u20ac".encode() * 8_000_000)
    tracemalloc.start()
    try:
        data = SentenceFile(path, max_chars=1000)
        rows = list(data.stream(seed=0, epoch=0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sorted(rows) == ["a first sentence.", "\u20ac" * 1000] and data.truncated == 1 and data.invalid == 0
    assert peak < 1_000_000, peak
    # the same in a .jsonl file is an error naming the line (a JSON object cannot be cut)
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a."}\n{"text": "' + "x" * 5000 + '"}\n')
    with pytest.raises(DataError, match=r"s.jsonl, line 2: longer than 4096 bytes \(max_record_bytes\)"):
        SentenceFile(path, max_record_bytes=4096)


def test_the_config_accepts_csv_and_parquet_and_refuses_pairs_for_esimcse(triplets, tmp_path):
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["a", "b"], "positive": ["c", "d"]}), pairs)
    sentences = tmp_path / "s.parquet"
    pq.write_table(pa.table({"body": ["a", "b"]}), sentences)
    stsb_rows("dev")  # skips when STS-B is absent
    sts = "sts_dir="  # STS-B where embedhub.data finds it
    assert load_config(SimCSEConfig, overrides=[f"data={pairs}", sts]).data == str(pairs)
    cfg = load_config(ESimCSEConfig, overrides=[f"data={sentences}", "text_column=body", sts])
    assert cfg.text_column == "body"
    with pytest.raises(ConfigValueError, match="ESimCSE is unsupervised and this file holds"):
        load_config(ESimCSEConfig, overrides=[f"data={pairs}", sts])
    tsv = tmp_path / "s.tsv"
    tsv.write_text("a\tb\n")
    with pytest.raises(ConfigValueError, match=r"data='.*s.tsv': expected a .txt file"):
        load_config(SimCSEConfig, overrides=[f"data={tsv}", sts])
    assert data_mode(Path(tmp_path / "s.parquet"), "body") == "unsupervised"
