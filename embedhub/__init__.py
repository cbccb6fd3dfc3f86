"""embedhub: load text and image embedding models by name and encode with them.

>>> import embedhub
>>> model = embedhub.load("all-MiniLM-L6-v2")       # doctest: +SKIP
>>> model.encode(["A man is playing a guitar."]).shape  # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embedhub._io.lazy import lazy_exports
from embedhub._version import __version__ as __version__

if TYPE_CHECKING:
    from embedhub.errors import ArgumentError, ConfigError, CorpusError, DataFileError, DataNotFoundError
    from embedhub.errors import EmbeddingsFileError, EmbedhubError, FingerprintMismatchError, InputError
    from embedhub.errors import InputTypeError, JobError, MissingDependencyError, ModalityError, ModelNotCachedError
    from embedhub.errors import ModelNotFoundError, PoolError, ProvenanceError, PublishError, UnknownFormatError
    from embedhub.errors import WeightsError
    from embedhub.hub.aliases import ModelEntry, list_models, model_entry, register_model
    from embedhub.jobs.embed import EmbedJobResult, embed_corpus
    from embedhub.loader import load
    from embedhub.model import EmbeddingModel
    from embedhub.modules.pool import MultiProcessPool
    from embedhub.modules.quantize import quantize_embeddings
    from embedhub.store.embeddings import write_embeddings
    from embedhub.store.fingerprint import Fingerprint
    from embedhub.store.read import read_embeddings

__getattr__, __dir__ = lazy_exports(__name__)
__all__ = [
    "ArgumentError", "ConfigError", "CorpusError", "DataFileError", "DataNotFoundError", "EmbedJobResult",
    "EmbeddingModel", "EmbeddingsFileError", "EmbedhubError", "Fingerprint", "FingerprintMismatchError",
    "InputError", "InputTypeError", "JobError", "MissingDependencyError", "ModalityError", "ModelEntry",
    "ModelNotCachedError", "ModelNotFoundError", "MultiProcessPool", "PoolError", "ProvenanceError", "PublishError",
    "UnknownFormatError", "WeightsError", "embed_corpus", "list_models", "load", "model_entry",
    "quantize_embeddings", "read_embeddings", "register_model", "write_embeddings",
]
