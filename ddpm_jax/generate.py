"""Text-to-image command: ``python -m ddpm_jax.generate --workdir=DIR --prompt "a sneaker" --guidance 3 --num 16``.

Loads the latest checkpoint (EMA weights) of a ``text_diffusion`` or ``latent_text_diffusion`` workdir, encodes the
prompts with the frozen text encoder it was trained with, samples with classifier-free guidance and writes a PNG grid
plus a .npz (uint8 ``images``, ``prompts``, ``prompt_index``). Several ``--prompt`` flags are cycled, one per column.
``--clip_workdir`` (a ``configs/clip_*.py`` run) also prints the CLIP score of the images against their prompts.

Cascade (pixel cascade, Imagen / DALL-E 2): ``--sr_workdir=SR [--sr_workdir=SR2]`` enlarges the images of the base
``--workdir`` (a class-conditional ``diffusion`` run with ``--class``, or a text-to-image run with ``--prompt``)
through trained ``super_resolution`` stages in order; ``--sr_sampler``/``--sr_steps``/``--sr_guidance``/
``--sr_aug_level``/``--sr_eta`` give each stage its own settings (one value for all stages, or one per stage).

Multi-process (``jax.distributed``, the same variables as training: ``DDPM_JAX_COORDINATOR`` etc., or a TPU pod): the
same command on every process; each samples its share of the batches and process 0 writes the files.
"""
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A text-to-image training workdir.")
flags.DEFINE_multi_string("prompt", None, "Prompt(s); several are cycled over the images, one per grid column.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance scale w (1: conditional model, 0: unconditional); "
                   "default: the run's sampling.guidance_scale.")
flags.DEFINE_integer("num", 16, "Number of images.")
flags.DEFINE_enum("sampler", None, ["ddpm", "ddim", "dpm_solver_pp_2m"], "Sampler (default: the run's).")
flags.DEFINE_integer("steps", None, "Sampling steps (default: the run's sampling.num_steps; 0: the sampler's default).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("ema", True, "Use the EMA parameters.")
flags.DEFINE_string("out", None, "Output PNG path (the .npz goes beside it); default WORKDIR/samples/t2i_*.png.")
flags.DEFINE_string("clip_workdir", None, "A CLIP workdir (task clip) to score the images with.")
flags.DEFINE_multi_string("sr_workdir", None, "Super-resolution stage workdir(s), applied in order (a cascade).")
flags.DEFINE_multi_integer("class", None, "Class label(s) for a class-conditional base model; cycled over the images.")
flags.DEFINE_multi_string("sr_sampler", None, "Sampler per SR stage (one for all, or one per stage).")
flags.DEFINE_multi_integer("sr_steps", None, "Sampling steps per SR stage (one for all, or one per stage).")
flags.DEFINE_multi_float("sr_guidance", None, "Guidance scale per class-conditional SR stage.")
flags.DEFINE_multi_float("sr_aug_level", None, "Noise-augmentation level in [0, 1) of each SR stage's input "
                         "(default: the stage's sampling.sr_aug_level).")
flags.DEFINE_multi_float("sr_eta", None, "DDIM eta per SR stage (default: the stage's sampling.eta; 1 = ancestral, "
                         "which CPU-sized SR stages need: eta 0 leaves speckle artefacts).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from ddpm_jax.training import distributed
    from ddpm_jax.training.logging import run_cli, setup_logging

    setup_logging()

    def body():
        distributed.initialize_from_env()  # join a multi-process job (if any) before any JAX computation
        distributed.log_from_process_0_only()
        from ddpm_jax.evaluation.multiprocess import is_main_process
        from ddpm_jax.evaluation.quality import clip_score_of, load_domain_clip
        from ddpm_jax.pipelines.workdir import generate_text

        if FLAGS.sr_workdir or FLAGS["class"].value:
            return cascade()
        if not FLAGS.prompt:
            raise ValueError("give --prompt (a text-to-image workdir) or --class/--sr_workdir (a cascade)")

        out = generate_text(FLAGS.workdir, FLAGS.prompt, FLAGS.num, FLAGS.guidance, FLAGS.sampler,
                                    FLAGS.steps, FLAGS.seed, FLAGS.ema, FLAGS.out)
        if not is_main_process():  # every process sampled its share; process 0 writes and prints
            return
        print(f"wrote {FLAGS.num} images for {FLAGS.prompt} (guidance {out['guidance']:g}, {out['sampler']} "
              f"{out['num_steps'] or 'default'} steps, checkpoint step {out['step']}): {out['png']} and {out['npz']}")
        if FLAGS.clip_workdir:
            scores = clip_score_of(load_domain_clip(FLAGS.clip_workdir), out["images"], out["prompts"])
            print(f"CLIP score {scores['clip_score']:.2f} (Hessel CLIP-S {scores['clipscore_hessel']:.4f}) with the "
                  f"CLIP of {FLAGS.clip_workdir}")

    run_cli(body)


def _per_stage(values, n: int, name: str) -> list:
    """One value per SR stage from a multi-flag: none, one for all, or exactly one each."""
    if not values:
        return [None] * n
    if len(values) not in (1, n):
        raise ValueError(f"--{name} takes one value or one per --sr_workdir ({n}), got {len(values)}")
    return list(values) * n if len(values) == 1 else list(values)


def cascade():
    """Base model -> SR stages; writes the final grid, a grid of every stage and a .npz."""
    import numpy as np

    from ddpm_jax import storage
    from ddpm_jax.evaluation.multiprocess import is_main_process
    from ddpm_jax.pipelines.cascade import cascade_from_workdirs, write_cascade

    sr = FLAGS.sr_workdir or []
    per = {k: _per_stage(FLAGS[f"sr_{k}"].value, len(sr), f"sr_{k}") for k in ("sampler", "steps", "guidance",
                                                                                 "aug_level", "eta")}
    sr_overrides = [{k: per[k][i] for k in per} for i in range(len(sr))]
    classes = FLAGS["class"].value
    labels = None if not classes else np.resize(np.asarray(classes, np.int32), FLAGS.num)
    base = {"sampler": FLAGS.sampler, "steps": FLAGS.steps, "guidance": FLAGS.guidance}
    result = cascade_from_workdirs(FLAGS.workdir, sr, FLAGS.num, FLAGS.seed, labels, FLAGS.prompt, base,
                                   sr_overrides, FLAGS.ema)
    tag = "class" + "_".join(map(str, classes)) if classes else "prompt"
    out = FLAGS.out or storage.join(sr[-1] if sr else FLAGS.workdir, "samples",
                                    f"cascade_{tag}_seed{FLAGS.seed}.png")
    if not is_main_process():  # every process sampled its share; process 0 writes
        return
    paths = write_cascade(out, result, len(classes) if classes and len(classes) > 1 else None)
    sizes = " -> ".join(f"{x.shape[1]}px ({s:.1f}s)" for x, s in zip(result["images"], result["seconds"]))
    print(f"wrote {FLAGS.num} cascade samples, {sizes}: {paths['png']}, {paths['stages_png']} and {paths['npz']}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
