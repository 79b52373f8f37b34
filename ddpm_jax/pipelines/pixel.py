"""Pixel-space generation: noise -> (class-conditional) U-Net denoiser -> sampler -> images in [-1, 1]."""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion


def sampler_kwargs(sampling_config) -> dict:
    """Sampler options from ``config.sampling`` (sampler name, steps, eta, variance, x0 clipping/thresholding)."""
    name = sampling_config.sampler
    kwargs = {"num_steps": sampling_config.get("num_steps") or None}
    if name == "ddim":
        kwargs["eta"] = sampling_config.get("eta", 0.0)
    if name == "ddpm":
        kwargs["variance"] = sampling_config.get("variance", "fixed_small")
    if kwargs["num_steps"] is None:
        kwargs.pop("num_steps")
    threshold = sampling_config.get("dynamic_threshold")  # when set, it replaces the static clip (Imagen)
    kwargs["x0_transform"] = diffusion.make_x0_transform(None if threshold else sampling_config.get("clip_x0"),
                                                         threshold or None)
    return kwargs


def make_sample_fn(model, schedule: diffusion.Schedule, sampling_config, prediction_type: str = "eps") -> Callable:
    """A jitted ``fn(params, x_T, key, labels) -> x_0``: the whole loop is one compiled program.

    With a class-conditional model and ``guidance_scale`` != 1, classifier-free guidance uses the null label.
    """
    name = sampling_config.sampler
    kwargs = sampler_kwargs(sampling_config)
    scale = float(sampling_config.get("guidance_scale", 1.0))

    @jax.jit
    def sample_fn(params, x_T, key, labels):
        def denoise(x_t, t, y):
            return model.apply({"params": params}, x_t, t, y, train=False)

        if model.num_classes and scale != 1.0:
            denoise = diffusion.classifier_free_guidance(denoise, scale, jnp.asarray(model.num_classes, jnp.int32))
        cond = labels if model.num_classes else None
        return diffusion.sample(denoise, schedule, x_T, key, sampler=name, cond=cond,
                                prediction_type=prediction_type, **kwargs)

    return sample_fn


def default_labels(num: int, num_classes: Optional[int]) -> np.ndarray:
    """Labels 0, 1, ..., K-1, 0, 1, ... so that a grid with K columns has one class per column."""
    return (np.arange(num) % num_classes).astype(np.int32) if num_classes else np.zeros(num, np.int32)


def generate(sample_fn: Callable, params, key: jax.Array, num: int, image_shape: tuple, batch_size: int = 64,
             labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Generate ``num`` images (float32 [-1, 1], NHWC) in batches; batch b uses fold_in(key, b)."""
    labels = np.zeros(num, np.int32) if labels is None else np.asarray(labels, np.int32)
    out = []
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        k_noise, k_sample = jax.random.split(jax.random.fold_in(key, b))
        x_T = jax.random.normal(k_noise, (batch_size,) + tuple(image_shape))  # fixed shape: one compilation
        y = np.zeros(batch_size, np.int32)
        y[:n] = labels[start:start + n]
        out.append(np.asarray(sample_fn(params, x_T, k_sample, jnp.asarray(y)))[:n])
    return np.concatenate(out, 0)
