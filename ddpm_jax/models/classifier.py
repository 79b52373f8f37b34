"""A small CNN classifier: its penultimate features define the offline Frechet classifier distance (TF-GAN's FCD)
for domains without Inception weights (digits, Fashion-MNIST), and its accuracy scores conditional samples."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import flax.linen as nn
import jax.numpy as jnp


class ConvBlock(nn.Module):
    features: int
    num_groups: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(2):
            x = nn.Conv(self.features, (3, 3), dtype=self.dtype, name=f"conv_{i}")(x)
            x = nn.silu(nn.GroupNorm(min(self.num_groups, self.features), dtype=self.dtype, name=f"norm_{i}")(x))
        return x


class Classifier(nn.Module):
    """Conv blocks with 2x average pooling between them, global average pool -> ``features`` -> Dense(num_classes).

    Input images in [-1, 1], NHWC. Returns {"features": [B, feature_dim], "logits": [B, num_classes]}.
    """

    num_classes: int
    channels: Sequence[int] = (32, 64, 128)
    feature_dim: int = 128
    dropout: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> Dict[str, jnp.ndarray]:
        if x.ndim != 4:
            raise ValueError(f"Classifier expects images [B, H, W, C], got {x.shape}")
        h = x.astype(self.dtype)
        for i, ch in enumerate(self.channels):
            h = ConvBlock(ch, dtype=self.dtype, name=f"block_{i}")(h)
            if i < len(self.channels) - 1:
                h = nn.avg_pool(h, (2, 2), (2, 2))
        h = jnp.mean(h, axis=(1, 2))
        features = nn.silu(nn.Dense(self.feature_dim, dtype=self.dtype, name="features")(h)).astype(jnp.float32)
        h = nn.Dropout(self.dropout, deterministic=not train)(features)
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(h).astype(jnp.float32)
        return {"features": features, "logits": logits}
