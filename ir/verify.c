/* verify.c -- the IR verifier.  Run after parsing and (by default) after
 * every pass, so a pass that breaks an invariant is named at once instead of
 * surfacing as a wrong number three passes later.  Reports the first broken
 * invariant at the offending op's location and stops. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* A set of strings (open addressing), to keep name checks linear. */
typedef struct name_set {
  const char **slots;
  size_t n, cap;
} name_set;

static uint64_t name_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Adds s; returns false if it was already there. */
static bool name_set_add(name_set *ns, const char *s) {
  if ((ns->n + 1) * 2 > ns->cap) {
    size_t cap = ns->cap ? ns->cap * 2 : 64;
    const char **slots = ptc_xcalloc(cap, sizeof *slots);
    for (size_t i = 0; i < ns->cap; i++) {
      if (!ns->slots[i]) continue;
      size_t j = name_hash(ns->slots[i]) & (cap - 1);
      while (slots[j]) j = (j + 1) & (cap - 1);
      slots[j] = ns->slots[i];
    }
    free(ns->slots);
    ns->slots = slots;
    ns->cap = cap;
  }
  size_t j = name_hash(s) & (ns->cap - 1);
  for (; ns->slots[j]; j = (j + 1) & (ns->cap - 1))
    if (strcmp(ns->slots[j], s) == 0) return false;
  ns->slots[j] = s;
  ns->n++;
  return true;
}

static int verify_params_each(ptc_module *m, name_set *ns);

static int verify_params(ptc_module *m) {
  name_set ns = {0};
  int rc = verify_params_each(m, &ns);
  free(ns.slots);
  return rc;
}

static int verify_params_each(ptc_module *m, name_set *ns) {
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    char what[300];
    snprintf(what, sizeof what, "parameter '%s'", p->name);
    if (ptc__check_type(m->ctx, p->loc, &p->type, what) < 0) return -1;
    if (ptc__check_sharding(m, p->loc, &p->type, &p->shard, what) < 0) return -1;
    /* state that starts at zero may hold each device's share of a sum
     * (gradient accumulators); a trained parameter is one whole value */
    if (p->shard.present && p->shard.partial &&
        (p->trainable || (p->init.kind != PTC_INIT_NONE && p->init.kind != PTC_INIT_ZEROS))) {
      ptc_error(m->ctx, p->loc, "%s cannot be a partial sum%s", what,
                p->trainable ? "" : " unless it starts at zeros");
      return -1;
    }
    if (!name_set_add(ns, p->name)) {
      ptc_error(m->ctx, p->loc, "parameter '%s' is defined twice", p->name);
      return -1;
    }
    switch (p->init.kind) {
    case PTC_INIT_NONE:
    case PTC_INIT_ZEROS:
    case PTC_INIT_ONES: break;
    case PTC_INIT_SCALED:
      if (p->init.depth < 1) {
        ptc_error(m->ctx, p->loc, "%s: scaled init needs a depth of at least 1", what);
        return -1;
      }
      /* fallthrough */
    case PTC_INIT_NORMAL:
      if (!(p->init.std >= 0) || p->init.std > 1e30) {
        ptc_error(m->ctx, p->loc, "%s: init std must be a finite number >= 0", what);
        return -1;
      }
      break;
    case PTC_INIT_COPY: {
      int32_t src = p->init.from ? ptc_module_find_param(m, p->init.from) : -1;
      const ptc_type *st = src >= 0 ? &m->params[src].type : NULL;
      bool same = st && st->rank == p->type.rank && src != i;
      for (int32_t d = 0; same && d < st->rank; d++) same = st->dims[d] == p->type.dims[d];
      if (!same || m->params[src].init.kind == PTC_INIT_COPY) {
        ptc_error(m->ctx, p->loc, "%s: init copy(@%s) needs a variable of the same shape "
                  "that is not itself a copy", what, p->init.from ? p->init.from : "?");
        return -1;
      }
      break;
    }
    default:
      ptc_error(m->ctx, p->loc, "%s has an invalid init", what);
      return -1;
    }
    if (!ptc_dtype_is_float(p->type.dtype)) {
      ptc_error(m->ctx, p->loc, "%s must have a floating-point dtype", what);
      return -1;
    }
  }
  return 0;
}

static const char *value_label(ptc_func *f, int32_t id, char *buf, size_t n) {
  const ptc_value *v = &f->values[id];
  if (v->kind == PTC_VALUE_PARAM) snprintf(buf, n, "@%s", f->mod->params[v->def].name);
  else if (v->name) snprintf(buf, n, "%%%s", v->name);
  else snprintf(buf, n, "value #%d", id);
  return buf;
}

int ptc_verify_func(ptc_func *f) {
  ptc_module *m = f->mod;
  ptc_ctx *ctx = m->ctx;
  int rc = -1;
  /* defined[v]: 1 once v is available (args and param reads from the start) */
  char *defined = ptc_xcalloc((size_t)f->nvalues + 1, 1);
  char lbl[300];
  /* a partitioned module (the partition pass's output) runs op by op on
   * each device's pieces: every op must be consistent with its operands'
   * layouts (ir/shard_rules.c) */
  const ptc_attr *pa = ptc_module_get_attr(m, "partitioned");
  bool partitioned = pa && pa->kind == PTC_ATTR_BOOL && pa->u.b;

  for (int32_t i = 0; i < f->nargs; i++) {
    int32_t id = f->args[i];
    if (id < 0 || id >= f->nvalues || f->values[id].kind != PTC_VALUE_ARG ||
        f->values[id].def != i) {
      ptc_error(ctx, f->loc, "function '@%s': argument %d is malformed", f->name, i);
      goto out;
    }
    char what[300];
    snprintf(what, sizeof what, "argument %s of '@%s'", value_label(f, id, lbl, sizeof lbl),
             f->name);
    if (ptc__check_type(ctx, f->loc, &f->values[id].type, what) < 0 ||
        ptc__check_sharding(m, f->loc, &f->values[id].type, &f->values[id].shard, what) < 0)
      goto out;
    defined[id] = 1;
  }
  for (int32_t id = 0; id < f->nvalues; id++) {
    const ptc_value *v = &f->values[id];
    if (v->kind != PTC_VALUE_PARAM) continue;
    if (v->def < 0 || v->def >= m->nparams) {
      ptc_error(ctx, f->loc, "function '@%s' reads a parameter that does not exist",
                f->name);
      goto out;
    }
    if (!ptc_type_eq(&v->type, &m->params[v->def].type) ||
        !ptc_sharding_eq(&v->shard, &m->params[v->def].shard, v->type.rank)) {
      ptc_error(ctx, f->loc, "function '@%s': its read of parameter '%s' has a type "
                "or sharding other than the parameter's", f->name, m->params[v->def].name);
      goto out;
    }
    defined[id] = 1;
  }
  for (int32_t i = 0; i < f->nresults; i++) {
    char what[300];
    snprintf(what, sizeof what, "result %d of '@%s'", i, f->name);
    if (ptc__check_type(ctx, f->loc, &f->result_types[i], what) < 0 ||
        ptc__check_sharding(m, f->loc, &f->result_types[i], &f->result_shards[i], what) < 0)
      goto out;
  }
  if (f->nops == 0 || f->ops[f->nops - 1].code != PTC_OP_RETURN) {
    ptc_error(ctx, f->loc, "function '@%s' does not end with 'return'", f->name);
    goto out;
  }

  for (int32_t i = 0; i < f->nops; i++) {
    ptc_op *op = &f->ops[i];
    const ptc_opinfo *info = ptc_opinfo_get(op->code);
    if ((info->flags & PTC_OPF_TERMINATOR) && i != f->nops - 1) {
      ptc_error(ctx, op->loc, "'%s' must be the last op of '@%s'", info->name, f->name);
      goto out;
    }
    for (int32_t k = 0; k < op->nin; k++) {
      int32_t id = op->in[k];
      if (id < 0 || id >= f->nvalues) {
        ptc_error(ctx, op->loc, "'%s' operand %d refers to no value", info->name, k);
        goto out;
      }
      if (!defined[id]) {
        ptc_error(ctx, op->loc, "'%s' operand %d (%s) is used before it is defined",
                  info->name, k, value_label(f, id, lbl, sizeof lbl));
        goto out;
      }
    }
    if (op->nout != info->nout) {
      ptc_error(ctx, op->loc, "'%s' has %d results, expected %d", info->name,
                op->nout, info->nout);
      goto out;
    }
    for (int32_t r = 0; r < op->nout; r++) {
      int32_t id = op->out[r];
      if (id < 0 || id >= f->nvalues || defined[id] || f->values[id].kind != PTC_VALUE_OP ||
          f->values[id].def != i || f->values[id].res != r) {
        ptc_error(ctx, op->loc, "'%s' result %d is not a fresh value defined by it",
                  info->name, r);
        goto out;
      }
    }
    /* Re-run the op's attribute checks and shape rule against the types
     * the IR states. */
    ptc_type given[8];
    ptc_sharding given_s[8];
    for (int32_t r = 0; r < op->nout; r++) {
      given[r] = f->values[op->out[r]].type;
      given_s[r] = f->values[op->out[r]].shard;
    }
    if (ptc__check_attrs(ctx, op->loc, info, op->attrs, op->nattr) < 0) goto out;
    ptc_build_args a = {.code = op->code, .nin = op->nin, .in = op->in,
                        .nattr = op->nattr, .attrs = op->attrs,
                        .ngiven = op->nout, .given = given, .given_shard = given_s,
                        .loc = op->loc};
    ptc_type out_t[8];
    ptc_sharding out_s[8];
    if (ptc__op_check(f, &a, op->attrs, out_t, out_s) < 0) goto out;
    if (partitioned && ptc_shard_check_op(f, op) < 0) goto out;
    for (int32_t r = 0; r < op->nout; r++) defined[op->out[r]] = 1;
  }

  /* each variable is assigned at most once */
  for (int32_t i = 0; i < f->nops; i++) {
    if (f->ops[i].code != PTC_OP_ASSIGN) continue;
    for (int32_t j = 0; j < i; j++) {
      if (f->ops[j].code == PTC_OP_ASSIGN && f->ops[j].in[0] == f->ops[i].in[0]) {
        ptc_error(ctx, f->ops[i].loc, "assign: %s is assigned twice in '@%s'",
                  value_label(f, f->ops[i].in[0], lbl, sizeof lbl), f->name);
        ptc_note(ctx, f->ops[j].loc, "the first assign is here");
        goto out;
      }
    }
  }

  /* return matches the signature */
  ptc_op *ret = &f->ops[f->nops - 1];
  if (ret->nin != f->nresults) {
    ptc_error(ctx, ret->loc, "'return' gives %d value%s but '@%s' declares %d result%s",
              ret->nin, ret->nin == 1 ? "" : "s", f->name, f->nresults,
              f->nresults == 1 ? "" : "s");
    goto out;
  }
  for (int32_t i = 0; i < ret->nin; i++) {
    const ptc_value *v = &f->values[ret->in[i]];
    if (!ptc_type_eq(&v->type, &f->result_types[i]) ||
        (f->result_shards[i].present &&
         !ptc_sharding_eq(&v->shard, &f->result_shards[i], v->type.rank))) {
      ptc_buf a, b;
      ptc_buf_init(&a);
      ptc_buf_init(&b);
      ptc_type_print(&a, &v->type);
      if (v->shard.present) ptc_buf_puts(&a, " ");
      ptc_sharding_print(&a, &v->shard, v->type.rank, &m->mesh);
      ptc_type_print(&b, &f->result_types[i]);
      if (f->result_shards[i].present) ptc_buf_puts(&b, " ");
      ptc_sharding_print(&b, &f->result_shards[i], v->type.rank, &m->mesh);
      ptc_error(ctx, ret->loc, "'return' operand %d is %s but '@%s' declares %s", i,
                a.data, f->name, b.data);
      ptc_buf_fini(&a);
      ptc_buf_fini(&b);
      goto out;
    }
  }

  /* value names are unique within the function */
  {
    name_set ns = {0};
    for (int32_t i = 0; i < f->nvalues; i++) {
      const char *n = f->values[i].name;
      if (!n || f->values[i].kind == PTC_VALUE_PARAM) continue;
      if (!name_set_add(&ns, n)) {
        ptc_error(ctx, f->loc, "function '@%s' has two values named %%%s", f->name, n);
        free(ns.slots);
        goto out;
      }
    }
    free(ns.slots);
  }
  /* fused groups (group.c): contiguous, unique, each a valid kernel */
  if (partitioned && ptc_mesh_size(&m->mesh) > 1) {
    /* kernels run on each rank's pieces: check groups on those shapes */
    ptc_module *lm = ptc_module_localize(m);
    int32_t k = 0;
    while (k < lm->nfuncs && strcmp(lm->funcs[k]->name, f->name) != 0) k++;
    int grc = k < lm->nfuncs ? ptc_group_verify(lm->funcs[k]) : 0;
    ptc_module_destroy(lm);
    if (grc < 0) goto out;
  } else if (ptc_group_verify(f) < 0) {
    goto out;
  }
  rc = 0;
out:
  free(defined);
  return rc;
}

int ptc_verify_module(ptc_module *m) {
  if (ptc_mesh_size(&m->mesh) < 1) {
    ptc_error(m->ctx, m->loc, "module '@%s' has an empty mesh", m->name);
    return -1;
  }
  if (verify_params(m) < 0) return -1;
  for (int32_t i = 0; i < m->nfuncs; i++)
    if (ptc_verify_func(m->funcs[i]) < 0) return -1;
  return 0;
}
