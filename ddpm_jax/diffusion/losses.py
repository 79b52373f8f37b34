"""Denoising training loss: L_simple (DDPM eq. 14) with eps, x0 or v targets and optional per-timestep weights."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from ddpm_jax.diffusion.process import q_sample, target_for
from ddpm_jax.diffusion.schedules import Schedule

Denoise = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]
LOSS_WEIGHTINGS = ("none", "min_snr")


def loss_weight(schedule: Schedule, t: jnp.ndarray, weighting: str = "none", prediction_type: str = "eps",
                min_snr_gamma: float = 5.0) -> jnp.ndarray:
    """Per-example weight on the squared error.

    none:    L_simple, uniform weight 1 (Ho et al. 2020).
    min_snr: Min-SNR-gamma (Hang et al. 2023): min(SNR, gamma) / SNR for eps targets, min(SNR, gamma) / (SNR + 1)
             for v targets, min(SNR, gamma) for x0 targets.
    """
    if weighting == "none":
        return jnp.ones(jnp.shape(t), jnp.float32)
    if weighting != "min_snr":
        raise ValueError(f"unknown loss weighting {weighting!r}; use one of {LOSS_WEIGHTINGS}")
    snr = jnp.exp(schedule.log_snr_at(t))
    clipped = jnp.minimum(snr, min_snr_gamma)
    return {"eps": clipped / snr, "v": clipped / (snr + 1.0), "x0": clipped}[prediction_type]


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jnp.ndarray:
    """t ~ Uniform{0, ..., T-1}."""
    return jax.random.randint(key, (batch_size,), 0, num_timesteps)


def diffusion_loss(
    denoise: Denoise,
    schedule: Schedule,
    x0: jnp.ndarray,
    key: jax.Array,
    cond: Any = None,
    prediction_type: str = "eps",
    weighting: str = "none",
    t: Optional[jnp.ndarray] = None,
    noise: Optional[jnp.ndarray] = None,
) -> jnp.ndarray:
    """Per-example loss w(t) * mean ||target - denoise(x_t, t, cond)||^2 over a batch of clean data ``x0``.

    ``t`` and ``noise`` are drawn from ``key`` unless given (tests pass them to compare with a reference).
    """
    t_key, n_key = jax.random.split(key)
    if t is None:
        t = sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)
    if noise is None:
        noise = jax.random.normal(n_key, x0.shape, x0.dtype)
    x_t = q_sample(schedule, x0, t, noise)
    prediction = denoise(x_t, t, cond).astype(jnp.float32)
    target = target_for(schedule, x0, t, noise, prediction_type)
    sq_err = jnp.mean(jnp.square(prediction - target), axis=tuple(range(1, x0.ndim)))
    return loss_weight(schedule, t, weighting, prediction_type) * sq_err
