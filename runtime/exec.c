/* exec.c -- the executor: runs a ptir function op by op with the CPU
 * kernels.
 *
 * Everything that does not change between runs is worked out once, when
 * the program is made: which kernel runs each op (and that it can), where
 * each value lives (a variable, an argument buffer, its own transient
 * buffer, or -- for reshape -- its operand's buffer), the last op that
 * reads each transient buffer, and when each assign may commit.  A run is
 * then a loop over the ops: allocate results, call the kernel, give back
 * the buffers whose last reader this op was.
 *
 * Memory: the plan is static (liveness.c): every transient buffer, and
 * every snapshot an assign takes, has a byte offset in one arena that is
 * allocated once, when the program is made; a run never allocates.
 * `live` counts the bytes of transient buffers in use, `peak` the highest
 * arena byte a buffer has occupied -- the arena's size after one run, so
 * the measured peak equals ptrt_program_planned_peak.
 *
 * 16-bit floats (bf16, f16): values are stored at 2 bytes per element and
 * computed in f32.  An op that computes (ptc_op_moves_bytes is false) with
 * a 16-bit operand or result runs its ordinary f32 kernel through a view
 * of the function whose 16-bit types read f32 (`wide`): the 16-bit
 * operands are widened into the workspace, the 16-bit results are
 * computed there and rounded into their buffers (runtime/half.h: nearest
 * even, NaN stays NaN, f16 overflow to inf).  The workspace is one region
 * of the arena after the buffers (liveness.c: workspace_offset, sized by
 * the largest op's need), so this never allocates either; `peak` counts it
 * like a buffer, and mem.workspace is the most of it any op used, which
 * equals ptrt_program_planned_workspace after a run.  Arguments and
 * results may be 16-bit too: their buffers hold the 2-byte elements (a
 * pipeline's stashed activations; what feeds them is the caller's
 * business).  Ops that move bytes (reshape, slice, concat, transpose,
 * collectives, transfers...) and cast and constant take 16-bit data as it
 * is.
 *
 * GPUs (env->gpu, runtime/cuda.h): the same walk with the arena, the
 * variables (vars->dev) and the arguments in device memory; each op runs
 * as cuda_exec.c decided when the program was made, a fused group as the
 * plan's kernel.  An op without a GPU implementation is staged: its
 * operands are copied to host scratch (`stage`), its CPU kernel runs (16-
 * bit values widened there), its results are copied back; collectives
 * run so, over MPI.  Argument buffers stay on the host for the caller and
 * are copied in at the start of a run; results are copied out at return.
 *
 * Fused groups (opts.fused): at the first op of a group the executor
 * allocates the group's outputs, runs its kernel over the thread pool
 * (ptrt_fused_run) and skips the group's other ops; values internal to the
 * group have no buffer (liveness.c).
 */
#include <stdio.h>

#include "codegen/codegen.h"
#include "runtime/cuda.h"
#include "runtime/fused.h"
#include "runtime/half.h"
#include "runtime/internal.h"

typedef struct pending {
  int32_t param;
  void *data;
  bool owned;    /* a snapshot in the arena, counted in live until the end */
  int64_t bytes; /* of the snapshot */
} pending;

struct ptrt_program {
  ptrt_env env;
  ptc_func *f;
  ptrt_vars *vars;
  ptrt_program_opts opts;
  ptc_liveness live_plan;
  bool has_in_place;
  int32_t nv, nops;
  int64_t *bytes; /* per value */
  void **data;    /* per value: its buffer now */
  bool *held;     /* per root: holds a transient buffer now */
  ptrt_kernel_fn *kern;
  int32_t max_args;
  void **in_ptrs, **out_ptrs;
  void **arg_buf;
  void **res_buf;
  bool *arg_bound, *res_bound; /* caller-owned buffers (ptrt_program_bind_*) */
  int64_t *res_bytes;
  int32_t nres;
  pending *pend;
  int32_t npend;
  char *arena; /* every transient buffer, at its planned offset */
  bool check_memory;
  int32_t *live_v; /* check_memory: the values holding arena bytes now */
  int32_t nlive_v;
  ptrt_mem mem;
  bool check_finite;
  bool profile;
  double prof_s[PTC_OP_COUNT];
  int64_t prof_n[PTC_OP_COUNT];
  const ptrt_fused *fused; /* borrowed, or NULL */
  void **group_bufs;       /* a group's inputs then outputs */
  double prof_fused_s;
  int64_t prof_fused_n;
  /* 16-bit values: per op, whether it runs its f32 kernel on widened
   * copies; `wide` is f with every bf16/f16 type read as f32 (its own
   * value table, f's ops), what such a kernel sees */
  bool *widens;
  ptc_func wide;
  ptc_value *wide_values;
  /* GPU (env.gpu): how each op runs there, the arguments' device copies,
   * host scratch for staged ops */
  ptrt_cuda_prog *gp;
  void **d_arg;
  char *stage;
  int64_t stage_cap;
};

/* ---- making a program ------------------------------------------------- */

/* Whether value v's dimension d is split over the communicator's mesh. */
static bool split_here(const ptrt_env *env, const ptc_value *v, int32_t d) {
  return v->shard.present && ptc_shard_parts(&env->comm->mesh, v->shard.dim_axes[d]) > 1;
}

bool ptrt_op_needs_mesh(const ptrt_env *env, const ptc_func *f, const ptc_op *op) {
  switch (op->code) {
  case PTC_OP_CROSS_ENTROPY: /* classes split: this piece's class offset */
  case PTC_OP_CROSS_ENTROPY_GRAD: {
    const ptc_value *lg = &f->values[op->in[op->code == PTC_OP_CROSS_ENTROPY ? 0 : 1]];
    return split_here(env, lg, lg->type.rank - 1);
  }
  case PTC_OP_EMBEDDING:     /* the table's rows held here */
  case PTC_OP_EMBEDDING_GRAD:
    for (int32_t k = 0; k < op->nin + op->nout; k++) {
      const ptc_value *val = &f->values[k < op->nin ? op->in[k] : op->out[k - op->nin]];
      for (int32_t d = 0; d < val->type.rank; d++)
        if (split_here(env, val, d)) return true;
    }
    return false;
  default: /* means and the loss over split rows: the generated kernels count the
              whole tensor too (codegen/opmath.c, ptc_om_reduce) */
    return false;
  }
}

/* The first op of a group of f whose result depends on the device's place
 * in the mesh beyond the counts the fused kernel already takes whole
 * (ptrt_op_needs_mesh: the loss over split classes), or NULL. */
static const ptc_op *group_needs_whole_count(const ptrt_env *env, const ptc_func *f) {
  for (int32_t i = 0; i < f->nops; i++)
    if (ptc_op_group(&f->ops[i]) >= 0 && ptrt_op_needs_mesh(env, f, &f->ops[i]))
      return &f->ops[i];
  return NULL;
}

static bool has_groups(const ptc_func *f) {
  for (int32_t i = 0; i < f->nops; i++)
    if (ptc_op_group(&f->ops[i]) >= 0) return true;
  return false;
}

static int32_t param_of_value(const ptc_func *f, int32_t v) {
  return f->values[v].kind == PTC_VALUE_PARAM ? f->values[v].def : -1;
}

ptrt_program *ptrt_program_create(const ptrt_env *env, ptc_func *f, ptrt_vars *vars,
                                  const ptrt_program_opts *opts) {
  ptc_ctx *ctx = env->ctx;
  ptrt_program_opts o = {0};
  if (opts) o = *opts;
  if (o.loss_only) o.fused = NULL; /* a group runs whole: go op by op */
  /* one rank per device: a partitioned function's collectives and pieces
   * are only right on a communicator of its mesh */
  int64_t devices = ptc_mesh_size(&f->mod->mesh);
  if (devices != env->comm->size) {
    ptc_buf mb;
    ptc_buf_init(&mb);
    ptc_mesh_print(&mb, &f->mod->mesh);
    ptc_error(ctx, f->loc, "@%s runs on %s (%lld devices), but the %s communicator has %d "
              "rank%s: run it with one rank per device", f->name, mb.data,
              (long long)devices, env->comm->name, env->comm->size,
              env->comm->size == 1 ? "" : "s");
    ptc_buf_fini(&mb);
    return NULL;
  }
  /* a GPU runs the plan's group kernels (a CUDA plan has no kernels.so) */
  bool gpu_groups = env->gpu && !o.loss_only && has_groups(f);
  const ptc_op *whole = o.fused || gpu_groups ? group_needs_whole_count(env, f) : NULL;
  if (whole) {
    ptc_warning(ctx, whole->loc, "%s: its fused kernel cannot know this device's piece of "
                "the dimensions split across the mesh: @%s runs op by op with the runtime's "
                "kernels instead", ptc_opinfo_get(whole->code)->name, f->name);
    o.fused = NULL;
    gpu_groups = false;
  }
  ptrt_cuda_prog *gp = NULL;
  if (env->gpu) {
    gp = ptrt_cuda_prog_create(env->gpu, env, f, gpu_groups);
    if (!gp) return NULL;
  }
  ptc_liveness lv;
  ptc_liveness_compute(&lv, f, o.in_place, o.loss_only, o.fused != NULL || gpu_groups);
  int bad = 0;
  int32_t max_group = 0;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_group_sig *sig = o.fused ? ptrt_fused_group_at(o.fused, i)
                               : gp ? ptrt_cuda_prog_group_at(gp, i) : NULL;
    if (sig) { /* its ops run inside the kernel */
      if (sig->nin + sig->nout > max_group) max_group = sig->nin + sig->nout;
      i = sig->end - 1;
      continue;
    }
    if (lv.run[i] && ptrt_kernel_check(ctx, f, &f->ops[i]) != 0) bad++;
  }
  for (int32_t i = 0; i < f->nargs; i++) {
    ptc_dtype t = f->values[f->args[i]].type.dtype;
    if (t != PTC_DTYPE_F32 && t != PTC_DTYPE_I32 && t != PTC_DTYPE_I64 && !ptrt_is_half(t)) {
      ptc_error(ctx, f->loc, "argument %d of @%s is %s; the CPU runtime takes f32, bf16, "
                "f16, i32 and i64 arguments", i, f->name, ptc_dtype_name(t));
      bad++;
    }
  }
  if (bad) {
    ptc_liveness_fini(&lv);
    ptrt_cuda_prog_destroy(gp);
    return NULL;
  }
#ifndef NDEBUG
  /* the plan's own invariant: live buffers never share a byte */
  char why[256];
  if (ptc_liveness_check_overlap(&lv, f, why, sizeof why) != 0)
    ptc_fatal(__FILE__, __LINE__, "the memory plan of @%s: %s", f->name, why);
#endif
  char *arena = NULL;
  if (o.arena) { /* shared: grown to this plan (it holds nothing between runs) */
    if (o.arena->size < lv.total || (!o.arena->base && env->gpu)) {
      char *grown = env->gpu ? ptrt_cuda_alloc(env->gpu, ctx, lv.total, "the arena")
                             : ptrt_alloc(lv.total);
      if (grown) {
        ptrt_arena_fini(o.arena);
        o.arena->base = grown;
        o.arena->size = lv.total;
        o.arena->gpu = env->gpu;
      }
    }
    if (o.arena->size >= lv.total && o.arena->base) arena = o.arena->base;
  } else {
    arena = env->gpu ? ptrt_cuda_alloc(env->gpu, ctx, lv.total, "the arena")
                     : ptrt_alloc(lv.total);
  }
  if (!arena && (lv.total > 0 || env->gpu)) {
    if (!env->gpu)
      ptrt_error(ctx, "out of memory: the %lld-byte arena of @%s's transient buffers",
                 (long long)lv.total, f->name);
    ptc_liveness_fini(&lv);
    ptrt_cuda_prog_destroy(gp);
    return NULL;
  }
  ptrt_program *p = ptc_xcalloc(1, sizeof *p);
  p->env = *env;
  p->arena = arena;
  p->f = f;
  p->vars = vars;
  p->opts = o;
  p->live_plan = lv;
  p->fused = o.fused;
  p->gp = gp;
  p->group_bufs = ptc_xcalloc((size_t)max_group + 1, sizeof *p->group_bufs);
  p->nv = f->nvalues;
  p->nops = f->nops;
  size_t nv = (size_t)p->nv + 1, no = (size_t)p->nops + 1;
  p->bytes = ptc_xcalloc(nv, sizeof *p->bytes);
  p->data = ptc_xcalloc(nv, sizeof *p->data);
  p->held = ptc_xcalloc(nv, sizeof *p->held);
  p->kern = ptc_xcalloc(no, sizeof *p->kern);
  p->arg_buf = ptc_xcalloc((size_t)f->nargs + 1, sizeof *p->arg_buf);
  p->arg_bound = ptc_xcalloc((size_t)f->nargs + 1, sizeof *p->arg_bound);
  p->pend = ptc_xcalloc(no, sizeof *p->pend);
  p->widens = ptc_xcalloc(no, sizeof *p->widens);
  bool any_wide = false;
  for (int32_t i = 0; i < p->nops; i++) {
    const ptc_op *op = &f->ops[i];
    /* as liveness.c plans it: not in a fused group (its kernel loads them) */
    if (!lv.run[i] || ptc_op_moves_bytes(op->code) || (o.fused && ptc_op_group(op) >= 0))
      continue;
    for (int32_t k = 0; k < op->nin + op->nout; k++) {
      int32_t v = k < op->nin ? op->in[k] : op->out[k - op->nin];
      p->widens[i] |= ptrt_is_half(f->values[v].type.dtype);
    }
    any_wide |= p->widens[i];
  }
  if (any_wide) {
    p->wide_values = ptc_xmalloc(nv * sizeof *p->wide_values);
    memcpy(p->wide_values, f->values, (size_t)p->nv * sizeof *p->wide_values);
    for (int32_t v = 0; v < p->nv; v++)
      if (ptrt_is_half(p->wide_values[v].type.dtype))
        p->wide_values[v].type.dtype = PTC_DTYPE_F32;
    p->wide = *f;
    p->wide.values = p->wide_values;
  }
  p->mem.vars = vars ? vars->bytes : 0;
  for (int32_t v = 0; v < p->nv; v++) {
    const ptc_value *val = &f->values[v];
    p->bytes[v] = ptc_type_bytes(&val->type);
    if (val->kind == PTC_VALUE_PARAM) {
      PTC_ASSERT(vars && val->def < vars->mod->nparams);
      p->data[v] = ptrt_vars_data(vars, val->def);
      if (gp) {
        PTC_ASSERT(vars->dev);
        p->data[v] = (char *)vars->dev + vars->offset[val->def];
      }
    }
  }
  if (gp) p->d_arg = ptc_xcalloc((size_t)f->nargs + 1, sizeof *p->d_arg);
  for (int32_t i = 0; i < f->nargs; i++) {
    int32_t v = f->args[i];
    p->arg_buf[i] = ptrt_alloc(p->bytes[v]);
    PTC_ASSERT(p->arg_buf[i]);
    memset(p->arg_buf[i], 0, (size_t)p->bytes[v]);
    p->data[v] = p->arg_buf[i];
    p->mem.fixed += p->bytes[v];
    if (gp) {
      p->d_arg[i] = ptrt_cuda_alloc(env->gpu, ctx, p->bytes[v], "an argument buffer");
      if (!p->d_arg[i]) {
        ptrt_program_destroy(p);
        return NULL;
      }
      p->data[v] = p->d_arg[i];
    }
  }
  for (int32_t i = 0; i < p->nops; i++) {
    const ptc_op *op = &f->ops[i];
    p->kern[i] = ptrt_kernel_get(op->code);
    int32_t n = op->nin > op->nout ? op->nin : op->nout;
    if (n > p->max_args) p->max_args = n;
    if (lv.assign[i] == PTC_ASSIGN_IN_PLACE) p->has_in_place = true;
  }
  p->in_ptrs = ptc_xcalloc((size_t)p->max_args + 1, sizeof *p->in_ptrs);
  p->out_ptrs = ptc_xcalloc((size_t)p->max_args + 1, sizeof *p->out_ptrs);
  const ptc_op *ret = &f->ops[p->nops - 1];
  PTC_ASSERT(ret->code == PTC_OP_RETURN);
  p->nres = o.loss_only && ret->nin > 1 ? 1 : ret->nin;
  p->res_buf = ptc_xcalloc((size_t)ret->nin + 1, sizeof *p->res_buf);
  p->res_bytes = ptc_xcalloc((size_t)ret->nin + 1, sizeof *p->res_bytes);
  p->res_bound = ptc_xcalloc((size_t)ret->nin + 1, sizeof *p->res_bound);
  for (int32_t i = 0; i < ret->nin; i++) {
    p->res_bytes[i] = p->bytes[ret->in[i]];
    p->res_buf[i] = ptrt_alloc(p->res_bytes[i]);
    PTC_ASSERT(p->res_buf[i]);
    memset(p->res_buf[i], 0, (size_t)p->res_bytes[i]);
    p->mem.fixed += p->res_bytes[i];
  }
  return p;
}

void ptrt_arena_fini(ptrt_arena *a) {
  if (a->gpu) ptrt_cuda_free(a->gpu, a->base);
  else ptrt_free(a->base);
  a->gpu = NULL;
  a->base = NULL;
  a->size = 0;
}

void ptrt_program_destroy(ptrt_program *p) {
  if (!p) return;
  if (p->gp) {
    if (!p->opts.arena) ptrt_cuda_free(p->env.gpu, p->arena);
    for (int32_t i = 0; p->d_arg && i < p->f->nargs; i++) ptrt_cuda_free(p->env.gpu, p->d_arg[i]);
    ptrt_cuda_prog_destroy(p->gp);
  } else if (!p->opts.arena) {
    ptrt_free(p->arena);
  }
  free(p->d_arg);
  free(p->stage);
  free(p->live_v);
  for (int32_t i = 0; p->arg_buf && i < p->f->nargs; i++)
    if (!p->arg_bound[i]) ptrt_free(p->arg_buf[i]);
  const ptc_op *ret = &p->f->ops[p->nops - 1];
  for (int32_t i = 0; p->res_buf && i < ret->nin; i++)
    if (!p->res_bound[i]) ptrt_free(p->res_buf[i]);
  ptc_liveness_fini(&p->live_plan);
  free(p->bytes);
  free(p->data);
  free(p->held);
  free(p->kern);
  free(p->in_ptrs);
  free(p->out_ptrs);
  free(p->arg_buf);
  free(p->res_buf);
  free(p->arg_bound);
  free(p->res_bound);
  free(p->res_bytes);
  free(p->pend);
  free(p->group_bufs);
  free(p->widens);
  free(p->wide_values);
  free(p);
}

void *ptrt_program_arg(ptrt_program *p, int32_t i) {
  PTC_ASSERT(i >= 0 && i < p->f->nargs);
  return p->arg_buf[i];
}

const void *ptrt_program_result(const ptrt_program *p, int32_t i) {
  PTC_ASSERT(i >= 0 && i < p->nres);
  return p->res_buf[i];
}

void ptrt_program_bind_arg(ptrt_program *p, int32_t i, void *buf) {
  PTC_ASSERT(i >= 0 && i < p->f->nargs && buf);
  int32_t v = p->f->args[i];
  if (!p->arg_bound[i]) { /* the program's own buffer is not needed any more */
    ptrt_free(p->arg_buf[i]);
    p->mem.fixed -= p->bytes[v];
    p->arg_bound[i] = true;
  }
  p->arg_buf[i] = buf;
  if (!p->gp) p->data[v] = buf; /* on a GPU it is copied in at each run */
}

void ptrt_program_bind_result(ptrt_program *p, int32_t i, void *buf) {
  PTC_ASSERT(i >= 0 && i < p->nres && buf);
  if (!p->res_bound[i]) {
    ptrt_free(p->res_buf[i]);
    p->mem.fixed -= p->res_bytes[i];
    p->res_bound[i] = true;
  }
  p->res_buf[i] = buf;
}

int64_t ptrt_program_arg_bytes(const ptrt_program *p, int32_t i) {
  PTC_ASSERT(i >= 0 && i < p->f->nargs);
  return p->bytes[p->f->args[i]];
}

int64_t ptrt_program_result_bytes(const ptrt_program *p, int32_t i) {
  PTC_ASSERT(i >= 0 && i < p->nres);
  return p->res_bytes[i];
}

ptrt_mem ptrt_program_mem(const ptrt_program *p) { return p->mem; }
int64_t ptrt_program_planned_peak(const ptrt_program *p) { return p->live_plan.total; }
int64_t ptrt_program_planned_workspace(const ptrt_program *p) {
  return p->live_plan.workspace_peak;
}

void ptrt_program_set_check_finite(ptrt_program *p, bool on) { p->check_finite = on; }
void ptrt_program_set_check_memory(ptrt_program *p, bool on) {
  p->check_memory = on;
  if (on && !p->live_v) p->live_v = ptc_xcalloc((size_t)p->nv + 1, sizeof *p->live_v);
}
void ptrt_program_set_profile(ptrt_program *p, bool on) { p->profile = on; }
const ptrt_cuda_prog *ptrt_program_gpu(const ptrt_program *p) { return p->gp; }

/* ---- running ----------------------------------------------------------- */

/* bytes more (or fewer) in use, the last of them at arena byte end - 1 */
static void note_live(ptrt_program *p, int64_t delta, int64_t end) {
  p->mem.live += delta;
  if (end > p->mem.peak) p->mem.peak = end;
  if (end > p->mem.run_peak) p->mem.run_peak = end;
}

static void release(ptrt_program *p, int32_t root) {
  if (!p->held[root]) return;
  p->held[root] = false;
  for (int32_t k = 0; p->check_memory && k < p->nlive_v; k++)
    if (p->live_v[k] == root) {
      p->live_v[k] = p->live_v[--p->nlive_v];
      break;
    }
  note_live(p, -p->bytes[root], 0);
}

static int acquire(ptrt_program *p, int32_t v) {
  int64_t off = p->live_plan.offset[v];
  PTC_ASSERT(off >= 0 && off + p->bytes[v] <= p->live_plan.peak);
  if (p->check_memory) {
    for (int32_t k = 0; k < p->nlive_v; k++) {
      int32_t w = p->live_v[k];
      int64_t wo = p->live_plan.offset[w];
      if (p->bytes[v] > 0 && p->bytes[w] > 0 && off < wo + p->bytes[w] && wo < off + p->bytes[v]) {
        const ptc_value *a = &p->f->values[v], *b = &p->f->values[w];
        ptc_error(p->env.ctx, a->kind == PTC_VALUE_OP ? p->f->ops[a->def].loc : p->f->loc,
                  "--check-memory: in @%s, %%%s (bytes %lld..%lld of the arena) would "
                  "overwrite %%%s (bytes %lld..%lld), which is still live; the memory plan "
                  "is wrong: please report it with the plan", p->f->name,
                  a->name ? a->name : "?", (long long)off, (long long)(off + p->bytes[v]),
                  b->name ? b->name : "?", (long long)wo, (long long)(wo + p->bytes[w]));
        return -1;
      }
    }
    p->live_v[p->nlive_v++] = v;
  }
  p->data[v] = p->arena + off;
  p->held[v] = true;
  note_live(p, p->bytes[v], off + p->bytes[v]);
  return 0;
}

/* Host scratch of at least n bytes (staged GPU ops, checks of GPU results). */
static char *stage(ptrt_program *p, int64_t n) {
  if (n > p->stage_cap) {
    free(p->stage);
    p->stage_cap = n > 2 * p->stage_cap ? n : 2 * p->stage_cap;
    p->stage = ptc_xmalloc((size_t)p->stage_cap);
  }
  return p->stage;
}

/* The first non-finite element of op i's float results, reported (results
 * internal to a fused group have no buffer and are skipped). */
static int check_finite(ptrt_program *p, int32_t i) {
  const ptc_op *op = &p->f->ops[i];
  for (int32_t r = 0; r < op->nout; r++) {
    int32_t v = op->out[r];
    ptc_dtype t = p->f->values[v].type.dtype;
    if ((t != PTC_DTYPE_F32 && !ptrt_is_half(t)) || !p->data[v]) continue;
    int64_t n = ptc_type_numel(&p->f->values[v].type);
    const void *d = p->data[v];
    if (p->gp) {
      d = stage(p, p->bytes[v]);
      if (ptrt_cuda_download(p->env.gpu, p->env.ctx, (void *)d, p->data[v], p->bytes[v]) != 0)
        return -1;
    }
    for (int64_t k = 0; k < n; k++) {
      float x = t == PTC_DTYPE_F32 ? ((const float *)d)[k] : ptrt_half_load(t, d, k);
      if (!isfinite(x)) {
        ptc_error(p->env.ctx, op->loc, "%s: result %d (%s) holds %s at element %lld "
                  "(--check-numerics)", ptc_opinfo_get(op->code)->name, r,
                  ptc_dtype_name(t), isnan(x) ? "NaN" : "an infinity", (long long)k);
        return -1;
      }
    }
  }
  return 0;
}

static void commit(ptrt_program *p, int32_t param, const void *src) {
  int64_t n = ptc_type_bytes(&p->vars->mod->params[param].type);
  if (p->gp) { /* an error is reported, and the run's status says so (ptrt_cuda_sync) */
    ptrt_cuda_copy(p->env.gpu, p->env.ctx, (char *)p->vars->dev + p->vars->offset[param], src, n);
    return;
  }
  void *dst = ptrt_vars_data(p->vars, param);
  if (dst != src) memmove(dst, src, (size_t)n);
}

static int run_assign(ptrt_program *p, int32_t i, bool do_commit) {
  const ptc_op *op = &p->f->ops[i];
  if (!do_commit) return 0;
  int32_t param = param_of_value(p->f, ptc_liveness_root(&p->live_plan, op->in[0]));
  PTC_ASSERT(param >= 0);
  const void *src = p->data[op->in[1]];
  switch ((ptc_assign_mode)p->live_plan.assign[i]) {
  case PTC_ASSIGN_NOW: commit(p, param, src); break;
  case PTC_ASSIGN_IN_PLACE: break;
  case PTC_ASSIGN_AT_END: p->pend[p->npend++] = (pending){param, (void *)src, false, 0}; break;
  case PTC_ASSIGN_SNAPSHOT: {
    int64_t n = p->bytes[op->in[1]], off = p->live_plan.snap_offset[i];
    char *snap = p->arena + off;
    if (p->gp) {
      if (ptrt_cuda_copy(p->env.gpu, p->env.ctx, snap, src, n) != 0) return -1;
    } else {
      memcpy(snap, src, (size_t)n);
    }
    note_live(p, n, off + n);
    p->pend[p->npend++] = (pending){param, snap, true, n};
    break;
  }
  }
  return 0;
}

/* Conversions between a 16-bit buffer and f32 scratch, over the pool. */
typedef struct convert_job {
  ptc_dtype t;
  bool widen; /* 16 -> 32 bits, else rounding 32 -> 16 */
  uint16_t *h;
  float *x;
} convert_job;

static void convert_range(void *arg, int64_t b, int64_t e) {
  const convert_job *j = arg;
  if (j->widen) ptrt_half_to_f32(j->t, j->h + b, j->x + b, e - b);
  else ptrt_f32_to_half(j->t, j->x + b, j->h + b, e - b);
}

static void convert(ptrt_program *p, ptc_dtype t, bool widen, void *h, float *x, int64_t n) {
  convert_job j = {t, widen, h, x};
  ptrt_parallel_for(p->env.pool, n, 1 << 15, convert_range, &j);
}

/* Op i with 16-bit values through its f32 kernel: 16-bit operands widened
 * into the workspace, 16-bit results computed there and rounded into
 * their buffers; the kernel sees the f32 view of the function.  k holds
 * the op's buffers and is redirected.  0 or -1 (reported). */
static int run_wide(ptrt_program *p, int32_t i, ptrt_kargs *k) {
  const ptc_op *op = &p->f->ops[i];
  char *ws = p->arena + p->live_plan.workspace_offset;
  int64_t used = 0;
  for (int32_t a = 0; a < op->nin + op->nout; a++) {
    bool in = a < op->nin;
    const ptc_type *t = &p->f->values[in ? op->in[a] : op->out[a - op->nin]].type;
    if (!ptrt_is_half(t->dtype)) continue;
    int64_t n = ptc_type_numel(t);
    float *x = (float *)(ws + used);
    if (in) {
      convert(p, t->dtype, true, p->in_ptrs[a], x, n);
      p->in_ptrs[a] = x;
    } else {
      p->out_ptrs[a - op->nin] = x;
    }
    used += (n * 4 + 63) / 64 * 64;
  }
  PTC_ASSERT(used == p->live_plan.workspace[i] && used <= p->live_plan.workspace_peak);
  if (used > p->mem.workspace) p->mem.workspace = used;
  note_live(p, used, p->live_plan.workspace_offset + used);
  k->f = &p->wide;
  int rc = p->kern[i](k);
  for (int32_t r = 0; r < op->nout && rc == 0; r++) {
    int32_t v = op->out[r];
    const ptc_type *t = &p->f->values[v].type;
    if (ptrt_is_half(t->dtype))
      convert(p, t->dtype, false, p->data[v], p->out_ptrs[r], ptc_type_numel(t));
  }
  note_live(p, -used, 0);
  return rc;
}

/* Op i of a GPU program through its CPU kernel: operands copied to host
 * scratch (16-bit ones widened to f32 there when the op computes), the
 * kernel, results (rounded back to 16 bits) copied to their device
 * buffers.  0 or -1 (reported). */
static int run_staged(ptrt_program *p, int32_t i, ptrt_kargs *k) {
  const ptc_op *op = &p->f->ops[i];
  ptrt_cuda *g = p->env.gpu;
  ptc_ctx *ctx = p->env.ctx;
  int32_t n = op->nin + op->nout;
  int64_t total = 0, *at = ptc_xmalloc((size_t)(2 * n + 1) * sizeof *at);
  void **dev_out = ptc_xmalloc((size_t)(op->nout + 1) * sizeof *dev_out);
  int rc = -1;
  for (int32_t a = 0; a < n; a++) {
    const ptc_type *t = &p->f->values[a < op->nin ? op->in[a] : op->out[a - op->nin]].type;
    at[a] = total;
    total += (ptc_type_bytes(t) + 63) / 64 * 64;
    at[n + a] = -1;
    if (p->widens[i] && ptrt_is_half(t->dtype)) { /* its f32 view */
      at[n + a] = total;
      total += (ptc_type_numel(t) * 4 + 63) / 64 * 64;
    }
  }
  char *h = stage(p, total);
  for (int32_t a = 0; a < op->nin; a++) {
    const ptc_type *t = &p->f->values[op->in[a]].type;
    if (ptrt_cuda_download(g, ctx, h + at[a], p->in_ptrs[a], ptc_type_bytes(t)) != 0) goto out;
    p->in_ptrs[a] = h + at[a];
    if (at[n + a] >= 0) {
      ptrt_half_to_f32(t->dtype, (const uint16_t *)(h + at[a]), (float *)(h + at[n + a]),
                       ptc_type_numel(t));
      p->in_ptrs[a] = h + at[n + a];
    }
  }
  for (int32_t r = 0; r < op->nout; r++) {
    dev_out[r] = p->out_ptrs[r];
    int32_t a = op->nin + r;
    p->out_ptrs[r] = h + (at[n + a] >= 0 ? at[n + a] : at[a]);
  }
  if (p->widens[i]) k->f = &p->wide;
  if (p->kern[i](k) != 0) goto out;
  for (int32_t r = 0; r < op->nout; r++) {
    int32_t a = op->nin + r;
    const ptc_type *t = &p->f->values[op->out[r]].type;
    if (at[n + a] >= 0)
      ptrt_f32_to_half(t->dtype, (const float *)(h + at[n + a]), (uint16_t *)(h + at[a]),
                       ptc_type_numel(t));
    if (ptrt_cuda_upload(g, ctx, dev_out[r], h + at[a], ptc_type_bytes(t)) != 0) goto out;
  }
  rc = 0;
out:
  free(at);
  free(dev_out);
  return rc;
}

/* One op; 0 or -1 (reported). */
static int run_op(ptrt_program *p, int32_t i, bool do_commit) {
  ptc_func *f = p->f;
  const ptc_op *op = &f->ops[i];
  if (op->code == PTC_OP_ASSIGN) return run_assign(p, i, do_commit);
  if (op->code == PTC_OP_RETURN) {
    for (int32_t r = 0; r < p->nres; r++) {
      if (!p->gp) memcpy(p->res_buf[r], p->data[op->in[r]], (size_t)p->res_bytes[r]);
      else if (ptrt_cuda_download(p->env.gpu, p->env.ctx, p->res_buf[r], p->data[op->in[r]],
                                  p->res_bytes[r]) != 0)
        return -1;
    }
    return 0;
  }
  bool computes = false;
  for (int32_t r = 0; r < op->nout; r++) {
    int32_t v = op->out[r];
    if (ptc_liveness_allocates(&p->live_plan, v)) {
      if (acquire(p, v) != 0) return -1;
      computes = true;
    } else {
      /* a view (reshape) or an in-place update of a variable */
      p->data[v] = p->data[ptc_liveness_root(&p->live_plan, v)];
      computes |= op->code != PTC_OP_RESHAPE;
    }
  }
  if (!computes && op->nout > 0) return 0; /* a reshape: nothing moves */
  for (int32_t a = 0; a < op->nin; a++) p->in_ptrs[a] = p->data[op->in[a]];
  for (int32_t r = 0; r < op->nout; r++) p->out_ptrs[r] = p->data[op->out[r]];
  ptrt_kargs k = {&p->env, f, op, p->in_ptrs, p->out_ptrs};
  if (p->profile && p->gp && ptrt_cuda_sync(p->env.gpu, p->env.ctx) != 0) return -1;
  double t0 = p->profile ? ptrt_now() : 0;
  if (p->gp) {
    if (ptrt_cuda_prog_staged(p->gp, i) ? run_staged(p, i, &k)
                                        : ptrt_cuda_prog_op(p->gp, i, p->in_ptrs, p->out_ptrs))
      return -1;
    if (p->profile && ptrt_cuda_sync(p->env.gpu, p->env.ctx) != 0) return -1;
  } else if (p->widens[i]) {
    if (run_wide(p, i, &k) != 0) return -1;
  } else if (p->kern[i](&k) != 0) {
    return -1;
  }
  if (p->profile) {
    p->prof_s[op->code] += ptrt_now() - t0;
    p->prof_n[op->code]++;
  }
  if (p->check_finite) return check_finite(p, i);
  return 0;
}

/* A fused group, at its first op; 0 or -1 (reported).  Its buffers go to
 * the kernel as they are, 16-bit ones too (the kernel widens what it loads
 * and rounds what it stores): nothing is widened here and no workspace is
 * used, as liveness.c plans it. */
static int run_group(ptrt_program *p, const ptc_group_sig *sig) {
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    if (ptc_liveness_allocates(&p->live_plan, v)) {
      if (acquire(p, v) != 0) return -1;
    } else { /* an in-place update of a variable */
      p->data[v] = p->data[ptc_liveness_root(&p->live_plan, v)];
    }
  }
  for (int32_t a = 0; a < sig->nin; a++) p->group_bufs[a] = p->data[sig->in[a]];
  for (int32_t o = 0; o < sig->nout; o++) p->group_bufs[sig->nin + o] = p->data[sig->out[o]];
  if (p->profile && p->gp && ptrt_cuda_sync(p->env.gpu, p->env.ctx) != 0) return -1;
  double t0 = p->profile ? ptrt_now() : 0;
  if (p->gp) {
    if (ptrt_cuda_prog_group(p->gp, sig, p->group_bufs) != 0) return -1;
    if (p->profile && ptrt_cuda_sync(p->env.gpu, p->env.ctx) != 0) return -1;
  } else if (ptrt_fused_run(p->env.ctx, p->fused, sig, p->group_bufs, p->env.pool) != 0) {
    return -1;
  }
  if (p->profile) {
    p->prof_fused_s += ptrt_now() - t0;
    p->prof_fused_n++;
  }
  if (p->check_finite)
    for (int32_t i = sig->first; i < sig->end; i++)
      if (check_finite(p, i) != 0) return -1;
  return 0;
}

int ptrt_program_run(ptrt_program *p, bool do_commit) {
  /* an update that wrote its variable in place cannot be taken back */
  PTC_ASSERT(do_commit || !p->has_in_place);
  int rc = 0;
  p->npend = 0;
  p->mem.run_peak = 0;
  p->nlive_v = 0;
  if (p->opts.arena) p->arena = p->opts.arena->base; /* another program may have grown it */
  const ptc_liveness *lv = &p->live_plan;
  for (int32_t i = 0; p->gp && i < p->f->nargs && rc == 0; i++)
    rc = ptrt_cuda_upload(p->env.gpu, p->env.ctx, p->d_arg[i], p->arg_buf[i],
                          p->bytes[p->f->args[i]]);
  for (int32_t i = 0; i < p->nops && rc == 0; i++) {
    if (!lv->run[i]) continue;
    const ptc_group_sig *sig = p->fused ? ptrt_fused_group_at(p->fused, i)
                               : p->gp ? ptrt_cuda_prog_group_at(p->gp, i) : NULL;
    if (sig) {
      rc = run_group(p, sig);
      i = sig->end - 1; /* liveness frees the group's buffers after its last op */
    } else {
      rc = run_op(p, i, do_commit);
    }
    for (int32_t k = lv->free_at[i]; k < lv->free_at[i + 1]; k++) release(p, lv->free_idx[k]);
  }
  if (rc == 0)
    for (int32_t i = 0; i < p->npend; i++) commit(p, p->pend[i].param, p->pend[i].data);
  if (p->gp && rc == 0) rc = ptrt_cuda_prog_finish(p->gp); /* waits for the GPU */
  /* snapshots, and the values kept for the end (after an error: everything
   * still live) go back now */
  for (int32_t i = 0; i < p->npend; i++)
    if (p->pend[i].owned) note_live(p, -p->pend[i].bytes, 0);
  for (int32_t v = 0; v < p->nv; v++)
    if (p->held[v]) release(p, v);
  p->npend = 0;
  return rc;
}

/* ---- profile and costs ----------------------------------------------- */

void ptrt_program_print_profile(const ptrt_program *p, FILE *out) {
  double total = p->prof_fused_s;
  for (int i = 0; i < PTC_OP_COUNT; i++) total += p->prof_s[i];
  if (total <= 0) return;
  int order[PTC_OP_COUNT];
  for (int i = 0; i < PTC_OP_COUNT; i++) order[i] = i;
  for (int i = 1; i < PTC_OP_COUNT; i++) /* insertion sort by time, descending */
    for (int j = i; j > 0 && p->prof_s[order[j]] > p->prof_s[order[j - 1]]; j--) {
      int t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
  fprintf(out, "time by op kind (all runs):\n");
  bool fused_done = p->prof_fused_s <= 0;
  for (int i = 0; i < PTC_OP_COUNT && p->prof_s[order[i]] > 0; i++) {
    int c = order[i];
    if (!fused_done && p->prof_fused_s >= p->prof_s[c]) {
      fprintf(out, "  %-20s %10.1f ms %5.1f%%  %lld calls\n", "fused groups",
              1e3 * p->prof_fused_s, 100 * p->prof_fused_s / total,
              (long long)p->prof_fused_n);
      fused_done = true;
    }
    fprintf(out, "  %-20s %10.1f ms %5.1f%%  %lld calls\n",
            ptc_opinfo_get((ptc_opcode)c)->name, 1e3 * p->prof_s[c],
            100 * p->prof_s[c] / total, (long long)p->prof_n[c]);
  }
  if (!fused_done)
    fprintf(out, "  %-20s %10.1f ms %5.1f%%  %lld calls\n", "fused groups",
            1e3 * p->prof_fused_s, 100 * p->prof_fused_s / total,
            (long long)p->prof_fused_n);
}

double ptrt_func_flops(const ptc_func *f) { return ptc_func_flops(f); }
