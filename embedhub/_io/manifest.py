"""The record of the files embedhub wrote into a folder (model saves, exports): ``.embedhub_files.json``.

It maps each written file (relative POSIX path) to its size and SHA-256, and is written last, by an
atomic rename. A re-save removes only files it lists, so files the user added are never touched; the
loader refuses a folder whose listed files do not match, and a listed folder's model files that are
not listed (see :func:`check_listed`), so a save interrupted half way never loads as a mix of two
models. While a save switches a folder the record also lists the incoming files under ``"pending"``:
such a folder loads only when it is exactly the old model or exactly the new one.

The name starts with a dot: it is no file of any format (``model_files`` and ``push_to_hub`` leave it
out, as the Hub has its own hashes).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedhub._io.atomic import atomic_write, link_in_path, moved_whole
from embedhub._io.hashing import sha256_file
from embedhub.errors import ConfigError

MANIFEST = ".embedhub_files.json"
VERSION = 1
#: a record larger than this is refused (a million files would still fit)
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_SHA = re.compile(r"[0-9a-f]{64}")

#: files a folder without a record (written by an older embedhub, or by another library) may hold that a
#: save of one of embedhub's formats would write: a re-save into such a folder removes only these (by exact
#: path), never anything else
_TOWER_NAMES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "sentence_bert_config.json", "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
                "model.safetensors", "preprocessor_config.json", "processor_config.json", "spiece.model",
                "sentencepiece.bpe.model", "open_clip_config.json", "open_clip_model.safetensors")
LEGACY_NAMES: frozenset[str] = frozenset(
    [*_TOWER_NAMES, "embedhub_config.json", "modules.json", "config_sentence_transformers.json",
     "model.safetensors.index.json", "generation_config.json", "open_clip_pytorch_model.safetensors",
     "1_Pooling/config.json", "onnx/text.onnx", "onnx/image.onnx", "onnx/text.onnx.data", "onnx/image.onnx.data",
     "onnx/export_metadata.json",
     *(f"{m}/{n}" for m in ("text", "image") for n in _TOWER_NAMES),
     *(f"{i}_Dense/{n}" for i in range(2, 10) for n in ("config.json", "model.safetensors")),
     *(f"{i}_Normalize/config.json" for i in range(2, 10))]
)

#: of those, what embedhub's own format writes (tower files live in ``text/`` and ``image/``; no top-level
#: ``config.json``, which may well be a training config of yours)
EMBEDHUB_LEGACY: frozenset[str] = frozenset(
    n for n in LEGACY_NAMES
    if "/" in n or n in ("embedhub_config.json", "model.safetensors", "modules.json",
                         "config_sentence_transformers.json"))
#: and what a save that passes another format's files through writes (sentence-transformers, open_clip, CLIP)
COPIED_LEGACY: frozenset[str] = frozenset(
    n for n in LEGACY_NAMES if not n.startswith(("text/", "image/", "onnx/")) and n != "embedhub_config.json")

Records = dict[str, dict[str, Any]]


def safe_rel(rel: Any) -> bool:
    """Whether ``rel`` is a plain relative POSIX path inside a folder (no ``..``, no absolute path, no
    backslash, no empty or dot part)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and ":" not in parts[0]


def scan(folder: Path) -> Records:
    """Size and SHA-256 of every regular file under ``folder`` (a staging folder embedhub filled), the record
    itself left out; a symlink there is an error (embedhub never writes one)."""
    out: Records = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_symlink():
            raise FileExistsError(f"{p} is a symlink; embedhub writes only regular files into a model folder")
        if not p.is_file() or rel == MANIFEST:
            continue
        if not safe_rel(rel):
            raise ValueError(f"{rel!r} cannot be recorded: not a plain relative path")
        out[rel] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return out


def record(folder: str | os.PathLike, files: Records | None = None, *, pending: Records | None = None) -> Path:
    """Write the record of ``folder`` (``files``: default, every file under it), by an atomic rename."""
    folder = Path(folder)
    data: dict[str, Any] = {"embedhub_files": VERSION, "files": scan(folder) if files is None else files}
    if pending is not None:
        data["pending"] = pending
    return atomic_write(folder / MANIFEST, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _records(data: Any, key: str, file: Path) -> Records:
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: {key!r} must be an object of relative path -> {{size, sha256}}, found "
                          f"{type(data).__name__}", file=str(file), key=key)
    for rel, rec in data.items():
        where = f"{key}[{rel!r}]"
        if not safe_rel(rel):
            raise ConfigError(f"{file}: {where}: expected a relative path inside the folder", file=str(file), key=key)
        ok = (isinstance(rec, dict) and set(rec) == {"size", "sha256"} and type(rec["size"]) is int
              and rec["size"] >= 0 and isinstance(rec["sha256"], str) and _SHA.fullmatch(rec["sha256"]))
        if not ok:
            raise ConfigError(f"{file}: {where} must be {{'size': bytes (int >= 0), 'sha256': 64 lowercase hex "
                              f"digits}}, found {rec!r:.120}", file=str(file), key=key)
    return data


def read(root: str | os.PathLike) -> tuple[Records, Records | None] | None:
    """The record of ``root`` (``files``, ``pending``), ``None`` when there is none; a :class:`ConfigError`
    naming the key when it is malformed, or when it is not a regular file inside the folder."""
    root = Path(root)
    path = root / MANIFEST
    if not os.path.lexists(path):
        return None
    fix = f"delete {path} and save the model into {root} again"
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read ({exc.strerror}); {fix}", file=str(path)) from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
        raise ConfigError(f"{path} is not a regular file of at most {MAX_MANIFEST_BYTES} bytes; {fix}",
                          file=str(path))
    try:
        data = json.loads(real.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); {fix}", file=str(path)) from None
    if not isinstance(data, dict) or data.get("embedhub_files") != VERSION:
        found = data.get("embedhub_files") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"{path}: 'embedhub_files' must be {VERSION} (the record version this embedhub reads), "
                          f"found {found!r}; {fix}", file=str(path), key="embedhub_files")
    extra = set(data) - {"embedhub_files", "files", "pending"}
    if extra:
        raise ConfigError(f"{path}: unknown keys {sorted(extra)}; expected embedhub_files, files, pending",
                          file=str(path), key=sorted(extra)[0])
    files = _records(data.get("files"), "files", path)
    pending = _records(data["pending"], "pending", path) if "pending" in data else None
    return files, pending


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    real = Path(os.path.realpath(path))
    return any(real == r or real.is_relative_to(r) for r in roots)


def _mismatch(root: Path, roots: tuple[Path, ...], records: Records) -> str | None:
    """Why ``root``'s files differ from ``records`` (the first file that does), else ``None``."""
    for rel, rec in sorted(records.items()):
        p = root / rel
        if not os.path.lexists(p):
            return f"{rel} is missing"
        if not _inside(p, roots):
            return f"{rel} resolves outside the folder"
        try:
            st = os.stat(p)
        except OSError as exc:
            return f"{rel} cannot be read ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return f"{rel} is not a regular file"
        if st.st_size != rec["size"]:
            return f"{rel} has {st.st_size} bytes where {rec['size']} were written"
    for rel, rec in sorted(records.items()):  # sizes first: a cheap answer for most differences
        got = sha256_file(root / rel)
        if got != rec["sha256"]:
            return f"{rel} has SHA-256 {got[:16]}... where {rec['sha256'][:16]}... was written"
    return None


@dataclass
class Record:
    """The record of a folder a loader is reading: the files it lists (``files``), under ``top``, and the
    files the loader opened so far (``opened``, relative to ``top``)."""

    top: Path
    roots: tuple[Path, ...]
    files: Records
    opened: set[str] = field(default_factory=set)
    checked: bool = False

    def opening(self, path: Path) -> None:
        """Note that the loader opens ``path`` (a file under ``top``)."""
        try:
            self.opened.add(Path(os.path.normpath(path)).relative_to(self.top).as_posix())
        except ValueError:
            pass


def _repair(root: Path) -> str:
    return (f"save or export the model into {root} again (model.save_pretrained(folder) or `embedhub export ... "
            f"--output {root}`; files you added stay), or delete the folder")


def open_record(root: str | os.PathLike, roots: Iterable[str | os.PathLike] | None = None) -> Record | None:
    """The record of ``root`` as a loader starts reading it (``None``: the folder has none). A folder an
    interrupted save left between two models is checked at once: it is taken only when it is exactly one of
    them (that model's files are then the listed ones), else a :class:`ConfigError` naming the file."""
    root = Path(os.path.realpath(root))
    roots = tuple(Path(os.path.realpath(r)) for r in (roots or (root,)))
    found = read(root)
    if found is None:
        return None
    files, pending = found
    if pending is None:
        return Record(root, roots, files)
    for mine, other in ((files, pending), (pending, files)):
        left = [rel for rel in other if rel not in mine and os.path.lexists(root / rel)]
        if not left and _mismatch(root, roots, mine) is None:
            return Record(root, roots, mine, checked=True)
    why = _mismatch(root, roots, files) or next(
        f"{rel} belongs to the new model" for rel in pending if rel not in files and os.path.lexists(root / rel))
    raise ConfigError(f"{root}: a save into this folder was interrupted and left it between two models: {why}; "
                      f"{_repair(root)}", file=str(root / why.split(" ")[0]))


def check_record(record: Record | None) -> None:
    """After a loader read a folder embedhub wrote: each listed file exists with the recorded size and SHA-256,
    and the loader opened no file the record does not list; else a :class:`ConfigError` naming the file and
    saying how to repair the folder. Runs after the format's own checks, whose errors say more about a file
    edited by hand."""
    if record is None:
        return
    root = record.top
    if not record.checked:
        why = _mismatch(root, record.roots, record.files)
        if why:
            raise ConfigError(f"{root}: {why} (per {MANIFEST}, the record of the files embedhub wrote): the folder "
                              f"is not the model that was saved; {_repair(root)}", file=str(root / why.split(" ")[0]))
        record.checked = True
    unlisted = sorted(record.opened - set(record.files))
    if unlisted:
        raise ConfigError(
            f"{root}: {unlisted[0]} is not one of the files embedhub wrote into this folder (listed in {MANIFEST}), "
            f"but the loader reads it as part of the model; move it out of the folder, or {_repair(root)}",
            file=str(root / unlisted[0]))


def verify(root: str | os.PathLike, roots: Iterable[str | os.PathLike] | None = None) -> frozenset[str] | None:
    """The files ``root``'s record lists, after checking each (see :func:`check_record`); ``None`` for a folder
    without a record."""
    record = open_record(root, roots)
    check_record(record)
    return None if record is None else frozenset(record.files)


def has_record(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a well-formed record of the files embedhub wrote (a folder embedhub saved)."""
    try:
        return read(folder) is not None
    except ConfigError:
        return False


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

    staging, folder = Path(staging), Path(folder)
    incoming = read(staging)
    if incoming is None or incoming[1] is not None:
        raise ValueError(f"{staging} has no complete record of its files ({MANIFEST})")
    new = incoming[0]
    if moved_whole(staging, folder):
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
        bad = link_in_path(folder, rel)
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
        if link_in_path(folder, rel) is not None or (os.path.lexists(target) and not target.is_file()):
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
