"""Prepared ArrayRecord datasets streamed through grain: the prepare command, the same batches as in memory, the data
position saved with the Orbax checkpoint, kill -9 resume and bounded memory (issue 19)."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from conftest import ROOT, tiny_config
from ddpm_jax.data import BatchPipeline, DatasetNotFoundError, load_source
from ddpm_jax.data.arrayrecord import MANIFEST, ArrayRecordSource, verify_shards
from ddpm_jax.data.captions import load_captioned
from ddpm_jax.data.prepare import Examples, main as prepare_main, write_split
from ddpm_jax.data.streaming import DataPositionError, GrainPipeline
from ddpm_jax.workdir import Checkpointer

ENV = dict(os.environ, JAX_PLATFORMS="cpu")


def prepare(*args):
    assert prepare_main(list(args)) == 0


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """scikit-learn's digits as a prepared dataset: train in 3 shards, test in 1."""
    out = str(tmp_path_factory.mktemp("digits_ar"))
    prepare("--source=digits", f"--out={out}", "--shards=3")
    prepare("--source=digits", f"--out={out}", "--split=test")
    return out


def test_prepare_writes_shards_and_a_manifest_that_read_back_as_the_source(digits_dir):
    manifest = json.load(open(os.path.join(digits_dir, MANIFEST)))
    assert manifest["format"] == "ddpm_jax.arrayrecord" and manifest["version"] == 1
    assert manifest["name"] == "digits" and manifest["image_shape"] == [8, 8, 1]
    assert manifest["class_names"] == [str(i) for i in range(10)]
    train = manifest["splits"]["train"]
    assert train["num_examples"] == 1617 and train["has_labels"] and not train["has_captions"]
    assert [s["num_records"] for s in train["shards"]] == [539, 539, 539]
    for shard in train["shards"]:
        data = open(os.path.join(digits_dir, shard["file"]), "rb").read()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    assert verify_shards(digits_dir) == {"train": 1617, "test": 180}
    for split in ("train", "test"):
        mem, ar = load_source("digits", split), load_source(f"arrayrecord:{digits_dir}", split)
        assert len(ar) == len(mem) and ar.name == "digits" and ar.num_classes == 10
        np.testing.assert_array_equal(np.asarray(ar.images), mem.images)  # PNG is lossless
        np.testing.assert_array_equal(ar.labels, mem.labels)
    ar = load_source(f"arrayrecord:{digits_dir}")
    idx = np.array([1616, 0, 539, 538, 540])  # across shard boundaries, out of order
    np.testing.assert_array_equal(ar.take(idx)[0], mem_images(idx))
    assert ar.images[7:9].shape == (2, 8, 8, 1) and ar.images[3].shape == (8, 8, 1)
    np.testing.assert_array_equal(ar.images[idx, 2:4], mem_images(idx)[:, 2:4])


def mem_images(idx):
    return load_source("digits", "train").images[idx]


def test_prepare_refusals_and_missing_sources_are_one_line_errors(digits_dir, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        ([f"--source=digits", f"--out={digits_dir}"], "already holds split 'train' (1617 examples of digits)"),
        ([f"--source=digits", f"--out={foreign}"], "holds no manifest.json: refusing to write into it"),
        (["--source=fashion_mnist", "--data_dir=/nonexistent/fm", f"--out={tmp_path}/a"],
         "data folder /nonexistent/fm does not exist"),
        (["--source=mnist", f"--out={tmp_path}/b"], "mnist: no IDX folder given"),
        ([f"--source=folder:{tmp_path}/nope", f"--out={tmp_path}/c"], "caption folder"),
        (["--source=tfds:cifar10", f"--data_dir={tmp_path}", f"--out={tmp_path}/d"], "tfds build cifar10"),
        (["--source=imagenet", f"--out={tmp_path}/e"], "unknown --source 'imagenet'"),
        (["--source=digits", "--shards=5000", f"--out={tmp_path}/f"], "--shards must be in 1..1617"),
    ]
    for args, expected in cases:
        assert prepare_main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, (args, err)
    assert os.listdir(foreign) == ["notes.txt"]  # nothing written beside a foreign file
    proc = subprocess.run([sys.executable, "-m", "ddpm_jax.data.prepare", "--source=digits", f"--out={digits_dir}"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "--overwrite" in proc.stderr
    with pytest.raises(DatasetNotFoundError, match="has no split 'valid'"):
        load_source(f"arrayrecord:{digits_dir}", "valid")
    with pytest.raises(DatasetNotFoundError, match="prepare --source=SOURCE"):
        load_source(f"arrayrecord:{tmp_path}/none")


def test_streamed_batches_equal_in_memory_batches_for_any_process_count_and_threads(digits_dir):
    """Batch k from the ArrayRecord shards through grain is BatchPipeline's batch k, over several epochs, and the
    process slices reassemble the same global batch whatever the process or thread count."""
    mem, ar = load_source("digits"), load_source(f"arrayrecord:{digits_dir}")
    steps = range(0, 2 * len(mem) // 96 + 3)  # past two epoch boundaries
    for count, threads in ((1, 0), (1, 3), (3, 1)):
        for index in range(count):
            ref = BatchPipeline(mem, 96, 16, seed=5, random_flip=True, process_index=index, process_count=count)
            stream = GrainPipeline(ar, 96, 16, seed=5, random_flip=True, process_index=index, process_count=count,
                                   threads=threads, prefetch=3)
            for step in steps:
                a, b = ref.batch(step), stream.batch(step)
                assert a.keys() == b.keys()
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key], err_msg=f"{key} step {step} process {index}")
            stream.close()
    with pytest.raises(RuntimeError, match="the data stream is at step 0, the trainer asked for step 3"):
        GrainPipeline(ar, 96, 16).batch(3)


def test_data_position_is_saved_with_the_checkpoint_and_restored(digits_dir, tmp_path):
    """A real Orbax checkpoint with grain's handler: the position after step 5 is in checkpoint 5, a new pipeline
    restored from it continues with batch 5; a checkpoint without a data item (older ones) still restores."""
    ar, mem = load_source(f"arrayrecord:{digits_dir}"), load_source("digits")
    state = {"w": jax.numpy.arange(6.0), "step": jax.numpy.int32(5)}
    stream = GrainPipeline(ar, 32, 8, seed=1)
    for step in range(5):
        stream.batch(step)
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(5, state, data=stream.data_iterator)
    ckpt.close()
    old = ocp.CheckpointManager(os.path.join(tmp_path, "checkpoints"),  # as the Checkpointer wrote before data items
                                options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False),
                                item_handlers=ocp.StandardCheckpointHandler())
    old.save(6, args=ocp.args.StandardSave(state))
    old.close()
    saved = json.load(open(os.path.join(tmp_path, "checkpoints", "5", "data", "process_0-of-1.json")))
    assert saved == {"next_step": 5, "dataset": ar.fingerprint, "global_batch_size": 32}
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "6", "data"))

    ckpt = Checkpointer(str(tmp_path), async_save=False)
    resumed = GrainPipeline(ar, 32, 8, seed=1)
    assert ckpt.restore_data(5, resumed.data_iterator)
    assert resumed.data_iterator.restored == saved
    assert "restored from the checkpoint" in resumed.data_iterator.resume_at(5)
    np.testing.assert_array_equal(resumed.batch(5)["image"], BatchPipeline(mem, 32, 8, seed=1).batch(5)["image"])
    step, restored = ckpt.restore_latest(jax.eval_shape(lambda: state))
    assert step == 6 and np.array_equal(restored["w"], state["w"])
    older = GrainPipeline(ar, 32, 8, seed=1)
    assert not ckpt.restore_data(6, older.data_iterator)
    assert "computed" in older.data_iterator.resume_at(6)
    np.testing.assert_array_equal(older.batch(6)["label"], BatchPipeline(mem, 32, 8, seed=1).batch(6)["label"])
    with pytest.raises(DataPositionError, match="global batch 32, the run is at step 5 with batch 64"):
        other = GrainPipeline(ar, 64, 8, seed=1)
        ckpt.restore_data(5, other.data_iterator)
        other.data_iterator.resume_at(5)
    ckpt.close()
    reader = Checkpointer(str(tmp_path), read_only=True)  # sampling/evaluation read the state item only
    assert reader.restore_latest(None)[0] == 6 and set(os.listdir(tmp_path)) == {"checkpoints"}
    reader.close()


def test_a_dataset_prepared_again_is_refused_on_resume(tmp_path):
    out = str(tmp_path / "ds")
    prepare("--source=digits", f"--out={out}")
    fingerprint = load_source(f"arrayrecord:{out}").fingerprint
    prepare("--source=digits", f"--out={out}", "--split=test")  # another split: the train split is the same data
    assert load_source(f"arrayrecord:{out}").fingerprint == fingerprint
    stream = GrainPipeline(load_source(f"arrayrecord:{out}"), 16, 8)
    stream.batch(0)
    ckpt = Checkpointer(str(tmp_path / "wd"), async_save=False)
    ckpt.save(1, {"w": jax.numpy.zeros(2)}, data=stream.data_iterator)
    prepare("--source=digits", f"--out={out}", "--shards=2", "--overwrite")
    assert sorted(os.listdir(out)) == [MANIFEST, "test-00000-of-00001.array_record",  # the replaced shard is gone
                                       "train-00000-of-00002.array_record", "train-00001-of-00002.array_record"]
    again = GrainPipeline(load_source(f"arrayrecord:{out}"), 16, 8)
    assert ckpt.restore_data(1, again.data_iterator)
    with pytest.raises(DataPositionError, match="belongs to another dataset"):
        again.data_iterator.resume_at(1)
    ckpt.close()


def write_caption_folder(folder, n=6, size=5):
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    lines = []
    for i in range(n):
        Image.fromarray(images[i]).save(folder / f"im{i}.png")
        lines.append(json.dumps({"file": f"im{i}.png", "caption": f"picture number {i}"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return images


def test_caption_folder_records_carry_the_captions_that_text_tasks_read(tmp_path):
    folder = tmp_path / "pics"
    images = write_caption_folder(folder)
    out = str(tmp_path / "ar")
    prepare(f"--source=folder:{folder}", f"--out={out}", "--shards=2")
    source = load_source(f"arrayrecord:{out}")
    assert source.has_captions and not source.has_labels and source.labels is None and source.num_classes == 0
    np.testing.assert_array_equal(np.asarray(source.images), images)
    streamed, in_memory = load_captioned(f"arrayrecord:{out}"), load_captioned(f"folder:{folder}")
    assert streamed.captions == in_memory.captions == tuple(f"picture number {i}" for i in range(6))
    assert streamed.take(np.array([4, 1]))[2] == ["picture number 4", "picture number 1"]
    templated = load_captioned("digits", seed=3)  # a labelled dataset: the templates, from the records' labels
    digits_out = str(tmp_path / "digits")
    prepare("--source=digits", f"--out={digits_out}")
    assert load_captioned(f"arrayrecord:{digits_out}", seed=3).captions == templated.captions


def test_text_run_reads_captions_from_the_records_and_batches_carry_their_embeddings(tmp_path, tiny_encoder_path):
    from ddpm_jax.tasks import build_run

    folder = tmp_path / "pics"
    write_caption_folder(folder, n=8, size=8)
    out = str(tmp_path / "ar")
    prepare(f"--source=folder:{folder}", f"--out={out}")
    runs = {}
    for name in (f"folder:{folder}", f"arrayrecord:{out}"):
        cfg = tiny_config(**{"task": "text_diffusion", "model.class_conditional": False, "data.name": name,
                             "data.channels": 3, "text.encoder_path": tiny_encoder_path, "text.num_layers": 1,
                             "training.batch_size": 4})
        run = build_run(cfg)
        runs[name] = (run, run.task.pipeline(run, str(tmp_path / name.split(":")[0]), True))
    (mem_run, mem), (ar_run, ar) = runs.values()
    assert ar_run.text.captions == mem_run.text.captions
    for step in range(3):
        a, b = mem.batch(step), ar.batch(step)
        for key in ("image", "context", "context_mask", "pooled"):
            np.testing.assert_array_equal(a[key], b[key])


def test_tiny_arrayrecord_run_checkpoints_the_data_position_of_each_step(digits_dir, tmp_path, caplog):
    """The trainer on arrayrecord:DIR: each checkpoint holds the data position after its step."""
    from ddpm_jax.training import loop

    caplog.set_level("INFO", logger="ddpm_jax")
    wd = str(tmp_path / "ar")
    state = loop.train(tiny_config(**{"data.name": f"arrayrecord:{digits_dir}", "data.grain.threads": 1}), wd)
    assert int(state.step) == 4 and "data position: step 0 (a new run)" in caplog.text
    fingerprint = load_source(f"arrayrecord:{digits_dir}").fingerprint
    for step in (2, 4):
        data = json.load(open(os.path.join(wd, "checkpoints", str(step), "data", "process_0-of-1.json")))
        assert data == {"next_step": step, "dataset": fingerprint, "global_batch_size": 16}


def test_launch_tpu_passes_grain_settings_to_every_worker(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("gcloud", "tar"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    env = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}")
    base = ["bash", os.path.join(ROOT, "launch_tpu.sh"), "--dry-run", "--name", "v4", "--zone", "us-central2-b",
            "--config", "configs/ddpm_fashion_mnist.py", "--workdir", "/data/run"]
    out = subprocess.run(base + ["--grain-threads", "16", "--grain-workers", "2", "--",
                                 "--config.data.name=arrayrecord:/data/fm"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert ("python3 -m ddpm_jax.main --config=configs/ddpm_fashion_mnist.py --workdir=/data/run "
            "--config.data.grain.threads=16 --config.data.grain.prefetch=32 --config.data.grain.workers=2 "
            "--config.data.name=arrayrecord:/data/fm'") in out.stdout
    plain = subprocess.run(base, capture_output=True, text=True, env=env)
    assert "--workdir=/data/run'" in plain.stdout and "grain" not in plain.stdout  # not given: the config's values
    bad = subprocess.run(base + ["--grain-threads", "many"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--grain-threads must be a whole number, got many" in bad.stderr


# ------------------------------------------------------------------------------------------------ slow: subprocesses


@pytest.mark.slow
def test_training_from_arrayrecord_equals_training_in_memory(digits_dir, tmp_path):
    """The same batches, so the same parameters, EMA and optimizer state, bit for bit."""
    from ddpm_jax.training import loop

    streamed = loop.train(tiny_config(**{"data.name": f"arrayrecord:{digits_dir}", "data.grain.threads": 3}),
                          str(tmp_path / "ar"))
    in_memory = loop.train(tiny_config(), str(tmp_path / "mem"))
    for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(in_memory)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def train_cmd(wd, data_dir, overrides):
    return [sys.executable, "-m", "ddpm_jax.main", "--config=" + os.path.join(ROOT, "tests", "tiny_config.py"),
            f"--workdir={wd}", f"--config.data.name=arrayrecord:{data_dir}"] + [
        f"--config.{k}={v}" for k, v in overrides.items()]


@pytest.mark.slow
def test_kill_9_then_rerun_is_bit_identical_with_its_data_position(digits_dir, tmp_path):
    """A real trainer on arrayrecord:DIR killed with SIGKILL after a checkpoint and started again by the same command
    ends bit-identical to an uninterrupted run: params, EMA, optimizer state and the saved data position."""
    from ddpm_jax.training import loop

    overrides = {"training.num_steps": 40, "training.checkpoint_every": 5, "training.log_every": 5}
    wd = str(tmp_path / "killed")
    cmd = train_cmd(wd, digits_dir, overrides)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(wd, "checkpoints")
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(ckpt_dir) and any(d.isdigit() and int(d) >= 5 for d in os.listdir(ckpt_dir)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; raise num_steps"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
    assert killed_at < 40
    result = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    log = result.stdout + result.stderr
    assert f"restored checkpoint step {killed_at}" in log
    assert f"data position: step {killed_at} (restored from the checkpoint)" in log
    straight = str(tmp_path / "straight")
    done = subprocess.run(train_cmd(straight, digits_dir, overrides), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = tiny_config(**{k: v for k, v in overrides.items()}, **{"data.name": f"arrayrecord:{digits_dir}"})
    states = []
    for w in (wd, straight):
        ckpt = Checkpointer(w, async_save=False)
        states.append(loop.restore_or_init(loop.build_training(cfg), ckpt)[0])
        ckpt.close()
    assert int(states[0].step) == 40
    leaves = [jax.tree.leaves(s) for s in states]
    assert len(leaves[0]) == len(leaves[1])
    for a, b in zip(*leaves):  # params, EMA, optimizer state, step, rng
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    positions = [open(os.path.join(w, "checkpoints", "40", "data", "process_0-of-1.json")).read()
                 for w in (wd, straight)]
    assert positions[0] == positions[1] and json.loads(positions[0])["next_step"] == 40


MEMORY_SCRIPT = r"""
import json, os, sys
sys.path.insert(0, os.path.join(sys.argv[3], "tests"))

def hwm():  # peak resident set size of this process so far, bytes
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from conftest import tiny_config
from ddpm_jax.data import load_source, make_pipeline
from ddpm_jax.training import loop

data_dir, workdir = sys.argv[1], sys.argv[2]
cfg = tiny_config(**{"data.name": "arrayrecord:" + data_dir, "data.image_size": 16, "training.batch_size": 64,
                     "training.num_steps": 3, "training.checkpoint_every": 3})
source = load_source(cfg.data.name)
out = {"examples": len(source), "steps_per_epoch": len(source) // 64}
pipeline = make_pipeline(cfg, source)
pipeline.batch(0)
out["before_read"] = hwm()
for step in range(1, len(source) // 64):  # a whole epoch through grain: every record read and decoded once
    pipeline.batch(step)
pipeline.close()
out["after_read"] = hwm()
loop.train(cfg, workdir)  # a few training steps on it (JAX's CPU client, compilation, checkpoints)
out["after_train"] = hwm()
print(json.dumps(out))
"""


def noise_dataset(out, n, size=64):
    """n incompressible size x size RGB images (PNG cannot shrink them) with labels 0..9, written as they are made."""
    def iterate():
        rng = np.random.default_rng(n)
        for start in range(0, n, 1000):
            images = rng.integers(0, 256, (min(1000, n - start), size, size, 3), dtype=np.uint8)
            for i, image in enumerate(images):
                yield image, (start + i) % 10, None

    write_split(out, "train", Examples("noise", n, tuple(str(i) for i in range(10)), True, False, iterate),
                shards=4, source="noise")
    return sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))


def measure(data_dir, workdir) -> dict:
    # both runs compile their programs (no persistent compilation cache): XLA's compilation peak is part of both,
    # not of whichever run happens to come first
    env = {**ENV, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, data_dir, workdir, ROOT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_streaming_memory_stays_bounded_below_the_dataset_size(tmp_path):
    """~290 MB of incompressible 64x64 RGB PNGs, 4.5x a 64 MiB budget: a real subprocess reads a whole epoch of it
    through grain (peak RSS grows by less than the budget) and trains 3 steps; its peak RSS is within the budget of
    the same run on a 24x smaller dataset."""
    budget = 64 << 20
    big_bytes = noise_dataset(str(tmp_path / "big"), 24_000)
    small_bytes = noise_dataset(str(tmp_path / "small"), 1_000)
    assert big_bytes > 4 * budget
    big, small = measure(str(tmp_path / "big"), str(tmp_path / "wd_big")), measure(str(tmp_path / "small"),
                                                                                   str(tmp_path / "wd_small"))
    print(f"\ndatasets {big_bytes / 2**20:.0f} MiB and {small_bytes / 2**20:.1f} MiB; peak RSS in MiB: "
          + "; ".join(f"{name}: " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in m.items() if k[:3] in "befaft")
                      for name, m in (("big", big), ("small", small))))
    assert big["steps_per_epoch"] == 24_000 // 64
    assert big["after_read"] - big["before_read"] < budget  # a whole epoch of 290 MB read and decoded
    assert big["after_train"] - small["after_train"] < budget  # training does not hold the dataset either
