"""Model cards (``README.md``) written and read with ``huggingface_hub``'s own card classes.

The card holds the Hub's YAML metadata (``library_name: embedhub``, a ``pipeline_tag``, tags, license,
datasets, ``base_model`` and a ``model-index`` with every measured figure), then a description, a usage
snippet that runs as is, the results as a table, the training config and the training plot.

>>> from embedhub.hub.card import Result, write_card
>>> write_card("my-model", model_id="acme/minilm-sts", modalities=("text",),
...            results=[Result("sentence-similarity", "STS Benchmark", "mteb/stsbenchmark-sts", "spearman", 82.03)])
... # doctest: +SKIP
PosixPath('my-model/README.md')
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedhub._io.atomic import atomic_write

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

#: the file name of a model card on the Hub
CARD_NAME = "README.md"
#: modalities a card can describe, in the order they are listed
MODALITIES = ("text", "image")
#: the tag each modality adds to the card (besides ``embedhub``)
MODALITY_TAGS = {"text": "text-embedding", "image": "image-embedding"}
#: image files a card may link (and ``push_folder`` uploads when linked)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
#: relative links of images in a card body: ``![alt](path)`` (a title after the path is allowed)
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_TEXTS = ["A man is playing a guitar.", "Someone plays an instrument.", "The stock market fell today."]


@dataclass(frozen=True)
class Result:
    """One measured figure, as it goes into the card's ``model-index``.

    >>> Result("zero-shot-image-classification", "Fashion-MNIST", "fashion_mnist", "accuracy", 0.712)
    ... # doctest: +ELLIPSIS
    Result(task_type='zero-shot-image-classification', dataset_name='Fashion-MNIST', ...)
    """

    task_type: str
    dataset_name: str
    dataset_type: str
    metric_type: str
    value: float
    split: str = "test"
    metric_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("task_type", "dataset_name", "dataset_type", "metric_type", "split"):
            _check_name(f"Result.{name}", getattr(self, name))
        if self.metric_name is not None:
            _check_name("Result.metric_name", self.metric_name)
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
            raise ValueError(f"Result.value of {self.metric_type!r} on {self.dataset_name!r} must be a number, "
                             f"got {type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"Result.value of {self.metric_type!r} on {self.dataset_name!r} must be finite, "
                             f"got {value!r}")
        object.__setattr__(self, "value", value)

    @property
    def label(self) -> str:
        """The metric as shown in the results table (``metric_name`` when given, else ``metric_type``)."""
        return self.metric_name or self.metric_type


def _check_name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty str, got {value!r}")
    if any(c in value for c in "\r\n"):
        raise ValueError(f"{field} must be one line, got {value!r}")
    return value


def _check_names(field: str, values: Any) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{field} must be a list of str (e.g. ['fashion_mnist']), got {values!r}")
    return [_check_name(f"{field}[{i}]", v) for i, v in enumerate(values)]


def _check_modalities(modalities: Any) -> tuple[str, ...]:
    found = _check_names("modalities", modalities)
    unknown = [m for m in found if m not in MODALITIES]
    if unknown or not found:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {tuple(found)!r}")
    return tuple(m for m in MODALITIES if m in found)


def pipeline_tag_for(modalities: Sequence[str]) -> str:
    """The Hub ``pipeline_tag`` that fits a model embedding ``modalities``.

    >>> pipeline_tag_for(("text",)), pipeline_tag_for(("text", "image")), pipeline_tag_for(("image",))
    ('sentence-similarity', 'zero-shot-image-classification', 'feature-extraction')
    """
    mods = _check_modalities(modalities)
    if mods == ("text",):
        return "sentence-similarity"
    if mods == ("text", "image"):
        return "zero-shot-image-classification"
    return "feature-extraction"


def usage_snippet(model_id: str, modalities: Sequence[str], *, embed_dim: int | None = None,
                  similarity_fn_name: str = "cosine", prompts: Mapping[str, str] | None = None) -> str:
    """Python that loads ``model_id`` with ``embedhub.load`` and uses it; it runs as is.

    Each ``print`` carries its output as a comment (the embedding size only when ``embed_dim`` is
    given). Images are generated with PIL, so the snippet needs no file. A model with a ``query`` or
    ``document`` prompt is shown with ``encode_query`` / ``encode_document``.

    >>> print(usage_snippet("acme/minilm-sts", ("text",), embed_dim=384))  # doctest: +ELLIPSIS
    import embedhub
    <BLANKLINE>
    model = embedhub.load("acme/minilm-sts")
    ...
    """
    _check_name("model_id", model_id)
    mods = _check_modalities(modalities)
    if embed_dim is not None and (isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1):
        raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
    dim = str(embed_dim) if embed_dim is not None else None
    lines = ["import embedhub"]
    if "image" in mods:
        lines.append("from PIL import Image")
    lines += ["", f"model = embedhub.load({json.dumps(model_id)})"]
    roles = {k for k, v in (prompts or {}).items() if v and k in ("query", "document")}
    names = {"cosine": "cosine similarity", "dot": "dot product", "euclidean": "negative euclidean distance",
             "manhattan": "negative manhattan distance"}
    if similarity_fn_name not in names:
        raise ValueError(f"similarity_fn_name must be one of {sorted(names)}, got {similarity_fn_name!r}")
    if "text" in mods and roles:
        lines += [
            "queries = [\"Who plays an instrument?\"]",
            f"documents = {json.dumps(_TEXTS)}",
            "# each call prepends the model's own query / document prompt",
            "query_embeddings = model.encode_query(queries)",
            "document_embeddings = model.encode_document(documents)",
            "print(document_embeddings.shape)" + (f"  # (3, {dim})" if dim else ""),
            f"# {names[similarity_fn_name]} of the query with each document (the model's similarity)",
            "scores = model.similarity(query_embeddings, document_embeddings)",
            "print(scores.shape)  # (1, 3)",
        ]
    elif "text" in mods:
        norm = "one L2-normalised row per sentence" if similarity_fn_name == "cosine" else "one row per sentence"
        lines += [
            f"sentences = {json.dumps(_TEXTS)}",
            f"embeddings = model.encode(sentences)  # {norm}",
            "print(embeddings.shape)" + (f"  # (3, {dim})" if dim else ""),
            f"# {names[similarity_fn_name]} of the first sentence with the other two (the model's similarity)",
            "scores = model.similarity(embeddings[:1], embeddings[1:])",
            "print(scores.shape)  # (1, 2)",
        ]
    if "image" in mods:
        lines += [
            "",
            "# any PIL image, file path or numpy array; here one made in memory",
            "image = Image.new(\"RGB\", (224, 224), (200, 40, 40))",
        ]
    if mods == ("text", "image"):
        lines += [
            "probs = model.zero_shot(image, [\"red\", \"green\", \"blue\"])  # one probability per label",
            "print(probs.shape)  # (3,)",
            "print(round(float(probs.sum()), 4))  # 1.0",
            "image_embedding = model.encode([image])",
            "print(model.similarity(image_embedding, {}).shape)  # (1, 3)".format(
                "document_embeddings" if roles else "embeddings"),
        ]
    elif "image" in mods:
        lines += [
            "image_embedding = model.encode([image])",
            "print(image_embedding.shape)" + (f"  # (1, {dim})" if dim else ""),
        ]
    return "\n".join(lines) + "\n"


def _config_block(config: Any) -> str:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if isinstance(config, str):
        text, lang = config.strip("\n"), "yaml"
    elif isinstance(config, Mapping):
        import yaml

        try:
            json.dumps(config, allow_nan=False, default=_path_str)
            text, lang = yaml.safe_dump(json.loads(json.dumps(config, default=_path_str)), sort_keys=False), "yaml"
        except (TypeError, ValueError) as exc:
            raise ValueError(f"training_config must hold only JSON values (str, number, bool, list, dict): {exc}") \
                from exc
    else:
        raise ValueError(f"training_config must be a dict, a dataclass or YAML text, got {type(config).__name__}")
    if "```" in text:
        raise ValueError("training_config must not contain ``` (it would end the card's code block)")
    return f"```{lang}\n{text.rstrip()}\n```"


def _path_str(value: Any) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} {value!r} is not a JSON value")


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def _settings_section(prompts: Mapping[str, str], default_prompt_name: str | None, similarity_fn_name: str,
                      truncate_dim: int | None, embed_dim: int | None) -> list[str]:
    """The card's "Prompts and similarity" section: the prompts as a table, the default prompt, the
    similarity function and the Matryoshka width (empty when all are neutral)."""
    shown = {k: v for k, v in prompts.items() if v}
    if not shown and default_prompt_name is None and similarity_fn_name == "cosine" and truncate_dim is None:
        return []
    out = ["## Prompts and similarity", ""]
    if shown:
        out += ["| prompt name | prompt |", "|---|---|"]
        out += [f"| `{_cell(k)}` | `{_cell(json.dumps(v, ensure_ascii=False)[1:-1]).replace('`', chr(39))}` |"
                for k, v in shown.items()]
        out += ["", "`encode(texts, prompt_name=NAME)` prepends a prompt; `encode_query` and `encode_document` "
                    "use the `query` and `document` prompts.", ""]
    if default_prompt_name is not None:
        out += [f"`encode` applies the `{_cell(default_prompt_name)}` prompt when no prompt is given.", ""]
    out += [f"Similarity function: `{similarity_fn_name}` (`model.similarity`)."]
    if truncate_dim is not None:
        full = f" of {embed_dim}" if embed_dim else ""
        out += ["", f"Embeddings are truncated to their first {truncate_dim} dimensions{full} (Matryoshka); "
                    "pass `truncate_dim=` to `embedhub.load` or `encode` for another width."]
    return out + [""]


def _results_table(results: Sequence[Result]) -> str:
    rows = ["| task | dataset | split | metric | value |", "|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {_cell(r.task_type)} | {_cell(r.dataset_name)} (`{_cell(r.dataset_type)}`) | {_cell(r.split)} "
                    f"| {_cell(r.label)} | {r.value:.4g} |")
    return "\n".join(rows)


def _place_plot(folder: Path, plot: str | os.PathLike) -> str:
    """The plot's link relative to ``folder``; a plot outside the folder is copied into it."""
    path = Path(plot)
    if not path.is_absolute() and not path.exists():
        path = folder / path
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"plot {str(plot)!r} must be an image file ({', '.join(IMAGE_SUFFIXES)})")
    if not path.is_file():
        raise ValueError(f"plot {str(plot)!r} does not exist (looked at {path})")
    root = folder.resolve()
    if path.resolve().is_relative_to(root) and not path.is_symlink():
        return path.resolve().relative_to(root).as_posix()
    target = folder / path.name
    atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
    return path.name


def write_card(
    folder: str | os.PathLike,
    *,
    model_id: str,
    modalities: Sequence[str],
    base_model: str | Sequence[str] | None = None,
    datasets: Sequence[str] = (),
    license: str = "apache-2.0",
    tags: Sequence[str] = (),
    results: Sequence[Result] = (),
    training_config: Any = None,
    plot: str | os.PathLike | None = None,
    description: str = "",
    embed_dim: int | None = None,
    prompts: Mapping[str, str] | None = None,
    default_prompt_name: str | None = None,
    similarity_fn_name: str = "cosine",
    truncate_dim: int | None = None,
) -> Path:
    """Write ``folder/README.md``: the Hub's YAML metadata, then description, usage, results, config, plot.

    ``results`` become the ``model-index`` (one ``EvalResult`` each, ``model_name`` = ``model_id``)
    and a markdown table; ``training_config`` (a dict, a dataclass or YAML text) a ``yaml`` block;
    ``plot`` (an image file, copied into ``folder`` when it lies outside) a linked image. ``prompts``,
    ``default_prompt_name``, ``similarity_fn_name`` and ``truncate_dim`` (the model's own) are shown in a
    "Prompts and similarity" section and used by the usage snippet. A bad value raises ``ValueError``
    naming the field, before anything is written.

    >>> write_card("my-model", model_id="acme/lit-fashion", modalities=("text", "image"),
    ...            base_model="google/efficientnet-lite0", datasets=["fashion_mnist"],
    ...            results=[Result("zero-shot-image-classification", "Fashion-MNIST", "fashion_mnist",
    ...                            "accuracy", 0.71)], plot="training_curve.png")  # doctest: +SKIP
    PosixPath('my-model/README.md')
    """
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder {str(folder)!r} is not a folder; save the model there first")
    _check_name("model_id", model_id)
    mods = _check_modalities(modalities)
    if base_model is not None:
        bases = [base_model] if isinstance(base_model, str) else _check_names("base_model", base_model)
        for b in bases:
            _check_name("base_model", b)
        base_model = bases[0] if len(bases) == 1 else bases
    datasets = _check_names("datasets", datasets)
    _check_name("license", license)
    extra_tags = _check_names("tags", tags)
    if not isinstance(description, str):
        raise ValueError(f"description must be a str, got {type(description).__name__}")
    if isinstance(results, Result) or not isinstance(results, Iterable):
        raise ValueError(f"results must be a list of Result, got {results!r}")
    results = list(results)
    seen: set[tuple[str, ...]] = set()
    for i, r in enumerate(results):
        if not isinstance(r, Result):
            raise ValueError(f"results[{i}] must be an embedhub Result, got {type(r).__name__}")
        key = (r.task_type, r.dataset_type, r.split, r.metric_type, r.label)
        if key in seen:
            raise ValueError(f"results[{i}] repeats {r.label!r} ({r.metric_type}) on {r.dataset_type!r} ({r.split}); "
                             "each figure goes into the model-index once")
        seen.add(key)
    prompts = dict(prompts or {})
    for name, text in prompts.items():
        if not isinstance(name, str) or not name or not isinstance(text, str):
            raise ValueError(f"prompts must map prompt names to prompt strings, got {name!r}: {text!r}")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of the prompts {sorted(prompts)}")
    if truncate_dim is not None and (isinstance(truncate_dim, bool) or not isinstance(truncate_dim, int)
                                     or truncate_dim < 1):
        raise ValueError(f"truncate_dim must be None or a positive int, got {truncate_dim!r}")
    shown_dim = truncate_dim if truncate_dim is not None else embed_dim
    snippet = usage_snippet(model_id, mods, embed_dim=shown_dim, similarity_fn_name=similarity_fn_name,
                            prompts=prompts)
    settings = _settings_section(prompts, default_prompt_name, similarity_fn_name, truncate_dim, embed_dim)
    config = _config_block(training_config) if training_config is not None else None

    all_tags = list(dict.fromkeys(["embedhub", *(MODALITY_TAGS[m] for m in mods), *extra_tags]))
    data = ModelCardData(
        library_name="embedhub",
        pipeline_tag=pipeline_tag_for(mods),
        tags=all_tags,
        license=license,
        datasets=datasets or None,
        base_model=base_model,
        model_name=model_id,
        eval_results=[
            EvalResult(task_type=r.task_type, dataset_type=r.dataset_type, dataset_name=r.dataset_name,
                       metric_type=r.metric_type, metric_value=r.value, dataset_split=r.split,
                       metric_name=r.metric_name)
            for r in results
        ] or None,
    )
    what = " and ".join(mods)
    intro = description.strip() or (
        f"An embedhub {what} embedding model" + (
            " built on " + ", ".join(f"[{b}](https://huggingface.co/{b})"
                                     for b in ([base_model] if isinstance(base_model, str) else base_model))
            if base_model else "") + "."
    )
    body = [f"# {model_id}", "", intro, "", "## Usage", "", "```bash", "pip install embedhub", "```", "",
            "```python", snippet.rstrip(), "```", "", *settings]
    if results:
        body += ["## Results", "", _results_table(results), ""]
    if config is not None:
        body += ["## Training config", "", config, ""]
    if plot is not None:
        body += ["## Training curve", "", f"![training curve]({_place_plot(folder, plot)})", ""]
    card = ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body))
    return atomic_write(folder / CARD_NAME, str(card))


def read_card(folder: str | os.PathLike) -> ModelCard:
    """The model card of ``folder`` parsed by ``huggingface_hub.ModelCard``.

    >>> read_card("my-model").data.pipeline_tag  # doctest: +SKIP
    'sentence-similarity'
    """
    from huggingface_hub import ModelCard

    path = Path(folder) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} holds no model card ({CARD_NAME}); write one with write_card")
    return ModelCard.load(path)


def card_results(card: ModelCard) -> list[Result]:
    """The figures of a card's ``model-index`` as :class:`Result` objects.

    >>> [(r.metric_type, r.value) for r in card_results(read_card("my-model"))]  # doctest: +SKIP
    [('spearman', 82.03)]
    """
    return [
        Result(task_type=e.task_type, dataset_name=e.dataset_name, dataset_type=e.dataset_type,
               metric_type=e.metric_type, value=e.metric_value, split=e.dataset_split or "test",
               metric_name=e.metric_name)
        for e in (card.data.eval_results or [])
    ]


def linked_images(folder: str | os.PathLike) -> list[str]:
    """Image files inside ``folder`` that its card links (relative POSIX paths, sorted).

    Links to URLs, to files outside the folder, hidden files and symlinks are left out.

    >>> linked_images("my-model")  # doctest: +SKIP
    ['training_curve.png']
    """
    folder = Path(folder)
    card = folder / CARD_NAME
    if not card.is_file():
        return []
    root = folder.resolve()
    out = set()
    for link in IMAGE_LINK.findall(card.read_text(encoding="utf-8", errors="replace")):
        if "://" in link or link.startswith(("/", "#", "data:")):
            continue
        path = folder / link
        if path.suffix.lower() not in IMAGE_SUFFIXES or path.is_symlink() or not path.is_file():
            continue
        rel = path.resolve()
        if not rel.is_relative_to(root):
            continue
        rel_posix = rel.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel_posix.split("/")):
            continue
        out.add(rel_posix)
    return sorted(out)
