"""Training batches streamed from a prepared ArrayRecord dataset through grain.

The batch of step k is the one :class:`~ddpm_jax.data.pipeline.BatchPipeline` would give for the same examples:
the global batch is ``global_batch_indices(k)`` (epochs are permutations, a pure function of (seed, epoch)), each
process reads only its own contiguous slice of it, and the images are decoded, resized (``resize_nearest``), flipped
and scaled (``to_model_range``) exactly as there. So the global batch of step k does not depend on the process count,
on the number of grain threads or worker processes, nor on the data being in memory or on disk.

grain runs the reading and decoding: one element of the grain dataset is this process's part of one step's batch
(``MapDataset.range(step, ...).map(ReadBatch)``); ``ReadOptions(num_threads, prefetch_buffer_size)`` decodes that many
upcoming batches in threads, ``mp_prefetch`` (``data.grain.workers`` > 0) in worker processes. Memory is bounded by
the prefetched batches and the epoch permutation (8 bytes per example), never the dataset.

The data position is :class:`StepIterator`'s state, ``{"next_step", "dataset", "global_batch_size"}``; it is saved
with every checkpoint (grain's Orbax handler, :meth:`ddpm_jax.workdir.Checkpointer.save`) and restored with it, so a
resumed run reads on from where the checkpoint was taken, without replaying batches, and refuses a dataset that was
prepared again since.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Dict, Optional, Tuple

import grain
import numpy as np

from ddpm_jax.data.arrayrecord import ArrayRecordSource, decode_images
from ddpm_jax.data.pipeline import BatchPipeline, epoch_permutation, process_slice, resize_nearest, to_model_range

log = logging.getLogger("ddpm_jax")
MAX_STEPS = 1 << 48  # the stream has no end; training stops it


class DataPositionError(ValueError):
    """A checkpoint's data position does not belong to this run's data (another dataset or batch size)."""


@functools.lru_cache(maxsize=2)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return epoch_permutation(seed, epoch, n)


def step_indices(step: int, batch_size: int, num_examples: int, seed: int) -> np.ndarray:
    """``global_batch_indices`` with the epoch permutation cached (computed once per epoch, not per step)."""
    steps_per_epoch = num_examples // batch_size
    epoch, within = divmod(int(step), steps_per_epoch)
    return _epoch_order(seed, epoch, num_examples)[within * batch_size:(within + 1) * batch_size]


@dataclasses.dataclass(frozen=True)
class ReadBatch(grain.transforms.Map):
    """step -> this process's part of global batch ``step``: read its records, decode, resize, flip, scale."""

    source: ArrayRecordSource
    global_batch_size: int
    image_size: int
    seed: int
    random_flip: bool
    process_index: int
    process_count: int

    def map(self, step: int) -> Dict[str, np.ndarray]:
        part = process_slice(self.global_batch_size, self.process_index, self.process_count)
        idx = step_indices(step, self.global_batch_size, len(self.source), self.seed)[part]
        images, fields = decode_images(self.source.read(idx), self.source.image_shape)
        images = resize_nearest(images, self.image_size)
        if self.random_flip:  # the same draw as BatchPipeline: per global batch, then this process's slice
            flip = np.random.default_rng([self.seed, 1, int(step)]).random(self.global_batch_size)[part] < 0.5
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        labels = np.asarray([f["label"] for f in fields] if self.source.has_labels else np.zeros(len(idx)), np.int32)
        return {"image": to_model_range(images), "label": labels}


class StepIterator(grain.DatasetIterator):
    """The stream of batches from a given step on; its state (the data position) is the next step.

    ``set_state`` (a checkpoint restore through grain's Orbax handler) only records the position: the grain pipeline
    starts there at the first batch, so a resume reads no batch twice. :meth:`resume_at` checks a restored position
    against the run's step and data.
    """

    def __init__(self, make_dataset, fingerprint: str, global_batch_size: int):
        super().__init__()
        self._make_dataset = make_dataset
        self._fingerprint = fingerprint
        self._global_batch_size = global_batch_size
        self._next_step = 0
        self._inner = None
        self.restored: Optional[Dict[str, Any]] = None  # the state last set from a checkpoint

    @property
    def next_step(self) -> int:
        return self._next_step

    def get_state(self) -> Dict[str, Any]:
        return {"next_step": self._next_step, "dataset": self._fingerprint,
                "global_batch_size": self._global_batch_size}

    def set_state(self, state: Dict[str, Any]) -> None:
        step = int(state["next_step"])
        self._seek(step)
        self.restored = dict(state)

    def _seek(self, step: int) -> None:
        self._close_inner()
        self._next_step = step

    def start_prefetch(self) -> None:
        if self._inner is None:
            self._inner = iter(self._make_dataset(self._next_step))
            self._inner.start_prefetch()

    def resume_at(self, step: int) -> str:
        """Position the stream at ``step``: check the restored position (same step, dataset and batch size), or, for
        a checkpoint without one (older checkpoints, another process count), start at the step's position."""
        if self.restored is None:
            self._seek(step)
            if step == 0:
                return "data position: step 0 (a new run)"
            return (f"data position: step {step} (computed from the step: checkpoint {step} holds no data position "
                    f"for this process)")
        saved = self.restored
        if saved.get("dataset") != self._fingerprint:
            raise DataPositionError(
                f"checkpoint {step}'s data position belongs to another dataset (fingerprint "
                f"{str(saved.get('dataset'))[:12]}..., now {self._fingerprint[:12]}...): the split was prepared again "
                f"since; nothing was moved: restore the dataset the run was trained on, or use a new --workdir")
        if int(saved.get("global_batch_size", -1)) != self._global_batch_size or int(saved["next_step"]) != step:
            raise DataPositionError(
                f"checkpoint {step}'s data position is step {saved['next_step']} of global batch "
                f"{saved.get('global_batch_size')}, the run is at step {step} with batch {self._global_batch_size}")
        return f"data position: step {step} (restored from the checkpoint)"

    def next_batch(self, step: int) -> Dict[str, np.ndarray]:
        """The batch of ``step``, which must be the stream's next one (a streaming pipeline does not jump)."""
        if step != self._next_step:
            raise RuntimeError(f"the data stream is at step {self._next_step}, the trainer asked for step {step}: "
                               f"restore the data position with the train state (Checkpointer.restore_data)")
        return next(self)

    def __next__(self) -> Dict[str, np.ndarray]:
        self._assert_not_closed()
        self.start_prefetch()
        batch = next(self._inner)
        self._next_step += 1
        # worker processes hand batches over in shared memory: own plain copies (freed with the batch, not at exit)
        return {k: np.array(v) for k, v in batch.items()}

    def _close_inner(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def close(self) -> None:
        self._close_inner()
        super().close()


@dataclasses.dataclass
class GrainPipeline:
    """Training batches from an :class:`ArrayRecordSource`: ``batch(step)`` as :class:`BatchPipeline` gives it, read
    sequentially from a grain stream whose position is checkpointed (``data_iterator``)."""

    source: ArrayRecordSource
    global_batch_size: int
    image_size: int
    seed: int = 0
    random_flip: bool = False
    process_index: int = 0
    process_count: int = 1
    threads: int = 2    # grain ReadOptions.num_threads: batches decoded concurrently in this process
    prefetch: int = 4   # grain ReadOptions.prefetch_buffer_size: batches decoded ahead
    workers: int = 0    # > 0: grain worker processes (mp_prefetch), each with `threads` threads

    def __post_init__(self):
        self._slice = process_slice(self.global_batch_size, self.process_index, self.process_count)
        if self.global_batch_size > len(self.source):
            raise ValueError(f"global batch size {self.global_batch_size} exceeds the dataset's {len(self.source)} "
                             f"examples")
        if self.threads < 0 or self.prefetch < 0 or self.workers < 0:
            raise ValueError(f"data.grain threads/prefetch/workers must be >= 0, got {self.threads}/{self.prefetch}/"
                             f"{self.workers}")
        self.data_iterator = StepIterator(self.dataset, self.source.fingerprint, self.global_batch_size)

    @property
    def local_batch_size(self) -> int:
        return self._slice.stop - self._slice.start

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return (self.image_size, self.image_size, self.source.image_shape[-1])

    def indices(self, step: int) -> np.ndarray:
        """Dataset indices of this process's examples of global batch ``step`` (e.g. their captions' rows)."""
        return step_indices(step, self.global_batch_size, len(self.source), self.seed)[self._slice]

    def dataset(self, start_step: int = 0):
        """The grain pipeline from ``start_step`` on: element i is this process's part of batch start_step + i."""
        read = ReadBatch(self.source, self.global_batch_size, self.image_size, self.seed, self.random_flip,
                         self.process_index, self.process_count)
        ds = grain.MapDataset.range(start_step, MAX_STEPS).map(read)
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.threads,
                                                  prefetch_buffer_size=max(self.prefetch, self.threads)))
        if self.workers:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags (parsed already under absl.app)
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                             per_worker_buffer_size=max(1, self.prefetch)))
        return ds

    def batch(self, step: int) -> Dict[str, np.ndarray]:
        return self.data_iterator.next_batch(step)

    def close(self) -> None:
        self.data_iterator.close()


def make_pipeline(config, source, process_index: int = 0, process_count: int = 1,
                  batch_size: Optional[int] = None):
    """The training pipeline of ``config.data`` and ``config.training.batch_size``: streamed through grain for a
    prepared dataset (``data.grain.*``: threads, prefetch, workers), else in memory; the same batches either way."""
    batch_size = batch_size or config.training.batch_size
    if isinstance(source, ArrayRecordSource):
        g = config.data.get("grain", None)
        settings = {k: int(g[k]) for k in ("threads", "prefetch", "workers") if g is not None and k in g}
        return GrainPipeline(source, batch_size, config.data.image_size, seed=config.seed,
                             random_flip=config.data.random_flip, process_index=process_index,
                             process_count=process_count, **settings)
    return BatchPipeline(source, batch_size, config.data.image_size, seed=config.seed,
                         random_flip=config.data.random_flip, process_index=process_index,
                         process_count=process_count)


def data_iterator(pipeline) -> Optional[StepIterator]:
    """The checkpointable data iterator of a (possibly wrapped: text, super-resolution) pipeline; None for in-memory
    pipelines, whose batch is a pure function of the step."""
    while pipeline is not None:
        it = getattr(pipeline, "data_iterator", None)
        if it is not None:
            return it
        pipeline = getattr(pipeline, "inner", None)
    return None
