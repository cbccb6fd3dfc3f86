"""Contrastive losses for multimodal and sentence encoders: what the training recipes optimise.

Every loss takes L2-normalised features. Formulas follow the papers and their reference code:
CLIP (open_clip's ``ClipLoss``, with ``local_loss`` and ``gather_with_grad``), SigLIP, DCL,
ProtoCLIP's prototype loss with Prototypical Back Translation, PMRL's singular-value loss, and
the sentence losses of SimCSE (unsupervised and supervised) and ESimCSE with their building
blocks (word repetition, the FIFO queue of momentum-encoder embeddings, the EMA update).

>>> import torch.nn.functional as F
>>> img, txt = F.normalize(torch.randn(8, 16), dim=-1), F.normalize(torch.randn(8, 16), dim=-1)
>>> round(clip_loss(img, txt, 0.0).item(), 4)  # s = 0: every pair equally likely, ln 8
2.0794
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

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


# ---------------------------------------------------------------------------------------------- SimCSE / ESimCSE
def _check_rows(name: str, x: torch.Tensor, dim: int, rows: int | None = None) -> None:
    if x.ndim != 2 or x.shape[1] != dim or (rows is not None and x.shape[0] != rows):
        want = f"({rows if rows is not None else 'N'}, {dim})"
        raise ValueError(f"simcse_loss: {name} must have shape {want}, got {tuple(x.shape)}")


def simcse_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: torch.Tensor | float = 0.05,
    hard_negatives: torch.Tensor | None = None,
    queue: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """SimCSE's InfoNCE: ``-1/B Σ_i log( e^{cos(a_i,b_i)/τ} / Σ_j e^{cos(a_i,c_j)/τ} )``.

    The columns ``c`` are every row of ``b`` (the positive of anchor ``i`` is ``b_i``), then the
    rows of ``hard_negatives`` (supervised SimCSE: one per anchor, extra columns, so each anchor
    also sees the others' hard negatives), then the rows of ``queue`` (ESimCSE: momentum-encoder
    embeddings of earlier batches, detached: no gradient reaches them). Cosine similarities are
    computed here, so raw or L2-normalised features give the same loss. An empty queue
    ``(0, d)`` adds nothing: the result is then SimCSE's exactly. ``labels`` (the column of each
    anchor's positive) defaults to ``arange(B)``; :class:`SimCSELoss` offsets it by rank.

    >>> import torch.nn.functional as F
    >>> x = F.normalize(torch.randn(8, 16), dim=-1)
    >>> round(simcse_loss(x[:1].expand(8, 16), x[:1].expand(8, 16)).item(), 4)  # all equal: ln 8
    2.0794
    >>> simcse_loss(x, x, queue=torch.empty(0, 16)).equal(simcse_loss(x, x))
    True
    """
    if a.ndim != 2:
        raise ValueError(f"simcse_loss: a must have shape (B, d), got {tuple(a.shape)}")
    rows, dim = a.shape
    _check_rows("b", b, dim, rows if labels is None else None)
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"simcse_loss: temperature must be > 0, got {temperature}")
    columns = [b]
    if hard_negatives is not None:
        _check_rows("hard_negatives", hard_negatives, dim, b.shape[0])
        columns.append(hard_negatives)
    if queue is not None:
        _check_rows("queue", queue, dim)
        columns.append(queue.detach().to(dtype=b.dtype, device=b.device))
    keys = torch.cat(columns, 0) if len(columns) > 1 else b
    if keys.shape[0] < 2:
        raise ValueError("simcse_loss: a contrastive loss needs at least one negative, got a batch of 1 "
                         "with no hard negatives and an empty queue: use a batch size of 2 or more")
    logits = F.normalize(a, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    if labels is None:
        labels = torch.arange(rows, device=a.device)
    return F.cross_entropy(logits, labels)


def gather_rows(x: torch.Tensor, *, with_grad: bool = True, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order (``x`` itself when ``world_size == 1``).

    ``with_grad`` uses the differentiable all-gather (gradients flow back to the rank that owns
    each row); without it the gathered copy is detached except for the local slice, which is put
    back so its gradient is kept (as :func:`gather_features` does). Every rank must pass the same
    number of rows.
    """
    if world_size == 1:
        return x
    if with_grad:
        import torch.distributed.nn

        return torch.cat(torch.distributed.nn.all_gather(x.contiguous()), 0)
    import torch.distributed as dist

    parts = [torch.zeros_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    parts[rank] = x
    return torch.cat(parts, 0)


class SimCSELoss(nn.Module):
    """:func:`simcse_loss` over all ranks' positives and hard negatives (``local_loss`` semantics).

    Each rank scores its own ``B`` anchors against every rank's positives, then every rank's hard
    negatives, then its ``queue`` (not gathered: the recipe keeps the same queue on every rank by
    pushing gathered keys), with labels ``arange(B) + rank * B``. The gather keeps gradients,
    so with DDP averaging the gradients of the per-rank losses, ``world_size`` ranks give the
    gradients of one process on the concatenated global batch. Every rank must hold the same
    batch size.

    >>> import torch.nn.functional as F
    >>> a, b = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    >>> SimCSELoss(temperature=0.05)(a, b).equal(simcse_loss(a, b, temperature=0.05))
    True
    """

    def __init__(self, temperature: float = 0.05, rank: int = 0, world_size: int = 1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SimCSELoss: temperature must be > 0, got {temperature}")
        self.temperature, self.rank, self.world_size = temperature, rank, world_size

    def forward(self, a: torch.Tensor, b: torch.Tensor, hard_negatives: torch.Tensor | None = None,
                queue: torch.Tensor | None = None) -> torch.Tensor:
        if self.world_size == 1:
            return simcse_loss(a, b, temperature=self.temperature, hard_negatives=hard_negatives, queue=queue)
        if b.shape[0] != a.shape[0]:
            raise ValueError(f"SimCSELoss: b must have as many rows as a ({a.shape[0]}), got {b.shape[0]}")
        all_b = gather_rows(b, rank=self.rank, world_size=self.world_size)
        all_hn = None
        if hard_negatives is not None:
            if hard_negatives.shape[0] != a.shape[0]:
                raise ValueError(f"SimCSELoss: hard_negatives must have as many rows as a ({a.shape[0]}), "
                                 f"got {hard_negatives.shape[0]}")
            all_hn = gather_rows(hard_negatives, rank=self.rank, world_size=self.world_size)
        labels = torch.arange(a.shape[0], device=a.device) + self.rank * a.shape[0]
        return simcse_loss(a, all_b, temperature=self.temperature, hard_negatives=all_hn, queue=queue, labels=labels)


def word_repetition(
    ids: Sequence[int],
    *,
    dup_rate: float = 0.32,
    special_ids: Collection[int],
    generator: torch.Generator,
    max_dup: int | None = None,
) -> list[int]:
    """ESimCSE's positive: a copy of ``ids`` in which a few random tokens appear twice in a row.

    As in the official code (caskcsg/sentemb), the number of duplicated tokens is drawn uniformly
    in ``[0, max(2, int(dup_rate * L))]`` (both ends included), ``L = len(ids)``: pass one
    sentence's ids with its special tokens and without padding. Then that many distinct positions
    are drawn among the non-special tokens (fewer when the sentence has fewer), and each chosen
    token is repeated right after itself; order is kept and tokens in ``special_ids`` are never
    duplicated (the official code can duplicate ``[SEP]``; here it cannot). ``max_dup`` caps the
    count (RECIPES.md's ``min(10, ·)`` is ``max_dup=10``; at SimCSE's max length 32 and
    ``dup_rate=0.32`` the bound is at most 10 anyway, so the default leaves it off as the official
    code does). ``dup_rate=0`` duplicates nothing (no ``max(2, ·)`` floor), which is how
    repetition is turned off. The result is longer than ``ids``: truncating to a max length is
    the caller's choice. Deterministic for a seeded ``generator``.

    >>> g = torch.Generator().manual_seed(0)
    >>> out = word_repetition([101, 7592, 2088, 999, 102], special_ids={0, 101, 102}, generator=g)
    >>> out[0], out[-1], len(out) >= 5
    (101, 102, True)
    """
    if not 0.0 <= dup_rate <= 1.0:
        raise ValueError(f"word_repetition: dup_rate must be in [0, 1], got {dup_rate}")
    if max_dup is not None and max_dup < 0:
        raise ValueError(f"word_repetition: max_dup must be >= 0 or None, got {max_dup}")
    ids = [int(t) for t in ids]
    if dup_rate == 0.0 or not ids:
        return ids
    special = set(special_ids)
    candidates = [i for i, t in enumerate(ids) if t not in special]
    bound = max(2, int(dup_rate * len(ids)))
    if max_dup is not None:
        bound = min(bound, max_dup)
    dup_len = int(torch.randint(0, bound + 1, (1,), generator=generator))
    k = min(dup_len, len(candidates))
    chosen = {candidates[j] for j in torch.randperm(len(candidates), generator=generator)[:k].tolist()}
    out: list[int] = []
    for i, t in enumerate(ids):
        out.append(t)
        if i in chosen:
            out.append(t)
    return out


class EmbeddingQueue:
    """ESimCSE's negatives: a FIFO of at most ``size`` embeddings (rows), oldest dropped first.

    Use it as ESimCSE does: the loss of a step reads :meth:`tensor` (earlier batches' keys only),
    then the step's keys (momentum-encoder embeddings of the original sentences) are
    :meth:`push`-ed, so a batch never contrasts with its own keys. Pushed rows are detached
    and stored in the queue's dtype and device; :meth:`tensor` returns a tensor that later
    pushes never modify (safe to keep in the autograd graph). ``state_dict`` / ``load_state_dict``
    carry the contents across a checkpoint for exact resume.

    >>> q = EmbeddingQueue(3, dim=2)
    >>> q.tensor().shape
    torch.Size([0, 2])
    >>> q.push(torch.tensor([[1.0, 0.0], [2.0, 0.0]])); q.push(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))
    >>> q.tensor()[:, 0].tolist()
    [2.0, 3.0, 4.0]
    """

    def __init__(self, size: int, dim: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if size < 0 or dim < 1:
            raise ValueError(f"EmbeddingQueue: size must be >= 0 and dim >= 1, got size={size}, dim={dim}")
        self.size, self.dim = int(size), int(dim)
        self._keys = torch.empty(0, self.dim, dtype=dtype, device=device)

    def __len__(self) -> int:
        return self._keys.shape[0]

    def tensor(self) -> torch.Tensor:
        """The current contents, oldest first: ``(n, dim)`` with ``n <= size`` (``(0, dim)`` when empty)."""
        return self._keys

    def push(self, keys: torch.Tensor) -> None:
        """Append ``keys`` (``(n, dim)``, detached) and drop the oldest rows beyond ``size``."""
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"EmbeddingQueue.push: keys must have shape (n, {self.dim}), got {tuple(keys.shape)}")
        keys = keys.detach().to(dtype=self._keys.dtype, device=self._keys.device)
        self._keys = torch.cat([self._keys, keys], 0)[max(0, len(self._keys) + len(keys) - self.size):].clone()

    def to(self, device: torch.device | str) -> EmbeddingQueue:
        """Move the contents to ``device`` (in place); returns ``self``."""
        self._keys = self._keys.to(device)
        return self

    def state_dict(self) -> dict:
        return {"size": self.size, "dim": self.dim, "keys": self._keys.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore contents saved by :meth:`state_dict`; the size and dim must match this queue's."""
        if state.get("size") != self.size or state.get("dim") != self.dim:
            raise ValueError(f"EmbeddingQueue.load_state_dict: saved queue has size={state.get('size')}, "
                             f"dim={state.get('dim')}; this queue has size={self.size}, dim={self.dim}")
        keys = state["keys"]
        if keys.ndim != 2 or keys.shape[1] != self.dim or keys.shape[0] > self.size:
            raise ValueError(f"EmbeddingQueue.load_state_dict: saved keys have shape {tuple(keys.shape)}, "
                             f"expected (n <= {self.size}, {self.dim})")
        self._keys = keys.to(dtype=self._keys.dtype, device=self._keys.device).clone()


@torch.no_grad()
def momentum_update(target: nn.Module | Iterable[torch.Tensor], source: nn.Module | Iterable[torch.Tensor],
                    m: float) -> None:
    """EMA in place: ``target = m * target + (1 - m) * source`` for each parameter, without gradient.

    Modules are paired by ``named_parameters`` (same names and shapes required); iterables of
    tensors are paired in order. Buffers are left alone, as in ESimCSE's and MoCo's code. After
    ``k`` updates from a fixed source, ``target_k = m^k target_0 + (1 - m^k) source``; ``m = 0``
    copies the source.

    >>> t, s = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> momentum_update(t, s, 0.0)
    >>> bool(torch.equal(t.weight, s.weight))
    True
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"momentum_update: m must be in [0, 1], got {m}")
    if isinstance(target, nn.Module) and isinstance(source, nn.Module):
        tp, sp = dict(target.named_parameters()), dict(source.named_parameters())
        if tp.keys() != sp.keys():
            missing, extra = sorted(sp.keys() - tp.keys()), sorted(tp.keys() - sp.keys())
            raise ValueError(f"momentum_update: parameter names differ: missing in target {missing[:5]}, "
                             f"only in target {extra[:5]}")
        pairs = [(name, tp[name], sp[name]) for name in tp]
    else:
        t_list = list(target.parameters() if isinstance(target, nn.Module) else target)
        s_list = list(source.parameters() if isinstance(source, nn.Module) else source)
        if len(t_list) != len(s_list):
            raise ValueError(f"momentum_update: target has {len(t_list)} tensors, source has {len(s_list)}")
        pairs = [(str(i), t, s) for i, (t, s) in enumerate(zip(t_list, s_list))]
    for name, t, s in pairs:
        if t.shape != s.shape:
            raise ValueError(f"momentum_update: parameter {name!r} has shape {tuple(t.shape)} in target, "
                             f"{tuple(s.shape)} in source")
    for _, t, s in pairs:
        t.mul_(m).add_(s.detach().to(t.dtype), alpha=1.0 - m)


__all__ = ["ClipLoss", "EmbeddingQueue", "SimCSELoss", "back_translate", "clip_loss", "dcl_loss", "gather_features",
           "gather_rows", "kmeans", "momentum_update", "pmrl_loss", "prototype_loss", "siglip_loss", "simcse_loss",
           "singular_values", "word_repetition"]
