"""Latent space of a frozen autoencoder for latent diffusion (LDM, Rombach et al. 2022, sec. 3 and appendix G).

The dataset is encoded once at the start of training (posterior mode, deterministic; LDM samples the posterior, but
with its KL weight of ~1e-6 the posterior is nearly a point), latents are multiplied by a scale factor
1 / std(latents) computed from the training data as LDM does, and samples are divided by it before decoding.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.data.pipeline import resize_nearest, to_model_range


@dataclasses.dataclass
class LatentSpace:
    model: Any            # AutoencoderKL
    params: Any
    scale_factor: float
    autoencoder_workdir: str
    autoencoder_sha256: str

    def __post_init__(self):
        self._encode = jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=self.model.encode).mode())
        self._decode = jax.jit(lambda p, z: self.model.apply({"params": p}, z, method=self.model.decode))

    def encode(self, images: np.ndarray, image_size: int, batch_size: int = 256) -> np.ndarray:
        """uint8 images [N, H, W, C] -> unscaled latents float32 [N, H/f, W/f, embed_dim] (posterior mode)."""
        out = []
        for start in range(0, len(images), batch_size):
            x = to_model_range(resize_nearest(images[start:start + batch_size], image_size))
            out.append(np.asarray(self._encode(self.params, jnp.asarray(x))))
        return np.concatenate(out)

    def decode(self, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Scaled latents (what the denoiser models) -> images float32 in about [-1, 1]."""
        out = []
        for start in range(0, len(latents), batch_size):
            z = jnp.asarray(latents[start:start + batch_size]) / self.scale_factor
            out.append(np.asarray(self._decode(self.params, z)))
        return np.concatenate(out)

    def record(self) -> dict:
        return {"scale_factor": self.scale_factor, "autoencoder_workdir": self.autoencoder_workdir,
                "autoencoder_sha256": self.autoencoder_sha256,
                "downsample_factor": self.model.downsample_factor, "latent_channels": self.model.embed_dim}


def scale_factor_from_latents(latents: np.ndarray) -> float:
    """LDM's scale factor: 1 / std of the (unscaled) latents over all elements, in float64."""
    std = float(np.std(np.asarray(latents, np.float64)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"latents have standard deviation {std}: is the autoencoder trained?")
    return 1.0 / std


def load_latent_space(latent_config, images: np.ndarray, image_size: int) -> LatentSpace:
    """The frozen autoencoder of ``latent.autoencoder_workdir`` and the scale factor (given, or from ``images``)."""
    from ddpm_jax.training.loop import load_trained
    from ddpm_jax.training.quality import params_sha256

    workdir = latent_config.get("autoencoder_workdir", "")
    if not workdir:
        raise ValueError("latent diffusion needs latent.autoencoder_workdir: train one with configs/autoencoder_*.py")
    ae_config, model, params = load_trained(workdir)
    if ae_config.get("task") != "autoencoder":
        raise ValueError(f"{workdir} holds a {ae_config.get('task', 'diffusion')} run, not an autoencoder")
    if ae_config.data.image_size != image_size:
        raise ValueError(f"the autoencoder in {workdir} was trained on {ae_config.data.image_size}px images, "
                         f"this config uses {image_size}px")
    space = LatentSpace(model, params, 1.0, os.path.abspath(workdir), params_sha256(params))
    scale = float(latent_config.get("scale_factor", 0.0) or 0.0)
    if not scale:
        n = int(latent_config.get("num_scale_images", 2048))
        scale = scale_factor_from_latents(space.encode(images[:n], image_size))
    space.scale_factor = scale
    return space


def check_or_write_record(space: LatentSpace, workdir: str) -> None:
    """Store the scale factor and autoencoder fingerprint beside the checkpoints; on resume they must not change."""
    path = os.path.join(workdir, "latent.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("autoencoder_sha256") != space.autoencoder_sha256:
            raise ValueError(f"{path}: this run was trained on another autoencoder ({saved.get('autoencoder_workdir')})")
        if not np.isclose(saved["scale_factor"], space.scale_factor, rtol=1e-6):
            raise ValueError(f"{path}: scale factor {saved['scale_factor']} was stored, {space.scale_factor} computed")
        return
    with open(path, "w") as f:
        json.dump(space.record(), f, indent=2)
