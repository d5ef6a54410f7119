"""Grouped and depthwise convolutions in the packed deployment (numpy and ``engine.kernels`` only).

A depthwise layer (groups = in = out channels) runs the direct depthwise kernel on channels-last
integer codes (one k x k filter per channel: im2col would copy every input k*k times for a tiny
product). Any other grouped layer runs one im2col GEMM per group on its slice of the channels.
"""
from __future__ import annotations

import numpy as np

from engine import kernels as K
from engine.deploy.operands import DeployError, Gemm
from engine.deploy.ops import _im2col_nhwc_padded


def group_parts(groups: int) -> frozenset:
    """The GEMM part names of a grouped layer: g0, g1, ..."""
    return frozenset(f"g{i}" for i in range(groups))


def _padded_codes(x: np.ndarray, g: Gemm, ph: int, pw: int) -> np.ndarray:
    """(B, C, H, W) float -> zero-padded channels-last codes (B, H+2ph, W+2pw, C) of ``g``'s quantizer
    (floats where it keeps activations float)."""
    b, ch, h, w = x.shape
    xt = x.transpose(0, 2, 3, 1)
    dt = np.float32 if g.act is None else g.act.dtype
    if not (ph or pw):
        return np.ascontiguousarray(xt, dtype=np.float32) if g.act is None else g.quantize(xt, np.empty((b, h, w, ch), dt))
    xp = np.zeros((b, h + 2 * ph, w + 2 * pw, ch), dtype=dt)
    inner = xp[:, ph:ph + h, pw:pw + w, :]
    if g.act is None:
        inner[...] = xt
    else:
        g.quantize(xt, inner)
    return xp


def _check_input(name: str, x: np.ndarray, channels: int) -> np.ndarray:
    if x.ndim != 4 or x.shape[1] != channels:
        raise DeployError(f"layer {name!r} expects (B, {channels}, H, W) input, got shape {tuple(x.shape)}")
    return x if x.dtype == np.float32 else x.astype(np.float32)


def depthwise_forward(name: str, g: Gemm, conv: dict, bias, x: np.ndarray) -> np.ndarray:
    """The depthwise layer on (B, C, H, W) floats; an NCHW view of NHWC float32 memory."""
    x = _check_input(name, x, g.n)
    (kh, kw), (sh, sw), (ph, pw) = conv["kernel_size"], conv["stride"], conv["padding"]
    xp = _padded_codes(x, g, ph, pw)
    if xp.shape[1] < kh or xp.shape[2] < kw:
        raise DeployError(f"layer {name!r}: kernel {kh}x{kw} is larger than the padded input "
                          f"{xp.shape[1]}x{xp.shape[2]}")
    if g.kernel == "float":
        xf = g.act.dequant(xp) if g.act is not None else xp
        ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
        y = np.zeros((xp.shape[0], ho, wo, g.n), np.float32)
        for i in range(kh):
            for j in range(kw):
                y += xf[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] * g.w_float[:, i * kw + j]
    else:
        run = g.__dict__.get("_dw_run")
        if run is None:
            run = g.__dict__["_dw_run"] = K.bind_depthwise(g.packed, (kh, kw), (sh, sw), g.act.bits,
                                                           g.act.u_signed, g.threads)
            g.__dict__["_dw_scale"] = np.float64(np.float32(g.act.scale)) * g.w_scale.astype(np.float64)
        acc = run(xp)
        y = np.multiply(acc, g.__dict__["_dw_scale"], out=np.empty(acc.shape, np.float32), casting="same_kind")
    if bias is not None:
        np.add(y, bias, out=y)
    return y.transpose(0, 3, 1, 2)


def grouped_forward(name: str, gemms: dict, conv: dict, bias, x: np.ndarray) -> np.ndarray:
    """A grouped (not depthwise) layer: one im2col GEMM per group on its channel slice."""
    groups = int(conv["groups"])
    x = _check_input(name, x, conv["in_channels"])
    (kh, kw), (sh, sw), (ph, pw) = conv["kernel_size"], conv["stride"], conv["padding"]
    g0 = gemms["g0"]
    xp = _padded_codes(x, g0, ph, pw)
    cg = conv["in_channels"] // groups
    outs = []
    for i in range(groups):
        part = np.ascontiguousarray(xp[..., i * cg:(i + 1) * cg])
        cols, ho, wo = _im2col_nhwc_padded(part, kh, kw, sh, sw)
        outs.append(gemms[f"g{i}"].matmul_codes(cols))
    y = np.concatenate(outs, axis=1)
    if bias is not None:
        np.add(y, bias, out=y)
    return y.reshape(x.shape[0], ho, wo, -1).transpose(0, 3, 1, 2)
