"""The state of an embedding job in its output folder: the plan it was started with, the shards finished, a
resume that checks them, and the end (errors list, index, result)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from embedhub.errors import FingerprintMismatchError, JobError
from embedhub.jobs.corpus import (
    Chunk,
    Plan,
    count,
)
from embedhub.store.fingerprint import Fingerprint
from embedhub.store.job_folder import (
    ERRORS,
    INDEX,
    INDEX_IDS,
    LEDGER,
    LOCK,
    MANIFEST,
    MANIFEST_VERSION,
    SHARD_KEY,
    SHARDS,
    STAGING,
    Ledger,
    clear_staging,
    entry_kind,
    entry_problem,
    plain,
    put,
    read_manifest,
    shard_name,
    shard_problem,
)

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class EmbedJobResult:
    """What :func:`embed_corpus` did: ``rows`` embedded in ``shards`` (``resumed`` of them by an earlier
    run), ``errors`` rows skipped (listed in ``errors_file``), ``seconds`` this run took."""

    output: Path
    fingerprint: Fingerprint
    rows: int
    shards: int
    resumed: int
    errors: int
    seconds: float
    errors_file: Path | None
    index: Path | None


def note(message: str) -> None:
    print(f"embedhub: {message}", file=sys.stderr)


def progress_bar(total: int, modality: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"embedding {modality}s", unit="row", unit_scale=True, disable=not progress,
                smoothing=0.1)


# ---------------------------------------------------------------------------------------------- local engine


class Job:
    """An output folder: its ledger, lock, manifest, shard files, errors file and index."""

    def __init__(self, out: Path, fingerprint: Fingerprint, *, restart: bool, similarity: str = "cosine"):
        self.out, self.fingerprint, self.restart = out, fingerprint, restart
        #: the model's similarity function: the metric of the index
        self.similarity = similarity
        self.manifest: dict[str, Any] = {}
        self.ledger = Ledger(out)
        self._lock: Any = None

    # -- lock: one job per folder at a time (released by the OS if the process dies)
    def __enter__(self) -> Job:
        import fcntl

        if self.out.exists() and not self.out.is_dir():
            raise JobError(f"output {self.out} is a file; expected a folder (new, empty, or of an earlier run)")
        self._adopt()
        self.ledger.record(LOCK, STAGING)
        try:  # never through a link
            fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise JobError(f"output {self.out}: cannot open its lock file {LOCK} ({exc.strerror}; a link?)") from None
        self._lock = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise JobError(f"output {self.out} is in use by another running job") from None
        try:
            self._open_manifest()
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._lock is not None:
            self._lock.close()

    def _adopt(self) -> None:
        """Never write among a user's files: the folder must be new, empty, or a job's holding only what the job
        wrote (its ledger says which). A folder without a ledger is never a job's, whatever it holds (a copied
        manifest does not make a user's files the job's to delete)."""
        if not self.out.is_dir():
            self.out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in self.out.iterdir())
        if not names:  # empty: no entry at all
            self.ledger.create({STAGING}, new=True)
            return
        if LEDGER not in names:
            raise JobError(f"output {self.out} is not an embedhub embed folder (it holds "
                           f"{', '.join(names[:5])}{' ...' if len(names) > 5 else ''}); give a new or empty folder "
                           f"(a job's folder holds its {LEDGER} ledger)")
        try:
            self.ledger.load()
        except JobError as exc:
            raise JobError(f"output {self.out} is not usable: {exc}; give a new or empty folder") from None
        self._check_foreign(names)

    def _check_foreign(self, names: list[str]) -> None:
        """A :class:`JobError` naming the files embedhub did not write here (nothing is touched)."""
        owned = self.ledger.names
        others = [n for n in names if n != LEDGER and n not in owned]
        for folder in (SHARDS, STAGING):
            kind = entry_kind(self.out / folder)
            if kind not in (None, "folder"):
                others.append(f"{folder} (a {kind}, not a folder embedhub made)")
        if entry_kind(self.out / SHARDS) == "folder" and SHARDS in owned:
            others += [f"{SHARDS}/{p.name}" for p in sorted((self.out / SHARDS).iterdir())
                       if f"{SHARDS}/{p.name}" not in owned]
        if others:
            if not owned:
                raise JobError(f"output {self.out} is not an embedhub embed folder (it holds "
                               f"{', '.join(others[:5])}); give a new or empty folder")
            raise JobError(f"output {self.out} holds {count(len(others), 'file')} embedhub did not write "
                           f"({', '.join(others[:5])}{' ...' if len(others) > 5 else ''}); move them out, or give "
                           "a new or empty folder")

    def _open_manifest(self) -> None:
        """An earlier run's manifest: refused if another model's (unless restarting, which clears the folder)."""
        self._check_foreign(sorted(p.name for p in self.out.iterdir()))
        manifest = self.out / MANIFEST
        if self.restart:
            self._clear()
            return
        if entry_kind(manifest) is None:
            return
        self.manifest = read_manifest(manifest, entries=False)
        try:
            stored = Fingerprint.from_dict(self.manifest["fingerprint"], path=manifest)
        except FingerprintMismatchError as exc:  # a malformed fingerprint record (ProvenanceError)
            raise JobError(f"{exc}; pass restart=True (--restart) to start over (it deletes only the files the "
                           "job wrote), or give another output folder") from None
        try:
            self.fingerprint.check(stored, what=str(self.out), expected="this job", found="folder")
        except FingerprintMismatchError as exc:
            raise type(exc)(f"{exc}. Pass restart=True (--restart) to delete its shards and start over, or give "
                            "another output folder") from None

    def _clear(self) -> None:
        """Delete what the ledger records (links themselves, never what they point to), and stale temporaries."""
        removed = 0
        for rel in sorted(self.ledger.names - {LOCK, SHARDS, STAGING}, reverse=True):
            if entry_kind(self.out / rel) in ("file", "link"):
                (self.out / rel).unlink()
                removed += 1
        clear_staging(self.out)
        if SHARDS in self.ledger.names and entry_kind(self.out / SHARDS) == "folder":
            try:
                (self.out / SHARDS).rmdir()
            except OSError:  # not empty: something appeared since the check; it stays
                pass
        self.ledger.create({n for n in self.ledger.names if entry_kind(self.out / n) is not None} | {LOCK, STAGING})
        self.manifest = {}
        if removed:
            note(f"{self.out}: restarted (earlier shards deleted)")

    def start(self, plan: Plan, settings: dict[str, Any]) -> None:
        """Check an earlier run's settings against this one's; drop shards whose files are missing or changed.
        Every shard file the plan will write is recorded in the ledger first (a kill can leave any of them)."""
        self.plan = plan
        self.ledger.record(SHARDS, *(shard_name(c) for c in plan.chunks))
        if self.manifest:
            before = self.manifest["settings"]
            # the same files named another way (a relative path, another glob) are the same input
            changed = [f"{k}: {before.get(k)!r} then, {v!r} now" for k, v in settings.items()
                       if before.get(k) != v and k != "input"]
            if not changed and self.manifest["digest"] != plan.digest:
                changed = ["the input files changed (names, sizes or modification times) since that run"]
                if before.get("input") != settings["input"]:
                    changed.insert(0, f"input: {before.get('input')!r} then, {settings['input']!r} now")
            if changed:
                raise JobError(f"output {self.out} holds a job over another input or with other settings "
                               f"({'; '.join(changed)}); pass restart=True (--restart) to start over, or give "
                               "another output folder")
            for key, value in (("shards_total", len(plan.chunks)), ("rows", plan.rows)):
                if self.manifest[key] != value:
                    note(f"{self.out}: the manifest records {key} {self.manifest[key]}, the input has {value}; "
                          "corrected")
                    self.manifest[key] = value
            chunks = {str(c.index): c for c in plan.chunks}
            for key, entry in list(self.manifest["shards"].items()):
                chunk = chunks.get(key)
                problem = entry_problem(key, entry, len(plan.chunks))
                if problem:
                    problem = f"its manifest entry is wrong: {problem}"
                elif chunk is None:
                    problem = "the input has no such shard"
                elif {k: entry[k] for k in ("source", "start", "stop")} != chunk.describe():
                    problem = "the manifest records other rows than the input's shard"
                else:
                    problem = shard_problem(self.out / entry["file"], entry)
                if problem:
                    label = key if key.isascii() and key.isdigit() and len(key) < 20 else f"{key!r:.40}"
                    note(f"{self.out}: shard {label} will be redone: {problem}")
                    del self.manifest["shards"][key]
            self.manifest["complete"] = False
        else:
            self.manifest = {
                "embedhub_embed_job": MANIFEST_VERSION,
                "fingerprint": self.fingerprint.to_dict(),
                "settings": settings,
                "digest": plan.digest,
                "rows": plan.rows,
                "shards_total": len(plan.chunks),
                "shards": {},
                "complete": False,
            }
        clear_staging(self.out)  # what a run killed mid-write left
        self._save()

    def pending(self) -> list[Chunk]:
        return [c for c in self.plan.chunks if str(c.index) not in self.manifest["shards"]]

    def complete(self, chunk: Chunk, ids: list, emb: np.ndarray, errors: list[tuple[Any, str]]) -> None:
        """Write ``chunk``'s shard file, then record it in the manifest (in that order)."""
        from embedhub._io.hashing import sha256_file
        from embedhub.store.embeddings import write_embeddings

        rel = shard_name(chunk)
        self.ledger.record(SHARDS, rel)
        meta = dict(chunk.describe(), shard=chunk.index, errors=len(errors))
        staged = self.out / STAGING / Path(rel).name
        write_embeddings(staged, emb, self.fingerprint, ids=ids, metadata={SHARD_KEY: json.dumps(meta)})
        (self.out / SHARDS).mkdir(exist_ok=True)
        os.replace(staged, self.out / rel)
        entry = dict(meta, file=rel, rows=len(emb), sha256=sha256_file(self.out / rel),
                     error_rows=[[plain(i), r] for i, r in errors])
        self.manifest["shards"][str(chunk.index)] = entry
        self._save()

    def finish(self, index: str | None, *, resumed: int, seconds: float) -> EmbedJobResult:
        shards = [self.manifest["shards"][str(c.index)] for c in self.plan.chunks]
        errors = [{"id": i, "reason": r, "shard": e["shard"], "source": e["source"]}
                  for e in shards for i, r in e["error_rows"]]
        errors_file = None
        if errors:
            self.ledger.record(ERRORS)
            errors_file = put(self.out, ERRORS, "".join(json.dumps(e) + "\n" for e in errors))
            note(f"{len(errors)} rows could not be embedded; listed in {errors_file}")
        elif ERRORS in self.ledger.names and entry_kind(self.out / ERRORS) in ("file", "link"):
            (self.out / ERRORS).unlink()
        index_path = None
        if index == "faiss":
            index_path = self._build_index(shards)
        self.manifest["complete"] = True
        self._save()
        rows = sum(e["rows"] for e in shards)
        return EmbedJobResult(self.out, self.fingerprint, rows, len(shards), resumed, len(errors), seconds,
                              errors_file, index_path)

    def _build_index(self, shards: list[dict[str, Any]]) -> Path:
        """A flat faiss index over every shard, in shard order, searching with the model's similarity (inner
        product for dot and, over unit rows, cosine; L2 for euclidean; L1 for manhattan) or, for binary vectors,
        by Hamming distance, saved as :data:`INDEX` and :data:`INDEX_IDS` (:class:`embedhub.store.VectorIndex`)."""
        from embedhub._io.hashing import sha256_file
        from embedhub.store.embeddings import read_embeddings_file
        from embedhub.store.index import VectorIndex

        self.ledger.record(INDEX, INDEX_IDS)
        idx = VectorIndex(self.fingerprint.dim, similarity=self.similarity, precision=self.fingerprint.precision,
                          backend="faiss", fingerprint=self.fingerprint)
        for entry in shards:
            stored = read_embeddings_file(self.out / entry["file"], expect=self.fingerprint)
            idx.add(stored.embeddings, ids=stored.ids)
        idx.save(self.out, ids_file=INDEX_IDS, put=put)  # the id of index row i, with the vectors' fingerprint
        self.manifest["index"] = {"file": INDEX, "ids": INDEX_IDS, "rows": len(idx), "kind": idx.kind,
                                  "similarity": self.similarity, "precision": self.fingerprint.precision,
                                  "sha256": {name: sha256_file(self.out / name) for name in (INDEX, INDEX_IDS)}}
        return self.out / INDEX

    def _save(self) -> None:
        self.ledger.record(MANIFEST)
        put(self.out, MANIFEST, json.dumps(self.manifest, indent=1) + "\n")
