"""Tiny sentence-transformers models built and saved by sentence-transformers itself, for parity tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def build_st(
    backbone: Path,
    folder: Path,
    *,
    pooling: str | tuple[str, ...] = "mean",
    include_prompt: bool = True,
    normalize: bool = False,
    dense: int | None = None,
    max_seq_length: int = 64,
    **options: Any,
) -> Path:
    """Save into ``folder`` a SentenceTransformer of the tiny BERT at ``backbone`` with the given pooling, an
    optional Dense layer (``dense`` output features) and Normalize module; ``options`` are the
    SentenceTransformer arguments (prompts, default_prompt_name, similarity_fn_name, truncate_dim)."""
    import sentence_transformers as st
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling

    modules: list[Any] = [Transformer(str(backbone), max_seq_length=max_seq_length),
                          Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
    if dense is not None:
        torch.manual_seed(3)
        width = 32 * (len(pooling) if isinstance(pooling, tuple) else 1)
        modules.append(Dense(width, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    peer = st.SentenceTransformer(modules=modules, device="cpu", **options)
    peer.save(str(folder))
    return folder


def peer(folder: Path, **options: Any):
    """``SentenceTransformer(folder)`` on the CPU: what the owning library loads from the folder."""
    import sentence_transformers as st

    return st.SentenceTransformer(str(folder), device="cpu", **options)


def assert_close(ours: Any, theirs: Any, *, tol: float = 1e-5) -> None:
    """Row-wise cosine within ``tol`` of 1, and the same norms (within 1e-4 relative): the same vectors."""
    a = np.asarray(ours, dtype=np.float64)
    b = theirs.detach().cpu().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs, dtype=np.float64)
    b = b.astype(np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
    cos = (a2 * b2).sum(1) / np.maximum(na * nb, 1e-30)
    assert cos.min() > 1 - tol, cos.min()
    np.testing.assert_allclose(na, nb, rtol=1e-4, atol=1e-6)
