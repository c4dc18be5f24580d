/* registry.c -- the one list of passes and the default pipeline.
 *
 * Adding a pass: write passes/<name>.c defining `const ptc_pass_info
 * ptc_pass_<name>`, declare it in passes.h, and add one line below.  The
 * list is also the order in which `ptc --help` shows passes.
 */
#include "passes/passes.h"
#include "ptc_config.h"

#include <string.h>

static const ptc_pass_info *const registry[] = {
    &ptc_pass_canonicalize, /* shape re-inference, algebraic simplification */
    &ptc_pass_cse,          /* common-subexpression elimination */
    &ptc_pass_dce,          /* dead-code elimination */
    &ptc_pass_autodiff,     /* @forward -> @step: loss and parameter gradients */
    &ptc_pass_precision,    /* mixed precision: 16-bit values, fp32 master weights */
    &ptc_pass_recompute,    /* activation recomputation in the backward */
    &ptc_pass_pipeline,     /* pipeline stages, microbatches, schedules */
    &ptc_pass_optimizer,    /* AdamW / SGD updates, gradient clipping */
    &ptc_pass_shard,        /* layouts over the mesh: dp, tp, sp, ZeRO */
    &ptc_pass_partition,    /* SPMD rewrite with explicit collectives */
    &ptc_pass_bucket,       /* gradient all-reduces packed into buckets */
    &ptc_pass_comm_check,   /* transfers and collectives match across stages */
    &ptc_pass_fuse,         /* element-wise and row ops into kernels */
};

/* What `ptc model.ptg` runs when --pass-pipeline is not given.  shard and
 * partition do nothing on a one-device mesh.  `fuse` only
 * pays off where the LLVM code generator can compile its groups, so a ptc
 * built without LLVM leaves it out (and its plans run op by op). */
#if PTC_HAVE_LLVM
static const char default_pipeline[] = "canonicalize,cse,autodiff,precision,recompute,pipeline,optimizer,cse,dce,shard,partition,bucket,cse,comm-check,fuse";
#else
static const char default_pipeline[] = "canonicalize,cse,autodiff,precision,recompute,pipeline,optimizer,cse,dce,shard,partition,bucket,cse,comm-check";
#endif

const ptc_pass_info *const *ptc_pass_registry(int32_t *n) {
  *n = PTC_ARRAY_LEN(registry);
  return registry;
}

const ptc_pass_info *ptc_pass_find(const char *s, size_t n) {
  for (int32_t i = 0; i < PTC_ARRAY_LEN(registry); i++) {
    const char *name = registry[i]->name;
    if (strlen(name) == n && memcmp(name, s, n) == 0) return registry[i];
  }
  return NULL;
}

const char *ptc_default_pipeline(void) { return default_pipeline; }

void ptc_pass_list_names(ptc_buf *b) {
  for (int32_t i = 0; i < PTC_ARRAY_LEN(registry); i++) {
    if (i) ptc_buf_puts(b, ", ");
    ptc_buf_puts(b, registry[i]->name);
  }
}
