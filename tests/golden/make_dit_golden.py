"""Regenerate tests/golden/dit_diffusers.npz: small diffusers `DiTTransformer2DModel`s, their weights and outputs.

Reference: diffusers 0.42.1 `DiTTransformer2DModel` on torch 2.13.0+cpu (both versions are also printed and stored in
the npz). Two class-conditional models, every weight perturbed (so the adaLN-Zero and output layers, zero in a fresh
DiT, are not zero, and no layer is an identity), in eval mode:
- `p2`: sample_size 8, patch 2, 4 -> 8 channels (learned sigma), 2 layers, 2 heads of dim 16, 10 classes;
- `p4`: sample_size 8, patch 4, 4 -> 4 channels, 1 layer, 2 heads of dim 16, 5 classes, and `norm_eps=0.5` (the
  MLP sublayer's LayerNorm epsilon; the default 1e-5 is invisible at float32 tolerance, this makes its plumbing show).
For each: the state dict, x [3, 4, 8, 8] (NCHW), timesteps (one fractional), class labels (one the null class
`num_embeds_ada_norm`, the row diffusers' `LabelEmbedding` keeps for classifier-free guidance) and the output.
Also: diffusers' `get_2d_sincos_pos_embed` for a square and a rectangular grid (with and without its `base_size`
rescaling), diffusers' default `norm_eps`, and the parameter count and state-dict shapes of DiT-XL/2 at 256 px
(built on the meta device).

Run: /tmp/refvenv/bin/python tests/golden/make_dit_golden.py   (needs torch and diffusers; the tests need neither)
"""
import inspect
import json
import os
import sys

import diffusers
import diffusers.utils.import_utils
import numpy as np
import torch

diffusers.utils.import_utils._transformers_available = False  # the DiT needs no transformers (may be mis-pinned)
from diffusers import DiTTransformer2DModel  # noqa: E402
from diffusers.models.embeddings import get_2d_sincos_pos_embed  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import param_count, perturb_  # noqa: E402

DIT_XL_2_CONFIG = dict(  # facebook/DiT-XL-2-256 transformer: 32x32x4 latents, learned sigma, ImageNet classes
    sample_size=32, patch_size=2, in_channels=4, out_channels=8, num_layers=28, num_attention_heads=16,
    attention_head_dim=72, num_embeds_ada_norm=1000,
)
CONFIGS = {
    "p2": dict(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
               attention_head_dim=16, num_embeds_ada_norm=10),
    "p4": dict(sample_size=8, patch_size=4, in_channels=4, out_channels=None, num_layers=1, num_attention_heads=2,
               attention_head_dim=16, num_embeds_ada_norm=5, norm_eps=0.5),
}
LABELS = {"p2": [3, 10, 7], "p4": [0, 5, 4]}  # 10 / 5: the null class
POS_EMBED_CASES = {"sq": dict(embed_dim=32, grid_size=4, base_size=4),
                   "rect": dict(embed_dim=16, grid_size=(3, 5), base_size=3),
                   "rescaled": dict(embed_dim=16, grid_size=(6, 6), base_size=4)}
OUT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dit_diffusers.npz")


def main() -> None:
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}")
    with torch.device("meta"):
        full = DiTTransformer2DModel(**DIT_XL_2_CONFIG)
    full_count = param_count(full)
    full_shapes = {k: list(v.shape) for k, v in full.state_dict().items()}
    arrays = dict(dit_xl_2_param_count=np.int64(full_count), dit_xl_2_shapes_json=np.array(json.dumps(full_shapes)),
                  dit_xl_2_config_json=np.array(json.dumps(DIT_XL_2_CONFIG)),
                  diffusers_version=np.array(diffusers.__version__), torch_version=np.array(torch.__version__),
                  default_norm_eps=np.float64(
                      inspect.signature(DiTTransformer2DModel.__init__).parameters["norm_eps"].default))
    for name, case in POS_EMBED_CASES.items():
        arrays[f"pos_embed/{name}"] = get_2d_sincos_pos_embed(**case, output_type="pt").numpy().astype(np.float32)
        arrays[f"pos_embed/{name}/case_json"] = np.array(json.dumps(case))
    for i, (name, config) in enumerate(CONFIGS.items()):
        torch.manual_seed(10 * i)
        model = DiTTransformer2DModel(**config).eval()
        perturb_(model, torch.Generator().manual_seed(10 * i + 1))
        gen = torch.Generator().manual_seed(10 * i + 2)
        x = torch.randn(3, config["in_channels"], config["sample_size"], config["sample_size"], generator=gen)
        t = torch.tensor([0.0, 37.5, 999.0])
        y = torch.tensor(LABELS[name])
        with torch.no_grad():
            out = model(x, t, class_labels=y).sample
        arrays.update({f"{name}/x": x.numpy(), f"{name}/t": t.numpy(), f"{name}/y": y.numpy(),
                       f"{name}/out": out.numpy(), f"{name}/param_count": np.int64(param_count(model)),
                       f"{name}/config_json": np.array(json.dumps(config)),
                       f"{name}/pos_embed": model.pos_embed.pos_embed[0].numpy()})
        arrays.update({f"{name}/state_dict/{k}": v.numpy().astype(np.float32) for k, v in model.state_dict().items()})
        print(f"{name}: {param_count(model):,} params, out {tuple(out.shape)}, |out| max {out.abs().max():.3f}")
    np.savez(OUT_PATH, **arrays)
    print(f"DiT-XL/2 (256 px) DiTTransformer2DModel params: {full_count:,}")
    print(f"wrote {OUT_PATH} ({os.path.getsize(OUT_PATH):,} bytes)")


if __name__ == "__main__":
    main()
