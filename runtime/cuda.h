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
 * it takes the first device, checks its compute capability against the
 * plan's architecture (the cubin runs on the same major version, else the
 * driver compiles the PTX), makes a context and loads the module and every
 * kernel function.  Executing the plan's schedule on the GPU is not part
 * of this file (docs/cuda.md says what is missing).
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

#endif /* PTRT_CUDA_H */
