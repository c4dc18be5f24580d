/* cuda_exec.c -- running a CUDA plan's functions on the GPU
 * (runtime/cuda.h).
 *
 * The executor (exec.c) walks a function's ops as on the CPU: the same
 * buffer plan (codegen/liveness.c), with the arena, the variables and the
 * argument buffers in device memory.  This file says how each op runs
 * there, decided once per program:
 *
 *   fused group          its kernel from the plan (ptc_k<N>), outputs that
 *                        accumulate filled with 0 / -inf first
 *   matmul               cuBLASLt, row-major as (B, A) swapped, batched by
 *                        strides, f32 accumulation (f32: CUBLAS_COMPUTE_32F,
 *                        no TF32, so results match the CPU's to rounding)
 *   attention(_grad)     the plan's flash-style kernels; 16-bit dk, dv are
 *                        summed in f32 scratch and rounded once
 *   slice, pad, concat   2-D device copies (cuMemcpy2DAsync)
 *   transpose,
 *   broadcast_to         ptc_rt_gather_<bytes>
 *   embedding(_grad)     ptc_rt_embedding*: rows gathered; the gradient
 *                        summed with f32 atomics
 *   constant             a memset of its bit pattern
 *   anything else        staged: operands copied to the host, the op's CPU
 *                        kernel, results copied back.  Collectives are
 *                        staged this way: MPI with host staging, the mode
 *                        for ranks that share a GPU.
 *
 * Everything is issued on one stream in program order, so no op needs an
 * event; a staged op waits for the stream before it reads.  Kernels that
 * meet an index out of range set their op's status word; ptrt_cuda_prog_finish
 * reads them after a run and reports the op.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dlfcn.h>

#include "runtime/cuda_internal.h"
#include "runtime/half.h"
#include "runtime/ptrt.h"

#define DP(x) ((CUdeviceptr)(uintptr_t)(x))
#define HP(x) ((void *)(uintptr_t)(x))
#define RECOMPILE_HINT "recompile the model with this release's ptc ('ptc MODEL.ptg --target %s -o PLAN')"

long ptrt_cuda_local_rank(void) {
  static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                      "MPI_LOCALRANKID", "PMI_LOCAL_RANK"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    const char *s = getenv(names[i]);
    if (s && *s) {
      char *end;
      long v = strtol(s, &end, 10);
      if (*end == 0 && v >= 0) return v;
    }
  }
  return 0;
}

double ptrt_cuda_peak_gflops(const ptrt_cuda *c) {
  if (strstr(c->device, "H100") || strstr(c->device, "H200") || strstr(c->device, "GH200"))
    return 989e3;
  if (strstr(c->device, "A100")) return 312e3;
  return 0;
}

static int cu_ok(ptrt_cuda *c, ptc_ctx *ctx, CUresult r, const char *what) {
  if (r == 0) return 0;
  ptrt_error(ctx, "CUDA error on %s (device %d): %s: %s", c->device, c->ordinal, what,
             ptrt__cu_err(&c->drv, r));
  return -1;
}

/* ---- the plan's kernel table ------------------------------------------- */

static unsigned juint(json_t *a, size_t i) {
  json_t *v = json_array_get(a, i);
  return json_is_integer(v) && json_integer_value(v) > 0 ? (unsigned)json_integer_value(v) : 1;
}

static CUfunction fixed_fn(ptrt_cuda *c, const char *name, bool *missing) {
  CUfunction h = NULL;
  if (c->drv.ModuleGetFunction(&h, c->mod, name) != 0) {
    *missing = true;
    return NULL;
  }
  return h;
}

int ptrt__cuda_load_table(ptc_ctx *ctx, ptrt_cuda *c, json_t *root, char *why, size_t len) {
  json_t *list = json_object_get(json_object_get(root, "kernels"), "list");
  size_t n = json_array_size(list);
  c->k = calloc(n + 1, sizeof *c->k);
  for (size_t i = 0; i < n; i++) {
    json_t *e = json_array_get(list, i);
    ptrt_cu_kernel *k = &c->k[i];
    const char *fn = json_string_value(json_object_get(e, "function"));
    const char *kind = json_string_value(json_object_get(e, "kind"));
    c->drv.ModuleGetFunction(&k->fn, c->mod, fn);
    k->name = fn;
    k->func = json_string_value(json_object_get(e, "func"));
    if (!k->func) k->func = "";
    json_t *g = json_object_get(e, "group"), *op = json_object_get(e, "op");
    k->group = json_is_integer(g) ? json_integer_value(g) : -1;
    k->op = json_is_integer(op) ? json_integer_value(op) : -1;
    k->kind = !kind ? PTRT_CU_OTHER
              : strcmp(kind, "elementwise") == 0 || strcmp(kind, "rowwise") == 0 ? PTRT_CU_GROUP
              : strcmp(kind, "attention_fwd") == 0 ? PTRT_CU_ATTN_FWD
              : strcmp(kind, "attention_bwd") == 0 ? PTRT_CU_ATTN_BWD
                                                   : PTRT_CU_OTHER;
    for (int d = 0; d < 3; d++) {
      k->grid[d] = juint(json_object_get(e, "grid"), (size_t)d);
      k->block[d] = juint(json_object_get(e, "block"), (size_t)d);
    }
    json_t *sh = json_object_get(e, "shared_bytes");
    k->shared = json_is_integer(sh) ? (unsigned)json_integer_value(sh) : 0;
    json_t *ps = json_object_get(e, "params");
    for (size_t j = 0; j < json_array_size(ps); j++) {
      json_t *pj = json_array_get(ps, j);
      const char *role = json_string_value(json_object_get(pj, "role"));
      const char *comb = json_string_value(json_object_get(pj, "combine"));
      if (!role) continue;
      if (strcmp(role, "in") == 0) {
        k->nin++;
      } else if (strcmp(role, "out") == 0 || strcmp(role, "out_f32_workspace") == 0) {
        if (k->nout < 8) {
          k->ws32[k->nout] = strcmp(role, "out_f32_workspace") == 0;
          k->comb[k->nout] = !comb ? 0 : strcmp(comb, "sum") == 0 ? 1 : strcmp(comb, "max") == 0 ? 2 : 0;
        }
        k->nout++;
      }
    }
    json_t *sc = json_object_get(e, "scalars");
    if (json_is_object(sc)) {
      k->Tq = (int)json_integer_value(json_object_get(sc, "Tq"));
      k->H = (int)json_integer_value(json_object_get(sc, "H"));
      k->S = (int)json_integer_value(json_object_get(sc, "S"));
      k->G = (int)json_integer_value(json_object_get(sc, "G"));
      k->causal = (int)json_integer_value(json_object_get(sc, "causal"));
      k->scale = (float)json_number_value(json_object_get(sc, "scale"));
    }
  }
  bool missing = false;
  static const char *const ids[2] = {"i32", "i64"};
  static const char *const f16s[3] = {"f32", "bf16", "f16"};
  char name[96];
  for (int b = 0; b < 2; b++)
    for (int t = 0; t < 2; t++) {
      snprintf(name, sizeof name, "ptc_rt_embedding_%s_%s", b ? "b2" : "b4", ids[t]);
      c->fixed.emb[b][t] = fixed_fn(c, name, &missing);
    }
  for (int d = 0; d < 3; d++)
    for (int t = 0; t < 2; t++) {
      snprintf(name, sizeof name, "ptc_rt_embedding_grad_%s_%s", f16s[d], ids[t]);
      c->fixed.emb_grad[d][t] = fixed_fn(c, name, &missing);
    }
  for (int b = 0; b < 4; b++) {
    snprintf(name, sizeof name, "ptc_rt_gather_%d", 1 << b);
    c->fixed.gather[b] = fixed_fn(c, name, &missing);
  }
  for (int d = 0; d < 3; d++) {
    snprintf(name, sizeof name, "ptc_rt_softmax_rows_%s", f16s[d]);
    c->fixed.softmax_rows[d] = fixed_fn(c, name, &missing);
    snprintf(name, sizeof name, "ptc_rt_attn_ds_%s", f16s[d]);
    c->fixed.attn_ds[d] = fixed_fn(c, name, &missing);
  }
  c->fixed.cvt[0] = fixed_fn(c, "ptc_cvt_f32_to_bf16", &missing);
  c->fixed.cvt[1] = fixed_fn(c, "ptc_cvt_f32_to_f16", &missing);
  if (missing) {
    snprintf(why ? why : name, why ? len : sizeof name,
             "the plan's cubin lacks the runtime's kernels (ptc_rt_*): it was written by an "
             "older ptc; " RECOMPILE_HINT, c->target);
    ptrt_error(ctx, "the plan's cubin lacks the runtime's kernels (ptc_rt_*): it was written "
               "by an older ptc; " RECOMPILE_HINT, c->target);
    return -1;
  }
  return 0;
}

void ptrt__cuda_release(ptrt_cuda *c) {
  if (!c->have_ctx) return;
  if (c->stream) c->drv.StreamSynchronize(c->stream);
  if (c->lt_handle) c->lt.Destroy(c->lt_handle);
  if (c->lt_ws) c->drv.MemFree(c->lt_ws);
  if (c->scratch) c->drv.MemFree(c->scratch);
  if (c->tune_buf) c->drv.MemFree(c->tune_buf);
  free(c->tuned_keys);
  free(c->tuned_pick);
  c->tuned_keys = NULL;
  c->tuned_pick = NULL;
  c->tune_buf = 0;
  if (c->stream) c->drv.StreamDestroy(c->stream);
  if (c->lt.lib) dlclose(c->lt.lib);
  c->lt_handle = NULL;
  c->lt_ws = c->scratch = 0;
  c->stream = NULL;
}

/* ---- memory ------------------------------------------------------------- */

void *ptrt_cuda_alloc(ptrt_cuda *c, ptc_ctx *ctx, int64_t bytes, const char *what) {
  CUdeviceptr d = 0;
  size_t n = bytes > 0 ? (size_t)bytes : 256;
  CUresult r = c->drv.MemAlloc(&d, n);
  if (r != 0) {
    size_t fr = 0, tot = 0;
    c->drv.MemGetInfo(&fr, &tot);
    char need[32], f[32], t[32];
    ptc_bytes_text(need, sizeof need, (double)n);
    ptc_bytes_text(f, sizeof f, (double)fr);
    ptc_bytes_text(t, sizeof t, (double)tot);
    ptrt_error(ctx, "out of GPU memory on %s (device %d): %s needs %s, %s of %s are free; "
               "compile with --recompute auto --device-memory SIZE, a smaller batch or more "
               "devices (%s)", c->device, c->ordinal, what, need, f, t,
               ptrt__cu_err(&c->drv, r));
    return NULL;
  }
  c->allocated += (int64_t)n;
  return HP(d);
}

void ptrt_cuda_free(ptrt_cuda *c, void *d) {
  if (!d) return;
  c->drv.StreamSynchronize(c->stream);
  c->drv.MemFree(DP(d));
}

int64_t ptrt_cuda_allocated(const ptrt_cuda *c) { return c->allocated; }

int ptrt_cuda_upload(ptrt_cuda *c, ptc_ctx *ctx, void *dst, const void *src, int64_t n) {
  if (n <= 0) return 0;
  return cu_ok(c, ctx, c->drv.MemcpyHtoDAsync(DP(dst), src, (size_t)n, c->stream),
               "copying to the GPU");
}

int ptrt_cuda_download(ptrt_cuda *c, ptc_ctx *ctx, void *dst, const void *src, int64_t n) {
  if (n > 0 && cu_ok(c, ctx, c->drv.MemcpyDtoHAsync(dst, DP(src), (size_t)n, c->stream),
                     "copying from the GPU") != 0)
    return -1;
  return ptrt_cuda_sync(c, ctx);
}

int ptrt_cuda_copy(ptrt_cuda *c, ptc_ctx *ctx, void *dst, const void *src, int64_t n) {
  if (n <= 0 || dst == src) return 0;
  return cu_ok(c, ctx, c->drv.MemcpyDtoDAsync(DP(dst), DP(src), (size_t)n, c->stream),
               "copying on the GPU");
}

int ptrt_cuda_sync(ptrt_cuda *c, ptc_ctx *ctx) {
  return cu_ok(c, ctx, c->drv.StreamSynchronize(c->stream),
               "running the step's kernels (an earlier launch failed; run with "
               "CUDA_LAUNCH_BLOCKING=1 and --profile to find it)");
}

int ptrt_cuda_vars_attach(ptrt_cuda *c, ptc_ctx *ctx, ptrt_vars *v) {
  if (!v->dev) v->dev = ptrt_cuda_alloc(c, ctx, v->bytes, "the variables");
  if (!v->dev) return -1;
  return ptrt_cuda_vars_upload(c, ctx, v);
}

int ptrt_cuda_vars_upload(ptrt_cuda *c, ptc_ctx *ctx, ptrt_vars *v) {
  if (ptrt_cuda_upload(c, ctx, v->dev, v->base, v->bytes) != 0) return -1;
  return ptrt_cuda_sync(c, ctx);
}

int ptrt_cuda_vars_download(ptrt_cuda *c, ptc_ctx *ctx, ptrt_vars *v) {
  return ptrt_cuda_download(c, ctx, v->base, v->dev, v->bytes);
}

/* ---- cuBLASLt ------------------------------------------------------------ */

static int lt_open(ptrt_cuda *c, ptc_ctx *ctx) {
  if (c->lt_handle) return 0;
  if (c->lt_tried) return -1;
  c->lt_tried = true;
  static const char *const names[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"};
  for (size_t i = 0; i < 3 && !c->lt.lib; i++) c->lt.lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
  if (!c->lt.lib) {
    ptrt_error(ctx, "this plan's matrix products need cuBLASLt, but libcublasLt.so (13 or 12) "
               "is not on the loader's path: add the CUDA toolkit's lib64 to LD_LIBRARY_PATH");
    return -1;
  }
  ptrt_cu_lt *l = &c->lt;
#define LSYM(field, name)                                                                   \
  do {                                                                                      \
    *(void **)&l->field = dlsym(l->lib, name);                                              \
    if (!l->field) {                                                                        \
      ptrt_error(ctx, "libcublasLt has no %s: it is too old for this ptrun", name);        \
      return -1;                                                                            \
    }                                                                                       \
  } while (0)
  LSYM(Create, "cublasLtCreate");
  LSYM(Destroy, "cublasLtDestroy");
  LSYM(MatmulDescCreate, "cublasLtMatmulDescCreate");
  LSYM(MatmulDescDestroy, "cublasLtMatmulDescDestroy");
  LSYM(MatmulDescSetAttribute, "cublasLtMatmulDescSetAttribute");
  LSYM(MatrixLayoutCreate, "cublasLtMatrixLayoutCreate");
  LSYM(MatrixLayoutDestroy, "cublasLtMatrixLayoutDestroy");
  LSYM(MatrixLayoutSetAttribute, "cublasLtMatrixLayoutSetAttribute");
  LSYM(MatmulPreferenceCreate, "cublasLtMatmulPreferenceCreate");
  LSYM(MatmulPreferenceDestroy, "cublasLtMatmulPreferenceDestroy");
  LSYM(MatmulPreferenceSetAttribute, "cublasLtMatmulPreferenceSetAttribute");
  LSYM(MatmulAlgoGetHeuristic, "cublasLtMatmulAlgoGetHeuristic");
  LSYM(Matmul, "cublasLtMatmul");
  LSYM(GetStatusString, "cublasLtGetStatusString");
#undef LSYM
  int s = l->Create(&c->lt_handle);
  if (s != 0) {
    ptrt_error(ctx, "cublasLtCreate failed: %s", l->GetStatusString(s));
    c->lt_handle = NULL;
    return -1;
  }
  c->lt_ws_bytes = 32u << 20;
  void *ws = ptrt_cuda_alloc(c, ctx, (int64_t)c->lt_ws_bytes, "cuBLASLt's workspace");
  if (!ws) return -1;
  c->lt_ws = DP(ws);
  return 0;
}

/* A matrix product as cuBLASLt sees it: row-major C[M,N] = op(A) op(B),
 * A and B as stored with their leading dimensions, batched by strides (in
 * elements).  cuBLASLt is column-major, so it computes C^T = op(B)^T op(A)^T:
 * its A is our B and its B our A, each stored matrix read as its
 * transpose. */
typedef struct gemm {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t la, lb, ld;
  cublasLtMatmulHeuristicResult_t algo;
} gemm;

static int lt_dtype(ptc_dtype t) {
  return t == PTC_DTYPE_F32 ? PT_CUDA_R_32F : t == PTC_DTYPE_BF16 ? PT_CUDA_R_16BF
         : t == PTC_DTYPE_F16 ? PT_CUDA_R_16F : -1;
}

static int64_t prod_batch(const ptc_type *t) {
  int64_t n = 1;
  for (int32_t d = 0; d < t->rank - 2; d++) n *= t->dims[d];
  return n;
}

static void gemm_fini(ptrt_cuda *c, gemm *g) {
  if (!g->desc) return;
  c->lt.MatmulDescDestroy(g->desc);
  if (g->la) c->lt.MatrixLayoutDestroy(g->la);
  if (g->lb) c->lt.MatrixLayoutDestroy(g->lb);
  if (g->ld) c->lt.MatrixLayoutDestroy(g->ld);
  memset(g, 0, sizeof *g);
}

static cublasLtMatrixLayout_t layout(ptrt_cuda *c, int dt, int64_t rows, int64_t cols, int64_t ld,
                                     int32_t batch, int64_t stride) {
  cublasLtMatrixLayout_t l = NULL;
  if (c->lt.MatrixLayoutCreate(&l, dt, (uint64_t)rows, (uint64_t)cols, ld) != 0) return NULL;
  if (batch > 1) {
    c->lt.MatrixLayoutSetAttribute(l, PT_LT_LAYOUT_BATCH_COUNT, &batch, sizeof batch);
    c->lt.MatrixLayoutSetAttribute(l, PT_LT_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride);
  }
  return l;
}

static int gemm_run(ptrt_cuda *c, const gemm *g, const void *A, const void *B, void *C, float beta) {
  float alpha = 1;
  return c->lt.Matmul(c->lt_handle, g->desc, &alpha, B, g->la, A, g->lb, &beta, C, g->ld, C, g->ld,
                      &g->algo.algo, HP(c->lt_ws), c->lt_ws_bytes, c->stream);
}

/* cuBLASLt's candidates for one product, timed on scratch buffers of its
 * sizes (filled with a constant, not zeros); the fastest is kept, and the
 * choice is remembered for the same shapes.  PTRUN_CUDA_TUNE=0 takes
 * cuBLASLt's first candidate instead. */
enum { TUNE_CANDIDATES = 8 };

typedef struct tune_key {
  int64_t v[16];
} tune_key;

static int tune(ptrt_cuda *c, gemm *g, const cublasLtMatmulHeuristicResult_t *res, int got,
                const tune_key *key, int64_t bytes_a, int64_t bytes_b, int64_t bytes_c) {
  for (int32_t i = 0; i < c->ntuned; i++)
    if (memcmp(&c->tuned_keys[i], key, sizeof *key) == 0) {
      int pick = c->tuned_pick[i];
      if (pick < got) return pick;
    }
  int64_t need = bytes_a + bytes_b + bytes_c + 3 * 256;
  if (need > c->tune_bytes) {
    if (c->tune_buf) {
      c->drv.StreamSynchronize(c->stream);
      c->drv.MemFree(c->tune_buf);
      c->tune_buf = 0;
    }
    if (c->drv.MemAlloc(&c->tune_buf, (size_t)need) != 0) {
      c->tune_buf = 0;
      c->tune_bytes = 0;
      return 0;
    }
    c->tune_bytes = need;
    c->drv.MemsetD16Async(c->tune_buf, 0x3c00, (size_t)need / 2, c->stream); /* 1.0 in f16, ~0.5 bf16-ish */
  }
  CUdeviceptr A = c->tune_buf, B = A + (CUdeviceptr)((bytes_a + 255) / 256 * 256),
              C = B + (CUdeviceptr)((bytes_b + 255) / 256 * 256);
  CUevent e0 = NULL, e1 = NULL;
  if (c->drv.EventCreate(&e0, 0) != 0 || c->drv.EventCreate(&e1, 0) != 0) return 0;
  int best = 0;
  float best_ms = 0;
  for (int k = 0; k < got; k++) {
    g->algo = res[k];
    if (gemm_run(c, g, HP(A), HP(B), HP(C), 0) != 0) continue; /* warm-up; refused: skip */
    c->drv.EventRecord(e0, c->stream);
    for (int r = 0; r < 3; r++) gemm_run(c, g, HP(A), HP(B), HP(C), 0);
    c->drv.EventRecord(e1, c->stream);
    float ms = 0;
    if (c->drv.EventSynchronize(e1) != 0 || c->drv.EventElapsedTime(&ms, e0, e1) != 0) continue;
    if (k == 0 || ms < best_ms) {
      best = k;
      best_ms = ms;
    }
  }
  c->drv.EventDestroy(e0);
  c->drv.EventDestroy(e1);
  if (c->ntuned == c->cap_tuned) {
    c->cap_tuned = c->cap_tuned ? 2 * c->cap_tuned : 32;
    c->tuned_keys = ptc_xrealloc(c->tuned_keys, (size_t)c->cap_tuned * sizeof *c->tuned_keys);
    c->tuned_pick = ptc_xrealloc(c->tuned_pick, (size_t)c->cap_tuned * sizeof *c->tuned_pick);
  }
  c->tuned_keys[c->ntuned] = *key;
  c->tuned_pick[c->ntuned++] = best;
  return best;
}

static int64_t lt_size(int t) { return t == PT_CUDA_R_32F ? 4 : 2; }

/* 0: planned; 1: cuBLASLt has no algorithm for it */
static int gemm_make(ptrt_cuda *c, gemm *g, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
                     int tab, int tc, int64_t lda, int64_t ldb, int64_t ldc, int32_t batch,
                     int64_t sa, int64_t sb, int64_t sc) {
  memset(g, 0, sizeof *g);
  int opa = tb ? PT_CUBLAS_OP_T : PT_CUBLAS_OP_N, opb = ta ? PT_CUBLAS_OP_T : PT_CUBLAS_OP_N;
  if (c->lt.MatmulDescCreate(&g->desc, PT_CUBLAS_COMPUTE_32F, PT_CUDA_R_32F) != 0) {
    g->desc = NULL;
    return 1;
  }
  c->lt.MatmulDescSetAttribute(g->desc, PT_LT_DESC_TRANSA, &opa, sizeof opa);
  c->lt.MatmulDescSetAttribute(g->desc, PT_LT_DESC_TRANSB, &opb, sizeof opb);
  g->la = tb ? layout(c, tab, K, N, ldb, batch, sb) : layout(c, tab, N, K, ldb, batch, sb);
  g->lb = ta ? layout(c, tab, M, K, lda, batch, sa) : layout(c, tab, K, M, lda, batch, sa);
  g->ld = layout(c, tc, N, M, ldc, batch, sc);
  cublasLtMatmulPreference_t pref = NULL;
  cublasLtMatmulHeuristicResult_t res[TUNE_CANDIDATES];
  const char *tn = getenv("PTRUN_CUDA_TUNE");
  int want = tn && strcmp(tn, "0") == 0 ? 1 : TUNE_CANDIDATES;
  int got = 0;
  if (g->la && g->lb && g->ld && c->lt.MatmulPreferenceCreate(&pref) == 0) {
    uint64_t ws = c->lt_ws_bytes;
    c->lt.MatmulPreferenceSetAttribute(pref, PT_LT_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (c->lt.MatmulAlgoGetHeuristic(c->lt_handle, g->desc, g->la, g->lb, g->ld, g->ld, pref, want,
                                     res, &got) != 0)
      got = 0;
    c->lt.MatmulPreferenceDestroy(pref);
  }
  if (got < 1) {
    gemm_fini(c, g);
    return 1;
  }
  int pick = 0;
  if (got > 1) {
    tune_key key = {{M, N, K, ta, tb, tab, tc, lda, ldb, ldc, batch, sa, sb, sc, 0, 0}};
    int64_t nb = batch > 1 ? batch - 1 : 0;
    int64_t bytes_a = ((ta ? K : M) * lda + nb * sa) * lt_size(tab);
    int64_t bytes_b = ((tb ? N : K) * ldb + nb * sb) * lt_size(tab);
    int64_t bytes_c = (M * ldc + nb * sc) * lt_size(tc);
    pick = tune(c, g, res, got, &key, bytes_a, bytes_b, bytes_c);
  }
  g->algo = res[pick];
  return 0;
}

typedef struct mm_plan {
  gemm g;
  bool zero; /* K == 0: the result is zeros */
} mm_plan;

static void mm_fini(ptrt_cuda *c, mm_plan *m) { gemm_fini(c, &m->g); }

/* 1: this product's shapes or dtypes are not for cuBLASLt (staged);
 * 0: planned; -1: reported. */
static int mm_make(ptrt_cuda *c, ptc_ctx *ctx, const ptc_func *f, const ptc_op *op, mm_plan *m) {
  const ptc_type *at = &f->values[op->in[0]].type, *bt = &f->values[op->in[1]].type,
                 *ot = &f->values[op->out[0]].type;
  int dt = lt_dtype(ot->dtype);
  if (dt < 0 || at->dtype != ot->dtype || bt->dtype != ot->dtype || at->rank < 2 || bt->rank < 2 ||
      ot->rank < 2)
    return 1;
  bool ta = ptc_op_attr_bool(op, "transpose_a", false);
  bool tb = ptc_op_attr_bool(op, "transpose_b", false);
  int64_t M = ot->dims[ot->rank - 2], N = ot->dims[ot->rank - 1];
  int64_t K = ta ? at->dims[at->rank - 2] : at->dims[at->rank - 1];
  int64_t nb = prod_batch(ot), na = prod_batch(at), nbb = prod_batch(bt);
  if ((na != nb && na != 1) || (nbb != nb && nbb != 1)) return 1; /* partial broadcasting */
  if (M == 0 || N == 0 || nb == 0) return 1;
  if (K == 0) {
    m->zero = true;
    return 0;
  }
  if (lt_open(c, ctx) != 0) return -1;
  int64_t Mf = M;
  int32_t batch = (int32_t)nb;
  if (nbb == 1 && !ta && na == nb) { /* A's batch folds into its rows */
    Mf = M * nb;
    batch = 1;
  }
  if (nb > 0x7fffffff) return 1;
  if (gemm_make(c, &m->g, Mf, N, K, ta, tb, dt, dt, ta ? Mf : K, tb ? K : N, N, batch,
                na == 1 ? 0 : M * K, nbb == 1 ? 0 : K * N, M * N) != 0) {
    ptc_warning(ctx, op->loc, "matmul: cuBLASLt has no algorithm for %lld x %lld x %lld (%s): "
                "it runs on the CPU, staged through the host", (long long)Mf, (long long)N,
                (long long)K, ptc_dtype_name(ot->dtype));
    return 1;
  }
  return 0;
}

/* Attention through cuBLASLt, one batch row at a time: S = Q K^T (f32),
 * P = softmax(scale S) (the model's dtype), O = P V; the backward
 * recomputes P, then dP = dO V^T, dS = scale P (dP - rowsum(P dP)),
 * dV = P^T dO, dQ = dS K, dK = dS^T Q.  The products run on the tensor
 * cores; the [H, T, S] scores of one batch row live in scratch.  Heads
 * sharing a key/value head (G < H) run one at a time, dK and dV summed
 * over them. */
typedef struct attn_plan {
  bool on, bwd;
  int B, T, S, H, G, D, E, causal;
  float scale;
  ptc_dtype dt;
  int64_t es;
  gemm qk, pv, dp, dv, dq, dk;
  int64_t s_off, p_off, dp_off, need; /* scratch regions, bytes */
} attn_plan;

static void attn_fini(ptrt_cuda *c, attn_plan *a) {
  gemm_fini(c, &a->qk);
  gemm_fini(c, &a->pv);
  gemm_fini(c, &a->dp);
  gemm_fini(c, &a->dv);
  gemm_fini(c, &a->dq);
  gemm_fini(c, &a->dk);
}

/* 0 planned, 1 not for this path (the flash-style kernel runs), -1 reported */
static int attn_make(ptrt_cuda *c, ptc_ctx *ctx, const ptc_func *f, const ptc_op *op,
                     attn_plan *a) {
  const char *how = getenv("PTRUN_CUDA_ATTENTION");
  if (how && strcmp(how, "kernel") == 0) return 1;
  a->bwd = op->code == PTC_OP_ATTENTION_GRAD;
  int q0 = a->bwd ? 1 : 0;
  const ptc_type *qt = &f->values[op->in[q0]].type, *kt = &f->values[op->in[q0 + 1]].type,
                 *vt = &f->values[op->in[q0 + 2]].type;
  if (qt->rank != 4 || kt->rank != 4 || vt->rank != 4) return 1;
  a->dt = qt->dtype;
  int dt = lt_dtype(a->dt);
  if (dt < 0 || kt->dtype != a->dt || vt->dtype != a->dt) return 1;
  for (int32_t r = 0; r < op->nout; r++)
    if (f->values[op->out[r]].type.dtype != a->dt) return 1;
  a->B = (int)qt->dims[0];
  a->T = (int)qt->dims[1];
  a->H = (int)qt->dims[2];
  a->D = (int)qt->dims[3];
  a->S = (int)kt->dims[1];
  a->G = (int)kt->dims[2];
  a->E = (int)vt->dims[3];
  if (a->G <= 0 || a->H % a->G != 0) return 1;
  a->causal = ptc_op_attr_bool(op, "causal", false);
  a->scale = (float)ptc_op_attr_float(op, "scale", 1.0 / sqrt((double)a->D));
  a->es = ptc_dtype_size(a->dt);
  if (lt_open(c, ctx) != 0) return -1;
  int64_t T = a->T, S = a->S, H = a->H, G = a->G, D = a->D, E = a->E;
  bool shared = G != H; /* one head per product */
  int32_t nb = shared ? 1 : (int32_t)H;
  int f32 = PT_CUDA_R_32F;
  int bad = 0;
  bad |= gemm_make(c, &a->qk, T, S, D, false, true, dt, f32, H * D, G * D, S, nb, D, D, T * S);
  if (!a->bwd) {
    bad |= gemm_make(c, &a->pv, T, E, S, false, false, dt, dt, S, G * E, H * E, nb, T * S, E, E);
  } else {
    bad |= gemm_make(c, &a->dp, T, S, E, false, true, dt, f32, H * E, G * E, S, nb, E, E, T * S);
    bad |= gemm_make(c, &a->dv, S, E, T, true, false, dt, dt, S, H * E, G * E, nb, T * S, E, E);
    bad |= gemm_make(c, &a->dq, T, D, S, false, false, dt, dt, S, G * D, H * D, nb, T * S, D, D);
    bad |= gemm_make(c, &a->dk, S, D, T, true, false, dt, dt, S, H * D, G * D, nb, T * S, D, D);
  }
  if (bad) {
    attn_fini(c, a);
    return 1;
  }
  int64_t hts = H * T * S;
  a->s_off = 0;
  a->p_off = (hts * 4 + 255) / 256 * 256;
  a->dp_off = a->p_off + (hts * a->es + 255) / 256 * 256;
  a->need = a->bwd ? a->dp_off + (hts * 4 + 255) / 256 * 256 : a->dp_off;
  a->on = true;
  return 0;
}

/* ---- programs ------------------------------------------------------------ */

typedef enum method {
  M_SKIP,   /* run by exec.c (reshape, assign, return) or inside a group */
  M_STAGE,  /* the CPU kernel over host copies */
  M_MATMUL,
  M_ATTN,
  M_SLICE,
  M_PAD,
  M_CONCAT,
  M_FILL,
  M_EMB,
  M_EMBG,
  M_GATHER,
  M_COPY,
  M_SOLO,   /* a fusible op outside the groups: its own kernel (ptc_s<f>_<op>) */
  M_ATTN_MM, /* attention through cuBLASLt (attn_plan) */
} method;

struct ptrt_cuda_prog {
  ptrt_cuda *c;
  const ptrt_env *env;
  ptc_func *f;
  int32_t nops;
  uint8_t *how;                 /* [nops] method */
  mm_plan *mm;                  /* [nops] */
  attn_plan *at;                /* [nops] */
  const ptrt_cu_kernel **kern;  /* [nops]: attention, or the group at its first op */
  ptc_group_sig *sigs;          /* [nops]: the group starting at op i, or op i's own (M_SOLO) */
  bool *has_sig;                /* a group starts at op i */
  bool *solo;                   /* sigs[i] is op i's own */
  int32_t *last_use;
  int *status_host;
  CUdeviceptr status;           /* [nops] int */
  int64_t scratch_need;
  int32_t gpu_ops, staged_ops;
  CUdeviceptr *ptr; /* a group's launch arguments */
  void **args;
  int32_t cap_args;
};

/* A group's kernel by group id, or (group -1) the kernel of op `op` */
static const ptrt_cu_kernel *find_kernel(const ptrt_cuda *c, ptrt_cu_kind kind, const char *fn,
                                         int64_t group, int64_t op) {
  for (int32_t i = 0; i < c->nkernels; i++) {
    const ptrt_cu_kernel *k = &c->k[i];
    if (k->kind != kind || !k->fn || strcmp(k->func, fn) != 0) continue;
    if (kind == PTRT_CU_GROUP && group >= 0 ? k->group == group : k->group < 0 && k->op == op)
      return k;
  }
  return NULL;
}

/* f32 workspace for a kernel's 16-bit sums: its bytes */
static int64_t ws_bytes(const ptc_func *f, const ptrt_cu_kernel *k, const int32_t *outs,
                        int32_t nout) {
  int64_t need = 0;
  for (int32_t r = 0; r < nout && r < 8; r++)
    if (k->ws32[r]) need += (ptc_type_numel(&f->values[outs[r]].type) * 4 + 255) / 256 * 256;
  return need;
}

static int esize_index(int es) { return es == 1 ? 0 : es == 2 ? 1 : es == 4 ? 2 : es == 8 ? 3 : -1; }

static method choose(ptrt_cuda_prog *p, int32_t i, int *err) {
  ptrt_cuda *c = p->c;
  ptc_func *f = p->f;
  const ptc_op *op = &f->ops[i];
  const ptc_type *o0 = op->nout ? &f->values[op->out[0]].type : NULL;
  if (ptrt_op_needs_mesh(p->env, f, op)) return M_STAGE; /* its CPU kernel knows the mesh */
  const ptrt_cu_kernel *solo = find_kernel(c, PTRT_CU_GROUP, f->name, -1, i);
  if (solo && ptc_group_analyze_solo(f, i, p->last_use, &p->sigs[i]) == 0) {
    p->solo[i] = true;
    if (solo->nin != p->sigs[i].nin || solo->nout != p->sigs[i].nout) {
      ptrt_error(p->env->ctx, "op %d of @%s: its kernel %s takes %d inputs and %d outputs, the "
                 "IR's op %d and %d: the plan's files disagree; " RECOMPILE_HINT, (int)i,
                 f->name, solo->name, solo->nin, solo->nout, p->sigs[i].nin, p->sigs[i].nout,
                 c->target);
      *err = 1;
      return M_STAGE;
    }
    p->kern[i] = solo;
    int64_t need = ws_bytes(f, solo, p->sigs[i].out, p->sigs[i].nout);
    if (need > p->scratch_need) p->scratch_need = need;
    return M_SOLO;
  }
  switch (op->code) {
  case PTC_OP_RESHAPE:
    return M_COPY;
  case PTC_OP_ASSIGN:
  case PTC_OP_RETURN:
    return M_SKIP;
  case PTC_OP_MATMUL: {
    int r = mm_make(c, p->env->ctx, f, op, &p->mm[i]);
    if (r < 0) *err = 1;
    return r == 0 ? M_MATMUL : M_STAGE;
  }
  case PTC_OP_ATTENTION:
  case PTC_OP_ATTENTION_GRAD: {
    int r = attn_make(c, p->env->ctx, f, op, &p->at[i]);
    if (r < 0) *err = 1;
    if (r == 0) {
      if (p->at[i].need > p->scratch_need) p->scratch_need = p->at[i].need;
      return M_ATTN_MM;
    }
    const ptrt_cu_kernel *k = find_kernel(c, op->code == PTC_OP_ATTENTION ? PTRT_CU_ATTN_FWD
                                                                           : PTRT_CU_ATTN_BWD,
                                          f->name, -1, i);
    if (!k) return M_STAGE;
    p->kern[i] = k;
    int64_t need = ws_bytes(f, k, op->out, op->nout);
    if (need > p->scratch_need) p->scratch_need = need;
    return M_ATTN;
  }
  case PTC_OP_SLICE:
    return M_SLICE;
  case PTC_OP_PAD:
    return M_PAD;
  case PTC_OP_CONCAT:
    return M_CONCAT;
  case PTC_OP_CONSTANT:
    return o0->dtype == PTC_DTYPE_I64 ? M_STAGE : M_FILL;
  case PTC_OP_TRANSPOSE:
  case PTC_OP_BROADCAST_TO:
    return o0->rank <= 8 && esize_index(ptc_dtype_size(o0->dtype)) >= 0 ? M_GATHER : M_STAGE;
  case PTC_OP_EMBEDDING: {
    const ptc_value *tab = &f->values[op->in[1]];
    ptc_dtype it = f->values[op->in[0]].type.dtype;
    int es = ptc_dtype_size(tab->type.dtype);
    if ((it != PTC_DTYPE_I32 && it != PTC_DTYPE_I64) || (es != 4 && es != 2))
      return M_STAGE;
    return M_EMB;
  }
  case PTC_OP_EMBEDDING_GRAD: {
    const ptc_value *out = &f->values[op->out[0]];
    ptc_dtype it = f->values[op->in[1]].type.dtype, gt = f->values[op->in[0]].type.dtype;
    if ((it != PTC_DTYPE_I32 && it != PTC_DTYPE_I64) || gt != out->type.dtype)
      return M_STAGE;
    if (out->type.dtype != PTC_DTYPE_F32) {
      int64_t need = (ptc_type_numel(&out->type) * 4 + 255) / 256 * 256;
      if (need > p->scratch_need) p->scratch_need = need;
    }
    return M_EMBG;
  }
  default:
    return M_STAGE;
  }
}

ptrt_cuda_prog *ptrt_cuda_prog_create(ptrt_cuda *c, const ptrt_env *env, ptc_func *f,
                                      bool groups) {
  ptc_ctx *ctx = env->ctx;
  ptrt_cuda_prog *p = ptc_xcalloc(1, sizeof *p);
  p->c = c;
  p->env = env;
  p->f = f;
  p->nops = f->nops;
  size_t no = (size_t)f->nops + 1;
  p->how = ptc_xcalloc(no, 1);
  p->mm = ptc_xcalloc(no, sizeof *p->mm);
  p->at = ptc_xcalloc(no, sizeof *p->at);
  p->kern = ptc_xcalloc(no, sizeof *p->kern);
  p->sigs = ptc_xcalloc(no, sizeof *p->sigs);
  p->has_sig = ptc_xcalloc(no, sizeof *p->has_sig);
  p->status_host = ptc_xcalloc(no, sizeof *p->status_host);
  p->solo = ptc_xcalloc(no, sizeof *p->solo);
  p->last_use = ptc_func_last_use(f);
  int err = 0;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    int64_t g = groups ? ptc_op_group(op) : -1;
    if (g >= 0) {
      p->how[i] = M_SKIP;
      if (i > 0 && ptc_op_group(&f->ops[i - 1]) == g) continue;
      const ptrt_cu_kernel *k = find_kernel(c, PTRT_CU_GROUP, f->name, g, -1);
      if (!k || ptc_group_signature(f, i, &p->sigs[i]) != 0) {
        ptrt_error(ctx, "group %lld of @%s (%s) has no kernel in the plan; " RECOMPILE_HINT,
                   (long long)g, f->name, op->loc.file ? op->loc.file : "?", c->target);
        err = 1;
        continue;
      }
      p->has_sig[i] = true;
      if (k->nin != p->sigs[i].nin || k->nout != p->sigs[i].nout) {
        ptrt_error(ctx, "group %lld of @%s: its kernel %s takes %d inputs and %d outputs, the "
                   "IR's group %d and %d: the plan's files disagree; " RECOMPILE_HINT,
                   (long long)g, f->name, k->name, k->nin, k->nout, p->sigs[i].nin,
                   p->sigs[i].nout, c->target);
        err = 1;
      }
      p->kern[i] = k;
      p->gpu_ops++;
      continue;
    }
    p->how[i] = (uint8_t)choose(p, i, &err);
    if (p->how[i] == M_STAGE) p->staged_ops++;
    else if (p->how[i] != M_SKIP && p->how[i] != M_COPY) p->gpu_ops++;
  }
  void *st = err ? NULL : ptrt_cuda_alloc(c, ctx, (int64_t)no * 4, "the kernels' status words");
  if (!st) {
    ptrt_cuda_prog_destroy(p);
    return NULL;
  }
  p->status = DP(st);
  c->drv.MemsetD32Async(p->status, 0, no, c->stream);
  if (c->tune_buf) { /* the timing buffers are not needed while the step runs */
    c->drv.StreamSynchronize(c->stream);
    c->drv.MemFree(c->tune_buf);
    c->tune_buf = 0;
    c->tune_bytes = 0;
  }
  if (p->scratch_need > c->scratch_bytes) {
    if (c->scratch) {
      c->drv.StreamSynchronize(c->stream);
      c->drv.MemFree(c->scratch);
      c->allocated -= c->scratch_bytes;
      c->scratch = 0;
    }
    void *s = ptrt_cuda_alloc(c, ctx, p->scratch_need, "f32 scratch for 16-bit sums");
    if (!s) {
      ptrt_cuda_prog_destroy(p);
      return NULL;
    }
    c->scratch = DP(s);
    c->scratch_bytes = p->scratch_need;
  }
  return p;
}

void ptrt_cuda_prog_destroy(ptrt_cuda_prog *p) {
  if (!p) return;
  for (int32_t i = 0; i < p->nops; i++) {
    mm_fini(p->c, &p->mm[i]);
    attn_fini(p->c, &p->at[i]);
    if (p->has_sig[i] || p->solo[i]) ptc_group_sig_fini(&p->sigs[i]);
  }
  if (p->status) ptrt_cuda_free(p->c, HP(p->status));
  free(p->how);
  free(p->mm);
  free(p->at);
  free(p->kern);
  free(p->sigs);
  free(p->has_sig);
  free(p->solo);
  free(p->last_use);
  free(p->status_host);
  free(p->ptr);
  free(p->args);
  free(p);
}

bool ptrt_cuda_prog_staged(const ptrt_cuda_prog *p, int32_t i) { return p->how[i] == M_STAGE; }

const ptc_group_sig *ptrt_cuda_prog_group_at(const ptrt_cuda_prog *p, int32_t i) {
  return p->has_sig[i] ? &p->sigs[i] : NULL;
}

void ptrt_cuda_prog_counts(const ptrt_cuda_prog *p, int32_t *gpu_ops, int32_t *staged_ops) {
  *gpu_ops = p->gpu_ops;
  *staged_ops = p->staged_ops;
}

/* ---- launching ----------------------------------------------------------- */

static int launch(ptrt_cuda_prog *p, int32_t i, CUfunction fn, const unsigned grid[3],
                  const unsigned block[3], unsigned shared, void **args) {
  ptrt_cuda *c = p->c;
  CUresult r = c->drv.LaunchKernel(fn, grid[0], grid[1], grid[2], block[0], block[1], block[2],
                                   shared, c->stream, args, NULL);
  if (r == 0) return 0;
  const ptc_op *op = &p->f->ops[i];
  ptc_error(p->env->ctx, op->loc, "%s: a kernel launch failed on %s (device %d): %s",
            ptc_opinfo_get(op->code)->name, c->device, c->ordinal, ptrt__cu_err(&c->drv, r));
  return -1;
}

/* a grid-stride kernel over n items: blocks of 256, at most 32 per SM */
static void grid_for(const ptrt_cuda *c, int64_t n, unsigned grid[3], unsigned block[3]) {
  int64_t b = (n + 255) / 256, cap = (int64_t)(c->sm_count > 0 ? c->sm_count : 80) * 32;
  grid[0] = (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
  grid[1] = grid[2] = 1;
  block[0] = 256;
  block[1] = block[2] = 1;
}

static int fill(ptrt_cuda_prog *p, int32_t i, void *d, ptc_dtype t, int64_t n, double value) {
  ptrt_cuda *c = p->c;
  CUresult r = 0;
  int es = ptc_dtype_size(t);
  if (n <= 0) return 0;
  if (t == PTC_DTYPE_F32) {
    float v = (float)value;
    uint32_t bits;
    memcpy(&bits, &v, 4);
    r = c->drv.MemsetD32Async(DP(d), bits, (size_t)n, c->stream);
  } else if (t == PTC_DTYPE_I32) {
    int32_t v = (int32_t)value;
    r = c->drv.MemsetD32Async(DP(d), (uint32_t)v, (size_t)n, c->stream);
  } else if (t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16) {
    r = c->drv.MemsetD16Async(DP(d), ptrt_half_round(t, (float)value), (size_t)n, c->stream);
  } else if (value == 0) {
    r = c->drv.MemsetD8Async(DP(d), 0, (size_t)(n * es), c->stream);
  } else {
    PTC_UNREACHABLE();
  }
  if (r == 0) return 0;
  const ptc_op *op = &p->f->ops[i];
  ptc_error(p->env->ctx, op->loc, "%s: filling a buffer failed on %s: %s",
            ptc_opinfo_get(op->code)->name, c->device, ptrt__cu_err(&c->drv, r));
  return -1;
}

static int copy2d(ptrt_cuda_prog *p, int32_t i, void *dst, int64_t dpitch, const void *src,
                  int64_t spitch, int64_t width, int64_t height) {
  if (width <= 0 || height <= 0) return 0;
  ptrt_cuda *c = p->c;
  cu_memcpy2d m;
  memset(&m, 0, sizeof m);
  m.srcMemoryType = m.dstMemoryType = CU_MEMORYTYPE_DEVICE;
  m.srcDevice = DP(src);
  m.dstDevice = DP(dst);
  m.srcPitch = (size_t)spitch;
  m.dstPitch = (size_t)dpitch;
  m.WidthInBytes = (size_t)width;
  m.Height = (size_t)height;
  CUresult r = height == 1 || (spitch == width && dpitch == width)
                   ? c->drv.MemcpyDtoDAsync(DP(dst), DP(src), (size_t)(width * height), c->stream)
                   : c->drv.Memcpy2DAsync(&m, c->stream);
  if (r == 0) return 0;
  const ptc_op *op = &p->f->ops[i];
  ptc_error(p->env->ctx, op->loc, "%s: a copy on the GPU failed on %s: %s",
            ptc_opinfo_get(op->code)->name, c->device, ptrt__cu_err(&c->drv, r));
  return -1;
}

static void split_axis(const ptc_type *t, int64_t axis, int64_t *outer, int64_t *len,
                       int64_t *inner) {
  int64_t o = 1, in = 1;
  for (int32_t d = 0; d < axis; d++) o *= t->dims[d];
  for (int32_t d = (int32_t)axis + 1; d < t->rank; d++) in *= t->dims[d];
  *outer = o;
  *len = t->dims[axis];
  *inner = in;
}

typedef struct rt_view {
  long long rank, n;
  long long dims[8], st[8];
} rt_view;

static int run_gather(ptrt_cuda_prog *p, int32_t i, const void *x, void *y) {
  const ptc_op *op = &p->f->ops[i];
  const ptc_type *it = &p->f->values[op->in[0]].type, *ot = &p->f->values[op->out[0]].type;
  rt_view v;
  memset(&v, 0, sizeof v);
  v.rank = ot->rank;
  v.n = ptc_type_numel(ot);
  int64_t ist[PTC_MAX_RANK], s = 1;
  for (int32_t d = it->rank - 1; d >= 0; d--) {
    ist[d] = s;
    s *= it->dims[d];
  }
  const ptc_attr *perm = op->code == PTC_OP_TRANSPOSE ? ptc_op_attr(op, "perm") : NULL;
  for (int32_t d = 0; d < ot->rank; d++) {
    v.dims[d] = ot->dims[d];
    if (perm) {
      v.st[d] = ist[perm->u.ints.v[d]];
    } else { /* broadcast_to: right-aligned, size-1 dims repeat */
      int32_t id = d - (ot->rank - it->rank);
      v.st[d] = id < 0 || it->dims[id] == 1 ? 0 : ist[id];
    }
  }
  if (v.rank == 0) {
    v.rank = 1;
    v.dims[0] = 1;
  }
  if (v.n == 0) return 0;
  unsigned grid[3], block[3];
  grid_for(p->c, v.n, grid, block);
  CUdeviceptr xp = DP(x), yp = DP(y);
  void *args[] = {&xp, &yp, &v};
  return launch(p, i, p->c->fixed.gather[esize_index(ptc_dtype_size(ot->dtype))], grid, block, 0,
                args);
}

static int run_cvt(ptrt_cuda_prog *p, int32_t i, CUdeviceptr from, void *to, ptc_dtype t,
                   int64_t n) {
  unsigned grid[3], block[3];
  grid_for(p->c, n, grid, block);
  CUdeviceptr yp = DP(to);
  long long nn = n;
  void *args[] = {&from, &yp, &nn};
  return launch(p, i, p->c->fixed.cvt[t == PTC_DTYPE_F16], grid, block, 0, args);
}

static int run_attention(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out) {
  ptrt_cuda *c = p->c;
  const ptc_op *op = &p->f->ops[i];
  const ptrt_cu_kernel *k = p->kern[i];
  CUdeviceptr ptr[12];
  void *args[20];
  int n = 0;
  for (int32_t a = 0; a < op->nin; a++) ptr[n++] = DP(in[a]);
  int64_t ws = 0;
  for (int32_t r = 0; r < op->nout; r++) {
    const ptc_type *t = &p->f->values[op->out[r]].type;
    int64_t cnt = ptc_type_numel(t);
    if (r < 8 && k->ws32[r]) {
      ptr[n] = c->scratch + (CUdeviceptr)ws;
      ws += (cnt * 4 + 255) / 256 * 256;
      if (c->drv.MemsetD32Async(ptr[n], 0, (size_t)cnt, c->stream) != 0) return -1;
    } else {
      ptr[n] = DP(out[r]);
      if (r < 8 && k->comb[r] == 1 && fill(p, i, out[r], t->dtype, cnt, 0) != 0) return -1;
    }
    n++;
  }
  for (int a = 0; a < n; a++) args[a] = &ptr[a];
  int Tq = k->Tq, H = k->H, S = k->S, G = k->G, causal = k->causal;
  float scale = k->scale;
  args[n++] = &Tq;
  args[n++] = &H;
  args[n++] = &S;
  args[n++] = &G;
  args[n++] = &causal;
  args[n++] = &scale;
  if (launch(p, i, k->fn, k->grid, k->block, k->shared, args) != 0) return -1;
  for (int32_t r = 0; r < op->nout && r < 8; r++) {
    if (!k->ws32[r]) continue;
    const ptc_type *t = &p->f->values[op->out[r]].type;
    if (run_cvt(p, i, ptr[op->nin + r], out[r], t->dtype, ptc_type_numel(t)) != 0) return -1;
  }
  return 0;
}

static int lt_fail(ptrt_cuda_prog *p, int32_t i, int s) {
  ptc_error(p->env->ctx, p->f->ops[i].loc, "%s: cublasLtMatmul failed on %s: %s",
            ptc_opinfo_get(p->f->ops[i].code)->name, p->c->device, p->c->lt.GetStatusString(s));
  return -1;
}

/* a row kernel of the attention path over `rows` rows */
static int attn_rows(ptrt_cuda_prog *p, int32_t i, CUfunction fn, long long rows, void **args) {
  unsigned grid[3] = {(unsigned)(rows < (1 << 20) ? rows : (1 << 20)), 1, 1}, block[3] = {256, 1, 1};
  return launch(p, i, fn, grid, block, 0, args);
}

static int run_attn_mm(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out) {
  ptrt_cuda *c = p->c;
  const attn_plan *a = &p->at[i];
  const int64_t T = a->T, S = a->S, H = a->H, G = a->G, D = a->D, E = a->E, es = a->es;
  const int64_t r = H / G;
  const bool shared = G != H;
  const int64_t nh = shared ? H : 1;
  const int d = a->dt == PTC_DTYPE_BF16 ? 1 : a->dt == PTC_DTYPE_F16 ? 2 : 0;
  char *sb = HP(c->scratch + (CUdeviceptr)a->s_off), *pb = HP(c->scratch + (CUdeviceptr)a->p_off);
  char *dpb = HP(c->scratch + (CUdeviceptr)a->dp_off);
  int q0 = a->bwd ? 1 : 0;
  long long rows = H * T;
  int Tq = (int)T, Si = (int)S, causal = a->causal;
  float scale = a->scale;
  for (int64_t b = 0; b < a->B; b++) {
    const char *qb = (const char *)in[q0] + b * T * H * D * es;
    const char *kb = (const char *)in[q0 + 1] + b * S * G * D * es;
    const char *vb = (const char *)in[q0 + 2] + b * S * G * E * es;
    int s;
    for (int64_t h = 0; h < nh; h++)
      if ((s = gemm_run(c, &a->qk, qb + h * D * es, kb + (h / r) * D * es, sb + h * T * S * 4, 0)))
        return lt_fail(p, i, s);
    CUdeviceptr x = DP(sb), y = DP(pb);
    void *sargs[] = {&x, &y, &rows, &Tq, &Si, &causal, &scale};
    if (attn_rows(p, i, c->fixed.softmax_rows[d], rows, sargs) != 0) return -1;
    if (!a->bwd) {
      char *ob = (char *)out[0] + b * T * H * E * es;
      for (int64_t h = 0; h < nh; h++)
        if ((s = gemm_run(c, &a->pv, pb + h * T * S * es, vb + (h / r) * E * es, ob + h * E * es, 0)))
          return lt_fail(p, i, s);
      continue;
    }
    const char *gb = (const char *)in[0] + b * T * H * E * es;
    char *dqb = (char *)out[0] + b * T * H * D * es, *dkb = (char *)out[1] + b * S * G * D * es;
    char *dvb = (char *)out[2] + b * S * G * E * es;
    for (int64_t h = 0; h < nh; h++)
      if ((s = gemm_run(c, &a->dp, gb + h * E * es, vb + (h / r) * E * es, dpb + h * T * S * 4, 0)))
        return lt_fail(p, i, s);
    CUdeviceptr pp = DP(pb), dpp = DP(dpb), ds = DP(sb); /* dS over S's scratch */
    void *dargs[] = {&pp, &dpp, &ds, &rows, &Tq, &Si, &causal, &scale};
    if (attn_rows(p, i, c->fixed.attn_ds[d], rows, dargs) != 0) return -1;
    for (int64_t h = 0; h < nh; h++) {
      float beta = shared && h % r ? 1.0f : 0.0f; /* heads of one kv head add up */
      if ((s = gemm_run(c, &a->dv, pb + h * T * S * es, gb + h * E * es, dvb + (h / r) * E * es,
                        beta)) ||
          (s = gemm_run(c, &a->dq, sb + h * T * S * es, kb + (h / r) * D * es, dqb + h * D * es,
                        0)) ||
          (s = gemm_run(c, &a->dk, sb + h * T * S * es, qb + h * D * es, dkb + (h / r) * D * es,
                        beta)))
        return lt_fail(p, i, s);
    }
  }
  return 0;
}

static int run_matmul(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out) {
  ptrt_cuda *c = p->c;
  mm_plan *m = &p->mm[i];
  const ptc_type *ot = &p->f->values[p->f->ops[i].out[0]].type;
  if (m->zero) return fill(p, i, out[0], ot->dtype, ptc_type_numel(ot), 0);
  int s = gemm_run(c, &m->g, in[0], in[1], out[0], 0);
  return s == 0 ? 0 : lt_fail(p, i, s);
}

static int run_solo(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out);

int ptrt_cuda_prog_op(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out) {
  ptrt_cuda *c = p->c;
  const ptc_func *f = p->f;
  const ptc_op *op = &f->ops[i];
  const ptc_type *ot = op->nout ? &f->values[op->out[0]].type : NULL;
  int64_t es = ot ? ptc_dtype_size(ot->dtype) : 0;
  switch ((method)p->how[i]) {
  case M_SKIP:
  case M_STAGE:
    PTC_UNREACHABLE();
  case M_COPY:
    return ptrt_cuda_copy(c, p->env->ctx, out[0], in[0], ptc_type_bytes(ot));
  case M_MATMUL:
    return run_matmul(p, i, in, out);
  case M_ATTN:
    return run_attention(p, i, in, out);
  case M_ATTN_MM:
    return run_attn_mm(p, i, in, out);
  case M_FILL:
    return fill(p, i, out[0], ot->dtype, ptc_type_numel(ot), ptc_op_attr_float(op, "value", 0));
  case M_SLICE:   /* a window of each input row */
  case M_PAD: {    /* each input row into a window of zeros */
    const ptc_type *it = &f->values[op->in[0]].type;
    bool pad = p->how[i] == M_PAD;
    int64_t axis = ptc_op_attr_int(op, "axis", 0), at = ptc_op_attr_int(op, pad ? "before" : "start", 0);
    int64_t outer, len, inner;
    split_axis(it, axis, &outer, &len, &inner);
    int64_t olen = ot->dims[axis], row = inner * es;
    if (!pad)
      return copy2d(p, i, out[0], olen * row, (const char *)in[0] + at * row, len * row,
                    olen * row, outer);
    if (fill(p, i, out[0], ot->dtype, ptc_type_numel(ot), 0) != 0) return -1;
    return copy2d(p, i, (char *)out[0] + at * row, olen * row, in[0], len * row, len * row, outer);
  }
  case M_CONCAT: {
    int64_t axis = ptc_op_attr_int(op, "axis", 0);
    int64_t outer, olen, inner, off = 0;
    split_axis(ot, axis, &outer, &olen, &inner);
    for (int32_t a = 0; a < op->nin; a++) {
      int64_t len = f->values[op->in[a]].type.dims[axis];
      if (copy2d(p, i, (char *)out[0] + off * inner * es, olen * inner * es, in[a],
                 len * inner * es, len * inner * es, outer) != 0)
        return -1;
      off += len;
    }
    return 0;
  }
  case M_GATHER:
    return run_gather(p, i, in[0], out[0]);
  case M_SOLO:
    return run_solo(p, i, in, out);
  case M_EMB: {
    const ptc_type *idt = &f->values[op->in[0]].type, *tt = &f->values[op->in[1]].type;
    long long n = ptc_type_numel(idt), w = tt->dims[1], rows = tt->dims[0];
    CUdeviceptr ids = DP(in[0]), tab = DP(in[1]), o = DP(out[0]), st = p->status + 4 * (CUdeviceptr)i;
    void *args[] = {&ids, &tab, &o, &n, &w, &rows, &st};
    unsigned grid[3], block[3];
    grid_for(c, n * w, grid, block);
    CUfunction fn = c->fixed.emb[ptc_dtype_size(tt->dtype) == 2][idt->dtype == PTC_DTYPE_I64];
    return n * w ? launch(p, i, fn, grid, block, 0, args) : 0;
  }
  case M_EMBG: {
    const ptc_type *gt = &f->values[op->in[0]].type, *idt = &f->values[op->in[1]].type;
    long long n = ptc_type_numel(idt), w = ot->dims[1], rows = ot->dims[0];
    bool wide = ot->dtype != PTC_DTYPE_F32;
    CUdeviceptr acc = wide ? c->scratch : DP(out[0]);
    if (c->drv.MemsetD32Async(acc, 0, (size_t)(rows * w), c->stream) != 0) return -1;
    CUdeviceptr g = DP(in[0]), ids = DP(in[1]), st = p->status + 4 * (CUdeviceptr)i;
    void *args[] = {&g, &ids, &acc, &n, &w, &rows, &st};
    unsigned grid[3], block[3];
    grid_for(c, n * w, grid, block);
    int d = gt->dtype == PTC_DTYPE_BF16 ? 1 : gt->dtype == PTC_DTYPE_F16 ? 2 : 0;
    if (n * w && launch(p, i, c->fixed.emb_grad[d][idt->dtype == PTC_DTYPE_I64], grid, block, 0,
                        args) != 0)
      return -1;
    return wide ? run_cvt(p, i, acc, out[0], ot->dtype, rows * w) : 0;
  }
  }
  return 0;
}

/* The kernel k of group (or lone op) sig over bufs (its inputs then
 * outputs): accumulated outputs are filled first, 16-bit sums go through
 * f32 scratch and are rounded into their buffers after. */
static int launch_group(ptrt_cuda_prog *p, const ptrt_cu_kernel *k, const ptc_group_sig *sig,
                        void *const *bufs) {
  ptrt_cuda *c = p->c;
  int32_t n = sig->nin + sig->nout;
  if (n + 1 > p->cap_args) {
    p->cap_args = n + 1;
    free(p->ptr);
    free(p->args);
    p->ptr = ptc_xmalloc((size_t)p->cap_args * sizeof *p->ptr);
    p->args = ptc_xmalloc((size_t)p->cap_args * sizeof *p->args);
  }
  CUdeviceptr *ptr = p->ptr;
  void **args = p->args;
  for (int32_t a = 0; a < n; a++) ptr[a] = DP(bufs[a]);
  int64_t ws = 0;
  for (int32_t o = 0; o < sig->nout; o++) {
    if (sig->combine[o] == PTC_GROUP_STORE) continue;
    const ptc_type *t = &p->f->values[sig->out[o]].type;
    double v = sig->combine[o] == PTC_GROUP_MAX ? -INFINITY : 0.0;
    void *dst = bufs[sig->nin + o];
    ptc_dtype dt = t->dtype;
    if (o < 8 && k->ws32[o]) {
      ptr[sig->nin + o] = c->scratch + (CUdeviceptr)ws;
      ws += (ptc_type_numel(t) * 4 + 255) / 256 * 256;
      dst = HP(ptr[sig->nin + o]);
      dt = PTC_DTYPE_F32;
    }
    if (fill(p, sig->first, dst, dt, ptc_type_numel(t), v) != 0) return -1;
  }
  ptr[n] = p->status + 4 * (CUdeviceptr)sig->first;
  for (int32_t a = 0; a <= n; a++) args[a] = &ptr[a];
  if (launch(p, sig->first, k->fn, k->grid, k->block, k->shared, args) != 0) return -1;
  for (int32_t o = 0; o < sig->nout && o < 8; o++) {
    if (!k->ws32[o]) continue;
    const ptc_type *t = &p->f->values[sig->out[o]].type;
    if (run_cvt(p, sig->first, ptr[sig->nin + o], bufs[sig->nin + o], t->dtype,
                ptc_type_numel(t)) != 0)
      return -1;
  }
  return 0;
}

int ptrt_cuda_prog_group(ptrt_cuda_prog *p, const ptc_group_sig *sig, void *const *bufs) {
  const ptrt_cu_kernel *k = p->kern[sig->first];
  PTC_ASSERT(k);
  return launch_group(p, k, sig, bufs);
}

/* op i alone as its kernel: its operands in the order of its signature */
static int run_solo(ptrt_cuda_prog *p, int32_t i, void *const *in, void *const *out) {
  const ptc_op *op = &p->f->ops[i];
  const ptc_group_sig *sig = &p->sigs[i];
  void *bufs[16];
  PTC_ASSERT(sig->nin + sig->nout <= 16);
  for (int32_t j = 0; j < sig->nin; j++) {
    bufs[j] = NULL;
    for (int32_t a = 0; a < op->nin && !bufs[j]; a++)
      if (op->in[a] == sig->in[j]) bufs[j] = in[a];
    PTC_ASSERT(bufs[j]);
  }
  for (int32_t o = 0; o < sig->nout; o++) {
    bufs[sig->nin + o] = NULL;
    for (int32_t r = 0; r < op->nout; r++)
      if (op->out[r] == sig->out[o]) bufs[sig->nin + o] = out[r];
    PTC_ASSERT(bufs[sig->nin + o]);
  }
  return launch_group(p, p->kern[i], sig, bufs);
}

int ptrt_cuda_prog_finish(ptrt_cuda_prog *p) {
  ptrt_cuda *c = p->c;
  ptc_ctx *ctx = p->env->ctx;
  if (ptrt_cuda_download(c, ctx, p->status_host, HP(p->status), (int64_t)p->nops * 4) != 0)
    return -1;
  for (int32_t i = 0; i < p->nops; i++) {
    if (!p->status_host[i]) continue;
    c->drv.MemsetD32Async(p->status, 0, (size_t)p->nops, c->stream);
    const ptc_op *op = &p->f->ops[i];
    ptc_error(ctx, op->loc, "%s in @%s: an index out of range (a token id or target outside "
              "the table or the classes); the CPU plan of the same model names the position",
              ptc_opinfo_get(op->code)->name, p->f->name);
    return -1;
  }
  return 0;
}
