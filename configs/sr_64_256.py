"""Paper-style super-resolution stage 64x64 -> 256x256 for accelerators (Imagen's second stage / SR3, in this
codebase's U-Net): not CPU-sized.

Needs a prepared TFDS dataset of 256x256 images, e.g. ``tfds build celeb_a_hq/256 --data_dir=DIR
--file_format=array_record`` and ``--config.data.data_dir=DIR`` (or any ``tfds:NAME`` with 256px images). Imagen's
settings: noise conditioning augmentation in training over the whole chain (we bound it at 0.5 T), cosine schedule,
v-prediction is a common choice at this size; no self-attention above 32x32 (memory), batch 256, lr 1e-4, 1M steps.
Multi-device: ``--config.mesh.fsdp=N`` for sharded params, ``training.grad_accum_steps`` for memory.
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "super_resolution"
    c.data.name = "tfds:celeb_a_hq/256"
    c.data.data_dir = ""
    c.data.image_size = 256
    c.data.random_flip = True
    c.sr.low_res_size = 64
    c.sr.max_aug_level = 0.5
    c.model.ch = 128
    c.model.ch_mult = (1, 1, 2, 2, 4, 4)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.0
    c.model.num_heads = 4
    c.model.dtype = "bfloat16"
    c.diffusion.schedule = "cosine"
    c.diffusion.prediction_type = "v"
    c.training.batch_size = 256
    c.training.num_steps = 1_000_000
    c.training.log_every = 500
    c.training.checkpoint_every = 10_000
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 10_000
    c.optim.ema_decay = 0.9999
    c.sampling.sampler = "dpm_solver_pp_2m"
    c.sampling.num_steps = 25
    c.sampling.sr_aug_level = 0.2
    c.sampling.batch_size = 16
    return c
