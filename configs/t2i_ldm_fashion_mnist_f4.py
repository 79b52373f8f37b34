"""Latent text-to-image on Fashion-MNIST: the text-conditional U-Net denoises 8x8x4 latents of the frozen f = 4
autoencoder (train configs/autoencoder_fashion_mnist_f4.py first, then --config.latent.autoencoder_workdir=DIR);
captions, text encoder and guidance as in configs/t2i_fashion_mnist.py. Samples are decoded to 32x32.
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "latent_text_diffusion"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.latent.autoencoder_workdir = "runs/autoencoder_fashion_mnist_f4"
    c.text.encoder_path = ""
    c.text.max_length = 16
    c.text.cond_drop_prob = 0.1
    c.model.ch = 64
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.cross_attn_resolutions = (8, 4)
    c.model.num_heads = 4
    c.model.dropout = 0.1
    c.model.class_conditional = False
    c.training.batch_size = 128
    c.training.num_steps = 10000
    c.training.log_every = 200
    c.training.checkpoint_every = 2000
    c.training.sample_every = 5000
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 500
    c.optim.ema_decay = 0.999
    c.sampling.clip_x0 = None  # latents are not bounded to [-1, 1]
    c.sampling.guidance_scale = 3.0
    c.sampling.num_grid = 40
    return c
