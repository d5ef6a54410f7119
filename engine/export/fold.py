"""Batch norm folded into the quantized convolution before it, so that a runtime sees the integer
pattern it fuses: DequantizeLinear(x), DequantizeLinear(w), DequantizeLinear(int32 bias) -> Conv.

onnxruntime fuses that pattern (followed by the next layer's QuantizeLinear) into one integer
convolution; a BatchNormalization between the Conv and the QuantizeLinear keeps it in float.
Folding keeps the weight codes (per output channel, the batch norm's factor moves into the
scale; a negative factor negates the channel's codes) and quantizes the folded bias to int32
at the accumulator's scale, as integer runtimes require. The codes may be multiplied by an
integer ``k`` (and the scale divided by it): the weights are unchanged, and the bias's rounding
step -- the one difference from the engine's float bias -- shrinks ``k`` times.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch.fx
import torch.nn as nn

from engine.export.qdq import ActQ, WeightQ, _f32

_INT32_SAFE = 2 ** 30
_PAIR_SAFE = 64    # |code| bound for int8 weights: u8s8 pair sums of 255 * 64 * 2 fit int16 (see qdq._weight_type)


@dataclass
class Folded:
    """A convolution's weight and bias with the batch norm after it folded in."""

    codes: np.ndarray       # int16 (values fit the storage type), shape of the weight
    scale: np.ndarray       # float32 (out_channels,); negative only where a channel keeps its codes (see fold)
    zero_point: int         # 0 (int8 storage) or 128 (uint8 storage)
    bias: np.ndarray        # int32 (out_channels,), at scale x_scale * scale
    bias_scale: np.ndarray  # float32 (out_channels,)
    slack: np.ndarray       # float32 (out_channels,): |folded - engine| bound from the bias rounding


def bn_after(gm: torch.fx.GraphModule, mods: dict[str, nn.Module]) -> dict[str, str]:
    """Convolution module -> the batch norm module that is its output's only user (and takes nothing
    else); ``mods``: the traced modules by name."""
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], nn.Conv2d) or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if (user.op == "call_module" and isinstance(mods[user.target], nn.BatchNorm2d)
                and user.args[0] is node and len(user.args) == 1 and not user.kwargs
                and mods[user.target].running_mean is not None):
            out[node.target] = user.target
    return out


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """(factor, shift) with bn(y) = factor * y + shift per channel, in float64."""
    var, mean = _f32(bn.running_var).astype(np.float64), _f32(bn.running_mean).astype(np.float64)
    c = bn.num_features
    gamma = _f32(bn.weight).astype(np.float64) if bn.weight is not None else np.ones(c)
    beta = _f32(bn.bias).astype(np.float64) if bn.bias is not None else np.zeros(c)
    factor = gamma / np.sqrt(var + bn.eps)
    return factor, beta - mean * factor


def fold(w: WeightQ, bias: np.ndarray | None, bn: nn.BatchNorm2d, x: ActQ) -> Folded | None:
    """The folded weight and int32 bias; None where the fold cannot be exact enough (a zero or
    non-finite scale, a bias beyond int32) and the batch norm should stay a node."""
    factor, shift = bn_affine(bn)
    c = len(factor)
    s = np.broadcast_to(np.asarray(w.scale, np.float64).reshape(-1), (c,)) * factor
    b = shift if bias is None else np.asarray(bias, np.float64) * factor + shift
    if not (np.all(np.isfinite(s)) and np.all(s != 0) and np.all(np.isfinite(b))):
        return None
    codes = w.codes.astype(np.int16)
    neg = s < 0
    flipped = np.where(neg.reshape(-1, *([1] * (codes.ndim - 1))), -codes, codes)
    if w.lo < -_PAIR_SAFE or w.hi > _PAIR_SAFE:
        # full-range codes: uint8 storage with zero point 128 holds -128..127; a channel whose
        # negation would reach +128 is rare (its code -128 in use): it keeps its codes and sign
        # in the scale instead.
        keep = neg & (codes.reshape(c, -1).min(axis=1) < -127)
        flipped[keep] = codes[keep]
        scale, k, zp = np.where(keep, s, np.abs(s)), 1, 128
    else:
        widest = max(int(np.abs(flipped).max()), 1)
        k = max(1, _PAIR_SAFE // widest)
        scale, zp = np.abs(s) / k, 0
    bias_scale = float(x.scale) * scale
    q = np.round(b / bias_scale)
    if np.abs(q).max() > _INT32_SAFE:
        return None
    return Folded((flipped * k).astype(np.int16), scale.astype(np.float32), zp, q.astype(np.int32),
                  bias_scale.astype(np.float32), (0.5 * np.abs(bias_scale) * (1 + 1e-6)).astype(np.float32))
