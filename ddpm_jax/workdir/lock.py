"""One trainer per workdir: ``WORKDIR/lock.json`` holds the training process's pid, host and start time.

The lock is created atomically (a hard link locally; an ``ifGenerationMatch=0`` upload on gs://). A lock left by a process that is gone (kill -9, a crash) on this host is
stale: it is taken over with a message. A lock held by a live process, or by a process on another host (whose
liveness cannot be checked from here), is a one-line refusal saying who holds it.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
from typing import Optional

from ddpm_jax import storage

log = logging.getLogger("ddpm_jax")
LOCK_FILE = "lock.json"


class WorkdirLockedError(RuntimeError):
    """Another live trainer holds the workdir."""


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, proc_start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _proc_start(pid)
    return proc_start is None or now is None or now == proc_start


class WorkdirLock:
    """``with WorkdirLock(workdir, command):`` holds the workdir for this process (re-entrant per process)."""

    def __init__(self, workdir: str, command: str = "train"):
        self.workdir = storage.resolve(workdir)
        self.path = storage.join(self.workdir, LOCK_FILE)
        self.command = command
        self.held = False

    def _info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "proc_start": _proc_start(os.getpid()), "argv": sys.argv[:6]}

    def _try_create(self) -> bool:
        return storage.create_exclusive(self.path, json.dumps(self._info()).encode())

    def holder(self) -> Optional[dict]:
        try:
            return json.loads(storage.read_text(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # half-written or garbage: treated as a stale lock of unknown owner on this host

    def acquire(self) -> "WorkdirLock":
        try:
            storage.makedirs(self.workdir)
        except OSError as e:
            raise OSError(f"cannot create the workdir {self.workdir}: {e.strerror or e}") from None
        for _ in range(3):
            if self._try_create():
                self.held = True
                return self
            info = self.holder()
            if info is None:
                continue  # released between our two calls
            pid, host = info.get("pid"), info.get("host")
            if pid == os.getpid() and host == socket.gethostname():
                self.held = False  # this process already holds it (re-entrant); do not release on exit
                return self
            if info and host != socket.gethostname():
                raise WorkdirLockedError(
                    f"{self.workdir} is held by pid {pid} on host {host} (since {info.get('started')}): "
                    f"one trainer per workdir; if that process is gone, delete {self.path}")
            if info and isinstance(pid, int) and _alive(pid, info.get("proc_start")):
                raise WorkdirLockedError(
                    f"{self.workdir} is held by a running trainer, pid {pid} on {host} (since "
                    f"{info.get('started')}): one trainer per workdir")
            log.warning("taking over the stale lock of %s (pid %s on %s, since %s: that process is gone)",
                        self.workdir, pid, host, info.get("started") if info else "?")
            storage.remove(self.path)
        raise WorkdirLockedError(f"could not take the lock {self.path}: another process keeps taking it")

    def release(self) -> None:
        if not self.held:
            return
        info = self.holder()
        if info and info.get("pid") == os.getpid():
            storage.remove(self.path)
        self.held = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
