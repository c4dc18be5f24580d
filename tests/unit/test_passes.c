/* test_passes.c -- unit tests of the pass manager and the first passes:
 * pipeline parsing and its errors, pass options, cse, dce and canonicalize
 * on modules built through the API, and the instrumentation (dumps, dump
 * files, failure reports naming the pass, timing). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"

/* ---- helpers -------------------------------------------------------------- */

static ptc_ctx *quiet_ctx(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  return ctx;
}

static bool diag_has(ptc_ctx *ctx, const char *needle) {
  const char *t = ptc_ctx_diag_text(ctx);
  return t && strstr(t, needle) != NULL;
}

static ptc_module *parse(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "test.ptir", text, strlen(text));
  CHECK_MSG(m != NULL, "parse failed: %s", ptc_ctx_diag_text(ctx));
  return m;
}

/* The module's text, heap (caller frees). */
static char *print(const ptc_module *m) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_print_module(&b, m);
  return b.data;
}

static int run_pipeline(ptc_module *m, const char *text) {
  ptc_pipeline *p = ptc_pipeline_parse(m->ctx, text);
  CHECK_MSG(p != NULL, "pipeline '%s': %s", text, ptc_ctx_diag_text(m->ctx));
  if (!p) return -1;
  int rc = ptc_pipeline_run(m, p, NULL);
  ptc_pipeline_destroy(p);
  return rc;
}

static int count_ops(const ptc_func *f, ptc_opcode code) {
  int n = 0;
  for (int32_t i = 0; i < f->nops; i++) n += f->ops[i].code == code;
  return n;
}

static const ptc_type f32_84 = {PTC_DTYPE_F32, 2, {8, 4}};
static const ptc_type f32_48 = {PTC_DTYPE_F32, 2, {4, 8}};
static const ptc_type f32_scalar = {PTC_DTYPE_F32, 0, {0}};

static int32_t constant(ptc_func *f, double v, const ptc_type *t) {
  ptc_attr a = ptc_attr_float("value", v);
  ptc_build_args args = {.code = PTC_OP_CONSTANT, .nattr = 1, .attrs = &a,
                         .ngiven = 1, .given = t};
  int32_t idx = ptc_build(f, &args);
  PTC_ASSERT(idx >= 0);
  return f->ops[idx].out[0];
}

static int32_t unary(ptc_func *f, ptc_opcode code, int32_t x) {
  int32_t v = ptc_build1(f, code, &x, 1, NULL, 0, ptc_loc_unknown);
  PTC_ASSERT(v >= 0);
  return v;
}

static int32_t binary(ptc_func *f, ptc_opcode code, int32_t a, int32_t b) {
  int32_t in[2] = {a, b};
  int32_t v = ptc_build1(f, code, in, 2, NULL, 0, ptc_loc_unknown);
  PTC_ASSERT(v >= 0);
  return v;
}

static int32_t transpose(ptc_func *f, int32_t x, const int64_t *perm, int32_t n) {
  ptc_attr a = ptc_attr_ints("perm", perm, n);
  int32_t v = ptc_build1(f, PTC_OP_TRANSPOSE, &x, 1, &a, 1, ptc_loc_unknown);
  PTC_ASSERT(v >= 0);
  return v;
}

static void ret(ptc_func *f, const int32_t *vals, int32_t n) {
  ptc_build_args a = {.code = PTC_OP_RETURN, .nin = n, .in = vals};
  PTC_ASSERT(ptc_build(f, &a) >= 0);
  for (int32_t i = 0; i < n; i++)
    ptc_func_add_result(f, &f->values[vals[i]].type, NULL);
}

/* ---- pipelines -------------------------------------------------------------- */

static void test_pipeline_parse(void) {
  ptc_ctx *ctx = quiet_ctx();
  static const struct {
    const char *in, *canon;
  } ok[] = {
      {"canonicalize,cse,dce", "canonicalize,cse,dce"},
      {" cse , dce ", "cse,dce"},
      {"canonicalize{max-iterations=4}", "canonicalize{max-iterations=4}"},
      {"canonicalize{ max-iterations=4 },cse", "canonicalize{max-iterations=4},cse"},
      {"canonicalize{}", "canonicalize"},
      {"", ""},
      {"dce,dce", "dce,dce"},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(ok); i++) {
    ptc_pipeline *p = ptc_pipeline_parse(ctx, ok[i].in);
    CHECK_MSG(p != NULL, "'%s' rejected: %s", ok[i].in, ptc_ctx_diag_text(ctx));
    if (!p) continue;
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_pipeline_print(&b, p);
    CHECK_STR(b.len ? b.data : "", ok[i].canon);
    ptc_buf_fini(&b);
    ptc_pipeline_destroy(p);
  }
  CHECK(ptc_ctx_error_count(ctx) == 0);

  /* The default pipeline parses, and every pass in it is registered. */
  ptc_pipeline *p = ptc_pipeline_parse(ctx, ptc_default_pipeline());
  CHECK(p != NULL && p->n >= 3);
  if (p) {
    CHECK(ptc_pass_opt_int(&p->entries[0].opts, "max-iterations") == 10);
    CHECK(!p->entries[0].opts.given[0]);
  }
  ptc_pipeline_destroy(p);

  static const struct {
    const char *in, *msg;
  } bad[] = {
      {"cse,nope", "<command line>:1:5: error: unknown pass 'nope'; known passes: "
                   "canonicalize, cse, dce"},
      {"cse,", "<command line>:1:5: error: expected a pass name"},
      {",cse", "<command line>:1:1: error: expected a pass name, found ','"},
      {"cse dce", "<command line>:1:5: error: expected ',' between passes"},
      {"canonicalize{max-iterations=-1}", "expects an integer in [1, 1000000], got '-1'"},
      {"canonicalize{max-iterations=99999999999999999999}", "got '99999999999999999999'"},
      {"canonicalize{max-iterations=}", "got ''"},
      {"canonicalize{bogus=1}", "unknown option 'bogus' for pass 'canonicalize'"},
      {"canonicalize{max-iterations=1", "unterminated '{'"},
      {"dce{x}", "unknown option 'x' for pass 'dce'; it takes no options"},
      {"canonicalize{=3}", "expected an option name or '}'"},
  };
  for (int i = 0; i < PTC_ARRAY_LEN(bad); i++) {
    ptc_ctx_reset_errors(ctx);
    ptc_ctx_destroy(ctx);
    ctx = quiet_ctx();
    CHECK_MSG(ptc_pipeline_parse(ctx, bad[i].in) == NULL, "'%s' accepted", bad[i].in);
    CHECK_MSG(diag_has(ctx, bad[i].msg), "'%s': got\n%s\nwant\n%s", bad[i].in,
              ptc_ctx_diag_text(ctx), bad[i].msg);
  }

  ptc_ctx_destroy(ctx);
  ctx = quiet_ctx();
  CHECK(ptc_pass_names_check(ctx, "--print-ir-after", "cse,dce") == 0);
  CHECK(ptc_pass_names_check(ctx, "--print-ir-after", "cse,,dce") != 0);
  CHECK(diag_has(ctx, "expected a pass name"));
  CHECK(ptc_pass_names_check(ctx, "--print-ir-before", "nopass") != 0);
  CHECK(diag_has(ctx, "<command line>:1:19: error: --print-ir-before: unknown pass 'nopass'"));
  ptc_ctx_destroy(ctx);
}

static void test_registry(void) {
  int32_t n;
  const ptc_pass_info *const *r = ptc_pass_registry(&n);
  CHECK(n >= 3);
  for (int32_t i = 0; i < n; i++) {
    CHECK(r[i]->name && r[i]->summary && r[i]->run);
    CHECK(r[i]->nopts >= 0 && r[i]->nopts <= PTC_PASS_MAX_OPTS);
    CHECK(ptc_pass_find(r[i]->name, strlen(r[i]->name)) == r[i]);
    for (int32_t j = 0; j < i; j++) CHECK(strcmp(r[i]->name, r[j]->name) != 0);
  }
  CHECK(ptc_pass_find("cs", 2) == NULL);
  CHECK(ptc_pass_find("csee", 4) == NULL);
}

/* ---- cse ------------------------------------------------------------------ */

static void test_cse(void) {
  ptc_ctx *ctx = quiet_ctx();
  ptc_module *m = ptc_module_create(ctx, "t");
  ptc_func *f = ptc_module_add_func(m, "f", ptc_loc_unknown);
  int32_t x = ptc_func_add_arg(f, "x", &f32_84, NULL);
  int32_t e1 = unary(f, PTC_OP_EXP, x);
  int32_t e2 = unary(f, PTC_OP_EXP, x);
  int32_t t1 = unary(f, PTC_OP_TANH, e1);
  int32_t t2 = unary(f, PTC_OP_TANH, e2); /* equal once the exps merge */
  int32_t c1 = constant(f, 2.0, &f32_scalar);
  int32_t c2 = constant(f, 2.0, &f32_scalar);
  int32_t c3 = constant(f, 3.0, &f32_scalar);
  int32_t s = binary(f, PTC_OP_SUB, t1, t2);
  int32_t a = binary(f, PTC_OP_MUL, s, c1);
  int32_t b = binary(f, PTC_OP_MUL, a, c2);
  int32_t c = binary(f, PTC_OP_MUL, b, c3);
  ret(f, &c, 1);
  CHECK(ptc_verify_module(m) == 0);

  ptc_pipeline *p = ptc_pipeline_parse(ctx, "cse");
  bool changed = false;
  CHECK(ptc_pass_cse.run(m, &p->entries[0].opts, &changed) == 0);
  CHECK(changed);
  CHECK(ptc_verify_module(m) == 0);
  CHECK(count_ops(f, PTC_OP_EXP) == 1);
  CHECK(count_ops(f, PTC_OP_TANH) == 1);
  CHECK(count_ops(f, PTC_OP_CONSTANT) == 2);
  CHECK(count_ops(f, PTC_OP_MUL) == 3);
  /* The sub now reads the same tanh twice. */
  for (int32_t i = 0; i < f->nops; i++)
    if (f->ops[i].code == PTC_OP_SUB) CHECK(f->ops[i].in[0] == f->ops[i].in[1]);

  /* A second run finds nothing. */
  changed = false;
  CHECK(ptc_pass_cse.run(m, &p->entries[0].opts, &changed) == 0);
  CHECK(!changed);
  ptc_pipeline_destroy(p);
  ptc_module_destroy(m);

  /* Collectives are never merged. */
  m = parse(ctx,
            "module @c mesh<tp=2> {\n"
            "  func @f(%x: f32[4] partial<tp>) -> f32[4] {\n"
            "    %0 = all_reduce %x {axis = tp, op = sum} : f32[4]\n"
            "    %1 = all_reduce %x {axis = tp, op = sum} : f32[4]\n"
            "    %2 = add %0, %1 : f32[4]\n"
            "    return %2\n"
            "  }\n"
            "}\n");
  if (m) {
    CHECK(run_pipeline(m, "cse") == 0);
    CHECK(count_ops(m->funcs[0], PTC_OP_ALL_REDUCE) == 2);
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

/* ---- dce ------------------------------------------------------------------ */

static void test_dce(void) {
  ptc_ctx *ctx = quiet_ctx();
  ptc_module *m = ptc_module_create(ctx, "t");
  ptc_func *f = ptc_module_add_func(m, "f", ptc_loc_unknown);
  int32_t x = ptc_func_add_arg(f, "x", &f32_84, NULL);
  int32_t d1 = unary(f, PTC_OP_EXP, x); /* dead chain: exp -> tanh -> neg */
  int32_t d2 = unary(f, PTC_OP_TANH, d1);
  (void)unary(f, PTC_OP_NEG, d2);
  int32_t live = unary(f, PTC_OP_RELU, x);
  (void)constant(f, 1.0, &f32_scalar);
  ret(f, &live, 1);

  int32_t before = f->nops;
  CHECK(ptc_dce_func(f) == 4);
  CHECK(f->nops == before - 4);
  CHECK(f->nops == 2 && f->ops[0].code == PTC_OP_RELU && f->ops[1].code == PTC_OP_RETURN);
  CHECK(ptc_verify_module(m) == 0);
  CHECK(ptc_dce_func(f) == 0);
  ptc_module_destroy(m);

  /* Sends stay, and so does what they send. */
  m = parse(ctx,
            "module @s mesh<pp=2> {\n"
            "  func @f(%x: f32[4]) -> f32[4] {\n"
            "    %0 = exp %x : f32[4]\n"
            "    send %0 {peer = 1}\n"
            "    %1 = recv {peer = 1} : f32[4]\n"
            "    return %x\n"
            "  }\n"
            "}\n");
  if (m) {
    bool changed = false;
    CHECK(ptc_pass_dce.run(m, NULL, &changed) == 0);
    CHECK(!changed);
    CHECK(m->funcs[0]->nops == 4);
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

/* ---- canonicalize ------------------------------------------------------- */

static void test_canonicalize(void) {
  ptc_ctx *ctx = quiet_ctx();
  ptc_module *m = ptc_module_create(ctx, "t");
  ptc_func *f = ptc_module_add_func(m, "f", ptc_loc_unknown);
  int32_t x = ptc_func_add_arg(f, "x", &f32_84, NULL);
  int32_t zero = constant(f, 0.0, &f32_scalar);
  int32_t one = constant(f, 1.0, &f32_scalar);
  int32_t a = binary(f, PTC_OP_ADD, x, zero);   /* x */
  int32_t b = binary(f, PTC_OP_MUL, one, a);    /* x */
  static const int64_t swap[2] = {1, 0};
  int32_t t1 = transpose(f, b, swap, 2);        /* [4,8] */
  int32_t t2 = transpose(f, t1, swap, 2);       /* x */
  int32_t two = constant(f, 2.0, &f32_scalar);
  int32_t three = constant(f, 3.0, &f32_scalar);
  int32_t six = binary(f, PTC_OP_MUL, two, three);
  int32_t out = binary(f, PTC_OP_MUL, t2, six);
  ret(f, &out, 1);
  CHECK(f->values[t1].type.dims[0] == 4);
  CHECK(ptc_verify_module(m) == 0);

  CHECK(run_pipeline(m, "canonicalize") == 0);
  char *text = print(m);
  CHECK_STR(text,
            "module @t {\n"
            "  func @f(%x: f32[8,4]) -> f32[8,4] {\n"
            "    %0 = constant {value = 6.0} : f32[]\n"
            "    %1 = mul %x, %0 : f32[8,4]\n"
            "    return %1\n"
            "  }\n"
            "}\n");
  free(text);
  ptc_module_destroy(m);

  /* max-iterations=1 still reaches these rewrites (they chain forward), and
   * a second run changes nothing. */
  m = parse(ctx,
            "module @r {\n"
            "  func @f(%x: f32[2,3,4]) -> f32[4,6] {\n"
            "    %0 = reshape %x : f32[24]\n"
            "    %1 = reshape %0 : f32[6,4]\n"
            "    %2 = transpose %1 {perm = [1, 0]} : f32[4,6]\n"
            "    %3 = transpose %2 {perm = [0, 1]} : f32[4,6]\n"
            "    return %3\n"
            "  }\n"
            "}\n");
  if (m) {
    CHECK(run_pipeline(m, "canonicalize{max-iterations=1}") == 0);
    ptc_func *g = m->funcs[0];
    CHECK(count_ops(g, PTC_OP_RESHAPE) == 1 && count_ops(g, PTC_OP_TRANSPOSE) == 1);
    CHECK(g->nops == 3);
    ptc_pipeline *p = ptc_pipeline_parse(ctx, "canonicalize");
    bool changed = false;
    CHECK(ptc_pass_canonicalize.run(m, &p->entries[0].opts, &changed) == 0);
    CHECK(!changed);
    ptc_pipeline_destroy(p);
    ptc_module_destroy(m);
  }

  /* A stale result type (as a buggy pass could leave) is caught by the
   * shape check, at the op's location. */
  m = ptc_module_create(ctx, "t");
  f = ptc_module_add_func(m, "f", ptc_loc_unknown);
  x = ptc_func_add_arg(f, "x", &f32_84, NULL);
  int32_t e = unary(f, PTC_OP_EXP, x);
  ret(f, &e, 1);
  f->values[e].type = f32_48;
  f->result_types[0] = f32_48;
  ptc_pipeline *p = ptc_pipeline_parse(ctx, "canonicalize");
  bool changed = false;
  CHECK(ptc_pass_canonicalize.run(m, &p->entries[0].opts, &changed) == -1);
  CHECK(diag_has(ctx, "'exp' result 0 has type f32[4,8] but its operands give f32[8,4]"));
  ptc_pipeline_destroy(p);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- the pass manager ----------------------------------------------------- */

static int failing_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  ptc_error(m->ctx, ptc_loc_unknown, "the test pass gives up");
  return -1;
}
static int silent_failing_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  return -1;
}
/* Breaks an invariant: the first op's result gets a wrong type. */
static int breaking_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  ptc_func *f = m->funcs[0];
  f->values[f->ops[0].out[0]].type.dims[0] += 1;
  *changed = true;
  return 0;
}
/* Claims a change without making one. */
static int liar_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  *changed = true;
  return 0;
}

static const ptc_pass_info failing_pass = {"fail-test", "fails", NULL, 0, failing_run};
static const ptc_pass_info silent_pass = {"silent-test", "fails", NULL, 0,
                                          silent_failing_run};
static const ptc_pass_info breaking_pass = {"break-test", "breaks", NULL, 0, breaking_run};
static const ptc_pass_info liar_pass = {"liar-test", "lies", NULL, 0, liar_run};

static const char small[] =
    "module @small {\n"
    "  func @f(%x: f32[4]) -> f32[4] {\n"
    "    %0 = exp %x : f32[4]\n"
    "    %1 = exp %x : f32[4]\n"
    "    %2 = add %0, %1 : f32[4]\n"
    "    return %2\n"
    "  }\n"
    "}\n";

static ptc_pipeline *one_pass(const ptc_pass_info *pass) {
  ptc_pipeline *p = ptc_xcalloc(1, sizeof *p);
  p->n = 1;
  p->entries = ptc_xcalloc(1, sizeof *p->entries);
  p->entries[0].pass = pass;
  p->entries[0].opts.pass = pass;
  return p;
}

/* Runs p over a fresh `small` with cfg, capturing the dump stream. */
static char *run_captured(ptc_ctx *ctx, ptc_pipeline *p, ptc_pm_config *cfg,
                          int *rc) {
  char *out = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&out, &len);
  PTC_ASSERT(f != NULL);
  cfg->dump_stream = f;
  cfg->timing_stream = f;
  ptc_module *m = parse(ctx, small);
  *rc = m ? ptc_pipeline_run(m, p, cfg) : -1;
  fclose(f);
  ptc_module_destroy(m);
  return out;
}

static void test_manager(void) {
  ptc_ctx *ctx = quiet_ctx();
  ptc_pm_config cfg;
  int rc;

  /* A failing pass: -1, and the after-failure dump with its banner. */
  ptc_pipeline *p = one_pass(&failing_pass);
  ptc_pm_config_init(&cfg);
  cfg.print_after_failure = true;
  cfg.print_after_all = true;
  char *out = run_captured(ctx, p, &cfg, &rc);
  CHECK(rc == -1);
  CHECK(diag_has(ctx, "the test pass gives up"));
  CHECK_MSG(strncmp(out, "// -----// IR Dump After fail-test Failed //----- //\nmodule @small {",
                    67) == 0, "%s", out);
  CHECK(strstr(out, "IR Dump After fail-test //") == NULL);
  free(out);
  ptc_pipeline_destroy(p);

  /* A pass that fails without saying why still gets a message. */
  p = one_pass(&silent_pass);
  ptc_pm_config_init(&cfg);
  out = run_captured(ctx, p, &cfg, &rc);
  CHECK(rc == -1);
  CHECK(diag_has(ctx, "pass 'silent-test' failed"));
  CHECK(out[0] == '\0');
  free(out);
  ptc_pipeline_destroy(p);

  /* Invalid IR after a pass: the verifier's message, then the pass named. */
  p = one_pass(&breaking_pass);
  ptc_pm_config_init(&cfg);
  cfg.print_after_failure = true;
  out = run_captured(ctx, p, &cfg, &rc);
  CHECK(rc == -1);
  CHECK(diag_has(ctx, "the IR is invalid after pass 'break-test'"));
  CHECK(strstr(out, "IR Dump After break-test Failed") != NULL);
  free(out);
  /* ... which --verify-each=false lets through. */
  cfg.verify_each = false;
  out = run_captured(ctx, p, &cfg, &rc);
  CHECK(rc == 0);
  free(out);
  ptc_pipeline_destroy(p);

  /* after-change compares the text, not the pass's claim. */
  p = one_pass(&liar_pass);
  ptc_pm_config_init(&cfg);
  cfg.print_after_change = true;
  out = run_captured(ctx, p, &cfg, &rc);
  CHECK(rc == 0 && out[0] == '\0');
  free(out);
  ptc_pipeline_destroy(p);

  /* Before/after by name, and the timing table. */
  p = ptc_pipeline_parse(ctx, "cse,dce");
  ptc_pm_config_init(&cfg);
  cfg.print_before = "dce";
  cfg.print_after = "cse";
  cfg.time_passes = true;
  out = run_captured(ctx, p, &cfg, &rc);
  CHECK(rc == 0);
  const char *a = strstr(out, "// -----// IR Dump After cse //----- //\n");
  const char *b = strstr(out, "// -----// IR Dump Before dce //----- //\n");
  CHECK(a && b && a < b);
  CHECK(strstr(out, "IR Dump Before cse") == NULL && strstr(out, "IR Dump After dce") == NULL);
  CHECK(strstr(out, "}\n\n// -----// IR Dump Before dce") != NULL); /* blank line */
  CHECK(strstr(out, "Pass execution timing report") != NULL);
  CHECK(strstr(out, "(100.0%)  Total\n") != NULL);
  free(out);
  ptc_pipeline_destroy(p);
  ptc_ctx_destroy(ctx);
}

static char *slurp(const char *path) {
  size_t len;
  return ptc_slurp(path, &len);
}

static void test_dump_dir(void) {
  ptc_ctx *ctx = quiet_ctx();
  char dir[] = "/tmp/ptc-test-passes-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char sub[sizeof dir + 16];
  snprintf(sub, sizeof sub, "%s/a/b", dir);

  ptc_module *m = parse(ctx, small);
  ptc_pipeline *p = ptc_pipeline_parse(ctx, "canonicalize,cse,dce");
  ptc_pm_config cfg;
  ptc_pm_config_init(&cfg);
  cfg.dump_dir = sub; /* parents are made too */
  CHECK(m && p && ptc_pipeline_run(m, p, &cfg) == 0);
  static const char *const names[] = {"00-input", "01-canonicalize", "02-cse", "03-dce"};
  char *last = NULL;
  for (int i = 0; i < PTC_ARRAY_LEN(names); i++) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.ptir", sub, names[i]);
    char *text = slurp(path);
    CHECK_MSG(text != NULL, "%s missing", path);
    if (!text) continue;
    /* Each file reads back and prints identically. */
    ptc_module *again = ptc_parse_module(ctx, path, text, strlen(text));
    CHECK_MSG(again != NULL, "%s does not parse: %s", path, ptc_ctx_diag_text(ctx));
    if (again) {
      char *re = print(again);
      CHECK_STR(re, text);
      free(re);
      ptc_module_destroy(again);
    }
    remove(path);
    free(last);
    last = text;
  }
  char *final = m ? print(m) : NULL;
  if (last && final) CHECK_STR(last, final);
  free(final);
  free(last);

  /* A dump directory that cannot be made is an error naming it. */
  char file[sizeof dir + 16];
  snprintf(file, sizeof file, "%s/file", dir);
  FILE *fp = fopen(file, "w");
  if (fp) fclose(fp);
  char bad[sizeof dir + 32];
  snprintf(bad, sizeof bad, "%s/file/x", dir);
  cfg.dump_dir = bad;
  CHECK(ptc_pipeline_run(m, p, &cfg) == -1);
  CHECK(diag_has(ctx, "cannot create directory"));
  CHECK(diag_has(ctx, "/file/x"));

  /* Atomic writes: no temporary left behind on success or failure. */
  char out[sizeof dir + 16];
  snprintf(out, sizeof out, "%s/out.txt", dir);
  CHECK(ptc_write_file_atomic(ctx, out, "hello\n", 6) == 0);
  char *text = slurp(out);
  CHECK(text && strcmp(text, "hello\n") == 0);
  free(text);
  char tmp[sizeof dir + 32];
  snprintf(tmp, sizeof tmp, "%s.tmp", out);
  CHECK(access(tmp, F_OK) != 0);
  char nodir[sizeof dir + 32];
  snprintf(nodir, sizeof nodir, "%s/no/out.txt", dir);
  CHECK(ptc_write_file_atomic(ctx, nodir, "x", 1) == -1);
  CHECK(diag_has(ctx, "/no/out.txt': No such file or directory"));
  /* Writing over a directory fails and leaves no temporary. */
  char asdir[sizeof dir + 16];
  snprintf(asdir, sizeof asdir, "%s/a", dir);
  CHECK(ptc_write_file_atomic(ctx, asdir, "x", 1) == -1);
  snprintf(tmp, sizeof tmp, "%s.tmp", asdir);
  CHECK(access(tmp, F_OK) != 0);

  remove(out);
  remove(file);
  rmdir(sub);
  rmdir(asdir);
  rmdir(dir);
  ptc_pipeline_destroy(p);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}


/* ---- differential test: random programs evaluate the same after passes ---- */

typedef struct rng {
  uint64_t s;
} rng;

static uint32_t rnd(rng *r, uint32_t n) {
  r->s = r->s * 6364136223846793005ull + 1442695040888963407ull;
  return (uint32_t)(r->s >> 33) % n;
}

/* Builds a random function over f32/f64 from the ops canonicalize, cse and
 * dce know about, with plenty of constants 0 and 1 and repeated
 * subexpressions.  Builds the shape rule rejects are simply skipped. */
static void random_func(ptc_module *m, rng *r) {
  ptc_func *f = ptc_module_add_func(m, "f", ptc_loc_unknown);
  const ptc_type t234 = {PTC_DTYPE_F32, 3, {2, 3, 4}};
  int32_t pool[256];
  int32_t n = 0;
  pool[n++] = ptc_func_add_arg(f, "x", &t234, NULL);
  pool[n++] = ptc_func_add_arg(f, "y", &t234, NULL);
  static const double consts[] = {0.0, 1.0, 2.0, 0.5, -1.0, 3.0};
  static const ptc_opcode bins[] = {PTC_OP_ADD, PTC_OP_SUB, PTC_OP_MUL, PTC_OP_DIV,
                                    PTC_OP_MAXIMUM};
  static const ptc_opcode uns[] = {PTC_OP_NEG, PTC_OP_RELU, PTC_OP_TANH, PTC_OP_EXP,
                                   PTC_OP_SQRT};
  int nops = 8 + (int)rnd(r, 24);
  for (int k = 0; k < nops && n < 250; k++) {
    int32_t v = pool[n - 1 - (int32_t)rnd(r, (uint32_t)(n < 6 ? n : 6))];
    const ptc_type *vt = &f->values[v].type;
    int32_t out = -1;
    switch (rnd(r, 9)) {
    case 0: { /* a constant: scalar, or of v's type */
      ptc_type ct = rnd(r, 2) ? f32_scalar : *vt;
      ct.dtype = vt->dtype;
      out = constant(f, consts[rnd(r, PTC_ARRAY_LEN(consts))], &ct);
      break;
    }
    case 1:
    case 2: { /* binary with another value or a constant */
      int32_t w = pool[rnd(r, (uint32_t)n)];
      int32_t in[2] = {v, w};
      if (rnd(r, 2)) { in[0] = w; in[1] = v; }
      out = ptc_build1(f, bins[rnd(r, PTC_ARRAY_LEN(bins))], in, 2, NULL, 0,
                       ptc_loc_unknown);
      break;
    }
    case 3:
      out = ptc_build1(f, uns[rnd(r, PTC_ARRAY_LEN(uns))], &v, 1, NULL, 0,
                       ptc_loc_unknown);
      break;
    case 4: { /* transpose by a random permutation (often the identity) */
      int64_t perm[PTC_MAX_RANK];
      for (int32_t d = 0; d < vt->rank; d++) perm[d] = d;
      for (int32_t d = vt->rank - 1; d > 0 && rnd(r, 3); d--) {
        int32_t e = (int32_t)rnd(r, (uint32_t)d + 1);
        int64_t t = perm[d]; perm[d] = perm[e]; perm[e] = t;
      }
      out = transpose(f, v, perm, vt->rank);
      break;
    }
    case 5: { /* reshape: flatten, back to [2,3,4], or to v's own type */
      ptc_type rt = *vt;
      uint32_t c = rnd(r, 3);
      if (c == 0) {
        rt.rank = 1;
        rt.dims[0] = ptc_type_numel(vt);
      } else if (c == 1 && ptc_type_numel(vt) == 24) {
        rt = t234;
        rt.dtype = vt->dtype;
      }
      ptc_build_args a = {.code = PTC_OP_RESHAPE, .nin = 1, .in = &v, .ngiven = 1,
                          .given = &rt};
      int32_t idx = ptc_build(f, &a);
      if (idx >= 0) out = f->ops[idx].out[0];
      break;
    }
    case 6: { /* cast to f32 or f64 */
      ptc_attr a = ptc_attr_dtype("to", rnd(r, 3) ? vt->dtype : PTC_DTYPE_F64);
      out = ptc_build1(f, PTC_OP_CAST, &v, 1, &a, 1, ptc_loc_unknown);
      break;
    }
    case 7: { /* slice: the whole axis or a part */
      if (vt->rank == 0) break;
      int64_t axis = rnd(r, (uint32_t)vt->rank), len = vt->dims[axis];
      int64_t start = rnd(r, 2) ? 0 : rnd(r, (uint32_t)len);
      ptc_attr a[3] = {ptc_attr_int("axis", axis), ptc_attr_int("start", start),
                       ptc_attr_int("end", len)};
      out = ptc_build1(f, PTC_OP_SLICE, &v, 1, a, 3, ptc_loc_unknown);
      break;
    }
    case 8: { /* broadcast_to v's type (no-op) or up to a new leading dim */
      ptc_type bt = *vt;
      if (rnd(r, 2) && bt.rank < PTC_MAX_RANK) {
        memmove(&bt.dims[1], &bt.dims[0], (size_t)bt.rank * sizeof bt.dims[0]);
        bt.dims[0] = 2;
        bt.rank++;
      }
      ptc_build_args a = {.code = PTC_OP_BROADCAST_TO, .nin = 1, .in = &v,
                          .ngiven = 1, .given = &bt};
      int32_t idx = ptc_build(f, &a);
      if (idx >= 0) out = f->ops[idx].out[0];
      break;
    }
    }
    if (out >= 0) pool[n++] = out;
  }
  int32_t rets[3] = {pool[n - 1], pool[rnd(r, (uint32_t)n)], pool[n / 2]};
  ret(f, rets, 3);
}

static bool close_enough(double a, double b) {
  if (a != a || b != b) return a != a && b != b;
  if (a == b) return true;
  return fabs(a - b) <= 1e-6 * fmax(fabs(a), fabs(b));
}

static void test_random_programs(void) {
  ptc_ctx *ctx = quiet_ctx();
  rng r = {12345};
  int compared = 0, simplified = 0;
  FILE *sink = fopen("/dev/null", "w");
  PTC_ASSERT(sink != NULL);
  for (int iter = 0; iter < 400; iter++) {
    /* The same program twice (same generator state): one stays as built. */
    ptc_module *m = ptc_module_create(ctx, "r");
    ptc_module *opt = ptc_module_create(ctx, "r");
    rng r2 = r;
    random_func(m, &r);
    random_func(opt, &r2);
    ptc_ctx_reset_errors(ctx); /* builds the shape rules refused */
    CHECK(ptc_verify_module(m) == 0);
    /* With after-change on, the manager also checks each pass's *changed
     * against the printed text (it aborts on a pass that hides a change). */
    ptc_pipeline *p =
        ptc_pipeline_parse(ctx, iter % 2 ? "canonicalize,cse,dce" : "cse,canonicalize");
    ptc_pm_config cfg;
    ptc_pm_config_init(&cfg);
    cfg.print_after_change = true;
    cfg.dump_stream = sink;
    int rc = ptc_pipeline_run(opt, p, &cfg);
    ptc_pipeline_destroy(p);
    CHECK_MSG(rc == 0, "iteration %d: %s", iter, ptc_ctx_diag_text(ctx));
    ptc_func *f0 = m->funcs[0], *f1 = opt->funcs[0];
    if (f1->nops < f0->nops) simplified++;
    ptc_tensor args[2];
    for (int i = 0; i < 2; i++) {
      args[i] = ptc_tensor_new(&f0->values[f0->args[i]].type);
      ptc_tensor_fill_random(&args[i], (uint64_t)(iter * 2 + i), -2.0, 2.0);
    }
    ptc_tensor res0[3], res1[3];
    int e0 = ptc_eval_func(f0, args, NULL, res0);
    int e1 = ptc_eval_func(f1, args, NULL, res1);
    CHECK(e0 == 0 && e1 == 0);
    for (int k = 0; e0 == 0 && e1 == 0 && k < 3; k++) {
      CHECK(ptc_type_eq(&res0[k].type, &res1[k].type));
      int64_t numel = ptc_type_numel(&res0[k].type);
      int bad = 0;
      for (int64_t i = 0; i < numel && bad < 3; i++)
        if (!close_enough(res0[k].data[i], res1[k].data[i])) bad++;
      CHECK_MSG(bad == 0, "iteration %d result %d differs after the passes", iter, k);
      if (bad) {
        char *a = print(m), *b = print(opt);
        fprintf(stderr, "before:\n%s\nafter:\n%s\n", a, b);
        free(a);
        free(b);
      }
      compared++;
    }
    for (int k = 0; e0 == 0 && k < 3; k++) ptc_tensor_free(&res0[k]);
    for (int k = 0; e1 == 0 && k < 3; k++) ptc_tensor_free(&res1[k]);
    for (int i = 0; i < 2; i++) ptc_tensor_free(&args[i]);
    ptc_module_destroy(opt);
    ptc_module_destroy(m);
  }
  fclose(sink);
  CHECK(compared > 1000);
  CHECK_MSG(simplified > 200, "only %d of 400 programs simplified", simplified);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  test_pipeline_parse();
  test_registry();
  test_cse();
  test_dce();
  test_canonicalize();
  test_manager();
  test_dump_dir();
  test_random_programs();
  return test_report("test_passes");
}
