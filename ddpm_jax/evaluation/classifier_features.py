"""The feature space of a small trained classifier: Frechet classifier distance (FCD, as TF-GAN names it) and
classifier accuracy on conditional samples. Not FID: the numbers are only comparable within one classifier."""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.data.pipeline import resize_nearest, to_model_range


def check_uint8_images(images: np.ndarray, channels: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != channels:
        raise ValueError(f"expected images [N, H, W, {channels}], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images in 0..255, got {images.dtype} (convert with ddpm_jax.data.to_uint8)")
    if len(images) == 0:
        raise ValueError("no images given")
    return images


class ClassifierFeatures:
    """Penultimate features and logits of a trained :class:`~ddpm_jax.models.classifier.Classifier`."""

    def __init__(self, model, params, image_size: int, channels: int, name: str, batch_size: int = 500):
        self.model, self.params = model, params
        self.image_size, self.channels, self.batch_size = image_size, channels, batch_size
        self.name = name  # feature-space label recorded in stats manifests, e.g. "classifier:digits"
        self._apply = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))

    def __call__(self, images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """uint8 images [N, H, W, C] -> (features float64 [N, D], logits float64 [N, K])."""
        images = check_uint8_images(images, self.channels)
        feats, logits = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:  # fixed batch shape: one compilation
                chunk = np.concatenate([chunk, np.zeros((self.batch_size - n,) + chunk.shape[1:], np.uint8)])
            x = to_model_range(resize_nearest(chunk, self.image_size))
            out = self._apply(self.params, jnp.asarray(x))
            feats.append(np.asarray(out["features"], np.float64)[:n])
            logits.append(np.asarray(out["logits"], np.float64)[:n])
        return np.concatenate(feats), np.concatenate(logits)


def class_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples the classifier assigns to the class they were generated for."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
