"""The train step's pieces against their formulas: Polyak EMA and the step's RNG/step bookkeeping."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm_jax.training.state import create_train_state, ema_update
from ddpm_jax.training.steps import make_train_step


def test_ema_update_is_decay_times_ema_plus_one_minus_decay_times_params():
    ema = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(4.0)}
    params = {"w": jnp.array([3.0, -2.0]), "b": jnp.array(0.0)}
    out = ema_update(ema, params, 0.9)
    np.testing.assert_allclose(out["w"], [0.9 * 1.0 + 0.1 * 3.0, 0.9 * 2.0 + 0.1 * -2.0], rtol=1e-6)
    np.testing.assert_allclose(out["b"], 3.6, rtol=1e-6)
    np.testing.assert_allclose(ema_update(ema, params, 0.0)["w"], params["w"])  # decay 0: the params themselves


def test_train_step_applies_the_optimizer_then_the_ema_of_the_new_params():
    """One SGD step on L = 0.5 ||w||^2 (gradient w): w' = w - lr w, ema' = d ema + (1 - d) w', step + 1."""
    w0 = jnp.array([1.0, -2.0])
    tx = optax.sgd(0.5)
    state = create_train_state({"w": w0}, tx, jax.random.key(0))
    loss_fn = lambda p, batch, key, step: (0.5 * jnp.sum(p["w"] ** 2), {})
    new, metrics = make_train_step(loss_fn, tx, lambda s: 0.5, 0.75)(state, {"x": jnp.zeros(1)})
    np.testing.assert_allclose(new.params["w"], 0.5 * w0, rtol=1e-6)
    np.testing.assert_allclose(new.ema_params["w"], 0.75 * w0 + 0.25 * 0.5 * w0, rtol=1e-6)
    assert int(new.step) == 1
    np.testing.assert_allclose(metrics["loss"], 0.5 * 5.0, rtol=1e-6)
    np.testing.assert_allclose(metrics["grad_norm"], np.sqrt(5.0), rtol=1e-6)
