"""Orbax checkpoints in WORKDIR/checkpoints: periodic async saves, keep the last K, resume from the newest readable one.

A checkpoint that cannot be read (truncated, partial) is reported, moved aside to ``checkpoints/corrupt/`` (never
deleted) and the previous one is used. Orbax writes each save to a temporary folder and renames it on commit, so a
run killed mid-save leaves the previous checkpoints intact.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No checkpoint in a workdir could be read."""


def _all_finite(tree: Any) -> bool:
    leaves = [x for x in jax.tree.leaves(tree) if np.issubdtype(np.dtype(x.dtype), np.floating)]
    return all(bool(jax.device_get(jax.numpy.isfinite(x).all())) for x in leaves)


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one train state."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._max_to_keep = max_to_keep
        self._async = async_save
        self._open()

    def _open(self):
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True,
                                               enable_async_checkpointing=self._async)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, force: bool = False) -> bool:
        """Save ``state`` at ``step``; refuses a state with non-finite values (it would replace a good checkpoint)."""
        if not _all_finite(state):
            raise FloatingPointError(f"refusing to save step {step}: the train state has NaN/Inf values")
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

    def _quarantine(self, step: int, error: Exception):
        src = os.path.join(self.directory, str(step))
        dst_dir = os.path.join(self.directory, "corrupt")
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, f"{step}-{int(time.time())}")
        shutil.move(src, dst)
        log.warning("checkpoint step %d is unreadable (%s: %s); moved to %s, trying the previous one",
                    step, type(error).__name__, str(error).splitlines()[0][:200], dst)
        self.manager.close()
        self._open()

    def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any]]:
        """Restore the newest readable checkpoint into the structure/shardings of ``abstract_state``.

        Returns (step, state), or None when the folder has no checkpoint; raises CheckpointError when checkpoints
        exist but none can be read.
        """
        steps = self.steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
            except Exception as e:  # Orbax/TensorStore raise many types for truncated or missing files
                self._quarantine(step, e)
                continue
            if not _all_finite(state):
                self._quarantine(step, FloatingPointError("non-finite values"))
                continue
            return step, state
        raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could be read "
                              f"(moved to {self.directory}/corrupt); delete the workdir to start over")
