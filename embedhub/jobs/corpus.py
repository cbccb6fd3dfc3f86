"""The one corpus reader: every input ``embedhub encode``, ``embedhub search`` and ``embedhub embed`` accept.

An input is a ``.txt`` file (a text a line), a ``.jsonl`` file (the ``text_column`` field of each object), a
``.tsv``/``.csv`` file (no header; column ``column``, 0-based), a ``.parquet`` file (its ``text_column``), a
folder tree of images (ids: relative paths), webdataset ``.tar`` shards (``<key>.<jpg|png|...>`` members; ids:
the keys), or a glob of files of one kind. A ``.jsonl`` or ``.parquet`` field named ``image`` holds image
paths relative to the file's folder. Ids come from ``id_column`` (``.jsonl``/``.parquet``), else row numbers.

:func:`read_corpus` reads a whole corpus into memory (a :class:`Corpus`: ``encode`` and ``search``);
:func:`plan_corpus` reads the ids (never the images, nor a parquet file's texts), checks them, and cuts every
file into chunks of at most ``shard_rows`` rows that :func:`read_chunk` streams (``embed``; chunk ``k`` is the
same rows on every run over the same input, which is what lets a job resume). Both walk the same rows with the
same checks: a file that cannot be read as a whole (bad JSON, a missing field, an unclosed quote) is a
:class:`~embedhub.CorpusError` naming the file and line; a row that cannot be embedded (a null or empty text,
a missing image) is a problem of that row, named with its file and line (``encode`` stops at it, ``embed``
lists it). :func:`decode_image` decodes one image (it runs in worker processes).

>>> corpus = read_corpus("sentences.txt")  # doctest: +SKIP
>>> corpus.summary()                        # doctest: +SKIP
'read 3 texts from 4 lines of sentences.txt (1 blank line skipped)'
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import sys
import tarfile
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub.errors import CorpusError, InputError, require

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: the members of a webdataset sample that hold its image, in the order they are looked for
TAR_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
FILE_KINDS = {".txt": "txt", ".jsonl": "jsonl", ".tsv": "table", ".csv": "table", ".parquet": "parquet",
              ".tar": "tar"}
#: the file extensions of an input (besides a folder of images)
INPUT_EXTENSIONS = tuple(FILE_KINDS)
#: a ``.jsonl`` field or ``.parquet`` column of this name holds image paths (relative to the file's folder)
IMAGE_FIELD = "image"
#: the file kinds read line by line
LINE_KINDS = ("txt", "jsonl", "table")
#: repeated ids named in an error message (the count is given in full)
_SHOWN = 5
#: a line longer than this (bytes) is refused before it is held whole (a JSONL record is read whole to be parsed)
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
    """``(line number, byte offset, line)`` of an open binary file, lines ending in ``\\n``, ``\\r\\n`` or a lone
    ``\\r`` (Python's universal newlines, as a text-mode read splits them), each read with a bound: a line over
    :data:`MAX_JSONL_LINE` bytes is a :class:`CorpusError` naming the file and line, before it is held whole."""
    lineno, pos = first_line, fh.tell()
    while True:
        raw = fh.readline(MAX_JSONL_LINE + 1)
        if not raw:
            return
        if len(raw) > MAX_JSONL_LINE and not raw.endswith(b"\n"):
            last = raw.rfind(b"\r", 0, MAX_JSONL_LINE)
            if last == -1:
                raise CorpusError(f"{path} line {lineno}: longer than {MAX_JSONL_LINE} bytes (each line is read "
                                  "whole); split the line or shorten its text", path=path)
            raw = raw[:last + 1]  # lines ending in CR: take those read, read on after the last
            fh.seek(pos + len(raw))
        start = 0
        while (cr := raw.find(b"\r", start)) != -1 and raw[cr + 1:cr + 2] != b"\n":  # a lone CR ends a line
            yield lineno, pos + start, raw[start:cr + 1]
            lineno, start = lineno + 1, cr + 1
        if start < len(raw):
            yield lineno, pos + start, raw[start:]
            lineno += 1
        pos += len(raw)


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of one input file (or, for a folder tree, the images ``paths`` under ``source``).

    ``first_id`` is the row number of ``start`` in the whole corpus (the id when the input has no id
    column); ``offset`` the byte offset of row ``start`` in a line-based file, ``line`` its line number;
    ``modality`` what the rows hold (``"text"`` or ``"image"``).
    """

    index: int
    kind: str
    source: str
    start: int
    stop: int
    first_id: int = 0
    offset: int = 0
    paths: tuple[str, ...] = ()
    line: int = 1
    modality: str = "text"

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


@dataclass
class Corpus:
    """A whole corpus read into memory (:func:`read_corpus`), with what to print for each item and where each
    came from."""

    source: Path
    items: list[Any] = field(default_factory=list)
    #: the text, the image path as str, or a tar sample's key (the parquet ``input`` column, search hits)
    labels: list[str] = field(default_factory=list)
    #: where each item came from, for error messages: "line 7 of data.jsonl", "img/b.png"
    origins: list[str] = field(default_factory=list)
    #: physical lines (or parquet rows, tar samples: see ``unit``) read; ``None`` for a folder of images
    lines: int | None = None
    #: what ``lines`` counts: "line", "row" or "sample"
    unit: str = "line"
    #: blank lines (or, in a folder, files that are not images) that were skipped
    skipped: int = 0
    #: the first line of each csv record whose quoted field spans several lines
    multiline: list[int] = field(default_factory=list)

    def add(self, item: Any, origin: str, label: str | None = None) -> None:
        self.items.append(item)
        self.labels.append(str(item) if label is None else label)
        self.origins.append(origin)

    @property
    def is_text(self) -> bool:
        return all(isinstance(x, str) for x in self.items)

    def summary(self) -> str:
        """What was read from how much: ``read 3 texts from 5 lines of a.csv (1 blank line skipped; ...)``.

        Printed for every input, so a file read as fewer items than its lines (a quote that merges
        lines, say) shows on stderr.
        """
        what = count(len(self.items), "text" if self.is_text else "image")
        if self.lines is None:
            notes = [f"{count(self.skipped, 'other file')} skipped"] if self.skipped else []
            head = f"read {what} from folder {self.source}"
        else:
            notes = [f"{count(self.skipped, 'blank line')} skipped"] if self.skipped else []
            if self.multiline:
                first = ", ".join(map(str, self.multiline[:5])) + (", ..." if len(self.multiline) > 5 else "")
                spans = "spans" if len(self.multiline) == 1 else "span"
                notes.append(
                    f"{count(len(self.multiline), 'quoted field')} {spans} several lines, starting on line {first}"
                )
            head = f"read {what} from {count(self.lines, self.unit)} of {self.source}"
        return head + (f" ({'; '.join(notes)})" if notes else "")


# ---------------------------------------------------------------------------------------------- planning
def expand_input(spec: str | os.PathLike, *, absolute: bool = True) -> tuple[str, list[Path]]:
    """``("images", [root])`` for a folder, else the kind and the sorted files a path or glob names
    (absolute unless ``absolute=False``: read tasks may run in another folder or on another node)."""
    text = os.fspath(spec)

    def norm(p: str) -> Path:
        return Path(os.path.abspath(p)) if absolute else Path(p)

    path = norm(text)
    if path.is_dir():
        return "images", [path]
    files = [norm(p) for p in sorted(glob.glob(text, recursive=True))] if glob.has_magic(text) else [path]
    if not files or not files[0].exists():
        what = "matches no file" if glob.has_magic(text) else "not found"
        raise CorpusError(f"input {text}: {what}", path=text)
    kinds = set()
    for f in files:
        kind = FILE_KINDS.get(f.suffix.lower())
        if kind is not None and f.exists() and not f.is_file() and not f.is_dir():
            raise CorpusError(f"input {f}: not a regular file (a FIFO, socket or device); embedhub reads a corpus "
                              "from regular files only, so that it can be planned, bounded and resumed", path=f)
        if kind is None or not f.is_file():
            found = "a folder" if f.is_dir() else repr(f.suffix or "(none)")
            raise CorpusError(
                f"input {f}: unknown input extension {found}; expected a {', '.join(INPUT_EXTENSIONS[:-1])} or "
                f"{INPUT_EXTENSIONS[-1]} file, a folder of images, or a glob of files of one kind",
                path=f,
            )
        kinds.add(kind)
    if len(kinds) > 1:
        raise CorpusError(f"input {text} mixes file kinds ({', '.join(sorted(kinds))}); give one kind per job",
                          path=text)
    return kinds.pop(), files


def modality_of(kind: str, text_column: str = "text") -> str:
    """``"image"`` for a folder, tar shards, or a ``.jsonl``/``.parquet`` field named ``image``; else ``"text"``.

    >>> modality_of("jsonl", "image"), modality_of("txt")
    ('image', 'text')
    """
    if kind in ("images", "tar") or (kind in ("jsonl", "parquet") and text_column == IMAGE_FIELD):
        return "image"
    return "text"


def _check_options(kind: str, spec: Any, id_column: str | None) -> None:
    if id_column is not None and kind in ("txt", "table"):
        raise CorpusError(f"input {os.fspath(spec)}: id_column (--id-column) names a field of .jsonl or a column "
                          f"of .parquet input; the rows of a {kind if kind == 'txt' else 'tsv/csv'} file are "
                          "numbered (ids: row numbers)", path=os.fspath(spec), column=id_column)


def _no_rows(spec: Any, kind: str, files: list[Path]) -> CorpusError:
    where = os.fspath(spec)
    if kind == "images":
        why = f"the folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
    else:
        why = f"no inputs in {count(len(files), 'file')}: empty or only blank lines"
    return CorpusError(f"input {where}: no rows to embed ({why})", path=where)


def plan_corpus(
    spec: str | os.PathLike, *, shard_rows: int, text_column: str = "text", id_column: str | None = None,
    column: int = 0,
) -> Plan:
    """Cut the corpus ``spec`` names into chunks of at most ``shard_rows`` rows, checking its ids.

    Raises :class:`~embedhub.CorpusError` for an input that cannot be embedded as a whole: no rows,
    a missing text or id column, ids of mixed types, ids that repeat (named, with where they are).
    """
    kind, files = expand_input(spec)
    _check_options(kind, spec, id_column)
    planner = {"parquet": _plan_parquet, "tar": _plan_tar, "images": _plan_images}.get(kind, _plan_lines)
    modality = modality_of(kind, text_column)
    chunks: list[Chunk] = []
    id_sources: list[tuple[Any, Callable[[], Iterator[tuple[Any, str]]]]] = []
    id_kinds: set[str] = set()
    listing = hashlib.sha256()
    listing.update(json.dumps([kind, text_column, id_column, shard_rows] + ([column] if kind == "table" else []))
                   .encode())
    rows = 0
    if kind == "images":
        listing.update(str(files[0]).encode())
    for f in files:
        reading = {"text_column": text_column, "id_column": id_column, "column": column, "kind": kind}
        for chunk_rows, ids, id_kind, stats in planner(f, shard_rows, reading):
            for start, stop, offset, paths, line in chunk_rows:
                chunks.append(Chunk(len(chunks), kind, str(f), start, stop, rows + start, offset, paths, line,
                                    modality))
            n = chunk_rows[-1][1] if chunk_rows else 0
            rows += n
            if ids is not None:
                id_sources.append(ids)
                id_kinds.add(id_kind)
            for entry in stats:
                listing.update(json.dumps(entry).encode())
    if rows == 0:
        raise _no_rows(spec, kind, files)
    if len(id_kinds) > 1:
        raise CorpusError(f"input {os.fspath(spec)}: ids are int in some files and str in others; use one type",
                          path=os.fspath(spec))
    id_kind = id_kinds.pop() if id_kinds else "row"
    if id_sources:
        _check_unique(id_sources, os.fspath(spec))
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


def _plan_parquet(path: Path, shard_rows: int, reading: dict[str, Any]):
    text_column, id_column = reading["text_column"], reading["id_column"]
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
            flag = _FLAGS[role]
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

    chunks = [(s, e, 0, (), 1) for s, e in _cuts(n, shard_rows)]
    yield chunks, ((None, ids) if id_column is not None else None), id_kind, [_stat(path)]




#: how an error message names the option that chooses a column
_FLAGS = {"text": "text_column (--text-column or --field)", "id": "id_column (--id-column)"}


def _plan_lines(path: Path, shard_rows: int, reading: dict[str, Any]):
    """Every record of a line-based file (``.txt``, ``.jsonl``, ``.tsv``/``.csv``) is parsed once here, so a
    malformed one stops the job before any work (a null or empty text is not malformed: it is skipped and
    listed when the shard is read). Chunks start at a record's byte offset and line."""
    id_column = reading["id_column"]
    offsets: list[int] = []
    lines: list[int] = []
    id_kinds: set[str] = set()
    hashes = array("q")  # the ids' 8-byte hashes, kept while parsing: the check needs no second pass
    n = 0
    for offset, line, _, row_id in _line_records(path, **reading):
        if id_column is not None:
            id_kinds.add(_id_kind(row_id, f"{path} line {line}", id_column, path))
            hashes.append(_id_hash(row_id))
        if n % shard_rows == 0:
            offsets.append(offset)
            lines.append(line)
        n += 1
    if len(id_kinds) > 1:
        raise CorpusError(f"{path}: field {id_column!r} is int in some lines and str in others; use one type",
                          path=path, column=id_column)

    def ids() -> Iterator[tuple[Any, str]]:
        for _, line, _, row_id in _line_records(path, **reading):
            yield row_id, f"{path} line {line}"

    chunks = [(s, e, offsets[i], (), lines[i]) for i, (s, e) in enumerate(_cuts(n, shard_rows))]
    id_kind = id_kinds.pop() if id_kinds else "row"
    yield chunks, ((hashes, ids) if id_column is not None else None), id_kind, [_stat(path)]


def _open_bytes(path: Any) -> Any:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise CorpusError(f"cannot read {path}: {exc.strerror}", path=path) from None


def _decode(raw: bytes, path: Any, lineno: int, pos: int) -> str:
    """A line as text (a UTF-8 byte order mark at the start of the file dropped); bytes that are not UTF-8
    are a :class:`CorpusError` naming the file and line."""
    try:
        return raw.decode("utf-8-sig" if pos == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path} line {lineno}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)",
                          path=path) from None


def _line_records(path: Any, *, kind: str, text_column: str = "text", id_column: str | None = None,
                  column: int = 0, offset: int = 0, first_line: int = 1,
                  tally: Corpus | None = None) -> Iterator[tuple[int, int, Any, Any]]:
    """``(byte offset, line, value, id)`` of each record of a ``.txt``, ``.jsonl`` or ``.tsv``/``.csv`` file
    from ``offset`` (line ``first_line``), blank lines skipped (counted in ``tally`` with the lines read)."""
    tally = tally if tally is not None else Corpus(Path(path))
    if kind == "table":
        yield from _table_records(path, column, offset, first_line, tally)
        return
    with _open_bytes(path) as fh:
        fh.seek(offset)
        for lineno, pos, raw in _jsonl_lines(fh, path, first_line):
            text = _decode(raw, path, lineno, pos)
            tally.lines = lineno
            if kind == "txt":
                text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith(("\n", "\r")) else text
            if not text.strip():
                tally.skipped += 1
                continue
            if kind == "txt":
                yield pos, lineno, text, None
                continue
            record = _json_record(text, path, lineno)
            for col, role in ((text_column, "text"), (id_column, "id")):
                if col is not None and col not in record:
                    keys = ", ".join(map(str, record))[:300] or "none"
                    raise CorpusError(f"{path} line {lineno}: no {role} field {col!r} (fields: {keys}); a record "
                                      f"missing field {col!r} cannot be read (keys: {keys}); name the field with "
                                      f"{_FLAGS[role]}", path=path, column=col)
            yield pos, lineno, record[text_column], (record[id_column] if id_column is not None else None)


class _LineTap:
    """The lines of a file, for ``csv.reader``, keeping those of the record being read (for error messages)
    and the byte offset it starts at."""

    def __init__(self, lines: Iterator[tuple[int, int, bytes]], path: Any):
        self.lines, self.path = lines, path
        self.record: list[str] = []
        self.start = 0
        #: the file is read to its end
        self.eof = False

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        try:
            lineno, pos, raw = next(self.lines)
        except StopIteration:
            self.eof = True
            raise
        if not self.record:
            self.start = pos
        text = _decode(raw, self.path, lineno, pos)
        self.record.append(text)
        return text


def _csv_error(path: Any, exc: csv.Error, start: int, end: int, tap: _LineTap) -> str:
    """Name the line where a malformed record starts; an unclosed quote says what it would have merged."""
    first = tap.record[0].rstrip("\r\n") if tap.record else ""
    shown = first if len(first) <= 80 else first[:77] + "..."
    if tap.eof:  # a strict reader fails at the end of the file only inside an open quote
        rest = f"line {start}" if end == start else f"lines {start}-{end}"
        return (
            f"{path} line {start}: a quoted field opens on this line and is never closed, so the rest of the file "
            f"({rest}) would be read as one field: {shown!r}; close the quote, or write a literal "
            'quote inside a quoted field as ""'
        )
    where = f"line {end}" + (f" (in the record that starts on line {start})" if end > start else "")
    return f"{path} {where}: {exc}: {shown!r}"


def _table_records(path: Any, column: int, offset: int, first_line: int,
                   tally: Corpus) -> Iterator[tuple[int, int, Any, Any]]:
    """``.tsv`` is tab separated; ``.csv`` too if its first line holds a tab (as STS benchmark files do).

    Comma-separated files are parsed strictly: a quote left open fails naming the line it opens on,
    instead of merging the rest of the file into one field. Quoted fields over several lines that
    close are kept, and counted in :meth:`Corpus.summary`.
    """
    with _open_bytes(path) as fh:
        first = fh.readline(MAX_JSONL_LINE + 1).decode("utf-8", "replace")
        tab = Path(path).suffix.lower() == ".tsv" or "\t" in first
        fh.seek(offset)
        tap = _LineTap(_jsonl_lines(fh, path, first_line), path)
        dialect: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tab else {}
        reader = csv.reader(tap, strict=True, **dialect)
        base = first_line - 1
        while True:
            start = base + reader.line_num + 1
            tap.record = []
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise CorpusError(_csv_error(path, exc, start, base + reader.line_num, tap), path=path) from None
            end = base + reader.line_num
            tally.lines = end
            if not row or (len(row) == 1 and not row[0].strip()):
                tally.skipped += end - start + 1
                continue
            where = f"{path} line {start}"
            if end > start:
                tally.multiline.append(start)
                where = f"{path} lines {start}-{end}"
            if column >= len(row):
                raise CorpusError(f"{where}: has {len(row)} column(s), --column {column} is out of range (columns "
                                  "count from 0)", path=path)
            yield tap.start, start, row[column], None


def _json_record(text: str, path: Path, lineno: int | str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path} line {lineno}: not a JSON object (invalid JSON: {str(exc)[:200]})",
                          path=path) from None
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


def _image_files(root: Path, tally: Corpus | None = None) -> list[str]:
    """The image files under ``root`` as relative paths (symlinked folders are not followed), in sorted order
    folder by folder; other files are counted in ``tally.skipped``."""
    rels: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                path = Path(folder) / name
                rels.append(_utf8_name(path.relative_to(root).as_posix(), f"{root}: image file name", root))
            elif tally is not None:
                tally.skipped += 1
    return rels


def _plan_images(root: Path, shard_rows: int, reading: dict[str, Any]):
    """The image files under ``root`` (:func:`_image_files`)."""
    rels = _image_files(root)
    stats = [_stat(root / rel, rel) for rel in rels]
    chunks = [(s, e, 0, tuple(rels[s:e]), 1) for s, e in _cuts(len(rels), shard_rows)]
    yield chunks, None, "str", stats


def _plan_tar(path: Path, shard_rows: int, reading: dict[str, Any]):
    keys = list(tar_keys(path))

    def ids() -> Iterator[tuple[Any, str]]:
        for key in tar_keys(path):
            yield key, str(path)

    chunks = [(s, e, 0, (), 1) for s, e in _cuts(len(keys), shard_rows)]
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
def read_chunk(chunk: Chunk, *, text_column: str = "text", id_column: str | None = None,
               column: int = 0) -> ChunkRows:
    """The rows of ``chunk``: texts, or image references (a :class:`~pathlib.Path` or a tar member) to pass to
    :func:`decode_image` through :class:`ItemReader`. Rows that cannot be embedded are listed in ``errors``."""
    out = ChunkRows()
    for row_id, item, problem, _, _ in _rows(chunk, text_column=text_column, id_column=id_column, column=column):
        if problem is None:
            out.ids.append(row_id)
            out.items.append(item)
        else:
            out.errors.append((row_id, problem))
    return out


def read_corpus(spec: str | os.PathLike, *, text_column: str = "text", column: int = 0) -> Corpus:
    """The whole corpus ``spec`` names, in memory: every input kind :func:`plan_corpus` takes, read by the same
    rows in the same order (a tar shard's images as their bytes, labelled by their keys).

    Raises :class:`~embedhub.CorpusError` naming the file and line (or row, or sample) of the first row that
    cannot be read or embedded, or for an input with no rows.

    >>> read_corpus("docs.jsonl", text_column="body").items[:1]  # doctest: +SKIP
    ['The first document.']
    """
    kind, files = expand_input(spec, absolute=False)
    modality = modality_of(kind, text_column)
    corpus = Corpus(Path(os.fspath(spec)), lines=None if kind == "images" else 0,
                    unit={"parquet": "row", "tar": "sample"}.get(kind, "line"))
    for f in files:
        if kind == "images":
            chunk = Chunk(0, kind, str(f), 0, 0, paths=tuple(_image_files(f, corpus)), modality=modality)
        elif kind == "parquet":
            ((cuts, _, _, _),) = _plan_parquet(f, sys.maxsize, {"text_column": text_column, "id_column": None})
            chunk = Chunk(0, kind, str(f), 0, cuts[0][1] if cuts else 0, modality=modality)
        else:
            chunk = Chunk(0, kind, str(f), 0, sys.maxsize, modality=modality)
        lines = corpus.lines or 0
        tally = Corpus(f, lines=0)
        rows = _rows(chunk, text_column=text_column, column=column, tally=tally)
        with ItemReader(chunk) as reader:
            for n, (row_id, item, problem, detail, origin) in enumerate(rows, start=1):
                if problem is not None:
                    raise CorpusError(detail, path=str(f))
                label = None
                if kind == "tar":  # the member's bytes: the model decodes them
                    item, label = reader(item), row_id
                    if isinstance(item, str):
                        raise CorpusError(f"{detail}: {item}", path=str(f))
                corpus.add(item, origin, label)
                if kind in ("parquet", "tar"):
                    corpus.lines = lines + n
        if kind in LINE_KINDS:
            corpus.lines = lines + (tally.lines or 0)
            corpus.skipped += tally.skipped
            corpus.multiline += tally.multiline
    if not corpus.items:
        raise _no_rows(spec, kind, files)
    return corpus


def _rows(chunk: Chunk, *, text_column: str = "text", id_column: str | None = None, column: int = 0,
          tally: Corpus | None = None) -> Iterator[tuple[Any, Any, str | None, str, str]]:
    """``(id, item, problem, detail, origin)`` of each row of ``chunk``: ``problem`` (``None`` for a row that
    can be embedded) says why the row cannot be embedded, ``detail`` is where the row is (the whole message,
    naming the file and line, when there is a problem), ``origin`` where the item came from, for messages."""
    path = Path(chunk.source)
    if chunk.kind == "images":
        for rel in chunk.paths:
            yield rel, path / rel, None, str(path / rel), str(path / rel)
        return
    if chunk.kind == "tar":
        from embedhub.modules.inputs import MAX_IMAGE_BYTES

        for key, parts in _tar_samples(path, chunk.start, chunk.stop):
            where = f"{path} sample {key}"
            image = next((parts[e] for e in TAR_IMAGE_EXTENSIONS if e in parts), None)
            problem = None
            if image is None:
                problem = f"no image member ({', '.join(sorted(parts)) or 'none'})"
            elif image.size > MAX_IMAGE_BYTES:  # by its header: the member is never read
                problem = f"image member {image.name} is {image.size} bytes, over the {MAX_IMAGE_BYTES}-byte limit " \
                          "(not read)"
            yield key, image, problem, f"{where}: {problem}" if problem else where, f"sample {key} of {path}"
        return
    if chunk.kind == "parquet":
        unit, what = "row", f"column {text_column!r}"
        records: Iterator[tuple[int, Any, Any]] = (
            (chunk.start + i, value, row_id)
            for i, (row_id, value) in enumerate(_parquet_rows(chunk, text_column, id_column)))
    else:
        unit = "line"
        what = f"column {column}" if chunk.kind == "table" else f"field {text_column!r}"
        lines = _line_records(path, kind=chunk.kind, text_column=text_column, id_column=id_column, column=column,
                              offset=chunk.offset, first_line=chunk.line, tally=tally)
        records = ((line, value, row_id) for _, line, value, row_id in islice(lines, chunk.rows))
    image = chunk.modality == "image"
    for i, (n, value, row_id) in enumerate(records):
        row_id = chunk.first_id + i if id_column is None else row_id
        where = f"{path} {unit} {n}"
        problem = value_problem(value)
        item, origin = value, f"{unit} {n} of {path}"
        if problem is None and image:
            item = path.parent / value
            origin = f"{item} ({where})"
            if not item.is_file():
                problem = f"image file {item} not found"
        if problem is None:
            yield row_id, item, None, where, origin
        else:
            yield row_id, item, problem, _problem_message(where, what, problem), origin


def value_problem(value: Any) -> str | None:
    """Why a row's value cannot be embedded (:func:`text_problem`, or ``"text is empty"``), or ``None``.

    >>> value_problem("  "), value_problem(None), value_problem("fine")
    ('text is empty', 'text is null', None)
    """
    problem = text_problem(value)
    if problem is None and not value.strip():
        return "text is empty"
    return problem


def _problem_message(where: str, what: str, problem: str) -> str:
    """``where``: ``what`` (the field or column) and why the row cannot be embedded."""
    if problem.startswith("image file"):
        return f"{where}: {problem}"
    if problem.startswith("text is"):
        return f"{where}: {what} must be a non-empty string ({problem})"
    return f"{where}: {what} is not valid text: {problem}"


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
