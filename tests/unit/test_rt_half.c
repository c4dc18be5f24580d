/* test_rt_half.c -- bf16 and f16 values on the CPU runtime: stored at 16
 * bits, computed in f32.
 *
 * 1. Conversions (runtime/half.h): round to nearest even at ties, NaN
 *    stays NaN (even one whose payload is only in the low bits), infinities,
 *    f16 overflow to inf at 65520, f16 subnormals both ways, and every
 *    16-bit pattern round-tripping through f32; against the compiler's
 *    _Float16 where it has one.
 * 2. The executor: hand-written ptir, each function one op on 16-bit
 *    variables (matmul, add, gelu, layernorm, softmax, attention,
 *    cross_entropy and its gradient, reduce_sum, embedding, reshape,
 *    slice, concat, transpose), run in bf16 and in f16 and compared BIT
 *    FOR BIT with the same function in f32 run on the rounded inputs, its
 *    results then rounded: the executor widens, runs the f32 kernel and
 *    rounds, nothing else.  Each run's measured workspace and peak equal
 *    the static plan (codegen/liveness.c).  cast and constant on the edge
 *    values; --check-numerics on 16-bit results; a 16-bit argument.
 * 3. Variables: 16-bit init is the f32 init rounded; init copy(@src) is
 *    the cast of the source, whole and on the pieces of a 2-device mesh
 *    (the source sharded the same way, whole, or sharded otherwise); a
 *    safetensors checkpoint and a sharded checkpoint directory hold BF16 and
 *    F16 tensors and load back bit for bit.
 * 4. The plan: per-op workspace figures and the fold into the transient
 *    peak; the fuse pass groups ops with 16-bit values, which then need no
 *    workspace (the fused kernels themselves: test_cpu_codegen.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/codegen.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "runtime/ckpt.h"
#include "runtime/half.h"
#include "test_half.h"
#include "runtime/ptrt.h"
#include "test.h"
#include "test_files.h"

/* ---- 1. conversions ---------------------------------------------------------- */

static float fb(uint32_t u) { return ptrt_f32_of_bits(u); }

static void test_conversions(void) {
  /* bf16: ties to even */
  CHECK(ptrt_f32_to_bf16(fb(0x3f808000u)) == 0x3f80); /* 1 + 2^-8: tie, down to even */
  CHECK(ptrt_f32_to_bf16(fb(0x3f818000u)) == 0x3f82); /* tie, up to even */
  CHECK(ptrt_f32_to_bf16(fb(0x3f808001u)) == 0x3f81); /* above the tie */
  CHECK(ptrt_f32_to_bf16(fb(0xbf817fffu)) == 0xbf81); /* below the tie, negative */
  CHECK(ptrt_f32_to_bf16(1.0f) == 0x3f80 && ptrt_f32_to_bf16(-0.0f) == 0x8000);
  /* bf16: inf, overflow by rounding, NaN kept even with a low-bit payload */
  CHECK(ptrt_f32_to_bf16(INFINITY) == 0x7f80 && ptrt_f32_to_bf16(-INFINITY) == 0xff80);
  CHECK(ptrt_f32_to_bf16(fb(0x7f7fffffu)) == 0x7f80); /* FLT_MAX rounds to inf */
  CHECK(ptrt_f32_to_bf16(fb(0x7f7f7fffu)) == 0x7f7f); /* stays finite */
  uint16_t n1 = ptrt_f32_to_bf16(fb(0x7f800001u)), n2 = ptrt_f32_to_bf16(fb(0xffc00000u));
  CHECK_MSG(isnan(ptrt_bf16_to_f32(n1)) && isnan(ptrt_bf16_to_f32(n2)), "%04x %04x", n1, n2);
  CHECK((n2 & 0x8000) && !(n1 & 0x8000));
  CHECK(ptrt_bf16_to_f32(0x0001) == fb(0x00010000u)); /* a subnormal f32 */

  /* f16: normal ties, the largest value, overflow at 65520 */
  CHECK(ptrt_f32_to_f16(1.0f) == 0x3c00);
  CHECK(ptrt_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00);        /* tie, down */
  CHECK(ptrt_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02);    /* tie, up */
  CHECK(ptrt_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f) == 0x3c01);
  CHECK(ptrt_f32_to_f16(65504.0f) == 0x7bff);
  CHECK(ptrt_f32_to_f16(65519.996f) == 0x7bff);
  CHECK(ptrt_f32_to_f16(65520.0f) == 0x7c00 && ptrt_f32_to_f16(-65520.0f) == 0xfc00);
  CHECK(ptrt_f32_to_f16(1e30f) == 0x7c00 && ptrt_f32_to_f16(INFINITY) == 0x7c00);
  CHECK(isnan(ptrt_f16_to_f32(ptrt_f32_to_f16(NAN))));
  CHECK(isnan(ptrt_f16_to_f32(ptrt_f32_to_f16(fb(0x7f800001u)))));
  /* f16 subnormals: 2^-24 is the least, 2^-25 a tie to zero */
  CHECK(ptrt_f32_to_f16(0x1p-24f) == 0x0001);
  CHECK(ptrt_f32_to_f16(0x1p-25f) == 0x0000);
  CHECK(ptrt_f32_to_f16(0x1.8p-25f) == 0x0001);             /* above the tie */
  CHECK(ptrt_f32_to_f16(3 * 0x1p-25f) == 0x0002);           /* 1.5 units: tie, to even 2 */
  CHECK(ptrt_f32_to_f16(5 * 0x1p-25f) == 0x0002);           /* 2.5 units: tie, to even 2 */
  CHECK(ptrt_f32_to_f16(-0x1p-14f) == 0x8400);              /* the least normal */
  CHECK(ptrt_f32_to_f16(0x1p-14f - 0x1p-26f) == 0x0400);    /* rounds up into it */
  CHECK(ptrt_f32_to_f16(1e-10f) == 0x0000 && ptrt_f32_to_f16(-1e-10f) == 0x8000);
  CHECK(ptrt_f16_to_f32(0x0001) == 0x1p-24f && ptrt_f16_to_f32(0x03ff) == 1023 * 0x1p-24f);
  CHECK(ptrt_f16_to_f32(0x8200) == -512 * 0x1p-24f);
  CHECK(ptrt_f16_to_f32(0x7c00) == INFINITY && ptrt_f16_to_f32(0xfc00) == -INFINITY);

  /* every pattern goes to f32 and back unchanged (NaNs stay NaN) */
  int bad16 = 0, badbf = 0;
  for (uint32_t h = 0; h < 65536; h++) {
    float a = ptrt_f16_to_f32((uint16_t)h), b = ptrt_bf16_to_f32((uint16_t)h);
    if (isnan(a) ? !isnan(ptrt_f16_to_f32(ptrt_f32_to_f16(a))) : ptrt_f32_to_f16(a) != h) bad16++;
    if (isnan(b) ? !isnan(ptrt_bf16_to_f32(ptrt_f32_to_bf16(b))) : ptrt_f32_to_bf16(b) != h)
      badbf++;
  }
  CHECK_MSG(bad16 == 0 && badbf == 0, "%d f16 and %d bf16 patterns changed", bad16, badbf);

#if defined(__FLT16_MAX__)
  /* the compiler's conversion (IEEE, nearest even) on many f32 patterns */
  int differ = 0;
  uint32_t x = 12345;
  for (int i = 0; i < 2000000; i++) {
    x = x * 1664525u + 1013904223u;
    uint32_t u = (x & 0x80000000u) | ((x >> 1) % 0x48000000u); /* |v| up to about 2^17 */
    if (i & 1) u = (u & 0x80000000u) | (0x33000000u + (x >> 5) % 0x06000000u); /* tiny */
    float v = fb(u);
    _Float16 h = (_Float16)v;
    uint16_t want;
    memcpy(&want, &h, 2);
    if (ptrt_f32_to_f16(v) != want && differ++ < 5)
      fprintf(stderr, "f16 of %a (%08x): %04x, the compiler says %04x\n", (double)v, u,
              ptrt_f32_to_f16(v), want);
    if ((float)h != ptrt_f16_to_f32(want)) differ++;
  }
  CHECK_MSG(differ == 0, "%d conversions differ from _Float16", differ);
#endif
}

/* ---- 2. the executor ----------------------------------------------------------- */

static ptc_module *parse(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "half.ptir", text, strlen(text));
  if (m && ptc_verify_module(m) != 0) {
    ptc_module_destroy(m);
    m = NULL;
  }
  if (!m) fprintf(stderr, "%s\n%s\n", ptc_ctx_diag_text(ctx), text);
  return m;
}

typedef struct run_out {
  int rc;
  int nres;
  void *res[8];
  ptc_dtype dt[8];
  int64_t numel[8];
  int64_t ws_planned, ws_measured, peak_planned, peak_measured, live;
  char diag[2048];
} run_out;

/* Runs the only function of m with variables and arguments filled by val
 * (rounded as ref, the 16-bit module, has them), on 2 threads. */
static void run(const ptc_module *ref, ptc_module *m, bool check_finite, run_out *o) {
  memset(o, 0, sizeof *o);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_pool *pool = ptrt_pool_create(ctx, 2);
  ptrt_env env = {ctx, pool, ptrt_comm_single(), NULL};
  ptrt_vars *vars = ptrt_vars_create(ctx, m, NULL);
  ptc_func *f = m->funcs[0];
  ptrt_program *prog = vars ? ptrt_program_create(&env, f, vars, NULL) : NULL;
  o->rc = prog ? 0 : -1;
  if (prog) {
    for (int32_t p = 0; p < m->nparams; p++)
      for (int64_t k = 0; k < ptc_type_numel(&m->params[p].type); k++)
        test_half_store(ptrt_vars_data(vars, p), m->params[p].type.dtype, k,
                        test_half_value(p, k, ref->params[p].type.dtype));
    for (int32_t a = 0; a < f->nargs; a++) {
      const ptc_type *t = &f->values[f->args[a]].type;
      for (int64_t k = 0; k < ptc_type_numel(t); k++) {
        if (t->dtype == PTC_DTYPE_I32)
          ((int32_t *)ptrt_program_arg(prog, a))[k] = (int32_t)((k * 7 + 3) % 10);
        else
          test_half_store(ptrt_program_arg(prog, a), t->dtype, k, /* a seed: 0.25 */
                          t->rank == 0 ? 0.25f : test_half_value(100 + a, k, PTC_DTYPE_F32));
      }
    }
    ptrt_program_set_check_finite(prog, check_finite);
    o->rc = ptrt_program_run(prog, true);
    ptrt_mem mem = ptrt_program_mem(prog);
    o->ws_planned = ptrt_program_planned_workspace(prog);
    o->ws_measured = mem.workspace;
    o->peak_planned = ptrt_program_planned_peak(prog);
    o->peak_measured = mem.peak;
    o->live = mem.live;
    const ptc_op *ret = &f->ops[f->nops - 1];
    o->nres = ret->nin;
    for (int r = 0; o->rc == 0 && r < ret->nin; r++) {
      const ptc_type *t = &f->values[ret->in[r]].type;
      int64_t b = ptrt_program_result_bytes(prog, r);
      o->res[r] = malloc((size_t)b + 1);
      memcpy(o->res[r], ptrt_program_result(prog, r), (size_t)b);
      o->dt[r] = t->dtype;
      o->numel[r] = ptc_type_numel(t);
    }
  }
  snprintf(o->diag, sizeof o->diag, "%s", ptc_ctx_diag_text(ctx));
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(vars);
  ptrt_pool_destroy(pool);
  ptc_ctx_destroy(ctx);
}

static void run_free(run_out *o) {
  for (int r = 0; r < 8; r++) free(o->res[r]);
}

/* One function text with $T, in t (bf16 or f16) and in f32: the 16-bit
 * results equal the f32 ones rounded, bit for bit; the plan's workspace
 * is what the run used.  want_ws >= 0: the plan's workspace too. */
static void check_exact(const char *what, const char *text, ptc_dtype t, int64_t want_ws) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  char *th = test_subst_dtype(text, t), *tf = test_subst_dtype(text, PTC_DTYPE_F32);
  ptc_module *mh = parse(ctx, th), *mf = parse(ctx, tf);
  CHECK_MSG(mh && mf, "%s (%s) does not parse", what, ptc_dtype_name(t));
  if (mh && mf) {
    run_out h, g;
    run(mh, mh, false, &h);
    run(mh, mf, false, &g);
    CHECK_MSG(h.rc == 0 && g.rc == 0, "%s (%s): %s%s", what, ptc_dtype_name(t), h.diag, g.diag);
    for (int r = 0; h.rc == 0 && g.rc == 0 && r < h.nres; r++) {
      int bad = test_half_mismatches(what, t, r, h.dt[r], h.res[r], h.numel[r],
                                     (const float *)g.res[r]);
      CHECK_MSG(bad == 0, "%s (%s): result %d differs in %d elements", what, ptc_dtype_name(t),
                r, bad);
    }
    CHECK_MSG(h.ws_planned == h.ws_measured && h.ws_planned > 0,
              "%s (%s): workspace planned %lld, used %lld", what, ptc_dtype_name(t),
              (long long)h.ws_planned, (long long)h.ws_measured);
    CHECK_MSG(want_ws < 0 || h.ws_planned == want_ws, "%s (%s): workspace %lld, want %lld", what,
              ptc_dtype_name(t), (long long)h.ws_planned, (long long)want_ws);
    CHECK_MSG(h.peak_planned == h.peak_measured && h.live == 0,
              "%s (%s): peak planned %lld, measured %lld, live %lld", what, ptc_dtype_name(t),
              (long long)h.peak_planned, (long long)h.peak_measured, (long long)h.live);
    /* the f32 function needs none */
    CHECK(g.ws_planned == 0 && g.ws_measured == 0 && g.peak_planned == g.peak_measured);
    run_free(&h);
    run_free(&g);
  }
  if (mh) ptc_module_destroy(mh);
  if (mf) ptc_module_destroy(mf);
  free(th);
  free(tf);
  ptc_ctx_destroy(ctx);
}

static const struct {
  const char *what;
  int64_t ws; /* the workspace in bytes, -1: not stated */
  const char *text;
} exact_cases[] = {
    {"matmul", 128 + 192 + 128, /* a [4,8], b [8,5], y [4,5]: 4 bytes each, 64-aligned */
     "module @m {\n  param @a : $T[4,8]\n  param @b : $T[8,5]\n"
     "  func @f() -> $T[4,5] {\n    %y = matmul @a, @b : $T[4,5]\n    return %y\n  }\n}\n"},
    {"matmul_t", -1,
     "module @m {\n  param @a : $T[2,3,8]\n  param @b : $T[5,8]\n"
     "  func @f() -> $T[2,3,5] {\n    %y = matmul @a, @b {transpose_b = true} : $T[2,3,5]\n"
     "    return %y\n  }\n}\n"},
    {"add+mul+gelu", -1,
     "module @m {\n  param @a : $T[4,8]\n  param @c : $T[8]\n"
     "  func @f() -> ($T[4,8], $T[4,8], $T[4,8], $T[4,8]) {\n    %y = add @a, @c : $T[4,8]\n"
     "    %z = mul @a, @a : $T[4,8]\n    %g = gelu @a : $T[4,8]\n"
     "    %e = exp @a : $T[4,8]\n    return %y, %z, %g, %e\n  }\n}\n"},
    {"layernorm", -1,
     "module @m {\n  param @x : $T[6,16]\n  param @g : $T[16]\n  param @b : $T[16]\n"
     "  func @f() -> $T[6,16] {\n    %y = layernorm @x, @g, @b {eps = 1e-05} : $T[6,16]\n"
     "    return %y\n  }\n}\n"},
    {"softmax", -1,
     "module @m {\n  param @x : $T[6,16]\n"
     "  func @f() -> ($T[6,16], $T[16]) {\n    %y = softmax @x {axis = 1} : $T[6,16]\n"
     "    %s = reduce_sum @x {axes = [0]} : $T[16]\n    return %y, %s\n  }\n}\n"},
    {"attention", -1,
     "module @m {\n  param @q : $T[1,40,2,8]\n  param @k : $T[1,40,2,8]\n"
     "  param @v : $T[1,40,2,8]\n"
     "  func @f() -> $T[1,40,2,8] {\n"
     "    %y = attention @q, @k, @v {causal = true, scale = 0.35} : $T[1,40,2,8]\n"
     "    return %y\n  }\n}\n"},
    {"cross_entropy", -1,
     "module @m {\n  param @l : $T[6,10]\n"
     "  func @f(%seed: f32[], %t: i32[6]) -> (f32[], $T[6,10]) {\n"
     "    %loss = cross_entropy @l, %t {classes = 10} : f32[]\n"
     "    %g = cross_entropy_grad %seed, @l, %t {classes = 10} : $T[6,10]\n"
     "    return %loss, %g\n  }\n}\n"},
    {"embedding", -1,
     "module @m {\n  param @w : $T[10,8]\n"
     "  func @f(%ids: i32[3,4]) -> $T[3,4,8] {\n    %y = embedding %ids, @w : $T[3,4,8]\n"
     "    return %y\n  }\n}\n"},
    {"shape ops", 128 * 2, /* only the add computes: 32 elements in, 32 out */
     "module @m {\n  param @a : $T[4,8]\n"
     "  func @f() -> ($T[32], $T[4,4], $T[8,8], $T[8,4], $T[4,8]) {\n"
     "    %r = reshape @a : $T[32]\n"
     "    %s = slice @a {axis = 1, end = 6, start = 2} : $T[4,4]\n"
     "    %c = concat @a, @a {axis = 0} : $T[8,8]\n"
     "    %t = transpose @a {perm = [1, 0]} : $T[8,4]\n"
     "    %n = neg @a : $T[4,8]\n"
     "    return %r, %s, %c, %t, %n\n  }\n}\n"},
};

/* cast and constant: the arguments are the edge values */
static void test_cast(void) {
  static const uint32_t edges[16] = {
      0x3f808000u, 0x3f818000u, 0x7f7fffffu, 0x7f800001u, 0xff800000u, 0x477ff000u,
      0x477fefffu, 0x33800000u, 0x33000000u, 0x33c00000u, 0x387fc000u, 0x00000001u,
      0x80000000u, 0x3dcccccdu, 0xc2f6e979u, 0x4b000001u};
  const char *text =
      "module @m {\n  func @f(%x: f32[16]) -> (bf16[16], f16[16], f16[16], bf16[16], f32[16], "
      "i32[16], bf16[3], f16[2]) {\n"
      "    %b = cast %x {to = bf16} : bf16[16]\n    %h = cast %x {to = f16} : f16[16]\n"
      "    %bh = cast %b {to = f16} : f16[16]\n    %hb = cast %h {to = bf16} : bf16[16]\n"
      "    %bf = cast %b {to = f32} : f32[16]\n    %hi = cast %h {to = i32} : i32[16]\n"
      "    %k = constant {value = 0.1} : bf16[3]\n    %k2 = constant {value = 1e+06} : f16[2]\n"
      "    return %b, %h, %bh, %hb, %bf, %hi, %k, %k2\n  }\n}\n";
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = parse(ctx, text);
  CHECK(m);
  if (!m) {
    ptc_ctx_destroy(ctx);
    return;
  }
  ptrt_env env = {ctx, NULL, ptrt_comm_single(), NULL};
  ptrt_vars *vars = ptrt_vars_create(ctx, m, NULL);
  ptrt_program *prog = ptrt_program_create(&env, m->funcs[0], vars, NULL);
  CHECK_MSG(prog, "%s", ptc_ctx_diag_text(ctx));
  if (prog) {
    float *x = ptrt_program_arg(prog, 0);
    for (int i = 0; i < 16; i++) x[i] = fb(edges[i]);
    CHECK_MSG(ptrt_program_run(prog, true) == 0, "%s", ptc_ctx_diag_text(ctx));
    const uint16_t *b = ptrt_program_result(prog, 0), *h = ptrt_program_result(prog, 1),
                   *bh = ptrt_program_result(prog, 2), *hb = ptrt_program_result(prog, 3),
                   *k = ptrt_program_result(prog, 6), *k2 = ptrt_program_result(prog, 7);
    const float *bf = ptrt_program_result(prog, 4);
    const int32_t *hi = ptrt_program_result(prog, 5);
    for (int i = 0; i < 16; i++) {
      float v = fb(edges[i]);
      CHECK_MSG(b[i] == ptrt_f32_to_bf16(v) && h[i] == ptrt_f32_to_f16(v), "edge %d", i);
      CHECK_MSG(bh[i] == ptrt_f32_to_f16(ptrt_bf16_to_f32(b[i])), "edge %d", i);
      CHECK_MSG(hb[i] == ptrt_f32_to_bf16(ptrt_f16_to_f32(h[i])), "edge %d", i);
      CHECK_MSG(ptrt_f32_bits(bf[i]) == (uint32_t)b[i] << 16 || (isnan(bf[i]) && isnan(v)),
                "edge %d", i);
      float hv = ptrt_f16_to_f32(h[i]);
      int32_t want = isnan(hv) ? 0 : hv > 2147483647.0f ? 2147483647
                     : hv < -2147483647.0f ? -2147483647 : (int32_t)hv;
      CHECK_MSG(hi[i] == want, "edge %d: %d, want %d", i, hi[i], want);
    }
    CHECK(b[0] == 0x3f80 && b[1] == 0x3f82 && b[2] == 0x7f80 && isnan(ptrt_bf16_to_f32(b[3])));
    CHECK(h[5] == 0x7c00 && h[6] == 0x7bff && h[7] == 0x0001 && h[8] == 0 && h[9] == 0x0002);
    CHECK(k[0] == ptrt_f32_to_bf16(0.1f) && k[2] == k[0] && k2[0] == 0x7c00 && k2[1] == 0x7c00);
    /* nothing of it computes: no workspace */
    CHECK(ptrt_program_planned_workspace(prog) == 0 && ptrt_program_mem(prog).workspace == 0);
  }
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(vars);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* --check-numerics sees 16-bit results; 16-bit arguments; f64 refused */
static void test_refusals(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  /* exp of values up to 2 is finite; times 40000 in f16 is not */
  ptc_module *m = parse(ctx, "module @m {\n  param @a : f16[4,8]\n"
                             "  func @f() -> f16[4,8] {\n"
                             "    %k = constant {value = 40000.0} : f16[]\n"
                             "    %e = exp @a : f16[4,8]\n"
                             "    %y = mul %e, %k : f16[4,8] loc(\"x.ptg\":3:5)\n"
                             "    return %y\n  }\n}\n");
  if (m) {
    run_out o;
    run(m, m, true, &o);
    CHECK_MSG(o.rc != 0 && strstr(o.diag, "x.ptg:3:5: error: mul: result 0 (f16) holds an "
                                          "infinity at element"), "%s", o.diag);
    run_free(&o);
    run(m, m, false, &o);
    int infs = 0; /* without the check the run goes on, with infinities */
    for (int k = 0; o.rc == 0 && k < 32; k++)
      infs += ptrt_f16_to_f32(((const uint16_t *)o.res[0])[k]) == INFINITY;
    CHECK_MSG(o.rc == 0 && infs > 0, "%s", o.diag);
    run_free(&o);
    ptc_module_destroy(m);
  }
  /* a 16-bit argument holds its 2-byte elements (a pipeline's stash) */
  m = parse(ctx, "module @m {\n  func @f(%x: bf16[4]) -> bf16[4] {\n"
                 "    %y = neg %x : bf16[4]\n    return %y\n  }\n}\n");
  if (m) {
    ptrt_env env = {ctx, NULL, ptrt_comm_single(), NULL};
    ptrt_program *prog = ptrt_program_create(&env, m->funcs[0], NULL, NULL);
    CHECK_MSG(prog && ptrt_program_arg_bytes(prog, 0) == 8, "%s", ptc_ctx_diag_text(ctx));
    if (prog) {
      uint16_t *x = ptrt_program_arg(prog, 0);
      for (int i = 0; i < 4; i++) x[i] = ptrt_f32_to_bf16((float)i + 0.5f);
      CHECK(ptrt_program_run(prog, true) == 0);
      const uint16_t *y = ptrt_program_result(prog, 0);
      for (int i = 0; i < 4; i++) CHECK(y[i] == ptrt_f32_to_bf16(-(float)i - 0.5f));
    }
    ptrt_program_destroy(prog);
    ptc_module_destroy(m);
  }
  /* f64 is still not run */
  m = parse(ctx, "module @m {\n  param @a : f64[4]\n  func @f() -> f64[4] {\n"
                 "    %y = neg @a : f64[4]\n    return %y\n  }\n}\n");
  if (m) {
    run_out o;
    run(m, m, false, &o);
    CHECK_MSG(o.rc != 0 && strstr(o.diag, "f64"), "%s", o.diag);
    run_free(&o);
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

/* Every variable of a and b (same module) holds the same bytes. */
static bool same_vars(const ptrt_vars *a, const ptrt_vars *b) {
  for (int32_t p = 0; p < a->mod->nparams; p++)
    if (memcmp(ptrt_vars_data(a, p), ptrt_vars_data(b, p),
               (size_t)ptc_type_bytes(&a->mod->params[p].type)) != 0)
      return false;
  return true;
}

/* ---- 3. variables and checkpoints ---------------------------------------------- */

static const char *vars_text =
    "module @v mesh<dp=2> {\n"
    "  param @w : f32[4,6] shard<dp,_> init normal(0.5)\n"
    "  param @u : f32[4,6] init scaled(0.5, 2)\n"
    "  param @h : f16[4,6] shard<_,dp> init normal(1.5)\n"
    "  param @o : bf16[5] init ones\n"
    "  state @w.same : bf16[4,6] shard<dp,_> init copy(@w)\n"  /* the same piece */
    "  state @u.piece : f16[4,6] shard<_,dp> init copy(@u)\n"  /* the source is whole */
    "  state @w.other : bf16[4,6] shard<_,dp> init copy(@w)\n" /* sharded otherwise */
    "  state @h.f32 : f32[4,6] shard<dp,_> init copy(@h)\n"    /* 16 to 32 bits */
    "  state @h.bf16 : bf16[4,6] init copy(@h)\n"
    "}\n";

/* The same variables, every one f32 and whole, on one device. */
static const char *vars_f32_text =
    "module @v {\n"
    "  param @w : f32[4,6] init normal(0.5)\n"
    "  param @u : f32[4,6] init scaled(0.5, 2)\n"
    "  param @h : f32[4,6] init normal(1.5)\n"
    "  param @o : f32[5] init ones\n"
    "}\n";

/* element (r, c) of variable p as v holds it (rank 1: element c) */
static float held(const ptrt_vars *v, int32_t p, int64_t r, int64_t c) {
  const ptc_param *pp = &v->mod->params[p];
  const void *x = ptrt_vars_data(v, p);
  int64_t k = pp->type.rank == 2 ? r * pp->type.dims[1] + c : c;
  return pp->type.dtype == PTC_DTYPE_F32 ? ((const float *)x)[k]
                                         : ptrt_half_load(pp->type.dtype, x, k);
}

static void test_vars(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = parse(ctx, vars_text), *mf = parse(ctx, vars_f32_text);
  CHECK(m && mf);
  if (!m || !mf) {
    if (m) ptc_module_destroy(m);
    if (mf) ptc_module_destroy(mf);
    ptc_ctx_destroy(ctx);
    return;
  }
  ptrt_vars *ref = ptrt_vars_create(ctx, mf, NULL);
  ptrt_vars_init(ref, 7, NULL);
  const char *names[] = {"w", "u", "h", "o", "w.same", "u.piece", "w.other", "h.f32", "h.bf16"};
  const char *src[] = {"w", "u", "h", "o", "w", "u", "w", "h", "h"};
  /* whole, on one device; then each device of the mesh its pieces */
  ptc_module *lm = ptc_module_localize(m);
  for (int dev = -1; dev < 2; dev++) {
    ptrt_comm comm = *ptrt_comm_single();
    const ptc_module *vm = m;
    if (dev >= 0) {
      comm.mesh = m->mesh;
      ptc_mesh_coord(&m->mesh, dev, comm.coord);
      vm = lm;
    }
    ptrt_vars *v = ptrt_vars_create(ctx, vm, dev >= 0 ? &comm : NULL);
    CHECK_MSG(v, "%s", ptc_ctx_diag_text(ctx));
    if (!v) continue;
    ptrt_vars_init(v, 7, NULL);
    for (int i = 0; i < 9; i++) {
      int32_t p = ptc_module_find_param(vm, names[i]), s = ptc_module_find_param(mf, src[i]);
      const ptc_param *pp = &vm->params[p];
      int64_t gd[PTC_MAX_RANK], org[PTC_MAX_RANK];
      ptrt_block_origin(&v->mesh, v->coord, &pp->type, &pp->shard, gd, org);
      /* the source's whole value, rounded as the source holds it, then as
       * the variable does */
      ptc_dtype sdt = m->params[ptc_module_find_param(m, src[i])].type.dtype;
      int bad = 0;
      int64_t rows = pp->type.rank == 2 ? pp->type.dims[0] : 1,
              cols = pp->type.dims[pp->type.rank - 1];
      for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
          int64_t gk = pp->type.rank == 2 ? (org[0] + r) * gd[1] + org[1] + c : c;
          float want = ptrt_round_to(pp->type.dtype,
                                     ptrt_round_to(sdt, ((float *)ptrt_vars_data(ref, s))[gk]));
          float got = held(v, p, r, c);
          if (ptrt_f32_bits(got) != ptrt_f32_bits(want) && bad++ < 3)
            fprintf(stderr, "@%s on device %d, (%lld, %lld): %a, want %a\n", names[i], dev,
                    (long long)r, (long long)c, (double)got, (double)want);
        }
      CHECK_MSG(bad == 0, "@%s on device %d: %d elements differ", names[i], dev, bad);
    }
    /* a refresh after the sources change follows them */
    if (dev < 0) {
      int32_t w = ptc_module_find_param(m, "w"), ws = ptc_module_find_param(m, "w.same");
      ((float *)ptrt_vars_data(v, w))[3] = 1.0f / 3.0f;
      ptrt_vars_refresh_copies(v, 7, NULL);
      CHECK(((uint16_t *)ptrt_vars_data(v, ws))[3] == ptrt_f32_to_bf16(1.0f / 3.0f));
    }
    ptrt_vars_destroy(v);
  }

  /* a safetensors checkpoint: BF16 and F16 tensors, back bit for bit */
  ptrt_vars *v = ptrt_vars_create(ctx, m, NULL), *back = ptrt_vars_create(ctx, m, NULL);
  ptrt_vars_init(v, 11, NULL);
  ptrt_vars_init(back, 12, NULL);
  CHECK(ptrt_save_checkpoint(ctx, file("c.safetensors"), v, 5) == 0);
  ptrt_st *st = ptrt_st_open(ctx, file("c.safetensors"));
  CHECK(st);
  if (st) {
    const ptrt_st_tensor *th = ptrt_st_find(st, "h"), *tb = ptrt_st_find(st, "w.same");
    CHECK(th && th->dtype == PTC_DTYPE_F16 && th->end - th->begin == 48);
    CHECK(tb && tb->dtype == PTC_DTYPE_BF16 && tb->end - tb->begin == 48);
    ptrt_st_close(st);
  }
  int64_t step = 0;
  CHECK_MSG(ptrt_load_checkpoint(ctx, file("c.safetensors"), back, &step) == 0 && step == 5,
            "%s", ptc_ctx_diag_text(ctx));
  CHECK(same_vars(v, back));
  /* a sharded checkpoint directory, written by the two devices of the mesh
   * one after the other is not collective: write it whole, read a piece */
  ptrt_ckpt_write w = {.dir = file("ck"), .step = 3, .global = m, .model = "v",
                       .settings = NULL, .written_by = "test", .mesh = "one device"};
  CHECK_MSG(ptrt_ckpt_save(ctx, &w, NULL, v, NULL) == 0, "%s", ptc_ctx_diag_text(ctx));
  char dir[600];
  snprintf(dir, sizeof dir, "%s/step-3", file("ck"));
  ptrt_ckpt *ck = ptrt_ckpt_open(ctx, dir);
  CHECK_MSG(ck, "%s", ptc_ctx_diag_text(ctx));
  if (ck) {
    const ptrt_ckpt_tensor *t = ptrt_ckpt_find(ck, "h.bf16");
    CHECK(t && t->dtype == PTC_DTYPE_BF16);
    ptrt_vars *w2 = ptrt_vars_create(ctx, m, NULL);
    memset(w2->base, 0, (size_t)w2->bytes);
    CHECK_MSG(ptrt_ckpt_load_vars(ctx, ck, w2) == 0, "%s", ptc_ctx_diag_text(ctx));
    CHECK(same_vars(v, w2));
    ptrt_vars_destroy(w2);
    /* device 1's pieces */
    ptrt_comm comm = *ptrt_comm_single();
    comm.mesh = m->mesh;
    ptc_mesh_coord(&m->mesh, 1, comm.coord);
    ptrt_vars *p1 = ptrt_vars_create(ctx, lm, &comm);
    CHECK_MSG(ptrt_ckpt_load_vars(ctx, ck, p1) == 0, "%s", ptc_ctx_diag_text(ctx));
    int32_t hp = ptc_module_find_param(m, "h");
    /* @h is split on columns: device 1 holds columns 3..5 */
    CHECK(held(p1, hp, 2, 1) == held(v, hp, 2, 4));
    int32_t wp = ptc_module_find_param(m, "w.same");
    CHECK(held(p1, wp, 1, 5) == held(v, wp, 3, 5));
    ptrt_vars_destroy(p1);
    ptrt_ckpt_close(ck);
  }
  /* a dtype that does not match is refused, naming both */
  ptc_module *m2 = parse(ctx, "module @v {\n  param @w : f32[4,6]\n  param @u : f32[4,6]\n"
                              "  param @h : f32[4,6]\n  param @o : bf16[5]\n"
                              "  state @w.same : bf16[4,6]\n  state @u.piece : f16[4,6]\n"
                              "  state @w.other : bf16[4,6]\n  state @h.f32 : f32[4,6]\n"
                              "  state @h.bf16 : bf16[4,6]\n}\n");
  if (m2) {
    ptrt_vars *v2 = ptrt_vars_create(ctx, m2, NULL);
    CHECK(ptrt_load_checkpoint(ctx, file("c.safetensors"), v2, &step) != 0 &&
          strstr(ptc_ctx_diag_text(ctx), "tensor 'h' is F16[4,6], but the parameter is F32[4,6]"));
    ptrt_vars_destroy(v2);
    ptc_module_destroy(m2);
  }
  ptrt_vars_destroy(v);
  ptrt_vars_destroy(back);
  ptrt_vars_destroy(ref);
  ptc_module_destroy(lm);
  ptc_module_destroy(m);
  ptc_module_destroy(mf);
  ptc_ctx_destroy(ctx);
}

/* ---- 4. the plan ------------------------------------------------------------------ */

static void test_plan(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = parse(ctx, "module @m {\n  param @a : bf16[4,8]\n  param @c : f32[8]\n"
                             "  func @f() -> (bf16[4,8], f32[4,8]) {\n"
                             "    %x = gelu @a : bf16[4,8]\n"
                             "    %y = tanh %x : bf16[4,8]\n"
                             "    %z = cast %y {to = f32} : f32[4,8]\n"
                             "    %w = add %z, @c : f32[4,8]\n"
                             "    %v = slice %y {axis = 1, end = 8, start = 0} : bf16[4,8]\n"
                             "    return %v, %w\n  }\n}\n");
  CHECK(m);
  if (m) {
    ptc_func *f = m->funcs[0];
    ptc_liveness l;
    ptc_liveness_compute(&l, f, true, false, false);
    CHECK(l.workspace[0] == 256 && l.workspace[1] == 256);
    CHECK(l.workspace[2] == 0 && l.workspace[3] == 0 && l.workspace[4] == 0);
    CHECK(l.workspace_peak == 256 && l.workspace_offset % 64 == 0 &&
          l.workspace_offset >= l.peak && l.total == l.workspace_offset + 256);
    CHECK(ptc_plan_transient_peak(f) == l.total);
    CHECK(ptc_op_workspace(f, &f->ops[0]) == 256 && ptc_op_moves_bytes(PTC_OP_SLICE) &&
          !ptc_op_moves_bytes(PTC_OP_GELU));
    ptc_liveness_fini(&l);
    /* loss_only: only what the first result needs */
    ptc_liveness_compute(&l, f, false, true, false);
    CHECK(l.workspace[3] == 0 && l.workspace_peak == 256);
    ptc_liveness_fini(&l);

    /* fuse groups the ops with 16-bit values too (their kernels load and
     * store 16 bits, codegen/cpu_emit.c); inside a group an op needs no
     * workspace, so a plan with groups has none left but the slice's */
    ptc_pipeline *pl = ptc_pipeline_parse(ctx, "fuse");
    CHECK_MSG(pl && ptc_pipeline_run(m, pl, NULL) == 0, "%s", ptc_ctx_diag_text(ctx));
    ptc_pipeline_destroy(pl);
    for (int32_t i = 0; i < 4; i++)
      CHECK_MSG(ptc_op_group(&f->ops[i]) >= 0, "op %d (%s) is not in a group", i,
                ptc_opinfo_get(f->ops[i].code)->name);
    CHECK(ptc_op_group(&f->ops[4]) < 0); /* slice only moves bytes */
    ptc_liveness_compute(&l, f, true, false, true);
    for (int32_t i = 0; i < f->nops; i++) CHECK_MSG(l.workspace[i] == 0, "op %d: workspace", i);
    CHECK(l.workspace_peak == 0 && l.total == l.peak);
    ptc_liveness_fini(&l);
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

int main(void) {
  scratch_init("test_rt_half");
  test_conversions();
  for (size_t i = 0; i < sizeof exact_cases / sizeof *exact_cases; i++) {
    check_exact(exact_cases[i].what, exact_cases[i].text, PTC_DTYPE_BF16, exact_cases[i].ws);
    check_exact(exact_cases[i].what, exact_cases[i].text, PTC_DTYPE_F16, exact_cases[i].ws);
  }
  test_cast();
  test_refusals();
  test_vars();
  test_plan();
  scratch_fini();
  return test_report("test_rt_half");
}
