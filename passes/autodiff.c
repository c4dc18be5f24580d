/* autodiff.c -- reverse-mode automatic differentiation of the loss.
 *
 * The frontend writes one function, @forward, that returns the scalar loss.
 * This pass turns it into @step: the same forward ops, then the backward
 * ops, returning (loss, d loss / d p for every trainable float parameter p
 * the function reads, in module order).  Each gradient value is named
 * %grad.<param name>, so dumps read well and later passes (the optimizer)
 * can find a parameter's gradient by name as well as by position.
 *
 * The backward graph is ordinary ptir, built with ptc_build, so it is
 * shape-checked as it is made, verifies, prints and round-trips like any
 * other IR.  Every backward op carries the location of the forward op it
 * differentiates, so a dump shows which .ptg line each one comes from.
 *
 * How: one forward sweep marks the values that depend on a parameter
 * (active), one backward sweep marks those the loss depends on (useful);
 * only values that are both get a gradient, so nothing is built for a
 * branch that cannot reach a parameter.  Then the ops are visited in
 * reverse: when an op is reached every use of its result has been visited,
 * so the result's gradient is complete, and the op's rule adds one
 * contribution per operand that needs one.  A value used several times
 * (tied embeddings, residual streams) sums its contributions with `add`.
 *
 * The rules sit in one table indexed by opcode and generated from ops.def
 * (the `grad_<name>` functions below), so a new op cannot lack a rule:
 * ops with no derivative in this graph (collectives, transfers, optimizer
 * updates, the gradient ops themselves) have a rule that reports
 * "cannot differentiate" at the op's location.  docs/autodiff.md lists the
 * rule of every op.
 */
#include "passes/passes.h"

#include <stdlib.h>
#include <string.h>

/* The gradient of one slice of a value, kept apart until the value's
 * gradient is needed: slices that tile an axis (q, k, v split from one
 * projection) then become one concat instead of a pad and an add each. */
typedef struct piece {
  int64_t axis, start, end;
  int32_t grad; /* gradient of the slice */
  int32_t next; /* next piece of the same value, or -1 */
  ptc_loc loc;  /* the slice op's */
} piece;

typedef struct ad {
  ptc_module *m;
  ptc_ctx *ctx;
  ptc_func *f;
  int32_t nfwd; /* values of the forward function: ids below this */
  bool *need;   /* [nfwd] the value needs a gradient */
  int32_t *grad; /* [nfwd] gradient value id, or -1 while none */
  int32_t *pieces; /* [nfwd] first pending slice gradient, or -1 */
  piece *pv;       /* heap vector of pieces */
  int32_t npv, cap_pv;
  ptc_loc loc;  /* location of the forward op being differentiated */
} ad;

/* A gradient rule: `op` is a copy of the forward op (building ops may move
 * f->ops), g the gradient of its result.  Adds contributions with give().
 * Returns 0, or -1 after reporting. */
typedef int (*grad_fn)(ad *a, const ptc_op *op, int32_t g);

#define TRY(x)                                                              \
  do {                                                                      \
    if ((x) < 0) return -1;                                                 \
  } while (0)

/* ---- building ------------------------------------------------------------ */

static ptc_type type_of(const ad *a, int32_t v) { return a->f->values[v].type; }

/* Builds one op at the end of the function, at the location of the forward
 * op being differentiated.  given: the result types of TYPE_GIVEN ops (or
 * NULL).  Writes the result ids to out[] (nout of them); returns 0 or -1. */
static int build(ad *a, ptc_opcode code, int32_t nin, const int32_t *in, int32_t nattr,
                 const ptc_attr *attrs, const ptc_type *given, int32_t *out) {
  int32_t nout = ptc_opinfo_get(code)->nout;
  ptc_build_args b = {.code = code, .nin = nin, .in = in, .nattr = nattr, .attrs = attrs,
                      .ngiven = given ? nout : 0, .given = given, .loc = a->loc};
  int32_t idx = ptc_build(a->f, &b);
  if (idx < 0) return -1;
  for (int32_t r = 0; r < nout; r++) out[r] = a->f->ops[idx].out[r];
  return 0;
}

/* Single-result op; returns its value id or -1. */
static int32_t op1(ad *a, ptc_opcode code, int32_t nin, const int32_t *in, int32_t nattr,
                   const ptc_attr *attrs) {
  int32_t r;
  return build(a, code, nin, in, nattr, attrs, NULL, &r) < 0 ? -1 : r;
}

static int32_t unary(ad *a, ptc_opcode code, int32_t x) {
  if (x < 0) return -1;
  return op1(a, code, 1, &x, 0, NULL);
}

static int32_t binary(ad *a, ptc_opcode code, int32_t x, int32_t y) {
  if (x < 0 || y < 0) return -1;
  int32_t in[2] = {x, y};
  return op1(a, code, 2, in, 0, NULL);
}

static int32_t given1(ad *a, ptc_opcode code, int32_t nin, const int32_t *in,
                      const ptc_type *t) {
  int32_t r;
  return build(a, code, nin, in, 0, NULL, t, &r) < 0 ? -1 : r;
}

/* A scalar splat of dtype dt (broadcasts against anything). */
static int32_t scalar(ad *a, ptc_dtype dt, double v) {
  ptc_type t = {.dtype = dt, .rank = 0};
  ptc_attr val = ptc_attr_float("value", v);
  int32_t r;
  return build(a, PTC_OP_CONSTANT, 0, NULL, 1, &val, &t, &r) < 0 ? -1 : r;
}

/* x reshaped to t (x itself when it already has that type). */
static int32_t reshape_to(ad *a, int32_t x, const ptc_type *t) {
  if (x < 0) return -1;
  ptc_type xt = type_of(a, x);
  if (ptc_type_eq(&xt, t)) return x;
  return given1(a, PTC_OP_RESHAPE, 1, &x, t);
}

/* The gradient of an operand of type t that was broadcast to g's shape:
 * g summed over the broadcast dimensions (the leading ones t lacks and
 * those where t has 1), then reshaped to t where keepdim left 1s. */
static int32_t unbroadcast(ad *a, int32_t g, const ptc_type *t) {
  if (g < 0) return -1;
  ptc_type gt = type_of(a, g);
  if (ptc_type_eq(&gt, t)) return g;
  int32_t lead = gt.rank - t->rank;
  PTC_ASSERT(lead >= 0);
  int64_t axes[PTC_MAX_RANK];
  int32_t n = 0;
  bool ones = false;
  for (int32_t d = 0; d < gt.rank; d++) {
    if (d < lead) {
      axes[n++] = d;
    } else if (t->dims[d - lead] == 1 && gt.dims[d] != 1) {
      axes[n++] = d;
      ones = true;
    }
  }
  if (n == 0) return reshape_to(a, g, t);
  ptc_attr at[2] = {ptc_attr_ints("axes", axes, n), ptc_attr_bool("keepdim", true)};
  int32_t r = op1(a, PTC_OP_REDUCE_SUM, 1, &g, ones ? 2 : 1, at);
  return reshape_to(a, r, t);
}

/* ---- gradients of values ------------------------------------------------- */

static bool wants(const ad *a, int32_t v) { return v < a->nfwd && a->need[v]; }

/* Adds contribution gv to the gradient of forward value v. */
static int give(ad *a, int32_t v, int32_t gv) {
  if (gv < 0) return -1;
  PTC_ASSERT(v < a->nfwd);
  ptc_type vt = type_of(a, v), gt = type_of(a, gv);
  PTC_ASSERT(ptc_type_eq(&vt, &gt)); /* a rule that gets a shape wrong is a bug */
  if (a->grad[v] < 0) {
    a->grad[v] = gv;
    return 0;
  }
  a->grad[v] = binary(a, PTC_OP_ADD, a->grad[v], gv);
  return a->grad[v] < 0 ? -1 : 0;
}

/* Records gv as the gradient of x[start:end] along axis (settled later). */
static int give_piece(ad *a, int32_t v, int64_t axis, int64_t start, int64_t end,
                      int32_t gv) {
  if (gv < 0) return -1;
  if (a->npv == a->cap_pv) {
    a->cap_pv = a->cap_pv ? 2 * a->cap_pv : 16;
    a->pv = ptc_xrealloc(a->pv, (size_t)a->cap_pv * sizeof *a->pv);
  }
  a->pv[a->npv] = (piece){axis, start, end, gv, a->pieces[v], a->loc};
  a->pieces[v] = a->npv++;
  return 0;
}

static int piece_cmp(const void *x, const void *y) {
  const piece *p = x, *q = y;
  return p->start < q->start ? -1 : p->start > q->start;
}

/* Folds v's pending slice gradients into grad[v]: pieces on one axis that
 * do not overlap become one concat, with zeros in the gaps (one piece: a
 * pad); anything else is a pad per piece, summed. */
static int settle(ad *a, int32_t v) {
  if (a->pieces[v] < 0) return 0;
  int32_t n = 0;
  for (int32_t i = a->pieces[v]; i >= 0; i = a->pv[i].next) n++;
  piece *ps = ptc_xmalloc((size_t)n * sizeof *ps);
  n = 0;
  for (int32_t i = a->pieces[v]; i >= 0; i = a->pv[i].next) ps[n++] = a->pv[i];
  a->pieces[v] = -1;
  qsort(ps, (size_t)n, sizeof *ps, piece_cmp);
  ptc_type vt = type_of(a, v);
  bool tiles = n > 1;
  for (int32_t i = 1; i < n && tiles; i++)
    tiles = ps[i].axis == ps[0].axis && ps[i].start >= ps[i - 1].end;
  int rc = 0;
  a->loc = ps[0].loc;
  if (tiles) {
    int64_t axis = ps[0].axis, at = 0;
    int32_t *parts = ptc_xmalloc((size_t)(2 * n + 1) * sizeof *parts), np = 0;
    for (int32_t i = 0; i <= n && rc == 0; i++) {
      int64_t next = i < n ? ps[i].start : vt.dims[axis];
      if (next > at) { /* a gap no slice read: zero gradient */
        ptc_type zt = vt;
        zt.dims[axis] = next - at;
        ptc_attr zero = ptc_attr_float("value", 0.0);
        rc = build(a, PTC_OP_CONSTANT, 0, NULL, 1, &zero, &zt, &parts[np++]);
      }
      if (i < n) {
        parts[np++] = ps[i].grad;
        at = ps[i].end;
      }
    }
    ptc_attr ax = ptc_attr_int("axis", axis);
    if (rc == 0) rc = give(a, v, op1(a, PTC_OP_CONCAT, np, parts, 1, &ax));
    free(parts);
  } else {
    for (int32_t i = 0; i < n && rc == 0; i++) {
      a->loc = ps[i].loc;
      ptc_attr at[3] = {ptc_attr_int("axis", ps[i].axis), ptc_attr_int("before", ps[i].start),
                        ptc_attr_int("after", vt.dims[ps[i].axis] - ps[i].end)};
      rc = give(a, v, op1(a, PTC_OP_PAD, 1, &ps[i].grad, 3, at));
    }
  }
  free(ps);
  return rc;
}

/* give() after reducing a broadcast gradient to operand k's type. */
static int give_unbroadcast(ad *a, const ptc_op *op, int k, int32_t g) {
  ptc_type t = type_of(a, op->in[k]);
  return give(a, op->in[k], unbroadcast(a, g, &t));
}

static int cannot(ad *a, const ptc_op *op, const char *why) {
  ptc_error(a->ctx, op->loc, "autodiff: cannot differentiate '%s': %s",
            ptc_opinfo_get(op->code)->name, why);
  return -1;
}

/* ---- rules: element-wise ---------------------------------------------------- */

static int grad_constant(ad *a, const ptc_op *op, int32_t g) { return 0; }

static int grad_add(ad *a, const ptc_op *op, int32_t g) {
  for (int k = 0; k < 2; k++)
    if (wants(a, op->in[k])) TRY(give_unbroadcast(a, op, k, g));
  return 0;
}

static int grad_sub(ad *a, const ptc_op *op, int32_t g) {
  if (wants(a, op->in[0])) TRY(give_unbroadcast(a, op, 0, g));
  if (wants(a, op->in[1])) {
    ptc_type t = type_of(a, op->in[1]);
    TRY(give(a, op->in[1], unary(a, PTC_OP_NEG, unbroadcast(a, g, &t))));
  }
  return 0;
}

static int grad_mul(ad *a, const ptc_op *op, int32_t g) {
  for (int k = 0; k < 2; k++)
    if (wants(a, op->in[k]))
      TRY(give_unbroadcast(a, op, k, binary(a, PTC_OP_MUL, g, op->in[1 - k])));
  return 0;
}

/* d(x/y)/dx = 1/y, d(x/y)/dy = -(x/y)/y */
static int grad_div(ad *a, const ptc_op *op, int32_t g) {
  if (wants(a, op->in[0]))
    TRY(give_unbroadcast(a, op, 0, binary(a, PTC_OP_DIV, g, op->in[1])));
  if (wants(a, op->in[1])) {
    ptc_type t = type_of(a, op->in[1]);
    int32_t q = binary(a, PTC_OP_DIV, binary(a, PTC_OP_MUL, g, op->out[0]), op->in[1]);
    TRY(give(a, op->in[1], unary(a, PTC_OP_NEG, unbroadcast(a, q, &t))));
  }
  return 0;
}

/* The first operand takes the gradient where it is >= the second (ties
 * included, as relu at 0 gives nothing to the zero), the second the rest. */
static int grad_maximum(ad *a, const ptc_op *op, int32_t g) {
  ptc_attr ge = ptc_attr_sym("cmp", "ge");
  int32_t mask = op1(a, PTC_OP_COMPARE, 2, op->in, 1, &ge);
  int32_t g0 = binary(a, PTC_OP_MUL, g, mask);
  if (wants(a, op->in[0])) TRY(give_unbroadcast(a, op, 0, g0));
  if (wants(a, op->in[1])) TRY(give_unbroadcast(a, op, 1, binary(a, PTC_OP_SUB, g, g0)));
  return 0;
}

static int grad_neg(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], unary(a, PTC_OP_NEG, g));
}

static int grad_exp(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], binary(a, PTC_OP_MUL, g, op->out[0]));
}

static int grad_log(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], binary(a, PTC_OP_DIV, g, op->in[0]));
}

/* d sqrt(x) = 0.5 / sqrt(x) */
static int grad_sqrt(ad *a, const ptc_op *op, int32_t g) {
  int32_t half = scalar(a, type_of(a, g).dtype, 0.5);
  return give(a, op->in[0],
              binary(a, PTC_OP_DIV, binary(a, PTC_OP_MUL, g, half), op->out[0]));
}

/* d x^-1/2 = -0.5 x^-3/2 = -0.5 * y / x */
static int grad_rsqrt(ad *a, const ptc_op *op, int32_t g) {
  int32_t c = scalar(a, type_of(a, g).dtype, -0.5);
  int32_t gy = binary(a, PTC_OP_DIV, binary(a, PTC_OP_MUL, g, op->out[0]), op->in[0]);
  return give(a, op->in[0], binary(a, PTC_OP_MUL, gy, c));
}

/* d tanh = 1 - y^2 */
static int grad_tanh(ad *a, const ptc_op *op, int32_t g) {
  int32_t y = op->out[0], one = scalar(a, type_of(a, g).dtype, 1.0);
  int32_t d = binary(a, PTC_OP_SUB, one, binary(a, PTC_OP_MUL, y, y));
  return give(a, op->in[0], binary(a, PTC_OP_MUL, g, d));
}

/* d sigmoid = y (1 - y) */
static int grad_sigmoid(ad *a, const ptc_op *op, int32_t g) {
  int32_t y = op->out[0], one = scalar(a, type_of(a, g).dtype, 1.0);
  int32_t d = binary(a, PTC_OP_MUL, y, binary(a, PTC_OP_SUB, one, y));
  return give(a, op->in[0], binary(a, PTC_OP_MUL, g, d));
}

static int grad_relu(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], binary(a, PTC_OP_RELU_GRAD, g, op->in[0]));
}

static int grad_gelu(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], binary(a, PTC_OP_GELU_GRAD, g, op->in[0]));
}

static int grad_silu(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], binary(a, PTC_OP_SILU_GRAD, g, op->in[0]));
}

/* The gradient goes back in the operand's dtype (integers get none: they
 * are never marked as needing one). */
static int grad_cast(ad *a, const ptc_op *op, int32_t g) {
  ptc_dtype from = type_of(a, op->in[0]).dtype;
  if (type_of(a, g).dtype == from) return give(a, op->in[0], g);
  ptc_attr to = ptc_attr_dtype("to", from);
  return give(a, op->in[0], op1(a, PTC_OP_CAST, 1, &g, 1, &to));
}

/* ---- rules: shape ops ---------------------------------------------------- */

static int grad_reshape(ad *a, const ptc_op *op, int32_t g) {
  ptc_type t = type_of(a, op->in[0]);
  return give(a, op->in[0], reshape_to(a, g, &t));
}

static int grad_transpose(ad *a, const ptc_op *op, int32_t g) {
  const ptc_attr *p = ptc_op_attr(op, "perm");
  int64_t inv[PTC_MAX_RANK];
  for (int32_t i = 0; i < p->u.ints.n; i++) inv[p->u.ints.v[i]] = i;
  ptc_attr perm = ptc_attr_ints("perm", inv, p->u.ints.n);
  return give(a, op->in[0], op1(a, PTC_OP_TRANSPOSE, 1, &g, 1, &perm));
}

/* slice's gradient: zeros around g, back to the operand's extent (as a
 * pad, or a concat with the operand's other slices: see settle) */
static int grad_slice(ad *a, const ptc_op *op, int32_t g) {
  int64_t axis = ptc_op_attr_int(op, "axis", 0), s = ptc_op_attr_int(op, "start", 0),
          e = ptc_op_attr_int(op, "end", 0);
  ptc_type t = type_of(a, op->in[0]);
  if (s == 0 && e == t.dims[axis]) return give(a, op->in[0], g);
  return give_piece(a, op->in[0], axis, s, e, g);
}

static int grad_pad(ad *a, const ptc_op *op, int32_t g) {
  int64_t axis = ptc_op_attr_int(op, "axis", 0), lo = ptc_op_attr_int(op, "before", 0);
  ptc_type t = type_of(a, op->in[0]);
  ptc_attr at[3] = {ptc_attr_int("axis", axis), ptc_attr_int("start", lo),
                    ptc_attr_int("end", lo + t.dims[axis])};
  return give(a, op->in[0], op1(a, PTC_OP_SLICE, 1, &g, 3, at));
}

static int grad_concat(ad *a, const ptc_op *op, int32_t g) {
  int64_t axis = ptc_op_attr_int(op, "axis", 0), off = 0;
  for (int32_t k = 0; k < op->nin; k++) {
    int64_t len = type_of(a, op->in[k]).dims[axis];
    if (wants(a, op->in[k])) {
      ptc_attr at[3] = {ptc_attr_int("axis", axis), ptc_attr_int("start", off),
                        ptc_attr_int("end", off + len)};
      TRY(give(a, op->in[k], op1(a, PTC_OP_SLICE, 1, &g, 3, at)));
    }
    off += len;
  }
  return 0;
}

static int grad_broadcast_to(ad *a, const ptc_op *op, int32_t g) {
  return give_unbroadcast(a, op, 0, g);
}

/* ---- rules: reductions ----------------------------------------------------- */

/* The operand's type with 1 on the reduced axes (what keepdim gives). */
static ptc_type kept_type(const ad *a, const ptc_op *op) {
  ptc_type t = type_of(a, op->in[0]);
  const ptc_attr *axes = ptc_op_attr(op, "axes");
  for (int32_t i = 0; i < axes->u.ints.n; i++) t.dims[axes->u.ints.v[i]] = 1;
  return t;
}

/* g (the reduction's result) spread back over the reduced axes. */
static int32_t expand(ad *a, const ptc_op *op, int32_t g) {
  ptc_type kt = kept_type(a, op), xt = type_of(a, op->in[0]);
  int32_t k = reshape_to(a, g, &kt);
  if (k < 0 || ptc_type_eq(&kt, &xt)) return k;
  return given1(a, PTC_OP_BROADCAST_TO, 1, &k, &xt);
}

static int grad_reduce_sum(ad *a, const ptc_op *op, int32_t g) {
  return give(a, op->in[0], expand(a, op, g));
}

static int grad_reduce_mean(ad *a, const ptc_op *op, int32_t g) {
  ptc_type xt = type_of(a, op->in[0]), kt = kept_type(a, op);
  double count = (double)ptc_type_numel(&xt) / (double)ptc_type_numel(&kt);
  int32_t c = scalar(a, xt.dtype, 1.0 / count);
  return give(a, op->in[0], expand(a, op, binary(a, PTC_OP_MUL, g, c)));
}

/* The gradient goes to the elements equal to the maximum, shared evenly
 * among ties (as PyTorch's amax does). */
static int grad_reduce_max(ad *a, const ptc_op *op, int32_t g) {
  ptc_type kt = kept_type(a, op);
  int32_t yk = reshape_to(a, op->out[0], &kt);
  ptc_attr eq = ptc_attr_sym("cmp", "eq");
  int32_t in[2] = {op->in[0], yk};
  int32_t mask = yk < 0 ? -1 : op1(a, PTC_OP_COMPARE, 2, in, 1, &eq);
  const ptc_attr *axes = ptc_op_attr(op, "axes");
  ptc_attr at[2] = {*axes, ptc_attr_bool("keepdim", true)};
  int32_t count = mask < 0 ? -1 : op1(a, PTC_OP_REDUCE_SUM, 1, &mask, 2, at);
  int32_t share = binary(a, PTC_OP_DIV, reshape_to(a, g, &kt), count);
  return give(a, op->in[0], binary(a, PTC_OP_MUL, mask, share));
}

/* ---- rules: matmul --------------------------------------------------------- */

/* matmul x, y with the transpose flags set where true (a tidy dump). */
static int32_t matmul(ad *a, int32_t x, int32_t y, bool tx, bool ty) {
  if (x < 0 || y < 0) return -1;
  ptc_attr at[2];
  int32_t n = 0;
  if (tx) at[n++] = ptc_attr_bool("transpose_a", true);
  if (ty) at[n++] = ptc_attr_bool("transpose_b", true);
  int32_t in[2] = {x, y};
  return op1(a, PTC_OP_MATMUL, 2, in, n, at);
}

/* x [..., R, C] reshaped to [prod(...) * R, C]. */
static int32_t flatten_rows(ad *a, int32_t x) {
  ptc_type t = type_of(a, x), f = t;
  f.rank = 2;
  f.dims[0] = 1;
  for (int32_t d = 0; d < t.rank - 1; d++) f.dims[0] *= t.dims[d];
  f.dims[1] = t.dims[t.rank - 1];
  return reshape_to(a, x, &f);
}

/* C = A' B' with A' = A or Aᵀ (transpose_a), B' = B or Bᵀ (transpose_b):
 *   dA' = g B'ᵀ and dB' = A'ᵀ g, written with the transpose flags so no
 *   transpose op is needed; batch dimensions that were broadcast are summed.
 * A weight B [K, N] applied to x [..., M, K] gets one 2-D matmul over all
 * rows, [rows, K]ᵀ [rows, N], instead of a batched matmul and a sum. */
static int grad_matmul(ad *a, const ptc_op *op, int32_t g) {
  int32_t A = op->in[0], B = op->in[1];
  bool ta = ptc_op_attr_bool(op, "transpose_a", false);
  bool tb = ptc_op_attr_bool(op, "transpose_b", false);
  ptc_type at = type_of(a, A), bt = type_of(a, B);
  if (wants(a, A)) {
    int32_t d = ta ? matmul(a, B, g, tb, true)   /* (g B')ᵀ = B' gᵀ */
                   : matmul(a, g, B, false, !tb); /* g B'ᵀ */
    TRY(give(a, A, unbroadcast(a, d, &at)));
  }
  if (wants(a, B)) {
    int32_t d;
    if (bt.rank == 2 && at.rank > 2 && !ta) {
      int32_t a2 = flatten_rows(a, A), g2 = flatten_rows(a, g);
      d = tb ? matmul(a, g2, a2, true, false) : matmul(a, a2, g2, true, false);
    } else {
      d = tb ? matmul(a, g, A, true, ta)   /* (A'ᵀ g)ᵀ = gᵀ A' */
             : matmul(a, A, g, !ta, false); /* A'ᵀ g */
    }
    TRY(give(a, B, unbroadcast(a, d, &bt)));
  }
  return 0;
}

/* ---- rules: neural-network ops --------------------------------------------- */

static int grad_embedding(ad *a, const ptc_op *op, int32_t g) {
  ptc_type t = type_of(a, op->in[1]);
  int32_t in[2] = {g, op->in[0]};
  return give(a, op->in[1], given1(a, PTC_OP_EMBEDDING_GRAD, 2, in, &t));
}

static int grad_softmax(ad *a, const ptc_op *op, int32_t g) {
  int32_t in[2] = {g, op->out[0]};
  return give(a, op->in[0], op1(a, PTC_OP_SOFTMAX_GRAD, 2, in, op->nattr, op->attrs));
}

/* layernorm_grad / rmsnorm_grad give every operand's gradient at once. */
static int grad_norm(ad *a, const ptc_op *op, int32_t g, ptc_opcode code) {
  int32_t in[3] = {g, op->in[0], op->in[1]}, out[3];
  TRY(build(a, code, 3, in, op->nattr, op->attrs, NULL, out));
  for (int32_t k = 0; k < op->nin; k++)
    if (wants(a, op->in[k])) TRY(give(a, op->in[k], out[k]));
  return 0;
}

static int grad_layernorm(ad *a, const ptc_op *op, int32_t g) {
  return grad_norm(a, op, g, PTC_OP_LAYERNORM_GRAD);
}

static int grad_rmsnorm(ad *a, const ptc_op *op, int32_t g) {
  return grad_norm(a, op, g, PTC_OP_RMSNORM_GRAD);
}

/* A rotation's gradient is the inverse rotation. */
static int grad_rope(ad *a, const ptc_op *op, int32_t g) {
  ptc_attr at[2] = {ptc_attr_float("theta", ptc_op_attr_float(op, "theta", 10000)),
                    ptc_attr_bool("inverse", !ptc_op_attr_bool(op, "inverse", false))};
  return give(a, op->in[0], op1(a, PTC_OP_ROPE, 1, &g, 2, at));
}

static int grad_attention(ad *a, const ptc_op *op, int32_t g) {
  int32_t in[4] = {g, op->in[0], op->in[1], op->in[2]}, out[3];
  TRY(build(a, PTC_OP_ATTENTION_GRAD, 4, in, op->nattr, op->attrs, NULL, out));
  for (int32_t k = 0; k < 3; k++)
    if (wants(a, op->in[k])) TRY(give(a, op->in[k], out[k]));
  return 0;
}

static int grad_cross_entropy(ad *a, const ptc_op *op, int32_t g) {
  int32_t in[3] = {g, op->in[0], op->in[1]};
  return give(a, op->in[0],
              op1(a, PTC_OP_CROSS_ENTROPY_GRAD, 3, in, op->nattr, op->attrs));
}

/* select c, a, b with c 0 or 1: da = g * c, db = g * (1 - c); c (a flag)
 * gets none */
static int grad_select(ad *a, const ptc_op *op, int32_t g) {
  ptc_dtype dt = type_of(a, g).dtype;
  int32_t c = op->in[0];
  if (type_of(a, c).dtype != dt) {
    ptc_attr to = ptc_attr_dtype("to", dt);
    c = op1(a, PTC_OP_CAST, 1, &c, 1, &to);
  }
  if (wants(a, op->in[1])) TRY(give(a, op->in[1], binary(a, PTC_OP_MUL, g, c)));
  if (wants(a, op->in[2])) {
    int32_t one = scalar(a, dt, 1.0);
    TRY(give(a, op->in[2], binary(a, PTC_OP_MUL, g, binary(a, PTC_OP_SUB, one, c))));
  }
  return 0;
}

/* ---- rules: ops without a derivative here ---------------------------------- */

/* compare is piecewise constant: its gradient is zero, so nothing flows
 * (the activity sweep already stops at it). */
static int grad_compare(ad *a, const ptc_op *op, int32_t g) { return 0; }

static int not_twice(ad *a, const ptc_op *op, int32_t g) {
  return cannot(a, op, "it is a gradient op; autodiff runs once, on the forward "
                "function, before any pass that writes gradients");
}
#define grad_relu_grad not_twice
#define grad_gelu_grad not_twice
#define grad_silu_grad not_twice
#define grad_softmax_grad not_twice
#define grad_layernorm_grad not_twice
#define grad_rmsnorm_grad not_twice
#define grad_attention_grad not_twice
#define grad_cross_entropy_grad not_twice
#define grad_embedding_grad not_twice

static int not_partitioned(ad *a, const ptc_op *op, int32_t g) {
  return cannot(a, op, "it moves data between devices; run autodiff before the "
                "passes that partition the module (shard, pipeline-split, "
                "data-parallel)");
}
#define grad_all_reduce not_partitioned
#define grad_all_gather not_partitioned
#define grad_reduce_scatter not_partitioned
#define grad_broadcast not_partitioned
#define grad_shard not_partitioned
#define grad_to_partial not_partitioned
#define grad_send not_partitioned
#define grad_recv not_partitioned

static int not_state(ad *a, const ptc_op *op, int32_t g) {
  return cannot(a, op, "it updates training state; run autodiff before the "
                "optimizer pass");
}
#define grad_assign not_state
#define grad_adamw not_state
#define grad_sgd not_state

static int grad_return(ad *a, const ptc_op *op, int32_t g) { PTC_UNREACHABLE(); }

static const grad_fn grad_table[] = {
#define PTC_OP(E, n, mi, ma, no, fl, at) grad_##n,
#include "ir/ops.def"
#undef PTC_OP
};
_Static_assert(sizeof grad_table / sizeof grad_table[0] == PTC_OP_COUNT,
               "gradient rule table out of sync with ops.def");

/* ---- the pass ---------------------------------------------------------------- */

/* Ops whose result carries no gradient even from an active operand. */
static bool passes_gradient(ptc_opcode code) { return code != PTC_OP_COMPARE; }

static bool trainable_float(const ptc_module *m, const ptc_value *v) {
  return v->kind == PTC_VALUE_PARAM && m->params[v->def].trainable &&
         ptc_dtype_is_float(v->type.dtype);
}

/* need[v] = v is float, depends on a trainable parameter and reaches the
 * loss. */
static void mark_needed(ad *a, int32_t loss) {
  ptc_func *f = a->f;
  bool *active = ptc_xcalloc((size_t)a->nfwd + 1, sizeof(bool));
  bool *useful = ptc_xcalloc((size_t)a->nfwd + 1, sizeof(bool));
  for (int32_t v = 0; v < a->nfwd; v++) active[v] = trainable_float(a->m, &f->values[v]);
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    bool any = false;
    for (int32_t k = 0; k < op->nin; k++) any |= active[op->in[k]];
    if (!any || !passes_gradient(op->code)) continue;
    for (int32_t r = 0; r < op->nout; r++)
      active[op->out[r]] = ptc_dtype_is_float(f->values[op->out[r]].type.dtype);
  }
  useful[loss] = true;
  for (int32_t i = f->nops - 1; i >= 0; i--) {
    const ptc_op *op = &f->ops[i];
    bool any = false;
    for (int32_t r = 0; r < op->nout; r++) any |= useful[op->out[r]];
    if (!any) continue;
    for (int32_t k = 0; k < op->nin; k++) useful[op->in[k]] = true;
  }
  for (int32_t v = 0; v < a->nfwd; v++) a->need[v] = active[v] && useful[v];
  free(active);
  free(useful);
}

/* Checks that @forward has the shape this pass expects and returns the loss
 * value id, or -1 after reporting. */
static int32_t find_loss(ptc_module *m, ptc_func *f) {
  const ptc_op *ret = &f->ops[f->nops - 1];
  if (ret->nin != 1) {
    ptc_error(m->ctx, f->loc, "autodiff: @forward must return one value, the scalar "
              "loss; it returns %d", (int)ret->nin);
    return -1;
  }
  const ptc_type *t = &f->values[ret->in[0]].type;
  if (t->rank != 0 || !ptc_dtype_is_float(t->dtype)) {
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_type_print(&b, t);
    ptc_error(m->ctx, ret->loc, "autodiff: @forward must return a float scalar loss "
              "(f32[]), not %s; reduce it first (reduce_mean or reduce_sum)", b.data);
    ptc_buf_fini(&b);
    return -1;
  }
  if (ptc_module_find_func(m, "step")) {
    ptc_error(m->ctx, ptc_module_find_func(m, "step")->loc,
              "autodiff: the module already has a function @step, the name of the "
              "training step this pass writes; rename it");
    return -1;
  }
  return ret->in[0];
}

/* The value named %name in f, or -1. */
static int32_t value_named(const ptc_func *f, const char *name) {
  for (int32_t v = 0; v < f->nvalues; v++)
    if (f->values[v].name && f->values[v].kind != PTC_VALUE_PARAM &&
        strcmp(f->values[v].name, name) == 0)
      return v;
  return -1;
}

/* Runs the backward sweep over the forward ops [0, nops) and appends the
 * new return.  Returns 0 or -1. */
static int differentiate(ad *a, int32_t loss, int32_t nops, ptc_loc ret_loc) {
  ptc_func *f = a->f;
  ptc_module *m = a->m;
  if (a->need[loss]) {
    a->loc = ret_loc;
    a->grad[loss] = scalar(a, f->values[loss].type.dtype, 1.0);
    TRY(a->grad[loss]);
  }
  for (int32_t i = nops - 1; i >= 0; i--) {
    ptc_op op = f->ops[i]; /* a copy: building may move f->ops */
    for (int32_t r = 0; r < op.nout; r++) TRY(settle(a, op.out[r]));
    bool has = false;
    for (int32_t r = 0; r < op.nout; r++) has |= a->grad[op.out[r]] >= 0;
    if (!has) continue;
    a->loc = op.loc;
    if (op.nout != 1)
      return cannot(a, &op, "autodiff differentiates single-result ops only");
    TRY(grad_table[op.code](a, &op, a->grad[op.out[0]]));
  }

  /* return loss, then one gradient per trainable float param read, in
   * module order; a param the loss does not depend on gets zeros */
  int32_t n = 1, *rets = ptc_xmalloc((size_t)(m->nparams + 1) * sizeof *rets);
  rets[0] = loss;
  int rc = 0;
  for (int32_t p = 0; p < m->nparams && rc == 0; p++) {
    if (p >= f->cap_param_value || f->param_value[p] < 0) continue;
    int32_t pv = f->param_value[p];
    if (!trainable_float(m, &f->values[pv])) continue;
    ptc_type pt = m->params[p].type;
    if (settle(a, pv) < 0) {
      rc = -1;
      break;
    }
    a->loc = m->params[p].loc;
    int32_t gv = a->grad[pv];
    if (gv < 0) {
      ptc_attr zero = ptc_attr_float("value", 0.0);
      rc = build(a, PTC_OP_CONSTANT, 0, NULL, 1, &zero, &pt, &gv);
    } else if (f->values[gv].name || gv < a->nfwd) {
      /* shared with another param's gradient (x + b1 + b2 of one shape):
       * a copy carries the second name */
      gv = given1(a, PTC_OP_RESHAPE, 1, &gv, &pt);
      rc = gv < 0 ? -1 : 0;
    }
    if (rc < 0) break;
    const char *name = ptc_arena_printf(&m->arena, "grad.%s", m->params[p].name);
    if (value_named(f, name) >= 0) {
      ptc_error(a->ctx, f->loc, "autodiff: @forward already has a value named %%%s, "
                "the name of the gradient of @%s; rename that value", name,
                m->params[p].name);
      rc = -1;
      break;
    }
    f->values[gv].name = name;
    rets[n++] = gv;
    ptc_func_add_result(f, &pt, NULL);
  }
  if (rc == 0) {
    ptc_build_args r = {.code = PTC_OP_RETURN, .nin = n, .in = rets, .loc = ret_loc};
    rc = ptc_build(f, &r) < 0 ? -1 : 0;
  }
  free(rets);
  return rc;
}

static int autodiff_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  (void)o;
  ptc_func *f = ptc_module_find_func(m, "forward");
  if (!f) {
    ptc_error(m->ctx, m->loc, "autodiff: the module has no function @forward (the "
              "loss function the frontend writes) to differentiate");
    return -1;
  }
  int32_t loss = find_loss(m, f);
  if (loss < 0) return -1;

  ad a = {.m = m, .ctx = m->ctx, .f = f, .nfwd = f->nvalues};
  a.need = ptc_xcalloc((size_t)a.nfwd + 1, sizeof(bool));
  a.grad = ptc_xmalloc((size_t)(a.nfwd + 1) * sizeof(int32_t));
  a.pieces = ptc_xmalloc((size_t)(a.nfwd + 1) * sizeof(int32_t));
  for (int32_t v = 0; v < a.nfwd; v++) a.grad[v] = a.pieces[v] = -1;
  mark_needed(&a, loss);

  /* drop the return; the backward ops go after the forward ones, then a
   * new return with the gradients */
  ptc_loc ret_loc = f->ops[f->nops - 1].loc;
  bool *keep = ptc_xmalloc((size_t)f->nops * sizeof(bool));
  for (int32_t i = 0; i < f->nops; i++) keep[i] = i != f->nops - 1;
  ptc_func_erase_ops(f, keep);
  free(keep);
  f->nresults = 1;
  f->name = ptc_arena_strdup(&m->arena, "step");
  *changed = true;

  int rc = differentiate(&a, loss, f->nops, ret_loc);
  free(a.need);
  free(a.grad);
  free(a.pieces);
  free(a.pv);
  return rc;
}

const ptc_pass_info ptc_pass_autodiff = {
    .name = "autodiff",
    .summary = "turn @forward (returns the loss) into @step (returns the loss and "
               "the gradient of every trainable parameter)",
    .opts = NULL,
    .nopts = 0,
    .run = autodiff_run,
};
