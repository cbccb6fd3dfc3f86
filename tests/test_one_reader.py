"""One corpus reader: ``embedhub encode``, ``embedhub search`` and ``embedhub embed`` accept the same inputs.

Every input kind is written as a small real file (or folder, or glob) and run through the three commands
in-process (``embedhub.cli.main``) with tiny real models (conftest's ``tiny_st_dir`` for text,
``tiny_embedhub_dir`` for images): ``encode``'s rows equal ``embed``'s rows (same items, same order), and
``search`` finds an item of the corpus as its top hit (image corpora: ``search`` reads them and refuses them
as not text, naming the same item count). Bad rows are named the same way by every command.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

import embedhub
from embedhub.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

TEXTS = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs are running through a snowy field.",
    "The stock market fell sharply on Monday.",
    "A child is riding a bicycle down the street.",
]


def _lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _txt(root: Path) -> tuple[str, list[str]]:
    _lines(root / "c.txt", TEXTS[:2] + ["", "  "] + TEXTS[2:])
    return str(root / "c.txt"), []


def _jsonl(root: Path) -> tuple[str, list[str]]:
    _lines(root / "c.jsonl", [json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS)])
    return str(root / "c.jsonl"), ["--field", "body"]


def _tsv(root: Path) -> tuple[str, list[str]]:
    _lines(root / "c.tsv", [f"{i}\t{t}" for i, t in enumerate(TEXTS)])
    return str(root / "c.tsv"), ["--column", "1"]


def _csv(root: Path) -> tuple[str, list[str]]:
    texts = [f'"{t}"' if "," in t else t for t in TEXTS[:-1]] + ['"A child is riding,\na bicycle."']
    _lines(root / "c.csv", [f"{i},{t}" for i, t in enumerate(texts)])
    return str(root / "c.csv"), ["--column", "1"]


def _parquet(root: Path) -> tuple[str, list[str]]:
    pq.write_table(pa.table({"n": list(range(len(TEXTS))), "text": TEXTS}), root / "c.parquet", row_group_size=2)
    return str(root / "c.parquet"), ["--text-column", "text"]


def _txt_glob(root: Path) -> tuple[str, list[str]]:
    _lines(root / "part-0.txt", TEXTS[:3])
    _lines(root / "part-1.txt", TEXTS[3:])
    return str(root / "part-*.txt"), []


TEXT_KINDS = {"txt": _txt, "jsonl": _jsonl, "tsv": _tsv, "csv": _csv, "parquet": _parquet, "glob": _txt_glob}


def _image_bytes(i: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (20 + 3 * i, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path) -> tuple[str, list[str]]:
    (root / "imgs" / "sub").mkdir(parents=True)
    for i, rel in enumerate(["b.png", "a.png", "sub/c.png", "sub/a.png"]):
        (root / "imgs" / rel).write_bytes(_image_bytes(i))
    (root / "imgs" / "notes.txt").write_text("not an image")
    return str(root / "imgs"), []


def _image_list(root: Path) -> list[str]:
    (root / "pics").mkdir()
    names = [f"pics/p{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        (root / name).write_bytes(_image_bytes(i))
    return names[::-1]


def _image_jsonl(root: Path) -> tuple[str, list[str]]:
    _lines(root / "images.jsonl", [json.dumps({"image": name}) for name in _image_list(root)])
    return str(root / "images.jsonl"), ["--field", "image"]


def _image_parquet(root: Path) -> tuple[str, list[str]]:
    pq.write_table(pa.table({"image": _image_list(root)}), root / "images.parquet")
    return str(root / "images.parquet"), ["--text-column", "image"]


def _tar(root: Path, name: str, first: int, n: int) -> None:
    with tarfile.open(root / name, "w") as tar:
        for i in range(first, first + n):
            for ext, data in (("png", _image_bytes(i)), ("txt", f"image {i}".encode())):
                info = tarfile.TarInfo(f"s/{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _tars(root: Path) -> tuple[str, list[str]]:
    _tar(root, "shard-0.tar", 0, 3)
    _tar(root, "shard-1.tar", 3, 2)
    return str(root / "shard-*.tar"), []


IMAGE_KINDS = {"folder": _folder, "jsonl-image": _image_jsonl, "parquet-image": _image_parquet, "tar-glob": _tars}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _encode_and_embed(capsys, tmp_path: Path, model: Path, spec: str, flags: list[str]) -> tuple[np.ndarray, object]:
    """``encode`` to .npy and ``embed`` (2-row shards, so several) of the same input; both must succeed."""
    npy, job = tmp_path / "enc.npy", tmp_path / "job"
    code, _, err = _run(capsys, "encode", "--model", str(model), "--device", "cpu", "--input", spec,
                        "--output", str(npy), "--batch-size", "2", *flags)
    assert code == 0, err
    code, _, err = _run(capsys, "embed", "--model", str(model), "--device", "cpu", "--input", spec,
                        "--output", str(job), "--shard-rows", "2", "--workers", "1", *flags)
    assert code == 0, err
    return np.load(npy), embedhub.read_embeddings(job)


@pytest.mark.parametrize("kind", sorted(TEXT_KINDS))
def test_text_input_reads_the_same_in_all_three_commands(kind, tmp_path, capsys, tiny_st_dir):
    spec, flags = TEXT_KINDS[kind](tmp_path)
    encoded, embedded = _encode_and_embed(capsys, tmp_path, tiny_st_dir, spec, flags)
    assert encoded.shape[0] == len(TEXTS) and not np.allclose(encoded[0], encoded[1])
    assert np.asarray(embedded.ids).tolist() == list(range(len(TEXTS)))  # row numbers
    np.testing.assert_allclose(embedded.embeddings, encoded, atol=1e-5, rtol=0)
    # search reads the same corpus: an item searched for is its own top hit
    code, out, err = _run(capsys, "search", "--model", str(tiny_st_dir), "--device", "cpu", "--corpus", spec,
                          "--query", TEXTS[2], "--top-k", "2", *flags)
    assert code == 0, err
    hits = [line.split(None, 1) for line in out.splitlines()[1:]]
    assert hits[0][1] == TEXTS[2] and float(hits[0][0]) == pytest.approx(1.0, abs=1e-4)
    assert f"searched {len(TEXTS)} texts" in err


def test_every_text_kind_reads_the_same_items(tmp_path, capsys, tiny_st_dir):
    """The six text inputs hold the same texts (the csv's last one aside): encode gives the same rows."""
    rows = {}
    for kind, write in TEXT_KINDS.items():
        root = tmp_path / kind
        root.mkdir()
        spec, flags = write(root)
        code, _, err = _run(capsys, "encode", "--model", str(tiny_st_dir), "--device", "cpu", "--input", spec,
                            "--output", str(root / "e.npy"), *flags)
        assert code == 0, err
        rows[kind] = np.load(root / "e.npy")
    for kind, emb in rows.items():
        n = len(TEXTS) - 1 if kind == "csv" else len(TEXTS)
        np.testing.assert_allclose(emb[:n], rows["txt"][:n], atol=1e-5, rtol=0, err_msg=kind)
    assert not np.allclose(rows["csv"][-1], rows["txt"][-1], atol=1e-3)  # the quoted field over two lines


@pytest.mark.parametrize("kind", sorted(IMAGE_KINDS))
def test_image_input_reads_the_same_in_all_three_commands(kind, tmp_path, capsys, tiny_embedhub_dir):
    spec, flags = IMAGE_KINDS[kind](tmp_path)
    encoded, embedded = _encode_and_embed(capsys, tmp_path, tiny_embedhub_dir, spec, flags)
    assert encoded.shape[0] == (5 if kind == "tar-glob" else 4)
    assert len(set(map(bytes, np.round(encoded, 4)))) == encoded.shape[0]  # distinct images
    np.testing.assert_allclose(embedded.embeddings, encoded, atol=1e-4, rtol=0)
    ids = np.asarray(embedded.ids).tolist()
    if kind == "folder":  # ids: relative paths, in the order encode read them
        assert ids == ["a.png", "b.png", "sub/a.png", "sub/c.png"]
    elif kind == "tar-glob":  # ids: the sample keys
        assert ids == [f"s/{i:03d}" for i in range(5)]
    else:
        assert ids == [0, 1, 2, 3]
    code, out, err = _run(capsys, "search", "--model", str(tiny_embedhub_dir), "--corpus", spec, "--query", "a cat",
                          *flags)
    assert code == 2 and out == ""
    assert f"read {encoded.shape[0]} images" in err and "search needs a text corpus" in err


# ---------------------------------------------------------------------------------------------- bad rows
def _bad_jsonl(root: Path) -> tuple[str, list[str], str, object]:
    _lines(root / "b.jsonl", [json.dumps({"text": "fine"}), json.dumps({"text": None}), json.dumps({"text": "ok"})])
    return str(root / "b.jsonl"), [], "b.jsonl line 2: field 'text' must be a non-empty string (text is null)", 1


def _bad_csv(root: Path) -> tuple[str, list[str], str, object]:
    _lines(root / "b.csv", ["a,fine", "b,", "c,ok"])
    message = "b.csv line 2: column 1 must be a non-empty string (text is empty)"
    return str(root / "b.csv"), ["--column", "1"], message, 1


def _bad_parquet(root: Path) -> tuple[str, list[str], str, object]:
    pq.write_table(pa.table({"text": ["fine", None, "ok"]}), root / "b.parquet")
    return str(root / "b.parquet"), [], "b.parquet row 1: column 'text' must be a non-empty string (text is null)", 1


def _bad_image_jsonl(root: Path) -> tuple[str, list[str], str, object]:
    (root / "a.png").write_bytes(_image_bytes(0))
    _lines(root / "b.jsonl", [json.dumps({"image": "a.png"}), json.dumps({"image": "gone.png"})])
    return str(root / "b.jsonl"), ["--field", "image"], f"b.jsonl line 2: image file {root / 'gone.png'} not found", 1


def _bad_tar(root: Path) -> tuple[str, list[str], str, object]:
    _tar(root, "b.tar", 0, 1)
    with tarfile.open(root / "b.tar", "a") as tar:
        info = tarfile.TarInfo("s/caption-only.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"none"))
    return str(root / "b.tar"), [], "b.tar sample s/caption-only: no image member (txt)", "s/caption-only"


BAD = {"jsonl": _bad_jsonl, "csv": _bad_csv, "parquet": _bad_parquet, "jsonl-image": _bad_image_jsonl,
       "tar": _bad_tar}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_row_is_named_the_same_by_every_command(kind, tmp_path, capsys, tiny_embedhub_dir):
    """encode and search stop at it (exit 2, before loading the model); embed lists it and embeds the rest,
    or with --on-error fail stops naming it."""
    spec, flags, message, bad_id = BAD[kind](tmp_path)
    code, _, err = _run(capsys, "encode", "--model", str(tiny_embedhub_dir), "--input", spec,
                        "--output", str(tmp_path / "o.npy"), *flags)
    assert code == 2 and message in err and "loaded" not in err, err
    if "image" not in kind and kind != "tar":
        code, _, err = _run(capsys, "search", "--model", str(tiny_embedhub_dir), "--corpus", spec, "--query", "q",
                            *flags)
        assert code == 2 and message in err and "loaded" not in err, err
    result = embedhub.embed_corpus(tiny_embedhub_dir, spec, tmp_path / "job", progress=False, workers=1,
                                   text_column="image" if "image" in kind else "text",
                                   column=1 if kind == "csv" else 0)
    (listed,) = [json.loads(line) for line in result.errors_file.read_text().splitlines()]
    assert listed["id"] == bad_id and listed["reason"] in message
    assert result.errors == 1 and len(embedhub.read_embeddings(result.output)) == result.rows >= 1
    code, _, err = _run(capsys, "embed", "--model", str(tiny_embedhub_dir), "--input", spec, "--output",
                        str(tmp_path / "job2"), "--on-error", "fail", "--workers", "1", *flags)
    assert code == 2 and listed["reason"] in err, err


def test_the_same_input_errors_in_every_command(tmp_path, capsys, tiny_st_dir):
    """A file that cannot be read as a whole is refused by the three commands with one message."""
    bad = _lines(tmp_path / "bad.jsonl", [json.dumps({"text": "a"}), json.dumps({"body": "b"})])
    empty = _lines(tmp_path / "empty.txt", ["", "  "])
    other = _lines(tmp_path / "data.docx", ["hello"])
    for spec, message in ((bad, f"{bad} line 2: no text field 'text' (fields: body)"),
                          (empty, f"input {empty}: no rows to embed (no inputs"),
                          (other, f"input {other}: unknown input extension '.docx'")):
        for argv in (["encode", "--input", str(spec), "--output", str(tmp_path / "o.npy")],
                     ["search", "--corpus", str(spec), "--query", "q"],
                     ["embed", "--input", str(spec), "--output", str(tmp_path / "job")]):
            code, _, err = _run(capsys, *argv, "--model", str(tiny_st_dir))
            assert code == 2 and message in err, (argv, err)


@pytest.mark.parametrize("ending", [b"\r", b"\r\n", b"\n", b"mixed"])
@pytest.mark.parametrize("kind", ["txt", "csv", "jsonl"])
def test_every_line_ending_splits_rows_the_same(kind, ending, tmp_path):
    """Lines end in LF, CRLF or a lone CR (old Mac files), as a text-mode read splits them: a file with CR
    endings is never read as one merged row, in memory (encode, search) or in streamed chunks (embed)."""
    from embedhub.jobs import read_corpus
    from embedhub.jobs.corpus import plan_corpus, read_chunk

    texts = [f"row {i} text" for i in range(7)]
    lines = [t.encode() if kind == "txt" else f"{i},{t}".encode() if kind == "csv" else
             json.dumps({"text": t}).encode() for i, t in enumerate(texts)]
    ends = [b"\r", b"\r\n", b"\n"] * 3 if ending == b"mixed" else [ending] * 7
    path = tmp_path / f"corpus.{kind}"
    path.write_bytes(b"".join(line + end for line, end in zip(lines, ends)))
    column = {"column": 1} if kind == "csv" else {}
    assert read_corpus(path, **column).items == texts
    plan = plan_corpus(path, shard_rows=3, **column)
    streamed = [item for chunk in plan.chunks for item in read_chunk(chunk, **column).items]
    assert streamed == texts


def test_a_long_file_of_cr_lines_is_read_past_the_line_bound(tmp_path, monkeypatch):
    """A file whose lines end in lone CRs has no LF to stop a bounded read: it is read on after the last CR."""
    from embedhub.jobs import corpus

    monkeypatch.setattr(corpus, "MAX_JSONL_LINE", 64)
    texts = [f"line number {i:03d}" for i in range(40)]  # 40 x 16 bytes, far over the 64-byte bound
    path = tmp_path / "cr.txt"
    path.write_bytes(b"\r".join(t.encode() for t in texts))
    assert corpus.read_corpus(path).items == texts
    (tmp_path / "one.txt").write_bytes(b"x" * 100)
    with pytest.raises(embedhub.CorpusError, match="longer than 64 bytes"):
        corpus.read_corpus(tmp_path / "one.txt")


def test_a_fifo_is_refused_as_not_a_regular_file(tmp_path, capsys, tiny_st_dir):
    import os

    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    for argv in (["encode", "--input", str(fifo), "--output", str(tmp_path / "e.npy")],
                 ["search", "--corpus", str(fifo), "--query", "x"],
                 ["embed", "--input", str(fifo), "--output", str(tmp_path / "job")]):
        assert main([argv[0], "--model", str(tiny_st_dir), *argv[1:]]) == 2
        assert "not a regular file (a FIFO" in capsys.readouterr().err
