"""The FID Inception-v3 network (Szegedy et al. 2016; Heusel et al. 2017), exactly pytorch-fid's `fid_inception_v3()`.

That is torchvision's `inception_v3(num_classes=1008, aux_logits=False)` with the blocks of the TF graph
`inception-2015-12-05` that FID was defined with: average pools that ignore padding (`count_include_pad=False`) in
Mixed_5b-d, Mixed_6b-e and Mixed_7b, and a *max* pool in Mixed_7c's pool branch. Every conv is bias-free and followed by
eval-mode BatchNorm (eps 1e-3) and ReLU; all paddings are PyTorch's explicit ones. NHWC. Module names are the PyTorch
names, so `params_from_torch_state_dict` only renames leaves and transposes kernels.
"""
import hashlib
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
CONVERT_COMMAND = "python -m ddpm_jax.evaluation.convert_inception pt_inception-2015-12-05-6726825d.pth OUT.npz"
BN_EPS = 1e-3
NUM_CLASSES = 1008


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, Sequence) else (v, v)


class BasicConv2d(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm(eps=1e-3, running stats) -> ReLU.

    An unpadded k > 1 conv is run padded by one row and column at the high end and cropped back to its unpadded
    output: the same numbers, but XLA:CPU (jax 0.10) runs unpadded convolutions 1.2-5x slower than padded ones."""
    features: int
    kernel: Any = 1
    stride: int = 1
    padding: Any = 0
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel, padding = _pair(self.kernel), _pair(self.padding)
        crop = kernel != (1, 1) and padding == (0, 0)
        pad = [(0, 1), (0, 1)] if crop else [(p, p) for p in padding]
        y = nn.Conv(self.features, kernel, self.stride, pad, use_bias=False, precision=self.precision, name="conv")(x)
        if crop:
            y = y[:, :(x.shape[1] - kernel[0]) // self.stride + 1, :(x.shape[2] - kernel[1]) // self.stride + 1]
        y = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(y)
        return nn.relu(y)


def _avg_pool_3x3(x: jnp.ndarray) -> jnp.ndarray:
    """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False): TF's average pool ignores the padding."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jnp.ndarray, stride: int, pad: int = 0) -> jnp.ndarray:
    """F.max_pool2d(x, 3, stride, padding=pad) (padding counts as -inf)."""
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """FIDInceptionA (Mixed_5b-d): 1x1, 5x5, double 3x3 and avg-pool branches."""
    pool_features: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
        b1 = conv(64, name="branch1x1")(x)
        b5 = conv(64, 5, padding=2, name="branch5x5_2")(conv(48, name="branch5x5_1")(x))
        b3 = conv(64, name="branch3x3dbl_1")(x)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(conv(96, 3, padding=1, name="branch3x3dbl_2")(b3))
        bp = conv(self.pool_features, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """torchvision InceptionB (Mixed_6a): grid reduction 35 -> 17."""
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
        b3 = conv(384, 3, stride=2, name="branch3x3")(x)
        bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(conv(64, name="branch3x3dbl_1")(x))
        bd = conv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC (Mixed_6b-e): factorised 7x7 branches and an avg-pool branch."""
    channels_7x7: int
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
        c7 = self.channels_7x7
        b1 = conv(192, name="branch1x1")(x)
        b7 = conv(c7, name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, name="branch7x7dbl_1")(x)
        for i, (k, p) in enumerate([((7, 1), (3, 0)), ((1, 7), (0, 3))] * 2):
            bd = conv(192 if i == 3 else c7, k, padding=p, name=f"branch7x7dbl_{i + 2}")(bd)
        bp = conv(192, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """torchvision InceptionD (Mixed_7a): grid reduction 17 -> 8."""
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
        b3 = conv(320, 3, stride=2, name="branch3x3_2")(conv(192, name="branch3x3_1")(x))
        b7 = conv(192, name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (Mixed_7b, avg pool) or FIDInceptionE_2 (Mixed_7c, `max_pool=True`: the TF graph's quirk)."""
    max_pool: bool = False
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x):
        conv = lambda *a, **k: BasicConv2d(*a, precision=self.precision, **k)
        split = lambda h, n: jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name=f"{n}a")(h),
                                              conv(384, (3, 1), padding=(1, 0), name=f"{n}b")(h)], axis=-1)
        b1 = conv(320, name="branch1x1")(x)
        b3 = split(conv(384, name="branch3x3_1")(x), "branch3x3_2")
        bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(conv(448, name="branch3x3dbl_1")(x))
        bd = split(bd, "branch3x3dbl_3")
        pooled = _max_pool_3x3(x, 1, pad=1) if self.max_pool else _avg_pool_3x3(x)
        bp = conv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3FID(nn.Module):
    """pytorch-fid's FID Inception. Input: [B, 299, 299, 3] float in [-1, 1] (2x - 1 of [0, 1] images, already
    resized). Returns {'pool3': [B, 2048] global average pool (FID features), 'logits': [B, 1008] fc output (IS)}."""
    precision: Any = "highest"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> dict:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3FID expects [B, H, W, 3] images, got {x.shape}")
        p = dict(precision=self.precision)
        x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3", **p)(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **p)(x)
        x = _max_pool_3x3(BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **p)(x), 2)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **p)(x)
        x = _max_pool_3x3(BasicConv2d(192, 3, name="Conv2d_4a_3x3", **p)(x), 2)
        for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(pool_features, name=name, **p)(x)
        x = InceptionB(name="Mixed_6a", **p)(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name, **p)(x)
        x = InceptionD(name="Mixed_7a", **p)(x)
        x = InceptionE(name="Mixed_7b", **p)(x)
        x = InceptionE(max_pool=True, name="Mixed_7c", **p)(x)
        pool3 = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(pool3)
        return {"pool3": pool3, "logits": logits}


_LEAVES = {("conv", "weight"): ("params", "kernel"), ("bn", "weight"): ("params", "scale"),
           ("bn", "bias"): ("params", "bias"), ("bn", "running_mean"): ("batch_stats", "mean"),
           ("bn", "running_var"): ("batch_stats", "var"), ("fc", "weight"): ("params", "kernel"),
           ("fc", "bias"): ("params", "bias")}


def variable_shapes() -> dict:
    """ShapeDtypeStructs of the variables {'params', 'batch_stats'} of `InceptionV3FID` (no FLOPs)."""
    init = lambda: InceptionV3FID().init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
    return jax.eval_shape(init)


def params_from_torch_state_dict(state_dict: dict) -> dict:
    """Map a pytorch-fid `fid_inception_v3()` state dict (name -> array) onto our variables {'params',
    'batch_stats'}: conv OIHW -> HWIO, fc [out, in] -> [in, out]; BatchNorm is kept, not folded. Every tensor must be
    used and every variable filled, with matching shapes (`num_batches_tracked` is ignored)."""
    expected = variable_shapes()
    out = jax.tree_util.tree_map(lambda _: None, expected)
    for name, value in state_dict.items():
        *path, layer, kind = name.split(".")
        if kind == "num_batches_tracked":
            continue
        key = (layer, kind)
        if key not in _LEAVES:
            raise KeyError(f"unknown FID Inception tensor: {name}")
        collection, leaf = _LEAVES[key]
        value = np.asarray(value, np.float32)
        value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value
        node_expected, node_out = expected[collection], out[collection]
        for part in path + [layer]:
            if part not in node_expected:
                raise KeyError(f"unknown FID Inception tensor: {name}")
            node_expected, node_out = node_expected[part], node_out[part]
        if node_expected[leaf].shape != value.shape:
            raise ValueError(f"{name}: shape {value.shape} after transpose, expected {node_expected[leaf].shape}")
        node_out[leaf] = jnp.asarray(value)
    missing = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(
        out, is_leaf=lambda v: v is None) if v is None]
    if missing:
        raise KeyError(f"state dict lacks {len(missing)} FID Inception tensors, e.g. {missing[0]}")
    return out


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a `.pth` state dict with torch (CPU, weights only) as numpy arrays."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path} is a PyTorch file and torch is not importable here; convert it where torch is "
                          f"installed: {CONVERT_COMMAND}") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state.items()}


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


SOURCE_KEY = "__source_sha256__"  # the converted .npz records the sha256 of the .pth it came from


def weights_sha256(path: str) -> str:
    """The one hash of FID Inception weights: the sha256 of pytorch-fid's .pth, also for our .npz converted from it
    (which records it), so stats files made from either file match; a .npz without the record hashes itself."""
    if path.endswith(".npz"):
        with np.load(path) as data:
            if SOURCE_KEY in data.files:
                return str(data[SOURCE_KEY])
    return sha256_of(path)


def load_inception_params(path: str) -> dict:
    """Variables for `InceptionV3FID` from our converted `.npz` (keys = pytorch-fid state-dict names) or directly
    from pytorch-fid's `.pth` when torch is importable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found: {path}; download {WEIGHTS_URL} where you have network, then run "
            f"{CONVERT_COMMAND} and pass OUT.npz")
    if path.endswith((".pth", ".pt")):
        return params_from_torch_state_dict(read_torch_state_dict(path))
    with np.load(path) as data:
        return params_from_torch_state_dict({k: data[k] for k in data.files if k != SOURCE_KEY})
