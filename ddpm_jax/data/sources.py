"""Dataset sources: scikit-learn's digits (embedded), MNIST/Fashion-MNIST IDX folders, prepared TFDS datasets (all
in memory) and prepared ArrayRecord datasets (``arrayrecord:DIR``, streamed: :mod:`ddpm_jax.data.arrayrecord`).

Every in-memory source yields an :class:`ArraySource`, a prepared ArrayRecord dataset an object with the same
interface: random access to uint8 images [N, H, W, C] and int32 labels, so that a batch is a pure function of the
step (see :mod:`ddpm_jax.data.pipeline`). Nothing downloads: a missing dataset is a one-line error that says what is
expected and how to obtain it.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
from typing import Optional, Sequence

import numpy as np

from ddpm_jax.data.arrayrecord import load_arrayrecord
from ddpm_jax.data.errors import DatasetNotFoundError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot")


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """Images as uint8 [N, H, W, C] with int32 labels [N] (or None) and class names."""

    images: np.ndarray
    labels: Optional[np.ndarray]
    name: str
    class_names: Sequence[str] = ()

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"{self.name}: images must be uint8 [N, H, W, C], got {self.images.dtype} {self.images.shape}")
        if len(self.images) == 0:
            raise ValueError(f"{self.name}: dataset is empty")
        if self.labels is not None and self.labels.shape != (len(self.images),):
            raise ValueError(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else (int(self.labels.max()) + 1 if self.labels is not None else 0)

    def take(self, indices: np.ndarray):
        return self.images[indices], (None if self.labels is None else self.labels[indices])


def load_digits(split: str = "train", test_fraction: float = 0.1, seed: int = 0) -> ArraySource:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16) as uint8 0..255; a fixed 90/10 split."""
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(round(len(images) * test_fraction))
    pick = {"train": order[n_test:], "test": order[:n_test], "all": order}
    if split not in pick:
        raise ValueError(f"digits has splits train, test, all; got {split!r}")
    return ArraySource(images[np.sort(pick[split])], labels[np.sort(pick[split])], "digits", tuple(str(i) for i in range(10)))


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (the MNIST format; plain or .gz): magic 0x0000TTDD, then D big-endian int32 dimensions."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f"{path}: truncated IDX file ({len(body)} data bytes, header says {expected})")
    return np.frombuffer(body, dtype).reshape(dims)


def _find_idx(data_dir: str, stem: str) -> str:
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    raise DatasetNotFoundError(
        f"{os.path.join(data_dir, stem)}[.gz] not found: point data.data_dir at a folder with the official MNIST or "
        f"Fashion-MNIST IDX files (Debian: apt-get install dataset-fashion-mnist puts them in {FASHION_MNIST_DIR})")


def load_idx_dataset(data_dir: str, split: str = "train", name: str = "fashion_mnist") -> ArraySource:
    """MNIST or Fashion-MNIST from a folder of the official IDX files."""
    if split not in IDX_FILES:
        raise ValueError(f"IDX datasets have splits {sorted(IDX_FILES)}; got {split!r}")
    if not data_dir:
        raise DatasetNotFoundError(
            f"{name}: no IDX folder given: set data.data_dir (prepare: --data_dir) to a folder with the official "
            f"{name} IDX files (train-images-idx3-ubyte[.gz], ...)")
    if not os.path.isdir(data_dir):
        raise DatasetNotFoundError(
            f"data folder {data_dir} does not exist: it should hold the {name} IDX files "
            f"(Debian: apt-get install dataset-fashion-mnist puts Fashion-MNIST in {FASHION_MNIST_DIR})")
    image_file, label_file = (_find_idx(data_dir, s) for s in IDX_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_file}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    classes = FASHION_MNIST_CLASSES if name == "fashion_mnist" else tuple(str(i) for i in range(10))
    return ArraySource(np.ascontiguousarray(images[..., None]), labels.astype(np.int32), name, classes)


def open_tfds(name: str, data_dir: Optional[str], split: str = "train"):
    """The random-access ``tfds.data_source`` of a TFDS dataset already prepared under ``data_dir`` (array_record
    format), without TensorFlow; a missing one is a one-line :class:`DatasetNotFoundError`.

    Prepare it once where the network is available, e.g. ``tfds build cifar10 --data_dir=DIR
    --file_format=array_record``; we never download (an unqualified ``tfds.load`` retries for minutes offline).
    """
    import tensorflow_datasets as tfds

    if not data_dir or not os.path.isdir(os.path.join(data_dir, name.split(":")[0].split("/")[0])):
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} is not prepared under data_dir={data_dir!r}; on a machine with network run "
            f"`tfds build {name} --data_dir=DIR --file_format=array_record` and set data.data_dir=DIR")
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared"/"wrong format"
        raise DatasetNotFoundError(f"TFDS dataset {name!r} under {data_dir}: cannot open split {split!r} "
                                   f"({type(e).__name__}: {str(e).splitlines()[0]})") from None


def tfds_class_names(source, label_key: Optional[str] = "label") -> tuple:
    try:
        return tuple(source.dataset_info.features[label_key].names) if label_key else ()
    except (AttributeError, KeyError, TypeError):
        return ()


def load_tfds(name: str, data_dir: Optional[str], split: str = "train", image_key: str = "image",
              label_key: Optional[str] = "label") -> ArraySource:
    """A TFDS dataset already prepared under ``data_dir`` (:func:`open_tfds`), loaded into memory."""
    source = open_tfds(name, data_dir, split)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex[image_key], np.uint8) for ex in examples])
    labels = np.asarray([ex[label_key] for ex in examples], np.int32) if label_key else None
    return ArraySource(images, labels, name, tfds_class_names(source, label_key))


def load_source(name: str, split: str = "train", data_dir: Optional[str] = None, **kwargs) -> ArraySource:
    """Load a dataset by config name: ``digits``, ``mnist``/``fashion_mnist`` (IDX folder), ``tfds:NAME`` or
    ``arrayrecord:DIR`` (a prepared dataset, :mod:`ddpm_jax.data.arrayrecord`: random access, not in memory)."""
    if name == "digits":
        return load_digits(split)
    if name in ("mnist", "fashion_mnist"):
        return load_idx_dataset(data_dir or (FASHION_MNIST_DIR if name == "fashion_mnist" else ""), split, name)
    if name.startswith("tfds:"):
        return load_tfds(name[len("tfds:"):], data_dir, split, **kwargs)
    if name.startswith("arrayrecord:"):  # prepared by `python -m ddpm_jax.data.prepare`; read, never loaded whole
        return load_arrayrecord(name[len("arrayrecord:"):], split)
    raise ValueError(f"unknown dataset {name!r}; use digits, mnist, fashion_mnist, tfds:NAME or arrayrecord:DIR")
