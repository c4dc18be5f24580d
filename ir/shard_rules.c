/* shard_rules.c -- how each op may be split: its dimension factors.
 *
 * An op's loop nest has one index per *factor*; a factor names one
 * dimension (or none) of each operand and each result.  Splitting a factor
 * over a mesh axis splits all of those dimensions the same way and lets
 * every device run the op on its pieces:
 *   - a factor every result has (a batch or feature index) just splits the
 *     results;
 *   - a factor some result lacks (matmul's contracting index, the rows a
 *     reduce_sum or cross_entropy sums over, the ids of embedding_grad)
 *     leaves those results as partial sums over the axis;
 *   - a factor only results have (broadcast_to's new dims, embedding_grad's
 *     table rows, constant) means each device computes its piece from whole
 *     operands;
 *   - a `whole` factor (the softmax axis, a norm's feature dim, attention's
 *     sequence and head dims, a slice's axis) must not be split.
 * This is the factor view of GSPMD / Shardy's sharding rules; one table of
 * rules serves propagation, partitioning and the check of a partitioned op.
 */
#include <string.h>

#include "ir.h"

static void add_factor(ptc_shard_rule *r, bool whole) {
  PTC_ASSERT(r->nf < PTC_SR_MAX_FACTORS);
  memset(r->dim[r->nf], -1, sizeof r->dim[r->nf]);
  r->whole[r->nf] = whole;
  r->internal[r->nf] = false;
  r->nf++;
}

static const ptc_type *vt(const ptc_func *f, int32_t v) { return &f->values[v].type; }

/* One factor per dim of result `res`, operands aligned from the right
 * (NumPy broadcasting): an operand dim of the same size maps, a broadcast
 * one (size 1) does not. */
static void rule_broadcasting(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r,
                              int32_t res) {
  const ptc_type *o = vt(f, op->out[res]);
  for (int32_t d = 0; d < o->rank; d++) {
    add_factor(r, false);
    for (int32_t j = 0; j < op->nout; j++) {
      const ptc_type *t = vt(f, op->out[j]);
      int32_t a = d - (o->rank - t->rank);
      if (a >= 0 && t->dims[a] == o->dims[d]) r->dim[r->nf - 1][op->nin + j] = (int8_t)a;
    }
    for (int32_t i = 0; i < op->nin; i++) {
      const ptc_type *t = vt(f, op->in[i]);
      int32_t a = d - (o->rank - t->rank);
      if (a >= 0 && t->dims[a] == o->dims[d] && o->dims[d] != 1)
        r->dim[r->nf - 1][i] = (int8_t)a;
    }
  }
}

/* Operand i and result `res` share every dim, in order. */
static void rule_same(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r, int32_t i,
                      int32_t res, int32_t whole_dim) {
  const ptc_type *t = vt(f, op->in[i]);
  for (int32_t d = 0; d < t->rank; d++) {
    add_factor(r, d == whole_dim);
    r->dim[r->nf - 1][i] = (int8_t)d;
    if (res >= 0) r->dim[r->nf - 1][op->nin + res] = (int8_t)d;
  }
}

static int32_t norm_axis(int64_t a, int32_t rank) { return (int32_t)(a < 0 ? a + rank : a); }

/* reshape: dims group where running products meet; within a group the
 * first dim of size > 1 on each side carries the split (a contiguous block
 * of the merged dim is a block of its leading dim), the rest stay whole. */
static void rule_reshape(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r) {
  const ptc_type *a = vt(f, op->in[0]), *b = vt(f, op->out[0]);
  int32_t i = 0, j = 0;
  while (i < a->rank || j < b->rank) {
    int32_t i0 = i, j0 = j;
    int64_t pa = 1, pb = 1;
    if (i < a->rank) pa = a->dims[i++];
    if (j < b->rank) pb = b->dims[j++];
    while (pa != pb) {
      if (pa < pb && i < a->rank) pa *= a->dims[i++];
      else if (pb < pa && j < b->rank) pb *= b->dims[j++];
      else break;
    }
    /* size-1 dims that follow join this group */
    if (pa == pb) {
      while (i < a->rank && a->dims[i] == 1) i++;
      while (j < b->rank && b->dims[j] == 1) j++;
    }
    int32_t la = -1, lb = -1;
    for (int32_t k = i0; k < i && la < 0; k++)
      if (a->dims[k] > 1) la = k;
    for (int32_t k = j0; k < j && lb < 0; k++)
      if (b->dims[k] > 1) lb = k;
    if (la >= 0 && lb >= 0) {
      add_factor(r, false);
      r->dim[r->nf - 1][0] = (int8_t)la;
      r->dim[r->nf - 1][1] = (int8_t)lb;
    }
    for (int32_t k = i0; k < i; k++)
      if (k != la) {
        add_factor(r, true);
        r->dim[r->nf - 1][0] = (int8_t)k;
      }
    for (int32_t k = j0; k < j; k++)
      if (k != lb) {
        add_factor(r, true);
        r->dim[r->nf - 1][1] = (int8_t)k;
      }
  }
}

static void rule_matmul(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r) {
  const ptc_type *a = vt(f, op->in[0]), *b = vt(f, op->in[1]), *o = vt(f, op->out[0]);
  bool ta = ptc_op_attr_bool(op, "transpose_a", false);
  bool tb = ptc_op_attr_bool(op, "transpose_b", false);
  int32_t nb = o->rank - 2;
  for (int32_t d = 0; d < nb; d++) { /* batch dims, broadcast from the right */
    add_factor(r, false);
    r->dim[r->nf - 1][2] = (int8_t)d;
    int32_t x = d - (nb - (a->rank - 2)), y = d - (nb - (b->rank - 2));
    if (x >= 0 && a->dims[x] == o->dims[d] && o->dims[d] != 1) r->dim[r->nf - 1][0] = (int8_t)x;
    if (y >= 0 && b->dims[y] == o->dims[d] && o->dims[d] != 1) r->dim[r->nf - 1][1] = (int8_t)y;
  }
  add_factor(r, false); /* M */
  r->dim[r->nf - 1][0] = (int8_t)(a->rank - (ta ? 1 : 2));
  r->dim[r->nf - 1][2] = (int8_t)(o->rank - 2);
  add_factor(r, false); /* N */
  r->dim[r->nf - 1][1] = (int8_t)(b->rank - (tb ? 2 : 1));
  r->dim[r->nf - 1][2] = (int8_t)(o->rank - 1);
  add_factor(r, false); /* K: contracted */
  r->dim[r->nf - 1][0] = (int8_t)(a->rank - (ta ? 2 : 1));
  r->dim[r->nf - 1][1] = (int8_t)(b->rank - (tb ? 1 : 2));
}

/* attention(q [B,T,H,D], k [B,S,G,D], v [B,S,G,E]) -> o [B,T,H,E], and its
 * gradient (g first; results dq, dk, dv).  Batch and heads split (a block
 * of query heads keeps its block of key/value heads); the rest is whole. */
static void rule_attention(const ptc_op *op, ptc_shard_rule *r, int at) {
  bool grad = op->code == PTC_OP_ATTENTION_GRAD;
  int q = at, k = at + 1, v = at + 2;
  int nin = op->nin;
  add_factor(r, false); /* B */
  int8_t *B = r->dim[r->nf - 1];
  add_factor(r, false); /* H */
  int8_t *H = r->dim[r->nf - 1];
  for (int i = 0; i < op->nin; i++) B[i] = 0, H[i] = 2;
  for (int j = 0; j < op->nout; j++) B[nin + j] = 0, H[nin + j] = 2;
  add_factor(r, true); /* T */
  r->dim[r->nf - 1][q] = 1;
  if (grad) r->dim[r->nf - 1][0] = 1, r->dim[r->nf - 1][nin] = 1;
  else r->dim[r->nf - 1][nin] = 1;
  add_factor(r, true); /* S */
  r->dim[r->nf - 1][k] = 1, r->dim[r->nf - 1][v] = 1;
  if (grad) r->dim[r->nf - 1][nin + 1] = 1, r->dim[r->nf - 1][nin + 2] = 1;
  add_factor(r, true); /* D */
  r->dim[r->nf - 1][q] = 3, r->dim[r->nf - 1][k] = 3;
  if (grad) r->dim[r->nf - 1][nin] = 3, r->dim[r->nf - 1][nin + 1] = 3;
  add_factor(r, true); /* E */
  r->dim[r->nf - 1][v] = 3;
  if (grad) r->dim[r->nf - 1][0] = 3, r->dim[r->nf - 1][nin + 2] = 3;
  else r->dim[r->nf - 1][nin] = 3;
}

bool ptc_shard_rule_get(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r) {
  memset(r, 0, sizeof *r);
  if (op->nin + op->nout > PTC_SR_MAX_IO) return false;
  const ptc_opinfo *info = ptc_opinfo_get(op->code);
  if (info->flags & PTC_OPF_ELEMENTWISE) {
    rule_broadcasting(f, op, r, 0);
    return true;
  }
  switch (op->code) {
  case PTC_OP_CONSTANT:
  case PTC_OP_BROADCAST_TO:
    rule_broadcasting(f, op, r, 0);
    return true;
  case PTC_OP_ADAMW:
  case PTC_OP_SGD:
    rule_broadcasting(f, op, r, 0);
    return true;
  case PTC_OP_RESHAPE:
    rule_reshape(f, op, r);
    return true;
  case PTC_OP_TRANSPOSE: {
    const ptc_attr *p = ptc_op_attr(op, "perm");
    const ptc_type *o = vt(f, op->out[0]);
    for (int32_t d = 0; d < o->rank; d++) {
      add_factor(r, false);
      r->dim[r->nf - 1][0] = (int8_t)p->u.ints.v[d];
      r->dim[r->nf - 1][1] = (int8_t)d;
    }
    return true;
  }
  case PTC_OP_SLICE:
  case PTC_OP_PAD:
  case PTC_OP_SOFTMAX:
    rule_same(f, op, r, 0, 0,
              norm_axis(ptc_op_attr_int(op, "axis", 0), vt(f, op->in[0])->rank));
    return true;
  case PTC_OP_SOFTMAX_GRAD: {
    int32_t ax = norm_axis(ptc_op_attr_int(op, "axis", 0), vt(f, op->in[0])->rank);
    rule_same(f, op, r, 0, 0, ax);
    for (int32_t d = 0; d < r->nf; d++) r->dim[d][1] = (int8_t)d;
    return true;
  }
  case PTC_OP_CONCAT: {
    int32_t ax = norm_axis(ptc_op_attr_int(op, "axis", 0), vt(f, op->out[0])->rank);
    const ptc_type *o = vt(f, op->out[0]);
    for (int32_t d = 0; d < o->rank; d++) {
      add_factor(r, d == ax);
      for (int32_t i = 0; i < op->nin; i++) r->dim[d][i] = (int8_t)d;
      r->dim[d][op->nin] = (int8_t)d;
    }
    return true;
  }
  case PTC_OP_REDUCE_SUM:
  case PTC_OP_REDUCE_MEAN:
  case PTC_OP_REDUCE_MAX: {
    const ptc_type *t = vt(f, op->in[0]);
    const ptc_attr *ax = ptc_op_attr(op, "axes");
    bool keep = ptc_op_attr_bool(op, "keepdim", false);
    int32_t od = 0;
    for (int32_t d = 0; d < t->rank; d++) {
      bool red = false;
      for (int32_t k = 0; k < ax->u.ints.n; k++)
        red |= norm_axis(ax->u.ints.v[k], t->rank) == d;
      add_factor(r, red && op->code == PTC_OP_REDUCE_MAX);
      r->dim[d][0] = (int8_t)d;
      if (!red) r->dim[d][1] = (int8_t)od;
      if (!red || keep) od++;
    }
    return true;
  }
  case PTC_OP_MATMUL:
    rule_matmul(f, op, r);
    return true;
  case PTC_OP_EMBEDDING: { /* ids [...], table [V, D] -> [..., D] */
    const ptc_type *ids = vt(f, op->in[0]);
    for (int32_t d = 0; d < ids->rank; d++) {
      add_factor(r, false);
      r->dim[d][0] = (int8_t)d;
      r->dim[d][2] = (int8_t)d;
    }
    add_factor(r, false); /* D */
    r->dim[r->nf - 1][1] = 1;
    r->dim[r->nf - 1][2] = (int8_t)ids->rank;
    add_factor(r, false); /* V: rows outside a device's block give zeros */
    r->dim[r->nf - 1][1] = 0;
    return true;
  }
  case PTC_OP_EMBEDDING_GRAD: { /* g [..., D], ids [...] -> [V, D] */
    const ptc_type *ids = vt(f, op->in[1]);
    for (int32_t d = 0; d < ids->rank; d++) {
      add_factor(r, false);
      r->dim[d][0] = (int8_t)d;
      r->dim[d][1] = (int8_t)d;
    }
    add_factor(r, false); /* D */
    r->dim[r->nf - 1][0] = (int8_t)ids->rank;
    r->dim[r->nf - 1][2] = 1;
    add_factor(r, false); /* V: each device scatters into its block */
    r->dim[r->nf - 1][2] = 0;
    return true;
  }
  case PTC_OP_LAYERNORM:
  case PTC_OP_RMSNORM: {
    const ptc_type *x = vt(f, op->in[0]);
    rule_same(f, op, r, 0, 0, x->rank - 1);
    for (int32_t i = 1; i < op->nin; i++) r->dim[x->rank - 1][i] = 0;
    return true;
  }
  case PTC_OP_LAYERNORM_GRAD:
  case PTC_OP_RMSNORM_GRAD: { /* g, x, gamma -> dx, dgamma[, dbeta] */
    const ptc_type *x = vt(f, op->in[1]);
    rule_same(f, op, r, 1, 0, x->rank - 1);
    for (int32_t d = 0; d < x->rank; d++) r->dim[d][0] = (int8_t)d;
    r->dim[x->rank - 1][2] = 0;
    for (int32_t j = 1; j < op->nout; j++) r->dim[x->rank - 1][op->nin + j] = 0;
    return true;
  }
  case PTC_OP_ROPE:
    rule_same(f, op, r, 0, 0, -1);
    r->whole[1] = r->whole[3] = true; /* seq (positions) and head_dim */
    return true;
  case PTC_OP_ATTENTION:
    rule_attention(op, r, 0);
    return true;
  case PTC_OP_ATTENTION_GRAD:
    rule_attention(op, r, 1);
    return true;
  case PTC_OP_CROSS_ENTROPY:
  case PTC_OP_CROSS_ENTROPY_GRAD: {
    int at = op->code == PTC_OP_CROSS_ENTROPY ? 0 : 1;
    bool grad = at == 1;
    const ptc_type *l = vt(f, op->in[at]);
    for (int32_t d = 0; d < l->rank; d++) {
      /* the classes may be split (vocabulary-parallel): the kernel then
       * takes the max, the sum and the target's logit over the pieces */
      add_factor(r, false);
      r->internal[d] = d == l->rank - 1;
      r->dim[d][at] = (int8_t)d;
      if (d < l->rank - 1) r->dim[d][at + 1] = (int8_t)d;
      if (grad) r->dim[d][op->nin] = (int8_t)d;
    }
    return true;
  }
  default:
    return false; /* collectives, transfers, assign, return: handled by callers */
  }
}

/* ---- checking a partitioned op ------------------------------------------- */

static void layout_text(char *buf, size_t n, const ptc_func *f, const ptc_sharding *s,
                        int32_t rank) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_sharding_print(&b, s, rank, &f->mod->mesh);
  snprintf(buf, n, "%s", b.data && b.data[0] ? b.data : "shard<>");
  ptc_buf_fini(&b);
}

static int check_fail(ptc_func *f, const ptc_op *op, const char *fmt, const char *a,
                      const char *b) {
  char msg[512];
  snprintf(msg, sizeof msg, fmt, a, b);
  ptc_error(f->mod->ctx, op->loc, "%s: %s", ptc_opinfo_get(op->code)->name, msg);
  return -1;
}

int ptc_shard_check_op(ptc_func *f, const ptc_op *op) {
  const ptc_mesh *m = &f->mod->mesh;
  char t1[128], t2[128];
  if (op->code == PTC_OP_ASSIGN) {
    const ptc_param *p = &f->mod->params[f->values[op->in[0]].def];
    const ptc_value *v = &f->values[op->in[1]];
    if (ptc_sharding_eq(&v->shard, &p->shard, v->type.rank)) return 0;
    layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
    layout_text(t2, sizeof t2, f, &p->shard, v->type.rank);
    return check_fail(f, op, "the new value is laid out %s but the variable is stored %s",
                      t1, t2);
  }
  if (op->code == PTC_OP_RETURN) {
    bool stash = strncmp(f->name, "fwd.", 4) == 0; /* a pipeline chunk's stash */
    for (int32_t i = 0; i < op->nin; i++) {
      const ptc_value *v = &f->values[op->in[i]];
      if (stash) {
        if (!v->shard.partial && i < f->nresults &&
            ptc_sharding_eq(&v->shard, &f->result_shards[i], v->type.rank))
          continue;
        layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
        return check_fail(f, op, "returns a value laid out %s, not as its signature "
                          "says%s", t1, "");
      }
      bool whole = !v->shard.partial;
      for (int32_t d = 0; d < v->type.rank; d++) whole &= v->shard.dim_axes[d] == 0;
      if (!whole) {
        layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
        return check_fail(f, op, "returns a value laid out %s%s; results must be whole "
                          "on every device", t1, "");
      }
    }
    return 0;
  }
  ptc_shard_rule r;
  if (!ptc_shard_rule_get(f, op, &r)) return 0; /* collectives: their shape rules check */
  uint8_t fax[PTC_SR_MAX_FACTORS] = {0};
  bool seen[PTC_SR_MAX_FACTORS] = {0};
  /* ops linear in every operand keep partial sums over the same axes:
   * sums, and moving data around (a gradient bucket's reshape, concat and
   * slice) */
  uint8_t sum_partial = 0;
  bool linear = op->code == PTC_OP_ADD || op->code == PTC_OP_SUB ||
                op->code == PTC_OP_RESHAPE || op->code == PTC_OP_CONCAT ||
                op->code == PTC_OP_SLICE || op->code == PTC_OP_TRANSPOSE ||
                op->code == PTC_OP_PAD || op->code == PTC_OP_NEG;
  if (linear) {
    sum_partial = f->values[op->in[0]].shard.partial;
    bool sums = op->code == PTC_OP_ADD || op->code == PTC_OP_SUB;
    for (int32_t i = 0; i < op->nin; i++)
      if (f->values[op->in[i]].shard.partial != sum_partial ||
          (sums && !ptc_type_eq(&f->values[op->in[i]].type, &f->values[op->out[0]].type)))
        sum_partial = 0;
  }
  for (int32_t i = 0; i < op->nin; i++) {
    const ptc_value *v = &f->values[op->in[i]];
    if (v->shard.partial & ~sum_partial) {
      layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
      snprintf(t2, sizeof t2, "%d", i);
      return check_fail(f, op, "operand %2$s is a partial sum (%1$s); reduce it before "
                        "use", t1, t2);
    }
    uint8_t covered[PTC_MAX_RANK] = {0};
    for (int32_t fi = 0; fi < r.nf; fi++) {
      int32_t d = r.dim[fi][i];
      if (d < 0) continue;
      covered[d] = 1;
      uint8_t ax = v->shard.dim_axes[d];
      if (!seen[fi]) {
        seen[fi] = true;
        fax[fi] = ax;
      } else if (fax[fi] != ax) {
        layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
        snprintf(t2, sizeof t2, "%d", i);
        return check_fail(f, op, "operand %2$s (%1$s) is split differently from the "
                          "operands before it on a dimension they share", t1, t2);
      }
    }
    for (int32_t d = 0; d < v->type.rank; d++)
      if (!covered[d] && v->shard.dim_axes[d]) {
        layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
        snprintf(t2, sizeof t2, "%d", i);
        return check_fail(f, op, "operand %2$s (%1$s) is split on a dimension the op "
                          "broadcasts", t1, t2);
      }
  }
  /* factors no operand has take their split from the results */
  for (int32_t fi = 0; fi < r.nf; fi++) {
    if (seen[fi]) continue;
    for (int32_t j = 0; j < op->nout; j++) {
      int32_t d = r.dim[fi][op->nin + j];
      if (d >= 0) {
        fax[fi] = f->values[op->out[j]].shard.dim_axes[d];
        break;
      }
    }
  }
  uint8_t used = 0;
  for (int32_t fi = 0; fi < r.nf; fi++) {
    if (!fax[fi]) continue;
    if (r.whole[fi] || (used & fax[fi])) {
      snprintf(t1, sizeof t1, "%s", r.whole[fi] ? "a dimension it needs whole" :
               "two dimensions with one mesh axis");
      return check_fail(f, op, "its operands are split on %s%s", t1, "");
    }
    used |= fax[fi];
    (void)m;
  }
  for (int32_t j = 0; j < op->nout; j++) {
    const ptc_value *v = &f->values[op->out[j]];
    ptc_sharding want;
    memset(&want, 0, sizeof want);
    want.present = true;
    want.partial = sum_partial;
    for (int32_t fi = 0; fi < r.nf; fi++) {
      if (!fax[fi]) continue;
      int32_t d = r.dim[fi][op->nin + j];
      if (d >= 0) want.dim_axes[d] |= fax[fi];
      else if (!r.internal[fi]) want.partial |= fax[fi];
    }
    /* a constant 0 is also a partial sum (of zeros) over any axes */
    if (op->code == PTC_OP_CONSTANT && ptc_op_attr_float(op, "value", 1.0) == 0.0)
      want.partial = v->shard.partial;
    if (!ptc_sharding_eq(&v->shard, &want, v->type.rank)) {
      layout_text(t1, sizeof t1, f, &v->shard, v->type.rank);
      layout_text(t2, sizeof t2, f, &want, v->type.rank);
      return check_fail(f, op, "its result is laid out %s, but its operands make it %s",
                        t1, t2);
    }
  }
  return 0;
}

/* ---- communication volume --------------------------------------------------- */

void ptc_comm_volume(const ptc_func *f, double *sent, int64_t *calls) {
  const ptc_mesh *m = &f->mod->mesh;
  for (int a = 0; a < PTC_MAX_MESH_AXES; a++) sent[a] = 0, calls[a] = 0;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    if (op->code == PTC_OP_CROSS_ENTROPY || op->code == PTC_OP_CROSS_ENTROPY_GRAD) {
      /* vocabulary-parallel: all-reduces of one float per row (max and sum
       * of exponentials; the target's logit for the loss) per class axis */
      int at = op->code == PTC_OP_CROSS_ENTROPY ? 0 : 1;
      const ptc_value *l = &f->values[op->in[at]], *t = &f->values[op->in[at + 1]];
      uint8_t cls = l->shard.present ? l->shard.dim_axes[l->type.rank - 1] : 0;
      ptc_type lt;
      ptc_local_type(m, &t->type, &t->shard, &lt);
      double rows = (double)ptc_type_numel(&lt);
      for (int a = 0; a < m->naxes; a++) {
        if (!(cls & (1u << a)) || m->axes[a].size <= 1) continue;
        double n = (double)m->axes[a].size;
        int k = op->code == PTC_OP_CROSS_ENTROPY ? 3 : 2;
        sent[a] += k * 2 * (n - 1) / n * rows * 4;
        calls[a] += k;
      }
      continue;
    }
    if (!(ptc_opinfo_get(op->code)->flags & PTC_OPF_COLLECTIVE) || op->code == PTC_OP_SHARD ||
        op->code == PTC_OP_TO_PARTIAL)
      continue;
    const ptc_attr *ax = ptc_op_attr(op, "axis");
    int a = ax ? ptc_mesh_axis(m, ax->u.s, strlen(ax->u.s)) : -1;
    if (op->code == PTC_OP_SEND || op->code == PTC_OP_RECV) {
      a = ptc_mesh_axis(m, "pp", 2);
      if (a < 0) a = 0;
    }
    if (a < 0 || a >= m->naxes) continue;
    double n = (double)m->axes[a].size;
    if (n <= 1 && op->code != PTC_OP_SEND) continue;
    ptc_type in, out;
    const ptc_value *vi = op->nin ? &f->values[op->in[0]] : NULL;
    const ptc_value *vo = op->nout ? &f->values[op->out[0]] : NULL;
    if (vi) ptc_local_type(m, &vi->type, &vi->shard, &in);
    if (vo) ptc_local_type(m, &vo->type, &vo->shard, &out);
    double b = 0;
    switch (op->code) {
    case PTC_OP_ALL_REDUCE: b = 2 * (n - 1) / n * (double)ptc_type_bytes(&in); break;
    case PTC_OP_ALL_GATHER: b = (n - 1) / n * (double)ptc_type_bytes(&out); break;
    case PTC_OP_REDUCE_SCATTER: b = (n - 1) / n * (double)ptc_type_bytes(&in); break;
    case PTC_OP_BROADCAST: b = (n - 1) / n * (double)ptc_type_bytes(&in); break;
    case PTC_OP_SEND: b = (double)ptc_type_bytes(&in); break;
    default: break;
    }
    sent[a] += b;
    calls[a]++;
  }
}
