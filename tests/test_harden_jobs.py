"""Hostile inputs and folders for ``embedhub embed`` / ``read_embeddings``: what a job deletes, what a reader
trusts, and errors that name the item. Tiny real models (conftest), real files in real formats."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import sparse_tar

import embedhub
from embedhub.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    return _jsonl(root / "s.jsonl", [{"id": f"r{i}", "text": f"sentence number {i}"} for i in range(6)])


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_st_dir, corpus) -> Path:
    """A finished job of 3 shards of 2 rows (ids r0..r5)."""
    out = tmp_path_factory.mktemp("job") / "emb"
    embedhub.embed_corpus(tiny_st_dir, corpus, out, id_column="id", shard_rows=2, progress=False)
    return out


@pytest.fixture
def job(tmp_path, finished) -> Path:
    out = tmp_path / "emb"
    shutil.copytree(finished, out, symlinks=True)
    return out


def _embed(model: Path, corpus: Path, out: Path, **kw):
    return embedhub.embed_corpus(model, corpus, out, id_column="id", shard_rows=2, progress=False, **kw)


# ---------------------------------------------------------------------------------------------- deletions
def test_restart_keeps_user_files_in_shards_and_names_them(job, tiny_st_dir, corpus):
    (job / "shards" / "notes.txt").write_text("mine")
    with pytest.raises(embedhub.JobError, match=r"did not write \(shards/notes.txt\)"):
        _embed(tiny_st_dir, corpus, job, restart=True)
    assert (job / "shards" / "notes.txt").read_text() == "mine"
    assert (job / "shards" / "part-00000.parquet").is_file()  # nothing deleted


def test_restart_never_writes_through_a_symlinked_shards_folder(job, tmp_path, tiny_st_dir, corpus):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(job / "shards", elsewhere)
    (elsewhere / "keep.txt").write_text("mine")
    (job / "shards").symlink_to(elsewhere)
    for restart in (False, True):
        with pytest.raises(embedhub.JobError, match=r"shards \(a link"):
            _embed(tiny_st_dir, corpus, job, restart=restart)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt", "part-00000.parquet", "part-00001.parquet",
                                                           "part-00002.parquet"]
    with pytest.raises(embedhub.JobError, match="not the folder the job wrote"):
        embedhub.read_embeddings(job)


def test_a_users_errors_jsonl_alone_is_not_a_job_folder(tmp_path, tiny_st_dir, corpus):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "errors.jsonl").write_text('{"my": "log"}\n')
    for restart in (False, True):
        with pytest.raises(embedhub.JobError, match=r"not an embedhub embed folder \(it holds errors.jsonl\)"):
            _embed(tiny_st_dir, corpus, out, restart=restart)
    assert (out / "errors.jsonl").read_text() == '{"my": "log"}\n'


def test_corrupt_manifest_advises_restart_and_restart_works(job, tiny_st_dir, corpus, finished):
    (job / "manifest.json").write_text("{not json")
    with pytest.raises(embedhub.JobError, match=r"--restart"):
        _embed(tiny_st_dir, corpus, job)
    _embed(tiny_st_dir, corpus, job, restart=True)  # the advice works: every file there is the job's
    again = embedhub.read_embeddings(job)
    assert again.ids == [f"r{i}" for i in range(6)]
    np.testing.assert_array_equal(again.embeddings, embedhub.read_embeddings(finished).embeddings)


def test_a_foreign_manifest_is_never_deleted(tmp_path, tiny_st_dir, corpus):
    out = tmp_path / "webapp"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my app", "icons": []}')
    for restart in (False, True):
        with pytest.raises(embedhub.JobError, match=r"not an embedhub embed folder \(it holds manifest.json") as err:
            _embed(tiny_st_dir, corpus, out, restart=restart)
        assert "--restart" not in str(err.value)
    assert json.loads((out / "manifest.json").read_text())["name"] == "my app"


# ---------------------------------------------------------------------------------------------- reads verify
def test_a_shard_overwritten_by_another_is_refused(job):
    shutil.copyfile(job / "shards" / "part-00000.parquet", job / "shards" / "part-00001.parquet")
    with pytest.raises(embedhub.JobError, match=r"shard 1 \(shards/part-00001.parquet\).*SHA-256"):
        embedhub.read_embeddings(job)


@pytest.mark.parametrize("entry", ["../outside.parquet", "/tmp/abs.parquet", "shards/../../x.parquet"])
def test_manifest_paths_outside_the_folder_are_refused(job, entry):
    shutil.copyfile(job / "shards" / "part-00001.parquet", job.parent / "outside.parquet")
    manifest = json.loads((job / "manifest.json").read_text())
    manifest["shards"]["1"]["file"] = entry
    (job / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(embedhub.JobError, match=r"shard '1'.*inside the folder"):
        embedhub.read_embeddings(job)


def test_a_symlinked_shard_is_refused(job, tmp_path):
    target = tmp_path / "real.parquet"
    shutil.move(job / "shards" / "part-00002.parquet", target)
    (job / "shards" / "part-00002.parquet").symlink_to(target)
    with pytest.raises(embedhub.JobError, match=r"shard 2 .*is a link"):
        embedhub.read_embeddings(job)


def test_nan_and_inf_in_stored_files_name_file_and_row(tmp_path, tiny_st_dir):
    fp = embedhub.load(tiny_st_dir, device="cpu").fingerprint.with_normalized(False)
    emb = np.ones((4, fp.dim), np.float32)
    embedhub.write_embeddings(tmp_path / "e.parquet", emb, fp)
    table = pq.read_table(tmp_path / "e.parquet")
    bad = emb.copy()
    bad[2, 5] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(bad.reshape(-1), pa.float32()), fp.dim)
    pq.write_table(table.set_column(table.column_names.index("embedding"), "embedding", column),
                   tmp_path / "nan.parquet")
    with pytest.raises(embedhub.EmbeddingsFileError, match=r"nan.parquet: row 2 holds NaN"):
        embedhub.read_embeddings(tmp_path / "nan.parquet")
    bad[2, 5], bad[3, 0] = 1.0, np.inf
    np.save(tmp_path / "inf.npy", bad)
    with pytest.raises(embedhub.EmbeddingsFileError, match=r"inf.npy: row 3 holds NaN or infinite"):
        embedhub.read_embeddings(tmp_path / "inf.npy")


def test_a_forged_npy_header_is_refused_before_allocating(tmp_path):
    from numpy.lib import format as npy

    for shape in ((1 << 40, 1 << 20), (200_000_000, 4)):
        path = tmp_path / "forged.npy"
        with open(path, "wb") as fh:
            npy.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
            fh.write(b"\0" * 1024)
        with pytest.raises(embedhub.EmbeddingsFileError, match=r"forged.npy: its header says .* bytes after"):
            embedhub.read_embeddings(path)


# ---------------------------------------------------------------------------------------------- errors name items
def test_deeply_nested_json_line_names_the_line(tmp_path, tiny_st_dir):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n' + '{"text": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    with pytest.raises(embedhub.CorpusError, match=r"deep.jsonl line 2: JSON nested too deeply"):
        _embed(tiny_st_dir, path, tmp_path / "out")


def test_lone_surrogate_id_is_refused_at_planning(tmp_path, tiny_st_dir):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "ok", "text": "a"}\n{"id": "bad\\ud800", "text": "b"}\n')
    with pytest.raises(embedhub.CorpusError, match=r"s.jsonl line 2: id 'id'.*not valid UTF-8"):
        _embed(tiny_st_dir, path, tmp_path / "out")
    assert not (tmp_path / "out" / "shards").exists()  # before any shard was embedded


def test_non_utf8_image_file_name_is_refused_at_planning(tmp_path, tiny_embedhub_dir, photos):
    root = tmp_path / "imgs"
    root.mkdir()
    photos[0].resize((32, 32)).save(root / "good.png")
    photos[1].resize((32, 32)).save(os.path.join(os.fsencode(root), b"caf\xe9.png"))
    with pytest.raises(embedhub.CorpusError, match=r"image file name: 'caf\\udce9.png' is not valid UTF-8"):
        embedhub.embed_corpus(tiny_embedhub_dir, root, tmp_path / "out", progress=False, workers=1)
    assert not (tmp_path / "out" / "shards").exists()


def test_latin1_tar_member_name_is_refused_at_planning(tmp_path, tiny_embedhub_dir, photos):
    buf = io.BytesIO()
    photos[0].resize((32, 32)).save(buf, format="PNG")
    path = tmp_path / "latin.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tar:
        info = tarfile.TarInfo("caf\xe9.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    with pytest.raises(embedhub.CorpusError, match=r"latin.tar: member .* is not valid UTF-8"):
        embedhub.embed_corpus(tiny_embedhub_dir, path, tmp_path / "out", progress=False, workers=1)
    assert not (tmp_path / "out" / "shards").exists()


def test_corrupt_parquet_page_names_the_file_and_rows(tmp_path, tiny_st_dir):
    path = tmp_path / "c.parquet"
    texts = [f"text {i} " + "x" * 200 for i in range(400)]
    pq.write_table(pa.table({"text": texts}), path, compression="snappy", use_dictionary=False)
    data = bytearray(path.read_bytes())
    data[40:4000] = os.urandom(3960)  # the first data page: the footer is intact
    path.write_bytes(bytes(data))
    with pytest.raises(embedhub.CorpusError, match=r"c.parquet: rows 0\.\.399 cannot be read: \w+: \S") as err:
        embedhub.embed_corpus(tiny_st_dir, path, tmp_path / "out", progress=False)
    assert err.value.path == path


def test_null_text_in_jsonl_is_skipped_and_listed(tmp_path, tiny_st_dir):
    path = _jsonl(tmp_path / "n.jsonl", [{"id": "a", "text": "first"}, {"id": "b", "text": None},
                                         {"id": "c", "text": 7}, {"id": "d", "text": "last"}])
    result = _embed(tiny_st_dir, path, tmp_path / "out")
    assert embedhub.read_embeddings(result.output).ids == ["a", "d"]
    listed = [json.loads(line) for line in result.errors_file.read_text().splitlines()]
    assert [(e["id"], e["reason"]) for e in listed] == [("b", "text is null"), ("c", "text is int, expected a string")]


def test_over_long_jsonl_line_names_file_and_line(tmp_path, tiny_st_dir, monkeypatch):
    from embedhub.jobs import corpus as _corpus

    monkeypatch.setattr(_corpus, "MAX_JSONL_LINE", 1000)
    path = _jsonl(tmp_path / "long.jsonl", [{"id": "a", "text": "short"}, {"id": "b", "text": "y" * 5000}])
    with pytest.raises(embedhub.CorpusError, match=r"long.jsonl line 2: longer than 1000 bytes"):
        _embed(tiny_st_dir, path, tmp_path / "out")


def test_oversized_tar_image_member_is_listed_by_its_header(tmp_path, tiny_embedhub_dir, photos):
    buf = io.BytesIO()
    photos[0].resize((40, 40)).save(buf, format="PNG")
    path = sparse_tar(tmp_path / "t.tar", [("a.png", buf.getvalue()), ("a.txt", 300 << 20), ("b.jpg", 300 << 20)])
    result = embedhub.embed_corpus(tiny_embedhub_dir, path, tmp_path / "out", progress=False, workers=1)
    assert embedhub.read_embeddings(result.output).ids == ["a"]
    (listed,) = [json.loads(line) for line in result.errors_file.read_text().splitlines()]
    assert listed["id"] == "b" and "b.jpg is 314572800 bytes, over the" in listed["reason"]


def test_script_without_main_guard_embeds_images(tmp_path, tiny_embedhub_dir, photos):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        photos[i].resize((32 + i, 32)).save(root / f"{i}.png")
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import embedhub
        print("top level ran")
        result = embedhub.embed_corpus({str(tiny_embedhub_dir)!r}, {str(root)!r}, {str(tmp_path / 'out')!r},
                                       workers=2, progress=False)
        print("rows", result.rows)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["top", "level", "ran", "rows", "3"]  # the script ran once: not in the workers


def test_cli_embed_reports_restart_refusal_as_usage_error(job, tiny_st_dir, corpus, capsys):
    (job / "shards" / "notes.txt").write_text("mine")
    code = main(["embed", "--model", str(tiny_st_dir), "--input", str(corpus), "--output", str(job),
                 "--id-column", "id", "--shard-rows", "2", "--restart"])
    assert code == 2 and "shards/notes.txt" in capsys.readouterr().err
    assert (job / "shards" / "notes.txt").exists()


# ---------------------------------------------------------------------------------------------- edited manifests
def _edit_manifest(job: Path, edit) -> None:
    m = json.loads((job / "manifest.json").read_text())
    edit(m)
    (job / "manifest.json").write_text(json.dumps(m))


def _swap_files(m: dict) -> None:
    s = m["shards"]
    for k in ("file", "sha256", "rows"):
        s["0"][k], s["1"][k] = s["1"][k], s["0"][k]


def _swap_shard_files(job: Path) -> None:
    a, b = job / "shards" / "part-00000.parquet", job / "shards" / "part-00001.parquet"
    a.rename(job / "t")
    b.rename(a)
    (job / "t").rename(b)


@pytest.mark.parametrize("edit", ["dup", "swap", "files", "total", "huge", "negative", "rows", "error_rows"])
def test_an_edited_manifest_never_reads_wrong_rows_and_a_rerun_repairs_it(job, tiny_st_dir, corpus, edit):
    def change(m: dict) -> None:
        s = m["shards"]
        if edit == "dup":
            s["1"] = dict(s["0"])
        elif edit == "swap":
            s["0"], s["1"] = s["1"], s["0"]
        elif edit == "files":  # the files swapped, and their SHA-256 and rows in the manifest with them
            _swap_files(m)
        elif edit == "total":
            m["shards_total"] = 2
            del s["2"]
        elif edit == "huge":
            m["shards_total"] = 10**12
        elif edit == "negative":
            m["shards_total"] = -1
        elif edit == "rows":
            s["2"]["rows"] = 1
        elif edit == "error_rows":
            s["0"]["error_rows"] = [1]

    if edit == "files":
        _swap_shard_files(job)
    _edit_manifest(job, change)
    with pytest.raises(embedhub.JobError):
        embedhub.read_embeddings(job)
    if edit == "negative":  # not a job manifest: the advice is to restart
        with pytest.raises(embedhub.JobError, match="restart"):
            _embed(tiny_st_dir, corpus, job)
        result = _embed(tiny_st_dir, corpus, job, restart=True)
    else:
        result = _embed(tiny_st_dir, corpus, job)
    assert result.rows == 6 and result.shards == 3
    assert list(embedhub.read_embeddings(job).ids) == [f"r{i}" for i in range(6)]


# ---------------------------------------------------------------------------------------------- special files
@pytest.mark.parametrize("which", ["x.npy", "x.npy.fingerprint.json", "x.parquet"])
def test_a_fifo_embeddings_file_is_refused_at_once(tmp_path, tiny_st_dir, which):
    model = embedhub.load(tiny_st_dir, device="cpu")
    vectors = model.encode(["a", "b"])
    embedhub.write_embeddings(tmp_path / "x.npy", vectors, model.fingerprint)
    target = tmp_path / which
    if target.exists():
        target.unlink()
    os.mkfifo(target)
    source = tmp_path / ("x.parquet" if which == "x.parquet" else "x.npy")
    code = (f"import embedhub\ntry:\n embedhub.read_embeddings({str(source)!r})\n"
            "except embedhub.EmbeddingsFileError as e:\n print(e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert f"{target} is a FIFO (named pipe), not a regular file" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    corpus = _jsonl(tmp_path / "c.jsonl", [{"text": "a"}, {"text": "b"}])
    cli = subprocess.run([sys.executable, "-m", "embedhub", "search", "--model", str(tiny_st_dir), "--corpus",
                          str(corpus), "--embeddings", str(source), "--query", "a"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "FIFO" in cli.stderr, cli.stderr[-2000:]


def test_a_copied_manifest_does_not_make_a_users_folder_a_job(tmp_path, finished, tiny_st_dir, corpus):
    mine = tmp_path / "mine"
    mine.mkdir()
    shutil.copy(finished / "manifest.json", mine)
    (mine / "errors.jsonl").write_text("MINE")
    (mine / "index.faiss").write_text("MINE")
    for restart in (False, True):
        with pytest.raises(embedhub.JobError, match="not an embedhub embed folder.*give a new or empty folder"):
            _embed(tiny_st_dir, corpus, mine, restart=restart)
    assert sorted(p.name for p in mine.iterdir()) == ["errors.jsonl", "index.faiss", "manifest.json"]
    assert (mine / "errors.jsonl").read_text() == (mine / "index.faiss").read_text() == "MINE"


def test_a_folder_holding_only_a_temp_like_file_is_not_empty(tmp_path, tiny_st_dir, corpus):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / ".errors.jsonl.backup.tmp").write_text("USER")
    with pytest.raises(embedhub.JobError, match=r"not an embedhub embed folder.*\.errors\.jsonl\.backup\.tmp"):
        _embed(tiny_st_dir, corpus, mine)
    assert [p.name for p in mine.iterdir()] == [".errors.jsonl.backup.tmp"]


@pytest.mark.parametrize("restart", [False, True])
def test_user_files_named_like_temporaries_are_never_deleted(job, tiny_st_dir, corpus, restart):
    for rel in ("shards/.part-00000.parquet.keep.tmp", ".manifest.json.mine.tmp"):
        (job / rel).write_text("USER")
        with pytest.raises(embedhub.JobError, match="did not write"):
            _embed(tiny_st_dir, corpus, job, restart=restart)
        assert (job / rel).read_text() == "USER"
        (job / rel).unlink()
    # what a killed write leaves is in the job's own staging folder, and is removed there
    (job / ".embedhub-tmp" / ".part-00001.parquet.x1.tmp").write_bytes(b"PAR1 partial")
    _embed(tiny_st_dir, corpus, job, restart=restart)
    assert not list((job / ".embedhub-tmp").iterdir())
    assert list(embedhub.read_embeddings(job).ids) == [f"r{i}" for i in range(6)]


# ---------------------------------------------------------------------------------------------- typed errors
def test_uint64_id_above_int64_is_refused_naming_the_row(tmp_path, tiny_st_dir):
    path = tmp_path / "u64.parquet"
    pq.write_table(pa.table({"id": pa.array([1, 2**64 - 1], pa.uint64()), "text": ["a", "b"]}), path)
    with pytest.raises(embedhub.CorpusError, match=r"u64.parquet: id column 'id' row 1: id 18446744073709551615"):
        embedhub.embed_corpus(tiny_st_dir, path, tmp_path / "out", id_column="id", progress=False)


def test_negative_npy_shape_is_refused_naming_the_file(tmp_path):
    from numpy.lib import format as npy

    path = tmp_path / "neg.npy"
    with open(path, "wb") as fh:
        npy.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (-2, -2)})
        fh.write(b"\0" * 16)
    with pytest.raises(embedhub.EmbeddingsFileError, match=r"neg.npy: expected a 2-d float array"):
        embedhub.read_embeddings(path)


def test_encode_deeply_nested_jsonl_is_a_usage_error_naming_the_line(tmp_path, tiny_st_dir, capsys):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"text": "fine"}\n{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    code = main(["encode", "--model", str(tiny_st_dir), "--input", str(path), "--output", str(tmp_path / "o.npy")])
    assert code == 2
    assert "deep.jsonl line 2: JSON nested too deeply" in capsys.readouterr().err


def test_non_utf8_output_path_is_refused_before_any_work(tmp_path, tiny_st_dir, corpus, capsys):
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/out\xff")
    model = embedhub.load(tiny_st_dir, device="cpu")
    with pytest.raises(embedhub.EmbeddingsFileError, match=r"out\\xff.parquet is not a valid UTF-8 path"):
        embedhub.write_embeddings(bad + ".parquet", model.encode(["a"]), model.fingerprint)
    with pytest.raises(embedhub.JobError, match=r"out\\xff is not a valid UTF-8 path"):
        _embed(tiny_st_dir, corpus, Path(bad))
    assert main(["embed", "--model", str(tiny_st_dir), "--input", str(corpus), "--output", bad]) == 2
    assert main(["encode", "--model", str(tiny_st_dir), "--input", str(corpus), "--field", "text",
                 "--output", bad + ".npy"]) == 2
    assert "not a valid UTF-8 path" in capsys.readouterr().err
    assert not os.path.exists(bad)


@pytest.mark.parametrize("ids", [["a", "b", "a"], [5, 7, 5]])
def test_repeated_ids_in_a_stored_parquet_are_refused_naming_the_id(tmp_path, tiny_st_dir, ids):
    model = embedhub.load(tiny_st_dir, device="cpu")
    path = tmp_path / "rep.parquet"
    embedhub.write_embeddings(path, model.encode(["x", "y", "z"]), model.fingerprint, ids=[0, 1, 2])
    table = pq.read_table(path)
    table = table.set_column(table.column_names.index("id"), "id", pa.array(ids))
    pq.write_table(table, path)
    for expect in (None, model.fingerprint):
        with pytest.raises(embedhub.EmbeddingsFileError, match=rf"rep.parquet: column 'id' row 2 = {ids[0]!r} "
                                                                r"repeats row 0"):
            embedhub.read_embeddings(path, expect=expect)
