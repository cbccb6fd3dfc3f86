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
from conftest import perturbed_copy

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
    return perturbed_copy(open_clip_dir, tmp_path_factory.mktemp("oc_v1"), "open_clip_model.safetensors")


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


def test_registry_is_extensible(open_clip_dir, monkeypatch):
    from embedhub.hub import aliases as _registry

    # the alias lives only for this test: other tests list the built-in aliases
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    embedhub.register_model("tiny-test-clip", str(open_clip_dir), description="test alias", overwrite=True)
    assert "tiny-test-clip" in embedhub.list_models()
    assert embedhub.load("tiny-test-clip", device="cpu").embed_dim == 32
    with pytest.raises(ValueError, match="already registered"):
        embedhub.register_model("tiny-test-clip", "x/y")
    with pytest.raises(ValueError, match="must be non-empty"):
        embedhub.register_model("a/b", "x/y")
    assert "all-MiniLM-L6-v2" in embedhub.list_models()


# ------------------------------------------------------------------------------- names and revisions
# Offline only: the public Hub cannot be reached here. Each name below is refused by embedhub's own
# check before huggingface_hub is called, so no request would be made online either.
@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("org/..", "the name '..' contains '..'"),
        ("a/b--c", "the name 'b--c' contains '--'"),
        ("x/y.git", "ends with '.git'"),
        ("-x/y", "the namespace '-x' starts or ends with '-' or '.'"),
        ("org/x.", "the name 'x.' starts or ends with '-' or '.'"),
        ("org/caf\u00e9", "holds '\u00e9'"),
        ("a/" + "b" * 97, "the name has 97 characters; the Hub allows at most 96"),
        ("o" * 97 + "/b", "the namespace has 97 characters"),
    ],
)
def test_invalid_repo_id_is_model_not_found_naming_the_rule(tmp_path, monkeypatch, name, rule):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HFValidationError):  # the Hub's own rules refuse each name
        validate_repo_id(name)
    with pytest.raises(embedhub.ModelNotFoundError) as err:
        embedhub.load(name, cache_dir=tmp_path)
    assert not isinstance(err.value, HFValidationError)
    assert repr(name) in str(err.value) and rule in str(err.value)
    assert "not a local folder, a registered alias or a valid Hub repo id" in str(err.value)


def test_valid_names_and_revisions_reach_the_cache(tmp_path, monkeypatch):
    """Names at the limits of the rules pass the check and get as far as the (empty) offline cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = ["a/" + "b" * 96, "Org_1/x.y-z_2", "org/x@refs/pr/1", "org/x@v1.0", "org/x@feature/a-b", f"org/x@{V1_SHA}"]
    for name in names:
        with pytest.raises(embedhub.ModelNotCachedError, match="not in the local Hugging Face cache"):
            embedhub.load(name, cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("revision", "rule"),
    [
        ("../../escape", "contains '..'"),
        ("/etc/passwd", "starts or ends with '/'"),
        ("main/", "starts or ends with '/'"),
        ("a//b", "holds '//'"),
        ("refs/.hidden", "starts with '.'"),
        ("v1.lock", "ends with '.lock'"),
        ("a b", "holds ' '"),
        ("x\\y", "holds '\\\\'"),
        ("v1\n", "holds '\\n'"),
        ("a@{1}", "'@{'"),
        ("v1.", "ends with '.'"),
    ],
)
def test_invalid_revision_is_refused_before_the_cache_is_read(tmp_path, monkeypatch, revision, rule):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    forms = [({"revision": revision}, "org/victim")]
    if "@" not in revision:  # in 'name@revision' the revision is what follows the last '@'
        forms.append(({}, f"org/victim@{revision}"))
    for kwargs, name in forms:
        with pytest.raises(embedhub.ModelNotFoundError) as err:
            embedhub.load(name, cache_dir=tmp_path, **kwargs)
        message = str(err.value)
        assert f"revision {revision!r}" in message and "is not a valid branch, tag or commit" in message
        assert rule in message


def test_revision_cannot_walk_out_of_the_cache(tmp_path, monkeypatch, tiny_st_dir):
    """``huggingface_hub`` reads ``refs/<revision>`` and ``snapshots/<commit>`` as paths: a revision
    ``../../escape`` in a crafted cache leads it to a model folder outside the repo's cache entry.
    embedhub refuses the revision before that path is built."""
    from huggingface_hub import snapshot_download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    repo = cache / "models--org--victim"
    (repo / "refs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    shutil.copytree(tiny_st_dir, tmp_path / "outside")
    (cache / "escape").write_text("../../../outside")  # read as refs/../../escape, then snapshots/<this>
    try:
        followed = Path(
            snapshot_download("org/victim", revision="../../escape", cache_dir=cache, local_files_only=True)
        )
    except Exception:  # a huggingface_hub that guards this itself
        followed = None
    if followed is not None:
        assert followed.resolve() == (tmp_path / "outside").resolve()
    with pytest.raises(embedhub.ModelNotFoundError, match=r"revision '\.\./\.\./escape' of model .* contains '\.\.'"):
        embedhub.load("org/victim@../../escape", cache_dir=cache, device="cpu")


def test_hf_validation_error_from_snapshot_download_becomes_model_not_found(tmp_path, monkeypatch):
    """Were embedhub's rules to lag behind huggingface_hub's, its HFValidationError still arrives typed."""
    from huggingface_hub.errors import HFValidationError

    from embedhub.hub import download as _hub

    monkeypatch.setattr(_hub, "check_hub_name", lambda *a: None)
    with pytest.raises(embedhub.ModelNotFoundError, match=r"model 'a/b--c@v1' is not a valid Hub name: .*--") as err:
        _hub.download("a/b--c", ["*.json"], revision="v1", cache_dir=tmp_path, local_files_only=True, token=None)
    assert isinstance(err.value.__cause__, HFValidationError)


def test_alias_pins_a_revision(tmp_path, open_clip_dir, second_model):
    """An alias maps to a repo id and a pinned revision; `alias@rev` overrides the pin."""
    hf_home = tmp_path / "hf"
    _put_in_cache(hf_home, "tiny-org/tiny-clip", MAIN_SHA, open_clip_dir, ["main"])
    _put_in_cache(hf_home, "tiny-org/tiny-clip", V1_SHA, second_model, ["v1"])
    code = (
        "import json, embedhub\n"
        "embedhub.register_model('pinned-clip', 'tiny-org/tiny-clip', revision='v1')\n"
        "e = embedhub.model_entry('pinned-clip')\n"
        "out = {'entry': [e.repo_id, e.revision], 'listed': 'pinned-clip' in embedhub.list_models()}\n"
        "for name in ('pinned-clip', 'pinned-clip@main'):\n"
        "    m = embedhub.load(name, device='cpu')\n"
        "    out[name] = [m.encode(['a photo of a cat', 'rocket']).tolist(), m.revision]\n"
        "print('RESULT' + json.dumps(out))\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]
    res = json.loads(line[len("RESULT"):])
    assert res["entry"] == ["tiny-org/tiny-clip", "v1"] and res["listed"]
    texts = ["a photo of a cat", "rocket"]
    np.testing.assert_allclose(res["pinned-clip"][0], embedhub.load(second_model, device="cpu").encode(texts),
                               atol=1e-6)
    assert res["pinned-clip"][1] == V1_SHA and res["pinned-clip@main"][1] == MAIN_SHA
    np.testing.assert_allclose(res["pinned-clip@main"][0], embedhub.load(open_clip_dir, device="cpu").encode(texts),
                               atol=1e-6)
