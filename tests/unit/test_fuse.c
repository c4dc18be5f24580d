/* test_fuse.c -- the fuse pass and the group analysis (ir/group.c).
 *
 *  - GPT-2 (two tiny layers) through autodiff, optimizer and fuse: the
 *    groups a transformer step must get (bias + GELU, residual add +
 *    LayerNorm, the whole cross-entropy, GELU's gradient with the bias
 *    gradient, each AdamW update with its clip scaling), no runtime op in
 *    a group, the pass adding nothing but attributes, and the groups
 *    round-tripping through the text form;
 *  - signatures of hand-written groups: kind, iteration shape, work,
 *    inputs in first-use order, outputs and how they combine, the level of
 *    each value;
 *  - what the analysis refuses, and why.
 */
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"

static ptc_ctx *quiet_ctx(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  return ctx;
}

static ptc_module *parse(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "t.ptir", text, strlen(text));
  CHECK_MSG(m != NULL, "%s", ptc_ctx_diag_text(ctx));
  return m;
}

static int run_pipeline(ptc_module *m, const char *pipeline) {
  ptc_pipeline *p = ptc_pipeline_parse(m->ctx, pipeline);
  int rc = p ? ptc_pipeline_run(m, p, NULL) : -1;
  ptc_pipeline_destroy(p);
  CHECK_MSG(rc == 0, "%s: %s", pipeline, ptc_ctx_diag_text(m->ctx));
  return rc;
}

/* The op defining value v. */
static const ptc_op *def(const ptc_func *f, int32_t v) {
  return f->values[v].kind == PTC_VALUE_OP ? &f->ops[f->values[v].def] : NULL;
}

static int def_code(const ptc_func *f, int32_t v) {
  const ptc_op *d = def(f, v);
  return d ? (int)d->code : -1;
}

static int64_t group_of_value(const ptc_func *f, int32_t v) {
  const ptc_op *d = def(f, v);
  return d ? ptc_op_group(d) : -1;
}

/* The text with every `group = N` attribute removed. */
static char *strip_groups(const char *s) {
  size_t n = strlen(s);
  char *o = malloc(n + 1), *w = o;
  for (size_t i = 0; i < n;) {
    if (strncmp(s + i, " {group = ", 10) == 0) { /* the only attribute */
      size_t j = i + 10;
      while (s[j] >= '0' && s[j] <= '9') j++;
      if (s[j] == '}') {
        i = j + 1;
        continue;
      }
    }
    if (strncmp(s + i, "group = ", 8) == 0) { /* first of several, sorted */
      size_t j = i + 8;
      while (s[j] >= '0' && s[j] <= '9') j++;
      if (s[j] == ',') {
        i = j + 2;
        continue;
      }
    }
    if (strncmp(s + i, ", group = ", 10) == 0) { /* after others */
      i += 10;
      while (s[i] >= '0' && s[i] <= '9') i++;
      continue;
    }
    *w++ = s[i++];
  }
  *w = 0;
  return o;
}

static void test_gpt2(void) {
  ptc_ctx *ctx = quiet_ctx();
  size_t len = 0;
  char *text = ptc_read_file(ctx, "models/gpt2.ptg", &len);
  CHECK(text != NULL);
  if (!text) return;
  const char *set = "layers=2,dim=16,heads=2,vocab=32,ctx=8,batch=2,seq=8";
  ptc_define *defs = NULL;
  int32_t ndefs = 0;
  CHECK(ptc_defines_parse(ctx, set, &defs, &ndefs) == 0);
  ptc_module *m = ptc_frontend_compile(ctx, "models/gpt2.ptg", text, len, defs, ndefs);
  CHECK_MSG(m != NULL, "%s", ptc_ctx_diag_text(ctx));
  free(defs);
  free(text);
  if (!m || run_pipeline(m, "canonicalize,cse,autodiff,optimizer") != 0) goto out;
  ptc_buf before, after;
  ptc_buf_init(&before);
  ptc_buf_init(&after);
  ptc_print_module(&before, m);
  if (run_pipeline(m, "fuse") != 0) goto out;
  ptc_print_module(&after, m);

  /* only attributes were added: no op moved, changed or vanished */
  char *stripped = strip_groups(after.data);
  CHECK_STR(stripped, before.data);
  free(stripped);
  /* the groups round-trip */
  ptc_module *back = ptc_parse_module(ctx, "back.ptir", after.data, after.len);
  CHECK_MSG(back != NULL, "%s", ptc_ctx_diag_text(ctx));
  if (back) {
    ptc_buf again;
    ptc_buf_init(&again);
    ptc_print_module(&again, back);
    CHECK_STR(again.data, after.data);
    ptc_buf_fini(&again);
    ptc_module_destroy(back);
  }

  ptc_func *f = ptc_module_find_func(m, "step");
  CHECK(f != NULL);
  int ngelu = 0, nln = 0, nce = 0, nggrad = 0, nadam = 0, nlngrad = 0, ngrouped = 0;
  for (int32_t i = 0; f && i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    int64_t g = ptc_op_group(op);
    ngrouped += g >= 0;
    switch (op->code) {
    case PTC_OP_GELU: /* bias + GELU */
      ngelu++;
      CHECK(g >= 0 && def_code(f, op->in[0]) == PTC_OP_ADD && group_of_value(f, op->in[0]) == g);
      break;
    case PTC_OP_LAYERNORM: /* (residual) add + LayerNorm */
      nln++;
      CHECK(g >= 0 && def_code(f, op->in[0]) == PTC_OP_ADD && group_of_value(f, op->in[0]) == g);
      break;
    case PTC_OP_CROSS_ENTROPY_GRAD: { /* with the loss over the same logits */
      nce++;
      const ptc_op *ce = NULL;
      for (int32_t k = 0; k < i; k++)
        if (f->ops[k].code == PTC_OP_CROSS_ENTROPY && f->ops[k].in[0] == op->in[1]) ce = &f->ops[k];
      CHECK(g >= 0 && ce && ptc_op_group(ce) == g);
      break;
    }
    case PTC_OP_GELU_GRAD: /* with the bias gradient's reduction right after */
      nggrad++;
      CHECK(g >= 0 && i + 1 < f->nops && f->ops[i + 1].code == PTC_OP_REDUCE_SUM &&
            f->ops[i + 1].in[0] == op->out[0] && ptc_op_group(&f->ops[i + 1]) == g);
      break;
    case PTC_OP_LAYERNORM_GRAD:
      nlngrad++;
      CHECK(g >= 0);
      break;
    case PTC_OP_ADAMW: /* with the clip scaling of its gradient */
      nadam++;
      CHECK(g >= 0 && def_code(f, op->in[1]) == PTC_OP_MUL && group_of_value(f, op->in[1]) == g);
      break;
    case PTC_OP_MATMUL: case PTC_OP_ATTENTION: case PTC_OP_ATTENTION_GRAD:
    case PTC_OP_EMBEDDING: case PTC_OP_EMBEDDING_GRAD: case PTC_OP_ASSIGN: case PTC_OP_RETURN:
    case PTC_OP_RESHAPE: case PTC_OP_SLICE: case PTC_OP_CONCAT:
      CHECK_MSG(g < 0, "'%s' in group %lld", ptc_opinfo_get(op->code)->name, (long long)g);
      break;
    default: break;
    }
  }
  CHECK(ngelu == 2 && nln == 5 && nce == 1 && nggrad == 2 && nlngrad == 5);
  CHECK(nadam == m->nparams / 3);
  CHECK_MSG(ngrouped * 2 > (f ? f->nops : 0), "%d of %d ops grouped", ngrouped, f ? f->nops : 0);

  /* every group has a signature; ids unique in the module */
  int64_t maxid = -1;
  for (int32_t i = 0; f && i < f->nops;) {
    if (ptc_op_group(&f->ops[i]) < 0) {
      i++;
      continue;
    }
    ptc_group_sig sig;
    CHECK(ptc_group_signature(f, i, &sig) == 0);
    CHECK(sig.id > maxid);
    maxid = sig.id;
    CHECK(sig.nout > 0 && sig.work > 0);
    i = sig.end;
    ptc_group_sig_fini(&sig);
  }
  ptc_buf_fini(&before);
  ptc_buf_fini(&after);
out:
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- signatures ---------------------------------------------------------------- */

static int32_t value_named(const ptc_func *f, const char *name) {
  for (int32_t v = 0; v < f->nvalues; v++)
    if (f->values[v].name && strcmp(f->values[v].name, name) == 0) return v;
  return -1;
}

static void test_signatures(void) {
  ptc_ctx *ctx = quiet_ctx();
  ptc_module *m = parse(
      ctx,
      "module @m {\n  param @g : f32[32]\n  param @b : f32[32]\n  param @w : f32[32,32]\n"
      "  func @f(%x: f32[4,8,32], %r: f32[4,8,32], %c: f32[], %t: i32[4,8]) -> "
      "(f32[4,8,32], f32[4,8,32], f32[], f32[4,8,1], f32[32]) {\n"
      "    %s = add %r, %x {group = 1} : f32[4,8,32]\n"
      "    %inner = mul %s, %c {group = 1} : f32[4,8,32]\n"
      "    %y = layernorm %inner, @g, @b {eps = 1e-05, group = 1} : f32[4,8,32]\n"
      "    %l = cross_entropy %y, %t {group = 1} : f32[]\n"
      "    %mx = reduce_max %y {axes = [2], keepdim = true, group = 1} : f32[4,8,1]\n"
      "    %e = exp %x {group = 2} : f32[4,8,32]\n"
      "    %bias = reduce_sum %e {axes = [0, 1], group = 2} : f32[32]\n"
      "    %z = matmul %s, @w : f32[4,8,32]\n"
      "    return %y, %z, %l, %mx, %bias\n  }\n}\n");
  if (!m) {
    ptc_ctx_destroy(ctx);
    return;
  }
  ptc_func *f = m->funcs[0];
  ptc_group_sig sig;
  CHECK(ptc_group_signature(f, 0, &sig) == 0);
  CHECK(sig.id == 1 && sig.first == 0 && sig.end == 5);
  CHECK(sig.kind == PTC_GROUP_ROWWISE && sig.row_len == 32 && sig.work == 32);
  CHECK(sig.iter.rank == 3 && sig.iter.dims[2] == 32);
  /* inputs by first use: %r, %x, %c, @g, @b, %t */
  int32_t want_in[6] = {value_named(f, "r"), value_named(f, "x"), value_named(f, "c"),
                        f->param_value[0], f->param_value[1], value_named(f, "t")};
  CHECK(sig.nin == 6);
  for (int i = 0; i < 6 && sig.nin == 6; i++) CHECK_MSG(sig.in[i] == want_in[i], "input %d", i);
  /* outputs: %s (read by the matmul), %y, %l (accumulated), %mx (per row) */
  int32_t s = value_named(f, "s"), y = value_named(f, "y"), l = value_named(f, "l"),
          mx = value_named(f, "mx"), inner = value_named(f, "inner");
  CHECK(sig.nout == 4);
  if (sig.nout == 4) {
    CHECK(sig.out[0] == s && sig.out[1] == y && sig.out[2] == l && sig.out[3] == mx);
    CHECK(sig.combine[0] == PTC_GROUP_STORE && sig.combine[2] == PTC_GROUP_SUM &&
          sig.combine[3] == PTC_GROUP_STORE);
  }
  CHECK(sig.level[s] == PTC_GROUP_ELEM && sig.level[inner] == PTC_GROUP_ELEM);
  CHECK(sig.level[l] == PTC_GROUP_ACC && sig.level[mx] == PTC_GROUP_ROW);
  CHECK(sig.level[value_named(f, "c")] == PTC_GROUP_SCALAR);
  CHECK(sig.level[value_named(f, "t")] == PTC_GROUP_ROW);
  CHECK(sig.flops > 0 && sig.bytes > 0);
  ptc_group_sig_fini(&sig);

  CHECK(ptc_group_signature(f, 5, &sig) == 0);
  CHECK(sig.kind == PTC_GROUP_ELEMENTWISE && sig.work == 4 * 8 * 32 && sig.row_len == 1);
  CHECK(sig.nin == 1 && sig.nout == 1 && sig.combine[0] == PTC_GROUP_SUM);
  CHECK(sig.out[0] == value_named(f, "bias")); /* %e is used only inside */
  ptc_group_sig_fini(&sig);

  char name[32];
  ptc_group_kernel_name(42, name, sizeof name);
  CHECK_STR(name, "ptc_k42");
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- refusals ------------------------------------------------------------------- */

typedef struct refusal {
  const char *body; /* ops of @f(%x: f32[64,16], %v: f32[16], %t: i32[64], %q: f32[16,16]) */
  const char *rets; /* its return list */
  const char *rtypes;
  int32_t first, end;
  const char *why; /* a piece of the reason */
} refusal;

static const refusal refusals[] = {
    {"%a = matmul %x, %x {transpose_b = true} : f32[64,64]\n", "%a", "f32[64,64]", 0, 1,
     "'matmul' cannot be part of a fused kernel"},
    {"%a = reduce_sum %x {axes = [0, 1]} : f32[]\n%b = mul %x, %a : f32[64,16]\n", "%b",
     "f32[64,16]", 0, 2, "'mul' operand 1 is a reduction across the group's work"},
    {"%a = exp %x : f32[64,16]\n%b = exp %v : f32[16]\n", "%a, %b", "f32[64,16], f32[16]", 0, 2,
     "'exp' result f32[16] is read after the group but is neither shaped"},
    {"%a = reduce_sum %x {axes = [0]} : f32[16]\n%b = exp %x : f32[64,16]\n", "%a, %b",
     "f32[16], f32[64,16]", 0, 2, NULL}, /* fine: 64x smaller */
    {"%a = exp %q : f32[16,16]\n%b = reduce_sum %a {axes = [1]} : f32[16]\n"
     "%c = mul %a, %b : f32[16,16]\n", "%c", "f32[16,16]", 0, 3,
     "'mul' operand 1 f32[16] is computed once per row, but read per element it needs a "
     "size-1 last dimension"},
    {"%a = reduce_sum %x {axes = [1]} : f32[64]\n%c = cast %t {to = f32} : f32[64]\n"
     "%d = add %a, %c : f32[64]\n", "%d", "f32[64]", 0, 3, NULL}, /* per-row arithmetic */
    {"%a = softmax %x {axis = 0} : f32[64,16]\n", "%a", "f32[64,16]", 0, 1,
     "'softmax' cannot be part of a fused kernel"},
    {"%c = cast %x {to = f64} : f64[64,16]\n", "%c", "f64[64,16]", 0, 1,
     "its dtypes are not f32"},
    {"%a = exp %x : f32[64,16]\n%l = cross_entropy %a, %t : f32[]\n%b = add %a, %l : f32[64,16]\n",
     "%b", "f32[64,16]", 0, 3, "'add' operand 1 is a reduction across the group's work"},
    {"%a = exp %v : f32[16]\n%l = layernorm %x, %a, %v {eps = 1e-05} : f32[64,16]\n", "%l",
     "f32[64,16]", 0, 2, NULL}, /* a gain computed in the group */
};

static void test_refusals(void) {
  for (int i = 0; i < PTC_ARRAY_LEN(refusals); i++) {
    const refusal *r = &refusals[i];
    char text[2048];
    snprintf(text, sizeof text,
             "module @m {\n  func @f(%%x: f32[64,16], %%v: f32[16], %%t: i32[64], %%q: f32[16,16]) "
             "-> (%s) {\n"
             "%s    return %s\n  }\n}\n",
             r->rtypes, r->body, r->rets);
    ptc_ctx *ctx = quiet_ctx();
    ptc_module *m = parse(ctx, text);
    if (m) {
      ptc_group_sig sig;
      char why[512];
      int32_t bad = -1;
      int rc = ptc_group_analyze(m->funcs[0], r->first, r->end, NULL, &sig, why, sizeof why, &bad);
      if (r->why) {
        CHECK_MSG(rc < 0, "case %d accepted", i);
        CHECK_MSG(strstr(why, r->why) != NULL, "case %d: got '%s' want '%s'", i, why, r->why);
        CHECK(bad >= r->first && bad < r->end);
      } else {
        CHECK_MSG(rc == 0, "case %d refused: %s", i, why);
        if (rc == 0) ptc_group_sig_fini(&sig);
      }
    }
    ptc_module_destroy(m);
    ptc_ctx_destroy(ctx);
  }
}

/* ---- the pass ---------------------------------------------------------------------- */

static void test_pass_options(void) {
  const char *text =
      "module @m {\n"
      "  func @a(%x: f32[8,8]) -> f32[8,8] {\n"
      "    %0 = exp %x : f32[8,8]\n    %1 = neg %0 : f32[8,8]\n    %2 = tanh %1 : f32[8,8]\n"
      "    %3 = relu %2 : f32[8,8]\n    %4 = sigmoid %3 : f32[8,8]\n    return %4\n  }\n"
      "  func @b(%x: f32[8,8]) -> f32[8,8] {\n"
      "    %0 = exp %x : f32[8,8]\n    return %0\n  }\n}\n";
  static const struct {
    const char *pipe;
    int groups_a, ops_in_first;
  } cases[] = {{"fuse", 1, 5}, {"fuse{max-ops=2}", 3, 2}, {"fuse{min-ops=6}", 0, 0}};
  for (int c = 0; c < PTC_ARRAY_LEN(cases); c++) {
    ptc_ctx *ctx = quiet_ctx();
    ptc_module *m = parse(ctx, text);
    if (!m || run_pipeline(m, cases[c].pipe) != 0) {
      ptc_module_destroy(m);
      ptc_ctx_destroy(ctx);
      continue;
    }
    ptc_func *a = m->funcs[0], *b = m->funcs[1];
    int ng = 0, first = 0;
    for (int32_t i = 0; i < a->nops; i++) {
      int64_t g = ptc_op_group(&a->ops[i]);
      if (g >= 0 && (i == 0 || ptc_op_group(&a->ops[i - 1]) != g)) ng++;
      if (g >= 0 && g == ptc_op_group(&a->ops[0])) first++;
    }
    CHECK_MSG(ng == cases[c].groups_a && first == cases[c].ops_in_first, "%s: %d groups, %d ops",
              cases[c].pipe, ng, first);
    /* ids continue across functions: unique in the module */
    if (cases[c].groups_a) CHECK(ptc_op_group(&b->ops[0]) == cases[c].groups_a);
    ptc_module_destroy(m);
    ptc_ctx_destroy(ctx);
  }

  /* groups already there (a second run, a hand-written file) stay; new ids
   * go after the largest */
  ptc_ctx *ctx = quiet_ctx();
  ptc_module *m = parse(ctx,
                        "module @m {\n  func @f(%x: f32[4], %y: f32[4]) -> (f32[4], f32[4]) {\n"
                        "    %0 = exp %x {group = 9} : f32[4]\n"
                        "    %1 = neg %y : f32[4]\n    return %0, %1\n  }\n}\n");
  if (m && run_pipeline(m, "fuse") == 0) {
    CHECK(ptc_op_group(&m->funcs[0]->ops[0]) == 9);
    CHECK(ptc_op_group(&m->funcs[0]->ops[1]) == 10);
  }
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

static void test_verify(void) {
  ptc_ctx *ctx = quiet_ctx();
  ptc_module *m = parse(ctx, "module @m {\n  func @f(%x: f32[4]) -> f32[4] {\n"
                             "    %0 = exp %x {group = 0} : f32[4]\n"
                             "    %1 = neg %0 {group = 0} : f32[4]\n    return %1\n  }\n}\n");
  if (m) {
    CHECK(ptc_verify_module(m) == 0);
    /* a pass that breaks a group up is caught by the verifier */
    ptc_func *f = m->funcs[0];
    f->ops[1].nattr = 0;
    ptc_attr a = ptc_attr_int(PTC_GROUP_ATTR, 0);
    ptc_build_args ba = {.code = PTC_OP_EXP, .nin = 1, .in = &f->ops[1].out[0], .nattr = 1,
                         .attrs = &a};
    CHECK(ptc_build_at(f, 2, &ba) == 2);
    CHECK(ptc_verify_module(m) < 0);
    CHECK(strstr(ptc_ctx_diag_text(ctx), "group 0 is not contiguous") != NULL);
  }
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  test_gpt2();
  test_signatures();
  test_refusals();
  test_pass_options();
  test_verify();
  return test_report("test_fuse");
}
