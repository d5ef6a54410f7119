"""How each layer kind is written as ONNX: handlers registered in ``BUILD`` by module type.

Most specific class wins (``QuantLinear`` and ``nn.Linear`` share the linear handler); a new kind
is one more registered function. Quantized numbers come from ``qdq.act_params`` /
``qdq.weight_params``, i.e. the quantizers' ``spec``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.export import qdq
from engine.export.fold import fold
from engine.export.qdq import _SAMPLE_BATCH, ExportError, _Builder, _emit_act, _emit_weight, _f32
from engine.plans.handlers import Handlers
from engine.plans.layers import QUANT_LAYERS

BUILD = Handlers("ONNX export")
"""Module type -> fn(b, node, mod, x, in_shape) -> ONNX tensor name (or a tuple of them)."""


def _shape(node) -> tuple[int, ...]:
    tm = node.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        raise ExportError(f"no static shape for {node.name!r}")
    return tuple(tm.shape)


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


def _reshape(b: _Builder, x: str, node) -> str:
    out = _shape(node)
    if not out or out[0] != _SAMPLE_BATCH or _shape(node.args[0])[0] != _SAMPLE_BATCH:
        raise ExportError(f"{node.name!r}: reshapes that move the batch dimension are not exported")
    return b.op("Reshape", [x, b.const(f"{node.name}.shape", np.array([-1, *out[1:]], np.int64))], node.name)


def _quantized(mod) -> bool:
    return isinstance(mod, QUANT_LAYERS)


@BUILD.register(nn.Linear)
def _linear(b: _Builder, node, mod: nn.Linear, x: str, in_shape: tuple[int, ...]) -> str:
    quant = _quantized(mod)
    if quant:
        x = _emit_act(b, x, qdq.act_params(mod.aq, _per_sample(in_shape), b.scope))
        w = mod.masked_weight()
    else:
        w = mod.weight
    if len(in_shape) == 2:
        wn = _emit_weight(b, "weight", w, mod.wq if quant else None)
        y = b.op("Gemm", [x, wn], "Gemm", transB=1)
    else:
        wn = _emit_weight(b, "weight", w, mod.wq if quant else None, transpose=True)
        y = b.op("MatMul", [x, wn], "MatMul")
    return _bias(b, y, mod.bias, 1)


def _bias(b: _Builder, y: str, bias, trailing: int) -> str:
    """Add a float bias after the product (a separate Add, so that runtimes do not requantize
    it to int32 the way a bias input of a QDQ Gemm/Conv is: the engine's bias is float)."""
    if bias is None:
        return y
    arr = _f32(bias).reshape(-1, *([1] * (trailing - 1)))
    return b.op("Add", [y, b.const(f"{b.scope}.bias", arr)], "Add_bias")


@BUILD.register(nn.Conv2d)
def _conv(b: _Builder, node, mod: nn.Conv2d, x: str, in_shape: tuple[int, ...]) -> str:
    if mod.padding_mode != "zeros":
        raise ExportError(f"layer {b.scope!r}: padding_mode={mod.padding_mode!r} is not exported (only 'zeros')")
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            pads = [0, 0]
        else:
            k, d = _pair(mod.kernel_size), _pair(mod.dilation)
            tot = [di * (ki - 1) for ki, di in zip(k, d)]
            if any(t % 2 for t in tot):
                raise ExportError(f"layer {b.scope!r}: padding='same' with an even kernel is not exported")
            pads = [t // 2 for t in tot]
    else:
        pads = _pair(mod.padding)
    quant = _quantized(mod)
    attrs = dict(kernel_shape=_pair(mod.kernel_size), strides=_pair(mod.stride), pads=pads + pads,
                 dilations=_pair(mod.dilation), group=mod.groups)
    if quant:
        px = qdq.act_params(mod.aq, _per_sample(in_shape), b.scope)
        x = _emit_act(b, x, px)
        folded = _folded_conv(b, mod, x, px, attrs)
        if folded is not None:
            return folded
    wn = _emit_weight(b, "weight", mod.masked_weight() if quant else mod.weight, mod.wq if quant else None)
    y = b.op("Conv", [x, wn], "Conv", **attrs)
    return _bias(b, y, mod.bias, 3)


def _folded_conv(b: _Builder, mod, x: str, px, attrs: dict) -> str | None:
    """The convolution with the batch norm after it folded in (``fold``), where that is possible:
    a QDQ-quantized input and weight. None leaves the batch norm to its own node."""
    from onnx import TensorProto as T
    bn_name = b.bn_after.get(b.scope)
    if bn_name is None or px is None or px.kind != "qdq":
        return None
    pw = qdq.weight_params(mod.wq, mod.masked_weight(), b.scope)
    if pw is None:
        return None
    f = fold(pw, None if mod.bias is None else _f32(mod.bias), b.modules[bn_name], px)
    if f is None:
        return None
    wn = qdq.emit_codes(b, "weight", f.codes, f.scale, T.UINT8 if f.zero_point else T.INT8, f.zero_point)
    bq = b.const(f"{b.scope}.bias_quantized", f.bias)
    bs = b.const(f"{b.scope}.bias_scale", f.bias_scale)
    bz = b.const(f"{b.scope}.bias_zero_point", np.zeros(f.bias.shape, np.int32))
    bn = b.op("DequantizeLinear", [bq, bs, bz], "bias/DequantizeLinear", axis=0)
    b.folded[bn_name] = b.scope
    b.slack[b.scope] = f.slack
    return b.op("Conv", [x, wn, bn], "Conv", **attrs)


def _per_sample(shape: tuple[int, ...]) -> int:
    n = 1
    for d in (shape[1:] if len(shape) > 1 else shape):
        n *= d
    return n


@BUILD.register(nn.BatchNorm1d, nn.BatchNorm2d)
def _bn(b: _Builder, node, mod: nn.modules.batchnorm._BatchNorm, x: str, in_shape) -> str:
    if mod.running_mean is None:
        raise ExportError(f"layer {b.scope!r}: batch norm without running statistics is not exported")
    c = mod.num_features
    w = _f32(mod.weight) if mod.weight is not None else np.ones(c, np.float32)
    bias = _f32(mod.bias) if mod.bias is not None else np.zeros(c, np.float32)
    ins = [x, b.const(f"{b.scope}.weight", w), b.const(f"{b.scope}.bias", bias),
           b.const(f"{b.scope}.running_mean", _f32(mod.running_mean)),
           b.const(f"{b.scope}.running_var", _f32(mod.running_var))]
    return b.op("BatchNormalization", ins, "BatchNormalization", epsilon=float(mod.eps))


def _pool(b: _Builder, x: str, kind: str, kernel, stride, padding, dilation=1, ceil_mode=False,
          count_include_pad=True) -> str:
    k = _pair(kernel)
    s = _pair(stride if stride not in (None, []) else kernel)
    p = _pair(padding)
    attrs = dict(kernel_shape=k, strides=s, pads=p + p, ceil_mode=int(bool(ceil_mode)))
    if kind == "MaxPool":
        attrs["dilations"] = _pair(dilation)
    else:
        attrs["count_include_pad"] = int(bool(count_include_pad))
    return b.op(kind, [x], kind, **attrs)


_UNARY = {F.relu: "Relu", torch.relu: "Relu", torch.sigmoid: "Sigmoid", torch.tanh: "Tanh"}


def _unary_module(op: str):
    return lambda b, node, mod, x, in_shape: b.op(op, [x], op)


BUILD.register(nn.ReLU)(_unary_module("Relu"))
BUILD.register(nn.Sigmoid)(_unary_module("Sigmoid"))
BUILD.register(nn.Tanh)(_unary_module("Tanh"))
BUILD.register(nn.Identity, nn.Dropout)(lambda b, node, mod, x, in_shape: x)


@BUILD.register(nn.MaxPool2d)
def _max_pool(b, node, mod, x, in_shape):
    return _pool(b, x, "MaxPool", mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)


@BUILD.register(nn.AvgPool2d)
def _avg_pool(b, node, mod, x, in_shape):
    return _pool(b, x, "AveragePool", mod.kernel_size, mod.stride, mod.padding, 1, mod.ceil_mode,
                 mod.count_include_pad)


@BUILD.register(nn.AdaptiveAvgPool2d)
def _adaptive_avg_pool(b, node, mod, x, in_shape):
    if _pair(mod.output_size) != [1, 1]:
        raise no_export(node, mod)
    return b.op("GlobalAveragePool", [x], "GlobalAveragePool")


@BUILD.register(nn.Flatten)
def _flatten(b, node, mod, x, in_shape):
    return _reshape(b, x, node)


def no_export(node, mod) -> ExportError:
    return ExportError(f"layer {node.target!r} ({type(mod).__name__}) has no ONNX export in bitscape")


def build_module(b: _Builder, node, mod: nn.Module, x):
    """The ONNX of one module call, by the handler registered for its type."""
    in_shape = _shape(node.args[0])
    fn = BUILD.lookup(mod)
    if fn is None:
        raise no_export(node, mod)
    return fn(b, node, mod, x, in_shape)
