/* cuda_internal.h -- what cuda.c (opening a plan) and cuda_exec.c (running
 * it) share: the driver and cuBLASLt entry points, looked up with dlsym
 * (no CUDA header or library is needed to build ptrun), and the loaded
 * plan.  Device addresses are held as void * and never dereferenced on
 * the host. */
#ifndef PTRT_CUDA_INTERNAL_H
#define PTRT_CUDA_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/cuda.h"

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
enum { CU_ATTR_CC_MAJOR = 75, CU_ATTR_CC_MINOR = 76, CU_ATTR_SM_COUNT = 16 };
enum { CU_MEMORYTYPE_DEVICE = 2 };

/* CUDA_MEMCPY2D of the driver API (cuda.h), field for field */
typedef struct cu_memcpy2d {
  size_t srcXInBytes, srcY;
  int srcMemoryType;
  const void *srcHost;
  CUdeviceptr srcDevice;
  void *srcArray;
  size_t srcPitch;
  size_t dstXInBytes, dstY;
  int dstMemoryType;
  void *dstHost;
  CUdeviceptr dstDevice;
  void *dstArray;
  size_t dstPitch;
  size_t WidthInBytes, Height;
} cu_memcpy2d;

typedef struct ptrt_cu_driver {
  void *lib;
  CUresult (*Init)(unsigned);
  CUresult (*DeviceGetCount)(int *);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DeviceGetName)(char *, int, CUdevice);
  CUresult (*DeviceGetAttribute)(int *, int, CUdevice);
  CUresult (*PrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*PrimaryCtxRelease)(CUdevice);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*ModuleLoadData)(CUmodule *, const void *);
  CUresult (*ModuleUnload)(CUmodule);
  CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*GetErrorString)(CUresult, const char **);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemGetInfo)(size_t *, size_t *);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr, const void *, size_t, CUstream);
  CUresult (*MemcpyDtoHAsync)(void *, CUdeviceptr, size_t, CUstream);
  CUresult (*MemcpyDtoDAsync)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
  CUresult (*Memcpy2DAsync)(const cu_memcpy2d *, CUstream);
  CUresult (*MemsetD8Async)(CUdeviceptr, unsigned char, size_t, CUstream);
  CUresult (*MemsetD16Async)(CUdeviceptr, unsigned short, size_t, CUstream);
  CUresult (*MemsetD32Async)(CUdeviceptr, unsigned int, size_t, CUstream);
  CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                           unsigned, unsigned, CUstream, void **, void **);
  CUresult (*StreamCreate)(CUstream *, unsigned);
  CUresult (*StreamDestroy)(CUstream);
  CUresult (*StreamSynchronize)(CUstream);
  CUresult (*EventCreate)(CUevent *, unsigned);
  CUresult (*EventDestroy)(CUevent);
  CUresult (*EventRecord)(CUevent, CUstream);
  CUresult (*EventSynchronize)(CUevent);
  CUresult (*EventElapsedTime)(float *, CUevent, CUevent);
} ptrt_cu_driver;

/* cuBLASLt (cublasLt.h), the few entry points and values used */
typedef struct cublasLtContext *cublasLtHandle_t;
typedef struct { uint64_t data[32]; } *cublasLtMatmulDesc_t;
typedef struct { uint64_t data[8]; } *cublasLtMatrixLayout_t;
typedef struct { uint64_t data[8]; } *cublasLtMatmulPreference_t;
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
typedef struct {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  int state;
  float wavesCount;
  int reserved[4];
} cublasLtMatmulHeuristicResult_t;
enum {
  PT_CUBLAS_COMPUTE_32F = 68,
  PT_CUDA_R_32F = 0, PT_CUDA_R_16F = 2, PT_CUDA_R_16BF = 14,
  PT_CUBLAS_OP_N = 0, PT_CUBLAS_OP_T = 1,
  PT_LT_DESC_TRANSA = 3, PT_LT_DESC_TRANSB = 4,
  PT_LT_LAYOUT_BATCH_COUNT = 5, PT_LT_LAYOUT_STRIDED_BATCH_OFFSET = 6,
  PT_LT_PREF_MAX_WORKSPACE_BYTES = 1,
};

typedef struct ptrt_cu_lt {
  void *lib;
  int (*Create)(cublasLtHandle_t *);
  int (*Destroy)(cublasLtHandle_t);
  int (*MatmulDescCreate)(cublasLtMatmulDesc_t *, int, int);
  int (*MatmulDescDestroy)(cublasLtMatmulDesc_t);
  int (*MatmulDescSetAttribute)(cublasLtMatmulDesc_t, int, const void *, size_t);
  int (*MatrixLayoutCreate)(cublasLtMatrixLayout_t *, int, uint64_t, uint64_t, int64_t);
  int (*MatrixLayoutDestroy)(cublasLtMatrixLayout_t);
  int (*MatrixLayoutSetAttribute)(cublasLtMatrixLayout_t, int, const void *, size_t);
  int (*MatmulPreferenceCreate)(cublasLtMatmulPreference_t *);
  int (*MatmulPreferenceDestroy)(cublasLtMatmulPreference_t);
  int (*MatmulPreferenceSetAttribute)(cublasLtMatmulPreference_t, int, const void *, size_t);
  int (*MatmulAlgoGetHeuristic)(cublasLtHandle_t, cublasLtMatmulDesc_t, cublasLtMatrixLayout_t,
                                cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                cublasLtMatrixLayout_t, cublasLtMatmulPreference_t, int,
                                cublasLtMatmulHeuristicResult_t *, int *);
  int (*Matmul)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void *, const void *,
                cublasLtMatrixLayout_t, const void *, cublasLtMatrixLayout_t, const void *,
                const void *, cublasLtMatrixLayout_t, void *, cublasLtMatrixLayout_t,
                const cublasLtMatmulAlgo_t *, void *, size_t, CUstream);
  const char *(*GetStatusString)(int);
} ptrt_cu_lt;

/* A kernel the manifest lists (codegen/cuda.c writes them). */
typedef enum ptrt_cu_kind {
  PTRT_CU_GROUP,
  PTRT_CU_ATTN_FWD,
  PTRT_CU_ATTN_BWD,
  PTRT_CU_OTHER,
} ptrt_cu_kind;

typedef struct ptrt_cu_kernel {
  CUfunction fn;
  ptrt_cu_kind kind;
  const char *name, *func; /* borrowed from the manifest */
  int64_t group, op;
  unsigned grid[3], block[3], shared;
  int32_t nin, nout;     /* params of role in / out (out_f32_workspace counted in nout) */
  bool ws32[8];          /* result r is summed in f32 workspace, then rounded to 16 bits */
  uint8_t comb[8];       /* result r: 0 stored, 1 summed (zero-fill first), 2 max (-inf) */
  int Tq, H, S, G, causal;
  float scale;
} ptrt_cu_kernel;

/* the runtime's own kernels in every plan's cubin (codegen/cuda_kernels.c) */
typedef struct ptrt_cu_fixed {
  CUfunction emb[2][2];      /* [elem 4 bytes?0:1][ids i64?] */
  CUfunction emb_grad[3][2]; /* [f32, bf16, f16][ids i64?] */
  CUfunction gather[4];      /* element size 1, 2, 4, 8 */
  CUfunction cvt[2];         /* f32 -> bf16, f16 */
  CUfunction softmax_rows[3]; /* attention through products: P of f32, bf16, f16 */
  CUfunction attn_ds[3];
} ptrt_cu_fixed;

struct ptrt_cuda {
  char target[32], arch[16], device[256];
  int32_t nkernels, nfunctions;
  int ordinal, sm_count;
  ptrt_cu_driver drv;
  CUdevice dev;
  CUcontext ctx;
  CUmodule mod;
  bool have_ctx;
  CUstream stream;
  json_t *manifest;      /* owned, kept for the kernels' names */
  ptrt_cu_kernel *k;     /* [nkernels] */
  ptrt_cu_fixed fixed;
  ptrt_cu_lt lt;         /* opened with the first matrix product */
  cublasLtHandle_t lt_handle;
  bool lt_tried;
  CUdeviceptr lt_ws;     /* cuBLASLt's workspace */
  size_t lt_ws_bytes;
  CUdeviceptr scratch;   /* f32 accumulators of 16-bit results */
  int64_t scratch_bytes;
  int64_t allocated;     /* bytes of device memory this runtime holds */
  /* matrix products timed when planned (cuda_exec.c, tune) */
  CUdeviceptr tune_buf;
  int64_t tune_bytes;
  struct tune_key *tuned_keys;
  int *tuned_pick;
  int32_t ntuned, cap_tuned;
};

const char *ptrt__cu_err(const ptrt_cu_driver *d, CUresult r);
/* cuda_exec.c: the kernel table from the manifest (after the module is
 * loaded), and what ptrt_cuda_close releases first */
int ptrt__cuda_load_table(ptc_ctx *ctx, ptrt_cuda *c, json_t *root, char *why, size_t len);
void ptrt__cuda_release(ptrt_cuda *c);

#endif /* PTRT_CUDA_INTERNAL_H */
