"""Few-step students of the f = 4 latent model (configs/ldm_fashion_mnist_f4.py): the student denoises the teacher's
8x8x4 latents of the same frozen autoencoder (the teacher's recorded latent settings; samples are decoded to 32x32).

    python -m ddpm_jax.main --config=configs/distill_ldm_fashion_mnist_f4.py --workdir=S \
        --config.distill.teacher_workdir=T

Progressive 64 -> 4 DDIM steps (default) or --config.distill.method=consistency. x0 is not clipped (the teacher's
recorded sampling.clip_x0 = None carries over: latents are not bounded).
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "distill"
    c.distill.teacher_workdir = "runs/ldm_fashion_mnist_f4"
    c.distill.method = "progressive"
    c.distill.start_steps = 64
    c.distill.end_steps = 4
    c.distill.steps_per_round = 2500
    c.distill.num_scales = 18
    c.distill.solver = "heun"
    c.distill.target_ema = 0.95
    c.training.batch_size = 128
    c.training.num_steps = 10000      # 4 rounds x 2500
    c.training.log_every = 200
    c.training.checkpoint_every = 2000
    c.training.sample_every = 2500
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.ema_decay = 0.999
    c.sampling.num_steps = 0
    c.sampling.num_grid = 64
    c.eval.num_steps = 0
    return c
