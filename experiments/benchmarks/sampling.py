"""Benchmark: sampling speed of each sampler, whole loop compiled once vs the network stepped from a Python loop.

    python experiments/benchmarks/sampling.py [--config configs/quickstart.py] [--steps 50] [--batches 1,16,64]
                                              [--reps 3] [--out FILE.md]
    python experiments/benchmarks/sampling.py --quick     # smoke test: batches 1 and 4, 5 steps, 1 repetition
    python experiments/benchmarks/sampling.py --distilled [--distilled_batch 64] [--out FILE.md]

For the config's U-Net (random weights: speed only; classifier-free guidance as the config sets it) and each sampler
(DDPM ancestral, DDIM eta = 0 and 1, DPM-Solver++(2M)) at every batch size:

- *compiled loop*: the task's ``make_sample_fn`` (``ddpm_jax.tasks.sampling``), the whole sampler one jitted
  ``lax.scan``; its compilation is timed on its own (``lower().compile()``), then images/s over ``--reps`` runs;
- *Python loop*: the same per-step computation (network, x0/eps conversion, the sampler's own step function, fetched
  from the sampler itself) jitted once as one step and called from a Python ``for`` loop, once per step.

The ratio is what compiling the loop saves (per-step dispatch, and fusion across steps); the last column checks that
the two give the same samples.

``--distilled`` times the few-step samplers of ``task=distill`` (ddpm_jax/tasks/distill.py) on the same U-Net against
the teacher's 50-step guided DDIM: the progressive student's sampler (trailing DDIM at 1, 2, 4, 8 steps, no guidance:
it is distilled in) and multistep consistency sampling (1, 2, 4 steps). Speed does not depend on the weights; the
quality of each (method, NFE), when experiments/results/few_step.json holds it, is printed next to it, so the table
reads as images/s at a measured quality.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_jax import diffusion  # noqa: E402
from ddpm_jax.diffusion import samplers  # noqa: E402
from ddpm_jax.models.denoiser import denoiser_fn  # noqa: E402
from ddpm_jax.tasks import build_run  # noqa: E402
from ddpm_jax.tasks.distill import (consistency_sample, consistency_sample_indices, consistency_sigmas,  # noqa: E402
                                    x0_transform_of)
from ddpm_jax.tasks.sampling import sampler_kwargs  # noqa: E402
from experiments.scoring import machine_description  # noqa: E402

SAMPLERS = {"DDPM ancestral": dict(sampler="ddpm"), "DDIM η = 0": dict(sampler="ddim", eta=0.0),
            "DDIM η = 1": dict(sampler="ddim", eta=1.0), "DPM-Solver++(2M)": dict(sampler="dpm_solver_pp_2m")}


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def sampler_plan(sampling, schedule, x_T) -> dict:
    """The timesteps, step function and initial carry a sampler hands to ``sample_loop`` (captured, not run)."""
    captured = {}

    def capture(denoise, schedule, x_T, timesteps, step, key, cond=None, init_carry=(), **loop_kwargs):
        captured.update(timesteps=np.asarray(timesteps, np.int32), step=step, init_carry=init_carry)
        return x_T

    kwargs = sampler_kwargs(sampling)
    kwargs.pop("x0_transform")
    with mock.patch.object(samplers, "sample_loop", capture):
        diffusion.sample(None, schedule, x_T, jax.random.key(0), sampler=sampling.sampler, **kwargs)
    return captured


def make_python_loop(run, sampling):
    """``fn(params, x_T, key, cond)``: the sampler as a Python loop over one jitted step (network + update)."""
    schedule, prediction_type = run.schedule, run.config.diffusion.prediction_type
    x0_transform = sampler_kwargs(sampling)["x0_transform"]
    scale = float(sampling.guidance_scale)
    null = run.task.null_condition(run)

    @jax.jit
    def one_step(params, x, t, s, key, carry, index, cond):
        denoise = denoiser_fn(run.model, params)
        if scale != 1.0:
            denoise = diffusion.classifier_free_guidance(denoise, scale, null)
        tb, sb = jnp.full((x.shape[0],), t), jnp.full((x.shape[0],), s)
        prediction = denoise(x, tb, cond).astype(jnp.float32)
        x0, eps = diffusion.prediction_to_x0_eps(schedule, x, tb, prediction, prediction_type)
        if x0_transform is not None:
            x0 = x0_transform(x0)
            eps = diffusion.x0_to_eps(schedule, x, tb, x0)
        return step_fn[0](x, tb, sb, x0, eps, jax.random.fold_in(key, index), carry, index)

    step_fn = [None]  # the sampler's step function: fixed per sampler, captured when the plan is made

    def python_loop(params, x_T, key, cond):
        plan = sampler_plan(sampling, schedule, x_T)
        step_fn[0] = plan["step"]
        targets = np.append(plan["timesteps"][1:], -1).astype(np.int32)
        x, carry = x_T, plan["init_carry"]
        for i, (t, s) in enumerate(zip(plan["timesteps"], targets)):
            x, carry = one_step(params, x, jnp.int32(t), jnp.int32(s), key, carry, jnp.int32(i), cond)
        return x

    return python_loop, one_step


def time_runs(fn, args, reps: int) -> float:
    """Median seconds of ``reps`` calls of ``fn(*args)``, each waited for."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(config, steps: int, batches: list, reps: int) -> list:
    run = build_run(config)
    params = jax.jit(run.init_params)(jax.random.key(0))
    rows = []
    for label, overrides in SAMPLERS.items():
        sampling = config.sampling.copy_and_resolve_references()
        sampling.num_steps = steps
        for key, value in overrides.items():
            sampling[key] = value
        for batch in batches:
            x_T = jax.random.normal(jax.random.key(1), (batch,) + tuple(run.image_shape))
            cond, _, _ = run.task.sample_cond(run, batch)  # labels 0..K-1 in turn for a class-conditional model
            args = (params, x_T, jax.random.key(2), {k: jnp.asarray(v) for k, v in cond.items()})
            t0 = time.perf_counter()
            compiled = run.task.make_sample_fn(run, sampling).lower(*args).compile()
            compile_loop = time.perf_counter() - t0
            x_loop = jax.block_until_ready(compiled(*args))
            loop_s = time_runs(compiled, args, reps)
            python_run, one_step = make_python_loop(run, sampling)
            t0 = time.perf_counter()
            x_python = jax.block_until_ready(python_run(*args))  # the first call compiles the one step
            first_python = time.perf_counter() - t0
            python_s = time_runs(python_run, args, reps)
            rows.append({"sampler": label, "batch": batch, "steps": steps, "compile_loop_s": compile_loop,
                         "loop_s": loop_s, "first_python_s": first_python, "python_s": python_s,
                         "max_abs_diff": float(jnp.max(jnp.abs(x_loop - x_python)))})
            print(format_row(rows[-1]), flush=True)
    return rows


HEADER = ("| sampler | batch | steps (NFE) | compile s (whole loop) | compiled loop img/s | ms/step | "
          "Python loop: first call s | Python loop img/s | ms/step | compiled / Python | max abs diff |")


def format_row(r: dict) -> str:
    return (f"| {r['sampler']} | {r['batch']} | {r['steps']} | {r['compile_loop_s']:.2f} | "
            f"{r['batch'] / r['loop_s']:.1f} | {1e3 * r['loop_s'] / r['steps']:.2f} | {r['first_python_s']:.2f} | "
            f"{r['batch'] / r['python_s']:.1f} | {1e3 * r['python_s'] / r['steps']:.2f} | "
            f"{r['python_s'] / r['loop_s']:.2f}× | {r['max_abs_diff']:.1e} |")


FEW_STEP_RESULTS = os.path.join(ROOT, "experiments", "results", "few_step.json")


def consistency_sampler(run, sampling, steps: int, num_scales: int = 18, rho: float = 7.0, sigma_data: float = 0.5):
    """A consistency student's multistep sampler (the distill task's default discretisation) on ``run``'s model."""
    sigmas = consistency_sigmas(run.process, num_scales, rho)
    indices = consistency_sample_indices(num_scales, steps)
    transform = x0_transform_of(sampling)

    @jax.jit
    def fn(params, x_T, key, cond):
        return consistency_sample(run.process, denoiser_fn(run.model, params), x_T, key, cond, sigmas, indices,
                                  sigma_data, transform)

    return fn


def few_step_rows() -> list:
    """The few-step experiment's result rows (experiments/results/few_step.json), or [] when it has not been run."""
    if not os.path.exists(FEW_STEP_RESULTS):
        return []
    with open(FEW_STEP_RESULTS) as fh:
        return json.load(fh)["rows"]


def measured_quality(rows: list, method: str, nfe: int) -> str:
    """``FCD value [lo, hi]`` of (method, NFE) among the few-step experiment's ``rows``, or "-"."""
    row = next((r for r in rows if r["method"] == method and r["nfe"] == nfe), None)
    if row is None:
        return "-"
    lo, hi = row.get("fcd_ci", (float("nan"), float("nan")))
    return f"{row['fcd']:.2f} [{lo:.2f}, {hi:.2f}]"


def bench_distilled(config, batch: int, reps: int) -> list:
    """images/s of the teacher's guided 50-step DDIM and of the distilled samplers at ``batch``."""
    run = build_run(config)
    params = jax.jit(run.init_params)(jax.random.key(0))
    x_T = jax.random.normal(jax.random.key(1), (batch,) + tuple(run.image_shape))
    cond, _, _ = run.task.sample_cond(run, batch)
    args = (params, x_T, jax.random.key(2), {k: jnp.asarray(v) for k, v in cond.items()})
    teacher = config.sampling.copy_and_resolve_references()
    teacher.sampler, teacher.num_steps, teacher.eta = "ddim", 50, 0.0
    student = teacher.copy_and_resolve_references()
    student.guidance_scale, student.spacing = 1.0, "trailing"
    plans = [("teacher ddim 50 (reference)", 50, teacher.guidance_scale,
              lambda: run.task.make_sample_fn(run, teacher))]
    for n in (1, 2, 4, 8):
        s = student.copy_and_resolve_references()
        s.num_steps = n
        plans.append(("progressive", n, 1.0, lambda s=s: run.task.make_sample_fn(run, s)))
    for n in (1, 2, 4):
        plans.append(("consistency", n, 1.0, lambda n=n: consistency_sampler(run, student, n)))
    rows, measured = [], few_step_rows()
    for method, nfe, w, make in plans:
        fn = make()
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        jax.block_until_ready(compiled(*args))
        seconds = time_runs(compiled, args, reps)
        rows.append({"method": method, "nfe": nfe, "calls": nfe * (2 if w != 1.0 else 1), "batch": batch,
                     "compile_s": compile_s, "images_per_sec": batch / seconds, "quality": measured_quality(measured, method, nfe)})
        print(format_distilled(rows[-1]), flush=True)
    return rows


DISTILLED_HEADER = ("| sampler | NFE | network calls / image | batch | compile s | img/s | FCD [95% interval] "
                    "(few_step.json) |")


def format_distilled(r: dict) -> str:
    return (f"| {r['method']} | {r['nfe']} | {r['calls']} | {r['batch']} | {r['compile_s']:.2f} | "
            f"{r['images_per_sec']:.1f} | {r['quality']} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.py"))
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (= NFE) for every sampler")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke test: batches 1,4, 5 steps, 1 repetition")
    parser.add_argument("--out", default="", help="also write the table as markdown to this file")
    parser.add_argument("--distilled", action="store_true",
                        help="time the distilled few-step samplers against the teacher's 50-step guided DDIM instead")
    parser.add_argument("--distilled_batch", type=int, default=64)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.batches, args.reps = 5, "1,4", 1
    config = load_config(args.config)
    if args.distilled:
        intro = [f"# Sampling speed of the distilled samplers ({os.path.relpath(args.config, ROOT)})", "",
                 f"Machine: {machine_description()}. The config's U-Net with random weights (speed only), batch "
                 f"{args.distilled_batch}, the whole sampler compiled once; median of {args.reps} runs after "
                 f"compilation. The teacher uses its guidance scale {config.sampling.guidance_scale:g} (a conditional "
                 f"and an unconditional call per step); the students are sampled without guidance. Quality: FCD of "
                 f"the same (method, NFE) in experiments/results/few_step.json (trained models; \"-\": not "
                 f"measured).", "", DISTILLED_HEADER, "|" + "---|" * 7]
        print("\n".join(intro), flush=True)
        rows = bench_distilled(config, args.distilled_batch, args.reps)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write("\n".join(intro + [format_distilled(r) for r in rows]) + "\n")
            print(f"wrote {args.out}")
        return rows
    batches = [int(b) for b in args.batches.split(",")]
    m = config.model
    intro = [f"# Sampling speed: compiled loop vs Python loop ({os.path.relpath(args.config, ROOT)})", "",
             f"Machine: {machine_description()}. U-Net ch {m.ch}, mults {tuple(m.ch_mult)}, {m.num_res_blocks} res "
             f"blocks, {config.data.image_size}×{config.data.image_size} input, random weights; guidance scale "
             f"{config.sampling.guidance_scale:g}"
             + (" (doubles each call's batch)" if m.class_conditional and config.sampling.guidance_scale != 1.0
                else "")
             + f"; median of {args.reps} runs after compilation.", "", HEADER, "|" + "---|" * HEADER.count(" | ")
             + "---|"]
    print("\n".join(intro), flush=True)
    rows = bench(config, args.steps, batches, args.reps)
    if args.quick:
        bad = [r for r in rows if r["max_abs_diff"] > 1e-3]
        if bad:
            raise SystemExit(f"the Python loop and the compiled loop disagree: {bad}")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(intro + [format_row(r) for r in rows]) + "\n")
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
