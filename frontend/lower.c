/* lower.c -- the .ptg syntax tree to a ptir module.
 *
 * Lowering is evaluation: statements run in order, constants are computed,
 * `repeat` bodies run once per iteration (so layers come out unrolled, as
 * the IR wants), and every tensor expression builds its ops through
 * ptc_build at the location of its operator token or call name, so shape
 * errors from the op table point at the right place in the .ptg file.
 *
 * Scoping: the top level is one scope; each iteration of a repeat body gets
 * a fresh one.  A name assigned inside a block is local to the iteration,
 * unless it already existed outside, in which case the outer binding is
 * updated (that is how `x = x + ...` carries the residual stream).  Params
 * declared in an iteration are named "<prefix><i>.<name>" and bound under
 * their short name in the iteration's scope, which is why the iteration's
 * own params are found first.
 *
 * Limits (ptc_frontend_limits) bound ops, params, statements run and
 * iterations.  After the first iteration of a repeat the cost of the rest is
 * known exactly (every iteration runs the same statements), so an unroll
 * that would pass a limit is refused at the `repeat` before it runs.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/ptg_internal.h"

enum {
  DEFAULT_MAX_OPS = 1000000,
  DEFAULT_MAX_PARAMS = 1000000,
  DEFAULT_MAX_STEPS = 10000000,
  DEFAULT_MAX_REPEAT = 1000000,
};

void ptc_frontend_default_limits(ptc_frontend_limits *lim) {
  lim->max_ops = DEFAULT_MAX_OPS;
  lim->max_params = DEFAULT_MAX_PARAMS;
  lim->max_steps = DEFAULT_MAX_STEPS;
  lim->max_repeat = DEFAULT_MAX_REPEAT;
}

/* ---- values ---------------------------------------------------------------- */

void ptg_num_int(ptg_val *v, int64_t i) {
  memset(v, 0, sizeof *v);
  v->kind = PTG_V_NUM;
  v->is_int = true;
  v->i = i;
  v->f = (double)i;
}

void ptg_num_float(ptg_val *v, double f) {
  memset(v, 0, sizeof *v);
  v->kind = PTG_V_NUM;
  v->f = f;
}

void ptg_tensor(ptg_val *v, int32_t id) {
  memset(v, 0, sizeof *v);
  v->kind = PTG_V_TENSOR;
  v->id = id;
}

const char *ptg_val_desc(ptg_lower *L, const ptg_val *v, char *buf,
                         size_t len) {
  switch (v->kind) {
  case PTG_V_NUM:
    if (v->is_int) snprintf(buf, len, "the integer %lld", (long long)v->i);
    else snprintf(buf, len, "the number %g", v->f);
    break;
  case PTG_V_BOOL: snprintf(buf, len, "%s", v->b ? "true" : "false"); break;
  case PTG_V_TENSOR: {
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_type_print(&b, ptg_type_of(L, v->id));
    snprintf(buf, len, "a tensor %s%s", b.data, v->pend_t ? " (before ^T)" : "");
    ptc_buf_fini(&b);
    break;
  }
  case PTG_V_TUPLE: snprintf(buf, len, "%d values (from split)", v->n); break;
  }
  return buf;
}

/* Numbers that are whole and fit int64 count as integers. */
static bool num_to_int(const ptg_val *v, int64_t *out) {
  if (v->is_int) {
    *out = v->i;
    return true;
  }
  if (v->inexact || !isfinite(v->f) || v->f != floor(v->f) ||
      fabs(v->f) >= 9.2e18)
    return false;
  *out = (int64_t)v->f;
  return true;
}

int ptg_as_int(ptg_lower *L, const ptg_val *v, ptc_loc loc, const char *what,
               int64_t *out) {
  char d[160];
  if (v->kind != PTG_V_NUM) {
    ptc_error(L->ctx, loc, "%s must be an integer, got %s", what,
              ptg_val_desc(L, v, d, sizeof d));
    return -1;
  }
  if (num_to_int(v, out)) return 0;
  if (v->inexact)
    ptc_error(L->ctx, loc, "%s must be an integer, but %lld / %lld does not "
              "divide exactly (it is %g)", what, (long long)v->div_a,
              (long long)v->div_b, v->f);
  else
    ptc_error(L->ctx, loc, "%s must be an integer, got %g", what, v->f);
  return -1;
}

/* ---- building ops ------------------------------------------------------------ */

static int check_op_budget(ptg_lower *L, ptc_loc loc) {
  if (L->fn->nops < L->lim.max_ops) return 0;
  ptc_error(L->ctx, loc, "the model is too large: more than %lld ops "
            "(is a repeat count or a split too large?)",
            (long long)L->lim.max_ops);
  return -1;
}

int32_t ptg_build1(ptg_lower *L, ptc_opcode code, const int32_t *in,
                   int32_t nin, const ptc_attr *attrs, int32_t nattr,
                   ptc_loc loc) {
  if (check_op_budget(L, loc) < 0) return -1;
  return ptc_build1(L->fn, code, in, nin, attrs, nattr, loc);
}

int32_t ptg_build_typed(ptg_lower *L, ptc_opcode code, const int32_t *in,
                        int32_t nin, const ptc_attr *attrs, int32_t nattr,
                        const ptc_type *t, ptc_loc loc) {
  if (check_op_budget(L, loc) < 0) return -1;
  ptc_build_args a = {.code = code, .nin = nin, .in = in, .nattr = nattr,
                      .attrs = attrs, .ngiven = 1, .given = t, .loc = loc};
  int32_t idx = ptc_build(L->fn, &a);
  return idx < 0 ? -1 : L->fn->ops[idx].out[0];
}

int32_t ptg_constant(ptg_lower *L, double v, ptc_dtype dt, ptc_loc loc) {
  ptc_type t;
  memset(&t, 0, sizeof t);
  t.dtype = dt;
  ptc_attr a = ptc_attr_float("value", v);
  return ptg_build_typed(L, PTC_OP_CONSTANT, NULL, 0, &a, 1, &t, loc);
}

/* Applies a pending ^T with a transpose op of the last two dimensions. */
static int32_t materialize_t(ptg_lower *L, int32_t id, ptc_loc loc) {
  const ptc_type *t = ptg_type_of(L, id);
  if (t->rank < 2) {
    char d[160];
    ptg_val v;
    ptg_tensor(&v, id);
    ptc_error(L->ctx, loc, "^T needs a tensor of rank 2 or more, got %s",
              ptg_val_desc(L, &v, d, sizeof d));
    return -1;
  }
  int64_t perm[PTC_MAX_RANK];
  for (int32_t i = 0; i < t->rank; i++) perm[i] = i;
  perm[t->rank - 2] = t->rank - 1;
  perm[t->rank - 1] = t->rank - 2;
  ptc_attr a = ptc_attr_ints("perm", perm, t->rank);
  return ptg_build1(L, PTC_OP_TRANSPOSE, &id, 1, &a, 1, loc);
}

int ptg_as_tensor(ptg_lower *L, const ptg_val *v, ptc_loc loc,
                  const char *what, int32_t *id) {
  if (v->kind != PTG_V_TENSOR) {
    char d[160];
    ptc_error(L->ctx, loc, "%s must be a tensor, got %s", what,
              ptg_val_desc(L, v, d, sizeof d));
    return -1;
  }
  if (!v->pend_t) {
    *id = v->id;
    return 0;
  }
  *id = materialize_t(L, v->id, v->t_loc);
  return *id < 0 ? -1 : 0;
}

int ptg_binary(ptg_lower *L, ptc_opcode code, const ptg_val *a,
               const ptg_val *b, ptc_loc loc, ptg_val *out) {
  int32_t ids[2];
  const ptg_val *v[2] = {a, b};
  /* the tensor side gives a number its dtype */
  ptc_dtype dt = PTC_DTYPE_F32;
  for (int i = 0; i < 2; i++) {
    if (v[i]->kind == PTG_V_TENSOR) {
      if (ptg_as_tensor(L, v[i], loc, "operand", &ids[i]) < 0) return -1;
      dt = ptg_type_of(L, ids[i])->dtype;
    }
  }
  for (int i = 0; i < 2; i++) {
    if (v[i]->kind == PTG_V_TENSOR) continue;
    if (v[i]->kind != PTG_V_NUM) {
      char d[160];
      ptc_error(L->ctx, loc, "operand %d of '%s' must be a tensor or a number, "
                "got %s", i, ptc_opinfo_get(code)->name,
                ptg_val_desc(L, v[i], d, sizeof d));
      return -1;
    }
    ids[i] = ptg_constant(L, v[i]->f, dt, loc);
    if (ids[i] < 0) return -1;
  }
  int32_t r = ptg_build1(L, code, ids, 2, NULL, 0, loc);
  if (r < 0) return -1;
  ptg_tensor(out, r);
  return 0;
}

/* ---- scopes ------------------------------------------------------------------ */

static size_t ptr_hash(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return (size_t)x;
}

static ptg_bind *scope_find(ptg_scope *s, const char *name) {
  if (!s->cap) return NULL;
  size_t j = ptr_hash(name) & (size_t)(s->cap - 1);
  while (s->slots[j].name) {
    if (s->slots[j].name == name) return &s->slots[j];
    j = (j + 1) & (size_t)(s->cap - 1);
  }
  return NULL;
}

static ptg_bind *scope_add(ptg_scope *s, const char *name) {
  if ((s->n + 1) * 2 > s->cap) {
    int32_t cap = s->cap ? 2 * s->cap : 16;
    ptg_bind *slots = ptc_xcalloc((size_t)cap, sizeof *slots);
    for (int32_t i = 0; i < s->cap; i++) {
      if (!s->slots[i].name) continue;
      size_t j = ptr_hash(s->slots[i].name) & (size_t)(cap - 1);
      while (slots[j].name) j = (j + 1) & (size_t)(cap - 1);
      slots[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
  }
  size_t j = ptr_hash(name) & (size_t)(s->cap - 1);
  while (s->slots[j].name) j = (j + 1) & (size_t)(s->cap - 1);
  s->slots[j].name = name;
  s->n++;
  return &s->slots[j];
}

static ptg_bind *lookup(ptg_lower *L, const char *name) {
  for (ptg_scope *s = L->scope; s; s = s->parent) {
    ptg_bind *b = scope_find(s, name);
    if (b) return b;
  }
  return NULL;
}

static int32_t pmap_find(ptg_lower *L, const char *name) {
  if (!L->pcap) return -1;
  size_t j = ptr_hash(name) & (size_t)(L->pcap - 1);
  while (L->pkeys[j]) {
    if (L->pkeys[j] == name) return L->pvals[j];
    j = (j + 1) & (size_t)(L->pcap - 1);
  }
  return -1;
}

static void pmap_add(ptg_lower *L, const char *name, int32_t p) {
  if ((L->pn + 1) * 2 > L->pcap) {
    int32_t cap = L->pcap ? 2 * L->pcap : 64;
    const char **keys = ptc_xcalloc((size_t)cap, sizeof *keys);
    int32_t *vals = ptc_xcalloc((size_t)cap, sizeof *vals);
    for (int32_t i = 0; i < L->pcap; i++) {
      if (!L->pkeys[i]) continue;
      size_t j = ptr_hash(L->pkeys[i]) & (size_t)(cap - 1);
      while (keys[j]) j = (j + 1) & (size_t)(cap - 1);
      keys[j] = L->pkeys[i];
      vals[j] = L->pvals[i];
    }
    free(L->pkeys);
    free(L->pvals);
    L->pkeys = keys;
    L->pvals = vals;
    L->pcap = cap;
  }
  size_t j = ptr_hash(name) & (size_t)(L->pcap - 1);
  while (L->pkeys[j]) j = (j + 1) & (size_t)(L->pcap - 1);
  L->pkeys[j] = name;
  L->pvals[j] = p;
  L->pn++;
}

static const char *bind_kind_name(ptg_bkind k) {
  switch (k) {
  case PTG_B_CONST: return "a constant";
  case PTG_B_INPUT: return "an input";
  case PTG_B_VALUE: return "a value";
  case PTG_B_PARAM: return "a parameter";
  }
  return "a name";
}

/* Declares a new name in the current scope; a second declaration of the
 * same name in one scope is an error pointing at both. */
static ptg_bind *declare(ptg_lower *L, const char *name, ptg_bkind kind,
                         ptc_loc loc) {
  ptg_bind *old = scope_find(L->scope, name);
  if (old) {
    ptc_error(L->ctx, loc, "'%s' is already defined (as %s)", name,
              bind_kind_name(old->kind));
    ptc_note(L->ctx, old->loc, "'%s' was defined here", name);
    return NULL;
  }
  ptg_bind *b = scope_add(L->scope, name);
  b->kind = kind;
  b->loc = loc;
  return b;
}

/* Closest name in scope (or builtin) for "did you mean". */
static const char *suggest_name(ptg_lower *L, const char *name) {
  const char *best = NULL;
  int bestd = ptg_suggest_limit(name) + 1;
  for (ptg_scope *s = L->scope; s; s = s->parent)
    for (int32_t i = 0; i < s->cap; i++) {
      if (!s->slots[i].name) continue;
      int d = ptg_edit_distance(name, s->slots[i].name);
      if (d < bestd) {
        bestd = d;
        best = s->slots[i].name;
      }
    }
  return best;
}

/* ---- expressions ------------------------------------------------------------- */

static int eval_name(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  ptg_bind *b = lookup(L, n->name);
  int32_t p = -1;
  if (b && b->kind == PTG_B_PARAM) p = b->param;
  else if (!b) p = pmap_find(L, n->name); /* a full name: h0.ln1.g */
  if (p >= 0) {
    ptg_tensor(out, ptc_func_param_value(L->fn, p));
    return 0;
  }
  if (b) {
    *out = b->val;
    return 0;
  }
  const char *s = suggest_name(L, n->name);
  if (s)
    ptc_error(L->ctx, n->loc, "undefined name '%s'; did you mean '%s'?",
              n->name, s);
  else
    ptc_error(L->ctx, n->loc, "undefined name '%s'", n->name);
  return -1;
}

static int num_error(ptg_lower *L, ptc_loc loc, const char *what) {
  ptc_error(L->ctx, loc, "%s", what);
  return -1;
}

/* Floor division and modulo with Python's signs. */
static int64_t floordiv_i(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) q--;
  return q;
}

/* a op b on numbers. */
static int eval_num_binary(ptg_lower *L, ptg_tok_kind op, const ptg_val *a,
                           const ptg_val *b, ptc_loc loc, ptg_val *out) {
  bool ints = a->is_int && b->is_int;
  int64_t r;
  switch (op) {
  case PTG_TOK_PLUS:
    if (ints) {
      if (!ptc_add_ovf(a->i, b->i, &r)) return num_error(L, loc, "integer overflow in '+'");
      ptg_num_int(out, r);
      return 0;
    }
    ptg_num_float(out, a->f + b->f);
    break;
  case PTG_TOK_MINUS:
    if (ints) {
      if (b->i == INT64_MIN || !ptc_add_ovf(a->i, -b->i, &r))
        return num_error(L, loc, "integer overflow in '-'");
      ptg_num_int(out, r);
      return 0;
    }
    ptg_num_float(out, a->f - b->f);
    break;
  case PTG_TOK_STAR:
    if (ints) {
      if (!ptc_mul_ovf(a->i, b->i, &r)) return num_error(L, loc, "integer overflow in '*'");
      ptg_num_int(out, r);
      return 0;
    }
    ptg_num_float(out, a->f * b->f);
    break;
  case PTG_TOK_SLASH:
    if (ints) {
      if (b->i == 0) return num_error(L, loc, "division by zero");
      if (a->i == INT64_MIN && b->i == -1)
        return num_error(L, loc, "integer overflow in '/'");
      if (a->i % b->i == 0) {
        ptg_num_int(out, a->i / b->i);
        return 0;
      }
      ptg_num_float(out, (double)a->i / (double)b->i);
      out->inexact = true;
      out->div_a = a->i;
      out->div_b = b->i;
      return 0;
    }
    if (b->f == 0) return num_error(L, loc, "division by zero");
    ptg_num_float(out, a->f / b->f);
    break;
  case PTG_TOK_SLASHSLASH:
  case PTG_TOK_PERCENT:
    if (ints) {
      if (b->i == 0) return num_error(L, loc, "division by zero");
      if (a->i == INT64_MIN && b->i == -1)
        return num_error(L, loc, "integer overflow");
      int64_t q = floordiv_i(a->i, b->i);
      ptg_num_int(out, op == PTG_TOK_SLASHSLASH ? q : a->i - q * b->i);
      return 0;
    }
    if (b->f == 0) return num_error(L, loc, "division by zero");
    if (op == PTG_TOK_SLASHSLASH) {
      ptg_num_float(out, floor(a->f / b->f));
    } else {
      double m = fmod(a->f, b->f);
      if (m != 0 && ((m < 0) != (b->f < 0))) m += b->f;
      ptg_num_float(out, m);
    }
    break;
  case PTG_TOK_STARSTAR:
    if (ints && b->i >= 0) {
      int64_t acc = 1, base = a->i, e = b->i;
      /* exponents past 63 overflow unless the base is 0, 1 or -1 */
      if (base == 0 || base == 1) {
        acc = e == 0 ? 1 : base;
      } else if (base == -1) {
        acc = (e % 2) ? -1 : 1;
      } else {
        for (int64_t k = 0; k < e; k++)
          if (!ptc_mul_ovf(acc, base, &acc))
            return num_error(L, loc, "integer overflow in '**'");
      }
      ptg_num_int(out, acc);
      return 0;
    }
    ptg_num_float(out, pow(a->f, b->f));
    break;
  default: PTC_UNREACHABLE();
  }
  if (!isfinite(out->f))
    return num_error(L, loc, "the result is not a finite number");
  return 0;
}

/* Whether a matmul operand with a pending ^T can take it as an attribute:
 * only parameters do (the transpose then costs nothing and the weight keeps
 * its layout, as with GPT-2's tied lm head `x @ wte^T`). */
static bool transposes_free(ptg_lower *L, const ptg_val *v) {
  return v->pend_t && L->fn->values[v->id].kind == PTC_VALUE_PARAM;
}

static int eval_matmul(ptg_lower *L, const ptg_node *n, const ptg_val *a,
                       const ptg_val *b, ptg_val *out) {
  int32_t ids[2];
  ptc_attr attrs[2];
  int32_t nattr = 0;
  const ptg_val *v[2] = {a, b};
  static const char *const tname[2] = {"transpose_a", "transpose_b"};
  static const char *const side[2] = {"the left operand of '@'",
                                      "the right operand of '@'"};
  for (int i = 0; i < 2; i++) {
    if (v[i]->kind == PTG_V_TENSOR && transposes_free(L, v[i])) {
      ids[i] = v[i]->id;
      attrs[nattr++] = ptc_attr_bool(tname[i], true);
    } else if (ptg_as_tensor(L, v[i], n->kids[i]->start, side[i], &ids[i]) < 0) {
      return -1;
    }
  }
  int32_t r = ptg_build1(L, PTC_OP_MATMUL, ids, 2, attrs, nattr, n->loc);
  if (r < 0) return -1;
  ptg_tensor(out, r);
  return 0;
}

static int eval_binary(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  ptg_val a, b;
  if (ptg_eval(L, n->kids[0], &a) < 0 || ptg_eval(L, n->kids[1], &b) < 0)
    return -1;
  if (n->op == PTG_TOK_AT) return eval_matmul(L, n, &a, &b, out);
  const ptg_val *v[2] = {&a, &b};
  for (int i = 0; i < 2; i++) {
    if (v[i]->kind == PTG_V_NUM || v[i]->kind == PTG_V_TENSOR) continue;
    char d[160];
    ptc_error(L->ctx, n->kids[i]->start, "operand of %s must be a number or a "
              "tensor, got %s", ptg_tok_desc(n->op),
              ptg_val_desc(L, v[i], d, sizeof d));
    return -1;
  }
  if (a.kind == PTG_V_NUM && b.kind == PTG_V_NUM)
    return eval_num_binary(L, n->op, &a, &b, n->loc, out);
  ptc_opcode code;
  switch (n->op) {
  case PTG_TOK_PLUS: code = PTC_OP_ADD; break;
  case PTG_TOK_MINUS: code = PTC_OP_SUB; break;
  case PTG_TOK_STAR: code = PTC_OP_MUL; break;
  case PTG_TOK_SLASH: code = PTC_OP_DIV; break;
  default:
    ptc_error(L->ctx, n->loc, "%s works on numbers only, not on tensors",
              ptg_tok_desc(n->op));
    return -1;
  }
  return ptg_binary(L, code, &a, &b, n->loc, out);
}

static int eval_neg(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  ptg_val a;
  if (ptg_eval(L, n->kids[0], &a) < 0) return -1;
  if (a.kind == PTG_V_NUM) {
    if (a.is_int) {
      if (a.i == INT64_MIN) return num_error(L, n->loc, "integer overflow in '-'");
      ptg_num_int(out, -a.i);
    } else {
      ptg_num_float(out, -a.f);
    }
    return 0;
  }
  int32_t id;
  if (ptg_as_tensor(L, &a, n->kids[0]->start, "the operand of unary '-'", &id) < 0)
    return -1;
  int32_t r = ptg_build1(L, PTC_OP_NEG, &id, 1, NULL, 0, n->loc);
  if (r < 0) return -1;
  ptg_tensor(out, r);
  return 0;
}

static int eval_transpose(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  ptg_val a;
  if (ptg_eval(L, n->kids[0], &a) < 0) return -1;
  if (a.kind != PTG_V_TENSOR) {
    char d[160];
    ptc_error(L->ctx, n->loc, "^T needs a tensor, got %s",
              ptg_val_desc(L, &a, d, sizeof d));
    return -1;
  }
  if (ptg_type_of(L, a.id)->rank < 2) {
    char d[160];
    ptc_error(L->ctx, n->loc, "^T needs a tensor of rank 2 or more, got %s",
              ptg_val_desc(L, &a, d, sizeof d));
    return -1;
  }
  /* Deferred: a matmul may absorb it; anything else applies it. */
  *out = a;
  out->pend_t = !a.pend_t;
  out->t_loc = n->loc;
  return 0;
}

/* One bound of a slice, or `dflt` when omitted; negative counts from the
 * end, as in Python. */
static int slice_bound(ptg_lower *L, const ptg_node *e, int64_t dim,
                       int64_t dflt, const char *what, int64_t *out) {
  if (!e) {
    *out = dflt;
    return 0;
  }
  ptg_val v;
  if (ptg_eval(L, e, &v) < 0 || ptg_as_int(L, &v, e->start, what, out) < 0)
    return -1;
  if (*out < 0) *out += dim;
  return 0;
}

/* T[idx] (embedding gather), T[a:b], T[:, a:b], T[i] ... */
static int eval_index(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  ptg_val base;
  if (ptg_eval(L, n->kids[0], &base) < 0) return -1;
  int32_t nitems = n->nkids - 1;
  const ptg_node *const *items = (const ptg_node *const *)n->kids + 1;
  int32_t x;
  if (ptg_as_tensor(L, &base, n->kids[0]->start, "an indexed value", &x) < 0)
    return -1;
  /* a lone tensor index gathers rows */
  ptg_val first;
  bool have_first = false;
  if (nitems == 1 && items[0]->kind != PTG_N_SLICE) {
    if (ptg_eval(L, items[0], &first) < 0) return -1;
    have_first = true;
    if (first.kind == PTG_V_TENSOR) {
      int32_t in[2];
      if (ptg_as_tensor(L, &first, items[0]->start, "the index", &in[0]) < 0)
        return -1;
      in[1] = x;
      int32_t r = ptg_build1(L, PTC_OP_EMBEDDING, in, 2, NULL, 0, n->loc);
      if (r < 0) return -1;
      ptg_tensor(out, r);
      return 0;
    }
  }
  ptc_type t = *ptg_type_of(L, x);
  if (nitems > t.rank) {
    ptc_error(L->ctx, n->loc, "%d indices for a tensor of rank %d", nitems,
              t.rank);
    return -1;
  }
  bool drop[PTC_MAX_RANK] = {false};
  bool any_drop = false;
  for (int32_t d = 0; d < nitems; d++) {
    const ptg_node *it = items[d];
    int64_t dim = ptg_type_of(L, x)->dims[d], s, e;
    char what[64];
    if (it->kind == PTG_N_SLICE) {
      snprintf(what, sizeof what, "the start of the slice of dimension %d", d);
      if (slice_bound(L, it->kids[0], dim, 0, what, &s) < 0) return -1;
      snprintf(what, sizeof what, "the end of the slice of dimension %d", d);
      if (slice_bound(L, it->kids[1], dim, dim, what, &e) < 0) return -1;
      if (!it->kids[0] && !it->kids[1]) continue; /* ':' keeps the dimension */
      if (s < 0 || e > dim || s >= e) {
        ptc_error(L->ctx, it->start, "slice %lld:%lld of dimension %d (size "
                  "%lld) is empty or out of range", (long long)s, (long long)e,
                  d, (long long)dim);
        return -1;
      }
    } else {
      ptg_val v = first;
      if (!have_first || d > 0) {
        if (ptg_eval(L, it, &v) < 0) return -1;
      }
      if (v.kind == PTG_V_TENSOR) {
        ptc_error(L->ctx, it->start, "an index tensor (a row gather) must be "
                  "the only index: write T[idx]");
        return -1;
      }
      snprintf(what, sizeof what, "index %d", d);
      if (ptg_as_int(L, &v, it->start, what, &s) < 0) return -1;
      int64_t i = s < 0 ? s + dim : s;
      if (i < 0 || i >= dim) {
        ptc_error(L->ctx, it->start, "index %lld is out of range for dimension "
                  "%d of size %lld", (long long)s, d, (long long)dim);
        return -1;
      }
      s = i;
      e = i + 1;
      drop[d] = true;
      any_drop = true;
    }
    ptc_attr a[3] = {ptc_attr_int("axis", d), ptc_attr_int("start", s),
                     ptc_attr_int("end", e)};
    x = ptg_build1(L, PTC_OP_SLICE, &x, 1, a, 3, n->loc);
    if (x < 0) return -1;
  }
  if (any_drop) {
    ptc_type r = *ptg_type_of(L, x);
    int32_t k = 0;
    for (int32_t d = 0; d < r.rank; d++)
      if (!drop[d]) r.dims[k++] = r.dims[d];
    r.rank = k;
    x = ptg_build_typed(L, PTC_OP_RESHAPE, &x, 1, NULL, 0, &r, n->loc);
    if (x < 0) return -1;
  }
  ptg_tensor(out, x);
  return 0;
}

int ptg_eval(ptg_lower *L, const ptg_node *n, ptg_val *out) {
  switch (n->kind) {
  case PTG_N_INT: ptg_num_int(out, n->ival); return 0;
  case PTG_N_FLOAT: ptg_num_float(out, n->fval); return 0;
  case PTG_N_BOOL:
    memset(out, 0, sizeof *out);
    out->kind = PTG_V_BOOL;
    out->b = n->ival != 0;
    return 0;
  case PTG_N_NAME: return eval_name(L, n, out);
  case PTG_N_NEG: return eval_neg(L, n, out);
  case PTG_N_BINARY: return eval_binary(L, n, out);
  case PTG_N_TRANSPOSE: return eval_transpose(L, n, out);
  case PTG_N_INDEX: return eval_index(L, n, out);
  case PTG_N_CALL: return ptg_call(L, n, out);
  case PTG_N_LIST:
    ptc_error(L->ctx, n->loc, "a list is only allowed as a function argument, "
              "as in reshape(x, [a, b])");
    return -1;
  case PTG_N_SLICE:
    ptc_error(L->ctx, n->loc, "a slice a:b is only allowed inside [ ]");
    return -1;
  }
  PTC_UNREACHABLE();
}

/* ---- statements ------------------------------------------------------------ */

static const ptc_define *find_define(ptg_lower *L, const char *name) {
  for (int32_t i = L->ndefs - 1; i >= 0; i--)
    if (strcmp(L->defs[i].name, name) == 0) return &L->defs[i];
  return NULL;
}

/* Where in the command line a define (or its value) is: its text becomes the
 * "<command line>" source so the diagnostic can quote it. */
static ptc_loc define_loc(ptg_lower *L, const ptc_define *d, bool value) {
  ptc_loc loc = {ptc_intern_cstr(L->ctx, "<command line>"), 1, 1};
  if (!d->text) {
    loc.line = 0;
    return loc;
  }
  size_t tl = strlen(d->text), nl = strlen(d->name);
  ptc_ctx_add_source(L->ctx, "<command line>", d->text, tl);
  if (d->off < 0 || (size_t)d->off + nl > tl ||
      memcmp(d->text + d->off, d->name, nl) != 0)
    return loc; /* not where the record says: point at the whole option */
  size_t at = (size_t)d->off;
  if (value) {
    /* NAME [blanks] '=' [blanks] VALUE */
    size_t i = at + nl;
    while (i < tl && (d->text[i] == ' ' || d->text[i] == '\t')) i++;
    if (i < tl && d->text[i] == '=') {
      i++;
      while (i < tl && (d->text[i] == ' ' || d->text[i] == '\t')) i++;
      at = i;
    }
  }
  loc.col = (int32_t)at + 1;
  return loc;
}

static int define_value(ptg_lower *L, const ptc_define *d, ptg_val *out) {
  char err[160];
  bool is_int = false;
  int64_t i = 0;
  double f = 0;
  const char *v = d->value ? d->value : "";
  if (ptg_parse_number(v, strlen(v), &is_int, &i, &f, err, sizeof err) < 0) {
    ptc_error(L->ctx, define_loc(L, d, true), "invalid value '%.40s' for "
              "constant '%s': %s", v, d->name, err);
    return -1;
  }
  if (is_int) ptg_num_int(out, i);
  else ptg_num_float(out, f);
  return 0;
}

static int exec_const(ptg_lower *L, const ptg_stmt *s) {
  ptg_val v;
  const ptc_define *d = find_define(L, s->names[0]);
  if (d) {
    if (define_value(L, d, &v) < 0) return -1;
  } else {
    if (ptg_eval(L, s->expr, &v) < 0) return -1;
    if (v.kind != PTG_V_NUM) {
      char desc[160];
      ptc_error(L->ctx, s->expr->start, "constant '%s' must be a number, got %s",
                s->names[0], ptg_val_desc(L, &v, desc, sizeof desc));
      return -1;
    }
  }
  v.pend_t = false;
  ptg_bind *b = declare(L, s->names[0], PTG_B_CONST, s->name_locs[0]);
  if (!b) return -1;
  b->val = v;
  return 0;
}

/* Evaluates a written type; `what` names its owner for messages. */
static int eval_type(ptg_lower *L, const ptg_typeexpr *te, const char *what,
                     ptc_type *out) {
  memset(out, 0, sizeof *out);
  out->dtype = te->dtype >= 0 ? (ptc_dtype)te->dtype : PTC_DTYPE_F32;
  if (te->ndims > PTC_MAX_RANK) {
    ptc_error(L->ctx, te->loc, "%s has %d dimensions; at most %d are "
              "supported", what, te->ndims, PTC_MAX_RANK);
    return -1;
  }
  out->rank = te->ndims;
  int64_t numel = 1;
  for (int32_t i = 0; i < te->ndims; i++) {
    ptg_val v;
    char w[PTG_MAX_NAME + 64];
    snprintf(w, sizeof w, "dimension %d of %s", i, what);
    if (ptg_eval(L, te->dims[i], &v) < 0 ||
        ptg_as_int(L, &v, te->dims[i]->start, w, &out->dims[i]) < 0)
      return -1;
    if (out->dims[i] < 1) {
      ptc_error(L->ctx, te->dims[i]->start, "%s must be positive, got %lld", w,
                (long long)out->dims[i]);
      return -1;
    }
    if (!ptc_mul_ovf(numel, out->dims[i], &numel) || numel > PTC_MAX_ELEMENTS) {
      ptc_error(L->ctx, te->dims[i]->start, "%s is too large: the tensor would "
                "have more than 2^50 elements (is a size wrong?)", what);
      return -1;
    }
  }
  return 0;
}

static int exec_input(ptg_lower *L, const ptg_stmt *s) {
  char what[PTG_MAX_NAME + 16];
  snprintf(what, sizeof what, "input '%s'", s->names[0]);
  ptc_type t;
  if (eval_type(L, &s->type, what, &t) < 0) return -1;
  ptg_bind *b = declare(L, s->names[0], PTG_B_INPUT, s->name_locs[0]);
  if (!b) return -1;
  ptg_tensor(&b->val, ptc_func_add_arg(L->fn, s->names[0], &t, NULL));
  return 0;
}

static int exec_param(ptg_lower *L, const ptg_stmt *s) {
  const char *full = L->prefix.len
                         ? ptc_arena_printf(L->arena, "%s%s", L->prefix.data, s->names[0])
                         : s->names[0];
  full = ptc_intern_cstr(L->ctx, full);
  char what[2 * PTG_MAX_NAME + 32];
  snprintf(what, sizeof what, "parameter '%s'", full);
  ptc_type t;
  if (eval_type(L, &s->type, what, &t) < 0) return -1;
  if (!ptc_dtype_is_float(t.dtype)) {
    ptc_error(L->ctx, s->type.dtype_loc, "%s must have a floating-point dtype, not "
              "%s", what, ptc_dtype_name(t.dtype));
    return -1;
  }
  ptc_init init = {.kind = s->init, .std = 0, .depth = 0};
  if (s->init == PTC_INIT_NORMAL || s->init == PTC_INIT_SCALED) {
    ptg_val v;
    if (ptg_eval(L, s->init_args[0], &v) < 0) return -1;
    if (v.kind != PTG_V_NUM || !(v.f >= 0) || !isfinite(v.f)) {
      char d[160];
      ptc_error(L->ctx, s->init_args[0]->start, "the standard deviation must be "
                "a number >= 0, got %s", ptg_val_desc(L, &v, d, sizeof d));
      return -1;
    }
    init.std = v.f;
  }
  if (s->init == PTC_INIT_SCALED) {
    ptg_val v;
    if (ptg_eval(L, s->init_args[1], &v) < 0 ||
        ptg_as_int(L, &v, s->init_args[1]->start, "the depth of scaled()",
                   &init.depth) < 0)
      return -1;
    if (init.depth < 1) {
      ptc_error(L->ctx, s->init_args[1]->start, "the depth of scaled() must be "
                "at least 1, got %lld", (long long)init.depth);
      return -1;
    }
  }
  int32_t prev = pmap_find(L, full);
  if (prev >= 0) {
    ptc_error(L->ctx, s->name_locs[0], "parameter '%s' is already defined", full);
    ptc_note(L->ctx, L->mod->params[prev].loc, "'%s' was defined here", full);
    return -1;
  }
  if (L->mod->nparams >= L->lim.max_params) {
    ptc_error(L->ctx, s->name_locs[0], "the model is too large: more than "
              "%lld parameters", (long long)L->lim.max_params);
    return -1;
  }
  ptg_bind *b = declare(L, s->names[0], PTG_B_PARAM, s->name_locs[0]);
  if (!b) return -1;
  int32_t p = ptc_module_add_param(L->mod, full, &t, init, s->loc);
  if (p < 0) return -1;
  pmap_add(L, full, p);
  b->param = p;
  return 0;
}

/* name = value: updates the innermost existing binding of a value, or makes
 * a new one in the current scope. */
static int assign(ptg_lower *L, const char *name, ptc_loc loc,
                  const ptg_val *v, bool top) {
  ptg_bind *b = lookup(L, name);
  if (b && b->kind == PTG_B_INPUT) b->kind = PTG_B_VALUE; /* rebinds the name */
  if (b && b->kind != PTG_B_VALUE) {
    ptc_error(L->ctx, loc, "cannot assign to '%s': it is %s", name,
              bind_kind_name(b->kind));
    ptc_note(L->ctx, b->loc, "'%s' was defined here", name);
    return -1;
  }
  if (!b && pmap_find(L, name) >= 0) {
    ptc_error(L->ctx, loc, "cannot assign to '%s': it is a parameter", name);
    return -1;
  }
  if (name == ptc_intern_cstr(L->ctx, "loss")) {
    if (!top) {
      ptc_error(L->ctx, loc, "the loss must be defined at the top level, not "
                "inside a repeat block");
      return -1;
    }
    if (L->has_loss) {
      ptc_error(L->ctx, loc, "the loss is defined twice");
      ptc_note(L->ctx, b->loc, "first defined here");
      return -1;
    }
    int32_t id;
    if (ptg_as_tensor(L, v, loc, "the loss", &id) < 0) return -1;
    const ptc_type *t = ptg_type_of(L, id);
    if (t->rank != 0 || !ptc_dtype_is_float(t->dtype)) {
      char d[160];
      ptg_val tv;
      ptg_tensor(&tv, id);
      ptc_error(L->ctx, loc, "the loss must be a floating-point scalar (f32[]), "
                "got %s; reduce it with mean(...) or cross_entropy(...)",
                ptg_val_desc(L, &tv, d, sizeof d));
      return -1;
    }
    L->has_loss = true;
    L->loss = id;
  }
  if (!b) {
    b = scope_add(L->scope, name);
    b->kind = PTG_B_VALUE;
    b->loc = loc;
  }
  b->val = *v;
  return 0;
}

static int exec_assign(ptg_lower *L, const ptg_stmt *s, bool top) {
  ptg_val v;
  if (ptg_eval(L, s->expr, &v) < 0) return -1;
  if (v.kind == PTG_V_TUPLE) {
    if (v.n != s->nnames) {
      ptc_error(L->ctx, s->name_locs[0], "the right side gives %d values but "
                "%d name%s assigned", v.n, s->nnames,
                s->nnames == 1 ? " is" : "s are");
      return -1;
    }
    for (int32_t i = 0; i < v.n; i++) {
      ptg_val e;
      ptg_tensor(&e, v.ids[i]);
      if (assign(L, s->names[i], s->name_locs[i], &e, top) < 0) return -1;
    }
    return 0;
  }
  if (s->nnames != 1) {
    ptc_error(L->ctx, s->name_locs[0], "%d names are assigned but the right "
              "side gives one value", s->nnames);
    return -1;
  }
  return assign(L, s->names[0], s->name_locs[0], &v, top);
}

static int exec_stmts(ptg_lower *L, ptg_stmt *const *stmts, int32_t n, bool top);

static int64_t sat_mul(int64_t a, int64_t b) {
  int64_t r;
  return ptc_mul_ovf(a, b, &r) ? r : INT64_MAX;
}

/* `per` more of something for each of `more` future iterations on top of
 * `have`: refused when past `limit`. */
static int over_limit(ptg_lower *L, ptc_loc loc, int64_t have, int64_t per,
                      int64_t more, int64_t limit, const char *what) {
  int64_t total;
  if (per <= 0 || more <= 0) return 0;
  if (ptc_mul_ovf(per, more, &total) && ptc_add_ovf(total, have, &total) &&
      total <= limit)
    return 0;
  ptc_error(L->ctx, loc, "this repeat would unroll to more than %lld %s "
            "(%lld per iteration); is the count too large?",
            (long long)limit, what, (long long)per);
  return -1;
}

static int exec_repeat(ptg_lower *L, const ptg_stmt *s) {
  ptg_val v;
  int64_t count;
  if (ptg_eval(L, s->expr, &v) < 0 ||
      ptg_as_int(L, &v, s->expr->start, "the repeat count", &count) < 0)
    return -1;
  if (count < 0) {
    ptc_error(L->ctx, s->expr->start, "the repeat count must not be negative, "
              "got %lld", (long long)count);
    return -1;
  }
  if (count > L->lim.max_repeat) {
    ptc_error(L->ctx, s->expr->start, "the repeat count %lld is more than the "
              "limit of %lld iterations", (long long)count,
              (long long)L->lim.max_repeat);
    return -1;
  }
  size_t plen = L->prefix.len;
  int64_t ops0 = L->fn->nops, params0 = L->mod->nparams, steps0 = L->steps;
  /* Every iteration runs the same statements, so the first one tells the
   * cost of all.  Enclosing repeats will run this one again at least
   * `outer` times in all (their remaining iterations multiply), so the
   * check after the first iteration covers count * outer runs of it. */
  int64_t outer = L->mult;
  int rc = 0;
  for (int64_t i = 0; i < count && rc == 0; i++) {
    if (++L->steps > L->lim.max_steps) {
      ptc_error(L->ctx, s->loc, "the model is too large: more than %lld "
                "statements run", (long long)L->lim.max_steps);
      rc = -1;
      break;
    }
    if (s->prefix) {
      L->prefix.len = plen;
      ptc_buf_printf(&L->prefix, "%s%lld.", s->prefix, (long long)i);
    }
    L->mult = sat_mul(outer, count - i);
    ptg_scope scope = {.parent = L->scope};
    L->scope = &scope;
    rc = exec_stmts(L, s->body, s->nbody, false);
    L->scope = scope.parent;
    free(scope.slots);
    if (rc == 0 && i == 0) {
      int64_t more = sat_mul(count, outer) - 1;
      if (over_limit(L, s->loc, L->fn->nops, L->fn->nops - ops0, more,
                     L->lim.max_ops, "ops") < 0 ||
          over_limit(L, s->loc, L->mod->nparams, L->mod->nparams - params0,
                     more, L->lim.max_params, "parameters") < 0 ||
          over_limit(L, s->loc, L->steps, L->steps - steps0, more,
                     L->lim.max_steps, "statements") < 0)
        rc = -1;
    }
  }
  L->mult = outer;
  L->prefix.len = plen;
  if (L->prefix.data) L->prefix.data[plen] = 0;
  return rc;
}

static int exec_stmts(ptg_lower *L, ptg_stmt *const *stmts, int32_t n,
                      bool top) {
  for (int32_t i = 0; i < n; i++) {
    const ptg_stmt *s = stmts[i];
    if (++L->steps > L->lim.max_steps) {
      ptc_error(L->ctx, s->loc, "the model is too large: more than %lld "
                "statements run", (long long)L->lim.max_steps);
      return -1;
    }
    int rc = 0;
    switch (s->kind) {
    case PTG_S_CONST: rc = exec_const(L, s); break;
    case PTG_S_INPUT: rc = exec_input(L, s); break;
    case PTG_S_PARAM: rc = exec_param(L, s); break;
    case PTG_S_ASSIGN: rc = exec_assign(L, s, top); break;
    case PTG_S_REPEAT: rc = exec_repeat(L, s); break;
    }
    if (rc < 0) return -1;
  }
  return 0;
}

/* ---- the compile entry points -------------------------------------------------- */

/* Every define must name a top-level constant; the message lists them. */
static int check_defines(ptg_lower *L, const ptg_program *prog) {
  for (int32_t i = 0; i < L->ndefs; i++) {
    const ptc_define *d = &L->defs[i];
    bool found = false;
    for (int32_t k = 0; k < prog->nstmts && !found; k++)
      found = prog->stmts[k]->kind == PTG_S_CONST &&
              strcmp(prog->stmts[k]->names[0], d->name) == 0;
    if (found) {
      ptg_val v;
      if (define_value(L, d, &v) < 0) return -1;
      continue;
    }
    ptc_buf list;
    ptc_buf_init(&list);
    for (int32_t k = 0; k < prog->nstmts; k++) {
      if (prog->stmts[k]->kind != PTG_S_CONST) continue;
      ptc_buf_printf(&list, "%s%s", list.len ? ", " : "", prog->stmts[k]->names[0]);
    }
    if (list.len)
      ptc_error(L->ctx, define_loc(L, d, false), "'%s' is not a constant of "
                "%s; its constants are: %s", d->name, L->file, list.data);
    else
      ptc_error(L->ctx, define_loc(L, d, false), "'%s' is not a constant of "
                "%s, which defines no constants", d->name, L->file);
    ptc_buf_fini(&list);
    return -1;
  }
  return 0;
}

/* The module is named after the file: models/gpt2.ptg -> gpt2. */
static char *module_name(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t n = strlen(base);
  const char *dot = strrchr(base, '.');
  if (dot && dot != base) n = (size_t)(dot - base);
  char *s = ptc_xmalloc(n + 8);
  size_t k = 0;
  for (size_t i = 0; i < n && k < 64; i++) {
    char c = base[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '_' || c == '.';
    s[k++] = ok ? c : '_';
  }
  if (k == 0) memcpy(s + k, "model", 6), k = 5;
  s[k] = 0;
  return s;
}

static int lower_program(ptg_lower *L, const ptg_program *prog) {
  if (check_defines(L, prog) < 0) return -1;
  ptg_scope top = {0};
  L->scope = &top;
  L->mult = 1;
  int rc = exec_stmts(L, prog->stmts, prog->nstmts, true);
  L->scope = NULL;
  free(top.slots);
  if (rc < 0) return -1;
  if (!L->has_loss) {
    ptc_error(L->ctx, prog->eof_loc, "the model defines no loss: add a line "
              "`loss = ...` (the function's result)");
    return -1;
  }
  ptc_func_add_result(L->fn, ptg_type_of(L, L->loss), NULL);
  ptc_build_args a = {.code = PTC_OP_RETURN, .nin = 1, .in = &L->loss,
                      .loc = L->fn->loc};
  for (int32_t i = 0; i < prog->nstmts; i++)
    if (prog->stmts[i]->kind == PTG_S_ASSIGN)
      for (int32_t k = 0; k < prog->stmts[i]->nnames; k++)
        if (strcmp(prog->stmts[i]->names[k], "loss") == 0)
          a.loc = prog->stmts[i]->loc;
  return ptc_build(L->fn, &a) < 0 ? -1 : 0;
}

ptc_module *ptc_frontend_compile_limited(ptc_ctx *ctx, const char *name,
                                         const char *text, size_t len,
                                         const ptc_define *defines,
                                         int32_t ndefines,
                                         const ptc_frontend_limits *lim) {
  if (!name) name = "<input>";
  if (ptc_check_text(ctx, name, text, len) < 0) return NULL;
  const char *file = ptc_ctx_add_source(ctx, name, text, len);
  ptc_loc start = {file, 1, 1};
  if (len > (size_t)1 << 30) {
    ptc_error(ctx, start, "file is larger than 1 GiB");
    return NULL;
  }
  if (len == 0) {
    ptc_error(ctx, start, "empty file: a model needs at least an input, its "
              "parameters and `loss = ...`");
    return NULL;
  }
  ptc_arena arena;
  ptc_arena_init(&arena);
  ptg_program prog;
  ptc_module *m = NULL;
  if (ptg_parse(ctx, &arena, file, text, len, &prog) == 0) {
    char *mname = module_name(name);
    m = ptc_module_create(ctx, mname);
    free(mname);
    m->loc = start;
    ptg_lower L;
    memset(&L, 0, sizeof L);
    L.ctx = ctx;
    L.file = file;
    L.arena = &arena;
    L.mod = m;
    L.defs = defines;
    L.ndefs = ndefines;
    if (lim) L.lim = *lim;
    else ptc_frontend_default_limits(&L.lim);
    ptc_buf_init(&L.prefix);
    L.fn = ptc_module_add_func(m, "forward", start);
    int rc = L.fn ? lower_program(&L, &prog) : -1;
    if (rc == 0 && ptc_verify_module(m) < 0) rc = -1;
    ptc_buf_fini(&L.prefix);
    free(L.pkeys);
    free(L.pvals);
    if (rc < 0) {
      ptc_module_destroy(m);
      m = NULL;
    }
  }
  ptc_arena_fini(&arena);
  return m;
}

ptc_module *ptc_frontend_compile(ptc_ctx *ctx, const char *name,
                                 const char *text, size_t len,
                                 const ptc_define *defines, int32_t ndefines) {
  return ptc_frontend_compile_limited(ctx, name, text, len, defines, ndefines,
                                      NULL);
}
