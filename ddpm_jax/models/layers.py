"""Building blocks of the DDPM / ADM U-Net, shared with the autoencoder (NHWC layout).

Layer for layer these follow Ho et al. 2020 (Appendix B) as diffusers' `UNet2DModel` builds them: GroupNorm-SiLU-conv
residual blocks with an added timestep projection, single- or multi-head self-attention over all pixels, strided-conv
downsampling and nearest-neighbour upsampling. Output convolutions of residual branches start at zero, as in DDPM.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

default_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
zero_init = nn.initializers.zeros


def timestep_embedding(t: jnp.ndarray, dim: int, max_period: float = 10000.0, freq_shift: float = 1.0) -> jnp.ndarray:
    """Sinusoidal embedding [sin(t w_i), cos(t w_i)], w_i = max_period^(-i / (dim/2 - freq_shift)) (DDPM, Transformer).

    `freq_shift=1` is DDPM's choice (diffusers `Timesteps(dim, flip_sin_to_cos=False, downscale_freq_shift=1)`).
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def group_norm(num_groups: int, dtype: Any, name: str) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with exact two-pass variance, eps 1e-6 as in DDPM."""
    return nn.GroupNorm(num_groups=num_groups, epsilon=1e-6, use_fast_variance=False, dtype=dtype, name=name)


def conv3x3(features: int, dtype: Any, name: str, kernel_init=default_init) -> nn.Conv:
    """3x3 convolution, stride 1, zero padding 1."""
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), kernel_init=kernel_init, dtype=dtype, name=name)


def multi_head_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, num_heads: int,
                         mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """softmax(q k^T / sqrt(d_head)) v per head (Vaswani et al. 2017); softmax in float32.

    q: [B, N, C], k/v: [B, L, C], mask: [B, L] bool (True = attend). Rows whose keys are all masked give zeros.
    """
    b, n, c = q.shape
    head_dim = c // num_heads
    split = lambda a: a.reshape(a.shape[0], a.shape[1], num_heads, head_dim)
    logits = jnp.einsum("bnhd,blhd->bhnl", split(q), split(k)).astype(jnp.float32) / math.sqrt(head_dim)
    if mask is not None:
        keep = mask[:, None, None, :].astype(bool)
        logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1) * keep
    else:
        weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhnl,blhd->bnhd", weights.astype(v.dtype), split(v))
    return out.reshape(b, n, c)


class ResBlock(nn.Module):
    """Residual block of DDPM: x + conv(drop(act(norm(conv(act(norm(x))) + W act(temb))))), 1x1 shortcut if C changes.

    With `temb=None` the timestep projection is absent (the autoencoder's block).
    """
    out_channels: int
    dropout: float = 0.0
    num_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, temb: Optional[jnp.ndarray] = None, *, train: bool = False) -> jnp.ndarray:
        h = nn.silu(group_norm(self.num_groups, self.dtype, "norm_0")(x))
        h = conv3x3(self.out_channels, self.dtype, "conv_0")(h)
        if temb is not None:
            proj = nn.Dense(self.out_channels, kernel_init=default_init, dtype=self.dtype, name="temb_proj")
            h = h + proj(nn.silu(temb))[:, None, None, :]
        h = nn.silu(group_norm(self.num_groups, self.dtype, "norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = conv3x3(self.out_channels, self.dtype, "conv_1", kernel_init=zero_init)(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), kernel_init=default_init, dtype=self.dtype, name="shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Self-attention over all H*W positions with a residual connection (DDPM's `attn_block`, SAGAN-style)."""
    num_heads: int = 1
    num_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b, hgt, wid, c = x.shape
        h = group_norm(self.num_groups, self.dtype, "norm")(x).reshape(b, hgt * wid, c)
        dense = lambda name, init=default_init: nn.Dense(c, kernel_init=init, dtype=self.dtype, name=name)
        h = multi_head_attention(dense("q")(h), dense("k")(h), dense("v")(h), self.num_heads)
        h = dense("proj_out", zero_init)(h)
        return x + h.reshape(b, hgt, wid, c)


class CrossAttnBlock(nn.Module):
    """Cross-attention from pixels to a token sequence (LDM, Rombach et al. 2022): queries from x, keys/values from
    `context` [B, L, D]; `context_mask` [B, L] (True = real token) excludes padding."""
    num_heads: int = 1
    num_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, context: jnp.ndarray, context_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        b, hgt, wid, c = x.shape
        h = group_norm(self.num_groups, self.dtype, "norm")(x).reshape(b, hgt * wid, c)
        dense = lambda name, init=default_init: nn.Dense(c, kernel_init=init, dtype=self.dtype, name=name)
        h = multi_head_attention(dense("q")(h), dense("k")(context), dense("v")(context), self.num_heads, context_mask)
        h = dense("proj_out", zero_init)(h)
        return x + h.reshape(b, hgt, wid, c)


class Downsample(nn.Module):
    """3x3 stride-2 convolution with padding (0, 1) per spatial axis, i.e. TF 'SAME' as in DDPM (diffusers
    `downsample_padding=0`)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        conv = nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding=((0, 1), (0, 1)), kernel_init=default_init,
                       dtype=self.dtype, name="conv")
        return conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution (DDPM)."""
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv3x3(x.shape[-1], self.dtype, "conv")(x)
