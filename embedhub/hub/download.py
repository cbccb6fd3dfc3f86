"""One name-resolution path: local folders, registry aliases and Hub repo ids (``org/name@revision``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from embedhub.errors import ModelNotCachedError, ModelNotFoundError
from embedhub.hub.aliases import close_aliases, get_entry

#: the Hub's limit on each of the namespace and the repo name
MAX_NAME_PART = 96
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
COMMIT = re.compile(r"[0-9a-f]{40}")
#: characters Git refuses in branch and tag names (``git check-ref-format``), besides control characters
_REF_FORBIDDEN = set(" ~^:?*[\\")
#: files read to detect a repo's format before anything large is downloaded (fnmatch: ``*`` crosses folders)
CONFIG_PATTERNS = ["*.json"]
#: environment variables huggingface_hub reads a token from
TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "<redacted token>"


def literal_pattern(path: str) -> str:
    """``path`` as an fnmatch pattern that matches only itself (``huggingface_hub`` filters with fnmatch)."""
    return "".join(f"[{c}]" if c in "[]*?" else c for c in path)


# ------------------------------------------------------------------------------------------------ secrets
def token_problem(token: str) -> str | None:
    """Why ``token`` (already stripped) cannot be a Hub token, without showing it; ``None`` when it can."""
    if not token:
        return "it is empty"
    for i, c in enumerate(token):
        if not 33 <= ord(c) <= 126:
            kind = "whitespace" if c.isspace() else "a control character" if ord(c) < 32 or ord(c) == 127 else (
                "not ASCII")
            return f"its character {i + 1} of {len(token)} is {kind}; Hub tokens are printable ASCII without spaces"
    return None


def clean_token(token: str, source: str, error: type[Exception]) -> str:
    """``token`` stripped of surrounding whitespace (a newline pasted from a file) and checked; an
    ``error`` naming ``source`` (never the token) when it cannot be a token."""
    cleaned = token.strip()
    problem = token_problem(cleaned)
    if problem:
        raise error(f"the Hub token from {source} is not usable: {problem} (the token is not shown)")
    return cleaned


def token_source(token: object = None) -> str:
    """Where the token a Hub call uses comes from, in words."""
    if isinstance(token, str):
        return "the token argument"
    for var in TOKEN_ENV:
        if os.environ.get(var, "").strip():
            return f"the {var} environment variable"
    return "huggingface_hub's stored login (`hf auth login`)"


def implicit_token() -> str | None:
    """The token huggingface_hub would use with none given (``HF_TOKEN``, the stored login); no network."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # a corrupt token file: there is no token to use
        return None


def known_secrets(*given: object) -> list[str]:
    """Every token a message must not show: ``given``, the environment's and the stored login's, raw and
    stripped, longest first."""
    found = [*given, *(os.environ.get(v) for v in TOKEN_ENV), implicit_token()]
    secrets: set[str] = set()
    for value in found:
        if isinstance(value, str):
            for v in (value, value.strip(), *value.split()):
                if len(v) >= 6:
                    secrets.add(v)
    return sorted(secrets, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every secret replaced by ``<redacted token>`` (also in its ``repr`` escapes)."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
        escaped = repr(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


def _redact_value(value: object, secrets: list[str]) -> object:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "backslashreplace"), secrets).encode("utf-8")
    if isinstance(value, tuple):
        return tuple(_redact_value(v, secrets) for v in value)
    return value


def _shows(exc: BaseException, secrets: list[str]) -> bool:
    try:
        text = f"{exc}\n{exc!r}\n{getattr(exc, '__notes__', '')}"
    except Exception:
        return True
    return any(s in text or repr(s)[1:-1] in text for s in secrets)


class RedactedError(RuntimeError):
    """Stands in, in an exception chain, for a third-party error whose message showed a token."""


def scrub(exc: BaseException | None, secrets: list[str]) -> BaseException | None:
    """``exc`` and its ``__cause__``/``__context__`` chain with the secrets taken out of their messages
    (in place); a link whose message still shows one is replaced by a :class:`RedactedError`."""
    seen: set[int] = set()

    def fix(e: BaseException | None, depth: int) -> BaseException | None:
        if e is None or id(e) in seen or depth > 32:
            return None
        seen.add(id(e))
        try:
            e.args = tuple(_redact_value(a, secrets) for a in e.args)
            if isinstance(getattr(e, "__notes__", None), list):
                e.__notes__ = [redact(str(n), secrets) for n in e.__notes__]
        except Exception:  # an exception type with read-only args
            pass
        e.__cause__ = fix(e.__cause__, depth + 1)  # type: ignore[assignment]
        e.__context__ = fix(e.__context__, depth + 1)  # type: ignore[assignment]
        if not secrets or not _shows(e, secrets):
            return e
        try:
            text = str(e)
        except Exception:
            text = ""
        stand_in = RedactedError(f"{type(e).__name__}: {redact(text, secrets)}")
        stand_in.__cause__, stand_in.__context__ = e.__cause__, e.__context__
        stand_in.__suppress_context__ = e.__suppress_context__
        return stand_in

    return fix(exc, 0)


@dataclass(frozen=True)
class Source:
    """Where a model was found: the folder it loads from and the name it was asked by."""

    folder: Path
    name: str
    repo_id: str | None = None
    revision: str | None = None


def _offline(local_files_only: bool) -> bool:
    if local_files_only:
        return True
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def split_revision(name: str, revision: str | None) -> tuple[str, str | None]:
    """``"org/model@v1"`` -> ``("org/model", "v1")``; a revision given twice must agree."""
    if "@" in name:
        name, rev = name.rsplit("@", 1)
        if not rev:
            raise ValueError(f"empty revision after '@' in model name {name + '@'!r}")
        if revision is not None and revision != rev:
            raise ValueError(f"revision given twice and differently: {rev!r} in the name, {revision!r} as argument")
        revision = rev
    return name, revision


def repo_id_problem(repo_id: str) -> str | None:
    """Which Hub naming rule ``repo_id`` breaks (``None`` when it is a valid ``namespace/name``).

    The rules are ``huggingface_hub.utils.validate_repo_id``'s, checked part by part so the message
    can say which part breaks which rule; that function itself runs last, so a rule it adds later
    is enforced too.
    """
    if repo_id.count("/") != 1:
        return f"a Hub repo id is 'namespace/name' with exactly one '/', found {repo_id.count('/')}"
    for label, part in zip(("namespace", "name"), repo_id.split("/")):
        if not part:
            return f"the {label} is empty"
        if len(part) > MAX_NAME_PART:
            return f"the {label} has {len(part)} characters; the Hub allows at most {MAX_NAME_PART}"
        if not _NAME_CHARS.fullmatch(part):
            bad = sorted({c for c in part if not _NAME_CHARS.fullmatch(c)})
            return f"the {label} {part!r} holds {', '.join(map(repr, bad))}; Hub names use only A-Z a-z 0-9 - _ ."
        for seq in ("--", ".."):
            if seq in part:
                return f"the {label} {part!r} contains {seq!r}, which the Hub forbids"
        if part[0] in "-." or part[-1] in "-.":
            return f"the {label} {part!r} starts or ends with '-' or '.'; Hub names start and end with A-Z a-z 0-9 _"
    if repo_id.endswith(".git"):
        return "the name ends with '.git', which the Hub forbids"
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        return str(exc)
    return None


def revision_problem(revision: str) -> str | None:
    """Which Git ref-name rule ``revision`` breaks (``None`` for a valid branch, tag or commit).

    Offline, ``huggingface_hub`` reads ``refs/<revision>`` from the cache as a path, and online it
    writes that file, so ``..``, absolute paths and the like must never reach it.
    """
    if not isinstance(revision, str):
        return f"a revision is a str (branch, tag or commit), got {type(revision).__name__}"
    if not revision:
        return "the revision is empty"
    if COMMIT.fullmatch(revision):
        return None
    bad = sorted({c for c in revision if c in _REF_FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        return f"it holds {', '.join(map(repr, bad))}, which Git refuses in branch and tag names"
    if ".." in revision:
        return "it contains '..', which Git refuses in branch and tag names (and would leave the cache folder)"
    if "@{" in revision or revision == "@":
        return "it contains '@{' or is '@', which Git refuses in branch and tag names"
    if revision.startswith("/") or revision.endswith("/") or "//" in revision:
        return "it starts or ends with '/' or holds '//'; Git branch and tag names are relative, one '/' at a time"
    for component in revision.split("/"):
        if component.startswith(".") or component.endswith(".lock"):
            return f"its part {component!r} starts with '.' or ends with '.lock', which Git refuses"
    if revision.endswith("."):
        return "it ends with '.', which Git refuses in branch and tag names"
    return None


def check_hub_name(repo_id: str, revision: str | None, name: str) -> None:
    """Raise :class:`ModelNotFoundError` naming ``name`` and the rule its repo id or revision breaks."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise ModelNotFoundError(
            f"model {name!r} is not a local folder, a registered alias or a valid Hub repo id: {problem}"
        )
    if revision is not None:
        problem = revision_problem(revision)
        if problem:
            raise ModelNotFoundError(
                f"revision {revision!r} of model {name!r} is not a valid branch, tag or commit: {problem}"
            )


def resolve(
    name: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    token: str | bool | None = None,
) -> Source:
    """Find the folder for ``name`` (downloading only config files from the Hub at this stage)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"model name must be a non-empty str or path, got {name!r}")
    path = Path(name).expanduser()
    if path.is_dir():
        return Source(path.resolve(), name)
    base, revision = split_revision(name, revision)
    entry = get_entry(base)
    if entry is not None:
        if entry.local_path is not None and revision is None:
            local = entry.local_path()
            if local is not None and local.is_dir():
                return Source(local, name)
        base, revision = entry.repo_id, revision or entry.revision
        if Path(base).expanduser().is_dir():
            return Source(Path(base).expanduser().resolve(), name)
    looks_like_path = name.startswith((".", "/", "~")) or (os.sep != "/" and os.sep in name)
    if base.count("/") != 1 or looks_like_path:
        hint = close_aliases(base)
        msg = f"model {name!r} is not a local folder, a registered alias or a Hub repo id ('org/name[@revision]')"
        if looks_like_path or base.count("/") > 1:
            msg = f"model folder {str(path)!r} does not exist"
        if hint:
            msg += f"; close aliases: {', '.join(hint)}"
        msg += "; see embedhub.list_models()"
        raise ModelNotFoundError(msg)
    check_hub_name(base, revision, name)
    folder = download(
        base, CONFIG_PATTERNS, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token
    )
    return Source(folder, name, base, revision)


def download(
    repo_id: str,
    allow_patterns: list[str],
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool,
    token: str | bool | None,
) -> Path:
    """``snapshot_download`` of only ``allow_patterns``, with errors that say what went wrong.

    The repo id and revision are checked against the Hub's and Git's naming rules first
    (:func:`check_hub_name`), so nothing malformed reaches ``huggingface_hub``.
    """
    from huggingface_hub import snapshot_download

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    check_hub_name(repo_id, revision, where)
    offline = _offline(local_files_only)
    if isinstance(token, str):
        token = clean_token(token, "the token argument", ModelNotFoundError)
    elif token is not False and not offline:
        found = implicit_token()
        if found is not None:
            clean_token(found, token_source(None), ModelNotFoundError)
    secrets = known_secrets(token)
    try:
        return _snapshot(snapshot_download, repo_id, revision, cache_dir, offline, token, allow_patterns, where,
                         local_files_only)
    except Exception as exc:
        failure = exc
    cause = scrub(failure.__cause__ if isinstance(failure, ModelNotFoundError) else failure, secrets)
    if isinstance(failure, ModelNotFoundError):
        failure.args = tuple(_redact_value(a, secrets) for a in failure.args)
    else:
        failure = ModelNotCachedError(f"{where} could not be downloaded: {type(failure).__name__}: "
                                      f"{redact(str(failure), secrets)}")
    failure.__cause__, failure.__context__ = cause, None
    raise failure


def _snapshot(snapshot_download, repo_id, revision, cache_dir, offline, token, allow_patterns, where,
              local_files_only) -> Path:
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
            token=token,
            allow_patterns=allow_patterns,
            library_name="embedhub",
        )
    except HFValidationError as exc:
        raise ModelNotFoundError(f"model {where!r} is not a valid Hub name: {exc}") from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(f"revision {revision!r} of {repo_id!r} does not exist on the Hub") from exc
    except RepositoryNotFoundError as exc:
        hint = close_aliases(repo_id.split("/")[-1])
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} does not exist or is private (pass token=...)"
            + (f"; close aliases: {', '.join(hint)}" if hint else "")
        ) from exc
    except LocalEntryNotFoundError as exc:
        if offline:
            raise ModelNotCachedError(
                f"{where} is not in the local Hugging Face cache and downloads are off "
                f"({'local_files_only=True' if local_files_only else 'HF_HUB_OFFLINE=1'}): "
                "download it once online or pass a local folder"
            ) from exc
        raise ModelNotCachedError(
            f"{where} could not be downloaded (no connection to the Hub?) and is not cached"
        ) from exc
    return Path(folder)
