/* ckpt.h -- checkpoints: sharded, atomic, independent of the mesh that
 * wrote them (runtime/ckpt.c; docs/checkpoints.md states the format).
 *
 * A checkpoint is a directory DIR/step-<N>/: one shard file per writing
 * rank (rank-<R>.bin, raw little-endian bytes) and manifest.json, which maps
 * every LOGICAL tensor -- a variable's name, dtype and whole (global) shape
 * -- to the blocks that hold it: a shard file, a byte range, and the block's
 * origin and dims in the whole tensor.  A rank of any mesh, of any ZeRO
 * stage, finds the blocks that intersect its own piece of a variable and
 * reads just those bytes, so a checkpoint written on 2x4 loads on one rank
 * and the other way round.
 *
 * Invariants:
 *  - Of each set of replicas (ranks whose coordinates differ only on axes
 *    that do not split a variable) exactly one writes it: the one with
 *    coordinate 0 on every such axis.  On a pipeline axis every stage that
 *    holds a variable writes it and the manifest keeps one copy of a box.
 *  - A checkpoint is visible only when complete: it is written under
 *    DIR/.tmp-step-<N>-<random>, every file and the directory are synced,
 *    every rank has agreed that its part is there, rank 0 writes the
 *    manifest (with each shard file's size and SHA-256) and renames the
 *    directory to DIR/step-<N>.  step-<N> with a manifest.json is
 *    complete; anything else in DIR is ignored (and .tmp-* removed when a
 *    run starts).
 *  - The blocks of every tensor in a manifest tile it exactly (checked when
 *    the manifest is written and when it is opened).
 *  - Collective calls (save, verify, the session's boundaries) must be made
 *    by every rank in the same order; they agree through comm->world_max
 *    (nothing on the one-rank table).  Every directory must be visible to
 *    every rank (a shared file system).
 *
 * Errors: reported through ptc_ctx (ptrt_error / ptrt_file_error) and -1 or
 * NULL returned; tools decide exit codes.  Ownership as in ptrt.h.
 */
#ifndef PTRT_CKPT_H
#define PTRT_CKPT_H

#include <signal.h>
#include <stdio.h>

#include "runtime/ptrt.h"

#define PTRT_CKPT_FORMAT "ptc-checkpoint"
#define PTRT_CKPT_VERSION 1

/* ---- what a run trains with ------------------------------------------------ */

/* The training settings a checkpoint records and a resumed run must
 * repeat (the schedule's position and the data position are functions of
 * the step).  The fingerprint covers these, the variables' names, kinds,
 * dtypes and whole shapes, and the optimizer's hyperparameters read from
 * the plan; never the mesh, the ZeRO stage, threads or the seed (nothing
 * random is drawn after the init a checkpoint replaces). */
typedef struct ptrt_ckpt_settings {
  ptrt_schedule sched;
  uint64_t seed;       /* recorded, not compared */
  int64_t batch, seq;  /* of the token arguments (whole batch); 0: none */
  int64_t data_tokens; /* tokens of the --data stream; 0: the step reads rows */
  const char *const *data_files; /* recorded, not compared */
  int32_t ndata;
} ptrt_ckpt_settings;

/* ---- reading ---------------------------------------------------------------- */

typedef struct ptrt_ckpt ptrt_ckpt;

typedef struct ptrt_ckpt_block {
  int32_t file;   /* index into the manifest's files */
  int64_t offset; /* bytes into the file */
  int64_t bytes;
  int64_t origin[PTC_MAX_RANK], dims[PTC_MAX_RANK];
} ptrt_ckpt_block;

typedef struct ptrt_ckpt_tensor {
  const char *name;
  bool trainable; /* "parameter"; false: "state" (optimizer moments) */
  ptc_dtype dtype;
  int32_t rank;
  int64_t dims[PTC_MAX_RANK];
  int32_t nblocks;
  const ptrt_ckpt_block *blocks;
} ptrt_ckpt_tensor;

typedef struct ptrt_ckpt_file {
  const char *name;
  int64_t bytes;
  const char *sha256; /* 64 hex digits */
} ptrt_ckpt_file;

/* Opens a checkpoint (a step-<N> directory): parses and checks the
 * manifest -- format, version, files, every block inside its file and its
 * tensor, the blocks of each tensor tiling it.  Reads no shard data.
 * NULL after reporting. */
ptrt_ckpt *ptrt_ckpt_open(ptc_ctx *ctx, const char *path);
void ptrt_ckpt_close(ptrt_ckpt *ck);
const char *ptrt_ckpt_path(const ptrt_ckpt *ck);
int64_t ptrt_ckpt_step(const ptrt_ckpt *ck);
const char *ptrt_ckpt_fingerprint(const ptrt_ckpt *ck);
int32_t ptrt_ckpt_tensor_count(const ptrt_ckpt *ck);
const ptrt_ckpt_tensor *ptrt_ckpt_tensor_at(const ptrt_ckpt *ck, int32_t i);
const ptrt_ckpt_tensor *ptrt_ckpt_find(const ptrt_ckpt *ck, const char *name);
int32_t ptrt_ckpt_file_count(const ptrt_ckpt *ck);
const ptrt_ckpt_file *ptrt_ckpt_file_at(const ptrt_ckpt *ck, int32_t i);
/* The manifest as parsed (a jansson json_t *, borrowed): for ptckpt list. */
const void *ptrt_ckpt_manifest(const ptrt_ckpt *ck);

/* Checks every shard file's size and SHA-256 against the manifest.  With a
 * communicator of several ranks each rank checks its share of the files
 * and all agree on the outcome (collective); NULL: this process checks
 * all.  -1 when any file is bad (each reported by the rank that saw it). */
int ptrt_ckpt_verify(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptrt_comm *comm);

/* Reads the box [origin, origin + dims) of tensor t (whole-tensor
 * coordinates) into out, row-major over dims, from exactly the byte ranges
 * of the blocks that intersect it.  -1 after reporting. */
int ptrt_ckpt_read_box(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptrt_ckpt_tensor *t,
                       const int64_t *origin, const int64_t *dims, void *out);

/* Fills every variable of v (this device's pieces, by its mesh, coordinates
 * and each param's sharding) from the checkpoint, whatever mesh wrote it.
 * Every variable must be there, in its dtype (F32, BF16, F16: bit for bit),
 * with its whole shape. */
int ptrt_ckpt_load_vars(ptc_ctx *ctx, const ptrt_ckpt *ck, ptrt_vars *v);

/* Compares the checkpoint with the model of `global` (the plan's module as
 * written: whole shapes; its optimizer ops) and, unless s is NULL or the
 * checkpoint records no settings (an imported one), the training settings.
 * Reports one error listing every difference; -1 when there is any. */
int ptrt_ckpt_check(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptc_module *global,
                    const ptrt_ckpt_settings *s);

/* ---- finding ---------------------------------------------------------------- */

/* The newest complete checkpoint in dir (heap path "dir/step-N"; *step
 * set), or NULL with *step = -1 when there is none (a missing dir is
 * none).  -1 in *step and NULL with an error reported when dir cannot be
 * read. */
char *ptrt_ckpt_latest(ptc_ctx *ctx, const char *dir, int64_t *step);

/* What --resume PATH names: a checkpoint (a directory with manifest.json),
 * or a directory of them (its newest).  Heap path, or NULL after
 * reporting. */
char *ptrt_ckpt_resolve(ptc_ctx *ctx, const char *path);

/* ---- writing ---------------------------------------------------------------- */

typedef struct ptrt_ckpt_write {
  const char *dir;          /* the checkpoint directory; step-<step> goes in it */
  int64_t step;             /* the last step whose update the variables hold */
  const ptc_module *global; /* the plan's module as written (fingerprint) */
  const char *model;        /* the model's name */
  const ptrt_ckpt_settings *settings; /* NULL: none recorded (an import) */
  const char *written_by;   /* "ptrun 0.1.0" */
  const char *mesh;         /* the writer's mesh, as text (recorded only) */
} ptrt_ckpt_write;

/* Writes DIR/step-<step> from v (collective: every rank calls it, with the
 * same w).  base: the bytes to write, laid out as v->base (NULL: v->base).
 * Returns 0 once the checkpoint is published, -1 after reporting, having
 * published nothing (the temporary directory is removed). */
int ptrt_ckpt_save(ptc_ctx *ctx, const ptrt_ckpt_write *w, const ptrt_comm *comm,
                   const ptrt_vars *v, const unsigned char *base);

/* Removes the oldest complete checkpoints of dir beyond the newest `keep`,
 * and every complete one older than step `below` (0: none); never `spare`.
 * Then what an interrupted writer left (.tmp-step-*, .old-step-*) when
 * `stale` is set.  Rank 0's business; returns how many were removed. */
int ptrt_ckpt_prune(ptc_ctx *ctx, const char *dir, int32_t keep, int64_t below,
                    int64_t spare, bool stale);

/* ---- a training run's checkpoints ------------------------------------------ */

typedef enum ptrt_on_nan {
  PTRT_ON_NAN_FAIL, /* no --on-nan: a non-finite step ends the run (no copy kept) */
  PTRT_ON_NAN_SKIP, /* undo the step and go on */
  PTRT_ON_NAN_STOP, /* undo the step; after `patience` in a row, checkpoint and stop */
} ptrt_on_nan;

typedef struct ptrt_ckpt_opts {
  const char *dir;           /* --ckpt-dir, or NULL */
  int64_t every;             /* --ckpt-every (0: only at the end and on signals) */
  int32_t keep;              /* --ckpt-keep (0: all) */
  const char *durable;       /* --ckpt-durable, or NULL */
  int64_t durable_every;     /* --ckpt-durable-every */
  bool async;                /* --ckpt-async */
  const char *resume;        /* NULL: none; "": the newest in dir/durable; else a path */
  ptrt_on_nan on_nan;
  int64_t nan_patience;      /* PTRT_ON_NAN_STOP: this many in a row (>= 1) */
  /* Set by a signal handler (SIGTERM, SIGUSR1): checkpoint at the next step
   * boundary and stop.  May be NULL. */
  volatile sig_atomic_t *stop_signal;
  FILE *out;                 /* status lines (rank 0), or NULL: quiet */
} ptrt_ckpt_opts;

typedef struct ptrt_ckpt_session ptrt_ckpt_session;

/* What the training loop needs: checkpoints at step boundaries, resume,
 * signals, non-finite steps.  Everything is borrowed and must outlive the
 * session.  Rank 0 removes what interrupted writers left in the
 * directories.  NULL after reporting. */
ptrt_ckpt_session *ptrt_ckpt_session_create(ptc_ctx *ctx, const ptrt_ckpt_opts *o,
                                            const ptrt_comm *comm, ptrt_vars *v,
                                            const ptc_module *global, const char *model,
                                            const char *written_by,
                                            const ptrt_ckpt_settings *s);
/* Waits for an asynchronous write still in flight (publishing it when
 * every rank has finished is a collective: call session_finish first). */
void ptrt_ckpt_session_destroy(ptrt_ckpt_session *s);

/* --resume: finds, verifies, compares and loads the checkpoint; sets
 * *first_step to the step after it (1 for a fresh start, said on o->out)
 * and *from to its path (owned by the session; NULL: fresh).  Collective. */
int ptrt_ckpt_session_resume(ptrt_ckpt_session *s, int64_t *first_step, const char **from);

/* Before step `step` runs: with --on-nan, a copy of the variables. */
void ptrt_ckpt_session_step_begin(ptrt_ckpt_session *s, int64_t step);

/* After it ran, given its scalar results (the loss first): 0 finite; 1 a
 * result was not finite and the step was undone (the variables restored);
 * -1 the run must stop (reported): no --on-nan, or the patience ran out
 * (then the next boundary writes a checkpoint first). */
int ptrt_ckpt_session_step_end(ptrt_ckpt_session *s, int64_t step, const float *results,
                               int32_t n);

/* At the end of step `step` (last: --steps): writes a checkpoint when one
 * is due (every N steps, the last step, a stop signal any rank received,
 * the NaN patience running out), publishes an asynchronous one every rank
 * has finished, prunes.  Collective.  0: go on; 1: stop now, a checkpoint
 * is published (a signal: exit 0); 2: stop now after the NaN patience ran
 * out (exit non-zero); -1: failed (reported), nothing new published. */
int ptrt_ckpt_session_boundary(ptrt_ckpt_session *s, int64_t step, int64_t last);

/* Publishes an asynchronous checkpoint still in flight (collective), then
 * says on o->out how many checkpoints were written and how long the
 * training loop waited for them.  0 or -1 after reporting. */
int ptrt_ckpt_session_finish(ptrt_ckpt_session *s);

/* The newest checkpoint this session published, or NULL. */
const char *ptrt_ckpt_session_last(const ptrt_ckpt_session *s);

#endif /* PTRT_CKPT_H */
