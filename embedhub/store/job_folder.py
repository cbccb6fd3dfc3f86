"""The folder an embedding job writes (``embedhub embed``): its manifest, parquet shards, error log, index and
the ledger of the files it owns; read back as one :class:`~embedhub.store.embeddings.StoredEmbeddings` by
:func:`read_job` (what :func:`embedhub.read_embeddings` does with such a folder)."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedhub._io.atomic import atomic_write
from embedhub.errors import JobError
from embedhub.store.fingerprint import Fingerprint

if TYPE_CHECKING:
    from embedhub.formats.contract import ModelLike
    from embedhub.store.embeddings import StoredEmbeddings
    from embedhub.store.index import VectorIndex

MANIFEST = "manifest.json"
SHARDS = "shards"
ERRORS = "errors.jsonl"
INDEX = "index.faiss"
INDEX_IDS = "index_ids.parquet"
LOCK = ".lock"
#: the job's own folder for its temporary files: every file is written there, then renamed into place, so a
#: killed write leaves its temporary there and nothing the job deletes is ever outside it or the ledger
STAGING = ".embedhub-tmp"
#: the ledger of the files a job wrote into its folder
LEDGER = ".embedhub-job"
MANIFEST_VERSION = 1
#: the parquet schema metadata key of a shard's source rows
SHARD_KEY = "embedhub.shard"
#: default rows per shard: text shards are small on disk; decoded images are large in memory

# ---------------------------------------------------------------------------------------------- output folder
#: every name a job writes into its folder (relative paths); the ledger may record only these
_OWNED = re.compile(r"(manifest\.json|errors\.jsonl|index\.faiss|index_ids\.parquet|\.lock|shards|\.embedhub-tmp"
                    r"|shards/part-\d{5,}\.parquet)")
_LEDGER_HEADER = "embedhub embed folder 1"
#: bounds on the bookkeeping files read back from a folder (they are untrusted like any input)
MAX_LEDGER_BYTES = 16 << 20
MAX_MANIFEST_BYTES = 64 << 20


def put(out: Path, rel: str, write: Callable[[str], None] | bytes | str) -> Path:
    """Write ``out/rel`` atomically through the job's :data:`STAGING` folder (its temporaries are made there,
    never beside the file, so no name in the folder is ever taken for one)."""
    staged = atomic_write(out / STAGING / rel.replace("/", "-"), write)
    os.replace(staged, out / rel)
    return out / rel


def clear_staging(out: Path) -> None:
    """Delete what a killed write left in the job's :data:`STAGING` folder (links themselves, never their targets)."""
    if entry_kind(out / STAGING) == "folder":
        for p in (out / STAGING).iterdir():
            if entry_kind(p) in ("file", "link"):
                p.unlink()


def entry_kind(path: Path) -> str | None:
    """``"file"``, ``"folder"``, ``"link"`` or ``"other"`` from ``lstat`` (links are never followed); None if absent."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    return ("file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode)
            else "other")


def _read_bounded(path: Path, limit: int, what: str) -> str:
    """A regular file's text, at most ``limit`` bytes (a link, a FIFO or a larger file is a :class:`JobError`)."""
    kind = entry_kind(path)
    if kind != "file":
        raise JobError(f"{path}: expected a regular {what} file, found {'nothing' if kind is None else 'a ' + kind}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise JobError(f"{path}: the {what} is over {limit} bytes; it was not written by embedhub")
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"{path}: cannot read the {what} ({type(exc).__name__}: {exc})") from None


class Ledger:
    """``OUTPUT/.embedhub-job``: every file and folder the job has created there, recorded before it is
    created. Only recorded names are ever deleted (``restart``), and a folder without a ledger is not a job's."""

    def __init__(self, out: Path):
        self.path = out / LEDGER
        self.names: set[str] = set()

    def load(self) -> None:
        lines = _read_bounded(self.path, MAX_LEDGER_BYTES, "job ledger").splitlines()
        if not lines or lines[0] != _LEDGER_HEADER:
            raise JobError(f"{self.path}: not an embedhub job ledger (first line {_LEDGER_HEADER!r})")
        for lineno, name in enumerate(lines[1:], start=2):
            if not _OWNED.fullmatch(name):
                raise JobError(f"{self.path} line {lineno}: {name!r:.80} is not a file embedhub writes; the "
                               "ledger was edited, so embedhub cannot tell its files from yours")
            self.names.add(name)

    def create(self, names: set[str], *, new: bool = False) -> None:
        """Write the ledger: ``new``, into an empty folder (created exclusively, nothing else made there);
        otherwise replacing the ledger through the staging folder."""
        self.names = set(names)
        text = "".join(f"{n}\n" for n in [_LEDGER_HEADER, *sorted(self.names)])
        if not new:
            put(self.path.parent, LEDGER, text)
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def record(self, *names: str) -> None:
        """Record ``names`` (before they are created)."""
        new = [n for n in names if n not in self.names]
        if new:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write("".join(f"{n}\n" for n in new))
                fh.flush()
                os.fsync(fh.fileno())
            self.names.update(new)


def shard_name(chunk: Any) -> str:
    return f"{SHARDS}/part-{chunk.index:05d}.parquet"


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value (for JSON); anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def id_list(stored: StoredEmbeddings) -> list[Any]:
    """The ids of a stored shard as a list (an int64 array or a list of str in the file)."""
    return stored.ids.tolist() if isinstance(stored.ids, np.ndarray) else list(stored.ids)


def read_manifest(path: Path, *, entries: bool = True) -> dict[str, Any]:
    """A job manifest, bounded in size and checked in shape (a :class:`JobError` naming it otherwise); with
    ``entries``, every shard entry too (a resuming job checks them itself, and redoes those that are wrong)."""
    advice = ("pass restart=True (--restart) to start over (it deletes only the files the job wrote), or give "
              "another output folder")
    try:
        manifest = json.loads(_read_bounded(path, MAX_MANIFEST_BYTES, "job manifest"))
    except JobError as exc:
        raise JobError(f"{exc}; {advice}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise JobError(f"{path} is not a readable job manifest ({type(exc).__name__}: {str(exc)[:200]}); "
                       f"{advice}") from None
    keys = ("fingerprint", "settings", "digest", "shards", "shards_total")
    if not isinstance(manifest, dict) or manifest.get("embedhub_embed_job") != MANIFEST_VERSION or any(
        k not in manifest for k in keys
    ):
        raise JobError(f"{path} is not an embedhub embed manifest (version {MANIFEST_VERSION} with "
                       f"{', '.join(keys)}); {advice}")
    shards, total, rows = manifest["shards"], manifest["shards_total"], manifest.get("rows")
    if not isinstance(shards, dict) or not _count(total) or not _count(rows) or not isinstance(
        manifest["settings"], dict
    ):
        raise JobError(f"{path}: 'shards' must be an object, 'shards_total' and 'rows' integers >= 0 and 'settings' "
                       f"an object; {advice}")
    for key, entry in shards.items() if entries else ():
        problem = entry_problem(key, entry, total)
        if problem:
            raise JobError(f"{path}: shard {key!r:.40}: {problem}; found {json.dumps(entry)[:160]}; run the job "
                           "again to redo that shard (or pass restart=True / --restart to start over)")
    return manifest


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def entry_problem(key: str, entry: Any, total: int) -> str | None:
    """Why manifest entry ``key`` is not one a job writes for shard ``key`` of ``total``, or ``None``."""
    if not (isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key and int(key) < total):
        return f"the key must be a shard number below shards_total ({total})"
    k = int(key)
    if not isinstance(entry, dict):
        return "the entry must be an object"
    if entry.get("file") != f"{SHARDS}/part-{k:05d}.parquet":
        return f"'file' must be {SHARDS}/part-{k:05d}.parquet (shard {k}'s file, inside the folder)"
    if entry.get("shard") != k or isinstance(entry.get("shard"), bool):
        return f"'shard' must be {k}"
    if not isinstance(entry.get("sha256"), str) or not _count(entry.get("rows")) or not _count(entry.get("errors")):
        return "'sha256' must be a string, 'rows' and 'errors' integers >= 0"
    if not isinstance(entry.get("source"), str) or not _count(entry.get("start")) or not _count(entry.get("stop")):
        return "'source' must be a string, 'start' and 'stop' integers >= 0"
    errors = entry.get("error_rows")
    if not isinstance(errors, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], (str, int)) and not isinstance(e[0], bool)
        and isinstance(e[1], str) for e in errors
    ):
        return "'error_rows' must be a list of [id, reason] pairs"
    if len(errors) != entry["errors"] or entry["rows"] + len(errors) != entry["stop"] - entry["start"]:
        return "'rows' and 'error_rows' must add up to the rows from 'start' to 'stop'"
    return None


#: the file of a shard, relative to the job folder: nothing else is read as one
_SHARD_FILE = re.compile(r"shards/part-\d{5,}\.parquet")


def shard_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Why the shard file at ``path`` is not the one the manifest ``entry`` recorded, or ``None``: its kind, its
    SHA-256, and the shard number and row count recorded inside the parquet file itself."""
    from embedhub._io.hashing import sha256_file

    kind = entry_kind(path)
    if kind is None:
        return f"{path.name} is missing"
    if kind != "file":
        return f"{path.name} is a {kind}, not the regular file that was written"
    if sha256_file(path) != entry.get("sha256"):
        return f"{path.name} is not the file that was written (SHA-256 differs: cut short or changed)"
    try:
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path)
        record = json.loads((meta.schema.to_arrow_schema().metadata or {})[SHARD_KEY.encode()])
        shard, rows = record["shard"], meta.num_rows
    except Exception as exc:  # not a shard embedhub wrote: any reason is the same answer
        return f"{path.name} is not a shard embedhub wrote (no readable {SHARD_KEY!r} record: {type(exc).__name__})"
    if shard != entry.get("shard"):
        return f"{path.name} records itself as shard {shard!r:.40}, not shard {entry.get('shard')}"
    if rows != entry.get("rows"):
        return f"{path.name} holds {rows} rows, the manifest records {entry.get('rows')}"
    return None


def read_job(folder: Path, *, expect: Fingerprint | None = None) -> StoredEmbeddings:
    """Every shard of a finished job, concatenated in shard order (see :func:`embedhub.read_embeddings`).

    Each shard must be the regular file ``shards/part-NNNNN.parquet`` the manifest records, with the
    SHA-256 recorded when it was written, and its row count; a :class:`JobError` names the first that is not.
    """
    from embedhub.store.embeddings import StoredEmbeddings, read_embeddings_file

    manifest = read_manifest(folder / MANIFEST)
    fp = Fingerprint.from_dict(manifest["fingerprint"], path=folder / MANIFEST)
    if expect is not None:
        expect.check(fp, what=str(folder), expected="expected", found="folder")
    done = manifest["shards"]
    total = manifest["shards_total"]
    if len(done) != total or any(str(k) not in done for k in range(total)):
        raise JobError(f"{folder}: the job is unfinished ({len(done)} of {total} shards); run it "
                       "again to finish")
    counted = sum(e["rows"] + len(e["error_rows"]) for e in done.values())
    if counted != manifest["rows"]:
        raise JobError(f"{folder}: its {total} shards hold {counted} rows (embedded and failed), the manifest "
                       f"records {manifest['rows']}; the manifest was edited: run the job again to redo what differs")
    if total and entry_kind(folder / SHARDS) != "folder":
        raise JobError(f"{folder}: {SHARDS} is a {entry_kind(folder / SHARDS) or 'missing'} entry, not the folder the "
                       "job wrote; shards are read only inside the job folder")
    parts = []
    for k in range(total):
        entry = done[str(k)]
        problem = shard_problem(folder / entry["file"], entry)
        if problem:
            raise JobError(f"{folder}: shard {k} ({entry['file']}): {problem}; run the job again to redo it")
        part = read_embeddings_file(folder / entry["file"], expect=fp)
        if len(part) != entry["rows"]:  # checked in the file's metadata; this is its content
            raise JobError(f"{folder}: shard {k} ({entry['file']}) holds {len(part)} rows, the manifest "
                           f"records {entry['rows']}; run the job again to redo it")
        parts.append(part)
    if parts:
        emb = np.concatenate([p.embeddings for p in parts])
    else:
        from embedhub.store.embeddings import precision_of
        from embedhub.store.index import stored_dtype, stored_width

        emb = np.empty((0, stored_width(fp.dim, precision_of(fp))), stored_dtype(precision_of(fp)))
    filled = [p for p in parts if len(p)]  # a shard whose rows all failed has no id type of its own
    if filled and all(isinstance(p.ids, np.ndarray) for p in filled):
        ids: Any = np.concatenate([p.ids for p in filled])
    else:
        ids = [v for p in parts for v in id_list(p)]
    from embedhub.store.embeddings import repeated_id

    repeat = repeated_id(ids)
    if repeat is not None:
        raise JobError(f"{folder}: id {repeat[2]!r:.80} is in two shards (rows {repeat[0]} and {repeat[1]} of the "
                       "job); the shards are not one job's: pass restart=True (--restart) to embed again")
    return StoredEmbeddings(folder, emb, ids, None, fp)


def read_job_index(folder: Path, *, expect: Fingerprint | None = None) -> VectorIndex:
    """The index ``embed --index faiss`` saved in the job folder (:data:`INDEX`, :data:`INDEX_IDS`), with the
    similarity its manifest records for id files written before the index record was; ``expect`` is checked
    against the fingerprint of the index before its vectors are read.

    >>> read_job_index(Path("emb"), expect=model.fingerprint).hits(model.encode(["a query"]), k=3)  # doctest: +SKIP
    """
    from embedhub.store.index import VectorIndex

    manifest = read_manifest(folder / MANIFEST, entries=False)
    record = manifest.get("index")
    if not isinstance(record, dict) or record.get("file") != INDEX or record.get("ids") != INDEX_IDS:
        raise JobError(f"{folder}: the job built no index (run it again with index='faiss' / --index faiss)")
    fingerprint = Fingerprint.from_dict(manifest["fingerprint"], path=folder / MANIFEST)
    if expect is not None:
        expect.check(fingerprint, what=str(folder), expected="expected", found="folder")
    digests = record.get("sha256")  # recorded since the index record holds them; older folders have none
    if digests is not None:
        from embedhub._io.hashing import sha256_file

        for name in (INDEX, INDEX_IDS):
            path = folder / name
            if (not isinstance(digests, dict) or path.is_symlink() or not path.is_file()
                    or sha256_file(path) != digests.get(name)):
                raise JobError(f"{path} is not the file the job wrote (its SHA-256 is not the one {MANIFEST} "
                               "records): run the job again with --restart and --index faiss")
    similarity = record.get("similarity")
    # the index's own fingerprint must be the job's: vectors of another model are refused before they are read
    return VectorIndex.load(folder, similarity=similarity if isinstance(similarity, str) else None,
                            expect=fingerprint, ids_file=INDEX_IDS)


def empty_rows(model: ModelLike, encode: dict[str, Any], rows: int = 0) -> np.ndarray:
    """``rows`` zero rows of the width and dtype ``model.encode(..., **encode)`` returns."""
    from embedhub.store.index import stored_dtype, stored_width

    dim = encode.get("truncate_dim") or getattr(model, "truncate_dim", None) or model.embed_dim
    precision = encode.get("precision", "float32")
    return np.zeros((rows, stored_width(dim, precision)), stored_dtype(precision))
