/* memplan.h -- the memory plan of a compiled module (codegen/memplan.c):
 * per rank, by category, what ptrun will hold at the peak of a step, with
 * the step's FLOPs, bytes sent per mesh axis and the pipeline bubble.
 * Ranks with equal figures form one group (an SPMD plan: one; a pipeline:
 * one per stage).  docs/memory.md explains every figure. */
#ifndef PTC_CODEGEN_MEMPLAN_H
#define PTC_CODEGEN_MEMPLAN_H

#include "ir/ir.h"
#include "passes/passes.h"

enum {
  PTC_MEM_PARAMS,    /* what the forward reads: parameters or their 16-bit copies */
  PTC_MEM_GRADS,     /* gradients (values and accumulators) */
  PTC_MEM_OPTIM,     /* moments, fp32 master weights, loss scale */
  PTC_MEM_ACTS,      /* forward values kept for the backward, stash sets */
  PTC_MEM_COMM,      /* gradient buckets, updated pieces gathered back */
  PTC_MEM_GATHER,    /* ZeRO-3: parameters gathered for use */
  PTC_MEM_WORKSPACE, /* backward temporaries, recompute, 16-bit scratch, gaps */
  PTC_MEM_IO,        /* argument and result buffers (the batch, the loss) */
  PTC_MEM_NCAT
};
extern const char *const ptc_mem_cat_names[PTC_MEM_NCAT];

typedef struct ptc_memplan_group {
  int32_t stage;       /* pipeline stage, or -1 (SPMD: every rank) */
  int64_t nranks, first_rank;
  int64_t cat[PTC_MEM_NCAT]; /* bytes by category at the peak; they sum to total */
  int64_t total;       /* variables + fixed + arena + stash: what ptrun allocates */
  int64_t vars[PTC_MEM_NCAT], vars_total; /* variables by category (64-byte rounded) */
  int64_t vars_exact[PTC_MEM_NCAT];       /* the same, tensor bytes only */
  int64_t fixed, arena, stash; /* arena: the largest program's; stash: every set */
  int64_t stash_set;   /* one microbatch's stash sets, over the stage's chunks */
  int32_t in_flight;   /* most microbatches in flight on one chunk */
  int64_t at_peak[PTC_MEM_NCAT], live_peak; /* the arena's fullest op, by category */
  char peak_at[96];
  int64_t model_states;    /* params + optimizer state + gradients at the update */
  int64_t grads_at_update; /* gradient values live when the update begins */
  int64_t acts_kept;       /* activations kept for the backward, per microbatch */
  int64_t param_count;     /* trainable elements held */
  double model_flops, hw_flops; /* per step; hardware counts recomputed ops */
  double sent[PTC_MAX_MESH_AXES];
  int64_t calls[PTC_MAX_MESH_AXES];
} ptc_memplan_group;

typedef struct ptc_memplan {
  int64_t nranks;
  int naxes;
  int32_t microbatches; /* 0: not a pipeline */
  double bubble;
  int32_t ngroups;
  ptc_memplan_group groups[PTC_PIPE_MAX_STAGES];
} ptc_memplan;

/* Computes the plan of m (after the default pipeline, or any prefix of it
 * that leaves @step / @forward or a pipeline's functions).  -1 when m has
 * no function to plan. */
int ptc_memplan_compute(const ptc_module *m, ptc_memplan *out);
/* The first group whose total exceeds limit, or -1. */
int32_t ptc_memplan_first_over(const ptc_memplan *p, int64_t limit);
/* The table (text) and the same figures as JSON. */
void ptc_memplan_print(ptc_buf *b, const ptc_module *m, const ptc_memplan *p,
                       int64_t device_memory);
void ptc_memplan_json(ptc_buf *b, const ptc_module *m, const ptc_memplan *p,
                      int64_t device_memory);
/* "80GiB", "512MiB", "1.5e9", "64GB" -> bytes; -1 if not a size. */
int ptc_parse_bytes(const char *s, int64_t *out);

#endif
