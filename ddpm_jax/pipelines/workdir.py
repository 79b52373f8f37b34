"""Generation from a trained workdir, read-only: the recorded config, the newest checkpoint's EMA parameters, the
task's sampler; outputs (PNG grid, uint8 .npz, settings .json) go to ``WORKDIR/samples`` or ``--out``.

Prompts reach text-to-image runs, class labels class-conditional ones; anything a run cannot use is a one-line
error (labels out of range, guidance on an unconditional model, prompts for a class model).

Under ``jax.distributed`` every process runs the same command: each samples its share of the batches (the same
images as one process makes), all get the samples back, and process 0 alone writes the files.
"""
from __future__ import annotations

import io
import logging
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from ddpm_jax import storage
from ddpm_jax.data import to_uint8
from ddpm_jax.evaluation.multiprocess import ProcessShare, host_local, is_main_process
from ddpm_jax.pipelines.images import save_grid
from ddpm_jax.tasks import Trained, load_trained
from ddpm_jax.tasks.base import Run
from ddpm_jax.tasks.sampling import shared_sample_fn
from ddpm_jax.workdir import Workdir

log = logging.getLogger("ddpm_jax")


def with_sampling(config, sampler: Optional[str] = None, steps: Optional[int] = None,
                  guidance: Optional[float] = None, eta: Optional[float] = None, aug_level: Optional[float] = None):
    """A copy of ``config`` with the given sampling settings replaced (None keeps the run's)."""
    config = config.copy_and_resolve_references()
    s = config.sampling
    for key, value in (("sampler", sampler), ("num_steps", steps), ("guidance_scale", guidance), ("eta", eta),
                       ("sr_aug_level", aug_level)):
        if value is not None:
            s[key] = value
    return config


def save_npz_compressed(path: str, **arrays) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    storage.write_bytes_atomic(path, buf.getvalue())


def write_samples(out_root: str, images: np.ndarray, labels: np.ndarray, ncols: Optional[int],
                  settings: Dict[str, Any], **arrays) -> Dict[str, str]:
    """``out_root``.png (grid), .npz (uint8 ``images``, ``labels`` and ``arrays``), .json (``settings``)."""
    png = save_grid(out_root + ".png", images, ncols)
    npz = out_root + ".npz"
    save_npz_compressed(npz, images=images, labels=np.asarray(labels, np.int32), **arrays)
    storage.write_json(out_root + ".json", settings, default=str)
    return {"png": png, "npz": npz, "json": out_root + ".json"}


def share_sampling(run: Run, share: Optional[ProcessShare] = None) -> Run:
    """Make the run's own sampler (what ``task.sample``/``task.generate`` use without a sampling override) sample
    only this process's batches and gather them: with one process, nothing changes."""
    share = share or ProcessShare.of_this_process()
    if share.count > 1:
        fn = run.extras.get("sample_fn") or run.task.make_sample_fn(run)
        run.extras["sample_fn"] = shared_sample_fn(fn, share)
    return run


def check_num(num: int) -> int:
    if int(num) < 1:
        raise ValueError(f"the number of samples must be >= 1, got {num}")
    return int(num)


def sample_workdir(workdir: str, num: int, config=None, use_ema: bool = True, out_name: Optional[str] = None,
                   labels: Optional[Sequence[int]] = None, prompts: Optional[Sequence[str]] = None,
                   seed: Optional[int] = None, trained: Optional[Trained] = None) -> Dict[str, Any]:
    """``--mode=sample``: ``num`` samples of the run's task (class grid, prompts, VAE prior, held-out super-resolution)
    written to ``WORKDIR/samples/NAME.{png,npz,json}``. ``config``: the command's config, which may differ from the
    recorded one only in safe keys (sampling settings)."""
    num = check_num(num)
    trained = trained or load_trained(workdir, config, use_ema)
    run, s = share_sampling(trained.run), trained.config.sampling
    key = jax.random.key(s.seed if seed is None else seed)
    samples = run.task.sample(run, host_local(trained.params), key, num, labels, prompts)
    name = out_name or f"{samples.name}_step{trained.step}"
    root = storage.join(trained.workdir, "samples", name)
    out = {"step": trained.step, "images": samples.images, "labels": samples.labels, "extra": samples.extra}
    if not is_main_process():  # process 0 writes; the paths are where it wrote them
        return {**out, "png": root + ".png", "npz": root + ".npz", "json": root + ".json"}
    settings = {"checkpoint_step": trained.step, "num": num, "ema": use_ema, "task": trained.config.task,
                "sampling": s.to_dict(), **samples.extra}
    if jax.process_count() > 1:
        settings["processes"] = jax.process_count()
    paths = write_samples(root, samples.images, samples.labels, samples.ncols, settings)
    log.info("wrote %d samples from step %d (%s): %s and %s", num, trained.step,
             samples.name or f"{s.sampler}, {s.num_steps or 'all'} steps", paths["png"], paths["npz"])
    return {**paths, **out}


def generate_text(workdir: str, prompts: Sequence[str], num: int = 16, guidance: Optional[float] = None,
                  sampler: Optional[str] = None, steps: Optional[int] = None, seed: int = 0, use_ema: bool = True,
                  out: Optional[str] = None) -> Dict[str, Any]:
    """``num`` images for ``prompts`` (cycled, one per grid column) from a text-to-image workdir; writes a PNG grid
    and a .npz (uint8 images, prompts, prompt_index). Returns paths and settings."""
    prompts = list(prompts or [])
    if not prompts:
        raise ValueError("give at least one --prompt")
    num = check_num(num)
    wd_config = Workdir(workdir).config_for_reading()
    if wd_config.task not in ("text_diffusion", "latent_text_diffusion"):
        raise ValueError(f"{workdir} holds a {wd_config.task} run, not a text-to-image model (train one with task "
                         f"text_diffusion or latent_text_diffusion, e.g. configs/t2i_fashion_mnist.py)")
    config = with_sampling(wd_config, sampler, steps, guidance)
    trained = load_trained(workdir, config, use_ema)
    run, s = share_sampling(trained.run), config.sampling
    x, index, _ = run.task.generate(run, host_local(trained.params), jax.random.key(seed), num, prompts=prompts)
    images = to_uint8(run.to_pixels(x))
    if out is None:
        slug = "".join(c if c.isalnum() else "_" for c in prompts[0])[:40].strip("_") or "prompt"
        out = storage.join(trained.workdir, "samples", f"t2i_{slug}_w{s.guidance_scale:g}_{s.sampler}"
                                                       f"{s.num_steps or ''}_seed{seed}_step{trained.step}.png")
    root = out[:-4] if out.endswith(".png") else out
    grid = [prompts[i % len(prompts)] for i in range(num)]
    settings = {"checkpoint_step": trained.step, "num": num, "ema": use_ema, "prompts": prompts, "seed": seed,
                "sampling": s.to_dict()}
    result = {"step": trained.step, "guidance": s.guidance_scale, "sampler": s.sampler, "num_steps": s.num_steps,
              "images": images, "prompts": grid}
    if not is_main_process():  # process 0 writes
        return {"png": root + ".png", "npz": root + ".npz", **result}
    png = save_grid(root + ".png", images, min(len(prompts), num) if len(prompts) > 1 else None)
    npz = root + ".npz"
    save_npz_compressed(npz, images=images, prompt_index=index, prompts=np.asarray(prompts, dtype=str))
    storage.write_json(root + ".json", settings)
    return {"png": png, "npz": npz, **result}
