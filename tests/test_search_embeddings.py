"""``embedhub search --embeddings``: the corpus embedded once by ``embedhub encode``, then searched without
embedding it again; files of another corpus, model or corpus prompt are refused by name.

Real models only: the packaged all-MiniLM-L6-v2 on sentences of the retrieval demo's WordNet corpus, and
tiny sentence-transformers models built by conftest (one saved with query/document prompts).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from embedhub.cli import main

ROOT = Path(__file__).resolve().parents[1]
WORDNET = ROOT / "demos" / "retrieval" / "texts" / "wordnet_examples.txt"
QUERY = "the piano was out of tune"
HIT = "the piano was jarringly out of tune"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """60 sentences of the WordNet corpus (the README's search example), the expected hit among them."""
    lines = [t for t in WORDNET.read_text(encoding="utf-8").splitlines() if t.strip()]
    texts = list(dict.fromkeys(lines[:59] + [HIT]))
    path = tmp_path_factory.mktemp("corpus") / "wordnet.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


def _search(capsys, model: str | Path, corpus: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "search", "--model", str(model), "--device", "cpu", "--corpus", str(corpus),
               "--query", QUERY, "--top-k", "3", *extra)


def test_encode_once_then_search_gives_the_same_hits_without_embedding_the_corpus(corpus, tmp_path, capsys):
    emb = tmp_path / "wordnet.parquet"
    code, _, err = run(capsys, "encode", "--model", "all-MiniLM-L6-v2", "--device", "cpu", "--input", str(corpus),
                       "--output", str(emb))
    assert code == 0, err
    code, fresh, err_fresh = _search(capsys, "all-MiniLM-L6-v2", corpus)
    assert code == 0, err_fresh
    code, stored, err = _search(capsys, "all-MiniLM-L6-v2", corpus, "--embeddings", str(emb))
    assert code == 0, err
    assert stored.splitlines()[1].split(None, 1)[1] == HIT
    # the same hits and scores (4 decimals) as embedding the corpus on the call
    assert stored == fresh
    assert "embedding text" in err_fresh and "embedding text" not in err  # the corpus was not embedded again
    assert f"(corpus vectors from {emb})" in err and "searched 60 texts for 1 query in" in err


def test_embeddings_of_another_corpus_are_refused_naming_the_row(corpus, tmp_path, capsys):
    other = tmp_path / "reversed.txt"
    other.write_text("\n".join(reversed(corpus.read_text(encoding="utf-8").splitlines())) + "\n", encoding="utf-8")
    emb = tmp_path / "reversed.parquet"
    assert run(capsys, "encode", "--model", "all-MiniLM-L6-v2", "--device", "cpu", "--input", str(other),
               "--output", str(emb))[0] == 0
    code, out, err = _search(capsys, "all-MiniLM-L6-v2", corpus, "--embeddings", str(emb))
    assert code == 2 and out == ""
    assert f"--embeddings {emb} row 0 embeds {HIT!r}" in err and f"line 1 of {corpus}" in err


def test_npy_embeddings_say_only_their_row_count_is_checked(corpus, tmp_path, capsys):
    emb = tmp_path / "wordnet.npy"
    assert run(capsys, "encode", "--model", "all-MiniLM-L6-v2", "--device", "cpu", "--input", str(corpus),
               "--output", str(emb))[0] == 0
    code, out, err = _search(capsys, "all-MiniLM-L6-v2", corpus, "--embeddings", str(emb))
    assert code == 0 and out.splitlines()[1].endswith(HIT)
    assert f"--embeddings {emb} records no inputs, so only its row count is checked" in err


def test_npy_of_another_corpus_with_as_many_rows_is_refused(corpus, tmp_path, capsys):
    """A .npy records no texts: the rows search embeds again show that it holds another corpus's vectors."""
    other = tmp_path / "other.txt"
    lines = [t for t in WORDNET.read_text(encoding="utf-8").splitlines() if t.strip()]
    n = len(corpus.read_text(encoding="utf-8").splitlines())
    other.write_text("\n".join(lines[1000:1000 + n]) + "\n", encoding="utf-8")
    emb = tmp_path / "other.npy"
    assert run(capsys, "encode", "--model", "all-MiniLM-L6-v2", "--device", "cpu", "--input", str(other),
               "--output", str(emb))[0] == 0
    code, out, err = _search(capsys, "all-MiniLM-L6-v2", corpus, "--embeddings", str(emb))
    assert code == 2 and out == ""
    assert f"--embeddings {emb} row 0 is not the embedding of item 0 of the corpus" in err


def test_embeddings_of_another_model_are_refused_by_fingerprint(corpus, tiny_st_dir, tmp_path, capsys):
    emb = tmp_path / "tiny.parquet"
    assert run(capsys, "encode", "--model", str(tiny_st_dir), "--device", "cpu", "--input", str(corpus),
               "--output", str(emb))[0] == 0
    code, out, err = _search(capsys, "all-MiniLM-L6-v2", corpus, "--embeddings", str(emb))
    assert code == 2 and out == ""
    assert f"--embeddings {emb} holds embeddings of fingerprint" in err and "--model all-MiniLM-L6-v2" in err


@pytest.fixture(scope="module")
def prompted(tmp_path_factory, tiny_st_dir) -> Path:
    """tiny_st_dir saved by sentence-transformers with a query and a document prompt."""
    st = pytest.importorskip("sentence_transformers")
    folder = tmp_path_factory.mktemp("prompted") / "m"
    st.SentenceTransformer(str(tiny_st_dir), device="cpu",
                           prompts={"query": "query: ", "document": "passage: "}).save(str(folder))
    return folder


def test_corpus_vectors_without_the_document_prompt_are_refused(corpus, prompted, tmp_path, capsys):
    """search encodes its corpus with the model's document prompt: a file encoded without it is refused,
    naming the option; encoded with it, the file gives the hits of a search that embeds the corpus."""
    plain, documents = tmp_path / "plain.parquet", tmp_path / "documents.parquet"
    for out, extra in ((plain, ()), (documents, ("--prompt-name", "document"))):
        code, _, err = run(capsys, "encode", "--model", str(prompted), "--device", "cpu", "--input", str(corpus),
                           "--output", str(out), *extra)
        assert code == 0, err
    code, out, err = _search(capsys, prompted, corpus, "--embeddings", str(plain))
    assert code == 2 and out == ""
    assert "was encoded with prompt (none) but search puts prompt document before every corpus text" in err
    assert f"`embedhub encode --model {prompted} --prompt-name document ...`" in err
    code, stored, err = _search(capsys, prompted, corpus, "--embeddings", str(documents))
    assert code == 0, err
    assert stored == _search(capsys, prompted, corpus)[1]
    # the file made without a prompt matches a search told to put none before the corpus
    code, _, err = _search(capsys, prompted, corpus, "--embeddings", str(plain), "--document-prompt", "")
    assert code == 0, err
