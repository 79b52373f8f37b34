"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), computed per split, float64.

As in the original code (and torch-fidelity with ``shuffle=False``): the N predictions are cut into ``splits``
contiguous parts [i N // splits, (i + 1) N // splits), p(y) is the mean prediction of a part, and the result is the
mean and the (ddof=0) standard deviation of the per-part scores. The original feeds the 1008-way softmax of the TF
FID Inception graph, logits = pool3 @ W without the bias (torch-fidelity's ``logits_unbiased``); IS values are
comparable only when computed from those logits.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ddpm_jax.evaluation.statistics import check_features


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _log_probs(logits_or_probs, from_logits: bool) -> np.ndarray:
    x = check_features(logits_or_probs, name="logits" if from_logits else "probabilities")
    if from_logits:
        return log_softmax(x)
    if (x < 0).any() or not np.allclose(x.sum(axis=1), 1.0, atol=1e-5):
        raise ValueError("probabilities must be non-negative with rows summing to 1 (pass from_logits=True for logits)")
    with np.errstate(divide="ignore"):
        return np.log(x)


def split_score(log_p: np.ndarray) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) for one part, p(y) the part's mean prediction; 0 log 0 counts as 0."""
    p = np.exp(log_p)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = log_p - np.log(p.mean(axis=0, keepdims=True))
    kl = (p * np.where(p > 0, log_ratio, 0.0)).sum(axis=1)
    return float(np.exp(kl.mean()))


def inception_score(logits_or_probs, splits: int = 10, from_logits: bool = True) -> Tuple[float, float]:
    """(mean, std) of the Inception Score over ``splits`` contiguous parts of the predictions [N, num_classes]."""
    log_p = _log_probs(logits_or_probs, from_logits)
    n = log_p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N = {n}], got {splits}")
    scores = np.array([split_score(log_p[i * n // splits:(i + 1) * n // splits]) for i in range(splits)])
    return float(scores.mean()), float(scores.std())
