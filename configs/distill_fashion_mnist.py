"""Few-step students of the Fashion-MNIST DDPM (configs/ddpm_fashion_mnist.py), sized for an accelerator.

    python -m ddpm_jax.main --config=configs/distill_fashion_mnist.py --workdir=S --config.distill.teacher_workdir=T

Progressive distillation (default): rounds 64 -> 32 -> 16 -> 8 -> 4 DDIM steps of 4000 optimizer steps each
(Salimans & Ho 2022); add --config.distill.end_steps=1 --config.training.num_steps=24000 for 2- and 1-step rounds.
Consistency distillation: --config.distill.method=consistency (18 Karras points of the teacher's noise levels, Heun
teacher steps, target EMA 0.95; sample with --config.sampling.num_steps=1 or 2). The teacher is unconditional
(no guidance to distill).
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "distill"
    c.distill.teacher_workdir = "runs/ddpm_fashion_mnist"
    c.distill.method = "progressive"
    c.distill.start_steps = 64
    c.distill.end_steps = 4
    c.distill.steps_per_round = 4000
    c.distill.num_scales = 18
    c.distill.solver = "heun"
    c.distill.target_ema = 0.95
    c.training.batch_size = 128
    c.training.num_steps = 16000      # 4 rounds x 4000 (consistency: the whole run at N = num_scales)
    c.training.log_every = 200
    c.training.checkpoint_every = 2000
    c.training.sample_every = 4000
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.ema_decay = 0.999
    c.sampling.num_steps = 0          # 0: the student's own step count (progressive: recorded; consistency: 1)
    c.eval.num_steps = 0
    return c
