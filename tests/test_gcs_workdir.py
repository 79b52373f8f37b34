"""gs:// workdirs without a mount (issue 19), against a local GCS emulator on 127.0.0.1 (tests/gcs_emulator.py):
the file layer (ddpm_jax.storage), Orbax checkpoints through TensorStore's GCS driver, and the real CLI end to end —
train, a second trainer refused, kill -9, resume bit-identical, sample."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from gcs_emulator import BUCKET, emulator  # before gcsfs: it sets how gcsfs is imported
import gcsfs  # noqa: E402
from ddpm_jax import storage
from ddpm_jax.training import loop
from ddpm_jax.workdir import Checkpointer, Workdir, WorkdirLock, WorkdirLockedError


@pytest.fixture(scope="module")
def gcs():
    with emulator() as env:
        yield env


@pytest.fixture
def bucket_dir(gcs, request):
    """A fresh gs:// folder per test."""
    return f"gs://{BUCKET}/{request.node.name}-{time.time_ns()}"


def fs():
    return gcsfs.GCSFileSystem()


def test_storage_primitives_on_gs(bucket_dir):
    path = storage.join(bucket_dir, "a", "b.json")
    assert storage.resolve(bucket_dir + "/") == bucket_dir and not storage.exists(path)
    assert storage.read_json(path) is None
    storage.write_json(path, {"x": 1})
    assert storage.read_json(path) == {"x": 1} and storage.isfile(path) and storage.isdir(storage.dirname(path))
    assert storage.create_exclusive(storage.join(bucket_dir, "once"), b"first")
    assert not storage.create_exclusive(storage.join(bucket_dir, "once"), b"second")  # ifGenerationMatch=0
    assert storage.read_bytes(storage.join(bucket_dir, "once")) == b"first"
    storage.append_text(storage.join(bucket_dir, "log.jsonl"), "1\n")
    storage.append_text(storage.join(bucket_dir, "log.jsonl"), "2\n")
    assert storage.read_text(storage.join(bucket_dir, "log.jsonl")) == "1\n2\n"
    storage.write_text_atomic(storage.join(bucket_dir, "tree", "x", "f"), "f")
    storage.write_text_atomic(storage.join(bucket_dir, "tree", "g"), "g")
    storage.move_tree(storage.join(bucket_dir, "tree"), storage.join(bucket_dir, "moved", "tree-1"))
    assert not storage.exists(storage.join(bucket_dir, "tree"))
    assert storage.read_text(storage.join(bucket_dir, "moved", "tree-1", "x", "f")) == "f"
    assert storage.listdir(storage.join(bucket_dir, "moved")) == ["tree-1"]
    storage.save_npz(storage.join(bucket_dir, "a.npz"), v=np.arange(3))
    np.testing.assert_array_equal(storage.load_npz(storage.join(bucket_dir, "a.npz"))["v"], np.arange(3))


def test_lock_and_config_record_on_gs(bucket_dir, tiny):
    wd = Workdir(bucket_dir)
    assert wd.path == bucket_dir and wd.remote
    with wd.lock():
        info = json.loads(storage.read_text(wd.file("lock.json")))
        assert info["pid"] == os.getpid()
        wd.record_config(tiny())
        wd.record_config(tiny(**{"sampling.num_steps": 7}))  # a safe change: appended to the history
    assert not storage.exists(wd.file("lock.json"))  # released
    assert wd.recorded_config().sampling.num_steps == 5
    history = storage.read_text(wd.file("config_history.jsonl")).splitlines()
    assert len(history) == 1 and json.loads(history[0])["changes"] == {"sampling.num_steps": [5, 7]}
    # a live holder on another host: refused, naming it (nothing deleted)
    storage.write_json(wd.file("lock.json"), {"pid": 1, "host": "tpu-worker-0", "started": "then"})
    with pytest.raises(WorkdirLockedError, match="held by pid 1 on host tpu-worker-0"):
        WorkdirLock(bucket_dir).acquire()
    assert storage.exists(wd.file("lock.json"))


def test_checkpoints_on_gs_restore_and_quarantine(bucket_dir, tiny):
    """Orbax writes through TensorStore's GCS driver; a corrupt newest checkpoint is moved to corrupt/ on gs:// and
    the previous one is restored."""
    cfg = tiny()
    state = loop.train(cfg, bucket_dir)
    assert int(state.step) == 4
    ckpt = Checkpointer(bucket_dir, async_save=False)
    assert ckpt.steps() == [2, 4]
    ckpt.close()
    metrics = [json.loads(line) for line in storage.read_text(storage.join(bucket_dir, "metrics.jsonl")).splitlines()]
    assert [m["step"] for m in metrics] == [2, 4]
    assert storage.listdir(storage.join(bucket_dir, "tensorboard"))
    assert storage.read_json(storage.join(bucket_dir, "final.json"))["step"] == 4
    for f in fs().find(f"{bucket_dir[5:]}/checkpoints/4"):  # truncate every object of checkpoint 4
        data = fs().cat(f)
        fs().pipe_file(f, data[:max(len(data) // 3, 1)])
    ckpt = Checkpointer(bucket_dir, async_save=False)
    step, restored = ckpt.restore_latest()
    ckpt.close()
    assert step == 2
    assert storage.listdir(storage.join(bucket_dir, "checkpoints", "corrupt"))[0].startswith("4-")


@pytest.mark.slow  # ~1.5 min: three CLI processes and an uninterrupted twin run
def test_cli_train_refuse_kill_resume_sample_on_gs(bucket_dir, tmp_path):
    """The real CLI on gs://: a second trainer is refused while the first runs; the first, killed with SIGKILL after
    checkpoint 10 and started again by the same command, resumes from gs:// and ends bit-identical to an
    uninterrupted local run; --mode=sample writes its files to gs://."""
    overrides = {"training.num_steps": 40, "training.checkpoint_every": 5, "training.log_every": 5}
    cmd = [sys.executable, "-m", "ddpm_jax.main", "--config=" + os.path.join(ROOT, "tests", "tiny_config.py"),
           "--workdir=" + bucket_dir] + [f"--config.{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = f"{bucket_dir[5:]}/checkpoints"

    def committed():
        try:
            return sorted(int(p.rsplit("/", 2)[-2]) for p in fs().glob(f"{ckpts}/*/commit_success.txt"))
        except FileNotFoundError:
            return []

    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not any(s >= 10 for s in committed()):
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed; raise num_steps"
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode != 0 and "held by a running trainer" in second.stderr, second.stderr[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = committed()[-1]
    assert killed_at < 40
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-2000:]
    assert "taking over the stale lock" in log and f"restored checkpoint step {killed_at} from {bucket_dir}" in log
    cfg = tiny_config(**overrides)
    straight = loop.train(cfg, str(tmp_path / "straight"))
    ckpt = Checkpointer(bucket_dir, async_save=False)
    state, _ = loop.restore_or_init(loop.build_training(cfg), ckpt)
    ckpt.close()
    assert int(state.step) == 40
    for x, y in zip(jax.tree.leaves(straight), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    steps = [json.loads(line)["step"] for line in storage.read_text(storage.join(bucket_dir, "metrics.jsonl"))
             .splitlines()]
    assert set(range(5, 41, 5)) <= set(steps) and steps[-1] == 40
    assert not storage.exists(storage.join(bucket_dir, "lock.json"))
    sample = subprocess.run([sys.executable, "-m", "ddpm_jax.main", "--mode=sample", "--num_samples=8",
                             "--workdir=" + bucket_dir], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert sample.returncode == 0, (sample.stdout + sample.stderr)[-2000:]
    written = [p for p in storage.listdir(storage.join(bucket_dir, "samples"))]
    npz = [p for p in written if p.endswith("_step40.npz")]
    assert npz and any(p.endswith("_step40.png") for p in written), written
    images = storage.load_npz(storage.join(bucket_dir, "samples", npz[0]))["images"]
    assert images.shape == (8, 8, 8, 1) and images.dtype == np.uint8
