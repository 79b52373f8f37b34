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


@pytest.mark.slow  # ~1 min: two Inception feature passes in subprocesses
def test_evaluate_reads_images_and_writes_stats_on_gs(bucket_dir, tmp_path):
    """``evaluate --mode=stats`` on a .npz and on a PNG folder in the bucket (the same images: the same statistics),
    stats and features written to gs://, then ``--mode=distance`` between the two gs:// stats files."""
    import io

    from PIL import Image

    sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
    from inception_random_weights import random_state_dict
    from ddpm_jax.evaluation.convert_inception import save_state_dict_npz

    golden = np.load(os.path.join(ROOT, "tests", "golden", "inception_pytorch_fid.npz"))
    weights = str(tmp_path / "pt_inception_random.npz")  # weights stay local paths
    save_state_dict_npz(random_state_dict(json.loads(str(golden["shapes_json"])), int(golden["seed"])), weights)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    storage.save_npz(storage.join(bucket_dir, "a.npz"), images=images)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        storage.write_bytes_atomic(storage.join(bucket_dir, "pngs", f"{i:03d}.png"), buf.getvalue())

    def evaluate(*args):
        result = subprocess.run([sys.executable, "-m", "ddpm_jax.evaluate", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])

    outs = {}
    for name, source in (("npz", storage.join(bucket_dir, "a.npz")), ("png", storage.join(bucket_dir, "pngs"))):
        outs[name] = storage.join(bucket_dir, f"stats_{name}.npz")
        evaluate("--mode=stats", "--features=inception", "--inception_weights=" + weights, "--images=" + source,
                 "--out=" + outs[name], "--batch_size=5", "--save_features")
    from ddpm_jax.evaluation.stats_file import load_stats

    (mu_a, sigma_a, manifest), (mu_b, sigma_b, _) = load_stats(outs["npz"]), load_stats(outs["png"])
    assert manifest["image_count"] == 5 and mu_a.shape == (2048,)
    np.testing.assert_array_equal(mu_a, mu_b)
    np.testing.assert_array_equal(sigma_a, sigma_b)
    assert storage.exists(storage.join(bucket_dir, "stats_npz_features.npy"))
    distance = evaluate("--mode=distance", "--stats_a=" + outs["npz"], "--stats_b=" + outs["png"])
    assert distance["fid"] == pytest.approx(0, abs=1e-6) and "kid" in distance
