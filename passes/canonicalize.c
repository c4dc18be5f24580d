/* canonicalize.c -- shape re-inference and local simplification.
 *
 * Two jobs, as MLIR's canonicalizer plus a shape check:
 *  1. Re-run every op's shape rule (the same one the builder runs) on its
 *     current operands and compare with the result types the IR states, so
 *     an earlier pass that rewired operands cannot leave a stale type behind.
 *  2. Rewrite to a fixed point (at most max-iterations sweeps):
 *       x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1   ->  x
 *         (0 and 1 are constant ops; only when the result's type and
 *          sharding equal x's, so broadcasting never changes meaning)
 *       transpose(transpose(x, p), q)  ->  x, or transpose(x, p∘q)
 *       transpose(x, identity)         ->  x
 *       reshape(reshape(x))            ->  reshape(x), or x when same type
 *       reshape(x) to x's own type     ->  x
 *       broadcast_to(x) to x's type    ->  x
 *       cast(x) to x's own dtype       ->  x
 *       slice of the whole axis        ->  x
 *       constant folding where the result is exact and independent of the
 *       kernel: + - * / max on f32/f64 (IEEE rounding is deterministic),
 *       + - * max on integers without overflow, neg, relu, sqrt, casts
 *       between f32/f64/integers, and reshape/transpose/slice/broadcast_to
 *       of a constant (constants are splats).  bf16/f16 arithmetic and
 *       transcendental functions are left alone: their result depends on
 *       the kernel's rounding.
 *     Ops that become unused are removed, as MLIR's canonicalizer does.
 *
 * Rewrites are made in place (rewiring an operand, replacing an attribute,
 * turning an op into a constant): the op keeps its result value, so its
 * type, sharding, name and location carry over without renumbering.
 * x + 0 -> x treats +0 and -0 alike, as XLA's simplifier does; only
 * x = -0.0 could tell the difference.
 */
#include "passes/passes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct canon {
  ptc_module *m;
  ptc_func *f;
} canon;

/* ---- helpers ------------------------------------------------------------ */

static ptc_op *def_op(ptc_func *f, int32_t v) {
  const ptc_value *val = &f->values[v];
  return val->kind == PTC_VALUE_OP ? &f->ops[val->def] : NULL;
}

/* The splat value of v when v is a constant op's result. */
static bool const_value(ptc_func *f, int32_t v, double *out) {
  ptc_op *op = def_op(f, v);
  if (!op || op->code != PTC_OP_CONSTANT) return false;
  *out = ptc_op_attr_float(op, "value", 0.0);
  return true;
}

static bool is_const(ptc_func *f, int32_t v, double want) {
  double c;
  return const_value(f, v, &c) && c == want;
}

static bool same_shard(const ptc_value *a, const ptc_value *b) {
  if (a->shard.present != b->shard.present) return false;
  return !a->shard.present || ptc_sharding_eq(&a->shard, &b->shard, a->type.rank);
}

/* Can uses of op's (single) result be replaced by value x? */
static bool same_as(ptc_func *f, const ptc_op *op, int32_t x) {
  const ptc_value *r = &f->values[op->out[0]], *v = &f->values[x];
  return ptc_type_eq(&r->type, &v->type) && same_shard(r, v);
}

/* Forwards every use of op i's result to x.  The op is then dead and goes
 * with the end-of-sweep cleanup. */
static bool forward(canon *c, int32_t i, int32_t x) {
  ptc_func_replace_uses(c->f, c->f->ops[i].out[0], x, i + 1);
  return true;
}

/* Turns op into `constant {value = v}`, keeping its result value. */
static bool make_constant(canon *c, ptc_op *op, double v) {
  ptc_attr *a = ptc_arena_alloc(&c->m->arena, sizeof *a);
  *a = ptc_attr_float(ptc_intern_cstr(c->m->ctx, "value"), v);
  op->code = PTC_OP_CONSTANT;
  op->nin = 0;
  op->nattr = 1;
  op->attrs = a;
  return true;
}

/* Copy of op's attributes with `name` (an ints attribute) set to v[0..n). */
static void set_ints_attr(canon *c, ptc_op *op, const char *name,
                          const int64_t *v, int32_t n) {
  ptc_attr *attrs = ptc_arena_alloc(&c->m->arena, (size_t)op->nattr * sizeof *attrs);
  memcpy(attrs, op->attrs, (size_t)op->nattr * sizeof *attrs);
  int64_t *copy = ptc_arena_alloc(&c->m->arena, (size_t)(n ? n : 1) * sizeof *copy);
  if (n) memcpy(copy, v, (size_t)n * sizeof *copy);
  for (int32_t k = 0; k < op->nattr; k++) {
    if (strcmp(attrs[k].name, name) != 0) continue;
    attrs[k].u.ints.n = n;
    attrs[k].u.ints.v = copy;
  }
  op->attrs = attrs;
}

/* ---- constant folding ----------------------------------------------------- */

/* Integers are folded only while every value is exact in a double. */
#define EXACT_INT_LIMIT 9007199254740992.0 /* 2^53 */

static bool int_range(ptc_dtype t, double *lo, double *hi) {
  switch (t) {
  case PTC_DTYPE_I8: *lo = -128.0; *hi = 127.0; return true;
  case PTC_DTYPE_I32: *lo = -2147483648.0; *hi = 2147483647.0; return true;
  case PTC_DTYPE_I64: *lo = -EXACT_INT_LIMIT; *hi = EXACT_INT_LIMIT; return true;
  default: return false;
  }
}

/* Rounds v to dtype t; false when that is not trivially exact. */
static bool round_to(ptc_dtype t, double v, double *out) {
  double lo, hi;
  switch (t) {
  case PTC_DTYPE_F32: *out = (double)(float)v; return true;
  case PTC_DTYPE_F64: *out = v; return true;
  default:
    if (!int_range(t, &lo, &hi)) return false; /* bf16, f16, bool */
    if (v != v || v < lo || v > hi || v != trunc(v)) return false;
    *out = v;
    return true;
  }
}

/* Operands of f32 ops hold f32 values whatever the attribute's precision. */
static bool operand_value(ptc_dtype t, double v, double *out) {
  return round_to(t, v, out);
}

static bool fold_binary(ptc_opcode code, ptc_dtype t, double a, double b,
                        double *out) {
  if (!operand_value(t, a, &a) || !operand_value(t, b, &b)) return false;
  double r;
  bool is_int = !ptc_dtype_is_float(t);
  switch (code) {
  case PTC_OP_ADD: r = a + b; break;
  case PTC_OP_SUB: r = a - b; break;
  case PTC_OP_MUL: r = a * b; break;
  case PTC_OP_DIV:
    if (is_int) return false; /* truncation and /0 are the kernel's business */
    r = a / b;
    break;
  case PTC_OP_MAXIMUM:
    if (a != a || b != b) return false; /* NaN propagation varies by kernel */
    r = a > b ? a : b;
    break;
  default: return false;
  }
  return round_to(t, r, out);
}

static bool fold_unary(const ptc_op *op, ptc_dtype in_t, ptc_dtype out_t,
                       double a, double *out) {
  switch (op->code) {
  case PTC_OP_RESHAPE:
  case PTC_OP_TRANSPOSE:
  case PTC_OP_SLICE:
  case PTC_OP_BROADCAST_TO:
    *out = a; /* a splat stays the same splat, in any dtype */
    return true;
  default: break;
  }
  if (!operand_value(in_t, a, &a)) return false;
  switch (op->code) {
  case PTC_OP_NEG: return round_to(out_t, -a, out);
  case PTC_OP_RELU:
    if (a != a) return false;
    return round_to(out_t, a > 0 ? a : 0.0, out);
  case PTC_OP_SQRT:
    if (!(a >= 0)) return false;
    return round_to(out_t, sqrt(a), out); /* correctly rounded for f32 too */
  case PTC_OP_CAST:
    if (!ptc_dtype_is_float(out_t) && ptc_dtype_is_float(in_t) && a != trunc(a))
      return false; /* float -> int rounding mode is the kernel's */
    return round_to(out_t, a, out);
  default: return false;
  }
}

/* Folds op i when all its operands are constants. */
static bool try_fold(canon *c, int32_t i) {
  ptc_op *op = &c->f->ops[i];
  if (op->nout != 1 || op->nin < 1 || op->nin > 2) return false;
  double v[2];
  for (int32_t k = 0; k < op->nin; k++)
    if (!const_value(c->f, op->in[k], &v[k])) return false;
  ptc_dtype in_t = c->f->values[op->in[0]].type.dtype;
  ptc_dtype out_t = c->f->values[op->out[0]].type.dtype;
  double r;
  bool ok = op->nin == 2 ? fold_binary(op->code, out_t, v[0], v[1], &r)
                         : fold_unary(op, in_t, out_t, v[0], &r);
  return ok && make_constant(c, op, r);
}

/* ---- simplifications ------------------------------------------------------ */

static bool simplify_arith(canon *c, int32_t i) {
  ptc_op *op = &c->f->ops[i];
  int32_t a = op->in[0], b = op->in[1];
  double unit = (op->code == PTC_OP_MUL || op->code == PTC_OP_DIV) ? 1.0 : 0.0;
  bool commutes = op->code == PTC_OP_ADD || op->code == PTC_OP_MUL;
  if (is_const(c->f, b, unit) && same_as(c->f, op, a)) return forward(c, i, a);
  if (commutes && is_const(c->f, a, unit) && same_as(c->f, op, b))
    return forward(c, i, b);
  return false;
}

static bool is_identity_perm(const ptc_attr *p) {
  for (int32_t k = 0; k < p->u.ints.n; k++)
    if (p->u.ints.v[k] != k) return false;
  return true;
}

static bool simplify_transpose(canon *c, int32_t i) {
  ptc_op *op = &c->f->ops[i];
  const ptc_attr *p2 = ptc_op_attr(op, "perm");
  if (!p2) return false;
  if (is_identity_perm(p2) && same_as(c->f, op, op->in[0]))
    return forward(c, i, op->in[0]);
  ptc_op *inner = def_op(c->f, op->in[0]);
  if (!inner || inner->code != PTC_OP_TRANSPOSE) return false;
  const ptc_attr *p1 = ptc_op_attr(inner, "perm");
  if (!p1 || p1->u.ints.n != p2->u.ints.n) return false;
  /* out[i] = mid[p2[i]] = x[p1[p2[i]]] */
  int64_t q[PTC_MAX_RANK];
  int32_t n = p2->u.ints.n;
  PTC_ASSERT(n <= PTC_MAX_RANK);
  bool identity = true;
  for (int32_t k = 0; k < n; k++) {
    q[k] = p1->u.ints.v[p2->u.ints.v[k]];
    identity = identity && q[k] == k;
  }
  int32_t x = inner->in[0];
  if (identity && same_as(c->f, op, x)) return forward(c, i, x);
  op->in[0] = x;
  set_ints_attr(c, op, "perm", q, n);
  return true;
}

static bool simplify_reshape(canon *c, int32_t i) {
  ptc_op *op = &c->f->ops[i];
  if (same_as(c->f, op, op->in[0])) return forward(c, i, op->in[0]);
  ptc_op *inner = def_op(c->f, op->in[0]);
  if (!inner || inner->code != PTC_OP_RESHAPE) return false;
  int32_t x = inner->in[0];
  if (same_as(c->f, op, x)) return forward(c, i, x);
  op->in[0] = x; /* the stated result type already says where it ends up */
  return true;
}

static bool simplify_slice(canon *c, int32_t i) {
  ptc_op *op = &c->f->ops[i];
  const ptc_type *t = &c->f->values[op->in[0]].type;
  int64_t axis = ptc_op_attr_int(op, "axis", -1);
  if (axis < 0 || axis >= t->rank) return false;
  if (ptc_op_attr_int(op, "start", -1) == 0 &&
      ptc_op_attr_int(op, "end", -1) == t->dims[axis] && same_as(c->f, op, op->in[0]))
    return forward(c, i, op->in[0]);
  return false;
}

/* One rewrite of op i, if any applies; true when the IR changed. */
static bool simplify_op(canon *c, int32_t i) {
  ptc_op *op = &c->f->ops[i];
  switch (op->code) {
  case PTC_OP_ADD:
  case PTC_OP_SUB:
  case PTC_OP_MUL:
  case PTC_OP_DIV:
    if (simplify_arith(c, i)) return true;
    break;
  case PTC_OP_TRANSPOSE:
    if (simplify_transpose(c, i)) return true;
    break;
  case PTC_OP_RESHAPE:
    if (simplify_reshape(c, i)) return true;
    break;
  case PTC_OP_BROADCAST_TO:
    if (same_as(c->f, op, op->in[0])) return forward(c, i, op->in[0]);
    break;
  case PTC_OP_CAST:
    if (same_as(c->f, op, op->in[0])) return forward(c, i, op->in[0]);
    break;
  case PTC_OP_SLICE:
    if (simplify_slice(c, i)) return true;
    break;
  default: break;
  }
  return try_fold(c, i);
}

/* ---- shape check ------------------------------------------------------------ */

/* Re-runs op i's shape rule and compares with the stated result types. */
static int check_op(canon *c, int32_t i) {
  ptc_func *f = c->f;
  const ptc_op *op = &f->ops[i];
  const ptc_opinfo *info = ptc_opinfo_get(op->code);
  int32_t nin = op->nin;
  ptc_type *in = ptc_xcalloc((size_t)(nin ? nin : 1), sizeof *in);
  ptc_sharding *in_s = ptc_xcalloc((size_t)(nin ? nin : 1), sizeof *in_s);
  ptc_type out[8];
  ptc_sharding out_s[8];
  PTC_ASSERT(op->nout <= 8);
  memset(out, 0, sizeof out);
  memset(out_s, 0, sizeof out_s);
  for (int32_t k = 0; k < nin; k++) {
    in[k] = f->values[op->in[k]].type;
    in_s[k] = f->values[op->in[k]].shard;
  }
  for (int32_t r = 0; r < op->nout; r++) {
    if (info->flags & PTC_OPF_TYPE_GIVEN) out[r] = f->values[op->out[r]].type;
    out_s[r] = f->values[op->out[r]].shard;
  }
  ptc_infer inf = {
      .ctx = c->m->ctx, .mod = c->m, .code = op->code, .loc = op->loc,
      .nin = nin, .in = in, .in_shard = in_s,
      .nattr = op->nattr, .attrs = op->attrs,
      .nout = op->nout, .out = out, .out_shard = out_s,
  };
  int rc = ptc_op_infer(&inf);
  for (int32_t r = 0; rc == 0 && r < op->nout; r++) {
    const ptc_type *stated = &f->values[op->out[r]].type;
    if (ptc_type_eq(stated, &out[r])) continue;
    ptc_buf s, w;
    ptc_buf_init(&s);
    ptc_buf_init(&w);
    ptc_type_print(&s, stated);
    ptc_type_print(&w, &out[r]);
    ptc_error(c->m->ctx, op->loc,
              "'%s' result %d has type %s but its operands give %s", info->name,
              r, s.data, w.data);
    ptc_buf_fini(&s);
    ptc_buf_fini(&w);
    rc = -1;
  }
  free(in);
  free(in_s);
  return rc;
}

static int check_module(ptc_module *m) {
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    canon c = {m, m->funcs[fi]};
    for (int32_t i = 0; i < c.f->nops; i++)
      if (check_op(&c, i) != 0) return -1;
  }
  return 0;
}

/* ---- the pass ----------------------------------------------------------- */

static int canonicalize_run(ptc_module *m, const ptc_pass_opts *o,
                            bool *changed) {
  if (check_module(m) != 0) return -1;
  int64_t max_iter = ptc_pass_opt_int(o, "max-iterations");
  for (int64_t it = 0; it < max_iter; it++) {
    bool any = false;
    for (int32_t fi = 0; fi < m->nfuncs; fi++) {
      canon c = {m, m->funcs[fi]};
      for (int32_t i = 0; i < c.f->nops; i++)
        if (simplify_op(&c, i)) any = true;
      if (ptc_dce_func(c.f) > 0) any = true;
    }
    if (!any) break;
    *changed = true;
  }
  /* The rewrites above must not have produced a type the rules disagree
   * with; checking here names the op if one did. */
  return *changed ? check_module(m) : 0;
}

static const ptc_pass_opt_spec canonicalize_opts[] = {
    {.name = "max-iterations",
     .kind = PTC_PASS_OPT_INT,
     .dflt = 10,
     .min = 1,
     .max = 1000000,
     .help = "most rewrite sweeps before stopping (a fixed point usually "
             "takes 2)"},
};

const ptc_pass_info ptc_pass_canonicalize = {
    .name = "canonicalize",
    .summary = "re-check shapes, simplify algebra and shape ops, fold "
               "constants, drop dead ops",
    .opts = canonicalize_opts,
    .nopts = PTC_ARRAY_LEN(canonicalize_opts),
    .run = canonicalize_run,
};
