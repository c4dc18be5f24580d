/* sgemm.c -- the machine's limit for bench/run: OpenBLAS sgemm on a large
 * square product, best of several runs, with the thread count given.
 *   sgemm N THREADS   prints "sgemm_gflops G"
 * Built with -DPTC_BENCH_BLIS against BLIS's CBLAS instead, it measures
 * BLIS the same way (how the runtime's BLAS was chosen: docs/runtime.md). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifdef PTC_BENCH_BLIS
void bli_thread_set_num_threads(long n);
#define set_threads(n) bli_thread_set_num_threads(n)
#else
void openblas_set_num_threads(int n);
#define set_threads(n) openblas_set_num_threads(n)
#endif

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2048;
  int threads = argc > 2 ? atoi(argv[2]) : 1;
  if (n < 16 || n > 16384 || threads < 1) {
    fprintf(stderr, "usage: sgemm N THREADS\n");
    return 2;
  }
  set_threads(threads);
  size_t nn = (size_t)n * (size_t)n;
  float *a = malloc(nn * sizeof *a), *b = malloc(nn * sizeof *b), *c = malloc(nn * sizeof *c);
  if (!a || !b || !c) return 1;
  for (size_t i = 0; i < nn; i++) {
    a[i] = (float)(i % 7) * 0.1f;
    b[i] = (float)(i % 5) * 0.1f;
  }
  double best = 0;
  for (int r = 0; r < 6; r++) {
    double t0 = now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double g = 2.0 * n * (double)n * n / (now() - t0) / 1e9;
    if (g > best) best = g;
  }
  printf("sgemm_gflops %.1f\n", best);
  free(a);
  free(b);
  free(c);
  return 0;
}
