"""Atomic file and folder replacement: readers see the old content or the new, never a partial file."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None] | bytes | str) -> Path:
    """Write ``path`` through a temporary file beside it, renamed into place when complete.

    ``write`` is the content (``bytes`` or ``str``, UTF-8) or a function that writes a given
    temporary path. The file gets the permissions a new file would (umask applied); on any error
    the temporary file is removed and ``path`` is left as it was.

    >>> atomic_write("out/emb.json", '{"dim": 384}\\n')  # doctest: +SKIP
    PosixPath('out/emb.json')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(write):
            os.close(fd)
            fd = -1
            write(tmp)
        else:
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(write.encode() if isinstance(write, str) else write)
                fh.flush()
                os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _normal_permissions(tree: Path) -> None:
    """What a new folder and new files get under the umask (a staging folder from ``mkdtemp`` is 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tree, *tree.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def moved_whole(staging: Path, folder: Path) -> bool:
    """Move ``staging`` into place by one rename when ``folder`` is missing or empty (``True``); ``False``
    when ``folder`` holds files. A ``folder`` that is a symlink or not a folder is refused."""
    _normal_permissions(staging)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(f"{folder} exists and is not a folder; nothing was replaced")
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()  # empty: os.replace cannot rename onto a non-empty folder
    if not folder.exists():
        os.replace(staging, folder)
        return True
    return False


def install_folder(staging: str | os.PathLike, folder: str | os.PathLike, *, last: str | None = None,
                   replace: Iterable[str] = ()) -> Path:
    """Move the complete folder ``staging`` into place as ``folder``.

    A missing or empty ``folder`` is replaced by one rename. Into a folder that holds files, each
    file of ``staging`` moves with its own atomic rename (``last`` -- e.g. the config that marks the
    folder complete -- after all others); files already there that ``staging`` does not hold stay.
    Symlinks and non-files in the way are refused, never followed or removed. ``replace`` names files
    of ``folder`` (relative paths) that belong to what ``staging`` replaces: they are removed after the
    move when ``staging`` did not hold them.
    """
    staging, folder = Path(staging), Path(folder)
    if moved_whole(staging, folder):
        return folder
    files = sorted((p for p in staging.rglob("*") if p.is_file()), key=lambda p: p.name == last)
    for f in files:
        target = folder / f.relative_to(staging)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise FileExistsError(f"{target} exists and is not a regular file; embedhub will not replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
    shutil.rmtree(staging)
    for rel in replace:
        old = folder / rel
        if old.is_file() and not old.is_symlink() and not (Path(staging) / rel).exists():
            old.unlink()
            if old.parent != folder and not any(old.parent.iterdir()):
                old.parent.rmdir()
    return folder


def link_in_path(folder: Path, rel: str) -> str | None:
    """The first part of ``folder / rel`` (below ``folder``) that is a symlink or, above the last part, not a
    folder; ``None`` when every part is a plain folder (or does not exist yet)."""
    p = folder
    parts = rel.split("/")
    for i, part in enumerate(parts):
        p = p / part
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return "/".join(parts[: i + 1])
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return "/".join(parts[: i + 1])
    return None
