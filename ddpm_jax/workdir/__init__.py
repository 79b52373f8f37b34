"""One run directory, owned by this layer (below training and pipelines).

``WORKDIR/`` holds ``config.json`` (the run's config, recorded once), ``config_history.jsonl`` (later commands'
allowed changes), ``lock.json`` (the one trainer), ``checkpoints/`` (Orbax; unreadable ones in
``checkpoints/corrupt/``), ``final.json`` (the final actions of a finished run are done), and the outputs: metrics,
samples, evaluations. No command moves, rewrites or deletes a good checkpoint or the recorded config.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from ddpm_jax import storage
from ddpm_jax.workdir.checkpoints import (CheckpointError, Checkpointer, CheckpointMismatchError,  # noqa: F401
                                          CheckpointSaveError, describe_mismatch, leaf_shapes)
from ddpm_jax.workdir.lock import WorkdirLock, WorkdirLockedError  # noqa: F401
from ddpm_jax.workdir.record import (CONFIG_FILE, HISTORY_FILE, ConfigMismatchError, append_history,  # noqa: F401
                                     check_compatible, load_recorded, write_record)

log = logging.getLogger("ddpm_jax")
FINAL_FILE = "final.json"


class WorkdirNotWritableError(OSError):
    """The workdir cannot be written (read-only file system, permissions, full disk)."""


def params_sha256(params) -> str:
    """A fingerprint of a parameter tree (recorded where frozen weights must not change under a run)."""
    digest = hashlib.sha256()
    for path, leaf in sorted(jax.tree_util.tree_leaves_with_path(params), key=lambda kv: jax.tree_util.keystr(kv[0])):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


class Workdir:
    """A run directory: its recorded config, its lock, its checkpoints and its outputs."""

    def __init__(self, path: str):
        if not path:
            raise ValueError("--workdir must name a folder")
        self.path = storage.resolve(path)

    def __repr__(self) -> str:
        return f"Workdir({self.path!r})"

    @property
    def remote(self) -> bool:
        """On object storage (gs://): no mount, every file through :mod:`ddpm_jax.storage`."""
        return storage.is_remote(self.path)

    def file(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    # ------------------------------------------------------------------ config

    def recorded_config(self) -> Optional[ml_collections.ConfigDict]:
        return load_recorded(self.path)

    def config_for_reading(self, given=None) -> ml_collections.ConfigDict:
        """The config a read-only command (sample, evaluate, generate) uses: the recorded one, or ``given`` when it
        differs from the record only in safe keys (e.g. sampling settings). Nothing is written."""
        recorded = self.recorded_config()
        if recorded is None:
            raise FileNotFoundError(f"{self.file(CONFIG_FILE)} not found: {self.path} is not a ddpm_jax workdir "
                                    f"(train there first)")
        if given is None:
            return recorded
        check_compatible(self.path, recorded, given)
        return given

    def check_config(self, given) -> dict:
        """Refuse ``given`` (one line naming the keys, nothing written) if it would change the recorded run; the safe
        differences otherwise ({} for a new run)."""
        recorded = self.recorded_config()
        return {} if recorded is None else check_compatible(self.path, recorded, given)

    def record_config(self, given, command: str = "train") -> None:
        """Record ``given`` if the run has no config yet (atomically, never overwriting); otherwise append its safe
        changes to the history. Call with the lock held."""
        if self.recorded_config() is None:
            write_record(self.path, given)
        changes = self.check_config(given)
        if changes:
            append_history(self.path, command, changes)
            log.info("config changes from the recorded run (appended to %s): %s", HISTORY_FILE,
                     ", ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in changes.items()))

    # ------------------------------------------------------------------ training only

    def lock(self, command: str = "train") -> WorkdirLock:
        return WorkdirLock(self.path, command)

    def check_writable(self) -> None:
        """Create the folder and write a probe file; a read-only or full file system is one clear line now, not a
        traceback at the first checkpoint."""
        probe = self.file(f".write_probe_{os.getpid()}")
        try:
            storage.makedirs(self.file("checkpoints"))
            if self.remote:
                storage.write_bytes_atomic(probe, b"x" * 4096)
            else:
                with open(probe, "w") as f:
                    f.write("x" * 4096)
                    f.flush()
                    os.fsync(f.fileno())
            storage.remove(probe)
        except OSError as e:
            raise WorkdirNotWritableError(f"cannot write to the workdir {self.path}: {e.strerror or e}") from None

    def final_done(self, step: int) -> bool:
        """Whether the final actions (last sample grid, final evaluation) of a run ending at ``step`` were done."""
        try:
            return json.loads(storage.read_text(self.file(FINAL_FILE))).get("step") == step
        except (OSError, ValueError):
            return False

    def mark_final(self, step: int, outputs: dict) -> None:
        entry = {"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 **outputs}
        storage.write_text_atomic(self.file(FINAL_FILE), json.dumps(entry, indent=2))

    # ------------------------------------------------------------------ checkpoints

    def checkpointer(self, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False) -> Checkpointer:
        if read_only and not storage.isdir(self.file("checkpoints")):
            raise FileNotFoundError(f"no checkpoint in {self.file('checkpoints')}: train first with --mode=train")
        return Checkpointer(self.path, max_to_keep, async_save, read_only)

    def restore_for_reading(self, expected_params: Any = None) -> tuple[int, Any]:
        """(step, state) of the newest readable checkpoint, opened read-only: nothing is created, moved or deleted.
        ``expected_params`` (abstract) is checked against the stored params first.

        One process restores the arrays as stored. Under ``jax.distributed`` (a read-only command run by every
        process) each process restores the whole state onto its own first device: as stored, the arrays would keep
        the devices they were saved from, which other processes do not hold."""
        checkpointer = self.checkpointer(read_only=True)
        try:
            steps = checkpointer.steps()
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: train first with --mode=train")
            try:
                stored_tree = checkpointer.manager.item_metadata(steps[-1]).tree
            except Exception:  # unreadable metadata: restore_latest reports it and falls back
                stored_tree = None
            if expected_params is not None and stored_tree is not None:
                stored = {k[len("params/"):]: v for k, v in leaf_shapes(stored_tree).items() if k.startswith("params/")}
                problem = describe_mismatch(stored, leaf_shapes(expected_params))
                if problem:
                    raise CheckpointMismatchError(f"checkpoint {steps[-1]} in {checkpointer.directory} holds another "
                                                  f"model than this config builds ({problem})")
            target = None
            if jax.process_count() > 1 and stored_tree is not None:
                here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                on_here = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=here)
                target = jax.tree.map(on_here, stored_tree)
                if expected_params is not None:  # the params' structure from the config
                    params = jax.tree.map(on_here, expected_params)
                    target.update(params=params, ema_params=params)
            restored = checkpointer.restore_latest(target)
        finally:
            checkpointer.close()
        return restored
