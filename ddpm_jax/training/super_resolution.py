"""Task ``super_resolution``: a diffusion decoder trained on (downsampled, original) pairs through the shared trainer,
and the cascade (base model -> super-resolution stages) built from trained workdirs.

Config: ``data.image_size`` is the output size, ``sr.low_res_size`` the input size (the training images area-
downsampled, see :func:`ddpm_jax.data.resize_nearest`); ``sr.max_aug_level`` bounds the training augmentation level
(Imagen: s ~ U[0, max_aug_level T)), ``sampling.sr_aug_level`` is the fixed level at sampling.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.data import resize_nearest
from ddpm_jax.pipelines.cascade import (SRStage, make_sr_sample_fn, noise_augment, random_aug_timesteps, run_cascade,
                                        sr_apply)
from ddpm_jax.training.steps import drop_labels


def validate_sr_config(config) -> None:
    """Sizes that divide and levels in [0, 1)."""
    sr = config.get("sr")
    if sr is None:
        raise ValueError("task super_resolution needs a config.sr section (low_res_size, max_aug_level)")
    low, high = int(sr.low_res_size), int(config.data.image_size)
    if low <= 0 or low >= high or high % low:
        raise ValueError(f"sr.low_res_size must divide data.image_size and be smaller, got {low} and {high}")
    if not 0.0 <= sr.get("max_aug_level", 0.0) < 1.0:
        raise ValueError(f"sr.max_aug_level must be in [0, 1), got {sr.max_aug_level}")
    if not 0.0 <= (config.sampling.get("sr_aug_level") or 0.0) < 1.0:
        raise ValueError(f"sampling.sr_aug_level must be in [0, 1), got {config.sampling.sr_aug_level}")


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Area (box-filter) downsampling of float NHWC images by an integer factor."""
    n, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"cannot area-downsample {h}x{w} to {size}x{size}: not an integer factor")
    k = h // size
    return images.reshape(n, size, k, size, k, c).mean(axis=(2, 4)).astype(np.float32)


@dataclasses.dataclass
class SRPipeline:
    """The pixel batches of ``inner`` plus ``low_res``: each image area-downsampled to ``low_res_size``."""

    inner: Any
    low_res_size: int

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        out = dict(self.inner.batch(step))
        out["low_res"] = downsample(out["image"], self.low_res_size)
        return out


def make_sr_loss(model, schedule: diffusion.Schedule, prediction_type: str = "eps", weighting: str = "none",
                 cond_drop_prob: float = 0.0, max_aug_level: float = 0.0):
    """L_simple of the denoiser conditioned on the noise-augmented low-res image z_s, s ~ U[0, max_aug_level T)
    per example (Imagen sec. 2.5), with s passed to the network; labels (if the model takes them) dropped with
    ``cond_drop_prob``. The mean augmentation timestep is reported as ``aug_level``."""
    diffusion.process.check_prediction_type(prediction_type)

    def loss_fn(params, batch, key, step=0):
        k_loss, k_drop, k_dropout, k_aug_t, k_aug = jax.random.split(key, 5)
        low = batch["low_res"]
        aug_t = random_aug_timesteps(k_aug_t, low.shape[0], max_aug_level, schedule.num_timesteps)
        z = noise_augment(schedule, low, aug_t, jax.random.normal(k_aug, low.shape))
        labels = drop_labels(k_drop, batch["label"], model.num_classes, cond_drop_prob) if model.num_classes else None

        def denoise(x_t, t, y):
            return sr_apply(model, params, x_t, t, z, aug_t, y, train=True, rngs={"dropout": k_dropout})

        per_example = diffusion.diffusion_loss(denoise, schedule, batch["image"], k_loss, labels, prediction_type,
                                               weighting)
        return jnp.mean(per_example), {"aug_level": jnp.mean(aug_t.astype(jnp.float32))}

    return loss_fn


def init_kwargs(model, batch: int = 1, low_res_size: Optional[int] = None) -> dict:
    """Dummy ``low_res``/``aug_level`` to initialise a super-resolution U-Net (empty for other models)."""
    if getattr(model, "low_res_channels", None) is None:
        return {}
    return {"low_res": jnp.zeros((batch, low_res_size, low_res_size, model.low_res_channels)),
            "aug_level": jnp.zeros((batch,), jnp.int32)}


# ------------------------------------------------------------------------------------------------ the cascade


def load_sr_stage(workdir: str, sampler: Optional[str] = None, steps: Optional[int] = None,
                  guidance: Optional[float] = None, aug_level: Optional[float] = None, use_ema: bool = True,
                  batch_size: Optional[int] = None, eta: Optional[float] = None) -> tuple:
    """(SRStage, its config) from a trained ``super_resolution`` workdir, with optional sampling overrides."""
    from ddpm_jax.training.loop import build_run, read_workdir_config, restore_trained

    config = read_workdir_config(workdir)
    if config.get("task") != "super_resolution":
        raise ValueError(f"{workdir} holds a {config.get('task', 'diffusion')} run, not a super_resolution stage")
    s = config.sampling
    if sampler:
        s.sampler = sampler
    if steps is not None:
        s.num_steps = steps
    if guidance is not None:
        s.guidance_scale = guidance
    if eta is not None:
        s.eta = eta
    run = build_run(config)
    state = restore_trained(run, workdir)
    params = state.ema_params if use_ema else state.params
    fn = make_sr_sample_fn(run.model, run.schedule, s, config.diffusion.prediction_type, aug_level)
    stage = SRStage(fn, params, run.image_shape, os.path.basename(os.path.normpath(workdir)),
                    batch_size or s.get("batch_size", 64))
    return stage, config


def base_samples(workdir: str, num: int, key: jax.Array, labels: Optional[np.ndarray] = None,
                 prompts: Optional[Sequence[str]] = None, sampler: Optional[str] = None, steps: Optional[int] = None,
                 guidance: Optional[float] = None, use_ema: bool = True) -> tuple:
    """(images float [-1, 1], labels) of the cascade's base model: a class-conditional (or unconditional) pixel
    diffusion workdir with ``labels`` (default 0..K-1 in turn), or a text-to-image workdir with ``prompts``."""
    from ddpm_jax.data import to_model_range
    from ddpm_jax.pipelines.pixel import default_labels, generate, make_sample_fn
    from ddpm_jax.training.loop import build_run, read_workdir_config, restore_trained

    config = read_workdir_config(workdir)
    task = config.get("task", "diffusion")
    s = config.sampling
    if sampler:
        s.sampler = sampler
    if steps is not None:
        s.num_steps = steps
    if guidance is not None:
        s.guidance_scale = guidance
    if task not in ("diffusion", "text_diffusion"):
        raise ValueError(f"a cascade's base must be a pixel-space diffusion or text_diffusion run, {workdir} holds "
                         f"{task}")
    run = build_run(config)
    state = restore_trained(run, workdir)
    params = state.ema_params if use_ema else state.params
    if run.text is not None:
        from ddpm_jax.training.text import text_samples

        images, index, _ = text_samples(run, params, key, num, float(s.get("guidance_scale", 1.0)), prompts)
        return to_model_range(images), index
    if prompts:
        raise ValueError(f"{workdir} is not a text-to-image run: give --class labels instead of --prompt")
    labels = default_labels(num, run.model.num_classes) if labels is None else np.asarray(labels, np.int32)
    fn = make_sample_fn(run.model, run.schedule, s, config.diffusion.prediction_type)
    return generate(fn, params, key, num, run.image_shape, s.get("batch_size", 64), labels), labels


def cascade_from_workdirs(base_workdir: str, sr_workdirs: Sequence[str], num: int, seed: int = 0,
                          labels: Optional[np.ndarray] = None, prompts: Optional[Sequence[str]] = None,
                          base_overrides: Optional[dict] = None, sr_overrides: Optional[Sequence[dict]] = None,
                          use_ema: bool = True) -> Dict[str, Any]:
    """Base model -> every SR stage in order. ``*_overrides``: sampler, steps, guidance (and aug_level for SR
    stages) per stage. Returns {"images": [base, stage 1, ...] float [-1, 1], "labels", "seconds": per stage}.

    Labels reach class-conditional SR stages; a stage's input size must equal the previous stage's output size."""
    key = jax.random.key(seed)
    t0 = time.perf_counter()
    base, labels = base_samples(base_workdir, num, jax.random.fold_in(key, 0), labels, prompts,
                                use_ema=use_ema, **(base_overrides or {}))
    seconds = [time.perf_counter() - t0]
    stages = []
    for i, workdir in enumerate(sr_workdirs):
        stage, config = load_sr_stage(workdir, use_ema=use_ema, **((sr_overrides or [{}] * len(sr_workdirs))[i]))
        size = base.shape[1] if i == 0 else stages[-1].image_shape[0]
        if config.sr.low_res_size != size:
            raise ValueError(f"SR stage {workdir} enlarges {config.sr.low_res_size}px images but gets {size}px ones")
        stages.append(stage)
    outputs = [np.clip(base, -1.0, 1.0)]
    for i, stage in enumerate(stages):
        t0 = time.perf_counter()
        outputs += run_cascade(outputs[-1], [stage], jax.random.fold_in(key, i + 1), labels)[1:]
        seconds.append(time.perf_counter() - t0)
    return {"images": outputs, "labels": np.asarray(labels), "seconds": seconds}


def write_cascade(out: str, result: Dict[str, Any], ncols: Optional[int] = None) -> Dict[str, str]:
    """``out``.png: the final images; ``out``_stages.png: each stage's images upscaled to the final size, one row
    block per stage (base first); ``out``.npz: uint8 ``images`` (final), ``stage_K`` arrays, ``labels``."""
    from ddpm_jax.data import to_uint8
    from ddpm_jax.pipelines import images as image_io

    root = out[:-4] if out.endswith(".png") else out
    stages = [to_uint8(x) for x in result["images"]]
    size = stages[-1].shape[1]
    png = image_io.save_grid(root + ".png", stages[-1], ncols)
    blocks = [x.repeat(size // x.shape[1], 1).repeat(size // x.shape[1], 2) for x in stages]
    stages_png = image_io.save_grid(root + "_stages.png", np.concatenate(blocks), ncols or len(stages[-1]))
    npz = root + ".npz"
    np.savez_compressed(npz, images=stages[-1], labels=result["labels"],
                        **{f"stage_{i}": x for i, x in enumerate(stages)})
    return {"png": png, "stages_png": stages_png, "npz": npz}


def sr_test_samples(run, params, key: jax.Array, num: int, split: str = "test") -> tuple:
    """(uint8 images [3 num, H, W, C], labels): a trained SR stage on ``num`` held-out images, area-downsampled to
    its input size: rows of low-res inputs (nearest-upsampled for display), super-resolved outputs, originals."""
    from ddpm_jax.data import load_source, to_model_range, to_uint8
    from ddpm_jax.pipelines.cascade import super_resolve

    config = run.config
    held_out = load_source(config.data.name, split, config.data.get("data_dir") or None)
    size, low_size = config.data.image_size, config.sr.low_res_size
    images, labels = held_out.take(np.arange(min(num, len(held_out))))
    high = to_model_range(resize_nearest(images, size))
    low = downsample(high, low_size)
    labels = np.zeros(len(high), np.int32) if labels is None else labels
    fn = make_sr_sample_fn(run.model, run.schedule, config.sampling, config.diffusion.prediction_type)
    x = super_resolve(fn, params, key, low, run.image_shape, labels, config.sampling.get("batch_size", 64))
    f = size // low_size
    shown = [low.repeat(f, 1).repeat(f, 2), x, high]
    return np.concatenate([to_uint8(a) for a in shown]), np.concatenate([labels] * 3)
