"""Map a diffusers `UNet2DModel` state dict onto `UNet` params (e.g. `google/ddpm-cifar10-32`).

Conv kernels go OIHW -> HWIO, linear weights [out, in] -> [in, out]; diffusers' up block k is our level L-1-k.
Both current (`to_q`, `to_out.0`) and legacy (`query`, `proj_attn`) attention names are accepted.
"""
import re
from typing import Any

import numpy as np

_RES_LAYERS = {"norm1": "norm_0", "conv1": "conv_0", "time_emb_proj": "temb_proj", "norm2": "norm_1",
               "conv2": "conv_1", "conv_shortcut": "shortcut"}
_ATTN_LAYERS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_TOP_LAYERS = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out",
               "time_embedding.linear_1": "time_embed/dense_0", "time_embedding.linear_2": "time_embed/dense_1",
               "class_embedding": "class_embed"}
_RESAMPLERS = {"downsamplers": "downsample", "upsamplers": "upsample"}


def _module_path(layer: str, num_levels: int) -> str:
    """diffusers module path (without `.weight`/`.bias`) -> our module path 'a/b'."""
    if layer in _TOP_LAYERS:
        return _TOP_LAYERS[layer]
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|\w+samplers)\.(\d+)\.(.+)", layer)
    if m:
        kind, block, part, j, sub = m.groups()
        side, level = ("down", int(block)) if kind == "down_blocks" else ("up", num_levels - 1 - int(block))
        return _block_path(f"{side}_{level}_", part, int(j), sub)
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", layer)
    if m:
        part, j, sub = m.groups()
        return _block_path("mid_", part, int(j), sub, mid=True)
    raise KeyError(f"unknown diffusers UNet2DModel layer: {layer}")


def _block_path(prefix: str, part: str, j: int, sub: str, mid: bool = False) -> str:
    """Path of a layer inside one ResBlock, attention block or resampler."""
    if part == "resnets" and sub in _RES_LAYERS:
        return f"{prefix}res_{j}/{_RES_LAYERS[sub]}"
    if part == "attentions" and sub in _ATTN_LAYERS:
        return f"{prefix}attn{'' if mid else f'_{j}'}/{_ATTN_LAYERS[sub]}"
    if part in _RESAMPLERS and sub in ("conv", "Conv2d_0"):
        return f"{prefix}{_RESAMPLERS[part]}/conv"
    raise KeyError(f"unknown diffusers UNet2DModel layer: {prefix}{part}.{j}.{sub}")


def _convert_leaf(module: str, kind: str, value: np.ndarray, num_classes) -> tuple[str, np.ndarray]:
    """Rename and re-lay-out one tensor: ('weight'|'bias') -> ('kernel'|'scale'|'embedding'|'bias')."""
    value = np.asarray(value, np.float32)
    if kind == "bias":
        return "bias", value
    if value.ndim == 4:
        return "kernel", value.transpose(2, 3, 1, 0)
    if module == "class_embed":
        if num_classes is None or value.shape[0] not in (num_classes, num_classes + 1):
            raise ValueError(f"class embedding has {value.shape[0]} rows but UNet.num_classes is {num_classes}")
        null_rows = np.zeros((num_classes + 1 - value.shape[0], value.shape[1]), np.float32)
        return "embedding", np.concatenate([value, null_rows])
    if value.ndim == 2:
        return "kernel", value.T
    return "scale", value


def params_from_diffusers_state_dict(state_dict: dict[str, np.ndarray], config: Any) -> dict:
    """diffusers `UNet2DModel.state_dict()` (as numpy arrays) -> `{'params': ...}` for `config` (a `UNet`).

    A diffusers class embedding without a null row gets a zero row appended for label `config.num_classes`.
    """
    params: dict = {}
    for key, value in state_dict.items():
        layer, kind = key.rsplit(".", 1)
        module = _module_path(layer, len(config.ch_mult))
        name, array = _convert_leaf(module, kind, value, config.num_classes)
        node = params
        for part in module.split("/"):
            node = node.setdefault(part, {})
        node[name] = array
    return {"params": params}
