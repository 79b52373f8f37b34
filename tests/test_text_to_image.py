"""Text-to-image: text-conditional U-Net (pooled vector, cross-attention with the mask), classifier-free guidance with
the empty prompt as null condition, training through the trainer, the generate command, and the CLIP task."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from ddpm_jax import diffusion
from ddpm_jax.models.unet import UNet
from ddpm_jax.pipelines.workdir import generate_text
from ddpm_jax.tasks import build_run, get_task, load_trained
from ddpm_jax.tasks import text as t2i
from ddpm_jax.tasks.clip import clip_from_config
from ddpm_jax.training import loop
from tiny_text_encoder import HIDDEN, tiny_text_encoder_path

PROMPT = "a handwritten digit two"


def text_config(**overrides):
    """The tiny digits config as a text-to-image run: captions through the test encoder's first layer, 16 tokens."""
    return tiny_config(**{"task": "text_diffusion", "model.class_conditional": False,
                          "text.encoder_path": tiny_text_encoder_path(), "text.num_layers": 1,
                          "text.cond_drop_prob": 0.2, "training.num_steps": 2, "training.checkpoint_every": 2,
                          "sampling.num_steps": 3, **overrides})


@pytest.fixture(scope="module")
def t2i_workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("t2i"))
    loop.train(text_config(), wd)
    return wd


@pytest.fixture(scope="module")
def t2i_run():
    return build_run(text_config())


@pytest.fixture(scope="module")
def t2i_params(t2i_run):
    """Random (not zero-initialised) parameters of the run's U-Net, without compiling its init."""
    shapes = jax.eval_shape(t2i_run.init_params, jax.random.key(0))
    return perturbed_params(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), scale=0.1)


@pytest.fixture(scope="module")
def t2i_apply(t2i_run):
    """The run's text-conditional U-Net, jitted once for the module's tests."""
    return jax.jit(lambda p, x, t, cond: t2i_run.model.apply({"params": p}, x, t, cond))


def perturbed_params(params, key=jax.random.PRNGKey(7), scale=0.05):
    """Params with every leaf perturbed, so that zero-initialised output layers do not hide the conditioning."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.mark.slow
def test_text_run_trains_on_cached_caption_embeddings(t2i_workdir, t2i_run):
    record = json.load(open(os.path.join(t2i_workdir, "text_encoder.json")))
    assert record["num_layers"] == 1 and record["dim"] == HIDDEN and record["max_length"] == 16
    cache = os.listdir(os.path.join(t2i_workdir, "text_cache"))
    assert len(cache) == 1 and cache[0].startswith("text_embeddings_")
    with np.load(os.path.join(t2i_workdir, "text_cache", cache[0])) as f:
        assert len(f["texts"]) == 60  # 10 digits x 6 templates: unique captions only
    metrics = [json.loads(line) for line in open(os.path.join(t2i_workdir, "metrics.jsonl"))]
    assert all(np.isfinite(m["train/loss"]) for m in metrics if "train/loss" in m)
    params = load_trained(t2i_workdir, use_ema=False).params
    assert "pooled_proj" in params and "mid_xattn" in params and "down_1_xattn_0" in params


def test_text_batches_are_a_pure_function_of_the_step_and_match_the_captions(t2i_workdir, t2i_run):
    pipeline = t2i_run.task.pipeline(t2i_run, t2i_workdir, True)
    again_run = build_run(text_config())
    again = again_run.task.pipeline(again_run, t2i_workdir, True)
    b3, b3_again = pipeline.batch(3), again.batch(3)
    assert set(b3) == {"image", "label", "context", "context_mask", "pooled"}
    for k in b3:
        np.testing.assert_array_equal(b3[k], b3_again[k])
    assert b3["context"].shape == (16, 16, HIDDEN) and b3["pooled"].shape == (16, HIDDEN)
    idx = pipeline.inner.indices(3)
    captions = [t2i_run.text.captions[i] for i in idx[:3]]
    direct = t2i_run.text.encode(captions)
    np.testing.assert_allclose(b3["context"][:3], direct["context"], atol=1e-5)
    np.testing.assert_array_equal(b3["context_mask"][:3], direct["context_mask"])
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert all(names[y] in c for y, c in zip(b3["label"][:3], captions))


def test_padding_tokens_change_nothing_and_real_tokens_and_pooled_do(t2i_run, t2i_params, t2i_apply):
    params, apply = t2i_params, t2i_apply
    cond = t2i_run.text.encode([PROMPT, "two"])
    assert not cond["context_mask"].all()  # both prompts are padded to 16 tokens
    junk = np.where(cond["context_mask"][..., None], cond["context"],
                    100.0 * np.random.default_rng(0).standard_normal(cond["context"].shape)).astype(np.float32)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([10, 500])
    out = apply(params, x, t, cond)
    out_junk = apply(params, x, t, dict(cond, context=junk))
    np.testing.assert_allclose(out_junk, out, atol=1e-5)
    swapped = apply(params, x, t, dict(cond, context=cond["context"][::-1], context_mask=cond["context_mask"][::-1]))
    assert not np.allclose(swapped, out, atol=1e-4)  # the real tokens do matter
    other_pooled = apply(params, x, t, dict(cond, pooled=cond["pooled"][::-1]))
    assert not np.allclose(other_pooled, out, atol=1e-4)  # and so does the pooled vector


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_guidance_scale_1_is_the_conditional_model_and_0_the_unconditional(t2i_run, t2i_params, t2i_apply, scale):
    null, params, apply = t2i_run.text.null, t2i_params, t2i_apply
    cond = {k: jnp.asarray(v) for k, v in t2i_run.text.encode([PROMPT, "a handwritten digit seven"]).items()}
    uncond = {k: jnp.broadcast_to(jnp.asarray(null[k]), cond[k].shape) for k in cond}
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    t = jnp.array([100, 700])
    eps_c, eps_u = apply(params, x, t, cond), apply(params, x, t, uncond)
    assert not np.allclose(eps_c, eps_u, atol=1e-4)
    guided = diffusion.classifier_free_guidance(lambda x, t, c: apply(params, x, t, c), scale, null)(x, t, cond)
    np.testing.assert_allclose(guided, eps_u + scale * (eps_c - eps_u), atol=1e-5)
    if scale == 1.0:
        np.testing.assert_allclose(guided, eps_c, atol=1e-6)
    if scale == 0.0:
        np.testing.assert_allclose(guided, eps_u, atol=1e-5)


def test_null_condition_is_the_empty_prompt_and_dropout_swaps_whole_examples(t2i_run):
    null = t2i_run.text.null
    empty = t2i_run.text.encode([""])
    assert null["context_mask"].sum() == 2  # [CLS] [SEP]: attention never sees an all-masked row
    for k in null:
        np.testing.assert_array_equal(null[k], empty[k][0])
    cond = {k: jnp.asarray(v) for k, v in t2i_run.text.encode([PROMPT] * 400).items()}
    dropped = t2i.drop_text_condition(jax.random.key(0), cond, null, 0.25)
    is_null = np.all(np.asarray(dropped["pooled"]) == null["pooled"], axis=1)
    is_cond = np.all(np.asarray(dropped["pooled"]) == np.asarray(cond["pooled"]), axis=1)
    assert np.all(is_null ^ is_cond) and 0.15 < is_null.mean() < 0.35
    np.testing.assert_array_equal(np.asarray(dropped["context_mask"])[is_null],
                                  np.broadcast_to(null["context_mask"], (int(is_null.sum()), 16)))
    assert t2i.drop_text_condition(jax.random.key(0), cond, null, 0.0) is cond


def test_pooled_vector_and_cross_attention_resolutions_are_opt_in():
    base = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, dropout=0.0)
    x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
    ctx, mask = jnp.zeros((1, 3, 5)), jnp.ones((1, 3), bool)
    keys = ("context", "context_mask", "pooled")
    init = lambda model, *args: jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, dict(zip(keys, args))))
    default = init(UNet(**base, context_dim=5), ctx, mask)["params"]
    assert "pooled_proj" not in default and "down_1_xattn_0" in default and "down_0_xattn_0" not in default
    at8 = UNet(**base, context_dim=5, cross_attn_resolutions=(8,), pooled_dim=5)
    params = init(at8, ctx, mask, jnp.zeros((1, 5)))["params"]
    assert params["pooled_proj"]["kernel"].shape == (5, 32)
    assert "down_0_xattn_0" in params and "down_0_attn_0" not in params  # cross- without self-attention at 8x8
    assert "down_1_attn_0" in params and "down_1_xattn_0" not in params and "mid_xattn" in params
    with pytest.raises(ValueError, match="pooled_dim"):
        init(at8, ctx, mask)


def run_generate(*args):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "ddpm_jax.generate", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_generate_command_writes_a_png_grid_and_npz(t2i_workdir, tmp_path):
    out = str(tmp_path / "two.png")
    proc = run_generate(f"--workdir={t2i_workdir}", "--prompt", PROMPT, "--guidance", "3", "--num", "5",
                        "--sampler", "ddim", "--steps", "3", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wrote 5 images" in proc.stdout and "guidance 3" in proc.stdout
    with np.load(str(tmp_path / "two.npz")) as f:
        assert f["images"].shape == (5, 8, 8, 1) and f["images"].dtype == np.uint8
        assert list(f["prompts"]) == [PROMPT]
    from PIL import Image

    assert Image.open(out).size[0] >= 8 * 3


def test_generate_errors_are_one_line(t2i_workdir, tmp_path):
    proc = run_generate(f"--workdir={tmp_path}", "--prompt", PROMPT)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: FileNotFoundError")
    assert "config.json not found" in proc.stderr
    with open(tmp_path / "config.json", "w") as f:
        f.write(tiny_config().to_json())
    with pytest.raises(ValueError, match="not a text-to-image model"):
        generate_text(str(tmp_path), [PROMPT])
    with pytest.raises(ValueError, match="at least one"):
        generate_text(t2i_workdir, [])
    with pytest.raises(ValueError, match="must be >= 1"):
        generate_text(t2i_workdir, [PROMPT], num=0)


def test_sampling_with_guidance_is_deterministic_and_finite(t2i_workdir, t2i_run):
    params = load_trained(t2i_workdir).params
    sample = lambda: t2i_run.task.generate(t2i_run, params, jax.random.key(0), 3, prompts=[PROMPT, "nine"],
                                           guidance_scale=2.0)
    a, index, ncols = sample()
    b, _, _ = sample()
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 8, 8, 1) and np.all(np.isfinite(a)) and list(index) == [0, 1, 0] and ncols == 2


def test_text_encoder_mismatch_is_refused(t2i_workdir, t2i_run, tmp_path):
    record = json.load(open(os.path.join(t2i_workdir, "text_encoder.json")))
    record["fingerprint"] = "0" * 64
    json.dump(record, open(tmp_path / "text_encoder.json", "w"))
    with pytest.raises(ValueError, match="another text encoder"):
        t2i.check_or_write_record(t2i_run.text, str(tmp_path))


def test_invalid_text_configs_fail_early():
    with pytest.raises(ValueError, match="cond_drop_prob"):
        get_task("text_diffusion").validate(text_config(**{"text.cond_drop_prob": 1.0}))
    with pytest.raises(ValueError, match="class_conditional"):
        get_task("text_diffusion").validate(text_config(**{"model.class_conditional": True}))


def clip_config(**overrides):
    c = tiny_config(**{"task": "clip", "text.encoder_path": tiny_text_encoder_path(), "text.num_layers": 1,
                       "training.num_steps": 6, "training.batch_size": 32, "training.log_every": 3,
                       "training.checkpoint_every": 6, "optim.lr": 3e-3, **overrides})
    c.clip.embed_dim, c.clip.image_channels, c.clip.text_hidden, c.clip.num_groups = 16, (8, 16), 32, 4
    return c


@pytest.mark.slow
def test_clip_trains_through_the_trainer_and_scores_images(tmp_path):
    from ddpm_jax.evaluation.quality import clip_score_of, load_domain_clip

    wd = str(tmp_path)
    loop.train(clip_config(), wd)
    records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    train = [r for r in records if "train/loss" in r]
    assert len(train) == 2 and all(np.isfinite(r["train/loss"]) for r in train)
    assert "train/accuracy_i2t" in train[0] and "train/logit_scale" in train[0]
    ev = [r for r in records if "eval/zero_shot_accuracy" in r][-1]
    assert 0.0 <= ev["eval/zero_shot_accuracy"] <= 1.0 and 0.0 <= ev["eval/clip_score"] <= 100.0
    clip = load_domain_clip(wd)
    from ddpm_jax.data import load_digits

    scores = clip_score_of(clip, load_digits("test").images[:4], ["a handwritten digit two"] * 4)
    assert 0.0 <= scores["clip_score"] <= 100.0 and scores["clipscore_hessel"] == pytest.approx(
        scores["clip_score"] * 2.5 / 100.0)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(tiny_config().to_json())
    with pytest.raises(ValueError, match="not a clip run"):
        load_domain_clip(str(other))


@pytest.mark.slow
def test_latent_text_to_image_trains_and_generates(tmp_path):
    from test_autoencoder_training import autoencoder_config

    ae = str(tmp_path / "ae")
    loop.train(autoencoder_config(**{"training.num_steps": 4, "training.checkpoint_every": 4}), ae)
    wd = str(tmp_path / "ldm")
    c = text_config(**{"task": "latent_text_diffusion", "sampling.clip_x0": None})
    c.latent.autoencoder_workdir = ae
    c.model.attn_resolutions = (2,)
    loop.train(c, wd)
    assert os.path.exists(os.path.join(wd, "latent.json")) and os.path.exists(os.path.join(wd, "text_encoder.json"))
    out = generate_text(wd, [PROMPT], 3, 2.0, "ddim", 3)
    assert out["images"].shape == (3, 8, 8, 1)  # decoded pixels, not 4x4x2 latents


@pytest.mark.parametrize("name", ["t2i_fashion_mnist", "t2i_ldm_fashion_mnist_f4", "clip_fashion_mnist"])
def test_text_configs_build_their_models(name):
    from test_configs import load

    from ddpm_jax.models.build import unet_from_config

    cfg = load(os.path.join(ROOT, "configs", f"{name}.py"))
    get_task(cfg.task).validate(cfg)
    if cfg.task == "clip":
        model = clip_from_config(cfg.clip)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)), jnp.zeros((1, 384))))
    else:
        size = 8 if cfg.task == "latent_text_diffusion" else 32
        model = unet_from_config(cfg.model, None, 384, 384)
        n = cfg.text.max_length
        cond = {"context": jnp.zeros((1, n, 384)), "context_mask": jnp.ones((1, n), bool), "pooled": jnp.zeros((1, 384))}
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 4)), jnp.zeros((1,)),
                                                   cond))
        assert any("xattn" in k for k in shapes["params"]) and "pooled_proj" in shapes["params"]
    assert sum(x.size for x in jax.tree.leaves(shapes)) > 0
