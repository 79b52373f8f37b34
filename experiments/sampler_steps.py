"""Sampler x number of steps vs sample quality: DDIM's Table 1 (Song et al. 2021, sec. 5.1) on a trained checkpoint.

One trained diffusion model (pixel or latent; ``--workdir``) is sampled with DDPM ancestral, DDIM eta = 0, DDIM
eta = 1 and DPM-Solver++(2M) at S = 10, 20, 50, 100, 1000 steps. Every cell uses the same N samples from the same seed
(the same initial noises; stochastic samplers draw their per-step noise from the same keys), and is scored against
the training set in a trained classifier's feature space (Frechet classifier distance, KID, and class accuracy for
class-conditional models; FID too with ``--inception_weights``). Speed: images/s of the compiled sampling loop after
its first compilation (shown separately), and the number of network evaluations (NFE = S for all four samplers;
classifier-free guidance doubles each call's batch, not the NFE).

The DDPM row uses the larger variance sigma^2 = 1 - abar_t / abar_s (``--ddpm_variance=fixed_large``), the sigma-hat
row of DDIM's Table 1: with the posterior variance (fixed_small) DDPM's ancestral step *is* DDIM with eta = 1.

The default model is the Fashion-MNIST DDPM and its classifier; neither is trained here. Train them first:

    # accelerator-sized (40k steps of batch 128)
    python -m ddpm_jax.main --config=configs/ddpm_fashion_mnist.py --workdir=runs/ddpm_fashion_mnist
    # CPU-sized instead: ch 32, 3,000 steps of batch 32 (0.8 steps/s alone on 2 cores: ~1 h; 80 min when shared)
    python -m ddpm_jax.main --config=configs/ddpm_fashion_mnist.py --workdir=runs/ddpm_fashion_mnist \\
        --config.model.ch=32 --config.training.batch_size=32 --config.training.num_steps=3000 \\
        --config.optim.lr=1e-3 --config.optim.warmup_steps=100 --config.optim.ema_decay=0.998 \\
        --config.training.checkpoint_every=1000 --config.training.sample_every=0
    python -m ddpm_jax.main --config=configs/classifier_fashion_mnist.py --workdir=runs/classifier_fashion_mnist

Then:

    python experiments/sampler_steps.py                                        # S = 10..1000, 1,000 samples
    python experiments/sampler_steps.py --steps=10,20,50,100 --num_samples=500 # the CPU-sized run (~70 min)
    python experiments/sampler_steps.py --preset=accelerator --inception_weights=pt_inception.npz

The real run that fits in minutes on a CPU: the quickstart digits model and its classifier (~6 min + 30 s to train),
samplers x S = 10, 20, 50 at 500 samples (writes sampler_steps_digits.*):

    python -m ddpm_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
    python -m ddpm_jax.main --config=configs/classifier_digits.py --workdir=runs/classifier_digits
    python experiments/sampler_steps.py --preset=digits --workdir=runs/quickstart \
        --classifier_workdir=runs/classifier_digits

Every FCD, KID and class accuracy carries a bootstrap 95% interval over the N samples (experiments/scoring.py); a
column's best value is bold only where its interval separates it from every other sampler's. ``--render_only``
redraws the table and plot from the results JSON (one written before intervals shows ``[n/a]``).

Writes experiments/results/sampler_steps.{md,png,json} (``--preset=toy``/``digits``: sampler_steps_toy.* /
sampler_steps_digits.*).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ddpm_jax.data import to_uint8  # noqa: E402
from ddpm_jax.diffusion import num_function_evaluations  # noqa: E402
from ddpm_jax.training.logging import run_cli, setup_logging  # noqa: E402
from experiments.scoring import (NO_INTERVAL_NOTE, Scorer, format_scores, interval, load_run,  # noqa: E402
                                 machine_description, require_workdir, resolved, samples_note, sampling_config,
                                 timed_diffusion_samples, with_interval, yerr)

log = logging.getLogger("ddpm_jax")

# row order as in DDIM's Table 1 (eta = 0 first, the DDPM sigma-hat row last), then the high-order solver
SAMPLERS = {
    "ddim_eta0": ("DDIM η = 0", dict(sampler="ddim", eta=0.0)),
    "ddim_eta1": ("DDIM η = 1", dict(sampler="ddim", eta=1.0)),
    "ddpm": ("DDPM ancestral", dict(sampler="ddpm")),
    "dpm_solver_pp_2m": ("DPM-Solver++(2M)", dict(sampler="dpm_solver_pp_2m")),
}

PRESETS = {
    "default": dict(steps="10,20,50,100,1000", samplers=",".join(SAMPLERS), num_samples=1000, batch_size=250,
                    seed=0, num_reference=0),
    "accelerator": dict(steps="10,20,50,100,1000", samplers=",".join(SAMPLERS), num_samples=10000,
                        batch_size=1000, seed=0, num_reference=0),
    # the quickstart digits model (configs/quickstart.py): the cheapest real run, minutes on a CPU
    "digits": dict(steps="10,20,50", samplers=",".join(SAMPLERS), num_samples=500, batch_size=250, seed=0,
                   num_reference=0),
    "toy": dict(steps="2,4", samplers=",".join(SAMPLERS), num_samples=16, batch_size=16, seed=0, num_reference=200),
}

DIFFUSION_COMMAND = ("python -m ddpm_jax.main --config=configs/ddpm_fashion_mnist.py --workdir={workdir} "
                     "(CPU-sized flags: python experiments/sampler_steps.py --help)")
CLASSIFIER_COMMAND = "python -m ddpm_jax.main --config=configs/classifier_{data}.py --workdir={workdir}"


def run_grid(workdir: str, classifier_workdir: str, p: dict, ddpm_variance: str = "fixed_large",
             inception_weights: str = "") -> dict:
    """Sample and score every (sampler, steps) cell; returns the study as a JSON-able dict."""
    require_workdir(workdir, "diffusion model", DIFFUSION_COMMAND.format(workdir=workdir))
    run, params, ckpt_step = load_run(workdir)
    data = run.config.data
    classifier_workdir = classifier_workdir or os.path.join(os.path.dirname(workdir.rstrip("/")) or ".",
                                                            f"classifier_{data.name}")
    require_workdir(classifier_workdir, "classifier",
                    CLASSIFIER_COMMAND.format(data=data.name, workdir=classifier_workdir))
    scorer = Scorer(classifier_workdir, data.name, data.get("data_dir", ""), data.image_size, p["num_reference"],
                    inception_weights)
    steps = [int(s) for s in str(p["steps"]).split(",")]
    names = [n for n in str(p["samplers"]).split(",")]
    for name in names:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; use some of {','.join(SAMPLERS)}")
    T = run.schedule.num_timesteps
    if max(steps) > T or min(steps) < 1:
        raise ValueError(f"--steps must lie in 1..{T} (the model's number of timesteps)")
    conditional = bool(run.model.num_classes)
    cells = []
    for name in names:
        label, overrides = SAMPLERS[name]
        overrides = dict(overrides, **({"variance": ddpm_variance} if name == "ddpm" else {}))
        for s in steps:
            cell = {"sampler": name, "label": label, "steps": s,
                    "nfe": num_function_evaluations(overrides["sampler"], s, T)}
            try:
                out = timed_diffusion_samples(run, params, sampling_config(run, num_steps=s, **overrides),
                                              p["num_samples"], p["seed"], p["batch_size"])
            except ValueError as e:  # DPM-Solver's linspace spacing has no S = T distinct steps
                if "strictly decreasing" not in str(e):
                    raise
                reason = f"its timestep spacing has no {s} distinct steps in 0..{T - 1}"
                log.info("%s, %d steps: not available (%s)", label, s, reason)
                cells.append({**cell, "unavailable": reason})
                continue
            images = to_uint8(run.to_pixels(out["x"]))
            scores = scorer(images, out["labels"] if conditional else None)
            cells.append({**cell, **scores, "images_per_sec": out["images_per_sec"], "compile_s": out["compile_s"],
                          "sample_s": out["sample_s"]})
            log.info("%s, %d steps: %s | %.1f img/s (compile %.1f s)", label, s, format_scores(scores),
                     out["images_per_sec"], out["compile_s"])
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {
        "preset": p, "workdir": os.path.abspath(workdir), "checkpoint_step": ckpt_step,
        "model": {"task": run.config.get("task", "diffusion"), "data": data.name, "image_size": data.image_size,
                  "model_input": list(run.image_shape), "params": n_params, "num_timesteps": T,
                  "prediction_type": run.config.diffusion.prediction_type, "class_conditional": conditional,
                  "guidance_scale": float(run.config.sampling.get("guidance_scale", 1.0)),
                  "clip_x0": run.config.sampling.get("clip_x0")},
        "ddpm_variance": ddpm_variance, "reference": scorer.describe(), "machine": machine_description(),
        "real_floor": scorer.real_floor(p["num_samples"], with_labels=conditional),
        "cells": cells,
    }


METRICS = [("fcd", "FCD (Fréchet classifier distance, lower is better)", 1.0, "{:.3f}", min),
           ("kid_classifier", "KID ×10³ (classifier features, lower is better)", 1e3, "{:.2f}", min),
           ("class_accuracy", "Class accuracy (the classifier sees the requested class; higher is better)", 1.0,
            "{:.3f}", max),
           ("fid", "FID (Inception, lower is better)", 1.0, "{:.2f}", min)]


def _winners(study: dict, key: str, best) -> dict:
    """{steps: (best cell, [cells not resolved from it])} per column: the best value and the cells whose 95% interval
    overlaps its interval (all other cells when a record has no interval)."""
    out = {}
    for s in sorted({c["steps"] for c in study["cells"]}):
        cells = [c for c in study["cells"] if c["steps"] == s and key in c]
        if not cells:
            continue
        top = (min if best is min else max)(cells, key=lambda c: c[key])
        out[s] = (top, [c for c in cells if c is not top and resolved(top, c, key) is not True])
    return out


def grid_table(study: dict, key: str, scale: float, fmt: str, best) -> list:
    """A DDIM-Table-1-shaped markdown table: rows = samplers, columns = steps, ``value [lo, hi]``; a column's best
    value in bold only where its 95% interval separates it from every other sampler's."""
    steps = sorted({c["steps"] for c in study["cells"]})
    rows = list(dict.fromkeys(c["sampler"] for c in study["cells"]))
    cell = {(c["sampler"], c["steps"]): c for c in study["cells"]}
    lines = ["| sampler \\ steps S | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps)]
    winners = _winners(study, key, best)
    for r in rows:
        entries = []
        for s in steps:
            c = cell.get((r, s), {})
            if key not in c:
                entries.append("n/a" if "unavailable" in c else "")
                continue
            text = with_interval(c, key, fmt, scale)
            top, ties = winners[s]
            entries.append(f"**{text}**" if len(rows) > 1 and c is top and not ties else text)
        label = cell[r, steps[0]]["label"] if (r, steps[0]) in cell else r
        if r == "ddpm":
            label += f" ({study['ddpm_variance'].replace('_', '-')} σ²)"
        lines.append(f"| {label} | " + " | ".join(entries) + " |")
    floor = study["real_floor"].get(key)
    if floor is not None:
        lines.append(f"| *real {study['real_floor']['split']} images* | " + " | ".join(
            [with_interval(study["real_floor"], key, fmt, scale)] * len(steps)) + " |")
    return lines


def resolution_lines(study: dict, key: str, best) -> list:
    """Per column: the best sampler and which others it is (not) resolved from at this N."""
    lines = []
    for s, (top, ties) in _winners(study, key, best).items():
        if interval(top, key) is None:
            return []
        others = [c for c in study["cells"] if c["steps"] == s and key in c and c is not top]
        beaten = [c["label"] for c in others if c not in ties]
        lines.append(f"- S = {s}: best {top['label']}"
                     + (f"; separated from {', '.join(beaten)}" if beaten else "")
                     + (f"; not resolved from {', '.join(c['label'] for c in ties)}" if ties else "") + ".")
    return lines


def write_table(study: dict, path: str) -> None:
    p, m = study["preset"], study["model"]
    cells = study["cells"]
    lines = [
        "# Sampler and number of steps vs sample quality (DDIM Table 1, in miniature)",
        "",
        f"Model: `{study['workdir']}` (checkpoint step {study['checkpoint_step']}, EMA weights): {m['task']} on "
        f"{m['data']} {m['image_size']}×{m['image_size']} (model input {'×'.join(map(str, m['model_input']))}), "
        f"{m['params']:,} parameters, T = {m['num_timesteps']}, {m['prediction_type']}-prediction"
        + (f", class-conditional, guidance scale {m['guidance_scale']:g}" if m["class_conditional"] else "")
        + f", x0 clipping {m['clip_x0']}.",
        "",
        f"Samples: **{p['num_samples']:,} per cell**, seed {p['seed']}: every cell starts from the same initial noises "
        f"(batch b of {p['batch_size']} from fold_in(key({p['seed']}), b)) and stochastic samplers draw their step "
        "noise from the same keys" + ("; labels 0..K-1 in turn" if m["class_conditional"] else "") + ". "
        f"Scored against {study['reference']}. The last row scores {study['real_floor']['count']:,} real "
        f"{study['real_floor']['split']} images the same way (the floor at this sample count).",
        "",
        (samples_note(next((c for c in cells if "num_scored" in c), None)) or NO_INTERVAL_NOTE) + " Bold: the "
        "column's best value where its interval separates it from every other sampler's.",
        "",
        f"Machine: {study['machine']}.",
        "",
        "Spacing: DDPM and DDIM use 'leading' respacing (t = 0, k, 2k, ...), DPM-Solver++(2M) 'linspace' over "
        "[0, T−1] (diffusers' defaults); n/a: that spacing has no S distinct steps.",
        "",
    ]
    for key, title, scale, fmt, best in METRICS:
        if any(key in c for c in cells):
            lines += [f"## {title}", ""] + grid_table(study, key, scale, fmt, best) + [""]
            res = resolution_lines(study, key, best) if key != "fid" else []
            if res:
                lines += ["Resolved at this N (95% intervals do not overlap):", ""] + res + [""]
    steps = sorted({c["steps"] for c in cells})
    rows = list(dict.fromkeys(c["sampler"] for c in cells))
    cell = {(c["sampler"], c["steps"]): c for c in cells}
    lines += ["## Speed: images/s of the compiled sampling loop (first-call compile time in s)", "",
              f"Batch {p['batch_size']}; latents are not decoded in this timing. NFE (network evaluations per "
              "image) = S for every sampler here: " + ", ".join(f"S = {s}: {cell[rows[0], s]['nfe']}" for s in steps
                                                               if (rows[0], s) in cell)
              + ". Classifier-free guidance doubles each call's batch, not the NFE.", "",
              "| sampler \\ steps S | " + " | ".join(map(str, steps)) + " |", "|---|" + "---|" * len(steps)]
    for r in rows:
        entries = []
        for s in steps:
            c = cell.get((r, s), {})
            entries.append(f"{c['images_per_sec']:.1f} ({c['compile_s']:.1f})" if "images_per_sec" in c else "n/a")
        lines.append(f"| {cell[r, steps[0]]['label']} | " + " | ".join(entries) + " |")
    lines.append("")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_plot(study: dict, path: str) -> None:
    metrics = [(k, t, s) for k, t, s, _, _ in METRICS if k in ("fcd", "kid_classifier", "fid")
               and any(k in c for c in study["cells"])] or [("fcd", "FCD", 1.0)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    for ax, (key, title, scale) in zip(axes[0], metrics):
        for name in dict.fromkeys(c["sampler"] for c in study["cells"]):
            pts = sorted((c for c in study["cells"] if c["sampler"] == name and key in c), key=lambda c: c["steps"])
            if pts:
                ax.errorbar([c["steps"] for c in pts], [c[key] * scale for c in pts], yerr=yerr(pts, key, scale),
                            marker="o", capsize=3, label=pts[0]["label"])
        floor = study["real_floor"].get(key)
        if floor is not None:
            ax.axhline(floor * scale, color="gray", ls="--", lw=1, label=f"real {study['real_floor']['split']}")
            ci = interval(study["real_floor"], key)
            if ci is not None:
                ax.axhspan(ci[0] * scale, ci[1] * scale, color="gray", alpha=0.12, lw=0)
        ax.set_xscale("log")
        steps = sorted({c["steps"] for c in study["cells"]})
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        if all(c.get(key, 1.0) > 0 and (interval(c, key) or (1, 1))[0] > 0 for c in study["cells"]) and (
                floor is None or (floor > 0 and (interval(study["real_floor"], key) or (1, 1))[0] > 0)):
            ax.set_yscale("log")
        ax.set_xlabel("sampling steps S (= NFE)")
        ax.set_title(title.split(" (")[0] + (" ×10³" if scale != 1 and "×" not in title.split(" (")[0] else ""))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    has_ci = any(interval(c, "fcd") is not None for c in study["cells"])
    fig.suptitle(f"{study['model']['data']}: {study['preset']['num_samples']:,} samples per point"
                 + ("; bars: bootstrap 95% intervals" if has_ci else "; no intervals (run before intervals)"),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "ddpm_fashion_mnist"),
                        help="a trained diffusion or latent_diffusion workdir")
    parser.add_argument("--classifier_workdir", default="",
                        help="classifier for FCD/KID (default: classifier_DATA beside --workdir)")
    parser.add_argument("--inception_weights", default="", help="FID Inception weights (.npz/.pth) to add FID")
    parser.add_argument("--ddpm_variance", choices=("fixed_large", "fixed_small"), default="fixed_large")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--name", default="", help="output file stem (default sampler_steps[_toy|_digits])")
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the table and plot from the results JSON of an earlier run (no sampling)")
    for key, value in PRESETS["default"].items():  # every preset value can be overridden
        parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    p.update({k: getattr(args, k) for k in PRESETS["default"] if getattr(args, k) is not None})
    stem = os.path.join(args.results_dir, args.name or ("sampler_steps" + (f"_{args.preset}" if args.preset in (
        "toy", "digits") else "")))
    if args.render_only:
        if not os.path.exists(stem + ".json"):
            raise FileNotFoundError(f"--render_only: no results {stem}.json; run the grid first")
        study = json.load(open(stem + ".json"))
    else:
        study = run_grid(args.workdir, args.classifier_workdir, p, args.ddpm_variance, args.inception_weights)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(stem + ".json", "w") as fh:
            json.dump(study, fh, indent=2)
    write_table(study, stem + ".md")
    write_plot(study, stem + ".png")
    log.info("wrote %s.md, %s.png and %s.json", stem, stem, stem)
    return study


if __name__ == "__main__":
    run_cli(main)
