/* What the benchmarks' AVX512-BF16 kernels share: the operand layout vdpbf16ps reads, and bf16 rounding. */
#include <immintrin.h>
#include <stdint.h>

/* (k, n) bf16, row-major with row stride ld, into (k / 2, n, 2): each pair of rows interleaved. */
void cvae_pack_pairs(int64_t k, int64_t n, const uint16_t *b, int64_t ld, uint16_t *bp, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t kk = 0; kk < k / 2; kk++) {
    const uint16_t *r0 = b + 2 * kk * ld, *r1 = r0 + ld;
    uint16_t *o = bp + 2 * kk * n;
    for (int64_t j = 0; j < n; j++) {
      o[2 * j] = r0[j];
      o[2 * j + 1] = r1[j];
    }
  }
}

/* Round to nearest even, as c10::BFloat16, oneDNN and cvae/csrc/adam_bf16.c do; a NaN stays a quiet NaN. */
static inline __m256i narrow(__m512 f) {
  __m512i u = _mm512_castps_si512(f);
  __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd)), 16);
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}
