"""embedhub: load text and image embedding models by name and encode with them.

>>> import embedhub
>>> model = embedhub.load("all-MiniLM-L6-v2")       # doctest: +SKIP
>>> model.encode(["A man is playing a guitar."]).shape  # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

from ._errors import (
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
from ._registry import ModelEntry, list_models, model_entry, register_model

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._job import EmbedJobResult, embed_corpus
    from ._load import load
    from ._model import EmbeddingModel
    from ._pool import MultiProcessPool
    from ._provenance import Fingerprint
    from ._quantize import quantize_embeddings
    from ._store import read_embeddings, write_embeddings


def __getattr__(name: str):
    # torch and transformers load on first use, so `import embedhub` and `embedhub --help` stay fast
    if name == "load":
        from ._load import load

        return load
    if name == "EmbeddingModel":
        from ._model import EmbeddingModel

        return EmbeddingModel
    if name in ("embed_corpus", "EmbedJobResult"):
        from . import _job

        return getattr(_job, name)
    if name == "MultiProcessPool":
        from ._pool import MultiProcessPool

        return MultiProcessPool
    if name == "Fingerprint":
        from ._provenance import Fingerprint

        return Fingerprint
    if name == "quantize_embeddings":
        from ._quantize import quantize_embeddings

        return quantize_embeddings
    if name in ("read_embeddings", "write_embeddings"):
        from . import _store

        return getattr(_store, name)
    raise AttributeError(f"module 'embedhub' has no attribute {name!r}")

__version__ = "0.1.0"

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
    "ModelNotCachedError",
    "ModelEntry",
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
