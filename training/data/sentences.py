"""Streamed training input for the sentence recipes, read row by row, never whole, and shuffled through a
bounded buffer whose order depends only on (seed, epoch).

Formats (by suffix) and modes (decided from the file itself):

- ``.txt``: one sentence a line (unsupervised).
- ``.jsonl``: one object a line. The first object decides: a ``text_column`` field (``"text"``) makes a file
  of sentences (unsupervised); otherwise ``"anchor"`` and ``"positive"`` fields, and optionally
  ``"negative"``, make a file of pairs or triplets (supervised SimCSE).
- ``.csv``: a header row, then rows read by the csv module (quoted fields may hold commas and newlines).
  A ``text_column`` column makes sentences; otherwise columns ``anchor``, ``positive`` (and ``negative``).
- ``.parquet``: the same columns, read in record batches (``pyarrow.parquet.ParquetFile.iter_batches``).

A supervised file's rows are ``(anchor, positive)`` or ``(anchor, positive, negative)`` tuples: every row
has a negative when the first row (the header, the first object, the columns) has one, and none otherwise.

Skipped and counted (in the counting pass that ``len`` runs): lines or rows that are not valid UTF-8
(:attr:`SentenceFile.invalid`) and rows with a null or empty (blank) value (:attr:`SentenceFile.empty`);
blank lines of a ``.txt`` file are skipped uncounted. Over-long sentences: each is cut to ``max_chars``
characters (:attr:`SentenceFile.truncated` counts them; the recipe then truncates to its ``max_length``
tokens), and a ``.txt`` line is read in chunks of bounded size, so one line without end never sits in
memory whole; a ``.jsonl``/``.csv`` line over ``max_record_bytes`` is a :class:`DataError` (a JSON object
or a CSV row cannot be cut), as is a CSV field over the csv module's limit (131,072 characters).

Errors (:class:`DataError`, naming the file, the line or row and the field): a row without a field the
mode needs, a field that is not a string, a row with a negative in a file without (or the reverse), a
line that is not JSON, a column that is not there (naming the column asked for and those present).

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "s.txt"
>>> _ = path.write_text("a cat\\n\\na dog\\nbirds\\n")
>>> data = SentenceFile(path)
>>> len(data), data.mode, sorted(data.stream(seed=0, epoch=0))
(3, 'unsupervised', ['a cat', 'a dog', 'birds'])
>>> pairs = path.with_suffix(".csv")
>>> _ = pairs.write_text('anchor,positive\\n"a cat, asleep",a sleeping cat\\na dog,a puppy\\n')
>>> data = SentenceFile(pairs)
>>> data.mode, data.columns, sorted(data.stream(seed=0, epoch=0))
('supervised', ('anchor', 'positive'), [('a cat, asleep', 'a sleeping cat'), ('a dog', 'a puppy')])
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DataError
from .order import epoch_generator

#: what a file yields: a sentence (unsupervised) or an (anchor, positive[, negative]) tuple (supervised)
Row = str | tuple[str, ...]
SUFFIXES = (".txt", ".jsonl", ".csv", ".parquet")
PAIR_COLUMNS = ("anchor", "positive")
NEGATIVE = "negative"


def _bounded_lines(f: BinaryIO, limit: int) -> Iterator[tuple[int, bytes, bool]]:
    """(line number, the line's first ``limit`` bytes, whether more was dropped): the rest of a longer line
    is read in ``limit``-byte chunks and dropped, so no more than ``limit`` bytes of a line are held."""
    number = 0
    while True:
        raw = f.readline(limit)
        if not raw:
            return
        number += 1
        cut = False
        if len(raw) == limit and not raw.endswith(b"\n"):
            while True:
                rest = f.readline(limit)
                if not rest:
                    break
                cut = cut or bool(rest.rstrip(b"\r\n"))
                if rest.endswith(b"\n"):
                    break
        yield number, raw, cut


def _decode_cut(raw: bytes) -> str:
    """UTF-8 text of a line cut at a byte limit: a character split by the cut is dropped; other invalid
    bytes raise ``UnicodeDecodeError``."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and exc.start >= len(raw) - 3:
            return raw[:exc.start].decode("utf-8")
        raise


def _has_surrogates(text: str) -> bool:
    """Whether ``text`` (decoded with ``surrogateescape``) held bytes that are not UTF-8."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def _columns_for(names: list[str], text_column: str, where: str) -> tuple[str, tuple[str, ...]]:
    """(mode, columns) for a file whose header, first object or schema names ``names``."""
    if text_column in names:
        return "unsupervised", (text_column,)
    if PAIR_COLUMNS[0] in names:
        if PAIR_COLUMNS[1] not in names:
            raise DataError(f"{where}: no column 'positive' for the 'anchor' column (supervised rows need "
                            f"anchor, positive[, negative]); columns present: {names}")
        return "supervised", PAIR_COLUMNS + ((NEGATIVE,) if NEGATIVE in names else ())
    raise DataError(f"{where}: no column {text_column!r} (text_column: sentences) nor 'anchor' and 'positive' "
                    f"(pairs); columns present: {names}")


class _Format:
    """A sentence or pair file's format and mode (from its first line, header or schema) and its row reader."""

    def __init__(self, path: str | Path, *, text_column: str = "text", max_chars: int = 65_536,
                 max_record_bytes: int = 16 * 2**20):
        self.path = Path(path)
        self.text_column, self.max_chars, self.max_record_bytes = text_column, max_chars, max_record_bytes
        if not self.path.is_file():
            raise DataError(f"{self.path}: sentence file not found")
        self.format = self.path.suffix.lower()
        if self.format not in SUFFIXES:
            raise DataError(f"{self.path}: expected a {', '.join(SUFFIXES)} file, got {self.format or 'no suffix'!r}")
        self.jsonl = self.format == ".jsonl"
        self.mode, self.columns = self._detect()
        self.invalid = 0  # lines/rows skipped as invalid UTF-8 in the counting pass
        self.empty = 0  # rows skipped for a null or empty value (not blank .txt lines)
        self.truncated = 0  # sentences cut to max_chars characters

    @property
    def supervised(self) -> bool:
        return self.mode == "supervised"

    # ------------------------------------------------------------------ mode
    def _detect(self) -> tuple[str, tuple[str, ...]]:
        """(mode, columns) from the header, the first object or the parquet schema; ``()`` for ``.txt``."""
        if self.format == ".txt":
            return "unsupervised", ()
        if self.format == ".parquet":
            names = self._parquet().schema_arrow.names
            return _columns_for(names, self.text_column, str(self.path))
        with open(self.path, "rb") as f:
            if self.format == ".csv":
                header = next(self._csv_rows(f), None)
                if header is None:
                    return "unsupervised", (self.text_column,)  # an empty file: no sentences
                return _columns_for(header[2], self.text_column, f"{self.path}, header (line 1)")
            for number, raw, cut in _bounded_lines(f, self.max_record_bytes):
                obj = self._json(number, raw, cut)
                if obj is None:
                    continue
                if isinstance(obj, dict) and self.text_column not in obj and PAIR_COLUMNS[0] in obj:
                    return _columns_for(list(obj), self.text_column, f"{self.path}, line {number}")
                return "unsupervised", (self.text_column,)
        return "unsupervised", (self.text_column,)

    # ------------------------------------------------------------------ reading
    def _read(self, count: bool = False) -> Iterator[Row]:
        reader = {".txt": self._read_txt, ".jsonl": self._read_jsonl, ".csv": self._read_csv,
                  ".parquet": self._read_parquet}[self.format]
        return reader(count)

    def _cut(self, text: str, count: bool) -> str:
        if len(text) <= self.max_chars:
            return text
        if count:
            self.truncated += 1
        return text[:self.max_chars]

    def _skip(self, count: bool, invalid: bool) -> None:
        if count:
            if invalid:
                self.invalid += 1
            else:
                self.empty += 1

    def _read_txt(self, count: bool) -> Iterator[str]:
        with open(self.path, "rb") as f:
            for _, raw, cut in _bounded_lines(f, 4 * self.max_chars + 4):
                try:
                    line = (_decode_cut(raw) if cut else raw.decode("utf-8")).strip()
                except UnicodeDecodeError:
                    self._skip(count, invalid=True)
                    continue
                if not line:
                    continue
                if cut and count:
                    self.truncated += 1
                yield line[:self.max_chars] if cut else self._cut(line, count)

    def _json(self, number: int, raw: bytes, cut: bool) -> Any:
        """The object of one JSONL line; None for a blank line or one that is not UTF-8."""
        if cut:
            raise DataError(f"{self.path}, line {number}: longer than {self.max_record_bytes} bytes (max_record_bytes)")
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
        if not line:
            return None
        try:
            return json.loads(line)
        except ValueError as exc:
            raise DataError(f"{self.path}, line {number}: not valid JSON ({exc})") from None

    def _read_jsonl(self, count: bool) -> Iterator[Row]:
        with open(self.path, "rb") as f:
            for number, raw, cut in _bounded_lines(f, self.max_record_bytes):
                obj = self._json(number, raw, cut)
                if obj is None:
                    if raw.strip():
                        self._skip(count, invalid=True)
                    continue
                if not self.supervised:
                    text = obj.get(self.text_column, 0) if isinstance(obj, dict) else 0
                    if text is not None and not isinstance(text, str):
                        raise DataError(f"{self.path}, line {number}: expected an object with a string "
                                        f"{self.text_column!r} field, got {raw[:80].decode(errors='replace')!r}")
                    text = (text or "").strip()
                    if not text:
                        self._skip(count, invalid=False)
                        continue
                    yield self._cut(text, count)
                    continue
                if not isinstance(obj, dict):
                    raise DataError(f"{self.path}, line {number}: expected an object with string fields "
                                    f"{list(self.columns)}, got {type(obj).__name__}")
                if NEGATIVE in obj and NEGATIVE not in self.columns:
                    raise DataError(f"{self.path}, line {number}: a 'negative' field, but the first row has none: "
                                    "every row holds a hard negative or none does")
                values = []
                for name in self.columns:
                    if name not in obj:
                        extra = (" (the first row has one: every row holds a hard negative or none does)"
                                 if name == NEGATIVE else "")
                        raise DataError(f"{self.path}, line {number}: no {name!r} field{extra}")
                    values.append(obj[name])
                row = self._row(values, f"line {number}", count)
                if row is not None:
                    yield row

    def _row(self, values: list[Any], where: str, count: bool) -> tuple[str, ...] | None:
        """A supervised row's stripped, cut strings; None (skipped and counted) for a null or empty value."""
        out = []
        for name, value in zip(self.columns, values):
            if value is not None and not isinstance(value, str):
                raise DataError(f"{self.path}, {where}: field {name!r} is {type(value).__name__} "
                                f"({str(value)[:40]!r}), expected a string")
            value = (value or "").strip()
            if not value:
                self._skip(count, invalid=False)
                return None
            out.append(value)
        return tuple(self._cut(v, count) for v in out)

    def _csv_rows(self, f: BinaryIO) -> Iterator[tuple[int, int, list[str]]]:
        """(row number, line number, fields) of a CSV file read in bounded lines; row 0 is the header."""

        def lines() -> Iterator[str]:
            for number, raw, cut in _bounded_lines(f, self.max_record_bytes):
                if cut:
                    raise DataError(f"{self.path}, line {number}: longer than {self.max_record_bytes} bytes "
                                    "(max_record_bytes)")
                yield raw.decode("utf-8", errors="surrogateescape")

        reader = csv.reader(lines())
        number = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{self.path}, row {number} (line {reader.line_num}): not valid CSV ({exc}; an "
                                "unclosed quote?)") from None
            if not fields:
                continue  # a blank line
            if number == 0:
                fields = [c.strip().lstrip("\ufeff") for c in fields]
            yield number, reader.line_num, fields
            number += 1

    def _read_csv(self, count: bool) -> Iterator[Row]:
        with open(self.path, "rb") as f:
            rows = self._csv_rows(f)
            header = next(rows, None)
            if header is None:
                return
            names = header[2]
            index = [names.index(c) for c in self.columns]
            for number, line, fields in rows:
                where = f"row {number} (line {line})"
                if len(fields) != len(names):
                    missing = [names[i] for i in range(len(fields), len(names))]
                    raise DataError(f"{self.path}, {where}: {len(fields)} fields, the header names {len(names)} "
                                    f"({names})" + (f"; no value for {missing}" if missing else ""))
                if any(_has_surrogates(fields[i]) for i in index):
                    self._skip(count, invalid=True)
                    continue
                if not self.supervised:
                    text = fields[index[0]].strip()
                    if not text:
                        self._skip(count, invalid=False)
                        continue
                    yield self._cut(text, count)
                    continue
                row = self._row([fields[i] for i in index], where, count)
                if row is not None:
                    yield row

    def _parquet(self) -> Any:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{self.path}: reading .parquet files needs pyarrow (pip install 'embedhub[parquet]')") \
                from None

        try:
            return pq.ParquetFile(self.path)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{self.path}: not a readable parquet file ({exc})") from None

    def _read_parquet(self, count: bool) -> Iterator[Row]:
        import pyarrow as pa

        pf = self._parquet()
        schema = pf.schema_arrow
        for name in self.columns:
            typ = schema.field(name).type
            if pa.types.is_dictionary(typ):
                typ = typ.value_type
            if not any(getattr(pa.types, f"is_{kind}", lambda t: False)(typ) for kind in
                       ("string", "large_string", "string_view", "binary", "large_binary", "binary_view")):
                raise DataError(f"{self.path}: column {name!r} is {typ}, expected strings")
        number = 0
        for batch in pf.iter_batches(batch_size=1024, columns=list(self.columns)):
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for values in zip(*columns):
                number += 1
                try:
                    values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
                except UnicodeDecodeError:
                    self._skip(count, invalid=True)
                    continue
                if not self.supervised:
                    text = (values[0] or "").strip()
                    if not text:
                        self._skip(count, invalid=False)
                        continue
                    yield self._cut(text, count)
                    continue
                row = self._row(values, f"row {number}", count)
                if row is not None:
                    yield row


class SentenceFile(_Format):
    """A sentence or pair file read as a stream; ``len`` counts its rows in one streamed pass.

    ``mode`` is ``"unsupervised"`` (rows are sentences) or ``"supervised"`` (rows are tuples of
    ``columns``: anchor, positive[, negative]). ``max_chars`` and ``max_record_bytes``: see the module."""

    def __init__(self, path: str | Path, shuffle_buffer: int = 100_000, *, text_column: str = "text",
                 max_chars: int = 65_536, max_record_bytes: int = 16 * 2**20):
        super().__init__(path, text_column=text_column, max_chars=max_chars, max_record_bytes=max_record_bytes)
        self.shuffle_buffer = shuffle_buffer
        self._count = sum(1 for _ in self._read(count=True))

    def __len__(self) -> int:
        return self._count

    def stream(self, *, seed: int, epoch: int) -> Iterator[Row]:
        """The rows in a shuffled order (a buffer of ``shuffle_buffer`` rows; a file that fits is fully
        shuffled), the same for the same (seed, epoch)."""
        import torch

        g = epoch_generator(seed, epoch)
        buffer: list[Row] = []
        for line in self._read():
            if len(buffer) < self.shuffle_buffer:
                buffer.append(line)
                continue
            i = int(torch.randint(len(buffer), (1,), generator=g))
            buffer[i], line = line, buffer[i]
            yield line
        for i in torch.randperm(len(buffer), generator=g).tolist():
            yield buffer[i]


def data_mode(path: str | Path, text_column: str = "text") -> str:
    """``"supervised"`` or ``"unsupervised"``: what :class:`SentenceFile` makes of ``path`` (read from its
    first line, header or schema only)."""
    return _Format(path, text_column=text_column).mode


__all__ = ["Row", "SUFFIXES", "SentenceFile", "data_mode"]
