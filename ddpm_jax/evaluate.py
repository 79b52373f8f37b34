"""Evaluation command: feature statistics, FID / KID / IS, and offline classifier-feature metrics.

    # statistics of a dataset split, or of images in a .npz (key "images") or a folder of PNG/JPEG files
    python -m ddpm_jax.evaluate --mode=stats --features=inception --inception_weights=W.npz --data=tfds:cifar10 \
        --data_dir=DIR --split=train --out=cifar10_train.npz
    python -m ddpm_jax.evaluate --mode=stats --features=inception --inception_weights=W.npz --images=samples.npz --out=s.npz
    # distance between two stats files (FID in Inception space; FCD in a classifier's space)
    python -m ddpm_jax.evaluate --mode=distance --stats_a=a.npz --stats_b=b.npz
    # a checkpoint's samples against its dataset: FID/KID/IS with Inception weights, FCD/KID/accuracy with a classifier
    python -m ddpm_jax.evaluate --mode=samples --config=configs/quickstart.py --workdir=runs/quickstart \
        --features=classifier --classifier_workdir=runs/classifier_digits --num_samples=1000

Metrics in a classifier's feature space are labelled fcd / kid_classifier, never fid: they are comparable only
between runs scored with the same classifier.

Multi-process (``jax.distributed``: a TPU pod, or ``DDPM_JAX_COORDINATOR`` / ``DDPM_JAX_NUM_PROCESSES`` /
``DDPM_JAX_PROCESS_ID`` as for training): the same command on every process. Each samples its share of the batches
(batch b from fold_in(key, b), so the samples are those of one process), features are computed in blocks dealt over
the processes and gathered in row order, and process 0 computes the metrics and writes every file: the numbers
equal a single process's on the same seeds.
"""
import json
import logging
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ddpm_jax import storage
from ddpm_jax.cli import check_config_argv
from ddpm_jax.models.inception import weights_sha256

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "samples", ["stats", "distance", "samples"], "What to compute.")
flags.DEFINE_enum("features", None, ["inception", "classifier"], "Feature space (default: inception when "
                  "--inception_weights is given, else classifier).")
flags.DEFINE_string("inception_weights", None, "Converted FID Inception weights (.npz; see convert_inception).")
flags.DEFINE_enum("resize_mode", "pytorch", ["pytorch", "tf1"], "Bilinear resize to 299 for Inception.")
flags.DEFINE_string("classifier_workdir", None, "Workdir of a classifier trained with configs/classifier_*.py.")
flags.DEFINE_string("data", None, "stats mode: dataset name (digits, fashion_mnist, mnist, tfds:NAME).")
flags.DEFINE_string("data_dir", None, "stats mode: dataset folder.")
flags.DEFINE_string("split", "train", "stats mode: dataset split.")
flags.DEFINE_integer("image_size", None, "stats mode: bring dataset images to this size first (as training does).")
flags.DEFINE_string("images", None, "stats mode: a .npz with uint8 'images' [N,H,W,C], or a folder of images.")
flags.DEFINE_string("out", None, "stats mode: output stats .npz.")
flags.DEFINE_bool("save_features", False, "stats mode (and samples mode with --save_stats): also save the raw "
                  "features (OUT_features.npy) so that distance mode can compute KID.")
flags.DEFINE_string("stats_a", None, "distance mode: first stats file.")
flags.DEFINE_string("stats_b", None, "distance mode: second stats file.")
config_flags.DEFINE_config_file("config", None, "samples mode: the model's config (optional: default the workdir's "
                                "recorded config; it may differ from it only in sampling settings).",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "samples mode: the model's workdir (latest checkpoint, EMA weights).")
flags.DEFINE_integer("num_samples", 1000, "samples mode: number of generated images.")
flags.DEFINE_integer("seed", 0, "samples mode: sampling seed.")
flags.DEFINE_integer("num_reference", 0, "samples mode: use only the first N reference images (0: all).")
flags.DEFINE_integer("batch_size", 200, "Feature-extraction batch size.")
flags.DEFINE_bool("save_stats", False, "samples mode: also write the samples' feature statistics (mu, sigma; "
                  "with --save_features also the features) to WORKDIR/eval_SPACE_N_stats.npz, for distance mode.")
flags.DEFINE_string("baseline_split", "test", "samples mode: also score this held-out real split against the "
                    "reference (the floor a perfect model would reach at that sample count); '' to skip.")

log = logging.getLogger("ddpm_jax")


def load_images(path: str) -> np.ndarray:
    """uint8 [N, H, W, C] from a .npz ('images' or its only array) or a folder of image files."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    if path.endswith(".npz"):
        data = storage.load_npz(path)
        images = data["images"] if "images" in data else next(iter(data.values()))  # the first array
    else:
        import io

        from PIL import Image

        files = [storage.join(path, f) for f in storage.listdir(path) if f.lower().endswith((".png", ".jpg", ".jpeg"))]
        if not files:
            raise FileNotFoundError(f"no .png/.jpg images in {path}")
        images = np.stack([np.asarray(Image.open(io.BytesIO(storage.read_bytes(f)))) for f in files])
    if images.ndim == 3:
        images = images[..., None]
    return images


def feature_space() -> str:
    """--features, or the space its weights flag implies; weights of the other space are an error, not ignored."""
    space = FLAGS.features or ("inception" if FLAGS.inception_weights else "classifier")
    if space == "classifier" and FLAGS.inception_weights:
        raise app.UsageError("--features=classifier was given with --inception_weights: drop one (Inception weights "
                             "imply --features=inception)")
    if space == "inception" and FLAGS.classifier_workdir:
        raise app.UsageError("--features=inception was given with --classifier_workdir: drop one")
    return space


def make_extractor():
    """(callable images -> (features, logits), manifest dict) for the chosen feature space."""
    if feature_space() == "classifier":
        from ddpm_jax.evaluation.quality import classifier_features_from_workdir

        if not FLAGS.classifier_workdir:
            raise app.UsageError("--features=classifier needs --classifier_workdir (train configs/classifier_*.py)")
        extractor = classifier_features_from_workdir(FLAGS.classifier_workdir, FLAGS.batch_size)
        return extractor, {"feature_space": extractor.name, "weights_sha256": extractor.weights_sha256,
                           "weights": storage.resolve(FLAGS.classifier_workdir)}
    from ddpm_jax.evaluation.features import InceptionFeatures
    from ddpm_jax.models.inception import load_inception_params

    if not FLAGS.inception_weights:
        raise app.UsageError("--features=inception needs --inception_weights=PATH (see README: FID)")
    extractor = InceptionFeatures(load_inception_params(FLAGS.inception_weights), FLAGS.resize_mode, FLAGS.batch_size)
    digest = weights_sha256(FLAGS.inception_weights)
    return extractor, {"feature_space": "inception_pool3", "weights_sha256": digest, "resize_mode": FLAGS.resize_mode}


def unbiased_logits(extractor, logits: np.ndarray) -> np.ndarray:
    """pool3 @ W without the fc bias: the logits the original Inception Score code (and torch-fidelity) use."""
    return logits - np.asarray(extractor.params["params"]["fc"]["bias"], np.float64)


def extract(extractor, images: np.ndarray):
    """(features, logits) in float64; Inception logits without the fc bias (see unbiased_logits). Several processes
    share the work in blocks of the extractor's batch size (the batches one process would run) and all get every
    row, in order."""
    from ddpm_jax.evaluation.fid import check_sample_count
    from ddpm_jax.evaluation.multiprocess import shared_features

    t = time.perf_counter()
    inception = feature_space() == "inception"
    run = (lambda x: extractor(x, progress=True)) if inception else extractor
    feats, logits = shared_features(run, images, extractor.batch_size)
    log.info("features of %d images in %.1f s", len(images), time.perf_counter() - t)
    check_sample_count(len(feats), feats.shape[1])
    logits = np.asarray(logits, np.float64)
    if feature_space() == "inception":
        logits = unbiased_logits(extractor, logits)  # what the Inception Score uses
    return np.asarray(feats, np.float64), logits


def metrics_for(feats, logits, ref_feats, ref_stats, space: str, labels=None):
    from ddpm_jax.evaluation.fid import frechet_distance
    from ddpm_jax.evaluation.inception_score import inception_score
    from ddpm_jax.evaluation.kid import kernel_inception_distance
    from ddpm_jax.evaluation.statistics import feature_statistics

    mu, sigma = feature_statistics(feats)
    fd = frechet_distance(mu, sigma, *ref_stats)
    kid_mean, kid_std = kernel_inception_distance(feats, ref_feats, subset_size=min(1000, len(feats), len(ref_feats)))
    if space == "inception_pool3":
        # logits are pool3 @ W (no fc bias) from extract; 10 splits as in the original code
        is_mean, is_std = inception_score(logits, splits=min(10, len(logits)))
        return {"fid": fd, "kid": kid_mean, "kid_std": kid_std, "inception_score": is_mean, "inception_score_std": is_std}
    out = {"fcd": fd, "kid_classifier": kid_mean, "kid_classifier_std": kid_std}
    if labels is not None:
        from ddpm_jax.evaluation.classifier_features import class_accuracy

        out["class_accuracy"] = class_accuracy(logits, labels)
    return out


def mode_stats():
    from ddpm_jax.data import load_source, resize_nearest
    from ddpm_jax.evaluation.statistics import feature_statistics
    from ddpm_jax.evaluation.stats_file import save_stats

    if not FLAGS.out:
        raise app.UsageError("--mode=stats needs --out=FILE.npz")
    extractor, manifest = make_extractor()
    if FLAGS.images:
        images, what = load_images(FLAGS.images), {"images": storage.resolve(FLAGS.images)}
    elif FLAGS.data:
        source = load_source(FLAGS.data, FLAGS.split, FLAGS.data_dir)
        images = source.images if not FLAGS.image_size else resize_nearest(source.images, FLAGS.image_size)
        what = {"dataset": FLAGS.data, "split": FLAGS.split}
    else:
        raise app.UsageError("--mode=stats needs --images or --data")
    feats, logits = extract(extractor, images)
    if not is_main_process():  # the features were a shared job; process 0 writes
        return
    mu, sigma = feature_statistics(feats)
    save_stats(FLAGS.out, mu, sigma, image_count=len(images), **what, **manifest)
    report = {"stats": FLAGS.out, "count": len(images), **manifest}
    if FLAGS.save_features:
        storage.save_npy(features_path(FLAGS.out), feats.astype(np.float32))
        report["features"] = features_path(FLAGS.out)
    if feature_space() == "inception":
        from ddpm_jax.evaluation.inception_score import inception_score

        report["inception_score"], report["inception_score_std"] = inception_score(logits, min(10, len(feats)))
    print(json.dumps(report))


def features_path(stats_path: str) -> str:
    """Where --save_features puts the raw features of a stats file (KID needs them; mu/sigma are not enough)."""
    return stats_path[:-len(".npz")] + "_features.npy" if stats_path.endswith(".npz") else stats_path + "_features.npy"


def mode_distance():
    from ddpm_jax.evaluation.fid import frechet_distance
    from ddpm_jax.evaluation.stats_file import check_compatible, load_stats

    if not is_main_process():  # nothing to share: process 0 answers
        return

    mu1, s1, m1 = load_stats(FLAGS.stats_a)
    mu2, s2, m2 = load_stats(FLAGS.stats_b)
    check_compatible(m1, m2)
    space = m1.get("feature_space", m2.get("feature_space", "inception_pool3"))
    name = "fid" if space == "inception_pool3" else "fcd"
    report = {name: frechet_distance(mu1, s1, mu2, s2), "feature_space": space}
    fa, fb = features_path(FLAGS.stats_a), features_path(FLAGS.stats_b)
    if storage.exists(fa) and storage.exists(fb):
        from ddpm_jax.evaluation.kid import kernel_inception_distance

        f1, f2 = storage.load_npy(fa).astype(np.float64), storage.load_npy(fb).astype(np.float64)
        kid_name = "kid" if space == "inception_pool3" else "kid_classifier"
        report[kid_name], report[kid_name + "_std"] = kernel_inception_distance(
            f1, f2, subset_size=min(1000, len(f1), len(f2)))
    print(json.dumps(report))


def mode_samples():
    from ddpm_jax.data import load_source, resize_nearest
    from ddpm_jax.evaluation.statistics import feature_statistics
    from ddpm_jax.pipelines.workdir import check_num, sample_workdir
    from ddpm_jax.tasks import load_trained

    if not FLAGS.workdir:
        raise app.UsageError("--mode=samples needs --workdir (and optionally --config with sampling overrides)")
    check_num(FLAGS.num_samples)
    trained = load_trained(FLAGS.workdir, FLAGS.config)  # read-only: the recorded config (+ safe overrides)
    config = trained.config
    extractor, manifest = make_extractor()
    source = load_source(config.data.name, config.data.split, config.data.data_dir or None)
    ref = resize_nearest(source.images[:FLAGS.num_reference or None], config.data.image_size)
    # every process samples its share and gets all samples (process 0 writes them); features are shared likewise
    out = sample_workdir(FLAGS.workdir, FLAGS.num_samples, config, out_name=f"eval_{FLAGS.num_samples}",
                         seed=FLAGS.seed, trained=trained)
    images, labels = out["images"], out["labels"]
    feats, logits = extract(extractor, images)
    ref_feats, _ = extract(extractor, ref)
    if FLAGS.baseline_split:
        held_out = load_source(config.data.name, FLAGS.baseline_split, config.data.data_dir or None)
        real = resize_nearest(held_out.images[:FLAGS.num_samples], config.data.image_size)
        real_feats, real_logits = extract(extractor, real)
    if not is_main_process():  # the collective part is done; process 0 scores and writes
        return
    ref_stats = feature_statistics(ref_feats)
    conditional = bool(config.model.class_conditional) or trained.run.text is not None  # one class prompt per label
    result = metrics_for(feats, logits, ref_feats, ref_stats, manifest["feature_space"],
                         labels if conditional else None)
    if FLAGS.save_stats:
        from ddpm_jax.evaluation.stats_file import save_stats

        stats_path = storage.join(FLAGS.workdir, f"eval_{feature_space()}_{FLAGS.num_samples}_stats.npz")
        save_stats(stats_path, *feature_statistics(feats), image_count=len(images), workdir=storage.resolve(
            FLAGS.workdir), checkpoint_step=out["step"], seed=FLAGS.seed, **manifest)
        if FLAGS.save_features:
            storage.save_npy(features_path(stats_path), feats.astype(np.float32))
        result["stats"] = stats_path
    if FLAGS.baseline_split:
        # The floor a perfect model reaches: held-out real images scored like the samples. Fréchet distance and KID
        # are biased by the sample count, so when the split has fewer images than there are samples, the samples are
        # also scored on the same count (samples_at_N_*): compare those two, not counts that differ.
        floor = metrics_for(real_feats, real_logits, ref_feats, ref_stats, manifest["feature_space"],
                            held_out.labels[:FLAGS.num_samples] if conditional else None)
        result.update({f"real_{FLAGS.baseline_split}_{k}": v for k, v in floor.items()})
        result[f"real_{FLAGS.baseline_split}_count"] = len(real)
        if len(real) < len(images):
            n = len(real)
            log.info("the %s split has %d images, fewer than the %d samples: also scoring the first %d samples "
                     "(samples_at_%d_*) to compare at equal counts", FLAGS.baseline_split, n, len(images), n, n)
            same = metrics_for(feats[:n], logits[:n], ref_feats, ref_stats, manifest["feature_space"],
                               labels[:n] if conditional else None)
            result.update({f"samples_at_{n}_{k}": v for k, v in same.items()})
    result.update({"num_samples": len(images), "reference": f"{config.data.name}/{config.data.split} "
                   f"({len(ref)} images)", "sampler": config.sampling.sampler,
                   "num_steps": config.sampling.get("num_steps"), "guidance_scale": config.sampling.get("guidance_scale"),
                   **out["extra"], **manifest})  # extra: what the task adds (a distilled student's own step count)
    path = storage.join(FLAGS.workdir, f"eval_{feature_space()}_{FLAGS.num_samples}.json")
    storage.write_json(path, result)
    print(json.dumps(result))
    log.info("wrote %s", path)


def is_main_process() -> bool:
    from ddpm_jax.evaluation.multiprocess import is_main_process as main

    return main()


def main(argv):
    del argv
    from ddpm_jax.training import distributed
    from ddpm_jax.training.logging import run_cli, setup_logging

    setup_logging()
    mode = {"stats": mode_stats, "distance": mode_distance, "samples": mode_samples}[FLAGS.mode]

    def body():
        distributed.initialize_from_env(FLAGS.config)  # join a multi-process job (if any) before any JAX computation
        distributed.log_from_process_0_only()
        mode()

    run_cli(body)


if __name__ == "__main__":
    check_config_argv()
    app.run(main)
