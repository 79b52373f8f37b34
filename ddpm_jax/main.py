"""Command line: ``python -m ddpm_jax.main --config=configs/NAME.py --workdir=DIR [--mode=train|sample]``.

Config values are overridden with ``--config.training.num_steps=100`` etc. The first ``train`` in a workdir records
its config; re-running ``train`` resumes from the latest checkpoint, and a config that would change the run (model,
diffusion, data, optimizer, task) is refused with the differing keys named; safe changes (num_steps, cadence,
sampling) are appended to ``config_history.jsonl``. One trainer per workdir (``lock.json``). SIGTERM (e.g. a TPU
preemption notice) saves a checkpoint and exits with status 0. Multi-process training: the same command on every
host (``ddpm_jax/training/distributed.py``, ``launch_tpu.sh``).

``sample`` writes ``--num_samples`` images (PNG grid + uint8 .npz + settings .json) from the EMA parameters of the
latest checkpoint, read-only: with the recorded config, or ``--config`` if it differs only in sampling settings;
``--class`` picks class labels of a class-conditional run and ``--prompt`` prompts of a text-to-image run.
"""
from absl import app, flags
from ml_collections import config_flags

from ddpm_jax.cli import check_config_argv

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/ (sample mode: optional, default "
                                "the workdir's recorded config).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "train (resumes if the workdir has checkpoints) or sample.")
flags.DEFINE_integer("num_samples", 64, "sample mode: number of images.")
flags.DEFINE_bool("ema", True, "sample mode: use the EMA parameters.")
flags.DEFINE_multi_integer("class", None, "sample mode: class label(s) of a class-conditional run, cycled.")
flags.DEFINE_multi_string("prompt", None, "sample mode: prompt(s) of a text-to-image run, cycled.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from ddpm_jax.training import distributed  # after flag parsing: importing JAX is slow
    from ddpm_jax.training.logging import run_cli, setup_logging

    setup_logging()

    def train():
        if FLAGS.config is None:
            raise ValueError("--mode=train needs --config=configs/NAME.py")
        distributed.initialize_from_env(FLAGS.config)  # join the multi-process job before any JAX computation
        distributed.log_from_process_0_only()
        from ddpm_jax.training import loop

        loop.train(FLAGS.config, FLAGS.workdir)

    def sample():
        distributed.initialize_from_env(FLAGS.config)  # several processes: each samples its share, process 0 writes
        distributed.log_from_process_0_only()
        from ddpm_jax.pipelines.workdir import sample_workdir

        sample_workdir(FLAGS.workdir, FLAGS.num_samples, FLAGS.config, use_ema=FLAGS.ema, labels=FLAGS["class"].value,
                       prompts=FLAGS.prompt)

    run_cli(train if FLAGS.mode == "train" else sample)


def run():
    check_config_argv()
    app.run(main)


if __name__ == "__main__":
    run()
