"""``embedhub embed`` / ``embed_corpus``: sharded batch embedding, local and on a real local Ray instance.

Real data: STS Benchmark sentences (JSONL and parquet) with all-MiniLM-L6-v2, and scikit-image photographs
(a folder tree and webdataset tars) with a tiny real image model. Interruption is a real SIGKILL of a job
started as a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import read_sts

import embedhub
from embedhub.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

N_SENTENCES = 2000
#: the reference run's shards: 8 of them
SHARD_ROWS = N_SENTENCES // 8


# ---------------------------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def sentences() -> list[str]:
    texts: list[str] = []
    for split in ("train", "dev", "test"):
        s1, s2, _ = read_sts(split)
        texts += s1 + s2
    unique = list(dict.fromkeys(texts))
    assert len(unique) >= N_SENTENCES
    return unique[:N_SENTENCES]


@pytest.fixture(scope="module")
def sentences_jsonl(tmp_path_factory, sentences) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "sentences.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, text in enumerate(sentences):
            fh.write(json.dumps({"doc": f"sts-{i:05d}", "text": text}) + "\n")
            if i == 10:
                fh.write("\n")  # blank lines are not rows
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, minilm_path, sentences_jsonl):
    """The reference: the local engine, uninterrupted, over the JSONL sentences."""
    out = tmp_path_factory.mktemp("local") / "emb"
    result = embedhub.embed_corpus(minilm_path, sentences_jsonl, out, id_column="doc", shard_rows=SHARD_ROWS,
                                   index="faiss", progress=False)
    return result, embedhub.read_embeddings(out)


def _photo_variants(photos) -> list:
    """Crops and rescales of the real photographs: distinct images of several sizes."""
    out = []
    for p in photos:
        w, h = p.size
        for k in range(6):
            box = (k * w // 20, k * h // 24, w - k * w // 30, h - k * h // 16)
            out.append(p.crop(box).resize((64 + 24 * k, 48 + 16 * k)))
    return out


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory, photos) -> Path:
    """A folder tree of real photos (JPEG and PNG, nested), one corrupt file and one non-image file."""
    root = tmp_path_factory.mktemp("images")
    for i, img in enumerate(_photo_variants(photos)):
        sub = root / ("a" if i % 3 == 0 else "b/c" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        img.save(sub / f"img{i:02d}.{'jpg' if i % 2 else 'png'}")
    good = (root / "a" / "img00.png").read_bytes()
    (root / "b" / "broken.jpg").write_bytes(good[: len(good) // 3])  # cut short, as by a failed copy
    (root / "notes.txt").write_text("not an image")
    return root


def _write_tars(root: Path, photos) -> list[Path]:
    paths = []
    variants = _photo_variants(photos)
    for s, start in enumerate(range(0, len(variants), 10)):
        path = root / f"shard-{s:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(start, min(start + 10, len(variants))):
                buf = io.BytesIO()
                variants[i].save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", f"photo {i}".encode())):
                    info = tarfile.TarInfo(f"photos/{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            if s == 0:  # a sample with a caption and no image
                info = tarfile.TarInfo("photos/caption-only.txt")
                info.size = 4
                tar.addfile(info, io.BytesIO(b"none"))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray instance with 2 CPUs, shared by the Ray tests of this module."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _assert_same(a, b, tol: float = 1e-6) -> None:
    ids_a = list(a.ids.tolist() if isinstance(a.ids, np.ndarray) else a.ids)
    ids_b = list(b.ids.tolist() if isinstance(b.ids, np.ndarray) else b.ids)
    assert ids_a == ids_b
    assert len(set(ids_a)) == len(ids_a)
    assert a.fingerprint == b.fingerprint
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=tol, rtol=0)


# ---------------------------------------------------------------------------------------------- local engine
def test_local_engine_equals_encode_and_writes_shards(local_run, minilm, sentences):
    result, stored = local_run
    assert result.rows == N_SENTENCES and result.shards == 8 and result.errors == 0 and result.resumed == 0
    assert list(stored.ids) == [f"sts-{i:05d}" for i in range(N_SENTENCES)]
    ref = minilm.encode(sentences, batch_size=32)
    np.testing.assert_allclose(stored.embeddings, ref, atol=1e-6, rtol=0)
    # every shard carries the fingerprint and its source rows
    shard = result.output / "shards" / "part-00003.parquet"
    meta = pq.read_schema(shard).metadata
    assert embedhub.Fingerprint.from_json(meta[b"embedhub.fingerprint"]) == minilm.fingerprint
    source = json.loads(meta[b"embedhub.shard"])
    assert (source["start"], source["stop"], source["shard"]) == (3 * SHARD_ROWS, 4 * SHARD_ROWS, 3)
    assert source["source"].endswith("sentences.jsonl")
    emb = embedhub.read_embeddings(shard, expect=minilm.fingerprint)
    assert list(emb.ids) == [f"sts-{i:05d}" for i in range(3 * SHARD_ROWS, 4 * SHARD_ROWS)]
    manifest = json.loads((result.output / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 8


def test_faiss_index_maps_rows_to_ids(local_run, minilm, sentences):
    faiss = pytest.importorskip("faiss")
    result, _ = local_run
    index = faiss.read_index(str(result.index))
    ids = pq.read_table(result.output / "index_ids.parquet").column("id").to_pylist()
    assert index.ntotal == len(ids) == N_SENTENCES
    query = minilm.encode([sentences[1234], sentences[N_SENTENCES - 1]])
    _, hits = index.search(query, 1)
    assert [ids[h] for h in hits[:, 0]] == ["sts-01234", f"sts-{N_SENTENCES - 1:05d}"]


def test_parquet_input_row_numbers_match_jsonl(tmp_path, local_run, minilm_path, sentences):
    path = tmp_path / "sentences.parquet"
    pq.write_table(pa.table({"body": sentences}), path, row_group_size=350)  # row groups cut across shards
    out = tmp_path / "emb"
    assert main(["embed", "--model", str(minilm_path), "--input", str(path), "--output", str(out),
                 "--text-column", "body", "--shard-rows", "450"]) == 0
    stored = embedhub.read_embeddings(out)
    assert stored.ids.tolist() == list(range(N_SENTENCES))
    np.testing.assert_allclose(stored.embeddings, local_run[1].embeddings, atol=1e-6, rtol=0)


def test_rerun_skips_finished_job_and_refuses_other_settings(tmp_path, tiny_st_dir, sentences):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences[:300]))
    out = tmp_path / "emb"
    first = embedhub.embed_corpus(tiny_st_dir, path, out, shard_rows=100, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = embedhub.embed_corpus(tiny_st_dir, path, out, shard_rows=100, progress=False)
    assert (first.rows, again.rows, again.resumed) == (300, 300, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == mtimes  # nothing rewritten
    with pytest.raises(embedhub.JobError, match=r"shard_rows: 100 then, 50 now.*restart"):
        embedhub.embed_corpus(tiny_st_dir, path, out, shard_rows=50, progress=False)
    path.write_text(path.read_text() + json.dumps({"text": "one more row"}) + "\n")
    with pytest.raises(embedhub.JobError, match="input files changed"):
        embedhub.embed_corpus(tiny_st_dir, path, out, shard_rows=100, progress=False)
    redone = embedhub.embed_corpus(tiny_st_dir, path, out, shard_rows=100, restart=True, progress=False)
    assert (redone.rows, redone.shards, redone.resumed) == (301, 4, 0)


# ---------------------------------------------------------------------------------------------- images
def test_image_folder_skips_corrupt_image_and_lists_it(tmp_path, image_tree, tiny_embedhub_dir):
    out = tmp_path / "emb"
    result = embedhub.embed_corpus(tiny_embedhub_dir, image_tree, out, shard_rows=7, workers=2, progress=False)
    stored = embedhub.read_embeddings(out)
    files = sorted(p.relative_to(image_tree).as_posix() for p in image_tree.rglob("*.*") if p.suffix != ".txt")
    good = [f for f in files if f != "b/broken.jpg"]
    assert sorted(stored.ids) == good and len(stored.ids) == 24
    assert (result.errors, result.rows) == (1, 24)
    errors = [json.loads(line) for line in result.errors_file.read_text().splitlines()]
    assert [e["id"] for e in errors] == ["b/broken.jpg"] and "truncated" in errors[0]["reason"]
    # the same vectors as encode over the same files
    model = embedhub.load(tiny_embedhub_dir, device="cpu")
    ref = model.encode([image_tree / i for i in stored.ids], batch_size=32)
    np.testing.assert_allclose(stored.embeddings, ref, atol=1e-6, rtol=0)
    with pytest.raises(embedhub.CorpusError, match=r"'b/broken.jpg' cannot be embedded.*truncated"):
        embedhub.embed_corpus(tiny_embedhub_dir, image_tree, tmp_path / "strict", shard_rows=7, on_error="fail",
                              progress=False)


def test_webdataset_tars_ids_are_keys(tmp_path, photos, image_tree, tiny_embedhub_dir):
    tars = _write_tars(tmp_path, photos)
    out = tmp_path / "emb"
    result = embedhub.embed_corpus(tiny_embedhub_dir, str(tmp_path / "shard-*.tar"), out, shard_rows=4,
                                   progress=False)
    stored = embedhub.read_embeddings(out)
    assert len(tars) == 3 and stored.ids == [f"photos/{i:04d}" for i in range(24)]
    errors = [json.loads(line) for line in result.errors_file.read_text().splitlines()]
    assert [(e["id"], e["reason"]) for e in errors] == [("photos/caption-only", "no image member (txt)")]
    model = embedhub.load(tiny_embedhub_dir, device="cpu")
    np.testing.assert_allclose(stored.embeddings, model.encode(_photo_variants(photos)), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- ray engine
def test_ray_engine_equals_local_on_real_sentences(tmp_path, ray_local, local_run, minilm_path, sentences_jsonl):
    out = tmp_path / "emb"
    result = embedhub.embed_corpus(minilm_path, sentences_jsonl, out, id_column="doc", shard_rows=SHARD_ROWS,
                                   engine="ray", actors=2, progress=False)
    assert (result.rows, result.shards) == (N_SENTENCES, 8)
    _assert_same(embedhub.read_embeddings(out), local_run[1])


def test_ray_engine_equals_local_on_image_folder(tmp_path, ray_local, image_tree, tiny_embedhub_dir):
    local = embedhub.embed_corpus(tiny_embedhub_dir, image_tree, tmp_path / "local", shard_rows=5, progress=False)
    on_ray = embedhub.embed_corpus(tiny_embedhub_dir, image_tree, tmp_path / "ray", shard_rows=5, engine="ray",
                                   actors=2, progress=False)
    _assert_same(embedhub.read_embeddings(local.output), embedhub.read_embeddings(on_ray.output))
    assert on_ray.errors_file.read_text() == local.errors_file.read_text()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    """Return once 127.0.0.1:``port`` accepts a connection (or ``proc`` has exited, or ``seconds`` passed)."""
    import socket

    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)


def test_ray_engine_on_a_cluster_by_address(tmp_path, tiny_st_dir, sentences):
    """A real Ray cluster started with `ray start --head` (token auth off, as on a private network), joined
    with --address by the command line in another process."""
    pytest.importorskip("ray.data")
    ray_cli = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    port = _free_port()
    pointer = Path("/tmp/ray/ray_current_cluster")  # `ray start` records its head here; put back what was there
    before = pointer.read_bytes() if pointer.is_file() else None
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard=false"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        path = _jsonl(tmp_path / "s.jsonl", [{"text": t} for t in sentences[:500]])
        cmd = [sys.executable, "-m", "embedhub", "embed", "--model", str(tiny_st_dir), "--input", str(path),
               "--shard-rows", "100", "--engine", "ray", "--address", f"127.0.0.1:{port}", "--actors", "2"]
        _wait_for_port(port, head)  # the head takes a few seconds to listen: no CLI start before it does
        for _ in range(60):  # and a few more to accept drivers
            done = subprocess.run([*cmd, "--output", str(tmp_path / "ray")], env=env, capture_output=True,
                                  text=True, timeout=300)
            if done.returncode == 0 or "Failed to connect" not in done.stderr:
                break
            time.sleep(1)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        if before is None:
            pointer.unlink(missing_ok=True)
        else:
            pointer.write_bytes(before)
    local = embedhub.embed_corpus(tiny_st_dir, path, tmp_path / "local", shard_rows=100, progress=False)
    _assert_same(embedhub.read_embeddings(tmp_path / "ray"), embedhub.read_embeddings(local.output))


# ---------------------------------------------------------------------------------------------- interruption
def _shards_done(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["shards"])
    except (OSError, ValueError):
        return 0


def _first_shards_done(out: Path) -> bool:
    """Shards 0 and 1 (the ones the test damages) and at least one more are done: Ray finishes them in any order."""
    try:
        shards = json.loads((out / "manifest.json").read_text())["shards"]
    except (OSError, ValueError):
        return False
    return len(shards) >= 3 and {"0", "1"} <= set(shards)


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_sigkill_midway_then_rerun_gives_every_id_once(tmp_path, engine, local_run, minilm_path, sentences_jsonl):
    if engine == "ray":
        pytest.importorskip("ray.data")
    out = tmp_path / "emb"
    cmd = [sys.executable, "-m", "embedhub", "embed", "--model", str(minilm_path), "--input", str(sentences_jsonl),
           "--output", str(out), "--id-column", "doc", "--shard-rows", str(N_SENTENCES // 16), "--engine", engine]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _first_shards_done(out):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no shard finished in 300 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the driver only: Ray's workers are left as a crash leaves them
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = _shards_done(out)
    assert 3 <= done < 16, f"{done} shards done: the kill did not land midway"
    manifest = json.loads((out / "manifest.json").read_text())
    # what a kill during a write leaves on a filesystem without atomic rename: a done shard cut short,
    # a later shard half written, a temporary file
    victim = out / manifest["shards"]["1"]["file"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    half = out / "shards" / "part-00015.parquet"
    half.write_bytes((out / manifest["shards"]["0"]["file"]).read_bytes()[:5000])
    (out / ".embedhub-tmp" / ".part-00014.parquet.abc123.tmp").write_bytes(b"PAR1 partial")
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{done - 1} of 16 shards done by an earlier run" in rerun.stderr
    assert "shard 1 will be redone" in rerun.stderr and "SHA-256 differs" in rerun.stderr
    assert not list((out / ".embedhub-tmp").iterdir())
    # every id exactly once across every file in the folder, and the same vectors as the uninterrupted run
    files = sorted((out / "shards").glob("*.parquet"))
    assert len(files) == 16
    ids = [i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert len(ids) == len(set(ids)) == N_SENTENCES
    _assert_same(embedhub.read_embeddings(out), local_run[1])


# ---------------------------------------------------------------------------------------------- bad input
def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in records))
    return path


def test_empty_inputs_are_refused(tmp_path, tiny_st_dir, tiny_embedhub_dir, capsys):
    empty = _jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(embedhub.CorpusError, match="no rows to embed"):
        embedhub.embed_corpus(tiny_st_dir, empty, tmp_path / "a", progress=False)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    assert main(["embed", "--model", str(tiny_st_dir), "--input", str(tmp_path / "empty.parquet"),
                 "--output", str(tmp_path / "b")]) == 2
    assert "no rows to embed" in capsys.readouterr().err
    (tmp_path / "noimages").mkdir()
    with pytest.raises(embedhub.CorpusError, match="no rows"):
        embedhub.embed_corpus(tiny_embedhub_dir, tmp_path / "noimages", tmp_path / "c", progress=False)
    with pytest.raises(embedhub.CorpusError, match="matches no file"):
        embedhub.embed_corpus(tiny_st_dir, str(tmp_path / "*.nothing"), tmp_path / "d", progress=False)
    assert not (tmp_path / "a" / "shards").exists()


def test_missing_text_column_names_the_columns(tmp_path, tiny_st_dir):
    pq.write_table(pa.table({"body": ["a", "b"], "n": [1, 2]}), tmp_path / "x.parquet")
    with pytest.raises(embedhub.CorpusError, match=r"no text column 'text' \(columns: body, n\).*--text-column"):
        embedhub.embed_corpus(tiny_st_dir, tmp_path / "x.parquet", tmp_path / "a", progress=False)
    path = _jsonl(tmp_path / "x.jsonl", [{"text": "fine"}, {"body": "no text here"}])
    with pytest.raises(embedhub.CorpusError, match=r"line 2: no text field 'text' \(fields: body\)") as err:
        embedhub.embed_corpus(tiny_st_dir, path, tmp_path / "b", progress=False)
    assert err.value.column == "text"
    with pytest.raises(embedhub.CorpusError, match="line 1: not a JSON object"):
        embedhub.embed_corpus(tiny_st_dir, _jsonl(tmp_path / "y.jsonl", ["{oops"]), tmp_path / "c", progress=False)


def test_repeated_ids_are_named(tmp_path, tiny_st_dir):
    records = [{"id": f"d{i}", "text": f"text {i}"} for i in range(50)] + [{"id": "d7", "text": "again"},
                                                                           {"id": "d9", "text": "and again"}]
    path = _jsonl(tmp_path / "dup.jsonl", records)
    with pytest.raises(embedhub.CorpusError, match=r"2 ids repeat: 'd7' at .*line 8, .*line 51; 'd9'") as err:
        embedhub.embed_corpus(tiny_st_dir, path, tmp_path / "a", id_column="id", progress=False)
    assert err.value.ids == ["d7", "d9"]
    # across files of a glob too, and for integer ids of parquet
    pq.write_table(pa.table({"text": ["a", "b"], "id": [1, 2]}), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"text": ["c", "d"], "id": [3, 1]}), tmp_path / "p2.parquet")
    with pytest.raises(embedhub.CorpusError, match=r"1 id repeat: 1 at .*p1.parquet row 0, .*p2.parquet row 1"):
        embedhub.embed_corpus(tiny_st_dir, str(tmp_path / "p*.parquet"), tmp_path / "b", id_column="id",
                              progress=False)


def test_null_texts_are_skipped_and_listed(tmp_path, tiny_st_dir):
    pq.write_table(pa.table({"text": ["first", None, "third"], "key": [10, 20, 30]}), tmp_path / "n.parquet")
    result = embedhub.embed_corpus(tiny_st_dir, tmp_path / "n.parquet", tmp_path / "a", id_column="key",
                                   shard_rows=1, progress=False)  # shard 1 has no row left
    assert embedhub.read_embeddings(result.output).ids.tolist() == [10, 30]
    assert json.loads(result.errors_file.read_text()) == {"id": 20, "reason": "text is null", "shard": 1,
                                                          "source": str(tmp_path / "n.parquet")}


def test_output_folder_of_another_model_is_refused(tmp_path, tiny_st_dir, other_st_dir, capsys):
    path = _jsonl(tmp_path / "s.jsonl", [{"text": f"sentence {i}"} for i in range(20)])
    out = tmp_path / "emb"
    embedhub.embed_corpus(tiny_st_dir, path, out, progress=False)
    with pytest.raises(embedhub.FingerprintMismatchError, match=r"source: .*restart=True \(--restart\)"):
        embedhub.embed_corpus(other_st_dir, path, out, progress=False)
    assert main(["embed", "--model", str(other_st_dir), "--input", str(path), "--output", str(out)]) == 1
    assert "--restart" in capsys.readouterr().err
    before = embedhub.read_embeddings(out)  # untouched by the refused runs
    other = embedhub.load(other_st_dir, device="cpu")
    assert main(["embed", "--model", str(other_st_dir), "--input", str(path), "--output", str(out), "--restart"]) == 0
    after = embedhub.read_embeddings(out, expect=other.fingerprint)
    assert before.fingerprint != after.fingerprint and len(after) == 20


def test_folder_of_other_files_is_refused(tmp_path, tiny_st_dir):
    path = _jsonl(tmp_path / "s.jsonl", [{"text": "a"}])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("do not delete")
    with pytest.raises(embedhub.JobError, match=r"not an embedhub embed folder \(it holds thesis.tex\)"):
        embedhub.embed_corpus(tiny_st_dir, path, tmp_path / "mine", restart=True, progress=False)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "do not delete"


def test_unfinished_job_is_not_read_as_complete(tmp_path, tiny_st_dir):
    path = _jsonl(tmp_path / "s.jsonl", [{"text": f"sentence {i}"} for i in range(30)])
    out = tmp_path / "emb"
    embedhub.embed_corpus(tiny_st_dir, path, out, shard_rows=10, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["shards"]["2"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(embedhub.JobError, match=r"unfinished \(2 of 3 shards\)"):
        embedhub.read_embeddings(out)


def test_onnx_backend_on_both_engines(tmp_path, ray_local, tiny_st_dir, sentences):
    pytest.importorskip("onnxruntime")
    from export import export

    folder = export(tiny_st_dir, tmp_path / "onnx", verbose=False)
    path = _jsonl(tmp_path / "s.jsonl", [{"text": t} for t in sentences[:600]])
    local = embedhub.embed_corpus(folder, path, tmp_path / "local", backend="onnx", shard_rows=200, progress=False)
    on_ray = embedhub.embed_corpus(folder, path, tmp_path / "ray", backend="onnx", shard_rows=200, engine="ray",
                                   actors=2, progress=False)
    assert local.fingerprint.backend == "onnx"
    _assert_same(embedhub.read_embeddings(local.output), embedhub.read_embeddings(on_ray.output))
    torch_vectors = embedhub.load(tiny_st_dir, device="cpu").encode(sentences[:600])
    np.testing.assert_allclose(embedhub.read_embeddings(local.output).embeddings, torch_vectors, atol=1e-4, rtol=0)
