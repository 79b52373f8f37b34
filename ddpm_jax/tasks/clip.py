"""Task ``clip``: a small CLIP trained contrastively on the dataset's captions (through the frozen text encoder's
pooled embeddings, the Text wrapper with ``text_fields = "pooled"``), the domain's CLIP score."""
from __future__ import annotations

import numpy as np

from ddpm_jax.data import load_source, resize_nearest, to_model_range
from ddpm_jax.evaluation.clip_score import clip_score
from ddpm_jax.models.clip import DomainCLIP, SmallCLIP, init_clip, make_clip_loss
from ddpm_jax.tasks.base import Run, Task


def clip_from_config(clip_config) -> SmallCLIP:
    """The small CLIP of ``config.clip``."""
    return SmallCLIP(embed_dim=clip_config.embed_dim, image_channels=tuple(clip_config.image_channels),
                     text_hidden=clip_config.text_hidden, num_groups=clip_config.num_groups)


def evaluate_clip(run: Run, params, split: str = "test", max_examples: int = 2000) -> dict:
    """A trained CLIP on held-out images: zero-shot class accuracy (argmax over the class prompts) and CLIP score
    against the true class's prompt; for a dataset without labels, CLIP score of the training pairs."""
    clip = DomainCLIP(run.model, params, run.text.encoder)
    size = run.config.data.image_size
    if run.source.labels is None:
        n = min(len(run.source), max_examples)
        images = to_model_range(resize_nearest(run.source.images[:n], size))
        image_emb = np.concatenate([clip.embed_images(images[i:i + 500]) for i in range(0, n, 500)])
        text_emb = clip.embed_texts(list(run.text.captions[:n]))
        return {"zero_shot_accuracy": float("nan"), "clip_score": clip_score(image_emb, text_emb)}
    source = load_source(run.config.data.name, split, run.config.data.data_dir or None)
    n = min(len(source), max_examples)
    images = to_model_range(resize_nearest(source.images[:n], size))
    image_emb = np.concatenate([clip.embed_images(images[i:i + 500]) for i in range(0, n, 500)])
    class_emb = clip.embed_texts(list(run.text.prompts))
    labels = source.labels[:n]
    accuracy = float(np.mean(np.argmax(image_emb @ class_emb.T, axis=1) == labels))
    return {"zero_shot_accuracy": accuracy, "clip_score": clip_score(image_emb, class_emb[labels])}


class ClipTask(Task):
    text_fields = "pooled"

    def build(self, config, split=None, source=None, text=None) -> Run:
        if text is None:
            raise ValueError("task clip needs captions: register it as Text(ClipTask())")
        source = source if source is not None else self.load_source(config, split)
        shape = (config.data.image_size, config.data.image_size, source.images.shape[-1])
        return Run(config, self, source, clip_from_config(config.clip), shape, text=text)

    def init_params(self, run, key):
        return init_clip(run.model, key, run.image_shape, run.text.encoder.dim)

    def loss(self, run):
        return make_clip_loss(run.model, run.config.clip.same_label_positives)

    def final_eval(self, run, params):
        scores = evaluate_clip(run, params)
        return scores, (f"CLIP on the test split: zero-shot class accuracy {scores['zero_shot_accuracy']:.4f}, "
                        f"CLIP score {scores['clip_score']:.2f} (class prompts)")
