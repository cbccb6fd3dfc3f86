"""Telling text from images, and decoding images safely."""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, Set, ValuesView
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._errors import InputError, InputTypeError

Modality = Literal["text", "image"]

#: images with more pixels than this are refused (decompression-bomb guard); settable per call
MAX_IMAGE_PIXELS = 64_000_000
#: image files larger than this are refused; the bound is enforced while reading
MAX_IMAGE_BYTES = 200 * 1024 * 1024

_EXPECTED = "str (text) or an image (PIL.Image, numpy uint8 HxW[xC] array, pathlib.Path, bytes)"
_READ_CHUNK = 1 << 22
#: Pillow's decompression-bomb guard is a module global: embedhub sets it per call under this lock
_PIL_GUARD = threading.Lock()


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def as_items(inputs: Any) -> tuple[list[Any], bool]:
    """The list of items and whether ``inputs`` was a single item.

    A collection of items must have an order: a list, tuple, any other sequence, or an iterator
    (a generator); sets and dicts are refused.
    """
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
    name = type(inputs).__name__
    if isinstance(inputs, (Mapping, KeysView, ValuesView, ItemsView)):
        raise InputTypeError(
            f"inputs is a {name}; pass a list of the items to embed (e.g. list(d.values()) for a dict's values)"
        )
    if isinstance(inputs, Set):
        raise InputTypeError(
            f"inputs is a {name}, which has no defined order, so rows could not be matched to inputs; "
            f"pass a list of {_EXPECTED}"
        )
    if isinstance(inputs, (Sequence, Iterator)) or (hasattr(inputs, "__getitem__") and hasattr(inputs, "__len__")):
        return list(inputs), False
    raise InputTypeError(f"inputs has type {name}; expected {_EXPECTED}, or a list (or other sequence) of them")


def modality_of(item: Any, index: int) -> Modality:
    """``"text"`` or ``"image"``; a ``TypeError`` naming ``inputs[index]`` for anything else.

    Text must be encodable as UTF-8 (no lone surrogates): an :class:`InputError` otherwise.
    """
    if isinstance(item, str):
        if not item.isascii():  # isascii is O(1); only non-ASCII text needs the encode check
            check_text(item, index)
        return "text"
    if isinstance(item, (bytes, bytearray, memoryview, Path)) or _is_pil(item):
        return "image"
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise InputTypeError(
                f"inputs[{index}] is a numpy array of dtype {item.dtype}; images must be uint8 HxW[xC]"
            , index=index)
        if item.ndim not in (2, 3) or (item.ndim == 3 and item.shape[2] not in (1, 3, 4)):
            raise InputTypeError(
                f"inputs[{index}] is a numpy array of shape {item.shape}; images must be HxW or HxWxC with C in 1, 3, 4"
            , index=index)
        return "image"
    if item is None:
        raise InputTypeError(f"inputs[{index}] is None; expected {_EXPECTED}", index=index)
    if isinstance(item, (list, tuple, dict, set, frozenset)):
        raise InputTypeError(
            f"inputs[{index}] is a {type(item).__name__}; nested inputs are not supported, "
            f"pass a flat list of {_EXPECTED}"
        , index=index)
    raise InputTypeError(f"inputs[{index}] has type {type(item).__name__}; expected {_EXPECTED}", index=index)


def check_text(text: str, index: int) -> None:
    """An :class:`InputError` naming ``inputs[index]`` when ``text`` cannot be encoded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise InputError(
            f"inputs[{index}]: text is not valid Unicode: {bad!r} at character {exc.start} cannot be encoded "
            "as UTF-8 (a lone surrogate, e.g. from bytes decoded with errors='surrogateescape'); "
            "decode the source with the right encoding or errors='replace'"
        , index=index) from exc


def read_image_file(path: Path, index: int, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, at most ``max_bytes`` (default :data:`MAX_IMAGE_BYTES`): directories,
    FIFOs, devices (``/dev/zero``) and larger files are an :class:`InputError` naming ``inputs[index]``;
    nothing blocks, and nothing past the bound is read (files whose size is unknown, like ``/proc``
    files, are bounded by what they hold)."""
    if max_bytes is None:
        max_bytes = MAX_IMAGE_BYTES
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of hanging
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"inputs[{index}]: cannot read image file {path}: {exc.strerror}", index=index) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = (
                "a directory" if stat.S_ISDIR(st.st_mode)
                else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a character device" if stat.S_ISCHR(st.st_mode)
                else "a block device" if stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file"
            )
            raise InputError(f"inputs[{index}]: image path {path} is {kind}; only regular files are read", index=index)
        if st.st_size > max_bytes:
            raise InputError(
                f"inputs[{index}]: image file {path} is {st.st_size} bytes, over the {max_bytes} limit", index=index
            )
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:  # the size can change after fstat: the bound holds for what is read
            chunk = os.read(fd, min(max(st.st_size - total, 0) + 1, _READ_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise InputError(
                f"inputs[{index}]: image file {path} holds more than {max_bytes} bytes, over the limit", index=index
            )
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"inputs[{index}]: cannot read image file {path}: {exc.strerror or exc}", index=index) from exc
    finally:
        os.close(fd)


@contextmanager
def pillow_pixel_guard(max_pixels: int) -> Iterator[None]:
    """Pillow's own decompression-bomb guard set from ``max_pixels`` while opening and loading, then
    restored: Pillow refuses above twice its guard, so a ``max_pixels`` above Pillow's default really
    raises the limit. Pillow's warning between one and two times the guard is silenced: embedhub's
    own check refuses those images with an error. A lock keeps concurrent calls from mixing limits."""
    from PIL import Image

    with _PIL_GUARD, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def to_rgb(img: Any, index: int):
    """``img`` as an 8-bit RGB ``PIL.Image``, scaling high-bit-depth data instead of clipping it.

    16-bit modes (``I;16*``, and ``I``, which Pillow uses for 16-bit PNG/TIFF data) are scaled
    ``v * 255 / 65535`` (rounded); float images (``F``) must hold values in [0, 1] and are scaled
    to 0-255 (rounded); other ranges, NaN or out-of-range 32-bit data are an :class:`InputError`
    naming ``inputs[index]``. Other modes go through Pillow's ``convert("RGB")``.
    """
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode == "I" and arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
            raise InputError(
                f"inputs[{index}]: 32-bit integer image (mode I) holds values {int(arr.min())}..{int(arr.max())}; "
                "expected 16-bit data in 0..65535"
            , index=index)
        # round(v * 255 / 65535) == round(v / 257) == (v + 128) // 257: v / 257 is never exactly x.5
        img = Image.fromarray(((arr.astype(np.uint32) + 128) // 257).astype(np.uint8))
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if arr.size and not np.isfinite(arr).all():
            raise InputError(f"inputs[{index}]: float image (mode F) holds NaN or infinite values", index=index)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise InputError(
                f"inputs[{index}]: float image (mode F) holds values {lo:g}..{hi:g}; expected data in [0, 1] "
                "(scale it to [0, 1] or pass an 8-bit image)"
            , index=index)
        img = Image.fromarray(np.rint(arr * np.float32(255.0)).astype(np.uint8))
    try:
        return img.convert("RGB")
    except Exception as exc:
        raise InputError(f"inputs[{index}]: cannot convert image of mode {mode} to RGB: {exc}", index=index) from exc


def load_image(item: Any, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """Decode one image item to an RGB ``PIL.Image``, refusing corrupt and oversized images."""
    from PIL import Image

    def check_size(w: int, h: int) -> None:
        if w * h > max_pixels:
            raise InputError(
                f"inputs[{index}]: image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels "
                "(decompression-bomb guard; pass max_image_pixels=... to encode to raise it)"
            , index=index)
        if w == 0 or h == 0:
            raise InputError(f"inputs[{index}]: image has zero size {w}x{h}", index=index)

    if isinstance(item, np.ndarray):
        check_size(item.shape[1], item.shape[0])
        arr = item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
        img = Image.fromarray(np.ascontiguousarray(arr))
    elif _is_pil(item):
        check_size(*item.size)
        try:
            item.load()  # a lazily opened file decodes here; a closed image fails here
        except Exception as exc:
            raise InputError(
                f"inputs[{index}]: PIL image of mode {item.mode} cannot be read (closed, or a corrupt or "
                f"truncated file): {exc}"
            , index=index) from exc
        img = item
    else:
        if isinstance(item, Path):
            data = read_image_file(item, index)
        else:
            data = bytes(item)
            if len(data) > MAX_IMAGE_BYTES:
                raise InputError(
                    f"inputs[{index}]: {len(data)} image bytes, over the {MAX_IMAGE_BYTES} limit", index=index
                )
        what = str(item) if isinstance(item, Path) else f"{len(data)} bytes"
        with pillow_pixel_guard(max_pixels):
            try:
                img = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError as exc:
                raise InputError(
                    f"inputs[{index}]: image refused as a decompression bomb ({exc})", index=index
                ) from exc
            except Exception as exc:
                raise InputError(f"inputs[{index}]: not a readable image ({what}): {exc}", index=index) from exc
            check_size(*img.size)
            try:
                img.load()  # some formats check frame sizes against the guard here
            except Image.DecompressionBombError as exc:
                raise InputError(
                    f"inputs[{index}]: image refused as a decompression bomb ({exc})", index=index
                ) from exc
            except Exception as exc:
                raise InputError(f"inputs[{index}]: corrupt or truncated image ({what}): {exc}", index=index) from exc
    return to_rgb(img, index)
