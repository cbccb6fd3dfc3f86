"""transformers SiglipModel / Siglip2Model folders against transformers itself: ``get_text_features`` /
``get_image_features`` on the processor's own inputs, and SigLIP's sigmoid probabilities for ``zero_shot``."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub

transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a Cat!", "hello", "the quick brown fox jumps over the lazy dog " * 8, "rocket, launch; pad"]
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _images() -> list:
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(40, 50), (64, 32), (97, 31)]]


def _set_logits(model) -> None:
    """SigLIP initialises logit_scale and logit_bias to 0; give them values a dropped bias would show."""
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        model.logit_bias.fill_(-1.3)


def _siglip_tokenizer(folder: Path):
    """A real SigLIP sentencepiece tokenizer (transformers' SiglipTokenizer) on a tiny trained vocabulary."""
    spm = pytest.importorskip("sentencepiece")
    corpus = ["a photo of a cat", "a dog running in the park", "the quick brown fox jumps over the lazy dog",
              "hello world", "an astronaut riding a horse", "coffee cup on a table", "rocket launch"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
                                   eos_piece="</s>", unk_piece="<unk>", hard_vocab_limit=False, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(buf.getvalue())
    return transformers.SiglipTokenizer(vocab_file=str(folder / "spm.model"), model_max_length=16)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    """A tiny random SiglipModel + SiglipProcessor (sentencepiece tokenizer) saved by transformers."""
    folder = tmp_path_factory.mktemp("siglip")
    tok = _siglip_tokenizer(tmp_path_factory.mktemp("spm"))
    torch.manual_seed(0)
    cfg = transformers.SiglipConfig(
        text_config=dict(vocab_size=tok.vocab_size, max_position_embeddings=16, **TINY),
        vision_config=dict(image_size=32, patch_size=8, **TINY))
    model = transformers.SiglipModel(cfg).eval()
    _set_logits(model)
    proc = transformers.SiglipProcessor(image_processor=transformers.SiglipImageProcessor(
        size={"height": 32, "width": 32}), tokenizer=tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def siglip2_dir(tmp_path_factory) -> Path:
    """A tiny random Siglip2Model + Siglip2Processor (NaFlex images, Gemma-style BPE tokenizer), saved by
    transformers."""
    folder = tmp_path_factory.mktemp("siglip2")
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for c in "abcdefghijklmnopqrstuvwxyz▁":
        vocab[c] = len(vocab)
    merges = [("▁", "a"), ("t", "h"), ("th", "e"), ("▁", "th")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = transformers.Siglip2Tokenizer(vocab=vocab, merges=merges)
    torch.manual_seed(1)
    cfg = transformers.Siglip2Config(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=64, **TINY),
        vision_config=dict(patch_size=16, num_patches=64, **TINY))
    model = transformers.Siglip2Model(cfg).eval()
    _set_logits(model)
    proc = transformers.Siglip2Processor(image_processor=transformers.Siglip2ImageProcessor(), tokenizer=tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def _reference(folder: Path, texts: list[str], images: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """transformers' own numbers: features of the processor's inputs, and sigmoid(logits_per_image)."""
    model = transformers.AutoModel.from_pretrained(str(folder)).eval()
    proc = transformers.AutoProcessor.from_pretrained(str(folder))
    # SigLIP is called with padding="max_length" (its model cards; Siglip2Processor does it by default)
    kw = {"padding": "max_length", "truncation": True} if isinstance(model, transformers.SiglipModel) else {}
    ti = proc(text=texts, return_tensors="pt", **kw)
    ii = proc(images=images, return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**ti).pooler_output.numpy()
        image = model.get_image_features(**ii).pooler_output.numpy()
        probs = torch.sigmoid(model(**ti, **ii).logits_per_image).numpy()
    return text, image, probs


@pytest.mark.parametrize("fixture", ["siglip_dir", "siglip2_dir"])
def test_towers_and_sigmoid_match_transformers(fixture, request):
    folder = request.getfixturevalue(fixture)
    images = _images()
    ref_text, ref_image, ref_probs = _reference(folder, TEXTS, images)
    model = embedhub.load(folder)
    for bs in (1, 3):
        assert _cos(model.encode(TEXTS, normalize=False, batch_size=bs), ref_text).min() > 1 - 1e-5
        assert _cos(model.encode(images, normalize=False, batch_size=bs), ref_image).min() > 1 - 1e-5
    np.testing.assert_allclose(model.encode(TEXTS, normalize=False), ref_text, rtol=1e-4, atol=1e-5)
    # the bias is the model's own, kept; zero-shot is SigLIP's per-label sigmoid, not a softmax
    assert model.logit_bias == pytest.approx(-1.3)
    assert model.logit_scale == pytest.approx(float(np.exp(1.7)), rel=1e-6)
    probs = model.zero_shot(images, TEXTS, templates=["{}"])
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    assert not np.allclose(probs.sum(-1), 1.0)


def test_siglip_pads_to_max_length_with_its_pad_token(siglip_dir):
    model = embedhub.load(siglip_dir)
    pre = model.preprocessors["text"]
    tok = transformers.AutoTokenizer.from_pretrained(str(siglip_dir))
    batch = pre.collate(pre.tokenize(["hello", "a cat"]))
    ref = tok(["hello", "a cat"], padding="max_length", truncation=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])
    assert batch["input_ids"].shape == (2, 16) and pre.pad_id == tok.pad_token_id != 0


def test_siglip2_pads_on_the_tokenizers_side(siglip2_dir):
    tok = transformers.AutoTokenizer.from_pretrained(str(siglip2_dir))
    pre = embedhub.load(siglip2_dir).preprocessors["text"]
    batch = pre.collate(pre.tokenize(["the cat", "a"]))
    ref = tok(["the cat", "a"], padding="max_length", max_length=64, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])


def test_clip_zero_shot_keeps_softmax(hf_clip_dir, photos):
    model = embedhub.load(hf_clip_dir)
    assert model.logit_bias is None
    probs = model.zero_shot(photos[:2], ["cat", "dog", "rocket"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_vision_only_siglip_is_refused_by_its_architecture(tmp_path):
    cfg = transformers.SiglipVisionConfig(image_size=32, patch_size=8, **TINY)
    transformers.SiglipVisionModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(embedhub.UnknownFormatError, match="SiglipVisionModel") as info:
        embedhub.load(tmp_path)
    assert "CLIP" not in str(info.value).split("is not one")[0]


def test_siglip2_config_that_disagrees_with_its_processor_is_refused(siglip2_dir, tmp_path):
    folder = _copy(siglip2_dir, tmp_path / "m")
    data = json.loads((folder / "processor_config.json").read_text())
    data["image_processor"]["max_num_patches"] = 64
    (folder / "processor_config.json").write_text(json.dumps(data))
    with pytest.raises(embedhub.ConfigError, match="max_num_patches"):
        embedhub.load(folder)


def test_siglip_image_processor_key_not_reproduced_is_refused(siglip_dir, tmp_path):
    folder = _copy(siglip_dir, tmp_path / "m")
    data = json.loads((folder / "processor_config.json").read_text())
    data["image_processor"]["do_pad"] = True
    (folder / "processor_config.json").write_text(json.dumps(data))
    with pytest.raises(embedhub.ConfigError, match="do_pad"):
        embedhub.load(folder)


def test_siglip_tokenizer_key_not_reproduced_is_refused(siglip_dir, tmp_path):
    folder = _copy(siglip_dir, tmp_path / "m")
    _edit(folder / "tokenizer_config.json", sp_model_kwargs={"enable_sampling": True})
    with pytest.raises(embedhub.ConfigError, match="sp_model_kwargs"):
        embedhub.load(folder)
    _edit(folder / "tokenizer_config.json", sp_model_kwargs={}, chat_template_style="x")
    with pytest.raises(embedhub.ConfigError, match="chat_template_style"):
        embedhub.load(folder)


def test_siglip_tokenizer_model_input_names_without_mask(siglip_dir, tmp_path):
    """A tokenizer whose model_input_names hold no attention_mask: transformers' model then attends to every
    position, pads included; embedhub gives the same numbers."""
    folder = _copy(siglip_dir, tmp_path / "m")
    _edit(folder / "tokenizer_config.json", model_input_names=["input_ids"])
    ref_text, _, _ = _reference(folder, TEXTS, _images())
    got = embedhub.load(folder).encode(TEXTS, normalize=False)
    assert _cos(got, ref_text).min() > 1 - 1e-5


def test_onnx_export_of_siglip_keeps_parity_on_both_towers(siglip_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from export import GATES, export

    images = _images()
    out = export(siglip_dir, tmp_path / "onnx", verbose=False, gate_image_inputs=images)
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    assert set(meta["gate"]["modalities"]) == {"text", "image"} and meta["gate"]["passed"]
    onnx_model = embedhub.load(out, backend="onnx")
    torch_model = embedhub.load(siglip_dir)
    ref_text, ref_image, ref_probs = _reference(siglip_dir, TEXTS, images)
    assert _cos(onnx_model.encode(TEXTS, normalize=False), ref_text).min() >= GATES["fp32"]["min"]
    assert _cos(onnx_model.encode(images, normalize=False), ref_image).min() >= GATES["fp32"]["min"]
    # the exported model keeps SigLIP's bias and sigmoid, and pads text to max_length as the processor does
    assert onnx_model.logit_bias == pytest.approx(torch_model.logit_bias)
    np.testing.assert_allclose(onnx_model.zero_shot(images, TEXTS, templates=["{}"]), ref_probs, atol=1e-4)
    pre = onnx_model.preprocessors["text"]
    assert pre.collate(pre.tokenize(["a"]))["input_ids"].shape == (1, 16)


def test_onnx_export_of_naflex_images_is_refused(siglip2_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from export import export

    with pytest.raises(ValueError, match="NaFlex"):
        export(siglip2_dir, tmp_path / "onnx", verbose=False)
    assert not (tmp_path / "onnx").exists()


def test_clip_pad_token_from_the_tokenizer_class_default(hf_clip_dir, tmp_path, photos):
    """A CLIP folder whose files name no pad token: transformers pads with CLIPTokenizer's default pad token
    (``<|endoftext|>``), not id 0; embedhub pads with the same id."""
    folder = _copy(hf_clip_dir, tmp_path / "m")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    if (folder / "special_tokens_map.json").exists():
        (folder / "special_tokens_map.json").unlink()
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tok.pad_token_id not in (None, 0)
    texts = ["a photo of a cat", "a dog"]
    pre = embedhub.load(folder).preprocessors["text"]
    batch = pre.collate(pre.tokenize(texts))
    ref = tok(texts, padding=True, return_tensors="np")
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])


def test_siglip_tokenizer_with_unset_model_max_length_pads_to_the_positions(siglip_dir, tmp_path):
    """SigLIP 2's fixed-resolution repos (model_type siglip) ship Gemma's tokenizer, whose model_max_length is
    transformers' "unset" value; their model cards call the processor with padding="max_length", max_length=64
    (the text positions)."""
    folder = _copy(siglip_dir, tmp_path / "m")
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 1000000000000000019884624838656
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    pre = embedhub.load(folder).preprocessors["text"]
    ref = tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    np.testing.assert_array_equal(pre.collate(pre.tokenize(TEXTS))["input_ids"], ref["input_ids"])


def test_zero_shot_demo_gives_siglips_sigmoid(siglip_dir):
    """The zero-shot demo's classifier (its own cached label embeddings) answers as ``model.zero_shot``:
    SigLIP's per-label sigmoid with the model's bias, not a softmax."""
    pytest.importorskip("gradio")
    from embedhub.demos.zero_shot import app

    image = _images()[0]
    labels = ["cat", "dog", "rocket"]
    got = app.CLASSIFIER.classify(str(siglip_dir), "torch", image, labels, ["a photo of a {}."])
    want = embedhub.load(siglip_dir).zero_shot(image, labels, templates=["a photo of a {}."])
    np.testing.assert_allclose([got[label] for label in labels], want, atol=1e-5)
    assert abs(sum(got.values()) - 1.0) > 1e-3  # a softmax would add up to 1
