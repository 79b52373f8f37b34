"""Deterministic random weights and images for the FID Inception golden test, in numpy only.

Shared by `make_inception_golden.py` (which loads the weights into pytorch-fid's network) and `test_inception.py`
(which regenerates them from the seed and the state-dict shapes stored in the golden file): the real network has
23.9M parameters, far too many to commit. `np.random.default_rng` streams are the same on every platform.
"""
import zlib

import numpy as np


def random_tensor(name: str, shape, seed: int) -> np.ndarray:
    """One state-dict tensor. Convs ~ N(0, 2 / fan_in) (He), BatchNorm gamma ~ U(0.8, 1.2), beta and running mean
    ~ N(0, 0.1^2), running var ~ U(0.5, 1.5), fc ~ N(0, 1 / fan_in) with N(0, 0.1^2) bias: activations stay O(1)
    through all 94 conv layers. The stream depends only on (seed, name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    layer, kind = name.split(".")[-2:]
    shape = tuple(shape)
    if kind == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if layer == "conv":
        return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
    if layer == "fc" and kind == "weight":
        return (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    if kind == "weight":
        return rng.uniform(0.8, 1.2, shape).astype(np.float32)
    if kind == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


def random_state_dict(shapes, seed: int) -> dict[str, np.ndarray]:
    """{name: tensor} for `shapes`, a list of (state-dict name, shape) pairs."""
    return {name: random_tensor(name, shape, seed) for name, shape in shapes}


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """[n, size, size, 3] uint8 images: a few random low-frequency colour waves plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    images = np.zeros((n, size, size, 3))
    for i in range(n):
        for _ in range(6):
            fy, fx = rng.uniform(-6, 6, 2)
            phase = rng.uniform(0, 2 * np.pi)
            colour = rng.uniform(-1, 1, 3)
            images[i] += np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)[..., None] * colour
    images = 127.5 + 40 * images + rng.normal(0, 4, images.shape)
    return np.clip(np.round(images), 0, 255).astype(np.uint8)
