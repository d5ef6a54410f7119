"""LSTM and GRU as ONNX: unrolled over their (fixed) time steps into Gemm + QDQ nodes, as the engine runs them.

Registered in ``onnx_layers.BUILD``. The input matrix runs once over all time steps
(``x @ W_ih^T + b``, the sequence folded into the batch), the recurrent one each step on the
quantized hidden state. Both products are ``Gemm`` nodes on 2-D operands: onnxruntime rewrites a
``DequantizeLinear`` weight feeding a ``MatMul`` with float activations into ``MatMulNBits``, which
quantizes the activations to 8 bits on the fly (its default accuracy level), so weight-only plans
would no longer compute what the engine computes. The gates follow torch: LSTM (i, f, g, o);
GRU r and z from the summed halves and the candidate ``tanh(x_n + r * (W_hn h + b_hn))``.
"""
from __future__ import annotations

import numpy as np
import torch.nn as nn

from engine.export import qdq
from engine.export.onnx_layers import BUILD, _per_sample
from engine.export.qdq import ExportError, _Builder, _emit_act, _emit_weight, _f32
from engine.plans.layers import QuantGRU, QuantLSTM


def _parts(b: _Builder, mod, in_shape, kind: str):
    """(w_ih, w_hh, b_ih, b_hh, wq_ih, wq_hh, act_x, act_h) of a float or quantized LSTM/GRU."""
    if len(in_shape) != 3:
        raise ExportError(f"layer {b.scope!r}: {kind} input must be (batch, time, features)")
    if isinstance(mod, nn.RNNBase):
        if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or getattr(mod, "proj_size", 0):
            raise ExportError(f"layer {b.scope!r}: only single-layer, unidirectional, batch-first {kind}s "
                              "without projection are exported")
        b_ih, b_hh = (mod.bias_ih_l0, mod.bias_hh_l0) if mod.bias else (None, None)
        return mod.weight_ih_l0, mod.weight_hh_l0, b_ih, b_hh, None, None, None, None
    return (mod.masked("ih"), mod.masked("hh"), mod.bias_ih, mod.bias_hh, mod.wq_ih, mod.wq_hh,
            qdq.act_params(mod.aq, _per_sample(in_shape), b.scope),
            qdq.act_params(mod.aq_h, mod.hidden_size, b.scope))


def _input_projection(b: _Builder, x: str, p_x, w_ih, wq_ih, bias, t_steps: int, gates: int) -> str:
    """(B, T, K) -> (B, T, G*H): one Gemm over the time steps folded into the batch (reshaped before
    the activation's QDQ pair, so that the pair feeds the Gemm directly)."""
    k, n = int(w_ih.shape[1]), int(w_ih.shape[0])
    flat = b.op("Reshape", [x, b.const(f"{b.scope}.flat", np.array([-1, k], np.int64))], "Reshape_in")
    xs = b.op("Gemm", [_emit_act(b, flat, p_x, "aq"), _emit_weight(b, "weight_ih", w_ih, wq_ih)], "Gemm_ih",
              transB=1)
    if bias is not None:   # a separate Add, as everywhere in the export: the engine's bias is float
        xs = b.op("Add", [xs, b.const(f"{b.scope}.bias_ih", _f32(bias))], "Add_bias_ih")
    return b.op("Reshape", [xs, b.const(f"{b.scope}.seq", np.array([-1, t_steps, n], np.int64))], "Reshape_out")


def _zero_state(b: _Builder, x: str, hid: int) -> str:
    """zeros(B, H) with the dynamic batch size: Expand(zeros(1, H), [B, H])."""
    shp = b.op("Shape", [x], "Shape", start=0, end=1)
    dims = b.op("Concat", [shp, b.const(f"{b.scope}.hidden", np.array([hid], np.int64))], "state_shape", axis=0)
    return b.op("Expand", [b.const(f"{b.scope}.zeros", np.zeros((1, hid), np.float32)), dims], "zero_state")


def _stack(b: _Builder, outs: list[str]) -> str:
    ax1 = b.const(f"{b.scope}.axis1", np.array([1], np.int64))
    return b.op("Concat", [b.op("Unsqueeze", [o, ax1], f"t{t}/Unsqueeze") for t, o in enumerate(outs)],
                "stack", axis=1)


def _unsqueeze0(b: _Builder, x: str, name: str) -> str:
    return b.op("Unsqueeze", [x, b.const(f"{b.scope}.{name}.axis0", np.array([0], np.int64))], name)


def _step(b: _Builder, xs: str, t: int) -> str:
    return b.op("Gather", [xs, b.const(f"{b.scope}.t{t}", np.array(t, np.int64))], f"t{t}/Gather", axis=1)


@BUILD.register(nn.LSTM, QuantLSTM)
def _lstm(b: _Builder, node, mod: nn.Module, x: str, in_shape: tuple[int, ...]):
    """A single-layer, batch-first LSTM unrolled over time; returns (outputs, (h_n, c_n))."""
    w_ih, w_hh, b_ih, b_hh, wq_ih, wq_hh, p_x, p_h = _parts(b, mod, in_shape, "LSTM")
    t_steps, hid = in_shape[1], mod.hidden_size
    bias = (b_ih + b_hh) if b_ih is not None else None
    xs = _input_projection(b, x, p_x, w_ih, wq_ih, bias, t_steps, 4)
    whh = _emit_weight(b, "weight_hh", w_hh, wq_hh)
    h = c = _zero_state(b, x, hid)
    split = b.const(f"{b.scope}.gate_split", np.array([hid] * 4, np.int64))
    outs = []
    for t in range(t_steps):
        hh = b.op("Gemm", [_emit_act(b, h, p_h, f"t{t}/aq_h"), whh], f"t{t}/Gemm_hh", transB=1)
        gates = b.op("Add", [_step(b, xs, t), hh], f"t{t}/Add")
        i, f, g, o = b.op("Split", [gates, split], f"t{t}/Split", n_out=4, axis=1)
        fc = b.op("Mul", [b.op("Sigmoid", [f], f"t{t}/sig_f"), c], f"t{t}/Mul_fc")
        ig = b.op("Mul", [b.op("Sigmoid", [i], f"t{t}/sig_i"), b.op("Tanh", [g], f"t{t}/tanh_g")], f"t{t}/Mul_ig")
        c = b.op("Add", [fc, ig], f"t{t}/c")
        h = b.op("Mul", [b.op("Sigmoid", [o], f"t{t}/sig_o"), b.op("Tanh", [c], f"t{t}/tanh_c")], f"t{t}/h")
        outs.append(h)
    return _stack(b, outs), (_unsqueeze0(b, h, "h_n"), _unsqueeze0(b, c, "c_n"))


@BUILD.register(nn.GRU, QuantGRU)
def _gru(b: _Builder, node, mod: nn.Module, x: str, in_shape: tuple[int, ...]):
    """A single-layer, batch-first GRU unrolled over time; returns (outputs, h_n)."""
    w_ih, w_hh, b_ih, b_hh, wq_ih, wq_hh, p_x, p_h = _parts(b, mod, in_shape, "GRU")
    t_steps, hid = in_shape[1], mod.hidden_size
    xs = _input_projection(b, x, p_x, w_ih, wq_ih, b_ih, t_steps, 3)
    whh = _emit_weight(b, "weight_hh", w_hh, wq_hh)
    bhh = b.const(f"{b.scope}.bias_hh", _f32(b_hh)) if b_hh is not None else None
    h = _zero_state(b, x, hid)
    split = b.const(f"{b.scope}.gate_split", np.array([hid] * 3, np.int64))
    one = b.const(f"{b.scope}.one", np.float32(1.0))
    outs = []
    for t in range(t_steps):
        gh = b.op("Gemm", [_emit_act(b, h, p_h, f"t{t}/aq_h"), whh], f"t{t}/Gemm_hh", transB=1)
        if bhh is not None:
            gh = b.op("Add", [gh, bhh], f"t{t}/Add_bias_hh")
        xr, xz, xn = b.op("Split", [_step(b, xs, t), split], f"t{t}/Split_x", n_out=3, axis=1)
        hr, hz, hn = b.op("Split", [gh, split], f"t{t}/Split_h", n_out=3, axis=1)
        r = b.op("Sigmoid", [b.op("Add", [xr, hr], f"t{t}/Add_r")], f"t{t}/sig_r")
        z = b.op("Sigmoid", [b.op("Add", [xz, hz], f"t{t}/Add_z")], f"t{t}/sig_z")
        n = b.op("Tanh", [b.op("Add", [xn, b.op("Mul", [r, hn], f"t{t}/Mul_rh")], f"t{t}/Add_n")], f"t{t}/tanh_n")
        keep = b.op("Mul", [b.op("Sub", [one, z], f"t{t}/Sub_z"), n], f"t{t}/Mul_n")
        h = b.op("Add", [keep, b.op("Mul", [z, h], f"t{t}/Mul_zh")], f"t{t}/h")
        outs.append(h)
    return _stack(b, outs), _unsqueeze0(b, h, "h_n")
