"""The model users get from :func:`embedhub.load`."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ._backends import Runner, TorchRunner
from ._batching import plan_batches
from ._errors import ModalityError
from ._inputs import MAX_IMAGE_PIXELS, as_items, load_image, modality_of
from ._preprocess import token_lengths

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
    ):
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

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(name={self.name!r}, format={self.format!r}, backend={self.backend!r}, "
            f"modalities={self.modalities}, embed_dim={self.embed_dim}, device={str(self.device)!r})"
        )

    # ------------------------------------------------------------------ encoding
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
        longer than :attr:`max_seq_length` tokens they are truncated.

        >>> model.encode("hello").shape        # doctest: +SKIP
        (384,)
        """
        if convert_to not in ("numpy", "torch"):
            raise ValueError(f"convert_to must be 'numpy' or 'torch', got {convert_to!r}")
        items, single = as_items(inputs)
        kinds = [modality_of(x, i) for i, x in enumerate(items)]
        for i, kind in enumerate(kinds):
            if kind not in self._runners:
                raise ModalityError(
                    f"inputs[{i}] is {kind}, but {self.name} embeds only {' and '.join(self.modalities)}"
                )
        out = torch.empty((len(items), self.embed_dim), dtype=torch.float32)
        for modality in self.modalities:
            index = np.fromiter((i for i, k in enumerate(kinds) if k == modality), dtype=np.int64)
            if len(index):
                out[torch.from_numpy(index)] = self._encode_modality(
                    modality,
                    [items[i] for i in index],
                    index,
                    batch_size=batch_size,
                    max_tokens=max_tokens,
                    show_progress_bar=show_progress_bar,
                    max_image_pixels=max_image_pixels,
                )
        if normalize:
            out = torch.nn.functional.normalize(out, p=2, dim=-1)
        if single:
            out = out[0]
        return out if convert_to == "torch" else out.numpy()

    def encode_text(self, texts: str | Sequence[str], **kwargs: Any) -> np.ndarray | torch.Tensor:
        """:meth:`encode` restricted to text: anything else is an error naming its index."""
        return self._encode_only("text", texts, **kwargs)

    def encode_image(self, images: Any, **kwargs: Any) -> np.ndarray | torch.Tensor:
        """:meth:`encode` restricted to images: anything else is an error naming its index."""
        return self._encode_only("image", images, **kwargs)

    def _encode_only(self, modality: str, inputs: Any, **kwargs: Any):
        if modality not in self._runners:
            raise ModalityError(f"{self.name} has no {modality} tower; it embeds only {' and '.join(self.modalities)}")
        items, _ = as_items(inputs)
        for i, x in enumerate(items):
            kind = modality_of(x, i)
            if kind != modality:
                raise ModalityError(f"inputs[{i}] is {kind}; encode_{modality} takes {modality} only")
        return self.encode(inputs, **kwargs)

    def _encode_modality(
        self, modality, items, index, *, batch_size, max_tokens, show_progress_bar, max_image_pixels
    ) -> torch.Tensor:
        from tqdm.auto import tqdm

        pre = self.preprocessors[modality]
        result = torch.empty((len(items), self.embed_dim), dtype=torch.float32)
        if modality == "text":
            ids = pre.tokenize(items)
            batches = plan_batches(token_lengths(ids), batch_size, max_tokens)
        else:
            batches = [np.arange(s, min(s + batch_size, len(items))) for s in range(0, len(items), batch_size)]
        disable = (not show_progress_bar) if show_progress_bar is not None else (len(batches) < 2 or None)
        for rows in tqdm(batches, desc=f"embedding {modality}", unit="batch", disable=disable):
            if modality == "text":
                batch = pre.collate([ids[r] for r in rows])
            else:
                batch = pre([load_image(items[r], int(index[r]), max_pixels=max_image_pixels) for r in rows])
            emb = self._runners[modality](batch)
            if emb.shape[-1] != self.embed_dim:
                raise RuntimeError(f"{modality} tower returned {emb.shape[-1]} dims, config says {self.embed_dim}")
            result[torch.from_numpy(rows)] = emb.cpu()
        return result

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

        Each label's text embedding is the renormalised mean over ``templates`` (each with ``{}``
        for the label; default: the model's own, else ``"a photo of a {}."``); probabilities
        are ``softmax(logit_scale * cos)``.

        >>> model.zero_shot(img, ["cat", "dog"])  # doctest: +SKIP
        array([0.97, 0.03], dtype=float32)
        """
        if "image" not in self._runners or "text" not in self._runners:
            raise ModalityError(f"zero_shot needs a text and an image tower; {self.name} has {self.modalities}")
        labels = list(labels)
        if not labels or not all(isinstance(x, str) and x for x in labels):
            raise ValueError("labels must be a non-empty list of non-empty strings")
        templates = list(templates) if templates else list(self.templates)
        bad = [t for t in templates if "{}" not in t]
        if bad:
            raise ValueError(f"templates must contain '{{}}' for the label: {bad}")
        prompts = [t.format(label) for label in labels for t in templates]
        text = self.encode(prompts, batch_size=batch_size, convert_to="torch")
        classes = torch.nn.functional.normalize(text.reshape(len(labels), len(templates), -1).mean(1), dim=-1)
        img = self.encode_image(images, batch_size=batch_size, convert_to="torch")
        logits = (self.logit_scale or 100.0) * (img @ classes.T)
        return torch.softmax(logits, dim=-1).numpy()

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write the model in embedhub's own format (config + ``model.safetensors`` + tokenizer files).

        >>> model.save_pretrained("my-model")  # doctest: +SKIP
        """
        from ._formats.embedhub import save

        return save(self, Path(folder))

    def config(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._spec)) if self._spec else {}
