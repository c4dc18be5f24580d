/* pipeline.c -- pipeline parallelism: `pipeline` cuts the training step into
 * stages and microbatches, `comm-check` proves the transfers match.
 *
 * pipeline (after autodiff, before optimizer; nothing to do unless the mesh
 * has a pp axis of size P > 1).  @step (loss and one gradient per trainable
 * parameter) becomes:
 *
 *   @fwd.<c>   the forward ops of chunk c (c < P*V, V virtual stages per
 *              stage; chunk c runs on stage c mod P), with `recv` of the
 *              activations it needs from earlier chunks and `send` of those
 *              later chunks need; it returns the values its backward needs
 *              (the stash).
 *   @bwd.<c>   the backward ops of chunk c: arguments %stash.<k> (fwd.<c>'s
 *              result k) and the model inputs it reads; gradients of other
 *              chunks arrive by `recv`; each parameter gradient is added to a
 *              state variable <param>.grad_acc; the last chunk's forward adds
 *              the loss to the state variable pipeline.loss.
 *   @step.<s>  once per step on stage s: the mean loss and gradients over the
 *              microbatches (all_reduce over pp where several stages hold a
 *              parameter, e.g. a tied embedding), accumulators reset; the
 *              optimizer pass then adds the updates.  A gradient returned by
 *              a stage that does not own the parameter (the lowest stage
 *              holding it owns it) is named %grad.<param>.shared, so the
 *              global norm counts it once.
 *
 * Forward ops are cut into P*V contiguous chunks of about equal FLOPs
 * (ptc_op_cost), each cut placed where the fewest activation bytes cross it
 * (between layers, in a transformer).  Backward ops go to the chunk of the
 * forward values (or parameters) they read, else of the gradients they read;
 * forward ops the recompute pass copied into the backward (`recompute =
 * true`) go to the chunk of what they are made from, so a chunk's stash holds
 * only the values kept for them.
 *
 * The order of calls on each stage is a module attribute
 * `pipeline.order.<s>`: "F0.0 F0.1 B0.0 ..." (F|B, chunk, microbatch), from
 * --pp-schedule gpipe (all forwards, then all backwards), 1f1b (P-s-1
 * warm-up forwards, then one forward one backward) or interleaved (Megatron's
 * interleaved 1F1B over V chunks per stage; M a multiple of P).  Each step
 * runs M microbatches of the compiled batch, so the step's batch is M times
 * --batch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

enum { SCHED_GPIPE, SCHED_1F1B, SCHED_INTERLEAVED };

static const ptc_pass_opt_spec pipeline_opts[] = {
    {.name = "microbatches", .kind = PTC_PASS_OPT_INT, .dflt = 1, .min = 1, .max = 1 << 20,
     .help = "microbatches per step (gradients accumulate over them)"},
    {.name = "schedule", .kind = PTC_PASS_OPT_CHOICE, .choices = "gpipe|1f1b|interleaved",
     .dflt = SCHED_1F1B, .help = "the order of forward and backward microbatches"},
    {.name = "virtual-stages", .kind = PTC_PASS_OPT_INT, .dflt = 1, .min = 1, .max = 64,
     .help = "model chunks per stage (interleaved schedule)"},
};

typedef struct pl {
  ptc_module *m;
  ptc_func *f; /* @step */
  int32_t P, V, NC, M;
  int pp;        /* the pp mesh axis */
  int8_t *cls;   /* per op: 0 forward, 1 backward, 2 neither */
  int32_t *chunk; /* per op */
  int32_t *orig;  /* per op: the forward op a `recompute = true` copy copies, or -1 */
  int32_t nfn;   /* 2*NC + P functions: fwd 0..NC-1, bwd NC..2NC-1, step 2NC.. */
  ptc_func **fn;
  int32_t **lmap; /* [fn][value] -> local value id or -1 */
  int32_t **stash; /* per chunk: original values fwd.c returns, in order */
  int32_t *nstash, *capstash;
  int32_t next_tag;
} pl;

/* The variable the step reads for trainable parameter p: p, or under mixed
 * precision its 16-bit copy (passes/precision.c). */
static int32_t read_var(const ptc_module *m, int32_t p) {
  int32_t c = ptc_precision_copy_of(m, p);
  return c >= 0 ? c : p;
}

static bool ptc_func_reads(const ptc_func *f, int32_t p) {
  return p < f->cap_param_value && f->param_value[p] >= 0;
}

static int32_t stage_of_fn(const pl *L, int32_t fi) {
  if (fi < 2 * L->NC) return (fi % L->NC) % L->P;
  return fi - 2 * L->NC;
}

static const char *fn_label(const pl *L, int32_t fi, char *buf, size_t n) {
  if (fi < L->NC) snprintf(buf, n, "@fwd.%d", fi);
  else if (fi < 2 * L->NC) snprintf(buf, n, "@bwd.%d", fi - L->NC);
  else snprintf(buf, n, "@step.%d", fi - 2 * L->NC);
  return buf;
}

static int32_t home_fn(const pl *L, int32_t op) {
  return L->cls[op] == 0 ? L->chunk[op] : L->NC + L->chunk[op];
}

/* Appends an op to function fi before its end (the return comes last). */
static int32_t emit(pl *L, int32_t fi, ptc_build_args *a) {
  int32_t idx = ptc_build(L->fn[fi], a);
  return idx;
}

static int32_t get(pl *L, int32_t fi, int32_t v, ptc_loc loc);

/* v (defined in function src) made available in function dst by a
 * send/recv pair. */
static int32_t transfer(pl *L, int32_t src, int32_t dst, int32_t v, ptc_loc loc) {
  char a[32], b[32];
  int32_t ss = stage_of_fn(L, src), ds = stage_of_fn(L, dst);
  if (ss == ds) {
    ptc_error(L->m->ctx, loc, "pipeline: %s and %s run on the same stage %d but a value "
              "passes between them; use fewer virtual stages or more pipeline stages",
              fn_label(L, src, a, sizeof a), fn_label(L, dst, b, sizeof b), ss);
    return -1;
  }
  int32_t sv = L->lmap[src][v];
  PTC_ASSERT(sv >= 0);
  int32_t tag = L->next_tag++;
  ptc_attr sa[2] = {ptc_attr_int("peer", ds), ptc_attr_int("tag", tag)};
  ptc_build_args sb = {.code = PTC_OP_SEND, .nin = 1, .in = &sv, .nattr = 2, .attrs = sa,
                       .loc = loc};
  if (emit(L, src, &sb) < 0) return -1;
  ptc_attr ra[2] = {ptc_attr_int("peer", ss), ptc_attr_int("tag", tag)};
  ptc_type t = L->f->values[v].type;
  ptc_build_args rb = {.code = PTC_OP_RECV, .nattr = 2, .attrs = ra, .ngiven = 1, .given = &t,
                       .loc = loc};
  int32_t idx = emit(L, dst, &rb);
  if (idx < 0) return -1;
  return L->fn[dst]->ops[idx].out[0];
}

static int32_t get(pl *L, int32_t fi, int32_t v, ptc_loc loc) {
  if (L->lmap[fi][v] >= 0) return L->lmap[fi][v];
  ptc_func *F = L->fn[fi];
  const ptc_value *val = &L->f->values[v];
  int32_t id = -1;
  if (val->kind == PTC_VALUE_PARAM) {
    id = ptc_func_param_value(F, val->def);
  } else if (val->kind == PTC_VALUE_ARG) {
    ptc_type t = val->type;
    id = ptc_func_add_arg(F, val->name, &t, NULL);
  } else {
    int32_t d = val->def, src = home_fn(L, d);
    PTC_ASSERT(src != fi);
    if (fi >= L->NC && fi < 2 * L->NC && L->cls[d] == 0) {
      /* a forward value in a backward: kept from this chunk's forward */
      int32_t c = fi - L->NC;
      if (get(L, c, v, loc) < 0) return -1;
      if (L->nstash[c] == L->capstash[c]) {
        L->capstash[c] = L->capstash[c] ? 2 * L->capstash[c] : 16;
        L->stash[c] = ptc_xrealloc(L->stash[c], (size_t)L->capstash[c] * sizeof **L->stash);
      }
      char name[32];
      snprintf(name, sizeof name, "stash.%d", L->nstash[c]);
      L->stash[c][L->nstash[c]++] = v;
      ptc_type t = val->type;
      id = ptc_func_add_arg(F, name, &t, NULL);
    } else {
      id = transfer(L, src, fi, v, loc);
    }
  }
  if (id >= 0) L->lmap[fi][v] = id;
  return id;
}

/* Copies op i of @step into function fi. */
static int copy_op(pl *L, int32_t fi, int32_t i) {
  ptc_op op = L->f->ops[i];
  int32_t in[64];
  int32_t *ins = op.nin <= 64 ? in : ptc_xmalloc((size_t)op.nin * sizeof *ins);
  for (int32_t k = 0; k < op.nin; k++) {
    ins[k] = get(L, fi, L->f->ops[i].in[k], op.loc);
    if (ins[k] < 0) return -1;
  }
  op = L->f->ops[i];
  ptc_type given[8];
  for (int32_t r = 0; r < op.nout && r < 8; r++) given[r] = L->f->values[op.out[r]].type;
  ptc_build_args a = {.code = op.code, .nin = op.nin, .in = ins, .nattr = op.nattr,
                      .attrs = op.attrs, .ngiven = op.nout, .given = given, .loc = op.loc};
  int32_t idx = emit(L, fi, &a);
  if (ins != in) free(ins);
  if (idx < 0) return -1;
  for (int32_t r = 0; r < op.nout; r++) {
    int32_t ov = L->f->ops[i].out[r], nv = L->fn[fi]->ops[idx].out[r];
    L->lmap[fi][ov] = nv;
    if (L->f->values[ov].name)
      L->fn[fi]->values[nv].name = ptc_arena_strdup(&L->m->arena, L->f->values[ov].name);
  }
  return 0;
}

/* ---- classification and cuts ---------------------------------------------- */

static void mark_ancestors(const ptc_func *f, int32_t v, int8_t *cls, int8_t mark,
                           int32_t *stack) {
  int32_t n = 0;
  stack[n++] = v;
  while (n) {
    int32_t x = stack[--n];
    if (f->values[x].kind != PTC_VALUE_OP) continue;
    int32_t d = f->values[x].def;
    if (cls[d] != 2) continue;
    cls[d] = mark;
    for (int32_t k = 0; k < f->ops[d].nin; k++) stack[n++] = f->ops[d].in[k];
  }
}

/* Forward ops into NC chunks: equal FLOPs, cut where the fewest bytes cross. */
static int cut_forward(pl *L) {
  ptc_func *f = L->f;
  int32_t nf = 0;
  int32_t *fops = ptc_xmalloc((size_t)f->nops * sizeof *fops);
  for (int32_t i = 0; i < f->nops; i++)
    if (L->cls[i] == 0) fops[nf++] = i;
  if (nf < L->NC) {
    ptc_error(L->m->ctx, f->loc, "pipeline: the forward has %d ops, too few for %d "
              "chunks (%d stages x %d virtual); use fewer", nf, L->NC, L->P, L->V);
    free(fops);
    return -1;
  }
  int32_t *pos = ptc_xmalloc((size_t)f->nops * sizeof *pos); /* op -> index in fops */
  for (int32_t i = 0; i < f->nops; i++) pos[i] = -1;
  for (int32_t k = 0; k < nf; k++) pos[fops[k]] = k;
  double *pre = ptc_xmalloc((size_t)(nf + 1) * sizeof *pre);
  pre[0] = 0;
  for (int32_t k = 0; k < nf; k++)
    pre[k + 1] = pre[k] + ptc_op_cost(f, &f->ops[fops[k]]).flops + 1.0;
  /* bytes crossing a cut after fops[k]: values defined at or before k and
   * used by forward ops after k */
  double *cross = ptc_xcalloc((size_t)nf + 1, sizeof *cross);
  int32_t *lastuse = ptc_xmalloc((size_t)f->nvalues * sizeof *lastuse);
  for (int32_t v = 0; v < f->nvalues; v++) lastuse[v] = -1;
  for (int32_t k = 0; k < nf; k++)
    for (int32_t j = 0; j < f->ops[fops[k]].nin; j++) lastuse[f->ops[fops[k]].in[j]] = k;
  for (int32_t k = 0; k < nf; k++)
    for (int32_t r = 0; r < f->ops[fops[k]].nout; r++) {
      int32_t v = f->ops[fops[k]].out[r];
      if (lastuse[v] <= k) continue;
      double b = (double)ptc_type_bytes(&f->values[v].type);
      cross[k] += b;
      cross[lastuse[v]] -= b;
    }
  for (int32_t k = 1; k < nf; k++) cross[k] += cross[k - 1];
  int32_t prev = -1;
  int32_t *cuts = ptc_xmalloc((size_t)L->NC * sizeof *cuts); /* chunk j ends at fops index */
  double avg = pre[nf] / L->NC;
  for (int32_t j = 1; j < L->NC; j++) {
    double target = pre[nf] * j / L->NC;
    int32_t best = -1;
    for (int32_t k = prev + 1; k < nf - (L->NC - j); k++) {
      double d = pre[k + 1] - target;
      if (d < -0.5 * avg || d > 0.5 * avg) continue;
      if (best < 0 || cross[k] < cross[best] ||
          (cross[k] == cross[best] &&
           (pre[k + 1] - target) * (pre[k + 1] - target) <
               (pre[best + 1] - target) * (pre[best + 1] - target)))
        best = k;
    }
    if (best < 0) best = prev + 1 > nf - (L->NC - j) - 1 ? prev + 1 : prev + 1;
    cuts[j - 1] = best;
    prev = best;
  }
  cuts[L->NC - 1] = nf - 1;
  int32_t c = 0;
  for (int32_t k = 0; k < nf; k++) {
    L->chunk[fops[k]] = c;
    if (k == cuts[c] && c < L->NC - 1) c++;
  }
  free(cuts);
  free(lastuse);
  free(cross);
  free(pre);
  free(pos);
  free(fops);
  return 0;
}

/* ---- recomputed copies (passes/recompute.c) ---------------------------------- */

/* The forward value that v, a result of a recomputed copy, copies (v itself
 * for any other value). */
static int32_t orig_value(const pl *L, int32_t v) {
  const ptc_value *val = &L->f->values[v];
  if (val->kind != PTC_VALUE_OP || L->orig[val->def] < 0) return v;
  return L->f->ops[L->orig[val->def]].out[val->res];
}

/* Whether backward op c is a copy of forward op o: the same op, attributes
 * (besides `recompute`) and types, on the same operands or copies of them. */
static bool copies(const pl *L, const ptc_op *c, const ptc_op *o) {
  const ptc_func *f = L->f;
  if (c->code != o->code || c->nin != o->nin || c->nout != o->nout || c->nattr != o->nattr + 1)
    return false;
  for (int32_t k = 0; k < c->nin; k++)
    if (orig_value(L, c->in[k]) != o->in[k]) return false;
  for (int32_t a = 0, b = 0; a < c->nattr; a++) {
    if (strcmp(c->attrs[a].name, "recompute") == 0) continue;
    if (b >= o->nattr || !ptc_attr_eq(&c->attrs[a], &o->attrs[b++])) return false;
  }
  for (int32_t r = 0; r < c->nout; r++)
    if (!ptc_type_eq(&f->values[c->out[r]].type, &f->values[o->out[r]].type)) return false;
  return true;
}

/* L->orig: for each backward op marked `recompute = true`, the forward op
 * it copies (found structurally, so a hand-edited dump works too), or -1:
 * such an op is then placed like any backward op. */
static void find_origins(pl *L) {
  const ptc_func *f = L->f;
  for (int32_t i = 0; i < f->nops; i++) {
    L->orig[i] = -1;
    if (L->cls[i] != 1 || !ptc_op_attr_bool(&f->ops[i], "recompute", false)) continue;
    for (int32_t o = 0; o < i && L->orig[i] < 0; o++)
      if (L->cls[o] == 0 && copies(L, &f->ops[i], &f->ops[o])) L->orig[i] = o;
  }
}

/* A recomputed value is read only in its own chunk: an op of another chunk
 * (a layer cut by a stage boundary) reads the forward value it copies
 * instead, which crosses the cut anyway, so no activation flows backward
 * between backward chunks.  Copies left unused are then dropped. */
static void local_copies(pl *L, const int32_t *res, int32_t nres, int32_t *stack) {
  ptc_func *f = L->f;
  bool moved = false;
  for (int32_t i = 0; i < f->nops; i++) {
    if (L->cls[i] != 1) continue;
    for (int32_t k = 0; k < f->ops[i].nin; k++) {
      const ptc_value *v = &f->values[f->ops[i].in[k]];
      if (v->kind == PTC_VALUE_OP && L->orig[v->def] >= 0 && L->chunk[v->def] != L->chunk[i]) {
        f->ops[i].in[k] = orig_value(L, f->ops[i].in[k]);
        moved = true;
      }
    }
  }
  if (!moved) return;
  for (int32_t i = 0; i < f->nops; i++)
    if (L->cls[i] == 1) L->cls[i] = 2;
  for (int32_t r = 1; r < nres; r++) mark_ancestors(f, res[r], L->cls, 1, stack);
}

/* Where op i of the backward, which reads only gradients, goes: the chunk
 * of its operands, or its users' when sending the operands there costs
 * fewer bytes than sending the result. */
static int32_t pure_chunk(const pl *L, int32_t i) {
  const ptc_func *f = L->f;
  const ptc_op *op = &f->ops[i];
  int32_t co = -1, cu = -1;
  for (int32_t k = 0; k < op->nin; k++) {
    const ptc_value *v = &f->values[op->in[k]];
    if (v->kind == PTC_VALUE_OP && L->cls[v->def] == 1 && L->chunk[v->def] >= 0 &&
        (co < 0 || L->chunk[v->def] < co))
      co = L->chunk[v->def];
  }
  for (int32_t r = 0; r < op->nout; r++)
    for (int32_t j = i + 1; j < f->nops; j++)
      for (int32_t k = 0; k < f->ops[j].nin; k++)
        if (f->ops[j].in[k] == op->out[r] && L->cls[j] == 1 && L->chunk[j] > cu)
          cu = L->chunk[j];
  if (co < 0 || cu < 0 || cu == co) return co >= 0 ? co : cu;
  double at_co = 0, at_cu = 0;
  for (int32_t r = 0; r < op->nout; r++)
    at_co += (double)ptc_type_bytes(&f->values[op->out[r]].type);
  for (int32_t k = 0; k < op->nin; k++) {
    int32_t v = op->in[k];
    if (f->values[v].kind != PTC_VALUE_OP || L->cls[f->values[v].def] != 1 ||
        L->chunk[f->values[v].def] == cu)
      continue;
    bool there = false; /* already needed on cu by a placed op */
    for (int32_t j = f->values[v].def + 1; j < f->nops && !there; j++)
      for (int32_t kk = 0; kk < f->ops[j].nin; kk++)
        if (f->ops[j].in[kk] == v && j != i && L->chunk[j] == cu) there = true;
    if (!there) at_cu += (double)ptc_type_bytes(&f->values[v].type);
  }
  return at_cu < at_co ? cu : co;
}

/* Backward ops: the chunk of the forward values or parameters they read;
 * an op that reads only gradients goes to the highest chunk of its users (a
 * reshape of a gradient moves with the gradient; gradients only flow to
 * lower chunks), else where its operands are. */
static void place_backward(pl *L, const int32_t *pmax) {
  ptc_func *f = L->f;
  bool *pure = ptc_xcalloc((size_t)f->nops + 1, sizeof *pure);
  /* a forward value is on its own chunk and on every later chunk whose
   * forward reads it (received there): a gradient op reading it can run on
   * the last of them, next to the op it differentiates (the weight gradient
   * of a layer whose input came from the previous stage) */
  int32_t *avail = ptc_xmalloc((size_t)(f->nvalues + 1) * sizeof *avail);
  for (int32_t v = 0; v < f->nvalues; v++) avail[v] = -1;
  for (int32_t i = 0; i < f->nops; i++) {
    if (L->cls[i] != 0) continue;
    for (int32_t r = 0; r < f->ops[i].nout; r++)
      if (L->chunk[i] > avail[f->ops[i].out[r]]) avail[f->ops[i].out[r]] = L->chunk[i];
    for (int32_t k = 0; k < f->ops[i].nin; k++) {
      int32_t v = f->ops[i].in[k];
      if (f->values[v].kind == PTC_VALUE_OP && L->chunk[i] > avail[v]) avail[v] = L->chunk[i];
    }
  }
  for (int32_t i = 0; i < f->nops; i++) {
    if (L->cls[i] != 1) continue;
    int32_t fmax = -1;
    if (L->orig[i] >= 0) { /* a recomputed copy: in the chunk of its original */
      L->chunk[i] = L->chunk[L->orig[i]];
      continue;
    }
    for (int32_t k = 0; k < f->ops[i].nin; k++) {
      int32_t vi = f->ops[i].in[k];
      const ptc_value *v = &f->values[vi];
      if (v->kind == PTC_VALUE_PARAM && pmax[v->def] > fmax) fmax = pmax[v->def];
      if (v->kind == PTC_VALUE_OP && L->cls[v->def] == 0 && avail[vi] > fmax) fmax = avail[vi];
      /* a recomputed value stands for the forward value it copies */
      if (v->kind == PTC_VALUE_OP && L->orig[v->def] >= 0 && L->chunk[v->def] > fmax)
        fmax = L->chunk[v->def];
    }
    L->chunk[i] = fmax;
    pure[i] = fmax < 0;
  }
  /* ops reading only gradients (pure_chunk); a chain of them (a constant,
   * scaled, then read by the backward) settles from its users back: sweep
   * until nothing moves */
  bool moved = true;
  for (int32_t sweep = 0; moved && sweep <= f->nops; sweep++) {
    moved = false;
    for (int32_t i = 0; i < f->nops; i++) {
      if (!pure[i]) continue;
      int32_t c = pure_chunk(L, i);
      moved |= c != L->chunk[i];
      L->chunk[i] = c;
    }
  }
  /* no user (a gradient result): where its operands are */
  for (int32_t i = 0; i < f->nops; i++) {
    if (L->cls[i] != 1 || L->chunk[i] >= 0) continue;
    int32_t bmin = -1;
    for (int32_t k = 0; k < f->ops[i].nin; k++) {
      const ptc_value *v = &f->values[f->ops[i].in[k]];
      if (v->kind == PTC_VALUE_OP && L->cls[v->def] == 1 && L->chunk[v->def] >= 0 &&
          (bmin < 0 || L->chunk[v->def] < bmin))
        bmin = L->chunk[v->def];
    }
    L->chunk[i] = bmin >= 0 ? bmin : 0;
  }
  free(avail);
  free(pure);
}

/* ---- schedules ---------------------------------------------------------------- */

static void order_put(ptc_buf *b, char kind, int32_t chunk, int32_t mb) {
  ptc_buf_printf(b, "%s%c%d.%d", b->len ? " " : "", kind, chunk, mb);
}

static int schedule(pl *L, int kind, int32_t s, ptc_buf *b) {
  int32_t P = L->P, M = L->M, V = L->V;
  if (kind == SCHED_GPIPE) {
    for (int32_t mb = 0; mb < M; mb++) order_put(b, 'F', s, mb);
    for (int32_t mb = 0; mb < M; mb++) order_put(b, 'B', s, mb);
    return 0;
  }
  if (kind == SCHED_1F1B) {
    int32_t w = P - 1 - s < M ? P - 1 - s : M;
    for (int32_t mb = 0; mb < w; mb++) order_put(b, 'F', s, mb);
    for (int32_t i = 0; i < M - w; i++) {
      order_put(b, 'F', s, w + i);
      order_put(b, 'B', s, i);
    }
    for (int32_t mb = M - w; mb < M; mb++) order_put(b, 'B', s, mb);
    return 0;
  }
  /* interleaved (Megatron-LM): unit k of M*V, grouped P microbatches at a time */
  int32_t total = M * V;
  int32_t w = (P - s - 1) * 2 + (V - 1) * P;
  if (w > total) w = total;
#define FWD_UNIT(k) ((k) % (P * V)) / P, ((k) / (P * V)) * P + (k) % P
  for (int32_t k = 0; k < w; k++) {
    int32_t v = (k % (P * V)) / P, mb = (k / (P * V)) * P + k % P;
    order_put(b, 'F', s + P * v, mb);
  }
  for (int32_t i = 0; i < total - w; i++) {
    int32_t k = w + i;
    int32_t v = (k % (P * V)) / P, mb = (k / (P * V)) * P + k % P;
    order_put(b, 'F', s + P * v, mb);
    v = V - 1 - (i % (P * V)) / P;
    mb = (i / (P * V)) * P + i % P;
    order_put(b, 'B', s + P * v, mb);
  }
  for (int32_t i = total - w; i < total; i++) {
    int32_t v = V - 1 - (i % (P * V)) / P, mb = (i / (P * V)) * P + i % P;
    order_put(b, 'B', s + P * v, mb);
  }
#undef FWD_UNIT
  return 0;
}

/* ---- the pass ------------------------------------------------------------------ */

static int32_t zeros_like(ptc_func *F, const ptc_type *t, ptc_loc loc) {
  ptc_type sc = {.dtype = t->dtype, .rank = 0};
  ptc_attr a = ptc_attr_float("value", 0.0);
  ptc_build_args ca = {.code = PTC_OP_CONSTANT, .nattr = 1, .attrs = &a, .ngiven = 1,
                       .given = &sc, .loc = loc};
  int32_t idx = ptc_build(F, &ca);
  if (idx < 0) return -1;
  int32_t c = F->ops[idx].out[0];
  if (t->rank == 0) return c;
  ptc_type tt = *t;
  ptc_build_args ba = {.code = PTC_OP_BROADCAST_TO, .nin = 1, .in = &c, .ngiven = 1,
                       .given = &tt, .loc = loc};
  idx = ptc_build(F, &ba);
  return idx < 0 ? -1 : F->ops[idx].out[0];
}

/* A constant 0 of type t in one op (it may then be laid out as a partial
 * sum, which a broadcast of a scalar could not). */
static int32_t zeros_full(ptc_func *F, const ptc_type *t, ptc_loc loc) {
  ptc_attr a = ptc_attr_float("value", 0.0);
  ptc_type tt = *t;
  ptc_build_args ca = {.code = PTC_OP_CONSTANT, .nattr = 1, .attrs = &a, .ngiven = 1,
                       .given = &tt, .loc = loc};
  int32_t idx = ptc_build(F, &ca);
  return idx < 0 ? -1 : F->ops[idx].out[0];
}

static int32_t scale_by(ptc_func *F, int32_t v, double s, ptc_loc loc) {
  ptc_type sc = {.dtype = F->values[v].type.dtype, .rank = 0};
  ptc_attr a = ptc_attr_float("value", s);
  ptc_build_args ca = {.code = PTC_OP_CONSTANT, .nattr = 1, .attrs = &a, .ngiven = 1,
                       .given = &sc, .loc = loc};
  int32_t idx = ptc_build(F, &ca);
  if (idx < 0) return -1;
  int32_t in[2] = {v, F->ops[idx].out[0]};
  return ptc_build1(F, PTC_OP_MUL, in, 2, NULL, 0, loc);
}

static int32_t all_reduce_pp(pl *L, ptc_func *F, int32_t v, ptc_loc loc) {
  ptc_attr at[2] = {ptc_attr_sym("axis", L->m->mesh.axes[L->pp].name),
                    ptc_attr_sym("op", "sum")};
  return ptc_build1(F, PTC_OP_ALL_REDUCE, &v, 1, at, 2, loc);
}

static int32_t add_state(ptc_module *m, const char *name, const ptc_type *t, ptc_loc loc) {
  int32_t p = ptc_module_find_param(m, name);
  if (p >= 0) return p;
  ptc_init zeros = {.kind = PTC_INIT_ZEROS};
  ptc_type tt = *t;
  p = ptc_module_add_param(m, name, &tt, zeros, loc);
  if (p >= 0) m->params[p].trainable = false;
  return p;
}

static int assign(ptc_func *F, int32_t var_param, int32_t v, ptc_loc loc) {
  int32_t in[2] = {ptc_func_param_value(F, var_param), v};
  ptc_build_args a = {.code = PTC_OP_ASSIGN, .nin = 2, .in = in, .loc = loc};
  return ptc_build(F, &a) < 0 ? -1 : 0;
}

/* accumulate v into state variable `var` in function F, right where v is
 * made, so a gradient is folded into its accumulator and given back at
 * once instead of every gradient of the chunk living to its end */
static int accumulate(ptc_func *F, int32_t var, int32_t v, ptc_loc loc) {
  int32_t in[2] = {ptc_func_param_value(F, var), v};
  if (F->values[v].kind != PTC_VALUE_OP) {
    int32_t s = ptc_build1(F, PTC_OP_ADD, in, 2, NULL, 0, loc);
    return s < 0 ? -1 : assign(F, var, s, loc);
  }
  int32_t at = F->values[v].def + 1;
  ptc_build_args ab = {.code = PTC_OP_ADD, .nin = 2, .in = in, .loc = loc};
  int32_t idx = ptc_build_at(F, at, &ab);
  if (idx < 0) return -1;
  int32_t in2[2] = {in[0], F->ops[idx].out[0]};
  ptc_build_args sb = {.code = PTC_OP_ASSIGN, .nin = 2, .in = in2, .loc = loc};
  return ptc_build_at(F, idx + 1, &sb) < 0 ? -1 : 0;
}

/* Under fp16 (passes/precision.c) the seed of each cross_entropy_grad is
 * mul(constant, @loss_scale) with the constant only seeding: multiplies
 * those constants by k.  Whether every seed was of that form (else
 * nothing changes). */
static bool scale_fp16_seeds(ptc_func *f, double k) {
  const ptc_attr *pa = ptc_module_get_attr(f->mod, "precision");
  if (!pa || pa->kind != PTC_ATTR_STR || strcmp(pa->u.s, "fp16") != 0) return false;
  int32_t n = 0, consts[64];
  for (int32_t i = 0; i < f->nops; i++) {
    if (f->ops[i].code != PTC_OP_CROSS_ENTROPY_GRAD) continue;
    const ptc_value *sv = &f->values[f->ops[i].in[0]];
    if (sv->kind != PTC_VALUE_OP || f->ops[sv->def].code != PTC_OP_MUL || n == 64) return false;
    const ptc_op *mul = &f->ops[sv->def];
    int32_t c = -1;
    for (int32_t a = 0; a < 2; a++) {
      const ptc_value *v = &f->values[mul->in[a]];
      if (v->kind == PTC_VALUE_OP && f->ops[v->def].code == PTC_OP_CONSTANT) c = v->def;
    }
    if (c < 0) return false;
    /* the constant must feed nothing else */
    for (int32_t j = 0; j < f->nops; j++)
      for (int32_t a = 0; a < f->ops[j].nin; a++)
        if (f->ops[j].in[a] == f->ops[c].out[0] && j != sv->def) return false;
    consts[n++] = c;
  }
  if (n == 0) return false;
  for (int32_t i = 0; i < n; i++) {
    ptc_op *c = &f->ops[consts[i]];
    for (int32_t a = 0; a < c->nattr; a++)
      if (strcmp(c->attrs[a].name, "value") == 0) c->attrs[a].u.f *= k;
  }
  return true;
}

static int run_pipeline(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  int pp = ptc_mesh_axis(&m->mesh, "pp", 2);
  if (pp < 0 || m->mesh.axes[pp].size <= 1) return 0;
  ptc_ctx *ctx = m->ctx;
  ptc_func *f = ptc_module_find_func(m, "step");
  if (!f) {
    ptc_error(ctx, m->loc, "pipeline: the module has no @step; run autodiff first "
              "(--pass-pipeline=...,autodiff,pipeline,optimizer,...)");
    return -1;
  }
  pl L = {.m = m, .f = f, .P = (int32_t)m->mesh.axes[pp].size, .pp = pp};
  L.V = (int32_t)ptc_pass_opt_int(o, "virtual-stages");
  L.M = (int32_t)ptc_pass_opt_int(o, "microbatches");
  /* fp16: each microbatch's backward is seeded with 1/M of the loss scale,
   * so the accumulators hold the step's gradient, not M times it (which
   * would spend log2(M) bits of fp16 headroom); @step.<s> does not divide */
  bool seed_scaled = L.M > 1 && scale_fp16_seeds(f, 1.0 / L.M);
  int kind = ptc_pass_opt_choice(o, "schedule");
  if (kind == SCHED_INTERLEAVED && L.V < 2) {
    ptc_error(ctx, m->loc, "pipeline: the interleaved schedule needs 2 or more virtual "
              "stages per stage (--virtual-stages V)");
    return -1;
  }
  if (kind != SCHED_INTERLEAVED && L.V != 1) {
    ptc_error(ctx, m->loc, "pipeline: --virtual-stages %d needs --pp-schedule interleaved",
              L.V);
    return -1;
  }
  if (kind == SCHED_INTERLEAVED && L.M % L.P) {
    ptc_error(ctx, m->loc, "pipeline: the interleaved schedule needs a number of "
              "microbatches that is a multiple of the %d stages, got %d", L.P, L.M);
    return -1;
  }
  L.NC = L.P * L.V;
  ptc_op *ret = &f->ops[f->nops - 1];
  int32_t nres = ret->nin;
  int32_t loss = ret->in[0];
  int32_t *res = ptc_xmalloc((size_t)nres * sizeof *res);
  memcpy(res, ret->in, (size_t)nres * sizeof *res);

  int32_t *pmax = NULL; /* the last forward chunk reading each parameter */
  bool *reads = NULL;   /* [param][chunk]: the forward of chunk reads param */
  L.cls = ptc_xmalloc((size_t)f->nops);
  memset(L.cls, 2, (size_t)f->nops);
  L.chunk = ptc_xmalloc((size_t)f->nops * sizeof *L.chunk);
  for (int32_t i = 0; i < f->nops; i++) L.chunk[i] = -1;
  int32_t *stack = ptc_xmalloc((size_t)(f->nops * 8 + f->nvalues + 16) * sizeof *stack);
  int rc = -1;
  mark_ancestors(f, loss, L.cls, 0, stack);
  for (int32_t r = 1; r < nres; r++) mark_ancestors(f, res[r], L.cls, 1, stack);
  L.orig = ptc_xmalloc((size_t)(f->nops + 1) * sizeof *L.orig);
  find_origins(&L);
  if (cut_forward(&L) != 0) {
    free(stack);
    goto out0;
  }
  pmax = ptc_xmalloc((size_t)(m->nparams + 1) * sizeof *pmax);
  for (int32_t p = 0; p < m->nparams; p++) pmax[p] = -1;
  for (int32_t i = 0; i < f->nops; i++)
    if (L.cls[i] == 0)
      for (int32_t k = 0; k < f->ops[i].nin; k++) {
        const ptc_value *v = &f->values[f->ops[i].in[k]];
        if (v->kind == PTC_VALUE_PARAM && L.chunk[i] > pmax[v->def]) pmax[v->def] = L.chunk[i];
      }
  place_backward(&L, pmax);
  local_copies(&L, res, nres, stack);
  free(stack);
  /* which chunks read each parameter in the forward (its holders) */
  reads = ptc_xcalloc((size_t)(m->nparams + 1) * (size_t)L.NC, sizeof *reads);
  for (int32_t i = 0; i < f->nops; i++)
    if (L.cls[i] == 0)
      for (int32_t k = 0; k < f->ops[i].nin; k++) {
        const ptc_value *v = &f->values[f->ops[i].in[k]];
        if (v->kind == PTC_VALUE_PARAM) reads[(size_t)v->def * L.NC + L.chunk[i]] = true;
      }

  /* the functions */
  L.nfn = 2 * L.NC + L.P;
  L.fn = ptc_xcalloc((size_t)L.nfn, sizeof *L.fn);
  L.lmap = ptc_xcalloc((size_t)L.nfn, sizeof *L.lmap);
  L.stash = ptc_xcalloc((size_t)L.NC, sizeof *L.stash);
  L.nstash = ptc_xcalloc((size_t)L.NC, sizeof *L.nstash);
  L.capstash = ptc_xcalloc((size_t)L.NC, sizeof *L.capstash);
  for (int32_t fi = 0; fi < L.nfn; fi++) {
    char name[32];
    if (fi < L.NC) snprintf(name, sizeof name, "fwd.%d", fi);
    else if (fi < 2 * L.NC) snprintf(name, sizeof name, "bwd.%d", fi - L.NC);
    else snprintf(name, sizeof name, "step.%d", fi - 2 * L.NC);
    L.fn[fi] = ptc_module_add_func(m, name, f->loc);
    f = L.f = ptc_module_find_func(m, "step"); /* the vector of funcs may move */
    L.lmap[fi] = ptc_xmalloc((size_t)f->nvalues * sizeof **L.lmap);
    for (int32_t v = 0; v < f->nvalues; v++) L.lmap[fi][v] = -1;
  }
  for (int32_t i = 0; i < f->nops - 1; i++) {
    if (L.cls[i] == 2) continue;
    if (copy_op(&L, home_fn(&L, i), i) != 0) goto out;
  }
  /* accumulators: the loss on the last chunk, each gradient where it is made */
  ptc_type scalar = {.dtype = PTC_DTYPE_F32, .rank = 0};
  ptc_loc rloc = ret->loc;
  int32_t loss_var = add_state(m, "pipeline.loss", &scalar, rloc);
  f = L.f = ptc_module_find_func(m, "step");
  if (loss_var < 0) goto out;
  {
    int32_t lf = home_fn(&L, f->values[loss].def);
    int32_t lv = get(&L, lf, loss, rloc);
    if (lv < 0 || accumulate(L.fn[lf], loss_var, lv, rloc) != 0) goto out;
  }
  int32_t ngrads = nres - 1;
  int32_t *gparam = ptc_xmalloc((size_t)(ngrads + 1) * sizeof *gparam);
  int32_t *gacc = ptc_xmalloc((size_t)(ngrads + 1) * sizeof *gacc);
  {
    int32_t k = 0;
    for (int32_t p = 0; p < m->nparams && k < ngrads; p++) {
      if (!m->params[p].trainable || !ptc_func_reads(f, read_var(m, p))) continue;
      gparam[k++] = p;
    }
    if (k != ngrads) {
      ptc_error(ctx, rloc, "pipeline: @step returns %d gradients for %d parameters; run "
                "autodiff right before pipeline", ngrads, k);
      free(gparam);
      free(gacc);
      goto out;
    }
  }
  for (int32_t k = 0; k < ngrads; k++) {
    int32_t p = gparam[k];
    char name[1024];
    snprintf(name, sizeof name, "%s.grad_acc", m->params[p].name);
    ptc_type t = m->params[p].type;
    t.dtype = f->values[res[k + 1]].type.dtype; /* 16-bit under mixed precision */
    gacc[k] = add_state(m, name, &t, m->params[p].loc);
    f = L.f = ptc_module_find_func(m, "step");
    if (gacc[k] < 0) break;
    /* each data-parallel rank keeps its own unreduced sum over the
     * microbatches; the step reduces it once */
    int dpx = ptc_mesh_axis(&m->mesh, "dp", 2);
    if (dpx >= 0 && m->mesh.axes[dpx].size > 1) m->params[gacc[k]].shard.partial = (uint8_t)(1u << dpx);
    int32_t g = res[k + 1];
    if (f->values[g].kind != PTC_VALUE_OP) continue; /* a zero gradient */
    /* accumulate where the parameter lives: the gradient's own chunk if
     * that chunk reads the parameter, else the last chunk that does (the
     * gradient is sent there, down the pipeline like any gradient) */
    int32_t gc = L.chunk[f->values[g].def];
    int32_t rd = read_var(m, p);
    if (L.cls[f->values[g].def] != 1 || !reads[(size_t)rd * L.NC + gc]) gc = pmax[rd];
    int32_t gf = gc >= 0 ? L.NC + gc : home_fn(&L, f->values[g].def);
    int32_t gv = get(&L, gf, g, m->params[p].loc);
    if (gv < 0 || accumulate(L.fn[gf], gacc[k], gv, m->params[p].loc) != 0) {
      gacc[k] = -1;
      break;
    }
  }
  bool ok = true;
  for (int32_t k = 0; k < ngrads; k++) ok &= gacc[k] >= 0;
  if (!ok) {
    free(gparam);
    free(gacc);
    goto out;
  }
  /* which stages hold each parameter */
  uint64_t *holders = ptc_xcalloc((size_t)(m->nparams + 1), sizeof *holders);
  for (int32_t fi = 0; fi < 2 * L.NC; fi++) {
    ptc_func *F = L.fn[fi];
    for (int32_t p = 0; p < m->nparams && p < F->cap_param_value; p++)
      if (F->param_value[p] >= 0) holders[p] |= 1ull << stage_of_fn(&L, fi);
  }
  /* @step.<s> */
  for (int32_t s = 0; s < L.P && ok; s++) {
    ptc_func *F = L.fn[2 * L.NC + s];
    int32_t lv = ptc_func_param_value(F, loss_var);
    int32_t lsum = all_reduce_pp(&L, F, lv, rloc);
    int32_t lmean = lsum < 0 ? -1 : L.M > 1 ? scale_by(F, lsum, 1.0 / L.M, rloc) : lsum;
    int32_t z = zeros_like(F, &scalar, rloc);
    if (lmean < 0 || z < 0 || assign(F, loss_var, z, rloc) != 0) {
      ok = false;
      break;
    }
    int32_t *outs = ptc_xmalloc((size_t)(ngrads + 1) * sizeof *outs);
    const char **names = ptc_xmalloc((size_t)(ngrads + 1) * sizeof *names);
    int32_t nout = 0;
    outs[nout] = lmean;
    names[nout++] = NULL;
    for (int32_t k = 0; k < ngrads && ok; k++) {
      int32_t p = gparam[k];
      ptc_loc ploc = m->params[p].loc.file ? m->params[p].loc : rloc;
      uint64_t hold = holders[read_var(m, p)];
      bool mine = (hold >> s) & 1, tied = __builtin_popcountll(hold) > 1;
      if (!mine && !tied) continue;
      ptc_type t = m->params[gacc[k]].type;
      int32_t a = mine ? ptc_func_param_value(F, gacc[k]) : zeros_like(F, &t, ploc);
      if (a >= 0 && tied) a = all_reduce_pp(&L, F, a, ploc); /* every stage takes part */
      if (a < 0) { ok = false; break; }
      if (!mine) continue;
      if (L.M > 1 && !seed_scaled) a = scale_by(F, a, 1.0 / L.M, ploc);
      int32_t zz = a < 0 ? -1 : zeros_full(F, &t, ploc);
      if (zz < 0 || assign(F, gacc[k], zz, ploc) != 0) { ok = false; break; }
      bool owner = (hold & ((1ull << s) - 1)) == 0;
      char nm[1100];
      snprintf(nm, sizeof nm, "grad.%s%s", m->params[p].name, owner ? "" : ".shared");
      outs[nout] = a;
      names[nout++] = ptc_arena_strdup(&m->arena, nm);
    }
    if (ok) {
      for (int32_t r = 0; r < nout; r++) {
        if (names[r]) F->values[outs[r]].name = names[r];
        ptc_type t = F->values[outs[r]].type;
        ptc_func_add_result(F, &t, NULL);
      }
      ptc_build_args rb = {.code = PTC_OP_RETURN, .nin = nout, .in = outs, .loc = rloc};
      if (ptc_build(F, &rb) < 0) ok = false;
    }
    free(outs);
    free(names);
  }
  free(holders);
  free(gparam);
  free(gacc);
  if (!ok) goto out;
  /* returns: fwd.<c> gives its stash, bwd.<c> nothing */
  for (int32_t c = 0; c < L.NC; c++) {
    ptc_func *F = L.fn[c];
    int32_t *outs = ptc_xmalloc((size_t)(L.nstash[c] + 1) * sizeof *outs);
    for (int32_t k = 0; k < L.nstash[c]; k++) {
      outs[k] = L.lmap[c][L.stash[c][k]];
      ptc_type t = F->values[outs[k]].type;
      ptc_func_add_result(F, &t, NULL);
    }
    ptc_build_args rb = {.code = PTC_OP_RETURN, .nin = L.nstash[c], .in = outs, .loc = rloc};
    int32_t idx = ptc_build(F, &rb);
    free(outs);
    ptc_build_args rb2 = {.code = PTC_OP_RETURN, .loc = rloc};
    if (idx < 0 || ptc_build(L.fn[L.NC + c], &rb2) < 0) goto out;
  }
  /* the schedule */
  {
    ptc_attr a = ptc_attr_int("pipeline.stages", L.P);
    ptc_module_set_attr(m, &a);
    a = ptc_attr_int("pipeline.microbatches", L.M);
    ptc_module_set_attr(m, &a);
    a = ptc_attr_int("pipeline.virtual", L.V);
    ptc_module_set_attr(m, &a);
    char word[16];
    a = ptc_attr_str("pipeline.schedule",
                     ptc_pass_choice_word(pipeline_opts[1].choices, kind, word, sizeof word));
    ptc_module_set_attr(m, &a);
    for (int32_t s = 0; s < L.P; s++) {
      ptc_buf b;
      ptc_buf_init(&b);
      schedule(&L, kind, s, &b);
      char key[48];
      snprintf(key, sizeof key, "pipeline.order.%d", s);
      a = ptc_attr_str(key, b.data ? b.data : "");
      ptc_module_set_attr(m, &a);
      ptc_buf_fini(&b);
    }
  }
  ptc_module_remove_func(m, ptc_module_find_func(m, "step"));
  *changed = true;
  rc = 0;
out:
  for (int32_t fi = 0; fi < L.nfn; fi++) free(L.lmap ? L.lmap[fi] : NULL);
  free(L.lmap);
  for (int32_t c = 0; c < L.NC && L.stash; c++) free(L.stash[c]);
  free(L.stash);
  free(L.nstash);
  free(L.capstash);
  free(L.fn);
out0:
  free(pmax);
  free(reads);
  free(L.cls);
  free(L.chunk);
  free(L.orig);
  free(res);
  return rc;
}

const ptc_pass_info ptc_pass_pipeline = {
    .name = "pipeline",
    .summary = "split @step into pipeline stages and microbatches (forward and backward "
               "chunks with send/recv, gradient accumulation, a schedule per stage)",
    .opts = pipeline_opts,
    .nopts = PTC_ARRAY_LEN(pipeline_opts),
    .run = run_pipeline,
};

/* ---- the static check and the timing model ------------------------------------ */

typedef struct unit {
  char kind; /* 'F' or 'B' */
  int32_t chunk, mb;
} unit;

typedef struct msg {
  int32_t src, dst, tag, mb;
  ptc_type type; /* local */
  ptc_loc loc;
  double time;
  bool taken;
} msg;

static int parse_order(const char *s, unit **out, int32_t *n) {
  int32_t cap = 16;
  *n = 0;
  *out = ptc_xmalloc((size_t)cap * sizeof **out);
  while (*s) {
    while (*s == ' ') s++;
    if (!*s) break;
    unit u;
    char k = *s++;
    char *end;
    long c = strtol(s, &end, 10);
    if ((k != 'F' && k != 'B') || end == s || *end != '.') return -1;
    s = end + 1;
    long mb = strtol(s, &end, 10);
    if (end == s) return -1;
    s = end;
    u.kind = k;
    u.chunk = (int32_t)c;
    u.mb = (int32_t)mb;
    if (*n == cap) {
      cap *= 2;
      *out = ptc_xrealloc(*out, (size_t)cap * sizeof **out);
    }
    (*out)[(*n)++] = u;
  }
  return 0;
}

/* FLOPs one rank spends in f: its ops on the pieces it holds. */
static double local_flops(const ptc_module *lm, const ptc_func *f) {
  const ptc_func *lf = lm ? ptc_module_find_func(lm, f->name) : NULL;
  return ptc_func_hw_flops(lf ? lf : f); /* recomputed ops take time too */
}

double ptc_pipe_bubble(const ptc_pipe_sim *sim) {
  double busy = 0;
  for (int32_t s = 0; s < sim->stages; s++) busy += sim->busy[s];
  double ideal = sim->stages ? busy / sim->stages : 0;
  return ideal > 0 ? (sim->makespan - ideal) / ideal : 0.0;
}

static int64_t local_stash_bytes(const ptc_module *m, const ptc_func *f) {
  int64_t b = 0;
  for (int32_t r = 0; r < f->nresults; r++) {
    ptc_type lt;
    ptc_local_type(&m->mesh, &f->result_types[r], &f->result_shards[r], &lt);
    b += ptc_type_bytes(&lt);
  }
  return b;
}

int ptc_pipeline_simulate(ptc_module *m, ptc_pipe_sim *out, bool report) {
  memset(out, 0, sizeof *out);
  const ptc_attr *sa = ptc_module_get_attr(m, "pipeline.stages");
  if (!sa) return 0;
  ptc_ctx *ctx = m->ctx;
  int32_t P = (int32_t)sa->u.i;
  if (P < 1 || P > PTC_PIPE_MAX_STAGES) {
    if (report) ptc_error(ctx, m->loc, "pipeline: %d stages (at most %d)", P, PTC_PIPE_MAX_STAGES);
    return -1;
  }
  out->stages = P;
  int pp = ptc_mesh_axis(&m->mesh, "pp", 2);
  unit **ord = ptc_xcalloc((size_t)P, sizeof *ord);
  int32_t *nord = ptc_xcalloc((size_t)P, sizeof *nord), *at = ptc_xcalloc((size_t)P, sizeof *at);
  double *clock = ptc_xcalloc((size_t)P, sizeof *clock);
  int64_t *live = ptc_xcalloc((size_t)P, sizeof *live);
  msg *q = NULL;
  int32_t nq = 0, capq = 0;
  int rc = -1;
  ptc_module *lm = ptc_module_get_attr(m, "partitioned") ? ptc_module_localize(m) : NULL;
  for (int32_t s = 0; s < P; s++) {
    char key[48];
    snprintf(key, sizeof key, "pipeline.order.%d", s);
    const ptc_attr *a = ptc_module_get_attr(m, key);
    if (!a || a->kind != PTC_ATTR_STR || parse_order(a->u.s, &ord[s], &nord[s]) != 0) {
      if (report) ptc_error(ctx, m->loc, "pipeline: module attribute %s is missing or not "
                            "a list like \"F0.0 B0.0\"", key);
      goto out;
    }
  }
  /* unit-level simulation: a unit starts when its stage is free and every
   * message it receives has been sent; its sends are available when it ends */
  for (;;) {
    bool progress = false, done = true;
    for (int32_t s = 0; s < P; s++) {
      if (at[s] >= nord[s]) continue;
      done = false;
      unit u = ord[s][at[s]];
      char name[32];
      snprintf(name, sizeof name, "%s.%d", u.kind == 'F' ? "fwd" : "bwd", u.chunk);
      ptc_func *f = ptc_module_find_func(m, name);
      if (!f) {
        if (report) ptc_error(ctx, m->loc, "pipeline: stage %d's order names %c%d.%d but the "
                              "module has no @%s", s, u.kind, u.chunk, u.mb, name);
        goto out;
      }
      if (u.kind == 'B') { /* its forward ran before on this stage */
        bool seen = false;
        for (int32_t k = 0; k < at[s] && !seen; k++)
          seen = ord[s][k].kind == 'F' && ord[s][k].chunk == u.chunk && ord[s][k].mb == u.mb;
        if (!seen) {
          if (report) ptc_error(ctx, m->loc, "pipeline: stage %d's order runs B%d.%d before "
                                "F%d.%d, whose activations it needs", s, u.chunk, u.mb,
                                u.chunk, u.mb);
          goto out;
        }
      }
      if (u.chunk % P != s) {
        if (report) ptc_error(ctx, m->loc, "pipeline: stage %d's order names chunk %d, which "
                              "runs on stage %d", s, u.chunk, u.chunk % P);
        goto out;
      }
      /* every recv available? */
      double ready = clock[s];
      bool ok = true;
      for (int32_t i = 0; i < f->nops && ok; i++) {
        const ptc_op *op = &f->ops[i];
        if (op->code != PTC_OP_RECV) continue;
        int32_t peer = (int32_t)ptc_op_attr_int(op, "peer", -1);
        int32_t tag = (int32_t)ptc_op_attr_int(op, "tag", -1);
        int32_t k = 0;
        while (k < nq && (q[k].taken || q[k].src != peer || q[k].dst != s || q[k].tag != tag)) k++;
        if (k == nq) ok = false;
        else if (q[k].time > ready) ready = q[k].time;
      }
      if (!ok) continue;
      /* take them, checking order, shape and type */
      for (int32_t i = 0; i < f->nops; i++) {
        const ptc_op *op = &f->ops[i];
        if (op->code != PTC_OP_RECV) continue;
        int32_t peer = (int32_t)ptc_op_attr_int(op, "peer", -1);
        int32_t tag = (int32_t)ptc_op_attr_int(op, "tag", -1);
        int32_t k = 0;
        while (q[k].taken || q[k].src != peer || q[k].dst != s || q[k].tag != tag) k++;
        ptc_type lt;
        const ptc_value *rv = &f->values[op->out[0]];
        ptc_local_type(&m->mesh, &rv->type, &rv->shard, &lt);
        if (q[k].mb != u.mb || !ptc_type_eq(&q[k].type, &lt)) {
          if (report) {
            ptc_buf a, b;
            ptc_buf_init(&a);
            ptc_buf_init(&b);
            ptc_type_print(&a, &q[k].type);
            ptc_type_print(&b, &lt);
            ptc_error(ctx, op->loc, "pipeline: transfers do not match: stage %d receives "
                      "(tag %d, %c%d.%d) %s of microbatch %d from stage %d, which sent %s "
                      "of microbatch %d", s, tag, u.kind, u.chunk, u.mb, b.data, u.mb, peer,
                      a.data, q[k].mb);
            ptc_note(ctx, q[k].loc, "the send");
            ptc_buf_fini(&a);
            ptc_buf_fini(&b);
          }
          goto out;
        }
        q[k].taken = true;
      }
      double dur = local_flops(lm, f) + 1;
      clock[s] = ready + dur;
      if (u.kind == 'F') out->busy[s] += dur, out->fwd_units++;
      else out->busy[s] += dur, out->bwd_units++;
      /* in-flight activations: a forward's stash lives until its backward */
      int64_t sb = local_stash_bytes(m, u.kind == 'F' ? f : ptc_module_find_func(m, name));
      if (u.kind == 'F') {
        live[s] += sb;
        if (live[s] > out->inflight_bytes[s]) out->inflight_bytes[s] = live[s];
      } else {
        char fn[32];
        snprintf(fn, sizeof fn, "fwd.%d", u.chunk);
        const ptc_func *fw = ptc_module_find_func(m, fn);
        live[s] -= fw ? local_stash_bytes(m, fw) : 0;
      }
      for (int32_t i = 0; i < f->nops; i++) {
        const ptc_op *op = &f->ops[i];
        if (op->code != PTC_OP_SEND) continue;
        if (nq == capq) {
          capq = capq ? 2 * capq : 64;
          q = ptc_xrealloc(q, (size_t)capq * sizeof *q);
        }
        const ptc_value *sv = &f->values[op->in[0]];
        msg mm = {.src = s, .dst = (int32_t)ptc_op_attr_int(op, "peer", -1),
                  .tag = (int32_t)ptc_op_attr_int(op, "tag", -1), .mb = u.mb, .loc = op->loc,
                  .time = clock[s]};
        ptc_local_type(&m->mesh, &sv->type, &sv->shard, &mm.type);
        if (mm.dst < 0 || mm.dst >= P || mm.dst == s) {
          if (report) ptc_error(ctx, op->loc, "pipeline: stage %d sends to stage %d, which "
                                "is not another stage of the %d", s, mm.dst, P);
          goto out;
        }
        q[nq++] = mm;
      }
      at[s]++;
      progress = true;
    }
    if (done) break;
    if (!progress) {
      if (report) {
        for (int32_t s = 0; s < P; s++)
          if (at[s] < nord[s]) {
            unit u = ord[s][at[s]];
            ptc_error(ctx, m->loc, "pipeline: the schedule cannot finish: stage %d waits "
                      "at %c%d.%d (unit %d of its order) for a transfer no stage will send; "
                      "this happens when chunks are cut inside layers so that values flow "
                      "back and forth between them: use fewer stages or virtual stages, or "
                      "a model with more layers", s, u.kind, u.chunk, u.mb, at[s]);
            break;
          }
      }
      goto out;
    }
  }
  for (int32_t k = 0; k < nq; k++)
    if (!q[k].taken) {
      if (report) ptc_error(ctx, q[k].loc, "pipeline: stage %d sends (tag %d, microbatch %d) "
                            "to stage %d, which never receives it", q[k].src, q[k].tag,
                            q[k].mb, q[k].dst);
      goto out;
    }
  /* what a stage accumulates, its step reads */
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    const ptc_func *f = m->funcs[fi];
    const char *n = f->name;
    if (strncmp(n, "fwd.", 4) != 0 && strncmp(n, "bwd.", 4) != 0) continue;
    int32_t s = atoi(n + 4) % P;
    char sn[32];
    snprintf(sn, sizeof sn, "step.%d", s);
    const ptc_func *st = ptc_module_find_func(m, sn);
    for (int32_t i = 0; i < f->nops; i++) {
      if (f->ops[i].code != PTC_OP_ASSIGN) continue;
      int32_t var = f->values[f->ops[i].in[0]].def;
      if (m->params[var].trainable) continue;
      if (!st || var >= st->cap_param_value || st->param_value[var] < 0) {
        if (report) ptc_error(ctx, f->ops[i].loc, "pipeline: @%s (stage %d) accumulates into "
                              "@%s, which @%s never reads", n, s, m->params[var].name, sn);
        goto out;
      }
    }
  }
  /* the once-per-step functions meet in the same collectives over pp */
  {
    const ptc_func *first = NULL;
    for (int32_t s = 0; s < P; s++) {
      char name[32];
      snprintf(name, sizeof name, "step.%d", s);
      const ptc_func *f = ptc_module_find_func(m, name);
      if (!f) continue;
      if (!first) {
        first = f;
        continue;
      }
      int32_t i = 0, j = 0;
      for (;;) {
        while (i < first->nops && !(first->ops[i].code == PTC_OP_ALL_REDUCE &&
                                   strcmp(ptc_op_attr(&first->ops[i], "axis")->u.s, "pp") == 0))
          i++;
        while (j < f->nops && !(f->ops[j].code == PTC_OP_ALL_REDUCE &&
                                strcmp(ptc_op_attr(&f->ops[j], "axis")->u.s, "pp") == 0))
          j++;
        if (i == first->nops && j == f->nops) break;
        ptc_type a, b;
        bool both = i < first->nops && j < f->nops;
        if (both) {
          const ptc_value *va = &first->values[first->ops[i].in[0]];
          const ptc_value *vb = &f->values[f->ops[j].in[0]];
          ptc_local_type(&m->mesh, &va->type, &va->shard, &a);
          ptc_local_type(&m->mesh, &vb->type, &vb->shard, &b);
        }
        if (!both || !ptc_type_eq(&a, &b)) {
          if (report)
            ptc_error(ctx, both ? f->ops[j].loc : m->loc, "pipeline: @%s and @%s do not "
                      "issue the same all_reduce over pp at position %d: every stage must "
                      "take part in each", first->name, f->name, i);
          goto out;
        }
        i++;
        j++;
      }
    }
  }
  double span = 0;
  for (int32_t s = 0; s < P; s++) span = clock[s] > span ? clock[s] : span;
  out->makespan = span;
  (void)pp;
  rc = 0;
out:
  for (int32_t s = 0; s < P; s++) free(ord[s]);
  free(ord);
  free(nord);
  free(at);
  free(clock);
  free(live);
  free(q);
  if (lm) ptc_module_destroy(lm);
  return rc;
}

static int run_check(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  (void)o;
  (void)changed;
  ptc_pipe_sim sim;
  return ptc_pipeline_simulate(m, &sim, true);
}

const ptc_pass_info ptc_pass_comm_check = {
    .name = "comm-check",
    .summary = "prove that pipeline transfers and per-step collectives match across "
               "stages (order, peer, shape, dtype) and that the schedule finishes",
    .opts = NULL,
    .nopts = 0,
    .run = run_check,
};

int32_t ptc_pipe_stage_of(const ptc_func *f, int32_t stages) {
  const char *n = f->name;
  if (strncmp(n, "fwd.", 4) == 0 || strncmp(n, "bwd.", 4) == 0) return atoi(n + 4) % stages;
  if (strncmp(n, "step.", 5) == 0) return atoi(n + 5);
  return -1;
}

void ptc_pipe_stage_vars(const ptc_module *m, int32_t stage, int32_t stages, int64_t *count,
                         int64_t *param_bytes, int64_t *state_bytes) {
  *count = *param_bytes = *state_bytes = 0;
  for (int32_t p = 0; p < m->nparams; p++) {
    bool used = false;
    for (int32_t fi = 0; fi < m->nfuncs && !used; fi++) {
      const ptc_func *f = m->funcs[fi];
      used = ptc_pipe_stage_of(f, stages) == stage && p < f->cap_param_value &&
             f->param_value[p] >= 0;
    }
    if (!used) continue;
    if (m->params[p].trainable) {
      *count += ptc_type_numel(&m->params[p].type);
      *param_bytes += ptc_type_bytes(&m->params[p].type);
    } else {
      *state_bytes += ptc_type_bytes(&m->params[p].type);
    }
  }
}
