"""Few-step generation: distilled students vs their teacher's fast samplers at 1, 2, 4 and 8 network evaluations.

One trained class-conditional DDPM (the teacher, sampled with its classifier-free guidance w) and two students of it
(``task=distill``, ddpm_jax/tasks/distill.py), each sampled WITHOUT guidance (w is distilled in):

- **progressive** (Salimans & Ho 2022): rounds ``start_steps`` -> ... -> 1 DDIM steps, ``steps_per_round`` optimizer
  steps each, trained in one workdir round by round (``training.num_steps`` is extended, the learning rate is
  constant, so this is the same run as one long one); the student at the end of the round whose step count is an NFE
  of the study is scored at that NFE;
- **consistency** (Song et al. 2023, consistency distillation with the teacher's Heun step): one run, scored with
  1-step and multistep consistency sampling;
- the **teacher** with DDIM (eta 0) and DPM-Solver++(2M), trailing spacing, at the same NFE, and with its own 50-step
  sampler (the quality the students aim for); the real test images are the floor.

Quality: FCD / KID / class accuracy in a classifier's feature space with bootstrap 95% intervals over
``eval_samples`` samples (experiments/scoring.py); speed: images/s of the compiled sampler (guidance doubles the
teacher's batch: "network calls / image" counts it); cost: each student's training FLOPs (XLA cost analysis of the
compiled distillation step, teacher calls included) next to the teacher's own.

    python experiments/few_step.py            # CPU-sized: the quickstart teacher (runtime in experiments/README.md)
    python experiments/few_step.py --preset=toy --teacher_workdir=T --classifier_workdir=C --workdir=W

The CPU preset needs ``runs/quickstart`` (``python -m ddpm_jax.main --config=configs/quickstart.py
--workdir=runs/quickstart``) and ``runs/classifier_digits`` (``python -m ddpm_jax.main
--config=configs/classifier_digits.py --workdir=runs/classifier_digits``). Writes
experiments/results/few_step.{md,png,json}; the students go to --workdir and are resumed, not redone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from ddpm_jax.data import to_uint8  # noqa: E402
from ddpm_jax.default_config import base_config  # noqa: E402
from ddpm_jax.tasks import load_trained  # noqa: E402
from ddpm_jax.training import loop  # noqa: E402
from ddpm_jax.training.logging import run_cli, setup_logging  # noqa: E402
from ddpm_jax.training.steps import make_train_step  # noqa: E402
from experiments.pixel_vs_latent import (abstract_batch, compiled_flops, train_step_flops,  # noqa: E402
                                         train_to_end)
from experiments.scoring import (Scorer, format_scores, interval, machine_description, require_workdir,  # noqa: E402
                                 resolved, samples_note, sampling_config, timed_diffusion_samples, with_interval)

log = logging.getLogger("ddpm_jax")

PRESETS = {
    "cpu": dict(teacher_workdir=os.path.join(ROOT, "runs", "quickstart"),
                classifier_workdir=os.path.join(ROOT, "runs", "classifier_digits"), nfes="1,2,4,8",
                teacher_steps=50, eval_samples=500, sample_batch=250, batch_size=64, lr=2e-4, ema_decay=0.99,
                start_steps=64, steps_per_round=250, num_scales=18, consistency_steps=1200, target_ema=0.95,
                consistency_lr=1e-4, consistency_solver="heun"),
    "toy": dict(teacher_workdir="", classifier_workdir="", nfes="1,2", teacher_steps=4, eval_samples=20,
                sample_batch=20, batch_size=8, lr=2e-4, ema_decay=0.9, start_steps=4, steps_per_round=2,
                num_scales=4, consistency_steps=2, target_ema=0.9, consistency_lr=1e-4, consistency_solver="heun"),
}
TEACHER_SAMPLERS = {"teacher DDIM": "ddim", "teacher DPM-Solver++(2M)": "dpm_solver_pp_2m"}


def student_config(p: dict, method: str, workdir_of_teacher: str):
    """The distill config of one student: the teacher's model, data and schedule (its recorded config), this
    study's optimizer and method settings."""
    c = base_config()
    c.task = "distill"
    c.distill.teacher_workdir = workdir_of_teacher
    c.distill.method = method
    c.training.batch_size = p["batch_size"]
    c.training.sample_every = 0
    c.optim.warmup_steps = 0  # constant learning rate: extending training.num_steps continues the same run
    c.optim.ema_decay = p["ema_decay"]
    c.sampling.num_steps = 0
    c.eval.num_steps = 0
    if method == "progressive":
        c.distill.start_steps = p["start_steps"]
        c.distill.end_steps = min(nfe_list(p))
        c.distill.steps_per_round = p["steps_per_round"]
        c.optim.lr = p["lr"]
        every = p["steps_per_round"]
    else:
        c.distill.num_scales = p["num_scales"]
        c.distill.target_ema = p["target_ema"]
        c.distill.solver = p["consistency_solver"]
        c.optim.lr = p["consistency_lr"]
        c.training.num_steps = p["consistency_steps"]
        every = max(1, p["consistency_steps"] // 3)
    c.training.checkpoint_every = every
    c.training.log_every = max(1, min(100, every // 3))
    return c


def nfe_list(p: dict) -> list:
    return sorted(int(n) for n in str(p["nfes"]).split(","))


def distill_step_flops(config) -> float:
    """FLOPs of one distillation step (the teacher's guided DDIM / Heun calls, the student's forward and backward,
    the optimizer on the student, the EMA and the step transition)."""
    setup = loop.build_training(config)
    state = jax.eval_shape(setup.init_fn, jax.random.key(0))
    step = make_train_step(setup.loss_fn(), setup.tx, setup.lr_schedule, config.optim.ema_decay, 1,
                           setup.step_transition, setup.trainable)
    return compiled_flops(step, state, abstract_batch(setup.run, config.training.batch_size))


def timed_student_samples(trained, num_steps: int, num: int, seed: int, batch_size: int) -> dict:
    """``num`` samples of a student at ``num_steps``, labels 0..K-1 in turn, batches from fold_in(key(seed), b) as
    :func:`timed_diffusion_samples`; the sampler is compiled by a first batch outside the timing."""
    run, params = trained.run, trained.params
    s = sampling_config(run, num_steps=num_steps, batch_size=batch_size)
    fn = run.task.make_sample_fn(run, s)
    bs = min(batch_size, num)
    t0 = time.perf_counter()
    jax.block_until_ready(run.task.generate(run, params, jax.random.key(seed), bs, sampling_config=s,
                                            sample_fn=fn)[0])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x, labels, _ = run.task.generate(run, params, jax.random.key(seed), num, sampling_config=s, sample_fn=fn)
    x = jax.block_until_ready(x)
    sample_s = time.perf_counter() - t0
    return {"x": x, "labels": labels, "compile_s": compile_s, "sample_s": sample_s, "images_per_sec": num / sample_s}


def score_cell(scorer: Scorer, run, res: dict, name: str, nfe: int, calls: int, extra: dict) -> dict:
    scores = scorer(to_uint8(run.to_pixels(res["x"])), res["labels"])
    log.info("%s at %d NFE: %s | %.0f img/s", name, nfe, format_scores(scores), res["images_per_sec"])
    return {"method": name, "nfe": nfe, "network_calls_per_image": calls, "images_per_sec": res["images_per_sec"],
            "compile_s": res["compile_s"], **extra, **scores}


def teacher_rows(p: dict, teacher, scorer: Scorer) -> list:
    run, params = teacher.run, teacher.params
    w = float(run.config.sampling.guidance_scale)
    calls = lambda n: n * (2 if w != 1.0 else 1)  # classifier-free guidance: a conditional and an unconditional call
    rows = []
    for name, sampler in TEACHER_SAMPLERS.items():
        for nfe in nfe_list(p):
            s = sampling_config(run, sampler=sampler, num_steps=nfe, spacing="trailing", eta=0.0)
            res = timed_diffusion_samples(run, params, s, p["eval_samples"], seed=1, batch_size=p["sample_batch"])
            rows.append(score_cell(scorer, run, res, name, nfe, calls(nfe), {"train_tflop": 0.0, "steps": nfe}))
    s = sampling_config(run, num_steps=p["teacher_steps"])  # the teacher's own sampler and spacing
    res = timed_diffusion_samples(run, params, s, p["eval_samples"], seed=1, batch_size=p["sample_batch"])
    rows.append(score_cell(scorer, run, res, f"teacher {s.sampler} {p['teacher_steps']} (reference)",
                           p["teacher_steps"], calls(p["teacher_steps"]), {"train_tflop": 0.0,
                                                                           "steps": p["teacher_steps"]}))
    return rows


def progressive_rows(p: dict, workdir: str, scorer: Scorer) -> tuple:
    cfg = student_config(p, "progressive", p["teacher_workdir"])
    k, start, end = p["steps_per_round"], p["start_steps"], min(nfe_list(p))
    num_rounds = int(round(np.log2(start // end)))
    cfg.training.num_steps = k
    flops = distill_step_flops(cfg)
    path = os.path.join(workdir, "progressive")
    rows, t_train = [], 0.0
    for r in range(num_rounds):
        n = start >> (r + 1)
        cfg.training.num_steps = (r + 1) * k
        t0 = time.perf_counter()
        train_to_end(cfg, path)
        t_train += time.perf_counter() - t0
        if n not in nfe_list(p):
            continue
        trained = load_trained(path, cfg)
        res = timed_student_samples(trained, n, p["eval_samples"], seed=1, batch_size=p["sample_batch"])
        rows.append(score_cell(scorer, trained.run, res, "progressive", n, n,
                               {"train_tflop": flops * (r + 1) * k / 1e12, "train_steps": (r + 1) * k,
                                "round": r, "steps": n}))
    return rows, {"gflop_per_step": flops / 1e9, "train_s": t_train, "rounds": num_rounds,
                  "train_steps": num_rounds * k, "workdir": path}


def consistency_rows(p: dict, workdir: str, scorer: Scorer) -> tuple:
    cfg = student_config(p, "consistency", p["teacher_workdir"])
    flops = distill_step_flops(cfg)
    path = os.path.join(workdir, "consistency")
    t0 = time.perf_counter()
    train_to_end(cfg, path)
    t_train = time.perf_counter() - t0
    trained = load_trained(path, cfg)
    rows = []
    for nfe in nfe_list(p):
        if nfe >= p["num_scales"]:
            log.info("consistency: %d steps needs num_scales > %d; skipped", nfe, nfe)
            continue
        res = timed_student_samples(trained, nfe, p["eval_samples"], seed=1, batch_size=p["sample_batch"])
        rows.append(score_cell(scorer, trained.run, res, "consistency", nfe, nfe,
                               {"train_tflop": flops * p["consistency_steps"] / 1e12,
                                "train_steps": p["consistency_steps"], "steps": nfe}))
    return rows, {"gflop_per_step": flops / 1e9, "train_s": t_train, "train_steps": p["consistency_steps"],
                  "workdir": path}


def run_study(p: dict, workdir: str) -> dict:
    t_start = time.perf_counter()
    require_workdir(p["teacher_workdir"], "teacher",
                    f"python -m ddpm_jax.main --config=configs/quickstart.py --workdir={p['teacher_workdir']}")
    require_workdir(p["classifier_workdir"], "classifier",
                    f"python -m ddpm_jax.main --config=configs/classifier_digits.py "
                    f"--workdir={p['classifier_workdir']}")
    teacher = load_trained(p["teacher_workdir"])
    tc = teacher.config
    if tc.task != "diffusion" or not teacher.run.model.num_classes:
        raise ValueError(f"{p['teacher_workdir']}: this study needs a class-conditional pixel diffusion teacher, "
                         f"found task {tc.task}")
    scorer = Scorer(p["classifier_workdir"], tc.data.name, tc.data.data_dir, tc.data.image_size)
    floor = scorer.real_floor(p["eval_samples"], with_labels=True)
    teacher_flops, teacher_params = train_step_flops(tc, teacher.run)
    teacher_info = {"workdir": teacher.workdir, "step": teacher.step, "params": teacher_params,
                    "train_tflop": teacher_flops * tc.training.num_steps / 1e12,
                    "guidance_scale": float(tc.sampling.guidance_scale), "sampler": tc.sampling.sampler}
    log.info("teacher %s: step %d, %s params, %.3g TFLOP of training, w = %g", teacher.workdir, teacher.step,
             f"{teacher_params:,}", teacher_info["train_tflop"], teacher_info["guidance_scale"])
    rows = teacher_rows(p, teacher, scorer)
    prog, prog_info = progressive_rows(p, workdir, scorer)
    cons, cons_info = consistency_rows(p, workdir, scorer)
    return {"preset": p, "machine": machine_description(), "scorer": scorer.describe(), "real_floor": floor,
            "teacher": teacher_info, "progressive": prog_info, "consistency": cons_info, "rows": rows + prog + cons,
            "runtime_s": time.perf_counter() - t_start}


def reference_row(study: dict) -> dict:
    return next(r for r in study["rows"] if r["method"].endswith("(reference)"))


def findings(study: dict) -> list:
    """One line per student cell: its FCD against the teacher's reference (ratio and whether the intervals
    separate) and against the teacher's DDIM at the same NFE."""
    ref = reference_row(study)
    ddim = {r["nfe"]: r for r in study["rows"] if r["method"] == "teacher DDIM"}
    out = []
    for r in study["rows"]:
        if r["method"] not in ("progressive", "consistency"):
            continue
        sep_ref = resolved(r, ref, "fcd")
        line = (f"{r['method']} at {r['nfe']} NFE: FCD {with_interval(r, 'fcd', '{:.2f}')} = "
                f"{r['fcd'] / ref['fcd']:.2f}x the teacher's {ref['nfe']}-step {ref['fcd']:.2f} "
                f"({'separated' if sep_ref else 'intervals overlap'})")
        if r["nfe"] in ddim:
            d = ddim[r["nfe"]]
            sep = resolved(r, d, "fcd")
            line += (f"; teacher DDIM at {r['nfe']} NFE {with_interval(d, 'fcd', '{:.2f}')} "
                     f"({'separated' if sep else 'overlap'})")
        out.append(line)
    return out


def write_table(study: dict, path: str) -> None:
    p, t = study["preset"], study["teacher"]
    first = study["rows"][0]
    floor = study["real_floor"]
    lines = [
        "# Few-step generation: distilled students vs the teacher's samplers", "",
        f"Machine: {study['machine']}. Teacher: `{os.path.relpath(t['workdir'], ROOT)}` at step {t['step']} "
        f"({t['params']:,} params, {t['train_tflop']:.2f} TFLOP of training), classifier-free guidance w = "
        f"{t['guidance_scale']:g} (distilled into the students, which are sampled without guidance). Progressive: "
        f"{p['start_steps']} -> {min(nfe_list(p))} steps, {p['steps_per_round']} steps of batch {p['batch_size']} "
        f"per round, lr {p['lr']:g}, EMA {p['ema_decay']}; consistency: {p['num_scales']} Karras points, teacher "
        f"{p['consistency_solver']} step, target EMA {p['target_ema']}, {p['consistency_steps']} steps, lr "
        f"{p['consistency_lr']:g}. Teacher fast samplers: trailing spacing. Scores against {study['scorer']}. Total "
        f"runtime {study['runtime_s'] / 60:.1f} min (training {study['progressive']['train_s'] / 60:.1f} + "
        f"{study['consistency']['train_s'] / 60:.1f} min).", "",
        samples_note(first), "",
        f"Real test images ({floor['count']}): FCD {with_interval(floor, 'fcd', '{:.2f}')}, KID x1e3 "
        f"{with_interval(floor, 'kid_classifier', '{:.2f}', 1e3)}, accuracy {with_interval(floor, 'class_accuracy')}.",
        "",
        "| method | NFE | network calls / image | student training (steps, TFLOP) | FCD | KID x1e3 | class accuracy | "
        "img/s |",
        "|" + "---|" * 8,
    ]
    for r in sorted(study["rows"], key=lambda r: (r["method"].startswith("teacher") is False, r["method"], r["nfe"])):
        cost = f"{r['train_steps']}, {r['train_tflop']:.2f}" if r.get("train_steps") else "-"
        lines.append(f"| {r['method']} | {r['nfe']} | {r['network_calls_per_image']} | {cost} | "
                     f"{with_interval(r, 'fcd', '{:.2f}')} | {with_interval(r, 'kid_classifier', '{:.2f}', 1e3)} | "
                     f"{with_interval(r, 'class_accuracy')} | {r['images_per_sec']:.0f} |")
    lines += ["", "## Findings (FCD; two values differ at this N only where their intervals do not overlap)", ""]
    lines += [f"- {line}" for line in findings(study)]
    lines += ["", f"Distillation step: progressive {study['progressive']['gflop_per_step']:.2f} GFLOP, consistency "
              f"{study['consistency']['gflop_per_step']:.2f} GFLOP (batch {p['batch_size']}).", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_plot(study: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ref, floor = reference_row(study), study["real_floor"]
    styles = {"progressive": "o-", "consistency": "s-", "teacher DDIM": "^--", "teacher DPM-Solver++(2M)": "v--"}
    for ax, key, label in ((axes[0], "fcd", "FCD (lower is better)"), (axes[1], "class_accuracy", "class accuracy")):
        for method, style in styles.items():
            rows = sorted((r for r in study["rows"] if r["method"] == method), key=lambda r: r["nfe"])
            if not rows:
                continue
            cis = [interval(r, key) for r in rows]
            err = np.array([[r[key] - c[0], c[1] - r[key]] for r, c in zip(rows, cis)]).T if all(cis) else None
            ax.errorbar([r["nfe"] for r in rows], [r[key] for r in rows], yerr=err, fmt=style, capsize=3,
                        label=method)
        ci = interval(ref, key)
        ax.axhline(ref[key], color="k", lw=1, label=f"teacher, {ref['nfe']} steps")
        if ci:
            ax.axhspan(ci[0], ci[1], color="k", alpha=0.08)
        ax.axhline(floor[key], color="g", lw=1, ls=":", label=f"real test images ({floor['count']})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(nfe_list(study["preset"]))
        ax.set_xticklabels([str(n) for n in nfe_list(study["preset"])])
        ax.set_xlabel("NFE (sampling steps)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"bars / band: bootstrap 95% intervals over {study['preset']['eval_samples']} samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "few_step"),
                        help="where the students are trained (resumed, not redone)")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--render_only", action="store_true", help="redraw the table and plot from the results JSON")
    for key, value in PRESETS["cpu"].items():
        parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    p.update({k: getattr(args, k) for k in PRESETS["cpu"] if getattr(args, k) is not None})
    stem = os.path.join(args.results_dir, "few_step" if args.preset != "toy" else "few_step_toy")
    if args.render_only:
        if not os.path.exists(stem + ".json"):
            raise FileNotFoundError(f"--render_only: no results {stem}.json; run the study first")
        study = json.load(open(stem + ".json"))
    else:
        for key in ("teacher_workdir", "classifier_workdir"):
            if not p[key]:
                raise ValueError(f"--{key} is required with --preset={args.preset}")
        study = run_study(p, args.workdir)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(stem + ".json", "w") as fh:
            json.dump(study, fh, indent=2, default=float)
    write_table(study, stem + ".md")
    write_plot(study, stem + ".png")
    log.info("wrote %s.md, %s.png and %s.json", stem, stem, stem)
    for line in findings(study):
        log.info("%s", line)
    return study


if __name__ == "__main__":
    run_cli(main)
