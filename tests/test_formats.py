"""Parity with the peer libraries, each on the real files of its own format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import unique_rows

import embedhub
from embedhub import EmbeddingModel


def _normed(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(t.float(), dim=-1).detach().numpy()


# ---------------------------------------------------------------- sentence-transformers
def test_minilm_matches_sentence_transformers_on_stsb(minilm_path, sts_test, minilm_sts_test):
    st = pytest.importorskip("sentence_transformers")
    s1, s2, _ = sts_test
    sentences = list(dict.fromkeys(s1 + s2))
    peer = st.SentenceTransformer(str(minilm_path), device="cpu")
    ref = peer.encode(sentences, batch_size=64, normalize_embeddings=True)
    ours = unique_rows(sentences, (s1, minilm_sts_test[0]), (s2, minilm_sts_test[1]))  # minilm.encode's output
    assert ours.dtype == np.float32 and ours.shape == (len(sentences), 384)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999, f"worst row {int(cos.argmin())}: cosine {cos.min():.7f}"


def test_minilm_stsb_spearman(sts_test, minilm_sts_test):
    from scipy.stats import spearmanr

    _, _, gold = sts_test
    a, b = minilm_sts_test  # minilm.encode(s1), minilm.encode(s2)
    rho = 100 * spearmanr((a * b).sum(1), gold).statistic
    assert abs(rho - 82.03) <= 0.02, rho


def test_minilm_properties_and_truncation(minilm):
    assert minilm.modalities == ("text",)
    assert minilm.embed_dim == 384 and minilm.max_seq_length == 256
    assert minilm.format == "sentence-transformers"
    long = "word " * 1000
    truncated = " ".join(["word"] * 254)  # [CLS] + 254 tokens + [SEP] = 256
    np.testing.assert_allclose(minilm.encode(long), minilm.encode(truncated), atol=1e-6)


def test_order_restored_and_batch_size_invariant(minilm, sts_test):
    texts = sts_test[0][:70]
    full = minilm.encode(texts, batch_size=64)
    for i in (0, 17, 69):
        np.testing.assert_allclose(full[i], minilm.encode(texts[i]), atol=2e-6)
    np.testing.assert_allclose(minilm.encode(texts, batch_size=3), full, atol=2e-6)
    np.testing.assert_allclose(minilm.encode(texts, batch_size=64, max_tokens=200), full, atol=2e-6)
    rev = minilm.encode(texts[::-1], batch_size=64)
    np.testing.assert_allclose(rev[::-1], full, atol=2e-6)


def test_unnormalized_and_torch_output(minilm):
    # all-MiniLM-L6-v2 has a Normalize module: its raw output is unit length as well
    raw = minilm.encode(["a cat", "a dog"], normalize=False, convert_to="torch")
    assert isinstance(raw, torch.Tensor) and raw.dtype == torch.float32 and raw.device.type == "cpu"
    np.testing.assert_allclose(raw.norm(dim=1).numpy(), [1, 1], atol=1e-5)


def test_similarity(minilm):
    emb = minilm.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."])
    sim = EmbeddingModel.similarity(emb, emb)
    assert sim.shape == (3, 3)
    np.testing.assert_allclose(np.diag(sim), 1, atol=1e-5)
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_sentence_transformers_dense_and_pooling_modes(tmp_path, minilm_path):
    """A real sentence-transformers model with CLS+mean pooling and a Dense (Tanh) head, saved by the peer."""
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.sentence_transformer.modules import Pooling

    base = st.SentenceTransformer(str(minilm_path), device="cpu")
    torch.manual_seed(0)
    peer = st.SentenceTransformer(
        modules=[base[0], Pooling(384, pooling_mode=("cls", "mean")), Dense(768, 64)], device="cpu"
    )
    peer.save(str(tmp_path))
    model = embedhub.load(tmp_path, device="cpu")
    texts = ["A quick brown fox.", "Tanh heads squash values.", "short"]
    ref = peer.encode(texts, normalize_embeddings=True)
    ours = model.encode(texts)
    assert model.embed_dim == 64
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# ---------------------------------------------------------------- open_clip
def test_open_clip_parity(open_clip_dir, photos):
    open_clip = pytest.importorskip("open_clip")
    peer, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    peer.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")
    texts = ["a photo of an astronaut", "a cat", "a cup of coffee on a table, seen from above", "rocket"]

    model = embedhub.load(open_clip_dir, device="cpu")
    assert model.format == "open_clip" and model.modalities == ("text", "image") and model.embed_dim == 32
    with torch.no_grad():
        ref_img = _normed(peer.encode_image(torch.stack([preprocess(p) for p in photos])))
        ref_txt = _normed(peer.encode_text(tokenizer(texts)))
    np.testing.assert_allclose(model.encode_image(photos), ref_img, atol=1e-5)
    np.testing.assert_allclose(model.encode_text(texts), ref_txt, atol=1e-5)
    # mixed inputs keep their order
    mixed = model.encode([texts[0], photos[1], texts[1]])
    np.testing.assert_allclose(mixed, np.stack([ref_txt[0], ref_img[1], ref_txt[1]]), atol=1e-5)
    assert model.logit_scale == pytest.approx(float(peer.logit_scale.exp().detach()))


def test_zero_shot_matches_clip_recipe(open_clip_dir, photos):
    model = embedhub.load(open_clip_dir, device="cpu")
    labels = ["astronaut", "cat", "coffee", "rocket"]
    templates = ["a photo of a {}.", "a picture of the {}."]
    probs = model.zero_shot(photos, labels, templates)
    assert probs.shape == (4, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    txt = model.encode([t.format(lab) for lab in labels for t in templates]).reshape(4, 2, -1).mean(1)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    logits = model.logit_scale * model.encode(photos) @ txt.T
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)
    assert model.zero_shot(photos[0], labels).shape == (4,)


# ---------------------------------------------------------------- transformers CLIP
def test_transformers_clip_parity(hf_clip_dir, photos):
    transformers = pytest.importorskip("transformers")
    peer = transformers.CLIPModel.from_pretrained(hf_clip_dir).eval()
    processor = transformers.CLIPProcessor.from_pretrained(hf_clip_dir)
    texts = ["a photo of an astronaut", "a cat", "a cup of coffee on a wooden table", "rocket launch"]
    with torch.no_grad():
        pix = processor(images=photos, return_tensors="pt")["pixel_values"]
        ref_img = peer.get_image_features(pixel_values=pix)
        tok = processor(text=texts, padding=True, return_tensors="pt")
        ref_txt = peer.get_text_features(**tok)
    ref_img = _normed(getattr(ref_img, "pooler_output", ref_img))
    ref_txt = _normed(getattr(ref_txt, "pooler_output", ref_txt))

    model = embedhub.load(hf_clip_dir, device="cpu")
    assert model.format == "transformers-clip" and model.embed_dim == 24
    np.testing.assert_allclose(model.encode_image(photos), ref_img, atol=1e-5)
    np.testing.assert_allclose(model.encode_text(texts), ref_txt, atol=1e-5)
    assert model.max_seq_length == 32


def test_image_input_kinds_agree(open_clip_dir, photos, tmp_path):
    import io

    model = embedhub.load(open_clip_dir, device="cpu")
    img = photos[1]
    path = tmp_path / "cat.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    ref = model.encode(img)
    assert ref.shape == (32,)
    for variant in (np.asarray(img), path, buf.getvalue()):
        np.testing.assert_allclose(model.encode(variant), ref, atol=1e-6)
    batch = np.stack([np.asarray(img)] * 2)  # NHWC uint8 batch
    assert model.encode(batch).shape == (2, 32)


# ---------------------------------------------------------------- embedhub's own format
def test_own_format_roundtrip_from_sentence_transformers(minilm, tmp_path, sts_test):
    out = minilm.save_pretrained(tmp_path / "minilm-embedhub")
    assert (out / "embedhub_config.json").is_file() and (out / "model.safetensors").is_file()
    again = embedhub.load(out, device="cpu")
    assert again.format == "embedhub" and again.max_seq_length == 256
    texts = sts_test[0][:50]
    np.testing.assert_allclose(again.encode(texts), minilm.encode(texts), atol=1e-6)


def test_own_format_with_timm_image_tower(tmp_path, minilm, photos):
    """Text (transformers) + image (timm) towers with projection heads, as the recipes will write them."""
    timm = pytest.importorskip("timm")
    from embedhub.modules import Head, ImageConfig, ImagePreprocessor, TimmImageTower

    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    image = TimmImageTower(backbone, Head([{"in_features": backbone.num_features, "out_features": 384}]))
    pre = ImagePreprocessor(ImageConfig(size=64, crop_size=(64, 64), mean=(0.5,) * 3, std=(0.5,) * 3))
    model = EmbeddingModel(
        {"text": minilm.towers["text"], "image": image},
        {"text": minilm.preprocessors["text"], "image": pre},
        embed_dim=384,
        name="lit",
        format="embedhub",
        logit_scale=50.0,
        templates=["{}"],
    )
    model.save_pretrained(tmp_path / "lit")
    again = embedhub.load(tmp_path / "lit", device="cpu")
    assert again.modalities == ("text", "image") and again.logit_scale == 50.0 and again.templates == ("{}",)
    np.testing.assert_allclose(again.encode(photos), model.encode(photos), atol=1e-6)
    np.testing.assert_allclose(again.encode(["a cat"]), model.encode(["a cat"]), atol=1e-6)
