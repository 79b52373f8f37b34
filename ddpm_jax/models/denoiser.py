"""The one call shape of every denoiser: ``model.apply({"params": p}, x_t, t, cond, train=...) -> prediction``.

``cond`` is a small dict of batched arrays (any subset, absent keys are "not given"):

- ``label`` [B] int class labels, the model's ``num_classes`` being the null label (classifier-free guidance);
- ``context`` [B, L, D] text-encoder tokens, ``context_mask`` [B, L] bool (False on padding), ``pooled`` [B, D];
- ``low_res`` [B, h, w, C] the low-resolution image of a super-resolution stage, ``aug_level`` [B] the timestep of
  the noise augmentation applied to it.

Samplers, losses and guidance only ever see ``denoise(x_t, t, cond)`` built from this, so a new backbone (a module
taking ``(x, t, cond, train)``) is one file plus one line in :data:`ddpm_jax.models.build.BACKBONES`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional

COND_KEYS = ("label", "context", "context_mask", "pooled", "low_res", "aug_level")
TEXT_KEYS = ("context", "context_mask", "pooled")
Cond = Dict[str, Any]


def check_cond(cond: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``cond`` as a dict (None = no condition); an unknown key is an error, not silently ignored."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise TypeError(f"cond must be a dict with keys among {COND_KEYS}, got {type(cond).__name__}")
    unknown = sorted(set(cond) - set(COND_KEYS))
    if unknown:
        raise ValueError(f"unknown conditioning keys {unknown}; a denoiser takes {COND_KEYS}")
    return {k: v for k, v in cond.items() if v is not None}


def denoiser_fn(model, params, train: bool = False, rngs=None) -> Callable:
    """``denoise(x_t, t, cond)`` of a denoiser module with fixed parameters: what the diffusion layer calls."""
    return lambda x_t, t, cond: model.apply({"params": params}, x_t, t, cond, train=train, rngs=rngs)
