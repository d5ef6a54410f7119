/* Shared declarations of the bit-packed kernels (engine._bitpack).
 *
 * Layouts (all row-major, built by engine/kernels.py and pack_planes):
 *   planes  uint64 (R, bits, kw)      bit k of row r, plane j = bit (k%64) of word k/64; kw % 4 == 0
 *   int8    uint8  (N, D, kb*32)      nibble digits of offset codes u = w + ow: in each 64-k block,
 *                                     byte i holds digit(k=64b+i) | digit(k=64b+32+i) << 4
 *   nm      int8   (N, D, kb*32)      2:4 kept values (D=2: low nibble 0..15, high signed nibble),
 *           uint8  (N, kb*32)         their positions 0..3 in the group of four (slot order below)
 *   float   uint32 (NB, C, bits, 8)   rows 8*nb+l, bits of k = 30c..30c+29 in lane l, bit 3g+i = k 30c+3g+i
 */
#ifndef BITPACK_H
#define BITPACK_H

#include <stdint.h>
#include <stddef.h>

#define BP_MAX_THREADS 8

typedef void (*bp_task)(void *ctx, int part, int nparts);
/* Runs fn(ctx, p, n) for p in [0, n) on the calling thread plus pool workers; returns when all end. */
void bp_run(bp_task fn, void *ctx, int nparts);

/* Splits [0, units) into nparts nearly equal ranges. */
static inline void bp_split(int64_t units, int part, int nparts, int64_t *u0, int64_t *u1)
{
    *u0 = units * part / nparts;
    *u1 = units * (part + 1) / nparts;
}

typedef struct {
    int64_t *out64;
    int32_t *out32;
    int64_t N;
} bp_out;

static inline void bp_put(const bp_out *o, int64_t m, int64_t n, int64_t v)
{
    if (o->out64)
        o->out64[m * o->N + n] = v;
    else
        o->out32[m * o->N + n] = (int32_t)v;
}

/* Bit-serial: out[m,n] = sum_{i,j} sa_i * sw_j * popcount(a[m,i,:] & w[n,j,:]). */
typedef struct {
    const uint64_t *a, *w;
    int64_t M, N, kw;
    int ba, bw, simd;
    int64_t sa[8], sw[8];   /* plane weights: 2^j, or -2^(b-1) for a signed top plane */
    const uint64_t *as;     /* AVX2 fast path (ba, bw <= 2): a split into nibbles by bs_split_avx2 */
    bp_out out;
} bs_args;

/* int8-dot: out = sum_d 16^d <digit_d(u_n), a'_m> + oa*usum_n - ow*asum_m - K*ow*oa,
 * with u = w + ow in [0, 2^bw), a' = a - oa in int8. */
typedef struct {
    const uint8_t *w;
    const int64_t *usum;
    const int8_t *a;        /* (M, kb*64), zero padded */
    const int64_t *asum;
    int64_t M, N, kb, K, ow, oa;
    int D, simd;
    bp_out out;
} i8_args;

/* 2:4 sparse: out = sum_d 16^d <v_d(n), a''_m[pos]> - oa*wsum_n, a'' = a + oa in uint8. */
typedef struct {
    const int8_t *v;
    const uint8_t *pos;
    const int64_t *wsum;
    const uint8_t *a;       /* (M, kb*64), zero padded */
    int64_t M, N, kb, oa;
    int D, simd;
    bp_out out;
} nm_args;

/* Float activations x k-bit weight planes (PrecisionBatching): tables t[m, c*10+g, e] hold the
 * sums of the subset e of x[m, 30c+3g .. 30c+3g+2]; out[m,n] = sum over the top planes of s_j * dot. */
typedef struct {
    const uint32_t *w;
    const float *t;
    int64_t M, N, NB, C;
    int bits, top, simd;
    float s[8];
    float *out;
} fa_args;

/* Depthwise convolution, direct (no im2col): one k x k filter per channel, channels-last.
 * out[b,y,x,c] = sum_{i<kh, j<kw} w[i*kw+j, c] * a[b, y*sh+i, x*sw+j, c]
 * w int8 (T, C) weight values (T = kh*kw taps); a (B, Hp, Wp, C) zero-padded activation codes,
 * int8 (a_signed) or uint8; out int32 (B, Ho, Wo, C). Every product fits int16 (|w| <= 128,
 * a in [-128, 255]); the sum of T products fits int32 for T <= DW_MAX_TAPS. */
#define DW_MAX_TAPS 4096
typedef struct {
    const int8_t *w;
    const uint8_t *a;
    int a_signed, simd;
    int64_t B, Hp, Wp, C, Ho, Wo;
    int kh, kw, sh, sw;
    int32_t *out;
    const int16_t *wp;      /* AVX2 path: taps in pairs, interleaved for vpmaddwd (dw_prep_avx2) */
} dw_args;

/* Slot order of 2:4 values inside a 64-k block (32 kept values): slot s takes group
 * nm_group(s) (k = 4*group + pos); chosen so each 128-bit lane gathers from one 16-byte window. */
static inline int nm_group(int s)
{
    static const int base[4] = {0, 8, 4, 12};
    return base[s / 8] + (s % 8) / 2;
}

/* Bit-planes of 8-bit two's complement codes (R, K) into zeroed planes (R, bits, kw). */
void pack_portable(const uint8_t *codes, int64_t R, int64_t K, int bits, uint64_t *planes, int64_t kw);
void bs_portable(const bs_args *p, int64_t n0, int64_t n1);
void i8_portable(const i8_args *p, int64_t n0, int64_t n1);
void nm_portable(const nm_args *p, int64_t n0, int64_t n1);
void fa_portable(const fa_args *p, int64_t nb0, int64_t nb1);
/* Output rows r0..r1 of the B*Ho rows. */
void dw_portable(const dw_args *p, int64_t r0, int64_t r1);

#if defined(__x86_64__) || defined(__i386__)
#define BP_X86 1
void pack_avx2(const uint8_t *codes, int64_t R, int64_t K, int bits, uint64_t *planes, int64_t kw);
void bs_avx2(const bs_args *p, int64_t n0, int64_t n1);
/* (R, kw) words -> (R, kw/4, 2, 4): per 256-bit step, the low nibbles then the high nibbles (>> 4). */
void bs_split_avx2(const uint64_t *a, int64_t R, int64_t kw, uint64_t *out);
void i8_avx2(const i8_args *p, int64_t n0, int64_t n1);
void i8_prep_avx2(const uint8_t *src, int64_t M, int64_t K, int64_t kb, int oa, int8_t *dst, int64_t *asum);
void nm_avx2(const nm_args *p, int64_t n0, int64_t n1);
void fa_avx2(const fa_args *p, int64_t nb0, int64_t nb1);
void dw_avx2(const dw_args *p, int64_t r0, int64_t r1);
/* Bytes of the pair-interleaved taps dw_prep_avx2 writes (0 when C < 16). */
size_t dw_prep_bytes(int64_t T, int64_t C);
void dw_prep_avx2(const int8_t *w, int64_t T, int64_t C, int16_t *wp);
/* Least and greatest of n bytes read as int8 (sgn) or uint8: a code range check at memory speed. */
void range_avx2(const uint8_t *p, int64_t n, int sgn, int *lo, int *hi);
#endif

#endif
