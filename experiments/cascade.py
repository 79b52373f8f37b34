"""Cascade vs single model: a 16x16 class-conditional base model + a 16 -> 32 super-resolution stage against one
class-conditional model at 32x32, on Fashion-MNIST; and the effect of the SR stage's noise-augmentation level at
sampling (Imagen sec. 4.4 / Fig. A.10: level 0 gives the best FID, 0.1-0.3 look best).

Quality: FCD, KID (and class accuracy) at 32x32 in the feature space of the Fashion-MNIST classifier, against the
training set, with the real test images scored the same way as the floor. Sampling time: seconds per image after
compilation (the cascade: base + SR). Cost in FLOPs from XLA's cost analysis of one U-Net forward pass: sampling
FLOPs per image = NFE x forward (x2 under classifier-free guidance), training FLOPs ~ 3 x forward x batch x steps
(forward + backward). Every model samples from fold_in(key(seed), batch); the augmentation sweep reuses one set
of base images, so only the SR stage's level changes.

Workdirs (none is trained here). CPU-sized commands; the single model is the base config at 32x32 with about the
cascade's training compute (single 4000 x 32 x 0.47 GFLOP x 3 = 0.18 PFLOP; base 4000 x 64 x 0.11 + SR 3000 x 32 x
0.46, x 3 = 0.22 PFLOP); about 1 h 50 min of training on 2 idle cores at the rates measured below, minutes on a GPU:

    python -m ddpm_jax.main --config=configs/base_fashion_mnist_16.py --workdir=runs/base_fashion_mnist_16
    python -m ddpm_jax.main --config=configs/sr_fashion_mnist_16_32.py --workdir=runs/sr_fashion_mnist_16_32
    python -m ddpm_jax.main --config=configs/base_fashion_mnist_16.py --workdir=runs/single_fashion_mnist_32 \\
        --config.data.image_size=32 --config.model.attn_resolutions='(8,)' --config.training.batch_size=32
    python -m ddpm_jax.main --config=configs/classifier_fashion_mnist.py --workdir=runs/classifier_fashion_mnist

The committed CPU run halved the step counts (base 2,000, SR 1,500, single 2,000; ``--config.optim.ema_decay=0.995``
for each, since a 0.999 EMA still holds ~20% of the initial weights after 1,500 steps): ~13 + 17 + 28 min of training
on the 2-core dev VM (base 1.9-2.9, SR 1.46, single 1.3 steps/s). The SR stage samples with ancestral DDIM (eta 1, its
config's default; ``--sr_eta``), and one extra row uses deterministic DDIM (eta 0) at level 0.1 for comparison.

Then ``python experiments/cascade.py``: 36 min on the 2 cores for ``--num_samples=500`` (the single model at eta 0
and 1, the base, the SR stage at 6 settings, each with one warm-up batch), about twice that for the default 1,000.
``--preset=toy``: digits 4 -> 8, writes cascade_toy.*. Writes experiments/results/cascade.{md,png,json}.

FCD, KID and class accuracy carry bootstrap 95% intervals over the samples (experiments/scoring.py).
``--render_only`` rewrites the table and the plot's FCD panel from the results JSON (one written before intervals
shows ``[n/a]``; the sample rows need the samples, so they are left out).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ddpm_jax.data import load_source, resize_nearest, to_uint8  # noqa: E402
from ddpm_jax.diffusion import num_function_evaluations  # noqa: E402
from ddpm_jax.pipelines.images import make_grid  # noqa: E402
from ddpm_jax.tasks.sampling import default_labels  # noqa: E402
from ddpm_jax.training.logging import run_cli, setup_logging  # noqa: E402
from experiments.scoring import (NO_INTERVAL_NOTE, Scorer, error_bar, format_scores, interval, load_run,  # noqa: E402
                                 machine_description, require_workdir, samples_note, sampling_config, with_interval)

log = logging.getLogger("ddpm_jax")

PRESETS = {
    "default": dict(num_samples=1000, base_steps=50, sr_steps=25, single_steps=50, sampler="ddim", batch_size=250,
                    seed=0, aug_levels=(0.0, 0.1, 0.2, 0.3, 0.5), sr_eta=1.0, eta0_level=0.1, single_etas=(0.0, 1.0),
                    num_reference=0, grid=10),
    "toy": dict(num_samples=16, base_steps=2, sr_steps=2, single_steps=2, sampler="ddim", batch_size=16, seed=0,
                aug_levels=(0.0, 0.1, 0.2, 0.3, 0.5), sr_eta=1.0, eta0_level=0.1, single_etas=(0.0, 1.0),
                num_reference=200, grid=8),
}
COMMANDS = {
    "base": "python -m ddpm_jax.main --config=configs/base_fashion_mnist_16.py --workdir={workdir}",
    "sr": "python -m ddpm_jax.main --config=configs/sr_fashion_mnist_16_32.py --workdir={workdir}",
    "single": "python -m ddpm_jax.main --config=configs/base_fashion_mnist_16.py --workdir={workdir} "
              "--config.data.image_size=32 --config.model.attn_resolutions='(8,)' --config.training.batch_size=32",
}


def forward_flops(run, params) -> float:
    """FLOPs of one U-Net forward pass on one example (XLA cost analysis of the compiled call)."""
    model, shape = run.model, (1,) + tuple(run.image_shape)
    cond = run.task.example_cond(run, 1)  # what the task conditions on: a label, an SR stage's low-res image
    fn = jax.jit(lambda p, x: model.apply({"params": p}, x, jnp.zeros((1,)), cond))
    cost = fn.lower(params, jnp.zeros(shape)).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def costs(run, params, step: int, nfe: int) -> dict:
    """Forward, sampling (per image) and training FLOPs of one stage."""
    fwd = forward_flops(run, params)
    guided = bool(run.model.num_classes) and run.config.sampling.get("guidance_scale", 1.0) != 1.0
    return {"params": int(sum(x.size for x in jax.tree.leaves(params))), "forward_flops": fwd, "nfe": nfe,
            "guided": guided, "sample_flops": fwd * nfe * (2 if guided else 1),
            "train_flops": 3.0 * fwd * run.config.training.batch_size * step, "train_steps": step,
            "batch_size": int(run.config.training.batch_size), "ema_decay": float(run.config.optim.ema_decay)}


def timed_generate(run, params, key: jax.Array, num: int, sampling, labels=None, low_res=None) -> tuple:
    """(``num`` samples of ``run`` with ``sampling``, seconds): ``run.task.generate`` in batches of
    ``sampling.batch_size``, timed after one batch compiled the sampler (batch b from fold_in(key, b))."""
    fn = run.task.make_sample_fn(run, sampling)
    generate = lambda n: run.task.generate(run, params, key, n, None if labels is None else labels[:n], None,
                                           None if low_res is None else low_res[:n], sampling_config=sampling,
                                           sample_fn=fn)[0]
    generate(min(sampling.batch_size, num))
    t0 = time.perf_counter()
    out = generate(num)
    return out, time.perf_counter() - t0


def compare(workdirs: dict, classifier_workdir: str, p: dict) -> tuple:
    for name, workdir in workdirs.items():
        require_workdir(workdir, f"{name} model", COMMANDS[name].format(workdir=workdir))
    base_run, base_params, base_step = load_run(workdirs["base"])
    sr_run, sr_params, sr_step = load_run(workdirs["sr"])
    single_run, single_params, single_step = load_run(workdirs["single"])
    if sr_run.config.task != "super_resolution" or sr_run.config.sr.low_res_size != base_run.image_shape[0]:
        raise ValueError(f"{workdirs['sr']} must be a super_resolution stage from {base_run.image_shape[0]}px")
    size = sr_run.config.data.image_size
    if single_run.image_shape[0] != size:
        raise ValueError(f"the single model makes {single_run.image_shape[0]}px images, the cascade {size}px")
    data = (sr_run.config.data.name, sr_run.config.data.data_dir)
    classifier_workdir = classifier_workdir or os.path.join(os.path.dirname(workdirs["sr"].rstrip("/")) or ".",
                                                            f"classifier_{data[0]}")
    require_workdir(classifier_workdir, "classifier", f"python -m ddpm_jax.main --config=configs/classifier_"
                    f"{data[0]}.py --workdir={classifier_workdir} --config.data.image_size={size}")
    scorer = Scorer(classifier_workdir, data[0], data[1], size, p["num_reference"])
    n, bs, key = p["num_samples"], p["batch_size"], jax.random.key(p["seed"])
    labels = default_labels(n, single_run.model.num_classes)
    settings = lambda run, steps, **more: sampling_config(run, sampler=p["sampler"], num_steps=steps, batch_size=bs,
                                                           **more)

    nfe = lambda steps: num_function_evaluations(p["sampler"], steps, 1000)
    singles = []  # the single model at each DDIM eta (the SR stage samples at eta 1: the same choice for both)
    for eta in p["single_etas"]:
        x, single_s = timed_generate(single_run, single_params, key, n,
                                     settings(single_run, p["single_steps"], eta=eta), labels)
        row = {"label": f"single model {size}×{size}, DDIM η = {eta:g}", "eta": eta,
               "workdir": os.path.abspath(workdirs["single"]),
               **costs(single_run, single_params, single_step, nfe(p["single_steps"])),
               "seconds_per_image": single_s / n, **scorer(to_uint8(x), labels)}
        log.info("single model, eta %g: %.1f s, fcd %.4g, class accuracy %.3f", eta, single_s, row["fcd"],
                 row["class_accuracy"])
        singles.append((row, x))
    best_single, x_single = min(singles, key=lambda r: r[0]["fcd"])
    x_base, base_s = timed_generate(base_run, base_params, jax.random.fold_in(key, 1), n,
                                    settings(base_run, p["base_steps"]), labels)
    x_base = np.clip(x_base, -1.0, 1.0)
    models = {
        "single": best_single,
        "base": {"label": f"base {base_run.image_shape[0]}×{base_run.image_shape[0]}",
                 "eta": float(base_run.config.sampling.eta),
                 "workdir": os.path.abspath(workdirs["base"]),
                 **costs(base_run, base_params, base_step, nfe(p["base_steps"])), "seconds_per_image": base_s / n},
    }
    sr_cost = costs(sr_run, sr_params, sr_step, nfe(p["sr_steps"]))
    sr_labels = labels if sr_run.model.num_classes else None  # a class-conditional SR stage gets the base's labels
    sweep, grids = [], {"single": to_uint8(x_single[:p["grid"]]), "base": to_uint8(x_base[:p["grid"]])}
    runs = [(level, p["sr_eta"]) for level in p["aug_levels"]]
    if p.get("eta0_level") is not None and p["sr_eta"] != 0.0:  # deterministic DDIM for comparison
        runs.append((p["eta0_level"], 0.0))
    log.info("sampled %d images with the base model in %.1f s; now the SR stage at %d settings", n, base_s,
             len(runs))
    for level, eta in runs:
        x, sr_s = timed_generate(sr_run, sr_params, jax.random.fold_in(key, 2), n,
                                 settings(sr_run, p["sr_steps"], eta=eta, sr_aug_level=level), sr_labels, x_base)
        scores = scorer(to_uint8(x), labels)
        log.info("cascade, SR aug level %.2f, eta %g: %s", level, eta, format_scores(scores))
        sweep.append({"aug_level": level, "eta": eta, "sr_seconds_per_image": sr_s / n, **scores})
        grids[_row_key(level, eta, p["sr_eta"])] = to_uint8(x[:p["grid"]])
    models["sr"] = {"label": f"SR {base_run.image_shape[0]}→{size}", "workdir": os.path.abspath(workdirs["sr"]),
                    **sr_cost, "train_max_aug_level": sr_run.config.sr.max_aug_level}
    real = resize_nearest(load_source(data[0], "test", data[1] or None).images[:p["grid"]], size)
    study = {"preset": {**p, "aug_levels": list(p["aug_levels"])}, "data": {"name": data[0], "image_size": size},
             "reference": scorer.describe(), "machine": machine_description(), "models": models,
             "single_rows": [row for row, _ in singles],
             "aug_sweep": sweep, "real_floor": scorer.real_floor(n, with_labels=True)}
    return study, grids, real


def _row_key(level: float, eta: float, sweep_eta: float) -> str:
    return f"aug_{level:g}" + ("" if eta == sweep_eta else f"_eta{eta:g}")


def _main_sweep(study: dict) -> list:
    """The augmentation sweep at the preset's SR eta (without the deterministic-DDIM comparison row)."""
    return [r for r in study["aug_sweep"] if r["eta"] == study["preset"]["sr_eta"]]


def _flops(x: float) -> str:
    return f"{x / 1e12:.3g} TFLOP" if x >= 1e11 else f"{x / 1e9:.3g} GFLOP"


def _scores(r: dict) -> str:
    """``FCD | KID ×10³ | class accuracy`` cells with their intervals."""
    return (f"{with_interval(r, 'fcd')} | {with_interval(r, 'kid_classifier', '{:.2f}', 1e3)} | "
            f"{with_interval(r, 'class_accuracy')}")


def write_table(study: dict, path: str) -> None:
    p, m, sweep = study["preset"], study["models"], study["aug_sweep"]
    size = study["data"]["image_size"]
    best = min(_main_sweep(study), key=lambda r: r["fcd"])
    cascade_s = m["base"]["seconds_per_image"] + best["sr_seconds_per_image"]
    lines = [
        f"# Cascade vs single model on {study['data']['name']} {size}×{size}", "",
        f"Samples: **{p['num_samples']:,} per row**, seed {p['seed']}, labels 0..K-1 in turn; {p['sampler']} with "
        f"{p['base_steps']} (base), {p['sr_steps']} (SR, η = {p['sr_eta']:g}) and {p['single_steps']} "
        f"(single) steps, each workdir's own guidance scale. Scored at {size}×{size} against {study['reference']}.", "",
        f"Machine: {study['machine']}. Time: after compilation, batch {p['batch_size']}.", "",
        samples_note(study["single_rows"][0]) or NO_INTERVAL_NOTE, "",
        "## Quality, sampling time and cost", "",
        "| model | FCD | KID ×10³ | class accuracy | s / image | sampling FLOPs / image "
        "| training FLOPs (steps × batch) | params |", "|---|---|---|---|---|---|---|---|",
    ]
    s = m["single"]
    for row in study["single_rows"]:
        lines.append(f"| {row['label']} | {_scores(row)} | {row['seconds_per_image']:.4f} | "
                     f"{_flops(row['sample_flops'])} | "
                     f"{_flops(row['train_flops'])} ({row['train_steps']} × {row['batch_size']}) | {row['params']:,} |")
    b, r = m["base"], m["sr"]
    lines.append(f"| cascade: {b['label']} (η = {b['eta']:g}) + {r['label']} (aug {best['aug_level']:g}, "
                 f"η = {best['eta']:g}) | {_scores(best)} | {cascade_s:.4f} | "
                 f"{_flops(b['sample_flops'] + r['sample_flops'])} | {_flops(b['train_flops'] + r['train_flops'])} "
                 f"({b['train_steps']} × {b['batch_size']} + {r['train_steps']} × {r['batch_size']}) | "
                 f"{b['params'] + r['params']:,} |")
    f = study["real_floor"]
    lines.append(f"| *real {f['split']} images* | {_scores(f)} | | | | |")
    lines += ["", "Cascade row: the augmentation level with the lowest FCD; the single model is shown at each η (the "
              f"plot uses its best). Training FLOPs ≈ 3 × forward FLOPs × batch × steps (XLA cost analysis of one "
              f"forward pass: base {_flops(b['forward_flops'])}, SR "
              f"{_flops(r['forward_flops'])}, single {_flops(s['forward_flops'])} per example). EMA decay: base "
              f"{b['ema_decay']}, SR {r['ema_decay']}, single {s['ema_decay']}.", "",
              f"## SR noise-augmentation level at sampling (trained with s ~ U[0, {r['train_max_aug_level']:g} T))", "",
              "| aug level | SR DDIM η | FCD | KID ×10³ | class accuracy | SR s / image |",
              "|---|---|---|---|---|---|"]
    for row in sweep:
        lines.append(f"| {row['aug_level']:g} | {row['eta']:g} | {_scores(row)} | "
                     f"{row['sr_seconds_per_image']:.4f} |")
    lines += ["", "Same base images in every row; a row with another η than the rest is the deterministic-DDIM "
              "comparison. Imagen (sec. 4.4) finds level 0 best by FID and 0.1–0.3 best to the "
              "eye. Samples: the .png beside this file.", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_plot(study: dict, grids: Optional[dict], real: Optional[np.ndarray], path: str) -> None:
    """Left: FCD against the SR augmentation level with bootstrap 95% error bars (single model and real floor as
    lines with their intervals as bands); right: sample rows (left out when ``grids`` is None: --render_only)."""
    sweep, eta = _main_sweep(study), study["preset"]["sr_eta"]
    size = study["data"]["image_size"]
    rows = []
    if grids is not None:
        rows = [("real test", real), (f"single (η={study['models']['single']['eta']:g})", grids["single"]),
                ("base (upsampled)", grids["base"].repeat(size // grids["base"].shape[1], 1).repeat(
                    size // grids["base"].shape[1], 2))]
        rows += [(f"cascade, aug {r['aug_level']:g}" + ("" if r["eta"] == eta else f", η={r['eta']:g}"),
                  grids[_row_key(r["aug_level"], r["eta"], eta)]) for r in study["aug_sweep"]]
    fig = plt.figure(figsize=(11, 0.75 * len(rows) + 1) if rows else (6, 4.5))
    ax = fig.add_subplot(1, 2 if rows else 1, 1)
    levels = [r["aug_level"] for r in sweep]
    has_ci = interval(sweep[0], "fcd") is not None
    ax.errorbar(levels, [r["fcd"] for r in sweep], yerr=np.array([error_bar(r, "fcd") for r in sweep]).T
                if has_ci else None, fmt="o-", capsize=3, label=f"cascade (base + SR, η = {eta:g})")
    for r in study["aug_sweep"]:
        if r["eta"] != eta:
            ax.errorbar([r["aug_level"]], [r["fcd"]], yerr=np.array([error_bar(r, "fcd")]).T if has_ci else None,
                        fmt="x", color="C3", ms=8, capsize=3, label=f"SR with DDIM η = {r['eta']:g}")
    single = study["models"]["single"]
    ax.axhline(single["fcd"], color="C1", ls="--", label=f"single model (best: DDIM η = {single['eta']:g})")
    ax.axhline(study["real_floor"]["fcd"], color="gray", ls=":", label="real test images")
    for record, color in ((single, "C1"), (study["real_floor"], "gray")):
        ci = interval(record, "fcd")
        if ci is not None:
            ax.axhspan(ci[0], ci[1], color=color, alpha=0.12, lw=0)
    ax.set_xlabel("SR noise-augmentation level at sampling")
    ax.set_ylabel("FCD (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title(f"{study['data']['name']} {size}×{size}, {study['preset']['num_samples']} samples"
                 + ("; bootstrap 95% intervals" if has_ci else "; no intervals (run before intervals)"), fontsize=9)
    for i, (title, images) in enumerate(rows):
        sub = fig.add_subplot(len(rows), 2, 2 * i + 2)
        grid = make_grid(np.asarray(images, np.uint8), len(images), pad=1)
        sub.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                   interpolation="nearest")
        sub.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
        sub.set_xticks([])
        sub.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--base_workdir", default=os.path.join(ROOT, "runs", "base_fashion_mnist_16"))
    parser.add_argument("--sr_workdir", default=os.path.join(ROOT, "runs", "sr_fashion_mnist_16_32"))
    parser.add_argument("--single_workdir", default=os.path.join(ROOT, "runs", "single_fashion_mnist_32"))
    parser.add_argument("--classifier_workdir", default="",
                        help="classifier for FCD/KID (default: classifier_DATA beside the SR workdir)")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--single_etas", type=lambda s: tuple(float(v) for v in s.split(",")), default=None,
                        help="DDIM etas the single model is sampled with (default 0,1; the best is compared)")
    for k in ("num_samples", "base_steps", "sr_steps", "single_steps", "batch_size", "seed"):
        parser.add_argument(f"--{k}", type=int, default=None)
    parser.add_argument("--aug_levels", type=lambda s: tuple(float(v) for v in s.split(",")), default=None)
    parser.add_argument("--sr_eta", type=float, default=None, help="DDIM eta of the SR stage's sweep (default 1)")
    parser.add_argument("--eta0_level", type=float, default=None,
                        help="augmentation level of the extra deterministic-DDIM (eta 0) SR row (default 0.1)")
    parser.add_argument("--skip_eta0_row", action="store_true", help="no deterministic-DDIM SR row")
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the table and the FCD plot from the results JSON of an earlier run")
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    p.update({k: getattr(args, k) for k in p if getattr(args, k, None) is not None})
    if args.skip_eta0_row:
        p["eta0_level"] = None
    workdirs = {"base": args.base_workdir, "sr": args.sr_workdir, "single": args.single_workdir}
    stem = os.path.join(args.results_dir, "cascade_toy" if args.preset == "toy" else "cascade")
    if args.render_only:
        if not os.path.exists(stem + ".json"):
            raise FileNotFoundError(f"--render_only: no results {stem}.json; run the study first")
        study, grids, real = json.load(open(stem + ".json")), None, None
    else:
        study, grids, real = compare(workdirs, args.classifier_workdir, p)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(stem + ".json", "w") as fh:
            json.dump(study, fh, indent=2)
    write_table(study, stem + ".md")
    write_plot(study, grids, real, stem + ".png")
    log.info("wrote %s.md, %s.png and %s.json", stem, stem, stem)
    return study


if __name__ == "__main__":
    run_cli(main)
