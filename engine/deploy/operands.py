"""The packed network's operands: how a layer quantizes its input (``ActSpec``) and one packed
weight matrix with the kernel that multiplies by it (``Gemm``). numpy and ``engine.kernels`` only.

The exact fake-quant math is reproduced: an operand's real value is ``scale * (p * u + q)`` with
``u`` the packed code ((p, q) = (1, 0), or (2, -1) for binary {-1, +1} codes stored as one bit),
so a dot product is ``s_a s_w (p_a p_w u_a.u_w + p_w q_a sum u_w + q_w p_a sum u_a + K q_a q_w)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine import kernels as K
from engine.errors import UserError

try:   # the clip ufunc itself (np.clip adds a Python wrapper around it)
    from numpy._core.umath import clip as _clip
except ImportError:  # pragma: no cover - older numpy
    _clip = np.clip

PACKED_KIND = "packed-network"
PACKED_VERSION = 1
META_KEY = "bitscape"
FLOAT = 32
KERNELS = ("bitserial", "int8", "nm", "float-act", "float", "depthwise")


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
        if self.method == "lsq" and self.binary and self.p == 1:
            pos, neg = np.int8(1), np.int8(-1)

            def sign_codes(x, out=None):     # {-1, +1} as signed codes: x >= 0 -> +1 (NaN -> -1, as torch)
                ge = np.greater_equal(x, 0)
                if out is None:
                    out = np.empty(x.shape, dt)
                np.copyto(out, neg)
                np.copyto(out, pos, where=ge)
                return out
            return sign_codes

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
    def from_dict(cls, d: dict) -> ActSpec:
        return cls(**d)


def bits_for(lo: int, hi: int) -> tuple[int, bool]:
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
