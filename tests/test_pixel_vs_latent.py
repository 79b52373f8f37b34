"""The pixel-vs-latent experiment driver end to end at toy size (8x8 digits, f = 1 and 2, a few steps each)."""
import pytest
import importlib.util
import json
import os

import toy_workdirs
from conftest import ROOT


def load_driver():
    spec = importlib.util.spec_from_file_location("pixel_vs_latent", os.path.join(ROOT, "experiments",
                                                                                   "pixel_vs_latent.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_unet_levels_stop_at_4x4():
    driver = load_driver()
    assert [driver.unet_ch_mult(r) for r in (32, 16, 8, 4, 2)] == [(1, 2, 2, 2), (1, 2, 2), (1, 2), (1,), (1,)]


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_toy_study_writes_table_plot_and_equal_compute_runs(tmp_path):
    driver = load_driver()
    results = tmp_path / "results"
    classifier = toy_workdirs.shared("classifier_digits", toy_workdirs.classifier)
    study = driver.main(["--preset=toy", f"--workdir={tmp_path / 'runs'}", f"--results_dir={results}",
                         f"--classifier_workdir={classifier}"])
    assert sorted(os.listdir(results)) == ["pixel_vs_latent_toy.json", "pixel_vs_latent_toy.md",
                                           "pixel_vs_latent_toy.png"]
    pixel, latent = study["results"]
    assert (pixel["f"], latent["f"]) == (1, 2) and latent["latent_shape"] == [4, 4, 4]
    budget = study["preset"]["budget_tflop"] * 1e12
    for r in (pixel, latent):  # equal training compute: steps x FLOPs/step within one step (x num_evals) of it
        assert abs(r["steps"] * r["gflop_per_step"] * 1e9 - budget) <= study["preset"]["num_evals"] * \
            r["gflop_per_step"] * 1e9
        assert len(r["evals"]) == study["preset"]["num_evals"]
        assert r["train_images_per_sec"] > 0 and r["sample_images_per_sec"] > 0
        final = r["final"]  # the trainer's last evaluation redone identically, with 95% intervals over its samples
        assert final["num_scored"] == study["preset"]["eval_samples"]
        assert abs(final["fcd"] - r["evals"][-1]["fcd"]) <= 1e-3 * max(1.0, r["evals"][-1]["fcd"])
        for key in ("fcd", "kid_classifier", "class_accuracy"):
            lo, hi = final[f"{key}_ci"]
            assert lo <= final[key] <= hi and lo < hi, (key, final[key], lo, hi)
    assert latent["gflop_per_step"] < pixel["gflop_per_step"] and latent["steps"] > pixel["steps"]
    ae = latent["autoencoder"]
    assert ae["train_flops"] > 0 and ae["encode_dataset_flops"] > 0 and ae["psnr"] > 0
    # the latent model's total compute counts the autoencoder on top of the denoiser
    last = latent["evals"][-1]
    assert last["total_tflop"] > last["denoiser_tflop"] and pixel["evals"][-1]["total_tflop"] == \
        pixel["evals"][-1]["denoiser_tflop"]
    table = (results / "pixel_vs_latent_toy.md").read_text()
    assert table.count("\n| 1 |") == 1 and table.count("\n| 2 |") == 1
    assert json.loads((results / "pixel_vs_latent_toy.json").read_text())["results"][1]["f"] == 2
    final = latent["final"]
    assert f"| {final['fcd']:.2f} [{final['fcd_ci'][0]:.2f}, {final['fcd_ci'][1]:.2f}] |" in table
    assert "interval over the 20 scored samples" in table

    # an old results file without intervals (no "final" record) still renders: values marked [n/a]
    old = json.loads((results / "pixel_vs_latent_toy.json").read_text())
    for r in old["results"]:
        del r["final"]
    (results / "pixel_vs_latent_toy.json").write_text(json.dumps(old))
    driver.main(["--preset=toy", "--render_only", f"--results_dir={results}"])
    table = (results / "pixel_vs_latent_toy.md").read_text()
    assert f"| {latent['evals'][-1]['fcd']:.2f} [n/a] |" in table and "predates bootstrap intervals" in table
