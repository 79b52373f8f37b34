"""Benchmark: training-step throughput of the DDPM CIFAR-10 U-Net (35.7M params), ours vs diffusers' UNet2DModel.

    python experiments/benchmarks/train_step.py [--batch 8] [--steps 10] [--no-torch]

Prints: the machine's measured float32 matmul rate; our jitted train step (forward, backward, AdamW, EMA) in images/s
and achieved FLOP/s (FLOPs from XLA's cost analysis of the compiled step); and, when torch and diffusers are installed
(`pip install -e ".[bench]"`), the same step for diffusers' UNet2DModel with the identical configuration, timed in the
same process and environment, with the ratio. glibc's malloc makes PyTorch on CPU swing several-fold, so the script
re-executes itself once with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_/MALLOC_TOP_PAD_ set (unless --no-reexec);
both frameworks then run under the same settings.
"""
import argparse
import importlib.util
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ddpm_jax.data.sources import ArraySource  # noqa: E402
from ddpm_jax.tasks import get_task  # noqa: E402
from ddpm_jax.training import loop  # noqa: E402
from ddpm_jax.training.steps import make_train_step  # noqa: E402
from malloc_env import MALLOC_ENV, reexec_with_malloc_env  # noqa: E402


def ddpm_cifar10_run(dtype: str = "float32"):
    """The run of configs/ddpm_cifar10.py (the DDPM CIFAR-10 U-Net, 35.7M params, its diffusion process and loss)
    with ``model.dtype`` = ``dtype``, built on a stand-in source of one blank 32x32 RGB image: the benchmarks feed
    random data (speed only), so CIFAR-10 itself is not needed."""
    spec = importlib.util.spec_from_file_location("ddpm_cifar10", os.path.join(ROOT, "configs", "ddpm_cifar10.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.dtype = dtype
    task = get_task(config.task)
    task.validate(config)
    return task.build(config, source=ArraySource(np.zeros((1, 32, 32, 3), np.uint8), None, "blank 32x32"))


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def time_jax_train_step(run, data: dict, steps: int, lr: float) -> dict:
    """Our jitted train step (fwd, bwd, AdamW, EMA) of ``run`` on the fixed batch ``data``: time per step after
    compilation, images/s, FLOPs per step (XLA cost analysis), compile time and parameter count."""
    tx = optax.adamw(lr)
    state = jax.jit(loop.make_init_fn(run, tx))(jax.random.key(0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    step = jax.jit(make_train_step(run.task.loss(run), tx, lambda s: lr, 0.9999), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    state, m = compiled(state, data)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, data)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    batch = len(data["image"])
    return {"step_s": dt, "images_per_s": batch / dt, "flops": float(cost.get("flops", 0.0)), "compile_s": compile_s,
            "params": n_params}


def time_torch_train_step(model, predict, x0, steps: int, lr: float) -> dict:
    """The same step in PyTorch eager: eps loss of ``predict(model, x_t, t)`` on ``x0`` (NCHW), AdamW, EMA 0.9999."""
    import torch

    torch.set_num_threads(os.cpu_count())
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    ema = [p.detach().clone() for p in model.parameters()]
    batch = x0.shape[0]

    def one_step():
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        ab = torch.rand(batch, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        loss = torch.mean((predict(model, xt, t) - noise) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.9999).add_(p.detach(), alpha=1e-4)

    model.train()
    one_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        one_step()
    dt = (time.perf_counter() - t0) / steps
    return {"step_s": dt, "images_per_s": batch / dt, "params": n_params}


def bench_ours(batch: int, steps: int):
    data = {"image": jax.random.normal(jax.random.key(1), (batch, 32, 32, 3)), "label": jnp.zeros((batch,), jnp.int32)}
    return time_jax_train_step(ddpm_cifar10_run(), data, steps, 2e-4)


def bench_diffusers(batch: int, steps: int):
    import torch
    from diffusers import UNet2DModel

    model = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                        block_out_channels=(128, 256, 256, 256),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                        dropout=0.1, attention_head_dim=None, norm_num_groups=32, flip_sin_to_cos=False,
                        freq_shift=1, resnet_time_scale_shift="default", add_attention=True)
    return time_torch_train_step(model, lambda m, xt, t: m(xt, t).sample, torch.randn(batch, 3, 32, 32), steps, 2e-4)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-reexec", action="store_true")
    args = p.parse_args()
    reexec_with_malloc_env(args.no_reexec)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    print(f"malloc env: {' '.join(f'{k}={os.environ.get(k)}' for k in MALLOC_ENV)}")
    peak = matmul_gflops() if jax.default_backend() == "cpu" else float("nan")
    print(f"float32 matmul 2048^3 (jnp): {peak:.1f} GFLOP/s")
    ours = bench_ours(args.batch, args.steps)
    achieved = ours["flops"] / ours["step_s"] / 1e9
    print(f"ours  (JAX/Flax, 35,746,307 params) batch {args.batch}: {ours['step_s'] * 1e3:.0f} ms/step, "
          f"{ours['images_per_s']:.2f} img/s, {ours['flops'] / 1e9:.1f} GFLOP/step (XLA cost analysis), "
          f"{achieved:.1f} GFLOP/s = {achieved / peak:.0%} of matmul rate; compile {ours['compile_s']:.1f} s")
    if args.no_torch:
        return
    try:
        import diffusers  # noqa: F401
        import torch
    except ImportError:
        print("diffusers/torch not installed: pip install -e '.[bench]' for the PyTorch comparison")
        return
    ref = bench_diffusers(args.batch, args.steps)
    print(f"diffusers UNet2DModel (torch {torch.__version__}, {ref['params']:,} params) batch {args.batch}: "
          f"{ref['step_s'] * 1e3:.0f} ms/step, {ref['images_per_s']:.2f} img/s")
    print(f"ratio ours/diffusers throughput: {ours['images_per_s'] / ref['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
