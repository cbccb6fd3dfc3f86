"""Corpora for batch embedding (``embedhub embed``): plan an input into deterministic chunks, read a chunk.

An input is a parquet or JSONL file with a text column (and an id column, or row numbers), a folder
tree of images (ids: relative paths), webdataset tar shards (``<key>.<jpg|png|...>`` members; ids:
the keys), or a glob of such files. :func:`plan_corpus` reads the ids (never the texts or images),
checks them, and cuts every file into chunks of at most ``shard_rows`` rows; chunk ``k`` is the same
rows on every run over the same input, which is what lets a job resume. :func:`read_chunk` streams
one chunk's rows; :func:`decode_image` decodes one image (it runs in worker processes).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tarfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub.errors import CorpusError, InputError, require

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: the members of a webdataset sample that hold its image, in the order they are looked for
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
FILE_KINDS = {".parquet": "parquet", ".jsonl": "jsonl", ".tar": "tar"}
#: repeated ids named in an error message (the count is given in full)
_SHOWN = 5
#: a JSONL line longer than this (bytes) is refused before it is parsed: a record is read whole to be parsed
MAX_JSONL_LINE = 16 << 20
#: the largest extended header (PAX ``x``/``g``, GNU long name / link ``L``/``K``) a tar may declare: tarfile
#: reads one whole into memory, and real ones are a few hundred bytes
MAX_TAR_EXTENDED_HEADER = 1 << 20


@dataclass(frozen=True)
class TarMember:
    """An image member of a tar shard, by its header: read (at most ``size`` bytes) only when it is decoded."""

    source: str
    name: str
    size: int
    info: tarfile.TarInfo = field(compare=False, repr=False)


def _utf8_name(name: str, where: str, path: Any) -> str:
    """``name`` (a file or member name, an id) if it can be stored as UTF-8, else a :class:`CorpusError` at
    planning time, naming it and ``where`` it is: parquet and JSON keep text as UTF-8 only."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CorpusError(f"{where}: {name!r:.200} is not valid UTF-8 text (character {exc.start}: a name in "
                          "another encoding, or a lone surrogate), so it cannot be stored as an id; rename it or "
                          "re-encode it as UTF-8", path=path) from None
    return name


def _jsonl_lines(fh: Any, path: Any, first_line: int = 1) -> Iterator[tuple[int, int, bytes]]:
    """``(line number, byte offset, line)`` of an open JSONL file, each line read with a bound: a line over
    :data:`MAX_JSONL_LINE` bytes is a :class:`CorpusError` naming the file and line, before it is held whole."""
    lineno, pos = first_line, fh.tell()
    while True:
        raw = fh.readline(MAX_JSONL_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_JSONL_LINE and not raw.endswith(b"\n"):
            raise CorpusError(f"{path} line {lineno}: longer than {MAX_JSONL_LINE} bytes (a JSONL record is "
                              "read whole to be parsed); split the record or shorten its text", path=path)
        yield lineno, pos, raw
        lineno, pos = lineno + 1, pos + len(raw)


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of one input file (or, for a folder tree, the images ``paths`` under ``source``).

    ``first_id`` is the row number of ``start`` in the whole corpus (the id when the input has no id
    column); ``offset`` the byte offset of row ``start`` in a JSONL file.
    """

    index: int
    kind: str
    source: str
    start: int
    stop: int
    first_id: int = 0
    offset: int = 0
    paths: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def describe(self) -> dict[str, Any]:
        """What the chunk holds, for shard metadata and the manifest."""
        return {"source": self.source, "start": self.start, "stop": self.stop}


@dataclass
class Plan:
    """The chunks of a corpus and what identifies it (``digest``: its files' names, sizes and times)."""

    modality: str
    chunks: list[Chunk]
    rows: int
    digest: str
    id_kind: str  # "row" | "int" | "str"


@dataclass
class ChunkRows:
    """One chunk read: ``ids`` and ``items`` (texts, or image paths / bytes) of the readable rows, and
    ``errors`` as ``(id, reason)`` for rows that cannot be embedded."""

    ids: list[Any] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    errors: list[tuple[Any, str]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- planning
def expand_input(spec: str | os.PathLike) -> tuple[str, list[Path]]:
    """``("images", [root])`` for a folder, else the kind and the sorted files a path or glob names."""
    text = os.fspath(spec)
    path = Path(os.path.abspath(text))  # absolute: read tasks may run in another folder or on another node
    if path.is_dir():
        return "images", [path]
    files = [Path(os.path.abspath(p)) for p in sorted(glob.glob(text, recursive=True))] if glob.has_magic(
        text) else [path]
    if not files or not files[0].exists():
        what = "matches no file" if glob.has_magic(text) else "not found"
        raise CorpusError(f"input {text}: {what}", path=text)
    kinds = set()
    for f in files:
        kind = FILE_KINDS.get(f.suffix.lower())
        if kind is None or not f.is_file():
            raise CorpusError(
                f"input {f}: expected a .parquet, .jsonl or .tar file (or a folder of images), "
                f"found {'a folder' if f.is_dir() else repr(f.suffix or '(no extension)')}",
                path=f,
            )
        kinds.add(kind)
    if len(kinds) > 1:
        raise CorpusError(f"input {text} mixes file kinds ({', '.join(sorted(kinds))}); give one kind per job",
                          path=text)
    return kinds.pop(), files


def plan_corpus(
    spec: str | os.PathLike, *, shard_rows: int, text_column: str = "text", id_column: str | None = None
) -> Plan:
    """Cut the corpus ``spec`` names into chunks of at most ``shard_rows`` rows, checking its ids.

    Raises :class:`~embedhub.CorpusError` for an input that cannot be embedded as a whole: no rows,
    a missing text or id column, ids of mixed types, ids that repeat (named, with where they are).
    """
    kind, files = expand_input(spec)
    planner = {"parquet": _plan_parquet, "jsonl": _plan_jsonl, "tar": _plan_tar, "images": _plan_images}[kind]
    chunks: list[Chunk] = []
    id_sources: list[tuple[Any, Callable[[], Iterator[tuple[Any, str]]]]] = []
    id_kinds: set[str] = set()
    listing = hashlib.sha256()
    listing.update(json.dumps([kind, text_column, id_column, shard_rows]).encode())
    rows = 0
    if kind == "images":
        listing.update(str(files[0]).encode())
    for f in files:
        for chunk_rows, ids, id_kind, stats in planner(f, shard_rows, text_column, id_column):
            for start, stop, offset, paths in chunk_rows:
                chunks.append(Chunk(len(chunks), kind, str(f), start, stop, rows + start, offset, paths))
            n = chunk_rows[-1][1] if chunk_rows else 0
            rows += n
            if ids is not None:
                id_sources.append(ids)
                id_kinds.add(id_kind)
            for entry in stats:
                listing.update(json.dumps(entry).encode())
    if rows == 0:
        raise CorpusError(f"input {os.fspath(spec)}: no rows to embed ({count(len(files), 'file')}, all empty)",
                          path=os.fspath(spec))
    if len(id_kinds) > 1:
        raise CorpusError(f"input {os.fspath(spec)}: ids are int in some files and str in others; use one type",
                          path=os.fspath(spec))
    id_kind = id_kinds.pop() if id_kinds else "row"
    if id_sources:
        _check_unique(id_sources, os.fspath(spec))
    modality = "image" if kind in ("images", "tar") else "text"
    return Plan(modality, chunks, rows, listing.hexdigest(), id_kind)


def count(n: int, noun: str) -> str:
    """``count(1, "line")`` -> ``"1 line"``, ``count(3, "line")`` -> ``"3 lines"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _cuts(n: int, shard_rows: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_rows, n)) for s in range(0, n, shard_rows)]


def _stat(path: Path, name: str | None = None) -> list[Any]:
    st = path.stat()
    return [name or str(path), st.st_size, st.st_mtime_ns]


def _id_hash(value: Any) -> int:
    if isinstance(value, str):
        return int.from_bytes(hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                              "little", signed=True)
    return int(value)


def _check_unique(sources: list[tuple[Any, Callable[[], Iterator[tuple[Any, str]]]]], spec: str) -> None:
    """Ids are kept as 8-byte hashes (flat memory); repeated hashes are confirmed on the ids themselves.

    Each source is ``(hashes, scan)``: the hashes when the planner kept them (else ``None``: they come
    from ``scan``), and ``scan()`` yielding ``(id, where)``.
    """
    import numpy as np

    hashes = np.concatenate([
        np.frombuffer(kept, dtype=np.int64) if kept is not None
        else np.fromiter((_id_hash(v) for v, _ in scan()), dtype=np.int64)
        for kept, scan in sources
    ])
    uniq, counts = np.unique(hashes, return_counts=True)
    suspects = set(uniq[counts > 1].tolist())
    if not suspects:
        return
    where: dict[Any, list[str]] = {}
    for _, scan in sources:
        for value, loc in scan():
            if _id_hash(value) in suspects:
                where.setdefault(value, []).append(loc)
    repeated = {v: locs for v, locs in where.items() if len(locs) > 1}
    if not repeated:  # 64-bit hash collisions between different ids
        return
    shown = "; ".join(f"{v!r} at {', '.join(locs[:3])}" for v, locs in list(repeated.items())[:_SHOWN])
    more = f" (and {len(repeated) - _SHOWN} more)" if len(repeated) > _SHOWN else ""
    raise CorpusError(f"input {spec}: {count(len(repeated), 'id')} repeat: {shown}{more}; ids must be unique",
                      path=spec, ids=list(repeated))


def _plan_parquet(path: Path, shard_rows: int, text_column: str, id_column: str | None):
    pq = _parquet()
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not parquet
        raise CorpusError(f"{path}: not a readable parquet file ({exc})", path=path) from None
    import pyarrow as pa

    names = schema.names
    for col, role in ((text_column, "text"), (id_column, "id")):
        if col is not None and col not in names:
            flag = "text_column (--text-column)" if role == "text" else "id_column (--id-column)"
            raise CorpusError(f"{path}: no {role} column {col!r} (columns: {', '.join(names) or 'none'}); "
                              f"name it with {flag}", path=path, column=col)
    ttype = schema.field(text_column).type
    if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype)):
        raise CorpusError(f"{path}: text column {text_column!r} holds {ttype}, expected strings", path=path,
                          column=text_column)
    id_kind = "row"
    if id_column is not None:
        itype = schema.field(id_column).type
        if pa.types.is_integer(itype):
            id_kind = "int"
        elif pa.types.is_string(itype) or pa.types.is_large_string(itype):
            id_kind = "str"
        else:
            raise CorpusError(f"{path}: id column {id_column!r} holds {itype}, expected integers or strings",
                              path=path, column=id_column)
    n = pf.metadata.num_rows

    def ids() -> Iterator[tuple[Any, str]]:
        try:
            yield from id_rows()
        except CorpusError:
            raise
        except Exception as exc:  # a corrupt page: pyarrow's OSError can have an empty message
            raise CorpusError(f"{path}: id column {id_column!r} cannot be read: {type(exc).__name__}: "
                              f"{str(exc)[:300] or 'corrupt or truncated data'}", path=path,
                              column=id_column) from None

    def id_rows() -> Iterator[tuple[Any, str]]:
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=[id_column], batch_size=65536):
            col = batch.column(0)
            if col.null_count:
                import numpy as np

                bad = row + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise CorpusError(f"{path}: id column {id_column!r} is null in row {bad}", path=path, column=id_column)
            for v in col.to_pylist():
                if id_kind == "int" and not -(1 << 63) <= v < (1 << 63):  # a uint64 above 2**63 - 1
                    raise CorpusError(f"{path}: id column {id_column!r} row {row}: id {v} does not fit a signed "
                                      "64-bit integer (ids are stored as int64); use string ids", path=path,
                                      column=id_column)
                yield v, f"{path} row {row}"
                row += 1

    chunks = [(s, e, 0, ()) for s, e in _cuts(n, shard_rows)]
    yield chunks, ((None, ids) if id_column is not None else None), id_kind, [_stat(path)]


def _plan_jsonl(path: Path, shard_rows: int, text_column: str, id_column: str | None):
    """Every line is parsed once here, so a malformed record stops the job before any work (a null or
    non-string text is not malformed: it is skipped and listed when the shard is read)."""
    offsets: list[int] = []
    id_kinds: set[str] = set()
    hashes = array("q")  # the ids' 8-byte hashes, kept while parsing: the check needs no second pass
    n = 0
    with open(path, "rb") as fh:
        for lineno, start, raw in _jsonl_lines(fh, path):
            if not raw.strip():
                continue
            record = _json_record(raw, path, lineno)
            for col, role in ((text_column, "text"), (id_column, "id")):
                if col is not None and col not in record:
                    flag = "text_column (--text-column)" if role == "text" else "id_column (--id-column)"
                    raise CorpusError(f"{path} line {lineno}: no {role} field {col!r} (fields: "
                                      f"{', '.join(record)[:300] or 'none'}); name it with {flag}", path=path,
                                      column=col)
            if id_column is not None:
                id_kinds.add(_id_kind(record[id_column], f"{path} line {lineno}", id_column, path))
                hashes.append(_id_hash(record[id_column]))
            if n % shard_rows == 0:
                offsets.append(start)
            n += 1
    if len(id_kinds) > 1:
        raise CorpusError(f"{path}: field {id_column!r} is int in some lines and str in others; use one type",
                          path=path, column=id_column)

    def ids() -> Iterator[tuple[Any, str]]:
        with open(path, "rb") as fh:
            for lineno, _, raw in _jsonl_lines(fh, path):
                if raw.strip():
                    yield _json_record(raw, path, lineno)[id_column], f"{path} line {lineno}"

    chunks = [(s, e, offsets[i], ()) for i, (s, e) in enumerate(_cuts(n, shard_rows))]
    id_kind = id_kinds.pop() if id_kinds else "row"
    yield chunks, ((hashes, ids) if id_column is not None else None), id_kind, [_stat(path)]


def _json_record(raw: bytes, path: Path, lineno: int | str) -> dict:
    try:
        record = json.loads(raw.decode("utf-8"))  # from str: json's own encoding detection costs as much again
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusError(f"{path} line {lineno}: not a JSON object ({str(exc)[:200]})", path=path) from None
    except RecursionError:
        raise CorpusError(f"{path} line {lineno}: JSON nested too deeply to parse; expected a flat JSON object "
                          "with a text field", path=path) from None
    if not isinstance(record, dict):
        raise CorpusError(f"{path} line {lineno}: expected a JSON object, found {type(record).__name__}", path=path)
    return record


def _id_kind(value: Any, where: str, column: str, path: Path) -> str:
    if isinstance(value, str):
        _utf8_name(value, f"{where}: id {column!r}", path)
        return "str"
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return "int"
    raise CorpusError(f"{where}: id {column!r} is {value!r:.60}, expected a string or a 64-bit integer", path=path,
                      column=column)


def _plan_images(root: Path, shard_rows: int, text_column: str, id_column: str | None):
    """The image files under ``root`` (symlinked folders are not followed), in sorted relative-path order."""
    rels: list[str] = []
    stats: list[list[Any]] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(folder) / name
                rel = _utf8_name(path.relative_to(root).as_posix(), f"{root}: image file name", root)
                rels.append(rel)
                stats.append(_stat(path, rel))
    chunks = [(s, e, 0, tuple(rels[s:e])) for s, e in _cuts(len(rels), shard_rows)]
    yield chunks, None, "str", stats


def _plan_tar(path: Path, shard_rows: int, text_column: str, id_column: str | None):
    keys = list(tar_keys(path))

    def ids() -> Iterator[tuple[Any, str]]:
        for key in tar_keys(path):
            yield key, str(path)

    chunks = [(s, e, 0, ()) for s, e in _cuts(len(keys), shard_rows)]
    yield chunks, (None, ids), "str", [_stat(path)]


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar member header whose extended headers are refused over :data:`MAX_TAR_EXTENDED_HEADER` before
    tarfile reads them (a 3 KB sparse tar can declare a 1.5 GB PAX header)."""

    def _bound(self, tar: tarfile.TarFile) -> None:
        if self.size > MAX_TAR_EXTENDED_HEADER:
            name = tar.name or "a tar shard"
            raise CorpusError(f"{name}: an extended tar header (type {self.type.decode('latin-1')!r}) of "
                              f"{self.size} bytes, over the {MAX_TAR_EXTENDED_HEADER} bytes a tar shard may use; "
                              "not a readable tar shard", path=name)

    def _proc_pax(self, tarfile):  # noqa: ANN001, ANN202 (tarfile's hook)
        self._bound(tarfile)
        return super()._proc_pax(tarfile)

    def _proc_gnulong(self, tarfile):  # noqa: ANN001, ANN202
        self._bound(tarfile)
        return super()._proc_gnulong(tarfile)


def open_tar(path: str | os.PathLike) -> tarfile.TarFile:
    """``tarfile.open(path, "r:*")`` with extended headers bounded (see :class:`_BoundedTarInfo`)."""
    return tarfile.open(path, "r:*", tarinfo=_BoundedTarInfo)


def tar_keys(path: str | os.PathLike) -> Iterator[str]:
    """The sample keys of a webdataset tar shard, in order, from its member headers (``dir/key.ext`` ->
    ``dir/key``; no member is read). An unreadable shard is a :class:`~embedhub.CorpusError` naming it."""
    last = None
    try:
        with open_tar(path) as tar:
            for member in tar:
                if member.isfile():
                    key = member.name.rpartition(".")[0]
                    if key != last:
                        last = key
                        yield _utf8_name(key, f"{path}: member {member.name!r:.200}", path)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorpusError(f"{path}: not a readable tar shard ({type(exc).__name__}: {exc})", path=path) from None


def _parquet():
    require("pyarrow", "parquet", "reading parquet corpora")
    import pyarrow.parquet as pq

    return pq


# ---------------------------------------------------------------------------------------------- reading
def read_chunk(chunk: Chunk, *, text_column: str = "text", id_column: str | None = None) -> ChunkRows:
    """The rows of ``chunk``: texts, or image references (a :class:`~pathlib.Path` or the member's bytes)
    to pass to :func:`decode_image`. Texts that cannot be encoded are listed in ``errors``."""
    out = ChunkRows()
    if chunk.kind == "images":
        root = Path(chunk.source)
        for rel in chunk.paths:
            out.ids.append(rel)
            out.items.append(root / rel)
        return out
    if chunk.kind == "tar":
        from embedhub.modules.inputs import MAX_IMAGE_BYTES

        for key, parts in _tar_samples(Path(chunk.source), chunk.start, chunk.stop):
            image = next((parts[e] for e in TAR_IMAGE_EXTENSIONS if e in parts), None)
            if image is None:
                out.errors.append((key, f"no image member ({', '.join(sorted(parts)) or 'none'})"))
            elif image.size > MAX_IMAGE_BYTES:  # by its header: the member is never read
                out.errors.append((key, f"image member {image.name} is {image.size} bytes, over the "
                                        f"{MAX_IMAGE_BYTES}-byte limit (not read)"))
            else:
                out.ids.append(key)
                out.items.append(image)
        return out
    rows = _parquet_rows(chunk, text_column, id_column) if chunk.kind == "parquet" else _jsonl_rows(
        chunk, text_column, id_column)
    for i, (row_id, text) in enumerate(rows):
        row_id = chunk.first_id + i if id_column is None else row_id
        problem = text_problem(text)
        if problem is None:
            out.ids.append(row_id)
            out.items.append(text)
        else:
            out.errors.append((row_id, problem))
    return out


def text_problem(text: Any) -> str | None:
    """Why ``text`` cannot be embedded (null, not a string, not encodable as UTF-8), or ``None``.

    Command-line bytes that are not UTF-8 reach Python as surrogate escapes U+DC80..U+DCFF (PEP 383),
    JSON can spell a lone surrogate as ``\\ud800``; tokenizers refuse both with a bare TypeError.
    """
    if not isinstance(text, str):
        return "text is null" if text is None else f"text is {type(text).__name__}, expected a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        if 0xDC80 <= code <= 0xDCFF:
            return (
                f"byte 0x{code - 0xDC00:02x} at character {exc.start} is not UTF-8 "
                "(the text was passed in another encoding; re-encode it as UTF-8)"
            )
        return f"it holds a lone surrogate U+{code:04X} at character {exc.start}, which is not a character"
    return None


def _parquet_rows(chunk: Chunk, text_column: str, id_column: str | None) -> Iterator[tuple[Any, Any]]:
    """Rows ``start:stop`` of a parquet file; a file that cannot be read is a :class:`CorpusError` naming it
    and the rows (pyarrow's own errors for a corrupt page can have an empty message)."""
    pq = _parquet()
    try:
        yield from _parquet_slice(pq, chunk, text_column, id_column)
    except CorpusError:
        raise
    except Exception as exc:  # ArrowInvalid / OSError / UnicodeDecodeError from a corrupt file
        raise CorpusError(f"{chunk.source}: rows {chunk.start}..{chunk.stop - 1} cannot be read: "
                          f"{type(exc).__name__}: {str(exc)[:300] or 'corrupt or truncated data'} (the file "
                          "changed or is damaged)", path=chunk.source) from None


def _parquet_slice(pq: Any, chunk: Chunk, text_column: str, id_column: str | None) -> Iterator[tuple[Any, Any]]:
    pf = pq.ParquetFile(chunk.source)
    columns = [text_column] + ([id_column] if id_column is not None else [])
    # skip whole row groups before the chunk, then slice
    groups: list[int] = []
    first, at = 0, 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if at + n > chunk.start and at < chunk.stop:
            first = at if not groups else first
            groups.append(g)
        at += n
    row = first
    for batch in pf.iter_batches(columns=columns, row_groups=groups, batch_size=8192):
        lo, hi = max(chunk.start - row, 0), min(chunk.stop - row, batch.num_rows)
        if lo < hi:
            texts = batch.column(0).slice(lo, hi - lo).to_pylist()
            ids = batch.column(1).slice(lo, hi - lo).to_pylist() if id_column is not None else [None] * len(texts)
            yield from zip(ids, texts)
        row += batch.num_rows
        if row >= chunk.stop:
            break


def _jsonl_rows(chunk: Chunk, text_column: str, id_column: str | None) -> Iterator[tuple[Any, Any]]:
    with open(chunk.source, "rb") as fh:
        fh.seek(chunk.offset)
        left = chunk.rows
        for _, pos, raw in _jsonl_lines(fh, chunk.source, first_line=0):
            if not raw.strip():
                continue
            record = _json_record(raw, Path(chunk.source), f"at byte {pos}")
            yield (record[id_column] if id_column is not None else None), record[text_column]
            left -= 1
            if not left:
                break


def _tar_samples(path: Path, start: int, stop: int) -> Iterator[tuple[str, dict[str, TarMember]]]:
    """Samples ``start:stop`` of a tar shard as ``(key, {extension: member})``, from the member headers only:
    no member is read here (images are read by :class:`ItemReader`, one at a time, bounded by their size)."""
    index, key, parts = -1, None, {}
    try:
        with open_tar(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = member.name.rpartition(".")
                if stem != key:
                    if key is not None and start <= index < stop:
                        yield key, parts
                    index, key, parts = index + 1, stem, {}
                    if index >= stop:
                        return
                if start <= index < stop:
                    parts[ext.lower()] = TarMember(str(path), member.name, member.size, member)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise CorpusError(f"{path}: not a readable tar shard ({type(exc).__name__}: {exc})", path=path) from None
    if key is not None and start <= index < stop:
        yield key, parts


class ItemReader:
    """Reads the image items of one chunk for :func:`decode_image`: a path is passed on (the decoder reads it,
    bounded); a tar member is read from its shard (opened once per chunk, members in order, so a compressed
    shard is decompressed once) with at most its header's size, or its problem is returned as a str."""

    def __init__(self, chunk: Chunk):
        self.chunk = chunk
        self._tar: tarfile.TarFile | None = None

    def __enter__(self) -> ItemReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._tar is not None:
            self._tar.close()

    @staticmethod
    def size(item: Any) -> int:
        """The bytes an item will take once read (a file's size by ``stat``, a member's by its header)."""
        if isinstance(item, TarMember):
            return item.size
        if isinstance(item, Path):
            try:
                return item.stat().st_size
            except OSError:
                return 0
        return len(item)

    def __call__(self, item: Any) -> Path | bytes | str:
        if not isinstance(item, TarMember):
            return item
        try:
            if self._tar is None:
                self._tar = open_tar(item.source)
            fh = self._tar.extractfile(item.info)
            data = fh.read(item.size) if fh is not None else b""
        except (tarfile.TarError, EOFError, OSError) as exc:
            return f"member {item.name} cannot be read ({type(exc).__name__}: {exc})"
        if len(data) != item.size:
            return f"member {item.name} is cut short ({len(data)} of {item.size} bytes)"
        return data


def decode_image(item: Path | bytes, max_pixels: int | None = None) -> np.ndarray | str:
    """An RGB uint8 array of the image at ``item`` (a path or the file's bytes), or why it cannot be read."""
    import numpy as np

    from embedhub.modules.inputs import MAX_IMAGE_PIXELS, load_image

    try:
        img = load_image(item, 0, max_pixels=max_pixels or MAX_IMAGE_PIXELS)
        return np.asarray(img, dtype=np.uint8)
    except InputError as exc:
        return exc.detail
