"""The KL autoencoder trains through the same trainer, checkpoints, and reports held-out reconstruction PSNR."""
import json
import os

import ml_collections
import numpy as np

from conftest import tiny_config
from test_training import assert_trees_equal
from ddpm_jax.training import loop


def autoencoder_config(**overrides):
    c = tiny_config(**{"task": "autoencoder", "training.num_steps": 80, "training.batch_size": 32,
                       "training.log_every": 20, "training.checkpoint_every": 40, "optim.lr": 3e-3,
                       "optim.ema_decay": 0.5, **overrides})
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.model.num_groups = 16, (1, 2), 1, 4
    c.model.z_channels, c.model.embed_dim, c.model.attn_levels = 2, 2, ()
    c.autoencoder = ml_collections.ConfigDict({"reconstruction": "l1", "kl_weight": 1e-6})
    return c


def test_autoencoder_trains_and_reports_psnr(tmp_path):
    state = loop.train(autoencoder_config(), str(tmp_path))
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    train = [r for r in records if "train/reconstruction" in r]
    assert train[-1]["train/reconstruction"] < 0.5 * train[0]["train/reconstruction"], train
    psnr = [r["eval/psnr"] for r in records if "eval/psnr" in r]
    assert len(psnr) == 1 and 14.0 < psnr[0] < 60.0, psnr
    assert int(state.step) == 80 and sorted(os.listdir(os.path.join(tmp_path, "checkpoints")))[:2] == ["40", "80"]


def test_autoencoder_resume_is_bit_identical(tmp_path):
    straight = loop.train(autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 2}),
                          str(tmp_path / "a"))
    loop.train(autoencoder_config(**{"training.num_steps": 2, "training.checkpoint_every": 2}), str(tmp_path / "b"))
    resumed = loop.train(autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 2}),
                         str(tmp_path / "b"))
    assert_trees_equal(straight, resumed)


def test_autoencoder_samples_from_its_prior_as_a_vae(tmp_path):
    cfg = autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 4})
    cfg.autoencoder.kl_weight, cfg.autoencoder.reconstruction = 0.02, "l2"
    loop.train(cfg, str(tmp_path))
    out = loop.sample(cfg, str(tmp_path), num=5)
    assert os.path.basename(out["npz"]) == "vae_prior_step4.npz"
    images = np.load(out["npz"])["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0


def test_hinge_losses_match_their_definitions():
    from ddpm_jax.models.discriminator import generator_loss, hinge_d_loss

    real, fake = np.array([2.0, 0.5, -1.0]), np.array([-3.0, 0.0, 1.5])
    expected = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
    np.testing.assert_allclose(float(hinge_d_loss(real, fake)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(generator_loss(fake)), -np.mean(fake), rtol=1e-6)


def test_patch_discriminator_switches_on_at_its_start_step(tmp_path):
    """Before disc_start the discriminator's parameters do not move and the loss is the plain autoencoder loss; after
    it they do, the run checkpoints both players, and a loaded autoencoder has no discriminator."""
    import jax

    cfg = autoencoder_config(**{"training.num_steps": 6, "training.checkpoint_every": 3, "training.log_every": 3,
                                "optim.warmup_steps": 1})
    cfg.autoencoder.update(disc_weight=0.5, disc_start=3, disc_ch=8, disc_layers=1, disc_groups=4)
    run = loop.build_run(cfg)
    init = run.init_fn(jax.random.key(cfg.seed))
    assert set(init.params) == {"autoencoder", "discriminator"}
    mid = loop.train(_with_steps(cfg, 3), str(tmp_path))
    assert_trees_equal(mid.params["discriminator"], init.params["discriminator"])
    final = loop.train(cfg, str(tmp_path))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), final.params["discriminator"],
                                         init.params["discriminator"]))
    assert max(moved) > 0
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert all(np.isfinite(r["train/d_loss"]) for r in records if "train/d_loss" in r)
    _, model, params = loop.load_trained(str(tmp_path))
    assert sorted(params) == ["decoder", "encoder", "post_quant_conv", "quant_conv"]


def _with_steps(cfg, num_steps):
    c = ml_collections.ConfigDict(cfg.to_dict())
    c.training.num_steps = num_steps
    return c
