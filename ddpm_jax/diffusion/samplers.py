"""Samplers: one ``lax.scan`` loop (:func:`sample_loop`) and one pure step function per method.

A model is any callable ``denoise(x_t, t, cond) -> prediction`` (eps, x0 or v). Each step maps the current sample at
timestep ``t`` to the next, less noisy timestep ``s`` (``s = -1`` is the clean end) given the x0 and eps estimates.

- DDPM ancestral (Ho et al. 2020, eq. 6-7), fixed-small (beta-tilde) or fixed-large (beta) variance, on any
  respaced chain (Nichol & Dhariwal 2021, sec. 4);
- DDIM (Song et al. 2021, eq. 12) with eta, and optionally a final alpha-bar below 1 (diffusers' DDIMScheduler
  ``set_alpha_to_one=False``, Stable Diffusion's setting; see :func:`ddim_sample`);
- DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), multistep second order in lambda = log(alpha / sigma).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.diffusion.solvers import DEFAULT_STEPS as SOLVER_DEFAULT_STEPS, SOLVERS
from ddpm_jax.diffusion.solvers import num_function_evaluations as solver_nfe
from ddpm_jax.diffusion.process import _bcast, posterior_mean_variance, prediction_to_x0_eps, x0_to_eps
from ddpm_jax.diffusion.schedules import Schedule, respace_timesteps

Denoise = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]
VARIANCES = ("fixed_small", "fixed_large")


# ----------------------------------------------------------------------------------------------------- steps


def ddpm_step(schedule: Schedule, x_t, t, s, x0, noise, variance: str = "fixed_small"):
    """Ancestral step x_s ~ q(x_s | x_t, x0_hat); no noise is added on the final step (s < 0)."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown DDPM variance {variance!r}; use one of {VARIANCES}")
    mean, var_small, var_large = posterior_mean_variance(schedule, x0, x_t, t, s)
    var = var_small if variance == "fixed_small" else var_large
    last = _bcast(jnp.asarray(s) < 0, x_t)
    return mean + jnp.where(last, 0.0, jnp.sqrt(var)) * noise


FinalAlphaCumprod = Optional[Union[float, str]]


def final_log_alpha_bar(schedule: Schedule, final_alpha_cumprod: FinalAlphaCumprod):
    """log alpha-bar that DDIM's last step (s = -1) lands on: None for 1 (the clean end; the schedule's own value).

    ``final_alpha_cumprod`` is None, a number in (0, 1] (concrete, not traced), or ``"first"``: alpha-bar_0 of the
    schedule, i.e. diffusers' ``set_alpha_to_one=False`` (``final_alpha_cumprod = alphas_cumprod[0]``). ``"first"``
    also works under ``jit`` with a traced schedule; the number ``float(schedule.alpha_bar(0))`` is equivalent eagerly.
    """
    if final_alpha_cumprod is None:
        return None
    if isinstance(final_alpha_cumprod, str):
        if final_alpha_cumprod != "first":
            raise ValueError(f"final_alpha_cumprod must be None, a number in (0, 1] or 'first', "
                             f"got {final_alpha_cumprod!r}")
        return schedule.log_alphas_cumprod[0]
    value = float(final_alpha_cumprod)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"final_alpha_cumprod must be in (0, 1], got {value}")
    return jnp.float32(np.log(value))


def _log_alpha_bar_to(schedule: Schedule, s, final_log):
    """log alpha-bar at the target ``s``, with ``final_log`` (if not None) in place of 0 where s < 0."""
    log_ab_s = schedule.log_alpha_bar(s)
    return log_ab_s if final_log is None else jnp.where(jnp.asarray(s) < 0, final_log, log_ab_s)


def ddim_sigma(schedule: Schedule, t, s, eta, final_alpha_cumprod: FinalAlphaCumprod = None):
    """sigma_t(eta) of DDIM eq. 16: eta * sqrt((1 - abar_s)/(1 - abar_t)) * sqrt(1 - abar_t/abar_s).

    abar_s at s < 0 is 1 (sigma = 0: the last step is deterministic), or ``final_alpha_cumprod`` when given (see
    :func:`final_log_alpha_bar`; diffusers then adds noise on the last step too). A final alpha-bar at or below
    abar_t (e.g. alpha-bar_0 given as a rounded number, from t = 0) gives sigma = 0 rather than NaN.
    """
    final_log = final_log_alpha_bar(schedule, final_alpha_cumprod)
    log_ab_s = _log_alpha_bar_to(schedule, s, final_log)
    ratio = -jnp.expm1(log_ab_s) / schedule.one_minus_alpha_bar(t)
    one_minus_ts = -jnp.expm1(schedule.log_alpha_bar(t) - log_ab_s)
    if final_log is not None:
        one_minus_ts = jnp.maximum(one_minus_ts, 0.0)
    return eta * jnp.sqrt(ratio * one_minus_ts)


def ddim_step(schedule: Schedule, x_t, t, s, x0, eps, noise, eta: float = 0.0,
              final_alpha_cumprod: FinalAlphaCumprod = None):
    """DDIM eq. 12: x_s = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma^2) eps + sigma z.

    At s < 0, abar_s is 1 (x_s = x0) unless ``final_alpha_cumprod`` is given (see :func:`final_log_alpha_bar`).
    """
    log_ab_s = _log_alpha_bar_to(schedule, s, final_log_alpha_bar(schedule, final_alpha_cumprod))
    abar_s = _bcast(jnp.exp(log_ab_s), x_t)
    sigma = _bcast(ddim_sigma(schedule, t, s, eta, final_alpha_cumprod), x_t)
    direction = jnp.sqrt(jnp.maximum(_bcast(-jnp.expm1(log_ab_s), x_t) - sigma**2, 0.0)) * eps
    return jnp.sqrt(abar_s) * x0 + direction + sigma * noise


def half_log_snr(schedule: Schedule, t):
    """lambda_t = log(alpha_t / sigma_t) as DPM-Solver defines it (half the log-SNR); +inf at t < 0."""
    return 0.5 * schedule.log_snr_at(t)


def dpm_solver_pp_2m_step(schedule: Schedule, x_t, t, s, x0, x0_prev, t_prev, first_order):
    """DPM-Solver++(2M) data-prediction update from t to s, using the x0 estimate of the previous step (at t_prev).

    first order: x_s = (sigma_s/sigma_t) x_t - alpha_s (e^{-h} - 1) D0, h = lambda_s - lambda_t
    second order adds -0.5 alpha_s (e^{-h} - 1) D1, D1 = (D0 - x0_prev) / r, r = (lambda_t - lambda_prev) / h.
    At s < 0 (sigma_s = 0) the update is x0 itself.
    """
    lam_t, lam_s, lam_p = (_bcast(half_log_snr(schedule, u), x_t) for u in (t, s, t_prev))
    h = lam_s - lam_t
    phi = jnp.expm1(-h)
    alpha_s = jnp.sqrt(_bcast(schedule.alpha_bar(s), x_t))
    sigma_s = jnp.sqrt(_bcast(schedule.one_minus_alpha_bar(s), x_t))
    sigma_t = jnp.sqrt(_bcast(schedule.one_minus_alpha_bar(t), x_t))
    x_first = (sigma_s / sigma_t) * x_t - alpha_s * phi * x0
    r = (lam_t - lam_p) / h
    r = jnp.where(r == 0, 1.0, r)  # first step: no previous estimate, the second-order branch is unused
    x_second = x_first - 0.5 * alpha_s * phi * (x0 - x0_prev) / r
    x_s = jnp.where(_bcast(first_order, x_t), x_first, x_second)
    return jnp.where(_bcast(jnp.asarray(s) < 0, x_t), x0, x_s)


# ------------------------------------------------------------------------------------------------------ loop


def sample_loop(
    denoise: Denoise,
    schedule: Schedule,
    x_T: jnp.ndarray,
    timesteps: np.ndarray,
    step: Callable,
    key: jax.Array,
    cond: Any = None,
    prediction_type: str = "eps",
    x0_transform: Optional[Callable] = None,
    init_carry: Any = (),
    return_trajectory: bool = False,
):
    """Run ``step`` over the decreasing ``timesteps`` in one ``lax.scan`` (compiled once, not a loop of dispatches).

    ``step(x_t, t, s, x0, eps, key, carry, index) -> (x_s, carry)`` with t, s broadcast per example. The network is
    called once per step; ``x0_transform`` (clipping / dynamic thresholding) is applied to every x0 estimate and eps
    is recomputed from the transformed x0, as GLIDE and guided-diffusion do (diffusers: use_clipped_model_output).
    """
    timesteps = np.asarray(timesteps, np.int32)
    if timesteps.ndim != 1 or timesteps.size == 0 or np.any(np.diff(timesteps) >= 0):
        raise ValueError(f"timesteps must be a non-empty strictly decreasing 1-D array, got {timesteps}")
    if timesteps[0] >= schedule.num_timesteps or timesteps[-1] < 0:
        raise ValueError(f"timesteps must lie in [0, {schedule.num_timesteps - 1}]")
    targets = np.append(timesteps[1:], -1).astype(np.int32)
    batch = x_T.shape[0]

    def body(state, xs):
        x, carry = state
        t, s, index = xs
        tb, sb = jnp.full((batch,), t), jnp.full((batch,), s)
        prediction = denoise(x, tb, cond).astype(jnp.float32)
        x0, eps = prediction_to_x0_eps(schedule, x, tb, prediction, prediction_type)
        if x0_transform is not None:
            x0 = x0_transform(x0)
            eps = x0_to_eps(schedule, x, tb, x0)
        x_next, carry = step(x, tb, sb, x0, eps, jax.random.fold_in(key, index), carry, index)
        return (x_next, carry), (x_next if return_trajectory else None)

    xs = (jnp.asarray(timesteps), jnp.asarray(targets), jnp.arange(len(timesteps)))
    (x, _), trajectory = jax.lax.scan(body, (x_T.astype(jnp.float32), init_carry), xs)
    return (x, trajectory) if return_trajectory else x


# ------------------------------------------------------------------------------------------------- samplers


def _only_ddim(sampler: str, final_alpha_cumprod) -> None:
    if final_alpha_cumprod is not None:
        raise ValueError(f"final_alpha_cumprod is a DDIM-only option (diffusers' set_alpha_to_one); "
                         f"sampler {sampler!r} always ends at alpha-bar 1, pass None")


def ddpm_sample(denoise, schedule, x_T, key, cond=None, num_steps: Optional[int] = None,
                variance: str = "fixed_small", spacing: str = "leading", final_alpha_cumprod: FinalAlphaCumprod = None,
                **loop_kwargs):
    """Ancestral sampling over all T steps, or a respaced chain of ``num_steps``. It always ends at alpha-bar 1, as
    diffusers' DDPMScheduler does; ``final_alpha_cumprod`` must be None (accepted so one config can feed any sampler).
    """
    _only_ddim("ddpm", final_alpha_cumprod)
    timesteps = respace_timesteps(schedule.num_timesteps, num_steps or schedule.num_timesteps, spacing)

    def step(x, t, s, x0, eps, key, carry, index):
        return ddpm_step(schedule, x, t, s, x0, jax.random.normal(key, x.shape), variance), carry

    return sample_loop(denoise, schedule, x_T, timesteps, step, key, cond, **loop_kwargs)


def ddim_sample(denoise, schedule, x_T, key, cond=None, num_steps: int = 50, eta: float = 0.0,
                spacing: str = "leading", final_alpha_cumprod: FinalAlphaCumprod = None, **loop_kwargs):
    """DDIM: eta = 0 is deterministic (the probability-flow ODE), eta = 1 has DDPM's posterior variance.

    ``final_alpha_cumprod`` is the alpha-bar the last step lands on (diffusers' DDIMScheduler ``final_alpha_cumprod``):
    None (default) is 1, the clean end, and the result is the last x0 estimate; ``"first"`` is the schedule's
    alpha-bar_0, diffusers' ``set_alpha_to_one=False`` as Stable Diffusion's scheduler config sets it, and the result
    is then x at that (small) noise level, as diffusers returns it; a number in (0, 1] is used as given. With
    ``spacing="trailing"`` and num_steps dividing T, ``"first"`` reproduces diffusers' DDIMScheduler(
    timestep_spacing="trailing", set_alpha_to_one=False) trajectory (tests/test_golden_schedulers.py).
    """
    timesteps = respace_timesteps(schedule.num_timesteps, num_steps, spacing)
    final_log_alpha_bar(schedule, final_alpha_cumprod)  # validate before tracing the loop

    def step(x, t, s, x0, eps, key, carry, index):
        noise = jax.random.normal(key, x.shape) if eta else jnp.zeros_like(x)
        return ddim_step(schedule, x, t, s, x0, eps, noise, eta, final_alpha_cumprod), carry

    return sample_loop(denoise, schedule, x_T, timesteps, step, key, cond, **loop_kwargs)


def dpm_solver_pp_2m_sample(denoise, schedule, x_T, key, cond=None, num_steps: int = 20,
                            spacing: str = "linspace", final_alpha_cumprod: FinalAlphaCumprod = None, **loop_kwargs):
    """DPM-Solver++(2M) for 10-25 step sampling: first order on the first step (no previous estimate yet), second
    order after; the last step lands on sigma = 0 and returns the x0 estimate (diffusers' final_sigmas_type="zero").
    ``final_alpha_cumprod`` must be None (diffusers' final_sigmas_type="sigma_min" is its analogue, not implemented).
    """
    _only_ddim("dpm_solver_pp_2m", final_alpha_cumprod)
    if spacing == "linspace":  # diffusers: linspace over [0, T-1] with S+1 points, dropping t = 0
        timesteps = np.round(np.linspace(0, schedule.num_timesteps - 1, num_steps + 1))[::-1][:-1].astype(np.int32)
    else:
        timesteps = respace_timesteps(schedule.num_timesteps, num_steps, spacing)

    def step(x, t, s, x0, eps, key, carry, index):
        x0_prev, t_prev = carry
        first = index == 0
        x_s = dpm_solver_pp_2m_step(schedule, x, t, s, x0, x0_prev, t_prev, first)
        return x_s, (x0, t)

    init = (jnp.zeros(x_T.shape, jnp.float32), jnp.full((x_T.shape[0],), timesteps[0], jnp.int32))
    return sample_loop(denoise, schedule, x_T, timesteps, step, key, cond, init_carry=init, **loop_kwargs)


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm_solver_pp_2m": dpm_solver_pp_2m_sample}


def sample(denoise, schedule, x_T, key, sampler: str = "ddim", **kwargs):
    """Dispatch to a sampler by name (``ddpm``, ``ddim``, ``dpm_solver_pp_2m``). Every sampler accepts
    ``final_alpha_cumprod=None``; only ``ddim`` accepts another value (see :func:`ddim_sample`)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)}")
    return SAMPLERS[sampler](denoise, schedule, x_T, key, **kwargs)


def num_function_evaluations(sampler: str, num_steps: Optional[int], num_timesteps: int) -> int:
    """Network calls per sampling run (classifier-free guidance doubles each call's batch, not the count); the ODE/SDE
    solvers of :mod:`ddpm_jax.diffusion.solvers` included (heun: 2N - 1)."""
    if sampler in SOLVERS:
        return solver_nfe(sampler, num_steps or SOLVER_DEFAULT_STEPS[sampler])
    return num_steps or (num_timesteps if sampler == "ddpm" else {"ddim": 50, "dpm_solver_pp_2m": 20}[sampler])
