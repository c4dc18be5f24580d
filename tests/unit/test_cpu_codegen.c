/* test_cpu_codegen.c -- the LLVM CPU kernels of fused groups, against the
 * reference evaluator.
 *
 * Each case is a function made only of groups (the fuse pass makes them,
 * or the text states them).  The harness compiles it to a shared object,
 * dlopen()s it and runs every group's kernel on random data:
 *   - in one call over all the work,
 *   - over random [begin, end) splits (not multiples of the vector width,
 *     rows cut anywhere), each accumulating output into its own partial
 *     that the harness combines, as the ABI says,
 *   - and, when the runtime is built, through runtime/fused.c on 1 and 4
 *     threads (which must agree bit for bit),
 * then compares every result with ptc_eval_func (double precision) at an
 * f32 tolerance.  The transcendentals are checked against libm in ulps over
 * every binade and at the extremes (subnormals, overflow, inf, NaN).
 *
 * PTC_BENCH=1 in the environment also times groups of GPT-2 124M's shapes
 * against the runtime's own kernels, on 1 and PTC_BENCH_THREADS (default
 * 2) threads: a measurement, never a check.
 *
 * Exits 77 (skipped) when ptc was built without LLVM or no C compiler is
 * there to link kernels.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ptc_config.h"
#include "test.h"

#if PTC_HAVE_LLVM
#include <dlfcn.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codegen/codegen.h"
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#if PTC_TEST_RUNTIME
#include "runtime/fused.h"
#endif

typedef int32_t (*kernel_fn)(void *const *bufs, int64_t begin, int64_t end);

static char tmpdir[64];
static int so_counter;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}
static int64_t rand_in(int64_t lo, int64_t hi) { /* [lo, hi] */
  return lo + (int64_t)(next_rand() % (uint64_t)(hi - lo + 1));
}

/* ---- buffers ---------------------------------------------------------------- */

typedef struct buf {
  void *p;
  int64_t n;
  ptc_dtype t;
} buf;

static buf buf_new(const ptc_type *t) {
  buf b = {NULL, ptc_type_numel(t), t->dtype};
  b.p = calloc((size_t)b.n + 16, 8);
  return b;
}

static double buf_get(const buf *b, int64_t i) {
  switch (b->t) {
  case PTC_DTYPE_I32: return ((int32_t *)b->p)[i];
  case PTC_DTYPE_I64: return (double)((int64_t *)b->p)[i];
  default: return ((float *)b->p)[i];
  }
}

static void buf_set(buf *b, int64_t i, double v) {
  switch (b->t) {
  case PTC_DTYPE_I32: ((int32_t *)b->p)[i] = (int32_t)v; break;
  case PTC_DTYPE_I64: ((int64_t *)b->p)[i] = (int64_t)v; break;
  default: ((float *)b->p)[i] = (float)v; break;
  }
}

static void buf_fill(buf *b, double v) {
  for (int64_t i = 0; i < b->n; i++) buf_set(b, i, v);
}

/* ---- comparing -------------------------------------------------------------- */

typedef struct tol {
  double rtol, atol; /* atol is relative to the largest |want| */
} tol;

static int compare(const char *what, const buf *got, const ptc_tensor *want, tol t) {
  double mx = 0;
  for (int64_t i = 0; i < got->n; i++)
    if (isfinite(want->data[i])) mx = fabs(want->data[i]) > mx ? fabs(want->data[i]) : mx;
  int bad = 0;
  for (int64_t i = 0; i < got->n; i++) {
    double g = buf_get(got, i), w = want->data[i];
    bool ok;
    if (isnan(w)) ok = isnan(g);
    else if (isinf(w)) ok = g == w;
    else ok = fabs(g - w) <= t.rtol * fabs(w) + t.atol * mx + 1e-30;
    if (!ok && bad++ < 3)
      fprintf(stderr, "  %s[%lld]: got %.9g want %.9g\n", what, (long long)i, g, w);
  }
  return bad;
}

/* ---- running a function of groups ------------------------------------------- */

typedef enum run_mode { RUN_WHOLE, RUN_SPLITS, RUN_FUSED_1, RUN_FUSED_4 } run_mode;
static const char *const mode_names[] = {"one call", "random splits", "runtime, 1 thread",
                                         "runtime, 4 threads"};

/* Runs one group's kernel over [0, work) in random pieces, giving each
 * piece fresh partials for the accumulating outputs. */
static int run_splits(kernel_fn fn, const ptc_func *f, const ptc_group_sig *sig, buf *vals) {
  int32_t ns = sig->nin + sig->nout;
  void **bufs = calloc((size_t)ns, sizeof *bufs);
  buf *part = calloc((size_t)sig->nout + 1, sizeof *part);
  for (int32_t i = 0; i < sig->nin; i++) bufs[i] = vals[sig->in[i]].p;
  for (int32_t o = 0; o < sig->nout; o++) {
    buf *ob = &vals[sig->out[o]];
    bufs[sig->nin + o] = ob->p;
    if (sig->combine[o] == PTC_GROUP_STORE) continue;
    buf_fill(ob, sig->combine[o] == PTC_GROUP_MAX ? -INFINITY : 0);
    part[o] = buf_new(&f->values[sig->out[o]].type);
    bufs[sig->nin + o] = part[o].p;
  }
  int st = 0;
  for (int64_t b = 0; b < sig->work;) {
    int64_t len = rand_in(1, sig->work - b < 23 ? sig->work - b : sig->work / 3 + 1);
    if (b + len > sig->work) len = sig->work - b;
    for (int32_t o = 0; o < sig->nout; o++)
      if (sig->combine[o] != PTC_GROUP_STORE)
        buf_fill(&part[o], sig->combine[o] == PTC_GROUP_MAX ? -INFINITY : 0);
    st |= fn(bufs, b, b + len);
    for (int32_t o = 0; o < sig->nout; o++) {
      if (sig->combine[o] == PTC_GROUP_STORE) continue;
      buf *ob = &vals[sig->out[o]];
      for (int64_t i = 0; i < ob->n; i++) {
        double p = buf_get(&part[o], i), c = buf_get(ob, i);
        buf_set(ob, i, sig->combine[o] == PTC_GROUP_MAX ? (p > c ? p : c) : c + p);
      }
    }
    b += len;
  }
  for (int32_t o = 0; o < sig->nout; o++) free(part[o].p);
  free(part);
  free(bufs);
  return st;
}

static int run_whole(kernel_fn fn, const ptc_group_sig *sig, buf *vals) {
  int32_t ns = sig->nin + sig->nout;
  void **bufs = calloc((size_t)ns, sizeof *bufs);
  for (int32_t i = 0; i < sig->nin; i++) bufs[i] = vals[sig->in[i]].p;
  for (int32_t o = 0; o < sig->nout; o++) {
    buf *ob = &vals[sig->out[o]];
    bufs[sig->nin + o] = ob->p;
    if (sig->combine[o] != PTC_GROUP_STORE)
      buf_fill(ob, sig->combine[o] == PTC_GROUP_MAX ? -INFINITY : 0);
  }
  int st = fn(bufs, 0, sig->work);
  free(bufs);
  return st;
}

typedef struct tcase {
  const char *name;
  const char *text;
  const char *pipeline; /* NULL: the text has its groups */
  int64_t int_hi;       /* integer args are filled in [0, int_hi) */
  tol t;
  int min_groups;
  int32_t expect_status; /* 0, or 1 when an index is out of range on purpose */
} tcase;

static const tol TOL = {3e-5, 3e-6};

static void fill_arg(ptc_tensor *t, const char *name, uint64_t seed, int64_t int_hi) {
  if (!ptc_dtype_is_float(t->type.dtype)) ptc_tensor_fill_random(t, seed, 0, (double)int_hi);
  else if (name && name[0] == 'p') ptc_tensor_fill_random(t, seed, 0.1, 3);
  else ptc_tensor_fill_random(t, seed, -3, 3);
}

/* Runs every group of f in `mode` on vals (args and params filled). */
static int32_t exec_groups(ptc_func *f, void *so, run_mode mode, buf *vals, const char *so_path) {
  int32_t status = 0;
#if PTC_TEST_RUNTIME
  ptrt_fused *lib = NULL;
  ptrt_pool *pool = NULL;
  if (mode >= RUN_FUSED_1) {
    lib = ptrt_fused_open(f->mod->ctx, so_path, f);
    CHECK(lib != NULL);
    if (!lib) return -1;
    pool = ptrt_pool_create(f->mod->ctx, mode == RUN_FUSED_4 ? 4 : 1);
  }
#else
  (void)so_path;
#endif
  for (int32_t i = 0; i < f->nops;) {
    if (f->ops[i].code == PTC_OP_RETURN) break;
    ptc_group_sig sig;
    if (ptc_group_signature(f, i, &sig) < 0) return -1;
    char name[48];
    ptc_group_kernel_name(sig.id, name, sizeof name);
    kernel_fn fn;
    void *sym = dlsym(so, name);
    memcpy(&fn, &sym, sizeof fn);
    CHECK_MSG(sym != NULL, "%s missing", name);
    if (!sym) return -1;
    for (int32_t o = 0; o < sig.nout; o++) /* poison what the kernel must write */
      buf_fill(&vals[sig.out[o]], vals[sig.out[o]].t == PTC_DTYPE_F32 ? NAN : -12345);
    if (mode == RUN_WHOLE) status |= run_whole(fn, &sig, vals);
    else if (mode == RUN_SPLITS) status |= run_splits(fn, f, &sig, vals);
#if PTC_TEST_RUNTIME
    else {
      const ptc_group_sig *ls = ptrt_fused_group_at(lib, i);
      CHECK(ls != NULL && ls->end == sig.end);
      void **bufs = calloc((size_t)(sig.nin + sig.nout), sizeof *bufs);
      for (int32_t k = 0; k < sig.nin; k++) bufs[k] = vals[sig.in[k]].p;
      for (int32_t o = 0; o < sig.nout; o++) bufs[sig.nin + o] = vals[sig.out[o]].p;
      if (ptrt_fused_run(f->mod->ctx, lib, ls, bufs, pool) < 0) status |= 1;
      free(bufs);
    }
#endif
    i = sig.end;
    ptc_group_sig_fini(&sig);
  }
#if PTC_TEST_RUNTIME
  ptrt_pool_destroy(pool);
  ptrt_fused_close(lib);
#endif
  return status;
}

static void run_case(const tcase *tc) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_parse_module(ctx, tc->name, tc->text, strlen(tc->text));
  CHECK_MSG(m != NULL, "%s: %s", tc->name, ptc_ctx_diag_text(ctx));
  if (!m) goto done_ctx;
  if (tc->pipeline) {
    ptc_pipeline *p = ptc_pipeline_parse(ctx, tc->pipeline);
    int rc = p ? ptc_pipeline_run(m, p, NULL) : -1;
    ptc_pipeline_destroy(p);
    CHECK_MSG(rc == 0, "%s: %s", tc->name, ptc_ctx_diag_text(ctx));
    if (rc) goto done;
  }
  ptc_func *f = m->funcs[0];
  int ngroups = 0;
  for (int32_t i = 0; i < f->nops - 1; i++) {
    bool grouped = ptc_op_group(&f->ops[i]) >= 0;
    CHECK_MSG(grouped, "%s: op %d '%s' is in no group", tc->name, i,
              ptc_opinfo_get(f->ops[i].code)->name);
    if (!grouped) goto done;
    if (i == 0 || ptc_op_group(&f->ops[i - 1]) != ptc_op_group(&f->ops[i])) ngroups++;
  }
  CHECK_MSG(ngroups >= tc->min_groups, "%s: %d groups", tc->name, ngroups);

  /* reference */
  ptc_tensor *args = calloc((size_t)f->nargs + 1, sizeof *args);
  ptc_tensor *params = calloc((size_t)m->nparams + 1, sizeof *params);
  ptc_tensor *res = calloc((size_t)f->nresults + 1, sizeof *res);
  for (int32_t i = 0; i < f->nargs; i++) {
    args[i] = ptc_tensor_new(&f->values[f->args[i]].type);
    fill_arg(&args[i], f->values[f->args[i]].name, 17 + (uint64_t)i, tc->int_hi);
  }
  for (int32_t i = 0; i < m->nparams; i++) {
    params[i] = ptc_tensor_new(&m->params[i].type);
    fill_arg(&params[i], m->params[i].name, 1000 + (uint64_t)i, tc->int_hi);
  }
  int erc = tc->expect_status ? 0 : ptc_eval_func(f, args, params, res);
  CHECK_MSG(erc == 0, "%s: eval: %s", tc->name, ptc_ctx_diag_text(ctx));

  /* kernels */
  char so[128];
  snprintf(so, sizeof so, "%s/k%d.so", tmpdir, so_counter++);
  ptc_buf info;
  ptc_buf_init(&info);
  int crc = ptc_codegen_cpu(m, "cpu", so, &info);
  CHECK_MSG(crc == 0, "%s: codegen: %s", tc->name, ptc_ctx_diag_text(ctx));
  void *h = crc == 0 ? dlopen(so, RTLD_NOW | RTLD_LOCAL) : NULL;
  CHECK_MSG(crc != 0 || h != NULL, "%s: dlopen: %s", tc->name, dlerror());
  if (erc == 0 && h) {
    buf *vals = calloc((size_t)f->nvalues + 1, sizeof *vals);
    for (int32_t v = 0; v < f->nvalues; v++) vals[v] = buf_new(&f->values[v].type);
    for (int32_t i = 0; i < f->nargs; i++)
      for (int64_t k = 0; k < ptc_type_numel(&args[i].type); k++)
        buf_set(&vals[f->args[i]], k, args[i].data[k]);
    for (int32_t v = 0; v < f->nvalues; v++)
      if (f->values[v].kind == PTC_VALUE_PARAM)
        for (int64_t k = 0; k < vals[v].n; k++)
          buf_set(&vals[v], k, params[f->values[v].def].data[k]);
    int nmodes = 2;
#if PTC_TEST_RUNTIME
    nmodes = 4;
    buf *one = calloc((size_t)f->nresults + 1, sizeof *one);
#endif
    const ptc_op *ret = &f->ops[f->nops - 1];
    for (int mode = 0; mode < nmodes; mode++) {
      if (tc->expect_status && mode >= RUN_FUSED_1) ptc_ctx_reset_errors(ctx);
      int32_t st = exec_groups(f, h, (run_mode)mode, vals, so);
      CHECK_MSG(st == tc->expect_status, "%s (%s): status %d", tc->name, mode_names[mode], st);
      if (tc->expect_status) continue;
      for (int32_t r = 0; r < ret->nin; r++) {
        char what[96];
        snprintf(what, sizeof what, "%s (%s) result %d", tc->name, mode_names[mode], r);
        int bad = compare(what, &vals[ret->in[r]], &res[r], tc->t);
        CHECK_MSG(bad == 0, "%s: %d elements off", what, bad);
#if PTC_TEST_RUNTIME
        buf *b = &vals[ret->in[r]];
        if (mode == RUN_FUSED_1) {
          one[r] = buf_new(&res[r].type);
          memcpy(one[r].p, b->p, (size_t)b->n * (size_t)ptc_dtype_size(b->t));
        } else if (mode == RUN_FUSED_4) {
          CHECK_MSG(memcmp(one[r].p, b->p, (size_t)b->n * (size_t)ptc_dtype_size(b->t)) == 0,
                    "%s: 4 threads differ from 1 thread", what);
        }
#endif
      }
    }
#if PTC_TEST_RUNTIME
    for (int32_t r = 0; r < f->nresults; r++) free(one[r].p);
    free(one);
#endif
    for (int32_t v = 0; v < f->nvalues; v++) free(vals[v].p);
    free(vals);
  }
  if (h) dlclose(h);
  unlink(so);
  ptc_buf_fini(&info);
  for (int32_t i = 0; i < f->nargs; i++) ptc_tensor_free(&args[i]);
  for (int32_t i = 0; i < m->nparams; i++) ptc_tensor_free(&params[i]);
  for (int32_t i = 0; i < f->nresults && erc == 0; i++) ptc_tensor_free(&res[i]);
  free(args);
  free(params);
  free(res);
done:
  ptc_module_destroy(m);
done_ctx:
  ptc_ctx_destroy(ctx);
}

/* ---- cases: every fusible op alone, with broadcasting ------------------------ */

static void test_single_ops(void) {
  static const char *const unary[] = {"neg", "exp", "tanh", "sigmoid", "relu", "gelu", "silu"};
  static const char *const positive[] = {"log", "sqrt", "rsqrt"};
  static const char *const binary[] = {"add", "sub", "mul", "div", "maximum"};
  static const char *const grads[] = {"relu_grad", "gelu_grad", "silu_grad"};
  char text[2048], name[64];
  for (int i = 0; i < PTC_ARRAY_LEN(unary) + PTC_ARRAY_LEN(positive); i++) {
    bool pos = i >= PTC_ARRAY_LEN(unary);
    const char *op = pos ? positive[i - PTC_ARRAY_LEN(unary)] : unary[i];
    snprintf(text, sizeof text,
             "module @m {\n  func @f(%%%s: f32[5,37]) -> f32[5,37] {\n"
             "    %%y = %s %%%s : f32[5,37]\n    return %%y\n  }\n}\n",
             pos ? "px" : "x", op, pos ? "px" : "x");
    snprintf(name, sizeof name, "single %s", op);
    tcase tc = {name, text, "fuse", 4, TOL, 1, 0};
    run_case(&tc);
  }
  /* binary ops against every broadcast pattern */
  static const char *const shapes[] = {"[5,37]", "[37]", "[5,1]", "[]", "[1,37]"};
  for (int i = 0; i < PTC_ARRAY_LEN(binary); i++)
    for (int s = 0; s < PTC_ARRAY_LEN(shapes); s++)
      for (int swap = 0; swap < 2; swap++) {
        bool div = strcmp(binary[i], "div") == 0;
        snprintf(text, sizeof text,
                 "module @m {\n  func @f(%%x: f32[5,37], %%py: f32%s) -> f32[5,37] {\n"
                 "    %%z = %s %s : f32[5,37]\n    return %%z\n  }\n}\n",
                 shapes[s], binary[i], swap && !div ? "%py, %x" : "%x, %py");
        snprintf(name, sizeof name, "%s x %s%s", binary[i], shapes[s], swap ? " swapped" : "");
        tcase tc = {name, text, "fuse", 4, TOL, 1, 0};
        run_case(&tc);
      }
  for (int i = 0; i < PTC_ARRAY_LEN(grads); i++) {
    snprintf(text, sizeof text,
             "module @m {\n  func @f(%%g: f32[3,41], %%x: f32[3,41]) -> f32[3,41] {\n"
             "    %%d = %s %%g, %%x : f32[3,41]\n    return %%d\n  }\n}\n",
             grads[i]);
    snprintf(name, sizeof name, "single %s", grads[i]);
    tcase tc = {name, text, "fuse", 4, TOL, 1, 0};
    run_case(&tc);
  }
  static const char *const cmps[] = {"ge", "gt", "eq"};
  for (int i = 0; i < 3; i++) {
    snprintf(text, sizeof text,
             "module @m {\n  func @f(%%x: f32[4,9], %%y: f32[9]) -> f32[4,9] {\n"
             "    %%a = maximum %%x, %%y : f32[4,9]\n"
             "    %%c = compare %%a, %%y {cmp = %s} : f32[4,9]\n    return %%c\n  }\n}\n",
             cmps[i]);
    snprintf(name, sizeof name, "compare %s", cmps[i]);
    tcase tc = {name, text, "fuse", 4, TOL, 1, 0};
    run_case(&tc);
  }
}

/* ---- cases: chains, integers, constants --------------------------------------- */

static const tcase fixed_cases[] = {
    {"bias + gelu",
     "module @m {\n  param @b : f32[67]\n"
     "  func @f(%x: f32[2,7,67]) -> (f32[2,7,67], f32[2,7,67]) {\n"
     "    %h = add %x, @b : f32[2,7,67]\n    %g = gelu %h : f32[2,7,67]\n"
     "    return %h, %g\n  }\n}\n",
     "fuse", 4, {3e-5, 3e-6}, 1, 0},
    {"activations and gradients in their tails",
     "module @m {\n  func @f(%x: f32[4,50], %g: f32[4,50]) -> (f32[4,50], f32[4,50], f32[4,50], "
     "f32[4,50], f32[4,50], f32[4,50], f32[4,50]) {\n"
     "    %k = constant {value = 15.0} : f32[]\n    %z = mul %x, %k : f32[4,50]\n"
     "    %a = gelu %z : f32[4,50]\n    %b = gelu_grad %g, %z : f32[4,50]\n"
     "    %c = silu %z : f32[4,50]\n    %d = silu_grad %g, %z : f32[4,50]\n"
     "    %e = sigmoid %z : f32[4,50]\n    %t = tanh %z : f32[4,50]\n"
     "    %r = relu_grad %g, %z : f32[4,50]\n"
     "    return %a, %b, %c, %d, %e, %t, %r\n  }\n}\n",
     "fuse", 4, {3e-5, 1e-7}, 1, 0},
    {"integer arithmetic and casts",
     "module @m {\n  func @f(%a: i32[6,11], %b: i32[11], %x: f32[6,11]) -> (i32[6,11], f32[6,11], i64[6,11]) {\n"
     "    %c = constant {value = 3} : i32[]\n"
     "    %s = add %a, %b : i32[6,11]\n    %m = mul %s, %c : i32[6,11]\n"
     "    %d = div %m, %b : i32[6,11]\n    %n = neg %d : i32[6,11]\n"
     "    %q = maximum %n, %a : i32[6,11]\n"
     "    %f = cast %q {to = f32} : f32[6,11]\n    %y = mul %f, %x : f32[6,11]\n"
     "    %t = cast %y {to = i32} : i32[6,11]\n    %u = cast %t {to = i64} : i64[6,11]\n"
     "    return %q, %y, %u\n  }\n}\n",
     "fuse", 5, {0, 0}, 1, 0},
    {"splat constants and broadcast_to",
     "module @m {\n  func @f(%x: f32[3,20], %y: f32[20]) -> f32[3,20] {\n"
     "    %c = constant {value = 0.5} : f32[3,20]\n"
     "    %b = broadcast_to %y : f32[3,20]\n"
     "    %s = mul %b, %c : f32[3,20]\n    %z = sub %x, %s : f32[3,20]\n"
     "    return %z\n  }\n}\n",
     "fuse", 4, {3e-6, 1e-7}, 1, 0},
    {"scalar chain feeding a big op",
     "module @m {\n  func @f(%n: f32[], %g: f32[300]) -> (f32[], f32[300]) {\n"
     "    %r = sqrt %n : f32[]\n    %e = constant {value = 1e-06} : f32[]\n"
     "    %c = constant {value = 1.0} : f32[]\n    %a = add %r, %e : f32[]\n"
     "    %m = maximum %a, %c : f32[]\n    %s = div %c, %m : f32[]\n"
     "    %y = mul %g, %s : f32[300]\n    return %s, %y\n  }\n}\n",
     "fuse", 4, {1e-6, 1e-7}, 1, 0},
    {"sums and max over leading axes (accumulated outputs)",
     "module @m {\n  func @f(%x: f32[64,37], %y: f32[64,37]) -> (f32[37], f32[], f32[37], f32[64,37]) {\n"
     "    %g = gelu_grad %x, %y : f32[64,37]\n"
     "    %b = reduce_sum %g {axes = [0]} : f32[37]\n"
     "    %sq = mul %g, %g : f32[64,37]\n"
     "    %t = reduce_sum %sq {axes = [0, 1]} : f32[]\n"
     "    %mx = reduce_max %g {axes = [0]} : f32[37]\n"
     "    return %b, %t, %mx, %g\n  }\n}\n",
     "fuse", 4, {3e-5, 3e-6}, 1, 0},
    {"mean over a middle axis",
     "module @m {\n  func @f(%x: f32[4,16,9]) -> f32[4,1,9] {\n"
     "    %e = exp %x : f32[4,16,9]\n"
     "    %m = reduce_mean %e {axes = [1], keepdim = true} : f32[4,1,9]\n"
     "    return %m\n  }\n}\n",
     "fuse", 4, {3e-5, 3e-6}, 1, 0},
    {"residual add + layernorm",
     "module @m {\n  param @g : f32[77]\n  param @b : f32[77]\n"
     "  func @f(%x: f32[3,5,77], %r: f32[3,5,77], %bias: f32[77]) -> (f32[3,5,77], f32[3,5,77]) {\n"
     "    %h = add %x, %bias : f32[3,5,77]\n    %s = add %r, %h : f32[3,5,77]\n"
     "    %y = layernorm %s, @g, @b {eps = 1e-05} : f32[3,5,77]\n"
     "    return %s, %y\n  }\n}\n",
     "fuse", 4, {1e-4, 1e-5}, 1, 0},
    {"rmsnorm with an epilogue",
     "module @m {\n  param @g : f32[40]\n"
     "  func @f(%x: f32[6,40]) -> f32[6,40] {\n"
     "    %y = rmsnorm %x, @g {eps = 1e-05} : f32[6,40]\n    %z = silu %y : f32[6,40]\n"
     "    return %z\n  }\n}\n",
     "fuse", 4, {1e-4, 1e-5}, 1, 0},
    {"softmax with prologue and epilogue",
     "module @m {\n  func @f(%x: f32[2,3,29], %m: f32[29]) -> f32[2,3,29] {\n"
     "    %s = mul %x, %m : f32[2,3,29]\n"
     "    %p = softmax %s {axis = 2} : f32[2,3,29]\n    %l = log %p : f32[2,3,29]\n"
     "    return %l\n  }\n}\n",
     "fuse", 4, {1e-4, 1e-5}, 1, 0},
    {"softmax_grad",
     "module @m {\n  func @f(%g: f32[5,33], %x: f32[5,33]) -> f32[5,33] {\n"
     "    %y = softmax %x {axis = 1} : f32[5,33]\n"
     "    %d = softmax_grad %g, %y {axis = 1} : f32[5,33]\n    return %d\n  }\n}\n",
     "fuse", 4, {1e-4, 1e-5}, 1, 0},
    {"the whole cross-entropy (padded classes)",
     "module @m {\n  func @f(%x: f32[2,9,50], %t: i32[2,9]) -> (f32[], f32[2,9,50]) {\n"
     "    %l = cross_entropy %x, %t {classes = 45} : f32[]\n"
     "    %one = constant {value = 1.0} : f32[]\n"
     "    %d = cross_entropy_grad %one, %x, %t {classes = 45} : f32[2,9,50]\n"
     "    return %l, %d\n  }\n}\n",
     "fuse", 45, {1e-4, 1e-5}, 1, 0},
    {"cross-entropy of a prologue, i64 targets",
     "module @m {\n  func @f(%x: f32[7,24], %b: f32[24], %t: i64[7], %pg: f32[]) -> (f32[], f32[7,24]) {\n"
     "    %z = add %x, %b : f32[7,24]\n"
     "    %l = cross_entropy %z, %t : f32[]\n"
     "    %d = cross_entropy_grad %pg, %z, %t : f32[7,24]\n"
     "    return %l, %d\n  }\n}\n",
     "fuse", 24, {1e-4, 1e-5}, 1, 0},
    {"layernorm_grad with residual and bias gradient",
     "module @m {\n  param @g : f32[48]\n"
     "  func @f(%dy: f32[4,8,48], %x: f32[4,8,48], %res: f32[4,8,48]) -> (f32[4,8,48], f32[48], f32[48], f32[48]) {\n"
     "    %dx, %dg, %db = layernorm_grad %dy, %x, @g {eps = 1e-05} : f32[4,8,48], f32[48], f32[48]\n"
     "    %s = add %res, %dx : f32[4,8,48]\n"
     "    %bg = reduce_sum %s {axes = [0, 1]} : f32[48]\n"
     "    return %s, %dg, %db, %bg\n  }\n}\n",
     "fuse", 4, {2e-4, 2e-5}, 1, 0},
    {"rmsnorm_grad",
     "module @m {\n  param @g : f32[19]\n"
     "  func @f(%dy: f32[40,19], %x: f32[40,19]) -> (f32[40,19], f32[19]) {\n"
     "    %dx, %dg = rmsnorm_grad %dy, %x, @g {eps = 1e-05} : f32[40,19], f32[19]\n"
     "    return %dx, %dg\n  }\n}\n",
     "fuse", 4, {2e-4, 2e-5}, 1, 0},
    {"row reductions feeding element-wise ops",
     "module @m {\n  func @f(%x: f32[6,5,31]) -> (f32[6,5,31], f32[6,5], f32[6,5,1]) {\n"
     "    %m = reduce_max %x {axes = [2], keepdim = true} : f32[6,5,1]\n"
     "    %d = sub %x, %m : f32[6,5,31]\n    %e = exp %d : f32[6,5,31]\n"
     "    %s = reduce_sum %e {axes = [2]} : f32[6,5]\n"
     "    %l = log %s : f32[6,5]\n"
     "    %a = reduce_mean %x {axes = [2], keepdim = true} : f32[6,5,1]\n"
     "    %b = mul %a, %m : f32[6,5,1]\n"
     "    %y = div %e, %b : f32[6,5,31]\n"
     "    return %y, %l, %b\n  }\n}\n",
     "fuse", 4, {1e-4, 1e-5}, 1, 0},
    {"adamw with clip scaling (one group per parameter)",
     "module @m {\n  param @w : f32[33,17]\n  state @w.m : f32[33,17]\n  state @w.v : f32[33,17]\n"
     "  param @c : f32[5]\n  state @c.m : f32[5]\n  state @c.v : f32[5]\n"
     "  func @f(%gw: f32[33,17], %gc: f32[5], %pn: f32[], %plr: f32[], %pstep: f32[]) -> "
     "(f32[33,17], f32[33,17], f32[33,17], f32[5], f32[5], f32[5]) {\n"
     "    %e = constant {value = 1e-06} : f32[]\n    %k = constant {value = 1.0} : f32[]\n"
     "    %a = add %pn, %e : f32[]\n    %mx = maximum %a, %k : f32[]\n"
     "    %s = div %k, %mx : f32[]\n"
     "    %g1 = mul %gw, %s : f32[33,17]\n"
     "    %p1, %m1, %v1 = adamw @w, %g1, @w.m, @w.v, %plr, %pstep {beta1 = 0.9, beta2 = 0.95, eps = 1e-08, weight_decay = 0.1} : f32[33,17], f32[33,17], f32[33,17]\n"
     "    %g2 = mul %gc, %s : f32[5]\n"
     "    %p2, %m2, %v2 = adamw @c, %g2, @c.m, @c.v, %plr, %pstep {beta1 = 0.9, beta2 = 0.999, eps = 1e-08, weight_decay = 0.0} : f32[5], f32[5], f32[5]\n"
     "    return %p1, %m1, %v1, %p2, %m2, %v2\n  }\n}\n",
     "fuse", 4, {1e-5, 1e-6}, 2, 0},
    {"sgd with momentum, nesterov",
     "module @m {\n  param @w : f32[70]\n  state @w.b : f32[70]\n"
     "  func @f(%g: f32[70], %plr: f32[]) -> (f32[70], f32[70]) {\n"
     "    %p, %b = sgd @w, %g, @w.b, %plr {momentum = 0.9, nesterov = true, weight_decay = 0.01} : f32[70], f32[70]\n"
     "    return %p, %b\n  }\n}\n",
     "fuse", 4, {1e-5, 1e-6}, 1, 0},
    {"repeated groups share one kernel",
     "module @m {\n  func @f(%x: f32[3,10], %y: f32[3,10], %z: f32[3,10]) -> (f32[3,10], f32[3,10], f32[3,10]) {\n"
     "    %a = exp %x {group = 1} : f32[3,10]\n    %b = mul %a, %x {group = 1} : f32[3,10]\n"
     "    %c = exp %y {group = 2} : f32[3,10]\n    %d = mul %c, %y {group = 2} : f32[3,10]\n"
     "    %e = exp %z {group = 3} : f32[3,10]\n    %g = mul %e, %d {group = 3} : f32[3,10]\n"
     "    return %b, %d, %g\n  }\n}\n",
     NULL, 4, {3e-5, 3e-6}, 3, 0},
    {"hand-written groups (two kernels)",
     "module @m {\n  func @f(%x: f32[3,10], %y: f32[3,10]) -> (f32[3,10], f32[3,10]) {\n"
     "    %a = add %x, %y {group = 7} : f32[3,10]\n    %b = exp %a {group = 7} : f32[3,10]\n"
     "    %c = mul %b, %x {group = 3} : f32[3,10]\n"
     "    return %b, %c\n  }\n}\n",
     NULL, 4, {3e-5, 3e-6}, 2, 0},
};

static const char *fixed_cases_text_repeated(void) {
  for (int i = 0; i < PTC_ARRAY_LEN(fixed_cases); i++)
    if (strcmp(fixed_cases[i].name, "repeated groups share one kernel") == 0)
      return fixed_cases[i].text;
  PTC_UNREACHABLE();
}

static const tcase bad_target = {
    "an out-of-range target is reported",
    "module @m {\n  func @f(%x: f32[3,8], %t: i32[3]) -> f32[] {\n"
    "    %l = cross_entropy %x, %t {classes = 4} : f32[]\n    return %l\n  }\n}\n",
    "fuse", 9, {0, 0}, 1, 1};

/* ---- random chains over broadcast operands ---------------------------------- */

static void test_random_chains(int n) {
  static const char *const un[] = {"neg", "exp", "tanh", "sigmoid", "relu", "gelu", "silu"};
  static const char *const bin[] = {"add", "sub", "mul", "maximum", "div"};
  for (int c = 0; c < n; c++) {
    int64_t d0 = rand_in(1, 5), d1 = rand_in(1, 4), d2 = rand_in(1, 70);
    char X[64], text[8192], name[64];
    snprintf(X, sizeof X, "f32[%lld,%lld,%lld]", (long long)d0, (long long)d1, (long long)d2);
    char bshapes[4][64];
    snprintf(bshapes[0], 64, "f32[%lld]", (long long)d2);
    snprintf(bshapes[1], 64, "f32[%lld,1]", (long long)d1);
    snprintf(bshapes[2], 64, "f32[%lld,1,%lld]", (long long)d0, (long long)d2);
    snprintf(bshapes[3], 64, "f32[]");
    int n0 = snprintf(text, sizeof text,
                      "module @m {\n  func @f(%%x: %s, %%px: %s, %%b0: %s, %%b1: %s, %%pb2: %s, "
                      "%%b3: %s) -> (%s, %s) {\n",
                      X, X, bshapes[0], bshapes[1], bshapes[2], bshapes[3], X, X);
    /* values: 0 = %x, 1 = %px (positive); v2.. the chain; each op's result is X */
    int nops = (int)rand_in(2, 12), nvals = 2;
    bool positive[64] = {false, true};
    for (int i = 0; i < nops; i++) {
      int a = (int)rand_in(nvals > 4 ? nvals - 4 : 0, nvals - 1);
      char an[16], res[16];
      snprintf(an, sizeof an, a == 0 ? "%%x" : a == 1 ? "%%px" : "%%v%d", a);
      snprintf(res, sizeof res, "%%v%d", nvals);
      int kind = (int)rand_in(0, 9);
      if (kind < 3) {
        int u = (int)rand_in(0, PTC_ARRAY_LEN(un) - 1);
        n0 += snprintf(text + n0, sizeof text - (size_t)n0, "    %s = %s %s : %s\n", res, un[u],
                       an, X);
        positive[nvals] = strcmp(un[u], "exp") == 0 || strcmp(un[u], "sigmoid") == 0;
      } else if (kind < 4 && positive[a]) {
        static const char *const pu[] = {"log", "sqrt", "rsqrt"};
        int u = (int)rand_in(0, 2);
        n0 += snprintf(text + n0, sizeof text - (size_t)n0, "    %s = %s %s : %s\n", res, pu[u],
                       an, X);
        positive[nvals] = u != 0;
      } else {
        int bop = (int)rand_in(0, PTC_ARRAY_LEN(bin) - 1);
        int which = (int)rand_in(0, 5);
        char bn[16];
        if (which < 4) snprintf(bn, sizeof bn, "%%%s%d", which == 2 ? "pb" : "b", which);
        else snprintf(bn, sizeof bn, which == 4 ? "%%px" : "%%x");
        bool bpos = which == 2 || which == 4;
        if (strcmp(bin[bop], "div") == 0 && !bpos) bop = 2; /* no division by ~0 */
        bool sw = rand_in(0, 1) && strcmp(bin[bop], "div") != 0;
        n0 += snprintf(text + n0, sizeof text - (size_t)n0, "    %s = %s %s, %s : %s\n", res,
                       bin[bop], sw ? bn : an, sw ? an : bn, X);
        positive[nvals] = (strcmp(bin[bop], "add") == 0 || strcmp(bin[bop], "mul") == 0 ||
                           strcmp(bin[bop], "div") == 0) && positive[a] && bpos;
      }
      nvals++;
    }
    int mid = (int)rand_in(2, nvals - 1);
    snprintf(text + n0, sizeof text - (size_t)n0, "    return %%v%d, %%v%d\n  }\n}\n", mid,
             nvals - 1);
    snprintf(name, sizeof name, "random chain %d", c);
    if (getenv("PTC_DUMP_CHAIN") && atoi(getenv("PTC_DUMP_CHAIN")) == c) printf("%s", text);
    tcase tc = {name, text, "fuse", 4, {2e-4, 2e-5}, 1, 0};
    run_case(&tc);
  }
}

/* ---- every group of a real model's training step ------------------------------------ */

/* Group `sig` of f as a function of its own: its inputs become arguments
 * (named p<k> where the value must be positive: second moments, the
 * step), its outputs the results. */
static char *extract_group(ptc_ctx *ctx, ptc_func *f, const ptc_group_sig *sig) {
  ptc_module *g = ptc_module_create(ctx, "g");
  ptc_func *gf = ptc_module_add_func(g, "f", ptc_loc_unknown);
  int32_t *map = malloc(((size_t)f->nvalues + 1) * sizeof *map);
  for (int32_t v = 0; v < f->nvalues; v++) map[v] = -1;
  for (int32_t k = 0; k < sig->nin; k++) {
    const ptc_value *v = &f->values[sig->in[k]];
    const char *pn = v->kind == PTC_VALUE_PARAM ? f->mod->params[v->def].name : v->name;
    size_t n = pn ? strlen(pn) : 0;
    bool pos = pn && ((n > 2 && strcmp(pn + n - 2, ".v") == 0) || strcmp(pn, "step") == 0 ||
                      strcmp(pn, "lr") == 0);
    char name[32];
    snprintf(name, sizeof name, "%s%d", pos ? "p" : "a", k);
    map[sig->in[k]] = ptc_func_add_arg(gf, name, &v->type, NULL);
  }
  bool ok = true;
  for (int32_t i = sig->first; i < sig->end && ok; i++) {
    const ptc_op *op = &f->ops[i];
    int32_t in[8];
    ptc_type given[4];
    for (int32_t a = 0; a < op->nin; a++) in[a] = map[op->in[a]];
    for (int32_t r = 0; r < op->nout; r++) given[r] = f->values[op->out[r]].type;
    ptc_build_args ba = {.code = op->code, .nin = op->nin, .in = in, .nattr = op->nattr,
                         .attrs = op->attrs, .ngiven = op->nout, .given = given};
    int32_t idx = ptc_build(gf, &ba);
    ok = idx >= 0;
    for (int32_t r = 0; ok && r < op->nout; r++) map[op->out[r]] = gf->ops[idx].out[r];
  }
  int32_t *ret = malloc(((size_t)sig->nout + 1) * sizeof *ret);
  for (int32_t o = 0; o < sig->nout && ok; o++) {
    ret[o] = map[sig->out[o]];
    ptc_func_add_result(gf, &f->values[sig->out[o]].type, NULL);
  }
  ptc_build_args rb = {.code = PTC_OP_RETURN, .nin = sig->nout, .in = ret};
  ok = ok && ptc_build(gf, &rb) >= 0;
  ptc_buf b;
  ptc_buf_init(&b);
  if (ok) ptc_print_module(&b, g);
  CHECK_MSG(ok, "group %lld could not be extracted: %s", (long long)sig->id,
            ptc_ctx_diag_text(ctx));
  free(map);
  free(ret);
  ptc_module_destroy(g);
  char *text = ok ? strdup(b.data) : NULL;
  ptc_buf_fini(&b);
  return text;
}

static void test_model_groups(const char *path, const char *set, int64_t classes) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  size_t len;
  char *src = ptc_read_file(ctx, path, &len);
  ptc_define *defs = NULL;
  int32_t ndefs = 0;
  CHECK(src && ptc_defines_parse(ctx, set, &defs, &ndefs) == 0);
  ptc_module *m = src ? ptc_frontend_compile(ctx, path, src, len, defs, ndefs) : NULL;
  CHECK_MSG(m != NULL, "%s: %s", path, ptc_ctx_diag_text(ctx));
  ptc_pipeline *p = ptc_pipeline_parse(ctx, "canonicalize,cse,autodiff,optimizer,fuse");
  if (m && p && ptc_pipeline_run(m, p, NULL) == 0) {
    ptc_func *f = ptc_module_find_func(m, "step");
    int n = 0;
    for (int32_t i = 0; f && i < f->nops;) {
      if (ptc_op_group(&f->ops[i]) < 0) {
        i++;
        continue;
      }
      ptc_group_sig sig;
      if (ptc_group_signature(f, i, &sig) < 0) break;
      char *text = extract_group(ctx, f, &sig);
      if (text) {
        char name[96];
        snprintf(name, sizeof name, "%s group %lld", path, (long long)sig.id);
        tcase tc = {name, text, NULL, classes, {2e-4, 2e-5}, 1, 0};
        run_case(&tc);
        free(text);
        n++;
      }
      i = sig.end;
      ptc_group_sig_fini(&sig);
    }
    CHECK_MSG(n >= 10, "%s: %d groups", path, n);
  } else {
    CHECK_MSG(false, "%s: %s", path, ptc_ctx_diag_text(ctx));
  }
  ptc_pipeline_destroy(p);
  ptc_module_destroy(m);
  free(defs);
  free(src);
  ptc_ctx_destroy(ctx);
}

/* ---- the transcendentals against libm ------------------------------------------ */

static int64_t ulp_key(float f) {
  int32_t i;
  memcpy(&i, &f, 4);
  return i < 0 ? (int64_t)INT32_MIN - i : i; /* monotone in f */
}

static int64_t ulps(float a, float b) {
  if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) ? 0 : INT64_MAX;
  int64_t d = ulp_key(a) - ulp_key(b);
  return d < 0 ? -d : d;
}

static float *math_inputs(const char *fn, int64_t *n) {
  int64_t cap = 1 << 20, k = 0;
  float *x = malloc((size_t)cap * sizeof *x);
  const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-45f, -1e-45f, 1e-40f,
                           1.17549435e-38f, 3.4028235e38f, -3.4028235e38f, 1.0f, -1.0f};
  for (int i = 0; i < PTC_ARRAY_LEN(special); i++) x[k++] = special[i];
  if (strcmp(fn, "exp") == 0) {
    for (float v = -110.0f; v <= 95.0f; v += 0.00731f) x[k++] = v;
    const float edge[] = {88.7228317f, 88.7228394f, 88.72284f, -87.3365479f, -103.278931f,
                          -103.972084f, -104.0f, 89.0f, 1e-8f, -1e-8f};
    for (int i = 0; i < PTC_ARRAY_LEN(edge); i++) x[k++] = edge[i];
  } else if (strcmp(fn, "log") == 0) {
    /* every binade, subnormals included */
    for (uint32_t bits = 1; bits < 0x7f800000u; bits += 0x1234u) {
      float v;
      memcpy(&v, &bits, 4);
      x[k++] = v;
    }
    x[k++] = -2.0f;
    for (float v = 0.5f; v < 2.0f; v += 0.0001f) x[k++] = v;
  } else {
    for (float v = -20.0f; v <= 20.0f; v += 0.0007f) x[k++] = v;
    for (uint32_t bits = 1; bits < 0x3f000000u; bits += 0x3456u) {
      float v;
      memcpy(&v, &bits, 4);
      x[k++] = v;
      x[k++] = -v;
    }
  }
  PTC_ASSERT(k <= cap);
  *n = k;
  return x;
}

static void test_math(void) {
  static const char *const fns[] = {"exp", "log", "tanh"};
  static const int64_t max_ulps[] = {2, 2, 2};
  for (int fi = 0; fi < 3; fi++) {
    int64_t n;
    float *x = math_inputs(fns[fi], &n);
    char text[512];
    snprintf(text, sizeof text,
             "module @m {\n  func @f(%%x: f32[%lld]) -> f32[%lld] {\n"
             "    %%y = %s %%x {group = 0} : f32[%lld]\n    return %%y\n  }\n}\n",
             (long long)n, (long long)n, fns[fi], (long long)n);
    ptc_ctx *ctx = ptc_ctx_create();
    ptc_ctx_set_diag_capture(ctx, true);
    ptc_module *m = ptc_parse_module(ctx, "math.ptir", text, strlen(text));
    CHECK(m != NULL);
    char so[128];
    snprintf(so, sizeof so, "%s/math%d.so", tmpdir, fi);
    int rc = m ? ptc_codegen_cpu(m, "cpu", so, NULL) : -1;
    CHECK_MSG(rc == 0, "%s", ptc_ctx_diag_text(ctx));
    void *h = rc == 0 ? dlopen(so, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (h) {
      kernel_fn fn;
      void *sym = dlsym(h, "ptc_k0");
      memcpy(&fn, &sym, sizeof fn);
      float *y = malloc((size_t)n * sizeof *y);
      void *bufs[2] = {x, y};
      fn(bufs, 0, n);
      int64_t worst = 0, at = 0;
      for (int64_t i = 0; i < n; i++) {
        double ref = fi == 0 ? exp((double)x[i]) : fi == 1 ? log((double)x[i]) : tanh((double)x[i]);
        int64_t u = ulps(y[i], (float)ref);
        if (u > worst) {
          worst = u;
          at = i;
        }
      }
      printf("  %s: %lld inputs, worst %lld ulp at %.9g (got %.9g, libm %.9g)\n", fns[fi],
             (long long)n, (long long)worst, x[at], y[at],
             fi == 0 ? exp((double)x[at]) : fi == 1 ? log((double)x[at]) : tanh((double)x[at]));
      CHECK_MSG(worst <= max_ulps[fi], "%s: %lld ulp at %.9g", fns[fi], (long long)worst, x[at]);
      free(y);
      dlclose(h);
    }
    unlink(so);
    free(x);
    ptc_module_destroy(m);
    ptc_ctx_destroy(ctx);
  }
}

/* ---- targets, vectors, errors ------------------------------------------------------ */

static void test_targets(void) {
  const char *text = "module @m {\n  func @f(%x: f32[100]) -> f32[100] {\n"
                     "    %y = exp %x {group = 0} : f32[100]\n    return %y\n  }\n}\n";
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_parse_module(ctx, "t.ptir", text, strlen(text));
  ptc_buf ir;
  ptc_buf_init(&ir);
  /* vector code for AVX2 and for baseline x86-64 */
  CHECK(ptc_codegen_cpu_ir(m, "cpu:x86-64-v3", &ir) == 0);
  CHECK_MSG(ir.data && strstr(ir.data, "<8 x float>"), "no 8-lane vectors for x86-64-v3");
  CHECK(ir.data && strstr(ir.data, "define i32 @ptc_k0(i8** "));
  CHECK(ir.data && !strstr(ir.data, "@expf")); /* no libm call in the loop */
  ir.len = 0;
  CHECK(ptc_codegen_cpu_ir(m, "cpu:generic", &ir) == 0);
  CHECK_MSG(ir.data && strstr(ir.data, "<4 x float>"), "no 4-lane vectors for generic");
  /* the info record */
  char so[128];
  snprintf(so, sizeof so, "%s/t.so", tmpdir);
  ptc_buf info;
  ptc_buf_init(&info);
  CHECK(ptc_codegen_cpu(m, "cpu:x86-64-v3", so, &info) == 0);
  CHECK(info.data && strstr(info.data, "\"requires\": \"sse3,ssse3,sse4.1,sse4.2,popcnt,avx,avx2,fma,bmi,bmi2\""));
  CHECK(info.data && strstr(info.data, "\"kernels\": 1, \"distinct_kernels\": 1"));
  {
    /* structurally equal groups are compiled once: the others are aliases */
    const char *t3 = fixed_cases_text_repeated();
    ptc_module *m3 = ptc_parse_module(ctx, "t3.ptir", t3, strlen(t3));
    ptc_buf i3;
    ptc_buf_init(&i3);
    CHECK(m3 && ptc_codegen_cpu(m3, "cpu", so, &i3) == 0);
    CHECK_MSG(i3.data && strstr(i3.data, "\"kernels\": 3, \"distinct_kernels\": 2"), "%s",
              i3.data ? i3.data : "");
    void *h3 = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    CHECK(h3 && dlsym(h3, "ptc_k1") && dlsym(h3, "ptc_k2") && dlsym(h3, "ptc_k3"));
    if (h3) dlclose(h3);
    unlink(so);
    ptc_buf_fini(&i3);
    ptc_module_destroy(m3);
  }
  unlink(so);
  /* bad targets name the problem */
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_codegen_cpu(m, "cpu:pentium-pro-max", so, NULL) < 0);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "unknown CPU 'pentium-pro-max'") != NULL);
  CHECK(ptc_codegen_cpu(m, "gpu", so, NULL) < 0);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "--target gpu: unknown target") != NULL);
  /* a path that cannot be written */
  CHECK(ptc_codegen_cpu(m, "cpu", "/nonexistent-dir/k.so", NULL) < 0);
#if PTC_TEST_RUNTIME
  /* the CPU check: what this machine has passes; a made-up need is skipped,
   * and every recorded list of the host passes */
  CHECK(ptrt_fused_check_cpu(ctx, "plan/manifest.json", "x86-64", "") == 0);
  info.len = 0;
  CHECK(ptc_codegen_cpu(m, "cpu", so, &info) == 0);
  const char *req = info.data ? strstr(info.data, "\"requires\": \"") : NULL;
  if (req) {
    char list[256];
    req += strlen("\"requires\": \"");
    size_t n = strcspn(req, "\"");
    snprintf(list, sizeof list, "%.*s", (int)n, req);
    CHECK_MSG(ptrt_fused_check_cpu(ctx, "plan/manifest.json", "host", list) == 0, "%s", list);
  }
  unlink(so);
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512f")) {
    CHECK(ptrt_fused_check_cpu(ctx, "plan/manifest.json", "skylake-avx512", "avx,avx512f") < 0);
    CHECK(strstr(ptc_ctx_diag_text(ctx), "avx512f") != NULL);
  }
#endif
  /* a kernel library that lacks a group's kernel is refused by name */
  {
    const char *t2 = "module @m {\n  func @f(%x: f32[4]) -> f32[4] {\n"
                     "    %y = exp %x {group = 5} : f32[4]\n    return %y\n  }\n}\n";
    ptc_module *m2 = ptc_parse_module(ctx, "t2.ptir", t2, strlen(t2));
    CHECK(ptc_codegen_cpu(m, "cpu", so, NULL) == 0);
    ptrt_fused *lib = ptrt_fused_open(ctx, so, m2->funcs[0]);
    CHECK(lib == NULL);
    CHECK(strstr(ptc_ctx_diag_text(ctx), "has no kernel ptc_k5 for group 5") != NULL);
    ptrt_fused_close(lib);
    CHECK(ptrt_fused_open(ctx, "/nonexistent/k.so", m2->funcs[0]) == NULL);
    CHECK(strstr(ptc_ctx_diag_text(ctx), "/nonexistent/k.so: error: cannot load") != NULL);
    ptc_module_destroy(m2);
    unlink(so);
  }
#endif
  ptc_buf_fini(&info);
  ptc_buf_fini(&ir);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- a measurement (PTC_BENCH=1) -------------------------------------------------- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Times the groups of a function of groups: the kernels in one call on one
 * thread, then through ptrt_fused_run on `threads`, against the runtime's
 * own kernels op by op (the same threads).  Prints ms and the GB/s of the
 * fused traffic (each group's inputs read once and outputs written once). */
static void bench_one(const char *label, const char *text, int64_t int_hi, int threads) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_parse_module(ctx, label, text, strlen(text));
  char so[128];
  snprintf(so, sizeof so, "%s/bench.so", tmpdir);
  if (!m || ptc_codegen_cpu(m, "cpu", so, NULL) != 0) {
    printf("bench %s: %s\n", label, ptc_ctx_diag_text(ctx));
    ptc_module_destroy(m);
    ptc_ctx_destroy(ctx);
    return;
  }
  ptc_func *f = m->funcs[0];
  void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  buf *vals = calloc((size_t)f->nvalues + 1, sizeof *vals);
  for (int32_t v = 0; v < f->nvalues; v++) {
    vals[v] = buf_new(&f->values[v].type);
    for (int64_t i = 0; i < vals[v].n; i++)
      buf_set(&vals[v], i, vals[v].t == PTC_DTYPE_F32 ? 0.01 * (double)((i * 7 + v) % 97) + 0.1
                                                      : (double)((i * 13 + v) % int_hi));
  }
  double bytes = 0;
  int32_t ngroups = 0;
  ptc_group_sig sigs[16];
  kernel_fn fns[16];
  for (int32_t i = 0; i < f->nops && ngroups < 16;) {
    if (ptc_op_group(&f->ops[i]) < 0) {
      i++;
      continue;
    }
    ptc_group_signature(f, i, &sigs[ngroups]);
    char name[48];
    ptc_group_kernel_name(sigs[ngroups].id, name, sizeof name);
    void *sym = dlsym(h, name);
    memcpy(&fns[ngroups], &sym, sizeof sym);
    bytes += sigs[ngroups].bytes;
    i = sigs[ngroups++].end;
  }
  int reps = 20;
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    for (int32_t g = 0; g < ngroups; g++) run_whole(fns[g], &sigs[g], vals);
    double dt = now_s() - t0;
    best = dt < best ? dt : best;
  }
  printf("bench %-34s fused, 1 thread : %8.3f ms  %6.1f GB/s\n", label, best * 1e3,
         bytes / best / 1e9);
#if PTC_TEST_RUNTIME
  for (int th = 1; th <= threads; th += threads > 1 ? threads - 1 : 1) {
    ptrt_pool *pool = ptrt_pool_create(ctx, th);
    ptrt_fused *lib = ptrt_fused_open(ctx, so, f);
    double bf = 1e30, br = 1e30;
    for (int r = 0; r < reps && lib; r++) {
      double t0 = now_s();
      for (int32_t g = 0; g < ngroups; g++) {
        void *bufs[64];
        for (int32_t k = 0; k < sigs[g].nin; k++) bufs[k] = vals[sigs[g].in[k]].p;
        for (int32_t o = 0; o < sigs[g].nout; o++) bufs[sigs[g].nin + o] = vals[sigs[g].out[o]].p;
        ptrt_fused_run(ctx, lib, ptrt_fused_group_at(lib, sigs[g].first), bufs, pool);
      }
      double dt = now_s() - t0;
      bf = dt < bf ? dt : bf;
    }
    ptrt_env env = {ctx, pool, ptrt_comm_single(), NULL};
    for (int r = 0; r < reps; r++) {
      double t0 = now_s();
      for (int32_t i = 0; i < f->nops - 1; i++) {
        const ptc_op *op = &f->ops[i];
        void *in[8], *out[4];
        for (int32_t a = 0; a < op->nin; a++) in[a] = vals[op->in[a]].p;
        for (int32_t a = 0; a < op->nout; a++) out[a] = vals[op->out[a]].p;
        ptrt_kargs ka = {&env, f, op, in, out};
        ptrt_kernel_get(op->code)(&ka);
      }
      double dt = now_s() - t0;
      br = dt < br ? dt : br;
    }
    printf("bench %-34s %d thread%s: fused %8.3f ms  %6.1f GB/s | runtime kernels %8.3f ms "
           "| fused %.2fx\n",
           label, th, th > 1 ? "s" : " ", bf * 1e3, bytes / bf / 1e9, br * 1e3, br / bf);
    ptrt_fused_close(lib);
    ptrt_pool_destroy(pool);
  }
#else
  (void)threads;
#endif
  for (int32_t g = 0; g < ngroups; g++) ptc_group_sig_fini(&sigs[g]);
  for (int32_t v = 0; v < f->nvalues; v++) free(vals[v].p);
  free(vals);
  dlclose(h);
  unlink(so);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* GPT-2 124M shapes at B=4, T=64 (256 rows; C = 768, 4C = 3072, vocab
 * 50304 with 50257 real classes). */
static void bench(int threads) {
  bench_one("add, scale, add [1024,3072]",
            "module @m {\n  func @f(%x: f32[1024,3072], %y: f32[1024,3072], %z: f32[1024,3072], "
            "%c: f32[]) -> f32[1024,3072] {\n"
            "    %s = add %x, %y {group = 0} : f32[1024,3072]\n"
            "    %t = mul %s, %c {group = 0} : f32[1024,3072]\n"
            "    %u = add %t, %z {group = 0} : f32[1024,3072]\n    return %u\n  }\n}\n",
            1, threads);
  bench_one("bias+gelu [256,3072]",
            "module @m {\n  param @b : f32[3072]\n  func @f(%x: f32[256,3072]) -> "
            "(f32[256,3072], f32[256,3072]) {\n"
            "    %h = add %x, @b {group = 0} : f32[256,3072]\n"
            "    %y = gelu %h {group = 0} : f32[256,3072]\n    return %h, %y\n  }\n}\n",
            1, threads);
  bench_one("residual+bias+layernorm [256,768]",
            "module @m {\n  param @b : f32[768]\n  param @g : f32[768]\n  param @be : f32[768]\n"
            "  func @f(%x: f32[256,768], %r: f32[256,768]) -> (f32[256,768], f32[256,768]) {\n"
            "    %h = add %x, @b {group = 0} : f32[256,768]\n"
            "    %s = add %r, %h {group = 0} : f32[256,768]\n"
            "    %y = layernorm %s, @g, @be {eps = 1e-05, group = 0} : f32[256,768]\n"
            "    return %s, %y\n  }\n}\n",
            1, threads);
  bench_one("cross-entropy + grad [256,50304]",
            "module @m {\n  func @f(%x: f32[256,50304], %t: i32[256]) -> (f32[], f32[256,50304]) {\n"
            "    %l = cross_entropy %x, %t {classes = 50257, group = 0} : f32[]\n"
            "    %one = constant {group = 0, value = 1.0} : f32[]\n"
            "    %d = cross_entropy_grad %one, %x, %t {classes = 50257, group = 0} : f32[256,50304]\n"
            "    return %l, %d\n  }\n}\n",
            50257, threads);
  bench_one("gelu_grad + bias grad [256,3072]",
            "module @m {\n  func @f(%g: f32[256,3072], %x: f32[256,3072]) -> (f32[256,3072], f32[3072]) {\n"
            "    %d = gelu_grad %g, %x {group = 0} : f32[256,3072]\n"
            "    %b = reduce_sum %d {axes = [0], group = 0} : f32[3072]\n"
            "    return %d, %b\n  }\n}\n",
            1, threads);
  bench_one("clip + adamw [768,3072]",
            "module @m {\n  param @w : f32[768,3072]\n  state @w.m : f32[768,3072]\n"
            "  state @w.v : f32[768,3072]\n"
            "  func @f(%g: f32[768,3072], %s: f32[], %lr: f32[], %t: f32[]) -> "
            "(f32[768,3072], f32[768,3072], f32[768,3072]) {\n"
            "    %c = mul %g, %s {group = 0} : f32[768,3072]\n"
            "    %p, %m1, %v1 = adamw @w, %c, @w.m, @w.v, %lr, %t {beta1 = 0.9, beta2 = 0.95, "
            "eps = 1e-08, group = 0, weight_decay = 0.1} : f32[768,3072], f32[768,3072], f32[768,3072]\n"
            "    return %p, %m1, %v1\n  }\n}\n",
            1, threads);
}

/* ---- groups on bf16 / f16 values --------------------------------------------
 * A function in a 16-bit dtype T and the same function in f32, both fused
 * into the same groups and run through the executor with their kernels:
 * every T result equals the f32 result rounded once (runtime/half.h), bit
 * for bit, since a kernel widens its 16-bit inputs exactly, computes in
 * f32 and rounds only what it stores.  The f32 module's inputs are the T
 * module's, widened.  No op of a group needs 16-bit workspace: the
 * executor's measured workspace and peak are the plan's. */
#if PTC_TEST_RUNTIME
#include "runtime/half.h"
#include "test_half.h"

/* element k of input i, in [-2, 2) and rounded to t (its dtype in the
 * 16-bit module); edge != NULL: argument 0 holds these f32 bit patterns */
static float half_in(int i, int64_t k, ptc_dtype t, const uint32_t *edge) {
  return edge ? ptrt_f32_of_bits(edge[k]) : test_half_value(i, k, t);
}

typedef struct half_run {
  int nres;
  void *res[8];
  ptc_dtype dt[8];
  int64_t numel[8];
  bool grouped_half; /* some group holds a 16-bit value */
  bool all_grouped;  /* every op but the return is in a group */
} half_run;

/* Fuses m (the only function), compiles its kernels and runs it on 2
 * threads; inputs from half_in with ref's dtypes.  0 or -1 (reported). */
static int half_exec(const char *what, ptc_module *ref, ptc_module *m, const uint32_t *edge,
                     half_run *o) {
  memset(o, 0, sizeof *o);
  ptc_ctx *ctx = m->ctx;
  ptc_func *f = m->funcs[0];
  ptc_pipeline *pl = ptc_pipeline_parse(ctx, "fuse");
  int rc = pl && ptc_pipeline_run(m, pl, NULL) == 0 ? 0 : -1;
  ptc_pipeline_destroy(pl);
  CHECK_MSG(rc == 0, "%s: fuse: %s", what, ptc_ctx_diag_text(ctx));
  if (rc) return -1;
  o->all_grouped = true;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    if (op->code == PTC_OP_RETURN) continue;
    o->all_grouped &= ptc_op_group(op) >= 0;
    for (int32_t k = 0; k < op->nin + op->nout && ptc_op_group(op) >= 0; k++)
      o->grouped_half |=
          ptrt_is_half(f->values[k < op->nin ? op->in[k] : op->out[k - op->nin]].type.dtype);
  }
  char so[128];
  snprintf(so, sizeof so, "%s/k%d.so", tmpdir, so_counter++);
  rc = ptc_codegen_cpu(m, "cpu", so, NULL);
  CHECK_MSG(rc == 0, "%s: codegen: %s", what, ptc_ctx_diag_text(ctx));
  if (rc) return -1;
  ptrt_fused *lib = ptrt_fused_open(ctx, so, f);
  ptrt_pool *pool = ptrt_pool_create(ctx, 2);
  ptrt_env env = {ctx, pool, ptrt_comm_single(), NULL};
  ptrt_vars *vars = lib ? ptrt_vars_create(ctx, m, NULL) : NULL;
  ptrt_program_opts opts = {.fused = lib};
  ptrt_program *prog = vars ? ptrt_program_create(&env, f, vars, &opts) : NULL;
  rc = prog ? 0 : -1;
  if (prog) {
    for (int32_t p = 0; p < m->nparams; p++)
      for (int64_t k = 0; k < ptc_type_numel(&m->params[p].type); k++)
        test_half_store(ptrt_vars_data(vars, p), m->params[p].type.dtype, k,
                        half_in(p, k, ref->params[p].type.dtype, NULL));
    for (int32_t a = 0; a < f->nargs; a++) {
      const ptc_type *t = &f->values[f->args[a]].type;
      const ptc_type *rt = &ref->funcs[0]->values[ref->funcs[0]->args[a]].type;
      for (int64_t k = 0; k < ptc_type_numel(t); k++) {
        if (t->dtype == PTC_DTYPE_I32)
          ((int32_t *)ptrt_program_arg(prog, a))[k] = (int32_t)((k * 7 + 3) % 10);
        else
          test_half_store(ptrt_program_arg(prog, a), t->dtype, k,
                          t->rank == 0 ? 0.25f
                                       : half_in(100 + a, k, rt->dtype, a == 0 ? edge : NULL));
      }
    }
    rc = ptrt_program_run(prog, true);
    ptrt_mem mem = ptrt_program_mem(prog);
    CHECK_MSG(ptrt_program_planned_workspace(prog) == mem.workspace &&
                  ptrt_program_planned_peak(prog) == mem.peak && mem.live == 0,
              "%s: workspace planned %lld, used %lld; peak planned %lld, measured %lld", what,
              (long long)ptrt_program_planned_workspace(prog), (long long)mem.workspace,
              (long long)ptrt_program_planned_peak(prog), (long long)mem.peak);
    CHECK_MSG(!o->all_grouped || mem.workspace == 0, "%s: a fused function used %lld bytes "
              "of workspace", what, (long long)mem.workspace);
    const ptc_op *ret = &f->ops[f->nops - 1];
    o->nres = ret->nin;
    for (int r = 0; rc == 0 && r < ret->nin; r++) {
      const ptc_type *t = &f->values[ret->in[r]].type;
      int64_t b = ptrt_program_result_bytes(prog, r);
      o->res[r] = malloc((size_t)b + 1);
      memcpy(o->res[r], ptrt_program_result(prog, r), (size_t)b);
      o->dt[r] = t->dtype;
      o->numel[r] = ptc_type_numel(t);
    }
  }
  CHECK_MSG(rc == 0, "%s: run: %s", what, ptc_ctx_diag_text(ctx));
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(vars);
  ptrt_pool_destroy(pool);
  ptrt_fused_close(lib);
  return rc;
}

static void half_run_free(half_run *o) {
  for (int r = 0; r < 8; r++) free(o->res[r]);
}

static ptc_module *half_parse(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "half.ptir", text, strlen(text));
  if (m && ptc_verify_module(m) != 0) {
    ptc_module_destroy(m);
    m = NULL;
  }
  CHECK_MSG(m != NULL, "%s\n%s", ptc_ctx_diag_text(ctx), text);
  return m;
}

/* got (a result of dtype t) equals want (f32) rounded to t, bit for bit */
static int half_compare(const char *what, ptc_dtype t, int r, const half_run *h,
                        const float *want) {
  int bad = test_half_mismatches(what, t, r, h->dt[r], h->res[r], h->numel[r], want);
  CHECK_MSG(bad == 0, "%s (%s): result %d differs in %d elements", what, ptc_dtype_name(t), r,
            bad);
  return bad;
}

static void check_half_fused(const char *what, const char *text) {
  for (int ti = 0; ti < 2; ti++) {
    ptc_dtype t = ti ? PTC_DTYPE_F16 : PTC_DTYPE_BF16;
    ptc_ctx *ctx = ptc_ctx_create();
    ptc_ctx_set_diag_capture(ctx, true);
    char *th = test_subst_dtype(text, t), *tf = test_subst_dtype(text, PTC_DTYPE_F32);
    ptc_module *mh = half_parse(ctx, th), *mf = half_parse(ctx, tf);
    half_run h, g;
    if (mh && mf && half_exec(what, mh, mh, NULL, &h) == 0) {
      CHECK_MSG(h.grouped_half && h.all_grouped, "%s (%s): not every op is in a group",
                what, ptc_dtype_name(t));
      if (half_exec(what, mh, mf, NULL, &g) == 0) {
        /* the same groups */
        for (int32_t i = 0; i < mh->funcs[0]->nops; i++)
          CHECK_MSG(ptc_op_group(&mh->funcs[0]->ops[i]) == ptc_op_group(&mf->funcs[0]->ops[i]),
                    "%s: op %d grouped differently in f32", what, i);
        for (int r = 0; r < h.nres; r++) half_compare(what, t, r, &h, g.res[r]);
        half_run_free(&g);
      }
      half_run_free(&h);
    }
    if (mh) ptc_module_destroy(mh);
    if (mf) ptc_module_destroy(mf);
    free(th);
    free(tf);
    ptc_ctx_destroy(ctx);
  }
}

static const struct {
  const char *what, *text;
} half_cases[] = {
    {"elementwise chain",
     "module @m {\n  param @a : $T[5,37]\n  param @c : $T[37]\n"
     "  func @f() -> ($T[5,37], $T[5,37]) {\n    %y = add @a, @c : $T[5,37]\n"
     "    %z = mul %y, @a : $T[5,37]\n    %g = gelu %z : $T[5,37]\n"
     "    %e = exp %g : $T[5,37]\n    %s = sigmoid %e : $T[5,37]\n"
     "    return %z, %s\n  }\n}\n"},
    {"layernorm+softmax",
     "module @m {\n  param @x : $T[6,40]\n  param @r : $T[6,40]\n"
     "  param @g : $T[40]\n  param @b : $T[40]\n"
     "  func @f() -> ($T[6,40], $T[6,40]) {\n    %y = add @x, @r : $T[6,40]\n"
     "    %n = layernorm %y, @g, @b {eps = 1e-05} : $T[6,40]\n"
     "    %s = softmax %n {axis = 1} : $T[6,40]\n    return %n, %s\n  }\n}\n"},
    {"cross_entropy",
     "module @m {\n  param @l : $T[6,10]\n"
     "  func @f(%seed: f32[], %t: i32[6]) -> (f32[], $T[6,10]) {\n"
     "    %l2 = mul @l, @l : $T[6,10]\n"
     "    %loss = cross_entropy %l2, %t {classes = 10} : f32[]\n"
     "    %g = cross_entropy_grad %seed, %l2, %t {classes = 10} : $T[6,10]\n"
     "    return %loss, %g\n  }\n}\n"},
    {"row reductions",
     "module @m {\n  param @x : $T[7,45]\n"
     "  func @f() -> ($T[7], $T[7], $T[7]) {\n    %e = exp @x : $T[7,45]\n"
     "    %s = reduce_sum %e {axes = [1]} : $T[7]\n"
     "    %m = reduce_max %e {axes = [1]} : $T[7]\n"
     "    %a = reduce_mean %e {axes = [1]} : $T[7]\n    return %s, %m, %a\n  }\n}\n"},
};

/* The kernels' rounding at a 16-bit store on the edge values: ties to even
 * both ways, NaN (payload in the low bits only, too), infinities, bf16 and
 * f16 overflow, f16 subnormals and underflow to zero.  The group is
 * cast + neg, the cast internal: one rounding, of -x. */
static void test_half_store_rounding(void) {
  static const uint32_t edges[24] = {
      0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7f7fffffu, 0x7f7f8000u, 0x7f800001u,
      0xff800000u, 0x7f800000u, 0x477ff000u, 0x477fefffu, 0x33800000u, 0x33000000u,
      0x33000001u, 0x33c00000u, 0x387fc000u, 0x387fe000u, 0x00000001u, 0x80000000u,
      0xffc00001u, 0x3a800800u, 0x3a801800u, 0x47800000u, 0xc77ff000u, 0x38800000u};
  for (int ti = 0; ti < 2; ti++) {
    ptc_dtype t = ti ? PTC_DTYPE_F16 : PTC_DTYPE_BF16;
    ptc_ctx *ctx = ptc_ctx_create();
    ptc_ctx_set_diag_capture(ctx, true);
    char *text = test_subst_dtype("module @m {\n  func @f(%x: f32[24]) -> $T[24] {\n"
                         "    %c = cast %x {to = $T} : $T[24]\n    %n = neg %c : $T[24]\n"
                         "    return %n\n  }\n}\n", t);
    ptc_module *m = half_parse(ctx, text);
    half_run h;
    if (m && half_exec("store rounding", m, m, edges, &h) == 0) {
      CHECK(h.grouped_half && h.all_grouped);
      float want[24];
      for (int k = 0; k < 24; k++) want[k] = -ptrt_f32_of_bits(edges[k]);
      half_compare("store rounding", t, 0, &h, want);
      for (int k = 0; k < 24; k++) { /* a NaN stays a NaN of its sign */
        uint16_t u = ((const uint16_t *)h.res[0])[k];
        if (isnan(want[k]))
          CHECK_MSG(isnan(ptrt_half_load(t, &u, 0)) && (u >> 15) == (signbit(want[k]) ? 1u : 0u),
                    "NaN %d: %#x", k, u);
      }
      half_run_free(&h);
    }
    if (m) ptc_module_destroy(m);
    free(text);
    ptc_ctx_destroy(ctx);
  }
}

static void test_half_groups(void) {
  for (size_t i = 0; i < PTC_ARRAY_LEN(half_cases); i++)
    check_half_fused(half_cases[i].what, half_cases[i].text);
  test_half_store_rounding();
}
#endif /* PTC_TEST_RUNTIME */

int main(void) {
  char why[256];
  if (!ptc_codegen_cpu_can_link(why, sizeof why)) {
    printf("test_cpu_codegen: skipped: %s\n", why);
    return 77;
  }
  snprintf(tmpdir, sizeof tmpdir, "/tmp/ptc_cg_XXXXXX");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_math();
  test_targets();
  test_single_ops();
  for (int i = 0; i < PTC_ARRAY_LEN(fixed_cases); i++) run_case(&fixed_cases[i]);
  run_case(&bad_target);
  test_random_chains(40);
  test_model_groups("models/gpt2.ptg", "layers=1,dim=16,heads=2,vocab=32,ctx=8,batch=2,seq=8", 32);
  test_model_groups("models/llama.ptg",
                    "layers=1,dim=16,heads=2,kv_heads=1,ffn=24,vocab=32,ctx=8,batch=2,seq=8", 32);
#if PTC_TEST_RUNTIME
  test_half_groups();
#endif
  const char *b = getenv("PTC_BENCH");
  if (b && b[0] == '1') bench(getenv("PTC_BENCH_THREADS") ? atoi(getenv("PTC_BENCH_THREADS")) : 2);
  rmdir(tmpdir);
  return test_report("test_cpu_codegen");
}

#else /* !PTC_HAVE_LLVM */

int main(void) {
  printf("test_cpu_codegen: skipped: ptc was built without LLVM\n");
  return 77;
}

#endif
