"""Quickstart: class-conditional DDPM on scikit-learn's 8x8 digits (bundled, no download); ~5 min on 2 CPU cores."""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.data.name = "digits"
    c.data.image_size = 8
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.class_conditional = True
    c.training.cond_drop_prob = 0.1
    c.training.batch_size = 64
    c.training.num_steps = 2000
    c.training.log_every = 100
    c.training.checkpoint_every = 500
    c.training.sample_every = 1000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.995
    c.sampling.sampler = "ddim"
    c.sampling.num_steps = 50
    c.sampling.guidance_scale = 2.0
    c.sampling.num_grid = 100
    c.sampling.batch_size = 100
    return c
