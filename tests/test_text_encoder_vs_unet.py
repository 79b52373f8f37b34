"""The text-encoder-vs-U-Net experiment driver: model families, and the toy study end to end (slow)."""
import importlib.util
import json
import os

import pytest

from conftest import ROOT


def load_driver():
    spec = importlib.util.spec_from_file_location("text_encoder_vs_unet", os.path.join(ROOT, "experiments",
                                                                                        "text_encoder_vs_unet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_families_vary_one_axis_each_and_share_the_base_model():
    driver = load_driver()
    models = driver.model_list(driver.PRESETS["cpu_pixel"])
    encoders = [m for m in models if m[1] == "encoder"]
    unets = [m for m in models if m[1] == "unet"]
    assert {m[3] for m in encoders} == {16} and {m[2] for m in unets} == {"minilm6"}
    assert [m[3] for m in unets] == [8, 16, 32] and "minilm6-ch16" in {m[0] for m in encoders}
    assert driver.encoder_settings("minilm2") == {"encoder_path": "", "num_layers": 2, "random_init": False}
    assert driver.encoder_settings("random6")["random_init"]
    c = driver.denoiser_config(driver.PRESETS["cpu_pixel"], "random6", 16)
    assert (c.task, c.text.num_layers, c.text.random_init, c.model.ch) == ("text_diffusion", 6, True, 16)
    assert c.model.cross_attn_resolutions == (16, 8) and c.sampling.clip_x0 == 1.0


def test_latent_preset_denoises_the_autoencoders_latents(tmp_path):
    """The CPU preset works in the f = 4 latent space: U-Net levels and attention follow the 8x8 latent grid."""
    driver = load_driver()
    p = driver.PRESETS["cpu"]
    ae = driver.load_config_file(p["ae_config"])
    (tmp_path / "config.json").write_text(ae.to_json())
    assert driver.autoencoder_factor(ae) == 4
    c = driver.denoiser_config(p, "minilm6", 32, str(tmp_path))
    assert (c.task, c.latent.autoencoder_workdir, c.sampling.clip_x0) == ("latent_text_diffusion", str(tmp_path), None)
    assert c.model.ch_mult == (1, 2) and c.model.cross_attn_resolutions == (8, 4) and c.model.attn_resolutions == (4,)
    assert c.optim.ema_decay == pytest.approx(1 - 20 / p["steps"])
    with pytest.raises(FileNotFoundError, match="autoencoder_fashion_mnist_f4"):
        driver.ensure_autoencoder(p, str(tmp_path), str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="latent presets"):
        driver.ensure_autoencoder(driver.PRESETS["cpu_pixel"], str(tmp_path), str(tmp_path))


@pytest.mark.slow
def test_toy_study_writes_table_plot_and_json(tmp_path, tiny_encoder_path, monkeypatch):
    from tiny_text_encoder import use_as_default_encoder

    driver = load_driver()
    use_as_default_encoder(monkeypatch, tiny_encoder_path)  # "minilm1"/"random1" and the CLIP: the tiny encoder
    results = tmp_path / "results"
    study = driver.main(["--preset=toy", f"--workdir={tmp_path / 'runs'}", f"--results_dir={results}"])
    assert sorted(os.listdir(results)) == ["text_encoder_vs_unet_toy.json", "text_encoder_vs_unet_toy.md",
                                           "text_encoder_vs_unet_toy.png"]
    names = [r["name"] for r in study["results"]]
    assert names == ["minilm1-ch8", "random1-ch8", "minilm1-ch8", "minilm1-ch16"]
    for r in study["results"]:
        assert [e["guidance"] for e in r["evals"]] == [1.0, 3.0]
        for e in r["evals"]:
            assert e["fcd"] >= 0 and 0 <= e["class_accuracy"] <= 1 and 0 <= e["clip_score"] <= 100
            assert e["num_scored"] == 20  # 95% intervals over the 20 samples that hold the estimates
            for key in ("fcd", "kid_classifier", "class_accuracy"):
                lo, hi = e[f"{key}_ci"]
                assert lo <= e[key] <= hi and lo < hi, (key, e[key], lo, hi)
    assert study["results"][3]["unet_params"] > study["results"][2]["unet_params"]
    table = (results / "text_encoder_vs_unet_toy.md").read_text()
    assert table.count("| encoder | random1-ch8 |") == 2
    assert json.loads((results / "text_encoder_vs_unet_toy.json").read_text())["results"][1]["encoder_random"]
    e = study["results"][1]["evals"][0]
    assert f"| {e['fcd']:.3f} [{e['fcd_ci'][0]:.3f}, {e['fcd_ci'][1]:.3f}] |" in table
    assert "interval over the 20 scored samples" in table and "[n/a]" not in table

    # an old results file without intervals still renders: values marked [n/a]
    old = json.loads((results / "text_encoder_vs_unet_toy.json").read_text())
    for r in old["results"]:
        for record in r["evals"]:
            for key in [k for k in record if "_ci" in k or k in ("num_scored", "num_boot")]:
                del record[key]
    (results / "text_encoder_vs_unet_toy.json").write_text(json.dumps(old))
    driver.main(["--preset=toy", "--render_only", f"--results_dir={results}"])
    table = (results / "text_encoder_vs_unet_toy.md").read_text()
    assert f"| {e['fcd']:.3f} [n/a] |" in table and "predates bootstrap intervals" in table
