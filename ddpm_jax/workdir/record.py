"""The run's config, recorded once when the run is created; later commands are checked against it.

``WORKDIR/config.json`` is written by the first training command and never rewritten. A later command's config is
compared key by key with it: a key that changes the model, the diffusion process, the data, the optimizer or the task
is a refusal naming the keys; keys in :data:`SAFE_KEYS` (length, logging and checkpoint cadence, sampling, periodic
evaluation, device layout, where the same data lives, grain's reader threads) may change. A training command appends
such changes to ``WORKDIR/config_history.jsonl``; read-only commands (sample, evaluate, generate) write nothing but
their outputs.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
from typing import Any, Dict, Optional, Tuple

import ml_collections

from ddpm_jax import storage
from ddpm_jax.default_config import base_config

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Prefixes of dotted keys a later command may change (everything else must equal the record).
SAFE_KEYS = ("training.num_steps", "training.log_every", "training.checkpoint_every", "training.keep_checkpoints",
             "training.async_checkpointing", "training.sample_every", "sampling.", "eval.", "mesh.", "distributed.",
             "data.data_dir", "data.grain.", "latent.autoencoder_workdir", "distill.teacher_workdir")
_MISSING = object()


class ConfigMismatchError(ValueError):
    """A command's config differs from the run's recorded one in keys that would change the run."""


def is_safe(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in SAFE_KEYS)


def _plain(config) -> Dict[str, Any]:
    """A config (ConfigDict or dict) as plain JSON data (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(config))


def flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _defaults() -> Dict[str, Any]:
    return flatten(_plain(base_config()))


def differences(recorded, given) -> Dict[str, Tuple[Any, Any]]:
    """{key: (recorded value, given value)} for every key whose values differ; a key absent on one side counts as
    its default (so a key added to the defaults after a run was recorded is not a difference)."""
    rec, new, defaults = flatten(_plain(recorded)), flatten(_plain(given)), _defaults()
    out = {}
    for key in sorted(set(rec) | set(new)):
        a = rec.get(key, defaults.get(key, _MISSING))
        b = new.get(key, defaults.get(key, _MISSING))
        if a != b:
            out[key] = (None if a is _MISSING else a, None if b is _MISSING else b)
    return out


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_compatible(workdir: str, recorded, given) -> Dict[str, Tuple[Any, Any]]:
    """The safe differences of ``given`` from ``recorded``; raises ConfigMismatchError (one line, naming the keys)
    when any other key differs."""
    diff = differences(recorded, given)
    unsafe = {k: v for k, v in diff.items() if not is_safe(k)}
    if unsafe:
        shown = ", ".join(f"{k} (recorded {_show(a)}, given {_show(b)})" for k, (a, b) in list(unsafe.items())[:6])
        more = f" and {len(unsafe) - 6} more" if len(unsafe) > 6 else ""
        raise ConfigMismatchError(
            f"{workdir} holds a run with another config: {shown}{more}. Nothing was changed; use the recorded config "
            f"({storage.join(workdir, CONFIG_FILE)}) or a new --workdir")
    return diff


def _to_config(tree: Dict[str, Any], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """Recorded JSON merged over the defaults; lists become tuples where the default is a tuple."""
    out = dict(defaults)
    for k, v in tree.items():
        d = defaults.get(k)
        if isinstance(v, dict) and isinstance(d, dict):
            out[k] = _to_config(v, d)
        elif isinstance(v, list) and (isinstance(d, tuple) or d is None):
            out[k] = tuple(v)
        else:
            out[k] = v
    return out


def load_recorded(workdir: str) -> Optional[ml_collections.ConfigDict]:
    """The recorded config of ``workdir`` (keys added to the defaults since are filled in), or None if there is
    none; a file that is not a config JSON is a one-line error naming it."""
    path = storage.join(workdir, CONFIG_FILE)
    if not storage.exists(path):
        return None
    try:
        tree = json.loads(storage.read_text(path))
        if not isinstance(tree, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a ddpm_jax config record ({type(e).__name__}: {str(e)[:100]}); restore it "
                         f"from a backup or use a new --workdir") from None
    return ml_collections.ConfigDict(_to_config(tree, base_config().to_dict()))


def write_record(workdir: str, config) -> str:
    """Record ``config`` as the run's config (only when none is recorded; never overwrites)."""
    path = storage.join(workdir, CONFIG_FILE)
    text = (config.to_json_best_effort(indent=2) if isinstance(config, ml_collections.ConfigDict)
            else json.dumps(config, indent=2))
    storage.create_exclusive(path, text.encode())  # atomic; an existing record is kept
    return path


def append_history(workdir: str, command: str, changes: Dict[str, Tuple[Any, Any]]) -> None:
    """One line per command that ran with safe changes: when, who, and {key: [recorded, given]}."""
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "command": command, "host": socket.gethostname(), "pid": os.getpid(),
             "changes": {k: list(v) for k, v in changes.items()}}
    storage.append_text(storage.join(workdir, HISTORY_FILE), json.dumps(entry) + "\n")
