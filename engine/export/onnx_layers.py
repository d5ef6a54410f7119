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
from engine.export.qdq import _SAMPLE_BATCH, ExportError, _Builder, _emit_act, _emit_weight, _f32
from engine.plans.handlers import Handlers
from engine.plans.layers import QUANT_LAYERS, QuantLSTM

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
    if quant:
        x = _emit_act(b, x, qdq.act_params(mod.aq, _per_sample(in_shape), b.scope))
    wn = _emit_weight(b, "weight", mod.masked_weight() if quant else mod.weight, mod.wq if quant else None)
    y = b.op("Conv", [x, wn], "Conv", kernel_shape=_pair(mod.kernel_size), strides=_pair(mod.stride),
             pads=pads + pads, dilations=_pair(mod.dilation), group=mod.groups)
    return _bias(b, y, mod.bias, 3)


@BUILD.register(nn.LSTM, QuantLSTM)
def _lstm(b: _Builder, node, mod: nn.Module, x: str, in_shape: tuple[int, ...]):
    """A single-layer, batch-first LSTM unrolled over its (fixed) time steps, as the engine does."""
    if isinstance(mod, nn.LSTM):
        if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or mod.proj_size:
            raise ExportError(f"layer {b.scope!r}: only single-layer, unidirectional, batch-first LSTMs are exported")
        w_ih, w_hh = mod.weight_ih_l0, mod.weight_hh_l0
        bias = (mod.bias_ih_l0 + mod.bias_hh_l0) if mod.bias else None
        wq_ih = wq_hh = None
        p_x = p_h = None
    else:
        w_ih, w_hh = mod.masked("ih"), mod.masked("hh")
        bias = (mod.bias_ih + mod.bias_hh) if mod.bias_ih is not None else None
        wq_ih, wq_hh = mod.wq_ih, mod.wq_hh
        p_x = qdq.act_params(mod.aq, _per_sample(in_shape), b.scope)
        p_h = qdq.act_params(mod.aq_h, mod.hidden_size, b.scope)
    if len(in_shape) != 3:
        raise ExportError(f"layer {b.scope!r}: LSTM input must be (batch, time, features)")
    t_steps, hid = in_shape[1], mod.hidden_size
    xq = _emit_act(b, x, p_x, "aq")
    wih = _emit_weight(b, "weight_ih", w_ih, wq_ih, transpose=True)
    whh = _emit_weight(b, "weight_hh", w_hh, wq_hh, transpose=True)
    xs = b.op("MatMul", [xq, wih], "MatMul_ih")
    if bias is not None:
        xs = b.op("Add", [xs, b.const(f"{b.scope}.bias", _f32(bias))], "Add_bias")
    # zero initial state with the dynamic batch size: Expand(zeros(1, H), [B, H])
    shp = b.op("Shape", [x], "Shape", start=0, end=1)
    dims = b.op("Concat", [shp, b.const(f"{b.scope}.hidden", np.array([hid], np.int64))], "state_shape", axis=0)
    zeros = b.const(f"{b.scope}.zeros", np.zeros((1, hid), np.float32))
    h = c = b.op("Expand", [zeros, dims], "zero_state")
    split = b.const(f"{b.scope}.gate_split", np.array([hid] * 4, np.int64))
    outs = []
    for t in range(t_steps):
        xt = b.op("Gather", [xs, b.const(f"{b.scope}.t{t}", np.array(t, np.int64))], f"t{t}/Gather", axis=1)
        hq = _emit_act(b, h, p_h, f"t{t}/aq_h")
        gates = b.op("Add", [xt, b.op("MatMul", [hq, whh], f"t{t}/MatMul_hh")], f"t{t}/Add")
        i, f, g, o = b.op("Split", [gates, split], f"t{t}/Split", n_out=4, axis=1)
        fc = b.op("Mul", [b.op("Sigmoid", [f], f"t{t}/sig_f"), c], f"t{t}/Mul_fc")
        ig = b.op("Mul", [b.op("Sigmoid", [i], f"t{t}/sig_i"), b.op("Tanh", [g], f"t{t}/tanh_g")], f"t{t}/Mul_ig")
        c = b.op("Add", [fc, ig], f"t{t}/c")
        h = b.op("Mul", [b.op("Sigmoid", [o], f"t{t}/sig_o"), b.op("Tanh", [c], f"t{t}/tanh_c")], f"t{t}/h")
        outs.append(h)
    ax1 = b.const(f"{b.scope}.axis1", np.array([1], np.int64))
    ax0 = b.const(f"{b.scope}.axis0", np.array([0], np.int64))
    seq = b.op("Concat", [b.op("Unsqueeze", [o_, ax1], f"t{t}/Unsqueeze") for t, o_ in enumerate(outs)],
               "stack", axis=1)
    return (seq, (b.op("Unsqueeze", [h, ax0], "h_n"), b.op("Unsqueeze", [c, ax0], "c_n")))


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
