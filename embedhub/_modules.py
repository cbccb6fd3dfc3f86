"""Small torch modules: pooling, dense heads and the towers each format builds.

A tower maps a preprocessed batch (``input_ids``/``attention_mask`` or ``pixel_values``)
to one embedding per row. Normalisation is applied by the model, not the tower, unless the
model's own format puts a normalise step inside it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

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

    def __init__(self, modes: list[str]):
        super().__init__()
        bad = [m for m in modes if m not in POOLING_MODES]
        if bad or not modes:
            raise ValueError(f"unknown pooling mode(s) {bad or modes}; expected some of {POOLING_MODES}")
        self.modes = list(modes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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


class Dense(nn.Module):
    """A linear layer and an activation (sentence-transformers' Dense; keys ``linear.*``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, activation: str = "Identity"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))

    def spec(self) -> dict[str, Any]:
        return {
            "in_features": self.linear.in_features,
            "out_features": self.linear.out_features,
            "bias": self.linear.bias is not None,
            "activation": self.activation_name,
        }


class Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1)


class Head(nn.Sequential):
    """Dense layers (and an optional normalise) applied after pooling."""

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


class TransformersTextTower(nn.Module):
    """A transformers encoder (``AutoModel``), pooling over its last hidden state, then a head."""

    modality = "text"

    def __init__(self, backbone: nn.Module, pooling: Pooling, head: Head):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(self.pooling(hidden, attention_mask))


class TimmImageTower(nn.Module):
    """A timm backbone with its classifier removed (pooled features), then a head."""

    modality = "image"

    def __init__(self, backbone: nn.Module, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values))


class HFCLIPTower(nn.Module):
    """One side of a transformers ``CLIPModel``: ``get_text_features`` or ``get_image_features``."""

    def __init__(self, clip: nn.Module, modality: Literal["text", "image"]):
        super().__init__()
        self.clip = clip
        self.modality = modality

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if self.modality == "text":
            out = self.clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        else:
            out = self.clip.get_image_features(pixel_values=batch["pixel_values"])
        return out if isinstance(out, torch.Tensor) else out.pooler_output


class OpenCLIPTower(nn.Module):
    """One side of an open_clip model: ``encode_text`` or ``encode_image`` (unnormalised)."""

    def __init__(self, clip: nn.Module, modality: Literal["text", "image"]):
        super().__init__()
        self.clip = clip
        self.modality = modality

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        if self.modality == "text":
            return self.clip.encode_text(batch["input_ids"])
        return self.clip.encode_image(batch["pixel_values"])
