/* test_half.c -- 16-bit floats (bf16, f16) through the MPI communicator,
 * under mpirun on 2 ranks (mesh dp=2):
 *
 *   mpirun -np 2 test_half
 *
 * 1. The communicator's 16-bit slots: all_reduce (sum, mean, max, min),
 *    reduce_scatter, all_gather and broadcast of bf16 and f16 buffers of
 *    several sizes, odd ones included.  On two ranks a sum is the f32 sum
 *    of the two widened elements rounded once, so every result is known
 *    bit for bit here.  The byte counters count 2 bytes an element.
 * 2. The executor: a partitioned function with a partial bf16 product,
 *    all_reduce, reduce_scatter, shard and all_gather on the outer and an
 *    inner dimension, run on both ranks through the kernels.
 *
 * Each rank fills its buffers from its rank, so each knows the expected
 * result without communication.  Exit status 0 only when both passed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/half.h"
#include "runtime/ptrt.h"

static int checks, fails;

#define CHECK(cond, ...)                                                       \
  do {                                                                         \
    checks++;                                                                  \
    if (!(cond) && fails++ < 20) {                                             \
      fprintf(stderr, "test_half: line %d: FAIL: ", __LINE__);                 \
      fprintf(stderr, __VA_ARGS__);                                            \
      fputc('\n', stderr);                                                     \
    }                                                                          \
  } while (0)

/* element i of rank r's buffer, rounded to t */
static uint16_t v(ptc_dtype t, int r, int64_t i) {
  float x = (float)((r * 2654435761u + (uint64_t)i * 40503u) % 100003) / 7777.0f - 6.0f;
  return ptrt_half_round(t, x);
}

static float f(ptc_dtype t, uint16_t h) { return ptrt_half_load(t, &h, 0); }

static uint16_t combine(ptc_dtype t, ptrt_reduce op, uint16_t a, uint16_t b) {
  float x = f(t, a), y = f(t, b);
  switch (op) {
  case PTRT_REDUCE_MAX: return x > y ? a : b;
  case PTRT_REDUCE_MIN: return x < y ? a : b;
  case PTRT_REDUCE_SUM: return ptrt_half_round(t, x + y);
  case PTRT_REDUCE_MEAN: return ptrt_half_round(t, f(t, ptrt_half_round(t, x + y)) / 2.0f);
  }
  return 0;
}

static void check_comm(const ptrt_comm *c, double *sent) {
  static const int64_t sizes[] = {0, 1, 7, 1001};
  static const ptc_dtype types[] = {PTC_DTYPE_BF16, PTC_DTYPE_F16};
  int me = c->rank, other = 1 - c->rank;
  for (int ti = 0; ti < 2; ti++)
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
      ptc_dtype t = types[ti];
      const char *tn = ptc_dtype_name(t);
      int64_t n = sizes[s];
      uint16_t *buf = ptrt_alloc(4 * n + 8), *out = ptrt_alloc(4 * n + 8);
      for (int op = 0; op < 4; op++) {
        for (int64_t i = 0; i < n; i++) buf[i] = v(t, me, i);
        CHECK(c->all_reduce16(c, 0, (ptrt_reduce)op, t, buf, n) == 0, "all_reduce16");
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
          /* the same on both ranks: rank 0's element first */
          uint16_t want = combine(t, (ptrt_reduce)op, v(t, 0, i), v(t, 1, i));
          bad += buf[i] != want;
        }
        CHECK(bad == 0, "all_reduce %s op %d of %lld: %d elements differ", tn, op, (long long)n,
              bad);
        if (n) *sent += n * 2.0; /* 2 (g-1)/g n 2 bytes, g = 2 */
      }
      /* reduce_scatter of 2n: this rank's half of the sum */
      for (int64_t i = 0; i < 2 * n; i++) buf[i] = v(t, me, i);
      CHECK(c->reduce_scatter16(c, 0, PTRT_REDUCE_SUM, t, buf, out, 2 * n) == 0, "rs16");
      int bad = 0;
      for (int64_t i = 0; i < n; i++)
        bad += out[i] != combine(t, PTRT_REDUCE_SUM, v(t, 0, me * n + i), v(t, 1, me * n + i));
      CHECK(bad == 0, "reduce_scatter %s of %lld: %d elements differ", tn, (long long)(2 * n), bad);
      if (n) *sent += n * 2.0;
      /* all_gather of n: rank 0's then rank 1's */
      for (int64_t i = 0; i < n; i++) buf[i] = v(t, me, i);
      CHECK(c->all_gather16(c, 0, buf, out, n) == 0, "ag16");
      bad = 0;
      for (int64_t i = 0; i < n; i++) bad += out[i] != v(t, 0, i) || out[n + i] != v(t, 1, i);
      CHECK(bad == 0, "all_gather %s of %lld: %d elements differ", tn, (long long)n, bad);
      if (n) *sent += n * 2.0;
      /* broadcast from coordinate 1 */
      for (int64_t i = 0; i < n; i++) buf[i] = v(t, me, i);
      CHECK(c->broadcast16(c, 0, 1, buf, n) == 0, "bc16");
      bad = 0;
      for (int64_t i = 0; i < n; i++) bad += buf[i] != v(t, 1, i);
      CHECK(bad == 0, "broadcast %s of %lld: %d elements differ", tn, (long long)n, bad);
      if (n) *sent += n * 1.0;
      (void)other;
      ptrt_free(buf);
      ptrt_free(out);
    }
}

static const char *program_text =
    "module @m mesh<dp=2> {\n"
    "  param @a : bf16[2,4]\n"
    "  func @f() -> (bf16[2,4], bf16[2,4], bf16[2,4], bf16[2,4] shard<_,dp>) {\n"
    "    %p = mul @a, @a : bf16[2,4] partial<dp>\n"
    "    %r = all_reduce %p {axis = dp, op = sum} : bf16[2,4]\n"
    "    %s0 = shard %r {axis = dp, dim = 0} : bf16[2,4] shard<dp,_>\n"
    "    %g0 = all_gather %s0 {axis = dp, dim = 0} : bf16[2,4]\n"
    "    %s1 = shard %r {axis = dp, dim = 1} : bf16[2,4] shard<_,dp>\n"
    "    %g1 = all_gather %s1 {axis = dp, dim = 1} : bf16[2,4]\n"
    "    %q = reduce_scatter %p {axis = dp, dim = 1, op = sum} : bf16[2,4] shard<_,dp>\n"
    "    return %r, %g0, %g1, %q\n"
    "  }\n"
    "}\n";

static void check_program(ptc_ctx *ctx, const ptrt_comm *c, double *sent) {
  ptc_module *m = ptc_parse_module(ctx, "half.ptir", program_text, strlen(program_text));
  CHECK(m && ptc_verify_module(m) == 0, "the program does not verify: %s",
        ptc_ctx_diag_text(ctx));
  if (!m) return;
  ptc_module *lm = ptc_module_localize(m);
  ptrt_env env = {ctx, NULL, c, NULL};
  ptrt_vars *vars = ptrt_vars_create(ctx, lm, c);
  ptrt_program *prog = vars ? ptrt_program_create(&env, lm->funcs[0], vars, NULL) : NULL;
  CHECK(prog, "no program: %s", ptc_ctx_diag_text(ctx));
  if (prog) {
    const ptc_dtype t = PTC_DTYPE_BF16;
    uint16_t *a = (uint16_t *)ptrt_vars_data(vars, 0);
    for (int i = 0; i < 8; i++) a[i] = v(t, c->rank, i);
    CHECK(ptrt_program_run(prog, true) == 0, "run: %s", ptc_ctx_diag_text(ctx));
    const uint16_t *r = ptrt_program_result(prog, 0), *g0 = ptrt_program_result(prog, 1),
                   *g1 = ptrt_program_result(prog, 2), *q = ptrt_program_result(prog, 3);
    int bad = 0;
    for (int i = 0; i < 8; i++) {
      uint16_t p0 = ptrt_half_round(t, f(t, v(t, 0, i)) * f(t, v(t, 0, i)));
      uint16_t p1 = ptrt_half_round(t, f(t, v(t, 1, i)) * f(t, v(t, 1, i)));
      uint16_t want = combine(t, PTRT_REDUCE_SUM, p0, p1);
      bad += r[i] != want || g0[i] != want || g1[i] != want;
      /* this rank's columns [2 rank, 2 rank + 2) of each row */
      int row = i / 4, col = i % 4;
      if (col / 2 == c->rank) bad += q[row * 2 + col % 2] != want;
    }
    CHECK(bad == 0, "the program's results differ in %d places", bad);
    CHECK(ptrt_program_mem(prog).workspace == ptrt_program_planned_workspace(prog) &&
              ptrt_program_planned_workspace(prog) == 3 * 64,
          "workspace %lld, planned %lld", (long long)ptrt_program_mem(prog).workspace,
          (long long)ptrt_program_planned_workspace(prog));
    /* all_reduce of 8, two all_gathers of 4 a rank (8 whole), reduce_scatter of 8 */
    *sent += 8 * 2.0 + 2 * (0.5 * 8 * 2) + 0.5 * 8 * 2;
  }
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(vars);
  ptc_module_destroy(lm);
  ptc_module_destroy(m);
}

int main(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_mesh mesh;
  char err[128];
  if (ptc_mesh_parse("dp=2", &mesh, err, sizeof err) != 0) {
    fprintf(stderr, "test_half: %s\n", err);
    return 1;
  }
  ptrt_comm *c = ptrt_comm_mpi_create(ctx, &mesh, 60);
  if (!c) {
    fprintf(stderr, "test_half: %s", ptc_ctx_diag_text(ctx));
    return 1;
  }
  double sent = 0;
  check_comm(c, &sent);
  check_program(ctx, c, &sent);
  CHECK(fabs(c->state->sent[0] - sent) <= 1e-9 * sent, "sent %.17g bytes, expected %.17g",
        c->state->sent[0], sent);
  double worst = fails;
  if (c->world_max(c, &worst) != 0) worst = 1;
  if (c->rank == 0)
    printf("test_half: 2 ranks: %d checks on rank 0, %s\n", checks,
           worst == 0 ? "all passed" : "FAILED");
  ptrt_comm_mpi_destroy(c);
  ptc_ctx_destroy(ctx);
  return worst == 0 ? 0 : 1;
}
