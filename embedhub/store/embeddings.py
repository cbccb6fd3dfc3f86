"""Stored embeddings with their provenance: ``.parquet`` (fingerprint in the schema metadata) or ``.npy``
(fingerprint in ``<file>.fingerprint.json`` beside it).

>>> import embedhub
>>> model = embedhub.load("all-MiniLM-L6-v2")                              # doctest: +SKIP
>>> texts = ["A man is playing a guitar.", "A cat sleeps."]
>>> embedhub.write_embeddings("emb.parquet", model.encode(texts), model.fingerprint, inputs=texts)  # doctest: +SKIP
>>> stored = embedhub.read_embeddings("emb.parquet", expect=model.fingerprint)  # doctest: +SKIP
>>> stored.embeddings.shape                                               # doctest: +SKIP
(2, 384)

Files without provenance (a ``.npy`` without its sidecar, a parquet file written by another tool)
read with ``expect=None`` (their ``fingerprint`` is ``None``) and are refused with a
:class:`~embedhub.store.fingerprint.ProvenanceError` when an ``expect`` is given: a reader that names the
model it will compare against never gets vectors it cannot check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub._io.atomic import atomic_write
from embedhub._io.hashing import sha256_file
from embedhub.errors import ArgumentError, EmbeddingsFileError, ProvenanceError, require
from embedhub.store.fingerprint import PARQUET_KEY, Fingerprint
from embedhub.store.index import check_precision, stored_dtype, stored_width

if TYPE_CHECKING:
    import numpy as np

EXTENSIONS = (".npy", ".parquet")
#: what ends the name of the JSON file beside a ``.npy`` file
SIDECAR_SUFFIX = ".fingerprint.json"
SIDECAR_VERSION = 1
#: bounds on what a reader allocates before it has checked a file: a .npy header, a sidecar
_NPY_HEADER_MAX = 10_000
_SIDECAR_MAX = 1 << 20


@dataclass(frozen=True)
class StoredEmbeddings:
    """Embeddings read back by :func:`read_embeddings`.

    ``embeddings`` is float32 ``(N, D)``, or the integer codes of a quantised precision as they were written
    (``int8``/``uint8`` ``(N, D)``; packed ``binary``/``ubinary`` bits as int8/uint8 ``(N, ceil(D / 8))``);
    ``ids`` the ``id`` column (int64 array, or a list of str;
    ``0..N-1`` for ``.npy`` and for parquet files without one); ``inputs`` the ``input`` column or
    ``None``; ``fingerprint`` ``None`` only for a file without provenance read with ``expect=None``.
    """

    path: Path
    embeddings: np.ndarray
    ids: Any
    inputs: list[str] | None
    fingerprint: Fingerprint | None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])


def precision_of(fingerprint: Fingerprint) -> str:
    """The output precision a fingerprint records (``"float32"`` for one that records none)."""
    return check_precision(getattr(fingerprint, "precision", None) or "float32")


def encode_fingerprint(
    model: Any,
    *,
    normalize: bool | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    truncate_dim: int | None = None,
    precision: str = "float32",
) -> Fingerprint:
    """The fingerprint of what ``model.encode(inputs, **options)`` returns with these options
    (``model.fingerprint_for``: prompt role, truncation, precision, normalisation).

    >>> encode_fingerprint(model, prompt_name="query", precision="ubinary").dim  # doctest: +SKIP
    384
    """
    return model.fingerprint_for(prompt_name=prompt_name, prompt=prompt, truncate_dim=truncate_dim,
                                 precision=precision, normalize=normalize)


def sidecar_path(path: str | os.PathLike) -> Path:
    """Where the fingerprint of a ``.npy`` file lives: ``emb.npy`` -> ``emb.npy.fingerprint.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _open_regular(path: Path, what: str, error: type[EmbeddingsFileError] = EmbeddingsFileError) -> Any:
    """``path`` opened for binary reading, only if it is a regular file: opened without blocking (a FIFO with no
    writer would hang ``open`` forever), then checked on the open descriptor; ``error`` names it otherwise."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}", path=path) from None
    except ValueError as exc:  # a NUL byte in the name
        raise error(f"cannot read {what} {path!r}: {exc}", path=path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket or other special file")
        raise error(f"{what} {path} is {kind}, not a regular file", path=path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def utf8_path_problem(path: str | os.PathLike, what: str) -> str | None:
    """Why ``path`` cannot be written by pyarrow (not valid UTF-8, found only when writing), or ``None``."""
    name = os.fsdecode(path)
    try:
        name.encode("utf-8")
    except UnicodeError:
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        return f"{what} {shown} is not a valid UTF-8 path (pyarrow writes only UTF-8 paths); name it in UTF-8"
    return None


def repeated_id(ids: Any) -> tuple[int, int, Any] | None:
    """The first repeated id as ``(first row, repeating row, id)``, or ``None`` when all are unique."""
    import numpy as np

    if isinstance(ids, np.ndarray):
        if len(ids) < 2:
            return None
        order = np.argsort(ids, kind="stable")
        same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
        if not len(same):
            return None
        pairs = [(int(order[k]), int(order[k + 1])) for k in same]
        first, again = min(pairs, key=lambda p: p[1])
        return first, again, ids[first].item()
    seen: dict[Any, int] = {}
    for row, value in enumerate(ids):
        if value in seen:
            return seen[value], row, value
        seen[value] = row
    return None


def _extension(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise EmbeddingsFileError(
            f"{path}: unknown embeddings file extension {ext or '(none)'!r}; expected .npy or .parquet", path=path
        )
    return ext


# ---------------------------------------------------------------------------------------------- writing
def write_embeddings(
    path: str | os.PathLike,
    embeddings: Any,
    fingerprint: Fingerprint,
    *,
    ids: Sequence[int] | Sequence[str] | None = None,
    inputs: Sequence[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``embeddings`` (``(N, D)`` floats, stored as float32) with ``fingerprint``, atomically.

    Quantised vectors (``encode(..., precision=...)`` with ``fingerprint=model.fingerprint_for(precision=...)``)
    are stored as they are: packed ``binary``/``ubinary`` bits ``(N, ceil(D / 8))``; their dtype and width must
    be the fingerprint's precision's. ``int8``/``uint8`` codes are refused: ``encode`` scales them by each call's
    own ranges, so two files of them would not be comparable.

    ``.parquet``: columns ``id`` (``ids``, default ``0..N-1``; int64 or string), ``input`` (when
    ``inputs`` is given) and ``embedding`` (``fixed_size_list<float32>[D]``); the fingerprint JSON in
    the schema metadata under ``b"embedhub.fingerprint"``, beside any other ``metadata`` (str keys
    and values, e.g. where the rows came from). ``.npy``: the matrix only (``ids`` and
    ``inputs`` need parquet) and ``<path>.fingerprint.json`` beside it, recording the fingerprint and
    the SHA-256, rows and dims of the ``.npy`` it describes (so a sidecar never vouches for another
    matrix). Each file is replaced by a rename when complete; an error leaves earlier files as they were.

    >>> write_embeddings("emb.npy", model.encode(texts), model.fingerprint)  # doctest: +SKIP
    PosixPath('emb.npy')
    """
    import numpy as np

    path = Path(path)
    ext = _extension(path)
    problem = utf8_path_problem(path, "output")
    if problem:
        raise EmbeddingsFileError(problem, path=path)
    if not isinstance(fingerprint, Fingerprint):
        raise TypeError(
            f"fingerprint must be an embedhub.Fingerprint (model.fingerprint), got {type(fingerprint).__name__}"
        )
    if path.is_dir():
        raise EmbeddingsFileError(f"{path} is a folder; expected a file path ending in {ext}", path=path)
    precision = precision_of(fingerprint)
    if precision in ("int8", "uint8"):
        raise EmbeddingsFileError(
            f"{path}: {precision} codes are not stored: encode(..., precision={precision!r}) scales each dimension by "
            "the range of that call's own embeddings, so codes of two calls (or files) under one fingerprint are "
            "not comparable; store float32 (and quantise with fixed ranges, embedhub.quantize_embeddings(..., "
            "ranges=...), when searching) or binary / ubinary codes", path=path)
    emb = _matrix(embeddings, precision)
    n, dim = emb.shape
    width = stored_width(fingerprint.dim, precision)
    if dim != width:
        held = "" if precision == "float32" else f"'s {precision} vectors ({width} values a row)"
        raise ArgumentError(
            f"embeddings have {dim} dims but fingerprint {fingerprint.id} is of a {fingerprint.dim}-dim model{held}; "
            "pass the fingerprint of the model and options that made them (model.fingerprint_for(...))"
        )
    if fingerprint.normalized and n and precision == "float32":
        norms = np.linalg.norm(emb, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if bad.size:
            raise ValueError(
                f"row {int(bad[0])} has norm {norms[bad[0]]:.4g}, but fingerprint {fingerprint.id} says the vectors "
                "are L2-normalised; pass fingerprint.with_normalized(False) for encode(..., normalize=False) output"
            )
    if ext == ".npy":
        if ids is not None or inputs is not None or metadata:
            kept = "ids" if ids is not None else "inputs" if inputs is not None else "metadata"
            raise ValueError(f"{path}: a .npy file holds the matrix only; write a .parquet file to keep {kept}")
        _write_npy(path, emb, fingerprint)
        return path
    id_values = np.arange(n, dtype=np.int64) if ids is None else _ids(ids, n)
    input_values = None if inputs is None else _inputs(inputs, n)
    extra = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or key.encode() == PARQUET_KEY:
            raise ValueError(f"metadata must map str keys (not {PARQUET_KEY.decode()!r}) to str values; got {key!r}")
        extra[key.encode()] = value.encode()
    _write_parquet(path, emb, fingerprint, id_values, input_values, extra)
    return path


def _matrix(embeddings: Any, precision: str = "float32") -> np.ndarray:
    import numpy as np

    if hasattr(embeddings, "detach"):  # a torch tensor
        embeddings = embeddings.detach().cpu()
        embeddings = (embeddings.float() if embeddings.is_floating_point() else embeddings).numpy()
    arr = np.asarray(embeddings)
    if precision != "float32":
        want = stored_dtype(precision)
        if arr.ndim != 2 or arr.dtype != want:
            raise ValueError(f"{precision} embeddings must be a 2-d {want} array (encode(..., precision="
                             f"{precision!r})), got {arr.dtype} of shape {arr.shape}")
        return np.ascontiguousarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"embeddings must be a 2-d float array (N x D), got {arr.dtype} of shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"embeddings row {row} holds NaN or infinite values (as float32); nothing was written")
    return arr


def _ids(ids: Any, n: int) -> Any:
    import numpy as np

    values = list(ids)
    if len(values) != n:
        raise ValueError(f"ids has {len(values)} items but embeddings have {n} rows")
    if all(isinstance(v, str) for v in values):
        out: Any = values
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        out = np.asarray(values, dtype=np.int64)
    else:
        i = next(i for i, v in enumerate(values) if not isinstance(v, type(values[0])) or isinstance(v, bool))
        raise TypeError(f"ids must be all int or all str; ids[{i}] = {values[i]!r} ({type(values[i]).__name__})")
    seen: dict[Any, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            raise ValueError(f"ids[{i}] = {v!r} repeats ids[{seen[v]}]; ids must be unique")
        seen[v] = i
    return out


def _inputs(inputs: Any, n: int) -> list[str]:
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of str (one per row), not a str")
    values = list(inputs)
    if len(values) != n:
        raise ValueError(f"inputs has {len(values)} items but embeddings have {n} rows")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise TypeError(f"inputs[{i}] is a {type(v).__name__}; inputs are str (the text, or the image path)")
    return values


def _write_npy(path: Path, emb: np.ndarray, fingerprint: Fingerprint) -> None:
    import numpy as np

    digest: list[str] = []

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, emb, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        digest.append(sha256_file(tmp))

    atomic_write(path, write)
    record = {
        "embedhub_embeddings": SIDECAR_VERSION,
        "file": path.name,
        "rows": int(emb.shape[0]),
        "dim": int(emb.shape[1]),
        "dtype": str(emb.dtype),
        "sha256": digest[0],
        "fingerprint": fingerprint.to_dict(),
    }
    atomic_write(sidecar_path(path), json.dumps(record, indent=2, sort_keys=True) + "\n")


def _write_parquet(
    path: Path, emb: np.ndarray, fingerprint: Fingerprint, ids: Any, inputs: list[str] | None, extra: dict[bytes, bytes]
) -> None:
    pa = require("pyarrow", "parquet", "writing .parquet embeddings")
    import pyarrow.parquet as pq

    n, dim = emb.shape
    columns: dict[str, Any] = {"id": pa.array(ids, type=pa.string() if isinstance(ids, list) else pa.int64())}
    if inputs is not None:
        columns["input"] = pa.array(inputs, type=pa.string())
    flat = pa.array(emb.reshape(-1), type=pa.from_numpy_dtype(emb.dtype))
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
    table = pa.table(columns, metadata={**extra, PARQUET_KEY: fingerprint.to_json().encode()})
    # float vectors barely compress: the embedding column is stored plain (half the write time), the rest snappy
    compression = {name: "none" if name == "embedding" else "snappy" for name in columns}
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression=compression))


# ---------------------------------------------------------------------------------------------- reading
def read_embeddings_file(path: str | os.PathLike, *, expect: Fingerprint | None = None) -> StoredEmbeddings:
    """Read one ``.npy`` or ``.parquet`` file written by :func:`write_embeddings`, as
    :func:`embedhub.read_embeddings` does (which also reads ``embedhub embed`` folders)."""
    path = Path(path)
    if expect is not None and not isinstance(expect, Fingerprint):
        raise TypeError(f"expect must be an embedhub.Fingerprint or None, got {type(expect).__name__}")
    ext = _extension(path)
    stored = _read_npy(path) if ext == ".npy" else _read_parquet(path)
    fp = stored.fingerprint
    if fp is not None:
        _check_layout(path, stored.embeddings, fp)
    if expect is not None:
        if fp is None:
            raise ProvenanceError(
                f"{path} has no provenance ({_missing(path, ext)}), so it cannot be checked against the expected "
                f"fingerprint {expect.id}; write it with embedhub.write_embeddings or `embedhub encode`",
                path=path,
            )
        expect.check(fp, what=str(path), expected="expected", found="file")
    return stored


def _check_layout(path: Path, emb: np.ndarray, fp: Fingerprint) -> None:
    """The stored array's dtype and width are those of its fingerprint's precision and dimension."""
    precision = precision_of(fp)
    width, dtype = stored_width(fp.dim, precision), stored_dtype(precision)
    if emb.shape[1] != width:
        held = f"{fp.dim} dims" + (f" as {precision} ({width} values a row)" if width != fp.dim else "")
        raise ProvenanceError(f"{path}: its fingerprint {fp.id} says {held} but the file holds "
                              f"{emb.shape[1]} values a row", path=path, field="dim")
    if emb.dtype != dtype:
        raise ProvenanceError(f"{path}: its fingerprint {fp.id} says {precision} vectors ({dtype}) but the file "
                              f"holds {emb.dtype}", path=path, field="precision")


def _missing(path: Path, ext: str) -> str:
    if ext == ".npy":
        return f"no {sidecar_path(path).name} beside it"
    return f"no {PARQUET_KEY.decode()!r} key in its parquet schema metadata"


def _read_npy(path: Path) -> StoredEmbeddings:
    import numpy as np

    emb = _load_npy(path)
    side = sidecar_path(path)
    fp = _read_sidecar(side, path, emb.shape) if side.exists() else None
    return StoredEmbeddings(path, emb, np.arange(emb.shape[0], dtype=np.int64), None, fp)


def _load_npy(path: Path) -> np.ndarray:
    """A 2-d float matrix (float32) or int8/uint8 codes (as stored) from a ``.npy`` file, its header checked
    before anything is allocated: a bounded header, a float or one-byte integer dtype, and a shape whose bytes
    are exactly what the file holds after the header."""
    import numpy as np
    from numpy.lib import format as npy

    try:
        with _open_regular(path, "embeddings file") as fh:
            size = os.fstat(fh.fileno()).st_size
            try:
                version = npy.read_magic(fh)
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unknown .npy format version {version}")
                reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, fortran, dtype = reader(fh, max_header_size=_NPY_HEADER_MAX)
            except (ValueError, SyntaxError, TypeError, EOFError, RecursionError, MemoryError) as exc:
                raise EmbeddingsFileError(f"{path} is not a .npy array file: {str(exc)[:300]}", path=path) from None
            codes = dtype in (np.dtype(np.int8), np.dtype(np.uint8))
            if len(shape) != 2 or (dtype.kind != "f" and not codes) or dtype.hasobject or min(shape) < 0:
                raise EmbeddingsFileError(
                    f"{path}: expected a 2-d float array (N x D), got {dtype} of shape {shape} (quantised "
                    "embeddings are int8/uint8 codes)",
                    path=path,
                )
            count = shape[0] * shape[1]
            if count * dtype.itemsize != size - fh.tell():
                raise EmbeddingsFileError(
                    f"{path}: its header says {shape[0]} x {shape[1]} {dtype} ({count * dtype.itemsize} bytes) but "
                    f"the file holds {size - fh.tell()} bytes after the header (cut short, or a forged header)",
                    path=path,
                )
            arr = np.fromfile(fh, dtype=dtype, count=count)
    except OSError as exc:
        raise EmbeddingsFileError(f"cannot read {path}: {exc.strerror or exc}", path=path) from exc
    arr = arr.reshape(shape, order="F" if fortran else "C")
    if arr.dtype.kind != "f":
        return np.ascontiguousarray(arr)
    emb = np.ascontiguousarray(arr, dtype=np.float32)
    _check_finite(emb, path)
    return emb


def _check_finite(emb: np.ndarray, path: Path) -> None:
    """An :class:`EmbeddingsFileError` naming the file and the first row that holds NaN or an infinity."""
    import numpy as np

    finite = np.isfinite(emb).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise EmbeddingsFileError(f"{path}: row {row} holds NaN or infinite values; stored embeddings must be "
                                  "finite (the file is corrupt or was not written by embedhub)", path=path)


def _read_sidecar(side: Path, npy: Path, shape: tuple[int, ...]) -> Fingerprint:
    try:
        with _open_regular(side, "fingerprint sidecar") as fh:
            text = fh.read(_SIDECAR_MAX + 1)
        if len(text) > _SIDECAR_MAX:
            raise ProvenanceError(f"{side} is over {_SIDECAR_MAX} bytes; not an embedhub sidecar", path=side)
    except OSError as exc:
        raise ProvenanceError(f"cannot read {side}: {exc.strerror or exc}", path=side) from exc
    try:
        record = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProvenanceError(f"{side} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}",
                              path=side) from None
    if not isinstance(record, dict):
        raise ProvenanceError(f"{side}: expected a JSON object, found {type(record).__name__}", path=side)
    version = record.get("embedhub_embeddings")
    if version != SIDECAR_VERSION:
        raise ProvenanceError(
            f"{side}: 'embedhub_embeddings' must be {SIDECAR_VERSION} (the sidecar version this embedhub reads), "
            f"found {version!r}",
            path=side,
            field="embedhub_embeddings",
        )
    for key, want in (("rows", shape[0]), ("dim", shape[1])):
        if record.get(key) != want:
            raise ProvenanceError(
                f"{side}: records {key} = {record.get(key)!r} but {npy.name} holds {want}; the sidecar describes "
                "another matrix",
                path=side,
                field=key,
            )
    sha = record.get("sha256")
    if not isinstance(sha, str):
        raise ProvenanceError(f"{side}: 'sha256' must be a hex string, found {sha!r:.80}", path=side, field="sha256")
    found = sha256_file(npy)
    if found != sha.lower():
        raise ProvenanceError(
            f"{side} records SHA-256 {sha} but {npy.name} has {found}: the .npy was replaced or changed after "
            "its fingerprint was written, so its provenance is unknown",
            path=side,
            field="sha256",
        )
    if "fingerprint" not in record:
        raise ProvenanceError(f"{side}: no 'fingerprint' record", path=side, field="fingerprint")
    return Fingerprint.from_dict(record["fingerprint"], path=side)


def _read_parquet(path: Path) -> StoredEmbeddings:
    import numpy as np

    pa = require("pyarrow", "parquet", "reading .parquet embeddings")
    import pyarrow.parquet as pq

    try:
        with _open_regular(path, "embeddings file") as fh:
            # not pre-buffered: pyarrow's I/O thread on a Python file can abort the process at exit (pyarrow 26)
            table = pq.read_table(fh, pre_buffer=False)
    except OSError as exc:  # pyarrow's ArrowInvalid for a file that is not parquet is a ValueError
        raise EmbeddingsFileError(f"cannot read {path}: {exc.strerror or exc}", path=path) from exc
    except (pa.ArrowException, ValueError) as exc:
        raise EmbeddingsFileError(f"{path} is not a readable parquet file: {exc}", path=path) from exc
    names = table.column_names
    if "embedding" not in names:
        raise EmbeddingsFileError(f"{path}: no 'embedding' column (columns: {', '.join(names) or 'none'})", path=path)
    col = table.column("embedding").combine_chunks()
    kind = col.type
    if not (pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
        pa.types.is_floating(kind.value_type) or kind.value_type in (pa.int8(), pa.uint8())
    ):
        raise EmbeddingsFileError(
            f"{path}: column 'embedding' must be a list of floats (fixed_size_list<float32>[D]) or of int8/uint8 "
            f"codes, found {kind}",
            path=path,
        )
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise EmbeddingsFileError(f"{path}: column 'embedding' row {row} is null", path=path)
    n = len(col)
    if pa.types.is_fixed_size_list(kind):
        dim = kind.list_size
    else:
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if n else 0
        if n and (lengths != dim).any():
            row = int(np.flatnonzero(lengths != dim)[0])
            raise EmbeddingsFileError(
                f"{path}: column 'embedding' row {row} has {int(lengths[row])} values, row 0 has {dim}", path=path
            )
    values = col.flatten()
    if values.null_count:
        raise EmbeddingsFileError(f"{path}: column 'embedding' holds null values inside its vectors", path=path)
    if dim < 1:
        raise EmbeddingsFileError(f"{path}: column 'embedding' holds empty vectors", path=path)
    # a copy: arrow's buffers are read-only, and the table is dropped once the matrix is out
    floats = pa.types.is_floating(kind.value_type)
    emb = np.array(values.to_numpy(zero_copy_only=False), dtype=np.float32 if floats else None, copy=True)
    emb = emb.reshape(n, dim)
    if floats:
        _check_finite(emb, path)
    ids: Any = np.arange(n, dtype=np.int64)
    if "id" in names:
        id_col = table.column("id")
        ids = id_col.to_numpy() if pa.types.is_integer(id_col.type) and not id_col.null_count else id_col.to_pylist()
    repeat = repeated_id(ids)
    if repeat is not None:
        first, again, value = repeat
        raise EmbeddingsFileError(f"{path}: column 'id' row {again} = {value!r:.80} repeats row {first}; stored ids "
                                  "must be unique (write_embeddings refuses repeats)", path=path)
    inputs = table.column("input").to_pylist() if "input" in names else None
    meta = table.schema.metadata or {}
    fp = Fingerprint.from_json(meta[PARQUET_KEY], path=path) if PARQUET_KEY in meta else None
    return StoredEmbeddings(path, emb, ids, inputs, fp)
