"""Map a diffusers `DiTTransformer2DModel` state dict onto `DiT` params (e.g. `facebook/DiT-XL-2-256`'s transformer).

Conv kernels go OIHW -> HWIO, linear weights [out, in] -> [in, out]. Per block, diffusers' `norm1.emb` (timestep MLP and
class table) is our `block_{i}/cond_embed`; for a `DiT(shared_embedding=True)` (the paper's single embedding) the
per-block copies must be identical and become the top-level `cond_embed`. The result is checked against the model's own
parameter tree: a missing or unexpected key or a shape mismatch is an error.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models.dit import DiT

_EMBED_LAYERS = {"timestep_embedder.linear_1": "time_embed/dense_0", "timestep_embedder.linear_2": "time_embed/dense_1",
                 "class_embedder.embedding_table": "class_embed"}
_BLOCK_LAYERS = {"norm1.linear": "adaln", "attn1.to_q": "attn/q", "attn1.to_k": "attn/k", "attn1.to_v": "attn/v",
                 "attn1.to_out.0": "attn/proj_out", "ff.net.0.proj": "fc1", "ff.net.2": "fc2"}
_TOP_LAYERS = {"pos_embed.proj": "patch_embed", "proj_out_1": "final_adaln", "proj_out_2": "final_linear"}


def _module_path(layer: str) -> str:
    """diffusers module path (without `.weight`/`.bias`) -> our module path 'a/b' (per-block embedding layout)."""
    if layer in _TOP_LAYERS:
        return _TOP_LAYERS[layer]
    m = re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", layer)
    if m:
        block, sub = m.groups()
        if sub in _BLOCK_LAYERS:
            return f"block_{block}/{_BLOCK_LAYERS[sub]}"
        e = re.fullmatch(r"norm1\.emb\.(.+)", sub)
        if e and e.group(1) in _EMBED_LAYERS:
            return f"block_{block}/cond_embed/{_EMBED_LAYERS[e.group(1)]}"
    raise KeyError(f"unexpected diffusers DiTTransformer2DModel key: {layer}")


def _convert_leaf(module: str, kind: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Rename and re-lay-out one tensor: ('weight'|'bias') -> ('kernel'|'embedding'|'bias')."""
    value = np.asarray(value, np.float32)
    if kind == "bias":
        return "bias", value
    if kind != "weight":
        raise KeyError(f"unexpected diffusers DiTTransformer2DModel tensor kind: {module} {kind}")
    if value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if module.endswith("class_embed"):
        return "embedding", value
    return "kernel", value.T


def _share_embeddings(params: dict) -> dict:
    """Per-block `cond_embed` copies -> one top-level `cond_embed` (they must be identical)."""
    blocks = sorted((k for k in params if k.startswith("block_")), key=lambda k: int(k.split("_")[1]))
    embeds = [params[k].pop("cond_embed", None) for k in blocks]
    if not embeds or embeds[0] is None:
        raise ValueError("the diffusers state dict has no per-block norm1.emb to share")
    first = jax.tree_util.tree_leaves_with_path(embeds[0])
    for k, emb in zip(blocks[1:], embeds[1:]):
        leaves = jax.tree_util.tree_leaves_with_path(emb) if emb is not None else []
        if len(leaves) != len(first) or any(pa != pb or a.shape != b.shape or not np.array_equal(a, b)
                                            for (pa, a), (pb, b) in zip(first, leaves)):
            raise ValueError(f"DiT(shared_embedding=True) needs identical per-block embeddings; {k}'s norm1.emb "
                             f"differs from block 0's (use shared_embedding=False, diffusers' layout)")
    params["cond_embed"] = embeds[0]
    return params


def _expected_shapes(model: DiT, in_channels: int) -> dict:
    """{our 'a/b/leaf' path: shape} of the model's parameter tree (jax.eval_shape, no allocation)."""
    size = 2 * model.patch_size
    x = jnp.zeros((1, size, size, in_channels))
    cond = {}
    if model.num_classes is not None:
        cond["label"] = jnp.zeros((1,), jnp.int32)
    if model.context_dim is not None:
        cond["context"] = jnp.zeros((1, 1, model.context_dim))
    if model.pooled_dim is not None:
        cond["pooled"] = jnp.zeros((1, model.pooled_dim))
    if model.low_res_channels is not None:
        cond["low_res"] = jnp.zeros((1, 1, 1, model.low_res_channels))
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), cond))["params"]
    return {"/".join(str(getattr(p, "key", p)) for p in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)}


def params_from_diffusers_dit_state_dict(state_dict: dict[str, np.ndarray], model: DiT) -> dict:
    """diffusers `DiTTransformer2DModel.state_dict()` (numpy arrays) -> `{'params': ...}` for `model` (a `DiT`).

    The model's input channels are read from `pos_embed.proj.weight` (minus `model.low_res_channels`).
    """
    params: dict = {}
    for key, value in state_dict.items():
        if "." not in key:
            raise KeyError(f"unexpected diffusers DiTTransformer2DModel key: {key}")
        layer, kind = key.rsplit(".", 1)
        module = _module_path(layer)
        name, array = _convert_leaf(module, kind, value)
        node = params
        for part in module.split("/"):
            node = node.setdefault(part, {})
        node[name] = array
    if model.shared_embedding:
        params = _share_embeddings(params)
    if "pos_embed.proj.weight" not in state_dict:
        raise KeyError("missing diffusers DiTTransformer2DModel key: pos_embed.proj.weight")
    in_channels = np.shape(state_dict["pos_embed.proj.weight"])[1] - (model.low_res_channels or 0)
    expected = _expected_shapes(model, in_channels)
    got = {"/".join(path): np.shape(leaf) for path, leaf in _flatten(params)}
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing:
        raise KeyError(f"the diffusers state dict lacks {len(missing)} DiT params, e.g. {missing[:3]}")
    if unexpected:
        raise KeyError(f"the diffusers state dict has {len(unexpected)} params this DiT lacks, e.g. {unexpected[:3]}")
    bad = [f"{k} {got[k]} vs {expected[k]}" for k in sorted(expected) if tuple(got[k]) != expected[k]]
    if bad:
        raise ValueError(f"{len(bad)} converted DiT params have the wrong shape (converted vs model), e.g. {bad[:2]}")
    return {"params": params}


def _flatten(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v
