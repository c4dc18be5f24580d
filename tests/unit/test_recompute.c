/* test_recompute.c -- the recompute pass: the step it leaves computes
 * exactly what the step without it computes, and keeps less.
 *
 * A tiny GPT-2, a tiny Llama and a model whose attention is written out as
 * ops go through `canonicalize,cse,autodiff` with and without
 * `recompute{...}`; the reference evaluator runs both @steps on the same
 * parameters and batch, and the loss and every gradient must be equal bit
 * for bit (a copy computes the same op on the same operands).  Then the
 * structure: which forward values the backward still reads (full: each
 * layer's input and the head's values; selective: no seq x seq value),
 * the module attributes, and that cse and dce leave the copies alone. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"
#include "test_model.h"

static const char *GPT2 = "models/gpt2.ptg";
static const char *GPT2_SETS = "layers=2,dim=32,heads=4,vocab=64,ctx=16,batch=2,seq=16";
static const char *LLAMA = "models/llama.ptg";
static const char *LLAMA_SETS =
    "layers=3,dim=32,heads=4,kv_heads=2,ffn=64,vocab=64,ctx=16,batch=2,seq=16";
static const char *ATTN = "tests/lit/passes/Inputs/recompute-attn.ptg";

static ptc_module *compile(ptc_ctx *ctx, const char *path, const char *sets,
                           const char *recompute, const char *after) {
  char pipe[256];
  snprintf(pipe, sizeof pipe, "canonicalize,cse,autodiff%s%s%s%s", recompute ? "," : "",
           recompute ? recompute : "", after ? "," : "", after ? after : "");
  ptc_module *m = test_compile_model(ctx, path, sets, pipe);
  CHECK_MSG(m != NULL, "%s with %s: %s", path, pipe, ptc_ctx_diag_text(ctx));
  return m;
}

/* Runs @step on fixed parameters and inputs; results[] (f->nresults) are
 * the caller's to free.  Returns the number of results, or -1. */
static int32_t run_step(ptc_module *m, ptc_tensor **results) {
  ptc_func *f = ptc_module_find_func(m, "step");
  if (!f) return -1;
  ptc_tensor *params = calloc((size_t)m->nparams, sizeof *params);
  for (int32_t i = 0; i < m->nparams; i++) {
    params[i] = ptc_tensor_new(&m->params[i].type);
    if (m->params[i].init.kind == PTC_INIT_ONES)
      for (int64_t k = 0; k < ptc_type_numel(&params[i].type); k++) params[i].data[k] = 1;
    else
      ptc_tensor_fill_random(&params[i], 100 + (uint64_t)i, -0.1, 0.1);
  }
  ptc_tensor *args = calloc((size_t)f->nargs, sizeof *args);
  for (int32_t i = 0; i < f->nargs; i++) {
    args[i] = ptc_tensor_new(&f->values[f->args[i]].type);
    ptc_tensor_fill_random(&args[i], 1 + (uint64_t)i, 0, 64); /* token ids < vocab */
  }
  *results = calloc((size_t)f->nresults, sizeof **results);
  int rc = ptc_eval_func(f, args, params, *results);
  for (int32_t i = 0; i < f->nargs; i++) ptc_tensor_free(&args[i]);
  for (int32_t i = 0; i < m->nparams; i++) ptc_tensor_free(&params[i]);
  free(args);
  free(params);
  return rc == 0 ? f->nresults : -1;
}

static void free_results(ptc_tensor *r, int32_t n) {
  for (int32_t i = 0; i < n; i++) ptc_tensor_free(&r[i]);
  free(r);
}

static int32_t count_copies(const ptc_func *f) {
  int32_t n = 0;
  for (int32_t i = 0; i < f->nops; i++) n += ptc_op_attr_bool(&f->ops[i], "recompute", false);
  return n;
}

/* The forward values (ancestors of the loss) that other ops read: what the
 * backward keeps.  Counts them, and in *square those shaped [..., n, n]
 * with n = 16 (the test models' seq: attention scores). */
static int32_t kept_values(const ptc_func *f, int32_t *square) {
  bool *fwd = calloc((size_t)f->nops + 1, sizeof *fwd);
  bool *seen = calloc((size_t)f->nvalues + 1, sizeof *seen);
  int32_t *stack = malloc((size_t)(f->nvalues + 1) * sizeof *stack), n = 0;
  stack[n++] = f->ops[f->nops - 1].in[0];
  while (n) {
    int32_t v = stack[--n];
    if (f->values[v].kind != PTC_VALUE_OP || fwd[f->values[v].def]) continue;
    fwd[f->values[v].def] = true;
    const ptc_op *op = &f->ops[f->values[v].def];
    for (int32_t k = 0; k < op->nin; k++) stack[n++] = op->in[k];
  }
  int32_t kept = 0;
  *square = 0;
  for (int32_t i = 0; i < f->nops; i++) {
    if (fwd[i] || f->ops[i].code == PTC_OP_RETURN) continue;
    for (int32_t k = 0; k < f->ops[i].nin; k++) {
      int32_t v = f->ops[i].in[k];
      if (f->values[v].kind != PTC_VALUE_OP || !fwd[f->values[v].def] || seen[v]) continue;
      seen[v] = true;
      kept++;
      const ptc_type *t = &f->values[v].type;
      *square += t->rank >= 2 && t->dims[t->rank - 1] == 16 && t->dims[t->rank - 2] == 16;
    }
  }
  free(stack);
  free(seen);
  free(fwd);
  return kept;
}

/* The loss and gradients of path with `recompute` equal those without. */
static void check_exact(const char *path, const char *sets, const char *recompute) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *a = compile(ctx, path, sets, NULL, NULL);
  ptc_module *b = compile(ctx, path, sets, recompute, NULL);
  if (a && b) {
    CHECK_MSG(count_copies(ptc_module_find_func(b, "step")) > 0, "%s %s: no copies", path,
              recompute);
    ptc_tensor *ra = NULL, *rb = NULL;
    int32_t na = run_step(a, &ra), nb = run_step(b, &rb);
    CHECK_MSG(na > 1 && na == nb, "%s %s: %d vs %d results: %s", path, recompute, na, nb,
              ptc_ctx_diag_text(ctx));
    for (int32_t r = 0; r < na && r < nb; r++) {
      int64_t n = ptc_type_numel(&ra[r].type);
      CHECK(ptc_type_eq(&ra[r].type, &rb[r].type));
      bool same = memcmp(ra[r].data, rb[r].data, (size_t)n * sizeof(double)) == 0;
      CHECK_MSG(same, "%s %s: result %d differs", path, recompute, r);
    }
    if (na > 0) free_results(ra, na);
    if (nb > 0) free_results(rb, nb);
  }
  if (a) ptc_module_destroy(a);
  if (b) ptc_module_destroy(b);
  ptc_ctx_destroy(ctx);
}

static void test_exact(void) {
  check_exact(GPT2, GPT2_SETS, "recompute{mode=full}");
  check_exact(GPT2, GPT2_SETS, "recompute{mode=full layers=1}");
  check_exact(LLAMA, LLAMA_SETS, "recompute{mode=full}");
  check_exact(LLAMA, LLAMA_SETS, "recompute{mode=full layers=2}");
  check_exact(ATTN, "layers=2", "recompute{mode=selective}");
  check_exact(ATTN, "layers=2", "recompute{mode=full}");
}

/* Full: per recomputed layer only its input is kept; the head keeps its
 * own three (final residual, its norm, the logits). */
static void test_kept(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  int32_t l2;
  ptc_module *m = compile(ctx, LLAMA, LLAMA_SETS, NULL, NULL);
  int32_t none = m ? kept_values(ptc_module_find_func(m, "step"), &l2) : 0;
  if (m) ptc_module_destroy(m);
  m = compile(ctx, LLAMA, LLAMA_SETS, "recompute{mode=full}", NULL);
  if (m) {
    int32_t full = kept_values(ptc_module_find_func(m, "step"), &l2);
    CHECK_MSG(full == 3 + 3, "llama, 3 layers, full: %d forward values kept (none: %d)", full,
              none);
    CHECK(none > 3 * 8);
    const ptc_attr *a = ptc_module_get_attr(m, "recompute.mode");
    CHECK(a && a->kind == PTC_ATTR_STR && strcmp(a->u.s, "full") == 0);
    a = ptc_module_get_attr(m, "recompute.layers");
    CHECK(a && a->kind == PTC_ATTR_INT && a->u.i == 3);
    a = ptc_module_get_attr(m, "recompute.ops");
    CHECK(a && a->kind == PTC_ATTR_INT &&
          a->u.i == count_copies(ptc_module_find_func(m, "step")));
    ptc_module_destroy(m);
  }
  /* layers=1: the first layer keeps its input, the others everything */
  m = compile(ctx, LLAMA, LLAMA_SETS, "recompute{mode=full layers=1}", NULL);
  if (m) {
    int32_t one = kept_values(ptc_module_find_func(m, "step"), &l2);
    CHECK_MSG(one > 6 && one < none, "layers=1: %d kept (none %d)", one, none);
    const ptc_attr *a = ptc_module_get_attr(m, "recompute.layers");
    CHECK(a && a->u.i == 1);
    ptc_module_destroy(m);
  }
  /* selective: no seq x seq value (16 x 16) is kept */
  m = compile(ctx, ATTN, "layers=2", NULL, NULL);
  if (m) {
    kept_values(ptc_module_find_func(m, "step"), &l2);
    CHECK_MSG(l2 == 2, "without recompute each layer keeps its probabilities: %d", l2);
    ptc_module_destroy(m);
  }
  m = compile(ctx, ATTN, "layers=2", "recompute{mode=selective}", NULL);
  if (m) {
    kept_values(ptc_module_find_func(m, "step"), &l2);
    CHECK_MSG(l2 == 0, "selective keeps %d seq x seq values", l2);
    /* matmul, mul, softmax per layer */
    CHECK_MSG(count_copies(ptc_module_find_func(m, "step")) == 2 * 3, "%d copies",
              count_copies(ptc_module_find_func(m, "step")));
    ptc_module_destroy(m);
  }
  /* the fused attention op keeps no scores: nothing to select */
  m = compile(ctx, GPT2, GPT2_SETS, "recompute{mode=selective}", NULL);
  if (m) {
    CHECK(count_copies(ptc_module_find_func(m, "step")) == 0);
    const ptc_attr *a = ptc_module_get_attr(m, "recompute.ops");
    CHECK(a && a->u.i == 0);
    ptc_module_destroy(m);
  }
  /* mode=none changes nothing, not even the attributes */
  m = compile(ctx, GPT2, GPT2_SETS, "recompute", NULL);
  if (m) {
    CHECK(ptc_module_get_attr(m, "recompute.mode") == NULL);
    CHECK(count_copies(ptc_module_find_func(m, "step")) == 0);
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

/* cse and dce leave every copy in place. */
static void test_cleanup_keeps_copies(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *a = compile(ctx, GPT2, GPT2_SETS, "recompute{mode=full}", NULL);
  ptc_module *b = compile(ctx, GPT2, GPT2_SETS, "recompute{mode=full}", "cse,dce,canonicalize");
  if (a && b) {
    int32_t na = count_copies(ptc_module_find_func(a, "step"));
    int32_t nb = count_copies(ptc_module_find_func(b, "step"));
    CHECK_MSG(na > 0 && na == nb, "%d copies, %d after cse,dce,canonicalize", na, nb);
  }
  if (a) ptc_module_destroy(a);
  if (b) ptc_module_destroy(b);
  ptc_ctx_destroy(ctx);
}

/* Errors say what to do. */
static void test_errors(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = test_compile_model(ctx, "models/mlp.ptg", "batch=4",
                                     "canonicalize,cse,autodiff,recompute{mode=full}");
  CHECK(m == NULL);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "recompute: mode=full found no layers") != NULL,
            "%s", ptc_ctx_diag_text(ctx));
  if (m) ptc_module_destroy(m);
  ptc_ctx_reset_errors(ctx);
  ptc_ctx_set_diag_capture(ctx, false);
  ptc_ctx_set_diag_capture(ctx, true);
  m = test_compile_model(ctx, GPT2, GPT2_SETS, "canonicalize,recompute{mode=full}");
  CHECK(m == NULL);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "run it after autodiff") != NULL, "%s",
            ptc_ctx_diag_text(ctx));
  if (m) ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  test_exact();
  test_kept();
  test_cleanup_keeps_copies();
  test_errors();
  return test_report("test_recompute");
}
