/* train.c -- what a training loop needs around the program: the learning
 * rate schedule, the BLAS's thread count, and a measurement of the
 * machine's matrix-product speed to express MFU against. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>

#include "runtime/ptrt.h"

double ptrt_schedule_lr(const ptrt_schedule *s, int64_t step) {
  if (s->warmup > 0 && step <= s->warmup) return s->lr * (double)step / (double)s->warmup;
  if (step >= s->decay_steps) return s->decay_steps > s->warmup ? s->min_lr : s->lr;
  double span = (double)(s->decay_steps - s->warmup);
  double progress = (double)(step - s->warmup) / span;
  return s->min_lr + 0.5 * (s->lr - s->min_lr) * (1.0 + cos(3.141592653589793 * progress));
}

void ptrt_blas_set_threads(int n) { openblas_set_num_threads(n < 1 ? 1 : n); }

double ptrt_measure_sgemm_gflops(double seconds) {
  enum { N = 1024 };
  float *a = ptrt_alloc((int64_t)N * N * 4), *b = ptrt_alloc((int64_t)N * N * 4),
        *c = ptrt_alloc((int64_t)N * N * 4);
  PTC_ASSERT(a && b && c);
  for (int64_t i = 0; i < (int64_t)N * N; i++) {
    a[i] = (float)((i * 7) % 13) * 0.01f;
    b[i] = (float)((i * 5) % 11) * 0.01f;
  }
  /* one warm-up (thread start, page faults), then the best of the rest */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
  double best = 0, start = ptrt_now();
  int runs = 0;
  while (runs < 3 || (ptrt_now() - start < seconds && runs < 100)) {
    double t0 = ptrt_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, N, 1.0f, a, N, b, N, 0.0f, c,
                N);
    double dt = ptrt_now() - t0;
    double g = 2.0 * N * N * (double)N / dt / 1e9;
    if (g > best) best = g;
    runs++;
  }
  ptrt_free(a);
  ptrt_free(b);
  ptrt_free(c);
  return best;
}
