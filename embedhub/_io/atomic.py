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


def _moved_whole(staging: Path, folder: Path) -> bool:
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
    if _moved_whole(staging, folder):
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


def _link_in_path(folder: Path, rel: str) -> str | None:
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


def switch_folder(staging: str | os.PathLike, folder: str | os.PathLike, *,
                  legacy: Iterable[str] | None = None) -> Path:
    """Move the complete model folder ``staging`` -- its files recorded by ``_manifest.record`` -- into place
    as ``folder``, replacing only what embedhub wrote there before.

    A missing or empty ``folder`` is replaced by one rename. Into a folder that holds files: the files of
    ``staging`` move in one by one (each an atomic rename), then the files the folder's old record lists that
    the new model does not have are deleted, then the new record replaces the old one, last. Until then the
    record marks the folder as between two models, so the loader takes it only when it is exactly one of
    them. A folder without a record (an older embedhub, another library) loses only the files named in
    ``legacy`` (default ``_manifest.LEGACY_NAMES``: exact paths of model files) the new model does not
    write. Files nobody recorded (``notes.txt``, ``eval/results.json``, a ``*.safetensors`` of yours) are
    never touched. A symlink, or a non-folder, on the path of a file to write is refused before anything
    changes; a listed path that has become a symlink or a folder is left (and named in a warning), never
    followed.
    """
    import warnings

    from embedhub._io.manifest import LEGACY_NAMES, MANIFEST, read, record
    from embedhub.errors import ConfigError

    staging, folder = Path(staging), Path(folder)
    incoming = read(staging)
    if incoming is None or incoming[1] is not None:
        raise ValueError(f"{staging} has no complete record of its files ({MANIFEST})")
    new = incoming[0]
    if _moved_whole(staging, folder):
        return folder
    try:
        found = read(folder)
    except ConfigError:  # a damaged record: nothing in it can be trusted to name embedhub's files
        found = None
    if found is None:
        before: dict = {}
        old = {rel for rel in (LEGACY_NAMES if legacy is None else legacy) if os.path.lexists(folder / rel)}
    else:
        before = found[0]
        old = set(found[0]) | set(found[1] or {})
    for rel in sorted(new):
        bad = _link_in_path(folder, rel)
        target = folder / rel
        if bad is None and os.path.lexists(target) and not stat.S_ISREG(os.lstat(target).st_mode):
            bad = rel
        if bad is not None:
            kind = "regular file" if bad == rel else "folder"
            raise FileExistsError(f"{folder / bad} is a symlink or is not a {kind}; embedhub will not write {rel} "
                                  "through it (nothing was replaced: move it away and save "
                                  "again)")
    record(folder, before, pending=new)  # from here until the last rename the folder is between two models
    for rel in sorted(new):
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / rel, target)
    left = []
    for rel in sorted(old - set(new)):
        target = folder / rel
        if _link_in_path(folder, rel) is not None or (os.path.lexists(target) and not target.is_file()):
            left.append(rel)
            continue
        if not os.path.lexists(target):
            continue
        os.unlink(target)
        parent = target.parent
        while parent != folder and not parent.is_symlink() and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    os.replace(staging / MANIFEST, folder / MANIFEST)
    shutil.rmtree(staging, ignore_errors=True)
    if left:
        warnings.warn(f"{folder}: {', '.join(left)} belonged to the model saved there before but are now symlinks "
                      "or folders; embedhub left them as they are", stacklevel=3)
    return folder
