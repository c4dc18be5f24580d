/* init.c -- variables (params and optimizer state) in one allocation, and
 * their initialisation by a counter-based generator.
 *
 * Element i of the param named N gets the same value whatever the order of
 * the params, the thread count or the sharding, because it is a pure
 * function of (seed, N, i), i the element's flat index in the whole
 * tensor (a device holding a piece computes the global index of each of
 * its elements from the param's sharding and its coordinates):
 *
 *   h      = FNV-1a 64 of N's bytes
 *   x      = Philox4x32-10(counter = (j mod 2^32, j div 2^32, h mod 2^32,
 *                                     h div 2^32), key = (seed mod 2^32,
 *                                     seed div 2^32)),  j = i div 2
 *   u1, u2 = (x0 | x1 << 32) >> 11 and (x2 | x3 << 32) >> 11, times 2^-53
 *   z      = sqrt(-2 ln(1 - u1)) * (cos 2 pi u2 if i even, else sin 2 pi u2)
 *
 * (Box-Muller on one Philox block per pair of elements), then scaled by
 * the init's standard deviation.  docs/runtime.md states the same.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ptrt.h"

/* ---- Philox4x32-10 ------------------------------------------------------ */

static inline void philox_round(uint32_t c[4], const uint32_t k[2]) {
  uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
  uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
  uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
  uint32_t r0 = hi1 ^ c[1] ^ k[0], r2 = hi0 ^ c[3] ^ k[1];
  c[0] = r0;
  c[1] = lo1;
  c[2] = r2;
  c[3] = lo0;
}

void ptrt_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]}, k[2] = {key[0], key[1]};
  for (int r = 0; r < 10; r++) {
    if (r) {
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    philox_round(c, k);
  }
  memcpy(out, c, sizeof c);
}

static uint64_t fnv1a64(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

/* The standard normal pair of block j (Box-Muller). */
static void normal_pair(uint64_t seed, uint64_t h, uint64_t j, double *z0, double *z1) {
  uint32_t ctr[4] = {(uint32_t)j, (uint32_t)(j >> 32), (uint32_t)h, (uint32_t)(h >> 32)};
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)}, x[4];
  ptrt_philox4x32(ctr, key, x);
  double u1 = (double)((((uint64_t)x[1] << 32) | x[0]) >> 11) * 0x1.0p-53;
  double u2 = (double)((((uint64_t)x[3] << 32) | x[2]) >> 11) * 0x1.0p-53;
  double r = sqrt(-2.0 * log(1.0 - u1)), a = 6.283185307179586 * u2;
  *z0 = r * cos(a);
  *z1 = r * sin(a);
}

double ptrt_init_normal(uint64_t seed, const char *name, int64_t index) {
  double z0, z1;
  normal_pair(seed, fnv1a64(name), (uint64_t)index >> 1, &z0, &z1);
  return (index & 1) ? z1 : z0;
}

/* ---- variables ------------------------------------------------------------ */

ptrt_vars *ptrt_vars_create_subset(ptc_ctx *ctx, const ptc_module *m, const ptrt_comm *comm,
                                   const bool *hold) {
  int64_t off = 0;
  int32_t nheld = 0;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (hold && !hold[i]) continue;
    if (p->type.dtype != PTC_DTYPE_F32) {
      ptc_error(ctx, p->loc, "param @%s is %s; the CPU runtime holds variables in "
                "f32 only (compile without a lower-precision master copy)", p->name,
                ptc_dtype_name(p->type.dtype));
      return NULL;
    }
    off += (ptc_type_bytes(&p->type) + 63) & ~(int64_t)63;
    nheld++;
  }
  ptrt_vars *v = ptc_xcalloc(1, sizeof *v);
  v->mod = m;
  if (comm) {
    v->mesh = comm->mesh;
    memcpy(v->coord, comm->coord, sizeof v->coord);
  }
  v->bytes = off;
  v->nheld = nheld;
  v->offset = ptc_xcalloc((size_t)m->nparams + 1, sizeof *v->offset);
  v->base = ptrt_alloc(off);
  if (!v->base) {
    ptrt_error(ctx, "cannot allocate %lld bytes for the model's %d variables",
               (long long)off, nheld);
    ptrt_vars_destroy(v);
    return NULL;
  }
  off = 0;
  for (int32_t i = 0; i < m->nparams; i++) {
    if (hold && !hold[i]) {
      v->offset[i] = -1;
      continue;
    }
    v->offset[i] = off;
    off += (ptc_type_bytes(&m->params[i].type) + 63) & ~(int64_t)63;
  }
  return v;
}

ptrt_vars *ptrt_vars_create(ptc_ctx *ctx, const ptc_module *m, const ptrt_comm *comm) {
  return ptrt_vars_create_subset(ctx, m, comm, NULL);
}

void ptrt_vars_destroy(ptrt_vars *v) {
  if (!v) return;
  ptrt_free(v->base);
  free(v->offset);
  free(v);
}

/* rows of `len` elements per chunk: about 8k elements */
static int64_t grain_rows(int64_t len) {
  int64_t g = 8192 / (len > 0 ? len : 1);
  return g < 1 ? 1 : g;
}

typedef struct init_job {
  float *x;
  int64_t n;
  uint64_t seed, hash;
  double std;
} init_job;

/* Elements [2*begin, 2*end) of one param: one Philox block per pair. */
static void init_range(void *arg, int64_t begin, int64_t end) {
  const init_job *j = arg;
  for (int64_t b = begin; b < end; b++) {
    double z0, z1;
    normal_pair(j->seed, j->hash, (uint64_t)b, &z0, &z1);
    j->x[2 * b] = (float)(j->std * z0);
    if (2 * b + 1 < j->n) j->x[2 * b + 1] = (float)(j->std * z1);
  }
}

/* Elements [g0, g0 + n) of the whole tensor into out[0, n): the same
 * pairs and the same arithmetic as init_range, from any start. */
static void normal_run(uint64_t seed, uint64_t hash, double std, int64_t g0, int64_t n,
                       float *out) {
  for (int64_t i = 0; i < n;) {
    int64_t g = g0 + i;
    double z0, z1;
    normal_pair(seed, hash, (uint64_t)g >> 1, &z0, &z1);
    if (!(g & 1)) out[i++] = (float)(std * z0);
    if (i < n) out[i++] = (float)(std * z1);
  }
}

/* A piece of a sharded param: local rows (the last dimension) [begin, end),
 * each a run of consecutive global indices. */
typedef struct piece_job {
  float *x;
  const ptc_type *local;
  int64_t gst[PTC_MAX_RANK], origin[PTC_MAX_RANK];
  uint64_t seed, hash;
  double std;
} piece_job;

static void init_piece_rows(void *arg, int64_t begin, int64_t end) {
  const piece_job *j = arg;
  int32_t last = j->local->rank - 1;
  int64_t len = j->local->dims[last];
  for (int64_t r = begin; r < end; r++) {
    int64_t rem = r, g0 = j->origin[last];
    for (int32_t d = last - 1; d >= 0; d--) {
      g0 += (j->origin[d] + rem % j->local->dims[d]) * j->gst[d];
      rem /= j->local->dims[d];
    }
    normal_run(j->seed, j->hash, j->std, g0, len, j->x + r * len);
  }
}

/* normal(std) over the param's elements, whole or this device's piece */
static void init_normal(const ptrt_vars *v, const ptc_param *p, float *x, uint64_t seed,
                        double std, ptrt_pool *pool) {
  int64_t n = ptc_type_numel(&p->type);
  uint64_t hash = fnv1a64(p->name);
  int64_t gdims[PTC_MAX_RANK], origin[PTC_MAX_RANK];
  ptrt_block_origin(&v->mesh, v->coord, &p->type, &p->shard, gdims, origin);
  bool piece = false;
  for (int32_t d = 0; d < p->type.rank; d++) piece |= gdims[d] != p->type.dims[d];
  if (!piece || n == 0) {
    init_job j = {x, n, seed, hash, std};
    ptrt_parallel_for(pool, (n + 1) / 2, 4096, init_range, &j);
    return;
  }
  piece_job j = {.x = x, .local = &p->type, .seed = seed, .hash = hash, .std = std};
  int64_t st = 1;
  for (int32_t d = p->type.rank - 1; d >= 0; d--) {
    j.gst[d] = st;
    j.origin[d] = origin[d];
    st *= gdims[d];
  }
  int64_t len = p->type.dims[p->type.rank - 1];
  ptrt_parallel_for(pool, n / len, grain_rows(len), init_piece_rows, &j);
}

void ptrt_vars_init(ptrt_vars *v, uint64_t seed, ptrt_pool *pool) {
  const ptc_module *m = v->mod;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!ptrt_vars_holds(v, i)) continue;
    float *x = ptrt_vars_data(v, i);
    int64_t n = ptc_type_numel(&p->type);
    switch (p->init.kind) {
    case PTC_INIT_NONE:
    case PTC_INIT_ZEROS: memset(x, 0, (size_t)n * sizeof *x); break;
    case PTC_INIT_ONES:
      for (int64_t k = 0; k < n; k++) x[k] = 1.0f;
      break;
    case PTC_INIT_NORMAL:
    case PTC_INIT_SCALED: {
      double std = p->init.std;
      if (p->init.kind == PTC_INIT_SCALED)
        std /= sqrt(2.0 * (double)(p->init.depth > 0 ? p->init.depth : 1));
      init_normal(v, p, x, seed, std, pool);
      break;
    }
    }
  }
}
