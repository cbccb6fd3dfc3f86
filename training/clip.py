"""CLIP-family recipe (symmetric InfoNCE; SigLIP and DCL as loss options).

    python -m training.clip [--config run.yaml] [--resume] [key=value ...]
    embedhub train clip [--config run.yaml] [--resume] [key=value ...]
    torchrun --nproc_per_node 2 -m training.clip [key=value ...]      # data parallel (gloo / nccl)

LiT-style by default (frozen pretrained towers on Fashion-MNIST): the backbone features are
extracted once (with a progress bar) and only the projection heads and logit scale train; the
result is an embedhub model folder in ``output/model``. With a captions file or webdataset shards
(``data=``), unfrozen towers (``freeze_image=false``) or a from-scratch open_clip model
(``open_clip_model=``), the towers run in the loop: see :mod:`training.pairs`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from embedhub.modules import average_templates

from .config import ClipConfig, to_dict
from .data.images import LabelledImages, fashion_mnist
from .data.order import epoch_generator
from .data.wording import CaptionSampler, check_disjoint, heldout_label_sets, load_wording, prompts_of
from .dist import gather, main_first, rank_world, shard
from .evaluate import linear_probe, retrieval_recall, zero_shot_accuracy
from .loop import Trainer, fit_and_finish, start_run
from .losses import ClipLoss, dcl_loss, siglip_loss
from .model import DualEncoder, build_towers, images_to_array, prompt_settings, to_embedding_model
from .recipe import recipe_main

#: how the held-out wording is scored (kept in the run record)
HELDOUT_PROTOCOL = (
    "zeroshot_unseen_wording_top1: training/wordings/fashion_mnist_heldout.json, never used in training; label set "
    "j names each class by its j-th held-out name, the class embedding is the mean over the held-out templates "
    "(prompt ensemble), top-1 on the full test set is averaged over the label sets. zeroshot_unseen_names_top1: "
    "the same label sets in the model's own templates (as the demos prompt a label).")


@torch.no_grad()
def extract(fn, items: list, batch: int, desc: str) -> torch.Tensor:
    from tqdm.auto import tqdm

    out = [fn(items[i:i + batch]) for i in tqdm(range(0, len(items), batch), desc=desc, unit="batch")]
    return torch.cat(out) if out else torch.empty(0)


class FeatureSet:
    """Frozen-tower features of a labelled image set and of every caption the templates make.

    With ``cache`` (a folder), image features are stored as safetensors keyed by the tower, the
    preprocessing and a hash of the images, and reused by later runs.
    """

    def __init__(self, model: DualEncoder, image_pre, text_pre, data: LabelledImages, templates: tuple[str, ...],
                 classes: tuple[str, ...], batch: int = 256, cache: str = "", tower: str = ""):
        import hashlib

        from safetensors.torch import load_file, save_file

        self.labels = data.labels
        key = hashlib.sha256(data.images.tobytes() + json.dumps([tower, image_pre.config()]).encode()).hexdigest()[:24]
        path = Path(cache) / f"image-{key}.safetensors" if cache else None
        if path is not None and path.is_file():
            self.images = load_file(str(path))["features"]
        else:
            self.images = extract(lambda xs: model.image_backbone(torch.from_numpy(
                image_pre(images_to_array(xs))["pixel_values"])), list(data.images), batch, "image features")
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_file({"features": self.images.contiguous()}, str(path))
        self.captions = [t.format(c) for c in classes for t in templates]  # index = class * T + template
        self.text = text_features(model, text_pre, self.captions)


def text_features(model: DualEncoder, text_pre, texts: list[str]) -> torch.Tensor:
    def run(xs: list[str]) -> torch.Tensor:
        batch = text_pre.collate(text_pre.tokenize(xs))
        return model.text_backbone(**{k: torch.from_numpy(v) for k, v in batch.items()})

    return extract(run, texts, 128, "text features")


def unicl_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, labels: torch.Tensor,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """UniCL (Yang et al. 2022): symmetric InfoNCE in which every image-caption pair of the same class is a
    positive; the target of a row is uniform over its positives (smoothed towards uniform over the batch).

    >>> x = F.normalize(torch.eye(4), dim=1)
    >>> float(unicl_loss(x, x, torch.tensor(1.0), torch.tensor([0, 1, 2, 3]))) > 0
    True
    """
    logits = logit_scale * image @ text.T
    same = (labels[:, None] == labels[None, :]).to(logits.dtype)
    target = same / same.sum(1, keepdim=True)
    if label_smoothing:
        target = (1 - label_smoothing) * target + label_smoothing / target.shape[1]
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2  # same is symmetric


def make_loss(cfg: ClipConfig, model: DualEncoder):
    """``loss(image, text, labels)`` for the config's loss (labels: the class of each pair, used by unicl)."""
    if cfg.loss == "siglip":
        model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0))
        with torch.no_grad():
            model.logit_scale.fill_(np.log(10.0))
        return lambda i, t, y=None: siglip_loss(i, t, model.logit_scale.exp(), model.logit_bias)
    if cfg.loss == "dcl":
        return lambda i, t, y=None: dcl_loss(i, t, model.logit_scale.exp())
    smoothing = getattr(cfg, "label_smoothing", 0.0)
    if cfg.loss == "unicl":
        return lambda i, t, y: unicl_loss(i, t, model.logit_scale.exp(), y, smoothing)
    if cfg.loss == "clip" and smoothing:
        return lambda i, t, y=None: _smoothed_clip(i, t, model.logit_scale.exp(), smoothing)
    if cfg.loss == "clip":
        clip = ClipLoss()
        return lambda i, t, y=None: clip(i, t, model.logit_scale.exp())
    raise ValueError(f"loss must be clip, siglip, dcl or unicl, got {cfg.loss!r}")


def _smoothed_clip(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, eps: float) -> torch.Tensor:
    logits = logit_scale * image @ text.T
    target = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, target, label_smoothing=eps)
            + F.cross_entropy(logits.T, target, label_smoothing=eps)) / 2


class LiTSetup:
    """What every LiT-style recipe shares: towers, frozen features of train/test, evaluation, export.
    The config is LiT-style (``lit_style``): ``ProtoClipConfig`` and ``PmrlConfig`` validate it, the clip
    recipe runs end to end otherwise."""

    def __init__(self, cfg):
        self.t_start = start_run(cfg)
        self.cfg = cfg
        self.image_bb, image_dim, self.image_pre, text_bb, text_dim, self.text_pre = build_towers(cfg)
        self.model = DualEncoder(self.image_bb, image_dim, text_bb, text_dim, embed_dim=cfg.embed_dim, head=cfg.head,
                                 init_logit_scale=cfg.init_logit_scale)
        self.model.freeze(image=True, text=True)
        train_all, test_all = fashion_mnist("train"), fashion_mnist("test")
        self.classes = train_all.classes
        self.seen = tuple(c for c in self.classes if c not in cfg.holdout_classes)
        keep = np.ones(len(train_all), dtype=bool)
        if cfg.holdout_classes:
            keep &= ~np.isin(train_all.labels, [self.classes.index(c) for c in cfg.holdout_classes])
        if cfg.train_limit:
            keep &= np.cumsum(keep) <= cfg.train_limit
        rows = np.nonzero(keep)[0]
        self.train = train_all.subset(rows)
        self.test = test_all.subset(np.arange(cfg.eval_limit)) if cfg.eval_limit else test_all
        tower = f"{cfg.image_tower}:{cfg.image_pretrained}"
        # features of the whole split (cached and shared by runs that subset it differently), then the subset
        source = train_all if cfg.feature_cache else self.train
        with main_first():  # under torchrun, rank 0 fills the feature cache and the others read it
            self.feats_train = FeatureSet(self.model, self.image_pre, self.text_pre, source, cfg.templates,
                                          self.classes, cache=cfg.feature_cache, tower=tower)
            self.feats_test = FeatureSet(self.model, self.image_pre, self.text_pre, self.test, cfg.templates,
                                         self.classes, cache=cfg.feature_cache, tower=tower)
        if cfg.feature_cache:
            self.feats_train.images = self.feats_train.images[torch.from_numpy(rows)]
            self.feats_train.labels = self.train.labels
        # captions with wording variety (clip recipe): every training caption's text features, sampled per example
        self.sampler: CaptionSampler | None = None
        # the held-out wording (never trained on): label sets in the held-out templates and in the model's own
        heldout = load_wording("heldout")
        if getattr(cfg, "wording", "names") in ("auto", "varied"):
            train_wording = load_wording("train")
            check_disjoint(train_wording, heldout)  # a held-out name or template in training is refused
            self.sampler = CaptionSampler(train_wording, self.classes)
            self.train_text = text_features(self.model, self.text_pre, self.sampler.captions)
        self.heldout_sets = heldout_label_sets(heldout, self.classes)
        self.heldout_templates = (heldout.templates, tuple(cfg.templates))
        self.heldout_text = text_features(self.model, self.text_pre, [
            p for templates in self.heldout_templates for labels in self.heldout_sets for p in prompts_of(labels,
                                                                                                         templates)])
        self.t_features = time.perf_counter() - self.t_start
        self.n_t = len(cfg.templates)
        self.steps = int(np.ceil(len(self.train) / cfg.batch_size))

    def batch_indices(self, epoch: int):
        """(sample indices, caption indices) per batch; the order depends only on (seed, epoch)."""
        g = epoch_generator(self.cfg.seed, epoch)
        order = torch.randperm(len(self.train), generator=g)
        labels = torch.from_numpy(self.feats_train.labels)
        if self.sampler is None:  # caption index = class * T + template (feats_train.captions)
            caps = labels * self.n_t + torch.randint(self.n_t, (len(self.train),), generator=g)
        else:  # an index into sampler.captions
            caps = self.sampler.sample(labels, g)
        for s in range(0, len(order), self.cfg.batch_size):
            idx = order[s:s + self.cfg.batch_size]
            yield idx, caps[idx]

    def batches(self, epoch: int):
        """This rank's slice of each global batch (all of it in a single process): image features, caption
        features, and the classes of the whole global batch."""
        text = self.feats_train.text if self.sampler is None else self.train_text
        labels = torch.from_numpy(self.feats_train.labels)
        for idx, cap in self.batch_indices(epoch):
            y = labels[idx]
            idx, cap = shard(idx), shard(cap)
            yield self.feats_train.images[idx], text[cap], y

    def evaluate(self, m: DualEncoder) -> dict[str, float]:
        cfg, classes, n_t = self.cfg, self.classes, self.n_t
        with torch.no_grad():
            img = m.encode_image(self.feats_test.images, features=True)
            txt_all = m.encode_text(self.feats_test.text, features=True)
            per_class = average_templates(txt_all, len(classes))
            labels = self.feats_test.labels
            res = {"zeroshot_top1": zero_shot_accuracy(img, labels, per_class)}
            if cfg.holdout_classes:
                for name, group in (("heldout", cfg.holdout_classes), ("seen", self.seen)):
                    ids = [classes.index(c) for c in group]
                    mask = np.isin(labels, ids)
                    res[f"zeroshot_{name}_top1"] = zero_shot_accuracy(
                        img[torch.from_numpy(mask)], np.searchsorted(ids, labels[mask]), per_class[ids])
            # retrieval: 1000 test images vs one caption per class; a hit is a caption of the image's class
            k = min(1000, len(labels))
            cap_emb = txt_all[torch.arange(len(classes)) * n_t]
            res.update({key: v for key, v in retrieval_recall(img[:k], cap_emb, labels[:k], np.arange(len(classes)),
                                                              ks=(1, 5)).items() if key.startswith("i2t")})
            # held-out wording: per label set, class embeddings from its prompts; top-1 averaged over the sets
            held = m.encode_text(self.heldout_text, features=True)
            start = 0
            for name, templates in zip(("unseen_wording", "unseen_names"), self.heldout_templates):
                accs = []
                for _ in self.heldout_sets:
                    n = len(classes) * len(templates)
                    accs.append(zero_shot_accuracy(img, labels, average_templates(held[start:start + n], len(classes))))
                    start += n
                res[f"zeroshot_{name}_top1"] = float(np.mean(accs))
        return res

    def finish(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Linear probe, the embedhub model folder (checked through the SDK), results.json."""
        import embedhub

        cfg, model = self.cfg, self.model
        with torch.no_grad():
            n_probe = min(10000, len(self.train))
            tr = model.encode_image(self.feats_train.images[:n_probe], features=True).numpy()
            te = model.encode_image(self.feats_test.images, features=True).numpy()
        metrics["linear_probe_top1"] = linear_probe(tr, self.feats_train.labels[:n_probe], te, self.feats_test.labels)
        emb = to_embedding_model(model, self.image_pre, self.text_pre, templates=cfg.templates, **prompt_settings(cfg))
        out = emb.save_pretrained(Path(cfg.output) / "model")
        # the saved folder through the SDK must give the trained model's embeddings (images decoded and
        # preprocessed by the SDK from the raw test images, captions tokenised by it)
        loaded = embedhub.load(out, device="cpu")
        k = min(64, len(self.test))
        with torch.no_grad():
            ours_i = model.encode_image(self.feats_test.images[:k], features=True).numpy()
            ours_t = model.encode_text(self.feats_test.text, features=True).numpy()
        sdk_i = loaded.encode_image(images_to_array(self.test.images[:k]), show_progress_bar=False)
        sdk_t = loaded.encode_text(self.feats_test.captions, show_progress_bar=False, prompt="")
        metrics["sdk_min_cosine"] = float(min((ours_i * sdk_i).sum(1).min(), (ours_t * sdk_t).sum(1).min()))
        summary = {"metrics": metrics, "seconds_total": round(time.perf_counter() - self.t_start, 1),
                   "seconds_features": round(self.t_features, 1), "world_size": rank_world()[1],
                   "train_samples": len(self.train),
                   "train_classes": [self.classes[c] for c in np.unique(self.feats_train.labels)],
                   "wordings": {"train": "training/wordings/fashion_mnist_train.json" if self.sampler else None,
                                "heldout": "training/wordings/fashion_mnist_heldout.json",
                                "heldout_protocol": HELDOUT_PROTOCOL},
                   "config": to_dict(cfg), "model": str(out)}
        (Path(cfg.output) / "results.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(summary["metrics"], indent=2))
        return summary


def lit_style(cfg: ClipConfig) -> bool:
    """Frozen pretrained towers on Fashion-MNIST: features are extracted once and only the heads train."""
    return (cfg.data == "fashion-mnist" and not cfg.eval_data and cfg.freeze_image and cfg.freeze_text
            and not cfg.open_clip_model)


def run(cfg: ClipConfig) -> dict[str, Any]:
    if not lit_style(cfg):
        return run_end_to_end(cfg)
    setup = LiTSetup(cfg)
    loss_pair = make_loss(cfg, setup.model)

    def loss_fn(m: DualEncoder, batch) -> torch.Tensor:
        img, txt, labels = batch  # gathered over ranks with gradient: the loss of the whole global batch
        if cfg.feature_dropout:
            img = F.dropout(img, cfg.feature_dropout, training=m.training)
        return loss_pair(gather(m.encode_image(img, features=True)), gather(m.encode_text(txt, features=True)), labels)

    return fit_and_finish(Trainer(cfg, setup.model, loss_fn, setup.batches, setup.steps, setup.evaluate),
                          setup.finish)


def run_end_to_end(cfg: ClipConfig) -> dict[str, Any]:
    """Towers in the loop (trained unless frozen), images and captions preprocessed per batch."""
    from .pairs import EndToEnd

    setup = EndToEnd(cfg)
    loss_pair = make_loss(cfg, setup.model)
    trainer = Trainer(cfg, setup.model, lambda m, b: loss_pair(*setup.embed(m, b)), setup.batches, setup.steps,
                      setup.evaluate)
    return fit_and_finish(trainer, setup.finish)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    return recipe_main(ClipConfig, run, argv, prog)


if __name__ == "__main__":
    raise SystemExit(main())
