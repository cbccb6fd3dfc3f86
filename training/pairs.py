"""End-to-end image-text training: the towers themselves train (all of them, or those not frozen),
on any pair source (:mod:`training.data.pairs`): Fashion-MNIST captioned by templates, a captions file
(CSV/JSONL) beside its images, or webdataset shards streamed from disk.

    python -m training.clip data=pairs/captions.csv open_clip_model=ViT-B-32 epochs=5
    python -m training.clip data='wds:shards/train-{000..015}.tar' freeze_image=false
    torchrun --nproc_per_node 2 -m training.clip data=pairs/captions.jsonl open_clip_model=tiny.json

Towers are either from scratch, an open_clip model config (``open_clip_model``; saved as an
open_clip folder), or the pretrained towers of the LiT recipe (timm image model + any SDK text
model; saved as an embedhub folder) with ``freeze_image`` / ``freeze_text`` choosing what trains.
Batch order depends only on (seed, epoch), so ``--resume`` reproduces the uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedhub.modules import average_templates, template_prompts

from .config import to_dict
from .data.pairs import LabelledPairs, open_pairs
from .dist import gather, rank_world, shard
from .evaluate import linear_probe, retrieval_recall, zero_shot_accuracy
from .loop import start_run
from .model import DualEncoder, build_towers, images_to_array, open_clip_towers, prompt_settings, to_embedding_model


class _NoTokenizerFiles:
    """open_clip's default tokenizer ships inside open_clip: the saved folder needs no tokenizer files."""

    def save_pretrained(self, directory: str) -> None:
        pass


# ---------------------------------------------------------------------------------------- setup
class EndToEnd:
    """What the end-to-end recipes share: pairs, towers, per-batch preprocessing, evaluation, export."""

    def __init__(self, cfg):
        self.t_start = start_run(cfg)
        self.cfg = cfg
        self.train, self.eval = open_pairs(cfg)
        if cfg.open_clip_model:
            self.model, self.image_pre, self.text_pre, self.open_clip_cfg = open_clip_towers(cfg.open_clip_model,
                                                                                             cfg.seed)
        else:
            image_bb, image_dim, self.image_pre, text_bb, text_dim, self.text_pre = build_towers(cfg)
            self.model = DualEncoder(image_bb, image_dim, text_bb, text_dim, embed_dim=cfg.embed_dim, head=cfg.head,
                                     init_logit_scale=cfg.init_logit_scale)
            self.model.freeze(image=cfg.freeze_image, text=cfg.freeze_text)
            self.open_clip_cfg = None
        self.steps = math.ceil(len(self.train) / cfg.batch_size)

    def batches(self, epoch: int) -> Iterator[tuple[list, list[str]]]:
        """This rank's slice of each global batch, as raw images and captions."""
        for images, captions in self.train.batches(epoch, self.cfg.batch_size, self.cfg.seed):
            rows = shard(torch.arange(len(images))).tolist()
            yield [images[i] for i in rows], [captions[i] for i in rows]

    def pixels(self, images: list) -> torch.Tensor:
        return torch.from_numpy(self.image_pre(images_to_array(images))["pixel_values"])

    def tokens(self, captions: list[str]) -> dict[str, torch.Tensor]:
        batch = self.text_pre.collate(self.text_pre.tokenize(captions))
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def embed(self, m: nn.Module, batch: tuple[list, list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the whole global batch (this rank's slice encoded, all ranks' gathered)."""
        images, captions = batch
        return gather(m.encode_image(self.pixels(images))), gather(m.encode_text(self.tokens(captions)))

    @torch.no_grad()
    def encode_all(self, m: nn.Module, images: list, captions: list[str] | None, batch: int = 128):
        img = (torch.cat([m.encode_image(self.pixels(images[s:s + batch])) for s in range(0, len(images), batch)])
               if images else None)
        if captions is None:
            return img, None
        txt = torch.cat([m.encode_text(self.tokens(captions[s:s + batch])) for s in range(0, len(captions), batch)])
        return img, txt

    def evaluate(self, m: nn.Module) -> dict[str, float]:
        ev = self.eval
        img, txt = self.encode_all(m, ev.images, ev.captions)
        res: dict[str, float] = {}
        if ev.labels is not None:
            _, per = self.encode_all(m, [], template_prompts(ev.classes, self.cfg.templates))
            per = average_templates(per, len(ev.classes))
            res["zeroshot_top1"] = zero_shot_accuracy(img, ev.labels, per)
        res.update(retrieval_recall(img, txt, ev.keys, ev.keys, ks=(1, 5, 10)))
        return res

    def finish(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Linear probe (labelled data), the model folder, its check through the SDK, results.json."""
        import embedhub

        cfg, model, ev = self.cfg, self.model, self.eval
        model.eval()
        if ev.labels is not None and isinstance(self.train, LabelledPairs):
            n = min(2000, len(self.train))
            tr, _ = self.encode_all(model, list(self.train.data.images[:n]), None)
            te, _ = self.encode_all(model, ev.images, None)
            metrics["linear_probe_top1"] = linear_probe(tr.numpy(), self.train.data.labels[:n], te.numpy(), ev.labels)
        out = Path(cfg.output) / "model"
        if self.open_clip_cfg is not None:
            from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
            from open_clip.push_to_hf_hub import save_for_hf

            clip = model.clip
            clip.visual.image_mean, clip.visual.image_std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
            out.mkdir(parents=True, exist_ok=True)
            save_for_hf(clip, tokenizer=_NoTokenizerFiles(), model_config=self.open_clip_cfg,
                        save_directory=str(out), safe_serialization=True)
        else:
            emb = to_embedding_model(model, self.image_pre, self.text_pre, templates=cfg.templates,
                                     **prompt_settings(cfg))
            emb.save_pretrained(out)
        # the saved folder through the SDK must give the trained model's embeddings
        loaded = embedhub.load(out, device="cpu")
        k = min(64, len(ev.images))
        ours_i, ours_t = self.encode_all(model, ev.images[:k], ev.captions[:k])
        sdk_i = loaded.encode_image(images_to_array(ev.images[:k]), show_progress_bar=False)
        sdk_t = loaded.encode_text(ev.captions[:k], show_progress_bar=False, prompt="")
        metrics["sdk_min_cosine"] = float(min((ours_i.numpy() * sdk_i).sum(1).min(),
                                              (ours_t.numpy() * sdk_t).sum(1).min()))
        summary = {"metrics": metrics, "seconds_total": round(time.perf_counter() - self.t_start, 1),
                   "train_pairs": len(self.train), "eval_pairs": len(ev.images), "world_size": rank_world()[1],
                   "config": to_dict(cfg),
                   "model": str(out), "model_format": loaded.format}
        (Path(cfg.output) / "results.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary["metrics"], indent=2))
        return summary

