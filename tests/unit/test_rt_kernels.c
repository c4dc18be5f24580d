/* test_rt_kernels.c -- every opcode's CPU kernel against the reference
 * evaluator (ir/eval.c, double precision) on random inputs.
 *
 * Each case builds a small function through the IR builder, runs it with
 * ptc_eval_func and with the runtime's executor (ptrt_program_run, on one
 * thread and on three), and requires every result -- and every variable an
 * assign wrote -- to agree: ||runtime - eval||_2 <= 1e-4 ||eval||_2 (plus a
 * tiny absolute floor for all-zero results), and the two thread counts to
 * agree bit for bit.  The test fails listing any opcode of ops.def that
 * has no kernel or no case here, so a new op cannot land untested.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "runtime/ptrt.h"
#include "test.h"

#define D(...) ((const int64_t[]){__VA_ARGS__})
#define MAXT 16

static bool covered[PTC_OP_COUNT];

typedef struct tc {
  const char *name;
  ptc_ctx *ctx;
  ptc_module *m;
  ptc_func *f;
  ptc_tensor args[MAXT];
  int nargs;
  ptc_tensor params[MAXT]; /* initial values of module params */
  uint64_t seed;
} tc;

static void tc_init(tc *t, const char *name) {
  memset(t, 0, sizeof *t);
  t->name = name;
  t->ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(t->ctx, true);
  t->m = ptc_module_create(t->ctx, "t");
  /* a one-device mesh, so collectives and transfers have axes to name */
  char err[128];
  PTC_ASSERT(ptc_mesh_parse("pp=1,dp=1,tp=1", &t->m->mesh, err, sizeof err) == 0);
  t->f = ptc_module_add_func(t->m, "f", ptc_loc_unknown);
  t->seed = 1000;
  for (const char *s = name; *s; s++) t->seed = t->seed * 31 + (unsigned char)*s;
}

static ptc_type mk(ptc_dtype dt, int rank, const int64_t *dims) {
  ptc_type ty = {.dtype = dt, .rank = rank};
  if (rank) memcpy(ty.dims, dims, (size_t)rank * sizeof *dims);
  return ty;
}

/* A random argument, uniform in [lo, hi) (integers: floored). */
static int32_t arg(tc *t, ptc_dtype dt, int rank, const int64_t *dims, double lo, double hi) {
  ptc_type ty = mk(dt, rank, dims);
  PTC_ASSERT(t->nargs < MAXT);
  ptc_tensor *x = &t->args[t->nargs++];
  *x = ptc_tensor_new(&ty);
  ptc_tensor_fill_random(x, t->seed++, lo, hi);
  return ptc_func_add_arg(t->f, NULL, &ty, NULL);
}

static int32_t farg(tc *t, int rank, const int64_t *dims) {
  return arg(t, PTC_DTYPE_F32, rank, dims, -2, 2);
}

/* A module param with random initial values; returns its value in f. */
static int32_t param(tc *t, const char *name, int rank, const int64_t *dims, double lo,
                     double hi) {
  ptc_type ty = mk(PTC_DTYPE_F32, rank, dims);
  ptc_init none = {PTC_INIT_NONE, 0, 0, NULL};
  int32_t p = ptc_module_add_param(t->m, name, &ty, none, ptc_loc_unknown);
  PTC_ASSERT(p >= 0 && p < MAXT);
  t->params[p] = ptc_tensor_new(&ty);
  ptc_tensor_fill_random(&t->params[p], t->seed++, lo, hi);
  return ptc_func_param_value(t->f, p);
}

static int32_t op(tc *t, ptc_opcode code, int nin, const int32_t *in, int nattr,
                  const ptc_attr *attrs) {
  int32_t v = ptc_build1(t->f, code, in, nin, attrs, nattr, ptc_loc_unknown);
  if (v < 0) fprintf(stderr, "%s: build failed:\n%s", t->name, ptc_ctx_diag_text(t->ctx));
  PTC_ASSERT(v >= 0);
  return v;
}

/* An op with several results, or a stated result type; returns the op. */
static const ptc_op *op_n(tc *t, ptc_opcode code, int nin, const int32_t *in, int nattr,
                          const ptc_attr *attrs, const ptc_type *given) {
  ptc_build_args a = {.code = code, .nin = nin, .in = in, .nattr = nattr, .attrs = attrs,
                      .ngiven = given ? 1 : 0, .given = given, .loc = ptc_loc_unknown};
  int32_t i = ptc_build(t->f, &a);
  if (i < 0) fprintf(stderr, "%s: build failed:\n%s", t->name, ptc_ctx_diag_text(t->ctx));
  PTC_ASSERT(i >= 0);
  return &t->f->ops[i];
}

static double rel_err(const ptc_tensor *ref, const void *got, ptc_dtype dt) {
  int64_t n = ptc_type_numel(&ref->type);
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double g = dt == PTC_DTYPE_F32 ? ((const float *)got)[i]
               : dt == PTC_DTYPE_I32 ? ((const int32_t *)got)[i]
                                     : (double)((const int64_t *)got)[i];
    if (isnan(g) != isnan(ref->data[i])) return INFINITY;
    if (isnan(g)) continue;
    num += (g - ref->data[i]) * (g - ref->data[i]);
    den += ref->data[i] * ref->data[i];
  }
  return sqrt(num) / (sqrt(den) + 1e-6);
}

static void to_runtime(const ptc_tensor *x, void *dst) {
  int64_t n = ptc_type_numel(&x->type);
  for (int64_t i = 0; i < n; i++) switch (x->type.dtype) {
    case PTC_DTYPE_F32: ((float *)dst)[i] = (float)x->data[i]; break;
    case PTC_DTYPE_I32: ((int32_t *)dst)[i] = (int32_t)x->data[i]; break;
    case PTC_DTYPE_I64: ((int64_t *)dst)[i] = (int64_t)x->data[i]; break;
    default: PTC_UNREACHABLE();
    }
}

typedef struct rt_out {
  void *res[MAXT];
  int64_t res_bytes[MAXT];
  float *vars[MAXT];
  int rc;
  char diag[2048];
} rt_out;

/* Runs f on the runtime with `threads` threads.  Without in_place the
 * function runs twice: once without committing (the variables must not
 * change), then for real, reusing the first run's cached buffers; with
 * in_place, optimizer updates write their variables directly.  loss_only
 * runs only what result 0 needs. */
static void run_runtime(tc *t, int threads, bool in_place, bool loss_only, int nres, rt_out *out) {
  memset(out, 0, sizeof *out);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_pool *pool = ptrt_pool_create(ctx, threads);
  ptrt_env env = {ctx, pool, ptrt_comm_single(), NULL};
  ptrt_vars *vars = ptrt_vars_create(ctx, t->m, NULL);
  PTC_ASSERT(vars);
  for (int32_t p = 0; p < t->m->nparams; p++) to_runtime(&t->params[p], ptrt_vars_data(vars, p));
  ptrt_program_opts opts = {.in_place = in_place, .loss_only = loss_only};
  ptrt_program *prog = ptrt_program_create(&env, t->f, vars, &opts);
  if (!prog) {
    out->rc = -1;
  } else {
    for (int i = 0; i < t->nargs; i++) to_runtime(&t->args[i], ptrt_program_arg(prog, i));
    out->rc = in_place ? 0 : ptrt_program_run(prog, false);
    for (int32_t p = 0; out->rc == 0 && p < t->m->nparams; p++) {
      float *now = ptrt_vars_data(vars, p);
      for (int64_t k = 0; k < ptc_type_numel(&t->params[p].type); k++)
        if (now[k] != (float)t->params[p].data[k]) {
          CHECK_MSG(0, "%s: a run without commit changed @%s", t->name, t->m->params[p].name);
          break;
        }
    }
    if (out->rc == 0) out->rc = ptrt_program_run(prog, true);
    if (out->rc == 0) {
      ptrt_mem mem = ptrt_program_mem(prog);
      CHECK_MSG(mem.peak == ptrt_program_planned_peak(prog) && mem.live == 0,
                "%s: measured peak %lld, planned %lld, live after the run %lld", t->name,
                (long long)mem.peak, (long long)ptrt_program_planned_peak(prog),
                (long long)mem.live);
    }
    for (int r = 0; out->rc == 0 && r < (loss_only ? 1 : nres); r++) {
      int64_t b = ptc_type_bytes(&t->f->result_types[r]);
      out->res[r] = malloc((size_t)b + 1);
      out->res_bytes[r] = b;
      memcpy(out->res[r], ptrt_program_result(prog, r), (size_t)b);
    }
    for (int32_t p = 0; p < t->m->nparams; p++) {
      int64_t b = ptc_type_bytes(&t->m->params[p].type);
      out->vars[p] = malloc((size_t)b + 1);
      memcpy(out->vars[p], ptrt_vars_data(vars, p), (size_t)b);
    }
  }
  snprintf(out->diag, sizeof out->diag, "%s", ptc_ctx_diag_text(ctx));
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(vars);
  ptrt_pool_destroy(pool);
  ptc_ctx_destroy(ctx);
}

static void rt_out_free(rt_out *o) {
  for (int i = 0; i < MAXT; i++) free(o->res[i]);
  for (int i = 0; i < MAXT; i++) free(o->vars[i]);
}

/* Makes res the function's results, then checks runtime against eval. */
static void check(tc *t, int nres, const int32_t *res) {
  for (int r = 0; r < nres; r++) ptc_func_add_result(t->f, &t->f->values[res[r]].type, NULL);
  ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = nres, .in = res};
  PTC_ASSERT(ptc_build(t->f, &ret) >= 0);
  if (ptc_verify_module(t->m) != 0) {
    fprintf(stderr, "%s: verify failed:\n%s", t->name, ptc_ctx_diag_text(t->ctx));
    PTC_ASSERT(0);
  }
  for (int32_t i = 0; i < t->f->nops; i++) covered[t->f->ops[i].code] = true;
  ptc_tensor ref[MAXT];
  memset(ref, 0, sizeof ref);
  ptc_tensor evp[MAXT];
  for (int32_t p = 0; p < t->m->nparams; p++) {
    evp[p] = ptc_tensor_new(&t->params[p].type);
    memcpy(evp[p].data, t->params[p].data,
           (size_t)ptc_type_numel(&t->params[p].type) * sizeof(double));
  }
  if (ptc_eval_func(t->f, t->args, evp, ref) != 0) {
    fprintf(stderr, "%s: eval failed:\n%s", t->name, ptc_ctx_diag_text(t->ctx));
    PTC_ASSERT(0);
  }
  rt_out one, three, loss;
  run_runtime(t, 1, false, false, nres, &one);
  run_runtime(t, 3, true, false, nres, &three);
  run_runtime(t, 2, false, true, nres, &loss);
  CHECK_MSG(one.rc == 0 && three.rc == 0 && loss.rc == 0, "%s: the runtime failed:\n%s%s%s",
            t->name, one.diag, three.diag, loss.diag);
  for (int r = 0; one.rc == 0 && three.rc == 0 && r < nres; r++) {
    double e = rel_err(&ref[r], one.res[r], ref[r].type.dtype);
    CHECK_MSG(e <= 1e-4, "%s: result %d differs from the evaluator: relative error %.3g",
              t->name, r, e);
    CHECK_MSG(memcmp(one.res[r], three.res[r], (size_t)one.res_bytes[r]) == 0,
              "%s: result %d differs between 1 thread and 3 threads in place", t->name, r);
  }
  CHECK_MSG(loss.rc != 0 || one.rc != 0 ||
                memcmp(one.res[0], loss.res[0], (size_t)one.res_bytes[0]) == 0,
            "%s: result 0 differs when only what it needs runs", t->name);
  for (int32_t p = 0; one.rc == 0 && p < t->m->nparams; p++) {
    double e = rel_err(&evp[p], one.vars[p], PTC_DTYPE_F32);
    CHECK_MSG(e <= 1e-4, "%s: variable @%s after the run differs: relative error %.3g",
              t->name, t->m->params[p].name, e);
    CHECK_MSG(three.rc != 0 || memcmp(one.vars[p], three.vars[p],
                                      (size_t)ptc_type_bytes(&t->m->params[p].type)) == 0,
              "%s: variable @%s differs when updated in place", t->name, t->m->params[p].name);
  }
  rt_out_free(&one);
  rt_out_free(&three);
  rt_out_free(&loss);
  for (int r = 0; r < nres; r++) ptc_tensor_free(&ref[r]);
  for (int32_t p = 0; p < t->m->nparams; p++) ptc_tensor_free(&evp[p]);
}

static void check1(tc *t, int32_t v) { check(t, 1, &v); }

static void tc_fini(tc *t) {
  for (int i = 0; i < t->nargs; i++) ptc_tensor_free(&t->args[i]);
  for (int32_t p = 0; p < t->m->nparams; p++) ptc_tensor_free(&t->params[p]);
  ptc_module_destroy(t->m);
  ptc_ctx_destroy(t->ctx);
}

/* ---- cases ------------------------------------------------------------------ */

static void case_constant(void) {
  tc t;
  tc_init(&t, "constant");
  ptc_attr v = ptc_attr_float("value", 2.5);
  ptc_type ty = mk(PTC_DTYPE_F32, 2, D(3, 4));
  const ptc_op *o = op_n(&t, PTC_OP_CONSTANT, 0, NULL, 1, &v, &ty);
  int32_t a = o->out[0];
  ptc_attr vi = ptc_attr_float("value", -3);
  ptc_type ti = mk(PTC_DTYPE_I32, 1, D(5));
  int32_t b = op_n(&t, PTC_OP_CONSTANT, 0, NULL, 1, &vi, &ti)->out[0];
  int32_t res[2] = {a, b};
  check(&t, 2, res);
  tc_fini(&t);
}

static void case_binary(ptc_opcode code, const char *name, int ra, const int64_t *da, int rb,
                        const int64_t *db, double lo) {
  tc t;
  tc_init(&t, name);
  int32_t in[2] = {arg(&t, PTC_DTYPE_F32, ra, da, lo, 2),
                   arg(&t, PTC_DTYPE_F32, rb, db, lo, 2)};
  check1(&t, op(&t, code, 2, in, 0, NULL));
  tc_fini(&t);
}

static void case_unary(ptc_opcode code, const char *name, double lo, double hi) {
  tc t;
  tc_init(&t, name);
  int32_t x = arg(&t, PTC_DTYPE_F32, 2, D(7, 33), lo, hi);
  check1(&t, op(&t, code, 1, &x, 0, NULL));
  tc_fini(&t);
}

static void case_cast(void) {
  tc t;
  tc_init(&t, "cast");
  int32_t x = arg(&t, PTC_DTYPE_F32, 2, D(4, 5), -5, 5);
  int32_t y = arg(&t, PTC_DTYPE_I32, 1, D(6), -9, 9);
  ptc_attr ti = ptc_attr_dtype("to", PTC_DTYPE_I32), tf = ptc_attr_dtype("to", PTC_DTYPE_F32);
  ptc_attr t64 = ptc_attr_dtype("to", PTC_DTYPE_I64);
  int32_t res[3] = {op(&t, PTC_OP_CAST, 1, &x, 1, &ti), op(&t, PTC_OP_CAST, 1, &y, 1, &tf),
                    op(&t, PTC_OP_CAST, 1, &y, 1, &t64)};
  check(&t, 3, res);
  tc_fini(&t);
}

static void case_shapes(void) {
  tc t;
  tc_init(&t, "reshape/transpose/slice/pad/concat/broadcast_to");
  int32_t x = farg(&t, 3, D(2, 3, 4));
  int32_t w = param(&t, "w", 2, D(3, 4), -1, 1);
  ptc_type rt = mk(PTC_DTYPE_F32, 2, D(6, 4));
  int32_t r1 = op_n(&t, PTC_OP_RESHAPE, 1, &x, 0, NULL, &rt)->out[0];
  ptc_type wt = mk(PTC_DTYPE_F32, 1, D(12));
  int32_t r2 = op_n(&t, PTC_OP_RESHAPE, 1, &w, 0, NULL, &wt)->out[0]; /* a view of @w */
  ptc_attr p1 = ptc_attr_ints("perm", D(2, 0, 1), 3), p2 = ptc_attr_ints("perm", D(0, 2, 1), 3);
  int32_t t1 = op(&t, PTC_OP_TRANSPOSE, 1, &x, 1, &p1);
  int32_t t2 = op(&t, PTC_OP_TRANSPOSE, 1, &x, 1, &p2);
  ptc_attr sl[3] = {ptc_attr_int("axis", 1), ptc_attr_int("start", 1), ptc_attr_int("end", 3)};
  int32_t s = op(&t, PTC_OP_SLICE, 1, &x, 3, sl);
  ptc_attr pd[3] = {ptc_attr_int("axis", 0), ptc_attr_int("before", 1), ptc_attr_int("after", 2)};
  int32_t p = op(&t, PTC_OP_PAD, 1, &x, 3, pd);
  int32_t y = farg(&t, 3, D(2, 5, 4));
  int32_t cin[3] = {x, y, x};
  ptc_attr ax1 = ptc_attr_int("axis", 1);
  int32_t c = op(&t, PTC_OP_CONCAT, 3, cin, 1, &ax1);
  int32_t z = farg(&t, 2, D(3, 1));
  ptc_type bt = mk(PTC_DTYPE_F32, 3, D(2, 3, 4));
  int32_t b = op_n(&t, PTC_OP_BROADCAST_TO, 1, &z, 0, NULL, &bt)->out[0];
  int32_t ids = arg(&t, PTC_DTYPE_I32, 2, D(3, 4), 0, 9);
  ptc_attr p10 = ptc_attr_ints("perm", D(1, 0), 2);
  int32_t ti = op(&t, PTC_OP_TRANSPOSE, 1, &ids, 1, &p10); /* integers move too */
  int32_t res[9] = {r1, r2, t1, t2, s, p, c, b, ti};
  check(&t, 9, res);
  tc_fini(&t);
}

static void case_reduce(void) {
  tc t;
  tc_init(&t, "reduce_sum/mean/max");
  int32_t x = farg(&t, 3, D(4, 6, 40));
  ptc_attr a1[2] = {ptc_attr_ints("axes", D(1), 1), ptc_attr_bool("keepdim", true)};
  ptc_attr a01 = ptc_attr_ints("axes", D(0, 1), 2);
  ptc_attr a2 = ptc_attr_ints("axes", D(2), 1);
  ptc_attr a02 = ptc_attr_ints("axes", D(0, 2), 2);
  ptc_attr all = ptc_attr_ints("axes", D(0, 1, 2), 3);
  int32_t res[6] = {op(&t, PTC_OP_REDUCE_SUM, 1, &x, 2, a1),
                    op(&t, PTC_OP_REDUCE_SUM, 1, &x, 1, &a01),
                    op(&t, PTC_OP_REDUCE_MEAN, 1, &x, 1, &a2),
                    op(&t, PTC_OP_REDUCE_MAX, 1, &x, 1, &a02),
                    op(&t, PTC_OP_REDUCE_MEAN, 1, &x, 1, &all),
                    op(&t, PTC_OP_REDUCE_MAX, 1, &x, 1, &a2)};
  check(&t, 6, res);
  tc_fini(&t);
}

/* rows long enough to be cut into pieces (kernels.c: reduce_long_rows) */
static void case_reduce_long(void) {
  tc t;
  tc_init(&t, "reduce over long rows");
  int32_t x = farg(&t, 2, D(3, 150001)), y = farg(&t, 2, D(300, 1001));
  ptc_attr a1 = ptc_attr_ints("axes", D(1), 1), all = ptc_attr_ints("axes", D(0, 1), 2);
  int32_t res[4] = {op(&t, PTC_OP_REDUCE_SUM, 1, &x, 1, &a1), op(&t, PTC_OP_REDUCE_MAX, 1, &x, 1, &a1),
                    op(&t, PTC_OP_REDUCE_MEAN, 1, &y, 1, &all),
                    op(&t, PTC_OP_REDUCE_MAX, 1, &y, 1, &all)};
  check(&t, 4, res);
  tc_fini(&t);
}

static void case_matmul(void) {
  tc t;
  tc_init(&t, "matmul");
  ptc_attr ta = ptc_attr_bool("transpose_a", true), tb = ptc_attr_bool("transpose_b", true);
  int32_t a = farg(&t, 4, D(2, 3, 5, 4)), b = farg(&t, 2, D(4, 6));
  int32_t m1 = op(&t, PTC_OP_MATMUL, 2, (int32_t[]){a, b}, 0, NULL); /* batch folds into M */
  int32_t c = farg(&t, 3, D(2, 4, 5)), d = farg(&t, 3, D(2, 4, 6));
  int32_t m2 = op(&t, PTC_OP_MATMUL, 2, (int32_t[]){c, d}, 1, &ta);
  int32_t e = farg(&t, 2, D(5, 4)), g = farg(&t, 2, D(6, 4));
  int32_t m3 = op(&t, PTC_OP_MATMUL, 2, (int32_t[]){e, g}, 1, &tb);
  int32_t h = farg(&t, 4, D(2, 1, 3, 4)), k = farg(&t, 3, D(5, 4, 2));
  int32_t m4 = op(&t, PTC_OP_MATMUL, 2, (int32_t[]){h, k}, 0, NULL); /* batch broadcast */
  ptc_attr both[2] = {ta, tb};
  int32_t p = farg(&t, 3, D(3, 7, 5)), q = farg(&t, 2, D(6, 7));
  int32_t m5 = op(&t, PTC_OP_MATMUL, 2, (int32_t[]){p, q}, 2, both);
  int32_t res[5] = {m1, m2, m3, m4, m5};
  check(&t, 5, res);
  tc_fini(&t);
}

static void case_embedding(void) {
  tc t;
  tc_init(&t, "embedding/embedding_grad");
  int32_t ids = arg(&t, PTC_DTYPE_I32, 2, D(3, 50), 0, 10);
  int32_t tab = param(&t, "tab", 2, D(10, 8), -1, 1);
  int32_t e = op(&t, PTC_OP_EMBEDDING, 2, (int32_t[]){ids, tab}, 0, NULL);
  int32_t ids64 = arg(&t, PTC_DTYPE_I64, 1, D(7), 0, 10);
  int32_t e2 = op(&t, PTC_OP_EMBEDDING, 2, (int32_t[]){ids64, tab}, 0, NULL);
  int32_t g = farg(&t, 3, D(3, 50, 8));
  ptc_type vt = mk(PTC_DTYPE_F32, 2, D(10, 8));
  int32_t eg = op_n(&t, PTC_OP_EMBEDDING_GRAD, 2, (int32_t[]){g, ids}, 0, NULL, &vt)->out[0];
  int32_t res[3] = {e, e2, eg};
  check(&t, 3, res);
  tc_fini(&t);
}

static void case_softmax(void) {
  tc t;
  tc_init(&t, "softmax/softmax_grad");
  int32_t x = arg(&t, PTC_DTYPE_F32, 3, D(3, 5, 40), -4, 4);
  ptc_attr a1 = ptc_attr_int("axis", 1), a2 = ptc_attr_int("axis", 2);
  int32_t s1 = op(&t, PTC_OP_SOFTMAX, 1, &x, 1, &a1), s2 = op(&t, PTC_OP_SOFTMAX, 1, &x, 1, &a2);
  int32_t g = farg(&t, 3, D(3, 5, 40));
  int32_t g1 = op(&t, PTC_OP_SOFTMAX_GRAD, 2, (int32_t[]){g, s1}, 1, &a1);
  int32_t g2 = op(&t, PTC_OP_SOFTMAX_GRAD, 2, (int32_t[]){g, s2}, 1, &a2);
  int32_t res[4] = {s1, s2, g1, g2};
  check(&t, 4, res);
  tc_fini(&t);
}

static void case_norms(void) {
  tc t;
  tc_init(&t, "layernorm/rmsnorm and their gradients");
  int32_t x = arg(&t, PTC_DTYPE_F32, 3, D(5, 70, 48), -3, 3);
  int32_t gm = arg(&t, PTC_DTYPE_F32, 1, D(48), 0.5, 1.5), bs = farg(&t, 1, D(48));
  int32_t g = farg(&t, 3, D(5, 70, 48));
  ptc_attr eps = ptc_attr_float("eps", 1e-5);
  int32_t ln = op(&t, PTC_OP_LAYERNORM, 3, (int32_t[]){x, gm, bs}, 1, &eps);
  int32_t rms = op(&t, PTC_OP_RMSNORM, 2, (int32_t[]){x, gm}, 1, &eps);
  const ptc_op *lg = op_n(&t, PTC_OP_LAYERNORM_GRAD, 3, (int32_t[]){g, x, gm}, 1, &eps, NULL);
  int32_t l0 = lg->out[0], l1 = lg->out[1], l2 = lg->out[2];
  const ptc_op *rg = op_n(&t, PTC_OP_RMSNORM_GRAD, 3, (int32_t[]){g, x, gm}, 1, &eps, NULL);
  int32_t res[7] = {ln, rms, l0, l1, l2, rg->out[0], rg->out[1]};
  check(&t, 7, res);
  tc_fini(&t);
}

static void case_rope(void) {
  tc t;
  tc_init(&t, "rope");
  int32_t x = farg(&t, 4, D(2, 9, 3, 8));
  ptc_attr a[2] = {ptc_attr_float("theta", 10000.0), ptc_attr_bool("inverse", true)};
  int32_t r = op(&t, PTC_OP_ROPE, 1, &x, 1, a);
  int32_t ri = op(&t, PTC_OP_ROPE, 1, &x, 2, a);
  int32_t res[2] = {r, ri};
  check(&t, 2, res);
  tc_fini(&t);
}

/* T = 100 rows and keys: not a multiple of PTRT_ATTN_BR or PTRT_ATTN_BC,
 * and more than one block of each; 4 query heads on 2 key/value heads. */
static void case_attention(bool causal) {
  tc t;
  tc_init(&t, causal ? "attention causal GQA" : "attention S != T, E != D, scale");
  int64_t T = 100, S = causal ? 100 : 77, E = causal ? 16 : 8;
  PTC_ASSERT(T % PTRT_ATTN_BR && T > PTRT_ATTN_BC && S % PTRT_ATTN_BC);
  int32_t q = farg(&t, 4, D(2, T, 4, 16)), k = farg(&t, 4, D(2, S, 2, 16)),
          v = farg(&t, 4, D(2, S, 2, E));
  ptc_attr a[2] = {ptc_attr_bool("causal", causal), ptc_attr_float("scale", 0.3)};
  int na = causal ? 1 : 2;
  int32_t o = op(&t, PTC_OP_ATTENTION, 3, (int32_t[]){q, k, v}, na, a);
  int32_t g = farg(&t, 4, D(2, T, 4, E));
  const ptc_op *ag = op_n(&t, PTC_OP_ATTENTION_GRAD, 4, (int32_t[]){g, q, k, v}, na, a, NULL);
  int32_t res[4] = {o, ag->out[0], ag->out[1], ag->out[2]};
  check(&t, 4, res);
  tc_fini(&t);
}

static void case_cross_entropy(void) {
  tc t;
  tc_init(&t, "cross_entropy/cross_entropy_grad, padded classes");
  int32_t x = arg(&t, PTC_DTYPE_F32, 3, D(3, 7, 20), -3, 3);
  int32_t y = arg(&t, PTC_DTYPE_I32, 2, D(3, 7), 0, 17);
  ptc_attr cl = ptc_attr_int("classes", 17);
  int32_t l = op(&t, PTC_OP_CROSS_ENTROPY, 2, (int32_t[]){x, y}, 1, &cl);
  int32_t l2 = op(&t, PTC_OP_CROSS_ENTROPY, 2, (int32_t[]){x, y}, 0, NULL);
  int32_t g = arg(&t, PTC_DTYPE_F32, 0, NULL, 0.5, 2);
  int32_t d = op(&t, PTC_OP_CROSS_ENTROPY_GRAD, 3, (int32_t[]){g, x, y}, 1, &cl);
  int32_t res[3] = {l, l2, d};
  check(&t, 3, res);
  tc_fini(&t);
}

static void case_compare(void) {
  tc t;
  tc_init(&t, "compare");
  int32_t a = arg(&t, PTC_DTYPE_F32, 2, D(6, 9), -3, 3), b = arg(&t, PTC_DTYPE_F32, 1, D(9), -3, 3);
  /* small integers, so eq is true somewhere */
  for (int i = 0; i < 2; i++) {
    ptc_tensor *x = &t.args[i];
    for (int64_t k = 0; k < ptc_type_numel(&x->type); k++) x->data[k] = floor(x->data[k]);
  }
  ptc_attr ge = ptc_attr_sym("cmp", "ge"), gt = ptc_attr_sym("cmp", "gt"),
           eq = ptc_attr_sym("cmp", "eq");
  int32_t res[3] = {op(&t, PTC_OP_COMPARE, 2, (int32_t[]){a, b}, 1, &ge),
                    op(&t, PTC_OP_COMPARE, 2, (int32_t[]){a, b}, 1, &gt),
                    op(&t, PTC_OP_COMPARE, 2, (int32_t[]){a, b}, 1, &eq)};
  check(&t, 3, res);
  tc_fini(&t);
}

/* select takes one side whole, by a scalar flag; the other side may hold
 * NaN and infinity (an overflowed fp16 step) and is never read */
static void case_select(void) {
  for (int side = 0; side < 2; side++) {
    tc t;
    tc_init(&t, side ? "select (false)" : "select (true)");
    int32_t c = arg(&t, PTC_DTYPE_F32, 0, NULL, side ? 0 : 1, side ? 0 : 1);
    int32_t a = farg(&t, 2, D(5, 7)), b = farg(&t, 2, D(5, 7));
    ptc_tensor *dead = &t.args[side ? 1 : 2];
    dead->data[0] = NAN;
    dead->data[1] = INFINITY;
    int32_t res[1] = {op(&t, PTC_OP_SELECT, 3, (int32_t[]){c, a, b}, 0, NULL)};
    check(&t, 1, res);
    tc_fini(&t);
  }
}

static void case_act_grads(void) {
  tc t;
  tc_init(&t, "relu_grad/gelu_grad/silu_grad");
  int32_t g = farg(&t, 2, D(6, 40)), x = arg(&t, PTC_DTYPE_F32, 2, D(6, 40), -4, 4);
  int32_t res[3] = {op(&t, PTC_OP_RELU_GRAD, 2, (int32_t[]){g, x}, 0, NULL),
                    op(&t, PTC_OP_GELU_GRAD, 2, (int32_t[]){g, x}, 0, NULL),
                    op(&t, PTC_OP_SILU_GRAD, 2, (int32_t[]){g, x}, 0, NULL)};
  check(&t, 3, res);
  tc_fini(&t);
}

static void case_collectives(void) {
  tc t;
  tc_init(&t, "collectives and shard on one rank");
  int32_t x = farg(&t, 2, D(4, 6));
  ptc_attr ar[2] = {ptc_attr_sym("axis", "dp"), ptc_attr_sym("op", "sum")};
  ptc_attr ag[2] = {ptc_attr_sym("axis", "tp"), ptc_attr_int("dim", 1)};
  ptc_attr rs[3] = {ptc_attr_sym("axis", "dp"), ptc_attr_int("dim", 0), ptc_attr_sym("op", "mean")};
  ptc_attr bc[2] = {ptc_attr_sym("axis", "tp"), ptc_attr_int("root", 0)};
  ptc_attr sh[2] = {ptc_attr_sym("axis", "dp"), ptc_attr_int("dim", 1)};
  int32_t ids = arg(&t, PTC_DTYPE_I32, 2, D(3, 4), 0, 9);
  int32_t ids64 = arg(&t, PTC_DTYPE_I64, 1, D(5), 0, 9);
  ptc_attr tpa[1] = {ptc_attr_sym("axis", "tp")};
  int32_t res[10] = {op(&t, PTC_OP_TO_PARTIAL, 1, &x, 1, tpa),
                    op(&t, PTC_OP_ALL_REDUCE, 1, &x, 2, ar), op(&t, PTC_OP_ALL_GATHER, 1, &x, 2, ag),
                    op(&t, PTC_OP_REDUCE_SCATTER, 1, &x, 3, rs),
                    op(&t, PTC_OP_BROADCAST, 1, &x, 2, bc), op(&t, PTC_OP_SHARD, 1, &x, 2, sh),
                    /* what only moves data takes integers too */
                    op(&t, PTC_OP_SHARD, 1, &ids, 2, sh), op(&t, PTC_OP_ALL_GATHER, 1, &ids, 2, ag),
                    op(&t, PTC_OP_BROADCAST, 1, &ids64, 2, bc),
                    op(&t, PTC_OP_ALL_GATHER, 1, &ids64, 2, (ptc_attr[]){ptc_attr_sym("axis", "dp"),
                                                                       ptc_attr_int("dim", 0)})};
  check(&t, 10, res);
  tc_fini(&t);
}

/* assign commits at return: a read after the assign sees the entry value;
 * @a takes @b's entry value although @b is assigned before the end. */
static void case_assign(void) {
  tc t;
  tc_init(&t, "assign");
  int32_t w = param(&t, "w", 2, D(3, 5), -1, 1);
  int32_t a = param(&t, "a", 1, D(4), -1, 1), b = param(&t, "b", 1, D(4), -1, 1);
  int32_t x = farg(&t, 2, D(3, 5)), y = farg(&t, 1, D(4));
  int32_t n = op(&t, PTC_OP_ADD, 2, (int32_t[]){w, x}, 0, NULL);
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){w, n}, 0, NULL, NULL);
  int32_t after = op(&t, PTC_OP_MUL, 2, (int32_t[]){w, x}, 0, NULL); /* entry @w */
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){b, y}, 0, NULL, NULL);
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){a, b}, 0, NULL, NULL); /* entry @b */
  int32_t res[2] = {after, op(&t, PTC_OP_NEG, 1, &b, 0, NULL)};
  check(&t, 2, res);
  tc_fini(&t);
}

static void case_optimizers(void) {
  tc t;
  tc_init(&t, "adamw/sgd");
  int32_t p = param(&t, "p", 2, D(30, 70), -1, 1), m = param(&t, "p.m", 2, D(30, 70), -0.1, 0.1);
  int32_t v = param(&t, "p.v", 2, D(30, 70), 0, 0.01);
  int32_t g = farg(&t, 2, D(30, 70));
  int32_t lr = arg(&t, PTC_DTYPE_F32, 0, NULL, 1e-3, 2e-3), step = arg(&t, PTC_DTYPE_F32, 0, NULL, 3, 4);
  t.args[t.nargs - 1].data[0] = 3; /* the step counts in whole numbers */
  ptc_attr aw[4] = {ptc_attr_float("beta1", 0.9), ptc_attr_float("beta2", 0.95),
                    ptc_attr_float("eps", 1e-8), ptc_attr_float("weight_decay", 0.1)};
  const ptc_op *a = op_n(&t, PTC_OP_ADAMW, 6, (int32_t[]){p, g, m, v, lr, step}, 4, aw, NULL);
  int32_t p1 = a->out[0], m1 = a->out[1], v1 = a->out[2];
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){p, p1}, 0, NULL, NULL);
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){m, m1}, 0, NULL, NULL);
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){v, v1}, 0, NULL, NULL);
  int32_t q = param(&t, "q", 1, D(50), -1, 1), buf = param(&t, "q.buf", 1, D(50), -1, 1);
  int32_t gq = farg(&t, 1, D(50));
  ptc_attr sg[3] = {ptc_attr_float("momentum", 0.9), ptc_attr_float("weight_decay", 0.01),
                    ptc_attr_bool("nesterov", true)};
  const ptc_op *s = op_n(&t, PTC_OP_SGD, 4, (int32_t[]){q, gq, buf, lr}, 3, sg, NULL);
  int32_t q1 = s->out[0], b1 = s->out[1];
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){q, q1}, 0, NULL, NULL);
  op_n(&t, PTC_OP_ASSIGN, 2, (int32_t[]){buf, b1}, 0, NULL, NULL);
  ptc_attr sg2[2] = {ptc_attr_float("momentum", 0.5), ptc_attr_float("weight_decay", 0)};
  const ptc_op *s2 = op_n(&t, PTC_OP_SGD, 4, (int32_t[]){q, gq, buf, lr}, 2, sg2, NULL);
  int32_t res[2] = {s2->out[0], s2->out[1]};
  check(&t, 2, res);
  tc_fini(&t);
}

/* send and recv have no peer on one rank: a clear error at the op. */
static void case_transfers(void) {
  for (int which = 0; which < 2; which++) {
    tc t;
    tc_init(&t, which ? "recv" : "send");
    ptc_loc loc = {ptc_intern_cstr(t.ctx, "pipe.ptir"), 7, 3};
    ptc_attr peer = ptc_attr_int("peer", 0);
    int32_t out;
    if (which) {
      ptc_type ty = mk(PTC_DTYPE_F32, 1, D(4));
      ptc_build_args a = {.code = PTC_OP_RECV, .nattr = 1, .attrs = &peer, .ngiven = 1,
                          .given = &ty, .loc = loc};
      int32_t i = ptc_build(t.f, &a);
      if (i < 0) fprintf(stderr, "recv: %s", ptc_ctx_diag_text(t.ctx));
      PTC_ASSERT(i >= 0);
      out = t.f->ops[i].out[0];
    } else {
      out = farg(&t, 1, D(4));
      ptc_build_args a = {.code = PTC_OP_SEND, .nin = 1, .in = &out, .nattr = 1,
                          .attrs = &peer, .loc = loc};
      PTC_ASSERT(ptc_build(t.f, &a) >= 0);
    }
    ptc_func_add_result(t.f, &t.f->values[out].type, NULL);
    ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = 1, .in = &out};
    PTC_ASSERT(ptc_build(t.f, &ret) >= 0 && ptc_verify_module(t.m) == 0);
    covered[which ? PTC_OP_RECV : PTC_OP_SEND] = true;
    rt_out o;
    run_runtime(&t, 1, false, false, 1, &o);
    CHECK_MSG(o.rc != 0 && strstr(o.diag, "pipe.ptir:7:3: error:") &&
                  strstr(o.diag, which ? "recv:" : "send:") && strstr(o.diag, "no pipeline peers"),
              "%s on one rank: %s", t.name, o.diag);
    rt_out_free(&o);
    tc_fini(&t);
  }
}

/* A runtime error names the op and its location (an index out of range). */
static void case_index_error(void) {
  tc t;
  tc_init(&t, "embedding index out of range");
  ptc_loc loc = {ptc_intern_cstr(t.ctx, "m.ptg"), 3, 9};
  int32_t ids = arg(&t, PTC_DTYPE_I32, 1, D(4), 0, 4);
  t.args[0].data[2] = 12;
  int32_t tab = farg(&t, 2, D(4, 2));
  int32_t in[2] = {ids, tab};
  int32_t e = ptc_build1(t.f, PTC_OP_EMBEDDING, in, 2, NULL, 0, loc);
  ptc_func_add_result(t.f, &t.f->values[e].type, NULL);
  ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = 1, .in = &e};
  PTC_ASSERT(ptc_build(t.f, &ret) >= 0 && ptc_verify_module(t.m) == 0);
  rt_out o;
  run_runtime(&t, 2, false, false, 1, &o);
  CHECK_MSG(o.rc != 0 && strstr(o.diag, "m.ptg:3:9: error: embedding: index 12 at position 2 "
                                        "is out of range [0, 4)"),
            "%s", o.diag);
  rt_out_free(&o);
  tc_fini(&t);
}

/* Dtypes the runtime does not hold are refused when the program is made. */
static void case_dtype_refused(void) {
  tc t;
  tc_init(&t, "f64 refused");
  ptc_loc loc = {ptc_intern_cstr(t.ctx, "m.ptg"), 5, 1};
  ptc_type ty = mk(PTC_DTYPE_F64, 1, D(4));
  int32_t x = ptc_func_add_arg(t.f, "x", &ty, NULL);
  int32_t y = ptc_build1(t.f, PTC_OP_EXP, &x, 1, NULL, 0, loc);
  ptc_func_add_result(t.f, &ty, NULL);
  ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = 1, .in = &y};
  PTC_ASSERT(ptc_build(t.f, &ret) >= 0 && ptc_verify_module(t.m) == 0);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_env env = {ctx, NULL, ptrt_comm_single(), NULL};
  ptrt_program *p = ptrt_program_create(&env, t.f, NULL, NULL);
  CHECK(p == NULL);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "m.ptg:5:1: error: exp: operand 0 is f64"), "%s",
            ptc_ctx_diag_text(ctx));
  ptrt_program_destroy(p);
  ptc_ctx_destroy(ctx);
  tc_fini(&t);
}

int main(void) {
  case_constant();
  case_binary(PTC_OP_ADD, "add [2,3,4]+[4]", 3, D(2, 3, 4), 1, D(4), -2);
  case_binary(PTC_OP_ADD, "add []+[5,6]", 0, NULL, 2, D(5, 6), -2);
  case_binary(PTC_OP_SUB, "sub [2,1,4]-[3,1]", 3, D(2, 1, 4), 2, D(3, 1), -2);
  case_binary(PTC_OP_MUL, "mul [5,6]*[]", 2, D(5, 6), 0, NULL, -2);
  case_binary(PTC_OP_MUL, "mul [70,300]*[70,300]", 2, D(70, 300), 2, D(70, 300), -2);
  case_binary(PTC_OP_ADD, "add [3,40000]+[40000] (rows in pieces)", 2, D(3, 40000), 1, D(40000), -2);
  case_binary(PTC_OP_SUB, "sub [50001]-[] (one long row)", 1, D(50001), 0, NULL, -2);
  case_binary(PTC_OP_DIV, "div [2,3,4]/[2,3,1]", 3, D(2, 3, 4), 3, D(2, 3, 1), 0.5);
  case_binary(PTC_OP_MAXIMUM, "maximum [4,5] [1,5]", 2, D(4, 5), 2, D(1, 5), -2);
  case_unary(PTC_OP_NEG, "neg", -2, 2);
  case_unary(PTC_OP_EXP, "exp", -3, 3);
  case_unary(PTC_OP_LOG, "log", 0.1, 5);
  case_unary(PTC_OP_SQRT, "sqrt", 0.1, 5);
  case_unary(PTC_OP_RSQRT, "rsqrt", 0.1, 5);
  case_unary(PTC_OP_TANH, "tanh", -3, 3);
  case_unary(PTC_OP_SIGMOID, "sigmoid", -6, 6);
  case_unary(PTC_OP_RELU, "relu", -2, 2);
  case_unary(PTC_OP_GELU, "gelu", -4, 4);
  case_unary(PTC_OP_SILU, "silu", -4, 4);
  case_cast();
  case_shapes();
  case_reduce();
  case_reduce_long();
  case_matmul();
  case_embedding();
  case_softmax();
  case_norms();
  case_rope();
  case_attention(true);
  case_attention(false);
  case_cross_entropy();
  case_compare();
  case_select();
  case_act_grads();
  case_collectives();
  case_assign();
  case_optimizers();
  case_transfers();
  case_index_error();
  case_dtype_refused();

  char missing_kernel[2048] = "", missing_case[2048] = "";
  for (int c = 0; c < PTC_OP_COUNT; c++) {
    const char *n = ptc_opinfo_get((ptc_opcode)c)->name;
    if (!ptrt_kernel_get((ptc_opcode)c))
      snprintf(missing_kernel + strlen(missing_kernel),
               sizeof missing_kernel - strlen(missing_kernel), " %s", n);
    if (!covered[c])
      snprintf(missing_case + strlen(missing_case), sizeof missing_case - strlen(missing_case),
               " %s", n);
  }
  CHECK_MSG(!missing_kernel[0], "ops without a CPU kernel:%s", missing_kernel);
  CHECK_MSG(!missing_case[0], "ops without a case in test_rt_kernels.c:%s", missing_case);
  return test_report("test_rt_kernels");
}
