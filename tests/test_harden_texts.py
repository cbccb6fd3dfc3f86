"""Texts are bounded by characters before tokenising, with the embedding of tokenising them whole.

Parity is checked against sentence-transformers itself on long real texts and pathological ones, and
against each tokenizer path tokenising the whole text (HF fast tokenizers, transformers CLIP, open_clip's
SimpleTokenizer and its HF tokenizer route). Memory: a 20 MB text encodes in a child process under a
peak-RSS bound relative to a child encoding a short text."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import stsb_rows

import embedhub
from embedhub.modules import preprocess as _preprocess

FORTUNES = Path("/usr/share/games/fortunes")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _real_text(n_chars: int) -> str:
    """Real English: the fortune files joined (else STS sentences repeated)."""
    parts: list[str] = []
    if FORTUNES.is_dir():
        for f in sorted(FORTUNES.iterdir()):
            if f.is_file() and not f.suffix:
                parts.append(f.read_text(encoding="utf-8", errors="replace"))
            if sum(map(len, parts)) > n_chars:
                break
    if not parts:
        parts = [a for a, _, _ in stsb_rows("test")]  # skips, naming `embedhub data stsb`, when absent
    text = " ".join(parts)
    while len(text) < n_chars:
        text += " " + text
    return text[:n_chars]


def _pathological() -> dict[str, str]:
    rnd = random.Random(0)
    words = _real_text(200_000).split()
    return {
        "real": _real_text(150_000),
        "no spaces": "".join(words[:20_000]),
        "1 MB word then words": "x" * 1_000_000 + " the words after the long one",
        "1 MB word alone": "y" * (1 << 20),
        "CJK": "".join(chr(0x4E00 + rnd.randrange(3000)) for _ in range(40_000)),
        "emoji": "".join(chr(0x1F600 + rnd.randrange(80)) + rnd.choice(["", " ", "\u200d"]) for _ in range(30_000)),
        "combining": " ".join("e" + "\u0301" * rnd.randrange(1, 300) for _ in range(2_000)),
        "whitespace run": "first" + " " * 300_000 + "second third",
        "newlines and tabs": "\n\t ".join(words[:20_000]),
    }


@pytest.fixture(scope="module")
def st_model(minilm_path):
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_path), device="cpu")


@pytest.mark.parametrize("case", list(_pathological()))
def test_long_texts_embed_as_sentence_transformers(minilm, st_model, case):
    text = _pathological()[case]
    ours = minilm.encode([text, "a short one"])
    ref = st_model.encode([text, "a short one"], convert_to_numpy=True)
    assert _cos(ours[0], ref[0]) > 1 - 1e-6, case
    assert _cos(ours[1], ref[1]) > 1 - 1e-6


def test_the_tokenizer_never_sees_the_whole_long_text(minilm, monkeypatch):
    pre = minilm.preprocessors["text"]
    seen: list[int] = []
    encode_batch = pre.tokenizer.encode_batch

    def spy(texts, *a, **k):
        seen.extend(len(t) for t in texts)
        return encode_batch(texts, *a, **k)

    tok = pre.tokenizer
    pre._settled(["x"])  # its own untruncated copy of the tokenizer, made before the spy is in place
    spy_one = staticmethod(lambda text, *a, **k: spy([text], *a, **k)[0])  # few texts go one by one
    monkeypatch.setattr(pre, "tokenizer", type("T", (), {"encode_batch": staticmethod(spy), "encode": spy_one})())
    text = "word " * 400_000  # 2 MB
    ids = pre.tokenize([text, "short"])
    monkeypatch.setattr(pre, "tokenizer", tok)
    assert ids == [tok.encode(text).ids, tok.encode("short").ids]
    assert max(seen) <= _preprocess.CHARS_PER_TOKEN * pre.max_length  # the cut happened before tokenising


def _tokenize_whole(pre, texts, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(_preprocess, "bound_texts", lambda texts, *a: texts)
        return pre.tokenize(texts)


def _cases_for(max_length: int) -> list[str]:
    rnd = random.Random(1)
    real = _real_text(60 * max_length * _preprocess.CHARS_PER_TOKEN)
    return [
        real,
        real.replace(" ", ""),
        "z" * (40 * max_length * _preprocess.CHARS_PER_TOKEN) + " tail words here",
        "".join(chr(0x4E00 + rnd.randrange(3000)) for _ in range(30 * max_length)),
        " ".join("a" + "\u0308" * rnd.randrange(1, 60) for _ in range(20 * max_length)),
        "one" + "\n" * (70 * max_length * _preprocess.CHARS_PER_TOKEN) + "two three",
        "short text",
    ]


def test_clip_tokenizer_path_cut_gives_the_same_ids(hf_clip_dir, monkeypatch):
    pre = embedhub.load(hf_clip_dir, device="cpu").preprocessors["text"]
    texts = _cases_for(pre.max_length)
    assert pre.tokenize(texts) == _tokenize_whole(pre, texts, monkeypatch)


def test_open_clip_simple_tokenizer_cut_gives_the_same_ids(open_clip_dir, monkeypatch):
    pre = embedhub.load(open_clip_dir, device="cpu").preprocessors["text"]
    assert type(pre._tok).__name__ == "SimpleTokenizer"
    texts = [t[:40_000] for t in _cases_for(pre.max_length)]  # open_clip's BPE runs in Python: kept short
    assert pre.tokenize(texts) == _tokenize_whole(pre, texts, monkeypatch)


def test_open_clip_hf_tokenizer_cut_gives_the_same_ids(open_clip_dir, minilm_path, tmp_path, monkeypatch):
    folder = tmp_path / "m"
    shutil.copytree(open_clip_dir, folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_path / name, folder / name)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"].update(hf_tokenizer_name="sentence-transformers/all-MiniLM-L6-v2")
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    pre = embedhub.load(folder, device="cpu").preprocessors["text"]
    texts = _cases_for(pre.max_length)
    ours = pre.tokenize(texts)
    assert ours == _tokenize_whole(pre, texts, monkeypatch)
    assert len(ours[0]) == pre.max_length


_CHILD = """
import resource, sys, numpy as np, embedhub
m = embedhub.load(sys.argv[1], device="cpu")
texts = {"benign": lambda: "a short text", "words": lambda: "word " * 4_000_000,
         "spaces": lambda: "a" + " " * 20_000_000 + "b", "word": lambda: "w" * 20_000_000,
         "surrogate": lambda: "\u00e9" * 10_000_000 + "\\udc80"}
for kind in sys.argv[2:]:
    try:
        v = m.encode([texts[kind](), "x"])
        print(kind, "ok", bool(np.isfinite(v).all()))
    except embedhub.InputError as exc:
        why = "unicode" if "not valid Unicode" in str(exc) else "unsettled" if "strip or shorten" in str(exc) else "?"
        print(kind, "error", exc.index, why)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def _child(model: Path, *kinds: str) -> tuple[list[str], int]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(model), *kinds], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    return lines[:-1], int(lines[-1])


def test_20_mb_texts_encode_under_a_memory_bound(minilm_path):
    _, baseline = _child(minilm_path, "benign")
    result, peak = _child(minilm_path, "words", "spaces", "word", "surrogate")
    assert result == ["words ok True", "spaces ok True", "word ok True", "surrogate error 0 unicode"], result
    # the texts themselves are 20 MB (plus a copy or two); tokenising "word " * 4M whole took 3.6 GB
    assert peak < baseline + 300, (peak, baseline)


def test_megabytes_of_whitespace_before_the_words_keep_the_words(minilm):
    """The first 2 Mi characters are whitespace (no token): the text's embedding is still that of its words."""
    words = "the piano was out of tune"
    text = " " * (_preprocess.MAX_TEXT_CHARS + 100_000) + words + "\n" * 3_000_000 + " and loud"
    ours = minilm.encode([text, words + " and loud"])
    assert _cos(ours[0], ours[1]) > 1 - 1e-6


def test_a_text_whose_cut_would_drop_kept_tokens_is_an_error_naming_it(minilm):
    """2 Mi characters the tokenizer drops (zero-width spaces, not whitespace) before the words: no prefix
    gives the whole text's tokens, so an InputError naming the item, never the embedding of a cut text."""
    text = "\u200b" * (_preprocess.MAX_TEXT_CHARS + 100_000) + " the piano was out of tune"
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\].*strip or shorten") as info:
        minilm.encode(["a short one", text])
    assert info.value.index == 1
