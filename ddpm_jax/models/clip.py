"""A small CLIP for a domain (Radford et al. 2021), its contrastive loss, and a pretrained Flax CLIP from a local folder.

``SmallCLIP``: an image tower (a small conv net) and a text tower, each projected to a shared space and L2-normalised,
with a learned temperature. The text tower is a trainable MLP over the pooled embedding of a *frozen* text encoder
(:class:`~ddpm_jax.models.text_encoder.TextEncoder`, e.g. all-MiniLM-L6-v2): the language model is already good at
text, and pooled embeddings of a captioned dataset are computed once and cached, so training CLIP costs only the image
tower. Batches carry ``image`` [B, H, W, C] in [-1, 1] and ``text_emb`` [B, D_text] (and optionally ``label``).

Both :class:`DomainCLIP` (ours + its text encoder) and :class:`PretrainedCLIP` (transformers' ``FlaxCLIPModel``) offer
``embed_images(images) -> [B, E]`` and ``embed_texts(texts) -> [B, E]``, unit-norm, for the CLIP score.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.models.text_encoder import check_model_folder, quiet_transformers

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
LOGIT_SCALE_MAX = math.log(100.0)  # CLIP clips the scale exp(t) at 100
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """x / max(||x||_2, eps) along the last axis."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def logit_scale_value(log_scale: jnp.ndarray) -> jnp.ndarray:
    """exp(min(t, log 100)): CLIP's learned inverse temperature, clipped at 100."""
    return jnp.exp(jnp.minimum(log_scale, LOGIT_SCALE_MAX))


def contrastive_loss(image_emb: jnp.ndarray, text_emb: jnp.ndarray, logit_scale: jnp.ndarray,
                     positives: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """CLIP's symmetric cross-entropy: logits = exp(min(t, log 100)) * I T^T over unit-norm rows,
    loss = (CE(logits, targets) + CE(logits^T, targets^T)) / 2, averaged over the batch.

    ``logit_scale`` is the log-scale t. Targets are the identity (pair i matches caption i) or, with ``positives``
    [B, B] (bool; e.g. same class), uniform over the positives of each row/column, so captions of the same class in a
    batch are not pushed apart. Embeddings are normalised here; passing normalised ones is harmless.
    """
    logits = logit_scale_value(logit_scale) * l2_normalize(image_emb) @ l2_normalize(text_emb).T
    if positives is None:
        positives = jnp.eye(logits.shape[0], dtype=bool)
    p = positives.astype(logits.dtype)
    image_to_text = -jnp.sum(p / jnp.sum(p, 1, keepdims=True) * jax.nn.log_softmax(logits, axis=1), axis=1)
    text_to_image = -jnp.sum(p / jnp.sum(p, 0, keepdims=True) * jax.nn.log_softmax(logits, axis=0), axis=0)
    return 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))


class ImageTower(nn.Module):
    """Conv stem, then per stage [conv 3x3 stride 2, GroupNorm, SiLU, conv 3x3, GroupNorm, SiLU], global mean pool,
    linear projection to ``embed_dim``."""

    channels: Sequence[int] = (32, 64, 128)
    embed_dim: int = 128
    num_groups: int = 8

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels[0], (3, 3), name="stem")(x)
        for i, ch in enumerate(self.channels):
            for j, stride in enumerate((2 if i > 0 else 1, 1)):
                h = nn.Conv(ch, (3, 3), strides=stride, name=f"conv_{i}_{j}")(h)
                h = nn.silu(nn.GroupNorm(min(self.num_groups, ch), name=f"norm_{i}_{j}")(h))
        return nn.Dense(self.embed_dim, name="proj")(jnp.mean(h, axis=(1, 2)))


class TextTower(nn.Module):
    """MLP on a frozen encoder's pooled text embedding: LayerNorm, Dense(hidden), GELU, Dense(embed_dim)."""

    hidden: int = 256
    embed_dim: int = 128

    @nn.compact
    def __call__(self, text_emb):
        h = nn.LayerNorm(name="norm")(text_emb)
        h = nn.gelu(nn.Dense(self.hidden, name="fc")(h))
        return nn.Dense(self.embed_dim, name="proj")(h)


class SmallCLIP(nn.Module):
    """Image and text towers into one unit-norm space of ``embed_dim``, plus the learned log-scale ``logit_scale``."""

    embed_dim: int = 128
    image_channels: Sequence[int] = (32, 64, 128)
    text_hidden: int = 256
    num_groups: int = 8

    def setup(self):
        self.image_tower = ImageTower(self.image_channels, self.embed_dim, self.num_groups)
        self.text_tower = TextTower(self.text_hidden, self.embed_dim)
        self.logit_scale = self.param("logit_scale", lambda _: jnp.asarray(LOGIT_SCALE_INIT, jnp.float32))

    def embed_images(self, images):
        """images [B, H, W, C] in [-1, 1] -> unit-norm [B, embed_dim]."""
        return l2_normalize(self.image_tower(images))

    def embed_texts(self, text_emb):
        """pooled frozen-encoder embeddings [B, D_text] -> unit-norm [B, embed_dim]."""
        return l2_normalize(self.text_tower(text_emb))

    def __call__(self, images, text_emb):
        return self.embed_images(images), self.embed_texts(text_emb), self.logit_scale


def init_clip(model: SmallCLIP, key: jax.Array, image_shape: Tuple[int, int, int], text_dim: int):
    """Parameters for images of ``image_shape`` (H, W, C) and pooled text embeddings of width ``text_dim``."""
    return model.init(key, jnp.zeros((1, *image_shape)), jnp.zeros((1, text_dim)))["params"]


def make_clip_loss(model: SmallCLIP, same_label_positives: bool = False) -> Callable:
    """LossFn ``loss_fn(params, batch, key, step) -> (loss, metrics)`` for the trainer: the symmetric contrastive loss
    on batch["image"] [B, H, W, C] in [-1, 1] and batch["text_emb"] [B, D_text]. With ``same_label_positives`` and a
    batch["label"], examples of the same class count as matches. Metrics: retrieval accuracy both ways (argmax is the
    own pair, or a same-class one when labels count) and the current scale exp(t)."""

    def loss_fn(params, batch, key, step=0):
        image_emb, text_emb, log_scale = model.apply({"params": params}, batch["image"], batch["text_emb"])
        n = image_emb.shape[0]
        positives = jnp.eye(n, dtype=bool)
        if same_label_positives and "label" in batch:
            positives = batch["label"][:, None] == batch["label"][None, :]
        loss = contrastive_loss(image_emb, text_emb, log_scale, positives)
        sim = image_emb @ text_emb.T
        i2t = jnp.mean(positives[jnp.arange(n), jnp.argmax(sim, axis=1)])
        t2i = jnp.mean(positives[jnp.argmax(sim, axis=0), jnp.arange(n)])
        return loss, {"accuracy_i2t": i2t, "accuracy_t2i": t2i, "logit_scale": logit_scale_value(log_scale)}

    return loss_fn


class DomainCLIP:
    """A trained :class:`SmallCLIP` with its frozen text encoder: ``embed_images(images)``, ``embed_texts(texts)``."""

    def __init__(self, model: SmallCLIP, params, text_encoder):
        self.model, self.params, self.text_encoder = model, params, text_encoder
        self._images = jax.jit(lambda p, x: model.apply({"params": p}, x, method=SmallCLIP.embed_images))
        self._texts = jax.jit(lambda p, e: model.apply({"params": p}, e, method=SmallCLIP.embed_texts))

    def embed_images(self, images) -> np.ndarray:
        """images [B, H, W, C] in [-1, 1] -> unit-norm [B, E]."""
        return np.asarray(self._images(self.params, check_images(images)))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> unit-norm [B, E] through the frozen encoder's pooled embedding and the text tower."""
        return np.asarray(self._texts(self.params, jnp.asarray(self.text_encoder.pooled(texts))))


def check_images(images) -> jnp.ndarray:
    """Float images [B, H, W, C] in [-1, 1] (a small tolerance), else a one-line ValueError."""
    images = jnp.asarray(images)
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be float [B, H, W, C] in [-1, 1], got {images.dtype} {images.shape}")
    lo, hi = float(jnp.min(images)), float(jnp.max(images))
    if lo < -1.01 or hi > 1.01:
        raise ValueError(f"images must be in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]")
    return images.astype(jnp.float32)


class PretrainedCLIP:
    """transformers' ``FlaxCLIPModel`` from a local Hugging Face folder (config.json, weights, CLIP tokenizer).

    Images in [-1, 1] are resized (bicubic) to the vision tower's size, grey ones repeated to RGB, and normalised with
    OpenAI's CLIP mean/std (the folder's preprocessor_config.json values if present). Texts are padded/truncated to
    the text tower's max_position_embeddings.
    """

    def __init__(self, path: str):
        import json

        import transformers  # heavy, and only for a pretrained CLIP

        path = os.path.abspath(os.fspath(path))
        check_model_folder(path, what="CLIP")
        with quiet_transformers():
            self.model = transformers.FlaxCLIPModel.from_pretrained(path, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.params = self.model.params
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        preprocessor = os.path.join(path, "preprocessor_config.json")
        if os.path.isfile(preprocessor):
            with open(preprocessor) as f:
                cfg = json.load(f)
            mean, std = cfg.get("image_mean", mean), cfg.get("image_std", std)
        self.mean, self.std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
        self._images = jax.jit(self._embed_images)
        self._texts = jax.jit(lambda p, ids, m: l2_normalize(self.model.get_text_features(ids, m, params=p)))

    def _embed_images(self, params, images):
        if images.shape[-1] == 1:
            images = jnp.repeat(images, 3, axis=-1)
        b = images.shape[0]
        x = jax.image.resize((images + 1.0) / 2.0, (b, self.image_size, self.image_size, 3), "bicubic")
        x = ((x - self.mean) / self.std).transpose(0, 3, 1, 2)  # HF Flax CLIP takes NCHW pixel_values
        return l2_normalize(self.model.get_image_features(x, params=params))

    def embed_images(self, images) -> np.ndarray:
        """images [B, H, W, C] (C = 1 or 3) in [-1, 1] -> unit-norm [B, E]."""
        return np.asarray(self._images(self.params, check_images(images)))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """texts -> unit-norm [B, E]."""
        out = self.tokenizer(list(texts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return np.asarray(self._texts(self.params, out["input_ids"].astype(np.int32),
                                      out["attention_mask"].astype(np.int32)))
