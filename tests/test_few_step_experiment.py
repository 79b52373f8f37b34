"""The few-step experiment driver end to end at toy size: a progressive student (4 -> 2 -> 1 steps), a consistency
student and the teacher's DDIM / DPM-Solver++ at 1 and 2 NFE, scored with intervals; table, plot and JSON."""
import importlib.util
import json
import os

import pytest

import toy_workdirs
from conftest import ROOT


def load_driver():
    spec = importlib.util.spec_from_file_location("few_step", os.path.join(ROOT, "experiments", "few_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_toy_study_scores_students_and_teacher_at_each_nfe(tmp_path):
    driver = load_driver()
    results = tmp_path / "results"
    teacher = toy_workdirs.shared("ddpm_digits", toy_workdirs.pixel_ddpm)
    classifier = toy_workdirs.shared("classifier_digits", toy_workdirs.classifier)
    argv = ["--preset=toy", f"--workdir={tmp_path / 'runs'}", f"--results_dir={results}",
            f"--teacher_workdir={teacher}", f"--classifier_workdir={classifier}"]
    study = driver.main(argv)
    assert sorted(os.listdir(results)) == ["few_step_toy.json", "few_step_toy.md", "few_step_toy.png"]
    cells = {(r["method"], r["nfe"]) for r in study["rows"]}
    for method in ("progressive", "consistency", "teacher DDIM", "teacher DPM-Solver++(2M)"):
        assert {(method, 1), (method, 2)} <= cells, method
    ref = driver.reference_row(study)
    assert ref["nfe"] == 4 and ref["network_calls_per_image"] == 4 * (2 if study["teacher"]["guidance_scale"] != 1
                                                                      else 1)
    prog = {r["nfe"]: r for r in study["rows"] if r["method"] == "progressive"}
    # rounds 4 -> 2 (steps 0-1) and 2 -> 1 (steps 2-3): the 1-step student cost twice the 2-step one
    assert prog[2]["train_steps"] == 2 and prog[1]["train_steps"] == 4
    assert prog[1]["train_tflop"] == pytest.approx(2 * prog[2]["train_tflop"])
    assert prog[1]["network_calls_per_image"] == 1  # no guidance at sampling: it is distilled in
    for r in study["rows"]:
        assert r["num_scored"] == study["preset"]["eval_samples"]
        lo, hi = r["fcd_ci"]
        assert lo <= r["fcd"] <= hi
    table = (results / "few_step_toy.md").read_text()
    assert table.count("| progressive |") == 2 and "## Findings" in table
    assert len(driver.findings(study)) == 4
    # the students' workdirs are resumed, not redone; --render_only redraws from the JSON
    again = driver.main(argv + ["--render_only"])
    assert again["rows"] == json.loads((results / "few_step_toy.json").read_text())["rows"]
