"""Towers (text and image encoders), pooling, dense heads and normalisation, and the registry of tower kinds;
the public names are re-exported by :mod:`embedhub.modules`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from embedhub._io.folder import ConfigView, ModelFolder
from embedhub.errors import ConfigError

PoolingMode = Literal["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"]
POOLING_MODES: tuple[str, ...] = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "Identity": nn.Identity,
    "Tanh": nn.Tanh,
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "Sigmoid": nn.Sigmoid,
    "SiLU": nn.SiLU,
}


class Pooling(nn.Module):
    """Token embeddings -> one vector, by one or more modes (concatenated, in the given order).

    >>> Pooling(["mean"])(torch.ones(2, 3, 4), torch.ones(2, 3)).shape
    torch.Size([2, 4])
    """

    def __init__(self, modes: list[str], *, include_prompt: bool = True):
        super().__init__()
        bad = [m for m in modes if m not in POOLING_MODES]
        if bad or not modes:
            raise ValueError(f"unknown pooling mode(s) {bad or modes}; expected some of {POOLING_MODES}")
        self.modes = list(modes)
        #: ``False``: the prompt's tokens are left out of the pooling (sentence-transformers' include_prompt)
        self.include_prompt = bool(include_prompt)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, prompt_length: Any = None) -> torch.Tensor:
        if prompt_length is not None and not self.include_prompt and int(prompt_length) > 0:
            return self._without_prompt(tokens, mask, int(prompt_length))
        out = []
        maskf = mask.unsqueeze(-1).to(tokens.dtype)
        for mode in self.modes:
            if mode == "cls":
                out.append(tokens[:, 0])
            elif mode == "max":
                out.append(tokens.masked_fill(maskf == 0, float("-inf")).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                total = (tokens * maskf).sum(dim=1)
                count = maskf.sum(dim=1).clamp(min=1e-9)
                out.append(total / (count if mode == "mean" else count.sqrt()))
            elif mode == "weightedmean":
                w = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=tokens.dtype).view(1, -1, 1)
                wm = maskf * w
                out.append((tokens * wm).sum(dim=1) / wm.sum(dim=1).clamp(min=1e-9))
            else:  # lasttoken (right padding)
                last = mask.sum(dim=1).clamp(min=1) - 1
                out.append(tokens[torch.arange(tokens.shape[0], device=tokens.device), last])
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]

    def _without_prompt(self, tokens: torch.Tensor, mask: torch.Tensor, prompt_length: int) -> torch.Tensor:
        """Pooling with the first ``prompt_length`` tokens masked out (right-padded batches), exactly as
        sentence-transformers' Pooling does with ``include_prompt=False``: ``cls`` takes the first token
        after the prompt, ``weightedmean`` keeps each token's original position weight, ``lasttoken`` is zero
        when no token is left."""
        mask = mask.clone()
        mask[:, :prompt_length] = 0
        maskf = mask.unsqueeze(-1).to(tokens.dtype)
        out = []
        for mode in self.modes:
            if mode == "cls":
                first = mask.to(torch.int).argmax(dim=1)
                out.append(tokens[torch.arange(tokens.shape[0], device=tokens.device), first])
            elif mode == "lasttoken":
                seq_len = tokens.shape[1]
                values, indices = mask.flip(1).max(1)
                indices = torch.where(values == 0, seq_len - 1, indices)
                last = seq_len - indices - 1
                out.append((tokens * maskf)[torch.arange(tokens.shape[0], device=tokens.device), last])
            else:
                out.append(Pooling([mode])(tokens, mask))
        return torch.cat(out, dim=-1) if len(out) > 1 else out[0]


class Dense(nn.Module):
    """A linear layer and an activation (sentence-transformers' Dense; keys ``linear.*``), with an optional
    residual connection (``use_residual``: the input added back, through ``residual.*`` when the widths differ).

    >>> Dense(4, 4, residual=True)(torch.zeros(1, 4)).shape
    torch.Size([1, 4])
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "Identity",
                 residual: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]()
        self.use_residual = bool(residual)
        if self.use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out

    def spec(self) -> dict[str, Any]:
        spec = {
            "in_features": self.linear.in_features,
            "out_features": self.linear.out_features,
            "bias": self.linear.bias is not None,
            "activation": self.activation_name,
        }
        if self.use_residual:
            spec["residual"] = True
        return spec


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


class Head(nn.Sequential):
    """Dense layers (and an optional normalise) applied after pooling.

    >>> Head([{"in_features": 8, "out_features": 4}]).output_dim(8)
    4
    """

    def __init__(self, dense: list[dict[str, Any]] | None = None, normalize: bool = False):
        layers: list[nn.Module] = [Dense(**d) for d in dense or []]
        if normalize:
            layers.append(Normalize())
        super().__init__(*layers)

    def spec(self) -> dict[str, Any]:
        return {
            "dense": [m.spec() for m in self if isinstance(m, Dense)],
            "normalize": any(isinstance(m, Normalize) for m in self),
        }

    def output_dim(self, input_dim: int) -> int:
        """The width this head outputs for inputs of width ``input_dim``."""
        dense = [m for m in self if isinstance(m, Dense)]
        return dense[-1].linear.out_features if dense else input_dim

    def without_normalize(self) -> nn.Sequential:
        """The dense layers alone (shared modules, not copies): what a training loss sees before its own
        normalisation."""
        return nn.Sequential(*[m for m in self if not isinstance(m, Normalize)])

    @classmethod
    def from_config(cls, config: ConfigView, input_dim: int) -> Head:
        """The ``head`` entry of a tower config, each dense layer's input checked against what feeds it."""
        head = config.view("head", {})
        head.only({"dense", "normalize"}, what="head key")
        raw = head.data.get("dense") or []
        if not isinstance(raw, list):
            raise head.error("dense", "a list of dense layers", raw)
        layers, width = [], input_dim
        for i, d in enumerate(raw):
            v = ConfigView(d, config.file, prefix=f"{head.prefix}dense[{i}].")
            v.only({"in_features", "out_features", "bias", "activation", "residual"}, what="dense key")
            layer = {
                "in_features": v.int("in_features", min=1, max=1 << 20),
                "out_features": v.int("out_features", min=1, max=1 << 20),
                "bias": v.bool("bias", True),
                "activation": v.str("activation", "Identity", choices=sorted(ACTIVATIONS)),
            }
            if v.bool("residual", False):
                layer["residual"] = True
            if layer["in_features"] != width:
                raise v.error("in_features", f"{width} (the width of what feeds this layer)", layer["in_features"])
            width = layer["out_features"]
            layers.append(layer)
        return cls(layers, normalize=head.bool("normalize", False))


# ---------------------------------------------------------------------------------------------- towers
class Tower(nn.Module):
    """Base class of towers: one modality's preprocessed batch -> one (unnormalised) embedding per row.

    A subclass that embedhub's format can save sets :attr:`kind` and :attr:`config_keys`, implements
    :meth:`get_config`, :meth:`from_config` and :attr:`output_dim`, and is registered with
    :func:`register_tower`; its weights are the module's state dict (saved as safetensors by the format).
    """

    #: name of the kind in the registry and in ``embedhub_config.json`` ("" = not rebuildable from a config)
    kind: ClassVar[str] = ""
    #: the keys of the tower's config entry that this kind reads (besides ``kind``, ``preprocess``, ``onnx``)
    config_keys: ClassVar[tuple[str, ...]] = ()
    #: the input kind this tower embeds: "text" or "image"
    modality: str = "text"

    @property
    def output_dim(self) -> int:
        """The width of the embeddings this tower returns."""
        raise NotImplementedError(f"{type(self).__name__} does not define output_dim")

    def get_config(self) -> dict[str, Any]:
        """The tower's JSON config entry (keys of :attr:`config_keys`): what :meth:`from_config` reads back."""
        raise NotImplementedError(
            f"the {self.modality} tower ({type(self).__name__}) cannot be written as torch weights in embedhub's "
            "format; models loaded from open_clip or transformers CLIP folders are saved by passing their own "
            "files through (or export to ONNX)"
        )

    def save_files(self, folder: Path) -> None:
        """Write the files besides the weights that :meth:`from_config` needs (into the tower's own sub-folder)."""

    def weight_files(self) -> dict[str, str]:
        """Child modules whose weights the tower keeps in a file of its own sub-folder, ``{child: file}``
        (a transformers backbone in the layout transformers itself reads); the model's
        ``model.safetensors`` holds the rest."""
        return {}

    @classmethod
    def from_config(cls, config: ConfigView, folder: ModelFolder, *, trust_remote_code: bool = False) -> Tower:
        """Build the tower (weights not loaded yet) from its validated config entry and its sub-folder."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    def onnx_hints(self) -> dict[str, Any]:
        """What ONNX export needs: ``optimizer`` (onnxruntime.transformers model family, or None for a
        generic graph), ``num_heads`` and ``hidden_size`` (0 when unknown)."""
        return {"optimizer": None, "num_heads": 0, "hidden_size": 0}


_TOWERS: dict[str, type[Tower]] = {}
T = TypeVar("T", bound=type[Tower])


def register_tower(cls: T, *, overwrite: bool = False) -> T:
    """Register a :class:`Tower` subclass under its :attr:`~Tower.kind` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Tower)):
        raise TypeError(f"register_tower takes a Tower subclass, got {cls!r}")
    if not cls.kind or not isinstance(cls.kind, str):
        raise ValueError(f"{cls.__name__}.kind must be a non-empty string to be registered")
    if cls.modality not in ("text", "image"):
        raise ValueError(f"{cls.__name__}.modality must be 'text' or 'image', got {cls.modality!r}")
    reserved = {"kind", "preprocess", "onnx"} & set(cls.config_keys)
    if reserved:
        raise ValueError(f"{cls.__name__}.config_keys must not use the reserved keys {sorted(reserved)}")
    old = _TOWERS.get(cls.kind)
    redefined = old is not None and (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__)
    if old is not None and old is not cls and not overwrite and not redefined:  # a re-run cell may redefine it
        raise ValueError(f"tower kind {cls.kind!r} is already registered ({old.__name__}); "
                         "pass overwrite=True to replace it")
    _TOWERS[cls.kind] = cls
    return cls


def unregister_tower(kind: str) -> None:
    """Remove a registered tower kind (built-in kinds included)."""
    _TOWERS.pop(kind, None)


def tower_kinds() -> list[str]:
    """The registered tower kinds, sorted. Example: ``tower_kinds()`` -> ``['timm', 'transformers']``."""
    return sorted(_TOWERS)


def tower_class(kind: str, *, where: ConfigView | None = None) -> type[Tower]:
    """The class registered as ``kind``; a :class:`ConfigError` naming the known kinds otherwise."""
    if kind not in _TOWERS:
        expected = f"a registered tower kind ({', '.join(tower_kinds())}; see embedhub.modules.register_tower)"
        if where is not None:
            raise where.error("kind", expected, kind)
        raise ConfigError(f"unknown tower kind {kind!r}; expected {expected}", key="kind")
    return _TOWERS[kind]


def is_saveable(tower: Any) -> bool:
    """Whether embedhub's format can write ``tower`` as weights and rebuild it from its config."""
    if not isinstance(tower, Tower) or _TOWERS.get(tower.kind) is not type(tower):
        return False
    try:
        tower.get_config()
    except NotImplementedError:
        return False
    return True


_BERT_FAMILY = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "camembert")


@register_tower
class TransformersTextTower(Tower):
    """A transformers encoder (``AutoModel``), pooling over its last hidden state, then a head."""

    kind = "transformers"
    modality = "text"
    config_keys = ("backbone", "pooling", "head", "include_prompt")

    def __init__(self, backbone: nn.Module, pooling: Pooling, head: Head):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_length: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if prompt_length is not None:  # only for pooling that leaves the prompt out
            return self.head(self.pooling(hidden, attention_mask, prompt_length))
        return self.head(self.pooling(hidden, attention_mask))

    @property
    def output_dim(self) -> int:
        return self.head.output_dim(int(self.backbone.config.hidden_size) * len(self.pooling.modes))

    def get_config(self) -> dict[str, Any]:
        cfg = {"backbone": {"library": "transformers"}, "pooling": list(self.pooling.modes), "head": self.head.spec()}
        if not self.pooling.include_prompt:
            cfg["include_prompt"] = False
        return cfg

    def save_files(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.config.to_json_file(str(folder / "config.json"))

    def weight_files(self) -> dict[str, str]:
        return {"backbone": "model.safetensors"}

    @classmethod
    def from_config(cls, config: ConfigView, folder: ModelFolder, *, trust_remote_code: bool = False) -> Tower:
        from transformers import AutoModel

        from embedhub.modules.hf import transformers_config

        bb = config.view("backbone", {})
        bb.only({"library"}, what="backbone key")
        bb.str("library", "transformers", choices=["transformers"])
        backbone = AutoModel.from_config(transformers_config(folder, trust_remote_code=trust_remote_code))
        pooling = Pooling(config.strings("pooling", choices=POOLING_MODES),
                          include_prompt=config.bool("include_prompt", True))
        head = Head.from_config(config, int(backbone.config.hidden_size) * len(pooling.modes))
        return cls(backbone, pooling, head)

    def onnx_hints(self) -> dict[str, Any]:
        cfg = self.backbone.config
        family = "bert" if getattr(cfg, "model_type", "") in _BERT_FAMILY else None
        return {"optimizer": family, "num_heads": int(getattr(cfg, "num_attention_heads", 0)),
                "hidden_size": int(getattr(cfg, "hidden_size", 0))}


#: timm.create_model keyword arguments a config may set (others could load a checkpoint or fetch a config)
TIMM_KWARGS = ("in_chans", "drop_rate", "drop_path_rate", "global_pool", "img_size")


@register_tower
class TimmImageTower(Tower):
    """A timm backbone with its classifier removed (pooled features), then a head.

    ``architecture`` is the timm name the backbone is rebuilt from (default: the one timm recorded in
    ``backbone.pretrained_cfg``), ``kwargs`` the :data:`TIMM_KWARGS` it was created with.
    """

    kind = "timm"
    modality = "image"
    config_keys = ("backbone", "head")

    def __init__(self, backbone: nn.Module, head: Head, *, architecture: str | None = None,
                 kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        arch = architecture or (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
        #: the timm architecture name and keyword arguments the backbone is rebuilt with
        self.architecture: str | None = arch
        self.timm_kwargs: dict[str, Any] = dict(kwargs or {})

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values))

    @property
    def output_dim(self) -> int:
        return self.head.output_dim(int(self.backbone.num_features))

    def get_config(self) -> dict[str, Any]:
        if not self.architecture:
            return super().get_config()
        return {"backbone": {"library": "timm", "architecture": self.architecture, "kwargs": dict(self.timm_kwargs)},
                "head": self.head.spec()}

    @classmethod
    def from_config(cls, config: ConfigView, folder: ModelFolder, *, trust_remote_code: bool = False) -> Tower:
        from embedhub.errors import require

        bb = config.view("backbone")
        bb.only({"library", "architecture", "kwargs"}, what="backbone key")
        bb.str("library", "timm", choices=["timm"])
        timm = require("timm", "open-clip", "timm image towers")
        arch = bb.str("architecture")
        if ":" in arch or not timm.is_model(arch):
            raise bb.error("architecture", "the name of an architecture built into timm", arch)
        kwargs = bb.view("kwargs", {})
        kwargs.only(set(TIMM_KWARGS), what="timm keyword argument")
        checked = {
            k: (kwargs.int(k, min=1) if k in ("in_chans", "img_size") else kwargs.str(k) if k == "global_pool"
                else kwargs.float(k, min=0.0, max=1.0))
            for k in kwargs.keys()
        }
        try:
            backbone = timm.create_model(arch, pretrained=False, num_classes=0, **checked)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise bb.error("kwargs", f"arguments {arch} accepts ({exc})", kwargs.data) from exc
        head = Head.from_config(config, int(backbone.num_features))
        return cls(backbone, head, architecture=arch, kwargs=checked)


class CLIPTower(Tower):
    """One side (``modality``) of a two-tower CLIP model ``clip``: a subclass says how each side computes its
    features (:meth:`text_features`, :meth:`image_features`: a tensor, or an output with ``pooler_output``) and
    the attention shape the ONNX optimizer needs (:meth:`attention_shape`).

    >>> HFCLIPTower(clip_model, "image")(pixel_values=pixels).shape  # doctest: +SKIP
    torch.Size([2, 512])
    """

    def __init__(self, clip: nn.Module, modality: Literal["text", "image"]):
        super().__init__()
        self.clip = clip
        self.modality = modality

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        out = self.text_features(batch) if self.modality == "text" else self.image_features(batch)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def text_features(self, batch: dict[str, torch.Tensor]) -> Any:
        """The text side's features of ``batch`` (``input_ids``, ``attention_mask``)."""
        raise NotImplementedError

    def image_features(self, batch: dict[str, torch.Tensor]) -> Any:
        """The image side's features of ``batch`` (``pixel_values``)."""
        raise NotImplementedError

    def attention_shape(self) -> tuple[int, int]:
        """``(num_heads, hidden_size)`` of this side's attention (zeros when it has none the optimizer knows)."""
        raise NotImplementedError

    def onnx_hints(self) -> dict[str, Any]:
        heads, hidden = self.attention_shape()
        return {"optimizer": "clip", "num_heads": heads, "hidden_size": hidden}


class HFCLIPTower(CLIPTower):
    """One side of a transformers ``CLIPModel``: ``get_text_features`` or ``get_image_features``."""

    def text_features(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def image_features(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.clip.get_image_features(pixel_values=batch["pixel_values"])

    @property
    def output_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    def attention_shape(self) -> tuple[int, int]:
        cfg = self.clip.config.text_config if self.modality == "text" else self.clip.config.vision_config
        return int(cfg.num_attention_heads), int(cfg.hidden_size)
