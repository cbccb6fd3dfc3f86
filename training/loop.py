"""The training loop, top to bottom: schedule, accumulation, AMP, clipping, step, logit-scale clamp,
evaluation, atomic checkpoints. ``resume`` continues from the last checkpoint and reproduces the
uninterrupted run: batch order depends only on (seed, epoch) and RNG state is checkpointed.

Checkpoints hold no pickle: tensors in ``state.safetensors``, the rest in ``state.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from embedhub.store import atomic_write

from . import dist
from .config import TrainConfig, to_dict
from .errors import ConfigValueError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on parameters with ndim < 2 (norms, biases, logit scales)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def resolve_device(cfg: TrainConfig) -> torch.device:
    """The config's device, checked against this machine (with its ``precision``): :class:`ConfigValueError`
    for a device that is not here or a precision it cannot run."""
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and (not torch.cuda.is_available()
                                      or (device.index or 0) >= torch.cuda.device_count()):
            raise ConfigValueError("device", cfg.device, f"auto or cpu: this machine has "
                                   f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA devices")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigValueError("device", cfg.device, "auto or cpu: MPS is not available on this machine")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigValueError("precision", cfg.precision, f"fp32 or bf16 on {device.type} (fp16 needs a CUDA device)")
    return device


def start_run(cfg: TrainConfig) -> float:
    """What every recipe does first: threads, seed, and (under torchrun) joining the process group
    before any collective. Returns the start time (``time.perf_counter``)."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dist.init_from_env(resolve_device(cfg))
    return time.perf_counter()


def fit_and_finish(trainer: Trainer, finish: Callable[[dict[str, float]], dict[str, Any]], *,
                   cfg: TrainConfig | None = None, recipe: str | None = None) -> dict[str, Any]:
    """``trainer.fit()``, then ``finish(metrics)`` (probe, model folder, results) and the model card (and
    the upload with ``push_to_hub``) on rank 0 of a run that completed; ``{}`` on other ranks and after
    ``stop_after_steps``.

    ``cfg``: the user's config, for the card and the upload, when the trainer runs on an adapted one (the
    sentence recipes' trainer counts evaluation rounds as epochs); default ``trainer.cfg``. ``recipe``:
    the recipe name on the card; default the name ``cfg``'s class is registered under."""
    from .config import RECIPE_CONFIGS
    from .publish import check_publishing, finish_publishing

    cfg = trainer.cfg if cfg is None else cfg
    check_publishing(cfg)  # a push_to_hub run without a token fails now, not after training
    metrics = trainer.fit()
    if not (trainer.main and trainer.finished):
        return {}
    recipe = recipe or next((k for k, v in RECIPE_CONFIGS.items() if type(cfg) is v), "clip")
    return finish_publishing(cfg, finish(metrics), recipe=recipe)


class Trainer:
    """Runs ``loss_fn(model, batch)`` over ``batches(epoch)`` with the config's optimiser and schedule.

    ``evaluate_at_start``: evaluate once before the first step of a fresh run and log it as step 0
    (``{"step": 0, "epoch": 0, "eval": ...}``), so the evaluation curve starts at the start; a resumed
    run does not log it again.

    >>> Trainer(cfg, model, loss_fn, batches, steps_per_epoch, evaluate).fit()   # doctest: +SKIP
    """

    def __init__(self, cfg: TrainConfig, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor],
                 batches: Callable[[int], Iterable[Any]], steps_per_epoch: int,
                 evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 on_epoch_start: Callable[[nn.Module, int], None] | None = None,
                 extra_state: Callable[[], dict[str, torch.Tensor]] | None = None,
                 load_extra_state: Callable[[dict[str, torch.Tensor]], None] | None = None,
                 evaluate_at_start: bool = False):
        self.cfg, self.model, self.loss_fn, self.batches = cfg, model, loss_fn, batches
        self.evaluate, self.on_epoch_start, self.evaluate_at_start = evaluate, on_epoch_start, evaluate_at_start
        # a recipe's own state that checkpoints carry (e.g. ProtoCLIP's episode prototypes)
        self.extra_state, self.load_extra_state = extra_state, load_extra_state
        self.device = resolve_device(cfg)
        self.rank, self.world = dist.init_from_env(self.device)
        self.main = self.rank == 0  # only rank 0 writes logs and checkpoints
        self.out = Path(cfg.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = cfg.epochs * math.ceil(steps_per_epoch / cfg.accum_steps)
        self.optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                           eps=cfg.eps)
        self.step = 0  # optimiser steps done
        self.finished = False  # all epochs done (False after stop_after_steps)
        self.epoch = 0
        self.batch_in_epoch = 0  # micro-batches done in the current epoch
        self.log_path = self.out / "log.jsonl"
        self.log_lines = 0  # records in log.jsonl; checkpoints carry it, so a resumed run drops what came after

    # ------------------------------------------------------------------ checkpoints
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in self.model.state_dict().items() if k in names}
        for mod_name, module in self.model.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                for b_name, buf in module.named_buffers(recurse=False):
                    state[f"{mod_name}.{b_name}" if mod_name else b_name] = buf
        return state

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        if not self.main:
            return
        tmp = self.out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in self._trainable_state().items()}
        opt = self.optimizer.state_dict()
        for idx, st in opt["state"].items():
            for name, value in st.items():
                tensors[f"optim.{idx}.{name}"] = torch.as_tensor(value).detach().contiguous().cpu()
        tensors["rng.torch"] = torch.get_rng_state()
        for k, v in (self.extra_state() if self.extra_state else {}).items():
            tensors[f"extra.{k}"] = v.detach().contiguous().cpu()
        save_file(tensors, str(tmp / "state.safetensors"))
        meta = {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "log_lines": self.log_lines, "world_size": self.world,
                "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]],
                "config": to_dict(self.cfg)}
        (tmp / "state.json").write_text(json.dumps(meta))
        final = self.out / "checkpoint"
        if final.exists():
            os.replace(final, self.out / "checkpoint.old")
        os.replace(tmp, final)
        shutil.rmtree(self.out / "checkpoint.old", ignore_errors=True)

    def load_checkpoint(self) -> bool:
        from safetensors.torch import load_file

        folder = self.out / "checkpoint"
        if not (folder / "state.json").is_file() and (self.out / "checkpoint.old" / "state.json").is_file():
            folder = self.out / "checkpoint.old"  # interrupted between the two renames of save_checkpoint
        if not (folder / "state.json").is_file():
            return False
        meta = json.loads((folder / "state.json").read_text())
        tensors = load_file(str(folder / "state.safetensors"))
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        missing = set(self._trainable_state()) - set(model_state)
        if missing:
            raise RuntimeError(f"checkpoint {folder} lacks {sorted(missing)[:3]}: was it made with another config?")
        self.model.load_state_dict(model_state, strict=False)
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        groups = [{**g, **saved} for g, saved in zip(opt["param_groups"], meta["param_groups"])]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        if self.load_extra_state is not None:
            self.load_extra_state({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
        self.step, self.epoch, self.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
        if self.main:
            self._truncate_log(meta)
        return True

    def _truncate_log(self, meta: dict[str, Any]) -> None:
        """Drop the log records written after the checkpoint (an interrupted run logged steps it will redo),
        atomically: the kept records go to a temporary file that replaces the log."""
        lines = self.log_path.read_text().splitlines() if self.log_path.is_file() else []
        if "log_lines" in meta:
            keep = lines[:meta["log_lines"]]
        else:  # a checkpoint from before log_lines was recorded: keep records up to its step and epoch
            keep = []
            for line in lines:
                try:
                    rec = json.loads(line)
                except ValueError:
                    break  # a line cut by the interruption
                if rec.get("step", 0) > meta["step"] or ("eval" in rec and rec.get("epoch", 0) > meta["epoch"]):
                    break
                keep.append(line)
        atomic_write(self.log_path, "".join(line + "\n" for line in keep))
        self.log_lines = len(keep)

    # ------------------------------------------------------------------ the loop
    def _log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.log_lines += 1

    def _global_loss(self, loss: torch.Tensor) -> float:
        """The loss to log: under torchrun the mean over ranks (a recipe whose ranks each score their own
        rows, as SimCSE's, logs the global batch's loss, as one process would), else ``loss`` itself."""
        if self.world == 1:
            return loss.item()
        import torch.distributed

        value = loss.detach().float().clone()
        torch.distributed.all_reduce(value)
        return value.item() / self.world

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        if self.cfg.precision == "fp16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def fit(self) -> dict[str, float]:
        from tqdm.auto import tqdm

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if cfg.resume and self.load_checkpoint():
            print(f"[train] resumed at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")
        else:
            if self.main:
                self.log_path.write_text("")
            if self.evaluate_at_start and self.evaluate is not None and self.main:
                self.model.eval()
                start = self.evaluate(self.model)
                self._log({"step": 0, "epoch": 0, "eval": start})
                print("[train] start: " + ", ".join(f"{k} {v:.4f}" for k, v in start.items()))
        scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" and self.device.type == "cuda" else None
        logit_max = math.log(cfg.max_logit_scale)
        metrics: dict[str, float] = {}
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", disable=not self.main)
        while self.epoch < cfg.epochs:
            if self.on_epoch_start is not None:
                self.on_epoch_start(self.model, self.epoch)
            self.model.train()
            t0, micro = time.perf_counter(), 0
            for i, batch in enumerate(self.batches(self.epoch)):
                if i < self.batch_in_epoch:
                    continue  # done before the interruption
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(self.step, self.total_steps, cfg.warmup_steps)
                with self._autocast():
                    loss = self.loss_fn(self.model, batch) / cfg.accum_steps
                (scaler.scale(loss) if scaler else loss).backward()
                micro += 1
                self.batch_in_epoch = i + 1
                last = self.batch_in_epoch == self.steps_per_epoch
                if micro % cfg.accum_steps and not last:
                    continue
                if scaler:
                    scaler.unscale_(self.optimizer)
                dist.average_gradients(self.model)  # no-op in a single process
                grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip) if cfg.grad_clip else None
                if scaler:
                    scaler.step(self.optimizer)
                    scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    for name, p in self.model.named_parameters():
                        if name.endswith("logit_scale"):
                            p.clamp_(0, logit_max)
                self.step += 1
                bar.update(1)
                record = {"step": self.step, "epoch": self.epoch, "loss": self._global_loss(loss) * cfg.accum_steps,
                          "lr": self.optimizer.param_groups[0]["lr"],
                          "grad_norm": float(grad_norm) if grad_norm is not None else None}
                scale = getattr(self.model, "logit_scale", None)
                if scale is not None:
                    record["logit_scale"] = scale.detach().exp().item()
                self._log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.stop_after_steps and self.step >= cfg.stop_after_steps:
                    self.save_checkpoint()
                    bar.close()
                    print(f"[train] stopped after step {self.step} (stop_after_steps); continue with --resume")
                    return {}
            self.epoch += 1
            self.batch_in_epoch = 0
            if self.evaluate is not None and self.main and (self.epoch % cfg.eval_every == 0
                                                             or self.epoch == cfg.epochs):
                self.model.eval()
                metrics = self.evaluate(self.model)
                self._log({"step": self.step, "epoch": self.epoch, "eval": metrics,
                           "epoch_seconds": round(time.perf_counter() - t0, 2)})
                print(f"[train] epoch {self.epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            self.save_checkpoint()
        bar.close()
        self.finished = True
        if self.main:
            plot_log(self.log_path, self.out / "training.png")
        return metrics


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def read_log(log_path: Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl``."""
    return [json.loads(x) for x in Path(log_path).read_text().splitlines() if x.strip()]


def plot_log(log_path: Path, png: Path) -> Path | None:
    """Loss and evaluation metrics against the optimiser step, as a PNG (needs matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None
    records = read_log(log_path)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8)
    axes[0].set(xlabel="optimiser step", ylabel="training loss", title="loss")
    for key in sorted({k for r in evals for k in r["eval"]}):
        axes[1].plot([r["step"] for r in evals], [r["eval"].get(key) for r in evals], marker="o", label=key)
    axes[1].set(xlabel="optimiser step", title="evaluation")
    if evals:
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def plot_eval_curve(log_path: Path, pngs: Iterable[Path], key: str, *, label: str, title: str,
                    best_step: int | None = None) -> list[Path]:
    """One evaluation metric of ``log.jsonl`` against the optimiser step, with the start (step 0) and
    ``best_step`` marked, written to each of ``pngs``; ``[]`` without matplotlib or evaluations."""
    plt = _pyplot()
    points = [(r["step"], r["eval"][key]) for r in read_log(log_path) if key in r.get("eval", {})]
    if plt is None or not points:
        return []
    steps, values = zip(*points)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(steps, values, marker="o", ms=3, lw=1, label=label)
    if steps[0] == 0:
        ax.plot([0], [values[0]], "s", color="grey", ms=7, label=f"start: {values[0]:.2f}")
    if best_step is not None and best_step in steps:
        best = values[steps.index(best_step)]
        ax.plot([best_step], [best], "*", color="tab:red", ms=13, label=f"best: {best:.2f} (step {best_step})")
    ax.set(xlabel="optimiser step", ylabel=label, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = []
    for png in pngs:
        fig.savefig(png, dpi=110)
        out.append(Path(png))
    plt.close(fig)
    return out
