"""Pushing a saved model folder: validation before any network call, the exact files uploaded, the
arguments of each Hub call, and Hub errors as :class:`PublishError`.

The public Hub cannot be reached here, so ``RecordingHubApi`` stands in for ``huggingface_hub.HfApi``
(the only test double): it records every call and copies the files ``upload_folder`` would send
(selected by huggingface_hub's own ``filter_repo_objects`` from ``allow_patterns``) into a dict
path -> bytes. Everything else -- the model folders, the card, the format detection -- is real.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import embedhub
from embedhub.errors import PublishError
from embedhub.formats import model_files
from embedhub.hub.card import Result, write_card
from embedhub.hub.publish import PUSH_DEFAULT_MESSAGE, push_folder, upload_files

TOKEN = "hf_test_token_not_real"


def _http_error(status: int, url: str):
    """The error huggingface_hub raises for a real HTTP response of ``status``."""
    import huggingface_hub.errors as hf_errors
    from huggingface_hub.utils import hf_raise_for_status

    http = sys.modules[hf_errors.HTTPError.__module__.split(".")[0]]  # the HTTP client huggingface_hub uses
    response = http.Response(status, request=http.Request("POST", url), json={"error": f"status {status}"})
    try:
        hf_raise_for_status(response)
    except hf_errors.HfHubHTTPError as exc:
        return exc
    raise AssertionError(f"HTTP {status} raised nothing")


class RecordingHubApi:
    """Test double of ``huggingface_hub.HfApi`` (the public Hub cannot be reached from tests)."""

    def __init__(self, token: str | None = None, fail: dict[str, int] | None = None):
        self.token = token
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.fail = fail or {}

    def _record(self, name: str, args: tuple, kwargs: dict) -> None:
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise _http_error(self.fail[name], f"https://huggingface.co/api/{name}")

    def create_repo(self, *args, **kwargs):
        self._record("create_repo", args, kwargs)
        return f"https://huggingface.co/{args[0] if args else kwargs['repo_id']}"

    def create_branch(self, *args, **kwargs):
        self._record("create_branch", args, kwargs)

    def upload_folder(self, **kwargs):
        from huggingface_hub import CommitInfo
        from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
        from huggingface_hub.utils import filter_repo_objects

        self._record("upload_folder", (), kwargs)
        root = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        for rel in filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                       ignore_patterns=list(DEFAULT_IGNORE_PATTERNS)):
            self.uploaded[rel] = (root / rel).read_bytes()
        url = f"https://huggingface.co/{kwargs['repo_id']}/commit/{'d' * 40}"
        return CommitInfo(commit_url=url, commit_message=kwargs["commit_message"], commit_description="",
                          oid="d" * 40)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def kwargs(self, name: str) -> dict:
        (found,) = [c[2] for c in self.calls if c[0] == name]
        return found


@pytest.fixture
def model_dir(tmp_path, tiny_embedhub_dir) -> Path:
    """The tiny text+image model in embedhub's format with a card, a plot it links, and files that are not
    part of the model (a pickled optimizer state, a log, a nested checkpoint, a hidden cache)."""
    from PIL import Image

    folder = tmp_path / "model"
    shutil.copytree(tiny_embedhub_dir, folder)
    plot = tmp_path / "training_curve.png"
    Image.new("RGB", (64, 32), (250, 250, 250)).save(plot)
    write_card(folder, model_id="acme/tiny-lit", modalities=("text", "image"), plot=plot,
               results=[Result("zero-shot-image-classification", "Fashion-MNIST", "fashion_mnist", "accuracy", 0.5)])
    torch.save({"step": 3}, folder / "optimizer.pt")
    (folder / "train.log").write_text("epoch 1 loss 2.3\n")
    (folder / "checkpoints" / "step1").mkdir(parents=True)
    shutil.copyfile(folder / "model.safetensors", folder / "checkpoints" / "step1" / "model.safetensors")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x.json").write_text("{}")
    return folder


def test_push_uploads_exactly_the_model_files_card_and_plot(model_dir, tmp_path):
    api = RecordingHubApi()
    url = push_folder(model_dir, "acme/tiny-lit", private=True, token=TOKEN, api=api)

    assert url == f"https://huggingface.co/acme/tiny-lit/commit/{'d' * 40}"
    expected = sorted([*model_files(model_dir), "README.md", "training_curve.png"])
    assert {"embedhub_config.json", "model.safetensors"} <= set(expected)
    assert sorted(api.uploaded) == expected == upload_files(model_dir)
    for rel, data in api.uploaded.items():
        assert data == (model_dir / rel).read_bytes()
    assert not any(k.endswith((".pt", ".log")) or k.startswith((".cache", "checkpoints")) for k in api.uploaded)

    assert api.names() == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == ("acme/tiny-lit",)
    assert api.kwargs("create_repo") == {"private": True, "exist_ok": True, "repo_type": "model", "token": TOKEN}
    upload = api.kwargs("upload_folder")
    assert upload["repo_id"] == "acme/tiny-lit" and upload["revision"] is None and upload["create_pr"] is False
    assert upload["commit_message"] == PUSH_DEFAULT_MESSAGE and upload["folder_path"] == str(model_dir)

    # what was uploaded is a complete model: it loads and embeds exactly as the folder does
    pushed = tmp_path / "pushed"
    for rel, data in api.uploaded.items():
        (pushed / rel).parent.mkdir(parents=True, exist_ok=True)
        (pushed / rel).write_bytes(data)
    texts = ["a photo of a cat", "a rocket"]
    a = embedhub.load(pushed, device="cpu").encode(texts)
    b = embedhub.load(model_dir, device="cpu").encode(texts)
    assert np.abs(a - b).max() == 0


def test_push_to_branch_creates_it(model_dir):
    api = RecordingHubApi()
    push_folder(model_dir, "acme/tiny-lit", revision="v1", commit_message="LiT, 1 epoch", token=TOKEN, api=api)
    assert api.names() == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[1][1] == ("acme/tiny-lit",) and api.kwargs("create_branch")["branch"] == "v1"
    assert api.kwargs("create_branch")["exist_ok"] is True
    assert api.kwargs("create_repo")["private"] is False
    upload = api.kwargs("upload_folder")
    assert (upload["revision"], upload["commit_message"], upload["create_pr"]) == ("v1", "LiT, 1 epoch", False)


def test_push_as_pull_request(model_dir):
    api = RecordingHubApi()
    push_folder(model_dir, "acme/tiny-lit", create_pr=True, token=TOKEN, api=api)
    assert api.names() == ["create_repo", "upload_folder"]
    assert api.kwargs("upload_folder")["create_pr"] is True


def test_file_names_with_pattern_characters_upload_only_themselves(model_dir):
    """``upload_folder`` filters with fnmatch: a linked image named ``curve[1].png`` must match itself only."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(model_dir / "curve[1].png")
    Image.new("RGB", (8, 8)).save(model_dir / "curve1.png")
    with open(model_dir / "README.md", "a") as f:
        f.write("\n![second curve](curve[1].png)\n")
    api = RecordingHubApi()
    push_folder(model_dir, "acme/tiny-lit", token=TOKEN, api=api)
    assert "curve[1].png" in api.uploaded and "curve1.png" not in api.uploaded


@pytest.mark.parametrize("repo_id", ["a/b/c", "-bad/x", "x", "org/na me", "org/name.git", "org/a--b", ""])
def test_invalid_repo_id_refused_before_any_call(model_dir, repo_id):
    api = RecordingHubApi()
    with pytest.raises(PublishError, match="not a valid Hub repo id") as info:
        push_folder(model_dir, repo_id, token=TOKEN, api=api)
    assert repr(repo_id) in str(info.value)
    assert api.calls == []


@pytest.mark.parametrize(("revision", "why"), [
    ("bad..ref", "'..'"),
    ("a b", "' '"),
    ("", "empty"),
    ("refs/heads/x.lock", ".lock"),
    ("e" * 40, "commit hash"),
])
def test_invalid_revision_refused_before_any_call(model_dir, revision, why):
    api = RecordingHubApi()
    with pytest.raises(PublishError) as info:
        push_folder(model_dir, "acme/tiny-lit", revision=revision, token=TOKEN, api=api)
    assert repr(revision) in str(info.value) and why in str(info.value)
    assert api.calls == []


def test_pull_request_against_a_branch_refused(model_dir):
    api = RecordingHubApi()
    with pytest.raises(PublishError, match="create_pr=True"):
        push_folder(model_dir, "acme/tiny-lit", revision="v1", create_pr=True, token=TOKEN, api=api)
    assert api.calls == []


def test_folder_that_is_not_a_model_refused(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("first note")
    (folder / "b.txt").write_text("second note")
    api = RecordingHubApi()
    with pytest.raises(PublishError, match="not a model folder") as info:
        push_folder(folder, "acme/notes", token=TOKEN, api=api)
    assert str(folder) in str(info.value) and "a.txt" in str(info.value) and "b.txt" in str(info.value)
    with pytest.raises(PublishError, match="does not exist") as info:
        push_folder(tmp_path / "missing", "acme/notes", token=TOKEN, api=api)
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(PublishError, match="is a file"):
        push_folder(folder / "a.txt", "acme/notes", token=TOKEN, api=api)
    assert api.calls == []


def test_folder_with_pickled_weights_refused(tmp_path, hf_clip_dir):
    """A real transformers CLIP folder whose weights are a pickled ``pytorch_model.bin``."""
    from safetensors.torch import load_file

    folder = tmp_path / "pickled_clip"
    shutil.copytree(hf_clip_dir, folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    api = RecordingHubApi()
    with pytest.raises(PublishError, match=r"pickled \(pytorch_model\.bin\)"):
        push_folder(folder, "acme/clip", token=TOKEN, api=api)
    assert api.calls == []


def test_missing_token_refused_with_login_hint(model_dir, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    # huggingface_hub computes the token file's path from HF_HOME at import time: point it there too
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    assert huggingface_hub.get_token() is None

    def no_client(*args, **kwargs):
        pytest.fail("HfApi was constructed although no token was found")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_client)
    with pytest.raises(PublishError) as info:
        push_folder(model_dir, "acme/tiny-lit")
    msg = str(info.value)
    assert "token" in msg and "HF_TOKEN" in msg and "hf auth login" in msg and "token=" in msg


def test_token_from_environment_builds_the_client(model_dir, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    built: list[RecordingHubApi] = []

    def client(token=None):
        built.append(RecordingHubApi(token=token))
        return built[-1]

    monkeypatch.setattr(huggingface_hub, "HfApi", client)
    push_folder(model_dir, "acme/tiny-lit")
    assert len(built) == 1 and built[0].token == TOKEN
    assert built[0].names() == ["create_repo", "upload_folder"]


@pytest.mark.parametrize(("fail", "expect"), [
    ({"upload_folder": 401}, "refused the token (HTTP 401)"),
    ({"upload_folder": 403}, "refused the token (HTTP 403)"),
    ({"create_repo": 401}, "refused the token (HTTP 401)"),
    ({"upload_folder": 500}, "HTTP 500"),
])
def test_hub_http_errors_become_publish_errors(model_dir, fail, expect):
    api = RecordingHubApi(fail=fail)
    with pytest.raises(PublishError, match=re.escape(expect)) as info:
        push_folder(model_dir, "acme/tiny-lit", token=TOKEN, api=api)
    assert "'acme/tiny-lit'" in str(info.value)
    assert isinstance(info.value.__cause__, Exception)
    if fail.get("create_repo"):
        assert api.names() == ["create_repo"]
