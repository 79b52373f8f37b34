"""Backbones and processes: U-Net vs DiT at equal training compute, in pixel space and in an f = 4 latent space, and
DDPM (eps) vs rectified flow vs EDM on one backbone, each sampled at several NFE with its natural sampler.

(a) Backbones, all trained as rectified flows (velocity target, logit-normal t as SD3) for the same number of training
    FLOPs (XLA's cost analysis of the compiled step): the U-Net and DiT (patch 2) on f = 4 latents of a frozen KL
    autoencoder, and in pixel space the U-Net, DiT patch 2 and patch 4, and a patch-4 DiT predicting x0 (the loss on
    the velocity; Li & He 2025's pixel-space transformer). Sampled with Euler at ``--nfe_a`` steps.
(b) Processes on the latent DiT (patch 2) at the same budget: ddpm (eps, DDIM eta 0), flow (Euler) and edm (Heun, EDM
    Alg. 2 deterministic; Heun with N steps costs 2N - 1 network calls, so N = floor((NFE + 1) / 2)), each at
    ``--nfe_b`` network evaluations (the flow run of (a) is reused).

Every model is class-conditional (10% label dropout) and sampled without guidance; quality is FCD / KID / class
accuracy in the Fashion-MNIST classifier's feature space with bootstrap 95% intervals over ``eval_samples`` samples
(experiments/scoring.py), the real test images' scores as the floor.

    python experiments/backbones.py                    # CPU-sized (Fashion-MNIST 32x32; runtime in experiments/README.md)
    python experiments/backbones.py --preset=toy       # seconds-sized, for the test suite (digits 8x8)

Writes experiments/results/backbones.{md,png,json}; runs go to --workdir and are resumed, not redone.
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

from ddpm_jax.data import to_uint8  # noqa: E402
from ddpm_jax.default_config import base_config  # noqa: E402
from ddpm_jax.diffusion import solvers  # noqa: E402
from ddpm_jax.tasks import build_run  # noqa: E402
from ddpm_jax.training.logging import run_cli, setup_logging  # noqa: E402
from experiments.pixel_vs_latent import (autoencoder_config, ensure_classifier, machine_description,  # noqa: E402
                                         read_metrics, train_step_flops, train_to_end, unet_ch_mult)
from experiments.scoring import (Scorer, format_scores, interval, samples_note, sampling_config,  # noqa: E402
                                 timed_diffusion_samples, with_interval)

log = logging.getLogger("ddpm_jax")

PRESETS = {
    "cpu": dict(data="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", image_size=32, factor=4,
                ch=32, dit_hidden=128, dit_depth=4, dit_heads=4, batch_size=32, budget_tflop=4.0,
                eval_samples=500, nfe_a=20, nfe_b="10,20,50", ae_ch=16, ae_steps=600, ae_batch_size=32,
                classifier_config="configs/classifier_fashion_mnist.py", classifier_steps=0, lr=1e-3,
                sample_batch=250, arms="all"),
    "toy": dict(data="digits", data_dir="", image_size=8, factor=2, ch=8, dit_hidden=16, dit_depth=1, dit_heads=2,
                batch_size=8, budget_tflop=0.0005, eval_samples=20, nfe_a=3, nfe_b="3,5", ae_ch=8, ae_steps=10,
                ae_batch_size=8, classifier_config="configs/classifier_digits.py", classifier_steps=20, lr=2e-3,
                sample_batch=20, arms="latent DiT/2|pixel DiT/4 x-pred|latent DiT/2 ddpm-eps|latent DiT/2 edm"),
}

# (name, space, backbone, patch, process, flow prediction); the latent DiT flow arm is shared by (a) and (b)
ARMS_A = [("latent U-Net", "latent", "unet", 0, "flow", "v"),
          ("latent DiT/2", "latent", "dit", 2, "flow", "v"),
          ("pixel U-Net", "pixel", "unet", 0, "flow", "v"),
          ("pixel DiT/2", "pixel", "dit", 2, "flow", "v"),
          ("pixel DiT/4", "pixel", "dit", 4, "flow", "v"),
          ("pixel DiT/4 x-pred", "pixel", "dit", 4, "flow", "x0")]
ARMS_B = [("latent DiT/2 ddpm-eps", "latent", "dit", 2, "ddpm", "v"),
          ("latent DiT/2", "latent", "dit", 2, "flow", "v"),
          ("latent DiT/2 edm", "latent", "dit", 2, "edm", "v")]
NATURAL_SAMPLER = {"ddpm": "ddim", "flow": "euler", "edm": "heun"}


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Solver steps that cost at most ``nfe`` network calls (heun: 2N - 1 calls, so 10 NFE -> 5 steps = 9 calls)."""
    return max(1, (nfe + 1) // 2) if sampler == "heun" else nfe


def arm_config(p: dict, arm: tuple, ae_workdir: str):
    name, space, backbone, patch, process, prediction = arm
    c = base_config()
    latent = space == "latent"
    c.task = "latent_diffusion" if latent else "diffusion"
    c.data.name, c.data.data_dir, c.data.image_size = p["data"], p["data_dir"], p["image_size"]
    c.latent.autoencoder_workdir = ae_workdir if latent else ""
    res = p["image_size"] // (p["factor"] if latent else 1)
    c.model.backbone = backbone
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks = p["ch"], unet_ch_mult(res), 1
    c.model.attn_resolutions, c.model.num_groups, c.model.class_conditional = (min(4, res),), 8, True
    c.model.dit.hidden_size, c.model.dit.depth, c.model.dit.num_heads = p["dit_hidden"], p["dit_depth"], p["dit_heads"]
    c.model.dit.patch_size = patch or 2
    c.diffusion.process = process
    c.diffusion.flow_prediction = prediction
    c.diffusion.flow_time = "logit_normal"
    c.diffusion.edm_sigma_data = 1.0 if latent else 0.5  # latents are scaled to unit variance (LDM's scale factor)
    c.training.batch_size, c.training.cond_drop_prob = p["batch_size"], 0.1
    c.optim.lr, c.optim.warmup_steps = p["lr"], 50
    c.sampling.sampler = NATURAL_SAMPLER[process]
    c.sampling.clip_x0 = None if latent else 1.0
    c.sampling.batch_size = p["sample_batch"]
    return c


def train_arm(p: dict, arm: tuple, workdir: str, ae_workdir: str) -> dict:
    cfg = arm_config(p, arm, ae_workdir)
    run = build_run(cfg)
    flops_step, n_params = train_step_flops(cfg, run)
    steps = max(10, int(round(p["budget_tflop"] * 1e12 / flops_step)))
    cfg.training.num_steps = steps
    cfg.optim.ema_decay = float(np.clip(1.0 - 20.0 / steps, 0.0, 0.9999))  # EMA horizon 1/20 of the run
    cfg.training.log_every = max(1, min(100, steps // 5))
    cfg.training.checkpoint_every = max(1, steps // 2)
    slug = arm[0].lower().replace(" ", "_").replace("/", "").replace(",", "")
    run_dir = os.path.join(workdir, slug)
    log.info("%s: %s parameters, %.3g GFLOP/step -> %d steps of batch %d", arm[0], f"{n_params:,}", flops_step / 1e9,
             steps, cfg.training.batch_size)
    t0 = time.perf_counter()
    state = train_to_end(cfg, run_dir)
    rates = [r["train/images_per_sec"] for r in read_metrics(run_dir) if "train/images_per_sec" in r]
    return {"cfg": cfg, "run": run, "params": run.task.eval_params(state.ema_params), "n_params": n_params,
            "gflop_per_step": flops_step / 1e9, "steps": steps, "train_s": time.perf_counter() - t0,
            "train_images_per_sec": float(np.median(rates)) if rates else float("nan"), "workdir": run_dir}


def evaluate_arm(p: dict, trained: dict, scorer: Scorer, nfes: list) -> list:
    run, params = trained["run"], trained["params"]
    sampler = run.config.sampling.sampler
    out = []
    for nfe in nfes:
        steps = steps_for_nfe(sampler, nfe)
        s = sampling_config(run, sampler=sampler, num_steps=steps)
        res = timed_diffusion_samples(run, params, s, p["eval_samples"], seed=1, batch_size=p["sample_batch"])
        images = to_uint8(run.to_pixels(res["x"]))
        scores = scorer(images, res["labels"])
        real_nfe = solvers.num_function_evaluations(sampler, steps) if sampler in solvers.SOLVERS else steps
        log.info("%s, %s %d steps (%d NFE): %s", run.config.model.backbone, sampler, steps, real_nfe,
                 format_scores(scores))
        out.append({"sampler": sampler, "steps": steps, "nfe": real_nfe, "images_per_sec": res["images_per_sec"],
                    **scores})
    return out


def run_study(p: dict, workdir: str, classifier_workdir: str = "") -> dict:
    t_start = time.perf_counter()
    classifier_workdir = ensure_classifier(p, workdir, classifier_workdir)
    ae_cfg = autoencoder_config(p, p["factor"])
    ae_workdir = os.path.join(workdir, f"autoencoder_f{p['factor']}")
    train_to_end(ae_cfg, ae_workdir)
    scorer = Scorer(classifier_workdir, p["data"], p["data_dir"], p["image_size"])
    floor = scorer.real_floor(p["eval_samples"], with_labels=True)
    nfe_a, nfe_b = [int(p["nfe_a"])], [int(n) for n in str(p["nfe_b"]).split(",")]
    rows, cache = {}, {}
    chosen = None if p["arms"] == "all" else set(p["arms"].split("|"))
    unknown = (chosen or set()) - {a[0] for a in ARMS_A + ARMS_B}
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; choose among {[a[0] for a in ARMS_A + ARMS_B]}")
    for part, arms, nfes in (("a", ARMS_A, nfe_a), ("b", ARMS_B, nfe_b)):
        for arm in arms:
            if chosen is not None and arm[0] not in chosen:
                continue
            if arm[0] not in cache:
                cache[arm[0]] = train_arm(p, arm, workdir, ae_workdir)
            trained = cache[arm[0]]
            row = rows.setdefault(arm[0], {
                "arm": arm[0], "space": arm[1], "backbone": arm[2], "patch": arm[3], "process": arm[4],
                "prediction": arm[5] if arm[4] == "flow" else ("eps" if arm[4] == "ddpm" else "edm F"),
                "params": trained["n_params"], "gflop_per_step": trained["gflop_per_step"],
                "steps": trained["steps"], "train_s": trained["train_s"],
                "train_images_per_sec": trained["train_images_per_sec"], "parts": [], "evals": []})
            row["parts"].append(part)
            done = {e["nfe"] for e in row["evals"]}
            sampler = NATURAL_SAMPLER[arm[4]]
            todo = [n for n in nfes if (solvers.num_function_evaluations(sampler, steps_for_nfe(sampler, n))
                                        if sampler in solvers.SOLVERS else n) not in done]
            row["evals"] += evaluate_arm(p, trained, scorer, todo)
    return {"preset": p, "machine": machine_description(), "scorer": scorer.describe(), "real_floor": floor,
            "rows": list(rows.values()), "runtime_s": time.perf_counter() - t_start}


def write_table(study: dict, path: str) -> None:
    p, rows = study["preset"], study["rows"]
    first = next((e for r in rows for e in r["evals"]), None)
    lines = [
        "# Backbones (U-Net vs DiT) and processes (ddpm / flow / edm) at equal training compute", "",
        f"Machine: {study['machine']}. Data: {p['data']} at {p['image_size']}x{p['image_size']}; latents: f = "
        f"{p['factor']} KL autoencoder (ch {p['ae_ch']}, {p['ae_steps']} steps). Budget: {p['budget_tflop']:g} TFLOP "
        f"of training per model (XLA cost analysis of the compiled step), batch {p['batch_size']}, lr {p['lr']:g}, "
        f"EMA horizon 1/20 of the run. U-Net ch {p['ch']}; DiT hidden {p['dit_hidden']}, depth {p['dit_depth']}, "
        f"{p['dit_heads']} heads. Class-conditional (10% label dropout), sampled without guidance, labels 0..9 in "
        f"turn, seed fixed. Scores against {study['scorer']}. Total runtime {study['runtime_s'] / 60:.1f} min.", "",
        samples_note(first) if first else "", "",
        f"Real test images ({study['real_floor']['count']}): FCD {with_interval(study['real_floor'], 'fcd', '{:.2f}')}, "
        f"KID x1e3 {with_interval(study['real_floor'], 'kid_classifier', '{:.2f}', 1e3)}, accuracy "
        f"{with_interval(study['real_floor'], 'class_accuracy')}.", "",
        "| study | model | process (prediction) | params | GFLOP/step | steps | train img/s | sampler | NFE | "
        "FCD | KID x1e3 | class accuracy | sample img/s |",
        "|" + "---|" * 13,
    ]
    for r in rows:
        for e in r["evals"]:
            lines.append(
                f"| {'+'.join(r['parts'])} | {r['arm']} | {r['process']} ({r['prediction']}) | {r['params']:,} | "
                f"{r['gflop_per_step']:.2f} | {r['steps']} | {r['train_images_per_sec']:.0f} | {e['sampler']} "
                f"{e['steps']} | {e['nfe']} | {with_interval(e, 'fcd', '{:.2f}')} | "
                f"{with_interval(e, 'kid_classifier', '{:.2f}', 1e3)} | {with_interval(e, 'class_accuracy')} | "
                f"{e['images_per_sec']:.0f} |")
    lines += ["", "study a: backbones at equal FLOPs (flow, Euler); b: processes on the latent DiT/2. "
              "Two numbers differ at this N only where their intervals do not overlap.", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_plot(study: dict, path: str) -> None:
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows_a = [r for r in study["rows"] if "a" in r["parts"]]
    for i, r in enumerate(rows_a):
        e = next(e for e in r["evals"] if e["nfe"] == max(ev["nfe"] for ev in r["evals"] if ev["sampler"] == "euler"))
        ci = interval(e, "fcd")
        err = [[e["fcd"] - ci[0]], [ci[1] - e["fcd"]]] if ci else None
        ax_a.errorbar([i], [e["fcd"]], yerr=err, fmt="o", capsize=4)
    ax_a.set_xticks(range(len(rows_a)))
    ax_a.set_xticklabels([r["arm"] for r in rows_a], rotation=30, ha="right", fontsize=8)
    ax_a.set_ylabel("FCD (lower is better)")
    ax_a.set_title(f"(a) backbones, {study['preset']['budget_tflop']:g} TFLOP each, flow + Euler", fontsize=10)
    for r in [r for r in study["rows"] if "b" in r["parts"]]:
        evals = sorted(r["evals"], key=lambda e: e["nfe"])
        cis = [interval(e, "fcd") for e in evals]
        yerr = np.array([[e["fcd"] - c[0], c[1] - e["fcd"]] for e, c in zip(evals, cis)]).T if all(cis) else None
        ax_b.errorbar([e["nfe"] for e in evals], [e["fcd"] for e in evals], yerr=yerr, marker="o", capsize=3,
                      label=f"{r['process']} ({evals[0]['sampler']})")
    ax_b.set_xlabel("network evaluations (NFE)")
    ax_b.set_ylabel("FCD")
    ax_b.set_title("(b) processes on the latent DiT/2", fontsize=10)
    ax_b.legend(fontsize=8)
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
    n = study["preset"]["eval_samples"]
    fig.suptitle(f"bars: bootstrap 95% intervals over {n} samples", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "backbones"))
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--classifier_workdir", default="",
                        help="a trained classifier workdir for FCD (default: trained into WORKDIR/classifier)")
    parser.add_argument("--render_only", action="store_true", help="redraw the table and plot from the results JSON")
    for key, value in PRESETS["cpu"].items():
        parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    p.update({k: getattr(args, k) for k in PRESETS["cpu"] if getattr(args, k) is not None})
    stem = os.path.join(args.results_dir, "backbones" if args.preset != "toy" else "backbones_toy")
    if args.render_only:
        if not os.path.exists(stem + ".json"):
            raise FileNotFoundError(f"--render_only: no results {stem}.json; run the study first")
        study = json.load(open(stem + ".json"))
    else:
        study = run_study(p, args.workdir, args.classifier_workdir)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(stem + ".json", "w") as fh:
            json.dump(study, fh, indent=2, default=float)
    write_table(study, stem + ".md")
    write_plot(study, stem + ".png")
    log.info("wrote %s.md, %s.png and %s.json", stem, stem, stem)
    return study


if __name__ == "__main__":
    run_cli(main)
