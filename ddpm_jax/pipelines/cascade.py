"""Cascaded pixel diffusion (SR3, Imagen, DALL-E 2): a base model makes a small image, super-resolution diffusion
stages enlarge it, each stage with its own sampler, steps and guidance.

A super-resolution denoiser sees ``x_t`` at the output size, the low-resolution image (upsampled inside the U-Net) and
the timestep of the noise conditioning augmentation (Imagen sec. 2.5; Ho et al. 2022, "Cascaded Diffusion Models"):
the low-res image is corrupted with q(z_s | z_0) at a level s, in training at a random s and at sampling at a fixed
one, so that the stage tolerates the artefacts of the stage before it.

Augmentation levels are fractions a in [0, 1) of the chain: the augmentation timestep is s = round(a T) noise steps,
s = 0 leaves the image clean, and s >= 1 is q_sample at schedule index s - 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.pipelines.pixel import sampler_kwargs


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


def sr_apply(model, params, x_t, t, low_res, aug_t, labels=None, train: bool = False, rngs=None):
    """One call of a super-resolution U-Net (class labels only when the model takes them)."""
    y = labels if model.num_classes else None
    return model.apply({"params": params}, x_t, t, y, train=train, rngs=rngs, low_res=low_res, aug_level=aug_t)


def make_sr_sample_fn(model, schedule: diffusion.Schedule, sampling_config, prediction_type: str = "eps",
                      aug_level: Optional[float] = None) -> Callable:
    """A jitted ``fn(params, x_T, key, low_res, labels) -> x_0`` for a super-resolution stage.

    The low-res image is augmented once at ``aug_level`` (default ``sampling_config.sr_aug_level`` or 0) with noise
    from ``key``; with a class-conditional stage and ``guidance_scale`` != 1, classifier-free guidance on the label
    (the low-res image stays in both halves). ``sampling.dynamic_threshold`` reaches every sampler as for a base model.
    """
    name = sampling_config.sampler
    kwargs = sampler_kwargs(sampling_config)
    scale = float(sampling_config.get("guidance_scale", 1.0))
    level = sampling_config.get("sr_aug_level", 0.0) if aug_level is None else aug_level
    aug_t = aug_timestep(float(level or 0.0), schedule.num_timesteps)

    @jax.jit
    def sample_fn(params, x_T, key, low_res, labels):
        k_aug, k_sample = jax.random.split(key)
        batch = x_T.shape[0]
        s = jnp.full((batch,), aug_t, jnp.int32)
        z = noise_augment(schedule, low_res, s, jax.random.normal(k_aug, low_res.shape))

        def denoise(x_t, t, y):
            n = x_t.shape[0] // batch  # 2 under classifier-free guidance (the batch is [cond; uncond])
            return sr_apply(model, params, x_t, t, jnp.tile(z, (n, 1, 1, 1)), jnp.tile(s, n), y)

        if model.num_classes and scale != 1.0:
            denoise = diffusion.classifier_free_guidance(denoise, scale, jnp.asarray(model.num_classes, jnp.int32))
        return diffusion.sample(denoise, schedule, x_T, k_sample, sampler=name, cond=labels,
                                prediction_type=prediction_type, **kwargs)

    return sample_fn


def super_resolve(sample_fn: Callable, params, key: jax.Array, low_res: np.ndarray, image_shape: tuple,
                  labels: Optional[np.ndarray] = None, batch_size: int = 64) -> np.ndarray:
    """Enlarge ``low_res`` (float [-1, 1], NHWC) to ``image_shape`` in batches of a fixed size (one compilation);
    batch b uses fold_in(key, b) as :func:`ddpm_jax.pipelines.pixel.generate` does."""
    num = len(low_res)
    labels = np.zeros(num, np.int32) if labels is None else np.asarray(labels, np.int32)
    out = []
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        k_noise, k_sample = jax.random.split(jax.random.fold_in(key, b))
        x_T = jax.random.normal(k_noise, (batch_size,) + tuple(image_shape))
        low = np.zeros((batch_size,) + low_res.shape[1:], np.float32)
        low[:n] = low_res[start:start + n]
        y = np.zeros(batch_size, np.int32)
        y[:n] = labels[start:start + n]
        out.append(np.asarray(sample_fn(params, x_T, k_sample, jnp.asarray(low), jnp.asarray(y)))[:n])
    return np.concatenate(out, 0)


@dataclasses.dataclass
class SRStage:
    """One super-resolution stage of a cascade: its jitted sampler, parameters and output shape."""

    sample_fn: Callable
    params: Any
    image_shape: tuple
    name: str = "sr"
    batch_size: int = 64


def run_cascade(base_images: np.ndarray, stages: Sequence[SRStage], key: jax.Array,
                labels: Optional[np.ndarray] = None) -> list:
    """Enlarge the base model's images (float [-1, 1]) through every stage in turn; returns the images after each
    stage, the base first. Stage i samples with fold_in(key, i); each stage's output is clipped to [-1, 1]."""
    outputs = [np.clip(np.asarray(base_images, np.float32), -1.0, 1.0)]
    for i, stage in enumerate(stages):
        x = super_resolve(stage.sample_fn, stage.params, jax.random.fold_in(key, i), outputs[-1], stage.image_shape,
                          labels, stage.batch_size)
        outputs.append(np.clip(x, -1.0, 1.0))
    return outputs
