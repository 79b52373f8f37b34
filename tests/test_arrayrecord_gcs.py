"""Prepared ArrayRecord datasets on ``gs://`` without a mount (issue 19), against a local GCS emulator
(``tests/gcs_emulator.py``): ``prepare --out=gs://...`` uploads shards then the manifest; ``arrayrecord:gs://...``
stages the split's shards into a local cache (verified by sha256, reused on the next open) and reads exactly what a
local copy of the same dataset reads."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from gcs_emulator import BUCKET, emulator
from ddpm_jax import storage
from ddpm_jax.data import DatasetNotFoundError, load_source
from ddpm_jax.data.arrayrecord import (CACHE_ENV, MANIFEST, VERIFIED, ArrayRecordSource, DatasetFormatError,
                                       cache_dir, read_manifest, verify_shards)
from ddpm_jax.data import prepare as prepare_module
from ddpm_jax.data.captions import load_captioned
from ddpm_jax.data.prepare import main as prepare_main

TRAIN_SHARDS = 3
# one process staging a dataset: each download held 0.3 s (so that the processes overlap), all started at once
STAGE = """
import logging, os, sys, time
from ddpm_jax.data import arrayrecord
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
download = arrayrecord.download
arrayrecord.download = lambda *args: (time.sleep(0.3), download(*args))[1]
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.01)
arrayrecord.stage_split(sys.argv[1], "train")
"""


def prepare(*args):
    assert prepare_main(list(args)) == 0


@pytest.fixture(scope="module")
def gcs():
    """The emulator, running for this module; its clients' environment is set while it runs."""
    with emulator() as env:
        yield env


@pytest.fixture(scope="module")
def digits_gs(gcs, tmp_path_factory):
    """digits prepared twice from the same source: to gs:// and to a local folder (train in 3 shards, test in 1)."""
    remote, local = f"gs://{BUCKET}/datasets/digits", str(tmp_path_factory.mktemp("digits_local"))
    for out in (remote, local):
        prepare("--source=digits", f"--out={out}", f"--shards={TRAIN_SHARDS}")
        prepare("--source=digits", f"--out={out}", "--split=test")
    return remote, local


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The staging cache of this test ($DDPM_JAX_DATASET_CACHE)."""
    root = str(tmp_path / "cache")
    monkeypatch.setenv(CACHE_ENV, root)
    return root


def staged_shards(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".array_record"))


def test_prepare_to_gs_then_arrayrecord_gs_reads_what_the_local_copy_reads(digits_gs, cache):
    remote, local = digits_gs
    manifest = read_manifest(remote)
    assert manifest == read_manifest(local)  # the same shards, byte for byte (sha256s), and the same identity
    assert storage.listdir(remote) == sorted([MANIFEST] + [s["file"] for split in manifest["splits"].values()
                                                           for s in split["shards"]])  # no temporary objects left
    assert verify_shards(remote) == {"train": 1617, "test": 180}
    for split in ("train", "test"):
        gs, disk = load_source(f"arrayrecord:{remote}", split), load_source(f"arrayrecord:{local}", split)
        assert gs.directory == remote and gs.local_directory == cache_dir(remote)
        assert gs.local_directory.startswith(cache)
        assert (gs.name, gs.image_shape, gs.class_names, gs.num_classes, len(gs), gs.fingerprint) == \
            (disk.name, disk.image_shape, disk.class_names, disk.num_classes, len(disk), disk.fingerprint)
        np.testing.assert_array_equal(np.asarray(gs.images), np.asarray(disk.images))
        np.testing.assert_array_equal(gs.labels, disk.labels)
        np.testing.assert_array_equal(gs.images[[1616 % len(gs), 0, 5]], disk.images[[1616 % len(gs), 0, 5]])
    # the cache folder is itself a prepared dataset holding the staged splits, each shard verified and marked
    staged = cache_dir(remote)
    assert verify_shards(staged) == {"train": 1617, "test": 180}
    assert len(staged_shards(staged)) == TRAIN_SHARDS + 1
    assert not [f for f in os.listdir(staged) if ".tmp" in f]
    for shard in manifest["splits"]["train"]["shards"]:
        assert open(os.path.join(staged, shard["file"] + VERIFIED)).read().strip() == shard["sha256"]
    # text tasks: the arrayrecord: branch of load_captioned reads gs:// through the same source
    captioned_gs, captioned_disk = load_captioned(f"arrayrecord:{remote}"), load_captioned(f"arrayrecord:{local}")
    assert captioned_gs.captions == captioned_disk.captions
    print(gs, "staged in", gs.local_directory)


def test_prepare_uploads_the_manifest_last_and_drops_the_shards_a_new_split_replaced(gcs, monkeypatch, capsys):
    remote, uploaded = f"gs://{BUCKET}/datasets/order", []
    upload = prepare_module.upload
    monkeypatch.setattr(prepare_module, "upload", lambda local, dst: (uploaded.append(dst), upload(local, dst))[1])
    prepare("--source=digits", f"--out={remote}", "--split=test", "--shards=3")
    shards = [storage.join(remote, f"test-{i:05d}-of-00003.array_record") for i in range(3)]
    assert uploaded == shards + [storage.join(remote, MANIFEST)]  # a reader never sees a manifest before its shards
    assert capsys.readouterr().out.strip().endswith(f"train with --config.data.name=arrayrecord:{remote}")
    prepare("--source=digits", f"--out={remote}", "--split=test", "--shards=2", "--overwrite")
    assert storage.listdir(remote) == sorted([MANIFEST] + [f"test-{i:05d}-of-00002.array_record" for i in range(2)])
    assert verify_shards(remote) == {"test": 180}
    assert prepare_main(["--source=digits", f"--out={remote}", "--split=test"]) == 1  # refused: the split is there
    assert "already holds split 'test'" in capsys.readouterr().err


def test_a_second_open_reuses_the_staged_shards_without_downloading(digits_gs, cache, caplog):
    remote, _ = digits_gs
    caplog.set_level(logging.INFO, logger="ddpm_jax")
    first = ArrayRecordSource(remote)
    downloads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("staging ")]
    assert len(downloads) == TRAIN_SHARDS and all(f"(shard {i}/{TRAIN_SHARDS})" in d
                                                  for i, d in enumerate(downloads, 1))
    assert " MB/s" in downloads[0]
    paths = first.paths
    mtimes = [os.stat(p).st_mtime_ns for p in paths]
    caplog.clear()
    second = ArrayRecordSource(remote)
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("staging ")], messages
    assert any("0 downloaded (0.0 MB in" in m and f"{TRAIN_SHARDS} reused" in m for m in messages), messages
    assert second.paths == paths and [os.stat(p).st_mtime_ns for p in paths] == mtimes
    np.testing.assert_array_equal(second.take(np.arange(10))[0], first.take(np.arange(10))[0])
    # a staged shard of the wrong size (an interrupted copy by hand, a full disk) is staged again, and only that one
    with open(paths[1], "r+b") as f:
        f.truncate(100)
    caplog.clear()
    ArrayRecordSource(remote)
    downloads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("staging ")]
    assert len(downloads) == 1 and f"(shard 2/{TRAIN_SHARDS})" in downloads[0]
    assert os.path.getsize(paths[1]) == read_manifest(remote)["splits"]["train"]["shards"][1]["bytes"]
    # the right size but no marker (a copy stopped before it was verified, other bytes): staged again, not trusted
    data = open(paths[2], "rb").read()
    with open(paths[2], "wb") as f:
        f.write(bytes(len(data)))
    os.remove(paths[2] + VERIFIED)
    caplog.clear()
    ArrayRecordSource(remote)
    downloads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("staging ")]
    assert len(downloads) == 1 and f"(shard 3/{TRAIN_SHARDS})" in downloads[0]
    assert open(paths[2], "rb").read() == data
    print(messages[-1])


def test_processes_staging_one_dataset_at_once_download_each_shard_once(digits_gs, cache, tmp_path):
    remote, _ = digits_gs
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    go = str(tmp_path / "go")
    procs = [subprocess.Popen([sys.executable, "-c", STAGE, remote, go], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    assert [p.stdout.readline().strip() for p in procs] == ["ready"] * 3
    open(go, "w").close()
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    downloads = [line for out in outs for line in out.splitlines() if line.startswith("staging ")]
    assert len(downloads) == TRAIN_SHARDS, outs  # the per-shard lock: the others waited, then reused it
    staged = cache_dir(remote)
    assert verify_shards(staged) == {"train": 1617} and len(staged_shards(staged)) == TRAIN_SHARDS
    assert not [f for f in os.listdir(staged) if ".tmp" in f]
    print(*downloads, sep="\n")


def test_a_corrupted_shard_in_the_bucket_is_a_one_line_error_naming_it(gcs, cache):
    remote = f"gs://{BUCKET}/datasets/corrupted"
    prepare("--source=digits", f"--out={remote}", "--split=test", "--shards=2")
    shard = read_manifest(remote)["splits"]["test"]["shards"][1]
    path = storage.join(remote, shard["file"])
    data = storage.read_bytes(path)
    storage.write_bytes_atomic(path, data[:-1] + bytes([data[-1] ^ 0xFF]))  # the same size, other bytes
    with pytest.raises(DatasetFormatError) as e:
        load_source(f"arrayrecord:{remote}", "test")
    message = str(e.value)
    assert message == f"{path} does not match its sha256 in {MANIFEST}: prepare the dataset again"  # one line
    staged = cache_dir(remote)
    assert staged_shards(staged) == [read_manifest(remote)["splits"]["test"]["shards"][0]["file"]]  # bad one not kept
    assert not [f for f in os.listdir(staged) if ".tmp" in f]
    print(message)


def test_a_missing_manifest_in_the_bucket_is_dataset_not_found(gcs, cache):
    with pytest.raises(DatasetNotFoundError, match=f"prepared dataset gs://{BUCKET}/nothing/here does not exist"):
        load_source(f"arrayrecord:gs://{BUCKET}/nothing/here")
    storage.write_text_atomic(f"gs://{BUCKET}/not_prepared/notes.txt", "mine")
    with pytest.raises(DatasetNotFoundError, match=f"gs://{BUCKET}/not_prepared has no {MANIFEST}") as e:
        load_source(f"arrayrecord:gs://{BUCKET}/not_prepared")
    assert "\n" not in str(e.value)
    assert not os.path.exists(cache)  # nothing staged
    print(e.value)


def test_a_split_bigger_than_the_cache_disk_is_refused_before_any_download(digits_gs, cache, monkeypatch):
    remote, _ = digits_gs
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("Usage", (), {"free": 1000})())
    with pytest.raises(OSError, match=f"staging {remote} needs 0.6 MB in .*, which has 0.0 MB free: set {CACHE_ENV} "
                                      f"to a bigger disk, or mount the bucket with gcsfuse") as e:
        load_source(f"arrayrecord:{remote}")
    assert "\n" not in str(e.value) and staged_shards(cache_dir(remote)) == []
    print(e.value)
