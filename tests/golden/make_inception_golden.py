"""Regenerate tests/golden/inception_pytorch_fid.npz: pytorch-fid's FID InceptionV3 on fixed images, random weights.

Reference: pytorch-fid 0.3.0 `InceptionV3([3], resize_input=False, normalize_input=True)` on torch 2.14.1 /
torchvision 0.29.1 (CPU; the versions are also printed and stored in the npz). `fid_inception_v3()` is pytorch-fid's
own code; only its `load_state_dict_from_url` is replaced, so that instead of downloading the FID weights it loads
deterministic random weights made by `inception_random_weights.random_state_dict(shapes, SEED)` (strict load: names
and shapes must match). The npz stores the seed and the state-dict names and shapes (not the 95 MB of weights; the test
regenerates them), the uint8 input images, pool3 (block 3) features, logits = fc(pool3) and the parameter count.

Run: python tests/golden/make_inception_golden.py   (needs torch, torchvision and pytorch-fid; the tests need none)
"""
import json
import os
from unittest import mock

import numpy as np
import pytorch_fid
import pytorch_fid.inception as pfi
import torch
import torchvision

from inception_random_weights import random_state_dict, smooth_images

SEED = 0
NUM_IMAGES = 3
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "inception_pytorch_fid.npz")


def state_dict_shapes() -> tuple[list, int]:
    """([(name, shape)] of `fid_inception_v3()`'s state dict, its parameter count), loading no weights."""
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(torchvision.models.Inception3, "load_state_dict", lambda self, sd: None):
        model = pfi.fid_inception_v3()
    params = sum(p.numel() for p in model.parameters())
    return [(k, list(v.shape)) for k, v in model.state_dict().items()], params


def main() -> None:
    versions = dict(pytorch_fid=pytorch_fid.__version__, torch=torch.__version__, torchvision=torchvision.__version__)
    print(versions)
    shapes, param_count = state_dict_shapes()
    weights = {k: torch.from_numpy(v) for k, v in random_state_dict(shapes, SEED).items()}
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: weights):
        model = pfi.InceptionV3([3], resize_input=False, normalize_input=True).eval()
    images = smooth_images(NUM_IMAGES, 299, SEED)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        pool3 = model(x)[0][:, :, 0, 0]
        logits = torch.nn.functional.linear(pool3, weights["fc.weight"], weights["fc.bias"])
    np.savez_compressed(
        OUT_PATH, images=images, pool3=pool3.numpy(), logits=logits.numpy(), seed=np.int64(SEED),
        shapes_json=np.array(json.dumps(shapes)), param_count=np.int64(param_count),
        **{f"{k}_version": np.array(v) for k, v in versions.items()})
    print(f"params {param_count:,}; {len(shapes)} state-dict tensors; pool3 mean {pool3.mean():.3f} "
          f"std {pool3.std():.3f} max {pool3.max():.3f}; logits std {logits.std():.3f}")
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH):,} bytes)")


if __name__ == "__main__":
    main()
