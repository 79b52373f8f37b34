"""Regenerate tests/golden/resize_{pytorch,tf1}.npz: bilinear resizes by the two FID references.

- `--mode pytorch`: torch.nn.functional.interpolate(mode="bilinear", align_corners=False) on NCHW float32 (what
  pytorch-fid does), torch 2.14.1 CPU.
- `--mode tf1`: tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False) (the op in the TTUR
  FID graph), tensorflow-cpu 2.21.0.
The framework version is also stored in the npz. Inputs are seeded uniform [0, 1) float32 batches; for the 299x299
outputs only rows/columns `SUBSET` are stored, plus the float64 sum of the whole output.

Run: python tests/golden/make_resize_golden.py --mode pytorch   (in an environment with torch)
     python tests/golden/make_resize_golden.py --mode tf1       (in an environment with tensorflow)
"""
import argparse
import os

import numpy as np

CASES = {  # name: (input shape NHWC, output (height, width))
    "up_8_to_299": ((2, 8, 8, 3), (299, 299)),
    "up_32_to_299": ((2, 32, 32, 3), (299, 299)),
    "up_8_to_13x37": ((2, 8, 8, 3), (13, 37)),
    "down_48x64_to_17x23": ((2, 48, 64, 3), (17, 23)),
}
SUBSET = np.unique(np.r_[np.arange(0, 299, 11), 298])
GOLDEN_DIR = os.path.dirname(os.path.abspath(__file__))


def case_input(name: str) -> np.ndarray:
    shape, _ = CASES[name]
    return np.random.default_rng(sorted(CASES).index(name)).random(shape, dtype=np.float32)


def resize_torch(x: np.ndarray, size) -> np.ndarray:
    import torch

    out = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear",
                                          align_corners=False)
    return out.permute(0, 2, 3, 1).numpy()


def resize_tf1(x: np.ndarray, size) -> np.ndarray:
    import tensorflow as tf

    return tf.compat.v1.image.resize_bilinear(x, size, align_corners=False, half_pixel_centers=False).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("pytorch", "tf1"), required=True)
    mode = parser.parse_args().mode
    if mode == "pytorch":
        import torch as framework
    else:
        import tensorflow as framework
    resize = resize_torch if mode == "pytorch" else resize_tf1
    arrays = {"version": np.array(f"{framework.__name__} {framework.__version__}"), "subset": SUBSET}
    for name, (_, size) in CASES.items():
        x = case_input(name)
        out = resize(x, size)
        arrays[f"{name}/input"] = x
        arrays[f"{name}/sum"] = np.float64(out.astype(np.float64).sum())
        arrays[f"{name}/output"] = out[:, SUBSET][:, :, SUBSET] if size == (299, 299) else out
    path = os.path.join(GOLDEN_DIR, f"resize_{mode}.npz")
    np.savez_compressed(path, **arrays)
    print(f"{arrays['version']}: wrote {path} ({os.path.getsize(path):,} bytes)")


if __name__ == "__main__":
    main()
