"""glibc malloc settings under which PyTorch on CPU times steadily; benchmarks re-execute themselves once with them,
so that JAX and PyTorch are timed in the same environment."""
import os
import sys

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "17179869184",
              "MALLOC_TOP_PAD_": "1073741824"}


def reexec_with_malloc_env(skip: bool) -> None:
    """Replace this process by itself with MALLOC_ENV set (adding --no-reexec), unless ``skip`` or already set."""
    if not skip and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable] + sys.argv + ["--no-reexec"], {**os.environ, **MALLOC_ENV})
