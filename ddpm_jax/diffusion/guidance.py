"""Classifier-free guidance (Ho & Salimans 2022) and x0 clipping / dynamic thresholding (Imagen, Saharia et al. 2022)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

Denoise = Callable[[jnp.ndarray, jnp.ndarray, Any], jnp.ndarray]


def classifier_free_guidance(denoise: Denoise, guidance_scale: float, null_cond: Any) -> Denoise:
    """Wrap ``denoise`` so it returns uncond + w (cond - uncond), in one batched network call.

    ``null_cond`` has the structure of ``cond`` for one example (or a full batch) and stands for "no condition"
    (e.g. the null class label or the empty-prompt embedding). When both are dicts, ``null_cond`` may hold a subset
    of the keys: the others (e.g. a super-resolution stage's low-res image) are the same in both halves.
    w = 1 is the conditional model, w = 0 unconditional.
    """

    def null_like(cond):
        fill = lambda n, c: jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape)
        if isinstance(cond, dict) and isinstance(null_cond, dict):
            return {k: jax.tree.map(fill, null_cond[k], c) if k in null_cond else c for k, c in cond.items()}
        return jax.tree.map(fill, null_cond, cond)

    def guided(x_t, t, cond):
        batch = x_t.shape[0]
        null = null_like(cond)
        both_cond = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), cond, null)
        out = denoise(jnp.concatenate([x_t, x_t], 0), jnp.concatenate([t, t], 0), both_cond)
        out_c, out_u = out[:batch], out[batch:]
        return out_u + guidance_scale * (out_c - out_u)

    return guided


def dynamic_threshold(x0: jnp.ndarray, percentile: float = 0.995, max_value: Optional[float] = None) -> jnp.ndarray:
    """Imagen sec. 2.3: s = max(quantile_p(|x0|), 1) per example; clip x0 to [-s, s] and divide by s."""
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
    if max_value is not None:
        s = jnp.minimum(s, max_value)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return jnp.clip(x0, -s, s) / s


def make_x0_transform(clip_x0: Optional[float] = None, dynamic_threshold_percentile: Optional[float] = None,
                      dynamic_threshold_max: Optional[float] = None) -> Optional[Callable]:
    """A function applied to every x0 prediction of a sampler, or None: static clip to [-c, c] or dynamic thresholding."""
    if clip_x0 is not None and dynamic_threshold_percentile is not None:
        raise ValueError("choose either clip_x0 or dynamic thresholding, not both")
    if dynamic_threshold_percentile is not None:
        if not 0.0 < dynamic_threshold_percentile <= 1.0:
            raise ValueError(f"dynamic threshold percentile must be in (0, 1], got {dynamic_threshold_percentile}")
        return lambda x0: dynamic_threshold(x0, dynamic_threshold_percentile, dynamic_threshold_max)
    if clip_x0 is not None:
        if isinstance(clip_x0, bool) or not clip_x0 > 0:
            raise ValueError(f"clip_x0 must be a positive bound (None turns clipping off), got {clip_x0!r}")
        return lambda x0: jnp.clip(x0, -clip_x0, clip_x0)
    return None
