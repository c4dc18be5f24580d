/* codegen.h -- from a compiled module to what ptrun runs.
 *
 * plan.c writes the plan directory (docs/plan.md): manifest.json (format,
 * version, the files with their sizes and SHA-256), step.ptir (the final
 * IR: the schedule ptrun executes) and report.txt (what a person reads:
 * parameters, memory by category, FLOPs), and kernels.so when the module
 * has fused groups (cpu.c).  The reader is runtime/plan.c; the two agree on the format through
 * PTC_PLAN_FORMAT / PTC_PLAN_VERSION and the round-trip test
 * tests/unit/test_rt_plan.c.
 *
 * Errors are reported through ptc_error on the module's context; functions
 * return 0 or -1.  Nothing here needs the runtime; only cpu.c needs LLVM.
 */
#ifndef PTC_CODEGEN_H
#define PTC_CODEGEN_H

#include "ir/ir.h"

#define PTC_PLAN_FORMAT "ptc-plan"
#define PTC_PLAN_VERSION 1

/* The function a plan runs: @step (a training step) when the module has
 * one, else @forward (evaluation only), else NULL. */
ptc_func *ptc_plan_entry(const ptc_module *m);

/* Writes the plan for m to directory `dir`, atomically: everything goes to
 * a fresh temporary directory next to it, which is renamed into place, so
 * a failure leaves no half-written plan and an existing plan at `dir` is
 * replaced only by a complete one.  An existing `dir` that is not a plan
 * (a file, or a directory with other contents) is refused. */
int ptc_plan_write(ptc_module *m, const char *dir);
/* The same for a CPU target of the fused kernels ("cpu", "cpu:generic",
 * "cpu:NAME": ptc_codegen_cpu).  When m has groups (the `fuse` pass), they
 * are compiled to kernels.so in the plan, listed with its checksum, and the
 * manifest's "kernels" records what they need (target, cpu, requires); a
 * ptc without LLVM refuses such a module. */
int ptc_plan_write_target(ptc_module *m, const char *dir, const char *target);

/* Appends the human-readable report of report.txt. */
void ptc_plan_report(ptc_buf *b, const ptc_module *m, const ptc_func *entry);

/* ---- liveness.c: where values live when a function runs op by op ---- */

enum { PTC_LIVE_VAR, PTC_LIVE_ARG, PTC_LIVE_TRANSIENT,
       PTC_LIVE_NONE /* inside a fused group only: no buffer */ };
enum { PTC_LIVE_END = -2 }; /* `last` of a buffer kept to the end of the run */
typedef enum ptc_assign_mode {
  PTC_ASSIGN_NOW = 1,  /* copy at the op: nothing reads the variable after it */
  PTC_ASSIGN_AT_END,   /* copy when the run ends; the new value lives to then */
  PTC_ASSIGN_SNAPSHOT, /* copy the new value at the op, commit it at the end */
  PTC_ASSIGN_IN_PLACE, /* the update already wrote the variable: nothing to do */
} ptc_assign_mode;

/* The buffer plan of one function (liveness.c has the rules).  Arrays are
 * heap, indexed by value id or op index; ptc_liveness_fini frees them. */
typedef struct ptc_liveness {
  int32_t nvalues, nops;
  bool loss_only;
  bool *run;         /* per op: executed */
  int32_t *root;     /* per value: the value whose buffer it uses (chains) */
  int8_t *where;     /* per value: PTC_LIVE_VAR / _ARG / _TRANSIENT */
  int32_t *last;     /* per root: last op reading it, PTC_LIVE_END, or -1 */
  int8_t *assign;    /* per op: a ptc_assign_mode for assigns, else 0 */
  int64_t *snapshot; /* per op: bytes of the snapshot a SNAPSHOT assign takes */
  int32_t *free_at;  /* CSR over ops: free_idx[free_at[i] .. free_at[i+1]) */
  int32_t *free_idx; /*   are the roots given back after op i */
  int32_t *first;    /* per root: the op that allocates it (a group's first op) */
  int64_t *offset;   /* per value: its buffer's byte offset in the arena, or -1 */
  int64_t *snap_offset; /* per op: arena offset of a SNAPSHOT assign's copy */
  int64_t peak;      /* the end of the buffers' placement in the arena */
  /* f32 scratch of ops with bf16/f16 values (liveness.c, "Workspace") */
  int64_t *workspace;       /* per op: bytes of scratch it needs (0: none) */
  int64_t workspace_peak;   /* the largest: the one region every op reuses */
  int64_t workspace_offset; /* where it starts: peak, 64-byte aligned */
  int64_t total;            /* the arena's size: workspace_offset + workspace_peak */
} ptc_liveness;

/* in_place: optimizer updates write their variables directly (what a
 * training run does); loss_only: run only what the first result needs;
 * groups: each `group = N` run executes as one fused kernel call (values
 * internal to a group get no buffer; not with loss_only). */
void ptc_liveness_compute(ptc_liveness *l, const ptc_func *f, bool in_place, bool loss_only,
                          bool groups);
void ptc_liveness_fini(ptc_liveness *l);
/* Value v gets a buffer of its own at its definition. */
bool ptc_liveness_allocates(const ptc_liveness *l, int32_t v);
/* The value whose buffer v uses (v itself, a reshape's source, or the
 * variable an in-place update writes). */
int32_t ptc_liveness_root(const ptc_liveness *l, int32_t v);
/* Checks the static plan: no two buffers (snapshots included) whose
 * lifetimes intersect share a byte of the arena, each is 64-byte aligned
 * and inside it.  Returns the number of violations; describes the first in
 * why (may be NULL). */
int32_t ptc_liveness_check_overlap(const ptc_liveness *l, const ptc_func *f, char *why,
                                   size_t len);

/* Ops that only move, convert or communicate elements and take bf16/f16
 * as stored; every other op computes in f32 (liveness.c, "Workspace"). */
bool ptc_op_moves_bytes(ptc_opcode code);
/* The bytes of f32 scratch op needs run on its own: 4 per element of each
 * bf16/f16 operand and result (each rounded up to 64), 0 when it moves
 * bytes or has no 16-bit value. */
int64_t ptc_op_workspace(const ptc_func *f, const ptc_op *op);

/* The transient peak of a training run of f (in place, every op, groups
 * fused), workspace included (ptc_liveness.total): what ptrun measures as
 * its peak. */
int64_t ptc_plan_transient_peak(const ptc_func *f);

/* ======================================================================
 * cpu.c -- fused kernels for the CPU, through LLVM (built when
 * ptc_config.h says PTC_HAVE_LLVM; ptrun never links LLVM)
 * ====================================================================== */

/* Compiles every group of every function of m (the `fuse` pass's output)
 * into one shared object at out_so: a function
 *
 *   int32_t ptc_k<N>(void *const *bufs, int64_t begin, int64_t end)
 *
 * per group (docs/fusion.md: the ABI), optimized by LLVM at O3 and linked
 * by the C compiler found at configure time.  target: "cpu" (this
 * machine's CPU and features), "cpu:generic" (baseline x86-64) or
 * "cpu:NAME" (an LLVM CPU name such as skylake-avx512 or x86-64-v3).
 * Appends to info a JSON object for the plan's manifest:
 *   {"target": ..., "cpu": ..., "triple": ..., "features": "+avx2,...",
 *    "requires": "avx,avx2,fma", "vector_width": 8, "kernels": N}
 * where "requires" lists the instruction-set extensions ptrun checks
 * (ptrt_fused_check_cpu).  Reports and returns -1 on failure (a bad
 * target, a group that is not a kernel, no C compiler, a failed link). */
int ptc_codegen_cpu(ptc_module *m, const char *target, const char *out_so, ptc_buf *info);

/* Whether kernels can be linked here: the C compiler found at configure
 * time still exists.  When not, writes why to `why` (may be NULL). */
bool ptc_codegen_cpu_can_link(char *why, size_t len);

/* The optimized LLVM IR of the same kernels, as text (for tests and for
 * looking at what a group became).  Returns 0 or -1 (reported). */
int ptc_codegen_cpu_ir(ptc_module *m, const char *target, ptc_buf *ir);

/* digest.c: SHA-256 of data as 64 hex digits and a NUL (the checksum of
 * every plan file). */
void ptc_sha256_hex(const void *data, size_t len, char out[65]);

#endif /* PTC_CODEGEN_H */
