"""Generate the golden files of tests/test_metrics.py: FID, KID and IS from their reference implementations.

- ``metrics_reference.npz``: pytorch-fid's ``calculate_frechet_distance`` on the ``np.mean``/``np.cov`` statistics of
  fixed feature sets (full rank; rank-deficient, 100 samples in 256-d; large mean offset), the same with its
  singular-product fallback branch forced; torch-fidelity's ``kid_features_to_metric`` and
  ``isc_features_to_metric``; a direct double-loop MMD^2 written here. Versions are stored as ``meta_*``.
- ``pytorch_fid_stats_{a,b}.npz``: written by pytorch-fid's own ``save_fid_stats`` (``np.savez_compressed``) from
  PNG images, with a small seeded convolution standing in for its InceptionV3 (no weights offline), and their FID
  through ``calculate_fid_given_paths``.

Reference: pytorch-fid 0.3.0, torch-fidelity 0.4.0, torch 2.14.1, scipy 1.17.1, numpy 2.4.6 (CPU). Regenerate with

    python -m venv venv-ref && venv-ref/bin/pip install torch torchvision pytorch-fid scipy
    venv-ref/bin/pip install --no-deps torch-fidelity tqdm
    venv-ref/bin/python tests/golden/make_metrics_golden.py

Feature sets are not stored: :func:`features` (twinned in the test) rebuilds them from a ``RandomState`` seed with
elementwise arithmetic only, so they are bit-identical on any machine; the file keeps fingerprints to check that.
"""
import os
import tempfile
import types

import numpy as np
import pytorch_fid
import scipy
import torch
import torch_fidelity
from PIL import Image
from pytorch_fid import fid_score
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric

HERE = os.path.dirname(os.path.abspath(__file__))
FD_CASES = {  # name: (seed, n, dim, offset) for the first set, then the second
    "full_rank": ((0, 300, 64, 0.0), (1, 500, 64, 0.3)),
    "rank_deficient": ((2, 100, 256, 0.0), (3, 100, 256, 0.1)),
    "large_mean": ((4, 400, 32, 1e4), (5, 400, 32, 1e4 + 0.5)),
}
KID_CASE = dict(num_subsets=10, subset_size=100, seed=0)
IS_CASE = dict(seed=6, n=500, classes=1008, splits=10)


def features(seed, n, dim, offset=0.0):
    """Correlated, anisotropic features from elementwise arithmetic on RandomState normals (twin in the test)."""
    z = np.random.RandomState(seed).standard_normal((n, dim))
    return offset + (z + 0.5 * np.roll(z, 1, axis=1)) * np.linspace(0.5, 2.0, dim)


def stats(x):
    return np.mean(x, axis=0), np.cov(x, rowvar=False)


def forced_fallback_fd(mu1, s1, mu2, s2):
    """pytorch-fid with its first ``sqrtm`` reported non-finite, so it takes the eps * I offset branch."""
    real, calls = fid_score.linalg, []

    def sqrtm(a, disp=True):
        calls.append(1)
        if len(calls) == 1:
            return np.full_like(a, np.nan), 0.0
        return real.sqrtm(a)

    fid_score.linalg = types.SimpleNamespace(sqrtm=sqrtm)
    try:
        return fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    finally:
        fid_score.linalg = real


def direct_mmd2(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3 by explicit double loops over all pairs."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (xx + yy) / (m * (m - 1)) - 2.0 * xy / (m * m)


def fd_goldens(out):
    for name, (a, b) in FD_CASES.items():
        x, y = features(*a), features(*b)
        out[f"{name}_fingerprint"] = np.array([x.sum(), y.sum(), x[0, 0], y[-1, -1]])
        out[f"{name}_fd"] = fid_score.calculate_frechet_distance(*stats(x), *stats(y))
    out["rank_deficient_fallback_fd"] = forced_fallback_fd(*stats(features(*FD_CASES["rank_deficient"][0])),
                                                           *stats(features(*FD_CASES["rank_deficient"][1])))


def kid_is_goldens(out):
    x, y = features(*FD_CASES["full_rank"][0]), features(*FD_CASES["full_rank"][1])
    kid = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=KID_CASE["num_subsets"],
                                 kid_subset_size=KID_CASE["subset_size"], rng_seed=KID_CASE["seed"], verbose=False)
    out["kid_torch_fidelity"] = np.array([kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]])
    out["kid_direct_60"] = direct_mmd2(x[:60], y[:60])
    logits = 3.0 * features(IS_CASE["seed"], IS_CASE["n"], IS_CASE["classes"])
    isc = isc_features_to_metric(torch.from_numpy(logits), splits=IS_CASE["splits"], shuffle=False)
    out["is_torch_fidelity"] = np.array([isc["inception_score_mean"], isc["inception_score_std"]])


class SeededConvFeatures(torch.nn.Module):
    """Stand-in for pytorch-fid's InceptionV3 in ``save_fid_stats``: one seeded 3x3 conv, 16 channels, then tanh."""

    BLOCK_INDEX_BY_DIM = {16: 0}

    def __init__(self, output_blocks):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)
        with torch.no_grad():
            g = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.copy_(torch.randn(16, generator=g))

    def forward(self, x):
        return [torch.tanh(self.conv(x))]


def stats_file_goldens(out):
    real = fid_score.InceptionV3
    fid_score.InceptionV3 = SeededConvFeatures
    try:
        paths = []
        with tempfile.TemporaryDirectory() as tmp:
            for tag, seed in (("a", 10), ("b", 11)):
                folder = os.path.join(tmp, tag)
                os.makedirs(folder)
                pixels = np.random.RandomState(seed).randint(0, 256, (40, 8, 8, 3), dtype=np.uint8)
                for i, image in enumerate(pixels):
                    Image.fromarray(image).save(os.path.join(folder, f"{i:03d}.png"))
                path = os.path.join(HERE, f"pytorch_fid_stats_{tag}.npz")
                if os.path.exists(path):
                    os.remove(path)
                fid_score.save_fid_stats([folder, path], batch_size=16, device="cpu", dims=16, num_workers=0)
                paths.append(path)
        out["stats_file_fid"] = fid_score.calculate_fid_given_paths(paths, batch_size=16, device="cpu", dims=16)
    finally:
        fid_score.InceptionV3 = real


def main():
    out = {"meta_pytorch_fid_version": pytorch_fid.__version__,
           "meta_torch_fidelity_version": torch_fidelity.__version__, "meta_torch_version": torch.__version__,
           "meta_scipy_version": scipy.__version__, "meta_numpy_version": np.__version__}
    fd_goldens(out)
    kid_is_goldens(out)
    stats_file_goldens(out)
    np.savez(os.path.join(HERE, "metrics_reference.npz"), **{k: np.asarray(v) for k, v in out.items()})
    for k, v in out.items():
        print(k, v)


if __name__ == "__main__":
    main()
