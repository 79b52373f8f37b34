"""The base model of a Fashion-MNIST cascade: class-conditional DDPM at 16x16 (28x28 padded to 32, 2x2 area-averaged:
exactly the low-res inputs of configs/sr_fashion_mnist_16_32.py), classifier-free guidance; CPU-sized.

Cascade: train this and configs/sr_fashion_mnist_16_32.py, then
``python -m ddpm_jax.generate --workdir=BASE --sr_workdir=SR --class 7 --num 16`` (README, "Cascaded super-resolution").
1.1M parameters, 0.11 GFLOP per forward pass: 4,000 steps in about 25 min on 2 CPU cores (2.9 steps/s measured).
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 16
    c.model.ch = 32
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (4,)
    c.model.num_groups = 8
    c.model.dropout = 0.1
    c.model.class_conditional = True
    c.training.cond_drop_prob = 0.1
    c.training.batch_size = 64
    c.training.num_steps = 4000
    c.training.log_every = 100
    c.training.checkpoint_every = 1000
    c.optim.lr = 4e-4
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.sampling.sampler = "ddim"
    c.sampling.num_steps = 50
    c.sampling.guidance_scale = 2.0
    c.sampling.num_grid = 50
    c.sampling.batch_size = 100
    return c
