"""Task ``autoencoder``: LDM's KL autoencoder (the latent space of latent diffusion), or with a large KL weight the
VAE baseline sampled from its prior; an optional patch discriminator adds LDM's adversarial term."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.data import to_uint8
from ddpm_jax.models.build import autoencoder_from_config, discriminator_from_config
from ddpm_jax.models.discriminator import generator_loss, hinge_d_loss
from ddpm_jax.tasks.base import Run, Samples, Task, held_out_batches


def psnr(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB for images in [-1, 1] (peak-to-peak 2), per example."""
    mse = jnp.mean(jnp.square(x - y), axis=tuple(range(1, x.ndim)))
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-12))


def autoencoder_params(params):
    """The autoencoder's parameters of a train state's params (without the discriminator, when one is trained)."""
    return params["autoencoder"] if isinstance(params, dict) and "discriminator" in params else params


def make_autoencoder_loss(model, reconstruction: str = "l1", kl_weight: float = 1e-6, discriminator=None,
                          disc_weight: float = 0.5, disc_start: int = 0):
    """LDM's autoencoder objective: reconstruction (L1 or L2, per element) + kl_weight * KL(q(z|x) || N(0, I)) per
    element of x; a large kl_weight makes it a VAE to sample from its prior.

    With a ``discriminator`` (a PatchDiscriminator) params are {"autoencoder", "discriminator"} and, from step
    ``disc_start`` on, the autoencoder adds disc_weight * -E[D(x_hat)] while the discriminator minimises the hinge loss
    on (x, stop_gradient(x_hat)). The two terms touch disjoint parameters (each sees the other through
    stop_gradient), so one optimizer step on their sum is one step for each player. The weight is fixed; taming's
    adaptive weight (a ratio of last-layer gradient norms) is not implemented.
    """
    if reconstruction not in ("l1", "l2"):
        raise ValueError(f"autoencoder.reconstruction must be l1 or l2, got {reconstruction!r}")

    def loss_fn(params, batch, key, step=0):
        k_sample, k_dropout = jax.random.split(key)
        x = batch["image"]
        x_hat, posterior = model.apply({"params": autoencoder_params(params)}, x, k_sample, sample_posterior=True,
                                       train=True, rngs={"dropout": k_dropout})
        err = jnp.abs(x_hat - x) if reconstruction == "l1" else jnp.square(x_hat - x)
        rec = jnp.mean(err)
        kl = jnp.mean(posterior.kl()) / (x.size // x.shape[0])
        loss = rec + kl_weight * kl
        aux = {"reconstruction": rec, "kl": kl, "psnr": jnp.mean(psnr(x_hat, x))}
        if discriminator is not None:
            d_params = params["discriminator"]
            on = (jnp.asarray(step) >= disc_start).astype(jnp.float32)
            g_loss = generator_loss(discriminator.apply({"params": jax.lax.stop_gradient(d_params)}, x_hat))
            logits_real = discriminator.apply({"params": d_params}, x)
            logits_fake = discriminator.apply({"params": d_params}, jax.lax.stop_gradient(x_hat))
            d_loss = hinge_d_loss(logits_real, logits_fake)
            loss = loss + on * (disc_weight * g_loss + d_loss)
            aux.update(g_loss=g_loss, d_loss=d_loss, logits_real=jnp.mean(logits_real),
                       logits_fake=jnp.mean(logits_fake))
        return loss, aux

    return loss_fn


def evaluate_autoencoder(run: Run, params, split: str = "test", batch_size: int = 200) -> dict:
    """Reconstruction PSNR (dB) and L1 of the posterior mode on a held-out split."""
    recon = jax.jit(lambda p, x: run.model.apply({"params": p}, x, sample_posterior=False)[0])
    batches, n = held_out_batches(run.config, split, batch_size)
    total_psnr, total_l1 = 0.0, 0.0
    for x, _ in batches:
        x_hat = recon(params, x)
        total_psnr += float(jnp.sum(psnr(x_hat, x)))
        total_l1 += float(jnp.sum(jnp.mean(jnp.abs(x_hat - x), axis=(1, 2, 3))))
    return {"psnr": total_psnr / n, "l1": total_l1 / n}


def sample_vae_prior(run: Run, params, key: jax.Array, num: int, batch_size: int = 256) -> np.ndarray:
    """Images in [-1, 1] decoded from latents drawn from the KL prior N(0, I): the autoencoder as a VAE generator."""
    model = run.model
    f, size = model.downsample_factor, run.config.data.image_size
    z = jax.random.normal(key, (num, size // f, size // f, model.embed_dim))
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
    params = autoencoder_params(params)
    return np.concatenate([np.asarray(decode(params, z[i:i + batch_size])) for i in range(0, num, batch_size)])


class AutoencoderTask(Task):
    def build(self, config, split=None, source=None, text=None) -> Run:
        source = source if source is not None else self.load_source(config, split)
        model = autoencoder_from_config(config.model, source.images.shape[-1])
        shape = (config.data.image_size, config.data.image_size, source.images.shape[-1])
        return Run(config, self, source, model, shape,
                   extras={"discriminator": discriminator_from_config(config.autoencoder)})

    def init_params(self, run, key):
        x = jnp.zeros((1,) + tuple(run.image_shape), jnp.float32)
        params = run.model.init({"params": key, "sample": key}, x, train=False)["params"]
        disc = run.extras["discriminator"]
        if disc is None:
            return params
        return {"autoencoder": params, "discriminator": disc.init(jax.random.fold_in(key, 1), x)["params"]}

    def loss(self, run):
        ae = run.config.autoencoder
        return make_autoencoder_loss(run.model, ae.reconstruction, ae.kl_weight, run.extras["discriminator"],
                                     ae.disc_weight, ae.disc_start)

    def eval_params(self, params):
        return autoencoder_params(params)

    def final_eval(self, run, params):
        scores = evaluate_autoencoder(run, autoencoder_params(params))
        return scores, (f"autoencoder (f={run.model.downsample_factor}) on the test split: PSNR {scores['psnr']:.2f} dB, "
                        f"L1 {scores['l1']:.4f}")

    def sample(self, run, params, key, num, labels=None, prompts=None):
        """The VAE baseline: decode z ~ N(0, I)."""
        if labels is not None and len(labels) or prompts:
            raise ValueError("an autoencoder samples from its prior: it takes no class labels or prompts")
        images = to_uint8(sample_vae_prior(run, params, key, num))
        return Samples(images, np.zeros(num, np.int32), None, "vae_prior")
