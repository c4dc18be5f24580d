/* test_comm.c -- the MPI communicator (runtime/comm_mpi.c) under mpirun.
 *
 *   mpirun -np N test_comm MESH check    every collective on every axis of
 *                                        MESH against values computed here,
 *                                        the byte counters against the ring
 *                                        model, transfers and their errors
 *   mpirun -np N test_comm MESH timeout  rank 1 skips a collective; the
 *                                        others must end the run within the
 *                                        2 s deadline, naming themselves
 *   test_comm launch                     ptrt_launched_multi over launcher
 *                                        environments (no mpirun)
 *
 * Each rank fills its buffers from its own world rank, so the expected
 * result of a collective over an axis group is known to every member
 * without communication.  Exit status 0 only when every rank passed.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/ptrt.h"

typedef struct test {
  ptc_ctx *ctx;
  ptrt_comm *c;
  int checks, fails;
  double sent[PTC_MAX_MESH_AXES]; /* what the counters should say */
  int64_t calls[PTC_MAX_MESH_AXES];
} test;

static void fail(test *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(test *t, const char *fmt, ...) {
  if (t->fails++ >= 20) return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fprintf(stderr, "test_comm: rank %d: FAIL: %s\n", t->c->rank, msg);
}

#define CHECK(t, cond, ...)                                                    \
  do {                                                                         \
    (t)->checks++;                                                             \
    if (!(cond)) fail((t), __VA_ARGS__);                                       \
  } while (0)

/* Buffer contents as a function of the world rank and the index. */
static float v_int(int r, int64_t i) { return (float)(r * 1000 + i % 997); }
static float v_signed(int r, int64_t i) { return (float)((r * 7919 + i * 31) % 101 - 50); }
static float v_frac(int r, int64_t i) {
  return (float)((r * 2654435761u + (uint64_t)i * 40503u) % 100003) / 7777.0f;
}

/* The world rank of the member of this rank's group on `axis` at k. */
static int member(const ptrt_comm *c, int axis, int64_t k) {
  int32_t co[PTC_MAX_MESH_AXES];
  memcpy(co, c->coord, sizeof co);
  co[axis] = (int32_t)k;
  return (int)ptc_mesh_rank(&c->mesh, co);
}

static const char *op_name(ptrt_reduce op) {
  static const char *const names[] = {"sum", "mean", "max", "min"};
  return names[op];
}

/* The reduction over the group of f(member, i), in f32 (exact for the
 * integer-valued inputs used with it). */
static float reduce_expected(const ptrt_comm *c, int axis, ptrt_reduce op,
                             float (*f)(int, int64_t), int64_t i) {
  int64_t g = c->mesh.axes[axis].size;
  float acc = f(member(c, axis, 0), i);
  for (int64_t k = 1; k < g; k++) {
    float v = f(member(c, axis, k), i);
    if (op == PTRT_REDUCE_MAX) acc = v > acc ? v : acc;
    else if (op == PTRT_REDUCE_MIN) acc = v < acc ? v : acc;
    else acc += v;
  }
  return op == PTRT_REDUCE_MEAN ? acc / (float)g : acc;
}

static void expect_bytes(test *t, int axis, double bytes) {
  if (t->c->mesh.axes[axis].size == 1) return; /* local: not a call */
  t->sent[axis] += bytes;
  t->calls[axis]++;
}

static float *alloc_f(int64_t n) {
  float *p = ptrt_alloc(n * (int64_t)sizeof(float));
  if (!p) {
    fprintf(stderr, "test_comm: out of memory\n");
    exit(1);
  }
  return p;
}

static void check_all_reduce(test *t, int axis, int64_t n) {
  const ptrt_comm *c = t->c;
  int64_t g = c->mesh.axes[axis].size;
  float *buf = alloc_f(n);
  for (int op = PTRT_REDUCE_SUM; op <= PTRT_REDUCE_MIN; op++) {
    float (*f)(int, int64_t) = op >= PTRT_REDUCE_MAX ? v_signed : v_int;
    for (int64_t i = 0; i < n; i++) buf[i] = f(c->rank, i);
    int rc = c->all_reduce(c, axis, (ptrt_reduce)op, buf, n);
    CHECK(t, rc == 0, "all_reduce %s over %s, n=%lld failed", op_name(op),
          c->mesh.axes[axis].name, (long long)n);
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
      if (buf[i] != reduce_expected(c, axis, (ptrt_reduce)op, f, i) && bad++ == 0)
        fail(t, "all_reduce %s over %s, n=%lld: [%lld] = %g, expected %g", op_name(op),
             c->mesh.axes[axis].name, (long long)n, (long long)i, buf[i],
             reduce_expected(c, axis, (ptrt_reduce)op, f, i));
    t->checks++;
    if (n) expect_bytes(t, axis, 2.0 * (double)(g - 1) / (double)g * (double)n * 4);
  }
  ptrt_free(buf);
}

/* A sum that rounds: every member of the group must hold the same bits. */
static void check_same_bits(test *t, int axis, int64_t n) {
  const ptrt_comm *c = t->c;
  int64_t g = c->mesh.axes[axis].size;
  float *buf = alloc_f(n), *all = alloc_f(n * g);
  for (int64_t i = 0; i < n; i++) buf[i] = v_frac(c->rank, i);
  int rc = c->all_reduce(c, axis, PTRT_REDUCE_SUM, buf, n);
  rc |= c->all_gather(c, axis, buf, all, n);
  CHECK(t, rc == 0, "all_reduce then all_gather over %s failed", c->mesh.axes[axis].name);
  for (int64_t k = 0; k < g; k++)
    CHECK(t, memcmp(all + k * n, buf, (size_t)n * sizeof *buf) == 0,
          "all_reduce sum over %s, n=%lld: member %lld holds other bits than this rank",
          c->mesh.axes[axis].name, (long long)n, (long long)k);
  for (int64_t i = 0; i < n; i++) {
    double want = 0;
    for (int64_t k = 0; k < g; k++) want += v_frac(member(c, axis, k), i);
    if (fabs(buf[i] - want) > 1e-5 * fabs(want) + 1e-6) {
      fail(t, "all_reduce sum over %s: [%lld] = %.9g, expected %.9g",
           c->mesh.axes[axis].name, (long long)i, buf[i], want);
      break;
    }
  }
  if (n) {
    expect_bytes(t, axis, 2.0 * (double)(g - 1) / (double)g * (double)n * 4);
    expect_bytes(t, axis, (double)(g - 1) / (double)g * (double)(n * g) * 4);
  }
  ptrt_free(buf);
  ptrt_free(all);
}

static void check_all_gather(test *t, int axis, int64_t n, bool in_place) {
  const ptrt_comm *c = t->c;
  int64_t g = c->mesh.axes[axis].size;
  float *out = alloc_f(n * g + 1);
  float *in = in_place ? out + c->coord[axis] * n : alloc_f(n + 1);
  for (int64_t i = 0; i < n; i++) in[i] = v_int(c->rank, i);
  int rc = c->all_gather(c, axis, in, out, n);
  CHECK(t, rc == 0, "all_gather over %s, n=%lld failed", c->mesh.axes[axis].name,
        (long long)n);
  for (int64_t k = 0; k < g; k++)
    for (int64_t i = 0; i < n; i++)
      if (out[k * n + i] != v_int(member(c, axis, k), i)) {
        fail(t, "all_gather%s over %s, n=%lld: block %lld [%lld] = %g, expected %g",
             in_place ? " (in place)" : "", c->mesh.axes[axis].name, (long long)n,
             (long long)k, (long long)i, out[k * n + i], v_int(member(c, axis, k), i));
        k = g;
        break;
      }
  t->checks++;
  if (n) expect_bytes(t, axis, (double)(g - 1) / (double)g * (double)(n * g) * 4);
  if (!in_place) ptrt_free(in);
  ptrt_free(out);
}

static void check_reduce_scatter(test *t, int axis, int64_t part, bool in_place) {
  const ptrt_comm *c = t->c;
  int64_t g = c->mesh.axes[axis].size, n = part * g;
  float *in = alloc_f(n + 1);
  float *out = in_place ? in : alloc_f(part + 1);
  int64_t base = c->coord[axis] * part;
  for (int op = PTRT_REDUCE_SUM; op <= PTRT_REDUCE_MIN; op++) {
    float (*f)(int, int64_t) = op >= PTRT_REDUCE_MAX ? v_signed : v_int;
    for (int64_t i = 0; i < n; i++) in[i] = f(c->rank, i);
    int rc = c->reduce_scatter(c, axis, (ptrt_reduce)op, in, out, n);
    CHECK(t, rc == 0, "reduce_scatter %s over %s, n=%lld failed", op_name(op),
          c->mesh.axes[axis].name, (long long)n);
    for (int64_t j = 0; j < part; j++) {
      float want = reduce_expected(c, axis, (ptrt_reduce)op, f, base + j);
      if (out[j] != want) {
        fail(t, "reduce_scatter%s %s over %s, n=%lld: [%lld] = %g, expected %g",
             in_place ? " (in place)" : "", op_name(op), c->mesh.axes[axis].name,
             (long long)n, (long long)j, out[j], want);
        break;
      }
    }
    t->checks++;
    if (n) expect_bytes(t, axis, (double)(g - 1) / (double)g * (double)n * 4);
  }
  if (!in_place) ptrt_free(out);
  ptrt_free(in);
}

static void check_broadcast(test *t, int axis, int64_t n) {
  const ptrt_comm *c = t->c;
  int64_t g = c->mesh.axes[axis].size;
  float *buf = alloc_f(n + 1);
  for (int root = 0; root < g; root++) {
    for (int64_t i = 0; i < n; i++) buf[i] = v_int(c->rank, i);
    int rc = c->broadcast(c, axis, root, buf, n);
    CHECK(t, rc == 0, "broadcast over %s from %d failed", c->mesh.axes[axis].name, root);
    for (int64_t i = 0; i < n; i++)
      if (buf[i] != v_int(member(c, axis, root), i)) {
        fail(t, "broadcast over %s from %d, n=%lld: [%lld] = %g, expected %g",
             c->mesh.axes[axis].name, root, (long long)n, (long long)i, buf[i],
             v_int(member(c, axis, root), i));
        break;
      }
    t->checks++;
    if (n) expect_bytes(t, axis, (double)(g - 1) / (double)g * (double)n * 4);
  }
  ptrt_free(buf);
}

/* Arguments every rank gets wrong alike: each reports, nobody waits. */
static void check_bad_arguments(test *t, int axis) {
  const ptrt_comm *c = t->c;
  int64_t g = c->mesh.axes[axis].size;
  float buf[16] = {0}, out[16];
  ptc_ctx_set_diag_capture(t->ctx, true);
  if (g > 1) {
    ptc_ctx_reset_errors(t->ctx);
    CHECK(t, c->reduce_scatter(c, axis, PTRT_REDUCE_SUM, buf, out, g + 1) == -1,
          "reduce_scatter of an uneven buffer did not fail");
    CHECK(t, strstr(ptc_ctx_diag_text(t->ctx), "cannot split evenly"),
          "reduce_scatter of an uneven buffer said: %s", ptc_ctx_diag_text(t->ctx));
  }
  ptc_ctx_reset_errors(t->ctx);
  CHECK(t, c->broadcast(c, axis, (int)g, buf, 4) == -1, "broadcast from %d did not fail",
        (int)g);
  CHECK(t, strstr(ptc_ctx_diag_text(t->ctx), "but the axis has"),
        "broadcast from a missing root said: %s", ptc_ctx_diag_text(t->ctx));
  ptc_ctx_reset_errors(t->ctx);
  snprintf(c->state->what, sizeof c->state->what, "all_reduce at step.ptir:1:1");
  CHECK(t, c->all_reduce(c, c->mesh.naxes, PTRT_REDUCE_SUM, buf, 4) == -1,
        "all_reduce over a missing axis did not fail");
  const char *msg = ptc_ctx_diag_text(t->ctx);
  CHECK(t, strstr(msg, "rank ") && strstr(msg, "at step.ptir:1:1"),
        "all_reduce over a missing axis said: %s", msg);
  c->state->what[0] = 0;
  ptc_ctx_reset_errors(t->ctx);
  ptc_ctx_set_diag_capture(t->ctx, false);
}

static uint8_t byte_of(int r, int64_t i) { return (uint8_t)(r * 31 + i); }

/* A ring over the world: even ranks send first, odd ones receive first. */
static void check_send_recv(test *t, int64_t bytes) {
  const ptrt_comm *c = t->c;
  if (c->size == 1 || c->size % 2) return;
  int next = (c->rank + 1) % c->size, prev = (c->rank + c->size - 1) % c->size;
  uint8_t *out = ptrt_alloc(bytes + 1), *in = ptrt_alloc(bytes + 1);
  for (int64_t i = 0; i < bytes; i++) out[i] = byte_of(c->rank, i);
  int rc = 0;
  for (int turn = 0; turn < 2; turn++) {
    if ((turn == 0) == (c->rank % 2 == 0)) rc |= c->send(c, next, 5, out, bytes);
    else rc |= c->recv(c, prev, 5, in, bytes);
  }
  CHECK(t, rc == 0, "send/recv of %lld bytes failed", (long long)bytes);
  for (int64_t i = 0; i < bytes; i++)
    if (in[i] != byte_of(prev, i)) {
      fail(t, "recv of %lld bytes from %d: [%lld] = %d, expected %d", (long long)bytes, prev,
           (long long)i, in[i], byte_of(prev, i));
      break;
    }
  int a = ptc_mesh_axis(&c->mesh, "pp", 2);
  if (a < 0) a = 0;
  t->sent[a] += (double)bytes;
  t->calls[a] += 2;
  ptrt_free(out);
  ptrt_free(in);
}

/* Rank 0 sends rank 1 a message of the wrong length: longer (MPI's
 * truncation error, reported) and shorter (the length check). */
static void check_recv_errors(test *t) {
  const ptrt_comm *c = t->c;
  if (c->size < 2 || c->rank > 1) return;
  char msg[16] = "0123456789abcdef", got[16];
  int a = ptc_mesh_axis(&c->mesh, "pp", 2);
  if (a < 0) a = 0;
  if (c->rank == 0) {
    CHECK(t, c->send(c, 1, 11, msg, 16) == 0, "send of 16 bytes failed");
    CHECK(t, c->send(c, 1, 12, msg, 4) == 0, "send of 4 bytes failed");
    t->sent[a] += 20;
    t->calls[a] += 2;
    return;
  }
  ptc_ctx_set_diag_capture(t->ctx, true);
  ptc_ctx_reset_errors(t->ctx);
  CHECK(t, c->recv(c, 0, 11, got, 8) == -1, "recv of 16 bytes into 8 did not fail");
  CHECK(t, strstr(ptc_ctx_diag_text(t->ctx), "MPI failed in recv from rank 0"),
        "recv of 16 bytes into 8 said: %s", ptc_ctx_diag_text(t->ctx));
  ptc_ctx_reset_errors(t->ctx);
  CHECK(t, c->recv(c, 0, 12, got, 8) == -1, "recv of 4 bytes into 8 did not fail");
  CHECK(t, strstr(ptc_ctx_diag_text(t->ctx), "expected 8 bytes with tag 12, got 4"),
        "recv of 4 bytes into 8 said: %s", ptc_ctx_diag_text(t->ctx));
  ptc_ctx_reset_errors(t->ctx);
  ptc_ctx_set_diag_capture(t->ctx, false);
}

static void check_counters(test *t) {
  const ptrt_comm *c = t->c;
  for (int a = 0; a < c->mesh.naxes; a++) {
    CHECK(t, fabs(c->state->sent[a] - t->sent[a]) <= 1e-9 * t->sent[a],
          "sent over %s: %.17g bytes, the ring model says %.17g", c->mesh.axes[a].name,
          c->state->sent[a], t->sent[a]);
    CHECK(t, c->state->calls[a] == t->calls[a], "calls over %s: %lld, expected %lld",
          c->mesh.axes[a].name, (long long)c->state->calls[a], (long long)t->calls[a]);
  }
}

static int run_checks(test *t) {
  const ptrt_comm *c = t->c;
#ifdef PTRT_MPI_CHUNK
  /* built with tiny chunks: sizes around and across them */
  static const int64_t sizes[] = {0, 1, 4, 5, 6, 11, 23};
  static const int64_t bytes[] = {0, 4, 5, 17};
#else
  static const int64_t sizes[] = {0, 1, 7, 1000, 1 << 17};
  static const int64_t bytes[] = {0, 13, 1 << 20};
#endif
  CHECK(t, strcmp(c->name, "mpi") == 0, "name is %s", c->name);
  CHECK(t, ptrt_launched_multi(), "ptrt_launched_multi() is false under mpirun");
  int32_t co[PTC_MAX_MESH_AXES];
  ptc_mesh_coord(&c->mesh, c->rank, co);
  CHECK(t, memcmp(co, c->coord, (size_t)c->mesh.naxes * sizeof *co) == 0,
        "coord is not ptc_mesh_coord of the rank");
  for (int a = 0; a < c->mesh.naxes; a++) {
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
      check_all_reduce(t, a, sizes[s]);
      check_same_bits(t, a, sizes[s]);
      check_all_gather(t, a, sizes[s], false);
      check_all_gather(t, a, sizes[s], true);
      check_reduce_scatter(t, a, sizes[s], false);
      check_reduce_scatter(t, a, sizes[s], true);
      check_broadcast(t, a, sizes[s]);
    }
    check_bad_arguments(t, a);
  }
  for (size_t s = 0; s < sizeof bytes / sizeof *bytes; s++) check_send_recv(t, bytes[s]);
  check_recv_errors(t);
  check_counters(t);

  double v = c->rank;
  CHECK(t, c->world_max(c, &v) == 0 && v == c->size - 1, "world_max gave %g, expected %d",
        v, c->size - 1);
  /* everyone learns whether anyone failed */
  double worst = t->fails;
  if (c->world_max(c, &worst) != 0) worst = 1;
  if (c->rank == 0) {
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_mesh_print(&b, &c->mesh);
    printf("test_comm: %s on %d ranks: %d checks on rank 0, %s\n", b.data ? b.data : "",
           c->size, t->checks, worst == 0 ? "all passed" : "FAILED");
    ptc_buf_fini(&b);
  }
  return worst == 0 ? 0 : 1;
}

/* Rank 1 never joins the all_reduce; the others must give up after 2 s. */
static int run_timeout(test *t) {
  ptrt_comm *c = t->c;
  int axis = c->mesh.naxes - 1;
  snprintf(c->state->what, sizeof c->state->what, "all_reduce over %s in the timeout check",
           c->mesh.axes[axis].name);
  if (c->rank == 1) {
    struct timespec ts = {60, 0};
    nanosleep(&ts, NULL);
    return 1;
  }
  float x[4] = {0};
  c->all_reduce(c, axis, PTRT_REDUCE_SUM, x, 4);
  ptrt_comm_mpi_destroy(c); /* a rank outside rank 1's group waits here */
  return 1;
}

/* ptrt_launched_multi over launcher environments, without a launcher. */
static int run_launch(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                                     "PMI_SIZE", "PMI_RANK", "PMIX_RANK", "SLURM_NTASKS",
                                     "SLURM_STEP_NUM_TASKS", "SLURM_PROCID"};
  static const struct {
    const char *var, *value;
    bool multi;
  } cases[] = {
      {NULL, NULL, false},
      {"OMPI_COMM_WORLD_SIZE", "1", false},
      {"OMPI_COMM_WORLD_SIZE", "8", true},
      {"OMPI_COMM_WORLD_RANK", "3", true},
      {"PMI_SIZE", "2", true},
      {"PMI_SIZE", "x", false},
      {"PMIX_RANK", "0", false},
      {"PMIX_RANK", "5", true},
      {"SLURM_NTASKS", "8", false}, /* a batch script: one process */
      {"SLURM_PROCID", "0", false},
      {"SLURM_STEP_NUM_TASKS", "8", true},
  };
  int fails = 0;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    for (size_t v = 0; v < sizeof vars / sizeof *vars; v++) unsetenv(vars[v]);
    if (cases[i].var) setenv(cases[i].var, cases[i].value, 1);
    if (ptrt_launched_multi() != cases[i].multi) {
      fprintf(stderr, "test_comm: FAIL: ptrt_launched_multi() with %s=%s is not %s\n",
              cases[i].var ? cases[i].var : "nothing", cases[i].value ? cases[i].value : "",
              cases[i].multi ? "true" : "false");
      fails++;
    }
  }
  printf("test_comm: launch: %zu cases, %s\n", sizeof cases / sizeof *cases,
         fails ? "FAILED" : "all passed");
  return fails ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "launch") == 0) return run_launch();
  if (argc != 3 || (strcmp(argv[2], "check") && strcmp(argv[2], "timeout"))) {
    fprintf(stderr, "usage: test_comm launch | mpirun -np N test_comm MESH check|timeout\n");
    return 2;
  }
  ptc_mesh mesh;
  char err[256];
  if (ptc_mesh_parse(argv[1], &mesh, err, sizeof err) != 0) {
    fprintf(stderr, "test_comm: %s\n", err);
    return 2;
  }
  bool timeout = strcmp(argv[2], "timeout") == 0;
  test t = {.ctx = ptc_ctx_create()};
  t.c = ptrt_comm_mpi_create(t.ctx, &mesh, timeout ? 2.0 : 60.0);
  if (!t.c) {
    ptc_ctx_destroy(t.ctx);
    return 1;
  }
  int rc = timeout ? run_timeout(&t) : run_checks(&t);
  if (!timeout) ptrt_comm_mpi_destroy(t.c);
  ptc_ctx_destroy(t.ctx);
  return rc;
}
