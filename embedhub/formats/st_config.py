"""``config_sentence_transformers.json``: the model-level settings of a sentence-transformers folder.

Every key sentence-transformers writes or reads there is honoured as sentence-transformers honours it
(:data:`HONOURED`), or refused with a :class:`~embedhub.ConfigError` naming the file and key:

- ``prompts`` / ``default_prompt_name``: the model's prompts (merged over the ``query`` and ``document``
  defaults, both ``""``, as sentence-transformers does) and the one ``encode`` applies by default;
- ``similarity_fn_name``: ``cosine`` (also when null), ``dot``, ``euclidean`` or ``manhattan``;
- ``truncate_dim``: the Matryoshka width ``encode`` truncates to (null: none);
- ``model_type``: ``"SentenceTransformer"`` (other model types, e.g. ``SparseEncoder``, are refused);
- ``requirements``: package version specifiers, checked against what is installed;
- ``__version__``: the library versions that wrote the folder (informational).

>>> from embedhub._io.folder import ConfigView
>>> s = parse(ConfigView({"prompts": {"query": "query: "}, "default_prompt_name": "query"}, "c.json"), width=8)
>>> s.prompts, s.default_prompt_name, s.similarity_fn_name
({'query': 'query: ', 'document': ''}, 'query', 'cosine')
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub.errors import ConfigError

FILE = "config_sentence_transformers.json"
#: the keys of :data:`FILE` embedhub honours
HONOURED: tuple[str, ...] = ("__version__", "default_prompt_name", "model_type", "prompts", "requirements",
                             "similarity_fn_name", "truncate_dim")
#: the model type this loader builds; a folder of another sentence-transformers model class is refused
MODEL_TYPE = "SentenceTransformer"
#: prompt names sentence-transformers' SentenceTransformer always has (empty unless the config sets them)
DEFAULT_PROMPTS: dict[str, str] = {"query": "", "document": ""}
#: a prompt is a string of at most this many characters; a model has at most MAX_PROMPTS of them
MAX_PROMPT_CHARS = 1 << 14
MAX_PROMPTS = 256
MAX_PROMPT_NAME_CHARS = 256
_SIMILARITIES = ("cosine", "dot", "euclidean", "manhattan")

logger = logging.getLogger("embedhub")


@dataclass
class STSettings:
    """The model-level settings read from :data:`FILE` (neutral when the folder has none)."""

    prompts: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    default_prompt_name: str | None = None
    similarity_fn_name: str = "cosine"
    truncate_dim: int | None = None


def check_prompts(view: ConfigView, key: str = "prompts", *, nulls: bool = True) -> dict[str, str]:
    """The prompts object at ``key`` of ``view``: names and prompts bounded strings (``null`` prompts read
    as ``""`` when ``nulls``, as sentence-transformers reads them); a :class:`ConfigError` otherwise.

    >>> check_prompts(ConfigView({"prompts": {"query": None}}, "c.json"))
    {'query': ''}
    """
    raw = view.data.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise view.error(key, "an object mapping prompt names to prompt strings", raw)
    if len(raw) > MAX_PROMPTS:
        raise view.error(key, f"at most {MAX_PROMPTS} prompts", f"{len(raw)} prompts")
    out: dict[str, str] = {}
    for name, text in raw.items():
        if not name or len(name) > MAX_PROMPT_NAME_CHARS:
            raise view.error(key, f"prompt names of 1 to {MAX_PROMPT_NAME_CHARS} characters", name)
        if text is None and nulls:
            text = ""
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            raise ConfigError(
                f"{view.file}: {view.prefix}{key}.{name}: expected a prompt string of at most {MAX_PROMPT_CHARS} "
                f"characters, found {type(text).__name__}"
                f"{f' of {len(text)} characters' if isinstance(text, str) else ''}",
                file=str(view.file), key=f"{view.prefix}{key}.{name}")
        out[str(name)] = text
    return out


def check_default_prompt_name(view: ConfigView, prompts: dict[str, str],
                              key: str = "default_prompt_name") -> str | None:
    """The default prompt name at ``key`` (null: none); it must name one of ``prompts``."""
    name = view.str(key, None)
    if name is not None and name not in prompts:
        raise view.error(key, f"null or one of the prompt names {sorted(prompts)}", name)
    return name


def check_truncate_dim(view: ConfigView, width: int | None, key: str = "truncate_dim") -> int | None:
    """The truncation width at ``key`` (null: none): an integer from 1 to ``width``."""
    return view.int(key, None, min=1, max=width)


def _check_requirements(view: ConfigView) -> None:
    """sentence-transformers' check of the ``requirements`` the model declares: an unmet one is refused
    (sentence-transformers raises ImportError); an entry it cannot interpret it skips with a warning, as here."""
    raw = view.data.get("requirements")
    if not raw:
        return
    if not isinstance(raw, dict):
        logger.warning("%s: ignoring requirements: expected an object of version specifiers", view.file)
        return
    from importlib.metadata import PackageNotFoundError, version

    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    unmet = []
    for package, requirement in raw.items():
        package = {"pytorch": "torch"}.get(package, package)
        spec = requirement.get("specifier", "") if isinstance(requirement, dict) else requirement
        if not isinstance(spec, str):
            logger.warning("%s: cannot verify requirement %r of %s", view.file, spec, package)
            continue
        if package == "python":
            import platform

            installed: str | None = platform.python_version()
        else:
            try:
                installed = version(package)
            except (PackageNotFoundError, ValueError):
                installed = None
        try:
            if installed is not None and SpecifierSet(spec, prereleases=True).contains(Version(installed)):
                continue
        except Exception as exc:  # an unparsable specifier or version: skipped, as sentence-transformers does
            logger.warning("%s: cannot verify requirement %r of %s: %s", view.file, spec, package, exc)
            continue
        unmet.append((package, spec, installed))
    if unmet:
        package = unmet[0][0]
        listed = "; ".join(f"{p}{s} ({'installed: ' + i if i else 'not installed'})" for p, s, i in unmet)
        raise ConfigError(f"{view.file}: requirements: the model requires {listed}",
                          file=str(view.file), key=f"requirements.{package}")


def parse(view: ConfigView, *, width: int | None) -> STSettings:
    """The settings of a parsed :data:`FILE` (``width``: the model's embedding width, bounding ``truncate_dim``)."""
    view.only(HONOURED, what="key")
    model_type = view.str("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise view.error("model_type", f"{MODEL_TYPE!r} (embedhub loads dense sentence embedding models; a "
                                       f"{model_type} needs its own sentence-transformers class)", model_type)
    versions = view.data.get("__version__")
    if versions is not None and (not isinstance(versions, dict) or
                                 not all(isinstance(v, (str, type(None))) for v in versions.values())):
        raise view.error("__version__", "an object of library versions", versions)
    _check_requirements(view)
    prompts = {**DEFAULT_PROMPTS, **check_prompts(view)}
    default = check_default_prompt_name(view, prompts)
    similarity = view.str("similarity_fn_name", "cosine", choices=_SIMILARITIES)
    return STSettings(prompts=prompts, default_prompt_name=default, similarity_fn_name=similarity,
                      truncate_dim=check_truncate_dim(view, width))


def read(folder: ModelFolder, *, width: int | None) -> STSettings:
    """:func:`parse` of the folder's :data:`FILE`; neutral settings when it has none.

    >>> read(ModelFolder("."), width=8).similarity_fn_name  # doctest: +SKIP
    'cosine'
    """
    if not folder.has(FILE):
        return STSettings()
    return parse(folder.config(FILE), width=width)


def parts_kwargs(settings: STSettings) -> dict[str, Any]:
    """The :class:`~embedhub.formats.ModelParts` fields the settings fill."""
    return {"prompts": dict(settings.prompts), "default_prompt_name": settings.default_prompt_name,
            "similarity_fn_name": settings.similarity_fn_name, "truncate_dim": settings.truncate_dim}
