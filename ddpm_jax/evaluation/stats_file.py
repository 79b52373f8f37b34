"""Reference statistics files: pytorch-fid's ``.npz`` (``mu``, ``sigma``) plus a manifest saying what they measure.

The manifest (feature space, network weights sha256, resize mode, dataset, split, image count, seed, creator) is
stored twice: as a JSON string in the npz under ``manifest`` and in a sidecar ``<path>.json``. pytorch-fid reads our
files (it only looks at ``mu`` and ``sigma``); we read plain pytorch-fid files, with an empty manifest.
"""
from __future__ import annotations

import json
import warnings
from typing import Any, Dict, Tuple

import numpy as np

import ddpm_jax
from ddpm_jax import storage
from ddpm_jax.evaluation.fid import check_gaussian

IDENTITY_KEYS = ("feature_space", "weights_sha256")


def _numpy_scalar(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save_stats(path: str, mu, sigma, **manifest: Any) -> None:
    """Write ``mu``, ``sigma`` and the manifest to ``path`` (must end in .npz) and the manifest to ``path + '.json'``.

    Manifest keys used by :func:`check_compatible`: ``feature_space`` (e.g. "inception_pool3", "classifier:digits"),
    ``weights_sha256`` and ``resize_mode``; also record ``dataset``, ``split``, ``image_count`` and ``seed``.
    """
    if not str(path).endswith(".npz"):
        raise ValueError(f"stats path must end in .npz (pytorch-fid recognises stats files by it): {path}")
    mu, sigma = check_gaussian(mu, sigma, str(path))
    manifest.setdefault("created_by", f"ddpm_jax {ddpm_jax.__version__}")
    try:
        text = json.dumps(manifest, sort_keys=True, default=_numpy_scalar)
    except TypeError as e:
        raise ValueError(f"stats manifest must be JSON-serialisable: {e}") from None
    manifest = json.loads(text)
    storage.save_npz(path, mu=mu, sigma=sigma, manifest=np.array(text))
    storage.write_text_atomic(f"{path}.json", json.dumps(manifest, sort_keys=True, indent=1) + "\n")


def load_stats(path: str) -> Tuple[np.ndarray, np.ndarray, Dict[str, Any]]:
    """(mu, sigma, manifest) from one of our stats files or a plain pytorch-fid one (manifest {} unless a sidecar)."""
    if not storage.isfile(path):
        raise FileNotFoundError(f"stats file not found: {path} (write one with ddpm_jax.evaluation.save_stats or "
                                "pytorch-fid --save-stats)")
    f = storage.load_npz(path)
    missing = [k for k in ("mu", "sigma") if k not in f]
    if missing:
        raise ValueError(f"{path} has no {' or '.join(missing)} array (keys: {sorted(f)}); expected a pytorch-fid "
                         "stats .npz")
    mu, sigma = check_gaussian(f["mu"], f["sigma"], path)
    inner = json.loads(str(f["manifest"])) if "manifest" in f else None
    sidecar = storage.read_json(f"{path}.json")
    if inner is not None and sidecar is not None and inner != sidecar:
        raise ValueError(f"the manifest inside {path} and its sidecar {path}.json differ")
    return mu, sigma, inner if inner is not None else (sidecar or {})


def check_compatible(manifest_a: Dict[str, Any], manifest_b: Dict[str, Any]) -> None:
    """ValueError if two stats were taken in different feature spaces or with different weights; UserWarning if
    the resize modes differ or if either manifest cannot say (e.g. a plain pytorch-fid file)."""
    for key in IDENTITY_KEYS:
        a, b = manifest_a.get(key), manifest_b.get(key)
        if a is not None and b is not None and a != b:
            raise ValueError(f"stats are not comparable: {key} differs ({a!r} vs {b!r})")
        if (a is None) != (b is None):
            warnings.warn(f"cannot check that stats are comparable: only one manifest records {key}", UserWarning,
                          stacklevel=2)
    a, b = manifest_a.get("resize_mode"), manifest_b.get("resize_mode")
    if a != b:
        warnings.warn(f"stats were made with different resize modes ({a!r} vs {b!r}); FID shifts with the resize "
                      "filter", UserWarning, stacklevel=2)
