"""The training loop with periodic actions (progress, metrics, sample grids, checkpoints) and exact resume."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Dict, List, Optional

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import scipy.special
from clu import parameter_overview

from ddpm_jax import diffusion
from ddpm_jax.data import ArrayPipeline, load_source, make_pipeline, resize_nearest, to_model_range, to_uint8
from ddpm_jax.models.build import (autoencoder_from_config, classifier_from_config, discriminator_from_config,
                                   unet_from_config)
from ddpm_jax.pipelines import images as image_io
from ddpm_jax.pipelines.pixel import default_labels, generate, make_sample_fn
from ddpm_jax.training import sharding
from ddpm_jax.training.checkpoint import Checkpointer
from ddpm_jax.training.distributed import PreemptionWatch
from ddpm_jax.training.logging import MetricWriter, Progress
from ddpm_jax.training.optim import make_optimizer
from ddpm_jax.training.state import TrainState, create_train_state
from ddpm_jax.training.steps import (autoencoder_params, make_autoencoder_loss, make_classifier_loss, make_diffusion_loss,
                                     make_train_step, psnr)

log = logging.getLogger("ddpm_jax")
TASKS = ("diffusion", "classifier", "autoencoder", "latent_diffusion", "text_diffusion", "latent_text_diffusion", "clip",
         "super_resolution")
DIFFUSION_TASKS = ("diffusion", "latent_diffusion", "text_diffusion", "latent_text_diffusion")
LATENT_TASKS = ("latent_diffusion", "latent_text_diffusion")
TEXT_TASKS = ("text_diffusion", "latent_text_diffusion", "clip")  # captioned data through a frozen text encoder


@dataclasses.dataclass
class Run:
    """Everything built from a config that a train or sample run needs."""

    config: Any
    source: Any
    model: Any
    schedule: diffusion.Schedule
    tx: Any
    lr_schedule: Any
    mesh: Any
    image_shape: tuple  # what the model sees: pixels, or latents for latent diffusion
    init_fn: Callable[[jax.Array], TrainState]
    latent: Optional[Any] = None  # LatentSpace of the frozen autoencoder (latent diffusion)
    discriminator: Optional[Any] = None  # the autoencoder's patch discriminator (autoencoder.disc_weight > 0)
    text: Optional[Any] = None  # TextConditioning (text tasks): frozen encoder, captions, null condition, prompts

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Model outputs as images in [-1, 1]: decoded through the autoencoder for latent diffusion."""
        return np.asarray(x) if self.latent is None else self.latent.decode(np.asarray(x))


def validate_config(config) -> None:
    t = config.training
    for name in ("batch_size", "num_steps", "log_every", "checkpoint_every"):
        if int(t[name]) <= 0:
            raise ValueError(f"training.{name} must be positive, got {t[name]}")
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ValueError(f"optim.ema_decay must be in [0, 1), got {config.optim.ema_decay}")
    if not 0.0 <= t.get("cond_drop_prob", 0.0) < 1.0:
        raise ValueError(f"training.cond_drop_prob must be in [0, 1), got {t.cond_drop_prob}")
    diffusion.process.check_prediction_type(config.diffusion.prediction_type)
    if config.get("task", "diffusion") not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; use one of {TASKS}")
    if config.get("task") in TEXT_TASKS:
        from ddpm_jax.training.text import validate_text_config

        validate_text_config(config)
    if config.get("task") == "super_resolution":
        from ddpm_jax.training.super_resolution import validate_sr_config

        validate_sr_config(config)


def build_run(config, split: Optional[str] = None) -> Run:
    validate_config(config)
    task = config.get("task", "diffusion")
    text = None
    if task in TEXT_TASKS:  # captioned data (templates over labels, or folder:PATH) and the frozen text encoder
        from ddpm_jax.training.text import load_text_data

        source, text = load_text_data(config, split or config.data.split)
    else:
        source = load_source(config.data.name, split or config.data.split, config.data.get("data_dir") or None)
    discriminator = None
    if task == "clip":
        from ddpm_jax.training.text import clip_from_config

        model = clip_from_config(config.clip)
    elif task == "classifier":
        model = classifier_from_config(config.model, source.num_classes)
    elif task == "autoencoder":
        model = autoencoder_from_config(config.model, source.images.shape[-1])
        discriminator = discriminator_from_config(config.get("autoencoder", {}))
    elif text is not None:
        model = unet_from_config(config.model, source.num_classes, text.encoder.dim,
                                 text.encoder.dim if config.text.get("use_pooled", True) else None)
    else:
        low_res_channels = source.images.shape[-1] if task == "super_resolution" else None
        model = unet_from_config(config.model, source.num_classes, low_res_channels=low_res_channels)
    schedule = diffusion.make_schedule(config.diffusion.schedule, config.diffusion.num_timesteps)
    tx, lr_schedule = make_optimizer(config.optim, config.training.num_steps)
    mesh = sharding.make_mesh(config.mesh.get("data", -1), config.mesh.get("fsdp", 1))
    image_shape = (config.data.image_size, config.data.image_size, source.images.shape[-1])
    latent = None
    if task in LATENT_TASKS:
        from ddpm_jax.training.latent import load_latent_space

        latent = load_latent_space(config.latent, source.images, config.data.image_size)
        f = latent.model.downsample_factor
        image_shape = (config.data.image_size // f, config.data.image_size // f, latent.model.embed_dim)

    def init_fn(key):
        k_params, k_run = jax.random.split(key)
        x = jnp.zeros((1,) + image_shape, jnp.float32)
        if task == "clip":
            from ddpm_jax.models.clip import init_clip

            params = init_clip(model, k_params, image_shape, text.encoder.dim)
        elif text is not None:
            n = text.encoder.max_length
            params = model.init({"params": k_params}, x, jnp.zeros((1,), jnp.int32), None,
                                jnp.zeros((1, n, model.context_dim)), jnp.ones((1, n), bool),
                                None if model.pooled_dim is None else jnp.zeros((1, model.pooled_dim)),
                                train=False)["params"]
        elif task == "classifier":
            params = model.init({"params": k_params}, x, train=False)["params"]
        elif task == "autoencoder":
            params = model.init({"params": k_params, "sample": k_params}, x, train=False)["params"]
            if discriminator is not None:
                k_disc = jax.random.fold_in(k_params, 1)
                params = {"autoencoder": params, "discriminator": discriminator.init(k_disc, x)["params"]}
        else:
            from ddpm_jax.training.super_resolution import init_kwargs

            y = jnp.zeros((1,), jnp.int32) if model.num_classes else None
            sr = init_kwargs(model, 1, config.get("sr", {}).get("low_res_size"))
            params = model.init({"params": k_params}, x, jnp.zeros((1,), jnp.int32), y, train=False, **sr)["params"]
        return create_train_state(params, tx, k_run)

    return Run(config, source, model, schedule, tx, lr_schedule, mesh, image_shape, init_fn, latent, discriminator,
               text)


def restore_or_init(run: Run, checkpointer: Checkpointer) -> tuple[TrainState, Any]:
    """The newest readable checkpoint, or a fresh state from ``config.seed``; both laid out by the partition rules."""
    key = jax.random.key(run.config.seed)
    abstract = jax.eval_shape(run.init_fn, key)
    shardings = sharding.state_shardings(run.mesh, abstract, run.config.mesh.get("fsdp_min_size", 2**14))
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restored = checkpointer.restore_latest(target)
    if restored is not None:
        log.info("restored checkpoint step %d from %s", restored[0], checkpointer.directory)
        return restored[1], shardings
    return jax.jit(run.init_fn, out_shardings=shardings)(key), shardings


def _first_nonfinite(pending: List[Dict[str, jax.Array]]) -> Optional[int]:
    losses = np.asarray(jax.device_get([m["loss"] for m in pending]))
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _mean_metrics(pending: List[Dict[str, jax.Array]]) -> Dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def write_sample_grid(run: Run, sample_fn, params, step: int, workdir: str) -> str:
    num = run.config.sampling.get("num_grid", 64)
    if run.text is not None:
        from ddpm_jax.training.text import text_sample_grid

        return text_sample_grid(run, sample_fn, params, num, os.path.join(workdir, "samples", f"step_{step:07d}.png"))
    labels = default_labels(num, run.model.num_classes)
    x = generate(sample_fn, params, jax.random.key(run.config.seed + 1), num, run.image_shape,
                 run.config.sampling.get("batch_size", 64), labels)
    ncols = run.model.num_classes or None
    return image_io.save_grid(os.path.join(workdir, "samples", f"step_{step:07d}.png"), to_uint8(run.to_pixels(x)),
                              ncols)


def train(config, workdir: str) -> TrainState:
    """Train (or resume training) the pixel-space denoiser of ``config`` in ``workdir``; returns the final state."""
    run = build_run(config)
    main_process = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if main_process:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    t = config.training
    pipeline = make_data_pipeline(run, workdir, main_process)
    checkpointer = Checkpointer(workdir, t.get("keep_checkpoints", 3), t.get("async_checkpointing", True))
    state, state_shardings = restore_or_init(run, checkpointer)
    start = int(jax.device_get(state.step))
    if main_process and start == 0:
        overview = parameter_overview.get_parameter_overview(state.params, include_stats=False)
        with open(os.path.join(workdir, "parameter_overview.txt"), "w") as f:
            f.write(overview + "\n")
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        log.info("model: %s parameters; data: %s (%d examples, %s); mesh %s", f"{n_params:,}", run.source.name,
                 len(run.source), "x".join(map(str, run.image_shape)), dict(run.mesh.shape))
    if start >= t.num_steps:
        log.info("already trained to step %d (training.num_steps=%d); nothing to do", start, t.num_steps)
        checkpointer.close()
        return state

    task = config.get("task", "diffusion")
    accum = t.get("grad_accum_steps", 1)
    if accum < 1 or t.batch_size % (accum * jax.device_count()):
        raise ValueError(f"training.batch_size {t.batch_size} must split into training.grad_accum_steps={accum} "
                         f"micro-batches that divide evenly over {jax.device_count()} devices")
    step_fn = jax.jit(make_train_step(make_loss(config, run), run.tx, run.lr_schedule, config.optim.ema_decay, accum),
                      in_shardings=(state_shardings, sharding.batch_sharding(run.mesh)),
                      out_shardings=(state_shardings, sharding.replicated(run.mesh)), donate_argnums=0)
    diffusion_task = task in DIFFUSION_TASKS
    sample_fn = make_sample_fn(run.model, run.schedule, config.sampling, config.diffusion.prediction_type) \
        if diffusion_task and run.text is None else None
    if diffusion_task and run.text is not None:
        from ddpm_jax.pipelines.text import make_text_sample_fn

        sample_fn = make_text_sample_fn(run.model, run.schedule, config.sampling, run.text.null,
                                        config.diffusion.prediction_type)
    quality = make_quality_hook(config, run) if diffusion_task else None
    eval_every, sample_every = config.eval.get("every", 0), t.get("sample_every", 0)
    writer = MetricWriter(workdir, enabled=main_process)
    progress = Progress(start, t.num_steps, t.batch_size)
    pending: List[Dict[str, jax.Array]] = []
    last_saved = max(checkpointer.steps(), default=None)
    preemption = PreemptionWatch()
    preempted = False
    try:
        for step in range(start, t.num_steps):
            state, metrics = step_fn(state, sharding.global_batch(pipeline.batch(step), run.mesh))
            pending.append(metrics)
            done = step + 1
            is_last = done == t.num_steps
            due = lambda every: bool(every) and (done % every == 0 or is_last)
            preempted = preemption.reached(done) and not is_last
            if due(t.log_every) or due(t.checkpoint_every) or due(eval_every) or due(sample_every) or preempted:
                bad = _first_nonfinite(pending)
                if bad is not None:
                    raise FloatingPointError(
                        f"loss is NaN/Inf at step {done - len(pending) + bad + 1}; stopping before anything "
                        f"non-finite is saved (last checkpoint: step {last_saved}). Lower optim.lr, enable "
                        f"optim.grad_clip or check the data.")
            if due(t.log_every):
                scalars = _mean_metrics(pending)
                scalars.update(progress.report(done, scalars))
                writer.write(done, scalars)
                pending = []
            if due(t.checkpoint_every) or (preempted and last_saved != done):
                checkpointer.save(done, state, force=preempted)
                last_saved = done
            if preempted:  # SIGTERM: the step is finished and saved; wait for the async write, then stop
                checkpointer.wait()
                log.info("preempted (SIGTERM) after step %d: saved checkpoint %s/%d; exiting, run the same command "
                         "to resume", done, checkpointer.directory, done)
                break
            if quality is not None and due(eval_every):
                scalars = quality(state.ema_params)
                writer.write(done, scalars, prefix="eval")
                log.info("eval at step %d: %s", done, " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
            if sample_fn is not None and due(sample_every):
                ema_params = host_params(state.ema_params)  # collective: every process takes part
                if main_process:
                    path = write_sample_grid(run, sample_fn, ema_params, done, workdir)
                    log.info("samples (EMA, %s, %s steps) -> %s", config.sampling.sampler,
                             config.sampling.get("num_steps"), path)
        if task in ("classifier", "autoencoder", "clip") and not preempted:
            ema_params = host_params(state.ema_params)
        if task == "clip" and main_process and not preempted:
            from ddpm_jax.training.text import evaluate_clip

            scalars = evaluate_clip(run, ema_params)
            writer.write(t.num_steps, scalars, prefix="eval")
            log.info("CLIP on the test split: zero-shot class accuracy %.4f, CLIP score %.2f (class prompts)",
                     scalars["zero_shot_accuracy"], scalars["clip_score"])
        if task == "classifier" and main_process and not preempted:
            scalars = evaluate_classifier(run, ema_params)
            writer.write(t.num_steps, scalars, prefix="eval")
            log.info("classifier on the test split: accuracy %.4f, loss %.4f", scalars["accuracy"], scalars["loss"])
        if task == "autoencoder" and main_process and not preempted:
            scalars = evaluate_autoencoder(run, ema_params)
            writer.write(t.num_steps, scalars, prefix="eval")
            log.info("autoencoder (f=%d) on the test split: PSNR %.2f dB, L1 %.4f", run.model.downsample_factor,
                     scalars["psnr"], scalars["l1"])
    finally:
        preemption.close()
        checkpointer.close()
        writer.close()
    if preempted:
        return state
    samples = f"samples: {workdir}/samples; " if sample_fn is not None else ""
    log.info("done: step %d. %smetrics: %s/metrics.jsonl (TensorBoard: %s/tensorboard); checkpoints: %s",
             t.num_steps, samples, workdir, workdir, checkpointer.directory)
    return state


def host_params(params: Any) -> Any:
    """Parameters as arrays this process can compute with alone: with several processes a sharded array spans hosts,
    so all processes gather it (collectively) before process 0 samples or evaluates on its own."""
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def make_data_pipeline(run: Run, workdir: str, main_process: bool):
    """Pixel batches, or for latent diffusion the dataset encoded once by the frozen autoencoder and scaled."""
    config = run.config
    if run.text is not None:  # the same image/latent batches, plus each example's caption condition
        from ddpm_jax.training.text import TextPipeline, check_or_write_record

        if main_process:
            check_or_write_record(run.text, workdir)
        embeddings = run.text.embed_dataset(os.path.join(workdir, "text_cache"))
        log.info("text encoder %r: %d captions (%d unique) embedded (cache %s/text_cache)", run.text.encoder,
                 len(run.text.captions), len(embeddings.texts), workdir)
        inner = make_data_pipeline(dataclasses.replace(run, text=None), workdir, main_process)
        return TextPipeline(inner, embeddings, "pooled" if config.task == "clip" else "cond")
    if config.get("task") == "super_resolution":  # (low_res, image) pairs
        from ddpm_jax.training.super_resolution import SRPipeline

        inner = make_pipeline(config, run.source, jax.process_index(), jax.process_count())
        return SRPipeline(inner, config.sr.low_res_size)
    if run.latent is None:
        return make_pipeline(config, run.source, jax.process_index(), jax.process_count())
    from ddpm_jax.training.latent import check_or_write_record

    if main_process:
        check_or_write_record(run.latent, workdir)
    latents = run.latent.encode(run.source.images, config.data.image_size) * run.latent.scale_factor
    log.info("encoded %d images to latents %s with the autoencoder of %s (scale factor %.5f)", len(latents),
             "x".join(map(str, latents.shape[1:])), run.latent.autoencoder_workdir, run.latent.scale_factor)
    labels = run.source.labels if run.source.labels is not None else np.zeros(len(latents), np.int32)
    return ArrayPipeline(latents, labels, config.training.batch_size, config.seed, jax.process_index(),
                         jax.process_count())


def make_loss(config, run: Run):
    """The loss of the config's task: L_simple for diffusion, cross-entropy for the classifier, L1/L2 + KL for the
    autoencoder. Everything else about training is shared."""
    t, task = config.training, config.get("task", "diffusion")
    if task == "clip":
        from ddpm_jax.models.clip import make_clip_loss

        return make_clip_loss(run.model, config.clip.get("same_label_positives", True))
    if run.text is not None:
        from ddpm_jax.training.text import make_text_diffusion_loss

        return make_text_diffusion_loss(run.model, run.schedule, run.text.null, config.diffusion.prediction_type,
                                        config.diffusion.get("loss_weighting", "none"), config.text.cond_drop_prob)
    if task == "classifier":
        return make_classifier_loss(run.model, t.get("label_smoothing", 0.0))
    if task == "autoencoder":
        ae = config.get("autoencoder", {})
        return make_autoencoder_loss(run.model, ae.get("reconstruction", "l1"), ae.get("kl_weight", 1e-6),
                                     run.discriminator, ae.get("disc_weight", 0.0), ae.get("disc_start", 0))
    if task == "super_resolution":
        from ddpm_jax.training.super_resolution import make_sr_loss

        return make_sr_loss(run.model, run.schedule, config.diffusion.prediction_type,
                            config.diffusion.get("loss_weighting", "none"), t.get("cond_drop_prob", 0.0),
                            config.sr.get("max_aug_level", 0.0))
    return make_diffusion_loss(run.model, run.schedule, config.diffusion.prediction_type,
                               config.diffusion.get("loss_weighting", "none"), t.get("cond_drop_prob", 0.0))


def held_out_batches(run: Run, split: str, batch_size: int):
    """Yield (x [B, H, W, C] in [-1, 1], labels [B]) over a held-out split, preprocessed as in training; and its size."""
    source = load_source(run.config.data.name, split, run.config.data.get("data_dir") or None)

    def batches():
        for start in range(0, len(source), batch_size):
            images, labels = source.take(np.arange(start, min(start + batch_size, len(source))))
            yield jnp.asarray(to_model_range(resize_nearest(images, run.config.data.image_size))), labels

    return batches(), len(source)


def evaluate_classifier(run: Run, params, split: str = "test", batch_size: int = 500) -> Dict[str, float]:
    """Accuracy and cross-entropy of a trained classifier on a held-out split."""
    apply = jax.jit(lambda p, x: run.model.apply({"params": p}, x, train=False)["logits"])
    batches, n = held_out_batches(run, split, batch_size)
    correct, nll = 0, 0.0
    for x, labels in batches:
        logits = np.asarray(apply(params, x), np.float64)
        logp = scipy.special.log_softmax(logits, axis=1)
        correct += int(np.sum(np.argmax(logits, 1) == labels))
        nll -= float(np.sum(logp[np.arange(len(labels)), labels]))
    return {"accuracy": correct / n, "loss": nll / n}


def evaluate_autoencoder(run: Run, params, split: str = "test", batch_size: int = 200) -> Dict[str, float]:
    """Reconstruction PSNR (dB) and L1 of the posterior mode on a held-out split."""
    recon = jax.jit(lambda p, x: run.model.apply({"params": p}, x, sample_posterior=False)[0])
    params = autoencoder_params(params)
    batches, n = held_out_batches(run, split, batch_size)
    total_psnr, total_l1 = 0.0, 0.0
    for x, _ in batches:
        x_hat = recon(params, x)
        total_psnr += float(jnp.sum(psnr(x_hat, x)))
        total_l1 += float(jnp.sum(jnp.mean(jnp.abs(x_hat - x), axis=(1, 2, 3))))
    return {"psnr": total_psnr / n, "l1": total_l1 / n}


def make_quality_hook(config, run: Run):
    """Periodic sample quality (``config.eval``): N samples with a fast sampler, scored in a trained classifier's
    feature space (Frechet classifier distance, KID, class accuracy); None when eval.every is 0."""
    ev = config.get("eval")
    if ev is None or not ev.get("every", 0):
        return None
    from ddpm_jax.training.quality import SampleQuality

    return SampleQuality.from_config(config, run)


def restore_trained(run: Run, workdir: str) -> TrainState:
    """The newest readable checkpoint of ``workdir``; a workdir without one is a one-line error."""
    checkpointer = Checkpointer(workdir, async_save=False)
    try:
        if not checkpointer.steps():
            raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}: train first with --mode=train")
        state, _ = restore_or_init(run, checkpointer)
    finally:
        checkpointer.close()
    return state


def read_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (its config.json); a one-line error if there is none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a ddpm_jax workdir (train there first)")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def load_trained(workdir: str, use_ema: bool = True):
    """(config, model, params) of the latest checkpoint of a finished or running workdir, from its config.json."""
    config = read_workdir_config(workdir)
    run = build_run(config)
    state = restore_trained(run, workdir)
    params = state.ema_params if use_ema else state.params
    return config, run.model, (autoencoder_params(params) if config.get("task") == "autoencoder" else params)


def sample_vae_prior(run: Run, params, key: jax.Array, num: int, batch_size: int = 256) -> np.ndarray:
    """Images in [-1, 1] decoded from latents drawn from the KL prior N(0, I): the autoencoder as a VAE generator."""
    model = run.model
    f, size = model.downsample_factor, run.config.data.image_size
    z = jax.random.normal(key, (num, size // f, size // f, model.embed_dim))
    decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
    params = autoencoder_params(params)
    return np.concatenate([np.asarray(decode(params, z[i:i + batch_size])) for i in range(0, num, batch_size)])


def sample(config, workdir: str, num: int, out_name: Optional[str] = None, use_ema: bool = True,
           labels: Optional[np.ndarray] = None) -> Dict[str, str]:
    """Load the latest checkpoint of ``workdir`` and write ``num`` samples as a PNG grid and a uint8 ``.npz``."""
    run = build_run(config)
    state = restore_trained(run, workdir)
    step = int(jax.device_get(state.step))
    params = state.ema_params if use_ema else state.params
    key = jax.random.key(config.sampling.get("seed", 0))
    s = config.sampling
    if config.get("task", "diffusion") == "autoencoder":  # the VAE baseline: decode z ~ N(0, I)
        labels = np.zeros(num, np.int32) if labels is None else labels
        images = to_uint8(sample_vae_prior(run, params, key, num))
        name = out_name or f"vae_prior_step{step}"
    elif run.text is not None and config.task != "clip":  # one prompt per class (per grid column)
        from ddpm_jax.training.text import text_samples

        images, labels, _ = text_samples(run, params, key, num, s.get("guidance_scale", 1.0))
        name = out_name or f"{s.sampler}_{s.get('num_steps') or 'all'}steps_w{s.get('guidance_scale', 1.0):g}_step{step}"
    elif config.get("task") == "super_resolution":  # held-out images: low-res row, SR row, original row
        from ddpm_jax.training.super_resolution import sr_test_samples

        images, labels = sr_test_samples(run, params, key, num)
        aug = s.get("sr_aug_level", 0.0)
        name = out_name or f"sr_{s.sampler}_{s.get('num_steps') or 'all'}steps_aug{aug:g}_step{step}"
    elif config.get("task", "diffusion") in DIFFUSION_TASKS:
        sample_fn = make_sample_fn(run.model, run.schedule, s, config.diffusion.prediction_type)
        labels = default_labels(num, run.model.num_classes) if labels is None else labels
        x = generate(sample_fn, params, key, num, run.image_shape, s.get("batch_size", 64), labels)
        images = to_uint8(run.to_pixels(x))
        name = out_name or f"{s.sampler}_{s.get('num_steps') or 'all'}steps_step{step}"
    else:
        raise ValueError(f"--mode=sample needs a diffusion or autoencoder run, not task {config.task!r}")
    out_dir = os.path.join(workdir, "samples")
    ncols = getattr(run.model, "num_classes", None)  # one class per column for class-conditional models
    if run.text is not None:
        ncols = len(run.text.prompts)  # one prompt per column
    if config.get("task") == "super_resolution":
        ncols = len(images) // 3  # rows: low-res inputs, super-resolved, originals
    png = image_io.save_grid(os.path.join(out_dir, name + ".png"), images, ncols)
    npz = os.path.join(out_dir, name + ".npz")
    np.savez_compressed(npz, images=images, labels=np.asarray(labels, np.int32))
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump({"checkpoint_step": step, "num": num, "ema": use_ema, "sampling": s.to_dict()}, f, indent=2)
    log.info("wrote %d samples from step %d (%s, %s steps): %s and %s", num, step, s.sampler,
             s.get("num_steps") or "all", png, npz)
    return {"png": png, "npz": npz}
