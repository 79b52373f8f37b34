"""Prepared datasets on disk: ArrayRecord shards of encoded examples plus a JSON manifest (``arrayrecord:DIR``).

Written by ``python -m ddpm_jax.data.prepare`` (:mod:`ddpm_jax.data.prepare`), read with random access and never
loaded whole: a batch decodes only its own examples (:mod:`ddpm_jax.data.streaming` does it in grain threads).

Layout of ``DIR``::

    manifest.json                          the small index below
    {split}-{i:05d}-of-{n:05d}.array_record one record per example, written with group_size:1 (random access)

Record format (version 1): a msgpack map ``{"image": PNG bytes, "label": int, "caption": str}``; ``label`` is present
when the split has labels, ``caption`` when it has captions. The PNG holds uint8 [H, W] (one channel, mode L) or
[H, W, 3] (RGB), the same shape for every record of a split. Record ``k`` of a split is the ``k``-th record of the
concatenated shards (in manifest order).

``manifest.json``: ``{"format": "ddpm_jax.arrayrecord", "version": 1, "name": dataset name (e.g. "fashion_mnist";
captions and class prompts use it), "source": what was converted, "image_shape": [H, W, C], "class_names": [...],
"splits": {split: {"num_examples", "has_labels", "has_captions", "shards": [{"file", "num_records", "bytes",
"sha256"}]}}}``.

``DIR`` may be ``gs://BUCKET/PATH``. The C++ ArrayRecord reader opens local files only, so the manifest is read
through :mod:`ddpm_jax.storage` (``etils.epath``) and the split's shards are first staged into a local cache
(:func:`stage_split`): ``$DDPM_JAX_DATASET_CACHE`` or ``~/.cache/ddpm_jax/datasets``, one folder per remote path (its
sha256). Each shard is downloaded in chunks to a name unique to the process, checked against its sha256 and renamed
into place, under a per-shard lock; a ``FILE.verified`` marker (the sha256) lets a later open reuse it after a size
check, without hashing it again. The staged folder is then read like any local one, with the same identity.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ddpm_jax import storage
from ddpm_jax.data.errors import DatasetNotFoundError

log = logging.getLogger("ddpm_jax")

FORMAT = "ddpm_jax.arrayrecord"
VERSION = 1
MANIFEST = "manifest.json"
WRITER_OPTIONS = "group_size:1"  # one record per chunk: what random access (grain) needs
SCAN_CHUNK = 4096  # records read per call when scanning labels/captions or decoding many images
CACHE_ENV = "DDPM_JAX_DATASET_CACHE"  # where gs:// datasets are staged (default below)
DEFAULT_CACHE = os.path.join("~", ".cache", "ddpm_jax", "datasets")
COPY_CHUNK = 8 << 20  # bytes per read when staging a shard (memory stays bounded by this)
VERIFIED = ".verified"  # suffix of the marker beside a staged shard: its sha256, written once it was checked
PROGRESS_EVERY = 10.0  # seconds between progress lines while one shard downloads


class DatasetFormatError(ValueError):
    """A prepared dataset whose files do not match its manifest (or a manifest of another format)."""


# ---------------------------------------------------------------------------------------------------------- records


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 [H, W, 1] or [H, W, 3] -> PNG bytes (lossless; level 1: fast, still ~2x smaller than raw on MNIST)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 [H, W, 1|3], got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="PNG",
                                                                          compress_level=compress_level)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, C]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im, np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def encode_example(image: np.ndarray, label: Optional[int] = None, caption: Optional[str] = None) -> bytes:
    """One record: the msgpack map of the module docstring."""
    import msgpack

    record = {"image": encode_png(image)}
    if label is not None:
        record["label"] = int(label)
    if caption is not None:
        record["caption"] = str(caption)
    return msgpack.packb(record, use_bin_type=True)


def decode_fields(raw: bytes) -> dict:
    """A record's map, the image still PNG-encoded."""
    import msgpack

    return msgpack.unpackb(raw, raw=False)


def decode_images(raws: Sequence[bytes], image_shape: Sequence[int]) -> Tuple[np.ndarray, List[dict]]:
    """(uint8 images [B, H, W, C], the records' other fields) of a list of records; a record of another shape is an
    error (the manifest promises one shape)."""
    fields = [decode_fields(r) for r in raws]
    images = np.empty((len(raws),) + tuple(image_shape), np.uint8)
    for i, f in enumerate(fields):
        image = decode_png(f.pop("image"))
        if image.shape != images.shape[1:]:
            raise DatasetFormatError(f"a record holds a {image.shape} image; the manifest says {tuple(image_shape)}")
        images[i] = image
    return images, fields


# ---------------------------------------------------------------------------------------------------------- manifest


def read_manifest(directory: str) -> dict:
    """``DIR/manifest.json`` (DIR local or ``gs://``); a missing folder or manifest is a one-line
    :class:`DatasetNotFoundError`."""
    path = storage.join(directory, MANIFEST)
    if not storage.exists(path):
        if not storage.isdir(directory):
            raise DatasetNotFoundError(f"prepared dataset {directory} does not exist: make it with `python -m "
                                       f"ddpm_jax.data.prepare --source=SOURCE --out={directory}`")
        raise DatasetNotFoundError(f"{directory} has no {MANIFEST}: it is not a prepared dataset (make one with "
                                   f"`python -m ddpm_jax.data.prepare --source=SOURCE --out=DIR`)")
    try:
        manifest = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as e:
        raise DatasetFormatError(f"{path} is not valid JSON ({e}); prepare the dataset again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetFormatError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DatasetFormatError(f"{path} has format version {manifest.get('version')}; this code reads version "
                                 f"{VERSION}: prepare the dataset again with this version")
    return manifest


def write_manifest(directory: str, manifest: dict) -> str:
    """Write ``manifest.json`` atomically (a reader never sees half a manifest)."""
    path = os.path.join(directory, MANIFEST)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """sha256 of a local or ``gs://`` file, read in chunks."""
    digest = hashlib.sha256()
    with storage.open_file(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_shards(directory: str, split: Optional[str] = None) -> Dict[str, int]:
    """Check every shard's sha256 against the manifest (reads all files; DIR local or ``gs://``); {split: examples}.
    Raises :class:`DatasetFormatError` naming the first bad shard."""
    manifest = read_manifest(directory)
    out = {}
    for name, info in manifest["splits"].items():
        if split is not None and name != split:
            continue
        for shard in info["shards"]:
            path = storage.join(directory, shard["file"])
            if not storage.isfile(path):
                raise DatasetFormatError(f"{path} (listed in {MANIFEST}) is missing")
            if file_sha256(path) != shard["sha256"]:
                raise DatasetFormatError(f"{path} does not match its sha256 in {MANIFEST}: prepare the dataset again")
        out[name] = info["num_examples"]
    return out


# ---------------------------------------------------------------------------------------------------------- staging


def cache_root() -> str:
    """Where ``gs://`` datasets are staged: ``$DDPM_JAX_DATASET_CACHE``, else ``~/.cache/ddpm_jax/datasets``."""
    return os.path.abspath(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def cache_dir(remote: str, root: Optional[str] = None) -> str:
    """The local folder staging the remote dataset ``remote``: ROOT/<sha256 of its path>."""
    return os.path.join(root or cache_root(), hashlib.sha256(storage.resolve(remote).encode()).hexdigest())


def read_marker(path: str) -> Optional[str]:
    """The sha256 recorded beside the staged file ``path`` when it was verified (None: never verified)."""
    try:
        with open(path + VERIFIED, encoding="ascii") as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def write_marker(path: str, sha256: str) -> None:
    storage.write_text_atomic(path + VERIFIED, sha256 + "\n")


def is_staged(path: str, shard: dict) -> bool:
    """Whether the local file ``path`` is the verified copy of ``shard``: its size first, then its marker (never
    hashed again)."""
    return (os.path.isfile(path) and os.path.getsize(path) == shard["bytes"]
            and read_marker(path) == shard["sha256"])


@contextlib.contextmanager
def file_lock(path: str):
    """An exclusive lock on the local file ``path`` (created if needed) for the block: one process stages a shard, the
    others on the host wait for it and then find it staged."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def download(remote: str, local: str, expected_bytes: int, label: str) -> Tuple[str, int]:
    """Copy the object ``remote`` to the local file ``local``, COPY_CHUNK bytes at a time; (sha256, bytes) of the
    copy. A progress line every PROGRESS_EVERY seconds."""
    digest, done = hashlib.sha256(), 0
    start = last = time.time()
    with storage.open_file(remote, "rb") as src, open(local, "wb") as dst:
        for block in iter(lambda: src.read(COPY_CHUNK), b""):
            dst.write(block)
            digest.update(block)
            done += len(block)
            now = time.time()
            if now - last >= PROGRESS_EVERY:
                last = now
                log.info("%s: %.1f/%.1f MB, %.1f MB/s", label, done / 1e6, expected_bytes / 1e6,
                         done / 1e6 / max(now - start, 1e-9))
    return digest.hexdigest(), done


def stage_shard(remote_dir: str, local_dir: str, shard: dict, index: int, count: int) -> bool:
    """Make ``local_dir/FILE`` the verified copy of ``shard`` of the remote dataset ``remote_dir``: downloaded to a
    name unique to this process, checked against the manifest's size and sha256, renamed into place, then marked.
    True when it was downloaded, False when already staged. A mismatch is a one-line :class:`DatasetFormatError`."""
    path, remote = os.path.join(local_dir, shard["file"]), storage.join(remote_dir, shard["file"])
    with file_lock(os.path.join(local_dir, f".{shard['file']}.lock")):
        if is_staged(path, shard):
            return False
        storage.remove(path + VERIFIED)  # a copy of another version of the shard, if any, is replaced below
        tmp = os.path.join(local_dir, f".{shard['file']}.tmp{os.getpid()}")
        label, start = f"staging {remote} (shard {index}/{count})", time.time()
        try:
            try:
                sha256, nbytes = download(remote, tmp, shard["bytes"], label)
            except FileNotFoundError:
                raise DatasetFormatError(f"{remote} (listed in {storage.join(remote_dir, MANIFEST)}) is missing") \
                    from None
            if nbytes != shard["bytes"]:
                raise DatasetFormatError(f"{remote} has {nbytes} bytes, its {MANIFEST} says {shard['bytes']}: "
                                         f"prepare the dataset again")
            if sha256 != shard["sha256"]:
                raise DatasetFormatError(f"{remote} does not match its sha256 in {MANIFEST}: prepare the dataset "
                                         f"again")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        write_marker(path, sha256)
    seconds = time.time() - start
    log.info("%s: %.1f MB in %.1f s, %.1f MB/s", label, nbytes / 1e6, seconds, nbytes / 1e6 / max(seconds, 1e-9))
    return True


def staged_manifest(manifest: dict, local_dir: str) -> dict:
    """``manifest`` restricted to the splits whose shards are all staged in ``local_dir``."""
    splits = {name: info for name, info in manifest["splits"].items()
              if all(is_staged(os.path.join(local_dir, s["file"]), s) for s in info["shards"])}
    return dict(manifest, splits=splits)


def check_free_space(remote: str, local_dir: str, shards: Sequence[dict]) -> None:
    """Refuse (one line) to stage more than the cache's disk holds: such a dataset needs a mount."""
    need = sum(s["bytes"] for s in shards if not is_staged(os.path.join(local_dir, s["file"]), s))
    free = shutil.disk_usage(local_dir).free
    if need > free:
        raise OSError(f"staging {remote} needs {need / 1e6:,.1f} MB in {local_dir}, which has {free / 1e6:,.1f} MB "
                      f"free: set {CACHE_ENV} to a bigger disk, or mount the bucket with gcsfuse and read "
                      f"arrayrecord:MOUNT/PATH")


def stage_split(remote: str, split: str, manifest: Optional[dict] = None, root: Optional[str] = None) -> str:
    """Stage split ``split`` of the remote prepared dataset ``remote`` into its cache folder (:func:`cache_dir` under
    ``root``, default :func:`cache_root`), downloading only the shards not staged yet. Returns the folder: a local
    prepared dataset whose manifest lists the splits staged there."""
    remote = storage.resolve(remote)
    manifest = manifest or read_manifest(remote)
    shards = manifest["splits"][split]["shards"]
    local = cache_dir(remote, root)
    os.makedirs(local, exist_ok=True)
    check_free_space(remote, local, shards)
    start, fetched, nbytes = time.time(), 0, 0
    for i, shard in enumerate(shards, 1):
        if stage_shard(remote, local, shard, i, len(shards)):
            fetched, nbytes = fetched + 1, nbytes + shard["bytes"]
    write_manifest(local, staged_manifest(manifest, local))
    log.info("dataset %s split %s: %d shards (%.1f MB) staged in %s: %d downloaded (%.1f MB in %.1f s), %d reused",
             remote, split, len(shards), sum(s["bytes"] for s in shards) / 1e6, local, fetched, nbytes / 1e6,
             time.time() - start, len(shards) - fetched)
    return local


# ---------------------------------------------------------------------------------------------------------- source


class LazyImages:
    """``source.images`` of a prepared dataset: shape, dtype and indexing like a uint8 [N, H, W, C] array, decoding
    only what is indexed (``np.asarray`` decodes all of it: for small datasets and evaluation references)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, source: "ArrayRecordSource"):
        self._source = source
        self.shape = (len(source),) + tuple(source.image_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None),) + key[1:]] if not np.isscalar(key[0]) else self[key[0]][key[1:]]
        if isinstance(key, (int, np.integer)):
            return self._source.take(np.asarray([int(key) % len(self)]))[0][0]
        if isinstance(key, slice):
            return self._source.take(np.arange(*key.indices(len(self))))[0]
        return self._source.take(np.asarray(key))[0]

    def __array__(self, dtype=None, copy=None):
        images = self[:]
        return images if dtype is None else images.astype(dtype)


class ArrayRecordSource:
    """One split of a prepared dataset, with the interface of :class:`~ddpm_jax.data.sources.ArraySource`
    (``name``, ``len``, ``images``, ``labels``, ``class_names``, ``num_classes``, ``take``) without holding it.

    ``labels`` and ``captions`` are read on first use by one pass over the records (text tasks and evaluation need
    them); training batches read only their own records (:mod:`ddpm_jax.data.streaming`)."""

    streaming = True

    def __init__(self, directory: str, split: str = "train"):
        self.directory = storage.resolve(directory)  # a gs:// one is read from its local staged copy (local_directory)
        manifest = read_manifest(self.directory)
        if split not in manifest["splits"]:
            raise DatasetNotFoundError(
                f"{directory} has no split {split!r} (prepared: {', '.join(sorted(manifest['splits']))}); add it with "
                f"`python -m ddpm_jax.data.prepare --source={manifest.get('source', 'SOURCE')} --out={directory} "
                f"--split={split}`")
        info = manifest["splits"][split]
        self.split = split
        self.name = manifest["name"]
        self.image_shape = tuple(int(d) for d in manifest["image_shape"])
        self.class_names = tuple(manifest.get("class_names") or ())
        self.has_labels, self.has_captions = bool(info["has_labels"]), bool(info["has_captions"])
        self.num_examples = int(info["num_examples"])
        if sum(s["num_records"] for s in info["shards"]) != self.num_examples or not self.num_examples:
            raise DatasetFormatError(f"{directory}: the shards of split {split!r} do not add up to its "
                                     f"{self.num_examples} examples")
        self.local_directory = (stage_split(self.directory, split, manifest) if storage.is_remote(self.directory)
                                else self.directory)
        self.paths = [os.path.join(self.local_directory, s["file"]) for s in info["shards"]]
        for shard, path in zip(info["shards"], self.paths):
            if not os.path.isfile(path):
                raise DatasetFormatError(f"{path} (listed in {storage.join(directory, MANIFEST)}) is missing")
            if os.path.getsize(path) != shard["bytes"]:
                raise DatasetFormatError(f"{path} has {os.path.getsize(path)} bytes, the manifest says "
                                         f"{shard['bytes']}: prepare the dataset again")
        # what this split's examples are (its shards' sha256s included): another split added to DIR leaves it alone
        identity = {k: manifest.get(k) for k in ("name", "image_shape", "class_names")}
        identity.update(split=split, info=info)
        self.fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.images = LazyImages(self)
        self._records = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.directory!r}, split={self.split!r}, {self.num_examples} examples)"

    def __len__(self) -> int:
        return self.num_examples

    def __getstate__(self):  # picklable (grain worker processes): readers are reopened there
        state = self.__dict__.copy()
        state["_records"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def records(self):
        """The split's raw records as a grain random-access source (opened once per process)."""
        if self._records is None:
            with self._lock:
                if self._records is None:
                    import grain

                    self._records = grain.sources.ArrayRecordDataSource(self.paths)
                    if len(self._records) != self.num_examples:
                        raise DatasetFormatError(f"{self.directory}: the shards hold {len(self._records)} records, "
                                                 f"the manifest says {self.num_examples}")
        return self._records

    def read(self, indices: Sequence[int]) -> List[bytes]:
        """The raw records ``indices`` (parallel reads across shards)."""
        return list(self.records.__getitems__([int(i) for i in indices]))

    def take(self, indices: np.ndarray):
        """(uint8 images [B, H, W, C], int32 labels [B] or None) of examples ``indices``, decoded."""
        indices = np.asarray(indices).reshape(-1)
        images = np.empty((len(indices),) + self.image_shape, np.uint8)
        labels = np.empty(len(indices), np.int32) if self.has_labels else None
        for start in range(0, len(indices), SCAN_CHUNK):
            chunk = indices[start:start + SCAN_CHUNK]
            images[start:start + len(chunk)], fields = decode_images(self.read(chunk), self.image_shape)
            if labels is not None:
                labels[start:start + len(chunk)] = [f["label"] for f in fields]
        return images, labels

    @functools.cached_property
    def _scan(self) -> Tuple[Optional[np.ndarray], Optional[Tuple[str, ...]]]:
        """(labels, captions) of every record: one pass over the split, images left encoded."""
        labels = np.empty(self.num_examples, np.int32) if self.has_labels else None
        captions = [] if self.has_captions else None
        if labels is None and captions is None:
            return None, None
        for start in range(0, self.num_examples, SCAN_CHUNK):
            for i, raw in enumerate(self.read(range(start, min(start + SCAN_CHUNK, self.num_examples)))):
                f = decode_fields(raw)
                if labels is not None:
                    labels[start + i] = f["label"]
                if captions is not None:
                    captions.append(f["caption"])
        return labels, (tuple(captions) if captions is not None else None)

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self._scan[0] if self.has_labels else None

    @property
    def captions(self) -> Optional[Tuple[str, ...]]:
        """One caption per example, from the records (None when the split has none)."""
        return self._scan[1] if self.has_captions else None

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.has_labels else 0


def load_arrayrecord(directory: str, split: str = "train") -> ArrayRecordSource:
    """``arrayrecord:DIR`` of a config: one split of a prepared dataset (DIR local or ``gs://BUCKET/PATH``)."""
    if not directory:
        raise ValueError("arrayrecord:DIR needs the folder of a prepared dataset after the colon")
    return ArrayRecordSource(directory, split)
