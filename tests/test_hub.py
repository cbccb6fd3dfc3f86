"""Loading by Hub repo id from the standard Hugging Face cache, offline.

The public Hub cannot be reached here, so the test writes models into the cache layout that
``huggingface_hub`` itself reads (``models--org--name/{refs,snapshots}``) under a temporary
``HF_HOME``; everything from there on (revision resolution, ``snapshot_download`` with
``allow_patterns``, format detection, strict loading) is the real code path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub

MAIN_SHA = "a" * 40
V1_SHA = "b" * 40

_CHILD = r"""
import json, sys, numpy as np, embedhub
out = {}
for name, kw in json.loads(sys.argv[1]):
    try:
        m = embedhub.load(name, device="cpu", **kw)
        out[name + json.dumps(kw)] = m.encode(["a photo of a cat", "rocket"]).tolist()
    except Exception as exc:
        out[name + json.dumps(kw)] = f"{type(exc).__name__}: {exc}"
print("RESULT" + json.dumps(out))
"""


def _put_in_cache(hf_home: Path, repo_id: str, sha: str, folder: Path, refs: list[str]) -> None:
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(sha)


def _run(hf_home: Path, calls: list) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(calls)], env=env, capture_output=True, text=True, timeout=300
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]
    return json.loads(line[len("RESULT") :])


@pytest.fixture(scope="module")
def second_model(tmp_path_factory, open_clip_dir) -> Path:
    """The same tiny open_clip architecture with other weights: a second revision of the repo."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("oc_v1")
    shutil.copytree(open_clip_dir, folder, dirs_exist_ok=True)
    state = load_file(str(folder / "open_clip_model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    state = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()
    }
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def test_load_by_repo_id_and_revision_offline(tmp_path, open_clip_dir, second_model):
    hf_home = tmp_path / "hf"
    _put_in_cache(hf_home, "tiny-org/tiny-clip", MAIN_SHA, open_clip_dir, ["main"])
    _put_in_cache(hf_home, "tiny-org/tiny-clip", V1_SHA, second_model, ["v1"])
    res = _run(
        hf_home,
        [
            ["tiny-org/tiny-clip", {}],
            ["tiny-org/tiny-clip@v1", {}],
            ["tiny-org/tiny-clip", {"revision": "v1"}],
            ["tiny-org/tiny-clip@" + MAIN_SHA, {}],
            ["tiny-org/not-cached", {}],
            ["tiny-org/tiny-clip@v2", {}],
        ],
    )
    texts = ["a photo of a cat", "rocket"]
    expected_main = embedhub.load(open_clip_dir, device="cpu").encode(texts)
    expected_v1 = embedhub.load(second_model, device="cpu").encode(texts)
    assert not np.allclose(expected_main, expected_v1, atol=1e-3)
    np.testing.assert_allclose(res["tiny-org/tiny-clip{}"], expected_main, atol=1e-6)
    np.testing.assert_allclose(res["tiny-org/tiny-clip@v1{}"], expected_v1, atol=1e-6)
    np.testing.assert_allclose(res['tiny-org/tiny-clip{"revision": "v1"}'], expected_v1, atol=1e-6)
    np.testing.assert_allclose(res[f"tiny-org/tiny-clip@{MAIN_SHA}{{}}"], expected_main, atol=1e-6)
    not_cached = res["tiny-org/not-cached{}"]
    assert not_cached.startswith("ModelNotCachedError") and "HF_HUB_OFFLINE=1" in not_cached
    assert res["tiny-org/tiny-clip@v2{}"].startswith("ModelNotCachedError")


def test_local_files_only_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(embedhub.ModelNotCachedError, match="local_files_only=True") as err:
        embedhub.load("nobody-here/no-model", local_files_only=True, cache_dir=tmp_path)
    assert isinstance(err.value, FileNotFoundError)


def test_conflicting_revisions():
    with pytest.raises(ValueError, match="revision given twice"):
        embedhub.load("org/model@v1", revision="v2")


def test_registry_is_extensible(open_clip_dir):
    embedhub.register_model("tiny-test-clip", str(open_clip_dir), description="test alias", overwrite=True)
    assert "tiny-test-clip" in embedhub.list_models()
    assert embedhub.load("tiny-test-clip", device="cpu").embed_dim == 32
    with pytest.raises(ValueError, match="already registered"):
        embedhub.register_model("tiny-test-clip", "x/y")
    with pytest.raises(ValueError, match="must be non-empty"):
        embedhub.register_model("a/b", "x/y")
    assert "all-MiniLM-L6-v2" in embedhub.list_models()
