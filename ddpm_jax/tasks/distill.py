"""Task ``distill``: a few-step student of a trained diffusion workdir (pixel or latent, U-Net or DiT).

The teacher (``distill.teacher_workdir``) is read only: its recorded config and EMA parameters, loaded with
:func:`~ddpm_jax.tasks.loading.load_trained`. The student has the teacher's architecture and starts from its weights,
so the student's :class:`~ddpm_jax.tasks.base.Run` is the teacher's (data, model, latent space, conditioning, schedule)
with this task's loss and samplers; the run's config is the teacher's with this config's seed, task, training, optim,
sampling, eval, mesh, distributed and distill groups. Settings of the teacher's groups (model, data, diffusion, ...)
given here must equal the teacher's (one-line error otherwise); ``data.data_dir`` and ``latent.autoencoder_workdir``
may point elsewhere.

The trained params are ``{"student": S, "teacher": T, ...}``: what is not the student is frozen (no optimizer update,
no optimizer state; :meth:`Task.trainable`) and changed only by the task's step transition, a pure function of the
step, so it is checkpointed with the run and resume is exact.

- ``progressive`` (Salimans & Ho 2022, Algorithm 2): round r = min(step // steps_per_round, R - 1) of
  R = log2(start_steps / end_steps) rounds trains a student with N = start_steps / 2^(r+1) DDIM steps to match TWO
  DDIM steps of the round's teacher (2N steps, trailing spacing, so the student's grid is every other point of the
  teacher's): x-target x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t), loss
  max(SNR_t, 1) ||x~ - x_hat_student(z_t)||^2 (truncated SNR weighting). At the first step of round r >= 1 the
  teacher becomes the student's EMA. ``params["num_steps"]`` is the student's N (the params after step k were trained
  in round r(k - 1)), so ``--mode=sample`` samples with it unless ``sampling.num_steps`` is set.
- ``consistency`` (Song et al. 2023, consistency distillation): N = ``num_scales`` Karras sigmas between the
  teacher's smallest and largest noise levels in the variance-exploding view (ddpm: sigma~ = sqrt((1 - abar) / abar)
  of its schedule; edm: its sigma range); the teacher's ODE step (DDIM or Heun) from sigma_{n+1} to sigma_n, the EMA
  target network theta^- (``target_ema``, updated at every step), loss ||f_theta(x_{n+1}, s_{n+1}) -
  f_theta^-(x^_n, s_n)||^2 and the boundary-condition parameterisation f(x, s) = c_skip(s) x + c_out(s) F(x, s),
  c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = sd (s - s_min) / sqrt(sd^2 + s^2), where F is the network's raw
  output in EDM's preconditioning (F = (D - c_skip_edm x) / c_out_edm for its x0 estimate D), so f(x, s_min) = x
  exactly and f = D at init for s >> s_min. Sampling: 1-step, or multistep (Algorithm 1) on points of the grid.

A guided teacher is distilled at a fixed w (``distill.guidance_scale``; default the teacher's recorded sampling
guidance; Meng et al. 2023 with w fixed): the student learns the guided teacher and is sampled without guidance.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax import storage
from ddpm_jax.data import to_uint8
from ddpm_jax.default_config import base_config
from ddpm_jax.diffusion.process import _bcast
from ddpm_jax.models.denoiser import denoiser_fn
from ddpm_jax.tasks.base import Samples, Wrapper
from ddpm_jax.tasks.loading import load_trained
from ddpm_jax.tasks.sampling import generate as generate_batches
from ddpm_jax.tasks.sampling import make_sample_fn
from ddpm_jax.workdir import Workdir, params_sha256
from ddpm_jax.workdir.record import differences

log = logging.getLogger("ddpm_jax")
RECORD = "distill.json"
METHODS = ("progressive", "consistency")
TEACHER_TASKS = ("diffusion", "latent_diffusion")
WEIGHTINGS = ("truncated_snr", "snr", "none")
SOLVERS = ("ddim", "heun")
# Config groups of the student's own (the rest of the run's config is the teacher's recorded one).
STUDENT_GROUPS = ("training", "optim", "sampling", "eval", "mesh", "distributed", "distill")
PASS_THROUGH = ("data.data_dir", "latent.autoencoder_workdir")  # where the teacher's data / autoencoder now live


def _mse(a, b):
    return jnp.mean(jnp.square(a - b), axis=tuple(range(1, a.ndim)))


def x0_transform_of(sampling_config) -> Optional[Callable]:
    threshold = sampling_config.dynamic_threshold
    return diffusion.make_x0_transform(None if threshold else sampling_config.clip_x0, threshold or None)


def guided(model, params, scale: float, null_cond: Dict) -> Callable:
    """``denoise(x, t, cond)`` of ``params`` (inference mode), classifier-free guided at ``scale`` when != 1."""
    denoise = denoiser_fn(model, params)
    if scale == 1.0:
        return denoise
    return diffusion.classifier_free_guidance(denoise, scale, {k: jnp.asarray(v) for k, v in null_cond.items()})


# ------------------------------------------------------------------------------------------------ progressive


def trailing_grid(num_timesteps: int, num_steps: int) -> np.ndarray:
    """The DDIM timesteps of ``num_steps`` trailing-spaced steps, then -1 (the clean end)."""
    return np.append(diffusion.respace_timesteps(num_timesteps, num_steps, "trailing"), -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Rounds:
    """Progressive distillation's round structure: a pure function of the global optimizer step."""

    start_steps: int
    end_steps: int
    steps_per_round: int
    num_timesteps: int

    @property
    def num_rounds(self) -> int:
        return int(round(math.log2(self.start_steps // self.end_steps)))

    def student_steps(self, r: int) -> int:
        return self.start_steps >> (r + 1)

    def round_of(self, step):
        """The round optimizer step ``step`` (0-based) trains in (numpy or jnp)."""
        lib = jnp if isinstance(step, jax.Array) else np
        return lib.minimum(step // self.steps_per_round, self.num_rounds - 1)

    def steps_after(self, done: int) -> int:
        """The student's DDIM step count after ``done`` optimizer steps (the teacher's start_steps at 0)."""
        return self.start_steps if done <= 0 else self.student_steps(int(self.round_of(done - 1)))

    def tables(self):
        """(student grids [R, N_max + 1], teacher grids [R, 2 N_max + 1]) padded with -1; row r is round r's."""
        n_max = self.student_steps(0)
        student = np.full((self.num_rounds, n_max + 1), -1, np.int32)
        teacher = np.full((self.num_rounds, 2 * n_max + 1), -1, np.int32)
        for r in range(self.num_rounds):
            n = self.student_steps(r)
            student[r, :n + 1] = trailing_grid(self.num_timesteps, n)
            teacher[r, :2 * n + 1] = trailing_grid(self.num_timesteps, 2 * n)
            if not np.array_equal(teacher[r, :2 * n + 1:2], student[r, :n + 1]):
                raise ValueError(f"the {n}-step grid is not every other point of the {2 * n}-step grid at "
                                 f"diffusion.num_timesteps={self.num_timesteps}: choose start_steps / end_steps "
                                 f"powers of 2 that divide it more evenly")
        return student, teacher

    def describe(self) -> list:
        k = self.steps_per_round
        return [{"round": r, "steps": [r * k, (r + 1) * k if r < self.num_rounds - 1 else None],
                 "teacher_steps": 2 * self.student_steps(r), "student_steps": self.student_steps(r)}
                for r in range(self.num_rounds)]


def ddim_teacher_step(denoise, schedule, prediction_type: str, x0_transform, x, t, s, cond):
    """One deterministic DDIM step (eta = 0) from timesteps t to s (per example; s = -1 is the clean end) with the
    x0 estimate transformed (clipped) as the teacher's sampler does and eps recomputed from it."""
    x0, eps = diffusion.prediction_to_x0_eps(schedule, x, t, denoise(x, t, cond).astype(jnp.float32), prediction_type)
    if x0_transform is not None:
        x0 = x0_transform(x0)
        eps = diffusion.x0_to_eps(schedule, x, t, x0)
    return diffusion.ddim_step(schedule, x, t, s, x0, eps, jnp.zeros_like(x))


def alpha_sigma(schedule, t, x):
    """sqrt(abar_t), sqrt(1 - abar_t) broadcast against x (1, 0 at t = -1)."""
    return jnp.sqrt(_bcast(schedule.alpha_bar(t), x)), jnp.sqrt(_bcast(schedule.one_minus_alpha_bar(t), x))


def progressive_target(denoise, schedule, prediction_type: str, x0_transform, z_t, t, t_mid, t_end, cond):
    """Salimans & Ho (2022), Algorithm 2: two teacher DDIM steps t -> t_mid -> t_end, and the x-target x~ with which
    ONE student DDIM step from z_t lands on the same z_t_end. Returns (x~, z_t_end)."""
    z_mid = ddim_teacher_step(denoise, schedule, prediction_type, x0_transform, z_t, t, t_mid, cond)
    z_end = ddim_teacher_step(denoise, schedule, prediction_type, x0_transform, z_mid, t_mid, t_end, cond)
    a_t, s_t = alpha_sigma(schedule, t, z_t)
    a_e, s_e = alpha_sigma(schedule, t_end, z_t)
    ratio = s_e / s_t
    return (z_end - ratio * z_t) / (a_e - ratio * a_t), z_end


class Progressive:
    def __init__(self, run, rounds: Rounds, weighting: str, scale: float, teacher_transform):
        self.run, self.rounds, self.weighting, self.scale = run, rounds, weighting, scale
        self.teacher_transform = teacher_transform
        student, teacher = rounds.tables()
        self.student_grid, self.teacher_grid = jnp.asarray(student), jnp.asarray(teacher)
        self.student_steps = jnp.asarray([rounds.student_steps(r) for r in range(rounds.num_rounds)], jnp.int32)

    def init_params(self, teacher):
        return {"student": teacher, "teacher": teacher, "num_steps": jnp.float32(self.rounds.start_steps)}

    def transition(self, params, ema_params, step):
        """At the first step of round r >= 1 the teacher becomes the student's EMA; num_steps is the round's N."""
        r = self.rounds.round_of(step)
        boundary = (step % self.rounds.steps_per_round == 0) & (step >= self.rounds.steps_per_round) & \
            (step // self.rounds.steps_per_round < self.rounds.num_rounds)
        teacher = jax.tree.map(lambda t, s: jnp.where(boundary, s, t), params["teacher"], ema_params["student"])
        return {**params, "teacher": teacher, "num_steps": self.student_steps[r].astype(jnp.float32)}

    def weight(self, t):
        snr = jnp.exp(self.run.schedule.log_snr_at(t))
        return {"truncated_snr": jnp.maximum(snr, 1.0), "snr": snr, "none": jnp.ones_like(snr)}[self.weighting]

    def terms(self, params, batch, key, step, train: bool = True) -> Dict[str, jnp.ndarray]:
        """Everything one loss evaluation computes (the test re-derives the target from these)."""
        run = self.run
        model, schedule, ptype = run.model, run.schedule, run.process.prediction_type
        k_t, k_eps, k_cond, k_drop = jax.random.split(key, 4)
        x0 = batch["image"]
        r = self.rounds.round_of(step)
        i = jax.random.randint(k_t, (x0.shape[0],), 0, self.student_steps[r])
        t, t_end, t_mid = self.student_grid[r, i], self.student_grid[r, i + 1], self.teacher_grid[r, 2 * i + 1]
        z_t = diffusion.q_sample(schedule, x0, t, jax.random.normal(k_eps, x0.shape, x0.dtype))
        cond = run.task.condition(run, batch, k_cond, train=False)
        teacher = guided(model, jax.lax.stop_gradient(params["teacher"]), self.scale, run.task.null_condition(run))
        x_tilde, z_end = progressive_target(teacher, schedule, ptype, self.teacher_transform, z_t, t, t_mid, t_end,
                                            cond)
        x_tilde = jax.lax.stop_gradient(x_tilde)
        pred = model.apply({"params": params["student"]}, z_t, t, cond, train=train, rngs={"dropout": k_drop})
        x0_student, _ = diffusion.prediction_to_x0_eps(schedule, z_t, t, pred.astype(jnp.float32), ptype)
        weight = self.weight(t)
        return {"round": r, "student_steps": self.student_steps[r], "t": t, "t_mid": t_mid, "t_end": t_end,
                "z_t": z_t, "z_end": z_end, "x_tilde": x_tilde, "x0_student": x0_student, "cond": cond,
                "weight": weight, "loss": weight * _mse(x_tilde, x0_student)}

    def loss_fn(self, params, batch, key, step=0):
        out = self.terms(params, batch, key, jnp.asarray(step))
        return jnp.mean(out["loss"]), {"distill_round": out["round"].astype(jnp.float32),
                                       "student_steps": out["student_steps"].astype(jnp.float32)}

    def default_steps(self, params) -> int:
        return int(round(float(jax.device_get(params["num_steps"]))))

    def make_sampler(self, sampling_config, num_steps: int) -> Callable:
        """fn(student params, x_T, key, cond): DDIM with ``num_steps`` trailing-spaced steps, no guidance."""
        s = sampling_config.copy_and_resolve_references()
        s.sampler, s.num_steps, s.spacing, s.guidance_scale = "ddim", int(num_steps), "trailing", 1.0
        run = self.run
        return make_sample_fn(run.model, run.process, s, run.task.null_condition(run), 1.0,
                              run.task.cond_transform(run, s))


# ------------------------------------------------------------------------------------------------ consistency


def ve_sigma_range(process) -> tuple:
    """(smallest, largest) noise level of a teacher in the variance-exploding view x / alpha = x0 + sigma eps."""
    if process.name == "ddpm":
        sigmas = process._sigmas()
        return float(sigmas[0]), float(sigmas[-1])
    if process.name == "edm":
        return float(process.sigma_min), float(process.sigma_max)
    raise ValueError(f"consistency distillation needs a variance-exploding view of the teacher (diffusion.process "
                     f"ddpm or edm), not {process.name!r}")


def consistency_sigmas(process, num_scales: int, rho: float) -> np.ndarray:
    """N Karras sigmas (rho-spaced), increasing from the teacher's smallest to its largest noise level."""
    lo, hi = ve_sigma_range(process)
    sigmas = diffusion.karras_sigmas(num_scales, lo, hi, rho)[::-1].copy()
    sigmas[0], sigmas[-1] = lo, hi
    return sigmas


def consistency_function(process, denoise, x, sigma, cond, sigma_min, sigma_data: float):
    """f(x, s) = c_skip(s) x + c_out(s) F(x, s) (Song et al. 2023, sec. 3) with F the network's output in EDM's
    preconditioning, F = (D - c_skip_edm(s) x) / c_out_edm(s) for its x0 estimate D; c_out / c_out_edm = (s - s_min)/s.
    At s = s_min: c_skip = 1 and c_out = 0 exactly, so f(x, s_min) = x."""
    d, _ = process.x0_eps(denoise, x, sigma, cond)
    s = _bcast(sigma, x)
    sd2 = sigma_data ** 2
    c_skip = sd2 / ((s - sigma_min) ** 2 + sd2)
    c_skip_edm = sd2 / (s ** 2 + sd2)
    return c_skip * x + ((s - sigma_min) / s) * (d - c_skip_edm * x)


def ode_step(process, denoise, x, u, u_next, cond, solver: str, x0_transform=None):
    """The teacher's probability-flow ODE step from u to u_next (per example): DDIM (alpha x0 + sigma eps at u_next;
    Euler in the variance-exploding view) or Heun (EDM Algorithm 1's trapezoidal step)."""
    def estimates(x, u):
        x0, eps = process.x0_eps(denoise, x, u, cond)
        if x0_transform is not None:
            x0 = x0_transform(x0)
            eps = process.eps_from_x0(x, u, x0)
        return x0, eps

    def velocity(x0, eps, u):
        da, ds = (_bcast(a, x) for a in process.d_alpha_sigma(u))
        return da * x0 + ds * eps

    x0, eps = estimates(x, u)
    if solver == "ddim":
        a, s = (_bcast(v, x) for v in process.alpha_sigma(u_next))
        return a * x0 + s * eps
    dt = _bcast(u_next - u, x)
    d = velocity(x0, eps, u)
    d2 = velocity(*estimates(x + dt * d, u_next), u_next)
    return x + dt * 0.5 * (d + d2)


def consistency_sample_indices(num_scales: int, num_steps: int) -> np.ndarray:
    """Grid indices (decreasing) of the points a K-step consistency sampler evaluates f at: K = 1 is sigma_max."""
    if not 1 <= num_steps <= num_scales - 1:
        raise ValueError(f"consistency sampling takes 1..{num_scales - 1} steps (distill.num_scales={num_scales}), "
                         f"got {num_steps}")
    return np.round(np.linspace(num_scales - 1, 0, num_steps + 1))[:-1].astype(np.int32)


def consistency_sample(process, denoise, x_T, key, cond, sigmas: np.ndarray, indices, sigma_data: float,
                       x0_transform=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): x = f(sigma_max z, sigma_max), then for each
    later point s: x = f(x + sqrt(s^2 - s_min^2) z, s). ``sigmas`` increasing; ``indices`` into it, decreasing."""
    sig = jnp.asarray(sigmas, jnp.float32)
    smin = sig[0]
    batch = x_T.shape[0]
    f = lambda x, i: consistency_function(process, denoise, x, jnp.full((batch,), sig[i]), cond, smin, sigma_data)
    x0 = f(x_T.astype(jnp.float32) * process.prior_scale(float(sigmas[indices[0]])), indices[0])

    def body(x0, xs):
        i, j = xs
        z = jax.random.normal(jax.random.fold_in(key, j), x0.shape)
        return f(x0 + jnp.sqrt(sig[i] ** 2 - smin ** 2) * z, i), None

    rest = jnp.asarray(indices[1:], jnp.int32)
    x0, _ = jax.lax.scan(body, x0, (rest, jnp.arange(len(rest))))
    return x0 if x0_transform is None else x0_transform(x0)


class Consistency:
    def __init__(self, run, dc, scale: float, teacher_transform):
        self.run, self.scale, self.teacher_transform = run, scale, teacher_transform
        self.num_scales, self.solver = int(dc.num_scales), dc.solver
        self.mu, self.sigma_data = float(dc.target_ema), float(dc.sigma_data)
        self.sigmas = consistency_sigmas(run.process, self.num_scales, float(dc.rho))

    def init_params(self, teacher):
        return {"student": teacher, "target": teacher, "teacher": teacher}

    def transition(self, params, ema_params, step):
        """theta^- <- mu theta^- + (1 - mu) theta, before every step (= after every update of theta)."""
        mu = self.mu
        target = jax.tree.map(lambda t, s: mu * t + (1.0 - mu) * s, params["target"], params["student"])
        return {**params, "target": target}

    def f(self, params, x, sigma, cond, train: bool = False, rngs=None):
        denoise = denoiser_fn(self.run.model, params, train, rngs)
        return consistency_function(self.run.process, denoise, x, sigma, cond, jnp.float32(self.sigmas[0]),
                                    self.sigma_data)

    def terms(self, params, batch, key, step, train: bool = True) -> Dict[str, jnp.ndarray]:
        run = self.run
        process = run.process
        k_n, k_z, k_cond, k_drop = jax.random.split(key, 4)
        x0 = batch["image"]
        sig = jnp.asarray(self.sigmas, jnp.float32)
        n = jax.random.randint(k_n, (x0.shape[0],), 0, self.num_scales - 1)
        s_lo, s_hi = sig[n], sig[n + 1]
        a, s = (_bcast(v, x0) for v in process.alpha_sigma(s_hi))
        x_hi = a * x0 + s * jax.random.normal(k_z, x0.shape, x0.dtype)
        cond = run.task.condition(run, batch, k_cond, train=False)
        teacher = guided(run.model, jax.lax.stop_gradient(params["teacher"]), self.scale,
                         run.task.null_condition(run))
        x_lo = jax.lax.stop_gradient(ode_step(process, teacher, x_hi, s_hi, s_lo, cond, self.solver,
                                              self.teacher_transform))
        f_student = self.f(params["student"], x_hi, s_hi, cond, train, {"dropout": k_drop})
        f_target = jax.lax.stop_gradient(self.f(jax.lax.stop_gradient(params["target"]), x_lo, s_lo, cond))
        return {"n": n, "x_hi": x_hi, "x_lo": x_lo, "f_student": f_student, "f_target": f_target,
                "loss": _mse(f_student, f_target)}

    def loss_fn(self, params, batch, key, step=0):
        return jnp.mean(self.terms(params, batch, key, jnp.asarray(step))["loss"]), {}

    def default_steps(self, params) -> int:
        return 1

    def make_sampler(self, sampling_config, num_steps: int) -> Callable:
        run = self.run
        indices = consistency_sample_indices(self.num_scales, num_steps)
        transform = x0_transform_of(sampling_config)
        cond_transform = run.task.cond_transform(run, sampling_config)

        @jax.jit
        def sample_fn(params, x_T, key, cond):
            if cond_transform is not None:
                cond, key = cond_transform(cond, key)
            return consistency_sample(run.process, denoiser_fn(run.model, params), x_T, key, cond, self.sigmas,
                                      indices, self.sigma_data, transform)

        return sample_fn


# ------------------------------------------------------------------------------------------------------ task


class StudentSampler:
    """``fn(params, x_T, key, cond)`` for :func:`~ddpm_jax.tasks.sampling.generate`: takes the whole params tree (or
    its eval part), picks the step count (``sampling.num_steps``, or the student's own: progressive's N recorded in
    the params, consistency's 1) and runs the compiled sampler of that count on the student."""

    def __init__(self, method, sampling_config):
        self.method, self.sampling, self.compiled = method, sampling_config, {}

    def num_steps(self, params) -> int:
        return int(self.sampling.num_steps or 0) or self.method.default_steps(params)

    def __call__(self, params, x_T, key, cond):
        n = self.num_steps(params)
        if n not in self.compiled:
            self.compiled[n] = self.method.make_sampler(self.sampling, n)
        return self.compiled[n](params["student"], x_T, key, cond)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class DistillTask(Wrapper):
    """The teacher's task (set by :meth:`build`) with a distillation loss and the student's few-step samplers."""

    def __init__(self):
        self.inner = None

    generative = True
    text_fields = "cond"

    # ------------------------------------------------------------------ config

    def validate(self, config) -> None:
        d = config.distill
        if not d.teacher_workdir:
            raise ValueError("task distill needs distill.teacher_workdir: a trained diffusion workdir (e.g. "
                             "--config.distill.teacher_workdir=runs/quickstart)")
        if d.method not in METHODS:
            raise ValueError(f"distill.method must be one of {METHODS}, got {d.method!r}")
        if d.guidance_scale is not None and not d.guidance_scale >= 0:
            raise ValueError(f"distill.guidance_scale must be >= 0 (or None: the teacher's), got {d.guidance_scale}")
        if config.sampling.guidance_scale != 1.0:
            raise ValueError(f"sampling.guidance_scale={config.sampling.guidance_scale:g}: a distilled student is "
                             f"sampled without guidance (the teacher's is distilled in: distill.guidance_scale)")
        if d.method == "progressive":
            start, end, k = int(d.start_steps), int(d.end_steps), int(d.steps_per_round)
            if end < 1 or start <= end or start % end or (start // end) & (start // end - 1):
                raise ValueError(f"distill.start_steps / end_steps must be a power of 2 >= 2 with end_steps >= 1, "
                                 f"got {start} and {end}")
            if k < 1:
                raise ValueError(f"distill.steps_per_round must be >= 1, got {k}")
            if d.weighting not in WEIGHTINGS:
                raise ValueError(f"distill.weighting must be one of {WEIGHTINGS}, got {d.weighting!r}")
        else:
            if int(d.num_scales) < 2:
                raise ValueError(f"distill.num_scales must be >= 2, got {d.num_scales}")
            if not 0.0 <= d.target_ema < 1.0:
                raise ValueError(f"distill.target_ema must be in [0, 1), got {d.target_ema}")
            if d.solver not in SOLVERS:
                raise ValueError(f"distill.solver must be one of {SOLVERS}, got {d.solver!r}")
            if not (d.sigma_data > 0 and d.rho > 0):
                raise ValueError(f"distill.sigma_data and distill.rho must be > 0, got {d.sigma_data}, {d.rho}")
            if config.sampling.num_steps and not 1 <= int(config.sampling.num_steps) < int(d.num_scales):
                raise ValueError(f"sampling.num_steps={config.sampling.num_steps}: consistency sampling takes 1.."
                                 f"{int(d.num_scales) - 1} steps (0: one step)")

    def teacher_config(self, config):
        """The teacher's recorded config (one-line errors naming the workdir when it is missing or no diffusion run),
        with this config's data/autoencoder locations."""
        path = config.distill.teacher_workdir
        try:
            teacher = Workdir(path).config_for_reading()
        except (OSError, ValueError) as e:
            raise type(e)(f"distill.teacher_workdir={path}: {_first_line(e)}") from None
        if teacher.task not in TEACHER_TASKS:
            raise ValueError(f"distill.teacher_workdir={path} holds a {teacher.task} run, not a diffusion model "
                             f"(task {' or '.join(TEACHER_TASKS)})")
        process = teacher.diffusion.get("process", "ddpm")
        allowed = ("ddpm",) if config.distill.method == "progressive" else ("ddpm", "edm")
        if process not in allowed:
            raise ValueError(f"distill.method={config.distill.method} needs a teacher with diffusion.process "
                             f"{' or '.join(allowed)}; {path} holds a {process} run")
        ours = differences(base_config(), config)  # the keys this config sets
        clash = [k for k in differences(teacher, config) if k in ours and k not in PASS_THROUGH
                 and k.split(".")[0] not in STUDENT_GROUPS and k not in ("task", "seed")]
        if clash:
            record = storage.join(storage.resolve(path), "config.json")
            raise ValueError(f"the student has the teacher's architecture, data and diffusion settings, but this "
                             f"config sets {', '.join(clash[:4])} unlike {record}: remove "
                             f"{'them' if len(clash) > 1 else 'it'}")
        for key in PASS_THROUGH:
            group, leaf = key.split(".")
            if config[group][leaf]:
                teacher[group][leaf] = config[group][leaf]
        return teacher

    def merged_config(self, config, teacher):
        """The run's config: the teacher's, with this config's seed, task and student groups."""
        merged = teacher.copy_and_resolve_references()
        merged.seed, merged.task = config.seed, config.task
        for group in STUDENT_GROUPS:
            merged[group] = config[group].copy_and_resolve_references()
        default = base_config().sampling
        s = config.sampling
        if s.clip_x0 == default.clip_x0 and s.dynamic_threshold is None:  # x0's range is the teacher's data space's
            merged.sampling.clip_x0 = teacher.sampling.clip_x0
            merged.sampling.dynamic_threshold = teacher.sampling.dynamic_threshold
        return merged

    def build(self, config, split=None, source=None, text=None):
        teacher_config = self.teacher_config(config)
        path = config.distill.teacher_workdir
        try:
            trained = load_trained(path, teacher_config)
        except (OSError, ValueError) as e:
            raise type(e)(f"distill.teacher_workdir={path}: {_first_line(e)}") from None
        self.inner = trained.run.task
        merged = self.merged_config(config, teacher_config)
        run = dataclasses.replace(trained.run, config=merged, task=self, extras={})
        d = config.distill
        scale = float(teacher_config.sampling.guidance_scale if d.guidance_scale is None else d.guidance_scale)
        if scale != 1.0 and not run.model.num_classes:
            raise ValueError(f"distill.guidance_scale={scale:g} needs a class-conditional teacher; {path} is "
                             f"unconditional: use 1")
        transform = x0_transform_of(teacher_config.sampling)
        if d.method == "progressive":
            rounds = Rounds(int(d.start_steps), int(d.end_steps), int(d.steps_per_round),
                            int(teacher_config.diffusion.num_timesteps))
            if rounds.start_steps > rounds.num_timesteps:
                raise ValueError(f"distill.start_steps={rounds.start_steps} exceeds the teacher's "
                                 f"diffusion.num_timesteps={rounds.num_timesteps}")
            method = Progressive(run, rounds, d.weighting, scale, transform)
        else:
            method = Consistency(run, d, scale, transform)
        run.extras.update(teacher=trained, method=method, guidance_scale=scale)
        log.info("distill (%s): teacher %s (%s, step %d), guidance w=%g distilled in", d.method, trained.workdir,
                 trained.config.task, trained.step, scale)
        return run

    # ------------------------------------------------------------------ training

    def check_or_write_records(self, run, workdir, write=True):
        """The inner task's records, and ``distill.json``: the teacher (workdir, step, weights fingerprint), the
        method and its round structure. Training on (resume) with a teacher of other weights is refused; the teacher
        may move (``distill.teacher_workdir`` is a safe key, as ``latent.autoencoder_workdir``)."""
        self.inner.check_or_write_records(run, workdir, write)
        if not write:
            return
        trained, method = run.extras["teacher"], run.extras["method"]
        record = {"method": run.config.distill.method, "teacher_workdir": trained.workdir,
                  "teacher_task": trained.config.task, "teacher_step": trained.step,
                  "teacher_sha256": params_sha256(trained.params), "guidance_scale": run.extras["guidance_scale"]}
        if isinstance(method, Progressive):
            record["rounds"] = method.rounds.describe()
        else:
            record["sigmas"] = [float(s) for s in method.sigmas]
        path = storage.join(workdir, RECORD)
        saved = storage.read_json(path)
        if saved is not None:
            if saved.get("teacher_sha256") != record["teacher_sha256"]:
                raise ValueError(f"{path}: this student was distilled from other teacher weights ("
                                 f"{saved.get('teacher_workdir')} at step {saved.get('teacher_step')}); "
                                 f"{trained.workdir} now holds step {trained.step}. Use that teacher or a new "
                                 f"--workdir")
            return
        storage.write_json(path, record)

    def init_params(self, run, key):
        """The student (and the frozen teacher, target network, step count) from the teacher's EMA parameters."""
        teacher = jax.tree.map(jnp.asarray, run.extras["teacher"].params)
        return run.extras["method"].init_params(teacher)

    def trainable(self, run):
        return lambda params: {k: jax.tree.map(lambda _: k == "student", v) for k, v in params.items()}

    def step_transition(self, run):
        return run.extras["method"].transition

    def loss(self, run):
        return run.extras["method"].loss_fn

    def eval_params(self, params):
        return {k: v for k, v in params.items() if k in ("student", "num_steps")}

    # ------------------------------------------------------------------ sampling

    def make_sample_fn(self, run, sampling_config=None, guidance_scale: Optional[float] = None):
        if guidance_scale not in (None, 1.0):
            raise ValueError(f"guidance scale {guidance_scale:g}: a distilled student is sampled without guidance "
                             f"(its teacher's w={run.extras['guidance_scale']:g} is distilled in)")
        return StudentSampler(run.extras["method"], sampling_config or run.config.sampling)

    def generate(self, run, params, key, num, labels=None, prompts=None, low_res=None, sampling_config=None,
                 guidance_scale: Optional[float] = None, sample_fn=None):
        s = sampling_config or run.config.sampling
        cond, labels, ncols = run.task.sample_cond(run, num, labels, prompts, low_res)
        if sample_fn is None and sampling_config is None and guidance_scale is None:
            sample_fn = run.extras.get("sample_fn") or run.extras.setdefault("sample_fn", self.make_sample_fn(run))
        fn = sample_fn or self.make_sample_fn(run, s, guidance_scale)
        x = generate_batches(fn, params, key, num, run.image_shape, min(s.batch_size, num), cond)
        return x, labels, ncols

    def sample_grid(self, run, params, key, num):
        return self.sample(run, params, key, num)  # named by the student's own step count (sampling.num_steps is 0)

    def sample(self, run, params, key, num, labels=None, prompts=None) -> Samples:
        x, labels, ncols = run.task.generate(run, params, key, num, labels, prompts)
        method = run.config.distill.method
        n = StudentSampler(run.extras["method"], run.config.sampling).num_steps(params)
        name = f"distill_{method}_{n}steps"
        return Samples(to_uint8(run.to_pixels(x)), labels, ncols, name,
                       {"distill": {"method": method, "num_steps": n, "teacher_workdir": run.extras["teacher"].workdir,
                                    "teacher_guidance_scale": run.extras["guidance_scale"]}})
