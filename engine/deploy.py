"""Packed deployment: a fine-tuned planned network run with the bit-packed kernels only.

``deploy(applied)`` walks the planned network's torch.fx graph once and turns it into a
``PackedNetwork``: a short list of ops (plain data) plus, for every quantized layer, its weights
packed as integer codes in the layout of the kernel the plan asks for, a per-output-channel scale
and the bias. Inference then runs integer GEMMs and rescaling (``engine.kernels``) and does the
non-GEMM work (ReLU, pooling, batch norm in float, residual adds, flatten, LSTM gates) in numpy;
torch is not needed to run or load it.

Kernel per layer (from the plan): bit-serial AND+popcount for k_w, k_a <= 2 with integer
activations; the int8-dot kernel for wider codes; the 2:4 compressed kernel for 2:4 layers;
float-activation bit-planes where activations stay float (a_bits 32); numpy float matmul for
layers whose weights stay float.

The exact fake-quant math is reproduced: an operand's real value is ``scale * (p * u + q)`` with
``u`` the packed code ((p, q) = (1, 0), or (2, -1) for binary {-1, +1} codes stored as one bit),
so a dot product is ``s_a s_w (p_a p_w u_a.u_w + p_w q_a sum u_w + q_w p_a sum u_a + K q_a q_w)``.

``save_packed`` writes one safetensors file (packed arrays, JSON metadata with the ops and the
plan; no pickle); ``load_packed`` reads it back, checking every array before any kernel runs.
"""
from __future__ import annotations

import json
import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import kernels as K
from .errors import UserError

try:   # the clip ufunc itself (np.clip adds a Python wrapper around it)
    from numpy._core.umath import clip as _clip
except ImportError:  # pragma: no cover - older numpy
    _clip = np.clip

PACKED_KIND = "packed-network"
PACKED_VERSION = 1
META_KEY = "bitscape"
FLOAT = 32
KERNELS = ("bitserial", "int8", "nm", "float-act", "float")


class DeployError(UserError):
    """The network (or a packed file) cannot be deployed / run; the message names the layer."""


# ============================================================================ operands

@dataclass
class ActSpec:
    """How a layer quantizes its input activations (reproduces ActQuantizer.forward exactly).

    ``method`` 'lsq' or 'wrpn'; ``step`` the effective float32 step (LSQ: after grad_scale, as the
    fake-quant forward computes it; WRPN: the clip scale). Codes u are stored with ``bits`` /
    ``signed``; the real value is ``scale * (p * u + q)``.
    """

    method: str
    plan_bits: int
    signed: bool          # the quantizer's signedness
    step: float
    qn: int = 0
    qp: int = 0
    n: int = 1            # WRPN levels
    lo: float = 0.0       # WRPN clip low
    binary: bool = False  # LSQ 1-bit signed: codes {-1, +1}
    bits: int = 8         # storage bits of u
    u_signed: bool = True
    p: int = 1
    q: int = 0

    @property
    def scale(self) -> float:
        return float(np.float32(self.step)) / self.n if self.method == "wrpn" else float(np.float32(self.step))

    def codes(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Integer codes u of float32 activations (same float32 ops as the torch fake-quant).

        ``out`` (optional, any strides, the codes' dtype) receives the codes, e.g. the interior of a
        zero-padded convolution input, so no extra copy is made."""
        fn = self.__dict__.get("_fn")
        if fn is None:
            fn = self.__dict__["_fn"] = self._compile()
        return fn(x, out)

    @property
    def dtype(self):
        return np.dtype(np.int8 if self.u_signed else np.uint8)

    def _compile(self):
        """The quantizer as one closure with its float32 constants bound (the deployment's hot path)."""
        s = np.float32(self.step)
        dt = self.dtype
        if self.method == "lsq" and not self.binary and self.p == 1 and self.q == 0:
            lo, hi = np.float32(-self.qn), np.float32(self.qp)

            def lsq_codes(x, out=None):
                c = np.divide(x, s)
                _clip(c, lo, hi, out=c)
                if out is None:
                    out = np.empty(c.shape, dt)
                np.rint(c, out=out, casting="unsafe")   # integral values in range: the cast is exact
                return out
            return lsq_codes

        def codes(x, out=None):
            if self.method == "wrpn":
                c = np.round(np.clip(x / s, np.float32(self.lo), np.float32(1.0)) * np.float32(self.n))
            elif self.binary:   # sign(clamp(x / s)) with sign(0) = +1, i.e. x >= 0 (s > 0)
                if self.p == 2:
                    u = np.greater_equal(x, 0).view(np.uint8)
                else:
                    u = np.where(x >= 0, np.int8(1), np.int8(-1))
                if out is None:
                    return u
                out[...] = u
                return out
            else:
                c = x / s
                np.maximum(c, np.float32(-self.qn), out=c)
                np.minimum(c, np.float32(self.qp), out=c)
                np.rint(c, out=c)
            if self.p != 1 or self.q != 0:
                c = (c - self.q) / self.p
            if out is None:
                return c.astype(dt)
            out[...] = c
            return out
        return codes

    def dequant(self, u: np.ndarray) -> np.ndarray:
        """The float32 values the fake-quant forward produces (code * step)."""
        c = (self.p * u.astype(np.float32) + self.q)
        if self.method == "wrpn":
            return (c / np.float32(self.n)) * np.float32(self.step)
        return c * np.float32(self.step)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("method", "plan_bits", "signed", "step", "qn", "qp", "n", "lo",
                                              "binary", "bits", "u_signed", "p", "q")}

    @classmethod
    def from_dict(cls, d: dict) -> "ActSpec":
        return cls(**d)


def _bits_for(lo: int, hi: int) -> tuple[int, bool]:
    """Smallest (bits, signed) storage holding integer codes in [lo, hi]."""
    if lo >= 0:
        b = max(1, int(hi).bit_length())
        return b, False
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b, True


@dataclass
class Gemm:
    """One weight matrix (N, K) and the kernel that multiplies activations by it.

    ``kernel`` in KERNELS. Quantized weights: ``packed`` (PackedWeights), ``w_scale`` (N,) float32,
    (``w_p``, ``w_q``) the code affine map. Float weights: ``w_float`` (N, K) float32.
    ``act`` is the activation quantizer (None: float activations).
    """

    name: str
    kernel: str
    n: int
    k: int
    act: ActSpec | None
    packed: K.PackedWeights | None = None
    w_scale: np.ndarray | None = None
    w_p: int = 1
    w_q: int = 0
    w_float: np.ndarray | None = None
    w_bits: int = FLOAT
    note: str = ""
    threads: int = 1
    _exact: bool | None = field(default=None, repr=False)
    _comb: np.ndarray | None = field(default=None, repr=False)

    # ---- inference -------------------------------------------------------------------
    def quantize(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        if self.act is None:
            return x
        return self.act.codes(x, out)

    def _prepare(self):
        """Bind the kernel once (weights checked here; per call only the C extension's own checks
        run) and precompute the rescale constants: the hot path is then a handful of numpy calls."""
        a = self.act
        if self.kernel == "float":
            self._run = None
            return
        self._run = K.bind_gemm(self.packed, a.bits if a else None, a.u_signed if a else None, threads=self.threads)
        if a is None:
            return
        self._fast = self.w_p == 1 and a.p == 1 and self._f32_exact()
        self._comb_scale()
        self._scale64 = np.float64(np.float32(a.scale)) * self.w_scale.astype(np.float64)
        rs = self.packed.row_sums.astype(np.int64)
        # bound on |corrected integer total|: decides int32 arithmetic and a float32 rescale
        lo_w, hi_w = (-(1 << (self.packed.bits - 1)), (1 << (self.packed.bits - 1)) - 1) if self.packed.signed \
            else (0, (1 << self.packed.bits) - 1)
        lo_a, hi_a = (-(1 << (a.bits - 1)), (1 << (a.bits - 1)) - 1) if a.u_signed else (0, (1 << a.bits) - 1)
        mw, ma = max(-lo_w, hi_w), max(-lo_a, hi_a)
        bound = self.k * (abs(a.p * self.w_p) * mw * ma + abs(self.w_p * a.q) * mw + abs(self.w_q * a.p) * ma
                          + abs(self.w_q * a.q))
        self._i32 = bound < 1 << 31
        self._f32_total = bound <= 1 << 24
        self._rowterm = ((self.w_p * a.q) * rs)[None, :].astype(np.int32 if self._i32 else np.int64) \
            if (a.q and self.w_p) else None

    def matmul_codes(self, u: np.ndarray) -> np.ndarray:
        """(M, N) float32 = dequant(u) @ dequant(W).T for activation codes (or floats) u (M, K)."""
        a = self.act
        if self.kernel == "float":
            xa = a.dequant(u) if a is not None else u
            return np.ascontiguousarray(xa, dtype=np.float32) @ self.w_float.T
        run = self.__dict__.get("_run")
        if run is None:
            self._prepare()
            run = self._run
        if self.kernel == "float-act":
            u = np.ascontiguousarray(u, dtype=np.float32)
            acc = run(u)
            if self.w_p != 1 or self.w_q != 0:
                acc = self.w_p * acc + self.w_q * u.sum(axis=1, dtype=np.float32)[:, None]
            return acc * self.w_scale
        acc = run(np.ascontiguousarray(u))
        if self._fast:   # every accumulator is exact in float32: one float32 multiply
            return np.multiply(acc, self._comb, dtype=np.float32)
        # exact integer corrections, in int32 when every value provably fits; when the corrected total
        # is exact in float32 too, one float32 multiply (as above), else one float64 rescale
        it = np.int32 if self._i32 else np.int64
        pp = a.p * self.w_p
        tot = np.multiply(acc, pp, dtype=it) if pp != 1 else acc.astype(it)
        if self._rowterm is not None:
            tot += self._rowterm
        if self.w_q:
            us = np.add.reduce(u, axis=1, dtype=it)
            us *= self.w_q * a.p
            if a.q:
                us += self.k * self.w_q * a.q
            tot += us[:, None]
        if self._f32_total:
            return np.multiply(tot, self._comb, dtype=np.float32)
        return np.multiply(tot, self._scale64, out=np.empty(tot.shape, np.float32), casting="same_kind")

    def _f32_exact(self) -> bool:
        """Every possible integer accumulator is exact in float32 (|acc| <= 2^24)."""
        if self._exact is None:
            self._exact = self.k * (1 << self.act.bits) * (1 << self.packed.bits) <= 1 << 24
        return self._exact

    def _comb_scale(self) -> np.ndarray:
        if self._comb is None:
            self._comb = (np.float64(np.float32(self.act.scale)) * self.w_scale.astype(np.float64)).astype(np.float32)
        return self._comb

    def __call__(self, x2d: np.ndarray) -> np.ndarray:
        return self.matmul_codes(self.quantize(x2d))

    # ---- bookkeeping -----------------------------------------------------------------
    @property
    def packed_bytes(self) -> int:
        if self.kernel == "float":
            return int(self.w_float.nbytes)
        return int(self.packed.nbytes)

    @property
    def meta_bytes(self) -> int:
        if self.kernel == "float":
            return 0
        extra = 0 if self.packed.layout == "nm" else self.packed.row_sums.nbytes  # nm keeps wsum in arrays
        return int(self.w_scale.nbytes + extra)

    def describe(self) -> dict:
        d = {"kernel": self.kernel, "n": self.n, "k": self.k, "w_bits": self.w_bits,
             "a_bits": self.act.plan_bits if self.act else FLOAT}
        if self.packed is not None:
            d.update(layout=self.packed.layout, stored_w_bits=self.packed.bits, stored_w_signed=self.packed.signed)
        if self.act is not None:
            d.update(stored_a_bits=self.act.bits, stored_a_signed=self.act.u_signed)
        if self.note:
            d["note"] = self.note
        return d

    def arrays(self, prefix: str) -> dict:
        if self.kernel == "float":
            return {f"{prefix}.float": self.w_float}
        out = {f"{prefix}.{k}": v for k, v in self.packed.arrays.items()}
        out[f"{prefix}.row_sums"] = np.asarray(self.packed.row_sums)
        out[f"{prefix}.scale"] = self.w_scale
        return out

    def meta(self) -> dict:
        d = {"name": self.name, "kernel": self.kernel, "n": self.n, "k": self.k, "w_bits": self.w_bits,
             "act": self.act.to_dict() if self.act else None, "note": self.note}
        if self.packed is not None:
            d.update(layout=self.packed.layout, bits=self.packed.bits, signed=self.packed.signed,
                     w_p=self.w_p, w_q=self.w_q)
        return d


# ============================================================================ layers

@dataclass
class Layer:
    """A deployed GEMM layer: 'linear', 'conv2d' or 'lstm' (lstm: gemms ih and hh)."""

    name: str
    kind: str
    gemms: dict[str, Gemm]
    bias: np.ndarray | None
    config: dict
    conv: dict = field(default_factory=dict)     # kernel_size, stride, padding, in_channels
    hidden: int = 0

    def __call__(self, x: np.ndarray):
        if self.kind == "linear":
            return self._linear(x)
        if self.kind == "conv2d":
            return self._conv(x)
        return self._lstm(x)

    def _linear(self, x):
        g = self.gemms["w"]
        if x.ndim < 2 or x.shape[-1] != g.k:
            raise DeployError(f"layer {self.name!r} expects (..., {g.k}) input, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, g.k)
        if x2.dtype != np.float32 or not x2.flags.c_contiguous:
            x2 = np.ascontiguousarray(x2, dtype=np.float32)
        y = g(x2)
        if self.bias is not None:
            np.add(y, self.bias, out=y)
        return y.reshape(*lead, g.n) if len(lead) != 1 else y

    def _conv(self, x):
        """im2col convolution on NHWC codes; returns an NCHW view of NHWC memory (the next
        convolution then reads channels-last without a transpose copy)."""
        g = self.gemms["w"]
        c = self.conv
        if x.ndim != 4 or x.shape[1] != c["in_channels"]:
            raise DeployError(f"layer {self.name!r} expects (B, {c['in_channels']}, H, W) input, "
                              f"got shape {tuple(x.shape)}")
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        b, ch, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = c["kernel_size"], c["stride"], c["padding"]
        xt = x.transpose(0, 2, 3, 1)                       # NHWC view (no copy)
        if g.act is None:
            dt = np.float32
        else:
            dt = g.act.dtype
        if ph or pw:
            xp = np.zeros((b, h + 2 * ph, w + 2 * pw, ch), dtype=dt)
            inner = xp[:, ph:ph + h, pw:pw + w, :]
            if g.act is None:
                inner[...] = xt
            else:
                g.quantize(xt, inner)                     # codes written straight into the padded buffer
        else:
            xp = np.ascontiguousarray(xt) if g.act is None else g.quantize(xt, np.empty((b, h, w, ch), dt))
        cols, ho, wo = _im2col_nhwc_padded(xp, kh, kw, sh, sw)
        y = g.matmul_codes(cols)
        if self.bias is not None:
            np.add(y, self.bias, out=y)
        return y.reshape(b, ho, wo, g.n).transpose(0, 3, 1, 2)

    def _lstm(self, x):
        gi, gh = self.gemms["ih"], self.gemms["hh"]
        if x.ndim != 3 or x.shape[2] != gi.k:
            raise DeployError(f"layer {self.name!r} expects (B, T, {gi.k}) input, got shape {tuple(x.shape)}")
        b, t, _ = x.shape
        hs = self.hidden
        xs = gi(np.ascontiguousarray(x.reshape(b * t, -1), dtype=np.float32))
        if self.bias is not None:
            np.add(xs, self.bias, out=xs)
        xs = xs.reshape(b, t, 4 * hs)
        h = np.zeros((b, hs), np.float32)
        c = np.zeros((b, hs), np.float32)
        outs = np.empty((b, t, hs), np.float32)
        mm, quant = gh.matmul_codes, gh.quantize
        h3 = 3 * hs
        for s in range(t):   # gate rows were reordered to (i, f, o, g) at deployment
            gates = mm(quant(h))
            gates += xs[:, s]
            sg = _sigmoid(gates[:, :h3])
            c = sg[:, hs:2 * hs] * c + sg[:, :hs] * np.tanh(gates[:, h3:])
            h = sg[:, 2 * hs:] * np.tanh(c)
            outs[:, s] = h
        return outs, (h[None], c[None])

    # ---- bookkeeping -----------------------------------------------------------------
    def summary(self) -> dict:
        gs = list(self.gemms.values())
        bias_b = int(self.bias.nbytes) if self.bias is not None else 0
        weights = sum(g.n * g.k for g in gs)
        packed = sum(g.packed_bytes for g in gs)
        meta = sum(g.meta_bytes for g in gs) + bias_b
        ideal = sum(math.ceil(g.n * g.k * min(g.w_bits, FLOAT) / 8) for g in gs)
        return {"name": self.name, "type": self.kind, "kernel": "+".join(sorted({g.kernel for g in gs})),
                "config": self.config, "weights": weights, "ideal_bytes": ideal,
                "bits_per_weight": round(8.0 * packed / weights, 3),
                "packed_bytes": packed, "meta_bytes": meta, "bytes": packed + meta,
                "fp32_bytes": 4 * weights + bias_b,
                "gemms": {k: g.describe() for k, g in self.gemms.items()}}


def _sigmoid(x):
    e = np.exp(-x)
    e += np.float32(1.0)
    return np.reciprocal(e, out=e)


def _ifog(hidden: int) -> np.ndarray:
    """Row order (i, f, o, g) from torch's (i, f, g, o): the three sigmoid gates side by side."""
    h = np.arange(hidden)
    return np.concatenate([h, h + hidden, h + 3 * hidden, h + 2 * hidden])


def _im2col_nhwc_padded(xp: np.ndarray, kh: int, kw: int, sh: int, sw: int) -> tuple[np.ndarray, int, int]:
    """(B, Hp, Wp, C) padded channels-last codes -> (B*Ho*Wo, kh*kw*C) patches (one gather copy;
    no copy at all for a 1x1 stride-1 convolution)."""
    b, hp, wp, ch = xp.shape
    if hp < kh or wp < kw:
        raise DeployError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s0, s1, s2, s3 = xp.strides
    win = np.ndarray((b, ho, wo, kh, kw, ch), dtype=xp.dtype, buffer=xp,
                     strides=(s0, s1 * sh, s2 * sw, s1, s2, s3))   # a read-only view, copied below
    return win.reshape(b * ho * wo, kh * kw * ch), ho, wo


def im2col_nhwc(x: np.ndarray, kernel_size, stride, padding) -> tuple[np.ndarray, int, int]:
    """(B, C, H, W) -> (B*Ho*Wo, kh*kw*C) patches, channel fastest (so N:M groups along channels
    stay consecutive in K); padding inserts zeros (code 0 = value 0)."""
    kh, kw = kernel_size
    sh, sw = stride
    ph, pw = padding
    b, ch, h, w = x.shape
    if ph or pw:
        xp = np.zeros((b, ch, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
        xp[:, :, ph:ph + h, pw:pw + w] = x
    else:
        xp = np.ascontiguousarray(x)
    hp, wp = xp.shape[2], xp.shape[3]
    if hp < kh or wp < kw:
        raise DeployError(f"kernel {kh}x{kw} is larger than the padded input {hp}x{wp}")
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    s0, s1, s2, s3 = xp.strides
    win = np.ndarray((b, ho, wo, kh, kw, ch), dtype=xp.dtype, buffer=xp,
                     strides=(s0, s2 * sh, s3 * sw, s2, s3, s1))   # a read-only view, copied below
    cols = win.reshape(b * ho * wo, kh * kw * ch)
    return cols, ho, wo


# ============================================================================ the network

@dataclass
class PackedNetwork:
    """Ops (plain data, topologically ordered) + deployed layers + batch-norm affines."""

    ops: list[dict]
    layers: dict[str, Layer]
    norms: dict[str, tuple[np.ndarray, np.ndarray]]
    input_shape: tuple[int, ...]
    meta: dict = field(default_factory=dict)

    def __call__(self, x, timings: dict | None = None) -> np.ndarray:
        return self.forward(x, timings)

    def forward(self, x, timings: dict | None = None, spans: dict | None = None) -> np.ndarray:
        """Logits (B, classes) float32 of a float (B, *input_shape) batch.

        ``timings`` (a dict) collects seconds per layer name spent in the layer call itself;
        ``spans`` (a dict) collects, per layer, the seconds from its start to the next layer's start:
        the layer plus the non-GEMM ops after it (ReLU, pooling, flatten, ...; ops before the first
        layer count with the first), so the spans add up to the whole forward pass."""
        t_start = time.perf_counter() if spans is not None else 0.0
        x = _input_array(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != tuple(self.input_shape):
            raise DeployError(f"the packed network expects input of shape (B, {', '.join(map(str, self.input_shape))}), "
                              f"got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise DeployError("the input batch is empty")
        steps = self.__dict__.get("_steps")
        if steps is None or self.__dict__.get("_steps_key") != (id(self.ops), len(self.ops)):
            steps = self.__dict__["_steps"] = self._compile()
            self.__dict__["_steps_key"] = (id(self.ops), len(self.ops))
        env: dict[str, object] = {}
        out = None
        cur, t_mark = None, t_start
        perf = time.perf_counter
        for kind, name, fn, getters, kwargs in steps:
            if kind == 0:      # input
                env[name] = x
                continue
            args = [g(env) for g in getters]
            if kind == 1:      # output
                out = args[0]
                break
            if kind == 2:      # layer
                if spans is not None:
                    now = perf()
                    if cur is not None:
                        spans[cur] = spans.get(cur, 0.0) + now - t_mark
                        t_mark = now
                    cur = fn.name
                if timings is not None:
                    t0 = perf()
                    env[name] = fn(args[0])
                    timings[fn.name] = timings.get(fn.name, 0.0) + perf() - t0
                else:
                    env[name] = fn(args[0])
                continue
            env[name] = fn(*args, **kwargs)
        if spans is not None and cur is not None:
            spans[cur] = spans.get(cur, 0.0) + perf() - t_mark
        if not isinstance(out, np.ndarray):
            raise DeployError("the packed network's output is not an array")
        return out if out.flags.c_contiguous else np.ascontiguousarray(out)

    def _compile(self) -> list:
        """The op list as (kind, name, callable, argument getters, kwargs): constants resolved once."""
        steps = []
        for op in self.ops:
            kind = op["op"]
            getters = [_getter(a) for a in op.get("args", [])]
            if kind == "input":
                steps.append((0, op["name"], None, getters, {}))
            elif kind == "output":
                steps.append((1, op["name"], None, getters, {}))
            elif kind == "layer":
                steps.append((2, op["name"], self.layers[op["layer"]], getters, {}))
            elif kind == "batchnorm":
                scale, shift = self.norms[op["norm"]]
                steps.append((3, op["name"], _bn_fn(scale, shift), getters, {}))
            else:
                steps.append((3, op["name"], _OPS[kind], getters, op.get("kwargs", {})))
        return steps

    def predict(self, x, batch_size: int = 512) -> np.ndarray:
        x = _input_array(x)
        return np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    def summary(self) -> dict:
        rows = [layer.summary() for layer in self.layers.values()]
        packed = sum(r["bytes"] for r in rows)
        fp32 = sum(r["fp32_bytes"] for r in rows)
        norm_b = sum(a.nbytes + b.nbytes for a, b in self.norms.values())
        return {"layers": rows, "total_packed_bytes": packed + norm_b,
                "ideal_weight_bytes": sum(r["ideal_bytes"] for r in rows), "packed_weight_bytes": sum(r["packed_bytes"] for r in rows),
                "meta_bytes": sum(r["meta_bytes"] for r in rows) + norm_b, "fp32_bytes": fp32 + norm_b,
                "compression": round((fp32 + norm_b) / max(packed + norm_b, 1), 3)}


def _input_array(x) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        try:
            import torch
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu().numpy()
        except ImportError:  # pragma: no cover
            pass
    if not isinstance(x, np.ndarray):
        raise DeployError(f"the packed network needs a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype.kind not in "fiu":
        raise DeployError(f"the packed network needs numeric input, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


# ---- non-GEMM ops (numpy) ----------------------------------------------------------------

def _pool_geom(x, kernel_size, stride, padding):
    kh, kw = _pair(kernel_size)
    sh, sw = _pair(stride if stride not in (None, []) else kernel_size)
    ph, pw = _pair(padding)
    return kh, kw, sh, sw, ph, pw


def _pair(v):
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _max_pool2d(x, kernel_size, stride=None, padding=0):
    kh, kw, sh, sw, ph, pw = _pool_geom(x, kernel_size, stride, padding)
    b, c, h, w = x.shape
    if (kh, kw) == (sh, sw) and not (ph or pw) and h % kh == 0 and w % kw == 0:
        return x.reshape(b, c, h // kh, kh, w // kw, kw).max(axis=(3, 5))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf) if ph or pw else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return np.ascontiguousarray(win.max(axis=(4, 5)))


def _avg_pool2d(x, kernel_size, stride=None, padding=0):
    kh, kw, sh, sw, ph, pw = _pool_geom(x, kernel_size, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    return np.ascontiguousarray(win.mean(axis=(4, 5), dtype=np.float32))


def _adaptive_avg_pool2d(x, output_size):
    if _pair(output_size) != (1, 1):
        raise DeployError(f"adaptive_avg_pool2d to {output_size} is not supported (only output size 1)")
    return x.mean(axis=(2, 3), keepdims=True, dtype=np.float32)


def _flatten(x, start_dim=0, end_dim=-1):
    nd = x.ndim
    s, e = start_dim % nd, end_dim % nd
    return x.reshape(*x.shape[:s], -1, *x.shape[e + 1:])


def _reshape(x, *shape):
    if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
        shape = tuple(shape[0])
    return x.reshape(*shape)


def _permute(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = tuple(dims[0])
    return np.ascontiguousarray(x.transpose(*dims))


def _mean(x, dim=None, keepdim=False):
    d = tuple(dim) if isinstance(dim, (list, tuple)) else dim
    return x.mean(axis=d, keepdims=keepdim, dtype=np.float32)


def _getitem(x, idx):
    return x[idx]


_OPS = {
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "tanh": lambda x: np.tanh(x),
    "sigmoid": _sigmoid,
    "identity": lambda x: x,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "adaptive_avg_pool2d": _adaptive_avg_pool2d,
    "flatten": _flatten,
    "reshape": _reshape,
    "permute": _permute,
    "mean": _mean,
    "add": lambda a, b: a + b,
    "getitem": _getitem,
}


# ---- op-argument encoding (JSON) --------------------------------------------------------

def _enc(a, names):
    import torch.fx
    if isinstance(a, torch.fx.Node):
        return {"ref": names[a]}
    if isinstance(a, slice):
        return {"slice": [_enc(a.start, names), _enc(a.stop, names), _enc(a.step, names)]}
    if isinstance(a, tuple):
        return {"tuple": [_enc(v, names) for v in a]}
    if isinstance(a, list):
        return {"list": [_enc(v, names) for v in a]}
    if a is Ellipsis:
        return {"ellipsis": True}
    if a is None or isinstance(a, (bool, int, float, str)):
        return a
    raise DeployError(f"argument {a!r} ({type(a).__name__}) cannot be stored in a packed network")


def _has_ref(a) -> bool:
    if isinstance(a, dict):
        return "ref" in a or any(_has_ref(v) for k in ("slice", "tuple", "list") for v in a.get(k, []))
    if isinstance(a, list):
        return any(_has_ref(v) for v in a)
    return False


def _getter(a):
    """env -> the argument's value; references are looked up, constants resolved once."""
    if isinstance(a, dict) and "ref" in a:
        key = a["ref"]
        return lambda env: env[key]
    if _has_ref(a):
        return lambda env: _arg(a, env)
    v = _arg(a, {})
    return lambda env: v


def _bn_fn(scale, shift):
    def bn(v):
        shp = (1, -1) + (1,) * (v.ndim - 2)
        return (v * scale.reshape(shp) + shift.reshape(shp)).astype(np.float32)
    return bn


def _arg(a, env):
    if isinstance(a, dict):
        if "ref" in a:
            return env[a["ref"]]
        if "slice" in a:
            return slice(*(_arg(v, env) for v in a["slice"]))
        if "tuple" in a:
            return tuple(_arg(v, env) for v in a["tuple"])
        if "list" in a:
            return [_arg(v, env) for v in a["list"]]
        if "ellipsis" in a:
            return Ellipsis
        raise DeployError(f"unknown op argument {a!r}")
    return a


# ============================================================================ deployment

def _bind(node, params: list[tuple[str, object]]) -> dict:
    """Positional + keyword arguments of an fx node as {param: value}, with defaults."""
    out = {}
    for (name, default), v in zip(params, node.args):
        out[name] = v
    for name, default in params[len(node.args):]:
        out[name] = node.kwargs.get(name, default)
    return out


_POOL_PARAMS = [("input", None), ("kernel_size", None), ("stride", None), ("padding", 0), ("dilation", 1),
                ("ceil_mode", False)]


def _pool_op(node, kind, names, where):
    import torch.fx  # noqa: F401
    b = _bind(node, _POOL_PARAMS)
    if b.get("ceil_mode") or _pair(b.get("dilation", 1) or 1) != (1, 1) or node.kwargs.get("return_indices"):
        raise DeployError(f"{where}: {kind} with ceil_mode, dilation or return_indices is not supported")
    return {"op": kind, "args": [_enc(b["input"], names)],
            "kwargs": {"kernel_size": _enc(b["kernel_size"], names), "stride": _enc(b["stride"], names),
                       "padding": _enc(b["padding"], names)}}


def _module_op(mod, node, names, layer_names, where):
    import torch.nn as nn
    src = _enc(node.args[0], names) if node.args else None
    if node.target in layer_names:
        return {"op": "layer", "layer": node.target, "args": [src]}
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"op": "batchnorm", "norm": node.target, "args": [src]}
    if isinstance(mod, nn.ReLU):
        return {"op": "relu", "args": [src]}
    if isinstance(mod, nn.Tanh):
        return {"op": "tanh", "args": [src]}
    if isinstance(mod, nn.Sigmoid):
        return {"op": "sigmoid", "args": [src]}
    if isinstance(mod, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return {"op": "identity", "args": [src]}
    if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
        kind = "max_pool2d" if isinstance(mod, nn.MaxPool2d) else "avg_pool2d"
        if getattr(mod, "ceil_mode", False) or _pair(getattr(mod, "dilation", 1)) != (1, 1):
            raise DeployError(f"{where}: {kind} with ceil_mode or dilation is not supported")
        if kind == "avg_pool2d" and (not mod.count_include_pad or mod.divisor_override):
            raise DeployError(f"{where}: avg_pool2d without count_include_pad is not supported")
        return {"op": kind, "args": [src], "kwargs": {"kernel_size": _enc(mod.kernel_size, names),
                                                       "stride": _enc(mod.stride, names),
                                                       "padding": _enc(mod.padding, names)}}
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        if _pair(mod.output_size) != (1, 1):
            raise DeployError(f"{where}: adaptive_avg_pool2d to {mod.output_size} is not supported")
        return {"op": "adaptive_avg_pool2d", "args": [src], "kwargs": {"output_size": 1}}
    if isinstance(mod, nn.Flatten):
        return {"op": "flatten", "args": [src], "kwargs": {"start_dim": mod.start_dim, "end_dim": mod.end_dim}}
    raise DeployError(f"{where}: module {type(mod).__name__} is not supported by the packed deployment")


def _function_op(node, names, where):
    import torch
    import torch.nn.functional as F
    fn = node.target
    enc = lambda v: _enc(v, names)  # noqa: E731
    if fn in (F.relu, torch.relu):
        return {"op": "relu", "args": [enc(node.args[0])]}
    if fn in (torch.tanh, F.tanh):
        return {"op": "tanh", "args": [enc(node.args[0])]}
    if fn in (torch.sigmoid, F.sigmoid):
        return {"op": "sigmoid", "args": [enc(node.args[0])]}
    if fn in (F.dropout,):
        return {"op": "identity", "args": [enc(node.args[0])]}
    if fn is F.max_pool2d:
        return _pool_op(node, "max_pool2d", names, where)
    if fn is F.avg_pool2d:
        b = _bind(node, [("input", None), ("kernel_size", None), ("stride", None), ("padding", 0),
                         ("ceil_mode", False), ("count_include_pad", True), ("divisor_override", None)])
        if b["ceil_mode"] or not b["count_include_pad"] or b["divisor_override"]:
            raise DeployError(f"{where}: avg_pool2d with ceil_mode/count_include_pad=False/divisor_override "
                              "is not supported")
        return {"op": "avg_pool2d", "args": [enc(b["input"])],
                "kwargs": {"kernel_size": enc(b["kernel_size"]), "stride": enc(b["stride"]),
                           "padding": enc(b["padding"])}}
    if fn is F.adaptive_avg_pool2d:
        b = _bind(node, [("input", None), ("output_size", None)])
        if _pair(b["output_size"]) != (1, 1):
            raise DeployError(f"{where}: adaptive_avg_pool2d to {b['output_size']} is not supported")
        return {"op": "adaptive_avg_pool2d", "args": [enc(b["input"])], "kwargs": {"output_size": 1}}
    if fn is torch.flatten:
        b = _bind(node, [("input", None), ("start_dim", 0), ("end_dim", -1)])
        return {"op": "flatten", "args": [enc(b["input"])],
                "kwargs": {"start_dim": b["start_dim"], "end_dim": b["end_dim"]}}
    if fn in (operator.add, operator.iadd, torch.add) and len(node.args) == 2 and not node.kwargs:
        return {"op": "add", "args": [enc(node.args[0]), enc(node.args[1])]}
    if fn is operator.getitem:
        return {"op": "getitem", "args": [enc(node.args[0]), enc(node.args[1])]}
    name = getattr(fn, "__name__", str(fn))
    raise DeployError(f"{where}: function {name!r} is not supported by the packed deployment")


def _method_op(node, names, where):
    enc = lambda v: _enc(v, names)  # noqa: E731
    m = node.target
    args = [enc(a) for a in node.args]
    if m in ("relu", "tanh", "sigmoid"):
        return {"op": m, "args": args[:1]}
    if m in ("contiguous", "clone", "float", "detach"):
        return {"op": "identity", "args": args[:1]}
    if m in ("view", "reshape"):
        return {"op": "reshape", "args": args}
    if m == "permute":
        return {"op": "permute", "args": args}
    if m == "flatten":
        b = _bind(node, [("self", None), ("start_dim", 0), ("end_dim", -1)])
        return {"op": "flatten", "args": args[:1], "kwargs": {"start_dim": b["start_dim"], "end_dim": b["end_dim"]}}
    if m == "mean":
        b = _bind(node, [("self", None), ("dim", None), ("keepdim", False)])
        return {"op": "mean", "args": args[:1], "kwargs": {"dim": enc(b["dim"]), "keepdim": b["keepdim"]}}
    raise DeployError(f"{where}: method .{m}() is not supported by the packed deployment")


def _trace(model):
    import torch.nn as nn

    from .fxtrace import Tracer
    from .layers import QUANT_LAYERS

    leaves = QUANT_LAYERS + (nn.Linear, nn.Conv2d, nn.LSTM, nn.BatchNorm1d, nn.BatchNorm2d)

    class _Tracer(Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        return _Tracer().trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure is reported the same way
        raise DeployError(f"the network cannot be traced with torch.fx ({type(e).__name__}: {e})") from None


def _act_per(model, input_shape) -> dict:
    """Elements per sample each ActQuantizer sees (LSQ's gradient-scale g depends on it)."""
    import torch

    from .quant.modules import ActQuantizer
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, ActQuantizer):
            def hook(mod, inp, name=name):
                x = inp[0]
                seen.setdefault(name, x[0].numel() if x.dim() > 1 else x.numel())
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _act_spec(aq, per: int | None, where: str, affine_ok: bool) -> ActSpec | None:
    import torch

    from .quant import lsq
    from .quant.ste import grad_scale
    if not aq.active:
        return None
    if not bool(aq.ready):
        raise DeployError(f"{where}: its activation quantizer was never calibrated")
    bits, signed = int(aq.bits), bool(aq.signed)
    if aq.method == "wrpn":
        n = 2 ** (bits - 1) - 1 if signed and bits > 1 else 2 ** bits - 1
        lo = -1 if signed else 0
        ub, us = _bits_for(lo * n, n)
        return ActSpec("wrpn", bits, signed, float(aq.step.detach().float().reshape(-1)[0]), n=n, lo=float(lo),
                       bits=ub, u_signed=us)
    q_n, q_p = aq.levels()
    if per is None:
        raise DeployError(f"{where}: its activation quantizer did not run on a sample input")
    g = lsq.grad_scale_factor(per, max(q_p, 1))
    with torch.no_grad():
        s = grad_scale(aq.step.detach().abs().clamp_min(1e-8), g)
    step = float(s.float().reshape(-1)[0])
    binary = bits == 1 and signed
    if binary:
        if affine_ok:
            return ActSpec("lsq", bits, signed, step, q_n, q_p, binary=True, bits=1, u_signed=False, p=2, q=-1)
        return ActSpec("lsq", bits, signed, step, q_n, q_p, binary=True, bits=2, u_signed=True)
    ub, us = _bits_for(-q_n, q_p)
    return ActSpec("lsq", bits, signed, step, q_n, q_p, bits=ub, u_signed=us)


def _weight_codes(w, wq, where: str):
    """(codes int64 (N, K...), per-row float32 scale) with codes * scale == wq(w) (to float rounding)."""
    import torch

    from .quant import lsq
    from .quant.ste import grad_scale
    with torch.no_grad():
        wqv = wq(w).detach().float()
        rows = wqv.reshape(wqv.shape[0], -1)
        n = rows.shape[0]
        if wq.method == "lsq":
            _, q_p = wq.levels()
            per = w.numel() // wq.step.numel()
            s = grad_scale(wq._step(w), lsq.grad_scale_factor(per, max(q_p, 1))).reshape(-1).float()
            scale = s.expand(n).clone() if s.numel() == 1 else s
        elif wq.method == "wrpn":
            sc = wq.step.detach().float().reshape(-1)[0]
            lv = 1 if wq.bits == 1 else 2 ** (wq.bits - 1) - 1
            scale = (sc / lv).expand(n).clone()
        else:  # binary / ternary: sign * alpha per output channel
            scale = rows.abs().amax(dim=1)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.round(rows / scale[:, None])
        err = (codes * scale[:, None] - rows).abs().max()
        tol = 1e-5 * float(rows.abs().max()) + 1e-12
        if float(err) > tol:
            raise DeployError(f"{where}: its quantized weights are not integer multiples of one scale per "
                              f"output channel (error {float(err):.3g}); cannot pack them")
    return codes.to(torch.int64).reshape(wqv.shape).numpy(), scale.numpy().astype(np.float32)


def _make_gemm(name, cfg, w_float, wq, act, k_order=None, threads=1, rows=None) -> Gemm:
    """One Gemm from a (N, K...) torch weight (mask applied) and its quantizer; ``k_order`` permutes
    a conv weight to (N, kh, kw, C) before flattening K; ``rows`` reorders the output rows."""
    import torch
    n = w_float.shape[0]
    perm = (lambda t: t.permute(*k_order)) if k_order else (lambda t: t)
    if wq is None or not wq.active:
        wf = perm(w_float.detach().float()).reshape(n, -1).contiguous().numpy().astype(np.float32)
        if rows is not None:
            wf = np.ascontiguousarray(wf[rows])
        note = f"{cfg.sparsity} zeros stored dense in float" if cfg.sparsity != "none" else ""
        return Gemm(name, "float", n, wf.shape[1], act, w_float=wf, note=note, threads=threads)
    codes, scale = _weight_codes(w_float, wq, f"layer {name!r}")
    codes = perm(torch.from_numpy(codes)).reshape(n, -1).contiguous().numpy()
    if rows is not None:
        codes, scale = np.ascontiguousarray(codes[rows]), np.ascontiguousarray(scale[rows])
    kk = codes.shape[1]
    lo, hi = int(codes.min()), int(codes.max())
    w_p, w_q = 1, 0
    if int(cfg.w_bits) == 1 and set(np.unique(codes).tolist()) <= {-1, 1}:
        u, bits, signed, w_p, w_q = (codes + 1) // 2, 1, False, 2, -1
    else:
        bits, signed = _bits_for(min(lo, 0), max(hi, 0))
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
    if kernel != "nm":
        layout = {"bitserial": "planes", "int8": "int8", "float-act": "float"}[kernel]
        packed = K.pack_weights(u, bits, signed, layout)
    return Gemm(name, kernel, n, kk, act, packed=packed, w_scale=scale, w_p=w_p, w_q=w_q,
                w_bits=int(cfg.w_bits), note=note, threads=threads)


def _deploy_layer(name, mod, cfg, per, threads) -> Layer:
    import torch.nn as nn

    from .layers import QuantConv2d, QuantLinear, QuantLSTM
    from .plan import LayerConfig
    cfg = cfg or LayerConfig()
    where = f"layer {name!r}"
    cd = cfg.to_dict()
    if isinstance(mod, (QuantLinear, nn.Linear)) and not isinstance(mod, nn.Conv2d):
        q = isinstance(mod, QuantLinear)
        act = _act_spec(mod.aq, per.get(f"{name}.aq"), where, affine_ok=True) if q else None
        w = mod.masked_weight() if q else mod.weight
        g = _make_gemm(name, cfg, w, mod.wq if q else None, act, threads=threads)
        bias = mod.bias.detach().float().numpy().copy() if mod.bias is not None else None
        return Layer(name, "linear", {"w": g}, bias, cd)
    if isinstance(mod, (QuantConv2d, nn.Conv2d)):
        if mod.groups != 1:
            raise DeployError(f"{where}: grouped convolution (groups={mod.groups}) is not supported")
        if tuple(mod.dilation) != (1, 1):
            raise DeployError(f"{where}: dilated convolution is not supported")
        if isinstance(mod.padding, str) or mod.padding_mode != "zeros":
            raise DeployError(f"{where}: padding {mod.padding!r} / mode {mod.padding_mode!r} is not supported "
                              "(integer zero padding only)")
        q = isinstance(mod, QuantConv2d)
        act = _act_spec(mod.aq, per.get(f"{name}.aq"), where, affine_ok=False) if q else None
        w = mod.masked_weight() if q else mod.weight
        g = _make_gemm(name, cfg, w, mod.wq if q else None, act, k_order=(0, 2, 3, 1), threads=threads)
        bias = mod.bias.detach().float().numpy().copy() if mod.bias is not None else None
        conv = {"kernel_size": list(mod.kernel_size), "stride": list(mod.stride), "padding": list(mod.padding),
                "in_channels": mod.in_channels}
        return Layer(name, "conv2d", {"w": g}, bias, cd, conv=conv)
    if isinstance(mod, QuantLSTM):
        a_x = _act_spec(mod.aq, per.get(f"{name}.aq"), where, affine_ok=True)
        a_h = _act_spec(mod.aq_h, per.get(f"{name}.aq_h"), where, affine_ok=True)
        rows = _ifog(mod.hidden_size)
        gi = _make_gemm(f"{name}.ih", cfg, mod.masked("ih"), mod.wq_ih, a_x, threads=threads, rows=rows)
        gh = _make_gemm(f"{name}.hh", cfg, mod.masked("hh"), mod.wq_hh, a_h, threads=threads, rows=rows)
        bias = (mod.bias_ih + mod.bias_hh).detach().float().numpy()[rows].copy() if mod.bias_ih is not None else None
        return Layer(name, "lstm", {"ih": gi, "hh": gh}, bias, cd, hidden=mod.hidden_size)
    if isinstance(mod, nn.LSTM):
        if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or mod.proj_size:
            raise DeployError(f"{where}: only single-layer, unidirectional, batch_first LSTMs are supported")
        rows = _ifog(mod.hidden_size)
        gi = _make_gemm(f"{name}.ih", cfg, mod.weight_ih_l0, None, None, threads=threads, rows=rows)
        gh = _make_gemm(f"{name}.hh", cfg, mod.weight_hh_l0, None, None, threads=threads, rows=rows)
        bias = (mod.bias_ih_l0 + mod.bias_hh_l0).detach().float().numpy()[rows].copy() if mod.bias else None
        return Layer(name, "lstm", {"ih": gi, "hh": gh}, bias, cd, hidden=mod.hidden_size)
    raise DeployError(f"{where}: {type(mod).__name__} is not supported by the packed deployment")


def deploy(applied, threads: int = 1, meta: dict | None = None) -> PackedNetwork:
    """Turn a planned (fine-tuned) network into a PackedNetwork; unsupported layers raise DeployError
    naming the layer. ``applied`` is an ``engine.apply.Applied`` (or a (Applied, meta) pair)."""
    import torch
    import torch.fx
    import torch.nn as nn

    from .layers import QUANT_LAYERS
    if isinstance(applied, tuple):
        applied, meta = applied[0], {**(applied[1] or {}), **(meta or {})}
    model = applied.model
    was = model.training
    model.eval()
    try:
        input_shape = tuple(int(d) for d in applied.topology.input_shape)
        graph = _trace(model)
        mods = dict(model.named_modules())
        per = _act_per(model, input_shape)
        gemm_types = QUANT_LAYERS + (nn.Linear, nn.Conv2d, nn.LSTM)
        names: dict = {}
        ops: list[dict] = []
        layers: dict[str, Layer] = {}
        norms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        layer_names = {n for n, m in mods.items() if isinstance(m, gemm_types)}
        n_inputs = 0
        for node in graph.nodes:
            names[node] = node.name
            where = f"node {node.name!r}"
            if node.op == "placeholder":
                n_inputs += 1
                if n_inputs > 1:
                    raise DeployError(f"{where}: networks with more than one input are not supported")
                ops.append({"op": "input", "name": node.name})
                continue
            if node.op == "output":
                res = node.args[0]
                if not isinstance(res, torch.fx.Node):
                    raise DeployError("the network must return a single tensor of logits")
                ops.append({"op": "output", "name": node.name, "args": [_enc(res, names)]})
                continue
            if node.op == "call_module":
                mod = mods[node.target]
                where = f"layer {node.target!r}"
                op = _module_op(mod, node, names, layer_names, where)
                if op["op"] == "layer" and node.target not in layers:
                    layers[node.target] = _deploy_layer(node.target, mod, applied.configs.get(node.target),
                                                        per, threads)
                if op["op"] == "batchnorm" and node.target not in norms:
                    norms[node.target] = _bn_affine(mod, where)
            elif node.op == "call_function":
                op = _function_op(node, names, where)
            elif node.op == "call_method":
                op = _method_op(node, names, where)
            else:
                raise DeployError(f"{where}: {node.op} {node.target!r} is not supported by the packed deployment")
            op["name"] = node.name
            ops.append(op)
    finally:
        model.train(was)
    m = dict(meta or {})
    m.setdefault("configs", {k: v.to_dict() for k, v in applied.configs.items()})
    return PackedNetwork(ops, layers, norms, input_shape, m)


def _bn_affine(mod, where):
    import torch
    if not mod.track_running_stats or mod.running_mean is None:
        raise DeployError(f"{where}: batch norm without running statistics is not supported")
    with torch.no_grad():
        var = mod.running_var.double()
        inv = 1.0 / torch.sqrt(var + mod.eps)
        w = mod.weight.double() if mod.weight is not None else torch.ones_like(var)
        b = mod.bias.double() if mod.bias is not None else torch.zeros_like(var)
        scale = (w * inv).float().numpy()
        shift = (b - mod.running_mean.double() * w * inv).float().numpy()
    return scale, shift


# ============================================================================ files

def save_packed(net: PackedNetwork, path) -> dict:
    """Write one safetensors file (packed arrays + JSON metadata) atomically; returns the summary."""
    from safetensors.numpy import save

    from .fileio import atomic_write_bytes
    tensors: dict[str, np.ndarray] = {}
    layers_meta = []
    for lname, layer in net.layers.items():
        lm = {"name": lname, "kind": layer.kind, "config": layer.config, "conv": layer.conv,
              "hidden": layer.hidden, "bias": layer.bias is not None, "gemms": {}}
        for part, g in layer.gemms.items():
            lm["gemms"][part] = g.meta()
            tensors.update(g.arrays(f"layers.{lname}.{part}"))
        if layer.bias is not None:
            tensors[f"layers.{lname}.bias"] = layer.bias
        layers_meta.append(lm)
    for nname, (scale, shift) in net.norms.items():
        tensors[f"norms.{nname}.scale"] = scale
        tensors[f"norms.{nname}.shift"] = shift
    summary = net.summary()
    meta = {"kind": PACKED_KIND, "version": PACKED_VERSION, "input_shape": list(net.input_shape),
            "ops": net.ops, "layers": layers_meta, "norms": list(net.norms),
            "info": {k: v for k, v in net.meta.items()}, "summary": summary}
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={META_KEY: json.dumps(meta)}))
    return summary


def _expect(arrs: dict, key: str, dtype, shape, where: str) -> np.ndarray:
    if key not in arrs:
        raise DeployError(f"{where}: array {key!r} is missing")
    a = arrs[key]
    if a.dtype != np.dtype(dtype) or tuple(a.shape) != tuple(shape):
        raise DeployError(f"{where}: array {key!r} is {a.dtype}{tuple(a.shape)}, expected "
                          f"{np.dtype(dtype)}{tuple(shape)}")
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _load_gemm(arrs: dict, prefix: str, gm: dict, where: str) -> Gemm:
    try:
        kernel, n, k = gm["kernel"], int(gm["n"]), int(gm["k"])
        if kernel not in KERNELS or n < 1 or k < 1:
            raise ValueError(f"kernel {kernel!r}, shape ({n}, {k})")
        act = ActSpec.from_dict(gm["act"]) if gm.get("act") else None
        if act is not None:
            if act.method not in ("lsq", "wrpn") or not 1 <= act.bits <= 8 or act.p not in (1, 2) \
                    or not (math.isfinite(act.step) and act.step > 0) or act.n < 1:
                raise ValueError("bad activation quantizer")
        if kernel == "float":
            wf = _expect(arrs, f"{prefix}.float", np.float32, (n, k), where)
            return Gemm(gm["name"], kernel, n, k, act, w_float=wf, note=gm.get("note", ""))
        if (act is None) != (kernel == "float-act"):
            raise ValueError("activation quantizer does not match the kernel")
        layout, bits, signed = gm["layout"], int(gm["bits"]), bool(gm["signed"])
        if not 1 <= bits <= 8 or layout != {"bitserial": "planes", "int8": "int8", "nm": "nm",
                                             "float-act": "float"}[kernel]:
            raise ValueError(f"layout {layout!r} with {bits} bits")
        w_p, w_q = int(gm.get("w_p", 1)), int(gm.get("w_q", 0))
        if (w_p, w_q) not in ((1, 0), (2, -1)):
            raise ValueError("bad weight code map")
    except (KeyError, TypeError, ValueError) as e:
        raise DeployError(f"{where}: invalid layer metadata ({e})") from None
    kb64 = (k + 63) // 64
    if layout == "planes":
        arrays = {"planes": _expect(arrs, f"{prefix}.planes", np.uint64, (n, bits, (k + 255) // 256 * 4), where)}
    elif layout == "int8":
        nd = 1 if bits <= 4 else 2
        arrays = {"digits": _expect(arrs, f"{prefix}.digits", np.uint8, (n, nd, kb64 * 32), where),
                  "usum": _expect(arrs, f"{prefix}.usum", np.int64, (n,), where)}
    elif layout == "nm":
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        nv = 1 if max(-lo, hi) <= 64 else 2
        arrays = {"values": _expect(arrs, f"{prefix}.values", np.int8, (n, nv, kb64 * 32), where),
                  "positions": _expect(arrs, f"{prefix}.positions", np.uint8, (n, kb64 * 32), where),
                  "wsum": _expect(arrs, f"{prefix}.wsum", np.int64, (n,), where)}
        if int(arrays["positions"].max(initial=0)) > 3:
            raise DeployError(f"{where}: 2:4 positions out of range (corrupt file)")
    else:
        arrays = {"lanes": _expect(arrs, f"{prefix}.lanes", np.uint32, ((n + 7) // 8, (k + 29) // 30, bits, 8),
                                   where)}
    sums = _expect(arrs, f"{prefix}.row_sums", np.int64, (n,), where)
    scale = _expect(arrs, f"{prefix}.scale", np.float32, (n,), where)
    if not np.all(np.isfinite(scale)):
        raise DeployError(f"{where}: non-finite weight scales (corrupt file)")
    pw = K.PackedWeights(layout, bits, signed, (n, k), arrays, sums)
    return Gemm(gm["name"], kernel, n, k, act, packed=pw, w_scale=scale, w_p=w_p, w_q=w_q,
                w_bits=int(gm.get("w_bits", bits)), note=gm.get("note", ""))


def load_packed(path) -> PackedNetwork:
    """Read a file written by ``save_packed``; a missing, corrupt or foreign file is a DeployError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load
    p = Path(path)
    if not p.is_file():
        raise DeployError(f"packed network {str(p)!r} does not exist")
    try:
        arrs = load(p.read_bytes())
        with safe_open(str(p), framework="numpy") as f:
            md = f.metadata() or {}
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as e:
        raise DeployError(f"packed network {str(p)!r} is not a valid safetensors file: {e}") from None
    from .fileio import load_json   # nesting and integer-size limits, like every file bitscape reads
    meta = load_json(md.get(META_KEY, "{}"), f"packed network {str(p)!r}: its metadata", error=DeployError)
    if not isinstance(meta, dict) or meta.get("kind") != PACKED_KIND:
        raise DeployError(f"{str(p)!r} is not a packed network written by `bitscape deploy`")
    if meta.get("version") != PACKED_VERSION:
        raise DeployError(f"packed network {str(p)!r} has version {meta.get('version')!r}; "
                          f"this bitscape reads version {PACKED_VERSION}")
    where0 = f"packed network {str(p)!r}"
    try:
        input_shape = tuple(int(d) for d in meta["input_shape"])
        ops = list(meta["ops"])
        layers = {}
        for lm in meta["layers"]:
            name = lm["name"]
            where = f"{where0}, layer {name!r}"
            gemms = {part: _load_gemm(arrs, f"layers.{name}.{part}", gm, where) for part, gm in lm["gemms"].items()}
            kind = lm["kind"]
            need = {"linear": {"w"}, "conv2d": {"w"}, "lstm": {"ih", "hh"}}.get(kind)
            if need is None or set(gemms) != need:
                raise DeployError(f"{where}: invalid layer kind {kind!r} / parts {sorted(gemms)}")
            nb = 4 * int(lm["hidden"]) if kind == "lstm" else gemms["w"].n
            bias = _expect(arrs, f"layers.{name}.bias", np.float32, (nb,), where) if lm["bias"] else None
            if kind == "lstm" and (gemms["ih"].n != nb or gemms["hh"].n != nb or gemms["hh"].k != nb // 4):
                raise DeployError(f"{where}: LSTM weight shapes do not match hidden size {lm['hidden']}")
            conv = lm.get("conv") or {}
            if kind == "conv2d":
                conv = {"kernel_size": [int(v) for v in conv["kernel_size"]], "stride": [int(v) for v in conv["stride"]],
                        "padding": [int(v) for v in conv["padding"]], "in_channels": int(conv["in_channels"])}
                kh, kw = conv["kernel_size"]
                if kh * kw * conv["in_channels"] != gemms["w"].k or min(conv["stride"]) < 1 or min(conv["padding"]) < 0:
                    raise DeployError(f"{where}: convolution geometry does not match its weights")
            layers[name] = Layer(name, kind, gemms, bias, lm.get("config", {}), conv, int(lm.get("hidden", 0)))
        norms = {}
        for nname in meta.get("norms", []):
            sc = np.asarray(arrs.get(f"norms.{nname}.scale"))
            sh = np.asarray(arrs.get(f"norms.{nname}.shift"))
            if sc.dtype != np.float32 or sh.dtype != np.float32 or sc.ndim != 1 or sc.shape != sh.shape:
                raise DeployError(f"{where0}: batch norm {nname!r} arrays are missing or malformed")
            norms[nname] = (sc, sh)
        defined = set()
        for op in ops:
            kind = op["op"]
            if kind not in _OPS and kind not in ("input", "output", "layer", "batchnorm"):
                raise DeployError(f"{where0}: unknown op {kind!r}")
            if kind == "layer" and op["layer"] not in layers:
                raise DeployError(f"{where0}: op refers to unknown layer {op['layer']!r}")
            if kind == "batchnorm" and op["norm"] not in norms:
                raise DeployError(f"{where0}: op refers to unknown batch norm {op['norm']!r}")
            for ref in _refs(op.get("args", [])):
                if ref not in defined:
                    raise DeployError(f"{where0}: op {op.get('name')!r} uses {ref!r} before it is defined")
            defined.add(op["name"])
        if not ops or ops[-1]["op"] != "output":
            raise DeployError(f"{where0}: the op list has no output")
    except DeployError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DeployError(f"{where0}: invalid metadata ({type(e).__name__}: {e})") from None
    return PackedNetwork(ops, layers, norms, input_shape, meta.get("info", {}))


def _refs(args):
    for a in args:
        if isinstance(a, dict):
            if "ref" in a:
                yield a["ref"]
            for key in ("slice", "tuple", "list"):
                if key in a:
                    yield from _refs(a[key])
        elif isinstance(a, list):
            yield from _refs(a)


# ============================================================================ verification

def reference_logits(applied, x, batch_size: int = 512) -> np.ndarray:
    """The fake-quantized torch model's logits (the reference the packed network must match)."""
    import torch

    from .finetune import predict_logits
    xt = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, dtype=np.float32))
    return predict_logits(applied.model, xt, batch_size).numpy()


def agreement(ref: np.ndarray, got: np.ndarray, labels=None) -> dict:
    """Argmax agreement and logit differences of two (N, classes) arrays."""
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    same = ref.argmax(1) == got.argmax(1)
    diff = np.abs(ref - got)
    out = {"examples": int(len(ref)), "same_argmax": int(same.sum()), "agreement": float(same.mean()),
           "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
           "max_rel_logit_diff": float(diff.max() / max(np.abs(ref).max(), 1e-12))}
    if labels is not None:
        y = np.asarray(labels)
        out["reference_accuracy"] = float((ref.argmax(1) == y).mean())
        out["packed_accuracy"] = float((got.argmax(1) == y).mean())
    return out


def verify(applied, net: PackedNetwork, x, y=None, batch_size: int = 512) -> dict:
    """Run both models over ``x`` and report their agreement."""
    import torch
    xn = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
    ref = reference_logits(applied, x, batch_size)
    got = net.predict(xn, batch_size)
    return agreement(ref, got, y.numpy() if isinstance(y, torch.Tensor) else y)
