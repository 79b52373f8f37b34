"""Accelerator check: the training step, sampling and the whole quickstart loop on a GPU/TPU, with timings.

    python experiments/benchmarks/accelerator_check.py --out DIR [--batch 128] [--steps 20]

1. DDPM CIFAR-10 U-Net (35.7M params) train step at --batch, float32 and bfloat16 compute: compile time, ms/step,
   images/s, achieved TFLOP/s (XLA cost analysis);
2. sampling with that network (random weights; speed only): DDIM 50 steps and DPM-Solver++(2M) 20 steps, images/s;
3. the quickstart config trained end to end through ``ddpm_jax.training.loop.train`` (checkpoints, metrics, grid).
Writes DIR/accelerator_check.md, and the quickstart grid and metrics beside it.
"""
import argparse
import importlib.util
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from ddpm_jax import diffusion  # noqa: E402
from ddpm_jax.models.denoiser import denoiser_fn  # noqa: E402
from ddpm_jax.training import loop  # noqa: E402
from ddpm_jax.training.steps import make_train_step  # noqa: E402
from train_step import ddpm_cifar10_run  # noqa: E402

LINES = []

def report(line: str):
    print(line, flush=True)
    LINES.append(line)

def timed(fn, *args, reps: int):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = compiled(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(reps):
        out = compiled(*args)
    jax.block_until_ready(out)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return compile_s, (time.perf_counter() - t0) / reps, float((cost or {}).get("flops", 0.0))

def train_step_bench(batch: int, reps: int, dtype):
    run = ddpm_cifar10_run(jnp.dtype(dtype).name)
    tx = optax.adamw(2e-4)
    state = jax.jit(loop.make_init_fn(run, tx))(jax.random.key(0))
    step = jax.jit(make_train_step(run.task.loss(run), tx, lambda s: 2e-4, 0.9999))
    data = {"image": jax.random.normal(jax.random.key(1), (batch, 32, 32, 3)), "label": jnp.zeros((batch,), jnp.int32)}
    compile_s, dt, flops = timed(step, state, data, reps=reps)
    report(f"| train step, {jnp.dtype(dtype).name} compute | {batch} | {compile_s:.1f} | {dt * 1e3:.1f} | "
           f"{batch / dt:.0f} | {flops / dt / 1e12:.1f} |")
    return state.ema_params

def sampling_bench(params, batch: int, sampler: str, steps: int):
    run = ddpm_cifar10_run()

    @jax.jit
    def sample(params, x_T, key):
        return diffusion.sample(denoiser_fn(run.model, params), run.schedule, x_T, key, sampler=sampler,
                                num_steps=steps)

    x_T = jax.random.normal(jax.random.key(2), (batch, 32, 32, 3))
    compile_s, dt, _ = timed(sample, params, x_T, jax.random.key(3), reps=2)
    report(f"| sample {sampler}, {steps} steps (whole loop jitted) | {batch} | {compile_s:.1f} | {dt * 1e3:.0f} | "
           f"{batch / dt:.0f} | |")

def quickstart(out: str, num_steps: int = 0):
    spec = importlib.util.spec_from_file_location("quickstart", os.path.join(ROOT, "configs", "quickstart.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    if num_steps:
        cfg.training.num_steps = num_steps
    cfg.training.sample_every = cfg.training.num_steps
    workdir = os.path.join("/tmp", "quickstart_accel")
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    loop.train(cfg, workdir)
    total = time.perf_counter() - t0
    shutil.copy(os.path.join(workdir, "samples", f"step_{cfg.training.num_steps:07d}.png"),
                os.path.join(out, "quickstart_samples.png"))
    shutil.copy(os.path.join(workdir, "metrics.jsonl"), os.path.join(out, "quickstart_metrics.jsonl"))
    report(f"\nquickstart (configs/quickstart.py, {cfg.training.num_steps} steps, batch {cfg.training.batch_size}) "
           f"end to end incl. compilation, checkpoints and sample grids: {total:.1f} s")

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = p.parse_args()
    sample_batch, quick_steps = (2, 10) if args.smoke else (256, 0)
    os.makedirs(args.out, exist_ok=True)
    dev = jax.devices()[0]
    report(f"# Accelerator check\n\ndevice: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}), "
           f"jax {jax.__version__}\n")
    report("| what | batch | compile s | ms/step (or per run) | images/s | TFLOP/s |")
    report("| --- | --- | --- | --- | --- | --- |")
    params = train_step_bench(args.batch, args.steps, jnp.float32)
    train_step_bench(args.batch, args.steps, jnp.bfloat16)
    sampling_bench(params, sample_batch, "ddim", 50)
    sampling_bench(params, sample_batch, "dpm_solver_pp_2m", 20)
    quickstart(args.out, quick_steps)
    with open(os.path.join(args.out, "accelerator_check.md"), "w") as f:
        f.write("\n".join(LINES) + "\n")

if __name__ == "__main__":
    main()
