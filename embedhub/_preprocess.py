"""Preprocessing outside the network: tokenisation and image transforms, from the model's own config.

Both backends (torch and ONNX) feed the same arrays: text batches are
``{"input_ids", "attention_mask"}`` int64 ``(B, L)``; image batches are ``{"pixel_values"}``
float32 ``(B, 3, H, W)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np


class TextPreprocessor(Protocol):
    """Tokenises text into unpadded id lists, then pads a batch of them."""

    max_length: int

    def tokenize(self, texts: list[str]) -> list[list[int]]: ...

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]: ...

    def config(self) -> dict[str, Any]: ...

    def save(self, folder: Path) -> dict[str, Any]: ...


def pad_batch(ids: list[list[int]], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad token id lists to ``width``: ``{"input_ids", "attention_mask"}`` int64 ``(B, width)``."""
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = x
        mask[row, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class HFTextPreprocessor:
    """A ``tokenizers`` fast tokenizer (``tokenizer.json``) with truncation at ``max_length``.

    Texts longer than ``max_length`` tokens (special tokens included) are truncated, as
    sentence-transformers and transformers do.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        max_length: int,
        pad_id: int | None = None,
        pad_to: int | None = None,
        lowercase: bool = False,
    ):
        from tokenizers import Tokenizer

        if isinstance(tokenizer, (str, Path)):
            tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer: Tokenizer = tokenizer
        if pad_id is None:
            pad = tokenizer.padding or {}
            pad_id = pad.get("pad_id", 0) if isinstance(pad, dict) else 0
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_length)
        self.max_length = max_length
        self.pad_id = int(pad_id)
        self.pad_to = pad_to
        self.lowercase = lowercase

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        return pad_batch(ids, self.pad_to or max((len(x) for x in ids), default=1), self.pad_id)

    def config(self) -> dict[str, Any]:
        return {
            "kind": "tokenizers",
            "file": "tokenizer.json",
            "max_length": self.max_length,
            "pad_id": self.pad_id,
            "pad_to": self.pad_to,
            "lowercase": self.lowercase,
        }

    def save(self, folder: Path) -> dict[str, Any]:
        """Write ``tokenizer.json`` into ``folder``; returns the config :func:`load_preprocessor` reads."""
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer.json"))
        return self.config()


class OpenCLIPTextPreprocessor:
    """open_clip's own tokenizer (from ``open_clip_config.json``), unpadded for length sorting.

    Batches are padded with 0 to the context length: open_clip's text towers add their full
    positional embedding, so they take only that width.
    """

    #: files of an open_clip folder that its tokenizer may read
    FILES = ("open_clip_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")

    def __init__(self, tokenizer: Any, *, max_length: int, source: Path | None = None):
        self._tok = tokenizer
        self.max_length = max_length
        self.source = source

    @classmethod
    def from_folder(cls, folder: Path) -> OpenCLIPTextPreprocessor:
        """open_clip's tokenizer for the ``open_clip_config.json`` in ``folder``."""
        import json

        from ._errors import require

        open_clip = require("open_clip", "open-clip", "open_clip tokenisation")
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        context = int(cfg["model_cfg"]["text_cfg"].get("context_length", 77))
        return cls(open_clip.get_tokenizer(f"local-dir:{folder}"), max_length=context, source=folder)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        ids = np.asarray(self._tok(texts)).astype(np.int64)
        if ids.shape[1] > self.max_length:
            ids = ids[:, : self.max_length]
        nonzero = ids != 0
        lengths = np.where(nonzero.any(1), ids.shape[1] - np.argmax(nonzero[:, ::-1], axis=1), 1)
        return [row[:n].tolist() for row, n in zip(ids, lengths)]

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        return pad_batch(ids, self.max_length, 0)

    def config(self) -> dict[str, Any]:
        return {"kind": "open_clip", "max_length": self.max_length}

    def save(self, folder: Path) -> dict[str, Any]:
        import shutil

        if self.source is None:
            raise ValueError("this open_clip tokenizer has no source folder to save from")
        folder.mkdir(parents=True, exist_ok=True)
        for name in self.FILES:
            if (self.source / name).is_file():
                shutil.copyfile(self.source / name, folder / name)
        return self.config()


@dataclass
class ImageConfig:
    """How an image becomes ``pixel_values``: resize, centre crop, rescale, normalise.

    ``resize_mode``: ``"shortest"`` (shortest side to ``size``, then crop), ``"longest"``
    (longest side to ``size``, then pad-crop) or ``"squash"`` (to ``size`` x ``size``).
    ``backend``: ``"pil"`` resizes with PIL (open_clip, timm, transformers' PIL processors);
    ``"torchvision"`` resizes a uint8 tensor with antialiasing (transformers' default processors).
    """

    size: int = 224
    crop_size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    resize_mode: Literal["shortest", "longest", "squash"] = "shortest"
    backend: Literal["pil", "torchvision"] = "pil"
    crop_rounding: Literal["round", "floor"] = "round"
    rescale_factor: float = 1 / 255
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crop_size"] = list(self.crop_size) if self.crop_size else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageConfig:
        d = dict(d)
        if d.get("crop_size") is not None:
            d["crop_size"] = tuple(d["crop_size"])
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)


def _resized_size(w: int, h: int, size: int, mode: str) -> tuple[int, int]:
    """(new_w, new_h) as torchvision / transformers compute it."""
    if mode == "squash":
        return size, size
    short, long = (w, h) if w <= h else (h, w)
    if mode == "shortest":
        new_short, new_long = size, int(size * long / short)
    else:  # longest
        new_long, new_short = size, int(size * short / long)
    return (new_short, new_long) if w <= h else (new_long, new_short)


class ImagePreprocessor:
    """Turns RGB ``PIL`` images into a normalised float32 ``(B, 3, H, W)`` batch."""

    def __init__(self, cfg: ImageConfig):
        self.cfg = cfg
        self._mean = np.asarray(cfg.mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(cfg.std, dtype=np.float32).reshape(3, 1, 1)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.cfg.crop_size or (self.cfg.size, self.cfg.size)

    def _crop_box(self, w: int, h: int) -> tuple[int, int, int, int] | None:
        if self.cfg.crop_size is None:
            return None
        ch, cw = self.cfg.crop_size
        rnd = (lambda v: int(round(v))) if self.cfg.crop_rounding == "round" else int
        top, left = rnd((h - ch) / 2.0), rnd((w - cw) / 2.0)
        return left, top, cw, ch

    def _one_pil(self, img) -> np.ndarray:
        from PIL import Image

        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[
            self.cfg.interpolation
        ]
        w, h = img.size
        nw, nh = _resized_size(w, h, self.cfg.size, self.cfg.resize_mode)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
        arr = np.asarray(img, dtype=np.uint8)
        box = self._crop_box(nw, nh)
        if box is not None:
            arr = _crop_or_pad(arr, *box)
        return arr.transpose(2, 0, 1)

    def _one_torchvision(self, img) -> np.ndarray:
        import torch
        from torchvision.transforms.v2 import functional as tvF

        interp = {
            "bicubic": tvF.InterpolationMode.BICUBIC,
            "bilinear": tvF.InterpolationMode.BILINEAR,
            "nearest": tvF.InterpolationMode.NEAREST,
        }[self.cfg.interpolation]
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        w, h = img.size
        nw, nh = _resized_size(w, h, self.cfg.size, self.cfg.resize_mode)
        if (nw, nh) != (w, h):
            t = tvF.resize(t, [nh, nw], interpolation=interp, antialias=True)
        box = self._crop_box(nw, nh)
        arr = t.permute(1, 2, 0).numpy()
        if box is not None:
            arr = _crop_or_pad(arr, *box)
        return arr.transpose(2, 0, 1)

    def __call__(self, images: list) -> dict[str, np.ndarray]:
        one = self._one_pil if self.cfg.backend == "pil" else self._one_torchvision
        batch = np.stack([one(img) for img in images]).astype(np.float32)
        batch *= np.float32(self.cfg.rescale_factor)
        batch -= self._mean
        batch /= self._std
        return {"pixel_values": batch}

    def config(self) -> dict[str, Any]:
        return {"kind": "image", **self.cfg.to_dict()}

    def save(self, folder: Path) -> dict[str, Any]:
        return self.config()


def load_preprocessor(folder: Path, cfg: dict[str, Any]):
    """Rebuild a preprocessor from its ``config()`` and the files its ``save(folder)`` wrote."""
    kind = cfg.get("kind")
    if kind == "tokenizers":
        return HFTextPreprocessor(folder / cfg.get("file", "tokenizer.json"), max_length=int(cfg["max_length"]),
                                  pad_id=cfg.get("pad_id"), pad_to=cfg.get("pad_to"),
                                  lowercase=bool(cfg.get("lowercase", False)))
    if kind == "open_clip":
        return OpenCLIPTextPreprocessor.from_folder(folder)
    if kind == "image":
        d = {k: v for k, v in cfg.items() if k != "kind"}
        return ImagePreprocessor(ImageConfig.from_dict(d))
    from ._errors import UnknownFormatError

    raise UnknownFormatError(f"unknown preprocessing kind {kind!r} in {folder} (expected tokenizers, open_clip, image)")


def _crop_or_pad(arr: np.ndarray, left: int, top: int, cw: int, ch: int) -> np.ndarray:
    """Centre-crop HxWxC ``arr``; pad with zeros first where it is smaller than the crop (as torchvision)."""
    h, w = arr.shape[:2]
    if cw > w or ch > h:
        pl, pt = max(cw - w, 0) // 2, max(ch - h, 0) // 2
        pr, pb = max(cw - w, 0) - pl, max(ch - h, 0) - pt
        arr = np.pad(arr, ((pt, pb), (pl, pr), (0, 0)))
        h, w = arr.shape[:2]
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top : top + ch, left : left + cw]


def token_lengths(ids: list[list[int]]) -> np.ndarray:
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
