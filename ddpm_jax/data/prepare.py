"""Convert a dataset into ArrayRecord shards plus a JSON manifest, for ``--config.data.name=arrayrecord:DIR``.

    python -m ddpm_jax.data.prepare --source=fashion_mnist --out=DIR [--split=train] [--shards=N]
    python -m ddpm_jax.data.prepare --source=folder:PATH --out=DIR [--image_size=S] [--channels=1|3]
    python -m ddpm_jax.data.prepare --source=tfds:NAME --data_dir=TFDS_DIR --out=DIR [--split=test]

SOURCE: ``digits``, ``mnist`` / ``fashion_mnist`` (IDX folder: ``--data_dir``, Fashion-MNIST defaults to Debian's
/usr/share/datasets/fashion-mnist), ``folder:PATH`` (images plus captions.jsonl or captions.tsv) or ``tfds:NAME`` (a
TFDS dataset already prepared under ``--data_dir``). Examples are read one at a time and written in source order
(shuffling is the reader's, per epoch); the record format and manifest are those of :mod:`ddpm_jax.data.arrayrecord`.
One split per command: a second command with another ``--split`` adds it to the same ``--out``. An ``--out`` that
already holds the split, or holds files but no manifest, is refused unless ``--overwrite``.

``--out=gs://BUCKET/PATH`` writes the split into a local temporary folder (``$TMPDIR``: it needs room for the split),
then uploads each shard, streamed, and ``manifest.json`` last, so a reader never finds a manifest whose shards are
missing; shards of a replaced split that the new one does not overwrite are deleted after that.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from typing import Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from ddpm_jax import storage
from ddpm_jax.data.arrayrecord import (FORMAT, MANIFEST, VERSION, WRITER_OPTIONS, encode_example, file_sha256,
                                       read_manifest, write_manifest)
from ddpm_jax.data.captions import CAPTION_FILES, read_caption_file, read_image
from ddpm_jax.data.sources import DatasetNotFoundError, load_source, open_tfds, tfds_class_names

EXAMPLES_PER_SHARD = 10_000  # default shard count: one per this many examples
UPLOAD_CHUNK = 8 << 20  # bytes per write when uploading a file to gs:// (memory stays bounded by this)
Example = Tuple[np.ndarray, Optional[int], Optional[str]]  # (uint8 image [H, W, C], label or None, caption or None)


class OutputExistsError(FileExistsError):
    """--out already holds what this command would write."""


@dataclasses.dataclass
class Examples:
    """A dataset split as the writer reads it: a count, what each example carries, and a one-pass iterator."""

    name: str                      # dataset name recorded in the manifest (captions and class prompts use it)
    count: int
    class_names: Tuple[str, ...]
    has_labels: bool
    has_captions: bool
    iterate: Callable[[], Iterator[Example]]


def in_memory_examples(name: str, split: str, data_dir: Optional[str]) -> Examples:
    """digits, mnist, fashion_mnist: small enough to load (the same loaders as training)."""
    source = load_source(name, split, data_dir)

    def iterate():
        for i in range(len(source)):
            yield source.images[i], (None if source.labels is None else int(source.labels[i])), None

    return Examples(source.name, len(source), tuple(source.class_names), source.labels is not None, False, iterate)


def folder_examples(folder: str, image_size: Optional[int], channels: int) -> Examples:
    """A folder of images with captions.jsonl / captions.tsv, read one image at a time."""
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"caption folder {folder} does not exist: expected images plus "
                                   f"{' or '.join(CAPTION_FILES)}")
    caption_file = next((os.path.join(folder, f) for f in CAPTION_FILES if os.path.isfile(os.path.join(folder, f))),
                        None)
    if caption_file is None:
        raise DatasetNotFoundError(f"{folder} has no {' or '.join(CAPTION_FILES)} (lines of filename and caption)")
    if channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {channels}")
    pairs = read_caption_file(caption_file)
    for file, _ in pairs:  # fail before writing anything
        if not os.path.isfile(os.path.join(folder, file)):
            raise DatasetNotFoundError(f"{os.path.join(folder, file)} (named in {caption_file}) not found")

    def iterate():
        for file, text in pairs:
            yield read_image(os.path.join(folder, file), "RGB" if channels == 3 else "L", image_size), None, text

    return Examples(os.path.basename(os.path.normpath(folder)), len(pairs), (), False, True, iterate)


def tfds_examples(name: str, data_dir: Optional[str], split: str, image_key: str = "image",
                  label_key: str = "label") -> Examples:
    """A TFDS dataset already prepared under ``data_dir``, read by random access (never loaded whole)."""
    source = open_tfds(name, data_dir, split)
    first = source[0] if len(source) else {}
    has_labels = label_key in first

    def iterate():
        for i in range(len(source)):
            ex = source[i]
            yield np.asarray(ex[image_key], np.uint8), (int(ex[label_key]) if has_labels else None), None

    return Examples(name, len(source), tfds_class_names(source, label_key if has_labels else None), has_labels,
                    False, iterate)


def examples_for(spec: str, split: str, data_dir: Optional[str], image_size: Optional[int] = None,
                 channels: int = 3) -> Examples:
    """The examples of ``--source``."""
    if spec.startswith("folder:"):
        return folder_examples(spec[len("folder:"):], image_size, channels)
    if spec.startswith("tfds:"):
        return tfds_examples(spec[len("tfds:"):], data_dir, split)
    if spec in ("digits", "mnist", "fashion_mnist"):
        return in_memory_examples(spec, split, data_dir)
    raise ValueError(f"unknown --source {spec!r}; use digits, mnist, fashion_mnist, folder:PATH or tfds:NAME")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.array_record"


def check_output(out: str, split: str, overwrite: bool) -> Optional[dict]:
    """The manifest already in ``out`` (local or ``gs://``; None if none); refuses to replace a split or write into a
    foreign folder."""
    if not storage.isdir(out) or not storage.listdir(out):
        return None
    if not storage.isfile(storage.join(out, MANIFEST)):
        if overwrite:
            return None
        raise OutputExistsError(f"--out={out} is not empty and holds no {MANIFEST}: refusing to write into it "
                                f"(choose a new or empty folder, or pass --overwrite)")
    manifest = read_manifest(out)
    if split in manifest["splits"] and not overwrite:
        info = manifest["splits"][split]
        raise OutputExistsError(f"--out={out} already holds split {split!r} ({info['num_examples']} examples of "
                                f"{manifest['name']}): pass --overwrite to replace it, or choose another --out")
    return manifest


class Progress:
    """A line every ``every`` seconds on stderr: examples done, rate, bytes written."""

    def __init__(self, split: str, total: int, every: float = 5.0, stream=None):
        self.split, self.total, self.every, self.stream = split, total, every, stream or sys.stderr
        self.start = self.last = time.time()

    def __call__(self, done: int, nbytes: int, force: bool = False) -> None:
        now = time.time()
        if force or now - self.last >= self.every:
            self.last = now
            rate = done / max(now - self.start, 1e-9)
            print(f"prepare: {self.split} {done:,}/{self.total:,} examples ({100.0 * done / self.total:.0f}%), "
                  f"{rate:,.0f} examples/s, {nbytes / 1e6:.1f} MB written", file=self.stream, flush=True)


def write_split(out: str, split: str, examples: Examples, shards: Optional[int] = None, overwrite: bool = False,
                source: str = "", progress_every: float = 5.0) -> dict:
    """Write ``examples`` as split ``split`` of the prepared dataset ``out``; returns the new manifest."""
    from array_record.python.array_record_module import ArrayRecordWriter

    if examples.count == 0:
        raise ValueError(f"{source or examples.name} split {split!r} is empty")
    existing = check_output(out, split, overwrite)
    previous = dict(existing["splits"].get(split) or {}) if existing else {}
    if existing is not None and set(existing["splits"]) == {split}:  # replacing the only split: a new dataset
        existing = None
    shards = shards or max(1, math.ceil(examples.count / EXAMPLES_PER_SHARD))
    if not 1 <= shards <= examples.count:
        raise ValueError(f"--shards must be in 1..{examples.count} (the number of examples), got {shards}")
    os.makedirs(out, exist_ok=True)
    bounds = [examples.count * i // shards for i in range(shards + 1)]
    names = [shard_name(split, i, shards) for i in range(shards)]
    tmp_paths = [os.path.join(out, f".{n}.tmp{os.getpid()}") for n in names]
    progress, shape, nbytes, done = Progress(split, examples.count, progress_every), None, 0, 0
    it = examples.iterate()
    shard_info = []
    try:
        for s, path in enumerate(tmp_paths):
            writer = ArrayRecordWriter(path, WRITER_OPTIONS)
            try:
                for _ in range(bounds[s], bounds[s + 1]):
                    image, label, caption = next(it)
                    image = np.asarray(image)
                    image = image[..., None] if image.ndim == 2 else image
                    if shape is None:
                        shape = image.shape
                        if existing is not None and tuple(existing["image_shape"]) != shape:
                            raise ValueError(f"--out={out} holds {tuple(existing['image_shape'])} images, "
                                             f"{source or examples.name} split {split!r} has {shape}")
                    elif image.shape != shape:
                        raise ValueError(f"example {done} of {source or examples.name} is {image.shape}, the first "
                                         f"was {shape}: all images of a prepared dataset share one shape (folders: "
                                         f"pass --image_size)")
                    record = encode_example(image, label, caption)
                    writer.write(record)
                    nbytes += len(record)
                    done += 1
                    progress(done, nbytes)
            finally:
                writer.close()
            shard_info.append({"file": names[s], "num_records": bounds[s + 1] - bounds[s],
                               "bytes": os.path.getsize(path), "sha256": file_sha256(path)})
        for tmp, name in zip(tmp_paths, names):
            os.replace(tmp, os.path.join(out, name))
    except BaseException:
        for tmp in tmp_paths:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise
    manifest = existing or {"format": FORMAT, "version": VERSION, "name": examples.name, "source": source,
                            "image_shape": list(shape), "class_names": list(examples.class_names), "splits": {}}
    manifest["splits"][split] = {"num_examples": examples.count, "has_labels": examples.has_labels,
                                 "has_captions": examples.has_captions, "shards": shard_info}
    write_manifest(out, manifest)
    for shard in previous.get("shards", []):  # the replaced split's shards that the new one did not overwrite
        if shard["file"] not in names and os.path.exists(os.path.join(out, shard["file"])):
            os.remove(os.path.join(out, shard["file"]))
    progress(done, nbytes, force=True)
    return manifest


def upload(local: str, remote: str, chunk: int = UPLOAD_CHUNK) -> int:
    """Copy the local file ``local`` to ``remote`` (``gs://``), ``chunk`` bytes at a time; returns its size."""
    done = 0
    with open(local, "rb") as src, storage.open_file(remote, "wb") as dst:
        for block in iter(lambda: src.read(chunk), b""):
            dst.write(block)
            done += len(block)
    return done


def write_split_remote(out: str, split: str, examples: Examples, shards: Optional[int] = None,
                       overwrite: bool = False, source: str = "", progress_every: float = 5.0, stream=None) -> dict:
    """:func:`write_split` for ``out`` on ``gs://``: the split is written into a local temporary folder (seeded with
    ``out``'s manifest, if any), its shards are uploaded one by one, then the manifest, then the replaced split's shards
    that the new one did not overwrite are deleted. Returns the new manifest."""
    stream = stream or sys.stderr
    existing = check_output(out, split, overwrite)
    with tempfile.TemporaryDirectory(prefix="ddpm_jax_prepare_") as tmp:
        if existing is not None:
            write_manifest(tmp, existing)
        manifest = write_split(tmp, split, examples, shards, overwrite, source, progress_every)
        files = [s["file"] for s in manifest["splits"][split]["shards"]]
        start = time.time()
        for i, name in enumerate(files + [MANIFEST], 1):  # the manifest last: its shards are all there before it
            t0 = time.time()
            nbytes = upload(os.path.join(tmp, name), storage.join(out, name))
            seconds = max(time.time() - t0, 1e-9)
            print(f"prepare: uploaded {i}/{len(files) + 1} {storage.join(out, name)}: {nbytes / 1e6:.1f} MB in "
                  f"{seconds:.1f} s, {nbytes / 1e6 / seconds:.1f} MB/s", file=stream, flush=True)
    for shard in ((existing or {}).get("splits", {}).get(split) or {}).get("shards", []):
        if shard["file"] not in files:
            storage.remove(storage.join(out, shard["file"]))
    print(f"prepare: uploaded {len(files)} shards and {MANIFEST} to {out} in {time.time() - start:.1f} s", file=stream,
          flush=True)
    return manifest


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ddpm_jax.data.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True,
                        help="digits | mnist | fashion_mnist | folder:PATH | tfds:NAME")
    parser.add_argument("--out", required=True,
                        help="output folder or gs://BUCKET/PATH (arrayrecord:OUT in a config)")
    parser.add_argument("--split", default="train", help="train | test (digits also: all); folders have one")
    parser.add_argument("--shards", type=int, default=0,
                        help=f"number of ArrayRecord files (default: one per {EXAMPLES_PER_SHARD:,} examples)")
    parser.add_argument("--data_dir", default="", help="IDX folder (mnist/fashion_mnist) or TFDS data_dir")
    parser.add_argument("--image_size", type=int, default=0,
                        help="folder:PATH only: center-crop and resize to this size (0: keep; all must match)")
    parser.add_argument("--channels", type=int, default=3, help="folder:PATH only: 1 (grayscale) or 3 (RGB)")
    parser.add_argument("--overwrite", action="store_true", help="replace the split if --out already holds it")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out = storage.resolve(args.out)
    check_output(out, args.split, args.overwrite)  # refuse before reading a large source
    examples = examples_for(args.source, args.split, args.data_dir or None, args.image_size or None, args.channels)
    write = write_split_remote if storage.is_remote(out) else write_split
    manifest = write(out, args.split, examples, args.shards or None, args.overwrite, args.source)
    info = manifest["splits"][args.split]
    what = ", ".join(w for w, on in (("labels", info["has_labels"]), ("captions", info["has_captions"])) if on)
    print(f"prepared {args.source} split {args.split}: {info['num_examples']:,} examples "
          f"({'x'.join(map(str, manifest['image_shape']))}{', ' + what if what else ''}) in {len(info['shards'])} "
          f"shards, {sum(s['bytes'] for s in info['shards']) / 1e6:.1f} MB, in {time.time() - t0:.1f} s -> "
          f"{storage.join(out, MANIFEST)}; train with --config.data.name=arrayrecord:{out}")
    return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        prepare(args)
    except (OSError, ValueError) as e:  # missing source, refused --out, bad images: one line
        if os.environ.get("DDPM_JAX_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
