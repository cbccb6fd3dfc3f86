"""Preprocessing outside the network: tokenisation and image transforms, from the model's own config.

Both backends (torch and ONNX) feed the same arrays: text batches are
``{"input_ids", "attention_mask"}`` int64 ``(B, L)``; image batches are ``{"pixel_values"}``
float32 ``(B, 3, H, W)``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub.errors import ConfigError, InputError, UnknownFormatError


class TextPreprocessor(Protocol):
    """Tokenises text into unpadded id lists, then pads a batch of them."""

    max_length: int

    def tokenize(self, texts: list[str]) -> list[list[int]]: ...

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]: ...

    def config(self) -> dict[str, Any]: ...

    def save(self, folder: Path) -> dict[str, Any]: ...


#: a text longer than ``max(CHARS_PER_TOKEN * max_length, 1024)`` characters is cut before tokenising (to a
#: prefix that still holds every token truncation keeps); shorter texts are tokenised as they are
CHARS_PER_TOKEN = 16
#: the most characters of one text ever tokenised: a longer text whose first this-many characters hold fewer
#: tokens than truncation keeps has its whitespace runs squeezed (they gave no token) and is tried again;
#: one that still does not settle is cut only inside a word running to its end, else an InputError
MAX_TEXT_CHARS = 1 << 21
_WHITESPACE_RUN = re.compile(r"\s{2,}")
#: texts are handed to a tokenizer in groups of at most this many characters (at least one text)
_GROUP_CHARS = 1 << 22


def char_groups(texts: list[str], budget: int = _GROUP_CHARS) -> list[list[str]]:
    """Consecutive groups of ``texts`` of at most ``budget`` characters each (a longer text alone).

    >>> char_groups(["ab", "cd", "efg"], budget=4)
    [['ab', 'cd'], ['efg']]
    """
    groups: list[list[str]] = [[]]
    size = 0
    for t in texts:
        if groups[-1] and size + len(t) > budget:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += len(t)
    return groups if groups[0] else []


def bound_texts(texts: list[str], max_length: int, settled: Any) -> list[str]:
    """``texts`` with each long one cut to a prefix whose tokenisation is settled: ``settled(prefixes)``
    says, per prefix, whether it holds more tokens than truncation at ``max_length`` keeps, with the last
    kept token before the prefix's last (possibly cut) word, so the truncated ids are those of the whole
    text. Prefixes grow from ``max(CHARS_PER_TOKEN * max_length, 1024)`` characters by doubling, up to
    :data:`MAX_TEXT_CHARS`; texts up to the first size pass untouched (one ``len`` per text)."""
    start = max(CHARS_PER_TOKEN * max_length, 1024)
    pending = [i for i, t in enumerate(texts) if len(t) > start]
    if not pending:
        return texts
    texts = list(texts)
    size = start
    squeezed: set[int] = set()
    while pending:
        later: list[int] = []
        for group in char_groups([texts[i][:size] for i in pending]):
            done = settled(group)
            for i, ok in zip(pending[: len(group)], done):
                if ok:
                    texts[i] = texts[i][:size]
                elif size >= MAX_TEXT_CHARS:
                    if i not in squeezed:  # whitespace that gave no token in 2 Mi characters gives none at all:
                        squeezed.add(i)  # runs of it squeezed to one character, the prefix is tried again
                        texts[i] = _WHITESPACE_RUN.sub(lambda m: m.group(0)[0], texts[i])
                        if len(texts[i]) > size:
                            later.append(i)
                    elif not any(c.isspace() for c in texts[i][size:]):
                        texts[i] = texts[i][:size]  # one word runs to the end: the cut stays inside it
                    else:  # a cut here could drop tokens truncation keeps: never silently
                        raise InputError(
                            f"inputs[{i}]: a text of {len(texts[i]):,} characters whose first {MAX_TEXT_CHARS:,} "
                            f"hold fewer than the {max_length} tokens the model keeps (characters the tokenizer "
                            "drops); strip or shorten it", index=i)
                elif len(texts[i]) <= 2 * size:
                    pass  # the next size holds the whole text: tokenised as it is
                else:
                    later.append(i)
            pending = pending[len(group):]
        pending, size = later, min(2 * size, MAX_TEXT_CHARS)
    return texts


def settled_encodings(encodings: list[Any], keep: int) -> list[bool]:
    """Per ``tokenizers`` encoding of a prefix (specials excluded): more than ``keep`` tokens, and the
    ``keep``-th token in an earlier word than the last token (so the cut word cannot change what is kept),
    or at least ``4 * keep`` tokens (one huge word: BPE and unigram segmentations are settled far from its end)."""
    out = []
    for e in encodings:
        words = e.word_ids
        n = len(words)
        out.append(n >= 4 * keep or (n > keep and words[keep - 1] is not None and words[-1] is not None
                                     and words[keep - 1] < words[-1]))
    return out


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
        """Token ids of ``texts``, truncated at ``max_length``; long texts are cut by characters first
        (:func:`bound_texts`), with the same ids as tokenising them whole."""
        texts = bound_texts(texts, self.max_length, self._settled)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [e.ids for group in char_groups(texts) for e in self._encode(group)]

    def _encode(self, texts: list[str]) -> list[Any]:
        """``encode_batch``, but a few texts on this thread: the batch call hands them to the tokenizer's thread
        pool, whose threads wait for a core while a model runs on all of them (a server's single requests)."""
        if len(texts) <= 4:
            return [self.tokenizer.encode(t) for t in texts]
        return self.tokenizer.encode_batch(texts)

    def _settled(self, prefixes: list[str]) -> list[bool]:
        if getattr(self, "_counter", None) is None:
            from tokenizers import Tokenizer

            counter = Tokenizer.from_str(self.tokenizer.to_str())
            counter.no_truncation()
            counter.no_padding()
            self._counter = counter
        if self.lowercase:
            prefixes = [t.lower() for t in prefixes]
        return settled_encodings(self._counter.encode_batch(prefixes, add_special_tokens=False), self.max_length)

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


class TransformersTextPreprocessor:
    """A transformers tokenizer class (built by :func:`embedhub.modules.hf.transformers_tokenizer`) with
    the padding its model's processor applies: ``pad_to`` (``"max_length"`` padding, as SigLIP's processors
    pad) or the batch's longest, on the tokenizer's ``padding_side`` with its own ``pad_token_id``; the
    attention mask is the tokenizer's when ``attention_mask`` is one of its ``model_input_names``, else all
    ones (the model then attends to every position, as it does when called with the tokenizer's output).

    >>> pre = TransformersTextPreprocessor(tok, max_length=64, pad_to=64)  # doctest: +SKIP
    >>> pre.collate(pre.tokenize(["a photo of a cat"]))["input_ids"].shape  # doctest: +SKIP
    (1, 64)
    """

    def __init__(self, tokenizer: Any, *, max_length: int, pad_to: int | None = None):
        if tokenizer.pad_token_id is None and pad_to is not None:
            raise ValueError(f"{type(tokenizer).__name__} has no pad token to pad to {pad_to} tokens with")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_to = pad_to
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
        self.padding_side = tokenizer.padding_side
        self.with_mask = "attention_mask" in tokenizer.model_input_names
        import threading

        # a fast tokenizer's truncation is a setting of its shared backend: one call at a time sets and uses it
        self._lock = threading.Lock()

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts``, special tokens added and truncated at ``max_length`` by the tokenizer."""
        texts = bound_texts(texts, self.max_length, self._settled)
        out: list[list[int]] = []
        for group in char_groups(texts):
            with self._lock:
                out += self.tokenizer(group, truncation=True, max_length=self.max_length, padding=False)["input_ids"]
        return out

    def _settled(self, prefixes: list[str]) -> list[bool]:
        # no word ids on every tokenizer class: a prefix holding 4x the kept tokens is settled
        with self._lock:
            ids = self.tokenizer(prefixes, add_special_tokens=False, truncation=False, padding=False)["input_ids"]
        return [len(x) >= 4 * self.max_length for x in ids]

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        width = self.pad_to or max((len(x) for x in ids), default=1)
        batch = pad_batch(ids, width, self.pad_id)
        if self.padding_side == "left":
            for row, x in enumerate(ids):
                batch["input_ids"][row] = np.roll(batch["input_ids"][row], width - len(x))
                batch["attention_mask"][row] = np.roll(batch["attention_mask"][row], width - len(x))
        if not self.with_mask:
            batch["attention_mask"][:] = 1
        return batch

    def config(self) -> dict[str, Any]:
        return {"kind": "transformers", "max_length": self.max_length, "pad_to": self.pad_to}

    def save(self, folder: Path) -> dict[str, Any]:
        """The tokenizer's files as transformers writes them, into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(folder))
        return self.config()


def _config_error(view: Any, key: str, message: str):
    from embedhub.errors import ConfigError

    return ConfigError(f"{view.file}: {view.prefix}{key} {message}", file=str(view.file), key=view.prefix + key)


class _LockedTokenizer:
    """A transformers tokenizer (its own class, so pad and special tokens are resolved as transformers
    resolves them: ``tokenizer_config.json``, ``special_tokens_map.json``, the class defaults) for
    open_clip's ``HFTokenizer``, one call at a time (a fast tokenizer's padding and truncation are
    settings of its shared backend)."""

    def __init__(self, tokenizer: Any):
        import threading

        self._tok = tokenizer
        self._lock = threading.Lock()
        self.pad_token_id = tokenizer.pad_token_id
        self.sep_token_id = tokenizer.sep_token_id
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._counter = None
        if backend is not None:  # a copy for counting: no truncation, no padding, no special tokens
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(backend.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()

    def encode_untruncated(self, texts: list[str]) -> list[Any] | None:
        """``tokenizers`` encodings of ``texts`` without special tokens, truncation or padding (``None`` for
        a tokenizer without a ``tokenizers`` backend)."""
        if self._counter is None:
            return None
        with self._lock:
            return self._counter.encode_batch(list(texts), add_special_tokens=False)

    def count(self, texts: list[str]) -> list[int]:
        with self._lock:
            return [len(x) for x in self._tok(list(texts), add_special_tokens=False)["input_ids"]]

    def __call__(self, texts, **kwargs):
        with self._lock:
            return self._tok(texts, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


class OpenCLIPTextPreprocessor:
    """open_clip's own tokenizer (from ``open_clip_config.json``), unpadded for length sorting.

    Batches are padded to the context length with the id open_clip pads with (0 for its own tokenizers,
    the transformers tokenizer's ``pad_token_id`` for ``hf_tokenizer_name``): open_clip's text towers add
    their full positional embedding, so they take only that width.
    """

    #: files of an open_clip folder that its tokenizer may read
    FILES = ("open_clip_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
             "tokenizer.model")

    def __init__(self, tokenizer: Any, *, max_length: int, source: Path | None = None, pad_id: int = 0):
        self._tok = tokenizer
        self.max_length = max_length
        self.source = source
        #: the id open_clip's tokenizer pads rows with (trailing ones are stripped, then put back by collate)
        self.pad_id = int(pad_id)

    @classmethod
    def from_folder(cls, folder: Path, *, trust_remote_code: bool = False) -> OpenCLIPTextPreprocessor:
        """open_clip's tokenizer for the ``open_clip_config.json`` in ``folder``, built from an
        allow-listed reading of its ``text_cfg``: its kwargs are never forwarded as they stand, an
        ``hf_tokenizer_name`` uses the folder's own tokenizer files (never another repo's), and
        ``trust_remote_code`` is never set by the config."""
        from embedhub._io.folder import ModelFolder
        from embedhub.errors import require

        open_clip = require("open_clip", "open-clip", "open_clip tokenisation")
        mf = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
        text_cfg = mf.config("open_clip_config.json").view("model_cfg").view("text_cfg", {})
        context = text_cfg.int("context_length", 77, min=1, max=65536)
        kwargs = text_cfg.view("tokenizer_kwargs", {})
        if text_cfg.str("hf_tokenizer_name", ""):
            kwargs.only({"clean", "strip_sep_token", "language"}, what="tokenizer_kwargs key")
            mode = text_cfg.str("tokenizer_mode", None, choices=[""])
            if not any(mf.has(n) for n in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                                            "sentencepiece.bpe.model", "tokenizer.model")):
                raise _config_error(
                    text_cfg, "hf_tokenizer_name",
                    f"names the Hugging Face tokenizer {text_cfg.data['hf_tokenizer_name']!r} but the folder holds "
                    "no tokenizer.json or vocabulary file; embedhub does not fetch another repository's files unless "
                    "you pass trust_remote_code=True")
            from open_clip.tokenizer import HFTokenizer

            tok = HFTokenizer.__new__(HFTokenizer)  # its __init__ would call AutoTokenizer on the name
            tok.tokenizer_mode = mode or ""
            tok.context_length = context
            tok.clean_fn = open_clip.tokenizer.get_clean_fn(kwargs.str("clean", "whitespace",
                                                                       choices=["canonicalize", "lower", "whitespace"]))
            tok.strip_sep_token = kwargs.bool("strip_sep_token", False)
            hf = transformers_tokenizer(mf, trust_remote_code=trust_remote_code)
            if hf.pad_token_id is None:
                raise _config_error(text_cfg, "hf_tokenizer_name", "names a tokenizer without a pad token; open_clip "
                                    "pads every text to context_length with it")
            language = kwargs.str("language", None)
            if language is not None:  # as open_clip's HFTokenizer.set_language
                if callable(getattr(hf, "set_src_lang_special_tokens", None)):
                    hf.set_src_lang_special_tokens(language)
                else:
                    import warnings

                    warnings.warn("Cannot set language for the tokenizer.", stacklevel=2)
            tok.tokenizer = _LockedTokenizer(hf)
            return cls(tok, max_length=context, source=mf.root, pad_id=hf.pad_token_id)
        kwargs.only({"clean", "reduction_mask", "additional_special_tokens"}, what="tokenizer_kwargs key")
        tok = open_clip.tokenizer.SimpleTokenizer(
            context_length=context,
            clean=kwargs.str("clean", "lower", choices=["canonicalize", "lower", "whitespace"]),
            reduction_mask=kwargs.str("reduction_mask", "", choices=["", "simple", "random", "shuffle", "syntax"]),
            additional_special_tokens=kwargs.strings("additional_special_tokens", None),
        )
        return cls(tok, max_length=context, source=mf.root)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` (open_clip's own), unpadded; long texts are cut by characters first
        (:func:`bound_texts`), with the same ids as tokenising them whole."""
        texts = bound_texts(texts, self.max_length, self._settled)
        if sum(map(len, texts)) > _GROUP_CHARS:
            return [x for group in char_groups(texts) for x in self._tokenize(group)]
        return self._tokenize(texts)

    def _settled(self, prefixes: list[str]) -> list[bool]:
        keep = self.max_length
        inner = getattr(self._tok, "tokenizer", None)
        if isinstance(inner, _LockedTokenizer):
            clean = getattr(self._tok, "clean_fn", None) or (lambda t: t)
            cleaned = [clean(p) for p in prefixes]
            encodings = inner.encode_untruncated(cleaned)
            if encodings is None:
                return [n >= 4 * keep for n in inner.count(cleaned)]
            return settled_encodings(encodings, keep)
        # open_clip's SimpleTokenizer: no word ids; settled once the prefix holds 4x the kept tokens
        return [len(self._tok.encode(p)) >= 4 * keep for p in prefixes]

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        ids = np.asarray(self._tok(texts)).astype(np.int64)
        if ids.shape[1] > self.max_length:
            ids = ids[:, : self.max_length]
        kept = ids != self.pad_id
        lengths = np.where(kept.any(1), ids.shape[1] - np.argmax(kept[:, ::-1], axis=1), 1)
        return [row[:n].tolist() for row, n in zip(ids, lengths)]

    def collate(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        return pad_batch(ids, self.max_length, self.pad_id)

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

    def __post_init__(self) -> None:
        import math

        problems = []
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= 16384:
            problems.append(f"size {self.size!r} (expected an integer in [0, 16384])")
        crop = self.crop_size
        if crop is not None and (len(crop) != 2 or not all(isinstance(c, int) and 1 <= c <= 16384 for c in crop)):
            problems.append(f"crop_size {crop!r} (expected two integers in [1, 16384], or null)")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                problems.append(f"{name} {v!r} (expected 3 finite numbers)")
            elif name == "std" and min(v) <= 0:
                problems.append(f"std {v!r} (expected 3 positive numbers: a zero std divides by zero)")
        if not (isinstance(self.rescale_factor, (int, float)) and math.isfinite(self.rescale_factor)
                and self.rescale_factor > 0):
            problems.append(f"rescale_factor {self.rescale_factor!r} (expected a positive finite number)")
        for name, allowed in (("interpolation", ("bicubic", "bilinear", "nearest")),
                              ("resize_mode", ("shortest", "longest", "squash")), ("backend", ("pil", "torchvision")),
                              ("crop_rounding", ("round", "floor"))):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} {getattr(self, name)!r} (expected one of {list(allowed)})")
        if self.size == 0 and self.crop_size is None:
            problems.append("size 0 with no crop_size (the image size would be undefined)")
        if problems:
            raise ValueError("invalid image preprocessing: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, file: Any = "image config") -> ImageConfig:
        """An :class:`ImageConfig` from its :meth:`to_dict`, every value checked (a
        :class:`~embedhub.ConfigError` naming ``file`` and the key)."""
        from embedhub._io.folder import ConfigView

        v = d if isinstance(d, ConfigView) else ConfigView(d, file)
        v.only({"kind", "size", "crop_size", "mean", "std", "interpolation", "resize_mode", "backend",
                "crop_rounding", "rescale_factor", "extra"})
        crop = v.data.get("crop_size")
        if crop is not None and (not isinstance(crop, list) or len(crop) != 2
                                 or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in crop)):
            raise v.error("crop_size", "two positive integers, or null", crop)
        return cls(
            size=v.int("size", 224, min=0, max=16384),
            crop_size=tuple(crop) if crop is not None else None,
            mean=v.floats("mean", cls.mean, length=3),
            std=v.floats("std", cls.std, length=3, positive=True),
            interpolation=v.str("interpolation", "bicubic", choices=["bicubic", "bilinear", "nearest"]),
            resize_mode=v.str("resize_mode", "shortest", choices=["shortest", "longest", "squash"]),
            backend=v.str("backend", "pil", choices=["pil", "torchvision"]),
            crop_rounding=v.str("crop_rounding", "round", choices=["round", "floor"]),
            rescale_factor=v.float("rescale_factor", 1 / 255, positive=True),
            extra=v.view("extra", {}).data,
        )


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

    def check(self, img: Any, index: int) -> None:
        """An :class:`~embedhub.InputError` naming ``inputs[index]`` when resizing ``img`` would make more
        than ``MAX_IMAGE_PIXELS`` pixels (an extreme aspect ratio, e.g. 1x10000000, blown up to ``size``)."""
        from embedhub.errors import InputError
        from embedhub.modules.inputs import MAX_IMAGE_PIXELS

        w, h = img.size
        nw, nh = _resized_size(w, h, self.cfg.size, self.cfg.resize_mode) if w and h else (w, h)
        if nw * nh > MAX_IMAGE_PIXELS or not (w and h):
            raise InputError(
                f"inputs[{index}]: image of {w}x{h} would be resized to {nw}x{nh} ({self.cfg.resize_mode} side to "
                f"{self.cfg.size}), over {MAX_IMAGE_PIXELS} pixels; its aspect ratio is too extreme", index=index)

    def __call__(self, images: list, indices: Any = None) -> dict[str, np.ndarray]:
        """``indices`` (the inputs' positions) name an image in errors; by default its place in ``images``."""
        one = self._one_pil if self.cfg.backend == "pil" else self._one_torchvision
        for k, img in enumerate(images):
            self.check(img, int(indices[k]) if indices is not None else k)
        batch = np.stack([one(img) for img in images]).astype(np.float32)
        batch *= np.float32(self.cfg.rescale_factor)
        batch -= self._mean
        batch /= self._std
        return {"pixel_values": batch}

    def config(self) -> dict[str, Any]:
        return {"kind": "image", **self.cfg.to_dict()}

    def save(self, folder: Path) -> dict[str, Any]:
        return self.config()


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """The (height, width) SigLIP 2's NaFlex processor resizes an image to: the largest scale (found by the
    same bisection transformers runs) whose patch-rounded size holds at most ``max_num_patches`` patches.

    >>> naflex_size(480, 640, 16, 256)
    (224, 288)
    """
    import math

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while (hi - lo) >= eps:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


class NaFlexImagePreprocessor(ImagePreprocessor):
    """SigLIP 2's NaFlex images (transformers' ``Siglip2ImageProcessor``): each image resized, aspect ratio
    kept, to at most ``max_num_patches`` patches of ``patch_size`` pixels (torchvision, antialiased), rescaled,
    normalised, cut into patches and padded: ``pixel_values`` float32 ``(B, max_num_patches, 3 * p * p)``,
    ``pixel_attention_mask`` int64 ``(B, max_num_patches)`` and ``spatial_shapes`` int64 ``(B, 2)``.

    >>> pre = NaFlexImagePreprocessor(ImageConfig(size=0, crop_size=(16, 16)), patch_size=16, max_num_patches=4)
    >>> pre([PIL.Image.new("RGB", (64, 32))])["spatial_shapes"].tolist()  # doctest: +SKIP
    [[1, 2]]
    """

    def __init__(self, cfg: ImageConfig, *, patch_size: int, max_num_patches: int):
        super().__init__(cfg)
        self.patch_size, self.max_num_patches = int(patch_size), int(max_num_patches)

    def check(self, img: Any, index: int) -> None:
        w, h = img.size
        if not (w and h):
            raise InputError(f"inputs[{index}]: image of {w}x{h} has no pixels", index=index)

    def _one(self, img) -> tuple[np.ndarray, tuple[int, int]]:
        import torch
        from torchvision.transforms.v2 import functional as tvF

        interp = {"bicubic": tvF.InterpolationMode.BICUBIC, "bilinear": tvF.InterpolationMode.BILINEAR,
                  "nearest": tvF.InterpolationMode.NEAREST}[self.cfg.interpolation]
        t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
        w, h = img.size
        p = self.patch_size
        nh, nw = naflex_size(h, w, p, self.max_num_patches) if self.cfg.size else (h, w)
        if (nh, nw) != (h, w):
            t = tvF.resize(t, [nh, nw], interpolation=interp, antialias=True)
        arr = t.numpy().astype(np.float32) * np.float32(self.cfg.rescale_factor)
        arr = (arr - self._mean) / self._std
        gh, gw = arr.shape[1] // p, arr.shape[2] // p
        patches = arr[:, : gh * p, : gw * p].reshape(3, gh, p, gw, p).transpose(1, 3, 2, 4, 0).reshape(gh * gw, -1)
        return patches, (gh, gw)

    def __call__(self, images: list, indices: Any = None) -> dict[str, np.ndarray]:
        for k, img in enumerate(images):
            self.check(img, int(indices[k]) if indices is not None else k)
        n, p = self.max_num_patches, self.patch_size
        values = np.zeros((len(images), n, 3 * p * p), dtype=np.float32)
        mask = np.zeros((len(images), n), dtype=np.int64)
        shapes = np.zeros((len(images), 2), dtype=np.int64)
        for row, img in enumerate(images):
            patches, shape = self._one(img)
            if len(patches) > n:
                at = int(indices[row]) if indices is not None else row
                raise InputError(f"inputs[{at}]: {len(patches)} patches, over max_num_patches {n}", index=at)
            values[row, : len(patches)] = patches
            mask[row, : len(patches)] = 1
            shapes[row] = shape
        return {"pixel_values": values, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def config(self) -> dict[str, Any]:
        return {"kind": "naflex", **self.cfg.to_dict(), "patch_size": self.patch_size,
                "max_num_patches": self.max_num_patches}

    @property
    def output_size(self) -> tuple[int, int]:
        return (self.max_num_patches, 3 * self.patch_size * self.patch_size)


def load_preprocessor(folder: Path, cfg: dict[str, Any], *, file: Any = None):
    """Rebuild a preprocessor from its ``config()`` and the files its ``save(folder)`` wrote; every
    value is checked and every file stays inside the model folder (``folder`` may be a
    :class:`~embedhub._io.folder.ModelFolder`)."""
    from embedhub._io.folder import ConfigView, ModelFolder

    mf = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    v = cfg if isinstance(cfg, ConfigView) else ConfigView(cfg, file or mf / "preprocess")
    kind = v.str("kind", choices=["tokenizers", "open_clip", "transformers", "image"])
    if kind == "tokenizers":
        from embedhub.errors import ConfigError

        v.only({"kind", "file", "max_length", "pad_id", "pad_to", "lowercase"})
        name = v.str("file", "tokenizer.json")
        data = mf.read_bytes(name, what="tokenizer")
        try:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{mf / name} is not a valid tokenizers file: {exc}", file=str(mf / name)) from exc
        pad_id = v.int("pad_id", None, min=0)
        if pad_id is not None and pad_id >= tok.get_vocab_size():
            raise v.error("pad_id", f"a token id below the vocabulary size {tok.get_vocab_size()}", pad_id)
        return HFTextPreprocessor(tok, max_length=v.int("max_length", min=1, max=1 << 20), pad_id=pad_id,
                                  pad_to=v.int("pad_to", None, min=1, max=1 << 20),
                                  lowercase=v.bool("lowercase", False))
    if kind == "transformers":
        v.only({"kind", "max_length", "pad_to"})
        return TransformersTextPreprocessor(transformers_tokenizer(mf), max_length=v.int("max_length", min=1,
                                            max=1 << 20), pad_to=v.int("pad_to", None, min=1, max=1 << 20))
    if kind == "open_clip":
        v.only({"kind", "max_length"})
        return OpenCLIPTextPreprocessor.from_folder(mf)
    try:
        return ImagePreprocessor(ImageConfig.from_dict(v))
    except ValueError as exc:
        if isinstance(exc, Exception) and type(exc).__name__ == "ConfigError":
            raise
        raise v.error("kind", f"a valid image config ({exc})", v.data) from exc


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


# Tokenizers of folders in transformers' layout: from ``tokenizer.json`` through the ``tokenizers`` library (no
# code), or from a sanitised copy of the vocabulary files.

def _token_content(view: ConfigView, key: str) -> str | None:
    tok = view.data.get(key)
    if tok is None:
        return None
    if isinstance(tok, dict):
        tok = tok.get("content")
    if not isinstance(tok, str):
        raise view.error(key, "a token string or {'content': str}", view.data.get(key))
    return tok


#: vocabulary files a slow tokenizer may read, copied to a clean folder before transformers sees them
_VOCAB_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
                "special_tokens_map.json", "added_tokens.json")
_TOKENIZER_KEYS = {"do_lower_case", "model_max_length", "tokenizer_class", "unk_token", "sep_token", "pad_token",
                   "cls_token", "mask_token", "bos_token", "eos_token", "strip_accents", "tokenize_chinese_chars",
                   "add_prefix_space", "errors", "clean_up_tokenization_spaces", "do_basic_tokenize",
                   "never_split", "extra_special_tokens", "additional_special_tokens", "add_bos_token",
                   "add_eos_token", "legacy", "added_tokens_decoder", "keep_accents", "remove_space"}


def _fast_tokenizer_from_vocab(folder: ModelFolder, view: ConfigView, *, trust_remote_code: bool):
    """A fast tokenizer from vocabulary files, built by transformers from a sanitised copy of them."""
    import json

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    if "auto_map" in view and not trust_remote_code:
        raise ConfigError(
            f"{view.file}: auto_map asks for a custom tokenizer class from the repo; embedhub never runs remote "
            "code unless you pass trust_remote_code=True", file=str(view.file), key="auto_map",
        )
    cls_name = view.str("tokenizer_class", None)
    if cls_name is not None:
        import transformers

        base = cls_name[:-4] if cls_name.endswith("Fast") else cls_name
        if not (hasattr(transformers, base) or hasattr(transformers, base + "Fast")):
            raise view.error("tokenizer_class", "a tokenizer class of the installed transformers", cls_name)
    with tempfile.TemporaryDirectory(prefix="embedhub-tok-") as tmp:
        for name in _VOCAB_FILES:
            if folder.has(name):
                shutil.copyfile(folder.file(name, what="tokenizer file"), Path(tmp) / name)
        cfg = {k: v for k, v in view.data.items() if k in _TOKENIZER_KEYS}
        Path(tmp, "tokenizer_config.json").write_text(json.dumps(cfg))
        try:
            hf = AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise ConfigError(f"{folder.root}: cannot build the tokenizer from its vocabulary files: {exc}",
                              file=str(view.file)) from exc
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise UnknownFormatError(f"{folder.root}: tokenizer has no fast (tokenizers) version")
        return Tokenizer.from_str(backend.to_str())


def _class_pad_id(folder: ModelFolder, *, trust_remote_code: bool) -> int | None:
    """The pad id transformers gives the folder's tokenizer when no file names a pad token (its class's
    default, e.g. CLIP's ``<|endoftext|>``); ``None`` when transformers cannot build it from the files."""
    try:
        return transformers_tokenizer(folder, trust_remote_code=trust_remote_code).pad_token_id
    except (ConfigError, ImportError, ValueError, OSError):
        return None


def text_preprocessor(
    folder: ModelFolder,
    *,
    max_length: int | None = None,
    lowercase: bool = False,
    fallback_max_length: int = 512,
    trust_remote_code: bool = False,
) -> HFTextPreprocessor:
    """The fast tokenizer of a transformers folder, with its pad token and max length."""
    from tokenizers import Tokenizer

    if not isinstance(folder, ModelFolder):
        folder = ModelFolder(folder)
    view = folder.config("tokenizer_config.json") if folder.has("tokenizer_config.json") else ConfigView(
        {}, folder / "tokenizer_config.json")
    if folder.has("tokenizer.json"):
        data = folder.read_bytes("tokenizer.json", what="tokenizer")
        try:
            tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{folder / 'tokenizer.json'} is not a valid tokenizers file: {exc}",
                              file=str(folder / "tokenizer.json")) from exc
    elif view.data or any(folder.has(n) for n in ("vocab.txt", "vocab.json", "spiece.model")):
        tok = _fast_tokenizer_from_vocab(folder, view, trust_remote_code=trust_remote_code)
    else:
        raise UnknownFormatError(f"{folder.root} has no tokenizer files (tokenizer.json or tokenizer_config.json)")
    pad_token = _token_content(view, "pad_token")
    if pad_token is None and folder.has("special_tokens_map.json"):
        pad_token = _token_content(folder.config("special_tokens_map.json"), "pad_token")
    pad_id = tok.token_to_id(pad_token) if pad_token else None
    if pad_id is None:  # no pad token in the files: the tokenizer class's default, as transformers resolves it
        pad_id = _class_pad_id(folder, trust_remote_code=trust_remote_code)
    if max_length is None:
        mml = view.data.get("model_max_length")
        ok = isinstance(mml, (int, float)) and not isinstance(mml, bool) and 1 <= mml < 1_000_000
        max_length = int(mml) if ok else fallback_max_length
    return HFTextPreprocessor(tok, max_length=max_length, pad_id=pad_id, lowercase=lowercase)


#: tokenizer_config.json keys that say nothing about how text becomes ids (where the files came from)
_TOKENIZER_INERT = {"name_or_path", "special_tokens_map_file", "processor_class", "tokenizer_file", "backend",
                    "is_local", "use_fast", "spaces_between_special_tokens", "clean_up_tokenization_spaces",
                    "split_special_tokens_in_decode", "local_files_only", "cache_dir", "revision", "_commit_hash",
                    "subfolder", "use_default_system_prompt", "chat_template"}
#: keys forwarded to the transformers tokenizer class (each read by that class or its base)
_TOKENIZER_FORWARDED = _TOKENIZER_KEYS | {"model_input_names", "padding_side", "truncation_side", "sp_model_kwargs",
                                         "do_lower_case", "add_prefix_space", "vocab_file"}
#: the files such a tokenizer reads (tokenizer.json included: transformers' class reads it beside the vocabulary)
_HF_TOKENIZER_FILES = _VOCAB_FILES + ("tokenizer.json",)


def transformers_tokenizer(folder: ModelFolder, *, trust_remote_code: bool = False) -> Any:
    """The folder's tokenizer as transformers itself builds it (its own class, so its special and pad
    tokens, ``model_input_names`` and padding side are the library's), from a copy of the folder's
    tokenizer files holding only the config keys transformers reads; no code from the folder runs.

    A ``tokenizer_config.json`` key that is neither read by transformers' tokenizer classes nor inert
    (where the files came from) is a :class:`ConfigError` naming it; so is ``auto_map`` without
    ``trust_remote_code``, a class transformers does not ship, or ``sp_model_kwargs`` (sentencepiece
    sampling). Example: ``transformers_tokenizer(ModelFolder("siglip-folder"))("a cat")``.
    """
    import json

    import transformers
    from transformers import AutoTokenizer

    view = folder.config("tokenizer_config.json") if folder.has("tokenizer_config.json") else ConfigView(
        {}, folder / "tokenizer_config.json")
    if "auto_map" in view and not trust_remote_code:
        raise ConfigError(
            f"{view.file}: auto_map asks for a custom tokenizer class from the repo; embedhub never runs remote "
            "code unless you pass trust_remote_code=True", file=str(view.file), key="auto_map")
    unknown = sorted(k for k in view.data if k not in _TOKENIZER_FORWARDED | _TOKENIZER_INERT | {"auto_map"})
    if unknown:
        raise ConfigError(f"{view.file}: key {unknown[0]!r} is not one embedhub reproduces for this tokenizer",
                          file=str(view.file), key=unknown[0])
    if view.data.get("sp_model_kwargs"):
        raise view.error("sp_model_kwargs", "{} (sentencepiece sampling options change the ids)",
                         view.data["sp_model_kwargs"])
    cls_name = view.str("tokenizer_class", None)
    if cls_name is not None:
        base = cls_name[:-4] if cls_name.endswith("Fast") else cls_name
        if not (hasattr(transformers, base) or hasattr(transformers, base + "Fast")):
            raise view.error("tokenizer_class", "a tokenizer class of the installed transformers", cls_name)
    view.str("padding_side", None, choices=["left", "right"])
    view.str("truncation_side", None, choices=["left", "right"])
    names = view.data.get("model_input_names")
    if names is not None and (not isinstance(names, list) or "input_ids" not in names
                              or not set(names) <= {"input_ids", "attention_mask", "token_type_ids"}):
        raise view.error("model_input_names", "a list with input_ids and optionally attention_mask", names)
    with tempfile.TemporaryDirectory(prefix="embedhub-tok-") as tmp:
        for name in _HF_TOKENIZER_FILES:
            if folder.has(name):
                shutil.copyfile(folder.file(name, what="tokenizer file"), Path(tmp) / name)
        cfg = {k: v for k, v in view.data.items() if k in _TOKENIZER_FORWARDED and k != "vocab_file"}
        Path(tmp, "tokenizer_config.json").write_text(json.dumps(cfg))
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except ImportError as exc:
            raise ImportError(f"{folder.root}: its tokenizer needs a package that is not installed ({exc}); "
                              "pip install sentencepiece for sentencepiece vocabularies") from exc
        except Exception as exc:
            raise ConfigError(f"{folder.root}: cannot build the tokenizer from its files: {exc}",
                              file=str(view.file)) from exc
