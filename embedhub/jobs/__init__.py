"""Embedding jobs over corpora: the one corpus reader (:mod:`.corpus`), ``embed_corpus`` (:mod:`.embed`), the job's
state in its folder (:mod:`.job`), and its two engines: local (:mod:`.local`) and Ray Data (:mod:`.ray_engine`).

>>> from embedhub.jobs import embed_corpus
>>> embed_corpus("all-MiniLM-L6-v2", "corpus.txt", "out/")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports

if TYPE_CHECKING:
    from embedhub.jobs.corpus import Corpus, read_corpus, tar_keys
    from embedhub.jobs.embed import EmbedJobResult, embed_corpus

__getattr__, __dir__ = lazy_exports(__name__)
__all__ = [
    "Corpus", "EmbedJobResult", "embed_corpus", "read_corpus", "tar_keys",
]
