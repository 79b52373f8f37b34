"""Benchmark: the streaming input pipeline (ArrayRecord -> grain threads -> decoded, resized, batched) vs the training
step's consumption, and the pipeline's memory.

    python experiments/benchmarks/input_pipeline.py [--data DIR] [--config configs/quickstart.py] [--image_size 32]
        [--batch 64] [--threads 1,2,4] [--batches 200] [--train_steps 5]

``--data``: a prepared dataset (``python -m ddpm_jax.data.prepare``); default: Fashion-MNIST's train split prepared
into a temporary folder first (Debian's dataset-fashion-mnist). Each pipeline setting runs in a fresh subprocess, so its
peak RSS (VmHWM) is its own: reading ``--batches`` batches after one warm-up batch, in images/s, with the RSS growth
over the reading. The in-memory pipeline (the same batches from the IDX arrays) is the reference row. The training
row: ``--config`` at ``--image_size`` with ``data.name=arrayrecord:DIR``, its jitted train step timed over
``--train_steps`` steps after compilation (images/s consumed). Prints one markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def status(key: str) -> int:
    """A /proc/self/status figure in bytes (VmHWM: peak resident set; VmRSS: now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def load_config(path: str, data: str, image_size: int, batch: int):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.name, c.data.image_size, c.training.batch_size = f"arrayrecord:{data}", image_size, batch
    return c


def one_pipeline(args) -> dict:
    """Time ``--batches`` batches of one setting in this (fresh) process."""
    from ddpm_jax.data import BatchPipeline, load_source
    from ddpm_jax.data.streaming import GrainPipeline

    source = load_source(f"arrayrecord:{args.data}")
    if args.mode == "memory":
        import numpy as np

        from ddpm_jax.data import ArraySource

        images, labels = source.take(np.arange(len(source)))  # the same examples, decoded once into memory
        source = ArraySource(images, labels, source.name, source.class_names)
        pipe = BatchPipeline(source, args.batch, args.image_size, seed=0)
    else:
        threads = int(args.threads)
        pipe = GrainPipeline(source, args.batch, args.image_size, seed=0, threads=threads,
                             prefetch=max(4, 2 * threads), workers=args.workers)
    pipe.batch(0)  # warm-up: readers opened, threads started
    rss0, hwm0 = status("VmRSS"), status("VmHWM")
    t0 = time.perf_counter()
    for step in range(1, args.batches + 1):
        pipe.batch(step)
    seconds = time.perf_counter() - t0
    if hasattr(pipe, "close"):
        pipe.close()
    return {"images_per_s": args.batches * args.batch / seconds, "ms_per_batch": 1000 * seconds / args.batches,
            "rss_start": rss0, "hwm_growth": status("VmHWM") - hwm0, "hwm": status("VmHWM")}


def train_consumption(args) -> dict:
    """images/s the jitted train step of ``--config`` consumes (batches from the streaming pipeline)."""
    import jax

    from ddpm_jax.data import make_pipeline
    from ddpm_jax.training import loop, sharding
    from ddpm_jax.training.steps import make_train_step

    config = load_config(args.config, args.data, args.image_size, args.batch)
    setup = loop.build_training(config)
    state = jax.jit(setup.init_fn)(jax.random.key(0))
    step_fn = jax.jit(make_train_step(setup.loss_fn(), setup.tx, setup.lr_schedule, config.optim.ema_decay),
                      donate_argnums=0)
    pipe = make_pipeline(config, setup.run.source)
    batches = [sharding.global_batch(pipe.batch(i), setup.mesh) for i in range(args.train_steps + 1)]
    pipe.close()
    t0 = time.perf_counter()
    state, metrics = step_fn(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches[1:]:
        state, metrics = step_fn(state, b)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - t0
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"images_per_s": args.train_steps * args.batch / seconds, "ms_per_step": 1000 * seconds / args.train_steps,
            "compile_s": compile_s, "params": params, "hwm": status("VmHWM")}


def child(args, **overrides) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), f"--data={args.data}", f"--config={args.config}",
           f"--image_size={args.image_size}", f"--batch={args.batch}", f"--batches={args.batches}",
           f"--train_steps={args.train_steps}"] + [f"--{k}={v}" for k, v in overrides.items()]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="", help="prepared dataset folder (default: Fashion-MNIST train, prepared now)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "quickstart.py"))
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", default="1,2,4")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--train_steps", type=int, default=5)
    p.add_argument("--mode", default="", help=argparse.SUPPRESS)  # child: memory | grain | train
    args = p.parse_args(argv)
    if args.mode:
        print(json.dumps(train_consumption(args) if args.mode == "train" else one_pipeline(args)))
        return
    if not args.data:
        from ddpm_jax.data.prepare import main as prepare

        args.data = os.path.join(tempfile.mkdtemp(prefix="input_pipeline_"), "fashion_mnist")
        print(f"preparing Fashion-MNIST (train) in {args.data} ...", flush=True)
        if prepare(["--source=fashion_mnist", f"--out={args.data}"]):
            sys.exit(1)
    from ddpm_jax.data.arrayrecord import ArrayRecordSource

    source = ArrayRecordSource(args.data)
    size = sum(os.path.getsize(p) for p in source.paths)
    print(f"\ndataset {args.data}: {len(source):,} examples {'x'.join(map(str, source.image_shape))}, "
          f"{size / 2**20:.1f} MiB on disk; batch {args.batch} at {args.image_size}x{args.image_size}; "
          f"{args.batches} batches timed after one warm-up; {os.cpu_count()} CPUs\n")
    rows = [("in-memory BatchPipeline (reference)", child(args, mode="memory"))]
    for threads in [int(t) for t in args.threads.split(",")]:
        label = f"grain, {threads} thread{'s' if threads != 1 else ''}" + (
            f", {args.workers} worker processes" if args.workers else "")
        rows.append((label, child(args, mode="grain", threads=threads, workers=args.workers)))
    train = child(args, mode="train")
    print("| pipeline | images/s | ms/batch | peak RSS growth while reading | process RSS |")
    print("| --- | --- | --- | --- | --- |")
    for label, r in rows:
        print(f"| {label} | {r['images_per_s']:,.0f} | {r['ms_per_batch']:.2f} | {r['hwm_growth'] / 2**20:.1f} MiB "
              f"| {r['hwm'] / 2**20:.0f} MiB |")
    print(f"| **train step consumes** ({os.path.basename(args.config)} at {args.image_size}px, "
          f"{train['params']:,} params, compile {train['compile_s']:.1f} s) | {train['images_per_s']:,.0f} | "
          f"{train['ms_per_step']:.1f} (per step) | | {train['hwm'] / 2**20:.0f} MiB |")
    best = max(r["images_per_s"] for label, r in rows[1:])
    print(f"\nfastest grain setting / train-step consumption: {best / train['images_per_s']:.1f}x")


if __name__ == "__main__":
    main()
