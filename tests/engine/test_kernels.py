"""Bit-packed kernels: exact equality with a naive int64 matmul on both C paths and 1/2 threads,
and clear Python exceptions for every bad input (engine/kernels.py and the C checks behind it)."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import _bitpack
from engine import kernels as K

PATHS = ["portable"] + (["avx2"] if K.has_avx2() else [])
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(params=PATHS)
def path(request):
    with K.portable(request.param == "portable"):
        assert K.simd_path() == request.param
        yield request.param


def test_extension_under_test():
    """cext/sanitize.sh sets BITSCAPE_EXPECT_BITPACK_DIR so its run proves the sanitized build is tested."""
    expect = os.environ.get("BITSCAPE_EXPECT_BITPACK_DIR")
    if expect:
        assert _bitpack.__file__.startswith(expect), _bitpack.__file__
    assert K.simd_path() in ("avx2", "portable")


def ref(a, w):
    return np.asarray(a).astype(np.int64) @ np.asarray(w).astype(np.int64).T


def codes(rng, shape, bits, signed, level="random"):
    """Random codes, or every code at the min / max level, or alternating min and max."""
    lo, hi = K._code_range(bits, signed)
    if level == "min":
        return np.full(shape, lo, dtype=np.int64)
    if level == "max":
        return np.full(shape, hi, dtype=np.int64)
    if level == "minmax":
        return np.where(rng.random(shape) < 0.5, lo, hi).astype(np.int64)
    return rng.integers(lo, hi + 1, size=shape)


def sparsify_24(rng, w):
    """Zero two random positions in every group of four along K."""
    n, k = w.shape
    wp = np.zeros((n, (k + 3) // 4 * 4), dtype=w.dtype)
    wp[:, :k] = w
    g = wp.reshape(n, -1, 4)
    drop = np.argsort(rng.random(g.shape), axis=2)[:, :, :2]
    np.put_along_axis(g, drop, 0, axis=2)
    return np.ascontiguousarray(wp[:, :k])


shapes = st.tuples(st.integers(1, 9), st.integers(1, 11), st.integers(1, 200))
levels = st.sampled_from(["random", "random", "min", "max", "minmax"])
seeds = st.integers(0, 2**32 - 1)


# ----------------------------------------------------------------------------- round trips

@given(shape=shapes, bits=st.integers(1, 8), signed=st.booleans(), level=levels, seed=seeds,
       layout=st.sampled_from(K.LAYOUTS))
@SETTINGS
def test_pack_unpack_roundtrip(path, shape, bits, signed, level, seed, layout):
    rng = np.random.default_rng(seed)
    w = codes(rng, shape[1:], bits, signed, level)
    if layout == "nm":
        w = sparsify_24(rng, w)
    p = K.pack_weights(w, bits, signed, layout)
    assert p.shape == w.shape and p.bits == bits and p.signed == signed
    np.testing.assert_array_equal(p.unpack().astype(np.int64), w)
    np.testing.assert_array_equal(p.row_sums, w.sum(axis=1))


def test_pack_planes_bit_layout():
    w = np.zeros((1, 70), dtype=np.int64)
    w[0, 3] = 1
    w[0, 65] = 3
    p = K.pack_weights(w, 2, False)
    planes = p.arrays["planes"]
    assert planes.shape == (1, 2, 4)
    assert planes[0, 0, 0] == 1 << 3 and planes[0, 0, 1] == 1 << 1 and planes[0, 1, 1] == 1 << 1
    assert planes[0, 1, 0] == 0 and not planes[0, :, 2:].any()


# ----------------------------------------------------------------------------- exact GEMMs

@given(shape=shapes, bw=st.integers(1, 2), ba=st.integers(1, 2), ws=st.booleans(), as_=st.booleans(),
       wl=levels, al=levels, threads=st.sampled_from([1, 2]), seed=seeds)
@SETTINGS
def test_bitserial_exact(path, shape, bw, ba, ws, as_, wl, al, threads, seed):
    rng = np.random.default_rng(seed)
    m, n, k = shape
    w, a = codes(rng, (n, k), bw, ws, wl), codes(rng, (m, k), ba, as_, al)
    pw, pa = K.pack_weights(w, bw, ws), K.pack_activations(a, ba, as_)
    out = K.gemm_bitserial(pw, pa, threads=threads)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, ref(a, w))


@pytest.mark.parametrize("bw,ba", [(3, 3), (4, 2), (8, 8), (1, 8)])
def test_bitserial_wider_pairs(path, bw, ba):
    rng = np.random.default_rng(bw * 10 + ba)
    for ws, as_ in [(True, True), (False, True), (True, False), (False, False)]:
        w, a = codes(rng, (7, 130), bw, ws), codes(rng, (5, 130), ba, as_)
        np.testing.assert_array_equal(K.gemm_bitserial(K.pack_weights(w, bw, ws), a, ba, as_, threads=2), ref(a, w))


@given(shape=shapes, bw=st.integers(1, 8), ba=st.integers(1, 8), ws=st.booleans(), as_=st.booleans(),
       wl=levels, al=levels, threads=st.sampled_from([1, 2]), seed=seeds)
@SETTINGS
def test_int8_exact(path, shape, bw, ba, ws, as_, wl, al, threads, seed):
    rng = np.random.default_rng(seed)
    m, n, k = shape
    w, a = codes(rng, (n, k), bw, ws, wl), codes(rng, (m, k), ba, as_, al)
    pw = K.pack_weights(w, bw, ws, "int8")
    np.testing.assert_array_equal(K.gemm_int8(pw, a, ba, as_, threads=threads), ref(a, w))


@given(shape=shapes, bw=st.integers(1, 8), ba=st.integers(1, 8), ws=st.booleans(), as_=st.booleans(),
       wl=levels, al=levels, threads=st.sampled_from([1, 2]), seed=seeds)
@SETTINGS
def test_nm_exact(path, shape, bw, ba, ws, as_, wl, al, threads, seed):
    rng = np.random.default_rng(seed)
    m, n, k = shape
    w = sparsify_24(rng, codes(rng, (n, k), bw, ws, wl))
    a = codes(rng, (m, k), ba, as_, al)
    pw = K.pack_nm(w, bw, ws)
    assert pw.arrays["values"].shape[2] == (k + 63) // 64 * 32  # half the (padded) K is stored
    np.testing.assert_array_equal(K.gemm_nm(pw, a, ba, as_, threads=threads), ref(a, w))


def test_nm_fewer_nonzeros_and_dense_groups_rejected(path):
    w = np.zeros((3, 9), dtype=np.int64)
    w[1, 2] = -8
    w[2, 8] = 7
    a = np.arange(-4, 5, dtype=np.int64)[None, :].repeat(2, axis=0)
    np.testing.assert_array_equal(K.gemm_nm(K.pack_nm(w, 4, True), a, 4, True), ref(a, w))
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        K.pack_nm(np.ones((2, 8), dtype=np.int64), 2, False)


@given(shape=shapes, bits=st.integers(1, 8), signed=st.booleans(), level=levels,
       threads=st.sampled_from([1, 2]), seed=seeds, data=st.data())
@SETTINGS
def test_float_act_exact_on_integer_floats(path, shape, bits, signed, level, threads, seed, data):
    rng = np.random.default_rng(seed)
    m, n, k = shape
    w = codes(rng, (n, k), bits, signed, level)
    x = rng.integers(-64, 65, size=(m, k)).astype(np.float32)  # sums stay exact in float32
    pw = K.pack_weights(w, bits, signed, "float")
    t = data.draw(st.integers(1, bits))
    wt = (w >> (bits - t)) << (bits - t)
    np.testing.assert_array_equal(K.gemm_float_act(pw, x, planes=t, threads=threads), ref(x, wt))


def test_float_act_random_floats_gemv_and_paths_agree():
    rng = np.random.default_rng(5)
    w = codes(rng, (37, 1000), 2, True)
    x = rng.standard_normal((3, 1000)).astype(np.float32)
    pw = K.pack_weights(w, 2, True, "float")
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    with K.portable(True):
        y_port = K.gemm_float_act(pw, x)
    y = K.gemm_float_act(pw, x, threads=2)
    scale = np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)
    assert np.all(np.abs(y - exact) <= 1e-5 * scale + 1e-6)
    np.testing.assert_array_equal(y, y_port)  # same summation order on both paths
    np.testing.assert_array_equal(K.gemm_float_act(pw, x[1]), y[1])  # GEMV form


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 300, 4100), (130, 1, 257), (67, 45, 1000), (256, 64, 64)])
def test_all_kernels_large_and_degenerate_shapes(path, m, n, k):
    rng = np.random.default_rng(m * n + k)
    w1, a1 = codes(rng, (n, k), 1, False), codes(rng, (m, k), 1, False)
    w2, a2 = codes(rng, (n, k), 2, True), codes(rng, (m, k), 2, True)
    w4, a8 = codes(rng, (n, k), 4, True), codes(rng, (m, k), 8, False)
    w8 = codes(rng, (n, k), 8, True, "minmax")
    for threads in (1, 2):
        np.testing.assert_array_equal(K.gemm_bitserial(K.pack_weights(w1, 1, False), a1, 1, False, threads=threads), ref(a1, w1))
        np.testing.assert_array_equal(K.gemm_bitserial(K.pack_weights(w2, 2, True), a2, 2, True, threads=threads), ref(a2, w2))
        np.testing.assert_array_equal(K.gemm_int8(K.pack_weights(w4, 4, True, "int8"), a8, 8, False, threads=threads), ref(a8, w4))
        np.testing.assert_array_equal(K.gemm_int8(K.pack_weights(w8, 8, True, "int8"), a8, 8, False, threads=threads), ref(a8, w8))
        ws = sparsify_24(rng, w8)
        np.testing.assert_array_equal(K.gemm_nm(K.pack_nm(ws, 8, True), a8, 8, False, threads=threads), ref(a8, ws))
        x = a8.astype(np.float32) - 128
        np.testing.assert_array_equal(K.gemm_float_act(K.pack_weights(w2, 2, True, "float"), x, threads=threads), ref(x, w2))


# the AVX2 fast paths: bit-serial <= 2x2 bits (byte counters flushed every 255 // (8 * sum 2^s)
# steps of 256 bits: 31 for 1x1, 3 for 2x2), int8-dot (int16 sums flushed every 4 blocks of 64, 4-row
# tiles, signed rows read in place when K % 64 == 0); long K crosses every flush boundary
long_shapes = st.tuples(st.integers(1, 9), st.integers(1, 7),
                        st.one_of(st.integers(1, 9000), st.sampled_from([256, 767, 768, 769, 1024, 7936, 7937, 8192])))


@given(shape=long_shapes, bw=st.integers(1, 2), ba=st.integers(1, 2), ws=st.booleans(), as_=st.booleans(),
       wl=levels, al=levels, out64=st.booleans(), threads=st.sampled_from([1, 2]), seed=seeds)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_bitserial_fast_path_long_k(path, shape, bw, ba, ws, as_, wl, al, out64, threads, seed):
    rng = np.random.default_rng(seed)
    m, n, k = shape
    w, a = codes(rng, (n, k), bw, ws, wl), codes(rng, (m, k), ba, as_, al)
    out = K.gemm_bitserial(K.pack_weights(w, bw, ws), K.pack_activations(a, ba, as_),
                           out_dtype=np.int64 if out64 else None, threads=threads)
    np.testing.assert_array_equal(out, ref(a, w))


@given(shape=long_shapes, bw=st.sampled_from([1, 2, 4, 5, 8]), ba=st.sampled_from([1, 4, 7, 8]), ws=st.booleans(),
       as_=st.booleans(), wl=levels, al=levels, out64=st.booleans(), threads=st.sampled_from([1, 2]), seed=seeds)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_int8_long_k_and_tiles(path, shape, bw, ba, ws, as_, wl, al, out64, threads, seed):
    rng = np.random.default_rng(seed)
    m, n, k = shape
    w, a = codes(rng, (n, k), bw, ws, wl), codes(rng, (m, k), ba, as_, al)
    out = K.gemm_int8(K.pack_weights(w, bw, ws, "int8"), a, ba, as_, out_dtype=np.int64 if out64 else None,
                      threads=threads)
    np.testing.assert_array_equal(out, ref(a, w))


@pytest.mark.parametrize("k", [768, 769, 7936, 7937, 8191])
def test_fast_paths_worst_case_counters(path, k):
    """All-max / all-min codes drive every byte counter and int16 partial sum to its bound."""
    for bits, sgn in [(1, False), (2, False), (2, True), (1, True)]:
        for lw, la in [("max", "max"), ("min", "min"), ("min", "max"), ("max", "min")]:
            w, a = codes(None, (6, k), bits, sgn, lw), codes(None, (9, k), bits, sgn, la)
            np.testing.assert_array_equal(K.gemm_bitserial(K.pack_weights(w, bits, sgn), a, bits, sgn), ref(a, w))
    for bw, ws, ab, as_ in [(4, True, 8, True), (4, False, 8, False), (8, True, 8, True), (4, True, 8, False)]:
        for lw, la in [("max", "min"), ("max", "max"), ("min", "min"), ("min", "max")]:
            w, a = codes(None, (5, k), bw, ws, lw), codes(None, (9, k), ab, as_, la)
            pw = K.pack_weights(w, bw, ws, "int8")
            np.testing.assert_array_equal(K.gemm_int8(pw, a, ab, as_), ref(a, w))
            np.testing.assert_array_equal(K.gemm_int8(pw, a, ab, as_, out_dtype=np.int64), ref(a, w))


def test_fast_paths_match_portable_bit_for_bit():
    rng = np.random.default_rng(11)
    for m, n, k in [(256, 66, 1024), (13, 9, 4160), (4, 2, 64), (1, 1, 8000)]:
        for bits, sgn in [(1, False), (2, False), (2, True), (1, True)]:
            pw = K.pack_weights(codes(rng, (n, k), bits, sgn), bits, sgn)
            pa = K.pack_activations(codes(rng, (m, k), bits, sgn), bits, sgn)
            fast = K.gemm_bitserial(pw, pa, threads=2)
            with K.portable(True):
                np.testing.assert_array_equal(fast, K.gemm_bitserial(pw, pa))
        w4, a8 = codes(rng, (n, k), 4, True), codes(rng, (m, k), 8, True)
        pw = K.pack_weights(w4, 4, True, "int8")
        fast = K.gemm_int8(pw, a8, 8, True, threads=2)
        with K.portable(True):
            np.testing.assert_array_equal(fast, K.gemm_int8(pw, a8, 8, True))
        np.testing.assert_array_equal(fast, ref(a8, w4))


def test_int32_and_int64_outputs(path):
    rng = np.random.default_rng(1)
    w, a = codes(rng, (5, 300), 8, True, "min"), codes(rng, (4, 300), 8, True, "min")
    pw = K.pack_weights(w, 8, True, "int8")
    out = K.gemm_int8(pw, a, 8, True, out_dtype=np.int64)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, ref(a, w))
    np.testing.assert_array_equal(K.gemm_int8(pw, a, 8, True), ref(a, w))


def test_threads_match_single_thread_bit_for_bit():
    rng = np.random.default_rng(2)
    w, x = codes(rng, (203, 999), 3, True), rng.standard_normal((9, 999)).astype(np.float32)
    pw = K.pack_weights(w, 3, True, "float")
    np.testing.assert_array_equal(K.gemm_float_act(pw, x, threads=1), K.gemm_float_act(pw, x, threads=2))


def test_torch_tensors_accepted():
    rng = np.random.default_rng(3)
    w, a = codes(rng, (6, 40), 4, True), codes(rng, (3, 40), 8, True)
    pw = K.pack_weights(torch.from_numpy(w), 4, True, "int8")
    np.testing.assert_array_equal(K.gemm_int8(pw, torch.from_numpy(a).to(torch.int8)), ref(a, w))
    pf = K.pack_weights(torch.from_numpy(w), 4, True, "float")
    x = torch.arange(40, dtype=torch.float32).reshape(1, 40)
    np.testing.assert_array_equal(K.gemm_float_act(pf, x), ref(x.numpy(), w))


# ----------------------------------------------------------------------------- convolution

@pytest.mark.parametrize("layout", K.LAYOUTS)
@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (2, 0))])
def test_conv2d_matches_torch(path, layout, stride, padding):
    rng = np.random.default_rng(4)
    cin, cout, kh, kw = 3, 5, 3, 2
    bits, ab = (2, 2) if layout == "planes" else (4, 8)
    w = codes(rng, (cout, cin * kh * kw), bits, True)
    if layout == "nm":
        w = sparsify_24(rng, w)
    x = codes(rng, (2, cin, 7, 6), ab, True)
    xin = x.astype(np.float32) if layout == "float" else x
    y = K.conv2d(xin, K.pack_weights(w, bits, True, layout), (kh, kw), stride, padding, a_bits=ab, a_signed=True,
                 threads=2)
    expect = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)),
                                        torch.from_numpy(w.reshape(cout, cin, kh, kw).astype(np.float64)),
                                        stride=stride, padding=padding).numpy()
    assert y.shape == expect.shape
    np.testing.assert_array_equal(y, expect)


# ----------------------------------------------------------------------------- bad inputs

def _w(layout="planes", bits=2, signed=True, shape=(4, 70)):
    return K.pack_weights(np.zeros(shape, dtype=np.int64), bits, signed, layout)


BAD_CALLS = [
    ("float codes", lambda: K.pack_weights(np.zeros((2, 3), np.float32), 2, True), TypeError, "integer codes"),
    ("1-d codes", lambda: K.pack_weights(np.zeros(3, np.int64), 2, True), ValueError, "2-dimensional"),
    ("non-contiguous", lambda: K.pack_weights(np.zeros((4, 8), np.int64)[:, ::2], 2, True), ValueError, "C-contiguous"),
    ("zero-size", lambda: K.pack_weights(np.zeros((0, 8), np.int64), 2, True), ValueError, "empty"),
    ("bits 0", lambda: K.pack_weights(np.zeros((2, 8), np.int64), 0, True), ValueError, "bits"),
    ("bits 9", lambda: K.pack_weights(np.zeros((2, 8), np.int64), 9, True), ValueError, "bits"),
    ("bits bool", lambda: K.pack_weights(np.zeros((2, 8), np.int64), True, True), ValueError, "bits"),
    ("code too big", lambda: K.pack_weights(np.full((2, 8), 4), 2, False), ValueError, "outside the 2-bit unsigned"),
    ("negative unsigned", lambda: K.pack_weights(np.full((2, 8), -1), 2, False), ValueError, "outside"),
    ("signed range", lambda: K.pack_weights(np.full((2, 8), 2), 2, True), ValueError, r"\[-2, 1\]"),
    ("bad layout", lambda: K.pack_weights(np.zeros((2, 8), np.int64), 2, True, "csr"), ValueError, "layout"),
    ("layout mismatch", lambda: K.gemm_int8(_w("planes"), np.zeros((1, 70), np.int64)), ValueError, "layout='int8'"),
    ("not packed", lambda: K.gemm_bitserial(np.zeros((4, 70)), np.zeros((1, 70))), TypeError, "PackedWeights"),
    ("K mismatch", lambda: K.gemm_int8(_w("int8"), np.zeros((1, 71), np.int64)), ValueError, "K mismatch"),
    ("K mismatch bs", lambda: K.gemm_bitserial(_w(), np.zeros((1, 71), np.int64), 1, False), ValueError, "K mismatch"),
    ("raw acts need bits", lambda: K.gemm_bitserial(_w(), np.zeros((1, 70), np.int64)), ValueError, "a_bits"),
    ("float acts", lambda: K.gemm_int8(_w("int8"), np.zeros((1, 70), np.float32)), TypeError, "integer codes"),
    ("act range", lambda: K.gemm_nm(_w("nm"), np.full((1, 70), 300)), ValueError, "outside"),
    ("int x for float", lambda: K.gemm_float_act(_w("float"), np.zeros((1, 70), np.int32)), TypeError, "float"),
    ("planes 0", lambda: K.gemm_float_act(_w("float"), np.zeros((1, 70), np.float32), planes=0), ValueError, "planes"),
    ("planes > bits", lambda: K.gemm_float_act(_w("float"), np.zeros((1, 70), np.float32), planes=3), ValueError, "planes"),
    ("3-d x", lambda: K.gemm_float_act(_w("float"), np.zeros((1, 1, 70), np.float32)), ValueError, "shape"),
    ("threads 0", lambda: K.gemm_int8(_w("int8"), np.zeros((1, 70), np.int64), threads=0), ValueError, "threads"),
    ("threads 99", lambda: K.gemm_int8(_w("int8"), np.zeros((1, 70), np.int64), threads=99), ValueError, "threads"),
    ("out dtype", lambda: K.gemm_int8(_w("int8"), np.zeros((1, 70), np.int64), out_dtype=np.float32), TypeError, "out_dtype"),
    ("int32 overflow", lambda: K.gemm_int8(K.pack_weights(np.zeros((1, 200000), np.int64), 8, True, "int8"),
                                           np.zeros((1, 200000), np.int64), out_dtype=np.int32), OverflowError, "int32"),
    ("meta tensor", lambda: K.pack_weights(torch.zeros(2, 2, device="meta", dtype=torch.int64), 2, True), ValueError, "CPU"),
    ("list input", lambda: K.pack_weights([[0, 1]], 2, True), TypeError, "numpy array or a torch tensor"),
    ("n:m other than 2:4", lambda: K.pack_nm(np.zeros((2, 8), np.int64), 2, True, 1, 4), ValueError, "2:4"),
    ("tampered bits", lambda: K.gemm_bitserial(dataclasses.replace(_w(), bits=3), _w()), ValueError, "bits"),
    ("tampered int8 bits", lambda: K.gemm_int8(dataclasses.replace(_w("int8"), bits=8), np.zeros((1, 70), np.int64)),
     ValueError, "digits"),
    ("tampered float rows", lambda: K.gemm_float_act(dataclasses.replace(_w("float"), shape=(20, 70)),
                                                     np.zeros((1, 70), np.float32)), ValueError, "row blocks"),
    ("conv channels", lambda: K.conv2d(np.zeros((1, 2, 5, 5), np.int64), _w("int8", shape=(4, 27)), 3), ValueError, "C\\*kh\\*kw"),
    ("conv float x int8", lambda: K.conv2d(np.zeros((1, 3, 5, 5), np.float32), _w("int8", shape=(4, 27)), 3), TypeError, "integer"),
    ("conv kernel too big", lambda: K.conv2d(np.zeros((1, 3, 2, 2), np.int64), _w("int8", shape=(4, 27)), 3), ValueError, "larger"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_inputs_raise_clear_errors(name, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def _raw_args():
    planes = np.zeros((4, 2, 4), np.uint64)
    acts = np.zeros((3, 2, 4), np.uint64)
    out = np.zeros((3, 4), np.int32)
    return planes, acts, out


C_BAD_CALLS = [
    ("float planes", lambda p, a, o: _bitpack.gemm_bitserial(p.astype(np.float64), 2, True, a, 2, True, o, 1), TypeError, "uint64"),
    ("non-contiguous", lambda p, a, o: _bitpack.gemm_bitserial(p[:, :, ::2], 2, True, a, 2, True, o, 1), ValueError, "contiguous"),
    ("2-d planes", lambda p, a, o: _bitpack.gemm_bitserial(p[0], 2, True, a, 2, True, o, 1), ValueError, "3-dimensional"),
    ("bits vs planes", lambda p, a, o: _bitpack.gemm_bitserial(p, 3, True, a, 2, True, o, 1), ValueError, "bits"),
    ("bits 9", lambda p, a, o: _bitpack.gemm_bitserial(p, 9, True, a, 2, True, o, 1), ValueError, "out of range"),
    ("K words differ", lambda p, a, o: _bitpack.gemm_bitserial(p, 2, True, np.zeros((3, 2, 8), np.uint64), 2, True, o, 1), ValueError, "K"),
    ("words not x4", lambda p, a, o: _bitpack.gemm_bitserial(p[:, :, :3].copy(), 2, True, a[:, :, :3].copy(), 2, True, o, 1), ValueError, "multiple of 4"),
    ("out shape", lambda p, a, o: _bitpack.gemm_bitserial(p, 2, True, a, 2, True, o.T.copy(), 1), ValueError, "shape"),
    ("out float", lambda p, a, o: _bitpack.gemm_bitserial(p, 2, True, a, 2, True, o.astype(np.float32), 1), TypeError, "int32 or int64"),
    ("out readonly", lambda p, a, o: _bitpack.gemm_bitserial(p, 2, True, a, 2, True, np.frombuffer(bytes(48), np.int32).reshape(3, 4), 1), ValueError, "writable"),
    ("zero-size", lambda p, a, o: _bitpack.gemm_bitserial(p[:0], 2, True, a, 2, True, o, 1), ValueError, "zero-size"),
    ("threads", lambda p, a, o: _bitpack.gemm_bitserial(p, 2, True, a, 2, True, o, 0), ValueError, "threads"),
    ("not a buffer", lambda p, a, o: _bitpack.gemm_bitserial("abc", 2, True, a, 2, True, o, 1), ValueError, "contiguous"),
    ("pack range", lambda p, a, o: _bitpack.pack_planes(np.full((2, 3), 5, np.int8), 2, True, np.zeros((2, 2, 4), np.uint64)), ValueError, "outside"),
    ("pack sign dtype", lambda p, a, o: _bitpack.pack_planes(np.zeros((2, 3), np.uint8), 2, True, np.zeros((2, 2, 4), np.uint64)), TypeError, "int8"),
    ("pack words", lambda p, a, o: _bitpack.pack_planes(np.zeros((2, 300), np.int8), 2, True, np.zeros((2, 2, 4), np.uint64)), ValueError, "words"),
    ("int8 digits", lambda p, a, o: _bitpack.gemm_int8(np.zeros((4, 2, 32), np.uint8), np.zeros(4, np.int64), 4, True,
                                                       np.zeros((3, 64), np.int8), 8, True, o, 1), ValueError, "digits"),
    ("int8 sums", lambda p, a, o: _bitpack.gemm_int8(np.zeros((4, 1, 32), np.uint8), np.zeros(5, np.int64), 4, True,
                                                     np.zeros((3, 64), np.int8), 8, True, o, 1), ValueError, "sums"),
    ("int8 K", lambda p, a, o: _bitpack.gemm_int8(np.zeros((4, 1, 32), np.uint8), np.zeros(4, np.int64), 4, True,
                                                  np.zeros((3, 65), np.int8), 8, True, o, 1), ValueError, "K/2"),
    ("nm slots", lambda p, a, o: _bitpack.gemm_nm(np.zeros((4, 1, 32), np.int8), np.zeros((4, 16), np.uint8), np.zeros(4, np.int64),
                                                  4, True, np.zeros((3, 64), np.int8), 8, True, o, 1), ValueError, "slots"),
    ("float lanes", lambda p, a, o: _bitpack.gemm_float(np.zeros((1, 2, 2, 8), np.uint32), 2, True, 2, 4,
                                                        np.zeros((3, 64), np.float32), np.zeros((3, 4), np.float32), 1), ValueError, "K chunks"),
    ("float N", lambda p, a, o: _bitpack.gemm_float(np.zeros((1, 3, 2, 8), np.uint32), 2, True, 2, 0,
                                                    np.zeros((3, 64), np.float32), np.zeros((3, 4), np.float32), 1), ValueError, "N"),
]


@pytest.mark.parametrize("name,call,exc,msg", C_BAD_CALLS, ids=[c[0] for c in C_BAD_CALLS])
def test_c_layer_never_trusts_inputs(name, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(*_raw_args())


def test_packed_arrays_are_read_only():
    p = _w("int8")
    with pytest.raises(ValueError):
        p.arrays["digits"][0, 0, 0] = 1


@SETTINGS
@given(m=st.integers(1, 5), k=st.integers(1, 70), bits=st.integers(1, 7), signed=st.booleans(), data=st.data())
def test_the_c_code_range_check_names_the_range_on_both_paths(path, m, k, bits, signed, data):
    """bind_gemm leaves the activation range to the C extension: one code out of range anywhere (vector
    body or tail) is a ValueError naming the codes' least and greatest value; in range runs exactly."""
    rng = np.random.default_rng(k * 31 + m)
    w = codes(rng, (3, k), 4, True)
    a = codes(rng, (m, k), bits, signed).astype(np.int8 if signed else np.uint8)
    run = K.bind_gemm(K.pack_weights(w, 4, True, layout="int8"), bits, signed)
    assert np.array_equal(run(a), ref(a, w))
    i, j = data.draw(st.integers(0, m - 1)), data.draw(st.integers(0, k - 1))
    bad = a.copy()
    bad[i, j] = (-(1 << (bits - 1)) - 1) if signed and data.draw(st.booleans()) else (
        (1 << (bits - 1)) if signed else (1 << bits))
    lo, hi = int(bad.min()), int(bad.max())
    with pytest.raises(ValueError, match=rf"holds codes in \[{lo}, {hi}\], outside the {bits}-bit"):
        run(bad)
