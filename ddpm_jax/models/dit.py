"""Diffusion Transformer, DiT (Peebles & Xie 2023), NHWC, following diffusers' `DiTTransformer2DModel` exactly.

x [B, H, W, C] is cut into p x p patches by a conv of kernel = stride = p, plus fixed 2-D sin-cos position embeddings
(diffusers' `get_2d_sincos_pos_embed`, computed, not learned); `depth` transformer blocks with adaLN-Zero; a final
LayerNorm modulated by a shift and scale from the conditioning, a linear to p * p * out channels, and unpatchify.

Conditioning c = MLP(sinusoid_256(t)) + class_table[label] (diffusers `CombinedTimestepLabelEmbeddings`:
`Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)` + `TimestepEmbedding`, a table of num_classes + 1 rows,
row num_classes the null class of classifier-free guidance; an absent label is the null class). Each block:
  h += gate_msa * Attn(LN(h) * (1 + scale_msa) + shift_msa)
  h += gate_mlp * MLP(LN(h) * (1 + scale_mlp) + shift_mlp)       (MLP: Linear, tanh-GELU, Linear)
with the six vectors from Linear(SiLU(c)), zero-initialised as in the paper (adaLN-Zero: every block starts as the
identity), as is the final linear.

**Per-block conditioning embeddings.** The paper computes c once and shares it. diffusers gives every block its own
`norm1.emb` (timestep MLP and class table), and its final layer reads block 0's; a converted official checkpoint holds
27 identical copies. With `shared_embedding=False` (the default) this module has the same per-block structure
(`block_{i}/cond_embed`, final layer conditioned on block 0's c), so diffusers' weights map 1:1 and DiT-XL/2 has
diffusers' 749,826,464 parameters. `shared_embedding=True` is the paper's layout (one top-level `cond_embed`,
674,834,720 parameters for DiT-XL/2, the paper's 675M); the converter fills it from a diffusers state dict only when the
per-block copies are identical. Timestep frequencies follow diffusers (shift 1), not the original code (shift 0).

Extras, all off by default (so the parity is with the plain class-conditional DiT):
- text (PixArt-alpha style): with `context_dim`, a cross-attention sublayer after self-attention in every block,
  h += Attn(q = h, k/v = context projected from context_dim), with a LayerNorm-free query as in PixArt-alpha, honouring
  `context_mask` (padding tokens are ignored), output projection zero-initialised as in PixArt; with `pooled_dim`, the
  pooled text vector projected and added to c;
- super-resolution: with `low_res_channels`, low_res bilinearly upsampled to H x W and concatenated to the input
  channels before patchify, and the embedded `aug_level` (noise-augmentation timestep) added to c, like the U-Net.

`learn_sigma=True` makes the network output 2 * out_channels like the paper's DiT; the denoiser protocol returns the
first out_channels (epsilon / velocity), `full_output=True` returns all of them.
Mixed precision: `dtype` is the compute dtype of convs, linears and attention; params, the residual stream, LayerNorm
and softmax stay float32. Returns float32.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models.denoiser import check_cond
from ddpm_jax.models.layers import multi_head_attention, timestep_embedding

xavier_init = nn.initializers.xavier_uniform()
# the patch conv as the paper initialises it: xavier on the [out, in * p * p] matrix (no receptive field in fan_out)
patch_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=3)
embed_init = nn.initializers.normal(0.02)  # timestep MLP and class table (paper)
zero_init = nn.initializers.zeros
FREQ_DIM = 256  # width of the sinusoidal timestep features (diffusers `Timesteps(256, ...)`)
SIZES = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}  # hidden, depth, heads


def sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int, base_size: Optional[int] = None) -> np.ndarray:
    """diffusers' `get_2d_sincos_pos_embed` (MAE / DiT): [grid_h * grid_w, embed_dim] float32, tokens row-major.

    The first embed_dim / 2 channels encode the column, the rest the row; each half is [sin(pos w_k), cos(pos w_k)],
    w_k = 10000^(-k / (embed_dim / 4)). Positions are the patch indices 0..n-1 (`base_size=None`, the paper), or
    diffusers' rescaled i * base_size / n per axis (`PatchEmbed` at a size other than its `sample_size`).
    """
    if embed_dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {embed_dim}")

    def positions(n: int) -> np.ndarray:
        pos = np.arange(n, dtype=np.float32)
        return pos if base_size is None else pos / np.float32(n / base_size)

    def embed_1d(pos: np.ndarray) -> np.ndarray:
        omega = np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0)
        out = np.outer(pos.astype(np.float64), 1.0 / 10000 ** omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    cols, rows = np.meshgrid(positions(grid_w), positions(grid_h), indexing="xy")  # [grid_h, grid_w] each
    return np.concatenate([embed_1d(cols.reshape(-1)), embed_1d(rows.reshape(-1))], axis=1).astype(np.float32)


def layer_norm(h: jnp.ndarray, eps: float) -> jnp.ndarray:
    """LayerNorm without affine parameters, in float32 (exact two-pass variance)."""
    norm = nn.LayerNorm(epsilon=eps, use_bias=False, use_scale=False, use_fast_variance=False, dtype=jnp.float32)
    return norm(h.astype(jnp.float32))


def modulate(h: jnp.ndarray, shift: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """adaLN: h * (1 + scale) + shift, per example (shift/scale [B, D], h [B, N, D])."""
    return h * (1 + scale[:, None].astype(jnp.float32)) + shift[:, None].astype(jnp.float32)


class TimestepMLP(nn.Module):
    """MLP(SiLU) on [cos, sin] sinusoid features of t (diffusers `Timesteps(256, flip_sin_to_cos=True,
    downscale_freq_shift=1)` followed by `TimestepEmbedding(256, features)`)."""
    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        emb = timestep_embedding(t, FREQ_DIM, freq_shift=1.0)
        emb = jnp.concatenate([emb[:, FREQ_DIM // 2:], emb[:, :FREQ_DIM // 2]], axis=-1)  # flip_sin_to_cos
        dense = lambda name: nn.Dense(self.features, kernel_init=embed_init, dtype=self.dtype, name=name)
        return dense("dense_1")(nn.silu(dense("dense_0")(emb.astype(self.dtype))))


class CondEmbed(nn.Module):
    """c = TimestepMLP(t) + class_table[label] (diffusers `CombinedTimestepLabelEmbeddings`); no table when
    num_classes is None."""
    features: int
    num_classes: Optional[int] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray, label: Optional[jnp.ndarray]) -> jnp.ndarray:
        c = TimestepMLP(self.features, self.dtype, name="time_embed")(t).astype(jnp.float32)
        if self.num_classes is not None:
            table = nn.Embed(self.num_classes + 1, self.features, embedding_init=embed_init, dtype=self.dtype,
                             name="class_embed")
            c = c + table(label).astype(jnp.float32)
        return c


def on_tokens(layer, x):
    """``layer`` (a Dense) on [..., D] as one 2-D matmul over all leading axes: the same function and params, but
    XLA:CPU computes the weight gradient of a 3-D dot ~1.7x slower than of a 2-D one
    (experiments/benchmarks/RESULTS.md, DiT train step)."""
    out = layer(x.reshape(-1, x.shape[-1]))
    return out.reshape(x.shape[:-1] + out.shape[-1:])


class Attention(nn.Module):
    """Multi-head attention with biased q/k/v/output projections (diffusers `Attention`, `attention_bias=True`);
    keys and values from `kv` (self-attention: kv = x) of any width; `mask` [B, L] True = attend."""
    num_heads: int
    dropout: float = 0.0
    out_init: Any = xavier_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, kv, mask=None, *, train: bool = False) -> jnp.ndarray:
        c = x.shape[-1]
        dense = lambda name, init=xavier_init: nn.Dense(c, kernel_init=init, dtype=self.dtype, name=name)
        q, k, v = on_tokens(dense("q"), x), on_tokens(dense("k"), kv), on_tokens(dense("v"), kv)
        h = on_tokens(dense("proj_out", self.out_init), multi_head_attention(q, k, v, self.num_heads, mask))
        return nn.Dropout(self.dropout, deterministic=not train)(h)


class DiTBlock(nn.Module):
    """One DiT block with adaLN-Zero (diffusers `BasicTransformerBlock`, norm_type "ada_norm_zero"), optionally with
    its own conditioning embedding (diffusers' per-block `norm1.emb`) and a PixArt-style cross-attention sublayer."""
    num_heads: int
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    own_embedding: bool = True
    num_classes: Optional[int] = None
    cross_attention: bool = False
    norm_eps: float = 1e-5  # the MLP sublayer's LayerNorm (diffusers `norm_eps`); the attention one uses 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, c, t, label, context=None, context_mask=None, *, train: bool = False):
        """h [B, N, D] float32; c [B, D] the shared conditioning (or the terms added to each block's own embedding).
        Returns (h, the c this block used)."""
        d = h.shape[-1]
        if self.own_embedding:
            c = CondEmbed(d, self.num_classes, self.dtype, name="cond_embed")(t, label) + c
        mod = nn.Dense(6 * d, kernel_init=zero_init, bias_init=zero_init, dtype=self.dtype, name="adaln")(nn.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod.astype(jnp.float32), 6, -1)
        attn = Attention(self.num_heads, self.dropout, dtype=self.dtype, name="attn")
        x = modulate(layer_norm(h, 1e-6), shift_msa, scale_msa).astype(self.dtype)
        h = h + gate_msa[:, None] * attn(x, x, train=train).astype(jnp.float32)
        if self.cross_attention:
            xattn = Attention(self.num_heads, self.dropout, zero_init, self.dtype, name="xattn")
            h = h + xattn(h.astype(self.dtype), context, context_mask, train=train).astype(jnp.float32)
        x = modulate(layer_norm(h, self.norm_eps), shift_mlp, scale_mlp).astype(self.dtype)
        x = on_tokens(nn.Dense(int(d * self.mlp_ratio), kernel_init=xavier_init, dtype=self.dtype, name="fc1"), x)
        x = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(x, approximate=True))
        x = on_tokens(nn.Dense(d, kernel_init=xavier_init, dtype=self.dtype, name="fc2"), x)
        return h + gate_mlp[:, None] * x.astype(jnp.float32), c


class PatchEmbed(nn.Module):
    """The paper's patchify conv (kernel = stride = p, no padding; params ``kernel`` [p, p, C, D] and ``bias`` as
    ``nn.Conv``'s) computed as a reshape into patches and one matmul: the same function, but XLA:CPU's filter gradient
    of a strided conv is several times slower than a matmul's (experiments/benchmarks/RESULTS.md)."""
    features: int
    patch_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, hgt, wid, c = x.shape
        p = self.patch_size
        kernel = self.param("kernel", patch_init, (p, p, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        patches = x.astype(self.dtype).reshape(b, hgt // p, p, wid // p, p, c)
        out = jnp.einsum("bhpwqc,pqcd->bhwd", patches, kernel.astype(self.dtype))
        return out + bias.astype(self.dtype)


class DiT(nn.Module):
    """DiT denoiser (the :mod:`ddpm_jax.models.denoiser` protocol): `x` [B, H, W, C], `t` [B] (or scalar) timesteps,
    possibly fractional, `cond` with any of label / context / context_mask / pooled / low_res / aug_level (see the
    module docstring). Returns [B, H, W, out_channels] float32 (out_channels None: C); `full_output=True` returns all
    2 * out_channels channels when `learn_sigma`.

    `pos_embed_base_size`: None = position embedding on patch indices (the paper; equal to diffusers at its
    `sample_size`); an int = diffusers' `PatchEmbed` rescaling for a model with `sample_size / patch_size` = that int.
    """
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 2
    mlp_ratio: float = 4.0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    num_classes: Optional[int] = None
    context_dim: Optional[int] = None
    pooled_dim: Optional[int] = None
    low_res_channels: Optional[int] = None
    dropout: float = 0.0
    norm_eps: float = 1e-5
    shared_embedding: bool = False
    pos_embed_base_size: Optional[int] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray, cond: Optional[Mapping[str, Any]] = None, *,
                 train: bool = False, full_output: bool = False) -> jnp.ndarray:
        cond = check_cond(cond)
        label, context, context_mask, pooled = (cond.get(k) for k in ("label", "context", "context_mask", "pooled"))
        low_res, aug_level = cond.get("low_res"), cond.get("aug_level")
        self._check_inputs(x, label, context, context_mask, pooled)
        b, hgt, wid, chans = x.shape
        p, d = self.patch_size, self.hidden_size
        out_ch = self.out_channels or chans
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        if self.num_classes is not None:
            label = jnp.full((b,), self.num_classes, jnp.int32) if label is None else label
            label = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (b,))
        extra = jnp.zeros((b, d), jnp.float32)  # terms added to c: pooled text, augmentation level
        if self.pooled_dim is not None:
            proj = nn.Dense(d, kernel_init=xavier_init, dtype=self.dtype, name="pooled_proj")
            extra = extra + proj(pooled.astype(self.dtype)).astype(jnp.float32)
        if self.low_res_channels is not None:
            x, aug = self._low_res_condition(x, low_res, aug_level)
            extra = extra + TimestepMLP(d, self.dtype, name="aug_embed")(aug).astype(jnp.float32)
        elif low_res is not None or aug_level is not None:
            raise ValueError("low_res/aug_level were given but DiT.low_res_channels is None")
        if context is not None:
            context = context.astype(self.dtype)

        patches = PatchEmbed(d, p, self.dtype, name="patch_embed")(x)
        gh, gw = hgt // p, wid // p
        h = patches.reshape(b, gh * gw, d).astype(jnp.float32)
        h = h + jnp.asarray(sincos_pos_embed(d, gh, gw, self.pos_embed_base_size))[None]

        c = extra
        if self.shared_embedding:
            c = CondEmbed(d, self.num_classes, self.dtype, name="cond_embed")(t, label) + extra
        c_final = c
        for i in range(self.depth):
            block = DiTBlock(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                             own_embedding=not self.shared_embedding, num_classes=self.num_classes,
                             cross_attention=self.context_dim is not None, norm_eps=self.norm_eps, dtype=self.dtype,
                             name=f"block_{i}")
            h, c_block = block(h, c, t, label, context, context_mask, train=train)
            c_final = c_block if i == 0 else c_final  # diffusers' final layer reads block 0's embedding

        mod = nn.Dense(2 * d, kernel_init=zero_init, dtype=self.dtype, name="final_adaln")(nn.silu(c_final))
        shift, scale = jnp.split(mod.astype(jnp.float32), 2, axis=-1)
        h = modulate(layer_norm(h, 1e-6), shift, scale).astype(self.dtype)
        total_ch = 2 * out_ch if self.learn_sigma else out_ch
        h = on_tokens(nn.Dense(p * p * total_ch, kernel_init=zero_init, dtype=self.dtype, name="final_linear"), h)
        out = h.reshape(b, gh, gw, p, p, total_ch).transpose(0, 1, 3, 2, 4, 5).reshape(b, hgt, wid, total_ch)
        out = out.astype(jnp.float32)
        return out if full_output else out[..., :out_ch]

    def _check_inputs(self, x, label, context, context_mask, pooled) -> None:
        """Fail early on inputs (or a configuration) that do not fit."""
        if self.hidden_size % self.num_heads:
            raise ValueError(f"DiT.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"DiT.hidden_size={self.hidden_size} must be divisible by 4 (2-D sin-cos positions)")
        if x.ndim != 4:
            raise ValueError(f"DiT expects x of shape [B, H, W, C], got {x.shape}")
        if x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
            raise ValueError(f"DiT with patch_size={self.patch_size} needs H, W divisible by it, got {x.shape}")
        if label is not None and self.num_classes is None:
            raise ValueError("labels were given but DiT.num_classes is None")
        if (context is None) != (self.context_dim is None):
            raise ValueError(f"context must be given exactly when context_dim is set (context_dim={self.context_dim})")
        if context is not None and (context.ndim != 3 or context.shape[0] != x.shape[0]
                                    or context.shape[-1] != self.context_dim):
            raise ValueError(f"context must be [{x.shape[0]}, L, {self.context_dim}], got {context.shape}")
        if context_mask is not None and context is None:
            raise ValueError("context_mask was given without context")
        if context_mask is not None and context_mask.shape != context.shape[:2]:
            raise ValueError(f"context_mask must be {context.shape[:2]} like context, got {context_mask.shape}")
        if (pooled is None) != (self.pooled_dim is None):
            raise ValueError(f"pooled must be given exactly when pooled_dim is set (pooled_dim={self.pooled_dim})")
        if pooled is not None and pooled.shape != (x.shape[0], self.pooled_dim):
            raise ValueError(f"pooled must be [{x.shape[0]}, {self.pooled_dim}], got {pooled.shape}")

    def _low_res_condition(self, x, low_res, aug_level):
        """[x, bilinear_upsample(low_res)] on channels, and the augmentation timestep (0 = clean when absent)."""
        if low_res is None:
            raise ValueError(f"DiT.low_res_channels={self.low_res_channels} needs low_res=[B, h, w, C]")
        if low_res.ndim != 4 or low_res.shape[0] != x.shape[0] or low_res.shape[-1] != self.low_res_channels:
            raise ValueError(f"low_res must be [{x.shape[0]}, h, w, {self.low_res_channels}], got {low_res.shape}")
        up = jax.image.resize(low_res.astype(jnp.float32), x.shape[:3] + low_res.shape[-1:], "bilinear")
        aug = jnp.zeros((x.shape[0],)) if aug_level is None else aug_level
        aug = jnp.broadcast_to(jnp.asarray(aug, jnp.float32), (x.shape[0],))
        return jnp.concatenate([x.astype(jnp.float32), up], axis=-1), aug
