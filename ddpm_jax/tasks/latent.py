"""The Latent wrapper: a denoising task in the latent space of a frozen autoencoder (LDM, Rombach et al. 2022).

The dataset is encoded once at the start of training (posterior mode, deterministic; LDM samples the posterior, but
with its KL weight of ~1e-6 the posterior is nearly a point), latents are multiplied by a scale factor
1 / std(latents) computed from the training data as LDM does (sec. 3 and appendix G), and samples are divided by it
before decoding. ``WORKDIR/latent.json`` pins the autoencoder (weights fingerprint) and the scale factor to the run.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import storage

from ddpm_jax.data import ArrayPipeline, resize_nearest, to_model_range
from ddpm_jax.tasks.base import Wrapper
from ddpm_jax.tasks.loading import load_trained
from ddpm_jax.workdir import params_sha256

log = logging.getLogger("ddpm_jax")
RECORD = "latent.json"


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
    workdir = latent_config.autoencoder_workdir
    if not workdir:
        raise ValueError("latent diffusion needs latent.autoencoder_workdir: train one with configs/autoencoder_*.py")
    trained = load_trained(workdir)
    if trained.config.task != "autoencoder":
        raise ValueError(f"{workdir} holds a {trained.config.task} run, not an autoencoder")
    if trained.config.data.image_size != image_size:
        raise ValueError(f"the autoencoder in {workdir} was trained on {trained.config.data.image_size}px images, "
                         f"this config uses {image_size}px")
    space = LatentSpace(trained.run.model, trained.params, 1.0, storage.resolve(workdir), params_sha256(trained.params))
    scale = float(latent_config.scale_factor or 0.0)
    if not scale:
        scale = scale_factor_from_latents(space.encode(images[:latent_config.num_scale_images], image_size))
    space.scale_factor = scale
    return space


def check_or_write_record(space: LatentSpace, workdir: str, write: bool = True) -> None:
    """Store the scale factor and autoencoder fingerprint beside the checkpoints (``write``); on resume and when
    sampling they must not change."""
    path = storage.join(workdir, RECORD)
    saved = storage.read_json(path)
    if saved is not None:
        if saved.get("autoencoder_sha256") != space.autoencoder_sha256:
            raise ValueError(f"{path}: this run was trained on another autoencoder ({saved.get('autoencoder_workdir')})")
        if not np.isclose(saved["scale_factor"], space.scale_factor, rtol=1e-6):
            raise ValueError(f"{path}: scale factor {saved['scale_factor']} was stored, {space.scale_factor} computed")
        return
    if write:
        storage.write_json(path, space.record())


class Latent(Wrapper):
    """The inner denoising task on scaled latents of a frozen autoencoder; samples are decoded to pixels."""

    def validate(self, config):
        self.inner.validate(config)
        if not config.latent.autoencoder_workdir:
            raise ValueError("latent diffusion needs latent.autoencoder_workdir: train one with "
                             "configs/autoencoder_*.py")

    def build(self, config, split=None, source=None, text=None):
        run = self.inner.build(config, split, source, text)
        run.task = self
        run.latent = load_latent_space(config.latent, run.source.images, config.data.image_size)
        f = run.latent.model.downsample_factor
        run.image_shape = (config.data.image_size // f, config.data.image_size // f, run.latent.model.embed_dim)
        return run

    def check_or_write_records(self, run, workdir, write=True):
        self.inner.check_or_write_records(run, workdir, write)
        check_or_write_record(run.latent, workdir, write)

    def pipeline(self, run, workdir, main_process):
        """The dataset encoded once by the frozen autoencoder and scaled; batch k as for pixels."""
        config = run.config
        latents = run.latent.encode(run.source.images, config.data.image_size) * run.latent.scale_factor
        log.info("encoded %d images to latents %s with the autoencoder of %s (scale factor %.5f)", len(latents),
                 "x".join(map(str, latents.shape[1:])), run.latent.autoencoder_workdir, run.latent.scale_factor)
        labels = run.source.labels if run.source.labels is not None else np.zeros(len(latents), np.int32)
        return ArrayPipeline(latents, labels, config.training.batch_size, config.seed, jax.process_index(),
                             jax.process_count())
