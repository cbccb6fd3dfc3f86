"""One name-resolution path: local folders, registry aliases and Hub repo ids (``org/name@revision``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ._errors import ModelNotCachedError, ModelNotFoundError
from ._registry import close_aliases, get_entry

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
#: files read to detect a repo's format before anything large is downloaded
CONFIG_PATTERNS = ["*.json", "*/*.json"]


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
    if not _REPO_ID.match(base):
        looks_like_path = name.startswith((".", "/", "~")) or os.sep in name
        hint = close_aliases(base)
        msg = f"model {name!r} is not a local folder, a registered alias or a Hub repo id ('org/name[@revision]')"
        if looks_like_path:
            msg = f"model folder {str(path)!r} does not exist"
        if hint:
            msg += f"; close aliases: {', '.join(hint)}"
        msg += "; see embedhub.list_models()"
        raise ModelNotFoundError(msg)
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
    """``snapshot_download`` of only ``allow_patterns``, with errors that say what went wrong."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _offline(local_files_only)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
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
