"""Sampling for every denoiser: one jitted sampler factory and one padded-batch generation loop.

The sample function is ``fn(params, x_T, key, cond) -> x_0`` where ``cond`` is the denoiser's conditioning dict
(:mod:`ddpm_jax.models.denoiser`); classifier-free guidance replaces the keys of ``null_cond`` (labels, text) and
keeps the others (a super-resolution stage's low-res image) in both halves.

Several processes share a generation through a :class:`~ddpm_jax.evaluation.multiprocess.ProcessShare` (given to
:func:`generate`, or carried by the sample function, :func:`shared_sample_fn`): each makes the batches dealt to it,
and batch b is the same images whoever makes it.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.evaluation.multiprocess import ProcessShare, gather_rows
from ddpm_jax.models.denoiser import denoiser_fn


def sampler_kwargs(sampling_config, process: str = "ddpm") -> dict:
    """Sampler options from ``config.sampling`` for a process (steps, spacing, eta, variance, the solvers' grid and
    churn, x0 clipping/thresholding); a setting the sampler or process does not take is a one-line error."""
    name = sampling_config.sampler
    solvers = diffusion.SOLVERS
    if name not in diffusion.SAMPLERS and name not in solvers:
        raise ValueError(f"unknown sampling.sampler {name!r}; use one of {sorted(diffusion.SAMPLERS) + list(solvers)}")
    if process != "ddpm" and name not in solvers:
        raise ValueError(f"sampling.sampler={name!r} runs on diffusion.process=ddpm only; process {process!r} is "
                         f"sampled with {' / '.join(solvers)}")
    kwargs = {}
    if sampling_config.num_steps:
        if int(sampling_config.num_steps) < 0:
            raise ValueError(f"sampling.num_steps must be >= 0 (0: the sampler's default), got "
                             f"{sampling_config.num_steps}")
        kwargs["num_steps"] = int(sampling_config.num_steps)
    if sampling_config.spacing:
        if process != "ddpm":
            raise ValueError(f"sampling.spacing applies to process ddpm; {process!r} uses "
                             f"{'sampling.shift' if process == 'flow' else 'sampling.rho'}")
        kwargs["spacing"] = sampling_config.spacing
    if name == "ddim":
        kwargs["eta"] = sampling_config.eta
        if sampling_config.final_alpha_cumprod is not None:
            kwargs["final_alpha_cumprod"] = sampling_config.final_alpha_cumprod
    elif sampling_config.final_alpha_cumprod is not None:
        raise ValueError(f"sampling.final_alpha_cumprod applies to the ddim sampler only, not {name!r}")
    if name == "ddpm":
        kwargs["variance"] = sampling_config.variance
    if name in solvers:
        get = lambda k, d: float(sampling_config.get(k, d))
        if process == "flow":
            kwargs["shift"] = get("shift", 1.0)
        else:
            kwargs["rho"] = get("rho", 7.0)
        churn = get("s_churn", 0.0)
        if churn:
            kwargs.update(s_churn=churn, s_tmin=get("s_tmin", 0.0), s_tmax=get("s_tmax", float("inf")),
                          s_noise=get("s_noise", 1.0))
    threshold = sampling_config.dynamic_threshold  # when set, it replaces the static clip (Imagen)
    kwargs["x0_transform"] = diffusion.make_x0_transform(None if threshold else sampling_config.clip_x0,
                                                         threshold or None)
    return kwargs


def make_sample_fn(model, process, sampling_config, null_cond: Optional[Dict] = None,
                   guidance_scale: Optional[float] = None, cond_transform: Optional[Callable] = None) -> Callable:
    """A jitted ``fn(params, x_T, key, cond) -> x_0``: the whole sampling loop is one compiled program.

    ``process`` is a :mod:`ddpm_jax.diffusion.processes` process (ddpm, flow, edm); ``x_T`` is standard normal noise.
    ``guidance_scale`` (default ``sampling.guidance_scale``) != 1 needs ``null_cond``: guidance on a model with
    nothing to guide on is an error. ``cond_transform(cond, key) -> (cond, key)`` runs first inside the program
    (a super-resolution stage's noise augmentation of its low-res input).
    """
    name = sampling_config.sampler
    kwargs = sampler_kwargs(sampling_config, process.name)
    scale = float(sampling_config.guidance_scale if guidance_scale is None else guidance_scale)
    if scale != 1.0 and not null_cond:
        raise ValueError(f"guidance scale {scale:g} needs a conditional model (class labels or text); this one is "
                         f"unconditional: use guidance 1")
    null = {k: jnp.asarray(v) for k, v in (null_cond or {}).items()}

    @jax.jit
    def sample_fn(params, x_T, key, cond):
        if cond_transform is not None:
            cond, key = cond_transform(cond, key)
        denoise = denoiser_fn(model, params)
        if scale != 1.0:
            denoise = diffusion.classifier_free_guidance(denoise, scale, null)
        return process.sample(denoise, x_T, key, cond, sampler=name, **kwargs)

    return sample_fn


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """Repeat the last row up to ``rows`` (a real condition, so padded examples stay finite)."""
    return a if len(a) == rows else np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


class SharedSampleFn:
    """A sample function that carries the :class:`ProcessShare` :func:`generate` samples with (through task hooks
    that pass sample functions, not shares); attributes are the wrapped function's."""

    def __init__(self, fn: Callable, share: ProcessShare):
        self.fn, self.share = fn, share

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __getattr__(self, name):
        if name in ("fn", "share"):
            raise AttributeError(name)
        return getattr(self.fn, name)


def shared_sample_fn(fn: Callable, share: Optional[ProcessShare] = None) -> SharedSampleFn:
    """``fn`` sampling only this process's batches (``share``: default this process of the job, gathering)."""
    return SharedSampleFn(fn.fn if isinstance(fn, SharedSampleFn) else fn, share or ProcessShare.of_this_process())


def generate(sample_fn: Callable, params, key: jax.Array, num: int, image_shape: tuple, batch_size: int = 64,
             cond: Optional[Dict[str, np.ndarray]] = None, share: Optional[ProcessShare] = None) -> np.ndarray:
    """``num`` samples (float32 NHWC, images in [-1, 1] or latents) in batches of a fixed size (one compilation);
    batch b draws x_T and the sampler's noise from fold_in(key, b). ``cond`` holds one row per sample.

    ``share`` (default: the one ``sample_fn`` carries, else all batches): this process makes batches
    share.index, share.index + share.count, ...; with ``share.gather`` every process gets all ``num`` samples in
    order (a collective), else only its rows, ``share.rows(num, batch_size)``."""
    if num < 1:
        raise ValueError(f"the number of samples must be >= 1, got {num}")
    cond = {k: np.asarray(v) for k, v in (cond or {}).items()}
    for k, v in cond.items():
        if len(v) != num:
            raise ValueError(f"cond[{k!r}] has {len(v)} rows for {num} samples")
    share = share or getattr(sample_fn, "share", None) or ProcessShare()
    out = []
    for b in share.items(-(-num // batch_size)):
        start = b * batch_size
        n = min(batch_size, num - start)
        k_noise, k_sample = jax.random.split(jax.random.fold_in(key, b))
        x_T = jax.random.normal(k_noise, (batch_size,) + tuple(image_shape))
        chunk = {k: jnp.asarray(_pad_rows(v[start:start + n], batch_size)) for k, v in cond.items()}
        out.append(np.asarray(sample_fn(params, x_T, k_sample, chunk))[:n])
    local = np.concatenate(out, 0) if out else np.zeros((0,) + tuple(image_shape), np.float32)
    if share.count == 1 or not share.gather:
        return local
    return gather_rows(local, share.rows(num, batch_size), num)


def default_labels(num: int, num_classes: Optional[int]) -> np.ndarray:
    """Labels 0, 1, ..., K-1, 0, 1, ... so that a grid with K columns has one class per column."""
    return (np.arange(num) % num_classes).astype(np.int32) if num_classes else np.zeros(num, np.int32)
