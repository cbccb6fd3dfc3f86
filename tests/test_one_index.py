"""One vector index: ``embedhub search``, the retrieval demo's index and ``embedhub embed --index faiss`` rank
the same vectors alike, all through :class:`embedhub.store.VectorIndex`.

200 STS-B sentences are embedded by all-MiniLM-L6-v2 (cosine) and by a copy of it without its Normalize module
whose similarity is ``dot`` (raw vectors, so dot ranks otherwise than cosine). For several queries the CLI search
(over the embed job's vectors, ``--embeddings JOB``), the demo's index (built as the demo builds it) and the
job's saved index give the same top-10 ids in the same order, with the same scores. An index folder refuses the
vectors of another model, and ties rank the lower row first with faiss as with numpy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import read_sts

import embedhub
from embedhub.cli import main
from embedhub.store import VectorIndex

pytest.importorskip("faiss")
pq = pytest.importorskip("pyarrow.parquet")

N_SENTENCES = 200
K = 10
QUERIES = ["A man is playing a musical instrument.", "Someone is cooking food in a kitchen.",
           "Animals running in a field.", "The president gave a speech.", "A woman is riding a horse."]


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    s1, s2, _ = read_sts("test")
    unique = [t for t in dict.fromkeys(s1 + s2) if "  " not in t and t == t.strip()]
    assert len(unique) >= N_SENTENCES
    return unique[:N_SENTENCES]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """all-MiniLM-L6-v2 (cosine), and a copy without its Normalize module that ranks by dot product."""
    dot = tmp_path_factory.mktemp("minilm_dot") / "model"
    shutil.copytree(minilm_path, dot)
    modules = json.loads((dot / "modules.json").read_text())
    (dot / "modules.json").write_text(json.dumps([m for m in modules if not m["type"].endswith("Normalize")]))
    shutil.rmtree(dot / "2_Normalize", ignore_errors=True)
    cfg_path = dot / "config_sentence_transformers.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["similarity_fn_name"] = "dot"
    cfg_path.write_text(json.dumps(cfg))
    return {"cosine": Path(minilm_path), "dot": dot}


def cli_hits(capsys, model_dir: Path, corpus: Path, job: Path, sentences: list[str]) -> list[list[tuple[int, float]]]:
    """``embedhub search`` over the job's vectors: the printed texts as corpus rows, with their scores."""
    capsys.readouterr()
    args = ["search", "--model", str(model_dir), "--device", "cpu", "--corpus", str(corpus), "--embeddings", str(job),
            "--top-k", str(K)]
    for q in QUERIES:
        args += ["--query", q]
    assert main(args) == 0
    row = {s: i for i, s in enumerate(sentences)}
    out: list[list[tuple[int, float]]] = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("query: "):
            out.append([])
        elif line.startswith("  "):
            score, text = line[2:].split("  ", 1)
            out[-1].append((row[text], float(score)))
    assert [len(h) for h in out] == [K] * len(QUERIES)
    return out


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_cli_demo_and_job_index_give_the_same_top10(tmp_path, capsys, model_dirs, sentences, similarity):
    from embedhub.demos.retrieval.index import VectorIndex as DemoIndex

    model = embedhub.load(model_dirs[similarity], device="cpu")
    assert model.similarity_fn_name == similarity
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": s}) + "\n" for i, s in enumerate(sentences)))

    # the embed job's --index faiss output, read back through the store's index (and, below, faiss itself)
    job = tmp_path / "job"
    result = embedhub.embed_corpus(model_dirs[similarity], jsonl, job, id_column="id", index="faiss", progress=False)
    assert result.index == job / "index.faiss"
    saved = VectorIndex.load(job, expect=model.fingerprint)
    assert saved.similarity == similarity and saved.ids == list(range(N_SENTENCES))
    queries = model.encode_query(QUERIES)
    job_hits = [[(int(i), s) for i, s in row] for row in saved.hits(queries, K)]

    # the retrieval demo's index, built as the app builds it
    demo = DemoIndex.open(tmp_path / "demo", model, sentences)
    demo_hits = [[(int(i), s) for i, s in row] for row in demo.query(model, QUERIES, k=K)]

    cli = cli_hits(capsys, model_dirs[similarity], corpus, job, sentences)

    ids = [[i for i, _ in row] for row in job_hits]
    assert [[i for i, _ in row] for row in demo_hits] == ids
    assert [[i for i, _ in row] for row in cli] == ids
    for a, b, c in zip(job_hits, demo_hits, cli):
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
        np.testing.assert_allclose([s for _, s in a], [s for _, s in c], atol=1e-4)  # printed with 4 decimals

    # the same ids as the rows of the job's faiss file with its ids file, searched by faiss directly
    import faiss

    raw = faiss.read_index(str(job / "index.faiss"))
    row_ids = pq.read_table(job / "index_ids.parquet").column("id").to_pylist()
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True) if similarity == "cosine" else queries
    scores, rows = raw.search(np.ascontiguousarray(q, dtype=np.float32), K)
    assert [[row_ids[r] for r in rr] for rr in rows] == ids
    # and the exact ranking of model.similarity over the stored vectors
    sims = np.asarray(model.similarity(queries, embedhub.read_embeddings(job).embeddings))
    assert [list(np.argsort(-r, kind="stable")[:K]) for r in sims] == ids
    if similarity == "dot":  # raw vectors: dot ranks otherwise than cosine would
        assert not np.allclose(np.linalg.norm(saved.stored(), axis=1), 1.0, atol=1e-3)


def test_index_folder_refuses_another_models_vectors(tmp_path, model_dirs, sentences):
    cos = embedhub.load(model_dirs["cosine"], device="cpu")
    dot = embedhub.load(model_dirs["dot"], device="cpu")
    assert cos.fingerprint.id != dot.fingerprint.id
    index = VectorIndex.build(cos.encode_document(sentences[:20]), cos.fingerprint, ids=[f"s{i}" for i in range(20)],
                              similarity="cosine")
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in folder.iterdir()) == ["index.faiss", "index_ids.parquet"]
    back = VectorIndex.load(folder, expect=cos.fingerprint)
    assert back.ids == index.ids and back.fingerprint == cos.fingerprint
    assert back.hits(cos.encode_query([sentences[3]]), 1)[0][0][0] == "s3"
    with pytest.raises(embedhub.FingerprintMismatchError, match=cos.fingerprint.id) as err:
        VectorIndex.load(folder, expect=dot.fingerprint)
    assert dot.fingerprint.id in str(err.value)
    # the embed job's index, read through the job folder, refuses the other model too
    from embedhub.store.job_folder import read_job_index

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in sentences[:20]))
    embedhub.embed_corpus(model_dirs["cosine"], jsonl, tmp_path / "job", index="faiss", progress=False)
    assert len(read_job_index(tmp_path / "job", expect=cos.fingerprint)) == 20
    with pytest.raises(embedhub.FingerprintMismatchError, match=dot.fingerprint.id):
        read_job_index(tmp_path / "job", expect=dot.fingerprint)
    # the manifest records the index files' SHA-256: ids reordered, vectors swapped or another fingerprint written
    # into the ids file are refused, naming the file
    import shutil

    import pyarrow.parquet as pq

    for name, tamper in (("index_ids.parquet", "ids"), ("index.faiss", "vectors"), ("index_ids.parquet", "fp")):
        job = tmp_path / f"job-{tamper}"
        shutil.copytree(tmp_path / "job", job)
        if tamper == "vectors":
            other = VectorIndex.build(cos.encode_document(sentences[20:40]), cos.fingerprint, similarity="cosine")
            other.write_faiss(job / "index.faiss")
        else:
            table = pq.read_table(job / name)
            meta = dict(table.schema.metadata)
            if tamper == "ids":
                table = table.take(list(range(19, -1, -1)))
            else:
                meta[b"embedhub.fingerprint"] = json.dumps(dot.fingerprint.to_dict()).encode()
            pq.write_table(table.replace_schema_metadata(meta), job / name)
        with pytest.raises(embedhub.JobError, match=f"{name} is not the file the job wrote"):
            read_job_index(job, expect=cos.fingerprint)
    # a faiss file larger than its ids need is refused before faiss reads it
    with open(folder / "index.faiss", "ab") as fh:
        fh.write(b"\0" * 8192)
    with pytest.raises(ValueError, match="more than a flat index of 20 rows"):
        VectorIndex.load(folder)


def test_ids_file_without_index_record_is_read_with_its_similarity(tmp_path):
    """Id files written before the index record (older embed jobs) are read with the manifest's similarity."""
    import pyarrow as pa

    fp = embedhub.Fingerprint("memory:0123456789abcdef", None, "embedhub", "torch", "fp32", "mean", True, 4)
    rng = np.random.default_rng(0)
    index = VectorIndex.build(rng.normal(size=(30, 4)).astype(np.float32), fp, ids=np.arange(100, 130),
                              similarity="dot")
    index.save(tmp_path)
    old = pa.table({"id": pa.array(range(100, 130), type=pa.int64())},
                   metadata={b"embedhub.fingerprint": fp.to_json().encode()})
    pq.write_table(old, tmp_path / "index_ids.parquet")
    with pytest.raises(ValueError, match="records no similarity"):
        VectorIndex.load(tmp_path)
    back = VectorIndex.load(tmp_path, similarity="dot", expect=fp)
    q = rng.normal(size=(3, 4)).astype(np.float32)
    assert back.hits(q, 5) == index.hits(q, 5)
    assert back.ids == list(range(100, 130))


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean", "manhattan"])
def test_ties_rank_the_lower_row_first_with_faiss_and_numpy(similarity):
    rng = np.random.default_rng(1)
    vectors = np.repeat(rng.normal(size=(4, 8)).astype(np.float32), 5, axis=0)  # rows 5i..5i+4 are equal
    queries = np.concatenate([vectors[[5, 12]], rng.normal(size=(3, 8)).astype(np.float32)])
    found = {}
    for backend in ("faiss", "numpy"):
        index = VectorIndex(8, similarity=similarity, backend=backend)
        index.add(vectors)
        found[backend] = [index.search(queries, k)[1].tolist() for k in (3, 7, 20)]
    assert found["faiss"] == found["numpy"]
    if similarity != "dot":  # a query's own copies are its nearest rows (under dot, a longer row may beat them)
        assert found["numpy"][0][0] == [5, 6, 7] and found["numpy"][0][1] == [10, 11, 12]
    assert all(len(set(r)) == len(r) for rows in found["numpy"] for r in rows)
