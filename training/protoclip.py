"""ProtoCLIP recipe (Chen et al. 2022), LiT-style: CLIP heads plus per-modality prototype heads,
episodic K-means, Prototypical Back Translation, soft prototype targets, optional external teacher.

    python -m training.protoclip [--config run.yaml] [key=value ...]

Each epoch is an episode: ``episode_size`` items are drawn with replacement, encoded without
gradient, clustered per modality (``clusters`` centroids), and the episode's batches are drawn from
them. The first episode trains InfoNCE only. Empty clusters are masked out of the softmaxes.
Checkpoints carry the current episode (its items, clusters and back-translated prototypes), so a run
resumed mid-episode continues with the same prototypes and reproduces the uninterrupted run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .clip import LiTSetup
from .config import ProtoClipConfig
from .data.order import epoch_order
from .dist import gather, shard
from .loop import Trainer, fit_and_finish
from .losses import ClipLoss, back_translate, kmeans, prototype_loss
from .recipe import recipe_main


class ProtoHead(nn.Sequential):
    """``Linear(D, H) -> BN -> ReLU -> Linear(H, d)``, L2-normalised (discarded at inference)."""

    def __init__(self, dim: int, hidden: int, out: int):
        super().__init__(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(super().forward(x), dim=-1)


def run(cfg: ProtoClipConfig) -> dict[str, Any]:
    setup = LiTSetup(cfg)
    model = setup.model
    model.proto_image = ProtoHead(cfg.embed_dim, 512, cfg.proto_dim)
    model.proto_text = ProtoHead(cfg.embed_dim, 512, cfg.proto_dim)
    model.proto_logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    clip = ClipLoss()
    feats = setup.feats_train
    labels_all = torch.from_numpy(feats.labels)
    k = cfg.clusters
    episode: dict[str, Any] = {}
    external = None
    if cfg.external_teacher:
        import embedhub

        ext = embedhub.load(cfg.external_teacher, device="cpu")
        external = torch.from_numpy(ext.encode(feats.captions))

    def start_episode(m: nn.Module, epoch: int) -> None:
        if episode.pop("resumed", False) and episode.get("epoch") == epoch:
            return  # the interrupted episode, restored from the checkpoint as it was
        episode.clear()
        g = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        items = torch.randint(len(setup.train), (min(cfg.episode_size, 4 * len(setup.train)),), generator=g)
        caps = labels_all[items] * setup.n_t + torch.randint(setup.n_t, (len(items),), generator=g)
        episode.update(items=items, caps=caps, epoch=epoch)
        if epoch == 0:
            return  # InfoNCE only in the first episode
        m.eval()
        with torch.no_grad():
            zi = m.proto_image(m.encode_image(feats.images[items], features=True))
            zt = m.proto_text(m.encode_text(feats.text[caps], features=True))
        kw = dict(iters=cfg.kmeans_iters, restarts=cfg.kmeans_restarts, seed=cfg.seed + epoch)
        ci, yi = kmeans(zi, k, **kw)
        ct, yt = kmeans(zt, k, **kw)
        # Prototypical Back Translation, fixed for the episode (as in the paper: stale within it)
        c_i_from_t, valid_t = back_translate(zi, yt, k)  # image-space prototypes of the text clusters
        c_t_from_i, valid_i = back_translate(zt, yi, k)
        episode.update(ci=ci, yi=yi, ct=ct, yt=yt, c_i_from_t=c_i_from_t, valid_t=valid_t, c_t_from_i=c_t_from_i,
                       valid_i=valid_i)
        if external is not None:
            _, ye = kmeans(external[caps], k, **kw)
            c_t_from_e, valid_e = back_translate(zt, ye, k)
            episode.update(ye=ye, c_t_from_e=c_t_from_e, valid_e=valid_e)
        m.train()

    def batches(epoch: int):
        n = len(episode["items"])
        order = epoch_order(n, cfg.seed, epoch)
        for s in range(0, n, cfg.batch_size):
            yield order[s:s + cfg.batch_size]

    def loss_fn(m: nn.Module, pos: torch.Tensor) -> torch.Tensor:
        # this rank encodes its slice; the gathered global batch goes through the rest (BatchNorm included)
        mine = shard(pos)
        items, caps = episode["items"][mine], episode["caps"][mine]
        ei = gather(m.encode_image(feats.images[items], features=True))
        et = gather(m.encode_text(feats.text[caps], features=True))
        loss = clip(ei, et, m.logit_scale.exp())
        if episode["epoch"] == 0:
            return loss
        zi, zt = m.proto_image(ei), m.proto_text(et)
        scale = m.proto_logit_scale.exp()
        e, tau = episode, cfg.teacher_temperature
        proto = 0.5 * (
            prototype_loss(zi, e["c_i_from_t"], e["ct"], e["yt"][pos], scale, teacher_temperature=tau,
                           valid=e["valid_t"])
            + prototype_loss(zt, e["c_t_from_i"], e["ci"], e["yi"][pos], scale, teacher_temperature=tau,
                             valid=e["valid_i"]))
        loss = loss + proto
        if "ye" in e:  # external teacher: hard targets
            loss = loss + prototype_loss(zt, e["c_t_from_e"], e["c_t_from_e"], e["ye"][pos], scale,
                                         teacher_temperature=0.0, valid=e["valid_e"])
        return loss

    steps = int(np.ceil(min(cfg.episode_size, 4 * len(setup.train)) / cfg.batch_size))
    def save_episode() -> dict[str, torch.Tensor]:
        return {k: torch.as_tensor(v) for k, v in episode.items() if k != "resumed"}

    def load_episode(state: dict[str, torch.Tensor]) -> None:
        episode.clear()
        episode.update({k: int(v) if k == "epoch" else v for k, v in state.items()}, resumed=True)

    trainer = Trainer(cfg, model, loss_fn, batches, steps, setup.evaluate, on_epoch_start=start_episode,
                      extra_state=save_episode, load_extra_state=load_episode)
    return fit_and_finish(trainer, setup.finish)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    return recipe_main(ProtoClipConfig, run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
