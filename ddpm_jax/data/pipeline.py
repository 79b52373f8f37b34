"""Deterministic batches: the global batch of step k is a pure function of (seed, k), so the data position of a run
is its step and resuming needs no iterator state. Each process takes its own contiguous slice of the global batch.
Prepared ArrayRecord datasets are streamed by :mod:`ddpm_jax.data.streaming` with the same rule (and a checkpointed
iterator); its ``make_pipeline`` picks one or the other.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

from ddpm_jax.data.sources import ArraySource


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def global_batch_indices(step: int, batch_size: int, num_examples: int, seed: int) -> np.ndarray:
    """Example indices of the global batch at ``step``: epochs are fresh permutations, the remainder is dropped."""
    if batch_size > num_examples:
        raise ValueError(f"global batch size {batch_size} exceeds the dataset's {num_examples} examples")
    steps_per_epoch = num_examples // batch_size
    epoch, within = divmod(int(step), steps_per_epoch)
    return epoch_permutation(seed, epoch, num_examples)[within * batch_size:(within + 1) * batch_size]


def process_slice(global_batch: int, process_index: int, process_count: int) -> slice:
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    per = global_batch // process_count
    return slice(process_index * per, (process_index + 1) * per)


def resize_nearest(images: np.ndarray, size: int) -> np.ndarray:
    """Integer-factor nearest upsampling or centre padding to ``size`` (e.g. 28x28 -> 32x32 pads by 2; a larger
    non-multiple upsamples by size // h and then pads: 28 -> 56 -> 64); a smaller
    ``size`` centre-pads to the next multiple k * size and averages k x k blocks (28 -> 32 -> 16), so the low-res
    images of a cascade's base model are the area-downsampled training images of its super-resolution stage."""
    h = images.shape[1]
    if h == size:
        return images
    if size < h:
        k = -(-h // size)
        x = resize_nearest(images, k * size).astype(np.float32)
        x = x.reshape(x.shape[0], size, k, size, k, x.shape[-1]).mean(axis=(2, 4))
        return np.round(x).astype(images.dtype) if images.dtype == np.uint8 else x.astype(images.dtype)
    if size % h == 0:
        f = size // h
        return images.repeat(f, axis=1).repeat(f, axis=2)
    if size > 2 * h:  # e.g. 28 -> 64: nearest x2 to 56, then pad (the 28 -> 32 padding, upsampled)
        return resize_nearest(resize_nearest(images, (size // h) * h), size)
    if size > h:
        p = (size - h) // 2
        return np.pad(images, ((0, 0), (p, size - h - p), (p, size - h - p), (0, 0)))
    raise ValueError(f"cannot bring {h}x{h} images to {size}x{size}: use a multiple of {h} or a larger size")


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (DDPM sec. 3.3)."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_uint8(x: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> uint8, clipping (the inverse of :func:`to_model_range`)."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


@dataclasses.dataclass
class BatchPipeline:
    """Batches for training: ``batch(step)`` gives this process's part of global batch ``step``."""

    source: ArraySource
    global_batch_size: int
    image_size: int
    seed: int = 0
    random_flip: bool = False
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        self._slice = process_slice(self.global_batch_size, self.process_index, self.process_count)
        global_batch_indices(0, self.global_batch_size, len(self.source), self.seed)  # validates sizes early

    @property
    def local_batch_size(self) -> int:
        return self._slice.stop - self._slice.start

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (self.image_size, self.image_size, self.source.images.shape[-1])

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices of this process's examples of global batch ``step``."""
        return global_batch_indices(step, self.global_batch_size, len(self.source), self.seed)[self._slice]

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        idx = self.indices(step)
        images, labels = self.source.take(idx)
        images = resize_nearest(images, self.image_size)
        if self.random_flip:
            flip = np.random.default_rng([self.seed, 1, int(step)]).random(self.global_batch_size)[self._slice] < 0.5
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        out = {"image": to_model_range(images)}
        out["label"] = (labels if labels is not None else np.zeros(len(idx), np.int32)).astype(np.int32)
        return out


@dataclasses.dataclass
class ArrayPipeline:
    """Batches of precomputed float arrays (e.g. autoencoder latents) with the same step -> batch rule."""

    arrays: np.ndarray
    labels: np.ndarray
    global_batch_size: int
    seed: int = 0
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        self._slice = process_slice(self.global_batch_size, self.process_index, self.process_count)
        global_batch_indices(0, self.global_batch_size, len(self.arrays), self.seed)

    def indices(self, step: int) -> np.ndarray:
        """Indices of this process's examples of global batch ``step``."""
        return global_batch_indices(step, self.global_batch_size, len(self.arrays), self.seed)[self._slice]

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        idx = self.indices(step)
        return {"image": np.asarray(self.arrays[idx], np.float32), "label": np.asarray(self.labels[idx], np.int32)}
