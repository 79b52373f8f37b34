"""ddpm_jax: diffusion models in JAX/Flax (text encoder -> generation model -> decoder)."""

__version__ = "0.1.0"
