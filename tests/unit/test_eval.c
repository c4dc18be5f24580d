/* test_eval.c -- the reference evaluator against values worked out by hand
 * (or by the closed forms of each op). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "test.h"

#define NEAR(a, b) (fabs((double)(a) - (double)(b)) <= 1e-9 * (1 + fabs((double)(b))))

typedef struct fx {
  ptc_ctx *ctx;
  ptc_module *m;
  ptc_func *f;
  ptc_tensor args[8];
  int nargs;
} fx;

static void fx_init(fx *x) {
  memset(x, 0, sizeof *x);
  x->ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(x->ctx, true);
  x->m = ptc_module_create(x->ctx, "t");
  x->f = ptc_module_add_func(x->m, "f", ptc_loc_unknown);
}

static int32_t fx_arg(fx *x, ptc_dtype dt, int rank, const int64_t *dims,
                      const double *vals) {
  ptc_type t = {.dtype = dt, .rank = rank};
  memcpy(t.dims, dims, (size_t)rank * sizeof *dims);
  x->args[x->nargs] = ptc_tensor_new(&t);
  memcpy(x->args[x->nargs].data, vals, (size_t)ptc_type_numel(&t) * sizeof(double));
  x->nargs++;
  return ptc_func_add_arg(x->f, NULL, &t, NULL);
}

/* Returns the evaluated value `v` (caller frees), making it the result. */
static ptc_tensor fx_run(fx *x, int32_t v) {
  ptc_func_add_result(x->f, &x->f->values[v].type, NULL);
  ptc_build_args r = {.code = PTC_OP_RETURN, .nin = 1, .in = &v};
  PTC_ASSERT(ptc_build(x->f, &r) >= 0);
  PTC_ASSERT(ptc_verify_module(x->m) == 0);
  ptc_tensor out = {0};
  if (ptc_eval_func(x->f, x->args, NULL, &out) != 0) {
    fprintf(stderr, "%s", ptc_ctx_diag_text(x->ctx));
    PTC_ASSERT(!"eval failed");
  }
  return out;
}

static void fx_fini(fx *x) {
  for (int i = 0; i < x->nargs; i++) ptc_tensor_free(&x->args[i]);
  ptc_module_destroy(x->m);
  ptc_ctx_destroy(x->ctx);
}

static void test_matmul_broadcast(void) {
  fx x;
  fx_init(&x);
  int64_t ad[3] = {2, 1, 2}, bd[2] = {2, 2};
  double av[4] = {1, 2, 3, 4}, bv[4] = {5, 6, 7, 8};
  int32_t a = fx_arg(&x, PTC_DTYPE_F64, 3, ad, av);
  int32_t b = fx_arg(&x, PTC_DTYPE_F64, 2, bd, bv);
  int32_t in[2] = {a, b};
  ptc_attr tb = ptc_attr_bool("transpose_b", true);
  int32_t c = ptc_build1(x.f, PTC_OP_MATMUL, in, 2, &tb, 1, ptc_loc_unknown);
  ptc_tensor r = fx_run(&x, c);
  /* [1,2]·[[5,7],[6,8]] = [17, 23]; [3,4] -> [39, 53] */
  CHECK(r.data[0] == 17 && r.data[1] == 23 && r.data[2] == 39 && r.data[3] == 53);
  ptc_tensor_free(&r);
  fx_fini(&x);
}

static void test_norms_softmax(void) {
  fx x;
  fx_init(&x);
  int64_t d[2] = {1, 4}, gd[1] = {4};
  double xv[4] = {1, 2, 3, 4}, g[4] = {1, 1, 1, 1}, z[4] = {0, 0, 0, 0};
  int32_t a = fx_arg(&x, PTC_DTYPE_F64, 2, d, xv);
  int32_t gv = fx_arg(&x, PTC_DTYPE_F64, 1, gd, g);
  int32_t zv = fx_arg(&x, PTC_DTYPE_F64, 1, gd, z);
  ptc_attr eps = ptc_attr_float("eps", 0.0);
  int32_t in[3] = {a, gv, zv};
  int32_t ln = ptc_build1(x.f, PTC_OP_LAYERNORM, in, 3, &eps, 1, ptc_loc_unknown);
  int32_t rms = ptc_build1(x.f, PTC_OP_RMSNORM, in, 2, &eps, 1, ptc_loc_unknown);
  ptc_attr ax = ptc_attr_int("axis", 1);
  int32_t sm = ptc_build1(x.f, PTC_OP_SOFTMAX, &a, 1, &ax, 1, ptc_loc_unknown);
  int32_t cat_in[3] = {ln, rms, sm};
  ptc_attr ax0 = ptc_attr_int("axis", 0);
  int32_t all = ptc_build1(x.f, PTC_OP_CONCAT, cat_in, 3, &ax0, 1, ptc_loc_unknown);
  ptc_tensor r = fx_run(&x, all);
  /* layernorm: mean 2.5, var 1.25 */
  CHECK(NEAR(r.data[0], -1.5 / sqrt(1.25)) && NEAR(r.data[3], 1.5 / sqrt(1.25)));
  /* rmsnorm: rms = sqrt(30/4) */
  CHECK(NEAR(r.data[4 + 1], 2 / sqrt(7.5)));
  double s = exp(1) + exp(2) + exp(3) + exp(4);
  CHECK(NEAR(r.data[8 + 2], exp(3) / s));
  ptc_tensor_free(&r);
  fx_fini(&x);
}

static void test_attention_ce(void) {
  fx x;
  fx_init(&x);
  /* B=1, T=2, H=2, G=1, D=1: causal row 0 sees only position 0 */
  int64_t qd[4] = {1, 2, 2, 1}, kd[4] = {1, 2, 1, 1};
  double q[4] = {1, 1, 1, 1}, k[2] = {0, 0}, v[2] = {10, 20};
  int32_t qa = fx_arg(&x, PTC_DTYPE_F64, 4, qd, q);
  int32_t ka = fx_arg(&x, PTC_DTYPE_F64, 4, kd, k);
  int32_t va = fx_arg(&x, PTC_DTYPE_F64, 4, kd, v);
  int32_t in[3] = {qa, ka, va};
  ptc_attr c = ptc_attr_bool("causal", true);
  int32_t at = ptc_build1(x.f, PTC_OP_ATTENTION, in, 3, &c, 1, ptc_loc_unknown);
  ptc_tensor r = fx_run(&x, at);
  /* equal scores: t=0 -> v0 = 10 for both heads; t=1 -> mean 15 */
  CHECK(r.data[0] == 10 && r.data[1] == 10 && NEAR(r.data[2], 15) && NEAR(r.data[3], 15));
  ptc_tensor_free(&r);
  fx_fini(&x);

  fx_init(&x);
  int64_t ld[2] = {2, 4}, td[1] = {2};
  double logits[8] = {0, 0, 0, 0, 0, 0, 0, 100}, tg[2] = {1, 2};
  int32_t la = fx_arg(&x, PTC_DTYPE_F64, 2, ld, logits);
  int32_t ta = fx_arg(&x, PTC_DTYPE_I32, 1, td, tg);
  int32_t cin[2] = {la, ta};
  ptc_attr cls = ptc_attr_int("classes", 3); /* the 100 is padding: masked */
  int32_t ce = ptc_build1(x.f, PTC_OP_CROSS_ENTROPY, cin, 2, &cls, 1, ptc_loc_unknown);
  r = fx_run(&x, ce);
  CHECK(NEAR(r.data[0], log(3.0))); /* f64 logits give an f64 loss */
  ptc_tensor_free(&r);
  fx_fini(&x);
}

static void test_rope_gelu(void) {
  fx x;
  fx_init(&x);
  int64_t d[4] = {1, 2, 1, 2};
  double v[4] = {1, 0, 1, 0};
  int32_t a = fx_arg(&x, PTC_DTYPE_F64, 4, d, v);
  ptc_attr th = ptc_attr_float("theta", 10000);
  int32_t ro = ptc_build1(x.f, PTC_OP_ROPE, &a, 1, &th, 1, ptc_loc_unknown);
  int32_t ge = ptc_build1(x.f, PTC_OP_GELU, &ro, 1, NULL, 0, ptc_loc_unknown);
  ptc_tensor r = fx_run(&x, ge);
  /* position 0: identity; position 1: angle 1 -> (cos 1, sin 1) */
  double g1 = 0.5 * (1 + tanh(0.7978845608028654 * 1.044715));
  CHECK(NEAR(r.data[0], g1) && NEAR(r.data[1], 0));
  double c1 = cos(1.0), s1 = sin(1.0);
  double gc = 0.5 * c1 * (1 + tanh(0.7978845608028654 * (c1 + 0.044715 * c1 * c1 * c1)));
  double gs = 0.5 * s1 * (1 + tanh(0.7978845608028654 * (s1 + 0.044715 * s1 * s1 * s1)));
  CHECK(NEAR(r.data[2], gc) && NEAR(r.data[3], gs));
  ptc_tensor_free(&r);
  fx_fini(&x);
}

static void test_shape_ops(void) {
  fx x;
  fx_init(&x);
  int64_t d[2] = {2, 3};
  double v[6] = {0, 1, 2, 3, 4, 5};
  int32_t a = fx_arg(&x, PTC_DTYPE_F64, 2, d, v);
  int64_t perm[2] = {1, 0};
  ptc_attr p = ptc_attr_ints("perm", perm, 2);
  int32_t t = ptc_build1(x.f, PTC_OP_TRANSPOSE, &a, 1, &p, 1, ptc_loc_unknown);
  ptc_attr sl[3] = {ptc_attr_int("axis", 0), ptc_attr_int("start", 1), ptc_attr_int("end", 3)};
  int32_t s = ptc_build1(x.f, PTC_OP_SLICE, &t, 1, sl, 3, ptc_loc_unknown); /* [[1,4],[2,5]] */
  int64_t axes[1] = {0};
  ptc_attr ra[2] = {ptc_attr_ints("axes", axes, 1), ptc_attr_bool("keepdim", true)};
  int32_t sum = ptc_build1(x.f, PTC_OP_REDUCE_SUM, &s, 1, ra, 2, ptc_loc_unknown); /* [[3, 9]] */
  int32_t in[2] = {s, sum};
  int32_t add = ptc_build1(x.f, PTC_OP_ADD, in, 2, NULL, 0, ptc_loc_unknown);
  ptc_tensor r = fx_run(&x, add);
  CHECK(r.type.rank == 2 && r.type.dims[0] == 2 && r.type.dims[1] == 2);
  CHECK(r.data[0] == 4 && r.data[1] == 13 && r.data[2] == 5 && r.data[3] == 14);
  ptc_tensor_free(&r);
  fx_fini(&x);

  /* embedding out of range is a runtime error at the op */
  fx_init(&x);
  int64_t id[1] = {2}, td[2] = {3, 2};
  double ids[2] = {0, 7}, tab[6] = {0};
  int32_t ia = fx_arg(&x, PTC_DTYPE_I32, 1, id, ids);
  int32_t ta = fx_arg(&x, PTC_DTYPE_F32, 2, td, tab);
  int32_t ein[2] = {ia, ta};
  int32_t em = ptc_build1(x.f, PTC_OP_EMBEDDING, ein, 2, NULL, 0, ptc_loc_unknown);
  ptc_func_add_result(x.f, &x.f->values[em].type, NULL);
  ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = 1, .in = &em};
  CHECK(ptc_build(x.f, &ret) >= 0);
  ptc_tensor out = {0};
  CHECK(ptc_eval_func(x.f, x.args, NULL, &out) == -1);
  CHECK(strstr(ptc_ctx_diag_text(x.ctx), "index 7 out of range [0, 3)"));
  fx_fini(&x);
}

static void test_rounding(void) {
  fx x;
  fx_init(&x);
  int64_t d[1] = {3};
  double v[3] = {1.0 + 1.0 / 512, 65519.0, 1e-8};
  int32_t a = fx_arg(&x, PTC_DTYPE_F64, 1, d, v);
  ptc_attr to = ptc_attr_dtype("to", PTC_DTYPE_BF16);
  int32_t bf = ptc_build1(x.f, PTC_OP_CAST, &a, 1, &to, 1, ptc_loc_unknown);
  to = ptc_attr_dtype("to", PTC_DTYPE_F16);
  int32_t hf = ptc_build1(x.f, PTC_OP_CAST, &a, 1, &to, 1, ptc_loc_unknown);
  to = ptc_attr_dtype("to", PTC_DTYPE_F64);
  int32_t b64 = ptc_build1(x.f, PTC_OP_CAST, &bf, 1, &to, 1, ptc_loc_unknown);
  int32_t h64 = ptc_build1(x.f, PTC_OP_CAST, &hf, 1, &to, 1, ptc_loc_unknown);
  int32_t in[2] = {b64, h64};
  ptc_attr ax = ptc_attr_int("axis", 0);
  int32_t c = ptc_build1(x.f, PTC_OP_CONCAT, in, 2, &ax, 1, ptc_loc_unknown);
  ptc_tensor r = fx_run(&x, c);
  CHECK(r.data[0] == 1.0);           /* bf16 has 8 bits: 1 + 2^-9 rounds to 1 */
  CHECK(r.data[1] == 65536.0);       /* 65519 -> 65536 in bf16 */
  CHECK(r.data[3] == 1.0 + 1.0 / 512);  /* f16 has 11 bits: keeps it */
  CHECK(r.data[4] == 65504.0);       /* f16 max */
  CHECK(r.data[5] == ldexp(1.0, -24) * nearbyint(1e-8 / ldexp(1.0, -24))); /* subnormal */
  ptc_tensor_free(&r);
  fx_fini(&x);
}

int main(void) {
  test_matmul_broadcast();
  test_norms_softmax();
  test_attention_ce();
  test_rope_gelu();
  test_shape_ops();
  test_rounding();
  return test_report("test_eval");
}
