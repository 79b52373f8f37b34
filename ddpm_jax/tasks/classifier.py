"""Task ``classifier``: the small CNN whose feature space gives the offline Fréchet classifier distance (FCD)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.special

from ddpm_jax.models.build import classifier_from_config
from ddpm_jax.tasks.base import Run, Task, held_out_batches


def make_classifier_loss(model, label_smoothing: float = 0.0):
    """Softmax cross-entropy on the labels (with optional label smoothing); accuracy as an auxiliary metric."""

    def loss_fn(params, batch, key, step=0):
        out = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": key})
        labels = jax.nn.one_hot(batch["label"], model.num_classes)
        if label_smoothing:
            labels = optax.smooth_labels(labels, label_smoothing)
        loss = jnp.mean(optax.softmax_cross_entropy(out["logits"], labels))
        accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == batch["label"])
        return loss, {"accuracy": accuracy}

    return loss_fn


def evaluate_classifier(run: Run, params, split: str = "test", batch_size: int = 500) -> dict:
    """Accuracy and cross-entropy of a trained classifier on a held-out split."""
    apply = jax.jit(lambda p, x: run.model.apply({"params": p}, x, train=False)["logits"])
    batches, n = held_out_batches(run.config, split, batch_size)
    correct, nll = 0, 0.0
    for x, labels in batches:
        logits = np.asarray(apply(params, x), np.float64)
        logp = scipy.special.log_softmax(logits, axis=1)
        correct += int(np.sum(np.argmax(logits, 1) == labels))
        nll -= float(np.sum(logp[np.arange(len(labels)), labels]))
    return {"accuracy": correct / n, "loss": nll / n}


class ClassifierTask(Task):
    def build(self, config, split=None, source=None, text=None) -> Run:
        source = source if source is not None else self.load_source(config, split)
        model = classifier_from_config(config.model, source.num_classes)
        shape = (config.data.image_size, config.data.image_size, source.images.shape[-1])
        return Run(config, self, source, model, shape)

    def init_params(self, run, key):
        x = jnp.zeros((1,) + tuple(run.image_shape), jnp.float32)
        return run.model.init({"params": key}, x, train=False)["params"]

    def loss(self, run):
        return make_classifier_loss(run.model, run.config.training.label_smoothing)

    def final_eval(self, run, params):
        scores = evaluate_classifier(run, params)
        return scores, f"classifier on the test split: accuracy {scores['accuracy']:.4f}, loss {scores['loss']:.4f}"
