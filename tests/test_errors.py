"""Every kind of bad input gets a clear error naming the item and what was expected."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

import embedhub


def _png(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- inputs
def test_empty_list_gives_zero_rows(minilm, image_only):
    for model, dim in ((minilm, 384), (image_only, 16)):
        out = model.encode([])
        assert out.shape == (0, dim) and out.dtype == np.float32


@pytest.mark.parametrize(
    "bad, index, word",
    [
        (["ok", None], 1, "None"),
        (["ok", "fine", 3], 2, "int"),
        ([1.5], 0, "float"),
        (["a", ["b", "c"]], 1, "nested"),
        (["a", {"text": "b"}], 1, "nested"),
        ([np.zeros((4, 4), np.float32)], 0, "uint8"),
        ([np.zeros((4, 4, 2), np.uint8)], 0, "shape"),
    ],
)
def test_wrong_types_name_the_index(minilm, bad, index, word):
    with pytest.raises(TypeError, match=rf"inputs\[{index}\].*{word}|inputs\[{index}\]") as err:
        minilm.encode(bad)
    assert isinstance(err.value, embedhub.InputTypeError) and word in str(err.value)


def test_none_and_number_as_whole_input(minilm):
    with pytest.raises(TypeError, match="inputs is None"):
        minilm.encode(None)
    with pytest.raises(TypeError, match="inputs has type int"):
        minilm.encode(42)


def test_text_to_image_only_model(image_only):
    with pytest.raises(embedhub.ModalityError, match=r"inputs\[1\] is text.*embeds only image"):
        image_only.encode([_png(), "a caption"])
    with pytest.raises(embedhub.ModalityError, match="no text tower"):
        image_only.encode_text(["a caption"])


def test_image_to_text_only_model(minilm):
    with pytest.raises(embedhub.ModalityError, match=r"inputs\[0\] is image.*embeds only text"):
        minilm.encode([Image.new("RGB", (8, 8))])
    with pytest.raises(embedhub.ModalityError, match="no image tower"):
        minilm.encode_image([_png()])
    with pytest.raises(embedhub.ModalityError, match="zero_shot needs a text and an image tower"):
        minilm.zero_shot([_png()], ["cat"])


def test_encode_text_rejects_images_in_a_two_tower_model(open_clip_dir):
    model = embedhub.load(open_clip_dir, device="cpu")
    with pytest.raises(embedhub.ModalityError, match=r"inputs\[1\] is image; encode_text takes text only"):
        model.encode_text(["a", _png()])


def test_corrupt_and_truncated_images_name_the_index(image_only, tmp_path):
    good = _png()
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: not a readable image"):
        image_only.encode([good, b"this is not an image"])
    with pytest.raises(embedhub.InputError, match=r"inputs\[2\]: corrupt or truncated image"):
        image_only.encode([good, good, good[: len(good) // 2]])
    missing = tmp_path / "nope.png"
    with pytest.raises(embedhub.InputError, match=r"inputs\[0\]: cannot read image file .*nope.png"):
        image_only.encode([missing])
    assert isinstance(embedhub.InputError("x"), ValueError)


def test_decompression_bomb_refused(image_only, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 Mpixel, a few kB on disk
    assert bomb.stat().st_size < 100_000
    with pytest.raises(embedhub.InputError, match=r"inputs\[1\]: image of 9000x9000 = 81000000 pixels exceeds"):
        image_only.encode([_png(), bomb])
    with pytest.raises(embedhub.InputError, match="exceeds the limit of 1000 pixels"):
        image_only.encode(_png(), max_image_pixels=1000)


def test_bad_arguments(minilm):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        minilm.encode(["a"], batch_size=0)
    with pytest.raises(ValueError, match="convert_to"):
        minilm.encode(["a"], convert_to="list")
    with pytest.raises(ValueError, match="backend 'tensorrt' is not available"):
        embedhub.load("all-MiniLM-L6-v2", backend="tensorrt")
    with pytest.raises(ValueError, match="without embedhub ONNX graphs; export it first"):
        embedhub.load("all-MiniLM-L6-v2", backend="onnx")
    with pytest.raises(ValueError, match="dtype 'int8' not supported"):
        embedhub.load("all-MiniLM-L6-v2", dtype="int8")


# ---------------------------------------------------------------- names and folders
def test_unknown_name_lists_close_aliases():
    with pytest.raises(embedhub.ModelNotFoundError, match="close aliases: all-MiniLM-L6-v2") as err:
        embedhub.load("all-MiniLM-L6")
    assert isinstance(err.value, LookupError)
    with pytest.raises(embedhub.ModelNotFoundError, match="does not exist"):
        embedhub.load("./no/such/folder")


def test_close_aliases_are_each_named_once_closest_first(monkeypatch):
    """A near miss of a mixed-case alias is both a close spelling and a substring match: named once."""
    from embedhub.hub import aliases as _registry

    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))  # the alias is gone after the test
    embedhub.register_model("My-Tiny-Encoder-v1", "org/my-tiny-encoder")
    for name in ("all-MiniLM-L6", "All-MiniLM-L6-v3", "MiniLM-L6", "my-tiny-encoder", "tiny"):
        with pytest.raises(embedhub.ModelNotFoundError, match="close aliases: ") as err:
            embedhub.load(name)
        named = str(err.value).split("close aliases: ")[1].split("; ")[0].split(", ")
        assert len(named) == len(set(named)), (name, named)
        assert set(named) <= set(embedhub.list_models()), named  # as registered, never lower-cased
        assert _registry.close_aliases(name) == named
    assert _registry.close_aliases("all-MiniLM-L6")[0] == "all-MiniLM-L6-v2"
    assert _registry.close_aliases("my-tiny-encoder")[0] == "My-Tiny-Encoder-v1"
    assert _registry.close_aliases("MINILM")[:2] == ["minilm", "all-MiniLM-L6-v2"]  # case-blind, as aliases are


def test_unknown_format_names_expected_files(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"x")
    with pytest.raises(embedhub.UnknownFormatError, match="modules.json.*open_clip_config.json.*Found: weights.npz"):
        embedhub.load(tmp_path)


def test_sentence_transformers_unsupported_module(tmp_path, minilm_path):
    shutil.copytree(minilm_path, tmp_path / "m")
    modules = json.loads((tmp_path / "m" / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "9_LSTM", "type": "sentence_transformers.models.LSTM"})
    (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(embedhub.ConfigError, match="sentence-transformers' LSTM.*not rebuilt") as err:
        embedhub.load(tmp_path / "m")
    assert "custom" not in str(err.value) and "modules.json" in str(err.value)


# ---------------------------------------------------------------- weights
def test_truncated_weights_are_a_weights_error(tmp_path, open_clip_dir):
    folder = tmp_path / "m"
    shutil.copytree(open_clip_dir, folder)
    w = folder / "open_clip_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(embedhub.WeightsError, match="corrupted or truncated"):
        embedhub.load(folder)


def test_mismatched_architecture_is_a_strict_load_error(tmp_path, open_clip_dir, minilm_path):
    folder = tmp_path / "oc"
    shutil.copytree(open_clip_dir, folder)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["text_cfg"]["layers"] = 3  # one layer more than the weights have
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(embedhub.WeightsError, match=r"strict load.*missing"):
        embedhub.load(folder)

    st = tmp_path / "st"
    shutil.copytree(minilm_path, st)
    cfg = json.loads((st / "config.json").read_text())
    cfg["intermediate_size"] = 1024
    (st / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(embedhub.WeightsError):
        embedhub.load(st)


def test_pickle_only_weights_are_refused(tmp_path, open_clip_dir):
    folder = tmp_path / "m"
    shutil.copytree(open_clip_dir, folder)
    (folder / "open_clip_model.safetensors").rename(folder / "open_clip_pytorch_model.bin")
    with pytest.raises(embedhub.WeightsError, match="safetensors only and never unpickles"):
        embedhub.load(folder)


def test_remote_code_needs_consent(tmp_path, minilm_path):
    folder = tmp_path / "m"
    shutil.copytree(minilm_path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(embedhub.UnknownFormatError, match="trust_remote_code=True"):
        embedhub.load(folder)


def test_missing_optional_dependency_names_the_extra(open_clip_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes `import open_clip` raise ImportError
    with pytest.raises(embedhub.MissingDependencyError, match=r"pip install 'embedhub\[open-clip\]'") as err:
        embedhub.load(open_clip_dir)
    assert isinstance(err.value, ImportError)
