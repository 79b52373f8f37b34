"""Benchmark: training-step throughput of a DiT-B/4 (Peebles & Xie 2023) on 32x32x4 latents, ours vs diffusers'
DiTTransformer2DModel, in the same process.

    python experiments/benchmarks/dit_train_step.py [--size B] [--patch 4] [--batch 8] [--steps 10] [--no-torch]

The DiT is matmul-bound (patch embedding, attention and MLP are dense layers), where XLA:CPU and PyTorch's oneDNN
should be at parity, unlike the U-Net's convolution gradients (experiments/benchmarks/RESULTS.md). Prints the
machine's measured float32 matmul rate; our jitted train step (class-conditional DiT, DDPM eps loss, forward, backward,
AdamW, EMA) in images/s and achieved FLOP/s (XLA's cost analysis of the compiled step) as a share of the matmul rate;
and, when torch and diffusers are installed (``pip install -e ".[bench]"``), the same step for diffusers'
``DiTTransformer2DModel`` with the identical configuration (its per-block embeddings, as ours with
``model.dit.shared_embedding=False``), timed in the same process and malloc environment, with the ratio.
"""
import argparse
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from ddpm_jax.data.sources import ArraySource  # noqa: E402
from ddpm_jax.default_config import base_config  # noqa: E402
from ddpm_jax.models.build import DIT_SIZES  # noqa: E402
from ddpm_jax.tasks import get_task  # noqa: E402
from malloc_env import MALLOC_ENV, reexec_with_malloc_env  # noqa: E402
from train_step import matmul_gflops, time_jax_train_step, time_torch_train_step  # noqa: E402

LATENT = (32, 32, 4)  # DiT's 256 px ImageNet latents
NUM_CLASSES = 1000


def dit_run(size: str, patch: int, shared: bool, dtype: str = "float32"):
    config = base_config()
    config.model.backbone = "dit"
    config.model.dit.size, config.model.dit.patch_size = size, patch
    config.model.dit.shared_embedding = shared
    config.model.class_conditional = True
    config.model.dtype = dtype
    config.data.image_size = LATENT[0]
    task = get_task(config.task)
    task.validate(config)
    labels = np.arange(NUM_CLASSES) % NUM_CLASSES
    source = ArraySource(np.zeros((NUM_CLASSES,) + LATENT, np.uint8), labels.astype(np.int64), "blank latents")
    return task.build(config, source=source)


def bench_ours(size: str, patch: int, batch: int, steps: int, shared: bool):
    data = {"image": jax.random.normal(jax.random.key(1), (batch,) + LATENT),
            "label": jax.random.randint(jax.random.key(2), (batch,), 0, NUM_CLASSES)}
    return time_jax_train_step(dit_run(size, patch, shared), data, steps, 1e-4)


def bench_diffusers(size: str, patch: int, batch: int, steps: int):
    import torch
    from diffusers import DiTTransformer2DModel

    hidden, depth, heads = DIT_SIZES[size]
    model = DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=hidden // heads,
                                  in_channels=LATENT[-1], out_channels=LATENT[-1], num_layers=depth,
                                  sample_size=LATENT[0], patch_size=patch, num_embeds_ada_norm=NUM_CLASSES)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    predict = lambda m, xt, t: m(xt, timestep=t, class_labels=labels).sample
    return time_torch_train_step(model, predict, torch.randn(batch, LATENT[-1], LATENT[0], LATENT[1]), steps, 1e-4)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="B", choices=sorted(DIT_SIZES))
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--shared_embedding", action="store_true",
                   help="ours with the paper's one shared embedding (diffusers always has per-block copies)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-reexec", action="store_true")
    args = p.parse_args()
    reexec_with_malloc_env(args.no_reexec)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
    print(f"malloc env: {' '.join(f'{k}={os.environ.get(k)}' for k in MALLOC_ENV)}")
    peak = matmul_gflops() if jax.default_backend() == "cpu" else float("nan")
    print(f"float32 matmul 2048^3 (jnp): {peak:.1f} GFLOP/s")
    name = f"DiT-{args.size}/{args.patch}"
    ours = bench_ours(args.size, args.patch, args.batch, args.steps, args.shared_embedding)
    achieved = ours["flops"] / ours["step_s"] / 1e9
    print(f"ours  {name} (JAX/Flax, {ours['params']:,} params) batch {args.batch}: {ours['step_s'] * 1e3:.0f} ms/step, "
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
    ref = bench_diffusers(args.size, args.patch, args.batch, args.steps)
    print(f"diffusers DiTTransformer2DModel {name} (torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"{ref['params']:,} params) batch {args.batch}: {ref['step_s'] * 1e3:.0f} ms/step, "
          f"{ref['images_per_s']:.2f} img/s")
    print(f"ratio ours/diffusers throughput: {ours['images_per_s'] / ref['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
