"""Evaluation of image-text models: zero-shot classification with template ensembles, image<->text
retrieval R@1/5/10, and a linear probe on the image embeddings."""

from __future__ import annotations

import numpy as np
import torch

from embedhub.modules import average_templates, template_prompts


def class_embeddings(encode_text, classes: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
    """Per class, the renormalised mean of its prompts' embeddings (CLIP's template ensemble)."""
    return average_templates(encode_text(template_prompts(classes, templates)), len(classes))


def zero_shot_accuracy(image_emb: torch.Tensor, labels: np.ndarray, class_emb: torch.Tensor) -> float:
    pred = (image_emb @ class_emb.T).argmax(1).cpu().numpy()
    return float((pred == labels).mean())


def retrieval_recall(image_emb: torch.Tensor, text_emb: torch.Tensor, image_keys: np.ndarray,
                     text_keys: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """R@k both ways; a hit is a retrieved item whose key (the caption, or the pair id) matches."""
    sim = image_emb @ text_emb.T
    out = {}
    for name, s, q_keys, d_keys in (("i2t", sim, image_keys, text_keys), ("t2i", sim.T, text_keys, image_keys)):
        top = s.topk(min(max(ks), s.shape[1]), dim=1).indices.cpu().numpy()
        hits = d_keys[top] == q_keys[:, None]
        for k in ks:
            out[f"{name}_R@{k}"] = float(hits[:, :k].any(1).mean())
    return out


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of a logistic-regression probe (scikit-learn) on frozen embeddings."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300, C=1.0)
    clf.fit(train_x, train_y)
    return float(clf.score(test_x, test_y))
