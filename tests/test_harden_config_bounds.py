"""Config bounds: every config reader refuses nesting, overflow and bad bytes with a ConfigError naming the
file (and key), and layer counts and sizes are checked against the weights' headers before anything is
built. Real tiny model folders (conftest) edited on disk; memory probes run in a subprocess."""

from __future__ import annotations

import json
import resource  # noqa: F401  (the child processes use it)
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import embedhub
from embedhub.errors import ConfigError, ProvenanceError, WeightsError
from embedhub.store.fingerprint import Fingerprint

DEEP = "[" * 200_000 + "]" * 200_000


def _st_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _transformer_dir(folder: Path) -> Path:
    mods = json.loads((folder / "modules.json").read_text())
    return folder / mods[0]["path"] if mods[0]["path"] else folder


def _pooling_config(folder: Path) -> Path:
    mods = json.loads((folder / "modules.json").read_text())
    return folder / mods[1]["path"] / "config.json"


def _edit(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("which", ["modules.json", "config.json", "tokenizer_config.json", "pooling",
                                   "sentence_bert_config.json", "index"])
def test_deep_nesting_in_any_config_is_a_config_error_naming_the_file(tmp_path, tiny_st_dir, which):
    folder = _st_copy(tiny_st_dir, tmp_path / "m")
    tdir = _transformer_dir(folder)
    target = {"modules.json": folder / "modules.json", "config.json": tdir / "config.json",
              "tokenizer_config.json": tdir / "tokenizer_config.json", "pooling": _pooling_config(folder),
              "sentence_bert_config.json": tdir / "sentence_bert_config.json",
              "index": tdir / "model.safetensors.index.json"}[which]
    if which == "index":
        (tdir / "model.safetensors").unlink()
    target.write_text('{"a": ' + DEEP + "}")
    with pytest.raises(ConfigError, match="nested deeper") as info:
        embedhub.load(folder, device="cpu")
    assert target.name in str(info.value)


def test_open_clip_config_nesting_and_overflow(tmp_path, open_clip_dir):
    folder = _st_copy(open_clip_dir, tmp_path / "oc")
    cfg_path = folder / "open_clip_config.json"
    original = json.loads(cfg_path.read_text())
    cfg_path.write_text('{"model_cfg": ' + DEEP + "}")
    with pytest.raises(ConfigError, match="nested deeper") as info:
        embedhub.load(folder, device="cpu")
    assert "open_clip_config.json" in str(info.value)
    cfg = json.loads(json.dumps(original))
    cfg["model_cfg"]["vision_cfg"]["width"] = 10**30
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"model_cfg\.vision_cfg\.width") as info:
        embedhub.load(folder, device="cpu")
    assert "open_clip_config.json" in str(info.value)


@pytest.mark.parametrize(("text", "key"), [
    ('{"layer_norm_eps": 1e309}', "layer_norm_eps"),
    ('{"layer_norm_eps": NaN}', "layer_norm_eps"),
    ('{"id2label": {"0": -Infinity}}', "id2label.0"),
])
def test_non_finite_numbers_name_the_file_and_key(tmp_path, tiny_st_dir, text, key):
    folder = _st_copy(tiny_st_dir, tmp_path / "m")
    cfg = _transformer_dir(folder) / "config.json"
    data = json.loads(cfg.read_text())
    data.pop("layer_norm_eps", None)
    data.pop("id2label", None)
    cfg.write_text(json.dumps(data)[:-1] + ", " + text[1:])
    with pytest.raises(ConfigError) as info:
        embedhub.load(folder, device="cpu")
    assert "config.json" in str(info.value) and key in str(info.value) and info.value.key == key


def test_huge_integer_literal_and_non_utf8_name_the_file(tmp_path, tiny_st_dir):
    folder = _st_copy(tiny_st_dir, tmp_path / "m")
    cfg = _pooling_config(folder)
    cfg.write_text('{"word_embedding_dimension": 1' + "0" * 5000 + "}")
    with pytest.raises(ConfigError, match="not valid JSON") as info:
        embedhub.load(folder, device="cpu")
    assert str(cfg) in str(info.value)
    cfg.write_bytes(b'{"word_embedding_dimension": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        embedhub.load(folder, device="cpu")
    assert str(cfg) in str(info.value)


@pytest.mark.parametrize(("key", "value"), [("hidden_size", 10**12), ("intermediate_size", 10**30),
                                            ("vocab_size", 2**62), ("num_hidden_layers", 10**9)])
def test_sizes_beyond_the_weights_fail_before_building(tmp_path, tiny_st_dir, key, value):
    folder = _st_copy(tiny_st_dir, tmp_path / "m")
    cfg = _transformer_dir(folder) / "config.json"
    _edit(cfg, **{key: value})
    with pytest.raises(ConfigError, match=key) as info:
        embedhub.load(folder, device="cpu")
    assert "config.json" in str(info.value) and info.value.key == key


def test_embedhub_format_backbone_config_bounded(tmp_path, tiny_embedhub_dir):
    folder = _st_copy(tiny_embedhub_dir, tmp_path / "eh")
    _edit(folder / "text" / "config.json", num_hidden_layers=20000)
    with pytest.raises(ConfigError, match="num_hidden_layers") as info:
        embedhub.load(folder, device="cpu")
    assert "text/config.json" in str(info.value)


def test_dense_module_sizes_bounded(tmp_path, minilm_path):
    """A sentence-transformers Dense module claiming 2**20 x 2**20 features (4 TB) is refused first."""
    import torch
    from safetensors.torch import save_file

    folder = _st_copy(minilm_path, tmp_path / "m")
    mods = json.loads((folder / "modules.json").read_text())
    mods.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(mods))
    (folder / "2_Dense").mkdir()
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 384, "out_features": 1 << 20,
                                                                "bias": True}))
    save_file({"linear.weight": torch.zeros(8, 384), "linear.bias": torch.zeros(8)},
              str(folder / "2_Dense" / "model.safetensors"))
    with pytest.raises(ConfigError, match="out_features") as info:
        embedhub.load(folder, device="cpu")
    assert "2_Dense" in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "header_lies"])
def test_corrupt_weights_name_the_file(tmp_path, tiny_st_dir, damage):
    folder = _st_copy(tiny_st_dir, tmp_path / "m")
    weights = _transformer_dir(folder) / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [10**6, 10**6]
        raw = json.dumps(header).encode()
        weights.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
    with pytest.raises(WeightsError) as info:
        embedhub.load(folder, device="cpu")
    assert str(weights) in str(info.value)


def test_stored_fingerprint_nesting_is_a_provenance_error():
    with pytest.raises(ProvenanceError, match="nested"):
        Fingerprint.from_json(DEEP, path="x.npy")


_CHILD = r"""
import json, resource, sys
import embedhub
try:
    embedhub.load(sys.argv[1], device="cpu")
    print("RESULT loaded")
except Exception as exc:
    print("RESULT " + type(exc).__name__ + ": " + str(exc)[:300])
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak(folder: Path) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True, timeout=300)
    lines = proc.stdout.splitlines()
    result = next((x[7:] for x in lines if x.startswith("RESULT ")), None)
    peak = next((int(x.split()[1]) for x in lines if x.startswith("PEAK ")), None)
    assert result is not None and peak is not None, proc.stderr[-3000:]
    return result, peak * 1024  # ru_maxrss is in KiB on Linux


def test_twenty_thousand_layers_refused_within_memory_bound(tmp_path, tiny_st_dir):
    benign = _st_copy(tiny_st_dir, tmp_path / "benign")
    hostile = _st_copy(tiny_st_dir, tmp_path / "hostile")
    _edit(_transformer_dir(hostile) / "config.json", num_hidden_layers=20000)
    base_result, base_peak = _peak(benign)
    result, peak = _peak(hostile)
    assert base_result == "loaded"
    assert result.startswith("ConfigError") and "num_hidden_layers" in result and "config.json" in result
    assert peak < base_peak + 300 * 2**20, (peak, base_peak)
