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
 *
 * Variables are f32, bf16 or f16.  A 16-bit variable gets the same f32
 * values, rounded (runtime/half.h).  `init copy(@src)` makes a variable the
 * cast of another of the same shape (a 16-bit working copy of an f32
 * master weight): copies are filled after every other variable, element i
 * from element i of the source, wherever that lives -- from the source's
 * memory when this device holds the same piece of it or all of it, else
 * from the source's own init rule at the copy's global indices (the same
 * values, since they are a pure function of the index).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/half.h"
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
    if (p->type.dtype != PTC_DTYPE_F32 && !ptrt_is_half(p->type.dtype)) {
      ptc_error(ctx, p->loc, "%s @%s is %s; the CPU runtime holds variables in f32, bf16 "
                "or f16", p->trainable ? "param" : "state", p->name,
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

/* normal(std) over the elements of the variable named `name`, of local
 * type t and sharding sh: whole or this device's piece */
static void init_normal(const ptrt_vars *v, const char *name, const ptc_type *t,
                        const ptc_sharding *sh, float *x, uint64_t seed, double std,
                        ptrt_pool *pool) {
  int64_t n = ptc_type_numel(t);
  uint64_t hash = fnv1a64(name);
  int64_t gdims[PTC_MAX_RANK], origin[PTC_MAX_RANK];
  ptrt_block_origin(&v->mesh, v->coord, t, sh, gdims, origin);
  bool piece = false;
  for (int32_t d = 0; d < t->rank; d++) piece |= gdims[d] != t->dims[d];
  if (!piece || n == 0) {
    init_job j = {x, n, seed, hash, std};
    ptrt_parallel_for(pool, (n + 1) / 2, 4096, init_range, &j);
    return;
  }
  piece_job j = {.x = x, .local = t, .seed = seed, .hash = hash, .std = std};
  int64_t st = 1;
  for (int32_t d = t->rank - 1; d >= 0; d--) {
    j.gst[d] = st;
    j.origin[d] = origin[d];
    st *= gdims[d];
  }
  int64_t len = t->dims[t->rank - 1];
  ptrt_parallel_for(pool, n / len, grain_rows(len), init_piece_rows, &j);
}

/* The f32 values of init rule `in` of the variable `name` (not a copy)
 * for the elements of local type t, sharding sh, into x. */
static void fill_f32(const ptrt_vars *v, const char *name, const ptc_init *in,
                     const ptc_type *t, const ptc_sharding *sh, float *x, uint64_t seed,
                     ptrt_pool *pool) {
  int64_t n = ptc_type_numel(t);
  switch (in->kind) {
  case PTC_INIT_NONE:
  case PTC_INIT_ZEROS: memset(x, 0, (size_t)n * sizeof *x); break;
  case PTC_INIT_ONES:
    for (int64_t k = 0; k < n; k++) x[k] = 1.0f;
    break;
  case PTC_INIT_NORMAL:
  case PTC_INIT_SCALED: {
    double std = in->std;
    if (in->kind == PTC_INIT_SCALED) std /= sqrt(2.0 * (double)(in->depth > 0 ? in->depth : 1));
    init_normal(v, name, t, sh, x, seed, std, pool);
    break;
  }
  case PTC_INIT_COPY: PTC_UNREACHABLE();
  }
}

/* n elements of dtype from (f32, bf16 or f16) converted into dtype to. */
static void convert(ptc_dtype from, const void *src, ptc_dtype to, void *dst, int64_t n) {
  if (from == to) {
    memmove(dst, src, (size_t)(n * ptc_dtype_size(to)));
  } else if (from == PTC_DTYPE_F32) {
    ptrt_f32_to_half(to, src, dst, n);
  } else if (to == PTC_DTYPE_F32) {
    ptrt_half_to_f32(from, src, dst, n);
  } else { /* bf16 <-> f16 through f32: exact, then one rounding */
    const uint16_t *s = src;
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = ptrt_half_round(to, ptrt_half_load(from, s, i));
  }
}

static bool same_piece(const ptc_param *a, const ptc_param *b) {
  if (a->type.rank != b->type.rank || a->shard.present != b->shard.present) return false;
  for (int32_t d = 0; d < a->type.rank; d++)
    if (a->type.dims[d] != b->type.dims[d] ||
        (a->shard.present && a->shard.dim_axes[d] != b->shard.dim_axes[d]))
      return false;
  return true;
}

/* Whether local type t of a variable with sharding sh is the whole tensor
 * on this device. */
static bool whole_here(const ptrt_vars *v, const ptc_type *t, const ptc_sharding *sh) {
  int64_t gdims[PTC_MAX_RANK], origin[PTC_MAX_RANK];
  ptrt_block_origin(&v->mesh, v->coord, t, sh, gdims, origin);
  for (int32_t d = 0; d < t->rank; d++)
    if (gdims[d] != t->dims[d]) return false;
  return true;
}

/* Copy variable i from its source (module index src). */
static void fill_copy(ptrt_vars *v, int32_t i, int32_t src, uint64_t seed, ptrt_pool *pool) {
  const ptc_param *p = &v->mod->params[i], *s = &v->mod->params[src];
  void *x = ptrt_vars_data(v, i);
  int64_t n = ptc_type_numel(&p->type);
  if (ptrt_vars_holds(v, src) && same_piece(p, s)) { /* the same elements here */
    convert(s->type.dtype, ptrt_vars_data(v, src), p->type.dtype, x, n);
    return;
  }
  if (ptrt_vars_holds(v, src) && whole_here(v, &s->type, &s->shard)) {
    /* all of the source here: the copy's block of it */
    int64_t sn = ptc_type_numel(&s->type);
    void *whole = ptc_xmalloc((size_t)(sn * ptc_dtype_size(p->type.dtype)) + 1);
    convert(s->type.dtype, ptrt_vars_data(v, src), p->type.dtype, whole, sn);
    ptc_type g = s->type;
    g.dtype = p->type.dtype;
    ptrt_local_block(&v->mesh, v->coord, &g, &p->shard, whole, x);
    free(whole);
    return;
  }
  /* the source's rule at the copy's indices, rounded to the source's
   * dtype, then converted */
  float *tmp = ptc_xmalloc((size_t)n * sizeof *tmp + 1);
  fill_f32(v, s->name, &s->init, &p->type, &p->shard, tmp, seed, pool);
  for (int64_t k = 0; k < n; k++) tmp[k] = ptrt_round_to(s->type.dtype, tmp[k]);
  convert(PTC_DTYPE_F32, tmp, p->type.dtype, x, n);
  free(tmp);
}

void ptrt_vars_refresh_copies(ptrt_vars *v, uint64_t seed, ptrt_pool *pool) {
  const ptc_module *m = v->mod;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!ptrt_vars_holds(v, i) || p->init.kind != PTC_INIT_COPY) continue;
    int32_t src = p->init.from ? ptc_module_find_param(m, p->init.from) : -1;
    PTC_ASSERT(src >= 0 && src != i); /* the verifier's rule */
    fill_copy(v, i, src, seed, pool);
  }
}

void ptrt_vars_init(ptrt_vars *v, uint64_t seed, ptrt_pool *pool) {
  const ptc_module *m = v->mod;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!ptrt_vars_holds(v, i) || p->init.kind == PTC_INIT_COPY) continue;
    void *x = ptrt_vars_data(v, i);
    if (p->type.dtype == PTC_DTYPE_F32) {
      fill_f32(v, p->name, &p->init, &p->type, &p->shard, x, seed, pool);
      continue;
    }
    /* 16-bit: the same f32 values, rounded */
    int64_t n = ptc_type_numel(&p->type);
    float *tmp = ptc_xmalloc((size_t)n * sizeof *tmp + 1);
    fill_f32(v, p->name, &p->init, &p->type, &p->shard, tmp, seed, pool);
    ptrt_f32_to_half(p->type.dtype, tmp, x, n);
    free(tmp);
  }
  ptrt_vars_refresh_copies(v, seed, pool);
}
