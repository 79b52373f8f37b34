"""Text-encoder size vs U-Net size: Imagen's Fig. 4 study (Saharia et al. 2022, sec. 4.4) in miniature.

Two families of text-to-image models trained for the same number of steps on captioned Fashion-MNIST:

- *encoders* at a fixed U-Net: the frozen all-MiniLM-L6-v2 with all 6 layers, its first 2 and first 1 layers, and a
  randomly initialised encoder of the 6-layer shape (plus ``--extra_encoder=PATH`` for any other local HF encoder);
- *U-Nets* at the fixed 6-layer encoder: U-Net widths ``ch`` x 0.5, 1, 2.

Each model is sampled with classifier-free guidance over a sweep of weights w (one class prompt per grid column, e.g.
"a photo of a sneaker"), and every (model, w) is scored for quality (Frechet classifier distance in a classifier
trained on the same data; FID too with ``--inception_weights``) and alignment (CLIP score with a domain CLIP trained
on the captions, and the accuracy with which the classifier recognises the requested class). The table and the
Pareto curves (quality vs alignment, one curve per model over w) show which axis of scale buys more.

    # CPU-sized (PRESETS["cpu"]): in the 8x8x4 latent space of the f = 4 autoencoder, 3,000 steps per model;
    # 64 min on 2 cores shared with another job (CLIP 11 min, ~6 min per ch-32 denoiser with its sweep)
    python experiments/text_encoder_vs_unet.py --classifier_workdir=runs/classifier_fashion_mnist \
        --autoencoder_workdir=runs/autoencoder_fashion_mnist_f4   # else both are trained first
    python experiments/text_encoder_vs_unet.py --preset=cpu_pixel   # the same in pixel space (3-4 h on 2 cores)
    python experiments/text_encoder_vs_unet.py --preset=toy         # seconds-sized, for the tests
    python experiments/text_encoder_vs_unet.py --render_only        # redraw table + plot from the results JSON

FCD, KID and class accuracy carry bootstrap 95% intervals over the samples of each (model, w)
(experiments/scoring.py: ``score_with_intervals``); results written before intervals render with ``[n/a]``.

Writes experiments/results/text_encoder_vs_unet{,_toy}.{md,png,json}; runs (classifier, CLIP, denoisers) go to
--workdir and are resumed, not redone, when the command is repeated.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

import jax
import matplotlib
import ml_collections
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ddpm_jax.data import load_source, resize_nearest, to_model_range, to_uint8  # noqa: E402
from ddpm_jax.evaluation.features import InceptionFeatures  # noqa: E402
from ddpm_jax.evaluation.fid import frechet_distance  # noqa: E402
from ddpm_jax.evaluation.quality import (classifier_features_from_workdir, clip_score_of,  # noqa: E402
                                         load_domain_clip)
from ddpm_jax.evaluation.statistics import feature_statistics  # noqa: E402
from ddpm_jax.models.inception import load_inception_params  # noqa: E402
from ddpm_jax.tasks import load_trained  # noqa: E402
from ddpm_jax.tasks.text import prompts_for_grid  # noqa: E402
from ddpm_jax.training import loop  # noqa: E402
from ddpm_jax.training.logging import setup_logging  # noqa: E402
from experiments.scoring import (NO_INTERVAL_NOTE, format_scores, machine_description, samples_note,  # noqa: E402
                                 score_with_intervals, with_interval, yerr)

log = logging.getLogger("ddpm_jax")

PRESETS = {
    # Fashion-MNIST 32x32 in the 8x8x4 latent space of the f = 4 KL autoencoder (configs/autoencoder_fashion_mnist_f4.py;
    # pixel_vs_latent.py found f = 4 the best use of a fixed training budget), U-Net ch 32 (x0.5, x1, x2), 3,000 steps
    # of batch 32 per model, 500 samples per guidance weight (w = 0 is the unconditional model: chance accuracy)
    "cpu": dict(space="latent", data="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist", image_size=32,
                ch=32, unet_scales="0.5,1,2", encoders="minilm6,minilm2,minilm1,random6", steps=3000, batch_size=32,
                lr=1e-3, guidance="0,1,2,4", eval_samples=500, eval_steps=20, clip_steps=800,
                classifier_config="configs/classifier_fashion_mnist.py", classifier_steps=0,
                clip_config="configs/clip_fashion_mnist.py", ae_config="configs/autoencoder_fashion_mnist_f4.py",
                ae_steps=1500),
    # the same study in pixel space (32x32, ch 16, 1.5k steps of batch 32): about 3-4 h on 2 cores
    "cpu_pixel": dict(space="pixel", data="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist",
                      image_size=32, ch=16, unet_scales="0.5,1,2", encoders="minilm6,minilm2,minilm1,random6",
                      steps=1500, batch_size=32, lr=5e-4, guidance="0,1,2,4", eval_samples=300, eval_steps=20,
                      clip_steps=800, classifier_config="configs/classifier_fashion_mnist.py", classifier_steps=0,
                      clip_config="configs/clip_fashion_mnist.py", ae_config="", ae_steps=0),
    "accelerator": dict(space="latent", data="fashion_mnist", data_dir="/usr/share/datasets/fashion-mnist",
                        image_size=32, ch=64, unet_scales="0.5,1,2", encoders="minilm6,minilm3,minilm2,minilm1,random6",
                        steps=40000, batch_size=128, lr=2e-4, guidance="0,1,1.5,2,3,4,6,8", eval_samples=5000,
                        eval_steps=50, clip_steps=5000, classifier_config="configs/classifier_fashion_mnist.py",
                        classifier_steps=0, clip_config="configs/clip_fashion_mnist.py",
                        ae_config="configs/autoencoder_fashion_mnist_f4.py", ae_steps=20000),
    # seconds-sized, for the test suite: 8x8 digits, 1-layer vs random encoder, two U-Net widths, 2 weights
    "toy": dict(space="pixel", data="digits", data_dir="", image_size=8, ch=8, unet_scales="1,2",
                encoders="minilm1,random1", steps=3, batch_size=16, lr=2e-3, guidance="1,3", eval_samples=20,
                eval_steps=3, clip_steps=4, classifier_config="configs/classifier_digits.py", classifier_steps=20,
                clip_config="configs/clip_fashion_mnist.py", ae_config="", ae_steps=0),
}


SAMPLE_SEED_OFFSET = 2  # samples of every (model, w) come from jax.random.key(config.seed + 2): the same noises


def encoder_settings(name: str) -> dict:
    """minilmK: MiniLM's first K layers (pretrained); randomK: K layers of MiniLM's shape, random weights; a path:
    that Hugging Face folder, all layers."""
    if name.startswith("minilm"):
        return {"encoder_path": "", "num_layers": int(name[6:]), "random_init": False}
    if name.startswith("random"):
        return {"encoder_path": "", "num_layers": int(name[6:]), "random_init": True}
    return {"encoder_path": name, "num_layers": 0, "random_init": False}


def load_config_file(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def data_settings(c, p: dict) -> None:
    c.data.name, c.data.data_dir, c.data.image_size = p["data"], p["data_dir"], p["image_size"]


def autoencoder_factor(c) -> int:
    """Downsampling factor of an autoencoder config: one halving per level after the first."""
    return 2 ** (len(c.model.ch_mult) - 1)


def denoiser_config(p: dict, encoder: str, ch: int, autoencoder_workdir: str = "") -> ml_collections.ConfigDict:
    """configs/t2i_fashion_mnist.py with the preset's data, encoder, width and schedule; in latent space
    (``autoencoder_workdir``) the latent_text_diffusion task on that frozen autoencoder's latents."""
    c = load_config_file("configs/t2i_fashion_mnist.py")
    data_settings(c, p)
    for k, v in encoder_settings(encoder).items():
        c.text[k] = v
    size = p["image_size"]
    if autoencoder_workdir:
        ae = ml_collections.ConfigDict(json.load(open(os.path.join(autoencoder_workdir, "config.json"))))
        c.task, c.latent.autoencoder_workdir = "latent_text_diffusion", autoencoder_workdir
        size //= autoencoder_factor(ae)
        c.sampling.clip_x0 = None  # latents are not bounded to [-1, 1]
    levels = (1, 2, 2) if size >= 32 else (1, 2)
    res = size // 2 ** (len(levels) - 1)
    c.model.ch, c.model.ch_mult, c.model.num_groups = ch, levels, min(8, ch)
    c.model.attn_resolutions, c.model.cross_attn_resolutions = (res,), (2 * res, res)
    c.model.num_heads = 4 if ch >= 32 else 1
    c.training.batch_size, c.training.num_steps = p["batch_size"], p["steps"]
    c.training.log_every = max(1, p["steps"] // 20)
    c.training.checkpoint_every = max(1, p["steps"] // 3)
    c.training.sample_every = 0
    c.optim.lr, c.optim.warmup_steps = p["lr"], min(200, max(1, p["steps"] // 10))
    # EMA horizon ~1/20 of the run (the config's 0.999 would keep much of the initial weights in a short run)
    c.optim.ema_decay = min(0.999, max(0.99, 1.0 - 20.0 / p["steps"]))
    c.sampling.sampler, c.sampling.num_steps = "ddim", p["eval_steps"]
    c.sampling.batch_size = min(250, p["eval_samples"])
    c.sampling.num_grid = 20
    return c


def train_auxiliary(p: dict, config_file: str, path: str, steps=None, log_every=None, adjust=None) -> str:
    """Train (or resume) the run of ``config_file`` on the preset's data in ``path``; ``steps`` (with checkpoints at
    the end and logs every ``log_every``, default steps // 10) overrides the config's length."""
    c = load_config_file(config_file)
    data_settings(c, p)
    if steps is not None:
        c.training.num_steps = steps
        c.training.log_every = log_every or max(1, steps // 10)
        c.training.checkpoint_every = steps
    if adjust is not None:
        adjust(c)
    loop.train(c, path)
    return path


def ensure_autoencoder(p: dict, workdir: str, given: str) -> str:
    """The frozen autoencoder of a latent-space study: ``given``, or ``p['ae_config']`` trained for ``ae_steps``."""
    if p["space"] != "latent":
        if given:
            raise ValueError(f"--autoencoder_workdir is for latent presets; this preset works in {p['space']} space")
        return ""
    if given:
        if not os.path.exists(os.path.join(given, "config.json")):
            raise FileNotFoundError(f"--autoencoder_workdir {given} has no config.json: train one with "
                                    f"python -m ddpm_jax.main --config={p['ae_config']} --workdir={given}")
        return given
    return train_auxiliary(p, p["ae_config"], os.path.join(workdir, "autoencoder"), p["ae_steps"])


def ensure_classifier(p: dict, workdir: str, given: str) -> str:
    if given:
        return given
    steps = p["classifier_steps"] or None
    return train_auxiliary(p, p["classifier_config"], os.path.join(workdir, "classifier"), steps, log_every=steps)


def ensure_clip(p: dict, workdir: str, given: str) -> str:
    if given:
        return given

    def adjust(c):
        c.training.batch_size = min(c.training.batch_size, 4 * p["batch_size"])
        if p["image_size"] < 16:  # two stride-2 stages at most for 8x8 images
            c.clip.image_channels, c.clip.embed_dim, c.clip.text_hidden = (16, 32), 32, 64

    return train_auxiliary(p, p["clip_config"], os.path.join(workdir, "clip"), p["clip_steps"], adjust=adjust)


def model_list(p: dict, extra_encoder: str = "") -> list:
    """(name, group, encoder, ch): the encoder family at the base width, the width family at the first encoder."""
    encoders = p["encoders"].split(",") + ([extra_encoder] if extra_encoder else [])
    scales = [float(s) for s in str(p["unet_scales"]).split(",")]
    models = [(f"{e}-ch{p['ch']}", "encoder", e, p["ch"]) for e in encoders]
    for s in scales:
        ch = int(round(p["ch"] * s))
        models.append((f"{encoders[0]}-ch{ch}", "unet", encoders[0], ch))
    return models


def inception_fid_of(images: np.ndarray, real: np.ndarray, weights: str) -> float:
    extractor = InceptionFeatures(load_inception_params(weights))
    rgb = lambda im: np.repeat(im, 3, axis=-1) if im.shape[-1] == 1 else im
    return float(frechet_distance(*feature_statistics(extractor(rgb(images))[0]),
                                  *feature_statistics(extractor(rgb(real))[0])))


def evaluate_model(config, workdir: str, guidance: list, num: int, features, ref_stats, ref_features, clip,
                   inception_weights: str = "", real: np.ndarray = None) -> list:
    """Scores of ``num`` EMA samples per guidance weight: FCD, KID, class accuracy, CLIP score (+ FID)."""
    trained = load_trained(workdir, config)  # (a latent run encodes the dataset here: built once per model)
    run, params = trained.run, trained.params
    prompts = prompts_for_grid(run.text.prompts, num)  # one class prompt per grid column
    rows = []
    for w in guidance:
        t0 = time.perf_counter()
        x, labels, _ = run.task.generate(run, params, jax.random.key(config.seed + SAMPLE_SEED_OFFSET), num,
                                         guidance_scale=w)
        images = to_uint8(run.to_pixels(x))
        scores = score_with_intervals(features, images, ref_stats, ref_features, labels)
        scores.update(clip_score_of(clip, images, prompts))
        if inception_weights:
            scores["fid"] = inception_fid_of(images, real, inception_weights)
        scores.update(guidance=w, sample_seconds=time.perf_counter() - t0)
        rows.append(scores)
        log.info("%s w=%g: %s", os.path.basename(workdir), w, format_scores(scores))
    return rows


def run_study(p: dict, workdir: str, classifier_workdir: str = "", clip_workdir: str = "",
              inception_weights: str = "", extra_encoder: str = "", autoencoder_workdir: str = "") -> dict:
    guidance = [float(w) for w in str(p["guidance"]).split(",")]
    classifier_workdir = ensure_classifier(p, workdir, classifier_workdir)
    clip_workdir = ensure_clip(p, workdir, clip_workdir)
    autoencoder_workdir = ensure_autoencoder(p, workdir, autoencoder_workdir)
    features = classifier_features_from_workdir(classifier_workdir)
    train = load_source(p["data"], "train", p["data_dir"] or None)
    ref_features, _ = features(to_uint8(to_model_range(resize_nearest(train.images, p["image_size"]))))
    ref_stats = feature_statistics(ref_features)
    clip = load_domain_clip(clip_workdir)
    real = None
    if inception_weights:
        test = load_source(p["data"], "test", p["data_dir"] or None)
        real = to_uint8(to_model_range(resize_nearest(test.images[:p["eval_samples"]], p["image_size"])))
    results, done = [], {}
    for name, group, encoder, ch in model_list(p, extra_encoder):
        if name not in done:
            config = denoiser_config(p, encoder, ch, autoencoder_workdir)
            run_dir = os.path.join(workdir, name)
            t0 = time.perf_counter()
            state = loop.train(config, run_dir)
            train_seconds = time.perf_counter() - t0
            n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
            record = json.load(open(os.path.join(run_dir, "text_encoder.json")))
            done[name] = {"name": name, "encoder": encoder, "encoder_layers": record["num_layers"],
                          "encoder_random": record["random_init"], "ch": ch, "unet_params": n_params,
                          "train_seconds": train_seconds,
                          "evals": evaluate_model(config, run_dir, guidance, p["eval_samples"], features, ref_stats,
                                                  ref_features, clip, inception_weights, real)}
        results.append(dict(done[name], group=group))
    return {"preset": p, "guidance": guidance, "results": results, "classifier_workdir": classifier_workdir,
            "machine": machine_description(), "sample_seed": SAMPLE_SEED_OFFSET,
            "clip_workdir": clip_workdir, "autoencoder_workdir": autoencoder_workdir, "chance_accuracy": 1.0 / train.num_classes}


def write_table(study: dict, path: str) -> None:
    p = study["preset"]
    fid = any("fid" in e for r in study["results"] for e in r["evals"])
    space = "pixel space" if p.get("space", "pixel") == "pixel" else \
        f"latent space of `{os.path.basename(study.get('autoencoder_workdir') or '')}`"
    lines = [f"# Text encoder vs U-Net size ({p['data']} {p['image_size']}x{p['image_size']}, {space}, {p['steps']} "
             f"steps of batch {p['batch_size']}, {p['eval_samples']} samples per weight, DDIM {p['eval_steps']} "
             "steps)", "",
             (samples_note(study["results"][0]["evals"][0]) or NO_INTERVAL_NOTE) + " CLIP score and FID: no "
             "interval.", "",
             "Quality: FCD (Frechet distance in the features of the classifier of "
             f"`{os.path.basename(study['classifier_workdir'])}`, lower is better)" + (", FID" if fid else "") +
             f". Alignment: class accuracy of the requested class (chance {study['chance_accuracy']:.2f}) and CLIP score (domain CLIP, "
             "100 max(cos, 0)). One class prompt per sample, e.g. \"a photo of a sneaker\".", "",
             "| family | model | encoder | layers | random | U-Net ch | U-Net params | train s | w | FCD |" +
             (" FID |" if fid else "") + " class acc. | CLIP score |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if fid else "") +
             " ---: | ---: |"]
    for r in study["results"]:
        for e in r["evals"]:
            lines.append(f"| {r['group']} | {r['name']} | {r['encoder']} | {r['encoder_layers']} | "
                         f"{'yes' if r['encoder_random'] else 'no'} | {r['ch']} | {r['unet_params']:,} | "
                         f"{r['train_seconds']:.0f} | {e['guidance']:g} | {with_interval(e, 'fcd')} |"
                         + (f" {e['fid']:.2f} |" if fid else "")
                         + f" {with_interval(e, 'class_accuracy')} | {e['clip_score']:.2f} |")
    lines += ["", f"Every (model, w) samples the same {p['eval_samples']} initial noises (jax.random.key(config.seed + "
              f"{study.get('sample_seed', SAMPLE_SEED_OFFSET)}), prompts cycling over the classes); models trained "
              "from seed 0. w = 0 is the unconditional model, w = 1 the conditional one. `train s` is wall-clock "
              "training time of a run that shared the machine with other jobs. Machine: "
              f"{study.get('machine', 'not recorded')}."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plot(study: dict, path: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for ax, group, title in zip(axes, ("encoder", "unet"), ("text encoders (fixed U-Net)", "U-Net sizes (fixed encoder)")):
        for r in (r for r in study["results"] if r["group"] == group):
            x = [e["clip_score"] for e in r["evals"]]
            y = [e["fcd"] for e in r["evals"]]
            ax.errorbar(x, y, yerr=yerr(r["evals"], "fcd"), fmt="o-", capsize=3, label=r["name"])
            for e, xi, yi in zip(r["evals"], x, y):
                ax.annotate(f"{e['guidance']:g}", (xi, yi), fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("CLIP score (domain CLIP)")
        ax.set_ylabel("FCD (lower is better, log scale)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_title(title)
        ax.legend(fontsize=8)
    seen = set()
    for r in study["results"]:
        if r["name"] in seen:
            continue
        seen.add(r["name"])
        axes[2].errorbar([e["guidance"] for e in r["evals"]], [e["class_accuracy"] for e in r["evals"]],
                         yerr=yerr(r["evals"], "class_accuracy"), fmt="o-", capsize=3, label=r["name"])
    axes[2].axhline(study["chance_accuracy"], color="gray", ls="--", lw=1, label="chance")
    axes[2].set_xlabel("guidance weight w")
    axes[2].set_ylabel("class accuracy of the requested class")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("prompt alignment vs guidance")
    axes[2].legend(fontsize=8)
    has_ci = yerr(study["results"][0]["evals"], "fcd") is not None
    fig.suptitle("Quality vs alignment over guidance weights w (point labels); "
                 + (f"bars: bootstrap 95% intervals over {study['preset']['eval_samples']} samples" if has_ci
                    else "no intervals (run before intervals)"))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    parser.add_argument("--workdir", default=None, help="runs go here (default runs/text_encoder_vs_unet[_PRESET])")
    parser.add_argument("--results_dir", default=os.path.join(ROOT, "experiments", "results"))
    parser.add_argument("--classifier_workdir", default="", help="a trained classifier (else one is trained)")
    parser.add_argument("--clip_workdir", default="", help="a trained domain CLIP (else one is trained)")
    parser.add_argument("--inception_weights", default="", help="converted FID Inception weights: also report FID")
    parser.add_argument("--extra_encoder", default="", help="another local HF text encoder folder to compare")
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the table and plot from the results JSON of an earlier run (no training)")
    parser.add_argument("--autoencoder_workdir", default="",
                        help="latent presets: a trained autoencoder (else ae_config is trained for ae_steps)")
    for key in PRESETS["cpu"]:
        parser.add_argument(f"--{key}", default=None, help=f"override the preset's {key}")
    args = parser.parse_args(argv)
    setup_logging()
    p = dict(PRESETS[args.preset])
    for key, value in p.items():
        given = getattr(args, key)
        if given is not None:
            p[key] = type(value)(given) if not isinstance(value, str) else given
    suffix = "" if args.preset == "cpu" else f"_{args.preset}"
    workdir = args.workdir or os.path.join(ROOT, "runs", f"text_encoder_vs_unet{suffix}")
    base = os.path.join(args.results_dir, f"text_encoder_vs_unet{suffix}")
    if args.render_only:
        if not os.path.exists(base + ".json"):
            raise FileNotFoundError(f"--render_only: no results {base}.json; run the study first")
        study = json.load(open(base + ".json"))
    else:
        study = run_study(p, workdir, args.classifier_workdir, args.clip_workdir, args.inception_weights,
                          args.extra_encoder, args.autoencoder_workdir)
        os.makedirs(args.results_dir, exist_ok=True)
        with open(base + ".json", "w") as f:
            json.dump(study, f, indent=2)
    write_table(study, base + ".md")
    write_plot(study, base + ".png")
    log.info("wrote %s.md, %s.png and %s.json", base, base, base)
    return study


if __name__ == "__main__":
    main()
