/* bucket.c -- gradient buckets: fewer, larger all-reduces.
 *
 * After `partition`, each gradient is all-reduced over dp right after it is
 * complete.  Many small messages cost latency; data-parallel trainers
 * (PyTorch DDP, Megatron) pack gradients into buckets of some megabytes and
 * reduce each bucket once it is full.  This pass does the same to the IR:
 * consecutive all_reduce ops over one mesh axis whose operands are whole
 * apart from that partial sum are packed
 *
 *   %f1 = reshape %g1 : f32[n1] partial<dp>        (one per member)
 *   %c  = concat %f1, %f2, ... {axis = 0} : f32[n] partial<dp>
 *   %r  = all_reduce %c {axis = dp, op = sum} : f32[n]
 *   %s1 = slice %r {axis = 0, start = 0, end = n1}; %y1 = reshape %s1 : <g1's type>
 *
 * The packed all_reduce is issued as soon as the last member's gradient is
 * ready, and a member joins only if nothing uses its reduced value before
 * that point.  A bucket closes at
 * `size-mb` megabytes.  Members split over another axis (a tensor-parallel
 * weight's gradient) are left alone: their pieces are not one block of a
 * flat buffer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

static const ptc_pass_opt_spec bucket_opts[] = {
    {.name = "size-mb", .kind = PTC_PASS_OPT_INT, .dflt = 25, .min = 0, .max = 1 << 20,
     .help = "bucket size in megabytes (0: no buckets)"},
};

/* Whether all_reduce op i is a bucket candidate: a float dtype (a bucket
 * holds one), one axis, the operand whole on every dim and partial over
 * exactly that axis. */
static bool candidate(const ptc_func *f, const ptc_op *op, int *axis) {
  if (op->code != PTC_OP_ALL_REDUCE || op->nin != 1) return false;
  const ptc_attr *k = ptc_op_attr(op, "op");
  if (k && strcmp(k->u.s, "sum") != 0) return false;
  const ptc_value *x = &f->values[op->in[0]];
  if (x->kind == PTC_VALUE_OP && f->ops[x->def].code == PTC_OP_CONCAT) return false; /* a bucket */
  if (!ptc_dtype_is_float(x->type.dtype) || x->type.rank < 1 || !x->shard.present) return false;
  for (int32_t d = 0; d < x->type.rank; d++)
    if (x->shard.dim_axes[d]) return false;
  const ptc_attr *ax = ptc_op_attr(op, "axis");
  int a = ptc_mesh_axis(&f->mod->mesh, ax->u.s, strlen(ax->u.s));
  if (a < 0 || x->shard.partial != (1u << a)) return false;
  *axis = a;
  return true;
}

/* The first op index after `at` that reads v, or nops. */
static int32_t first_use(const ptc_func *f, int32_t v, int32_t at) {
  for (int32_t i = at + 1; i < f->nops; i++)
    for (int32_t k = 0; k < f->ops[i].nin; k++)
      if (f->ops[i].in[k] == v) return i;
  return f->nops;
}

/* Where v is ready: the index after the op defining it (0 for arguments
 * and parameters). */
static int32_t ready_at(const ptc_func *f, int32_t v) {
  return f->values[v].kind == PTC_VALUE_OP ? f->values[v].def + 1 : 0;
}

/* Packs members (op indices, ascending) into one all_reduce issued at
 * `issue` (where the last of their operands is ready).  Returns 0 or -1. */
static int pack(ptc_func *f, const int32_t *mem, int32_t n, int axis, int32_t issue) {
  ptc_module *m = f->mod;
  int32_t last = mem[n - 1];
  ptc_loc loc = f->ops[last].loc;
  int32_t *flat = ptc_xmalloc((size_t)n * sizeof *flat);
  int32_t *src = ptc_xmalloc((size_t)n * sizeof *src), *res = ptc_xmalloc((size_t)n * sizeof *res);
  ptc_type *ty = ptc_xmalloc((size_t)n * sizeof *ty);
  int64_t total = 0;
  for (int32_t i = 0; i < n; i++) {
    src[i] = f->ops[mem[i]].in[0];
    res[i] = f->ops[mem[i]].out[0];
    ty[i] = f->values[src[i]].type;
    total += ptc_type_numel(&ty[i]);
  }
  int rc = -1;
  int32_t pos = issue; /* new ops go here, in order */
  ptc_sharding part;
  memset(&part, 0, sizeof part);
  part.present = true;
  part.partial = (uint8_t)(1u << axis);
  for (int32_t i = 0; i < n; i++) {
    ptc_type ft = {.dtype = ty[0].dtype, .rank = 1, .dims = {ptc_type_numel(&ty[i])}};
    ptc_build_args a = {.code = PTC_OP_RESHAPE, .nin = 1, .in = &src[i], .ngiven = 1,
                        .given = &ft, .given_shard = &part, .loc = loc};
    int32_t idx = ptc_build_at(f, pos++, &a);
    if (idx < 0) goto out;
    flat[i] = f->ops[idx].out[0];
  }
  ptc_attr ax0 = ptc_attr_int("axis", 0);
  ptc_type ct = {.dtype = ty[0].dtype, .rank = 1, .dims = {total}};
  ptc_build_args ca = {.code = PTC_OP_CONCAT, .nin = n, .in = flat, .nattr = 1, .attrs = &ax0,
                       .ngiven = 1, .given = &ct, .given_shard = &part, .loc = loc};
  int32_t idx = ptc_build_at(f, pos++, &ca);
  if (idx < 0) goto out;
  int32_t cat = f->ops[idx].out[0];
  ptc_attr ar[2] = {ptc_attr_sym("axis", m->mesh.axes[axis].name), ptc_attr_sym("op", "sum")};
  ptc_build_args ra = {.code = PTC_OP_ALL_REDUCE, .nin = 1, .in = &cat, .nattr = 2, .attrs = ar,
                       .loc = loc};
  idx = ptc_build_at(f, pos++, &ra);
  if (idx < 0) goto out;
  int32_t red = f->ops[idx].out[0];
  ptc_sharding whole;
  memset(&whole, 0, sizeof whole);
  whole.present = true;
  int64_t off = 0;
  for (int32_t i = 0; i < n; i++) {
    int64_t len = ptc_type_numel(&ty[i]);
    ptc_attr sa[3] = {ptc_attr_int("axis", 0), ptc_attr_int("start", off),
                      ptc_attr_int("end", off + len)};
    ptc_type st = {.dtype = ty[0].dtype, .rank = 1, .dims = {len}};
    ptc_build_args sl = {.code = PTC_OP_SLICE, .nin = 1, .in = &red, .nattr = 3, .attrs = sa,
                         .ngiven = 1, .given = &st, .given_shard = &whole, .loc = loc};
    idx = ptc_build_at(f, pos++, &sl);
    if (idx < 0) goto out;
    int32_t piece = f->ops[idx].out[0];
    ptc_build_args rs = {.code = PTC_OP_RESHAPE, .nin = 1, .in = &piece, .ngiven = 1,
                         .given = &ty[i], .given_shard = &whole, .loc = loc};
    idx = ptc_build_at(f, pos++, &rs);
    if (idx < 0) goto out;
    int32_t y = f->ops[idx].out[0];
    if (f->values[res[i]].name)
      f->values[y].name = f->values[res[i]].name;
    ptc_func_replace_uses(f, res[i], y, pos);
    off += len;
  }
  /* drop the members (those at or after `issue` moved by what was inserted) */
  int32_t added = pos - issue;
  bool *keep = ptc_xmalloc((size_t)f->nops);
  memset(keep, 1, (size_t)f->nops);
  for (int32_t i = 0; i < n; i++) keep[mem[i] >= issue ? mem[i] + added : mem[i]] = false;
  ptc_func_erase_ops(f, keep);
  free(keep);
  rc = 0;
out:
  free(flat);
  free(src);
  free(res);
  free(ty);
  return rc;
}

static int run_bucket(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  int64_t limit = ptc_pass_opt_int(o, "size-mb") * 1000000;
  if (limit <= 0 || ptc_mesh_size(&m->mesh) <= 1) return 0;
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    ptc_func *f = m->funcs[fi];
    for (int32_t i = 0; i < f->nops; i++) {
      int axis;
      if (!candidate(f, &f->ops[i], &axis)) continue;
      int32_t mem[256];
      int32_t n = 0;
      int64_t bytes = 0;
      int32_t bound = f->nops; /* the bucket must be issued before every use */
      int32_t issue = 0;       /* and after every operand is ready */
      for (int32_t j = i; j < f->nops && n < 256 && bytes < limit; j++) {
        int a2;
        if (!candidate(f, &f->ops[j], &a2) || a2 != axis ||
            f->values[f->ops[j].in[0]].type.dtype != f->values[f->ops[i].in[0]].type.dtype)
          continue;
        int32_t r = ready_at(f, f->ops[j].in[0]);
        int32_t u = first_use(f, f->ops[j].out[0], j);
        if ((r > issue ? r : issue) > (u < bound ? u : bound)) break;
        mem[n++] = j;
        bytes += ptc_type_bytes(&f->values[f->ops[j].in[0]].type);
        if (r > issue) issue = r;
        if (u < bound) bound = u;
      }
      if (n < 2) continue;
      if (pack(f, mem, n, axis, issue) != 0) return -1;
      *changed = true;
    }
  }
  return 0;
}

const ptc_pass_info ptc_pass_bucket = {
    .name = "bucket",
    .summary = "pack consecutive gradient all-reduces over one axis into buckets of "
               "size-mb megabytes, each issued when its last gradient is ready",
    .opts = bucket_opts,
    .nopts = PTC_ARRAY_LEN(bucket_opts),
    .run = run_bucket,
};
