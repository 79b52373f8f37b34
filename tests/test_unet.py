"""Tests of the DDPM U-Net: parameter count, layer-for-layer agreement with diffusers, conditioning paths."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.models.convert import params_from_diffusers_state_dict
from ddpm_jax.models.unet import UNet

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "unet_diffusers.npz")
DDPM_CIFAR10_PARAMS = 35_746_307
TINY = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_groups=4, dropout=0.1)


def count_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def cond_of(y=None, **kwargs) -> dict:
    """The denoiser's conditioning dict from the keyword names these tests use (y = class labels)."""
    return {k: v for k, v in {"label": y, **kwargs}.items() if v is not None}


def param_shapes(model: UNet, x_shape, **kwargs):
    """Parameter shapes via jax.eval_shape (no FLOPs)."""
    init = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x_shape), jnp.zeros(x_shape[:1]), cond_of(**kwargs))
    return jax.eval_shape(init)


def jit_apply(model: UNet):
    """`model.apply` compiled as one program (much faster on CPU than op-by-op dispatch); conditioning by keyword."""
    apply = jax.jit(model.apply, static_argnames="train")
    return lambda params, x, t, y=None, train=False, rngs=None, **kwargs: apply(params, x, t, cond_of(y, **kwargs),
                                                                                   train=train, rngs=rngs)


def random_params(model: UNet, x, t, seed: int = 0, **kwargs):
    """Random params of the model's tree (kernels ~ N(0, 1/fan_in), norm scales ~ 1 + N(0, 0.1^2), biases
    ~ N(0, 0.1^2)); unlike `init`, nothing is zero, and it avoids compiling the initializers."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, cond_of(**kwargs)))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        if leaf.ndim >= 2:
            return jnp.asarray(z / np.sqrt(np.prod(leaf.shape[:-1])) if "kernel" in name else z)
        return jnp.asarray(0.1 * z + (1.0 if "scale" in name else 0.0))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny_inputs(batch: int = 2, size: int = 8, channels: int = 3):
    x = jax.random.normal(jax.random.PRNGKey(42), (batch, size, size, channels))
    return x, jnp.arange(batch, dtype=jnp.float32) * 300.0 + 7.0


@pytest.fixture(scope="module")
def golden():
    data = np.load(GOLDEN)
    state_dict = {k[len("state_dict/"):]: data[k] for k in data.files if k.startswith("state_dict/")}
    return data, state_dict


def golden_model(data) -> UNet:
    """Our UNet configured like the diffusers model stored in the golden file."""
    cfg = json.loads(str(data["config_json"]))
    channels = cfg["block_out_channels"]
    return UNet(ch=channels[0], ch_mult=tuple(c // channels[0] for c in channels),
                num_res_blocks=cfg["layers_per_block"], attn_resolutions=(cfg["sample_size"] // 2,),
                dropout=cfg["dropout"], num_classes=cfg["num_class_embeds"],
                num_heads=channels[1] // cfg["attention_head_dim"], num_groups=cfg["norm_num_groups"])


def test_ddpm_cifar10_config_has_35746307_params():
    shapes = param_shapes(UNet(), (1, 32, 32, 3))
    assert count_params(shapes) == DDPM_CIFAR10_PARAMS


def test_ddpm_cifar10_param_count_equals_diffusers_unet2dmodel(golden):
    data, _ = golden
    assert int(data["ddpm_cifar10_param_count"]) == count_params(param_shapes(UNet(), (1, 32, 32, 3)))


def test_converted_diffusers_params_have_our_tree_and_shapes(golden):
    data, state_dict = golden
    model = golden_model(data)
    x = np.zeros(data["x"].transpose(0, 2, 3, 1).shape, np.float32)
    expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, data["t"], {"label": data["y"]}))
    converted = params_from_diffusers_state_dict(state_dict, model)
    shape_of = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
    assert shape_of(converted) == shape_of(expected)
    assert count_params(converted) == int(data["small_param_count"]) + 4 * model.ch  # + null-label row


def test_output_matches_diffusers_unet2dmodel_layer_for_layer(golden):
    data, state_dict = golden
    model = golden_model(data)
    params = params_from_diffusers_state_dict(state_dict, model)
    x = jnp.asarray(data["x"]).transpose(0, 2, 3, 1)
    with jax.default_matmul_precision("highest"):  # an architecture check: no TF32 on GPUs
        out = jit_apply(model)(params, x, jnp.asarray(data["t"]), jnp.asarray(data["y"]))
    out = np.asarray(out).transpose(0, 3, 1, 2)
    ref = data["out"]
    assert np.abs(ref).mean() > 0.1
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_full_ddpm_cifar10_diffusers_state_dict_converts_to_our_tree(golden):
    data, _ = golden
    shapes = json.loads(str(data["ddpm_cifar10_shapes_json"]))
    state_dict = {k: np.broadcast_to(np.float32(0), shape) for k, shape in shapes.items()}
    converted = params_from_diffusers_state_dict(state_dict, UNet())
    shape_of = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
    assert shape_of(converted) == shape_of(param_shapes(UNet(), (1, 32, 32, 3)))


def test_converter_accepts_legacy_attention_names(golden):
    data, state_dict = golden
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    rename = lambda k: next((k.replace(f".{new}.", f".{old}.") for new, old in legacy.items() if f".{new}." in k), k)
    model = golden_model(data)
    expected = params_from_diffusers_state_dict(state_dict, model)
    converted = params_from_diffusers_state_dict({rename(k): v for k, v in state_dict.items()}, model)
    assert any("proj_attn" in rename(k) for k in state_dict)
    jax.tree_util.tree_map(np.testing.assert_array_equal, converted, expected)


def test_converter_rejects_unknown_diffusers_keys(golden):
    data, state_dict = golden
    bad = dict(state_dict, **{"down_blocks.0.resnets.0.mystery.weight": np.zeros(3, np.float32)})
    with pytest.raises(KeyError, match="mystery"):
        params_from_diffusers_state_dict(bad, golden_model(data))


@pytest.mark.parametrize("kwargs, x_shape, out_ch", [
    (dict(TINY, out_channels=6), (2, 8, 8, 3), 6),
    (dict(TINY, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8, 2), num_heads=2), (2, 8, 16, 4), 4),
])
def test_output_shape_and_dtype(kwargs, x_shape, out_ch):
    model = UNet(**kwargs)
    x = jnp.ones(x_shape)
    params = random_params(model, x, jnp.zeros(x_shape[:1]))
    out = jit_apply(model)(params, x, jnp.full(x_shape[:1], 3.5))
    assert out.shape == x_shape[:3] + (out_ch,) and out.dtype == jnp.float32


def test_fresh_init_zeroes_residual_branch_and_output_convs_like_ddpm():
    model = UNet(ch=4, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,), num_groups=2)
    x, t = tiny_inputs(size=4)
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t)
    zero_init = ("conv_1", "proj_out", "conv_out")
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            assert np.all(np.asarray(leaf) == 0) == any(z in name for z in zero_init), name
    assert np.all(np.asarray(jit_apply(model)(params, x, t)) == 0.0)


def test_timestep_changes_output():
    model = UNet(**TINY)
    x, _ = tiny_inputs(batch=1)
    params = random_params(model, x, jnp.zeros(1))
    apply = jit_apply(model)
    assert not np.allclose(apply(params, x, jnp.array([3.0])), apply(params, x, jnp.array([700.0])))


def test_class_labels_condition_output_and_none_is_the_null_label():
    model = UNet(**TINY, num_classes=5)
    x, t = tiny_inputs()
    params = random_params(model, x, t, y=jnp.array([0, 1]))
    out = lambda y: np.asarray(jit_apply(model)(params, x, t, y))
    assert not np.allclose(out(jnp.array([0, 0])), out(jnp.array([4, 4])))
    np.testing.assert_array_equal(out(None), out(jnp.array([5, 5])))
    assert params["params"]["class_embed"]["embedding"].shape == (6, 4 * TINY["ch"])


@pytest.mark.slow
def test_jit_grad_is_finite_and_nonzero_for_every_param():
    model = UNet(**TINY, num_classes=3)
    x, t = tiny_inputs()
    y = jnp.array([0, 3])
    params = random_params(model, x, t, y=y)
    loss = lambda p: jnp.mean(model.apply(p, x, t, {"label": y}, train=True, rngs={"dropout": jax.random.PRNGKey(1)}) ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        if "class_embed" in jax.tree_util.keystr(path):
            g = g[np.array([0, 3])]
        assert np.all(np.isfinite(g)), path
        assert np.any(g != 0), path


def test_dropout_is_active_only_in_train_mode():
    model = UNet(**dict(TINY, dropout=0.5))
    x, t = tiny_inputs()
    params = random_params(model, x, t)
    apply = jit_apply(model)
    run = lambda train, seed: np.asarray(apply(params, x, t, train=train, rngs={"dropout": jax.random.PRNGKey(seed)}))
    assert not np.allclose(run(True, 0), run(True, 1))
    np.testing.assert_array_equal(run(False, 0), run(False, 1))


def test_bfloat16_compute_keeps_float32_params_and_output():
    model = UNet(**TINY, dtype=jnp.bfloat16)
    x, t = tiny_inputs()
    params = random_params(model, x, t)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    out = jit_apply(model)(params, x, t)
    ref = jit_apply(UNet(**TINY))(params, x, t)
    assert out.dtype == jnp.float32
    assert np.abs(np.asarray(out) - np.asarray(ref)).max() < 0.1 * np.abs(np.asarray(ref)).max()


def cross_attention_setup(length: int = 5, context_dim: int = 6):
    model = UNet(**TINY, context_dim=context_dim, num_heads=2)
    x, t = tiny_inputs()
    context = jax.random.normal(jax.random.PRNGKey(3), (2, length, context_dim))
    mask = jnp.array([[True, True, False, True, False], [False, False, False, False, False]])
    params = random_params(model, x, t, context=context, context_mask=mask)
    return model, params, x, t, context, mask


def test_cross_attention_output_shape_and_context_changes_output():
    model, params, x, t, context, mask = cross_attention_setup()
    apply = jit_apply(model)
    out = apply(params, x, t, context=context, context_mask=mask)
    other = apply(params, x, t, context=context.at[:, 0].add(1.0), context_mask=mask)
    assert out.shape == x.shape
    assert not np.allclose(out, other)
    assert "down_1_xattn_0" in params["params"] and "mid_xattn" in params["params"]


def test_masked_out_context_tokens_do_not_affect_output_even_when_all_are_masked():
    model, params, x, t, context, mask = cross_attention_setup()
    junk = jax.random.normal(jax.random.PRNGKey(9), context.shape) * 100.0
    changed = jnp.where(mask[..., None], context, junk)
    apply = jit_apply(model)
    out = apply(params, x, t, context=context, context_mask=mask)
    np.testing.assert_allclose(apply(params, x, t, context=changed, context_mask=mask), out, atol=1e-6)


def test_cross_attention_is_absent_by_default():
    shapes = param_shapes(UNet(**TINY), (1, 8, 8, 3))["params"]
    assert not any("xattn" in name for name in shapes)


@pytest.mark.parametrize("kwargs, call_kwargs, message", [
    (dict(TINY), dict(y=jnp.array([0])), "num_classes"),
    (dict(TINY), dict(context=jnp.zeros((1, 2, 4))), "context_dim"),
    (dict(TINY, context_dim=4), dict(), "context_dim"),
])
def test_inputs_that_do_not_fit_the_config_raise(kwargs, call_kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.zeros(1), cond_of(**call_kwargs))


def test_spatial_size_not_divisible_by_downsampling_raises():
    with pytest.raises(ValueError, match="divisible"):
        UNet(**dict(TINY, ch_mult=(1, 2, 2))).init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 3)), jnp.zeros(1))
