"""The trainer end to end: checkpoints, exact resume, bad input."""
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
from ddpm_jax.data import DatasetNotFoundError
from ddpm_jax.training import loop
from ddpm_jax.pipelines.workdir import sample_workdir
from ddpm_jax.workdir import Checkpointer


def restore(config, workdir):
    ckpt = Checkpointer(workdir, async_save=False)
    state, _ = loop.restore_or_init(loop.build_training(config), ckpt)
    ckpt.close()
    return state


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_writes_checkpoints_metrics_and_sample_reads_them(tmp_path):
    wd = str(tmp_path)
    cfg = tiny_config(**{"training.sample_every": 4})
    loop.train(cfg, wd)
    assert sorted(int(d) for d in os.listdir(os.path.join(wd, "checkpoints")) if d.isdigit()) == [2, 4]
    records = [json.loads(line) for line in open(os.path.join(wd, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [2, 4] and all(np.isfinite(r["train/loss"]) for r in records)
    assert os.path.exists(os.path.join(wd, "samples", "step_0000004.png"))
    assert os.listdir(os.path.join(wd, "tensorboard"))
    out = sample_workdir(wd, 6, cfg)
    images = np.load(out["npz"])["images"]
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    assert os.path.getsize(out["png"]) > 0


@pytest.mark.slow  # the kill -9 test below checks bit-identical resume in the fast suite
def test_resume_gives_bit_identical_parameters(tmp_path):
    straight = loop.train(tiny_config(**{"training.num_steps": 6}), str(tmp_path / "a"))
    loop.train(tiny_config(**{"training.num_steps": 3, "training.checkpoint_every": 3}), str(tmp_path / "b"))
    resumed = loop.train(tiny_config(**{"training.num_steps": 6}), str(tmp_path / "b"))
    assert int(resumed.step) == 6
    assert_trees_equal(straight, resumed)


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL after a checkpoint, restarted by the same command, ends bit-identical."""
    overrides = {"training.num_steps": 40, "training.checkpoint_every": 5, "training.log_every": 5}
    wd = str(tmp_path / "killed")
    cmd = [sys.executable, "-m", "ddpm_jax.main", "--config=" + os.path.join(ROOT, "tests", "tiny_config.py"),
           "--workdir=" + wd] + [f"--config.{k}={v}" for k, v in overrides.items()]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(wd, "checkpoints")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= 10 for d in os.listdir(ckpt_dir)):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise num_steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert done and done[-1] < 40
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "restored checkpoint step" in result.stdout + result.stderr
    cfg = tiny_config(**overrides)
    straight = loop.train(cfg, str(tmp_path / "straight"))
    assert_trees_equal(straight, restore(cfg, wd))


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
    wd = str(tmp_path)
    cfg = tiny_config()
    loop.train(cfg, wd)
    latest = os.path.join(wd, "checkpoints", "4")
    for root, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))
    state = restore(cfg, wd)
    assert int(state.step) == 2
    assert "checkpoint step 4 is unreadable" in caplog.text
    assert os.listdir(os.path.join(wd, "checkpoints", "corrupt"))  # kept for inspection, not deleted
    resumed = loop.train(cfg, wd)
    assert int(resumed.step) == 4


@pytest.mark.slow
def test_nan_loss_stops_before_saving_anything_nonfinite(tmp_path):
    wd = str(tmp_path)
    cfg = tiny_config(**{"optim.lr": 1e30, "optim.grad_clip": 0.0, "optim.warmup_steps": 0,
                         "training.num_steps": 8, "training.log_every": 1})
    with pytest.raises(FloatingPointError, match=r"loss is NaN/Inf at step \d+; stopping before anything non-finite"):
        loop.train(cfg, wd)
    saved = Checkpointer(wd).steps()  # the loss check runs before every save, so no checkpoint follows the NaN
    if saved:
        state = restore(cfg, wd)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
        assert not os.path.isdir(os.path.join(wd, "checkpoints", "corrupt"))


def test_missing_data_folder_is_a_clear_error(tmp_path):
    cfg = tiny_config(**{"data.name": "fashion_mnist", "data.data_dir": str(tmp_path / "missing")})
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        loop.train(cfg, str(tmp_path / "wd"))


def test_sample_without_checkpoint_says_train_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="train there first"):
        sample_workdir(str(tmp_path), 2, tiny_config())
