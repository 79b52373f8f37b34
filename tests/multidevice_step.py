"""Run by test_sharding.py in a subprocess with 8 simulated CPU devices: one train step on several meshes."""
import os
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import tiny_config  # noqa: E402
from ddpm_jax.data import make_pipeline  # noqa: E402
from ddpm_jax.training import loop, sharding  # noqa: E402
from ddpm_jax.training.steps import make_train_step  # noqa: E402


def one_step(mesh_shape):
    data, fsdp = mesh_shape
    cfg = tiny_config(**{"training.batch_size": 16, "model.dropout": 0.1})
    setup = loop.build_training(cfg)
    run = setup.run
    devices = jax.devices()[: data * fsdp]
    mesh = sharding.make_mesh(data, fsdp, devices)
    abstract = jax.eval_shape(setup.init_fn, jax.random.key(0))
    shardings = sharding.state_shardings(mesh, abstract, min_size=256)
    state = jax.jit(setup.init_fn, out_shardings=shardings)(jax.random.key(0))
    step = jax.jit(make_train_step(setup.loss_fn(), setup.tx, setup.lr_schedule, 0.99),
                   in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)))
    batch = sharding.global_batch(make_pipeline(cfg, run.source).batch(0), mesh)
    assert len(batch["image"].sharding.device_set) == data * fsdp
    for _ in range(2):
        state, metrics = step(state, batch)
    sharded = sum(1 for s in jax.tree.leaves(shardings) if s.spec != jax.sharding.PartitionSpec())
    return float(metrics["loss"]), jax.device_get(state.params), sharded


def main():
    assert jax.device_count() == 8, jax.devices()
    loss1, params1, _ = one_step((1, 1))
    for mesh_shape in [(8, 1), (2, 4)]:
        loss, params, sharded = one_step(mesh_shape)
        err = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params)))
        print(f"mesh {mesh_shape}: loss {loss:.7f} vs 1 device {loss1:.7f}; max |param diff| {err:.2e}; "
              f"sharded leaves {sharded}")
        assert abs(loss - loss1) <= 1e-5 * max(1.0, abs(loss1)), (loss, loss1)
        assert err < 1e-5, err
        if mesh_shape[1] > 1:
            assert sharded > 0
    print("OK")


if __name__ == "__main__":
    main()
