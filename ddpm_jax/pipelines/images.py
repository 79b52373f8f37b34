"""Image grids and files: uint8 grids as PNG, sample arrays as .npz."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ddpm_jax import storage


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1, upscale: int = 1) -> np.ndarray:
    """Tile uint8 images [N, H, W, C] into one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] grid (nearest upscaled)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"make_grid expects uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if upscale > 1:
        images = images.repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, h, w, c = images.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return grid


def save_png(path: str, image: np.ndarray) -> str:
    """Write ``image`` as a PNG to a local or gs:// path (atomically)."""
    image = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    storage.write_bytes_atomic(path, buf.getvalue())
    return path


def save_grid(path: str, images: np.ndarray, ncols: int | None = None, min_side: int = 256) -> str:
    """Save a PNG grid, upscaled (nearest) so that small images stay visible."""
    upscale = max(1, min_side // (images.shape[1] * (ncols or int(np.ceil(np.sqrt(len(images)))))))
    return save_png(path, make_grid(images, ncols, upscale=upscale))
