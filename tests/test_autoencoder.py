"""Tests of the KL autoencoder: agreement with diffusers' AutoencoderKL, shapes, the posterior, gradients, errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.models.autoencoder import AutoencoderKL, DiagonalGaussian, params_from_diffusers_state_dict

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "autoencoder_diffusers.npz")
SD_VAE_PARAMS = 83_653_863
TINY = dict(in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=3, embed_dim=2, num_groups=4)


def count_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def shape_of(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def param_shapes(model: AutoencoderKL, x_shape):
    """Parameter shapes via jax.eval_shape (no FLOPs)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, sample_posterior=False), x)


def random_params(model: AutoencoderKL, x_shape, seed: int = 0):
    """Random params (kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2)); unlike `init`,
    no residual branch is zero, so every parameter gets a gradient."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if "kernel" in name:
            return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray(0.1 * z + (1.0 if "scale" in name else 0.0))

    return jax.tree_util.tree_map_with_path(draw, param_shapes(model, x_shape))


def jit_method(model: AutoencoderKL, method: str):
    """`model.apply(params, ..., method=method)` compiled as one program."""
    return jax.jit(lambda params, *args: model.apply(params, *args, method=method))


@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def golden_state_dict(data, tag: str) -> dict:
    prefix = f"{tag}/state_dict/"
    return {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}


def golden_model(data, tag: str) -> AutoencoderKL:
    """Our AutoencoderKL configured like the diffusers model `tag` stored in the golden file."""
    cfg = json.loads(str(data[f"{tag}/config_json"]))
    channels = cfg["block_out_channels"]
    attn_down = tuple(i for i, t in enumerate(cfg["down_block_types"]) if t.startswith("Attn"))
    attn_up = tuple(len(channels) - 1 - i for i, t in enumerate(cfg["up_block_types"]) if t.startswith("Attn"))
    assert sorted(attn_down) == sorted(attn_up)
    return AutoencoderKL(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], ch=channels[0],
                         ch_mult=tuple(c // channels[0] for c in channels), num_res_blocks=cfg["layers_per_block"],
                         attn_levels=attn_down, z_channels=cfg["latent_channels"], embed_dim=cfg["latent_channels"],
                         num_groups=cfg["norm_num_groups"])


nchw_to_nhwc = lambda a: jnp.asarray(a).transpose(0, 2, 3, 1)
nhwc_to_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)


def test_sd_vae_config_has_83653863_params_like_diffusers(golden):
    count = count_params(param_shapes(AutoencoderKL(), (1, 8, 8, 3)))
    assert count == SD_VAE_PARAMS == int(golden["sd_vae_param_count"])


def test_full_sd_vae_diffusers_state_dict_converts_to_our_tree(golden):
    shapes = json.loads(str(golden["sd_vae_shapes_json"]))
    state_dict = {k: np.broadcast_to(np.float32(0), shape) for k, shape in shapes.items()}
    converted = params_from_diffusers_state_dict(state_dict, AutoencoderKL())
    assert shape_of(converted) == shape_of(param_shapes(AutoencoderKL(), (1, 8, 8, 3)))


@pytest.mark.parametrize("tag", ["kl", "attn"])
def test_posterior_kl_and_decoder_match_diffusers_autoencoderkl_layer_for_layer(golden, tag):
    model = golden_model(golden, tag)
    params = params_from_diffusers_state_dict(golden_state_dict(golden, tag), model)
    assert count_params(params) == int(golden[f"{tag}/param_count"])
    with jax.default_matmul_precision("highest"):  # an architecture check: no TF32 on GPUs
        posterior = jit_method(model, "encode")(params, nchw_to_nhwc(golden[f"{tag}/x"]))
        decoded = jit_method(model, "decode")(params, nchw_to_nhwc(golden[f"{tag}/mean"]))
    ours = dict(mean=nhwc_to_nchw(posterior.mean), logvar=nhwc_to_nchw(posterior.logvar),
                kl=np.asarray(posterior.kl()), decoded=nhwc_to_nchw(decoded))
    for name, out in ours.items():
        ref = golden[f"{tag}/{name}"]
        assert np.abs(ref).mean() > 0.1, name
        print(f"{tag} {name}: max abs error {np.abs(out - ref).max():.2e} (|ref| max {np.abs(ref).max():.2f})")
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=name)


def test_converter_accepts_legacy_attention_names(golden):
    state_dict = golden_state_dict(golden, "attn")
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    rename = lambda k: next((k.replace(f".{new}.", f".{old}.") for new, old in legacy.items() if f".{new}." in k), k)
    model = golden_model(golden, "attn")
    expected = params_from_diffusers_state_dict(state_dict, model)
    converted = params_from_diffusers_state_dict({rename(k): v for k, v in state_dict.items()}, model)
    assert any("proj_attn" in rename(k) for k in state_dict)
    jax.tree_util.tree_map(np.testing.assert_array_equal, converted, expected)


@pytest.mark.parametrize("change, message", [
    (lambda sd: dict(sd, **{"encoder.down_blocks.0.resnets.0.mystery.weight": np.zeros(3, np.float32)}), "mystery"),
    (lambda sd: {k: v for k, v in sd.items() if k != "decoder.up_blocks.1.resnets.1.conv2.bias"}, "up_0_res_1"),
    (lambda sd: dict(sd, **{"encoder.down_blocks.0.attentions.0.to_q.bias": np.zeros(8, np.float32)}), "down_0_attn"),
])
def test_converter_rejects_unknown_missing_and_foreign_keys(golden, change, message):
    with pytest.raises(KeyError, match=message):
        params_from_diffusers_state_dict(change(golden_state_dict(golden, "kl")), golden_model(golden, "kl"))


def test_converter_rejects_weights_of_another_size(golden):
    state_dict = golden_state_dict(golden, "kl")
    with pytest.raises(ValueError, match="shape"):
        params_from_diffusers_state_dict(state_dict, golden_model(golden, "kl").clone(z_channels=3, embed_dim=3))


@pytest.mark.parametrize("ch_mult, factor", [((1,), 1), ((1, 2), 2), ((1, 1, 2), 4), ((1, 1, 2, 2), 8)])
def test_latent_is_downsampled_by_f_with_embed_dim_channels(ch_mult, factor):
    model = AutoencoderKL(**dict(TINY, ch_mult=ch_mult, out_channels=5, attn_levels=(0,)))
    assert model.downsample_factor == factor
    x = jax.ShapeDtypeStruct((2, 16, 24, 3), jnp.float32)
    params = param_shapes(model, x.shape)
    x_hat, posterior = jax.eval_shape(lambda p, x: model.apply(p, x, jax.random.PRNGKey(0)), params, x)
    latent = (2, 16 // factor, 24 // factor, TINY["embed_dim"])
    assert posterior.mean.shape == posterior.logvar.shape == latent
    assert x_hat.shape == (2, 16, 24, 5) and x_hat.dtype == jnp.float32
    decoded = jax.eval_shape(lambda p, z: model.apply(p, z, method="decode"), params, posterior.mean)
    assert decoded.shape == x_hat.shape


def test_kl_matches_closed_form_in_float64():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 4, 5, 2))
    logvar = rng.normal(scale=2.0, size=mean.shape)
    # KL = cross-entropy H(q, p) minus entropy H(q), per dimension, for p = N(0, 1)
    cross_entropy = 0.5 * (np.log(2 * np.pi) + mean ** 2 + np.exp(logvar))
    entropy = 0.5 * (np.log(2 * np.pi * np.e) + logvar)
    expected = (cross_entropy - entropy).sum(axis=(1, 2, 3))
    kl = DiagonalGaussian(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32)).kl()
    assert kl.shape == (3,)
    np.testing.assert_allclose(np.asarray(kl), expected, rtol=1e-5)
    standard = DiagonalGaussian.from_moments(jnp.zeros((2, 3, 3, 4)))
    np.testing.assert_array_equal(np.asarray(standard.kl()), 0.0)


def test_posterior_log_variance_is_clipped_to_ldm_range():
    moments = jnp.array([0.0, 1.0, -100.0, 100.0]).reshape(1, 1, 1, 4)  # channels: mean, then logvar
    posterior = DiagonalGaussian.from_moments(moments)
    np.testing.assert_array_equal(np.asarray(posterior.mean).ravel(), [0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(posterior.logvar).ravel(), [-30.0, 20.0])
    assert np.all(np.isfinite(np.asarray(posterior.kl())))


def test_samples_have_the_posterior_mean_and_std():
    rng = np.random.default_rng(1)
    posterior = DiagonalGaussian(jnp.asarray(rng.normal(size=(1, 2, 2, 3)), jnp.float32),
                                 jnp.asarray(rng.uniform(-3, 2, size=(1, 2, 2, 3)), jnp.float32))
    n = 20_000
    draws = np.asarray(jax.jit(jax.vmap(posterior.sample))(jax.random.split(jax.random.PRNGKey(0), n)))
    std = np.asarray(posterior.std)
    np.testing.assert_array_less(np.abs(draws.mean(0) - np.asarray(posterior.mean)), 5 * std / np.sqrt(n))
    np.testing.assert_allclose(draws.std(0), std, rtol=0.05)
    np.testing.assert_array_equal(np.asarray(posterior.mode()), np.asarray(posterior.mean))


def test_call_decodes_a_posterior_sample_or_the_mode():
    model = AutoencoderKL(**TINY)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 3))
    params = random_params(model, x.shape)
    key, other = jax.random.PRNGKey(4), jax.random.PRNGKey(5)

    @jax.jit
    def outputs(params, x):
        decode = lambda z: model.apply(params, z, method="decode")
        x_mode, posterior = model.apply(params, x, sample_posterior=False)
        x_key, _ = model.apply(params, x, key)
        from_stream = lambda k: model.apply(params, x, rngs={"sample": k})[0]  # key=None: the 'sample' stream
        return dict(x_mode=x_mode, decoded_mode=decode(posterior.mode()), x_key=x_key,
                    decoded_sample=decode(posterior.sample(key)), stream=from_stream(key),
                    stream_again=from_stream(key), stream_other=from_stream(other))

    out = {k: np.asarray(v) for k, v in outputs(params, x).items()}
    np.testing.assert_allclose(out["x_mode"], out["decoded_mode"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["x_key"], out["decoded_sample"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["stream"], out["stream_again"])
    for a, b in [("x_key", "x_mode"), ("stream", "x_mode"), ("stream", "stream_other")]:
        assert not np.allclose(out[a], out[b]), (a, b)


def test_reconstruction_through_posterior_mode_has_finite_nonzero_grad_for_every_param():
    model = AutoencoderKL(**TINY, attn_levels=(1,))
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 3))
    params = random_params(model, x.shape)

    def loss(p):
        z = model.apply(p, x, method="encode").mode()
        return jnp.mean((model.apply(p, z, method="decode") - x) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = AutoencoderKL(**TINY, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 8, 8, 3))
    params = random_params(model, x.shape)
    apply = lambda m: jax.jit(lambda p, x: m.apply(p, x, sample_posterior=False))
    (x_hat, posterior), (ref, _) = apply(model)(params, x), apply(AutoencoderKL(**TINY))(params, x)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    assert x_hat.dtype == posterior.mean.dtype == posterior.logvar.dtype == jnp.float32
    assert np.abs(np.asarray(x_hat) - np.asarray(ref)).max() < 0.1 * np.abs(np.asarray(ref)).max()


@pytest.mark.parametrize("kwargs, shape, method, message", [
    (dict(TINY, ch_mult=(1, 1, 2)), (1, 10, 16, 3), "__call__", "divisible by 4"),
    (dict(TINY, ch_mult=(1, 1, 1, 2)), (1, 16, 20, 3), "__call__", "divisible by 8"),
    (dict(TINY), (1, 8, 8, 1), "__call__", r"\[B, H, W, 3\]"),
    (dict(TINY), (1, 8, 8), "__call__", r"\[B, H, W, 3\]"),
    (dict(TINY), (1, 4, 4, 3), "decode", r"\[B, h, w, 2\]"),
    (dict(TINY, attn_levels=(2,)), (1, 8, 8, 3), "__call__", "attn_levels"),
])
def test_inputs_that_do_not_fit_the_config_raise_value_error(kwargs, shape, method, message):
    model = AutoencoderKL(**kwargs)
    with pytest.raises(ValueError, match=message):
        model.init(jax.random.PRNGKey(0), jnp.zeros(shape), method=method)
