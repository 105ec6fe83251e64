/* Adam's update of an fp32 weight from its bf16 gradient, and the weight's bf16 copy for the next step, in one
 * pass: what torch's three passes (widen the gradient, `_fused_adam_`, the copy) compute, value for value.
 *
 * Built by cvae/native.py with -ffp-contract=off, so every rounding is the one written here. The two fmaf
 * calls are where torch's kernel rounds once: its lerp is an explicit fused multiply-add, and its build
 * contracts exp_avg_sq * beta2 + (c2 * g) * g into one. native.py uses this kernel only after it reproduced
 * torch's `_fused_adam_` bit for bit in the running process, and only on lengths that are a multiple of 16,
 * the only lengths that torch's own kernel walks entirely with its vector loop.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float widen(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* Round to nearest even, as c10::BFloat16 does; a NaN stays a (quiet) NaN. */
static inline uint16_t narrow(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint16_t rounded = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return f != f ? (uint16_t)0x7fc0 : rounded;
}

void cvae_adam_bf16(int64_t n, float *restrict param, float *restrict exp_avg, float *restrict exp_avg_sq,
                    const uint16_t *restrict grad, uint16_t *restrict half, float lerp_weight, float beta2,
                    float sq_weight, float bias_correction2_sqrt, float eps, float neg_step_size, int threads) {
#pragma omp parallel for simd schedule(static) num_threads(threads)
  for (int64_t i = 0; i < n; i++) {
    float g = widen(grad[i]);
    float m = fmaf(lerp_weight, g - exp_avg[i], exp_avg[i]);
    float v = fmaf(sq_weight * g, g, exp_avg_sq[i] * beta2);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    float denom = sqrtf(v) / bias_correction2_sqrt + eps;
    float p = param[i] + (neg_step_size * m) / denom;
    param[i] = p;
    half[i] = narrow(p);
  }
}
