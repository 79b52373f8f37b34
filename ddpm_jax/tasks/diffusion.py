"""Task ``diffusion``: a denoiser trained with L_simple (Ho et al. 2020) on pixels, class-conditional or not.

Also the base of every other denoising task: the Text and Latent wrappers and ``super_resolution`` change what the
denoiser is conditioned on (:meth:`DiffusionTask.condition`) and sees, not the loss or the samplers. Hooks that a
wrapper may override are called through ``run.task`` (the outermost task).
"""
from __future__ import annotations

from typing import Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.data import to_uint8
from ddpm_jax.models.build import denoiser_from_config
from ddpm_jax.tasks.sampling import default_labels, generate, make_sample_fn, sampler_kwargs
from ddpm_jax.tasks.base import Run, Samples, Task


def drop_labels(key: jax.Array, labels: jnp.ndarray, null_label: int, prob: float) -> jnp.ndarray:
    """Classifier-free guidance training: replace each label by the null label with probability ``prob``."""
    if prob <= 0.0:
        return labels
    return jnp.where(jax.random.bernoulli(key, prob, labels.shape), null_label, labels)


def check_labels(labels, num_classes: Optional[int], num: int) -> np.ndarray:
    """``num`` class labels (cycled from ``labels``) within [0, num_classes); None -> 0, 1, ..., K-1, 0, ..."""
    if labels is None or len(labels) == 0:
        return default_labels(num, num_classes)
    labels = np.resize(np.asarray(labels, np.int64), num)
    if not num_classes:
        raise ValueError("class labels were given but this model is unconditional (model.class_conditional=False)")
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"class label {int(bad[0])} is out of range: this model has classes 0..{num_classes - 1}")
    return labels.astype(np.int32)


class DiffusionTask(Task):
    generative = True

    def validate(self, config) -> None:
        diffusion.process.check_prediction_type(config.diffusion.prediction_type)
        if config.diffusion.loss_weighting not in ("none", "min_snr"):
            raise ValueError(f"diffusion.loss_weighting must be none or min_snr, got {config.diffusion.loss_weighting!r}")
        diffusion.make_process(config.diffusion)  # the process's own settings (one-line errors)
        process = config.diffusion.get("process", "ddpm")
        sampler_kwargs(config.sampling, process)
        if config.eval.every and process != "ddpm" and config.eval.sampler not in diffusion.SOLVERS:
            raise ValueError(f"eval.sampler={config.eval.sampler!r} runs on diffusion.process=ddpm only; process "
                             f"{process!r} is sampled with {' / '.join(diffusion.SOLVERS)}")
        if not 0.0 <= config.training.cond_drop_prob < 1.0:
            raise ValueError(f"training.cond_drop_prob must be in [0, 1), got {config.training.cond_drop_prob}")

    def low_res_channels(self, config, source) -> Optional[int]:
        return None

    def build(self, config, split=None, source=None, text=None) -> Run:
        source = source if source is not None else self.load_source(config, split)
        dim = text.encoder.dim if text is not None else None
        model = denoiser_from_config(config.model, source.num_classes, dim,
                                     dim if text is not None and config.text.use_pooled else None,
                                     self.low_res_channels(config, source))
        schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
        shape = (config.data.image_size, config.data.image_size, source.images.shape[-1])
        return Run(config, self, source, model, shape, schedule, text=text)

    # ------------------------------------------------------------------ conditioning (hooks, via run.task)

    def example_cond(self, run: Run, batch: int) -> Dict:
        return {"label": jnp.zeros((batch,), jnp.int32)} if run.model.num_classes else {}

    def condition(self, run: Run, batch: Dict, key: jax.Array, train: bool) -> Dict:
        if not run.model.num_classes:
            return {}
        labels = batch["label"]
        if train:
            labels = drop_labels(key, labels, run.model.num_classes, run.config.training.cond_drop_prob)
        return {"label": labels}

    def null_condition(self, run: Run) -> Dict:
        return {"label": np.int32(run.model.num_classes)} if run.model.num_classes else {}

    def sample_cond(self, run: Run, num: int, labels=None, prompts=None, low_res=None):
        """(cond with one row per sample, labels to record, grid columns)."""
        if prompts:
            raise ValueError("prompts were given but this is not a text-to-image run: give class labels instead")
        labels = check_labels(labels, run.model.num_classes, num)
        cond = {"label": labels} if run.model.num_classes else {}
        return cond, labels, run.model.num_classes or None

    def cond_transform(self, run: Run, sampling_config):
        return None

    # ------------------------------------------------------------------ training

    def init_params(self, run: Run, key: jax.Array):
        x = jnp.zeros((1,) + tuple(run.image_shape), jnp.float32)
        cond = run.task.example_cond(run, 1)
        return run.model.init({"params": key}, x, jnp.zeros((1,), jnp.int32), cond, train=False)["params"]

    def loss(self, run: Run):
        """The process's loss (ddpm: L_simple, optionally Min-SNR weighted; flow: velocity; edm: lambda-weighted
        denoising) of the denoiser on the task's condition."""
        model, process, task = run.model, run.process, run.task

        def loss_fn(params, batch, key, step=0):
            k_loss, k_cond, k_dropout = jax.random.split(key, 3)
            cond = task.condition(run, batch, k_cond, train=True)

            def denoise(x_t, t, cond):
                return model.apply({"params": params}, x_t, t, cond, train=True, rngs={"dropout": k_dropout})

            per_example = process.loss(denoise, batch["image"], k_loss, cond)
            aux = {"aug_level": jnp.mean(cond["aug_level"].astype(jnp.float32))} if "aug_level" in cond else {}
            return jnp.mean(per_example), aux

        return loss_fn

    # ------------------------------------------------------------------ sampling

    def make_sample_fn(self, run: Run, sampling_config=None, guidance_scale: Optional[float] = None):
        s = sampling_config or run.config.sampling
        return make_sample_fn(run.model, run.process, s, run.task.null_condition(run), guidance_scale,
                              run.task.cond_transform(run, s))

    def generate(self, run: Run, params, key: jax.Array, num: int, labels=None, prompts=None, low_res=None,
                 sampling_config=None, guidance_scale: Optional[float] = None, sample_fn=None):
        """(model outputs float32 [num, ...], labels, grid columns); ``sample_fn`` reuses a compiled sampler."""
        s = sampling_config or run.config.sampling
        cond, labels, ncols = run.task.sample_cond(run, num, labels, prompts, low_res)
        if sample_fn is None and sampling_config is None and guidance_scale is None:  # the run's own sampler: compile once
            sample_fn = run.extras.get("sample_fn") or run.extras.setdefault("sample_fn", self.make_sample_fn(run))
        fn = sample_fn or self.make_sample_fn(run, s, guidance_scale)
        x = generate(fn, params, key, num, run.image_shape, min(s.batch_size, num), cond)
        return x, labels, ncols

    def sample_grid(self, run: Run, params, key, num: int) -> Samples:
        x, labels, ncols = run.task.generate(run, params, key, num)
        return Samples(to_uint8(run.to_pixels(x)), labels, ncols, "")

    def sample(self, run: Run, params, key, num, labels=None, prompts=None) -> Samples:
        s = run.config.sampling
        x, labels, ncols = run.task.generate(run, params, key, num, labels, prompts)
        name = f"{s.sampler}_{s.num_steps or 'all'}steps"
        if s.guidance_scale != 1.0:
            name += f"_w{s.guidance_scale:g}"
        return Samples(to_uint8(run.to_pixels(x)), labels, ncols, name)
