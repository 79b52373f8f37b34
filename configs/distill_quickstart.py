"""Progressive distillation of the quickstart teacher (configs/quickstart.py) to 4 DDIM steps: 600 optimizer steps,
5 min 13 s measured on 2 CPU cores shared with other jobs (2-2.7 steps/s; 11 min under heavier load).

    python -m ddpm_jax.main --config=configs/quickstart.py --workdir=T
    python -m ddpm_jax.main --config=configs/distill_quickstart.py --workdir=S --config.distill.teacher_workdir=T
    python -m ddpm_jax.main --config=configs/distill_quickstart.py --workdir=S --config.distill.teacher_workdir=T \
        --mode=sample --num_samples=100

The student has the teacher's U-Net and data (its recorded config); the teacher's guidance w = 2 is distilled in, so
the student is sampled without guidance. Rounds 32 -> 16 -> 8 -> 4 steps (Salimans & Ho 2022), each
``distill.steps_per_round`` optimizer steps; ``--mode=sample`` uses the step count the checkpoint was trained for.
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "distill"
    c.distill.teacher_workdir = "runs/quickstart"
    c.distill.method = "progressive"
    c.distill.start_steps = 32
    c.distill.end_steps = 4
    c.distill.steps_per_round = 200
    c.training.batch_size = 64
    c.training.num_steps = 600        # 3 rounds x 200
    c.training.log_every = 50
    c.training.checkpoint_every = 200
    c.training.sample_every = 200     # a grid at the end of every round
    c.optim.lr = 2e-4
    c.optim.warmup_steps = 0
    c.optim.ema_decay = 0.99
    c.sampling.num_steps = 0          # 0: the student's own step count (recorded in the checkpoint)
    c.sampling.num_grid = 100
    c.sampling.batch_size = 100
    c.eval.num_steps = 0
    return c
