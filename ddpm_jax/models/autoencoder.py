"""The KL-regularized autoencoder of latent diffusion (Rombach et al. 2022, LDM / Stable Diffusion), NHWC.

Layer for layer this is diffusers' `AutoencoderKL`: an encoder of `DownEncoderBlock2D`s (ResBlocks, then a 3x3
stride-2 conv after zero padding (0, 1)), a ResBlock-Attn-ResBlock middle, GroupNorm-SiLU-conv out to the moments of
q(z|x); 1x1 `quant_conv` / `post_quant_conv` around the latent; a mirrored decoder of `UpDecoderBlock2D`s with
`num_res_blocks + 1` ResBlocks and nearest-neighbour 2x upsampling + conv. With the defaults and 3 channels it is the
Stable Diffusion VAE (83,653,863 parameters); `params_from_diffusers_state_dict` maps diffusers' weights here.
"""
import re
from typing import Any, Optional, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models.layers import AttnBlock, Downsample, ResBlock, Upsample, conv3x3, default_init, group_norm

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # LDM's clamp of the posterior log-variance


class DiagonalGaussian(flax.struct.PyTreeNode):
    """Posterior q(z|x) = N(mean, diag(exp(logvar))) over latents [B, h, w, C] (LDM `DiagonalGaussianDistribution`)."""
    mean: jnp.ndarray
    logvar: jnp.ndarray

    @classmethod
    def from_moments(cls, moments: jnp.ndarray) -> "DiagonalGaussian":
        """Split [..., 2C] moments into mean and log-variance (last axis), clipping logvar to [-30, 20] as LDM does."""
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return cls(mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> jnp.ndarray:
        return jnp.exp(0.5 * self.logvar)

    def sample(self, key: jax.Array) -> jnp.ndarray:
        """Reparameterized draw z = mean + std * eps, eps ~ N(0, I) (Kingma & Welling 2014)."""
        return self.mean + self.std * jax.random.normal(key, self.mean.shape, self.mean.dtype)

    def mode(self) -> jnp.ndarray:
        return self.mean

    def kl(self) -> jnp.ndarray:
        """KL(q || N(0, I)) = 1/2 sum(mean^2 + var - 1 - logvar) over all latent dims, per example: [B]."""
        terms = jnp.square(self.mean) + jnp.exp(self.logvar) - 1.0 - self.logvar
        return 0.5 * jnp.sum(terms, axis=tuple(range(1, self.mean.ndim)))


class MidBlock(nn.Module):
    """ResBlock - single-head self-attention - ResBlock at the lowest resolution (diffusers `UNetMidBlock2D`)."""
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        res = lambda name: ResBlock(h.shape[-1], self.dropout, self.num_groups, self.dtype, name=name)
        h = res("res_0")(h, train=train)
        h = AttnBlock(1, self.num_groups, self.dtype, name="attn")(h)
        return res("res_1")(h, train=train)


class Encoder(nn.Module):
    """x [B, H, W, C] -> moments [B, H/f, W/f, 2 z_channels] (or z_channels with `double_z=False`), f = 2^(L-1).

    Each level has `num_res_blocks` ResBlocks (each followed by self-attention if the level is in `attn_levels`,
    level 0 = full resolution), then a downsampling conv except at the last level.
    """
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: Sequence[int] = ()
    z_channels: int = 4
    double_z: bool = True
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        h = conv3x3(self.ch * self.ch_mult[0], self.dtype, "conv_in")(x.astype(self.dtype))
        for level, mult in enumerate(self.ch_mult):
            for j in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, self.dropout, self.num_groups, self.dtype,
                             name=f"down_{level}_res_{j}")(h, train=train)
                if level in self.attn_levels:
                    h = AttnBlock(1, self.num_groups, self.dtype, name=f"down_{level}_attn_{j}")(h)
            if level != len(self.ch_mult) - 1:
                h = Downsample(self.dtype, name=f"down_{level}_downsample")(h)
        h = MidBlock(self.num_groups, self.dropout, self.dtype, name="mid")(h, train=train)
        h = nn.silu(group_norm(self.num_groups, self.dtype, "norm_out")(h))
        return conv3x3(2 * self.z_channels if self.double_z else self.z_channels, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
    """z [B, h, w, z_channels] -> x_hat [B, h f, w f, out_channels]: the encoder mirrored, `num_res_blocks + 1`
    ResBlocks per level and nearest-neighbour upsampling + conv between levels."""
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: Sequence[int] = ()
    out_channels: int = 3
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        h = conv3x3(self.ch * self.ch_mult[-1], self.dtype, "conv_in")(z.astype(self.dtype))
        h = MidBlock(self.num_groups, self.dropout, self.dtype, name="mid")(h, train=train)
        for level in reversed(range(len(self.ch_mult))):
            for j in range(self.num_res_blocks + 1):
                h = ResBlock(self.ch * self.ch_mult[level], self.dropout, self.num_groups, self.dtype,
                             name=f"up_{level}_res_{j}")(h, train=train)
                if level in self.attn_levels:
                    h = AttnBlock(1, self.num_groups, self.dtype, name=f"up_{level}_attn_{j}")(h)
            if level != 0:
                h = Upsample(self.dtype, name=f"up_{level}_upsample")(h)
        h = nn.silu(group_norm(self.num_groups, self.dtype, "norm_out")(h))
        return conv3x3(self.out_channels, self.dtype, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """LDM's KL autoencoder: `encode(x) -> DiagonalGaussian`, `decode(z) -> x_hat`, `__call__ -> (x_hat, posterior)`.

    x is [B, H, W, in_channels] with H, W divisible by `downsample_factor`; latents are [B, H/f, W/f, embed_dim].
    Params are float32, `dtype` is the compute dtype; posterior moments and decoded images are float32.
    Sampling uses `key`, or else the 'sample' RNG stream. `attn_levels` adds self-attention after every ResBlock of
    those levels (LDM's `attn_resolutions`; none in Stable Diffusion, whose only attention is in the middle).
    """
    in_channels: int = 3
    out_channels: Optional[int] = None  # None: in_channels
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: Sequence[int] = ()
    z_channels: int = 4
    embed_dim: int = 4
    num_groups: int = 32
    dropout: float = 0.0
    dtype: Any = jnp.float32

    def setup(self):
        if not self.ch_mult:
            raise ValueError("AutoencoderKL.ch_mult must name at least one level")
        if any(not 0 <= level < len(self.ch_mult) for level in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} outside levels 0..{len(self.ch_mult) - 1}")
        shared = dict(ch=self.ch, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                      attn_levels=tuple(self.attn_levels), num_groups=self.num_groups, dropout=self.dropout,
                      dtype=self.dtype)
        self.encoder = Encoder(**shared, z_channels=self.z_channels, double_z=True)
        self.decoder = Decoder(**shared, out_channels=self.out_channels or self.in_channels)
        conv1x1 = lambda features: nn.Conv(features, (1, 1), kernel_init=default_init, dtype=self.dtype)
        self.quant_conv = conv1x1(2 * self.embed_dim)
        self.post_quant_conv = conv1x1(self.z_channels)

    @property
    def downsample_factor(self) -> int:
        """Spatial downsampling factor f = 2^(len(ch_mult) - 1) between image and latent."""
        return 2 ** (len(self.ch_mult) - 1)

    def encode(self, x: jnp.ndarray, *, train: bool = False) -> DiagonalGaussian:
        """q(z|x) from images [B, H, W, in_channels]."""
        f = self.downsample_factor
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"AutoencoderKL expects x of shape [B, H, W, {self.in_channels}], got {x.shape}")
        if x.shape[1] % f or x.shape[2] % f:
            raise ValueError(f"AutoencoderKL with downsampling factor {f} needs H, W divisible by {f}, got {x.shape}")
        moments = self.quant_conv(self.encoder(x, train=train))
        return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

    def decode(self, z: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        """Images [B, h f, w f, out_channels] (float32) from latents [B, h, w, embed_dim]."""
        if z.ndim != 4 or z.shape[-1] != self.embed_dim:
            raise ValueError(f"AutoencoderKL.decode expects z of shape [B, h, w, {self.embed_dim}], got {z.shape}")
        h = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(h, train=train).astype(jnp.float32)

    def __call__(self, x: jnp.ndarray, key: Optional[jax.Array] = None, *, sample_posterior: bool = True,
                 train: bool = False) -> tuple[jnp.ndarray, DiagonalGaussian]:
        """Reconstruction through a posterior sample (or its mode), and the posterior."""
        posterior = self.encode(x, train=train)
        if sample_posterior:
            z = posterior.sample(self.make_rng("sample") if key is None else key)
        else:
            z = posterior.mode()
        return self.decode(z, train=train), posterior


# ----------------------------------------------------------------------------------------------------------------
# diffusers `AutoencoderKL` state dict -> our params. Conv kernels OIHW -> HWIO, linear [out, in] -> [in, out];
# diffusers' decoder up block k is our level L-1-k. Current (`to_q`, `to_out.0`) and legacy (`query`, `proj_attn`)
# attention names are both accepted.

_RES_LAYERS = {"norm1": "norm_0", "conv1": "conv_0", "norm2": "norm_1", "conv2": "conv_1",
               "conv_shortcut": "shortcut"}
_ATTN_LAYERS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_TOP_LAYERS = ("quant_conv", "post_quant_conv")
_CODER_LAYERS = {"conv_in": "conv_in", "conv_norm_out": "norm_out", "conv_out": "conv_out"}


def _module_path(layer: str, num_levels: int) -> str:
    """diffusers module path (without `.weight`/`.bias`) -> our module path 'a/b/c'."""
    if layer in _TOP_LAYERS:
        return layer
    coder, _, rest = layer.partition(".")
    if coder in ("encoder", "decoder"):
        if rest in _CODER_LAYERS:
            return f"{coder}/{_CODER_LAYERS[rest]}"
        m = re.fullmatch(r"mid_block\.(resnets\.([01])|attentions\.0)\.(.+)", rest)
        if m:
            part, j, sub = m.groups()
            table, name = (_RES_LAYERS, f"res_{j}") if j is not None else (_ATTN_LAYERS, "attn")
            if sub in table:
                return f"{coder}/mid/{name}/{table[sub]}"
        blocks, side = ("down_blocks", "down") if coder == "encoder" else ("up_blocks", "up")
        m = re.fullmatch(rf"{blocks}\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", rest)
        if m:
            block, part, j, sub = m.groups()
            level = int(block) if side == "down" else num_levels - 1 - int(block)
            prefix = f"{coder}/{side}_{level}_"
            if part == "resnets" and sub in _RES_LAYERS:
                return f"{prefix}res_{j}/{_RES_LAYERS[sub]}"
            if part == "attentions" and sub in _ATTN_LAYERS:
                return f"{prefix}attn_{j}/{_ATTN_LAYERS[sub]}"
            if part == f"{side}samplers" and j == "0" and sub in ("conv", "Conv2d_0"):
                return f"{prefix}{side}sample/conv"
    raise KeyError(f"unknown diffusers AutoencoderKL layer: {layer}")


def _convert_leaf(kind: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Rename and re-lay-out one tensor: ('weight'|'bias') -> ('kernel'|'scale'|'bias')."""
    value = np.asarray(value, np.float32)
    if kind == "bias":
        return "bias", value
    if kind != "weight":
        raise KeyError(f"unknown diffusers AutoencoderKL parameter kind: {kind}")
    if value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return "kernel", value.T
    return "scale", value


def params_from_diffusers_state_dict(state_dict: dict[str, np.ndarray], model: AutoencoderKL) -> dict:
    """diffusers `AutoencoderKL.state_dict()` (as numpy arrays) -> `{'params': ...}` for `model`.

    Raises KeyError on a key that maps nowhere or on a parameter of `model` that the state dict lacks, and ValueError
    on a shape that differs from `model`'s.
    """
    params: dict = {}
    for key, value in state_dict.items():
        layer, kind = key.rsplit(".", 1)
        module = _module_path(layer, len(model.ch_mult))
        name, array = _convert_leaf(kind, value)
        node = params
        for part in module.split("/"):
            node = node.setdefault(part, {})
        if name in node and not np.array_equal(node[name], array):  # e.g. `conv` and its alias `Conv2d_0`
            raise KeyError(f"diffusers key {key} maps onto {module}/{name}, which another key already filled")
        node[name] = array
    params = {"params": params}
    _check_against_model(params, model)
    return params


def _check_against_model(params: dict, model: AutoencoderKL) -> None:
    """`params` has exactly `model`'s parameters and shapes (computed with jax.eval_shape, no FLOPs)."""
    f = model.downsample_factor
    x = jax.ShapeDtypeStruct((1, f, f, model.in_channels), jnp.float32)
    expected = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, sample_posterior=False), x)
    flat = {jax.tree_util.keystr(p): a.shape for p, a in jax.tree_util.tree_leaves_with_path(params)}
    for path, leaf in jax.tree_util.tree_leaves_with_path(expected):
        name = jax.tree_util.keystr(path)
        if name not in flat:
            raise KeyError(f"diffusers state dict has no weights for {name}")
        if flat[name] != leaf.shape:
            raise ValueError(f"{name}: diffusers weights have shape {flat[name]}, the model needs {leaf.shape}")
    extra = set(flat) - {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(expected)}
    if extra:
        raise KeyError(f"diffusers weights for layers this AutoencoderKL does not have: {sorted(extra)}")
