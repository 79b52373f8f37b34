"""Bilinear resizing of image batches to the Inception input size, as the two FID references do it.

- "pytorch" (the default): `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`, what pytorch-fid
  applies; most FID numbers in recent papers come from pytorch-fid. Source coordinate
  src = max((dst + 0.5) * in / out - 0.5, 0).
- "tf1": TF1's `tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False)`, the op inside the
  original TTUR FID graph (Heusel et al. 2017); use it to match TTUR / original-paper numbers. src = dst * in / out.

Neither antialiases when shrinking. Both are separable: per axis, gather the two neighbours and blend them with
weights computed in float32 from the static shapes, in each reference's own arithmetic (torch: a * (1 - w) + b * w;
TF: a + (b - a) * w). jit-able; sizes are static.
"""
from typing import Union

import jax.numpy as jnp
import numpy as np

MODES = ("pytorch", "tf1")


def source_coords(in_size: int, out_size: int, mode: str):
    """(lower index, upper index, upper weight) per output position along one axis, float32 as in the references."""
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    if mode == "pytorch":
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    elif mode == "tf1":
        src = dst * scale
    else:
        raise ValueError(f"resize mode must be one of {MODES}, got {mode!r}")
    lo = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def _resize_axis(x: jnp.ndarray, axis: int, out_size: int, mode: str) -> jnp.ndarray:
    """Linear interpolation of `x` along one axis to `out_size` samples."""
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    lo, hi, w = source_coords(in_size, out_size, mode)
    a, b = jnp.take(x, lo, axis=axis), jnp.take(x, hi, axis=axis)
    w = jnp.asarray(w, x.dtype).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    if mode == "pytorch":
        return a * (1 - w) + b * w
    return a + (b - a) * w


def resize_bilinear(images: jnp.ndarray, size: Union[int, tuple[int, int]] = 299, mode: str = "pytorch"):
    """Resize float NHWC `images` to `size` (int or (height, width)) with bilinear interpolation in `mode`
    ("pytorch" or "tf1", see the module docstring). Width is interpolated first, then height, as both references
    do."""
    if mode not in MODES:
        raise ValueError(f"resize mode must be one of {MODES}, got {mode!r}")
    if images.ndim != 4:
        raise ValueError(f"resize_bilinear expects [N, H, W, C] images, got shape {images.shape}")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"resize_bilinear expects float images, got {images.dtype}")
    height, width = (size, size) if isinstance(size, int) else size
    return _resize_axis(_resize_axis(images, 2, width, mode), 1, height, mode)
