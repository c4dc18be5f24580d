/* func.c -- functions: arguments, results, parameter reads, and the op
 * builder.  Every op enters the IR through ptc_build_at, which checks arity
 * and attributes against the op table and runs the op's shape rule, so no
 * pass or parser can create an op the verifier would reject. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int32_t new_value(ptc_func *f, const ptc_type *t, const ptc_sharding *s,
                         ptc_value_kind kind, int32_t def, int32_t res) {
  if (f->nvalues == f->cap_values) {
    f->cap_values = f->cap_values ? 2 * f->cap_values : 64;
    f->values = ptc_xrealloc(f->values, (size_t)f->cap_values * sizeof *f->values);
  }
  ptc_value *v = &f->values[f->nvalues];
  memset(v, 0, sizeof *v);
  v->type = *t;
  if (s) v->shard = *s;
  v->kind = kind;
  v->def = def;
  v->res = res;
  return f->nvalues++;
}

int32_t ptc_func_add_arg(ptc_func *f, const char *name, const ptc_type *type,
                         const ptc_sharding *shard) {
  int32_t id = new_value(f, type, shard, PTC_VALUE_ARG, f->nargs, 0);
  if (name) f->values[id].name = ptc_arena_strdup(&f->mod->arena, name);
  f->args = ptc_xrealloc(f->args, (size_t)(f->nargs + 1) * sizeof *f->args);
  f->args[f->nargs++] = id;
  return id;
}

void ptc_func_add_result(ptc_func *f, const ptc_type *type,
                         const ptc_sharding *shard) {
  size_t n = (size_t)f->nresults + 1;
  f->result_types = ptc_xrealloc(f->result_types, n * sizeof *f->result_types);
  f->result_shards = ptc_xrealloc(f->result_shards, n * sizeof *f->result_shards);
  f->result_types[f->nresults] = *type;
  if (shard) f->result_shards[f->nresults] = *shard;
  else memset(&f->result_shards[f->nresults], 0, sizeof(ptc_sharding));
  f->nresults++;
}

int32_t ptc_func_param_value(ptc_func *f, int32_t p) {
  ptc_module *m = f->mod;
  PTC_ASSERT(p >= 0 && p < m->nparams);
  if (p >= f->cap_param_value) {
    int32_t cap = f->cap_param_value ? f->cap_param_value : 64;
    while (cap <= p) cap *= 2;
    f->param_value = ptc_xrealloc(f->param_value, (size_t)cap * sizeof(int32_t));
    for (int32_t i = f->cap_param_value; i < cap; i++) f->param_value[i] = -1;
    f->cap_param_value = cap;
  }
  if (f->param_value[p] < 0)
    f->param_value[p] = new_value(f, &m->params[p].type, &m->params[p].shard,
                                  PTC_VALUE_PARAM, p, 0);
  return f->param_value[p];
}

/* ---- checks shared with the verifier ------------------------------------ */

/* The common case of ptc__check_type, without formatting a message. */
static bool type_fast_ok(const ptc_type *t) {
  if ((unsigned)t->dtype >= PTC_DTYPE_COUNT || t->rank < 0 || t->rank > PTC_MAX_RANK)
    return false;
  int64_t n = 1;
  for (int32_t i = 0; i < t->rank; i++)
    if (t->dims[i] < 0 || !ptc_mul_ovf(n, t->dims[i], &n) || n > PTC_MAX_ELEMENTS)
      return false;
  return true;
}

int ptc__check_type(ptc_ctx *ctx, ptc_loc loc, const ptc_type *t,
                    const char *what) {
  if ((unsigned)t->dtype >= PTC_DTYPE_COUNT) {
    ptc_error(ctx, loc, "%s has an invalid dtype", what);
    return -1;
  }
  if (t->rank < 0 || t->rank > PTC_MAX_RANK) {
    ptc_error(ctx, loc, "%s has rank %d; ranks up to %d are supported", what,
              t->rank, PTC_MAX_RANK);
    return -1;
  }
  int64_t n = 1;
  for (int32_t i = 0; i < t->rank; i++) {
    if (t->dims[i] < 0) {
      ptc_error(ctx, loc, "%s has negative dimension %lld", what,
                (long long)t->dims[i]);
      return -1;
    }
    if (!ptc_mul_ovf(n, t->dims[i], &n) || n > PTC_MAX_ELEMENTS) {
      ptc_buf b;
      ptc_buf_init(&b);
      ptc_type_print(&b, t);
      ptc_error(ctx, loc, "%s: %s has more than 2^50 elements; is a size "
                "wrong?", what, b.data);
      ptc_buf_fini(&b);
      return -1;
    }
  }
  return 0;
}

int ptc__check_sharding(const ptc_module *m, ptc_loc loc, const ptc_type *t,
                        const ptc_sharding *s, const char *what) {
  if (!s->present) return 0;
  uint8_t valid = (uint8_t)((1u << m->mesh.naxes) - 1);
  uint8_t used = s->partial;
  if (m->mesh.naxes == 0) {
    ptc_error(m->ctx, loc, "%s has a sharding but the module has no mesh; "
              "give one with --mesh", what);
    return -1;
  }
  if (s->partial & ~valid) {
    ptc_error(m->ctx, loc, "%s is partial over an axis the mesh does not have", what);
    return -1;
  }
  for (int32_t d = 0; d < t->rank; d++) {
    uint8_t ax = s->dim_axes[d];
    if (!ax) continue;
    if (ax & ~valid) {
      ptc_error(m->ctx, loc, "%s splits dimension %d over an axis the mesh "
                "does not have", what, d);
      return -1;
    }
    if (ax & used) {
      ptc_error(m->ctx, loc, "%s uses a mesh axis twice (each axis may split "
                "one dimension, or hold a partial sum)", what);
      return -1;
    }
    used |= ax;
    int64_t ways = 1;
    for (int i = 0; i < m->mesh.naxes; i++)
      if (ax & (1u << i)) ways *= m->mesh.axes[i].size;
    if (t->dims[d] % ways != 0) {
      ptc_error(m->ctx, loc, "%s: dimension %d of size %lld does not divide "
                "evenly over %lld devices of its mesh axes", what, d,
                (long long)t->dims[d], (long long)ways);
      return -1;
    }
  }
  for (int32_t d = t->rank; d < PTC_MAX_RANK; d++) {
    if (s->dim_axes[d]) {
      ptc_error(m->ctx, loc, "%s has a sharding of rank greater than its type's %d",
                what, t->rank);
      return -1;
    }
  }
  return 0;
}

/* ---- attributes against the schema ------------------------------------- */

static char schema_kind_char(ptc_attr_kind k) {
  switch (k) {
  case PTC_ATTR_INT: return 'i';
  case PTC_ATTR_FLOAT: return 'f';
  case PTC_ATTR_BOOL: return 'b';
  case PTC_ATTR_STR: return 's';
  case PTC_ATTR_SYM: return 'y';
  case PTC_ATTR_INTS: return 'I';
  case PTC_ATTR_DTYPE: return 'd';
  }
  return '?';
}

static const char *kind_words(char k) {
  switch (k) {
  case 'i': return "an integer";
  case 'f': return "a number";
  case 'b': return "true or false";
  case 's': return "a string";
  case 'y': return "a name";
  case 'I': return "a list of integers";
  case 'd': return "a dtype";
  }
  return "?";
}

/* Finds `name` in a schema "a:i b:f? ..."; returns its kind char and sets
 * *optional, or 0 when absent. */
static char schema_lookup(const char *schema, const char *name, bool *optional) {
  size_t n = strlen(name);
  for (const char *p = schema; *p;) {
    while (*p == ' ') p++;
    const char *colon = strchr(p, ':');
    if (!colon) break;
    const char *end = colon + 1;
    while (*end && *end != ' ') end++;
    if ((size_t)(colon - p) == n && memcmp(p, name, n) == 0) {
      *optional = end[-1] == '?';
      return colon[1];
    }
    p = end;
  }
  return 0;
}

char ptc__generic_attr_kind(const char *name, size_t n) {
  /* group = N: set by the fuse pass on any op (ir/group.c) */
  if (n == strlen(PTC_GROUP_ATTR) && memcmp(name, PTC_GROUP_ATTR, n) == 0) return 'i';
  /* recompute = true: a copy of a forward op made by the recompute pass */
  if (n == strlen("recompute") && memcmp(name, "recompute", n) == 0) return 'b';
  return 0;
}

int ptc__check_attrs(ptc_ctx *ctx, ptc_loc loc, const ptc_opinfo *info,
                       ptc_attr *attrs, int32_t nattr) {
  for (int32_t i = 0; i < nattr; i++) {
    bool opt;
    char k = schema_lookup(info->attrs, attrs[i].name, &opt);
    if (!k) k = ptc__generic_attr_kind(attrs[i].name, strlen(attrs[i].name));
    if (!k) {
      if (!info->attrs[0])
        ptc_error(ctx, loc, "op '%s' takes no attributes, got '%s'", info->name,
                  attrs[i].name);
      else
        ptc_error(ctx, loc, "op '%s' has no attribute '%s' (it takes: %s)",
                  info->name, attrs[i].name, info->attrs);
      return -1;
    }
    char have = schema_kind_char(attrs[i].kind);
    if (k == 'f' && have == 'i') { /* 1 means 1.0 where a number is expected */
      double v = (double)attrs[i].u.i;
      attrs[i].kind = PTC_ATTR_FLOAT;
      attrs[i].u.f = v;
      have = 'f';
    }
    if (k != have) {
      ptc_error(ctx, loc, "attribute '%s' of op '%s' must be %s", attrs[i].name,
                info->name, kind_words(k));
      return -1;
    }
  }
  /* every required attribute present */
  for (const char *p = info->attrs; *p;) {
    while (*p == ' ') p++;
    const char *colon = strchr(p, ':');
    if (!colon) break;
    const char *end = colon + 1;
    while (*end && *end != ' ') end++;
    if (end[-1] != '?') {
      bool found = false;
      for (int32_t i = 0; i < nattr && !found; i++)
        found = strlen(attrs[i].name) == (size_t)(colon - p) &&
                memcmp(attrs[i].name, p, (size_t)(colon - p)) == 0;
      if (!found) {
        ptc_error(ctx, loc, "op '%s' requires attribute '%.*s' (%s)", info->name,
                  (int)(colon - p), p, kind_words(colon[1]));
        return -1;
      }
    }
    p = end;
  }
  return 0;
}

/* ---- the builder -------------------------------------------------------- */

void ptc_func_reindex(ptc_func *f) {
  for (int32_t i = 0; i < f->nops; i++) {
    ptc_op *op = &f->ops[i];
    for (int32_t r = 0; r < op->nout; r++) {
      ptc_value *v = &f->values[op->out[r]];
      v->kind = PTC_VALUE_OP;
      v->def = i;
      v->res = r;
    }
  }
}

/* Runs the shape rule of the op `a` describes (attributes already sorted
 * and schema-checked in `attrs`), checks given result types and shardings
 * against it, and writes the result types and shardings (at most 8). */
int ptc__op_check(ptc_func *f, const ptc_build_args *a, const ptc_attr *attrs,
                  ptc_type *out_t, ptc_sharding *out_s) {
  ptc_module *m = f->mod;
  ptc_ctx *ctx = m->ctx;
  const ptc_opinfo *info = ptc_opinfo_get(a->code);
  ptc_type in_t_small[8];
  ptc_sharding in_s_small[8];
  ptc_type *in_t = in_t_small;
  ptc_sharding *in_s = in_s_small;
  if (a->nin > 8) {
    in_t = ptc_xmalloc((size_t)a->nin * sizeof *in_t);
    in_s = ptc_xmalloc((size_t)a->nin * sizeof *in_s);
  }
  PTC_ASSERT(info->nout <= 8);
  for (int32_t i = 0; i < a->nin; i++) {
    in_t[i] = f->values[a->in[i]].type;
    in_s[i] = f->values[a->in[i]].shard;
  }
  if (a->code == PTC_OP_ASSIGN && f->values[a->in[0]].kind != PTC_VALUE_PARAM) {
    ptc_error(ctx, a->loc, "assign: operand 0 must be a variable (@name)");
    if (in_t != in_t_small) {
      free(in_t);
      free(in_s);
    }
    return -1;
  }
  memset(out_t, 0, 8 * sizeof *out_t);
  memset(out_s, 0, 8 * sizeof *out_s);
  int rc = 0;
  for (int32_t r = 0; r < info->nout && a->given; r++) {
    const ptc_sharding *gs = a->given_shard ? &a->given_shard[r] : NULL;
    if (!type_fast_ok(&a->given[r]) || (gs && gs->present)) {
      char what[64]; /* formatted only off the fast path */
      snprintf(what, sizeof what, "result %d of '%s'", r, info->name);
      if (ptc__check_type(ctx, a->loc, &a->given[r], what) < 0 ||
          (gs && ptc__check_sharding(m, a->loc, &a->given[r], gs, what) < 0)) {
        rc = -1;
        break;
      }
    }
    if (info->flags & PTC_OPF_TYPE_GIVEN) out_t[r] = a->given[r];
    if (a->given_shard) out_s[r] = a->given_shard[r];
  }
  if (rc == 0) {
    ptc_infer inf = {
        .ctx = ctx, .mod = m, .code = a->code, .loc = a->loc,
        .nin = a->nin, .in = in_t, .in_shard = in_s,
        .nattr = a->nattr, .attrs = attrs,
        .nout = info->nout, .out = out_t, .out_shard = out_s,
    };
    rc = ptc_op_infer(&inf);
  }
  if (rc == 0 && a->given && !(info->flags & PTC_OPF_TYPE_GIVEN)) {
    for (int32_t r = 0; r < info->nout; r++) {
      if (ptc_type_eq(&out_t[r], &a->given[r])) continue;
      ptc_buf g, w;
      ptc_buf_init(&g);
      ptc_buf_init(&w);
      ptc_type_print(&g, &a->given[r]);
      ptc_type_print(&w, &out_t[r]);
      ptc_error(ctx, a->loc, "'%s' result type %s does not match %s, the type "
                "its operands give", info->name, g.data, w.data);
      ptc_buf_fini(&g);
      ptc_buf_fini(&w);
      rc = -1;
      break;
    }
  }
  for (int32_t r = 0; rc == 0 && r < info->nout; r++) {
    if (type_fast_ok(&out_t[r]) && !out_s[r].present) continue;
    char what[64];
    snprintf(what, sizeof what, "result %d of '%s'", r, info->name);
    if (ptc__check_type(ctx, a->loc, &out_t[r], what) < 0 ||
        ptc__check_sharding(m, a->loc, &out_t[r], &out_s[r], what) < 0)
      rc = -1;
  }
  if (in_t != in_t_small) {
    free(in_t);
    free(in_s);
  }
  return rc;
}

int32_t ptc_build_at(ptc_func *f, int32_t pos, const ptc_build_args *a) {
  ptc_module *m = f->mod;
  ptc_ctx *ctx = m->ctx;
  PTC_ASSERT((unsigned)a->code < PTC_OP_COUNT);
  PTC_ASSERT(pos >= 0 && pos <= f->nops);
  const ptc_opinfo *info = ptc_opinfo_get(a->code);

  if (a->nin < info->min_in || (info->max_in >= 0 && a->nin > info->max_in)) {
    if (info->min_in == info->max_in)
      ptc_error(ctx, a->loc, "op '%s' takes %d operand%s, got %d", info->name,
                info->min_in, info->min_in == 1 ? "" : "s", a->nin);
    else if (info->max_in < 0)
      ptc_error(ctx, a->loc, "op '%s' takes at least %d operand%s, got %d",
                info->name, info->min_in, info->min_in == 1 ? "" : "s", a->nin);
    else
      ptc_error(ctx, a->loc, "op '%s' takes %d to %d operands, got %d",
                info->name, info->min_in, info->max_in, a->nin);
    return -1;
  }
  for (int32_t i = 0; i < a->nin; i++)
    PTC_ASSERT(a->in[i] >= 0 && a->in[i] < f->nvalues);

  if (a->given && a->ngiven != info->nout) {
    ptc_error(ctx, a->loc, "op '%s' has %d result%s, but %d type%s given",
              info->name, info->nout, info->nout == 1 ? "" : "s", a->ngiven,
              a->ngiven == 1 ? " is" : "s are");
    return -1;
  }
  if ((info->flags & PTC_OPF_TYPE_GIVEN) && !a->given) {
    ptc_error(ctx, a->loc, "op '%s' needs its result type written out", info->name);
    return -1;
  }

  /* Attributes: copied into the module arena (wasted on failure, which
   * ends compilation anyway), sorted, checked. */
  ptc_attr *attrs = NULL;
  int32_t dup = -1;
  if (ptc__attrs_copy_sorted(&m->arena, a->attrs, a->nattr, &attrs, &dup) < 0) {
    ptc_error(ctx, a->loc, "attribute '%s' is given twice", a->attrs[dup].name);
    return -1;
  }
  if (ptc__check_attrs(ctx, a->loc, info, attrs, a->nattr) < 0) return -1;

  ptc_type out_t[8];
  ptc_sharding out_s[8];
  if (ptc__op_check(f, a, attrs, out_t, out_s) < 0) return -1;

  /* Commit: results, then the op. */
  ptc_op op;
  memset(&op, 0, sizeof op);
  op.code = a->code;
  op.nin = a->nin;
  op.nout = info->nout;
  op.in = ptc_arena_alloc(&m->arena, (size_t)a->nin * sizeof(int32_t) + 1);
  if (a->nin) memcpy(op.in, a->in, (size_t)a->nin * sizeof(int32_t));
  op.out = ptc_arena_alloc(&m->arena, (size_t)info->nout * sizeof(int32_t) + 1);
  for (int32_t r = 0; r < info->nout; r++)
    op.out[r] = new_value(f, &out_t[r], &out_s[r], PTC_VALUE_OP, pos, r);
  op.nattr = a->nattr;
  op.attrs = attrs;
  op.loc = a->loc;
  if (f->nops == f->cap_ops) {
    f->cap_ops = f->cap_ops ? 2 * f->cap_ops : 64;
    f->ops = ptc_xrealloc(f->ops, (size_t)f->cap_ops * sizeof *f->ops);
  }
  memmove(&f->ops[pos + 1], &f->ops[pos], (size_t)(f->nops - pos) * sizeof *f->ops);
  f->ops[pos] = op;
  f->nops++;
  if (pos != f->nops - 1) ptc_func_reindex(f);
  return pos;
}

int32_t ptc_build(ptc_func *f, const ptc_build_args *a) {
  return ptc_build_at(f, f->nops, a);
}

int32_t ptc_build1(ptc_func *f, ptc_opcode code, const int32_t *in,
                   int32_t nin, const ptc_attr *attrs, int32_t nattr,
                   ptc_loc loc) {
  ptc_build_args a = {.code = code, .nin = nin, .in = in, .nattr = nattr,
                      .attrs = attrs, .loc = loc};
  int32_t idx = ptc_build(f, &a);
  if (idx < 0) return -1;
  PTC_ASSERT(f->ops[idx].nout == 1);
  return f->ops[idx].out[0];
}

void ptc_func_replace_uses(ptc_func *f, int32_t from, int32_t to, int32_t start) {
  for (int32_t i = start < 0 ? 0 : start; i < f->nops; i++) {
    ptc_op *op = &f->ops[i];
    for (int32_t k = 0; k < op->nin; k++)
      if (op->in[k] == from) op->in[k] = to;
  }
}

void ptc_func_erase_ops(ptc_func *f, const bool *keep) {
  int32_t n = 0;
  for (int32_t i = 0; i < f->nops; i++)
    if (keep[i]) f->ops[n++] = f->ops[i];
  f->nops = n;
  ptc_func_reindex(f);
}

/* ---- attribute helpers -------------------------------------------------- */

const ptc_attr *ptc_op_attr(const ptc_op *op, const char *name) {
  for (int32_t i = 0; i < op->nattr; i++)
    if (strcmp(op->attrs[i].name, name) == 0) return &op->attrs[i];
  return NULL;
}

int64_t ptc_op_attr_int(const ptc_op *op, const char *name, int64_t dflt) {
  const ptc_attr *a = ptc_op_attr(op, name);
  return a && a->kind == PTC_ATTR_INT ? a->u.i : dflt;
}

double ptc_op_attr_float(const ptc_op *op, const char *name, double dflt) {
  const ptc_attr *a = ptc_op_attr(op, name);
  if (!a) return dflt;
  if (a->kind == PTC_ATTR_FLOAT) return a->u.f;
  if (a->kind == PTC_ATTR_INT) return (double)a->u.i;
  return dflt;
}

bool ptc_op_attr_bool(const ptc_op *op, const char *name, bool dflt) {
  const ptc_attr *a = ptc_op_attr(op, name);
  return a && a->kind == PTC_ATTR_BOOL ? a->u.b : dflt;
}

ptc_attr ptc_attr_int(const char *name, int64_t v) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_INT};
  a.u.i = v;
  return a;
}
ptc_attr ptc_attr_float(const char *name, double v) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_FLOAT};
  a.u.f = v;
  return a;
}
ptc_attr ptc_attr_bool(const char *name, bool v) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_BOOL};
  a.u.b = v;
  return a;
}
ptc_attr ptc_attr_sym(const char *name, const char *s) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_SYM};
  a.u.s = s;
  return a;
}
ptc_attr ptc_attr_str(const char *name, const char *s) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_STR};
  a.u.s = s;
  return a;
}
ptc_attr ptc_attr_ints(const char *name, const int64_t *v, int32_t n) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_INTS};
  a.u.ints.n = n;
  a.u.ints.v = (int64_t *)v;
  return a;
}
ptc_attr ptc_attr_dtype(const char *name, ptc_dtype t) {
  ptc_attr a = {.name = name, .kind = PTC_ATTR_DTYPE};
  a.u.dtype = t;
  return a;
}

bool ptc_attr_eq(const ptc_attr *a, const ptc_attr *b) {
  if (strcmp(a->name, b->name) != 0 || a->kind != b->kind) return false;
  switch (a->kind) {
  case PTC_ATTR_INT: return a->u.i == b->u.i;
  case PTC_ATTR_FLOAT: /* bitwise, so nan == nan and -0 != 0 */
    return memcmp(&a->u.f, &b->u.f, sizeof(double)) == 0;
  case PTC_ATTR_BOOL: return a->u.b == b->u.b;
  case PTC_ATTR_STR:
  case PTC_ATTR_SYM: return strcmp(a->u.s, b->u.s) == 0;
  case PTC_ATTR_INTS:
    return a->u.ints.n == b->u.ints.n &&
           (a->u.ints.n == 0 ||
            memcmp(a->u.ints.v, b->u.ints.v, (size_t)a->u.ints.n * sizeof(int64_t)) == 0);
  case PTC_ATTR_DTYPE: return a->u.dtype == b->u.dtype;
  }
  return false;
}
