"""Cascaded pixel diffusion: the super-resolution U-Net's conditioning, noise conditioning augmentation, dynamic
thresholding through every sampler, and a tiny two-stage cascade (digits 4x4 -> 8x8) trained and sampled end to end."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from ddpm_jax import diffusion as D
from ddpm_jax.data import resize_nearest
from ddpm_jax.models.build import unet_from_config
from ddpm_jax.models.unet import UNet
from ddpm_jax.pipelines.cascade import cascade_from_workdirs, load_stage, write_cascade
from ddpm_jax.pipelines.workdir import sample_workdir
from ddpm_jax.tasks import get_task
from ddpm_jax.tasks.base import Run
from ddpm_jax.tasks.sampling import sampler_kwargs
from ddpm_jax.tasks.super_resolution import (SRPipeline, aug_timestep, downsample, noise_augment,
                                             random_aug_timesteps)
from ddpm_jax.training import loop

SCHED = D.make_schedule("linear", 1000)
SR_UNET = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=8, low_res_channels=1)


def _perturbed_params(model, x, low):
    """Initial parameters plus small noise: the zero-initialised output convs (DDPM) would hide every input."""
    params = model.init(jax.random.key(0), x, jnp.zeros((x.shape[0],)),
                        {"low_res": low, "aug_level": jnp.zeros(x.shape[0])})
    leaves, tree = jax.tree.flatten(params["params"])
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def sr_apply_fn():
    return jax.jit(lambda p, x, t, low, s: SR_UNET.apply({"params": p}, x, t, {"low_res": low, "aug_level": s}))


@pytest.mark.slow
def test_sr_unet_concatenates_upsampled_low_res_and_keeps_output_channels(sr_apply_fn):
    x, low = jnp.zeros((2, 8, 8, 1)), jnp.ones((2, 4, 4, 1))
    params = _perturbed_params(SR_UNET, x, low)
    assert params["conv_in"]["kernel"].shape == (3, 3, 2, 16)  # [x, upsample(low)] on channels
    assert "aug_embed" in params
    out = sr_apply_fn(params, x, jnp.zeros(2), low, jnp.zeros(2))
    assert out.shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="low_res"):
        SR_UNET.apply({"params": params}, x, jnp.zeros(2))
    with pytest.raises(ValueError, match="low_res"):
        SR_UNET.apply({"params": params}, x, jnp.zeros(2), {"low_res": jnp.ones((2, 4, 4, 3))})
    plain = UNet(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_groups=8)
    with pytest.raises(ValueError, match="low_res_channels is None"):
        plain.init(jax.random.key(0), x, jnp.zeros(2), {"low_res": low})


def test_augmentation_level_and_low_res_reach_the_network(sr_apply_fn):
    rng = np.random.default_rng(0)
    x, low = jnp.asarray(rng.normal(size=(2, 8, 8, 1)), jnp.float32), jnp.asarray(rng.normal(size=(2, 4, 4, 1)))
    params = _perturbed_params(SR_UNET, x, low)
    t = jnp.full((2,), 500)
    base = np.asarray(sr_apply_fn(params, x, t, low, jnp.zeros(2)))
    other_aug = np.asarray(sr_apply_fn(params, x, t, low, jnp.full((2,), 300.0)))
    other_low = np.asarray(sr_apply_fn(params, x, t, -low, jnp.zeros(2)))
    assert np.abs(base - other_aug).max() > 1e-4
    assert np.abs(base - other_low).max() > 1e-4


def test_noise_augment_level_zero_is_clean_and_levels_map_to_timesteps():
    low = jnp.ones((2, 4, 4, 1))
    noise = jnp.full(low.shape, 3.0)
    np.testing.assert_allclose(noise_augment(SCHED, low, jnp.zeros(2, jnp.int32), noise), low)
    s = aug_timestep(0.3, 1000)
    assert s == 300
    ab = float(SCHED.alpha_bar(s - 1))
    np.testing.assert_allclose(noise_augment(SCHED, low, jnp.full(2, s), noise),
                               np.sqrt(ab) + np.sqrt(1 - ab) * 3.0, rtol=1e-5)
    with pytest.raises(ValueError):
        aug_timestep(1.0, 1000)


class _Recorder:
    """A stand-in SR denoiser that records the condition it is given and predicts its augmentation timestep."""
    num_classes = None

    def __init__(self):
        self.seen = []

    def apply(self, variables, x_t, t, cond, train=False, rngs=None):
        self.seen.append(cond)
        return jnp.broadcast_to(cond["aug_level"].astype(jnp.float32).reshape(-1, 1, 1, 1), x_t.shape)


def _sr_loss(max_aug_level):
    cfg = tiny_config(**{"task": "super_resolution", "model.class_conditional": False, "sr.low_res_size": 4,
                         "sr.max_aug_level": max_aug_level})
    model = _Recorder()
    run = Run(cfg, get_task("super_resolution"), None, model, (8, 8, 1), SCHED)
    return run.task.loss(run), model


def test_training_batches_carry_low_res_and_random_augmentation_levels():
    cfg = tiny_config(task="super_resolution")
    from ddpm_jax.data import load_source, make_pipeline

    pipe = SRPipeline(make_pipeline(cfg, load_source("digits")), 4)
    batch = pipe.batch(0)
    assert batch["low_res"].shape == (16, 4, 4, 1) and batch["image"].shape == (16, 8, 8, 1)
    np.testing.assert_allclose(batch["low_res"], downsample(batch["image"], 4))
    key = jax.random.key(0)
    loss0, aux0 = _sr_loss(0.0)[0](None, batch, key)
    loss5, aux5 = _sr_loss(0.5)[0](None, batch, key)
    assert float(aux0["aug_level"]) == 0.0 and 100 < float(aux5["aug_level"]) < 400
    assert float(loss0) < 3.0 < float(loss5)  # the network saw s = 0, then s ~ U[0, 500)


def test_sr_loss_conditions_on_the_noise_augmented_low_res_image():
    """The denoiser gets z_s = q_sample(low_res, s - 1) at the levels s it is told, not the clean low-res image
    (Imagen's noise conditioning augmentation); recomputed here from the loss's key splits."""
    from ddpm_jax.data import load_source, make_pipeline

    batch = SRPipeline(make_pipeline(tiny_config(), load_source("digits")), 4).batch(0)
    key = jax.random.key(3)
    loss_fn, model = _sr_loss(0.5)
    loss_fn(None, batch, key)
    cond = model.seen[-1]
    _, k_cond, _ = jax.random.split(key, 3)
    _, k_aug_t, k_aug = jax.random.split(k_cond, 3)
    aug_t = random_aug_timesteps(k_aug_t, 16, 0.5, 1000)
    expected = noise_augment(SCHED, batch["low_res"], aug_t, jax.random.normal(k_aug, batch["low_res"].shape))
    np.testing.assert_array_equal(cond["aug_level"], aug_t)
    np.testing.assert_allclose(cond["low_res"], expected, rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(cond["low_res"]) - batch["low_res"]).max() > 0.1


def test_base_images_are_the_sr_stage_low_res_inputs():
    """A cascade's base model at 16px trains on exactly what the 16 -> 32 stage is conditioned on."""
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    base = resize_nearest(images, 16).astype(np.float32)
    sr_low = downsample(resize_nearest(images, 32).astype(np.float32), 16)
    assert np.abs(base - sr_low).max() <= 0.5
    assert resize_nearest(images, 64).shape == (3, 64, 64, 1)
    np.testing.assert_array_equal(downsample(resize_nearest(images, 64).astype(np.float32), 32),
                                  resize_nearest(images, 32))


def _numpy_dynamic_threshold(x, p):
    s = np.maximum(np.quantile(np.abs(x.reshape(len(x), -1)), p, axis=1), 1.0).reshape(-1, 1, 1, 1)
    return np.clip(x, -s, s) / s


@pytest.mark.parametrize("sampler", sorted(D.SAMPLERS))
def test_config_dynamic_threshold_reaches_every_sampler(sampler):
    """sampling.dynamic_threshold (with the default clip_x0 = 1 in the config) thresholds every x0 estimate: a model
    predicting a fixed, out-of-range x0 ends on the numpy reference of Imagen's rule."""
    target = np.random.default_rng(1).normal(size=(2, 4, 4, 1)) * np.array([0.5, 4.0]).reshape(2, 1, 1, 1)
    s = tiny_config(**{"sampling.sampler": sampler, "sampling.num_steps": 3, "sampling.clip_x0": 1.0,
                       "sampling.dynamic_threshold": 0.9}).sampling
    kwargs = sampler_kwargs(s)
    out = D.sample(lambda x, t, c: jnp.asarray(target, jnp.float32), SCHED, jnp.zeros(target.shape),
                   jax.random.key(0), sampler=sampler, prediction_type="x0", **kwargs)
    np.testing.assert_allclose(out, _numpy_dynamic_threshold(target, 0.9), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "sr_*.py"))), ids=os.path.basename)
def test_sr_configs_build_a_low_res_conditioned_unet(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    assert cfg.task == "super_resolution" and cfg.data.image_size % cfg.sr.low_res_size == 0
    model = unet_from_config(cfg.model, 10, low_res_channels=1)
    size, low = cfg.data.image_size, cfg.sr.low_res_size
    cond = {"low_res": jnp.zeros((1, low, low, 1)), "aug_level": jnp.zeros((1,), jnp.int32)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)), jnp.zeros((1,)),
                                               cond))
    assert shapes["params"]["conv_in"]["kernel"].shape[2] == 2


# ------------------------------------------------------------------------------------ a tiny cascade, end to end


@pytest.fixture(scope="module")
def cascade_workdirs(tmp_path_factory):
    """A class-conditional 4x4 digits base model and a 4 -> 8 SR stage, each trained 2 steps."""
    common = {"training.num_steps": 2, "training.log_every": 2, "training.checkpoint_every": 2,
              "training.async_checkpointing": False, "model.ch_mult": (1,), "model.attn_resolutions": (),
              "sampling.num_steps": 2, "sampling.batch_size": 4}
    base_dir, sr_dir = str(tmp_path_factory.mktemp("base")), str(tmp_path_factory.mktemp("sr"))
    loop.train(tiny_config(**common, **{"data.image_size": 4, "sampling.guidance_scale": 2.0}), base_dir)
    sr = tiny_config(**common, **{"task": "super_resolution", "sr.low_res_size": 4, "sr.max_aug_level": 0.5,
                                  "model.class_conditional": False, "sampling.sr_aug_level": 0.2})
    loop.train(sr, sr_dir)
    return base_dir, sr_dir


@pytest.mark.slow
def test_two_stage_cascade_generates_final_resolution_images(cascade_workdirs, tmp_path):
    base_dir, sr_dir = cascade_workdirs
    labels = np.array([7, 7, 3, 1, 0], np.int32)
    result = cascade_from_workdirs(base_dir, [sr_dir], 5, seed=0, labels=labels,
                                   sr_overrides=[{"sampler": "ddpm", "steps": 2, "aug_level": 0.1}])
    base, final = result["images"]
    assert base.shape == (5, 4, 4, 1) and final.shape == (5, 8, 8, 1)
    assert np.all(np.isfinite(final)) and np.abs(final).max() <= 1.0
    np.testing.assert_array_equal(result["labels"], labels)
    paths = write_cascade(str(tmp_path / "c.png"), result)
    with np.load(paths["npz"]) as z:
        assert z["images"].shape == (5, 8, 8, 1) and z["stage_0"].shape == (5, 4, 4, 1)
    with pytest.raises(ValueError, match="enlarges"):  # stage sizes must chain: 8px images into a 4 -> 8 stage
        cascade_from_workdirs(base_dir, [sr_dir, sr_dir], 2, labels=labels[:2])


def test_sr_sampler_output_depends_on_the_low_res_input(cascade_workdirs):
    """Same noise, different low-res inputs: different SR samples (the condition is used at sampling time)."""
    stage = load_stage(cascade_workdirs[1], ("super_resolution",), "an SR stage", steps=2)
    sample_fn = stage.run.task.make_sample_fn(stage.run)
    leaves, tree = jax.tree.flatten(stage.params)  # 2 training steps leave the zero-initialised output convs ~0
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    x_T = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    low = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 1)), jnp.float32)
    a = np.asarray(sample_fn(params, x_T, jax.random.key(1), {"low_res": low}))
    b = np.asarray(sample_fn(params, x_T, jax.random.key(1), {"low_res": -low}))
    assert a.shape == (4, 8, 8, 1) and np.abs(a - b).max() > 1e-3


def test_sr_eta_override_reaches_the_stage(cascade_workdirs):
    """load_stage(eta=...) (``--sr_eta``): with a clean low-res input, DDIM eta 0 is deterministic given x_T (the
    key does not matter) and eta 1 is ancestral (it does)."""
    x_T = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
    low = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 4, 4, 1)), jnp.float32)
    spread = {}
    for eta in (0.0, 1.0):
        stage = load_stage(cascade_workdirs[1], ("super_resolution",), "an SR stage", sampler="ddim", steps=2,
                           aug_level=0.0, eta=eta)
        sample_fn = stage.run.task.make_sample_fn(stage.run)
        a, b = (np.asarray(sample_fn(stage.params, x_T, jax.random.key(k), {"low_res": low})) for k in (1, 2))
        spread[eta] = np.abs(a - b).max()
    assert spread[0.0] < 1e-6 < 1e-3 < spread[1.0]


def test_nonpositive_clip_x0_is_an_error_not_an_all_zero_sample():
    for bad in (0.0, -1.0, False):
        with pytest.raises(ValueError, match="clip_x0 must be a positive bound"):
            D.make_x0_transform(bad)
    assert D.make_x0_transform(None) is None
    np.testing.assert_allclose(D.make_x0_transform(1.0)(jnp.array([-3.0, 0.5, 2.0])), [-1.0, 0.5, 1.0])


def test_generate_command_runs_the_cascade(cascade_workdirs, tmp_path, capsys):
    """``python -m ddpm_jax.generate --workdir=BASE --sr_workdir=SR --class 7 --class 3`` with per-stage settings."""
    from ddpm_jax import generate

    base_dir, sr_dir = cascade_workdirs
    out = str(tmp_path / "cascade.png")
    generate.FLAGS(["generate", f"--workdir={base_dir}", f"--sr_workdir={sr_dir}", "--class=7", "--class=3",
                    "--num=4", "--steps=2", "--sr_steps=2", "--sr_sampler=dpm_solver_pp_2m", "--sr_aug_level=0.3",
                    "--sr_eta=1.0",
                    f"--out={out}"])
    try:
        generate.cascade()
    finally:
        generate.FLAGS.unparse_flags()
    assert "4px" in capsys.readouterr().out
    with np.load(str(tmp_path / "cascade.npz")) as z:
        assert z["images"].shape == (4, 8, 8, 1)
        np.testing.assert_array_equal(z["labels"], [7, 3, 7, 3])
    assert os.path.exists(str(tmp_path / "cascade_stages.png"))


def test_sample_mode_super_resolves_held_out_images(cascade_workdirs):
    """``--mode=sample`` on an SR workdir: low-res, super-resolved and original rows of test images."""
    sr_dir = cascade_workdirs[1]
    paths = sample_workdir(sr_dir, 3, out_name="sr_check")
    with np.load(paths["npz"]) as z:
        assert z["images"].shape == (9, 8, 8, 1) and z["images"].dtype == np.uint8


@pytest.mark.slow
def test_cascade_from_a_text_to_image_base(cascade_workdirs, tmp_path, tiny_encoder_path):
    """Prompt -> text-conditional 4x4 base (the tiny test encoder's first layer) -> the 4 -> 8 SR stage."""
    base = str(tmp_path / "t2i")
    loop.train(tiny_config(**{"task": "text_diffusion", "model.class_conditional": False, "text.num_layers": 1,
                              "text.encoder_path": tiny_encoder_path,
                              "data.image_size": 4, "model.ch_mult": (1,), "model.attn_resolutions": (),
                              "training.num_steps": 1, "training.log_every": 1, "training.checkpoint_every": 1,
                              "sampling.num_steps": 2, "sampling.batch_size": 4}), base)
    result = cascade_from_workdirs(base, [cascade_workdirs[1]], 3, prompts=["a handwritten digit two", "a seven"],
                                   sr_overrides=[{"steps": 2}])
    assert [x.shape for x in result["images"]] == [(3, 4, 4, 1), (3, 8, 8, 1)]
    np.testing.assert_array_equal(result["labels"], [0, 1, 0])  # prompt index per image
