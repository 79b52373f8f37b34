"""What the checkpoint-comparing experiments share: load a trained workdir, generate timed samples with chosen sampler
settings, and score images against the training data in one fixed feature space.

Scores: Frechet classifier distance (FCD) and KID in the penultimate layer of a classifier trained on the same data
(``ddpm_jax.evaluation.quality.score_images``), the classifier's accuracy on the requested class for conditional
samples, and FID through the FID Inception network when its weights are given. Used by sampler_steps.py,
vae_vs_diffusion.py and cascade.py; ``score_with_intervals`` and the ``*_ci`` record keys by every driver.

Uncertainty (issue 16): every FCD, KID and class accuracy comes with a bootstrap 95% interval over the generated
samples, stored beside the number as ``<key>_ci = [lo, hi]`` with ``num_scored`` (the N it was computed from) and
``num_boot``; tables print ``value [lo, hi]`` (:func:`with_interval`), and a record written before intervals existed
prints the value with ``[n/a]`` (:data:`NO_INTERVAL_NOTE`). Two numbers differ at this N only where their intervals
do not overlap (:func:`resolved`). FID gets no interval: a 2048-d bootstrap costs minutes per cell on a CPU.

How (:func:`bootstrap_intervals`): the samples' features are resampled with replacement ``num_boot`` times (the
reference statistics held fixed) and each score recomputed on the same resample, as in
``ddpm_jax.evaluation.bootstrap.sample_quality_intervals``. Its plain percentile interval is kept as
``<key>_ci_percentile``, but it is not what the tables show: FD and KID are biased upward at finite N, and a
resample with duplicates is "smaller" still, so the replicates sit above the estimate. Measured on the digits
classifier's 64-d features, 180 real test images: FCD 0.926, percentile interval [1.17, 4.73], which does not hold
the estimate. ``<key>_ci`` is therefore the percentile interval re-centred on the estimate, estimate + (2.5th,
97.5th percentile - median of the replicates): the bootstrap gives the spread, not the location. It is an interval
for the N-sample score (its finite-N bias included), so compare models at equal N, as every table here does. For
class accuracy the two intervals nearly coincide (clipped to [0, 1]; FD's lower end to 0). KID replicates use one
fixed reference subset and kernel matrices computed once (the subset-averaged KID of ``score_images`` stays the
estimate), which makes 200 resamples take about a second for 500 samples instead of a minute.

Checked on real digits (disjoint 250-image subsets of the training split against a fixed other part): the 95% range
of FCD over 40 subsets was about 1.5x narrower than one subset's interval, so the intervals err on the wide side.
A class accuracy of exactly 1 (or 0) gets the degenerate interval [1, 1]: every resample agrees; the rule of three
bounds it at 1 - 3/N (0.994 at N = 500).
"""
from __future__ import annotations

import os
import platform
import time
import warnings
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from threadpoolctl import threadpool_limits

from ddpm_jax.data import load_source, resize_nearest
from ddpm_jax.evaluation.bootstrap import percentile_interval, separated
from ddpm_jax.evaluation.features import InceptionFeatures
from ddpm_jax.evaluation.fid import frechet_distance
from ddpm_jax.evaluation.kid import polynomial_kernel
from ddpm_jax.evaluation.quality import classifier_features_from_workdir, scores_of_features
from ddpm_jax.evaluation.statistics import feature_statistics
from ddpm_jax.models.inception import load_inception_params
from ddpm_jax.tasks import load_trained


def machine_description() -> str:
    """CPU model, core count, JAX version and the device the computation ran on (stated in every results table)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    dev = jax.devices()[0]
    return f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {dev.platform} ({dev.device_kind})"


def require_workdir(workdir: str, what: str, train_command: str) -> None:
    """A workdir that was never trained is a one-line error that gives the command to train it."""
    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise FileNotFoundError(f"{workdir} holds no trained {what}; train it first (this experiment never trains for "
                                f"hours on its own): {train_command}")


def load_run(workdir: str, use_ema: bool = True):
    """(Run, params, checkpoint step) of the newest checkpoint of ``workdir``, built from its recorded config
    (read-only: nothing in the workdir is written)."""
    trained = load_trained(workdir, use_ema=use_ema)
    return trained.run, trained.params, trained.step


def sampling_config(run, **overrides) -> ml_collections.ConfigDict:
    """The workdir's own sampling settings (x0 clipping, guidance scale) with ``overrides`` (sampler, num_steps, ...)."""
    s = run.config.sampling.copy_and_resolve_references()
    for key, value in overrides.items():
        s[key] = value
    return s


def timed_diffusion_samples(run, params, sampling, num: int, seed: int, batch_size: int) -> Dict:
    """``num`` samples with ``sampling`` (labels 0..K-1 in turn for conditional models), every batch from
    fold_in(key(seed), b): the same initial noise whatever the sampler. The whole loop is compiled once before timing:
    ``compile_s`` is that first compilation, ``sample_s`` the loop alone (latents stay undecoded)."""
    if run.text is not None:
        raise ValueError("text-to-image workdirs are compared by experiments/text_encoder_vs_unet.py")
    sampling = sampling.copy_and_resolve_references()
    sampling.batch_size = batch_size
    bs = min(batch_size, num)  # the batch run.task.generate samples in
    cond, _, _ = run.task.sample_cond(run, bs)  # one batch of the conditioning generate() hands the sampler
    t0 = time.perf_counter()
    compiled = run.task.make_sample_fn(run, sampling).lower(
        params, jnp.zeros((bs,) + tuple(run.image_shape)), jax.random.key(0),
        {k: jnp.asarray(v) for k, v in cond.items()}).compile()
    compile_s = time.perf_counter() - t0
    # the eager key, noise and conditioning ops of generate() compile on their first use: do that outside the timing
    run.task.generate(run, params, jax.random.key(seed), bs, sampling_config=sampling,
                      sample_fn=lambda p, x_T, k, c: x_T)
    t0 = time.perf_counter()
    x, labels, _ = run.task.generate(run, params, jax.random.key(seed), num, sampling_config=sampling,
                                     sample_fn=compiled)
    sample_s = time.perf_counter() - t0
    return {"x": x, "labels": labels, "conditional": bool(run.model.num_classes), "compile_s": compile_s,
            "sample_s": sample_s, "images_per_sec": num / sample_s}


NUM_BOOT = 200  # bootstrap replicates per interval (percentile 95%: the 5th and 195th of 200 sorted values)
INTERVAL_KEYS = ("fcd", "kid_classifier", "class_accuracy")
NO_INTERVAL = "[n/a]"
NO_INTERVAL_NOTE = ("[n/a]: no interval, the run predates bootstrap intervals (issue 16); treat differences smaller "
                    "than the typical half-width at the same N as not established.")


def bootstrap_intervals(feats: np.ndarray, ref_stats, ref_features: Optional[np.ndarray] = None,
                        correct: Optional[np.ndarray] = None, estimates: Optional[dict] = None,
                        num_boot: int = NUM_BOOT, seed: int = 0, kid_reference: int = 2000) -> Dict:
    """Bootstrap 95% intervals over the samples of FD (``fcd``), KID (``kid_classifier``, with ``ref_features``) and
    the accuracy of the per-sample 0/1 ``correct`` (``class_accuracy``): {key: (lo, hi)} re-centred on
    ``estimates[key]``, and {key + "_percentile": (lo, hi)}, the plain percentile interval (module docstring)."""
    feats = np.asarray(feats, np.float64)
    n = len(feats)
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {n}")
    rng = np.random.default_rng(seed)
    resamples = rng.integers(0, n, (num_boot, n))  # the same resamples for every score (one joint bootstrap)
    stats = {}
    with warnings.catch_warnings(), threadpool_limits(1):  # one BLAS thread: 64x64 algebra, ~50x faster when shared
        warnings.simplefilter("ignore")  # small-N covariance warnings: the interval is the point of the exercise
        stats["fcd"] = [frechet_distance(*feature_statistics(feats[idx]), *ref_stats) for idx in resamples]
        if ref_features is not None:
            ref = np.asarray(ref_features, np.float64)
            ref = ref[np.random.default_rng(seed + 1).permutation(len(ref))[:kid_reference]]
            m = len(ref)
            k_xx, k_xy = polynomial_kernel(feats, feats), polynomial_kernel(feats, ref)
            k_yy = polynomial_kernel(ref, ref)
            within_ref = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
            row_xy = k_xy.sum(axis=1)
            diag = np.diag(k_xx)

            def kid(idx):  # unbiased MMD^2 of the resample (i != j by position) against the fixed reference subset
                within = (k_xx[np.ix_(idx, idx)].sum() - diag[idx].sum()) / (n * (n - 1))
                return within + within_ref - 2.0 * row_xy[idx].sum() / (n * m)

            stats["kid_classifier"] = [kid(idx) for idx in resamples]
    if correct is not None:
        correct = np.asarray(correct, np.float64)
        if correct.shape != (n,):
            raise ValueError(f"correct must have one 0/1 entry per sample ({n}), got {correct.shape}")
        stats["class_accuracy"] = [float(correct[idx].mean()) for idx in resamples]
    out = {}
    for key, values in stats.items():
        values = np.asarray(values, np.float64)
        lo, hi = percentile_interval(values)
        out[key + "_percentile"] = (lo, hi)
        center = (estimates or {}).get(key)
        if center is not None:
            median = float(np.median(values))
            lo, hi = center + lo - median, center + hi - median
            if key == "class_accuracy":
                lo, hi = max(0.0, lo), min(1.0, hi)
            elif key == "fcd":
                lo = max(0.0, lo)  # a Frechet distance is >= 0
        out[key] = (float(lo), float(hi))
    return out


def score_with_intervals(features, images: np.ndarray, ref_stats, ref_features: np.ndarray,
                         labels: Optional[np.ndarray] = None, num_boot: int = NUM_BOOT,
                         seed: int = 0) -> Dict:
    """``score_images``'s {fcd, kid_classifier, [class_accuracy]} of uint8 ``images`` plus their bootstrap 95%
    intervals over the samples (``fcd_ci``, ...: [lo, hi]; ``*_ci_percentile``), ``num_scored`` and ``num_boot``.
    The features are extracted once and shared by the estimates and the bootstrap."""
    feats, logits = features(images)
    feats, logits = np.asarray(feats), np.asarray(logits)
    out = {k: float(v) for k, v in scores_of_features(feats, logits, ref_stats, ref_features, labels).items()}
    correct = None if labels is None else (np.argmax(logits, axis=1) == np.asarray(labels)).astype(np.float64)
    intervals = bootstrap_intervals(feats, ref_stats, ref_features, correct, out, num_boot, seed)
    for key in INTERVAL_KEYS:
        if key in out and key in intervals:
            out[f"{key}_ci"] = list(intervals[key])
            out[f"{key}_ci_percentile"] = list(intervals[key + "_percentile"])
    out.update(num_scored=int(len(feats)), num_boot=int(num_boot))
    return out


def interval(record: Optional[dict], key: str) -> Optional[tuple]:
    """The stored [lo, hi] of ``record[key]``, or None (no record, or one written before intervals)."""
    ci = (record or {}).get(f"{key}_ci")
    return None if ci is None else (float(ci[0]), float(ci[1]))


def with_interval(record: dict, key: str, fmt: str = "{:.3f}", scale: float = 1.0) -> str:
    """``value [lo, hi]`` of ``record[key]`` (times ``scale``) for tables; ``value [n/a]`` without a stored
    interval; "-" when the record has no such value."""
    if record is None or record.get(key) is None:
        return "-"
    value = fmt.format(record[key] * scale)
    ci = interval(record, key)
    if ci is None:
        return f"{value} {NO_INTERVAL}"
    return f"{value} [{fmt.format(ci[0] * scale)}, {fmt.format(ci[1] * scale)}]"


def error_bar(record: dict, key: str, scale: float = 1.0) -> list:
    """[below, above] distances from the value to its interval's ends for matplotlib's ``yerr`` (0, 0 without)."""
    ci = interval(record, key)
    if ci is None:
        return [0.0, 0.0]
    v = record[key]
    return [max(0.0, (v - ci[0]) * scale), max(0.0, (ci[1] - v) * scale)]


def yerr(records: list, key: str, scale: float = 1.0) -> Optional[np.ndarray]:
    """matplotlib ``yerr`` ([2, n]) of several records, or None when none has an interval (an old results file)."""
    if not any(interval(r, key) is not None for r in records):
        return None
    return np.array([error_bar(r, key, scale) for r in records]).T


def resolved(a: dict, b: dict, key: str) -> Optional[bool]:
    """Whether ``a[key]`` and ``b[key]`` differ at this sample size (their 95% intervals do not overlap); None when
    either has no interval."""
    ia, ib = interval(a, key), interval(b, key)
    return None if ia is None or ib is None else separated(ia, ib)


def format_scores(scores: dict) -> str:
    """One log line of a score record: ``fcd 1.23 [1.1, 1.4] | ...`` (numbers only)."""
    parts = []
    for k, v in scores.items():
        if "_ci" in k or k in ("num_scored", "num_boot") or not isinstance(v, (int, float)):
            continue
        ci = interval(scores, k)
        parts.append(f"{k} {v:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    return " | ".join(parts)


def samples_note(record: Optional[dict]) -> str:
    """How the intervals were computed, for table captions (empty when the record has none)."""
    if not record or "num_scored" not in record:
        return ""
    return (f"[lo, hi]: bootstrap 95% interval over the {record['num_scored']:,} scored samples ({record['num_boot']} "
            "resamples, reference statistics fixed; percentile interval re-centred on the estimate, see "
            "experiments/scoring.py); two values differ at this N only where their intervals do not overlap.")


class Scorer:
    """Scores uint8 images against the training split of one dataset in a fixed classifier feature space (and the
    FID Inception space when ``inception_weights`` is given); reference features are computed once."""

    def __init__(self, classifier_workdir: str, data_name: str, data_dir: str, image_size: int,
                 num_reference: int = 0, inception_weights: str = "", fid_reference: int = 10000):
        self.features = classifier_features_from_workdir(classifier_workdir)
        if self.features.image_size != image_size:
            raise ValueError(f"the classifier in {classifier_workdir} takes {self.features.image_size}px images, the "
                             f"models make {image_size}px: train one with --config.data.image_size={image_size}")
        self.data_name, self.data_dir, self.image_size = data_name, data_dir, image_size
        train = load_source(data_name, "train", data_dir or None)
        reference = train.images[:num_reference or None]
        self.num_reference = len(reference)
        self.ref_features, _ = self.features(reference)
        self.ref_stats = feature_statistics(self.ref_features)
        self.inception = None
        if inception_weights:
            self.inception = InceptionFeatures(load_inception_params(inception_weights))
            real = resize_nearest(train.images[:fid_reference], image_size)
            self.inception_stats = feature_statistics(self.inception(real)[0])
            self.fid_reference = len(real)

    def describe(self) -> str:
        text = (f"{self.data_name}/train ({self.num_reference:,} images) in the feature space of "
                f"{self.features.name} (weights sha256 {self.features.weights_sha256[:12]})")
        if self.inception is not None:
            text += f"; FID against the first {self.fid_reference:,} training images"
        return text

    def __call__(self, images: np.ndarray, labels: Optional[np.ndarray] = None) -> Dict:
        """{fcd, kid_classifier, [class_accuracy], [fid]} of uint8 images [N, H, W, C], with the bootstrap 95%
        intervals of the first three (``fcd_ci``, ..., ``num_scored``, ``num_boot``: :func:`score_with_intervals`)."""
        out = score_with_intervals(self.features, images, self.ref_stats, self.ref_features, labels)
        if self.inception is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # N < 2048: singular covariance, comparable at equal N
                out["fid"] = float(frechet_distance(*feature_statistics(self.inception(images)[0]),
                                                    *self.inception_stats))
        return out

    def real_floor(self, num: int, split: str = "test", with_labels: bool = False) -> Dict:
        """The same scores for ``num`` real held-out images: what a perfect model would get at this sample count."""
        held_out = load_source(self.data_name, split, self.data_dir or None)
        images = resize_nearest(held_out.images[:num], self.image_size)  # padded as in training; stays uint8
        labels = held_out.labels[:num] if with_labels and held_out.labels is not None else None
        return {**self(images, labels), "count": len(images), "split": split}

