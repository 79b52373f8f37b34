"""A trained run loaded read-only from its workdir: the recorded config, the task's model and the checkpoint's
(EMA) parameters. Used by generation, evaluation and by tasks built on frozen parts (latent diffusion's
autoencoder). Nothing in the workdir is written."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax

from ddpm_jax.tasks.base import Run
from ddpm_jax.tasks.registry import get_task
from ddpm_jax.workdir import Workdir


@dataclasses.dataclass
class Trained:
    config: Any
    run: Run
    params: Any   # what inference uses (EMA by default; the autoencoder without its discriminator)
    step: int
    workdir: str


def build_run(config, split: Optional[str] = None) -> Run:
    """The run ``config`` describes, built by its task (validated first)."""
    task = get_task(config.task)
    task.validate(config)
    return task.build(config, split)


def load_trained(workdir: str, config=None, use_ema: bool = True, expect_task: Optional[str] = None) -> Trained:
    """The newest checkpoint of ``workdir`` with its recorded config (``config``: a command's config, used when it
    differs from the record only in safe keys such as sampling settings)."""
    wd = Workdir(workdir)
    config = wd.config_for_reading(config)
    if expect_task is not None and config.task != expect_task:
        raise ValueError(f"{workdir} holds a {config.task} run, not a {expect_task} run")
    run = build_run(config)
    expected = jax.eval_shape(run.init_params, jax.random.key(0))
    step, state = wd.restore_for_reading(expected)
    run.task.check_or_write_records(run, wd.path, write=False)
    params = state["ema_params" if use_ema else "params"]
    # the run's config: the recorded one, except for tasks that build on another workdir's (a distilled student
    # runs on its teacher's model and data)
    return Trained(run.config, run, run.task.eval_params(params), int(step), wd.path)

