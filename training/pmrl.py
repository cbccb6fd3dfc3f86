"""PMRL recipe (Liu et al. 2025) with M = 3 real modalities: Fashion-MNIST images, their captions,
and the captions spoken by espeak-ng (log-mel statistics as the frozen audio features).

    python -m training.pmrl [--config run.yaml] [objective=pmrl|anchored] [key=value ...]

``objective=pmrl``: the singular-value softmax over each instance's stacked embeddings plus
InfoNCE over the leading singular vectors, no anchor modality. ``objective=anchored``: the
baseline, pairwise CLIP losses with the image as anchor (image-text + image-audio).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedhub.modules import Head

from .audio import spoken_caption_features
from .clip import LiTSetup
from .config import PmrlConfig
from .dist import gather, main_first, shard
from .loop import Trainer, fit_and_finish
from .losses import ClipLoss, pmrl_loss
from .model import head_spec
from .recipe import recipe_main


def run(cfg: PmrlConfig) -> dict[str, Any]:
    setup = LiTSetup(cfg)
    model = setup.model
    feats = setup.feats_train
    with main_first():  # rank 0 synthesises the speech cache, the other ranks read it
        audio_np, caption_of = spoken_caption_features(feats.captions, Path(cfg.output) / "audio_cache",
                                                       variants=cfg.audio_variants)
    audio = torch.from_numpy(np.asarray(audio_np, dtype=np.float32))
    audio = (audio - audio.mean(0)) / audio.std(0).clamp(min=1e-6)  # fixed standardisation of the features
    caption_of = torch.as_tensor(caption_of)
    utterances = [torch.nonzero(caption_of == c).squeeze(1) for c in range(len(feats.captions))]
    model.audio_head = Head(head_spec("mlp", audio.shape[1], cfg.embed_dim))
    clip = ClipLoss()

    def encode_audio(m: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(m.audio_head(audio[rows]), dim=-1)

    def batches(epoch: int):
        g = torch.Generator().manual_seed(cfg.seed * 31 + epoch)
        for idx, cap in setup.batch_indices(epoch):
            pick = torch.randint(cfg.audio_variants, (len(cap),), generator=g)
            rows = torch.stack([utterances[int(c)][int(p) % len(utterances[int(c)])] for c, p in zip(cap, pick)])
            idx, cap, rows = shard(idx), shard(cap), shard(rows)  # this rank's slice
            yield feats.images[idx], feats.text[cap], rows

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        img, txt, rows = batch
        zi, zt, za = (gather(m.encode_image(img, features=True)), gather(m.encode_text(txt, features=True)),
                      gather(encode_audio(m, rows)))
        if cfg.objective == "anchored":
            s = m.logit_scale.exp()
            return clip(zi, zt, s) + clip(zi, za, s)
        intra, inter = pmrl_loss([zi, zt, za], tau_intra=cfg.tau_intra, tau_inter=cfg.tau_inter, inter=cfg.inter)
        return intra + inter

    def evaluate(m: nn.Module) -> dict[str, float]:
        res = setup.evaluate(m)
        with torch.no_grad():
            img = m.encode_image(setup.feats_test.images, features=True)
            aud = encode_audio(m, torch.arange(len(audio)))
            txt = m.encode_text(feats.text, features=True)
            n_cls, n_t = len(setup.classes), setup.n_t
            cls_of_utt = caption_of // n_t
            per_class = torch.stack([aud[cls_of_utt == c].mean(0) for c in range(n_cls)])
            per_class = nn.functional.normalize(per_class, dim=-1)
            pred = (img @ per_class.T).argmax(1).numpy()
            res["audio_zeroshot_top1"] = float((pred == setup.feats_test.labels).mean())
            # spoken caption -> written caption: the nearest text is the same caption
            res["audio2text_R@1"] = float(((aud @ txt.T).argmax(1) == caption_of).float().mean())
        return res

    return fit_and_finish(Trainer(cfg, model, loss_fn, batches, setup.steps, evaluate), setup.finish)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    return recipe_main(PmrlConfig, run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
