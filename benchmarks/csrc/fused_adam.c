/* A linear layer's weight gradient with Adam's update fused into it, for `benchmarks.fused_adam`: the product
 * grad_out.t() @ input (an inner size of the batch) a tile at a time in AVX512-BF16 registers, each tile's
 * gradient rounded to bf16 as oneDNN's bf16 product rounds it, then Adam on that tile with
 * cvae/csrc/adam_bf16.c's arithmetic, so the gradient never goes to memory. Built with cvae.native's flags on
 * a CPU with avx512_bf16; the benchmark checks its numbers against the loop's two passes before timing it.
 *
 * gt: the output's gradient as (out, batch) bf16, contiguous; xp: the input (batch, in) as pairs of rows
 * interleaved (batch / 2, in, 2), the operand layout of vdpbf16ps. in % 64 == 0 and batch % 2 == 0.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "bf16_pairs.h"

#define COLS 4  /* a tile is ROWS x 64 columns: COLS vectors of 16 a row */

typedef struct {
  float lerp_weight, beta2, sq_weight, bias_correction2_sqrt, eps, neg_step_size;
} Adam;

static inline __m512 widen(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Adam on 16 elements from their fp32 gradient sum, rounded to bf16 first; the same roundings as adam_bf16.c. */
static inline void adam16(const Adam *a, __m512 sum, float *p, float *m, float *v, uint16_t *h) {
  __m512 g = widen(narrow(sum));
  __m512 mm = _mm512_loadu_ps(m), vv = _mm512_loadu_ps(v), pp = _mm512_loadu_ps(p);
  mm = _mm512_fmadd_ps(_mm512_set1_ps(a->lerp_weight), _mm512_sub_ps(g, mm), mm);
  vv = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(a->sq_weight), g), g, _mm512_mul_ps(vv, _mm512_set1_ps(a->beta2)));
  _mm512_storeu_ps(m, mm);
  _mm512_storeu_ps(v, vv);
  __m512 denom = _mm512_add_ps(_mm512_div_ps(_mm512_sqrt_ps(vv), _mm512_set1_ps(a->bias_correction2_sqrt)),
                               _mm512_set1_ps(a->eps));
  pp = _mm512_add_ps(pp, _mm512_div_ps(_mm512_mul_ps(_mm512_set1_ps(a->neg_step_size), mm), denom));
  _mm512_storeu_ps(p, pp);
  _mm256_storeu_si256((__m256i *)h, narrow(pp));
}

/* One tile's product: acc[r][c] = sum over the batch of gt[row r] * x[:, col + 16 c ...]. While it runs, the
 * lines of the tile `ahead` tiles on (if any) are prefetched, spread over its steps. */
#define ROWS 6
static inline void product(int64_t rows, int64_t batch, int64_t in, const uint16_t *gt, const uint16_t *xp,
                           int64_t col, __m512 acc[ROWS][COLS], const float *const next[3]) {
  for (int r = 0; r < ROWS; r++)
    for (int c = 0; c < COLS; c++) acc[r][c] = _mm512_setzero_ps();
  for (int64_t k = 0; k < batch / 2; k++) {
    if (next[0])
      for (int q = 3 * (int)k; q < 3 * (int)k + 3 && q < 3 * ROWS * COLS; q++) {
        int which = q / (ROWS * COLS), r = q % (ROWS * COLS) / COLS, c = q % COLS;
        if (r < rows) _mm_prefetch((const char *)(next[which] + r * in + 16 * c), _MM_HINT_T0);
      }
    const uint16_t *xk = xp + 2 * k * in + 2 * col;
    __m512bh b[COLS];
    for (int c = 0; c < COLS; c++) b[c] = (__m512bh)_mm512_loadu_si512(xk + 32 * c);
    for (int r = 0; r < ROWS; r++) {
      if (r >= rows) break;
      int32_t pair;
      memcpy(&pair, gt + r * batch + 2 * k, sizeof pair);
      __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int c = 0; c < COLS; c++) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], a, b[c]);
    }
  }
}

/* Tile after tile: a tile's product, then Adam on it; `ahead` > 0 prefetches that tile's weights and moments. */
void cvae_fused_adam(int64_t out, int64_t in, int64_t batch, const uint16_t *gt, const uint16_t *xp, float *p,
                     float *m, float *v, uint16_t *h, Adam adam, int threads, int ahead) {
  int64_t bands = (out + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t band = 0; band < bands; band++) {
    int64_t row = band * ROWS, rows = out - row < ROWS ? out - row : ROWS, at = row * in;
    for (int64_t col = 0; col < in; col += 16 * COLS) {
      int64_t later = col + ahead * 16 * COLS;
      const float *next[3] = {0, 0, 0};
      if (ahead > 0 && later < in) {
        next[0] = p + at + later;
        next[1] = m + at + later;
        next[2] = v + at + later;
      }
      __m512 acc[ROWS][COLS];
      product(rows, batch, in, gt + row * batch, xp, col, acc, next);
      for (int r = 0; r < rows; r++)
        for (int c = 0; c < COLS; c++) {
          int64_t o = at + r * in + col + 16 * c;
          adam16(&adam, acc[r][c], p + o, m + o, v + o, h + o);
        }
    }
  }
}

/* Software-pipelined, tiles of 4 rows (out % 4 == 0): each step of a tile's product also does Adam on one
 * vector of the tile before it, so the memory traffic of the one sits among the other's multiply-adds. */
#define PROWS 4
void cvae_fused_adam_pipelined(int64_t out, int64_t in, int64_t batch, const uint16_t *gt, const uint16_t *xp,
                               float *p, float *m, float *v, uint16_t *h, Adam adam, int threads) {
  enum { VECTORS = PROWS * COLS };
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t band = 0; band < out / PROWS; band++) {
    int64_t row = band * PROWS, at = row * in, previous = -1;
    const uint16_t *g = gt + row * batch;
    __m512 done[VECTORS];
    for (int64_t col = 0; col <= in; col += 16 * COLS) {
      __m512 acc[VECTORS];
      for (int j = 0; j < VECTORS; j++) acc[j] = _mm512_setzero_ps();
      for (int64_t k = 0; k < batch / 2 || (previous >= 0 && k < VECTORS); k++) {
        if (previous >= 0 && k < VECTORS) {
          int64_t o = at + (k / COLS) * in + previous + 16 * (k % COLS);
          adam16(&adam, done[k], p + o, m + o, v + o, h + o);
        }
        if (col < in && k < batch / 2) {
          const uint16_t *xk = xp + 2 * k * in + 2 * col;
          __m512bh b[COLS];
          for (int c = 0; c < COLS; c++) b[c] = (__m512bh)_mm512_loadu_si512(xk + 32 * c);
          for (int r = 0; r < PROWS; r++) {
            int32_t pair;
            memcpy(&pair, g + r * batch + 2 * k, sizeof pair);
            __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
            for (int c = 0; c < COLS; c++) acc[r * COLS + c] = _mm512_dpbf16_ps(acc[r * COLS + c], a, b[c]);
          }
        }
      }
      if (col >= in) break;
      for (int j = 0; j < VECTORS; j++) done[j] = acc[j];
      previous = col;
    }
  }
}
