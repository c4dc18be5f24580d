/* cuda_internal.h -- what the CUDA C emitter (cuda_emit.c, cuda_kernels.c)
 * hands the CUDA driver of code generation (cuda.c).  Not an API. */
#ifndef PTC_CUDA_INTERNAL_H
#define PTC_CUDA_INTERNAL_H

#include "codegen/cuda.h"

enum { PTC_CUDA_BLOCK = 256, PTC_CUDA_MAX_GRID = 1 << 20 };

typedef struct ptc_cuda_kernel {
  char name[64];     /* what the plan calls it: ptc_k<N>, ptc_attn_fwd_..., */
  char function[64]; /* the __global__ function that runs it (a kernel with the
                        same text is compiled once and shared) */
  int64_t group;     /* the group id, or -1 for a standalone kernel */
  char kind[16];     /* elementwise, rowwise, attention_fwd, attention_bwd, adamw_mt */
  const ptc_func *func;
  int32_t op;        /* the op it starts at (for locations), -1: none */
  int64_t grid[3], block[3];
  int32_t line0, line1; /* [line0, line1) of its text in the source, when defining */
  ptc_buf params;    /* JSON array text: its parameters, in launch order */
  ptc_buf extra;     /* JSON members text (",\"k\": v..."), may be empty */
  /* from ptxas (cuda.c) */
  int32_t registers;
  int64_t stack, spill_stores, spill_loads;
  bool have_usage;
} ptc_cuda_kernel;

typedef struct ptc_cuda_src {
  ptc_buf text;         /* the CUDA C++ translation unit */
  int32_t nk, capk;
  ptc_cuda_kernel *k;
  ptc_buf matmuls;      /* JSON array text: the cuBLASLt calls */
} ptc_cuda_src;

/* Emits every kernel of m (fused groups of every function, attention
 * forward / backward, the multi-tensor AdamW) and the matmul records.
 * Returns 0 or -1 (reported at the op). */
int ptc__cuda_emit_module(ptc_module *m, ptc_cuda_src *src);
void ptc__cuda_src_fini(ptc_cuda_src *src);

/* cuda_kernels.c: the prelude every kernel uses (loads and stores by
 * dtype, warp and block reductions, atomics), and the standalone kernels
 * as templates. */
extern const char ptc__cuda_prelude[];
extern const char ptc__cuda_templates[];

ptc_cuda_kernel *ptc__cuda_add_kernel(ptc_cuda_src *src);
int32_t ptc__cuda_line_count(const ptc_buf *b);
void ptc__json_str(ptc_buf *b, const char *s);

#endif
