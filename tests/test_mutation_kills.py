"""Tests added by the mutation pass of issue 16 (experiments/results/mutation_pass.md): each one kills a one-line
mutation of ddpm_jax/diffusion, training/steps.py or evaluation that the existing tests let through. Every check is
against a formula or a float64 numpy reference, not against the code's own output."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm_jax import diffusion as D
from ddpm_jax.evaluation.bootstrap import bootstrap, percentile_interval, separated
from ddpm_jax.evaluation.fid import sqrtm_psd
from ddpm_jax.training.state import create_train_state
from ddpm_jax.training.steps import make_train_step

SCHED = D.make_schedule("linear", 1000)


# ------------------------------------------------------------------------------------------------- schedules


def test_linear_schedule_is_rescaled_for_other_timestep_counts():
    """Improved DDPM / guided-diffusion get_named_beta_schedule("linear", T): betas linspace(1e-4, 0.02) * 1000 / T."""
    for T in (100, 250):
        betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
        ref = np.cumprod(1.0 - betas)
        np.testing.assert_allclose(D.make_schedule("linear", T).alphas_cumprod, ref, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------ loss


def test_min_snr_weights_of_v_and_x0_targets():
    """Hang et al. 2023: min(SNR, g) / (SNR + 1) for v, min(SNR, g) for x0 (eps: min(SNR, g) / SNR)."""
    ab = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    t = np.array([0, 100, 400, 999])
    snr = ab[t] / (1 - ab[t])
    clipped = np.minimum(snr, 5.0)
    tj = jnp.asarray(t)
    np.testing.assert_allclose(D.loss_weight(SCHED, tj, "min_snr", "v", 5.0), clipped / (snr + 1), rtol=2e-4)
    np.testing.assert_allclose(D.loss_weight(SCHED, tj, "min_snr", "x0", 5.0), clipped, rtol=2e-4)
    np.testing.assert_allclose(D.loss_weight(SCHED, tj, "min_snr", "eps", 5.0), clipped / snr, rtol=2e-4)


def test_min_snr_weight_reaches_the_v_loss():
    """diffusion_loss multiplies the squared error by the weight of its own prediction type."""
    x0 = jnp.ones((2, 3))
    t = jnp.array([10, 900])
    loss = D.diffusion_loss(lambda x, tt, c: jnp.zeros_like(x), SCHED, x0, jax.random.key(0), prediction_type="v",
                            weighting="min_snr", t=t, noise=jnp.zeros_like(x0))
    ab = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[[10, 900]]
    snr = ab / (1 - ab)
    v = -np.sqrt(1 - ab)  # v = alpha * 0 - sigma * 1
    np.testing.assert_allclose(loss, np.minimum(snr, 5.0) / (snr + 1) * v**2, rtol=2e-4)


def test_sample_timesteps_covers_every_timestep_including_zero():
    t = np.asarray(D.sample_timesteps(jax.random.key(0), 4000, 4))
    assert t.min() == 0 and t.max() == 3
    np.testing.assert_allclose(np.bincount(t, minlength=4) / 4000, 0.25, atol=0.03)


# -------------------------------------------------------------------------------------------------- samplers


def test_x0_clipping_transform_clips_and_reaches_the_sampler():
    x = jnp.array([[-3.0, -0.5, 0.2, 2.5]])
    np.testing.assert_allclose(D.make_x0_transform(clip_x0=1.0)(x), [[-1.0, -0.5, 0.2, 1.0]])
    # a model that predicts x0 = 5 everywhere: with clipping DDIM ends on x0 = 1 (final alpha-bar 1), without on 5
    far = lambda x, t, c: jnp.full_like(x, 5.0)
    x_T = jnp.zeros((2, 3))
    out = D.ddim_sample(far, SCHED, x_T, jax.random.key(0), num_steps=5, prediction_type="x0",
                        x0_transform=D.make_x0_transform(clip_x0=1.0))
    np.testing.assert_allclose(out, 1.0, atol=1e-5)


def test_sample_loop_gives_each_step_its_own_key_fold_in_of_the_step_index():
    """Step k draws from fold_in(key, k): the ancestral noise of different steps is independent, not repeated."""
    key = jax.random.key(3)
    timesteps = np.array([30, 20, 10, 0])

    def step(x, t, s, x0, eps, k, carry, index):
        return jax.random.normal(k, x.shape), carry

    _, traj = D.sample_loop(lambda x, t, c: jnp.zeros_like(x), SCHED, jnp.zeros((1, 3)), timesteps, step, key,
                            return_trajectory=True)
    expected = np.stack([jax.random.normal(jax.random.fold_in(key, k), (1, 3)) for k in range(4)])
    np.testing.assert_allclose(traj, expected, rtol=1e-6)
    assert not np.allclose(traj[0], traj[1])


# ---------------------------------------------------------------------------------------------- train step


def _key_loss(params, batch, key, step):
    """Loss 0.5 ||w||^2 per example (mean over the batch); aux reports a draw from the key it was given."""
    loss = 0.5 * jnp.mean(jnp.sum((params["w"][None] * batch["x"]) ** 2, axis=1))
    return loss, {"draw": jax.random.uniform(key)}


def test_train_step_key_is_fold_in_of_the_run_key_and_the_step():
    tx = optax.sgd(0.1)
    run_key = jax.random.key(7)
    state = create_train_state({"w": jnp.array([1.0, 2.0])}, tx, run_key)
    step = make_train_step(_key_loss, tx, lambda s: 0.1, 0.9)
    batch = {"x": jnp.ones((4, 2))}
    draws = []
    for k in range(3):
        state, metrics = step(state, batch)
        draws.append(float(metrics["draw"]))
    expected = [float(jax.random.uniform(jax.random.fold_in(run_key, k))) for k in range(3)]
    np.testing.assert_allclose(draws, expected, rtol=1e-6)


def test_accumulated_micro_batches_fold_the_micro_batch_index_into_the_step_key():
    tx = optax.sgd(0.1)
    run_key = jax.random.key(7)
    state = create_train_state({"w": jnp.array([1.0, 2.0])}, tx, run_key)
    _, metrics = make_train_step(_key_loss, tx, lambda s: 0.1, 0.9, grad_accum_steps=2)(state, {"x": jnp.ones((4, 2))})
    step_key = jax.random.fold_in(run_key, 0)
    expected = np.mean([float(jax.random.uniform(jax.random.fold_in(step_key, j))) for j in range(2)])
    np.testing.assert_allclose(float(metrics["draw"]), expected, rtol=1e-6)


def test_accumulated_gradient_is_the_mean_over_micro_batches():
    """SGD (scale-sensitive, unlike Adam) on a per-example-mean loss: m micro-batches give the whole-batch step."""
    tx = optax.sgd(0.1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 2)), jnp.float32)
    w0 = jnp.array([1.0, -2.0])
    outs = {}
    for m in (1, 4):
        state = create_train_state({"w": w0}, tx, jax.random.key(0))
        outs[m] = make_train_step(_key_loss, tx, lambda s: 0.1, 0.9, grad_accum_steps=m)(state, {"x": x})
    grad = np.asarray(w0) * np.mean(np.asarray(x, np.float64) ** 2, axis=0)  # d/dw 0.5 mean_i sum (w x_i)^2
    for m, (new, metrics) in outs.items():
        np.testing.assert_allclose(new.params["w"], np.asarray(w0) - 0.1 * grad, rtol=1e-5, err_msg=f"m={m}")
        np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-5, err_msg=f"m={m}")


# --------------------------------------------------------------------------------------------------- FID


@pytest.mark.parametrize("seed", [0, 1])
def test_sqrtm_psd_of_a_rank_deficient_covariance_keeps_its_rank_and_null_space(seed):
    """The PSD root of a rank-5 64x64 matrix has rank 5 and maps the null space to 0: the rounding-noise
    eigenvalues (~1e-16 of the largest) are zeroed, not square-rooted into ~1e-8 components (N < dim in FID)."""
    a = np.random.default_rng(seed).standard_normal((64, 5))
    null = np.linalg.svd(a)[0][:, 5:]
    root = sqrtm_psd(a @ a.T / 5)
    assert np.abs(root @ null).max() < 1e-12
    assert np.linalg.matrix_rank(root) == 5
    np.testing.assert_allclose(root @ root, a @ a.T / 5, atol=1e-12)


# ----------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_every_index_uniformly():
    """Each replicate is num draws from range(num) with replacement: every index, the last one too, appears."""
    seen = []

    def stat(idx):
        assert len(idx) == 5
        seen.append(np.asarray(idx))
        return float(np.mean(idx))

    bootstrap(stat, 5, num_boot=400, seed=0)
    counts = np.bincount(np.concatenate(seen), minlength=5)
    assert len(counts) == 5
    np.testing.assert_allclose(counts / counts.sum(), 0.2, atol=0.02)


def test_percentile_interval_is_the_central_level_interval():
    """level 0.95 cuts 2.5% off each tail (not 5%): on a uniform grid of [0, 1] the interval is (0.025, 0.975)."""
    grid = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(percentile_interval(grid), (0.025, 0.975), atol=1e-12)
    np.testing.assert_allclose(percentile_interval(grid, level=0.9), (0.05, 0.95), atol=1e-12)


def test_separated_is_symmetric():
    low, high, mid = (0.0, 1.0), (2.0, 3.0), (0.5, 2.5)
    assert separated(low, high) and separated(high, low)
    assert not separated(low, mid) and not separated(mid, low)
