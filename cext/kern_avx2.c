/* AVX2 kernels, compiled with function-level target attributes so the module builds with
 * default flags; module.c calls them only when __builtin_cpu_supports("avx2") says so.
 * Each kernel computes an MR x NR output tile; tails reuse the last valid row (results dropped). */
#include "bitpack.h"

#ifdef BP_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx2,popcnt")))
#define TILE static inline __attribute__((always_inline)) TGT

static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

TILE int64_t hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

TILE uint64_t hsum_epi64(__m256i v)
{
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return (uint64_t)_mm_cvtsi128_si64(s) + (uint64_t)_mm_extract_epi64(s, 1);
}

/* ---- packing: bit j of 32 bytes -> one movemask ---- */

TGT void pack_avx2(const uint8_t *codes, int64_t R, int64_t K, int bits, uint64_t *planes, int64_t kw)
{
    for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < K; k += 32) {
            __m256i v;
            if (k + 32 <= K) {
                v = _mm256_loadu_si256((const __m256i *)(codes + r * K + k));
            } else {
                uint8_t tail[32] = {0};
                for (int64_t i = k; i < K; i++)
                    tail[i - k] = codes[r * K + i];
                v = _mm256_loadu_si256((const __m256i *)tail);
            }
            uint64_t *dst = planes + r * bits * kw + k / 64;
            const int sh = (int)(k % 64);
            switch (bits) {  /* shift counts must be immediates */
#define PLANE(j) dst[(j) * kw] |= (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(v, 7 - (j))) << sh
            case 8: PLANE(7); /* fall through */
            case 7: PLANE(6); /* fall through */
            case 6: PLANE(5); /* fall through */
            case 5: PLANE(4); /* fall through */
            case 4: PLANE(3); /* fall through */
            case 3: PLANE(2); /* fall through */
            case 2: PLANE(1); /* fall through */
            default: PLANE(0);
#undef PLANE
            }
        }
}

/* ---- bit-serial: AND + nibble-LUT popcount, byte counters flushed by vpsadbw every 31 steps ---- */

TILE void bs_tile(const uint64_t *const *ar, const uint64_t *const *wr, int64_t nv,
                  uint64_t cnt[2][4], const int MR, const int NR)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(15), zero = _mm256_setzero_si256();
    for (int64_t v0 = 0; v0 < nv; v0 += 31) {
        const int64_t v1 = imin(nv, v0 + 31);
        __m256i acc[2][4];
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                acc[r][c] = zero;
        for (int64_t v = v0; v < v1; v++) {
            __m256i a[2];
            for (int r = 0; r < MR; r++)
                a[r] = _mm256_loadu_si256((const __m256i *)(ar[r] + 4 * v));
            for (int c = 0; c < NR; c++) {
                const __m256i w = _mm256_loadu_si256((const __m256i *)(wr[c] + 4 * v));
                for (int r = 0; r < MR; r++) {
                    const __m256i x = _mm256_and_si256(a[r], w);
                    const __m256i lo = _mm256_and_si256(x, m4);
                    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
                    acc[r][c] = _mm256_add_epi8(acc[r][c], _mm256_shuffle_epi8(lut, lo));
                    acc[r][c] = _mm256_add_epi8(acc[r][c], _mm256_shuffle_epi8(lut, hi));
                }
            }
        }
        /* each vpsadbw lane is <= 31*8*8, so four outputs share one 64-bit lane as 16-bit fields */
        for (int r = 0; r < MR; r++) {
            __m256i t = _mm256_sad_epu8(acc[r][0], zero);
            for (int c = 1; c < NR; c++)
                t = _mm256_add_epi64(t, _mm256_slli_epi64(_mm256_sad_epu8(acc[r][c], zero), 16 * c));
            const uint64_t h = hsum_epi64(t);
            for (int c = 0; c < NR; c++)
                cnt[r][c] += (h >> (16 * c)) & 0xffff;
        }
    }
}

TILE void bs_block(const bs_args *p, int64_t m, int64_t n, int64_t n1, const int MR)
{
    const int NR = 4;
    int64_t tot[2][4] = {{0}};
    for (int i = 0; i < p->ba; i++)
        for (int j = 0; j < p->bw; j++) {
            const uint64_t *ar[2], *wr[4];
            uint64_t cnt[2][4] = {{0}};
            for (int r = 0; r < MR; r++)
                ar[r] = p->a + (imin(m + r, p->M - 1) * p->ba + i) * p->kw;
            for (int c = 0; c < NR; c++)
                wr[c] = p->w + (imin(n + c, n1 - 1) * p->bw + j) * p->kw;
            bs_tile(ar, wr, p->kw / 4, cnt, MR, NR);
            for (int r = 0; r < MR; r++)
                for (int c = 0; c < NR; c++)
                    tot[r][c] += p->sa[i] * p->sw[j] * (int64_t)cnt[r][c];
        }
    for (int r = 0; r < MR && m + r < p->M; r++)
        for (int c = 0; c < NR && n + c < n1; c++)
            bp_put(&p->out, m + r, n + c, tot[r][c]);
}

/* ---- bit-serial fast path for ba, bw <= 2: a pre-split into low/high nibbles (so each AND
 *      yields a LUT index directly), all plane pairs of an output share one byte accumulator
 *      through LUTs scaled by 2^(i+j); a negative pair uses 2^s*(4 - popcount), corrected by a
 *      constant. Byte counters are flushed with vpsadbw before they can exceed 255. ---- */

TGT void bs_split_avx2(const uint64_t *a, int64_t R, int64_t kw, uint64_t *out)
{
    const __m256i m4 = _mm256_set1_epi8(15);
    for (int64_t v = 0; v < R * kw / 4; v++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(a + 4 * v));
        _mm256_storeu_si256((__m256i *)(out + 8 * v), _mm256_and_si256(x, m4));
        _mm256_storeu_si256((__m256i *)(out + 8 * v + 4), _mm256_and_si256(_mm256_srli_epi16(x, 4), m4));
    }
}

TILE void bsf_block(const bs_args *p, const __m256i *lut, int64_t F, int64_t corr, int64_t m, int64_t n,
                    int64_t n1, const int MR, const int NR, const int BA, const int BW)
{
    const int64_t kw = p->kw, nv = kw / 4;
    const __m256i *ar[4][2], *wr[4][2];
    for (int r = 0; r < MR; r++)
        for (int i = 0; i < BA; i++)
            ar[r][i] = (const __m256i *)(p->as + (imin(m + r, p->M - 1) * BA + i) * kw * 2);
    for (int c = 0; c < NR; c++)
        for (int j = 0; j < BW; j++)
            wr[c][j] = (const __m256i *)(p->w + (imin(n + c, n1 - 1) * BW + j) * kw);
    const __m256i zero = _mm256_setzero_si256();
    __m256i tot[4][2];  /* [row][column pair]: 64-bit lanes holding two 32-bit column fields */
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c += 2)
            tot[r][c / 2] = zero;
    for (int64_t v0 = 0; v0 < nv; v0 += F) {
        const int64_t v1 = imin(nv, v0 + F);
        __m256i acc[4][4];
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                acc[r][c] = zero;
        for (int64_t v = v0; v < v1; v++)
            for (int j = 0; j < BW; j++) {
                __m256i wl[4], wh[4];
                for (int c = 0; c < NR; c++) {
                    wl[c] = _mm256_loadu_si256(wr[c][j] + v);
                    wh[c] = _mm256_srli_epi16(wl[c], 4);
                }
                for (int i = 0; i < BA; i++) {
                    const __m256i L = lut[i * 2 + j];
                    for (int r = 0; r < MR; r++) {
                        const __m256i lo = _mm256_loadu_si256(ar[r][i] + 2 * v);
                        const __m256i hi = _mm256_loadu_si256(ar[r][i] + 2 * v + 1);
                        for (int c = 0; c < NR; c++) {
                            acc[r][c] = _mm256_add_epi8(acc[r][c], _mm256_shuffle_epi8(L, _mm256_and_si256(lo, wl[c])));
                            acc[r][c] = _mm256_add_epi8(acc[r][c], _mm256_shuffle_epi8(L, _mm256_and_si256(hi, wh[c])));
                            /* keeps gcc from re-associating the adds into a tree of temporaries (it
                             * spilled them: 2x2 bits ran ~35 % slower) */
                            __asm__("" : "+x"(acc[r][c]));
                        }
                    }
                }
            }
        /* each 64-bit lane of a vpsadbw is <= 8*255; column c goes to the 32-bit field c % 2 */
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c += 2) {
                __m256i t = _mm256_sad_epu8(acc[r][c], zero);
                if (c + 1 < NR)
                    t = _mm256_add_epi64(t, _mm256_slli_epi64(_mm256_sad_epu8(acc[r][c + 1], zero), 32));
                tot[r][c / 2] = _mm256_add_epi64(tot[r][c / 2], t);
            }
    }
    if (p->out.out32 && NR == 2 && (MR == 2 || MR == 4) && m + MR <= p->M && n + 2 <= n1) {
        /* full tile, int32 output: each row's two 32-bit fields are its two adjacent outputs */
        const __m256i h01 = _mm256_add_epi64(_mm256_unpacklo_epi64(tot[0][0], tot[1][0]),
                                             _mm256_unpackhi_epi64(tot[0][0], tot[1][0]));
        const __m256i c = _mm256_set1_epi32((int32_t)corr);
        int32_t *o = p->out.out32 + m * p->out.N + n;
        const int64_t N = p->out.N;
        if (MR == 2) {
            __m128i x = _mm_add_epi64(_mm256_castsi256_si128(h01), _mm256_extracti128_si256(h01, 1));
            x = _mm_sub_epi32(x, _mm256_castsi256_si128(c));
            _mm_storel_epi64((__m128i *)o, x);
            _mm_storel_epi64((__m128i *)(o + N), _mm_unpackhi_epi64(x, x));
        } else {
            const __m256i h23 = _mm256_add_epi64(_mm256_unpacklo_epi64(tot[2][0], tot[3][0]),
                                                 _mm256_unpackhi_epi64(tot[2][0], tot[3][0]));
            __m256i x = _mm256_add_epi64(_mm256_permute2x128_si256(h01, h23, 0x20),
                                         _mm256_permute2x128_si256(h01, h23, 0x31));
            x = _mm256_sub_epi32(x, c);
            const __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
            _mm_storel_epi64((__m128i *)o, lo);
            _mm_storel_epi64((__m128i *)(o + N), _mm_unpackhi_epi64(lo, lo));
            _mm_storel_epi64((__m128i *)(o + 2 * N), hi);
            _mm_storel_epi64((__m128i *)(o + 3 * N), _mm_unpackhi_epi64(hi, hi));
        }
        return;
    }
    for (int r = 0; r < MR && m + r < p->M; r++)
        for (int c = 0; c < NR && n + c < n1; c += 2) {
            const uint64_t h = hsum_epi64(tot[r][c / 2]);
            bp_put(&p->out, m + r, n + c, (int64_t)(h & 0xffffffffu) - corr);
            if (c + 1 < NR && n + c + 1 < n1)
                bp_put(&p->out, m + r, n + c + 1, (int64_t)(h >> 32) - corr);
        }
}

TILE void bsf_run(const bs_args *p, const __m256i *lut, int64_t F, int64_t corr, int64_t n0, int64_t n1,
                  const int MR, const int NR, const int BA, const int BW)
{
    const int64_t nc = imin(n1 - n0, 2 * (int64_t)(1 + 196608 / (2 * p->kw * 8 * BW)));  /* see i8_avx2 */
    for (int64_t c0 = n0; c0 < n1; c0 += nc)
        for (int64_t m = 0; m < p->M; m += MR) {
            const int64_t mr = imin(MR, p->M - m), c1 = imin(n1, c0 + nc);
            for (int64_t n = c0; n < c1; n += NR) {
                if (mr == MR)
                    bsf_block(p, lut, F, corr, m, n, n1, MR, NR, BA, BW);
                else if (mr == 3)
                    bsf_block(p, lut, F, corr, m, n, n1, 3, NR, BA, BW);
                else if (mr == 2)
                    bsf_block(p, lut, F, corr, m, n, n1, 2, NR, BA, BW);
                else
                    bsf_block(p, lut, F, corr, m, n, n1, 1, NR, BA, BW);
            }
        }
}

static TGT void bsf_avx2(const bs_args *p, int64_t n0, int64_t n1)
{
    /* per step a byte counter gains <= 2 nibbles * 4 * 2^s summed over the plane pairs */
    int64_t step = 0, corr = 0;
    __m256i lut[4];
    for (int i = 0; i < p->ba; i++)
        for (int j = 0; j < p->bw; j++) {
            const int64_t wgt = p->sa[i] * p->sw[j], s = wgt < 0 ? -wgt : wgt;
            int8_t e[32];
            for (int x = 0; x < 32; x++) {
                const int pc = __builtin_popcount(x & 15);
                e[x] = (int8_t)(s * (wgt < 0 ? 4 - pc : pc));
            }
            lut[i * 2 + j] = _mm256_loadu_si256((const __m256i *)e);
            step += 8 * s;
            if (wgt < 0)
                corr += s * 256 * (p->kw / 4);  /* 64 nibbles per step, each offset by 4*s */
        }
    const int64_t F = 255 / step;
    if (p->M == 1 && p->ba == 1 && p->bw == 1)  /* GEMV: one row, four columns per tile */
        bsf_run(p, lut, F, corr, n0, n1, 1, 4, 1, 1);
    else if (p->ba == 1 && p->bw == 1)
        bsf_run(p, lut, F, corr, n0, n1, 4, 2, 1, 1);
    else if (p->ba == 1)
        bsf_run(p, lut, F, corr, n0, n1, 4, 1, 1, 2);
    else if (p->bw == 1)
        bsf_run(p, lut, F, corr, n0, n1, 2, 2, 2, 1);
    else
        bsf_run(p, lut, F, corr, n0, n1, 2, 2, 2, 2);  /* 2x2 measured fastest (4 LUTs live) */
}

TGT void bs_avx2(const bs_args *p, int64_t n0, int64_t n1)
{
    if (p->as) {
        bsf_avx2(p, n0, n1);
        return;
    }
    for (int64_t n = n0; n < n1; n += 4) {
        int64_t m = 0;
        for (; m + 1 < p->M; m += 2)
            bs_block(p, m, n, n1, 2);
        if (m < p->M)
            bs_block(p, m, n, n1, 1);
    }
}

/* ---- int8-dot: nibble digits (u8, <= 15) x int8 activations; vpmaddubsw pair sums are
 *      <= 2*15*128 and int16 partial sums <= 30720, so nothing saturates ---- */

#define I8_MAXR 8

TILE void i8_tile(const int8_t *const *ar, const uint8_t *const *wr, int64_t kb,
                  int64_t s64[I8_MAXR][2], __m128i s32[I8_MAXR], const int MR, const int NR)
{
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256i acc[I8_MAXR][2];
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++)
            acc[r][c] = _mm256_setzero_si256();
    /* int16 partial sums over up to 4 blocks: |sum| <= 4 * 2 * 2*15*128 = 30720 < 32768 */
    for (int64_t b0 = 0; b0 < kb; b0 += 4) {
        const int64_t b1 = imin(kb, b0 + 4);
        __m256i acc16[I8_MAXR][2];
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                acc16[r][c] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int64_t b = b0; b < b1; b++) {  /* unrolled: ~12 % faster than the rolled loop here */
            __m256i wl[2], wh[2];
            for (int c = 0; c < NR; c++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(wr[c] + 32 * b));
                wl[c] = _mm256_and_si256(v, m4);
                wh[c] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            }
            for (int r = 0; r < MR; r++) {
                const __m256i al = _mm256_loadu_si256((const __m256i *)(ar[r] + 64 * b));
                const __m256i ah = _mm256_loadu_si256((const __m256i *)(ar[r] + 64 * b + 32));
                for (int c = 0; c < NR; c++) {
                    acc16[r][c] = _mm256_add_epi16(acc16[r][c], _mm256_maddubs_epi16(wl[c], al));
                    acc16[r][c] = _mm256_add_epi16(acc16[r][c], _mm256_maddubs_epi16(wh[c], ah));
                }
            }
        }
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_madd_epi16(acc16[r][c], ones));
    }
    if (s64) {
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                s64[r][c] = hsum_epi32(acc[r][c]);
        return;
    }
    /* row r's sums (NR of them) as int32 in the low lanes of s32[r] */
    for (int r = 0; r < MR; r++) {
        const __m256i h = _mm256_hadd_epi32(acc[r][0], acc[r][NR - 1]);
        const __m128i x = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        s32[r] = _mm_hadd_epi32(x, x);
    }
}

TILE void i8_block(const i8_args *p, int64_t m, int64_t n, int64_t n1, const int MR, const int NR)
{
    int64_t tot[I8_MAXR][2] = {{0}};
    const int8_t *ar[I8_MAXR];
    for (int r = 0; r < MR; r++)
        ar[r] = p->a + imin(m + r, p->M - 1) * p->kb * 64;
    if (p->D == 1 && p->out.out32 && m + MR <= p->M && n + NR <= n1) {
        /* full tile, one digit, int32 output: the epilogue stays in int32 (wrapping arithmetic,
         * exact because the final results fit in int32) */
        const uint8_t *wr[2] = {p->w + n * p->kb * 32, p->w + (n + NR - 1) * p->kb * 32};
        __m128i s32[I8_MAXR];
        i8_tile(ar, wr, p->kb, NULL, s32, MR, NR);
        const __m128i col = _mm_setr_epi32((int32_t)(p->oa * p->usum[n]), (int32_t)(p->oa * p->usum[n + NR - 1]), 0, 0);
        for (int r = 0; r < MR; r++) {
            const int32_t row = (int32_t)(p->ow * p->asum[m + r] + p->K * p->ow * p->oa);
            const __m128i v = _mm_sub_epi32(_mm_add_epi32(s32[r], col), _mm_set1_epi32(row));
            int32_t *o = p->out.out32 + (m + r) * p->out.N + n;
            if (NR == 2)
                _mm_storel_epi64((__m128i *)o, v);
            else
                *o = _mm_cvtsi128_si32(v);
        }
        return;
    }
    for (int d = 0; d < p->D; d++) {
        const uint8_t *wr[2];
        int64_t s[I8_MAXR][2];
        for (int c = 0; c < NR; c++)
            wr[c] = p->w + (imin(n + c, n1 - 1) * p->D + d) * p->kb * 32;
        i8_tile(ar, wr, p->kb, s, NULL, MR, NR);
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                tot[r][c] += s[r][c] * ((int64_t)1 << (4 * d));
    }
    for (int r = 0; r < MR && m + r < p->M; r++)
        for (int c = 0; c < NR && n + c < n1; c++)
            bp_put(&p->out, m + r, n + c,
                   tot[r][c] + p->oa * p->usum[n + c] - p->ow * p->asum[m + r] - p->K * p->ow * p->oa);
}

#ifndef I8MR      /* the tile: 4 activation rows x 1 weight row measured fastest here (vs 3x2, 4x2, 6x1) */
#define I8MR 4
#define I8NR 1
#endif

TILE void i8_rows(const i8_args *p, int64_t m, int64_t n, int64_t n1, const int MR)
{
    if (MR <= 1)
        i8_block(p, m, n, n1, 1, I8NR);
    else if (MR == 2)
        i8_block(p, m, n, n1, 2, I8NR);
    else if (MR == 3)
        i8_block(p, m, n, n1, 3, I8NR);
    else if (MR == 4)
        i8_block(p, m, n, n1, 4, I8NR);
    else if (MR == 5)
        i8_block(p, m, n, n1, 5, I8NR);
    else if (MR == 6)
        i8_block(p, m, n, n1, 6, I8NR);
    else if (MR == 7)
        i8_block(p, m, n, n1, 7, I8NR);
    else
        i8_block(p, m, n, n1, 8, I8NR);
}

TGT void i8_avx2(const i8_args *p, int64_t n0, int64_t n1)
{
    /* column chunks whose weights fit in L2 (~192 KiB), then row blocks: the activation rows of
     * a block stay in L1 while the chunk's weights stream from L2 */
#ifndef I8_CHUNK
#define I8_CHUNK 196608
#endif
    const int64_t nc = imin(n1 - n0, 2 * (int64_t)(1 + I8_CHUNK / (2 * p->kb * 32 * p->D)));
    for (int64_t c0 = n0; c0 < n1; c0 += nc)
        for (int64_t m = 0; m < p->M; m += I8MR) {
            const int64_t mr = imin(I8MR, p->M - m), c1 = imin(n1, c0 + nc);
            for (int64_t n = c0; n < c1; n += I8NR) {
                if (mr == I8MR)
                    i8_block(p, m, n, n1, I8MR, I8NR);
                else
                    i8_rows(p, m, n, n1, (int)mr);
            }
        }
}

/* Activations for the int8-dot kernel: a' = a (signed) or a - 128 (unsigned, oa = 128) into
 * zero-padded rows of kb*64 bytes, plus the row sums of a'. */
TGT void i8_prep_avx2(const uint8_t *src, int64_t M, int64_t K, int64_t kb, int oa, int8_t *dst, int64_t *asum)
{
    const __m256i flip = _mm256_set1_epi8((char)0x80), zero = _mm256_setzero_si256();
    for (int64_t m = 0; m < M; m++) {
        const uint8_t *s = src + m * K;
        int8_t *d = dst + m * kb * 64;
        __m256i acc = zero;  /* sums of a' + 128 (as u8) in 64-bit lanes */
        int64_t k = 0, tail = 0;
        for (; k + 32 <= K; k += 32) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(s + k));
            if (oa)
                v = _mm256_xor_si256(v, flip);          /* a - 128 as int8 */
            if (dst)
                _mm256_storeu_si256((__m256i *)(d + k), v);
            acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_xor_si256(v, flip), zero));
        }
        for (; k < K; k++) {
            const int v = oa ? (int)s[k] - 128 : (int)(int8_t)s[k];
            if (dst)
                d[k] = (int8_t)v;
            tail += v;
        }
        if (asum)
            asum[m] = (int64_t)hsum_epi64(acc) - 128 * (K / 32 * 32) + tail;
    }
}

/* ---- 2:4 sparse: gather kept activations with two vpshufb + blend, then u8 x s8 madd.
 *      Pair sums <= 2*255*64 (one digit, |v| <= 64) or 2*255*15 (nibble digits). ---- */

TILE void nm_tile(const uint8_t *const *ar, const int8_t *const *vr, const uint8_t *const *pr,
                  int64_t kb, int64_t vstride, int64_t s[2][2][2], const int MR, const int NR, const int D)
{
    const __m256i base = _mm256_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12,
                                          0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12);
    const __m256i bmask = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1,
                                           0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1, -1, -1, -1, -1);
    const __m256i three = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
    __m256i acc[2][2][2];
    for (int d = 0; d < D; d++)
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                acc[d][r][c] = _mm256_setzero_si256();
    for (int64_t b = 0; b < kb; b++) {
        __m256i idx[2];
        for (int c = 0; c < NR; c++)
            idx[c] = _mm256_add_epi8(base, _mm256_and_si256(
                         _mm256_loadu_si256((const __m256i *)(pr[c] + 32 * b)), three));
        for (int r = 0; r < MR; r++) {
            const __m256i a0 = _mm256_loadu_si256((const __m256i *)(ar[r] + 64 * b));
            const __m256i a1 = _mm256_loadu_si256((const __m256i *)(ar[r] + 64 * b + 32));
            for (int c = 0; c < NR; c++) {
                const __m256i g = _mm256_blendv_epi8(_mm256_shuffle_epi8(a0, idx[c]),
                                                     _mm256_shuffle_epi8(a1, idx[c]), bmask);
                for (int d = 0; d < D; d++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(vr[c] + d * vstride + 32 * b));
                    acc[d][r][c] = _mm256_add_epi32(acc[d][r][c],
                                                    _mm256_madd_epi16(_mm256_maddubs_epi16(g, v), ones));
                }
            }
        }
    }
    for (int d = 0; d < D; d++)
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                s[d][r][c] = hsum_epi32(acc[d][r][c]);
}

TILE void nm_block(const nm_args *p, int64_t m, int64_t n, int64_t n1, const int MR, const int D)
{
    const int NR = 2;
    const uint8_t *ar[2], *pr[2];
    const int8_t *vr[2];
    int64_t s[2][2][2];
    for (int r = 0; r < MR; r++)
        ar[r] = p->a + imin(m + r, p->M - 1) * p->kb * 64;
    for (int c = 0; c < NR; c++) {
        const int64_t nn = imin(n + c, n1 - 1);
        vr[c] = p->v + nn * D * p->kb * 32;
        pr[c] = p->pos + nn * p->kb * 32;
    }
    nm_tile(ar, vr, pr, p->kb, p->kb * 32, s, MR, NR, D);
    for (int r = 0; r < MR && m + r < p->M; r++)
        for (int c = 0; c < NR && n + c < n1; c++) {
            int64_t t = s[0][r][c];
            if (D == 2)
                t += s[1][r][c] * 16;
            bp_put(&p->out, m + r, n + c, t - p->oa * p->wsum[n + c]);
        }
}

TGT void nm_avx2(const nm_args *p, int64_t n0, int64_t n1)
{
    for (int64_t n = n0; n < n1; n += 2) {
        int64_t m = 0;
        for (; m + 1 < p->M; m += 2) {
            if (p->D == 1)
                nm_block(p, m, n, n1, 2, 1);
            else
                nm_block(p, m, n, n1, 2, 2);
        }
        if (m < p->M) {
            if (p->D == 1)
                nm_block(p, m, n, n1, 1, 1);
            else
                nm_block(p, m, n, n1, 1, 2);
        }
    }
}

/* ---- float activations x weight planes: vpermps looks up 8 rows' 3-bit patterns in an 8-entry
 *      table of subset sums; even and odd groups use separate accumulators (same order as portable) ---- */

TILE void fa_block(const fa_args *p, int64_t m, int64_t nb, int64_t nb1, const int MR, const int NR)
{
    const int64_t C = p->C;
    __m256 res[2][4];
    const float *t[2];
    const uint32_t *w[4];
    for (int r = 0; r < MR; r++)
        t[r] = p->t + imin(m + r, p->M - 1) * C * 80;
    for (int c = 0; c < NR; c++)
        w[c] = p->w + imin(nb + c, nb1 - 1) * C * p->bits * 8;
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NR; c++)
            res[r][c] = _mm256_setzero_ps();
    for (int j = p->bits - 1; j >= p->bits - p->top; j--) {
        __m256 ev[2][4], od[2][4];
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                ev[r][c] = od[r][c] = _mm256_setzero_ps();
        for (int64_t k = 0; k < C; k++) {
            __m256i idx[4];
            for (int c = 0; c < NR; c++)
                idx[c] = _mm256_loadu_si256((const __m256i *)(w[c] + (k * p->bits + j) * 8));
            for (int g = 0; g < 10; g += 2) {
                for (int r = 0; r < MR; r++) {
                    const __m256 te = _mm256_loadu_ps(t[r] + (k * 10 + g) * 8);
                    const __m256 to = _mm256_loadu_ps(t[r] + (k * 10 + g + 1) * 8);
                    for (int c = 0; c < NR; c++) {
                        ev[r][c] = _mm256_add_ps(ev[r][c], _mm256_permutevar8x32_ps(te, idx[c]));
                        od[r][c] = _mm256_add_ps(od[r][c], _mm256_permutevar8x32_ps(
                                                     to, _mm256_srli_epi32(idx[c], 3)));
                    }
                }
                for (int c = 0; c < NR; c++)
                    idx[c] = _mm256_srli_epi32(idx[c], 6);
            }
        }
        const __m256 sj = _mm256_set1_ps(p->s[j]);
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NR; c++)
                res[r][c] = _mm256_add_ps(res[r][c], _mm256_mul_ps(sj, _mm256_add_ps(ev[r][c], od[r][c])));
    }
    for (int r = 0; r < MR && m + r < p->M; r++)
        for (int c = 0; c < NR && nb + c < nb1; c++) {
            float buf[8];
            _mm256_storeu_ps(buf, res[r][c]);
            for (int l = 0; l < 8 && (nb + c) * 8 + l < p->N; l++)
                p->out[(m + r) * p->N + (nb + c) * 8 + l] = buf[l];
        }
}

TGT void fa_avx2(const fa_args *p, int64_t nb0, int64_t nb1)
{
    if (p->M == 1) {  /* GEMV: four row blocks at a time, so more independent add chains */
        for (int64_t nb = nb0; nb < nb1; nb += 4)
            fa_block(p, 0, nb, nb1, 1, 4);
        return;
    }
    for (int64_t nb = nb0; nb < nb1; nb += 2) {
        int64_t m = 0;
        for (; m + 1 < p->M; m += 2)
            fa_block(p, m, nb, nb1, 2, 2);
        if (m < p->M)
            fa_block(p, m, nb, nb1, 1, 2);
    }
}

/* ---- depthwise: per output pixel, up to 64 channels of int32 accumulators held over the taps,
 * which are taken in pairs: the two taps' int16 codes interleaved per channel meet the pair's
 * interleaved weights in one vpmaddwd (exact: |w| <= 128, a in [-128, 255], so no pair sum
 * saturates). vpunpck works within 128-bit lanes, so the accumulators hold channels
 * [0-3 | 8-11] and [4-7 | 12-15] of each 16 and are put back in order when stored.
 * The activation signedness is a compile-time constant of each instantiation. ---- */

size_t dw_prep_bytes(int64_t T, int64_t C)
{
    return (size_t)((T + 1) / 2) * (size_t)(C / 16) * 32 * sizeof(int16_t);
}

void dw_prep_avx2(const int8_t *w, int64_t T, int64_t C, int16_t *wp)
{
    const int64_t nblk = C / 16;
    for (int64_t q = 0; q < (T + 1) / 2; q++)
        for (int64_t cb = 0; cb < nblk; cb++) {
            int16_t *d = wp + (q * nblk + cb) * 32;   /* 16 for the low unpack, 16 for the high */
            for (int h = 0; h < 2; h++)
                for (int i = 0; i < 4; i++)
                    for (int half = 0; half < 2; half++) {
                        const int64_t c = cb * 16 + h * 8 + half * 4 + i;
                        d[half * 16 + h * 8 + 2 * i] = w[2 * q * C + c];
                        d[half * 16 + h * 8 + 2 * i + 1] = 2 * q + 1 < T ? w[(2 * q + 1) * C + c] : 0;
                    }
        }
}

TILE __m256i dw_load_a(const uint8_t *a, int sgn)
{
    const __m128i v = _mm_loadu_si128((const __m128i *)a);
    return sgn ? _mm256_cvtepi8_epi16(v) : _mm256_cvtepu8_epi16(v);
}

TILE void dw_block(const dw_args *p, const uint8_t *a0, int64_t cb, int32_t *o, int nb, int sgn)
{
    __m256i lo[4], hi[4];
    for (int b = 0; b < nb; b++)
        lo[b] = hi[b] = _mm256_setzero_si256();
    const int64_t C = p->C, T = (int64_t)p->kh * p->kw, nblk = C / 16;
    for (int64_t q = 0; q < (T + 1) / 2; q++) {
        const int64_t t0 = 2 * q, t1 = 2 * q + 1;
        const uint8_t *x0 = a0 + ((t0 / p->kw) * p->Wp + t0 % p->kw) * C;
        const uint8_t *x1 = t1 < T ? a0 + ((t1 / p->kw) * p->Wp + t1 % p->kw) * C : NULL;
        const int16_t *w = p->wp + (q * nblk + cb) * 32;
        for (int b = 0; b < nb; b++) {
            const __m256i v0 = dw_load_a(x0 + 16 * b, sgn);
            const __m256i v1 = x1 ? dw_load_a(x1 + 16 * b, sgn) : _mm256_setzero_si256();
            const __m256i wl = _mm256_loadu_si256((const __m256i *)(w + 32 * b));
            const __m256i wh = _mm256_loadu_si256((const __m256i *)(w + 32 * b + 16));
            lo[b] = _mm256_add_epi32(lo[b], _mm256_madd_epi16(_mm256_unpacklo_epi16(v0, v1), wl));
            hi[b] = _mm256_add_epi32(hi[b], _mm256_madd_epi16(_mm256_unpackhi_epi16(v0, v1), wh));
        }
    }
    for (int b = 0; b < nb; b++) {
        _mm256_storeu_si256((__m256i *)(o + 16 * b), _mm256_permute2x128_si256(lo[b], hi[b], 0x20));
        _mm256_storeu_si256((__m256i *)(o + 16 * b + 8), _mm256_permute2x128_si256(lo[b], hi[b], 0x31));
    }
}

TILE void dw_rows(const dw_args *p, int64_t r0, int64_t r1, int sgn)
{
    const int64_t C = p->C;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / p->Ho, y = r % p->Ho;
        for (int64_t x = 0; x < p->Wo; x++) {
            int32_t *o = p->out + (r * p->Wo + x) * C;
            const int64_t base = ((b * p->Hp + y * p->sh) * p->Wp + x * p->sw) * C;
            int64_t c = 0;
            for (; c + 64 <= C; c += 64)
                dw_block(p, p->a + base + c, c / 16, o + c, 4, sgn);
            for (; c + 16 <= C; c += 16)
                dw_block(p, p->a + base + c, c / 16, o + c, 1, sgn);
            for (; c < C; c++) {
                int32_t acc = 0;
                for (int i = 0; i < p->kh; i++)
                    for (int j = 0; j < p->kw; j++) {
                        const int64_t at = base + ((int64_t)i * p->Wp + j) * C + c;
                        const int32_t av = sgn ? (int32_t)(int8_t)p->a[at] : (int32_t)p->a[at];
                        acc += (int32_t)p->w[(int64_t)(i * p->kw + j) * C + c] * av;
                    }
                o[c] = acc;
            }
        }
    }
}

TGT void dw_avx2(const dw_args *p, int64_t r0, int64_t r1)
{
    if (p->a_signed)
        dw_rows(p, r0, r1, 1);
    else
        dw_rows(p, r0, r1, 0);
}

/* ---- code range: least and greatest byte (int8 or uint8) ---- */

TGT void range_avx2(const uint8_t *p, int64_t n, int sgn, int *lo, int *hi)
{
    int64_t i = 0;
    uint8_t bl[32], bh[32];
    int l = sgn ? 127 : 255, h = sgn ? -128 : 0;
    __m256i vl = _mm256_set1_epi8(sgn ? 127 : -1), vh = _mm256_set1_epi8(sgn ? -128 : 0);
    for (; i + 32 <= n; i += 32) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(p + i));
        vl = sgn ? _mm256_min_epi8(vl, x) : _mm256_min_epu8(vl, x);
        vh = sgn ? _mm256_max_epi8(vh, x) : _mm256_max_epu8(vh, x);
    }
    _mm256_storeu_si256((__m256i *)bl, vl);
    _mm256_storeu_si256((__m256i *)bh, vh);
    for (int k = 0; k < 32; k++) {
        int a = sgn ? (int)(int8_t)bl[k] : (int)bl[k], b = sgn ? (int)(int8_t)bh[k] : (int)bh[k];
        l = a < l ? a : l;
        h = b > h ? b : h;
    }
    for (; i < n; i++) {
        int v = sgn ? (int)(int8_t)p[i] : (int)p[i];
        l = v < l ? v : l;
        h = v > h ? v : h;
    }
    *lo = l;
    *hi = h;
}

#endif /* BP_X86 */
