"""Streaming float64 mean and covariance of feature vectors, the Gaussian summary that FID compares.

Batches are merged with the pairwise update of Chan, Golub & LeVeque (1979): each batch is centred on its own mean
before its scatter matrix is formed, so features with a large common offset keep their precision, and 50k x 2048
features never have to sit in one array. The covariance is unbiased (ddof=1), as ``np.cov(rowvar=False)`` in
pytorch-fid.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def check_features(features, dim: Optional[int] = None, name: str = "features") -> np.ndarray:
    """``features`` as a float64 array [n, dim]; ValueError if it is not 2-D, has the wrong width or is not finite."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [num_samples, dim], got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have dim {x.shape[1]}, expected {dim}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name} contain NaN or Inf ({bad} of {x.shape[0]} rows)")
    return x


class RunningStatistics:
    """Mean and unbiased covariance of all rows passed to :meth:`update`, kept as (count, mean, scatter) in float64."""

    def __init__(self, dim: int):
        if int(dim) < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self._mean = np.zeros(self.dim, np.float64)
        self._scatter = np.zeros((self.dim, self.dim), np.float64)

    @classmethod
    def from_moments(cls, count: int, mean, scatter) -> "RunningStatistics":
        """Rebuild from :attr:`moments` (e.g. gathered from other processes)."""
        mean = np.asarray(mean, np.float64)
        stats = cls(mean.shape[0])
        stats._combine(int(count), mean, np.asarray(scatter, np.float64))
        return stats

    @property
    def moments(self) -> Tuple[int, np.ndarray, np.ndarray]:
        """(count, mean, scatter) with scatter = sum_i (x_i - mean)(x_i - mean)^T."""
        return self.count, self._mean.copy(), self._scatter.copy()

    def update(self, features) -> "RunningStatistics":
        """Add a batch [n, dim] of features."""
        x = check_features(features, self.dim)
        if x.shape[0] == 0:
            return self
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        self._combine(x.shape[0], batch_mean, centred.T @ centred)
        return self

    def merge(self, other: "RunningStatistics") -> "RunningStatistics":
        """Add the rows summarised by ``other`` (partial statistics of another shard or process)."""
        if not isinstance(other, RunningStatistics):
            raise TypeError(f"can only merge RunningStatistics, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dim {other.dim} into dim {self.dim}")
        self._combine(other.count, other._mean, other._scatter)
        return self

    def _combine(self, count: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        """Chan et al. (1979) eq. 2.1: M = M_a + M_b + delta delta^T n_a n_b / n, delta = mean_b - mean_a."""
        if mean.shape != (self.dim,) or scatter.shape != (self.dim, self.dim):
            raise ValueError(f"moments have shapes {mean.shape}, {scatter.shape}; expected ({self.dim},) and "
                             f"({self.dim}, {self.dim})")
        if count == 0:
            return
        total = self.count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self.count * count / total)
        self.count = total

    @property
    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("mean of no samples: call update() first")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), symmetric to the last bit."""
        if self.count < 2:
            raise ValueError(f"covariance needs at least 2 samples, have {self.count}")
        cov = self._scatter / (self.count - 1)
        return (cov + cov.T) / 2


def feature_statistics(features) -> Tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of features [n, dim]: the mean and the unbiased covariance, float64."""
    x = check_features(features)
    stats = RunningStatistics(x.shape[1]).update(x)
    return stats.mean, stats.covariance
