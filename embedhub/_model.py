"""The model users get from :func:`embedhub.load`."""

from __future__ import annotations

import json
import os
import string
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ._backends import Runner, TorchRunner
from ._batching import check_batching, check_positive_int, plan_batches, text_windows
from ._errors import InputError, ModalityError, PublishError, WeightsError
from ._inputs import MAX_IMAGE_PIXELS, as_items, load_image, modality_of
from ._pool import pooled
from ._preprocess import ImagePreprocessor, token_lengths

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


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
    ):
        missing = [m for m in towers if m not in preprocessors]
        if missing or not towers:
            raise ValueError(f"EmbeddingModel needs a tower and a preprocessor per modality; "
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
    def fingerprint(self) -> Any:
        """Provenance of the vectors this model makes (:class:`embedhub.Fingerprint`): a short stable
        ``id`` plus its parts (source, revision, format, backend, dtype, pooling, normalisation, dimension).

        >>> model.fingerprint.id  # doctest: +SKIP
        'eh1-3f9a0c2b7d4e5a61'
        """
        if self._fingerprint is None:
            from ._provenance import fingerprint_of

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
        batch_size: int = 32,
        normalize: bool = True,
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] = "numpy",
        max_tokens: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> np.ndarray | torch.Tensor:
        """Embed texts (``str``) and/or images (``PIL.Image``, uint8 arrays, ``Path``, ``bytes``).

        Returns float32 ``(N, D)`` in input order (``(D,)`` for a single input); as numpy, or a
        CPU ``torch.Tensor`` with ``convert_to="torch"``. Texts are sorted by token length and
        batched (``batch_size`` rows, and at most ``max_tokens`` padded tokens when given);
        longer than :attr:`max_seq_length` tokens they are truncated. Texts are tokenised a
        window of a few thousand at a time and every batch is written straight into one output
        array, so memory beyond the output does not grow with the number of inputs.
        ``pool=`` (from :meth:`start_multi_process_pool`) or a list of devices (``device=["cuda:0",
        "cuda:1"]``) encodes in several processes, in chunks of whole batches (``chunk_size`` inputs),
        with exactly the single-process vectors.

        >>> model.encode("hello").shape        # doctest: +SKIP
        (384,)
        """
        return self._encode(
            inputs,
            None,
            batch_size=batch_size,
            normalize=normalize,
            show_progress_bar=show_progress_bar,
            convert_to=convert_to,
            max_tokens=max_tokens,
            max_image_pixels=max_image_pixels,
        )

    @pooled
    def encode_text(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray | torch.Tensor:
        """:meth:`encode` restricted to text: anything else is an error naming its index."""
        return self._encode(texts, "text", **kwargs)

    @pooled
    def encode_image(self, images: Any, **kwargs: Any) -> np.ndarray | torch.Tensor:
        """:meth:`encode` restricted to images: anything else is an error naming its index."""
        return self._encode(images, "image", **kwargs)

    def _encode(
        self,
        inputs: Any,
        only: str | None,
        *,
        batch_size: int = 32,
        normalize: bool = True,
        show_progress_bar: bool | None = None,
        convert_to: Literal["numpy", "torch"] = "numpy",
        max_tokens: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> np.ndarray | torch.Tensor:
        # every argument is checked once, before any input is read or any work starts
        batch_size, max_tokens = check_batching(batch_size, max_tokens)
        max_image_pixels = check_positive_int("max_image_pixels", max_image_pixels)
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        if only is not None and only not in self._runners:
            raise ModalityError(f"{self.name} has no {only} tower; it embeds only {' and '.join(self.modalities)}")
        items, single = as_items(inputs)
        kinds = [modality_of(x, i) for i, x in enumerate(items)]
        for i, kind in enumerate(kinds):
            if only is not None and kind != only:
                raise ModalityError(f"inputs[{i}] is {kind}; encode_{only} takes {only} only", index=i)
            if kind not in self._runners:
                raise ModalityError(
                    f"inputs[{i}] is {kind}, but {self.name} embeds only {' and '.join(self.modalities)}"
                , index=i)
        used = [m for m in self.modalities if m in kinds]
        if not normalize:
            self._check_unnormalized_output(used)
        out = np.empty((len(items), self.embed_dim), dtype=np.float32)
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
                batch_size=batch_size,
                max_tokens=max_tokens,
                normalize=bool(normalize),
                show_progress_bar=show_progress_bar,
                max_image_pixels=max_image_pixels,
            )
        result = torch.from_numpy(out) if convert_to == "torch" else out
        return result[0] if single else result

    def _check_unnormalized_output(self, modalities: Sequence[str]) -> None:
        """``normalize=False`` cannot be honoured by an ONNX graph that L2-normalises inside."""
        for modality in modalities:
            runner = self._runners[modality]
            if getattr(runner, "normalized_output", False):
                raise ValueError(
                    f"normalize=False cannot be honoured: the ONNX graph of {self.name}'s {modality} tower "
                    f"({getattr(runner, 'path', 'onnx')}) L2-normalises its output inside, as older exports do; "
                    "re-export the model (`embedhub export MODEL --output DIR`) to get a graph with unnormalised "
                    "output, or load it with backend='torch'"
                )

    def _progress(self, modality: str, total: int, batch_size: int, show_progress_bar: bool | None):
        from tqdm.auto import tqdm

        disable = (not show_progress_bar) if show_progress_bar is not None else (total <= batch_size or None)
        return tqdm(total=total, desc=f"embedding {modality}", unit=modality, disable=disable)

    def _write(self, out: np.ndarray, rows: np.ndarray, emb: torch.Tensor, modality: str, normalize: bool) -> None:
        """One batch's embeddings into their rows of ``out`` (normalised first when asked)."""
        if emb.ndim != 2 or emb.shape[0] != len(rows) or emb.shape[1] != self.embed_dim:
            raise RuntimeError(
                f"{modality} tower returned shape {tuple(emb.shape)} for a batch of {len(rows)}; "
                f"expected ({len(rows)}, {self.embed_dim}) (embed_dim from the config)"
            )
        finite = torch.isfinite(emb).all(dim=-1)
        if not bool(finite.all()):  # one reduction per batch; the rows are looked up only on failure
            self._non_finite(rows, finite, modality)
        if normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        out[rows] = emb.cpu().numpy()

    def _non_finite(self, rows: np.ndarray, finite: torch.Tensor, modality: str) -> None:
        """A :class:`WeightsError` naming the inputs whose embeddings hold NaN or Inf, and the model."""
        bad = sorted(int(i) for i in np.asarray(rows)[~finite.cpu().numpy()])
        shown = ", ".join(f"inputs[{i}]" for i in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        runner = self._runners[modality]
        where = getattr(runner, "path", None)
        hint = ("; or float16 overflows on these inputs (load with dtype='float32')"
                if self.dtype in (torch.float16, torch.bfloat16) and runner.backend == "torch" else "")
        raise WeightsError(
            f"{self.name}: the {modality} tower ({runner.backend}{f', {where}' if where else ''}) returned NaN or "
            f"infinite values for {shown}; its weights or graph hold non-finite values{hint}"
        )

    def _encode_texts(
        self, items, index, out, *, batch_size, max_tokens, normalize, show_progress_bar, max_image_pixels
    ) -> None:
        pre, run = self.preprocessors["text"], self._runners["text"]
        with self._progress("text", len(index), batch_size, show_progress_bar) as bar:
            for window in text_windows(len(index), batch_size):
                rows = index[window.start : window.stop]
                try:
                    ids = pre.tokenize([items[i] for i in rows])
                except InputError as exc:  # about a text of this window: name it by its place in the inputs
                    if exc.index is None or not 0 <= exc.index < len(rows):
                        raise
                    at = int(rows[exc.index])
                    raise InputError(f"inputs[{at}]: {exc.detail}", index=at) from None
                for batch_rows in plan_batches(token_lengths(ids), batch_size, max_tokens):
                    emb = run(pre.collate([ids[r] for r in batch_rows]))
                    self._write(out, rows[batch_rows], emb, "text", normalize)
                    bar.update(len(batch_rows))
                del ids  # before the next window is tokenised: one window of ids at a time

    def _encode_images(
        self, items, index, out, *, batch_size, max_tokens, normalize, show_progress_bar, max_image_pixels
    ) -> None:
        pre, run = self.preprocessors["image"], self._runners["image"]
        with self._progress("image", len(index), batch_size, show_progress_bar) as bar:
            for start in range(0, len(index), batch_size):
                rows = index[start : start + batch_size]
                images = [load_image(items[i], int(i), max_pixels=max_image_pixels) for i in rows]
                batch = pre(images, indices=rows) if isinstance(pre, ImagePreprocessor) else pre(images)
                self._write(out, rows, run(batch), "image", normalize)
                bar.update(len(rows))

    # ------------------------------------------------------------------ scores
    @staticmethod
    def similarity(a: Any, b: Any) -> np.ndarray:
        """Cosine similarity matrix ``(len(a), len(b))`` of two embedding arrays.

        >>> EmbeddingModel.similarity(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32))
        array([[1., 0.],
               [0., 1.]], dtype=float32)
        """
        a = torch.as_tensor(np.asarray(a), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(b), dtype=torch.float32)
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        if a.shape[-1] != b.shape[-1]:
            raise ValueError(f"embedding sizes differ: {a.shape[-1]} vs {b.shape[-1]}")
        nf = torch.nn.functional.normalize
        return (nf(a, dim=-1) @ nf(b, dim=-1).T).numpy()

    def zero_shot(
        self,
        images: Any,
        labels: Sequence[str],
        templates: Sequence[str] | None = None,
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Per-label probabilities ``(N, L)`` (``(L,)`` for one image), CLIP style.

        Each label's text embedding is the renormalised mean over ``templates`` (each with exactly
        one ``{}`` for the label and no other replacement field; default: the model's own, else
        ``"a photo of a {}."``); probabilities are ``softmax(logit_scale * cos)``. ``labels`` and
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
        from .utils import average_templates, template_prompts

        text = self.encode(template_prompts(labels, templates), batch_size=batch_size, convert_to="torch")
        classes = average_templates(text, len(labels))
        img = self.encode_image(images, batch_size=batch_size, convert_to="torch")
        logits = (self.logit_scale or 100.0) * (img @ classes.T)
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
        from .formats import can_save_torch, save_embedhub

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

        from ._atomic import switch_folder
        from ._manifest import COPIED_LEGACY, has_record, open_record, record
        from .formats import detect

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

        from ._card import write_card
        from ._publish import check_names, push_folder
        from .hub import resolve_token

        check_names(repo_id, revision, create_pr, commit_message)
        token = resolve_token(token)  # before anything is written
        with tempfile.TemporaryDirectory(prefix="embedhub-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            write_card(folder, model_id=repo_id, modalities=self.modalities, embed_dim=self.embed_dim,
                       base_model=self.repo_id)
            return push_folder(folder, repo_id, private=private, revision=revision, commit_message=commit_message,
                               token=token, create_pr=create_pr)

    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._spec)) if self._spec else {}

    # ------------------------------------------------------------------ several processes
    def start_multi_process_pool(self, target_devices: Sequence[str] | None = None) -> Any:
        """Start one worker process per device (default: every CUDA device when the model is on CUDA, else 4
        CPU workers), each holding this model; pass it to ``encode(..., pool=pool)``. Stop it with
        :meth:`stop_multi_process_pool` or a ``with`` block (see :mod:`embedhub._pool`).

        >>> with model.start_multi_process_pool(["cuda:0", "cuda:1"]) as pool:  # doctest: +SKIP
        ...     emb = model.encode(texts, pool=pool)
        """
        from ._pool import start_pool

        return start_pool(self, target_devices)

    @staticmethod
    def stop_multi_process_pool(pool: Any) -> None:
        """Stop the workers of a pool from :meth:`start_multi_process_pool` (a stopped pool stays stopped)."""
        pool.stop()


def _string_list(name: str, value: Any, what: str, *, example: str) -> list[str]:
    """``value`` as a non-empty list of non-empty strings; a ``str``, a set or a dict is refused."""
    if isinstance(value, str):
        raise ValueError(
            f"{name} is a str ({value!r}); pass a list, e.g. [{value!r}] or {example} "
            f"(a str would be read as one {what} per character)"
        )
    if isinstance(value, (Set, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of strings, e.g. {example}; got a {type(value).__name__}")
    items = list(value)
    bad = [(i, x) for i, x in enumerate(items) if not isinstance(x, str) or not x]
    if not items or bad:
        found = "an empty list" if not items else f"{name}[{bad[0][0]}] = {bad[0][1]!r}"
        raise ValueError(f"{name} must be a non-empty list of non-empty strings, e.g. {example}; got {found}")
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
        raise ValueError(
            f"template {template!r} is not a valid format string ({exc}); it must contain {expected}"
        ) from exc
    if fields != ["{}"]:
        found = ", ".join(fields) if fields else "no replacement field"
        raise ValueError(f"template {template!r} must contain {expected}; found {found}")
    return template
