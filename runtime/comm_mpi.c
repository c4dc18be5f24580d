/* comm_mpi.c -- the MPI communicator: one process per device of the plan's
 * mesh, started by mpirun (or srun), with one MPI communicator per mesh
 * axis.  It fills the table of ptrt.h so the kernels never see MPI.
 *
 * Why it looks the way it does:
 *  - A training run must never hang.  Every collective and transfer is
 *    issued in its non-blocking form and polled with MPI_Test under a
 *    deadline; a peer that does not arrive in time ends every rank with one
 *    line naming this rank, its mesh coordinates and what it was doing
 *    (state->what), instead of a job that sits idle until its allocation
 *    runs out.
 *  - MPI errors come back as values (MPI_ERRORS_RETURN) and are reported
 *    through the caller's ptc_ctx with MPI's own explanation.
 *  - MPI counts are int; buffers over INT_MAX elements go in chunks.
 *  - Pipeline sends are buffered: a schedule may send several microbatches
 *    before the peer receives the first (1F1B's warm-up), which the
 *    compiler's comm-check proves safe only for sends that never wait.  A
 *    blocking MPI send of a large message waits for the matching receive
 *    and could deadlock such a schedule, so send copies the message, starts
 *    MPI_Isend and returns; the copies are freed as their sends complete
 *    (checked at every transfer) and flush waits for the rest.
 *  - 16-bit floats (bf16, f16) travel as 2-byte elements (MPI_UINT16_T):
 *    half the bytes of f32, which is what the counters count.  Their sums
 *    (and max, min) are user MPI_Ops that widen to f32, combine and round
 *    each combination (runtime/half.h).  The alternative, widening to f32
 *    scratch, reducing in f32 and rounding once at the end, sends twice the
 *    bytes and needs f32 scratch the size of the buffer, for a sum that is
 *    the same on two ranks and differs by the rounding of partial sums on
 *    more -- what bf16 gradient reductions on accelerators do too.
 *  - Without MPI (PTC_HAVE_MPI is 0) the file still builds: the launcher
 *    check works from the environment and creating the communicator says
 *    how to get a build that has it.
 */
#include "ptc_config.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/half.h"
#include "runtime/ptrt.h"

#if PTC_HAVE_MPI
#include <mpi.h>
#endif

/* ---- the launcher -------------------------------------------------------- */

static long env_long(const char *name) {
  const char *s = getenv(name);
  if (!s || !*s) return -1;
  char *end;
  long v = strtol(s, &end, 10);
  return end == s || v < 0 ? -1 : v;
}

/* A world size above one, or any rank above zero (PMIx publishes the rank
 * only), means there are peers.  SLURM_NTASKS is not used: a batch script
 * sees it too, where it is one process and not an srun step. */
bool ptrt_launched_multi(void) {
  static const char *const sizes[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                                      "SLURM_STEP_NUM_TASKS"};
  static const char *const ranks[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
    if (env_long(sizes[i]) > 1) return true;
  for (size_t i = 0; i < sizeof ranks / sizeof *ranks; i++)
    if (env_long(ranks[i]) > 0) return true;
  return false;
}

#if !PTC_HAVE_MPI

ptrt_comm *ptrt_comm_mpi_create(ptc_ctx *ctx, const ptc_mesh *mesh, double timeout_s) {
  ptrt_error(ctx, "this ptrun was built without MPI; rebuild with Open MPI installed "
             "(libopenmpi-dev)");
  return NULL;
}

void ptrt_comm_mpi_destroy(ptrt_comm *c) {}

void ptrt_comm_abort(const ptrt_comm *c, int code) {
  fflush(NULL);
  exit(code);
}

void ptrt_comm_mpi_unwind(double timeout_s) { (void)timeout_s; }

#else /* PTC_HAVE_MPI */

/* Elements (bytes for send and recv) per MPI call; tests build this file
 * with a tiny value to run the chunked paths. */
#ifndef PTRT_MPI_CHUNK
#define PTRT_MPI_CHUNK INT_MAX
#endif
/* Per block, when all_gather or reduce_scatter go in chunks through a
 * packed buffer of (axis size) blocks. */
#define PTRT_MPI_PACK ((int64_t)1 << 26)

/* A send on its way: this rank's copy of the message, its requests (one
 * per chunk) and what issued it, for the message if it never completes. */
typedef struct pending_send {
  char *copy;
  MPI_Request *req;
  int nreq;
  int peer, tag;
  int64_t bytes;
  char what[256];
} pending_send;

typedef struct mpi_comm {
  ptrt_comm table; /* what create returns; impl points back here */
  ptrt_comm_state state;
  ptc_ctx *ctx;    /* the creator's: errors are reported through it */
  double timeout_s;
  bool finalize;   /* this communicator initialised MPI */
  MPI_Comm world;  /* a duplicate of MPI_COMM_WORLD */
  MPI_Comm axis[PTC_MAX_MESH_AXES]; /* MPI_COMM_NULL for an axis of size 1 */
  int send_axis;   /* where send counts its bytes: pp, else axis 0; -1 */
  int tag_ub;
  char where[96];  /* "rank 3 (pp=0, dp=1, tp=1)" */
  pending_send *pend; /* heap: sends not known to be complete, oldest first */
  int npend, cap_pend;
  MPI_Op half_op[2][3]; /* 16-bit reductions: [bf16, f16][sum, max, min] */
} mpi_comm;

static mpi_comm *impl_of(const ptrt_comm *c) { return c->impl; }

static const char *what_of(const mpi_comm *m, const char *op) {
  return m->state.what[0] ? m->state.what : op;
}

/* Reports an MPI error code and returns -1. */
static int mpi_fail(mpi_comm *m, int rc, const char *op) {
  char s[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "error code %d", rc);
  ptrt_error(m->ctx, "%s: MPI failed in %s: %s", m->where, what_of(m, op), s);
  return -1;
}

static _Noreturn void timed_out(mpi_comm *m, const char *op) {
  fprintf(stderr, "ptrun: error: %s: timed out after %g s waiting for peers in %s; a rank "
          "has died or is stuck -- see its own messages above; ending every rank\n",
          m->where, m->timeout_s, what_of(m, op));
  fflush(NULL);
  MPI_Abort(MPI_COMM_WORLD, 1);
  abort(); /* MPI_Abort does not return */
}

/* Polls req until it completes, napping between tests (from none up to a
 * millisecond) so an idle rank leaves its core to the others; a peer that
 * does not arrive within the timeout ends the run. */
static int wait_for(mpi_comm *m, MPI_Request *req, MPI_Status *st, const char *op) {
  double start = ptrt_now();
  long nap_ns = 0;
  for (int tries = 0;; tries++) {
    int done = 0;
    int rc = MPI_Test(req, &done, st ? st : MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) return mpi_fail(m, rc, op);
    if (done) return 0;
    if (ptrt_now() - start > m->timeout_s) timed_out(m, op);
    if (tries < 64) continue;
    nap_ns = nap_ns ? nap_ns * 2 : 1000;
    if (nap_ns > 1000000) nap_ns = 1000000;
    struct timespec ts = {0, nap_ns};
    nanosleep(&ts, NULL);
  }
}

/* Checks a collective's arguments (the same on every rank, so an error
 * here is reported everywhere and nobody waits) and names it in op. */
static int check_axis(mpi_comm *m, const char *name, int axis, int64_t n, char *op,
                      size_t oplen) {
  const ptc_mesh *mesh = &m->table.mesh;
  if (axis < 0 || axis >= mesh->naxes) {
    snprintf(op, oplen, "%s", name);
    ptrt_error(m->ctx, "%s: %s over mesh axis %d, but the mesh has %d axes (in %s)",
               m->where, name, axis, (int)mesh->naxes, what_of(m, op));
    return -1;
  }
  snprintf(op, oplen, "%s over %s", name, mesh->axes[axis].name);
  if (n < 0) {
    ptrt_error(m->ctx, "%s: %s of %lld elements (in %s)", m->where, op, (long long)n,
               what_of(m, op));
    return -1;
  }
  return 0;
}

/* The ring model of ptrt_comm_state. */
static void count(mpi_comm *m, int axis, double bytes) {
  if (axis < 0) return;
  m->state.sent[axis] += bytes;
  m->state.calls[axis]++;
}

/* The elements a collective moves: f32 (MPI_FLOAT with MPI's own
 * reductions) or a 16-bit float (2-byte MPI_UINT16_T with the user
 * reductions below). */
typedef struct elems {
  MPI_Datatype dt;
  int64_t size; /* bytes */
  ptc_dtype t;  /* PTC_DTYPE_F32, _BF16 or _F16 */
} elems;

static elems f32_elems(void) { return (elems){MPI_FLOAT, 4, PTC_DTYPE_F32}; }

/* 16-bit reductions: each combination widens both sides to f32, combines
 * and rounds (runtime/half.h).  MPI calls them with no context but the
 * datatype, so there is one function per dtype and kind. */
#define HALF_REDUCER(name, T, expr)                                                   \
  static void name(void *in, void *inout, int *len, MPI_Datatype *dt) {            \
    (void)dt;                                                                        \
    const uint16_t *a = in;                                                          \
    uint16_t *o = inout;                                                             \
    for (int i = 0; i < *len; i++) {                                                 \
      float x = ptrt_half_load(T, a, i), y = ptrt_half_load(T, o, i);               \
      o[i] = ptrt_half_round(T, expr);                                               \
    }                                                                                \
  }
HALF_REDUCER(sum_bf16, PTC_DTYPE_BF16, x + y)
HALF_REDUCER(max_bf16, PTC_DTYPE_BF16, x > y ? x : y)
HALF_REDUCER(min_bf16, PTC_DTYPE_BF16, x < y ? x : y)
HALF_REDUCER(sum_f16, PTC_DTYPE_F16, x + y)
HALF_REDUCER(max_f16, PTC_DTYPE_F16, x > y ? x : y)
HALF_REDUCER(min_f16, PTC_DTYPE_F16, x < y ? x : y)
#undef HALF_REDUCER

/* half_ops[bf16 0 / f16 1][sum 0, max 1, min 2]: created with the
 * communicator, freed before MPI ends */
static int make_half_ops(MPI_Op ops[2][3]) {
  MPI_User_function *fn[2][3] = {{sum_bf16, max_bf16, min_bf16}, {sum_f16, max_f16, min_f16}};
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < 3; k++) {
      int rc = MPI_Op_create(fn[t][k], 1, &ops[t][k]);
      if (rc != MPI_SUCCESS) return rc;
    }
  return MPI_SUCCESS;
}

static MPI_Op mpi_op(const mpi_comm *m, const elems *e, ptrt_reduce op) {
  int k = op == PTRT_REDUCE_MAX ? 1 : op == PTRT_REDUCE_MIN ? 2 : 0;
  if (e->t != PTC_DTYPE_F32) return m->half_op[e->t == PTC_DTYPE_F16][k];
  return k == 1 ? MPI_MAX : k == 2 ? MPI_MIN : MPI_SUM;
}

/* A mean: the reduced sum divided by the group size (in f32; 16-bit
 * elements rounded back). */
static void divide(const elems *e, void *buf, int64_t n, int64_t g) {
  float d = (float)g;
  if (e->t == PTC_DTYPE_F32) {
    float *x = buf;
    for (int64_t i = 0; i < n; i++) x[i] /= d;
    return;
  }
  uint16_t *h = buf;
  for (int64_t i = 0; i < n; i++) h[i] = ptrt_half_round(e->t, ptrt_half_load(e->t, h, i) / d);
}

static bool overlap(const void *a, size_t an, const void *b, size_t bn) {
  const char *p = a, *q = b;
  return p < q + bn && q < p + an;
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- collectives ----------------------------------------------------------- */

/* Each collective is written once over elements of any size (elems); the
 * table's f32 and 16-bit slots are thin wrappers. */

static int all_reduce_elems(const ptrt_comm *c, const elems *e, int axis, ptrt_reduce op,
                            void *buf, int64_t n) {
  mpi_comm *m = impl_of(c);
  char name[64];
  if (check_axis(m, "all_reduce", axis, n, name, sizeof name) != 0) return -1;
  int64_t g = c->mesh.axes[axis].size;
  if (g == 1 || n == 0) return 0;
  char *b = buf;
  for (int64_t off = 0; off < n; off += PTRT_MPI_CHUNK) {
    int cnt = (int)min64(PTRT_MPI_CHUNK, n - off);
    MPI_Request req;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, b + off * e->size, cnt, e->dt, mpi_op(m, e, op),
                            m->axis[axis], &req);
    if (rc != MPI_SUCCESS) return mpi_fail(m, rc, name);
    if (wait_for(m, &req, NULL, name) != 0) return -1;
  }
  if (op == PTRT_REDUCE_MEAN) divide(e, buf, n, g);
  count(m, axis, 2.0 * (double)(g - 1) / (double)g * (double)n * (double)e->size);
  return 0;
}

/* One Iallgather of cnt elements per rank into out (g blocks of stride
 * elements, this chunk at offset off of each). */
static int gather_chunk(mpi_comm *m, const elems *e, int axis, const char *in, char *out,
                        int64_t stride, int64_t off, int cnt, int64_t g, const char *name) {
  int64_t es = e->size;
  char *pack = out + off * es;
  if (cnt != stride) {
    pack = ptrt_alloc((int64_t)cnt * g * es);
    if (!pack) {
      ptrt_error(m->ctx, "%s: out of memory for %s", m->where, what_of(m, name));
      return -1;
    }
  }
  MPI_Request req;
  int rc = MPI_Iallgather(in + off * es, cnt, e->dt, pack, cnt, e->dt, m->axis[axis], &req);
  int status = rc != MPI_SUCCESS ? mpi_fail(m, rc, name) : wait_for(m, &req, NULL, name);
  if (pack != out + off * es) {
    if (status == 0)
      for (int64_t k = 0; k < g; k++)
        memcpy(out + (k * stride + off) * es, pack + k * cnt * es, (size_t)(cnt * es));
    ptrt_free(pack);
  }
  return status;
}

static int all_gather_elems(const ptrt_comm *c, const elems *e, int axis, const void *in,
                            void *out, int64_t n) {
  mpi_comm *m = impl_of(c);
  char name[64];
  int64_t es = e->size;
  if (check_axis(m, "all_gather", axis, n, name, sizeof name) != 0) return -1;
  int64_t g = c->mesh.axes[axis].size;
  if (g == 1 || n == 0) {
    if (out != in) memmove(out, in, (size_t)(n * es));
    return 0;
  }
  /* MPI buffers may not overlap: gather from a copy */
  void *copy = NULL;
  if (overlap(in, (size_t)(n * es), out, (size_t)(n * g * es))) {
    copy = ptrt_alloc(n * es);
    if (!copy) {
      ptrt_error(m->ctx, "%s: out of memory for %s", m->where, what_of(m, name));
      return -1;
    }
    memcpy(copy, in, (size_t)(n * es));
    in = copy;
  }
  int status = 0;
  int64_t step = n <= PTRT_MPI_CHUNK ? n : min64(PTRT_MPI_CHUNK, PTRT_MPI_PACK);
  for (int64_t off = 0; off < n && status == 0; off += step)
    status = gather_chunk(m, e, axis, in, out, n, off, (int)min64(step, n - off), g, name);
  ptrt_free(copy);
  if (status != 0) return -1;
  count(m, axis, (double)(g - 1) / (double)g * (double)(n * g) * (double)es);
  return 0;
}

/* One Ireduce_scatter_block of cnt elements per block: chunk off of each
 * of the g blocks (of stride elements) of in, reduced into out + off. */
static int scatter_chunk(mpi_comm *m, const elems *e, int axis, MPI_Op op, const char *in,
                         char *out, int64_t stride, int64_t off, int cnt, int64_t g,
                         const char *name) {
  int64_t es = e->size;
  const char *src = in;
  char *pack = NULL;
  if (cnt != stride) {
    pack = ptrt_alloc((int64_t)cnt * g * es);
    if (!pack) {
      ptrt_error(m->ctx, "%s: out of memory for %s", m->where, what_of(m, name));
      return -1;
    }
    for (int64_t k = 0; k < g; k++)
      memcpy(pack + k * cnt * es, in + (k * stride + off) * es, (size_t)(cnt * es));
    src = pack;
  }
  MPI_Request req;
  int rc = MPI_Ireduce_scatter_block(src, out + off * es, cnt, e->dt, op, m->axis[axis], &req);
  int status = rc != MPI_SUCCESS ? mpi_fail(m, rc, name) : wait_for(m, &req, NULL, name);
  ptrt_free(pack);
  return status;
}

static int reduce_scatter_elems(const ptrt_comm *c, const elems *e, int axis, ptrt_reduce op,
                                const void *in, void *out, int64_t n) {
  mpi_comm *m = impl_of(c);
  char name[64];
  int64_t es = e->size;
  if (check_axis(m, "reduce_scatter", axis, n, name, sizeof name) != 0) return -1;
  int64_t g = c->mesh.axes[axis].size;
  if (n % g != 0) {
    ptrt_error(m->ctx, "%s: %s of %lld elements, which the axis's %lld ranks cannot split "
               "evenly (in %s)", m->where, name, (long long)n, (long long)g,
               what_of(m, name));
    return -1;
  }
  int64_t part = n / g;
  if (g == 1 || n == 0) {
    if (out != in) memmove(out, in, (size_t)(n * es));
    return 0;
  }
  /* MPI buffers may not overlap: reduce into a scratch result */
  void *res = out;
  if (overlap(in, (size_t)(n * es), out, (size_t)(part * es))) {
    res = ptrt_alloc(part * es);
    if (!res) {
      ptrt_error(m->ctx, "%s: out of memory for %s", m->where, what_of(m, name));
      return -1;
    }
  }
  int status = 0;
  int64_t step = part <= PTRT_MPI_CHUNK ? part : min64(PTRT_MPI_CHUNK, PTRT_MPI_PACK);
  for (int64_t off = 0; off < part && status == 0; off += step)
    status = scatter_chunk(m, e, axis, mpi_op(m, e, op), in, res, part, off,
                           (int)min64(step, part - off), g, name);
  if (res != out) {
    if (status == 0) memcpy(out, res, (size_t)(part * es));
    ptrt_free(res);
  }
  if (status != 0) return -1;
  if (op == PTRT_REDUCE_MEAN) divide(e, out, part, g);
  count(m, axis, (double)(g - 1) / (double)g * (double)n * (double)es);
  return 0;
}

static int broadcast_elems(const ptrt_comm *c, const elems *e, int axis, int root, void *buf,
                           int64_t n) {
  mpi_comm *m = impl_of(c);
  char name[64];
  if (check_axis(m, "broadcast", axis, n, name, sizeof name) != 0) return -1;
  int64_t g = c->mesh.axes[axis].size;
  if (root < 0 || root >= g) {
    ptrt_error(m->ctx, "%s: %s from coordinate %d, but the axis has %lld ranks (in %s)",
               m->where, name, root, (long long)g, what_of(m, name));
    return -1;
  }
  if (g == 1 || n == 0) return 0;
  char *b = buf;
  for (int64_t off = 0; off < n; off += PTRT_MPI_CHUNK) {
    int cnt = (int)min64(PTRT_MPI_CHUNK, n - off);
    MPI_Request req;
    int rc = MPI_Ibcast(b + off * e->size, cnt, e->dt, root, m->axis[axis], &req);
    if (rc != MPI_SUCCESS) return mpi_fail(m, rc, name);
    if (wait_for(m, &req, NULL, name) != 0) return -1;
  }
  count(m, axis, (double)(g - 1) / (double)g * (double)n * (double)e->size);
  return 0;
}

static int mpi_all_reduce(const ptrt_comm *c, int axis, ptrt_reduce op, float *buf,
                          int64_t n) {
  elems e = f32_elems();
  return all_reduce_elems(c, &e, axis, op, buf, n);
}

static int mpi_all_gather(const ptrt_comm *c, int axis, const float *in, float *out,
                          int64_t n) {
  elems e = f32_elems();
  return all_gather_elems(c, &e, axis, in, out, n);
}

static int mpi_reduce_scatter(const ptrt_comm *c, int axis, ptrt_reduce op, const float *in,
                              float *out, int64_t n) {
  elems e = f32_elems();
  return reduce_scatter_elems(c, &e, axis, op, in, out, n);
}

static int mpi_broadcast(const ptrt_comm *c, int axis, int root, float *buf, int64_t n) {
  elems e = f32_elems();
  return broadcast_elems(c, &e, axis, root, buf, n);
}

/* 16-bit floats: 2-byte elements (dtype t only matters to reductions) */
static elems half_elems(ptc_dtype t) { return (elems){MPI_UINT16_T, 2, t}; }

static int mpi_all_reduce16(const ptrt_comm *c, int axis, ptrt_reduce op, ptc_dtype t,
                            uint16_t *buf, int64_t n) {
  elems e = half_elems(t);
  return all_reduce_elems(c, &e, axis, op, buf, n);
}

static int mpi_all_gather16(const ptrt_comm *c, int axis, const uint16_t *in, uint16_t *out,
                            int64_t n) {
  elems e = half_elems(PTC_DTYPE_BF16);
  return all_gather_elems(c, &e, axis, in, out, n);
}

static int mpi_reduce_scatter16(const ptrt_comm *c, int axis, ptrt_reduce op, ptc_dtype t,
                                const uint16_t *in, uint16_t *out, int64_t n) {
  elems e = half_elems(t);
  return reduce_scatter_elems(c, &e, axis, op, in, out, n);
}

static int mpi_broadcast16(const ptrt_comm *c, int axis, int root, uint16_t *buf,
                           int64_t n) {
  elems e = half_elems(PTC_DTYPE_BF16);
  return broadcast_elems(c, &e, axis, root, buf, n);
}

/* ---- pipeline transfers ------------------------------------------------- */

static int check_peer(mpi_comm *m, const char *op, int peer, int tag, int64_t bytes) {
  const ptrt_comm *c = &m->table;
  if (peer < 0 || peer >= c->size || peer == c->rank) {
    ptrt_error(m->ctx, "%s: %s with rank %d, which is %s (in %s)", m->where, op, peer,
               peer == c->rank ? "this rank" : "not in the world", what_of(m, op));
    return -1;
  }
  if (tag < 0 || tag > m->tag_ub) {
    ptrt_error(m->ctx, "%s: %s with tag %d; MPI tags here are 0..%d (in %s)", m->where, op,
               tag, m->tag_ub, what_of(m, op));
    return -1;
  }
  if (bytes < 0) {
    ptrt_error(m->ctx, "%s: %s of %lld bytes (in %s)", m->where, op, (long long)bytes,
               what_of(m, op));
    return -1;
  }
  return 0;
}

/* "rank 5 (pp=1, dp=0, tp=1)" */
static void rank_text(const mpi_comm *m, int rank, char *out, size_t cap) {
  const ptc_mesh *mesh = &m->table.mesh;
  int32_t coord[PTC_MAX_MESH_AXES];
  ptc_mesh_coord(mesh, rank, coord);
  size_t len = (size_t)snprintf(out, cap, "rank %d", rank);
  for (int a = 0; a < mesh->naxes && len < cap; a++)
    len += (size_t)snprintf(out + len, cap - len, "%s%s=%d", a ? ", " : " (",
                            mesh->axes[a].name, (int)coord[a]);
  if (mesh->naxes && len < cap) snprintf(out + len, cap - len, ")");
}

static void pending_free(pending_send *ps) {
  ptrt_free(ps->copy);
  free(ps->req);
}

/* Frees the copies of the sends that have completed, keeping the order of
 * the others; never waits. */
static int reap_sends(mpi_comm *m) {
  int kept = 0, status = 0;
  for (int i = 0; i < m->npend; i++) {
    pending_send *ps = &m->pend[i];
    int done = 0;
    if (status == 0) {
      int rc = MPI_Testall(ps->nreq, ps->req, &done, MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) status = mpi_fail(m, rc, ps->what);
    }
    if (done) pending_free(ps);
    else m->pend[kept++] = *ps;
  }
  m->npend = kept;
  return status;
}

/* Copies the message and starts its sends (one per chunk, even for an
 * empty message: recv counts them the same way); returns at once. */
static int mpi_send(const ptrt_comm *c, int peer, int tag, const void *buf, int64_t bytes) {
  mpi_comm *m = impl_of(c);
  char name[64];
  snprintf(name, sizeof name, "send to rank %d", peer);
  if (check_peer(m, name, peer, tag, bytes) != 0) return -1;
  if (reap_sends(m) != 0) return -1;
  pending_send ps = {.peer = peer, .tag = tag, .bytes = bytes};
  snprintf(ps.what, sizeof ps.what, "%s", what_of(m, name));
  ps.copy = ptrt_alloc(bytes);
  int64_t nchunks = bytes > 0 ? (bytes + PTRT_MPI_CHUNK - 1) / PTRT_MPI_CHUNK : 1;
  ps.req = calloc((size_t)nchunks, sizeof *ps.req);
  if (!ps.copy || !ps.req) {
    pending_free(&ps);
    ptrt_error(m->ctx, "%s: out of memory for the %lld-byte copy of a message (in %s)",
               m->where, (long long)bytes, ps.what);
    return -1;
  }
  memcpy(ps.copy, buf, (size_t)bytes);
  if (m->npend == m->cap_pend) {
    int cap = m->cap_pend ? 2 * m->cap_pend : 16;
    pending_send *grown = realloc(m->pend, (size_t)cap * sizeof *grown);
    if (!grown) {
      pending_free(&ps);
      ptrt_error(m->ctx, "%s: out of memory for the list of pending sends", m->where);
      return -1;
    }
    m->pend = grown;
    m->cap_pend = cap;
  }
  int64_t off = 0;
  int status = 0;
  do {
    int cnt = (int)min64(PTRT_MPI_CHUNK, bytes - off);
    int rc = MPI_Isend(ps.copy + off, cnt, MPI_BYTE, peer, tag, m->world, &ps.req[ps.nreq]);
    if (rc != MPI_SUCCESS) {
      status = mpi_fail(m, rc, name);
      break;
    }
    ps.nreq++;
    off += cnt;
  } while (off < bytes);
  if (ps.nreq == 0) {
    pending_free(&ps);
    return -1;
  }
  m->pend[m->npend++] = ps; /* the started requests own the copy now */
  if (status != 0) return -1;
  count(m, m->send_axis, (double)bytes);
  return 0;
}

/* Waits for every pending send, oldest first, each under the timeout; one
 * that is never received ends the run naming its peer, tag and op. */
static int mpi_flush(const ptrt_comm *c) {
  mpi_comm *m = impl_of(c);
  if (reap_sends(m) != 0) return -1;
  if (m->npend == 0) return 0;
  char saved[sizeof m->state.what];
  memcpy(saved, m->state.what, sizeof saved);
  int status = 0;
  for (int i = 0; i < m->npend && status == 0; i++) {
    pending_send *ps = &m->pend[i];
    char peer[96];
    rank_text(m, ps->peer, peer, sizeof peer);
    snprintf(m->state.what, sizeof m->state.what, "a send of %lld bytes with tag %d to %s, "
             "which has not received it (sent by %s)", (long long)ps->bytes, ps->tag, peer,
             ps->what);
    for (int k = 0; k < ps->nreq && status == 0; k++)
      status = wait_for(m, &ps->req[k], NULL, "a pending send");
  }
  memcpy(m->state.what, saved, sizeof saved);
  if (status != 0) return -1;
  for (int i = 0; i < m->npend; i++) pending_free(&m->pend[i]);
  m->npend = 0;
  return 0;
}

static int mpi_recv(const ptrt_comm *c, int peer, int tag, void *buf, int64_t bytes) {
  mpi_comm *m = impl_of(c);
  char name[64];
  snprintf(name, sizeof name, "recv from rank %d", peer);
  if (check_peer(m, name, peer, tag, bytes) != 0) return -1;
  if (reap_sends(m) != 0) return -1;
  char *p = buf;
  int64_t off = 0;
  do {
    int cnt = (int)min64(PTRT_MPI_CHUNK, bytes - off);
    MPI_Request req;
    MPI_Status st;
    int rc = MPI_Irecv(p + off, cnt, MPI_BYTE, peer, tag, m->world, &req);
    if (rc != MPI_SUCCESS) return mpi_fail(m, rc, name);
    if (wait_for(m, &req, &st, name) != 0) return -1;
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    if (got != cnt) {
      ptrt_error(m->ctx, "%s: %s: expected %lld bytes with tag %d, got %lld (in %s)", m->where,
                 name, (long long)bytes, tag, (long long)(off + got), what_of(m, name));
      return -1;
    }
    off += cnt;
  } while (off < bytes);
  count(m, m->send_axis, 0); /* a call; its bytes are the sender's */
  return 0;
}

static int mpi_world_max(const ptrt_comm *c, double *v) {
  mpi_comm *m = impl_of(c);
  const char *name = "world_max";
  MPI_Request req;
  int rc = MPI_Iallreduce(MPI_IN_PLACE, v, 1, MPI_DOUBLE, MPI_MAX, m->world, &req);
  if (rc != MPI_SUCCESS) return mpi_fail(m, rc, name);
  return wait_for(m, &req, NULL, name);
}

/* ---- creation ----------------------------------------------------------- */

static void free_comms(mpi_comm *m) {
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < 3; k++)
      if (m->half_op[t][k] != MPI_OP_NULL) MPI_Op_free(&m->half_op[t][k]);
  for (int a = 0; a < PTC_MAX_MESH_AXES; a++)
    if (m->axis[a] != MPI_COMM_NULL) MPI_Comm_free(&m->axis[a]);
  if (m->world != MPI_COMM_NULL) MPI_Comm_free(&m->world);
}

static void describe_rank(mpi_comm *m) {
  const ptrt_comm *c = &m->table;
  size_t len = (size_t)snprintf(m->where, sizeof m->where, "rank %d", c->rank);
  for (int a = 0; a < c->mesh.naxes && len < sizeof m->where; a++)
    len += (size_t)snprintf(m->where + len, sizeof m->where - len, "%s%s=%d",
                            a ? ", " : " (", c->mesh.axes[a].name, (int)c->coord[a]);
  if (c->mesh.naxes && len < sizeof m->where)
    snprintf(m->where + len, sizeof m->where - len, ")");
}

/* The axis groups: ranks that agree on every other coordinate (color: the
 * world rank of the group's first member), ordered by this coordinate. */
static int split_axes(mpi_comm *m) {
  const ptrt_comm *c = &m->table;
  for (int a = 0; a < c->mesh.naxes; a++) {
    if (c->mesh.axes[a].size == 1) continue;
    int32_t first[PTC_MAX_MESH_AXES];
    memcpy(first, c->coord, sizeof first);
    first[a] = 0;
    int rc = MPI_Comm_split(m->world, (int)ptc_mesh_rank(&c->mesh, first), c->coord[a],
                            &m->axis[a]);
    if (rc != MPI_SUCCESS) return mpi_fail(m, rc, "MPI_Comm_split");
    MPI_Comm_set_errhandler(m->axis[a], MPI_ERRORS_RETURN);
    int arank = -1, asize = 0;
    MPI_Comm_rank(m->axis[a], &arank);
    MPI_Comm_size(m->axis[a], &asize);
    PTC_ASSERT(arank == c->coord[a] && asize == c->mesh.axes[a].size);
  }
  return 0;
}

/* MPI_Init_thread unless MPI is up already; 1 when this call started it. */
static int init_mpi(ptc_ctx *ctx) {
  int up = 0, down = 0;
  MPI_Finalized(&down);
  if (down) {
    ptrt_error(ctx, "MPI was already finalised in this process; an MPI communicator can "
               "be created again only while another one is alive");
    return -1;
  }
  MPI_Initialized(&up);
  if (up) return 0;
  int provided = 0;
  /* only the thread that created the communicator calls MPI */
  int rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  if (rc != MPI_SUCCESS) {
    char s[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, s, &len) != MPI_SUCCESS) snprintf(s, sizeof s, "code %d", rc);
    ptrt_error(ctx, "MPI_Init_thread failed: %s; start ptrun with mpirun or srun", s);
    return -1;
  }
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  return 1;
}

ptrt_comm *ptrt_comm_mpi_create(ptc_ctx *ctx, const ptc_mesh *mesh, double timeout_s) {
  if (!(timeout_s > 0)) {
    ptrt_error(ctx, "the communicator's timeout is %g s; it must be positive (inf: no "
               "limit)", timeout_s);
    return NULL;
  }
  int started = init_mpi(ctx);
  if (started < 0) return NULL;
  int rank = 0, size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int64_t need = ptc_mesh_size(mesh);
  if (need != size) {
    /* the same on every rank: one message is enough */
    if (rank == 0 && mesh->naxes == 0) {
      ptrt_error(ctx, "the plan is for one device but mpirun started %d ranks; run it "
                 "without mpirun, or compile it for a mesh (ptc --mesh)", size);
    } else if (rank == 0) {
      ptc_buf b;
      ptc_buf_init(&b);
      ptc_mesh_print(&b, mesh);
      ptrt_error(ctx, "the plan's %s has %lld devices but mpirun started %d ranks; run "
                 "mpirun -np %lld ptrun ... (one rank per device)", b.data, (long long)need,
                 size, (long long)need);
      ptc_buf_fini(&b);
    }
    return NULL;
  }

  mpi_comm *m = calloc(1, sizeof *m);
  if (!m) {
    ptrt_error(ctx, "out of memory creating the MPI communicator");
    return NULL;
  }
  m->ctx = ctx;
  m->timeout_s = timeout_s;
  m->finalize = started == 1;
  m->world = MPI_COMM_NULL;
  for (int a = 0; a < PTC_MAX_MESH_AXES; a++) m->axis[a] = MPI_COMM_NULL;
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < 3; k++) m->half_op[t][k] = MPI_OP_NULL;
  ptrt_comm *c = &m->table;
  c->name = "mpi";
  c->rank = rank;
  c->size = size;
  c->mesh = *mesh;
  ptc_mesh_coord(mesh, rank, c->coord);
  c->all_reduce = mpi_all_reduce;
  c->all_gather = mpi_all_gather;
  c->reduce_scatter = mpi_reduce_scatter;
  c->broadcast = mpi_broadcast;
  c->all_reduce16 = mpi_all_reduce16;
  c->all_gather16 = mpi_all_gather16;
  c->reduce_scatter16 = mpi_reduce_scatter16;
  c->broadcast16 = mpi_broadcast16;
  c->send = mpi_send;
  c->recv = mpi_recv;
  c->flush = mpi_flush;
  c->world_max = mpi_world_max;
  c->state = &m->state;
  c->impl = m;
  describe_rank(m);
  int pp = ptc_mesh_axis(mesh, "pp", 2);
  m->send_axis = pp >= 0 ? pp : mesh->naxes > 0 ? 0 : -1;
  int *ub = NULL, flag = 0;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
  m->tag_ub = flag && ub ? *ub : 32767; /* the least MPI allows */

  /* Every rank must arrive before the (blocking) communicator splits; a
   * rank that never does ends the run here, by the same deadline. */
  MPI_Request req;
  int rc = MPI_Ibarrier(MPI_COMM_WORLD, &req);
  const char *start = "the start of the run (creating the MPI communicator)";
  if ((rc != MPI_SUCCESS ? mpi_fail(m, rc, start) : wait_for(m, &req, NULL, start)) != 0)
    goto fail;
  rc = MPI_Comm_dup(MPI_COMM_WORLD, &m->world);
  if (rc != MPI_SUCCESS) {
    mpi_fail(m, rc, "MPI_Comm_dup");
    goto fail;
  }
  MPI_Comm_set_errhandler(m->world, MPI_ERRORS_RETURN);
  if (split_axes(m) != 0) goto fail;
  rc = make_half_ops(m->half_op);
  if (rc != MPI_SUCCESS) {
    mpi_fail(m, rc, "MPI_Op_create");
    goto fail;
  }
  return c;

fail:
  free_comms(m);
  free(m);
  return NULL;
}

void ptrt_comm_mpi_destroy(ptrt_comm *c) {
  if (!c) return;
  mpi_comm *m = impl_of(c);
  mpi_flush(c); /* a send never received ends the run here */
  for (int i = 0; i < m->npend; i++) pending_free(&m->pend[i]);
  free(m->pend);
  if (m->finalize) {
    /* MPI_Finalize waits for every rank: wait here, under the deadline */
    snprintf(m->state.what, sizeof m->state.what, "the end of the run (MPI_Finalize)");
    MPI_Request req;
    if (MPI_Ibarrier(m->world, &req) == MPI_SUCCESS) wait_for(m, &req, NULL, "");
  }
  free_comms(m);
  bool fin = m->finalize;
  free(m);
  if (fin) MPI_Finalize();
}

void ptrt_comm_mpi_unwind(double timeout_s) {
  int up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  if (!up || down) return;
  fflush(NULL);
  /* every rank arrives once its messages are out (bounded: a rank that
   * never comes does not hold the others), then MPI ends cleanly */
  MPI_Request req;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &req) == MPI_SUCCESS) {
    double end = ptrt_now() + (timeout_s > 0 && timeout_s < 30 ? timeout_s : 30);
    int done = 0;
    while (!done && ptrt_now() < end) {
      if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) break;
      if (!done) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
      }
    }
    if (!done) return; /* a rank is gone: leave MPI to the launcher */
  }
  MPI_Finalize();
}

void ptrt_comm_abort(const ptrt_comm *c, int code) {
  int up = 0, down = 0;
  MPI_Initialized(&up);
  MPI_Finalized(&down);
  fflush(NULL);
  if (up && !down) MPI_Abort(MPI_COMM_WORLD, code);
  exit(code);
}

#endif /* PTC_HAVE_MPI */
