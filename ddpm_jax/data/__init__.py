"""Datasets (embedded digits, IDX folders, prepared TFDS, prepared ArrayRecord) and deterministic, per-process
batching: in memory, or streamed through grain (:mod:`ddpm_jax.data.streaming`) with the same batches."""
from ddpm_jax.data.arrayrecord import ArrayRecordSource, DatasetFormatError, load_arrayrecord
from ddpm_jax.data.pipeline import (
    ArrayPipeline, BatchPipeline, global_batch_indices, process_slice, resize_nearest, to_model_range, to_uint8,
)
from ddpm_jax.data.sources import (
    ArraySource, DatasetNotFoundError, load_digits, load_idx_dataset, load_source, load_tfds, read_idx,
)
from ddpm_jax.data.streaming import GrainPipeline, data_iterator, make_pipeline
