"""Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"), float64.

KID is the unbiased estimate of MMD^2 with the cubic polynomial kernel k(x, y) = (x . y / d + 1)^3, averaged over
random equal-size subsets of the two feature sets. Subsets are drawn as torch-fidelity draws them
(``np.random.RandomState(seed).choice(n, m, replace=False)``, first set then second, per subset), so with the same
seed the two give the same numbers.
"""
from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np

from ddpm_jax.evaluation.statistics import check_features


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (x . y / d + coef0)^degree for all pairs of rows; [n, d] x [m, d] -> [n, m]."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012) as in the KID paper: within-set sums over i != j, cross over all pairs."""
    m = k_xx.shape[0]
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(features1, features2, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> Tuple[float, float]:
    """(mean, std) over ``num_subsets`` of the unbiased polynomial-kernel MMD^2 between random subsets.

    ``subset_size`` larger than either set is clipped to the smaller set's size, with a UserWarning.
    """
    x = check_features(features1, name="features1")
    y = check_features(features2, x.shape[1], name="features2")
    n1, n2 = x.shape[0], y.shape[0]
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    m = int(subset_size)
    if m > min(n1, n2):
        warnings.warn(f"KID subset_size {m} exceeds the number of samples ({n1}, {n2}); using {min(n1, n2)}",
                      UserWarning, stacklevel=2)
        m = min(n1, n2)
    if m < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples, got {m}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(n1, m, replace=False)]
        b = y[rng.choice(n2, m, replace=False)]
        mmds[i] = mmd2_unbiased(polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b))
    return float(mmds.mean()), float(mmds.std())
