"""Command line: ``python -m ddpm_jax.main --config=configs/NAME.py --workdir=DIR [--mode=train|sample]``.

Config values are overridden with ``--config.training.num_steps=100`` etc. Re-running ``train`` in the same workdir
resumes from the latest checkpoint; SIGTERM (e.g. a TPU preemption notice) saves a checkpoint and exits with status 0.
Multi-process training: the same command on every host (``ddpm_jax/training/distributed.py``, ``launch_tpu.sh``).
``sample`` writes ``--num_samples`` images (PNG grid + uint8 .npz) from the EMA parameters of the latest checkpoint;
sampler and steps come from ``--config.sampling.*``.
"""
from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "train (resumes if the workdir has checkpoints) or sample.")
flags.DEFINE_integer("num_samples", 64, "sample mode: number of images.")
flags.DEFINE_bool("ema", True, "sample mode: use the EMA parameters.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from ddpm_jax.training import distributed  # after flag parsing: importing JAX is slow
    from ddpm_jax.training.logging import run_cli, setup_logging

    setup_logging()
    if FLAGS.mode == "train":  # join the multi-process job (TPU pod, $DDPM_JAX_*) before any JAX computation
        run_cli(lambda: distributed.initialize_from_env(FLAGS.config))
        distributed.log_from_process_0_only()
    from ddpm_jax.training import loop

    if FLAGS.mode == "train":
        run_cli(lambda: loop.train(FLAGS.config, FLAGS.workdir))
    else:
        run_cli(lambda: loop.sample(FLAGS.config, FLAGS.workdir, FLAGS.num_samples, use_ema=FLAGS.ema))


def run():
    app.run(main)


if __name__ == "__main__":
    run()
