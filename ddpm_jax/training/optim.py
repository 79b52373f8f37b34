"""Optimizer from ``config.optim``: AdamW with linear warmup (then constant or cosine), global-norm clipping."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(optim_config, num_steps: int) -> optax.Schedule:
    warmup = optim_config.warmup_steps
    peak = optim_config.lr
    decay = optim_config.decay
    if decay == "constant":
        after = optax.constant_schedule(peak)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(peak, max(num_steps - warmup, 1))
    else:
        raise ValueError(f"unknown optim.decay {decay!r}; use constant or cosine")
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def make_optimizer(optim_config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(optim_config, num_steps)
    chain = []
    if optim_config.grad_clip:
        chain.append(optax.clip_by_global_norm(optim_config.grad_clip))
    chain.append(optax.adamw(schedule, b1=optim_config.b1, b2=optim_config.b2,
                             eps=optim_config.eps, weight_decay=optim_config.weight_decay))
    return optax.chain(*chain), schedule


def freeze(tx: optax.GradientTransformation, trainable) -> optax.GradientTransformation:
    """``tx`` on the leaves ``trainable(params)`` marks True; the others get a zero update and no optimizer state
    (gradient clipping and weight decay see the trained leaves only)."""
    labels = lambda params: jax.tree.map(lambda m: "trained" if m else "frozen", trainable(params))
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
