"""Datasets and deterministic batching."""
import gzip
import os

import numpy as np
import pytest

from ddpm_jax import data
from ddpm_jax.data.sources import FASHION_MNIST_DIR


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def make_idx_folder(folder, n=10, size=28):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    os.makedirs(folder, exist_ok=True)
    write_idx(os.path.join(folder, "train-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(folder, "train-labels-idx1-ubyte"), labels)
    return images, labels


def test_idx_folder_round_trip(tmp_path):
    images, labels = make_idx_folder(str(tmp_path))
    src = data.load_idx_dataset(str(tmp_path), "train", "mnist")
    np.testing.assert_array_equal(src.images[..., 0], images)
    np.testing.assert_array_equal(src.labels, labels)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    make_idx_folder(str(tmp_path))
    path = os.path.join(tmp_path, "train-labels-idx1-ubyte")
    with open(path, "r+b") as f:
        f.truncate(12)
    with pytest.raises(ValueError, match="truncated IDX file"):
        data.read_idx(path)


def test_missing_data_folder_names_the_folder_and_the_fix(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(data.DatasetNotFoundError, match=f"{missing} does not exist.*apt-get install dataset-fashion-mnist"):
        data.load_source("fashion_mnist", "train", missing)
    os.makedirs(missing)
    with pytest.raises(data.DatasetNotFoundError, match="train-images-idx3-ubyte"):
        data.load_source("fashion_mnist", "train", missing)


def test_unprepared_tfds_dataset_fails_at_once(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match="tfds build cifar10"):
        data.load_source("tfds:cifar10", "train", str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_from_debian_package():
    train, test = data.load_source("fashion_mnist", "train"), data.load_source("fashion_mnist", "test")
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.class_names[9] == "ankle boot"


def test_digits_split_is_disjoint_and_complete():
    tr, te, everything = (data.load_digits(s) for s in ("train", "test", "all"))
    assert len(tr) + len(te) == len(everything) == 1797
    assert tr.images.max() == 255 and tr.images.shape[1:] == (8, 8, 1)


def test_batches_are_a_pure_function_of_step_and_cover_each_epoch():
    a = data.global_batch_indices(7, 32, 100, seed=3)
    np.testing.assert_array_equal(a, data.global_batch_indices(7, 32, 100, seed=3))
    epoch = np.concatenate([data.global_batch_indices(s, 25, 100, seed=3) for s in range(4)])
    assert sorted(epoch.tolist()) == list(range(100))
    assert not np.array_equal(data.global_batch_indices(4, 25, 100, 3), data.global_batch_indices(0, 25, 100, 3))


def test_process_slices_reassemble_the_global_batch():
    src = data.load_digits("train")
    whole = data.BatchPipeline(src, 16, 8, seed=1).batch(5)
    parts = [data.BatchPipeline(src, 16, 8, seed=1, process_index=p, process_count=4).batch(5) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
    np.testing.assert_array_equal(np.concatenate([p["label"] for p in parts]), whole["label"])


def test_pipeline_range_and_padding():
    src = data.load_digits("train")
    batch = data.BatchPipeline(src, 8, 16, seed=0).batch(0)
    assert batch["image"].shape == (8, 16, 16, 1) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    np.testing.assert_array_equal(data.to_uint8(data.to_model_range(src.images[:4])), src.images[:4])
    assert data.resize_nearest(np.zeros((1, 28, 28, 1), np.uint8), 32).shape == (1, 32, 32, 1)
