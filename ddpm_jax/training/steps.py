"""Pure training steps: ``train_step(state, batch) -> (state, metrics)``; what differs between models is the loss."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from ddpm_jax import diffusion
from ddpm_jax.training.state import TrainState, ema_update

LossFn = Callable[[Any, Dict[str, jnp.ndarray], jax.Array], Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]


def drop_labels(key: jax.Array, labels: jnp.ndarray, null_label: int, prob: float) -> jnp.ndarray:
    """Classifier-free guidance training: replace each label by the null label with probability ``prob``."""
    if prob <= 0.0:
        return labels
    return jnp.where(jax.random.bernoulli(key, prob, labels.shape), null_label, labels)


def make_diffusion_loss(model, schedule: diffusion.Schedule, prediction_type: str = "eps",
                        weighting: str = "none", cond_drop_prob: float = 0.0) -> LossFn:
    """L_simple for a U-Net denoiser; class labels (if the model takes them) are dropped with ``cond_drop_prob``."""
    diffusion.process.check_prediction_type(prediction_type)

    def loss_fn(params, batch, key):
        k_loss, k_drop, k_dropout = jax.random.split(key, 3)
        labels = None
        if model.num_classes:
            labels = drop_labels(k_drop, batch["label"], model.num_classes, cond_drop_prob)

        def denoise(x_t, t, y):
            return model.apply({"params": params}, x_t, t, y, train=True, rngs={"dropout": k_dropout})

        per_example = diffusion.diffusion_loss(denoise, schedule, batch["image"], k_loss, labels,
                                               prediction_type, weighting)
        return jnp.mean(per_example), {}

    return loss_fn


def make_classifier_loss(model, label_smoothing: float = 0.0) -> LossFn:
    """Softmax cross-entropy on the labels (with optional label smoothing); accuracy as an auxiliary metric."""

    def loss_fn(params, batch, key):
        out = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": key})
        labels = jax.nn.one_hot(batch["label"], model.num_classes)
        if label_smoothing:
            labels = optax.smooth_labels(labels, label_smoothing)
        loss = jnp.mean(optax.softmax_cross_entropy(out["logits"], labels))
        accuracy = jnp.mean(jnp.argmax(out["logits"], -1) == batch["label"])
        return loss, {"accuracy": accuracy}

    return loss_fn


def psnr(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2), per example."""
    mse = jnp.mean(jnp.square(x - y), axis=tuple(range(1, x.ndim)))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def make_autoencoder_loss(model, reconstruction: str = "l1", kl_weight: float = 1e-6) -> LossFn:
    """LDM's autoencoder objective without the adversarial term: reconstruction (L1 or L2, per element) plus
    kl_weight * KL(q(z|x) || N(0, I)) per element of x. A large kl_weight makes it a VAE to sample from its prior."""
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"autoencoder.reconstruction must be l1 or l2, got {reconstruction!r}")

    def loss_fn(params, batch, key):
        k_sample, k_dropout = jax.random.split(key)
        x = batch["image"]
        x_hat, posterior = model.apply({"params": params}, x, k_sample, sample_posterior=True, train=True,
                                       rngs={"dropout": k_dropout})
        err = jnp.abs(x_hat - x) if reconstruction == "l1" else jnp.square(x_hat - x)
        rec = jnp.mean(err)
        kl = jnp.mean(posterior.kl()) / (x.size // x.shape[0])
        return rec + kl_weight * kl, {"reconstruction": rec, "kl": kl, "psnr": jnp.mean(psnr(x_hat, x))}

    return loss_fn


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    ema_decay: float) -> Callable[[TrainState, Dict[str, jnp.ndarray]], Tuple[TrainState, Dict]]:
    """One optimizer step. The RNG of step k is fold_in(run key, k), so a resumed run draws the same numbers."""

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_update(state.ema_params, params, ema_decay))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step), **aux}
        return new_state, metrics

    return train_step
