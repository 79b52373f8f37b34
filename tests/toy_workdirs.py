"""Seconds-sized trained workdirs on 8x8 digits for the experiment-driver tests: a class-conditional pixel DDPM, a
classifier (the FCD feature space), a VAE (f = 2) and a latent DDPM on it. ``shared`` trains each once per test
session, for all the experiment tests."""
import atexit
import importlib.util
import os
import shutil
import tempfile

from conftest import ROOT, tiny_config


_SHARED = {}


def shared(name: str, make, *args) -> str:
    """``make(folder, *args)`` run once per session into a temporary folder (removed at exit); its workdir."""
    if "root" not in _SHARED:
        _SHARED["root"] = tempfile.mkdtemp(prefix="toy_workdirs_")
        atexit.register(shutil.rmtree, _SHARED["root"], True)
    if name not in _SHARED:
        _SHARED[name] = make(os.path.join(_SHARED["root"], name), *args)
    return _SHARED[name]


def train(config, workdir) -> str:
    from ddpm_jax.training import loop

    loop.train(config, str(workdir))
    return str(workdir)


def classifier(workdir, steps: int = 20) -> str:
    spec = importlib.util.spec_from_file_location("classifier_digits", os.path.join(ROOT, "configs",
                                                                                    "classifier_digits.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.channels, c.model.feature_dim = (8, 16), 16
    c.training.batch_size, c.training.num_steps = 32, steps
    c.training.log_every = c.training.checkpoint_every = steps
    c.optim.warmup_steps = 2
    return train(c, workdir)


def pixel_ddpm(workdir, **overrides) -> str:
    return train(tiny_config(**overrides), workdir)


def vae(workdir, steps: int = 6) -> str:
    c = tiny_config(task="autoencoder")
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks = 8, (1, 2), 1
    c.model.attn_levels, c.model.z_channels, c.model.embed_dim, c.model.num_groups = (), 4, 4, 8
    c.autoencoder.reconstruction, c.autoencoder.kl_weight = "l2", 0.02
    c.training.num_steps, c.training.log_every, c.training.checkpoint_every = steps, steps, steps
    return train(c, workdir)


def latent_ddpm(workdir, autoencoder_workdir) -> str:
    c = tiny_config(task="latent_diffusion")
    c.latent.autoencoder_workdir = str(autoencoder_workdir)
    c.model.ch_mult, c.model.attn_resolutions = (1,), (4,)
    c.sampling.clip_x0 = None
    return train(c, workdir)
