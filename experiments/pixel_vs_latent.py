"""Pixel space vs latent space at equal training compute: the LDM downsampling-factor study (Rombach et al. 2022,
Sec. 4.1, Fig. 6) in miniature on real data.

For each downsampling factor f (1 = pixel space; 2, 4, 8 = latent diffusion on the frozen KL autoencoder of that
factor) the same U-Net family (width ``ch``, one level per halving down to 4x4, attention at 4x4, class-conditional)
trains for the same number of training FLOPs: steps_f = budget / FLOPs-per-step_f, FLOPs from XLA's cost analysis of
the compiled step. Every model is sampled with the same sampler and step count, and scored at ``--num_evals`` points
along training in a trained classifier's feature space (Frechet classifier distance, KID, class accuracy); FID too
when Inception weights are given. The autoencoder's cost (its training and the one-off encoding of the dataset) is
counted separately and in the total.

    python experiments/pixel_vs_latent.py                       # CPU-sized: Fashion-MNIST 32x32, 79 min on 2 cores
    python experiments/pixel_vs_latent.py --preset=accelerator  # ch 128, 20 PFLOP per factor, 5,000 samples

Uncertainty: the trainer scores the points along training (no interval); the final point of each factor is sampled
again exactly as the trainer's last evaluation (same EMA weights, seed, labels and sampler) and gets bootstrap 95%
intervals of FCD, KID and class accuracy over its ``eval_samples`` samples (experiments/scoring.py), shown in the
table's final columns and as error bars in the plot. ``--render_only`` redraws from the results JSON (one written
before intervals shows ``[n/a]``).

Writes experiments/results/pixel_vs_latent.{md,png,json}; runs (autoencoders, classifier, denoisers) go to --workdir
and are resumed, not redone, when the command is repeated.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ddpm_jax.data import load_source, resize_nearest, to_model_range, to_uint8  # noqa: E402
from ddpm_jax.default_config import base_config  # noqa: E402
from ddpm_jax.evaluation.features import InceptionFeatures  # noqa: E402
from ddpm_jax.evaluation.fid import frechet_distance  # noqa: E402
from ddpm_jax.evaluation.quality import SampleQuality  # noqa: E402
from ddpm_jax.evaluation.statistics import feature_statistics  # noqa: E402
from ddpm_jax.models.inception import load_inception_params  # noqa: E402
from ddpm_jax.tasks import build_run, load_trained  # noqa: E402
from ddpm_jax.training import loop  # noqa: E402
from ddpm_jax.training.logging import run_cli, setup_logging  # noqa: E402
from ddpm_jax.training.optim import make_optimizer  # noqa: E402
from ddpm_jax.training.steps import make_train_step  # noqa: E402
from experiments.scoring import (NO_INTERVAL_NOTE, format_scores, interval, samples_note,  # noqa: E402
                                 score_with_intervals, with_interval)

log = logging.getLogger("ddpm_jax")

PRESETS = {
    # Fashion-MNIST padded to 32x32; U-Net ch 32; 12 TFLOP of denoiser training per factor (pixel: ~270 steps of batch 32)
    "cpu": dict(data="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", image_size=32, factors="1,2,4,8",
                ch=32, batch_size=32, budget_tflop=12.0, num_evals=4, eval_samples=500, eval_steps=20,
                ae_ch=16, ae_steps=600, ae_batch_size=32, classifier_config="configs/classifier_fashion_mnist.py",
                classifier_steps=0, lr=1e-3),
    "accelerator": dict(data="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", image_size=32,
                        factors="1,2,4,8", ch=128, batch_size=128, budget_tflop=20000.0, num_evals=8,
                        eval_samples=5000, eval_steps=50, ae_ch=64, ae_steps=20000, ae_batch_size=64,
                        classifier_config="configs/classifier_fashion_mnist.py", classifier_steps=0, lr=2e-4),
    # seconds-sized, for the test suite: 8x8 digits, f = 1 and 2
    "toy": dict(data="digits", data_dir="", image_size=8, factors="1,2", ch=8, batch_size=16, budget_tflop=0.002,
                num_evals=2, eval_samples=20, eval_steps=4, ae_ch=8, ae_steps=20, ae_batch_size=16,
                classifier_config="configs/classifier_digits.py", classifier_steps=30, lr=2e-3),
}


def unet_ch_mult(resolution: int, min_resolution: int = 4) -> tuple:
    """One U-Net level per halving from ``resolution`` down to ``min_resolution`` (widths 1, 2, 2, 2, ...)."""
    levels = max(1, int(round(math.log2(max(resolution // min_resolution, 1)))) + 1)
    return (1,) + (2,) * (levels - 1)


def autoencoder_config(p: dict, f: int) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "autoencoder"
    c.data.name, c.data.data_dir, c.data.image_size = p["data"], p["data_dir"], p["image_size"]
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks = p["ae_ch"], (1,) + (2,) * int(math.log2(f)), 1
    c.model.attn_levels, c.model.z_channels, c.model.embed_dim, c.model.num_groups = (), 4, 4, 8
    c.autoencoder.reconstruction, c.autoencoder.kl_weight = "l1", 1e-6
    c.training.batch_size, c.training.num_steps = p["ae_batch_size"], p["ae_steps"]
    c.training.log_every = max(1, p["ae_steps"] // 10)
    c.training.checkpoint_every = p["ae_steps"]
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = 1e-3, min(100, p["ae_steps"] // 10), 0.99
    return c


def denoiser_config(p: dict, f: int, ae_workdir: str, classifier_workdir: str) -> ml_collections.ConfigDict:
    c = base_config()
    c.task = "diffusion" if f == 1 else "latent_diffusion"
    c.data.name, c.data.data_dir, c.data.image_size = p["data"], p["data_dir"], p["image_size"]
    c.latent.autoencoder_workdir = ae_workdir
    res = p["image_size"] // f
    c.model.ch, c.model.ch_mult, c.model.num_res_blocks = p["ch"], unet_ch_mult(res), 1
    c.model.attn_resolutions, c.model.num_groups, c.model.class_conditional = (min(4, res),), 8, True
    c.training.batch_size = p["batch_size"]
    c.training.cond_drop_prob = 0.1
    c.optim.lr, c.optim.warmup_steps, c.optim.ema_decay = p["lr"], 50, 0.995
    c.sampling.sampler, c.sampling.num_steps = "ddim", p["eval_steps"]
    c.sampling.clip_x0 = 1.0 if f == 1 else None  # latents are not bounded
    c.sampling.batch_size = 250
    c.eval.classifier_workdir, c.eval.num_samples = classifier_workdir, p["eval_samples"]
    c.eval.sampler, c.eval.num_steps = "ddim", p["eval_steps"]
    return c


def compiled_flops(fn, *args) -> float:
    """FLOPs of one call of ``jax.jit(fn)(*args)`` from XLA's cost analysis of the compiled computation."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def abstract_batch(run, batch_size: int) -> dict:
    return {"image": jax.ShapeDtypeStruct((batch_size,) + tuple(run.image_shape), jnp.float32),
            "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}


def train_step_flops(config, run) -> tuple[float, int]:
    """(FLOPs of one optimizer step, number of trainable parameters) of ``config``'s model (``run`` built from it)."""
    tx, lr_schedule = make_optimizer(config.optim, config.training.num_steps)
    state = jax.eval_shape(loop.make_init_fn(run, tx), jax.random.key(0))
    step = make_train_step(run.task.loss(run), tx, lr_schedule, config.optim.ema_decay)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    return compiled_flops(step, state, abstract_batch(run, config.training.batch_size)), n_params


def autoencoder_costs(ae_cfg, workdir: str) -> dict:
    """Parameters, training FLOPs, one-off dataset-encoding FLOPs, per-image decode FLOPs and held-out PSNR."""
    trained = load_trained(workdir, ae_cfg)
    flops_step, n_params = train_step_flops(ae_cfg, trained.run)
    num_train_images = len(trained.run.source)
    model, params = trained.run.model, trained.params
    size = ae_cfg.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    f = model.downsample_factor
    z = jax.ShapeDtypeStruct((1, size // f, size // f, model.embed_dim), jnp.float32)
    encode = compiled_flops(lambda p, x: model.apply({"params": p}, x, method=model.encode).mode(), params, x)
    decode = compiled_flops(lambda p, z: model.apply({"params": p}, z, method=model.decode), params, z)
    psnr = [r["eval/psnr"] for r in read_metrics(workdir) if "eval/psnr" in r]
    return {"params": n_params, "train_flops": flops_step * ae_cfg.training.num_steps,
            "encode_dataset_flops": encode * num_train_images, "decode_flops_per_image": decode,
            "psnr": psnr[-1] if psnr else float("nan")}


def read_metrics(workdir: str) -> list:
    path = os.path.join(workdir, "metrics.jsonl")
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def sampling_rate(run, params, num: int = 128) -> float:
    """Images/s of the eval sampler (``run.config.sampling``) incl. decoding, after a first call that compiles."""
    once = lambda: to_uint8(run.to_pixels(run.task.generate(run, params, jax.random.key(1), num)[0]))
    once()
    t0 = time.perf_counter()
    once()
    return num / (time.perf_counter() - t0)


def inception_fid(run, params, weights: str, num: int) -> float:
    """FID of ``num`` EMA samples against the test split through the FID Inception network (weights from a path)."""
    config = run.config
    x, _, _ = run.task.generate(run, params, jax.random.key(config.seed + 2), num)
    extractor = InceptionFeatures(load_inception_params(weights))
    test = load_source(config.data.name, "test", config.data.data_dir or None)
    real = to_uint8(to_model_range(resize_nearest(test.images[:num], config.data.image_size)))
    gray_to_rgb = lambda im: np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im
    fake_stats = feature_statistics(extractor(gray_to_rgb(to_uint8(run.to_pixels(x))))[0])
    real_stats = feature_statistics(extractor(gray_to_rgb(real))[0])
    return float(frechet_distance(*fake_stats, *real_stats))


def final_scores(config, run, params) -> dict:
    """The trainer's last evaluation redone (its SampleQuality: the same EMA weights, seed, labels, sampler and
    reference features) with bootstrap 95% intervals over its samples."""
    quality = SampleQuality.from_config(config, run)
    labels = quality.labels if run.model.num_classes else None
    x, _, _ = run.task.generate(run, params, jax.random.key(quality.seed), quality.num_samples, labels,
                                sampling_config=quality.sampling, sample_fn=quality.sample_fn)
    return score_with_intervals(quality.features, to_uint8(run.to_pixels(x)), quality.ref_stats,
                                quality.ref_features, quality.labels if quality.class_labels else None)


def final_record(r: dict) -> dict:
    """The final scores of one factor: the re-scored ones with intervals, or (older results) the trainer's last."""
    if r.get("final"):
        return r["final"]
    e = r["evals"][-1]
    return {"fcd": e["fcd"], "kid_classifier": e["kid"], "class_accuracy": e.get("accuracy")}


def train_to_end(config, workdir: str):
    """Train (or resume) a run and return its final state; stop the study if the trainer stopped early (SIGTERM: it
    saved, rerun to resume)."""
    state = loop.train(config, workdir)
    if int(jax.device_get(state.step)) < config.training.num_steps:
        raise SystemExit(f"training in {workdir} stopped at step {int(state.step)}; run the same command to resume")
    return state


def ensure_classifier(p: dict, workdir: str, given: str) -> str:
    if given:
        return given
    spec = importlib.util.spec_from_file_location("classifier_config", os.path.join(ROOT, p["classifier_config"]))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.data.image_size = p["image_size"]
    if p["classifier_steps"]:
        c.training.num_steps = p["classifier_steps"]
        c.training.log_every = c.training.checkpoint_every = p["classifier_steps"]
    path = os.path.join(workdir, "classifier")
    train_to_end(c, path)
    return path


def run_study(p: dict, workdir: str, classifier_workdir: str = "", inception_weights: str = "") -> dict:
    factors = [int(f) for f in str(p["factors"]).split(",")]
    for f in factors:
        if f < 1 or f & (f - 1) or p["image_size"] % f:
            raise ValueError(f"factor {f} must be a power of two dividing the image size {p['image_size']}")
    classifier_workdir = ensure_classifier(p, workdir, classifier_workdir)
    budget = p["budget_tflop"] * 1e12
    results = []
    for f in factors:
        ae_workdir = os.path.join(workdir, f"autoencoder_f{f}") if f > 1 else ""
        ae = None
        if f > 1:
            ae_cfg = autoencoder_config(p, f)
            t0 = time.perf_counter()
            train_to_end(ae_cfg, ae_workdir)
            log.info("autoencoder f=%d ready in %.0f s", f, time.perf_counter() - t0)
            ae = autoencoder_costs(ae_cfg, ae_workdir)
        cfg = denoiser_config(p, f, ae_workdir, classifier_workdir)
        run = build_run(cfg)  # built once per factor (for latents this encodes the scale-factor images)
        flops_step, n_params = train_step_flops(cfg, run)
        steps = max(p["num_evals"], int(round(budget / flops_step)))
        every = max(1, steps // p["num_evals"])
        steps = every * p["num_evals"]
        cfg.training.num_steps, cfg.eval.every = steps, every
        # EMA horizon 1/20 of the run (the trainer's EMA has no warm-up): the first evaluation, at 1/num_evals of
        # the budget, sees < 1% of the initial weights whatever the step count
        cfg.optim.ema_decay = float(np.clip(1.0 - 20.0 / steps, 0.0, 0.9999))
        cfg.training.log_every = max(1, min(every, 50))
        cfg.training.checkpoint_every = every
        run_dir = os.path.join(workdir, f"denoiser_f{f}")
        log.info("f=%d: %s parameters, %.3g GFLOP/step -> %d steps of batch %d (eval every %d)", f, f"{n_params:,}",
                 flops_step / 1e9, steps, cfg.training.batch_size, every)
        t0 = time.perf_counter()
        params = run.task.eval_params(train_to_end(cfg, run_dir).ema_params)  # the final (checkpointed) EMA
        wall = time.perf_counter() - t0
        records = read_metrics(run_dir)
        rates = [r["train/images_per_sec"] for r in records if "train/images_per_sec" in r]
        ae_flops = (ae["train_flops"] + ae["encode_dataset_flops"]) if ae else 0.0
        evals = [{"step": r["step"], "denoiser_tflop": r["step"] * flops_step / 1e12,
                  "total_tflop": (r["step"] * flops_step + ae_flops) / 1e12,
                  "fcd": r["eval/fcd"], "kid": r["eval/kid_classifier"], "accuracy": r.get("eval/class_accuracy")}
                 for r in records if "eval/fcd" in r]
        final = final_scores(cfg, run, params)
        log.info("f=%d final: %s", f, format_scores(final))
        entry = {"f": f, "latent_shape": list(run.image_shape), "denoiser_params": n_params, "final": final,
                 "gflop_per_step": flops_step / 1e9, "steps": steps, "batch_size": cfg.training.batch_size,
                 "train_images_per_sec": float(np.median(rates)) if rates else float("nan"),
                 "train_wall_s": wall, "sample_images_per_sec": sampling_rate(run, params),
                 "autoencoder": ae, "evals": evals}
        if inception_weights:
            entry["fid"] = inception_fid(run, params, inception_weights, p["eval_samples"])
        results.append(entry)
    return {"preset": p, "machine": machine_description(), "results": results}


def machine_description() -> str:
    dev = jax.devices()[0]
    return f"{platform.machine()} {os.cpu_count()} cores, jax {jax.__version__} on {dev.platform} ({dev.device_kind})"


def write_table(study: dict, path: str) -> None:
    p, rows = study["preset"], study["results"]
    lines = [
        "# Pixel vs latent diffusion at equal training compute",
        "",
        f"Machine: {study['machine']}. Data: {p['data']} at {p['image_size']}x{p['image_size']}. Budget: "
        f"{p['budget_tflop']:g} TFLOP of denoiser training per factor (XLA cost analysis of the compiled step), "
        f"batch {p['batch_size']}, U-Net ch {p['ch']}. Sampler: DDIM (eta 0), {p['eval_steps']} steps, no guidance; "
        f"quality from {p['eval_samples']} samples (labels 0..9 in turn), seed fixed, against the training set in the "
        f"feature space of the {p['data']} classifier (FCD: Frechet classifier distance, lower is better; KID x1e3; "
        f"accuracy: the classifier recognises the requested class). Autoencoders: ch {p['ae_ch']}, "
        f"{p['ae_steps']} steps of batch {p['ae_batch_size']}, L1 + 1e-6 KL.",
        "",
        (samples_note(rows[0].get("final")) or NO_INTERVAL_NOTE) + " Along training: no intervals (scored by the "
        "trainer); final: the last evaluation re-sampled identically with intervals.",
        "",
        "| f | model input | denoiser params | GFLOP/step | steps | train img/s | sample img/s | AE params | "
        "AE PSNR (dB) | AE TFLOP (train + encode) | total TFLOP | FCD along training | final FCD | final KID x1e3 | "
        "final accuracy |" + (" FID |" if any("fid" in r for r in rows) else ""),
        "|" + "---|" * (15 + any("fid" in r for r in rows)),
    ]
    for r in rows:
        ae = r["autoencoder"]
        ae_tflop = (ae["train_flops"] + ae["encode_dataset_flops"]) / 1e12 if ae else 0.0
        final = r["evals"][-1]
        along = " / ".join(f"{e['fcd']:.2f}" for e in r["evals"])
        ae_params = f"{ae['params']:,}" if ae else "-"
        ae_psnr = f"{ae['psnr']:.2f}" if ae else "-"
        fin = final_record(r)
        lines.append(
            f"| {r['f']} | {'x'.join(map(str, r['latent_shape']))} | {r['denoiser_params']:,} | "
            f"{r['gflop_per_step']:.2f} | {r['steps']} | {r['train_images_per_sec']:.1f} | "
            f"{r['sample_images_per_sec']:.1f} | {ae_params} | "
            f"{ae_psnr} | {ae_tflop:.3g} | {final['total_tflop']:.3g} | {along} | "
            f"{with_interval(fin, 'fcd', '{:.2f}')} | {with_interval(fin, 'kid_classifier', '{:.2f}', 1e3)} | "
            f"{with_interval(fin, 'class_accuracy')} |"
            + (f" {r['fid']:.2f} |" if "fid" in r else ""))
    lines += ["", "FCD along training: at " + ", ".join(f"{(i + 1)}/{p['num_evals']}" for i in range(p['num_evals']))
              + " of the budget. Image rates are medians over the run on this machine (training) and one timed call "
              "after compilation (sampling, incl. decoding).", ""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def write_plot(study: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in study["results"]:
        x = [e["total_tflop"] for e in r["evals"]]
        line, = ax.plot(x, [e["fcd"] for e in r["evals"]], marker="o", label=f"f = {r['f']}"
                        + (" (pixel)" if r["f"] == 1 else ""))
        if r["autoencoder"]:
            ax.plot([e["denoiser_tflop"] for e in r["evals"]], [e["fcd"] for e in r["evals"]], ls=":",
                    color=line.get_color(), alpha=0.6)
        fin = final_record(r)
        ci = interval(fin, "fcd")
        if ci is not None:  # the final point's bootstrap 95% interval (lower end kept above 0 on the log axis)
            ax.errorbar([x[-1]], [fin["fcd"]], yerr=[[fin["fcd"] - max(ci[0], 1e-3 * fin["fcd"])],
                                                     [ci[1] - fin["fcd"]]], color=line.get_color(), capsize=4)
    ax.set_xlabel("training compute (TFLOP; solid: incl. autoencoder, dotted: denoiser only)")
    ax.set_ylabel("FCD (lower is better)")
    ax.set_yscale("log")
    has_ci = any(interval(final_record(r), "fcd") is not None for r in study["results"])
    ax.set_title(f"Pixel vs latent diffusion, {study['preset']['data']} {study['preset']['image_size']}px"
                 + (f"\nbar: final point's bootstrap 95% interval, {study['preset']['eval_samples']} samples"
                    if has_ci else "\nno intervals (run before intervals)"), fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "pixel_vs_latent"))
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--classifier_workdir", default="",
                        help="a trained classifier workdir for FCD (default: trained into WORKDIR/classifier)")
    parser.add_argument("--inception_weights", default="", help="FID Inception weights (.npz/.pth) to add FID")
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the table and plot from the results JSON of an earlier run (no training)")
    for key, value in PRESETS["cpu"].items():  # every preset value can be overridden
        parser.add_argument(f"--{key}", type=type(value), default=None)
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    p.update({k: getattr(args, k) for k in PRESETS["cpu"] if getattr(args, k) is not None})
    stem = os.path.join(args.results_dir, "pixel_vs_latent" if args.preset != "toy" else "pixel_vs_latent_toy")
    if args.render_only:
        if not os.path.exists(stem + ".json"):
            raise FileNotFoundError(f"--render_only: no results {stem}.json; run the study first")
        study = json.load(open(stem + ".json"))
    else:
        study = run_study(p, args.workdir, args.classifier_workdir, args.inception_weights)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(stem + ".json", "w") as fh:
            json.dump(study, fh, indent=2)
    write_table(study, stem + ".md")
    write_plot(study, stem + ".png")
    log.info("wrote %s.md, %s.png and %s.json", stem, stem, stem)
    return study


if __name__ == "__main__":
    run_cli(main)
