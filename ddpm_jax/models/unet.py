"""The DDPM / ADM U-Net denoiser (Ho et al. 2020, Appendix B; Dhariwal & Nichol 2021), NHWC.

With the defaults and a 32x32x3 input this is exactly the DDPM CIFAR-10 network (35,746,307 parameters), the same
network as diffusers' `UNet2DModel` for `google/ddpm-cifar10-32`; `ddpm_jax.models.convert` maps its weights here.
Optional extras: class conditioning with a null label (classifier-free guidance, Ho & Salimans 2022),
cross-attention to a token sequence (LDM / Imagen text conditioning) and a pooled text vector projected and added to
the time embedding (Imagen sec. 2.2); and, for a super-resolution stage (SR3, Imagen), a low-resolution image that is
bilinearly upsampled to the output size and concatenated to the input channels, with the timestep of its noise
conditioning augmentation embedded and added to the time embedding. All are off by default, so the default parameter
tree is unchanged.
"""
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.models.denoiser import check_cond
from ddpm_jax.models.layers import (AttnBlock, CrossAttnBlock, Downsample, ResBlock, Upsample, conv3x3,
                                    default_init, group_norm, timestep_embedding, zero_init)


class TimeEmbedding(nn.Module):
    """temb = Dense(SiLU(Dense(sinusoid(t)))) with widths ch -> 4ch -> 4ch (DDPM)."""
    ch: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t: jnp.ndarray) -> jnp.ndarray:
        emb = timestep_embedding(t, self.ch).astype(self.dtype)
        emb = nn.Dense(4 * self.ch, kernel_init=default_init, dtype=self.dtype, name="dense_0")(emb)
        return nn.Dense(4 * self.ch, kernel_init=default_init, dtype=self.dtype, name="dense_1")(nn.silu(emb))


class UNet(nn.Module):
    """DDPM U-Net: `num_res_blocks` ResBlocks per level (+ self-attention at `attn_resolutions`), a
    ResBlock-Attn-ResBlock middle, and a mirrored up path of `num_res_blocks + 1` ResBlocks eating skip connections.

    Call (the :mod:`ddpm_jax.models.denoiser` protocol): `x` [B, H, W, C] float, `t` [B] (or scalar) DDPM time
    indices in [0, T), possibly fractional, and `cond`, a dict with any of: `label` [B] int labels where
    `num_classes` means "no label" (absent = all null); `context` [B, L, context_dim] with optional `context_mask`
    [B, L] bool; `pooled` [B, pooled_dim]; `low_res` [B, h, w, low_res_channels] (super-resolution: upsampled
    bilinearly to H x W and concatenated to `x`) with `aug_level` [B] (or scalar) the timestep of the noise
    augmentation applied to it, 0 = clean (absent: 0). Returns [B, H, W, out_channels] float32.

    Cross-attention (when `context_dim` is set) follows the middle self-attention and every feature map whose height is
    in `cross_attn_resolutions` (None: the same heights as `attn_resolutions`).
    """
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)  # feature-map heights that get self-attention
    dropout: float = 0.1
    out_channels: Optional[int] = None
    num_classes: Optional[int] = None
    context_dim: Optional[int] = None
    cross_attn_resolutions: Optional[Sequence[int]] = None  # None: attn_resolutions
    pooled_dim: Optional[int] = None  # width of a pooled text vector added (projected) to the time embedding
    low_res_channels: Optional[int] = None  # super-resolution: channels of the low-res conditioning image
    num_heads: int = 1
    num_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray, cond: Optional[Mapping[str, Any]] = None, *,
                 train: bool = False) -> jnp.ndarray:
        cond = check_cond(cond)
        y, context, context_mask, pooled = (cond.get(k) for k in ("label", "context", "context_mask", "pooled"))
        low_res, aug_level = cond.get("low_res"), cond.get("aug_level")
        self._check_inputs(x, y, context, context_mask, pooled)
        temb = self._embed(x.shape[0], t, y, pooled)
        out_ch = self.out_channels or x.shape[-1]
        if self.low_res_channels is not None:
            x, temb = self._low_res_condition(x, temb, low_res, aug_level)
        elif low_res is not None or aug_level is not None:
            raise ValueError("low_res/aug_level were given but UNet.low_res_channels is None")
        cond = dict(temb=temb, context=context, context_mask=context_mask, train=train)
        h = conv3x3(self.ch * self.ch_mult[0], self.dtype, "conv_in")(x.astype(self.dtype))
        h, skips = self._down(h, cond)
        h = self._middle(h, cond)
        h = self._up(h, skips, cond)
        h = nn.silu(group_norm(self.num_groups, self.dtype, "norm_out")(h))
        return conv3x3(out_ch, self.dtype, "conv_out", kernel_init=zero_init)(h).astype(jnp.float32)

    def _check_inputs(self, x, y, context, context_mask, pooled=None) -> None:
        """Fail early on inputs that do not fit this configuration."""
        if x.ndim != 4:
            raise ValueError(f"UNet expects x of shape [B, H, W, C], got {x.shape}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"UNet with {len(self.ch_mult)} levels needs H, W divisible by {factor}, got {x.shape}")
        if y is not None and self.num_classes is None:
            raise ValueError("labels y were given but UNet.num_classes is None")
        if (context is None) != (self.context_dim is None):
            raise ValueError(f"context must be given exactly when context_dim is set (context_dim={self.context_dim})")
        if context_mask is not None and context is None:
            raise ValueError("context_mask was given without context")
        if (pooled is None) != (self.pooled_dim is None):
            raise ValueError(f"pooled must be given exactly when pooled_dim is set (pooled_dim={self.pooled_dim})")

    def _low_res_condition(self, x, temb, low_res, aug_level):
        """SR3 / Imagen super-resolution conditioning: [x, bilinear_upsample(low_res)] on channels, and the embedded
        augmentation timestep added to the time embedding (Imagen sec. 2.5, noise conditioning augmentation)."""
        if low_res is None:
            raise ValueError(f"UNet.low_res_channels={self.low_res_channels} needs low_res=[B, h, w, C]")
        if low_res.ndim != 4 or low_res.shape[0] != x.shape[0] or low_res.shape[-1] != self.low_res_channels:
            raise ValueError(f"low_res must be [{x.shape[0]}, h, w, {self.low_res_channels}], got {low_res.shape}")
        up = jax.image.resize(low_res.astype(jnp.float32), x.shape[:3] + low_res.shape[-1:], "bilinear")
        aug = jnp.zeros((x.shape[0],)) if aug_level is None else aug_level
        aug = jnp.broadcast_to(jnp.asarray(aug, jnp.float32), (x.shape[0],))
        temb = temb + TimeEmbedding(self.ch, self.dtype, name="aug_embed")(aug)
        return jnp.concatenate([x.astype(jnp.float32), up], axis=-1), temb

    def _embed(self, batch: int, t: jnp.ndarray, y: Optional[jnp.ndarray],
               pooled: Optional[jnp.ndarray] = None) -> jnp.ndarray:
        """Timestep embedding, plus a learned class embedding (row `num_classes` is the null label), plus a linear
        projection of the pooled text vector."""
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        temb = TimeEmbedding(self.ch, self.dtype, name="time_embed")(t)
        if self.num_classes is not None:
            if y is None:
                y = jnp.full((batch,), self.num_classes, jnp.int32)
            temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype, name="class_embed")(y)
        if self.pooled_dim is not None:
            proj = nn.Dense(4 * self.ch, kernel_init=default_init, dtype=self.dtype, name="pooled_proj")
            temb = temb + proj(pooled.astype(self.dtype))
        return temb

    def _res(self, h, out_ch: int, name: str, cond: dict) -> jnp.ndarray:
        """One ResBlock conditioned on the time (and class) embedding."""
        block = ResBlock(out_ch, self.dropout, self.num_groups, self.dtype, name=name)
        return block(h, cond["temb"], train=cond["train"])

    def _attn(self, h, prefix: str, suffix: str, cond: dict, self_attn: bool = True,
              cross_attn: bool = True) -> jnp.ndarray:
        """Self-attention `{prefix}attn{suffix}`, then cross-attention `{prefix}xattn{suffix}` if context_dim is set."""
        if self_attn:
            h = AttnBlock(self.num_heads, self.num_groups, self.dtype, name=f"{prefix}attn{suffix}")(h)
        if cross_attn and self.context_dim is not None:
            xattn = CrossAttnBlock(self.num_heads, self.num_groups, self.dtype, name=f"{prefix}xattn{suffix}")
            h = xattn(h, cond["context"].astype(self.dtype), cond["context_mask"])
        return h

    def _attn_at(self, h, prefix: str, suffix: str, cond: dict) -> jnp.ndarray:
        """The attention layers this feature map's height asks for (self at attn_resolutions, cross at
        cross_attn_resolutions)."""
        cross_res = self.attn_resolutions if self.cross_attn_resolutions is None else self.cross_attn_resolutions
        self_attn, cross_attn = h.shape[1] in self.attn_resolutions, h.shape[1] in cross_res
        if self_attn or (cross_attn and self.context_dim is not None):
            h = self._attn(h, prefix, suffix, cond, self_attn, cross_attn)
        return h

    def _down(self, h, cond: dict):
        """Encoder half; returns features and the stack of skip connections (conv_in output first)."""
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = self._res(h, self.ch * mult, f"down_{level}_res_{j}", cond)
                h = self._attn_at(h, f"down_{level}_", f"_{j}", cond)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(self.dtype, name=f"down_{level}_downsample")(h)
                skips.append(h)
        return h, skips

    def _middle(self, h, cond: dict) -> jnp.ndarray:
        """ResBlock - attention - ResBlock at the lowest resolution."""
        h = self._res(h, h.shape[-1], "mid_res_0", cond)
        h = self._attn(h, "mid_", "", cond)
        return self._res(h, h.shape[-1], "mid_res_1", cond)

    def _up(self, h, skips: list, cond: dict) -> jnp.ndarray:
        """Decoder half: each ResBlock consumes the matching skip connection, concatenated after the features."""
        skips = list(skips)
        for level in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = self._res(h, self.ch * self.ch_mult[level], f"up_{level}_res_{j}", cond)
                h = self._attn_at(h, f"up_{level}_", f"_{j}", cond)
            if level != 0:
                h = Upsample(self.dtype, name=f"up_{level}_upsample")(h)
        return h
