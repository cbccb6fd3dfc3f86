"""open_clip SigLIP models and ``hf_model_name`` / ``hf_tokenizer_name`` towers against open_clip itself:
``encode_text`` / ``encode_image`` on open_clip's own tokens, SigLIP's sigmoid probabilities, pad tokens
resolved as transformers resolves them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

TEXTS = ["a photo of a cat", "The DOG!", "a cat " * 40, "of the photo"]
VISION = {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _xlmr_tokenizer(folder: Path) -> Path:
    """A tiny real XLM-R (unigram) tokenizer saved by transformers; its pad token ``<pad>`` has id 1."""
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("<mask>", 0.0)]
    vocab += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [("▁" + w, -1.0) for w in ["a", "the", "cat", "dog", "photo", "of"]] + [("▁", -3.0)]
    transformers.XLMRobertaTokenizer(vocab=vocab).save_pretrained(str(folder))
    return folder


def _pad_only_in_special_tokens_map(folder: Path) -> None:
    """The pad token declared only in ``special_tokens_map.json`` (as older Hub repos do), with the generic
    fast tokenizer class, so no class default supplies it."""
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    pad = cfg.pop("pad_token")
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": pad}))


def _save(model, tokenizer, model_cfg: dict, folder: Path) -> Path:
    from open_clip.push_to_hf_hub import save_for_hf

    model.visual.image_mean = (0.5, 0.5, 0.5)
    model.visual.image_std = (0.5, 0.5, 0.5)
    save_for_hf(model, tokenizer=tokenizer, model_config=model_cfg, save_directory=str(folder),
                safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def siglip_oc(tmp_path_factory):
    """A tiny open_clip SigLIP (init_logit_bias, last-token pooling, no causal mask, an HF tokenizer whose pad
    token is declared only in special_tokens_map.json), its tokenizer and its folder."""
    tok_dir = _xlmr_tokenizer(tmp_path_factory.mktemp("tok"))
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tok_dir), context_length=16, clean="canonicalize")
    cfg = {"embed_dim": 32, "init_logit_bias": -10.0, "init_logit_scale": float(np.log(10)), "vision_cfg": VISION,
           "text_cfg": {"context_length": 16, "vocab_size": 40, "width": 32, "heads": 2, "layers": 2,
                        "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "pad_id": 1,
                        "hf_tokenizer_name": "tiny/xlmr-tokenizer", "tokenizer_kwargs": {"clean": "canonicalize"}}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg).eval()
    with torch.no_grad():
        model.logit_bias.fill_(-2.5)  # a trained value, not the init one
    folder = _save(model, tokenizer, cfg, tmp_path_factory.mktemp("siglip_oc"))
    _pad_only_in_special_tokens_map(folder)
    # open_clip's tokenizer on the folder's files, as open_clip.get_tokenizer builds it for hf_tokenizer_name
    tokenizer = open_clip.tokenizer.HFTokenizer(str(folder), context_length=16, clean="canonicalize")
    assert tokenizer.tokenizer.pad_token_id == 1
    return model, tokenizer, folder


def _hf_text_clip(tmp_path_factory, hf_config, name: str, pooler: str):
    """A tiny open_clip CustomTextCLIP with an ``hf_model_name`` text tower of ``hf_config`` (its config.json
    beside open_clip_config.json), built by open_clip from that local config."""
    tok_dir = _xlmr_tokenizer(tmp_path_factory.mktemp("tok"))
    tokenizer = open_clip.tokenizer.HFTokenizer(str(tok_dir), context_length=12)
    hf_dir = tmp_path_factory.mktemp("hf_config")
    hf_config.save_pretrained(str(hf_dir))
    cfg = {"embed_dim": 24, "vision_cfg": VISION,
           "text_cfg": {"hf_model_name": str(hf_dir), "hf_tokenizer_name": "tiny/xlmr-tokenizer",
                        "hf_proj_type": "mlp", "hf_pooler_type": pooler, "hf_model_pretrained": False,
                        "context_length": 12}}
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**cfg).eval()
    saved = json.loads(json.dumps(cfg))
    saved["text_cfg"]["hf_model_name"] = name  # what a Hub repo names
    del saved["text_cfg"]["hf_model_pretrained"]
    folder = _save(model, tokenizer, saved, tmp_path_factory.mktemp("hf_text_clip"))
    shutil.copyfile(hf_dir / "config.json", folder / "config.json")
    return model, tokenizer, folder


@pytest.fixture(scope="module")
def xlmr_clip(tmp_path_factory):
    """An XLM-R text tower, mean pooled (the laion xlm-roberta CLIPs)."""
    config = transformers.XLMRobertaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                           intermediate_size=37, max_position_embeddings=20, pad_token_id=1,
                                           bos_token_id=0, eos_token_id=2)
    return _hf_text_clip(tmp_path_factory, config, "xlm-roberta-base", "mean_pooler")


@pytest.fixture(scope="module")
def nllb_clip(tmp_path_factory):
    """An M2M-100 (NLLB) encoder-decoder config: open_clip keeps only its encoder (NLLB-CLIP)."""
    config = transformers.M2M100Config(vocab_size=40, d_model=32, encoder_layers=2, decoder_layers=1,
                                       encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                                       decoder_ffn_dim=37, max_position_embeddings=20, pad_token_id=1,
                                       bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    return _hf_text_clip(tmp_path_factory, config, "facebook/nllb-200-distilled-600M", "cls_pooler")


def _open_clip_reference(model, tokenizer, texts: list[str], images: list):
    from open_clip.transform import image_transform

    pre = image_transform(32, is_train=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    with torch.no_grad():
        text = model.encode_text(tokenizer(texts))
        image = model.encode_image(torch.stack([pre(im) for im in images]))
    return text.numpy(), image.numpy()


@pytest.mark.parametrize("fixture", ["siglip_oc", "xlmr_clip", "nllb_clip"])
def test_towers_match_open_clip(fixture, request, photos):
    model, tokenizer, folder = request.getfixturevalue(fixture)
    ref_text, ref_image = _open_clip_reference(model, tokenizer, TEXTS, photos)
    loaded = embedhub.load(folder)
    for bs in (1, 3):
        assert _cos(loaded.encode(TEXTS, normalize=False, batch_size=bs), ref_text).min() > 1 - 1e-5
    assert _cos(loaded.encode(photos, normalize=False), ref_image).min() > 1 - 1e-5
    np.testing.assert_allclose(loaded.encode(TEXTS, normalize=False), ref_text, rtol=1e-4, atol=1e-5)


def test_pad_token_from_special_tokens_map(siglip_oc):
    """open_clip pads with transformers' pad_token_id (1 here, declared only in special_tokens_map.json)."""
    _, tokenizer, folder = siglip_oc
    pre = embedhub.load(folder).preprocessors["text"]
    batch = pre.collate(pre.tokenize(TEXTS))
    np.testing.assert_array_equal(batch["input_ids"], tokenizer(TEXTS).numpy())
    assert pre.pad_id == tokenizer.tokenizer.pad_token_id == 1


def test_siglip_logit_bias_and_sigmoid_zero_shot(siglip_oc, photos):
    model, tokenizer, folder = siglip_oc
    loaded = embedhub.load(folder)
    assert loaded.logit_bias == pytest.approx(-2.5)
    labels = ["cat", "dog", "photo"]
    ref_text, ref_image = _open_clip_reference(model, tokenizer, labels, photos)
    t = torch.nn.functional.normalize(torch.from_numpy(ref_text), dim=-1)
    i = torch.nn.functional.normalize(torch.from_numpy(ref_image), dim=-1)
    ref = torch.sigmoid(i @ t.T * model.logit_scale.exp().detach() + model.logit_bias.detach()).numpy()
    np.testing.assert_allclose(loaded.zero_shot(photos, labels, templates=["{}"]), ref, atol=1e-5)


def test_clip_without_bias_keeps_softmax(open_clip_dir, photos):
    loaded = embedhub.load(open_clip_dir)
    assert loaded.logit_bias is None
    np.testing.assert_allclose(loaded.zero_shot(photos[:2], ["cat", "dog"]).sum(-1), 1.0, atol=1e-5)


def test_hf_text_tower_without_its_config_is_refused(xlmr_clip, tmp_path):
    _, _, folder = xlmr_clip
    copy = shutil.copytree(folder, tmp_path / "m")
    (copy / "config.json").unlink()
    with pytest.raises(embedhub.ConfigError, match="hf_model_name") as info:
        embedhub.load(copy)
    assert "config.json" in str(info.value)


def test_hf_text_config_with_code_or_unknown_architecture_is_refused(xlmr_clip, tmp_path):
    _, _, folder = xlmr_clip
    copy = shutil.copytree(folder, tmp_path / "m")
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "x.Model"}}))
    with pytest.raises(embedhub.ConfigError, match="auto_map"):
        embedhub.load(copy)
    (copy / "config.json").write_text(json.dumps({**cfg, "model_type": "not-an-architecture"}))
    with pytest.raises(embedhub.ConfigError, match="model_type"):
        embedhub.load(copy)


def test_onnx_export_of_open_clip_siglip_keeps_bias_and_pad(siglip_oc, photos, tmp_path):
    pytest.importorskip("onnxruntime")
    from export import GATES, export

    model, tokenizer, folder = siglip_oc
    out = export(folder, tmp_path / "onnx", verbose=False)
    meta = json.loads((out / "onnx" / "export_metadata.json").read_text())
    assert set(meta["gate"]["modalities"]) == {"text", "image"} and meta["gate"]["passed"]
    onnx_model = embedhub.load(out, backend="onnx")
    assert onnx_model.logit_bias == pytest.approx(-2.5)
    pre = onnx_model.preprocessors["text"]
    np.testing.assert_array_equal(pre.collate(pre.tokenize(TEXTS))["input_ids"], tokenizer(TEXTS).numpy())
    ref_text, ref_image = _open_clip_reference(model, tokenizer, TEXTS, photos)
    assert _cos(onnx_model.encode(TEXTS, normalize=False), ref_text).min() >= GATES["fp32"]["min"]
    assert _cos(onnx_model.encode(photos, normalize=False), ref_image).min() >= GATES["fp32"]["min"]
