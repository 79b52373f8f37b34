"""The training loop: any registered task, periodic actions (progress, metrics, sample grids, checkpoints,
sample-quality evaluation), exact resume. The workdir layer owns the run directory: the config is checked against
the recorded one before anything is written, one trainer holds the lock, and only unreadable checkpoints are moved."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Dict, List, Optional

import jax
import numpy as np
from clu import parameter_overview

from ddpm_jax import storage
from ddpm_jax.data import data_iterator
from ddpm_jax.evaluation.quality import SampleQuality
from ddpm_jax.pipelines.images import save_grid
from ddpm_jax.tasks import build_run
from ddpm_jax.tasks.base import Run
from ddpm_jax.training import sharding
from ddpm_jax.training.distributed import PreemptionWatch
from ddpm_jax.training.logging import MetricWriter, Progress
from ddpm_jax.training.optim import freeze, make_optimizer
from ddpm_jax.training.state import TrainState, create_train_state
from ddpm_jax.training.steps import make_train_step
from ddpm_jax.workdir import Checkpointer, CheckpointSaveError, Workdir, WorkdirLockedError

log = logging.getLogger("ddpm_jax")


def validate_training(config) -> None:
    t = config.training
    for name in ("batch_size", "num_steps", "log_every", "checkpoint_every", "grad_accum_steps"):
        if int(t[name]) <= 0:
            raise ValueError(f"training.{name} must be positive, got {t[name]}")
    if not 0.0 <= config.optim.ema_decay < 1.0:
        raise ValueError(f"optim.ema_decay must be in [0, 1), got {config.optim.ema_decay}")
    if t.batch_size % (t.grad_accum_steps * jax.device_count()):
        raise ValueError(f"training.batch_size {t.batch_size} must split into training.grad_accum_steps="
                         f"{t.grad_accum_steps} micro-batches that divide evenly over {jax.device_count()} devices")


@dataclasses.dataclass
class TrainSetup:
    """A run plus what training adds to it: optimizer, learning-rate schedule, mesh and the state initialiser."""

    run: Run
    tx: Any
    lr_schedule: Any
    mesh: Any
    init_fn: Any  # key -> TrainState
    trainable: Any = None        # the task's params -> tree of bools (frozen leaves), or None
    step_transition: Any = None  # the task's (params, ema_params, step) -> params, or None

    def loss_fn(self):
        return self.run.task.loss(self.run)


def build_training(config) -> TrainSetup:
    """Validate ``config`` and build its run, optimizer and mesh (what :func:`train` uses; also for tests and
    benchmarks that drive steps themselves)."""
    validate_training(config)
    run = build_run(config)
    tx, lr_schedule = make_optimizer(config.optim, config.training.num_steps)
    trainable = run.task.trainable(run)
    if trainable is not None:
        tx = freeze(tx, trainable)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    return TrainSetup(run, tx, lr_schedule, mesh, make_init_fn(run, tx), trainable, run.task.step_transition(run))


def make_init_fn(run: Run, tx):
    def init_fn(key):
        k_params, k_run = jax.random.split(key)
        return create_train_state(run.init_params(k_params), tx, k_run)

    return init_fn


def restore_or_init(setup: TrainSetup, checkpointer: Checkpointer) -> tuple[TrainState, Any]:
    """The newest readable checkpoint, or a fresh state from ``config.seed``; both laid out by the partition rules."""
    key = jax.random.key(setup.run.config.seed)
    init_fn = setup.init_fn
    abstract = jax.eval_shape(init_fn, key)
    shardings = sharding.state_shardings(setup.mesh, abstract, setup.run.config.mesh.fsdp_min_size)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    restored = checkpointer.restore_latest(target)
    if restored is not None:
        log.info("restored checkpoint step %d from %s", restored[0], checkpointer.directory)
        return restored[1], shardings
    return jax.jit(init_fn, out_shardings=shardings)(key), shardings


def host_params(params: Any) -> Any:
    """Parameters as arrays this process can compute with alone: with several processes a sharded array spans hosts,
    so all processes gather it (collectively) before process 0 samples or evaluates on its own."""
    if jax.process_count() == 1:
        return params
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)


def acquire_lock(wd: Workdir, main_process: bool):
    """Process 0 takes the workdir's lock; every process learns whether it did, so none goes on alone."""
    lock, error = wd.lock("train"), None
    if main_process:
        try:
            lock.acquire()
        except WorkdirLockedError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            error = WorkdirLockedError(f"process 0 could not take the lock of {wd.path}")
    if error is not None:
        raise error
    return lock


def _first_nonfinite(pending: List[Dict[str, jax.Array]]) -> Optional[int]:
    losses = np.asarray(jax.device_get([m["loss"] for m in pending]))
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else None


def _mean_metrics(pending: List[Dict[str, jax.Array]]) -> Dict[str, float]:
    host = jax.device_get(pending)
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def write_grid(run: Run, params, step: int, workdir: str) -> Optional[str]:
    """A grid of EMA samples, ``sampling.num_grid`` images (one class or prompt per column); logs what it wrote."""
    samples = run.task.sample_grid(run, params, jax.random.key(run.config.seed + 1), run.config.sampling.num_grid)
    if samples is None:
        return None
    path = save_grid(storage.join(workdir, "samples", f"step_{step:07d}.png"), samples.images, samples.ncols)
    s = run.config.sampling
    log.info("samples (EMA, %s) -> %s", samples.name or f"{s.sampler}, {s.num_steps or 'all'} steps", path)
    return path


def finish(run: Run, state: TrainState, wd: Workdir, writer: MetricWriter, main_process: bool) -> None:
    """The final actions of a finished run: the last sample grid (when ``training.sample_every`` > 0) and the
    task's held-out evaluation; ``final.json`` records that they were done, so a re-run after a kill does them."""
    t, outputs = run.config.training, {}
    params = run.task.eval_params(host_params(state.ema_params))  # collective: every process takes part
    if main_process and run.task.generative and t.sample_every:
        outputs["grid"] = write_grid(run, params, t.num_steps, wd.path)
    result = run.task.final_eval(run, params) if main_process else None
    if result is not None:
        scores, line = result
        writer.write(t.num_steps, scores, prefix="eval")
        log.info("%s", line)
        outputs["eval"] = scores
    if main_process:
        wd.mark_final(t.num_steps, outputs)


def train(config, workdir: str) -> TrainState:
    """Train (or resume training) ``config``'s task in ``workdir``; returns the final state."""
    wd = Workdir(workdir)
    main_process = jax.process_index() == 0
    wd.check_config(config)  # a run with another config is refused before anything is written
    lock = acquire_lock(wd, main_process)
    try:
        if main_process:
            wd.check_writable()
            wd.record_config(config)
        return _train(config, wd, main_process)
    finally:
        lock.release()


def _train(config, wd: Workdir, main_process: bool) -> TrainState:
    setup = build_training(config)
    run, mesh, t = setup.run, setup.mesh, config.training
    if main_process:
        run.task.check_or_write_records(run, wd.path)
    checkpointer = wd.checkpointer(t.keep_checkpoints, t.async_checkpointing)
    writer = MetricWriter(wd.path, enabled=main_process)
    write_failed = False
    try:
        state, state_shardings = restore_or_init(setup, checkpointer)
        start = int(jax.device_get(state.step))
        if main_process and start == 0:
            overview = parameter_overview.get_parameter_overview(state.params, include_stats=False)
            storage.write_text_atomic(wd.file("parameter_overview.txt"), overview + "\n")
            log.info("model: %s parameters; data: %s (%d examples, %s); mesh %s",
                     f"{sum(x.size for x in jax.tree.leaves(state.params)):,}", run.source.name, len(run.source),
                     "x".join(map(str, run.image_shape)), dict(mesh.shape))
        if start >= t.num_steps:
            log.info("already trained to step %d (training.num_steps=%d); nothing to do", start, t.num_steps)
            if not wd.final_done(t.num_steps):
                log.info("the final samples/evaluation of step %d are missing: writing them", t.num_steps)
                finish(run, state, wd, writer, main_process)
            return state
        state = _loop(setup, state, state_shardings, checkpointer, writer, wd, main_process, start)
    except CheckpointSaveError:
        write_failed = True
        raise
    finally:
        writer.close()
        if write_failed:
            checkpointer.abandon()
        else:
            checkpointer.close()
    return state


def resume_data(pipeline, checkpointer: Checkpointer, start: int):
    """The pipeline's checkpointable data iterator (streaming datasets; None for in-memory ones, whose batch is a
    pure function of the step), set to the position saved with checkpoint ``start`` and checked against it."""
    data = data_iterator(pipeline)
    if data is not None:
        if start:
            checkpointer.restore_data(start, data)
        log.info("%s", data.resume_at(start))
    return data


def _loop(setup: TrainSetup, state, state_shardings, checkpointer, writer, wd, main_process, start):
    run, mesh = setup.run, setup.mesh
    config, t = run.config, run.config.training
    pipeline = run.task.pipeline(run, wd.path, main_process)
    data = resume_data(pipeline, checkpointer, start)
    step_fn = jax.jit(make_train_step(setup.loss_fn(), setup.tx, setup.lr_schedule, config.optim.ema_decay,
                                      t.grad_accum_steps, setup.step_transition, setup.trainable),
                      in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                      out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)
    quality = SampleQuality.from_config(config, run) if run.task.generative and config.eval.every else None
    progress = Progress(start, t.num_steps, t.batch_size)
    pending: List[Dict[str, jax.Array]] = []
    last_saved = max(checkpointer.steps(), default=None)
    preemption = PreemptionWatch()
    try:
        for step in range(start, t.num_steps):
            state, metrics = step_fn(state, sharding.global_batch(pipeline.batch(step), mesh))
            pending.append(metrics)
            done = step + 1
            is_last = done == t.num_steps
            due = lambda every: bool(every) and (done % every == 0 or is_last)
            preempted = preemption.reached(done) and not is_last
            if due(t.log_every) or due(t.checkpoint_every) or due(config.eval.every) or preempted:
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
                checkpointer.save(done, state, force=preempted, data=data)
                last_saved = done
                writer.flush()  # a gs:// workdir's metrics are uploaded with each checkpoint
            else:
                checkpointer.check_for_errors()
            if preempted:  # SIGTERM: the step is finished and saved; wait for the async write, then stop
                checkpointer.wait()
                log.info("preempted (SIGTERM) after step %d: saved checkpoint %s/%d; exiting, run the same command "
                         "to resume", done, checkpointer.directory, done)
                return state
            if quality is not None and due(config.eval.every):
                scalars = quality(state.ema_params)
                writer.write(done, scalars, prefix="eval")
                log.info("eval at step %d: %s", done, " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
            if run.task.generative and t.sample_every and done % t.sample_every == 0 and not is_last:
                params = host_params(state.ema_params)  # collective: every process takes part
                if main_process:
                    write_grid(run, params, done, wd.path)
    finally:
        preemption.close()
        if data is not None:
            data.close()
    checkpointer.wait()  # the last checkpoint is on disk before the final actions are marked done
    finish(run, state, wd, writer, main_process)
    log.info("done: step %d. outputs in %s (metrics.jsonl, samples/, tensorboard/); checkpoints: %s", t.num_steps,
             wd.path, checkpointer.directory)
    return state
