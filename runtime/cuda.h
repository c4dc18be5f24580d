/* cuda.h -- opening a plan written for a CUDA target (ptc --target
 * cuda:sm_NN), up to the GPU.
 *
 * ptrt_cuda_open checks the plan as far as a machine without a GPU can:
 * the manifest (format, version, a cuda target), every listed file's size
 * and SHA-256, step.ptir (parses and verifies), and the kernels (a cubin
 * for the target's architecture whose ELF header says so, its PTX, and a
 * kernel for every fused group of every function, each present in the
 * cubin).  Only then does it dlopen the CUDA driver (libcuda.so.1): where
 * there is none it stops with a message that says so; where there is one,
 * it takes the GPU of the node-local rank, checks its compute capability against the
 * plan's architecture (the cubin runs on the same major version, else the
 * driver compiles the PTX), makes a context and loads the module and every
 * kernel function.  cuda_exec.c runs a plan's functions on it: device
 * memory, the ops, the kernels' launches, cuBLASLt.
 *
 * No CUDA header or library is needed to build this: the few driver entry
 * points are declared here and looked up with dlsym.
 */
#ifndef PTRT_CUDA_H
#define PTRT_CUDA_H

#include <stdbool.h>
#include <stddef.h>

#include "ir/ir.h"

typedef struct ptrt_cuda ptrt_cuda;

/* Whether the plan directory's manifest names a cuda target (reads
 * manifest.json only; false when it cannot be read: ptrt_plan_open then
 * reports why). */
bool ptrt_cuda_is_plan(const char *dir);

/* Opens and checks the plan at dir, then the driver and the GPU (above).
 * Returns the loaded plan, or NULL after reporting the problem on ctx
 * (which also goes to why, one line, when why is not NULL). */
ptrt_cuda *ptrt_cuda_open(ptc_ctx *ctx, const char *dir, char *why, size_t len);
void ptrt_cuda_close(ptrt_cuda *c);

/* What was loaded: the target ("cuda:sm_90"), the device's name, the
 * number of kernels the manifest lists and of functions loaded. */
const char *ptrt_cuda_target(const ptrt_cuda *c);
const char *ptrt_cuda_device(const ptrt_cuda *c);
int32_t ptrt_cuda_nkernels(const ptrt_cuda *c);

/* The peak dense bf16 rate of the device in GFLOP/s by its name (H100 and
 * H200 SXM 989,000; A100 312,000), the MFU's denominator; 0 when unknown. */
double ptrt_cuda_peak_gflops(const ptrt_cuda *c);

/* The node-local rank that picks this process's GPU: OMPI_COMM_WORLD_LOCAL_RANK,
 * SLURM_LOCALID, MPI_LOCALRANKID or PMI_LOCAL_RANK, else 0.  Device
 * local_rank mod the number of GPUs is taken. */
long ptrt_cuda_local_rank(void);

/* ---- running a plan (cuda_exec.c) -------------------------------------
 *
 * Memory: device addresses are void * that the host never dereferences.
 * Every call returns 0, or -1 after reporting on ctx (the driver's error
 * and what was being done). */
struct ptrt_vars;
struct ptrt_env;

void *ptrt_cuda_alloc(ptrt_cuda *c, ptc_ctx *ctx, int64_t bytes, const char *what);
void ptrt_cuda_free(ptrt_cuda *c, void *d);
int ptrt_cuda_upload(ptrt_cuda *c, ptc_ctx *ctx, void *dst, const void *src, int64_t n);
/* waits for the work before it */
int ptrt_cuda_download(ptrt_cuda *c, ptc_ctx *ctx, void *dst, const void *src, int64_t n);
int ptrt_cuda_copy(ptrt_cuda *c, ptc_ctx *ctx, void *dst, const void *src, int64_t n);
int ptrt_cuda_sync(ptrt_cuda *c, ptc_ctx *ctx);
/* device memory held (variables, arenas, buffers, workspaces) */
int64_t ptrt_cuda_allocated(const ptrt_cuda *c);

/* The variables on the GPU: one allocation laid out as v->base, filled from
 * the host copy (attach, upload) or copied back to it (download: before a
 * save). */
int ptrt_cuda_vars_attach(ptrt_cuda *c, ptc_ctx *ctx, struct ptrt_vars *v);
int ptrt_cuda_vars_upload(ptrt_cuda *c, ptc_ctx *ctx, struct ptrt_vars *v);
int ptrt_cuda_vars_download(ptrt_cuda *c, ptc_ctx *ctx, struct ptrt_vars *v);

/* One function's ops on the GPU.  made once per program (exec.c): for each
 * op, how it runs -- a fused group's kernel, cuBLASLt, an attention
 * kernel, a copy or one of the runtime's kernels -- or that it is staged:
 * its operands are copied to the host, its CPU kernel runs, its results
 * are copied back (collectives over MPI, rare ops).  groups: whether the
 * function's fused groups run as kernels. */
typedef struct ptrt_cuda_prog ptrt_cuda_prog;
ptrt_cuda_prog *ptrt_cuda_prog_create(ptrt_cuda *c, const struct ptrt_env *env, ptc_func *f,
                                      bool groups);
void ptrt_cuda_prog_destroy(ptrt_cuda_prog *p);
/* the fused group that starts at op i, or NULL */
const ptc_group_sig *ptrt_cuda_prog_group_at(const ptrt_cuda_prog *p, int32_t i);
/* whether op i is staged through the host */
bool ptrt_cuda_prog_staged(const ptrt_cuda_prog *p, int32_t i);
/* op i (not staged) with its operands' and results' device buffers */
int ptrt_cuda_prog_op(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out);
/* the fused group sig: its inputs then outputs */
int ptrt_cuda_prog_group(ptrt_cuda_prog *p, const ptc_group_sig *sig, void *const *bufs);
/* After a run: the kernels' status flags (an id or target out of range),
 * reported at the op that set one; clears them.  Waits for the GPU. */
int ptrt_cuda_prog_finish(ptrt_cuda_prog *p);
/* the ops that ran on the GPU and those staged, by kind, with --profile
 * (each op timed with the GPU synchronized around it) */
void ptrt_cuda_prog_counts(const ptrt_cuda_prog *p, int32_t *gpu_ops, int32_t *staged_ops);

#endif /* PTRT_CUDA_H */
