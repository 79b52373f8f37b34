"""Latent diffusion on Fashion-MNIST: the U-Net denoises 8x8x4 latents of the frozen f = 4 autoencoder.

First train the autoencoder (configs/autoencoder_fashion_mnist_f4.py) into WORKDIR_AE, then
--config.latent.autoencoder_workdir=WORKDIR_AE. The dataset is encoded once at start; samples are decoded to 32x32.
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "latent_diffusion"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.latent.autoencoder_workdir = "runs/autoencoder_fashion_mnist_f4"
    c.model.ch = 64
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.dropout = 0.1
    c.training.batch_size = 128
    c.training.num_steps = 20000
    c.training.log_every = 200
    c.training.checkpoint_every = 2000
    c.training.sample_every = 5000
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 500
    c.optim.ema_decay = 0.999
    c.sampling.clip_x0 = None  # latents are not bounded to [-1, 1]
    c.sampling.num_grid = 64
    return c
