/* liveness.c -- where each value of a function lives while it runs op by
 * op, and when each buffer can be given back.
 *
 * One analysis serves two readers: ptrun's executor (runtime/exec.c), which
 * allocates and frees by it, and the plan's report (plan.c), which states
 * the arena size it implies -- so the report's figure is the peak ptrun
 * measures.  The plan is static: every transient buffer gets a byte offset
 * in one arena (place() below), which ptrun allocates once.
 *
 * Rules:
 *  - Arguments and variables (params, state) have storage of their own and
 *    are never freed; every other value is "transient": a buffer from its
 *    definition to its last reader.
 *  - reshape aliases its operand (same buffer, a new type).
 *  - With in_place, an optimizer update writes straight into its variable
 *    when the new value's only use is `assign @v` and nothing reads @v after
 *    the update: the result aliases @v and the assign has nothing to do.
 *  - `assign @v, %x` commits at its op when nothing after it reads @v, else
 *    at the end of the run; then %x stays live to the end (or, when %x is
 *    not transient and might change, a snapshot of it is taken at the op).
 *  - With loss_only, only the ops the first result depends on run (a step
 *    function evaluated for its loss: no backward pass, no updates).
 *  - With groups (the `fuse` pass's `group = N` runs, executed as one
 *    kernel call each: runtime/fused.c), a value defined in a group and
 *    read by no op outside it lives only in the kernel's registers and gets
 *    no buffer (PTC_LIVE_NONE).  The kernel writes all of a group's outputs
 *    in one call, so they are allocated when the group starts, and every
 *    buffer whose last reader is in the group is given back after its last
 *    op: for buffers, a group is one op.
 *  - Workspace: the CPU runtime computes in f32.  An op that computes (not
 *    one that only moves bytes, ptc_op_moves_bytes) with a bf16 or f16
 *    operand or result runs its f32 kernel on f32 copies: each 16-bit
 *    float operand is widened into scratch, each 16-bit result is computed
 *    into scratch and rounded into its buffer (runtime/exec.c).  That
 *    scratch is the op's `workspace` (its 16-bit operands' and results'
 *    elements times 4 bytes, each rounded up to 64); the function's
 *    `workspace_peak` is the largest, and sits in the same arena after
 *    every buffer, at `workspace_offset`: one region, reused by every op.
 *    Ops inside a fused group and ops that do not run need none.  `total`
 *    is the arena's whole size, buffers and workspace.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/codegen.h"

static int32_t root_of(const int32_t *root, int32_t v) {
  while (root[v] != v) v = root[v];
  return v;
}

/* For op code, the operand a result may overwrite in place (-1: none). */
static int in_place_operand(ptc_opcode code, int32_t result) {
  switch (code) {
  case PTC_OP_ADAMW: return result == 0 ? 0 : result == 1 ? 2 : result == 2 ? 3 : -1;
  case PTC_OP_SGD: return result == 0 ? 0 : result == 1 ? 2 : -1;
  default: return -1;
  }
}

/* Marks the ops the first result needs (loss_only). */
static void loss_cone(const ptc_func *f, bool *run) {
  bool *need = ptc_xcalloc((size_t)f->nvalues + 1, sizeof *need);
  const ptc_op *ret = &f->ops[f->nops - 1];
  if (ret->nin > 0) need[ret->in[0]] = true;
  run[f->nops - 1] = true;
  for (int32_t i = f->nops - 2; i >= 0; i--) {
    const ptc_op *op = &f->ops[i];
    bool any = false;
    for (int32_t r = 0; r < op->nout && !any; r++) any = need[op->out[r]];
    if (!any) continue;
    run[i] = true;
    for (int32_t a = 0; a < op->nin; a++) need[op->in[a]] = true;
  }
  free(need);
}

/* Number of reads of each value (operands of ops that run). */
static int32_t *use_counts(const ptc_func *f, const bool *run) {
  int32_t *n = ptc_xcalloc((size_t)f->nvalues + 1, sizeof *n);
  for (int32_t i = 0; i < f->nops; i++)
    if (run[i])
      for (int32_t a = 0; a < f->ops[i].nin; a++) n[f->ops[i].in[a]]++;
  return n;
}

/* Whether any op after `after` (that runs) reads the buffer `root`, other
 * than as the variable an assign writes. */
static bool read_after(const ptc_func *f, const ptc_liveness *l, int32_t root, int32_t after) {
  for (int32_t k = after + 1; k < f->nops; k++) {
    if (!l->run[k]) continue;
    const ptc_op *o = &f->ops[k];
    for (int32_t a = 0; a < o->nin; a++) {
      if (o->code == PTC_OP_ASSIGN && a == 0) continue;
      if (l->loss_only && o->code == PTC_OP_RETURN && a > 0) continue;
      if (root_of(l->root, o->in[a]) == root) return true;
    }
  }
  return false;
}

/* The single assign that consumes value v, or -1. */
static int32_t sole_assign(const ptc_func *f, const bool *run, const int32_t *uses, int32_t v,
                           int32_t from) {
  if (uses[v] != 1) return -1;
  for (int32_t k = from + 1; k < f->nops; k++) {
    if (!run[k]) continue;
    const ptc_op *o = &f->ops[k];
    for (int32_t a = 0; a < o->nin; a++)
      if (o->in[a] == v) return o->code == PTC_OP_ASSIGN && a == 1 ? k : -1;
  }
  return -1;
}

/* Per op: the index of the last op of its group, or the op itself. */
static int32_t *group_last_ops(const ptc_func *f) {
  int32_t *eff = ptc_xmalloc(((size_t)f->nops + 1) * sizeof *eff);
  for (int32_t i = 0; i < f->nops;) {
    int64_t g = ptc_op_group(&f->ops[i]);
    int32_t j = i + 1;
    if (g >= 0)
      while (j < f->nops && ptc_op_group(&f->ops[j]) == g) j++;
    for (int32_t k = i; k < j; k++) eff[k] = j - 1;
    i = j;
  }
  return eff;
}

/* Values defined in a group and read by no op outside it: no buffer. */
static void mark_group_internal(const ptc_func *f, const int32_t *eff, int8_t *where) {
  bool *outside = ptc_xcalloc((size_t)f->nvalues + 1, sizeof *outside);
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    for (int32_t a = 0; a < op->nin; a++) {
      const ptc_value *v = &f->values[op->in[a]];
      /* read by a lone op or by an op of another group */
      if (v->kind != PTC_VALUE_OP || ptc_op_group(op) < 0 || eff[v->def] != eff[i])
        outside[op->in[a]] = true;
    }
  }
  for (int32_t i = 0; i < f->nops; i++) {
    if (ptc_op_group(&f->ops[i]) < 0) continue;
    for (int32_t r = 0; r < f->ops[i].nout; r++)
      if (!outside[f->ops[i].out[r]]) where[f->ops[i].out[r]] = PTC_LIVE_NONE;
  }
  free(outside);
}

static void place(ptc_liveness *l, const ptc_func *f);

static bool is_half(ptc_dtype t) { return t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16; }

bool ptc_op_moves_bytes(ptc_opcode code) {
  switch (code) {
  case PTC_OP_CONSTANT:   /* writes the rounded value itself */
  case PTC_OP_CAST:       /* converts between any dtypes itself */
  case PTC_OP_RESHAPE:
  case PTC_OP_TRANSPOSE:
  case PTC_OP_SLICE:
  case PTC_OP_PAD:
  case PTC_OP_CONCAT:
  case PTC_OP_BROADCAST_TO:
  case PTC_OP_SHARD:
  case PTC_OP_TO_PARTIAL:
  case PTC_OP_ALL_GATHER:
  case PTC_OP_BROADCAST:
  case PTC_OP_ALL_REDUCE:     /* the communicator reduces 16-bit buffers */
  case PTC_OP_REDUCE_SCATTER: /* in f32 itself (ptrt_comm) */
  case PTC_OP_SEND:
  case PTC_OP_RECV:
  case PTC_OP_ASSIGN:
  case PTC_OP_RETURN: return true;
  default: return false;
  }
}

static int64_t align_up(int64_t x);

int64_t ptc_op_workspace(const ptc_func *f, const ptc_op *op) {
  if (ptc_op_moves_bytes(op->code)) return 0;
  int64_t n = 0;
  for (int32_t k = 0; k < op->nin + op->nout; k++) {
    const ptc_type *t = &f->values[k < op->nin ? op->in[k] : op->out[k - op->nin]].type;
    if (is_half(t->dtype)) n += align_up(ptc_type_numel(t) * 4);
  }
  return n;
}

void ptc_liveness_compute(ptc_liveness *l, const ptc_func *f, bool in_place, bool loss_only,
                          bool groups) {
  memset(l, 0, sizeof *l);
  /* a group runs whole or not at all: a loss-only run goes op by op */
  PTC_ASSERT(!(groups && loss_only));
  int32_t nv = f->nvalues, no = f->nops;
  l->nvalues = nv;
  l->nops = no;
  l->loss_only = loss_only;
  l->run = ptc_xcalloc((size_t)no + 1, sizeof *l->run);
  l->root = ptc_xcalloc((size_t)nv + 1, sizeof *l->root);
  l->where = ptc_xcalloc((size_t)nv + 1, sizeof *l->where);
  l->last = ptc_xcalloc((size_t)nv + 1, sizeof *l->last);
  l->assign = ptc_xcalloc((size_t)no + 1, sizeof *l->assign);
  l->snapshot = ptc_xcalloc((size_t)no + 1, sizeof *l->snapshot);
  l->free_at = ptc_xcalloc((size_t)no + 2, sizeof *l->free_at);
  l->first = ptc_xcalloc((size_t)nv + 1, sizeof *l->first);
  l->offset = ptc_xcalloc((size_t)nv + 1, sizeof *l->offset);
  l->snap_offset = ptc_xcalloc((size_t)no + 1, sizeof *l->snap_offset);
  l->workspace = ptc_xcalloc((size_t)no + 1, sizeof *l->workspace);
  if (loss_only) {
    loss_cone(f, l->run);
  } else {
    for (int32_t i = 0; i < no; i++) l->run[i] = true;
  }
  for (int32_t v = 0; v < nv; v++) {
    l->root[v] = v;
    l->last[v] = -1;
    ptc_value_kind k = f->values[v].kind;
    l->where[v] = k == PTC_VALUE_PARAM ? PTC_LIVE_VAR
                  : k == PTC_VALUE_ARG ? PTC_LIVE_ARG : PTC_LIVE_TRANSIENT;
  }
  for (int32_t i = 0; i < no; i++)
    if (l->run[i] && f->ops[i].code == PTC_OP_RESHAPE) l->root[f->ops[i].out[0]] = f->ops[i].in[0];
  /* eff[i]: where op i's reads and writes end, for buffers */
  int32_t *eff = NULL;
  if (groups) {
    eff = group_last_ops(f);
    mark_group_internal(f, eff, l->where);
  }

  /* in-place updates: the result takes its variable's storage */
  if (in_place && !loss_only) {
    int32_t *uses = use_counts(f, l->run);
    for (int32_t i = 0; i < no; i++) {
      const ptc_op *op = &f->ops[i];
      for (int32_t r = 0; r < op->nout; r++) {
        int k = in_place_operand(op->code, r);
        if (k < 0) continue;
        int32_t var = op->in[k];
        if (f->values[var].kind != PTC_VALUE_PARAM) continue;
        int32_t j = sole_assign(f, l->run, uses, op->out[r], i);
        if (j < 0 || root_of(l->root, f->ops[j].in[0]) != var) continue;
        if (read_after(f, l, var, i)) continue;
        l->root[op->out[r]] = var;
        l->assign[j] = PTC_ASSIGN_IN_PLACE;
      }
    }
    free(uses);
  }

  /* last readers */
  int32_t gfirst = 0; /* the first op of op i's group (or i) */
  for (int32_t i = 0; i < no; i++) {
    if (!eff || i == 0 || eff[i] != eff[i - 1]) gfirst = i;
    if (!l->run[i]) continue;
    const ptc_op *op = &f->ops[i];
    int32_t nin = loss_only && op->code == PTC_OP_RETURN && op->nin > 0 ? 1 : op->nin;
    for (int32_t k = 0; k < op->nout + nin; k++) {
      int32_t r = root_of(l->root, k < op->nout ? op->out[k] : op->in[k - op->nout]);
      int32_t at = eff ? eff[i] : i;
      if (l->where[r] == PTC_LIVE_TRANSIENT && l->last[r] < at) l->last[r] = at;
    }
    /* a group's outputs are allocated when the group starts */
    for (int32_t k = 0; k < op->nout; k++)
      if (ptc_liveness_allocates(l, op->out[k])) l->first[op->out[k]] = gfirst;
  }
  /* f32 scratch of the ops that run on their own (none on a GPU: its
   * kernels widen 16-bit values in registers; ptc sets `device = "gpu"` for
   * a cuda target) */
  const ptc_attr *dev = ptc_module_get_attr(f->mod, "device");
  bool gpu = dev && dev->kind == PTC_ATTR_STR && strcmp(dev->u.s, "gpu") == 0;
  for (int32_t i = 0; i < no && !gpu; i++) {
    if (!l->run[i] || (eff && ptc_op_group(&f->ops[i]) >= 0)) continue;
    l->workspace[i] = ptc_op_workspace(f, &f->ops[i]);
    if (l->workspace[i] > l->workspace_peak) l->workspace_peak = l->workspace[i];
  }
  free(eff);
  /* when each assign commits */
  for (int32_t i = 0; i < no; i++) {
    const ptc_op *op = &f->ops[i];
    if (!l->run[i] || op->code != PTC_OP_ASSIGN || l->assign[i] == PTC_ASSIGN_IN_PLACE) continue;
    int32_t var = root_of(l->root, op->in[0]);
    if (!read_after(f, l, var, i)) {
      l->assign[i] = PTC_ASSIGN_NOW;
      continue;
    }
    int32_t src = root_of(l->root, op->in[1]);
    if (l->where[src] == PTC_LIVE_TRANSIENT) {
      l->assign[i] = PTC_ASSIGN_AT_END;
      l->last[src] = PTC_LIVE_END;
    } else {
      l->assign[i] = PTC_ASSIGN_SNAPSHOT;
      l->snapshot[i] = ptc_type_bytes(&f->values[op->in[1]].type);
    }
  }
  /* buffers given back after each op (CSR) */
  int32_t *count = ptc_xcalloc((size_t)no + 1, sizeof *count);
  for (int32_t v = 0; v < nv; v++)
    if (l->root[v] == v && l->where[v] == PTC_LIVE_TRANSIENT && l->last[v] >= 0)
      count[l->last[v]]++;
  for (int32_t i = 0; i < no; i++) l->free_at[i + 1] = l->free_at[i] + count[i];
  l->free_idx = ptc_xcalloc((size_t)l->free_at[no] + 1, sizeof *l->free_idx);
  memset(count, 0, ((size_t)no + 1) * sizeof *count);
  for (int32_t v = 0; v < nv; v++)
    if (l->root[v] == v && l->where[v] == PTC_LIVE_TRANSIENT && l->last[v] >= 0)
      l->free_idx[l->free_at[l->last[v]] + count[l->last[v]]++] = v;
  free(count);
  place(l, f);
}

/* ---- the static plan: one arena, an offset per buffer ------------------ */

typedef struct lbuf {
  int64_t bytes, off;
  int32_t start, end; /* ops, inclusive: allocated before start, freed after end */
  int32_t id;         /* a root value, or -(op + 1) for an assign's snapshot */
} lbuf;

enum { ARENA_ALIGN = 64 };

static int64_t align_up(int64_t x) { return (x + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }

/* Every buffer of the plan, with its lifetime (offsets not filled in). */
static lbuf *collect(const ptc_liveness *l, const ptc_func *f, int32_t *n) {
  lbuf *b = ptc_xcalloc((size_t)l->nvalues + (size_t)l->nops + 1, sizeof *b);
  int32_t k = 0;
  for (int32_t v = 0; v < l->nvalues; v++)
    if (ptc_liveness_allocates(l, v) && l->last[v] != -1)
      b[k++] = (lbuf){ptc_type_bytes(&f->values[v].type), -1, l->first[v],
                      l->last[v] == PTC_LIVE_END ? l->nops : l->last[v], v};
  for (int32_t i = 0; i < l->nops; i++)
    if (l->run[i] && l->assign[i] == PTC_ASSIGN_SNAPSHOT)
      b[k++] = (lbuf){l->snapshot[i], -1, i, l->nops, -(i + 1)};
  *n = k;
  return b;
}

static bool lives_meet(const lbuf *a, const lbuf *b) {
  return a->start <= b->end && b->start <= a->end;
}

/* Largest first, then earliest: a deterministic order for placing. */
static int by_size(const void *pa, const void *pb) {
  const lbuf *a = pa, *b = pb;
  if (a->bytes != b->bytes) return a->bytes > b->bytes ? -1 : 1;
  if (a->start != b->start) return a->start < b->start ? -1 : 1;
  return a->id < b->id ? -1 : a->id > b->id;
}

static int by_off(const void *pa, const void *pb) {
  const lbuf *a = *(const lbuf *const *)pa, *b = *(const lbuf *const *)pb;
  return a->off < b->off ? -1 : a->off > b->off;
}

/* Greedy placement: each buffer, largest first, goes at the lowest aligned
 * offset clear of every placed buffer whose lifetime meets its own.  Sets
 * offset, snap_offset and peak (the arena's size). */
static void place(ptc_liveness *l, const ptc_func *f) {
  int32_t n;
  lbuf *b = collect(l, f, &n);
  qsort(b, (size_t)n, sizeof *b, by_size);
  const lbuf **near = ptc_xcalloc((size_t)n + 1, sizeof *near);
  l->peak = 0;
  for (int32_t i = 0; i < n; i++) {
    int32_t m = 0;
    for (int32_t j = 0; j < i; j++)
      if (lives_meet(&b[i], &b[j])) near[m++] = &b[j];
    qsort(near, (size_t)m, sizeof *near, by_off);
    int64_t at = 0;
    for (int32_t j = 0; j < m; j++) {
      if (at + b[i].bytes <= near[j]->off) break; /* fits in the gap before it */
      int64_t end = align_up(near[j]->off + near[j]->bytes);
      if (end > at) at = end;
    }
    b[i].off = at;
    if (at + b[i].bytes > l->peak) l->peak = at + b[i].bytes;
  }
  for (int32_t v = 0; v < l->nvalues; v++) l->offset[v] = -1;
  l->workspace_offset = l->workspace_peak > 0 ? align_up(l->peak) : l->peak;
  l->total = l->workspace_offset + l->workspace_peak;
  for (int32_t i = 0; i < n; i++) {
    if (b[i].id >= 0) l->offset[b[i].id] = b[i].off;
    else l->snap_offset[-b[i].id - 1] = b[i].off;
  }
  /* views and in-place results share their target's offset */
  for (int32_t v = 0; v < l->nvalues; v++)
    if (l->where[v] == PTC_LIVE_TRANSIENT) l->offset[v] = l->offset[root_of(l->root, v)];
  free(near);
  free(b);
}

int32_t ptc_liveness_check_overlap(const ptc_liveness *l, const ptc_func *f, char *why,
                                   size_t len) {
  int32_t n, bad = 0;
  lbuf *b = collect(l, f, &n);
  for (int32_t i = 0; i < n; i++)
    b[i].off = b[i].id >= 0 ? l->offset[b[i].id] : l->snap_offset[-b[i].id - 1];
  if (why && len) why[0] = 0;
  for (int32_t i = 0; i < n; i++) {
    if (b[i].off < 0 || b[i].off % ARENA_ALIGN || b[i].off + b[i].bytes > l->peak) {
      if (!bad++ && why)
        snprintf(why, len, "buffer %d at offset %lld (%lld bytes) is outside the %lld-byte "
                 "arena or not %d-byte aligned", b[i].id, (long long)b[i].off,
                 (long long)b[i].bytes, (long long)l->peak, ARENA_ALIGN);
      continue;
    }
    for (int32_t j = i + 1; j < n; j++)
      if (lives_meet(&b[i], &b[j]) && b[i].bytes > 0 && b[j].bytes > 0 &&
          b[i].off < b[j].off + b[j].bytes && b[j].off < b[i].off + b[i].bytes &&
          !bad++ && why)
        snprintf(why, len, "buffers %d [ops %d..%d, bytes %lld..%lld) and %d [ops %d..%d, "
                 "bytes %lld..%lld) overlap", b[i].id, b[i].start, b[i].end,
                 (long long)b[i].off, (long long)(b[i].off + b[i].bytes), b[j].id, b[j].start,
                 b[j].end, (long long)b[j].off, (long long)(b[j].off + b[j].bytes));
  }
  /* an alias must sit where its target does */
  for (int32_t v = 0; v < l->nvalues; v++)
    if (l->where[v] == PTC_LIVE_TRANSIENT && l->offset[v] != l->offset[root_of(l->root, v)] &&
        !bad++ && why)
      snprintf(why, len, "value %d is not at its buffer's offset", v);
  free(b);
  return bad;
}

bool ptc_liveness_allocates(const ptc_liveness *l, int32_t v) {
  return l->root[v] == v && l->where[v] == PTC_LIVE_TRANSIENT;
}

int32_t ptc_liveness_root(const ptc_liveness *l, int32_t v) { return root_of(l->root, v); }

void ptc_liveness_fini(ptc_liveness *l) {
  free(l->run);
  free(l->root);
  free(l->where);
  free(l->last);
  free(l->assign);
  free(l->snapshot);
  free(l->free_at);
  free(l->free_idx);
  free(l->first);
  free(l->offset);
  free(l->snap_offset);
  free(l->workspace);
  memset(l, 0, sizeof *l);
}

int64_t ptc_plan_transient_peak(const ptc_func *f) {
  ptc_liveness l;
  ptc_liveness_compute(&l, f, true, false, true);
  int64_t p = l.total;
  ptc_liveness_fini(&l);
  return p;
}
