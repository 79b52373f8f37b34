"""Cascaded pixel diffusion (SR3, Imagen, DALL-E 2) from trained workdirs: a base model makes a small image,
super-resolution stages (task ``super_resolution``) enlarge it, each stage with its own sampler, steps, guidance,
eta and noise-augmentation level."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Sequence

import jax
import numpy as np

from ddpm_jax.data import to_uint8
from ddpm_jax.evaluation.multiprocess import host_local
from ddpm_jax.pipelines.images import save_grid
from ddpm_jax.pipelines.workdir import save_npz_compressed, share_sampling, with_sampling
from ddpm_jax.tasks import Trained, load_trained
from ddpm_jax.workdir import Workdir


def load_stage(workdir: str, tasks: Sequence[str], what: str, use_ema: bool = True, **overrides) -> Trained:
    """A trained workdir of one of ``tasks`` with sampling ``overrides`` (sampler, steps, guidance, eta,
    aug_level)."""
    config = Workdir(workdir).config_for_reading()
    if config.task not in tasks:
        raise ValueError(f"{workdir} holds a {config.task} run; {what} must be one of {', '.join(tasks)}")
    return load_trained(workdir, with_sampling(config, **{k: v for k, v in overrides.items()}), use_ema)


def run_stage(stage: Trained, key: jax.Array, num: int, labels=None, prompts=None, low_res=None) -> tuple:
    """(images float [-1, 1], labels) of one stage (base: labels or prompts; SR: the previous stage's images); under
    ``jax.distributed`` each process samples its share of the batches and all get every image."""
    run = share_sampling(stage.run)
    x, labels, _ = run.task.generate(run, host_local(stage.params), key, num, labels, prompts, low_res)
    return np.clip(run.to_pixels(x), -1.0, 1.0), labels


def cascade_from_workdirs(base_workdir: str, sr_workdirs: Sequence[str], num: int, seed: int = 0,
                          labels: Optional[np.ndarray] = None, prompts: Optional[Sequence[str]] = None,
                          base_overrides: Optional[dict] = None, sr_overrides: Optional[Sequence[dict]] = None,
                          use_ema: bool = True) -> Dict[str, Any]:
    """Base model -> every SR stage in order. ``*_overrides``: sampler, steps, guidance (and aug_level, eta for SR
    stages) per stage. Returns {"images": [base, stage 1, ...] float [-1, 1], "labels", "seconds": per stage}.

    Stage i samples with fold_in(key, i); labels reach class-conditional SR stages; a stage's input size must equal
    the previous stage's output size (checked before any sampling)."""
    if num < 1:
        raise ValueError(f"the number of samples must be >= 1, got {num}")
    key = jax.random.key(seed)
    base = load_stage(base_workdir, ("diffusion", "text_diffusion"), "a cascade's base", use_ema,
                      **(base_overrides or {}))
    stages = [load_stage(w, ("super_resolution",), "a cascade's SR stage", use_ema, **o)
              for w, o in zip(sr_workdirs, sr_overrides or [{}] * len(sr_workdirs))]
    size = base.config.data.image_size
    for workdir, stage in zip(sr_workdirs, stages):
        if stage.config.sr.low_res_size != size:
            raise ValueError(f"SR stage {workdir} enlarges {stage.config.sr.low_res_size}px images but gets {size}px "
                             f"ones")
        size = stage.config.data.image_size
    t0 = time.perf_counter()
    images, labels = run_stage(base, jax.random.fold_in(key, 0), num, labels, prompts)
    outputs, seconds = [images], [time.perf_counter() - t0]
    stage_labels = labels if base.run.text is None else None  # prompt indices are not class labels
    for i, stage in enumerate(stages):
        t0 = time.perf_counter()
        use = stage_labels if stage.run.model.num_classes else None
        images, _ = run_stage(stage, jax.random.fold_in(key, i + 1), num, use, None, outputs[-1])
        outputs.append(images)
        seconds.append(time.perf_counter() - t0)
    return {"images": outputs, "labels": np.asarray(labels), "seconds": seconds}


def write_cascade(out: str, result: Dict[str, Any], ncols: Optional[int] = None) -> Dict[str, str]:
    """``out``.png: the final images; ``out``_stages.png: each stage's images upscaled to the final size, one row
    block per stage (base first); ``out``.npz: uint8 ``images`` (final), ``stage_K`` arrays, ``labels``."""
    root = out[:-4] if out.endswith(".png") else out
    stages = [to_uint8(x) for x in result["images"]]
    size = stages[-1].shape[1]
    png = save_grid(root + ".png", stages[-1], ncols)
    blocks = [x.repeat(size // x.shape[1], 1).repeat(size // x.shape[1], 2) for x in stages]
    stages_png = save_grid(root + "_stages.png", np.concatenate(blocks), ncols or len(stages[-1]))
    npz = root + ".npz"
    save_npz_compressed(npz, images=stages[-1], labels=result["labels"],
                        **{f"stage_{i}": x for i, x in enumerate(stages)})
    return {"png": png, "stages_png": stages_png, "npz": npz}

