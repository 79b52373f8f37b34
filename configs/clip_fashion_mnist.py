"""A small CLIP for Fashion-MNIST 32x32 (the domain CLIP for CLIP score): conv image tower, MLP text tower over the
frozen all-MiniLM-L6-v2 pooled caption embedding, symmetric contrastive loss with learned temperature; captions of
the same class in a batch count as matches. CPU-sized; reports zero-shot class accuracy on the test split at the end.
Use it with ``python -m ddpm_jax.generate ... --clip_workdir=DIR``.
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "clip"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.text.encoder_path = ""
    c.text.max_length = 16
    c.clip.embed_dim = 128
    c.clip.image_channels = (32, 64, 128)
    c.clip.text_hidden = 256
    c.clip.same_label_positives = True
    c.training.batch_size = 128
    c.training.num_steps = 1500
    c.training.log_every = 100
    c.training.checkpoint_every = 500
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 100
    c.optim.decay = "cosine"
    c.optim.weight_decay = 1e-4
    c.optim.ema_decay = 0.99
    return c
