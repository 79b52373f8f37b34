"""Build models from ``config.model`` (plain data in, module out; no class names as strings)."""
from __future__ import annotations

import jax.numpy as jnp

from ddpm_jax.models.autoencoder import AutoencoderKL
from ddpm_jax.models.classifier import Classifier
from ddpm_jax.models.discriminator import PatchDiscriminator
from ddpm_jax.models.dit import SIZES as DIT_SIZES, DiT
from ddpm_jax.models.unet import UNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def unet_from_config(model_config, num_classes: int | None = None, context_dim: int | None = None,
                     pooled_dim: int | None = None, low_res_channels: int | None = None) -> UNet:
    """The U-Net denoiser; class-conditional when ``model_config.class_conditional`` and ``num_classes`` is known;
    text-conditional (cross-attention to [B, L, context_dim] tokens, pooled [B, pooled_dim] vector) when given;
    a super-resolution stage conditioned on a low-res image of ``low_res_channels`` when given."""
    conditional = model_config.class_conditional
    if conditional and not num_classes:
        raise ValueError("model.class_conditional needs a dataset with labels (num_classes > 0)")
    return UNet(
        ch=model_config.ch,
        ch_mult=tuple(model_config.ch_mult),
        num_res_blocks=model_config.num_res_blocks,
        attn_resolutions=tuple(model_config.attn_resolutions),
        dropout=model_config.dropout,
        num_classes=num_classes if conditional else None,
        context_dim=context_dim,
        cross_attn_resolutions=tuple(model_config.cross_attn_resolutions) or None,
        pooled_dim=pooled_dim,
        low_res_channels=low_res_channels,
        num_heads=model_config.num_heads,
        num_groups=model_config.num_groups,
        dtype=DTYPES[model_config.dtype],
    )


def dit_from_config(model_config, num_classes: int | None = None, context_dim: int | None = None,
                    pooled_dim: int | None = None, low_res_channels: int | None = None) -> DiT:
    """The DiT denoiser (Peebles & Xie 2023) from ``model_config.dit``: ``size`` S / B / L / XL sets (hidden, depth,
    heads) to the paper's (384, 12, 6) / (768, 12, 12) / (1024, 24, 16) / (1152, 28, 16); "" takes ``hidden_size``,
    ``depth`` and ``num_heads``. Conditioning arguments as for :func:`unet_from_config`."""
    conditional = model_config.class_conditional
    if conditional and not num_classes:
        raise ValueError("model.class_conditional needs a dataset with labels (num_classes > 0)")
    dit = model_config.dit
    size = dit.get("size", "") or ""
    if size and size not in DIT_SIZES:
        raise ValueError(f"unknown model.dit.size {size!r}; use one of {sorted(DIT_SIZES)} or '' (hidden_size etc.)")
    hidden, depth, heads = DIT_SIZES[size] if size else (dit.hidden_size, dit.depth, dit.num_heads)
    if not isinstance(dit.patch_size, int) or dit.patch_size < 1:
        raise ValueError(f"model.dit.patch_size must be a positive integer, got {dit.patch_size!r}")
    return DiT(
        hidden_size=hidden, depth=depth, num_heads=heads, patch_size=dit.patch_size, mlp_ratio=dit.mlp_ratio,
        learn_sigma=dit.learn_sigma, num_classes=num_classes if conditional else None, context_dim=context_dim,
        pooled_dim=pooled_dim, low_res_channels=low_res_channels, dropout=model_config.dropout,
        shared_embedding=bool(dit.get("shared_embedding", True)), dtype=DTYPES[model_config.dtype],
    )


BACKBONES = {"unet": unet_from_config, "dit": dit_from_config}  # model.backbone -> builder(model_config, ...)


def denoiser_from_config(model_config, num_classes: int | None = None, context_dim: int | None = None,
                         pooled_dim: int | None = None, low_res_channels: int | None = None):
    """The denoiser of ``model.backbone`` (see :mod:`ddpm_jax.models.denoiser` for its call shape)."""
    name = model_config.backbone
    if name not in BACKBONES:
        raise ValueError(f"unknown model.backbone {name!r}; registered: {sorted(BACKBONES)}")
    return BACKBONES[name](model_config, num_classes, context_dim, pooled_dim, low_res_channels)


def classifier_from_config(model_config, num_classes: int) -> Classifier:
    """The small CNN classifier used for offline (classifier-feature) metrics."""
    if not num_classes:
        raise ValueError("a classifier needs a dataset with labels (num_classes > 0)")
    return Classifier(num_classes=num_classes, channels=tuple(model_config.get("channels", (32, 64, 128))),
                      feature_dim=model_config.get("feature_dim", 128), dropout=model_config.get("dropout", 0.1),
                      dtype=DTYPES[model_config.get("dtype", "float32")])


def autoencoder_from_config(model_config, channels: int) -> AutoencoderKL:
    """LDM's KL autoencoder; downsampling factor f = 2 ** (len(ch_mult) - 1)."""
    return AutoencoderKL(in_channels=channels, ch=model_config.ch, ch_mult=tuple(model_config.ch_mult),
                         num_res_blocks=model_config.num_res_blocks,
                         attn_levels=tuple(model_config.get("attn_levels", ())),
                         z_channels=model_config.get("z_channels", 4), embed_dim=model_config.get("embed_dim", 4),
                         num_groups=model_config.get("num_groups", 32), dropout=model_config.get("dropout", 0.0),
                         dtype=DTYPES[model_config.get("dtype", "float32")])


def discriminator_from_config(autoencoder_config) -> "PatchDiscriminator | None":
    """The autoencoder's patch discriminator when ``autoencoder.disc_weight > 0``, else None (no adversarial loss)."""

    weight = autoencoder_config.get("disc_weight", 0.0)
    if weight < 0:
        raise ValueError(f"autoencoder.disc_weight must be >= 0, got {weight}")
    if weight == 0:
        return None
    return PatchDiscriminator(ch=autoencoder_config.get("disc_ch", 64),
                              num_layers=autoencoder_config.get("disc_layers", 3),
                              num_groups=autoencoder_config.get("disc_groups", 8))
