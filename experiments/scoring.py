"""What the checkpoint-comparing experiments share: load a trained workdir, generate timed samples with chosen sampler
settings, and score images against the training data in one fixed feature space.

Scores: Frechet classifier distance (FCD) and KID in the penultimate layer of a classifier trained on the same data
(``ddpm_jax.evaluation.quality.score_images``), the classifier's accuracy on the requested class for conditional
samples, and FID through the FID Inception network when its weights are given. Used by sampler_steps.py and
vae_vs_diffusion.py.
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

from ddpm_jax.data import load_source, resize_nearest
from ddpm_jax.evaluation.features import InceptionFeatures
from ddpm_jax.evaluation.fid import frechet_distance
from ddpm_jax.evaluation.quality import classifier_features_from_workdir, score_images
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

    def __call__(self, images: np.ndarray, labels: Optional[np.ndarray] = None) -> Dict[str, float]:
        """{fcd, kid_classifier, [class_accuracy], [fid]} of uint8 images [N, H, W, C]."""
        out = score_images(self.features, images, self.ref_stats, self.ref_features, labels)
        if self.inception is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # N < 2048: singular covariance, comparable at equal N
                out["fid"] = float(frechet_distance(*feature_statistics(self.inception(images)[0]),
                                                    *self.inception_stats))
        return {k: float(v) for k, v in out.items()}

    def real_floor(self, num: int, split: str = "test", with_labels: bool = False) -> Dict[str, float]:
        """The same scores for ``num`` real held-out images: what a perfect model would get at this sample count."""
        held_out = load_source(self.data_name, split, self.data_dir or None)
        images = resize_nearest(held_out.images[:num], self.image_size)  # padded as in training; stays uint8
        labels = held_out.labels[:num] if with_labels and held_out.labels is not None else None
        return {**self(images, labels), "count": len(images), "split": split}

