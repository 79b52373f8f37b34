"""The patch discriminator of the LDM / taming-transformers autoencoder (pix2pix's ``NLayerDiscriminator``), NHWC.

4x4 convolutions: one stride-2 conv + LeakyReLU(0.2), ``num_layers - 1`` more stride-2 convs doubling the width (at
most 8x) with normalization, one stride-1 conv, and a stride-1 conv to one logit per patch. taming uses BatchNorm;
GroupNorm is used here so the discriminator has no batch statistics and the train state stays params + optimizer.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class PatchDiscriminator(nn.Module):
    ch: int = 64
    num_layers: int = 3
    num_groups: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Images [B, H, W, C] in [-1, 1] -> patch logits [B, h, w, 1] (real > 0 > fake under the hinge loss)."""
        size = min(x.shape[1:3])
        for i in range(self.num_layers + 2):  # 4x4 convs with padding 1: stride 2 halves, stride 1 shrinks by 1
            size = size // 2 if i < self.num_layers else size - 1
        if size < 1:
            raise ValueError(f"a {self.num_layers}-layer patch discriminator has no output for {x.shape[1]}x"
                             f"{x.shape[2]} images; lower autoencoder.disc_layers")
        conv = lambda feats, stride, name: nn.Conv(feats, (4, 4), (stride, stride), padding=((1, 1), (1, 1)),
                                                   dtype=self.dtype, name=name)
        h = nn.leaky_relu(conv(self.ch, 2, "conv_in")(x), 0.2)
        for i in range(1, self.num_layers + 1):
            feats = self.ch * min(2 ** i, 8)
            h = conv(feats, 2 if i < self.num_layers else 1, f"conv_{i}")(h)
            h = nn.GroupNorm(min(self.num_groups, feats), dtype=self.dtype, name=f"norm_{i}")(h)
            h = nn.leaky_relu(h, 0.2)
        return conv(1, 1, "conv_out")(h).astype(jnp.float32)


def hinge_d_loss(logits_real: jnp.ndarray, logits_fake: jnp.ndarray) -> jnp.ndarray:
    """Discriminator hinge loss 1/2 (E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]) (taming's ``hinge_d_loss``)."""
    return 0.5 * (jnp.mean(nn.relu(1.0 - logits_real)) + jnp.mean(nn.relu(1.0 + logits_fake)))


def generator_loss(logits_fake: jnp.ndarray) -> jnp.ndarray:
    """The autoencoder's adversarial term -E[D(x_hat)]."""
    return -jnp.mean(logits_fake)
