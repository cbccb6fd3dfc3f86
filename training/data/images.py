"""Training data: labelled image sets captioned by templates, image-text pairs from a folder and a
captions file, and webdataset tar shards. Every source is read as a stream of samples
``(key, image, caption, label)``, so a recipe runs unchanged on a corpus too big for memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, MissingDataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass
class Sample:
    key: str
    image: object  # PIL.Image or HxW[xC] uint8 array
    caption: str | None
    label: int | None = None


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@dataclass
class LabelledImages:
    """A labelled image set (Fashion-MNIST here); captions come from ``templates`` at training time."""

    images: np.ndarray  # (N, H, W) or (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> LabelledImages:
        return LabelledImages(self.images[keep], self.labels[keep], self.classes)

    def without_classes(self, names: tuple[str, ...]) -> LabelledImages:
        bad = [n for n in names if n not in self.classes]
        if bad:
            raise DataError(f"unknown classes {bad}; classes are {self.classes}")
        drop = [self.classes.index(n) for n in names]
        return self.subset(~np.isin(self.labels, drop))

    def only_classes(self, names: tuple[str, ...]) -> LabelledImages:
        keep = [self.classes.index(n) for n in names]
        return self.subset(np.isin(self.labels, keep))


def fashion_mnist(split: str, folder: Path = FASHION_DIR) -> LabelledImages:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    prefix = {"train": "train", "test": "t10k"}[split]
    img, lab = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.is_file():
        raise MissingDataError(f"{img} not found: apt-get install dataset-fashion-mnist")
    return LabelledImages(_idx(img), _idx(lab).astype(np.int64), FASHION_CLASSES)


def _inside(root: Path, rel: str, where: str) -> Path:
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise DataError(f"{where}: image path {rel!r} leaves the data folder {root}")
    return path


def _decode(data: bytes | Path, where: str, Image=None) -> object:
    """An image file or its bytes, decoded now and converted to RGB as ``encode`` decodes them (PNG, JPEG,
    WebP, GIF, BMP or TIFF only, bounded in bytes and pixels); :class:`DataError` naming ``where`` (the line
    of a captions file, the shard and sample) for anything that is not a readable image of those formats."""
    from embedhub import InputError
    from embedhub.modules import load_image

    try:
        return load_image(data, 0)
    except InputError as exc:
        raise DataError(f"{where}: {exc.detail}") from None


def captioned_folder(captions_file: str | Path) -> Iterator[Sample]:
    """Pairs from a captions file beside the images: CSV with columns ``image,caption`` or JSONL
    objects ``{"image": ..., "caption": ...}``; image paths relative to the file's folder, never outside."""
    from PIL import Image

    path = Path(captions_file)
    root = path.parent
    rows: list[tuple[object, object, str]] = []
    try:
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                        rows.append((obj["image"], obj["caption"], f"{path} line {n}"))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise DataError(f"{path} line {n}: expected JSON with 'image' and 'caption' ({exc})") from None
        else:
            with open(path, encoding="utf-8", newline="") as f:
                reader = csv.DictReader(f, strict=True)
                if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                    raise DataError(f"{path}: CSV needs a header with 'image' and 'caption', got {reader.fieldnames}")
                line = reader.line_num  # the last line read
                try:
                    for r in reader:
                        rows.append((r["image"], r["caption"], f"{path} line {reader.line_num}"))
                        line = reader.line_num
                except csv.Error as exc:
                    raise DataError(f"{path} line {line + 1}: malformed CSV ({exc})") from None
    except FileNotFoundError:
        raise MissingDataError(f"captions file {path} not found") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for rel, caption, where in rows:
        if not isinstance(rel, str) or not rel.strip():
            raise DataError(f"{where}: 'image' must be a relative file path, got {rel!r}")
        if not isinstance(caption, str):
            raise DataError(f"{where}: 'caption' must be text, got {caption!r}")
        img = _inside(root, rel, where)
        if not img.is_file():
            raise MissingDataError(f"{where}: image {img} does not exist")
        yield Sample(rel, _decode(img, where, Image), caption)


def expand_shards(pattern: str) -> list[str]:
    """``"shards/train-{000..003}.tar"`` -> four paths (webdataset's brace notation)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
    return [pattern[: m.start()] + str(i).zfill(width) + pattern[m.end():] for i in range(lo, hi + 1)]


def webdataset(pattern: str) -> Iterator[Sample]:
    """Stream samples from webdataset tar shards: members ``<key>.<jpg|png|...>`` + ``<key>.txt`` (and an
    optional ``<key>.cls`` label), grouped by key in shard order."""
    from PIL import Image

    for shard in expand_shards(pattern):
        current: dict[str, bytes] = {}
        key = None
        if not Path(shard).is_file():
            raise MissingDataError(f"webdataset shard {shard} not found (pattern {pattern!r})")
        try:
            with tarfile.open(shard, "r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    stem, _, ext = member.name.rpartition(".")
                    if key is not None and stem != key:
                        yield _wds_sample(key, current, shard, Image)
                        current = {}
                    key = stem
                    current[ext.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            after = f" after sample {key!r}" if key is not None else ""
            raise DataError(f"{shard}: not a readable tar shard{after} ({type(exc).__name__}: {exc})") from None
        if key is not None:
            yield _wds_sample(key, current, shard, Image)


def _wds_sample(key: str, parts: dict[str, bytes], shard: str, Image) -> Sample:
    img = next((parts[e] for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in parts), None)
    where = f"{shard}: sample {key!r}"
    if img is None or "txt" not in parts:
        raise DataError(f"{where} needs an image and a .txt caption, has {sorted(parts)}")
    try:
        caption = parts["txt"].decode("utf-8").strip()
        label = int(parts["cls"].decode().strip()) if "cls" in parts else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{where}: .txt must be UTF-8 text and .cls an integer ({exc})") from None
    return Sample(key, _decode(img, where, Image), caption, label)


def write_webdataset(samples: list[Sample], pattern: str, per_shard: int) -> list[str]:
    """Write ``samples`` as tar shards (PNG + txt [+ cls]); used to make shards from any source."""
    from PIL import Image

    paths = []
    for s, start in enumerate(range(0, len(samples), per_shard)):
        path = pattern.format(s)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(path, "w") as tar:
            for sample in samples[start:start + per_shard]:
                img = sample.image if hasattr(sample.image, "save") else Image.fromarray(np.asarray(sample.image))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                parts = {"png": buf.getvalue(), "txt": (sample.caption or "").encode()}
                if sample.label is not None:
                    parts["cls"] = str(sample.label).encode()
                for ext, data in parts.items():
                    info = tarfile.TarInfo(f"{sample.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths
