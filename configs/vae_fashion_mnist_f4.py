"""The VAE baseline: the f = 4 autoencoder trained with a KL weight set for generation, sampled from its prior.

`--mode=sample` decodes z ~ N(0, I) (8x8x4) to 32x32 images, scored by the same evaluate command as diffusion.
With L2 reconstruction per element, kl_weight = 2 sigma^2 makes the loss the negative ELBO (per element) of a
Gaussian decoder with standard deviation sigma; 1.0 is sigma = 0.71 on the [-1, 1] pixel scale.

KL weight set from a sweep (experiments/results/vae_kl_sweep.md, 1,500 steps, 1,000 prior samples): 0.02 / 0.1 /
0.3 / 1.0 give held-out PSNR 27.3 / 25.3 / 23.3 / 21.0 dB and prior-sample FCD 28.4 / 22.7 / 19.7 / 13.2 (real
test images: 0.13) with classifier_fashion_mnist.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoencoder_fashion_mnist_f4 import get_config as autoencoder_config  # noqa: E402


def get_config():
    c = autoencoder_config()
    c.autoencoder.reconstruction = "l2"
    c.autoencoder.kl_weight = 1.0
    return c
