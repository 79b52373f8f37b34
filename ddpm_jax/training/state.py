"""Train state: everything that decides the future of a run (params, EMA, optimizer state, step, RNG)."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jnp.ndarray  # raw uint32 key data, so the state is a plain array tree for Orbax

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)


def create_train_state(params: Any, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), rng=jax.random.key_data(key))


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
    """Polyak averaging: ema <- decay * ema + (1 - decay) * params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
