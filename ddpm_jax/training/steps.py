"""Pure training steps: ``train_step(state, batch) -> (state, metrics)``; what differs between models is the loss."""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax

from ddpm_jax import diffusion
from ddpm_jax.training.state import TrainState, ema_update

# loss_fn(params, batch, key, step) -> (scalar loss, auxiliary metrics); step is the optimizer step (an int array),
# for losses that switch a term on at some step (the autoencoder's adversarial start).
LossFn = Callable[[Any, Dict[str, jnp.ndarray], jax.Array, jnp.ndarray], Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]


def drop_labels(key: jax.Array, labels: jnp.ndarray, null_label: int, prob: float) -> jnp.ndarray:
    """Classifier-free guidance training: replace each label by the null label with probability ``prob``."""
    if prob <= 0.0:
        return labels
    return jnp.where(jax.random.bernoulli(key, prob, labels.shape), null_label, labels)


def make_diffusion_loss(model, schedule: diffusion.Schedule, prediction_type: str = "eps",
                        weighting: str = "none", cond_drop_prob: float = 0.0) -> LossFn:
    """L_simple for a U-Net denoiser; class labels (if the model takes them) are dropped with ``cond_drop_prob``."""
    diffusion.process.check_prediction_type(prediction_type)

    def loss_fn(params, batch, key, step=0):
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

    def loss_fn(params, batch, key, step=0):
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


def autoencoder_params(params):
    """The autoencoder's parameters of a train state's params (without the discriminator, when one is trained)."""
    return params["autoencoder"] if isinstance(params, dict) and "discriminator" in params else params


def make_autoencoder_loss(model, reconstruction: str = "l1", kl_weight: float = 1e-6, discriminator=None,
                          disc_weight: float = 0.5, disc_start: int = 0) -> LossFn:
    """LDM's autoencoder objective: reconstruction (L1 or L2, per element) + kl_weight * KL(q(z|x) || N(0, I)) per
    element of x; a large kl_weight makes it a VAE to sample from its prior.

    With a ``discriminator`` (a PatchDiscriminator) params are {"autoencoder", "discriminator"} and, from step
    ``disc_start`` on, the autoencoder adds disc_weight * -E[D(x_hat)] while the discriminator minimises the hinge loss
    on (x, stop_gradient(x_hat)). The two terms touch disjoint parameters (each sees the other through
    stop_gradient), so one optimizer step on their sum is one step for each player. The weight is fixed; taming's
    adaptive weight (a ratio of last-layer gradient norms) is not implemented.
    """
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"autoencoder.reconstruction must be l1 or l2, got {reconstruction!r}")
    from ddpm_jax.models.discriminator import generator_loss, hinge_d_loss

    def loss_fn(params, batch, key, step=0):
        k_sample, k_dropout = jax.random.split(key)
        x = batch["image"]
        x_hat, posterior = model.apply({"params": autoencoder_params(params)}, x, k_sample, sample_posterior=True,
                                       train=True, rngs={"dropout": k_dropout})
        err = jnp.abs(x_hat - x) if reconstruction == "l1" else jnp.square(x_hat - x)
        rec = jnp.mean(err)
        kl = jnp.mean(posterior.kl()) / (x.size // x.shape[0])
        loss = rec + kl_weight * kl
        aux = {"reconstruction": rec, "kl": kl, "psnr": jnp.mean(psnr(x_hat, x))}
        if discriminator is not None:
            d_params = params["discriminator"]
            on = (jnp.asarray(step) >= disc_start).astype(jnp.float32)
            g_loss = generator_loss(discriminator.apply({"params": jax.lax.stop_gradient(d_params)}, x_hat))
            logits_real = discriminator.apply({"params": d_params}, x)
            logits_fake = discriminator.apply({"params": d_params}, jax.lax.stop_gradient(x_hat))
            d_loss = hinge_d_loss(logits_real, logits_fake)
            loss = loss + on * (disc_weight * g_loss + d_loss)
            aux.update(g_loss=g_loss, d_loss=d_loss, logits_real=jnp.mean(logits_real),
                       logits_fake=jnp.mean(logits_fake))
        return loss, aux

    return loss_fn


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    ema_decay: float, grad_accum_steps: int = 1
                    ) -> Callable[[TrainState, Dict[str, jnp.ndarray]], Tuple[TrainState, Dict]]:
    """One optimizer step. The RNG of step k is fold_in(run key, k), so a resumed run draws the same numbers.

    With ``grad_accum_steps`` = m > 1 the batch is cut into m micro-batches (example i goes to micro-batch i mod m,
    so each stays spread over the devices that hold the batch), gradients are averaged over a ``lax.scan``, and
    one update is applied: the same step as on the whole batch for a loss that is a mean over examples, with
    activation memory of one micro-batch. Micro-batch j draws its randomness from fold_in(step key, j).
    """
    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

    def accumulated(params, batch, key, step):
        def split(x):
            if x.shape[0] % grad_accum_steps:
                raise ValueError(f"batch of {x.shape[0]} does not split into {grad_accum_steps} micro-batches")
            return jnp.swapaxes(x.reshape((x.shape[0] // grad_accum_steps, grad_accum_steps) + x.shape[1:]), 0, 1)

        def body(carry, micro):
            j, mb = micro
            (loss, aux), grads = value_and_grad(params, mb, jax.random.fold_in(key, j), step)
            return jax.tree.map(jnp.add, carry, grads), (loss, aux)

        zeros = jax.tree.map(jnp.zeros_like, params)
        micro = (jnp.arange(grad_accum_steps), jax.tree.map(split, batch))
        grads, (losses, aux) = jax.lax.scan(body, zeros, micro)
        mean = lambda x: jnp.mean(x, axis=0)
        return (mean(losses), jax.tree.map(mean, aux)), jax.tree.map(lambda g: g / grad_accum_steps, grads)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(state.key, state.step)
        grad_fn = value_and_grad if grad_accum_steps == 1 else accumulated
        (loss, aux), grads = grad_fn(state.params, batch, key, state.step)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_update(state.ema_params, params, ema_decay))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step), **aux}
        return new_state, metrics

    return train_step
