"""Command-line hardening (issue 9 items 11, 13, 14, 15), run in-process through ``main([...])``.

- 11: a ``.csv`` quote left open fails naming its line; every input's item and line counts go to stderr.
- 13: a ``--query`` that is not UTF-8 text (argv bytes that are not UTF-8, a lone surrogate) exits 2.
- 14: an invalid Hub name exits 1 with ``ModelNotFoundError`` naming the rule (offline; the public Hub
  cannot be reached here).
- 15: ``--backend`` and ``--threads`` reach ``embedhub.load``; an ONNX-only folder written by
  ``export(..., keep_torch=False)`` from a tiny sentence-transformers model encodes with ``--backend onnx``.

Tests that only check input handling pass a model folder that does not exist: the input summary is
printed before the model loads, so they need no model.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embedhub
from embedhub.cli import main

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _summary(capsys, tmp_path: Path, src: Path, *extra: str) -> str:
    """stderr of ``encode`` with a missing model: the input is read and summarised, then loading fails."""
    code, _, err = run(
        capsys, "encode", "--model", str(tmp_path / "no-model"), "--input", str(src), "--output",
        str(tmp_path / "o.npy"), *extra,
    )
    assert code == 1 and "does not exist" in err, err
    return err


# ------------------------------------------------------------------------------------- item 11: csv
def test_csv_unclosed_quote_fails_naming_its_line(tmp_path, capsys):
    src = tmp_path / "bad.csv"
    src.write_text('alpha,one\nbeta,two\n"gamma, three\ndelta,four\nepsilon,five\n', encoding="utf-8")
    with open(src, newline="", encoding="utf-8") as fh:  # what a lenient reader makes of it: 5 lines, 3 rows
        assert len(list(csv.reader(fh))) == 3
    out = tmp_path / "o.npy"
    code, stdout, err = run(capsys, "encode", "--model", MODEL, "--input", str(src), "--output", str(out))
    assert code == 2, err
    assert f"{src} line 3: a quoted field opens on this line and is never closed" in err
    assert "(lines 3-5)" in err and "'\"gamma, three'" in err
    assert "loaded" not in err and not out.exists() and "Traceback" not in err
    src.write_bytes(b'alpha,one\n"last line, no newline')
    code, _, err = run(capsys, "encode", "--model", MODEL, "--input", str(src), "--output", str(out))
    assert code == 2 and f"{src} line 2: a quoted field opens on this line" in err and "(line 2)" in err


def test_csv_text_after_closing_quote_fails_naming_its_line(tmp_path, capsys):
    src = tmp_path / "bad.csv"
    src.write_text('a,b\n"c"d,e\n', encoding="utf-8")  # a lenient reader returns 'cd'
    code, _, err = run(capsys, "encode", "--model", MODEL, "--input", str(src), "--output", str(tmp_path / "o.npy"))
    assert code == 2 and f"{src} line 2" in err and "',' expected after '\"'" in err and "'\"c\"d,e'" in err


def test_csv_closed_multiline_field_is_kept_and_reported(tmp_path, capsys, minilm):
    src = tmp_path / "ml.csv"
    src.write_text(
        'A man plays a guitar.,x\n"A woman\nslices an onion.",y\n\n"Dogs run, in snow.",z\n', encoding="utf-8"
    )
    out = tmp_path / "o.npy"
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "--device", "cpu", "--input", str(src), "--output", str(out)
    )
    assert code == 0, err
    assert (
        f"embedhub: read 3 texts from 5 lines of {src} "
        "(1 blank line skipped; 1 quoted field spans several lines, starting on line 2)"
    ) in err
    expected = ["A man plays a guitar.", "A woman\nslices an onion.", "Dogs run, in snow."]
    np.testing.assert_allclose(np.load(out), minilm.encode(expected), atol=1e-6)


@pytest.mark.parametrize(
    ("name", "content", "extra", "summary"),
    [
        ("a.txt", "one\n\n  \ntwo\nthree", [], "read 3 texts from 5 lines of {src} (2 blank lines skipped)"),
        ("a.jsonl", '{"text": "one"}\n\n{"text": "two"}\n', [], "read 2 texts from 3 lines of {src} (1 blank line"),
        # tab separated (STS style): quotes are plain characters, a lone one merges nothing
        ("a.csv", 'x\tShe said "no\ny\tok\n', ["--column", "1"], "read 2 texts from 2 lines of {src}"),
        ("a.tsv", "x\tone\n", ["--column", "1"], "read 1 text from 1 line of {src}"),
    ],
)
def test_every_text_input_reports_items_and_lines(tmp_path, capsys, name, content, extra, summary):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    err = _summary(capsys, tmp_path, src, *extra)
    assert "embedhub: " + summary.format(src=src) in err


def test_image_folder_reports_images_and_skipped_files(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(folder / name)
    (folder / "notes.txt").write_text("x")
    err = _summary(capsys, tmp_path, folder)
    assert f"embedhub: read 2 images from folder {folder} (1 other file skipped)" in err


def test_search_reports_the_corpus(tmp_path, capsys):
    src = tmp_path / "c.csv"
    src.write_text('a,"b\nc"\nd,e\n', encoding="utf-8")
    code, _, err = run(
        capsys, "search", "--model", str(tmp_path / "no-model"), "--corpus", str(src), "--column", "1", "--query", "q"
    )
    assert code == 1
    assert f"read 2 texts from 3 lines of {src} (1 quoted field spans several lines, starting on line 1)" in err


# ------------------------------------------------------------------------------ item 13: query text
def test_query_with_lone_surrogate_exit_2_naming_the_query(tmp_path, capsys):
    src = tmp_path / "c.txt"
    src.write_text("one\ntwo\n")
    code, out, err = run(
        capsys, "search", "--model", MODEL, "--corpus", str(src), "--query", "fine", "--query", "bad \ud800 text"
    )
    assert code == 2 and out == ""
    assert "--query 2 of 2 ('bad \\ud800 text') is not valid text" in err
    assert "lone surrogate U+D800 at character 4" in err
    assert "loaded" not in err and "Traceback" not in err


def test_query_with_non_utf8_argv_bytes_exit_2(tmp_path):
    """Bytes that are not UTF-8 on a real command line arrive as surrogate escapes (PEP 383)."""
    if os.name == "nt":
        pytest.skip("Windows command lines are UTF-16, not bytes")
    src = tmp_path / "c.txt"
    src.write_text("one\ntwo\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"}
    argv = [sys.executable, "-m", "embedhub", "search", "--model", MODEL, "--corpus", str(src), "--query"]
    proc = subprocess.run([*argv, b"caf\xe9 latin-1"], capture_output=True, env=env, timeout=300)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "--query ('caf\\udce9 latin-1') is not valid text: byte 0xe9 at character 3 is not UTF-8" in err
    assert "Traceback" not in err and proc.stdout == b""


def test_jsonl_lone_surrogate_escape_exit_2_naming_the_line(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "ok"}\n{"text": "x \\udc00"}\n', encoding="utf-8")
    assert json.loads(src.read_text().splitlines()[1])["text"] == "x \udc00"
    code, _, err = run(capsys, "encode", "--model", MODEL, "--input", str(src), "--output", str(tmp_path / "o.npy"))
    assert code == 2
    assert f"{src} line 2: field 'text' is not valid text: it holds a lone surrogate U+DC00 at character 2" in err


# ------------------------------------------------------------------------------- item 14: Hub names
@pytest.mark.parametrize(("name", "rule"), [("a/b--c", "contains '--'"), ("org/x@../../etc", "contains '..'")])
def test_invalid_hub_name_exit_1_model_not_found(tmp_path, capsys, name, rule):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    code, _, err = run(capsys, "encode", "--model", name, "--input", str(src), "--output", str(tmp_path / "o.npy"))
    assert code == 1 and "[ModelNotFoundError;" in err and rule in err and repr(name) in err
    assert "HFValidationError" not in err and "Traceback" not in err


# ---------------------------------------------------------------------------- item 15: --backend
@pytest.fixture(scope="module")
def onnx_only_dir(tmp_path_factory, tiny_st_dir) -> Path:
    """A tiny sentence-transformers model exported to ONNX without its torch weights."""
    pytest.importorskip("onnxruntime")
    from export import export

    folder = export(tiny_st_dir, tmp_path_factory.mktemp("x") / "onnx-only", keep_torch=False, verbose=False)
    assert (folder / "onnx" / "text.onnx").is_file() and not list(folder.rglob("*.safetensors"))
    return folder


TEXTS = ["A man is playing a guitar.", "A woman is slicing an onion.", "The stock market fell sharply."]


def _texts_file(tmp_path: Path) -> Path:
    src = tmp_path / "t.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    return src


def test_onnx_only_model_on_the_torch_backend_names_the_option(onnx_only_dir, tmp_path, capsys):
    """Without --backend an export that holds only its ONNX graphs runs on ONNX Runtime; --backend torch is an
    error that says how to run it."""
    code, _, err = run(
        capsys, "encode", "--model", str(onnx_only_dir), "--device", "cpu", "--input", str(_texts_file(tmp_path)),
        "--output", str(tmp_path / "o.npy"),
    )
    assert code == 0 and "onnx backend" in err, err
    code, _, err = run(
        capsys, "encode", "--model", str(onnx_only_dir), "--device", "cpu", "--input", str(_texts_file(tmp_path)),
        "--output", str(tmp_path / "t.npy"), "--backend", "torch",
    )
    assert code == 1 and "(on the command line: --backend onnx)" in err and "UnknownFormatError" in err


def test_encode_backend_onnx_with_threads(onnx_only_dir, tiny_st_dir, tmp_path, capsys, monkeypatch):
    from embedhub import loader as _load

    loaded = []
    real_load = _load.load

    def spy(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(_load, "load", spy)
    out = tmp_path / "o.npy"
    code, _, err = run(
        capsys, "encode", "--model", str(onnx_only_dir), "--device", "cpu", "--backend", "onnx", "--threads", "2",
        "--input", str(_texts_file(tmp_path)), "--output", str(out),
    )
    assert code == 0, err
    assert "onnx backend, 2 threads" in err
    (model,) = loaded
    assert model.backend == "onnx"
    assert model._runners["text"].session.get_session_options().intra_op_num_threads == 2
    emb = np.load(out)
    np.testing.assert_allclose(emb, embedhub.load(onnx_only_dir, backend="onnx", device="cpu").encode(TEXTS), atol=1e-6)
    ref = embedhub.load(tiny_st_dir, device="cpu").encode(TEXTS)  # the torch model it was exported from
    assert (np.sum(emb * ref, axis=1) > 0.9999).all()


def test_search_backend_auto_on_onnx_only_model(onnx_only_dir, tmp_path, capsys):
    code, out, err = run(
        capsys, "search", "--model", str(onnx_only_dir), "--device", "cpu", "--backend", "auto",
        "--corpus", str(_texts_file(tmp_path)), "--query", TEXTS[1], "--top-k", "1",
    )
    assert code == 0, err
    assert "onnx backend" in err
    score, text = out.splitlines()[1].strip().split("  ", 1)
    assert text == TEXTS[1] and float(score) == pytest.approx(1.0, abs=1e-3)


def test_threads_with_torch_backend_sets_torch_threads(tiny_st_dir, tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        code, _, err = run(
            capsys, "encode", "--model", str(tiny_st_dir), "--device", "cpu", "--threads", "1",
            "--input", str(_texts_file(tmp_path)), "--output", str(tmp_path / "o.npy"),
        )
        assert code == 0, err
        assert "torch backend, 1 thread)" in err and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "tensorflow"], "invalid choice: 'tensorflow'"),
        (["--threads", "0"], "0 must be at least 1"),
        (["--threads", "two"], "'two' is not an integer"),
    ],
)
def test_backend_and_threads_usage_errors_exit_2(tmp_path, capsys, extra, message):
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "--input", str(_texts_file(tmp_path)), "--output",
        str(tmp_path / "o.npy"), *extra,
    )
    assert code == 2 and message in err
