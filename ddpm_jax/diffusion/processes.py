"""Diffusion processes: how data is noised in training, what the network predicts, and the view samplers take.

Every process is a Gaussian interpolant x_u = alpha(u) x0 + sigma(u) eps over its own time variable u:

- ``ddpm`` (default): the discrete-time variance-preserving chain of DDPM (Ho et al. 2020) on a noise schedule,
  u = the integer timestep, eps/x0/v prediction, L_simple (or Min-SNR). Its own samplers (ddpm, ddim,
  dpm_solver_pp_2m) run on timesteps; the ODE/SDE solvers run on it in the variance-exploding frame
  x / alpha = x0 + sigma~ eps, sigma~ = sqrt((1 - abar) / abar), exactly as diffusers' Euler/Heun discrete schedulers.
- ``flow``: rectified flow / the linear interpolant (Liu et al. 2023; Lipman et al. 2023; SiT, Ma et al. 2024):
  u = t in [0, 1], x_t = (1 - t) x0 + t eps, the network predicts the velocity v = eps - x0 (or x0, with the loss on
  the velocity as in Li & He 2025, "Back to Basics"), t uniform or logit-normal (SD3, Esser et al. 2024). The network
  sees the time as 1000 t (SD3's convention, so time embeddings made for DDPM's [0, 1000) range fit).
- ``edm``: Karras et al. 2022 ("EDM"): u = sigma, x = x0 + sigma eps, the preconditioned denoiser
  D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with c_noise = ln(sigma) / 4, ln sigma ~ N(P_mean, P_std^2) in
  training and the loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 (EDM Table 1).

A process is a frozen dataclass of pure functions over arrays. ``denoise(x, t, cond)`` is the raw network (or its
classifier-free-guided combination; the processes are affine in the network output, so guidance on the output is
guidance on the x0 estimate).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.diffusion.samplers import SAMPLERS, respace_timesteps
from ddpm_jax.diffusion.samplers import sample as discrete_sample
from ddpm_jax.diffusion.solvers import DEFAULT_STEPS, SOLVER_OPTIONS, SOLVERS, karras_sigmas, solve
from ddpm_jax.diffusion.losses import diffusion_loss
from ddpm_jax.diffusion.process import _bcast, check_prediction_type
from ddpm_jax.diffusion.schedules import Schedule, make_schedule

Denoise = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]
FLOW_PREDICTIONS = ("v", "x0")
FLOW_TIMES = ("uniform", "logit_normal")
FLOW_TIME_SCALE = 1000.0  # the network's time input is 1000 t (SD3 / diffusers FlowMatchEulerDiscreteScheduler)
FLOW_X0_MIN_T = 0.05  # x0-prediction: the velocity (x_t - x0) / t divides by max(t, 0.05) (Li & He 2025)


def _per_example_mse(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=tuple(range(1, a.ndim)))


def _no_discrete_sampler(process: str, sampler: str) -> ValueError:
    return ValueError(f"sampler {sampler!r} runs on diffusion.process=ddpm only; process {process!r} is sampled with "
                      f"{' / '.join(SOLVERS)}")


class ContinuousView:
    """What the ODE/SDE solvers (:mod:`ddpm_jax.diffusion.solvers`) need from a process, over its time u.

    ``alpha_sigma(u)``, ``d_alpha_sigma(u)`` (derivatives), ``x0_eps(denoise, x, u, cond)``; ``sigma_tilde(u)`` =
    sigma / alpha (the variance-exploding noise level) and its inverse ``u_of_sigma_tilde`` (EDM's churn);
    ``diffusion_sq(u)`` the squared diffusion coefficient g(u)^2 of the reverse SDE; ``prior_scale(u)`` the standard
    deviation of x at the start of sampling.
    """

    def eps_from_x0(self, x, u, x0):
        alpha, sigma = (_bcast(a, x) for a in self.alpha_sigma(u))
        return (x - alpha * x0) / sigma


# ---------------------------------------------------------------------------------------------- ve frame


class VarianceExploding(ContinuousView):
    """u = sigma, x = x0 + sigma eps (alpha = 1): EDM's frame, and the ddpm process's view x / sqrt(abar)."""

    def alpha_sigma(self, u):
        u = jnp.asarray(u, jnp.float32)
        return jnp.ones_like(u), u

    def d_alpha_sigma(self, u):
        u = jnp.asarray(u, jnp.float32)
        return jnp.zeros_like(u), jnp.ones_like(u)

    def sigma_tilde(self, u):
        return jnp.asarray(u, jnp.float32)

    def u_of_sigma_tilde(self, s):
        return s

    def diffusion_sq(self, u):
        return 2.0 * jnp.asarray(u, jnp.float32)  # EDM's reverse SDE with beta(t) = sigma'(t) / sigma(t)


# --------------------------------------------------------------------------------------------------------- ddpm


@dataclasses.dataclass(frozen=True)
class DDPMProcess(VarianceExploding):
    """The discrete VP chain; ``sample`` runs its timestep samplers or, in the variance-exploding frame, the solvers."""
    schedule: Schedule
    prediction_type: str = "eps"
    weighting: str = "none"
    name = "ddpm"

    def loss(self, denoise: Denoise, x0, key, cond=None):
        return diffusion_loss(denoise, self.schedule, x0, key, cond, self.prediction_type, self.weighting)

    # ---- the continuous view (VarianceExploding): u = sigma~ = sqrt((1 - abar) / abar), x~ = x / sqrt(abar)
    def _sigmas(self) -> np.ndarray:
        """sigma~ at t = 0..T-1 (increasing), float64 from the concrete schedule."""
        log_ab = np.asarray(self.schedule.log_alphas_cumprod, np.float64)
        return np.sqrt(-np.expm1(log_ab) / np.exp(log_ab))

    def prior_scale(self, u):
        return math.sqrt(float(u) ** 2 + 1.0)  # x~_T = x_T / sqrt(abar_T), x_T ~ N(0, I) (diffusers' init_noise_sigma)

    def timestep_of_sigma(self, sigma):
        """The fractional DDPM timestep of sigma~ by linear interpolation in log sigma~ (diffusers' _sigma_to_t)."""
        log_sigmas = jnp.asarray(np.log(self._sigmas()), jnp.float32)
        return jnp.interp(jnp.log(jnp.maximum(sigma, 1e-10)), log_sigmas, jnp.arange(self.schedule.num_timesteps,
                                                                                       dtype=jnp.float32))

    def x0_eps(self, denoise: Denoise, x, u, cond=None):
        sig = _bcast(u, x)
        alpha = jax.lax.rsqrt(1.0 + sig**2)  # sqrt(abar)
        sigma = sig * alpha  # sqrt(1 - abar)
        x_vp = alpha * x
        out = denoise(x_vp, self.timestep_of_sigma(u), cond).astype(jnp.float32)
        if self.prediction_type == "eps":
            return x - sig * out, out
        if self.prediction_type == "x0":
            return out, (x_vp - alpha * out) / sigma
        return alpha * x_vp - sigma * out, sigma * x_vp + alpha * out

    def time_grid(self, num_steps: int, spacing: str = "", rho: float = 7.0) -> np.ndarray:
        """sigma~ at the sampling steps, then 0. spacing "" / linspace / leading / trailing: diffusers' timestep
        spacings (linspace: its Euler/Heun default); "karras": Karras et al. rho-spacing between sigma~ at t = 0, T-1."""
        sigmas = self._sigmas()
        T = self.schedule.num_timesteps
        if spacing == "karras":
            grid = karras_sigmas(num_steps, sigmas[0], sigmas[-1], rho)
        elif spacing in ("", "linspace"):
            grid = np.interp(np.linspace(0, T - 1, num_steps)[::-1], np.arange(T), sigmas)
        else:
            grid = sigmas[respace_timesteps(T, num_steps, spacing)]
        return np.append(grid, 0.0)

    def sample(self, denoise: Denoise, x_T, key, cond=None, sampler: str = "ddim", num_steps: Optional[int] = None,
               spacing: str = "", rho: float = 7.0, **kwargs):
        if sampler in SAMPLERS:
            for k in SOLVER_OPTIONS:
                kwargs.pop(k, None)
            if num_steps:
                kwargs["num_steps"] = num_steps
            if spacing:
                kwargs["spacing"] = spacing
            return discrete_sample(denoise, self.schedule, x_T, key, sampler=sampler, cond=cond,
                                   prediction_type=self.prediction_type, **kwargs)
        if kwargs.pop("final_alpha_cumprod", None) is not None:
            raise ValueError(f"final_alpha_cumprod is a ddim option, not one of sampler {sampler!r}")
        grid = self.time_grid(num_steps or DEFAULT_STEPS.get(sampler, 50), spacing, rho)
        kwargs.pop("shift", None)
        return solve(self, denoise, x_T, key, cond, grid, sampler, **kwargs)


# --------------------------------------------------------------------------------------------------------- flow


@dataclasses.dataclass(frozen=True)
class FlowProcess(ContinuousView):
    """x_t = (1 - t) x0 + t eps, t in [0, 1]; velocity (or x0) prediction, loss on the velocity eps - x0."""
    prediction: str = "v"
    time_distribution: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    name = "flow"

    def __post_init__(self):
        if self.prediction not in FLOW_PREDICTIONS:
            raise ValueError(f"diffusion.flow_prediction must be one of {FLOW_PREDICTIONS}, got {self.prediction!r}")
        if self.time_distribution not in FLOW_TIMES:
            raise ValueError(f"diffusion.flow_time must be one of {FLOW_TIMES}, got {self.time_distribution!r}")
        if not self.logit_std > 0:
            raise ValueError(f"diffusion.flow_logit_std must be > 0, got {self.logit_std}")

    def alpha_sigma(self, u):
        u = jnp.asarray(u, jnp.float32)
        return 1.0 - u, u

    def d_alpha_sigma(self, u):
        u = jnp.asarray(u, jnp.float32)
        return -jnp.ones_like(u), jnp.ones_like(u)

    def sigma_tilde(self, u):
        u = jnp.asarray(u, jnp.float32)
        return u / (1.0 - u)  # +inf at t = 1

    def u_of_sigma_tilde(self, s):
        return s / (1.0 + s)

    def diffusion_sq(self, u):
        return jnp.asarray(u, jnp.float32)  # SiT's default diffusion coefficient w(t) = sigma_t

    def prior_scale(self, u):
        return 1.0

    def sample_t(self, key, batch: int):
        if self.time_distribution == "uniform":
            return jax.random.uniform(key, (batch,))
        return jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, (batch,)))

    def x0_eps(self, denoise: Denoise, x, u, cond=None):
        out = denoise(x, FLOW_TIME_SCALE * jnp.asarray(u, jnp.float32), cond).astype(jnp.float32)
        t = _bcast(u, x)
        if self.prediction == "v":
            return x - t * out, x + (1.0 - t) * out
        return out, (x - (1.0 - t) * out) / jnp.maximum(t, FLOW_X0_MIN_T)

    def loss(self, denoise: Denoise, x0, key, cond=None):
        """||v_hat - v||^2 with v = eps - x0. For x0-prediction v_hat - v = (x0 - x0_hat) / t, computed as that with t
        clipped at 0.05 (Li & He 2025), so an exact x0 has zero loss at every t."""
        t_key, n_key = jax.random.split(key)
        t = self.sample_t(t_key, x0.shape[0])
        noise = jax.random.normal(n_key, x0.shape, x0.dtype)
        alpha, sigma = (_bcast(a, x0) for a in self.alpha_sigma(t))
        x_t = alpha * x0 + sigma * noise
        out = denoise(x_t, FLOW_TIME_SCALE * t, cond).astype(jnp.float32)
        if self.prediction == "v":
            return _per_example_mse(out, noise - x0)
        return _per_example_mse(out, x0) / jnp.maximum(t, FLOW_X0_MIN_T) ** 2

    def time_grid(self, num_steps: int, shift: float = 1.0, t_end: Optional[float] = None) -> np.ndarray:
        """t = linspace(1, t_end, N) shifted by t -> shift t / (1 + (shift - 1) t), then 0. t_end defaults to 1/N
        (the uniform grid linspace(1, 0, N + 1)); diffusers' FlowMatchEulerDiscreteScheduler uses 1/1000."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if not shift > 0:
            raise ValueError(f"sampling.shift must be > 0, got {shift}")
        t = np.linspace(1.0, 1.0 / num_steps if t_end is None else t_end, num_steps)
        return np.append(shift * t / (1.0 + (shift - 1.0) * t), 0.0)

    def sample(self, denoise: Denoise, x_T, key, cond=None, sampler: str = "heun", num_steps: Optional[int] = None,
               shift: float = 1.0, **kwargs):
        if sampler not in SOLVERS:
            raise _no_discrete_sampler(self.name, sampler)
        for k in ("spacing", "rho"):
            kwargs.pop(k, None)
        if kwargs.pop("final_alpha_cumprod", None) is not None:
            raise ValueError("final_alpha_cumprod is a ddim option; the flow process ends at t = 0")
        grid = self.time_grid(num_steps or DEFAULT_STEPS[sampler], shift)
        return solve(self, denoise, x_T, key, cond, grid, sampler, **kwargs)


# ---------------------------------------------------------------------------------------------------------- edm


@dataclasses.dataclass(frozen=True)
class EDMProcess(VarianceExploding):
    """Karras et al. 2022: x = x0 + sigma eps, preconditioned denoiser, log-normal sigma, lambda-weighted loss."""
    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    name = "edm"

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < diffusion.edm_sigma_min < edm_sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not (self.sigma_data > 0 and self.p_std > 0):
            raise ValueError(f"diffusion.edm_sigma_data and edm_p_std must be > 0, got {self.sigma_data}, {self.p_std}")

    def prior_scale(self, u):
        return float(u)  # EDM Algorithm 2: x_0 ~ N(0, t_0^2 I)

    def preconditioning(self, sigma):
        """(c_skip, c_out, c_in, c_noise) of EDM Table 1."""
        sd2 = self.sigma_data**2
        s2 = sigma**2
        return sd2 / (s2 + sd2), sigma * self.sigma_data * jax.lax.rsqrt(s2 + sd2), jax.lax.rsqrt(s2 + sd2), \
            0.25 * jnp.log(sigma)

    def denoiser(self, denoise: Denoise, x, sigma, cond=None):
        """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)."""
        sigma = jnp.asarray(sigma, jnp.float32)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        out = denoise(_bcast(c_in, x) * x, c_noise, cond).astype(jnp.float32)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * out

    def x0_eps(self, denoise: Denoise, x, u, cond=None):
        d = self.denoiser(denoise, x, u, cond)
        return d, (x - d) / _bcast(u, x)

    def loss_weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def loss(self, denoise: Denoise, x0, key, cond=None):
        s_key, n_key = jax.random.split(key)
        sigma = jnp.exp(self.p_mean + self.p_std * jax.random.normal(s_key, (x0.shape[0],)))
        noise = jax.random.normal(n_key, x0.shape, x0.dtype)
        d = self.denoiser(denoise, x0 + _bcast(sigma, x0) * noise, sigma, cond)
        return self.loss_weight(sigma) * _per_example_mse(d, x0)

    def time_grid(self, num_steps: int, rho: float = 7.0) -> np.ndarray:
        return np.append(karras_sigmas(num_steps, self.sigma_min, self.sigma_max, rho), 0.0)

    def sample(self, denoise: Denoise, x_T, key, cond=None, sampler: str = "heun", num_steps: Optional[int] = None,
               rho: float = 7.0, **kwargs):
        if sampler not in SOLVERS:
            raise _no_discrete_sampler(self.name, sampler)
        for k in ("spacing", "shift"):
            kwargs.pop(k, None)
        if kwargs.pop("final_alpha_cumprod", None) is not None:
            raise ValueError("final_alpha_cumprod is a ddim option; the edm process ends at sigma = 0")
        grid = self.time_grid(num_steps or DEFAULT_STEPS[sampler], rho)
        return solve(self, denoise, x_T, key, cond, grid, sampler, **kwargs)


# ------------------------------------------------------------------------------------------------------ factory


def _ddpm_from_config(c, schedule: Optional[Schedule]) -> DDPMProcess:
    check_prediction_type(c.prediction_type)
    return DDPMProcess(schedule if schedule is not None else make_schedule(c.schedule, c.num_timesteps),
                       c.prediction_type, c.loss_weighting)


def _flow_from_config(c, schedule) -> FlowProcess:
    return FlowProcess(c.flow_prediction, c.flow_time, float(c.flow_logit_mean), float(c.flow_logit_std))


def _edm_from_config(c, schedule) -> EDMProcess:
    return EDMProcess(float(c.edm_sigma_data), float(c.edm_p_mean), float(c.edm_p_std), float(c.edm_sigma_min),
                      float(c.edm_sigma_max))


# diffusion.process -> builder(config.diffusion, ddpm schedule or None): a new process is a class + one line here
PROCESS_BUILDERS = {"ddpm": _ddpm_from_config, "flow": _flow_from_config, "edm": _edm_from_config}


def make_process(diffusion_config, schedule: Optional[Schedule] = None):
    """The process of ``config.diffusion`` (``schedule``: the ddpm process's schedule, built from the config if None)."""
    name = diffusion_config.get("process", "ddpm")
    if name not in PROCESS_BUILDERS:
        raise ValueError(f"unknown diffusion.process {name!r}; use one of {tuple(PROCESS_BUILDERS)}")
    if name != "ddpm" and (diffusion_config.get("prediction_type", "eps") != "eps"
                           or diffusion_config.get("loss_weighting", "none") != "none"):
        raise ValueError(f"diffusion.prediction_type and diffusion.loss_weighting apply to process ddpm; process "
                         f"{name!r} has its own (flow: diffusion.flow_prediction; edm: its preconditioning)")
    return PROCESS_BUILDERS[name](diffusion_config, schedule)
