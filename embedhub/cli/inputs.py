"""The command line's input files: texts (.txt, .jsonl, .tsv, .csv) and folders of images, read into a
:class:`Corpus`."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub.jobs.corpus import IMAGE_EXTENSIONS, text_problem
from embedhub.jobs.corpus import count as _count

if TYPE_CHECKING:

    pass



TEXT_EXTENSIONS = (".txt", ".jsonl", ".tsv", ".csv")
#: encode's output precisions (as embedhub.store.index.PRECISIONS, without importing numpy for --help)
PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
RESCORE_MULTIPLIER = 4
OUTPUT_EXTENSIONS = (".npy", ".parquet")


class UsageError(Exception):
    """Bad arguments or bad input data: reported on stderr, exit code 2."""


@dataclass
class Corpus:
    """Inputs read from a file or folder, with what to print for each and where each came from."""

    source: Path
    items: list[str | Path] = field(default_factory=list)
    #: the text, or the image path as str (the parquet ``input`` column, search hits)
    labels: list[str] = field(default_factory=list)
    #: where each item came from, for error messages: "line 7 of data.jsonl", "img/b.png"
    origins: list[str] = field(default_factory=list)
    #: physical lines read from a file (``None`` for a folder of images)
    lines: int | None = None
    #: blank lines (or, in a folder, files that are not images) that were skipped
    skipped: int = 0
    #: the first line of each csv record whose quoted field spans several lines
    multiline: list[int] = field(default_factory=list)

    def add(self, item: str | Path, origin: str) -> None:
        self.items.append(item)
        self.labels.append(str(item))
        self.origins.append(origin)

    @property
    def is_text(self) -> bool:
        return all(isinstance(x, str) for x in self.items)

    def summary(self) -> str:
        """What was read from how much: ``read 3 texts from 5 lines of a.csv (1 blank line skipped; ...)``.

        Printed for every input, so a file read as fewer items than its lines (a quote that merges
        lines, say) shows on stderr.
        """
        what = _count(len(self.items), "text" if self.is_text else "image")
        if self.lines is None:
            notes = [f"{_count(self.skipped, 'other file')} skipped"] if self.skipped else []
            head = f"read {what} from folder {self.source}"
        else:
            notes = [f"{_count(self.skipped, 'blank line')} skipped"] if self.skipped else []
            if self.multiline:
                first = ", ".join(map(str, self.multiline[:5])) + (", ..." if len(self.multiline) > 5 else "")
                spans = "spans" if len(self.multiline) == 1 else "span"
                notes.append(
                    f"{_count(len(self.multiline), 'quoted field')} {spans} several lines, starting on line {first}"
                )
            head = f"read {what} from {_count(self.lines, 'line')} of {self.source}"
        return head + (f" ({'; '.join(notes)})" if notes else "")


# ---------------------------------------------------------------------------------------------- readers
def _read_txt(path: Path) -> Corpus:
    corpus = Corpus(path, lines=0)
    with _open_text(path) as fh:
        for lineno, line in enumerate(_lines(fh, path), start=1):
            corpus.lines = lineno
            text = line[:-1] if line.endswith("\n") else line
            if text.strip():
                corpus.add(text, f"line {lineno} of {path}")
            else:
                corpus.skipped += 1
    return corpus


def _read_jsonl(path: Path, field_name: str) -> Corpus:
    corpus = Corpus(path, lines=0)
    as_image = field_name == "image"
    with _open_text(path) as fh:
        for lineno, line in enumerate(_lines(fh, path), start=1):
            corpus.lines = lineno
            if not line.strip():
                corpus.skipped += 1
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{where}: invalid JSON: {exc}") from None
            except RecursionError:
                raise UsageError(f"{where}: JSON nested too deeply to read") from None
            if not isinstance(obj, dict):
                raise UsageError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            if field_name not in obj:
                keys = ", ".join(sorted(map(str, obj))) or "none"
                raise UsageError(f"{where}: missing field {field_name!r} (keys: {keys}); choose one with --field")
            value = obj[field_name]
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{where}: field {field_name!r} must be a non-empty string, got {value!r:.80}")
            problem = text_problem(value)
            if problem:
                raise UsageError(f"{where}: field {field_name!r} is not valid text: {problem}")
            if as_image:
                image = path.parent / value
                if not image.is_file():
                    raise UsageError(f"{where}: image file {image} not found")
                corpus.add(image, f"{image} ({where})")
            else:
                corpus.add(value, f"line {lineno} of {path}")
    return corpus


class _LineTap:
    """The lines of a file, for ``csv.reader``, keeping those of the record being read (for error messages)."""

    def __init__(self, fh: Any):
        self.fh = fh
        self.record: list[str] = []
        #: the file is read to its end
        self.eof = False

    def __iter__(self) -> _LineTap:
        return self

    def __next__(self) -> str:
        try:
            line = next(self.fh)
        except StopIteration:
            self.eof = True
            raise
        self.record.append(line)
        return line


def _csv_error(path: Path, exc: csv.Error, start: int, end: int, tap: _LineTap) -> str:
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


def _read_table(path: Path, column: int) -> Corpus:
    """``.tsv`` is tab separated; ``.csv`` too if its first line holds a tab (as STS benchmark files do).

    Comma-separated files are parsed strictly: a quote left open fails naming the line it opens on,
    instead of merging the rest of the file into one field. Quoted fields over several lines that
    close are kept, and counted in :meth:`Corpus.summary`.
    """
    with _open_text(path, newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        tab = path.suffix.lower() == ".tsv" or "\t" in first
        tap = _LineTap(fh)
        dialect: dict[str, Any] = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tab else {}
        reader = csv.reader(tap, strict=True, **dialect)
        corpus = Corpus(path, lines=0)
        while True:
            start = reader.line_num + 1
            tap.record = []
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise UsageError(_csv_error(path, exc, start, reader.line_num, tap)) from None
            corpus.lines = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                corpus.skipped += reader.line_num - start + 1
                continue
            where = f"{path} line {start}"
            if reader.line_num > start:
                corpus.multiline.append(start)
                where = f"{path} lines {start}-{reader.line_num}"
            if column >= len(row):
                raise UsageError(
                    f"{where}: has {len(row)} column(s), --column {column} is out of range (columns count from 0)"
                )
            value = row[column]
            if not value.strip():
                raise UsageError(f"{where}: column {column} is empty")
            corpus.add(value, f"line {start} of {path}")
    return corpus


def _read_folder(path: Path) -> Corpus:
    corpus = Corpus(path)
    for file in sorted(path.iterdir()):
        if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
            corpus.add(file, str(file))
        else:
            corpus.skipped += 1
    if not corpus.items:
        raise UsageError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return corpus


def _open_text(path: Path, newline: str | None = None):
    try:
        return open(path, encoding="utf-8-sig", newline=newline)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _lines(fh: Any, path: Path):
    """The file's lines; a decoding error names the file instead of raising a traceback."""
    try:
        yield from fh
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_inputs(path: str | os.PathLike, *, field_name: str = "text", column: int = 0) -> Corpus:
    """Read inputs from a ``.txt``/``.jsonl``/``.tsv``/``.csv`` file or a folder of images.

    Raises :class:`UsageError` (exit 2) naming the file and line for unreadable or empty input.
    """
    p = Path(path)
    if p.is_dir():
        corpus = _read_folder(p)
    elif not p.exists():
        raise UsageError(f"input {p} not found")
    else:
        ext = p.suffix.lower()
        try:
            if ext == ".txt":
                corpus = _read_txt(p)
            elif ext == ".jsonl":
                corpus = _read_jsonl(p, field_name)
            elif ext in (".tsv", ".csv"):
                corpus = _read_table(p, column)
            else:
                raise UsageError(
                    f"{p}: unknown input extension {ext or '(none)'!r}; expected one of "
                    f"{', '.join(TEXT_EXTENSIONS)} or a folder of images"
                )
        except UnicodeDecodeError as exc:
            raise UsageError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not corpus.items:
        raise UsageError(f"{p}: no inputs (the file is empty or holds only blank lines)")
    return corpus


# ---------------------------------------------------------------------------------------------- commands
