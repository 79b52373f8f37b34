"""Tests of the FID Inception network, its weight converter, the bilinear resizes and `InceptionFeatures`, against
golden outputs of pytorch-fid 0.3.0, torch's F.interpolate and TF1's resize_bilinear (tests/golden/make_*.py)."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import subprocess_xla_flags
from ddpm_jax.evaluation.convert_inception import save_state_dict_npz
from ddpm_jax.evaluation.features import InceptionFeatures
from ddpm_jax.evaluation.resize import resize_bilinear
from ddpm_jax.models.inception import (BasicConv2d, load_inception_params, params_from_torch_state_dict,
                                      variable_shapes)

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
sys.path.insert(0, GOLDEN_DIR)
from inception_random_weights import random_state_dict  # noqa: E402
from make_resize_golden import CASES  # noqa: E402

PARITY_RTOL = 1e-4


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def max_rel_error(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def golden():
    data = np.load(os.path.join(GOLDEN_DIR, "inception_pytorch_fid.npz"))
    shapes = json.loads(str(data["shapes_json"]))
    state_dict = random_state_dict(shapes, int(data["seed"]))
    return dict(data=data, shapes=shapes, state_dict=state_dict, variables=params_from_torch_state_dict(state_dict))


@pytest.fixture(scope="module")
def features(golden):
    """InceptionFeatures with batch size 2 (compiled once), and its output on the 3 golden images (2 batches)."""
    extract = InceptionFeatures(golden["variables"], batch_size=2)
    return extract, extract(golden["data"]["images"])


def test_param_count_matches_pytorch_fid(golden):
    shapes = variable_shapes()
    assert count(shapes["params"]) == int(golden["data"]["param_count"]) == 23_850_960
    running = sum(np.prod(s) for k, s in golden["shapes"] if k.endswith(("running_mean", "running_var")))
    assert count(shapes["batch_stats"]) == running


@pytest.mark.parametrize("stride, size", [(1, 9), (1, 10), (2, 9), (2, 10)])
def test_unpadded_conv_equals_valid_convolution(stride, size):
    x = jax.random.normal(jax.random.PRNGKey(0), (1, size, size, 2))
    conv = BasicConv2d(4, (3, 3), stride)
    variables = conv.init(jax.random.PRNGKey(1), x)
    kernel = variables["params"]["conv"]["kernel"]
    ref = jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ref = jax.nn.relu(ref / np.sqrt(1 + 1e-3))
    np.testing.assert_allclose(conv.apply(variables, x), ref, rtol=1e-5, atol=1e-6)


def test_pool3_matches_pytorch_fid(golden, features):
    _, (pool3, _) = features
    err = max_rel_error(pool3, golden["data"]["pool3"])
    print(f"pool3 max relative error vs pytorch-fid: {err:.2e}")
    assert pool3.shape == (3, 2048) and pool3.dtype == np.float32
    assert err < PARITY_RTOL


def test_logits_match_pytorch_fid_fc(golden, features):
    _, (_, logits) = features
    err = max_rel_error(logits, golden["data"]["logits"])
    print(f"logits max relative error vs pytorch-fid: {err:.2e}")
    assert logits.shape == (3, 1008) and err < PARITY_RTOL


def test_batch_padding_does_not_change_features(golden, features):
    extract, (pool3, logits) = features
    pool3_rev, logits_rev = extract(golden["data"]["images"][::-1])  # image 2 now in a full batch, image 0 padded
    np.testing.assert_allclose(pool3_rev[::-1], pool3, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits_rev[::-1], logits, rtol=0, atol=1e-5)


def test_float_input_in_unit_range_equals_uint8(golden, features):
    extract, (pool3, _) = features
    images = golden["data"]["images"][:2]
    np.testing.assert_array_equal(extract(images.astype(np.float64) / 255)[0], pool3[:2])


def test_grayscale_is_repeated_to_rgb(golden, features):
    extract, _ = features
    grey = golden["data"]["images"][:2, :, :, :1]
    np.testing.assert_array_equal(extract(grey)[0], extract(np.repeat(grey, 3, axis=-1))[0])


def test_iter_features_streams_chunks_and_reports_progress(golden, features, capsys):
    extract, (pool3, _) = features
    images = golden["data"]["images"]
    parts = list(extract.iter_features(iter([images[:1], images[1:]]), progress=True))
    assert [p.shape[0] for p, _ in parts] == [1, 2]
    np.testing.assert_allclose(np.concatenate([p for p, _ in parts]), pool3, rtol=0, atol=1e-5)
    assert "batch 2, 3 images" in capsys.readouterr().err


@pytest.mark.parametrize("images, message", [
    (np.zeros((299, 299, 3), np.uint8), "shape"),
    (np.zeros((1, 299, 299, 4), np.uint8), "shape"),
    (np.zeros((1, 8, 8, 3), np.int32), "dtype"),
    (np.full((1, 8, 8, 3), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((1, 8, 8, 3), -0.01, np.float32), r"\[0, 1\]"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), "NaN"),
    (np.full((1, 8, 8, 3), np.inf, np.float32), "infinite"),
])
def test_bad_images_raise_one_line_error(golden, images, message):
    extract = InceptionFeatures(golden["variables"], batch_size=2)
    with pytest.raises(ValueError, match=message) as info:
        extract(images)
    assert "\n" not in str(info.value)


def test_values_within_tolerance_of_unit_range_are_accepted():
    from ddpm_jax.evaluation.features import as_unit_float

    x = as_unit_float(np.array([-5e-7, 1 + 5e-7], np.float32).reshape(1, 1, 2, 1))
    assert x.shape == (1, 1, 2, 3) and x.min() == 0 and x.max() == 1


@pytest.mark.slow
def test_state_dict_round_trips_through_npz(golden, tmp_path):
    path = str(tmp_path / "fid_inception.npz")
    assert save_state_dict_npz(golden["state_dict"], path) == len(golden["shapes"])
    loaded = load_inception_params(path)
    same = jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), loaded, golden["variables"])
    assert all(jax.tree_util.tree_leaves(same))
    kernel = loaded["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]["kernel"]
    torch_kernel = golden["state_dict"]["Mixed_7c.branch3x3_2a.conv.weight"]
    np.testing.assert_array_equal(kernel, torch_kernel.transpose(2, 3, 1, 0))


def test_converter_rejects_unknown_missing_and_misshaped_tensors(golden):
    sd = golden["state_dict"]
    with pytest.raises(KeyError, match="unknown"):
        params_from_torch_state_dict({**sd, "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(KeyError, match="lacks 1"):
        params_from_torch_state_dict({k: v for k, v in sd.items() if k != "Mixed_5b.branch_pool.bn.running_var"})
    with pytest.raises(ValueError, match="shape"):
        params_from_torch_state_dict({**sd, "fc.weight": np.zeros((1000, 2048), np.float32)})


def test_missing_weights_file_says_how_to_get_it(tmp_path):
    path = str(tmp_path / "pt_inception.npz")
    with pytest.raises(FileNotFoundError) as info:
        load_inception_params(path)
    message = str(info.value)
    assert "\n" not in message and path in message
    assert "pt_inception-2015-12-05-6726825d.pth" in message and "ddpm_jax.evaluation.convert_inception" in message


def test_pth_without_torch_says_to_convert(tmp_path, monkeypatch):
    path = tmp_path / "pt_inception.pth"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="convert_inception"):
        load_inception_params(str(path))


@pytest.mark.parametrize("mode", ["pytorch", "tf1"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_resize_matches_reference(mode, case):
    data = np.load(os.path.join(GOLDEN_DIR, f"resize_{mode}.npz"))
    _, size = CASES[case]
    out = np.asarray(jax.jit(resize_bilinear, static_argnums=(1, 2))(jnp.asarray(data[f"{case}/input"]), size, mode))
    assert out.shape[1:3] == size
    np.testing.assert_allclose(out.astype(np.float64).sum(), data[f"{case}/sum"], rtol=1e-6)
    if size == (299, 299):
        out = out[:, data["subset"]][:, :, data["subset"]]
    err = np.abs(out - data[f"{case}/output"]).max()
    print(f"resize {mode} {case}: max abs error {err:.2e}")
    assert err < 1e-6


def test_resize_conventions_differ_as_documented():
    x = jnp.asarray(np.random.default_rng(0).random((1, 4, 6, 2), dtype=np.float32))
    np.testing.assert_array_equal(resize_bilinear(x, (8, 12), "tf1")[:, ::2, ::2], x)  # src = dst * in / out
    blocks = x.reshape(1, 2, 2, 3, 2, 2).mean(axis=(2, 4))  # src = 2 dst + 1/2: the 2x2 block centre
    np.testing.assert_allclose(resize_bilinear(x, (2, 3), "pytorch"), blocks, atol=1e-7)
    np.testing.assert_array_equal(resize_bilinear(x, (4, 6), "pytorch"), x)


def test_unknown_resize_mode_is_rejected(golden):
    with pytest.raises(ValueError, match="resize_mode"):
        InceptionFeatures(golden["variables"], resize_mode="bicubic")


SHARDED_CHECK = """
import json, sys
import numpy as np
sys.path.insert(0, {golden_dir!r})
from inception_random_weights import random_state_dict
from ddpm_jax.evaluation.features import InceptionFeatures
from ddpm_jax.models.inception import params_from_torch_state_dict
data = np.load({golden_dir!r} + "/inception_pytorch_fid.npz")
variables = params_from_torch_state_dict(random_state_dict(json.loads(str(data["shapes_json"])), int(data["seed"])))
extract = InceptionFeatures(variables, batch_size=2)
assert extract.mesh.devices.size == 2, extract.mesh
pool3, _ = extract(data["images"])
print(np.abs(pool3 - data["pool3"]).max() / np.abs(data["pool3"]).max())
"""


def test_features_sharded_over_two_devices_match_pytorch_fid():
    env = dict(os.environ, XLA_FLAGS=subprocess_xla_flags("--xla_force_host_platform_device_count=2"),
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SHARDED_CHECK.format(golden_dir=GOLDEN_DIR)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.strip().splitlines()[-1]) < PARITY_RTOL
