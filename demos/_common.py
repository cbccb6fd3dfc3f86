"""What both demos share: which model to run, one shared model object per name, bounded image reading,
Fashion-MNIST test images and the bundled example files.

>>> from embedhub.demos._common import resolve_model, load_model, read_image, example_images
>>> name = resolve_model(None, kind="text")          # $EMBEDHUB_MODEL, else all-MiniLM-L6-v2
>>> model = load_model(name)                         # doctest: +SKIP
>>> image = read_image(example_images()[0])          # an RGB PIL image, or a DemoError naming the problem
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from embedhub.training.data import FASHION_CLASSES, FASHION_DIR

from ._base import ASSETS, EXAMPLES, DemoError, embedhub_home, say

if TYPE_CHECKING:
    from PIL import Image

    import embedhub

__all__ = [
    "ASSETS",
    "DEFAULT_TEXT_MODEL",
    "DemoError",
    "EXAMPLES",
    "FASHION_CLASSES",
    "MAX_PIXELS",
    "MAX_UPLOAD_BYTES",
    "MODEL_CACHE_SIZE",
    "IMAGE_FORMATS",
    "allow_model_loading",
    "image_format",
    "image_size",
    "local_only",
    "model_cache",
    "read_file",
    "example_images",
    "embedhub_home",
    "example_label",
    "fashion_mnist_test",
    "load_model",
    "read_image",
    "resolve_model",
    "say",
]

#: the text model both demos run on when none is named
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: uploads larger than this are refused (pass it to Gradio's ``max_file_size`` too)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: images with more pixels than this are refused before they are decoded (decompression-bomb guard)
MAX_PIXELS = 40_000_000

#: models :func:`load_model` keeps (an LRU by count; only models that loaded and passed the caller's check)
MODEL_CACHE_SIZE = 3

_MODELS: OrderedDict[tuple[str, str], embedhub.EmbeddingModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_LOAD_LOCK = threading.Lock()
_FORWARD_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_model(arg: str | None, *, kind: Literal["image", "text"], readme: str | os.PathLike | None = None) -> str:
    """The model a demo runs: ``arg``, else ``$EMBEDHUB_MODEL``, else the first ``models:`` entry of the Space
    README's YAML header (``readme``, when that file exists), else the offline default (the LiT model on
    Fashion-MNIST, built on first use, for ``kind="image"``; :data:`DEFAULT_TEXT_MODEL` for ``kind="text"``).

    >>> resolve_model("my-org/my-clip", kind="image")
    'my-org/my-clip'
    """
    if kind not in ("image", "text"):
        raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
    for candidate in (arg, os.environ.get("EMBEDHUB_MODEL")):
        if candidate is not None and str(candidate).strip():
            return str(candidate).strip()
    if readme is not None and Path(readme).is_file():
        first = _readme_model(Path(readme))
        if first:
            return first
    if kind == "text":
        return DEFAULT_TEXT_MODEL
    from ._default import default_image_model

    return str(default_image_model())


def _readme_model(readme: Path) -> str | None:
    """The first entry of ``models:`` in a README's YAML header, or ``None`` when it names none."""
    from huggingface_hub import metadata_load

    try:
        meta = metadata_load(readme) or {}
    except Exception as exc:  # yaml.YAMLError and friends: the header is not valid YAML
        raise DemoError(f"{readme}: the YAML header cannot be read ({type(exc).__name__}: {exc})") from None
    models = meta.get("models")
    if models is None:
        return None
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise DemoError(f"{readme}: 'models' in the YAML header must be a list of Hub ids, got {models!r}")
    return models[0].strip() if models else None


def _model_key(name: str, backend: str) -> tuple[str, str]:
    """The cache key of a model: a local folder by its resolved path (so ``x``, ``./x`` and ``x/`` are one
    entry), any other name as given."""
    try:
        path = Path(name).expanduser()
        if path.is_dir():
            return str(path.resolve()), backend
    except (OSError, RuntimeError, ValueError):  # an unreadable or looping path: not a folder for the key
        pass
    return name, backend


def model_cache() -> list[tuple[str, str]]:
    """The (name, backend) keys of the models :func:`load_model` holds now, least recently used first (at
    most :data:`MODEL_CACHE_SIZE`)."""
    with _CACHE_LOCK:
        return list(_MODELS)


def load_model(name: str, backend: Literal["torch", "onnx"] = "torch",
               check: Callable[[embedhub.EmbeddingModel], None] | None = None) -> embedhub.EmbeddingModel:
    """The model ``name`` on ``backend``, loaded once and shared by every request.

    Models are kept in an LRU of :data:`MODEL_CACHE_SIZE` entries keyed by (resolved folder or name,
    backend): only a model that loaded and that ``check`` accepted (``check(model)`` raises a
    :class:`DemoError` for a model the caller cannot use) is kept, so refused names cost nothing once
    answered. Loads run one at a time under a lock (concurrent first requests load a model once, and
    at most one model beyond the cache is in memory). A model that cannot be loaded is a
    :class:`DemoError` (``"model 'x' not found: ..."``, ``"model 'x' cannot be loaded: ..."``) that
    names the model and never quotes the library's message: nothing of a folder's contents is echoed.

    >>> load_model("all-MiniLM-L6-v2") is load_model("all-MiniLM-L6-v2")  # doctest: +SKIP
    True
    """
    import embedhub

    name = str(name).strip()
    if not name:
        raise DemoError("no model named: enter a model name (alias, folder or Hub id)")
    if backend not in ("torch", "onnx"):
        raise DemoError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    key = _model_key(name, backend)
    with _CACHE_LOCK:
        model = _MODELS.get(key)
        if model is not None:
            _MODELS.move_to_end(key)
    if model is None:
        with _LOAD_LOCK:
            with _CACHE_LOCK:
                model = _MODELS.get(key)
            if model is None:
                model = _load(name, backend, embedhub)
                refusal = None if check is None else _refusal(model, check)
                if refusal is not None:
                    del model  # a model the caller cannot use is dropped here, never cached
                    raise refusal
                with _CACHE_LOCK:
                    _MODELS[key] = model
                    while len(_MODELS) > MODEL_CACHE_SIZE:
                        _MODELS.popitem(last=False)
                return model
    if check is not None:
        check(model)
    return model


def _refusal(model: Any, check: Callable[[Any], None]) -> BaseException | None:
    """The error ``check(model)`` raises, without its traceback (which would keep the refused model alive as
    long as the error is kept, e.g. by the web server), or ``None`` when it accepts the model."""
    try:
        check(model)
    except Exception as exc:
        return exc.with_traceback(None)
    return None


def _load(name: str, backend: str, embedhub: Any) -> embedhub.EmbeddingModel:
    """``embedhub.load`` with its errors turned into a :class:`DemoError` of fixed wording (the library's
    message, which may list a folder's files, goes to the server log only)."""
    try:
        return embedhub.load(name, backend=backend, device="cpu")
    except embedhub.MissingDependencyError as exc:
        _log(name, exc)
        raise DemoError(f"model {name!r} needs a package that is not installed (see the server log)") from None
    except embedhub.ModelNotFoundError as exc:
        _log(name, exc)
        raise DemoError(f"model {name!r} not found: not a model folder, a registered alias or a Hub repo id "
                        "('org/name[@revision]')") from None
    except embedhub.UnknownFormatError as exc:
        _log(name, exc)
        raise DemoError(f"model {name!r} cannot be loaded ({backend}): not a model folder embedhub reads "
                        "(embedhub, sentence-transformers, open_clip or transformers CLIP)") from None
    except (embedhub.EmbedhubError, OSError, ValueError, RuntimeError) as exc:
        _log(name, exc)
        raise DemoError(f"model {name!r} cannot be loaded ({backend}): {type(exc).__name__} (see the server "
                        "log)") from None


def _log(name: str, exc: BaseException) -> None:
    logging.getLogger("embedhub.demos").warning("model %r cannot be loaded: %s", name, exc)


def model_lock(model: embedhub.EmbeddingModel) -> threading.Lock:
    """The lock that makes requests on the shared ``model`` run its forward one at a time (held as long
    as the model lives)."""
    with _CACHE_LOCK:
        lock = _FORWARD_LOCKS.get(model)
        if lock is None:
            lock = _FORWARD_LOCKS[model] = threading.Lock()
        return lock


def allow_model_loading(host: str, share: bool = False, allow: bool | None = None) -> bool:
    """Whether a demo served on ``host`` lets callers load other models (``/load_model``): ``allow`` when
    given (``--allow-model-loading``), else ``$EMBEDHUB_DEMO_ALLOW_MODEL_LOADING`` (``1``/``0``) when set,
    else only when the server listens on this machine alone (a loopback ``host``, no ``share``, not a
    Hugging Face Space).

    >>> allow_model_loading("127.0.0.1"), allow_model_loading("0.0.0.0"), allow_model_loading("0.0.0.0", allow=True)
    (True, False, True)
    """
    if allow is not None:
        return bool(allow)
    env = os.environ.get("EMBEDHUB_DEMO_ALLOW_MODEL_LOADING", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return local_only(host, share)


def local_only(host: str, share: bool = False) -> bool:
    """True when a server on ``host`` is reachable from this machine alone: a loopback address, no public
    share link, not a Hugging Face Space."""
    import ipaddress

    if share or os.environ.get("SPACE_ID"):
        return False
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return str(host) == "localhost"


def save_data_url(url: str, cache_dir: str | os.PathLike, *, what: str = "pasted image") -> str:
    """An inline ``data:`` image, size-bounded (:data:`MAX_UPLOAD_BYTES`) and not decoded, written to a
    new file in ``cache_dir``; its path. A ``DemoError`` naming ``what`` when too large or not base64."""
    import base64
    import binascii
    import tempfile

    encoded = url.partition(",")[2]
    if len(encoded) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise DemoError(f"the {what} is larger than {MAX_UPLOAD_BYTES // 2**20} MB, the upload limit; "
                        "upload a smaller file")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise DemoError(f"the {what} is not valid base64 data") from None
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, prefix="inline-", delete=False) as f:
        f.write(data)
    return f.name


#: the image formats the demos decode, recognised by their first bytes (nothing else reaches a decoder:
#: no EPS/PostScript, PDF, SVG, ...)
IMAGE_FORMATS = ("PNG", "JPEG", "WebP", "GIF", "BMP", "TIFF")
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def image_format(head: bytes) -> str | None:
    """The allow-listed format (:data:`IMAGE_FORMATS`) whose signature ``head`` (a file's first bytes)
    starts with, else ``None``.

    >>> image_format(b"\x89PNG\r\n\x1a\n...."), image_format(b"%!PS-Adobe-3.0 EPSF-3.0")
    ('PNG', None)
    """
    head = bytes(head[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """The width and height an allow-listed image's header declares (PNG, JPEG, WebP, GIF, BMP; read
    from the bytes, nothing decoded), or ``None`` when it cannot tell (TIFF, a short or odd header).

    >>> header = bytes.fromhex("89504e470d0a1a0a0000000d49484452")
    >>> image_size(header + (640).to_bytes(4, "big") + (480).to_bytes(4, "big"))
    (640, 480)
    """
    import struct

    kind = image_format(data)
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if kind == "GIF":
            return struct.unpack("<HH", data[6:10])
        if kind == "BMP":
            if struct.unpack("<I", data[14:18])[0] == 12:
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "WebP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                bits = struct.unpack("<I", data[21:25])[0]
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if kind == "JPEG":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker == 0xFF:
                    i += 1
                    continue
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5:i + 9])
                    return w, h
                if marker in (0x01, *range(0xD0, 0xDA)):
                    i += 2
                    continue
                i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    except struct.error:
        return None
    return None


def read_file(path: str | os.PathLike | int, what: str, max_bytes: int = MAX_UPLOAD_BYTES, *,
              dir_fd: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` (relative to ``dir_fd`` when given), at most ``max_bytes``.

    A :class:`DemoError` naming ``what`` when it is missing, a symbolic link (never followed), not a regular
    file (a folder, FIFO, device), empty or larger than ``max_bytes``; nothing past the bound is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise DemoError(f"{what} not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DemoError(f"{what} is a symbolic link, not a regular file") from None
        raise DemoError(f"{what} cannot be read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DemoError(f"{what} is not a regular file")
        if st.st_size > max_bytes:
            raise DemoError(f"{what} is {_mb(st.st_size)}, over the {_mb(max_bytes)} upload limit")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 22))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise DemoError(f"{what} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise DemoError(f"{what} grew over the {_mb(max_bytes)} upload limit while it was read")
    if not data:
        raise DemoError(f"{what} is empty, not an image")
    return data


def read_image(path_or_image: Any, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """An uploaded image as an RGB ``PIL.Image``, decoded only when it is small enough and of an allowed format.

    ``path_or_image`` is a file path (what ``gr.Image(type="filepath")`` gives; prefer it, so Gradio never
    decodes an unchecked upload), bytes, a ``PIL.Image`` or a uint8 array. A file is read once, bounded
    (``max_bytes``; a symbolic link is refused), its first bytes must be one of :data:`IMAGE_FORMATS`, and
    only then is it decoded, by ``embedhub.modules.load_image`` (which checks ``max_pixels`` from the header,
    before decoding). Missing files, oversized, non-image, corrupt and other-format files are a
    :class:`DemoError` naming the problem (and the file; ``name`` names bytes in messages).

    >>> read_image("demos/assets/examples/sandal_0.png").size  # doctest: +SKIP
    (28, 28)
    """
    import embedhub
    from embedhub.modules import load_image

    if path_or_image is None:
        raise DemoError("no image: upload an image or pick an example")
    item = path_or_image
    what = f"image {name!r}" if name else "the image"
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        what = f"image file {name or path.name!r}"
        item = read_file(path, what, max_bytes)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) > max_bytes:
            raise DemoError(f"{what} is {_mb(len(item))}, over the {_mb(max_bytes)} upload limit")
        if not len(item):
            raise DemoError(f"{what} is empty, not an image")
        item = bytes(item)
    elif isinstance(item, np.ndarray) and item.ndim >= 2 and item.shape[0] * item.shape[1] > max_pixels:
        _too_many_pixels(what, item.shape[1], item.shape[0], max_pixels)
    elif hasattr(item, "size") and isinstance(getattr(item, "size", None), tuple) and len(item.size) == 2:
        w, h = item.size
        if w * h > max_pixels:
            _too_many_pixels(what, w, h, max_pixels)
    if isinstance(item, bytes):
        if image_format(item) is None:
            raise DemoError(f"{what} is not an image: its content is none of the accepted formats "
                            f"({', '.join(IMAGE_FORMATS)})")
        size = image_size(item)
        if size is not None and size[0] * size[1] > max_pixels:
            _too_many_pixels(what, *size, max_pixels)
    try:
        return load_image(item, 0, max_pixels=max_pixels)
    except embedhub.InputError as exc:
        raise DemoError(_decode_error(what, exc.detail, max_pixels)) from None
    except embedhub.InputTypeError as exc:
        raise DemoError(f"{what}: {exc.detail}") from None


def _decode_error(what: str, detail: str, max_pixels: int) -> str:
    """A readable line for the library's refusal ``detail`` of one image (no paths of this machine)."""
    size = re.search(r"(\d+)x(\d+)", detail)
    if size and ("pixel" in detail or "bomb" in detail):
        w, h = int(size.group(1)), int(size.group(2))
        if w * h > max_pixels:
            return (f"{what} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the {max_pixels / 1e6:g} megapixel "
                    "limit")
    pixels = re.search(r"\((\d+) pixels\)", detail)
    if pixels and int(pixels.group(1)) > max_pixels:
        return (f"{what} is {int(pixels.group(1)) / 1e6:.1f} megapixels, over the {max_pixels / 1e6:g} megapixel "
                "limit")
    if "bomb" in detail:
        return f"{what} is too large to decode safely"
    if "zero size" in detail:
        return f"{what} has zero width or height"
    reason = detail.rsplit(": ", 1)[-1] if ": " in detail else ""
    reason = reason if reason and "/" not in reason and len(reason) < 120 else ""
    return f"{what} is a corrupt or truncated image" + (f" ({reason})" if reason else "")


def _too_many_pixels(what: str, w: int, h: int, max_pixels: int) -> None:
    raise DemoError(f"{what} is {w}x{h} = {w * h / 1e6:.1f} megapixels, over the {max_pixels / 1e6:g} megapixel limit")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def fashion_mnist_test(n: int | None = None) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """The first ``n`` (default all 10,000) Fashion-MNIST test images as RGB PIL images (decoded as the SDK
    decodes arrays), their labels and the class names (:data:`FASHION_CLASSES`), from Debian's
    ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``).

    >>> images, labels, classes = fashion_mnist_test(20)  # doctest: +SKIP
    >>> classes[labels[0]]                                 # doctest: +SKIP
    'ankle boot'
    """
    from embedhub.training.data import fashion_mnist

    from embedhub.modules import load_image

    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0 or None, got {n}")
    try:
        data = fashion_mnist("test", FASHION_DIR)
    except FileNotFoundError as exc:
        raise DemoError(str(exc)) from None
    rows = slice(None) if n is None else slice(0, n)
    images = [load_image(a, i) for i, a in enumerate(data.images[rows])]
    return images, np.asarray(data.labels[rows]), list(data.classes)


def example_images() -> list[Path]:
    """The bundled example images (``demos/assets/examples``): 2 Fashion-MNIST test images per class,
    ``<class>_<row>.png`` (``row``: the image's row in the test split; see ``build_default.EXAMPLE_ROWS``),
    sorted by name. The default model answers each of them right (``tests/test_demo_examples.py``).

    >>> [p.name for p in example_images()][:2]  # doctest: +SKIP
    ['ankle-boot_1068.png', 'ankle-boot_2448.png']
    """
    return sorted(p for p in EXAMPLES.glob("*") if p.suffix in (".png", ".jpg") and p.is_file())


def example_label(path: str | os.PathLike) -> str | None:
    """The Fashion-MNIST class of a bundled example or gallery image, from its name (``ankle-boot_1536.png``
    -> ``'ankle boot'``); ``None`` for a name of no class.

    >>> example_label("demos/assets/examples/ankle-boot_1536.png"), example_label("chelsea.jpg")
    ('ankle boot', None)
    """
    stem = Path(path).stem.rsplit("_", 1)[0]
    return {c.replace(" ", "-"): c for c in FASHION_CLASSES}.get(stem)
