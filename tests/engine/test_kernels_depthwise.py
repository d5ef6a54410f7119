"""The direct depthwise convolution kernel: exact equality with torch's float64 grouped conv of the
same integer codes on both C paths and 1/2 threads, and clear errors for wrong shapes and codes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _bitpack
from engine import kernels as K

PATHS = ["portable"] + (["avx2"] if K.has_avx2() else [])
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=PATHS)
def path(request):
    with K.portable(request.param == "portable"):
        yield request.param


def _codes(rng, shape, bits, signed, level="random"):
    lo, hi = K._code_range(bits, signed)
    if level == "min":
        return np.full(shape, lo, dtype=np.int64)
    if level == "max":
        return np.full(shape, hi, dtype=np.int64)
    return rng.integers(lo, hi + 1, size=shape)


def _expect(x, w, stride, padding):
    c = w.shape[0]
    return torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                                      stride=stride, padding=padding, groups=c).numpy()


@given(b=st.integers(1, 3), c=st.integers(1, 40), h=st.integers(3, 9), wd=st.integers(3, 9),
       k=st.sampled_from([(1, 1), (3, 3), (3, 2), (5, 5)]), stride=st.sampled_from([1, 2, (1, 2)]),
       padding=st.sampled_from([0, 1, 2, (0, 1)]), wb=st.integers(1, 8), ab=st.integers(1, 8),
       a_signed=st.booleans(), level=st.sampled_from(["random", "random", "min", "max"]),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
@SETTINGS
def test_depthwise_exact(path, b, c, h, wd, k, stride, padding, wb, ab, a_signed, level, threads, seed):
    rng = np.random.default_rng(seed)
    kh, kw = k
    pad = (padding, padding) if isinstance(padding, int) else padding
    if h + 2 * pad[0] < kh or wd + 2 * pad[1] < kw:
        return
    w = _codes(rng, (c, 1, kh, kw), wb, True, level)
    x = _codes(rng, (b, c, h, wd), ab, a_signed, level)
    y = K.conv2d_depthwise(x, K.pack_depthwise(w, wb, True, k), k, stride, padding, ab, a_signed, threads=threads)
    exp = _expect(x, w, stride, padding)
    assert y.dtype == np.int32 and y.shape == exp.shape
    np.testing.assert_array_equal(y, exp)


def test_depthwise_worst_case_and_paths_agree():
    """Largest products (-128 x 255 and -128 x -128) over 7x7 taps and 37 channels (vector + tail)."""
    w = np.full((37, 1, 7, 7), -128)
    for a_signed, val in ((False, 255), (True, -128)):
        x = np.full((2, 37, 9, 9), val)
        pw = K.pack_depthwise(w, 8, True, 7)
        outs = []
        for flag in (True, False):
            with K.portable(flag):
                outs.append(K.conv2d_depthwise(x, pw, 7, 1, 3, 8, a_signed, threads=2))
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], _expect(x, w, 1, 3))


def test_unsigned_weights_and_unpack_roundtrip():
    rng = np.random.default_rng(1)
    w = rng.integers(0, 8, size=(5, 9))
    pw = K.pack_depthwise(w, 3, False, 3)
    np.testing.assert_array_equal(pw.unpack(), w)
    x = rng.integers(-8, 8, size=(1, 5, 6, 6))
    np.testing.assert_array_equal(K.conv2d_depthwise(x, pw, 3, 1, 1, 4, True),
                                  _expect(x, w.reshape(5, 1, 3, 3), 1, 1))


def _dw(c=4, k=3):
    return K.pack_depthwise(np.zeros((c, k * k), np.int64), 4, True, k)


BAD = [
    ("4-d weights not (C,1,k,k)", lambda: K.pack_depthwise(np.zeros((4, 2, 3, 3), np.int64), 4, True, 3), ValueError, r"\(C, 1, 3, 3\)"),
    ("taps vs kernel", lambda: K.pack_depthwise(np.zeros((4, 8), np.int64), 4, True, 3), ValueError, "8 taps"),
    ("weight range", lambda: K.pack_depthwise(np.full((4, 9), 9), 4, True, 3), ValueError, "outside"),
    ("unsigned 8-bit > 127", lambda: K.pack_depthwise(np.full((4, 9), 200), 8, False, 3), ValueError, "int8 taps"),
    ("channels", lambda: K.conv2d_depthwise(np.zeros((1, 3, 5, 5), np.int64), _dw(), 3), ValueError, "3 channels"),
    ("kernel mismatch", lambda: K.conv2d_depthwise(np.zeros((1, 4, 5, 5), np.int64), _dw(), 5), ValueError, "9 taps"),
    ("3-d x", lambda: K.conv2d_depthwise(np.zeros((4, 5, 5), np.int64), _dw(), 3), ValueError, r"\(B, C, H, W\)"),
    ("float x", lambda: K.conv2d_depthwise(np.zeros((1, 4, 5, 5), np.float32), _dw(), 3), TypeError, "integer codes"),
    ("act range", lambda: K.conv2d_depthwise(np.full((1, 4, 5, 5), 300), _dw(), 3), ValueError, "outside"),
    ("too small", lambda: K.conv2d_depthwise(np.zeros((1, 4, 2, 2), np.int64), _dw(), 3), ValueError, "larger"),
    ("stride 0", lambda: K.conv2d_depthwise(np.zeros((1, 4, 5, 5), np.int64), _dw(), 3, stride=0), ValueError, "stride"),
    ("gemm weights", lambda: K.conv2d_depthwise(np.zeros((1, 4, 5, 5), np.int64),
                                                K.pack_weights(np.zeros((4, 9), np.int64), 4, True, "int8"), 3),
     ValueError, "layout='dw'"),
    ("threads", lambda: K.conv2d_depthwise(np.zeros((1, 4, 5, 5), np.int64), _dw(), 3, threads=0), ValueError, "threads"),
    ("bound dtype", lambda: K.bind_depthwise(_dw(), 3, 1, 8, True)(np.zeros((1, 5, 5, 4), np.uint8)), ValueError, "int8"),
    ("bound channels", lambda: K.bind_depthwise(_dw(), 3, 1, 8, True)(np.zeros((1, 5, 5, 3), np.int8)), ValueError, "4\\)"),
    ("tampered taps", lambda: K.bind_depthwise(dataclasses.replace(_dw(), shape=(4, 4)), 2, 1, 8, True)(
        np.zeros((1, 5, 5, 4), np.int8)), ValueError, "taps"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_raise_clear_errors(name, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def _c_args():
    return (np.zeros((9, 4), np.int8), np.zeros((2, 5, 5, 4), np.int8), np.zeros((2, 3, 3, 4), np.int32))


C_BAD = [
    ("weights dtype", lambda w, a, o: _bitpack.conv_depthwise(w.astype(np.uint8), 3, 3, 1, 1, a, 8, True, o, 1), TypeError, "int8"),
    ("taps", lambda w, a, o: _bitpack.conv_depthwise(w[:8].copy(), 3, 3, 1, 1, a, 8, True, o, 1), ValueError, "taps"),
    ("channels", lambda w, a, o: _bitpack.conv_depthwise(w[:, :3].copy(), 3, 3, 1, 1, a, 8, True, o, 1), ValueError, "channels"),
    ("act sign", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, a.view(np.uint8), 8, True, o, 1), TypeError, "int8"),
    ("act range", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, np.full_like(a, 5), 2, True, o, 1), ValueError, "outside"),
    ("3-d acts", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, a[0], 8, True, o, 1), ValueError, "4-dimensional"),
    ("out shape", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 2, 1, a, 8, True, o, 1), ValueError, "out must have shape"),
    ("out dtype", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, a, 8, True, o.astype(np.int64), 1), TypeError, "int32"),
    ("non-contiguous", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, a[:, :, ::2], 8, True, o, 1), ValueError, "contiguous"),
    ("kernel 0", lambda w, a, o: _bitpack.conv_depthwise(w, 0, 3, 1, 1, a, 8, True, o, 1), ValueError, "kernel height"),
    ("stride 0", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 0, 1, a, 8, True, o, 1), ValueError, "stride height"),
    ("too many taps", lambda w, a, o: _bitpack.conv_depthwise(w, 100, 100, 1, 1, a, 8, True, o, 1), ValueError, "taps"),
    ("too large", lambda w, a, o: _bitpack.conv_depthwise(np.zeros((36, 4), np.int8), 6, 6, 1, 1, a, 8, True, o, 1),
     ValueError, "larger"),
    ("threads", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, a, 8, True, o, 9), ValueError, "threads"),
    ("empty", lambda w, a, o: _bitpack.conv_depthwise(w, 3, 3, 1, 1, a[:0], 8, True, o, 1), ValueError, "zero-size"),
]


@pytest.mark.parametrize("name,call,exc,msg", C_BAD, ids=[b[0] for b in C_BAD])
def test_c_layer_never_trusts_inputs(name, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(*_c_args())
