"""Task ``super_resolution``: a diffusion decoder of a cascade (SR3, Imagen) trained on (downsampled, original)
pairs.

``data.image_size`` is the output size, ``sr.low_res_size`` the input size (the training images area-downsampled).
The low-res image reaches the denoiser as ``cond["low_res"]`` after Imagen's noise conditioning augmentation
(sec. 2.5): corrupted with q(z_s | z_0) at a level s, in training s ~ U[0, sr.max_aug_level T) per example and at
sampling the fixed ``sampling.sr_aug_level``, with s passed as ``cond["aug_level"]``. Augmentation levels are
fractions a in [0, 1) of the chain: s = round(a T) noise steps, s = 0 leaves the image clean, and s >= 1 is q_sample
at schedule index s - 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.data import resize_nearest, to_model_range, to_uint8
from ddpm_jax.tasks.base import Samples
from ddpm_jax.tasks.diffusion import DiffusionTask


def aug_timestep(level: float, num_timesteps: int) -> int:
    """The augmentation timestep of a level a in [0, 1): round(a T); 0 = no augmentation."""
    if not 0.0 <= level < 1.0:
        raise ValueError(f"an augmentation level must be in [0, 1), got {level}")
    return int(round(level * num_timesteps))


def random_aug_timesteps(key: jax.Array, batch: int, max_level: float, num_timesteps: int) -> jnp.ndarray:
    """Training: s ~ U{0, ..., floor(max_level T) - 1} per example (Imagen: s ~ U[0, max_level T)); all 0 when
    max_level is 0."""
    high = int(max_level * num_timesteps)
    if high <= 0:
        return jnp.zeros((batch,), jnp.int32)
    return jax.random.randint(key, (batch,), 0, high)


def noise_augment(schedule: diffusion.Schedule, low_res: jnp.ndarray, aug_t: jnp.ndarray,
                  noise: jnp.ndarray) -> jnp.ndarray:
    """z_s = sqrt(abar) z_0 + sqrt(1 - abar) eps at schedule index s - 1 (s = 0: z_0 itself)."""
    return diffusion.q_sample(schedule, low_res, jnp.asarray(aug_t) - 1, noise)


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Area (box-filter) downsampling of float NHWC images by an integer factor."""
    n, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"cannot area-downsample {h}x{w} to {size}x{size}: not an integer factor")
    k = h // size
    return images.reshape(n, size, k, size, k, c).mean(axis=(2, 4)).astype(np.float32)


@dataclasses.dataclass
class SRPipeline:
    """The pixel batches of ``inner`` plus ``low_res``: each image area-downsampled to ``low_res_size``."""

    inner: Any
    low_res_size: int

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        out = dict(self.inner.batch(step))
        out["low_res"] = downsample(out["image"], self.low_res_size)
        return out


class SuperResolutionTask(DiffusionTask):
    def validate(self, config) -> None:
        super().validate(config)
        sr = config.sr
        low, high = int(sr.low_res_size), int(config.data.image_size)
        if low <= 0 or low >= high or high % low:
            raise ValueError(f"sr.low_res_size must divide data.image_size and be smaller, got {low} and {high}")
        if not 0.0 <= sr.max_aug_level < 1.0:
            raise ValueError(f"sr.max_aug_level must be in [0, 1), got {sr.max_aug_level}")
        if not 0.0 <= (config.sampling.sr_aug_level or 0.0) < 1.0:
            raise ValueError(f"sampling.sr_aug_level must be in [0, 1), got {config.sampling.sr_aug_level}")

    def low_res_channels(self, config, source) -> Optional[int]:
        return source.images.shape[-1]

    def pipeline(self, run, workdir, main_process):
        return SRPipeline(super().pipeline(run, workdir, main_process), run.config.sr.low_res_size)

    def example_cond(self, run, batch: int):
        low = run.config.sr.low_res_size
        return {**super().example_cond(run, batch), "low_res": jnp.zeros((batch, low, low, run.image_shape[-1])),
                "aug_level": jnp.zeros((batch,), jnp.int32)}

    def condition(self, run, batch, key, train: bool):
        """Labels (dropped for guidance training) plus the noise-augmented low-res image and its level."""
        k_drop, k_aug_t, k_aug = jax.random.split(key, 3)
        cond = super().condition(run, batch, k_drop, train)
        low = batch["low_res"]
        if train:
            aug_t = random_aug_timesteps(k_aug_t, low.shape[0], run.config.sr.max_aug_level, run.schedule.num_timesteps)
            low = noise_augment(run.schedule, low, aug_t, jax.random.normal(k_aug, low.shape))
        else:
            aug_t = jnp.zeros((low.shape[0],), jnp.int32)
        return {**cond, "low_res": low, "aug_level": aug_t}

    def cond_transform(self, run, sampling_config):
        """At sampling the low-res input is augmented once, at the fixed ``sampling.sr_aug_level``."""
        aug_t = aug_timestep(float(sampling_config.sr_aug_level or 0.0), run.schedule.num_timesteps)
        schedule = run.schedule

        def transform(cond, key):
            k_aug, k_sample = jax.random.split(key)
            low = cond["low_res"]
            s = jnp.full((low.shape[0],), aug_t, jnp.int32)
            return {**cond, "low_res": noise_augment(schedule, low, s, jax.random.normal(k_aug, low.shape)),
                    "aug_level": s}, k_sample

        return transform

    def sample_cond(self, run, num, labels=None, prompts=None, low_res=None):
        if low_res is None:
            raise ValueError("a super-resolution stage samples from low-res images (give the cascade's base images)")
        cond, labels, ncols = super().sample_cond(run, num, labels, prompts)
        low = np.asarray(low_res, np.float32)
        size = run.config.sr.low_res_size
        if low.shape[1:3] != (size, size):
            raise ValueError(f"this SR stage enlarges {size}px images, got {low.shape[1]}px ones")
        return {**cond, "low_res": low}, labels, ncols

    def sample_grid(self, run, params, key, num):
        return None  # the held-out comparison is --mode=sample

    def sample(self, run, params, key, num, labels=None, prompts=None) -> Samples:
        """``num`` held-out images, area-downsampled to the input size: rows of low-res inputs (nearest-upsampled for
        display), super-resolved outputs and originals."""
        config = run.config
        held_out = self.load_source(config, "test")
        size, low_size = config.data.image_size, config.sr.low_res_size
        images, true_labels = held_out.take(np.arange(min(num, len(held_out))))
        high = to_model_range(resize_nearest(images, size))
        low = downsample(high, low_size)
        use = true_labels if run.model.num_classes and (labels is None or not len(labels)) else labels
        x, labels, _ = run.task.generate(run, params, key, len(high), use, prompts, low)
        f = size // low_size
        shown = [low.repeat(f, 1).repeat(f, 2), x, high]
        s = config.sampling
        name = f"sr_{s.sampler}_{s.num_steps or 'all'}steps_aug{s.sr_aug_level or 0:g}"
        return Samples(np.concatenate([to_uint8(a) for a in shown]), np.concatenate([labels] * 3), len(high), name)
