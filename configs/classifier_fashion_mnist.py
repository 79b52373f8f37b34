"""The offline-metric classifier for Fashion-MNIST at 32x32 (padded), the feature space of its FCD; CPU-sized."""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "classifier"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.model.channels = (16, 32, 64)
    c.model.feature_dim = 64
    c.model.dropout = 0.2
    c.training.batch_size = 64
    c.training.num_steps = 2000
    c.training.log_every = 100
    c.training.checkpoint_every = 1000
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.weight_decay = 1e-4
    c.optim.ema_decay = 0.99
    return c
