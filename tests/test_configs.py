"""Every config in configs/ loads, builds its model, and has the settings its docstring promises."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT
from ddpm_jax.models.build import autoencoder_from_config, classifier_from_config, unet_from_config

CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_builds_its_model(path):
    cfg = load(path)
    size, ch = cfg.data.image_size, 3 if "cifar" in path else 1
    x = jnp.zeros((1, size, size, ch))
    if cfg.task == "classifier":
        model = classifier_from_config(cfg.model, 10)
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    elif cfg.task == "autoencoder":
        model = autoencoder_from_config(cfg.model, ch)
        shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0), "sample": jax.random.key(1)}, x))
    else:
        model = unet_from_config(cfg.model, 10)
        cond = {"label": jnp.zeros((1,), jnp.int32)} if model.num_classes else None
        shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, jnp.zeros((1,)), cond))
    assert sum(x.size for x in jax.tree.leaves(shapes)) > 0


def test_cifar10_config_is_the_ddpm_paper_setting():
    cfg = load(os.path.join(ROOT, "configs", "ddpm_cifar10.py"))
    model = unet_from_config(cfg.model)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == 35_746_307
    assert (cfg.optim.lr, cfg.training.batch_size, cfg.model.dropout, cfg.optim.ema_decay) == (2e-4, 128, 0.1, 0.9999)
    assert (cfg.diffusion.schedule, cfg.diffusion.num_timesteps) == ("linear", 1000)
