"""Hub tokens are stripped and checked before use and never appear in a message, a chained cause or
context, a formatted traceback or a log record, whether they come from the argument, ``HF_TOKEN`` or
huggingface_hub's stored login.

The public Hub cannot be reached here, so Hub clients are test doubles: ``LeakyHubApi`` stands in for
``huggingface_hub.HfApi`` and a function stands in for ``huggingface_hub.snapshot_download``; both fail
the way the real HTTP stack does for a bad header (its message quotes the ``Authorization`` value).
Model folders are real (conftest)."""

from __future__ import annotations

import logging
import shutil
import traceback
from pathlib import Path

import pytest

import embedhub
from embedhub.errors import ModelNotFoundError, PublishError
from embedhub.hub import resolve_token
from embedhub.hub.publish import push_folder

SECRET = "hf_SeCrEtVaLuE0123456789abcdef"


class LeakyHubApi:
    """Test double of ``huggingface_hub.HfApi``: records the token it gets, and optionally fails with a
    transport error that quotes the header, as httpx/h11 do (``Illegal header value b'Bearer ...'``)."""

    def __init__(self, token=None, leak: bool = False):
        self.token, self.leak, self.tokens = token, leak, []

    def create_repo(self, *args, token=None, **kwargs):
        self.tokens.append(token)
        if self.leak:
            try:
                raise ValueError(f"Illegal header value b'Bearer {token}\\n'")
            except ValueError as inner:
                raise ConnectionError(f"request failed with Authorization: Bearer {token}") from inner
        return "https://huggingface.co/acme/m"

    def upload_folder(self, **kwargs):
        from huggingface_hub import CommitInfo

        self.tokens.append(kwargs.get("token"))
        return CommitInfo(commit_url="https://huggingface.co/acme/m/commit/" + "d" * 40, commit_message="m",
                          commit_description="", oid="d" * 40)


def _texts(exc: BaseException) -> str:
    """Everything a traceback or a log could print about ``exc``: messages, reprs, the whole chain."""
    out, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e), repr(e.args)]
        todo += [e.__cause__, e.__context__]
    out.append("".join(traceback.format_exception(exc)))
    return "\n".join(out)


def _no_secret(text: str, secret: str = SECRET) -> None:
    assert secret not in text and secret.strip() not in text and secret[3:15] not in text


@pytest.fixture
def model_dir(tmp_path, tiny_st_dir) -> Path:
    return Path(shutil.copytree(tiny_st_dir, tmp_path / "model"))


@pytest.fixture
def no_ambient_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))


def test_pasted_newline_is_stripped_before_use(model_dir, no_ambient_token):
    api = LeakyHubApi()
    push_folder(model_dir, "acme/m", token=SECRET + "\n", api=api)
    assert api.tokens == [SECRET, SECRET]
    assert resolve_token("  " + SECRET + "\r\n") == SECRET


@pytest.mark.parametrize("bad", [SECRET[:10] + " " + SECRET[10:], SECRET[:10] + "\n" + SECRET[10:],
                                 SECRET + "\u00e9", SECRET[:8] + "\x00" + SECRET[8:]])
def test_malformed_token_refused_without_showing_it(model_dir, no_ambient_token, bad, caplog):
    api = LeakyHubApi()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PublishError, match="token argument") as info:
        push_folder(model_dir, "acme/m", token=bad, api=api)
    assert api.tokens == []
    for part in bad.split():
        _no_secret(_texts(info.value), part)
    assert SECRET[3:15] not in caplog.text


def test_client_error_quoting_the_token_is_redacted_in_the_whole_chain(model_dir, no_ambient_token, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PublishError, match="creating the Hub repo") as info:
        push_folder(model_dir, "acme/m", token=SECRET, api=LeakyHubApi(leak=True))
    text = _texts(info.value)
    _no_secret(text)
    assert "redacted" in text and info.value.__cause__ is not None and info.value.__context__ is None
    _no_secret(caplog.text)


def test_token_from_environment_checked_and_redacted(model_dir, no_ambient_token, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", SECRET[:12] + " " + SECRET[12:])
    with pytest.raises(PublishError, match="HF_TOKEN") as info:
        push_folder(model_dir, "acme/m", api=None)
    _no_secret(_texts(info.value), SECRET[:12])
    _no_secret(_texts(info.value), SECRET[12:])
    monkeypatch.setenv("HF_TOKEN", SECRET + "\n")
    api = LeakyHubApi(leak=True)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    with pytest.raises(PublishError) as info:
        push_folder(model_dir, "acme/m")
    _no_secret(_texts(info.value))


def test_stored_login_token_checked_and_redacted(model_dir, no_ambient_token, tmp_path, monkeypatch):
    import huggingface_hub

    token_file = tmp_path / "hf_home" / "token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text(SECRET + "\u00e9\n")
    with pytest.raises(PublishError, match="stored login") as info:
        push_folder(model_dir, "acme/m")
    _no_secret(_texts(info.value))
    token_file.write_text(SECRET + "\n")
    api = LeakyHubApi(leak=True)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    with pytest.raises(PublishError) as info:
        push_folder(model_dir, "acme/m")
    _no_secret(_texts(info.value))


def test_download_token_checked_and_errors_redacted(no_ambient_token, monkeypatch, caplog):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(ModelNotFoundError, match="token argument") as info:
        embedhub.load("org/private-model", token=SECRET + " x", device="cpu")
    _no_secret(_texts(info.value))

    def leaky_download(repo_id, *, token=None, **kwargs):
        try:
            raise ValueError(f"Illegal header value b'Bearer {token}'")
        except ValueError as inner:
            raise OSError(f"connection failed for Bearer {token}") from inner

    monkeypatch.setattr(huggingface_hub, "snapshot_download", leaky_download)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ModelNotFoundError) as info:
        embedhub.load("org/private-model", token=SECRET + "\n", device="cpu")
    text = _texts(info.value)
    _no_secret(text)
    assert "org/private-model" in str(info.value) and "redacted" in text
    _no_secret(caplog.text)
