/* Portable C kernels: the reference the AVX2 path must match bit for bit; builds anywhere. */
#include "bitpack.h"

void pack_portable(const uint8_t *codes, int64_t R, int64_t K, int bits, uint64_t *planes, int64_t kw)
{
    for (int64_t r = 0; r < R; r++)
        for (int64_t k = 0; k < K; k++) {
            const unsigned c = codes[r * K + k];
            for (int j = 0; j < bits; j++)
                planes[(r * bits + j) * kw + k / 64] |= (uint64_t)((c >> j) & 1) << (k % 64);
        }
}

void bs_portable(const bs_args *p, int64_t n0, int64_t n1)
{
    const int64_t kw = p->kw;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < p->M; m++) {
            int64_t total = 0;
            for (int i = 0; i < p->ba; i++)
                for (int j = 0; j < p->bw; j++) {
                    const uint64_t *a = p->a + (m * p->ba + i) * kw;
                    const uint64_t *w = p->w + (n * p->bw + j) * kw;
                    int64_t c = 0;
                    for (int64_t k = 0; k < kw; k++)
                        c += __builtin_popcountll(a[k] & w[k]);
                    total += p->sa[i] * p->sw[j] * c;
                }
            bp_put(&p->out, m, n, total);
        }
}

void i8_portable(const i8_args *p, int64_t n0, int64_t n1)
{
    const int64_t kb = p->kb;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < p->M; m++) {
            const int8_t *a = p->a + m * kb * 64;
            int64_t total = 0;
            for (int d = 0; d < p->D; d++) {
                const uint8_t *w = p->w + (n * p->D + d) * kb * 32;
                int64_t s = 0;
                for (int64_t b = 0; b < kb; b++)
                    for (int i = 0; i < 32; i++) {
                        uint8_t v = w[b * 32 + i];
                        s += (int64_t)(v & 15) * a[b * 64 + i] + (int64_t)(v >> 4) * a[b * 64 + 32 + i];
                    }
                total += s * ((int64_t)1 << (4 * d));
            }
            total += p->oa * p->usum[n] - p->ow * p->asum[m] - p->K * p->ow * p->oa;
            bp_put(&p->out, m, n, total);
        }
}

void nm_portable(const nm_args *p, int64_t n0, int64_t n1)
{
    const int64_t kb = p->kb;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t m = 0; m < p->M; m++) {
            const uint8_t *a = p->a + m * kb * 64;
            const uint8_t *pos = p->pos + n * kb * 32;
            int64_t total = 0;
            for (int d = 0; d < p->D; d++) {
                const int8_t *v = p->v + (n * p->D + d) * kb * 32;
                int64_t s = 0;
                for (int64_t b = 0; b < kb; b++)
                    for (int sl = 0; sl < 32; sl++) {
                        int k = 4 * nm_group(sl) + (pos[b * 32 + sl] & 3);
                        s += (int64_t)v[b * 32 + sl] * a[b * 64 + k];
                    }
                total += s * ((int64_t)1 << (4 * d));
            }
            bp_put(&p->out, m, n, total - p->oa * p->wsum[n]);
        }
}

void fa_portable(const fa_args *p, int64_t nb0, int64_t nb1)
{
    const int64_t C = p->C;
    for (int64_t nb = nb0; nb < nb1; nb++)
        for (int64_t m = 0; m < p->M; m++) {
            const float *t = p->t + m * C * 80;
            for (int l = 0; l < 8; l++) {
                int64_t n = nb * 8 + l;
                if (n >= p->N)
                    break;
                float res = 0.0f;
                for (int j = p->bits - 1; j >= p->bits - p->top; j--) {
                    float even = 0.0f, odd = 0.0f;
                    for (int64_t c = 0; c < C; c++) {
                        uint32_t word = p->w[((nb * C + c) * p->bits + j) * 8 + l];
                        for (int g = 0; g < 10; g++) {
                            float v = t[(c * 10 + g) * 8 + ((word >> (3 * g)) & 7)];
                            if (g & 1)
                                odd += v;
                            else
                                even += v;
                        }
                    }
                    float prod = p->s[j] * (even + odd);
                    res += prod;
                }
                p->out[m * p->N + n] = res;
            }
        }
}

void dw_portable(const dw_args *p, int64_t r0, int64_t r1)
{
    const int64_t C = p->C;
    const int8_t *as = (const int8_t *)p->a;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t b = r / p->Ho, y = r % p->Ho;
        for (int64_t x = 0; x < p->Wo; x++) {
            int32_t *o = p->out + (r * p->Wo + x) * C;
            for (int64_t c = 0; c < C; c++)
                o[c] = 0;
            for (int i = 0; i < p->kh; i++)
                for (int j = 0; j < p->kw; j++) {
                    const int64_t at = ((b * p->Hp + y * p->sh + i) * p->Wp + x * p->sw + j) * C;
                    const int8_t *w = p->w + (int64_t)(i * p->kw + j) * C;
                    if (p->a_signed)
                        for (int64_t c = 0; c < C; c++)
                            o[c] += (int32_t)w[c] * as[at + c];
                    else
                        for (int64_t c = 0; c < C; c++)
                            o[c] += (int32_t)w[c] * p->a[at + c];
                }
        }
    }
}
