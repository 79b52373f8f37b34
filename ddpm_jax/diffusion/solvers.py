"""ODE and SDE solvers over a continuous time grid, for any process x_u = alpha(u) x0 + sigma(u) eps.

The probability-flow ODE of such a process is dx/du = alpha'(u) x0_hat + sigma'(u) eps_hat (for rectified flow the
velocity eps - x0, for EDM's x = x0 + sigma eps the eps estimate (x - D) / sigma). On a decreasing grid
u_0 > u_1 > ... > u_N = 0:

- ``euler``: x_{i+1} = x_i + (u_{i+1} - u_i) f(x_i, u_i) (diffusers' FlowMatchEulerDiscreteScheduler and
  EDMEulerScheduler; 1 network call per step);
- ``heun``: EDM Algorithm 2 (Karras et al. 2022): optional churn (S_churn, S_tmin, S_tmax, S_noise) raises the noise
  level from u_i to u_hat by the exact forward transition, an Euler step to u_{i+1}, then the trapezoidal correction
  unless u_{i+1} = 0 (2N - 1 calls);
- ``euler_maruyama``: the reverse SDE dx = [f - g^2 score / 2] du + g dW with score = -eps_hat / sigma and the
  process's diffusion coefficient g(u)^2; the last step is a deterministic Euler step (no noise at u = 0).

All run in one ``lax.scan`` (a new solver is a step function plus one line in :data:`SOLVER_STEPS`). The churn noise
of step i is ``jax.random.normal(fold_in(key, i), x.shape)`` and Euler-Maruyama's ``fold_in(fold_in(key, i), 1)``;
tests rebuild them to compare with float64 references.
``x0_transform`` (clipping / thresholding) is applied to each x0 estimate and eps recomputed from it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np


DEFAULT_STEPS = {"euler": 50, "heun": 18, "euler_maruyama": 100}  # heun 18: EDM's CIFAR-10 setting (35 calls)
SOLVER_OPTIONS = ("s_churn", "s_tmin", "s_tmax", "s_noise", "shift", "rho")


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """EDM eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < N."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if not rho > 0:
        raise ValueError(f"sampling.rho must be > 0, got {rho}")
    ramp = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def num_function_evaluations(sampler: str, num_steps: int) -> int:
    """Network calls of a solver run (heun: 2N - 1, the last step has no correction)."""
    return 2 * num_steps - 1 if sampler == "heun" else num_steps


def _check_grid(grid) -> np.ndarray:
    grid = np.asarray(grid, np.float64)
    if grid.ndim != 1 or grid.size < 2 or np.any(np.diff(grid) >= 0) or grid[-1] != 0.0 or not np.all(np.isfinite(grid)):
        raise ValueError(f"the time grid must be a finite strictly decreasing 1-D array ending at 0, got {grid}")
    return grid


class _Field:
    """The process's estimates and ODE velocity at (x, u), with ``x0_transform`` applied (what a step function sees)."""

    def __init__(self, process, denoise, cond, batch: int, x0_transform):
        self.process, self.denoise, self.cond, self.batch, self.x0_transform = process, denoise, cond, batch, x0_transform

    def estimates(self, x, u):
        ub = jnp.full((self.batch,), u, jnp.float32)
        x0, eps = self.process.x0_eps(self.denoise, x, ub, self.cond)
        if self.x0_transform is not None:
            x0 = self.x0_transform(x0)
            eps = self.process.eps_from_x0(x, ub, x0)
        return x0, eps

    def velocity(self, x0, eps, u):
        """dx/du = alpha'(u) x0 + sigma'(u) eps (the probability-flow ODE)."""
        da, ds = self.process.d_alpha_sigma(u)
        return da * x0 + ds * eps


def euler_step(field: _Field, x, u, u_next, key):
    return x + (u_next - u) * field.velocity(*field.estimates(x, u), u)


def heun_step(field: _Field, x, u, u_next, key):
    """Euler predictor, then the trapezoidal corrector unless u_next = 0 (EDM Alg. 2 lines 7-10)."""
    dt = u_next - u
    d = field.velocity(*field.estimates(x, u), u)
    x_euler = x + dt * d

    def correct(x_euler):
        return x + dt * 0.5 * (d + field.velocity(*field.estimates(x_euler, u_next), u_next))

    return jax.lax.cond(u_next > 0, correct, lambda xe: xe, x_euler)


def euler_maruyama_step(field: _Field, x, u, u_next, key):
    """x + dt (f + g^2 eps / (2 sigma)) + sqrt(g^2 |dt|) z (score = -eps / sigma); plain Euler into u_next = 0."""
    dt = u_next - u
    x0, eps = field.estimates(x, u)
    d = field.velocity(x0, eps, u)
    _, sigma = field.process.alpha_sigma(u)
    g2 = field.process.diffusion_sq(u)
    noise = jnp.sqrt(g2 * jnp.abs(dt)) * jax.random.normal(jax.random.fold_in(key, 1), x.shape)
    return jnp.where(u_next > 0, x + dt * (d + 0.5 * g2 * eps / sigma) + noise, x + dt * d)


# sampling.sampler -> step(field, x, u, u_next, key): a new solver is one step function plus one line here
SOLVER_STEPS = {"euler": euler_step, "heun": heun_step, "euler_maruyama": euler_maruyama_step}
SOLVERS = tuple(SOLVER_STEPS)
CHURN_SOLVERS = ("euler", "heun")  # EDM's churn before an ODE step


def solve(process, denoise: Callable, x_T: jnp.ndarray, key: jax.Array, cond: Any = None, grid=None,
          method: str = "heun", s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
          s_noise: float = 1.0, x0_transform: Optional[Callable] = None, return_trajectory: bool = False):
    """Integrate from u = grid[0] to 0; ``x_T`` is standard normal noise, scaled here by ``process.prior_scale``."""
    if method not in SOLVER_STEPS:
        raise ValueError(f"unknown solver {method!r}; use one of {SOLVERS}")
    grid = _check_grid(grid)
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")
    if s_churn and method not in CHURN_SOLVERS:
        raise ValueError(f"s_churn applies to the {' and '.join(CHURN_SOLVERS)} solvers, not {method!r}")
    n = grid.size - 1
    gamma_max = min(s_churn / n, math.sqrt(2.0) - 1.0)
    field = _Field(process, denoise, cond, x_T.shape[0], x0_transform)
    step = SOLVER_STEPS[method]

    def churn(x, u, key):
        """EDM Alg. 2 lines 4-6 in the variance-exploding level sigma~ = sigma / alpha, mapped back to u."""
        st = process.sigma_tilde(u)
        finite = jnp.isfinite(st)
        gamma = jnp.where(finite & (st >= s_tmin) & (st <= s_tmax), gamma_max, 0.0)
        u_hat = jnp.where(gamma > 0, process.u_of_sigma_tilde(jnp.where(finite, st, 1.0) * (1.0 + gamma)), u)
        a_u, s_u = process.alpha_sigma(u)
        a_h, s_h = process.alpha_sigma(u_hat)
        ratio = a_h / jnp.where(a_u == 0, 1.0, a_u)
        std = jnp.sqrt(jnp.maximum(s_h**2 - (ratio * s_u) ** 2, 0.0)) * s_noise
        x_hat = ratio * x + std * jax.random.normal(key, x.shape)
        return jnp.where(gamma > 0, x_hat, x), u_hat

    def body(x, xs):
        u, u_next, i = xs
        k = jax.random.fold_in(key, i)
        if gamma_max > 0:
            x, u = churn(x, u, k)
        x_next = step(field, x, u, u_next, k)
        return x_next, (x_next if return_trajectory else None)

    x = x_T.astype(jnp.float32) * process.prior_scale(grid[0])
    xs = (jnp.asarray(grid[:-1], jnp.float32), jnp.asarray(grid[1:], jnp.float32), jnp.arange(n))
    x, trajectory = jax.lax.scan(body, x, xs)
    return (x, trajectory) if return_trajectory else x
