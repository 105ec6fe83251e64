/* The thin bf16 products of a linear layer at a small batch, for `benchmarks.thin_products`: plain AVX512-BF16
 * kernels whose second operand is already in vdpbf16ps's layout (pairs of rows interleaved, (k / 2, n, 2)), as
 * an optimiser's pass could write a weight's bf16 copy, so no call reorders a weight as oneDNN's do.
 * Built with cvae.native's flags on a CPU with avx512_bf16; the benchmark checks the numbers before timing.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16_pairs.h"

/* acc[r][q] += ar[row r, pairs k0/2 .. k1/2] . bp[same pairs, 16 q ..]: R rows by Q vectors of 16 columns. */
#define TILE(R, Q)                                                                                            \
  for (int64_t kk = k0 / 2; kk < k1 / 2; kk++) {                                                            \
    const uint16_t *bk = bp + 2 * kk * n + 2 * col;                                                          \
    __m512bh b[Q];                                                                                            \
    for (int q = 0; q < Q; q++) b[q] = (__m512bh)_mm512_loadu_si512(bk + 32 * q);                           \
    for (int r = 0; r < R; r++) {                                                                             \
      int32_t pair;                                                                                           \
      memcpy(&pair, ar + r * k + 2 * kk, sizeof pair);                                                        \
      __m512bh av = (__m512bh)_mm512_set1_epi32(pair);                                                        \
      for (int q = 0; q < Q; q++) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], av, b[q]);                        \
    }                                                                                                         \
  }

/* c (m, n) bf16 = a (m, k) bf16 . b, b given as bp (k / 2, n, 2); the inner size walked in chunks of `chunk`
 * (summed in an fp32 scratch (m, n)), a tile of 4 rows by 64 columns at a time. m % 4 == 0, n % 64 == 0,
 * k and chunk even. The forward product and the input's gradient: a long inner size, few rows. */
void cvae_thin_long(int64_t m, int64_t n, int64_t k, const uint16_t *a, const uint16_t *bp, float *scratch,
                    uint16_t *c, int64_t chunk, int threads) {
  enum { R = 4, Q = 4 };
  /* Written as an integer loop over column blocks: with a loop over `col` itself (a step of 64), gcc 12 keeps
   * no b vector in a register and loads each again for every row. */
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t block = 0; block < n / (16 * Q); block++) {
    int64_t col = block * 16 * Q;
    for (int64_t k0 = 0; k0 < k; k0 += chunk) {
      int64_t k1 = k0 + chunk < k ? k0 + chunk : k;
      for (int64_t row = 0; row < m; row += R) {
        __m512 acc[R][Q];
        if (k0 == 0)
          for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++) acc[r][q] = _mm512_setzero_ps();
        else
          for (int r = 0; r < R; r++)
            for (int q = 0; q < Q; q++) acc[r][q] = _mm512_loadu_ps(scratch + (row + r) * n + col + 16 * q);
        const uint16_t *ar = a + row * k;
        TILE(R, Q)
        for (int r = 0; r < R; r++)
          for (int q = 0; q < Q; q++) _mm512_storeu_ps(scratch + (row + r) * n + col + 16 * q, acc[r][q]);
      }
    }
    for (int64_t row = 0; row < m; row++)
      for (int q = 0; q < Q; q++) {
        int64_t o = row * n + col + 16 * q;
        _mm256_storeu_si256((__m256i *)(c + o), narrow(_mm512_loadu_ps(scratch + o)));
      }
  }
}

/* The same with a short inner size (the weight's gradient: the batch), all of it in registers, tiles of 8 rows
 * by 32 columns. m % 8 == 0, n % 32 == 0, k even. */
void cvae_thin_short(int64_t m, int64_t n, int64_t k, const uint16_t *a, const uint16_t *bp, uint16_t *c,
                     int threads) {
  enum { R = 8, Q = 2 };
  const int64_t k0 = 0, k1 = k;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
  for (int64_t row = 0; row < m; row += R)
    for (int64_t col = 0; col < n; col += 16 * Q) {
      __m512 acc[R][Q];
      const uint16_t *ar = a + row * k;
      for (int r = 0; r < R; r++)
        for (int q = 0; q < Q; q++) acc[r][q] = _mm512_setzero_ps();
      TILE(R, Q)
      for (int r = 0; r < R; r++)
        for (int q = 0; q < Q; q++)
          _mm256_storeu_si256((__m256i *)(c + (row + r) * n + col + 16 * q), narrow(acc[r][q]));
    }
}
