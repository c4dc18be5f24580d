/* test_rt_spmd.c -- partitioned (SPMD) functions on a simulated mesh.
 *
 * A mesh of N devices is N threads in this process, each running the
 * function's local view (ptc_module_localize) with the runtime's executor
 * over its own variables, and a communicator that moves data through
 * shared memory (every rank publishes its buffer, a barrier, each reads
 * its group's).  Each rank's arguments and variables are its blocks of the
 * same whole tensors (ptrt_local_block); the results' blocks are put back
 * together -- pieces placed at their offsets, partial sums added, one
 * replica of replicated axes -- and compared with the reference evaluator
 * on the global function (||runtime - eval|| <= 1e-4 ||eval||).  The
 * function exercises every kernel that needs global knowledge or moves
 * data between devices: embedding with a row-split table, all_reduce,
 * cross_entropy and its gradient with rows split, reduce_mean over split
 * dims, all_gather and reduce_scatter on the outermost dimension and on an
 * inner one (the interleaving paths), shard, all_gather and broadcast of
 * f32 and i32, embedding_grad into a row-split result.  Replicas must agree
 * bit for bit.
 *
 * Then the refusals: a local function on the one-rank communicator, and a
 * function localized for another mesh than the communicator's.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ir/ir.h"
#include "runtime/ptrt.h"
#include "test.h"

#define MAXR 8
#define MAXV 24

/* ---- a mesh in threads ------------------------------------------------------ */

typedef struct world {
  int n;
  ptc_mesh mesh;
  pthread_barrier_t bar;
  const float *pub[MAXR]; /* what each rank offers to the current call */
} world;

typedef struct member {
  world *w;
  ptrt_comm comm;
  ptrt_comm_state state;
} member;

/* World rank of the member at coordinate j of `axis` in c's group. */
static int peer(const ptrt_comm *c, int axis, int64_t j) {
  int32_t co[PTC_MAX_MESH_AXES];
  memcpy(co, c->coord, sizeof co);
  co[axis] = (int32_t)j;
  return (int)ptc_mesh_rank(&c->mesh, co);
}

static float combine(ptrt_reduce op, float a, float b) {
  switch (op) {
  case PTRT_REDUCE_MAX: return a > b ? a : b;
  case PTRT_REDUCE_MIN: return a < b ? a : b;
  default: return a + b;
  }
}

/* Element i of the reduction of the group's published buffers. */
static float reduce_at(const ptrt_comm *c, int axis, ptrt_reduce op, int64_t i) {
  world *w = ((member *)c->impl)->w;
  int64_t g = c->mesh.axes[axis].size;
  float acc = w->pub[peer(c, axis, 0)][i];
  for (int64_t j = 1; j < g; j++) acc = combine(op, acc, w->pub[peer(c, axis, j)][i]);
  return op == PTRT_REDUCE_MEAN ? acc / (float)g : acc;
}

static void publish(const ptrt_comm *c, const float *buf) {
  world *w = ((member *)c->impl)->w;
  w->pub[c->rank] = buf;
  pthread_barrier_wait(&w->bar);
}

static void done(const ptrt_comm *c) { pthread_barrier_wait(&((member *)c->impl)->w->bar); }

static int shm_all_reduce(const ptrt_comm *c, int axis, ptrt_reduce op, float *buf,
                          int64_t n) {
  publish(c, buf);
  float *tmp = malloc((size_t)n * sizeof *tmp + 1);
  for (int64_t i = 0; i < n; i++) tmp[i] = reduce_at(c, axis, op, i);
  done(c); /* every rank has read every buffer */
  memcpy(buf, tmp, (size_t)n * sizeof *buf);
  free(tmp);
  c->state->calls[axis]++;
  return 0;
}

static int shm_all_gather(const ptrt_comm *c, int axis, const float *in, float *out,
                          int64_t n) {
  publish(c, in);
  world *w = ((member *)c->impl)->w;
  for (int64_t j = 0; j < c->mesh.axes[axis].size; j++)
    memcpy(out + j * n, w->pub[peer(c, axis, j)], (size_t)n * sizeof *out);
  done(c);
  c->state->calls[axis]++;
  return 0;
}

static int shm_reduce_scatter(const ptrt_comm *c, int axis, ptrt_reduce op, const float *in,
                              float *out, int64_t n) {
  publish(c, in);
  int64_t m = n / c->mesh.axes[axis].size, base = c->coord[axis] * m;
  for (int64_t i = 0; i < m; i++) out[i] = reduce_at(c, axis, op, base + i);
  done(c);
  c->state->calls[axis]++;
  return 0;
}

static int shm_broadcast(const ptrt_comm *c, int axis, int root, float *buf, int64_t n) {
  publish(c, buf);
  world *w = ((member *)c->impl)->w;
  if (c->coord[axis] != root) memcpy(buf, w->pub[peer(c, axis, root)], (size_t)n * sizeof *buf);
  done(c);
  c->state->calls[axis]++;
  return 0;
}

static void member_init(member *mb, world *w, int rank) {
  memset(mb, 0, sizeof *mb);
  mb->w = w;
  ptrt_comm *c = &mb->comm;
  c->name = "shared-memory";
  c->rank = rank;
  c->size = w->n;
  c->mesh = w->mesh;
  ptc_mesh_coord(&w->mesh, rank, c->coord);
  c->all_reduce = shm_all_reduce;
  c->all_gather = shm_all_gather;
  c->reduce_scatter = shm_reduce_scatter;
  c->broadcast = shm_broadcast;
  c->state = &mb->state;
  c->impl = mb;
}

/* ---- whole tensors and blocks ------------------------------------------------- */

static void to_buf(const ptc_tensor *x, void *dst) {
  int64_t n = ptc_type_numel(&x->type);
  for (int64_t i = 0; i < n; i++) switch (x->type.dtype) {
    case PTC_DTYPE_F32: ((float *)dst)[i] = (float)x->data[i]; break;
    case PTC_DTYPE_I32: ((int32_t *)dst)[i] = (int32_t)x->data[i]; break;
    default: PTC_UNREACHABLE();
    }
}

static double elem(const void *p, ptc_dtype t, int64_t i) {
  return t == PTC_DTYPE_I32 ? ((const int32_t *)p)[i] : ((const float *)p)[i];
}

/* Rank r's block of a whole tensor (heap). */
static void *block_of(const ptc_mesh *m, const int32_t *coord, const ptc_tensor *x,
                      const ptc_sharding *s) {
  void *whole = malloc((size_t)ptc_type_bytes(&x->type) + 1);
  to_buf(x, whole);
  ptc_type lt;
  ptc_local_type(m, &x->type, s, &lt);
  void *b = malloc((size_t)ptc_type_bytes(&lt) + 1);
  ptrt_local_block(m, coord, &x->type, s, whole, b);
  free(whole);
  return b;
}

/* ---- one rank ---------------------------------------------------------------- */

typedef struct rank_job {
  world *w;
  int rank;
  ptc_func *f;                 /* local view, this rank's own copy */
  const ptc_func *gf;          /* global */
  const ptc_tensor *args, *params;
  void *res[MAXV];             /* heap: the result blocks */
  int rc;
  char diag[1024];
} rank_job;

static void *rank_main(void *arg) {
  rank_job *j = arg;
  member mb;
  member_init(&mb, j->w, j->rank);
  const ptrt_comm *c = &mb.comm;
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_env env = {ctx, NULL, c, NULL};
  const ptc_module *lm = j->f->mod, *gm = j->gf->mod;
  ptrt_vars *vars = ptrt_vars_create(ctx, lm, c);
  PTC_ASSERT(vars);
  for (int32_t p = 0; p < gm->nparams; p++) {
    void *b = block_of(&c->mesh, c->coord, &j->params[p], &gm->params[p].shard);
    memcpy(ptrt_vars_data(vars, p), b, (size_t)ptc_type_bytes(&lm->params[p].type));
    free(b);
  }
  ptrt_program *prog = ptrt_program_create(&env, j->f, vars, NULL);
  j->rc = prog ? 0 : -1;
  for (int32_t i = 0; prog && i < j->gf->nargs; i++) {
    const ptc_value *v = &j->gf->values[j->gf->args[i]];
    void *b = block_of(&c->mesh, c->coord, &j->args[i], &v->shard);
    memcpy(ptrt_program_arg(prog, i), b,
           (size_t)ptc_type_bytes(&j->f->values[j->f->args[i]].type));
    free(b);
  }
  if (prog) j->rc = ptrt_program_run(prog, true);
  const ptc_op *ret = &j->f->ops[j->f->nops - 1];
  for (int32_t r = 0; j->rc == 0 && r < ret->nin; r++) {
    int64_t bytes = ptc_type_bytes(&j->f->values[ret->in[r]].type);
    j->res[r] = malloc((size_t)bytes + 1);
    memcpy(j->res[r], ptrt_program_result(prog, r), (size_t)bytes);
  }
  snprintf(j->diag, sizeof j->diag, "%s", ptc_ctx_diag_text(ctx));
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(vars);
  ptc_ctx_destroy(ctx);
  return NULL;
}

/* ---- putting results back together ------------------------------------------ */

/* The rank that holds the same block as r with every replicated axis (one
 * that neither splits a dimension nor is a partial sum) at 0. */
static int replica0(const ptc_mesh *m, const ptc_sharding *s, int32_t rank, int r) {
  uint8_t used = s->present ? s->partial : 0;
  for (int32_t d = 0; s->present && d < rank; d++) used |= s->dim_axes[d];
  int32_t co[PTC_MAX_MESH_AXES];
  ptc_mesh_coord(m, r, co);
  for (int a = 0; a < m->naxes; a++)
    if (!(used & (1u << a))) co[a] = 0;
  return (int)ptc_mesh_rank(m, co);
}

/* The whole tensor from every rank's block of value v (a result). */
static double *reassemble(const world *w, const ptc_value *gv, rank_job *jobs, int r_idx) {
  const ptc_type *g = &gv->type;
  int64_t n = ptc_type_numel(g);
  double *out = calloc((size_t)n + 1, sizeof *out);
  ptc_type lt;
  ptc_local_type(&w->mesh, g, &gv->shard, &lt);
  int64_t ln = ptc_type_numel(&lt);
  for (int r = 0; r < w->n; r++) {
    if (replica0(&w->mesh, &gv->shard, g->rank, r) != r) continue;
    int32_t co[PTC_MAX_MESH_AXES];
    ptc_mesh_coord(&w->mesh, r, co);
    int64_t gd[PTC_MAX_RANK], org[PTC_MAX_RANK];
    ptrt_block_origin(&w->mesh, co, &lt, &gv->shard, gd, org);
    for (int64_t i = 0; i < ln; i++) {
      int64_t rem = i, gi = 0, st = 1;
      for (int32_t d = g->rank - 1; d >= 0; d--) {
        gi += (org[d] + rem % lt.dims[d]) * st;
        rem /= lt.dims[d];
        st *= g->dims[d];
      }
      out[gi] += elem(jobs[r].res[r_idx], g->dtype, i);
    }
  }
  return out;
}

/* Runs gf (global, in module gm) on a mesh of threads and checks every
 * result against the evaluator. */
static void run_mesh(ptc_module *gm, const char *fname, uint64_t seed) {
  ptc_func *gf = ptc_module_find_func(gm, fname);
  PTC_ASSERT(gf);
  world w;
  memset(&w, 0, sizeof w);
  w.mesh = gm->mesh;
  w.n = (int)ptc_mesh_size(&gm->mesh);
  PTC_ASSERT(w.n <= MAXR);
  pthread_barrier_init(&w.bar, NULL, (unsigned)w.n);
  /* inputs: ids in range of the tables they index, floats in [-1, 1) */
  ptc_tensor args[MAXV], params[MAXV], ref[MAXV];
  memset(ref, 0, sizeof ref);
  for (int32_t i = 0; i < gf->nargs; i++) {
    const ptc_type *t = &gf->values[gf->args[i]].type;
    args[i] = ptc_tensor_new(t);
    if (t->dtype == PTC_DTYPE_I32) ptc_tensor_fill_random(&args[i], seed++, 0, 12);
    else if (t->rank == 0) args[i].data[0] = 1.5; /* the loss's incoming gradient */
    else ptc_tensor_fill_random(&args[i], seed++, -1, 1);
  }
  for (int32_t p = 0; p < gm->nparams; p++) {
    params[p] = ptc_tensor_new(&gm->params[p].type);
    ptc_tensor_fill_random(&params[p], seed++, -1, 1);
  }
  if (ptc_eval_func(gf, args, params, ref) != 0) {
    fprintf(stderr, "@%s: eval failed:\n%s", fname, ptc_ctx_diag_text(gm->ctx));
    PTC_ASSERT(0);
  }
  /* every rank gets its own local module: nothing is shared but the data */
  ptc_module *lm[MAXR];
  rank_job jobs[MAXR];
  pthread_t th[MAXR];
  for (int r = 0; r < w.n; r++) {
    lm[r] = ptc_module_localize(gm);
    memset(&jobs[r], 0, sizeof jobs[r]);
    jobs[r] = (rank_job){.w = &w, .rank = r, .f = ptc_module_find_func(lm[r], fname),
                         .gf = gf, .args = args, .params = params};
  }
  for (int r = 0; r < w.n; r++) PTC_ASSERT(pthread_create(&th[r], NULL, rank_main, &jobs[r]) == 0);
  for (int r = 0; r < w.n; r++) pthread_join(th[r], NULL);
  bool ok = true;
  for (int r = 0; r < w.n; r++) {
    CHECK_MSG(jobs[r].rc == 0, "@%s: rank %d failed:\n%s", fname, r, jobs[r].diag);
    ok &= jobs[r].rc == 0;
  }
  const ptc_op *ret = &gf->ops[gf->nops - 1];
  for (int32_t k = 0; ok && k < ret->nin; k++) {
    const ptc_value *gv = &gf->values[ret->in[k]];
    const char *vn = gv->name ? gv->name : "?";
    double *got = reassemble(&w, gv, jobs, k);
    int64_t n = ptc_type_numel(&gv->type);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
      num += (got[i] - ref[k].data[i]) * (got[i] - ref[k].data[i]);
      den += ref[k].data[i] * ref[k].data[i];
    }
    double e = sqrt(num) / (sqrt(den) + 1e-6);
    CHECK_MSG(e <= 1e-4, "@%s: result %d (%%%s) differs from the evaluator: relative error %.3g",
              fname, k, vn, e);
    free(got);
    /* replicas hold the same bits */
    ptc_type lt;
    ptc_local_type(&w.mesh, &gv->type, &gv->shard, &lt);
    for (int r = 0; r < w.n; r++) {
      int r0 = replica0(&w.mesh, &gv->shard, gv->type.rank, r);
      CHECK_MSG(memcmp(jobs[r].res[k], jobs[r0].res[k], (size_t)ptc_type_bytes(&lt)) == 0,
                "@%s: result %d (%%%s) differs between replicas %d and %d", fname, k, vn, r0, r);
    }
  }
  for (int r = 0; r < w.n; r++) {
    for (int k = 0; k < MAXV; k++) free(jobs[r].res[k]);
    ptc_module_destroy(lm[r]);
  }
  for (int32_t i = 0; i < gf->nargs; i++) ptc_tensor_free(&args[i]);
  for (int32_t p = 0; p < gm->nparams; p++) ptc_tensor_free(&params[p]);
  for (int32_t k = 0; k < ret->nin; k++) ptc_tensor_free(&ref[k]);
  pthread_barrier_destroy(&w.bar);
}

/* ---- the functions ----------------------------------------------------------- */

static ptc_module *parse(ptc_ctx *ctx, const char *text) {
  ptc_module *m = ptc_parse_module(ctx, "spmd.ptir", text, strlen(text));
  if (!m) fprintf(stderr, "%s", ptc_ctx_diag_text(ctx));
  PTC_ASSERT(m);
  return m;
}

/* A vocabulary-parallel embedding, a tensor-parallel MLP, the loss and its
 * gradient with the batch split over dp, and the data movements. */
static const char *const mlp_text =
    "module @spmd mesh<dp=2, tp=2> {\n"
    "  param @emb : f32[12,8] shard<tp,_>\n"
    "  param @w1 : f32[8,16] shard<_,tp>\n"
    "  param @w2 : f32[16,12] shard<tp,_>\n"
    "  func @f(%tokens: i32[4,6] shard<dp,_>, %targets: i32[4,6] shard<dp,_>, %g: f32[])\n"
    "      -> (f32[], f32[12], f32[4,6,12] shard<dp,_,_>, f32[4,6,16], f32[4,6,16] shard<dp,tp,_>,\n"
    "          i32[4,6] shard<dp,tp>, f32[4,6,12] shard<dp,tp,_>, f32[12,8] shard<tp,_>,\n"
    "          f32[12,8] shard<tp,dp>, f32[12] shard<dp>, f32[4,6,12] shard<dp,_,_>,\n"
    "          f32[4,6,8] shard<dp,_,_> partial<tp>, f32[4,6,16] shard<dp,_,tp>, f32[] partial<dp>,\n"
    "          i32[4,6] shard<dp,_>, i32[4,6] shard<dp,_>) {\n"
    "    %e = embedding %tokens, @emb : f32[4,6,8] shard<dp,_,_> partial<tp>\n"
    "    %x = all_reduce %e {axis = tp, op = sum} : f32[4,6,8] shard<dp,_,_>\n"
    "    %h = matmul %x, @w1 : f32[4,6,16] shard<dp,_,tp>\n"
    "    %a = gelu %h : f32[4,6,16] shard<dp,_,tp>\n"
    "    %y = matmul %a, @w2 : f32[4,6,12] shard<dp,_,_> partial<tp>\n"
    "    %z = all_reduce %y {axis = tp, op = sum} : f32[4,6,12] shard<dp,_,_>\n"
    "    %l = cross_entropy %z, %targets : f32[] partial<dp>\n"
    "    %loss = all_reduce %l {axis = dp, op = sum} : f32[]\n"
    "    %m = reduce_mean %z {axes = [0, 1]} : f32[12] partial<dp>\n"
    "    %mean = all_reduce %m {axis = dp, op = sum} : f32[12]\n"
    "    %dz = cross_entropy_grad %g, %z, %targets : f32[4,6,12] shard<dp,_,_>\n"
    "    %gh = all_gather %h {axis = tp, dim = 2} : f32[4,6,16] shard<dp,_,_>\n"
    "    %gg = all_gather %gh {axis = dp, dim = 0} : f32[4,6,16]\n"
    "    %s1 = shard %gg {axis = tp, dim = 1} : f32[4,6,16] shard<_,tp,_>\n"
    "    %s2 = shard %s1 {axis = dp, dim = 0} : f32[4,6,16] shard<dp,tp,_>\n"
    "    %ts = shard %tokens {axis = tp, dim = 1} : i32[4,6] shard<dp,tp>\n"
    "    %rs = reduce_scatter %y {axis = tp, dim = 1, op = sum} : f32[4,6,12] shard<dp,tp,_>\n"
    "    %eg = embedding_grad %x, %tokens : f32[12,8] shard<tp,_> partial<dp>\n"
    "    %egr = all_reduce %eg {axis = dp, op = sum} : f32[12,8] shard<tp,_>\n"
    "    %egs = reduce_scatter %eg {axis = dp, dim = 1, op = sum} : f32[12,8] shard<tp,dp>\n"
    "    %ms = reduce_scatter %m {axis = dp, dim = 0, op = sum} : f32[12] shard<dp>\n"
    "    %bc = broadcast %z {axis = tp, root = 1} : f32[4,6,12] shard<dp,_,_>\n"
    "    %tg = all_gather %ts {axis = tp, dim = 1} : i32[4,6] shard<dp,_>\n"
    "    %tb = broadcast %tg {axis = tp, root = 1} : i32[4,6] shard<dp,_>\n"
    "    return %loss, %mean, %dz, %gg, %s2, %ts, %rs, %egr, %egs, %ms, %bc, %e, %a, %l, %tg, %tb\n"
    "  }\n"
    "\n"
    "  func @wide(%x: f32[8,4] shard<(dp,tp),_>) -> (f32[], f32[8,4], f32[8,4] shard<tp,_>) {\n"
    "    %m = reduce_mean %x {axes = [0, 1]} : f32[] partial<dp,tp>\n"
    "    %r = all_reduce %m {axis = tp, op = sum} : f32[] partial<dp>\n"
    "    %s = all_reduce %r {axis = dp, op = sum} : f32[]\n"
    "    %g1 = all_gather %x {axis = tp, dim = 0} : f32[8,4] shard<dp,_>\n"
    "    %g2 = all_gather %g1 {axis = dp, dim = 0} : f32[8,4]\n"
    "    %p = shard %g2 {axis = tp, dim = 0} : f32[8,4] shard<tp,_>\n"
    "    return %s, %g2, %p\n"
    "  }\n"
    "}\n";

static void test_mesh(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = parse(ctx, mlp_text);
  run_mesh(m, "f", 11);
  run_mesh(m, "wide", 23);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* ---- refusals ------------------------------------------------------------------ */

static int no_gather(const ptrt_comm *c, int axis, const float *in, float *out, int64_t n) {
  CHECK_MSG(0, "a collective ran although the program should have stopped");
  return -1;
}

/* A function localized for mesh<dp=4> on a communicator of mesh<dp=2,
 * tp=2> (as many ranks, other groups): the all_gather stops at its op. */
static void test_refusals(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = parse(ctx, "module @r mesh<dp=4> {\n"
                             "  func @f(%x: f32[8,2] shard<dp,_>) -> f32[8,2] {\n"
                             "    %g = all_gather %x {axis = dp, dim = 0} : f32[8,2]\n"
                             "    return %g\n"
                             "  }\n"
                             "}\n");
  ptc_module *lm = ptc_module_localize(m);
  ptc_func *f = ptc_module_find_func(lm, "f");

  /* one rank for four devices: refused when the program is made */
  ptrt_env env = {ctx, NULL, ptrt_comm_single(), NULL};
  ptrt_program *p = ptrt_program_create(&env, f, NULL, NULL);
  CHECK(p == NULL);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "@f runs on mesh<dp=4> (4 devices), but the single "
                                           "communicator has 1 rank: run it with one rank per "
                                           "device"),
            "%s", ptc_ctx_diag_text(ctx));
  ptc_ctx_reset_errors(ctx);

  ptrt_comm_state st;
  memset(&st, 0, sizeof st);
  ptrt_comm other = {.name = "fake", .rank = 1, .size = 4, .all_gather = no_gather,
                     .state = &st};
  char err[128];
  PTC_ASSERT(ptc_mesh_parse("dp=2,tp=2", &other.mesh, err, sizeof err) == 0);
  ptc_mesh_coord(&other.mesh, 1, other.coord);
  env.comm = &other;
  p = ptrt_program_create(&env, f, NULL, NULL);
  PTC_ASSERT(p);
  CHECK(ptrt_program_run(p, true) != 0);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "all_gather: the local shapes cut dimension 0 over 4 "
                                           "devices of dp, but the fake communicator has 2 "
                                           "there"),
            "%s", ptc_ctx_diag_text(ctx));
  ptrt_program_destroy(p);
  ptc_module_destroy(lm);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* The note a kernel leaves before a communicator call. */
static int note_gather(const ptrt_comm *c, int axis, const float *in, float *out, int64_t n) {
  memcpy(out, in, (size_t)n * sizeof *in);
  CHECK_STR(c->state->what, "all_gather over dp at gpt.ptg:31:9 (op 0 of @f)");
  return 0;
}

static void test_note(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = parse(ctx, "module @n mesh<dp=1> {\n"
                             "  func @f(%x: f32[2,2] shard<dp,_>) -> f32[2,2] {\n"
                             "    %g = all_gather %x {axis = dp, dim = 0} : f32[2,2] "
                             "loc(\"gpt.ptg\":31:9)\n"
                             "    return %g\n"
                             "  }\n"
                             "}\n");
  ptrt_comm_state st;
  memset(&st, 0, sizeof st);
  ptrt_comm c = {.name = "fake", .size = 1, .all_gather = note_gather, .state = &st};
  c.mesh = m->mesh;
  ptrt_env env = {ctx, NULL, &c, NULL};
  ptrt_program *p = ptrt_program_create(&env, ptc_module_find_func(m, "f"), NULL, NULL);
  PTC_ASSERT(p);
  CHECK(ptrt_program_run(p, true) == 0);
  ptrt_program_destroy(p);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  alarm(120); /* a rank that stops early would leave the others at a barrier */
  ptrt_blas_set_threads(1);
  test_mesh();
  test_refusals();
  test_note();
  return test_report("test_rt_spmd");
}
