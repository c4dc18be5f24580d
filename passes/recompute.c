/* recompute.c -- activation recomputation (checkpointing): the backward of
 * @step recomputes some forward values instead of keeping them.
 *
 * Runs after autodiff, before pipeline.  @step is split into its forward
 * (the ops the loss depends on) and the rest, its backward.  The pass picks
 * *regions* of forward ops.  A value defined in a region is *kept* (the
 * backward reads the original) when `return` reads it or, in full mode, when
 * a forward op outside the region reads it: it is live across the region's
 * boundary anyway (the next layer's input, a checkpoint).  In selective mode
 * the region's last value feeds the second matmul of the attention, outside
 * the region, and is recomputed all the same: not keeping it is the point.
 * Every other value of the region that a backward op reads is recomputed: the
 * region's ops that produce it are copied, from the kept values, parameters
 * and inputs, in program order, right before the first backward op that
 * reads one of them, and every backward op reads the copies from then on.
 * So a region's activations are live only while its own backward runs.
 *
 * The copies carry `recompute = true` (a generic attribute, like `group`):
 * dumps show them, `cse` never merges them with the originals (it compares
 * attributes), and they are ordinary forward math for every later pass:
 * `shard` and `partition` treat them like the ops they copy (a tensor-
 * parallel all_reduce after a copied row-parallel matmul is issued again),
 * and `pipeline` places each in the backward chunk of the op it copies, so
 * a chunk's stash shrinks to the kept values (where a stage boundary cuts a
 * region, the value crossing it is read instead of a copy from another
 * chunk).  A copy computes the same op on
 * the same operands as its original, so the loss and every gradient are
 * bit-identical with and without recomputation.
 *
 * Modes (option `mode`):
 *   none       nothing (the default).
 *   full       Korthikanti et al. 2022's full recomputation: one region per
 *              transformer layer, so per layer only its input is kept.  The
 *              layers are the iterations of the .ptg `repeat` block, found
 *              from the parameters' names: the frontend names iteration i's
 *              parameters <prefix><i>.<name>, and the prefix whose indices
 *              run 0..N-1 with the same names in every iteration is the
 *              layer stack.  Layer i's region runs from the first forward op
 *              reading one of its parameters to the first op of layer i+1
 *              (the last layer: to the first op after it that reads a
 *              parameter of no layer, the head).  `layers=K`
 *              recomputes only layers 0..K-1 (0: all).
 *   selective  only the attention core, written out as ops: a matmul, then
 *              element-wise ops, a softmax and element-wise ops, read by a
 *              second matmul; the region is those ops up to (not including)
 *              the second matmul, so no seq x seq value is kept.  The fused
 *              `attention` op never keeps its scores (attention_grad
 *              recomputes them), so models using it have nothing to select.
 *
 * Module attributes record what was done: recompute.mode, recompute.layers
 * (full), recompute.ops (copies made).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

enum { MODE_NONE, MODE_SELECTIVE, MODE_FULL };

static const ptc_pass_opt_spec recompute_opts[] = {
    {.name = "mode", .kind = PTC_PASS_OPT_CHOICE, .choices = "none|selective|full",
     .dflt = MODE_NONE,
     .help = "what the backward recomputes: nothing, the attention core, whole layers"},
    {.name = "layers", .kind = PTC_PASS_OPT_INT, .dflt = 0, .min = 0, .max = 1 << 20,
     .help = "full mode: recompute layers 0..N-1 only (0: every layer)"},
};

typedef struct rc {
  ptc_module *m;
  ptc_func *f;
  bool *fwd;       /* per op: the loss depends on it */
  int32_t *region; /* per op: its region, or -1 */
  int32_t nregions;
  /* a value read by a forward op outside its region is kept (full: the next
   * layer's input); selective regions end in the op that reads them */
  bool keep_exits;
} rc;

/* ---- the forward ------------------------------------------------------------ */

static void mark_forward(rc *R) {
  ptc_func *f = R->f;
  int32_t loss = f->ops[f->nops - 1].in[0];
  int32_t *stack = ptc_xmalloc((size_t)(f->nvalues + 1) * sizeof *stack);
  bool *seen = ptc_xcalloc((size_t)f->nvalues + 1, sizeof *seen);
  int32_t n = 0;
  stack[n++] = loss;
  seen[loss] = true;
  while (n) {
    int32_t v = stack[--n];
    if (f->values[v].kind != PTC_VALUE_OP) continue;
    int32_t d = f->values[v].def;
    R->fwd[d] = true;
    for (int32_t k = 0; k < f->ops[d].nin; k++) {
      int32_t u = f->ops[d].in[k];
      if (!seen[u]) {
        seen[u] = true;
        stack[n++] = u;
      }
    }
  }
  free(seen);
  free(stack);
}

/* ---- full: the layers of the repeat block ----------------------------------- */

/* "h12.attn.w" -> index 12, prefix "h" (its length in *plen), suffix
 * "attn.w"; -1 when the name is not <letters/_><digits>.<rest>. */
static int64_t layer_index(const char *name, size_t *plen, const char **suffix) {
  size_t i = 0;
  while ((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= 'A' && name[i] <= 'Z') ||
         name[i] == '_')
    i++;
  if (i == 0 || name[i] < '0' || name[i] > '9') return -1;
  size_t p = i;
  int64_t v = 0;
  while (name[i] >= '0' && name[i] <= '9') {
    if (v > (INT64_C(1) << 40)) return -1;
    v = v * 10 + (name[i++] - '0');
  }
  if (name[i] != '.' || !name[i + 1]) return -1;
  if (i - p > 1 && name[p] == '0') return -1; /* "h01." is not a repeat's name */
  *plen = p;
  *suffix = name + i + 1;
  return v;
}

/* Whether every index 0..n-1 of prefix (len plen) has a parameter named
 * <prefix><i>.<suffix> for each suffix that index 0 has, and no index has
 * more. */
static bool uniform_layers(const ptc_module *m, const char *prefix, size_t plen, int64_t n) {
  int32_t *per = ptc_xcalloc((size_t)n, sizeof *per);
  bool ok = true;
  for (int32_t p = 0; p < m->nparams && ok; p++) {
    size_t l;
    const char *suf;
    int64_t i = layer_index(m->params[p].name, &l, &suf);
    if (i < 0 || l != plen || memcmp(m->params[p].name, prefix, plen) != 0) continue;
    if (i >= n) { ok = false; break; }
    per[i]++;
    if (i == 0) continue;
    char want[1024];
    snprintf(want, sizeof want, "%.*s0.%s", (int)plen, prefix, suf);
    if (ptc_module_find_param(m, want) < 0) ok = false;
  }
  for (int64_t i = 0; i < n && ok; i++) ok = per[i] > 0 && per[i] == per[0];
  free(per);
  return ok;
}

/* The layer of every parameter (-1: none), for the longest stack of layers
 * among the parameters' prefixes; returns the number of layers (0: none). */
static int64_t find_layers(const ptc_module *m, int32_t *layer_of) {
  const char *best = NULL;
  size_t best_len = 0;
  int64_t best_n = 0;
  for (int32_t p = 0; p < m->nparams; p++) {
    layer_of[p] = -1;
    size_t l;
    const char *suf;
    if (layer_index(m->params[p].name, &l, &suf) != 0) continue; /* index 0 names a stack */
    const char *pre = m->params[p].name;
    if (best && l == best_len && memcmp(pre, best, l) == 0) continue;
    int64_t n = 0; /* the highest index of this prefix, plus one */
    for (int32_t q = 0; q < m->nparams; q++) {
      size_t lq;
      const char *sq;
      int64_t i = layer_index(m->params[q].name, &lq, &sq);
      if (i >= 0 && lq == l && memcmp(m->params[q].name, pre, l) == 0 && i + 1 > n) n = i + 1;
    }
    if (n > m->nparams || n <= best_n || !uniform_layers(m, pre, l, n)) continue;
    best = pre;
    best_len = l;
    best_n = n;
  }
  if (!best) return 0;
  for (int32_t p = 0; p < m->nparams; p++) {
    size_t l;
    const char *suf;
    int64_t i = layer_index(m->params[p].name, &l, &suf);
    if (i >= 0 && l == best_len && memcmp(m->params[p].name, best, l) == 0)
      layer_of[p] = (int32_t)i;
  }
  return best_n;
}

/* One region per layer 0..want-1 (want 0: all).  Returns the number of
 * layers recomputed, or -1 (reported). */
static int64_t full_regions(rc *R, int64_t want) {
  ptc_module *m = R->m;
  ptc_func *f = R->f;
  int32_t *layer_of = ptc_xmalloc((size_t)(m->nparams + 1) * sizeof *layer_of);
  int64_t n = find_layers(m, layer_of);
  if (n == 0) {
    free(layer_of);
    ptc_error(m->ctx, f->loc, "recompute: mode=full found no layers: it recomputes the "
              "iterations of a .ptg `repeat N as h { ... }` block, whose parameters are "
              "named h0.*, h1.*, ...; this model has none (use mode=none or selective)");
    return -1;
  }
  int32_t *first = ptc_xmalloc((size_t)n * sizeof *first);
  int32_t *last = ptc_xmalloc((size_t)n * sizeof *last);
  for (int64_t l = 0; l < n; l++) first[l] = last[l] = -1;
  for (int32_t i = 0; i < f->nops; i++) {
    if (!R->fwd[i]) continue;
    for (int32_t k = 0; k < f->ops[i].nin; k++) {
      const ptc_value *v = &f->values[f->ops[i].in[k]];
      if (v->kind != PTC_VALUE_PARAM || layer_of[v->def] < 0) continue;
      int32_t l = layer_of[v->def];
      if (first[l] < 0) first[l] = i;
      last[l] = i;
    }
  }
  int64_t rc_n = -1;
  for (int64_t l = 0; l < n; l++) {
    if (first[l] < 0) {
      ptc_error(m->ctx, f->loc, "recompute: layer %lld's parameters are not read by the "
                "forward of @step", (long long)l);
      goto out;
    }
    if (l > 0 && first[l] <= last[l - 1]) {
      ptc_error(m->ctx, f->ops[first[l]].loc, "recompute: layer %lld starts before layer "
                "%lld ends; mode=full needs the layers one after another", (long long)l,
                (long long)(l - 1));
      goto out;
    }
  }
  /* the last layer ends where an op after it reads a parameter of no layer
   * (the head), so its output is what it keeps */
  int32_t end = last[n - 1] + 1;
  while (end < f->nops && R->fwd[end]) {
    bool head = false;
    for (int32_t k = 0; k < f->ops[end].nin && !head; k++) {
      const ptc_value *v = &f->values[f->ops[end].in[k]];
      head = v->kind == PTC_VALUE_PARAM && layer_of[v->def] < 0;
    }
    if (head) break;
    end++;
  }
  rc_n = want == 0 || want > n ? n : want;
  for (int64_t l = 0; l < rc_n; l++) {
    int32_t hi = l + 1 < n ? first[l + 1] : end;
    for (int32_t i = first[l]; i < hi; i++)
      if (R->fwd[i]) R->region[i] = (int32_t)l;
  }
  R->nregions = (int32_t)rc_n;
out:
  free(first);
  free(last);
  free(layer_of);
  return rc_n;
}

/* ---- selective: the attention core -------------------------------------------- */

static bool elementwise(const ptc_op *op) {
  return (ptc_opinfo_get(op->code)->flags & PTC_OPF_ELEMENTWISE) != 0;
}

/* The only forward op reading v, or -1 (none, or several). */
static int32_t sole_forward_user(const rc *R, int32_t v, int32_t from) {
  int32_t user = -1;
  for (int32_t j = from; j < R->f->nops; j++) {
    if (!R->fwd[j]) continue;
    for (int32_t k = 0; k < R->f->ops[j].nin; k++)
      if (R->f->ops[j].in[k] == v) {
        if (user >= 0 && user != j) return -1;
        user = j;
      }
  }
  return user;
}

/* Regions matmul -> element-wise* -> softmax -> element-wise* (read by a
 * matmul); returns how many. */
static int32_t selective_regions(rc *R) {
  ptc_func *f = R->f;
  int32_t *chain = ptc_xmalloc((size_t)f->nops * sizeof *chain);
  for (int32_t s = 0; s < f->nops; s++) {
    if (!R->fwd[s] || f->ops[s].code != PTC_OP_SOFTMAX) continue;
    int32_t n = 0;
    chain[n++] = s;
    /* up: element-wise ops on the path from the first matmul */
    bool ok = false;
    int32_t v = f->ops[s].in[0];
    while (f->values[v].kind == PTC_VALUE_OP) {
      int32_t d = f->values[v].def;
      const ptc_op *op = &f->ops[d];
      if (!R->fwd[d] || R->region[d] >= 0) break;
      if (op->code == PTC_OP_MATMUL) {
        chain[n++] = d;
        ok = true;
        break;
      }
      if (!elementwise(op) || op->nin == 0) break;
      chain[n++] = d;
      /* follow the operand shaped like the result that comes from an op,
       * preferring one that is itself a matmul or element-wise */
      int32_t next = -1;
      for (int32_t k = 0; k < op->nin; k++) {
        int32_t u = op->in[k];
        if (f->values[u].kind != PTC_VALUE_OP ||
            !ptc_type_eq(&f->values[u].type, &f->values[op->out[0]].type))
          continue;
        const ptc_op *uo = &f->ops[f->values[u].def];
        bool good = uo->code == PTC_OP_MATMUL || elementwise(uo);
        if (next < 0 || (good && !(f->ops[f->values[next].def].code == PTC_OP_MATMUL ||
                                   elementwise(&f->ops[f->values[next].def]))))
          next = u;
      }
      if (next < 0) break;
      v = next;
    }
    if (!ok) continue;
    /* down: element-wise ops to the second matmul */
    ok = false;
    int32_t w = f->ops[s].out[0];
    for (;;) {
      int32_t u = sole_forward_user(R, w, s + 1);
      if (u < 0) break;
      if (f->ops[u].code == PTC_OP_MATMUL) {
        ok = true;
        break;
      }
      if (!elementwise(&f->ops[u]) || R->region[u] >= 0) break;
      chain[n++] = u;
      w = f->ops[u].out[0];
    }
    if (!ok) continue;
    for (int32_t k = 0; k < n; k++) R->region[chain[k]] = R->nregions;
    R->nregions++;
  }
  free(chain);
  return R->nregions;
}

/* ---- the copies --------------------------------------------------------------- */

/* Copies the needed ops of every region before their first backward reader
 * and rewires the backward.  Returns the number of copies, or -1. */
static int32_t recompute_regions(rc *R) {
  ptc_func *f = R->f;
  ptc_module *m = R->m;
  int32_t nops = f->nops, nv = f->nvalues, NR = R->nregions;
  bool *kept = ptc_xcalloc((size_t)nv + 1, sizeof *kept);
  bool *need = ptc_xcalloc((size_t)nv + 1, sizeof *need);
  bool *clone = ptc_xcalloc((size_t)nops + 1, sizeof *clone);
  int32_t *at = ptc_xmalloc((size_t)(NR + 1) * sizeof *at); /* first backward reader */
  for (int32_t r = 0; r < NR; r++) at[r] = -1;
  /* kept: read across the region's boundary (or returned), or made by an op
   * that cannot run twice */
  for (int32_t j = 0; j < nops; j++) {
    const ptc_op *op = &f->ops[j];
    uint32_t fl = ptc_opinfo_get(op->code)->flags;
    if (R->region[j] >= 0 && !(fl & PTC_OPF_PURE))
      for (int32_t r = 0; r < op->nout; r++) kept[op->out[r]] = true;
    if (!R->fwd[j] && op->code != PTC_OP_RETURN) continue;
    for (int32_t k = 0; k < op->nin; k++) {
      const ptc_value *v = &f->values[op->in[k]];
      if (v->kind == PTC_VALUE_OP && R->region[v->def] >= 0 &&
          (op->code == PTC_OP_RETURN || (R->keep_exits && R->region[v->def] != R->region[j])))
        kept[op->in[k]] = true;
    }
  }
  /* needed: region values the backward reads */
  for (int32_t j = 0; j < nops; j++) {
    const ptc_op *op = &f->ops[j];
    if (R->fwd[j] || op->code == PTC_OP_RETURN) continue;
    for (int32_t k = 0; k < op->nin; k++) {
      int32_t u = op->in[k];
      const ptc_value *v = &f->values[u];
      if (v->kind != PTC_VALUE_OP || R->region[v->def] < 0 || kept[u]) continue;
      need[u] = true;
      int32_t r = R->region[v->def];
      if (at[r] < 0 || j < at[r]) at[r] = j;
    }
  }
  /* what they are made from, inside the region */
  for (int32_t d = nops - 1; d >= 0; d--) {
    if (R->region[d] < 0) continue;
    const ptc_op *op = &f->ops[d];
    for (int32_t r = 0; r < op->nout; r++) clone[d] |= need[op->out[r]];
    if (!clone[d]) continue;
    for (int32_t k = 0; k < op->nin; k++) {
      int32_t u = op->in[k];
      const ptc_value *v = &f->values[u];
      if (v->kind == PTC_VALUE_OP && R->region[v->def] == R->region[d] && !kept[u])
        need[u] = true;
    }
  }
  /* regions by insertion point, last first: inserting there leaves the
   * indices of earlier points as they are */
  int32_t *order = ptc_xmalloc((size_t)(NR + 1) * sizeof *order);
  int32_t no = 0;
  for (int32_t r = 0; r < NR; r++)
    if (at[r] >= 0) order[no++] = r;
  for (int32_t a = 1; a < no; a++) /* insertion sort, descending at[] */
    for (int32_t b = a; b > 0 && at[order[b]] > at[order[b - 1]]; b--) {
      int32_t t = order[b];
      order[b] = order[b - 1];
      order[b - 1] = t;
    }
  int32_t *map = ptc_xmalloc((size_t)(nv + 1) * sizeof *map);
  const char *attr_name = ptc_intern_cstr(m->ctx, "recompute");
  int32_t total = 0;
  /* f->ops moves as ops are inserted: the originals are read from a copy */
  ptc_op *orig = ptc_xmalloc((size_t)(nops + 1) * sizeof *orig);
  memcpy(orig, f->ops, (size_t)nops * sizeof *orig);
  for (int32_t oi = 0; oi < no && total >= 0; oi++) {
    int32_t r = order[oi], pos = at[r], n = 0;
    for (int32_t v = 0; v < nv; v++) map[v] = v;
    for (int32_t d = 0; d < nops; d++) {
      if (R->region[d] != r || !clone[d]) continue;
      const ptc_op *op = &orig[d];
      int32_t ins[64];
      int32_t *in = op->nin <= 64 ? ins : ptc_xmalloc((size_t)op->nin * sizeof *in);
      for (int32_t k = 0; k < op->nin; k++) in[k] = map[op->in[k]];
      ptc_attr *attrs = ptc_xmalloc((size_t)(op->nattr + 1) * sizeof *attrs);
      if (op->nattr) memcpy(attrs, op->attrs, (size_t)op->nattr * sizeof *attrs);
      attrs[op->nattr] = ptc_attr_bool(attr_name, true);
      ptc_type given[8];
      ptc_sharding gshard[8];
      bool sharded = false;
      PTC_ASSERT(op->nout <= 8);
      for (int32_t k = 0; k < op->nout; k++) {
        given[k] = f->values[op->out[k]].type;
        gshard[k] = f->values[op->out[k]].shard;
        sharded |= gshard[k].present;
      }
      ptc_build_args a = {.code = op->code, .nin = op->nin, .in = in,
                          .nattr = op->nattr + 1, .attrs = attrs, .ngiven = op->nout,
                          .given = given, .given_shard = sharded ? gshard : NULL,
                          .loc = op->loc};
      int32_t idx = ptc_build_at(f, pos + n, &a);
      free(attrs);
      if (in != ins) free(in);
      if (idx < 0) {
        total = -1;
        break;
      }
      for (int32_t k = 0; k < op->nout; k++) map[op->out[k]] = f->ops[idx].out[k];
      n++;
    }
    if (total < 0) break;
    for (int32_t v = 0; v < nv; v++)
      if (map[v] != v && !kept[v]) ptc_func_replace_uses(f, v, map[v], pos + n);
    total += n;
  }
  free(orig);
  free(map);
  free(order);
  free(at);
  free(clone);
  free(need);
  free(kept);
  return total;
}

/* ---- the pass ------------------------------------------------------------------ */

static int recompute_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  int mode = ptc_pass_opt_choice(o, "mode");
  if (mode == MODE_NONE) return 0;
  ptc_func *f = ptc_module_find_func(m, "step");
  if (!f || f->nops == 0 || f->ops[f->nops - 1].code != PTC_OP_RETURN ||
      f->ops[f->nops - 1].nin == 0) {
    ptc_error(m->ctx, f ? f->loc : m->loc, "recompute: the module has no @step to "
              "recompute in; run it after autodiff and before pipeline "
              "(--pass-pipeline=...,autodiff,recompute{mode=full},pipeline,...)");
    return -1;
  }
  const ptc_attr *done = ptc_module_get_attr(m, "recompute.mode");
  if (done && done->kind == PTC_ATTR_STR) {
    ptc_error(m->ctx, f->loc, "recompute: @step is already recomputed (recompute.mode = "
              "\"%s\"); run the pass once", done->u.s);
    return -1;
  }
  rc R = {.m = m, .f = f, .keep_exits = mode == MODE_FULL};
  R.fwd = ptc_xcalloc((size_t)f->nops + 1, sizeof *R.fwd);
  R.region = ptc_xmalloc((size_t)(f->nops + 1) * sizeof *R.region);
  for (int32_t i = 0; i < f->nops; i++) R.region[i] = -1;
  mark_forward(&R);
  int64_t layers = 0;
  int status = -1;
  if (mode == MODE_FULL) {
    layers = full_regions(&R, ptc_pass_opt_int(o, "layers"));
    if (layers < 0) goto out;
  } else {
    selective_regions(&R);
  }
  int32_t n = recompute_regions(&R);
  if (n < 0) goto out;
  char word[16];
  ptc_attr a = ptc_attr_str("recompute.mode",
                            ptc_pass_choice_word(recompute_opts[0].choices, mode, word,
                                                 sizeof word));
  ptc_module_set_attr(m, &a);
  if (mode == MODE_FULL) {
    a = ptc_attr_int("recompute.layers", layers);
    ptc_module_set_attr(m, &a);
  }
  a = ptc_attr_int("recompute.ops", n);
  ptc_module_set_attr(m, &a);
  *changed = true;
  status = 0;
out:
  free(R.fwd);
  free(R.region);
  return status;
}

const ptc_pass_info ptc_pass_recompute = {
    .name = "recompute",
    .summary = "recompute forward values in the backward instead of keeping them",
    .opts = recompute_opts,
    .nopts = PTC_ARRAY_LEN(recompute_opts),
    .run = recompute_run,
};
