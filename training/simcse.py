"""Sentence recipes: SimCSE (unsupervised and supervised) and ESimCSE on a text tower that ``embedhub.load`` gives.

    python -m training.simcse data=sentences.txt output=runs/simcse max_steps=500
    python -m training.simcse data=nli.csv output=runs/sup-simcse       # anchor,positive[,negative] rows
    python -m training.simcse esimcse data=sentences.txt output=runs/esimcse max_steps=500
    embedhub train simcse text_tower=all-MiniLM-L6-v2 data=sentences.txt max_steps=500
    embedhub train esimcse data=sentences.txt              # word repetition + momentum-encoder queue

Unsupervised SimCSE encodes each sentence twice in one forward with dropout on; the two views are each
other's positives, the batch's other sentences the negatives (``training.losses.SimCSELoss``). Supervised
SimCSE reads (anchor, positive[, hard negative]) rows: anchors, positives and negatives go through one
forward of the concatenated token lists (dropout on), each anchor's positive is its target and every other
positive and every hard negative of the batch a negative. ESimCSE (unsupervised only) takes as positive a
copy with a few tokens repeated (``word_repetition``) and appends a FIFO queue of momentum-encoder keys of
earlier batches to the negatives; its momentum encoder is copied from the tower after the pretrained weights
are loaded. The train-only MLP head (``mlp_head``) sits over the pooled features in every mode.

Data (``training.sentences``): a ``.txt`` file of sentences, or a ``.jsonl``/``.csv``/``.parquet`` file whose
first object, header or columns decide the mode: a ``text_column`` (default ``"text"``) makes sentences,
``anchor``, ``positive`` (and ``negative``) make supervised rows. Files are streamed through a shuffle buffer
ordered by (seed, epoch), cut into windows of ``length_buckets`` batches sorted by (anchor) length. Lines
that are not UTF-8 and rows with a null or empty value are skipped and counted in ``results.json``.
Over-long lines: every training sentence is truncated to ``max_length`` tokens, its final special token
kept (a sentence is first cut to max(4096, 128 x max_length) characters, which holds far more than
``max_length`` tokens, so a pathological line costs neither memory nor tokenising time); evaluation and
the saved model use the tower's own max length.

The run is cut into rounds of ``eval_every_steps`` optimiser steps (the trainer's "epochs" in
``log.jsonl``); STS-B dev Spearman is measured once before training (logged as step 0, the start of the
curve; a resumed run does not repeat it) and after each round, and the best weights of the evaluations
after training steps are kept (checkpoints carry them, the queue and the momentum encoder, so ``--resume``
reproduces the run). At the end the best weights give the STS-B test figure and ``output/model``, an
embedhub folder that sentence-transformers also loads, with ``results.json`` beside it (``"mode"``:
``"supervised"`` or ``"unsupervised"``) and ``sts_dev.png`` (the dev curve against the optimiser step,
start and best marked, the test figure in the title) in the run folder and the model folder, whose card
shows it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import embedhub
from embedhub import DataFileError, DataNotFoundError, EmbeddingModel
from embedhub.data import read_stsb
from embedhub.modules import Pooling, TransformersTextTower

from .config import ESimCSEConfig, SimCSEConfig, to_dict
from .data.order import epoch_generator
from .data.sentences import Row, SentenceFile
from .dist import gather, rank_world
from .errors import DataError, RecipeError
from .loop import Trainer, fit_and_finish, plot_eval_curve, resolve_device, start_run
from .losses import EmbeddingQueue, SimCSELoss, momentum_update, word_repetition
from .model import prompt_settings
from .recipe import recipe_main


def _anchor_length(row: Row) -> int:
    return len(row[0])


class SimCSEModel(nn.Module):
    """The text tower being trained, plus SimCSE's train-only MLP (Linear + tanh) when ``mlp``."""

    def __init__(self, tower: TransformersTextTower, width: int, mlp: bool):
        super().__init__()
        self.tower = tower
        self.dense = tower.head.without_normalize()
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.Tanh()) if mlp else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tower.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        x = self.dense(self.tower.pooling(hidden, attention_mask))
        return self.mlp(x) if self.mlp is not None else x


def read_sts(sts_dir: str, split: str) -> tuple[list[str], list[str], np.ndarray]:
    """STS-B's ``split`` (dev or test) as (first sentences, second sentences, gold scores 0..5), from ``sts_dir``
    (``""``: where :func:`embedhub.data.stsb_dir` finds it)."""
    try:
        rows = read_stsb(split, folder=sts_dir.strip() or None)
    except (DataNotFoundError, DataFileError) as exc:
        raise DataError(f"sts_dir={sts_dir!r}: {exc}") from exc
    return [r[0] for r in rows], [r[1] for r in rows], np.asarray([r[2] for r in rows])


@torch.no_grad()
def embed(tower: TransformersTextTower, pre: Any, texts: list[str], device: torch.device,
          batch: int = 128) -> torch.Tensor:
    """L2-normalised embeddings as the saved model gives them (tower in eval mode, its own tokenisation)."""
    was = tower.training
    tower.eval()
    out = []
    for i in range(0, len(texts), batch):
        enc = pre.collate(pre.tokenize(texts[i:i + batch]))
        out.append(tower(**{k: torch.from_numpy(v).to(device) for k, v in enc.items()}).float().cpu())
    tower.train(was)
    return nn.functional.normalize(torch.cat(out), dim=-1)


def sts_spearman(tower: TransformersTextTower, pre: Any, sts: tuple[list[str], list[str], np.ndarray],
                 device: torch.device) -> float:
    """Spearman correlation (x100) of the cosine similarities with the gold scores."""
    from scipy.stats import spearmanr

    a, b = embed(tower, pre, sts[0], device), embed(tower, pre, sts[1], device)
    return float(spearmanr((a * b).sum(1).numpy(), sts[2]).statistic * 100)


class SimCSESetup:
    """Tower, data stream, loss, evaluation, checkpointed state and the final model of one run."""

    def __init__(self, cfg: SimCSEConfig):
        self.t_start = start_run(cfg)
        self.cfg, self.esimcse = cfg, isinstance(cfg, ESimCSEConfig)
        self.device = resolve_device(cfg)
        self.rank, self.world = rank_world()
        # sentences are cut to max_chars characters before tokenising: far more than max_length tokens
        self.data = SentenceFile(cfg.data, text_column=cfg.text_column, max_chars=max(4096, 128 * cfg.max_length))
        self.supervised = self.data.supervised
        if self.supervised and self.esimcse:
            raise DataError(f"{cfg.data}: holds (anchor, positive) rows; ESimCSE is unsupervised (a file of "
                            f"sentences, or a {cfg.text_column!r} column): use the simcse recipe for pairs")
        n = len(self.data)
        what = "(anchor, positive) rows" if self.supervised else "sentences"
        if n == 0:
            raise DataError(f"{cfg.data}: no {what} (the file is empty or holds only blank/invalid lines)")
        if n < 2:
            raise DataError(f"{cfg.data}: 1 {what[:-1]}; the contrastive loss needs at least 2 (a batch of one "
                            f"{what[:-1]} has no negatives)")
        if cfg.batch_size % self.world:
            raise RecipeError(f"batch_size={cfg.batch_size} must be a multiple of the {self.world} ranks")
        self.dev = read_sts(cfg.sts_dir, "dev")
        self.test = read_sts(cfg.sts_dir, "test")
        sdk = embedhub.load(cfg.text_tower, device="cpu")
        tower = sdk.towers["text"] if "text" in sdk.towers else None
        if not isinstance(tower, TransformersTextTower):
            raise RecipeError(f"text_tower={cfg.text_tower!r}: expected a transformers text model (embedhub or "
                              f"sentence-transformers folder), got {type(tower).__name__}")
        if cfg.pooling != "auto":
            tower.pooling = Pooling([cfg.pooling])
        for module in tower.backbone.modules():
            if isinstance(module, nn.Dropout):
                module.p = cfg.dropout
        self.pre, self.sdk = sdk.preprocessors["text"], sdk
        self.special = set(self.pre.tokenizer.encode("").ids) | {self.pre.pad_id}
        width = tower.output_dim
        mlp = cfg.mlp_head == "true" or (cfg.mlp_head == "auto" and tower.pooling.modes == ["cls"])
        self.model = SimCSEModel(tower, width, mlp).to(self.device)
        self.start_test = sts_spearman(tower, self.pre, self.test, self.device)
        self.best: dict[str, Any] = {"score": -math.inf, "step": 0, "state": None}
        self.loss = SimCSELoss(cfg.temperature, rank=self.rank, world_size=self.world)
        # ESimCSE: the momentum encoder starts as a copy of the loaded (pretrained) tower
        self.momentum = copy.deepcopy(self.model).requires_grad_(False).eval() if self.esimcse else None
        self.queue = EmbeddingQueue(cfg.queue_size, width, device=self.device) if self.esimcse else None
        # steps: max_steps when set (over as many passes of the data as it takes, as transformers.Trainer's
        # max_steps), else all epochs; cut into rounds of eval_every_steps
        per_epoch = n // cfg.batch_size + (1 if n % cfg.batch_size >= 2 else 0)
        micro = cfg.max_steps * cfg.accum_steps if cfg.max_steps else cfg.epochs * per_epoch
        self.total_steps = math.ceil(micro / cfg.accum_steps)
        self.total_micro = self.total_steps * cfg.accum_steps
        self.round = cfg.eval_every_steps * cfg.accum_steps
        self.rounds = math.ceil(self.total_micro / self.round)
        self._stream: tuple[int, Iterator[list[Row]]] | None = None

    # ------------------------------------------------------------------ data
    def _all_batches(self) -> Iterator[list[Row]]:
        """Global batches over data epochs 0, 1, ... (each shuffled by (seed, epoch)), without end.

        The stream is cut into windows of ``length_buckets`` batches; a window is sorted by length (of the
        sentence, or of a supervised row's anchor) and cut into batches, which go out in a shuffled order.
        A batch then pads to nearly its own length, and its negatives have the positives' length, so length
        alone does not tell them apart."""
        bs, epoch = self.cfg.batch_size, 0
        window_size = bs * self.cfg.length_buckets
        while True:
            g = epoch_generator(self.cfg.seed + 7, epoch)
            window: list[Row] = []
            for s in self.data.stream(seed=self.cfg.seed, epoch=epoch):
                window.append(s)
                if len(window) == window_size:
                    yield from self._bucket(window, g)
                    window = []
            if window:
                yield from self._bucket(window, g)
            epoch += 1

    def _bucket(self, window: list[Row], g: torch.Generator) -> Iterator[list[Row]]:
        """A window's sentences (rows) as batches of similar length (by characters of the sentence or the
        anchor), in a seeded order; a last batch of one row is dropped (it has no negatives)."""
        if self.cfg.length_buckets > 1:
            window = sorted(window, key=_anchor_length if self.supervised else len)
        bs = self.cfg.batch_size
        batches = [window[i:i + bs] for i in range(0, len(window), bs)]
        if len(batches[-1]) < 2:
            batches.pop()
        n = len(batches)
        for i in range(n) if self.cfg.length_buckets == 1 else torch.randperm(n, generator=g).tolist():
            yield batches[i]

    def batches(self, rnd: int) -> Iterator[tuple[int, list[Row]]]:
        """(global micro-batch index, this rank's sentences or rows) for round ``rnd``."""
        start, stop = rnd * self.round, min((rnd + 1) * self.round, self.total_micro)
        if self._stream is None or self._stream[0] != start:
            it = self._all_batches()
            for _ in range(start):
                next(it)
            self._stream = (start, it)
        it = self._stream[1]
        for index in range(start, stop):
            batch = next(it)
            self._stream = (index + 1, it)
            k = len(batch) // self.world
            yield index, batch[self.rank * k:(self.rank + 1) * k]

    # ------------------------------------------------------------------ loss
    def _ids(self, texts: list[str]) -> list[list[int]]:
        return [self._truncate(ids) for ids in self.pre.tokenize(texts)]

    def _truncate(self, ids: list[int]) -> list[int]:
        m = self.cfg.max_length
        if len(ids) <= m:
            return ids
        return ids[:m - 1] + ids[-1:] if ids[-1] in self.special else ids[:m]

    def _forward(self, module: nn.Module, ids: list[list[int]]) -> torch.Tensor:
        enc = self.pre.collate(ids)
        return module(**{k: torch.from_numpy(v).to(self.device) for k, v in enc.items()})

    def loss_fn(self, model: SimCSEModel, batch: tuple[int, list[Row]]) -> torch.Tensor:
        """The batch's SimCSE (supervised or unsupervised) or ESimCSE loss."""
        index, texts = batch
        if self.supervised:
            return self._supervised_loss(model, texts)
        ids = self._ids(texts)
        b = len(ids)
        if not self.esimcse:
            out = self._forward(model, ids + ids)  # both dropout views in one forward
            return self.loss(out[:b], out[b:])
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index * 7919 + self.rank)
        pos = [self._truncate(word_repetition(x, dup_rate=self.cfg.dup_rate, special_ids=self.special, generator=g))
               for x in ids]
        out = self._forward(model, ids + pos)
        with torch.no_grad():
            momentum_update(self.momentum, model, self.cfg.momentum)
            keys = self._forward(self.momentum, ids)
        loss = self.loss(out[:b], out[b:], queue=self.queue.tensor())
        self.queue.push(gather(keys.detach()) if self.world > 1 else keys)
        return loss

    def _supervised_loss(self, model: SimCSEModel, rows: list[tuple[str, ...]]) -> torch.Tensor:
        """Anchors, positives (and hard negatives) through one forward of their concatenated token lists
        (dropout on); each anchor's target is its positive among all positives and hard negatives."""
        b = len(rows)
        views = self._forward(model, self._ids([text for column in zip(*rows) for text in column])).split(b)
        return self.loss(views[0], views[1], hard_negatives=views[2] if len(views) == 3 else None)

    # ------------------------------------------------------------------ evaluation and state
    def evaluate(self, model: SimCSEModel) -> dict[str, float]:
        """STS-B dev Spearman; after a training step, the best weights so far are kept (the start, step 0,
        is measured for the curve only: the recipe's model is a trained one)."""
        score = sts_spearman(model.tower, self.pre, self.dev, self.device)
        if self.trainer.step > 0 and score > self.best["score"]:
            self.best = {"score": score, "step": self.trainer.step,
                         "state": {k: v.detach().clone() for k, v in model.tower.state_dict().items()}}
        return {"sts_dev_spearman": score}

    def extra_state(self) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {"best_score": torch.tensor(self.best["score"], dtype=torch.float64),
                                          "best_step": torch.tensor(self.best["step"])}
        for k, v in (self.best["state"] or {}).items():
            state[f"best.{k}"] = v
        if self.esimcse:
            state["queue"] = self.queue.state_dict()["keys"]
            for k, v in self.momentum.state_dict().items():
                state[f"momentum.{k}"] = v
        return state

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        best = {k[5:]: v for k, v in state.items() if k.startswith("best.")}
        self.best = {"score": float(state["best_score"]), "step": int(state["best_step"]), "state": best or None}
        if self.esimcse:
            self.queue.load_state_dict({"size": self.cfg.queue_size, "dim": self.queue.dim, "keys": state["queue"]})
            self.momentum.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("momentum.")})

    def finish(self, metrics: dict[str, float]) -> dict[str, Any]:
        """Best weights -> STS-B test, the model folder (checked through the SDK), results.json."""
        cfg, tower = self.cfg, self.model.tower
        if self.best["state"] is not None:
            tower.load_state_dict(self.best["state"])
        tower.eval()
        metrics = {"sts_test_spearman": sts_spearman(tower, self.pre, self.test, self.device),
                   "sts_test_spearman_start": self.start_test, "sts_dev_spearman_best": self.best["score"],
                   "best_step": self.best["step"], **metrics}
        emb = EmbeddingModel({"text": tower.cpu()}, {"text": self.pre}, embed_dim=self.sdk.embed_dim,
                             name=Path(cfg.output).name or "simcse", format="embedhub",
                             **prompt_settings(cfg, self.sdk))
        out = emb.save_pretrained(Path(cfg.output) / "model")
        loaded = embedhub.load(out, device="cpu")
        texts = self.test[0][:64]
        ours = embed(tower, self.pre, texts, torch.device("cpu")).numpy()
        sdk = loaded.encode_text(texts, show_progress_bar=False, prompt="")
        sdk = sdk / np.linalg.norm(sdk, axis=1, keepdims=True)
        metrics["sdk_min_cosine"] = float((ours * sdk).sum(1).min())
        test = metrics["sts_test_spearman"]
        run_dir = Path(cfg.output)
        curves = plot_eval_curve(run_dir / "log.jsonl", [run_dir / "sts_dev.png", out / "sts_dev.png"],
                                 "sts_dev_spearman", label="STS-B dev Spearman", best_step=self.best["step"],
                                 title=f"{'ESimCSE' if self.esimcse else 'SimCSE'}: STS-B test Spearman, start "
                                       f"{self.start_test:.2f}, final {test:.2f}")
        summary = {"recipe": "esimcse" if self.esimcse else "simcse", "mode": self.data.mode, "metrics": metrics,
                   "seconds_total": round(time.perf_counter() - self.t_start, 1), "world_size": self.world,
                   "train_sentences": len(self.data), "columns": list(self.data.columns),
                   "invalid_utf8_lines": self.data.invalid, "empty_rows_skipped": self.data.empty,
                   "sentences_cut_to_max_chars": self.data.truncated, "steps": self.total_steps,
                   "config": to_dict(cfg), "model": str(out), "curve": str(curves[-1]) if curves else None}
        (Path(cfg.output) / "results.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(metrics, indent=2))
        return summary


def run(cfg: SimCSEConfig) -> dict[str, Any]:
    """Train with SimCSE (supervised for a file of (anchor, positive[, negative]) rows, unsupervised for
    sentences) or ESimCSE for an :class:`ESimCSEConfig`; write ``output/model``, its card and results."""
    setup = SimCSESetup(cfg)
    # the trainer's epochs are rounds of eval_every_steps optimiser steps, each followed by STS-B dev
    loop_cfg = dataclasses.replace(cfg, epochs=setup.rounds, eval_every=1)
    trainer = Trainer(loop_cfg, setup.model, setup.loss_fn, setup.batches, setup.round, setup.evaluate,
                      extra_state=setup.extra_state, load_extra_state=setup.load_extra_state, evaluate_at_start=True)
    trainer.total_steps = setup.total_steps
    setup.trainer = trainer
    return fit_and_finish(trainer, setup.finish, cfg=cfg)  # the card records the user's config


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m training.simcse [esimcse] [--config FILE] [key=value ...]`` (SimCSE unless ``esimcse``)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["simcse"], ["esimcse"]):
        return (main_esimcse if argv[0] == "esimcse" else main)(argv[1:], prog)
    return recipe_main(SimCSEConfig, run, argv, prog)


def main_esimcse(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``embedhub train esimcse ...``: the recipe with an :class:`ESimCSEConfig`."""
    return recipe_main(ESimCSEConfig, run, argv, prog or "python -m training.simcse esimcse")


if __name__ == "__main__":
    raise SystemExit(main())
