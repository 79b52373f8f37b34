"""Run by test_scaleout.py in a subprocess with 8 simulated CPU devices: per-device bytes of params + optimizer state
(and of the compiled train step's arguments) replicated (mesh data=8) versus fully sharded (mesh fsdp=8).
Prints one JSON line with the numbers, then OK.
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from ddpm_jax.training import loop, sharding  # noqa: E402
from ddpm_jax.training.steps import make_train_step  # noqa: E402


def per_device_bytes(tree) -> int:
    """Largest, over devices, of the bytes of this tree's shards held by one device."""
    totals = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return max(totals.values())


def measure(setup, cfg, host_state, data: int, fsdp: int, compile_step: bool) -> dict:
    run = setup.run
    mesh = sharding.make_mesh(data, fsdp)
    shardings = sharding.state_shardings(mesh, host_state, cfg.mesh.fsdp_min_size)
    state = jax.device_put(host_state, shardings)
    weights = (state.params, state.opt_state)
    result = {"params_opt_bytes": per_device_bytes(weights),
              "total_bytes": sum(x.nbytes for x in jax.tree.leaves(weights))}
    if compile_step:  # the compiled train step's view: bytes of its (per-device) arguments
        step = jax.jit(make_train_step(setup.loss_fn(), setup.tx, setup.lr_schedule, 0.999),
                       in_shardings=(shardings, sharding.batch_sharding(mesh)),
                       out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
        batch = {"image": jax.ShapeDtypeStruct((16,) + run.image_shape, np.float32),
                 "label": jax.ShapeDtypeStruct((16,), np.int32)}
        analysis = step.lower(state, batch).compile().memory_analysis()
        result["step_argument_bytes"] = analysis.argument_size_in_bytes
        result["step_temp_bytes"] = analysis.temp_size_in_bytes
    return result


def main():
    assert jax.device_count() == 8, jax.devices()
    compile_step = "--compile" in sys.argv
    # a small U-Net whose bytes sit mostly in conv kernels with channel counts divisible by 8
    cfg = tiny_config(**{"model.ch": 32, "model.num_groups": 8, "mesh.fsdp_min_size": 256})
    setup = loop.build_training(cfg)
    host_state = jax.device_get(jax.jit(setup.init_fn)(jax.random.key(0)))
    replicated = measure(setup, cfg, host_state, 8, 1, compile_step)
    fsdp = measure(setup, cfg, host_state, 1, 8, compile_step)
    assert replicated["params_opt_bytes"] == replicated["total_bytes"]
    result = {"replicated": replicated, "fsdp8": fsdp,
              "ratio": fsdp["params_opt_bytes"] / replicated["params_opt_bytes"]}
    if compile_step:
        result["step_argument_ratio"] = fsdp["step_argument_bytes"] / replicated["step_argument_bytes"]
    print(json.dumps(result))
    print("OK")


if __name__ == "__main__":
    main()
