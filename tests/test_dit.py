"""Tests of the DiT backbone: layer-for-layer agreement with diffusers' `DiTTransformer2DModel` (golden file), the
DiT-XL/2 parameter count, conditioning paths (null class, cross-attention with mask, pooled, low-res), mixed
precision, FSDP partition rules and clear errors."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from ddpm_jax.models.build import BACKBONES, denoiser_from_config, dit_from_config
from ddpm_jax.models.convert_dit import params_from_diffusers_dit_state_dict
from ddpm_jax.models.dit import DiT, sincos_pos_embed
from ddpm_jax.training.sharding import param_spec

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "dit_diffusers.npz")
TINY = dict(hidden_size=16, depth=1, num_heads=2, patch_size=2, mlp_ratio=2.0)
DIT_XL_2 = dict(hidden_size=1152, depth=28, num_heads=16, patch_size=2, learn_sigma=True, num_classes=1000)


def count_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def param_shapes(model: DiT, x_shape, cond=None):
    """Parameter shapes via jax.eval_shape (nothing allocated, no FLOPs)."""
    init = lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x_shape), jnp.zeros(x_shape[:1]), cond)
    return jax.eval_shape(init)


def random_params(model: DiT, x, t, cond=None, seed: int = 0):
    """Random params of the model's tree, nothing zero (a fresh DiT's adaLN-Zero layers would hide every input)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        z = rng.standard_normal(leaf.shape).astype(np.float32)
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if "kernel" in jax.tree_util.keystr(path[-1:]) else 0.5
        return jnp.asarray(z * scale)

    return jax.tree_util.tree_map_with_path(draw, jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, cond)))


def jit_apply(model: DiT, **kwargs):
    apply = jax.jit(lambda p, x, t, cond: model.apply(p, x, t, cond, **kwargs))
    return lambda params, x, t, cond=None: np.asarray(apply(params, x, t, cond))


def tiny_inputs(batch: int = 2, size: int = 8, channels: int = 3):
    x = jax.random.normal(jax.random.PRNGKey(42), (batch, size, size, channels))
    return x, jnp.arange(batch, dtype=jnp.float32) * 300.0 + 7.5


# ------------------------------------------------------------------ parity with diffusers (golden file)

@pytest.fixture(scope="module")
def golden():
    return np.load(GOLDEN)


def golden_case(data, name: str):
    """(our DiT configured like the stored diffusers model, its state dict, config)."""
    cfg = json.loads(str(data[f"{name}/config_json"]))
    prefix = f"{name}/state_dict/"
    state_dict = {k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)}
    extra = {"norm_eps": cfg["norm_eps"]} if "norm_eps" in cfg else {}  # else: our default must be diffusers'
    model = DiT(hidden_size=cfg["num_attention_heads"] * cfg["attention_head_dim"], depth=cfg["num_layers"],
                num_heads=cfg["num_attention_heads"], patch_size=cfg["patch_size"],
                learn_sigma=cfg["out_channels"] == 2 * cfg["in_channels"], num_classes=cfg["num_embeds_ada_norm"],
                **extra)
    return model, state_dict, cfg


def golden_output(model, params, data, name: str):
    """(the denoiser's output, all output channels) in NCHW on the stored inputs."""
    x = jnp.asarray(data[f"{name}/x"]).transpose(0, 2, 3, 1)
    t, cond = jnp.asarray(data[f"{name}/t"]), {"label": jnp.asarray(data[f"{name}/y"])}
    both = lambda p: (model.apply(p, x, t, cond), model.apply(p, x, t, cond, full_output=True))
    with jax.default_matmul_precision("highest"):  # an architecture check: no TF32 / bf16 passes on accelerators
        return tuple(np.asarray(a).transpose(0, 3, 1, 2) for a in jax.jit(both)(params))


@pytest.mark.parametrize("name", ["p2", "p4"])
def test_output_matches_diffusers_dit_transformer_all_channels(golden, name):
    model, state_dict, cfg = golden_case(golden, name)
    params = params_from_diffusers_dit_state_dict(state_dict, model)
    out, full = golden_output(model, params, golden, name)
    ref = golden[f"{name}/out"]
    assert full.shape == ref.shape == (3, cfg["out_channels"] or cfg["in_channels"], 8, 8)
    assert np.abs(ref).mean() > 0.1 and golden[f"{name}/y"][1] == cfg["num_embeds_ada_norm"]  # null class included
    np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # learned sigma: the denoiser protocol returns the first in_channels (epsilon), full_output all of them
    np.testing.assert_array_equal(out, full[:, :cfg["in_channels"]])


def test_default_mlp_layer_norm_epsilon_is_diffusers(golden):
    assert DiT().norm_eps == float(golden["default_norm_eps"])  # 1e-5: below the float32 parity test's resolution


@pytest.mark.parametrize("name", ["p2", "p4"])
def test_position_embedding_is_diffusers_get_2d_sincos_pos_embed(golden, name):
    _, _, cfg = golden_case(golden, name)
    grid = cfg["sample_size"] // cfg["patch_size"]
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    np.testing.assert_allclose(sincos_pos_embed(dim, grid, grid), golden[f"{name}/pos_embed"], atol=1e-6)


@pytest.mark.parametrize("case", ["sq", "rect", "rescaled"])
def test_position_embedding_on_rectangular_and_rescaled_grids(golden, case):
    spec = json.loads(str(golden[f"pos_embed/{case}/case_json"]))
    grid = spec["grid_size"] if isinstance(spec["grid_size"], list) else [spec["grid_size"]] * 2
    ours = sincos_pos_embed(spec["embed_dim"], grid[0], grid[1], spec["base_size"])
    np.testing.assert_allclose(ours, golden[f"pos_embed/{case}"], atol=1e-6)


def test_per_block_embeddings_convert_to_the_shared_layout_only_when_identical(golden):
    model, state_dict, _ = golden_case(golden, "p2")
    shared = model.clone(shared_embedding=True)
    with pytest.raises(ValueError, match="identical per-block embeddings"):
        params_from_diffusers_dit_state_dict(state_dict, shared)
    tied = dict(state_dict, **{k.replace("blocks.0.", "blocks.1."): v for k, v in state_dict.items()
                               if k.startswith("transformer_blocks.0.norm1.emb.")})
    ref = golden_output(model, params_from_diffusers_dit_state_dict(tied, model), golden, "p2")[1]
    shared_params = params_from_diffusers_dit_state_dict(tied, shared)
    assert "cond_embed" in shared_params["params"] and "cond_embed" not in shared_params["params"]["block_1"]
    out = golden_output(shared, shared_params, golden, "p2")[1]
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_converter_rejects_unknown_missing_and_misshapen_keys(golden):
    model, state_dict, _ = golden_case(golden, "p2")
    with pytest.raises(KeyError, match="mystery"):
        params_from_diffusers_dit_state_dict(dict(state_dict, **{"transformer_blocks.0.mystery.weight": 0}), model)
    missing = {k: v for k, v in state_dict.items() if not k.startswith("proj_out_2.")}
    with pytest.raises(KeyError, match="lacks 2 DiT params"):
        params_from_diffusers_dit_state_dict(missing, model)
    with pytest.raises(KeyError, match="this DiT lacks"):
        params_from_diffusers_dit_state_dict(state_dict, model.clone(depth=1))
    bad = dict(state_dict, **{"proj_out_1.weight": np.zeros((62, 32), np.float32)})
    with pytest.raises(ValueError, match="wrong shape.*final_adaln"):
        params_from_diffusers_dit_state_dict(bad, model)


# ------------------------------------------------------------------ DiT-XL/2: parameter count, full tree, FSDP

@pytest.fixture(scope="module")
def xl_shapes():
    return param_shapes(DiT(**DIT_XL_2), (1, 32, 32, 4), {"label": jnp.zeros((1,), jnp.int32)})["params"]


def test_dit_xl_2_param_count_equals_diffusers(golden, xl_shapes):
    assert count_params(xl_shapes) == int(golden["dit_xl_2_param_count"]) == 749_826_464
    per_block_embed = count_params(xl_shapes["block_1"]["cond_embed"])
    # the paper's single shared embedding: 27 fewer copies, the paper's "675M"
    assert count_params(xl_shapes) - 27 * per_block_embed == 674_834_720


def test_full_dit_xl_2_diffusers_state_dict_converts_to_our_tree(golden, xl_shapes):
    shapes = json.loads(str(golden["dit_xl_2_shapes_json"]))
    state_dict = {k: np.broadcast_to(np.float32(0), shape) for k, shape in shapes.items()}
    converted = params_from_diffusers_dit_state_dict(state_dict, DiT(**DIT_XL_2))["params"]
    shape_of = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
    assert shape_of(converted) == shape_of(xl_shapes)


def test_fsdp_rules_shard_every_big_dit_kernel_on_a_2_way_mesh(xl_shapes):
    sharded = total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(xl_shapes):
        spec, size = param_spec(tuple(leaf.shape), 2), int(np.prod(leaf.shape))
        total += size
        if "fsdp" in tuple(spec):
            sharded += size
        elif size >= 2 ** 14:
            pytest.fail(f"{jax.tree_util.keystr(path)} {leaf.shape} is big but replicated")
    for name in ("adaln", "fc1", "fc2"):
        assert "fsdp" in tuple(param_spec(xl_shapes["block_5"][name]["kernel"].shape, 2)), name
    assert sharded / total > 0.999


# ------------------------------------------------------------------ builder

def test_builder_sizes_and_backbone_registry():
    assert BACKBONES["dit"] is dit_from_config
    cfg = tiny_config(**{"model.backbone": "dit"})
    model = denoiser_from_config(cfg.model, 10)
    assert isinstance(model, DiT) and model.num_classes == 10
    assert (model.hidden_size, model.depth, model.num_heads, model.patch_size) == (128, 4, 4, 2)
    for size, expected in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}.items():
        m = dit_from_config(tiny_config(**{"model.dit.size": size, "model.dit.patch_size": 4}).model, 10)
        assert (m.hidden_size, m.depth, m.num_heads, m.patch_size) == expected + (4,)
    assert dit_from_config(tiny_config(**{"model.class_conditional": False}).model, 10).num_classes is None
    assert dit_from_config(tiny_config(**{"model.dtype": "bfloat16"}).model, 10).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="unknown model.dit.size 'XXL'"):
        dit_from_config(tiny_config(**{"model.dit.size": "XXL"}).model, 10)
    with pytest.raises(ValueError, match="num_classes > 0"):
        dit_from_config(tiny_config().model, None)


# ------------------------------------------------------------------ shapes, conditioning paths

@pytest.mark.parametrize("patch", [2, 4, 8])
def test_patch_sizes_give_input_shaped_output(patch):
    model = DiT(**dict(TINY, patch_size=patch, depth=1, learn_sigma=True))
    x = jnp.ones((2, 16, 8, 3))
    shapes = param_shapes(model, x.shape)["params"]
    assert shapes["patch_embed"]["kernel"].shape == (patch, patch, 3, 16)
    assert shapes["final_linear"]["kernel"].shape == (16, patch * patch * 6)
    params = random_params(model, x, jnp.zeros(2))
    both = lambda p: (model.apply(p, x, jnp.full((2,), 3.5)), model.apply(p, x, jnp.full((2,), 3.5), full_output=True))
    out, full = jax.jit(both)(params)
    np.testing.assert_array_equal(out, full[..., :3])
    assert out.shape == (2, 16, 8, 3) and full.shape == (2, 16, 8, 6) and out.dtype == jnp.float32


def test_fresh_init_is_adaln_zero_and_outputs_zero():
    """adaLN-Zero (paper): block modulations and the final layer start at zero, so does the PixArt cross-attention
    output projection; a fresh DiT is the zero function whatever the conditioning."""
    model = DiT(**TINY, num_classes=3, context_dim=6, pooled_dim=5, low_res_channels=2)
    x, t = tiny_inputs()
    cond = {"label": jnp.array([0, 2]), "context": jnp.ones((2, 3, 6)), "pooled": jnp.ones((2, 5)),
            "low_res": jnp.ones((2, 4, 4, 2)), "aug_level": jnp.full((2,), 9.0)}
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x, t, cond)
    p = jax.tree_util.tree_map(np.asarray, params["params"])
    block = p["block_0"]
    zero = [p["final_linear"]["kernel"], p["final_linear"]["bias"], p["final_adaln"]["kernel"],
            p["final_adaln"]["bias"], block["adaln"]["kernel"], block["adaln"]["bias"],
            block["xattn"]["proj_out"]["kernel"]]
    assert np.any(block["attn"]["q"]["kernel"]) and np.any(block["xattn"]["k"]["kernel"])
    assert np.any(block["cond_embed"]["class_embed"]["embedding"]) and np.any(p["patch_embed"]["kernel"])
    assert not any(np.any(a) for a in zero)
    assert np.all(jit_apply(model)(params, x, t, cond) == 0.0)


@pytest.fixture(scope="module")
def class_model():
    model = DiT(**TINY, num_classes=5)
    x, t = tiny_inputs()
    return model, random_params(model, x, t, {"label": jnp.array([0, 1])}), x, t, jit_apply(model)


def test_absent_label_is_the_null_class_and_labels_and_time_change_the_output(class_model):
    model, params, x, t, apply = class_model
    null = apply(params, x, t, {"label": jnp.array([5, 5])})
    np.testing.assert_array_equal(apply(params, x, t, None), null)
    np.testing.assert_array_equal(apply(params, x, t, {"label": np.int32(5)}), null)  # unbatched (guidance's null)
    assert not np.allclose(apply(params, x, t, {"label": jnp.array([0, 0])}), null)
    assert not np.allclose(apply(params, x, t + 100.0, None), null)
    assert params["params"]["block_0"]["cond_embed"]["class_embed"]["embedding"].shape == (6, 16)


def test_jit_grad_is_finite_and_reaches_every_param(class_model):
    model, params, x, t, _ = class_model
    y = jnp.array([0, 5])
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(p, x, t, {"label": y}) ** 2)))(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g = np.asarray(g)
        if "class_embed" in jax.tree_util.keystr(path):
            g = g[np.array([0, 5])]
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)


def test_dropout_is_active_only_in_train_mode():
    model = DiT(**TINY, dropout=0.5)
    x, t = tiny_inputs()
    params = random_params(model, x, t)
    apply = jax.jit(lambda p, train, key: model.apply(p, x, t, train=train, rngs={"dropout": key}),
                    static_argnames="train")
    run = lambda train, seed: np.asarray(apply(params, train, jax.random.key(seed, impl="rbg")))
    assert not np.allclose(run(True, 0), run(True, 1))
    np.testing.assert_array_equal(run(False, 0), run(False, 1))


def test_cross_attention_honours_the_mask_and_pooled_text_changes_the_output():
    model = DiT(**TINY, context_dim=6, pooled_dim=5)
    x, t = tiny_inputs()
    context = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 6))
    mask = jnp.array([[True, False, True, False], [False, False, False, False]])  # second row: all padding
    pooled = jax.random.normal(jax.random.PRNGKey(4), (2, 5))
    cond = lambda c=context, p=pooled: {"context": c, "context_mask": mask, "pooled": p}
    params = random_params(model, x, t, cond())
    assert "xattn" in params["params"]["block_0"] and "pooled_proj" in params["params"]
    apply = jit_apply(model)
    out = apply(params, x, t, cond())
    junk = jnp.where(mask[..., None], context, 100.0 * jax.random.normal(jax.random.PRNGKey(9), context.shape))
    np.testing.assert_allclose(apply(params, x, t, cond(junk)), out, atol=1e-5)
    assert np.all(np.isfinite(out))
    assert not np.allclose(apply(params, x, t, cond(context.at[:, 0].add(1.0)))[0], out[0])
    assert not np.allclose(apply(params, x, t, cond(p=pooled + 1.0)), out)
    assert "xattn" not in param_shapes(DiT(**TINY), x.shape)["params"]["block_0"]


def test_low_res_is_upsampled_and_concatenated_and_aug_level_is_embedded():
    model = DiT(**TINY, low_res_channels=2)
    x, t = tiny_inputs()
    low = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 4, 2))
    cond = lambda s=0.0, lr=low: {"low_res": lr, "aug_level": jnp.full((2,), s)}
    params = random_params(model, x, t, cond())
    assert params["params"]["patch_embed"]["kernel"].shape == (2, 2, 3 + 2, 16) and "aug_embed" in params["params"]
    apply = jit_apply(model)
    out = apply(params, x, t, cond())
    assert out.shape == x.shape
    np.testing.assert_array_equal(apply(params, x, t, {"low_res": low}), out)  # absent aug_level = 0 (clean)
    assert not np.allclose(apply(params, x, t, cond(250.0)), out)
    assert not np.allclose(apply(params, x, t, cond(lr=low + 1.0)), out)
    with pytest.raises(ValueError, match="low_res"):
        model.apply(params, x, t)
    with pytest.raises(ValueError, match="low_res must be"):
        model.apply(params, x, t, {"low_res": jnp.ones((2, 4, 4, 3))})


def test_bfloat16_compute_keeps_float32_params_and_output(class_model):
    model, params, x, t, apply = class_model
    bf16 = model.clone(dtype=jnp.bfloat16)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}
    out = jax.jit(lambda p: bf16.apply(p, x, t, {"label": jnp.array([1, 5])}))(params)
    ref = apply(params, x, t, {"label": jnp.array([1, 5])})
    assert out.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(out)))
    assert np.abs(np.asarray(out) - ref).max() < 0.1 * np.abs(ref).max()


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("kwargs, x_shape, cond, message", [
    (TINY, (1, 8, 8, 3), {"label": jnp.array([0])}, "num_classes is None"),
    (TINY, (1, 8, 8, 3), {"context": jnp.zeros((1, 2, 4))}, "context_dim"),
    (dict(TINY, context_dim=4), (1, 8, 8, 3), None, "context_dim"),
    (dict(TINY, context_dim=4), (1, 8, 8, 3), {"context": jnp.zeros((1, 2, 5))}, r"context must be \[1, L, 4\]"),
    (TINY, (1, 8, 8, 3), {"context_mask": jnp.ones((1, 2), bool)}, "context_mask was given without context"),
    (TINY, (1, 8, 8, 3), {"pooled": jnp.zeros((1, 4))}, "pooled_dim"),
    (TINY, (1, 8, 8, 3), {"low_res": jnp.zeros((1, 4, 4, 3))}, "low_res_channels is None"),
    (dict(TINY, patch_size=4), (1, 8, 6, 3), None, "patch_size=4 needs H, W divisible"),
    (TINY, (8, 8, 3), None, r"\[B, H, W, C\]"),
    (dict(TINY, num_heads=3), (1, 8, 8, 3), None, "not divisible by num_heads"),
    (TINY, (1, 8, 8, 3), {"text": 1}, "unknown conditioning keys"),
])
def test_inputs_that_do_not_fit_the_config_raise(kwargs, x_shape, cond, message):
    with pytest.raises(ValueError, match=message):
        DiT(**kwargs).init(jax.random.PRNGKey(0), jnp.zeros(x_shape), jnp.zeros(x_shape[:1]), cond)
