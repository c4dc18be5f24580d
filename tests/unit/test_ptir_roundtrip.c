/* test_ptir_roundtrip.c -- the .ptir printer and parser.
 *
 * 1. A module built through the API with every op of ops.def, every
 *    attribute kind, every form of sharding and init, named and unnamed
 *    values and awkward file names is printed, parsed and printed again:
 *    the two prints must be equal byte for byte.
 * 2. Values the grammar cannot name as they are (duplicate, all-digit or
 *    odd names set through the API) still print to text that reads back.
 * 3. Broken texts each give NULL and exactly one diagnostic, the expected
 *    one, at the expected position.
 * 4. The Graphviz output has a node per op and escapes its labels. */
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "test.h"

/* ---- helpers -------------------------------------------------------------- */

static ptc_type ty(ptc_dtype dt, int rank, const int64_t *dims) {
  ptc_type t;
  memset(&t, 0, sizeof t);
  t.dtype = dt;
  t.rank = rank;
  for (int i = 0; i < rank; i++) t.dims[i] = dims[i];
  return t;
}
#define T(dt, ...) \
  ty(dt, (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__})
#define SCALAR(dt) ty(dt, 0, NULL)

/* Sharding from per-dimension masks (bit 0 = first mesh axis). */
static ptc_sharding sh(int rank, const uint8_t *dims, uint8_t partial) {
  ptc_sharding s;
  memset(&s, 0, sizeof s);
  s.present = true;
  for (int i = 0; i < rank; i++) s.dim_axes[i] = dims[i];
  s.partial = partial;
  return s;
}

enum { PP = 1, DP = 2, TP = 4 }; /* masks on mesh pp=2, dp=2, tp=2 */

static bool built[PTC_OP_COUNT];

/* Builds an op (given types optional) and returns its first result (or the
 * op index for ops without results); aborts the test on failure. */
static int32_t op(ptc_func *f, ptc_opcode code, int nin, const int32_t *in,
                  int nattr, const ptc_attr *attrs, const ptc_type *given,
                  const ptc_sharding *given_shard, ptc_loc loc) {
  ptc_build_args a = {.code = code, .nin = nin, .in = in, .nattr = nattr,
                      .attrs = attrs, .ngiven = given ? 1 : 0, .given = given,
                      .given_shard = given_shard, .loc = loc};
  int32_t idx = ptc_build(f, &a);
  if (idx < 0) {
    fprintf(stderr, "building '%s' failed:\n%s\n", ptc_opinfo_get(code)->name,
            ptc_ctx_diag_text(f->mod->ctx));
    exit(1);
  }
  built[code] = true;
  return f->ops[idx].nout ? f->ops[idx].out[0] : idx;
}
#define IN(...) (int)(sizeof((int32_t[]){__VA_ARGS__}) / sizeof(int32_t)), (int32_t[]){__VA_ARGS__}
#define NOIN 0, NULL
#define AT(...) (int)(sizeof((ptc_attr[]){__VA_ARGS__}) / sizeof(ptc_attr)), (ptc_attr[]){__VA_ARGS__}
#define NOAT 0, NULL

static void name(ptc_func *f, int32_t id, const char *n) {
  f->values[id].name = ptc_arena_strdup(&f->mod->arena, n);
}

static char *print(const ptc_module *m) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_print_module(&b, m);
  return b.data; /* caller frees */
}

/* print(parse(text)) or NULL (diagnostics then in ctx). */
static char *reprint(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "reprint.ptir", text, strlen(text));
  if (!m) return NULL;
  char *s = print(m);
  ptc_module_destroy(m);
  return s;
}

/* ---- 1. every op, built by API ----------------------------------------- */

static ptc_module *build_everything(ptc_ctx *ctx) {
  ptc_module *m = ptc_module_create(ctx, "every.op");
  char err[128];
  if (ptc_mesh_parse("pp=2,dp=2,tp=2", &m->mesh, err, sizeof err) != 0) {
    fprintf(stderr, "mesh: %s\n", err);
    exit(1);
  }
  int64_t ints[] = {3, -1, 0, INT64_MAX, INT64_MIN};
  ptc_attr mattrs[] = {
      ptc_attr_int("steps", -42),
      ptc_attr_float("lr", 3e-4),
      ptc_attr_float("big", 1e300),
      ptc_attr_float("tiny", 5e-324),
      ptc_attr_float("neg_zero", -0.0),
      ptc_attr_float("inf", -1.0 / 0.0),
      ptc_attr_bool("zero", false),
      ptc_attr_str("note", "quote \" backslash \\ newline \n tab \t bell \x07 "
                           "utf8 \xc3\xa9 bad \xff end"),
      ptc_attr_str("empty", ""),
      ptc_attr_sym("schedule", "one_f_one_b"),
      ptc_attr_ints("list", ints, 5),
      ptc_attr_ints("nolist", NULL, 0),
      ptc_attr_dtype("precision", PTC_DTYPE_BF16),
  };
  for (int i = 0; i < PTC_ARRAY_LEN(mattrs); i++) ptc_module_set_attr(m, &mattrs[i]);

  const char *weird = ptc_intern_cstr(ctx, "dir with space/\"q\"\\x\ty\n\x01\xc3\xa9.ptg");
  const char *plain = ptc_intern_cstr(ctx, "models/every.ptg");
  ptc_loc L = {plain, 3, 7};

  ptc_type w_t = T(PTC_DTYPE_F32, 8, 16), g_t = T(PTC_DTYPE_F32, 8),
           e_t = T(PTC_DTYPE_F32, 32, 8);
  int32_t pw = ptc_module_add_param(m, "h0.mlp.w", &w_t,
                                    (ptc_init){PTC_INIT_SCALED, 0.02, 12, NULL}, L);
  int32_t pg = ptc_module_add_param(m, "g", &g_t, (ptc_init){PTC_INIT_ONES, 0, 0, NULL},
                                    (ptc_loc){weird, 1, 1});
  int32_t pb = ptc_module_add_param(m, "b", &g_t, (ptc_init){PTC_INIT_ZEROS, 0, 0, NULL},
                                    ptc_loc_unknown);
  int32_t pe = ptc_module_add_param(m, "wte", &e_t,
                                    (ptc_init){PTC_INIT_NORMAL, 0.02, 0, NULL}, L);
  int32_t pn = ptc_module_add_param(m, "ckpt_only", &g_t,
                                    (ptc_init){PTC_INIT_NONE, 0, 0, NULL}, L);
  m->params[pw].shard = sh(2, (uint8_t[]){0, TP}, 0);
  m->params[pe].shard = sh(2, (uint8_t[]){DP | TP, 0}, 0);
  /* 16-bit working copies of f32 variables: one named before its source */
  ptc_type wb_t = T(PTC_DTYPE_BF16, 8, 16), gh_t = T(PTC_DTYPE_F16, 8);
  int32_t pwb = ptc_module_add_param(m, "h0.mlp.w.bf16", &wb_t,
                                     (ptc_init){.kind = PTC_INIT_COPY, .from = "h0.mlp.w"}, L);
  m->params[pwb].shard = sh(2, (uint8_t[]){0, TP}, 0);
  m->params[pwb].trainable = false;
  int32_t pgh = ptc_module_add_param(m, "g.f16", &gh_t,
                                     (ptc_init){.kind = PTC_INIT_COPY, .from = "g"}, L);
  m->params[pgh].trainable = false;
  m->params[pn].shard = sh(1, (uint8_t[]){0}, 0); /* present, replicated */
  m->params[pn].trainable = false;                 /* printed as state */

  ptc_func *f = ptc_module_add_func(m, "step", L);
  ptc_type x_t = T(PTC_DTYPE_F32, 4, 8);
  ptc_sharding x_s = sh(2, (uint8_t[]){DP, 0}, 0);
  int32_t x = ptc_func_add_arg(f, "x", &x_t, &x_s);
  ptc_type ids_t = T(PTC_DTYPE_I32, 4, 6);
  int32_t ids = ptc_func_add_arg(f, NULL, &ids_t, NULL); /* unnamed arg */
  int32_t tg = ptc_func_add_arg(f, "targets", &ids_t, NULL);
  ptc_type f32s = SCALAR(PTC_DTYPE_F32);
  ptc_func_add_result(f, &f32s, NULL);
  ptc_func_add_result(f, &x_t, &x_s);
  ptc_sharding scal_part = sh(0, NULL, TP);
  ptc_func_add_result(f, &f32s, &scal_part);

  int32_t W = ptc_func_param_value(f, pw), G = ptc_func_param_value(f, pg),
          B = ptc_func_param_value(f, pb), E = ptc_func_param_value(f, pe),
          N = ptc_func_param_value(f, pn);

  int32_t c = op(f, PTC_OP_CONSTANT, NOIN, AT(ptc_attr_float("value", 0.5)), &f32s,
                 NULL, L);
  name(f, c, "half");
  int32_t v = op(f, PTC_OP_ADD, IN(x, x), NOAT, NULL, NULL, L);
  v = op(f, PTC_OP_SUB, IN(v, c), NOAT, NULL, NULL, L);
  v = op(f, PTC_OP_MUL, IN(v, G), NOAT, NULL, NULL, (ptc_loc){weird, 9, 2});
  v = op(f, PTC_OP_DIV, IN(v, N), NOAT, NULL, NULL, ptc_loc_unknown);
  v = op(f, PTC_OP_MAXIMUM, IN(v, B), NOAT, NULL, NULL, L);
  name(f, v, "h.1_x");
  static const ptc_opcode unary[] = {PTC_OP_NEG,  PTC_OP_EXP,     PTC_OP_LOG,
                                     PTC_OP_SQRT, PTC_OP_RSQRT,   PTC_OP_TANH,
                                     PTC_OP_SIGMOID, PTC_OP_RELU, PTC_OP_GELU,
                                     PTC_OP_SILU};
  for (int i = 0; i < PTC_ARRAY_LEN(unary); i++)
    v = op(f, unary[i], IN(v), NOAT, NULL, NULL, L);
  int32_t cb = op(f, PTC_OP_CAST, IN(v), AT(ptc_attr_dtype("to", PTC_DTYPE_BF16)),
                  NULL, NULL, L);
  (void)cb;
  ptc_type r32 = T(PTC_DTYPE_F32, 32);
  op(f, PTC_OP_RESHAPE, IN(v), NOAT, &r32, NULL, L);
  op(f, PTC_OP_TRANSPOSE, IN(v), AT(ptc_attr_ints("perm", (int64_t[]){1, 0}, 2)),
     NULL, NULL, L);
  op(f, PTC_OP_SLICE, IN(v),
     AT(ptc_attr_int("axis", 1), ptc_attr_int("start", 2), ptc_attr_int("end", 6)),
     NULL, NULL, L);
  op(f, PTC_OP_CONCAT, IN(v, x, v), AT(ptc_attr_int("axis", 0)), NULL, NULL, L);
  ptc_type bt = T(PTC_DTYPE_F32, 2, 4, 8);
  op(f, PTC_OP_BROADCAST_TO, IN(v), NOAT, &bt, NULL, L);
  op(f, PTC_OP_REDUCE_SUM, IN(v), AT(ptc_attr_ints("axes", (int64_t[]){1}, 1)), NULL,
     NULL, L);
  op(f, PTC_OP_REDUCE_MEAN, IN(v),
     AT(ptc_attr_ints("axes", (int64_t[]){0}, 1), ptc_attr_bool("keepdim", true)),
     NULL, NULL, L);
  op(f, PTC_OP_REDUCE_MAX, IN(v), AT(ptc_attr_ints("axes", (int64_t[]){0, 1}, 2)),
     NULL, NULL, L);
  ptc_type mm_t = T(PTC_DTYPE_F32, 4, 16);
  ptc_sharding mm_s = sh(2, (uint8_t[]){DP, TP}, 0);
  int32_t mm = op(f, PTC_OP_MATMUL, IN(v, W), NOAT, &mm_t, &mm_s, L);
  (void)mm;
  ptc_type mt_t = T(PTC_DTYPE_F32, 4, 32);
  op(f, PTC_OP_MATMUL, IN(v, E),
     AT(ptc_attr_bool("transpose_b", true), ptc_attr_bool("transpose_a", false)),
     &mt_t, NULL, L);
  int32_t emb = op(f, PTC_OP_EMBEDDING, IN(ids, E), NOAT, NULL, NULL, L);
  op(f, PTC_OP_SOFTMAX, IN(v), AT(ptc_attr_int("axis", 1)), NULL, NULL, L);
  op(f, PTC_OP_LAYERNORM, IN(v, G, B), AT(ptc_attr_float("eps", 1e-5)), NULL, NULL, L);
  op(f, PTC_OP_RMSNORM, IN(v, G), AT(ptc_attr_float("eps", 1e-6)), NULL, NULL, L);
  ptc_type q_t = T(PTC_DTYPE_F32, 1, 4, 2, 4);
  int32_t q = op(f, PTC_OP_RESHAPE, IN(v), NOAT, &q_t, NULL, L);
  q = op(f, PTC_OP_ROPE, IN(q), AT(ptc_attr_float("theta", 10000)), NULL, NULL, L);
  op(f, PTC_OP_ATTENTION, IN(q, q, q),
     AT(ptc_attr_bool("causal", true), ptc_attr_float("scale", 0.125)), NULL, NULL, L);
  op(f, PTC_OP_ATTENTION, IN(q, q, q), AT(ptc_attr_bool("causal", false)), NULL, NULL,
     L);
  int32_t loss = op(f, PTC_OP_CROSS_ENTROPY, IN(emb, tg),
                    AT(ptc_attr_int("classes", 7)), NULL, NULL, L);
  name(f, loss, "loss");

  /* gradient ops (what autodiff writes; three of them have several results) */
  op(f, PTC_OP_PAD, IN(v),
     AT(ptc_attr_int("axis", 1), ptc_attr_int("before", 2), ptc_attr_int("after", 0)),
     NULL, NULL, L);
  int32_t cmpv = op(f, PTC_OP_COMPARE, IN(v, B), AT(ptc_attr_sym("cmp", "ge")), NULL, NULL, L);
  int32_t flag = op(f, PTC_OP_REDUCE_MAX, IN(cmpv), AT(ptc_attr_ints("axes", (int64_t[]){0, 1}, 2)),
                    NULL, NULL, L);
  op(f, PTC_OP_SELECT, IN(flag, v, v), NOAT, NULL, NULL, L);
  op(f, PTC_OP_RELU_GRAD, IN(v, v), NOAT, NULL, NULL, L);
  op(f, PTC_OP_GELU_GRAD, IN(v, v), NOAT, NULL, NULL, L);
  op(f, PTC_OP_SILU_GRAD, IN(v, v), NOAT, NULL, NULL, L);
  op(f, PTC_OP_SOFTMAX_GRAD, IN(v, v), AT(ptc_attr_int("axis", 1)), NULL, NULL, L);
  op(f, PTC_OP_LAYERNORM_GRAD, IN(v, v, G), AT(ptc_attr_float("eps", 1e-5)), NULL, NULL, L);
  op(f, PTC_OP_RMSNORM_GRAD, IN(v, v, G), AT(ptc_attr_float("eps", 1e-6)), NULL, NULL, L);
  op(f, PTC_OP_ROPE, IN(q), AT(ptc_attr_float("theta", 10000), ptc_attr_bool("inverse", true)),
     NULL, NULL, L);
  op(f, PTC_OP_ATTENTION_GRAD, IN(q, q, q, q),
     AT(ptc_attr_bool("causal", true), ptc_attr_float("scale", 0.125)), NULL, NULL, L);
  op(f, PTC_OP_CROSS_ENTROPY_GRAD, IN(loss, emb, tg), AT(ptc_attr_int("classes", 7)),
     NULL, NULL, L);
  op(f, PTC_OP_EMBEDDING_GRAD, IN(emb, ids), NOAT, &e_t, NULL, L);

  /* training state: optimizer updates and assigns (multi-result ops) */
  int32_t lr = op(f, PTC_OP_CONSTANT, NOIN, AT(ptc_attr_float("value", 3e-4)), &f32s,
                  NULL, L);
  int32_t stp = op(f, PTC_OP_CONSTANT, NOIN, AT(ptc_attr_float("value", 1)), &f32s,
                   NULL, L);
  int32_t pnew = op(f, PTC_OP_ADAMW, IN(G, B, N, N, lr, stp),
                    AT(ptc_attr_float("beta1", 0.9), ptc_attr_float("beta2", 0.95),
                       ptc_attr_float("eps", 1e-8), ptc_attr_float("weight_decay", 0.1)),
                    NULL, NULL, L);
  op(f, PTC_OP_ASSIGN, IN(G, pnew), NOAT, NULL, NULL, L);
  int32_t snew = op(f, PTC_OP_SGD, IN(B, G, N, lr),
                    AT(ptc_attr_float("momentum", 0.9), ptc_attr_float("weight_decay", 0),
                       ptc_attr_bool("nesterov", true)),
                    NULL, NULL, L);
  op(f, PTC_OP_ASSIGN, IN(B, snew), NOAT, NULL, NULL, L);

  /* collectives and transfers, with shardings of every form */
  ptc_sharding part = sh(2, (uint8_t[]){DP, 0}, TP);
  int32_t pt = op(f, PTC_OP_MUL, IN(x, x), NOAT, &x_t, &part, L);
  int32_t ar = op(f, PTC_OP_ALL_REDUCE, IN(pt),
                  AT(ptc_attr_sym("axis", "tp"), ptc_attr_sym("op", "sum")), NULL,
                  NULL, L);
  op(f, PTC_OP_ALL_GATHER, IN(ar), AT(ptc_attr_sym("axis", "dp"), ptc_attr_int("dim", 0)),
     NULL, NULL, L);
  ptc_sharding pponly = sh(2, (uint8_t[]){0, 0}, TP | PP);
  int32_t pp = op(f, PTC_OP_ADD, IN(x, x), NOAT, &x_t, &pponly, L);
  op(f, PTC_OP_REDUCE_SCATTER, IN(pp),
     AT(ptc_attr_sym("axis", "tp"), ptc_attr_int("dim", 1), ptc_attr_sym("op", "max")),
     NULL, NULL, L);
  op(f, PTC_OP_BROADCAST, IN(x), AT(ptc_attr_sym("axis", "dp"), ptc_attr_int("root", 1)),
     NULL, NULL, L);
  op(f, PTC_OP_SHARD, IN(ar), AT(ptc_attr_sym("axis", "tp"), ptc_attr_int("dim", 1)), NULL,
     NULL, L);
  op(f, PTC_OP_TO_PARTIAL, IN(ar), AT(ptc_attr_sym("axis", "tp")), NULL, NULL, L);
  op(f, PTC_OP_SEND, IN(x), AT(ptc_attr_int("peer", 1), ptc_attr_int("tag", 3)), NULL,
     NULL, L);
  int32_t rv = op(f, PTC_OP_RECV, NOIN, AT(ptc_attr_int("peer", 0)), &x_t, &x_s, L);
  ptc_sharding sp = scal_part;
  int32_t sc = op(f, PTC_OP_CONSTANT, NOIN, AT(ptc_attr_float("value", -2)), &f32s, &sp,
                  L);
  op(f, PTC_OP_RETURN, IN(loss, rv, sc), NOAT, NULL, NULL, (ptc_loc){plain, 99, 1});

  /* a second function: no params, no results, unnamed values only */
  ptc_func *g = ptc_module_add_func(m, "tiny", ptc_loc_unknown);
  ptc_type s_t = T(PTC_DTYPE_F64, 2);
  int32_t a = ptc_func_add_arg(g, NULL, &s_t, NULL);
  int32_t e = op(g, PTC_OP_EXP, IN(a), NOAT, NULL, NULL, ptc_loc_unknown);
  op(g, PTC_OP_SEND, IN(e), AT(ptc_attr_int("peer", 0)), NULL, NULL, ptc_loc_unknown);
  op(g, PTC_OP_RETURN, NOIN, NOAT, NULL, NULL, ptc_loc_unknown);
  return m;
}

static void test_roundtrip_api(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = build_everything(ctx);
  CHECK_MSG(ptc_verify_module(m) == 0, "%s", ptc_ctx_diag_text(ctx));
  for (int i = 0; i < PTC_OP_COUNT; i++)
    CHECK_MSG(built[i], "op '%s' is not covered", ptc_opinfo_get((ptc_opcode)i)->name);

  char *p1 = print(m);
  char *p2 = reprint(ctx, p1);
  CHECK_MSG(p2 != NULL, "the print does not parse:\n%s\n%s", ptc_ctx_diag_text(ctx), p1);
  if (p2) CHECK_STR(p2, p1);
  char *p3 = p2 ? reprint(ctx, p2) : NULL;
  if (p3) CHECK_STR(p3, p2);

  /* spot checks of the canonical form */
  CHECK_MSG(strstr(p1, "module @every.op mesh<pp=2, dp=2, tp=2> attributes {big = 1e+300, "
                       "empty = \"\", inf = -inf, list = [3, -1, 0, 9223372036854775807, "
                       "-9223372036854775808], lr = 0.0003, neg_zero = -0.0, nolist = [], "
                       "note = \"quote \\\" backslash \\\\ newline \\n tab \\t bell \\x07 "
                       "utf8 \xc3\xa9 bad \\xff end\", precision = bf16, schedule = "
                       "one_f_one_b, steps = -42, tiny = 5e-324, zero = false} {\n") == p1,
            "%s", p1);
  CHECK_MSG(strstr(p1, "  param @h0.mlp.w : f32[8,16] shard<_,tp> init scaled(0.02, 12) "
                       "loc(\"models/every.ptg\":3:7)\n"), "%s", p1);
  CHECK_MSG(strstr(p1, "  param @g : f32[8] init ones loc(\"dir with space/\\\"q\\\"\\\\x\\ty"
                       "\\n\\x01\xc3\xa9.ptg\":1:1)\n"), "%s", p1);
  CHECK_MSG(strstr(p1, "  param @b : f32[8] init zeros\n"), "%s", p1);
  CHECK_MSG(strstr(p1, "  param @wte : f32[32,8] shard<(dp,tp),_> init normal(0.02)"), "%s", p1);
  CHECK_MSG(strstr(p1, "  state @ckpt_only : f32[8] shard<_> loc("), "%s", p1);
  CHECK_MSG(strstr(p1, "  state @h0.mlp.w.bf16 : bf16[8,16] shard<_,tp> init copy(@h0.mlp.w) "
                       "loc("), "%s", p1);
  CHECK_MSG(strstr(p1, "  state @g.f16 : f16[8] init copy(@g) loc("), "%s", p1);
  CHECK_MSG(strstr(p1, "\n\n  func @step(%x: f32[4,8] shard<dp,_>, %0: i32[4,6], "
                       "%targets: i32[4,6]) -> (f32[], f32[4,8] shard<dp,_>, f32[] "
                       "partial<tp>) loc(\"models/every.ptg\":3:7) {\n"), "%s", p1);
  CHECK_MSG(strstr(p1, "    %half = constant {value = 0.5} : f32[] loc("), "%s", p1);
  CHECK_MSG(strstr(p1, "    %1 = add %x, %x : f32[4,8] loc("), "%s", p1);
  CHECK_MSG(strstr(p1, " = div %3, @ckpt_only : f32[4,8]\n"), "%s", p1);
  CHECK_MSG(strstr(p1, " = matmul %14, @h0.mlp.w : f32[4,16] shard<dp,tp> loc("), "%s", p1);
  CHECK_MSG(strstr(p1, " {transpose_a = false, transpose_b = true} : f32[4,32]"), "%s", p1);
  CHECK_MSG(strstr(p1, " = mul %x, %x : f32[4,8] shard<dp,_> partial<tp> loc("), "%s", p1);
  CHECK_MSG(strstr(p1, " = add %x, %x : f32[4,8] partial<pp,tp> loc("), "%s", p1);
  CHECK_MSG(strstr(p1, " = all_reduce %"), "%s", p1);
  CHECK_MSG(strstr(p1, "    send %x {peer = 1, tag = 3} loc("), "%s", p1);
  CHECK_MSG(strstr(p1, " = constant {value = -2.0} : f32[] partial<tp> loc("), "%s", p1);
  CHECK_MSG(strstr(p1, "    return %loss, %"), "%s", p1);
  CHECK_MSG(strstr(p1, "\n\n  func @tiny(%0: f64[2]) {\n    %1 = exp %0 : f64[2]\n"
                       "    send %1 {peer = 0}\n    return\n  }\n}\n"), "%s", p1);
  for (int i = 0; i < PTC_OP_COUNT; i++) {
    char pat[64];
    snprintf(pat, sizeof pat, " %s", ptc_opinfo_get((ptc_opcode)i)->name);
    CHECK_MSG(strstr(p1, pat), "'%s' is not printed", pat);
  }
  free(p1);
  free(p2);
  free(p3);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- 2. names the grammar cannot keep ---------------------------------- */

static void test_odd_names(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_module_create(ctx, "names");
  ptc_func *f = ptc_module_add_func(m, "f", ptc_loc_unknown);
  ptc_type t = T(PTC_DTYPE_F32, 2);
  int32_t a = ptc_func_add_arg(f, "a", &t, NULL);
  int32_t b = op(f, PTC_OP_NEG, IN(a), NOAT, NULL, NULL, ptc_loc_unknown);
  name(f, b, "a"); /* duplicate of the argument */
  int32_t c = op(f, PTC_OP_NEG, IN(b), NOAT, NULL, NULL, ptc_loc_unknown);
  name(f, c, "7"); /* all digits: would clash with the numbering */
  int32_t d = op(f, PTC_OP_NEG, IN(c), NOAT, NULL, NULL, ptc_loc_unknown);
  name(f, d, "not a name");
  int32_t e = op(f, PTC_OP_NEG, IN(d), NOAT, NULL, NULL, ptc_loc_unknown);
  name(f, e, "");
  op(f, PTC_OP_RETURN, NOIN, NOAT, NULL, NULL, ptc_loc_unknown);
  char *p1 = print(m);
  CHECK_STR(p1, "module @names {\n"
                "  func @f(%a: f32[2]) {\n"
                "    %0 = neg %a : f32[2]\n"
                "    %1 = neg %0 : f32[2]\n"
                "    %2 = neg %1 : f32[2]\n"
                "    %3 = neg %2 : f32[2]\n"
                "    return\n"
                "  }\n"
                "}\n");
  char *p2 = reprint(ctx, p1);
  CHECK_MSG(p2 && strcmp(p1, p2) == 0, "%s", p2 ? p2 : ptc_ctx_diag_text(ctx));
  free(p1);
  free(p2);
  ptc_module_destroy(m);

  /* An empty module prints and reads back. */
  m = ptc_module_create(ctx, "empty");
  p1 = print(m);
  CHECK_STR(p1, "module @empty {\n}\n");
  p2 = reprint(ctx, p1);
  CHECK_MSG(p2 && strcmp(p1, p2) == 0, "%s", p2 ? p2 : ptc_ctx_diag_text(ctx));
  free(p1);
  free(p2);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- 3. broken texts ------------------------------------------------------ */

typedef struct bad_case {
  const char *text;
  const char *want; /* expected "L:C: error: message" prefix */
} bad_case;

#define HDR "module @m mesh<dp=2, tp=2> {\n"
#define F1 "  func @f(%a: f32[4,8]) -> f32[4,8] {\n"
#define END "    return %a\n  }\n}\n"

static const bad_case bad[] = {
    {"", "1:1: error: expected 'module', found end of file"},
    {"// only a comment\n", "2:1: error: expected 'module', found end of file"},
    {"modul @m {}", "1:1: error: expected 'module', found 'modul'"},
    {"module m {}", "1:8: error: expected '@name' after 'module', found 'm'"},
    {"module @ {}", "1:8: error: expected a name after '@'"},
    {"module @m {", "1:12: error: expected 'param', 'func' or '}', found end of file"},
    {"module @m {} x", "1:14: error: expected end of file after the module, found 'x'"},
    {"module @m {} }", "1:14: error: expected end of file after the module, found '}'"},
    {"module @m / {}", "1:11: error: unexpected character '/'"},
    {"module @m $ {}", "1:11: error: unexpected character '$'"},
    {"module @m \x01 {}", "1:11: error: unexpected character byte 0x01"},
    {"module @m \xc3\xa9 {}", "1:11: error: unexpected character byte 0xc3"},
    {"module @m {}\xff", "1:13: error: file is not text: invalid UTF-8 byte 0xff"},
    {"module @m {}\0", "1:13: error: file is not text: NUL byte"},
    /* mesh */
    {"module @m mesh<xp=2> {}", "1:11: error: invalid mesh: unknown mesh axis 'xp'"},
    {"module @m mesh<dp=2, dp=4> {}", "1:11: error: invalid mesh: axis 'dp' given twice"},
    {"module @m mesh<dp=0> {}", "1:19: error: the axis size must be between 1 and"},
    {"module @m mesh<dp=2 {}", "1:21: error: expected ',' or '>' in mesh<>, found '{'"},
    {"module @m mesh<dp=99999999999999999999> {}",
     "1:19: error: integer '99999999999999999999' is out of range"},
    {"module @m mesh<dp=--3> {}", "1:19: error: expected a number after '-'"},
    {"module @m mesh<pp=2, dp=2, tp=2, tp=2> {}",
     "1:11: error: invalid mesh: axis 'tp' given twice"},
    /* attributes */
    {"module @m attributes {a = 1, a = 2} {}",
     "1:30: error: attribute 'a' is given twice (first at 1:23)"},
    {"module @m attributes {a = 1e999} {}", "1:27: error: number '1e999' is out of range"},
    {"module @m attributes {a = 1e-999} {}", "1:27: error: number '1e-999' is out of range"},
    {"module @m attributes {a = 12abc} {}", "1:27: error: malformed number '12abc'"},
    {"module @m attributes {a = 1.} {}", "1:27: error: malformed number '1.'"},
    {"module @m attributes {a = -x} {}", "1:27: error: expected a number after '-'"},
    {"module @m attributes {a = \"abc} {}", "1:27: error: unterminated string"},
    {"module @m attributes {a = \"a\nb\"} {}", "1:27: error: unterminated string"},
    {"module @m attributes {a = \"\\q\"} {}", "1:28: error: unknown escape in string"},
    {"module @m attributes {a = \"\\x4\"} {}", "1:28: error: \\x in a string needs two hex"},
    {"module @m attributes {a = \"\\x00\"} {}", "1:28: error: a string cannot hold a NUL"},
    {"module @m attributes {a = [1, 2.5]} {}", "1:31: error: expected an integer, found number '2.5'"},
    {"module @m attributes {a = [1, 2} {}", "1:32: error: expected ',' or ']' in the list, found '}'"},
    {"module @m attributes {a = } {}", "1:27: error: expected an attribute value, found '}'"},
    {"module @m attributes {a 1} {}", "1:25: error: expected '=' after the attribute name, found number '1'"},
    /* params */
    {"module @m {\n  param @w : f32[2]\n  param @w : f32[3]\n}\n",
     "3:9: error: param @w is already defined at 2:9"},
    {"module @m {\n  param @w : f33[2]\n}\n", "2:14: error: unknown dtype 'f33'"},
    {"module @m {\n  param @w : f32[2,-1]\n}\n",
     "2:20: error: a dimension size must be between 0 and"},
    {"module @m {\n  param @w : f32[1048576,1048576,2048]\n}\n",
     "2:34: error: tensor has more than 2^50 elements"},
    {"module @m {\n  param @w : f32[1,1,1,1,1,1,1,1,1]\n}\n",
     "2:34: error: a type has at most 8 dimensions"},
    {"module @m {\n  param @w : f32[2] init normal\n}\n",
     "3:1: error: expected '(' after 'normal', found '}'"},
    {"module @m {\n  param @w : f32[2] init scaled(0.1, 0)\n}\n",
     "2:38: error: the depth must be between 1 and"},
    {"module @m {\n  param @w : f32[2] init uniform\n}\n",
     "2:26: error: expected an init (zeros, ones, normal(STD), scaled(STD, DEPTH) or copy(@VAR)), found 'uniform'"},
    {"module @m {\n  param @w : f32[2] init copy(w)\n}\n",
     "2:31: error: expected '@name' of the variable to copy, found 'w'"},
    {"module @m {\n  param @w : f32[2] init copy(@v\n}\n",
     "3:1: error: expected ')' after the variable to copy, found '}'"},
    {"module @m {\n  param @w : f32[2]\n  state @c : bf16[3] init copy(@w)\n}\n",
     "3:9: error: parameter 'c': init copy(@w) needs a variable of the same shape"},
    {"module @m {\n  state @c : bf16[2] init copy(@nope)\n}\n",
     "2:9: error: parameter 'c': init copy(@nope) needs a variable of the same shape"},
    {"module @m {\n  state @c : bf16[2] init copy(@c)\n}\n",
     "2:9: error: parameter 'c': init copy(@c) needs a variable of the same shape"},
    {"module @m {\n  param @w : f32[2] init normal(-1.0)\n}\n",
     "2:9: error: parameter 'w': init std must be a finite number >= 0"},
    {"module @m {\n  param @w : i32[2]\n}\n",
     "2:9: error: parameter 'w' must have a floating-point dtype"},
    {"module @m {\n  param @w : f32[2] loc(\"a.ptg\":1)\n}\n",
     "2:34: error: expected ':' after the line number, found ')'"},
    {"module @m {\n  param @w : f32[2] loc(a.ptg:1:1)\n}\n",
     "2:25: error: expected a file name string in loc(...), found 'a.ptg'"},
    {"module @m {\n  func @f() {\n    return\n  }\n  param @w : f32[2]\n}\n",
     "5:3: error: params come before the first func"},
    /* shardings */
    {"module @m {\n  param @w : f32[2] shard<dp>\n}\n",
     "2:27: error: unknown mesh axis 'dp' (the module has no mesh)"},
    {HDR "  param @w : f32[2] shard<pp>\n}\n",
     "2:27: error: unknown mesh axis 'pp' (the mesh has dp, tp)"},
    {HDR "  param @w : f32[2,2] shard<dp>\n}\n",
     "2:23: error: sharding has 1 dimension but the type has 2"},
    {HDR "  param @w : f32[2] shard<dp,_>\n}\n",
     "2:21: error: sharding has more dimensions than the type (1)"},
    {HDR "  param @w : f32[4,4] shard<dp,dp>\n}\n",
     "2:32: error: a mesh axis splits more than one dimension"},
    {HDR "  param @w : f32[4,4] shard<(tp,dp),_>\n}\n",
     "2:33: error: axes of one dimension go in mesh order (major first): 'dp' comes too late"},
    {HDR "  param @w : f32[4,4] shard<(dp),_>\n}\n",
     "2:32: error: parentheses group two or more axes"},
    {HDR "  param @w : f32[4] partial<tp,tp>\n}\n",
     "2:32: error: mesh axis 'tp' appears twice in partial<>"},
    {HDR "  param @w : f32[4] partial<tp>\n}\n",
     "2:9: error: parameter 'w' cannot be a partial sum"},
    {HDR "  param @w : f32[3] shard<dp>\n}\n",
     "2:9: error: parameter 'w': dimension 0 of size 3 does not divide evenly over 2"},
    /* funcs */
    {HDR "  func @f() {\n    return\n  }\n  func @f() {\n    return\n  }\n}\n",
     "5:8: error: func @f is already defined at 2:8"},
    {HDR "  func @f(%a: f32[2], %a: f32[2]) {\n    return\n  }\n}\n",
     "2:23: error: value %a is already defined at 2:11"},
    {HDR "  func @f(%a f32[2]) {\n    return\n  }\n}\n",
     "2:14: error: expected ':' after the argument name, found 'f32'"},
    {HDR "  func @f() -> () {\n    return\n  }\n}\n",
     "2:17: error: expected a type such as f32[8,16], found ')'"},
    {HDR "  func @f() {\n  }\n}\n", "3:3: error: func @f must end with 'return'"},
    {HDR "  func @f() {\n    return\n", "4:1: error: expected '}' to close the func body, found end of file"},
    {HDR "  func @f() {\n    return\n    return\n  }\n}\n",
     "4:5: error: expected '}' after 'return', the last op of a function, found 'return'"},
    {HDR F1 "    return\n  }\n}\n", "3:5: error: 'return' gives 0 values but @f returns 1"},
    {HDR "  func @f(%a: f32[4]) -> f32[8] {\n    return %a\n  }\n}\n",
     "3:5: error: 'return' value 0 is f32[4] but @f returns f32[8]"},
    {HDR "  func @f(%a: f32[4]) -> f32[4] shard<dp> {\n    return %a\n  }\n}\n",
     "3:5: error: 'return' value 0 is f32[4] but @f returns f32[4] shard<dp>"},
    /* ops */
    {HDR F1 "    %b = neg %x : f32[4,8]\n" END, "3:14: error: use of undefined value %x"},
    {HDR F1 "    %b = neg %b : f32[4,8]\n" END, "3:14: error: use of undefined value %b"},
    {HDR F1 "    %b = neg @w : f32[4,8]\n" END, "3:14: error: use of undefined param @w"},
    {HDR F1 "    %a = neg %a : f32[4,8]\n" END, "3:5: error: value %a is already defined at 2:11"},
    {HDR F1 "    %b = frob %a : f32[4,8]\n" END, "3:10: error: unknown op 'frob'"},
    {HDR F1 "    %b, %c = neg %a : f32[4,8]\n" END,
     "3:14: error: op 'neg' has 1 result; write '%name = neg ...'"},
    {HDR F1 "    neg %a : f32[4,8]\n" END, "3:5: error: op 'neg' has 1 result; write"},
    {HDR F1 "    %b = send %a {peer = 0}\n" END, "3:10: error: op 'send' has no result to name"},
    {HDR F1 "    %b = neg %a : f32[4,8], f32[4,8]\n" END, "3:29: error: op 'neg' has 1 result"},
    {HDR F1 "    %b = neg %a, %a : f32[4,8]\n" END, "3:10: error: op 'neg' takes 1 operand, got 2"},
    {HDR F1 "    %b = neg %a : f32[4,9]\n" END,
     "3:10: error: 'neg' result type f32[4,9] does not match f32[4,8]"},
    {HDR F1 "    %b = reshape %a\n" END,
     "4:5: error: expected ':' and the result type (this op does not infer it), found 'return'"},
    {HDR F1 "    %b = slice %a {axis = 0, start = 0} : f32[4,8]\n" END,
     "3:10: error: op 'slice' requires attribute 'end'"},
    {HDR F1 "    %b = slice %a {axis = 0, start = 0, end = 9} : f32[9,8]\n" END,
     "3:10: error: slice: range [0, 9) is not within dimension 0 of size 4"},
    {HDR F1 "    %b = neg %a {bogus = 1} : f32[4,8]\n" END,
     "3:18: error: op 'neg' has no attribute 'bogus'"},
    {HDR F1 "    %b = softmax %a {axis = 1, axis = 1} : f32[4,8]\n" END,
     "3:32: error: attribute 'axis' is given twice (first at 3:22)"},
    {HDR F1 "    %b = softmax %a {axis = true} : f32[4,8]\n" END,
     "3:10: error: attribute 'axis' of op 'softmax' must be an integer"},
    {HDR F1 "    %b = all_reduce %a {axis = pp, op = sum} : f32[4,8]\n" END,
     "3:32: error: unknown mesh axis 'pp'"},
    {HDR F1 "    %b = all_reduce %a {axis = tp, op = xor} : f32[4,8]\n" END,
     "3:10: error: all_reduce: op = xor is not a reduction"},
    {HDR F1 "    %b = neg %a : f32[4,8] shard<dp,_> partial<dp>\n" END,
     "3:10: error: result 0 of 'neg' uses a mesh axis twice"},
    {HDR F1 "    %b = neg %a : f32[4,8]\n    %c = neg %b : f32[4,8]\n    return %c %b\n  }\n}\n",
     "5:15: error: expected '}' after 'return', the last op of a function, found '%b'"},
    {HDR F1 "    %b = neg %a : f32[4,8] loc(\"x\":1:2147483648)\n" END,
     "3:38: error: a column number must be between 0 and 2147483647"},
    {HDR F1 "    %b = neg %a : f32[4,8] loc(\"x\":1:1) loc(\"x\":1:1)\n" END,
     "3:41: error: unknown op 'loc'"},
    {"module @m {\n" F1 "    %b = constant {value = 1} : i32[] shard<>\n" END,
     "3:10: error: result 0 of 'constant' has a sharding but the module has no mesh"},
    {HDR F1 "    %b = constant {value = 1.5} : i32[]\n" END,
     "3:10: error: constant: value 1.5 is not representable in i32"},
};

static void test_errors(void) {
  for (int i = 0; i < PTC_ARRAY_LEN(bad); i++) {
    ptc_ctx *ctx = ptc_ctx_create();
    ptc_ctx_set_diag_capture(ctx, true);
    const char *text = bad[i].text;
    size_t len = strlen(text);
    if (strstr(bad[i].want, "NUL byte")) len++; /* the case with the NUL in it */
    ptc_module *m = ptc_parse_module(ctx, "bad.ptir", text, len);
    const char *diag = ptc_ctx_diag_text(ctx);
    CHECK_MSG(m == NULL, "case %d parsed:\n%s", i, text);
    CHECK_MSG(ptc_ctx_error_count(ctx) == 1, "case %d: %d errors:\n%s", i,
              ptc_ctx_error_count(ctx), diag);
    char want[512];
    snprintf(want, sizeof want, "bad.ptir:%s", bad[i].want);
    CHECK_MSG(strncmp(diag, want, strlen(want)) == 0, "case %d:\n%s\nwant\n%s\ngot\n%s", i,
              text, want, diag);
    /* one diagnostic line carries "error:" (the rest is the quoted source) */
    int n = 0;
    for (const char *s = diag; (s = strstr(s, ": error: ")); s++) n++;
    CHECK_MSG(n == 1, "case %d: %d errors in\n%s", i, n, diag);
    ptc_module_destroy(m);
    ptc_ctx_destroy(ctx);
  }
}

/* Every prefix of a valid text is either valid or one clean error. */
static void test_truncations(void) {
  static const char text[] =
      "module @m mesh<dp=2, tp=2> attributes {s = \"a\\\"b\", k = [1, 2]} {\n"
      "  param @w : f32[8,8] shard<_,tp> init scaled(0.02, 2) loc(\"m.ptg\":1:2)\n"
      "  func @f(%a: f32[4,8] shard<dp,_>) -> f32[4,8] shard<dp,_> loc(\"m.ptg\":3:1) {\n"
      "    %b = matmul %a, @w {transpose_b = true} : f32[4,8] shard<dp,_> partial<tp>\n"
      "    %c = all_reduce %b {axis = tp, op = sum} : f32[4,8] shard<dp,_>\n"
      "    return %c loc(\"m.ptg\":9:9)\n"
      "  }\n"
      "}\n";
  size_t n = strlen(text);
  int parsed = 0;
  for (size_t k = 0; k <= n; k++) {
    ptc_ctx *ctx = ptc_ctx_create();
    ptc_ctx_set_diag_capture(ctx, true);
    ptc_module *m = ptc_parse_module(ctx, "t.ptir", text, k);
    if (m) {
      parsed++;
      CHECK_MSG(ptc_ctx_error_count(ctx) == 0, "prefix %zu", k);
    } else {
      CHECK_MSG(ptc_ctx_error_count(ctx) == 1, "prefix %zu: %d errors:\n%s", k,
                ptc_ctx_error_count(ctx), ptc_ctx_diag_text(ctx));
    }
    ptc_module_destroy(m);
    ptc_ctx_destroy(ctx);
  }
  CHECK_MSG(parsed == 2, "%d prefixes parsed (want the whole text, with and "
            "without its last newline)", parsed);
}

/* Long and repetitive inputs parse in linear time (a quadratic parser would
 * take minutes here) and round-trip. */
static void test_big(void) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_buf_puts(&b, "module @big {\n");
  enum { NP = 2000, NV = 20000 };
  for (int i = 0; i < NP; i++) ptc_buf_printf(&b, "  param @p%d : f32[2] init zeros\n", i);
  ptc_buf_puts(&b, "\n  func @f(%a: f32[2]) -> f32[2] {\n");
  ptc_buf_puts(&b, "    %0 = add %a, @p0 : f32[2]\n");
  for (int i = 1; i < NV; i++)
    ptc_buf_printf(&b, "    %%%d = add %%%d, @p%d : f32[2]\n", i, i - 1, i % NP);
  ptc_buf_printf(&b, "    return %%%d\n  }\n}\n", NV - 1);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  char *p = reprint(ctx, b.data);
  CHECK_MSG(p && strcmp(p, b.data) == 0, "%s", p ? "differs" : ptc_ctx_diag_text(ctx));
  free(p);

  /* one very long line */
  b.len = 0;
  ptc_buf_puts(&b, "module @m attributes {x = [");
  for (int i = 0; i < 100000; i++) ptc_buf_printf(&b, "%s%d", i ? ", " : "", i);
  ptc_buf_puts(&b, "]} {\n}\n");
  p = reprint(ctx, b.data);
  CHECK_MSG(p && strcmp(p, b.data) == 0, "long line: %s", p ? "differs" : ptc_ctx_diag_text(ctx));
  free(p);
  ptc_buf_fini(&b);
  ptc_ctx_destroy(ctx);
}

/* ---- 4. Graphviz ----------------------------------------------------------- */

static void test_dot(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = build_everything(ctx);
  m->name = "quote\"d\\";
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_print_dot(&b, m);
  const char *head = "digraph \"quote\\\"d\\\\\" {\n";
  CHECK_MSG(strncmp(b.data, head, strlen(head)) == 0, "%s", b.data);
  CHECK_MSG(strstr(b.data, "[shape=invhouse, label=\"%x\\nf32[4,8] shard<dp,_>\"];"), "%s",
            b.data);
  CHECK_MSG(strstr(b.data, "[shape=cylinder, label=\"@h0.mlp.w\\nf32[8,16] shard<_,tp>\"];"),
            "%s", b.data);
  CHECK_MSG(strstr(b.data, "fillcolor=lightblue, label=\"all_reduce\\n"), "%s", b.data);
  int nodes = 0;
  for (const char *s = b.data; (s = strstr(s, "_op")); s++)
    if (strstr(s, " [shape=") == strchr(s, ' ')) nodes++;
  int ops = 0;
  for (int i = 0; i < m->nfuncs; i++) ops += m->funcs[i]->nops;
  CHECK_MSG(nodes == ops, "%d op nodes for %d ops", nodes, ops);
  ptc_buf_fini(&b);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  test_roundtrip_api();
  test_odd_names();
  test_errors();
  test_truncations();
  test_big();
  test_dot();
  return test_report("test_ptir_roundtrip");
}
