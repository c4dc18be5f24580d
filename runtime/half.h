/* half.h -- 16-bit floats (bf16, f16) as the runtime stores them, and
 * their conversions to and from f32.
 *
 * The CPU runtime computes in f32 only.  A bf16 or f16 value is stored in
 * 2 bytes per element (its IR dtype's size) and widened to f32 where it is
 * computed with; a result is rounded back:
 *
 *  - widening (16 -> 32 bits) is exact: bf16 is the top half of an f32,
 *    and every f16, subnormals included, is an f32 (normal or zero);
 *  - narrowing (32 -> 16 bits) rounds to nearest, ties to even, on the bit
 *    patterns (integer arithmetic only: the result does not depend on the
 *    FPU's rounding mode, flush-to-zero or compiler flags).  NaN stays a
 *    (quiet) NaN with its sign; infinities stay; a finite f32 beyond the
 *    16-bit range rounds to an infinity exactly as IEEE 754 says (f16:
 *    |x| >= 65520; bf16: beyond 0x1.fep127 plus half an ulp); values below
 *    the smallest f16 normal become f16 subnormals, rounded to nearest
 *    even multiple of 2^-24.
 *
 * The same rules are the evaluator's (ir/eval.c round_to) and the fused
 * kernels' (codegen/cpu_emit.c), so an op gives the same bits run op by op
 * or in a group.  Everything here is static inline: the executor's
 * conversion loops, the communicator's reduction, init and checkpoints
 * share it without a library call.
 */
#ifndef PTRT_HALF_H
#define PTRT_HALF_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "ir/ir.h"

static inline uint32_t ptrt_f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float ptrt_f32_of_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* bf16 and f16 are the dtypes stored in 2 bytes and computed in f32. */
static inline bool ptrt_is_half(ptc_dtype t) {
  return t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16;
}

static inline float ptrt_bf16_to_f32(uint16_t h) { return ptrt_f32_of_bits((uint32_t)h << 16); }

static inline uint16_t ptrt_f32_to_bf16(float f) {
  uint32_t u = ptrt_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float ptrt_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return ptrt_f32_of_bits(sign | 0x7f800000u | (m << 13)); /* inf, NaN */
  if (e == 0) {
    if (m == 0) return ptrt_f32_of_bits(sign);
    /* subnormal m * 2^-24: normalise into an f32 */
    int32_t ex = 113; /* the biased f32 exponent of 2^-14 */
    while (!(m & 0x400u)) {
      m <<= 1;
      ex--;
    }
    return ptrt_f32_of_bits(sign | ((uint32_t)ex << 23) | ((m & 0x3ffu) << 13));
  }
  return ptrt_f32_of_bits(sign | ((e + 112u) << 23) | (m << 13));
}

static inline uint16_t ptrt_f32_to_f16(float f) {
  uint32_t x = ptrt_f32_bits(f);
  uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x1ffu)); /* NaN */
  if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520: inf */
  if (ax < 0x38800000u) { /* below 2^-14: an f16 subnormal (or zero) */
    uint32_t e = ax >> 23;
    if (e < 102) return sign; /* below 2^-25: rounds to zero */
    uint32_t m = (ax & 0x7fffffu) | 0x800000u, shift = 126 - e; /* 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ax - 0x38000000u; /* rebias the exponent: 127 - 15 */
  r += 0xfffu + ((r >> 13) & 1u);
  return (uint16_t)(sign | (r >> 13));
}

/* Element i of a 16-bit buffer of dtype t, as f32; and the rounding of v
 * into it. */
static inline float ptrt_half_load(ptc_dtype t, const uint16_t *p, int64_t i) {
  return t == PTC_DTYPE_BF16 ? ptrt_bf16_to_f32(p[i]) : ptrt_f16_to_f32(p[i]);
}
static inline uint16_t ptrt_half_round(ptc_dtype t, float v) {
  return t == PTC_DTYPE_BF16 ? ptrt_f32_to_bf16(v) : ptrt_f32_to_f16(v);
}

/* v rounded to what dtype t holds (f32: v itself), as f32. */
static inline float ptrt_round_to(ptc_dtype t, float v) {
  if (!ptrt_is_half(t)) return v;
  uint16_t h = ptrt_half_round(t, v);
  return ptrt_half_load(t, &h, 0);
}

/* n elements between a 16-bit buffer of dtype t and f32. */
static inline void ptrt_half_to_f32(ptc_dtype t, const uint16_t *src, float *dst, int64_t n) {
  if (t == PTC_DTYPE_BF16)
    for (int64_t i = 0; i < n; i++) dst[i] = ptrt_bf16_to_f32(src[i]);
  else
    for (int64_t i = 0; i < n; i++) dst[i] = ptrt_f16_to_f32(src[i]);
}
static inline void ptrt_f32_to_half(ptc_dtype t, const float *src, uint16_t *dst, int64_t n) {
  if (t == PTC_DTYPE_BF16)
    for (int64_t i = 0; i < n; i++) dst[i] = ptrt_f32_to_bf16(src[i]);
  else
    for (int64_t i = 0; i < n; i++) dst[i] = ptrt_f32_to_f16(src[i]);
}

#endif /* PTRT_HALF_H */
