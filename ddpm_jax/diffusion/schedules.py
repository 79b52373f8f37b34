"""Discrete noise schedules, represented by alpha-bar (the cumulative signal fraction).

Every quantity (beta_t, alpha_t, log-SNR, sigma) is derived from ``alphas_cumprod``; a new schedule is one
function ``num_timesteps -> alpha_bar`` registered with :func:`register_schedule`.
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import flax.struct
import jax.numpy as jnp
import numpy as np

AlphaBarFn = Callable[[int], np.ndarray]
_SCHEDULES: Dict[str, AlphaBarFn] = {}


def register_schedule(name: str):
    """Decorator: register ``fn(num_timesteps) -> alpha_bar[num_timesteps]`` (float64, decreasing in (0, 1])."""

    def wrap(fn: AlphaBarFn) -> AlphaBarFn:
        _SCHEDULES[name] = fn
        return fn

    return wrap


def available_schedules() -> list[str]:
    return sorted(_SCHEDULES)


def alpha_bar_from_betas(betas: np.ndarray) -> np.ndarray:
    return np.exp(np.cumsum(np.log1p(-np.asarray(betas, np.float64))))


@register_schedule("linear")
def linear_alpha_bar(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02 at T = 1000, rescaled for other T."""
    scale = 1000.0 / num_timesteps
    return alpha_bar_from_betas(np.linspace(scale * beta_start, scale * beta_end, num_timesteps))


@register_schedule("cosine")
def cosine_alpha_bar(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17): f(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped at 0.999."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in range(num_timesteps)]
    return alpha_bar_from_betas(np.array(betas))


@register_schedule("scaled_linear")
def scaled_linear_alpha_bar(num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """Latent diffusion (Rombach et al. 2022): sqrt(beta) linear, the Stable Diffusion schedule."""
    return alpha_bar_from_betas(np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps) ** 2)


@flax.struct.dataclass
class Schedule:
    """A discrete-time schedule stored as log alpha-bar_t for t = 0..T-1; index -1 is the clean data (alpha-bar 1).

    Keeping log alpha-bar (not alpha-bar) in float32 keeps both ends exact: 1 - alpha-bar and beta_t = 1 - alpha_t
    are computed with expm1, so beta_1 = 1e-4 is not lost to rounding of alpha-bar = 0.9999.
    """

    log_alphas_cumprod: jnp.ndarray

    @property
    def num_timesteps(self) -> int:
        return self.log_alphas_cumprod.shape[0]

    @property
    def alphas_cumprod(self) -> jnp.ndarray:
        return jnp.exp(self.log_alphas_cumprod)

    @property
    def betas(self) -> jnp.ndarray:
        prev = jnp.concatenate([jnp.zeros((1,), jnp.float32), self.log_alphas_cumprod[:-1]])
        return -jnp.expm1(self.log_alphas_cumprod - prev)

    @property
    def log_snr(self) -> jnp.ndarray:
        """lambda_t = log(alpha_bar / (1 - alpha_bar)) (Kingma et al. 2021, VDM)."""
        return self.log_snr_at(jnp.arange(self.num_timesteps))

    def log_alpha_bar(self, t: jnp.ndarray) -> jnp.ndarray:
        """log alpha-bar at integer timesteps ``t``; 0 where t < 0 (the clean end of the chain)."""
        t = jnp.asarray(t)
        return jnp.where(t >= 0, self.log_alphas_cumprod[jnp.clip(t, 0, self.num_timesteps - 1)], 0.0)

    def alpha_bar(self, t: jnp.ndarray) -> jnp.ndarray:
        return jnp.exp(self.log_alpha_bar(t))

    def one_minus_alpha_bar(self, t: jnp.ndarray) -> jnp.ndarray:
        """1 - alpha-bar_t = sigma_t^2, without cancellation."""
        return -jnp.expm1(self.log_alpha_bar(t))

    def log_snr_at(self, t: jnp.ndarray) -> jnp.ndarray:
        """Log-SNR at timesteps ``t`` (+inf at t < 0)."""
        log_ab = self.log_alpha_bar(t)
        return log_ab - jnp.log(-jnp.expm1(log_ab))


def make_schedule(name: str = "linear", num_timesteps: int = 1000, **kwargs) -> Schedule:
    """Build a registered schedule; ``kwargs`` go to its alpha-bar function (e.g. beta_start, s)."""
    if name not in _SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; available: {', '.join(available_schedules())}")
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    alpha_bar = np.asarray(_SCHEDULES[name](num_timesteps, **kwargs), np.float64)
    if alpha_bar.shape != (num_timesteps,) or not np.all((alpha_bar > 0) & (alpha_bar <= 1)):
        raise ValueError(f"schedule {name!r} must give {num_timesteps} alpha-bar values in (0, 1]")
    if np.any(np.diff(alpha_bar) > 0):
        raise ValueError(f"schedule {name!r} alpha-bar must be non-increasing")
    return Schedule(log_alphas_cumprod=jnp.asarray(np.log(alpha_bar), jnp.float32))


def respace_timesteps(num_timesteps: int, num_steps: int, spacing: str = "leading") -> np.ndarray:
    """Decreasing sampling timesteps (DDIM sec. 4.2 / diffusers' ``timestep_spacing``).

    leading:  0, k, 2k, ... with k = T // S (DDIM and diffusers' DDIM default)
    trailing: T-1, T-1-k, ... (Lin et al. 2024, reaches the last timestep)
    linspace: round(linspace(0, T-1, S)), both ends included
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if spacing == "leading":
        steps = np.arange(num_steps) * (num_timesteps // num_steps)
    elif spacing == "trailing":
        steps = np.round(np.arange(num_timesteps, 0, -num_timesteps / num_steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        steps = np.round(np.linspace(0, num_timesteps - 1, num_steps))
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; use leading, trailing or linspace")
    return np.sort(steps.astype(np.int32))[::-1].copy()
