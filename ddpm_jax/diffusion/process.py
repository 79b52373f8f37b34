"""Forward process q(x_t | x_0), the posterior q(x_s | x_t, x_0), and conversions between eps, x0 and v.

Notation follows DDPM (Ho et al. 2020): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps. Timesteps are integer
indices into the schedule; ``s < t`` need not be ``t - 1`` (respaced chains), and ``s = -1`` is the clean data.
"""
from __future__ import annotations

from typing import Tuple

import jax.numpy as jnp

from ddpm_jax.diffusion.schedules import Schedule

PREDICTION_TYPES = ("eps", "x0", "v")


def _bcast(a: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Broadcast a per-example vector ``a`` [B] (or scalar) against ``x`` [B, ...]."""
    a = jnp.asarray(a, jnp.float32)
    if a.ndim == 0:
        return a
    return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def _alpha_sigma(schedule: Schedule, t, x):
    """alpha_t = sqrt(abar_t) and sigma_t = sqrt(1 - abar_t), broadcast against x."""
    return jnp.sqrt(_bcast(schedule.alpha_bar(t), x)), jnp.sqrt(_bcast(schedule.one_minus_alpha_bar(t), x))


def q_sample(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4)."""
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return alpha * x0 + sigma * noise


def q_mean_variance(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
    """Mean and variance of q(x_t | x_0)."""
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return alpha * x0, jnp.broadcast_to(sigma**2, x0.shape)


def posterior_mean_variance(
    schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray, s: jnp.ndarray | None = None
) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """q(x_s | x_t, x_0) for s < t (default s = t - 1): DDPM eqs. 6-7 with alpha_{t|s} = abar_t / abar_s.

    Returns (mean, variance beta-tilde, beta_{t|s}); the last is the "fixed large" variance.
    """
    s = jnp.asarray(t) - 1 if s is None else s
    log_ab_t = _bcast(schedule.log_alpha_bar(t), x_t)
    log_ab_s = _bcast(schedule.log_alpha_bar(s), x_t)
    sigma2_t = -jnp.expm1(log_ab_t)
    sigma2_s = -jnp.expm1(log_ab_s)
    beta_ts = -jnp.expm1(log_ab_t - log_ab_s)
    mean = (jnp.exp(0.5 * log_ab_s) * beta_ts / sigma2_t) * x0 + (jnp.exp(0.5 * (log_ab_t - log_ab_s)) * sigma2_s / sigma2_t) * x_t
    variance = sigma2_s / sigma2_t * beta_ts
    return mean, jnp.broadcast_to(variance, x_t.shape), jnp.broadcast_to(beta_ts, x_t.shape)


def eps_to_x0(schedule: Schedule, x_t, t, eps):
    alpha, sigma = _alpha_sigma(schedule, t, x_t)
    return (x_t - sigma * eps) / alpha


def x0_to_eps(schedule: Schedule, x_t, t, x0):
    alpha, sigma = _alpha_sigma(schedule, t, x_t)
    return (x_t - alpha * x0) / sigma


def v_target(schedule: Schedule, x0, t, eps):
    """v = alpha eps - sigma x0 (Salimans & Ho 2022, progressive distillation, sec. 4)."""
    alpha, sigma = _alpha_sigma(schedule, t, x0)
    return alpha * eps - sigma * x0


def v_to_x0(schedule: Schedule, x_t, t, v):
    alpha, sigma = _alpha_sigma(schedule, t, x_t)
    return alpha * x_t - sigma * v


def v_to_eps(schedule: Schedule, x_t, t, v):
    alpha, sigma = _alpha_sigma(schedule, t, x_t)
    return sigma * x_t + alpha * v


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; use one of {PREDICTION_TYPES}")
    return prediction_type


def prediction_to_x0_eps(schedule: Schedule, x_t, t, prediction, prediction_type: str = "eps"):
    """Turn a network output of any parameterization into the pair (x0_hat, eps_hat)."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return eps_to_x0(schedule, x_t, t, prediction), prediction
    if prediction_type == "x0":
        return prediction, x0_to_eps(schedule, x_t, t, prediction)
    return v_to_x0(schedule, x_t, t, prediction), v_to_eps(schedule, x_t, t, prediction)


def target_for(schedule: Schedule, x0, t, eps, prediction_type: str = "eps"):
    """The regression target of a parameterization for the pair (x0, eps)."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return eps
    if prediction_type == "x0":
        return x0
    return v_target(schedule, x0, t, eps)
