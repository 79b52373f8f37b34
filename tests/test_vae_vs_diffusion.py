"""The VAE-vs-diffusion experiment driver end to end at toy size (digits: a VAE, a pixel and a latent DDPM)."""
import importlib.util
import json
import os

import numpy as np
import pytest

import toy_workdirs
from conftest import ROOT


def load_driver():
    spec = importlib.util.spec_from_file_location("vae_vs_diffusion", os.path.join(ROOT, "experiments",
                                                                                    "vae_vs_diffusion.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs():
    vae = toy_workdirs.shared("vae_digits", toy_workdirs.vae)
    return {"vae": vae, "pixel": toy_workdirs.shared("ddpm_digits", toy_workdirs.pixel_ddpm),
            "latent": toy_workdirs.shared("ldm_digits", toy_workdirs.latent_ddpm, vae),
            "classifier": toy_workdirs.shared("classifier_digits", toy_workdirs.classifier)}


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_toy_comparison_scores_every_model_alike(runs, tmp_path):
    driver = load_driver()
    study = driver.main(["--preset=toy", f"--vae_workdir={runs['vae']}", f"--pixel_workdir={runs['pixel']}",
                         f"--latent_workdir={runs['latent']}", f"--results_dir={tmp_path}"])
    assert sorted(os.listdir(tmp_path)) == ["vae_vs_diffusion_toy.json", "vae_vs_diffusion_toy.md",
                                            "vae_vs_diffusion_toy.png"]
    vae, pixel, latent = study["models"]
    assert (vae["task"], pixel["task"], latent["task"]) == ("autoencoder", "diffusion", "latent_diffusion")
    for r in (vae, pixel, latent):
        assert np.isfinite([r["fcd"], r["kid_classifier"]]).all() and r["images_per_sec"] > 0
        assert r["generator_params"] > 0
    for r in (vae, pixel, latent, study["real_floor"]):  # 95% intervals that hold the estimates, N stated
        assert r["num_scored"] == 16
        for key in ("fcd", "kid_classifier", "class_accuracy"):
            if key in r:
                lo, hi = r[f"{key}_ci"]
                assert lo <= r[key] <= hi and lo < hi, (key, r[key], lo, hi)
    assert "class_accuracy_ci" not in vae
    # labels apply only to the class-conditional diffusion models
    assert "class_accuracy" not in vae and "class_accuracy" in pixel and "class_accuracy" in latent
    assert pixel["nfe"] == "4 U-Net" and latent["nfe"] == "4 U-Net + 1 decoder pass"
    assert study["real_floor"]["count"] == 16
    table = (tmp_path / "vae_vs_diffusion_toy.md").read_text()
    assert "16 per model" in table and "seed 0" in table and "Machine:" in table
    for label in ("| VAE (prior samples) |", "| pixel diffusion |", "| latent diffusion |", "| *real test images* |"):
        assert table.count(label) == 1
    assert json.loads((tmp_path / "vae_vs_diffusion_toy.json").read_text())["data"] == {"name": "digits",
                                                                                         "image_size": 8}
    assert f"| {latent['fcd']:.3f} [{latent['fcd_ci'][0]:.3f}, {latent['fcd_ci'][1]:.3f}] |" in table
    assert "interval over the 16 scored samples" in table and "[n/a]" not in table

    # an old results file without intervals still renders: values marked [n/a]
    old = json.loads((tmp_path / "vae_vs_diffusion_toy.json").read_text())
    for record in old["models"] + [old["real_floor"]]:
        for key in [k for k in record if "_ci" in k or k in ("num_scored", "num_boot")]:
            del record[key]
    (tmp_path / "vae_vs_diffusion_toy.json").write_text(json.dumps(old))
    driver.main(["--preset=toy", "--render_only", f"--results_dir={tmp_path}"])
    table = (tmp_path / "vae_vs_diffusion_toy.md").read_text()
    assert f"| {latent['fcd']:.3f} [n/a] |" in table and "predates bootstrap intervals" in table


@pytest.mark.slow
def test_a_model_on_other_data_is_refused(runs, tmp_path):
    driver = load_driver()
    config = json.loads(open(os.path.join(runs["pixel"], "config.json")).read())
    config["data"]["image_size"] = 16
    other = tmp_path / "ddpm16"
    other.mkdir()
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="same data"):
        driver.compare({"vae": runs["vae"], "pixel": other}, runs["classifier"], driver.PRESETS["toy"])


def test_untrained_workdir_names_the_training_command(tmp_path):
    driver = load_driver()
    with pytest.raises(FileNotFoundError, match="configs/vae_fashion_mnist_f4.py"):
        driver.compare({"vae": str(tmp_path / "missing")}, "", driver.PRESETS["toy"])
