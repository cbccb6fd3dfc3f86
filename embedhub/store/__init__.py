"""What embedhub keeps on disk: model fingerprints (:mod:`.fingerprint`), embedding files and their sidecars
(:mod:`.embeddings`), the vector index that search uses (:mod:`.index`), and the atomic writes and file hashes
they are built on.

>>> from embedhub.store import atomic_write
>>> atomic_write  # doctest: +ELLIPSIS
<function atomic_write at ...>
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports

if TYPE_CHECKING:
    from embedhub._io.atomic import atomic_write, install_folder
    from embedhub._io.hashing import sha256_file
    from embedhub.store.embeddings import write_embeddings
    from embedhub.store.fingerprint import Fingerprint
    from embedhub.store.index import SearchIndex, VectorIndex, hamming, similarity_scores
    from embedhub.store.read import read_embeddings

__getattr__, __dir__ = lazy_exports(__name__)
__all__ = [
    "Fingerprint", "SearchIndex", "atomic_write", "hamming", "install_folder", "read_embeddings", "sha256_file",
    "similarity_scores", "VectorIndex", "write_embeddings",
]
