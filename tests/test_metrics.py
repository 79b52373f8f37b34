"""Metric math: streaming statistics, Fréchet distance, KID, Inception Score, stats files.

References come from tests/golden/make_metrics_golden.py (pytorch-fid 0.3.0, torch-fidelity 0.4.0, scipy 1.17.1).
"""
import json
import os
import warnings

import numpy as np
import pytest
from scipy import linalg

from ddpm_jax import evaluation as E

HERE = os.path.join(os.path.dirname(__file__), "golden")
GOLDEN = np.load(os.path.join(HERE, "metrics_reference.npz"))
FD_CASES = {
    "full_rank": ((0, 300, 64, 0.0), (1, 500, 64, 0.3)),
    "rank_deficient": ((2, 100, 256, 0.0), (3, 100, 256, 0.1)),
    "large_mean": ((4, 400, 32, 1e4), (5, 400, 32, 1e4 + 0.5)),
}


def features(seed, n, dim, offset=0.0):
    """Twin of make_metrics_golden.features."""
    z = np.random.RandomState(seed).standard_normal((n, dim))
    return offset + (z + 0.5 * np.roll(z, 1, axis=1)) * np.linspace(0.5, 2.0, dim)


def random_psd(rng, dim, rank):
    a = rng.standard_normal((dim, rank))
    return a @ a.T / rank


def test_golden_file_names_reference_versions():
    for key in ("pytorch_fid", "torch_fidelity", "scipy", "numpy"):
        assert str(GOLDEN[f"meta_{key}_version"])


def test_running_statistics_match_numpy_for_uneven_batches():
    x = features(7, 203, 16, offset=3.0)
    stats = E.RunningStatistics(16)
    for lo, hi in [(0, 1), (1, 50), (50, 50), (50, 177), (177, 203)]:
        stats.update(x[lo:hi])
    assert stats.count == 203
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-13)


def test_merged_partial_statistics_equal_one_pass():
    x = features(8, 150, 12)
    parts = [E.RunningStatistics(12).update(x[:40]), E.RunningStatistics(12).update(x[40:41]),
             E.RunningStatistics(12).update(x[41:])]
    merged = E.RunningStatistics(12)
    for p in parts:
        merged.merge(E.RunningStatistics.from_moments(*p.moments))
    mu, sigma = E.feature_statistics(x)
    np.testing.assert_allclose(merged.mean, mu, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(merged.covariance, sigma, rtol=1e-12, atol=1e-13)


def test_covariance_keeps_precision_with_large_mean_offset():
    """A raw sum of x x^T loses everything here: E[x x^T] ~ 1e16 against variances ~ 1 at eps 2e-16."""
    noise = features(9, 1000, 8)
    stats = E.RunningStatistics(8)
    for batch in np.array_split(noise + 1e8, 7):
        stats.update(batch)
    np.testing.assert_allclose(stats.covariance, np.cov(noise, rowvar=False), rtol=1e-6, atol=1e-6)


def test_covariance_is_exactly_symmetric():
    sigma = E.feature_statistics(features(10, 90, 33))[1]
    np.testing.assert_array_equal(sigma, sigma.T)


@pytest.mark.parametrize("bad,message", [(np.ones(5), "2-D"), (np.ones((2, 3, 4)), "2-D"),
                                         (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or Inf"),
                                         (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or Inf")])
def test_feature_statistics_rejects_bad_features(bad, message):
    with pytest.raises(ValueError, match=message):
        E.feature_statistics(bad)


def test_running_statistics_reject_wrong_dim():
    stats = E.RunningStatistics(4).update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="expected 4"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="dim"):
        stats.merge(E.RunningStatistics(5))


@pytest.mark.parametrize("case", sorted(FD_CASES))
def test_frechet_distance_matches_pytorch_fid(case):
    (a, b) = FD_CASES[case]
    x, y = features(*a), features(*b)
    np.testing.assert_array_equal([x.sum(), y.sum(), x[0, 0], y[-1, -1]], GOLDEN[f"{case}_fingerprint"])
    fd = E.frechet_distance(*E.feature_statistics(x), *E.feature_statistics(y))
    np.testing.assert_allclose(fd, GOLDEN[f"{case}_fd"], rtol=1e-6)


def test_frechet_distance_eps_matches_pytorch_fid_singular_fallback():
    (a, b) = FD_CASES["rank_deficient"]
    stats = E.feature_statistics(features(*a)) + E.feature_statistics(features(*b))
    fallback = float(GOLDEN["rank_deficient_fallback_fd"])
    np.testing.assert_allclose(E.frechet_distance(*stats, eps=1e-6), fallback, rtol=1e-9)
    assert abs(E.frechet_distance(*stats) - fallback) > 1e-4  # the offset matters: eps=0 is a different number


@pytest.mark.parametrize("seed", range(4))
def test_trace_sqrt_product_matches_scipy_sqrtm(seed):
    rng = np.random.default_rng(seed)
    s1, s2 = random_psd(rng, 40, 80), random_psd(rng, 40, 60)
    np.testing.assert_allclose(E.trace_sqrt_product(s1, s2), np.trace(linalg.sqrtm(s1 @ s2)).real, rtol=1e-10)


def test_trace_sqrt_product_of_singular_covariances_equals_nuclear_norm():
    """With S1 = A^T A, S2 = B^T B (A, B of rank 60 < 128): Tr (S1 S2)^{1/2} = ||A B^T||_* exactly."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((60, 128)) / 8, rng.standard_normal((60, 128)) / 8
    nuclear = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    np.testing.assert_allclose(E.trace_sqrt_product(a.T @ a, b.T @ b), nuclear, rtol=1e-12)


def test_frechet_distance_of_diagonal_gaussians_has_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2, v1, v2 = rng.normal(size=10), rng.normal(size=10), rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    np.testing.assert_allclose(E.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)), expected, rtol=1e-12)


def test_frechet_distance_is_zero_on_itself_and_symmetric():
    s1, s2 = E.feature_statistics(features(11, 120, 64)), E.feature_statistics(features(12, 90, 64, 0.2))
    assert abs(E.frechet_distance(*s1, *s1)) < 1e-10
    np.testing.assert_allclose(E.frechet_distance(*s1, *s2), E.frechet_distance(*s2, *s1), rtol=1e-12)


def test_frechet_distance_rejects_mismatched_dims():
    with pytest.raises(ValueError, match="dims differ"):
        E.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_sqrtm_psd_squares_back_to_matrix():
    m = random_psd(np.random.default_rng(2), 30, 10)
    root = E.sqrtm_psd(m)
    np.testing.assert_allclose(root @ root, m, atol=1e-12)
    np.testing.assert_array_equal(root, root.T)


def test_check_sample_count_warns_only_below_dim():
    with pytest.warns(UserWarning, match="singular"):
        E.check_sample_count(100, 2048)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E.check_sample_count(2048, 2048)


def test_kid_matches_torch_fidelity():
    x, y = features(*FD_CASES["full_rank"][0]), features(*FD_CASES["full_rank"][1])
    kid = E.kernel_inception_distance(x, y, num_subsets=10, subset_size=100, seed=0)
    np.testing.assert_allclose(kid, GOLDEN["kid_torch_fidelity"], rtol=1e-10)


def test_kid_one_full_subset_matches_direct_double_loop_and_warns_on_clipping():
    x, y = features(*FD_CASES["full_rank"][0])[:60], features(*FD_CASES["full_rank"][1])[:60]
    with pytest.warns(UserWarning, match="using 60"):
        mean, std = E.kernel_inception_distance(x, y, num_subsets=1, subset_size=1000)
    np.testing.assert_allclose(mean, GOLDEN["kid_direct_60"], rtol=1e-10)
    assert std == 0.0


def test_kid_is_near_zero_for_samples_of_one_distribution():
    x, y, shifted = features(13, 1000, 16), features(14, 1000, 16), features(15, 1000, 16, offset=0.3)
    same, _ = E.kernel_inception_distance(x, y, num_subsets=20, subset_size=500)
    apart, _ = E.kernel_inception_distance(x, shifted, num_subsets=20, subset_size=500)
    assert abs(same) < 0.05 and apart > 0.2


def test_inception_score_matches_torch_fidelity():
    logits = 3.0 * features(6, 500, 1008)
    np.testing.assert_allclose(E.inception_score(logits, splits=10), GOLDEN["is_torch_fidelity"], rtol=1e-10)


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = E.inception_score(np.full((100, 1008), 1 / 1008), splits=10, from_logits=False)
    np.testing.assert_allclose([mean, std], [1.0, 0.0], atol=1e-12)


def test_inception_score_of_confident_distinct_classes_is_class_count():
    probs = np.eye(7)[np.arange(70) % 7]
    mean, std = E.inception_score(probs, splits=10, from_logits=False)
    np.testing.assert_allclose([mean, std], [7.0, 0.0], atol=1e-12)


def test_inception_score_from_logits_equals_from_probabilities():
    logits = features(16, 60, 10)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(E.inception_score(logits, splits=3),
                               E.inception_score(probs, splits=3, from_logits=False), rtol=1e-12)


def test_inception_score_rejects_non_probabilities():
    with pytest.raises(ValueError, match="rows summing to 1"):
        E.inception_score(np.full((20, 5), 0.5), splits=2, from_logits=False)


def test_stats_file_round_trip_with_manifest_and_sidecar(tmp_path):
    mu, sigma = E.feature_statistics(features(17, 50, 6))
    path = str(tmp_path / "ref.npz")
    E.save_stats(path, mu, sigma, feature_space="classifier:digits", image_count=np.int64(50), resize_mode="none")
    mu2, sigma2, manifest = E.load_stats(path)
    np.testing.assert_array_equal(mu2, mu)
    np.testing.assert_array_equal(sigma2, sigma)
    assert manifest["feature_space"] == "classifier:digits" and manifest["image_count"] == 50
    assert manifest["created_by"].startswith("ddpm_jax")
    with open(path + ".json") as f:
        assert json.load(f) == manifest
    with np.load(path) as f:  # what pytorch-fid does with a stats file
        np.testing.assert_array_equal(f["mu"][:], mu)


def test_reads_pytorch_fid_written_stats_files():
    (mu1, s1, m1), (mu2, s2, m2) = (E.load_stats(os.path.join(HERE, f"pytorch_fid_stats_{t}.npz")) for t in "ab")
    assert m1 == {} and m2 == {} and mu1.shape == (16,)
    np.testing.assert_allclose(E.frechet_distance(mu1, s1, mu2, s2), GOLDEN["stats_file_fid"], rtol=1e-6)


def test_load_stats_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        E.load_stats(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="no sigma"):
        E.load_stats(str(tmp_path / "nosigma.npz"))
    np.savez(tmp_path / "shape.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        E.load_stats(str(tmp_path / "shape.npz"))
    with pytest.raises(ValueError, match=".npz"):
        E.save_stats(str(tmp_path / "stats.np"), np.zeros(2), np.eye(2))


def test_load_stats_rejects_edited_sidecar(tmp_path):
    path = str(tmp_path / "ref.npz")
    E.save_stats(path, np.zeros(2), np.eye(2), feature_space="inception_pool3")
    with open(path + ".json", "w") as f:
        json.dump({"feature_space": "classifier:digits"}, f)
    with pytest.raises(ValueError, match="differ"):
        E.load_stats(path)


@pytest.mark.parametrize("key,a,b", [("feature_space", "inception_pool3", "classifier:digits"),
                                     ("weights_sha256", "ab12", "cd34")])
def test_check_compatible_rejects_different_feature_spaces_or_weights(key, a, b):
    with pytest.raises(ValueError, match=key):
        E.check_compatible({key: a}, {key: b})


def test_check_compatible_warns_on_resize_mode_and_accepts_equal_manifests():
    base = {"feature_space": "inception_pool3", "weights_sha256": "ab12", "resize_mode": "tf1_bilinear"}
    with pytest.warns(UserWarning, match="resize"):
        E.check_compatible(base, {**base, "resize_mode": "pil_bicubic"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        E.check_compatible(base, dict(base))
