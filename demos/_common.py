"""What both demos share: which model to run, one shared model object per name, bounded image reading,
Fashion-MNIST test images and the bundled example files.

>>> from embedhub.demos._common import resolve_model, load_model, read_image, example_images
>>> name = resolve_model(None, kind="text")          # $EMBEDHUB_MODEL, else all-MiniLM-L6-v2
>>> model = load_model(name)                         # doctest: +SKIP
>>> image = read_image(example_images()[0])          # an RGB PIL image, or a DemoError naming the problem
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from embedhub.training.data import FASHION_CLASSES, FASHION_DIR

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
    "example_images",
    "example_label",
    "fashion_mnist_test",
    "load_model",
    "read_image",
    "resolve_model",
]

#: the text model both demos run on when none is named
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: uploads larger than this are refused (pass it to Gradio's ``max_file_size`` too)
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: images with more pixels than this are refused before they are decoded (decompression-bomb guard)
MAX_PIXELS = 40_000_000
#: files shipped with the demos: the default model's heads and run record, the example images
ASSETS = Path(__file__).resolve().parent / "assets"
EXAMPLES = ASSETS / "examples"

_MODELS: dict[tuple[str, str], embedhub.EmbeddingModel] = {}
_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


class DemoError(ValueError):
    """A request the demo cannot serve (unknown model, unreadable or oversized image, ...): the message is
    one readable line for the page, naming what was wrong.

    >>> str(DemoError("model 'nope' not found: no such folder, alias or Hub repo"))
    "model 'nope' not found: no such folder, alias or Hub repo"
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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


def load_model(name: str, backend: Literal["torch", "onnx"] = "torch") -> embedhub.EmbeddingModel:
    """The model ``name`` on ``backend``, loaded once per (name, backend) and shared by every request.

    Loading happens under a lock, so concurrent first requests load it once; a model that cannot be loaded
    is a :class:`DemoError` (``"model 'x' not found: ..."``, ``"model 'x' cannot be loaded: ..."``).

    >>> load_model("all-MiniLM-L6-v2") is load_model("all-MiniLM-L6-v2")  # doctest: +SKIP
    True
    """
    import embedhub

    name = str(name).strip()
    if not name:
        raise DemoError("no model named: enter a model name (alias, folder or Hub id)")
    if backend not in ("torch", "onnx"):
        raise DemoError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    key = (name, backend)
    model = _MODELS.get(key)
    if model is not None:
        return model
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        model = _MODELS.get(key)
        if model is None:
            try:
                model = embedhub.load(name, backend=backend, device="cpu")
            except embedhub.ModelNotFoundError as exc:
                raise DemoError(f"model {name!r} not found: {exc}") from None
            except embedhub.MissingDependencyError as exc:
                raise DemoError(f"model {name!r} needs a package that is not installed: {exc}") from None
            except (embedhub.EmbedhubError, OSError, ValueError, RuntimeError) as exc:
                raise DemoError(f"model {name!r} cannot be loaded ({backend}): {exc}") from None
            _MODELS[key] = model
    return model


_FORWARD_LOCKS: dict[int, threading.Lock] = {}


def model_lock(model: embedhub.EmbeddingModel) -> threading.Lock:
    """The lock that makes requests on the shared ``model`` run its forward one at a time."""
    with _LOCKS_LOCK:
        return _FORWARD_LOCKS.setdefault(id(model), threading.Lock())


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


def read_image(path_or_image: Any, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded image as an RGB ``PIL.Image``, decoded only when it is small enough.

    ``path_or_image`` is a file path (what ``gr.Image(type="filepath")`` gives; prefer it, so Gradio never
    decodes an unchecked upload), bytes, a ``PIL.Image`` or a uint8 array. Missing files, files over
    ``max_bytes``, images over ``max_pixels`` (checked from the header, before decoding), corrupt and
    non-image files are a :class:`DemoError` naming the problem.

    >>> read_image("demos/assets/examples/sandal_0.png").size  # doctest: +SKIP
    (28, 28)
    """
    import embedhub
    from embedhub.utils import load_image

    if path_or_image is None:
        raise DemoError("no image: upload an image or pick an example")
    item = path_or_image
    what = "the image"
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        what = f"image file {path.name!r}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DemoError(f"{what} not found") from None
        except OSError as exc:
            raise DemoError(f"{what} cannot be read: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise DemoError(f"{what} is not a regular file")
        if st.st_size > max_bytes:
            raise DemoError(f"{what} is {_mb(st.st_size)}, over the {_mb(max_bytes)} upload limit")
        if st.st_size == 0:
            raise DemoError(f"{what} is empty, not an image")
        _check_header(path, what, max_pixels)
        item = path
    elif isinstance(item, (bytes, bytearray, memoryview)):
        if len(item) > max_bytes:
            raise DemoError(f"{what} is {_mb(len(item))}, over the {_mb(max_bytes)} upload limit")
        item = bytes(item)
        _check_header(item, what, max_pixels)
    elif isinstance(item, np.ndarray) and item.ndim >= 2 and item.shape[0] * item.shape[1] > max_pixels:
        _too_many_pixels(what, item.shape[1], item.shape[0], max_pixels)
    elif hasattr(item, "size") and isinstance(getattr(item, "size", None), tuple) and len(item.size) == 2:
        w, h = item.size
        if w * h > max_pixels:
            _too_many_pixels(what, w, h, max_pixels)
    try:
        return load_image(item, 0, max_pixels=max_pixels)
    except embedhub.InputError as exc:
        raise DemoError(f"{what}: {exc.detail}") from None
    except embedhub.InputTypeError as exc:
        raise DemoError(f"{what}: {exc.detail}") from None


def _check_header(source: Path | bytes, what: str, max_pixels: int) -> None:
    """Refuse a non-image, or an image whose header declares more than ``max_pixels`` (nothing is decoded)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            w, h = img.size
    except Image.DecompressionBombError as exc:
        raise DemoError(f"{what} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise DemoError(f"{what} is not an image (not a format Pillow reads: PNG, JPEG, WebP, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DemoError(f"{what} is a corrupt or truncated image: {exc}") from None
    if w * h > max_pixels:
        _too_many_pixels(what, w, h, max_pixels)


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

    from embedhub.utils import load_image

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
    """The bundled example images (``demos/assets/examples``): 2 Fashion-MNIST test images per class
    (``<class>_<i>.png``) and 4 scikit-image photographs (``chelsea.jpg``, ...), sorted by name.

    >>> [p.name for p in example_images()][:2]  # doctest: +SKIP
    ['ankle-boot_0.png', 'ankle-boot_1.png']
    """
    return sorted(p for p in EXAMPLES.glob("*") if p.suffix in (".png", ".jpg") and p.is_file())


def example_label(path: str | os.PathLike) -> str | None:
    """The Fashion-MNIST class of a bundled example (``ankle-boot_1.png`` -> ``'ankle boot'``); ``None`` for
    the photographs.

    >>> example_label("demos/assets/examples/ankle-boot_1.png"), example_label("chelsea.jpg")
    ('ankle boot', None)
    """
    stem = Path(path).stem.rsplit("_", 1)[0]
    return {c.replace(" ", "-"): c for c in FASHION_CLASSES}.get(stem)
