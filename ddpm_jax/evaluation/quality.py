"""Sample quality from trained workdirs: a classifier's feature space (Fréchet classifier distance, KID, class
accuracy; during training and from the evaluate command) and a domain CLIP (CLIP score).

Under ``jax.distributed`` every process calls :class:`SampleQuality` (the trainer does): each samples its share of
the batches and extracts features of its share of the blocks, and all get the scores one process would."""
from __future__ import annotations

import logging
import warnings
from typing import Dict, Optional, Sequence

import jax
import numpy as np

from ddpm_jax.data import resize_nearest, to_model_range, to_uint8
from ddpm_jax.evaluation.classifier_features import ClassifierFeatures, class_accuracy
from ddpm_jax.evaluation.clip_score import clip_scores
from ddpm_jax.evaluation.fid import frechet_distance
from ddpm_jax.evaluation.kid import kernel_inception_distance
from ddpm_jax.evaluation.multiprocess import host_local, shared_features
from ddpm_jax.evaluation.statistics import feature_statistics
from ddpm_jax.models.clip import DomainCLIP
from ddpm_jax.tasks import load_trained
from ddpm_jax.tasks.sampling import default_labels, shared_sample_fn
from ddpm_jax.workdir import params_sha256

log = logging.getLogger("ddpm_jax")


def classifier_features_from_workdir(workdir: str, batch_size: int = 500) -> ClassifierFeatures:
    """The feature extractor of a classifier trained with ``--config=configs/classifier_*.py`` in ``workdir``."""
    trained = load_trained(workdir, expect_task="classifier")
    cfg = trained.config
    channels = 3 if cfg.data.name.startswith("tfds:") else 1
    extractor = ClassifierFeatures(trained.run.model, trained.params, cfg.data.image_size, channels,
                                   f"classifier:{cfg.data.name}", batch_size)
    extractor.weights_sha256 = params_sha256(trained.params)
    return extractor


def score_images(features: ClassifierFeatures, images: np.ndarray, ref_stats, ref_features: np.ndarray,
                 labels: Optional[np.ndarray] = None, kid_subset: int = 1000) -> Dict[str, float]:
    """FCD and KID against reference statistics/features; class accuracy when labels are given. Several processes
    share the feature extraction (blocks of the extractor's batch size) and all get the same scores."""
    block = getattr(features, "batch_size", None) or len(images)  # any callable images -> (features, logits)
    feats, logits = shared_features(features, images, block)
    return scores_of_features(feats, logits, ref_stats, ref_features, labels, kid_subset)


def scores_of_features(feats: np.ndarray, logits: np.ndarray, ref_stats, ref_features: np.ndarray,
                       labels: Optional[np.ndarray] = None, kid_subset: int = 1000) -> Dict[str, float]:
    """:func:`score_images` of features already extracted (``feats`` [N, D], ``logits`` [N, K])."""
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
        self.sampling = sampling_config
        self.ref_features, _ = shared_features(features, run.source.images, features.batch_size)
        self.ref_stats = feature_statistics(self.ref_features)
        self.sample_fn = run.task.make_sample_fn(run, sampling_config)
        if run.text is not None:  # one class prompt per label, at the config's guidance scale
            self.labels = default_labels(num_samples, len(run.text.prompts))
            self.class_labels = run.source.labels is not None
        else:
            self.labels = default_labels(num_samples, run.model.num_classes)
            self.class_labels = bool(run.model.num_classes)

    @classmethod
    def from_config(cls, config, run) -> "SampleQuality":
        ev = config.eval
        if not ev.classifier_workdir:
            raise ValueError("eval.every > 0 needs eval.classifier_workdir: train one with configs/classifier_*.py")
        features = classifier_features_from_workdir(ev.classifier_workdir)
        if features.image_size != config.data.image_size:
            raise ValueError(f"classifier in {ev.classifier_workdir} takes {features.image_size}px images, the "
                             f"diffusion model makes {config.data.image_size}px")
        sampling = config.sampling.copy_and_resolve_references()
        sampling.sampler, sampling.num_steps = ev.sampler, ev.num_steps
        return cls(run, features, sampling, ev.num_samples, config.seed + 2)

    def __call__(self, params) -> Dict[str, float]:
        """Scores of ``num_samples`` samples of ``params``; with several processes a collective: each samples the
        batches dealt to it, and every process gets all model outputs in order and decodes them as one process
        would (latents decode in the same batches, so the images are bit for bit the single-process ones)."""
        run = self.run
        labels = None if run.text is not None else (self.labels if run.model.num_classes else None)
        x, _, _ = run.task.generate(run, host_local(params), jax.random.key(self.seed), self.num_samples, labels,
                                    sampling_config=self.sampling, sample_fn=shared_sample_fn(self.sample_fn))
        images = to_uint8(run.to_pixels(x))
        return score_images(self.features, images, self.ref_stats, self.ref_features,
                            self.labels if self.class_labels else None)


def load_domain_clip(workdir: str) -> DomainCLIP:
    """A :class:`~ddpm_jax.models.clip.DomainCLIP` (EMA weights and its frozen text encoder) from a workdir trained
    with ``--config=configs/clip_*.py``, for :func:`ddpm_jax.evaluation.clip_score.clip_scores`."""
    trained = load_trained(workdir, expect_task="clip")
    clip = DomainCLIP(trained.run.model, trained.params, trained.run.text.encoder)
    clip.image_size = trained.config.data.image_size
    return clip


def clip_score_of(clip, images: np.ndarray, prompts: Sequence[str]) -> Dict[str, float]:
    """CLIP scores of uint8 or [-1, 1] images against their prompts with a domain CLIP (images are brought to the
    CLIP's input size the way its training data was)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = to_model_range(resize_nearest(images, getattr(clip, "image_size", images.shape[1])))
    return clip_scores(clip, images, list(prompts))
