"""VAE vs diffusion: the VAE baseline (decoder of z ~ N(0, I)) against pixel-space and latent-space diffusion trained
on the same data, scored the same way on the same number of samples.

Each model's samples are scored against the training set in one trained classifier's feature space (Frechet
classifier distance, KID; class accuracy for class-conditional models; FID too with ``--inception_weights``), with
the real test images scored the same way as the floor. Speed is images/s after compilation (diffusion: the sampling
loop plus, for latent diffusion, the decoder; VAE: one decoder pass), with network evaluations per image.

The default workdirs are the Fashion-MNIST runs of configs/; none is trained here. Train them first (CPU-sized
flags; drop them on an accelerator):

    python -m ddpm_jax.main --config=configs/vae_fashion_mnist_f4.py --workdir=runs/vae_fashion_mnist_f4
    python -m ddpm_jax.main --config=configs/ddpm_fashion_mnist.py --workdir=runs/ddpm_fashion_mnist \\
        --config.model.ch=32 --config.training.batch_size=32 --config.training.num_steps=3000 \\
        --config.optim.lr=1e-3 --config.optim.warmup_steps=100 --config.optim.ema_decay=0.998 \\
        --config.training.checkpoint_every=1000 --config.training.sample_every=0
    python -m ddpm_jax.main --config=configs/autoencoder_fashion_mnist_f4.py --workdir=runs/autoencoder_fashion_mnist_f4
    python -m ddpm_jax.main --config=configs/ldm_fashion_mnist_f4.py --workdir=runs/ldm_fashion_mnist_f4 \\
        --config.training.batch_size=64 --config.training.num_steps=3000 --config.optim.lr=5e-4 \\
        --config.optim.warmup_steps=100 --config.optim.ema_decay=0.998 --config.training.sample_every=0
    python -m ddpm_jax.main --config=configs/classifier_fashion_mnist.py --workdir=runs/classifier_fashion_mnist

Then:

    python experiments/vae_vs_diffusion.py          # 1,000 samples per model, DDIM 50 steps
    python experiments/vae_vs_diffusion.py --num_samples=10000 --inception_weights=pt_inception.npz  # accelerator

FCD, KID and class accuracy carry bootstrap 95% intervals over the samples (experiments/scoring.py); ``--render_only``
rewrites the table from the results JSON (one written before intervals shows ``[n/a]``; the sample grid needs the
samples and is not redrawn).

Pass ``--latent_workdir=""`` (or another model's flag) to leave a model out. Writes
experiments/results/vae_vs_diffusion.{md,png,json} (``--preset=toy``: vae_vs_diffusion_toy.*).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ddpm_jax.data import load_source, resize_nearest, to_uint8  # noqa: E402
from ddpm_jax.diffusion import num_function_evaluations  # noqa: E402
from ddpm_jax.pipelines.images import make_grid  # noqa: E402
from ddpm_jax.tasks.autoencoder import autoencoder_params, sample_vae_prior  # noqa: E402
from ddpm_jax.training.logging import run_cli, setup_logging  # noqa: E402
from ddpm_jax.workdir import Workdir  # noqa: E402
from experiments.scoring import (NO_INTERVAL_NOTE, Scorer, format_scores, load_run,  # noqa: E402
                                 machine_description, require_workdir, samples_note, sampling_config,
                                 timed_diffusion_samples, with_interval)

log = logging.getLogger("ddpm_jax")

PRESETS = {
    "default": dict(num_samples=1000, sampler="ddim", num_steps=50, batch_size=250, seed=0, grid_per_model=20,
                    num_reference=0),
    "toy": dict(num_samples=16, sampler="ddim", num_steps=4, batch_size=16, seed=0, grid_per_model=8,
                num_reference=200),
}

MODELS = {  # flag -> (label, task the workdir must hold, command that trains the default workdir)
    "vae": ("VAE (prior samples)", ("autoencoder",),
            "python -m ddpm_jax.main --config=configs/vae_fashion_mnist_f4.py --workdir={workdir}"),
    "pixel": ("pixel diffusion", ("diffusion",),
              "python -m ddpm_jax.main --config=configs/ddpm_fashion_mnist.py --workdir={workdir}"),
    "latent": ("latent diffusion", ("latent_diffusion",),
               "python -m ddpm_jax.main --config=configs/ldm_fashion_mnist_f4.py --workdir={workdir} (after "
               "configs/autoencoder_fashion_mnist_f4.py)"),
}


def count_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def decoder_param_count(ae_params) -> int:
    """Parameters of the autoencoder's generating half: post-quant 1x1 conv and decoder."""
    return count_params({k: v for k, v in ae_params.items() if k in ("decoder", "post_quant_conv")})


def vae_samples(run, params, p: dict) -> dict:
    """Prior samples through ``sample_vae_prior``; its decoder pass is timed again after a compiling call."""
    key = jax.random.key(p["seed"])
    t0 = time.perf_counter()
    images = sample_vae_prior(run, params, key, p["num_samples"], p["batch_size"])
    first_s = time.perf_counter() - t0
    model, ae = run.model, autoencoder_params(params)
    decode = jax.jit(lambda q, z: model.apply({"params": q}, z, method=model.decode))
    f, size = model.downsample_factor, run.config.data.image_size
    z = jax.random.normal(key, (p["batch_size"], size // f, size // f, model.embed_dim))
    jax.block_until_ready(decode(ae, z))
    reps = max(1, p["num_samples"] // p["batch_size"])
    t0 = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(decode(ae, z))
    rate = reps * p["batch_size"] / (time.perf_counter() - t0)
    return {"images": to_uint8(images), "labels": None, "nfe": "1 decoder pass", "images_per_sec": rate,
            "first_call_s": first_s, "generator_params": decoder_param_count(ae)}


def diffusion_samples(run, params, p: dict) -> dict:
    sampling = sampling_config(run, sampler=p["sampler"], num_steps=p["num_steps"])
    out = timed_diffusion_samples(run, params, sampling, p["num_samples"], p["seed"], p["batch_size"])
    seconds = out["sample_s"]
    nfe = f"{num_function_evaluations(p['sampler'], p['num_steps'], run.schedule.num_timesteps)} U-Net"
    generator = count_params(params)
    if run.latent is not None:  # decoding is part of making an image: time it after a compiling call
        run.to_pixels(out["x"])
        t0 = time.perf_counter()
        pixels = run.to_pixels(out["x"])
        seconds += time.perf_counter() - t0
        nfe += " + 1 decoder pass"
        generator += decoder_param_count(autoencoder_params(run.latent.params))
    else:
        pixels = run.to_pixels(out["x"])
    return {"images": to_uint8(pixels), "labels": out["labels"] if out["conditional"] else None, "nfe": nfe,
            "images_per_sec": p["num_samples"] / seconds, "compile_s": out["compile_s"], "generator_params": generator}


def compare(workdirs: dict, classifier_workdir: str, p: dict, inception_weights: str = "") -> tuple:
    """Sample and score every model; returns (study dict, {model: uint8 grid images}, real grid images)."""
    workdirs = {k: v for k, v in workdirs.items() if v}
    if not workdirs:
        raise ValueError("no model to compare: give at least one of --vae_workdir, --pixel_workdir, --latent_workdir")
    data = None
    for name, workdir in workdirs.items():  # check every workdir before loading any
        label, tasks, command = MODELS[name]
        require_workdir(workdir, label, command.format(workdir=workdir))
        config = Workdir(workdir).config_for_reading()
        task = config.get("task", "diffusion")
        if task not in tasks:
            raise ValueError(f"--{name}_workdir={workdir} holds a {task} run, expected {' or '.join(tasks)}")
        this = (config.data.name, int(config.data.image_size), config.data.get("data_dir", ""))
        if data is not None and this[:2] != data[:2]:
            raise ValueError(f"{workdir} was trained on {this[0]} at {this[1]}px, the others on {data[0]} at "
                             f"{data[1]}px: the comparison needs the same data")
        data = data or this
    classifier_workdir = classifier_workdir or os.path.join(
        os.path.dirname(next(iter(workdirs.values())).rstrip("/")) or ".", f"classifier_{data[0]}")
    require_workdir(classifier_workdir, "classifier",
                    f"python -m ddpm_jax.main --config=configs/classifier_{data[0]}.py --workdir={classifier_workdir}")
    scorer = Scorer(classifier_workdir, data[0], data[2], data[1], p["num_reference"], inception_weights)
    entries, grids = [], {}
    for name, workdir in workdirs.items():
        label = MODELS[name][0]
        run, params, step = load_run(workdir)
        task = run.config.get("task", "diffusion")
        out = vae_samples(run, params, p) if task == "autoencoder" else diffusion_samples(run, params, p)
        scores = scorer(out["images"], out["labels"])
        log.info("%s (%s): %s | %.1f img/s", label, workdir, format_scores(scores), out["images_per_sec"])
        grids[name] = out.pop("images")[:p["grid_per_model"]]
        out.pop("labels")
        entries.append({"model": name, "label": label, "workdir": os.path.abspath(workdir), "task": task,
                        "checkpoint_step": step, **out, **scores})
    conditional = any("class_accuracy" in e for e in entries)
    floor = scorer.real_floor(p["num_samples"], with_labels=conditional)
    real = resize_nearest(load_source(data[0], "test", data[2] or None).images[:p["grid_per_model"]], data[1])
    study = {"preset": p, "data": {"name": data[0], "image_size": data[1]}, "reference": scorer.describe(),
             "machine": machine_description(), "models": entries, "real_floor": floor}
    return study, grids, real


def write_table(study: dict, path: str) -> None:
    p, rows = study["preset"], study["models"]
    has = lambda key: any(key in r for r in rows)
    header = ["model", "workdir (step)", "generator params", "network passes per image", "img/s", "FCD",
              "KID ×10³"] + (["class accuracy"] if has("class_accuracy") else []) + (["FID"] if has("fid") else [])

    def metric_cells(r):
        cells = [with_interval(r, "fcd"), with_interval(r, "kid_classifier", "{:.2f}", 1e3)]
        if has("class_accuracy"):
            cells.append(with_interval(r, "class_accuracy"))
        if has("fid"):
            cells.append(f"{r['fid']:.2f}" if "fid" in r else "-")
        return cells

    lines = [
        f"# VAE vs diffusion on {study['data']['name']} {study['data']['image_size']}×{study['data']['image_size']}",
        "",
        f"Samples: **{p['num_samples']:,} per model**, seed {p['seed']} (diffusion: {p['sampler']}, "
        f"{p['num_steps']} steps, each workdir's own x0 clipping and guidance scale; VAE: decoder of z ~ N(0, I)); "
        f"class-conditional models get labels 0..K-1 in turn. Scored against {study['reference']}; the last row "
        f"scores {study['real_floor']['count']:,} real {study['real_floor']['split']} images the same way.",
        "",
        f"Machine: {study['machine']}. img/s: after compilation, batch {p['batch_size']}, latent models including "
        "their decoder.",
        "",
        (samples_note(rows[0]) or NO_INTERVAL_NOTE) + " FID: no interval.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        lines.append(f"| {r['label']} | `{os.path.basename(r['workdir'])}` ({r['checkpoint_step']}) | "
                     f"{r['generator_params']:,} | {r['nfe']} | {r['images_per_sec']:.1f} | "
                     + " | ".join(metric_cells(r)) + " |")
    lines.append(f"| *real {study['real_floor']['split']} images* | | | | | " + " | ".join(
        metric_cells(study["real_floor"])) + " |")
    lines += ["", "Generator params: the network that maps noise to an image (VAE: decoder; latent diffusion: U-Net + "
              "decoder). Samples side by side: the .png beside this file (first row block: real test images).", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_grid(study: dict, grids: dict, real: np.ndarray, path: str, ncols: int = 10) -> None:
    """One row block per model (real test images first), each titled with its FCD."""
    blocks = [("real test images", real)] + [
        (f"{r['label']} — FCD {with_interval(r, 'fcd')}", grids[r["model"]]) for r in study["models"]]
    ncols = min(ncols, max(len(b) for _, b in blocks))
    rows = [-(-len(images) // ncols) for _, images in blocks]
    fig, axes = plt.subplots(len(blocks), 1, figsize=(ncols * 0.8, sum(0.8 * r + 0.4 for r in rows)),
                             gridspec_kw={"height_ratios": rows}, squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], blocks):
        grid = make_grid(np.asarray(images, np.uint8), ncols, pad=1)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--vae_workdir", default=os.path.join(ROOT, "runs", "vae_fashion_mnist_f4"))
    parser.add_argument("--pixel_workdir", default=os.path.join(ROOT, "runs", "ddpm_fashion_mnist"))
    parser.add_argument("--latent_workdir", default=os.path.join(ROOT, "runs", "ldm_fashion_mnist_f4"))
    parser.add_argument("--classifier_workdir", default="",
                        help="classifier for FCD/KID (default: classifier_DATA beside the first workdir)")
    parser.add_argument("--inception_weights", default="", help="FID Inception weights (.npz/.pth) to add FID")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the table from the results JSON of an earlier run (the sample grid is kept)")
    for key, value in PRESETS["default"].items():
        parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    p.update({k: getattr(args, k) for k in PRESETS["default"] if getattr(args, k) is not None})
    workdirs = {"vae": args.vae_workdir, "pixel": args.pixel_workdir, "latent": args.latent_workdir}
    stem = os.path.join(args.results_dir, "vae_vs_diffusion_toy" if args.preset == "toy" else "vae_vs_diffusion")
    if args.render_only:
        if not os.path.exists(stem + ".json"):
            raise FileNotFoundError(f"--render_only: no results {stem}.json; run the comparison first")
        study = json.load(open(stem + ".json"))
        write_table(study, stem + ".md")
        log.info("wrote %s.md from %s.json", stem, stem)
        return study
    study, grids, real = compare(workdirs, args.classifier_workdir, p, args.inception_weights)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(stem + ".json", "w") as fh:
        json.dump(study, fh, indent=2)
    write_table(study, stem + ".md")
    write_grid(study, grids, real, stem + ".png")
    log.info("wrote %s.md, %s.png and %s.json", stem, stem, stem)
    return study


if __name__ == "__main__":
    run_cli(main)
