"""Mesh and partition rules: sharding is data. One mesh with axes ("data", "fsdp"); batches are split over both,
parameters and optimizer state are replicated or (when the fsdp axis is > 1) sharded along their largest dimension
divisible by it. The same jitted step runs on any mesh.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Optional[list] = None) -> Mesh:
    """Mesh of shape (data, fsdp); -1 means "all remaining devices"."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("at most one of mesh.data and mesh.fsdp may be -1")
    data = n // fsdp if data == -1 else data
    fsdp = n // data if fsdp == -1 else fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not use the {n} available devices")
    return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_spec(shape: tuple, fsdp_size: int, min_size: int = 2**14) -> P:
    """Shard the largest dimension divisible by the fsdp axis; replicate small or indivisible arrays."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def state_shardings(mesh: Mesh, abstract_state: Any, min_size: int = 2**14) -> Any:
    """NamedShardings for every leaf of a (possibly abstract) train state under the partition rules."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp_size, min_size)), abstract_state)


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Assemble the global batch from this process's slice (each host loads only its own examples)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
