"""Properties of the diffusion layer that theory fixes: marginals, posterior, parameterizations, sampler identities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion as D

SCHED = D.make_schedule("linear", 1000)


def f64_linear_alpha_bar():
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))


def test_q_sample_marginal_mean_and_variance():
    x0 = jnp.full((20000, 2), 0.7)
    t = jnp.full((20000,), 300)
    xt = D.q_sample(SCHED, x0, t, jax.random.normal(jax.random.key(0), x0.shape))
    ab = f64_linear_alpha_bar()[300]
    np.testing.assert_allclose(np.mean(xt), np.sqrt(ab) * 0.7, atol=0.01)
    np.testing.assert_allclose(np.var(xt), 1 - ab, rtol=0.02)


@pytest.mark.parametrize("t,s", [(1, 0), (10, 9), (500, 499), (999, 998), (999, 979), (40, 0), (0, -1)])
def test_posterior_matches_float64_reference(t, s):
    ab = f64_linear_alpha_bar()
    ab_t, ab_s = ab[t], (ab[s] if s >= 0 else 1.0)
    beta = 1 - ab_t / ab_s
    rng = np.random.default_rng(0)
    x0, xt = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    mean_ref = np.sqrt(ab_s) * beta / (1 - ab_t) * x0 + np.sqrt(1 - beta) * (1 - ab_s) / (1 - ab_t) * xt
    var_ref = (1 - ab_s) / (1 - ab_t) * beta
    tb, sb = jnp.full((3,), t), jnp.full((3,), s)
    mean, var, var_large = D.posterior_mean_variance(SCHED, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), tb, sb)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var[:, 0], var_ref, rtol=1e-4, atol=1e-12)
    np.testing.assert_allclose(var_large[:, 0], beta, rtol=1e-4, atol=1e-12)


def test_betas_recovered_exactly_at_the_clean_end():
    np.testing.assert_allclose(SCHED.betas[:5], np.linspace(1e-4, 0.02, 1000)[:5], rtol=1e-5)


@pytest.mark.parametrize("pred", D.PREDICTION_TYPES)
def test_parameterization_round_trip(pred):
    k1, k2 = jax.random.split(jax.random.key(1))
    x0, eps = jax.random.normal(k1, (4, 5)), jax.random.normal(k2, (4, 5))
    t = jnp.array([0, 100, 600, 999])
    xt = D.q_sample(SCHED, x0, t, eps)
    target = D.target_for(SCHED, x0, t, eps, pred)
    x0_hat, eps_hat = D.prediction_to_x0_eps(SCHED, xt, t, target, pred)
    # x0 from eps at t = 999 divides by alpha = 0.006: tolerances follow float32 conditioning.
    np.testing.assert_allclose(x0_hat[:3], x0[:3], atol=1e-3)
    np.testing.assert_allclose(eps_hat[1:], eps[1:], atol=1e-3)


def test_v_target_is_alpha_eps_minus_sigma_x0():
    x0, eps, t = jnp.ones((1, 2)), 2 * jnp.ones((1, 2)), jnp.array([250])
    ab = f64_linear_alpha_bar()[250]
    np.testing.assert_allclose(D.v_target(SCHED, x0, t, eps), np.sqrt(ab) * 2 - np.sqrt(1 - ab), rtol=1e-5)


def test_ddim_eta1_matches_ancestral_variance_and_mean():
    t, s = jnp.array([700, 300]), jnp.array([650, 250])
    _, var, _ = D.posterior_mean_variance(SCHED, jnp.zeros((2, 1)), jnp.zeros((2, 1)), t, s)
    np.testing.assert_allclose(D.ddim_sigma(SCHED, t, s, 1.0) ** 2, var[:, 0], rtol=1e-5)
    k1, k2 = jax.random.split(jax.random.key(2))
    x0, eps = jax.random.normal(k1, (2, 6)), jax.random.normal(k2, (2, 6))
    xt = D.q_sample(SCHED, x0, t, eps)
    zero = jnp.zeros_like(xt)
    mean, _, _ = D.posterior_mean_variance(SCHED, x0, xt, t, s)
    np.testing.assert_allclose(D.ddim_step(SCHED, xt, t, s, x0, eps, zero, eta=1.0), mean, atol=1e-5)
    np.testing.assert_allclose(D.ddpm_step(SCHED, xt, t, s, x0, zero), mean, atol=1e-5)


def test_ddim_eta0_is_euler_step_of_probability_flow_ode():
    """In xbar = x / alpha and sigmabar = sigma / alpha the ODE is d xbar = eps d sigmabar (DDIM sec. 4.3)."""
    t, s = jnp.array([800]), jnp.array([600])
    x, eps = jax.random.normal(jax.random.key(3), (1, 8)), jax.random.normal(jax.random.key(4), (1, 8))
    x0 = D.eps_to_x0(SCHED, x, t, eps)
    ab = f64_linear_alpha_bar()
    a_t, a_s = np.sqrt(ab[800]), np.sqrt(ab[600])
    sb_t, sb_s = np.sqrt(1 - ab[800]) / a_t, np.sqrt(1 - ab[600]) / a_s
    euler = a_s * (np.asarray(x) / a_t + (sb_s - sb_t) * np.asarray(eps))
    np.testing.assert_allclose(D.ddim_step(SCHED, x, t, s, x0, eps, jnp.zeros_like(x)), euler, rtol=1e-4, atol=1e-5)


def model(x, t, cond):
    return 0.3 * x + 0.001 * t.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("sampler", sorted(D.SAMPLERS))
def test_samplers_deterministic_given_key_and_jittable(sampler):
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    run = jax.jit(lambda k: D.sample(model, SCHED, x_T, k, sampler=sampler, num_steps=10))
    a, b = run(jax.random.key(5)), run(jax.random.key(5))
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))


def test_ddim_eta0_ignores_the_key_and_ddpm_does_not():
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    d1 = D.ddim_sample(model, SCHED, x_T, jax.random.key(1), num_steps=10)
    d2 = D.ddim_sample(model, SCHED, x_T, jax.random.key(2), num_steps=10)
    np.testing.assert_array_equal(d1, d2)
    p1 = D.ddpm_sample(model, SCHED, x_T, jax.random.key(1), num_steps=10)
    p2 = D.ddpm_sample(model, SCHED, x_T, jax.random.key(2), num_steps=10)
    assert np.abs(np.asarray(p1) - np.asarray(p2)).max() > 1e-3


def test_samplers_recover_a_point_mass_with_the_exact_denoiser():
    """If the data is the single point c, the optimal eps-predictor is (x - alpha c) / sigma; all samplers return c."""
    c = 0.42

    def exact(x, t, cond):
        return D.x0_to_eps(SCHED, x, t, jnp.full_like(x, c))

    x_T = jax.random.normal(jax.random.key(0), (2, 3, 3, 1))
    for name in D.SAMPLERS:
        out = D.sample(exact, SCHED, x_T, jax.random.key(1), sampler=name, num_steps=20)
        np.testing.assert_allclose(out, c, atol=1e-4, err_msg=name)


def test_classifier_free_guidance_interpolates_between_cond_and_uncond():
    def den(x, t, y):
        return x + y.astype(jnp.float32).reshape(-1, 1)

    x, t, y = jnp.zeros((3, 1)), jnp.zeros((3,), jnp.int32), jnp.array([1, 2, 3])
    null = jnp.array(10)
    np.testing.assert_allclose(D.classifier_free_guidance(den, 1.0, null)(x, t, y), den(x, t, y))
    np.testing.assert_allclose(D.classifier_free_guidance(den, 0.0, null)(x, t, y), 10.0)
    np.testing.assert_allclose(D.classifier_free_guidance(den, 3.0, null)(x, t, y)[:, 0], 10 + 3 * (np.array([1, 2, 3]) - 10))


def test_dynamic_threshold_matches_numpy_reference():
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)) * np.array([0.5, 2.0, 5.0]).reshape(3, 1, 1, 1)
    s = np.maximum(np.quantile(np.abs(x.reshape(3, -1)), 0.9, axis=1), 1.0).reshape(3, 1, 1, 1)
    np.testing.assert_allclose(D.dynamic_threshold(jnp.asarray(x, jnp.float32), 0.9), np.clip(x, -s, s) / s, rtol=1e-5)


def test_min_snr_weight_caps_low_noise_timesteps():
    t = jnp.array([0, 999])
    w = D.loss_weight(SCHED, t, "min_snr", "eps", 5.0)
    snr0 = f64_linear_alpha_bar()[0] / (1 - f64_linear_alpha_bar()[0])
    np.testing.assert_allclose(w, [5.0 / snr0, 1.0], rtol=1e-4)


def test_diffusion_loss_is_zero_for_the_exact_target():
    x0 = jax.random.normal(jax.random.key(0), (4, 2, 2, 1))
    eps = jax.random.normal(jax.random.key(1), x0.shape)
    loss = D.diffusion_loss(lambda x, t, c: eps, SCHED, x0, jax.random.key(2), noise=eps)
    np.testing.assert_allclose(loss, 0.0, atol=1e-12)
    loss_wrong = D.diffusion_loss(lambda x, t, c: -eps, SCHED, x0, jax.random.key(2), noise=eps)
    np.testing.assert_allclose(loss_wrong, 4 * np.mean(np.asarray(eps) ** 2, axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("spacing,expected", [("leading", [750, 500, 250, 0]), ("trailing", [999, 749, 499, 249]),
                                              ("linspace", [999, 666, 333, 0])])
def test_respace_timesteps(spacing, expected):
    np.testing.assert_array_equal(D.respace_timesteps(1000, 4, spacing), expected)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        D.make_schedule("quadratic")
    with pytest.raises(ValueError, match="unknown sampler"):
        D.sample(model, SCHED, jnp.zeros((1, 2, 2, 1)), jax.random.key(0), sampler="euler")
    with pytest.raises(ValueError, match="num_steps must be in"):
        D.respace_timesteps(1000, 0)
    with pytest.raises(ValueError, match="prediction_type"):
        D.target_for(SCHED, jnp.zeros(1), jnp.zeros(1, jnp.int32), jnp.zeros(1), "score")


@pytest.mark.parametrize("sampler", ["ddpm", "dpm_solver_pp_2m"])
def test_final_alpha_cumprod_is_ddim_only(sampler):
    x_T = jnp.zeros((1, 2, 2, 1))
    with pytest.raises(ValueError, match="final_alpha_cumprod is a DDIM-only option"):
        D.sample(model, SCHED, x_T, jax.random.key(0), sampler=sampler, num_steps=2, final_alpha_cumprod="first")
    none = D.sample(model, SCHED, x_T, jax.random.key(0), sampler=sampler, num_steps=2, final_alpha_cumprod=None)
    np.testing.assert_array_equal(none, D.sample(model, SCHED, x_T, jax.random.key(0), sampler=sampler, num_steps=2))


def test_ddim_final_alpha_cumprod_values():
    """None and 1.0 are the clean end; "first" is alpha-bar_0 (the last DDIM step from t = 0 is then the identity)."""
    x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    run = lambda **kw: np.asarray(D.ddim_sample(model, SCHED, x_T, jax.random.key(1), num_steps=10, **kw))
    np.testing.assert_allclose(run(final_alpha_cumprod=1.0), run(), rtol=1e-6, atol=1e-6)
    # the number is alpha-bar_0 rounded through exp/log (an ulp below abar at t = 0): sigma is clamped, not NaN
    first, number = run(final_alpha_cumprod="first"), run(final_alpha_cumprod=float(SCHED.alpha_bar(0)))
    np.testing.assert_allclose(first, number, rtol=1e-6, atol=1e-6)
    # leading spacing ends at t = 0, and the step from t = 0 to alpha-bar_0 is the identity
    _, trajectory = D.ddim_sample(model, SCHED, x_T, jax.random.key(1), num_steps=10, final_alpha_cumprod="first",
                                  return_trajectory=True)
    np.testing.assert_allclose(first, trajectory[-2], rtol=1e-5, atol=1e-5)
    t, s = jnp.array([500, 0]), jnp.array([-1, -1])
    assert np.all(np.asarray(D.ddim_sigma(SCHED, t, s, 1.0)) == 0)
    sigma_first = np.asarray(D.ddim_sigma(SCHED, t, s, 1.0, final_alpha_cumprod="first"))
    assert sigma_first[0] > 0 and sigma_first[1] == 0
    for bad in (0.0, 1.5, "last"):
        with pytest.raises(ValueError, match="final_alpha_cumprod must be"):
            D.ddim_sample(model, SCHED, x_T, jax.random.key(1), num_steps=10, final_alpha_cumprod=bad)
