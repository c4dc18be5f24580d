/* ops.c -- per-op shape rules (which double as the op verifier) and costs.
 *
 * Each row of ops.def has here a `infer_<name>` (reads operand types and
 * attributes, writes result types and shardings, or reports at the op's
 * location) and a `cost_<name>` (FLOPs and bytes of the global op).  The
 * tables below are generated from ops.def, so a missing function is a
 * compile error, not a silent gap.
 *
 * Attributes are already checked against the op's schema (func.c) when a
 * rule runs: required ones are present and of the right kind.
 */
#include <math.h>
#include <string.h>

#include "ir.h"

/* ---- op table ------------------------------------------------------------ */

static const ptc_opinfo opinfo[] = {
#define PTC_OP(E, n, mi, ma, no, fl, at) {#n, mi, ma, no, fl, at},
#include "ops.def"
#undef PTC_OP
};
_Static_assert(sizeof opinfo / sizeof opinfo[0] == PTC_OP_COUNT,
               "op info table out of sync with ops.def");

const ptc_opinfo *ptc_opinfo_get(ptc_opcode op) {
  PTC_ASSERT((unsigned)op < PTC_OP_COUNT);
  return &opinfo[op];
}

int ptc_opcode_from_name(const char *s, size_t n) {
  for (int i = 0; i < PTC_OP_COUNT; i++)
    if (strlen(opinfo[i].name) == n && memcmp(opinfo[i].name, s, n) == 0) return i;
  return -1;
}

/* ---- helpers ------------------------------------------------------------- */

static const ptc_attr *attr(const ptc_infer *inf, const char *name) {
  for (int32_t i = 0; i < inf->nattr; i++)
    if (strcmp(inf->attrs[i].name, name) == 0) return &inf->attrs[i];
  return NULL;
}

static int64_t attr_i(const ptc_infer *inf, const char *name, int64_t dflt) {
  const ptc_attr *a = attr(inf, name);
  return a ? a->u.i : dflt;
}

static bool attr_b(const ptc_infer *inf, const char *name, bool dflt) {
  const ptc_attr *a = attr(inf, name);
  return a ? a->u.b : dflt;
}

static const char *opname(const ptc_infer *inf) { return opinfo[inf->code].name; }

/* Reports "<op>: <message>" at the op. */
__attribute__((format(printf, 2, 3))) static int fail(const ptc_infer *inf,
                                                      const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ptc_error(inf->ctx, inf->loc, "%s: %s", opname(inf), msg);
  return -1;
}

/* Small printable type string (a static ring, good for one message). */
typedef struct tstr {
  char s[128];
} tstr;
static tstr ty(const ptc_type *t) {
  tstr r;
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_type_print(&b, t);
  snprintf(r.s, sizeof r.s, "%s", b.data);
  ptc_buf_fini(&b);
  return r;
}

static int need_float(const ptc_infer *inf, int i) {
  if (ptc_dtype_is_float(inf->in[i].dtype)) return 0;
  return fail(inf, "operand %d must be a floating-point tensor, got %s", i,
              ty(&inf->in[i]).s);
}

static int need_int(const ptc_infer *inf, int i) {
  ptc_dtype d = inf->in[i].dtype;
  if (d == PTC_DTYPE_I32 || d == PTC_DTYPE_I64) return 0;
  return fail(inf, "operand %d must be an i32 or i64 tensor, got %s", i,
              ty(&inf->in[i]).s);
}

static int need_same_dtype(const ptc_infer *inf, int i, int j) {
  if (inf->in[i].dtype == inf->in[j].dtype) return 0;
  return fail(inf, "operands %d and %d have different dtypes (%s vs %s); "
              "insert a cast", i, j, ptc_dtype_name(inf->in[i].dtype),
              ptc_dtype_name(inf->in[j].dtype));
}

static int need_rank_at_least(const ptc_infer *inf, int i, int r) {
  if (inf->in[i].rank >= r) return 0;
  return fail(inf, "operand %d must have rank at least %d, got %s", i, r,
              ty(&inf->in[i]).s);
}

static int check_axis(const ptc_infer *inf, const char *name, int64_t axis,
                      int32_t rank) {
  if (axis >= 0 && axis < rank) return 0;
  return fail(inf, "%s %lld is out of range for rank %d (0..%d)", name,
              (long long)axis, rank, rank - 1);
}

/* Result sharding computed by a rule: checked against a given one. */
static int set_shard(ptc_infer *inf, int r, const ptc_sharding *s) {
  if (inf->out_shard[r].present &&
      !ptc_sharding_eq(&inf->out_shard[r], s, inf->out[r].rank)) {
    ptc_buf g, w;
    ptc_buf_init(&g);
    ptc_buf_init(&w);
    ptc_sharding_print(&g, &inf->out_shard[r], inf->out[r].rank, &inf->mod->mesh);
    ptc_sharding_print(&w, s, inf->out[r].rank, &inf->mod->mesh);
    int rc = fail(inf, "result sharding %s does not match %s, the sharding the "
                  "operand gives", g.data ? g.data : "(none)",
                  w.data ? w.data : "(none)");
    ptc_buf_fini(&g);
    ptc_buf_fini(&w);
    return rc;
  }
  inf->out_shard[r] = *s;
  return 0;
}

/* ---- sources ------------------------------------------------------------- */

static int infer_constant(ptc_infer *inf) {
  const ptc_attr *v = attr(inf, "value");
  double f = v->u.f;
  if (!ptc_dtype_is_float(inf->out[0].dtype) &&
      !(isfinite(f) && f > -9.2e18 && f < 9.2e18 && f == (double)(int64_t)f))
    return fail(inf, "value %g is not representable in %s", v->u.f,
                ptc_dtype_name(inf->out[0].dtype));
  return 0;
}

/* ---- element-wise ---------------------------------------------------------- */

/* NumPy broadcasting of two shapes into out. */
static int broadcast(const ptc_infer *inf, const ptc_type *a, const ptc_type *b,
                     ptc_type *out) {
  int32_t r = a->rank > b->rank ? a->rank : b->rank;
  out->dtype = a->dtype;
  out->rank = r;
  for (int32_t i = 0; i < r; i++) {
    int32_t ia = a->rank - r + i, ib = b->rank - r + i;
    int64_t da = ia >= 0 ? a->dims[ia] : 1, db = ib >= 0 ? b->dims[ib] : 1;
    if (da != db && da != 1 && db != 1)
      return fail(inf, "shapes %s and %s do not broadcast (dimension %d: %lld vs %lld)",
                  ty(a).s, ty(b).s, i, (long long)da, (long long)db);
    out->dims[i] = da == 1 ? db : da;
  }
  return 0;
}

static int infer_binary(ptc_infer *inf) {
  if (need_same_dtype(inf, 0, 1)) return -1;
  if (inf->in[0].dtype == PTC_DTYPE_BOOL) return fail(inf, "operands must be numeric, got bool");
  return broadcast(inf, &inf->in[0], &inf->in[1], &inf->out[0]);
}
#define infer_add infer_binary
#define infer_sub infer_binary
#define infer_mul infer_binary
#define infer_div infer_binary
#define infer_maximum infer_binary

static int infer_unary_float(ptc_infer *inf) {
  if (need_float(inf, 0)) return -1;
  inf->out[0] = inf->in[0];
  return 0;
}
static int infer_neg(ptc_infer *inf) {
  if (inf->in[0].dtype == PTC_DTYPE_BOOL) return fail(inf, "operand must be numeric, got bool");
  inf->out[0] = inf->in[0];
  return 0;
}
#define infer_exp infer_unary_float
#define infer_log infer_unary_float
#define infer_sqrt infer_unary_float
#define infer_rsqrt infer_unary_float
#define infer_tanh infer_unary_float
#define infer_sigmoid infer_unary_float
#define infer_relu infer_unary_float
#define infer_gelu infer_unary_float
#define infer_silu infer_unary_float

static int infer_cast(ptc_infer *inf) {
  inf->out[0] = inf->in[0];
  inf->out[0].dtype = attr(inf, "to")->u.dtype;
  return 0;
}

/* ---- shape ops ----------------------------------------------------------- */

static int infer_reshape(ptc_infer *inf) {
  if (inf->out[0].dtype != inf->in[0].dtype)
    return fail(inf, "cannot change dtype (%s to %s); use cast",
                ptc_dtype_name(inf->in[0].dtype), ptc_dtype_name(inf->out[0].dtype));
  if (ptc_type_numel(&inf->out[0]) != ptc_type_numel(&inf->in[0]))
    return fail(inf, "%s and %s have different element counts (%lld vs %lld)",
                ty(&inf->in[0]).s, ty(&inf->out[0]).s,
                (long long)ptc_type_numel(&inf->in[0]),
                (long long)ptc_type_numel(&inf->out[0]));
  return 0;
}

static int infer_broadcast_to(ptc_infer *inf) {
  const ptc_type *a = &inf->in[0], *o = &inf->out[0];
  if (o->dtype != a->dtype)
    return fail(inf, "cannot change dtype (%s to %s); use cast",
                ptc_dtype_name(a->dtype), ptc_dtype_name(o->dtype));
  if (o->rank < a->rank)
    return fail(inf, "cannot broadcast %s to the smaller rank of %s", ty(a).s, ty(o).s);
  for (int32_t i = 0; i < a->rank; i++) {
    int64_t da = a->dims[i], dout = o->dims[o->rank - a->rank + i];
    if (da != 1 && da != dout)
      return fail(inf, "cannot broadcast %s to %s", ty(a).s, ty(o).s);
  }
  return 0;
}

static int infer_transpose(ptc_infer *inf) {
  const ptc_attr *p = attr(inf, "perm");
  const ptc_type *a = &inf->in[0];
  if (p->u.ints.n != a->rank)
    return fail(inf, "perm has %d entries but the operand has rank %d",
                p->u.ints.n, a->rank);
  bool seen[PTC_MAX_RANK] = {false};
  inf->out[0] = *a;
  for (int32_t i = 0; i < a->rank; i++) {
    int64_t k = p->u.ints.v[i];
    if (k < 0 || k >= a->rank || seen[k])
      return fail(inf, "perm is not a permutation of 0..%d", a->rank - 1);
    seen[k] = true;
    inf->out[0].dims[i] = a->dims[k];
  }
  return 0;
}

static int infer_slice(ptc_infer *inf) {
  const ptc_type *a = &inf->in[0];
  int64_t axis = attr_i(inf, "axis", 0), s = attr_i(inf, "start", 0),
          e = attr_i(inf, "end", 0);
  if (check_axis(inf, "axis", axis, a->rank)) return -1;
  if (s < 0 || e < s || e > a->dims[axis])
    return fail(inf, "range [%lld, %lld) is not within dimension %lld of size %lld",
                (long long)s, (long long)e, (long long)axis, (long long)a->dims[axis]);
  inf->out[0] = *a;
  inf->out[0].dims[axis] = e - s;
  return 0;
}

static int infer_pad(ptc_infer *inf) {
  const ptc_type *a = &inf->in[0];
  int64_t axis = attr_i(inf, "axis", 0), lo = attr_i(inf, "before", 0),
          hi = attr_i(inf, "after", 0);
  if (check_axis(inf, "axis", axis, a->rank)) return -1;
  if (lo < 0 || hi < 0)
    return fail(inf, "before = %lld and after = %lld must not be negative",
                (long long)lo, (long long)hi);
  inf->out[0] = *a;
  if (!ptc_add_ovf(a->dims[axis], lo, &inf->out[0].dims[axis]) ||
      !ptc_add_ovf(inf->out[0].dims[axis], hi, &inf->out[0].dims[axis]))
    return fail(inf, "result is too large");
  return 0;
}

static int infer_concat(ptc_infer *inf) {
  const ptc_type *a = &inf->in[0];
  int64_t axis = attr_i(inf, "axis", 0);
  if (check_axis(inf, "axis", axis, a->rank)) return -1;
  inf->out[0] = *a;
  for (int32_t i = 1; i < inf->nin; i++) {
    const ptc_type *b = &inf->in[i];
    if (need_same_dtype(inf, 0, i)) return -1;
    bool ok = b->rank == a->rank;
    for (int32_t d = 0; ok && d < a->rank; d++) ok = d == axis || b->dims[d] == a->dims[d];
    if (!ok)
      return fail(inf, "operand %d %s does not match operand 0 %s outside axis %lld",
                  i, ty(b).s, ty(a).s, (long long)axis);
    if (!ptc_add_ovf(inf->out[0].dims[axis], b->dims[axis], &inf->out[0].dims[axis]))
      return fail(inf, "result is too large");
  }
  return 0;
}

/* ---- reductions -------------------------------------------------------------- */

static int infer_reduce(ptc_infer *inf) {
  const ptc_type *a = &inf->in[0];
  const ptc_attr *axes = attr(inf, "axes");
  bool keep = attr_b(inf, "keepdim", false);
  bool red[PTC_MAX_RANK] = {false};
  if (inf->code != PTC_OP_REDUCE_MAX && need_float(inf, 0)) return -1;
  for (int32_t i = 0; i < axes->u.ints.n; i++) {
    int64_t k = axes->u.ints.v[i];
    if (check_axis(inf, "axis", k, a->rank)) return -1;
    if (red[k]) return fail(inf, "axis %lld is listed twice", (long long)k);
    red[k] = true;
  }
  ptc_type *o = &inf->out[0];
  o->dtype = a->dtype;
  o->rank = 0;
  for (int32_t d = 0; d < a->rank; d++) {
    if (red[d] && !keep) continue;
    o->dims[o->rank++] = red[d] ? 1 : a->dims[d];
  }
  return 0;
}
#define infer_reduce_sum infer_reduce
#define infer_reduce_mean infer_reduce
#define infer_reduce_max infer_reduce

/* ---- neural-network ops -------------------------------------------------- */

/* A [..., M, K] @ B [..., K, N] -> [..., M, N]; batch dims broadcast;
 * transpose_a / transpose_b swap the last two dims of A / B. */
static int infer_matmul(ptc_infer *inf) {
  if (need_float(inf, 0) || need_same_dtype(inf, 0, 1)) return -1;
  if (need_rank_at_least(inf, 0, 2) || need_rank_at_least(inf, 1, 2)) return -1;
  ptc_type a = inf->in[0], b = inf->in[1];
  bool ta = attr_b(inf, "transpose_a", false), tb = attr_b(inf, "transpose_b", false);
  int64_t m = a.dims[a.rank - 2], ka = a.dims[a.rank - 1];
  if (ta) { int64_t t = m; m = ka; ka = t; }
  int64_t kb = b.dims[b.rank - 2], n = b.dims[b.rank - 1];
  if (tb) { int64_t t = kb; kb = n; n = t; }
  if (ka != kb)
    return fail(inf, "contracting dimensions differ: %s%s has %lld, %s%s has %lld",
                ty(&inf->in[0]).s, ta ? " (transposed)" : "", (long long)ka,
                ty(&inf->in[1]).s, tb ? " (transposed)" : "", (long long)kb);
  ptc_type ba = a, bb = b, batch;
  ba.rank -= 2;
  bb.rank -= 2;
  if (broadcast(inf, &ba, &bb, &batch)) return -1;
  if (batch.rank + 2 > PTC_MAX_RANK) return fail(inf, "result rank too large");
  inf->out[0] = batch;
  inf->out[0].dims[batch.rank] = m;
  inf->out[0].dims[batch.rank + 1] = n;
  inf->out[0].rank = batch.rank + 2;
  return 0;
}

/* ids [...] (int), table [V, D] -> [..., D] */
static int infer_embedding(ptc_infer *inf) {
  if (need_int(inf, 0)) return -1;
  const ptc_type *ids = &inf->in[0], *tab = &inf->in[1];
  if (tab->rank != 2)
    return fail(inf, "the table must have rank 2 [rows, width], got %s", ty(tab).s);
  if (ids->rank + 1 > PTC_MAX_RANK) return fail(inf, "result rank too large");
  inf->out[0] = *ids;
  inf->out[0].dtype = tab->dtype;
  inf->out[0].dims[ids->rank] = tab->dims[1];
  inf->out[0].rank = ids->rank + 1;
  return 0;
}

static int infer_softmax(ptc_infer *inf) {
  if (need_float(inf, 0)) return -1;
  if (check_axis(inf, "axis", attr_i(inf, "axis", 0), inf->in[0].rank)) return -1;
  inf->out[0] = inf->in[0];
  return 0;
}

/* Checks that operand i is a [C] vector matching x's last dim C. */
static int need_feature_vector(const ptc_infer *inf, int i, const char *what) {
  const ptc_type *x = &inf->in[0], *v = &inf->in[i];
  if (need_same_dtype(inf, 0, i)) return -1;
  if (v->rank != 1 || v->dims[0] != x->dims[x->rank - 1])
    return fail(inf, "%s must be [%lld] to match the last dimension of %s, got %s",
                what, (long long)x->dims[x->rank - 1], ty(x).s, ty(v).s);
  return 0;
}

static int infer_layernorm(ptc_infer *inf) {
  if (need_float(inf, 0) || need_rank_at_least(inf, 0, 1)) return -1;
  if (need_feature_vector(inf, 1, "the gain") || need_feature_vector(inf, 2, "the bias"))
    return -1;
  inf->out[0] = inf->in[0];
  return 0;
}

static int infer_rmsnorm(ptc_infer *inf) {
  if (need_float(inf, 0) || need_rank_at_least(inf, 0, 1)) return -1;
  if (need_feature_vector(inf, 1, "the gain")) return -1;
  inf->out[0] = inf->in[0];
  return 0;
}

/* x [B, T, H, D], D even: rotate-half rotary embedding at positions 0..T-1 */
static int infer_rope(ptc_infer *inf) {
  const ptc_type *x = &inf->in[0];
  if (need_float(inf, 0)) return -1;
  if (x->rank != 4)
    return fail(inf, "expects [batch, seq, heads, head_dim], got %s", ty(x).s);
  if (x->dims[3] % 2)
    return fail(inf, "head_dim %lld must be even", (long long)x->dims[3]);
  inf->out[0] = *x;
  return 0;
}

/* q [B, T, H, D], k [B, S, G, D], v [B, S, G, E], H % G == 0 -> [B, T, H, E].
 * q, k, v are operands at, at+1, at+2 (attention_grad has g first); the
 * attention result type goes to *o. */
static int attention_shapes(ptc_infer *inf, int at, ptc_type *o) {
  const ptc_type *q = &inf->in[at], *k = &inf->in[at + 1], *v = &inf->in[at + 2];
  if (need_float(inf, at) || need_same_dtype(inf, at, at + 1) ||
      need_same_dtype(inf, at, at + 2))
    return -1;
  for (int i = at; i < at + 3; i++)
    if (inf->in[i].rank != 4)
      return fail(inf, "operand %d must be [batch, seq, heads, head_dim], got %s", i,
                  ty(&inf->in[i]).s);
  if (k->dims[0] != q->dims[0] || v->dims[0] != q->dims[0])
    return fail(inf, "batch sizes differ: q %s, k %s, v %s", ty(q).s, ty(k).s, ty(v).s);
  if (k->dims[1] != v->dims[1] || k->dims[2] != v->dims[2])
    return fail(inf, "k %s and v %s must agree in sequence length and heads", ty(k).s,
                ty(v).s);
  if (k->dims[3] != q->dims[3])
    return fail(inf, "q %s and k %s have different head dimensions", ty(q).s, ty(k).s);
  if (k->dims[2] == 0 || q->dims[2] % k->dims[2])
    return fail(inf, "%lld query heads do not divide into %lld key/value heads",
                (long long)q->dims[2], (long long)k->dims[2]);
  if (attr_b(inf, "causal", false) && q->dims[1] != k->dims[1])
    return fail(inf, "causal attention needs equal query and key lengths (%lld vs %lld)",
                (long long)q->dims[1], (long long)k->dims[1]);
  *o = *q;
  o->dims[3] = v->dims[3];
  return 0;
}

static int infer_attention(ptc_infer *inf) { return attention_shapes(inf, 0, &inf->out[0]); }

/* logits [..., C] (float), targets [...] (int) -> f32[] mean over targets
 * (f64[] for f64 logits, so a double-precision graph stays exact).
 * classes (<= C) excludes padded logits from the softmax.  Logits and
 * targets are operands at and at+1. */
static int cross_entropy_shapes(ptc_infer *inf, int at) {
  const ptc_type *l = &inf->in[at], *t = &inf->in[at + 1];
  if (need_float(inf, at) || need_int(inf, at + 1) || need_rank_at_least(inf, at, 1))
    return -1;
  bool ok = t->rank == l->rank - 1;
  for (int32_t d = 0; ok && d < t->rank; d++) ok = t->dims[d] == l->dims[d];
  if (!ok)
    return fail(inf, "targets %s must have the shape of logits %s without its "
                "last dimension", ty(t).s, ty(l).s);
  int64_t c = attr_i(inf, "classes", l->dims[l->rank - 1]);
  if (c < 1 || c > l->dims[l->rank - 1])
    return fail(inf, "classes = %lld must be between 1 and the logits' last "
                "dimension %lld", (long long)c, (long long)l->dims[l->rank - 1]);
  return 0;
}

static int infer_cross_entropy(ptc_infer *inf) {
  if (cross_entropy_shapes(inf, 0)) return -1;
  inf->out[0].dtype = inf->in[0].dtype == PTC_DTYPE_F64 ? PTC_DTYPE_F64 : PTC_DTYPE_F32;
  inf->out[0].rank = 0;
  return 0;
}

/* ---- gradients ------------------------------------------------------------ */

static int infer_compare(ptc_infer *inf) {
  const char *cmp = attr(inf, "cmp")->u.s;
  if (strcmp(cmp, "ge") != 0 && strcmp(cmp, "gt") != 0 && strcmp(cmp, "eq") != 0)
    return fail(inf, "cmp = %s is not a comparison; use ge, gt or eq", cmp);
  if (need_float(inf, 0) || need_same_dtype(inf, 0, 1)) return -1;
  return broadcast(inf, &inf->in[0], &inf->in[1], &inf->out[0]);
}

static int infer_select(ptc_infer *inf) {
  if (need_float(inf, 0) || need_same_dtype(inf, 1, 2)) return -1;
  if (inf->in[0].rank != 0)
    return fail(inf, "the condition must be a scalar, got %s", ty(&inf->in[0]).s);
  if (!ptc_type_eq(&inf->in[1], &inf->in[2]))
    return fail(inf, "the two sides %s and %s must have one type", ty(&inf->in[1]).s,
                ty(&inf->in[2]).s);
  inf->out[0] = inf->in[1];
  return 0;
}

/* g and x of one float type (the gradient of an element-wise op). */
static int infer_act_grad(ptc_infer *inf) {
  if (need_float(inf, 0) || need_same_dtype(inf, 0, 1)) return -1;
  if (!ptc_type_eq(&inf->in[0], &inf->in[1]))
    return fail(inf, "the gradient %s and the input %s must have the same shape",
                ty(&inf->in[0]).s, ty(&inf->in[1]).s);
  inf->out[0] = inf->in[1];
  return 0;
}
#define infer_relu_grad infer_act_grad
#define infer_gelu_grad infer_act_grad
#define infer_silu_grad infer_act_grad

static int infer_softmax_grad(ptc_infer *inf) {
  if (infer_act_grad(inf)) return -1;
  return check_axis(inf, "axis", attr_i(inf, "axis", 0), inf->in[1].rank);
}

/* g, x, gamma of layernorm_grad / rmsnorm_grad: g and x one type, gamma
 * [C]; results dx (x's type) then one [C] per gain and bias. */
static int infer_norm_grad(ptc_infer *inf) {
  const ptc_type *g = &inf->in[0], *x = &inf->in[1], *gm = &inf->in[2];
  if (need_float(inf, 1) || need_rank_at_least(inf, 1, 1) || need_same_dtype(inf, 0, 1) ||
      need_same_dtype(inf, 1, 2))
    return -1;
  if (!ptc_type_eq(g, x))
    return fail(inf, "the gradient %s must have the input's type %s", ty(g).s, ty(x).s);
  if (gm->rank != 1 || gm->dims[0] != x->dims[x->rank - 1])
    return fail(inf, "the gain must be [%lld] to match the last dimension of %s, got %s",
                (long long)x->dims[x->rank - 1], ty(x).s, ty(gm).s);
  inf->out[0] = *x;
  for (int32_t r = 1; r < inf->nout; r++) inf->out[r] = *gm;
  return 0;
}
#define infer_layernorm_grad infer_norm_grad
#define infer_rmsnorm_grad infer_norm_grad

static int infer_attention_grad(ptc_infer *inf) {
  ptc_type o;
  if (attention_shapes(inf, 1, &o)) return -1;
  if (!ptc_type_eq(&inf->in[0], &o))
    return fail(inf, "the gradient %s must have the attention result's type %s",
                ty(&inf->in[0]).s, ty(&o).s);
  for (int r = 0; r < 3; r++) inf->out[r] = inf->in[r + 1];
  return 0;
}

static int infer_cross_entropy_grad(ptc_infer *inf) {
  const ptc_type *g = &inf->in[0];
  if (g->rank != 0 || !ptc_dtype_is_float(g->dtype))
    return fail(inf, "the gradient of the loss must be a float scalar (f32[]), got %s",
                ty(g).s);
  if (cross_entropy_shapes(inf, 1)) return -1;
  inf->out[0] = inf->in[1];
  return 0;
}

/* g [..., D], ids [...] (int) : [V, D] stated (the table's type) */
static int infer_embedding_grad(ptc_infer *inf) {
  const ptc_type *g = &inf->in[0], *ids = &inf->in[1], *o = &inf->out[0];
  if (need_float(inf, 0) || need_int(inf, 1)) return -1;
  bool ok = g->rank == ids->rank + 1;
  for (int32_t d = 0; ok && d < ids->rank; d++) ok = g->dims[d] == ids->dims[d];
  if (!ok)
    return fail(inf, "the gradient %s must have the shape of ids %s plus the row "
                "width", ty(g).s, ty(ids).s);
  if (o->rank != 2 || o->dtype != g->dtype || o->dims[1] != g->dims[g->rank - 1])
    return fail(inf, "the result must be the table's type [rows, %lld] in %s, got %s",
                (long long)g->dims[g->rank - 1], ptc_dtype_name(g->dtype), ty(o).s);
  return 0;
}

/* ---- collectives ------------------------------------------------------------ */

/* Resolves the `axis` attribute to a mesh axis index. */
static int mesh_axis(const ptc_infer *inf, int *out) {
  const char *name = attr(inf, "axis")->u.s;
  int ax = ptc_mesh_axis(&inf->mod->mesh, name, strlen(name));
  if (ax < 0) {
    if (inf->mod->mesh.naxes == 0)
      return fail(inf, "axis '%s' is not an axis of the mesh: the module has no "
                  "mesh (give one with --mesh)", name);
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_mesh_print(&b, &inf->mod->mesh);
    int rc = fail(inf, "axis '%s' is not an axis of the module's %s", name, b.data);
    ptc_buf_fini(&b);
    return rc;
  }
  *out = ax;
  return 0;
}

static int reduce_kind(const ptc_infer *inf) {
  const char *op = attr(inf, "op")->u.s;
  static const char *const ok[] = {"sum", "mean", "max", "min"};
  for (int i = 0; i < PTC_ARRAY_LEN(ok); i++)
    if (strcmp(op, ok[i]) == 0) return 0;
  return fail(inf, "op = %s is not a reduction; use sum, mean, max or min", op);
}

/* all_gather, reduce_scatter and shard take or add axis `ax` as the *minor*
 * split of dimension dim, so that a device's piece stays one contiguous
 * block of the next coarser piece: every other axis splitting dim must come
 * before ax in the mesh.  `what` is "gather" or "split". */
static int minor_axis_check(const ptc_infer *inf, const ptc_sharding *s, int64_t dim,
                            int ax, const char *what) {
  uint8_t later = (uint8_t)(s->dim_axes[dim] & ~((2u << ax) - 1u));
  if (!later) return 0;
  int b = 0;
  while (!(later & (1u << b))) b++;
  return fail(inf, "cannot %s dimension %lld over %s: it is also split over %s, "
              "which is minor to %s in the mesh; gather %s first", what, (long long)dim,
              inf->mod->mesh.axes[ax].name, inf->mod->mesh.axes[b].name,
              inf->mod->mesh.axes[ax].name, inf->mod->mesh.axes[b].name);
}

/* Adds ax to dim's split (as its minor axis) and checks the pieces divide. */
static int add_split(const ptc_infer *inf, ptc_sharding *s, int64_t dim, int ax) {
  if (minor_axis_check(inf, s, dim, ax, "split")) return -1;
  s->dim_axes[dim] |= (uint8_t)(1u << ax);
  int64_t parts = ptc_shard_parts(&inf->mod->mesh, s->dim_axes[dim]);
  if (inf->in[0].dims[dim] % parts)
    return fail(inf, "dimension %lld of size %lld does not divide into %lld pieces",
                (long long)dim, (long long)inf->in[0].dims[dim], (long long)parts);
  return 0;
}

static int infer_all_reduce(ptc_infer *inf) {
  int ax;
  if (mesh_axis(inf, &ax) || reduce_kind(inf)) return -1;
  inf->out[0] = inf->in[0];
  ptc_sharding s = inf->in_shard[0];
  if (!s.present) return 0;
  for (int32_t d = 0; d < inf->in[0].rank; d++)
    if (s.dim_axes[d] & (1u << ax))
      return fail(inf, "operand is split over %s on dimension %d; all_reduce "
                  "needs it whole on that axis", inf->mod->mesh.axes[ax].name, d);
  s.partial &= (uint8_t)~(1u << ax);
  return set_shard(inf, 0, &s);
}

/* The axis and dimension of an op that gathers or splits one dimension
 * over one mesh axis; its result has the operand's (global) type. */
static int axis_and_dim(ptc_infer *inf, int *ax, int64_t *dim) {
  if (mesh_axis(inf, ax)) return -1;
  *dim = attr_i(inf, "dim", 0);
  if (check_axis(inf, "dim", *dim, inf->in[0].rank)) return -1;
  inf->out[0] = inf->in[0];
  return 0;
}

static int infer_all_gather(ptc_infer *inf) {
  int ax;
  int64_t dim;
  if (axis_and_dim(inf, &ax, &dim)) return -1;
  ptc_sharding s = inf->in_shard[0];
  if (!s.present) return 0;
  if (!(s.dim_axes[dim] & (1u << ax)))
    return fail(inf, "dimension %lld of the operand is not split over %s, so "
                "there is nothing to gather", (long long)dim,
                inf->mod->mesh.axes[ax].name);
  if (minor_axis_check(inf, &s, dim, ax, "gather")) return -1;
  s.dim_axes[dim] &= (uint8_t)~(1u << ax);
  return set_shard(inf, 0, &s);
}

static int infer_reduce_scatter(ptc_infer *inf) {
  int ax;
  int64_t dim;
  if (axis_and_dim(inf, &ax, &dim) || reduce_kind(inf)) return -1;
  int64_t n = inf->mod->mesh.axes[ax].size;
  if (inf->in[0].dims[dim] % n)
    return fail(inf, "dimension %lld of size %lld does not divide over %lld "
                "devices of %s", (long long)dim, (long long)inf->in[0].dims[dim],
                (long long)n, inf->mod->mesh.axes[ax].name);
  ptc_sharding s = inf->in_shard[0];
  if (!s.present) return 0;
  if (s.dim_axes[dim] & (1u << ax))
    return fail(inf, "dimension %lld is already split over %s", (long long)dim,
                inf->mod->mesh.axes[ax].name);
  s.partial &= (uint8_t)~(1u << ax);
  if (add_split(inf, &s, dim, ax)) return -1;
  return set_shard(inf, 0, &s);
}

static int infer_shard(ptc_infer *inf) {
  int ax;
  int64_t dim;
  if (axis_and_dim(inf, &ax, &dim)) return -1;
  ptc_sharding s = inf->in_shard[0];
  if (!s.present) {
    memset(&s, 0, sizeof s);
    s.present = true;
  }
  if (s.partial & (1u << ax))
    return fail(inf, "the operand is a partial sum over %s; reduce it (all_reduce "
                "or reduce_scatter) instead of taking a piece",
                inf->mod->mesh.axes[ax].name);
  if (add_split(inf, &s, dim, ax)) return -1;
  return set_shard(inf, 0, &s);
}

static int infer_to_partial(ptc_infer *inf) {
  int ax;
  if (mesh_axis(inf, &ax)) return -1;
  inf->out[0] = inf->in[0];
  ptc_sharding s = inf->in_shard[0];
  if (!s.present) {
    memset(&s, 0, sizeof s);
    s.present = true;
  }
  if (s.partial & (1u << ax))
    return fail(inf, "the operand is already a partial sum over %s",
                inf->mod->mesh.axes[ax].name);
  for (int32_t d = 0; d < inf->in[0].rank; d++)
    if (s.dim_axes[d] & (1u << ax))
      return fail(inf, "dimension %d of the operand is split over %s; a partial sum over "
                  "an axis needs the whole value on each of its devices", d,
                  inf->mod->mesh.axes[ax].name);
  s.partial |= (uint8_t)(1u << ax);
  return set_shard(inf, 0, &s);
}

static int infer_broadcast(ptc_infer *inf) {
  int ax;
  if (mesh_axis(inf, &ax)) return -1;
  int64_t root = attr_i(inf, "root", 0);
  if (root < 0 || root >= inf->mod->mesh.axes[ax].size)
    return fail(inf, "root %lld is not a rank of axis %s (0..%lld)", (long long)root,
                inf->mod->mesh.axes[ax].name,
                (long long)inf->mod->mesh.axes[ax].size - 1);
  inf->out[0] = inf->in[0];
  if (inf->in_shard[0].present) return set_shard(inf, 0, &inf->in_shard[0]);
  return 0;
}

static int check_peer(ptc_infer *inf) {
  int64_t peer = attr_i(inf, "peer", 0);
  int pp = ptc_mesh_axis(&inf->mod->mesh, "pp", 2);
  int64_t stages = pp >= 0 ? inf->mod->mesh.axes[pp].size : 1;
  if (peer < 0 || peer >= stages)
    return fail(inf, "peer stage %lld is not a pipeline stage of the mesh (0..%lld)",
                (long long)peer, (long long)stages - 1);
  if (attr_i(inf, "tag", 0) < 0) return fail(inf, "tag must not be negative");
  return 0;
}

static int infer_send(ptc_infer *inf) { return check_peer(inf); }
static int infer_recv(ptc_infer *inf) { return check_peer(inf); }

/* ---- training state ------------------------------------------------------ */

/* The variable operand being a param/state read is checked in func.c (the
 * rule sees only types). */
static int infer_assign(ptc_infer *inf) {
  if (!ptc_type_eq(&inf->in[0], &inf->in[1]))
    return fail(inf, "the new value %s does not have the variable's type %s",
                ty(&inf->in[1]).s, ty(&inf->in[0]).s);
  return 0;
}

static int need_scalar_f32(const ptc_infer *inf, int i, const char *what) {
  if (inf->in[i].rank == 0 && inf->in[i].dtype == PTC_DTYPE_F32) return 0;
  return fail(inf, "%s (operand %d) must be f32[], got %s", what, i, ty(&inf->in[i]).s);
}

/* The state tensors match the parameter's shape; the gradient may be of a
 * lower precision dtype than the fp32 master weight. */
static int need_param_shaped(const ptc_infer *inf, int i, const char *what) {
  const ptc_type *p = &inf->in[0], *t = &inf->in[i];
  bool ok = t->rank == p->rank && ptc_dtype_is_float(t->dtype);
  for (int32_t d = 0; ok && d < p->rank; d++) ok = t->dims[d] == p->dims[d];
  if (ok) return 0;
  return fail(inf, "%s %s must have the shape of the parameter %s", what, ty(t).s,
              ty(p).s);
}

static int infer_adamw(ptc_infer *inf) {
  if (need_float(inf, 0) || need_param_shaped(inf, 1, "the gradient") ||
      need_param_shaped(inf, 2, "the first moment") ||
      need_param_shaped(inf, 3, "the second moment") ||
      need_scalar_f32(inf, 4, "the learning rate") || need_scalar_f32(inf, 5, "the step"))
    return -1;
  /* layouts: like any computing op, checked in a partitioned module by
   * ptc_shard_check_op (ZeRO updates a piece of a whole parameter) */
  for (int r = 0; r < 3; r++) inf->out[r] = inf->in[r == 0 ? 0 : r + 1];
  return 0;
}

static int infer_sgd(ptc_infer *inf) {
  if (need_float(inf, 0) || need_param_shaped(inf, 1, "the gradient") ||
      need_param_shaped(inf, 2, "the momentum buffer") ||
      need_scalar_f32(inf, 3, "the learning rate"))
    return -1;
  inf->out[0] = inf->in[0];
  inf->out[1] = inf->in[2];
  return 0;
}

/* return: checked against the function signature by the verifier. */
static int infer_return(ptc_infer *inf) { return 0; }

/* ---- dispatch ------------------------------------------------------------- */

typedef int (*infer_fn)(ptc_infer *);
static const infer_fn infer_table[] = {
#define PTC_OP(E, n, mi, ma, no, fl, at) infer_##n,
#include "ops.def"
#undef PTC_OP
};
_Static_assert(sizeof infer_table / sizeof infer_table[0] == PTC_OP_COUNT,
               "shape rule table out of sync with ops.def");

int ptc_op_infer(ptc_infer *inf) {
  PTC_ASSERT((unsigned)inf->code < PTC_OP_COUNT);
  return infer_table[inf->code](inf);
}

/* ---- costs ----------------------------------------------------------------- */
/* FLOPs count multiply-adds as 2 and a transcendental as 1; bytes count each
 * operand read once and each result written once (the unfused cost). */

typedef struct cost_in {
  const ptc_func *f;
  const ptc_op *op;
} cost_in;

static const ptc_type *in_type(const cost_in *c, int i) {
  return &c->f->values[c->op->in[i]].type;
}
static const ptc_type *out_type(const cost_in *c, int i) {
  return &c->f->values[c->op->out[i]].type;
}
static double out_numel(const cost_in *c) {
  return c->op->nout ? (double)ptc_type_numel(out_type(c, 0)) : 0;
}

static double io_bytes(const cost_in *c) {
  double b = 0;
  for (int32_t i = 0; i < c->op->nin; i++) b += (double)ptc_type_bytes(in_type(c, i));
  for (int32_t i = 0; i < c->op->nout; i++) b += (double)ptc_type_bytes(out_type(c, i));
  return b;
}

static double flops_zero(const cost_in *c) { return 0; }
static double flops_per_out(const cost_in *c) { return out_numel(c); }
#define flops_constant flops_zero
#define flops_add flops_per_out
#define flops_sub flops_per_out
#define flops_mul flops_per_out
#define flops_div flops_per_out
#define flops_maximum flops_per_out
#define flops_neg flops_per_out
#define flops_exp flops_per_out
#define flops_log flops_per_out
#define flops_sqrt flops_per_out
#define flops_rsqrt flops_per_out
#define flops_tanh flops_per_out
#define flops_relu flops_per_out
#define flops_cast flops_zero
#define flops_reshape flops_zero
#define flops_transpose flops_zero
#define flops_slice flops_zero
#define flops_concat flops_zero
#define flops_pad flops_zero
#define flops_broadcast_to flops_zero
#define flops_embedding flops_zero
#define flops_all_gather flops_zero
#define flops_shard flops_zero
#define flops_to_partial flops_zero
#define flops_broadcast flops_zero
#define flops_send flops_zero
#define flops_recv flops_zero
#define flops_return flops_zero
#define flops_assign flops_zero
static double flops_adamw(const cost_in *c) { return 12 * (double)ptc_type_numel(in_type(c, 0)); }
static double flops_sgd(const cost_in *c) { return 4 * (double)ptc_type_numel(in_type(c, 0)); }

static double flops_sigmoid(const cost_in *c) { return 4 * out_numel(c); }
static double flops_gelu(const cost_in *c) { return 8 * out_numel(c); }
static double flops_silu(const cost_in *c) { return 5 * out_numel(c); }
static double flops_reduce(const cost_in *c) { return (double)ptc_type_numel(in_type(c, 0)); }
#define flops_reduce_sum flops_reduce
#define flops_reduce_mean flops_reduce
#define flops_reduce_max flops_reduce
static double flops_softmax(const cost_in *c) { return 5 * out_numel(c); }
static double flops_layernorm(const cost_in *c) { return 8 * out_numel(c); }
static double flops_rmsnorm(const cost_in *c) { return 5 * out_numel(c); }
static double flops_rope(const cost_in *c) { return 3 * out_numel(c); }
static double flops_all_reduce(const cost_in *c) { return (double)ptc_type_numel(in_type(c, 0)); }
#define flops_reduce_scatter flops_all_reduce

static double flops_matmul(const cost_in *c) {
  /* 2 * (batch * M * N) * K */
  const ptc_type *a = in_type(c, 0);
  bool ta = ptc_op_attr_bool(c->op, "transpose_a", false);
  int64_t k = ta ? a->dims[a->rank - 2] : a->dims[a->rank - 1];
  return 2.0 * out_numel(c) * (double)k;
}

static double flops_attention(const cost_in *c) {
  /* q·kᵀ and p·v: 2·B·H·T·S·D each, plus softmax over B·H·T·S; causal
   * attention computes half of the T·S scores. */
  const ptc_type *q = in_type(c, 0), *k = in_type(c, 1), *v = in_type(c, 2);
  double b = (double)q->dims[0], t = (double)q->dims[1], h = (double)q->dims[2],
         d = (double)q->dims[3], s = (double)k->dims[1], e = (double)v->dims[3];
  double scores = b * h * t * s;
  if (ptc_op_attr_bool(c->op, "causal", false)) scores *= 0.5;
  return scores * (2 * d + 2 * e + 5);
}

static double flops_cross_entropy(const cost_in *c) {
  return 5.0 * (double)ptc_type_numel(in_type(c, 0));
}

/* gradients: the forward work they recompute plus the chain rule */
#define flops_compare flops_per_out
#define flops_select flops_per_out
#define flops_relu_grad flops_per_out
static double flops_gelu_grad(const cost_in *c) { return 14 * out_numel(c); }
static double flops_silu_grad(const cost_in *c) { return 7 * out_numel(c); }
static double flops_softmax_grad(const cost_in *c) { return 4 * out_numel(c); }
static double flops_layernorm_grad(const cost_in *c) { return 14 * out_numel(c); }
static double flops_rmsnorm_grad(const cost_in *c) { return 10 * out_numel(c); }
static double flops_cross_entropy_grad(const cost_in *c) {
  return 5.0 * (double)ptc_type_numel(in_type(c, 1));
}
static double flops_embedding_grad(const cost_in *c) {
  return (double)ptc_type_numel(in_type(c, 0));
}

static double flops_attention_grad(const cost_in *c) {
  /* recomputed scores q·kᵀ (2·D per score), dP = g·vᵀ and dV = Pᵀ·g (2·E
   * each), dQ = dS·k and dK = dSᵀ·q (2·D each), softmax and its gradient */
  const ptc_type *q = in_type(c, 1), *k = in_type(c, 2), *v = in_type(c, 3);
  double b = (double)q->dims[0], t = (double)q->dims[1], h = (double)q->dims[2],
         d = (double)q->dims[3], s = (double)k->dims[1], e = (double)v->dims[3];
  double scores = b * h * t * s;
  if (ptc_op_attr_bool(c->op, "causal", false)) scores *= 0.5;
  return scores * (6 * d + 4 * e + 10);
}

typedef double (*flops_fn)(const cost_in *);
static const flops_fn flops_table[] = {
#define PTC_OP(E, n, mi, ma, no, fl, at) flops_##n,
#include "ops.def"
#undef PTC_OP
};
_Static_assert(sizeof flops_table / sizeof flops_table[0] == PTC_OP_COUNT,
               "cost table out of sync with ops.def");

ptc_cost ptc_op_cost(const ptc_func *f, const ptc_op *op) {
  cost_in c = {f, op};
  ptc_cost r;
  r.flops = flops_table[op->code](&c);
  r.bytes = (op->code == PTC_OP_RESHAPE || op->code == PTC_OP_RETURN) ? 0 : io_bytes(&c);
  return r;
}

double ptc_func_flops(const ptc_func *f) {
  double s = 0;
  for (int32_t i = 0; i < f->nops; i++)
    if (!ptc_op_attr_bool(&f->ops[i], "recompute", false)) s += ptc_op_cost(f, &f->ops[i]).flops;
  return s;
}

double ptc_func_hw_flops(const ptc_func *f) {
  double s = 0;
  for (int32_t i = 0; i < f->nops; i++) s += ptc_op_cost(f, &f->ops[i]).flops;
  return s;
}
