"""Image-text pairs for the end-to-end recipes: Fashion-MNIST captioned by templates, a captions file
(CSV/JSONL) beside its images, or webdataset shards streamed from disk, each as a :class:`TrainPairs` whose
batch order depends only on (seed, epoch), and the :class:`EvalPairs` a run is evaluated on.

>>> pairs = ListPairs([Sample("a", None, "a cat"), Sample("b", None, "a dog")])
>>> [captions for _, captions in pairs.batches(epoch=0, batch_size=2, seed=0)] == [
...     captions for _, captions in pairs.batches(epoch=0, batch_size=2, seed=0)]
True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedhub.jobs import tar_keys

from ..errors import ConfigValueError, DataError, MissingDataError
from .images import LabelledImages, Sample, captioned_folder, expand_shards, fashion_mnist, webdataset
from .order import epoch_generator, epoch_order


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


__all__ = ["EvalPairs", "LabelledPairs", "ListPairs", "ShardPairs", "TrainPairs", "open_pairs"]
