"""A prepared TFDS dataset (array_record format) as a source: ``tfds:NAME`` in memory and ``prepare --source=tfds:NAME``
into our ArrayRecord shards (issue 19). The dataset is built here by TFDS's own builder, without TensorFlow: its
image is a uint8 ``Tensor`` feature (TFDS's ``Image`` feature needs TensorFlow to encode PNGs; readers see the same
uint8 arrays either way)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from ddpm_jax.data import load_source
from ddpm_jax.data.arrayrecord import load_arrayrecord

tfds = pytest.importorskip("tensorflow_datasets")
CLASSES = ["zero", "one", "two"]


def examples(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [{"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": i % 3} for i in range(n)]


class TinyTfds(tfds.core.GeneratorBasedBuilder):
    """Registered as ``tiny_tfds``; readers in other processes find it from its files (``data_dir/tiny_tfds/1.0.0``)."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=CLASSES)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40, 0), "test": self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
        for i, ex in enumerate(examples(n, seed)):
            yield i, ex


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyTfds(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return data_dir


def by_label_and_image(images, labels):
    """The dataset as a sorted list (TFDS shuffles examples when it writes them)."""
    return sorted((int(y), x.tobytes()) for x, y in zip(images, labels))


def test_tfds_source_in_memory(tfds_dir):
    source = load_source("tfds:tiny_tfds", "test", tfds_dir)
    want = examples(12, 1)
    assert source.images.shape == (12, 8, 8, 1) and source.class_names == tuple(CLASSES)
    assert by_label_and_image(source.images, source.labels) == by_label_and_image(
        [e["image"] for e in want], [e["label"] for e in want])


def test_prepare_from_tfds_gives_the_same_examples(tfds_dir, tmp_path):
    out = str(tmp_path / "prepared")
    result = subprocess.run([sys.executable, "-m", "ddpm_jax.data.prepare", "--source=tfds:tiny_tfds",
                             f"--data_dir={tfds_dir}", f"--out={out}", "--shards=2"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["source"] == "tfds:tiny_tfds" and manifest["class_names"] == CLASSES
    assert manifest["splits"]["train"]["num_examples"] == 40 and len(manifest["splits"]["train"]["shards"]) == 2
    prepared = load_arrayrecord(out, "train")
    want = examples(40, 0)
    images = np.asarray(prepared.images)
    assert by_label_and_image(images, prepared.labels) == by_label_and_image(
        [e["image"] for e in want], [e["label"] for e in want])
    # and in the order TFDS serves them (prepare keeps the source's order)
    tfds_train = load_source("tfds:tiny_tfds", "train", tfds_dir)
    np.testing.assert_array_equal(images, tfds_train.images)
    np.testing.assert_array_equal(prepared.labels, tfds_train.labels)
