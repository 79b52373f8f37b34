"""Fréchet distance between Gaussians fitted to features (FID: Heusel et al. 2017), in float64 without ``sqrtm``.

d^2 = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2}). The last trace is the sum of square roots of the
eigenvalues of S1 S2, which are those of the symmetric PSD matrix S1^{1/2} S2 S1^{1/2} (AB and BA share their
non-zero eigenvalues), i.e. the sum of singular values of S1^{1/2} S2^{1/2}: two ``eigh`` and one SVD give it, also
when S1 or S2 is singular.

pytorch-fid (``calculate_frechet_distance``) uses ``scipy.linalg.sqrtm(S1 S2)`` and, only if that result is not
finite, recomputes the cross term as Tr((S1 + eps I)(S2 + eps I))^{1/2} (the traces of S1 and S2 keep no offset).
With scipy 1.17 its ``sqrtm`` stays finite on rank-deficient products (N < dim), so pytorch-fid then returns the
exact distance, and so does :func:`frechet_distance` with ``eps=0``; ``eps > 0`` reproduces its fallback branch.
"""
from __future__ import annotations

import warnings

import numpy as np


def check_sample_count(num_samples: int, dim: int) -> None:
    """UserWarning when num_samples < dim: the sample covariance is then singular and FID biased and unstable."""
    if num_samples < dim:
        warnings.warn(f"covariance is singular with N = {num_samples} < {dim} = dim; FID is biased and unstable "
                      "(use at least as many samples as feature dimensions, 50k for reported FID)", UserWarning,
                      stacklevel=2)


def check_gaussian(mu, sigma, name: str):
    """float64 (mu [d], sigma [d, d]), or a one-line ValueError naming ``name`` (shapes, NaN/Inf)."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu [d] and sigma [d, d], got shapes {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mu or sigma contains NaN or Inf")
    return mu, sigma


def sqrtm_psd(matrix) -> np.ndarray:
    """The symmetric PSD square root of a symmetric PSD matrix, by ``eigh``.

    Eigenvalues below dim * eps * max are rounding noise around 0 (a singular covariance, N < dim) and become 0;
    their square roots, ~1e-8 each, would otherwise add up in the trace.
    """
    m = np.asarray(matrix, np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"sqrtm_psd needs a square matrix, got shape {m.shape}")
    w, v = np.linalg.eigh((m + m.T) / 2)
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(w.max(initial=0.0)), 0.0)
    root = (v * np.sqrt(np.where(w > tol, w, 0.0))) @ v.T
    return (root + root.T) / 2


def trace_sqrt_product(sigma1, sigma2) -> float:
    """Tr((S1 S2)^{1/2}) for symmetric PSD S1, S2: the nuclear norm of S1^{1/2} S2^{1/2}.

    The singular values of S1^{1/2} S2^{1/2} are the square roots of the eigenvalues of S1^{1/2} S2 S1^{1/2}, and
    an SVD gives them with absolute error ~eps, where square roots of eigenvalues would have ~sqrt(eps).
    """
    return float(np.linalg.svd(sqrtm_psd(sigma1) @ sqrtm_psd(sigma2), compute_uv=False).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 0.0) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64.

    ``eps`` is pytorch-fid's offset, added to both covariances inside the cross term only: 0 gives the exact
    distance (what pytorch-fid returns whenever its ``sqrtm`` succeeds); 1e-6 reproduces its fallback branch.
    """
    mu1, sigma1 = check_gaussian(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = check_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dims differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    offset = eps * np.eye(mu1.shape[0])
    diff = mu1 - mu2
    cross = trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
