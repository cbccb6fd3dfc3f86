"""The end of a recipe run: a model card with the run's measured figures, and the upload to the Hub
(``push_to_hub=REPO_ID``), after the final evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import embedhub
from embedhub.hub import Result, push_folder, resolve_token, write_card

from .config import TrainConfig, to_dict

#: the Hub dataset of Fashion-MNIST
FASHION_MNIST = ("Fashion-MNIST", "zalando-datasets/fashion_mnist")
#: how the metrics of a run's results.json go into the card's model-index: key -> (task, metric, name)
METRICS: dict[str, tuple[str, str, str]] = {
    "zeroshot_top1": ("zero-shot-image-classification", "accuracy", "zero-shot top-1"),
    "zeroshot_heldout_top1": ("zero-shot-image-classification", "accuracy", "zero-shot top-1, held-out classes"),
    "zeroshot_seen_top1": ("zero-shot-image-classification", "accuracy", "zero-shot top-1, seen classes"),
    "zeroshot_unseen_wording_top1": ("zero-shot-image-classification", "accuracy",
                                     "zero-shot top-1, held-out wording (names and templates)"),
    "zeroshot_unseen_names_top1": ("zero-shot-image-classification", "accuracy",
                                   "zero-shot top-1, held-out names in the model's templates"),
    "linear_probe_top1": ("image-classification", "accuracy", "linear probe top-1"),
    "sts_test_spearman": ("sentence-similarity", "spearman", "STS-B test Spearman"),
    **{f"{d}_R@{k}": ("image-text-retrieval" if d == "i2t" else "text-image-retrieval", f"recall@{k}",
                      f"{'image->text' if d == 'i2t' else 'text->image'} R@{k}")
       for d in ("i2t", "t2i") for k in (1, 5, 10)},
}


def dataset_of(cfg: TrainConfig) -> tuple[str, str]:
    """(name, Hub dataset id or local name) of the data a run was evaluated on."""
    data = getattr(cfg, "eval_data", "") or cfg.data
    if data == "fashion-mnist":
        return FASHION_MNIST
    name = Path(data.removeprefix("wds:")).name or data
    return name, name


def card_results(cfg: TrainConfig, metrics: dict[str, float]) -> list[Result]:
    """Every figure of ``metrics`` that :data:`METRICS` knows, as card results."""
    data = dataset_of(cfg)
    out = []
    for key, value in metrics.items():
        if key in METRICS:
            task, metric, label = METRICS[key]
            name, dataset = ("STS Benchmark", "mteb/stsbenchmark-sts") if task == "sentence-similarity" else data
            out.append(Result(task, name, dataset, metric, float(value), metric_name=label))
    return out


def check_publishing(cfg: TrainConfig) -> None:
    """Before training: a ``push_to_hub`` run needs a token now, not after hours of training."""
    if cfg.push_to_hub:
        resolve_token(None)


def finish_publishing(cfg: TrainConfig, summary: dict[str, Any], *, recipe: str) -> dict[str, Any]:
    """Write the model card into the run's model folder; upload it when ``cfg.push_to_hub`` is set.

    The card's curve is ``summary["curve"]`` when the recipe drew one (the sentence recipes' STS-B dev
    curve), else the trainer's ``training.png``."""
    if not summary or "model" not in summary:
        return summary
    folder = Path(summary["model"])
    model = embedhub.load(folder, device="cpu")
    plot = Path(summary["curve"]) if summary.get("curve") else Path(cfg.output) / "training.png"
    base = [cfg.text_tower] if not getattr(cfg, "open_clip_model", "") else None
    name, dataset = dataset_of(cfg)
    write_card(folder, model_id=cfg.push_to_hub or str(folder), modalities=model.modalities,
               embed_dim=model.embed_dim, base_model=_hub_ids(base), datasets=[dataset] if "/" in dataset else (),
               tags=[recipe], results=card_results(cfg, summary.get("metrics", {})), training_config=to_dict(cfg),
               plot=plot if plot.is_file() else None,
               description=f"A {recipe} model trained with embedhub's `{recipe}` recipe on {name}.")
    if cfg.push_to_hub:
        summary["hub_commit"] = push_folder(folder, cfg.push_to_hub, private=cfg.hub_private,
                                            commit_message=f"{recipe} run: {_headline(summary)}")
        print(f"pushed {folder} to https://huggingface.co/{cfg.push_to_hub}")
    return summary


def _hub_ids(names: list[str] | None) -> list[str] | None:
    """Base models as Hub ids (aliases resolved; local folders are left out)."""
    if not names:
        return None
    out = []
    for n in names:
        if n in embedhub.list_models():
            from embedhub import model_entry

            out.append(model_entry(n).repo_id)
        elif n.count("/") == 1 and not Path(n).exists():
            out.append(n.split("@")[0])
    return out or None


def _headline(summary: dict[str, Any]) -> str:
    m = summary.get("metrics", {})
    figures = [f"{k} {v:.4f}" for k, v in m.items() if k in METRICS][:3]
    return ", ".join(figures) or "final evaluation done"
