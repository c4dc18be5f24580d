/* cuda_emit.c -- CUDA C for a module: one __global__ function per fused
 * group, attention kernels, the multi-tensor AdamW, and the records of the
 * matrix products (cuBLASLt calls).
 *
 * A group's kernel takes its buffers as pointers in signature order
 * (ptc_group_sig: inputs, then outputs), then `int *status`.  Its shapes
 * are constants.  The arithmetic of every op is printed from its
 * description (codegen/opmath.h), the same one the LLVM emitter uses; what
 * is here is the loop nest:
 *
 *   ELEMENTWISE: a grid-stride loop over the elements of the iteration
 *     shape X; each element's coordinates give every operand's offset
 *     (stride 0 where it broadcasts).
 *   ROWWISE: one block per row (grid-stride over rows); each row op's
 *     phases are loops of the block's threads over the row's columns,
 *     combined by warp shuffles and shared memory; softmax and
 *     cross-entropy take the max and the sum of exponentials in one pass
 *     (an online max).  Per-row values are computed by every thread; per-
 *     element values, on demand in each loop that needs them (recomputed,
 *     not stored: a row is in L1/L2).
 *
 * Values live where their level (ptc_group_level) says: SCALAR ones once
 * per thread at the start, ROW ones once per row, ELEM ones per element.
 * Outputs: ELEM stored at their element; ROW ones by thread 0 of the row's
 * block; SCALAR ones by thread 0 of block 0; accumulations (SUM / MAX) are
 * combined into what the buffer holds (the runtime fills it with 0 or
 * -inf first) with atomics: per element, or, when the whole output is one
 * value, per block after a block reduction.  So sums across blocks are
 * not in a fixed order (unlike the CPU kernels).
 *
 * Loads and stores go through ptc_ld / ptc_st, overloaded by pointer type,
 * so a 16-bit buffer is read into f32 and written rounded to nearest even;
 * arithmetic is f32 (i32 / i64 for integer ops).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/cuda_internal.h"
#include "codegen/opmath.h"

enum { FULL = PTC_GROUP_MODE_FULL, ROWM = PTC_GROUP_MODE_ROW };

typedef struct nm {
  char s[40];
} nm;

typedef struct cmap {
  bool used;
  int64_t st[PTC_MAX_RANK]; /* per dim of X (FULL) or of X's rows (ROW) */
} cmap;

typedef struct ce {
  ptc_buf *b;
  ptc_func *f;
  const ptc_group_sig *sig;
  bool rowwise;
  ptc_type x;
  int64_t L, rows;
  int64_t period; /* ELEMENTWISE: accumulated outputs summed in registers (acc_period), or 0 */
  int64_t cols;   /* ROWWISE: the same per column, columns per thread (acc_cols), or 0 */
  int32_t *in_slot, *out_slot;
  bool *need;
  cmap *map[2];
  nm *scal, *rowv;
  nm (*stat)[PTC_OM_MAX_STATS];
  nm (*aux)[PTC_OM_MAX_OUT];
  ptc_om_rowop **desc; /* per op of the group: row op descriptions */
  int tmp;
  int ind;
  bool shared_used;
} ce;

typedef struct cpos {
  const char *j; /* the column (ROWWISE) */
  nm *cache;     /* [nvalues] */
} cpos;

static void line(ce *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void line(ce *c, const char *fmt, ...) {
  for (int i = 0; i < c->ind; i++) ptc_buf_puts(c->b, "  ");
  va_list ap;
  va_start(ap, fmt);
  char tmp[1024];
  vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  ptc_buf_puts(c->b, tmp);
  ptc_buf_puts(c->b, "\n");
}

static void fresh(ce *c, nm *n) { snprintf(n->s, sizeof n->s, "t%d", c->tmp++); }

static const char *ctype(ptc_dtype t) {
  switch (t) {
  case PTC_DTYPE_F32: return "float";
  case PTC_DTYPE_F64: return "double";
  case PTC_DTYPE_BF16: return "__nv_bfloat16";
  case PTC_DTYPE_F16: return "__half";
  case PTC_DTYPE_I32: return "int";
  case PTC_DTYPE_I64: return "long long";
  default: return "void";
  }
}
/* the type a loaded value has in the kernel */
static const char *vtype(ptc_dtype t) {
  return t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16 ? "float" : ctype(t);
}

static void literal(nm *n, ptc_dtype dt, double v) {
  if (dt == PTC_DTYPE_F32 || dt == PTC_DTYPE_F64) {
    if (isnan(v)) snprintf(n->s, sizeof n->s, "PTC_NAN");
    else if (isinf(v)) snprintf(n->s, sizeof n->s, "%sPTC_INF", v < 0 ? "-" : "");
    else if (dt == PTC_DTYPE_F32) snprintf(n->s, sizeof n->s, "%.9gf", (double)(float)v);
    else snprintf(n->s, sizeof n->s, "%.17g", v);
    if (!isnan(v) && !isinf(v) && !strpbrk(n->s, ".eE")) { /* 2f is not a float literal */
      size_t l = strlen(n->s);
      if (dt == PTC_DTYPE_F32) memcpy(n->s + l - 1, ".0f", 4);
      else memcpy(n->s + l, ".0", 3);
    }
    if (dt == PTC_DTYPE_F64 && isinf(v)) snprintf(n->s, sizeof n->s, "(double)%sPTC_INF", v < 0 ? "-" : "");
  } else {
    snprintf(n->s, sizeof n->s, "(%s)%lldLL", ctype(dt), (long long)v);
  }
}

/* ---- printing a program ----------------------------------------------------- */

typedef struct prog_env {
  /* operand a (at column col when col is not NULL) into out */
  void (*in)(ce *c, void *cl, int a, const char *col, nm *out);
  void *cl;
  const nm *aux, *stat, *red;
  const char *col;
} prog_env;

static const char *binop(ptc_om_kind k) {
  switch (k) {
  case PTC_OM_ADD: return "+";
  case PTC_OM_SUB: return "-";
  case PTC_OM_MUL: return "*";
  default: return "/";
  }
}

static const char *cmp(ptc_om_pred p) {
  switch (p) {
  case PTC_OM_GT: return ">";
  case PTC_OM_GE: return ">=";
  case PTC_OM_EQ: return "==";
  default: return "<";
  }
}

/* Prints p's nodes as statements; names its results in outs (and, for a
 * statistics program, in stat[dst]). */
static void print_prog(ce *c, const ptc_opmath *p, prog_env *e, nm *outs, nm *stat_out) {
  nm v[PTC_OM_MAX_NODES];
  for (int i = 0; i < p->n; i++) {
    const ptc_om_node *n = &p->node[i];
    ptc_dtype dt = (ptc_dtype)n->dt;
    bool fl = dt == PTC_DTYPE_F32 || dt == PTC_DTYPE_F64;
    const char *a = n->a[0] >= 0 ? v[n->a[0]].s : "", *b = n->a[1] >= 0 ? v[n->a[1]].s : "";
    char expr[256];
    switch ((ptc_om_kind)n->kind) {
    case PTC_OM_IN: {
      char col[40] = {0};
      if (n->a[1] >= 0) snprintf(col, sizeof col, "%s", e->stat[n->a[1]].s);
      e->in(c, e->cl, n->a[0], n->a[1] >= 0 ? col : NULL, &v[i]);
      continue;
    }
    case PTC_OM_AUX: v[i] = e->aux[n->a[0]]; continue;
    case PTC_OM_STAT: v[i] = e->stat[n->a[0]]; continue;
    case PTC_OM_RED: v[i] = e->red[n->a[0]]; continue;
    case PTC_OM_COL: snprintf(v[i].s, sizeof v[i].s, "(long long)(%s)", e->col); continue;
    case PTC_OM_CONST: literal(&v[i], dt, n->k); continue;
    case PTC_OM_TARGET: {
      nm x;
      e->in(c, e->cl, n->a[0], NULL, &x);
      snprintf(expr, sizeof expr, "ptc_target((long long)(%s), %lldLL, ptc_status)", x.s,
               (long long)n->k);
      break;
    }
    case PTC_OM_ADD: case PTC_OM_SUB: case PTC_OM_MUL:
      snprintf(expr, sizeof expr, "%s %s %s", a, binop((ptc_om_kind)n->kind), b);
      break;
    case PTC_OM_DIV:
      if (fl) snprintf(expr, sizeof expr, "%s / %s", a, b);
      else snprintf(expr, sizeof expr, "ptc_idiv<%s>(%s, %s)", ctype(dt), a, b);
      break;
    case PTC_OM_MAX: snprintf(expr, sizeof expr, "ptc_max(%s, %s)", a, b); break;
    case PTC_OM_NEG: snprintf(expr, sizeof expr, "-%s", a); break;
    case PTC_OM_FMA:
      snprintf(expr, sizeof expr, "%s(%s, %s, %s)", dt == PTC_DTYPE_F32 ? "fmaf" : "fma", a, b,
               v[n->a[2]].s);
      break;
    case PTC_OM_EXP: case PTC_OM_LOG: case PTC_OM_SQRT: case PTC_OM_TANH: {
      const char *fn = n->kind == PTC_OM_EXP ? "exp" : n->kind == PTC_OM_LOG ? "log"
                       : n->kind == PTC_OM_SQRT ? "sqrt" : "tanh";
      snprintf(expr, sizeof expr, "%s%s(%s)", fn, dt == PTC_DTYPE_F32 ? "f" : "", a);
      break;
    }
    case PTC_OM_POW: snprintf(expr, sizeof expr, "ptc_pow(%s, %s)", a, b); break;
    case PTC_OM_CVT: snprintf(expr, sizeof expr, "(%s)(%s)", ctype(dt), a); break;
    case PTC_OM_SELECT:
      snprintf(expr, sizeof expr, "(%s %s %s) ? %s : %s", a, cmp((ptc_om_pred)n->pred), b,
               v[n->a[2]].s, v[n->a[3]].s);
      break;
    default: PTC_UNREACHABLE();
    }
    fresh(c, &v[i]);
    line(c, "const %s %s = %s;", ctype(dt), v[i].s, expr);
  }
  for (int i = 0; i < p->nout; i++) {
    if (outs) outs[i] = v[p->out[i]];
    if (stat_out && p->dst[i] >= 0) stat_out[p->dst[i]] = v[p->out[i]];
  }
}

/* ---- values ------------------------------------------------------------------ */

static const ptc_type *vty(const ce *c, int32_t v) { return &c->f->values[v].type; }
static bool internal(const ce *c, int32_t v) {
  const ptc_value *val = &c->f->values[v];
  return val->kind == PTC_VALUE_OP && val->def >= c->sig->first && val->def < c->sig->end;
}
static int lv(const ce *c, int32_t v) { return c->sig->level[v]; }

static const char *eval(ce *c, int32_t v, cpos *p);
static void rowop_elem(ce *c, int32_t opi, int32_t r, cpos *p, nm *out);

static void load_at(ce *c, int32_t v, const char *idx, nm *out) {
  fresh(c, out);
  line(c, "const %s %s = ptc_ld(in%d + %s);", vtype(vty(c, v)->dtype), out->s, c->in_slot[v], idx);
}

/* v at the current row, read per row (mode ROWM: against X's rows). */
static void eval_row(ce *c, int32_t v, int mode, nm *out) {
  if (!internal(c, v)) {
    if (ptc_type_numel(vty(c, v)) == 1) {
      *out = c->scal[v];
      return;
    }
    char idx[40];
    snprintf(idx, sizeof idx, "%s%d", mode == ROWM ? "rb" : "b", v);
    PTC_ASSERT(c->map[mode][v].used);
    load_at(c, v, idx, out);
    return;
  }
  if (lv(c, v) == PTC_GROUP_SCALAR) *out = c->scal[v];
  else {
    PTC_ASSERT(lv(c, v) == PTC_GROUP_ROW && c->rowv[v].s[0]);
    *out = c->rowv[v];
  }
}

typedef struct elem_cl {
  const ptc_op *op;
  cpos *p;
  const ptc_om_rowop *r; /* row ops: which operands are per row */
} elem_cl;

static void elem_in(ce *c, void *cl, int a, const char *col, nm *out) {
  elem_cl *e = cl;
  if (e->r && e->r->row_operand[a]) {
    eval_row(c, e->op->in[a], ROWM, out);
    return;
  }
  if (col) { /* the operand at another column: its own position */
    nm *cache = ptc_xcalloc((size_t)c->f->nvalues + 1, sizeof *cache);
    cpos q = {col, cache};
    snprintf(out->s, sizeof out->s, "%s", eval(c, e->op->in[a], &q));
    free(cache);
    return;
  }
  snprintf(out->s, sizeof out->s, "%s", eval(c, e->op->in[a], e->p));
}

static const char *eval(ce *c, int32_t v, cpos *p) {
  if (p->cache[v].s[0]) return p->cache[v].s;
  nm *r = &p->cache[v];
  if (!internal(c, v)) {
    if (ptc_type_numel(vty(c, v)) == 1) {
      *r = c->scal[v];
    } else {
      const cmap *m = &c->map[FULL][v];
      PTC_ASSERT(m->used);
      char idx[64];
      if (!c->rowwise) snprintf(idx, sizeof idx, "o%d", v);
      else if (m->st[c->x.rank - 1]) snprintf(idx, sizeof idx, "b%d + %s", v, p->j);
      else snprintf(idx, sizeof idx, "b%d", v);
      load_at(c, v, idx, r);
    }
  } else if (lv(c, v) == PTC_GROUP_SCALAR) {
    *r = c->scal[v];
  } else if (lv(c, v) == PTC_GROUP_ROW) {
    PTC_ASSERT(c->rowv[v].s[0]);
    *r = c->rowv[v];
  } else {
    int32_t opi = c->f->values[v].def;
    const ptc_op *op = &c->f->ops[opi];
    if (ptc_om_is_rowop(op->code)) {
      rowop_elem(c, opi, c->f->values[v].res, p, r);
    } else {
      ptc_opmath prog;
      PTC_ASSERT(ptc_om_elementwise(c->f, op, &prog) == 0);
      elem_cl cl = {op, p, NULL};
      prog_env e = {elem_in, &cl, c->aux[opi - c->sig->first], NULL, NULL, p->j};
      nm outs[PTC_OM_MAX_OUT];
      print_prog(c, &prog, &e, outs, NULL);
      for (int32_t a = 0; a < op->nout; a++) p->cache[op->out[a]] = outs[a];
    }
  }
  return p->cache[v].s;
}

static const ptc_om_rowop *desc_of(ce *c, int32_t opi) {
  ptc_om_rowop **d = &c->desc[opi - c->sig->first];
  if (!*d) {
    *d = ptc_xmalloc(sizeof **d);
    PTC_ASSERT(ptc_om_rowop_describe(c->f, &c->f->ops[opi], *d) == 0);
  }
  return *d;
}

static void rowop_elem(ce *c, int32_t opi, int32_t r, cpos *p, nm *out) {
  const ptc_om_rowop *d = desc_of(c, opi);
  elem_cl cl = {&c->f->ops[opi], p, d};
  prog_env e = {elem_in, &cl, NULL, c->stat[opi - c->sig->first], NULL, p->j};
  print_prog(c, &d->elem[r], &e, out, NULL);
}

/* ---- row scope (ROWWISE) ------------------------------------------------------- */

static bool any_result_needed(const ce *c, const ptc_op *op) {
  for (int32_t r = 0; r < op->nout; r++)
    if (c->need[op->out[r]]) return true;
  return false;
}

static void row_in(ce *c, void *cl, int a, const char *col, nm *out) {
  elem_cl *e = cl;
  if (col) {
    elem_in(c, cl, a, col, out);
    return;
  }
  eval_row(c, e->op->in[a], e->r && e->r->row_operand[a] ? ROWM : FULL, out);
}

static nm *fresh_cache(ce *c) { return ptc_xcalloc((size_t)c->f->nvalues + 1, sizeof(nm)); }

/* A loop of the block's threads over columns [0, bound) of the row. */
static void open_col_loop(ce *c, int64_t bound) {
  line(c, "for (long long j = threadIdx.x; j < %lldLL; j += blockDim.x) {", (long long)bound);
  c->ind++;
}
static void close_loop(ce *c) {
  c->ind--;
  line(c, "}");
}

static void row_op_stats(ce *c, int32_t opi) {
  const ptc_op *op = &c->f->ops[opi];
  const ptc_om_rowop *d = desc_of(c, opi);
  nm *stat = c->stat[opi - c->sig->first];
  elem_cl cl = {op, NULL, d};
  prog_env re = {row_in, &cl, NULL, stat, NULL, NULL};
  line(c, "// %s: statistics", ptc_opinfo_get(op->code)->name);
  print_prog(c, &d->pre, &re, NULL, stat);
  c->shared_used = true;
  for (int k = 0; k < d->nphase; k++) {
    const ptc_om_phase *ph = &d->phase[k];
    bool online = k + 1 < d->nphase && d->phase[k + 1].online && ph->nred == 1 && ph->max[0];
    nm red[2];
    for (int i = 0; i < ph->nred; i++) fresh(c, &red[i]);
    nm s2;
    if (online) {
      fresh(c, &s2);
      line(c, "float %s = -PTC_INF, %s = 0.0f; // online max and sum of exp", red[0].s, s2.s);
    } else {
      for (int i = 0; i < ph->nred; i++)
        line(c, "float %s = %s;", red[i].s, ph->max[i] ? "-PTC_INF" : "0.0f");
    }
    open_col_loop(c, ph->bound);
    {
      nm *cache = fresh_cache(c);
      cpos p = {"j", cache};
      cl.p = &p;
      prog_env e = {elem_in, &cl, NULL, stat, NULL, "j"};
      nm vals[2];
      print_prog(c, &ph->elem, &e, vals, NULL);
      if (online) line(c, "ptc_ms_add(%s, %s, %s, 1.0f);", red[0].s, s2.s, vals[0].s);
      else
        for (int i = 0; i < ph->nred; i++) {
          if (ph->max[i]) line(c, "%s = ptc_max(%s, %s);", red[i].s, vals[i].s, red[i].s);
          else line(c, "%s += %s;", red[i].s, vals[i].s);
        }
      free(cache);
      cl.p = NULL;
    }
    close_loop(c);
    if (online) {
      line(c, "ptc_block_ms(%s, %s, ptc_sh);", red[0].s, s2.s);
    } else {
      for (int i = 0; i < ph->nred; i++)
        line(c, "%s = ptc_block_%s(%s, ptc_sh);", red[i].s, ph->max[i] ? "max" : "sum", red[i].s);
    }
    prog_env se = {row_in, &cl, NULL, stat, red, NULL};
    print_prog(c, &ph->stats, &se, NULL, stat);
    if (online) {
      k++;
      prog_env se2 = {row_in, &cl, NULL, stat, &s2, NULL};
      print_prog(c, &d->phase[k].stats, &se2, NULL, stat);
    }
  }
  print_prog(c, &d->post, &re, NULL, stat);
  for (int32_t r = 0; r < op->nout; r++) {
    if (d->res_kind[r] != PTC_OM_RES_ROWMEAN || c->out_slot[op->out[r]] < 0) continue;
    nm sc;
    literal(&sc, PTC_DTYPE_F32, ptc_om_rowmean_scale(c->f, op, c->sig->work));
    line(c, "if (threadIdx.x == 0) atomicAdd(out%d, %s * %s); // the mean over rows",
         c->out_slot[op->out[r]], stat[d->row_stat[r]].s, sc.s);
  }
}

/* operands read before the program runs */
typedef struct fixed_cl {
  nm ins[8];
} fixed_cl;

static void fixed_in(ce *c, void *cl, int a, const char *col, nm *out) {
  (void)c;
  (void)col;
  *out = ((fixed_cl *)cl)->ins[a];
}

static void row_scope_op(ce *c, int32_t i) {
  const ptc_op *op = &c->f->ops[i];
  if (!any_result_needed(c, op)) return;
  if (ptc_om_is_rowop(op->code)) {
    row_op_stats(c, i);
    return;
  }
  if (ptc_om_is_reduce(op->code)) {
    if (lv(c, op->out[0]) != PTC_GROUP_ROW) return; /* accumulated in the column loop */
    bool mx;
    double scale;
    ptc_om_reduce(c->f, op, &mx, &scale);
    nm r;
    fresh(c, &r);
    c->shared_used = true;
    line(c, "float %s = %s; // %s over the row", r.s, mx ? "-PTC_INF" : "0.0f",
         ptc_opinfo_get(op->code)->name);
    open_col_loop(c, c->L);
    {
      nm *cache = fresh_cache(c);
      cpos p = {"j", cache};
      const char *x = eval(c, op->in[0], &p);
      if (mx) line(c, "%s = ptc_max(%s, %s);", r.s, x, r.s);
      else line(c, "%s += %s;", r.s, x);
      free(cache);
    }
    close_loop(c);
    line(c, "%s = ptc_block_%s(%s, ptc_sh);", r.s, mx ? "max" : "sum", r.s);
    if (op->code == PTC_OP_REDUCE_MEAN) {
      nm k, r2;
      literal(&k, PTC_DTYPE_F32, scale);
      fresh(c, &r2);
      line(c, "const float %s = %s * %s;", r2.s, r.s, k.s);
      r = r2;
    }
    c->rowv[op->out[0]] = r;
    return;
  }
  if (lv(c, op->out[0]) == PTC_GROUP_ROW) { /* a per-row element-wise op */
    ptc_opmath prog;
    PTC_ASSERT(ptc_om_elementwise(c->f, op, &prog) == 0);
    int mode = c->sig->op_mode[i - c->sig->first];
    fixed_cl fx;
    for (int32_t a = 0; a < op->nin; a++) eval_row(c, op->in[a], mode, &fx.ins[a]);
    nm outs[PTC_OM_MAX_OUT];
    prog_env e = {fixed_in, &fx, c->aux[i - c->sig->first], NULL, NULL, NULL};
    print_prog(c, &prog, &e, outs, NULL);
    for (int32_t r = 0; r < op->nout; r++) c->rowv[op->out[r]] = outs[r];
  }
}

/* ---- outputs of the column loop ------------------------------------------------ */

typedef struct accout {
  int32_t v, slot;
  bool max;
  double scale;
  int32_t expr_op, expr_res; /* row op result, or -1: a reduction's operand */
  bool whole;                /* the output is one value: reduce per block */
  bool reg;                  /* indexed by e mod period: summed in a register (acc_period) */
  nm local;
} accout;

static bool map_zero(const ce *c, int32_t v) {
  const cmap *m = &c->map[FULL][v];
  for (int32_t d = 0; d < c->x.rank; d++)
    if (m->st[d]) return false;
  return true;
}

static void acc_expr(ce *c, const accout *a, cpos *p, nm *out) {
  const ptc_op *op = &c->f->ops[a->expr_op];
  if (a->expr_res < 0) snprintf(out->s, sizeof out->s, "%s", eval(c, op->in[0], p));
  else rowop_elem(c, a->expr_op, a->expr_res, p, out);
  if (a->scale != 1.0) {
    nm k, r;
    literal(&k, PTC_DTYPE_F32, a->scale);
    fresh(c, &r);
    line(c, "const float %s = %s * %s;", r.s, out->s, k.s);
    *out = r;
  }
}

static void column_outputs(ce *c, const int32_t *store, int32_t nstore, accout *acc, int32_t nacc,
                           const char *eidx, cpos *p) {
  for (int32_t o = 0; o < nstore; o++) {
    int32_t v = store[o];
    line(c, "ptc_st(out%d + %s, %s);", c->out_slot[v], eidx, eval(c, v, p));
  }
  for (int32_t o = 0; o < nacc; o++) {
    accout *a = &acc[o];
    nm e;
    acc_expr(c, a, p, &e);
    if (a->whole || a->reg) {
      char t[48];
      snprintf(t, sizeof t, c->rowwise && a->reg ? "%s[kk]" : "%s", a->local.s);
      if (a->max) line(c, "%s = ptc_max(%s, %s);", t, e.s, t);
      else line(c, "%s += %s;", t, e.s);
      continue;
    }
    char idx[64];
    if (!c->rowwise) snprintf(idx, sizeof idx, "o%d", a->v);
    else if (c->map[FULL][a->v].st[c->x.rank - 1]) snprintf(idx, sizeof idx, "b%d + j", a->v);
    else snprintf(idx, sizeof idx, "b%d", a->v);
    if (a->max) line(c, "ptc_atomic_max(out%d + %s, %s);", a->slot, idx, e.s);
    else line(c, "atomicAdd(out%d + %s, %s);", a->slot, idx, e.s);
  }
}

/* ELEMENTWISE kernels: when every accumulated output that is not a single
 * value is indexed by the element's trailing coordinates alone (its index
 * is e mod P: a bias gradient summed over the rows), a grid of a multiple of
 * P threads keeps each thread on one index for the whole grid-stride loop,
 * so it sums in a register and adds to memory once, instead of once per
 * element.  P, or 0 when that does not hold. */
static int64_t acc_period(const ce *c) {
  const ptc_group_sig *sig = c->sig;
  int64_t P = 0;
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    if (sig->combine[o] == PTC_GROUP_STORE || map_zero(c, v)) continue;
    const cmap *m = &c->map[FULL][v];
    int64_t s = 1;
    int32_t d = c->x.rank - 1;
    for (; d >= 0 && (c->x.dims[d] == 1 || m->st[d] == s); d--)
      if (c->x.dims[d] != 1) s *= c->x.dims[d];
    for (; d >= 0; d--)
      if (m->st[d] && c->x.dims[d] != 1) return 0;
    if (P && P != s) return 0;
    P = s;
  }
  return P;
}

/* ROWWISE kernels: when every accumulated output that is not a single value
 * is indexed by the column alone (a gain's gradient summed over the rows),
 * each thread keeps its columns' sums in registers across the rows of its
 * block and adds them once.  Columns per thread (ceil(L / block), at most
 * 8), or 0. */
static int64_t acc_cols(const ce *c, int64_t block) {
  const ptc_group_sig *sig = c->sig;
  int32_t r = c->x.rank, n = 0;
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    const ptc_op *op = &c->f->ops[c->f->values[v].def];
    if (sig->combine[o] == PTC_GROUP_STORE || map_zero(c, v) || lv(c, v) != PTC_GROUP_ACC ||
        op->code == PTC_OP_CROSS_ENTROPY)
      continue;
    const cmap *m = &c->map[FULL][v];
    if (m->st[r - 1] != 1) return 0;
    for (int32_t d = 0; d < r - 1; d++)
      if (m->st[d] && c->x.dims[d] != 1) return 0;
    n++;
  }
  int64_t K = (c->L + block - 1) / block;
  return n && K <= 8 && c->rows >= 4096 ? K : 0;
}

static int64_t gcd64(int64_t a, int64_t b) {
  while (b) {
    int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

/* ---- maps ------------------------------------------------------------------------ */

static ptc_type acc_shape(const ce *c, int32_t v) {
  const ptc_op *op = &c->f->ops[c->f->values[v].def];
  if (!ptc_om_is_reduce(op->code)) return *vty(c, v);
  ptc_type t = *vty(c, op->in[0]);
  const ptc_attr *ax = ptc_op_attr(op, "axes");
  for (int32_t i = 0; i < ax->u.ints.n; i++) t.dims[ax->u.ints.v[i]] = 1;
  return t;
}

static void add_map(ce *c, int32_t v, int mode, const ptc_type *s) {
  cmap *m = &c->map[mode][v];
  if (m->used) return;
  m->used = true;
  int32_t tr = mode == ROWM ? c->x.rank - 1 : c->x.rank;
  ptc_om_align_strides(s, tr, m->st);
}

static void plan_maps(ce *c) {
  const ptc_group_sig *sig = c->sig;
  for (int32_t i = sig->first; i < sig->end; i++) {
    const ptc_op *op = &c->f->ops[i];
    for (int32_t a = 0; a < op->nin; a++) {
      int32_t v = op->in[a];
      if (internal(c, v) || ptc_type_numel(vty(c, v)) == 1) continue;
      int mode = sig->op_mode[i - sig->first];
      if ((op->code == PTC_OP_CROSS_ENTROPY && a == 1) ||
          (op->code == PTC_OP_CROSS_ENTROPY_GRAD && a == 2))
        mode = ROWM;
      add_map(c, v, mode, vty(c, v));
      if (mode == ROWM && c->rowwise) add_map(c, v, FULL, vty(c, v)); /* harmless */
    }
  }
  for (int32_t o = 0; o < sig->nout; o++)
    if (sig->combine[o] != PTC_GROUP_STORE) {
      ptc_type s = acc_shape(c, sig->out[o]);
      add_map(c, sig->out[o], FULL, &s);
    }
}

/* coordinates c0.. of index `idx` over dims[0..n) */
static void coords(ce *c, const char *idx, int32_t n) {
  line(c, "long long rem_ = %s;", idx);
  for (int32_t d = n - 1; d >= 0; d--) {
    line(c, "const long long c%d = rem_ %% %lldLL;", d, (long long)c->x.dims[d]);
    if (d > 0) line(c, "rem_ /= %lldLL;", (long long)c->x.dims[d]);
  }
}

static void offsets(ce *c, int mode, const char *prefix, int32_t n) {
  for (int32_t v = 0; v < c->f->nvalues; v++) {
    const cmap *m = &c->map[mode][v];
    if (!m->used) continue;
    ptc_buf e;
    ptc_buf_init(&e);
    for (int32_t d = 0; d < n; d++)
      if (m->st[d]) ptc_buf_printf(&e, "%sc%d * %lldLL", e.len ? " + " : "", d, (long long)m->st[d]);
    line(c, "const long long %s%d = %s;", prefix, v, e.len ? e.data : "0");
    ptc_buf_fini(&e);
  }
}

/* ---- the kernel ------------------------------------------------------------------- */

static void value_name(const ptc_func *f, int32_t v, char *buf, size_t len) {
  const ptc_value *val = &f->values[v];
  if (val->kind == PTC_VALUE_PARAM) snprintf(buf, len, "@%s", f->mod->params[val->def].name);
  else if (val->name) snprintf(buf, len, "%%%s", val->name);
  else snprintf(buf, len, "%%%d", v);
}

static void json_type(ptc_buf *b, const ptc_type *t) {
  ptc_buf_printf(b, "\"dtype\": \"%s\", \"shape\": [", ptc_dtype_name(t->dtype));
  for (int32_t d = 0; d < t->rank; d++) ptc_buf_printf(b, "%s%lld", d ? ", " : "", (long long)t->dims[d]);
  ptc_buf_puts(b, "]");
}

static void param_json(ptc_buf *b, const ptc_func *f, int32_t v, const char *role,
                       const char *combine) {
  char name[160];
  value_name(f, v, name, sizeof name);
  ptc_buf_printf(b, "%s{\"role\": \"%s\", \"value\": ", b->len > 1 ? ", " : "", role);
  ptc__json_str(b, name);
  ptc_buf_puts(b, ", ");
  json_type(b, &f->values[v].type);
  if (combine) ptc_buf_printf(b, ", \"combine\": \"%s\"", combine);
  ptc_buf_puts(b, "}");
}

static void ce_free(ce *c) {
  free(c->in_slot);
  free(c->out_slot);
  free(c->need);
  free(c->map[0]);
  free(c->map[1]);
  free(c->scal);
  free(c->rowv);
  free(c->stat);
  free(c->aux);
  for (int32_t i = 0; c->desc && i < c->sig->end - c->sig->first; i++) free(c->desc[i]);
  free(c->desc);
}

typedef struct scal_cl {
  const ptc_op *op;
} scal_cl;

static void scal_in(ce *c, void *cl, int a, const char *col, nm *out) {
  scal_cl *s = cl;
  (void)col;
  int32_t v = s->op->in[a];
  PTC_ASSERT(c->scal[v].s[0]);
  *out = c->scal[v];
}

/* Emits the kernel of group sig as `name` into b; fills kernel k's launch
 * shape and parameters. */
static int emit_group(ptc_func *f, const ptc_group_sig *sig, const char *name, ptc_buf *b,
                      ptc_cuda_kernel *k) {
  ce cc = {.b = b, .f = f, .sig = sig, .rowwise = sig->kind == PTC_GROUP_ROWWISE, .x = sig->iter};
  ce *c = &cc;
  size_t nv = (size_t)f->nvalues + 1;
  int32_t nops = sig->end - sig->first;
  c->L = c->rowwise ? c->x.dims[c->x.rank - 1] : 1;
  c->rows = c->rowwise ? sig->work : 0;
  c->in_slot = ptc_xmalloc(nv * sizeof *c->in_slot);
  c->out_slot = ptc_xmalloc(nv * sizeof *c->out_slot);
  for (size_t v = 0; v < nv; v++) c->in_slot[v] = c->out_slot[v] = -1;
  for (int32_t i = 0; i < sig->nin; i++) c->in_slot[sig->in[i]] = i;
  for (int32_t i = 0; i < sig->nout; i++) c->out_slot[sig->out[i]] = i;
  c->need = ptc_xcalloc(nv, sizeof *c->need);
  c->map[0] = ptc_xcalloc(nv, sizeof(cmap));
  c->map[1] = ptc_xcalloc(nv, sizeof(cmap));
  c->scal = ptc_xcalloc(nv, sizeof(nm));
  c->rowv = ptc_xcalloc(nv, sizeof(nm));
  c->stat = ptc_xcalloc((size_t)nops + 1, sizeof *c->stat);
  c->aux = ptc_xcalloc((size_t)nops + 1, sizeof *c->aux);
  c->desc = ptc_xcalloc((size_t)nops + 1, sizeof *c->desc);
  for (int32_t i = sig->first; i < sig->end; i++)
    for (int32_t a = 0; a < f->ops[i].nin; a++) c->need[f->ops[i].in[a]] = true;
  for (int32_t o = 0; o < sig->nout; o++) c->need[sig->out[o]] = true;
  plan_maps(c);

  /* signature and parameters */
  ptc_buf_puts(&k->params, "[");
  ptc_buf sigb;
  ptc_buf_init(&sigb);
  for (int32_t i = 0; i < sig->nin; i++) {
    int32_t v = sig->in[i];
    ptc_buf_printf(&sigb, "%sconst %s *in%d", i ? ", " : "", ctype(vty(c, v)->dtype), i);
    param_json(&k->params, f, v, "in", NULL);
  }
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    /* a 16-bit sum (a lone op's, ptc_group_analyze_solo) is accumulated in
     * f32 workspace that the runtime rounds once */
    bool ws = sig->combine[o] != PTC_GROUP_STORE && vty(c, v)->dtype != PTC_DTYPE_F32 &&
              (vty(c, v)->dtype == PTC_DTYPE_BF16 || vty(c, v)->dtype == PTC_DTYPE_F16);
    ptc_buf_printf(&sigb, "%s%s *out%d", sigb.len ? ", " : "",
                   ws ? "float" : ctype(vty(c, v)->dtype), o);
    const char *comb = sig->combine[o] == PTC_GROUP_SUM ? "sum" : sig->combine[o] == PTC_GROUP_MAX ? "max" : "store";
    param_json(&k->params, f, v, ws ? "out_f32_workspace" : "out", comb);
  }
  ptc_buf_printf(&sigb, "%sint *ptc_status", sigb.len ? ", " : "");
  ptc_buf_printf(&k->params, "%s{\"role\": \"status\", \"dtype\": \"i32\", \"shape\": []}]",
                 k->params.len > 1 ? ", " : "");

  int64_t block = PTC_CUDA_BLOCK;
  if (c->rowwise) {
    block = (c->L + 31) / 32 * 32;
    if (block > PTC_CUDA_BLOCK) block = PTC_CUDA_BLOCK;
    if (block < 32) block = 32;
    k->grid[0] = c->rows < PTC_CUDA_MAX_GRID ? c->rows : PTC_CUDA_MAX_GRID;
    c->cols = acc_cols(c, block);
    if (c->cols) k->grid[0] = 1024; /* rows per block, so the registers sum many */
  } else {
    int64_t g = (sig->work + block - 1) / block;
    k->grid[0] = g < PTC_CUDA_MAX_GRID ? g : PTC_CUDA_MAX_GRID;
    int64_t P = acc_period(c), g0 = P ? P / gcd64(P, block) : 0;
    if (P && sig->work >= 4 * P && g0 <= 4096) { /* a multiple of P threads, at most ~2048 blocks */
      g = g < 2048 ? g : 2048;
      g = g / g0 * g0;
      k->grid[0] = g > g0 ? g : g0;
      c->period = P;
    }
  }
  if (k->grid[0] < 1) k->grid[0] = 1;
  k->block[0] = block;

  ptc_buf body;
  ptc_buf_init(&body);
  c->b = &body;
  c->ind = 1;
  /* once per thread: scalar inputs, optimizer factors, scalar ops */
  for (int32_t i = 0; i < sig->nin; i++) {
    int32_t v = sig->in[i];
    if (ptc_type_numel(vty(c, v)) != 1) continue;
    fresh(c, &c->scal[v]);
    line(c, "const %s %s = ptc_ld(in%d);", vtype(vty(c, v)->dtype), c->scal[v].s, i);
  }
  for (int32_t i = sig->first; i < sig->end; i++) {
    const ptc_op *op = &f->ops[i];
    scal_cl sc = {op};
    if (op->code == PTC_OP_ADAMW || op->code == PTC_OP_SGD) {
      ptc_opmath aux;
      ptc_om_optimizer_aux(f, op, &aux);
      prog_env e = {scal_in, &sc, NULL, NULL, NULL, NULL};
      line(c, "// %s: once-per-call factors", ptc_opinfo_get(op->code)->name);
      print_prog(c, &aux, &e, c->aux[i - sig->first], NULL);
    }
    if (lv(c, op->out[0]) != PTC_GROUP_SCALAR) continue;
    ptc_opmath prog;
    PTC_ASSERT(ptc_om_elementwise(f, op, &prog) == 0);
    prog_env e = {scal_in, &sc, c->aux[i - sig->first], NULL, NULL, NULL};
    nm outs[PTC_OM_MAX_OUT];
    print_prog(c, &prog, &e, outs, NULL);
    for (int32_t r = 0; r < op->nout; r++) c->scal[op->out[r]] = outs[r];
  }

  /* what the column loop writes */
  int32_t *store = ptc_xcalloc((size_t)sig->nout + 1, sizeof *store), nstore = 0, nacc = 0;
  accout *acc = ptc_xcalloc((size_t)sig->nout + 1, sizeof *acc);
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    const ptc_op *op = &f->ops[f->values[v].def];
    if (lv(c, v) == PTC_GROUP_ELEM) store[nstore++] = v;
    if (lv(c, v) != PTC_GROUP_ACC || op->code == PTC_OP_CROSS_ENTROPY) continue;
    accout *a = &acc[nacc++];
    a->v = v;
    a->slot = o;
    a->max = sig->combine[o] == PTC_GROUP_MAX;
    a->expr_op = f->values[v].def;
    a->expr_res = ptc_om_is_reduce(op->code) ? -1 : f->values[v].res;
    a->scale = 1.0;
    if (ptc_om_is_reduce(op->code)) {
      bool mx;
      ptc_om_reduce(f, op, &mx, &a->scale);
    }
    a->whole = map_zero(c, v);
    a->reg = !a->whole && (c->period > 0 || c->cols > 0);
    if (a->reg && c->rowwise) {
      fresh(c, &a->local);
      line(c, "float %s[%lld]; // this thread's columns of out%d", a->local.s, (long long)c->cols, o);
      line(c, "for (int kk = 0; kk < %lld; kk++) %s[kk] = %s;", (long long)c->cols, a->local.s,
           a->max ? "-PTC_INF" : "0.0f");
    } else if (a->whole || a->reg) {
      fresh(c, &a->local);
      line(c, "float %s = %s; // this thread's part of out%d", a->local.s,
           a->max ? "-PTC_INF" : "0.0f", o);
    }
  }

  if (c->rowwise) {
    line(c, "for (long long row = blockIdx.x; row < %lldLL; row += gridDim.x) {", (long long)c->rows);
    c->ind++;
    coords(c, "row", c->x.rank - 1);
    offsets(c, FULL, "b", c->x.rank - 1);
    offsets(c, ROWM, "rb", c->x.rank - 1);
    memset(c->rowv, 0, nv * sizeof *c->rowv);
    for (int32_t i = sig->first; i < sig->end; i++) row_scope_op(c, i);
    if (nstore || nacc) {
      if (c->cols) { /* column kk of this thread: registers indexed by constants */
        line(c, "#pragma unroll");
        line(c, "for (int kk = 0; kk < %lld; kk++) {", (long long)c->cols);
        c->ind++;
        line(c, "const long long j = threadIdx.x + kk * %lldLL;", (long long)block);
        line(c, "if (j < %lldLL) {", (long long)c->L);
        c->ind++;
      } else {
        open_col_loop(c, c->L);
      }
      nm *cache = fresh_cache(c);
      cpos p = {"j", cache};
      char eidx[48];
      snprintf(eidx, sizeof eidx, "row * %lldLL + j", (long long)c->L);
      column_outputs(c, store, nstore, acc, nacc, eidx, &p);
      free(cache);
      close_loop(c);
      if (c->cols) close_loop(c);
    }
    for (int32_t o = 0; o < sig->nout; o++) {
      int32_t v = sig->out[o];
      if (lv(c, v) == PTC_GROUP_ROW) line(c, "if (threadIdx.x == 0) ptc_st(out%d + row, %s);", o, c->rowv[v].s);
    }
    close_loop(c);
  } else {
    line(c, "for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < %lldLL; "
         "e += (long long)gridDim.x * blockDim.x) {", (long long)sig->work);
    c->ind++;
    coords(c, "e", c->x.rank);
    offsets(c, FULL, "o", c->x.rank);
    nm *cache = fresh_cache(c);
    cpos p = {"e", cache};
    column_outputs(c, store, nstore, acc, nacc, "e", &p);
    free(cache);
    close_loop(c);
  }
  for (int32_t o = 0; o < nacc && c->rowwise; o++) {
    accout *a = &acc[o];
    if (!a->reg) continue;
    line(c, "for (int kk = 0; kk < %lld; kk++)", (long long)c->cols);
    line(c, "  if (threadIdx.x + kk * %lldLL < %lldLL) %s(out%d + threadIdx.x + kk * %lldLL, %s[kk]);",
         (long long)block, (long long)c->L, a->max ? "ptc_atomic_max" : "atomicAdd", a->slot,
         (long long)block, a->local.s);
  }
  for (int32_t o = 0; o < nacc && !c->rowwise; o++) {
    accout *a = &acc[o];
    if (!a->reg) continue;
    /* the index every element of this thread had: its first element's */
    line(c, "%s(out%d + (blockIdx.x * (long long)blockDim.x + threadIdx.x) %% %lldLL, %s);",
         a->max ? "ptc_atomic_max" : "atomicAdd", a->slot, (long long)c->period, a->local.s);
  }
  for (int32_t o = 0; o < nacc; o++) {
    accout *a = &acc[o];
    if (!a->whole) continue;
    c->shared_used = true;
    line(c, "%s = ptc_block_%s(%s, ptc_sh);", a->local.s, a->max ? "max" : "sum", a->local.s);
    if (a->max) line(c, "if (threadIdx.x == 0) ptc_atomic_max(out%d, %s);", a->slot, a->local.s);
    else line(c, "if (threadIdx.x == 0) atomicAdd(out%d, %s);", a->slot, a->local.s);
  }
  bool any_scalar = false;
  for (int32_t o = 0; o < sig->nout; o++) any_scalar |= lv(c, sig->out[o]) == PTC_GROUP_SCALAR;
  if (any_scalar) {
    line(c, "if (blockIdx.x == 0 && threadIdx.x == 0) {");
    c->ind++;
    for (int32_t o = 0; o < sig->nout; o++)
      if (lv(c, sig->out[o]) == PTC_GROUP_SCALAR) line(c, "ptc_st(out%d, %s);", o, c->scal[sig->out[o]].s);
    close_loop(c);
  }

  ptc_buf_printf(b, "extern \"C\" __global__ void __launch_bounds__(%lld, 1) %s(%s) {\n",
                 (long long)block, name, sigb.data);
  if (c->shared_used) ptc_buf_puts(b, "  __shared__ float ptc_sh[64];\n");
  if (!c->shared_used) ptc_buf_puts(b, "  (void)ptc_status;\n");
  ptc_buf_put(b, body.data ? body.data : "", body.len);
  ptc_buf_puts(b, "}\n");
  ptc_buf_fini(&body);
  ptc_buf_fini(&sigb);
  free(store);
  free(acc);
  ce_free(c);
  return 0;
}

/* ---- attention ---------------------------------------------------------------------- */

typedef struct emitted {
  int32_t n, cap;
  char (*name)[64];
} emitted;

static bool seen(emitted *e, const char *name) {
  for (int32_t i = 0; i < e->n; i++)
    if (strcmp(e->name[i], name) == 0) return true;
  if (e->n == e->cap) {
    e->cap = e->cap ? 2 * e->cap : 16;
    e->name = ptc_xrealloc(e->name, (size_t)e->cap * sizeof *e->name);
  }
  snprintf(e->name[e->n++], 64, "%s", name);
  return false;
}

static const char *dshort(ptc_dtype t) { return t == PTC_DTYPE_BF16 ? "bf16" : t == PTC_DTYPE_F16 ? "f16" : "f32"; }

/* Instantiates the attention templates for dtype t and head sizes D, E. */
static void attn_instances(ptc_cuda_src *src, emitted *em, ptc_dtype t, int64_t D, int64_t E) {
  char fwd[64], bwd[64];
  snprintf(fwd, sizeof fwd, "ptc_attn_fwd_%s_d%lld_e%lld", dshort(t), (long long)D, (long long)E);
  snprintf(bwd, sizeof bwd, "ptc_attn_bwd_%s_d%lld_e%lld", dshort(t), (long long)D, (long long)E);
  if (seen(em, fwd)) return;
  const char *T = ctype(t);
  ptc_buf_printf(&src->text,
                 "extern \"C\" __global__ void __launch_bounds__(32 * PTC_ATT_WARPS, 1) %s(const %s *q, "
                 "const %s *k, const %s *v, %s *o, int Tq, int H, int S, int G, int causal, float scale) {\n"
                 "  ptc_attn_fwd<%s, %lld, %lld>(q, k, v, o, Tq, H, S, G, causal, scale);\n}\n",
                 fwd, T, T, T, T, T, (long long)D, (long long)E);
  ptc_buf_printf(&src->text,
                 "extern \"C\" __global__ void __launch_bounds__(32 * PTC_ATT_WARPS, 1) %s(const %s *g, "
                 "const %s *q, const %s *k, const %s *v, %s *dq, float *dk, float *dv, int Tq, int H, "
                 "int S, int G, int causal, float scale) {\n"
                 "  ptc_attn_bwd<%s, %lld, %lld>(g, q, k, v, dq, dk, dv, Tq, H, S, G, causal, scale);\n}\n",
                 bwd, T, T, T, T, T, T, (long long)D, (long long)E);
}

static int emit_attention(ptc_cuda_src *src, emitted *em, ptc_func *f, int32_t i) {
  const ptc_op *op = &f->ops[i];
  bool grad = op->code == PTC_OP_ATTENTION_GRAD;
  const ptc_type *q = &f->values[op->in[grad ? 1 : 0]].type, *kt = &f->values[op->in[grad ? 2 : 1]].type;
  const ptc_type *vt = &f->values[op->in[grad ? 3 : 2]].type;
  int64_t B = q->dims[0], T = q->dims[1], H = q->dims[2], D = q->dims[3];
  int64_t S = kt->dims[1], G = kt->dims[2], E = vt->dims[3];
  if (D > 128 || E > 128 || q->rank != 4) {
    ptc_error(f->mod->ctx, op->loc, "%s: the CUDA attention kernel takes head sizes up to 128 "
              "(this one has %lld and %lld): use smaller heads or a CPU target",
              ptc_opinfo_get(op->code)->name, (long long)D, (long long)E);
    return -1;
  }
  ptc_dtype dt = q->dtype;
  attn_instances(src, em, dt, D, E);
  /* the 16-bit instantiation of every f32 head size exists too: a model
   * compiled with --precision bf16 runs the same shapes */
  if (dt == PTC_DTYPE_F32) attn_instances(src, em, PTC_DTYPE_BF16, D, E);
  ptc_cuda_kernel *k = ptc__cuda_add_kernel(src);
  snprintf(k->name, sizeof k->name, "ptc_attn_%s.%s.%d", grad ? "bwd" : "fwd", f->name, i);
  snprintf(k->function, sizeof k->function, "ptc_attn_%s_%s_d%lld_e%lld", grad ? "bwd" : "fwd",
           dshort(dt), (long long)D, (long long)E);
  snprintf(k->kind, sizeof k->kind, grad ? "attention_bwd" : "attention_fwd");
  k->func = f;
  k->op = i;
  k->grid[0] = (T + 3) / 4;
  k->grid[1] = B * H;
  k->block[0] = 128;
  ptc_buf_puts(&k->params, "[");
  for (int32_t a = 0; a < op->nin; a++) param_json(&k->params, f, op->in[a], "in", NULL);
  for (int32_t r = 0; r < op->nout; r++) {
    bool acc = grad && r > 0;
    param_json(&k->params, f, op->out[r], acc && dt != PTC_DTYPE_F32 ? "out_f32_workspace" : "out",
               acc ? "sum" : "store");
  }
  bool causal = ptc_op_attr_bool(op, "causal", false);
  double scale = ptc_op_attr_float(op, "scale", 1 / sqrt((double)D));
  ptc_buf_printf(&k->params, "]");
  ptc_buf_printf(&k->extra, ", \"scalars\": {\"Tq\": %lld, \"H\": %lld, \"S\": %lld, \"G\": %lld, "
                 "\"causal\": %d, \"scale\": %.9g}", (long long)T, (long long)H, (long long)S,
                 (long long)G, causal ? 1 : 0, (double)(float)scale);
  return 0;
}

/* ---- the multi-tensor AdamW ------------------------------------------------------------ */

static bool same_adamw(const ptc_func *f, const ptc_op *a, const ptc_op *b) {
  static const char *const at[] = {"beta1", "beta2", "eps", "weight_decay"};
  for (int i = 0; i < 4; i++)
    if (ptc_op_attr_float(a, at[i], 0) != ptc_op_attr_float(b, at[i], 0)) return false;
  for (int k = 0; k < 2; k++)
    if (f->values[a->in[k]].type.dtype != f->values[b->in[k]].type.dtype) return false;
  return a->in[4] == b->in[4] && a->in[5] == b->in[5];
}

typedef struct mt_cl {
  const char *in[6];
} mt_cl;

static void mt_in(ce *c, void *cl, int a, const char *col, nm *out) {
  (void)c;
  (void)col;
  snprintf(out->s, sizeof out->s, "%s", ((mt_cl *)cl)->in[a]);
}

static void emit_adamw_kernel(ptc_cuda_src *src, ptc_func *f, const ptc_op *op, const char *name,
                              ptc_dtype pt, ptc_dtype gt) {
  ce cc = {.b = &src->text, .f = f};
  ce *c = &cc;
  ptc_opmath aux, prog;
  ptc_om_optimizer_aux(f, op, &aux);
  PTC_ASSERT(ptc_om_elementwise(f, op, &prog) == 0);
  ptc_buf_printf(c->b,
                 "// AdamW over a list of tensors: blockIdx.y picks the tensor; the math is the\n"
                 "// adamw op's description (codegen/opmath.c), as in the fused kernels\n"
                 "extern \"C\" __global__ void __launch_bounds__(%d, 1) %s(const ptc_mt_tensor *ts, "
                 "const %s *lr, const %s *step) {\n",
                 PTC_CUDA_BLOCK, name, ctype(f->values[op->in[4]].type.dtype),
                 ctype(f->values[op->in[5]].type.dtype));
  c->ind = 1;
  line(c, "const ptc_mt_tensor t = ts[blockIdx.y];");
  line(c, "%s *p = (%s *)t.p;", ctype(pt), ctype(pt));
  line(c, "const %s *g = (const %s *)t.g;", ctype(gt), ctype(gt));
  line(c, "const float lr_ = ptc_ld(lr);");
  line(c, "const %s step_ = ptc_ld(step);", vtype(f->values[op->in[5]].type.dtype));
  mt_cl cl = {{"", "", "", "", "lr_", "step_"}};
  prog_env ea = {mt_in, &cl, NULL, NULL, NULL, NULL};
  nm auxv[PTC_OM_MAX_OUT];
  print_prog(c, &aux, &ea, auxv, NULL);
  line(c, "for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < t.n; "
       "i += (long long)gridDim.x * blockDim.x) {");
  c->ind++;
  line(c, "const float p_ = ptc_ld(p + i), g_ = ptc_ld(g + i), m_ = t.m[i], v_ = t.v[i];");
  mt_cl ce2 = {{"p_", "g_", "m_", "v_", "lr_", "step_"}};
  prog_env ee = {mt_in, &ce2, auxv, NULL, NULL, NULL};
  nm outs[PTC_OM_MAX_OUT];
  print_prog(c, &prog, &ee, outs, NULL);
  line(c, "ptc_st(p + i, %s);", outs[0].s);
  line(c, "t.m[i] = %s;", outs[1].s);
  line(c, "t.v[i] = %s;", outs[2].s);
  close_loop(c);
  ptc_buf_puts(c->b, "}\n");
}

static void emit_adamw(ptc_cuda_src *src, emitted *em, ptc_func *f) {
  int32_t n = 0;
  int32_t *cls = ptc_xcalloc((size_t)f->nops + 1, sizeof *cls);
  for (int32_t i = 0; i < f->nops; i++) cls[i] = -1;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    if (op->code != PTC_OP_ADAMW || cls[i] >= 0) continue;
    int32_t id = n++;
    for (int32_t j = i; j < f->nops; j++)
      if (f->ops[j].code == PTC_OP_ADAMW && cls[j] < 0 && same_adamw(f, op, &f->ops[j])) cls[j] = id;
    ptc_dtype pt = f->values[op->in[0]].type.dtype, gt = f->values[op->in[1]].type.dtype;
    char fn[96], fn16[96], ident[64];
    /* a C identifier: a pipeline's functions are named step.0, fwd.1... */
    snprintf(ident, sizeof ident, "%s", f->name);
    for (char *q = ident; *q; q++)
      if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9')))
        *q = '_';
    snprintf(fn, sizeof fn, "ptc_adamw_mt_%s_%d", ident, id);
    snprintf(fn16, sizeof fn16, "ptc_adamw_mt_%s_%d_g_bf16", ident, id);
    if (!seen(em, fn)) {
      emit_adamw_kernel(src, f, op, fn, pt, gt);
      /* gradients held in bf16 (16-bit models): the same update */
      if (gt == PTC_DTYPE_F32) emit_adamw_kernel(src, f, op, fn16, pt, PTC_DTYPE_BF16);
    }
    ptc_cuda_kernel *k = ptc__cuda_add_kernel(src);
    snprintf(k->name, sizeof k->name, "ptc_adamw_mt.%s.%d", f->name, id);
    snprintf(k->function, sizeof k->function, "%s", fn);
    snprintf(k->kind, sizeof k->kind, "adamw_mt");
    k->func = f;
    k->op = i;
    int64_t tensors = 0, maxn = 0;
    ptc_buf_puts(&k->params, "[");
    for (int32_t j = i; j < f->nops; j++) {
      if (cls[j] != id) continue;
      const ptc_op *o = &f->ops[j];
      char pn[160];
      value_name(f, o->in[0], pn, sizeof pn);
      int64_t numel = ptc_type_numel(&f->values[o->in[0]].type);
      maxn = numel > maxn ? numel : maxn;
      ptc_buf_printf(&k->params, "%s{\"role\": \"tensor\", \"param\": ", tensors ? ", " : "");
      ptc__json_str(&k->params, pn);
      ptc_buf_printf(&k->params, ", \"numel\": %lld, \"op\": %d, \"group\": %lld}", (long long)numel, j,
                     (long long)ptc_op_group(o));
      tensors++;
    }
    ptc_buf_puts(&k->params, "]");
    int64_t g = (maxn + PTC_CUDA_BLOCK - 1) / PTC_CUDA_BLOCK;
    k->grid[0] = g < 1024 ? (g < 1 ? 1 : g) : 1024;
    k->grid[1] = tensors;
    k->block[0] = PTC_CUDA_BLOCK;
    char lr[160], st[160];
    value_name(f, op->in[4], lr, sizeof lr);
    value_name(f, op->in[5], st, sizeof st);
    ptc_buf_puts(&k->extra, ", \"lr\": ");
    ptc__json_str(&k->extra, lr);
    ptc_buf_puts(&k->extra, ", \"step\": ");
    ptc__json_str(&k->extra, st);
    if (gt == PTC_DTYPE_F32) ptc_buf_printf(&k->extra, ", \"function_g_bf16\": \"%s\"", fn16);
  }
  free(cls);
}

/* ---- matrix products: cuBLASLt calls ----------------------------------------------------- */

static int32_t use_count(const ptc_func *f, int32_t v, int32_t *user) {
  int32_t n = 0;
  for (int32_t i = 0; i < f->nops; i++)
    for (int32_t a = 0; a < f->ops[i].nin; a++)
      if (f->ops[i].in[a] == v) {
        n++;
        *user = i;
      }
  return n;
}

static void matmul_record(ptc_buf *b, ptc_func *f, int32_t i) {
  const ptc_op *op = &f->ops[i];
  const ptc_type *at = &f->values[op->in[0]].type, *bt = &f->values[op->in[1]].type;
  const ptc_type *ot = &f->values[op->out[0]].type;
  bool ta = ptc_op_attr_bool(op, "transpose_a", false), tb = ptc_op_attr_bool(op, "transpose_b", false);
  int64_t M = ot->dims[ot->rank - 2], N = ot->dims[ot->rank - 1];
  int64_t K = ta ? at->dims[at->rank - 2] : at->dims[at->rank - 1];
  int64_t batch = ptc_type_numel(ot) / (M * N);
  int64_t abatch = ptc_type_numel(at) / (M * K), bbatch = ptc_type_numel(bt) / (K * N);
  char an[160], bn[160], on[160];
  value_name(f, op->in[0], an, sizeof an);
  value_name(f, op->in[1], bn, sizeof bn);
  value_name(f, op->out[0], on, sizeof on);
  ptc_buf_printf(b, "%s{\"func\": \"%s\", \"op\": %d, ", b->len > 1 ? ",\n    " : "", f->name, i);
  if (op->loc.file) {
    char loc[512];
    snprintf(loc, sizeof loc, "%s:%d:%d", op->loc.file, op->loc.line, op->loc.col);
    ptc_buf_puts(b, "\"loc\": ");
    ptc__json_str(b, loc);
    ptc_buf_puts(b, ", ");
  }
  ptc_buf_puts(b, "\"a\": {\"value\": ");
  ptc__json_str(b, an);
  ptc_buf_puts(b, ", ");
  json_type(b, at);
  ptc_buf_printf(b, ", \"transpose\": %s}, \"b\": {\"value\": ", ta ? "true" : "false");
  ptc__json_str(b, bn);
  ptc_buf_puts(b, ", ");
  json_type(b, bt);
  ptc_buf_printf(b, ", \"transpose\": %s}, \"d\": {\"value\": ", tb ? "true" : "false");
  ptc__json_str(b, on);
  ptc_buf_puts(b, ", ");
  json_type(b, ot);
  /* row-major D = op(A) op(B) is column-major D^T = op(B)^T op(A)^T: cuBLASLt
   * gets B as its A and A as its B, with m = N, n = M */
  ptc_buf_printf(b, "}, \"m\": %lld, \"n\": %lld, \"k\": %lld, \"batch\": %lld, "
                 "\"stride_a\": %lld, \"stride_b\": %lld, \"stride_d\": %lld, "
                 "\"compute\": \"CUBLAS_COMPUTE_32F\", \"scale_type\": \"CUDA_R_32F\", "
                 "\"layout\": \"row-major: call cuBLASLt with (B, A) swapped, m = n_row, n = m_row\"",
                 (long long)M, (long long)N, (long long)K, (long long)batch,
                 abatch > 1 ? (long long)(M * K) : 0LL, bbatch > 1 ? (long long)(K * N) : 0LL,
                 (long long)(M * N));
  /* an epilogue cuBLASLt has: + bias over the last dim, then GELU (tanh form) */
  int32_t user = -1;
  const char *epi = "DEFAULT";
  int32_t bias = -1, gelu_op = -1, add_op = -1;
  if (use_count(f, op->out[0], &user) == 1 && f->ops[user].code == PTC_OP_ADD) {
    const ptc_op *add = &f->ops[user];
    int32_t other = add->in[0] == op->out[0] ? add->in[1] : add->in[0];
    const ptc_type *bt2 = &f->values[other].type;
    if (bt2->rank == 1 && bt2->dims[0] == N && bt2->dtype == ot->dtype &&
        f->values[add->out[0]].type.rank == ot->rank) {
      add_op = user;
      bias = other;
      epi = "BIAS";
      int32_t u2 = -1, n2 = use_count(f, add->out[0], &u2);
      int32_t gu = -1;
      for (int32_t j = user + 1; j < f->nops && gu < 0; j++)
        if (f->ops[j].code == PTC_OP_GELU && f->ops[j].in[0] == add->out[0]) gu = j;
      if (gu >= 0) {
        gelu_op = gu;
        epi = n2 == 1 ? "GELU_BIAS" : "GELU_AUX_BIAS";
      }
    }
  }
  ptc_buf_printf(b, ", \"epilogue\": \"%s\"", epi);
  if (bias >= 0) {
    char bnm[160];
    value_name(f, bias, bnm, sizeof bnm);
    ptc_buf_puts(b, ", \"bias\": ");
    ptc__json_str(b, bnm);
    ptc_buf_printf(b, ", \"bias_add_op\": %d", add_op);
    if (gelu_op >= 0) {
      char gn[160];
      value_name(f, f->ops[gelu_op].out[0], gn, sizeof gn);
      ptc_buf_printf(b, ", \"gelu_op\": %d, \"gelu_value\": ", gelu_op);
      ptc__json_str(b, gn);
      if (strcmp(epi, "GELU_AUX_BIAS") == 0) {
        char pre[160];
        value_name(f, f->ops[add_op].out[0], pre, sizeof pre);
        ptc_buf_puts(b, ", \"aux\": ");
        ptc__json_str(b, pre);
      }
    }
    /* the group the epilogue makes redundant, when it holds exactly those ops */
    int64_t gid = ptc_op_group(&f->ops[add_op]);
    int32_t last = gelu_op >= 0 ? gelu_op : add_op;
    bool exact = gid >= 0 && (add_op == 0 || ptc_op_group(&f->ops[add_op - 1]) != gid) &&
                 (last + 1 >= f->nops || ptc_op_group(&f->ops[last + 1]) != gid) &&
                 (gelu_op < 0 || gelu_op == add_op + 1);
    if (exact) ptc_buf_printf(b, ", \"replaces_group\": %lld", (long long)gid);
  }
  ptc_buf_puts(b, "}");
}

/* ---- the module ---------------------------------------------------------------------------- */

int ptc__cuda_emit_module(ptc_module *m, ptc_cuda_src *src) {
  memset(src, 0, sizeof *src);
  ptc_buf_init(&src->text);
  ptc_buf_init(&src->matmuls);
  ptc_buf_puts(&src->text, ptc__cuda_prelude);
  ptc_buf_puts(&src->text, ptc__cuda_templates);
  ptc_buf_puts(&src->matmuls, "[");
  emitted em = {0};
  /* kernels with the same text are compiled once */
  int32_t nbodies = 0, capb = 0;
  char **bodies = NULL, **fnames = NULL;
  int rc = 0;
  for (int32_t fi = 0; fi < m->nfuncs && rc == 0; fi++) {
    ptc_func *f = m->funcs[fi];
    for (int32_t i = 0; i < f->nops && rc == 0; i++) {
      const ptc_op *op = &f->ops[i];
      int64_t gid = ptc_op_group(op);
      bool solo = false;
      ptc_group_sig sig;
      if (gid >= 0 && (i == 0 || ptc_op_group(&f->ops[i - 1]) != gid)) {
        if (ptc_group_signature(f, i, &sig) != 0) {
          rc = -1;
          break;
        }
      } else if (gid < 0 && op->code != PTC_OP_CONSTANT && op->code != PTC_OP_BROADCAST_TO &&
                 ptc_op_fusible(f, op) && ptc_group_analyze_solo(f, i, NULL, &sig) == 0) {
        solo = true; /* a fusible op the fuse pass left alone: a kernel of its own */
      } else {
        goto other;
      }
      {
        ptc_cuda_kernel *k = ptc__cuda_add_kernel(src);
        if (solo) snprintf(k->name, sizeof k->name, "ptc_s%d_%d", (int)fi, (int)i);
        else ptc_group_kernel_name(gid, k->name, sizeof k->name);
        k->group = solo ? -1 : gid;
        k->func = f;
        k->op = i;
        snprintf(k->kind, sizeof k->kind, sig.kind == PTC_GROUP_ROWWISE ? "rowwise" : "elementwise");
        ptc_buf body;
        ptc_buf_init(&body);
        emit_group(f, &sig, "PTC_KERNEL", &body, k);
        ptc_group_sig_fini(&sig);
        int32_t same = -1;
        for (int32_t j = 0; j < nbodies && same < 0; j++)
          if (strcmp(bodies[j], body.data) == 0) same = j;
        if (same >= 0) {
          snprintf(k->function, sizeof k->function, "%s", fnames[same]);
        } else {
          snprintf(k->function, sizeof k->function, "%s", k->name);
          if (nbodies == capb) {
            capb = capb ? 2 * capb : 32;
            bodies = ptc_xrealloc(bodies, (size_t)capb * sizeof *bodies);
            fnames = ptc_xrealloc(fnames, (size_t)capb * sizeof *fnames);
          }
          bodies[nbodies] = ptc_xmalloc(body.len + 1);
          memcpy(bodies[nbodies], body.data, body.len + 1);
          fnames[nbodies] = ptc_xmalloc(strlen(k->name) + 1);
          strcpy(fnames[nbodies++], k->name);
          k->line0 = ptc__cuda_line_count(&src->text) + 1;
          char *text = body.data, *at = strstr(text, "PTC_KERNEL");
          ptc_buf_put(&src->text, text, (size_t)(at - text));
          ptc_buf_puts(&src->text, k->name);
          ptc_buf_puts(&src->text, at + strlen("PTC_KERNEL"));
          k->line1 = ptc__cuda_line_count(&src->text) + 1;
        }
        ptc_buf_fini(&body);
      }
    other:
      if (op->code == PTC_OP_ATTENTION || op->code == PTC_OP_ATTENTION_GRAD) {
        int32_t l0 = ptc__cuda_line_count(&src->text) + 1;
        if (emit_attention(src, &em, f, i) != 0) rc = -1;
        else {
          src->k[src->nk - 1].line0 = l0;
          src->k[src->nk - 1].line1 = ptc__cuda_line_count(&src->text) + 1;
        }
      }
      if (op->code == PTC_OP_MATMUL) matmul_record(&src->matmuls, f, i);
    }
    if (rc == 0) emit_adamw(src, &em, f);
  }
  ptc_buf_puts(&src->matmuls, "]");
  for (int32_t j = 0; j < nbodies; j++) {
    free(bodies[j]);
    free(fnames[j]);
  }
  free(bodies);
  free(fnames);
  free(em.name);
  if (rc != 0) ptc__cuda_src_fini(src);
  return rc;
}
