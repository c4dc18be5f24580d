/* test_opmath.c -- the shared description of the fusible ops' math
 * (codegen/opmath.h), interpreted in f32, against the reference evaluator
 * ir/eval.c (double), for every fusible op: each element-wise op (f32, and
 * the integer ones on i32 / i64), the optimizers, the row ops and their
 * gradients (classes below the row length, out-of-range targets), and the
 * reductions.  Both code generators (LLVM, CUDA C) walk these programs, so
 * a wrong formula here is wrong on every target: this is where it shows.
 *
 * Also checks the coverage: every op the op table marks element-wise has a
 * case here, and every case's op is fusible (ptc_op_fusible).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/opmath.h"
#include "ir/ir.h"
#include "test.h"

typedef struct ocase {
  const char *name;
  const char *text; /* a module whose @f's first op is the op under test */
  double lo, hi;    /* range of the random arguments */
} ocase;

#define M1(args, body) "module @m {\n  func @f(" args ") -> f32[] {\n" body "  }\n}\n"
#define F(args, res, body) "module @m {\n  func @f(" args ") -> (" res ") {\n" body "  }\n}\n"

static const ocase cases[] = {
    {"add", F("%x: f32[5,7], %y: f32[7]", "f32[5,7]", "    %z = add %x, %y : f32[5,7]\n    return %z\n"), -3, 3},
    {"sub", F("%x: f32[5,7], %y: f32[5,1]", "f32[5,7]", "    %z = sub %x, %y : f32[5,7]\n    return %z\n"), -3, 3},
    {"mul", F("%x: f32[5,7], %y: f32[]", "f32[5,7]", "    %z = mul %x, %y : f32[5,7]\n    return %z\n"), -3, 3},
    {"div", F("%x: f32[5,7], %y: f32[5,7]", "f32[5,7]", "    %z = div %x, %y : f32[5,7]\n    return %z\n"), 0.5, 3},
    {"maximum", F("%x: f32[5,7], %y: f32[7]", "f32[5,7]", "    %z = maximum %x, %y : f32[5,7]\n    return %z\n"), -3, 3},
    {"neg", F("%x: f32[5,7]", "f32[5,7]", "    %z = neg %x : f32[5,7]\n    return %z\n"), -3, 3},
    {"exp", F("%x: f32[5,7]", "f32[5,7]", "    %z = exp %x : f32[5,7]\n    return %z\n"), -8, 8},
    {"log", F("%x: f32[5,7]", "f32[5,7]", "    %z = log %x : f32[5,7]\n    return %z\n"), 0.01, 50},
    {"sqrt", F("%x: f32[5,7]", "f32[5,7]", "    %z = sqrt %x : f32[5,7]\n    return %z\n"), 0.01, 50},
    {"rsqrt", F("%x: f32[5,7]", "f32[5,7]", "    %z = rsqrt %x : f32[5,7]\n    return %z\n"), 0.01, 50},
    {"tanh", F("%x: f32[5,7]", "f32[5,7]", "    %z = tanh %x : f32[5,7]\n    return %z\n"), -6, 6},
    {"sigmoid", F("%x: f32[5,7]", "f32[5,7]", "    %z = sigmoid %x : f32[5,7]\n    return %z\n"), -9, 9},
    {"relu", F("%x: f32[5,7]", "f32[5,7]", "    %z = relu %x : f32[5,7]\n    return %z\n"), -3, 3},
    {"gelu", F("%x: f32[5,7]", "f32[5,7]", "    %z = gelu %x : f32[5,7]\n    return %z\n"), -9, 9},
    {"silu", F("%x: f32[5,7]", "f32[5,7]", "    %z = silu %x : f32[5,7]\n    return %z\n"), -9, 9},
    {"relu_grad", F("%g: f32[5,7], %x: f32[5,7]", "f32[5,7]", "    %z = relu_grad %g, %x : f32[5,7]\n    return %z\n"), -3, 3},
    {"gelu_grad", F("%g: f32[5,7], %x: f32[5,7]", "f32[5,7]", "    %z = gelu_grad %g, %x : f32[5,7]\n    return %z\n"), -9, 9},
    {"silu_grad", F("%g: f32[5,7], %x: f32[5,7]", "f32[5,7]", "    %z = silu_grad %g, %x : f32[5,7]\n    return %z\n"), -9, 9},
    {"compare ge", F("%x: f32[5,7], %y: f32[7]", "f32[5,7]", "    %z = compare %x, %y {cmp = ge} : f32[5,7]\n    return %z\n"), -3, 3},
    {"compare gt", F("%x: f32[5,7], %y: f32[5,7]", "f32[5,7]", "    %z = compare %x, %y {cmp = gt} : f32[5,7]\n    return %z\n"), -3, 3},
    {"compare eq", F("%x: f32[5,7]", "f32[5,7]", "    %z = compare %x, %x {cmp = eq} : f32[5,7]\n    return %z\n"), -3, 3},
    {"cast f32 to i32", F("%x: f32[5,7]", "i32[5,7]", "    %z = cast %x {to = i32} : i32[5,7]\n    return %z\n"), -30, 30},
    {"cast i64 to f32", F("%x: i64[5,7]", "f32[5,7]", "    %z = cast %x {to = f32} : f32[5,7]\n    return %z\n"), -30, 30},
    {"add i32", F("%x: i32[5,7], %y: i32[7]", "i32[5,7]", "    %z = add %x, %y : i32[5,7]\n    return %z\n"), -100, 100},
    {"mul i64", F("%x: i64[5,7], %y: i64[5,7]", "i64[5,7]", "    %z = mul %x, %y : i64[5,7]\n    return %z\n"), -100, 100},
    {"div i32 (zero divisors)", F("%x: i32[5,7], %y: i32[5,7]", "i32[5,7]", "    %z = div %x, %y : i32[5,7]\n    return %z\n"), -3, 3},
    {"maximum i64", F("%x: i64[5,7], %y: i64[7]", "i64[5,7]", "    %z = maximum %x, %y : i64[5,7]\n    return %z\n"), -100, 100},
    {"neg i32", F("%x: i32[5,7]", "i32[5,7]", "    %z = neg %x : i32[5,7]\n    return %z\n"), -100, 100},
    {"sub i64", F("%x: i64[5,7], %y: i64[]", "i64[5,7]", "    %z = sub %x, %y : i64[5,7]\n    return %z\n"), -100, 100},
    {"constant", F("%x: f32[5,7]", "f32[5,7]", "    %c = constant {value = 0.3} : f32[5,7]\n    return %c\n"), -3, 3},
    {"broadcast_to", F("%x: f32[7]", "f32[5,7]", "    %z = broadcast_to %x : f32[5,7]\n    return %z\n"), -3, 3},
    {"softmax", F("%x: f32[5,37]", "f32[5,37]", "    %z = softmax %x {axis = 1} : f32[5,37]\n    return %z\n"), -9, 9},
    {"softmax_grad", F("%g: f32[5,33], %y: f32[5,33]", "f32[5,33]", "    %z = softmax_grad %g, %y {axis = 1} : f32[5,33]\n    return %z\n"), -2, 2},
    {"layernorm", F("%x: f32[2,3,48], %g: f32[48], %b: f32[48]", "f32[2,3,48]", "    %z = layernorm %x, %g, %b {eps = 1e-05} : f32[2,3,48]\n    return %z\n"), -3, 3},
    {"rmsnorm", F("%x: f32[6,40], %g: f32[40]", "f32[6,40]", "    %z = rmsnorm %x, %g {eps = 1e-05} : f32[6,40]\n    return %z\n"), -3, 3},
    {"layernorm_grad", F("%dy: f32[4,48], %x: f32[4,48], %g: f32[48]", "f32[4,48], f32[48], f32[48]", "    %dx, %dg, %db = layernorm_grad %dy, %x, %g {eps = 1e-05} : f32[4,48], f32[48], f32[48]\n    return %dx, %dg, %db\n"), -3, 3},
    {"rmsnorm_grad", F("%dy: f32[4,19], %x: f32[4,19], %g: f32[19]", "f32[4,19], f32[19]", "    %dx, %dg = rmsnorm_grad %dy, %x, %g {eps = 1e-05} : f32[4,19], f32[19]\n    return %dx, %dg\n"), -3, 3},
    {"cross_entropy", M1("%x: f32[3,4,50], %t: i32[3,4]", "    %l = cross_entropy %x, %t {classes = 45} : f32[]\n    return %l\n"), 0, 45},
    {"cross_entropy full", F("%x: f32[7,24], %t: i64[7]", "f32[]", "    %l = cross_entropy %x, %t : f32[]\n    return %l\n"), 0, 24},
    {"cross_entropy_grad", F("%g: f32[], %x: f32[3,4,50], %t: i32[3,4]", "f32[3,4,50]", "    %d = cross_entropy_grad %g, %x, %t {classes = 45} : f32[3,4,50]\n    return %d\n"), 0, 45},
    {"adamw", F("%p: f32[33,17], %g: f32[33,17], %m: f32[33,17], %v: f32[33,17], %lr: f32[], %t: f32[]", "f32[33,17], f32[33,17], f32[33,17]",
                "    %p1, %m1, %v1 = adamw %p, %g, %m, %v, %lr, %t {beta1 = 0.9, beta2 = 0.95, eps = 1e-08, weight_decay = 0.1} : f32[33,17], f32[33,17], f32[33,17]\n    return %p1, %m1, %v1\n"), 0.001, 2},
    {"sgd", F("%p: f32[70], %g: f32[70], %b: f32[70], %lr: f32[]", "f32[70], f32[70]",
              "    %p1, %b1 = sgd %p, %g, %b, %lr {momentum = 0.9, nesterov = true, weight_decay = 0.01} : f32[70], f32[70]\n    return %p1, %b1\n"), -1, 1},
    {"reduce_sum", F("%x: f32[4,5,6]", "f32[5]", "    %z = reduce_sum %x {axes = [0, 2]} : f32[5]\n    return %z\n"), -3, 3},
    {"reduce_mean keepdim", F("%x: f32[4,5,6]", "f32[4,5,1]", "    %z = reduce_mean %x {axes = [2], keepdim = true} : f32[4,5,1]\n    return %z\n"), -3, 3},
    {"reduce_max", F("%x: f32[4,5,6]", "f32[4,6]", "    %z = reduce_max %x {axes = [1]} : f32[4,6]\n    return %z\n"), -3, 3},
};

static bool close_f32(double got, double want, double scale) {
  if (isnan(want)) return isnan(got);
  if (isinf(want)) return got == want;
  return fabs(got - want) <= 2e-5 * (fabs(want) + scale) + 1e-30;
}

/* Runs the first op of @f on its arguments through the description and
 * through a function that returns its results, and compares. */
static void run_case(const ocase *c, uint64_t seed) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_module *m = ptc_parse_module(ctx, c->name, c->text, strlen(c->text));
  CHECK_MSG(m != NULL, "%s: does not parse", c->name);
  if (!m) {
    ptc_ctx_destroy(ctx);
    return;
  }
  ptc_func *f = ptc_module_find_func(m, "f");
  const ptc_op *op = &f->ops[0];
  CHECK_MSG(ptc_op_fusible(f, op), "%s: '%s' is not fusible", c->name,
            ptc_opinfo_get(op->code)->name);
  /* arguments */
  ptc_tensor args[8];
  const double *ins[8];
  for (int32_t a = 0; a < f->nargs; a++) {
    args[a] = ptc_tensor_new(&f->values[f->args[a]].type);
    ptc_tensor_fill_random(&args[a], seed + (uint64_t)a, c->lo, c->hi);
  }
  for (int32_t a = 0; a < op->nin; a++) {
    int32_t v = op->in[a], k = 0;
    while (k < f->nargs && f->args[k] != v) k++;
    PTC_ASSERT(k < f->nargs); /* the op reads arguments only */
    ins[a] = args[k].data;
  }
  /* the reference: @f returns the op's results */
  ptc_tensor ref[4];
  int32_t nres = op->nout;
  ptc_tensor *params = ptc_xcalloc((size_t)m->nparams + 1, sizeof *params);
  int rc = ptc_eval_func(f, args, params, ref);
  free(params);
  CHECK_MSG(rc == 0, "%s: the evaluator failed", c->name);
  if (rc != 0) goto out_args;
  double *outs[4];
  for (int32_t r = 0; r < nres; r++)
    outs[r] = ptc_xcalloc((size_t)ptc_type_numel(&ref[r].type) + 1, sizeof(double));
  int st = ptc_om_eval_op(f, op, ins, outs);
  CHECK_MSG(st == 0, "%s: status %d", c->name, st);
  for (int32_t r = 0; r < nres; r++) {
    int64_t n = ptc_type_numel(&ref[r].type);
    double scale = 0;
    for (int64_t i = 0; i < n; i++) scale = fmax(scale, fabs(ref[r].data[i]));
    if (op->code == PTC_OP_CROSS_ENTROPY_GRAD || op->code == PTC_OP_REDUCE_SUM ||
        op->code == PTC_OP_LAYERNORM_GRAD || op->code == PTC_OP_RMSNORM_GRAD ||
        op->code == PTC_OP_SOFTMAX_GRAD)
      scale = fmax(scale, 1.0); /* sums that cancel */
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
      if (!close_f32(outs[r][i], ref[r].data[i], scale * 1e-2) && bad++ < 3)
        CHECK_MSG(false, "%s: result %d element %lld: opmath %.9g, eval %.9g", c->name, r,
                  (long long)i, outs[r][i], ref[r].data[i]);
    test_checks++;
    free(outs[r]);
    ptc_tensor_free(&ref[r]);
  }
out_args:
  for (int32_t a = 0; a < f->nargs; a++) ptc_tensor_free(&args[a]);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* A target out of range: status 1, that row reads class 0 (the kernels' rule). */
static void test_bad_target(void) {
  const char *text = M1("%x: f32[2,5], %t: i32[2]", "    %l = cross_entropy %x, %t : f32[]\n    return %l\n");
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_module *m = ptc_parse_module(ctx, "bad", text, strlen(text));
  PTC_ASSERT(m);
  ptc_func *f = ptc_module_find_func(m, "f");
  double x[10] = {1, 2, 3, 4, 5, 0, 0, 0, 0, 0}, t[2] = {7, 1}, loss = 0;
  const double *ins[2] = {x, t};
  double *outs[1] = {&loss};
  CHECK(ptc_om_eval_op(f, &f->ops[0], ins, outs) == 1);
  /* row 0 reads class 0: log(sum e^x) - 1; row 1: log(5) */
  double want = (log(exp(1) + exp(2) + exp(3) + exp(4) + exp(5)) - 1 + log(5.0)) / 2;
  CHECK_MSG(fabs(loss - want) < 1e-5, "loss %g, want %g", loss, want);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* Every op the table marks element-wise has a case above, except those
 * the fuse pass leaves to the runtime (ir/group.c, op_class). */
static const char *const not_fused[] = {"select"};

static void test_coverage(void) {
  for (int c = 0; c < PTC_OP_COUNT; c++) {
    const ptc_opinfo *info = ptc_opinfo_get((ptc_opcode)c);
    if (!(info->flags & PTC_OPF_ELEMENTWISE) && !ptc_om_is_rowop((ptc_opcode)c) &&
        !ptc_om_is_reduce((ptc_opcode)c))
      continue;
    bool found = false;
    for (size_t i = 0; i < PTC_ARRAY_LEN(not_fused); i++)
      found |= strcmp(not_fused[i], info->name) == 0;
    size_t n = strlen(info->name);
    for (size_t i = 0; i < PTC_ARRAY_LEN(cases) && !found; i++)
      found = strncmp(cases[i].name, info->name, n) == 0 &&
              (cases[i].name[n] == 0 || cases[i].name[n] == ' ');
    CHECK_MSG(found, "no opmath case for '%s'", info->name);
  }
}

int main(void) {
  for (size_t i = 0; i < PTC_ARRAY_LEN(cases); i++)
    for (uint64_t s = 0; s < 3; s++) run_case(&cases[i], 17 + 101 * s);
  test_bad_target();
  test_coverage();
  return test_report("test_opmath");
}
