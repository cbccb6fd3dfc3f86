"""Telling text from images, and decoding images safely."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._errors import InputError, InputTypeError

Modality = Literal["text", "image"]

#: images with more pixels than this are refused (decompression-bomb guard); settable per call
MAX_IMAGE_PIXELS = 64_000_000
#: image files larger than this are refused before reading
MAX_IMAGE_BYTES = 200 * 1024 * 1024

_EXPECTED = "str (text) or an image (PIL.Image, numpy uint8 HxW[xC] array, pathlib.Path, bytes)"


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def as_items(inputs: Any) -> tuple[list[Any], bool]:
    """The list of items and whether ``inputs`` was a single item."""
    if isinstance(inputs, (str, bytes, bytearray, memoryview, Path)) or _is_pil(inputs):
        return [inputs], True
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 4:
            return list(inputs), False
        return [inputs], True
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    if inputs is None:
        raise InputTypeError(f"inputs is None; expected {_EXPECTED}, or a list of them")
    if hasattr(inputs, "__iter__") and not isinstance(inputs, dict):
        return list(inputs), False
    raise InputTypeError(f"inputs has type {type(inputs).__name__}; expected {_EXPECTED}, or a list of them")


def modality_of(item: Any, index: int) -> Modality:
    """``"text"`` or ``"image"``; a ``TypeError`` naming ``inputs[index]`` for anything else."""
    if isinstance(item, str):
        return "text"
    if isinstance(item, (bytes, bytearray, memoryview, Path)) or _is_pil(item):
        return "image"
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise InputTypeError(
                f"inputs[{index}] is a numpy array of dtype {item.dtype}; images must be uint8 HxW[xC]"
            )
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise InputTypeError(
                f"inputs[{index}] is a numpy array of shape {item.shape}; images must be HxW or HxWxC with C in 1, 3, 4"
            )
        return "image"
    if item is None:
        raise InputTypeError(f"inputs[{index}] is None; expected {_EXPECTED}")
    if isinstance(item, (list, tuple, dict, set)):
        raise InputTypeError(
            f"inputs[{index}] is a {type(item).__name__}; nested inputs are not supported, "
            f"pass a flat list of {_EXPECTED}"
        )
    raise InputTypeError(f"inputs[{index}] has type {type(item).__name__}; expected {_EXPECTED}")


def load_image(item: Any, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """Decode one image item to an RGB ``PIL.Image``, refusing corrupt and oversized images."""
    from PIL import Image

    def check_size(w: int, h: int) -> None:
        if w * h > max_pixels:
            raise InputError(
                f"inputs[{index}]: image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels "
                "(decompression-bomb guard; pass max_image_pixels=... to encode to raise it)"
            )
        if w == 0 or h == 0:
            raise InputError(f"inputs[{index}]: image has zero size {w}x{h}")

    if isinstance(item, np.ndarray):
        check_size(item.shape[1], item.shape[0])
        arr = item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
        img = Image.fromarray(np.ascontiguousarray(arr))
    elif _is_pil(item):
        check_size(*item.size)
        img = item
    else:
        if isinstance(item, Path):
            try:
                size = os.path.getsize(item)
            except OSError as exc:
                raise InputError(f"inputs[{index}]: cannot read image file {item}: {exc.strerror}") from exc
            if size > MAX_IMAGE_BYTES:
                raise InputError(
                    f"inputs[{index}]: image file {item} is {size} bytes, over the {MAX_IMAGE_BYTES} limit"
                )
            data = item.read_bytes()
        else:
            data = bytes(item)
            if len(data) > MAX_IMAGE_BYTES:
                raise InputError(f"inputs[{index}]: {len(data)} image bytes, over the {MAX_IMAGE_BYTES} limit")
        what = str(item) if isinstance(item, Path) else f"{len(data)} bytes"
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise InputError(f"inputs[{index}]: image refused as a decompression bomb ({exc})") from exc
        except Exception as exc:
            raise InputError(f"inputs[{index}]: not a readable image ({what}): {exc}") from exc
        check_size(*img.size)
        try:
            img.load()
        except Exception as exc:
            raise InputError(f"inputs[{index}]: corrupt or truncated image ({what}): {exc}") from exc
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except Exception as exc:
            raise InputError(f"inputs[{index}]: cannot convert image of mode {img.mode} to RGB: {exc}") from exc
    return img
