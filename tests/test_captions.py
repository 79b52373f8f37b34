"""Captions: templated captions for labelled datasets (deterministic per seed and index) and caption folders."""
import json

import numpy as np
import pytest

from ddpm_jax.data import captions
from ddpm_jax.data.sources import ArraySource, DatasetNotFoundError, load_digits


def test_fashion_mnist_captions_name_the_class_with_the_right_article():
    labels = np.array([7, 9, 0, 8])
    texts = captions.captions_for_labels(labels, "fashion_mnist", seed=0)
    for text, name in zip(texts, ["sneaker", "ankle boot", "t-shirt", "bag"]):
        assert name in text
    assert all(" a ankle" not in t and not t.startswith("a ankle") for t in
               captions.captions_for_labels(np.full(50, 9), "fashion_mnist", seed=1))
    assert captions.fill("a black and white picture of {a} {c}", "ankle boot") == "a black and white picture of an ankle boot"


def test_template_choice_is_a_pure_function_of_seed_and_index():
    idx = np.arange(1000)
    a = captions.template_indices(idx, 3, 7)
    np.testing.assert_array_equal(a, captions.template_indices(idx, 3, 7))
    np.testing.assert_array_equal(a[500:], captions.template_indices(idx[500:], 3, 7))  # does not depend on the slice
    assert (a != captions.template_indices(idx, 4, 7)).mean() > 0.7
    counts = np.bincount(a, minlength=7)
    assert counts.min() > 100  # every template is used, roughly uniformly


def test_class_prompts_in_label_order():
    assert captions.class_prompts("fashion_mnist")[7] == "a photo of a sneaker"
    assert captions.class_prompts("fashion_mnist")[9] == "a photo of an ankle boot"
    assert captions.class_prompts("digits") == [f"a handwritten digit {w}" for w in
                                                 "zero one two three four five six seven eight nine".split()]
    assert captions.class_prompts("tfds:cifar10", "a {c}", ("air_plane", "Cat")) == ["a air plane", "a cat"]


def test_caption_source_over_digits():
    src = captions.caption_source(load_digits("test"), seed=0)
    images, labels, texts = src.take(np.array([0, 5, 3]))
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
    names = captions.CAPTION_CLASS_NAMES["digits"]
    assert all(names[y] in t for y, t in zip(labels, texts))
    with pytest.raises(ValueError, match="need labels"):
        captions.caption_source(ArraySource(np.zeros((2, 4, 4, 1), np.uint8), None, "x"))


def write_images(folder, sizes):
    from PIL import Image

    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(folder / f"im{i}.png")


def test_caption_folder_jsonl_and_tsv(tmp_path):
    write_images(tmp_path, [(6, 6), (6, 6)])
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"file_name": "im0.png", "caption": "a dark square"}) + "\n\n"
        + json.dumps({"file": "im1.png", "text": "a grey square"}) + "\n"
        + json.dumps({"file": "im0.png", "caption": "black"}) + "\n")
    data = captions.load_captioned(f"folder:{tmp_path}")
    assert data.source.images.shape == (3, 6, 6, 3) and data.source.images.dtype == np.uint8
    assert data.captions == ("a dark square", "a grey square", "black")
    assert data.source.images[1].mean() == 40 and data.source.labels is None
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.tsv").write_text("filename\tcaption\nim1.png\ta grey square\n")
    grey = captions.load_caption_folder(str(tmp_path), channels=1)
    assert grey.source.images.shape == (1, 6, 6, 1) and grey.captions == ("a grey square",)


def test_caption_folder_resizes_and_errors(tmp_path):
    write_images(tmp_path, [(6, 6), (10, 8)])
    (tmp_path / "captions.tsv").write_text("im0.png\tone\nim1.png\ttwo\n")
    with pytest.raises(ValueError, match="different sizes"):
        captions.load_caption_folder(str(tmp_path))
    assert captions.load_caption_folder(str(tmp_path), image_size=4).source.images.shape == (2, 4, 4, 3)
    (tmp_path / "captions.tsv").write_text("im0.png\tone\nmissing.png\ttwo\n")
    with pytest.raises(DatasetNotFoundError, match="missing.png"):
        captions.load_caption_folder(str(tmp_path), image_size=4)
    (tmp_path / "captions.tsv").write_text("im0.png one\n")
    with pytest.raises(ValueError, match=r"captions.tsv:1: expected 'filename<TAB>caption'"):
        captions.load_caption_folder(str(tmp_path))
    (tmp_path / "captions.tsv").unlink()
    with pytest.raises(DatasetNotFoundError, match="has no captions.jsonl or captions.tsv"):
        captions.load_caption_folder(str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        captions.load_caption_folder(str(tmp_path / "nope"))
