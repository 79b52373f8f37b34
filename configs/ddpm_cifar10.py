"""The DDPM paper's CIFAR-10 setting (Ho et al. 2020, sec. 4 and appendix B).

35.7M-parameter U-Net (ch 128, mults 1,2,2,2, 2 res blocks, attention at 16x16, dropout 0.1), linear betas 1e-4..0.02,
T = 1000, eps prediction with L_simple, Adam lr 2e-4 with 5000 warmup steps, batch 128, grad clip 1, EMA 0.9999,
random horizontal flips, 800k steps (the paper's TPU v3-8 run).

Data: TFDS `cifar10` prepared offline-readable (array_record) in $TFDS_DATA_DIR or ~/tensorflow_datasets:
`tfds build cifar10 --file_format=array_record` on a machine with network access.
"""
import os

from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.data.name = "tfds:cifar10"
    c.data.data_dir = os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
    c.data.image_size = 32
    c.data.random_flip = True
    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.model.class_conditional = False
    c.diffusion.schedule = "linear"
    c.diffusion.num_timesteps = 1000
    c.diffusion.prediction_type = "eps"
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 5000
    c.optim.grad_clip = 1.0
    c.optim.ema_decay = 0.9999
    c.training.batch_size = 128
    c.training.num_steps = 800000
    c.training.log_every = 100
    c.training.checkpoint_every = 10000
    c.training.sample_every = 50000
    c.sampling.sampler = "ddpm"
    c.sampling.num_steps = 0  # all 1000 steps, as in the paper
    return c
