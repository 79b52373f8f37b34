"""Sharding: the same jitted step on 1 device and on 8 simulated CPU devices (data and data x fsdp meshes)."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, subprocess_xla_flags
from ddpm_jax.training import sharding


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_one_step_on_8_devices_matches_1_device():
    script = os.path.join(ROOT, "tests", "multidevice_step.py")
    env = dict({k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, XLA_FLAGS=subprocess_xla_flags())
    result = subprocess.run([sys.executable, script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip().endswith("OK")


def test_param_spec_shards_largest_divisible_dim_and_replicates_small():
    assert sharding.param_spec((3, 3, 128, 256), 4, min_size=1) == sharding.P(None, None, None, "fsdp")
    assert sharding.param_spec((3, 3, 128, 255), 4, min_size=1) == sharding.P(None, None, "fsdp", None)
    assert sharding.param_spec((10,), 4, min_size=1) == sharding.P()
    assert sharding.param_spec((4096, 4096), 1) == sharding.P()
    assert sharding.param_spec((64,), 4) == sharding.P()


def test_mesh_shape_errors_are_clear():
    with pytest.raises(ValueError, match="does not use the 1 available devices"):
        sharding.make_mesh(2, 1)
