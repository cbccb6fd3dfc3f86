"""Provenance of embeddings: which model, files, backend, precision, pooling and normalisation made them.

A :class:`Fingerprint` is carried by every file of stored embeddings (``embedhub.write_embeddings``,
``embedhub encode``) and checked by everything that reads them back, so an index is never queried
with vectors of another model.

>>> fp = Fingerprint("folder:0123456789abcdef", None, "embedhub", "torch", "fp32", "mean", True, 384)
>>> fp.id
'eh1-fb8741f697863cc1'
>>> Fingerprint.from_dict(fp.to_dict()) == fp
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub._io.hashing import sha256_file
from embedhub.errors import EmbedhubError, FingerprintMismatchError, ProvenanceError

if TYPE_CHECKING:
    from embedhub.formats.contract import ModelLike

#: the version of the fingerprint scheme, the prefix of every :attr:`Fingerprint.id`
SCHEME = "eh1"
#: backends a fingerprint names
BACKENDS = ("torch", "onnx")
#: how :func:`fingerprint_of` names a torch dtype (an ONNX export names its precision the same way)
TORCH_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: the precisions an ONNX export records in ``onnx/export_metadata.json``
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
_SOURCE = re.compile(r"hub:[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+|(folder|memory):[0-9a-f]{16}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
#: the parquet schema metadata key holding the fingerprint JSON (embedding files, index id files)
PARQUET_KEY = b"embedhub.fingerprint"


@dataclass(frozen=True)
class Fingerprint:
    """What made a set of embeddings; two sets are comparable only when their fingerprints are equal.

    ``source``: ``"hub:org/name"`` (a Hub snapshot at commit ``revision``), ``"folder:<16 hex>"``
    (SHA-256 of the names and contents of the files the folder's format needs) or ``"memory:<16 hex>"``
    (SHA-256 of the weights and config of a model never saved). ``dtype`` is ``fp32``/``fp16``/``bf16``
    for torch, the export precision (``fp32``/``fp16``/``int8``) for ONNX. ``pooling`` is the text
    tower's pooling (``"mean"``, ``"cls+max"``) or ``None``; ``normalized`` whether encode L2-normalised;
    ``dim`` the width of the vectors (after Matryoshka truncation); ``precision`` their output precision
    (``float32``, ``int8``, ``uint8``, ``binary``, ``ubinary``). ``role`` is the prompt they were encoded with
    (``"query"``, ``"document"``, ``"prompt:<16 hex>"`` for a literal prompt, ``None``): recorded, but not
    part of the :attr:`id` and never a difference, so query and document vectors of one model compare.

    >>> fp = Fingerprint("hub:org/name", "a" * 40, "embedhub", "onnx", "int8", "mean", True, 384)
    >>> fp.with_normalized(False).normalized, fp.with_normalized(False).id != fp.id
    (False, True)
    """

    source: str
    revision: str | None
    format: str
    backend: str
    dtype: str
    pooling: str | None
    normalized: bool
    dim: int
    precision: str = "float32"
    role: str | None = None

    def __post_init__(self) -> None:
        _validate(asdict(self), path=None)

    def _stored(self) -> dict[str, Any]:
        """The parts as stored: ``precision`` only when not float32, ``role`` only when set (so fingerprints
        of float32 vectors read and hash as they did before precision was recorded)."""
        parts = asdict(self)
        if parts["precision"] == "float32":
            del parts["precision"]
        if parts["role"] is None:
            del parts["role"]
        return parts

    @property
    def id(self) -> str:
        """``"eh1-"`` + 16 hex of the SHA-256 of the canonical JSON of the parts (``role`` left out): short,
        stable across runs."""
        parts = self._stored()
        parts.pop("role", None)
        canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return f"{SCHEME}-{hashlib.sha256(canonical.encode()).hexdigest()[:16]}"

    def to_dict(self) -> dict[str, Any]:
        """The parts and the ``id``, as stored in files (JSON-ready)."""
        return {"id": self.id, **self._stored()}

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON with sorted keys."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any, *, path: str | os.PathLike | None = None) -> Fingerprint:
        """A fingerprint from :meth:`to_dict`'s output; every field's presence and type is checked.

        A missing, unknown or mistyped field, or an ``id`` that does not match the parts (an edited
        record), is a :class:`ProvenanceError` naming the field (and ``path``, the file it came from).
        """
        where = f"{path}: " if path is not None else ""
        if not isinstance(data, dict):
            raise ProvenanceError(
                f"{where}stored fingerprint must be a JSON object, found {type(data).__name__}", path=path
            )
        names = [f.name for f in fields(cls) if f.name not in _OPTIONAL]
        unknown = sorted(set(map(str, data)) - {*names, *_OPTIONAL, "id"})
        if unknown:
            raise ProvenanceError(
                f"{where}stored fingerprint has unknown field(s) {', '.join(map(repr, unknown))}; "
                f"expected {', '.join(['id', *names])}",
                path=path,
                field=unknown[0],
            )
        missing = [n for n in names if n not in data]
        if missing:
            raise ProvenanceError(
                f"{where}stored fingerprint lacks field(s) {', '.join(map(repr, missing))}", path=path, field=missing[0]
            )
        parts = {n: data[n] for n in names}
        parts.update({n: data[n] for n in _OPTIONAL if n in data})
        parts.setdefault("precision", "float32")
        parts.setdefault("role", None)
        _validate(parts, path=path)
        fp = cls(**parts)
        if "id" in data and data["id"] != fp.id:
            raise ProvenanceError(
                f"{where}stored fingerprint field 'id' is {data['id']!r} but its parts give {fp.id!r} "
                "(the record was edited or damaged)",
                path=path,
                field="id",
            )
        return fp

    @classmethod
    def from_json(cls, text: str | bytes, *, path: str | os.PathLike | None = None) -> Fingerprint:
        """:meth:`from_dict` of a JSON text; text that is not JSON is a :class:`ProvenanceError`."""
        where = f"{path}: " if path is not None else ""
        try:
            data = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProvenanceError(f"{where}stored fingerprint is not valid JSON: {exc}", path=path) from None
        except RecursionError:
            raise ProvenanceError(f"{where}stored fingerprint is JSON nested too deep to be one", path=path) from None
        return cls.from_dict(data, path=path)

    def with_normalized(self, flag: bool) -> Fingerprint:
        """The same fingerprint for vectors encoded with ``normalize=flag``."""
        return replace(self, normalized=bool(flag))

    def with_role(self, role: str | None) -> Fingerprint:
        """The same fingerprint with another prompt role (same :attr:`id`)."""
        return replace(self, role=role)

    def differences(self, other: Fingerprint) -> dict[str, tuple[Any, Any]]:
        """``{part: (self's value, other's value)}`` for every part that differs (``role`` never counts)."""
        return {
            f.name: (getattr(self, f.name), getattr(other, f.name))
            for f in fields(self)
            if f.name != "role" and getattr(self, f.name) != getattr(other, f.name)
        }

    def check(self, other: Fingerprint, *, what: str, expected: str = "model", found: str = "stored") -> None:
        """Raise :class:`FingerprintMismatchError` unless ``other`` (what ``what`` holds) equals ``self``.

        The message names both ids and every differing part; the error carries ``expected``, ``found``
        (the two fingerprints) and ``differences``.

        >>> a = Fingerprint("memory:0123456789abcdef", None, "embedhub", "torch", "fp32", None, True, 8)
        >>> a.check(a, what="emb.npy")
        """
        diff = self.differences(other)
        if not diff:
            return
        parts = "; ".join(f"{k}: {theirs!r} ({found}) vs {mine!r} ({expected})" for k, (mine, theirs) in diff.items())
        exc = FingerprintMismatchError(
            f"{what} holds embeddings of fingerprint {other.id} ({found}), not {self.id} ({expected}): they were "
            f"made by another model or setting and cannot be compared with it. Differing parts: {parts}"
        )
        exc.expected, exc.found, exc.differences = self, other, diff
        raise exc


#: parts a stored fingerprint may leave out (older records): precision float32, no role
_OPTIONAL = ("precision", "role")
#: the precisions a fingerprint names
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def _validate(parts: dict[str, Any], *, path: str | os.PathLike | None) -> None:
    """Type and shape of every part; a :class:`ProvenanceError` naming the first field at fault."""
    where = f"{path}: " if path is not None else ""

    def bad(name: str, expectation: str) -> ProvenanceError:
        return ProvenanceError(
            f"{where}fingerprint field {name!r} must be {expectation}, found {parts[name]!r:.100}",
            path=path,
            field=name,
        )

    source = parts["source"]
    if not isinstance(source, str) or not _SOURCE.fullmatch(source):
        raise bad("source", "'hub:org/name', 'folder:<16 hex>' or 'memory:<16 hex>'")
    for name in ("revision", "pooling"):
        value = parts[name]
        if value is not None and (not isinstance(value, str) or not value or len(value) > 256):
            raise bad(name, "null or a non-empty string")
    for name in ("format", "dtype"):
        value = parts[name]
        if not isinstance(value, str) or not value or len(value) > 64:
            raise bad(name, "a non-empty string")
    if parts["backend"] not in BACKENDS:
        raise bad("backend", f"one of {', '.join(map(repr, BACKENDS))}")
    if not isinstance(parts["normalized"], bool):
        raise bad("normalized", "true or false")
    dim = parts["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 1 << 20:
        raise bad("dim", "an integer from 1 to 1048576")
    if parts.get("precision", "float32") not in PRECISIONS:
        raise bad("precision", f"one of {', '.join(map(repr, PRECISIONS))}")
    role = parts.get("role")
    if role is not None and (not isinstance(role, str) or not role or len(role) > 256):
        raise bad("role", "null or a non-empty string of at most 256 characters")


# ---------------------------------------------------------------------------------------------- models
def fingerprint_of(model: ModelLike) -> Fingerprint:
    """The fingerprint of ``model`` as loaded, for what ``encode`` returns by default: the model's own
    normalisation (``normalize=None``), its default truncation, float32, no prompt role.

    The source is the Hub repo when the model is a Hub snapshot at a commit, else the content hash
    of the files its load opened (``model.source_files``, recorded by :func:`embedhub.load`), else
    (a model built in memory and never saved, or whose folder no
    longer holds a model) the hash of its weights and config. It describes the model as loaded:
    weights changed in memory afterwards are not seen; save and reload such a model to get a
    fingerprint of its new weights.

    >>> embedhub.load("all-MiniLM-L6-v2").fingerprint.pooling  # doctest: +SKIP
    'mean'
    """
    repo_id = getattr(model, "repo_id", None)
    revision = getattr(model, "revision", None)
    folder = getattr(model, "folder", None)
    source = None
    changed = _changed_since_load(Path(folder), model) if folder is not None and Path(folder).is_dir() else None
    if repo_id and isinstance(revision, str) and _COMMIT.fullmatch(revision):
        source = f"hub:{repo_id}"
    elif changed is not None:
        # the folder no longer holds what was loaded (re-saved, edited): describe the weights in memory
        try:
            source = f"memory:{memory_hash(model)}"
        except Exception as exc:
            raise ProvenanceError(
                f"{folder}: {changed} changed after this model was loaded from it, and a {model.backend} model's "
                f"weights cannot be hashed in memory; load the folder again to fingerprint what it holds now"
            ) from exc
    elif folder is not None and Path(folder).is_dir():
        try:
            source = f"folder:{folder_hash(Path(folder), _model_files(Path(folder), model))}"
        except (EmbedhubError, OSError):  # no longer a model folder (changed since the load)
            if not len(model.towers):
                raise
    if source is None:
        source = f"memory:{memory_hash(model)}"
    return Fingerprint(
        source=source,
        revision=revision,
        format=str(model.format),
        backend=str(model.backend),
        dtype=_dtype_name(model),
        pooling=_pooling(model),
        normalized=bool(model.default_normalize()) if hasattr(model, "default_normalize") else True,
        dim=int(getattr(model, "truncate_dim", None) or model.embed_dim),
    )


def file_stats(folder: Path, files: Any) -> tuple[tuple[str, int, int, int, int], ...]:
    """``(name, size, mtime, ctime, inode)`` of each file: what tells that a file was rewritten (ctime
    changes on every write, even when the size and a restored mtime do not)."""
    out = []
    for rel in sorted(set(files)):
        st = os.stat(Path(folder) / rel)
        out.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)


def _changed_since_load(folder: Path, model: ModelLike) -> str | None:
    """The first file the model's load opened that is no longer as it was then (``None``: all unchanged,
    or the load recorded nothing)."""
    then = getattr(model, "source_stats", None)
    if not then:
        return None
    for entry in then:
        try:
            now = file_stats(folder, [entry[0]])[0]
        except OSError:
            return entry[0]
        if now != entry:
            return entry[0]
    return None


def _model_files(folder: Path, model: ModelLike) -> list[str] | None:
    """The files the model's load opened, with those of the folder's other backends (an export's ONNX
    graphs for a torch load, its weights for an ONNX one), so both backends name the same source."""
    from embedhub.formats.registry import model_files

    files = getattr(model, "source_files", None)
    if files is None:
        return None
    try:
        return sorted(set(files) | set(model_files(folder)))
    except (EmbedhubError, OSError):  # the other backend does not load here: the files this load opened
        return sorted(files)


def _dtype_name(model: ModelLike) -> str:
    if model.backend == "onnx":
        precision = _export_record(model, "precision")
        return precision if precision in ONNX_PRECISIONS else "unknown"
    name = str(model.dtype).removeprefix("torch.")
    return TORCH_DTYPES.get(name, name)


def _pooling(model: ModelLike) -> str | None:
    """The text tower's pooling modes joined by ``+``: from the tower, else from the model's config, else (an
    ONNX export written without its torch copy) from the export's metadata."""
    towers = getattr(model, "towers", None)
    tower = towers["text"] if towers is not None and "text" in towers else None
    modes = getattr(getattr(tower, "pooling", None), "modes", None)
    if modes is None:
        try:
            modes = model.config().get("towers", {}).get("text", {}).get("pooling")
        except (AttributeError, TypeError):
            modes = None
    if modes is None and getattr(model, "backend", None) == "onnx":
        modes = _export_pooling(model)
    if isinstance(modes, str):
        return modes
    if isinstance(modes, (list, tuple)) and modes and all(isinstance(m, str) for m in modes):
        return "+".join(modes)
    return None


_POOLING = re.compile(r"[a-z0-9_]+(\+[a-z0-9_]+)*")


def _export_pooling(model: ModelLike) -> str | None:
    """The text pooling an ONNX export recorded in its metadata (``"pooling"``): an export without its torch
    copy has no tower config to read it from. ``None`` when absent or not a pooling name."""
    value = _export_record(model, "pooling")
    return value if isinstance(value, str) and len(value) <= 256 and _POOLING.fullmatch(value) else None


def _export_record(model: ModelLike, key: str) -> Any:
    """The value of ``key`` in the ONNX export record of the model's folder; ``None`` when the model has no
    folder, the folder no record, or the record is unreadable or malformed."""
    folder = getattr(model, "folder", None)
    if folder is None:
        return None
    from embedhub.modules.backends import read_export_metadata

    try:
        meta = read_export_metadata(folder)
    except (EmbedhubError, OSError):
        return None
    return meta.raw(key, None) if meta is not None else None


_FOLDER_HASHES: dict[tuple[str, tuple[tuple[str, int, int, int, int], ...]], str] = {}


def folder_hash(folder: Path, files: Any = None) -> str:
    """16 hex of the SHA-256 over the names and contents of ``files`` in ``folder``: the files a load
    of the model opened (by default, :func:`embedhub.formats.model_files`, a recording load).

    So copies of a model folder hash alike, a file the loader does not read does not count, and one it
    reads (a nested module, a weight shard named by an index) does. A digest is reused while no file's
    size, modification time, change time or inode changes.
    """
    folder = Path(folder)
    if files is None:
        from embedhub.formats.registry import model_files

        files = model_files(folder)
    rels = sorted(set(files))
    key = (str(folder.resolve()), file_stats(folder, rels))
    if key not in _FOLDER_HASHES:
        digest = hashlib.sha256()
        for rel in rels:
            name = rel.encode("utf-8", "surrogateescape")
            digest.update(name + b"\0" + sha256_file(folder / rel).encode() + b"\n")
        _FOLDER_HASHES[key] = digest.hexdigest()[:16]
    return _FOLDER_HASHES[key]


def model_settings(model: Any) -> dict[str, Any]:
    """The model's prompts, default prompt, similarity function and truncation that differ from the
    neutral ones (no prompts, cosine, full width)."""
    out: dict[str, Any] = {}
    prompts = {k: v for k, v in (getattr(model, "prompts", None) or {}).items() if v}
    if prompts:
        out["prompts"] = prompts
    if getattr(model, "default_prompt_name", None):
        out["default_prompt_name"] = model.default_prompt_name
    if getattr(model, "similarity_fn_name", "cosine") != "cosine":
        out["similarity_fn_name"] = model.similarity_fn_name
    if getattr(model, "truncate_dim", None):
        out["truncate_dim"] = model.truncate_dim
    return out


def memory_hash(model: ModelLike) -> str:
    """16 hex of the SHA-256 over the torch state dict (names, dtypes, shapes, bytes) and the config."""
    import torch

    digest = hashlib.sha256()
    config = {"config": model.config(), "embed_dim": int(model.embed_dim), "format": str(model.format)}
    settings = model_settings(model)
    if settings:  # prompts, similarity and truncation change the vectors or how they compare
        config["settings"] = settings
    digest.update(json.dumps(config, sort_keys=True, default=str).encode() + b"\n")
    state = dict(model.towers.state_dict())
    routes = getattr(model, "route_towers", None)
    if routes is not None and len(routes):
        state.update({f"routes.{k}": v for k, v in routes.state_dict().items()})
    for name, tensor in sorted(state.items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return digest.hexdigest()[:16]
