/* engine._bitpack: the Python entry points. Every argument is checked here (buffer format,
 * dimensions, shapes against the packing metadata, value ranges, int32 overflow bounds) before
 * any kernel runs; kernels then run with the GIL released on the calling thread plus the pool. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "bitpack.h"

static int cpu_avx2;       /* the CPU has AVX2 + POPCNT */
static int force_portable; /* tests and benchmarks may force the portable path */

#define MAX_K (1 << 18)    /* int32 SIMD accumulators stay exact up to this K */

static int simd(void) { return cpu_avx2 && !force_portable; }

/* ---------------------------------------------------------------- argument checking */

/* kind: 'i' signed integer, 'u' unsigned integer, 'f' float, 'I' signed or unsigned integer. */
static int fmt_ok(const Py_buffer *v, char kind, Py_ssize_t itemsize)
{
    const char *f = v->format ? v->format : "B";
    while (*f == '@' || *f == '=' || *f == '<')
        f++;
    if (f[0] == 0 || f[1] != 0 || v->itemsize != itemsize)
        return 0;
    if (kind == 'i' || kind == 'I')
        if (strchr("bhilq", f[0]))
            return 1;
    if (kind == 'u' || kind == 'I')
        if (strchr("BHILQ", f[0]))
            return 1;
    return kind == 'f' && f[0] == 'f';
}

static int is_signed_fmt(const Py_buffer *v)
{
    const char *f = v->format ? v->format : "B";
    while (*f == '@' || *f == '=' || *f == '<')
        f++;
    return strchr("bhilq", f[0]) != NULL;
}

static const char *kind_name(char kind, Py_ssize_t itemsize)
{
    switch (kind) {
    case 'i': return itemsize == 1 ? "int8" : itemsize == 4 ? "int32" : "int64";
    case 'u': return itemsize == 1 ? "uint8" : itemsize == 4 ? "uint32" : "uint64";
    case 'I': return itemsize == 1 ? "int8 or uint8" : "an integer type";
    default: return "float32";
    }
}

/* Gets a C-contiguous buffer of the given element kind/size and ndim with no zero dimension. */
static int get_buf(const char *fn, const char *name, PyObject *o, char kind, Py_ssize_t itemsize,
                   int ndim, int writable, Py_buffer *v)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, v, flags) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: %s must be a C-contiguous%s array (got %.80s)", fn, name,
                     writable ? " writable" : "", Py_TYPE(o)->tp_name);
        return -1;
    }
    if (!fmt_ok(v, kind, itemsize)) {
        PyErr_Format(PyExc_TypeError, "%s: %s must have dtype %s (buffer format '%s', itemsize %zd)",
                     fn, name, kind_name(kind, itemsize), v->format ? v->format : "B", v->itemsize);
        goto fail;
    }
    if (v->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: %s must be %d-dimensional, got %d dimensions", fn, name,
                     ndim, v->ndim);
        goto fail;
    }
    for (int i = 0; i < ndim; i++)
        if (v->shape[i] <= 0) {
            PyErr_Format(PyExc_ValueError, "%s: %s has a zero-size dimension %d (empty input)", fn,
                         name, i);
            goto fail;
        }
    return 0;
fail:
    PyBuffer_Release(v);
    v->obj = NULL;
    return -1;
}

static void rel(Py_buffer *v)
{
    if (v->obj)
        PyBuffer_Release(v);
    v->obj = NULL;
}

static int check_bits(const char *fn, const char *name, int bits, int lo, int hi)
{
    if (bits < lo || bits > hi) {
        PyErr_Format(PyExc_ValueError, "%s: %s = %d is out of range [%d, %d]", fn, name, bits, lo, hi);
        return -1;
    }
    return 0;
}

static int check_dim(const char *fn, const char *what, Py_ssize_t got, Py_ssize_t want)
{
    if (got != want) {
        PyErr_Format(PyExc_ValueError, "%s: %s is %zd, expected %zd (packing metadata mismatch)", fn,
                     what, got, want);
        return -1;
    }
    return 0;
}

static int64_t code_min(int bits, int sgn) { return sgn ? -((int64_t)1 << (bits - 1)) : 0; }
static int64_t code_max(int bits, int sgn) { return sgn ? ((int64_t)1 << (bits - 1)) - 1 : ((int64_t)1 << bits) - 1; }
static int64_t max_abs(int bits, int sgn) { return sgn ? (int64_t)1 << (bits - 1) : ((int64_t)1 << bits) - 1; }

/* Checks 8-bit codes against the bits/signed range (the signedness must match the dtype). */
static int check_codes(const char *fn, const char *name, const Py_buffer *v, int bits, int sgn)
{
    if (is_signed_fmt(v) != sgn) {
        PyErr_Format(PyExc_TypeError, "%s: %s must be %s for %s codes", fn, name, sgn ? "int8" : "uint8",
                     sgn ? "signed" : "unsigned");
        return -1;
    }
    if (bits == 8)
        return 0;  /* every int8 / uint8 value is an 8-bit code */
    const Py_ssize_t n = v->len;
    int lo = 255, hi = -128;
#ifdef BP_X86
    if (simd())
        range_avx2(v->buf, n, sgn, &lo, &hi);
    else
#endif
    if (sgn) {
        const int8_t *p = v->buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            lo = p[i] < lo ? p[i] : lo;
            hi = p[i] > hi ? p[i] : hi;
        }
    } else {
        const uint8_t *p = v->buf;
        for (Py_ssize_t i = 0; i < n; i++) {
            lo = p[i] < lo ? p[i] : lo;
            hi = p[i] > hi ? p[i] : hi;
        }
    }
    if (lo < code_min(bits, sgn) || hi > code_max(bits, sgn)) {
        PyErr_Format(PyExc_ValueError, "%s: %s holds codes in [%d, %d], outside the %d-bit %s range [%lld, %lld]",
                     fn, name, lo, hi, bits, sgn ? "signed" : "unsigned", (long long)code_min(bits, sgn),
                     (long long)code_max(bits, sgn));
        return -1;
    }
    return 0;
}

/* The output: int32 or int64 (M, N); int32 only when the worst case fits. */
static int get_out(const char *fn, PyObject *o, Py_ssize_t M, Py_ssize_t N, int64_t bound, Py_buffer *v,
                   bp_out *out)
{
    if (PyObject_GetBuffer(o, v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: out must be a C-contiguous writable array", fn);
        return -1;
    }
    const int is64 = fmt_ok(v, 'i', 8), is32 = fmt_ok(v, 'i', 4);
    if (!is64 && !is32) {
        PyErr_Format(PyExc_TypeError, "%s: out must have dtype int32 or int64", fn);
        goto fail;
    }
    if (v->ndim != 2 || v->shape[0] != M || v->shape[1] != N) {
        PyErr_Format(PyExc_ValueError, "%s: out must have shape (%zd, %zd)", fn, M, N);
        goto fail;
    }
    if (is32 && bound > INT32_MAX) {
        PyErr_Format(PyExc_OverflowError, "%s: results may reach %lld, which overflows int32; use int64 output",
                     fn, (long long)bound);
        goto fail;
    }
    out->out64 = is64 ? v->buf : NULL;
    out->out32 = is32 ? v->buf : NULL;
    out->N = N;
    return 0;
fail:
    PyBuffer_Release(v);
    v->obj = NULL;
    return -1;
}

static int check_threads(const char *fn, int threads)
{
    return check_bits(fn, "threads", threads, 1, BP_MAX_THREADS);
}

/* ---------------------------------------------------------------- tasks (one N range each) */

static void bs_task(void *ctx, int part, int nparts)
{
    const bs_args *p = ctx;
    int64_t u0, u1;
    bp_split((p->N + 3) / 4, part, nparts, &u0, &u1);
    const int64_t n0 = u0 * 4, n1 = u1 * 4 < p->N ? u1 * 4 : p->N;
    if (n0 >= n1)
        return;
#ifdef BP_X86
    if (p->simd) {
        bs_avx2(p, n0, n1);
        return;
    }
#endif
    bs_portable(p, n0, n1);
}

static void i8_task(void *ctx, int part, int nparts)
{
    const i8_args *p = ctx;
    int64_t u0, u1;
    bp_split((p->N + 3) / 4, part, nparts, &u0, &u1);
    const int64_t n0 = u0 * 4, n1 = u1 * 4 < p->N ? u1 * 4 : p->N;
    if (n0 >= n1)
        return;
#ifdef BP_X86
    if (p->simd) {
        i8_avx2(p, n0, n1);
        return;
    }
#endif
    i8_portable(p, n0, n1);
}

static void nm_task(void *ctx, int part, int nparts)
{
    const nm_args *p = ctx;
    int64_t u0, u1;
    bp_split((p->N + 1) / 2, part, nparts, &u0, &u1);
    const int64_t n0 = u0 * 2, n1 = u1 * 2 < p->N ? u1 * 2 : p->N;
    if (n0 >= n1)
        return;
#ifdef BP_X86
    if (p->simd) {
        nm_avx2(p, n0, n1);
        return;
    }
#endif
    nm_portable(p, n0, n1);
}

static void fa_task(void *ctx, int part, int nparts)
{
    const fa_args *p = ctx;
    int64_t u0, u1;
    bp_split((p->NB + 1) / 2, part, nparts, &u0, &u1);
    const int64_t b0 = u0 * 2, b1 = u1 * 2 < p->NB ? u1 * 2 : p->NB;
    if (b0 >= b1)
        return;
#ifdef BP_X86
    if (p->simd) {
        fa_avx2(p, b0, b1);
        return;
    }
#endif
    fa_portable(p, b0, b1);
}

static void dw_task(void *ctx, int part, int nparts)
{
    const dw_args *p = ctx;
    int64_t r0, r1;
    bp_split(p->B * p->Ho, part, nparts, &r0, &r1);
    if (r0 >= r1)
        return;
#ifdef BP_X86
    if (p->simd) {
        dw_avx2(p, r0, r1);
        return;
    }
#endif
    dw_portable(p, r0, r1);
}

static int parts_for(int threads, int64_t units) { return units < threads ? (int)units : threads; }

/* ---------------------------------------------------------------- pack / unpack */

static PyObject *py_pack_planes(PyObject *self, PyObject *args)
{
    static const char *fn = "pack_planes";
    PyObject *co, *po;
    int bits, sgn;
    Py_buffer c = {0}, pl = {0};
    if (!PyArg_ParseTuple(args, "OipO", &co, &bits, &sgn, &po))
        return NULL;
    if (check_bits(fn, "bits", bits, 1, 8) < 0 || get_buf(fn, "codes", co, 'I', 1, 2, 0, &c) < 0)
        return NULL;
    if (check_codes(fn, "codes", &c, bits, sgn) < 0 || get_buf(fn, "planes", po, 'u', 8, 3, 1, &pl) < 0)
        goto fail;
    const Py_ssize_t R = c.shape[0], K = c.shape[1], kw = pl.shape[2];
    if (check_dim(fn, "planes.shape[0] (rows)", pl.shape[0], R) < 0 ||
        check_dim(fn, "planes.shape[1] (bits)", pl.shape[1], bits) < 0 ||
        check_dim(fn, "planes.shape[2] (words)", kw, (K + 255) / 256 * 4) < 0)
        goto fail;
    const int use = simd();
    Py_BEGIN_ALLOW_THREADS
    memset(pl.buf, 0, (size_t)pl.len);
#ifdef BP_X86
    if (use)
        pack_avx2(c.buf, R, K, bits, pl.buf, kw);
    else
#endif
        pack_portable(c.buf, R, K, bits, pl.buf, kw);
    (void)use;
    Py_END_ALLOW_THREADS
    rel(&c);
    rel(&pl);
    Py_RETURN_NONE;
fail:
    rel(&c);
    rel(&pl);
    return NULL;
}

static PyObject *py_unpack_planes(PyObject *self, PyObject *args)
{
    static const char *fn = "unpack_planes";
    PyObject *po, *oo;
    int bits, sgn;
    Py_buffer pl = {0}, o = {0};
    if (!PyArg_ParseTuple(args, "OipO", &po, &bits, &sgn, &oo))
        return NULL;
    if (check_bits(fn, "bits", bits, 1, 8) < 0 || get_buf(fn, "planes", po, 'u', 8, 3, 0, &pl) < 0)
        return NULL;
    if (get_buf(fn, "out", oo, sgn ? 'i' : 'u', 1, 2, 1, &o) < 0)
        goto fail;
    const Py_ssize_t R = o.shape[0], K = o.shape[1], kw = pl.shape[2];
    if (check_dim(fn, "planes.shape[0] (rows)", pl.shape[0], R) < 0 ||
        check_dim(fn, "planes.shape[1] (bits)", pl.shape[1], bits) < 0 ||
        check_dim(fn, "planes.shape[2] (words)", kw, (K + 255) / 256 * 4) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    const uint64_t *w = pl.buf;
    uint8_t *out = o.buf;
    for (Py_ssize_t r = 0; r < R; r++)
        for (Py_ssize_t k = 0; k < K; k++) {
            unsigned v = 0;
            for (int j = 0; j < bits; j++)
                v |= (unsigned)((w[(r * bits + j) * kw + k / 64] >> (k % 64)) & 1) << j;
            if (sgn && bits < 8 && (v >> (bits - 1)))
                v |= 0xffu << bits;  /* sign-extend to 8 bits */
            out[r * K + k] = (uint8_t)v;
        }
    Py_END_ALLOW_THREADS
    rel(&pl);
    rel(&o);
    Py_RETURN_NONE;
fail:
    rel(&pl);
    rel(&o);
    return NULL;
}

/* ---------------------------------------------------------------- GEMMs */

static PyObject *py_gemm_bitserial(PyObject *self, PyObject *args)
{
    static const char *fn = "gemm_bitserial";
    PyObject *wo, *ao, *oo;
    int bw, ws, ba, as, threads;
    Py_buffer w = {0}, a = {0}, o = {0};
    bs_args p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "OipOipOi", &wo, &bw, &ws, &ao, &ba, &as, &oo, &threads))
        return NULL;
    if (check_bits(fn, "weight bits", bw, 1, 8) < 0 || check_bits(fn, "activation bits", ba, 1, 8) < 0 ||
        check_threads(fn, threads) < 0)
        return NULL;
    if (get_buf(fn, "weight planes", wo, 'u', 8, 3, 0, &w) < 0 ||
        get_buf(fn, "activation planes", ao, 'u', 8, 3, 0, &a) < 0)
        goto fail;
    const Py_ssize_t N = w.shape[0], M = a.shape[0], kw = w.shape[2];
    if (check_dim(fn, "weight planes.shape[1] (bits)", w.shape[1], bw) < 0 ||
        check_dim(fn, "activation planes.shape[1] (bits)", a.shape[1], ba) < 0 ||
        check_dim(fn, "activation words per plane (K)", a.shape[2], kw) < 0)
        goto fail;
    if (kw % 4) {
        PyErr_Format(PyExc_ValueError, "%s: words per plane must be a multiple of 4, got %zd", fn, kw);
        goto fail;
    }
    if (get_out(fn, oo, M, N, (int64_t)kw * 64 * max_abs(bw, ws) * max_abs(ba, as), &o, &p.out) < 0)
        goto fail;
    p.a = a.buf;
    p.w = w.buf;
    p.M = M;
    p.N = N;
    p.kw = kw;
    p.ba = ba;
    p.bw = bw;
    p.simd = simd();
    for (int i = 0; i < 8; i++) {
        p.sa[i] = (as && i == ba - 1) ? -((int64_t)1 << i) : (int64_t)1 << i;
        p.sw[i] = (ws && i == bw - 1) ? -((int64_t)1 << i) : (int64_t)1 << i;
    }
    uint64_t *split = NULL;
    if (p.simd && ba <= 2 && bw <= 2) {  /* the AVX2 fast path reads a split into nibbles */
        split = PyMem_RawMalloc((size_t)(M * ba * kw * 2) * sizeof(uint64_t));
        if (!split) {
            PyErr_NoMemory();
            goto fail;
        }
    }
    Py_BEGIN_ALLOW_THREADS
#ifdef BP_X86
    if (split) {
        bs_split_avx2(p.a, M * ba, kw, split);
        p.as = split;
    }
#endif
    bp_run(bs_task, &p, parts_for(threads, (N + 3) / 4));
    Py_END_ALLOW_THREADS
    PyMem_RawFree(split);
    rel(&w);
    rel(&a);
    rel(&o);
    Py_RETURN_NONE;
fail:
    rel(&w);
    rel(&a);
    rel(&o);
    return NULL;
}

/* gemm_int8(w, usum, bw, ws, a, ba, as, out, threads) */
static PyObject *py_gemm_int8(PyObject *self, PyObject *args)
{
    static const char *fn = "gemm_int8";
    PyObject *wo, *so, *ao, *oo;
    int bw, ws, ba, as, threads;
    Py_buffer w = {0}, s = {0}, a = {0}, o = {0};
    i8_args p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "OOipOipOi", &wo, &so, &bw, &ws, &ao, &ba, &as, &oo, &threads))
        return NULL;
    if (check_bits(fn, "weight bits", bw, 1, 8) < 0 || check_bits(fn, "activation bits", ba, 1, 8) < 0 ||
        check_threads(fn, threads) < 0)
        return NULL;
    if (get_buf(fn, "weight digits", wo, 'u', 1, 3, 0, &w) < 0 ||
        get_buf(fn, "weight sums", so, 'i', 8, 1, 0, &s) < 0 ||
        get_buf(fn, "activations", ao, 'I', 1, 2, 0, &a) < 0)
        goto fail;
    const Py_ssize_t N = w.shape[0], M = a.shape[0], K = a.shape[1], kb = (K + 63) / 64;
    if (check_dim(fn, "weight digits.shape[1] (digits)", w.shape[1], bw <= 4 ? 1 : 2) < 0 ||
        check_dim(fn, "weight digits.shape[2] (K/2 bytes)", w.shape[2], kb * 32) < 0 ||
        check_dim(fn, "weight sums length", s.shape[0], N) < 0 || check_codes(fn, "activations", &a, ba, as) < 0)
        goto fail;
    if (K > MAX_K) {
        PyErr_Format(PyExc_ValueError, "%s: K = %zd exceeds the supported maximum %d", fn, K, MAX_K);
        goto fail;
    }
    if (get_out(fn, oo, M, N, (int64_t)K * max_abs(bw, ws) * max_abs(ba, as), &o, &p.out) < 0)
        goto fail;
    p.D = bw <= 4 ? 1 : 2;
    p.ow = ws ? (int64_t)1 << (bw - 1) : 0;
    p.oa = (!as && ba == 8) ? 128 : 0;
    p.simd = simd();
    /* the kernels read rows of kb*64 int8 values a' = a - oa; signed rows already padded to a
     * multiple of 64 are read in place on the AVX2 path */
    const int in_place = p.simd && p.oa == 0 && K % 64 == 0;
    int8_t *ap = in_place ? NULL : PyMem_RawCalloc((size_t)(M * kb * 64), 1);
    int64_t *asum = PyMem_RawCalloc((size_t)M, sizeof(int64_t));
    if ((!in_place && !ap) || !asum) {
        PyMem_RawFree(ap);
        PyMem_RawFree(asum);
        PyErr_NoMemory();
        goto fail;
    }
    p.w = w.buf;
    p.usum = s.buf;
    p.a = in_place ? (const int8_t *)a.buf : ap;
    p.asum = asum;
    p.M = M;
    p.N = N;
    p.kb = kb;
    p.K = K;
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *src = a.buf;
#ifdef BP_X86
    if (p.simd)
        i8_prep_avx2(src, M, K, kb, (int)p.oa, ap, p.ow ? asum : NULL);
    else
#endif
    for (Py_ssize_t m = 0; m < M; m++) {
        int64_t sum = 0;
        for (Py_ssize_t k = 0; k < K; k++) {
            const int v = as ? (int8_t)src[m * K + k] : (int)src[m * K + k] - (int)p.oa;
            ap[m * kb * 64 + k] = (int8_t)v;
            sum += v;
        }
        asum[m] = sum;
    }
    bp_run(i8_task, &p, parts_for(threads, (N + 3) / 4));
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ap);
    PyMem_RawFree(asum);
    rel(&w);
    rel(&s);
    rel(&a);
    rel(&o);
    Py_RETURN_NONE;
fail:
    rel(&w);
    rel(&s);
    rel(&a);
    rel(&o);
    return NULL;
}

/* gemm_nm(values, pos, wsum, bw, ws, a, ba, as, out, threads) */
static PyObject *py_gemm_nm(PyObject *self, PyObject *args)
{
    static const char *fn = "gemm_nm";
    PyObject *vo, *po, *so, *ao, *oo;
    int bw, ws, ba, as, threads;
    Py_buffer v = {0}, ps = {0}, s = {0}, a = {0}, o = {0};
    nm_args p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "OOOipOipOi", &vo, &po, &so, &bw, &ws, &ao, &ba, &as, &oo, &threads))
        return NULL;
    if (check_bits(fn, "weight bits", bw, 1, 8) < 0 || check_bits(fn, "activation bits", ba, 1, 8) < 0 ||
        check_threads(fn, threads) < 0)
        return NULL;
    if (get_buf(fn, "values", vo, 'i', 1, 3, 0, &v) < 0 || get_buf(fn, "positions", po, 'u', 1, 2, 0, &ps) < 0 ||
        get_buf(fn, "weight sums", so, 'i', 8, 1, 0, &s) < 0 ||
        get_buf(fn, "activations", ao, 'I', 1, 2, 0, &a) < 0)
        goto fail;
    const Py_ssize_t N = v.shape[0], M = a.shape[0], K = a.shape[1], kb = (K + 63) / 64;
    const int D = max_abs(bw, ws) <= 64 ? 1 : 2;
    if (check_dim(fn, "values.shape[1] (digits)", v.shape[1], D) < 0 ||
        check_dim(fn, "values.shape[2] (slots)", v.shape[2], kb * 32) < 0 ||
        check_dim(fn, "positions.shape[0] (rows)", ps.shape[0], N) < 0 ||
        check_dim(fn, "positions.shape[1] (slots)", ps.shape[1], kb * 32) < 0 ||
        check_dim(fn, "weight sums length", s.shape[0], N) < 0 || check_codes(fn, "activations", &a, ba, as) < 0)
        goto fail;
    if (K > MAX_K) {
        PyErr_Format(PyExc_ValueError, "%s: K = %zd exceeds the supported maximum %d", fn, K, MAX_K);
        goto fail;
    }
    if (get_out(fn, oo, M, N, (int64_t)K * max_abs(bw, ws) * max_abs(ba, as), &o, &p.out) < 0)
        goto fail;
    uint8_t *ap = PyMem_RawCalloc((size_t)(M * kb * 64), 1);
    if (!ap) {
        PyErr_NoMemory();
        goto fail;
    }
    p.v = v.buf;
    p.pos = ps.buf;
    p.wsum = s.buf;
    p.a = ap;
    p.M = M;
    p.N = N;
    p.kb = kb;
    p.D = D;
    p.oa = as ? (int64_t)1 << (ba - 1) : 0;
    p.simd = simd();
    Py_BEGIN_ALLOW_THREADS
    const uint8_t *src = a.buf;
    for (Py_ssize_t m = 0; m < M; m++)
        for (Py_ssize_t k = 0; k < K; k++)
            ap[m * kb * 64 + k] = (uint8_t)((as ? (int)(int8_t)src[m * K + k] : (int)src[m * K + k]) + (int)p.oa);
    bp_run(nm_task, &p, parts_for(threads, (N + 1) / 2));
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ap);
    rel(&v);
    rel(&ps);
    rel(&s);
    rel(&a);
    rel(&o);
    Py_RETURN_NONE;
fail:
    rel(&v);
    rel(&ps);
    rel(&s);
    rel(&a);
    rel(&o);
    return NULL;
}

/* gemm_float(w, bits, signed, top, N, x, out, threads) */
static PyObject *py_gemm_float(PyObject *self, PyObject *args)
{
    static const char *fn = "gemm_float";
    PyObject *wo, *xo, *oo;
    int bits, sgn, top, threads;
    Py_ssize_t N;
    Py_buffer w = {0}, x = {0}, o = {0};
    fa_args p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "OipinOOi", &wo, &bits, &sgn, &top, &N, &xo, &oo, &threads))
        return NULL;
    if (check_bits(fn, "bits", bits, 1, 8) < 0 || check_bits(fn, "planes", top, 1, bits) < 0 ||
        check_threads(fn, threads) < 0)
        return NULL;
    if (get_buf(fn, "weight lanes", wo, 'u', 4, 4, 0, &w) < 0 || get_buf(fn, "x", xo, 'f', 4, 2, 0, &x) < 0 ||
        get_buf(fn, "out", oo, 'f', 4, 2, 1, &o) < 0)
        goto fail;
    const Py_ssize_t M = x.shape[0], K = x.shape[1], C = (K + 29) / 30;
    if (N <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: N must be positive, got %zd", fn, N);
        goto fail;
    }
    if (check_dim(fn, "weight lanes.shape[0] (row blocks)", w.shape[0], (N + 7) / 8) < 0 ||
        check_dim(fn, "weight lanes.shape[1] (K chunks)", w.shape[1], C) < 0 ||
        check_dim(fn, "weight lanes.shape[2] (bits)", w.shape[2], bits) < 0 ||
        check_dim(fn, "weight lanes.shape[3]", w.shape[3], 8) < 0 ||
        check_dim(fn, "out.shape[0]", o.shape[0], M) < 0 || check_dim(fn, "out.shape[1]", o.shape[1], N) < 0)
        goto fail;
    float *t = PyMem_RawMalloc((size_t)(M * C * 80) * sizeof(float));
    if (!t) {
        PyErr_NoMemory();
        goto fail;
    }
    p.w = w.buf;
    p.t = t;
    p.M = M;
    p.N = N;
    p.NB = w.shape[0];
    p.C = C;
    p.bits = bits;
    p.top = top;
    p.out = o.buf;
    p.simd = simd();
    for (int j = 0; j < 8; j++)
        p.s[j] = (sgn && j == bits - 1) ? -(float)(1 << j) : (float)(1 << j);
    Py_BEGIN_ALLOW_THREADS
    const float *xs = x.buf;
    for (Py_ssize_t m = 0; m < M; m++)
        for (Py_ssize_t g = 0; g < C * 10; g++) {
            float v[3];
            for (int i = 0; i < 3; i++)
                v[i] = 3 * g + i < K ? xs[m * K + 3 * g + i] : 0.0f;
            float *e = t + (m * C * 10 + g) * 8;
            e[0] = 0.0f;
            e[1] = v[0];
            e[2] = v[1];
            e[3] = v[0] + v[1];
            e[4] = v[2];
            e[5] = v[0] + v[2];
            e[6] = v[1] + v[2];
            e[7] = e[3] + v[2];
        }
    bp_run(fa_task, &p, parts_for(threads, (p.NB + 1) / 2));
    Py_END_ALLOW_THREADS
    PyMem_RawFree(t);
    rel(&w);
    rel(&x);
    rel(&o);
    Py_RETURN_NONE;
fail:
    rel(&w);
    rel(&x);
    rel(&o);
    return NULL;
}

/* ---------------------------------------------------------------- depthwise convolution */

/* conv_depthwise(w, kh, kw, sh, sw, a, ba, as, out, threads):
 * w int8 (kh*kw, C) weight values; a (B, Hp, Wp, C) padded activation codes (int8 when as, else
 * uint8) of ba bits; out int32 (B, Ho, Wo, C) with Ho = (Hp-kh)/sh+1, Wo = (Wp-kw)/sw+1. */
static PyObject *py_conv_depthwise(PyObject *self, PyObject *args)
{
    static const char *fn = "conv_depthwise";
    PyObject *wo, *ao, *oo;
    int kh, kw, sh, sw, ba, as, threads;
    Py_buffer w = {0}, a = {0}, o = {0};
    dw_args p;
    memset(&p, 0, sizeof p);
    if (!PyArg_ParseTuple(args, "OiiiiOipOi", &wo, &kh, &kw, &sh, &sw, &ao, &ba, &as, &oo, &threads))
        return NULL;
    if (check_bits(fn, "activation bits", ba, 1, 8) < 0 || check_threads(fn, threads) < 0 ||
        check_bits(fn, "kernel height", kh, 1, DW_MAX_TAPS) < 0 || check_bits(fn, "kernel width", kw, 1, DW_MAX_TAPS) < 0 ||
        check_bits(fn, "stride height", sh, 1, 1 << 20) < 0 || check_bits(fn, "stride width", sw, 1, 1 << 20) < 0)
        return NULL;
    if ((int64_t)kh * kw > DW_MAX_TAPS) {
        PyErr_Format(PyExc_ValueError, "%s: a %dx%d kernel has more than %d taps", fn, kh, kw, DW_MAX_TAPS);
        return NULL;
    }
    if (get_buf(fn, "weights", wo, 'i', 1, 2, 0, &w) < 0 || get_buf(fn, "activations", ao, 'I', 1, 4, 0, &a) < 0 ||
        get_buf(fn, "out", oo, 'i', 4, 4, 1, &o) < 0)
        goto fail;
    const Py_ssize_t B = a.shape[0], Hp = a.shape[1], Wp = a.shape[2], C = a.shape[3];
    if (check_dim(fn, "weights.shape[0] (taps kh*kw)", w.shape[0], (Py_ssize_t)kh * kw) < 0 ||
        check_dim(fn, "weights.shape[1] (channels)", w.shape[1], C) < 0 || check_codes(fn, "activations", &a, ba, as) < 0)
        goto fail;
    if (Hp < kh || Wp < kw) {
        PyErr_Format(PyExc_ValueError, "%s: kernel %dx%d is larger than the padded input %zdx%zd", fn, kh, kw, Hp, Wp);
        goto fail;
    }
    const Py_ssize_t Ho = (Hp - kh) / sh + 1, Wo = (Wp - kw) / sw + 1;
    if (o.shape[0] != B || o.shape[1] != Ho || o.shape[2] != Wo || o.shape[3] != C) {
        PyErr_Format(PyExc_ValueError, "%s: out must have shape (%zd, %zd, %zd, %zd)", fn, B, Ho, Wo, C);
        goto fail;
    }
    p.w = w.buf;
    p.a = a.buf;
    p.a_signed = as;
    p.B = B;
    p.Hp = Hp;
    p.Wp = Wp;
    p.C = C;
    p.Ho = Ho;
    p.Wo = Wo;
    p.kh = kh;
    p.kw = kw;
    p.sh = sh;
    p.sw = sw;
    p.out = o.buf;
    p.simd = simd();
    int16_t *wp = NULL;
#ifdef BP_X86
    const size_t nwp = dw_prep_bytes((int64_t)kh * kw, C);
    if (p.simd && nwp) {
        wp = PyMem_RawMalloc(nwp);
        if (!wp) {
            PyErr_NoMemory();
            goto fail;
        }
    }
#endif
    Py_BEGIN_ALLOW_THREADS
#ifdef BP_X86
    if (wp)
        dw_prep_avx2(p.w, (int64_t)kh * kw, C, wp);
#endif
    p.wp = wp;
    bp_run(dw_task, &p, parts_for(threads, B * Ho));
    Py_END_ALLOW_THREADS
    PyMem_RawFree(wp);
    rel(&w);
    rel(&a);
    rel(&o);
    Py_RETURN_NONE;
fail:
    rel(&w);
    rel(&a);
    rel(&o);
    return NULL;
}

/* ---------------------------------------------------------------- path selection */

static PyObject *py_has_avx2(PyObject *self, PyObject *noargs) { return PyBool_FromLong(cpu_avx2); }

static PyObject *py_path(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(simd() ? "avx2" : "portable");
}

static PyObject *py_set_portable(PyObject *self, PyObject *args)
{
    int flag;
    if (!PyArg_ParseTuple(args, "p", &flag))
        return NULL;
    const int old = force_portable;
    force_portable = flag;
    return PyBool_FromLong(old);
}

static PyMethodDef methods[] = {
    {"pack_planes", py_pack_planes, METH_VARARGS, "pack_planes(codes, bits, signed, planes): int8/uint8 (R,K) -> uint64 (R,bits,kw)"},
    {"unpack_planes", py_unpack_planes, METH_VARARGS, "unpack_planes(planes, bits, signed, out): inverse of pack_planes"},
    {"gemm_bitserial", py_gemm_bitserial, METH_VARARGS, "gemm_bitserial(w, bw, ws, a, ba, as, out, threads)"},
    {"gemm_int8", py_gemm_int8, METH_VARARGS, "gemm_int8(w, usum, bw, ws, a, ba, as, out, threads)"},
    {"gemm_nm", py_gemm_nm, METH_VARARGS, "gemm_nm(values, pos, wsum, bw, ws, a, ba, as, out, threads)"},
    {"gemm_float", py_gemm_float, METH_VARARGS, "gemm_float(w, bits, signed, top, N, x, out, threads)"},
    {"conv_depthwise", py_conv_depthwise, METH_VARARGS, "conv_depthwise(w, kh, kw, sh, sw, a, ba, as, out, threads)"},
    {"has_avx2", py_has_avx2, METH_NOARGS, "True when the CPU supports AVX2 and POPCNT"},
    {"path", py_path, METH_NOARGS, "the kernel path in use: 'avx2' or 'portable'"},
    {"set_portable", py_set_portable, METH_VARARGS, "set_portable(flag) -> previous flag; forces the portable path"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {PyModuleDef_HEAD_INIT, "_bitpack",
                                    "Bit-packed low-precision kernels (use engine.kernels).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__bitpack(void)
{
#ifdef BP_X86
    __builtin_cpu_init();
    cpu_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
#endif
    return PyModule_Create(&moddef);
}
