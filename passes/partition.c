/* partition.c -- the SPMD partitioner: `shard` decides how every value is
 * split over the mesh, `partition` makes the program run on the pieces.
 *
 * shard (propagation).  Anchors, then forward propagation through the
 * sharding rules of shard_rules.c, in program order:
 *   - data parallelism: every function argument of rank >= 1 is split on
 *     its first (batch) dimension over dp;
 *   - tensor parallelism (Megatron's rule, derived rather than written per
 *     model): the first time a rank-2 parameter is the right operand of a
 *     matmul, it is split column-wise over tp (on its output features) when
 *     the left operand is whole over tp, and row-wise (on its contracting
 *     features) when the left operand arrives split over tp -- so linear
 *     layers pair up column-then-row, and the heads of an attention follow
 *     the column split through reshape.  An embedding table is split over
 *     tp on its rows (vocabulary-parallel).  Other parameters take the
 *     split their first use implies (a bias follows its matmul's columns);
 *   - every op's results take the splits of its factors, chosen from its
 *     operands (parameters first); a contracting factor leaves no split on
 *     the results (partition makes them partial sums);
 *   - a backward sweep lets an op whose result factor needs no operand
 *     (embedding_grad's rows, broadcast_to, constant) produce the split its
 *     users want;
 *   - sequence-parallel: the residual stream (values shaped like a norm's
 *     input [batch, seq, hidden], and their gradients) whole over tp gets its
 *     sequence dimension split over tp, where the producing op allows it;
 *   - ZeRO: for each optimizer update, a dimension of the parameter not yet
 *     split takes dp: the moments are stored split (stage >= 1), the
 *     gradient is produced split, so its reduction is a reduce_scatter
 *     (stage >= 1), and the parameter itself is stored split (stage 3) and
 *     gathered where it is used.
 * The result is the IR with every value and parameter annotated; no op has
 * changed yet.
 *
 * partition.  For each op, the split of each factor is chosen -- contracting
 * factors from the operands (non-parameter operands first, so an activation
 * decides and a ZeRO-3 parameter is gathered), the other factors from the
 * results' annotations -- and every operand that is not laid out as those
 * factors require is resharded in front of the op:
 *   partial over a      -> reduce_scatter over a (when the target splits a
 *                          dim over a as its minor axis), else all_reduce;
 *   split that must go  -> all_gather (minor axes first);
 *   split that must come-> shard (a local slice).
 * The op's result is then what its factors make it (split, or partial over
 * the axes of contracting factors it lacks); where that differs from the
 * annotation, it is resharded right after the op, so gradient reductions are
 * issued as soon as a gradient is complete.  Reshards of one value to one
 * layout are made once, except parameters, whose gathers are made again in
 * the backward part (ZeRO-3 frees them in between).  `assign` writes the
 * variable's stored layout; `return` wants whole values.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

/* ---- helpers ------------------------------------------------------------- */

static int axis_index(const ptc_mesh *m, const char *name) {
  return ptc_mesh_axis(m, name, strlen(name));
}

static ptc_sharding replicated(void) {
  ptc_sharding s;
  memset(&s, 0, sizeof s);
  s.present = true;
  return s;
}

static const ptc_type *vty(const ptc_func *f, int32_t v) { return &f->values[v].type; }

static int32_t io_value(const ptc_op *op, int32_t io) {
  return io < op->nin ? op->in[io] : op->out[io - op->nin];
}

static bool divides(const ptc_mesh *m, int64_t size, uint8_t axes) {
  return size % ptc_shard_parts(m, axes) == 0;
}

/* The mesh axes of a sharding, over all dims. */
static uint8_t used_axes(const ptc_sharding *s, int32_t rank) {
  uint8_t u = 0;
  for (int32_t d = 0; d < rank; d++) u |= s->dim_axes[d];
  return u;
}

static bool is_param(const ptc_func *f, int32_t v) {
  return f->values[v].kind == PTC_VALUE_PARAM;
}

/* Whether axes `ax` can split factor fi: every dim it names divides. */
static bool factor_fits(const ptc_mesh *m, const ptc_func *f, const ptc_op *op,
                        const ptc_shard_rule *r, int32_t fi, uint8_t ax) {
  for (int32_t io = 0; io < op->nin + op->nout; io++) {
    int32_t d = r->dim[fi][io];
    if (d >= 0 && !divides(m, vty(f, io_value(op, io))->dims[d], ax)) return false;
  }
  return true;
}

/* A split that could not be carried through an op: the first dim of the
 * factor that does not divide. */
typedef struct misfit {
  int32_t from_io, io, dim;
  uint8_t axes;
} misfit;

/* A candidate source for factor splits: io's layout `s`.  A split that does
 * not divide some dim of the factor is noted in *bad (may be NULL). */
static void take_from(const ptc_mesh *m, const ptc_func *f, const ptc_op *op,
                      const ptc_shard_rule *r, int32_t io, const ptc_sharding *s,
                      bool contract_only, const bool *contract, uint8_t *fax, bool *set,
                      uint8_t *used, misfit *bad) {
  if (!s || !s->present) return;
  for (int32_t fi = 0; fi < r->nf; fi++) {
    if (set[fi] || r->whole[fi] || (contract_only && !contract[fi])) continue;
    int32_t d = r->dim[fi][io];
    if (d < 0) continue;
    uint8_t ax = s->dim_axes[d];
    if (!ax || (ax & *used)) continue;
    if (!factor_fits(m, f, op, r, fi, ax)) {
      for (int32_t k = 0; bad && bad->io < 0 && k < op->nin + op->nout; k++) {
        int32_t dk = r->dim[fi][k];
        if (dk >= 0 && !divides(m, vty(f, io_value(op, k))->dims[dk], ax))
          *bad = (misfit){io, k, dk, ax};
      }
      continue;
    }
    fax[fi] = ax;
    set[fi] = true;
    *used |= ax;
  }
}

/* Factors that no result has: contracting (their splits make partial sums). */
static void contracting(const ptc_op *op, const ptc_shard_rule *r, bool *contract) {
  for (int32_t fi = 0; fi < r->nf; fi++) {
    bool in_res = false;
    for (int32_t j = 0; j < op->nout; j++) in_res |= r->dim[fi][op->nin + j] >= 0;
    contract[fi] = !in_res;
  }
}

/* The layout factor splits give io (partial over the axes of split factors
 * io lacks, for a result; none for an operand). */
static ptc_sharding layout_of(const ptc_op *op, const ptc_shard_rule *r, const uint8_t *fax,
                              int32_t io, int32_t rank) {
  ptc_sharding s = replicated();
  bool result = io >= op->nin;
  for (int32_t fi = 0; fi < r->nf; fi++) {
    if (!fax[fi]) continue;
    int32_t d = r->dim[fi][io];
    if (d >= 0 && d < rank) s.dim_axes[d] |= fax[fi];
    else if (result && !r->internal[fi]) s.partial |= fax[fi];
  }
  return s;
}

/* ---- the shard pass: propagation ------------------------------------------- */

typedef struct prop {
  ptc_module *m;
  const ptc_mesh *mesh;
  int tp, dp; /* axis indices, -1 when absent or of size 1 */
  bool *decided; /* per module param */
  bool *known;   /* per value of the current function */
  /* pipeline transfers: the layout of the value sent with each tag */
  ptc_sharding *tag_layout;
  bool *tag_known;
  int32_t ntags;
} prop;

/* Sets p's stored layout; partial sums it was declared with stay (a
 * pipeline's gradient accumulators hold each rank's unreduced sum). */
static void set_param(prop *P, int32_t p, const ptc_sharding *s) {
  uint8_t keep = P->m->params[p].shard.partial;
  P->m->params[p].shard = *s;
  P->m->params[p].shard.partial = keep;
  P->decided[p] = true;
}

/* The layout a value is known to have (params: their storage), or NULL. */
static const ptc_sharding *known_layout(prop *P, ptc_func *f, int32_t v) {
  if (is_param(f, v)) {
    int32_t p = f->values[v].def;
    return P->decided[p] ? &P->m->params[p].shard : NULL;
  }
  return P->known[v] ? &f->values[v].shard : NULL;
}

/* Megatron's anchors at the first use of a parameter. */
static void tp_anchor(prop *P, ptc_func *f, const ptc_op *op) {
  if (P->tp < 0) return;
  uint8_t tp = (uint8_t)(1u << P->tp);
  if (op->code == PTC_OP_MATMUL && is_param(f, op->in[1])) {
    int32_t p = f->values[op->in[1]].def;
    const ptc_type *w = vty(f, op->in[1]), *a = vty(f, op->in[0]);
    if (P->decided[p] || w->rank != 2) return;
    bool ta = ptc_op_attr_bool(op, "transpose_a", false);
    bool tb = ptc_op_attr_bool(op, "transpose_b", false);
    int32_t ka = a->rank - (ta ? 2 : 1);
    const ptc_sharding *as = known_layout(P, f, op->in[0]);
    ptc_sharding s = replicated();
    int32_t kdim = tb ? 1 : 0, ndim = tb ? 0 : 1;
    if (as && (as->dim_axes[ka] & tp)) s.dim_axes[kdim] = tp; /* row-parallel */
    else s.dim_axes[ndim] = tp;                               /* column-parallel */
    for (int32_t d = 0; d < 2; d++)
      if (s.dim_axes[d] && !divides(P->mesh, w->dims[d], s.dim_axes[d])) return;
    set_param(P, p, &s);
  } else if (op->code == PTC_OP_EMBEDDING && is_param(f, op->in[1])) {
    int32_t p = f->values[op->in[1]].def;
    if (P->decided[p] || !divides(P->mesh, vty(f, op->in[1])->dims[0], tp)) return;
    ptc_sharding s = replicated();
    s.dim_axes[0] = tp;
    set_param(P, p, &s);
  }
}

/* Forward inference of one op's result layouts; undecided parameters it
 * reads adopt what the op implies. */
static int infer_op(prop *P, ptc_func *f, int32_t oi) {
  ptc_op *op = &f->ops[oi];
  ptc_shard_rule r;
  if (op->code == PTC_OP_ASSIGN) {
    /* a variable first met here (state) takes the new value's layout */
    int32_t p = f->values[op->in[0]].def;
    const ptc_sharding *s = known_layout(P, f, op->in[1]);
    if (!P->decided[p] && s) set_param(P, p, s);
    return 0;
  }
  if (op->code == PTC_OP_SEND || op->code == PTC_OP_RECV) {
    int64_t tag = ptc_op_attr_int(op, "tag", 0);
    if (tag < 0 || tag >= P->ntags) return 0;
    if (op->code == PTC_OP_SEND) {
      const ptc_sharding *sl = known_layout(P, f, op->in[0]);
      P->tag_layout[tag] = sl ? *sl : replicated();
      P->tag_layout[tag].partial = 0;
      P->tag_known[tag] = true;
    } else {
      f->values[op->out[0]].shard = P->tag_known[tag] ? P->tag_layout[tag] : replicated();
      P->known[op->out[0]] = true;
    }
    return 0;
  }
  if (op->code == PTC_OP_ALL_REDUCE && op->nin == 1) { /* the layout stays */
    const ptc_sharding *sl = known_layout(P, f, op->in[0]);
    const ptc_attr *ax = ptc_op_attr(op, "axis");
    int a = ax ? axis_index(P->mesh, ax->u.s) : -1;
    f->values[op->out[0]].shard = sl ? *sl : replicated();
    if (a >= 0) f->values[op->out[0]].shard.partial &= (uint8_t)~(1u << a);
    P->known[op->out[0]] = true;
    return 0;
  }
  if (!ptc_shard_rule_get(f, op, &r)) {
    for (int32_t j = 0; j < op->nout; j++) {
      if (!P->known[op->out[j]]) {
        f->values[op->out[j]].shard = replicated();
        P->known[op->out[j]] = true;
      }
    }
    return 0;
  }
  tp_anchor(P, f, op);
  uint8_t fax[PTC_SR_MAX_FACTORS] = {0};
  bool set[PTC_SR_MAX_FACTORS] = {0}, contract[PTC_SR_MAX_FACTORS];
  contracting(op, &r, contract);
  uint8_t used = 0;
  misfit bad = {-1, -1, -1, 0};
  for (int pass = 0; pass < 2; pass++) /* parameters first, then activations */
    for (int32_t i = 0; i < op->nin; i++)
      if (is_param(f, op->in[i]) == (pass == 0))
        take_from(P->mesh, f, op, &r, i, known_layout(P, f, op->in[i]), false, contract,
                  fax, set, &used, &bad);
  if (bad.io >= 0 && !(used & bad.axes)) {
    /* an activation split that this op cannot carry: the model does not
     * divide over the mesh as asked */
    char axn[64] = "";
    for (int a = 0; a < P->mesh->naxes; a++)
      if (bad.axes & (1u << a))
        snprintf(axn + strlen(axn), sizeof axn - strlen(axn), "%s%s", axn[0] ? "," : "",
                 P->mesh->axes[a].name);
    const ptc_type *t = vty(f, io_value(op, bad.io));
    ptc_error(P->m->ctx, op->loc,
              "shard: %s: dimension %d (size %lld) of its %s %d cannot be split over %s "
              "(%lld devices), but its operand %d arrives split that way; make that size "
              "a multiple of %lld (e.g. heads or kv_heads divisible by tp) or use a mesh "
              "with a smaller %s",
              ptc_opinfo_get(op->code)->name, bad.dim, (long long)t->dims[bad.dim],
              bad.io < op->nin ? "operand" : "result",
              bad.io < op->nin ? bad.io : bad.io - op->nin, axn,
              (long long)ptc_shard_parts(P->mesh, bad.axes), bad.from_io,
              (long long)ptc_shard_parts(P->mesh, bad.axes), axn);
    return -1;
  }
  for (int32_t i = 0; i < op->nin; i++) {
    if (!is_param(f, op->in[i])) continue;
    int32_t p = f->values[op->in[i]].def;
    if (P->decided[p]) continue;
    ptc_sharding s = layout_of(op, &r, fax, i, vty(f, op->in[i])->rank);
    set_param(P, p, &s);
  }
  for (int32_t j = 0; j < op->nout; j++) {
    int32_t v = op->out[j];
    f->values[v].shard = layout_of(op, &r, fax, op->nin + j, vty(f, v)->rank);
    f->values[v].shard.partial = 0;
    P->known[v] = true;
  }
  return 0;
}

/* Whether factor fi of op maps to no operand (its results can be produced
 * split from whole operands). */
static bool output_only(const ptc_op *op, const ptc_shard_rule *r, int32_t fi) {
  for (int32_t i = 0; i < op->nin; i++)
    if (r->dim[fi][i] >= 0) return false;
  return !r->whole[fi];
}

/* Backward sweep: an op's operand produced by an op whose factor for that
 * dim is output-only takes the split the user's factor has. */
static bool backward_sweep(prop *P, ptc_func *f, const int32_t *def_op, bool *moved) {
  bool changed = false;
  for (int32_t oi = f->nops - 1; oi >= 0; oi--) {
    ptc_op *op = &f->ops[oi];
    ptc_shard_rule r;
    if (!ptc_shard_rule_get(f, op, &r)) continue;
    for (int32_t i = 0; i < op->nin; i++) {
      int32_t v = op->in[i];
      if (f->values[v].kind != PTC_VALUE_OP) continue;
      ptc_op *prod = &f->ops[def_op[v]];
      ptc_shard_rule pr;
      if (!ptc_shard_rule_get(f, prod, &pr)) continue;
      int32_t res = f->values[v].res;
      for (int32_t fi = 0; fi < r.nf; fi++) {
        int32_t d = r.dim[fi][i];
        if (d < 0 || r.whole[fi]) continue;
        /* the split this op's results give the factor */
        uint8_t want = 0;
        for (int32_t j = 0; j < op->nout && !want; j++) {
          int32_t dj = r.dim[fi][op->nin + j];
          if (dj >= 0) want = f->values[op->out[j]].shard.dim_axes[dj];
        }
        if (!want || f->values[v].shard.dim_axes[d]) continue;
        if (used_axes(&f->values[v].shard, vty(f, v)->rank) & want) continue;
        bool ew = (ptc_opinfo_get(prod->code)->flags & PTC_OPF_ELEMENTWISE) != 0;
        for (int32_t pf = 0; pf < pr.nf; pf++)
          if (pr.dim[pf][prod->nin + res] == d && (output_only(prod, &pr, pf) || ew) &&
              !pr.whole[pf] && divides(P->mesh, vty(f, v)->dims[d], want)) {
            f->values[v].shard.dim_axes[d] = want;
            moved[v] = true;
            changed = true;
            break;
          }
      }
    }
  }
  return changed;
}

/* Sequence parallelism: activations whole over tp get their sequence dim
 * split over tp where the producer's factor for that dim may split. */
static void sequence_parallel(prop *P, ptc_func *f) {
  if (P->tp < 0 || P->dp < 0) return;
  uint8_t tp = (uint8_t)(1u << P->tp), dp = (uint8_t)(1u << P->dp);
  /* the residual stream: values shaped like a norm's input [batch, seq, ...,
   * hidden] (and their gradients), not logits or per-head activations */
  ptc_type norm_in[8];
  int32_t nnorm = 0;
  for (int32_t oi = 0; oi < f->nops && nnorm < 8; oi++) {
    ptc_op *op = &f->ops[oi];
    if (op->code != PTC_OP_LAYERNORM && op->code != PTC_OP_RMSNORM) continue;
    const ptc_type *t = vty(f, op->in[0]);
    bool seen = false;
    for (int32_t k = 0; k < nnorm; k++) seen |= ptc_type_eq(&norm_in[k], t);
    if (!seen && t->rank >= 3) norm_in[nnorm++] = *t;
  }
  for (int32_t oi = 0; oi < f->nops; oi++) {
    ptc_op *op = &f->ops[oi];
    ptc_shard_rule r;
    if (!ptc_shard_rule_get(f, op, &r)) continue;
    for (int32_t j = 0; j < op->nout; j++) {
      int32_t v = op->out[j];
      ptc_sharding *s = &f->values[v].shard;
      const ptc_type *t = vty(f, v);
      bool stream = false;
      for (int32_t k = 0; k < nnorm; k++) stream |= ptc_type_eq(&norm_in[k], t);
      if (!stream || !(s->dim_axes[0] & dp)) continue;
      if (used_axes(s, t->rank) & tp) continue;
      int32_t sd = 1; /* the sequence */
      bool ok = false;
      for (int32_t fi = 0; fi < r.nf; fi++)
        if (r.dim[fi][op->nin + j] == sd) ok = !r.whole[fi];
      if (ok && divides(P->mesh, t->dims[sd], (uint8_t)(s->dim_axes[sd] | tp)))
        s->dim_axes[sd] |= tp;
    }
  }
}

/* Ops reading a value whose layout a later stage changed (moved[v]) derive
 * their results again, unless those were set too; marks what it changes. */
static void reinfer(prop *P, ptc_func *f, bool *moved) {
  for (int32_t oi = 0; oi < f->nops; oi++) {
    ptc_op *op = &f->ops[oi];
    if (op->code == PTC_OP_ADAMW || op->code == PTC_OP_SGD || op->code == PTC_OP_ASSIGN)
      continue;
    bool any = false;
    for (int32_t i = 0; i < op->nin; i++) any |= moved[op->in[i]];
    bool mine = false;
    for (int32_t j = 0; j < op->nout; j++) mine |= moved[op->out[j]];
    if (!any || mine) continue;
    if (infer_op(P, f, oi) != 0) break;
    for (int32_t j = 0; j < op->nout; j++) moved[op->out[j]] = true;
  }
}

/* ZeRO: the dimension of p's layout that takes dp, or -1. */
static int32_t zero_dim(const prop *P, const ptc_type *t, const ptc_sharding *s) {
  uint8_t dp = (uint8_t)(1u << P->dp);
  int32_t best = -1;
  for (int32_t d = 0; d < t->rank; d++) {
    if (s->dim_axes[d] || !divides(P->mesh, t->dims[d], dp)) continue;
    if (best < 0 || t->dims[d] > t->dims[best]) best = d;
  }
  return best;
}

/* a and b have one shape (dtypes may differ: a 16-bit gradient of an fp32
 * master weight) */
static bool same_dims(const ptc_type *a, const ptc_type *b) {
  if (a->rank != b->rank) return false;
  for (int32_t d = 0; d < a->rank; d++)
    if (a->dims[d] != b->dims[d]) return false;
  return true;
}

static void align_tied_zeros(ptc_module *m);

static void zero(prop *P, ptc_func *f, const int32_t *def_op, int stage) {
  if (P->dp < 0 || stage == 0) return;
  uint8_t dp = (uint8_t)(1u << P->dp);
  bool *moved = calloc((size_t)(f->nvalues + 1), sizeof *moved);
  PTC_ASSERT(moved);
  for (int32_t oi = 0; oi < f->nops; oi++) {
    ptc_op *op = &f->ops[oi];
    if (op->code != PTC_OP_ADAMW && op->code != PTC_OP_SGD) continue;
    int32_t p = f->values[op->in[0]].def;
    const ptc_type *t = vty(f, op->in[0]);
    ptc_sharding z = P->m->params[p].shard;
    /* a tied parameter is updated on every stage holding it: the first
     * stage's update already chose its split (moments are shared by name) */
    int32_t s1 = f->values[op->in[2]].def;
    if (used_axes(&P->m->params[s1].shard, t->rank) & dp) z = P->m->params[s1].shard;
    int32_t d = (used_axes(&z, t->rank) & dp) ? -2 : zero_dim(P, t, &z);
    if (d == -2) goto apply;
    if (d < 0) continue; /* too small to split: stays replicated over dp */
    z.dim_axes[d] |= dp;
  apply:;
    int nstate = op->code == PTC_OP_ADAMW ? 2 : 1;
    for (int k = 0; k < nstate; k++) set_param(P, f->values[op->in[2 + k]].def, &z);
    /* mixed precision: the fp32 master weight is optimizer state (split
     * from stage 1), the 16-bit copy the step reads is the parameter
     * (split at stage 3) */
    int32_t copy = ptc_precision_copy_of(P->m, p);
    if (stage >= 3 || copy >= 0) set_param(P, p, &z);
    if (stage >= 3 && copy >= 0) set_param(P, copy, &z);
    for (int32_t j = 0; j < op->nout; j++) f->values[op->out[j]].shard = z;
    /* the gradient, back through same-shape element-wise ops (clipping);
     * stage 1 reduces it where the update begins (partition sinks it) */
    ptc_sharding gz = z;
    int32_t g = op->in[1];
    while (f->values[g].kind == PTC_VALUE_OP) {
      ptc_op *prod = &f->ops[def_op[g]];
      /* a collective's result is what its operand makes it (a pipeline's
       * reduction over pp): partition reshards after it */
      if (ptc_opinfo_get(prod->code)->flags & PTC_OPF_COLLECTIVE) break;
      f->values[g].shard = gz;
      moved[g] = true;
      if (!(ptc_opinfo_get(prod->code)->flags & PTC_OPF_ELEMENTWISE)) break;
      int32_t next = -1, n = 0;
      for (int32_t i = 0; i < prod->nin; i++)
        if (same_dims(vty(f, prod->in[i]), t) && !is_param(f, prod->in[i])) {
          next = prod->in[i];
          n++;
        }
      if (n != 1) break; /* a sum of gradients (tied weights) is split once, after */
      g = next;
    }
  }
  /* what else reads the split gradients (the global norm) follows them, so
   * the norm is summed from the pieces instead of gathering them back */
  reinfer(P, f, moved);
  free(moved);
}

static int32_t *def_ops(const ptc_func *f) {
  int32_t *d = malloc(sizeof *d * (size_t)(f->nvalues ? f->nvalues : 1));
  PTC_ASSERT(d);
  for (int32_t v = 0; v < f->nvalues; v++) d[v] = -1;
  for (int32_t oi = 0; oi < f->nops; oi++)
    for (int32_t j = 0; j < f->ops[oi].nout; j++) d[f->ops[oi].out[j]] = oi;
  return d;
}

static int real_axis(const ptc_mesh *m, const char *name) {
  int a = axis_index(m, name);
  return a >= 0 && m->axes[a].size > 1 ? a : -1;
}

/* The order functions are processed in: a pipeline's forward chunks up,
 * its backward chunks down (senders before receivers), then the rest. */
static int32_t func_order(const ptc_module *m, int32_t *order) {
  int32_t n = 0;
  for (int pass = 0; pass < 3; pass++) {
    int32_t start = n;
    for (int32_t i = 0; i < m->nfuncs; i++) {
      const char *nm = m->funcs[i]->name;
      bool fwd = strncmp(nm, "fwd.", 4) == 0, bwd = strncmp(nm, "bwd.", 4) == 0;
      if ((pass == 0 && fwd) || (pass == 1 && bwd) || (pass == 2 && !fwd && !bwd))
        order[n++] = i;
    }
    /* chunks by number: up for forward, down for backward */
    for (int32_t a = start; a < n; a++)
      for (int32_t b = a + 1; b < n; b++) {
        int ca = pass < 2 ? atoi(m->funcs[order[a]]->name + 4) : 0;
        int cb = pass < 2 ? atoi(m->funcs[order[b]]->name + 4) : 0;
        if ((pass == 0 && cb < ca) || (pass == 1 && cb > ca)) {
          int32_t t = order[a];
          order[a] = order[b];
          order[b] = t;
        }
      }
  }
  return n;
}

/* The layout of result k of @fwd.<c> for @bwd.<c>'s %stash.<k>. */
static bool stash_layout(const ptc_module *m, const ptc_func *bwd, int k, ptc_sharding *out) {
  char name[32];
  snprintf(name, sizeof name, "fwd.%s", bwd->name + 4);
  const ptc_func *fw = ptc_module_find_func(m, name);
  if (!fw || fw->nops == 0) return false;
  const ptc_op *ret = &fw->ops[fw->nops - 1];
  if (k < 0 || k >= ret->nin) return false;
  *out = fw->values[ret->in[k]].shard;
  if (!out->present) return false;
  out->partial = 0;
  return true;
}

static int run_shard(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  if (ptc_mesh_size(&m->mesh) <= 1) return 0;
  prop P = {.m = m, .mesh = &m->mesh};
  P.tp = real_axis(&m->mesh, "tp");
  P.dp = real_axis(&m->mesh, "dp");
  bool pipelined = ptc_module_get_attr(m, "pipeline.stages") != NULL;
  if (!pipelined && axis_index(&m->mesh, "pp") >= 0 &&
      m->mesh.axes[axis_index(&m->mesh, "pp")].size > 1) {
    ptc_error(m->ctx, m->loc, "shard: the mesh has a pipeline axis pp of size %lld; "
              "run the pipeline pass first (it is in the default pipeline) to cut "
              "the step into stages",
              (long long)m->mesh.axes[axis_index(&m->mesh, "pp")].size);
    return -1;
  }
  P.decided = calloc((size_t)(m->nparams + 1), sizeof *P.decided);
  PTC_ASSERT(P.decided);
  for (int32_t p = 0; p < m->nparams; p++)
    if (m->params[p].shard.present) P.decided[p] = true; /* given in the source */
  int stage = (int)ptc_pass_opt_int(o, "zero");
  bool sp = ptc_pass_opt_bool(o, "sequence-parallel");
  int rc = 0;
  /* senders before receivers: forward chunks up, backward chunks down */
  int32_t *order = calloc((size_t)(m->nfuncs + 1), sizeof *order);
  PTC_ASSERT(order);
  int32_t no = func_order(m, order);
  P.ntags = 0;
  for (int32_t fi = 0; fi < m->nfuncs; fi++)
    for (int32_t i = 0; i < m->funcs[fi]->nops; i++) {
      const ptc_op *op = &m->funcs[fi]->ops[i];
      if (op->code == PTC_OP_SEND || op->code == PTC_OP_RECV) {
        int64_t t = ptc_op_attr_int(op, "tag", 0);
        if (t >= P.ntags && t < (1 << 24)) P.ntags = (int32_t)t + 1;
      }
    }
  P.tag_layout = calloc((size_t)P.ntags + 1, sizeof *P.tag_layout);
  P.tag_known = calloc((size_t)P.ntags + 1, sizeof *P.tag_known);
  PTC_ASSERT(P.tag_layout && P.tag_known);
  for (int32_t oi_ = 0; oi_ < no && rc == 0; oi_++) {
    ptc_func *f = m->funcs[order[oi_]];
    P.known = calloc((size_t)(f->nvalues + 1), sizeof *P.known);
    PTC_ASSERT(P.known);
    for (int32_t a = 0; a < f->nargs; a++) {
      int32_t v = f->args[a];
      ptc_sharding s = replicated();
      const ptc_type *t = vty(f, v);
      const char *an = f->values[v].name;
      if (an && strncmp(an, "stash.", 6) == 0) {
        /* a pipeline chunk's backward: laid out as its forward returns it */
        ptc_sharding st;
        if (stash_layout(m, f, atoi(an + 6), &st)) s = st;
      } else if (P.dp >= 0 && t->rank >= 1) {
        if (!divides(&m->mesh, t->dims[0], (uint8_t)(1u << P.dp))) {
          ptc_error(m->ctx, f->loc, "shard: input %%%s has batch dimension %lld, which "
                    "does not divide over dp = %lld devices; pick a batch that is a "
                    "multiple of %lld (--batch) or a smaller dp in --mesh",
                    f->values[v].name ? f->values[v].name : "?", (long long)t->dims[0],
                    (long long)m->mesh.axes[P.dp].size, (long long)m->mesh.axes[P.dp].size);
          rc = -1;
          break;
        }
        s.dim_axes[0] = (uint8_t)(1u << P.dp);
      }
      f->values[v].shard = s;
      P.known[v] = true;
    }
    if (rc == 0) {
      for (int32_t oi = 0; oi < f->nops && rc == 0; oi++) rc = infer_op(&P, f, oi);
    }
    if (rc == 0) {
      int32_t *def = def_ops(f);
      bool *moved = calloc((size_t)(f->nvalues + 1), sizeof *moved);
      PTC_ASSERT(moved);
      for (int it = 0; it < 4 && backward_sweep(&P, f, def, moved); it++) {
      }
      reinfer(&P, f, moved);
      free(moved);
      if (sp) sequence_parallel(&P, f);
      zero(&P, f, def, stage);
      free(def);
    }
    free(P.known);
  }
  free(order);
  free(P.tag_layout);
  free(P.tag_known);
  /* parameters no function decided stay whole; param reads show storage */
  for (int32_t p = 0; p < m->nparams; p++)
    if (!m->params[p].shard.present) m->params[p].shard = replicated();
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    ptc_func *f = m->funcs[fi];
    for (int32_t v = 0; v < f->nvalues; v++)
      if (is_param(f, v)) f->values[v].shard = m->params[f->values[v].def].shard;
      else if (!f->values[v].shard.present) f->values[v].shard = replicated();
  }
  free(P.decided);
  align_tied_zeros(m);
  if (stage > 0 && P.dp >= 0) { /* partition reads it (stage 1), reports show it */
    ptc_attr za = ptc_attr_int("zero", stage);
    ptc_module_set_attr(m, &za);
  }
  *changed = true;
  return rc;
}

/* A stage that does not hold a tied parameter still takes part in its
 * gradient's all_reduce over pp, with zeros (passes/pipeline.c).  Those
 * zeros are laid out as the holders' gradient is (a vocabulary-parallel
 * embedding's rows split over tp), so every stage's piece has one shape. */
static bool is_zeros(const ptc_func *f, int32_t v) {
  if (f->values[v].kind != PTC_VALUE_OP) return false;
  const ptc_op *op = &f->ops[f->values[v].def];
  if (op->code == PTC_OP_BROADCAST_TO) return is_zeros(f, op->in[0]); /* zeros_like */
  return op->code == PTC_OP_CONSTANT && ptc_op_attr_float(op, "value", 1.0) == 0.0;
}

static void align_tied_zeros(ptc_module *m) {
  int32_t nstep = 0;
  ptc_func *steps[64];
  for (int32_t i = 0; i < m->nfuncs && nstep < 64; i++)
    if (strncmp(m->funcs[i]->name, "step.", 5) == 0) steps[nstep++] = m->funcs[i];
  for (int32_t k = 0;; k++) { /* the k-th all_reduce over pp of every @step.<s> */
    int32_t found = 0, from = -1, at[64];
    for (int32_t s = 0; s < nstep; s++) {
      ptc_func *f = steps[s];
      at[s] = -1;
      for (int32_t i = 0, n = 0; i < f->nops; i++) {
        const ptc_op *op = &f->ops[i];
        const ptc_attr *ax = op->code == PTC_OP_ALL_REDUCE ? ptc_op_attr(op, "axis") : NULL;
        if (!ax || strcmp(ax->u.s, "pp") != 0) continue;
        if (n++ == k) {
          at[s] = i;
          break;
        }
      }
      if (at[s] < 0) continue;
      found++;
      if (from < 0 && !is_zeros(f, f->ops[at[s]].in[0])) from = s;
    }
    if (!found) return;
    if (from < 0) continue;
    const ptc_sharding want = steps[from]->values[steps[from]->ops[at[from]].in[0]].shard;
    for (int32_t s = 0; s < nstep; s++) {
      if (at[s] < 0) continue;
      ptc_func *f = steps[s];
      ptc_op *op = &f->ops[at[s]];
      if (!is_zeros(f, op->in[0])) continue;
      ptc_sharding w = want;
      w.partial = 0;
      f->values[op->in[0]].shard = w;
      f->values[op->out[0]].shard = w;
    }
  }
}

static const ptc_pass_opt_spec shard_opts[] = {
    {.name = "zero", .kind = PTC_PASS_OPT_INT, .dflt = 0, .min = 0, .max = 3,
     .help = "ZeRO stage: 1 shards optimizer state over dp, 2 also gradients, 3 also "
             "parameters"},
    {.name = "sequence-parallel", .kind = PTC_PASS_OPT_BOOL, .dflt = 0,
     .help = "split activations outside tensor-parallel regions on their sequence "
             "dimension over tp"},
};

const ptc_pass_info ptc_pass_shard = {
    .name = "shard",
    .summary = "decide how every value is split over the mesh (data, tensor and "
               "sequence parallelism, ZeRO)",
    .opts = shard_opts,
    .nopts = PTC_ARRAY_LEN(shard_opts),
    .run = run_shard,
};

/* ---- the partition pass: collectives --------------------------------------- */

typedef struct cache_ent {
  int32_t from, to;
  ptc_sharding want;
} cache_ent;

typedef struct part {
  ptc_module *m;
  ptc_func *f;
  const ptc_mesh *mesh;
  cache_ent *cache;
  int32_t ncache, cap;
  int32_t pos; /* where the next reshard op goes */
  bool *tag_layout; /* non-NULL: the module has pipeline transfers */
} part;

/* Builds one collective at P->pos; returns its result or -1. */
static int32_t coll(part *P, ptc_opcode code, int32_t v, int axis, int32_t dim, ptc_loc loc) {
  ptc_attr at[3];
  int n = 0;
  at[n++] = ptc_attr_sym("axis", P->mesh->axes[axis].name);
  if (code != PTC_OP_ALL_REDUCE && code != PTC_OP_TO_PARTIAL) at[n++] = ptc_attr_int("dim", dim);
  if (code == PTC_OP_ALL_REDUCE || code == PTC_OP_REDUCE_SCATTER)
    at[n++] = ptc_attr_sym("op", "sum");
  ptc_build_args a = {.code = code, .nin = 1, .in = &v, .nattr = n, .attrs = at, .loc = loc};
  int32_t idx = ptc_build_at(P->f, P->pos, &a);
  if (idx < 0) return -1;
  P->pos++;
  return P->f->ops[idx].out[0];
}

/* The mesh axes of a mask, major (lowest index) first. */
static int axes_list(uint8_t mask, int *out) {
  int n = 0;
  for (int i = 0; i < PTC_MAX_MESH_AXES; i++)
    if (mask & (1u << i)) out[n++] = i;
  return n;
}

/* Makes value v (layout from) laid out as `to`, with ops at P->pos. */
static int32_t reshard(part *P, int32_t v, ptc_sharding to, ptc_loc loc) {
  ptc_sharding cur = P->f->values[v].shard;
  int32_t rank = vty(P->f, v)->rank;
  /* partial sums the target keeps stay (only when the dims already agree) */
  uint8_t kept = (uint8_t)(to.partial & cur.partial);
  uint8_t want_partial = to.partial;
  cur.partial &= (uint8_t)~kept;
  to.partial = 0;
  /* 1. partial sums: reduce_scatter into a dim the target splits, when the
   *    axis lands as that dim's minor split; else all_reduce */
  for (int a = 0; a < PTC_MAX_MESH_AXES && v >= 0; a++) {
    if (!(cur.partial & (1u << a))) continue;
    int32_t into = -1;
    for (int32_t d = 0; d < rank; d++) {
      uint8_t after = (uint8_t)(cur.dim_axes[d] | (1u << a));
      if ((to.dim_axes[d] & (1u << a)) && (cur.dim_axes[d] & ~to.dim_axes[d]) == 0 &&
          (cur.dim_axes[d] >> a) == 0 && (to.dim_axes[d] & after) == after &&
          (to.dim_axes[d] & ((1u << a) - 1u) & ~cur.dim_axes[d]) == 0)
        into = d;
    }
    v = into >= 0 ? coll(P, PTC_OP_REDUCE_SCATTER, v, a, into, loc)
                  : coll(P, PTC_OP_ALL_REDUCE, v, a, 0, loc);
    if (v >= 0) cur = P->f->values[v].shard;
  }
  /* 2. gathers: per dim, keep the common major prefix of the splits */
  int keep_n[PTC_MAX_RANK];
  for (int32_t d = 0; d < rank && v >= 0; d++) {
    int ca[PTC_MAX_MESH_AXES], ta[PTC_MAX_MESH_AXES];
    int nc = axes_list(cur.dim_axes[d], ca), nt = axes_list(to.dim_axes[d], ta);
    int k = 0;
    while (k < nc && k < nt && ca[k] == ta[k]) k++;
    keep_n[d] = k;
    for (int i = nc - 1; i >= k && v >= 0; i--) v = coll(P, PTC_OP_ALL_GATHER, v, ca[i], d, loc);
    if (v >= 0) cur = P->f->values[v].shard;
  }
  /* 3. partial sums the target wants: a whole value becomes one share per
   *    device (before any split over that axis) */
  for (int a = 0; a < PTC_MAX_MESH_AXES && v >= 0; a++)
    if (want_partial & ~kept & (1u << a)) v = coll(P, PTC_OP_TO_PARTIAL, v, a, 0, loc);
  /* 4. local slices for splits the target adds */
  for (int32_t d = 0; d < rank && v >= 0; d++) {
    int ta[PTC_MAX_MESH_AXES];
    int nt = axes_list(to.dim_axes[d], ta);
    for (int i = keep_n[d]; i < nt && v >= 0; i++) v = coll(P, PTC_OP_SHARD, v, ta[i], d, loc);
  }
  return v;
}

/* v laid out as `want` (cached), reshards inserted at P->pos. */
static bool zero_constant(const ptc_func *f, int32_t v) {
  if (f->values[v].kind != PTC_VALUE_OP) return false;
  const ptc_op *op = &f->ops[f->values[v].def];
  return op->code == PTC_OP_CONSTANT && ptc_op_attr_float(op, "value", 1.0) == 0.0;
}

static int32_t as_layout(part *P, int32_t v, const ptc_sharding *want, ptc_loc loc) {
  int32_t rank = vty(P->f, v)->rank;
  /* zeros are a partial sum of zeros: a constant 0 takes the partial axes
   * asked for (resetting a pipeline's gradient accumulator) */
  uint8_t more = (uint8_t)(want->partial & ~P->f->values[v].shard.partial);
  if (more && zero_constant(P->f, v)) P->f->values[v].shard.partial |= more;
  if (ptc_sharding_eq(&P->f->values[v].shard, want, rank)) return v;
  for (int32_t i = 0; i < P->ncache; i++)
    if (P->cache[i].from == v && ptc_sharding_eq(&P->cache[i].want, want, rank))
      return P->cache[i].to;
  int32_t r = reshard(P, v, *want, loc);
  if (r < 0) return -1;
  if (P->ncache == P->cap) {
    P->cap = P->cap ? 2 * P->cap : 64;
    P->cache = realloc(P->cache, sizeof *P->cache * (size_t)P->cap);
    PTC_ASSERT(P->cache);
  }
  P->cache[P->ncache++] = (cache_ent){v, r, *want};
  return r;
}

/* Forgets cached reshards of parameters and gathered activations (made
 * again in the backward part): ZeRO-3 frees a gathered parameter after its
 * forward use; under sequence parallelism the backward keeps the sequence-
 * split input of a column-parallel product and gathers it again, as
 * Megatron does (Korthikanti et al. 2022: activations / t). */
static bool gathered(const ptc_func *f, int32_t v) {
  return f->values[v].kind == PTC_VALUE_OP &&
         f->ops[f->values[v].def].code == PTC_OP_ALL_GATHER;
}

static void forget_params(part *P) {
  int32_t k = 0;
  for (int32_t i = 0; i < P->ncache; i++)
    if (!is_param(P->f, P->cache[i].from) && !gathered(P->f, P->cache[i].to))
      P->cache[k++] = P->cache[i];
  P->ncache = k;
}

/* Whether v (defined by op `at`) differs from its target only by partial
 * sums and is used only by add/sub: then it stays partial and the sum is
 * reduced once. */
static bool partial_for_sums(const ptc_func *f, int32_t v, int32_t at, const ptc_sharding *want) {
  const ptc_sharding *s = &f->values[v].shard;
  if (!s->partial) return false;
  for (int32_t d = 0; d < vty(f, v)->rank; d++)
    if (s->dim_axes[d] != want->dim_axes[d]) return false;
  bool used = false;
  for (int32_t i = at + 1; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    for (int32_t k = 0; k < op->nin; k++) {
      if (op->in[k] != v) continue;
      if (op->code == PTC_OP_ASSIGN && k == 1) { /* a variable that keeps partial sums */
        const ptc_param *p = &f->mod->params[f->values[op->in[0]].def];
        if (!ptc_sharding_eq(&p->shard, s, vty(f, v)->rank)) return false;
      } else if (op->code != PTC_OP_ADD && op->code != PTC_OP_SUB) {
        return false;
      }
      used = true;
    }
  }
  return used;
}

/* The layout the recv of `tag` produces (set by the shard pass). */
static ptc_sharding recv_layout(const ptc_module *m, int64_t tag) {
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    const ptc_func *f = m->funcs[fi];
    for (int32_t i = 0; i < f->nops; i++)
      if (f->ops[i].code == PTC_OP_RECV && ptc_op_attr_int(&f->ops[i], "tag", -1) == tag) {
        ptc_sharding s = f->values[f->ops[i].out[0]].shard;
        if (!s.present) s = replicated();
        s.partial = 0;
        return s;
      }
  }
  return replicated();
}

static int partition_func(part *P) {
  ptc_func *f = P->f;
  /* annotations from the shard pass are the targets */
  ptc_sharding *want = malloc(sizeof *want * (size_t)(f->nvalues + 1));
  PTC_ASSERT(want);
  for (int32_t v = 0; v < f->nvalues; v++) {
    want[v] = f->values[v].shard.present ? f->values[v].shard : replicated();
    want[v].partial = 0;
  }
  int32_t nwant = f->nvalues;
  /* the forward part ends at the op that defines the first returned value */
  int32_t loss_op = -1;
  if (f->nops > 0 && f->ops[f->nops - 1].code == PTC_OP_RETURN && f->ops[f->nops - 1].nin > 0) {
    int32_t lv = f->ops[f->nops - 1].in[0];
    if (f->values[lv].kind == PTC_VALUE_OP) loss_op = f->values[lv].def;
  }
  bool backward = false;
  int rc = 0;
  int32_t orig = -1; /* index of the op in the function as it came in */
  for (int32_t oi = 0; oi < f->nops && rc == 0; oi++) {
    orig++;
    if (!backward && loss_op >= 0 && orig > loss_op) {
      backward = true;
      forget_params(P);
    }
    ptc_op op = f->ops[oi]; /* copy: building ops moves the vector */
    ptc_loc loc = op.loc;
    P->pos = oi;
    if (op.code == PTC_OP_SEND) { /* as the receiving stage expects it */
      ptc_sharding need = P->tag_layout ? recv_layout(P->m, ptc_op_attr_int(&op, "tag", 0))
                                        : replicated();
      int32_t nv = as_layout(P, op.in[0], &need, loc);
      if (nv < 0) { rc = -1; break; }
      oi = P->pos;
      f->ops[oi].in[0] = nv;
      continue;
    }
    if (op.code == PTC_OP_ALL_REDUCE && op.nin == 1) { /* a reduction over pp: whole pieces in */
      ptc_sharding need = op.in[0] < nwant ? want[op.in[0]] : f->values[op.in[0]].shard;
      need.partial = 0;
      const ptc_attr *ax = ptc_op_attr(&op, "axis");
      int a = ax ? axis_index(P->mesh, ax->u.s) : -1;
      if (a >= 0) need.partial = (uint8_t)(f->values[op.in[0]].shard.partial & (1u << a));
      int32_t nv = as_layout(P, op.in[0], &need, loc);
      if (nv < 0) { rc = -1; break; }
      oi = P->pos;
      f->ops[oi].in[0] = nv;
      ptc_sharding res = f->values[nv].shard;
      if (a >= 0) res.partial &= (uint8_t)~(1u << a);
      f->values[f->ops[oi].out[0]].shard = res;
      continue;
    }
    if (ptc_opinfo_get(op.code)->flags & PTC_OPF_COLLECTIVE) continue; /* already explicit */
    if (op.code == PTC_OP_ASSIGN) {
      ptc_sharding s = P->m->params[f->values[op.in[0]].def].shard;
      int32_t nv = as_layout(P, op.in[1], &s, loc);
      if (nv < 0) { rc = -1; break; }
      oi = P->pos;
      f->ops[oi].in[1] = nv;
      continue;
    }
    if (op.code == PTC_OP_RETURN) {
      /* results go to the host whole, except a pipeline chunk's stash,
       * which its backward takes in pieces */
      bool stash = strncmp(f->name, "fwd.", 4) == 0;
      for (int32_t i = 0; i < op.nin && rc == 0; i++) {
        int32_t v = f->ops[P->pos].in[i];
        /* (a value made by an earlier reshard already has its layout) */
        ptc_sharding s = !stash ? replicated() : v < nwant ? want[v] : f->values[v].shard;
        s.partial = 0;
        int32_t nv = as_layout(P, f->ops[P->pos].in[i], &s, loc);
        if (nv < 0) rc = -1;
        else f->ops[P->pos].in[i] = nv;
        if (i < f->nresults) f->result_shards[i] = s;
      }
      oi = P->pos;
      continue;
    }
    ptc_shard_rule r;
    int32_t nin = op.nin;
    uint8_t fax[PTC_SR_MAX_FACTORS] = {0};
    bool has_rule = ptc_shard_rule_get(f, &f->ops[oi], &r);
    /* a sum of partial sums over the same axes is itself one: add and sub
     * keep them (one reduction instead of one per operand, e.g. the two
     * gradients of a tied embedding); those axes then split no factor */
    uint8_t keep_partial = 0;
    if ((op.code == PTC_OP_ADD || op.code == PTC_OP_SUB) && has_rule) {
      keep_partial = f->values[op.in[0]].shard.partial;
      uint8_t stored = 0; /* a variable kept as a partial sum (an accumulator) */
      bool same = true;
      for (int32_t i = 0; i < nin; i++) {
        const ptc_value *vi = &f->values[op.in[i]];
        same &= ptc_type_eq(&vi->type, vty(f, op.out[0]));
        if (vi->shard.partial != keep_partial) keep_partial = 0;
        if (vi->kind == PTC_VALUE_PARAM) stored |= vi->shard.partial;
      }
      /* whole operands join a partial-sum variable as shares (to_partial,
       * no traffic) rather than the variable being reduced to add them */
      if (!same) keep_partial = 0;
      else if (stored) keep_partial = stored;
    }
    if (has_rule) {
      bool set[PTC_SR_MAX_FACTORS] = {0}, contract[PTC_SR_MAX_FACTORS];
      contracting(&op, &r, contract);
      uint8_t used = keep_partial;
      /* axes the other operands are split over are not for a parameter's
       * contracting split (a ZeRO-3 table's rows are gathered, not summed,
       * when the ids are split over dp) */
      uint8_t res_axes = 0;
      for (int32_t i = 0; i < nin; i++)
        if (!is_param(f, op.in[i]))
          res_axes |= used_axes(&f->values[op.in[i]].shard, vty(f, op.in[i])->rank);
      for (int pass = 0; pass < 2; pass++) {
        for (int32_t i = 0; i < nin; i++)
          if (is_param(f, op.in[i]) == (pass == 1)) {
            ptc_sharding s = f->values[op.in[i]].shard;
            uint8_t u = pass == 1 ? (uint8_t)(used | res_axes) : used;
            take_from(P->mesh, f, &op, &r, i, &s, true, contract, fax, set, &u, NULL);
            used |= (uint8_t)(u & ~(pass == 1 ? res_axes : 0));
          }
      }
      for (int32_t j = 0; j < op.nout; j++)
        take_from(P->mesh, f, &op, &r, nin + j, &want[op.out[j]], false, contract, fax, set,
                  &used, NULL);
    }
    /* operands as the factors want them */
    for (int32_t i = 0; i < nin; i++) {
      int32_t v = f->ops[P->pos].in[i];
      ptc_sharding need = has_rule ? layout_of(&op, &r, fax, i, vty(f, v)->rank) : replicated();
      need.partial = keep_partial;
      int32_t nv = as_layout(P, v, &need, loc);
      if (nv < 0) { rc = -1; break; }
      f->ops[P->pos].in[i] = nv;
    }
    if (rc) break;
    oi = P->pos;
    /* results as the factors make them, then as annotated */
    for (int32_t j = 0; j < op.nout; j++) {
      int32_t v = f->ops[oi].out[j];
      f->values[v].shard = has_rule ? layout_of(&op, &r, fax, nin + j, vty(f, v)->rank)
                                    : replicated();
      f->values[v].shard.partial |= keep_partial;
    }
    int32_t after = oi + 1;
    for (int32_t j = 0; j < op.nout && rc == 0; j++) {
      int32_t v = f->ops[oi].out[j];
      if (v >= nwant) continue;
      if (ptc_sharding_eq(&f->values[v].shard, &want[v], vty(f, v)->rank)) continue;
      if (partial_for_sums(f, v, oi, &want[v])) continue; /* reduced after the sum */
      P->pos = after;
      int32_t nv = reshard(P, v, want[v], loc);
      if (nv < 0) { rc = -1; break; }
      ptc_func_replace_uses(f, v, nv, P->pos);
      after = P->pos;
    }
    oi = after - 1;
  }
  free(want);
  return rc;
}

/* ZeRO stage 1 (ZeRO's P_os): a gradient is reduced to its piece where the
 * update begins, not as soon as it is complete, so each rank holds the
 * whole (unreduced) gradients until then, as the stage is defined: 4 + 12/N
 * bytes per parameter in mixed precision, against stage 2's 2 + 14/N; the
 * bytes sent are the same.  Each reduce_scatter of a %grad.<p> value moves
 * down to its first reader. */
static void sink_gradient_reductions(ptc_func *f) {
  for (int32_t i = f->nops - 1; i >= 0; i--) {
    ptc_op *op = &f->ops[i];
    if (op->code != PTC_OP_REDUCE_SCATTER) continue;
    const char *n = f->values[op->in[0]].name;
    if (!n || strncmp(n, "grad.", 5) != 0) continue;
    int32_t r = op->out[0], first = -1;
    for (int32_t k = i + 1; k < f->nops && first < 0; k++)
      for (int32_t a = 0; a < f->ops[k].nin; a++)
        if (f->ops[k].in[a] == r) first = k;
    if (first <= i + 1) continue;
    ptc_op moved = *op;
    memmove(&f->ops[i], &f->ops[i + 1], (size_t)(first - 1 - i) * sizeof *f->ops);
    f->ops[first - 1] = moved;
  }
  ptc_func_reindex(f);
}

static int run_partition(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  (void)o;
  if (ptc_mesh_size(&m->mesh) <= 1) return 0;
  for (int32_t p = 0; p < m->nparams; p++)
    if (!m->params[p].shard.present) {
      ptc_error(m->ctx, m->params[p].loc, "partition: parameter @%s has no sharding; run "
                "the shard pass first (it decides every value's layout)", m->params[p].name);
      return -1;
    }
  part P = {.m = m, .mesh = &m->mesh};
  bool has_transfers = ptc_module_get_attr(m, "pipeline.stages") != NULL;
  P.tag_layout = has_transfers ? &has_transfers : NULL;
  int rc = 0;
  for (int32_t fi = 0; fi < m->nfuncs && rc == 0; fi++) {
    P.f = m->funcs[fi];
    P.ncache = 0;
    rc = partition_func(&P);
    const ptc_attr *za = ptc_module_get_attr(m, "zero");
    if (rc == 0 && za && za->kind == PTC_ATTR_INT && za->u.i == 1)
      sink_gradient_reductions(P.f);
  }
  free(P.cache);
  ptc_attr done = ptc_attr_bool("partitioned", true);
  ptc_module_set_attr(m, &done);
  *changed = true;
  return rc;
}

const ptc_pass_info ptc_pass_partition = {
    .name = "partition",
    .summary = "rewrite every function to run on each device's pieces, with explicit "
               "collectives where layouts change",
    .opts = NULL,
    .nopts = 0,
    .run = run_partition,
};
