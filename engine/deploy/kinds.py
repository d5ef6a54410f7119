"""GEMM layer kinds for the packed deployment: how each torch layer type lowers to a ``Layer``.

Each kind is one function registered in ``LOWER`` for its module types (most specific class wins,
so ``QuantLinear`` and plain ``nn.Linear`` share the linear handler); supporting a new kind means
registering one more handler here and giving ``runtime.Layer`` a ``_<kind>`` method. The integer
codes and scales come from the quantizers' ``spec`` (``engine.quant.spec.QuantSpec``) only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from engine import kernels as K
from engine.deploy.operands import ActSpec, DeployError, Gemm, bits_for
from engine.deploy.recurrent import lower_gru
from engine.deploy.runtime import Layer, ifog
from engine.plans.handlers import Handlers
from engine.plans.layers import QUANT_LAYERS, QuantGRU, QuantLSTM
from engine.plans.plan import LayerConfig
from engine.quant.spec import Uncalibrated

LOWER = Handlers("packed deployment")
"""Module type -> fn(name, mod, cfg, per, threads) -> Layer."""


def is_layer(mod) -> bool:
    """A GEMM layer of the deployment: a registered kind, or a quantized layer (refused if unregistered)."""
    return mod in LOWER or isinstance(mod, QUANT_LAYERS)


def lower_layer(name, mod, cfg, per, threads) -> Layer:
    fn = LOWER.lookup(mod)
    if fn is None:
        raise DeployError(f"layer {name!r}: {type(mod).__name__} is not supported by the packed deployment")
    return fn(name, mod, cfg or LayerConfig(), per, threads)


# ---- operands from the quantizers' specs -------------------------------------------------

def act_spec(aq, per: int | None, where: str, affine_ok: bool) -> ActSpec | None:
    """The runtime's activation quantizer from ``aq.spec`` (None: activations stay float)."""
    try:
        q = aq.spec(per_sample=per)
    except Uncalibrated:
        raise DeployError(f"{where}: its activation quantizer was never calibrated") from None
    except ValueError:
        raise DeployError(f"{where}: its activation quantizer did not run on a sample input") from None
    if q is None:
        return None
    step = float(q.step)
    if q.method == "wrpn":
        ub, us = bits_for(q.qmin, q.qmax)
        return ActSpec("wrpn", q.bits, q.signed, step, n=q.divisor, lo=float(q.qmin // q.divisor),
                       bits=ub, u_signed=us)
    q_n, q_p = -q.qmin, q.qmax
    if q.binary:
        if affine_ok:
            return ActSpec("lsq", q.bits, q.signed, step, q_n, q_p, binary=True, bits=1, u_signed=False, p=2, q=-1)
        return ActSpec("lsq", q.bits, q.signed, step, q_n, q_p, binary=True, bits=2, u_signed=True)
    ub, us = bits_for(-q_n, q_p)
    return ActSpec("lsq", q.bits, q.signed, step, q_n, q_p, bits=ub, u_signed=us)


@torch.no_grad()
def weight_codes(w, wq, where: str):
    """(codes int64 (N, K...), per-row float32 scale) from ``wq.spec(w)``, checked against ``wq(w)``."""
    q = wq.spec(w)
    n = w.shape[0]
    scale = q.scale.float()
    scale = scale.expand(n).clone() if scale.dim() == 0 else scale
    codes = q.codes
    rows = wq(w).detach().float().reshape(n, -1)
    err = (codes.reshape(n, -1) * scale[:, None] - rows).abs().max()
    tol = 1e-5 * float(rows.abs().max()) + 1e-12
    if float(err) > tol:
        raise DeployError(f"{where}: its quantized weights are not integer multiples of one scale per "
                          f"output channel (error {float(err):.3g}); cannot pack them")
    return codes.to(torch.int64).numpy(), scale.numpy().astype(np.float32)


def make_gemm(name, cfg, w_float, wq, act, k_order=None, threads=1, rows=None) -> Gemm:
    """One Gemm from a (N, K...) torch weight (mask applied) and its quantizer; ``k_order`` permutes
    a conv weight to (N, kh, kw, C) before flattening K; ``rows`` reorders the output rows."""
    n = w_float.shape[0]
    perm = (lambda t: t.permute(*k_order)) if k_order else (lambda t: t)
    if wq is None or not wq.active:
        wf = perm(w_float.detach().float()).reshape(n, -1).contiguous().numpy().astype(np.float32)
        if rows is not None:
            wf = np.ascontiguousarray(wf[rows])
        note = f"{cfg.sparsity} zeros stored dense in float" if cfg.sparsity != "none" else ""
        return Gemm(name, "float", n, wf.shape[1], act, w_float=wf, note=note, threads=threads)
    codes, scale = weight_codes(w_float, wq, f"layer {name!r}")
    return _gemm_from_codes(name, cfg, codes, scale, act, k_order, threads, rows)


def _gemm_from_codes(name, cfg, codes, scale, act, k_order=None, threads=1, rows=None) -> Gemm:
    """``make_gemm`` from integer weight codes (N, K...) and their per-row scales."""
    n = codes.shape[0]
    perm = (lambda t: t.permute(*k_order)) if k_order else (lambda t: t)
    codes = perm(torch.from_numpy(codes)).reshape(n, -1).contiguous().numpy()
    if rows is not None:
        codes, scale = np.ascontiguousarray(codes[rows]), np.ascontiguousarray(scale[rows])
    kk = codes.shape[1]
    lo, hi = int(codes.min()), int(codes.max())
    w_p, w_q = 1, 0
    if int(cfg.w_bits) == 1 and set(np.unique(codes).tolist()) <= {-1, 1}:
        u, bits, signed, w_p, w_q = (codes + 1) // 2, 1, False, 2, -1
    else:
        bits, signed = bits_for(min(lo, 0), max(hi, 0))
        u = codes
    if bits > 8:
        raise DeployError(f"layer {name!r}: its weight codes span [{lo}, {hi}], wider than 8 bits")
    note = ""
    if act is None:
        kernel = "float-act"
        if cfg.sparsity != "none":
            note = f"{cfg.sparsity} zeros stored dense: the float-activation kernel has no sparse path"
    else:
        nm = cfg.nm
        kernel = None
        if nm and nm[1] == 4 and nm[0] <= 2:
            try:
                packed = K.pack_nm(u, bits, signed)
                kernel = "nm"
            except ValueError as e:
                note = f"{cfg.sparsity} not used: the quantized codes are not 2:4 ({e})"
        elif nm:
            note = f"{cfg.sparsity} runs dense: only 2:4 has a compressed kernel"
        elif cfg.sparsity == "unstructured":
            note = "unstructured sparsity runs dense (zeros stored)"
        if kernel is None:
            kernel = "bitserial" if (int(cfg.w_bits) <= 2 and int(cfg.a_bits) <= 2) else "int8"
    if kernel == "int8" and w_p == 2:
        # {-1, +1} as signed 2-bit codes: still one 4-bit digit on the int8 kernel, and no per-call
        # correction (the {0, 1} bits + 2u - 1 rewrite only pays off on the bit-serial planes)
        u, bits, signed, w_p, w_q = codes, 2, True, 1, 0
    if kernel != "nm":
        layout = {"bitserial": "planes", "int8": "int8", "float-act": "float"}[kernel]
        packed = K.pack_weights(u, bits, signed, layout)
    return Gemm(name, kernel, n, kk, act, packed=packed, w_scale=scale, w_p=w_p, w_q=w_q,
                w_bits=int(cfg.w_bits), note=note, threads=threads)




# ---- the kinds ----------------------------------------------------------------------------

def _bias(t) -> np.ndarray | None:
    return t.detach().float().numpy().copy() if t is not None else None


def _quantized(mod) -> bool:
    return isinstance(mod, QUANT_LAYERS)


@LOWER.register(nn.Linear)
def linear(name, mod, cfg, per, threads) -> Layer:
    q = _quantized(mod)
    act = act_spec(mod.aq, per.get(f"{name}.aq"), f"layer {name!r}", affine_ok=True) if q else None
    w = mod.masked_weight() if q else mod.weight
    g = make_gemm(name, cfg, w, mod.wq if q else None, act, threads=threads)
    return Layer(name, "linear", {"w": g}, _bias(mod.bias), cfg.to_dict())


@LOWER.register(nn.Conv2d)
def conv2d(name, mod, cfg, per, threads) -> Layer:
    where = f"layer {name!r}"
    if tuple(mod.dilation) != (1, 1):
        raise DeployError(f"{where}: dilated convolution is not supported")
    if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
        raise DeployError(f"{where}: padding {mod.padding!r} / mode {mod.padding_mode!r} is not supported "
                          "(integer zero padding only)")
    q = _quantized(mod)
    act = act_spec(mod.aq, per.get(f"{name}.aq"), where, affine_ok=False) if q else None
    w = mod.masked_weight() if q else mod.weight
    conv = {"kernel_size": list(mod.kernel_size), "stride": list(mod.stride), "padding": list(mod.padding),
            "in_channels": mod.in_channels}
    if mod.groups == mod.in_channels == mod.out_channels and mod.groups > 1:
        g = make_depthwise(name, cfg, w, mod.wq if q else None, act, threads)
        return Layer(name, "dwconv2d", {"w": g}, _bias(mod.bias), cfg.to_dict(), conv=conv)
    if mod.groups > 1:   # one GEMM per group, on its slice of the input and output channels
        n = mod.out_channels // mod.groups
        wq = mod.wq if q else None
        gemms = {}
        codes = scale = None
        if wq is not None and wq.active:   # the quantizer's per-channel codes and scales, sliced per group
            codes, scale = weight_codes(w, wq, where)
        for i in range(mod.groups):
            if codes is not None:
                gemms[f"g{i}"] = _gemm_from_codes(f"{name}.g{i}", cfg, codes[i * n:(i + 1) * n], scale[i * n:(i + 1) * n],
                                                  act, (0, 2, 3, 1), threads)
            else:
                gemms[f"g{i}"] = make_gemm(f"{name}.g{i}", cfg, w[i * n:(i + 1) * n], None, act,
                                           k_order=(0, 2, 3, 1), threads=threads)
        conv["groups"] = mod.groups
        return Layer(name, "gconv2d", gemms, _bias(mod.bias), cfg.to_dict(), conv=conv)
    g = make_gemm(name, cfg, w, mod.wq if q else None, act, k_order=(0, 2, 3, 1), threads=threads)
    return Layer(name, "conv2d", {"w": g}, _bias(mod.bias), cfg.to_dict(), conv=conv)


@torch.no_grad()
def make_depthwise(name, cfg, w_float, wq, act, threads) -> Gemm:
    """The depthwise filters (C, 1, kh, kw) for the direct kernel: int8 taps of the weight codes
    with per-channel scales; float weights (or float activations) run the float depthwise loop."""
    c = w_float.shape[0]
    note = f"{cfg.sparsity} zeros stored dense" if cfg.sparsity != "none" else ""
    if wq is None or not wq.active or act is None:
        if wq is not None and wq.active:   # quantized weights, float activations: their float values
            wf = wq(w_float).detach().float().reshape(c, -1).numpy().astype(np.float32)
            note = "float activations: the depthwise layer runs in float on its quantized weights"
        else:
            wf = w_float.detach().float().reshape(c, -1).contiguous().numpy().astype(np.float32)
        return Gemm(name, "float", c, wf.shape[1], act, w_float=np.ascontiguousarray(wf), note=note,
                    w_bits=int(cfg.w_bits) if wq is not None and wq.active else 32, threads=threads)
    codes, scale = weight_codes(w_float, wq, f"layer {name!r}")
    codes = codes.reshape(c, -1)
    lo, hi = int(codes.min()), int(codes.max())
    bits, signed = bits_for(min(lo, 0), max(hi, 0))
    if bits > 8:
        raise DeployError(f"layer {name!r}: its weight codes span [{lo}, {hi}], wider than 8 bits")
    packed = K.pack_depthwise(codes, bits, signed, tuple(w_float.shape[2:]))
    return Gemm(name, "depthwise", c, codes.shape[1], act, packed=packed, w_scale=scale,
                w_bits=int(cfg.w_bits), note=note, threads=threads)


@LOWER.register(QuantLSTM)
def quant_lstm(name, mod, cfg, per, threads) -> Layer:
    where = f"layer {name!r}"
    a_x = act_spec(mod.aq, per.get(f"{name}.aq"), where, affine_ok=True)
    a_h = act_spec(mod.aq_h, per.get(f"{name}.aq_h"), where, affine_ok=True)
    rows = ifog(mod.hidden_size)
    gi = make_gemm(f"{name}.ih", cfg, mod.masked("ih"), mod.wq_ih, a_x, threads=threads, rows=rows)
    gh = make_gemm(f"{name}.hh", cfg, mod.masked("hh"), mod.wq_hh, a_h, threads=threads, rows=rows)
    bias = (mod.bias_ih + mod.bias_hh).detach().float().numpy()[rows].copy() if mod.bias_ih is not None else None
    return Layer(name, "lstm", {"ih": gi, "hh": gh}, bias, cfg.to_dict(), hidden=mod.hidden_size)


@LOWER.register(nn.LSTM)
def lstm(name, mod, cfg, per, threads) -> Layer:
    if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or mod.proj_size:
        raise DeployError(f"layer {name!r}: only single-layer, unidirectional, batch_first LSTMs are supported")
    rows = ifog(mod.hidden_size)
    gi = make_gemm(f"{name}.ih", cfg, mod.weight_ih_l0, None, None, threads=threads, rows=rows)
    gh = make_gemm(f"{name}.hh", cfg, mod.weight_hh_l0, None, None, threads=threads, rows=rows)
    bias = (mod.bias_ih_l0 + mod.bias_hh_l0).detach().float().numpy()[rows].copy() if mod.bias else None
    return Layer(name, "lstm", {"ih": gi, "hh": gh}, bias, cfg.to_dict(), hidden=mod.hidden_size)


LOWER.register(QuantGRU, nn.GRU)(lower_gru)
