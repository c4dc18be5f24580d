/* test_half.h -- what the tests of 16-bit values share: a module's text
 * written once for any dtype (every "$T" stands for it), deterministic
 * inputs rounded to a dtype, and stores into f32 or 16-bit buffers. */
#ifndef PTC_TEST_HALF_H
#define PTC_TEST_HALF_H

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "runtime/half.h"

/* text with every "$T" replaced by dtype t's name (heap) */
static inline char *test_subst_dtype(const char *text, ptc_dtype t) {
  const char *name = ptc_dtype_name(t);
  size_t n = strlen(text), cap = n * 2 + 1, k = 0;
  char *s = malloc(cap);
  for (size_t i = 0; i < n; i++) {
    if (text[i] == '$' && text[i + 1] == 'T') {
      k += (size_t)snprintf(s + k, cap - k, "%s", name);
      i++;
    } else {
      s[k++] = text[i];
    }
  }
  s[k] = 0;
  return s;
}

/* A value for element k of variable or argument i: in [-2, 2), rounded to
 * dtype `as` (its type in the 16-bit module). */
static inline float test_half_value(int i, int64_t k, ptc_dtype as) {
  uint32_t h = (uint32_t)(i * 7919 + 1) * 2654435761u ^ (uint32_t)k * 2246822519u;
  h ^= h >> 15;
  h *= 2654435761u;
  h ^= h >> 13;
  return ptrt_round_to(as, ((float)(h % 100000) / 25000.0f) - 2.0f);
}

/* v into element k of a buffer of dtype t (f32, or 16-bit rounded) */
static inline void test_half_store(void *dst, ptc_dtype t, int64_t k, float v) {
  if (ptrt_is_half(t)) ((uint16_t *)dst)[k] = ptrt_half_round(t, v);
  else ((float *)dst)[k] = v;
}

/* How many of result r's n elements (dtype dt: f32, or 16-bit) differ from
 * want (f32) rounded to dt, bit for bit (a NaN matches a NaN); the first
 * three are printed, named by `what` and the module's dtype t. */
static inline int test_half_mismatches(const char *what, ptc_dtype t, int r, ptc_dtype dt,
                                       const void *got_buf, int64_t n, const float *want) {
  int bad = 0;
  for (int64_t k = 0; k < n; k++) {
    uint32_t got, exp;
    bool nan_ok = false;
    if (ptrt_is_half(dt)) {
      got = ((const uint16_t *)got_buf)[k];
      exp = ptrt_half_round(dt, want[k]);
      nan_ok = isnan(want[k]) && isnan(ptrt_half_load(dt, got_buf, k));
    } else {
      got = ptrt_f32_bits(((const float *)got_buf)[k]);
      exp = ptrt_f32_bits(want[k]);
    }
    if (got != exp && !nan_ok && bad++ < 3)
      fprintf(stderr, "%s (%s) result %d element %lld: %#x, want %#x (f32 %a)\n", what,
              ptc_dtype_name(t), r, (long long)k, got, exp, (double)want[k]);
  }
  return bad;
}

#endif
