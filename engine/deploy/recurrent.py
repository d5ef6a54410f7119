"""The GRU in the packed deployment: its two gate GEMMs on the packed kernels, the gates in float.

``lower_gru`` (registered in ``kinds.LOWER`` for ``QuantGRU`` and ``nn.GRU``) packs the input and
recurrent matrices like any other GEMM (bit-serial, int8-dot, 2:4 or float-activation, from the
plan); ``run_gru`` is the executor's step loop (numpy, torch-free). The bias is stored as
``b_ih`` followed by ``b_hh`` (6H): the recurrent bias sits inside the reset gate's product,
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, so the two cannot be summed as the LSTM's are.
"""
from __future__ import annotations

import numpy as np

from engine.deploy.operands import DeployError
from engine.deploy.ops import _sigmoid


def run_gru(layer, x: np.ndarray):
    """(B, T, K) -> (outputs (B, T, H), h_n (1, B, H)) with zero initial state."""
    gi, gh = layer.gemms["ih"], layer.gemms["hh"]
    if x.ndim != 3 or x.shape[2] != gi.k:
        raise DeployError(f"layer {layer.name!r} expects (B, T, {gi.k}) input, got shape {tuple(x.shape)}")
    b, t, _ = x.shape
    hs = layer.hidden
    xs = gi(np.ascontiguousarray(x.reshape(b * t, -1), dtype=np.float32))
    b_hh = None
    if layer.bias is not None:
        np.add(xs, layer.bias[:3 * hs], out=xs)
        b_hh = layer.bias[3 * hs:]
    xs = xs.reshape(b, t, 3 * hs)
    h = np.zeros((b, hs), np.float32)
    outs = np.empty((b, t, hs), np.float32)
    mm, quant = gh.matmul_codes, gh.quantize
    for s in range(t):
        g = mm(quant(h))
        if b_hh is not None:
            g += b_hh
        xt = xs[:, s]
        rz = _sigmoid(xt[:, :2 * hs] + g[:, :2 * hs])
        n = np.tanh(xt[:, 2 * hs:] + rz[:, :hs] * g[:, 2 * hs:])
        z = rz[:, hs:]
        h = n + z * (h - n)          # (1 - z) * n + z * h
        outs[:, s] = h
    return outs, h[None]


def lower_gru(name, mod, cfg, per, threads):
    """A ``Layer`` of kind 'gru' from a quantized or float single-layer batch-first GRU."""
    import torch.nn as nn

    from engine.deploy.kinds import act_spec, make_gemm
    from engine.deploy.runtime import Layer
    where = f"layer {name!r}"
    if isinstance(mod, nn.GRU):
        if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first:
            raise DeployError(f"{where}: only single-layer, unidirectional, batch_first GRUs are supported")
        w_ih, w_hh, wq_ih, wq_hh, a_x, a_h = mod.weight_ih_l0, mod.weight_hh_l0, None, None, None, None
        biases = (mod.bias_ih_l0, mod.bias_hh_l0) if mod.bias else None
    else:
        a_x = act_spec(mod.aq, per.get(f"{name}.aq"), where, affine_ok=True)
        a_h = act_spec(mod.aq_h, per.get(f"{name}.aq_h"), where, affine_ok=True)
        w_ih, w_hh, wq_ih, wq_hh = mod.masked("ih"), mod.masked("hh"), mod.wq_ih, mod.wq_hh
        biases = (mod.bias_ih, mod.bias_hh) if mod.bias_ih is not None else None
    gi = make_gemm(f"{name}.ih", cfg, w_ih, wq_ih, a_x, threads=threads)
    gh = make_gemm(f"{name}.hh", cfg, w_hh, wq_hh, a_h, threads=threads)
    bias = (np.concatenate([t.detach().float().numpy() for t in biases]).astype(np.float32)
            if biases is not None else None)
    return Layer(name, "gru", {"ih": gi, "hh": gh}, bias, cfg.to_dict(), hidden=mod.hidden_size)
