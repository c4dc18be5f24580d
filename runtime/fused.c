/* fused.c -- loads the fused kernels of a plan and runs them on the
 * runtime's threads.
 *
 * The kernels are plain functions in a shared object (fused.h); this file
 * finds them, splits each group's work into chunks for the thread pool,
 * and handles outputs that accumulate across the work (a bias gradient
 * summed over rows, the mean loss): every chunk accumulates into a
 * partial of its own, and the partials are combined in chunk order.
 * Chunks depend only on the group, so a step gives the same bits on 1 or
 * 16 threads.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fused.h"

typedef struct fgroup {
  ptc_group_sig sig;
  ptrt_fused_fn fn;
} fgroup;

struct ptrt_fused {
  void *handle;
  const ptc_func *f;
  int32_t ngroups;
  fgroup *groups;  /* heap */
  int32_t nops;
  int32_t *at_op;  /* [nops] group index starting at op i, or -1 */
};

ptrt_fused *ptrt_fused_open(ptc_ctx *ctx, const char *path, ptc_func *f) {
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char *e = dlerror();
    ptrt_file_error(ctx, path, "cannot load the plan's kernels: %s; recompile the plan",
                    e ? e : "unknown reason");
    return NULL;
  }
  ptrt_fused *lib = ptc_xcalloc(1, sizeof *lib);
  lib->handle = h;
  lib->f = f;
  lib->nops = f->nops;
  lib->at_op = ptc_xmalloc(((size_t)f->nops + 1) * sizeof *lib->at_op);
  for (int32_t i = 0; i < f->nops; i++) lib->at_op[i] = -1;
  int32_t cap = 0;
  for (int32_t i = 0; i < f->nops;) {
    if (ptc_op_group(&f->ops[i]) < 0) {
      i++;
      continue;
    }
    if (lib->ngroups == cap) {
      cap = cap ? 2 * cap : 32;
      lib->groups = ptc_xrealloc(lib->groups, (size_t)cap * sizeof *lib->groups);
    }
    fgroup *g = &lib->groups[lib->ngroups];
    if (ptc_group_signature(f, i, &g->sig) < 0) {
      ptrt_fused_close(lib);
      return NULL;
    }
    char name[48];
    ptc_group_kernel_name(g->sig.id, name, sizeof name);
    void *sym = dlsym(h, name);
    if (!sym) {
      ptrt_file_error(ctx, path, "has no kernel %s for group %lld of @%s; the kernels do not "
                      "match the plan's IR: recompile the plan", name, (long long)g->sig.id,
                      f->name);
      ptc_group_sig_fini(&g->sig);
      ptrt_fused_close(lib);
      return NULL;
    }
    /* a function pointer from dlsym's object pointer: POSIX guarantees it */
    memcpy(&g->fn, &sym, sizeof g->fn);
    lib->at_op[i] = lib->ngroups++;
    i = g->sig.end;
  }
  return lib;
}

void ptrt_fused_close(ptrt_fused *lib) {
  if (!lib) return;
  for (int32_t i = 0; i < lib->ngroups; i++) ptc_group_sig_fini(&lib->groups[i].sig);
  free(lib->groups);
  free(lib->at_op);
  if (lib->handle) dlclose(lib->handle);
  free(lib);
}

int32_t ptrt_fused_count(const ptrt_fused *lib) { return lib->ngroups; }

const ptc_group_sig *ptrt_fused_group_at(const ptrt_fused *lib, int32_t op) {
  if (op < 0 || op >= lib->nops || lib->at_op[op] < 0) return NULL;
  return &lib->groups[lib->at_op[op]].sig;
}

ptrt_fused_fn ptrt_fused_kernel(const ptrt_fused *lib, const ptc_group_sig *sig) {
  for (int32_t i = 0; i < lib->ngroups; i++)
    if (&lib->groups[i].sig == sig) return lib->groups[i].fn;
  return NULL;
}

/* ---- running ----------------------------------------------------------- */

enum { MAX_CHUNKS_ACC = 32, PARTIAL_BUDGET = 4 << 20 /* bytes */ };

static int64_t acc_floats(const ptc_group_sig *sig, const ptc_func *f) {
  int64_t n = 0;
  for (int32_t o = 0; o < sig->nout; o++)
    if (sig->combine[o] != PTC_GROUP_STORE) n += ptc_type_numel(&f->values[sig->out[o]].type);
  return n;
}

/* about 32k element operations per chunk, like the runtime's own kernels */
static int64_t base_grain(const ptc_group_sig *sig) {
  double per_item = (sig->flops + sig->bytes / 4) / (double)(sig->work ? sig->work : 1);
  int64_t g = (int64_t)(32768.0 / (per_item > 1 ? per_item : 1));
  if (sig->kind == PTC_GROUP_ELEMENTWISE) g = (g + 255) / 256 * 256; /* whole vectors */
  return g < 1 ? 1 : g;
}

static int64_t grain_of(const ptc_group_sig *sig, const ptc_func *f) {
  int64_t g = base_grain(sig), nacc = acc_floats(sig, f);
  if (nacc == 0 || sig->work <= 0) return g;
  /* accumulating groups: bound the partials' count and memory */
  int64_t max_chunks = PARTIAL_BUDGET / (nacc * 4);
  if (max_chunks > MAX_CHUNKS_ACC) max_chunks = MAX_CHUNKS_ACC;
  if (max_chunks < 1) max_chunks = 1;
  int64_t min_g = (sig->work + max_chunks - 1) / max_chunks;
  return g > min_g ? g : min_g;
}

int64_t ptrt_fused_grain(const ptrt_fused *lib, const ptc_group_sig *sig) {
  return grain_of(sig, lib->f);
}

typedef struct job {
  ptrt_fused_fn fn;
  void *const *bufs;
  int32_t nslot;
  int64_t grain;
  /* accumulating outputs */
  int32_t nacc;
  int32_t *acc_slot;
  int64_t *acc_n, *acc_off; /* floats per output, offset in a chunk's partial */
  bool *acc_max;
  int64_t per_chunk; /* floats of one chunk's partials */
  float *partials;
  atomic_int status;
} job;

static void fill(float *p, int64_t n, bool max) {
  float v = max ? -INFINITY : 0.0f;
  for (int64_t i = 0; i < n; i++) p[i] = v;
}

static void run_chunk(void *arg, int64_t b, int64_t e) {
  job *j = arg;
  int32_t st;
  if (j->nacc == 0) {
    st = j->fn(j->bufs, b, e);
  } else {
    void *local[64];
    void **bufs = j->nslot <= 64 ? local : ptc_xmalloc((size_t)j->nslot * sizeof *bufs);
    memcpy(bufs, j->bufs, (size_t)j->nslot * sizeof *bufs);
    float *mine = j->partials + (b / j->grain) * j->per_chunk;
    for (int32_t a = 0; a < j->nacc; a++) {
      float *p = mine + j->acc_off[a];
      fill(p, j->acc_n[a], j->acc_max[a]);
      bufs[j->acc_slot[a]] = p;
    }
    st = j->fn(bufs, b, e);
    if (bufs != local) free(bufs);
  }
  if (st) atomic_fetch_or(&j->status, st);
}

/* The op of the group that reads an index (for the error's location). */
static const ptc_op *index_op(const ptc_func *f, const ptc_group_sig *sig) {
  for (int32_t i = sig->first; i < sig->end; i++)
    if (f->ops[i].code == PTC_OP_CROSS_ENTROPY || f->ops[i].code == PTC_OP_CROSS_ENTROPY_GRAD)
      return &f->ops[i];
  return &f->ops[sig->first];
}

static int run_group(ptc_ctx *ctx, const ptc_func *f, ptrt_fused_fn fn,
                     const ptc_group_sig *sig, void *const *bufs, ptrt_pool *pool) {
  if (sig->work <= 0) return 0;
  job j = {.fn = fn, .bufs = bufs, .nslot = sig->nin + sig->nout, .grain = grain_of(sig, f)};
  atomic_init(&j.status, 0);
  int64_t nchunks = (sig->work + j.grain - 1) / j.grain;
  int32_t nacc = 0;
  for (int32_t o = 0; o < sig->nout; o++) nacc += sig->combine[o] != PTC_GROUP_STORE;
  if (nacc) {
    j.acc_slot = ptc_xmalloc((size_t)nacc * sizeof *j.acc_slot);
    j.acc_n = ptc_xmalloc((size_t)nacc * sizeof *j.acc_n);
    j.acc_off = ptc_xmalloc((size_t)nacc * sizeof *j.acc_off);
    j.acc_max = ptc_xmalloc((size_t)nacc * sizeof *j.acc_max);
    for (int32_t o = 0; o < sig->nout; o++) {
      if (sig->combine[o] == PTC_GROUP_STORE) continue;
      int32_t a = j.nacc++;
      j.acc_slot[a] = sig->nin + o;
      j.acc_n[a] = ptc_type_numel(&f->values[sig->out[o]].type);
      j.acc_off[a] = j.per_chunk;
      j.acc_max[a] = sig->combine[o] == PTC_GROUP_MAX;
      j.per_chunk += j.acc_n[a];
    }
    if (nchunks == 1) { /* straight into the outputs */
      for (int32_t a = 0; a < j.nacc; a++) fill(bufs[j.acc_slot[a]], j.acc_n[a], j.acc_max[a]);
      j.nacc = 0;
    } else {
      j.partials = ptc_xmalloc((size_t)(nchunks * j.per_chunk) * sizeof(float));
    }
  }
  ptrt_parallel_for(pool, sig->work, j.grain, run_chunk, &j);
  if (j.partials) { /* combine in chunk order */
    for (int32_t a = 0; a < j.nacc; a++) {
      float *out = bufs[j.acc_slot[a]];
      int64_t n = j.acc_n[a];
      fill(out, n, j.acc_max[a]);
      for (int64_t c = 0; c < nchunks; c++) {
        const float *p = j.partials + c * j.per_chunk + j.acc_off[a];
        if (j.acc_max[a])
          for (int64_t i = 0; i < n; i++) out[i] = p[i] > out[i] ? p[i] : out[i];
        else
          for (int64_t i = 0; i < n; i++) out[i] += p[i];
      }
    }
  }
  free(j.partials);
  free(j.acc_slot);
  free(j.acc_n);
  free(j.acc_off);
  free(j.acc_max);
  if (atomic_load(&j.status)) {
    const ptc_op *op = index_op(f, sig);
    ptc_error(ctx, op->loc, "%s: an index is out of range (in fused group %lld); check the "
              "data against the model's sizes", ptc_opinfo_get(op->code)->name,
              (long long)sig->id);
    return -1;
  }
  return 0;
}

int ptrt_fused_run(ptc_ctx *ctx, const ptrt_fused *lib, const ptc_group_sig *sig,
                   void *const *bufs, ptrt_pool *pool) {
  ptrt_fused_fn fn = ptrt_fused_kernel(lib, sig);
  PTC_ASSERT(fn); /* sig must come from this lib */
  return run_group(ctx, lib->f, fn, sig, bufs, pool);
}

/* ---- the CPU check ----------------------------------------------------------- */

/* 1 / 0: this CPU has / lacks the extension; -1: this build cannot tell. */
static int cpu_has(const char *n, size_t len) {
#if defined(__x86_64__) || defined(__i386__)
#define FEATURE(s)                                                           \
  if (len == sizeof(s) - 1 && memcmp(n, s, len) == 0) return __builtin_cpu_supports(s) ? 1 : 0;
  __builtin_cpu_init();
  FEATURE("sse3") FEATURE("ssse3") FEATURE("sse4.1") FEATURE("sse4.2") FEATURE("popcnt")
  FEATURE("avx") FEATURE("avx2") FEATURE("fma") FEATURE("bmi") FEATURE("bmi2")
  FEATURE("avx512f") FEATURE("avx512dq") FEATURE("avx512cd") FEATURE("avx512bw")
  FEATURE("avx512vl") FEATURE("avx512vnni")
#undef FEATURE
#else
  (void)n;
  (void)len;
#endif
  return -1;
}

int ptrt_fused_check_cpu(ptc_ctx *ctx, const char *what, const char *cpu,
                         const char *requires) {
  for (const char *p = requires; p && *p;) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    if (n && cpu_has(p, n) == 0) {
      ptrt_file_error(ctx, what, "the plan's kernels were built for %s%s%s and use %.*s, "
                      "which this machine's CPU does not have; recompile the plan here "
                      "(--target cpu) or for any x86-64 (--target cpu:generic)",
                      cpu ? "CPU '" : "another CPU", cpu ? cpu : "", cpu ? "'" : "", (int)n, p);
      return -1;
    }
    p = e ? e + 1 : p + n;
  }
  return 0;
}
