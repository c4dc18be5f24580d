/* test_models.c -- the model zoo compiles to the published sizes.
 *
 * Compiles models/{mlp,gpt2,llama}.ptg through ptc_frontend_compile (the
 * test runs with the source tree as working directory) at their default
 * sizes, and Llama at 70B through the same overrides a user passes to
 * --set, and checks the exact parameter counts the reference
 * implementations publish.  Also checks the parameter names and inits that
 * the weight mapping in docs/ptg.md relies on, that each model prints and
 * parses back to the same text, and the define parser's contract.
 */
#include <stdlib.h>

#include "frontend/frontend.h"
#include "test.h"

static char *slurp(ptc_ctx *ctx, const char *path, size_t *len) {
  char *text = ptc_read_file(ctx, path, len);
  CHECK_MSG(text != NULL, "cannot read %s (run from the source tree)", path);
  return text;
}

/* Compiles path with the --set style override list `set` (may be NULL). */
static ptc_module *compile(ptc_ctx *ctx, const char *path, const char *set) {
  size_t len = 0;
  char *text = slurp(ctx, path, &len);
  if (!text) return NULL;
  ptc_define *defs = NULL;
  int32_t ndefs = 0;
  if (set) CHECK(ptc_defines_parse(ctx, set, &defs, &ndefs) == 0);
  ptc_module *m = ptc_frontend_compile(ctx, path, text, len, defs, ndefs);
  CHECK_MSG(m != NULL, "%s with --set %s: %s", path, set ? set : "(none)",
            ptc_ctx_diag_text(ctx));
  free(defs);
  free(text);
  return m;
}

/* print -> parse -> print gives the same text. */
static void check_roundtrip(ptc_ctx *ctx, const ptc_module *m) {
  ptc_buf a, b;
  ptc_buf_init(&a);
  ptc_buf_init(&b);
  ptc_print_module(&a, m);
  ptc_module *back = ptc_parse_module(ctx, "roundtrip.ptir", a.data, a.len);
  CHECK_MSG(back != NULL, "%s", ptc_ctx_diag_text(ctx));
  if (back) {
    ptc_print_module(&b, back);
    CHECK_STR(b.data, a.data);
    ptc_module_destroy(back);
  }
  ptc_buf_fini(&a);
  ptc_buf_fini(&b);
}

static const ptc_param *param(const ptc_module *m, const char *name) {
  int32_t p = ptc_module_find_param(m, name);
  CHECK_MSG(p >= 0, "no parameter '%s'", name);
  return p >= 0 ? &m->params[p] : NULL;
}

static void test_mlp(ptc_ctx *ctx) {
  ptc_module *m = compile(ctx, "models/mlp.ptg", NULL);
  if (!m) return;
  CHECK_MSG(ptc_module_param_count(m) == 669706, "%lld",
            (long long)ptc_module_param_count(m));
  ptc_func *f = ptc_module_find_func(m, "forward");
  CHECK(f && f->nargs == 2 && f->nresults == 1);
  if (f && f->nargs == 2) {
    CHECK_STR(f->values[f->args[0]].name, "images");
    CHECK_STR(f->values[f->args[1]].name, "labels");
  }
  check_roundtrip(ctx, m);
  ptc_module_destroy(m);
}

static void test_gpt2(ptc_ctx *ctx) {
  ptc_module *m = compile(ctx, "models/gpt2.ptg", NULL);
  if (!m) return;
  CHECK_MSG(ptc_module_param_count(m) == 124475904, "%lld",
            (long long)ptc_module_param_count(m));
  const ptc_param *p = param(m, "h11.attn.proj.w");
  if (p) CHECK(p->init.kind == PTC_INIT_SCALED && p->init.depth == 12);
  p = param(m, "h0.attn.qkv.w");
  if (p) CHECK(p->type.rank == 2 && p->type.dims[0] == 768 && p->type.dims[1] == 2304);
  p = param(m, "wte");
  if (p) CHECK(p->type.dims[0] == 50304);
  CHECK(ptc_module_find_param(m, "h12.ln1.g") < 0);
  /* the tied lm head is a transposed matmul on wte, not a transpose op */
  ptc_func *f = ptc_module_find_func(m, "forward");
  bool tied = false, ce = false;
  for (int32_t i = 0; f && i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    CHECK(op->code != PTC_OP_TRANSPOSE);
    CHECK(op->loc.file != NULL && op->loc.line > 0);
    if (op->code == PTC_OP_MATMUL && ptc_op_attr_bool(op, "transpose_b", false))
      tied = true;
    if (op->code == PTC_OP_CROSS_ENTROPY)
      ce = ptc_op_attr_int(op, "classes", 0) == 50257;
  }
  CHECK(tied);
  CHECK(ce);
  check_roundtrip(ctx, m);
  ptc_module_destroy(m);

  m = compile(ctx, "models/gpt2.ptg",
              "layers=2,dim=64,heads=4,vocab=256,ctx=64,batch=2,seq=32");
  if (m) {
    /* 256*64 + 64*64 + 2*(7*64 + 4*64*64 + 4*64 + 64*192 + 192) ... */
    CHECK_MSG(ptc_module_param_count(m) == 120576, "%lld",
              (long long)ptc_module_param_count(m));
    check_roundtrip(ctx, m);
    ptc_module_destroy(m);
  }
}

static void test_llama(ptc_ctx *ctx) {
  ptc_module *m = compile(ctx, "models/llama.ptg", NULL);
  if (!m) return;
  CHECK_MSG(ptc_module_param_count(m) == INT64_C(6738415616), "%lld",
            (long long)ptc_module_param_count(m));
  const ptc_param *p = param(m, "h31.mlp.down.w");
  if (p) CHECK(p->type.dims[0] == 11008 && p->type.dims[1] == 4096);
  check_roundtrip(ctx, m);
  ptc_module_destroy(m);

  m = compile(ctx, "models/llama.ptg",
              "dim=8192,layers=80,heads=64,kv_heads=8,ffn=28672");
  if (m) {
    CHECK_MSG(ptc_module_param_count(m) == INT64_C(68976648192), "%lld",
              (long long)ptc_module_param_count(m));
    p = param(m, "h79.attn.k.w");
    if (p) CHECK(p->type.dims[0] == 8192 && p->type.dims[1] == 1024);
    /* the IR holds shapes, not data: 70B fits in a few MiB */
    CHECK_MSG(m->arena.bytes < (64u << 20), "arena %zu bytes", m->arena.bytes);
    check_roundtrip(ctx, m);
    ptc_module_destroy(m);
  }

  m = compile(ctx, "models/llama.ptg",
              "layers=2,dim=64,heads=4,kv_heads=2,ffn=176,vocab=256,ctx=64,seq=32");
  if (m) {
    check_roundtrip(ctx, m);
    ptc_module_destroy(m);
  }
}

/* Errors come back as NULL plus a located diagnostic, never a crash. */
static void test_errors(ptc_ctx *ctx) {
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_define *defs = NULL;
  int32_t n = 0;
  CHECK(ptc_defines_parse(ctx, "layers=2, dim = 64", &defs, &n) == 0);
  CHECK(n == 2);
  if (n == 2) {
    CHECK_STR(defs[0].name, "layers");
    CHECK_STR(defs[0].value, "2");
    CHECK_STR(defs[1].name, "dim");
    CHECK_STR(defs[1].value, "64");
    CHECK(defs[1].off == 10);
  }
  CHECK(ptc_defines_parse(ctx, "layers", &defs, &n) < 0);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "<command line>:1:7: error:") != NULL);
  CHECK(ptc_defines_parse(ctx, "a=1,", &defs, &n) < 0);
  free(defs);
  ptc_ctx_reset_errors(ctx);

  const char *src = "const dim = 8\ninput x : [2, dim]\nloss = mean(x)\n";
  ptc_define d = {.name = "heads", .value = "4", .text = "heads=4", .off = 0};
  ptc_module *m = ptc_frontend_compile(ctx, "t.ptg", src, strlen(src), &d, 1);
  CHECK(m == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "its constants are: dim") != NULL);
  ptc_ctx_reset_errors(ctx);

  d.name = "dim";
  d.value = "1e";
  d.text = "dim=1e";
  m = ptc_frontend_compile(ctx, "t.ptg", src, strlen(src), &d, 1);
  CHECK(m == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "<command line>:1:5: error: invalid "
               "value '1e'") != NULL);
  ptc_ctx_reset_errors(ctx);

  d.value = "16";
  m = ptc_frontend_compile(ctx, "t.ptg", src, strlen(src), &d, 1);
  CHECK_MSG(m != NULL, "%s", ptc_ctx_diag_text(ctx));
  if (m) {
    CHECK(m->funcs[0]->values[m->funcs[0]->args[0]].type.dims[1] == 16);
    ptc_module_destroy(m);
  }

  /* small limits are honoured, and the text need not be NUL-terminated */
  ptc_frontend_limits lim;
  ptc_frontend_default_limits(&lim);
  lim.max_ops = 10;
  const char *loop = "input x : [2]\nrepeat 20 {\n  x = x + 1\n}\nloss = mean(x)\nXX";
  m = ptc_frontend_compile_limited(ctx, "t.ptg", loop, strlen(loop) - 2, NULL,
                                   0, &lim);
  CHECK(m == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "t.ptg:2:1: error: this repeat would "
               "unroll to more than 10 ops") != NULL);
  ptc_ctx_reset_errors(ctx);
  ptc_ctx_set_diag_capture(ctx, false);
}

int main(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  test_mlp(ctx);
  test_gpt2(ctx);
  test_llama(ctx);
  test_errors(ctx);
  ptc_ctx_destroy(ctx);
  return test_report("test_models");
}
