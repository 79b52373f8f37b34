"""CLIP score: how well images match their prompts, from CLIP image and text embeddings.

Two documented conventions, both over N (image, text) pairs with c_i = cos(E_I_i, E_T_i):

- ``clip_score`` = (1/N) sum_i 100 * max(c_i, 0): the per-pair definition torchmetrics documents
  (``CLIPScore(I, C) = max(100 * cos(E_I, E_C), 0)``), averaged. torchmetrics' code instead returns
  max((1/N) sum_i 100 c_i, 0) (clamp after the mean; ``clip_score_torchmetrics``); the two agree whenever every
  c_i >= 0, as is usual for real CLIP models.
- ``clipscore_hessel`` = (1/N) sum_i w * max(c_i, 0) with w = 2.5: CLIP-S of Hessel et al. 2021 ("CLIPScore: a
  reference-free evaluation metric for image captioning"), where w stretches the typical cosine range to ~[0, 1].

Cosines are computed in float64 after normalising each embedding (so unnormalised inputs are fine).
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

HESSEL_W = 2.5


def pair_cosines(image_emb, text_emb) -> np.ndarray:
    """c_i = <a_i, b_i> / (||a_i|| ||b_i||) for matching rows, float64 [N]."""
    a, b = np.asarray(image_emb, np.float64), np.asarray(text_emb, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"image and text embeddings must both be [N, E], got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("CLIP score of zero pairs")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("embeddings must be finite and non-zero")
    return np.sum(a * b, axis=1) / norms


def clip_score(image_emb, text_emb) -> float:
    """(1/N) sum_i 100 * max(cos_i, 0), in [0, 100] (torchmetrics' documented per-pair definition, averaged)."""
    return float(np.mean(100.0 * np.maximum(pair_cosines(image_emb, text_emb), 0.0)))


def clip_score_torchmetrics(image_emb, text_emb) -> float:
    """max((1/N) sum_i 100 * cos_i, 0): what torchmetrics' ``clip_score`` code returns (clamp after the mean)."""
    return float(max(np.mean(100.0 * pair_cosines(image_emb, text_emb)), 0.0))


def clipscore_hessel(image_emb, text_emb, w: float = HESSEL_W) -> float:
    """CLIP-S (Hessel et al. 2021): (1/N) sum_i w * max(cos_i, 0), w = 2.5."""
    return float(np.mean(w * np.maximum(pair_cosines(image_emb, text_emb), 0.0)))


def clip_scores(model, images, texts: Sequence[str], batch_size: int = 256) -> Dict[str, float]:
    """Both scores for images [N, H, W, C] in [-1, 1] and their N prompts, through any model with
    ``embed_images`` / ``embed_texts`` (:class:`~ddpm_jax.models.clip.DomainCLIP`, ``PretrainedCLIP``)."""
    texts = list(texts)
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images for {len(texts)} texts")
    image_emb = np.concatenate([model.embed_images(images[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    text_emb = np.concatenate([model.embed_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    return {"clip_score": clip_score(image_emb, text_emb), "clipscore_hessel": clipscore_hessel(image_emb, text_emb)}
