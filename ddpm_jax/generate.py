"""Text-to-image command: ``python -m ddpm_jax.generate --workdir=DIR --prompt "a sneaker" --guidance 3 --num 16``.

Loads the latest checkpoint (EMA weights) of a ``text_diffusion`` or ``latent_text_diffusion`` workdir, encodes the
prompts with the frozen text encoder it was trained with, samples with classifier-free guidance and writes a PNG grid
plus a .npz (uint8 ``images``, ``prompts``, ``prompt_index``). Several ``--prompt`` flags are cycled, one per column.
``--clip_workdir`` (a ``configs/clip_*.py`` run) also prints the CLIP score of the images against their prompts.
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
flags.mark_flags_as_required(["workdir", "prompt"])


def main(argv):
    del argv
    from ddpm_jax.training.logging import run_cli, setup_logging

    setup_logging()

    def body():
        from ddpm_jax.training.text import clip_score_of, generate_from_workdir, load_domain_clip

        out = generate_from_workdir(FLAGS.workdir, FLAGS.prompt, FLAGS.num, FLAGS.guidance, FLAGS.sampler,
                                    FLAGS.steps, FLAGS.seed, FLAGS.ema, FLAGS.out)
        print(f"wrote {FLAGS.num} images for {FLAGS.prompt} (guidance {out['guidance']:g}, {out['sampler']} "
              f"{out['num_steps'] or 'default'} steps, checkpoint step {out['step']}): {out['png']} and {out['npz']}")
        if FLAGS.clip_workdir:
            scores = clip_score_of(load_domain_clip(FLAGS.clip_workdir), out["images"], out["prompts"])
            print(f"CLIP score {scores['clip_score']:.2f} (Hessel CLIP-S {scores['clipscore_hessel']:.4f}) with the "
                  f"CLIP of {FLAGS.clip_workdir}")

    run_cli(body)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
