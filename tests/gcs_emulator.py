"""A local Google Cloud Storage emulator for tests: ``gcp-storage-emulator`` (PyPI, in the ``test`` extra) serving
an in-memory bucket on 127.0.0.1, and the environment that points every client at it:

- gcsfs (behind ``etils.epath`` for ``gs://``): ``STORAGE_EMULATOR_HOST``;
- TensorStore (behind Orbax checkpoints): ``TENSORSTORE_GCS_HTTP_URL``, ``GOOGLE_AUTH_TOKEN_FOR_TESTING``;
- gcsfs's experimental bucket-type lookup (a gRPC call the emulator does not serve) is switched off.

Nothing leaves 127.0.0.1. The emulator runs through ``gcs_emulator_server.py``, which adds the two GCS behaviours it
lacks (generation headers on downloads, ``ifGenerationMatch`` preconditions on uploads).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time

BUCKET = "ddpm-jax-test"
# gcsfs reads this when it is imported: import this module before gcsfs (the emulator has no gRPC control plane)
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict:
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true"}


@contextlib.contextmanager
def emulator(bucket: str = BUCKET):
    """Start the emulator; yields the environment for its clients (also set in ``os.environ`` while it runs)."""
    port = _free_port()
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_server.py")
    proc = subprocess.Popen([sys.executable, server, "start", "--host", "127.0.0.1", "--port", str(port),
                             "--in-memory", "--default-bucket", bucket],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"the GCS emulator did not start (exit code {proc.poll()})")
            time.sleep(0.1)
    env = client_env(f"http://127.0.0.1:{port}")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
