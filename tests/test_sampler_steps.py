"""The sampler-steps experiment driver end to end at toy size (a digits DDPM trained 4 steps, S = 2 and 4)."""
import importlib.util
import json
import os

import numpy as np
import pytest

import toy_workdirs
from conftest import ROOT


def load_driver():
    spec = importlib.util.spec_from_file_location("sampler_steps", os.path.join(ROOT, "experiments",
                                                                                 "sampler_steps.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs():
    return {"ddpm": toy_workdirs.shared("ddpm_digits", toy_workdirs.pixel_ddpm),
            "classifier": toy_workdirs.shared("classifier_digits", toy_workdirs.classifier)}


@pytest.mark.slow  # default suite < 8 min on 2 cores (issue 16); runs in CI (--runslow)
def test_toy_grid_writes_table_plot_and_every_cell(runs, tmp_path):
    driver = load_driver()
    study = driver.main(["--preset=toy", f"--workdir={runs['ddpm']}", f"--results_dir={tmp_path}"])
    assert sorted(os.listdir(tmp_path)) == ["sampler_steps_toy.json", "sampler_steps_toy.md", "sampler_steps_toy.png"]
    cells = {(c["sampler"], c["steps"]): c for c in study["cells"]}
    assert set(cells) == {(name, s) for name in driver.SAMPLERS for s in (2, 4)}
    for (name, s), c in cells.items():  # classifier found beside the workdir; conditional model: accuracy too
        assert c["nfe"] == s and c["images_per_sec"] > 0 and c["compile_s"] > 0
        assert np.isfinite([c["fcd"], c["kid_classifier"]]).all() and 0 <= c["class_accuracy"] <= 1
        assert c["num_scored"] == 16 and c["num_boot"] == 200
        for key in ("fcd", "kid_classifier", "class_accuracy"):  # a 95% interval that holds the estimate
            lo, hi = c[f"{key}_ci"]
            assert lo <= c[key] <= hi and lo < hi, (key, c[key], lo, hi)
    for key in ("fcd", "kid_classifier", "class_accuracy"):
        lo, hi = study["real_floor"][f"{key}_ci"]
        assert lo <= study["real_floor"][key] <= hi
    assert study["real_floor"]["count"] == 16 and study["ddpm_variance"] == "fixed_large"
    table = (tmp_path / "sampler_steps_toy.md").read_text()
    assert "16 per cell" in table and "seed 0" in table and "Machine:" in table
    assert table.count("| sampler \\ steps S | 2 | 4 |") == 4  # FCD, KID, accuracy, speed
    assert table.count("| DDIM η = 0 |") == 4 and "| DDPM ancestral (fixed-large σ²) |" in table
    assert json.loads((tmp_path / "sampler_steps_toy.json").read_text())["checkpoint_step"] == 4
    c = cells["ddim_eta0", 2]  # "value [lo, hi]" in the table, the sample count stated beside the intervals
    assert f"{c['fcd']:.3f} [{c['fcd_ci'][0]:.3f}, {c['fcd_ci'][1]:.3f}]" in table
    assert "interval over the 16 scored samples" in table and "[n/a]" not in table

    # an old results file without intervals still renders: values marked [n/a]
    old = json.loads((tmp_path / "sampler_steps_toy.json").read_text())
    for record in old["cells"] + [old["real_floor"]]:
        for key in list(record):
            if "_ci" in key or key in ("num_scored", "num_boot"):
                del record[key]
    (tmp_path / "sampler_steps_toy.json").write_text(json.dumps(old))
    driver.main(["--preset=toy", "--render_only", f"--results_dir={tmp_path}"])
    table = (tmp_path / "sampler_steps_toy.md").read_text()
    assert f"{c['fcd']:.3f} [n/a]" in table and "predates bootstrap intervals" in table and "| **" not in table


@pytest.mark.slow
def test_every_cell_starts_from_the_same_noise(runs):
    """Same seed, same keys: DDPM with the posterior variance and DDIM eta = 1 are one process (DDIM sec. 4.1), so
    their samples agree; a sampler that drew other noise would not."""
    from experiments.scoring import load_run, sampling_config, timed_diffusion_samples

    run, params, _ = load_run(runs["ddpm"])
    ddpm = timed_diffusion_samples(run, params, sampling_config(run, sampler="ddpm", num_steps=4,
                                                                variance="fixed_small"), 8, 3, 8)
    ddim = timed_diffusion_samples(run, params, sampling_config(run, sampler="ddim", num_steps=4, eta=1.0), 8, 3, 8)
    other = timed_diffusion_samples(run, params, sampling_config(run, sampler="ddim", num_steps=4, eta=1.0), 8, 4, 8)
    np.testing.assert_allclose(ddpm["x"], ddim["x"], atol=2e-4)
    assert np.abs(other["x"] - ddim["x"]).max() > 0.1


def test_untrained_workdir_names_the_training_command(tmp_path):
    driver = load_driver()
    with pytest.raises(FileNotFoundError, match="configs/ddpm_fashion_mnist.py"):
        driver.run_grid(str(tmp_path / "missing"), "", driver.PRESETS["toy"])
