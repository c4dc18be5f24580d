/* fuse.c -- the `fuse` pass: groups element-wise ops, row ops and
 * reductions into kernels.
 *
 * A group is a run of contiguous ops tagged `group = N` (ir.h); codegen
 * compiles each group into one kernel that reads its inputs once and
 * writes its outputs once, instead of one pass over memory per op.  The
 * wins on a transformer: bias add + GELU after a matmul, residual add +
 * LayerNorm, the whole cross-entropy with its gradient, GELU's gradient
 * with the bias gradient's reduction, and each parameter's AdamW update
 * with the gradient-clipping scale.
 *
 * How: one greedy sweep in program order.  A group starts at a fusible op
 * (not a lone constant) and grows by the next op as long as
 * ptc_group_analyze accepts the longer run -- the same analysis that the
 * verifier, codegen and the runtime use, so the pass cannot make a group
 * they would reject.  Ops are never moved: matmuls, attention, embeddings,
 * collectives, assigns and shape ops end a group where they stand.
 *
 * Group ids are unique in the module (not only in each function), so a
 * plan's kernels `ptc_k<N>` never clash.  Ops already in a group (from an
 * earlier run of the pass, or a hand-written file) are left alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

static const ptc_pass_opt_spec fuse_opts[] = {
    {.name = "max-ops", .kind = PTC_PASS_OPT_INT, .dflt = 64, .min = 1, .max = 1 << 20,
     .help = "the most ops in one group"},
    {.name = "min-ops", .kind = PTC_PASS_OPT_INT, .dflt = 1, .min = 1, .max = 1 << 20,
     .help = "runs shorter than this stay runtime ops"},
    {.name = "explain", .kind = PTC_PASS_OPT_BOOL, .dflt = 0,
     .help = "note at each group's last op why it ends there"},
};

/* Adds `group = id` to op's attributes (kept sorted by name). */
static void set_group(ptc_module *m, ptc_op *op, int64_t id) {
  const char *name = ptc_intern_cstr(m->ctx, PTC_GROUP_ATTR);
  ptc_attr *v = ptc_arena_alloc(&m->arena, (size_t)(op->nattr + 1) * sizeof *v);
  int32_t n = 0;
  bool placed = false;
  for (int32_t i = 0; i < op->nattr; i++) {
    if (!placed && strcmp(op->attrs[i].name, name) > 0) {
      v[n++] = ptc_attr_int(name, id);
      placed = true;
    }
    v[n++] = op->attrs[i];
  }
  if (!placed) v[n++] = ptc_attr_int(name, id);
  op->attrs = v;
  op->nattr = n;
}

static int64_t max_group_id(const ptc_module *m) {
  int64_t mx = -1;
  for (int32_t k = 0; k < m->nfuncs; k++)
    for (int32_t i = 0; i < m->funcs[k]->nops; i++) {
      int64_t id = ptc_op_group(&m->funcs[k]->ops[i]);
      if (id > mx) mx = id;
    }
  return mx;
}

/* Where a group may start: a fusible op not yet grouped.  A constant
 * alone is not worth a kernel; it joins the group of the ops around it. */
static bool may_start(const ptc_func *f, const ptc_op *op) {
  return op->code != PTC_OP_CONSTANT && ptc_op_group(op) < 0 && ptc_op_fusible(f, op);
}

static int32_t fuse_func(ptc_func *f, const ptc_pass_opts *o, int64_t *next_id) {
  int64_t max_ops = ptc_pass_opt_int(o, "max-ops"), min_ops = ptc_pass_opt_int(o, "min-ops");
  bool explain = ptc_pass_opt_bool(o, "explain");
  ptc_ctx *ctx = f->mod->ctx;
  int32_t *last = ptc_func_last_use(f);
  int32_t ngroups = 0;
  char why[512];
  for (int32_t i = 0; i < f->nops;) {
    if (!may_start(f, &f->ops[i])) {
      i++;
      continue;
    }
    /* the longest valid run from i: grow while the analysis accepts it */
    int32_t end = i, bad = i;
    ptc_group_sig sig;
    why[0] = 0;
    while (end < f->nops && end - i < max_ops && ptc_op_group(&f->ops[end]) < 0) {
      if (ptc_group_analyze(f, i, end + 1, last, &sig, why, sizeof why, &bad) < 0) break;
      ptc_group_sig_fini(&sig);
      end++;
    }
    if (end == i) { /* the op alone cannot be a kernel */
      if (explain) ptc_note(ctx, f->ops[i].loc, "fuse: no group: %s", why);
      i++;
      continue;
    }
    /* constants just before the start (left there because a constant does
     * not start a group) join it when the analysis agrees */
    int32_t start = i;
    while (start > 0 && f->ops[start - 1].code == PTC_OP_CONSTANT &&
           ptc_op_group(&f->ops[start - 1]) < 0 && end - (start - 1) <= max_ops &&
           ptc_group_analyze(f, start - 1, end, last, &sig, NULL, 0, NULL) == 0) {
      ptc_group_sig_fini(&sig);
      start--;
    }
    if (end - start < min_ops) {
      i = end;
      continue;
    }
    int64_t id = (*next_id)++;
    for (int32_t k = start; k < end; k++) set_group(f->mod, &f->ops[k], id);
    ngroups++;
    if (explain) {
      const ptc_op *stop = end < f->nops ? &f->ops[end] : NULL;
      if (!stop)
        ptc_note(ctx, f->ops[end - 1].loc, "fuse: group %lld ends the function", (long long)id);
      else if (end - start >= max_ops)
        ptc_note(ctx, f->ops[end - 1].loc, "fuse: group %lld has max-ops = %lld ops",
                 (long long)id, (long long)max_ops);
      else
        ptc_note(ctx, f->ops[end - 1].loc, "fuse: group %lld (%d op%s) ends before '%s': %s",
                 (long long)id, (int)(end - start), end - start == 1 ? "" : "s",
                 ptc_opinfo_get(stop->code)->name,
                 why[0] ? why : "it is in another group");
    }
    i = end;
  }
  free(last);
  return ngroups;
}

static int fuse_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  int64_t next_id = max_group_id(m) + 1;
  const ptc_attr *pa = ptc_module_get_attr(m, "partitioned");
  if (pa && pa->kind == PTC_ATTR_BOOL && pa->u.b && ptc_mesh_size(&m->mesh) > 1) {
    /* a partitioned module runs on each rank's pieces: decide groups on the
     * shapes a rank holds (what the kernels are compiled for), then copy
     * them onto the same ops here */
    ptc_module *lm = ptc_module_localize(m);
    const int64_t keep_out = INT64_MAX; /* a group no kernel gets */
    for (int32_t k = 0; k < m->nfuncs; k++) {
      /* generated kernels average over the rows they see; a mean over rows
       * split across the mesh needs the runtime's kernel (global count) */
      ptc_func *lf = lm->funcs[k];
      for (int32_t i = 0; i < lf->nops; i++) {
        ptc_op *op = &lf->ops[i];
        if (op->code != PTC_OP_CROSS_ENTROPY && op->code != PTC_OP_CROSS_ENTROPY_GRAD &&
            op->code != PTC_OP_REDUCE_MEAN)
          continue;
        const ptc_value *x = &lf->values[op->in[op->code == PTC_OP_CROSS_ENTROPY_GRAD ? 1 : 0]];
        bool split = false;
        for (int32_t d = 0; d < x->type.rank; d++) split |= x->shard.dim_axes[d] != 0;
        if (split && ptc_op_group(op) < 0) set_group(lm, op, keep_out);
      }
      if (fuse_func(lf, o, &next_id) == 0) continue;
      *changed = true;
      for (int32_t i = 0; i < m->funcs[k]->nops; i++) {
        int64_t id = ptc_op_group(&lm->funcs[k]->ops[i]);
        if (id >= 0 && id != keep_out && ptc_op_group(&m->funcs[k]->ops[i]) < 0)
          set_group(m, &m->funcs[k]->ops[i], id);
      }
    }
    ptc_module_destroy(lm);
    return 0;
  }
  for (int32_t k = 0; k < m->nfuncs; k++)
    if (fuse_func(m->funcs[k], o, &next_id) > 0) *changed = true;
  return 0;
}

const ptc_pass_info ptc_pass_fuse = {
    .name = "fuse",
    .summary = "group element-wise ops, row ops (norms, softmax, cross-entropy) and "
               "reductions into kernels (`group = N`)",
    .opts = fuse_opts,
    .nopts = PTC_ARRAY_LEN(fuse_opts),
    .run = fuse_run,
};
