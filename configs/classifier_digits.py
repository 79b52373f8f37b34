"""The offline-metric classifier for digits 8x8 (feature space of the Frechet classifier distance); ~1 min on CPU."""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "classifier"
    c.data.name = "digits"
    c.data.image_size = 8
    c.model.channels = (32, 64)
    c.model.feature_dim = 64
    c.model.dropout = 0.1
    c.training.batch_size = 64
    c.training.num_steps = 600
    c.training.log_every = 100
    c.training.checkpoint_every = 600
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.weight_decay = 1e-4
    c.optim.ema_decay = 0.99
    return c
