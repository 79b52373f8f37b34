"""The backbones experiment driver end to end at toy size (8x8 digits, f = 2 latents, a few steps per model)."""
import importlib.util
import json
import os

import pytest

import toy_workdirs
from conftest import ROOT


def load_driver():
    spec = importlib.util.spec_from_file_location("backbones", os.path.join(ROOT, "experiments", "backbones.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_heun_nfe_to_steps():
    driver = load_driver()
    assert [driver.steps_for_nfe("heun", n) for n in (10, 20, 50)] == [5, 10, 25]  # 9, 19, 49 calls (2N - 1)
    assert driver.steps_for_nfe("euler", 20) == 20


@pytest.mark.slow
def test_toy_study_writes_table_plot_equal_compute_and_intervals(tmp_path):
    driver = load_driver()
    results = tmp_path / "results"
    classifier = toy_workdirs.shared("classifier_digits", toy_workdirs.classifier)
    study = driver.main(["--preset=toy", f"--workdir={tmp_path / 'runs'}", f"--results_dir={results}",
                         f"--classifier_workdir={classifier}"])
    assert sorted(os.listdir(results)) == ["backbones_toy.json", "backbones_toy.md", "backbones_toy.png"]
    rows = {r["arm"]: r for r in study["rows"]}
    assert len(rows) == 4  # the toy preset's arms (the cpu preset runs 8); the latent DiT's flow arm is shared
    assert rows["latent DiT/2"]["parts"] == ["a", "b"]
    budget = study["preset"]["budget_tflop"] * 1e12
    for r in rows.values():  # equal training compute: within one step of the budget
        assert abs(r["steps"] * r["gflop_per_step"] * 1e9 - budget) <= max(r["gflop_per_step"] * 1e9,
                                                                             0.5 * budget) or r["steps"] == 10
        for e in r["evals"]:
            assert e["num_scored"] == study["preset"]["eval_samples"]
            lo, hi = e["fcd_ci"]
            assert lo <= e["fcd"] <= hi
    assert [e["nfe"] for e in rows["latent DiT/2 edm"]["evals"]] == [3, 5]  # heun: 2N - 1 calls
    assert [e["sampler"] for e in rows["latent DiT/2 ddpm-eps"]["evals"]] == ["ddim", "ddim"]
    assert {e["nfe"] for e in rows["latent DiT/2"]["evals"]} == {3, 5}
    assert rows["pixel DiT/4 x-pred"]["prediction"] == "x0"
    table = (results / "backbones_toy.md").read_text()
    assert table.count("| latent DiT/2 edm |") == 2
    assert json.loads((results / "backbones_toy.json").read_text())["rows"][0]["arm"] == "latent DiT/2"
