"""Flow matching and EDM processes and the Euler / Heun / Euler-Maruyama solvers.

References: diffusers' FlowMatchEulerDiscreteScheduler, EDMEulerScheduler, HeunDiscreteScheduler and
EulerDiscreteScheduler trajectories (tests/golden/make_solver_golden.py), and float64 numpy implementations of EDM's
Algorithm 2 (Karras et al. 2022, with churn) and of Euler-Maruyama written here from the papers.
"""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm_jax import diffusion
from ddpm_jax.default_config import base_config
from ddpm_jax.diffusion import solvers
from ddpm_jax.tasks.sampling import sampler_kwargs

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "golden", "solvers_diffusers.npz"))
STEPS = 10


def net(x, t, cond=None):
    """jnp twin of make_solver_golden.net: t is the network's time input per example."""
    t = jnp.reshape(jnp.asarray(t, jnp.float32), (-1,) + (1,) * (x.ndim - 1))
    return 0.5 * jnp.tanh(x) + 0.1 * jnp.cos(x + t / 100.0)


def net_edm(x, c_noise, cond=None):
    c = jnp.reshape(jnp.asarray(c_noise, jnp.float32), (-1,) + (1,) * (x.ndim - 1))
    return 0.5 * jnp.tanh(x) + 0.1 * jnp.cos(x + c)


def _run(process, denoise, case, method):
    grid = GOLDEN[f"{case}_sigmas"]
    x_start = GOLDEN[f"{case}_x"]
    x_T = jnp.asarray(x_start) / process.prior_scale(grid[0])
    _, traj = solvers.solve(process, denoise, x_T, jax.random.key(0), None, grid, method, return_trajectory=True)
    return np.asarray(traj), GOLDEN[f"{case}_traj"]


def _close(ours, ref, rtol=2e-5):
    scale = np.max(np.abs(ref))
    err = np.max(np.abs(ours - ref))
    assert err <= rtol * max(scale, 1.0), f"max abs error {err:.3g} (reference max {scale:.3g})"


# ------------------------------------------------------------------------------------------------ time grids


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_grid_matches_diffusers(shift):
    # diffusers shifts sigma_min = 1/1000 once in __init__ and the whole linspace again in set_timesteps
    t_end = shift * 1e-3 / (1 + (shift - 1) * 1e-3)
    grid = diffusion.FlowProcess().time_grid(STEPS, shift, t_end)
    np.testing.assert_allclose(grid, GOLDEN[f"flow_shift{shift:g}_sigmas"], rtol=1e-6, atol=1e-7)


def test_flow_default_grid_is_uniform():
    np.testing.assert_allclose(diffusion.FlowProcess().time_grid(4), [1.0, 0.75, 0.5, 0.25, 0.0])


def test_edm_grid_is_karras():
    grid = diffusion.EDMProcess().time_grid(STEPS)
    np.testing.assert_allclose(grid, GOLDEN["edm_euler_sigmas"], rtol=1e-6)


@pytest.mark.parametrize("case,spacing", [("heun_eps", ""), ("heun_karras", "karras")])
def test_ddpm_sigma_grid_matches_diffusers(case, spacing):
    process = diffusion.DDPMProcess(diffusion.make_schedule("linear", 1000))
    # rtol 1e-4: diffusers computes (1 - abar) / abar in float32, 8e-5 off at t = 0 (ours: 0.0100005 = sqrt(1e-4 /
    # 0.9999), theirs 0.0100013); the trajectory tests run on diffusers' own grid
    np.testing.assert_allclose(process.time_grid(STEPS, spacing), GOLDEN[f"{case}_sigmas"], rtol=1e-4)


# ------------------------------------------------------------------------------------- diffusers trajectories


@pytest.mark.parametrize("case", ["flow_shift1", "flow_shift3"])
def test_flow_euler_matches_diffusers(case):
    _close(*_run(diffusion.FlowProcess(), net, case, "euler"))


def test_edm_euler_matches_diffusers():
    _close(*_run(diffusion.EDMProcess(), net_edm, "edm_euler", "euler"))


@pytest.mark.parametrize("case,prediction", [("heun_eps", "eps"), ("heun_v", "v"), ("heun_karras", "eps")])
def test_ddpm_heun_matches_diffusers(case, prediction):
    process = diffusion.DDPMProcess(diffusion.make_schedule("linear", 1000), prediction)
    ours, ref = _run(process, net, case, "heun")
    # diffusers returns the Euler predictor after each first-order call: keep the completed steps
    completed = list(range(1, 2 * STEPS - 2, 2)) + [2 * STEPS - 2]
    assert ref.shape[0] == 2 * STEPS - 1 and ours.shape[0] == STEPS
    _close(ours, ref[completed])


def test_ddpm_euler_matches_diffusers():
    process = diffusion.DDPMProcess(diffusion.make_schedule("linear", 1000))
    _close(*_run(process, net, "euler_eps", "euler"))


# ------------------------------------------------------------------------ float64 references (EDM, Alg. 2)


def _edm_denoiser_np(x, sigma, sigma_data=0.5):
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / math.sqrt(sigma**2 + sigma_data**2)
    c_in = 1.0 / math.sqrt(sigma**2 + sigma_data**2)
    f = 0.5 * np.tanh(c_in * x) + 0.1 * np.cos(c_in * x + 0.25 * math.log(sigma))
    return c_skip * x + c_out * f


def _edm_algorithm2(x, grid, noises, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. 2022, Algorithm 2, line by line, float64."""
    n = len(grid) - 1
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= t <= s_tmax else 0.0
        t_hat = t + gamma * t
        x_hat = x + math.sqrt(t_hat**2 - t**2) * s_noise * noises[i]
        d = (x_hat - _edm_denoiser_np(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d
        if t_next != 0:
            d2 = (x_next - _edm_denoiser_np(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d + 0.5 * d2)
        x = x_next
    return x


@pytest.mark.parametrize("s_churn", [0.0, 40.0])
def test_heun_matches_edm_algorithm2_float64(s_churn):
    process, key = diffusion.EDMProcess(), jax.random.key(3)
    x_T = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    opts = dict(s_churn=s_churn, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)  # EDM's CIFAR-10 stochastic setting
    ours = process.sample(net_edm, x_T, key, sampler="heun", num_steps=STEPS, **opts)
    grid = process.time_grid(STEPS).astype(np.float32).astype(np.float64)
    noises = [np.asarray(jax.random.normal(jax.random.fold_in(key, i), x_T.shape), np.float64) for i in range(STEPS)]
    ref = _edm_algorithm2(np.asarray(x_T, np.float64) * grid[0], grid, noises, **opts)
    _close(np.asarray(ours), ref, rtol=5e-6)
    if s_churn:  # the churn really changes the result
        plain = process.sample(net_edm, x_T, key, sampler="heun", num_steps=STEPS)
        assert float(jnp.max(jnp.abs(plain - ours))) > 1e-3


def test_heun_uses_2n_minus_1_calls():
    calls = []

    def counting(x, t, cond=None):
        jax.debug.callback(lambda: calls.append(1))
        return net_edm(x, t)

    diffusion.EDMProcess().sample(counting, jnp.zeros((1, 2, 2, 1)), jax.random.key(0), sampler="heun", num_steps=5)
    assert len(calls) == 9 == solvers.num_function_evaluations("heun", 5)


@pytest.mark.parametrize("name", ["edm", "flow"])
def test_euler_maruyama_matches_float64_reference(name):
    """x_{i+1} = x + dt (f + g^2 eps / (2 sigma)) + sqrt(g^2 |dt|) z, deterministic Euler on the last step."""
    process = diffusion.EDMProcess() if name == "edm" else diffusion.FlowProcess()
    denoise = net_edm if name == "edm" else net
    key, x_T = jax.random.key(5), jax.random.normal(jax.random.key(2), (2, 4, 4, 1))
    ours = process.sample(denoise, x_T, key, sampler="euler_maruyama", num_steps=8)
    grid = process.time_grid(8).astype(np.float32).astype(np.float64)
    x = np.asarray(x_T, np.float64) * process.prior_scale(grid[0])
    for i in range(8):
        u, u_next = grid[i], grid[i + 1]
        if name == "edm":
            x0 = _edm_denoiser_np(x, u)
            eps = (x - x0) / u
            f, sigma, g2 = eps, u, 2 * u
        else:
            v = 0.5 * np.tanh(x) + 0.1 * np.cos(x + 1000 * u / 100.0)
            eps = x + (1 - u) * v
            f, sigma, g2 = v, u, u
        dt = u_next - u
        if u_next > 0:
            z = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), 1), x.shape), np.float64)
            x = x + dt * (f + 0.5 * g2 * eps / sigma) + math.sqrt(g2 * abs(dt)) * z
        else:
            x = x + dt * f
    _close(np.asarray(ours), x, rtol=2e-5)


# ------------------------------------------------------------------------------------------ training losses


def test_exact_denoisers_have_zero_loss_and_wrong_ones_do_not():
    """For data concentrated at one point c the exact velocity / denoiser is known in closed form."""
    c, key = 0.3, jax.random.key(0)
    x0 = jnp.full((64, 4, 4, 1), c)
    flow = diffusion.FlowProcess()
    exact_v = lambda x, t, cond: (x - c) / (jnp.reshape(t, (-1, 1, 1, 1)) / 1000.0)
    assert float(jnp.max(flow.loss(exact_v, x0, key))) < 1e-6
    assert float(jnp.mean(flow.loss(lambda x, t, cond: -exact_v(x, t, cond), x0, key))) > 1.0
    flow_x0 = diffusion.FlowProcess(prediction="x0")
    assert float(jnp.max(flow_x0.loss(lambda x, t, cond: jnp.full_like(x, c), x0, key))) < 1e-6
    assert float(jnp.mean(flow_x0.loss(lambda x, t, cond: jnp.zeros_like(x), x0, key))) > 1e-3

    edm = diffusion.EDMProcess()

    def exact_f(x_in, c_noise, cond):
        sigma = jnp.exp(4 * jnp.reshape(c_noise, (-1, 1, 1, 1)))
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
        return (c - c_skip * x_in / c_in) / c_out

    assert float(jnp.max(edm.loss(exact_f, x0, key))) < 1e-4
    assert float(jnp.mean(edm.loss(lambda x, t, cond: jnp.zeros_like(x), x0, key))) > 0.1


def test_edm_loss_weight_and_preconditioning():
    edm = diffusion.EDMProcess()
    sigma = jnp.asarray([0.01, 0.5, 3.0, 80.0])
    c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma)
    sd = 0.5
    np.testing.assert_allclose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-6)
    np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)
    # lambda(sigma) c_out(sigma)^2 = 1: the effective weight on F is uniform (EDM sec. 5)
    np.testing.assert_allclose(edm.loss_weight(sigma) * c_out**2, 1.0, rtol=1e-5)


def test_flow_time_distributions():
    key = jax.random.key(0)
    uniform = np.asarray(diffusion.FlowProcess().sample_t(key, 20000))
    assert 0 <= uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    logit = np.asarray(diffusion.FlowProcess(time_distribution="logit_normal", logit_mean=0.5).sample_t(key, 20000))
    z = np.log(logit / (1 - logit))
    assert abs(z.mean() - 0.5) < 0.03 and abs(z.std() - 1.0) < 0.03


# ------------------------------------------------------------------------------------------- configuration


def _cfg(process="flow", sampler="heun", **sampling):
    c = base_config()
    c.diffusion.process = process
    c.sampling.sampler = sampler
    for k, v in sampling.items():
        c.sampling[k] = v
    return c


@pytest.mark.parametrize("process,sampler,match", [
    ("flow", "ddim", "runs on diffusion.process=ddpm only"),
    ("edm", "dpm_solver_pp_2m", "runs on diffusion.process=ddpm only"),
    ("flow", "rk4", "unknown sampling.sampler"),
])
def test_sampler_process_mismatch_is_one_line_error(process, sampler, match):
    c = _cfg(process, sampler)
    with pytest.raises(ValueError, match=match):
        sampler_kwargs(c.sampling, process)


def test_process_config_errors():
    c = base_config()
    c.diffusion.process = "vp_sde"
    with pytest.raises(ValueError, match="unknown diffusion.process"):
        diffusion.make_process(c.diffusion)
    c.diffusion.process = "flow"
    c.diffusion.prediction_type = "v"
    with pytest.raises(ValueError, match="apply to process ddpm"):
        diffusion.make_process(c.diffusion)
    c.diffusion.prediction_type = "eps"
    c.diffusion.flow_prediction = "eps"
    with pytest.raises(ValueError, match="flow_prediction"):
        diffusion.make_process(c.diffusion)
    c = _cfg("flow", "heun", spacing="trailing")
    with pytest.raises(ValueError, match="sampling.shift"):
        sampler_kwargs(c.sampling, "flow")


def test_solver_kwargs_from_config():
    kw = sampler_kwargs(_cfg("edm", "heun", num_steps=18, rho=5.0, s_churn=10.0).sampling, "edm")
    assert kw["num_steps"] == 18 and kw["rho"] == 5.0 and kw["s_churn"] == 10.0 and math.isinf(kw["s_tmax"])
    kw = sampler_kwargs(_cfg("flow", "euler", shift=3.0).sampling, "flow")
    assert kw["shift"] == 3.0 and "rho" not in kw and "s_churn" not in kw


def test_guidance_and_clipping_work_with_solvers():
    """Classifier-free guidance wraps the network output; clip_x0 bounds every x0 estimate (so the result)."""
    seen = []

    def cond_net(x, t, cond):
        jax.debug.callback(lambda lab: seen.append(np.asarray(lab)), cond["label"])
        return net(x, t) + 3.0 * jnp.reshape(cond["label"].astype(jnp.float32), (-1, 1, 1, 1))

    guided = diffusion.classifier_free_guidance(cond_net, 2.0, {"label": jnp.int32(10)})
    x = diffusion.FlowProcess(prediction="x0").sample(
        guided, jax.random.normal(jax.random.key(0), (2, 4, 4, 1)), jax.random.key(1), {"label": jnp.array([1, 2])},
        sampler="heun", num_steps=3, x0_transform=diffusion.make_x0_transform(1.0))
    assert any(10 in s for s in seen) and float(jnp.max(jnp.abs(x))) <= 1.0 + 1e-6


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_continuous_view_agrees_with_the_discrete_chain(prediction):
    """At an integer timestep t, the VE-frame view (x~ = x / sqrt(abar), sigma~) gives the same (x0, eps) as the
    discrete chain's conversion, and x~ = x0 + sigma~ eps."""
    schedule = diffusion.make_schedule("linear", 1000)
    process = diffusion.DDPMProcess(schedule, prediction)
    t = jnp.asarray([3, 250, 999])
    x_vp = jax.random.normal(jax.random.key(0), (3, 4, 4, 2))
    sigma = jnp.sqrt(schedule.one_minus_alpha_bar(t) / schedule.alpha_bar(t))
    x_ve = x_vp / jnp.sqrt(schedule.alpha_bar(t))[:, None, None, None]
    x0, eps = process.x0_eps(net, x_ve, sigma)
    x0_ref, eps_ref = diffusion.prediction_to_x0_eps(schedule, x_vp, t, net(x_vp, t), prediction)
    np.testing.assert_allclose(x0, x0_ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(eps, eps_ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(x0 + sigma[:, None, None, None] * eps, x_ve, rtol=1e-4, atol=1e-4)
