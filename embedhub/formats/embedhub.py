"""embedhub's own format: ``embedhub_config.json`` + ``model.safetensors`` + per-tower files.

Layout::

    embedhub_config.json   # format version, embed_dim, logit_scale, templates, prompts, default_prompt_name,
                           # similarity_fn_name, truncate_dim, one entry per tower
    model.safetensors      # every torch tower's weights, keys prefixed "text." / "image."
    text/config.json       # transformers config of the text backbone
    text/tokenizer.json    # fast tokenizer (or open_clip's tokenizer files)
    onnx/text.onnx         # optional: ONNX graphs written by `embedhub export`
    onnx/image.onnx
    onnx/export_metadata.json

A tower entry names its backbone (``{"library": "transformers"}`` or
``{"library": "timm", "architecture": "efficientnet_lite0", "kwargs": {...}}``), its pooling (text),
its head (dense layers, normalise), its preprocessing (tokenizer or image config) and, when
exported, its ONNX graph (``"onnx": "onnx/text.onnx"``). A folder may hold torch weights, ONNX
graphs or both; ``backend="auto"`` takes ONNX when every tower has a graph.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub._io.manifest import EMBEDHUB_LEGACY, has_record, record, switch_folder
from embedhub.errors import UnknownFormatError, WeightsError
from embedhub.formats.contract import Format, LoadOptions, ModelParts
from embedhub.modules.preprocess import load_preprocessor
from embedhub.modules.similarity import SIMILARITY_FNS
from embedhub.modules.towers import Tower, is_saveable, tower_class, tower_kinds
from embedhub.modules.weights import check_config_fits, find_safetensors, header_shapes, load_strict, read_safetensors

if TYPE_CHECKING:
    from embedhub.formats.contract import ModelLike

NAME = "embedhub"
MARKER = "embedhub_config.json"
FORMAT_VERSION = 1
ALLOW_PATTERNS = ["*.json", "*/*.json", "*.safetensors", "*/*.safetensors", "*.txt", "*/*.txt", "*/*.model",
                  "onnx/*.onnx", "onnx/*.data"]
#: keys of a tower entry the format itself reads; the rest belong to the tower kind (its ``config_keys``)
_FORMAT_KEYS = {"kind", "preprocess", "onnx"}


def read_config(folder: ModelFolder) -> tuple[ConfigView, dict[str, ConfigView]]:
    """The validated top level of ``embedhub_config.json`` and its tower entries."""
    cfg = folder.config(MARKER)
    version = cfg.int("format_version")
    if version != FORMAT_VERSION:
        raise cfg.error("format_version", f"{FORMAT_VERSION} (the version this embedhub reads)", version)
    cfg.int("embed_dim", min=1, max=1 << 16)
    cfg.float("logit_scale", None, min=0.0)
    cfg.float("logit_bias", None)
    templates = cfg.data.get("templates")
    if templates is not None:
        ok = isinstance(templates, list) and all(isinstance(t, str) and t.count("{}") == 1 for t in templates)
        if not ok:
            raise cfg.error("templates", "a list of strings with one '{}' each", templates)
    _settings(cfg)
    towers = cfg.view("towers")
    if not towers.data:
        raise towers.error("towers", "at least one tower (text, image)", {})
    towers.only({"text", "image"}, what="modality")
    return cfg, {m: towers.view(m) for m in towers.keys()}


def _settings(cfg: ConfigView) -> dict[str, Any]:
    """The model-level settings of ``embedhub_config.json``, checked: ``prompts`` (names to bounded
    strings), ``default_prompt_name`` (one of them), ``similarity_fn_name``, ``truncate_dim`` (1 to
    ``embed_dim``); absent keys are the neutral settings."""
    from embedhub.formats import st_config

    prompts = st_config.check_prompts(cfg, nulls=False)
    default = st_config.check_default_prompt_name(cfg, {**st_config.DEFAULT_PROMPTS, **prompts})
    return {"prompts": prompts, "default_prompt_name": default,
            "similarity_fn_name": cfg.str("similarity_fn_name", "cosine", choices=SIMILARITY_FNS),
            "truncate_dim": st_config.check_truncate_dim(cfg, cfg.int("embed_dim", min=1, max=1 << 16))}


def _ends_normalized(specs: dict[str, ConfigView]) -> bool:
    """Whether every tower entry's head ends in a normalisation (what its ONNX graph does too)."""
    heads = [s.data.get("head") for s in specs.values()]
    return bool(heads) and all(isinstance(h, dict) and h.get("normalize") is True for h in heads)


def _kind(spec: ConfigView) -> str | None:
    """The tower's kind: its ``kind`` key, or (folders written before kinds were named) its backbone library."""
    kind = spec.str("kind", None)
    if kind is None and isinstance(spec.data.get("backbone"), dict):
        kind = spec.view("backbone").str("library", None)
    return kind


def default_backend(folder: Path | ModelFolder) -> str:
    """The backend a load without ``backend=`` uses: ``"onnx"`` for an export whose towers all have only
    their ONNX graph (written without ``--keep-torch``), else ``"torch"``.

    >>> default_backend(Path("minilm-onnx"))  # doctest: +SKIP
    'onnx'
    """
    folder = folder if isinstance(folder, ModelFolder) else ModelFolder(folder)
    if not folder.has(MARKER):
        return "torch"
    _, specs = read_config(folder)
    onnx_only = all(_kind(spec) is None and spec.str("onnx", None) for spec in specs.values())
    return "onnx" if specs and onnx_only else "torch"


def _build_tower(folder: ModelFolder, modality: str, spec: ConfigView, trust_remote_code: bool) -> Tower:
    kind = _kind(spec)
    if kind is None:
        raise _onnx_only(folder, modality)
    cls = tower_class(kind, where=spec)
    if cls.modality != modality:
        raise spec.error("kind", f"a {modality} tower kind ({kind!r} embeds {cls.modality})", kind)
    spec.only(_FORMAT_KEYS | set(cls.config_keys), what="tower key")
    tower = cls.from_config(spec, folder.sub(modality) if folder.has_dir(modality) else folder,
                            trust_remote_code=trust_remote_code)
    tower.modality = modality
    return tower


def _onnx_only(folder: ModelFolder, modality: str) -> UnknownFormatError:
    """The error for a torch load of a tower that has only its ONNX graph: for an export written without
    its torch copy (``embedhub export`` keeps one only with ``--keep-torch``), it names the model the
    export was made from (``source`` in ``onnx/export_metadata.json``) and the option.

    >>> _onnx_only(ModelFolder(Path("minilm-onnx")), "text")  # doctest: +SKIP
    UnknownFormatError("minilm-onnx is an ONNX export of 'all-MiniLM-L6-v2' written without its torch copy ...")
    """
    from embedhub.errors import EmbedhubError
    from embedhub.modules.backends import read_export_metadata

    source = None
    try:
        meta = read_export_metadata(folder)
        if meta is not None:
            source = meta.str("source", None)
    except (EmbedhubError, OSError):  # an unreadable record: the message goes without the model's name
        source = None
    if source is None:
        return UnknownFormatError(f"{folder.root} has only an ONNX graph for its {modality} tower; use backend='onnx'")
    name = source if len(source) <= 200 else source[:197] + "..."
    return UnknownFormatError(
        f"{folder.root} is an ONNX export of {name!r} written without its torch copy (its {modality} tower has "
        f"only its ONNX graph): use backend='onnx', load {name!r} itself for the torch backend, or export again "
        "with `embedhub export ... --keep-torch` (keep_torch=True in Python) to keep the torch weights in the folder"
    )


def _check_fits(folder: ModelFolder, specs: dict[str, ConfigView]) -> None:
    """Layer counts and sizes of the tower entries and their backbone configs checked against the
    weights' headers before any tower is built (see :func:`~embedhub.modules.weights.check_config_fits`)."""
    files = list(find_safetensors(folder))
    for m in specs:
        if folder.has(f"{m}/model.safetensors"):
            files.append(folder.file(f"{m}/model.safetensors", what="weights file"))
    shapes = header_shapes(files)
    for m, spec in specs.items():
        check_config_fits(spec.data, shapes, file=folder / MARKER, prefix=f"towers.{m}.")
        sub = folder.sub(m) if folder.has_dir(m) else folder
        if _kind(spec) == "transformers" and sub.has("config.json"):
            check_config_fits(sub.config("config.json").data, shapes, file=sub / "config.json")


def _owned(towers: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per modality, the tower's own weight files ``{child: file}`` that can be split off (a tower holding
    parameters outside its children keeps everything in the model's file)."""
    out = {}
    for m, tower in towers.items():
        own = tower.weight_files() if isinstance(tower, Tower) else {}
        if own and not tower._parameters and not tower._buffers and all(hasattr(tower, c) for c in own):
            out[m] = own
    return out


def _read_weights(towers: dict[str, Any], files: dict[str, list[Path]]) -> dict[str, Any]:
    """The tensors of the model's file and of the towers' own files, under their names in the model."""
    state = read_safetensors(files["model.safetensors"])
    for m, own in _owned(towers).items():
        for child, name in own.items():
            if f"{m}/{name}" not in files:
                continue
            for key, value in read_safetensors(files[f"{m}/{name}"]).items():
                full = f"{m}.{child}.{key}"
                if full in state:
                    raise WeightsError(f"tensor {full} is in both model.safetensors and {m}/{name}")
                state[full] = value
    return state


def _write_weights(towers: dict[str, Any], folder: Path) -> None:
    """``model.safetensors`` and each tower's own weight files (safetensors only; shared tensors once)."""
    from safetensors.torch import save_model

    owned = _owned(towers)
    rest = {}
    for m, tower in towers.items():
        own = owned.get(m, {})
        if own:
            rest[m] = nn.ModuleDict({name: child for name, child in tower.named_children() if name not in own})
            for child, name in own.items():
                (folder / m).mkdir(parents=True, exist_ok=True)
                save_model(getattr(tower, child), str(folder / m / name))
        else:
            rest[m] = tower
    save_model(nn.ModuleDict(rest), str(folder / "model.safetensors"))


#: torch activation classes by the names sentence-transformers' Dense config uses
_ST_ACTIVATIONS = {"Identity": "torch.nn.modules.linear.Identity",
                   **{n: f"torch.nn.modules.activation.{n}" for n in ("Tanh", "ReLU", "GELU", "Sigmoid", "SiLU")}}


def sentence_transformers_layout(model: ModelLike, specs: dict[str, Any]) -> bool:
    """Whether ``model`` can also be written in sentence-transformers' layout: one transformers text tower
    with a ``tokenizer.json`` tokenizer, pooling modes in sentence-transformers' own order, dense layers
    with activations it knows."""
    from embedhub.modules.preprocess import HFTextPreprocessor
    from embedhub.modules.towers import POOLING_MODES, Dense, Normalize, TransformersTextTower

    tower, pre = model.towers["text"] if "text" in model.towers else None, model.preprocessors.get("text")
    if model.modalities != ("text",) or type(tower) is not TransformersTextTower:
        return False
    if type(pre) is not HFTextPreprocessor or pre.pad_to is not None:
        return False
    modes = tower.pooling.modes
    if modes != sorted(set(modes), key=POOLING_MODES.index):
        return False
    layers = list(tower.head)
    normalize_last = all(not isinstance(m, Normalize) for m in layers[:-1])
    return normalize_last and all(isinstance(m, (Dense, Normalize)) for m in layers)


def _write_sentence_transformers(model: ModelLike, folder: Path) -> None:
    """``modules.json`` and the module configs that let sentence-transformers load the folder too: its
    Transformer module is the ``text/`` folder (config, weights and tokenizer embedhub wrote there)."""
    from safetensors.torch import save_model

    from embedhub._version import __version__
    from embedhub.modules.towers import Dense, Normalize

    tower, pre = model.towers["text"], model.preprocessors["text"]
    hidden = int(tower.backbone.config.hidden_size)

    def dump(rel: str, data: Any) -> None:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(data, indent=2) + "\n")

    pad = pre.tokenizer.id_to_token(pre.pad_id)
    dump("text/sentence_bert_config.json", {"max_seq_length": pre.max_length, "do_lower_case": pre.lowercase})
    # the tokenizer's special tokens named, so that transformers counts them as special as embedhub does
    # (sentence-transformers' prompt length leaves a trailing special token out)
    specials = [t.content for i, t in sorted(pre.tokenizer.get_added_tokens_decoder().items())
                if t.special and t.content != pad]
    dump("text/tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                        "model_max_length": pre.max_length,
                                        **({"pad_token": pad} if pad is not None else {}),
                                        **({"extra_special_tokens": specials} if specials else {})})
    modules = [{"idx": 0, "name": "0", "path": "text", "type": "sentence_transformers.models.Transformer"}]
    flags = {"cls": "cls_token", "max": "max_tokens", "mean": "mean_tokens",
             "mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "weightedmean": "weightedmean_tokens",
             "lasttoken": "lasttoken"}
    dump("1_Pooling/config.json", {"word_embedding_dimension": hidden,
                                   **{f"pooling_mode_{v}": k in tower.pooling.modes for k, v in flags.items()},
                                   **({} if tower.pooling.include_prompt else {"include_prompt": False})})
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    for layer in tower.head:
        i = len(modules)
        if isinstance(layer, Dense):
            spec = layer.spec()
            dump(f"{i}_Dense/config.json", {"in_features": spec["in_features"], "out_features": spec["out_features"],
                                            "bias": spec["bias"],
                                            "activation_function": _ST_ACTIVATIONS[spec["activation"]],
                                            **({"use_residual": True} if spec.get("residual") else {})})
            save_model(layer, str(folder / f"{i}_Dense" / "model.safetensors"))
            modules.append({"idx": i, "name": str(i), "path": f"{i}_Dense",
                            "type": "sentence_transformers.models.Dense"})
        elif isinstance(layer, Normalize):
            modules.append({"idx": i, "name": str(i), "path": f"{i}_Normalize",
                            "type": "sentence_transformers.models.Normalize"})
    dump("modules.json", modules)
    settings = {"__version__": {"embedhub": __version__}, "model_type": "SentenceTransformer",
                "prompts": dict(model.prompts), "default_prompt_name": model.default_prompt_name,
                "similarity_fn_name": model.similarity_fn_name}
    if model.truncate_dim is not None:
        settings["truncate_dim"] = model.truncate_dim
    dump("config_sentence_transformers.json", settings)


def tower_entry(tower: Any) -> dict[str, Any]:
    """A torch tower's config entry (``kind`` and the kind's own keys); an error for towers this format
    cannot rebuild."""
    if not is_saveable(tower):
        if isinstance(tower, Tower):
            tower.get_config()  # raises the tower's own explanation
        raise NotImplementedError(
            f"a {type(tower).__name__} cannot be written as torch weights in embedhub's format: only registered "
            "tower kinds can (see embedhub.modules.register_tower)"
        )
    return {"kind": tower.kind, **tower.get_config()}


def _checked_entry(model: ModelLike, modality: str) -> dict[str, Any]:
    """The tower's config entry, checked as :func:`load` will check it, so a save never writes a folder that
    does not load."""
    tower = model.towers[modality] if modality in model.towers else None
    entry = tower_entry(tower)
    if tower.modality != modality:
        raise ValueError(f"the {modality} tower is a {tower.modality} tower kind ({type(tower).__name__}); "
                         f"put it under {tower.modality!r}")
    extra = set(entry) - {"kind"} - set(type(tower).config_keys)
    if extra:
        raise ValueError(f"{type(tower).__name__}.get_config() returned {sorted(extra)}, which are not in its "
                         f"config_keys {list(type(tower).config_keys)}")
    if tower.output_dim != model.embed_dim:
        raise ValueError(f"the {modality} tower outputs {tower.output_dim} dims but the model's embed_dim is "
                         f"{model.embed_dim}")
    try:
        json.dumps(entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{type(tower).__name__}.get_config() is not JSON: {exc}") from exc
    return entry


def can_write_torch(model: ModelLike) -> bool:
    """Whether every tower of ``model`` is a torch tower this format can rebuild."""
    return all(is_saveable(model.towers[m]) if m in model.towers else False for m in model.modalities)


def write(
    model: ModelLike,
    folder: Path,
    *,
    torch_weights: bool = True,
    extra: Callable[[Path, dict[str, Any]], None] | None = None,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model`` into a staging folder beside ``folder`` (``mkdtemp``), record its files and switch it
    into place (:func:`embedhub._io.manifest.switch_folder`: only files embedhub wrote there before are replaced).

    ``torch_weights=False`` writes config and preprocessing only; ``extra(tmp_folder, config)``
    may add files (ONNX graphs) and config entries before the config is written; ``check(tmp_folder)`` runs
    on the complete folder before its files are recorded (it may add files; raising leaves ``folder`` as it
    was).
    """

    specs = {m: _checked_entry(model, m) if torch_weights else {} for m in model.modalities}
    folder = Path(folder)
    check_writable(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for m in model.modalities:
            (tmp / m).mkdir(exist_ok=True)
            specs[m]["preprocess"] = model.preprocessors[m].save(tmp / m)
            if torch_weights:
                model.towers[m].save_files(tmp / m)
        cfg = {
            "format_version": FORMAT_VERSION,
            "embed_dim": model.embed_dim,
            "logit_scale": model.logit_scale,
            **({"logit_bias": model.logit_bias} if getattr(model, "logit_bias", None) is not None else {}),
            # zero-shot prompt templates mean something only to a model with both towers
            "templates": list(model.templates) if set(model.modalities) == {"text", "image"} else None,
            "towers": specs,
        }
        cfg.update(_model_settings(model))
        if extra is not None:
            extra(tmp, cfg)
        (tmp / MARKER).write_text(json.dumps(cfg, indent=2) + "\n")
        if torch_weights:
            _write_weights({m: model.towers[m] for m in model.modalities}, tmp)
            if sentence_transformers_layout(model, specs):
                _write_sentence_transformers(model, tmp)
        if check is not None:
            check(tmp)
        record(tmp)
        switch_folder(tmp, folder, legacy=EMBEDHUB_LEGACY)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _model_settings(model: ModelLike) -> dict[str, Any]:
    """The settings ``embedhub_config.json`` records beside the towers (only those that are not neutral, so
    folders of models without prompts stay as they were)."""
    out: dict[str, Any] = {}
    prompts = dict(getattr(model, "prompts", None) or {})
    if any(prompts.values()) or getattr(model, "default_prompt_name", None) is not None:
        out["prompts"] = prompts
    if getattr(model, "default_prompt_name", None) is not None:
        out["default_prompt_name"] = model.default_prompt_name
    if getattr(model, "similarity_fn_name", "cosine") != "cosine":
        out["similarity_fn_name"] = model.similarity_fn_name
    if getattr(model, "truncate_dim", None) is not None:
        out["truncate_dim"] = model.truncate_dim
    return out


def check_writable(folder: Path) -> None:
    """Refuse to write a model into ``folder`` when it holds files and is not a folder embedhub wrote (with its
    record of files) or an embedhub model folder: a save replaces only files embedhub wrote there."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise FileExistsError(f"{folder} exists and is not a folder; choose a new or empty folder to save into")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / MARKER).is_file() and not has_record(folder):
        present = sorted(p.name for p in folder.iterdir())
        raise FileExistsError(
            f"{folder} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''}) and is not an "
            "embedhub model folder; save into a new or empty folder (embedhub never replaces files it did not write)"
        )


def save(model: ModelLike, folder: Path) -> Path:
    """``model.save_pretrained``: torch weights in embedhub's format."""
    return write(model, folder)


class EmbedhubFormat(Format, name=NAME, marker=MARKER, allow_patterns=ALLOW_PATTERNS):
    """embedhub's own format (``embedhub_config.json``): torch weights, ONNX graphs or both."""

    supports_onnx = True

    def record_backends(self, folder: ModelFolder) -> tuple[str, ...]:
        """torch when every tower has a torch kind, onnx when every tower has a graph that is there (an
        export has both; a Hub snapshot holds only the files its load downloaded)."""
        _, specs = read_config(folder)
        graphs = [s.str("onnx", None) for s in specs.values()]
        onnx = all(g and (folder.root / g).is_file() for g in graphs)
        out = tuple(b for b, ok in (("torch", all(_kind(s) for s in specs.values())), ("onnx", onnx)) if ok)
        return out or ("torch",)

    def load(self, folder: Path | ModelFolder, options: LoadOptions | None = None) -> ModelParts:
        """The towers (torch kinds, or ONNX graphs with ``backend="onnx"``) and preprocessors of an embedhub folder."""
        folder, options = self.opened(folder, options)
        trust_remote_code, backend, device, threads = (options.trust_remote_code, options.backend, options.device,
                                                       options.threads)
        cfg, specs = read_config(folder)
        embed_dim = cfg.int("embed_dim")
        for spec in specs.values():
            kind = _kind(spec)
            # a registered kind's keys are known; a tower of another kind can still run from its ONNX graph
            own = set(tower_class(kind).config_keys) if kind in tower_kinds() else set(spec.keys()) if kind else set()
            spec.only(_FORMAT_KEYS | own, what="tower key")
        if backend == "auto":
            backend = "onnx" if all(spec.str("onnx", None) for spec in specs.values()) else "torch"
        pre = {m: load_preprocessor(folder.sub(m) if folder.has_dir(m) else folder, spec.view("preprocess"),
                                    file=folder / MARKER) for m, spec in specs.items()}
        towers: dict[str, Any] = {}
        if backend == "onnx":
            from embedhub.modules.backends import load_onnx_towers

            missing = [m for m, spec in specs.items() if not spec.str("onnx", None)]
            if missing:
                raise UnknownFormatError(
                    f"{folder.root} has no ONNX graph for its {' and '.join(missing)} tower; write one with "
                    f"`embedhub export {folder.root} --output DIR`, or load with backend='torch'"
                )
            graphs = {m: spec.str("onnx") for m, spec in specs.items()}
            towers = load_onnx_towers(folder, graphs, embed_dim=embed_dim, device=device, threads=threads)
        else:
            for m, spec in specs.items():  # an ONNX-only tower says so before any weights file is looked for
                if _kind(spec) is None:
                    raise _onnx_only(folder, m)
            _check_fits(folder, specs)
            for m, spec in specs.items():
                tower = _build_tower(folder, m, spec, trust_remote_code)
                width = tower.output_dim
                if width != embed_dim:
                    raise cfg.error("embed_dim", f"{width} (what the {m} tower outputs)", embed_dim)
                towers[m] = tower
            files = {"model.safetensors": find_safetensors(folder)}
            for m, tower in towers.items():  # weights a tower keeps in its own sub-folder (absent in older folders)
                for name in tower.weight_files().values():
                    rel = f"{m}/{name}"
                    if folder.has(rel):
                        files[rel] = [folder.file(rel, what="weights file")]
            if all(spec.str("onnx", None) for spec in specs.values()):  # an export: its weights' hashes are recorded
                from embedhub.modules.backends import check_sha256, read_export_metadata, recorded_sha256

                hashes = recorded_sha256(read_export_metadata(folder))
                for rel, paths in files.items():
                    if hashes is not None and rel in hashes:
                        check_sha256(folder, rel, paths[0], hashes)
            load_strict(nn.ModuleDict(towers), _read_weights(towers, files), what="embedhub model")
            text_pre = pre.get("text")
            positions = getattr(getattr(towers.get("text"), "backbone", None), "config", None)
            positions = getattr(positions, "max_position_embeddings", None)
            if text_pre is not None and positions and text_pre.max_length > int(positions):
                raise specs["text"].view("preprocess").error(
                    "max_length", f"at most {positions} (the text backbone's max_position_embeddings)",
                    text_pre.max_length)
        return ModelParts(towers=towers, preprocessors=pre, embed_dim=embed_dim,
                          logit_scale=cfg.data.get("logit_scale"),
                          templates=cfg.data.get("templates"), config=cfg.data, logit_bias=cfg.data.get("logit_bias"),
                          normalized=_ends_normalized(specs), **_settings(cfg))


FORMAT = EmbedhubFormat()
