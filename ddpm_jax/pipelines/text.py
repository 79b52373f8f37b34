"""Text-to-image generation: prompt -> frozen text encoder -> text-conditional denoiser (CFG) -> sampler -> images.

A text condition is a dict of arrays with a leading batch axis: ``context`` [B, L, D] (the encoder's token
embeddings), ``context_mask`` [B, L] (False on padding) and ``pooled`` [B, D]. The *null condition* of classifier-free
guidance is the condition of the empty prompt "" (as Stable Diffusion and Imagen's implementations do): the model
sees it in place of the caption with probability ``text.cond_drop_prob`` during training, and guidance at sampling
extrapolates from it: eps = eps(null) + w (eps(text) - eps(null)).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.pipelines.pixel import sampler_kwargs

Cond = Dict[str, np.ndarray]
COND_KEYS = ("context", "context_mask", "pooled")


def encode_prompts(encoder, prompts: Sequence[str]) -> Cond:
    """The text condition of ``prompts`` through a frozen :class:`~ddpm_jax.models.text_encoder.TextEncoder`."""
    context, mask, pooled = encoder.encode_and_pool(list(prompts))
    return {"context": context.astype(np.float32), "context_mask": mask.astype(bool),
            "pooled": pooled.astype(np.float32)}


def null_condition(encoder) -> Cond:
    """The empty prompt's condition for one example (no batch axis): CFG's "no text"."""
    return {k: v[0] for k, v in encode_prompts(encoder, [""]).items()}


def apply_text_model(model, params, x_t, t, cond: Cond, train: bool = False, rngs=None):
    """The text-conditional U-Net on a condition dict (the pooled vector only if the model takes one)."""
    pooled = cond["pooled"] if model.pooled_dim is not None else None
    return model.apply({"params": params}, x_t, t, None, cond["context"], cond["context_mask"], pooled,
                       train=train, rngs=rngs)


def drop_text_condition(key: jax.Array, cond: Cond, null: Cond, prob: float) -> Cond:
    """Classifier-free guidance training: replace each example's condition by ``null`` with probability ``prob``."""
    if prob <= 0.0:
        return cond
    drop = jax.random.bernoulli(key, prob, (cond["context"].shape[0],))

    def pick(c, n):
        d = drop.reshape((-1,) + (1,) * (c.ndim - 1))
        return jnp.where(d, jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), c)

    return {k: pick(cond[k], null[k]) for k in COND_KEYS}


def text_denoiser(model, params) -> Callable:
    """The text-conditional U-Net as the diffusion layer's ``denoise(x_t, t, cond)``."""
    return lambda x_t, t, cond: apply_text_model(model, params, x_t, t, cond)


def guided_text_denoiser(denoise: Callable, guidance_scale: float, null: Cond) -> Callable:
    """``denoise`` with classifier-free guidance at ``guidance_scale`` through the diffusion layer's wrapper:
    eps(null) + w (eps(cond) - eps(null)); w = 1 is the conditional model (no second pass), w = 0 the unconditional
    one, i.e. the model on the empty prompt."""
    if guidance_scale == 1.0:
        return denoise
    null = {k: jnp.asarray(null[k]) for k in COND_KEYS}
    return diffusion.classifier_free_guidance(denoise, guidance_scale, null)


def make_text_sample_fn(model, schedule: diffusion.Schedule, sampling_config, null: Cond,
                        prediction_type: str = "eps", guidance_scale: Optional[float] = None) -> Callable:
    """A jitted ``fn(params, x_T, key, cond) -> x_0`` for a text-conditional denoiser; the guidance scale is
    ``guidance_scale`` or ``sampling.guidance_scale``."""
    name = sampling_config.sampler
    kwargs = sampler_kwargs(sampling_config)
    scale = float(sampling_config.get("guidance_scale", 1.0) if guidance_scale is None else guidance_scale)

    @jax.jit
    def sample_fn(params, x_T, key, cond):
        denoise = guided_text_denoiser(text_denoiser(model, params), scale, null)
        return diffusion.sample(denoise, schedule, x_T, key, sampler=name, cond=cond,
                                prediction_type=prediction_type, **kwargs)

    return sample_fn


def generate_from_text(sample_fn: Callable, params, key: jax.Array, cond: Cond, image_shape: tuple,
                       batch_size: int = 64) -> np.ndarray:
    """Images (float32 [-1, 1] NHWC, or latents) for every row of ``cond``, in batches; batch b uses fold_in(key, b)
    exactly as :func:`~ddpm_jax.pipelines.pixel.generate` does."""
    num = len(cond["context"])
    out = []
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        k_noise, k_sample = jax.random.split(jax.random.fold_in(key, b))
        x_T = jax.random.normal(k_noise, (batch_size,) + tuple(image_shape))  # fixed shape: one compilation
        chunk = {k: _pad_rows(np.asarray(cond[k][start:start + n]), batch_size) for k in COND_KEYS}
        out.append(np.asarray(sample_fn(params, x_T, k_sample, chunk))[:n])
    return np.concatenate(out, 0)


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """Repeat the last row up to ``rows`` (a real condition, so padded examples stay finite)."""
    return a if len(a) == rows else np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


def text_to_images(encoder, sample_fn: Callable, params, prompts: Sequence[str], key: jax.Array, image_shape: tuple,
                   batch_size: int = 64) -> np.ndarray:
    """Encode ``prompts`` and generate one image (or latent) per prompt."""
    return generate_from_text(sample_fn, params, key, encode_prompts(encoder, prompts), image_shape, batch_size)
