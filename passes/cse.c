/* cse.c -- common-subexpression elimination.
 *
 * A function is one block in program order, so an earlier op always
 * dominates a later one: one forward sweep with a hash table of the pure ops
 * seen so far finds every duplicate.  Two ops are the same expression when
 * they have the same opcode, operands, attributes (ptc_attr_eq), result
 * types and result shardings.  Operands are renamed through `repl` as the
 * sweep goes, so chains of duplicates fold in the same sweep.  Ops with
 * effects (collectives, transfers, the terminator) are never merged: two
 * all_reduces of one value are two communications.
 */
#include "passes/passes.h"

#include <stdlib.h>
#include <string.h>

static bool mergeable(const ptc_op *op) {
  uint32_t fl = ptc_opinfo_get(op->code)->flags;
  return (fl & PTC_OPF_PURE) &&
         !(fl & (PTC_OPF_SIDE_EFFECT | PTC_OPF_COLLECTIVE | PTC_OPF_TERMINATOR));
}

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h;
}

static uint64_t hash_str(uint64_t h, const char *s) {
  for (; s && *s; s++) h = mix(h, (unsigned char)*s);
  return h;
}

/* Must agree with same_expr: equal ops hash equally.  Attribute values are
 * left out (ptc_attr_eq decides their equality, e.g. for floats). */
static uint64_t hash_op(const ptc_func *f, const ptc_op *op) {
  uint64_t h = mix(0, (uint64_t)op->code);
  for (int32_t k = 0; k < op->nin; k++) h = mix(h, (uint64_t)op->in[k]);
  for (int32_t a = 0; a < op->nattr; a++) {
    h = hash_str(h, op->attrs[a].name);
    h = mix(h, (uint64_t)op->attrs[a].kind);
  }
  for (int32_t r = 0; r < op->nout; r++) {
    const ptc_type *t = &f->values[op->out[r]].type;
    h = mix(h, (uint64_t)t->dtype);
    for (int32_t d = 0; d < t->rank; d++) h = mix(h, (uint64_t)t->dims[d]);
  }
  return h;
}

static bool same_expr(const ptc_func *f, const ptc_op *a, const ptc_op *b) {
  if (a->code != b->code || a->nin != b->nin || a->nout != b->nout ||
      a->nattr != b->nattr)
    return false;
  for (int32_t k = 0; k < a->nin; k++)
    if (a->in[k] != b->in[k]) return false;
  for (int32_t k = 0; k < a->nattr; k++)
    if (!ptc_attr_eq(&a->attrs[k], &b->attrs[k])) return false;
  for (int32_t r = 0; r < a->nout; r++) {
    const ptc_value *va = &f->values[a->out[r]];
    const ptc_value *vb = &f->values[b->out[r]];
    if (!ptc_type_eq(&va->type, &vb->type)) return false;
    if (va->shard.present != vb->shard.present) return false;
    if (va->shard.present && !ptc_sharding_eq(&va->shard, &vb->shard, va->type.rank))
      return false;
  }
  return true;
}

/* Merges duplicates in f; returns how many ops were removed. */
static int32_t cse_func(ptc_func *f) {
  if (f->nops == 0) return 0;
  size_t cap = 16;
  while (cap < (size_t)f->nops * 2) cap *= 2;
  int32_t *table = malloc(cap * sizeof *table); /* op index, or -1 */
  PTC_ASSERT(table != NULL);
  memset(table, 0xff, cap * sizeof *table);
  int32_t *repl = ptc_xmalloc((size_t)(f->nvalues ? f->nvalues : 1) * sizeof *repl);
  for (int32_t v = 0; v < f->nvalues; v++) repl[v] = v;
  bool *keep = ptc_xmalloc((size_t)f->nops * sizeof *keep);
  int32_t removed = 0;

  for (int32_t i = 0; i < f->nops; i++) {
    ptc_op *op = &f->ops[i];
    keep[i] = true;
    for (int32_t k = 0; k < op->nin; k++) op->in[k] = repl[op->in[k]];
    if (!mergeable(op)) continue;
    size_t mask = cap - 1;
    size_t slot = (size_t)hash_op(f, op) & mask;
    for (;;) {
      int32_t j = table[slot];
      if (j < 0) {
        table[slot] = i;
        break;
      }
      if (same_expr(f, &f->ops[j], op)) {
        for (int32_t r = 0; r < op->nout; r++) repl[op->out[r]] = f->ops[j].out[r];
        keep[i] = false;
        removed++;
        break;
      }
      slot = (slot + 1) & mask;
    }
  }
  if (removed) ptc_func_erase_ops(f, keep);
  free(keep);
  free(repl);
  free(table);
  return removed;
}

static int cse_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  (void)o;
  for (int32_t i = 0; i < m->nfuncs; i++)
    if (cse_func(m->funcs[i]) > 0) *changed = true;
  return 0;
}

const ptc_pass_info ptc_pass_cse = {
    .name = "cse",
    .summary = "merge identical pure ops (common-subexpression elimination)",
    .opts = NULL,
    .nopts = 0,
    .run = cse_run,
};
