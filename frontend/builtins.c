/* builtins.c -- the functions a .ptg expression can call.
 *
 * One table: each builtin has a signature string and a lowering function.
 * The signature drives argument checking for all of them alike (positional
 * and keyword arguments, defaults, kinds), so every builtin reports a
 * missing, unknown, repeated or wrongly-typed argument the same way, at the
 * argument.  The lowering functions then only build ops.
 *
 * Signature syntax: space-separated "name:kind", with "=default" or "?"
 * (optional, no default) after optional ones.  Kinds:
 *   t tensor      v tensor or number   f number   i integer   a axis
 *   b bool        d dtype              I list of integers
 *   T one or more tensors (variadic; positional only)
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/ptg_internal.h"

typedef struct sig_param {
  char name[16];
  char kind;
  bool optional;
  const char *dflt; /* into the signature string, or NULL */
  size_t dflt_len;
} sig_param;

typedef struct arg {
  bool given;
  const ptg_node *node;
  ptc_loc loc;
  ptg_val v;        /* t v f i a b */
  int32_t id;       /* t: the tensor */
  ptc_dtype dtype;  /* d */
  int32_t nints;    /* I */
  int64_t ints[PTC_MAX_RANK];
  int32_t nids;     /* T */
  int32_t *ids;
} arg;

typedef struct builtin builtin;
typedef int (*builtin_fn)(ptg_lower *L, const builtin *b, const ptg_node *call,
                          arg *args, ptg_val *out);
struct builtin {
  const char *name;
  const char *sig;
  builtin_fn fn;
  ptc_opcode code; /* for the table-driven ones */
};

/* ---- helpers --------------------------------------------------------------- */

static int out_tensor(ptg_val *out, int32_t id) {
  if (id < 0) return -1;
  ptg_tensor(out, id);
  return 0;
}

/* Normalizes a possibly negative axis for a tensor of the given rank. */
static int norm_axis(ptg_lower *L, const builtin *b, const arg *a,
                     const char *pname, int64_t axis, int32_t rank,
                     int64_t *out) {
  if (axis < -rank || axis >= rank) {
    ptc_error(L->ctx, a->loc, "%s: %s %lld is out of range for a tensor of "
              "rank %d (use %d..%d)", b->name, pname, (long long)axis, rank,
              -rank, rank - 1);
    return -1;
  }
  *out = axis < 0 ? axis + rank : axis;
  return 0;
}

static double gelu_tanh(double x) {
  return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

/* ---- lowering functions ----------------------------------------------------- */

/* gelu, relu, ...: a number gives a number; a tensor gives the op. */
static int fn_unary(ptg_lower *L, const builtin *b, const ptg_node *call,
                    arg *args, ptg_val *out) {
  if (args[0].v.kind == PTG_V_NUM) {
    double x = args[0].v.f, r;
    switch (b->code) {
    case PTC_OP_EXP: r = exp(x); break;
    case PTC_OP_LOG: r = log(x); break;
    case PTC_OP_SQRT: r = sqrt(x); break;
    case PTC_OP_RSQRT: r = 1 / sqrt(x); break;
    case PTC_OP_TANH: r = tanh(x); break;
    case PTC_OP_SIGMOID: r = 1 / (1 + exp(-x)); break;
    case PTC_OP_RELU: r = x > 0 ? x : 0; break;
    case PTC_OP_GELU: r = gelu_tanh(x); break;
    case PTC_OP_SILU: r = x / (1 + exp(-x)); break;
    default: PTC_UNREACHABLE();
    }
    if (!isfinite(r)) {
      ptc_error(L->ctx, call->loc, "%s(%g) is not a finite number", b->name, x);
      return -1;
    }
    ptg_num_float(out, r);
    return 0;
  }
  return out_tensor(out, ptg_build1(L, b->code, &args[0].id, 1, NULL, 0, call->loc));
}

static int fn_layernorm(ptg_lower *L, const builtin *b, const ptg_node *call,
                        arg *args, ptg_val *out) {
  int32_t in[3] = {args[0].id, args[1].id, args[2].id};
  ptc_attr a = ptc_attr_float("eps", args[3].v.f);
  return out_tensor(out, ptg_build1(L, PTC_OP_LAYERNORM, in, 3, &a, 1, call->loc));
}

static int fn_rmsnorm(ptg_lower *L, const builtin *b, const ptg_node *call,
                      arg *args, ptg_val *out) {
  int32_t in[2] = {args[0].id, args[1].id};
  ptc_attr a = ptc_attr_float("eps", args[2].v.f);
  return out_tensor(out, ptg_build1(L, PTC_OP_RMSNORM, in, 2, &a, 1, call->loc));
}

static int fn_softmax(ptg_lower *L, const builtin *b, const ptg_node *call,
                      arg *args, ptg_val *out) {
  int64_t axis;
  if (norm_axis(L, b, &args[1], "axis", args[1].v.i,
                ptg_type_of(L, args[0].id)->rank, &axis) < 0)
    return -1;
  ptc_attr a = ptc_attr_int("axis", axis);
  return out_tensor(out, ptg_build1(L, PTC_OP_SOFTMAX, &args[0].id, 1, &a, 1, call->loc));
}

/* reshape(x, [dims]): one -1 is inferred from the element count. */
static int fn_reshape(ptg_lower *L, const builtin *b, const ptg_node *call,
                      arg *args, ptg_val *out) {
  const ptc_type *in = ptg_type_of(L, args[0].id);
  ptc_type t;
  memset(&t, 0, sizeof t);
  t.dtype = in->dtype;
  t.rank = args[1].nints;
  int32_t infer = -1;
  int64_t known = 1;
  for (int32_t i = 0; i < t.rank; i++) {
    int64_t d = args[1].ints[i];
    if (d == -1 && infer < 0) {
      infer = i;
      continue;
    }
    if (d < 1) {
      ptc_error(L->ctx, args[1].loc, "reshape: dimension %d is %lld; sizes must "
                "be positive, with at most one -1 to infer", i, (long long)d);
      return -1;
    }
    if (!ptc_mul_ovf(known, d, &known) || known > PTC_MAX_ELEMENTS) {
      ptc_error(L->ctx, args[1].loc, "reshape: the shape has more than 2^50 "
                "elements");
      return -1;
    }
    t.dims[i] = d;
  }
  int64_t numel = ptc_type_numel(in);
  if (infer >= 0) {
    if (numel % known != 0) {
      ptc_buf s;
      ptc_buf_init(&s);
      ptc_type_print(&s, in);
      ptc_error(L->ctx, args[1].loc, "reshape: cannot infer the -1: %s has %lld "
                "elements, which the other sizes (product %lld) do not divide",
                s.data, (long long)numel, (long long)known);
      ptc_buf_fini(&s);
      return -1;
    }
    t.dims[infer] = numel / known;
  }
  return out_tensor(out, ptg_build_typed(L, PTC_OP_RESHAPE, &args[0].id, 1,
                                         NULL, 0, &t, call->loc));
}

static int fn_transpose(ptg_lower *L, const builtin *b, const ptg_node *call,
                        arg *args, ptg_val *out) {
  int32_t rank = ptg_type_of(L, args[0].id)->rank;
  int64_t perm[PTC_MAX_RANK];
  for (int32_t i = 0; i < args[1].nints; i++) {
    int64_t p = args[1].ints[i];
    perm[i] = p < 0 && p >= -rank ? p + rank : p;
  }
  ptc_attr a = ptc_attr_ints("perm", perm, args[1].nints);
  return out_tensor(out, ptg_build1(L, PTC_OP_TRANSPOSE, &args[0].id, 1, &a, 1, call->loc));
}

/* split(x, n, axis): n equal slices, as a tuple for `a, b, c = ...`. */
static int fn_split(ptg_lower *L, const builtin *b, const ptg_node *call,
                    arg *args, ptg_val *out) {
  const ptc_type *t = ptg_type_of(L, args[0].id);
  int64_t n = args[1].v.i, axis;
  if (norm_axis(L, b, &args[2], "axis", args[2].v.i, t->rank, &axis) < 0)
    return -1;
  int64_t dim = t->dims[axis];
  if (n < 1 || n > dim || dim % n != 0) {
    ptc_error(L->ctx, args[1].loc, "split: dimension %lld of size %lld does "
              "not split into %lld equal parts", (long long)axis,
              (long long)dim, (long long)n);
    return -1;
  }
  if (n > L->lim.max_ops) {
    ptc_error(L->ctx, args[1].loc, "split: %lld parts is more than the op "
              "limit", (long long)n);
    return -1;
  }
  memset(out, 0, sizeof *out);
  out->kind = PTG_V_TUPLE;
  out->n = (int32_t)n;
  out->ids = ptc_arena_alloc(L->arena, (size_t)n * sizeof *out->ids);
  int64_t part = dim / n;
  int32_t x = args[0].id;
  for (int64_t i = 0; i < n; i++) {
    ptc_attr a[3] = {ptc_attr_int("axis", axis), ptc_attr_int("start", i * part),
                     ptc_attr_int("end", (i + 1) * part)};
    out->ids[i] = ptg_build1(L, PTC_OP_SLICE, &x, 1, a, 3, call->loc);
    if (out->ids[i] < 0) return -1;
  }
  return 0;
}

static int fn_concat(ptg_lower *L, const builtin *b, const ptg_node *call,
                     arg *args, ptg_val *out) {
  int64_t axis;
  if (norm_axis(L, b, &args[1], "axis", args[1].v.i,
                ptg_type_of(L, args[0].ids[0])->rank, &axis) < 0)
    return -1;
  ptc_attr a = ptc_attr_int("axis", axis);
  return out_tensor(out, ptg_build1(L, PTC_OP_CONCAT, args[0].ids, args[0].nids,
                                    &a, 1, call->loc));
}

static int fn_rope(ptg_lower *L, const builtin *b, const ptg_node *call,
                   arg *args, ptg_val *out) {
  if (!(args[1].v.f > 0)) {
    ptc_error(L->ctx, args[1].loc, "rope: theta must be positive, got %g",
              args[1].v.f);
    return -1;
  }
  ptc_attr a = ptc_attr_float("theta", args[1].v.f);
  return out_tensor(out, ptg_build1(L, PTC_OP_ROPE, &args[0].id, 1, &a, 1, call->loc));
}

static int fn_attention(ptg_lower *L, const builtin *b, const ptg_node *call,
                        arg *args, ptg_val *out) {
  int32_t in[3] = {args[0].id, args[1].id, args[2].id};
  ptc_attr a[2];
  int32_t na = 0;
  a[na++] = ptc_attr_bool("causal", args[3].v.b);
  if (args[4].given) a[na++] = ptc_attr_float("scale", args[4].v.f);
  return out_tensor(out, ptg_build1(L, PTC_OP_ATTENTION, in, 3, a, na, call->loc));
}

static int fn_cross_entropy(ptg_lower *L, const builtin *b, const ptg_node *call,
                            arg *args, ptg_val *out) {
  int32_t in[2] = {args[0].id, args[1].id};
  ptc_attr a = ptc_attr_int("classes", args[2].v.i);
  return out_tensor(out, ptg_build1(L, PTC_OP_CROSS_ENTROPY, in, 2, &a,
                                    args[2].given ? 1 : 0, call->loc));
}

/* sum / mean over axes (default: all of them, giving a scalar). */
static int fn_reduce(ptg_lower *L, const builtin *b, const ptg_node *call,
                     arg *args, ptg_val *out) {
  int32_t rank = ptg_type_of(L, args[0].id)->rank;
  int64_t axes[PTC_MAX_RANK];
  int32_t n = 0;
  if (args[1].given) {
    for (int32_t i = 0; i < args[1].nints; i++)
      if (norm_axis(L, b, &args[1], "axis", args[1].ints[i], rank, &axes[n++]) < 0)
        return -1;
  } else {
    for (int32_t i = 0; i < rank; i++) axes[n++] = i;
  }
  ptc_attr a[2] = {ptc_attr_ints("axes", axes, n),
                   ptc_attr_bool("keepdim", args[2].v.b)};
  return out_tensor(out, ptg_build1(L, b->code, &args[0].id, 1, a,
                                    args[2].v.b ? 2 : 1, call->loc));
}

static int fn_cast(ptg_lower *L, const builtin *b, const ptg_node *call,
                   arg *args, ptg_val *out) {
  ptc_attr a = ptc_attr_dtype("to", args[1].dtype);
  return out_tensor(out, ptg_build1(L, PTC_OP_CAST, &args[0].id, 1, &a, 1, call->loc));
}

/* min / max: of numbers, a number; with a tensor, element-wise (min through
 * -maximum(-a, -b), the table having only maximum). */
static int fn_minmax(ptg_lower *L, const builtin *b, const ptg_node *call,
                     arg *args, ptg_val *out) {
  bool is_max = b->name[1] == 'a';
  const ptg_val *x = &args[0].v, *y = &args[1].v;
  if (x->kind == PTG_V_NUM && y->kind == PTG_V_NUM) {
    bool pick_x = is_max ? x->f >= y->f : x->f <= y->f;
    if (x->is_int && y->is_int) pick_x = is_max ? x->i >= y->i : x->i <= y->i;
    *out = pick_x ? *x : *y;
    return 0;
  }
  if (is_max) return ptg_binary(L, PTC_OP_MAXIMUM, x, y, call->loc, out);
  ptg_val nx, ny, m;
  const ptg_val *v[2] = {x, y};
  ptg_val *nv[2] = {&nx, &ny};
  for (int i = 0; i < 2; i++) {
    if (v[i]->kind == PTG_V_NUM) {
      ptg_num_float(nv[i], -v[i]->f);
      continue;
    }
    int32_t id = ptg_build1(L, PTC_OP_NEG, &v[i]->id, 1, NULL, 0, call->loc);
    if (id < 0) return -1;
    ptg_tensor(nv[i], id);
  }
  if (ptg_binary(L, PTC_OP_MAXIMUM, &nx, &ny, call->loc, &m) < 0) return -1;
  return out_tensor(out, ptg_build1(L, PTC_OP_NEG, &m.id, 1, NULL, 0, call->loc));
}

/* ---- the table -------------------------------------------------------------- */

static const builtin builtins[] = {
    {"layernorm", "x:t g:t b:t eps:f=1e-5", fn_layernorm, PTC_OP_LAYERNORM},
    {"rmsnorm", "x:t g:t eps:f=1e-5", fn_rmsnorm, PTC_OP_RMSNORM},
    {"gelu", "x:v", fn_unary, PTC_OP_GELU},
    {"relu", "x:v", fn_unary, PTC_OP_RELU},
    {"silu", "x:v", fn_unary, PTC_OP_SILU},
    {"tanh", "x:v", fn_unary, PTC_OP_TANH},
    {"exp", "x:v", fn_unary, PTC_OP_EXP},
    {"log", "x:v", fn_unary, PTC_OP_LOG},
    {"sqrt", "x:v", fn_unary, PTC_OP_SQRT},
    {"rsqrt", "x:v", fn_unary, PTC_OP_RSQRT},
    {"sigmoid", "x:v", fn_unary, PTC_OP_SIGMOID},
    {"softmax", "x:t axis:a=-1", fn_softmax, PTC_OP_SOFTMAX},
    {"reshape", "x:t shape:I", fn_reshape, PTC_OP_RESHAPE},
    {"transpose", "x:t perm:I", fn_transpose, PTC_OP_TRANSPOSE},
    {"split", "x:t n:i axis:a=-1", fn_split, PTC_OP_SLICE},
    {"concat", "xs:T axis:a=0", fn_concat, PTC_OP_CONCAT},
    {"rope", "x:t theta:f=10000.0", fn_rope, PTC_OP_ROPE},
    {"attention", "q:t k:t v:t causal:b=true scale:f?", fn_attention, PTC_OP_ATTENTION},
    {"cross_entropy", "logits:t targets:t classes:i?", fn_cross_entropy,
     PTC_OP_CROSS_ENTROPY},
    {"sum", "x:t axes:I? keepdim:b=false", fn_reduce, PTC_OP_REDUCE_SUM},
    {"mean", "x:t axes:I? keepdim:b=false", fn_reduce, PTC_OP_REDUCE_MEAN},
    {"cast", "x:t to:d", fn_cast, PTC_OP_CAST},
    {"min", "a:v b:v", fn_minmax, PTC_OP_MAXIMUM},
    {"max", "a:v b:v", fn_minmax, PTC_OP_MAXIMUM},
};

static int parse_sig(const char *sig, sig_param *ps) {
  int n = 0;
  const char *p = sig;
  while (*p) {
    while (*p == ' ') p++;
    if (!*p) break;
    PTC_ASSERT(n < PTG_MAX_SIG);
    sig_param *q = &ps[n++];
    memset(q, 0, sizeof *q);
    size_t k = 0;
    while (*p && *p != ':') {
      PTC_ASSERT(k + 1 < sizeof q->name);
      q->name[k++] = *p++;
    }
    PTC_ASSERT(*p == ':');
    p++;
    q->kind = *p++;
    if (*p == '?') {
      q->optional = true;
      p++;
    } else if (*p == '=') {
      q->optional = true;
      q->dflt = ++p;
      while (*p && *p != ' ') p++;
      q->dflt_len = (size_t)(p - q->dflt);
    }
  }
  return n;
}

static const char *kind_desc(char k) {
  switch (k) {
  case 't': return "a tensor";
  case 'v': return "a tensor or a number";
  case 'f': return "a number";
  case 'i': return "an integer";
  case 'a': return "an axis (an integer)";
  case 'b': return "true or false";
  case 'd': return "a dtype (f32, f64, bf16, f16, i64, i32, i8, bool)";
  case 'I': return "a list of integers like [a, b]";
  case 'T': return "a tensor";
  }
  return "a value";
}

static void sig_names(const sig_param *ps, int n, char *buf, size_t cap) {
  size_t k = 0;
  buf[0] = 0;
  for (int i = 0; i < n && k < cap; i++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%s%s", i ? ", " : "", ps[i].name,
                          ps[i].kind == 'T' ? "..." : "");
}

static int bad_kind(ptg_lower *L, const builtin *b, const sig_param *q,
                    const arg *a, const ptg_val *v) {
  char d[160];
  if (v)
    ptc_error(L->ctx, a->loc, "%s: argument '%s' must be %s, got %s", b->name,
              q->name, kind_desc(q->kind), ptg_val_desc(L, v, d, sizeof d));
  else
    ptc_error(L->ctx, a->loc, "%s: argument '%s' must be %s", b->name, q->name,
              kind_desc(q->kind));
  return -1;
}

/* Evaluates one argument according to its kind. */
static int eval_arg(ptg_lower *L, const builtin *b, const sig_param *q, arg *a) {
  const ptg_node *n = a->node;
  char what[64];
  snprintf(what, sizeof what, "%s: argument '%s'", b->name, q->name);
  if (q->kind == 'd') {
    int d = n->kind == PTG_N_NAME ? ptc_dtype_from_name(n->name, strlen(n->name)) : -1;
    if (d < 0) return bad_kind(L, b, q, a, NULL);
    a->dtype = (ptc_dtype)d;
    return 0;
  }
  if (q->kind == 'I') {
    if (n->kind != PTG_N_LIST) return bad_kind(L, b, q, a, NULL);
    if (n->nkids > PTC_MAX_RANK) {
      ptc_error(L->ctx, a->loc, "%s has %d entries; at most %d are supported",
                what, n->nkids, PTC_MAX_RANK);
      return -1;
    }
    a->nints = n->nkids;
    for (int32_t i = 0; i < n->nkids; i++) {
      ptg_val v;
      if (ptg_eval(L, n->kids[i], &v) < 0 ||
          ptg_as_int(L, &v, n->kids[i]->start, what, &a->ints[i]) < 0)
        return -1;
    }
    return 0;
  }
  if (n->kind == PTG_N_LIST) return bad_kind(L, b, q, a, NULL);
  if (ptg_eval(L, n, &a->v) < 0) return -1;
  switch (q->kind) {
  case 't':
  case 'T':
    if (a->v.kind != PTG_V_TENSOR) return bad_kind(L, b, q, a, &a->v);
    return ptg_as_tensor(L, &a->v, a->loc, what, &a->id);
  case 'v':
    if (a->v.kind == PTG_V_NUM) return 0;
    if (a->v.kind != PTG_V_TENSOR) return bad_kind(L, b, q, a, &a->v);
    if (ptg_as_tensor(L, &a->v, a->loc, what, &a->id) < 0) return -1;
    ptg_tensor(&a->v, a->id);
    return 0;
  case 'f':
    if (a->v.kind != PTG_V_NUM) return bad_kind(L, b, q, a, &a->v);
    return 0;
  case 'i':
  case 'a': {
    int64_t i;
    if (a->v.kind != PTG_V_NUM) return bad_kind(L, b, q, a, &a->v);
    if (ptg_as_int(L, &a->v, a->loc, what, &i) < 0) return -1;
    ptg_num_int(&a->v, i);
    return 0;
  }
  case 'b':
    if (a->v.kind != PTG_V_BOOL) return bad_kind(L, b, q, a, &a->v);
    return 0;
  }
  PTC_UNREACHABLE();
}

/* Fills an omitted optional argument from its default. */
static void default_arg(const sig_param *q, arg *a) {
  if (!q->dflt) return;
  char buf[32];
  size_t n = q->dflt_len < sizeof buf - 1 ? q->dflt_len : sizeof buf - 1;
  memcpy(buf, q->dflt, n);
  buf[n] = 0;
  memset(&a->v, 0, sizeof a->v);
  if (q->kind == 'b') {
    a->v.kind = PTG_V_BOOL;
    a->v.b = strcmp(buf, "true") == 0;
  } else if (q->kind == 'i' || q->kind == 'a') {
    ptg_num_int(&a->v, strtoll(buf, NULL, 10));
  } else {
    ptg_num_float(&a->v, strtod(buf, NULL));
  }
}

static const builtin *find_builtin(const char *name) {
  for (int i = 0; i < PTC_ARRAY_LEN(builtins); i++)
    if (strcmp(builtins[i].name, name) == 0) return &builtins[i];
  return NULL;
}

/* Edit distance where swapping two neighbours counts as one edit (typos
 * like gleu for gelu); names longer than 64 are never "close". */
int ptg_edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 64 || lb > 64) return 99;
  int d[65][65];
  for (size_t i = 0; i <= la; i++) d[i][0] = (int)i;
  for (size_t j = 0; j <= lb; j++) d[0][j] = (int)j;
  for (size_t i = 1; i <= la; i++)
    for (size_t j = 1; j <= lb; j++) {
      int best = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          d[i - 2][j - 2] + 1 < best)
        best = d[i - 2][j - 2] + 1;
      d[i][j] = best;
    }
  return d[la][lb];
}

int ptg_suggest_limit(const char *name) {
  int n = (int)strlen(name) / 3;
  return n < 1 ? 1 : n > 3 ? 3 : n;
}

const char *ptg_builtin_suggest(const char *name) {
  const char *best = NULL;
  int bestd = ptg_suggest_limit(name) + 1;
  for (int i = 0; i < PTC_ARRAY_LEN(builtins); i++) {
    int d = ptg_edit_distance(name, builtins[i].name);
    if (d < bestd) {
      bestd = d;
      best = builtins[i].name;
    }
  }
  return best;
}

int ptg_call(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  const builtin *b = find_builtin(n->name);
  if (!b) {
    const char *s = ptg_builtin_suggest(n->name);
    if (s)
      ptc_error(L->ctx, n->loc, "unknown function '%s'; did you mean '%s'?",
                n->name, s);
    else
      ptc_error(L->ctx, n->loc, "unknown function '%s'", n->name);
    return -1;
  }
  sig_param ps[PTG_MAX_SIG];
  int np = parse_sig(b->sig, ps);
  arg args[PTG_MAX_SIG];
  memset(args, 0, sizeof args);
  char names[160];
  sig_names(ps, np, names, sizeof names);

  /* match call arguments to parameters */
  int pos = 0;
  bool seen_kw = false;
  for (int32_t i = 0; i < n->nkids; i++) {
    const ptg_node *e = n->kids[i];
    int k;
    ptc_loc loc = e->start;
    if (n->kw[i]) {
      seen_kw = true;
      loc = n->kwloc[i];
      for (k = 0; k < np; k++)
        if (strcmp(ps[k].name, n->kw[i]) == 0 && ps[k].kind != 'T') break;
      if (k == np) {
        ptc_error(L->ctx, loc, "%s has no argument named '%s'; its arguments "
                  "are: %s", b->name, n->kw[i], names);
        return -1;
      }
      if (args[k].given) {
        ptc_error(L->ctx, loc, "%s: argument '%s' is given twice", b->name,
                  ps[k].name);
        return -1;
      }
    } else {
      if (seen_kw) {
        ptc_error(L->ctx, loc, "%s: a positional argument cannot follow a "
                  "keyword argument", b->name);
        return -1;
      }
      if (pos < np && ps[pos].kind == 'T') {
        /* variadic: gather every positional argument from here */
        arg *a = &args[pos];
        if (!a->given) {
          a->given = true;
          a->node = e;
          a->loc = loc;
          a->ids = ptc_arena_alloc(L->arena, (size_t)n->nkids * sizeof *a->ids);
        }
        arg one = {.node = e, .loc = loc};
        if (eval_arg(L, b, &ps[pos], &one) < 0) return -1;
        a->ids[a->nids++] = one.id;
        if (i + 1 < n->nkids && !n->kw[i + 1]) continue;
        pos++;
        continue;
      }
      if (pos >= np) {
        ptc_error(L->ctx, loc, "%s takes %d argument%s (%s), got %d", b->name,
                  np, np == 1 ? "" : "s", names, n->nkids);
        return -1;
      }
      k = pos++;
    }
    args[k].given = true;
    args[k].node = e;
    args[k].loc = loc;
  }
  for (int k = 0; k < np; k++) {
    if (args[k].given || !ps[k].optional) continue;
    default_arg(&ps[k], &args[k]);
  }
  for (int k = 0; k < np; k++) {
    if (args[k].given || ps[k].optional) continue;
    ptc_error(L->ctx, n->loc, "%s: missing argument '%s' (its arguments "
              "are: %s)", b->name, ps[k].name, names);
    return -1;
  }
  /* evaluate in the order written, so ops follow the source */
  for (int32_t i = 0; i < n->nkids; i++)
    for (int k = 0; k < np; k++) {
      if (!args[k].given || args[k].node != n->kids[i] || ps[k].kind == 'T')
        continue;
      args[k].loc = args[k].node->start;
      if (eval_arg(L, b, &ps[k], &args[k]) < 0) return -1;
    }
  return b->fn(L, b, n, args, out);
}
