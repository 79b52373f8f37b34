"""Tasks: what is trained and how it is sampled and evaluated, one module each, chosen by ``config.task``.

Adding a task is one module plus one line here (and a config in ``configs/``). Wrappers compose conditioning:
``Latent`` (a frozen autoencoder's latent space) and ``Text`` (captions through a frozen text encoder).
"""
from ddpm_jax.tasks.autoencoder import AutoencoderTask
from ddpm_jax.tasks.classifier import ClassifierTask
from ddpm_jax.tasks.clip import ClipTask
from ddpm_jax.tasks.diffusion import DiffusionTask
from ddpm_jax.tasks.distill import DistillTask
from ddpm_jax.tasks.latent import Latent
from ddpm_jax.tasks.loading import Trained, build_run, load_trained
from ddpm_jax.tasks.registry import get_task, register_task, task_names
from ddpm_jax.tasks.super_resolution import SuperResolutionTask
from ddpm_jax.tasks.text import Text

register_task("diffusion", DiffusionTask)
register_task("latent_diffusion", lambda: Latent(DiffusionTask()))
register_task("text_diffusion", lambda: Text(DiffusionTask()))
register_task("latent_text_diffusion", lambda: Text(Latent(DiffusionTask())))
register_task("super_resolution", SuperResolutionTask)
register_task("classifier", ClassifierTask)
register_task("autoencoder", AutoencoderTask)
register_task("clip", lambda: Text(ClipTask()))
register_task("distill", DistillTask)

__all__ = ["get_task", "register_task", "task_names", "build_run", "load_trained", "Trained"]
