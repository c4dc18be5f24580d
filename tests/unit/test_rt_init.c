/* test_rt_init.c -- the counter-based parameter init (Philox4x32-10 known
 * answers, values that depend only on seed, name and index, the right
 * spread, the pieces of sharded params), the learning-rate schedule and
 * the thread pool's chunking. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ptrt.h"
#include "test.h"

/* Known-answer vectors of Random123's kat_vectors for philox4x32_10. */
static void test_philox(void) {
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d,
       0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09,
       0x94fdcceb, 0x5001e420, 0x24126ea1},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t out[4];
    ptrt_philox4x32(kat[i], kat[i] + 4, out);
    CHECK_MSG(memcmp(out, kat[i] + 6, sizeof out) == 0, "vector %d: %08x %08x %08x %08x", i,
              out[0], out[1], out[2], out[3]);
  }
}

static ptc_module *mod(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "m.ptir", text, strlen(text));
  PTC_ASSERT(m);
  return m;
}

static void test_init(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  /* the same params in another order, with another neighbour */
  ptc_module *a = mod(ctx, "module @a {\n"
                           "  param @x : f32[300,7] init normal(0.02)\n"
                           "  param @y : f32[1001] init scaled(0.5, 4)\n"
                           "  param @o : f32[5] init ones\n"
                           "  param @z : f32[9] init zeros\n"
                           "}\n");
  ptc_module *b = mod(ctx, "module @b {\n"
                           "  param @q : f32[17] init normal(1.0)\n"
                           "  param @y : f32[1001] init scaled(0.5, 4)\n"
                           "  param @x : f32[300,7] init normal(0.02)\n"
                           "}\n");
  ptrt_pool *pool = ptrt_pool_create(ctx, 4);
  ptrt_vars *va = ptrt_vars_create(ctx, a, NULL), *vb = ptrt_vars_create(ctx, b, NULL);
  ptrt_vars *vc = ptrt_vars_create(ctx, a, NULL);
  ptrt_vars_init(va, 42, NULL);
  ptrt_vars_init(vb, 42, pool);
  ptrt_vars_init(vc, 43, pool);
  CHECK(memcmp(ptrt_vars_data(va, 0), ptrt_vars_data(vb, 2), 2100 * 4) == 0);
  CHECK(memcmp(ptrt_vars_data(va, 1), ptrt_vars_data(vb, 1), 1001 * 4) == 0);
  CHECK(memcmp(ptrt_vars_data(va, 0), ptrt_vars_data(vc, 0), 2100 * 4) != 0);
  /* element i is ptrt_init_normal(seed, name, i) times the std */
  CHECK(ptrt_vars_data(va, 0)[123] == (float)(0.02 * ptrt_init_normal(42, "x", 123)));
  CHECK(ptrt_vars_data(va, 1)[1000] ==
        (float)(0.5 / sqrt(8.0) * ptrt_init_normal(42, "y", 1000)));
  CHECK(ptrt_vars_data(va, 2)[4] == 1.0f && ptrt_vars_data(va, 3)[8] == 0.0f);
  /* the spread: 2100 draws at std 0.02, 1001 at 0.5/sqrt(8) */
  const struct { int p; int64_t n; double std; } s[2] = {{0, 2100, 0.02}, {1, 1001, 0.5 / sqrt(8)}};
  for (int k = 0; k < 2; k++) {
    const float *x = ptrt_vars_data(va, s[k].p);
    double m = 0, v = 0;
    for (int64_t i = 0; i < s[k].n; i++) m += x[i];
    m /= (double)s[k].n;
    for (int64_t i = 0; i < s[k].n; i++) v += (x[i] - m) * (x[i] - m);
    double sd = sqrt(v / (double)s[k].n);
    CHECK_MSG(fabs(m) < 4 * s[k].std / sqrt((double)s[k].n) && fabs(sd / s[k].std - 1) < 0.08,
              "param %d: mean %g std %g, want 0 and %g", s[k].p, m, sd, s[k].std);
  }
  /* standard normal over many indices: moments of N(0, 1) */
  double m1 = 0, m2 = 0, m4 = 0;
  int n = 200000;
  for (int i = 0; i < n; i++) {
    double z = ptrt_init_normal(1, "moments", i);
    m1 += z;
    m2 += z * z;
    m4 += z * z * z * z;
  }
  m1 /= n, m2 /= n, m4 /= n;
  CHECK_MSG(fabs(m1) < 0.01 && fabs(m2 - 1) < 0.015 && fabs(m4 - 3) < 0.1,
            "moments %g %g %g", m1, m2, m4);
  /* a subset (a pipeline stage's variables): the held ones as in the whole
   * set, the others without memory */
  bool hold[4] = {false, true, false, true};
  ptrt_vars *vs = ptrt_vars_create_subset(ctx, a, NULL, hold);
  ptrt_vars_init(vs, 42, pool);
  CHECK(vs->nheld == 2 && vs->bytes == 4032 + 64 && va->nheld == 4);
  CHECK(!ptrt_vars_holds(vs, 0) && ptrt_vars_holds(vs, 1) && !ptrt_vars_holds(vs, 2));
  CHECK(memcmp(ptrt_vars_data(va, 1), ptrt_vars_data(vs, 1), 1001 * 4) == 0);
  CHECK(ptrt_vars_data(vs, 3)[8] == 0.0f);
  ptrt_vars_destroy(vs);
  ptrt_vars_destroy(va);
  ptrt_vars_destroy(vb);
  ptrt_vars_destroy(vc);
  ptrt_pool_destroy(pool);
  ptc_module_destroy(a);
  ptc_module_destroy(b);
  ptc_ctx_destroy(ctx);
}

/* The init of a sharded param on every device of a 2x4 mesh (communicator
 * tables that only name the coordinates): each piece, put where its
 * sharding says, rebuilds the single-device tensor bit for bit, every
 * element exactly once per replica. */
static void test_sharded_init(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_module *g = mod(ctx, "module @s mesh<dp=2, tp=4> {\n"
                           "  param @a : f32[8,12] shard<dp,tp> init normal(0.02)\n"
                           "  param @b : f32[16,6] shard<(dp,tp),_> init normal(1.0)\n"
                           "  param @c : f32[6,8,10] shard<_,tp,dp> init scaled(0.5, 3)\n"
                           "  param @d : f32[7] init normal(1.0)\n"
                           "  param @e : f32[4,9] shard<tp,_> init ones\n"
                           "  param @f : f32[3,8] shard<_,(dp,tp)> init normal(2.0)\n"
                           "}\n");
  ptc_module *l = ptc_module_localize(g);
  ptrt_pool *pool = ptrt_pool_create(ctx, 3);
  ptrt_vars *whole = ptrt_vars_create(ctx, g, NULL);
  ptrt_vars_init(whole, 99, pool);
  ptrt_comm_state st;
  memset(&st, 0, sizeof st);
  float *re[16];
  int *seen[16];
  for (int32_t p = 0; p < g->nparams; p++) {
    int64_t n = ptc_type_numel(&g->params[p].type);
    re[p] = calloc((size_t)n + 1, sizeof *re[p]);
    seen[p] = calloc((size_t)n + 1, sizeof *seen[p]);
  }
  for (int r = 0; r < 8; r++) {
    ptrt_comm fake = {.name = "fake", .rank = r, .size = 8, .mesh = g->mesh, .state = &st};
    ptc_mesh_coord(&g->mesh, r, fake.coord);
    ptrt_vars *v = ptrt_vars_create(ctx, l, &fake);
    PTC_ASSERT(v);
    ptrt_vars_init(v, 99, r % 2 ? pool : NULL);
    for (int32_t p = 0; p < g->nparams; p++) {
      const ptc_type *gt = &g->params[p].type, *lt = &l->params[p].type;
      const ptc_sharding *s = &g->params[p].shard;
      uint8_t used = 0;
      for (int32_t d = 0; s->present && d < gt->rank; d++) used |= s->dim_axes[d];
      int64_t gd[PTC_MAX_RANK], org[PTC_MAX_RANK];
      ptrt_block_origin(&v->mesh, v->coord, lt, s, gd, org);
      const float *x = ptrt_vars_data(v, p);
      for (int64_t i = 0; i < ptc_type_numel(lt); i++) {
        int64_t rem = i, gi = 0, stride = 1;
        for (int32_t d = gt->rank - 1; d >= 0; d--) {
          gi += (org[d] + rem % lt->dims[d]) * stride;
          rem /= lt->dims[d];
          stride *= gt->dims[d];
        }
        /* one replica of each piece goes into the reassembled tensor */
        bool first = true;
        for (int a = 0; a < g->mesh.naxes; a++)
          if (!(used & (1u << a)) && fake.coord[a] != 0) first = false;
        if (first) {
          re[p][gi] = x[i];
          seen[p][gi]++;
        } else {
          CHECK_MSG(memcmp(&x[i], &ptrt_vars_data(whole, p)[gi], sizeof *x) == 0,
                    "@%s: replica on rank %d differs at %lld", g->params[p].name, r,
                    (long long)gi);
        }
      }
    }
    ptrt_vars_destroy(v);
  }
  for (int32_t p = 0; p < g->nparams; p++) {
    int64_t n = ptc_type_numel(&g->params[p].type);
    int once = 0;
    for (int64_t i = 0; i < n; i++) once += seen[p][i] == 1;
    CHECK_MSG(once == n, "@%s: %d of %lld elements held by exactly one device",
              g->params[p].name, once, (long long)n);
    CHECK_MSG(memcmp(re[p], ptrt_vars_data(whole, p), (size_t)n * sizeof(float)) == 0,
              "@%s: the pieces do not rebuild the single-device init", g->params[p].name);
    free(re[p]);
    free(seen[p]);
  }
  ptrt_vars_destroy(whole);
  ptrt_pool_destroy(pool);
  ptc_module_destroy(l);
  ptc_module_destroy(g);
  ptc_ctx_destroy(ctx);
}

static void test_schedule(void) {
  ptrt_schedule s = {1e-3, 1e-4, 10, 110};
  CHECK(fabs(ptrt_schedule_lr(&s, 1) - 1e-4) < 1e-12);
  CHECK(fabs(ptrt_schedule_lr(&s, 10) - 1e-3) < 1e-12);
  CHECK(fabs(ptrt_schedule_lr(&s, 60) - 5.5e-4) < 1e-12); /* half way down the cosine */
  CHECK(fabs(ptrt_schedule_lr(&s, 110) - 1e-4) < 1e-12);
  CHECK(fabs(ptrt_schedule_lr(&s, 500) - 1e-4) < 1e-12);
  for (int64_t k = 11; k < 110; k++) CHECK(ptrt_schedule_lr(&s, k + 1) < ptrt_schedule_lr(&s, k));
  ptrt_schedule flat = {3e-4, 3e-5, 0, 0};
  CHECK(ptrt_schedule_lr(&flat, 1) == 3e-4 && ptrt_schedule_lr(&flat, 7) == 3e-4);
}

typedef struct pjob {
  atomic_int *hits;
  int64_t grain;
  atomic_int bad;
} pjob;

static void mark(void *arg, int64_t b, int64_t e) {
  pjob *j = arg;
  if (b % j->grain != 0 || e - b > j->grain) atomic_fetch_add(&j->bad, 1);
  for (int64_t i = b; i < e; i++) atomic_fetch_add(&j->hits[i], 1);
}

static void test_pool(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  for (int threads = 1; threads <= 5; threads += 2) {
    ptrt_pool *p = ptrt_pool_create(ctx, threads);
    CHECK(ptrt_pool_threads(p) == threads);
    for (int rep = 0; rep < 50; rep++) {
      int64_t n = 1 + rep * 37, grain = 1 + rep % 7;
      atomic_int *hits = calloc((size_t)n, sizeof *hits);
      pjob j = {hits, grain, 0};
      ptrt_parallel_for(p, n, grain, mark, &j);
      int wrong = 0;
      for (int64_t i = 0; i < n; i++) wrong += atomic_load(&hits[i]) != 1;
      CHECK_MSG(wrong == 0 && atomic_load(&j.bad) == 0, "threads %d n %lld: %d items missed "
                "or repeated", threads, (long long)n, wrong);
      free(hits);
    }
    ptrt_pool_destroy(p);
  }
  CHECK(ptrt_default_threads() >= 1);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  test_philox();
  test_init();
  test_sharded_init();
  test_schedule();
  test_pool();
  return test_report("test_rt_init");
}
