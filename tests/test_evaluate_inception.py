"""FID from one command: the evaluate CLI with (deterministic random) converted Inception weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from ddpm_jax.evaluation.convert_inception import save_state_dict_npz
from ddpm_jax.evaluation.stats_file import load_stats
from ddpm_jax.models.inception import variable_shapes
from ddpm_jax.training import loop

sys.path.insert(0, os.path.join(ROOT, "tests", "golden"))
from inception_random_weights import random_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import json as _json

    data = np.load(os.path.join(ROOT, "tests", "golden", "inception_pytorch_fid.npz"))
    state_dict = random_state_dict(_json.loads(str(data["shapes_json"])), int(data["seed"]))
    path = str(tmp_path_factory.mktemp("inception") / "pt_inception_random.npz")
    save_state_dict_npz(state_dict, path)
    return path


def evaluate(*args):
    result = subprocess.run([sys.executable, "-m", "ddpm_jax.evaluate", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_samples_mode_reports_fid_kid_and_inception_score(weights, tmp_path):
    wd = str(tmp_path / "model")
    loop.train(tiny_config(), wd)
    report = evaluate("--mode=samples", "--config=" + os.path.join(ROOT, "tests", "tiny_config.py"), "--workdir=" + wd,
                      "--features=inception", "--inception_weights=" + weights, "--num_samples=6",
                      "--baseline_split=", "--batch_size=6", "--num_reference=12")
    assert report["feature_space"] == "inception_pool3" and len(report["weights_sha256"]) == 64
    assert np.isfinite(report["fid"]) and report["fid"] > 0
    assert 1.0 <= report["inception_score"] <= 1008 and "fcd" not in report


@pytest.mark.slow
def test_stats_files_and_distance_mode(weights, tmp_path):
    rng = np.random.default_rng(0)
    a = tmp_path / "a.npz"
    np.savez(a, images=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    out = str(tmp_path / "stats_a.npz")
    report = evaluate("--mode=stats", "--features=inception", "--inception_weights=" + weights,
                      "--images=" + str(a), "--out=" + out, "--batch_size=5", "--save_features")
    assert 1.0 <= report["inception_score"] <= 5.0 + 1e-6  # at most the number of images (one split each)
    mu, sigma, manifest = load_stats(out)
    assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and manifest["image_count"] == 5
    assert manifest["resize_mode"] == "pytorch" and manifest["feature_space"] == "inception_pool3"
    distance = evaluate("--mode=distance", "--stats_a=" + out, "--stats_b=" + out)
    assert distance["fid"] == pytest.approx(0, abs=1e-6) and "kid" in distance


def test_missing_inception_weights_is_one_clear_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ddpm_jax.evaluate", "--mode=stats", "--features=inception",
                             "--inception_weights=" + str(tmp_path / "pt_inception.npz"), "--images=x.npz",
                             "--out=o.npz"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: FileNotFoundError") and "pt_inception.npz" in last and "convert_inception" in last
    assert "Traceback" not in result.stderr
