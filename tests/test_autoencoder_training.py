"""The KL autoencoder trains through the same trainer, checkpoints, and reports held-out reconstruction PSNR."""
import json
import os

import numpy as np
import pytest

from conftest import tiny_config
from test_training import assert_trees_equal
from ddpm_jax.pipelines.workdir import sample_workdir
from ddpm_jax.tasks import build_run, load_trained
from ddpm_jax.tasks.autoencoder import make_autoencoder_loss
from ddpm_jax.training import loop


def autoencoder_config(**overrides):
    c = tiny_config(**{"task": "autoencoder", "training.num_steps": 80, "training.batch_size": 32,
                       "training.log_every": 20, "training.checkpoint_every": 40, "optim.lr": 3e-3,
                       "optim.ema_decay": 0.5, **overrides})
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks, c.model.num_groups = 16, (1, 2), 1, 4
    c.model.z_channels, c.model.embed_dim, c.model.attn_levels = 2, 2, ()
    c.autoencoder.reconstruction, c.autoencoder.kl_weight = "l1", 1e-6
    return c


def test_autoencoder_trains_and_reports_psnr(tmp_path):
    state = loop.train(autoencoder_config(), str(tmp_path))
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    train = [r for r in records if "train/reconstruction" in r]
    assert train[-1]["train/reconstruction"] < 0.5 * train[0]["train/reconstruction"], train
    psnr = [r["eval/psnr"] for r in records if "eval/psnr" in r]
    assert len(psnr) == 1 and 14.0 < psnr[0] < 60.0, psnr
    assert int(state.step) == 80 and sorted(os.listdir(os.path.join(tmp_path, "checkpoints")))[:2] == ["40", "80"]


@pytest.mark.slow  # resume is the shared trainer's, checked bit for bit in test_training
def test_autoencoder_resume_is_bit_identical(tmp_path):
    straight = loop.train(autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 2}),
                          str(tmp_path / "a"))
    loop.train(autoencoder_config(**{"training.num_steps": 2, "training.checkpoint_every": 2}), str(tmp_path / "b"))
    resumed = loop.train(autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 2}),
                         str(tmp_path / "b"))
    assert_trees_equal(straight, resumed)


@pytest.mark.slow
def test_autoencoder_samples_from_its_prior_as_a_vae(tmp_path):
    cfg = autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 4})
    cfg.autoencoder.kl_weight, cfg.autoencoder.reconstruction = 0.02, "l2"
    loop.train(cfg, str(tmp_path))
    out = sample_workdir(str(tmp_path), 5, cfg)
    assert os.path.basename(out["npz"]) == "vae_prior_step4.npz"
    images = np.load(out["npz"])["images"]
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8 and images.std() > 0


def test_hinge_losses_match_their_definitions():
    from ddpm_jax.models.discriminator import generator_loss, hinge_d_loss

    real, fake = np.array([2.0, 0.5, -1.0]), np.array([-3.0, 0.0, 1.5])
    expected = 0.5 * (np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake)))
    np.testing.assert_allclose(float(hinge_d_loss(real, fake)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(generator_loss(fake)), -np.mean(fake), rtol=1e-6)


@pytest.mark.slow
def test_adversarial_terms_switch_on_at_disc_start():
    """Before autoencoder.disc_start the discriminator gets no gradient and the autoencoder's gradient is the plain
    reconstruction + KL one; from it on, both players get the adversarial terms (each through stop_gradient)."""
    import jax
    import jax.numpy as jnp


    cfg = autoencoder_config()
    cfg.autoencoder.update(disc_weight=0.5, disc_start=3, disc_ch=8, disc_layers=1, disc_groups=4)
    run = build_run(cfg)
    params = run.init_params(jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    batch, key = {"image": x, "label": jnp.zeros(4, jnp.int32)}, jax.random.key(1)
    adversarial = jax.jit(jax.grad(lambda p, s: run.task.loss(run)(p, batch, key, s)[0]))
    plain = jax.jit(jax.grad(lambda p: make_autoencoder_loss(run.model, "l1", 1e-6)(p, batch, key)[0]))
    before, after = adversarial(params, 2), adversarial(params, 3)
    norm = lambda tree: max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(tree))
    assert norm(before["discriminator"]) == 0.0 and norm(after["discriminator"]) > 0
    diff = jax.tree.map(lambda a, b: a - b, before["autoencoder"], plain(params["autoencoder"]))
    assert norm(diff) < 1e-6
    assert norm(jax.tree.map(lambda a, b: a - b, after["autoencoder"], before["autoencoder"])) > 1e-6


@pytest.mark.slow
def test_autoencoder_with_discriminator_trains_checkpoints_and_loads_without_it(tmp_path):
    import jax

    cfg = autoencoder_config(**{"training.num_steps": 3, "training.checkpoint_every": 3, "training.log_every": 3,
                                "optim.warmup_steps": 1})
    cfg.autoencoder.update(disc_weight=0.5, disc_start=1, disc_ch=8, disc_layers=1, disc_groups=4)
    init = loop.build_training(cfg).init_fn(jax.random.key(cfg.seed))
    final = loop.train(cfg, str(tmp_path))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), final.params["discriminator"],
                                         init.params["discriminator"]))
    assert max(moved) > 0
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    assert all(np.isfinite(r["train/d_loss"]) for r in records if "train/d_loss" in r)
    trained = load_trained(str(tmp_path))
    model, params = trained.run.model, trained.params
    assert sorted(params) == ["decoder", "encoder", "post_quant_conv", "quant_conv"]


def test_discriminator_too_deep_for_the_image_is_a_clear_error():
    import jax
    import jax.numpy as jnp

    from ddpm_jax.models.discriminator import PatchDiscriminator

    with pytest.raises(ValueError, match="no output for 8x8 images"):
        PatchDiscriminator(ch=8, num_layers=2, num_groups=4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
