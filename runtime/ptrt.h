/* ptrt.h -- the CPU runtime behind ptrun: plans, kernels, the executor,
 * parameter init, token files, safetensors, the thread pool and the
 * communicator table.
 *
 * The schedule is the final ptir.  A plan directory (docs/plan.md) holds
 * step.ptir; ptrt_plan_open checks the manifest and the checksums, parses
 * and verifies the IR, and ptrt_program_create turns its entry function
 * into a program that ptrt_program_run executes op by op with the kernels
 * of kernels*.c (one per opcode, semantics those of ir/eval.c).
 *
 * SPMD: a plan whose mesh has more than one device runs as one rank per
 * device, each executing the same function on its own pieces.  The plan
 * keeps the module as written (global types: whole tensors, for messages
 * and sizes) and runs its local view, ptc_module_localize (every type the
 * shape one device holds, shardings kept).  Kernels that need global
 * knowledge (a mean's divisor, an embedding table's row offset) derive it
 * from the shardings in the local function and the communicator's mesh
 * and coordinates; on the one-rank communicator (mesh without axes) every
 * split has one part, so a single-device plan runs exactly as before.
 *
 * Pipelines: a plan whose mesh has a pp axis (manifest entry "pipeline")
 * has no single entry function.  Stage s (a rank's pp coordinate) runs
 * its order of forward and backward units (@fwd.<c>, @bwd.<c>) over the
 * step's microbatches, then @step.<s>; each of those is partitioned over
 * the stage's dp/tp sub-mesh like an SPMD function, and send/recv name a
 * stage, which the kernels map to the rank of the same dp/tp position
 * (ptrt_pipe below; tools/ptrun.c runs the loop).
 *
 * Invariants:
 *  - Buffers are row-major and 64-byte aligned, each value at its dtype's
 *    size: f32, bf16 and f16 floats, i32 or i64 integers.  Every kernel
 *    computes in f32: an op with bf16/f16 values runs on f32 copies in the
 *    arena's workspace and rounds its 16-bit results (exec.c).  Other
 *    dtypes (f64, i8, bool) are refused when a program is made, naming the
 *    op and its IR location; arguments are f32, i32 or i64.
 *  - Variables (module params and optimizer state) live in one allocation
 *    (ptrt_vars) for the whole run.  A program's other values get a buffer
 *    at their definition and give it back after their last use (computed
 *    once, when the program is made); `reshape` aliases its operand.
 *  - `assign @v, %x` commits when the function returns (reads of @v see the
 *    entry value); the executor commits earlier when nothing reads @v
 *    afterwards, which is the same thing.
 *  - No global mutable state: everything hangs off the objects below.
 *
 * Errors: functions report through ptc_error on the ptc_ctx they are given
 * (at a file or an IR location) and return -1 or NULL; only tools/ decide
 * exit codes.  Internal bugs abort through PTC_ASSERT.
 * Ownership: every *_create / *_open returns an object the caller releases
 * with the matching *_destroy / *_close; pointers into an object are valid
 * until it is released.
 */
#ifndef PTRT_H
#define PTRT_H

#include <stdbool.h>
#include <stdint.h>

#include "ir/ir.h"

/* ======================================================================
 * util.c -- errors without a location, clocks, memory, core counts
 * ====================================================================== */

/* "ptrun: error: ..." through ctx (a location-free runtime error). */
void ptrt_error(ptc_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* An error about a file: "PATH: error: ...". */
void ptrt_file_error(ptc_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

double ptrt_now(void); /* monotonic seconds */

/* 64-byte aligned, uninitialised; NULL when out of memory (n may be 0). */
void *ptrt_alloc(int64_t n);
void ptrt_free(void *p);

/* Threads a rank should use: the online cores divided by the ranks on this
 * node (OMPI_COMM_WORLD_LOCAL_SIZE, else SLURM_NTASKS_PER_NODE, else 1),
 * at least 1. */
int ptrt_default_threads(void);

/* ======================================================================
 * pool.c -- a small thread pool for row-parallel kernels
 * ====================================================================== */

typedef struct ptrt_pool ptrt_pool;

/* nthreads counts the caller: 1 means no worker threads.  NULL if a thread
 * cannot be started (reported). */
ptrt_pool *ptrt_pool_create(ptc_ctx *ctx, int nthreads);
void ptrt_pool_destroy(ptrt_pool *p);
int ptrt_pool_threads(const ptrt_pool *p);

/* fn(arg, begin, end) over [0, n) in chunks of `grain` items (the last may
 * be shorter).  Chunk c covers [c*grain, min(n, (c+1)*grain)), whatever the
 * thread count, so a kernel that keeps one partial result per chunk
 * (c = begin / grain) and combines them in chunk order gives the same bits
 * on 1 thread or 16.  The caller runs chunks too; returns when all are
 * done.  Not reentrant: fn must not call ptrt_parallel_for. */
typedef void (*ptrt_range_fn)(void *arg, int64_t begin, int64_t end);
void ptrt_parallel_for(ptrt_pool *p, int64_t n, int64_t grain, ptrt_range_fn fn,
                       void *arg);

/* ======================================================================
 * comm.c -- communicators: a table of function pointers
 * ====================================================================== */

typedef enum ptrt_reduce {
  PTRT_REDUCE_SUM,
  PTRT_REDUCE_MEAN,
  PTRT_REDUCE_MAX,
  PTRT_REDUCE_MIN,
} ptrt_reduce;

/* Counters and context a communicator keeps; mutable through the const
 * table (the table itself never changes after creation). */
typedef struct ptrt_comm_state {
  /* Bytes this rank sent per mesh axis since creation, under the ring
   * model: all_reduce of B bytes over n ranks sends 2(n-1)/n*B, all_gather
   * and reduce_scatter (n-1)/n*B of the *whole* (gathered / unscattered)
   * buffer, broadcast B on the root's ring ((n-1)/n*B per rank counted
   * here), send B to its peer.  Counted from the calls actually issued. */
  double sent[PTC_MAX_MESH_AXES];
  int64_t calls[PTC_MAX_MESH_AXES];
  /* What the caller is doing, for error and timeout messages: the kernels
   * write "all_reduce over tp at step.ptir:120:5 (gpt2.ptg:31:9)" before
   * each call.  NUL-terminated. */
  char what[256];
} ptrt_comm_state;

/* One rank's view of the mesh.  Collectives work on f32 buffers over the
 * ranks of one mesh axis (an index into the module's mesh): the group of
 * ranks whose coordinates agree on every other axis, ordered by their
 * coordinate on this one.  The one-rank communicator makes every
 * collective the identity; the MPI one (comm_mpi.c) fills the same slots.
 * Every call returns 0, or -1 after reporting (never hangs: a peer that
 * does not answer within the timeout ends the run with a message naming
 * this rank and state->what). */
typedef struct ptrt_comm ptrt_comm;
struct ptrt_comm {
  const char *name; /* "single", "mpi" */
  int rank, size;   /* in the world */
  ptc_mesh mesh;    /* the plan's mesh (naxes 0 for the one-rank table) */
  int32_t coord[PTC_MAX_MESH_AXES]; /* ptc_mesh_coord(&mesh, rank) */
  int (*all_reduce)(const ptrt_comm *c, int axis, ptrt_reduce op, float *buf,
                    int64_t n);
  /* out (n * axis size) gathers in (n) from each rank of the axis, in the
   * order of their coordinate on it */
  int (*all_gather)(const ptrt_comm *c, int axis, const float *in, float *out,
                    int64_t n);
  /* out (n / axis size) gets this rank's part (block number coord[axis])
   * of the reduction of in (n) over the axis */
  int (*reduce_scatter)(const ptrt_comm *c, int axis, ptrt_reduce op,
                        const float *in, float *out, int64_t n);
  int (*broadcast)(const ptrt_comm *c, int axis, int root, float *buf, int64_t n);
  /* The same four on 16-bit floats: n elements of dtype t (bf16 or f16),
   * 2 bytes each on the wire (the counters count those).  Sums, means,
   * maxima and minima are computed in f32 from the widened elements and
   * each combination is rounded back to t (runtime/half.h), so a sum over
   * two ranks is the f32 sum rounded once; over more, each partial sum is
   * rounded as it travels (the order, as for f32, is the implementation's).
   * A mean is the rounded sum divided by the axis size in f32, rounded.
   * NULL: the communicator has no 16-bit collectives (the kernels say so). */
  int (*all_reduce16)(const ptrt_comm *c, int axis, ptrt_reduce op, ptc_dtype t,
                      uint16_t *buf, int64_t n);
  int (*all_gather16)(const ptrt_comm *c, int axis, const uint16_t *in, uint16_t *out,
                      int64_t n);
  int (*reduce_scatter16)(const ptrt_comm *c, int axis, ptrt_reduce op, ptc_dtype t,
                          const uint16_t *in, uint16_t *out, int64_t n);
  int (*broadcast16)(const ptrt_comm *c, int axis, int root, uint16_t *buf, int64_t n);
  /* Pipeline transfers to/from a world rank; NULL: not supported.  send is
   * buffered: it copies buf and returns without waiting for the peer (a
   * schedule may send several microbatches before its peer receives the
   * first; the compiler's comm-check proves schedules under exactly this
   * rule).  Messages between two ranks with one tag arrive in the order
   * sent.  recv waits (under the timeout) until the message is here. */
  int (*send)(const ptrt_comm *c, int peer, int tag, const void *buf, int64_t bytes);
  int (*recv)(const ptrt_comm *c, int peer, int tag, void *buf, int64_t bytes);
  /* Waits (under the timeout) until every send this rank issued has been
   * received, and frees their copies; a send still pending when the
   * timeout passes ends the run naming its peer, tag and op.  Called at
   * the end of each pipelined training step and before the communicator
   * goes.  NULL, or the one-rank table's: nothing is ever pending. */
  int (*flush)(const ptrt_comm *c);
  /* Agreement across the world (e.g. "every rank finished the step"):
   * all_reduce of one double with max; NULL on the one-rank table. */
  int (*world_max)(const ptrt_comm *c, double *v);
  ptrt_comm_state *state; /* owned by the implementation; never NULL */
  void *impl;             /* the implementation's state */
};

/* The one-rank communicator (a process-wide table; nothing to destroy). */
const ptrt_comm *ptrt_comm_single(void);

/* comm_mpi.c (when built with MPI: PTC_HAVE_MPI).  Whether this process was
 * started by a launcher with more than one rank (OMPI_COMM_WORLD_SIZE,
 * PMI_SIZE, SLURM_NTASKS, PMIX_RANK...) -- decides, before MPI_Init,
 * whether ptrun needs MPI at all. */
bool ptrt_launched_multi(void);
/* MPI_Init_thread (once per process), checks that the world size equals
 * the mesh's device count (else reports both and what to run), splits one
 * communicator per mesh axis, and returns the table.  timeout_s bounds
 * every wait on a peer.  NULL after reporting (the caller exits 1; other
 * ranks then stop at their own timeout or when the launcher kills them). */
ptrt_comm *ptrt_comm_mpi_create(ptc_ctx *ctx, const ptc_mesh *mesh, double timeout_s);
/* Frees the axis communicators and calls MPI_Finalize. */
void ptrt_comm_mpi_destroy(ptrt_comm *c);
/* After ptrt_comm_mpi_create failed on every rank alike (a world that is
 * not the mesh's size) and the messages are printed: every rank meets
 * (within timeout_s, at most 30 s) and MPI ends, so the launcher sees the
 * ranks exit after rank 0 has said why.  Nothing when MPI is not running. */
void ptrt_comm_mpi_unwind(double timeout_s);
/* Ends every rank now (MPI_Abort; exit(code) when MPI is not running). */
void ptrt_comm_abort(const ptrt_comm *c, int code);

/* ======================================================================
 * plan.c -- reading a plan directory (docs/plan.md)
 * ====================================================================== */

#define PTRT_PLAN_FORMAT "ptc-plan"
#define PTRT_PLAN_VERSION 1

typedef struct ptrt_fused ptrt_fused; /* fused.h */

/* One call in a stage's pipeline order: the forward (F) or backward (B)
 * of chunk `chunk` on microbatch `mb`. */
typedef struct ptrt_pipe_unit {
  bool backward;
  int32_t chunk, mb;
} ptrt_pipe_unit;

/* A pipeline-parallel plan (passes/pipeline.c): module attribute
 * pipeline.stages P > 1, functions @fwd.<c> and @bwd.<c> for the chunks
 * c < P*V (chunk c runs on stage c mod P) and @step.<s> per stage.  Stage
 * s runs order[s] (each unit on the microbatch it names), then @step.<s>
 * once.  A stage's functions talk to the same-coordinate rank of another
 * stage by send/recv; their dp/tp collectives stay inside the stage. */
typedef struct ptrt_pipe {
  int32_t stages, microbatches, virtual_stages, chunks; /* chunks = P*V */
  int pp_axis;                  /* in the module's mesh */
  const char *schedule;         /* module attribute (arena), e.g. "1f1b" */
  ptrt_pipe_unit **order;       /* heap: per stage, norder[s] units */
  int32_t *norder;
} ptrt_pipe;

typedef struct ptrt_plan {
  char *dir;       /* heap */
  char *model;     /* heap: the manifest's model name */
  char *ptc_version; /* heap: the ptc that wrote it */
  ptc_module *mod; /* owned: step.ptir, parsed and verified (global types) */
  ptc_func *entry; /* @step (training) or @forward (evaluation only); NULL
                      for a pipelined plan (pipe below) */
  ptc_func *forward; /* @forward when present (may equal entry), else NULL */
  bool training;   /* entry is @step */
  /* What runs: on a mesh of more than one device the local view
   * ptc_module_localize(mod) (owned), else mod itself.  local_entry and
   * local_forward are entry and forward in it (same names, same argument
   * order; types are one device's pieces).  Variables, programs and fused
   * kernels are made from these; mod, entry and forward stay for messages
   * and the sizes of whole tensors. */
  ptc_module *local;
  ptc_func *local_entry, *local_forward;
  ptrt_fused *fused; /* owned: the kernels of local_entry's fused groups
                        (kernels.so), or NULL when the plan has none */
  /* Pipeline-parallel plans (manifest entry "pipeline"): pipe is set and
   * entry, forward, local_entry, local_forward and fused are NULL; every
   * function of the local view has its own fused kernels (fn_fused, per
   * index in local->funcs, NULL where it has no group). */
  ptrt_pipe *pipe;   /* owned, or NULL */
  ptrt_fused **fn_fused; /* owned, or NULL */
} ptrt_plan;

/* Opens and checks a plan: the directory, manifest.json (format, version,
 * target), every listed file's size and SHA-256, then parses and verifies
 * step.ptir, and localizes it when its mesh has more than one device.
 * Each refusal names the file and the problem and says how to get a good
 * plan.  NULL after reporting. */
ptrt_plan *ptrt_plan_open(ptc_ctx *ctx, const char *dir);
void ptrt_plan_close(ptrt_plan *p);

/* A pipelined plan's function by name (@fwd.3, @bwd.0, @step.1): the one
 * of the local view (what runs) and, through *global when not NULL, the
 * one as written.  NULL when the module has no such function. */
ptc_func *ptrt_plan_func(const ptrt_plan *p, const char *name, ptc_func **global);
/* The fused kernels of a function of p->local (borrowed; NULL: none). */
const ptrt_fused *ptrt_plan_fused_of(const ptrt_plan *p, const ptc_func *local_f);

/* Lower-case hex SHA-256 of data (65 bytes with the NUL).  Shared with the
 * plan writer's tests; the writer has its own copy (codegen/ links no
 * runtime). */

/* ======================================================================
 * init.c -- variables and their counter-based initialisation
 * ====================================================================== */

typedef struct ptrt_vars {
  const ptc_module *mod; /* its param types are what is held (local) */
  unsigned char *base; /* one allocation for every variable */
  int64_t bytes;
  int64_t *offset; /* heap: per module param, the byte offset in base, or
                      -1 for a variable this rank does not hold */
  int32_t nheld;   /* the variables held (every param unless a subset) */
  /* The device whose pieces these are: the communicator's mesh and
   * coordinates (mesh.naxes 0: one device, whole tensors). */
  ptc_mesh mesh;
  int32_t coord[PTC_MAX_MESH_AXES];
  void *dev; /* a GPU copy laid out as base (runtime/cuda.h), or NULL */
} ptrt_vars;

/* Lays out every module param (f32, bf16 or f16; others are refused,
 * naming the param) at the sizes m gives them: a local module (ptc_module_localize)
 * gives this device's pieces.  comm says which device that is; NULL or the
 * one-rank table: one device, whole tensors.  Contents are undefined until
 * ptrt_vars_init or a load. */
ptrt_vars *ptrt_vars_create(ptc_ctx *ctx, const ptc_module *m, const ptrt_comm *comm);
/* The same for the params with hold[i] set only (a pipeline stage holds
 * the variables its own functions read); hold NULL: every param.  Others
 * have no memory (offset -1): ptrt_vars_data must not be asked for them,
 * and init, loads and saves skip them. */
ptrt_vars *ptrt_vars_create_subset(ptc_ctx *ctx, const ptc_module *m, const ptrt_comm *comm,
                                   const bool *hold);
void ptrt_vars_destroy(ptrt_vars *v);
static inline bool ptrt_vars_holds(const ptrt_vars *v, int32_t param) {
  return v->offset[param] >= 0;
}
/* The variable's elements (f32; a bf16/f16 variable's are uint16_t). */
static inline float *ptrt_vars_data(const ptrt_vars *v, int32_t param) {
  PTC_ASSERT(v->offset[param] >= 0);
  return (float *)(v->base + v->offset[param]);
}

/* Fills every variable held from its init spec: zeros, ones, normal(std),
 * scaled(std, depth) = normal(std / sqrt(2 depth)); no init means zeros.
 * Element i of param `name` depends only on (seed, name, i), i the flat
 * index in the WHOLE tensor: a device's piece holds exactly the elements
 * of the single-device init that its sharding gives it. */
void ptrt_vars_init(ptrt_vars *v, uint64_t seed, ptrt_pool *pool /* may be NULL */);
/* A bf16 or f16 variable gets the same values computed in f32, rounded to
 * nearest even.  Variables with `init copy(@src)` are filled last, as the
 * cast of @src's elements (the same global indices).  After loading
 * variables from a file that holds the sources but not their copies
 * (--load-weights: trainable params only), refresh the copies with this:
 * each copy from its source's memory where this device holds the same
 * piece of it or all of it, else from the source's init rule. */
void ptrt_vars_refresh_copies(ptrt_vars *v, uint64_t seed, ptrt_pool *pool);

/* The standard normal deviate for element `index` of the param named
 * `name` (docs/runtime.md: FNV-1a name hash, Philox4x32-10, Box-Muller). */
double ptrt_init_normal(uint64_t seed, const char *name, int64_t index);

/* Philox4x32-10 (Salmon et al., SC'11): 4 x 32 random bits from a 128-bit
 * counter and a 64-bit key. */
void ptrt_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* ======================================================================
 * kernels*.c -- one CPU kernel per opcode
 * ====================================================================== */

typedef struct ptrt_env {
  ptc_ctx *ctx;          /* where runtime errors go */
  ptrt_pool *pool;       /* row parallelism */
  const ptrt_comm *comm; /* collectives */
  struct ptrt_cuda *gpu; /* NULL: the CPU; else programs run there (runtime/cuda.h) */
} ptrt_env;

/* What a kernel sees: the op (its operand and result types are in f's
 * value table) and one data pointer per operand and per result.  Results
 * are not zeroed. */
typedef struct ptrt_kargs {
  const ptrt_env *env;
  const ptc_func *f;
  const ptc_op *op;
  void *const *in;
  void *const *out;
} ptrt_kargs;

/* Returns 0, or -1 after reporting at the op (e.g. an index out of range). */
typedef int (*ptrt_kernel_fn)(const ptrt_kargs *k);

/* The kernel for an opcode, or NULL when there is none. */
ptrt_kernel_fn ptrt_kernel_get(ptc_opcode op);

/* Whether the kernel of op can run it (dtypes, attributes); reports at the
 * op's location and returns -1 when not. */
int ptrt_kernel_check(ptc_ctx *ctx, const ptc_func *f, const ptc_op *op);

/* Block sizes of the fused attention kernels (rows of queries, columns of
 * keys); exposed so tests can pick sizes that do not divide. */
#define PTRT_ATTN_BR 32
#define PTRT_ATTN_BC 64

/* ======================================================================
 * exec.c -- programs: a function ready to run
 * ====================================================================== */

typedef struct ptrt_program ptrt_program;

typedef struct ptrt_mem {
  int64_t vars;     /* the variables' allocation */
  int64_t fixed;    /* argument and result buffers */
  int64_t live;     /* transient buffers in use now */
  int64_t peak;     /* the highest arena byte in use so far (end offset) */
  int64_t run_peak; /* the same, in the latest run */
  int64_t cached;   /* freed buffers kept for reuse (not in live) */
  int64_t workspace; /* the most f32 scratch one op of a bf16/f16 value used
                        (in peak too: the arena's last region) */
} ptrt_mem;

/* One region several programs share for their transient buffers: they run
 * one at a time (a pipeline stage's forward, backward and step; a training
 * step and its validation), so the rank holds the largest plan, not the
 * sum.  Each program grows it to its plan when made; nothing in it
 * outlives a run.  Zero-initialize; ptrt_arena_fini frees it. */
typedef struct ptrt_arena {
  char *base;
  int64_t size;
  struct ptrt_cuda *gpu; /* set when base is device memory */
} ptrt_arena;
void ptrt_arena_fini(ptrt_arena *a);

typedef struct ptrt_program_opts {
  /* Optimizer updates write their variables directly when nothing reads
   * the variable afterwards (a training step's usual shape); such a
   * program must always run with commit = true. */
  bool in_place;
  /* Run only the ops the first result (the loss) depends on: a training
   * step evaluated on validation data, without backward pass or updates.
   * Only result 0 is available. */
  bool loss_only;
  /* The fused kernels of f's groups (borrowed; NULL: every op runs on its
   * own).  Each group runs as one kernel call; not with loss_only. */
  const ptrt_fused *fused;
  /* The arena to share (borrowed; NULL: the program's own). */
  ptrt_arena *arena;
} ptrt_program_opts;

/* Prepares f to run over vars: checks that env->comm has one rank per
 * device of f's mesh, that every op it will run has a kernel that can run
 * it (reporting each one that cannot, at its location), computes the
 * buffer plan (codegen/liveness.c) and allocates argument and result
 * buffers.  f of a partitioned plan is the local one (ptrt_plan.local_entry)
 * and vars are made from the same module.  opts may be NULL (both off).
 * NULL after reporting. */
ptrt_program *ptrt_program_create(const ptrt_env *env, ptc_func *f, ptrt_vars *vars,
                                  const ptrt_program_opts *opts);
void ptrt_program_destroy(ptrt_program *p);

/* The buffer of argument i; the caller fills it before each run. */
void *ptrt_program_arg(ptrt_program *p, int32_t i);
/* The buffer of result i after a run (valid until the next run). */
const void *ptrt_program_result(const ptrt_program *p, int32_t i);

/* Caller-owned buffers in place of the program's own, for values that
 * outlive a run (a pipeline's stash: a forward's results kept for its
 * backward, one set per microbatch in flight).  buf holds the value's
 * bytes (local type), 64-byte aligned, and must stay valid while bound.
 * The first bind of an argument or result frees the program's own buffer
 * for it; from then on it must be bound before each run (ptrt_program_arg
 * and ptrt_program_result give the bound buffer).  A bound result is
 * written by the run; a bound argument is only read. */
void ptrt_program_bind_arg(ptrt_program *p, int32_t i, void *buf);
void ptrt_program_bind_result(ptrt_program *p, int32_t i, void *buf);
/* The byte size of argument / result i (local type). */
int64_t ptrt_program_arg_bytes(const ptrt_program *p, int32_t i);
int64_t ptrt_program_result_bytes(const ptrt_program *p, int32_t i);

/* Runs the function once.  commit = false skips every assign (the
 * variables keep their values: evaluation with a training step).  Returns
 * 0, or -1 after a kernel reported. */
int ptrt_program_run(ptrt_program *p, bool commit);

ptrt_mem ptrt_program_mem(const ptrt_program *p);

/* --check-memory: as each buffer is placed, check that it shares no byte
 * with a buffer still live (a broken plan is a wrong answer, not a crash:
 * the run stops with the op and both values named). */
void ptrt_program_set_check_memory(ptrt_program *p, bool on);

/* Instrumentation: check every float result (f32, bf16, f16) for NaN and
 * infinity after its op (reporting the op and its location); time each op by kind. */
void ptrt_program_set_check_finite(ptrt_program *p, bool on);
void ptrt_program_set_profile(ptrt_program *p, bool on);
/* Whether op's kernel depends on where this device sits in the mesh beyond
 * whole counts (which generated kernels take from the shardings): the loss
 * over split classes (its class offset), an embedding over a split table
 * (its row offset).  Generated kernels (fused groups, a GPU's kernels)
 * cannot know the offset, so such an op runs the runtime's own kernel. */
bool ptrt_op_needs_mesh(const ptrt_env *env, const ptc_func *f, const ptc_op *op);
/* how a GPU program runs its ops (runtime/cuda.h), or NULL on the CPU */
const struct ptrt_cuda_prog *ptrt_program_gpu(const ptrt_program *p);
/* The time per op kind over every profiled run, largest first. */
void ptrt_program_print_profile(const ptrt_program *p, FILE *out);
/* The size of the transient arena, from the static plan alone (what
 * ptrt_program_mem reports as peak after one run).  It includes the f32
 * workspace of ops with bf16/f16 values (codegen/liveness.c), which is
 * also given alone by ptrt_program_planned_workspace (what
 * ptrt_program_mem reports as workspace after one run). */
int64_t ptrt_program_planned_peak(const ptrt_program *p);
int64_t ptrt_program_planned_workspace(const ptrt_program *p);

/* Model FLOPs of one call of f: ptc_op_cost summed over its ops. */
double ptrt_func_flops(const ptc_func *f);

/* ======================================================================
 * data.c -- llm.c token files, and rows of safetensors inputs
 * ====================================================================== */

#define PTRT_TOKENS_MAGIC 20240520
#define PTRT_TOKENS_VERSION 1
#define PTRT_TOKENS_HEADER_INTS 256
#define PTRT_TOKENS_HEADER_BYTES (PTRT_TOKENS_HEADER_INTS * 4)

typedef struct ptrt_tokens ptrt_tokens;

/* Opens one or more llm.c token files as one stream and validates each:
 * magic, version, the file size against the header's count, and every
 * token below `vocab` (what bounds it is named by `vocab_what`, e.g. "the
 * rows of the embedding table @wte").  NULL after reporting. */
ptrt_tokens *ptrt_tokens_open(ptc_ctx *ctx, const char *const *paths, int32_t n,
                              int64_t vocab, const char *vocab_what);
void ptrt_tokens_close(ptrt_tokens *t);
int64_t ptrt_tokens_count(const ptrt_tokens *t);

/* Batch s (0-based) of B rows of T tokens: row b reads the T+1 tokens that
 * start at ((s*B + b)*T) mod (N - T - 1); inputs get the first T, targets
 * (may be NULL) the last T.  *wrapped is set when a row's start was
 * reduced by the modulus (the stream came round again).  Needs N >= T + 2
 * (checked: -1 after reporting). */
int ptrt_tokens_batch(ptc_ctx *ctx, const ptrt_tokens *t, int64_t s, int64_t B,
                      int64_t T, int32_t *inputs, int32_t *targets, bool *wrapped);

/* Writes an llm.c token file atomically (PATH.tmp, then rename). */
int ptrt_tokens_write(ptc_ctx *ctx, const char *path, const uint16_t *tokens,
                      int64_t n);

/* ======================================================================
 * safetensors.c -- the Hugging Face safetensors format
 * ====================================================================== */

typedef struct ptrt_st_tensor {
  const char *name; /* owned by the file object */
  ptc_dtype dtype;  /* F32, F64, F16, BF16, I64, I32, I8, BOOL */
  int32_t rank;
  int64_t dims[PTC_MAX_RANK];
  int64_t begin, end; /* byte offsets in the data section */
} ptrt_st_tensor;

typedef struct ptrt_st ptrt_st;

/* Reads and checks a safetensors file: the header size, the JSON header,
 * each tensor's dtype and shape against its byte range, ranges inside the
 * file and not overlapping.  NULL after reporting at the file. */
ptrt_st *ptrt_st_open(ptc_ctx *ctx, const char *path);
void ptrt_st_close(ptrt_st *s);
int32_t ptrt_st_count(const ptrt_st *s);
const ptrt_st_tensor *ptrt_st_tensor_at(const ptrt_st *s, int32_t i);
const ptrt_st_tensor *ptrt_st_find(const ptrt_st *s, const char *name);
const void *ptrt_st_data(const ptrt_st *s, const ptrt_st_tensor *t);
const char *ptrt_st_path(const ptrt_st *s);

typedef struct ptrt_st_entry {
  const char *name;
  ptc_dtype dtype;
  int32_t rank;
  const int64_t *dims;
  const void *data; /* little-endian, numel * dtype size bytes */
} ptrt_st_entry;

/* The format's dtype names ("F32", "BF16", ...): name of t ("?" for none),
 * and the dtype of a name (-1 when unknown). */
const char *ptrt_st_dtype_name(ptc_dtype t);
int ptrt_st_dtype_from(const char *s);

/* Writes tensors (in the order given) atomically. */
int ptrt_st_write(ptc_ctx *ctx, const char *path, const ptrt_st_entry *e, int32_t n);

/* --save-weights / --load-weights: every trainable param, under its module
 * name.  Loading checks names (missing and unexpected), dtypes and shapes,
 * and reports every mismatch before failing. */
int ptrt_save_weights(ptc_ctx *ctx, const char *path, const ptrt_vars *v);
int ptrt_load_weights(ptc_ctx *ctx, const char *path, ptrt_vars *v);

/* Checkpoints: every variable (parameters and optimizer state) and the
 * number of the last step done (`__metadata__.step`), so a run resumes
 * exactly where it stopped.  Loading checks like ptrt_load_weights. */
int ptrt_save_checkpoint(ptc_ctx *ctx, const char *path, const ptrt_vars *v, int64_t step);
int ptrt_load_checkpoint(ptc_ctx *ctx, const char *path, ptrt_vars *v, int64_t *step);
/* The metadata `step` of a file, or NULL. */
const char *ptrt_st_step(const ptrt_st *s);

/* ======================================================================
 * train.c -- what a training loop needs around the program
 * ====================================================================== */

typedef struct ptrt_schedule {
  double lr;          /* peak learning rate */
  double min_lr;      /* where the cosine ends */
  int64_t warmup;     /* linear warm-up steps (0: none) */
  int64_t decay_steps; /* the step where the cosine reaches min_lr */
} ptrt_schedule;

/* Learning rate at step s (1-based): lr * s / warmup for s <= warmup, then
 * a cosine from lr down to min_lr at decay_steps, min_lr after. */
double ptrt_schedule_lr(const ptrt_schedule *s, int64_t step);

/* GFLOP/s of a square f32 sgemm on the BLAS's current threads, best of
 * several runs over about `seconds`: the machine's practical limit. */
double ptrt_measure_sgemm_gflops(double seconds);

/* Sets the BLAS's thread count (OpenBLAS). */
void ptrt_blas_set_threads(int n);

/* (data.c) Rows of a safetensors input named after a function argument:
 * batch s takes rows (s*B + b) mod N of the file's tensor [N, ...] into the
 * argument [B, ...].  dtype and trailing dims must match (checked by
 * ptrt_rows_check, which reports at the file). */
int ptrt_rows_check(ptc_ctx *ctx, const ptrt_st *st, const char *name,
                    const ptc_type *arg);
void ptrt_rows_batch(const ptrt_st *st, const char *name, const ptc_type *arg,
                     int64_t s, void *out);

/* (data.c) One device's block of a tensor.  The device at `coord` of
 * `mesh` holds, of every dimension d split over the axes s->dim_axes[d],
 * piece ptc_shard_index(mesh, axes, coord) of ptc_shard_parts(mesh, axes)
 * equal contiguous pieces; partial<...> says nothing about the layout.
 * mesh->naxes 0, or s NULL or absent: the whole tensor.
 *
 * ptrt_block_origin: from the block's (local) type, the whole tensor's
 * dims and the global index of the block's first element on each dim.
 * ptrt_local_block: copies the block of src, a row-major tensor of the
 * global type g (any dtype), to dst, which holds ptc_local_type's shape. */
void ptrt_block_origin(const ptc_mesh *mesh, const int32_t *coord, const ptc_type *local,
                       const ptc_sharding *s, int64_t *gdims, int64_t *origin);
void ptrt_local_block(const ptc_mesh *mesh, const int32_t *coord, const ptc_type *g,
                      const ptc_sharding *s, const void *src, void *dst);

#endif /* PTRT_H */
