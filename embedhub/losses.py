"""Contrastive losses for multimodal and sentence encoders (library code: training recipes import it).

Every loss takes L2-normalised features. Formulas follow the papers and their reference code:
CLIP (open_clip's ``ClipLoss``, with ``local_loss`` and ``gather_with_grad``), SigLIP, DCL,
ProtoCLIP's prototype loss with Prototypical Back Translation, and PMRL's singular-value loss.

>>> import torch.nn.functional as F
>>> img, txt = F.normalize(torch.randn(8, 16), dim=-1), F.normalize(torch.randn(8, 16), dim=-1)
>>> round(clip_loss(img, txt, 0.0).item(), 4)  # s = 0: every pair equally likely, ln 8
2.0794
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


# ---------------------------------------------------------------------------------------------- CLIP
def gather_features(
    image: torch.Tensor,
    text: torch.Tensor,
    *,
    local_loss: bool = False,
    gather_with_grad: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' features concatenated in rank order (open_clip's ``gather_features``).

    With ``gather_with_grad`` the gather is differentiable; without it, the local slice is put
    back into the gathered tensor (unless ``local_loss``) so its gradient is not lost.
    """
    import torch.distributed as dist

    if gather_with_grad:
        import torch.distributed.nn

        return torch.cat(torch.distributed.nn.all_gather(image), 0), torch.cat(torch.distributed.nn.all_gather(text), 0)
    all_i = [torch.zeros_like(image) for _ in range(world_size)]
    all_t = [torch.zeros_like(text) for _ in range(world_size)]
    dist.all_gather(all_i, image)
    dist.all_gather(all_t, text)
    if not local_loss:
        all_i[rank], all_t[rank] = image, text
    return torch.cat(all_i, 0), torch.cat(all_t, 0)


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: ``½ [CE(s·I·Tᵀ, i) + CE(s·T·Iᵀ, i)]`` with ``s = logit_scale`` (already exp'ed)."""
    logits = logit_scale * image @ text.T
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ClipLoss(nn.Module):
    """CLIP loss over all ranks' features (open_clip semantics).

    ``local_loss=True`` scores each rank's rows against every column (labels offset by
    ``rank * B``); with ``gather_with_grad=True`` that gives the global loss's gradients at
    memory linear in the batch.
    """

    def __init__(self, local_loss: bool = False, gather_with_grad: bool = False, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.local_loss, self.gather_with_grad = local_loss, gather_with_grad
        self.rank, self.world_size = rank, world_size

    def forward(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return clip_loss(image, text, logit_scale)
        all_i, all_t = gather_features(image, text, local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                                       rank=self.rank, world_size=self.world_size)
        if self.local_loss:
            logits_i = logit_scale * image @ all_t.T
            logits_t = logit_scale * text @ all_i.T
            labels = torch.arange(image.shape[0], device=image.device) + self.rank * image.shape[0]
        else:
            logits_i = logit_scale * all_i @ all_t.T
            logits_t = logits_i.T
            labels = torch.arange(all_i.shape[0], device=image.device)
        return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def siglip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float,
                logit_bias: torch.Tensor | float) -> torch.Tensor:
    """SigLIP: ``-1/B Σ_ij log σ(z_ij (s·I_i·T_j + b))``, ``z = +1`` on the diagonal, ``-1`` elsewhere."""
    logits = logit_scale * image @ text.T + logit_bias
    z = 2 * torch.eye(image.shape[0], device=image.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(z * logits).sum() / image.shape[0]


def dcl_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Decoupled contrastive loss: the positive is dropped from the denominator, both directions."""
    logits = logit_scale * image @ text.T
    eye = torch.eye(image.shape[0], dtype=torch.bool, device=image.device)
    pos = logits.diagonal()
    neg_i = torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1)
    neg_t = torch.logsumexp(logits.T.masked_fill(eye, float("-inf")), dim=1)
    return ((neg_i - pos).mean() + (neg_t - pos).mean()) / 2


# ---------------------------------------------------------------------------------------------- ProtoCLIP
def kmeans(x: torch.Tensor, k: int, *, iters: int = 20, restarts: int = 3, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means (k-means++ init, Euclidean), best of ``restarts`` by inertia: ``(centroids, labels)``.

    Clusters that end empty keep a zero centroid; :func:`back_translate` masks them.
    """
    x = x.detach().float()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        idx = [int(torch.randint(len(x), (1,), generator=gen))]
        d2 = ((x - x[idx[0]]) ** 2).sum(1)
        for _ in range(1, k):
            p = (d2 / d2.sum()).cpu() if d2.sum() > 0 else torch.full((len(x),), 1 / len(x))
            idx.append(int(torch.multinomial(p, 1, generator=gen)))
            d2 = torch.minimum(d2, ((x - x[idx[-1]]) ** 2).sum(1))
        cent = x[idx].clone()
        for _ in range(iters):
            labels = torch.cdist(x, cent).argmin(1)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(cent).index_add_(0, labels, x)
            cent = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], torch.zeros_like(cent))
        labels = torch.cdist(x, cent).argmin(1)
        inertia = float(((x - cent[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, cent, labels)
    assert best is not None
    return best[1], best[2]


def back_translate(features: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypical Back Translation: the mean of ``features`` (one modality) per cluster ``labels``
    (the other modality's). Returns ``(prototypes (k, d), valid (k,) bool)``; empty clusters are zero."""
    counts = torch.bincount(labels, minlength=k).to(features.dtype)
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype, device=features.device).index_add_(
        0, labels, features)
    return sums / counts.clamp(min=1)[:, None], counts > 0


def prototype_loss(
    z: torch.Tensor,
    student_prototypes: torch.Tensor,
    teacher_prototypes: torch.Tensor,
    teacher_labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    teacher_temperature: float = 0.01,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """ProtoCLIP's prototype loss for one modality.

    Logits ``s · z C_sᵀ``; target ``softmax(C_t[y] C_tᵀ / τ_t)`` (soft) or ``y`` (hard, ``τ_t <= 0``).
    Clusters with ``valid == False`` (empty) are left out of both softmaxes.
    """
    logits = logit_scale * z @ student_prototypes.T
    if teacher_temperature > 0:
        t = teacher_prototypes[teacher_labels] @ teacher_prototypes.T / teacher_temperature
    else:
        t = F.one_hot(teacher_labels, teacher_prototypes.shape[0]).to(z.dtype).log()  # 0 / -inf
    if valid is not None:
        logits = logits[:, valid]
        t = t[:, valid]
    target = torch.softmax(t, dim=1)
    return -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()


# ---------------------------------------------------------------------------------------------- PMRL
def singular_values(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per instance, the singular values (descending, ``(B, M)``) of ``Z_i = [z_1 … z_M]`` and its
    leading left singular vector ``u_1`` (``(B, d)``), through the M×M Gram matrix in float32+.

    The sign of ``u_1`` is fixed so that ``Σ_m u_1ᵀ z_m > 0``.
    """
    if len(features) < 2:
        raise ValueError(f"PMRL needs at least 2 modalities, got {len(features)}")
    z = torch.stack(features, dim=-1)  # (B, d, M)
    work = z if z.dtype in (torch.float32, torch.float64) else z.float()
    gram = work.transpose(1, 2) @ work  # (B, M, M)
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    sigma = evals.clamp(min=1e-12).sqrt().flip(-1)
    v1 = evecs[..., -1]  # (B, M)
    v1 = v1 * torch.where(v1.sum(-1, keepdim=True) >= 0, 1.0, -1.0)  # Σ_m u1ᵀz_m = σ1 Σ_m v1_m
    u1 = (work @ v1.unsqueeze(-1)).squeeze(-1) / sigma[:, :1]
    return sigma, u1


def pmrl_loss(features: Sequence[torch.Tensor], *, tau_intra: float = 0.01, tau_inter: float = 0.1,
              inter: str = "modalities") -> tuple[torch.Tensor, torch.Tensor]:
    """PMRL: ``(L_intra, L_inter)``. ``L_intra`` is a softmax over each instance's singular values
    (target: the largest). ``L_inter`` is instance-wise InfoNCE on the leading singular vectors:

    - ``inter="reference"``: as the reference code computes it, ``CE(U₁U₁ᵀ / τ₂, arange(B))``;
    - ``inter="modalities"`` (default): each modality's features against the batch's ``u₁``,
      ``mean_m CE(Z_m U₁ᵀ / τ₂, arange(B))``. Singular values do not change when one modality's
      vector flips sign, so with heads trained from scratch the reference form can align a
      modality with the *negative* of another; contrasting each ``z_m`` with the sign-fixed ``u₁``
      removes that freedom (measured on Fashion-MNIST: see the README).
    """
    sigma, u1 = singular_values(features)
    target = torch.zeros(sigma.shape[0], dtype=torch.long, device=sigma.device)
    intra = F.cross_entropy(sigma / tau_intra, target)
    labels = torch.arange(u1.shape[0], device=u1.device)
    if inter == "reference":
        loss_inter = F.cross_entropy(u1 @ u1.T / tau_inter, labels)
    elif inter == "modalities":
        u1 = u1.to(features[0].dtype)
        loss_inter = torch.stack([F.cross_entropy(z @ u1.T / tau_inter, labels) for z in features]).mean()
    else:
        raise ValueError(f"inter must be 'modalities' or 'reference', got {inter!r}")
    return intra, loss_inter
