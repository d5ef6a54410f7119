"""Bit-packed low-precision kernels: the thin Python face of the C extension ``engine._bitpack``.

Everything here works on integer *codes* (scales and zero points are applied by the caller) and
returns exact integer results, except ``gemm_float_act`` (float activations, float32 output).
Weights are packed once into the layout their kernel reads (``pack_weights(codes, bits, signed,
layout)``); every function checks dtype, shape, contiguity and ranges before any C runs, and the
C code checks again. Inputs may be numpy arrays or CPU torch tensors.

Conventions: weights are (N, K) codes (rows = output channels), activations (M, K) codes; a GEMM
returns (M, N) = a @ w.T. A signed b-bit code is two's complement in [-2^(b-1), 2^(b-1)); an
unsigned one is in [0, 2^b).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from engine import _bitpack

__all__ = [
    "PackedWeights", "pack_weights", "pack_activations", "pack_nm", "unpack",
    "gemm_bitserial", "gemm_int8", "gemm_nm", "gemm_float_act", "conv2d",
    "has_avx2", "simd_path", "set_portable", "portable", "bind_gemm",
]

LAYOUTS = ("planes", "int8", "nm", "float")
MAX_THREADS = 8


def has_avx2() -> bool:
    """True when the CPU has AVX2 + POPCNT (the fast path is then used unless forced portable)."""
    return bool(_bitpack.has_avx2())


def simd_path() -> str:
    """The kernel path in use now: ``"avx2"`` or ``"portable"``."""
    return _bitpack.path()


def set_portable(flag: bool) -> bool:
    """Force (True) or release (False) the portable C path for all kernels; returns the old flag."""
    return bool(_bitpack.set_portable(bool(flag)))


@contextlib.contextmanager
def portable(flag: bool = True):
    """Context manager running the enclosed kernels on the portable path (for tests, benchmarks)."""
    old = set_portable(flag)
    try:
        yield
    finally:
        set_portable(old)


@dataclass(frozen=True)
class PackedWeights:
    """Integer codes packed once for one kernel family.

    ``layout`` names the kernel family ("planes": bit-serial and pack/unpack; "int8": int8-dot;
    "nm": 2:4 compressed; "float": float-activation GEMV/GEMM); ``shape`` is (rows, K) of the codes;
    ``row_sums`` is the int64 sum of codes per row, which a caller needs for activation zero-point
    corrections (sum_k (a_k - z) w_k = sum_k a_k w_k - z * row_sums). Arrays are read-only.
    """

    layout: str
    bits: int
    signed: bool
    shape: tuple[int, int]
    arrays: dict = field(repr=False)
    row_sums: np.ndarray = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed arrays (the deployment footprint)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    def unpack(self) -> np.ndarray:
        """The codes back as int8 (signed) or uint8 (unsigned), shape (rows, K)."""
        return unpack(self)


# ----------------------------------------------------------------------------- input checks

def _array(x, name: str) -> np.ndarray:
    """numpy view of a numpy array or CPU torch tensor (no copy); rejects anything else."""
    if isinstance(x, np.ndarray):
        return x
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is a torch tensor on {x.device}; move it to the CPU first")
        return x.detach().numpy()
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


def _check_bits(bits, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"{name} must be an integer in 1..8, got {bits!r}")
    return int(bits)


def _check_threads(threads) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must be an integer in 1..{MAX_THREADS}, got {threads!r}")
    return int(threads)


def _code_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _codes(x, name: str, bits: int, signed: bool, ndim: int = 2) -> np.ndarray:
    """Checked integer codes as a C-contiguous int8 (signed) / uint8 (unsigned) array."""
    a = _array(x, name)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer codes, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray or .contiguous())")
    lo, hi = _code_range(bits, signed)
    amin, amax = int(a.min()), int(a.max())
    if amin < lo or amax > hi:
        raise ValueError(f"{name} holds codes in [{amin}, {amax}], outside the {bits}-bit "
                         f"{'signed' if signed else 'unsigned'} range [{lo}, {hi}]")
    return np.ascontiguousarray(a, dtype=np.int8 if signed else np.uint8)


def _floats(x, name: str) -> np.ndarray:
    a = _array(x, name)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got dtype {a.dtype}")
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must be (K,) or (M, K), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use np.ascontiguousarray or .contiguous())")
    return np.ascontiguousarray(a, dtype=np.float32)


def _packed(w, layout: str, fn: str) -> PackedWeights:
    if not isinstance(w, PackedWeights):
        raise TypeError(f"{fn}: weights must be a PackedWeights (from pack_weights), got {type(w).__name__}")
    if w.layout != layout:
        raise ValueError(f"{fn} needs weights packed with layout={layout!r}, got {w.layout!r}")
    return w


def _frozen(**arrays) -> dict:
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


def _out_dtype(out_dtype, k: int, wb: int, ws: bool, ab: int, as_: bool):
    """int32 when the worst case fits (or as asked), else int64."""
    bound = k * max(abs(x) for x in _code_range(wb, ws)) * max(abs(x) for x in _code_range(ab, as_))
    if out_dtype is None:
        return np.int32 if bound <= np.iinfo(np.int32).max else np.int64
    dt = np.dtype(out_dtype)
    if dt not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise TypeError(f"out_dtype must be int32 or int64, got {dt}")
    return dt


# ----------------------------------------------------------------------------- packing

def pack_weights(codes, bits: int, signed: bool, layout: str = "planes") -> PackedWeights:
    """Pack (rows, K) integer codes once, in the order the ``layout``'s kernel reads them."""
    bits = _check_bits(bits)
    signed = bool(signed)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "nm":
        return pack_nm(codes, bits, signed)
    c = _codes(codes, "codes", bits, signed)
    rows, k = c.shape
    sums = c.sum(axis=1, dtype=np.int64)
    if layout == "planes":
        planes = np.empty((rows, bits, (k + 255) // 256 * 4), dtype=np.uint64)
        _bitpack.pack_planes(c, bits, signed, planes)
        arrays = _frozen(planes=planes)
    elif layout == "int8":
        arrays = _frozen(**_pack_int8(c, bits, signed))
    else:
        arrays = _frozen(lanes=_pack_float(c, bits))
    sums.setflags(write=False)
    return PackedWeights(layout, bits, signed, (rows, k), arrays, sums)


def pack_activations(codes, bits: int, signed: bool) -> PackedWeights:
    """Bit-planes of (M, K) activation codes for ``gemm_bitserial`` (packed per call, AVX2 movemask)."""
    return pack_weights(codes, bits, signed, "planes")


def _pack_int8(c: np.ndarray, bits: int, signed: bool) -> dict:
    # offset codes u = w + ow in [0, 2^bits), split into 4-bit digits, two digits per byte:
    # in each 64-k block byte i holds digit(k=i) | digit(k=32+i) << 4
    rows, k = c.shape
    kb = (k + 63) // 64
    u = np.zeros((rows, kb * 64), dtype=np.int64)
    u[:, :k] = c.astype(np.int64) + ((1 << (bits - 1)) if signed else 0)
    ndig = 1 if bits <= 4 else 2
    dig = np.stack([(u >> (4 * d)) & 15 for d in range(ndig)], axis=1).reshape(rows, ndig, kb, 2, 32)
    packed = (dig[..., 0, :] | (dig[..., 1, :] << 4)).astype(np.uint8).reshape(rows, ndig, kb * 32)
    return {"digits": np.ascontiguousarray(packed), "usum": u.sum(axis=1)}


def _pack_float(c: np.ndarray, bits: int) -> np.ndarray:
    # lanes[nb, ch, j, l]: plane j of row 8*nb+l for k in [30ch, 30ch+30), k = 30ch+3g+i at bit 3g+i
    rows, k = c.shape
    nb, ch = (rows + 7) // 8, (k + 29) // 30
    u = np.zeros((nb * 8, ch * 30), dtype=np.uint32)
    u[:rows, :k] = c.astype(np.int64) & ((1 << bits) - 1)
    shifts = np.arange(30, dtype=np.uint32)
    lanes = np.empty((nb, ch, bits, 8), dtype=np.uint32)
    for j in range(bits):
        bit = ((u >> np.uint32(j)) & np.uint32(1)).reshape(nb * 8, ch, 30)
        lanes[:, :, j, :] = (bit << shifts).sum(axis=2, dtype=np.uint32).reshape(nb, 8, ch).transpose(0, 2, 1)
    return lanes


# kernel slot s of a 64-k block holds group _NM_GROUP[s] (k = 4*group + pos); see cext/bitpack.h
_NM_GROUP = np.array([(0, 8, 4, 12)[s // 8] + (s % 8) // 2 for s in range(32)])
_NM_PERM = 2 * _NM_GROUP + np.arange(32) % 2


def pack_nm(codes, bits: int, signed: bool, n: int = 2, m: int = 4) -> PackedWeights:
    """Compress (rows, K) codes with at most ``n`` nonzeros in every group of ``m`` along K (2:4).

    Keeps values plus their positions in the group (``positions`` 0..3, kernel slot order);
    ``gemm_nm`` then skips the zeros. Raises if a group holds more than ``n`` nonzeros.
    """
    bits = _check_bits(bits)
    signed = bool(signed)
    if (n, m) != (2, 4):
        raise ValueError(f"only 2:4 sparsity is implemented, got {n}:{m}")
    c = _codes(codes, "codes", bits, signed)
    rows, k = c.shape
    kb = (k + 63) // 64
    w = np.zeros((rows, kb * 64), dtype=np.int64)
    w[:, :k] = c
    groups = w.reshape(rows, kb * 16, 4)
    nz = (groups != 0).sum(axis=2)
    if (nz > n).any():
        r, g = np.argwhere(nz > n)[0]
        raise ValueError(f"codes are not 2:4 sparse: row {r}, k {4 * g}..{4 * g + 3} holds {nz[r, g]} nonzeros")
    # the two kept positions: nonzeros first, then zeros, each ascending; then sorted
    order = np.argsort(groups == 0, axis=2, kind="stable")[:, :, :2]
    pos = np.sort(order, axis=2)
    vals = np.take_along_axis(groups, pos, axis=2)
    pos = pos.reshape(rows, kb, 32)[:, :, _NM_PERM].reshape(rows, kb * 32).astype(np.uint8)
    vals = vals.reshape(rows, kb, 32)[:, :, _NM_PERM].reshape(rows, kb * 32)
    lo, hi = _code_range(bits, signed)
    if max(-lo, hi) <= 64:
        values = vals[:, None, :].astype(np.int8)
    else:  # low nibble 0..15 and high part (arithmetic shift): w = 16*high + low
        values = np.stack([vals & 15, vals >> 4], axis=1).astype(np.int8)
    sums = c.sum(axis=1, dtype=np.int64)
    sums.setflags(write=False)
    arrays = _frozen(values=np.ascontiguousarray(values), positions=np.ascontiguousarray(pos),
                     wsum=sums.copy())
    return PackedWeights("nm", bits, signed, (rows, k), arrays, sums)


def unpack(w: PackedWeights) -> np.ndarray:
    """Recover the (rows, K) codes of any layout as int8 (signed) or uint8 (unsigned)."""
    if not isinstance(w, PackedWeights):
        raise TypeError(f"unpack needs a PackedWeights, got {type(w).__name__}")
    rows, k = w.shape
    dt = np.int8 if w.signed else np.uint8
    if w.layout == "planes":
        out = np.empty((rows, k), dtype=dt)
        _bitpack.unpack_planes(w.arrays["planes"], w.bits, w.signed, out)
        return out
    if w.layout == "int8":
        nd, kb = w.arrays["digits"].shape[1], w.arrays["digits"].shape[2] // 32
        d = w.arrays["digits"].astype(np.int64).reshape(rows, nd, kb, 32)
        dig = np.stack([d & 15, d >> 4], axis=3).reshape(rows, nd, kb * 64)
        u = sum(dig[:, i] << (4 * i) for i in range(nd))
        return (u[:, :k] - ((1 << (w.bits - 1)) if w.signed else 0)).astype(dt)
    if w.layout == "nm":
        v = w.arrays["values"].astype(np.int64)
        vals = v[:, 0] if v.shape[1] == 1 else v[:, 0] + 16 * v[:, 1]
        kb = vals.shape[1] // 32
        kk = (4 * _NM_GROUP[None, None, :] + w.arrays["positions"].reshape(rows, kb, 32)
              + 64 * np.arange(kb)[None, :, None]).reshape(rows, kb * 32)
        out = np.zeros((rows, kb * 64), dtype=np.int64)
        np.put_along_axis(out, kk, vals, axis=1)
        return out[:, :k].astype(dt)
    lanes = w.arrays["lanes"].astype(np.int64)  # (nb, ch, bits, 8)
    nb, ch = lanes.shape[:2]
    u = np.zeros((nb * 8, ch * 30), dtype=np.int64)
    bitpos = np.arange(30)
    for j in range(w.bits):
        b = (lanes[:, :, j, :].transpose(0, 2, 1)[..., None] >> bitpos) & 1  # (nb, 8, ch, 30)
        u |= b.reshape(nb * 8, ch * 30) << j
    u = u[:rows, :k]
    if w.signed:
        u = np.where(u >= 1 << (w.bits - 1), u - (1 << w.bits), u)
    return u.astype(dt)


# ----------------------------------------------------------------------------- GEMMs

def gemm_bitserial(w: PackedWeights, a, a_bits: int | None = None, a_signed: bool | None = None,
                   out_dtype=None, threads: int = 1) -> np.ndarray:
    """Exact (M, N) = a @ w.T by AND + popcount over bit-plane pairs (fast for up to 2x2 bits).

    ``a`` is a PackedWeights from ``pack_activations`` or raw (M, K) codes with ``a_bits`` and
    ``a_signed``. Signed operands weight their top plane by -2^(b-1). Output int32 unless the
    worst case could overflow it (then int64), or as ``out_dtype`` says.
    """
    w = _packed(w, "planes", "gemm_bitserial")
    if not isinstance(a, PackedWeights):
        if a_bits is None or a_signed is None:
            raise ValueError("gemm_bitserial: raw activation codes need a_bits and a_signed")
        a = pack_activations(a, a_bits, a_signed)
    a = _packed(a, "planes", "gemm_bitserial (activations)")
    if a.shape[1] != w.shape[1]:
        raise ValueError(f"gemm_bitserial: K mismatch: activations have K={a.shape[1]}, weights K={w.shape[1]}")
    threads = _check_threads(threads)
    out = np.empty((a.shape[0], w.shape[0]), dtype=_out_dtype(out_dtype, w.shape[1] + 255 & ~255,
                                                              w.bits, w.signed, a.bits, a.signed))
    _bitpack.gemm_bitserial(w.arrays["planes"], w.bits, w.signed, a.arrays["planes"], a.bits, a.signed,
                            out, threads)
    return out


def _act_codes(a, w: PackedWeights, a_bits, a_signed, fn: str) -> tuple[np.ndarray, bool]:
    a_bits = _check_bits(a_bits, "a_bits")
    arr = _array(a, "activations")
    vec = arr.ndim == 1
    if vec:
        arr = arr[None, :]
    c = _codes(arr, "activations", a_bits, bool(a_signed))
    if c.shape[1] != w.shape[1]:
        raise ValueError(f"{fn}: K mismatch: activations have K={c.shape[1]}, weights K={w.shape[1]}")
    return c, vec


def gemm_int8(w: PackedWeights, a, a_bits: int = 8, a_signed: bool = True, out_dtype=None,
              threads: int = 1) -> np.ndarray:
    """Exact (M, N) = a @ w.T for wider codes (e.g. W4A8, W8A8): unpack to bytes, vpmaddubsw.

    Weights are stored as nibble digits of w + 2^(bits-1) (signed) so every vpmaddubsw pair sum is
    at most 2*15*128 (no saturation); offsets are removed with the precomputed row sums.
    ``a`` is (M, K) or (K,) codes of ``a_bits`` (<= 8) bits.
    """
    w = _packed(w, "int8", "gemm_int8")
    c, vec = _act_codes(a, w, a_bits, a_signed, "gemm_int8")
    threads = _check_threads(threads)
    out = np.empty((c.shape[0], w.shape[0]), dtype=_out_dtype(out_dtype, w.shape[1], w.bits, w.signed,
                                                              a_bits, bool(a_signed)))
    _bitpack.gemm_int8(w.arrays["digits"], w.arrays["usum"], w.bits, w.signed, c, a_bits, bool(a_signed),
                       out, threads)
    return out[0] if vec else out


def gemm_nm(w: PackedWeights, a, a_bits: int = 8, a_signed: bool = True, out_dtype=None,
            threads: int = 1) -> np.ndarray:
    """Exact (M, N) = a @ w.T with 2:4 compressed weights (from ``pack_nm``), skipping the zeros."""
    w = _packed(w, "nm", "gemm_nm")
    c, vec = _act_codes(a, w, a_bits, a_signed, "gemm_nm")
    threads = _check_threads(threads)
    out = np.empty((c.shape[0], w.shape[0]), dtype=_out_dtype(out_dtype, w.shape[1], w.bits, w.signed,
                                                              a_bits, bool(a_signed)))
    _bitpack.gemm_nm(w.arrays["values"], w.arrays["positions"], w.arrays["wsum"], w.bits, w.signed, c,
                     a_bits, bool(a_signed), out, threads)
    return out[0] if vec else out


def gemm_float_act(w: PackedWeights, x, planes: int | None = None, threads: int = 1) -> np.ndarray:
    """float32 (M, N) = x @ w_t.T, with x float (M, K) or (K,), summed over weight bit-planes.

    PrecisionBatching style: ``planes=t`` uses only the top t bit-planes, i.e. the codes with their
    low bits-t bits cleared (floor(w / 2^(bits-t)) * 2^(bits-t)); one packed model, the precision is
    chosen per call. Each plane's dot product sums exact subset tables of x (float32 rounding only).
    """
    w = _packed(w, "float", "gemm_float_act")
    if planes is None:
        planes = w.bits
    if isinstance(planes, bool) or not isinstance(planes, (int, np.integer)) or not 1 <= planes <= w.bits:
        raise ValueError(f"planes must be an integer in 1..{w.bits}, got {planes!r}")
    xf = _floats(x, "x")
    vec = xf.ndim == 1
    if vec:
        xf = xf[None, :]
    if xf.shape[1] != w.shape[1]:
        raise ValueError(f"gemm_float_act: K mismatch: x has K={xf.shape[1]}, weights K={w.shape[1]}")
    threads = _check_threads(threads)
    out = np.empty((xf.shape[0], w.shape[0]), dtype=np.float32)
    _bitpack.gemm_float(w.arrays["lanes"], w.bits, w.signed, int(planes), w.shape[0], xf, out, threads)
    return out[0] if vec else out


# ----------------------------------------------------------------------------- convolution

def _pair(v, name: str) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(t[0]), int(t[1])


def im2col(x: np.ndarray, kernel_size, stride=1, padding=0) -> tuple[np.ndarray, int, int]:
    """(B, C, H, W) -> (B*Ho*Wo, C*kh*kw) patches in torch's weight order, zero padded; plus Ho, Wo."""
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError("kernel_size and stride must be >= 1 and padding >= 0")
    b, ch, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    if xp.shape[2] < kh or xp.shape[3] < kw:
        raise ValueError(f"kernel {kh}x{kw} is larger than the padded input {xp.shape[2]}x{xp.shape[3]}")
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    ho, wo = win.shape[2], win.shape[3]
    cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(b * ho * wo, ch * kh * kw)
    return cols, ho, wo


def conv2d(x, w: PackedWeights, kernel_size, stride=1, padding=0, a_bits: int = 8, a_signed: bool = True,
           planes: int | None = None, threads: int = 1) -> np.ndarray:
    """NCHW convolution through im2col into the GEMM of ``w.layout``; returns (B, Cout, Ho, Wo).

    ``w`` packs the conv weight reshaped to (Cout, Cin*kh*kw). ``x`` holds integer codes for the
    integer layouts ("planes", "int8", "nm"; padding inserts code 0) or floats for "float".
    """
    if not isinstance(w, PackedWeights):
        raise TypeError(f"conv2d: weights must be a PackedWeights, got {type(w).__name__}")
    xa = _array(x, "x")
    if xa.ndim != 4 or xa.size == 0:
        raise ValueError(f"conv2d: x must be a non-empty (B, C, H, W) array, got shape {xa.shape}")
    kh, kw = _pair(kernel_size, "kernel_size")
    if xa.shape[1] * kh * kw != w.shape[1]:
        raise ValueError(f"conv2d: weights have K={w.shape[1]} but C*kh*kw = {xa.shape[1]}*{kh}*{kw}")
    if w.layout == "float":
        if xa.dtype.kind != "f":
            raise TypeError(f"conv2d with float-activation weights needs float x, got dtype {xa.dtype}")
    elif xa.dtype.kind not in "iu":
        raise TypeError(f"conv2d with {w.layout!r} weights needs integer codes in x, got dtype {xa.dtype}")
    cols, ho, wo = im2col(xa, (kh, kw), stride, padding)
    if w.layout == "float":
        y = gemm_float_act(w, cols, planes=planes, threads=threads)
    elif w.layout == "int8":
        y = gemm_int8(w, cols, a_bits, a_signed, threads=threads)
    elif w.layout == "nm":
        y = gemm_nm(w, cols, a_bits, a_signed, threads=threads)
    else:
        y = gemm_bitserial(w, cols, a_bits, a_signed, threads=threads)
    b = xa.shape[0]
    return np.ascontiguousarray(y.reshape(b, ho, wo, w.shape[0]).transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------- hot-path entry

def bind_gemm(w: PackedWeights, a_bits: int | None = None, a_signed: bool | None = None, threads: int = 1,
              out_dtype=None):
    """A cheaper entry point for a hot loop (the packed deployment): checks the weights, bit-widths
    and threads once and returns ``f(a) -> (M, N)`` for activation codes ``a`` (M, K), C-contiguous
    int8 (signed) / uint8 (unsigned) -- or float32 x for ``layout='float'``.

    Per call only the K and dtype are checked here (in Python); everything else (buffer format,
    contiguity, shapes, the code range) is checked by the C extension itself, as for every entry
    point. The results are those of ``gemm_bitserial`` / ``gemm_int8`` / ``gemm_nm`` /
    ``gemm_float_act`` with the same arguments.
    """
    if not isinstance(w, PackedWeights):
        raise TypeError(f"bind_gemm: weights must be a PackedWeights, got {type(w).__name__}")
    threads = _check_threads(threads)
    n, k = w.shape
    wb, ws = w.bits, w.signed
    if w.layout == "float":
        lanes = w.arrays["lanes"]
        gemm_float = _bitpack.gemm_float

        def run_float(x):
            if x.ndim != 2 or x.shape[1] != k or x.dtype != np.float32:
                raise ValueError(f"bound gemm: x must be float32 (M, {k}), got {x.dtype}{x.shape}")
            out = np.empty((x.shape[0], n), dtype=np.float32)
            gemm_float(lanes, wb, ws, wb, n, x, out, threads)
            return out
        return run_float
    if a_bits is None or a_signed is None:
        raise ValueError("bind_gemm: integer layouts need a_bits and a_signed")
    ab, as_ = _check_bits(a_bits, "a_bits"), bool(a_signed)
    adt = np.dtype(np.int8 if as_ else np.uint8)

    def _check(a):
        if a.ndim != 2 or a.shape[1] != k or a.dtype != adt:
            raise ValueError(f"bound gemm: activation codes must be {adt} (M, {k}), got {a.dtype}{a.shape}")

    if w.layout == "planes":
        planes, kw = w.arrays["planes"], (k + 255) // 256 * 4
        odt = _out_dtype(out_dtype, k + 255 & ~255, wb, ws, ab, as_)
        pack, gemm = _bitpack.pack_planes, _bitpack.gemm_bitserial

        def run_planes(a):
            _check(a)
            m = a.shape[0]
            ap = np.empty((m, ab, kw), dtype=np.uint64)
            pack(a, ab, as_, ap)
            out = np.empty((m, n), dtype=odt)
            gemm(planes, wb, ws, ap, ab, as_, out, threads)
            return out
        return run_planes
    odt = _out_dtype(out_dtype, k, wb, ws, ab, as_)
    if w.layout == "int8":
        digits, usum, gemm8 = w.arrays["digits"], w.arrays["usum"], _bitpack.gemm_int8

        def run_int8(a):
            _check(a)
            out = np.empty((a.shape[0], n), dtype=odt)
            gemm8(digits, usum, wb, ws, a, ab, as_, out, threads)
            return out
        return run_int8
    if w.layout == "nm":
        vals, pos, wsum, gemmnm = w.arrays["values"], w.arrays["positions"], w.arrays["wsum"], _bitpack.gemm_nm

        def run_nm(a):
            _check(a)
            out = np.empty((a.shape[0], n), dtype=odt)
            gemmnm(vals, pos, wsum, wb, ws, a, ab, as_, out, threads)
            return out
        return run_nm
    raise ValueError(f"bind_gemm: unknown layout {w.layout!r}")
