/* fused.h -- running the kernels ptc generated for fused groups.
 *
 * A plan compiled with the `fuse` pass carries a shared object with one
 * kernel per group (codegen/cpu.c, docs/fusion.md):
 *
 *   int32_t ptc_k<N>(void *const *bufs, int64_t begin, int64_t end);
 *
 * bufs: the group's external inputs then its outputs, in the order of
 * ptc_group_sig (ir.h) -- f32 values as float *, bf16 and f16 as uint16_t *
 * (the 16-bit buffers as they are: the kernel widens what it loads and
 * rounds what it stores), i32 as int32_t *, i64 as int64_t *, scalars as a
 * pointer to one element; [begin, end): the work
 * items of this call, elements (ELEMENTWISE) or rows (ROWWISE) of the
 * group's iteration shape.  Returns 0, or 1 when it met an out-of-range
 * index (a cross-entropy target).  An output may share its buffer with an
 * input of the same shape (an in-place update); no other overlap.
 *
 * This file is the loader and the launcher; the executor (exec.c) calls
 * it: at a group's first op it runs the group and skips to sig->end.  A
 * group's values that are not among its outputs never exist in memory, so
 * they need no buffer.  It does not need LLVM: the .so was linked by ptc.
 *
 * Ownership: ptrt_fused_open returns an object the caller releases with
 * ptrt_fused_close; signatures it hands out live as long as it does.
 * Errors are reported through ptc_error / ptrt_file_error on the ctx given.
 */
#ifndef PTRT_FUSED_H
#define PTRT_FUSED_H

#include "runtime/ptrt.h"

typedef int32_t (*ptrt_fused_fn)(void *const *bufs, int64_t begin, int64_t end);

typedef struct ptrt_fused ptrt_fused;

/* dlopen()s the kernels at path and finds ptc_k<N> for every group of f,
 * computing each group's signature once.  Reports (naming the file, and
 * the group and symbol that is missing) and returns NULL on failure. */
ptrt_fused *ptrt_fused_open(ptc_ctx *ctx, const char *path, ptc_func *f);
void ptrt_fused_close(ptrt_fused *lib);

/* Number of groups of the function, and the one that starts at op index
 * `op` (NULL when no group starts there).  The executor runs the group at
 * its first op and skips to sig->end. */
int32_t ptrt_fused_count(const ptrt_fused *lib);
const ptc_group_sig *ptrt_fused_group_at(const ptrt_fused *lib, int32_t op);
ptrt_fused_fn ptrt_fused_kernel(const ptrt_fused *lib, const ptc_group_sig *sig);

/* Runs the group over all of its work, split in chunks over the pool's
 * threads (pool may be NULL: the caller's thread only).  bufs as above;
 * outputs that accumulate (sig->combine SUM/MAX) are initialised here,
 * each chunk gets its own partial and the partials are combined in chunk
 * order, so results do not depend on the thread count.  Returns 0, or -1
 * after reporting an out-of-range index at the op that read it. */
int ptrt_fused_run(ptc_ctx *ctx, const ptrt_fused *lib, const ptc_group_sig *sig,
                   void *const *bufs, ptrt_pool *pool);

/* The chunk size (work items) ptrt_fused_run uses for a group: depends on
 * the group only, never on the thread count. */
int64_t ptrt_fused_grain(const ptrt_fused *lib, const ptc_group_sig *sig);

/* Checks that this machine's CPU has every extension in `requires`, a
 * comma-separated list as the plan records it ("avx,avx2,fma").  `what`
 * names the plan file and `cpu` the CPU the kernels were built for (may be
 * NULL), for the message that names the first missing extension.  Names
 * this ptrun cannot check are skipped.  Returns 0 or -1 (reported). */
int ptrt_fused_check_cpu(ptc_ctx *ctx, const char *what, const char *cpu,
                         const char *requires);

#endif /* PTRT_FUSED_H */
