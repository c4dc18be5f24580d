/* optimizer.c -- the `optimizer` pass: turns the gradients autodiff
 * computed into parameter updates, so the training step is one function of
 * ordinary IR that a dump shows whole.
 *
 * Input: @step returning (loss, grad.<p0>, grad.<p1>, ...): one gradient
 * per trainable parameter it reads, in module order (the autodiff pass's
 * contract; the values are also named %grad.<param>).  Output:
 *
 *   func @step(<inputs>, %lr: f32[], %step: f32[]) -> (f32[], f32[]) {
 *     ... forward and backward ...
 *     %norm = sqrt(sum of every reduce_sum(g * g))        global grad norm
 *     %scale = clip / maximum(%norm + 1e-6, clip)         (clip > 0 only)
 *     %p1, %m1, %v1 = adamw @p, %g * %scale, @p.m, @p.v, %lr, %step {...}
 *     assign @p, %p1   assign @p.m, %m1   assign @p.v, %v1
 *     return %loss, %norm
 *   }
 *
 * The moments are `state` variables (not trainable, init zeros) named
 * <param>.m and <param>.v (AdamW) or <param>.momentum (SGD).  Weight decay
 * follows the usual groups: matrices and embeddings (rank >= 2) decay,
 * norms' gains and biases (rank 1) do not.  The learning rate and the step
 * number are runtime scalars, so schedules live in ptrun, not in the plan.
 * Clipping matches PyTorch's clip_grad_norm_: coef = min(1, clip/(norm+1e-6)).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

enum { OPT_ADAMW, OPT_SGD };

static const ptc_pass_opt_spec optimizer_opts[] = {
    {.name = "kind", .kind = PTC_PASS_OPT_CHOICE, .choices = "adamw|sgd", .dflt = OPT_ADAMW,
     .help = "the update rule"},
    {.name = "beta1", .kind = PTC_PASS_OPT_FLOAT, .fdflt = 0.9, .fmin = 0, .fmax = 1,
     .help = "AdamW first-moment decay"},
    {.name = "beta2", .kind = PTC_PASS_OPT_FLOAT, .fdflt = 0.95, .fmin = 0, .fmax = 1,
     .help = "AdamW second-moment decay"},
    {.name = "eps", .kind = PTC_PASS_OPT_FLOAT, .fdflt = 1e-8, .fmin = 0, .fmax = 1,
     .help = "AdamW denominator epsilon"},
    {.name = "weight-decay", .kind = PTC_PASS_OPT_FLOAT, .fdflt = 0.1, .fmin = 0, .fmax = 1e3,
     .help = "decoupled weight decay of matrices and embeddings"},
    {.name = "decay-vectors", .kind = PTC_PASS_OPT_BOOL, .dflt = 0,
     .help = "also decay rank-1 params (norm gains, biases)"},
    {.name = "momentum", .kind = PTC_PASS_OPT_FLOAT, .fdflt = 0.9, .fmin = 0, .fmax = 1,
     .help = "SGD momentum"},
    {.name = "nesterov", .kind = PTC_PASS_OPT_BOOL, .dflt = 0, .help = "SGD Nesterov momentum"},
    {.name = "clip", .kind = PTC_PASS_OPT_FLOAT, .fdflt = 1.0, .fmin = 0, .fmax = 1e30,
     .help = "clip gradients to this global norm (0: off)"},
};

/* Builds a single-result op or returns -1 (reported by the builder). */
static int32_t b1(ptc_func *f, ptc_opcode code, const int32_t *in, int32_t nin,
                  const ptc_attr *attrs, int32_t nattr, ptc_loc loc) {
  return ptc_build1(f, code, in, nin, attrs, nattr, loc);
}

static int32_t scalar_const(ptc_func *f, double v, ptc_loc loc) {
  ptc_type t = {.dtype = PTC_DTYPE_F32, .rank = 0};
  ptc_attr a = ptc_attr_float("value", v);
  ptc_build_args ba = {.code = PTC_OP_CONSTANT, .nattr = 1, .attrs = &a, .ngiven = 1,
                       .given = &t, .loc = loc};
  int32_t idx = ptc_build(f, &ba);
  return idx < 0 ? -1 : f->ops[idx].out[0];
}

/* sum over every element of g, as f32[] */
static int32_t sum_all(ptc_func *f, int32_t g, ptc_loc loc) {
  const ptc_type tv = f->values[g].type, *t = &tv; /* building may move f->values */
  int64_t axes[PTC_MAX_RANK];
  for (int32_t d = 0; d < t->rank; d++) axes[d] = d;
  int32_t in[2] = {g, g};
  int32_t sq = b1(f, PTC_OP_MUL, in, 2, NULL, 0, loc);
  if (sq < 0 || t->rank == 0) return sq;
  ptc_attr a = ptc_attr_ints("axes", axes, t->rank);
  return b1(f, PTC_OP_REDUCE_SUM, &sq, 1, &a, 1, loc);
}

/* Adds a state variable named <param>.<suffix> like param p, init zeros. */
static int32_t add_state(ptc_module *m, int32_t p, const char *suffix) {
  char name[1024];
  snprintf(name, sizeof name, "%s.%s", m->params[p].name, suffix);
  /* pipeline stages holding one tied parameter share its moments' names
   * (each stage keeps its own copy) */
  int32_t have = ptc_module_find_param(m, name);
  if (have >= 0 && !m->params[have].trainable &&
      ptc_type_eq(&m->params[have].type, &m->params[p].type))
    return have;
  ptc_param copy = m->params[p]; /* add_param may move m->params */
  ptc_init zeros = {.kind = PTC_INIT_ZEROS};
  int32_t s = ptc_module_add_param(m, name, &copy.type, zeros, copy.loc);
  if (s < 0) return -1;
  m->params[s].trainable = false;
  m->params[s].shard = copy.shard;
  return s;
}

static int optimize_func(ptc_module *m, ptc_func *f, const ptc_pass_opts *o, bool *changed,
                         bool staged);

/* ---- fp16 dynamic loss scaling ------------------------------------------------
 * The precision pass seeds the backward with S = 2^16 * @loss_scale (the
 * variable holds S in units of its starting value, 2^16).  Here: the
 * gradients are unscaled (in fp32) by 1/S; a step whose gradients are not
 * finite keeps every old value (select) and halves S; after 2000 finite
 * steps in a row S doubles (@loss_scale.good counts them).  The step also
 * returns %overflow (1: skipped) and %loss_scale (S), which ptrun logs. */
enum { LOSS_SCALE_WINDOW = 2000 };
#define LOSS_SCALE_UNIT 65536.0

typedef struct loss_scaling {
  int32_t var, good;   /* @loss_scale, @loss_scale.good (module params) */
  int32_t ok;          /* 1.0 when the step's gradients are finite */
  int32_t inv;         /* 1 / S */
  int32_t skipped, shown;
} loss_scaling;

static bool fp16(const ptc_module *m) {
  const ptc_attr *a = ptc_module_get_attr(m, "precision");
  return a && a->kind == PTC_ATTR_STR && strcmp(a->u.s, "fp16") == 0;
}

static int loss_scale_begin(ptc_module *m, ptc_func *f, int32_t *total, loss_scaling *o, ptc_loc loc) {
  o->var = ptc_module_find_param(m, "loss_scale");
  o->good = ptc_module_find_param(m, "loss_scale.good");
  if (o->var < 0 || o->good < 0) {
    ptc_error(m->ctx, loc, "optimizer: fp16 training needs the state variables @loss_scale "
              "and @loss_scale.good the precision pass makes; run precision{dtype=fp16} "
              "before the optimizer");
    return -1;
  }
  int32_t sv = ptc_func_param_value(f, o->var);
  int32_t unit = scalar_const(f, LOSS_SCALE_UNIT, loc), zero = scalar_const(f, 0.0, loc);
  int32_t S = b1(f, PTC_OP_MUL, (int32_t[]){sv, unit}, 2, NULL, 0, loc);
  int32_t one = scalar_const(f, 1.0, loc);
  o->inv = S < 0 ? -1 : b1(f, PTC_OP_DIV, (int32_t[]){one, S}, 2, NULL, 0, loc);
  int32_t z = b1(f, PTC_OP_MUL, (int32_t[]){*total, zero}, 2, NULL, 0, loc);
  ptc_attr eq = ptc_attr_sym("cmp", "eq");
  o->ok = z < 0 ? -1 : b1(f, PTC_OP_COMPARE, (int32_t[]){z, zero}, 2, &eq, 1, loc);
  if (o->inv < 0 || o->ok < 0) return -1;
  f->values[o->ok].name = ptc_arena_strdup(&m->arena, "finite");
  /* the norm of the true gradients: sum / S^2, 0 for a skipped step */
  int32_t inv2 = b1(f, PTC_OP_MUL, (int32_t[]){o->inv, o->inv}, 2, NULL, 0, loc);
  int32_t t = inv2 < 0 ? -1 : b1(f, PTC_OP_MUL, (int32_t[]){*total, inv2}, 2, NULL, 0, loc);
  t = t < 0 ? -1 : b1(f, PTC_OP_SELECT, (int32_t[]){o->ok, t, zero}, 3, NULL, 0, loc);
  if (t < 0) return -1;
  *total = t;
  return 0;
}

static int loss_scale_end(ptc_module *m, ptc_func *f, loss_scaling *o, ptc_loc loc) {
  int32_t sv = ptc_func_param_value(f, o->var), gv = ptc_func_param_value(f, o->good);
  int32_t one = scalar_const(f, 1.0, loc), zero = scalar_const(f, 0.0, loc);
  int32_t two = scalar_const(f, 2.0, loc), half = scalar_const(f, 0.5, loc);
  int32_t win = scalar_const(f, LOSS_SCALE_WINDOW, loc), unit = scalar_const(f, LOSS_SCALE_UNIT, loc);
  int32_t g1 = b1(f, PTC_OP_ADD, (int32_t[]){gv, one}, 2, NULL, 0, loc);
  int32_t good = g1 < 0 ? -1 : b1(f, PTC_OP_SELECT, (int32_t[]){o->ok, g1, zero}, 3, NULL, 0, loc);
  ptc_attr ge = ptc_attr_sym("cmp", "ge");
  int32_t grow = good < 0 ? -1 : b1(f, PTC_OP_COMPARE, (int32_t[]){good, win}, 2, &ge, 1, loc);
  int32_t up = b1(f, PTC_OP_MUL, (int32_t[]){sv, two}, 2, NULL, 0, loc);
  int32_t down = b1(f, PTC_OP_MUL, (int32_t[]){sv, half}, 2, NULL, 0, loc);
  int32_t kept = grow < 0 || up < 0 ? -1 : b1(f, PTC_OP_SELECT, (int32_t[]){grow, up, sv}, 3, NULL, 0, loc);
  int32_t ns = kept < 0 || down < 0 ? -1
               : b1(f, PTC_OP_SELECT, (int32_t[]){o->ok, kept, down}, 3, NULL, 0, loc);
  int32_t ng = grow < 0 ? -1 : b1(f, PTC_OP_SELECT, (int32_t[]){grow, zero, good}, 3, NULL, 0, loc);
  if (ns < 0 || ng < 0) return -1;
  ptc_build_args a1 = {.code = PTC_OP_ASSIGN, .nin = 2, .in = (int32_t[]){sv, ns}, .loc = loc};
  ptc_build_args a2 = {.code = PTC_OP_ASSIGN, .nin = 2, .in = (int32_t[]){gv, ng}, .loc = loc};
  if (ptc_build(f, &a1) < 0 || ptc_build(f, &a2) < 0) return -1;
  o->skipped = b1(f, PTC_OP_SUB, (int32_t[]){one, o->ok}, 2, NULL, 0, loc);
  o->shown = b1(f, PTC_OP_MUL, (int32_t[]){ns, unit}, 2, NULL, 0, loc);
  if (o->skipped < 0 || o->shown < 0) return -1;
  f->values[o->skipped].name = ptc_arena_strdup(&m->arena, "overflow");
  f->values[o->shown].name = ptc_arena_strdup(&m->arena, "loss_scale");
  return 0;
}

/* A gradient has its parameter's shape; under mixed precision it may be
 * stored at 16 bits (passes/precision.c). */
static bool same_shape(const ptc_type *p, const ptc_type *g) {
  if (p->rank != g->rank || !ptc_dtype_is_float(g->dtype)) return false;
  for (int32_t d = 0; d < p->rank; d++)
    if (p->dims[d] != g->dims[d]) return false;
  return true;
}

/* Whether f reads trainable parameter p: itself, or (mixed precision) its
 * 16-bit copy. */
static bool reads(const ptc_func *f, int32_t p) {
  if (p < f->cap_param_value && f->param_value[p] >= 0) return true;
  int32_t c = ptc_precision_copy_of(f->mod, p);
  return c >= 0 && c < f->cap_param_value && f->param_value[c] >= 0;
}

static int32_t cast1(ptc_func *f, int32_t v, ptc_dtype t, ptc_loc loc) {
  if (f->values[v].type.dtype == t) return v;
  ptc_attr a = ptc_attr_dtype("to", t);
  return ptc_build1(f, PTC_OP_CAST, &v, 1, &a, 1, loc);
}

static int run_optimizer(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  ptc_ctx *ctx = m->ctx;
  ptc_func *f = ptc_module_find_func(m, "step");
  if (f) return optimize_func(m, f, o, changed, false);
  /* a pipelined step (passes/pipeline.c): one @step.<s> per stage */
  int n = 0;
  for (int32_t i = 0; i < m->nfuncs; i++) {
    if (strncmp(m->funcs[i]->name, "step.", 5) != 0) continue;
    if (optimize_func(m, m->funcs[i], o, changed, true) != 0) return -1;
    n++;
  }
  if (n) return 0;
  ptc_error(ctx, m->loc, "optimizer: the module has no function @step; run "
            "autodiff first (--pass-pipeline=...,autodiff,optimizer)");
  return -1;
}

/* One step function: @step (its gradients in module order), or a pipeline
 * stage's @step.<s> (`staged`: gradients of the parameters the stage holds,
 * by name; %grad.<p>.shared marks a copy another stage owns, left out of the
 * norm, and the norm's sum of squares is summed over pp). */
static int optimize_func(ptc_module *m, ptc_func *f, const ptc_pass_opts *o, bool *changed,
                         bool staged) {
  ptc_ctx *ctx = m->ctx;
  ptc_op *ret = &f->ops[f->nops - 1];
  ptc_loc rloc = ret->loc;
  if (ret->nin < 2 && !staged) {
    ptc_error(ctx, rloc, "optimizer: @step returns no gradients; nothing to update "
              "(does the loss depend on any parameter?)");
    return -1;
  }
  for (int32_t i = 0; i < f->nargs; i++) {
    const char *n = f->values[f->args[i]].name;
    if (n && (strcmp(n, "lr") == 0 || strcmp(n, "step") == 0)) {
      ptc_error(ctx, f->loc, "optimizer: @step already has an argument %%%s; was the "
                "optimizer pass run twice?", n);
      return -1;
    }
  }

  /* Pair each gradient result with its parameter. */
  int32_t ngrads = ret->nin - 1;
  int32_t *grads = ptc_xmalloc((size_t)ngrads * sizeof *grads);
  int32_t *params = ptc_xmalloc((size_t)ngrads * sizeof *params);
  int32_t loss = ret->in[0];
  int rc = -1;
  bool *shared = NULL;
  /* Autodiff's contract: result i+1 is the gradient of the i-th trainable
   * param @step reads, in module order.  Names (%grad.<param>) are checked
   * where present, but a pass like cse may merge two equal gradients and
   * keep only one name, so position is what counts. */
  int32_t k = 0;
  shared = ptc_xcalloc((size_t)ngrads + 1, sizeof *shared);
  if (staged) {
    for (k = 0; k < ngrads; k++) {
      int32_t g = ret->in[k + 1];
      const char *n = f->values[g].name;
      char pname[1024];
      size_t len = n ? strlen(n) : 0;
      shared[k] = len > 12 && strcmp(n + len - 7, ".shared") == 0;
      if (!n || strncmp(n, "grad.", 5) != 0 || len - 5 >= sizeof pname) {
        ptc_error(ctx, rloc, "optimizer: result %d of @%s is not named %%grad.<param>",
                  k + 1, f->name);
        goto out;
      }
      snprintf(pname, sizeof pname, "%.*s", (int)(len - 5 - (shared[k] ? 7 : 0)), n + 5);
      int32_t p = ptc_module_find_param(m, pname);
      if (p < 0 || !same_shape(&m->params[p].type, &f->values[g].type)) {
        ptc_error(ctx, rloc, "optimizer: result %%%s of @%s names no parameter of its type",
                  n, f->name);
        goto out;
      }
      grads[k] = g;
      params[k] = p;
    }
  }
  for (int32_t p = 0; p < m->nparams && !staged; p++) {
    if (!m->params[p].trainable || !reads(f, p)) continue;
    if (k == ngrads) {
      k++;
      break;
    }
    int32_t g = ret->in[k + 1];
    const char *n = f->values[g].name;
    if (!same_shape(&m->params[p].type, &f->values[g].type) ||
        (n && strncmp(n, "grad.", 5) == 0 && strcmp(n + 5, m->params[p].name) != 0)) {
      ptc_error(ctx, rloc, "optimizer: result %d of @step is not the gradient of "
                "parameter '%s' (autodiff returns one gradient per trainable "
                "parameter, in module order)", k + 1, m->params[p].name);
      goto out;
    }
    grads[k] = g;
    params[k] = p;
    k++;
  }
  if (k != ngrads) {
    ptc_error(ctx, rloc, "optimizer: @step returns %d gradients but reads %d trainable "
              "parameters; run autodiff right before the optimizer", ngrads, k);
    goto out;
  }

  /* The signature: + %lr, %step; results (loss, grad norm). */
  ptc_type scalar = {.dtype = PTC_DTYPE_F32, .rank = 0};
  int32_t lr = ptc_func_add_arg(f, "lr", &scalar, NULL);
  int32_t step = ptc_func_add_arg(f, "step", &scalar, NULL);
  bool *keep = ptc_xmalloc((size_t)f->nops);
  memset(keep, 1, (size_t)f->nops);
  keep[f->nops - 1] = false;
  ptc_func_erase_ops(f, keep);
  free(keep);
  f->nresults = 0;
  ptc_func_add_result(f, &scalar, NULL);
  ptc_func_add_result(f, &scalar, NULL);
  *changed = true;

  /* Global gradient norm, and the clip coefficient. */
  int32_t total = -1;
  for (int32_t i = 0; i < ngrads; i++) {
    if (shared[i]) continue;
    int32_t g32 = cast1(f, grads[i], PTC_DTYPE_F32, rloc);
    int32_t s = g32 < 0 ? -1 : sum_all(f, g32, rloc);
    if (s < 0) goto out;
    int32_t in[2] = {total, s};
    total = total < 0 ? s : b1(f, PTC_OP_ADD, in, 2, NULL, 0, rloc);
    if (total < 0) goto out;
  }
  if (total < 0) total = scalar_const(f, 0.0, rloc); /* a stage with shared copies only */
  if (staged && total >= 0) { /* every stage holds part of the sum */
    ptc_attr at[2] = {ptc_attr_sym("axis", "pp"), ptc_attr_sym("op", "sum")};
    total = b1(f, PTC_OP_ALL_REDUCE, &total, 1, at, 2, rloc);
  }
  if (total < 0) goto out;
  /* fp16: the gradients carry the loss scale S; ok = 1 when their sum of
   * squares is finite (total * 0 is 0 then, NaN otherwise) */
  loss_scaling ls = {.var = -1};
  if (fp16(m) && loss_scale_begin(m, f, &total, &ls, rloc) != 0) goto out;
  int32_t norm = b1(f, PTC_OP_SQRT, &total, 1, NULL, 0, rloc);
  if (norm < 0) goto out;
  f->values[norm].name = ptc_arena_strdup(&m->arena, "grad_norm");
  double clip = ptc_pass_opt_float(o, "clip");
  int32_t scale = -1;
  if (clip > 0) {
    int32_t c_eps = scalar_const(f, 1e-6, rloc), c_clip = scalar_const(f, clip, rloc);
    if (c_eps < 0 || c_clip < 0) goto out;
    int32_t in[2] = {norm, c_eps};
    int32_t ne = b1(f, PTC_OP_ADD, in, 2, NULL, 0, rloc);
    int32_t in2[2] = {ne, c_clip};
    int32_t den = ne < 0 ? -1 : b1(f, PTC_OP_MAXIMUM, in2, 2, NULL, 0, rloc);
    int32_t in3[2] = {c_clip, den};
    scale = den < 0 ? -1 : b1(f, PTC_OP_DIV, in3, 2, NULL, 0, rloc);
    if (scale < 0) goto out;
    f->values[scale].name = ptc_arena_strdup(&m->arena, "clip_scale");
  }

  int kind = ptc_pass_opt_choice(o, "kind");
  double wd = ptc_pass_opt_float(o, "weight-decay");
  bool decay_vectors = ptc_pass_opt_bool(o, "decay-vectors");
  for (int32_t i = 0; i < ngrads; i++) {
    int32_t p = params[i];
    ptc_loc ploc = m->params[p].loc.file ? m->params[p].loc : rloc;
    int32_t g = grads[i];
    if (ls.var >= 0) {
      /* unscaled in fp32: at 16 bits small gradients would flush to zero */
      int32_t g32 = cast1(f, g, PTC_DTYPE_F32, ploc);
      int32_t f1 = scale >= 0 ? b1(f, PTC_OP_MUL, (int32_t[]){scale, ls.inv}, 2, NULL, 0, ploc)
                              : ls.inv;
      g = g32 < 0 || f1 < 0 ? -1 : b1(f, PTC_OP_MUL, (int32_t[]){g32, f1}, 2, NULL, 0, ploc);
      if (g < 0) goto out;
    } else if (scale >= 0) {
      /* a 16-bit gradient is scaled at 16 bits: the update reads it as is */
      int32_t sc = cast1(f, scale, f->values[g].type.dtype, ploc);
      int32_t in[2] = {g, sc};
      g = sc < 0 ? -1 : b1(f, PTC_OP_MUL, in, 2, NULL, 0, ploc);
      if (g < 0) goto out;
    }
    double pwd = m->params[p].type.rank >= 2 || decay_vectors ? wd : 0.0;
    int32_t pv = ptc_func_param_value(f, p);
    int32_t s1 = add_state(m, p, kind == OPT_ADAMW ? "m" : "momentum");
    int32_t s2 = kind == OPT_ADAMW ? add_state(m, p, "v") : -2;
    if (s1 < 0 || s2 == -1) goto out;
    int32_t sv1 = ptc_func_param_value(f, s1);
    int32_t idx;
    if (kind == OPT_ADAMW) {
      int32_t sv2 = ptc_func_param_value(f, s2);
      int32_t in[6] = {pv, g, sv1, sv2, lr, step};
      ptc_attr at[4] = {ptc_attr_float("beta1", ptc_pass_opt_float(o, "beta1")),
                        ptc_attr_float("beta2", ptc_pass_opt_float(o, "beta2")),
                        ptc_attr_float("eps", ptc_pass_opt_float(o, "eps")),
                        ptc_attr_float("weight_decay", pwd)};
      ptc_build_args ba = {.code = PTC_OP_ADAMW, .nin = 6, .in = in, .nattr = 4,
                           .attrs = at, .loc = ploc};
      idx = ptc_build(f, &ba);
    } else {
      int32_t in[4] = {pv, g, sv1, lr};
      ptc_attr at[3] = {ptc_attr_float("momentum", ptc_pass_opt_float(o, "momentum")),
                        ptc_attr_float("weight_decay", pwd),
                        ptc_attr_bool("nesterov", ptc_pass_opt_bool(o, "nesterov"))};
      ptc_build_args ba = {.code = PTC_OP_SGD, .nin = 4, .in = in, .nattr = 3,
                           .attrs = at, .loc = ploc};
      idx = ptc_build(f, &ba);
    }
    if (idx < 0) goto out;
    int32_t nout = f->ops[idx].nout;
    int32_t outs[3];
    memcpy(outs, f->ops[idx].out, (size_t)nout * sizeof *outs);
    int32_t vars[3] = {pv, sv1, kind == OPT_ADAMW ? ptc_func_param_value(f, s2) : -1};
    if (ls.var >= 0) /* an overflowed step keeps every old value */
      for (int32_t r = 0; r < nout; r++) {
        outs[r] = b1(f, PTC_OP_SELECT, (int32_t[]){ls.ok, outs[r], vars[r]}, 3, NULL, 0, ploc);
        if (outs[r] < 0) goto out;
      }
    for (int32_t r = 0; r < nout; r++) {
      int32_t in[2] = {vars[r], outs[r]};
      ptc_build_args ba = {.code = PTC_OP_ASSIGN, .nin = 2, .in = in, .loc = ploc};
      if (ptc_build(f, &ba) < 0) goto out;
    }
    /* mixed precision: the step's 16-bit copy follows the new master weight */
    int32_t copy = ptc_precision_copy_of(m, p);
    if (copy >= 0) {
      int32_t cv = ptc_func_param_value(f, copy);
      int32_t low = cast1(f, outs[0], m->params[copy].type.dtype, ploc);
      int32_t in[2] = {cv, low};
      ptc_build_args ba = {.code = PTC_OP_ASSIGN, .nin = 2, .in = in, .loc = ploc};
      if (low < 0 || ptc_build(f, &ba) < 0) goto out;
    }
  }
  int32_t rin[4] = {loss, norm, -1, -1};
  int32_t nr = 2;
  if (ls.var >= 0) {
    if (loss_scale_end(m, f, &ls, rloc) != 0) goto out;
    rin[nr++] = ls.skipped;
    rin[nr++] = ls.shown;
    ptc_func_add_result(f, &scalar, NULL);
    ptc_func_add_result(f, &scalar, NULL);
  }
  ptc_build_args rb = {.code = PTC_OP_RETURN, .nin = nr, .in = rin, .loc = rloc};
  if (ptc_build(f, &rb) < 0) goto out;
  rc = 0;
out:
  free(shared);
  free(grads);
  free(params);
  return rc;
}

const ptc_pass_info ptc_pass_optimizer = {
    .name = "optimizer",
    .summary = "turn @step's gradients into AdamW or SGD updates with global-norm "
               "clipping; moments become state variables",
    .opts = optimizer_opts,
    .nopts = PTC_ARRAY_LEN(optimizer_opts),
    .run = run_optimizer,
};
