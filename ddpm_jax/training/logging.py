"""Metrics to ``metrics.jsonl`` (one JSON object per line) and TensorBoard; progress lines with steps/s and ETA."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Dict

from ddpm_jax import storage
from ddpm_jax.workdir import CheckpointSaveError

log = logging.getLogger("ddpm_jax")


def setup_logging():
    """Plain ``HH:MM:SS message`` lines on stdout; libraries' chatter only at WARNING."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    logging.root.handlers = [handler]
    logging.root.setLevel(logging.INFO)
    for noisy in ("absl", "jax", "orbax", "tensorstore", "gcsfs", "fsspec", "google", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class MetricWriter:
    """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard (tensorboardX: no TensorFlow needed).

    Only the process that owns logging (process 0) should create one with ``enabled=True``. On a gs:// workdir
    (object storage has no append) both are written to a local staging folder and uploaded whole by :meth:`flush`:
    at most every ``upload_every`` seconds from :meth:`write`, at each checkpoint, and on :meth:`close`.
    """

    def __init__(self, workdir: str, enabled: bool = True, upload_every: float = 60.0):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.workdir = storage.resolve(workdir)
        self.remote = storage.is_remote(self.workdir)
        self.upload_every = upload_every
        self._uploaded = time.time()
        local = self.workdir
        if self.remote:
            local = tempfile.mkdtemp(prefix="ddpm_jax_metrics_")
            remote_jsonl = storage.join(self.workdir, "metrics.jsonl")
            if storage.exists(remote_jsonl):  # a resumed run appends to its earlier lines
                with open(os.path.join(local, "metrics.jsonl"), "wb") as f:
                    f.write(storage.read_bytes(remote_jsonl))
        os.makedirs(local, exist_ok=True)
        self._local = local
        self._jsonl = open(os.path.join(local, "metrics.jsonl"), "a", buffering=1)
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(local, "tensorboard"))
        except ImportError:
            log.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, scalars: Dict[str, float], prefix: str = "train"):
        if not self.enabled:
            return
        record = {"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}
        try:
            self._jsonl.write(json.dumps(record) + "\n")
        except OSError as e:  # e.g. a full disk: say which file (a bare write error names none)
            raise OSError(e.errno, f"{e.strerror} (writing metrics)", self._jsonl.name) from None
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))
        if self.remote and time.time() - self._uploaded > self.upload_every:
            self.flush()

    def flush(self):
        """Make the written metrics visible in the workdir (uploads them when it is remote)."""
        if not self.enabled or not self.remote:
            return
        if self._tb is not None:
            self._tb.flush()
        self._jsonl.flush()
        self._upload()

    def _upload(self):
        for path in storage.walk_files(self._local):
            storage.write_bytes_atomic(storage.join(self.workdir, os.path.relpath(path, self._local)),
                                       storage.read_bytes(path))
        self._uploaded = time.time()

    def close(self):
        """Flush and close; a failed flush (a full disk) is a warning, so it never hides the error that stopped the
        run (a failed checkpoint write is reported, not TensorBoard's flush after it)."""
        if self.enabled:
            for name, f in (("metrics.jsonl", self._jsonl), ("tensorboard", self._tb)):
                try:
                    if f is not None:
                        f.close()
                except OSError as e:
                    log.warning("could not flush %s: %s", name, e)
            if self.remote:
                try:
                    self._upload()
                except OSError as e:
                    log.warning("could not upload the metrics to %s: %s", self.workdir, e)
                shutil.rmtree(self._local, ignore_errors=True)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Steps/s, images/s and ETA between reports (the first interval includes compilation)."""

    def __init__(self, start_step: int, num_steps: int, batch_size: int):
        self.num_steps, self.batch_size = num_steps, batch_size
        self._t, self._step = time.perf_counter(), start_step

    def report(self, step: int, scalars: Dict[str, float]) -> Dict[str, float]:
        now = time.perf_counter()
        rate = (step - self._step) / max(now - self._t, 1e-9)
        self._t, self._step = now, step
        eta = (self.num_steps - step) / rate if rate > 0 else float("inf")
        parts = " | ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        log.info("step %d/%d | %s | %.2f steps/s | %.1f img/s | ETA %s", step, self.num_steps, parts, rate,
                 rate * self.batch_size, format_duration(eta) if eta != float("inf") else "?")
        return {"steps_per_sec": rate, "images_per_sec": rate * self.batch_size}


USER_ERRORS = (OSError, ValueError, FloatingPointError, RuntimeError, KeyError)


def run_cli(fn) -> None:
    """Run a command's body; a user-facing error (missing file, bad config, refused workdir, full disk, NaN loss)
    ends it with one line on stderr and exit status 1, at once: ``os._exit`` so that no background writer thread
    keeps the process alive. Set DDPM_JAX_DEBUG=1 for the full traceback."""
    try:
        fn()
    except USER_ERRORS as e:
        if os.environ.get("DDPM_JAX_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        sys.stdout.flush()
        sys.stderr.flush()
        stderr = os.dup(2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # background writer threads' last words do not follow it
        # after a failed checkpoint write, background threads may have left a partial traceback line: start afresh
        fresh = "\n" if isinstance(e, CheckpointSaveError) else ""
        os.write(stderr, f"{fresh}error: {type(e).__name__}: {message}\n".encode())
        logging.shutdown()
        os._exit(1)
