"""The offline metric: a classifier trained through the same trainer, its feature space, FCD during training and
from the evaluate command."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, tiny_config
from ddpm_jax.data import load_digits
from ddpm_jax.evaluation.statistics import feature_statistics
from ddpm_jax.training import loop
from ddpm_jax.evaluation.quality import classifier_features_from_workdir, score_images


def classifier_config(**overrides):
    c = tiny_config(**{"task": "classifier", "training.num_steps": 150, "training.batch_size": 64,
                       "training.log_every": 50, "training.checkpoint_every": 150, "optim.lr": 3e-3,
                       "optim.ema_decay": 0.9, **overrides})
    c.model.channels = (16, 32)
    c.model.feature_dim = 32
    return c


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("classifier"))
    loop.train(classifier_config(), wd)
    return wd


def test_classifier_trains_through_the_trainer_and_reports_test_accuracy(classifier_workdir):
    records = [json.loads(line) for line in open(os.path.join(classifier_workdir, "metrics.jsonl"))]
    accuracy = [r["eval/accuracy"] for r in records if "eval/accuracy" in r]
    assert accuracy and accuracy[-1] > 0.8, accuracy


def test_real_held_out_images_score_far_better_than_noise(classifier_workdir):
    features = classifier_features_from_workdir(classifier_workdir)
    train, test = load_digits("train"), load_digits("test")
    ref_feats, _ = features(train.images)
    ref_stats = feature_statistics(ref_feats)
    real = score_images(features, test.images, ref_stats, ref_feats, test.labels)
    noise = np.random.default_rng(0).integers(0, 256, test.images.shape, dtype=np.uint8)
    fake = score_images(features, noise, ref_stats, ref_feats, test.labels)
    assert real["fcd"] < 0.2 * fake["fcd"], (real, fake)
    assert real["class_accuracy"] > 0.8 and fake["class_accuracy"] < 0.5


def test_classifier_features_reject_bad_images(classifier_workdir):
    features = classifier_features_from_workdir(classifier_workdir)
    with pytest.raises(ValueError, match="uint8"):
        features(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 1\]"):
        features(np.zeros((2, 8, 8, 3), np.uint8))


@pytest.mark.slow
def test_periodic_eval_writes_fcd_to_the_metrics_log(classifier_workdir, tmp_path):
    cfg = tiny_config(**{"eval.every": 2, "eval.classifier_workdir": classifier_workdir, "eval.num_samples": 16,
                         "eval.num_steps": 3})
    loop.train(cfg, str(tmp_path))
    records = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    evals = [r for r in records if "eval/fcd" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(np.isfinite(r["eval/fcd"]) and "eval/class_accuracy" in r and "eval/fid" not in r for r in evals)


@pytest.mark.slow
def test_evaluate_command_scores_a_checkpoint_in_classifier_space(classifier_workdir, tmp_path):
    wd = str(tmp_path / "model")
    loop.train(tiny_config(), wd)
    cmd = [sys.executable, "-m", "ddpm_jax.evaluate", "--mode=samples",
           "--config=" + os.path.join(ROOT, "tests", "tiny_config.py"), "--workdir=" + wd,
           "--features=classifier", "--classifier_workdir=" + classifier_workdir, "--num_samples=24"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.load(open(os.path.join(wd, "eval_classifier_24.json")))
    assert report["num_samples"] == 24 and report["feature_space"] == "classifier:digits"
    assert np.isfinite(report["fcd"]) and "fid" not in report and 0 <= report["class_accuracy"] <= 1
