"""The one way a loader reads a model folder: paths stay inside it, files are regular and bounded,
and every config value is checked for type and range where it is read.

A model folder is untrusted input (anyone can publish a Hub repo). :class:`ModelFolder` resolves
each path a config names (after symlinks) and refuses one that leaves the folder; for a Hub
snapshot the repo's blob store, where the snapshot's symlinks point, counts as inside.
:class:`ConfigView` reads a JSON object key by key and raises :class:`ConfigError` naming the
file, the key, what was expected and what was found.

>>> import json, tempfile
>>> d = Path(tempfile.mkdtemp()); _ = (d / "c.json").write_text(json.dumps({"size": 224}))
>>> ModelFolder(d).config("c.json").int("size", min=1)
224
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from embedhub.errors import ConfigError

#: config, tokenizer and vocabulary files larger than this are refused
MAX_CONFIG_BYTES = 64 * 1024 * 1024
#: JSON configs nested deeper than this (objects and lists) are refused
MAX_JSON_DEPTH = 64


def shown(name: str | os.PathLike) -> str:
    """``name`` printable in any message: bytes that are not UTF-8 (a file name from another system)
    shown as ``\\xff`` escapes instead of lone surrogates that cannot be written out."""
    text = os.fspath(name)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Record:
    """The files a load opened (folder-relative POSIX paths, in the order first opened) and the paths
    it looked for and did not find; shared by a :class:`ModelFolder` and its sub-folders."""

    def __init__(self) -> None:
        self.read: dict[str, None] = {}
        self.missing: dict[str, None] = {}

    def files(self) -> list[str]:
        """The files read, sorted."""
        return sorted(self.read)

_MISSING: Any = object()


class ModelFolder:
    """A model folder; every file a loader opens comes through :meth:`file` or :meth:`path`.

    >>> folder = ModelFolder(Path("."))
    >>> folder.path("../x", what="a tokenizer")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ConfigError: ...
    """

    def __init__(self, root: str | os.PathLike, *, _roots: tuple[Path, ...] | None = None,
                 _record: Record | None = None, _prefix: str = "", _manifest: Any = _MISSING):
        self.root = Path(root).resolve()
        self.roots = _roots or _allowed_roots(self.root)
        #: every file opened through this folder and its sub-folders (provenance: what the model is made of)
        self.record = _record if _record is not None else Record()
        #: this folder's path inside the top folder of the record ("" for the top folder itself)
        self.prefix = _prefix
        if _manifest is _MISSING:  # a folder embedhub wrote: the files opened are checked against its file record
            from embedhub._io.manifest import open_record

            _manifest = open_record(self.root, self.roots)
        #: the file record (``.embedhub_files.json``) of a folder embedhub saved, else ``None``
        self.manifest = _manifest

    def key(self, rel: str | os.PathLike) -> str:
        """``rel`` as the record names it: a POSIX path relative to the top folder."""
        parts = PurePosixPath(os.fspath(rel).replace("\\", "/"))
        return (PurePosixPath(self.prefix) / parts).as_posix() if self.prefix else parts.as_posix()

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.root)!r})"

    def __truediv__(self, rel: str) -> Path:  # plain joins for messages; opening goes through file()
        return self.root / rel

    def path(self, rel: str | os.PathLike, *, what: str = "file") -> Path:
        """``rel`` resolved inside the folder (it need not exist); a :class:`ConfigError` if it leaves it."""
        if isinstance(rel, os.PathLike):
            rel = os.fspath(rel)
        if not isinstance(rel, str) or not rel or "\x00" in rel:
            raise ConfigError(f"{shown(self.root)}: {what} path {rel!r} must be a non-empty relative path",
                              file=str(self.root))
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{shown(self.root)}: {what} path {rel!r} is not valid UTF-8 text (a lone surrogate or "
                              "undecodable bytes); model files must have UTF-8 names", file=str(self.root)) from None
        parts = PurePosixPath(rel.replace("\\", "/"))
        if parts.is_absolute() or Path(rel).is_absolute() or ".." in parts.parts or ":" in parts.parts[0]:
            raise ConfigError(
                f"{self.root}: {what} path {rel!r} must be relative to the model folder, without '..'",
                file=str(self.root),
            )
        resolved = (self.root / parts).resolve()
        if not _inside(resolved, self.roots):
            raise ConfigError(
                f"{self.root}: {what} {rel!r} resolves to {resolved}, outside the model folder "
                "(a symlink or path may not point out of it)",
                file=str(self.root),
            )
        return resolved

    def has(self, rel: str) -> bool:
        """Whether ``rel`` is a regular file inside the folder; one that exists but leaves the
        folder or is not a regular file (a FIFO, a device) is an error, not a silent ``False``."""
        self.path(rel)
        if not os.path.lexists(self.root / rel):
            self.record.missing.setdefault(self.key(rel))
            return False
        self.file(rel)
        return True

    def has_dir(self, rel: str) -> bool:
        candidate = self.root / rel
        return candidate.is_dir() and self.path(rel, what="folder").is_dir()

    def file(self, rel: str | os.PathLike, *, what: str = "file") -> Path:
        """The path of an existing regular file inside the folder, else a :class:`ConfigError`."""
        p = self.path(rel, what=what)
        try:
            st = os.stat(p)
        except OSError as exc:
            self.record.missing.setdefault(self.key(rel))
            raise ConfigError(f"{shown(self.root)}: {what} {shown(rel)} not found ({exc.strerror})",
                              file=str(p)) from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{shown(self.root)}: {what} {shown(rel)} is not a regular file", file=str(p))
        self.record.read.setdefault(self.key(rel))
        if self.manifest is not None:
            self.manifest.opening(self.root / rel)
        return p

    def sub(self, rel: str, *, what: str = "folder") -> ModelFolder:
        """A subfolder, checked like a file path; it shares this folder's allowed roots."""
        p = self.path(rel, what=what) if rel not in ("", ".") else self.root
        if not p.is_dir():
            raise ConfigError(f"{shown(self.root)}: {what} {rel!r} is not a folder", file=str(p))
        prefix = self.key(rel) if rel not in ("", ".") else self.prefix
        return ModelFolder(p, _roots=self.roots, _record=self.record, _prefix="" if prefix == "." else prefix,
                           _manifest=self.manifest)

    def read_bytes(self, rel: str, *, what: str = "file", max_bytes: int = MAX_CONFIG_BYTES) -> bytes:
        """The bytes of a regular file, reading at most ``max_bytes`` (more is an error)."""
        p = self.file(rel, what=what)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the check and the open
                raise ConfigError(f"{self.root}: {what} {rel} is not a regular file", file=str(p))
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = fh.read(max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > max_bytes:
            raise ConfigError(f"{p}: {what} is larger than {max_bytes} bytes", file=str(p))
        return data

    def read_json(self, rel: str, *, what: str = "config") -> Any:
        """A JSON file, checked: UTF-8, at most :data:`MAX_JSON_DEPTH` deep, numbers finite."""
        return parse_json(self.read_bytes(rel, what=what), self.root / rel)

    def config(self, rel: str, *, what: str = "config") -> ConfigView:
        """A JSON object file as a :class:`ConfigView` (a list or a number at the top is an error)."""
        p = self.root / rel
        data = self.read_json(rel, what=what)
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a JSON object, found {_kind(data)}", file=str(p))
        return ConfigView(data, p)


def parse_json(data: bytes | str, file: Path | str) -> Any:
    """JSON text parsed with bounds: a :class:`ConfigError` naming ``file`` (and the key, for a number
    that is not finite) for text that is not UTF-8, not JSON, nested deeper than :data:`MAX_JSON_DEPTH`,
    or holding ``NaN``, ``Infinity`` or a number too large for a float (``1e309``)."""
    where = shown(file)
    try:
        text = data.decode("utf-8-sig") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text: {exc}", file=str(file)) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels", file=str(file)) from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more digits than Python converts
        raise ConfigError(f"{where} is not valid JSON: {exc}", file=str(file)) from None
    _check_tree(value, file)
    return value


def _check_tree(value: Any, file: Path | str) -> None:
    """Depth and finiteness of a parsed JSON value, without recursion."""
    if type(value) is float and not math.isfinite(value):
        raise ConfigError(f"{shown(file)}: expected a finite number, found {value}", file=str(file))
    if type(value) is not dict and type(value) is not list:
        return
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_JSON_DEPTH:
            raise ConfigError(f"{shown(file)}: JSON nested deeper than {MAX_JSON_DEPTH} levels (at "
                              f"{_key_path(path[:8])}...)", file=str(file), key=_key_path(path[:8]))
        items = node.items() if type(node) is dict else enumerate(node)
        for k, v in items:
            t = type(v)
            if t is dict or t is list:
                stack.append((v, (*path, k)))
            elif t is float and not math.isfinite(v):
                key = _key_path((*path, k))
                raise ConfigError(f"{shown(file)}: {key}: expected a finite number, found {v} (NaN, Infinity, or "
                                  "a number too large for a float)", file=str(file), key=key)


def _key_path(path: tuple[Any, ...]) -> str:
    out = ""
    for k in path:
        out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(top level)"


def _allowed_roots(root: Path) -> tuple[Path, ...]:
    """The folder itself, then (for a Hub cache snapshot) the repo's blob store, a flat folder of files named
    by hash. A ``blobs`` (or repo folder) that is a symlink is no blob store: it could point anywhere."""
    roots = [root]
    # huggingface_hub cache: <cache>/models--org--name/snapshots/<commit>/<file> -> ../../blobs/<hash>
    for snapshot in (root, *root.parents):
        repo = snapshot.parent.parent
        if snapshot.parent.name == "snapshots" and repo.name.startswith(("models--", "datasets--")):
            blobs = repo / "blobs"
            if blobs.is_dir() and not blobs.is_symlink() and not repo.is_symlink():
                roots.append(blobs.resolve())
            break
    return tuple(roots)


def _inside(resolved: Path, roots: tuple[Path, ...]) -> bool:
    """Whether ``resolved`` lies inside the folder (``roots[0]``) or is a file directly in a blob store."""
    top, *stores = roots
    return resolved == top or resolved.is_relative_to(top) or any(resolved.parent == s for s in stores)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value[:60]!r}"
    return f"{type(value).__name__} {value!r:.60}"


class ConfigView:
    """Typed, range-checked reads of one JSON object; errors name the file and the key.

    >>> v = ConfigView({"n": "32"}, Path("config.json"))
    >>> v.int("n")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ConfigError: config.json: n: expected an integer, found the string '32'
    """

    def __init__(self, data: dict[str, Any], file: Path | str, prefix: str = ""):
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: {prefix.rstrip('.') or 'config'}: expected an object, found {_kind(data)}",
                              file=str(file), key=prefix.rstrip(".") or None)
        self.data = data
        self.file = Path(file)
        self.prefix = prefix

    def __contains__(self, key: str) -> bool:
        return key in self.data and self.data[key] is not None

    def keys(self) -> Iterable[str]:
        return self.data.keys()

    def error(self, key: str, expected: str, found: Any = _MISSING) -> ConfigError:
        got = "it is missing" if found is _MISSING else f"found {_kind(found)}"
        return ConfigError(f"{self.file}: {self.prefix}{key}: expected {expected}, {got}",
                           file=str(self.file), key=self.prefix + key)

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, "a value")
            return default
        return value

    def _get(self, key: str, default: Any, expected: str) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                raise self.error(key, expected)
            return _MISSING
        return value

    def int(self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        expected = "an integer" + _range(min, max)
        value = self._get(key, default, expected)
        if value is _MISSING:
            return default
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, expected, value)
        if (min is not None and value < min) or (max is not None and value > max):
            raise self.error(key, expected, value)
        return value

    def float(self, key: str, default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
              positive: bool = False) -> Any:
        expected = ("a positive finite number" if positive else "a finite number") + _range(min, max)
        value = self._get(key, default, expected)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.error(key, expected, value)
        if (positive and value <= 0) or (min is not None and value < min) or (max is not None and value > max):
            raise self.error(key, expected, value)
        return float(value)

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, "true or false")
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self.error(key, "true or false", value)
        return value

    def str(self, key: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> Any:
        expected = f"one of {list(choices)}" if choices is not None else "a string"
        value = self._get(key, default, expected)
        if value is _MISSING:
            return default
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self.error(key, expected, value)
        return value

    def floats(self, key: str, default: Any = _MISSING, *, length: int | None = None, positive: bool = False) -> Any:
        expected = f"a list of {length or 'some'} {'positive ' if positive else ''}finite numbers"
        value = self._get(key, default, expected)
        if value is _MISSING:
            return default
        ok = isinstance(value, (list, tuple)) and (length is None or len(value) == length) and len(value) > 0
        ok = ok and all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive)
            for v in value
        )
        if not ok:
            raise self.error(key, expected, value)
        return tuple(float(v) for v in value)

    def strings(self, key: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> Any:
        expected = "a non-empty list of strings" + (f" from {list(choices)}" if choices is not None else "")
        value = self._get(key, default, expected)
        if value is _MISSING:
            return default
        ok = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        if not ok or (choices is not None and any(v not in choices for v in value)):
            raise self.error(key, expected, value)
        return list(value)

    def view(self, key: str, default: Any = _MISSING) -> Any:
        """A nested object as a view whose errors name ``key.subkey``."""
        value = self._get(key, default, "an object")
        if value is _MISSING:
            return default if not isinstance(default, dict) else ConfigView(default, self.file, f"{self.prefix}{key}.")
        if not isinstance(value, dict):
            raise self.error(key, "an object", value)
        return ConfigView(value, self.file, f"{self.prefix}{key}.")

    def only(self, allowed: Iterable[str], *, what: str = "key") -> None:
        """Refuse keys outside ``allowed`` (for configs that are handed to third-party code)."""
        allowed = set(allowed)
        extra = sorted(k for k in self.data if k not in allowed)
        if extra:
            raise ConfigError(
                f"{self.file}: {self.prefix or ''}unsupported {what}(s) {extra}; supported: {sorted(allowed)}",
                file=str(self.file), key=self.prefix + extra[0],
            )


def _range(lo: Any, hi: Any) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""
