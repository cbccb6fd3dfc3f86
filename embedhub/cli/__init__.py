"""The ``embedhub`` command line: ``encode`` files to embeddings, ``embed`` a large corpus into resumable
shards, ``search`` a corpus, list ``models``, get ``data`` (STS-B), ``push`` a model folder to the Hub.

Examples::

    embedhub encode --model all-MiniLM-L6-v2 --input sentences.txt --output emb.npy
    embedhub embed --model all-MiniLM-L6-v2 --input 'passages/*.parquet' --output emb/ --index faiss
    embedhub search --model all-MiniLM-L6-v2 --corpus sts-test.csv --column 5 --query "A man is playing a guitar."
    embedhub encode --model all-MiniLM-L6-v2 --input corpus.txt --output corpus.parquet   # once
    embedhub search --model all-MiniLM-L6-v2 --corpus corpus.txt --embeddings corpus.parquet --query "..."
    embedhub models
    embedhub data stsb
    embedhub push my-model acme/my-model --private

Exit codes: 0 success, 1 the model or the library failed (message on stderr), 2 bad usage or bad input.
Heavy imports (torch, numpy, pyarrow) happen inside the commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub.jobs.corpus import IMAGE_EXTENSIONS, text_problem
from embedhub.jobs.corpus import count as _count

if TYPE_CHECKING:
    import numpy as np

    from embedhub.model import EmbeddingModel
    from embedhub.store.embeddings import StoredEmbeddings

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
def _load_model(args: argparse.Namespace) -> EmbeddingModel:
    """``embedhub.load`` with the command's ``--model``, ``--revision``, ``--device``, ``--backend``, ``--threads``."""
    from embedhub.errors import EmbedhubError
    from embedhub.loader import load

    start = time.perf_counter()
    try:
        model = load(args.model, revision=args.revision, device=args.device, backend=args.backend, threads=args.threads)
    except EmbedhubError as exc:
        if args.backend != "onnx" and "backend='onnx'" in str(exc):  # the library's hint, in command-line terms
            raise type(exc)(f"{exc} (on the command line: --backend onnx)") from exc
        raise
    if args.threads and model.backend == "torch":
        import torch

        torch.set_num_threads(args.threads)
    threads = f", {_count(args.threads, 'thread')}" if args.threads else ""
    print(
        f"embedhub: loaded {args.model} ({model.format}, {'+'.join(model.modalities)}, {model.embed_dim} dims, "
        f"{model.backend} backend{threads}) in {time.perf_counter() - start:.2f} s",
        file=sys.stderr,
    )
    return model


def _options(args: argparse.Namespace, *, role: str | None = None) -> dict[str, Any]:
    """``encode``'s keywords from the command's ``--no-normalize``, ``--prompt-name``, ``--prompt``,
    ``--truncate-dim`` and ``--precision`` (``role="document"``: the ``--document-prompt*`` pair of search)."""
    prefix = "document_" if role == "document" else ""
    return {"normalize": False if getattr(args, "no_normalize", False) else None,
            "prompt_name": getattr(args, f"{prefix}prompt_name", None),
            "prompt": getattr(args, f"{prefix}prompt", None),
            "truncate_dim": args.truncate_dim, "precision": getattr(args, "precision", "float32")}


def _encode(model: EmbeddingModel, corpus: Corpus, *, batch_size: int, options: dict[str, Any] | None = None,
            role: str | None = None) -> np.ndarray:
    """Encode with a progress bar (``role="document"``: ``encode_document``); an item error is raised again
    naming where item i came from."""
    from embedhub.errors import ItemError
    from embedhub.jobs.local import encode_options

    encode = model.encode_document if role == "document" else model.encode
    try:
        return encode(corpus.items, batch_size=batch_size, show_progress_bar=True, **encode_options(options or {}))
    except ItemError as exc:
        i = exc.index
        if i is None or not 0 <= i < len(corpus.origins):
            raise
        where = "" if corpus.origins[i] in exc.detail else f" ({corpus.origins[i]})"
        raise type(exc)(f"item {i}{where}: {exc.detail}", index=i) from exc


def cmd_encode(args: argparse.Namespace) -> int:
    """``embedhub encode``: inputs -> ``.npy`` or ``.parquet``."""
    out = Path(args.output)
    ext = out.suffix.lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise UsageError(f"{out}: unknown output extension {ext or '(none)'!r}; expected .npy or .parquet")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; --output must be a file path")
    from embedhub.store.embeddings import utf8_path_problem

    if utf8_path_problem(out, "--output"):
        raise UsageError(utf8_path_problem(out, "--output"))
    if ext == ".parquet":
        from embedhub.errors import require

        require("pyarrow", "parquet", "writing .parquet output")
    corpus = read_inputs(args.input, field_name=args.field, column=args.column)
    print(f"embedhub: {corpus.summary()}", file=sys.stderr)
    model = _load_model(args)
    from embedhub.store.embeddings import sidecar_path, write_embeddings

    start = time.perf_counter()
    from embedhub.store.embeddings import encode_fingerprint

    options = _options(args)
    fingerprint = encode_fingerprint(model, **options)  # the options are checked before any work
    emb = _encode(model, corpus, batch_size=args.batch_size, options=options)
    seconds = time.perf_counter() - start
    if ext == ".npy":
        write_embeddings(out, emb, fingerprint)
        where = f"{out} (fingerprint {fingerprint.id} in {sidecar_path(out).name})"
    else:
        write_embeddings(out, emb, fingerprint, inputs=corpus.labels)
        where = f"{out} (fingerprint {fingerprint.id})"
    kind = "texts" if corpus.is_text else "items"
    print(
        f"embedhub: encoded {emb.shape[0]} {kind} into {emb.shape[1]} dims in {seconds:.2f} s "
        f"({emb.shape[0] / max(seconds, 1e-9):.1f}/s) -> {where}",
        file=sys.stderr,
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """``embedhub embed``: a corpus -> parquet shards + manifest (+ faiss index), resumable."""
    from embedhub.errors import CorpusError, JobError
    from embedhub.jobs.local import embed_corpus

    try:
        result = embed_corpus(
            args.model, args.input, args.output, engine=args.engine, address=args.address, backend=args.backend,
            device=args.device, revision=args.revision, threads=args.threads, batch_size=args.batch_size,
            max_tokens=args.max_tokens, shard_rows=args.shard_rows, text_column=args.text_column,
            id_column=args.id_column, index=args.index, on_error=args.on_error, **_options(args),
            restart=args.restart, workers=args.workers, actors=args.actors,
        )
    except (CorpusError, JobError) as exc:
        raise UsageError(str(exc)) from None
    resumed = f", {result.resumed} of them done by an earlier run" if result.resumed else ""
    extra = f"; {result.errors} rows skipped (see {result.errors_file})" if result.errors else ""
    index = f"; index {result.index}" if result.index else ""
    print(f"embedhub: {result.rows} rows in {result.shards} shards{resumed} -> {result.output} "
          f"(fingerprint {result.fingerprint.id}) in {result.seconds:.1f} s{extra}{index}", file=sys.stderr)
    return 0


def _read_stored(args: argparse.Namespace, corpus: Corpus) -> StoredEmbeddings:
    """``search --embeddings``: the file's vectors, checked against the corpus before the model loads.

    A file must carry provenance (parquet metadata, or the ``.fingerprint.json`` beside a ``.npy``):
    vectors that cannot be traced to a model are refused, since the point of the check is that an
    index is never searched with another model's queries.
    """
    from embedhub.errors import EmbeddingsFileError, JobError, ProvenanceError
    from embedhub.store.embeddings import sidecar_path
    from embedhub.store.read import read_embeddings

    path = Path(args.embeddings)
    try:
        stored = read_embeddings(path)
    except (EmbeddingsFileError, ProvenanceError, JobError) as exc:
        raise UsageError(f"--embeddings: {exc}") from None
    rows = len(stored)
    if rows != len(corpus.items):
        raise UsageError(
            f"--embeddings {path} has {rows} rows but the corpus {args.corpus} has "
            f"{len(corpus.items)} items; re-run `embedhub encode` with the same corpus options"
        )
    if stored.inputs is not None and stored.inputs != corpus.labels:
        i = next(i for i, (a, b) in enumerate(zip(stored.inputs, corpus.labels)) if a != b)
        raise UsageError(
            f"--embeddings {path} row {i} embeds {stored.inputs[i]!r:.80} but item {i} of the corpus "
            f"({corpus.origins[i]}) is {corpus.labels[i]!r:.80}; re-run `embedhub encode` with the same corpus options"
        )
    if stored.inputs is None:  # a .npy records no inputs: say how little of the corpus could be checked
        print(f"embedhub: note: --embeddings {path} records no inputs, so only its row count is checked against "
              f"{args.corpus}; `embedhub encode --output FILE.parquet` records each row's text, checked here",
              file=sys.stderr)
    if stored.fingerprint is None:
        beside = f"no {sidecar_path(path).name} beside it" if path.suffix.lower() == ".npy" else "no embedhub metadata"
        raise UsageError(
            f"--embeddings {path} has no provenance ({beside}), so embedhub cannot check that {args.model} made "
            f"it; re-run `embedhub encode --model {args.model} --output {path}` (or, knowing the model that made "
            "the vectors, write them with embedhub.write_embeddings(path, vectors, model.fingerprint))"
        )
    return stored


def _check_stored(args: argparse.Namespace, stored: StoredEmbeddings, model: EmbeddingModel) -> None:
    """The stored vectors' fingerprint against what ``--model`` with the command's document options makes
    (truncation and precision included; normalisation is the file's, and the queries follow it)."""
    from embedhub.errors import FingerprintMismatchError
    from embedhub.store.embeddings import encode_fingerprint

    options = dict(_options(args, role="document"), normalize=stored.fingerprint.normalized)
    expected = encode_fingerprint(model, **options)
    try:
        expected.check(stored.fingerprint, what=f"--embeddings {args.embeddings}", expected=f"--model {args.model}",
                       found="file")
    except FingerprintMismatchError as exc:
        raise UsageError(
            f"{exc}. Re-run `embedhub encode` with this model and its options (--truncate-dim, --precision) to "
            "search with it, or pass the options the file was made with"
        ) from None
    if options["prompt_name"] is None and options["prompt"] is None:  # search's corpus prompt: encode_document's
        from embedhub.model import DOCUMENT_PROMPT_NAMES

        options["prompt_name"] = next((n for n in DOCUMENT_PROMPT_NAMES if n in model.prompts), None)
    want = encode_fingerprint(model, **options).role
    if _prompt_key(model, stored.fingerprint.role) != _prompt_key(model, want):
        cmd = f"embedhub encode --model {args.model}" + (
            "" if not want else f" --prompt-name {want}" if not want.startswith("prompt:") else " --prompt TEXT")
        raise UsageError(
            f"--embeddings {args.embeddings} was encoded with prompt {stored.fingerprint.role or '(none)'} but search "
            f"puts prompt {want or '(none)'} before every corpus text; re-run `{cmd} ...` (as search encodes its "
            "corpus), or pass the --document-prompt-name / --document-prompt the file was made with"
        )


#: corpus rows ``search --embeddings`` embeds again and compares with the stored ones
SPOT_CHECK_ROWS = 8


def _spot_check(args: argparse.Namespace, stored: StoredEmbeddings, model: EmbeddingModel, corpus: Corpus,
                options: dict[str, Any]) -> None:
    """Embed a few corpus rows again (the first, the last and evenly spaced ones between) and compare them with the
    stored rows: a file of another corpus with the same row count (a ``.npy`` records no texts) or with rows out of
    place is refused naming the first row that differs, where it would otherwise give wrong hits."""
    import numpy as np

    from embedhub.jobs.local import encode_options

    n = len(corpus.items)
    rows = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(SPOT_CHECK_ROWS, n))})
    got = model.encode_document([corpus.items[i] for i in rows], batch_size=args.batch_size,
                                show_progress_bar=False, **encode_options(options))
    want = np.asarray(stored.embeddings[rows])
    for k, i in enumerate(rows):
        a, b = np.asarray(got[k]), want[k]
        if a.dtype == np.uint8 or a.dtype == np.int8:  # packed bits (binary / ubinary): the share of equal bits
            same = float((np.unpackbits(a.view(np.uint8)) == np.unpackbits(b.view(np.uint8))).mean())
            ok = same >= 0.98
        else:
            a, b = a.astype(np.float64), b.astype(np.float64)
            same = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
            ok = same >= 0.999
        if not ok:
            raise UsageError(
                f"--embeddings {args.embeddings} row {i} is not the embedding of item {i} of the corpus "
                f"({corpus.origins[i]}: {corpus.labels[i]!r:.80}) that --model {args.model} makes (agreement "
                f"{same:.4f}): the file was made from another corpus or its rows moved; re-run `embedhub encode` "
                "with this corpus")


def _prompt_key(model: EmbeddingModel, role: str | None) -> str:
    """What a fingerprint's prompt role puts before each text, comparable across roles: ``""`` (no prompt
    or an empty one), else ``prompt:<16 hex>`` of the text (a prompt name resolved through the model's prompts)."""
    import hashlib

    empty = "prompt:" + hashlib.sha256(b"").hexdigest()[:16]  # a literal empty prompt: none
    if role is None or role.startswith("prompt:"):
        return "" if role in (None, empty) else role
    text = (getattr(model, "prompts", None) or {}).get(role)
    if text is None:
        return f"name:{role}"  # a name this model does not have: never equal to one it does
    return "prompt:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16] if text else ""


def _score_name(similarity: str, precision: str, rescore: int | None) -> str:
    """What the printed scores are."""
    if precision in ("binary", "ubinary"):
        return ("dot product of the float query with the binary document bits (rescored top "
                f"{rescore}x candidates by Hamming distance)" if rescore else "minus the Hamming distance")
    return {"cosine": "cosine similarity", "dot": "dot product", "euclidean": "minus the euclidean distance",
            "manhattan": "minus the manhattan distance"}[similarity]


def cmd_search(args: argparse.Namespace) -> int:
    """``embedhub search``: print the ``--top-k`` corpus texts most similar to each ``--query``.

    Queries are encoded with ``encode_query`` (the model's query prompt, or ``--prompt-name`` / ``--prompt``),
    the corpus with ``encode_document``; the ranking is the model's similarity (``model.similarity_fn_name``),
    or, with ``--precision binary``/``ubinary``, the Hamming distance of a binary index with optional float
    rescoring of the ``--rescore-multiplier`` x ``--top-k`` nearest.
    """
    from embedhub.jobs.local import encode_options, similarity_of
    from embedhub.store.index import SearchIndex

    corpus = read_inputs(args.corpus, field_name=args.field, column=args.column)
    if not corpus.is_text:
        raise UsageError(f"{args.corpus}: search needs a text corpus (.txt, .jsonl, .tsv, .csv), not images")
    for i, query in enumerate(args.query, start=1):
        which = f"--query {i} of {len(args.query)}" if len(args.query) > 1 else "--query"
        if not query.strip():
            raise UsageError(f"{which} must not be empty")
        problem = text_problem(query)
        if problem:
            raise UsageError(f"{which} ({query!r:.80}) is not valid text: {problem}")
    print(f"embedhub: {corpus.summary()}", file=sys.stderr)
    stored = _read_stored(args, corpus) if args.embeddings else None
    model = _load_model(args)
    if stored is not None:
        _check_stored(args, stored, model)
    docs_options = _options(args, role="document")
    if stored is not None:
        docs_options["normalize"] = stored.fingerprint.normalized
        _spot_check(args, stored, model, corpus, docs_options)
    # queries: float vectors of the same width and normalisation (binary indexes quantise them, and rescore)
    query_options = dict(_options(args), normalize=docs_options["normalize"], precision="float32")
    start = time.perf_counter()
    docs = stored.embeddings if stored is not None else _encode(model, corpus, batch_size=args.batch_size,
                                                                options=docs_options, role="document")
    queries = model.encode_query(list(args.query), batch_size=args.batch_size, show_progress_bar=False,
                                 **encode_options(query_options))
    similarity, precision = similarity_of(model), args.precision
    if precision not in ("binary", "ubinary"):
        if args.rescore_multiplier is not None:
            raise UsageError(f"--rescore-multiplier rescores the candidates of a binary index; --precision is "
                             f"{precision}, whose index ranks exactly (use --precision binary or ubinary)")
        rescore = None
    else:
        rescore = RESCORE_MULTIPLIER if args.rescore_multiplier is None else args.rescore_multiplier
    index = SearchIndex(queries.shape[1], similarity=similarity, precision=precision)
    index.add(docs)
    scores, rows = index.search(queries, args.top_k, rescore_multiplier=rescore)
    print(f"embedhub: {index.kind} index; scores: {_score_name(similarity, precision, rescore)}", file=sys.stderr)
    for qi, query in enumerate(args.query):
        if qi:
            print()
        print(f"query: {query}")
        for score, j in zip(scores[qi], rows[qi]):
            print(f"  {score:.4f}  {corpus.labels[j]}")
    print(
        f"embedhub: searched {_count(len(corpus.items), 'text')} for {len(args.query)} "
        f"{'query' if len(args.query) == 1 else 'queries'} in {time.perf_counter() - start:.2f} s"
        + (f" (corpus vectors from {args.embeddings})" if stored is not None else ""),
        file=sys.stderr,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``embedhub models``: the registered aliases, one a line: alias, Hub repo id, pinned revision
    (``-`` when the alias follows the repo's default branch) and description, in aligned columns."""
    from embedhub.hub.aliases import get_entry, list_models

    rows = [("ALIAS", "REPO ID", "REVISION", "DESCRIPTION")]
    for item in list_models():
        alias = getattr(item, "alias", item)
        entry = get_entry(alias) if isinstance(item, str) else item
        rows.append((alias, entry.repo_id, entry.revision or "-", entry.description))
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """``embedhub data stsb``: where STS-B is found, downloading it into the Hugging Face cache when it is on none of
    the places looked in; prints the folder and the rows of each split. ``--print`` only says where it is (exit 1
    when nowhere)."""
    from embedhub.data import ENV_VAR, SPLITS, download_stsb, read_stsb, stsb_dir
    from embedhub.errors import DataNotFoundError

    try:
        folder = stsb_dir()
    except DataNotFoundError as exc:
        if args.print_only or os.environ.get(ENV_VAR, "").strip():
            print(f"embedhub data: {exc}", file=sys.stderr)
            return 1
        folder = download_stsb()
    if args.print_only:
        print(folder)
        return 0
    counts = {split: len(read_stsb(split)) for split in SPLITS}  # the found copy: whole splits only
    print(folder)
    print("STS-B rows: " + ", ".join(f"{split} {n}" for split, n in counts.items()))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``embedhub push DIR REPO_ID``: upload a saved model folder (its format's files and model card)."""
    from embedhub.errors import PublishError
    from embedhub.hub.publish import push_folder

    start = time.perf_counter()
    try:
        url = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
            create_pr=args.create_pr,
        )
    except PublishError as exc:
        raise UsageError(str(exc)) from None
    where = args.repo_id + (f"@{args.revision}" if args.revision else "")
    print(url)
    print(f"embedhub: pushed {args.folder} to {where} in {time.perf_counter() - start:.2f} s", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- parser
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _column(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more (columns count from 0)")
    return value


_INPUT_HELP = (
    "inputs: a .txt file (one text per line; empty lines are skipped), a .jsonl file (one JSON object per line; "
    "the --field value is embedded, and --field image means the values are image paths relative to the "
    "file's folder), a .tsv/.csv file (no header; --column N, 0-based; a .csv whose first line holds a tab "
    "is read as tab separated) or a folder of images (jpg, jpeg, png, bmp, gif, webp, tif, tiff; sorted by name)"
)


_CORPUS_HELP = (
    "corpus: a .txt file (one text per line; empty lines are skipped), a .jsonl file (the --field value of each "
    "JSON object) or a .tsv/.csv file (no header; --column N, 0-based; a .csv whose first line holds a tab is "
    "read as tab separated)"
)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="alias (see `embedhub models`), Hub repo id or local folder")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps, ... (default: auto)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="inputs per batch (default: 32)")
    p.add_argument(
        "--backend",
        choices=("torch", "onnx", "auto"),
        default=None,
        help="torch, onnx (the graphs of a folder written by `embedhub export`) or auto (onnx when the folder "
        "has graphs, else torch) (default: torch, or onnx for an export written without its torch copy)",
    )
    p.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="CPU threads: ONNX Runtime intra-op threads, or torch's for the torch backend (default: all cores)",
    )


def _add_encode_args(p: argparse.ArgumentParser, *, precisions: tuple[str, ...] = PRECISIONS,
                     role: str | None = None) -> None:
    """``--prompt-name``, ``--prompt``, ``--truncate-dim`` and ``--precision``: ``encode``'s options."""
    whose = f"the {role}" if role else "every input"
    default = " (default: its 'query' prompt, if any)" if role == "query" else " (default: the model's default prompt)"
    p.add_argument("--prompt-name", default=None, help=f"prompt of the model's config for {whose}{default}")
    p.add_argument("--prompt", default=None, help=f"prompt text put before {whose} (instead of --prompt-name)")
    p.add_argument("--truncate-dim", type=_positive_int, default=None,
                   help="keep the first N dimensions (Matryoshka models; default: the model's truncate_dim, else all)")
    p.add_argument("--precision", choices=precisions, default="float32",
                   help="output precision, as sentence-transformers' quantize_embeddings" + (
                       "; binary and ubinary search a binary index (Hamming distance)" if role else "")
                   + " (default: float32)")


def _add_reader_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--field", default="text", help="JSON field to embed in .jsonl input (default: text)")
    p.add_argument("--column", type=_column, default=0, help="0-based column of .tsv/.csv input (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``embedhub`` argument parser."""
    from embedhub._version import __version__

    parser = argparse.ArgumentParser(
        prog="embedhub",
        description="Embed text and images with embedhub models.",
        epilog="Exit codes: 0 ok, 1 model/library error, 2 bad arguments or bad input.",
    )
    parser.add_argument("--version", action="version", version=f"embedhub {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    enc = sub.add_parser(
        "encode",
        help="embed a file or folder of inputs into .npy or .parquet",
        description="Embed inputs and write them as .npy (float32 N x D) or .parquet (id, input, embedding).",
        epilog=_INPUT_HELP,
    )
    _add_model_args(enc)
    enc.add_argument("--input", required=True, help="input file or folder (see below)")
    enc.add_argument("--output", required=True, help="output .npy or .parquet file (written atomically)")
    _add_reader_args(enc)
    enc.add_argument("--no-normalize", action="store_true",
                     help="keep raw embeddings (default: what the model defines: L2-normalised for cosine models)")
    _add_encode_args(enc)
    enc.set_defaults(func=cmd_encode)

    emb = sub.add_parser(
        "embed",
        help="embed a large corpus into resumable parquet shards (locally or on Ray)",
        description="Embed a corpus into OUTPUT/shards/part-NNNNN.parquet (id, embedding; fingerprint in the "
        "metadata) with a manifest of finished shards: run the same command again after an interruption and it "
        "goes on where it stopped, never writing a row twice. Rows that cannot be embedded are skipped and listed "
        "in OUTPUT/errors.jsonl.",
        epilog="INPUT: a .parquet or .jsonl file with a text column (--text-column; ids from --id-column, else "
        "row numbers), a folder tree of images (ids: relative paths), webdataset .tar shards (ids: sample keys), "
        "or a quoted glob of such files.",
    )
    _add_model_args(emb)
    emb.add_argument("--input", required=True, help="corpus file, folder or glob (see below)")
    emb.add_argument("--output", required=True, help="output folder (new, empty, or of an earlier run to resume)")
    emb.add_argument("--engine", choices=("local", "ray"), default="local",
                     help="local (this process) or ray (Ray Data; pip install 'embedhub[ray]') (default: local)")
    emb.add_argument("--address", default=None,
                     help="Ray cluster address, or 'auto' for the cluster `ray start` runs on this machine "
                     "(default: RAY_ADDRESS, else a new Ray instance on this machine)")
    emb.add_argument("--actors", type=_positive_int, default=None,
                     help="Ray model replicas (default: one per GPU, else 1)")
    emb.add_argument("--workers", type=_positive_int, default=None,
                     help="local engine: image decoding processes (default: cores - 1, at most 8)")
    emb.add_argument("--max-tokens", type=_positive_int, default=None,
                     help="at most this many padded tokens per text batch (default: no limit)")
    emb.add_argument("--shard-rows", type=_positive_int, default=None,
                     help="rows per output shard (default: 10000 texts, 1000 images)")
    emb.add_argument("--text-column", default="text", help="text column or JSON field (default: text)")
    emb.add_argument("--id-column", default=None, help="id column or JSON field (default: row numbers)")
    emb.add_argument("--index", choices=("faiss",), default=None, help="also build a faiss index (index.faiss)")
    emb.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                     help="a row that cannot be embedded: skip it and list it in errors.jsonl, or stop (default: skip)")
    emb.add_argument("--restart", action="store_true",
                     help="delete the output folder's earlier shards (another model or input) and start over")
    emb.add_argument("--no-normalize", action="store_true",
                     help="keep raw embeddings (default: what the model defines: L2-normalised for cosine models)")
    _add_encode_args(emb, precisions=("float32", "binary", "ubinary"))  # int8 ranges would differ per window
    emb.set_defaults(func=cmd_embed)

    sea = sub.add_parser(
        "search",
        help="find the corpus texts most similar to queries",
        description="Embed a text corpus (or load its --embeddings) and print the --top-k most "
        "similar texts for each --query with their scores: the model's similarity (cosine, dot, euclidean or "
        "manhattan, from its config), or the Hamming distance of a binary index for --precision binary/ubinary "
        "(optionally rescored with the float query). Queries get the model's query prompt, the corpus its "
        "document prompt.",
        epilog=_CORPUS_HELP,
    )
    _add_model_args(sea)
    sea.add_argument("--corpus", required=True, help="text corpus: .txt, .jsonl, .tsv or .csv")
    _add_reader_args(sea)
    sea.add_argument("--query", action="append", required=True, help="query text; repeat for several")
    sea.add_argument("--top-k", type=_positive_int, default=5, help="hits per query (default: 5)")
    sea.add_argument(
        "--embeddings",
        default=None,
        help="precomputed corpus embeddings, so the corpus is not embedded again on every search: a .parquet "
        "(each row's text is checked against --corpus) or .npy file (its row count only) written by "
        "`embedhub encode --model M --input CORPUS --output FILE` with the same corpus options (and the prompt "
        "search puts before the corpus: --prompt-name document for a model with a document prompt); refused unless "
        "its fingerprint (parquet metadata, or the .fingerprint.json beside a .npy) is --model's, normalisation aside",
    )
    _add_encode_args(sea, precisions=("float32", "binary", "ubinary"), role="query")
    sea.add_argument("--document-prompt-name", default=None,
                     help="prompt of the model's config for the corpus (default: its 'document' prompt, if any)")
    sea.add_argument("--document-prompt", default=None, help="prompt text put before every corpus text")
    sea.add_argument("--rescore-multiplier", type=_positive_int, default=None,
                     help="binary precisions: rescore this many times --top-k candidates by Hamming distance with "
                     f"the float query (default: {RESCORE_MULTIPLIER}; 1 keeps the Hamming ranking)")
    sea.set_defaults(func=cmd_search)

    mod = sub.add_parser(
        "models",
        help="list the registered model aliases",
        description="List the registered aliases with the Hub repo and pinned revision each loads "
        "('-': the repo's default branch).",
    )
    mod.set_defaults(func=cmd_models)

    dat = sub.add_parser(
        "data",
        help="find or download the data the tests and recipes use (STS-B)",
        description="Find STS-B ($EMBEDHUB_STSB_DIR, shared/data/stsbenchmark beside the checkout, or the Hugging "
        "Face cache) or, when it is on none of them, download the dataset sentence-transformers/stsb from the Hub "
        "into the Hugging Face cache (once); check its three splits and print the folder and their row counts.",
        epilog="Exit codes: 0 found (or downloaded), 1 not found and not downloadable (offline), or a malformed file.",
    )
    dat.add_argument("dataset", choices=("stsb",), help="the dataset: stsb (the STS Benchmark)")
    dat.add_argument("--print", dest="print_only", action="store_true",
                     help="only print the folder it is found in (exit 1 when it is nowhere); never download")
    dat.set_defaults(func=cmd_data)

    push = sub.add_parser(
        "push",
        help="upload a saved model folder to the Hugging Face Hub",
        description="Upload the files a model folder's format needs (plus its README.md model card and the "
        "images it links) to a Hub repo in one commit, creating the repo when missing. The repo id, revision, "
        "folder and token are checked before anything is sent. Prints the commit URL.",
        epilog="Exit codes: 0 pushed, 2 bad arguments, not a model folder, no token or the Hub refused the push.",
    )
    push.add_argument("folder", metavar="DIR", help="model folder (e.g. written by save_pretrained or a recipe)")
    push.add_argument("repo_id", metavar="REPO_ID", help="Hub repo id, 'namespace/name'")
    push.add_argument("--private", action="store_true", help="create the repo as private (when it does not exist)")
    push.add_argument("--revision", default=None, help="branch to push to (created when missing; default: main)")
    push.add_argument("--commit-message", default=None, help="commit message (default: 'Upload embedhub model')")
    push.add_argument(
        "--token",
        default=None,
        help="Hub token with write access (default: HF_TOKEN or the saved login; a token on the command line "
        "is visible to other users of this machine)",
    )
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    push.set_defaults(func=cmd_push)
    _add_plugins(sub)
    return parser


def _add_plugins(sub: argparse._SubParsersAction) -> None:
    """Commands of packages built on the library (``embedhub export``, ``embedhub train``).

    They register through the ``embedhub.commands`` entry-point group, each a ``register(subparsers)``
    function, so the library never imports them by name.
    """
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group="embedhub.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a plugin whose own dependencies are missing
            broken = sub.add_parser(ep.name, help=f"(unavailable: {exc})")
            broken.set_defaults(func=_unavailable(ep.name, exc))
            continue
        register(sub)


def _unavailable(name: str, exc: Exception):
    def run(args: argparse.Namespace) -> int:
        raise UsageError(f"the {name} command cannot load: {exc}")

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the ``embedhub`` command line; returns the exit code (0 ok, 1 library error, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prog = f"embedhub {args.command}"
    from embedhub.errors import EmbedhubError

    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (EmbedhubError, ValueError, TypeError, OSError, RuntimeError) as exc:
        if os.environ.get("EMBEDHUB_TRACEBACK"):
            raise
        print(f"{prog}: error: {exc} [{type(exc).__name__}; set EMBEDHUB_TRACEBACK=1 for details]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
