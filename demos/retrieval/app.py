"""Multimodal retrieval with embedhub models and a faiss index, as a Gradio app.

Three searches: text -> images and image -> images over a gallery (the bundled examples plus
Fashion-MNIST test images, or a folder of images) with a CLIP-style model (default: the LiT model on
Fashion-MNIST), and text -> texts over 3,000 WordNet example sentences with a sentence model (default:
all-MiniLM-L6-v2). Each collection is indexed once with the SDK and saved with the model's fingerprint
(``index.py``); a later start with the same model and items reuses it, another model rebuilds it.

Run it with ``embedhub demo retrieval`` or ``python app.py`` (a Hugging Face Space runs the latter).
Named API endpoints: ``/search_images_by_text`` (query, k), ``/search_images_by_image`` (image, k),
``/search_texts`` (query, k), each returning a gallery or list and a table of [rank, item, score];
``/index_gallery`` (folder) where folder input is enabled (local runs).

>>> from embedhub.demos.retrieval.app import build_app
>>> demo = build_app()                                  # doctest: +SKIP
>>> demo.launch()                                       # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import gradio as gr
from embedhub.demos._common import (
    DEFAULT_TEXT_MODEL,
    IMAGE_FORMATS,
    MAX_UPLOAD_BYTES,
    DemoError,
    example_images,
    fashion_mnist_test,
    image_format,
    load_model,
    local_only,
    model_lock,
    read_file,
    read_image,
    resolve_model,
    save_data_url,
    say,
)
from embedhub.demos.retrieval.index import Hit, VectorIndex, cache_home, index_folder

import embedhub
from embedhub.store import atomic_write, install_folder

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
#: the bundled text collection (a Space holds it beside app.py; an installed embedhub in its package)
TEXTS = HERE / "texts" / "wordnet_examples.txt"
#: Fashion-MNIST test images (the first ones of t10k) in the bundled gallery, beside the examples
FASHION_GALLERY = 1000
#: a gallery folder may hold at most this many images
MAX_GALLERY = 20_000
#: results per search: 1 to MAX_K
MAX_K = 50
DEFAULT_K = 10
#: a text query longer than this many characters is refused
MAX_QUERY_CHARS = 1000
#: requests the queue runs at once; each model runs one forward at a time (a lock per model)
CONCURRENCY = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: result images are served as thumbnails of at most this many pixels a side, made by the app
THUMB_PX = 256
#: thumbnails kept on disk (an LRU by count; older ones are deleted)
THUMB_CACHE = 2048
#: the suggested text -> images queries (the first is the box's placeholder), each with the Fashion-MNIST
#: class whose images it finds: on the default model and the bundled gallery, the first ``DEFAULT_K``
#: results of each are all of that class (``tests/test_demo_examples.py``)
IMAGE_QUERIES: dict[str, str] = {
    "a pair of trousers": "trouser",
    "a handbag": "bag",
    "an ankle boot": "ankle boot",
    "jeans": "trouser",
    "a long dress": "dress",
    "sandals": "sandal",
    "a t-shirt": "t-shirt",
    "running shoes": "sneaker",
}
#: the suggested text -> texts queries (the first is the box's placeholder), each with the bundled
#: sentence it finds first (a paraphrase of it)
TEXT_QUERIES: dict[str, str] = {
    "the piano sounded badly out of tune": "the piano was jarringly out of tune",
    "the game was stopped by rain": "rain stopped play in the 4th inning",
}


# ------------------------------------------------------------------------------ collections
def index_root(root: str | os.PathLike | None = None) -> Path:
    """Where the demo keeps its indexes and the Fashion-MNIST gallery images: ``root``, else
    ``$EMBEDHUB_HOME/demo-index`` (``~/.cache/embedhub/demo-index``)."""
    return Path(root).expanduser() if root is not None else cache_home() / "demo-index"


def fashion_gallery(n: int = FASHION_GALLERY, root: str | os.PathLike | None = None) -> list[Path]:
    """The first ``n`` Fashion-MNIST test images as PNG files ``<class>_<index>.png`` (e.g.
    ``trouser_00002.png``) in ``index_root(root)/fashion-mnist-test``, written once (missing files are
    added through a staging folder, so a file is either complete or absent).

    >>> [p.name for p in fashion_gallery(2)]  # doctest: +SKIP
    ['ankle-boot_00000.png', 'pullover_00001.png']
    """
    if not 1 <= n <= 10_000:
        raise ValueError(f"n must be from 1 to 10000 (the Fashion-MNIST test split), got {n}")
    folder = index_root(root) / "fashion-mnist-test"
    listing = folder / f"first-{n}.txt"
    if listing.is_file():
        paths = [folder / name for name in listing.read_text(encoding="utf-8").split()]
        if len(paths) == n and all(p.is_file() for p in paths):
            return paths
    images, labels, classes = fashion_mnist_test(n)
    names = [f"{classes[int(y)].replace(' ', '-')}_{i:05d}.png" for i, y in enumerate(labels)]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".fashion-mnist-test.", suffix=".tmp"))
    for name, image in zip(names, images):
        if not (folder / name).is_file():
            image.save(staging / name, format="PNG")
    install_folder(staging, folder)
    atomic_write(listing, "\n".join(names) + "\n")
    return [folder / name for name in names]


def gallery_files(folder: str | os.PathLike, *, max_count: int = MAX_GALLERY) -> list[Path]:
    """The image files of a gallery folder (and its sub-folders; hidden names skipped), sorted.

    A ``DemoError`` naming the problem when the folder is missing or not a folder, holds a file that is
    not an image (by extension) or a symbolic link, holds no image, or more than ``max_count``.

    >>> gallery_files("~/Pictures/catalogue")[:1]  # doctest: +SKIP
    [PosixPath('/home/me/Pictures/catalogue/boot.jpg')]
    """
    text = str(folder).strip()
    if not text:
        raise DemoError("no folder named: type the path of a folder of images")
    root = Path(text).expanduser()
    if root.is_symlink():
        raise DemoError(f"gallery folder {text!r} is a symbolic link; name the folder itself")
    if not root.exists():
        raise DemoError(f"gallery folder {text!r} not found")
    if not root.is_dir():
        raise DemoError(f"{text!r} is not a folder; name a folder of images")
    root = root.resolve()
    images: list[Path] = []
    others: list[str] = []
    for here, dirs, files in os.walk(root, followlinks=False):
        links = [d for d in dirs if (Path(here) / d).is_symlink()]
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        for name in sorted(files) + sorted(links):
            if name.startswith("."):
                continue
            path = Path(here) / name
            if path.is_symlink() or not path.is_file():
                others.append(f"{path.relative_to(root)} (a link or special file)")
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                if image_format(_head(path)) is None:
                    others.append(f"{path.relative_to(root)} (not a {'/'.join(IMAGE_FORMATS)} image)")
                else:
                    images.append(path)
            else:
                others.append(str(path.relative_to(root)))
            if len(images) + len(others) > max_count:
                raise DemoError(f"gallery folder {text!r} holds more than {max_count:,} files; name a folder of at "
                                f"most {max_count:,} images")
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        raise DemoError(f"gallery folder {text!r} holds files that are not images: {', '.join(others[:3])}{more}; "
                        f"the gallery takes image files only ({', '.join(IMAGE_SUFFIXES)})")
    if not images:
        raise DemoError(f"gallery folder {text!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return images


def _head(path: Path, n: int = 32) -> bytes:
    """The first ``n`` bytes of a regular file (a link is not followed; anything else is ``b""``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return b""
    try:
        return os.read(fd, n) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def read_beneath(root: Path, rel: str, what: str) -> tuple[bytes, os.stat_result]:
    """The bytes (bounded by ``MAX_UPLOAD_BYTES``) and status of the regular file ``rel`` under the folder
    ``root``, opened one component at a time without following any symbolic link (the folder, its
    sub-folders and the file itself), so nothing outside ``root`` is ever read; a :class:`DemoError` naming
    ``what`` otherwise."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise DemoError(f"{what} is not a path inside the gallery")
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | nofollow)
    except OSError:
        raise DemoError(f"{what}: the gallery folder is gone or is no longer a folder") from None
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
            except OSError:
                raise DemoError(f"{what} is no longer inside a folder of the gallery (a link or missing)") from None
            os.close(fd)
            fd = sub
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except OSError:
            raise DemoError(f"{what} not found") from None
        if not stat.S_ISREG(st.st_mode):
            raise DemoError(f"{what} is no longer a regular file (a link or special file)")
        return read_file(parts[-1], what, MAX_UPLOAD_BYTES, dir_fd=fd), st
    finally:
        os.close(fd)


def texts_file() -> Path:
    """The bundled text collection: beside this app (a checkout, a Space), else in the installed package."""
    if TEXTS.is_file():
        return TEXTS
    from importlib.resources import files

    installed = Path(str(files("embedhub.demos.retrieval") / "texts" / TEXTS.name))
    if installed.is_file():
        return installed
    raise DemoError(f"the text collection {TEXTS.name} is missing (looked in {TEXTS.parent} and {installed.parent})")


def read_texts(path: str | os.PathLike | None = None) -> list[str]:
    """The text collection (default: the bundled 3,000 WordNet example sentences): one per line."""
    path = texts_file() if path is None else Path(path)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Gallery:
    """An indexed set of images: ``files`` maps each index id (a relative path) to its file, ``roots`` each id
    to the folder it lies in (nothing outside it is read for that id)."""

    name: str
    index: VectorIndex
    files: dict[str, Path]
    roots: dict[str, Path] = field(default_factory=dict)

    def read(self, item_id: str) -> tuple[bytes, os.stat_result]:
        """The bytes of the image ``item_id``, read beneath its folder (no link followed), and its status."""
        path, root = self.files[item_id], self.roots.get(item_id, self.files[item_id].parent)
        return read_beneath(root, path.relative_to(root).as_posix(), f"gallery image {item_id!r}")


class Thumbnails:
    """The only gallery pictures the app serves: thumbnails (at most ``THUMB_PX`` a side) it decodes from an
    indexed image (bounded, format-checked, read beneath the gallery folder) and writes into its own
    temporary folder, an LRU of ``THUMB_CACHE`` files. A gallery folder is never served, so its other
    files (``.env``, ``.git/``, files added later) cannot be fetched through the app."""

    def __init__(self, size: int = THUMB_PX, keep: int = THUMB_CACHE):
        self.size, self.keep = size, keep
        self.folder = Path(tempfile.mkdtemp(prefix="embedhub-retrieval-thumbs-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self._made: OrderedDict[tuple, Path] = OrderedDict()
        self._lock = threading.Lock()
        self._count = 0
        self.unavailable = self.folder / "unavailable.png"
        from PIL import Image

        Image.new("RGB", (64, 64), (200, 200, 200)).save(self.unavailable, format="PNG")

    def get(self, gallery: Gallery, item_id: str) -> tuple[Path, bool]:
        """The thumbnail file of ``item_id`` and whether its image could be read (else a grey placeholder)."""
        try:
            data, st = gallery.read(item_id)
        except DemoError:
            return self.unavailable, False
        key = (str(gallery.files[item_id]), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            path = self._made.get(key)
            if path is not None and path.is_file():
                self._made.move_to_end(key)
                return path, True
        try:
            image = read_image(data, name=item_id)
        except DemoError:
            return self.unavailable, False
        image.thumbnail((self.size, self.size))
        jpeg = gallery.files[item_id].suffix.lower() in (".jpg", ".jpeg")
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", gallery.files[item_id].stem)[:100] or "image"
        with self._lock:
            self._count += 1
            folder = self.folder / f"{self._count:08d}"
        folder.mkdir()
        path = folder / (stem + (".jpg" if jpeg else ".png"))
        image.save(path, format="JPEG" if jpeg else "PNG", quality=90)
        with self._lock:
            self._made[key] = path
            while len(self._made) > self.keep:
                _, old = self._made.popitem(last=False)
                shutil.rmtree(old.parent, ignore_errors=True)
        return path, True


def _check_modalities(name: str, model: embedhub.EmbeddingModel, needs: tuple[str, ...], what: str) -> None:
    missing = [m for m in needs if m not in model.modalities]
    if missing:
        raise DemoError(f"model {name!r} embeds only {' and '.join(model.modalities)}; {what} needs a model with "
                        f"{' and '.join(needs)} towers")


class Retrieval:
    """The demo's state: the image model and its gallery index, the text model and its text index.

    The gallery can be swapped (:meth:`open_gallery`); searches read the current one, so a search never
    mixes two galleries. Each model runs one forward at a time.

    >>> r = Retrieval()                                         # doctest: +SKIP
    >>> r.images_by_text("a trouser", 3)[0][0]                  # doctest: +SKIP
    'fashion-mnist/trouser_00002.png'
    """

    def __init__(self, image_model: str | None = None, text_model: str | None = None, backend: str = "torch",
                 gallery: str | os.PathLike | None = None, index_dir: str | os.PathLike | None = None,
                 fashion: int = FASHION_GALLERY):
        self.root = index_root(index_dir)
        self.fashion = fashion
        self.image_name = resolve_model(image_model, kind="image", readme=README)
        self.text_name = (text_model or os.environ.get("EMBEDHUB_TEXT_MODEL") or DEFAULT_TEXT_MODEL).strip()
        self.backend = backend
        say(f"loading the image model {self.image_name} ({backend})", "retrieval")
        self.image_model = load_model(self.image_name, backend, check=lambda m: _check_modalities(
            self.image_name, m, ("image", "text"), "image search"))
        say(f"loading the text model {self.text_name} (torch)", "retrieval")
        self.text_model = load_model(self.text_name, "torch", check=lambda m: _check_modalities(
            self.text_name, m, ("text",), "text search"))
        self._swap = threading.Lock()
        self.thumbnails = Thumbnails()
        self.gallery = self.open_gallery(gallery, progress=True)
        self.texts = read_texts()
        self.text_index = VectorIndex.open(index_folder(f"texts:{TEXTS.name}", self.root), self.text_model,
                                           self.texts, show_progress_bar=True,
                                           say=lambda m: say(f"text collection ({len(self.texts):,} sentences): {m}",
                                                             "retrieval"))

    def open_gallery(self, folder: str | os.PathLike | None = None, *, progress: bool | None = None) -> Gallery:
        """Index ``folder`` (validated by :func:`gallery_files`; ``None``: the bundled gallery) with the image
        model (reusing its saved index when the model and files are unchanged) and make it the current one."""
        if folder is None:
            files = {f"examples/{p.name}": p for p in example_images()}
            say(f"reading the gallery's {self.fashion:,} Fashion-MNIST test images", "retrieval")
            files.update({f"fashion-mnist/{p.name}": p for p in fashion_gallery(self.fashion, self.root)})
            roots = {i: p.parent for i, p in files.items()}
            name, key = f"bundled ({len(files):,} images)", f"gallery:bundled:{self.fashion}"
        else:
            paths = gallery_files(folder)
            base = Path(str(folder).strip()).expanduser().resolve()
            files = {p.relative_to(base).as_posix(): p for p in paths}
            roots = dict.fromkeys(files, base)
            name, key = f"{base} ({len(files):,} images)", f"gallery:folder:{base}"
        ids = list(files)
        gallery = Gallery(name, None, files, roots)  # type: ignore[arg-type] - the index comes next

        def reader(item_id: str, path: Path) -> Any:
            """Each image read beneath its folder, bounded, format-checked, decoded by the SDK's decoder."""
            return read_image(gallery.read(item_id)[0], name=item_id)

        try:  # no model lock: searches go on (on the current gallery) while a new one is embedded
            index = VectorIndex.open(index_folder(key, self.root), self.image_model, list(files.values()), ids=ids,
                                     show_progress_bar=progress, reader=reader,
                                     say=lambda m: say(f"gallery {name}: {m}", "retrieval"))
        except embedhub.InputError as exc:
            raise DemoError(f"gallery {name}: {exc}") from None
        gallery = Gallery(name, index, files, roots)
        with self._swap:
            self.gallery = gallery
        return gallery

    def images_by_text(self, query: str, k: int) -> list[Hit]:
        """The ``k`` gallery images nearest to the text ``query``."""
        query = check_query(query)
        gallery = self.gallery
        with model_lock(self.image_model):
            return gallery.index.query(self.image_model, query, check_k(k))[0]

    def images_by_image(self, image: Any, k: int) -> list[Hit]:
        """The ``k`` gallery images nearest to ``image`` (a file path, bytes or PIL image; read bounded)."""
        k = check_k(k)
        pil = read_image(image)
        gallery = self.gallery
        with model_lock(self.image_model):
            return gallery.index.query(self.image_model, [pil], k)[0]

    def texts_by_text(self, query: str, k: int) -> list[Hit]:
        """The ``k`` sentences of the text collection nearest to ``query``."""
        query = check_query(query)
        with model_lock(self.text_model):
            return self.text_index.query(self.text_model, query, check_k(k))[0]


def check_query(query: Any) -> str:
    """A non-empty text query of at most ``MAX_QUERY_CHARS`` characters, stripped; else a ``DemoError``.

    >>> check_query("  a pair of trousers ")
    'a pair of trousers'
    """
    if not isinstance(query, str) or not query.strip():
        raise DemoError("empty query: type what to search for, e.g. 'a pair of trousers'")
    if len(query) > MAX_QUERY_CHARS:
        raise DemoError(f"the query has {len(query):,} characters; at most {MAX_QUERY_CHARS:,} are accepted")
    return query.strip()


def check_k(k: Any) -> int:
    """The number of results: a whole number from 1 to ``MAX_K``; else a ``DemoError``.

    >>> check_k(5.0)
    5
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k != int(k) or not 1 <= k <= MAX_K:
        raise DemoError(f"number of results must be a whole number from 1 to {MAX_K}, got {k!r}")
    return int(k)


# ------------------------------------------------------------------------------ the image input
def upload_path(payload: Any, cache_dir: str | os.PathLike) -> str:
    """The file of an image upload as Gradio sends it when the event does not preprocess (``preprocess=False``):
    a ``FileData`` dict whose file Gradio has already checked to be in its upload cache, or an inline
    ``data:`` URL (written, size-bounded, to ``cache_dir``). The file is not decoded here: :func:`read_image`
    reads it bounded, so a non-image, corrupt or huge upload is a readable message, never an exception in
    Gradio's own image decoding.

    >>> upload_path({"path": "/tmp/gradio/ab12/boot.png"}, "/tmp/gradio")
    '/tmp/gradio/ab12/boot.png'
    """
    if payload is None:
        raise DemoError("no image: upload one, paste one, or click an example below")
    if isinstance(payload, str):
        payload = {"path": payload}
    if not isinstance(payload, dict):
        raise DemoError(f"the image must be an uploaded file, got {type(payload).__name__}")
    url = payload.get("url") or ""
    if isinstance(url, str) and url.startswith("data:"):
        return save_data_url(url, cache_dir)
    path = payload.get("path")
    if not isinstance(path, str) or not path:
        raise DemoError("the image upload carried no file; upload it again")
    return path


# ------------------------------------------------------------------------------ the app
def _error(exc: Exception) -> gr.Error:
    return gr.Error(" ".join(str(exc).split()), print_exception=False)


def _image_results(state: Retrieval, gallery: Gallery, hits: list[Hit]
                   ) -> tuple[list[tuple[str, str]], list[list[Any]]]:
    """The hits as (thumbnail the app made, caption) pairs and [rank, id, score] rows; never a gallery file."""
    shown = []
    for i, s in hits:
        thumb, ok = state.thumbnails.get(gallery, i)
        shown.append((str(thumb), f"{i} · {s:.3f}" + ("" if ok else " (no longer readable)")))
    return shown, [[r + 1, i, round(s, 4)] for r, (i, s) in enumerate(hits)]


def build_app(model: str | None = None, text_model: str | None = None, backend: str = "torch",
              gallery: str | os.PathLike | None = None, *, index_dir: str | os.PathLike | None = None,
              folder_input: bool | None = None, fashion: int = FASHION_GALLERY) -> gr.Blocks:
    """The retrieval app: image search with ``model`` (else ``$EMBEDHUB_MODEL``, the README's ``models:``,
    or the offline LiT default) on ``backend``, text search with ``text_model`` (else
    ``$EMBEDHUB_TEXT_MODEL``, else all-MiniLM-L6-v2, on torch), over ``gallery`` (a folder of images;
    default: the bundled examples and ``fashion`` Fashion-MNIST test images). Indexes live in
    ``index_dir`` (default ``$EMBEDHUB_HOME/demo-index``). ``folder_input`` shows a box to index another
    folder of this machine (default: on, except on a Hugging Face Space). Everything is indexed here, so
    the first request is fast; a ``DemoError`` for a model or folder that cannot be used.

    >>> demo = build_app(gallery="~/Pictures/catalogue")   # doctest: +SKIP
    """
    state = Retrieval(model, text_model, backend, gallery, index_dir, fashion)
    if folder_input is None:
        folder_input = not os.environ.get("SPACE_ID")

    def search_images_by_text(query: str, k: float):
        try:
            gallery = state.gallery
            return _image_results(state, gallery, state.images_by_text(query, k))
        except (DemoError, embedhub.EmbedhubError) as exc:
            raise _error(exc) from None

    def search_images_by_image(image: Any, k: float):
        try:
            gallery = state.gallery
            hits = state.images_by_image(upload_path(image, i2i_image.GRADIO_CACHE), k)
            return _image_results(state, gallery, hits)
        except (DemoError, embedhub.EmbedhubError) as exc:
            raise _error(exc) from None

    def search_texts(query: str, k: float):
        try:
            hits = state.texts_by_text(query, k)
        except (DemoError, embedhub.EmbedhubError) as exc:
            raise _error(exc) from None
        return [[r + 1, state.texts[int(i)], round(s, 4)] for r, (i, s) in enumerate(hits)]

    def index_gallery(folder: str, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 - Gradio's idiom
        try:
            chosen = state.open_gallery(folder.strip() if folder and folder.strip() else None, progress=True)
        except (DemoError, embedhub.EmbedhubError, OSError) as exc:
            raise _error(exc) from None
        how = "reused its saved index" if chosen.index.reused else "indexed"
        return f"Gallery: **{chosen.name}**, {how} with `{state.image_name}`."

    examples = [[str(p)] for p in example_images()]
    k_slider = dict(minimum=1, maximum=MAX_K, step=1, value=DEFAULT_K, label="Results")
    table_headers = ["rank", "item", "score"]
    image_score = state.image_model.similarity_fn_name  # each model ranks by its own similarity
    text_score = state.text_model.similarity_fn_name
    with gr.Blocks(title="embedhub retrieval", delete_cache=(900, 1800)) as demo:
        gr.Markdown("# Multimodal retrieval\nSearch a gallery of images by text or by an example image, and a "
                    "collection of sentences by meaning. Embeddings by "
                    "[embedhub](https://pypi.org/project/embedhub/), exact faiss search.")
        with gr.Tab("Text → images"):
            with gr.Row():
                t2i_query = gr.Textbox(label="Query", placeholder=next(iter(IMAGE_QUERIES)), scale=4,
                                       max_length=MAX_QUERY_CHARS)
                t2i_k = gr.Slider(**k_slider, scale=1)
            t2i_button = gr.Button("Search", variant="primary")
            t2i_gallery = gr.Gallery(label=f"Nearest images (id · {image_score})", columns=5, height=420)
            t2i_table = gr.Dataframe(headers=table_headers, label="Scores", interactive=False)
            gr.Examples([[q] for q in IMAGE_QUERIES], inputs=[t2i_query],
                        label="Examples (each finds images of one Fashion-MNIST class)")
        with gr.Tab("Image → images"):
            with gr.Row():
                i2i_image = gr.Image(label="Query image", type="filepath", sources=["upload", "clipboard"],
                                       height=260, scale=3)
                i2i_k = gr.Slider(**k_slider, scale=1)
            i2i_button = gr.Button("Search", variant="primary")
            i2i_gallery = gr.Gallery(label=f"Nearest images (id · {image_score})", columns=5, height=420)
            i2i_table = gr.Dataframe(headers=table_headers, label="Scores", interactive=False)
            if examples:
                gr.Examples(examples=examples, inputs=[i2i_image], examples_per_page=24,
                            label="Examples (Fashion-MNIST test images: the nearest images are of their class)")
        with gr.Tab("Text → texts"):
            with gr.Row():
                t2t_query = gr.Textbox(label="Query", placeholder=next(iter(TEXT_QUERIES)), scale=4,
                                       max_length=MAX_QUERY_CHARS)
                t2t_k = gr.Slider(**k_slider, scale=1)
            t2t_button = gr.Button("Search", variant="primary")
            t2t_table = gr.Dataframe(headers=["rank", "sentence", "score"], label=f"Nearest sentences ({text_score})",
                                     interactive=False, wrap=True)
            gr.Examples([[q] for q in TEXT_QUERIES], inputs=[t2t_query])
        with gr.Accordion("Collections and models", open=False):
            status = gr.Markdown(f"Gallery: **{state.gallery.name}**. Images: `{state.image_name}` "
                                 f"({backend}); texts: `{state.text_name}` over {len(state.texts):,} WordNet "
                                 "example sentences.")
            if folder_input:
                with gr.Row():
                    folder_box = gr.Textbox(label="Gallery folder on this machine (empty: the bundled gallery)",
                                            placeholder="~/Pictures/catalogue", scale=4)
                    folder_button = gr.Button("Index folder", scale=1)
                folder_button.click(index_gallery, inputs=[folder_box], outputs=[status], api_name="index_gallery",
                                    concurrency_limit=1, concurrency_id="index")

        t2i_button.click(search_images_by_text, inputs=[t2i_query, t2i_k], outputs=[t2i_gallery, t2i_table],
                         api_name="search_images_by_text", preprocess=False)
        t2i_query.submit(search_images_by_text, inputs=[t2i_query, t2i_k], outputs=[t2i_gallery, t2i_table],
                         api_visibility="private", preprocess=False)
        i2i_button.click(search_images_by_image, inputs=[i2i_image, i2i_k], outputs=[i2i_gallery, i2i_table],
                         api_name="search_images_by_image", preprocess=False)
        t2t_button.click(search_texts, inputs=[t2t_query, t2t_k], outputs=[t2t_table], api_name="search_texts",
                         preprocess=False)
        t2t_query.submit(search_texts, inputs=[t2t_query, t2t_k], outputs=[t2t_table], api_visibility="private",
                         preprocess=False)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    return demo


def launch(
    model: str | None = None,
    backend: str = "torch",
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    *,
    text_model: str | None = None,
    gallery: str | os.PathLike | None = None,
    index_dir: str | os.PathLike | None = None,
    fashion: int = FASHION_GALLERY,
    prevent_thread_lock: bool = False,
) -> gr.Blocks:
    """Build the app (:func:`build_app`'s options) and serve it on ``host:port`` (uploads bounded to
    ``MAX_UPLOAD_BYTES``) and print the local URL. The box to index another folder is shown only when the
    server listens on this machine alone (a loopback ``host``, no ``share``). With
    ``prevent_thread_lock=True`` it returns at once (the server runs in a thread).

    >>> launch(port=7861)   # doctest: +SKIP
    """
    folder_input = local_only(host, share)
    demo = build_app(model, text_model, backend, gallery, index_dir=index_dir, folder_input=folder_input,
                     fashion=fashion)
    say("starting the web server", "retrieval")
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES,
                prevent_thread_lock=True, quiet=True)
    print(f"retrieval demo running on {demo.local_url}" + (f" (public: {demo.share_url})" if demo.share_url else ""),
          flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return demo


if __name__ == "__main__":
    # a Hugging Face Space sets GRADIO_SERVER_NAME (0.0.0.0) and GRADIO_SERVER_PORT
    launch(host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ["GRADIO_SERVER_PORT"]) if os.environ.get("GRADIO_SERVER_PORT") else None)
