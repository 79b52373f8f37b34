"""Inception features for FID and Inception Score: resize to 299, scale to [-1, 1], run `InceptionV3FID`.

The pipeline is pytorch-fid's (`InceptionV3(resize_input=True, normalize_input=True)`): images in [0, 1] are resized
bilinearly to 299x299 (`resize_mode`, see `ddpm_jax.evaluation.resize`), then mapped by 2x - 1.
"""
import sys
import time
from typing import Iterable, Iterator, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddpm_jax.evaluation.resize import MODES, resize_bilinear
from ddpm_jax.models.inception import InceptionV3FID

RANGE_TOL = 1e-6


def as_unit_float(images) -> np.ndarray:
    """Check a batch and return it as float32 [N, H, W, 3] in [0, 1]: uint8 is divided by 255, float is checked to lie
    in [0, 1] (tolerance 1e-6) and clipped, a single grey channel [N, H, W, 1] is repeated to RGB."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception features need images of shape [N, H, W, 3] or [N, H, W, 1], got {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255)
    elif np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all():
            raise ValueError(f"Inception features: images contain {np.isnan(images).sum()} NaN and "
                             f"{np.isinf(images).sum()} infinite values")
        lo, hi = float(images.min(initial=0.0)), float(images.max(initial=1.0))
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise ValueError(f"Inception features: float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]"
                             " (uint8 images are taken as 0..255)")
        images = np.clip(images.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"Inception features need uint8 (0..255) or float ([0, 1]) images, got dtype {images.dtype}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


class InceptionFeatures:
    """`features(images) -> (pool3 [N, 2048], logits [N, 1008])`, both float32, for uint8 (0..255) or float ([0, 1])
    images [N, H, W, 3]; grayscale [N, H, W, 1] is repeated to 3 channels. Batches of `batch_size` (the last one
    padded, so each input size compiles once) run as one jitted resize + network, sharded over the local devices
    along a 1-D mesh when `batch_size` divides by their number. `params` are the variables from
    `load_inception_params`."""

    def __init__(self, params, resize_mode: str = "pytorch", batch_size: int = 200):
        if resize_mode not in MODES:
            raise ValueError(f"resize_mode must be one of {MODES}, got {resize_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.resize_mode, self.batch_size = resize_mode, batch_size
        devices = jax.local_devices()
        self.mesh = Mesh(np.array(devices if batch_size % len(devices) == 0 else devices[:1]), ("data",))
        self.params = jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self._forward = jax.jit(self._apply)

    def _apply(self, params, x: jnp.ndarray):
        """[B, H, W, 3] in [0, 1] -> (pool3, logits)."""
        x = resize_bilinear(x, 299, self.resize_mode)
        out = InceptionV3FID().apply(params, 2 * x - 1)
        return out["pool3"], out["logits"]

    def _run_batch(self, batch: np.ndarray):
        """Features of at most `batch_size` checked images, padding the batch to `batch_size`."""
        n = batch.shape[0]
        padded = np.concatenate([batch, np.zeros((self.batch_size - n,) + batch.shape[1:], batch.dtype)])
        pool3, logits = self._forward(self.params, jax.device_put(padded, self._batch_sharding))
        return np.asarray(pool3)[:n], np.asarray(logits)[:n]

    def _batches(self, images_or_iterable) -> Iterator[np.ndarray]:
        """Checked float [0, 1] batches of at most `batch_size` images from an array or an iterable of arrays."""
        chunks = [images_or_iterable] if hasattr(images_or_iterable, "shape") else images_or_iterable
        for chunk in chunks:
            chunk = as_unit_float(chunk)
            for start in range(0, chunk.shape[0], self.batch_size):
                yield chunk[start:start + self.batch_size]

    def iter_features(self, images_or_iterable: Union[np.ndarray, Iterable[np.ndarray]], progress: bool = True):
        """Yield (pool3, logits) batch by batch for an image array or an iterable of image arrays (e.g. batches of
        generated samples), so statistics can stream; with `progress`, a line on stderr shows batches and images/s."""
        total = None
        if hasattr(images_or_iterable, "shape"):
            total = -(-images_or_iterable.shape[0] // self.batch_size)
        start, done, images = time.perf_counter(), 0, 0
        for batch in self._batches(images_or_iterable):
            yield self._run_batch(batch)
            done, images = done + 1, images + batch.shape[0]
            if progress:
                rate = images / max(time.perf_counter() - start, 1e-9)
                of = f"/{total}" if total else ""
                print(f"\rInception features: batch {done}{of}, {images} images, {rate:.1f} images/s", end="",
                      file=sys.stderr, flush=True)
        if progress and done:
            print(file=sys.stderr, flush=True)

    def __call__(self, images_or_iterable, progress: bool = False):
        """All features at once: (pool3 [N, 2048], logits [N, 1008]) float32."""
        parts = list(self.iter_features(images_or_iterable, progress=progress))
        if not parts:
            raise ValueError("Inception features: no images given")
        return tuple(np.concatenate(p).astype(np.float32) for p in zip(*parts))
