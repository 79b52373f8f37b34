"""Our diffusion layer against diffusers' schedulers (golden files made by tests/golden/make_scheduler_golden.py)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion as D

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "schedulers_diffusers.npz"))
FINAL_ALPHA = np.load(os.path.join(os.path.dirname(__file__), "golden", "ddim_final_alpha_diffusers.npz"))
PRED = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def nhwc(a):
    return jnp.asarray(np.moveaxis(a, -3, -1))


def analytic_eps(x, t, cond=None):
    """jnp twin of make_scheduler_golden.analytic_eps."""
    t = t.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return 0.5 * jnp.tanh(x) + 0.1 * jnp.cos(x + t / 100.0)


def assert_close(ours, ref, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(ours), np.moveaxis(ref, -3, -1) if ref.ndim >= 3 else ref, rtol=rtol, atol=atol)


@pytest.mark.parametrize("golden", [GOLDEN, FINAL_ALPHA])
def test_golden_file_names_reference_versions(golden):
    assert str(golden["meta_diffusers_version"]) and str(golden["meta_torch_version"])


@pytest.mark.parametrize("name", ["linear", "cosine", "scaled_linear"])
def test_schedule_alphas_cumprod_match_diffusers(name):
    sched = D.make_schedule(name, 1000)
    np.testing.assert_allclose(np.asarray(sched.alphas_cumprod), GOLDEN[f"alphas_cumprod_{name}"], rtol=2e-5)
    np.testing.assert_allclose(np.asarray(sched.betas), GOLDEN[f"betas_{name}"], rtol=2e-4, atol=1e-7)


def test_q_sample_matches_diffusers_add_noise():
    sched = D.make_schedule("linear", 1000)
    t = jnp.asarray(GOLDEN["add_noise_t"])
    x0, noise = nhwc(GOLDEN["add_noise_x0"]), nhwc(GOLDEN["add_noise_noise"])
    assert_close(D.q_sample(sched, x0, t, noise), GOLDEN["add_noise_out"])
    assert_close(D.v_target(sched, x0, t, noise), GOLDEN["velocity_out"])


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_ddpm_step_matches_diffusers(variance, pred):
    sched = D.make_schedule("linear", 1000)
    key = f"ddpm_{variance}_{pred}"
    for i, t in enumerate(GOLDEN[f"{key}_t"]):
        x, model = nhwc(GOLDEN[f"{key}_x"][i]), nhwc(GOLDEN[f"{key}_model"][i])
        tb = jnp.full((x.shape[0],), t)
        x0, _ = D.prediction_to_x0_eps(sched, x, tb, model, PRED[pred])
        prev = D.ddpm_step(sched, x, tb, tb - 1, x0, nhwc(GOLDEN[f"{key}_noise"][i]), variance)
        # diffusers computes 1 - abar_t in float32 with cancellation: at t = 1 it is 2.3e-4 off a float64 reference
        # (ours: 3e-7, see test_diffusion.py), so the tolerance here is 3e-4.
        assert_close(prev, GOLDEN[f"{key}_prev"][i], rtol=1e-4, atol=3e-4)


def stored_noise_step(sched, noise, eta):
    def step(x, t, s, x0, eps, key, carry, index):
        return D.ddim_step(sched, x, t, s, x0, eps, noise[index], eta), carry

    return step


@pytest.mark.parametrize("case,eta,threshold", [("ddim_eta0", 0.0, False), ("ddim_eta1", 1.0, False),
                                                 ("ddim_eta0_thresh", 0.0, True)])
def test_ddim_50_step_loop_matches_diffusers(case, eta, threshold):
    sched = D.make_schedule("linear", 1000)
    timesteps = D.respace_timesteps(1000, 50, "leading")
    np.testing.assert_array_equal(timesteps, GOLDEN[f"{case}_timesteps"])
    noise = nhwc(GOLDEN[f"{case}_noise"])
    transform = D.make_x0_transform(dynamic_threshold_percentile=0.995, dynamic_threshold_max=2.0) if threshold else None
    x = jax.jit(lambda x_T: D.sample_loop(analytic_eps, sched, x_T, timesteps, stored_noise_step(sched, noise, eta),
                                          jax.random.key(0), x0_transform=transform))(nhwc(GOLDEN[f"{case}_xT"]))
    assert_close(x, GOLDEN[f"{case}_x0"], rtol=1e-4, atol=2e-4)


def test_ddim_sampler_eta0_matches_diffusers():
    sched = D.make_schedule("linear", 1000)
    x = D.ddim_sample(analytic_eps, sched, nhwc(GOLDEN["ddim_eta0_xT"]), jax.random.key(3), num_steps=50, eta=0.0)
    assert_close(x, GOLDEN["ddim_eta0_x0"], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("steps", [20, 10])
def test_dpm_solver_pp_2m_loop_matches_diffusers(steps):
    sched = D.make_schedule("linear", 1000)
    x = jax.jit(lambda x_T: D.dpm_solver_pp_2m_sample(analytic_eps, sched, x_T, jax.random.key(0), num_steps=steps))(
        nhwc(GOLDEN[f"dpmpp2m_{steps}_xT"]))
    assert_close(x, GOLDEN[f"dpmpp2m_{steps}_x0"], rtol=1e-4, atol=2e-4)


# float32 rounding accumulated over 50 steps: measured max abs difference 6e-5 on values up to 60 (a few ulp).
FINAL_ALPHA_TOL = dict(rtol=1e-5, atol=1e-4)


def sd_ddim_trajectory(case, final_alpha_cumprod, x_T):
    """Our DDIM (eta 0) on diffusers' DDIMScheduler(set_alpha_to_one=False, timestep_spacing="trailing") settings."""
    sched = D.make_schedule("scaled_linear", 1000)  # default betas 0.00085 .. 0.012 are Stable Diffusion's
    run = lambda x: D.sample(analytic_eps, sched, x, jax.random.key(0), sampler="ddim", num_steps=50, eta=0.0,
                             spacing="trailing", final_alpha_cumprod=final_alpha_cumprod, return_trajectory=True)
    return jax.jit(run)(x_T)[1]


@pytest.mark.parametrize("final", ["first", "number"])
def test_ddim_final_alpha_cumprod_trajectory_matches_diffusers_set_alpha_to_one_false(final):
    """Stable Diffusion's DDIM: the last step lands on alphas_cumprod[0] (not 1); every step of the 50 compared."""
    case = "ddim_final_alpha_eta0"
    sched = D.make_schedule("scaled_linear", 1000)
    np.testing.assert_array_equal(D.respace_timesteps(1000, 50, "trailing"), FINAL_ALPHA[f"{case}_timesteps"])
    ref_final = float(FINAL_ALPHA[f"{case}_final_alpha_cumprod"])
    assert ref_final == float(FINAL_ALPHA[f"{case}_alphas_cumprod_0"]) < 1.0
    np.testing.assert_allclose(float(sched.alpha_bar(0)), ref_final, rtol=1e-6)
    x_T = nhwc(FINAL_ALPHA[f"{case}_xT"])
    trajectory = sd_ddim_trajectory(case, "first" if final == "first" else ref_final, x_T)
    assert_close(trajectory, FINAL_ALPHA[f"{case}_trajectory"], **FINAL_ALPHA_TOL)


def test_ddim_final_alpha_golden_tells_the_final_alpha_apart():
    """The golden trajectory's last step is far (vs the tolerance above) from the default clean end (alpha-bar 1)."""
    case = "ddim_final_alpha_eta0"
    clean = sd_ddim_trajectory(case, None, nhwc(FINAL_ALPHA[f"{case}_xT"]))
    ref = np.moveaxis(FINAL_ALPHA[f"{case}_trajectory"], -3, -1)
    np.testing.assert_allclose(clean[:-1], ref[:-1], **FINAL_ALPHA_TOL)  # only the last step differs
    assert np.abs(np.asarray(clean[-1]) - ref[-1]).max() > 100 * FINAL_ALPHA_TOL["atol"]


def test_ddim_eta1_final_alpha_cumprod_trajectory_matches_diffusers():
    """eta 1 with stored noise: with alpha-bar_0 as the target, the last step has sigma > 0 and adds noise too."""
    case = "ddim_final_alpha_eta1"
    sched = D.make_schedule("scaled_linear", 1000)
    timesteps = D.respace_timesteps(1000, 50, "trailing")
    np.testing.assert_array_equal(timesteps, FINAL_ALPHA[f"{case}_timesteps"])
    noise = nhwc(FINAL_ALPHA[f"{case}_noise"])

    def step(x, t, s, x0, eps, key, carry, index):
        return D.ddim_step(sched, x, t, s, x0, eps, noise[index], 1.0, final_alpha_cumprod="first"), carry

    _, trajectory = jax.jit(lambda x_T: D.sample_loop(analytic_eps, sched, x_T, timesteps, step, jax.random.key(0),
                                                      return_trajectory=True))(nhwc(FINAL_ALPHA[f"{case}_xT"]))
    assert_close(trajectory, FINAL_ALPHA[f"{case}_trajectory"], **FINAL_ALPHA_TOL)
