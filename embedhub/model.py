"""The model users get from :func:`embedhub.load`."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import string
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from embedhub.errors import ArgumentError, InputError, ModalityError, PublishError, WeightsError
from embedhub.modules.backends import Runner, TorchRunner
from embedhub.modules.batching import check_batching, check_positive_int, plan_batches, text_windows
from embedhub.modules.inputs import MAX_IMAGE_PIXELS, as_items, load_image, modality_of
from embedhub.modules.pool import pooled
from embedhub.modules.preprocess import ImagePreprocessor, token_lengths
from embedhub.modules.quantize import check_precision, quantize_embeddings
from embedhub.modules.similarity import check_similarity_fn, similarity_matrix
from embedhub.modules.similarity import similarity_pairwise as _pairwise

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
#: prompt names every model has, empty unless the model sets them (as in sentence-transformers)
DEFAULT_PROMPTS: dict[str, str] = {"query": "", "document": ""}
#: the prompt names ``encode_document`` tries, in order (as sentence-transformers does)
DOCUMENT_PROMPT_NAMES: tuple[str, ...] = ("document", "passage", "corpus")
#: a prompt is a string of at most this many characters
MAX_PROMPT_CHARS = 1 << 14


class _ModelAware:
    """A method that also works on the class: ``EmbeddingModel.similarity(a, b)`` (cosine) and
    ``model.similarity(a, b)`` (the model's own similarity function)."""

    def __init__(self, func: Any):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        bound = functools.partial(self.func, obj)
        functools.update_wrapper(bound, self.func)
        return bound


def check_truncate_dim(truncate_dim: Any, width: int, *, what: str = "truncate_dim") -> int | None:
    """``truncate_dim`` (``None``, or an int from 1 to ``width``); a ``ValueError`` naming the bounds otherwise.

    >>> check_truncate_dim(64, 384)
    64
    """
    if truncate_dim is None:
        return None
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer)):
        raise ArgumentError(f"{what} must be None or an integer from 1 to {width}; got {truncate_dim!r}")
    if not 1 <= int(truncate_dim) <= width:
        raise ArgumentError(f"{what} must be from 1 to {width} (the model's embedding width); got {truncate_dim}")
    return int(truncate_dim)


def check_prompts(prompts: Any) -> dict[str, str]:
    """``prompts`` as a ``{name: prompt}`` dict of bounded strings; a ``ValueError`` naming the bad entry."""
    if prompts is None:
        return {}
    if not isinstance(prompts, Mapping):
        raise ArgumentError(f"prompts must be a dict of prompt name -> prompt string; got a {type(prompts).__name__}")
    out = {}
    for name, text in prompts.items():
        if not isinstance(name, str) or not name:
            raise ArgumentError(f"prompt names must be non-empty strings; got {name!r}")
        if not isinstance(text, str) or len(text) > MAX_PROMPT_CHARS:
            found = f"{len(text)} characters" if isinstance(text, str) else type(text).__name__
            raise ArgumentError(f"prompts[{name!r}] must be a string of at most {MAX_PROMPT_CHARS} characters; "
                             f"got {found}")
        out[name] = text
    return out


class EmbeddingModel:
    """Embeds text and/or images into one space.

    >>> model = embedhub.load("all-MiniLM-L6-v2")           # doctest: +SKIP
    >>> model.encode(["A man plays guitar.", "A cat sleeps."]).shape  # doctest: +SKIP
    (2, 384)
    """

    def __init__(
        self,
        towers: dict[str, nn.Module | Runner],
        preprocessors: dict[str, Any],
        *,
        embed_dim: int,
        name: str,
        format: str,
        folder: Path | None = None,
        logit_scale: float | None = None,
        templates: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        spec: dict[str, Any] | None = None,
        repo_id: str | None = None,
        revision: str | None = None,
        prompts: Mapping[str, str] | None = None,
        default_prompt_name: str | None = None,
        similarity_fn_name: str | None = None,
        truncate_dim: int | None = None,
        logit_bias: float | None = None,
        normalized: bool | None = None,
        routes: Mapping[str, Mapping[str, tuple[Any, Any]]] | None = None,
        default_route: str | None = None,
    ):
        missing = [m for m in towers if m not in preprocessors]
        if missing or not towers:
            raise ArgumentError(f"EmbeddingModel needs a tower and a preprocessor per modality; "
                             f"{'no towers' if not towers else 'no preprocessor for ' + ', '.join(missing)}")
        modules = {m: t for m, t in towers.items() if isinstance(t, nn.Module)}
        #: the torch towers (empty for a model that runs only on ONNX Runtime)
        self.towers = nn.ModuleDict(modules)
        self.preprocessors = dict(preprocessors)
        self.embed_dim = int(embed_dim)
        self.name = name
        self.format = format
        self.folder = folder
        self.logit_scale = logit_scale
        self.templates = tuple(templates) if templates else DEFAULT_TEMPLATES
        self.device = torch.device(device)
        self.dtype = dtype
        self._spec = spec
        #: the Hub repo the model came from (``None`` for a local folder or an in-memory model)
        self.repo_id = repo_id
        #: the resolved revision (a commit hash when the folder is a Hub snapshot) or the one asked for
        self.revision = revision
        self._fingerprint: Any = None
        self.towers.to(device=self.device, dtype=dtype).eval()
        self._runners: dict[str, Runner] = {
            m: TorchRunner(t, self.device, dtype) if isinstance(t, nn.Module) else t for m, t in towers.items()
        }
        self.backend = "torch" if modules else next(iter(self._runners.values())).backend
        #: named prompts; ``query`` and ``document`` are always there (empty unless the model sets them)
        self.prompts: dict[str, str] = {**DEFAULT_PROMPTS, **check_prompts(prompts)}
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ArgumentError(f"default_prompt_name {default_prompt_name!r} is not one of the model's prompts "
                             f"{sorted(self.prompts)}")
        #: the prompt ``encode`` applies when neither ``prompt`` nor ``prompt_name`` is given
        self.default_prompt_name = default_prompt_name
        #: "cosine", "dot", "euclidean" or "manhattan": what :meth:`similarity` computes
        self.similarity_fn_name = check_similarity_fn(similarity_fn_name or "cosine")
        #: the width ``encode`` truncates to by default (``None``: the full :attr:`embed_dim`)
        self.truncate_dim = check_truncate_dim(truncate_dim, self.embed_dim)
        #: SigLIP's learned bias (``None`` for CLIP): zero-shot uses ``sigmoid(logit_scale * cos + logit_bias)``
        self.logit_bias = None if logit_bias is None else float(logit_bias)
        #: whether the towers end in an L2 normalisation (a Normalize module)
        self.normalized = self._ends_normalized() if normalized is None else bool(normalized)
        self._routes: dict[str, tuple[dict[str, Runner], dict[str, Any]]] | None = None
        #: the towers of each route (task -> modality -> tower), when the model routes by task
        self.route_towers = nn.ModuleDict()
        self.default_route = default_route
        if routes is not None:
            self._set_routes(routes, default_route)

    # ------------------------------------------------------------------ properties
    @property
    def modalities(self) -> tuple[str, ...]:
        """The input kinds this model embeds: ``("text",)``, ``("image",)`` or both."""
        return tuple(m for m in ("text", "image") if m in self._runners)

    @property
    def max_seq_length(self) -> int | None:
        """Texts longer than this many tokens are truncated; ``None`` for image-only models."""
        pre = self.preprocessors.get("text")
        return pre.max_length if pre is not None else None

    @property
    def routes(self) -> tuple[str, ...]:
        """The task names of a routed model (``("query", "document")``); empty for other models."""
        return tuple(self._routes) if self._routes else ()

    def _ends_normalized(self) -> bool:
        """Whether every tower ends in an L2 normalisation (its head's Normalize module)."""
        def one(runner: Any) -> bool:
            module = getattr(runner, "module", runner)
            head = getattr(module, "head", None)
            spec = head.spec() if hasattr(head, "spec") else {}
            return bool(spec.get("normalize"))

        return bool(self._runners) and all(one(r) for r in self._runners.values())

    def _set_routes(self, routes: Mapping[str, Mapping[str, tuple[Any, Any]]], default_route: str | None) -> None:
        if not isinstance(routes, Mapping) or not routes:
            raise ArgumentError("routes must be a non-empty dict of task name -> {modality: (tower, preprocessor)}")
        if default_route is not None and default_route not in routes:
            raise ArgumentError(f"default_route {default_route!r} is not one of the routes {sorted(routes)}")
        built: dict[str, tuple[dict[str, Runner], dict[str, Any]]] = {}
        for task, route in routes.items():
            if not isinstance(task, str) or not task or "." in task:
                raise ArgumentError(f"route names must be non-empty strings without '.'; got {task!r}")
            if not isinstance(route, Mapping) or not route or any(m not in ("text", "image") for m in route):
                raise ArgumentError(f"route {task!r} must map 'text' and/or 'image' to (tower, preprocessor)")
            runners, pres, modules = {}, {}, nn.ModuleDict()
            for modality, pair in route.items():
                tower, pre = pair
                if isinstance(tower, nn.Module):
                    tower.to(device=self.device, dtype=self.dtype).eval()
                    modules[modality] = tower
                    runners[modality] = TorchRunner(tower, self.device, self.dtype)
                else:
                    runners[modality] = tower
                pres[modality] = pre
            self.route_towers[task] = modules
            built[task] = (runners, pres)
        self._routes = built

    def _route(self, task: str | None) -> tuple[dict[str, Runner], dict[str, Any]]:
        """The runners and preprocessors of ``task`` (sentence-transformers' Router: the task's route, else
        the default route; a task that names no route is an error)."""
        if task is not None and not isinstance(task, str):
            raise ArgumentError(f"task must be None or a string such as 'query' or 'document'; got {task!r}")
        if self._routes is None:
            return self._runners, self.preprocessors
        if task is not None and task in self._routes:
            return self._routes[task]
        if task is not None:
            raise ArgumentError(f"{self.name} has no route for task {task!r}; its routes are {sorted(self._routes)}")
        if self.default_route is None:
            raise ArgumentError(f"{self.name} routes by task and has no default route: pass task= one of "
                             f"{sorted(self._routes)} (or use encode_query / encode_document)")
        return self._routes[self.default_route]

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """The prompt a call applies: ``prompt``, else the prompt named ``prompt_name`` (an unknown name is an
        error listing the model's prompts), else the default prompt; as sentence-transformers resolves it."""
        if prompt is not None:
            if not isinstance(prompt, str) or len(prompt) > MAX_PROMPT_CHARS:
                found = f"{len(prompt)} characters" if isinstance(prompt, str) else f"a {type(prompt).__name__}"
                raise ArgumentError(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters; got {found}")
            if prompt_name is not None:
                import logging

                logging.getLogger("embedhub").warning(
                    "Provide either a `prompt`, a `prompt_name`, or neither, but not both. Ignoring the "
                    "`prompt_name` in favor of `prompt`.")
            return prompt
        if prompt_name is not None:
            if not isinstance(prompt_name, str) or prompt_name not in self.prompts:
                shown = ", ".join(f"{k!r}: {v!r}" for k, v in self.prompts.items())
                raise ArgumentError(f"prompt_name {prompt_name!r} is not one of {self.name}'s prompts {{{shown}}}")
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    def default_normalize(self) -> bool:
        """What ``normalize=None`` means for this model: L2-normalise when its similarity is cosine or its
        towers end in a normalisation; dot, euclidean and manhattan models without one come back raw."""
        return self.similarity_fn_name == "cosine" or self.normalized

    def fingerprint_for(
        self,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        precision: str = "float32",
        normalize: bool | None = None,
    ) -> Any:
        """The fingerprint of the vectors ``encode`` returns with these arguments: the ``id`` covers the
        width (truncation), precision and normalisation; the prompt role is recorded as ``role`` but is not
        part of the id, so query and document vectors of one model stay comparable.

        >>> model.fingerprint_for(prompt_name="query", precision="binary").role  # doctest: +SKIP
        'query'
        """
        from dataclasses import replace

        precision = check_precision(precision)
        dim = self._width(truncate_dim)
        if normalize is not None and not isinstance(normalize, bool):
            raise ArgumentError(f"normalize must be None, True or False; got {normalize!r}")
        text = self._resolve_prompt(prompt, prompt_name)  # checks the name
        if prompt is not None:
            role = "prompt:" + hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        else:
            role = prompt_name if prompt_name is not None else (self.default_prompt_name if text else None)
        base = self.fingerprint
        norm = self.default_normalize() if normalize is None else normalize
        if normalize is None and self.normalized and dim < self.embed_dim:
            norm = False  # the first dims of the model's unit vectors (encode's "full" case): not unit rows
        return replace(base, dim=int(dim), precision=precision, role=role, normalized=bool(norm))

    @property
    def fingerprint(self) -> Any:
        """Provenance of the vectors this model makes (:class:`embedhub.Fingerprint`): a short stable
        ``id`` plus its parts (source, revision, format, backend, dtype, pooling, normalisation, dimension).

        >>> model.fingerprint.id  # doctest: +SKIP
        'eh1-3f9a0c2b7d4e5a61'
        """
        if self._fingerprint is None:
            from embedhub.store.fingerprint import fingerprint_of

            self._fingerprint = fingerprint_of(self)
        return self._fingerprint

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(name={self.name!r}, format={self.format!r}, backend={self.backend!r}, "
            f"modalities={self.modalities}, embed_dim={self.embed_dim}, device={str(self.device)!r})"
        )

    # ------------------------------------------------------------------ encoding
    @pooled
    def encode(
        self,
        inputs: Any,
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        task: str | None = None,
        batch_size: int = 32,
        normalize: bool | None = None,
        truncate_dim: int | None = None,
        precision: str = "float32",
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] = "numpy",
        max_tokens: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts (``str``) and/or images (``PIL.Image``, uint8 arrays, ``Path``, ``bytes``).

        Returns ``(N, D)`` in input order (``(D,)`` for a single input); as numpy, or a CPU
        ``torch.Tensor`` with ``convert_to="torch"``. Texts are sorted by token length and
        batched (``batch_size`` rows, and at most ``max_tokens`` padded tokens when given);
        longer than :attr:`max_seq_length` tokens they are truncated. Texts are tokenised a
        window of a few thousand at a time and every batch is written straight into one output
        array, so memory beyond the output does not grow with the number of inputs.
        ``pool=`` (from :meth:`start_multi_process_pool`) or a list of devices (``device=["cuda:0",
        "cuda:1"]``) encodes in several processes, in chunks of whole batches (``chunk_size`` inputs),
        with exactly the single-process vectors.

        As in sentence-transformers: ``prompt`` (a string) or ``prompt_name`` (one of :attr:`prompts`) is
        prepended to every text, else the :attr:`default_prompt_name`'s prompt; ``task`` picks the route of a
        routed model. ``normalize=None`` is what the model defines (:meth:`default_normalize`);
        ``truncate_dim`` (default: :attr:`truncate_dim`) keeps the first dims, before normalising;
        ``precision`` ("float32", "int8", "uint8", "binary", "ubinary") quantises the result as
        :func:`embedhub.quantize_embeddings` does, calibrated on the whole call's embeddings.

        >>> model.encode("hello").shape        # doctest: +SKIP
        (384,)
        >>> model.encode(["what is up?"], prompt_name="query", precision="ubinary").dtype  # doctest: +SKIP
        dtype('uint8')
        """
        options = dict(locals())
        del options["self"], options["inputs"]
        return self._encode(inputs, None, **options)

    @pooled
    def encode_text(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray | torch.Tensor:
        """:meth:`encode` restricted to text: anything else is an error naming its index."""
        return self._encode(texts, "text", **kwargs)

    @pooled
    def encode_image(self, images: Any, **kwargs: Any) -> np.ndarray | torch.Tensor:
        """:meth:`encode` restricted to images: anything else is an error naming its index."""
        return self._encode(images, "image", **kwargs)

    def encode_query(
        self, inputs: Any, *, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any
    ) -> np.ndarray | torch.Tensor:
        """:meth:`encode` for search queries, as sentence-transformers' ``encode_query``: the ``query`` prompt
        when neither ``prompt`` nor ``prompt_name`` is given (``""`` unless the model sets one, which keeps the
        default prompt out), and ``task="query"`` (the query route of a routed model).

        >>> model.encode_query(["how do plants grow?"]).shape  # doctest: +SKIP
        (1, 384)
        """
        return self._encode_role(inputs, "query", ("query",), prompt_name, prompt, kwargs)

    def encode_document(
        self, inputs: Any, *, prompt_name: str | None = None, prompt: str | None = None, **kwargs: Any
    ) -> np.ndarray | torch.Tensor:
        """:meth:`encode` for documents, as sentence-transformers' ``encode_document``: the first of the
        ``document``, ``passage``, ``corpus`` prompts the model has when neither ``prompt`` nor ``prompt_name``
        is given, and ``task="document"``.

        >>> model.encode_document(["Plants grow from seeds."]).shape  # doctest: +SKIP
        (1, 384)
        """
        return self._encode_role(inputs, "document", DOCUMENT_PROMPT_NAMES, prompt_name, prompt, kwargs)

    def _encode_role(self, inputs: Any, task: str, names: Sequence[str], prompt_name: str | None, prompt: str | None,
                     kwargs: dict[str, Any]) -> np.ndarray | torch.Tensor:
        """:meth:`encode` for one side of a search (``task``): the first prompt of ``names`` the model has when
        neither ``prompt`` nor ``prompt_name`` is given, and ``task`` unless ``kwargs`` names another."""
        implicit = prompt_name is None and prompt is None
        if implicit:
            prompt_name = next((n for n in names if n in self.prompts), None)
        kwargs.setdefault("task", task)
        if any(k in kwargs for k in ("pool", "device", "chunk_size")):  # several processes: through encode
            return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)
        return self._encode(inputs, None, prompt_name=prompt_name, prompt=prompt, _role_prompt=implicit, **kwargs)

    def _encode(self, inputs: Any, only: str | None, *, _role_prompt: bool = False,
                **options: Any) -> np.ndarray | torch.Tensor:
        # the keywords of encode and their defaults: one list, encode's signature
        given = _encode_signature().bind(self, inputs, **options)
        given.apply_defaults()
        (prompt_name, prompt, task, batch_size, normalize, truncate_dim, precision, show_progress_bar, convert_to,
         max_tokens, max_image_pixels) = (given.arguments[k] for k in (
            "prompt_name", "prompt", "task", "batch_size", "normalize", "truncate_dim", "precision",
            "show_progress_bar", "convert_to", "max_tokens", "max_image_pixels"))  # by name: order-proof
        # every argument is checked once, before any input is read or any work starts
        batch_size, max_tokens = check_batching(batch_size, max_tokens)
        max_image_pixels = check_positive_int("max_image_pixels", max_image_pixels)
        if convert_to not in ("numpy", "torch"):
            raise ArgumentError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if normalize is not None and not isinstance(normalize, (bool, np.bool_)):
            raise ArgumentError(f"normalize must be None (the model's own), True or False; got {normalize!r}")
        precision = check_precision(precision)
        dim = self._width(truncate_dim)
        explicit_prompt = not _role_prompt and (prompt is not None or prompt_name is not None)
        text_prompt = self._resolve_prompt(prompt, prompt_name) or None
        runners, preprocessors = self._route(task)
        modalities = tuple(m for m in ("text", "image") if m in runners)
        if only is not None and only not in runners:
            raise ModalityError(f"{self.name} has no {only} tower; it embeds only {' and '.join(modalities)}")
        items, single = as_items(inputs)
        kinds = [modality_of(x, i) for i, x in enumerate(items)]
        for i, kind in enumerate(kinds):
            if only is not None and kind != only:
                raise ModalityError(f"inputs[{i}] is {kind}; encode_{only} takes {only} only", index=i)
            if kind not in runners:
                raise ModalityError(
                    f"inputs[{i}] is {kind}, but {self.name} embeds only {' and '.join(modalities)}"
                , index=i)
            if kind == "image" and explicit_prompt:
                raise ModalityError(
                    f"inputs[{i}] is an image, but a prompt ({'prompt' if prompt is not None else 'prompt_name'}) "
                    "was given: prompts are prepended to texts only; encode images without one", index=i)
        if precision.endswith("int8") and len(items) == 1:
            raise InputError(f"precision={precision!r} calibrates each dimension's range on the embeddings of the "
                             "call and needs at least 2 inputs; encode more at once, or encode in float32 and use "
                             "embedhub.quantize_embeddings(..., ranges=...) with ranges from a representative set")
        used = [m for m in modalities if m in kinds]
        norm = self._norm_mode(normalize, dim, used, runners)
        if text_prompt and "text" in used:
            self._check_prompt_exclusion(runners["text"])
        out = np.empty((len(items), dim), dtype=np.float32)
        for modality in used:
            if len(used) == 1:
                index = np.arange(len(items), dtype=np.int64)
            else:
                index = np.fromiter((i for i, k in enumerate(kinds) if k == modality), dtype=np.int64)
            encode = self._encode_texts if modality == "text" else self._encode_images
            encode(
                items,
                index,
                out,
                pre=preprocessors[modality],
                run=runners[modality],
                prompt=text_prompt,
                batch_size=batch_size,
                max_tokens=max_tokens,
                normalize=norm,
                show_progress_bar=show_progress_bar,
                max_image_pixels=max_image_pixels,
            )
        result: np.ndarray = out
        if precision != "float32":
            result = quantize_embeddings(out, precision)
        final = torch.from_numpy(result) if convert_to == "torch" else result
        return final[0] if single else final

    def stages(self, modality: str = "text", *, task: str | None = None, prompt_name: str | None = None,
               prompt: str | None = None, role: str | None = None) -> EncodeStages:
        """:meth:`encode`'s steps apart, for a server batching the inputs of many calls together:
        ``prepare`` (tokenise texts or decode images: any thread), ``run`` (one batch on the model: one thread
        at a time) and ``finish`` (truncate, normalise). ``role`` ("query" or "document") picks the prompt
        and task as :meth:`encode_query` / :meth:`encode_document` do; the other keywords are :meth:`encode`'s.
        ``finish(run(prepare(x)))`` equals ``encode(x)`` row for row.

        >>> st = model.stages("text")  # doctest: +SKIP
        >>> st.finish(st.run(st.prepare(["a cat"])))[0].shape  # doctest: +SKIP
        (384,)
        """
        if modality not in ("text", "image"):
            raise ArgumentError(f"modality must be 'text' or 'image', got {modality!r}")
        implicit = False
        if role is not None:
            names = {"query": ("query",), "document": DOCUMENT_PROMPT_NAMES}.get(role)
            if names is None:
                raise ArgumentError(f"role must be 'query' or 'document', got {role!r}")
            implicit = prompt_name is None and prompt is None
            if implicit:
                prompt_name = next((n for n in names if n in self.prompts), None)
            task = role if task is None and self._routes is not None and role in self._routes else task
        if modality == "image" and not implicit and (prompt is not None or prompt_name is not None):
            raise ModalityError("a prompt was given for images: prompts are prepended to texts only")
        text_prompt = self._resolve_prompt(prompt, prompt_name) or None if modality == "text" else None
        runners, preprocessors = self._route(task)
        if modality not in runners:
            have = " and ".join(m for m in ("text", "image") if m in runners)
            raise ModalityError(f"{self.name} has no {modality} tower; it embeds only {have}")
        extra: dict[str, np.ndarray] = {}
        if text_prompt:
            self._check_prompt_exclusion(runners["text"])
            if self._excludes_prompt(runners["text"]):
                extra["prompt_length"] = np.asarray(self._prompt_length(preprocessors["text"], text_prompt),
                                                    dtype=np.int64)
        stages = EncodeStages(self, modality, runners[modality], preprocessors[modality], text_prompt, extra,
                              task if self._routes is not None else None)
        stages.prompt_name, stages.explicit_prompt = prompt_name, prompt
        return stages

    def _width(self, truncate_dim: Any) -> int:
        """The width vectors come out at: ``truncate_dim`` (checked), else the model's own, else ``embed_dim``."""
        dim = check_truncate_dim(truncate_dim, self.embed_dim)
        return dim if dim is not None else (self.truncate_dim or self.embed_dim)

    def _norm_mode(self, normalize: bool | None, dim: int, modalities: Sequence[str],
                   runners: Mapping[str, Any]) -> bool | str:
        """What ``normalize`` means at width ``dim``: True, False (checked possible for ``runners``), or
        ``"full"``: the model's Normalize acts on the full width and truncation keeps those values (the peer's)."""
        norm: bool | str = self.default_normalize() if normalize is None else bool(normalize)
        if not norm:
            self._check_unnormalized_output(modalities, runners)
        elif normalize is None and self.normalized and dim < self.embed_dim:
            norm = "full"
        return norm

    def _check_unnormalized_output(self, modalities: Sequence[str], runners: Mapping[str, Any] | None = None) -> None:
        """``normalize=False`` cannot be honoured by an ONNX graph that L2-normalises inside."""
        runners = self._runners if runners is None else runners
        for modality in modalities:
            runner = runners[modality]
            if getattr(runner, "normalized_output", False):
                raise ArgumentError(
                    f"normalize=False cannot be honoured: the ONNX graph of {self.name}'s {modality} tower "
                    f"({getattr(runner, 'path', 'onnx')}) L2-normalises its output inside, as older exports do; "
                    "re-export the model (`embedhub export MODEL --output DIR`) to get a graph with unnormalised "
                    "output, or load it with backend='torch'"
                )

    @staticmethod
    def _excludes_prompt(runner: Any) -> bool:
        """Whether the text tower pools without the prompt's tokens (``include_prompt: false``)."""
        module = getattr(runner, "module", runner)
        return getattr(getattr(module, "pooling", None), "include_prompt", True) is False

    def _check_prompt_exclusion(self, runner: Any) -> None:
        if self._excludes_prompt(runner) and not isinstance(runner, TorchRunner):
            raise ArgumentError(f"{self.name}'s text pooling leaves the prompt's tokens out (include_prompt: false), "
                             f"which its {runner.backend} graph cannot do; load it with backend='torch'")

    def _progress(self, modality: str, total: int, batch_size: int, show_progress_bar: bool | None):
        from tqdm.auto import tqdm

        disable = (not show_progress_bar) if show_progress_bar is not None else (total <= batch_size or None)
        return tqdm(total=total, desc=f"embedding {modality}", unit=modality, disable=disable)

    def _write(self, out: np.ndarray, rows: np.ndarray, emb: torch.Tensor, modality: str,
               normalize: bool | str) -> None:
        """One batch's embeddings into their rows of ``out``: truncated to ``out``'s width, then normalised
        when asked (``"full"``: normalised at the full width, then truncated, as a model ending in a Normalize
        module gives them)."""
        self._check_batch(emb, rows, modality)
        out[rows] = _shape_rows(emb, out.shape[1], normalize).cpu().numpy()

    def _check_batch(self, emb: torch.Tensor, rows: np.ndarray, modality: str) -> None:
        """A tower's output for the inputs ``rows``: shape ``(len(rows), embed_dim)`` and finite, or an error."""
        if emb.ndim != 2 or emb.shape[0] != len(rows) or emb.shape[1] != self.embed_dim:
            raise RuntimeError(
                f"{modality} tower returned shape {tuple(emb.shape)} for a batch of {len(rows)}; "
                f"expected ({len(rows)}, {self.embed_dim}) (embed_dim from the config)"
            )
        finite = torch.isfinite(emb).all(dim=-1)
        if not bool(finite.all()):  # one reduction per batch; the rows are looked up only on failure
            self._non_finite(rows, finite, modality)

    def _non_finite(self, rows: np.ndarray, finite: torch.Tensor, modality: str) -> None:
        """A :class:`WeightsError` naming the inputs whose embeddings hold NaN or Inf, and the model."""
        bad = sorted(int(i) for i in np.asarray(rows)[~finite.cpu().numpy()])
        shown = ", ".join(f"inputs[{i}]" for i in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        runner = self._runners.get(modality)
        where = getattr(runner, "path", None)
        backend = getattr(runner, "backend", self.backend)
        hint = ("; or float16 overflows on these inputs (load with dtype='float32')"
                if self.dtype in (torch.float16, torch.bfloat16) and backend == "torch" else "")
        raise WeightsError(
            f"{self.name}: the {modality} tower ({backend}{f', {where}' if where else ''}) returned NaN or "
            f"infinite values for {shown}; its weights or graph hold non-finite values{hint}"
        )

    @staticmethod
    def _prompt_length(pre: Any, prompt: str) -> int:
        """The number of leading tokens the prompt takes in a prompted text, as sentence-transformers counts
        them: the prompt tokenised alone, less a trailing special token (its end-of-text or separator)."""
        ids = pre.tokenize([prompt])[0]
        length = len(ids)
        tok = getattr(pre, "tokenizer", None)
        specials: set[int] = set()
        if tok is not None and hasattr(tok, "get_added_tokens_decoder"):
            specials = {int(i) for i, t in tok.get_added_tokens_decoder().items() if getattr(t, "special", False)}
        if ids and ids[-1] in specials:
            length -= 1
        return length

    def _encode_texts(
        self, items, index, out, *, pre, run, prompt, batch_size, max_tokens, normalize, show_progress_bar,
        max_image_pixels,
    ) -> None:
        extra: dict[str, np.ndarray] = {}
        if prompt and self._excludes_prompt(run):
            extra["prompt_length"] = np.asarray(self._prompt_length(pre, prompt), dtype=np.int64)
        with self._progress("text", len(index), batch_size, show_progress_bar) as bar:
            for window in text_windows(len(index), batch_size):
                rows = index[window.start : window.stop]
                try:
                    texts = [items[i] for i in rows]
                    ids = pre.tokenize([prompt + t for t in texts] if prompt else texts)
                except InputError as exc:  # about a text of this window: name it by its place in the inputs
                    if exc.index is None or not 0 <= exc.index < len(rows):
                        raise
                    at = int(rows[exc.index])
                    raise InputError(f"inputs[{at}]: {exc.detail}", index=at) from None
                for batch_rows in plan_batches(token_lengths(ids), batch_size, max_tokens):
                    batch = pre.collate([ids[r] for r in batch_rows])
                    emb = run({**batch, **extra} if extra else batch)
                    self._write(out, rows[batch_rows], emb, "text", normalize)
                    bar.update(len(batch_rows))
                del ids  # before the next window is tokenised: one window of ids at a time

    def _encode_images(
        self, items, index, out, *, pre, run, prompt, batch_size, max_tokens, normalize, show_progress_bar,
        max_image_pixels,
    ) -> None:
        with self._progress("image", len(index), batch_size, show_progress_bar) as bar:
            for start in range(0, len(index), batch_size):
                rows = index[start : start + batch_size]
                images = [load_image(items[i], int(i), max_pixels=max_image_pixels) for i in rows]
                batch = pre(images, indices=rows) if isinstance(pre, ImagePreprocessor) else pre(images)
                self._write(out, rows, run(batch), "image", normalize)
                bar.update(len(rows))

    # ------------------------------------------------------------------ scores
    @_ModelAware
    def similarity(self: EmbeddingModel | None, a: Any, b: Any) -> np.ndarray:
        """Score matrix ``(len(a), len(b))`` of two embedding arrays under the model's
        :attr:`similarity_fn_name` (sentence-transformers' numbers: cosine, dot, or negative euclidean /
        manhattan distances); called on the class, cosine.

        >>> EmbeddingModel.similarity(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
        array([[1., 0.],
               [0., 1.]], dtype=float32)
        """
        return similarity_matrix(a, b, self.similarity_fn_name if self is not None else "cosine")

    @_ModelAware
    def similarity_pairwise(self: EmbeddingModel | None, a: Any, b: Any) -> np.ndarray:
        """Scores ``(N,)`` of ``a[i]`` against ``b[i]`` under the model's :attr:`similarity_fn_name`
        (called on the class, cosine).

        >>> EmbeddingModel.similarity_pairwise(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
        array([1., 1.], dtype=float32)
        """
        return _pairwise(a, b, self.similarity_fn_name if self is not None else "cosine")

    def zero_shot(
        self,
        images: Any,
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Per-label probabilities ``(N, L)`` (``(L,)`` for one image), as the model's own library gives them.

        Each label's text embedding is the renormalised mean over ``templates`` (each with exactly
        one ``{}`` for the label and no other replacement field; default: the model's own, else
        ``"a photo of a {}."``); probabilities are ``softmax(logit_scale * cos)`` over the labels (CLIP),
        or, for a model with a :attr:`logit_bias` (SigLIP), ``sigmoid(logit_scale * cos + logit_bias)`` for
        each label on its own (they need not add up to 1). ``labels`` and
        ``templates`` are lists: a single ``str`` is refused, not read as one label per character.

        >>> model.zero_shot(img, ["cat", "dog"])  # doctest: +SKIP
        array([0.97, 0.03], dtype=float32)
        """
        batch_size, _ = check_batching(batch_size, None)
        if "image" not in self._runners or "text" not in self._runners:
            raise ModalityError(f"zero_shot needs a text and an image tower; {self.name} has {self.modalities}")
        labels = _string_list("labels", labels, "label", example="['cat', 'dog']")
        if templates is None:
            templates = list(self.templates)
        else:
            templates = _string_list("templates", templates, "template", example="['a photo of a {}.']")
        for t in templates:
            check_template(t)
        from embedhub.modules.prompts import average_templates, template_prompts

        # cosines of unit rows, whatever the model's own similarity or default normalisation
        text = self.encode_text(template_prompts(labels, templates), batch_size=batch_size, convert_to="torch",
                                normalize=True)
        classes = average_templates(text, len(labels))
        img = self.encode_image(images, batch_size=batch_size, convert_to="torch", normalize=True)
        logits = (self.logit_scale or 100.0) * (img @ classes.T)
        if self.logit_bias is not None:
            return torch.sigmoid(logits + self.logit_bias).numpy()
        return torch.softmax(logits, dim=-1).numpy()

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Save the model into ``folder`` (new, empty, or a folder this model was saved to before).

        Models whose towers are registered tower kinds (loaded from embedhub or sentence-transformers
        folders, or trained by the recipes) are written in embedhub's format: ``embedhub_config.json``,
        safetensors weights, tokenizer files; a text model is also written in sentence-transformers'
        layout, so ``SentenceTransformer(folder)`` loads it. Models embedhub cannot rebuild from a config
        (open_clip and transformers CLIP towers, ONNX-only models) are saved by copying the files their
        own format needs from the folder they were loaded from. Nothing pickled is ever written.

        >>> model.save_pretrained("my-model")  # doctest: +SKIP
        PosixPath('my-model')
        """
        from embedhub.formats.registry import can_save_torch, save_embedhub

        try:
            if can_save_torch(self):
                return save_embedhub(self, Path(folder))
            return self._copy_source_files(Path(folder))
        except OSError as exc:
            if isinstance(exc, FileExistsError) and exc.errno is None:
                raise  # embedhub's own refusal to replace files it did not write
            raise PublishError(f"cannot write the model to {folder}: {exc.strerror or exc} "
                               f"({exc.filename or folder}); nothing was written") from exc

    def _copy_source_files(self, folder: Path) -> Path:
        import shutil
        import tempfile

        from embedhub._io.manifest import COPIED_LEGACY, has_record, open_record, record, switch_folder
        from embedhub.formats.registry import detect

        if self.folder is None:
            kinds = ", ".join(type(getattr(r, "module", r)).__name__ for r in self._runners.values())
            raise PublishError(
                f"{self.name}: its towers ({kinds}) are not "
                "registered tower kinds and it was not loaded from a folder, so there is nothing to save; register "
                "the tower classes with embedhub.modules.register_tower"
            )
        fmt = detect(self.folder)
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise FileExistsError(f"{folder} exists and is not a folder; choose a new or empty folder to save into")
        legacy = COPIED_LEGACY
        if folder.is_dir() and any(folder.iterdir()) and not has_record(folder):
            try:  # a model folder of the same format that another library wrote: its model files are exactly
                found = detect(folder)  # the files a load of it opens; no other file is touched
                same = found.name == fmt.name
                legacy = frozenset(found.files(folder)) if same else legacy
            except Exception:
                same = False
            if not same:
                raise FileExistsError(f"{folder} is not empty and is not a model folder of the {fmt.name} format that "
                                      "loads; save into a new or empty folder (embedhub never replaces files it did "
                                      "not write)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            recorded = open_record(self.folder)  # a folder embedhub wrote: only the files it recorded are the model's
            listed = None if recorded is None else set(recorded.files)
            for rel in fmt.files(self.folder):
                if listed is not None and rel not in listed:
                    continue
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.folder / rel, staging / rel)  # follows a Hub snapshot's links to its blobs
            record(staging)
            switch_folder(staging, folder, legacy=legacy)  # only what embedhub wrote there is replaced
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        commit_message: str | None = None,
        token: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Save the model (as :meth:`save_pretrained`) with a model card and upload it to the Hugging Face
        Hub through ``huggingface_hub``; returns the commit URL. The repo id and revision are checked, and a
        token found, before any network call; only the files the format needs are uploaded.

        >>> model.push_to_hub("my-org/my-model", private=True)  # doctest: +SKIP
        """
        import tempfile

        from embedhub.hub.card import write_card
        from embedhub.hub.publish import check_names, push_folder, resolve_token

        check_names(repo_id, revision, create_pr, commit_message)
        token = resolve_token(token)  # before anything is written
        with tempfile.TemporaryDirectory(prefix="embedhub-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            write_card(folder, model_id=repo_id, modalities=self.modalities, embed_dim=self.embed_dim,
                       base_model=self.repo_id, prompts=self.prompts, default_prompt_name=self.default_prompt_name,
                       similarity_fn_name=self.similarity_fn_name, truncate_dim=self.truncate_dim)
            return push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message,
                               token=token, create_pr=create_pr)

    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._spec)) if self._spec else {}

    # ------------------------------------------------------------------ several processes
    def start_multi_process_pool(self, target_devices: Sequence[str] | None = None) -> Any:
        """Start one worker process per device (default: every CUDA device when the model is on CUDA, else 4
        CPU workers), each holding this model; pass it to ``encode(..., pool=pool)``. Stop it with
        :meth:`stop_multi_process_pool` or a ``with`` block (see :mod:`embedhub.modules.pool`).

        >>> with model.start_multi_process_pool(["cuda:0", "cuda:1"]) as pool:  # doctest: +SKIP
        ...     emb = model.encode(texts, pool=pool)
        """
        from embedhub.modules.pool import start_pool

        return start_pool(self, target_devices)

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """Stop the workers of a pool from :meth:`start_multi_process_pool` (a stopped pool stays stopped)."""
        pool.stop()


class EncodeStages:
    """:meth:`EmbeddingModel.encode` for one modality, prompt and route, in three steps (see
    :meth:`EmbeddingModel.stages`). ``key`` is equal for two stages whose prepared items may share a batch."""

    def __init__(self, model: EmbeddingModel, modality: str, run: Any, pre: Any, prompt: str | None,
                 extra: dict[str, np.ndarray], route: str | None):
        self.model, self.modality, self._run, self._pre = model, modality, run, pre
        self.prompt, self._extra = prompt, extra
        self.key = (modality, route, int(extra["prompt_length"]) if extra else None)
        #: the prompt arguments the stages were made with (for :meth:`fingerprint`)
        self.prompt_name: str | None = None
        self.explicit_prompt: str | None = None

    def fingerprint(self, *, truncate_dim: int | None = None, normalize: bool | None = None) -> Any:
        """The fingerprint of the vectors :meth:`finish` returns with these arguments."""
        return self.model.fingerprint_for(prompt_name=self.prompt_name, prompt=self.explicit_prompt,
                                          truncate_dim=truncate_dim, normalize=normalize)

    def prepare(self, items: Sequence[Any], *, max_image_pixels: int = MAX_IMAGE_PIXELS) -> list[Any]:
        """Token ids of texts (prompt, special tokens, truncation: as ``encode``), or decoded RGB images that the
        preprocessor can resize; an :class:`InputError` names ``inputs[i]`` (so :meth:`run` does not fail on an
        item)."""
        items = list(items)
        if self.modality == "image":
            images = [load_image(x, i, max_pixels=max_image_pixels) for i, x in enumerate(items)]
            check = getattr(self._pre, "check", None)
            if check is not None:  # what run's preprocessor would refuse (an extreme aspect ratio)
                for i, img in enumerate(images):
                    check(img, i)
            return images
        for i, x in enumerate(items):
            if modality_of(x, i) != "text":
                raise ModalityError(f"inputs[{i}] is not a text", index=i)
        return self._pre.tokenize([self.prompt + t for t in items] if self.prompt else items)

    def prepare_token_ids(self, ids: Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids of the model's own tokenizer (without special tokens) as ``prepare`` gives a text's:
        special tokens added, truncated at :attr:`EmbeddingModel.max_seq_length`. Every id is checked against
        the vocabulary; a model with a prompt is refused (the prompt's tokens could join the text's)."""
        if self.modality != "text":
            raise ModalityError("token ids are text; this is an image route")
        if self.prompt:
            raise ArgumentError(f"{self.model.name} puts the prompt {self.prompt!r} before every text; send the "
                                "text itself rather than token ids")
        size = self.vocab_size
        if size is None:
            raise ArgumentError(f"{self.model.name}'s tokenizer does not tell its vocabulary size; send text")
        prefix, suffix = self._special_tokens()
        keep = max(0, int(self._pre.max_length) - len(prefix) - len(suffix))
        out: list[list[int]] = []
        for i, row in enumerate(ids):
            for j, t in enumerate(row):
                if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < size:
                    raise InputError(f"inputs[{i}][{j}] = {t!r} is not a token id of {self.model.name}'s "
                                     f"tokenizer (0 <= id < {size})", index=i)
            if not row:
                raise InputError(f"inputs[{i}] is an empty list of token ids", index=i)
            out.append([*prefix, *(int(t) for t in row[:keep]), *suffix])
        return out

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's own tokens (found on a probe text)."""
        probe = "hello world"
        full = self._pre.tokenize([probe])[0]
        tok = getattr(self._pre, "tokenizer", None)
        bare: list[int] | None = None
        if tok is not None and hasattr(tok, "get_vocab_size"):  # tokenizers.Tokenizer
            bare = list(tok.encode(probe, add_special_tokens=False).ids)
        elif tok is not None and callable(tok):
            try:
                bare = list(tok(probe, add_special_tokens=False)["input_ids"])
            except (TypeError, KeyError):
                bare = None
        if getattr(self._pre, "lowercase", False) and tok is not None and hasattr(tok, "get_vocab_size"):
            bare = list(tok.encode(probe.lower(), add_special_tokens=False).ids)
        for k in range(len(full) - len(bare or []) + 1) if bare else ():
            if full[k:k + len(bare)] == bare:
                return full[:k], full[k + len(bare):]
        raise ArgumentError(f"{self.model.name}'s tokenizer does not show which special tokens it adds; send text")

    @property
    def vocab_size(self) -> int | None:
        """The number of token ids of the text tokenizer (``None`` when it does not say)."""
        tok = getattr(self._pre, "tokenizer", None)
        if tok is None:
            return None
        if hasattr(tok, "get_vocab_size"):
            return int(tok.get_vocab_size(with_added_tokens=True))
        try:
            return int(len(tok))
        except TypeError:
            size = getattr(tok, "vocab_size", None)
            return int(size) if isinstance(size, int) else None

    def cost(self, item: Any) -> int:
        """What an item costs in a batch: its tokens (texts), 1 (images)."""
        return len(item) if self.modality == "text" else 1

    def run(self, items: list[Any]) -> torch.Tensor:
        """The raw ``(len(items), embed_dim)`` embeddings of prepared items: one batch through the tower."""
        if self.modality == "text":
            batch = self._pre.collate(items)
            emb = self._run({**batch, **self._extra} if self._extra else batch)
        else:
            rows = np.arange(len(items))
            batch = self._pre(items, indices=rows) if isinstance(self._pre, ImagePreprocessor) else self._pre(items)
            emb = self._run(batch)
        self.model._check_batch(emb, np.arange(len(items)), self.modality)
        return emb.detach().float().cpu()

    def finish(self, emb: torch.Tensor, *, truncate_dim: int | None = None,
               normalize: bool | None = None) -> np.ndarray:
        """Rows of :meth:`run` as ``encode(..., truncate_dim=, normalize=)`` returns them (float32)."""
        dim = self.model._width(truncate_dim)
        norm = self.model._norm_mode(normalize, dim, [self.modality], {self.modality: self._run})
        return np.ascontiguousarray(_shape_rows(emb, dim, norm).numpy(), dtype=np.float32)


def _shape_rows(emb: torch.Tensor, dim: int, normalize: bool | str) -> torch.Tensor:
    """Rows truncated to ``dim`` and normalised as ``normalize`` says (``"full"``: at the full width, before)."""
    if normalize == "full":
        emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
    if emb.shape[1] != dim:
        emb = emb[:, :dim]
    if normalize is True:
        emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
    return emb


@functools.cache
def _encode_signature() -> inspect.Signature:
    """:meth:`EmbeddingModel.encode`'s own signature (without the keywords :func:`pooled` adds): the one list of
    its options and their defaults, which ``encode_text``, ``encode_image`` and the search roles take too."""
    return inspect.signature(inspect.unwrap(EmbeddingModel.encode))


def _string_list(name: str, value: Any, what: str, *, example: str) -> list[str]:
    """``value`` as a non-empty list of non-empty strings; a ``str``, a set or a dict is refused."""
    if isinstance(value, str):
        raise ArgumentError(
            f"{name} is a str ({value!r}); pass a list, e.g. [{value!r}] or {example} "
            f"(a str would be read as one {what} per character)"
        )
    if isinstance(value, (Set, Mapping)) or not hasattr(value, "__iter__"):
        raise ArgumentError(f"{name} must be a list of strings, e.g. {example}; got a {type(value).__name__}")
    items = list(value)
    bad = [(i, x) for i, x in enumerate(items) if not isinstance(x, str) or not x]
    if not items or bad:
        found = "an empty list" if not items else f"{name}[{bad[0][0]}] = {bad[0][1]!r}"
        raise ArgumentError(f"{name} must be a non-empty list of non-empty strings, e.g. {example}; got {found}")
    return items


def check_template(template: str) -> str:
    """``template`` when it holds exactly one bare ``{}`` (the label) and no other replacement field;
    a ``ValueError`` naming the template otherwise (``"{} {x}"``, ``"{0}"``, ``"{}{}"``, ``"{"``).

    >>> check_template("a photo of a {}.")
    'a photo of a {}.'
    """
    expected = "exactly one '{}' for the label and no other replacement field (write a literal brace as '{{' or '}}')"
    try:
        fields = [
            "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            for _, name, spec, conv in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise ArgumentError(
            f"template {template!r} is not a valid format string ({exc}); it must contain {expected}"
        ) from exc
    if fields != ["{}"]:
        found = ", ".join(fields) if fields else "no replacement field"
        raise ArgumentError(f"template {template!r} must contain {expected}; found {found}")
    return template
