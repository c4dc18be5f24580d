/* group.c -- fused groups: the analysis every consumer of a group shares.
 *
 * A group (ir.h) is a run of ops tagged `group = N` that becomes one
 * kernel.  This file decides whether a run of ops can be one kernel and,
 * if so, derives everything about it: the iteration shape, whether the
 * kernel walks elements or rows, its inputs and outputs, and at which
 * level each value is computed (once, once per row, once per element, or
 * accumulated across the work).  The fuse pass asks it whether a run may
 * grow by one op; the verifier, codegen and the runtime ask it for the
 * signature of a group the IR already has.  One analysis, so they agree.
 *
 * The rules, in short (docs/fusion.md has the long form):
 *  - The iteration shape X is the largest type in the group.  Every value
 *    broadcasts to X (right-aligned, NumPy style), or, when an op works
 *    per row (cross_entropy's targets), to X's rows.
 *  - A group with a row op (softmax, layernorm, rmsnorm, cross_entropy,
 *    their gradients, a reduction over the last axis) is ROWWISE: one work
 *    item per row of X.  Otherwise it is ELEMENTWISE: one per element.
 *  - Inside the kernel a value is available only where it is computed: a
 *    per-row value can be read per element of its row, a per-element value
 *    cannot be read per row, and an accumulated value (a reduction across
 *    rows or elements) not at all until the kernel has finished.
 *  - What leaves the group must be written once per element (per-element
 *    values of shape X, per-row values of X's row shape, scalars), or be
 *    an accumulation the caller combines.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- which ops a group can hold ----------------------------------------- */

typedef enum fclass {
  FC_NONE,    /* stays a runtime op */
  FC_EW,      /* element-wise (with broadcasting), constant, broadcast_to */
  FC_ROW,     /* a row op over the last axis */
  FC_REDUCE,  /* reduce_sum / reduce_mean / reduce_max */
} fclass;

static fclass op_class(const ptc_func *f, const ptc_op *op) {
  switch (op->code) {
  case PTC_OP_ADD: case PTC_OP_SUB: case PTC_OP_MUL: case PTC_OP_DIV: case PTC_OP_MAXIMUM:
  case PTC_OP_NEG: case PTC_OP_EXP: case PTC_OP_LOG: case PTC_OP_SQRT: case PTC_OP_RSQRT:
  case PTC_OP_TANH: case PTC_OP_SIGMOID: case PTC_OP_RELU: case PTC_OP_GELU: case PTC_OP_SILU:
  case PTC_OP_CAST: case PTC_OP_COMPARE: case PTC_OP_RELU_GRAD: case PTC_OP_GELU_GRAD:
  case PTC_OP_SILU_GRAD: case PTC_OP_ADAMW: case PTC_OP_SGD: case PTC_OP_CONSTANT:
  case PTC_OP_BROADCAST_TO:
    return FC_EW;
  case PTC_OP_SOFTMAX:
  case PTC_OP_SOFTMAX_GRAD: {
    /* only over the last axis: the row a kernel iteration owns */
    const ptc_type *t = &f->values[op->in[op->code == PTC_OP_SOFTMAX ? 0 : 1]].type;
    return ptc_op_attr_int(op, "axis", -1) == t->rank - 1 ? FC_ROW : FC_NONE;
  }
  case PTC_OP_LAYERNORM: case PTC_OP_RMSNORM: case PTC_OP_CROSS_ENTROPY:
  case PTC_OP_LAYERNORM_GRAD: case PTC_OP_RMSNORM_GRAD: case PTC_OP_CROSS_ENTROPY_GRAD:
    return FC_ROW;
  case PTC_OP_REDUCE_SUM: case PTC_OP_REDUCE_MEAN: case PTC_OP_REDUCE_MAX:
    return FC_REDUCE;
  default:
    return FC_NONE;
  }
}

/* Ops whose kernels do integer arithmetic as well as f32. */
static bool int_capable(ptc_opcode c) {
  switch (c) {
  case PTC_OP_ADD: case PTC_OP_SUB: case PTC_OP_MUL: case PTC_OP_DIV: case PTC_OP_MAXIMUM:
  case PTC_OP_NEG: case PTC_OP_CAST: case PTC_OP_CONSTANT: case PTC_OP_BROADCAST_TO:
    return true;
  default:
    return false;
  }
}

static bool is_int(ptc_dtype t) { return t == PTC_DTYPE_I32 || t == PTC_DTYPE_I64; }
/* bf16 / f16: stored in 2 bytes, loaded into f32 and computed there; a
 * group's 16-bit outputs are rounded once, where the kernel stores them. */
static bool is_half(ptc_dtype t) { return t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16; }

/* Operand k of a row op is an index tensor (the targets). */
static bool is_index_operand(const ptc_op *op, int32_t k) {
  return (op->code == PTC_OP_CROSS_ENTROPY && k == 1) ||
         (op->code == PTC_OP_CROSS_ENTROPY_GRAD && k == 2);
}

static bool dtypes_ok(const ptc_func *f, const ptc_op *op) {
  bool ints = int_capable(op->code);
  for (int32_t k = 0; k < op->nin + op->nout; k++) {
    int32_t v = k < op->nin ? op->in[k] : op->out[k - op->nin];
    ptc_dtype t = f->values[v].type.dtype;
    if (t == PTC_DTYPE_F32 || is_half(t)) continue;
    if (is_int(t) && (ints || (k < op->nin && is_index_operand(op, k)))) continue;
    return false;
  }
  return true;
}

bool ptc_op_fusible(const ptc_func *f, const ptc_op *op) {
  return op_class(f, op) != FC_NONE && dtypes_ok(f, op);
}

int64_t ptc_op_group(const ptc_op *op) {
  const ptc_attr *a = ptc_op_attr(op, PTC_GROUP_ATTR);
  return a && a->kind == PTC_ATTR_INT ? a->u.i : -1;
}

void ptc_group_kernel_name(int64_t id, char *buf, size_t len) {
  snprintf(buf, len, "ptc_k%lld", (long long)id);
}

int32_t *ptc_func_last_use(const ptc_func *f) {
  int32_t *last = ptc_xmalloc(((size_t)f->nvalues + 1) * sizeof *last);
  for (int32_t v = 0; v < f->nvalues; v++) last[v] = -1;
  for (int32_t i = 0; i < f->nops; i++)
    for (int32_t k = 0; k < f->ops[i].nin; k++) last[f->ops[i].in[k]] = i;
  return last;
}

/* ---- shapes ----------------------------------------------------------------- */

/* a and b equal once leading 1s are dropped */
static bool same_shape(const ptc_type *a, const ptc_type *b) {
  int32_t ra = a->rank, rb = b->rank, ia = 0, ib = 0;
  while (ia < ra && a->dims[ia] == 1) ia++;
  while (ib < rb && b->dims[ib] == 1) ib++;
  if (ra - ia != rb - ib) return false;
  for (; ia < ra; ia++, ib++)
    if (a->dims[ia] != b->dims[ib]) return false;
  return true;
}

/* s broadcasts to t (right-aligned; extra leading dims of s must be 1) */
static bool bcasts_to(const ptc_type *s, const ptc_type *t) {
  for (int32_t d = 0; d < s->rank; d++) {
    int32_t td = t->rank - s->rank + d;
    int64_t sd = s->dims[d];
    if (td < 0) {
      if (sd != 1) return false;
    } else if (sd != 1 && sd != t->dims[td]) {
      return false;
    }
  }
  return true;
}

/* X without its last dim, and X with its last dim set to 1 */
static ptc_type rows_of(const ptc_type *x) {
  ptc_type r = *x;
  r.rank = x->rank - 1;
  return r;
}
static ptc_type rows_keep(const ptc_type *x) {
  ptc_type r = *x;
  r.dims[x->rank - 1] = 1;
  return r;
}

/* ---- the analysis ------------------------------------------------------------ */

typedef struct gan {
  ptc_func *f;
  int32_t first, end;
  const int32_t *last;
  ptc_group_sig *sig;
  ptc_type x, xrow, xkeep; /* the iteration shape and its row shapes */
  bool rowwise;
  char *why;
  size_t whylen;
  int32_t bad;
  bool solo; /* one op for a GPU kernel: 16-bit sums in f32 workspace */
} gan;

__attribute__((format(printf, 3, 4))) static int fail(gan *g, int32_t op, const char *fmt,
                                                      ...) {
  if (g->why && g->whylen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->why, g->whylen, fmt, ap);
    va_end(ap);
  }
  g->bad = op;
  return -1;
}

static bool internal(const gan *g, int32_t v) {
  const ptc_value *val = &g->f->values[v];
  return val->kind == PTC_VALUE_OP && val->def >= g->first && val->def < g->end;
}

static const ptc_type *ty(const gan *g, int32_t v) { return &g->f->values[v].type; }

static void tstr(char *buf, size_t n, const ptc_type *t) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_type_print(&b, t);
  snprintf(buf, n, "%s", b.data);
  ptc_buf_fini(&b);
}

static const char *opname(const ptc_op *op) { return ptc_opinfo_get(op->code)->name; }

/* Level of operand k of op read in `mode`, after checking that the read
 * is possible; -1 (with the reason) when not. */
static int read_level(gan *g, int32_t i, int32_t k, int mode) {
  const ptc_op *op = &g->f->ops[i];
  int32_t v = op->in[k];
  const ptc_type *t = ty(g, v);
  char s[128], xs[128];
  if (!internal(g, v)) {
    if (ptc_type_numel(t) == 1) return PTC_GROUP_SCALAR;
    const ptc_type *target = mode == PTC_GROUP_MODE_ROW ? &g->xrow : &g->x;
    if (!bcasts_to(t, target)) {
      tstr(s, sizeof s, t);
      tstr(xs, sizeof xs, target);
      return fail(g, i, "'%s' operand %d %s does not broadcast to the group's %s %s",
                  opname(op), k, s, mode == PTC_GROUP_MODE_ROW ? "rows" : "iteration shape",
                  xs);
    }
    if (mode == PTC_GROUP_MODE_ROW) return PTC_GROUP_ROW;
    /* read per element; constant along a row when its last dim is 1 */
    int64_t lastd = t->rank && g->rowwise ? t->dims[t->rank - 1] : 0;
    return g->rowwise && (t->rank == 0 || lastd == 1) ? PTC_GROUP_ROW : PTC_GROUP_ELEM;
  }
  int lv = g->sig->level[v];
  PTC_ASSERT(lv >= 0);
  if (lv == PTC_GROUP_ACC)
    return fail(g, i, "'%s' operand %d is a reduction across the group's work, which "
                "is complete only when the kernel ends", opname(op), k);
  if (lv == PTC_GROUP_SCALAR) return lv;
  if (mode == PTC_GROUP_MODE_FULL) {
    if (lv == PTC_GROUP_ELEM) return lv;
    if (same_shape(t, &g->xkeep)) return lv;
    tstr(s, sizeof s, t);
    return fail(g, i, "'%s' operand %d %s is computed once per row, but read per element "
                "it needs a size-1 last dimension", opname(op), k, s);
  }
  if (lv == PTC_GROUP_ELEM)
    return fail(g, i, "'%s' operand %d is computed per element but read once per row",
                opname(op), k);
  if (same_shape(t, &g->xrow)) return lv;
  tstr(s, sizeof s, t);
  tstr(xs, sizeof xs, &g->xrow);
  return fail(g, i, "'%s' operand %d %s is not shaped like the group's rows %s",
              opname(op), k, s, xs);
}

/* Notes v as an external input (first use order). */
static void note_input(gan *g, int32_t v) {
  if (internal(g, v) || g->sig->level[v] >= 0) return;
  g->sig->in[g->sig->nin++] = v;
}

static int elementwise(gan *g, int32_t i) {
  const ptc_op *op = &g->f->ops[i];
  ptc_group_sig *sig = g->sig;
  const ptc_type *o = ty(g, op->out[0]);
  char s[128], xs[128];
  int mode = PTC_GROUP_MODE_FULL, lv = PTC_GROUP_ELEM;
  if (op->code == PTC_OP_CONSTANT) {
    if (!bcasts_to(o, &g->x)) {
      tstr(s, sizeof s, o);
      tstr(xs, sizeof xs, &g->x);
      return fail(g, i, "constant %s does not broadcast to the group's iteration shape %s",
                  s, xs);
    }
    sig->level[op->out[0]] = PTC_GROUP_SCALAR;
    return 0;
  }
  bool all_scalar = true, row_input = false;
  for (int32_t k = 0; k < op->nin; k++) {
    int32_t v = op->in[k];
    if (ptc_type_numel(ty(g, v)) != 1 || (internal(g, v) && sig->level[v] != PTC_GROUP_SCALAR))
      all_scalar = false;
    if (internal(g, v) && sig->level[v] == PTC_GROUP_ROW && same_shape(ty(g, v), &g->xrow) &&
        !same_shape(ty(g, v), &g->xkeep))
      row_input = true;
  }
  if (ptc_type_numel(o) == 1 && all_scalar) {
    lv = PTC_GROUP_SCALAR;
  } else if (g->rowwise && same_shape(o, &g->xrow) && (row_input || !bcasts_to(o, &g->x))) {
    mode = PTC_GROUP_MODE_ROW;
    lv = PTC_GROUP_ROW;
  } else if (g->rowwise && same_shape(o, &g->xkeep) && !same_shape(o, &g->x)) {
    lv = PTC_GROUP_ROW;
  } else if (!bcasts_to(o, &g->x)) {
    tstr(s, sizeof s, o);
    tstr(xs, sizeof xs, &g->x);
    return fail(g, i, "'%s' result %s does not broadcast to the group's iteration shape %s",
                opname(op), s, xs);
  }
  sig->op_mode[i - g->first] = (uint8_t)mode;
  for (int32_t k = 0; k < op->nin; k++) {
    int rl = read_level(g, i, k, mode);
    if (rl < 0) return -1;
    bool factor = (op->code == PTC_OP_ADAMW && k >= 4) || (op->code == PTC_OP_SGD && k == 3);
    if (factor && rl != PTC_GROUP_SCALAR)
      return fail(g, i, "'%s': the learning rate and step must be single values",
                  opname(op));
    if (lv == PTC_GROUP_ROW && rl == PTC_GROUP_ELEM)
      return fail(g, i, "'%s' is computed once per row but operand %d varies along the row",
                  opname(op), k);
    note_input(g, op->in[k]);
    if (!internal(g, op->in[k]) && g->sig->level[op->in[k]] < 0)
      g->sig->level[op->in[k]] = (int8_t)rl;
  }
  for (int32_t r = 0; r < op->nout; r++) sig->level[op->out[r]] = (int8_t)lv;
  return 0;
}

static int row_op(gan *g, int32_t i) {
  const ptc_op *op = &g->f->ops[i];
  ptc_group_sig *sig = g->sig;
  char s[128], xs[128];
  if (!g->rowwise) PTC_UNREACHABLE();
  /* operand 0 is the gradient for the *_grad ops; the row operand follows */
  bool grad = op->code == PTC_OP_SOFTMAX_GRAD || op->code == PTC_OP_LAYERNORM_GRAD ||
              op->code == PTC_OP_RMSNORM_GRAD || op->code == PTC_OP_CROSS_ENTROPY_GRAD;
  int32_t main = grad ? 1 : 0;
  if (!same_shape(ty(g, op->in[main]), &g->x)) {
    tstr(s, sizeof s, ty(g, op->in[main]));
    tstr(xs, sizeof xs, &g->x);
    return fail(g, i, "'%s' works on rows of %s, not of the group's iteration shape %s",
                opname(op), s, xs);
  }
  for (int32_t k = 0; k < op->nin; k++) {
    int mode = is_index_operand(op, k) ? PTC_GROUP_MODE_ROW : PTC_GROUP_MODE_FULL;
    int rl = read_level(g, i, k, mode);
    if (rl < 0) return -1;
    if (op->code == PTC_OP_CROSS_ENTROPY_GRAD && k == 0 && rl != PTC_GROUP_SCALAR)
      return fail(g, i, "cross_entropy_grad: the loss gradient must be one value");
    note_input(g, op->in[k]);
    if (!internal(g, op->in[k]) && sig->level[op->in[k]] < 0) sig->level[op->in[k]] = (int8_t)rl;
  }
  for (int32_t r = 0; r < op->nout; r++) {
    bool acc = op->code == PTC_OP_CROSS_ENTROPY || r > 0; /* loss; dgamma, dbeta */
    sig->level[op->out[r]] = (int8_t)(acc ? PTC_GROUP_ACC : PTC_GROUP_ELEM);
  }
  return 0;
}

static bool is_row_reduction(const ptc_func *f, const ptc_op *op) {
  const ptc_attr *ax = ptc_op_attr(op, "axes");
  const ptc_type *t = &f->values[op->in[0]].type;
  return t->rank >= 2 && ax && ax->u.ints.n == 1 && ax->u.ints.v[0] == t->rank - 1;
}

static int reduce_op(gan *g, int32_t i) {
  const ptc_op *op = &g->f->ops[i];
  char s[128], xs[128];
  if (!same_shape(ty(g, op->in[0]), &g->x)) {
    tstr(s, sizeof s, ty(g, op->in[0]));
    tstr(xs, sizeof xs, &g->x);
    return fail(g, i, "'%s' reduces %s, not the group's iteration shape %s", opname(op), s,
                xs);
  }
  int rl = read_level(g, i, 0, PTC_GROUP_MODE_FULL);
  if (rl < 0) return -1;
  note_input(g, op->in[0]);
  if (!internal(g, op->in[0]) && g->sig->level[op->in[0]] < 0)
    g->sig->level[op->in[0]] = (int8_t)rl;
  bool row = g->rowwise && is_row_reduction(g->f, op);
  g->sig->level[op->out[0]] = (int8_t)(row ? PTC_GROUP_ROW : PTC_GROUP_ACC);
  return 0;
}

/* An accumulated output has one partial per chunk of work in the runtime;
 * it must be much smaller than the work for that to pay (docs/fusion.md). */
enum { ACC_MIN_RATIO = 8 };

static int outputs(gan *g) {
  ptc_group_sig *sig = g->sig;
  char s[128], xs[128];
  for (int32_t i = g->first; i < g->end; i++) {
    const ptc_op *op = &g->f->ops[i];
    for (int32_t r = 0; r < op->nout; r++) {
      int32_t v = op->out[r];
      int lv = sig->level[v];
      const ptc_type *t = ty(g, v);
      if (g->last[v] < g->end) continue; /* read inside the group only */
      if (lv == PTC_GROUP_ACC && !g->solo &&
          ptc_type_numel(t) * ACC_MIN_RATIO > ptc_type_numel(&g->x)) {
        tstr(s, sizeof s, t);
        tstr(xs, sizeof xs, &g->x);
        return fail(g, i, "'%s' result %s reduces the group's %s by less than %dx; a "
                    "runtime op does it better", opname(op), s, xs, ACC_MIN_RATIO);
      }
      bool ok = true;
      ptc_group_combine comb = PTC_GROUP_STORE;
      if (lv == PTC_GROUP_SCALAR && ptc_type_numel(t) != 1) {
        tstr(s, sizeof s, t);
        return fail(g, i, "'%s' result %s is read after the group, but the kernel computes "
                    "it once as a single value and cannot write it out as a tensor; leave "
                    "it out of the group", opname(op), s);
      }
      switch (lv) {
      case PTC_GROUP_SCALAR: ok = ptc_type_numel(t) == 1; break;
      case PTC_GROUP_ROW:
        ok = same_shape(t, &g->xrow) || same_shape(t, &g->xkeep);
        break;
      case PTC_GROUP_ELEM: ok = same_shape(t, &g->x); break;
      default:
        comb = op->code == PTC_OP_REDUCE_MAX ? PTC_GROUP_MAX : PTC_GROUP_SUM;
        if (is_half(t->dtype) && !g->solo) {
          tstr(s, sizeof s, t);
          return fail(g, i, "'%s' result %s is accumulated across the group's work in "
                      "f32 partials, which a 16-bit buffer cannot hold; leave the op out "
                      "of the group", opname(op), s);
        }
        break;
      }
      if (!ok) {
        tstr(s, sizeof s, t);
        tstr(xs, sizeof xs, &g->x);
        return fail(g, i, "'%s' result %s is read after the group but is neither shaped "
                    "like the iteration shape %s nor its rows: the kernel would write "
                    "it more than once", opname(op), s, xs);
      }
      sig->out[sig->nout] = v;
      sig->combine[sig->nout++] = comb;
    }
  }
  return 0;
}

void ptc_group_sig_fini(ptc_group_sig *sig) {
  free(sig->in);
  free(sig->out);
  free(sig->combine);
  free(sig->level);
  free(sig->op_mode);
  memset(sig, 0, sizeof *sig);
}

static int analyze(ptc_func *f, int32_t first, int32_t end, const int32_t *last_use,
                   ptc_group_sig *sig, char *why, size_t whylen, int32_t *bad_op, bool solo);

int ptc_group_analyze(ptc_func *f, int32_t first, int32_t end, const int32_t *last_use,
                      ptc_group_sig *sig, char *why, size_t whylen, int32_t *bad_op) {
  return analyze(f, first, end, last_use, sig, why, whylen, bad_op, false);
}

int ptc_group_analyze_solo(ptc_func *f, int32_t op, const int32_t *last_use, ptc_group_sig *sig) {
  return analyze(f, op, op + 1, last_use, sig, NULL, 0, NULL, true);
}

static int analyze(ptc_func *f, int32_t first, int32_t end, const int32_t *last_use,
                   ptc_group_sig *sig, char *why, size_t whylen, int32_t *bad_op, bool solo) {
  PTC_ASSERT(first >= 0 && first < end && end <= f->nops);
  memset(sig, 0, sizeof *sig);
  gan g = {.f = f, .first = first, .end = end, .last = last_use, .sig = sig,
           .why = why, .whylen = whylen, .bad = first, .solo = solo};
  if (why && whylen) why[0] = 0;
  int32_t *own_last = NULL;
  if (!g.last) g.last = own_last = ptc_func_last_use(f);
  int rc = -1;

  int32_t nio = 0;
  for (int32_t i = first; i < end; i++) nio += f->ops[i].nin + f->ops[i].nout;
  sig->id = ptc_op_group(&f->ops[first]);
  sig->first = first;
  sig->end = end;
  sig->row_len = 1;
  sig->in = ptc_xmalloc(((size_t)nio + 1) * sizeof *sig->in);
  sig->out = ptc_xmalloc(((size_t)nio + 1) * sizeof *sig->out);
  sig->combine = ptc_xmalloc(((size_t)nio + 1) * sizeof *sig->combine);
  sig->level = ptc_xmalloc(((size_t)f->nvalues + 1) * sizeof *sig->level);
  memset(sig->level, -1, (size_t)f->nvalues + 1);
  sig->op_mode = ptc_xcalloc((size_t)(end - first) + 1, 1);

  /* every op fusible; the iteration shape is the largest type (ties: the
   * higher rank, so [B,T,1] beats [B,T]) */
  const ptc_type *x = NULL;
  for (int32_t i = first; i < end; i++) {
    const ptc_op *op = &f->ops[i];
    if (!ptc_op_fusible(f, op)) {
      fail(&g, i, "'%s' cannot be part of a fused kernel (%s)", opname(op),
           op_class(f, op) == FC_NONE ? "it stays a runtime op"
                                      : "its dtypes are not f32, or i32/i64 indices");
      goto out;
    }
    fclass c = op_class(f, op);
    if (c == FC_ROW || (c == FC_REDUCE && is_row_reduction(f, op))) g.rowwise = true;
    for (int32_t k = 0; k < op->nin + op->nout; k++) {
      const ptc_type *t = ty(&g, k < op->nin ? op->in[k] : op->out[k - op->nin]);
      if (!x || ptc_type_numel(t) > ptc_type_numel(x) ||
          (ptc_type_numel(t) == ptc_type_numel(x) && t->rank > x->rank))
        x = t;
    }
  }
  g.x = *x;
  if (ptc_type_numel(&g.x) == 0) {
    fail(&g, first, "the group's iteration shape has no elements");
    goto out;
  }
  if (g.rowwise && g.x.rank == 0) PTC_UNREACHABLE(); /* row ops need rank >= 1 */
  if (g.rowwise) {
    g.xrow = rows_of(&g.x);
    g.xkeep = rows_keep(&g.x);
  } else {
    g.xrow = g.x;
    g.xkeep = g.x;
  }
  sig->kind = g.rowwise ? PTC_GROUP_ROWWISE : PTC_GROUP_ELEMENTWISE;
  sig->iter = g.x;
  sig->row_len = g.rowwise ? g.x.dims[g.x.rank - 1] : 1;
  sig->work = ptc_type_numel(&g.x) / sig->row_len;
  if (sig->row_len > INT32_MAX) { /* kernels index columns with 32 bits */
    fail(&g, first, "rows of %lld elements are too long for a kernel (at most 2^31 - 1)",
         (long long)sig->row_len);
    goto out;
  }

  for (int32_t i = first; i < end; i++) {
    const ptc_op *op = &f->ops[i];
    int r2 = 0;
    switch (op_class(f, op)) {
    case FC_EW: r2 = elementwise(&g, i); break;
    case FC_ROW: r2 = row_op(&g, i); break;
    case FC_REDUCE: r2 = reduce_op(&g, i); break;
    case FC_NONE: PTC_UNREACHABLE();
    }
    if (r2 < 0) goto out;
    sig->flops += ptc_op_cost(f, op).flops;
  }
  if (outputs(&g) < 0) goto out;
  for (int32_t k = 0; k < sig->nin; k++) sig->bytes += (double)ptc_type_bytes(ty(&g, sig->in[k]));
  for (int32_t k = 0; k < sig->nout; k++)
    sig->bytes += (double)ptc_type_bytes(ty(&g, sig->out[k]));
  rc = 0;
out:
  free(own_last);
  if (rc < 0) {
    if (bad_op) *bad_op = g.bad;
    ptc_group_sig_fini(sig);
  }
  return rc;
}

int ptc_group_signature(ptc_func *f, int32_t first_op, ptc_group_sig *sig) {
  int64_t id = ptc_op_group(&f->ops[first_op]);
  PTC_ASSERT(id >= 0);
  int32_t end = first_op + 1;
  while (end < f->nops && ptc_op_group(&f->ops[end]) == id) end++;
  char why[512];
  int32_t bad = first_op;
  if (ptc_group_analyze(f, first_op, end, NULL, sig, why, sizeof why, &bad) == 0) return 0;
  ptc_error(f->mod->ctx, f->ops[bad].loc, "group %lld cannot be one kernel: %s", (long long)id,
            why);
  return -1;
}

int ptc_group_verify(ptc_func *f) {
  /* ids seen so far, to catch a group split in two runs */
  int32_t nseen = 0, cap = 0;
  int64_t *seen = NULL;
  int32_t *seen_at = NULL;
  int32_t *last = NULL;
  int rc = -1;
  for (int32_t i = 0; i < f->nops;) {
    int64_t id = ptc_op_group(&f->ops[i]);
    const ptc_attr *a = ptc_op_attr(&f->ops[i], PTC_GROUP_ATTR);
    if (id < 0) {
      if (a) {
        ptc_error(f->mod->ctx, f->ops[i].loc, "'%s': group must be an integer >= 0",
                  opname(&f->ops[i]));
        goto out;
      }
      i++;
      continue;
    }
    for (int32_t k = 0; k < nseen; k++)
      if (seen[k] == id) {
        ptc_error(f->mod->ctx, f->ops[i].loc, "group %lld is not contiguous: a group is one "
                  "run of ops", (long long)id);
        ptc_note(f->mod->ctx, f->ops[seen_at[k]].loc, "its first run starts here");
        goto out;
      }
    if (nseen == cap) {
      cap = cap ? 2 * cap : 16;
      seen = ptc_xrealloc(seen, (size_t)cap * sizeof *seen);
      seen_at = ptc_xrealloc(seen_at, (size_t)cap * sizeof *seen_at);
    }
    seen[nseen] = id;
    seen_at[nseen++] = i;
    int32_t end = i + 1;
    while (end < f->nops && ptc_op_group(&f->ops[end]) == id) end++;
    if (!last) last = ptc_func_last_use(f);
    ptc_group_sig sig;
    char why[512];
    int32_t bad = i;
    if (ptc_group_analyze(f, i, end, last, &sig, why, sizeof why, &bad) < 0) {
      ptc_error(f->mod->ctx, f->ops[bad].loc, "group %lld cannot be one kernel: %s",
                (long long)id, why);
      goto out;
    }
    ptc_group_sig_fini(&sig);
    i = end;
  }
  rc = 0;
out:
  free(seen);
  free(seen_at);
  free(last);
  return rc;
}
