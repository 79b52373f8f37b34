"""LDM-style KL autoencoder for Fashion-MNIST 32x32, downsampling factor f = 4 (latents 8x8x4).

CPU-sized: 1,500 steps at batch 32 take ~6 minutes on 2 cores (XLA:CPU convolutions at 32x32 are the cost).

Other factors: --config.model.ch_mult='(1,2)' (f=2), '(1,2,2,4)' (f=8); a VAE baseline to sample from its prior:
--config.autoencoder.kl_weight=1.0 (see the latent-diffusion issue).
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "autoencoder"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.model.ch = 16
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_levels = ()
    c.model.z_channels = 4
    c.model.embed_dim = 4
    c.model.num_groups = 8
    c.autoencoder.reconstruction = "l1"
    c.autoencoder.kl_weight = 1e-6   # LDM's KL-regularised autoencoders use ~1e-6
    c.training.batch_size = 32
    c.training.num_steps = 1500
    c.training.log_every = 100
    c.training.checkpoint_every = 500
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.ema_decay = 0.99
    return c
