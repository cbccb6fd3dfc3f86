"""End-to-end image-text training: the towers themselves train (all of them, or those not frozen),
on any pair source: Fashion-MNIST captioned by templates, a captions file (CSV/JSONL) beside its
images, or webdataset shards streamed from disk.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedhub.utils import average_templates, epoch_generator, epoch_order, tar_keys, template_prompts

from .config import ConfigValueError, DataError, MissingDataError, to_dict
from .data import LabelledImages, Sample, captioned_folder, expand_shards, fashion_mnist, webdataset
from .dist import gather, rank_world, shard
from .evaluate import linear_probe, retrieval_recall, zero_shot_accuracy
from .loop import start_run
from .model import DualEncoder, build_towers, images_to_array, prompt_settings, to_embedding_model


# ---------------------------------------------------------------------------------------- data
class TrainPairs:
    """Training pairs: ``len()`` and the global batches of an epoch as (images, captions) lists."""

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[tuple[list, list[str]]]:
        raise NotImplementedError


class LabelledPairs(TrainPairs):
    """A labelled image set; each epoch draws one template per image to caption it."""

    def __init__(self, data: LabelledImages, templates: tuple[str, ...]):
        self.data, self.templates = data, templates

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[tuple[list, list[str]]]:
        g = epoch_generator(seed, epoch)
        order = torch.randperm(len(self.data), generator=g).numpy()
        tmpl = torch.randint(len(self.templates), (len(self.data),), generator=g).numpy()
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            yield (list(self.data.images[idx]),
                   [self.templates[t].format(self.data.classes[y]) for t, y in zip(tmpl[idx], self.data.labels[idx])])


class ListPairs(TrainPairs):
    """Pairs held in memory (from a captions file), reshuffled every epoch."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[tuple[list, list[str]]]:
        order = epoch_order(len(self.samples), seed, epoch)
        for s in range(0, len(order), batch_size):
            rows = [self.samples[int(i)] for i in order[s:s + batch_size]]
            yield [r.image for r in rows], [r.caption or "" for r in rows]


class ShardPairs(TrainPairs):
    """webdataset shards streamed from disk: each epoch visits the shards in a (seed, epoch) order,
    each shard in its own order, and never holds more than one batch in memory."""

    def __init__(self, pattern: str, skip: set[str] | None = None):
        self.shards = expand_shards(pattern)
        missing = [s for s in self.shards if not Path(s).is_file()]
        if missing:
            raise MissingDataError(f"webdataset shards not found: {missing[:3]} (pattern {pattern!r})")
        self.skip = skip or set()
        self.count = sum(1 for shard in self.shards for key in tar_keys(shard) if key not in self.skip)

    def __len__(self) -> int:
        return self.count

    def batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[tuple[list, list[str]]]:
        order = epoch_order(len(self.shards), seed, epoch)
        images: list = []
        captions: list[str] = []
        for i in order:
            for sample in webdataset(self.shards[int(i)]):
                if sample.key in self.skip:
                    continue
                images.append(sample.image)
                captions.append(sample.caption or "")
                if len(images) == batch_size:
                    yield images, captions
                    images, captions = [], []
        if images:
            yield images, captions


@dataclass
class EvalPairs:
    """Evaluation images with one caption each; ``labels``/``classes`` when the set is labelled."""

    images: list
    captions: list[str]
    labels: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    keys: np.ndarray | None = None  # retrieval: equal keys count as hits; default: identical captions

    def __post_init__(self) -> None:
        if self.keys is None:
            ids: dict[str, int] = {}
            self.keys = np.array([ids.setdefault(c, len(ids)) for c in self.captions])


def _samples(spec: str) -> list[Sample]:
    if spec.startswith("wds:"):
        return list(webdataset(spec[4:]))
    return list(captioned_folder(spec))


def open_pairs(cfg) -> tuple[TrainPairs, EvalPairs]:
    """The training pairs and the evaluation set the config names (see ``TrainConfig.data``)."""
    if cfg.data == "fashion-mnist":
        train = fashion_mnist("train")
        if cfg.train_limit:
            train = train.subset(np.arange(cfg.train_limit))
        if cfg.eval_data:
            test = _eval_from(_samples(cfg.eval_data), cfg.eval_limit)
        else:
            t = fashion_mnist("test")
            t = t.subset(np.arange(cfg.eval_limit)) if cfg.eval_limit else t
            caps = [cfg.templates[0].format(t.classes[y]) for y in t.labels]
            test = EvalPairs(list(t.images), caps, t.labels, t.classes, keys=t.labels)
        return LabelledPairs(train, cfg.templates), test
    held = cfg.eval_pairs if not cfg.eval_data else 0
    if cfg.data.startswith("wds:"):
        pattern = cfg.data[4:]
        head: list[Sample] = []
        if held:
            for sample in webdataset(pattern):
                head.append(sample)
                if len(head) == held:
                    break
        train_pairs: TrainPairs = ShardPairs(pattern, skip={s.key for s in head})  # train_limit is 0 (validated)
    else:
        samples = _samples(cfg.data)
        if held >= len(samples):
            raise ConfigValueError("eval_pairs", held, f"fewer than the {len(samples)} pairs of {cfg.data} (the first "
                                   "eval_pairs are held out for evaluation); lower eval_pairs or give eval_data")
        head, rest = samples[:held], samples[held:]
        train_pairs = ListPairs(rest[:cfg.train_limit] if cfg.train_limit else rest)
    evaluation = _eval_from(_samples(cfg.eval_data) if cfg.eval_data else head, cfg.eval_limit)
    if len(train_pairs) == 0 or not evaluation.images:
        raise DataError(f"{cfg.data}: no training pairs or no evaluation pairs "
                         f"({len(train_pairs)} train, {len(evaluation.images)} eval)")
    return train_pairs, evaluation


def _eval_from(samples: list[Sample], limit: int) -> EvalPairs:
    samples = samples[:limit] if limit else samples
    return EvalPairs([s.image for s in samples], [s.caption or "" for s in samples])


# ---------------------------------------------------------------------------------------- towers
class OpenClipDual(nn.Module):
    """An open_clip CLIP trained from scratch, with the recipe's encode_image/encode_text interface."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, pixels: torch.Tensor, *, features: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_image(pixels), dim=-1)

    def encode_text(self, tokens: dict[str, torch.Tensor], *, features: bool = False) -> torch.Tensor:
        return nn.functional.normalize(self.clip.encode_text(tokens["input_ids"]), dim=-1)


def open_clip_config(name: str) -> dict[str, Any]:
    """An open_clip model config by name (bundled with open_clip, no download) or from a JSON file."""
    import open_clip

    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigValueError("open_clip_model", name, f"an existing JSON model config ({path} not found)")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
            cfg = cfg.get("model_cfg", cfg)
        except (ValueError, AttributeError) as exc:
            raise ConfigValueError("open_clip_model", name,
                                   f"a JSON object of an open_clip model config ({exc})") from None
        if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
            raise ConfigValueError("open_clip_model", name,
                                   "a JSON model config with embed_dim, vision_cfg and text_cfg (as open_clip's own)")
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise ConfigValueError("open_clip_model", name,
                                   f"an open_clip model config name or .json file, e.g. {open_clip.list_models()[-4:]}")
    if "hf_tokenizer_name" in cfg.get("text_cfg", {}) or "hf_model_name" in cfg.get("text_cfg", {}):
        raise ConfigValueError("open_clip_model", name, "a config with a CLIP text tower (Hugging Face text towers "
                               "need a download)")
    return cfg


def open_clip_towers(name: str, seed: int) -> tuple[OpenClipDual, Any, Any, dict[str, Any]]:
    """(model, image preprocessor, tokeniser, model config) of a randomly initialised open_clip CLIP."""
    from open_clip.tokenizer import SimpleTokenizer

    from embedhub.modules import ImagePreprocessor, OpenCLIPTextPreprocessor, build_open_clip, open_clip_image_config

    cfg = open_clip_config(name)
    torch.manual_seed(seed)
    clip = build_open_clip(cfg)
    context = int(cfg["text_cfg"].get("context_length", 77))
    text_pre = OpenCLIPTextPreprocessor(SimpleTokenizer(context_length=context), max_length=context)
    image_pre = ImagePreprocessor(open_clip_image_config(cfg))  # what embedhub.load will use for the saved folder
    return OpenClipDual(clip), image_pre, text_pre, cfg


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

