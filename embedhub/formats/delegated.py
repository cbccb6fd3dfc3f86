"""Folders that ask for code: handed to their own library when the user passes ``trust_remote_code=True``.

A sentence-transformers folder whose ``modules.json`` names a module class outside the
``sentence_transformers`` package (jina-embeddings-v3's ``custom_st.Transformer``), or whose model,
tokenizer or root ``config.json`` carries an ``auto_map`` (custom architecture classes), cannot be rebuilt
by embedhub without running that code. This format claims such folders before the built-in loaders see
them. Without ``trust_remote_code=True`` it refuses them with a :class:`ConfigError` naming the file and
the entry that asks for code. With it, the folder is loaded by ``SentenceTransformer(folder,
trust_remote_code=True)`` (a folder without ``modules.json`` gets sentence-transformers' own fallback: the
transformers model with mean pooling) and wrapped as an embedhub text tower, so encoding keeps embedhub's
batching, input checks, typed errors and finite checks, and the vectors are the library's own.

Before the library opens anything, every file of the folder is recorded through :class:`ModelFolder`
(inside the folder, regular, at most :data:`MAX_FILES`), pickled weight files are refused, and code files the
configs name are looked up: the fingerprint hashes all of them and a save copies all of them.

>>> import embedhub
>>> model = embedhub.load("jinaai/jina-embeddings-v3", trust_remote_code=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedhub._io.folder import ModelFolder, shown
from embedhub.errors import ConfigError, WeightsError
from embedhub.formats.contract import Format, LoadOptions, ModelParts

NAME = "remote-code"
#: a folder holding more files than this is refused (the library may open any of them)
MAX_FILES = 4096
#: weight files that would be unpickled: a folder holding one is refused (weights load from safetensors only)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")
#: transformers model types of image-text models: their folders stay with the CLIP-style formats
_VISION_TEXT_TYPES = {"clip", "siglip", "siglip2", "chinese_clip", "align", "altclip", "blip", "owlvit"}
_CLASS_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


# ------------------------------------------------------------------------------ what asks for code
def _read(folder: ModelFolder, rel: str) -> Any:
    return folder.read_json(rel) if folder.has(rel) else None


def _auto_map_request(folder: ModelFolder, rel: str) -> tuple[str, str, str] | None:
    """``(file, key, what)`` when the JSON file ``rel`` carries a non-empty ``auto_map``."""
    data = _read(folder, rel)
    if isinstance(data, dict) and data.get("auto_map") not in (None, {}, [], ""):
        return rel, "auto_map", f"auto_map {json.dumps(data['auto_map'])[:200]}"
    return None


def _router_requests(folder: ModelFolder, path: str) -> list[tuple[str, str, str]]:
    """The module classes outside ``sentence_transformers`` that a Router module's config names (``types``)."""
    base = path.strip("/") if path.strip("/.") else ""
    for name in ("router_config.json", "config.json"):
        rel = f"{base}/{name}" if base else name
        try:
            data = _read(folder, rel)
        except ConfigError:
            return []  # a path that leaves the folder or a malformed file: the loader that owns it says so
        if isinstance(data, dict) and isinstance(data.get("types"), dict):
            return [(rel, f"types.{key}", f"Router module {key!r} type {kind!r}")
                    for key, kind in data["types"].items()
                    if isinstance(kind, str) and not kind.startswith("sentence_transformers.")]
    return []


def code_requests(folder: ModelFolder) -> list[tuple[str, str, str]]:
    """Each place in ``folder``'s configs that asks for code: ``(file, key, description)``, in reading order.

    ``modules.json`` module classes outside ``sentence_transformers``; ``auto_map`` in the ``config.json`` and
    ``tokenizer_config.json`` of each module folder (or of the folder itself when it has no ``modules.json``).
    An empty list: nothing asks for code (or the configs are malformed, which the built-in loaders report).
    """
    out: list[tuple[str, str, str]] = []
    paths: list[str] = []
    if folder.has("modules.json"):
        modules = folder.read_json("modules.json")
        if not isinstance(modules, list):
            return []
        for i, m in enumerate(modules):
            if not isinstance(m, dict):
                return []
            kind, path = m.get("type"), m.get("path", "")
            if not isinstance(kind, str) or not isinstance(path, str):
                return []
            if not kind.startswith("sentence_transformers."):
                out.append(("modules.json", f"[{i}].type", f"module {i} type {kind!r}"))
            elif kind.rsplit(".", 1)[-1] in ("Router", "Asym"):
                out.extend(_router_requests(folder, path))
            paths.append(path)
    else:
        config = _read(folder, "config.json")
        if not isinstance(config, dict) or config.get("model_type") in _VISION_TEXT_TYPES:
            return []
        paths.append("")
    for path in dict.fromkeys(paths):
        for name in ("config.json", "tokenizer_config.json"):
            rel = f"{path.strip('/')}/{name}" if path.strip("/.") else name
            try:
                found = _auto_map_request(folder, rel)
            except ConfigError:
                continue  # a path that leaves the folder or a malformed file: the loader that owns it says so
            if found is not None:
                out.append(found)
    return out


def refusal(root: Path, requests: list[tuple[str, str, str]]) -> ConfigError:
    """The error for a folder that asks for code when ``trust_remote_code`` was not given."""
    file, key, what = requests[0]
    more = f" (and {len(requests) - 1} more: {', '.join(w for _, _, w in requests[1:4])})" if len(requests) > 1 else ""
    return ConfigError(
        f"{shown(root / file)}: {what} asks for custom code{more}; a class outside sentence-transformers and "
        "transformers runs code from the model folder. embedhub never runs remote code unless you pass "
        "trust_remote_code=True (then the folder is loaded by its own library)",
        file=str(root / file), key=key,
    )


# ------------------------------------------------------------------------------ the files the library may open
def source_files(folder: ModelFolder) -> list[str]:
    """Every file of ``folder`` (hidden files and ``__pycache__`` left out), each opened through ``folder`` so
    it is checked (inside the folder, regular) and recorded; refuses symlinked sub-folders, more than
    :data:`MAX_FILES` files and pickled weight files."""
    root = folder.root
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith(".") or d == "__pycache__":
                continue
            if (here / d).is_symlink():
                raise ConfigError(f"{shown(here / d)}: a folder symlink in a model folder loaded by its own library "
                                  "(trust_remote_code=True); replace it with the files", file=str(here / d))
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = (here / name).relative_to(root).as_posix()
            if name.lower().endswith(PICKLE_SUFFIXES):
                raise WeightsError(
                    f"{shown(root / rel)}: a pickled file in a folder loaded by its own library; embedhub reads "
                    "weights from safetensors only and never unpickles, so it does not hand over a folder holding "
                    "one (move it out of the folder)")
            found.append(rel)
            if len(found) > MAX_FILES:
                raise ConfigError(f"{shown(root)}: more than {MAX_FILES} files; a model folder loaded by its own "
                                  "library is recorded whole, and this one is too large to record", file=str(root))
    for rel in found:
        folder.file(rel, what="model file")
    return sorted(found)


def _code_files(folder: ModelFolder, requests: list[tuple[str, str, str]]) -> None:
    """Look up the code files the requests name (``custom_st.Transformer`` -> ``custom_st.py``; an
    ``auto_map`` entry ``modeling_x.Model``), so a Hub download fetches them; refuse code from other repos."""
    for file, key, _ in requests:
        if key.endswith(".type"):
            index = int(key[1:].split("]")[0])
            refs = [folder.read_json("modules.json")[index]["type"]]
        elif key.startswith("types."):  # a Router's module class (router_config.json)
            refs = [folder.read_json(file)["types"][key[len("types."):]]]
        else:
            raw = folder.read_json(file)["auto_map"]
            values = raw.values() if isinstance(raw, dict) else [raw]
            refs = [r for v in values for r in (v if isinstance(v, list) else [v]) if r is not None]
        base = str(Path(file).parent) if "/" in file else ""
        for ref in refs:
            if not isinstance(ref, str) or "--" in ref or not _CLASS_REF.fullmatch(ref):
                raise ConfigError(
                    f"{shown(folder.root / file)}: {key}: {ref!r} is not a class of this folder (module.Class); code "
                    "from another repository is never loaded, even with trust_remote_code=True",
                    file=str(folder.root / file), key=key)
            module_file = ref.rsplit(".", 1)[0].replace(".", "/") + ".py"
            if base and folder.has(f"{base}/{module_file}"):
                continue
            folder.has(module_file)  # absent: an installed package (the library imports it), or a file to fetch


#: files a module folder may hold that the library reads: looked up so that a Hub download fetches them
_MODULE_FILES = ("config.json", "sentence_bert_config.json", "model.safetensors", "model.safetensors.index.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                 "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
                 "tokenizer.model", "config_sentence_transformers.json", "modules.json")


def _module_files(folder: ModelFolder) -> None:
    """Look up the files each module folder may hold (and the shards a safetensors index names), so that the
    loads of a Hub repo, of which only the configs are here at first, download them before the library runs."""
    paths = [""]
    if folder.has("modules.json"):
        modules = folder.read_json("modules.json")
        paths += [m["path"] for m in modules if isinstance(m, dict) and isinstance(m.get("path"), str)]
    for path in dict.fromkeys(p.strip("/") for p in paths if p.strip("/.") or p == ""):
        sub = f"{path}/" if path else ""
        for name in _MODULE_FILES:
            try:
                folder.has(sub + name)
            except ConfigError:
                break  # a module path that leaves the folder: refused when the files are recorded
        index = sub + "model.safetensors.index.json"
        if folder.has(index):
            data = folder.read_json(index)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            for shard in sorted({v for v in (weight_map if isinstance(weight_map, dict) else {}).values()
                                 if isinstance(v, str)}):
                folder.has(sub + shard)


# ------------------------------------------------------------------------------ towers
class DelegatedTextPreprocessor:
    """Texts for a model run by its own library: token counts (for embedhub's length-sorted batching) from
    the library's tokenizer, and each batch made by the library's own ``preprocess``.

    >>> pre = DelegatedTextPreprocessor(st_model)  # doctest: +SKIP
    >>> pre.collate(pre.tokenize(["a text"]))["input_ids"].shape  # doctest: +SKIP
    (1, 4)
    """

    def __init__(self, model: Any, constants: dict[str, Any] | None = None, task: str | None = None):
        self.model = model
        #: the task a routed model (sentence-transformers Router) preprocesses for (``None``: its default)
        self.task = task
        #: features the library's ``preprocess`` returns that are not tensors and are the same for every batch
        #: (``modality``): left out of the arrays, added back by :class:`DelegatedTextTower`
        self.constants = dict(constants or {})
        limit = getattr(model, "max_seq_length", None)
        self.max_length = int(limit) if isinstance(limit, int) and limit > 0 else 1 << 20

    def tokenize(self, texts: list[str]) -> list[_Text]:
        tokenizer = getattr(self.model, "tokenizer", None)
        counts: list[int] | None = None
        if tokenizer is not None and callable(tokenizer):
            try:
                ids = tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
                counts = [len(x) for x in ids]
            except Exception:
                counts = None
        if counts is None:
            counts = [len(t) for t in texts]
        return [_Text(t, n) for t, n in zip(texts, counts)]

    def collate(self, items: list[_Text]) -> dict[str, np.ndarray]:
        texts = [it.text for it in items]
        features = self.model.preprocess(texts, task=self.task) if self.task else self.model.preprocess(texts)
        out = {}
        for key, value in features.items():
            if isinstance(value, torch.Tensor):
                out[key] = value.cpu().numpy()
            elif key not in self.constants or self.constants[key] != value:
                raise WeightsError(f"the model's own preprocess returned {key!r} = {value!r:.60}, which is neither a "
                                   "tensor nor the same for every batch; embedhub cannot batch this model")
        return out

    def config(self) -> dict[str, Any]:
        return {"kind": "delegated", "library": "sentence-transformers", "max_length": self.max_length}


class _Text:
    """A text and its token count (``len``), as the batch planner sorts them."""

    __slots__ = ("text", "n")

    def __init__(self, text: str, n: int):
        self.text, self.n = text, n

    def __len__(self) -> int:
        return self.n


class _Modes:
    def __init__(self, modes: list[str]):
        self.modes = modes


class DelegatedTextTower(nn.Module):
    """A ``SentenceTransformer`` run on one batch of its own features: returns ``sentence_embedding``."""

    def __init__(self, model: nn.Module, constants: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.constants = dict(constants or {})
        modes = _pooling_modes(model)
        self.pooling = _Modes(modes) if modes else None

    def forward(self, **features: torch.Tensor) -> torch.Tensor:
        return self.model({**features, **self.constants})["sentence_embedding"]


def _pooling_modes(model: Any) -> list[str]:
    for module in model:
        modes = getattr(module, "pooling_mode", None)
        if isinstance(modes, str):
            return [modes]
        if isinstance(modes, (list, tuple)) and all(isinstance(m, str) for m in modes):
            return list(modes)
    return []


# ------------------------------------------------------------------------------ loading
def _library_settings(model: Any, root: Path) -> dict[str, Any]:
    """The sentence-transformers settings (prompts, similarity, truncation) as :class:`ModelParts` fields;
    one that is set but that this version of :class:`ModelParts` cannot carry is refused by name."""
    from dataclasses import fields

    have = {f.name for f in fields(ModelParts)}
    values = {
        "prompts": dict(getattr(model, "prompts", None) or {}),
        "default_prompt_name": getattr(model, "default_prompt_name", None),
        "similarity_fn_name": getattr(model, "similarity_fn_name", None),
        "truncate_dim": getattr(model, "truncate_dim", None),
    }
    neutral = {"prompts": ({}, {"query": "", "document": ""}), "default_prompt_name": (None,),
               "similarity_fn_name": (None, "cosine"), "truncate_dim": (None,)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in have:
            out[key] = value
        elif not any(value == n for n in neutral[key]):
            file = root / "config_sentence_transformers.json"
            raise ConfigError(f"{shown(file)}: {key} = {value!r}: not yet honoured for a model loaded by its own "
                              "library", file=str(file), key=key)
    excluded = [i for i, m in enumerate(model) if getattr(m, "include_prompt", True) is False]
    if excluded and "prompts" in out and any(out["prompts"].values()):
        file = root / "modules.json"
        raise ConfigError(f"{shown(file)}: module {excluded[0]} pools without the prompt tokens (include_prompt: "
                          "false), which embedhub does not yet pass to a model loaded by its own library",
                          file=str(file), key=f"[{excluded[0]}].include_prompt")
    if "normalized" in have:
        out["normalized"] = any(type(m).__name__ == "Normalize" for m in model)
    if "similarity_fn_name" in out and out["similarity_fn_name"] is None:
        out["similarity_fn_name"] = "cosine"
    return out


def _routes(model: Any) -> dict[str, Any]:
    """For a model holding a sentence-transformers Router: one tower and preprocessor per task, each passing
    its task to the library (``encode_query`` / ``encode_document`` / ``encode(task=)`` route as the peer)."""
    router = next((m for m in model if hasattr(m, "route_mappings") and hasattr(m, "sub_modules")), None)
    if router is None:
        return {}
    tasks = {task for task, _ in router.route_mappings if isinstance(task, str)} | set(router.sub_modules)
    routes = {}
    for task in sorted(tasks):
        probe = model.preprocess(["a"], task=task)
        constants = {k: v for k, v in probe.items() if not isinstance(v, torch.Tensor)}
        routes[task] = {"text": (DelegatedTextTower(model, constants),
                                 DelegatedTextPreprocessor(model, constants, task=task))}
    default = router.default_route if router.default_route in routes else None
    return {"routes": routes, "default_route": default}


class RemoteCodeFormat(Format, name=NAME, allow_patterns=("*", "*/*", "*/*/*", "*/*/*/*")):
    """Folders whose configs ask for code (custom module classes, ``auto_map``): loaded by their own library
    with ``trust_remote_code=True``, refused by name without it."""

    def matches(self, folder: Path) -> bool:
        """A ``modules.json`` or ``config.json`` that asks for code (embedhub and open_clip folders never do)."""
        folder = Path(folder)
        if not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
            return False
        if any((folder / marker).is_file() for marker in ("embedhub_config.json", "open_clip_config.json")):
            return False
        try:
            return bool(code_requests(ModelFolder(folder)))
        except (ConfigError, OSError):
            return False

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """Refuse (no ``trust_remote_code``) or load through sentence-transformers (``trust_remote_code=True``)."""
        folder, options = self.opened(folder, options)
        requests = code_requests(folder)
        if not options.trust_remote_code:
            raise refusal(folder.root, requests or [("modules.json", "type", "a module class")])
        _code_files(folder, requests)
        _module_files(folder)
        files = source_files(folder)
        from sentence_transformers import SentenceTransformer

        device = str(options.device) if options.device is not None else "cpu"
        try:
            model = SentenceTransformer(str(folder.root), trust_remote_code=True, device=device, local_files_only=True)
        except Exception as exc:
            raise WeightsError(f"sentence-transformers could not load {shown(folder.root)} with its custom code "
                               f"(trust_remote_code=True): {type(exc).__name__}: {exc}") from exc
        model.eval()
        dim_of = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = dim_of()
        probe = model.preprocess(["a"])
        constants = {k: v for k, v in probe.items() if not isinstance(v, torch.Tensor)}
        tower, pre = DelegatedTextTower(model, constants), DelegatedTextPreprocessor(model, constants)
        if not isinstance(dim, int) or dim < 1:
            with torch.inference_mode():
                batch = pre.collate(pre.tokenize(["a"]))
                dim = int(tower(**{k: torch.from_numpy(v) for k, v in batch.items()}).shape[-1])
        modules = [type(m).__module__ + "." + type(m).__name__ for m in model]
        spec = {
            "embed_dim": dim,
            "towers": {"text": {"delegated": {"library": "sentence-transformers", "modules": modules,
                                              "files": len(files)},
                                "pooling": tower.pooling.modes if tower.pooling else None,
                                "preprocess": pre.config()}},
        }
        return ModelParts(towers={"text": tower}, preprocessors={"text": pre}, embed_dim=dim, config=spec,
                          **_routes(model), **_library_settings(model, folder.root))

    def files(self, folder: str | os.PathLike) -> list[str]:
        """Every file of the folder (what the library may open), without loading it."""
        return source_files(ModelFolder(folder))


FORMAT = RemoteCodeFormat()
