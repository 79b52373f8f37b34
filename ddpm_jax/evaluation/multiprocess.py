"""Sampling and evaluation shared by the processes of a ``jax.distributed`` job: who makes which part, and how the
parts come back together.

Work is cut into numbered items (sampling batches, feature-extraction blocks) dealt round-robin: item i belongs to
process i % P. What an item computes depends on its number only (sampling batch b draws its noise from
fold_in(key, b)), so N samples are the same images for any process count. Parts are gathered by their global row
numbers, byte for byte (float64 included, which JAX would otherwise truncate to float32), into one array in row
order; statistics computed from it are therefore those of a single process on the same seeds, whatever the process
count or the order in which processes finish.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ProcessShare:
    """This process's items of a shared job: item i belongs to process i % ``count``. ``gather``: whether a
    generation hands every process all samples (a collective) or only its own rows."""

    index: int = 0
    count: int = 1
    gather: bool = True

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"process index {self.index} is not in [0, {self.count})")

    @classmethod
    def of_this_process(cls, gather: bool = True) -> "ProcessShare":
        return cls(jax.process_index(), jax.process_count(), gather)

    def items(self, num_items: int) -> range:
        return range(self.index, num_items, self.count)

    def rows(self, num: int, block: int) -> np.ndarray:
        """Global indices of this process's rows when ``num`` rows are cut into blocks of ``block`` (the last one
        shorter), in the order the blocks are made."""
        parts = [np.arange(b * block, min((b + 1) * block, num)) for b in self.items(-(-num // block))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def allgather(x: np.ndarray) -> np.ndarray:
    """``x`` of every process stacked along a new first axis [process_count, ...], bit-exact for any dtype (sent as
    raw bytes). A collective: every process calls it with the same shape and dtype."""
    x = np.ascontiguousarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    raw = x.reshape(-1).view(np.uint8)
    words = np.zeros(max(1, -(-raw.size // 4)), np.uint32)
    words.view(np.uint8)[:raw.size] = raw
    stacked = np.asarray(multihost_utils.process_allgather(words))  # [P, words]
    data = np.ascontiguousarray(stacked.view(np.uint8)[:, :raw.size])
    return data.view(x.dtype).reshape((stacked.shape[0],) + x.shape)


def gather_rows(local: np.ndarray, rows: np.ndarray, num: int) -> np.ndarray:
    """One [num, ...] array in global row order from the rows each process holds (``local[j]`` is global row
    ``rows[j]``), on every process. Every row 0..num-1 must come from exactly one process. A collective."""
    local, rows = np.asarray(local), np.asarray(rows, np.int64)
    if len(local) != len(rows):
        raise ValueError(f"{len(local)} local rows but {len(rows)} row indices")
    if jax.process_count() == 1 and np.array_equal(rows, np.arange(num)):
        return local
    counts = allgather(np.asarray([len(rows)], np.int64))[:, 0]
    width = int(counts.max())
    data = np.zeros((width,) + local.shape[1:], local.dtype)
    data[:len(local)] = local
    index = np.full(width, -1, np.int64)
    index[:len(rows)] = rows
    data, index = allgather(data), allgather(index)
    out = np.zeros((num,) + local.shape[1:], local.dtype)
    seen = np.zeros(num, np.int64)
    for p, n in enumerate(counts):
        r = index[p, :n]
        if r.size and (r.min() < 0 or r.max() >= num):
            raise ValueError(f"process {p} holds rows outside [0, {num})")
        out[r] = data[p, :n]
        np.add.at(seen, r, 1)
    if not (seen == 1).all():
        raise RuntimeError(f"the processes' rows do not cover 0..{num - 1} exactly once: "
                           f"{int((seen == 0).sum())} missing, {int((seen > 1).sum())} duplicated")
    return out


def shared_features(extract: Callable[[np.ndarray], Tuple[np.ndarray, ...]], images: np.ndarray, block: int,
                    share: Optional[ProcessShare] = None) -> Tuple[np.ndarray, ...]:
    """``extract(images)`` -> per-row arrays (features, logits), computed in blocks of ``block`` rows dealt over the
    processes and gathered in row order. With ``block`` = the extractor's batch size every block is the batch a
    single process would run, so the result is bit-identical to ``extract(images)`` in one process."""
    share = share or ProcessShare.of_this_process()
    images = np.asarray(images)
    if share.count == 1:
        return tuple(extract(images))
    rows = share.rows(len(images), block)
    # a process without rows still learns the output widths (every process must send the same shapes)
    local = extract(images[rows] if len(rows) else images[:1])
    local = tuple(np.asarray(a)[:len(rows)] for a in local)
    return tuple(gather_rows(a, rows, len(images)) for a in local)


def host_local(tree: Any) -> Any:
    """Parameters this process can compute with alone: arrays that span processes (FSDP shards, or replicated over
    a multi-process mesh) are gathered (a collective: every process calls it); others are returned as they are."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return x

    return jax.tree.map(local, tree)


def is_main_process() -> bool:
    """Process 0 writes a shared job's outputs; the others write nothing."""
    return jax.process_index() == 0
