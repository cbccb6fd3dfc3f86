"""embedhub.data: STS-B found in $EMBEDHUB_STSB_DIR, beside the checkout or in the Hugging Face cache, read from the
original csv files and from the Hub copy's parquet files alike, and downloaded once by ``embedhub data stsb``.

The public Hub cannot be reached from tests: the download goes to ``RecordingHub``, a recording double of
``huggingface_hub.snapshot_download`` that serves parquet files built here from the real csv files with the Hub
dataset's schema (sentence1, sentence2, score = STS-B's score / 5)."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
from conftest import RecordingHub, stsb_folder, write_stsb_csv

import embedhub
import embedhub.data as data
from embedhub import DataFileError, DataNotFoundError
from embedhub.cli import main
from embedhub.data import download_stsb, read_stsb, stsb_dir

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

HUB_FILES = {"train": "train", "dev": "validation", "test": "test"}
COUNTS = {"train": 5749, "dev": 1500, "test": 1379}


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory) -> Path:
    """STS-B's csv files: the real ones, or (where only the Hub copy is here) written from its rows."""
    folder = stsb_folder()
    if (folder / "sts-test.csv").is_file():
        return folder
    return write_stsb_csv(tmp_path_factory.mktemp("stsb_csv"))


@pytest.fixture(scope="module")
def remote(csv_folder, tmp_path_factory) -> Path:
    """The Hub dataset's files, built from the csv files with the csv module (not with embedhub.data)."""
    root = tmp_path_factory.mktemp("hub_stsb")
    (root / "data").mkdir()
    for split, name in HUB_FILES.items():
        with open(csv_folder / f"sts-{split}.csv", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        table = pa.table({"sentence1": [r[5] for r in rows], "sentence2": [r[6] for r in rows],
                          "score": pa.array([float(r[4]) / 5 for r in rows], pa.float64())})
        pq.write_table(table, root / "data" / f"{name}-00000-of-00001.parquet")
    (root / "README.md").write_text("not asked for\n")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, the variables set as a user would; no STS-B folder configured."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("EMBEDHUB_STSB_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hub"


@pytest.fixture
def hub(remote, cache, monkeypatch) -> RecordingHub:
    import huggingface_hub

    recording = RecordingHub(remote, cache, sha="e" * 40, repo="sentence-transformers--stsb", kind="datasets")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording)
    monkeypatch.setattr(data, "_hub_reachable", lambda: None)  # the double stands for the Hub's endpoint too
    return recording


def _close(a: list[tuple[str, str, float]], b: list[tuple[str, str, float]]) -> bool:
    return [r[:2] for r in a] == [r[:2] for r in b] and all(math.isclose(x[2], y[2], abs_tol=1e-6)
                                                            for x, y in zip(a, b))


def test_the_csv_files_read_as_pairs_and_0_to_5_scores(csv_folder):
    for split, n in COUNTS.items():
        rows = read_stsb(split, folder=csv_folder)
        assert len(rows) == n
        assert all(isinstance(a, str) and isinstance(b, str) and 0 <= s <= 5 for a, b, s in rows)
    first = read_stsb("test", folder=csv_folder)[0]
    with open(csv_folder / "sts-test.csv", encoding="utf-8") as f:
        row = next(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert first == (row[5], row[6], float(row[4]))


def test_download_fetches_the_three_files_once_and_reads_as_the_csv_files(hub, cache, csv_folder, capsys):
    folder = download_stsb()
    assert folder == hub.snapshot and folder.is_relative_to(cache)
    assert hub.calls == [[f"data/{name}-00000-of-00001.parquet" for name in HUB_FILES.values()]]
    assert hub.served == {f"data/{name}-00000-of-00001.parquet" for name in HUB_FILES.values()}
    assert download_stsb() == folder and len(hub.calls) == 1  # found in the cache: no second download
    for split in COUNTS:
        assert _close(read_stsb(split, folder=folder), read_stsb(split, folder=csv_folder)), split

    assert main(["data", "stsb"]) == 0 and len(hub.calls) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == str(stsb_dir())
    assert "train 5749, dev 1500, test 1379" in out


def test_stsb_dir_looks_in_the_variable_then_beside_the_checkout_then_the_cache(hub, cache, csv_folder, tmp_path,
                                                                                monkeypatch, capsys):
    beside = data._beside_checkout()
    if (beside / "sts-test.csv").is_file():
        assert stsb_dir() == beside
    monkeypatch.setattr(data, "_beside_checkout", lambda: tmp_path / "nothing")
    with pytest.raises(DataNotFoundError, match="run `embedhub data stsb`") as exc:
        stsb_dir()
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, embedhub.EmbedhubError)
    assert main(["data", "stsb", "--print"]) == 1 and hub.calls == []
    folder = download_stsb()
    assert stsb_dir() == folder
    capsys.readouterr()
    assert main(["data", "stsb", "--print"]) == 0 and capsys.readouterr().out == f"{folder}\n"
    assert _close(read_stsb("dev"), read_stsb("dev", folder=csv_folder))
    monkeypatch.setenv("EMBEDHUB_STSB_DIR", str(csv_folder))
    assert stsb_dir() == csv_folder


def test_a_wrong_variable_is_an_error_naming_it_not_a_fall_through(csv_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMBEDHUB_STSB_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataNotFoundError, match="EMBEDHUB_STSB_DIR=.*absent.* is not a folder"):
        stsb_dir()
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "sts-train.csv").write_bytes((csv_folder / "sts-train.csv").read_bytes())
    monkeypatch.setenv("EMBEDHUB_STSB_DIR", str(partial))
    with pytest.raises(DataNotFoundError, match="sts-dev.csv, sts-test.csv not found in that folder"):
        stsb_dir()
    assert main(["data", "stsb"]) == 1
    assert "EMBEDHUB_STSB_DIR" in capsys.readouterr().err


GOOD = "g\tf\t2012\t0001\t{score}\tA man plays.\tA man is playing.\n"


@pytest.mark.parametrize("content, message", [
    (GOOD.format(score="2.5") + "g\tf\t2012\t0002\t3.0\tonly six fields\n", r"row 2: expected at least 7"),
    (GOOD.format(score="nan"), r"row 1: score 'nan' is not a number in 0\.\.5"),
    (GOOD.format(score="inf"), r"row 1: score 'inf' is not a number"),
    (GOOD.format(score="5.5"), r"row 1: score '5\.5' is not a number in 0\.\.5"),
    (GOOD.format(score="high"), r"row 1: score 'high'"),
    (GOOD.format(score="1") + GOOD.format(score="1").replace("A man plays.", " "), r"row 2: sentence1 is ' '"),
    (b"", r"no rows"),
])
def test_a_malformed_csv_is_an_error_naming_the_file_and_row(content, message, tmp_path):
    path = tmp_path / "sts-test.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataFileError, match=message) as exc:
        read_stsb("test", folder=tmp_path)
    assert exc.value.path == path and str(path) in str(exc.value)


def test_not_utf8_oversized_and_a_missing_split_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "sts-dev.csv"
    path.write_bytes(GOOD.format(score="1").encode() + b"g\tf\t2012\t2\t1\tcaf\xe9\tx\n")
    with pytest.raises(DataFileError, match=r"sts-dev.csv, row 2: not UTF-8") as exc:
        read_stsb("dev", folder=tmp_path)
    assert exc.value.row == 2
    monkeypatch.setattr(data, "MAX_FILE_BYTES", 10)
    with pytest.raises(DataFileError, match=r"sts-dev.csv: \d+ bytes, more than the 10"):
        read_stsb("dev", folder=tmp_path)
    with pytest.raises(DataNotFoundError, match=r"train split is not in .*run `embedhub data stsb`"):
        read_stsb("train", folder=tmp_path)
    with pytest.raises(embedhub.ArgumentError, match="split='validation': expected one of train, dev, test"):
        read_stsb("validation", folder=tmp_path)


@pytest.mark.parametrize("table, message", [
    ({"sentence1": ["a"], "sentence2": ["b"]}, "column.s. score missing"),
    ({"sentence1": ["a"], "sentence2": ["b"], "score": [1.2]}, r"row 1: score 1\.2 is not a number in 0\.\.1"),
    ({"sentence1": ["a", "c"], "sentence2": ["b", "d"], "score": [0.5, float("nan")]}, "row 2: score nan"),
    ({"sentence1": ["a", "c"], "sentence2": ["b", None], "score": [0.5, 0.5]}, "row 2: sentence2 is None"),
    ({"sentence1": [1], "sentence2": ["b"], "score": [0.5]}, "column sentence1 is int64, expected strings"),
])
def test_a_malformed_parquet_file_is_an_error_naming_the_file_and_row(table, message, tmp_path):
    path = tmp_path / "data" / "validation-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table(table), path)
    with pytest.raises(DataFileError, match=message) as exc:
        read_stsb("dev", folder=tmp_path)
    assert exc.value.path == path
    path.write_bytes(b"PAR1 not parquet")
    with pytest.raises(DataFileError, match="not a readable parquet file"):
        read_stsb("dev", folder=tmp_path)


def test_offline_with_no_copy_the_command_fails_at_once_naming_the_command(cache, tmp_path, monkeypatch, capsys):
    # no double here: huggingface_hub's own offline mode, and the real connection attempt (no route from tests)
    monkeypatch.setattr(data, "_beside_checkout", lambda: tmp_path / "nothing")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match=r"run `embedhub data stsb`.*HF_HUB_OFFLINE=1"):
        download_stsb()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    assert main(["data", "stsb"]) == 1
    err = capsys.readouterr().err
    assert "STS-B not found: run `embedhub data stsb`" in err and "cannot be reached" in err
    assert not list(cache.rglob("*.parquet"))


def test_the_hub_copy_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "data" / "test-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"sentence1": ["a"], "sentence2": ["b"], "score": [0.5]}), path)
    assert read_stsb("test", folder=tmp_path) == [("a", "b", 2.5)]
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as when it is not installed: import raises ImportError
    with pytest.raises(embedhub.MissingDependencyError, match=r"pip install 'embedhub\[parquet\]'"):
        read_stsb("test", folder=tmp_path)


def test_a_cut_copy_is_refused_where_stsb_is_found_and_by_the_command(csv_folder, tmp_path, monkeypatch, capsys):
    """A copy cut at a line boundary (dev: 700 of 1500 rows) reads without any malformed row, so the row count is
    what shows it: read_stsb of the found STS-B and `embedhub data stsb` refuse it; an explicit folder
    may hold a subset (the recipes' tests use one)."""
    from embedhub.cli import main

    cut = tmp_path / "cut"
    cut.mkdir()
    for split in ("train", "test"):
        (cut / f"sts-{split}.csv").write_bytes((csv_folder / f"sts-{split}.csv").read_bytes())
    lines = (csv_folder / "sts-dev.csv").read_bytes().splitlines(keepends=True)
    (cut / "sts-dev.csv").write_bytes(b"".join(lines[:700]))
    assert len(read_stsb("dev", folder=cut)) == 700
    monkeypatch.setenv("EMBEDHUB_STSB_DIR", str(cut))
    with pytest.raises(DataFileError, match="700 rows, where STS-B's dev split has 1500"):
        read_stsb("dev")
    assert len(read_stsb("test")) == 1379
    assert main(["data", "stsb"]) != 0
    assert "700 rows, where STS-B's dev split has 1500" in capsys.readouterr().err


def test_a_long_field_and_a_parquet_bomb_are_errors_naming_the_file(tmp_path):
    (tmp_path / "sts-dev.csv").write_text("g\tf\t2012\t1\t3.0\t" + "a" * 200_000 + "\tb\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"sts-dev\.csv, row 1: not an STS-B row"):
        read_stsb("dev", folder=tmp_path)
    (tmp_path / "data").mkdir()
    bomb = tmp_path / "data" / "test-00000-of-00001.parquet"  # a few KB on disk, 100 MB of text decoded
    pq.write_table(pa.table({"sentence1": [str(i) + "a" * 10_000_000 for i in range(10)], "sentence2": ["b"] * 10,
                             "score": pa.array([0.5] * 10, pa.float64())}), bomb, compression="zstd")
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(DataFileError, match="decodes to .* bytes, more than"):
        read_stsb("test", folder=tmp_path)
