"""The cascade experiment driver end to end at toy size (digits: a 4x4 base, a 4 -> 8 SR stage, the shared 8x8
single model and classifier)."""
import importlib.util
import json
import os

import numpy as np
import pytest

import toy_workdirs
from conftest import ROOT, tiny_config


def load_driver():
    spec = importlib.util.spec_from_file_location("cascade", os.path.join(ROOT, "experiments", "cascade.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _base(workdir):
    return toy_workdirs.train(tiny_config(**{"data.image_size": 4, "model.ch_mult": (1,), "model.attn_resolutions": (),
                                             "sampling.guidance_scale": 2.0}), workdir)


def _sr(workdir):
    return toy_workdirs.train(tiny_config(**{"task": "super_resolution", "sr.low_res_size": 4, "sr.max_aug_level": 0.5,
                                             "model.class_conditional": False, "model.attn_resolutions": ()}), workdir)


@pytest.fixture(scope="module")
def runs():
    return {"base": toy_workdirs.shared("base_digits_4", _base), "sr": toy_workdirs.shared("sr_digits_4_8", _sr),
            "single": toy_workdirs.shared("ddpm_digits", toy_workdirs.pixel_ddpm),
            "classifier": toy_workdirs.shared("classifier_digits", toy_workdirs.classifier)}


@pytest.mark.slow  # ~2 min: four toy workdirs; the cascade itself is tested fast in test_super_resolution
def test_toy_cascade_study_writes_table_plot_and_sweep(runs, tmp_path):
    driver = load_driver()
    study = driver.main(["--preset=toy", f"--base_workdir={runs['base']}", f"--sr_workdir={runs['sr']}",
                         f"--single_workdir={runs['single']}", f"--results_dir={tmp_path}"])
    assert sorted(os.listdir(tmp_path)) == ["cascade_toy.json", "cascade_toy.md", "cascade_toy.png"]
    # the sweep at the SR stage's ancestral DDIM (eta 1), then deterministic DDIM at level 0.1 for comparison
    assert [(r["aug_level"], r["eta"]) for r in study["aug_sweep"]] == [(0.0, 1.0), (0.1, 1.0), (0.2, 1.0),
                                                                        (0.3, 1.0), (0.5, 1.0), (0.1, 0.0)]
    for r in study["aug_sweep"] + study["single_rows"] + [study["real_floor"]]:
        assert np.isfinite([r["fcd"], r["kid_classifier"]]).all() and 0 <= r["class_accuracy"] <= 1
        assert r["num_scored"] == 16
        for key in ("fcd", "kid_classifier", "class_accuracy"):  # a 95% interval that holds the estimate
            lo, hi = r[f"{key}_ci"]
            assert lo <= r[key] <= hi and lo < hi, (key, r[key], lo, hi)
    m = study["models"]
    assert [r["eta"] for r in study["single_rows"]] == [0.0, 1.0]
    assert m["single"]["fcd"] == min(r["fcd"] for r in study["single_rows"])
    assert m["base"]["guided"] and m["base"]["sample_flops"] == 2 * 2 * m["base"]["forward_flops"]
    assert 0 < m["base"]["forward_flops"] and m["sr"]["train_flops"] == 3 * m["sr"]["forward_flops"] * 16 * 4
    assert m["single"]["seconds_per_image"] > 0 and np.isfinite(m["single"]["fcd"])
    table = (tmp_path / "cascade_toy.md").read_text()
    assert table.count("| single model 8×8, DDIM η = ") == 2
    assert "16 per row" in table and "Machine:" in table and table.count("| 0.3 | 1 |") == 1
    assert table.count("| 0.1 | 0 |") == 1 and "SR, η = 1" in table
    assert json.loads((tmp_path / "cascade_toy.json").read_text())["data"] == {"name": "digits", "image_size": 8}
    row = study["single_rows"][0]
    assert f"| {row['fcd']:.3f} [{row['fcd_ci'][0]:.3f}, {row['fcd_ci'][1]:.3f}] |" in table
    assert "interval over the 16 scored samples" in table and "[n/a]" not in table

    # an old results file without intervals still renders (table and FCD panel): values marked [n/a]
    old = json.loads((tmp_path / "cascade_toy.json").read_text())
    for record in old["aug_sweep"] + old["single_rows"] + [old["real_floor"]] + list(old["models"].values()):
        for key in [k for k in record if "_ci" in k or k in ("num_scored", "num_boot")]:
            del record[key]
    (tmp_path / "cascade_toy.json").write_text(json.dumps(old))
    driver.main(["--preset=toy", "--render_only", f"--results_dir={tmp_path}"])
    table = (tmp_path / "cascade_toy.md").read_text()
    assert f"| {row['fcd']:.3f} [n/a] |" in table and "predates bootstrap intervals" in table
