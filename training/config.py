"""Recipe configs: one dataclass per recipe, and the rules every field follows (the ``RULES`` table and
the combinations a recipe needs). Reading a config from YAML and ``key=value`` overrides, and the recipe
command line, are :mod:`training.recipe`.

Every field of every recipe config is checked when the config is built (``__post_init__`` ->
:func:`validate`): its type, its range or choices, tuple lengths, and the combinations that a recipe
would otherwise ignore or fail on much later (the data it names is checked by :mod:`training.data.checks`).
A bad value raises :class:`~training.errors.ConfigValueError` naming the key, the value and what is expected;
the recipe commands report it and exit 2 before any work starts.

>>> cfg = ClipConfig(lr=1e-3, epochs=2)
>>> cfg.lr, cfg.epochs
(0.001, 2)
>>> try:
...     ClipConfig(epochs=-1)
... except ConfigValueError as exc:
...     print(exc)
epochs=-1: expected an integer >= 1 (passes over the training data)
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from .data.checks import check_sentence_data, check_sts_dir, pair_data_problem
from .data.images import FASHION_CLASSES
from .errors import ConfigValueError

FASHION_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a grayscale picture of a {}.",
    "a product photo of a {}.",
)


@dataclass
class TrainConfig:
    """Settings every recipe shares (the loop, data, towers, optimiser)."""

    #: the recipe trains LiT-style only (frozen towers, cached features of Fashion-MNIST)
    lit_only: ClassVar[bool] = False

    output: str = "runs/clip"  # run folder: checkpoints, log.jsonl, plot, final model in output/model
    seed: int = 0
    threads: int = 2  # torch intra-op threads on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 needs CUDA; bf16 autocasts where the device supports it)
    # data
    data: str = "fashion-mnist"  # fashion-mnist | captions file (.csv/.jsonl) beside its images | wds:<shard pattern>
    eval_data: str = ""  # pairs to evaluate on (a captions file or wds:); "" = Fashion-MNIST test, or held-out pairs
    eval_pairs: int = 1000  # captioned data without eval_data: this many pairs (the first) are held out
    templates: tuple[str, ...] = FASHION_TEMPLATES  # each with one "{}" for the class name
    holdout_classes: tuple[str, ...] = ()  # LiT on Fashion-MNIST: classes kept out of training, reported apart
    train_limit: int = 0  # 0 = all training samples
    eval_limit: int = 0  # 0 = all evaluation samples
    image_size: int = 96
    feature_cache: str = ""  # folder for frozen-tower features, reused by runs with the same towers and data
    # towers
    image_tower: str = "efficientnet_lite0"  # timm name (efficientnet_lite0 gets the packaged ImageNet weights)
    image_pretrained: bool = True
    text_tower: str = "all-MiniLM-L6-v2"  # any text model embedhub.load takes
    open_clip_model: str = ""  # from scratch: an open_clip model config name (e.g. ViT-B-32) or JSON file;
    #                            replaces image_tower/text_tower, trains both towers, saves an open_clip folder
    freeze_image: bool = True
    freeze_text: bool = True
    embed_dim: int = 256
    head: str = "linear"  # linear | mlp
    # optimisation
    epochs: int = 10
    batch_size: int = 256
    accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    grad_clip: float = 1.0  # 0 = no clipping
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    eval_every: int = 1  # epochs
    checkpoint_every: int = 50  # optimiser steps; 0 = only at the end of each epoch
    resume: bool = False
    stop_after_steps: int = 0  # > 0: checkpoint and stop after this many optimiser steps (time-boxed jobs)
    # prompts the trained model keeps (saved in its folder; encode_query / encode_document and
    # encode(prompt_name=...) use them); training batches are not prompted. {} = the text tower's own
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    default_prompt_name: str = ""  # "" = none (or the text tower's own when prompts is {})
    # publishing
    push_to_hub: str = ""  # a Hub repo id: after the final evaluation, the model folder and its card go there
    hub_private: bool = False  # create the repo private (when it does not exist yet)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ClipConfig(TrainConfig):
    loss: str = "clip"  # clip | siglip | dcl | unicl (LiT on Fashion-MNIST: every pair of one class is a positive)
    # LiT on Fashion-MNIST: "varied" captions each image with one of its class's names (WordNet synonyms, plurals,
    # longer names, training/wordings/fashion_mnist_train.json) in one of its templates, sampled per example;
    # "names" with the class name in `templates`; "auto" = varied for LiT on Fashion-MNIST
    wording: str = "auto"
    label_smoothing: float = 0.0  # clip / unicl loss: cross-entropy label smoothing
    feature_dropout: float = 0.0  # LiT: dropout on the frozen image features while training (feature augmentation)


@dataclass
class ProtoClipConfig(TrainConfig):
    lit_only: ClassVar[bool] = True

    output: str = "runs/protoclip"
    episode_size: int = 20000
    clusters: int = 64
    kmeans_iters: int = 20
    kmeans_restarts: int = 3
    proto_dim: int = 128
    teacher_temperature: float = 0.01
    external_teacher: str = ""  # a sentence model embedhub.load takes, or "" for none


@dataclass
class PmrlConfig(TrainConfig):
    lit_only: ClassVar[bool] = True

    output: str = "runs/pmrl"
    objective: str = "pmrl"  # pmrl | anchored (pairwise CLIP with the image as anchor, the baseline)
    audio_variants: int = 3  # spoken versions of each caption (espeak-ng voices / speeds), 1 to 9
    inter: str = "modalities"  # modalities | reference (see training.losses.pmrl_loss)
    tau_intra: float = 0.05
    tau_inter: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 2.0


@dataclass
class SimCSEConfig(TrainConfig):
    """SimCSE on a text tower: unsupervised on sentences, supervised on (anchor, positive[, negative]) rows
    (defaults: the paper's, on all-MiniLM-L6-v2)."""

    output: str = "runs/simcse"
    # streamed, never read whole: .txt (one sentence a line), or .jsonl/.csv/.parquet with a text_column
    # (unsupervised) or anchor, positive[, negative] fields/columns (supervised SimCSE; not esimcse)
    data: str = "sentences.txt"
    text_column: str = "text"  # .jsonl field / .csv or .parquet column holding the sentences
    pooling: str = "auto"  # auto (the tower's own) | cls | mean
    mlp_head: str = "auto"  # auto (on for cls pooling) | true | false: train-only Linear+tanh over the pooled features
    temperature: float = 0.05
    # training tokens per sentence (special tokens included): longer sentences are truncated, the final special
    # token kept; evaluation uses the tower's own max length
    max_length: int = 32
    dropout: float = 0.1
    batch_size: int = 64
    lr: float = 3e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 1.0  # as transformers.Trainer (the SimCSE code) clips
    epochs: int = 1
    max_steps: int = 0  # > 0: train this many optimiser steps (overrides epochs, as in transformers), then finish
    eval_every_steps: int = 125  # STS-B dev evaluation (and best-model keeping) every N optimiser steps
    sts_dir: str = ""  # "": STS-B where embedhub.data finds it; else a folder with sts-dev.csv and sts-test.csv
    queue_size: int = 160  # esimcse: momentum-encoder keys kept as extra negatives
    momentum: float = 0.995  # esimcse: EMA of the momentum encoder
    dup_rate: float = 0.32  # esimcse: word-repetition rate of the positives
    length_buckets: int = 16  # batches per window sorted by length (less padding, same-length negatives); 1 = off


@dataclass
class ESimCSEConfig(SimCSEConfig):
    """ESimCSE: word-repetition positives and a momentum-encoder queue of negatives."""

    output: str = "runs/esimcse"


RECIPE_CONFIGS: dict[str, type[TrainConfig]] = {"clip": ClipConfig, "protoclip": ProtoClipConfig,
                                                "pmrl": PmrlConfig, "simcse": SimCSEConfig, "esimcse": ESimCSEConfig}


# ------------------------------------------------------------------------------------------ rules
@dataclass(frozen=True)
class Rule:
    """What a field's value must satisfy (its type comes from the annotation)."""

    expected: str
    ok: Callable[[Any], bool]


def _int(lo: int, hi: int | None = None, what: str = "") -> Rule:
    text = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    return Rule(text + (f" ({what})" if what else ""), lambda v: v >= lo and (hi is None or v <= hi))


def _float(lo: float, *, open_lo: bool = False, what: str = "") -> Rule:
    bound = f"> {lo:g}" if open_lo else f">= {lo:g}"
    return Rule(f"a finite number {bound}" + (f" ({what})" if what else ""),
                lambda v: math.isfinite(v) and (v > lo if open_lo else v >= lo))


def _choice(*options: str) -> Rule:
    return Rule("one of " + ", ".join(options), lambda v: v in options)


def _text(what: str, empty: bool = False) -> Rule:
    return Rule(what, lambda v: empty or bool(v.strip()))


def _templates_ok(v: tuple[str, ...]) -> bool:
    from .data.wording import one_placeholder  # torch is imported there: only when a config is checked

    return len(v) > 0 and all(one_placeholder(t) for t in v)


def _path_or_empty(v: str) -> bool:
    return not v or not Path(v).is_file()


def _repo_id_ok(v: str) -> bool:
    from embedhub import PublishError
    from embedhub.hub import check_names

    try:
        check_names(v, None, False)
    except PublishError:
        return False
    return True


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

RULES: dict[str, Rule] = {
    "output": Rule("a folder path (not an existing file)", lambda v: bool(v.strip()) and not Path(v).is_file()),
    "seed": _int(0, 2**31 - 1),
    "threads": _int(1, 1024, "torch intra-op threads"),
    "device": Rule("auto, cpu, cuda, cuda:N or mps", lambda v: _DEVICE.fullmatch(v) is not None),
    "precision": _choice("fp32", "bf16", "fp16"),
    "data": _text("fashion-mnist, a .csv/.jsonl captions file or wds:<shard pattern>"),
    "eval_data": _text("'', a .csv/.jsonl captions file or wds:<shard pattern>", empty=True),
    "eval_pairs": _int(0),
    "templates": Rule("a non-empty list of caption templates, each with one '{}' for the class name",
                      _templates_ok),
    "holdout_classes": Rule("distinct class names", lambda v: len(set(v)) == len(v) and all(c.strip() for c in v)),
    "train_limit": _int(0, what="0 = all"),
    "eval_limit": _int(0, what="0 = all"),
    "image_size": _int(16, 4096, "pixels"),
    "feature_cache": Rule("'' or a folder path (not an existing file)", _path_or_empty),
    "image_tower": _text("a timm model name"),
    "image_pretrained": Rule("true or false", lambda v: True),
    "text_tower": _text("a text model name or folder embedhub.load takes"),
    "open_clip_model": Rule("'' or an open_clip model config name or .json file", lambda v: True),
    "freeze_image": Rule("true or false", lambda v: True),
    "freeze_text": Rule("true or false", lambda v: True),
    "embed_dim": _int(1, 65536),
    "head": _choice("linear", "mlp"),
    "epochs": _int(1, what="passes over the training data"),
    "batch_size": _int(1),
    "accum_steps": _int(1, what="micro-batches per optimiser step"),
    "lr": _float(0.0, open_lo=True, what="learning rate"),
    "weight_decay": _float(0.0),
    "betas": Rule("two numbers in [0, 1) (Adam's beta1, beta2)",
                  lambda v: len(v) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in v)),
    "eps": _float(0.0, open_lo=True),
    "warmup_steps": _int(0),
    "grad_clip": _float(0.0, what="max gradient norm; 0 = no clipping"),
    "init_logit_scale": _float(0.0, what="log of the initial logit scale"),
    "max_logit_scale": _float(1.0),
    "eval_every": _int(1, what="epochs"),
    "checkpoint_every": _int(0, what="optimiser steps; 0 = at epoch ends only"),
    "resume": Rule("true or false", lambda v: True),
    "stop_after_steps": _int(0, what="0 = no stop"),
    "push_to_hub": Rule("'' or a Hub repo id 'namespace/name'", lambda v: not v or _repo_id_ok(v)),
    "hub_private": Rule("true or false", lambda v: True),
    "prompts": Rule("an object of prompt names to prompt texts, e.g. {\"query\": \"query: \", \"document\": \"\"} "
                    "(names non-empty, texts at most 4096 characters)",
                    lambda v: all(k.strip() and len(t) <= 4096 for k, t in v.items())),
    "default_prompt_name": Rule("'' or the name of one of the prompts", lambda v: True),
    # clip
    "loss": _choice("clip", "siglip", "dcl", "unicl"),
    "wording": _choice("auto", "varied", "names"),
    "label_smoothing": Rule("a number in [0, 1) (cross-entropy label smoothing)", lambda v: 0 <= v < 1),
    "feature_dropout": Rule("a number in [0, 1) (dropout probability on the frozen image features)",
                            lambda v: 0 <= v < 1),
    # protoclip
    "episode_size": _int(1),
    "clusters": _int(2),
    "kmeans_iters": _int(1),
    "kmeans_restarts": _int(1),
    "proto_dim": _int(1),
    "teacher_temperature": _float(0.0, open_lo=True),
    "external_teacher": _text("'' or a sentence model embedhub.load takes", empty=True),
    # pmrl
    "objective": _choice("pmrl", "anchored"),
    "audio_variants": _int(1, 9, "distinct espeak-ng voice/speed/pitch variants"),
    "inter": _choice("modalities", "reference"),
    "tau_intra": _float(0.0, open_lo=True),
    "tau_inter": _float(0.0, open_lo=True),
    # simcse / esimcse
    "text_column": _text("a .jsonl field or .csv/.parquet column name holding the sentences"),
    "pooling": _choice("auto", "cls", "mean"),
    "mlp_head": _choice("auto", "true", "false"),
    "temperature": _float(0.0, open_lo=True, what="softmax temperature"),
    "max_length": _int(3, 8192, "training tokens per sentence"),
    "dropout": Rule("a number in [0, 1) (dropout probability while training)", lambda v: 0 <= v < 1),
    "max_steps": _int(0, what="0 = run all epochs"),
    "eval_every_steps": _int(1, what="optimiser steps between STS-B dev evaluations"),
    "sts_dir": _text("'' (STS-B where embedhub.data finds it: $EMBEDHUB_STSB_DIR or where `embedhub data stsb` "
                     "puts it) or a folder with STS-B's sts-dev.csv and sts-test.csv", empty=True),
    "queue_size": _int(0, what="0 = no queue"),
    "momentum": Rule("a number in [0, 1] (EMA factor)", lambda v: 0 <= v <= 1),
    "dup_rate": Rule("a number in [0, 1] (word-repetition rate)", lambda v: 0 <= v <= 1),
    "length_buckets": _int(1, 4096, "batches per length-sorted window; 1 = batches in stream order"),
}


def type_name(typ: Any) -> str:
    """A field type in words, for error messages.

    >>> type_name(int), type_name(tuple[str, ...])
    ('an integer', 'a list of strings')
    """
    text = str(typ)
    if text.startswith("tuple[str"):
        return "a list of strings"
    if text.startswith("tuple[float"):
        return "a list of numbers"
    if text.startswith("dict"):
        return "an object of strings"
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(
        getattr(typ, "__name__", text), text)


def _typed(value: Any, typ: Any) -> bool:
    """Whether ``value`` has the field type ``typ`` (bool is not an int; ints are floats)."""
    text = str(typ)
    if typ is bool or text == "bool":
        return isinstance(value, bool)
    if typ is int or text == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float or text == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is str or text == "str":
        return isinstance(value, str)
    if text.startswith("dict"):
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if text.startswith("tuple"):
        inner = (lambda x: _typed(x, float)) if "float" in text else (lambda x: isinstance(x, str))
        return isinstance(value, tuple) and all(inner(x) for x in value)
    raise TypeError(f"config field type {typ} has no type check")


def validate(cfg: TrainConfig) -> None:
    """Check every field of ``cfg`` (type, range, choices, tuple length) and the combinations its recipe
    needs; raise :class:`ConfigValueError` at the first problem. Converts ints given for float fields."""
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, typ = getattr(cfg, f.name), hints[f.name]
        rule = RULES.get(f.name)
        if rule is None:
            raise TypeError(f"{type(cfg).__name__}.{f.name} has no validation rule in training.config.RULES")
        if isinstance(value, list) and str(typ).startswith("tuple"):
            value = tuple(value)
        if not _typed(value, typ):
            raise ConfigValueError(f.name, value, f"{rule.expected} ({type_name(typ)}, got {type(value).__name__})")
        if typ is float or str(typ) == "float":
            value = float(value)
        elif str(typ).startswith("tuple[float"):
            value = tuple(float(x) for x in value)
        if not rule.ok(value):
            raise ConfigValueError(f.name, value, rule.expected)
        setattr(cfg, f.name, value)
    _check_combinations(cfg)


def _check_combinations(cfg: TrainConfig) -> None:
    if cfg.default_prompt_name and cfg.prompts and cfg.default_prompt_name not in cfg.prompts:
        raise ConfigValueError("default_prompt_name", cfg.default_prompt_name,
                               f"'' or one of the prompts {sorted(cfg.prompts)}")
    if (cfg.prompts or cfg.default_prompt_name) and getattr(cfg, "open_clip_model", ""):
        raise ConfigValueError("prompts", cfg.prompts, "{} with open_clip_model (an open_clip folder has no place "
                               "for prompts); train the embedhub towers to keep prompts")

    if isinstance(cfg, SimCSEConfig):
        _check_simcse(cfg)
        return

    lit = (cfg.data == "fashion-mnist" and not cfg.eval_data and cfg.freeze_image and cfg.freeze_text
           and not cfg.open_clip_model)
    name = type(cfg).__name__
    if type(cfg).lit_only and not lit:
        for key, value, want in (("data", cfg.data, "fashion-mnist"), ("eval_data", cfg.eval_data, ""),
                                 ("freeze_image", cfg.freeze_image, True), ("freeze_text", cfg.freeze_text, True),
                                 ("open_clip_model", cfg.open_clip_model, "")):
            if value != want:
                raise ConfigValueError(key, value, f"{want!r}: {name} trains LiT-style only (frozen towers, "
                                       "Fashion-MNIST); the clip recipe trains end to end on other data")
    for key in ("data", "eval_data"):
        spec = getattr(cfg, key)
        problem = pair_data_problem(key, spec) if spec else None
        if problem:
            raise ConfigValueError(key, spec, problem)
    if cfg.holdout_classes:
        if not lit:
            raise ConfigValueError("holdout_classes", cfg.holdout_classes,
                                   "() unless the run is LiT-style on Fashion-MNIST (data=fashion-mnist, no "
                                   "eval_data, frozen towers, no open_clip_model): other runs would ignore it")
        unknown = [c for c in cfg.holdout_classes if c not in FASHION_CLASSES]
        if unknown or len(cfg.holdout_classes) > len(FASHION_CLASSES) - 2:
            raise ConfigValueError("holdout_classes", cfg.holdout_classes,
                                   f"at most {len(FASHION_CLASSES) - 2} of the classes {list(FASHION_CLASSES)}"
                                   + (f" (unknown: {unknown})" if unknown else ""))
    if isinstance(cfg, ClipConfig) and not lit:
        for key, value, off in (("wording", cfg.wording, ("auto", "names")),
                                ("loss", cfg.loss, ("clip", "siglip", "dcl")),
                                ("feature_dropout", cfg.feature_dropout, (0.0,))):
            if value not in off:
                raise ConfigValueError(key, value, f"one of {list(off)} unless the run is LiT-style on Fashion-MNIST "
                                       "(data=fashion-mnist, no eval_data, frozen towers, no open_clip_model)")
    if isinstance(cfg, ClipConfig) and cfg.label_smoothing and cfg.loss not in ("clip", "unicl"):
        raise ConfigValueError("label_smoothing", cfg.label_smoothing, f"0 with loss={cfg.loss!r} (cross-entropy "
                               "losses only: clip, unicl)")
    if cfg.data != "fashion-mnist" and not cfg.eval_data and cfg.eval_pairs < 1:
        raise ConfigValueError("eval_pairs", cfg.eval_pairs,
                               f"an integer >= 1: data={cfg.data!r} without eval_data holds out its first "
                               "eval_pairs pairs for evaluation")
    if cfg.data.startswith("wds:") and cfg.train_limit:
        raise ConfigValueError("train_limit", cfg.train_limit,
                               "0 for streamed webdataset shards (write fewer shards instead)")
    if cfg.init_logit_scale > math.log(cfg.max_logit_scale):
        raise ConfigValueError("init_logit_scale", cfg.init_logit_scale,
                               f"at most log(max_logit_scale) = {math.log(cfg.max_logit_scale):.4f} (the clamp)")
    if cfg.open_clip_model:
        _check_open_clip_model(cfg.open_clip_model)
    if isinstance(cfg, ProtoClipConfig) and cfg.clusters > cfg.episode_size:
        raise ConfigValueError("clusters", cfg.clusters, f"at most episode_size ({cfg.episode_size})")


def _check_simcse(cfg: SimCSEConfig) -> None:
    """The sentence recipes' own combinations: their data is a sentence file, their loss contrasts within a batch."""
    check_sentence_data(cfg.data, cfg.text_column, unsupervised_only=isinstance(cfg, ESimCSEConfig))
    if cfg.batch_size < 2:
        raise ConfigValueError("batch_size", cfg.batch_size, "an integer >= 2: the contrastive loss needs other "
                               "sentences of the batch as negatives")
    check_sts_dir(cfg.sts_dir)


def _check_open_clip_model(name: str) -> None:
    """The open_clip model config must be one the end-to-end recipe can build (read here, before any work)."""
    try:
        import open_clip  # noqa: F401
    except ImportError:
        return  # the recipe reports the missing extra
    from .model import open_clip_config  # the library and its towers: only for an open_clip run

    open_clip_config(name)


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


__all__ = ["ClipConfig", "ESimCSEConfig", "FASHION_TEMPLATES", "PmrlConfig", "ProtoClipConfig", "RECIPE_CONFIGS",
           "RULES", "Rule", "SimCSEConfig", "TrainConfig", "to_dict", "type_name", "validate"]
