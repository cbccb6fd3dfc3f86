"""Pushing a saved model folder to the Hugging Face Hub: validated first, then one commit.

Everything that can be checked offline is checked before the first network call, in this order:
the repo id, the revision, the folder (it exists and holds a model in a format embedhub loads,
with safetensors or ONNX weights and nothing pickled), the token. Only the files a load of the
folder opens are uploaded, plus the model card (``README.md``) and the images it links.

>>> from embedhub.hub.publish import push_folder
>>> push_folder("my-model", "acme/minilm-sts", private=True)  # doctest: +SKIP
'https://huggingface.co/acme/minilm-sts/commit/0f3a...'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from embedhub.errors import PublishError
from embedhub.hub.card import CARD_NAME, linked_images
from embedhub.hub.download import (
    COMMIT,
    clean_token,
    implicit_token,
    known_secrets,
    literal_pattern,
    redact,
    repo_id_problem,
    revision_problem,
    scrub,
    token_source,
)

#: the commit message of a push that gives none
PUSH_DEFAULT_MESSAGE = "Upload embedhub model"
#: pickle-based file kinds: never uploaded (loading them can run code)
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
#: weight files a model folder must hold one of
WEIGHT_SUFFIXES = (".safetensors", ".onnx")
_LOGIN_HINT = "pass token=..., set the HF_TOKEN environment variable, or run `hf auth login`"


_literal = literal_pattern


def check_names(repo_id: Any, revision: Any, create_pr: bool, commit_message: Any = None) -> None:
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise PublishError(f"commit_message must be a non-empty str, got {commit_message!r}")
    if not isinstance(repo_id, str):
        raise PublishError(f"repo_id must be a str ('namespace/name'), got {type(repo_id).__name__} {repo_id!r}")
    problem = repo_id_problem(repo_id)
    if problem:
        raise PublishError(f"cannot push to {repo_id!r}: not a valid Hub repo id: {problem}")
    if revision is None:
        return
    problem = revision_problem(revision)
    if problem:
        raise PublishError(f"cannot push to {repo_id!r} at revision {revision!r}: not a valid branch name: {problem}")
    if COMMIT.fullmatch(revision):
        raise PublishError(f"cannot push to {repo_id!r} at revision {revision!r}: that is a commit hash; "
                           "a push goes to a branch (e.g. 'main' or 'v2')")
    if create_pr and revision != "main":
        raise PublishError(f"cannot push to {repo_id!r} with create_pr=True and revision {revision!r}: the Hub opens "
                           "pull requests against the default branch; leave revision unset or push to the branch")


def upload_files(folder: str | os.PathLike) -> list[str]:
    """The files ``push_folder`` uploads from ``folder`` (relative POSIX paths, sorted): the files a load
    of it opens (:func:`embedhub.formats.model_files`), the model card and the images the card links.
    Raises :class:`PublishError` when ``folder`` is missing, is not a model folder, does not load,
    holds no safetensors/ONNX weights or needs a pickled file.

    >>> upload_files("my-model")  # doctest: +SKIP
    ['README.md', 'embedhub_config.json', 'model.safetensors', 'text/config.json', 'text/tokenizer.json']
    """
    from embedhub._io.folder import shown
    from embedhub.errors import EmbedhubError, UnknownFormatError
    from embedhub.formats.registry import detect, model_files

    path = Path(folder)
    if not path.exists():
        raise PublishError(f"cannot push {shown(folder)!r}: the folder does not exist")
    if not path.is_dir():
        raise PublishError(f"cannot push {shown(folder)!r}: it is a file, not a model folder")

    def pickled_weights() -> str | None:
        present = sorted(shown(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file())
        old = [f for f in present if f.lower().endswith(PICKLED_SUFFIXES)]
        if old:
            return (f"its weights are pickled ({', '.join(old[:5])}), which embedhub never uploads; re-save it with "
                    "embedhub.load(folder).save_pretrained(new_folder)")
        return None

    try:
        detect(path)
    except UnknownFormatError as exc:
        raise PublishError(f"cannot push {shown(folder)!r}: it is not a model folder: {exc}") from exc
    try:
        needed = model_files(path)  # what a load of it opens, and the files of its save record
    except (EmbedhubError, OSError) as exc:
        why = pickled_weights() or f"it does not load, so it is not pushed: {exc}"
        raise PublishError(f"cannot push {shown(folder)!r}: {why}") from exc
    pickled = [f for f in needed if f.lower().endswith(PICKLED_SUFFIXES)]
    if pickled:
        raise PublishError(f"cannot push {shown(folder)!r}: it needs pickled files ({', '.join(pickled)}), which "
                           "embedhub never uploads; re-save it with embedhub.load(folder).save_pretrained(new_folder)")
    if not any(f.lower().endswith(WEIGHT_SUFFIXES) for f in needed):
        present = sorted(shown(p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file())
        why = pickled_weights() or ("it holds no weights (*.safetensors or ONNX); found "
                                    + (", ".join(present[:20]) or "no files"))
        raise PublishError(f"cannot push {shown(folder)!r}: {why}")
    extra = []
    card = path / CARD_NAME
    if card.is_file() and not card.is_symlink():
        extra = [CARD_NAME, *linked_images(path)]
    return sorted(set(needed) | set(extra))


def resolve_token(token: str | None = None) -> str:
    """The Hub token an upload would use (``token``, else ``HF_TOKEN`` / ``hf auth login``); a
    :class:`~embedhub.PublishError` saying how to provide one when there is none. No network call."""
    return _resolve_token(token, None)


def _resolve_token(token: Any, api: Any) -> str:
    """The token to push with, stripped (a newline pasted from a file) and checked: printable ASCII
    without spaces; a :class:`PublishError` naming where it came from, never showing it."""
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise PublishError(f"token must be a non-empty str, got {type(token).__name__}; {_LOGIN_HINT}")
    if token:
        return clean_token(token, "the token argument", PublishError)
    own = getattr(api, "token", None) if api is not None else None
    if isinstance(own, str) and own.strip():
        return clean_token(own, "the api's token", PublishError)
    found = implicit_token()
    if not found or not found.strip():
        raise PublishError(f"pushing to the Hub needs a token with write access and none was found: {_LOGIN_HINT}")
    return clean_token(found, token_source(None), PublishError)


def _hub_error(exc: Exception, repo_id: str, revision: str | None, step: str, secrets: list[str]) -> PublishError:
    """A :class:`PublishError` for a failed Hub call, its message and chained cause free of any token."""
    error = _hub_message(exc, repo_id, revision, step)
    error.args = (redact(str(error), secrets),)
    error.__cause__ = scrub(exc, secrets)
    error.__context__ = None
    return error


def _hub_message(exc: Exception, repo_id: str, revision: str | None, step: str) -> PublishError:
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    where = repo_id + (f"@{revision}" if revision else "")
    if isinstance(exc, RevisionNotFoundError):
        return PublishError(f"{step} {where!r} failed: the revision {revision!r} does not exist on the Hub")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return PublishError(f"{step} {where!r} failed: the Hub refused the token (HTTP {status}); it must be valid and "
                            f"have write access to {repo_id.split('/')[0]!r}: {_LOGIN_HINT}")
    if isinstance(exc, RepositoryNotFoundError):
        return PublishError(f"{step} {where!r} failed: the repo does not exist or the token cannot see it (HTTP "
                            f"{status}): {exc}")
    if isinstance(exc, HfHubHTTPError):
        return PublishError(f"{step} {where!r} failed: HTTP {status}: {exc}")
    return PublishError(f"{step} {where!r} failed: could not reach the Hub ({type(exc).__name__}: {exc})")


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    create_pr: bool = False,
    api: Any = None,
) -> str:
    """Upload a saved model folder to the Hub repo ``repo_id`` in one commit; returns the commit URL.

    The repo is created when missing (``private`` applies then), a ``revision`` other than
    ``"main"`` is created as a branch, and ``create_pr=True`` opens a pull request against the main
    branch instead of committing to it. Uploaded: :func:`upload_files` (the format's files, the
    card and the images it links). The token is ``token``, else ``api``'s, else
    ``huggingface_hub.get_token()`` (``HF_TOKEN`` or ``hf auth login``). Every error is a
    :class:`PublishError` naming the repo and the cause; nothing reaches the network before the
    names, the folder and the token are checked.

    >>> push_folder("runs/lit/model", "acme/lit-fashion", revision="v1",
    ...             commit_message="LiT on Fashion-MNIST, 71.2% zero-shot")  # doctest: +SKIP
    'https://huggingface.co/acme/lit-fashion/commit/5c2e...'
    """
    check_names(repo_id, revision, create_pr, commit_message)
    files = upload_files(folder)
    token = _resolve_token(token, api)
    secrets = known_secrets(token, getattr(api, "token", None))
    failure = None
    if api is None:
        import huggingface_hub

        api = huggingface_hub.HfApi(token=token)
    step = "creating the Hub repo"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model", token=token)
        if revision not in (None, "main") and not create_pr:
            step = "creating the branch of"
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model", token=token)
        step = "uploading to"
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or PUSH_DEFAULT_MESSAGE,
            allow_patterns=[_literal(f) for f in files],
            create_pr=create_pr,
            token=token,
        )
    except Exception as exc:  # HTTP and transport errors, and anything else the client raises
        failure = _hub_error(exc, repo_id, revision, step, secrets)
    if failure is not None:
        raise failure  # outside the except block: the token-bearing original is not chained as context
    return str(getattr(info, "commit_url", info))
