"""Reading stored embeddings back: one file, or every shard of an ``embedhub embed`` folder."""

from __future__ import annotations

import os
from pathlib import Path

from embedhub.errors import EmbeddingsFileError
from embedhub.store.embeddings import StoredEmbeddings, read_embeddings_file
from embedhub.store.fingerprint import Fingerprint
from embedhub.store.job_folder import MANIFEST, read_job


def read_embeddings(path: str | os.PathLike, *, expect: Fingerprint | None = None) -> StoredEmbeddings:
    """Read embeddings written by :func:`write_embeddings` (or ``embedhub encode``), or every shard of a
    finished ``embedhub embed`` folder in order.

    With ``expect`` (usually ``model.fingerprint``, or ``.with_normalized(False)`` for raw vectors),
    a file of another fingerprint raises :class:`FingerprintMismatchError` naming both ids and every
    differing part, and a file without provenance raises :class:`ProvenanceError`. Without ``expect``
    such a file is read with ``fingerprint=None``. Provenance that is present but malformed (a field
    of the wrong type, an edited id, a sidecar describing another ``.npy``) is refused either way.

    >>> stored = read_embeddings("emb.npy", expect=model.fingerprint)  # doctest: +SKIP
    >>> stored.embeddings.dtype, stored.fingerprint.id                 # doctest: +SKIP
    (dtype('float32'), 'eh1-3f9a0c2b7d4e5a61')
    """
    path = Path(path)
    if expect is not None and not isinstance(expect, Fingerprint):
        raise TypeError(f"expect must be an embedhub.Fingerprint or None, got {type(expect).__name__}")
    if path.is_dir():
        if not (path / MANIFEST).is_file():
            raise EmbeddingsFileError(f"{path} is a folder without a {MANIFEST} (not an `embedhub embed` output)",
                                      path=path)
        return read_job(path, expect=expect)
    return read_embeddings_file(path, expect=expect)
