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
    from embedhub.errors import (
        ArgumentError,
        ConfigError,
        CorpusError,
        DataFileError,
        DataNotFoundError,
        EmbeddingsFileError,
        EmbedhubError,
        FingerprintMismatchError,
        InputError,
        InputTypeError,
        JobError,
        MissingDependencyError,
        ModalityError,
        ModelNotCachedError,
        ModelNotFoundError,
        PoolError,
        ProvenanceError,
        PublishError,
        UnknownFormatError,
        WeightsError,
    )
    from embedhub.hub.aliases import ModelEntry, list_models, model_entry, register_model
    from embedhub.jobs.local import EmbedJobResult, embed_corpus
    from embedhub.loader import load
    from embedhub.model import EmbeddingModel
    from embedhub.modules.pool import MultiProcessPool
    from embedhub.modules.quantize import quantize_embeddings
    from embedhub.store.embeddings import write_embeddings
    from embedhub.store.fingerprint import Fingerprint
    from embedhub.store.read import read_embeddings

#: public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "ArgumentError": "embedhub.errors",
    "ConfigError": "embedhub.errors",
    "CorpusError": "embedhub.errors",
    "DataFileError": "embedhub.errors",
    "DataNotFoundError": "embedhub.errors",
    "EmbeddingsFileError": "embedhub.errors",
    "EmbedhubError": "embedhub.errors",
    "FingerprintMismatchError": "embedhub.errors",
    "InputError": "embedhub.errors",
    "InputTypeError": "embedhub.errors",
    "JobError": "embedhub.errors",
    "MissingDependencyError": "embedhub.errors",
    "ModalityError": "embedhub.errors",
    "ModelNotCachedError": "embedhub.errors",
    "ModelNotFoundError": "embedhub.errors",
    "PoolError": "embedhub.errors",
    "ProvenanceError": "embedhub.errors",
    "PublishError": "embedhub.errors",
    "UnknownFormatError": "embedhub.errors",
    "WeightsError": "embedhub.errors",
    "list_models": "embedhub.hub.aliases",
    "model_entry": "embedhub.hub.aliases",
    "ModelEntry": "embedhub.hub.aliases",
    "register_model": "embedhub.hub.aliases",
    "embed_corpus": "embedhub.jobs.local",
    "EmbedJobResult": "embedhub.jobs.local",
    "load": "embedhub.loader",
    "EmbeddingModel": "embedhub.model",
    "MultiProcessPool": "embedhub.modules.pool",
    "quantize_embeddings": "embedhub.modules.quantize",
    "read_embeddings": "embedhub.store.read",
    "write_embeddings": "embedhub.store.embeddings",
    "Fingerprint": "embedhub.store.fingerprint",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "ArgumentError",
    "ConfigError",
    "CorpusError",
    "DataFileError",
    "DataNotFoundError",
    "EmbedJobResult",
    "EmbeddingModel",
    "EmbeddingsFileError",
    "EmbedhubError",
    "Fingerprint",
    "FingerprintMismatchError",
    "InputError",
    "InputTypeError",
    "JobError",
    "MissingDependencyError",
    "ModalityError",
    "ModelEntry",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "MultiProcessPool",
    "PoolError",
    "ProvenanceError",
    "PublishError",
    "UnknownFormatError",
    "WeightsError",
    "embed_corpus",
    "list_models",
    "load",
    "model_entry",
    "quantize_embeddings",
    "read_embeddings",
    "register_model",
    "write_embeddings",
]
