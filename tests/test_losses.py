"""Losses against explicit float64 loops, invariances, known values, identities, the peer and gloo."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from embedhub.training.losses import (
    ClipLoss,
    back_translate,
    clip_loss,
    dcl_loss,
    kmeans,
    pmrl_loss,
    prototype_loss,
    siglip_loss,
    singular_values,
)


def _pair(b=8, d=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1),
            F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=-1))


def _clip_loop(i, t, s):
    b = len(i)
    total = 0.0
    for a in range(b):
        row = [s * float(i[a] @ t[j]) for j in range(b)]
        col = [s * float(t[a] @ i[j]) for j in range(b)]
        total += -row[a] + math.log(sum(math.exp(x) for x in row))
        total += -col[a] + math.log(sum(math.exp(x) for x in col))
    return total / (2 * b)


def test_clip_matches_loop_and_invariances():
    i, t = _pair()
    s = 7.3
    assert clip_loss(i, t, s).item() == pytest.approx(_clip_loop(i, t, s), rel=1e-10)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    assert clip_loss(i[perm], t[perm], s).item() == pytest.approx(clip_loss(i, t, s).item(), rel=1e-10)
    assert clip_loss(t, i, s).item() == pytest.approx(clip_loss(i, t, s).item(), rel=1e-10)
    raw = torch.randn(8, 16, dtype=torch.float64)
    assert clip_loss(F.normalize(raw * 5, dim=-1), t, s).item() == pytest.approx(
        clip_loss(F.normalize(raw, dim=-1), t, s).item(), rel=1e-10)


def test_clip_known_values():
    i, t = _pair()
    assert clip_loss(i, t, 0.0).item() == pytest.approx(math.log(8), rel=1e-12)
    eye = torch.eye(8, 16, dtype=torch.float64)
    assert clip_loss(eye, eye, 100.0).item() < 1e-30


def test_clip_equals_open_clip_cliploss():
    open_clip = pytest.importorskip("open_clip")
    i, t = _pair(dtype=torch.float32)
    scale = torch.tensor(14.2)
    ours = ClipLoss()(i, t, scale)
    theirs = open_clip.ClipLoss()(i, t, scale)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_siglip_and_dcl_match_loops():
    i, t = _pair()
    s, b = 10.0, -10.0
    ref = 0.0
    for a in range(8):
        for j in range(8):
            z = 1.0 if a == j else -1.0
            ref += -math.log(1 / (1 + math.exp(-z * (s * float(i[a] @ t[j]) + b))))
    assert siglip_loss(i, t, s, b).item() == pytest.approx(ref / 8, rel=1e-10)

    ref = 0.0
    for x, y in ((i, t), (t, i)):
        for a in range(8):
            logits = [s * float(x[a] @ y[j]) for j in range(8)]
            ref += (-logits[a] + math.log(sum(math.exp(v) for j, v in enumerate(logits) if j != a))) / 8
    assert dcl_loss(i, t, s).item() == pytest.approx(ref / 2, rel=1e-10)


def test_prototype_loss_soft_hard_and_empty_clusters():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=-1)
    cs = torch.randn(5, 4, generator=g, dtype=torch.float64)
    ct = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=-1)
    y = torch.tensor([0, 1, 1, 3, 3, 0])
    s, tau = 20.0, 0.5
    ref = 0.0
    for a in range(6):
        logits = [s * float(z[a] @ cs[k]) for k in range(5)]
        lse = math.log(sum(math.exp(v) for v in logits))
        tl = [float(ct[y[a]] @ ct[k]) / tau for k in range(5)]
        tz = sum(math.exp(v) for v in tl)
        ref += -sum(math.exp(tl[k]) / tz * (logits[k] - lse) for k in range(5))
    assert prototype_loss(z, cs, ct, y, s, teacher_temperature=tau).item() == pytest.approx(ref / 6, rel=1e-10)
    hard = prototype_loss(z, cs, ct, y, s, teacher_temperature=0.0)
    assert hard.item() == pytest.approx(F.cross_entropy(s * z @ cs.T, y).item(), rel=1e-10)
    # clusters 2 and 4 are empty: masked out, no NaN, and equal to the loss over the valid ones only
    valid = torch.tensor([True, True, False, True, False])
    masked = prototype_loss(z, cs, ct, y, s, teacher_temperature=tau, valid=valid)
    assert torch.isfinite(masked)
    keep = valid.nonzero().squeeze(1)
    remap = {int(k): n for n, k in enumerate(keep)}
    y2 = torch.tensor([remap[int(v)] for v in y])
    assert masked.item() == pytest.approx(
        prototype_loss(z, cs[keep], ct[keep], y2, s, teacher_temperature=tau).item(), rel=1e-10)


def test_back_translate_and_kmeans():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    protos, valid = back_translate(feats, torch.tensor([0, 0, 2]), 3)
    assert torch.allclose(protos, torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    assert valid.tolist() == [True, False, True]
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centers])
    cent, labels = kmeans(x, 3, seed=0)
    assert len(set(labels[:30].tolist())) == 1 and len(set(labels.tolist())) == 3
    assert torch.cdist(cent, centers).min(1).values.max() < 0.1


def test_pmrl_identities():
    i, t = _pair(b=5)
    c = (i * t).sum(1).abs()
    assert c.min() > 0.01
    sigma, u1 = singular_values([i, t])
    np.testing.assert_allclose(sigma[:, 0], torch.sqrt(1 + c), atol=1e-10)
    np.testing.assert_allclose(sigma[:, 1], torch.sqrt(1 - c), atol=1e-7)
    # aligned: rank 1, sigma_1 = sqrt(M)
    sigma, u1 = singular_values([i, i, i])
    np.testing.assert_allclose(sigma[:, 0], math.sqrt(3), atol=1e-10)
    np.testing.assert_allclose(u1, i, atol=1e-10)  # sign fixed so that sum_m u1.z_m > 0
    # Gram route == SVD
    feats = [F.normalize(torch.randn(4, 16, dtype=torch.float64), dim=-1) for _ in range(3)]
    sigma, u1 = singular_values(feats)
    u, s, _ = torch.linalg.svd(torch.stack(feats, -1), full_matrices=False)
    np.testing.assert_allclose(sigma, s, atol=1e-10)
    np.testing.assert_allclose(u1.abs(), u[:, :, 0].abs(), atol=1e-8)
    assert ((u1.unsqueeze(-1) * torch.stack(feats, -1)).sum((1, 2)) > 0).all()


def test_pmrl_loss_values_and_gradients():
    feats = [F.normalize(torch.randn(6, 8, dtype=torch.float64), dim=-1).requires_grad_() for _ in range(3)]
    intra, inter = pmrl_loss(feats, tau_intra=0.05, tau_inter=0.1, inter="reference")
    (intra + inter).backward()
    sigma, u1 = singular_values(feats)
    assert inter.item() == pytest.approx(F.cross_entropy(u1 @ u1.T / 0.1, torch.arange(6)).item(), rel=1e-10)
    _, inter_m = pmrl_loss(feats, tau_intra=0.05, tau_inter=0.1)
    ref_m = np.mean([F.cross_entropy(f @ u1.T / 0.1, torch.arange(6)).item() for f in feats])
    assert inter_m.item() == pytest.approx(ref_m, rel=1e-10)
    # singular values cannot see a modality's sign; the "modalities" contrast can
    base = torch.randn(6, 8, dtype=torch.float64)
    near = [F.normalize(base + 0.1 * torch.randn(6, 8, dtype=torch.float64), dim=-1) for _ in range(3)]
    flipped = [near[0], -near[1], near[2]]
    assert pmrl_loss(flipped)[0].item() == pytest.approx(pmrl_loss(near)[0].item(), rel=1e-9)
    assert pmrl_loss(flipped, inter="reference")[1].item() == pytest.approx(
        pmrl_loss(near, inter="reference")[1].item(), rel=1e-6)
    assert pmrl_loss(flipped)[1].item() > pmrl_loss(near)[1].item() + 1.0
    ref_intra = np.mean([-(sigma[b, 0] / 0.05 - torch.logsumexp(sigma[b] / 0.05, 0)).item() for b in range(6)])
    assert intra.item() == pytest.approx(ref_intra, rel=1e-10)
    assert all(torch.isfinite(f.grad).all() for f in feats)
    # aligned inputs (repeated zero singular values) stay finite in fp32
    x = F.normalize(torch.randn(4, 8), dim=-1).requires_grad_()
    intra, inter = pmrl_loss([x, x, x])
    (intra + inter).backward()
    assert torch.isfinite(x.grad).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, img: torch.Tensor, txt: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = len(img) // world
    i = img[rank * b:(rank + 1) * b].clone().requires_grad_()
    t = txt[rank * b:(rank + 1) * b].clone().requires_grad_()
    loss = ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world)(i, t, torch.tensor(10.0))
    # each rank's local loss is 1/world of the global one (as DDP averages gradients)
    (loss / world).backward()
    out[rank] = (loss.detach(), i.grad, t.grad)
    dist.destroy_process_group()


def test_distributed_gather_matches_single_process():
    import torch.multiprocessing as mp

    img, txt = _pair(b=8, dtype=torch.float32)
    ref_i, ref_t = img.clone().requires_grad_(), txt.clone().requires_grad_()
    clip_loss(ref_i, ref_t, torch.tensor(10.0)).backward()
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), img, txt, out), nprocs=2, join=True)
    grad_i = torch.cat([out[0][1], out[1][1]])
    grad_t = torch.cat([out[0][2], out[1][2]])
    np.testing.assert_allclose(grad_i, ref_i.grad, atol=1e-6)
    np.testing.assert_allclose(grad_t, ref_t.grad, atol=1e-6)


def test_the_old_path_embedhub_losses_warns_and_gives_the_same_objects():
    """``embedhub.losses`` (the losses' place before they moved into the training package) still imports for one
    release: it warns and its names are the very objects of ``embedhub.training.losses``."""
    import importlib
    import sys

    import embedhub.training.losses as moved

    sys.modules.pop("embedhub.losses", None)  # a fresh import, so that it warns here
    with pytest.warns(DeprecationWarning, match=r"^embedhub\.losses moved to embedhub\.training\.losses; the old "
                                                r"path goes away in the next release$"):
        old = importlib.import_module("embedhub.losses")
    assert old.__all__ == moved.__all__ and "ClipLoss" in old.__all__ and "simcse_loss" in old.__all__
    for name in moved.__all__:
        assert getattr(old, name) is getattr(moved, name), name
    from embedhub.losses import ClipLoss, pmrl_loss

    assert ClipLoss is moved.ClipLoss and pmrl_loss is moved.pmrl_loss
    public = {n for n in vars(moved) if not n.startswith("_") and callable(getattr(moved, n))
              and getattr(getattr(moved, n), "__module__", "") == moved.__name__}
    assert public == set(moved.__all__)  # the shim names every loss the module defines
