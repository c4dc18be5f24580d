/* util.c -- the runtime's small shared pieces: errors that have no IR
 * location, a monotonic clock, aligned buffers, and how many threads a rank
 * should use when it shares a node with other ranks. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/ptrt.h"

/* Diagnostics print "FILE: error: ..." for a location with a file and no
 * line; naming the tool as the file gives "ptrun: error: ...". */
static void vreport(ptc_ctx *ctx, const char *file, const char *fmt, va_list ap) {
  ptc_loc loc = {ptc_intern_cstr(ctx, file), 0, 0};
  ptc_vdiag(ctx, PTC_SEV_ERROR, loc, fmt, ap);
}

void ptrt_error(ptc_ctx *ctx, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(ctx, "ptrun", fmt, ap);
  va_end(ap);
}

void ptrt_file_error(ptc_ctx *ctx, const char *path, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vreport(ctx, path, fmt, ap);
  va_end(ap);
}

double ptrt_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void *ptrt_alloc(int64_t n) {
  if (n < 0) return NULL;
  /* aligned_alloc wants a multiple of the alignment */
  size_t sz = ((size_t)n + 63) & ~(size_t)63;
  return aligned_alloc(64, sz ? sz : 64);
}

void ptrt_free(void *p) { free(p); }

static int env_int(const char *name) {
  const char *s = getenv(name);
  if (!s || !*s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  /* SLURM writes "2(x3)" for heterogeneous nodes: the leading number is
   * this node's count */
  if (end == s || v <= 0 || v > 1 << 20) return 0;
  return (int)v;
}

int ptrt_default_threads(void) {
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (cores < 1) cores = 1;
  int ranks = env_int("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (!ranks) ranks = env_int("SLURM_NTASKS_PER_NODE");
  if (!ranks) ranks = 1;
  long t = cores / ranks;
  return t < 1 ? 1 : (int)t;
}
