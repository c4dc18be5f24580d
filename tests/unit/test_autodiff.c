/* test_autodiff.c -- the autodiff pass against finite differences.
 *
 * Every op that can appear in a forward graph is differentiated here: a
 * small f64 function feeds random parameters through the op, reduces the
 * result to a scalar loss (the sum of the result times a fixed random
 * tensor, so every output element matters with its own weight), runs the
 * autodiff pass, evaluates @step with the reference evaluator and compares
 * every gradient element with a central difference of the loss.  In f64
 * the difference is good to about 1e-10, so the tolerance is a relative
 * 1e-6.  The gradient ops' evaluator semantics (attention_grad,
 * layernorm_grad, ...) are checked through the same comparison.
 *
 * Then whole models: GPT-2 and Llama at tiny sizes through the frontend,
 * with a sample of parameter elements checked the same way.  The models
 * declare f32 parameters and the evaluator rounds every f32 result, which
 * would drown a finite difference in rounding noise (1e-7 / 1e-5 = 1e-2),
 * so the test converts each compiled module to f64 (every f32 type and
 * cast), which keeps the graph exactly as compiled and lets the same tight
 * tolerance hold; the f32 module is differentiated too, and its gradients
 * must match the f64 ones to f32 accuracy.
 *
 * A coverage check at the end fails when an op of ops.def is neither
 * differentiated by some case nor shown to be refused with a diagnostic,
 * so a new op cannot slip past this file.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"
#include "test_model.h"

static bool covered[PTC_OP_COUNT];  /* differentiated and checked */
static bool refused[PTC_OP_COUNT];  /* shown to be refused with a diagnostic */

/* ---- building test functions ------------------------------------------------ */

#define MAXT 16

typedef struct gt {
  const char *name;
  ptc_ctx *ctx;
  ptc_module *m;
  ptc_func *f;
  ptc_tensor params[MAXT]; /* indexed like m->params */
  ptc_tensor args[MAXT];
  int nargs;
  uint64_t seed;
} gt;

static ptc_type ty(ptc_dtype dt, int rank, const int64_t *dims) {
  ptc_type t;
  memset(&t, 0, sizeof t);
  t.dtype = dt;
  t.rank = rank;
  for (int i = 0; i < rank; i++) t.dims[i] = dims[i];
  return t;
}
#define DIMS(...) \
  (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]) { __VA_ARGS__ }
#define F64(...) ty(PTC_DTYPE_F64, DIMS(__VA_ARGS__))
#define SCALAR64 ty(PTC_DTYPE_F64, 0, NULL)
#define IN(...) \
  (int32_t[]){__VA_ARGS__}, (int32_t)(sizeof((int32_t[]){__VA_ARGS__}) / sizeof(int32_t))
#define AT(...) \
  (ptc_attr[]){__VA_ARGS__}, (int32_t)(sizeof((ptc_attr[]){__VA_ARGS__}) / sizeof(ptc_attr))
#define NOAT NULL, 0

static void gt_init(gt *g, const char *name) {
  memset(g, 0, sizeof *g);
  g->name = name;
  g->ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(g->ctx, true);
  g->m = ptc_module_create(g->ctx, "t");
  g->f = ptc_module_add_func(g->m, "forward", ptc_loc_unknown);
  g->seed = 1;
  for (const char *p = name; *p; p++) g->seed = g->seed * 131 + (uint64_t)*p;
}

static void gt_fini(gt *g) {
  for (int i = 0; i < g->m->nparams; i++) ptc_tensor_free(&g->params[i]);
  for (int i = 0; i < g->nargs; i++) ptc_tensor_free(&g->args[i]);
  ptc_module_destroy(g->m);
  ptc_ctx_destroy(g->ctx);
}

/* A trainable parameter with values uniform in [lo, hi); returns its read. */
static int32_t param(gt *g, ptc_type t, double lo, double hi) {
  char name[16];
  snprintf(name, sizeof name, "p%d", (int)g->m->nparams);
  int32_t p = ptc_module_add_param(g->m, name, &t, (ptc_init){.kind = PTC_INIT_NONE},
                                   ptc_loc_unknown);
  PTC_ASSERT(p >= 0 && p < MAXT);
  g->params[p] = ptc_tensor_new(&t);
  ptc_tensor_fill_random(&g->params[p], g->seed + 7919u * (uint64_t)p, lo, hi);
  return ptc_func_param_value(g->f, p);
}

/* A function argument (no gradient) with random values in [lo, hi). */
static int32_t arg(gt *g, ptc_type t, double lo, double hi) {
  PTC_ASSERT(g->nargs < MAXT);
  g->args[g->nargs] = ptc_tensor_new(&t);
  ptc_tensor_fill_random(&g->args[g->nargs], g->seed * 31 + (uint64_t)g->nargs, lo, hi);
  g->nargs++;
  return ptc_func_add_arg(g->f, NULL, &t, NULL);
}

/* An integer argument with the given values. */
static int32_t ids(gt *g, int rank, const int64_t *dims, const double *vals) {
  ptc_type t = ty(PTC_DTYPE_I32, rank, dims);
  int32_t v = arg(g, t, 0, 1);
  memcpy(g->args[g->nargs - 1].data, vals, (size_t)ptc_type_numel(&t) * sizeof(double));
  return v;
}

static int32_t build(gt *g, ptc_opcode code, const int32_t *in, int32_t nin,
                     const ptc_attr *attrs, int32_t nattr, const ptc_type *given) {
  ptc_build_args a = {.code = code, .nin = nin, .in = in, .nattr = nattr, .attrs = attrs,
                      .ngiven = given ? 1 : 0, .given = given, .loc = ptc_loc_unknown};
  int32_t idx = ptc_build(g->f, &a);
  if (idx < 0) {
    fprintf(stderr, "%s: building '%s' failed:\n%s", g->name, ptc_opinfo_get(code)->name,
            ptc_ctx_diag_text(g->ctx));
    exit(1);
  }
  return g->f->ops[idx].out[0];
}
#define OP(g, code, ...) build(g, code, __VA_ARGS__, NULL)
#define OPG(g, code, t, ...) build(g, code, __VA_ARGS__, &(t))

/* loss = sum(x * w) with w a fixed random argument of x's type; returns
 * after writing `return loss`. */
static void finish(gt *g, int32_t x) {
  ptc_type t = g->f->values[x].type;
  int32_t w = arg(g, t, -1, 1);
  int32_t y = OP(g, PTC_OP_MUL, IN(x, w), NOAT);
  int64_t axes[PTC_MAX_RANK];
  for (int32_t d = 0; d < t.rank; d++) axes[d] = d;
  int32_t loss = t.rank ? OP(g, PTC_OP_REDUCE_SUM, IN(y), AT(ptc_attr_ints("axes", axes, t.rank)))
                        : y;
  ptc_type lt = g->f->values[loss].type;
  ptc_func_add_result(g->f, &lt, NULL);
  ptc_build_args r = {.code = PTC_OP_RETURN, .nin = 1, .in = &loss, .loc = ptc_loc_unknown};
  PTC_ASSERT(ptc_build(g->f, &r) >= 0);
}

/* ---- running and checking ---------------------------------------------------- */

static int run_autodiff(ptc_module *m) {
  ptc_pipeline *p = ptc_pipeline_parse(m->ctx, "autodiff");
  PTC_ASSERT(p != NULL);
  int rc = ptc_pipeline_run(m, p, NULL); /* verifies the result */
  ptc_pipeline_destroy(p);
  return rc;
}

/* The loss of f (its first result) at the given params. */
static double eval_loss(ptc_func *f, const ptc_tensor *args, ptc_tensor *params) {
  ptc_tensor res[1 + MAXT];
  memset(res, 0, sizeof res);
  if (ptc_eval_func(f, args, params, res) != 0) {
    fprintf(stderr, "eval failed: %s\n", ptc_ctx_diag_text(f->mod->ctx));
    exit(1);
  }
  double l = res[0].data[0];
  for (int32_t i = 0; i < f->nresults; i++) ptc_tensor_free(&res[i]);
  return l;
}

static bool close_enough(double ad, double fd, double rel, double abs_tol) {
  return fabs(ad - fd) <= rel * fmax(fabs(ad), fabs(fd)) + abs_tol;
}

/* Differentiates g's module and checks every gradient element of every
 * trainable parameter against central differences (rel: the relative
 * tolerance), the names of the gradient results and the step's loss. */
static void check_grads(gt *g, double rel) {
  ptc_module *m = g->m;
  CHECK_MSG(ptc_verify_module(m) == 0, "%s: %s", g->name, ptc_ctx_diag_text(g->ctx));
  for (int32_t i = 0; i < g->f->nops; i++) covered[g->f->ops[i].code] = true;
  ptc_module *fwd = ptc_module_clone(m);
  if (run_autodiff(m) != 0) {
    CHECK_MSG(false, "%s: autodiff failed: %s", g->name, ptc_ctx_diag_text(g->ctx));
    ptc_module_destroy(fwd);
    return;
  }
  ptc_func *step = ptc_module_find_func(m, "step");
  ptc_func *f = ptc_module_find_func(fwd, "forward");
  CHECK(step != NULL && ptc_module_find_func(m, "forward") == NULL);
  ptc_tensor res[1 + MAXT];
  memset(res, 0, sizeof res);
  PTC_ASSERT(ptc_eval_func(step, g->args, g->params, res) == 0);
  double loss = eval_loss(f, g->args, g->params);
  CHECK_MSG(res[0].data[0] == loss, "%s: the step's loss %.17g is not the forward "
            "loss %.17g", g->name, res[0].data[0], loss);

  int32_t r = 1;
  double worst = 0;
  for (int32_t p = 0; p < m->nparams; p++) {
    if (!m->params[p].trainable) continue;
    CHECK_MSG(r < step->nresults, "%s: no gradient result for @%s", g->name,
              m->params[p].name);
    if (r >= step->nresults) break;
    /* the gradient value is named after its param */
    char want[64];
    snprintf(want, sizeof want, "grad.%s", m->params[p].name);
    const char *got = step->values[step->ops[step->nops - 1].in[r]].name;
    CHECK_MSG(got && strcmp(got, want) == 0, "%s: result %d is named %s, not %s", g->name,
              (int)r, got ? got : "(none)", want);
    ptc_tensor *pt = &g->params[p];
    int64_t n = ptc_type_numel(&pt->type);
    CHECK(ptc_type_eq(&res[r].type, &pt->type));
    for (int64_t i = 0; i < n; i++) {
      double h = 1e-5 * fmax(1.0, fabs(pt->data[i])), x0 = pt->data[i];
      pt->data[i] = x0 + h;
      double lp = eval_loss(f, g->args, g->params);
      pt->data[i] = x0 - h;
      double lm = eval_loss(f, g->args, g->params);
      pt->data[i] = x0;
      double fd = (lp - lm) / (2 * h), ad = res[r].data[i];
      double err = fabs(fd - ad) / fmax(fmax(fabs(ad), fabs(fd)), 1e-3);
      if (err > worst) worst = err;
      CHECK_MSG(close_enough(ad, fd, rel, 1e-9), "%s: d loss / d %s[%lld]: autodiff %.12g, "
                "finite difference %.12g", g->name, m->params[p].name, (long long)i, ad, fd);
    }
    r++;
  }
  CHECK_MSG(r == step->nresults, "%s: %d results for %d params", g->name,
            (int)step->nresults, (int)r - 1);
  if (getenv("PTC_TEST_VERBOSE"))
    printf("  %-34s worst relative error %.2e\n", g->name, worst);
  for (int32_t i = 0; i < step->nresults; i++) ptc_tensor_free(&res[i]);
  ptc_module_destroy(fwd);
}

/* Builds nothing more: checks and frees. */
static void done(gt *g, double rel) {
  check_grads(g, rel);
  gt_fini(g);
}

static int count_ops(const ptc_func *f, ptc_opcode code) {
  int n = 0;
  for (int32_t i = 0; i < f->nops; i++) n += f->ops[i].code == code;
  return n;
}

/* ---- element-wise ----------------------------------------------------------- */

static void test_binary(void) {
  static const ptc_opcode ops[] = {PTC_OP_ADD, PTC_OP_SUB, PTC_OP_MUL, PTC_OP_DIV,
                                   PTC_OP_MAXIMUM};
  for (int i = 0; i < PTC_ARRAY_LEN(ops); i++) {
    const char *n = ptc_opinfo_get(ops[i])->name;
    double lo = ops[i] == PTC_OP_DIV ? 0.5 : -1; /* keep the divisor from 0 */
    char name[64];
    /* same shapes */
    snprintf(name, sizeof name, "%s same shape", n);
    gt g;
    gt_init(&g, name);
    int32_t a = param(&g, F64(3, 4), -1, 1), b = param(&g, F64(3, 4), lo, 1.5);
    finish(&g, OP(&g, ops[i], IN(a, b), NOAT));
    done(&g, 1e-6);
    /* both operands broadcast: [2,1,4] with [3,1] -> [2,3,4] */
    snprintf(name, sizeof name, "%s broadcast both", n);
    gt_init(&g, name);
    a = param(&g, F64(2, 1, 4), -1, 1);
    b = param(&g, F64(3, 1), lo, 1.5);
    finish(&g, OP(&g, ops[i], IN(a, b), NOAT));
    done(&g, 1e-6);
    /* a bias-like vector and a scalar on the left */
    snprintf(name, sizeof name, "%s vector and scalar", n);
    gt_init(&g, name);
    a = param(&g, SCALAR64, lo, 1.5);
    b = param(&g, F64(4), lo, 1.5);
    int32_t x = param(&g, F64(2, 3, 4), lo, 1.5);
    finish(&g, OP(&g, ops[i], IN(a, OP(&g, ops[i], IN(x, b), NOAT)), NOAT));
    done(&g, 1e-6);
  }
}

static void test_unary(void) {
  static const struct {
    ptc_opcode op;
    double lo, hi;
  } cases[] = {
      {PTC_OP_NEG, -1, 1},      {PTC_OP_EXP, -1, 1},     {PTC_OP_LOG, 0.2, 2},
      {PTC_OP_SQRT, 0.2, 2},    {PTC_OP_RSQRT, 0.2, 2},  {PTC_OP_TANH, -2, 2},
      {PTC_OP_SIGMOID, -3, 3},  {PTC_OP_RELU, -1, 1},    {PTC_OP_GELU, -3, 3},
      {PTC_OP_SILU, -3, 3},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(cases); i++) {
    gt g;
    gt_init(&g, ptc_opinfo_get(cases[i].op)->name);
    int32_t a = param(&g, F64(3, 5), cases[i].lo, cases[i].hi);
    /* relu's kink: keep the inputs away from 0 so the difference is smooth */
    for (int64_t k = 0; k < 15; k++)
      if (fabs(g.params[0].data[k]) < 0.01) g.params[0].data[k] = 0.5;
    finish(&g, OP(&g, cases[i].op, IN(a), NOAT));
    done(&g, 1e-6);
  }
}

static void test_cast_constant_compare(void) {
  /* f32 parameter cast up: the gradient is cast back to f32, so it is exact
   * to f32 rounding only */
  gt g;
  gt_init(&g, "cast f32 -> f64");
  ptc_type t32 = ty(PTC_DTYPE_F32, DIMS(2, 3));
  int32_t a = param(&g, t32, -1, 1);
  int32_t c = OP(&g, PTC_OP_CAST, IN(a), AT(ptc_attr_dtype("to", PTC_DTYPE_F64)));
  finish(&g, OP(&g, PTC_OP_MUL, IN(c, c), NOAT));
  done(&g, 1e-6);

  /* integer ids cast to float: they get no gradient */
  gt_init(&g, "cast i32 -> f64, constant");
  int32_t p = param(&g, F64(2, 3), -1, 1);
  int32_t id = ids(&g, DIMS(2, 3), (double[]){1, 2, 3, 4, 5, 6});
  int32_t fl = OP(&g, PTC_OP_CAST, IN(id), AT(ptc_attr_dtype("to", PTC_DTYPE_F64)));
  ptc_type st = SCALAR64;
  int32_t k = OPG(&g, PTC_OP_CONSTANT, st, NULL, 0, AT(ptc_attr_float("value", 0.25)));
  finish(&g, OP(&g, PTC_OP_ADD, IN(OP(&g, PTC_OP_MUL, IN(p, fl), NOAT), k), NOAT));
  check_grads(&g, 1e-6);
  ptc_func *s = ptc_module_find_func(g.m, "step");
  CHECK_MSG(s && count_ops(s, PTC_OP_CAST) == 1, "a cast of the ids' gradient was built");
  gt_fini(&g);

  /* compare passes no gradient: d/dx sum(x * (x > y) * w) = (x > y) * w */
  gt_init(&g, "compare");
  int32_t x = param(&g, F64(3, 4), -1, 1);
  int32_t y = param(&g, F64(4), -1, 1);
  int32_t mask = OP(&g, PTC_OP_COMPARE, IN(x, y), AT(ptc_attr_sym("cmp", "gt")));
  finish(&g, OP(&g, PTC_OP_MUL, IN(x, mask), NOAT));
  check_grads(&g, 1e-6);
  s = ptc_module_find_func(g.m, "step");
  /* y only reaches the loss through the mask: its gradient is a zero splat */
  const ptc_op *ret = s ? &s->ops[s->nops - 1] : NULL;
  const ptc_value *gy = ret ? &s->values[ret->in[2]] : NULL;
  CHECK(gy && gy->kind == PTC_VALUE_OP && s->ops[gy->def].code == PTC_OP_CONSTANT);
  gt_fini(&g);

  /* select passes the gradient to the side it took */
  for (int side = 0; side < 2; side++) {
    gt_init(&g, side ? "select (false)" : "select (true)");
    int32_t u = param(&g, F64(3, 4), -1, 1), w = param(&g, F64(3, 4), -1, 1);
    int32_t cnd = OPG(&g, PTC_OP_CONSTANT, st, NULL, 0, AT(ptc_attr_float("value", side ? 0 : 1)));
    int32_t sel = OP(&g, PTC_OP_SELECT, IN(cnd, u, w), NOAT);
    finish(&g, OP(&g, PTC_OP_MUL, IN(sel, sel), NOAT));
    check_grads(&g, 1e-6);
    gt_fini(&g);
  }

  /* the cmp kinds evaluate as documented */
  gt_init(&g, "compare kinds");
  int32_t u = arg(&g, F64(3), 0, 1), v = arg(&g, F64(3), 0, 1);
  memcpy(g.args[0].data, (double[]){1, 2, 3}, 3 * sizeof(double));
  memcpy(g.args[1].data, (double[]){2, 2, 2}, 3 * sizeof(double));
  int32_t ge = OP(&g, PTC_OP_COMPARE, IN(u, v), AT(ptc_attr_sym("cmp", "ge")));
  int32_t gtv = OP(&g, PTC_OP_COMPARE, IN(u, v), AT(ptc_attr_sym("cmp", "gt")));
  int32_t eq = OP(&g, PTC_OP_COMPARE, IN(u, v), AT(ptc_attr_sym("cmp", "eq")));
  int32_t all = OP(&g, PTC_OP_CONCAT, IN(ge, gtv, eq), AT(ptc_attr_int("axis", 0)));
  ptc_type at = g.f->values[all].type;
  ptc_func_add_result(g.f, &at, NULL);
  ptc_build_args r = {.code = PTC_OP_RETURN, .nin = 1, .in = &all};
  PTC_ASSERT(ptc_build(g.f, &r) >= 0);
  ptc_tensor out = {0};
  PTC_ASSERT(ptc_eval_func(g.f, g.args, g.params, &out) == 0);
  static const double want[9] = {0, 1, 1, 0, 0, 1, 0, 1, 0};
  for (int i = 0; i < 9; i++)
    CHECK_MSG(out.data[i] == want[i], "compare [%d] = %g", i, out.data[i]);
  ptc_tensor_free(&out);
  gt_fini(&g);
}

/* ---- shape ops and reductions ---------------------------------------------- */

static void test_shape_ops(void) {
  gt g;
  gt_init(&g, "reshape");
  int32_t a = param(&g, F64(2, 3, 4), -1, 1);
  ptc_type rt = F64(4, 6);
  finish(&g, OPG(&g, PTC_OP_RESHAPE, rt, IN(a), NOAT));
  done(&g, 1e-6);

  gt_init(&g, "transpose");
  a = param(&g, F64(2, 3, 4), -1, 1);
  int64_t perm[3] = {2, 0, 1};
  finish(&g, OP(&g, PTC_OP_TRANSPOSE, IN(a), AT(ptc_attr_ints("perm", perm, 3))));
  done(&g, 1e-6);

  gt_init(&g, "slice");
  a = param(&g, F64(2, 5, 3), -1, 1);
  finish(&g, OP(&g, PTC_OP_SLICE, IN(a),
                AT(ptc_attr_int("axis", 1), ptc_attr_int("start", 1), ptc_attr_int("end", 4))));
  done(&g, 1e-6);

  /* slices of one value: tiling the axis (one concat), with gaps (a concat
   * with zeros), overlapping (a pad each, summed) */
  static const struct {
    const char *name;
    int64_t s[3][2];
    int concats, pads;
  } sl[] = {
      {"slices tiling an axis", {{0, 2}, {2, 5}, {5, 6}}, 1, 0},
      {"slices with gaps", {{1, 2}, {3, 4}, {4, 5}}, 1, 0},
      {"slices overlapping", {{0, 3}, {2, 5}, {4, 6}}, 0, 3},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(sl); i++) {
    gt_init(&g, sl[i].name);
    a = param(&g, F64(2, 6), -1, 1);
    int32_t acc = -1;
    for (int k = 0; k < 3; k++) {
      int32_t piece = OP(&g, PTC_OP_SLICE, IN(a),
                         AT(ptc_attr_int("axis", 1), ptc_attr_int("start", sl[i].s[k][0]),
                            ptc_attr_int("end", sl[i].s[k][1])));
      int64_t ax[1] = {1};
      piece = OP(&g, PTC_OP_REDUCE_SUM, IN(OP(&g, PTC_OP_TANH, IN(piece), NOAT)),
                 AT(ptc_attr_ints("axes", ax, 1)));
      acc = acc < 0 ? piece : OP(&g, PTC_OP_ADD, IN(acc, piece), NOAT);
    }
    finish(&g, acc);
    check_grads(&g, 1e-6);
    ptc_func *s = ptc_module_find_func(g.m, "step");
    CHECK_MSG(s && count_ops(s, PTC_OP_CONCAT) == sl[i].concats &&
              count_ops(s, PTC_OP_PAD) == sl[i].pads, "%s: %d concats, %d pads", sl[i].name,
              s ? count_ops(s, PTC_OP_CONCAT) : -1, s ? count_ops(s, PTC_OP_PAD) : -1);
    gt_fini(&g);
  }

  /* a slice of a slice, and a slice of the whole axis */
  gt_init(&g, "nested and whole slices");
  a = param(&g, F64(2, 6), -1, 1);
  int32_t s1 = OP(&g, PTC_OP_SLICE, IN(a),
                  AT(ptc_attr_int("axis", 1), ptc_attr_int("start", 2), ptc_attr_int("end", 6)));
  int32_t s2 = OP(&g, PTC_OP_SLICE, IN(s1),
                  AT(ptc_attr_int("axis", 1), ptc_attr_int("start", 0), ptc_attr_int("end", 2)));
  int32_t s3 = OP(&g, PTC_OP_SLICE, IN(a),
                  AT(ptc_attr_int("axis", 0), ptc_attr_int("start", 0), ptc_attr_int("end", 2)));
  finish(&g, OP(&g, PTC_OP_MUL, IN(s2, OP(&g, PTC_OP_TANH, IN(s2), NOAT)), NOAT));
  (void)s3;
  done(&g, 1e-6);

  gt_init(&g, "pad");
  a = param(&g, F64(2, 3), -1, 1);
  finish(&g, OP(&g, PTC_OP_PAD, IN(a),
                AT(ptc_attr_int("axis", 0), ptc_attr_int("before", 1), ptc_attr_int("after", 2))));
  done(&g, 1e-6);

  gt_init(&g, "concat");
  a = param(&g, F64(2, 3), -1, 1);
  int32_t b = param(&g, F64(2, 1), -1, 1);
  int32_t x = arg(&g, F64(2, 2), -1, 1);
  finish(&g, OP(&g, PTC_OP_CONCAT, IN(a, x, b, a), AT(ptc_attr_int("axis", 1))));
  done(&g, 1e-6);

  gt_init(&g, "broadcast_to");
  a = param(&g, F64(3, 1), -1, 1);
  ptc_type bt = F64(2, 3, 4);
  finish(&g, OPG(&g, PTC_OP_BROADCAST_TO, bt, IN(a), NOAT));
  done(&g, 1e-6);
}

static void test_reductions(void) {
  static const ptc_opcode ops[] = {PTC_OP_REDUCE_SUM, PTC_OP_REDUCE_MEAN, PTC_OP_REDUCE_MAX};
  for (int i = 0; i < PTC_ARRAY_LEN(ops); i++) {
    for (int keep = 0; keep < 2; keep++) {
      char name[64];
      snprintf(name, sizeof name, "%s%s", ptc_opinfo_get(ops[i])->name,
               keep ? " keepdim" : "");
      gt g;
      gt_init(&g, name);
      int32_t a = param(&g, F64(2, 3, 4), -1, 1);
      int64_t axes[2] = {0, 2}, one[1] = {1};
      int32_t r = keep ? OP(&g, ops[i], IN(a), AT(ptc_attr_ints("axes", axes, 2),
                                                 ptc_attr_bool("keepdim", true)))
                       : OP(&g, ops[i], IN(a), AT(ptc_attr_ints("axes", one, 1)));
      finish(&g, r);
      done(&g, 1e-6);
    }
  }
  /* ties share reduce_max's gradient evenly (an exact check: no differences
   * across a kink) */
  gt g;
  gt_init(&g, "reduce_max ties");
  int32_t a = param(&g, F64(2, 3), -1, 1);
  memcpy(g.params[0].data, (double[]){1, 3, 3, 2, 0, -1}, 6 * sizeof(double));
  int64_t ax[1] = {1};
  int32_t r = OP(&g, PTC_OP_REDUCE_MAX, IN(a), AT(ptc_attr_ints("axes", ax, 1)));
  int32_t loss = OP(&g, PTC_OP_REDUCE_SUM, IN(r), AT(ptc_attr_ints("axes", (int64_t[]){0}, 1)));
  ptc_func_add_result(g.f, &g.f->values[loss].type, NULL);
  ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = 1, .in = &loss};
  PTC_ASSERT(ptc_build(g.f, &ret) >= 0);
  CHECK(run_autodiff(g.m) == 0);
  ptc_tensor res[2];
  memset(res, 0, sizeof res);
  PTC_ASSERT(ptc_eval_func(ptc_module_find_func(g.m, "step"), g.args, g.params, res) == 0);
  static const double want[6] = {0, 0.5, 0.5, 1, 0, 0};
  for (int i = 0; i < 6; i++) CHECK_MSG(res[1].data[i] == want[i], "[%d] = %g", i, res[1].data[i]);
  ptc_tensor_free(&res[0]);
  ptc_tensor_free(&res[1]);
  gt_fini(&g);
}

/* ---- matmul ----------------------------------------------------------------- */

static void test_matmul(void) {
  static const struct {
    const char *name;
    ptc_type a, b;
    bool ta, tb;
  } cases[] = {
      {"matmul 2-D", {PTC_DTYPE_F64, 2, {3, 4}}, {PTC_DTYPE_F64, 2, {4, 5}}, false, false},
      {"matmul transpose_a", {PTC_DTYPE_F64, 2, {4, 3}}, {PTC_DTYPE_F64, 2, {4, 5}}, true, false},
      {"matmul transpose_b", {PTC_DTYPE_F64, 2, {3, 4}}, {PTC_DTYPE_F64, 2, {5, 4}}, false, true},
      {"matmul transpose both", {PTC_DTYPE_F64, 2, {4, 3}}, {PTC_DTYPE_F64, 2, {5, 4}}, true, true},
      {"matmul batched", {PTC_DTYPE_F64, 3, {2, 3, 4}}, {PTC_DTYPE_F64, 3, {2, 4, 5}}, false,
       false},
      {"matmul batch broadcast", {PTC_DTYPE_F64, 4, {2, 1, 3, 4}}, {PTC_DTYPE_F64, 3, {3, 4, 5}},
       false, false},
      {"matmul batch broadcast transposed", {PTC_DTYPE_F64, 4, {2, 1, 4, 3}},
       {PTC_DTYPE_F64, 4, {1, 3, 5, 4}}, true, true},
      {"matmul x[B,T,C] @ W[C,N]", {PTC_DTYPE_F64, 3, {2, 3, 4}}, {PTC_DTYPE_F64, 2, {4, 5}},
       false, false},
      {"matmul x[B,T,C] @ W[N,C]^T", {PTC_DTYPE_F64, 3, {2, 3, 4}}, {PTC_DTYPE_F64, 2, {5, 4}},
       false, true},
      {"matmul x[B,C,T]^T @ W[C,N]", {PTC_DTYPE_F64, 3, {2, 4, 3}}, {PTC_DTYPE_F64, 2, {4, 5}},
       true, false},
      {"matmul W[M,K] @ x[B,K,N]", {PTC_DTYPE_F64, 2, {3, 4}}, {PTC_DTYPE_F64, 3, {2, 4, 5}},
       false, false},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(cases); i++) {
    gt g;
    gt_init(&g, cases[i].name);
    int32_t a = param(&g, cases[i].a, -1, 1), b = param(&g, cases[i].b, -1, 1);
    ptc_attr at[2] = {ptc_attr_bool("transpose_a", cases[i].ta),
                      ptc_attr_bool("transpose_b", cases[i].tb)};
    finish(&g, OP(&g, PTC_OP_MATMUL, IN(a, b), at, 2));
    check_grads(&g, 1e-6);
    /* x[B,T,C] @ W: the weight's gradient is one 2-D matmul, no reduction */
    if (cases[i].a.rank == 3 && cases[i].b.rank == 2 && !cases[i].ta) {
      ptc_func *s = ptc_module_find_func(g.m, "step");
      CHECK_MSG(s && count_ops(s, PTC_OP_REDUCE_SUM) == 1 /* the loss */,
                "%s: the weight gradient reduces over the batch", cases[i].name);
      const ptc_value *gw = &s->values[s->ops[s->nops - 1].in[2]];
      CHECK(gw->type.rank == 2 && s->ops[gw->def].code == PTC_OP_MATMUL);
    }
    gt_fini(&g);
  }
}

/* ---- neural-network ops ------------------------------------------------------ */

static void test_nn_ops(void) {
  gt g;
  gt_init(&g, "embedding, repeated ids");
  int32_t id = ids(&g, DIMS(2, 3), (double[]){1, 0, 1, 3, 1, 0});
  int32_t tab = param(&g, F64(4, 5), -1, 1);
  finish(&g, OP(&g, PTC_OP_EMBEDDING, IN(id, tab), NOAT));
  done(&g, 1e-6);

  for (int axis = 0; axis < 3; axis++) {
    char name[32];
    snprintf(name, sizeof name, "softmax axis %d", axis);
    gt_init(&g, name);
    int32_t x = param(&g, F64(2, 3, 4), -2, 2);
    finish(&g, OP(&g, PTC_OP_SOFTMAX, IN(x), AT(ptc_attr_int("axis", axis))));
    done(&g, 1e-6);
  }

  gt_init(&g, "layernorm");
  int32_t x = param(&g, F64(2, 3, 5), -2, 2);
  int32_t gm = param(&g, F64(5), 0.5, 1.5), bs = param(&g, F64(5), -1, 1);
  finish(&g, OP(&g, PTC_OP_LAYERNORM, IN(x, gm, bs), AT(ptc_attr_float("eps", 1e-5))));
  done(&g, 1e-6);

  gt_init(&g, "rmsnorm");
  x = param(&g, F64(2, 3, 5), -2, 2);
  gm = param(&g, F64(5), 0.5, 1.5);
  finish(&g, OP(&g, PTC_OP_RMSNORM, IN(x, gm), AT(ptc_attr_float("eps", 1e-5))));
  done(&g, 1e-6);

  for (int inv = 0; inv < 2; inv++) {
    gt_init(&g, inv ? "rope inverse" : "rope");
    x = param(&g, F64(2, 4, 2, 6), -1, 1);
    finish(&g, OP(&g, PTC_OP_ROPE, IN(x), AT(ptc_attr_float("theta", 100.0),
                                              ptc_attr_bool("inverse", inv != 0))));
    done(&g, 1e-6);
  }

  /* rope then its inverse is the identity */
  gt_init(&g, "rope round trip");
  x = arg(&g, F64(1, 5, 1, 4), -1, 1);
  int32_t y = OP(&g, PTC_OP_ROPE, IN(x), AT(ptc_attr_float("theta", 10000.0)));
  y = OP(&g, PTC_OP_ROPE, IN(y), AT(ptc_attr_float("theta", 10000.0),
                                    ptc_attr_bool("inverse", true)));
  ptc_func_add_result(g.f, &g.f->values[y].type, NULL);
  ptc_build_args r = {.code = PTC_OP_RETURN, .nin = 1, .in = &y};
  PTC_ASSERT(ptc_build(g.f, &r) >= 0);
  ptc_tensor out = {0};
  PTC_ASSERT(ptc_eval_func(g.f, g.args, g.params, &out) == 0);
  for (int i = 0; i < 20; i++) CHECK(fabs(out.data[i] - g.args[0].data[i]) < 1e-12);
  ptc_tensor_free(&out);
  gt_fini(&g);
}

static void test_attention(void) {
  static const struct {
    const char *name;
    int64_t t, s, h, gkv, d, e;
    bool causal, scale;
  } cases[] = {
      {"attention GQA H=4 G=2 causal", 3, 3, 4, 2, 4, 4, true, false},
      {"attention GQA H=4 G=2", 3, 5, 4, 2, 4, 3, false, false},
      {"attention MHA causal scale", 4, 4, 2, 2, 3, 3, true, true},
      {"attention MQA H=4 G=1", 3, 2, 4, 1, 2, 2, false, true},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(cases); i++) {
    gt g;
    gt_init(&g, cases[i].name);
    int32_t q = param(&g, F64(2, cases[i].t, cases[i].h, cases[i].d), -1, 1);
    int32_t k = param(&g, F64(2, cases[i].s, cases[i].gkv, cases[i].d), -1, 1);
    int32_t v = param(&g, F64(2, cases[i].s, cases[i].gkv, cases[i].e), -1, 1);
    ptc_attr at[2] = {ptc_attr_bool("causal", cases[i].causal), ptc_attr_float("scale", 0.7)};
    finish(&g, OP(&g, PTC_OP_ATTENTION, IN(q, k, v), at, cases[i].scale ? 2 : 1));
    done(&g, 1e-6);
  }
}

static void test_cross_entropy(void) {
  for (int padded = 0; padded < 2; padded++) {
    gt g;
    gt_init(&g, padded ? "cross_entropy padded classes" : "cross_entropy");
    int32_t l = param(&g, F64(2, 3, 6), -2, 2);
    int32_t t = ids(&g, DIMS(2, 3), (double[]){0, 3, 2, 1, 3, 0});
    int32_t ce = padded ? OP(&g, PTC_OP_CROSS_ENTROPY, IN(l, t), AT(ptc_attr_int("classes", 4)))
                        : OP(&g, PTC_OP_CROSS_ENTROPY, IN(l, t), NOAT);
    CHECK(g.f->values[ce].type.dtype == PTC_DTYPE_F64); /* f64 logits: f64 loss */
    finish(&g, ce);
    check_grads(&g, 1e-6);
    if (padded) { /* the padding gets exactly zero */
      ptc_tensor res[2];
      memset(res, 0, sizeof res);
      PTC_ASSERT(ptc_eval_func(ptc_module_find_func(g.m, "step"), g.args, g.params, res) == 0);
      for (int i = 0; i < 36; i++)
        if (i % 6 >= 4)
          CHECK_MSG(res[1].data[i] == 0, "padded logit %d gets %g", i, res[1].data[i]);
      ptc_tensor_free(&res[0]);
      ptc_tensor_free(&res[1]);
    }
    gt_fini(&g);
  }
}

/* ---- graphs: sharing, tying, unreachable parameters ------------------------- */

static void test_graphs(void) {
  /* a value used several times: y = tanh(p); y * y + y */
  gt g;
  gt_init(&g, "value used twice");
  int32_t p = param(&g, F64(3, 2), -1, 1);
  int32_t y = OP(&g, PTC_OP_TANH, IN(p), NOAT);
  finish(&g, OP(&g, PTC_OP_ADD, IN(OP(&g, PTC_OP_MUL, IN(y, y), NOAT), y), NOAT));
  done(&g, 1e-6);

  /* tied embeddings: the table feeds the lookup and the output projection */
  gt_init(&g, "tied embedding and lm head");
  int32_t id = ids(&g, DIMS(2, 3), (double[]){4, 0, 2, 2, 1, 4});
  int32_t tg = ids(&g, DIMS(2, 3), (double[]){1, 2, 0, 3, 3, 4});
  int32_t wte = param(&g, F64(5, 4), -1, 1);
  int32_t w = param(&g, F64(4, 4), -1, 1);
  int32_t x = OP(&g, PTC_OP_EMBEDDING, IN(id, wte), NOAT);
  x = OP(&g, PTC_OP_TANH, IN(OP(&g, PTC_OP_MATMUL, IN(x, w), NOAT)), NOAT);
  int32_t logits = OP(&g, PTC_OP_MATMUL, IN(x, wte), AT(ptc_attr_bool("transpose_b", true)));
  int32_t loss = OP(&g, PTC_OP_CROSS_ENTROPY, IN(logits, tg), NOAT);
  ptc_func_add_result(g.f, &g.f->values[loss].type, NULL);
  ptc_build_args r = {.code = PTC_OP_RETURN, .nin = 1, .in = &loss};
  PTC_ASSERT(ptc_build(g.f, &r) >= 0);
  check_grads(&g, 1e-6);
  ptc_func *s = ptc_module_find_func(g.m, "step");
  /* the two contributions to wte are summed by one add */
  const ptc_value *gw = s ? &s->values[s->ops[s->nops - 1].in[1]] : NULL;
  CHECK(gw && s->ops[gw->def].code == PTC_OP_ADD);
  gt_fini(&g);

  /* two params of one shape added: both gradients are g itself, so the
   * second is a copy that carries its own name */
  gt_init(&g, "two params share a gradient");
  int32_t a = param(&g, F64(2, 3), -1, 1), b = param(&g, F64(2, 3), -1, 1);
  finish(&g, OP(&g, PTC_OP_ADD, IN(a, b), NOAT));
  done(&g, 1e-6);

  /* a parameter that does not reach the loss gets zeros; state gets nothing;
   * ops on values that do not need a gradient are not differentiated */
  gt_init(&g, "unreachable and state params");
  int32_t used = param(&g, F64(3), -1, 1);
  int32_t unused = param(&g, F64(2, 2), -1, 1);
  int32_t st = param(&g, F64(3), -1, 1);
  g.m->params[2].trainable = false;
  int32_t in = arg(&g, F64(3), -1, 1);
  int32_t dead = OP(&g, PTC_OP_EXP, IN(unused), NOAT);
  (void)dead;
  int32_t c = OP(&g, PTC_OP_EXP, IN(OP(&g, PTC_OP_MUL, IN(in, st), NOAT)), NOAT);
  finish(&g, OP(&g, PTC_OP_MUL, IN(used, c), NOAT));
  check_grads(&g, 1e-6);
  s = ptc_module_find_func(g.m, "step");
  CHECK_MSG(s && s->nresults == 3, "loss and two trainable params");
  const ptc_value *gu = s ? &s->values[s->ops[s->nops - 1].in[2]] : NULL;
  CHECK(gu && s->ops[gu->def].code == PTC_OP_CONSTANT && gu->type.rank == 2);
  /* exp's derivative is needed for nothing: only the forward exps exist */
  CHECK_MSG(s && count_ops(s, PTC_OP_EXP) == 2, "%d exps", s ? count_ops(s, PTC_OP_EXP) : -1);
  gt_fini(&g);

  /* the backward ops carry the forward op's location */
  gt_init(&g, "locations");
  ptc_loc L = {ptc_intern_cstr(g.ctx, "m.ptg"), 7, 3};
  p = param(&g, F64(2), -1, 1);
  ptc_build_args ta = {.code = PTC_OP_TANH, .nin = 1, .in = &p, .loc = L};
  int32_t ti = ptc_build(g.f, &ta);
  finish(&g, g.f->ops[ti].out[0]);
  CHECK(run_autodiff(g.m) == 0);
  s = ptc_module_find_func(g.m, "step");
  int n = 0;
  for (int32_t i = ti + 1; s && i < s->nops; i++)
    if (s->ops[i].loc.line == 7 && s->ops[i].loc.col == 3) n++;
  CHECK_MSG(n >= 3, "%d backward ops at the tanh's location", n); /* 1 - y*y, times g */
  gt_fini(&g);
}

/* ---- costs of the gradient ops ------------------------------------------------ */

static const ptc_op *find_op(const ptc_func *f, ptc_opcode code) {
  for (int32_t i = 0; i < f->nops; i++)
    if (f->ops[i].code == code) return &f->ops[i];
  return NULL;
}

static void test_costs(void) {
  gt g;
  gt_init(&g, "costs");
  int32_t q = param(&g, F64(2, 8, 4, 16), -1, 1), k = param(&g, F64(2, 8, 2, 16), -1, 1);
  int32_t x = param(&g, F64(2, 8, 32), -1, 1), gm = param(&g, F64(32), -1, 1);
  int32_t at = OP(&g, PTC_OP_ATTENTION, IN(q, k, k), AT(ptc_attr_bool("causal", true)));
  ptc_type flat = F64(2, 8, 64);
  int32_t n = OP(&g, PTC_OP_RMSNORM, IN(x, gm), AT(ptc_attr_float("eps", 1e-5)));
  int32_t both = OP(&g, PTC_OP_CONCAT, IN(OPG(&g, PTC_OP_RESHAPE, flat, IN(at), NOAT), n, n),
                    AT(ptc_attr_int("axis", 2)));
  finish(&g, both);
  CHECK(run_autodiff(g.m) == 0);
  ptc_func *s = ptc_module_find_func(g.m, "step");
  const ptc_op *fa = s ? find_op(s, PTC_OP_ATTENTION) : NULL;
  const ptc_op *ba = s ? find_op(s, PTC_OP_ATTENTION_GRAD) : NULL;
  const ptc_op *bn = s ? find_op(s, PTC_OP_RMSNORM_GRAD) : NULL;
  CHECK(fa && ba && bn);
  if (fa && ba && bn) {
    ptc_cost cf = ptc_op_cost(s, fa), cb = ptc_op_cost(s, ba), cn = ptc_op_cost(s, bn);
    /* the backward pass of attention is about 2.5 times the forward's work */
    CHECK_MSG(cb.flops > 2 * cf.flops && cb.flops < 3 * cf.flops, "%g vs %g", cb.flops,
              cf.flops);
    /* g, q, k, v read; dq, dk, dv written; all f64 */
    double want = 8.0 * (3 * 2 * 8 * 4 * 16 + 4 * 2 * 8 * 2 * 16);
    CHECK_MSG(cb.bytes == want, "attention_grad bytes %g, want %g", cb.bytes, want);
    CHECK(cn.flops > 0 && cn.bytes == 8.0 * (3 * 512 + 2 * 32)); /* g, x, dx; gamma, dgamma */
  }
  gt_fini(&g);
}

/* ---- refusals ----------------------------------------------------------------- */

static bool diag_has(ptc_ctx *ctx, const char *s) {
  const char *t = ptc_ctx_diag_text(ctx);
  return t && strstr(t, s);
}

static void test_refusals(void) {
  /* collectives need a mesh; each is refused at its location */
  const struct {
    ptc_opcode op;
    ptc_attr at[3];
    int nat;
  } coll[] = {
      {PTC_OP_ALL_REDUCE, {ptc_attr_sym("axis", "dp"), ptc_attr_sym("op", "sum")}, 2},
      {PTC_OP_ALL_GATHER, {ptc_attr_sym("axis", "dp"), ptc_attr_int("dim", 0)}, 2},
      {PTC_OP_REDUCE_SCATTER,
       {ptc_attr_sym("axis", "dp"), ptc_attr_int("dim", 0), ptc_attr_sym("op", "sum")}, 3},
      {PTC_OP_BROADCAST, {ptc_attr_sym("axis", "dp"), ptc_attr_int("root", 0)}, 2},
      {PTC_OP_SHARD, {ptc_attr_sym("axis", "dp"), ptc_attr_int("dim", 0)}, 2},
      {PTC_OP_TO_PARTIAL, {ptc_attr_sym("axis", "dp")}, 1},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(coll); i++) {
    gt g;
    gt_init(&g, ptc_opinfo_get(coll[i].op)->name);
    char err[64];
    PTC_ASSERT(ptc_mesh_parse("2", &g.m->mesh, err, sizeof err) == 0);
    int32_t p = param(&g, F64(4), -1, 1);
    ptc_loc L = {ptc_intern_cstr(g.ctx, "c.ptg"), 4, 9};
    ptc_build_args a = {.code = coll[i].op, .nin = 1, .in = &p, .nattr = coll[i].nat,
                        .attrs = coll[i].at, .loc = L};
    int32_t idx = ptc_build(g.f, &a);
    PTC_ASSERT(idx >= 0);
    finish(&g, g.f->ops[idx].out[0]);
    CHECK(run_autodiff(g.m) != 0);
    char want[128];
    snprintf(want, sizeof want, "c.ptg:4:9: error: autodiff: cannot differentiate '%s'",
             ptc_opinfo_get(coll[i].op)->name);
    CHECK_MSG(diag_has(g.ctx, want), "%s", ptc_ctx_diag_text(g.ctx));
    refused[coll[i].op] = true;
    gt_fini(&g);
  }

  /* the gradient ops are refused too (autodiff runs once) */
  static const ptc_opcode grads[] = {PTC_OP_RELU_GRAD, PTC_OP_GELU_GRAD, PTC_OP_SILU_GRAD,
                                     PTC_OP_SOFTMAX_GRAD};
  for (int i = 0; i < PTC_ARRAY_LEN(grads); i++) {
    gt g;
    gt_init(&g, ptc_opinfo_get(grads[i])->name);
    int32_t p = param(&g, F64(2, 3), -1, 1);
    ptc_attr ax = ptc_attr_int("axis", 1);
    finish(&g, OP(&g, grads[i], IN(p, p), &ax, grads[i] == PTC_OP_SOFTMAX_GRAD ? 1 : 0));
    CHECK(run_autodiff(g.m) != 0);
    CHECK_MSG(diag_has(g.ctx, "cannot differentiate") &&
              diag_has(g.ctx, ptc_opinfo_get(grads[i])->name), "%s", ptc_ctx_diag_text(g.ctx));
    refused[grads[i]] = true;
    gt_fini(&g);
  }
  {
    gt g;
    gt_init(&g, "multi-result grad ops");
    int32_t x = param(&g, F64(2, 4), -1, 1), gm = param(&g, F64(4), -1, 1);
    ptc_attr eps = ptc_attr_float("eps", 1e-5);
    int32_t in[3] = {x, x, gm};
    ptc_build_args a = {.code = PTC_OP_LAYERNORM_GRAD, .nin = 3, .in = in, .nattr = 1,
                        .attrs = &eps};
    int32_t idx = ptc_build(g.f, &a);
    PTC_ASSERT(idx >= 0);
    finish(&g, g.f->ops[idx].out[1]);
    CHECK(run_autodiff(g.m) != 0);
    CHECK_MSG(diag_has(g.ctx, "cannot differentiate 'layernorm_grad'"), "%s",
              ptc_ctx_diag_text(g.ctx));
    refused[PTC_OP_LAYERNORM_GRAD] = true;
    gt_fini(&g);
  }

  /* @forward must exist and return a float scalar; @step must be free */
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  static const struct {
    const char *text, *want;
  } bad[] = {
      {"module @m {\n  func @f() {\n    return\n  }\n}\n", "has no function @forward"},
      {"module @m {\n  param @w : f64[2]\n  func @forward() -> f64[2] {\n"
       "    %0 = exp @w : f64[2]\n    return %0\n  }\n}\n",
       "@forward must return a float scalar loss"},
      {"module @m {\n  param @w : f64[]\n  func @forward() -> f64[] {\n"
       "    %0 = exp @w : f64[]\n    return %0\n  }\n  func @step() {\n    return\n  }\n}\n",
       "already has a function @step"},
      {"module @m {\n  param @w : f64[]\n  func @forward() -> f64[] {\n"
       "    %grad.w = exp @w : f64[]\n    return %grad.w\n  }\n}\n",
       "already has a value named %grad.w"},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(bad); i++) {
    ptc_ctx_reset_errors(ctx);
    ptc_module *m = ptc_parse_module(ctx, "bad.ptir", bad[i].text, strlen(bad[i].text));
    PTC_ASSERT(m != NULL);
    CHECK(run_autodiff(m) != 0);
    CHECK_MSG(diag_has(ctx, bad[i].want), "want '%s', got: %s", bad[i].want,
              ptc_ctx_diag_text(ctx));
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

/* ---- whole models --------------------------------------------------------------- */

/* Every f32 in the module becomes f64: params, values, results, casts. */
static void to_f64(ptc_module *m) {
  for (int32_t p = 0; p < m->nparams; p++)
    if (m->params[p].type.dtype == PTC_DTYPE_F32) m->params[p].type.dtype = PTC_DTYPE_F64;
  for (int32_t i = 0; i < m->nfuncs; i++) {
    ptc_func *f = m->funcs[i];
    for (int32_t v = 0; v < f->nvalues; v++)
      if (f->values[v].type.dtype == PTC_DTYPE_F32) f->values[v].type.dtype = PTC_DTYPE_F64;
    for (int32_t r = 0; r < f->nresults; r++)
      if (f->result_types[r].dtype == PTC_DTYPE_F32) f->result_types[r].dtype = PTC_DTYPE_F64;
    for (int32_t k = 0; k < f->nops; k++)
      for (int32_t a = 0; a < f->ops[k].nattr; a++)
        if (f->ops[k].attrs[a].kind == PTC_ATTR_DTYPE &&
            f->ops[k].attrs[a].u.dtype == PTC_DTYPE_F32)
          f->ops[k].attrs[a].u.dtype = PTC_DTYPE_F64;
  }
}


static void test_model(const char *path, const char *sets, int64_t vocab, int64_t classes) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m32 = test_compile_model(ctx, path, sets, NULL);
  CHECK_MSG(m32 != NULL, "%s: %s", path, ptc_ctx_diag_text(ctx));
  if (!m32) {
    ptc_ctx_destroy(ctx);
    return;
  }
  ptc_module *m = ptc_module_clone(m32);
  to_f64(m);
  CHECK_MSG(ptc_verify_module(m) == 0, "%s in f64: %s", path, ptc_ctx_diag_text(ctx));
  ptc_module *fwd = ptc_module_clone(m);
  ptc_func *f = ptc_module_find_func(fwd, "forward");
  for (int32_t i = 0; i < f->nops; i++) covered[f->ops[i].code] = true;

  /* inputs: tokens and targets; params uniform, gains around 1 */
  ptc_tensor args[2];
  for (int a = 0; a < 2; a++) {
    args[a] = ptc_tensor_new(&f->values[f->args[a]].type);
    ptc_tensor_fill_random(&args[a], 11 + (uint64_t)a, 0, (double)(a ? classes : vocab));
  }
  int32_t np = m->nparams;
  ptc_tensor *params = ptc_xcalloc((size_t)np, sizeof *params);
  for (int32_t p = 0; p < np; p++) {
    params[p] = ptc_tensor_new(&m->params[p].type);
    bool gain = m->params[p].init.kind == PTC_INIT_ONES;
    ptc_tensor_fill_random(&params[p], 100 + (uint64_t)p, gain ? 0.5 : -0.5, gain ? 1.5 : 0.5);
  }

  CHECK_MSG(run_autodiff(m) == 0, "%s: %s", path, ptc_ctx_diag_text(ctx));
  CHECK_MSG(run_autodiff(m32) == 0, "%s (f32): %s", path, ptc_ctx_diag_text(ctx));
  ptc_func *s = ptc_module_find_func(m, "step"), *s32 = ptc_module_find_func(m32, "step");
  if (!s || !s32) goto out;
  CHECK(s->nresults == np + 1);
  ptc_tensor *res = ptc_xcalloc((size_t)s->nresults, sizeof *res);
  ptc_tensor *res32 = ptc_xcalloc((size_t)s->nresults, sizeof *res32);
  PTC_ASSERT(ptc_eval_func(s, args, params, res) == 0);
  /* the f32 module reads the same values, rounded to f32 */
  ptc_tensor *p32 = ptc_xcalloc((size_t)np, sizeof *p32);
  for (int32_t p = 0; p < np; p++) {
    p32[p] = ptc_tensor_new(&m32->params[p].type);
    for (int64_t i = 0; i < ptc_type_numel(&p32[p].type); i++)
      p32[p].data[i] = (double)(float)params[p].data[i];
  }
  PTC_ASSERT(ptc_eval_func(s32, args, p32, res32) == 0);

  /* a sample of elements of every parameter against finite differences */
  uint64_t st = 12345;
  double worst = 0, worst32 = 0;
  int checked = 0;
  for (int32_t p = 0; p < np; p++) {
    int64_t n = ptc_type_numel(&params[p].type);
    double gmax = 0;
    for (int64_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(res[p + 1].data[i]));
    for (int k = 0; k < 4; k++) {
      st = st * 6364136223846793005ull + 1442695040888963407ull;
      int64_t i = (int64_t)((st >> 33) % (uint64_t)n);
      double x0 = params[p].data[i], h = 1e-5;
      params[p].data[i] = x0 + h;
      double lp = eval_loss(f, args, params);
      params[p].data[i] = x0 - h;
      double lm = eval_loss(f, args, params);
      params[p].data[i] = x0;
      double fd = (lp - lm) / (2 * h), ad = res[p + 1].data[i];
      worst = fmax(worst, fabs(fd - ad) / fmax(fmax(fabs(fd), fabs(ad)), 1e-3));
      CHECK_MSG(close_enough(ad, fd, 1e-6, 1e-9), "%s: d loss / d %s[%lld]: autodiff %.12g, "
                "finite difference %.12g", path, m->params[p].name, (long long)i, ad, fd);
      checked++;
    }
    /* f32: every element agrees to f32 accuracy, relative to the largest */
    for (int64_t i = 0; i < n; i++) {
      double d = fabs(res32[p + 1].data[i] - res[p + 1].data[i]) / fmax(gmax, 1e-6);
      worst32 = fmax(worst32, d);
    }
  }
  CHECK_MSG(worst32 < 1e-3, "%s: f32 gradients differ from f64 by %.2e", path, worst32);
  CHECK(fabs(res32[0].data[0] - res[0].data[0]) < 1e-4 * fabs(res[0].data[0]));
  CHECK(checked == 4 * np);
  if (getenv("PTC_TEST_VERBOSE"))
    printf("  %-34s %d elements, worst relative error %.2e (f32 vs f64 %.2e)\n", path,
           checked, worst, worst32);
  for (int32_t i = 0; i < s->nresults; i++) {
    ptc_tensor_free(&res[i]);
    ptc_tensor_free(&res32[i]);
  }
  for (int32_t p = 0; p < np; p++) ptc_tensor_free(&p32[p]);
  free(p32);
  free(res);
  free(res32);
out:
  for (int32_t p = 0; p < np; p++) ptc_tensor_free(&params[p]);
  free(params);
  ptc_tensor_free(&args[0]);
  ptc_tensor_free(&args[1]);
  ptc_module_destroy(fwd);
  ptc_module_destroy(m);
  ptc_module_destroy(m32);
  ptc_ctx_destroy(ctx);
}

/* ---- coverage ----------------------------------------------------------------- */

static void test_coverage(void) {
  /* not forward ops: the training state ops and the terminator; the
   * remaining gradient ops are refused through the same rule as those
   * tested in test_refusals */
  static const ptc_opcode other[] = {
      PTC_OP_SEND,           PTC_OP_RECV,     PTC_OP_RETURN,
      PTC_OP_ASSIGN,         PTC_OP_ADAMW,    PTC_OP_SGD,
      PTC_OP_RMSNORM_GRAD,   PTC_OP_ATTENTION_GRAD, PTC_OP_CROSS_ENTROPY_GRAD,
      PTC_OP_EMBEDDING_GRAD,
  };
  for (int i = 0; i < PTC_ARRAY_LEN(other); i++) refused[other[i]] = true;
  for (int i = 0; i < PTC_OP_COUNT; i++)
    CHECK_MSG(covered[i] || refused[i], "op '%s' has no gradient test",
              ptc_opinfo_get((ptc_opcode)i)->name);
}

int main(void) {
  test_binary();
  test_unary();
  test_cast_constant_compare();
  test_shape_ops();
  test_reductions();
  test_matmul();
  test_nn_ops();
  test_attention();
  test_cross_entropy();
  test_graphs();
  test_costs();
  test_refusals();
  test_model("models/gpt2.ptg", "layers=2,dim=16,heads=2,vocab=32,ctx=16,batch=2,seq=8", 32,
             32);
  test_model("models/llama.ptg",
             "layers=2,dim=16,heads=2,kv_heads=1,ffn=24,vocab=32,ctx=8,batch=2,seq=8", 32, 32);
  test_coverage();
  return test_report("test_autodiff");
}
