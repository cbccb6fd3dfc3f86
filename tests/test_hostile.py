"""Hostile and malformed model folders (issue 9, items 1, 2, 3, 7, 12).

Each test copies a real model folder written by its own library (tests/conftest.py) and makes one
hostile or careless change; embedhub must refuse it with a typed error naming the file and key,
and no code from the folder may run (a module that would write a marker file on import).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub
from embedhub import ConfigError, WeightsError

MARKER_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


class Replace:
    """Returned by an edit that replaces the whole JSON document."""

    def __init__(self, value):
        self.value = value


def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    out = change(data)
    path.write_text(json.dumps(out.value if isinstance(out, Replace) else data))


def _plant_code(folder: Path, marker: Path, *, module: str = "evil") -> None:
    """A Python module in the folder that writes ``marker`` when imported (what remote code would do)."""
    (folder / f"{module}.py").write_text(
        MARKER_CODE.format(marker=str(marker))
        + "from transformers import BertConfig, BertModel, BertTokenizerFast\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(BertTokenizerFast):\n    pass\n"
    )


# ------------------------------------------------------------------------------------ item 1: no code runs
def test_open_clip_remote_tokenizer_kwargs_run_no_code(open_clip_dir, tmp_path):
    """The route from the issue: hf_tokenizer_name + tokenizer_kwargs.trust_remote_code + auto_map."""
    folder = _copy(open_clip_dir, tmp_path / "m")
    marker = tmp_path / "ran.txt"
    _plant_code(folder, marker)
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer",
                                                                                              None]}}))
    _edit(folder / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].update(
        hf_tokenizer_name=str(folder), tokenizer_kwargs={"trust_remote_code": True}))
    with pytest.raises(ConfigError, match="tokenizer_kwargs.*trust_remote_code"):
        embedhub.load(folder, device="cpu")
    assert not marker.exists()
    # without the kwargs, a tokenizer name with no tokenizer.json in the folder is a fetch of another repo
    _edit(folder / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].pop("tokenizer_kwargs"))
    with pytest.raises(ConfigError, match="hf_tokenizer_name.*trust_remote_code=True"):
        embedhub.load(folder, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("key,value,match", [
    ("hf_model_name", "org/some-text-model", "hf_model_name.*another repository"),
    ("bpe", None, "unsupported"),
])
def test_open_clip_text_cfg_cannot_fetch_or_read(open_clip_dir, tmp_path, key, value, match):
    folder = _copy(open_clip_dir, tmp_path / "m")
    if key == "bpe":
        _edit(folder / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].update(
            tokenizer_kwargs={"bpe_path": "/etc/passwd"}))
    else:
        _edit(folder / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].update({key: value}))
    with pytest.raises(ConfigError, match=match):
        embedhub.load(folder, device="cpu")


def test_open_clip_timm_hub_names_refused(open_clip_dir, tmp_path):
    folder = _copy(open_clip_dir, tmp_path / "m")
    _edit(folder / "open_clip_config.json", lambda c: c["model_cfg"]["vision_cfg"].update(
        timm_model_name="hf-hub:org/evil"))
    with pytest.raises(ConfigError, match="timm_model_name.*built into timm"):
        embedhub.load(folder, device="cpu")


def test_auto_map_in_model_configs_runs_no_code(tiny_st_dir, hf_clip_dir, tiny_embedhub_dir, tmp_path):
    """auto_map in config.json, through each format that builds a transformers model."""
    marker = tmp_path / "ran.txt"
    for name, src, config in (("st", tiny_st_dir, "config.json"), ("clip", hf_clip_dir, "config.json"),
                              ("own", tiny_embedhub_dir, "text/config.json")):
        folder = _copy(src, tmp_path / name)
        _plant_code(folder / Path(config).parent, marker)
        _edit(folder / config, lambda c: c.update(auto_map={"AutoConfig": "evil.EvilConfig",
                                                            "AutoModel": "evil.EvilModel"}))
        with pytest.raises(ConfigError, match="auto_map.*trust_remote_code=True"):
            embedhub.load(folder, device="cpu")
        assert not marker.exists(), name


def test_custom_model_type_and_tokenizer_class_run_no_code(tiny_st_dir, tmp_path):
    marker = tmp_path / "ran.txt"
    folder = _copy(tiny_st_dir, tmp_path / "m")
    _plant_code(folder, marker)
    _edit(folder / "config.json", lambda c: c.update(model_type="evil"))
    with pytest.raises(ConfigError, match="model_type 'evil'"):
        embedhub.load(folder, device="cpu")
    folder = _copy(tiny_st_dir, tmp_path / "t")
    _plant_code(folder, marker)
    (folder / "tokenizer.json").unlink()  # the vocabulary route goes through transformers
    _edit(folder / "tokenizer_config.json", lambda c: c.update(
        auto_map={"AutoTokenizer": ["evil.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer"))
    with pytest.raises(ConfigError, match="auto_map"):
        embedhub.load(folder, device="cpu")
    assert not marker.exists()


def test_custom_sentence_transformers_module_refused(tiny_st_dir, tmp_path):
    folder = _copy(tiny_st_dir, tmp_path / "m")
    _edit(folder / "modules.json", lambda m: m.append({"idx": 9, "name": "9", "path": "", "type": "evil.Module"}))
    with pytest.raises(ConfigError, match="evil.Module"):
        embedhub.load(folder, device="cpu")


def test_timm_kwargs_are_allow_listed(tiny_embedhub_dir, tmp_path):
    folder = _copy(tiny_embedhub_dir, tmp_path / "m")
    _edit(folder / "embedhub_config.json", lambda c: c["towers"]["image"]["backbone"].update(
        kwargs={"checkpoint_path": "/tmp/evil.pth"}))
    with pytest.raises(ConfigError, match="checkpoint_path"):
        embedhub.load(folder, device="cpu")


def test_trust_remote_code_still_opens_custom_code(tiny_st_dir, tmp_path):
    """What trust_remote_code=True opens: the folder's own code runs (the marker is written)."""
    marker = tmp_path / "ran.txt"
    folder = _copy(tiny_st_dir, tmp_path / "m")
    _plant_code(folder, marker)
    _edit(folder / "config.json", lambda c: c.update(auto_map={"AutoConfig": "evil.EvilConfig",
                                                               "AutoModel": "evil.EvilModel"}))
    try:
        embedhub.load(folder, device="cpu", trust_remote_code=True)
    except embedhub.EmbedhubError:
        pass  # whether the custom class loads is transformers' business; the consent is what is tested
    assert marker.exists()


# ------------------------------------------------------------------------------------ item 2: paths stay inside
def test_paths_in_configs_cannot_leave_the_folder(tiny_st_dir, tiny_embedhub_dir, tmp_path):
    outside = _copy(tiny_st_dir, tmp_path / "other-model")
    cases = []
    st = _copy(tiny_st_dir, tmp_path / "st_abs")
    _edit(st / "modules.json", lambda m: m[0].update(path=str(outside)))
    cases.append(st)
    st = _copy(tiny_st_dir, tmp_path / "st_dots")
    _edit(st / "modules.json", lambda m: m[0].update(path="../other-model"))
    cases.append(st)
    own = _copy(tiny_embedhub_dir, tmp_path / "own_file")
    _edit(own / "embedhub_config.json", lambda c: c["towers"]["text"]["preprocess"].update(file="../../etc/passwd"))
    cases.append(own)
    shard = _copy(tiny_st_dir, tmp_path / "shards")
    (shard / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (shard / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"embeddings.word_embeddings.weight": "../elsewhere.safetensors"}}))
    cases.append(shard)
    for folder in cases:
        with pytest.raises(ConfigError, match="relative to the model folder|outside the model folder"):
            embedhub.load(folder, device="cpu")


def test_symlinks_pointing_outside_are_refused(tiny_st_dir, tmp_path):
    for name, target in (("tokenizer.json", "/etc/passwd"), ("model.safetensors", None)):
        folder = _copy(tiny_st_dir, tmp_path / name)
        if target is None:  # another model's weights
            other = _copy(tiny_st_dir, tmp_path / f"other-{name}")
            target = str(other / name)
        (folder / name).unlink()
        os.symlink(target, folder / name)
        with pytest.raises(ConfigError, match="outside the model folder"):
            embedhub.load(folder, device="cpu")


def test_symlinks_inside_the_folder_and_hub_blobs_load(tiny_st_dir, tmp_path):
    """A Hub snapshot's files are symlinks into the repo's blob store: that counts as inside."""
    repo = tmp_path / "models--org--tiny"
    snap = repo / "snapshots" / ("a" * 40)
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    for src in tiny_st_dir.rglob("*"):
        if src.is_file():
            blob = blobs / f"{abs(hash(str(src)))}"
            shutil.copyfile(src, blob)
            dst = snap / src.relative_to(tiny_st_dir)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(blob, dst.parent), dst)
    ref = embedhub.load(tiny_st_dir, device="cpu").encode(["a hub snapshot"])
    got = embedhub.load(snap, device="cpu").encode(["a hub snapshot"])
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_fifo_as_config_does_not_hang(tiny_st_dir, tmp_path):
    folder = _copy(tiny_st_dir, tmp_path / "m")
    (folder / "tokenizer_config.json").unlink()
    os.mkfifo(folder / "tokenizer_config.json")
    with pytest.raises(ConfigError, match="not a regular file"):
        embedhub.load(folder, device="cpu")


# ------------------------------------------------------------------------------------ item 3: saving deletes nothing
def test_save_pretrained_refuses_a_folder_of_user_files(tiny_st_dir, tmp_path):
    model = embedhub.load(tiny_st_dir, device="cpu")
    target = tmp_path / "my-project"
    target.mkdir()
    (target / "notes.txt").write_text("my thesis")
    with pytest.raises(FileExistsError, match="not an embedhub model folder"):
        model.save_pretrained(target)
    assert (target / "notes.txt").read_text() == "my thesis"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_save_pretrained_over_a_model_keeps_other_files(tiny_st_dir, tmp_path):
    model = embedhub.load(tiny_st_dir, device="cpu")
    target = tmp_path / "saved"
    model.save_pretrained(target)
    (target / "README.md").write_text("my model card")
    model.save_pretrained(target)  # again, into the embedhub folder
    assert (target / "README.md").read_text() == "my model card"
    again = embedhub.load(target, device="cpu")
    np.testing.assert_allclose(again.encode(["x y"]), model.encode(["x y"]), atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".saved")]  # no staging folder left


# ------------------------------------------------------------------------------------ item 7: non-finite numbers
def test_nan_in_sentence_transformers_backbone_is_refused(tiny_st_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_st_dir, tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    key = next(k for k in state if k.endswith("attention.self.query.weight"))
    state[key][0, 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(WeightsError, match=f"NaN or Inf in tensor '{key}'"):
        embedhub.load(folder, device="cpu")


@pytest.mark.parametrize("fmt", ["hf_clip", "open_clip", "embedhub"])
def test_zero_std_in_preprocessing_is_refused(fmt, hf_clip_dir, open_clip_dir, tiny_embedhub_dir, tmp_path):
    if fmt == "hf_clip":
        folder = _copy(hf_clip_dir, tmp_path / "m")
        name = "preprocessor_config.json" if (folder / "preprocessor_config.json").exists() else "processor_config.json"

        def zero(c):
            (c.get("image_processor") or c)["image_std"] = [0.0, 0.26, 0.27]
        _edit(folder / name, zero)
    elif fmt == "open_clip":
        folder = _copy(open_clip_dir, tmp_path / "m")
        _edit(folder / "open_clip_config.json", lambda c: c["preprocess_cfg"].update(std=[0.0, 0.26, 0.27]))
    else:
        folder = _copy(tiny_embedhub_dir, tmp_path / "m")
        _edit(folder / "embedhub_config.json", lambda c: c["towers"]["image"]["preprocess"].update(std=[0, 1, 1]))
    with pytest.raises(ConfigError, match="std.*positive"):
        embedhub.load(folder, device="cpu")


# ------------------------------------------------------------------------------------ item 12: typed config errors
def _st(case: str):
    return {
        "modules.json as an object": ("modules.json", lambda m: Replace({"0": m[0]}), "expected a non-empty list"),
        "config.json as a list": ("config.json", lambda c: Replace([c]), "expected a JSON object"),
        "hidden_size as a string": ("config.json", lambda c: c.update(hidden_size="32"), "hidden_size: expected int"),
        "hidden_size the weights cannot satisfy": ("config.json", lambda c: c.update(hidden_size=64,
                                                                                    intermediate_size=64),
                                                   "shape mismatch"),
        "pooling mode 5": ("1_Pooling/config.json", lambda c: c.update(pooling_mode=5), "pooling_mode: expected one"),
        "max_seq_length -5": ("sentence_bert_config.json", lambda c: c.update(max_seq_length=-5),
                              "max_seq_length: expected an integer >= 1"),
        "max_seq_length abc": ("sentence_bert_config.json", lambda c: c.update(max_seq_length="abc"),
                               "max_seq_length: expected an integer"),
        "modules without type": ("modules.json", lambda m: Replace([m[0], {"path": "1_Pooling"}]), r"\[1\]\.type"),
        "pooling width": ("1_Pooling/config.json", lambda c: c.update(word_embedding_dimension=7),
                          "word_embedding_dimension: expected 32"),
    }[case]


@pytest.mark.parametrize("case", ["modules.json as an object", "config.json as a list", "hidden_size as a string",
                                  "hidden_size the weights cannot satisfy", "pooling mode 5", "max_seq_length -5",
                                  "max_seq_length abc", "modules without type", "pooling width"])
def test_malformed_sentence_transformers_configs(tiny_st_dir, tmp_path, case):
    file, change, match = _st(case)
    folder = _copy(tiny_st_dir, tmp_path / "m")
    _edit(folder / file, change)
    with pytest.raises((ConfigError, WeightsError), match=match) as info:
        embedhub.load(folder, device="cpu")
    if isinstance(info.value, ConfigError) and "weights" not in case:
        assert file.split("/")[-1] in str(info.value)


@pytest.mark.parametrize("case,change,match", [
    ("towers as a list", lambda c: c.update(towers=[c["towers"]["text"]]), "towers: expected an object"),
    ("missing preprocess", lambda c: c["towers"]["text"].pop("preprocess"), "towers.text.preprocess: expected"),
    ("embed_dim the towers cannot give", lambda c: c.update(embed_dim=31), "embed_dim: expected 32"),
    ("max_length beyond the positions", lambda c: c["towers"]["text"]["preprocess"].update(max_length=4096),
     "max_length: expected at most 128"),
    ("dense in_features", lambda c: c["towers"]["image"]["head"]["dense"][0].update(in_features=5),
     "in_features: expected"),
    ("format_version", lambda c: c.update(format_version="1"), "format_version: expected an integer"),
    ("unknown modality", lambda c: c["towers"].update(audio={}), "unsupported modality"),
    ("image size", lambda c: c["towers"]["image"]["preprocess"].update(size=-1), "size: expected an integer"),
    ("interpolation", lambda c: c["towers"]["image"]["preprocess"].update(interpolation="cubic"), "interpolation"),
    ("pooling", lambda c: c["towers"]["text"].update(pooling="mean"), "pooling: expected a non-empty list"),
])
def test_malformed_embedhub_configs(tiny_embedhub_dir, tmp_path, case, change, match):
    folder = _copy(tiny_embedhub_dir, tmp_path / "m")
    _edit(folder / "embedhub_config.json", change)
    with pytest.raises(ConfigError, match=match) as info:
        embedhub.load(folder, device="cpu")
    assert "embedhub_config.json" in str(info.value)


def test_shard_index_without_weight_map(tiny_st_dir, tmp_path):
    folder = _copy(tiny_st_dir, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ConfigError, match="index.json: weight_map: expected an object, it is missing"):
        embedhub.load(folder, device="cpu")


@pytest.mark.parametrize("change,match", [
    (lambda c: c["model_cfg"].update(embed_dim="32"), "model_cfg.embed_dim: expected an integer"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(width=-1), "vision_cfg.width: expected an integer >= 1"),
    (lambda c: c["model_cfg"]["vision_cfg"].update(unknown_knob=1), "unsupported CLIPVisionCfg field"),
    (lambda c: c["preprocess_cfg"].update(interpolation="cubic"), "preprocess_cfg.interpolation"),
    (lambda c: c["preprocess_cfg"].update(mean=[0.5, 0.5]), "preprocess_cfg.mean: expected a list of 3"),
    (lambda c: c["model_cfg"].update(embed_dim=16), "shape mismatch"),
    (lambda c: c.update(model_cfg=[]), "model_cfg: expected an object"),
])
def test_malformed_open_clip_configs(open_clip_dir, tmp_path, change, match):
    folder = _copy(open_clip_dir, tmp_path / "m")
    _edit(folder / "open_clip_config.json", change)
    with pytest.raises((ConfigError, WeightsError), match=match):
        embedhub.load(folder, device="cpu")


@pytest.mark.parametrize("change,match", [
    (lambda p: p.update(size="big"), "size: expected an integer"),
    (lambda p: p.update(resample=7), "resample: expected one of"),
    (lambda p: p.update(image_mean=[0.5]), "image_mean: expected a list of 3"),
    (lambda p: p.update(crop_size={"height": 0, "width": 32}), "crop_size.height: expected an integer"),
])
def test_malformed_clip_preprocessor_configs(hf_clip_dir, tmp_path, change, match):
    folder = _copy(hf_clip_dir, tmp_path / "m")
    name = "preprocessor_config.json" if (folder / "preprocessor_config.json").exists() else "processor_config.json"
    _edit(folder / name, lambda c: change(c.get("image_processor") or c))
    with pytest.raises(ConfigError, match=match):
        embedhub.load(folder, device="cpu")


def test_export_refuses_a_folder_of_user_files(tiny_st_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from export import export

    target = tmp_path / "out"
    target.mkdir()
    (target / "data.csv").write_text("a,b\n")
    with pytest.raises(FileExistsError, match="not an embedhub model folder"):
        export(tiny_st_dir, target)
    assert sorted(p.name for p in target.iterdir()) == ["data.csv"]


def test_open_clip_preprocessing_entry_of_the_embedhub_format_runs_no_code(tiny_embedhub_dir, open_clip_dir,
                                                                            tmp_path):
    """The same hostile open_clip config, reached through an embedhub folder's open_clip tokenizer entry."""
    folder = _copy(tiny_embedhub_dir, tmp_path / "m")
    marker = tmp_path / "ran.txt"
    text = folder / "text"
    shutil.copyfile(open_clip_dir / "open_clip_config.json", text / "open_clip_config.json")
    _plant_code(text, marker)
    (text / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer",
                                                                                            None]}}))
    (text / "tokenizer.json").unlink()
    _edit(text / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].update(
        hf_tokenizer_name="org/evil", tokenizer_kwargs={"trust_remote_code": True}))
    _edit(folder / "embedhub_config.json", lambda c: c["towers"]["text"].update(
        preprocess={"kind": "open_clip", "max_length": 24}))
    with pytest.raises(ConfigError, match="tokenizer_kwargs.*trust_remote_code"):
        embedhub.load(folder, device="cpu")
    _edit(text / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].pop("tokenizer_kwargs"))
    with pytest.raises(ConfigError, match="hf_tokenizer_name.*trust_remote_code=True"):
        embedhub.load(folder, device="cpu")
    assert not marker.exists()


def test_open_clip_local_hf_tokenizer_matches_open_clip(open_clip_dir, minilm_path, tmp_path):
    """A legitimate open_clip repo with an HF tokenizer and its tokenizer.json loads without consent,
    and tokenises as open_clip's own HFTokenizer does on the same files."""
    from open_clip.tokenizer import HFTokenizer

    folder = _copy(open_clip_dir, tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(minilm_path / name, folder / name)
    _edit(folder / "open_clip_config.json", lambda c: c["model_cfg"]["text_cfg"].update(
        hf_tokenizer_name="sentence-transformers/all-MiniLM-L6-v2", tokenizer_kwargs={"strip_sep_token": True}))
    model = embedhub.load(folder, device="cpu")
    texts = ["A man is playing a guitar.", "short", "a much longer sentence " * 8]
    peer = HFTokenizer(str(folder), context_length=24, strip_sep_token=True)(texts).numpy()
    ours = model.preprocessors["text"].collate(model.preprocessors["text"].tokenize(texts))["input_ids"]
    np.testing.assert_array_equal(ours, peer)


def test_exported_torch_weights_are_checked_against_their_hash(tiny_st_dir, tmp_path):
    """An export records the SHA-256 of every weights file (model.safetensors, and text/model.safetensors,
    where the transformers backbone keeps its weights); torch weights swapped afterwards are refused."""
    pytest.importorskip("onnxruntime")
    from safetensors.torch import load_file, save_file

    from export import export

    out = export(tiny_st_dir, tmp_path / "exported", verbose=False, keep_torch=True)
    ref = embedhub.load(out, device="cpu").encode(["hash check"])  # the recorded weights load
    for rel in ("text/model.safetensors", "model.safetensors"):
        original = (out / rel).read_bytes()
        state = load_file(str(out / rel))
        if state:
            key = next(iter(state))
            state[key] = state[key] + 0.01
        else:  # the backbone's weights are in text/: the model's own file holds no tensor here
            state = {"text.extra": torch.zeros(1)}
        save_file(state, str(out / rel))
        with pytest.raises(WeightsError, match=f"{rel} is not the file the export wrote"):
            embedhub.load(out, device="cpu")
        (out / rel).write_bytes(original)
    assert ref.shape == (1, 32)
