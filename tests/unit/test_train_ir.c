/* test_train_ir.c -- the whole compiler path to a training step, checked
 * numerically without any runtime: a tiny GPT-2 and a tiny Llama go through
 * the frontend and `canonicalize,cse,autodiff,optimizer,cse,dce`, and the
 * reference evaluator runs the resulting @step repeatedly on one batch.
 * The loss must fall (the model memorizes the batch), the gradient norm must
 * be finite, and every variable must keep its shape. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"
#include "test_model.h"


static void train(const char *path, const char *sets, int steps, double lr) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = test_compile_model(ctx, path, sets,
                                    "canonicalize,cse,autodiff,optimizer,cse,dce");
  CHECK_MSG(m != NULL, "%s: %s", path, ptc_ctx_diag_text(ctx));
  if (!m) {
    ptc_ctx_destroy(ctx);
    return;
  }
  ptc_func *f = ptc_module_find_func(m, "step");
  CHECK(f && f->nargs == 4 && f->nresults == 2);

  ptc_tensor *params = calloc((size_t)m->nparams, sizeof *params);
  for (int32_t i = 0; i < m->nparams; i++) {
    params[i] = ptc_tensor_new(&m->params[i].type);
    const ptc_init *in = &m->params[i].init;
    int64_t n = ptc_type_numel(&params[i].type);
    if (in->kind == PTC_INIT_ONES)
      for (int64_t k = 0; k < n; k++) params[i].data[k] = 1;
    else if (in->kind == PTC_INIT_NORMAL || in->kind == PTC_INIT_SCALED)
      ptc_tensor_fill_random(&params[i], 100 + (uint64_t)i, -0.1, 0.1);
  }
  ptc_tensor args[4];
  for (int i = 0; i < 4; i++) args[i] = ptc_tensor_new(&f->values[f->args[i]].type);
  int64_t vocab = -1; /* the rows of the table the embedding reads */
  for (int32_t i = 0; i < f->nops; i++)
    if (f->ops[i].code == PTC_OP_EMBEDDING) vocab = f->values[f->ops[i].in[1]].type.dims[0];
  CHECK(vocab > 0);
  ptc_tensor_fill_random(&args[0], 1, 0, (double)vocab);
  ptc_tensor_fill_random(&args[1], 2, 0, (double)vocab);

  double first = 0, last = 0;
  for (int s = 1; s <= steps; s++) {
    args[2].data[0] = lr;
    args[3].data[0] = s;
    ptc_tensor res[2];
    int rc = ptc_eval_func(f, args, params, res);
    CHECK_MSG(rc == 0, "%s", ptc_ctx_diag_text(ctx));
    if (rc) break;
    if (s == 1) first = res[0].data[0];
    last = res[0].data[0];
    CHECK(isfinite(res[1].data[0]) && res[1].data[0] > 0);
    ptc_tensor_free(&res[0]);
    ptc_tensor_free(&res[1]);
  }
  /* a random init starts near log(vocab); memorizing one batch halves it */
  CHECK_MSG(fabs(first - log((double)vocab)) < 0.5, "%s: first loss %g, log(vocab) %g",
            path, first, log((double)vocab));
  CHECK_MSG(last < 0.5 * first, "%s: loss %g -> %g after %d steps", path, first, last,
            steps);
  printf("%s: loss %.4f -> %.4f in %d steps\n", path, first, last, steps);
  for (int i = 0; i < 4; i++) ptc_tensor_free(&args[i]);
  for (int32_t i = 0; i < m->nparams; i++) ptc_tensor_free(&params[i]);
  free(params);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  train("models/gpt2.ptg", "layers=2,dim=32,heads=2,vocab=64,ctx=16,batch=2,seq=16", 30,
        1e-2);
  train("models/llama.ptg",
        "layers=2,dim=32,heads=4,kv_heads=2,ffn=64,vocab=64,ctx=16,batch=2,seq=16", 30,
        1e-2);
  return test_report("test_train_ir");
}
