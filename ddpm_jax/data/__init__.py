"""Datasets (embedded digits, IDX folders, prepared TFDS) and deterministic, per-process batching."""
from ddpm_jax.data.pipeline import (
    ArrayPipeline, BatchPipeline, global_batch_indices, make_pipeline, process_slice, resize_nearest, to_model_range, to_uint8,
)
from ddpm_jax.data.sources import (
    ArraySource, DatasetNotFoundError, load_digits, load_idx_dataset, load_source, load_tfds, read_idx,
)
