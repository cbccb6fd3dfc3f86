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

from embedhub.errors import InputError, InputTypeError

Modality = Literal["text", "image"]

#: images with more pixels than this are refused (decompression-bomb guard); settable per call
MAX_IMAGE_PIXELS = 64_000_000
#: image files larger than this are refused; the bound is enforced while reading
MAX_IMAGE_BYTES = 200 * 1024 * 1024
#: the image formats embedhub decodes (Pillow's names): every decode opens with exactly this allow-list, so
#: no other Pillow plugin parses untrusted bytes and none starts a program (EPS / PS run Ghostscript).
#: GIF, WebP and PNG (APNG) give their first frame, TIFF its first page.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
#: formats an already opened, not yet loaded ``PIL`` image may have (MPO is JPEG's multi-picture variant)
_LAZY_FORMATS = frozenset(IMAGE_FORMATS) | {"MPO"}
#: magic bytes of formats that are refused, to name what was found (never handed to a Pillow plugin)
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%!PS", "PostScript / EPS"), (b"\xc5\xd0\xd3\xc6", "EPS (DOS binary)"), (b"%PDF", "PDF"),
    (b"icns", "ICNS"), (b"\x01\xda", "SGI"), (b"8BPS", "PSD"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000 codestream"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
    (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"SIMPLE  =", "FITS"), (b"\x89HDF", "HDF5"), (b"GRIB", "GRIB"),
    (b"BUFR", "BUFR"), (b"\xd7\xcd\xc6\x9a", "WMF"), (b"\x01\x00\x00\x00", "EMF"), (b"#define", "XBM"),
    (b"/* XPM */", "XPM"), (b"\x59\xa6\x6a\x95", "Sun raster"), (b"BLP", "BLP"), (b"FTEX", "FTEX"),
    (b"<?xml", "XML / SVG"), (b"<svg", "SVG"), (b"\x00\x00\x00\x1cftypavif", "AVIF"), (b"ftypheic", "HEIC"),
    *((b"P" + bytes([c]), "PNM / PPM") for c in b"1234567f"),
)

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
    shown = show_path(path)
    try:
        # O_NONBLOCK: opening a FIFO without a writer returns at once instead of hanging
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"inputs[{index}]: cannot read image file {shown}: {exc.strerror}", index=index) from exc
    except ValueError as exc:  # a NUL byte in the path
        raise InputError(f"inputs[{index}]: image path {shown!r} is not a valid file name: {exc}",
                         index=index) from exc
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
            raise InputError(f"inputs[{index}]: image path {shown} is {kind}; only regular files are read", index=index)
        if st.st_size > max_bytes:
            raise InputError(
                f"inputs[{index}]: image file {shown} is {st.st_size} bytes, over the {max_bytes} limit", index=index
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
                f"inputs[{index}]: image file {shown} holds more than {max_bytes} bytes, over the limit", index=index
            )
        return b"".join(chunks)
    except OSError as exc:
        raise InputError(f"inputs[{index}]: cannot read image file {shown}: {exc.strerror or exc}",
                         index=index) from exc
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


def describe_format(data: bytes) -> str:
    """A name for the format of ``data`` from its first bytes alone (no decoder sees them).

    >>> describe_format(b"%!PS-Adobe-3.0 EPSF-3.0")
    'PostScript / EPS'
    """
    head = data[:32]
    for magic, name in _MAGIC:
        if head.startswith(magic) or (magic.startswith(b"ftyp") and head[4:].startswith(magic)):
            return name
    return f"unknown (first bytes {head[:8]!r})" if head else "empty (0 bytes)"


def show_path(path: Any) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (a surrogate-escaped file name) become ``\\xNN``.

    >>> show_path(Path("a\udcffb.png"))
    'a\\\\xffb.png'
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace") if isinstance(path, (str, os.PathLike)) else str(path)


def open_image(data: bytes, index: int, what: str, max_pixels: int):
    """``data`` opened by Pillow with the :data:`IMAGE_FORMATS` allow-list and loaded (first frame / page),
    under Pillow's pixel guard; an :class:`InputError` naming ``inputs[index]`` (and ``what``: the file, or
    the byte count) for another format, a bomb, or a corrupt, truncated or oversized image."""
    from PIL import Image

    def check_size(w: int, h: int) -> None:
        _check_size(w, h, index, max_pixels)

    with pillow_pixel_guard(max_pixels):
        try:
            img = Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS))
        except Image.DecompressionBombError as exc:
            raise InputError(f"inputs[{index}]: image refused as a decompression bomb ({exc})", index=index) from exc
        except Image.UnidentifiedImageError as exc:
            raise InputError(
                f"inputs[{index}]: not a readable image ({what}): format {describe_format(data)} is not one of the "
                f"accepted formats {', '.join(IMAGE_FORMATS)} (or the file is corrupt)", index=index
            ) from exc
        except Exception as exc:  # noqa: BLE001 - a plugin's parse error: struct.error, SyntaxError, OverflowError
            raise InputError(
                f"inputs[{index}]: not a readable image ({what}): {type(exc).__name__}: {exc}", index=index
            ) from exc
        check_size(*img.size)  # from the header, before any pixel is allocated
        try:
            img.load()  # the first frame / page only; some formats check frame sizes against the guard here
        except Image.DecompressionBombError as exc:
            raise InputError(f"inputs[{index}]: image refused as a decompression bomb ({exc})", index=index) from exc
        except Exception as exc:  # noqa: BLE001 - OSError (truncated), MemoryError, OverflowError, struct.error ...
            raise InputError(
                f"inputs[{index}]: corrupt or truncated image ({what}, {img.format} {img.size[0]}x{img.size[1]}): "
                f"{type(exc).__name__}: {exc}", index=index
            ) from exc
        check_size(*img.size)  # a decoder may change the size while loading
    return img


def _check_size(w: int, h: int, index: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise InputError(
            f"inputs[{index}]: image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels "
            "(decompression-bomb guard; pass max_image_pixels=... to encode to raise it)"
        , index=index)
    if w <= 0 or h <= 0:
        raise InputError(f"inputs[{index}]: image has zero size {w}x{h}", index=index)


#: high-bit-depth images are scaled to 8 bits this many pixels at a time (no full-size wide intermediate)
_BLOCK_PIXELS = 1 << 20


def _scaled_to_8_bit(img: Any, index: int):
    """A mode ``I;16*`` / ``I`` / ``F`` image as mode ``L``, scaled (not clipped) row block by row block, so
    the only full-size array is the 8-bit result; out-of-range or non-finite data is an :class:`InputError`."""
    from PIL import Image

    mode = img.mode
    w, h = img.size
    out = np.empty((h, w), dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(w, 1))
    lo, hi, finite = None, None, True
    for y in range(0, h, rows):
        block = np.asarray(img.crop((0, y, w, min(y + rows, h))))
        if mode == "F":
            block = block.astype(np.float32, copy=False)
            ok = np.isfinite(block)
            if not ok.all():
                finite = False
                block = np.where(ok, block, 0.0)
        if block.size:
            b_lo, b_hi = block.min(), block.max()
            lo = b_lo if lo is None else min(lo, b_lo)
            hi = b_hi if hi is None else max(hi, b_hi)
        if mode == "F":
            out[y : y + rows] = np.rint(np.clip(block, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
        else:
            # round(v * 255 / 65535) == round(v / 257) == (v + 128) // 257: v / 257 is never exactly x.5
            out[y : y + rows] = ((np.clip(block, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "F":
        if not finite:
            raise InputError(f"inputs[{index}]: float image (mode F) holds NaN or infinite values", index=index)
        if lo is not None and (lo < 0.0 or hi > 1.0):
            raise InputError(
                f"inputs[{index}]: float image (mode F) holds values {float(lo):g}..{float(hi):g}; expected data in "
                "[0, 1] (scale it to [0, 1] or pass an 8-bit image)"
            , index=index)
    elif lo is not None and (int(lo) < 0 or int(hi) > 65535):
        what = "32-bit integer image (mode I)" if mode == "I" else f"integer image (mode {mode})"
        raise InputError(
            f"inputs[{index}]: {what} holds values {int(lo)}..{int(hi)}; expected 16-bit data in 0..65535"
        , index=index)
    return Image.fromarray(out)


def to_rgb(img: Any, index: int):
    """``img`` as an 8-bit RGB ``PIL.Image``, scaling high-bit-depth data instead of clipping it.

    16-bit modes (``I;16*``, and ``I``, which Pillow uses for 16-bit PNG/TIFF data) are scaled
    ``v * 255 / 65535`` (rounded); float images (``F``) must hold values in [0, 1] and are scaled
    to 0-255 (rounded); other ranges, NaN or out-of-range 32-bit data are an :class:`InputError`
    naming ``inputs[index]``. Other modes go through Pillow's ``convert("RGB")``.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        try:
            img = _scaled_to_8_bit(img, index)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - MemoryError, an unreadable mode
            raise InputError(f"inputs[{index}]: cannot convert image of mode {mode} to RGB: "
                             f"{type(exc).__name__}: {exc}", index=index) from exc
    try:
        return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - ValueError (no conversion), MemoryError
        raise InputError(f"inputs[{index}]: cannot convert image of mode {mode} to RGB: "
                         f"{type(exc).__name__}: {exc}", index=index) from exc


def load_image(item: Any, index: int, *, max_pixels: int = MAX_IMAGE_PIXELS):
    """Decode one image item to an RGB ``PIL.Image``, refusing corrupt and oversized images.

    Files and bytes are opened only as one of :data:`IMAGE_FORMATS` (first frame / page); a ``PIL`` image
    opened elsewhere and not yet loaded must be one of them too, since loading it would run its plugin.
    Every refusal is an :class:`InputError` naming ``inputs[index]``.
    """
    from PIL import Image, ImageFile

    if isinstance(item, np.ndarray):
        _check_size(item.shape[1], item.shape[0], index, max_pixels)
        arr = item[:, :, 0] if item.ndim == 3 and item.shape[2] == 1 else item
        img = Image.fromarray(np.ascontiguousarray(arr))
    elif _is_pil(item):
        _check_size(*item.size, index, max_pixels)
        lazy = isinstance(item, ImageFile.ImageFile) and bool(getattr(item, "tile", None))
        plugin = type(item)  # the class that decodes it (its instance's ``format`` can be set to anything)
        fmt = getattr(plugin, "format", None)
        if lazy and (fmt not in _LAZY_FORMATS or not plugin.__module__.startswith("PIL.")):
            raise InputError(
                f"inputs[{index}]: PIL image of format {fmt} is not loaded yet and embedhub does not decode "
                f"that format (accepted: {', '.join(IMAGE_FORMATS)}); convert it yourself if you trust the file"
            , index=index)
        try:
            item.load()  # a lazily opened file decodes here; a closed image fails here
        except Exception as exc:
            raise InputError(
                f"inputs[{index}]: PIL image of mode {item.mode} cannot be read (closed, or a corrupt or "
                f"truncated file): {type(exc).__name__}: {exc}"
            , index=index) from exc
        _check_size(*item.size, index, max_pixels)
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
        what = show_path(item) if isinstance(item, Path) else f"{len(data)} bytes"
        img = open_image(data, index, what, max_pixels)
    return to_rgb(img, index)
