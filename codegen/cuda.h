/* cuda.h -- CUDA kernels of a module, compiled ahead of time with NVRTC.
 *
 * ptc writes plans for a GPU on a machine that may have none: the kernels
 * are CUDA C generated from the IR (cuda_emit.c: fused groups, from the
 * same op descriptions as the CPU kernels, codegen/opmath.h; cuda_kernels.c:
 * attention forward and backward, the multi-tensor AdamW) and compiled by
 * NVRTC to a cubin for one architecture and to PTX.  libnvrtc is opened
 * with dlopen when a cuda target is asked for, so ptc builds and runs
 * without CUDA.  Matrix products are not kernels: the plan records them as
 * cuBLASLt calls.  docs/cuda.md describes the plan's "kernels" object.
 */
#ifndef PTC_CUDA_H
#define PTC_CUDA_H

#include "ir/ir.h"

/* What ptc_codegen_cuda produces: the plan's files and the manifest's
 * "kernels" object (JSON text). */
typedef struct ptc_cuda_out {
  char arch[16];        /* "sm_90" */
  ptc_buf source;       /* kernels.cu */
  ptc_buf ptx;          /* kernels.<arch>.ptx */
  ptc_buf cubin;        /* kernels.<arch>.cubin */
  ptc_buf info;         /* JSON object for the manifest */
  ptc_buf ptxas_log;    /* ptxas -v: registers and spills per function */
  int32_t nkernels;
} ptc_cuda_out;

/* Whether target names a CUDA architecture ptc compiles for: "cuda:sm_80",
 * "cuda:sm_90" (and "cuda:sm_NN" for NN in 70..120).  Writes the arch
 * ("sm_90") to arch. */
bool ptc_cuda_target_parse(const char *target, char *arch, size_t len);

/* Whether NVRTC can be opened here; when not, why (the library names
 * tried, the variable to set). */
bool ptc_cuda_nvrtc_available(char *why, size_t len);

/* Generates every kernel of m and compiles it with NVRTC for the target's
 * arch.  Reports (at the op, naming the kernel) and returns -1 on failure:
 * no NVRTC, no CUDA headers, a compilation error. */
int ptc_codegen_cuda(ptc_module *m, const char *target, ptc_cuda_out *out);
/* The CUDA C only, without compiling (for tests and for reading). */
int ptc_codegen_cuda_source(ptc_module *m, ptc_buf *source);
void ptc_cuda_out_fini(ptc_cuda_out *out);

#endif /* PTC_CUDA_H */
