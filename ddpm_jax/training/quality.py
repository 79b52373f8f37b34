"""Sample quality in a trained classifier's feature space, during training and from the evaluate command."""
from __future__ import annotations

import hashlib
import logging
import warnings
from typing import Dict, Optional

import jax
import numpy as np

from ddpm_jax.data import to_uint8
from ddpm_jax.evaluation.classifier_features import ClassifierFeatures, class_accuracy
from ddpm_jax.evaluation.fid import frechet_distance
from ddpm_jax.evaluation.kid import kernel_inception_distance
from ddpm_jax.evaluation.statistics import feature_statistics
from ddpm_jax.pipelines.pixel import default_labels, generate, make_sample_fn

log = logging.getLogger("ddpm_jax")


def classifier_features_from_workdir(workdir: str, batch_size: int = 500) -> ClassifierFeatures:
    """The feature extractor of a classifier trained with ``--config=configs/classifier_*.py`` in ``workdir``."""
    from ddpm_jax.training.loop import load_trained

    cfg, model, params = load_trained(workdir)
    if cfg.get("task") != "classifier":
        raise ValueError(f"{workdir} holds a {cfg.get('task', 'diffusion')} run, not a classifier")
    channels = 3 if cfg.data.name.startswith("tfds:") else 1
    extractor = ClassifierFeatures(model, params, cfg.data.image_size, channels, f"classifier:{cfg.data.name}",
                                   batch_size)
    extractor.weights_sha256 = params_sha256(params)
    return extractor


def params_sha256(params) -> str:
    """A fingerprint of a parameter tree (recorded in stats manifests so spaces of different weights never mix)."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def score_images(features: ClassifierFeatures, images: np.ndarray, ref_stats, ref_features: np.ndarray,
                 labels: Optional[np.ndarray] = None, kid_subset: int = 1000) -> Dict[str, float]:
    """FCD and KID against reference statistics/features; class accuracy when labels are given."""
    feats, logits = features(images)
    mu, sigma = feature_statistics(feats)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small N: biased but comparable along training; the README says so
        fcd = frechet_distance(mu, sigma, *ref_stats)
        kid_mean, _ = kernel_inception_distance(feats, ref_features, num_subsets=20,
                                                subset_size=min(kid_subset, len(feats), len(ref_features)))
    out = {"fcd": fcd, "kid_classifier": kid_mean}
    if labels is not None:
        out["class_accuracy"] = class_accuracy(logits, labels)
    return out


class SampleQuality:
    """Generate ``num_samples`` with the eval sampler and score them against the training data's features."""

    def __init__(self, run, features: ClassifierFeatures, sampling_config, num_samples: int, seed: int):
        self.run, self.features, self.num_samples, self.seed = run, features, num_samples, seed
        ref_images = run.source.images
        self.ref_features, _ = features(ref_images)
        self.ref_stats = feature_statistics(self.ref_features)
        self.labels = default_labels(num_samples, run.model.num_classes)
        self.cond = None
        if run.text is not None:  # text-to-image: one class prompt per label, at the config's guidance scale
            from ddpm_jax.pipelines.text import make_text_sample_fn

            self.sample_fn = make_text_sample_fn(run.model, run.schedule, sampling_config, run.text.null,
                                                 run.config.diffusion.prediction_type)
            self.labels = default_labels(num_samples, len(run.text.prompts))
            self.cond = run.text.encode([run.text.prompts[i] for i in self.labels])
            self.class_labels = run.source.labels is not None
        else:
            self.sample_fn = make_sample_fn(run.model, run.schedule, sampling_config,
                                            run.config.diffusion.prediction_type)
            self.class_labels = bool(run.model.num_classes)

    @classmethod
    def from_config(cls, config, run) -> "SampleQuality":
        ev = config.eval
        if not ev.get("classifier_workdir"):
            raise ValueError("eval.every > 0 needs eval.classifier_workdir: train one with configs/classifier_*.py")
        features = classifier_features_from_workdir(ev.classifier_workdir)
        if features.image_size != config.data.image_size:
            raise ValueError(f"classifier in {ev.classifier_workdir} takes {features.image_size}px images, the "
                             f"diffusion model makes {config.data.image_size}px")
        sampling = config.sampling.copy_and_resolve_references()
        sampling.sampler, sampling.num_steps = ev.get("sampler", "ddim"), ev.get("num_steps", 20)
        return cls(run, features, sampling, ev.get("num_samples", 1000), config.seed + 2)

    def __call__(self, params) -> Dict[str, float]:
        batch_size = self.run.config.sampling.get("batch_size", 64)
        if self.cond is not None:
            from ddpm_jax.pipelines.text import generate_from_text

            x = generate_from_text(self.sample_fn, params, jax.random.key(self.seed), self.cond, self.run.image_shape,
                                   batch_size)
        else:
            x = generate(self.sample_fn, params, jax.random.key(self.seed), self.num_samples, self.run.image_shape,
                         batch_size, self.labels)
        labels = self.labels if self.class_labels else None
        return score_images(self.features, to_uint8(self.run.to_pixels(x)), self.ref_stats, self.ref_features, labels)
