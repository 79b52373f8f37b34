"""Latent diffusion on a frozen autoencoder: scale factor from data, training on latents, decoding samples."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import tiny_config
from ddpm_jax.data import load_digits
from ddpm_jax.training import loop
from ddpm_jax.pipelines.workdir import sample_workdir
from ddpm_jax.tasks import build_run
from ddpm_jax.tasks.latent import scale_factor_from_latents
from test_autoencoder_training import autoencoder_config


@pytest.fixture(scope="module")
def autoencoder_workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("autoencoder"))
    loop.train(autoencoder_config(**{"training.num_steps": 40, "training.checkpoint_every": 40}), wd)
    return wd


def latent_config(ae_workdir, **overrides):
    c = tiny_config(**{"task": "latent_diffusion", "sampling.clip_x0": None, **overrides})
    c.latent.autoencoder_workdir = ae_workdir
    c.model.attn_resolutions = (2,)
    return c


@pytest.fixture(scope="module")
def latent_workdir(autoencoder_workdir, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("latent"))
    loop.train(latent_config(autoencoder_workdir), wd)
    return wd


def test_latent_diffusion_trains_on_scaled_latents_and_decodes_samples(autoencoder_workdir, latent_workdir):
    wd = latent_workdir
    cfg = latent_config(autoencoder_workdir)
    record = json.load(open(os.path.join(wd, "latent.json")))
    run = build_run(cfg)
    unscaled = run.latent.encode(load_digits("train").images[:2048], 8)
    assert record["scale_factor"] == pytest.approx(scale_factor_from_latents(unscaled), rel=1e-6)
    assert record["downsample_factor"] == 2 and run.image_shape == (4, 4, 2)
    assert np.std(unscaled * record["scale_factor"]) == pytest.approx(1.0, rel=1e-5)
    out = sample_workdir(wd, 6, cfg)
    images = np.load(out["npz"])["images"]
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8  # decoded to pixels, not latents


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver_pp_2m"])
def test_every_sampler_works_unchanged_in_latent_space(autoencoder_workdir, latent_workdir, sampler):
    cfg = latent_config(autoencoder_workdir, **{"sampling.sampler": sampler, "sampling.num_steps": 4})
    out = sample_workdir(latent_workdir, 3, cfg, out_name=f"test_{sampler}")
    images = np.load(out["npz"])["images"]
    assert images.shape == (3, 8, 8, 1) and images.std() > 0


def test_resume_refuses_a_different_autoencoder(autoencoder_workdir, latent_workdir, tmp_path):
    wd = str(tmp_path / "copy")
    shutil.copytree(latent_workdir, wd)
    record_path = os.path.join(wd, "latent.json")
    record = json.load(open(record_path))
    record["autoencoder_sha256"] = "0" * 64
    json.dump(record, open(record_path, "w"))
    with pytest.raises(ValueError, match="trained on another autoencoder"):
        loop.train(latent_config(autoencoder_workdir, **{"training.num_steps": 6}), wd)


def test_missing_autoencoder_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="latent.autoencoder_workdir"):
        build_run(latent_config(""))
    with pytest.raises(FileNotFoundError, match="not a ddpm_jax workdir"):
        build_run(latent_config(str(tmp_path)))
