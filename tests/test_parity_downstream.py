"""Every search ranks with the model's similarity, stored vectors keep prompt role, truncation and precision,
and binary indexes rank by Hamming distance: against sentence-transformers on folders it saved itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import embedhub
from embedhub.store import SearchIndex, hamming

st = pytest.importorskip("sentence_transformers")
faiss = pytest.importorskip("faiss")

PROMPTS = {"query": "query: ", "document": "passage: "}
DOCS = [
    "A man is playing a guitar.", "A woman is slicing an onion.", "The cat sleeps on the sofa.",
    "Two dogs run through a field.", "A child is reading a book.", "Someone is cooking pasta.",
    "The train leaves at noon.", "A bird sits on the fence.", "People are dancing at a party.",
    "The stock market fell today.", "A chef is chopping vegetables.", "The sun sets over the sea.",
]
QUERIES = ["someone plays music", "food being prepared", "animals outside", "finance news"]


def _save_peer(folder: Path, tiny_st_dir: Path, similarity: str) -> Path:
    """The tiny sentence-transformers model saved by sentence-transformers with ``similarity`` and prompts."""
    peer = st.SentenceTransformer(str(tiny_st_dir), device="cpu", similarity_fn_name=similarity, prompts=PROMPTS)
    peer.save(str(folder))
    return folder


@pytest.fixture(scope="module")
def peer_dirs(tmp_path_factory, tiny_st_dir) -> dict[str, Path]:
    """One folder per similarity function (same weights), each written by sentence-transformers."""
    base = tmp_path_factory.mktemp("peer_sims")
    first = _save_peer(base / "dot", tiny_st_dir, "dot")
    out = {"dot": first}
    for sim in ("cosine", "euclidean", "manhattan"):
        shutil.copytree(first, base / sim)
        cfg_path = base / sim / "config_sentence_transformers.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["similarity_fn_name"] = sim
        cfg_path.write_text(json.dumps(cfg))
        out[sim] = base / sim
    return out


@pytest.fixture(scope="module")
def dot_model(peer_dirs):
    return embedhub.load(peer_dirs["dot"], device="cpu")


def _peer_ranking(folder: Path, k: int) -> tuple[list[list[int]], object]:
    peer = st.SentenceTransformer(str(folder), device="cpu")
    q = peer.encode_query(QUERIES, convert_to_tensor=True)
    d = peer.encode_document(DOCS, convert_to_tensor=True)
    hits = st.util.semantic_search(q, d, top_k=k, score_function=peer.similarity)
    return [[h["corpus_id"] for h in row] for row in hits], peer


@pytest.mark.parametrize("similarity", ["dot", "cosine", "euclidean", "manhattan"])
def test_index_ranking_equals_peer_semantic_search(peer_dirs, similarity):
    """faiss and numpy indexes rank as sentence-transformers' semantic_search with the model's similarity."""
    folder = peer_dirs[similarity]
    model = embedhub.load(folder, device="cpu")
    assert model.similarity_fn_name == similarity
    expected, peer = _peer_ranking(folder, k=5)
    q, d = model.encode_query(QUERIES), model.encode_document(DOCS)
    if similarity != "cosine":  # dot/euclidean/manhattan models without a Normalize module come back raw
        assert not np.allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-3)
    for backend in ("faiss", "numpy"):
        index = SearchIndex(d.shape[1], similarity=similarity, backend=backend)
        index.add(d)
        scores, rows = index.search(q, 5)
        assert rows.tolist() == expected, (backend, similarity)
        assert index.kind == ("numpy" if backend == "numpy" else {"dot": "IndexFlatIP", "cosine": "IndexFlatIP",
                              "euclidean": "IndexFlatL2", "manhattan": "IndexFlatL1"}[similarity])
        peer_scores = peer.similarity(peer.encode_query(QUERIES), peer.encode_document(DOCS)).numpy()
        np.testing.assert_allclose(scores, np.take_along_axis(peer_scores, rows, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.argsort(-model.similarity(q, d), axis=1, kind="stable")[:, :5], expected)


def test_cli_search_ranks_by_dot_product_with_prompts(tmp_path, peer_dirs, capsys):
    """`embedhub search` on a dot model: the order and scores of the peer's encode_query/encode_document +
    semantic_search(score_function=dot_score)."""
    from embedhub.cli import main

    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    expected, peer = _peer_ranking(peer_dirs["dot"], k=3)
    args = ["search", "--model", str(peer_dirs["dot"]), "--corpus", str(corpus), "--top-k", "3", "--device", "cpu"]
    for q in QUERIES:
        args += ["--query", q]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "IndexFlatIP" in out.err and "dot product" in out.err
    blocks = [b.splitlines()[1:] for b in out.out.strip().split("\n\n")]
    got = [[DOCS.index(line.split("  ", 2)[2]) for line in block] for block in blocks]
    assert got == expected
    pq, pd = peer.encode_query(QUERIES), peer.encode_document(DOCS)
    dots = st.util.dot_score(pq, pd).numpy()
    for qi, block in enumerate(blocks):
        printed = [float(line.split()[0]) for line in block]
        np.testing.assert_allclose(printed, dots[qi, expected[qi]], atol=2e-4)


def test_binary_index_equals_exact_hamming(minilm, sts_test):
    """IndexBinaryFlat and the numpy search return exact Hamming neighbours (ties may order differently:
    each returned row's true distance is checked, and the distance sequence equals numpy's sorted one)."""
    docs = minilm.encode(sts_test[1][:300], precision="binary")
    queries = minilm.encode(sts_test[0][:20])
    exact = hamming(np.packbits(queries > 0, axis=-1), docs)
    for backend in ("faiss", "numpy"):
        index = SearchIndex(minilm.embed_dim, precision="binary", backend=backend)
        index.add(docs)
        scores, rows = index.search(queries, 10)
        assert index.kind == ("IndexBinaryFlat" if backend == "faiss" else "numpy")
        true = np.take_along_axis(exact, rows, 1)
        np.testing.assert_array_equal(-scores, true)
        np.testing.assert_array_equal(true, np.sort(exact, axis=1)[:, :10])
    ub = minilm.encode(sts_test[1][:300], precision="ubinary")
    np.testing.assert_array_equal(hamming(np.packbits(queries > 0, axis=-1), ub), exact)


def test_rescoring_improves_recall_on_sts(minilm, sts_test):
    """Top-10 by binary Hamming distance vs float cosine: rescoring 4x candidates with the float query raises
    recall@10 (real MiniLM vectors of real STS-B sentences)."""
    docs_f = minilm.encode(sts_test[1][:600])
    queries = minilm.encode(sts_test[0][:80])
    truth = np.argsort(-(queries @ docs_f.T), axis=1)[:, :10]
    index = SearchIndex(minilm.embed_dim, precision="ubinary")
    index.add(embedhub.quantize_embeddings(docs_f, "ubinary"))

    def recall(rows: np.ndarray) -> float:
        return float(np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, truth)]))

    plain = recall(index.search(queries, 10)[1])
    rescored = recall(index.search(queries, 10, rescore_multiplier=4)[1])
    assert rescored > plain + 0.05, (plain, rescored)
    assert rescored > 0.8


def test_stored_binary_and_truncated_vectors_keep_their_fingerprint(tmp_path, dot_model):
    """parquet and npy keep int8/uint8 codes with their dtype and packed width; another truncation or precision
    is refused naming both fingerprints; query and document vectors of one model compare."""
    fp = dot_model.fingerprint_for(prompt_name="document", truncate_dim=16, precision="ubinary")
    codes = dot_model.encode_document(DOCS, truncate_dim=16, precision="ubinary")
    assert codes.dtype == np.uint8 and codes.shape == (len(DOCS), 2)
    for name in ("emb.parquet", "emb.npy"):
        path = embedhub.write_embeddings(tmp_path / name, codes, fp)
        back = embedhub.read_embeddings(path, expect=dot_model.fingerprint_for(prompt_name="query", truncate_dim=16,
                                                                              precision="ubinary"))
        assert back.embeddings.dtype == np.uint8 and np.array_equal(back.embeddings, codes)
        assert back.fingerprint.role == "document" and back.fingerprint.precision == "ubinary"
        for other in (dict(truncate_dim=24, precision="ubinary"), dict(truncate_dim=16, precision="binary"),
                      dict(truncate_dim=16)):
            want = dot_model.fingerprint_for(**other)
            with pytest.raises(embedhub.FingerprintMismatchError) as info:
                embedhub.read_embeddings(path, expect=want)
            assert fp.id in str(info.value) and want.id in str(info.value)
    # int8 codes are scaled by each call's own ranges: one text gets other codes in another call, so they are
    # not stored under a fingerprint that would call them comparable
    a, b = dot_model.encode(DOCS[:2], precision="int8"), dot_model.encode(DOCS, precision="int8")
    assert not np.array_equal(a[0], b[0])
    for precision, codes in (("int8", b), ("uint8", dot_model.encode(DOCS, precision="uint8"))):
        with pytest.raises(embedhub.EmbeddingsFileError, match=f"{precision} codes are not stored"):
            embedhub.write_embeddings(tmp_path / "i8.parquet", codes, dot_model.fingerprint_for(precision=precision))
        assert not (tmp_path / "i8.parquet").exists()
    with pytest.raises(ValueError, match="int8"):  # float vectors under a binary fingerprint
        embedhub.write_embeddings(tmp_path / "bad.npy", dot_model.encode(DOCS), fp)


def test_embed_job_binary_faiss_index_and_refused_resume(tmp_path, peer_dirs, dot_model, capsys):
    """`embed` with a prompt, truncation and ubinary precision: shards of packed codes equal to encode, an
    IndexBinaryFlat over them; a re-run with another truncation is refused; int8 jobs are refused."""
    from embedhub.cli import main

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in DOCS))
    out = tmp_path / "job"
    args = ["embed", "--model", str(peer_dirs["dot"]), "--input", str(data), "--output", str(out), "--device", "cpu",
            "--prompt-name", "document", "--truncate-dim", "16", "--precision", "ubinary", "--index", "faiss"]
    assert main(args) == 0
    stored = embedhub.read_embeddings(out)
    expected = dot_model.encode(DOCS, prompt_name="document", truncate_dim=16, precision="ubinary")
    np.testing.assert_array_equal(stored.embeddings, expected)
    assert stored.fingerprint == dot_model.fingerprint_for(prompt_name="document", truncate_dim=16,
                                                           precision="ubinary")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["index"]["kind"] == "IndexBinaryFlat" and manifest["index"]["similarity"] == "dot"
    index = SearchIndex.load(out / "index.faiss", 16, similarity="dot", precision="ubinary")
    np.testing.assert_array_equal(index.stored(), expected)
    q = dot_model.encode_query(QUERIES, truncate_dim=16)
    scores, rows = index.search(q, 3)
    np.testing.assert_array_equal(-scores, np.take_along_axis(hamming(np.packbits(q > 0, axis=-1), expected), rows, 1))
    again = [a if a != "16" else "24" for a in args]
    capsys.readouterr()
    assert main(again) == 1  # another truncation: another fingerprint, refused without --restart
    err = capsys.readouterr().err
    assert "FingerprintMismatchError" in err and stored.fingerprint.id in err
    assert dot_model.fingerprint_for(prompt_name="document", truncate_dim=24, precision="ubinary").id in err
    # query vectors compare with document vectors, but one job's shards share one prompt
    assert main([a if a != "document" else "query" for a in args]) == 2
    assert "prompt_role: 'document' then, 'query' now" in capsys.readouterr().err
    with pytest.raises(ValueError, match="calibrates"):
        embedhub.embed_corpus(dot_model, data, tmp_path / "i8", precision="int8", progress=False)


def test_cli_encode_options_give_encode_and_its_fingerprint(tmp_path, peer_dirs, dot_model):
    """`embedhub encode --prompt-name --truncate-dim --precision` writes what encode returns, fingerprinted."""
    from embedhub.cli import main

    src = tmp_path / "in.txt"
    src.write_text("\n".join(DOCS) + "\n")
    out = tmp_path / "out.npy"
    assert main(["encode", "--model", str(peer_dirs["dot"]), "--input", str(src), "--output", str(out), "--device",
                 "cpu", "--prompt-name", "query", "--truncate-dim", "8", "--precision", "binary"]) == 0
    stored = embedhub.read_embeddings(out, expect=dot_model.fingerprint_for(truncate_dim=8, precision="binary"))
    np.testing.assert_array_equal(stored.embeddings,
                                  dot_model.encode(DOCS, prompt_name="query", truncate_dim=8, precision="binary"))
    assert stored.fingerprint.role == "query" and stored.embeddings.dtype == np.int8


def test_cli_search_binary_with_stored_embeddings(tmp_path, peer_dirs, dot_model, capsys):
    """`search --precision binary --embeddings`: the stored codes searched by Hamming distance with rescoring;
    a file of another truncation is refused naming both fingerprints."""
    from embedhub.cli import main

    corpus = tmp_path / "docs.txt"
    corpus.write_text("\n".join(DOCS) + "\n")
    emb = tmp_path / "docs.parquet"
    base = ["--model", str(peer_dirs["dot"]), "--device", "cpu"]
    assert main(["encode", *base, "--input", str(corpus), "--output", str(emb), "--prompt-name", "document",
                 "--truncate-dim", "16", "--precision", "binary"]) == 0
    capsys.readouterr()
    search = ["search", *base, "--corpus", str(corpus), "--embeddings", str(emb), "--query", QUERIES[0],
              "--top-k", "3", "--precision", "binary", "--truncate-dim", "16"]
    assert main(search) == 0
    out = capsys.readouterr()
    assert "IndexBinaryFlat" in out.err and "rescored" in out.err
    q = dot_model.encode_query([QUERIES[0]], truncate_dim=16)
    index = SearchIndex(16, precision="binary", backend="numpy")
    index.add(dot_model.encode(DOCS, prompt_name="document", truncate_dim=16, precision="binary"))
    scores, rows = index.search(q, 3, rescore_multiplier=4)
    printed = out.out.strip().splitlines()[1:]
    np.testing.assert_allclose([float(line.split()[0]) for line in printed], scores[0], atol=1e-4)
    assert main([*search[:-1], "24"]) == 2
    err = capsys.readouterr().err
    assert dot_model.fingerprint_for(truncate_dim=24, precision="binary").id in err
    assert dot_model.fingerprint_for(truncate_dim=16, precision="binary").id in err
    # a float index ranks exactly: a rescore multiplier asked for there is refused, not ignored
    assert main(["search", *base, "--corpus", str(corpus), "--query", QUERIES[0], "--rescore-multiplier", "3"]) == 2
    assert "--rescore-multiplier" in capsys.readouterr().err
