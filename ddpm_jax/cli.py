"""Checks of a command line's ``--config`` file and ``--config.KEY=VALUE`` overrides before absl parses them, so that
a missing file, a syntax error, a file without ``get_config`` or an unknown key is one line, not a traceback."""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Sequence


def _config_path(argv: Sequence[str]) -> Optional[str]:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def config_argv_error(argv: Sequence[str]) -> Optional[str]:
    """The one-line problem with the config file and overrides of ``argv``, or None."""
    path = _config_path(argv)
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if path is None:
        return "--config.KEY overrides need --config=FILE" if overrides else None
    path = path.split(":", 1)[0]  # ml_collections allows FILE:ARGS
    if not os.path.isfile(path):
        return f"config file {path} does not exist"
    try:
        spec = importlib.util.spec_from_file_location("_ddpm_jax_config_check", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except SyntaxError as e:
        return f"config file {path} has a syntax error at line {e.lineno}: {e.msg}"
    except Exception as e:  # whatever the file raises at import time
        return f"config file {path} failed to load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if not hasattr(module, "get_config"):
        return f"config file {path} has no get_config() function"
    try:
        config = module.get_config()
    except Exception as e:
        return f"{path}: get_config() failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    for key in overrides:
        node = config
        for part in key.split("."):
            try:
                node = node[part]
            except (KeyError, TypeError, AttributeError):
                return f"--config.{key}: {path} has no key {key!r}"
    return None


def check_config_argv(argv: Sequence[str] = None) -> None:
    """Exit with one line on stderr (status 1) when the command line's config cannot be loaded."""
    problem = config_argv_error(sys.argv[1:] if argv is None else argv)
    if problem:
        print(f"error: ConfigError: {problem}", file=sys.stderr)
        sys.exit(1)
