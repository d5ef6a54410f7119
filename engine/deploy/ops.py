"""The packed network's non-GEMM ops (numpy) and the JSON encoding of their arguments."""
from __future__ import annotations

import numpy as np

from engine.deploy.operands import DeployError


def _sigmoid(x):
    e = np.exp(-x)
    e += np.float32(1.0)
    return np.reciprocal(e, out=e)


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
