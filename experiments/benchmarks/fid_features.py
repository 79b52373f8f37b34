"""Benchmark: FID feature extraction (bilinear resize 32 -> 299, 2x - 1, Inception pool3 + logits), images/s.

    python experiments/benchmarks/fid_features.py [--only ours|torch] [--images 100] [--batch 25]

Ours is `InceptionFeatures` (one jitted resize + network per batch); the reference is pytorch-fid's
`InceptionV3([3], resize_input=True, normalize_input=True)` in eval mode under `torch.no_grad()`, with
`torch.set_num_threads(os.cpu_count())`. Both use the same deterministic random weights
(tests/golden/inception_random_weights.py; pretrained weights change nothing in the FLOPs) and the same uint8 32x32
images. Without --only, each side whose framework imports is run; when JAX and torch live in different environments,
run `--only ours` and `--only torch` back to back. Like train_step.py, the script re-executes itself once with glibc
malloc settings that keep PyTorch on CPU from swinging (`--no-reexec` to skip).
"""
import argparse
import json
import os
import platform
import sys
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))

import numpy as np  # noqa: E402

from inception_random_weights import random_state_dict  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from malloc_env import reexec_with_malloc_env  # noqa: E402
GOLDEN = os.path.join(ROOT, "tests", "golden", "inception_pytorch_fid.npz")


def random_weights() -> dict:
    """The golden test's random FID Inception state dict (names and shapes recorded from pytorch-fid)."""
    data = np.load(GOLDEN)
    return random_state_dict(json.loads(str(data["shapes_json"])), int(data["seed"]))


def bench_ours(images: np.ndarray, batch: int) -> dict:
    import jax

    from ddpm_jax.evaluation.features import InceptionFeatures
    from ddpm_jax.models.inception import params_from_torch_state_dict

    extract = InceptionFeatures(params_from_torch_state_dict(random_weights()), batch_size=batch)
    t0 = time.perf_counter()
    extract(images[:batch])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract(images)
    dt = time.perf_counter() - t0
    return {"name": f"ours (jax {jax.__version__}, {jax.devices()[0].platform})", "images_per_s": len(images) / dt,
            "compile_s": compile_s}


def bench_torch(images: np.ndarray, batch: int) -> dict:
    import pytorch_fid
    import pytorch_fid.inception as pfi
    import torch

    torch.set_num_threads(os.cpu_count())
    weights = {k: torch.from_numpy(v) for k, v in random_weights().items()}
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: weights):
        model = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2)

    def run(n):
        with torch.no_grad():
            for start in range(0, n, batch):
                model(x[start:start + batch].float() / 255)[0].flatten(1)

    run(batch)
    t0 = time.perf_counter()
    run(len(images))
    dt = time.perf_counter() - t0
    return {"name": f"pytorch-fid {pytorch_fid.__version__} (torch {torch.__version__})",
            "images_per_s": len(images) / dt}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("ours", "torch"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--no-reexec", action="store_true")
    args = parser.parse_args()
    reexec_with_malloc_env(args.no_reexec)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"{args.images} uint8 32x32 images, batch {args.batch}")
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    results = []
    for side, bench in (("ours", bench_ours), ("torch", bench_torch)):
        if args.only not in (None, side):
            continue
        try:
            results.append(bench(images, args.batch))
        except ImportError as e:
            print(f"{side}: skipped ({e})")
    for r in results:
        extra = f", compile {r['compile_s']:.1f} s" if "compile_s" in r else ""
        print(f"{r['name']}: {r['images_per_s']:.2f} images/s{extra}")
    if len(results) == 2:
        print(f"ratio ours / pytorch-fid: {results[0]['images_per_s'] / results[1]['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
