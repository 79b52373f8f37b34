"""Super-resolution stage 16x16 -> 32x32 for Fashion-MNIST (SR3 / Imagen decoder); CPU-sized.

Trained on (area-downsampled, original) pairs of the 32x32 padded images with noise conditioning augmentation
(s ~ U[0, 0.6 T), Imagen sec. 2.5); samples with the low-res input augmented at ``sampling.sr_aug_level``. No class
or text conditioning: the decoder only enlarges (set model.class_conditional=True for a class-conditional stage).
1.1M parameters, 0.46 GFLOP per forward pass at 32x32: 3,000 steps in about 35 min on 2 CPU cores (1.46 steps/s).
"""
from ddpm_jax.default_config import base_config


def get_config():
    c = base_config()
    c.task = "super_resolution"
    c.data.name = "fashion_mnist"
    c.data.data_dir = "/usr/share/datasets/fashion-mnist"
    c.data.image_size = 32
    c.sr.low_res_size = 16
    c.sr.max_aug_level = 0.6
    c.model.ch = 32
    c.model.ch_mult = (1, 2, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = ()
    c.model.num_groups = 8
    c.model.dropout = 0.0
    c.model.class_conditional = False
    c.training.batch_size = 32
    c.training.num_steps = 3000
    c.training.log_every = 100
    c.training.checkpoint_every = 1000
    c.optim.lr = 4e-4
    c.optim.warmup_steps = 200
    c.optim.ema_decay = 0.999
    c.sampling.sampler = "ddim"
    # Ancestral DDIM (eta = 1): with deterministic DDIM (eta = 0) the CPU-sized 16 -> 32 stage (1,500 steps) turned
    # 4 of 10 sampled images into speckle (eps errors x 1/sqrt(alpha_bar) at large t, then clipped); eta = 1 and
    # DDPM were clean at the same step count (experiments/results/cascade.md has the eta = 0 row).
    c.sampling.eta = 1.0
    c.sampling.num_steps = 25
    c.sampling.sr_aug_level = 0.1
    c.sampling.batch_size = 100
    return c
