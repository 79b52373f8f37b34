"""Task distill (issue 18): progressive distillation's rounds and two-step DDIM target, exact resume mid-round, the
teacher checks, consistency distillation's boundary condition and multistep sampling. Tiny models on 8x8 digits."""
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import toy_workdirs
from conftest import tiny_config
from ddpm_jax.pipelines.workdir import sample_workdir
from ddpm_jax.tasks import build_run
from ddpm_jax.tasks.distill import consistency_function, consistency_sample_indices, ode_step
from ddpm_jax.training import loop
from ddpm_jax.workdir import ConfigMismatchError
from ddpm_jax.workdir.record import write_record


@pytest.fixture(scope="module")
def teacher():
    return toy_workdirs.shared("ddpm_digits", toy_workdirs.pixel_ddpm)


def student_config(teacher_workdir, **overrides):
    settings = {"task": "distill", "distill.teacher_workdir": str(teacher_workdir), "distill.start_steps": 8,
                "distill.end_steps": 4, "distill.steps_per_round": 2, "training.num_steps": 2,
                "training.checkpoint_every": 2, "sampling.num_steps": 0, "distill.num_scales": 6}
    settings.update(overrides)
    return tiny_config(**settings)


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------------ progressive


def linear_alpha_bar(T=1000):
    """DDPM's linear schedule in float64, written out here (not the package's)."""
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))


def ddim_steps_numpy(eps_fn, z, *ts, clip=1.0):
    """Deterministic DDIM steps ts[0] -> ts[1] -> ... in float64, x0 clipped and eps recomputed from it; (x~, z_end)
    with x~ the x0 that one DDIM step from ts[0] to ts[-1] would need to land on z_end."""
    ab = linear_alpha_bar()
    abar = lambda u: np.where(u >= 0, ab[np.clip(u, 0, None)], 1.0)[:, None, None, None]

    def step(x, u, s):
        a_u, a_s = abar(u), abar(s)
        eps = eps_fn(x, u)
        x0 = np.clip((x - np.sqrt(1 - a_u) * eps) / np.sqrt(a_u), -clip, clip)
        eps = (x - np.sqrt(a_u) * x0) / np.sqrt(1 - a_u)
        return np.sqrt(a_s) * x0 + np.sqrt(1 - a_s) * eps

    z_end = z
    for u, s in zip(ts[:-1], ts[1:]):
        z_end = step(z_end, u, s)
    t, t_end = ts[0], ts[-1]
    a_t, a_e = np.sqrt(abar(t)), np.sqrt(abar(t_end))
    s_t, s_e = np.sqrt(1 - abar(t)), np.sqrt(1 - abar(t_end))
    x_tilde = (z_end - s_e / s_t * z) / (a_e - s_e / s_t * a_t)
    return x_tilde, z_end


@pytest.mark.slow
def test_progressive_target_is_two_guided_teacher_ddim_steps(teacher):
    """The loss target x~ of a round (student 4 steps, teacher 8) is what two guided DDIM steps of the teacher give,
    recomputed here in float64; one student DDIM step with x0 = x~ lands where the teacher's two steps do."""
    w = 2.0
    run = build_run(student_config(teacher, **{"distill.guidance_scale": w}))
    params = run.init_params(jax.random.key(0))
    # a teacher with substantial outputs (the toy one's zero-initialised output layer has barely moved; with eps = 0
    # one DDIM step equals two)
    leaves, tree = jax.tree.flatten(params["teacher"])
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    params["teacher"] = jax.tree.unflatten(tree, noisy)
    batch = {k: jnp.asarray(v) for k, v in run.task.pipeline(run, "", True).batch(0).items()}
    out = jax.jit(run.extras["method"].terms)(params, batch, jax.random.key(3), jnp.int32(1))
    t, t_mid, t_end = (np.asarray(out[k]) for k in ("t", "t_mid", "t_end"))
    # round 0 of 8 -> 4: the student's trailing grid and the teacher's point between
    student_grid = [999, 749, 499, 249, -1]
    assert int(out["student_steps"]) == 4 and set(t) <= set(student_grid[:-1]) and len(set(t)) > 1
    np.testing.assert_array_equal(t_end, [student_grid[student_grid.index(u) + 1] for u in t])
    np.testing.assert_array_equal(t_mid, [{999: 874, 749: 624, 499: 374, 249: 124}[u] for u in t])

    teacher_params, labels = params["teacher"], np.asarray(batch["label"])
    null = np.full_like(labels, run.model.num_classes)

    def eps_fn(x, u):
        call = lambda lab: np.asarray(run.model.apply({"params": teacher_params}, jnp.asarray(x, jnp.float32),
                                                      jnp.asarray(u), {"label": jnp.asarray(lab)}), np.float64)
        uncond = call(null)
        return uncond + w * (call(labels) - uncond)

    z_t = np.asarray(out["z_t"], np.float64)
    x_tilde, z_end = ddim_steps_numpy(eps_fn, z_t, t, t_mid, t_end)
    np.testing.assert_allclose(np.asarray(out["x_tilde"]), x_tilde, rtol=1e-4, atol=2e-4)
    one_teacher_step, _ = ddim_steps_numpy(eps_fn, z_t, t, t_end)
    assert np.abs(one_teacher_step - x_tilde).max() > 0.05  # the check above can tell one step from two
    np.testing.assert_allclose(np.asarray(out["z_end"]), z_end, rtol=1e-4, atol=2e-4)
    ab = linear_alpha_bar()
    abar = lambda u: np.where(u >= 0, ab[np.clip(u, 0, None)], 1.0)[:, None, None, None]
    xt = np.asarray(out["x_tilde"], np.float64)
    eps_student = (z_t - np.sqrt(abar(t)) * xt) / np.sqrt(1 - abar(t))
    one_step = np.sqrt(abar(t_end)) * xt + np.sqrt(1 - abar(t_end)) * eps_student
    np.testing.assert_allclose(one_step, z_end, rtol=1e-4, atol=2e-4)
    snr = abar(t)[:, 0, 0, 0] / (1 - abar(t)[:, 0, 0, 0])
    np.testing.assert_allclose(np.asarray(out["weight"]), np.maximum(snr, 1.0), rtol=1e-4)  # truncated SNR


@pytest.mark.slow
def test_a_round_halves_the_step_count_and_sampling_uses_it(teacher, tmp_path, caplog):
    cfg = student_config(teacher)
    cfg.training.sample_every = cfg.training.num_steps  # the final grid, named by the student's own step count
    caplog.set_level(logging.INFO, logger="ddpm_jax")
    run = build_run(cfg)
    init = run.init_params(jax.random.key(0))
    assert float(init["num_steps"]) == 8  # the student starts as the teacher, at start_steps
    state = loop.train(cfg, str(tmp_path))
    assert float(state.params["num_steps"]) == 4 and float(state.ema_params["num_steps"]) == 4
    assert_trees_equal(state.params["teacher"], init["teacher"])  # frozen inside the round
    assert_trees_equal(state.ema_params["teacher"], init["teacher"])
    assert not np.array_equal(np.asarray(jax.tree.leaves(state.params["student"])[0]),
                              np.asarray(jax.tree.leaves(init["student"])[0]))
    assert f"samples (EMA, distill_progressive_4steps) -> {tmp_path}/samples/step_0000002.png" in caplog.text
    record = json.load(open(os.path.join(tmp_path, "distill.json")))
    assert record["rounds"] == [{"round": 0, "steps": [0, None], "teacher_steps": 8, "student_steps": 4}]
    out = sample_workdir(str(tmp_path), 4)  # the recorded config, the checkpoint's own step count
    assert os.path.basename(out["png"]) == "distill_progressive_4steps_step2.png"
    assert out["images"].shape == (4, 8, 8, 1)
    assert json.load(open(out["json"]))["distill"]["num_steps"] == 4
    assert out["extra"]["distill"]["num_steps"] == 4  # what evaluate --mode=samples records next to its scores


@pytest.mark.slow
def test_resume_mid_round_is_bit_identical(teacher, tmp_path):
    """Rounds 8 -> 4 -> 2 of 3 steps each; a run stopped at step 4 (inside round 1, its teacher already the round-0
    student) and resumed ends bit-identical to an uninterrupted one: the teacher is restored from the checkpoint."""
    over = {"distill.end_steps": 2, "distill.steps_per_round": 3, "training.num_steps": 6,
            "training.checkpoint_every": 6}
    straight = loop.train(student_config(teacher, **over), str(tmp_path / "a"))
    part = loop.train(student_config(teacher, **{**over, "training.num_steps": 4, "training.checkpoint_every": 4}),
                      str(tmp_path / "b"))
    first_teacher = build_run(student_config(teacher, **over)).init_params(jax.random.key(0))["teacher"]
    assert float(part.params["num_steps"]) == 2
    assert not np.array_equal(np.asarray(jax.tree.leaves(part.params["teacher"])[0]),
                              np.asarray(jax.tree.leaves(first_teacher)[0]))  # round 1's teacher is in the state
    resumed = loop.train(student_config(teacher, **over), str(tmp_path / "b"))
    assert int(resumed.step) == 6
    assert_trees_equal(straight, resumed)


# ------------------------------------------------------------------------------------------------ teacher checks


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value).strip()
    return str(excinfo.value)


def test_missing_teacher_is_one_line_naming_it(tmp_path):
    missing = str(tmp_path / "no_teacher")
    with pytest.raises(FileNotFoundError) as e:
        build_run(student_config(missing))
    assert missing in _one_line(e) and "distill.teacher_workdir" in str(e.value)
    with pytest.raises(ValueError, match="needs distill.teacher_workdir"):
        build_run(student_config(""))


def test_teacher_that_is_not_a_diffusion_run_is_one_line(tmp_path):
    wd = tmp_path / "classifier"
    wd.mkdir()
    write_record(str(wd), tiny_config(task="classifier"))
    with pytest.raises(ValueError) as e:
        build_run(student_config(wd))
    assert str(wd) in _one_line(e) and "classifier run, not a diffusion model" in str(e.value)
    flow = tmp_path / "flow"
    flow.mkdir()
    write_record(str(flow), tiny_config(**{"diffusion.process": "flow"}))
    with pytest.raises(ValueError) as e:
        build_run(student_config(flow))
    assert "needs a teacher with diffusion.process ddpm" in _one_line(e) and str(flow) in str(e.value)


def test_config_mismatch_with_the_teacher_is_one_line(teacher, tmp_path):
    with pytest.raises(ValueError) as e:  # the student has the teacher's architecture
        build_run(student_config(teacher, **{"model.ch": 32}))
    assert "model.ch" in _one_line(e) and "config.json" in str(e.value)
    with pytest.raises(ValueError, match="sampled without guidance"):
        build_run(student_config(teacher, **{"sampling.guidance_scale": 2.0}))
    with pytest.raises(ValueError, match="power of 2"):
        build_run(student_config(teacher, **{"distill.start_steps": 12}))
    # a student goes on only with the teacher weights it started from (distill.json), wherever they now live
    student = tmp_path / "student"
    student.mkdir()
    write_record(str(student), student_config(teacher))
    with open(student / "distill.json", "w") as f:
        json.dump({"teacher_workdir": "/elsewhere", "teacher_step": 3, "teacher_sha256": "0" * 64}, f)
    with pytest.raises(ValueError) as e:
        loop.train(student_config(teacher), str(student))
    assert "distilled from other teacher weights (/elsewhere at step 3)" in _one_line(e)
    with pytest.raises(ConfigMismatchError) as e:  # the method (like any distill setting but the path) is the run's
        loop.train(student_config(teacher, **{"distill.method": "consistency"}), str(student))
    assert "distill.method" in _one_line(e)


# ------------------------------------------------------------------------------------------------ consistency


def test_consistency_boundary_condition_is_exact(teacher):
    run = build_run(student_config(teacher, **{"distill.method": "consistency"}))
    method = run.extras["method"]
    params = run.init_params(jax.random.key(0))
    sig = np.asarray(method.sigmas)
    assert len(sig) == 6 and np.all(np.diff(sig) > 0)
    sigmas = run.process._sigmas()
    np.testing.assert_allclose([sig[0], sig[-1]], [sigmas[0], sigmas[-1]])  # the teacher's sigma~ range
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1)) * 2.0
    cond = {"label": jnp.asarray([0, 1, 2])}
    f = jax.jit(method.f)
    at_min = f(params["student"], x, jnp.full((3,), jnp.float32(sig[0])), cond)
    np.testing.assert_array_equal(np.asarray(at_min), np.asarray(x))  # f(x, sigma_min) == x, bit for bit
    at_max = f(params["student"], x, jnp.full((3,), jnp.float32(sig[-1])), cond)
    assert not np.allclose(np.asarray(at_max), np.asarray(x))
    # at sigma >> sigma_min the initial student is the teacher's denoiser (f = D, the x0 estimate)
    d, _ = run.process.x0_eps(lambda a, t, c: run.model.apply({"params": params["student"]}, a, t, c), x,
                              jnp.full((3,), jnp.float32(sig[-1])), cond)
    np.testing.assert_allclose(np.asarray(at_max), np.asarray(d), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_consistency_training_and_multistep_sampling(teacher, tmp_path):
    cfg = student_config(teacher, **{"distill.method": "consistency", "distill.target_ema": 0.5,
                                      "distill.solver": "ddim", "optim.warmup_steps": 0})
    state = loop.train(cfg, str(tmp_path))
    run = build_run(cfg)
    init = run.init_params(jax.random.key(0))
    assert set(state.params) == {"student", "target", "teacher"}
    assert_trees_equal(state.params["teacher"], init["teacher"])  # frozen
    leaf = lambda tree: np.asarray(jax.tree.leaves(tree)[0], np.float64)
    # theta^- = mu theta^- + (1 - mu) theta before each step: after 2 steps it lies between theta_0 and theta_1
    assert not np.array_equal(leaf(state.params["target"]), leaf(init["target"]))
    one = sample_workdir(str(tmp_path), 4)
    assert os.path.basename(one["png"]) == "distill_consistency_1steps_step2.png"
    params = run.task.eval_params(state.ema_params)
    assert list(consistency_sample_indices(6, 3)) == [5, 3, 2]
    samples = {}
    for k in (1, 3):
        s = cfg.sampling.copy_and_resolve_references()
        s.num_steps = k
        samples[k], _, _ = run.task.generate(run, params, jax.random.key(0), 4, sampling_config=s)
        assert samples[k].shape == (4, 8, 8, 1) and np.all(np.isfinite(samples[k]))
        assert np.abs(samples[k]).max() <= 1.0  # the teacher's clip_x0
    assert not np.allclose(samples[1], samples[3])
    with pytest.raises(ValueError, match="takes 1..5 steps"):
        consistency_sample_indices(6, 6)


class _VE:
    """x = x0 + sigma eps with sigma = u: the view the consistency helpers take (ddpm's continuous view, edm)."""

    def x0_eps(self, denoise, x, u, cond=None):
        d = denoise(x, u, cond)
        return d, (x - d) / u[:, None]

    def eps_from_x0(self, x, u, x0):
        return (x - x0) / u[:, None]

    def alpha_sigma(self, u):
        return jnp.ones_like(u), u

    def d_alpha_sigma(self, u):
        return jnp.zeros_like(u), jnp.ones_like(u)


def test_teacher_ode_steps_follow_the_probability_flow():
    """Gaussian data N(0, s^2): D(x, sigma) = x s^2 / (s^2 + sigma^2) and the ODE's exact solution is
    x(sigma') = x sqrt((s^2 + sigma'^2) / (s^2 + sigma^2)); Heun is second order, DDIM (Euler in sigma) first."""
    s2 = 0.25
    denoise = lambda x, u, cond: x * s2 / (s2 + u[:, None] ** 2)
    x = jnp.asarray([[1.0], [-2.0]])
    for hi, lo in ((1.0, 0.8), (0.5, 0.45)):
        u, u_next = jnp.full((2,), hi), jnp.full((2,), lo)
        exact = np.asarray(x) * np.sqrt((s2 + lo ** 2) / (s2 + hi ** 2))
        err = {m: np.abs(np.asarray(ode_step(_VE(), denoise, x, u, u_next, None, m)) - exact).max()
               for m in ("ddim", "heun")}
        assert err["heun"] < err["ddim"] / 5 and err["heun"] < 2e-3, err
    # the boundary condition: c_skip(sigma_min) = 1, c_out(sigma_min) = 0, whatever the denoiser says
    smin = jnp.float32(0.002)
    out = consistency_function(_VE(), lambda a, u, c: a * 0 + 7.0, x, jnp.full((2,), smin), None, smin, 0.5)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


# ------------------------------------------------------------------------------------------------ other teachers


def _dit_teacher(workdir):
    return toy_workdirs.train(tiny_config(**{"model.backbone": "dit", "model.dit.hidden_size": 32,
                                             "model.dit.depth": 1, "model.dit.num_heads": 2}), workdir)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["latent", "dit"])
@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_latent_and_dit_teachers(kind, method, tmp_path):
    """The student runs on the teacher's latent space (decoded samples) or DiT backbone, either method."""
    if kind == "latent":
        vae = toy_workdirs.shared("vae_digits", toy_workdirs.vae)
        teacher = toy_workdirs.shared("ldm_digits", toy_workdirs.latent_ddpm, vae)
    else:
        teacher = toy_workdirs.shared("dit_digits_distill", _dit_teacher)
    over = {"distill.method": method, "distill.solver": "ddim"}
    if kind == "latent":  # the tiny config's model keys must be the teacher's (its latents need ch_mult (1,))
        over.update({"model.ch_mult": (1,)})
    else:
        over.update({"model.backbone": "dit", "model.dit.hidden_size": 32, "model.dit.depth": 1,
                     "model.dit.num_heads": 2})
    state = loop.train(student_config(teacher, **over), str(tmp_path))
    assert int(state.step) == 2
    out = sample_workdir(str(tmp_path), 3)
    assert out["images"].shape == (3, 8, 8, 1) and out["images"].dtype == np.uint8
    if kind == "latent":
        assert os.path.exists(os.path.join(tmp_path, "latent.json"))  # the teacher's autoencoder, pinned
