"""Multi-host start-up and preemption: ``jax.distributed`` from the config or environment, and a SIGTERM watch.

Where the processes come from decides how they meet:

- a Cloud TPU VM (single host or pod slice): ``jax.distributed.initialize()`` without arguments; JAX reads the
  worker list from the TPU metadata;
- a GPU/CPU cluster: an explicit coordinator ``host:port`` (process 0's), the number of processes and this
  process's id, from ``config.distributed.*`` or the environment variables ``DDPM_JAX_COORDINATOR``,
  ``DDPM_JAX_NUM_PROCESSES``, ``DDPM_JAX_PROCESS_ID`` (config values win);
- anything else: one process, nothing to do.

Must run before the first JAX computation (before any backend is initialized). Training, ``--mode=sample``, the
evaluate command and ``ddpm_jax.generate`` all join the job this way; sampling and evaluation then split their
batches over the processes (``ddpm_jax/evaluation/multiprocess.py``) and process 0 writes.
"""
from __future__ import annotations

import glob
import logging
import os
import signal
import threading
from typing import Mapping, Optional

import jax

log = logging.getLogger("ddpm_jax")

ENV_COORDINATOR = "DDPM_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "DDPM_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "DDPM_JAX_PROCESS_ID"


def on_cloud_tpu_vm(env: Mapping[str, str] = os.environ) -> bool:
    """True on a Cloud TPU VM worker: TPU chips are visible as /dev/accel* (v2-v4) or /dev/vfio (v5+), or the TPU
    runtime's environment is set."""
    if any(k in env for k in ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "CLOUD_TPU_TASK_ID")):
        return True
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def cluster_settings(config=None, env: Mapping[str, str] = os.environ) -> Optional[dict]:
    """Keyword arguments for ``jax.distributed.initialize``: {} for TPU auto-detection, coordinator/process count/id
    for an explicit cluster, or None when this is a single-process run."""
    dist = (config.get("distributed") if config is not None else None) or {}
    coordinator = dist.get("coordinator") or env.get(ENV_COORDINATOR, "")
    num_processes = int(dist.get("num_processes", 0) or env.get(ENV_NUM_PROCESSES, 0) or 0)
    process_id = int(dist.get("process_id", -1))
    process_id = process_id if process_id >= 0 else int(env.get(ENV_PROCESS_ID, -1))
    if coordinator or num_processes > 1:
        missing = [name for name, ok in (("coordinator", coordinator), ("num_processes", num_processes > 0),
                                         ("process_id", process_id >= 0)) if not ok]
        if missing:
            raise ValueError(f"multi-process run needs distributed.coordinator, num_processes and process_id "
                             f"(or ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES}, ${ENV_PROCESS_ID}); missing: "
                             f"{', '.join(missing)}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"distributed.process_id must be in [0, {num_processes}), got {process_id}")
        if num_processes == 1:
            return None
        return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}
    if dist.get("auto_detect", True) and on_cloud_tpu_vm(env):
        return {}
    return None


def initialize_from_env(config=None, env: Mapping[str, str] = os.environ) -> bool:
    """Join the multi-process job this process belongs to (see the module docstring); True if one was joined."""
    settings = cluster_settings(config, env)
    if settings is None:
        return False
    timeout = int(((config.get("distributed") if config is not None else None) or {}).get("timeout_s", 300))
    jax.distributed.initialize(**settings, initialization_timeout=timeout)
    log.info("jax.distributed: process %d of %d (%s), %d local / %d global devices", jax.process_index(),
             jax.process_count(), settings.get("coordinator_address", "TPU auto-detected"),
             jax.local_device_count(), jax.device_count())
    return True


def log_from_process_0_only() -> None:
    """Progress and info lines from process 0 only; the others keep warnings and errors."""
    if jax.process_index() != 0:
        log.setLevel(logging.WARNING)


def _preemption_service():
    """JAX's preemption sync manager when jax.distributed is up (it catches SIGTERM itself), else None."""
    from jax._src import distributed as _dist  # the public multihost_utils API has no "is it running" query

    return getattr(_dist.global_state, "preemption_sync_manager", None)


class PreemptionWatch:
    """Tells the training loop when to save and stop after SIGTERM (a TPU VM preemption notice, ``kill``, SLURM).

    One process: a Python SIGTERM handler sets a flag. Several processes: JAX's preemption service (started by
    ``jax.distributed``) spreads the notice and picks a step that every process reaches
    (``multihost_utils.reached_preemption_sync_point``), so all processes save the same step together.
    """

    def __init__(self):
        self.signalled = False
        self._previous = None
        self._multi = jax.process_count() > 1 and _preemption_service() is not None
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.signalled = True

    def reached(self, step: int) -> bool:
        """Call once per step with increasing ``step`` on every process: True when the run should save and stop."""
        if self._multi:
            from jax.experimental import multihost_utils

            self.signalled = multihost_utils.reached_preemption_sync_point(step)
        return self.signalled

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
