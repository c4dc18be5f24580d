/* test_optimizer.c -- the optimizer pass: structure of the rewritten @step
 * and its numbers, evaluated with the reference evaluator against AdamW and
 * SGD written out by hand (PyTorch's definitions), with and without
 * gradient clipping. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"

/* loss = sum(w * x) + sum(b * y); the gradients (x and y) are written by
 * hand as values named %grad.<param>, as autodiff names them. */
static const char *src =
    "module @m {\n"
    "  param @w : f32[2,3] init normal(0.02)\n"
    "  param @b : f32[3] init zeros\n"
    "\n"
    "  func @step(%x: f32[2,3], %y: f32[3]) -> (f32[], f32[2,3], f32[3]) {\n"
    "    %0 = mul @w, %x : f32[2,3]\n"
    "    %1 = reduce_sum %0 {axes = [0, 1]} : f32[]\n"
    "    %2 = mul @b, %y : f32[3]\n"
    "    %3 = reduce_sum %2 {axes = [0]} : f32[]\n"
    "    %loss = add %1, %3 : f32[]\n"
    "    %one = constant {value = 1.0} : f32[]\n"
    "    %grad.w = mul %x, %one : f32[2,3]\n"
    "    %grad.b = mul %y, %one : f32[3]\n"
    "    return %loss, %grad.w, %grad.b\n"
    "  }\n"
    "}\n";

static ptc_module *run(ptc_ctx *ctx, const char *pipeline) {
  ptc_module *m = ptc_parse_module(ctx, "opt.ptir", src, strlen(src));
  PTC_ASSERT(m);
  ptc_pipeline *p = ptc_pipeline_parse(ctx, pipeline);
  PTC_ASSERT(p);
  int rc = ptc_pipeline_run(m, p, NULL);
  ptc_pipeline_destroy(p);
  if (rc != 0) {
    fprintf(stderr, "%s", ptc_ctx_diag_text(ctx));
    ptc_module_destroy(m);
    return NULL;
  }
  return m;
}

/* Evaluates one step; returns (loss, norm) and updates params in place. */
static void step(ptc_module *m, ptc_tensor *params, const double *x, const double *y,
                 double lr, double t, double *loss, double *norm) {
  ptc_func *f = ptc_module_find_func(m, "step");
  ptc_tensor args[4];
  for (int i = 0; i < 4; i++) args[i] = ptc_tensor_new(&f->values[f->args[i]].type);
  memcpy(args[0].data, x, 6 * sizeof(double));
  memcpy(args[1].data, y, 3 * sizeof(double));
  args[2].data[0] = lr;
  args[3].data[0] = t;
  ptc_tensor res[2];
  int rc = ptc_eval_func(f, args, params, res);
  CHECK(rc == 0);
  *loss = res[0].data[0];
  *norm = res[1].data[0];
  for (int i = 0; i < 2; i++) ptc_tensor_free(&res[i]);
  for (int i = 0; i < 4; i++) ptc_tensor_free(&args[i]);
}

static bool close(double a, double b) { return fabs(a - b) <= 2e-6 * (1e-3 + fabs(b)); }

static void test_adamw(double clip) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  char pipe[128];
  snprintf(pipe, sizeof pipe, "optimizer{clip=%g weight-decay=0.1}", clip);
  ptc_module *m = run(ctx, pipe);
  CHECK(m != NULL);
  if (!m) {
    ptc_ctx_destroy(ctx);
    return;
  }
  /* state variables: not trainable, zero init; param count unchanged */
  CHECK(m->nparams == 6);
  int32_t wm = ptc_module_find_param(m, "w.m"), bv = ptc_module_find_param(m, "b.v");
  CHECK(wm >= 0 && bv >= 0 && !m->params[wm].trainable);
  CHECK(m->params[wm].init.kind == PTC_INIT_ZEROS);
  CHECK(ptc_module_param_count(m) == 9);
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_print_module(&b, m);
  CHECK(strstr(b.data, "func @step(%x: f32[2,3], %y: f32[3], %lr: f32[], %step: f32[]) -> (f32[], f32[])"));
  CHECK(strstr(b.data, "assign @w.v, "));
  /* rank-1 params are not decayed */
  CHECK(strstr(b.data, "weight_decay = 0.0}"));
  CHECK(strstr(b.data, "weight_decay = 0.1}"));
  ptc_buf_fini(&b);

  ptc_tensor params[6];
  for (int i = 0; i < 6; i++) params[i] = ptc_tensor_new(&m->params[i].type);
  double w0[6] = {0.5, -0.25, 1, 2, -3, 0.125};
  memcpy(params[0].data, w0, sizeof w0);
  double x[6] = {1, 2, 3, 4, 5, 6}, y[3] = {-1, 0.5, 2};

  /* reference AdamW over 3 steps (beta1 0.9, beta2 0.95, eps 1e-8) */
  double w[6], bb[3] = {0, 0, 0}, mw[6] = {0}, vw[6] = {0}, mb[3] = {0}, vb[3] = {0};
  memcpy(w, w0, sizeof w);
  double gn = 0;
  for (int i = 0; i < 6; i++) gn += x[i] * x[i];
  for (int i = 0; i < 3; i++) gn += y[i] * y[i];
  gn = sqrt(gn);
  double coef = clip > 0 ? fmin(1.0, clip / (gn + 1e-6)) : 1.0;
  for (int t = 1; t <= 3; t++) {
    double lr = 1e-2 * t;
    double loss, norm, want_loss = 0;
    for (int i = 0; i < 6; i++) want_loss += w[i] * x[i];
    for (int i = 0; i < 3; i++) want_loss += bb[i] * y[i];
    step(m, params, x, y, lr, t, &loss, &norm);
    CHECK_MSG(close(loss, want_loss), "step %d loss %.9g want %.9g", t, loss, want_loss);
    CHECK_MSG(close(norm, gn), "step %d norm %.9g want %.9g", t, norm, gn);
    double c1 = 1 - pow(0.9, t), c2 = 1 - pow(0.95, t);
    for (int i = 0; i < 6; i++) {
      double g = x[i] * coef;
      mw[i] = 0.9 * mw[i] + 0.1 * g;
      vw[i] = 0.95 * vw[i] + 0.05 * g * g;
      w[i] = w[i] * (1 - lr * 0.1) - lr * (mw[i] / c1) / (sqrt(vw[i] / c2) + 1e-8);
    }
    for (int i = 0; i < 3; i++) {
      double g = y[i] * coef;
      mb[i] = 0.9 * mb[i] + 0.1 * g;
      vb[i] = 0.95 * vb[i] + 0.05 * g * g;
      bb[i] -= lr * (mb[i] / c1) / (sqrt(vb[i] / c2) + 1e-8);
    }
    for (int i = 0; i < 6; i++)
      CHECK_MSG(close(params[0].data[i], w[i]), "step %d w[%d] %.9g want %.9g", t, i,
                params[0].data[i], w[i]);
    for (int i = 0; i < 3; i++)
      CHECK_MSG(close(params[1].data[i], bb[i]), "step %d b[%d] %.9g want %.9g", t, i,
                params[1].data[i], bb[i]);
  }
  for (int i = 0; i < 6; i++) ptc_tensor_free(&params[i]);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

static void test_sgd(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = run(ctx, "optimizer{kind=sgd momentum=0.5 nesterov clip=0 weight-decay=0.01 decay-vectors}");
  CHECK(m != NULL);
  if (!m) {
    ptc_ctx_destroy(ctx);
    return;
  }
  CHECK(m->nparams == 4 && ptc_module_find_param(m, "w.momentum") >= 0);
  ptc_tensor params[4];
  for (int i = 0; i < 4; i++) params[i] = ptc_tensor_new(&m->params[i].type);
  double x[6] = {1, 2, 3, 4, 5, 6}, y[3] = {-1, 0.5, 2};
  double w[6] = {0}, buf[6] = {0};
  for (int t = 1; t <= 2; t++) {
    double loss, norm;
    step(m, params, x, y, 0.1, t, &loss, &norm);
    for (int i = 0; i < 6; i++) {
      double d = x[i] + 0.01 * w[i];
      buf[i] = 0.5 * buf[i] + d;
      w[i] -= 0.1 * (d + 0.5 * buf[i]);
      CHECK_MSG(close(params[0].data[i], w[i]), "sgd step %d w[%d] %.9g want %.9g", t, i,
                params[0].data[i], w[i]);
    }
  }
  for (int i = 0; i < 4; i++) ptc_tensor_free(&params[i]);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

static void test_errors(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  /* twice: the second run finds %lr already there */
  CHECK(run(ctx, "optimizer,optimizer") == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "already has an argument %lr"));
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_pipeline_parse(ctx, "optimizer{kind=lamb}") == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "is one of adamw|sgd, got 'lamb'"));
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_pipeline_parse(ctx, "optimizer{beta1=2}") == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "expects a number in [0, 1], got '2'"));
  ptc_ctx_reset_errors(ctx);
  ptc_pipeline *p = ptc_pipeline_parse(ctx, "optimizer{beta2=0.999 kind=sgd}");
  CHECK(p != NULL);
  if (p) {
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_pipeline_print(&b, p);
    CHECK_STR(b.data, "optimizer{kind=sgd beta2=0.999}");
    ptc_buf_fini(&b);
    ptc_pipeline_destroy(p);
  }
  ptc_ctx_destroy(ctx);
}

int main(void) {
  test_adamw(0);
  test_adamw(1.0); /* the norm is ~11.6, so clipping scales every gradient */
  test_sgd();
  test_errors();
  return test_report("test_optimizer");
}
