"""Regenerate tests/golden/unet_diffusers.npz: a small diffusers `UNet2DModel` in DDPM style, its output, weights.

Reference: diffusers 0.42.1 `UNet2DModel` on torch 2.13.0+cpu (both versions are also printed and stored in the npz).
The model is the `google/ddpm-cifar10-32` configuration shrunk to 16x16 inputs, channels (8, 16, 16), attention at
8x8 with 2 heads, 4 GroupNorm groups and a 10-class label embedding; every weight is perturbed so no layer is an
identity or zero. Also stores the parameter count and state-dict shapes of the full DDPM CIFAR-10 `UNet2DModel`.

Run: python tests/golden/make_unet_golden.py   (needs torch and diffusers; the tests need neither)
"""
import json
import os
import sys

import diffusers
import diffusers.utils.import_utils
import numpy as np
import torch

diffusers.utils.import_utils._transformers_available = False  # UNet2DModel needs no transformers (may be mis-pinned)
from diffusers import UNet2DModel  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import param_count, perturb_  # noqa: E402

DDPM_CIFAR10_CONFIG = dict(  # google/ddpm-cifar10-32 unet/config.json
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32, act_fn="silu",
    time_embedding_type="positional", mid_block_scale_factor=1, center_input_sample=False,
)
SMALL_CONFIG = dict(
    DDPM_CIFAR10_CONFIG, sample_size=16, block_out_channels=(8, 16, 16),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=8, norm_num_groups=4,
    num_class_embeds=10, dropout=0.1,
)
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unet_diffusers.npz")


def main() -> None:
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    full = UNet2DModel(**DDPM_CIFAR10_CONFIG)
    full_count = param_count(full)
    full_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
    torch.manual_seed(0)
    model = UNet2DModel(**SMALL_CONFIG).eval()
    perturb_(model, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([10.0, 567.5])
    y = torch.tensor([3, 7])
    with torch.no_grad():
        out = model(x, t, class_labels=y).sample
    state = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items() if ".Conv2d_0." not in k}
    np.savez(
        OUT_PATH, x=x.numpy(), t=t.numpy(), y=y.numpy(), out=out.numpy(),
        ddpm_cifar10_param_count=np.int64(full_count), ddpm_cifar10_shapes_json=np.array(json.dumps(full_shapes)), small_param_count=np.int64(param_count(model)),
        config_json=np.array(json.dumps(SMALL_CONFIG)), diffusers_version=np.array(diffusers.__version__),
        torch_version=np.array(torch.__version__), **{f"state_dict/{k}": v for k, v in state.items()},
    )
    print(f"DDPM CIFAR-10 UNet2DModel params: {full_count:,}; small model params: {param_count(model):,}")
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH):,} bytes), |out| max {out.abs().max():.3f}")


if __name__ == "__main__":
    main()
