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
