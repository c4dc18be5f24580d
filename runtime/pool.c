/* pool.c -- a small thread pool for the row-parallel kernels.
 *
 * One job at a time: the caller publishes (fn, arg, n, grain), wakes the
 * workers, and takes chunks itself from the same atomic counter; it returns
 * when every worker has finished.  Chunk boundaries depend only on n and
 * grain, never on the thread count, so kernels that keep a partial result
 * per chunk are deterministic across --threads (see ptrt.h).
 *
 * Matrix products do not come through here: OpenBLAS has its own threads,
 * set to the same count, and is only ever called from the caller's thread.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ptrt.h"

struct ptrt_pool {
  int nthreads; /* including the caller */
  pthread_t *threads;
  int nstarted;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  uint64_t generation; /* bumped for every job */
  bool quit;
  int busy; /* workers still on the current job */
  /* the current job */
  ptrt_range_fn fn;
  void *arg;
  int64_t n, grain, nchunks;
  atomic_int_fast64_t next;
};

static void run_chunks(ptrt_pool *p) {
  for (;;) {
    int64_t c = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
    if (c >= p->nchunks) return;
    int64_t b = c * p->grain, e = b + p->grain;
    p->fn(p->arg, b, e < p->n ? e : p->n);
  }
}

static void *worker(void *arg) {
  ptrt_pool *p = arg;
  uint64_t seen = 0;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
    if (p->quit) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    run_chunks(p);
    pthread_mutex_lock(&p->mu);
    if (--p->busy == 0) pthread_cond_signal(&p->done);
    pthread_mutex_unlock(&p->mu);
  }
}

ptrt_pool *ptrt_pool_create(ptc_ctx *ctx, int nthreads) {
  if (nthreads < 1) nthreads = 1;
  ptrt_pool *p = ptc_xcalloc(1, sizeof *p);
  p->nthreads = nthreads;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  atomic_init(&p->next, 0);
  p->threads = ptc_xcalloc((size_t)nthreads, sizeof *p->threads);
  for (int i = 0; i < nthreads - 1; i++) {
    int rc = pthread_create(&p->threads[i], NULL, worker, p);
    if (rc != 0) {
      ptrt_error(ctx, "cannot start worker thread %d of %d: %s; try a smaller "
                 "--threads", i + 1, nthreads - 1, strerror(rc));
      ptrt_pool_destroy(p);
      return NULL;
    }
    p->nstarted++;
  }
  return p;
}

void ptrt_pool_destroy(ptrt_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->quit = true;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nstarted; i++) pthread_join(p->threads[i], NULL);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  pthread_mutex_destroy(&p->mu);
  free(p->threads);
  free(p);
}

int ptrt_pool_threads(const ptrt_pool *p) { return p ? p->nthreads : 1; }

void ptrt_parallel_for(ptrt_pool *p, int64_t n, int64_t grain, ptrt_range_fn fn,
                       void *arg) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int64_t nchunks = (n + grain - 1) / grain;
  if (!p || p->nstarted == 0 || nchunks == 1) {
    for (int64_t b = 0; b < n; b += grain) fn(arg, b, b + grain < n ? b + grain : n);
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->arg = arg;
  p->n = n;
  p->grain = grain;
  p->nchunks = nchunks;
  atomic_store(&p->next, 0);
  p->busy = p->nstarted;
  p->generation++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_chunks(p);
  pthread_mutex_lock(&p->mu);
  while (p->busy > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}
