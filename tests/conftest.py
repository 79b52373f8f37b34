import os
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# A persistent JAX compilation cache shared by the test session and its subprocesses (CLI runs): the tiny models'
# programs compile once per machine instead of once per test. Set before JAX is imported; a user's setting wins.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "ddpm_jax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' programs are tiny and compile far longer than they run: XLA's CPU backend without LLVM optimisation
# compiles them about twice as fast (a cold default suite is mostly compilation). Subprocesses inherit it; tests that
# set their own XLA_FLAGS keep it with subprocess_xla_flags().
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()


def subprocess_xla_flags(*extra: str) -> str:
    """XLA_FLAGS for a test subprocess: the tests' compile setting plus ``extra`` (e.g. a host device count)."""
    return " ".join((TEST_XLA_FLAGS,) + extra)


def tiny_config(**overrides):
    """A config small enough to train a few steps in seconds on one CPU core (digits, 8x8)."""
    from ddpm_jax.default_config import base_config

    c = base_config()
    c.model.ch = 16
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (4,)
    c.model.num_groups = 8
    c.model.class_conditional = True
    c.training.cond_drop_prob = 0.2
    c.training.batch_size = 16
    c.training.num_steps = 4
    c.training.log_every = 2
    c.training.checkpoint_every = 2
    c.training.sample_every = 0
    c.optim.warmup_steps = 2
    c.sampling.num_steps = 5
    c.sampling.num_grid = 8
    c.sampling.batch_size = 8
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


@pytest.fixture
def tiny():
    return tiny_config


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer than ~1 minute on 2 CPU cores; run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# --- tiny text encoder (issue 16): tests that need *a* text encoder use this, not the hand-installed MiniLM wheel ---
@pytest.fixture(scope="session")
def tiny_encoder_path():
    """Folder of a random 2-layer, width-32 BERT with a caption vocabulary (tests/tiny_text_encoder.py), built once per
    session; pass it as ``config.text.encoder_path``."""
    from tiny_text_encoder import tiny_text_encoder_path

    return tiny_text_encoder_path()
