"""Orbax checkpoints in ``WORKDIR/checkpoints``: periodic (async) saves, keep the last K, restore the newest one.

Only a checkpoint that cannot be read is moved aside, to ``checkpoints/corrupt/`` (never deleted): missing or
truncated files, unreadable metadata, non-finite values. A checkpoint whose structure or shapes differ from what the
config builds is a config error (:class:`CheckpointMismatchError`) and nothing is moved. When every checkpoint of a
workdir has been quarantined, restoring is a refusal, never a silent restart from step 0. Orbax writes each save to a
temporary folder and renames it on commit, so a run killed mid-save leaves the previous checkpoints intact.
Read-only users (sampling, evaluation) open the folder with ``read_only=True``: nothing is created, moved or deleted.

A checkpoint holds two Orbax items: ``default`` (the train state; checkpoints written before the data item existed
hold only this one, in the same place) and, for streaming datasets, ``data``: the data iterator's position, written by
grain's Orbax handler (one ``process_I-of-N.json`` per process) in the same atomic commit as the state.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from ddpm_jax import storage

log = logging.getLogger("ddpm_jax")
STATE_ITEM = "default"  # Orbax's name of a single item: checkpoints without a data item read as before
DATA_ITEM = "data"


class _SkipDataItemWarning(logging.Filter):
    """Read-only managers open the state item only; Orbax warns on each read that the data item is not restored."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args == (DATA_ITEM,) and str(record.msg).startswith('Item "%s" was found in the checkpoint'))


logging.getLogger("absl").addFilter(_SkipDataItemWarning())


class CheckpointError(RuntimeError):
    """No checkpoint in a workdir could be read."""


class CheckpointMismatchError(ValueError):
    """A checkpoint is readable but holds another model than the config builds."""


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed (disk full, read-only or vanished folder)."""


OS_ERRORS = ("No space left on device", "Read-only file system", "Disk quota exceeded", "Permission denied",
             "No such file or directory")


def _first_line(error: Exception) -> str:
    """The first line of an error, led by the operating-system reason when one is named anywhere in it (TensorStore
    wraps ENOSPC as RESOURCE_EXHAUSTED with the reason at the end of a long message)."""
    text = str(error).strip()
    first = text.splitlines()[0][:240] if text else ""
    reason = next((r for r in OS_ERRORS if r in text), None)
    return f"{reason} ({first})" if reason else first


def _all_finite(tree: Any) -> bool:
    leaves = [x for x in jax.tree.leaves(tree) if np.issubdtype(np.dtype(x.dtype), np.floating)]
    return all(bool(jax.device_get(jax.numpy.isfinite(x).all())) for x in leaves)


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_shapes(tree: Any) -> dict:
    """{"params/conv_in/kernel": (shape, dtype)} for every array leaf (dataclass, dict and list paths alike)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if hasattr(leaf, "shape"):
            out["/".join(_key_name(k) for k in path)] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
    return out


def describe_mismatch(stored: dict, expected: dict) -> Optional[str]:
    """A short description of how two leaf-shape maps differ, or None when they agree."""
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    shape = sorted(k for k in set(stored) & set(expected) if stored[k][0] != expected[k][0])
    parts = []
    if shape:
        parts.append("shape of " + ", ".join(f"{k} {stored[k][0]} -> {expected[k][0]}" for k in shape[:3]))
    if missing:
        parts.append(f"{len(missing)} arrays the config has but the checkpoint lacks (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} arrays the checkpoint has but the config lacks (e.g. {extra[0]})")
    return "; ".join(parts) or None


class Checkpointer:
    """A thin wrapper over ``ocp.CheckpointManager`` for one train state."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.directory = storage.join(storage.resolve(workdir), "checkpoints")
        self._max_to_keep = max_to_keep
        self._async = async_save and not read_only
        self.read_only = read_only
        self._open()

    def _open(self):
        options = ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=not self.read_only,
                                               enable_async_checkpointing=self._async, read_only=self.read_only)
        if self.read_only:  # readers take the train state only (item_metadata(step).tree, as before)
            handlers = ocp.StandardCheckpointHandler()
        else:
            handlers = {STATE_ITEM: ocp.StandardCheckpointHandler(), DATA_ITEM: grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        if self.read_only and not storage.isdir(self.directory):
            return []
        return sorted(self.manager.all_steps())

    def quarantined(self) -> list[str]:
        return storage.listdir(storage.join(self.directory, "corrupt"))

    def save(self, step: int, state: Any, force: bool = False, data: Any = None) -> bool:
        """Save ``state`` at ``step``, with ``data`` (a grain iterator: its position after step ``step``) when given;
        refuses a state with non-finite values (it would replace a good checkpoint). A failed write (this save or an
        earlier async one) is a :class:`CheckpointSaveError`."""
        if not _all_finite(state):
            raise FloatingPointError(f"refusing to save step {step}: the train state has NaN/Inf values")
        self.check_for_errors()
        items = {STATE_ITEM: ocp.args.StandardSave(state)}
        if data is not None:
            items[DATA_ITEM] = grain.checkpoint.CheckpointSave(data)
        try:
            return self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        except Exception as e:  # OSError, or TensorStore's wrapping of one (e.g. "No space left on device")
            raise CheckpointSaveError(f"saving checkpoint {step} to {self.directory} failed: {type(e).__name__}: "
                                      f"{_first_line(e)}") from None

    def check_for_errors(self) -> None:
        """Raise at once if a finished async save failed (instead of at the next save)."""
        try:
            self.manager.check_for_errors()
        except Exception as e:  # Orbax re-raises the background thread's error
            raise CheckpointSaveError(f"writing a checkpoint to {self.directory} failed: {type(e).__name__}: "
                                      f"{_first_line(e)}") from None

    def wait(self):
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointSaveError(f"writing a checkpoint to {self.directory} failed: {type(e).__name__}: "
                                      f"{_first_line(e)}") from None

    def close(self):
        try:
            self.wait()
        finally:
            self.manager.close()

    def abandon(self):
        """After a failed write: stop without waiting on or closing the writer (closing it makes its pending callbacks
        print tracebacks from background threads); the process is about to exit with one error line."""
        self.manager = None

    def _quarantine(self, step: int, error: Exception):
        src = storage.join(self.directory, str(step))
        if self.read_only:  # a reader never moves anything: report and try the previous one
            log.warning("checkpoint step %d is unreadable (%s: %s); using the previous one (not moved: read-only)",
                        step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "")
            return
        dst = storage.join(self.directory, "corrupt", f"{step}-{int(time.time())}")
        storage.move_tree(src, dst)
        log.warning("checkpoint step %d is unreadable (%s: %s); moved to %s, trying the previous one",
                    step, type(error).__name__, str(error).splitlines()[0][:200] if str(error) else "", dst)
        self.manager.close()
        self._open()

    def _stored_shapes(self, step: int) -> dict:
        metadata = self.manager.item_metadata(step)
        if not self.read_only:
            metadata = metadata[STATE_ITEM]
        tree = getattr(metadata, "tree", metadata)
        if not tree:
            raise ValueError("empty checkpoint metadata")
        return leaf_shapes(tree)

    def restore_latest(self, abstract_state: Any = None) -> Optional[tuple[int, Any]]:
        """Restore the newest readable checkpoint into the structure/shardings of ``abstract_state`` (None: as
        stored, for readers that take only part of it).

        Returns (step, state), or None when the folder has no checkpoint and none was ever quarantined; raises
        CheckpointMismatchError when a readable checkpoint holds another model, CheckpointError when checkpoints
        exist (or existed) but none can be read.
        """
        steps = self.steps()
        if not steps:
            if self.quarantined():
                raise CheckpointError(f"every checkpoint in {self.directory} was unreadable and is in "
                                      f"{self.directory}/corrupt; refusing to start over from step 0 (move the "
                                      f"workdir aside to start a new run)")
            return None
        expected = leaf_shapes(abstract_state) if abstract_state is not None else None
        for step in reversed(steps):
            try:
                stored = self._stored_shapes(step)
            except Exception:  # unreadable metadata: the restore below decides whether the checkpoint is readable
                stored = None
            if expected is not None and stored is not None:
                problem = describe_mismatch(stored, expected)
                if problem:
                    raise CheckpointMismatchError(
                        f"checkpoint {step} in {self.directory} holds another model than this config builds "
                        f"({problem}); nothing was moved: use the run's recorded config")
            try:
                args = ocp.args.StandardRestore(abstract_state) if abstract_state is not None \
                    else ocp.args.StandardRestore()
                state = self.manager.restore(step, args=args if self.read_only else
                                             ocp.args.Composite(**{STATE_ITEM: args}))
                state = state if self.read_only else state[STATE_ITEM]
            except Exception as e:  # Orbax/TensorStore raise many types for truncated or missing files
                self._quarantine(step, e)
                continue
            if not _all_finite(state):
                self._quarantine(step, FloatingPointError("non-finite values"))
                continue
            return step, state
        raise CheckpointError(f"none of the checkpoints {steps} in {self.directory} could be read "
                              f"({'reported above' if self.read_only else f'moved to {self.directory}/corrupt'}); "
                              f"refusing to start over from step 0")

    def data_file(self, step: int) -> str:
        """This process's data-position file of checkpoint ``step`` (grain's naming)."""
        return storage.join(self.directory, str(step), DATA_ITEM,
                            f"process_{jax.process_index()}-of-{jax.process_count()}.json")

    def restore_data(self, step: int, data: Any) -> bool:
        """Set the grain iterator ``data`` to the position saved with checkpoint ``step``; False (nothing set) when
        the checkpoint has none for this process: written before the data item existed, by another process count,
        or unreadable (warned: the position is then computed from the step, see ``StepIterator.resume_at``)."""
        if not storage.isfile(self.data_file(step)):
            return False
        try:
            self.manager.restore(step, args=ocp.args.Composite(**{DATA_ITEM: grain.checkpoint.CheckpointRestore(data)}))
        except Exception as e:  # a truncated or hand-edited JSON file
            log.warning("checkpoint %d: the data position %s is unreadable (%s: %s); starting the data stream at the "
                        "step's position", step, self.data_file(step), type(e).__name__, _first_line(e))
            return False
        return True
