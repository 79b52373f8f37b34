"""DDPM on Fashion-MNIST (28x28 padded to 32x32) from the official IDX files.

Debian: `apt-get install dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist (the default here);
elsewhere set --config.data.data_dir=FOLDER. Sized for an accelerator; see the README for a CPU-sized override.
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.model.ch = 64
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (8,)
    c.model.dropout = 0.1
    c.model.class_conditional = False
    c.training.batch_size = 128
    c.training.num_steps = 40000
    c.training.log_every = 200
    c.training.checkpoint_every = 2000
    c.training.sample_every = 5000
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 1000
    c.optim.ema_decay = 0.9995
    c.sampling.sampler = "ddim"
    c.sampling.num_steps = 50
    return c
