"""The pure training step ``train_step(state, batch) -> (state, metrics)`` around a task's loss
(:meth:`ddpm_jax.tasks.base.Task.loss`); everything else about training is shared."""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from ddpm_jax.training.state import TrainState, ema_update

# loss_fn(params, batch, key, step) -> (scalar loss, auxiliary metrics); step is the optimizer step (an int array),
# for losses that switch a term on at some step (the autoencoder's adversarial start).
LossFn = Callable[[Any, Dict[str, jnp.ndarray], jax.Array, jnp.ndarray], Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, lr_schedule: optax.Schedule,
                    ema_decay: float, grad_accum_steps: int = 1, step_transition: Optional[Callable] = None,
                    trainable: Optional[Callable] = None
                    ) -> Callable[[TrainState, Dict[str, jnp.ndarray]], Tuple[TrainState, Dict]]:
    """One optimizer step. The RNG of step k is fold_in(run key, k), so a resumed run draws the same numbers.

    ``step_transition(params, ema_params, step) -> params`` (a task's, optional) runs first, a pure function of the
    state; ``trainable(params)`` (optional) is the task's tree of bools: the EMA of a frozen (False) leaf is the leaf
    itself (``tx`` must already leave frozen leaves unchanged: :func:`ddpm_jax.training.optim.freeze`).

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
        params = state.params
        if step_transition is not None:
            params = step_transition(params, state.ema_params, state.step)
        grad_fn = value_and_grad if grad_accum_steps == 1 else accumulated
        (loss, aux), grads = grad_fn(params, batch, key, state.step)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = ema_update(state.ema_params, params, ema_decay)
        if trainable is not None:
            ema = jax.tree.map(lambda m, e, p: e if m else p, trainable(params), ema, params)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr_schedule(state.step), **aux}
        return new_state, metrics

    return train_step
