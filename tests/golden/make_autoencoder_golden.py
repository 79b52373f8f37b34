"""Regenerate tests/golden/autoencoder_diffusers.npz: small diffusers `AutoencoderKL`s, their weights and outputs.

Reference: diffusers 0.35.2 `AutoencoderKL` on torch 2.13.0+cpu (both versions are also printed and stored in the npz).
Two models, each with every weight perturbed so no layer is an identity or zero, in eval mode:
- `kl`: the Stable Diffusion VAE shrunk to 3 channels, 16x16 inputs, channels (8, 16), 1 ResBlock per level,
  2 latent channels and 4 GroupNorm groups (attention only in the middle block);
- `attn`: 1 channel, channels (8, 16, 16), 2 ResBlocks per level, 3 latent channels, and self-attention at level 1
  (`AttnDownEncoderBlock2D` / `AttnUpDecoderBlock2D`).
For each: the state dict, input x [2, C, 16, 16], posterior mean and logvar of `encode(x).latent_dist`, its `kl()`,
and `decode(mean)`. Also the parameter count and state-dict shapes of the full Stable Diffusion VAE.

Run: python tests/golden/make_autoencoder_golden.py   (needs torch and diffusers; the tests need neither)
"""
import json
import os
import sys

import diffusers
import diffusers.utils.import_utils
import numpy as np
import torch

diffusers.utils.import_utils._transformers_available = False  # AutoencoderKL needs no transformers (may be mis-pinned)
from diffusers import AutoencoderKL  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import param_count, perturb_  # noqa: E402

SD_VAE_CONFIG = dict(  # stabilityai/sd-vae-ft-mse config.json (the same network as SD v1's VAE)
    in_channels=3, out_channels=3, block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
    norm_num_groups=32, act_fn="silu", sample_size=256,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
SMALL_CONFIGS = {
    "kl": dict(SD_VAE_CONFIG, sample_size=16, block_out_channels=(8, 16), layers_per_block=1, latent_channels=2,
               norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2),
    "attn": dict(SD_VAE_CONFIG, in_channels=1, out_channels=1, sample_size=16, block_out_channels=(8, 16, 16),
                 layers_per_block=2, latent_channels=3, norm_num_groups=4,
                 down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"),
                 up_block_types=("UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D")),
}
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "autoencoder_diffusers.npz")


def golden_arrays(tag: str, config: dict, seed: int) -> dict:
    """Weights and outputs of one seeded, perturbed small model, keyed `{tag}/...`."""
    torch.manual_seed(seed)
    model = AutoencoderKL(**config).eval()
    perturb_(model, torch.Generator().manual_seed(seed + 1))
    x = torch.randn(2, config["in_channels"], 16, 16, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():
        posterior = model.encode(x).latent_dist
        decoded = model.decode(posterior.mean).sample
        kl = posterior.kl()
    print(f"{tag}: {param_count(model):,} params; |mean| max {posterior.mean.abs().max():.3f}, logvar in "
          f"[{posterior.logvar.min():.3f}, {posterior.logvar.max():.3f}], |decoded| max {decoded.abs().max():.3f}, "
          f"kl {kl.numpy()}")
    arrays = dict(x=x, mean=posterior.mean, logvar=posterior.logvar, decoded=decoded, kl=kl)
    out = {f"{tag}/{k}": v.numpy().astype(np.float32) for k, v in arrays.items()}
    out.update({f"{tag}/state_dict/{k}": v.numpy().astype(np.float32) for k, v in model.state_dict().items()})
    out[f"{tag}/config_json"] = np.array(json.dumps(config))
    out[f"{tag}/param_count"] = np.int64(param_count(model))
    return out


def main() -> None:
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    full = AutoencoderKL(**SD_VAE_CONFIG)
    full_count = param_count(full)
    full_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
    arrays = {}
    for i, (tag, config) in enumerate(SMALL_CONFIGS.items()):
        arrays.update(golden_arrays(tag, config, seed=10 * i))
    np.savez(
        OUT_PATH, sd_vae_param_count=np.int64(full_count), sd_vae_shapes_json=np.array(json.dumps(full_shapes)),
        diffusers_version=np.array(diffusers.__version__), torch_version=np.array(torch.__version__), **arrays,
    )
    print(f"Stable Diffusion AutoencoderKL params: {full_count:,}")
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH):,} bytes)")


if __name__ == "__main__":
    main()
