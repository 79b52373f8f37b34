"""What a task is: how it builds its model, initialises it, makes batches, computes its loss, samples and evaluates.

The trainer (:mod:`ddpm_jax.training.loop`) and the generation pipelines only call these methods. Conditioning that
composes (a frozen autoencoder's latent space, a frozen text encoder's captions) is a wrapper around another task
(:class:`Wrapper`), not a branch: latent text diffusion is ``Latent(Text(DiffusionTask()))``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.diffusion.processes import make_process
from ddpm_jax.data import load_source, make_pipeline, resize_nearest, to_model_range

# loss_fn(params, batch, key, step) -> (scalar loss, auxiliary metrics); step is the optimizer step.
LossFn = Callable[[Any, Dict[str, jnp.ndarray], jax.Array, jnp.ndarray], Tuple[jnp.ndarray, Dict[str, jnp.ndarray]]]


@dataclasses.dataclass
class Run:
    """Everything a task built from a config: the data source, the model and what the model sees."""

    config: Any
    task: "Task"
    source: Any
    model: Any
    image_shape: tuple               # what the model sees: pixels, or latents for latent diffusion
    schedule: Any = None             # diffusion.Schedule for denoising tasks (also a SR stage's noise augmentation)
    process: Any = None              # diffusion.processes: ddpm (on `schedule`), flow or edm (diffusion.process)
    latent: Any = None               # LatentSpace of a frozen autoencoder (Latent wrapper)
    text: Any = None                 # TextConditioning (Text wrapper): encoder, captions, null condition, prompts
    extras: Dict[str, Any] = dataclasses.field(default_factory=dict)  # task-specific parts (e.g. a discriminator)

    def __post_init__(self):
        if self.process is None and self.schedule is not None:  # a denoising run: the config's process on `schedule`
            self.process = make_process(self.config.diffusion, self.schedule)

    def init_params(self, key: jax.Array) -> Any:
        return self.task.init_params(self, key)

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """Model outputs as images in [-1, 1]: decoded through the autoencoder for latent diffusion."""
        return np.asarray(x) if self.latent is None else self.latent.decode(np.asarray(x))


@dataclasses.dataclass
class Samples:
    """What ``--mode=sample`` writes: uint8 images, their labels (or prompt indices), grid columns, a file name."""

    images: np.ndarray
    labels: np.ndarray
    ncols: Optional[int]
    name: str
    extra: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Task:
    """A task with the defaults of a non-generative model; subclasses override what they do differently."""

    name = "task"
    generative = False   # makes samples (periodic grids, --mode=sample, sample-quality evaluation)
    text_fields = "cond"  # what a Text wrapper adds to batches: "cond" (tokens + pooled) or "pooled" (CLIP)

    def validate(self, config) -> None:
        """Fail early on settings that cannot work (one-line ValueError)."""

    def load_source(self, config, split: Optional[str] = None):
        return load_source(config.data.name, split or config.data.split, config.data.data_dir or None)

    def build(self, config, split: Optional[str] = None, source=None, text=None) -> Run:
        raise NotImplementedError

    def init_params(self, run: Run, key: jax.Array) -> Any:
        raise NotImplementedError

    def pipeline(self, run: Run, workdir: str, main_process: bool):
        """Training batches: ``.batch(step)`` is a pure function of (seed, step) on each process; a prepared
        ArrayRecord source streams the same batches in step order through grain (``data_iterator``: its position,
        saved with each checkpoint)."""
        return make_pipeline(run.config, run.source, jax.process_index(), jax.process_count())

    def check_or_write_records(self, run: Run, workdir: str, write: bool = True) -> None:
        """Files beside the checkpoints that pin frozen parts (autoencoder, text encoder) to the run."""

    def loss(self, run: Run) -> LossFn:
        raise NotImplementedError

    def eval_params(self, params: Any) -> Any:
        """The part of the trained params that inference uses (e.g. without a discriminator)."""
        return params

    def trainable(self, run: Run) -> Optional[Callable[[Any], Any]]:
        """None when every parameter is trained; else ``mask(params)``, a tree of bools over ``params`` (False:
        frozen). A frozen leaf gets no optimizer update and no optimizer state, its EMA is the leaf itself, and only
        :meth:`step_transition` changes it (e.g. a distillation teacher kept in the params, so it is checkpointed)."""
        return None

    def step_transition(self, run: Run) -> Optional[Callable[[Any, Any, jnp.ndarray], Any]]:
        """None, or ``fn(params, ema_params, step) -> params`` applied at the start of every optimizer step, inside
        the compiled step, before the gradient. It must be a pure function of its arguments (resume is then exact):
        e.g. distillation's teacher refresh at round boundaries or its EMA target network."""
        return None

    def sample_grid(self, run: Run, params: Any, key: jax.Array, num: int) -> Optional[Samples]:
        """A grid of samples during training; None for tasks that do not generate."""
        return None

    def sample(self, run: Run, params: Any, key: jax.Array, num: int, labels: Optional[np.ndarray] = None,
               prompts=None) -> Samples:
        raise ValueError(f"--mode=sample needs a generative run; task {self.name!r} does not generate images")

    def final_eval(self, run: Run, params: Any) -> Optional[Tuple[Dict[str, float], str]]:
        """Scores on held-out data after training, and a one-line summary; None if the task has none."""
        return None


class Wrapper(Task):
    """A task around another: everything not overridden is the inner task's."""

    def __init__(self, inner: Task):
        self.inner = inner

    def __getattr__(self, attr):  # hooks a base task adds (generate, condition, ...) are the inner task's
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @property
    def generative(self):
        return self.inner.generative

    @property
    def text_fields(self):
        return self.inner.text_fields

    def validate(self, config):
        self.inner.validate(config)

    def load_source(self, config, split=None):
        return self.inner.load_source(config, split)

    def build(self, config, split=None, source=None, text=None) -> Run:
        run = self.inner.build(config, split, source, text)
        run.task = self
        return run

    def init_params(self, run, key):
        return self.inner.init_params(run, key)

    def pipeline(self, run, workdir, main_process):
        return self.inner.pipeline(run, workdir, main_process)

    def check_or_write_records(self, run, workdir, write=True):
        self.inner.check_or_write_records(run, workdir, write)

    def loss(self, run):
        return self.inner.loss(run)

    def eval_params(self, params):
        return self.inner.eval_params(params)

    def trainable(self, run):
        return self.inner.trainable(run)

    def step_transition(self, run):
        return self.inner.step_transition(run)

    def sample_grid(self, run, params, key, num):
        return self.inner.sample_grid(run, params, key, num)

    def sample(self, run, params, key, num, labels=None, prompts=None):
        return self.inner.sample(run, params, key, num, labels, prompts)

    def final_eval(self, run, params):
        return self.inner.final_eval(run, params)


def held_out_batches(config, split: str, batch_size: int):
    """(generator of (x [B, H, W, C] in [-1, 1], labels [B]) over a held-out split preprocessed as in training,
    number of examples)."""
    source = load_source(config.data.name, split, config.data.data_dir or None)

    def batches():
        for start in range(0, len(source), batch_size):
            images, labels = source.take(np.arange(start, min(start + batch_size, len(source))))
            yield jnp.asarray(to_model_range(resize_nearest(images, config.data.image_size))), labels

    return batches(), len(source)
