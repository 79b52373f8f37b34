"""Image–caption pairs: templated captions for labelled datasets, and a reader for a folder of captioned images.

A labelled dataset becomes a captioned one by writing each image's class through one of several templates ("a photo
of a sneaker", "an ankle boot on a white background", ...). The template of example i is a pure function of
(seed, i), so captions are the same on every host and every run. A :class:`CaptionedSource` is an
:class:`~ddpm_jax.data.sources.ArraySource` (uint8 [N, H, W, C], as the rest of the data layer uses) plus one caption
per image.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Optional, Sequence, Tuple

import numpy as np

from ddpm_jax.data.sources import ArraySource, DatasetNotFoundError, load_source

# How each class is written in a caption (lower case, singular).
CAPTION_CLASS_NAMES = {
    "fashion_mnist": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
    "digits": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
}
CAPTION_CLASS_NAMES["mnist"] = CAPTION_CLASS_NAMES["digits"]

# {a}: "a"/"an" for the class name; {c}: the class name.
OBJECT_TEMPLATES = (
    "a photo of {a} {c}",
    "{a} {c} on a white background",
    "a black and white picture of {a} {c}",
    "a low resolution photo of {a} {c}",
    "a small grayscale image of {a} {c}",
    "a product photo of {a} {c}",
    "{c}",
)
DIGIT_TEMPLATES = (
    "a handwritten digit {c}",
    "the number {c}",
    "a photo of the digit {c}",
    "a black and white picture of the number {c}",
    "a low resolution image of a handwritten {c}",
    "{c}",
)
EVAL_TEMPLATE = {"object": "a photo of {a} {c}", "digit": "a handwritten digit {c}"}
CAPTION_FILES = ("captions.jsonl", "captions.tsv")
IMAGE_KEYS = ("file", "file_name", "filename", "image")
TEXT_KEYS = ("caption", "text")


def article(word: str) -> str:
    """'an' before a vowel sound (by its first letter), else 'a'."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _kind(dataset: str) -> str:
    return "digit" if dataset in ("digits", "mnist") else "object"


def caption_class_names(dataset: str, class_names: Sequence[str] = ()) -> Tuple[str, ...]:
    """Class names as written in captions; for other datasets, the given names lower-cased, '_' as spaces."""
    if dataset in CAPTION_CLASS_NAMES:
        return CAPTION_CLASS_NAMES[dataset]
    if not class_names:
        raise ValueError(f"no class names for dataset {dataset!r}: captions need them")
    return tuple(str(n).replace("_", " ").lower() for n in class_names)


def templates(dataset: str) -> Tuple[str, ...]:
    """The caption templates used for ``dataset`` (digit templates for digits/MNIST, object templates otherwise)."""
    return DIGIT_TEMPLATES if _kind(dataset) == "digit" else OBJECT_TEMPLATES


def fill(template: str, name: str) -> str:
    """One caption: the template with the class name and its article."""
    return template.format(a=article(name), c=name)


def template_indices(indices: np.ndarray, seed: int, num_templates: int) -> np.ndarray:
    """Template of each example: splitmix64(seed * 2^32 + index) mod num_templates, a pure function of (seed, index)."""
    with np.errstate(over="ignore"):
        z = np.asarray(indices, np.uint64) + np.uint64(seed) * np.uint64(2 ** 32) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(num_templates)).astype(np.int64)


def captions_for_labels(labels: np.ndarray, dataset: str, seed: int = 0, class_names: Sequence[str] = ()) -> list:
    """One caption per label, example i through template ``template_indices(i, seed)``."""
    names = caption_class_names(dataset, class_names)
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must be in 0..{len(names) - 1} for {dataset}, got {labels.min()}..{labels.max()}")
    temps = templates(dataset)
    picks = template_indices(np.arange(len(labels)), seed, len(temps))
    return [fill(temps[t], names[y]) for t, y in zip(picks, labels)]


def class_prompts(dataset: str, template: Optional[str] = None, class_names: Sequence[str] = ()) -> list:
    """One evaluation prompt per class, in label order (default "a photo of a sneaker" / "a handwritten digit two")."""
    template = template or EVAL_TEMPLATE[_kind(dataset)]
    return [fill(template, n) for n in caption_class_names(dataset, class_names)]


@dataclasses.dataclass(frozen=True)
class CaptionedSource:
    """An :class:`ArraySource` and one caption per image."""

    source: ArraySource
    captions: Tuple[str, ...]

    def __post_init__(self):
        if len(self.captions) != len(self.source):
            raise ValueError(f"{self.source.name}: {len(self.captions)} captions for {len(self.source)} images")

    def __len__(self) -> int:
        return len(self.source)

    def take(self, indices: np.ndarray):
        """(images uint8 [B, H, W, C], labels [B] or None, captions list of B strings)."""
        images, labels = self.source.take(indices)
        return images, labels, [self.captions[i] for i in np.asarray(indices).reshape(-1)]


def caption_source(source: ArraySource, seed: int = 0) -> CaptionedSource:
    """Templated captions for a labelled dataset (Fashion-MNIST, digits, MNIST, or any source with class names)."""
    if source.labels is None:
        raise ValueError(f"{source.name}: templated captions need labels")
    return CaptionedSource(source, tuple(captions_for_labels(source.labels, source.name, seed, source.class_names)))


def read_caption_file(path: str) -> list:
    """(filename, caption) pairs from ``captions.jsonl`` (objects with file/file_name/filename/image and caption/text)
    or ``captions.tsv`` (filename<TAB>caption per line; a first line 'filename<TAB>caption' is a header)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    file = next(row[k] for k in IMAGE_KEYS if k in row)
                    text = next(row[k] for k in TEXT_KEYS if k in row)
                except (json.JSONDecodeError, StopIteration, TypeError):
                    raise ValueError(f"{path}:{n}: expected a JSON object with one of {IMAGE_KEYS} and one of "
                                     f"{TEXT_KEYS}") from None
                pairs.append((str(file), str(text)))
        else:
            for n, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
                if not row or not "".join(row).strip():
                    continue
                if len(row) != 2:
                    raise ValueError(f"{path}:{n}: expected 'filename<TAB>caption', got {len(row)} fields")
                if n == 1 and row[0].strip().lower() in IMAGE_KEYS and row[1].strip().lower() in TEXT_KEYS:
                    continue
                pairs.append((row[0].strip(), row[1].strip()))
    if not pairs:
        raise ValueError(f"{path}: no captions")
    return pairs


def read_image(path: str, mode: str, image_size: Optional[int] = None) -> np.ndarray:
    """One image file as uint8 [H, W, C] in PIL ``mode`` (L or RGB); with ``image_size`` center-cropped to a square
    and resized (bicubic) to image_size x image_size."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert(mode)
        if image_size is not None and im.size != (image_size, image_size):
            side = min(im.size)  # center crop to a square, then resize
            left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BICUBIC)
        arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def load_caption_folder(folder: str, image_size: Optional[int] = None, channels: int = 3,
                        name: Optional[str] = None) -> CaptionedSource:
    """A folder of images plus ``captions.jsonl`` or ``captions.tsv`` naming them (paths relative to the folder).

    A file named on several lines gives several pairs. Images are converted to RGB (channels=3) or grayscale (1) and,
    with ``image_size``, center-cropped and resized to image_size x image_size; without it all must share one size.
    """
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"caption folder {folder} does not exist: expected images plus "
                                   f"{' or '.join(CAPTION_FILES)}")
    caption_file = next((os.path.join(folder, f) for f in CAPTION_FILES if os.path.isfile(os.path.join(folder, f))), None)
    if caption_file is None:
        raise DatasetNotFoundError(f"{folder} has no {' or '.join(CAPTION_FILES)} (lines of filename and caption)")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    pairs = read_caption_file(caption_file)
    cache = {}
    images = []
    for file, _ in pairs:
        if file not in cache:
            path = os.path.join(folder, file)
            if not os.path.isfile(path):
                raise DatasetNotFoundError(f"{path} (named in {caption_file}) not found")
            cache[file] = read_image(path, "RGB" if channels == 3 else "L", image_size)
        images.append(cache[file])
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: images have different sizes {sorted(shapes)[:3]}...; pass image_size to resize")
    source = ArraySource(np.stack(images), None, name or os.path.basename(os.path.normpath(folder)))
    return CaptionedSource(source, tuple(text for _, text in pairs))


def load_captioned(name: str, split: str = "train", data_dir: Optional[str] = None, seed: int = 0,
                   **kwargs) -> CaptionedSource:
    """By config name: ``folder:PATH`` (a captioned image folder; ``split`` unused), ``arrayrecord:DIR`` (the
    captions stored in the prepared records, or templates over its labels) or any :func:`load_source` name with
    labels, captioned through the templates."""
    if name.startswith("folder:"):
        return load_caption_folder(name[len("folder:"):], **kwargs)
    if name.startswith("arrayrecord:"):  # a prepared dataset: its records' captions, else templates over its labels
        source = load_source(name, split, data_dir)
        return CaptionedSource(source, source.captions) if source.has_captions else caption_source(source, seed)
    return caption_source(load_source(name, split, data_dir, **kwargs), seed)
