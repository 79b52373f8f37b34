"""Task registry: ``config.task`` names one entry; the trainer, the pipelines and the evaluators never name a task.

A task is registered with a factory returning a :class:`~ddpm_jax.tasks.base.Task` (composed wrappers included,
e.g. latent text diffusion = ``Latent(Text(DiffusionTask()))``). ``ddpm_jax/tasks/__init__.py`` holds the lines.
"""
from __future__ import annotations

from typing import Callable, Dict

_FACTORIES: Dict[str, Callable] = {}


def register_task(name: str, factory: Callable) -> None:
    if name in _FACTORIES:
        raise ValueError(f"task {name!r} is registered twice")
    _FACTORIES[name] = factory


def task_names() -> tuple:
    return tuple(sorted(_FACTORIES))


def get_task(name: str):
    """A fresh task object for ``name``; an unknown name is a one-line error listing the registered ones."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(task_names())}")
    task = _FACTORIES[name]()
    part = task
    while part is not None:  # the wrapped tasks answer with the registered name too (e.g. in error messages)
        part.name = name
        part = part.__dict__.get("inner")
    return task
