"""Bootstrap intervals of sample-quality numbers against what theory says they must be."""
import numpy as np
import pytest

from ddpm_jax.evaluation.bootstrap import (bootstrap, format_interval, percentile_interval,
                                           sample_quality_intervals, separated)
from ddpm_jax.evaluation.statistics import feature_statistics


def test_accuracy_interval_matches_the_binomial_standard_error():
    """For a proportion the bootstrap interval is p +- 1.96 sqrt(p (1 - p) / n) to within sampling error."""
    rng = np.random.default_rng(0)
    correct = (rng.random(400) < 0.7).astype(float)
    p = correct.mean()
    lo, hi = sample_quality_intervals(rng.normal(size=(400, 4)), feature_statistics(rng.normal(size=(500, 4))),
                                      correct=correct, num_boot=1000)["accuracy"]
    half = 1.96 * np.sqrt(p * (1 - p) / 400)
    assert lo < p < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)


def test_fd_interval_shrinks_like_one_over_sqrt_n_and_holds_the_estimate():
    rng = np.random.default_rng(1)
    ref = feature_statistics(rng.normal(size=(5000, 3)))
    widths = {}
    for n in (200, 800):
        feats = rng.normal(loc=0.5, size=(n, 3))
        lo, hi = sample_quality_intervals(feats, ref, num_boot=300, seed=n)["fd"]
        from ddpm_jax.evaluation.fid import frechet_distance

        point = frechet_distance(*feature_statistics(feats), *ref)
        assert lo < point < hi
        widths[n] = hi - lo
    assert 1.4 < widths[200] / widths[800] < 2.9  # sqrt(4) = 2


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_intervals_separate_different_models_but_not_reruns_of_one():
    rng = np.random.default_rng(2)
    ref_feats = rng.normal(size=(2000, 3))
    ref = feature_statistics(ref_feats)
    a = sample_quality_intervals(rng.normal(loc=0.3, size=(500, 3)), ref, ref_feats, num_boot=100, seed=1)
    a2 = sample_quality_intervals(rng.normal(loc=0.3, size=(500, 3)), ref, ref_feats, num_boot=100, seed=2)
    b = sample_quality_intervals(rng.normal(loc=0.8, size=(500, 3)), ref, ref_feats, num_boot=100, seed=3)
    assert separated(a["fd"], b["fd"]) and separated(a["kid"], b["kid"])
    assert not separated(a["fd"], a2["fd"])


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap(lambda idx: 0.0, 1)
    with pytest.raises(ValueError, match="finite"):
        percentile_interval(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="one 0/1 entry per sample"):
        sample_quality_intervals(np.zeros((5, 2)) + np.arange(5)[:, None], (np.zeros(2), np.eye(2)),
                                 correct=np.ones(4))
    assert format_interval(1.23456, (1.1, 1.4)) == "1.235 [1.100, 1.400]"


def test_interval_holds_the_estimate_where_small_n_bias_is_large():
    """64-d features, N = 180: the Fréchet distance of a resample is biased far above the estimate; the centred
    interval still holds it (the plain percentile interval does not)."""
    from ddpm_jax.evaluation.fid import frechet_distance

    rng = np.random.default_rng(3)
    ref = feature_statistics(rng.normal(size=(4000, 64)))
    feats = rng.normal(size=(180, 64))
    point = frechet_distance(*feature_statistics(feats), *ref)
    fd = lambda idx: frechet_distance(*feature_statistics(feats[idx]), *ref)
    lo, hi = sample_quality_intervals(feats, ref, num_boot=100)["fd"]
    assert lo <= point <= hi
    plain = bootstrap(fd, 180, 100, centered=False)
    assert plain[0] > point  # why the interval is centred
