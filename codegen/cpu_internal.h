/* cpu_internal.h -- what the files of the LLVM CPU code generator share:
 * the IR-building context, small builders that work on a scalar or a
 * vector alike, the branch-free transcendentals (cpu_math.c) and the group
 * emitter (cpu_emit.c).  Nothing outside codegen/cpu*.c includes it.
 *
 * Lanes: every helper takes `lanes` (1 or the target's vector width W) and
 * builds values of type float / <W x float> (or i32, i64) accordingly, so
 * one emitter writes both the vector loop body and its scalar tail. */
#ifndef PTC_CODEGEN_CPU_INTERNAL_H
#define PTC_CODEGEN_CPU_INTERNAL_H

#include <llvm-c/Core.h>

#include "ir/ir.h"

typedef struct ptc_cg {
  LLVMContextRef C;
  LLVMModuleRef M;
  LLVMBuilderRef B;
  int W;               /* f32 lanes of the vector loops */
  const char *cpu;     /* function attributes "target-cpu" / "target-features" */
  const char *features;
  LLVMValueRef alloca_at; /* the entry block's first instruction (allocas go before it) */
} ptc_cg;

/* ---- cpu_math.c: building blocks ---------------------------------------- */

LLVMTypeRef ptc__cg_type(ptc_cg *g, ptc_dtype t, int lanes); /* f32, i32, i64 */
LLVMTypeRef ptc__cg_f32(ptc_cg *g, int lanes);
LLVMTypeRef ptc__cg_i32(ptc_cg *g, int lanes);
LLVMTypeRef ptc__cg_i64(ptc_cg *g, int lanes);
/* Constants splatted over `lanes`. */
LLVMValueRef ptc__cg_cf(ptc_cg *g, int lanes, double v);
LLVMValueRef ptc__cg_ci32(ptc_cg *g, int lanes, int64_t v);
LLVMValueRef ptc__cg_ci64(ptc_cg *g, int lanes, int64_t v);
LLVMValueRef ptc__cg_const(ptc_cg *g, ptc_dtype t, int lanes, double v);
/* A scalar broadcast to `lanes` (the scalar itself when lanes == 1). */
LLVMValueRef ptc__cg_splat(ptc_cg *g, LLVMValueRef s, int lanes);
/* Lanes of a value (1 for a scalar). */
int ptc__cg_lanes(LLVMValueRef v);
/* Calls an overloaded intrinsic ("llvm.sqrt") at the type of args[0]. */
LLVMValueRef ptc__cg_intrinsic(ptc_cg *g, const char *name, LLVMValueRef *args, int n);
/* a * b + c, fused where the target has FMA (llvm.fmuladd). */
LLVMValueRef ptc__cg_fma(ptc_cg *g, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c);
/* x > y ? x : y, and the same for the ordered <, with ir/eval.c's NaN
 * behaviour (a NaN x gives y). */
LLVMValueRef ptc__cg_fmax(ptc_cg *g, LLVMValueRef x, LLVMValueRef y);
/* An alloca in the entry block (so mem2reg promotes it). */
LLVMValueRef ptc__cg_alloca(ptc_cg *g, LLVMTypeRef t, const char *name);
/* Sum / max of a vector's lanes (the value itself for a scalar). */
LLVMValueRef ptc__cg_hsum(ptc_cg *g, LLVMValueRef v);
LLVMValueRef ptc__cg_hmax(ptc_cg *g, LLVMValueRef v);

/* ---- cpu_math.c: transcendentals ----------------------------------------
 * Branch-free polynomial approximations (Cephes / Eigen style), about
 * 1-2 ulp in f32, with IEEE special cases: exp over/underflows to inf / 0
 * through the subnormals, log of 0 is -inf and of a negative NaN, NaN
 * propagates.  Built from plain IR so the loops stay vector code. */
LLVMValueRef ptc__cg_exp(ptc_cg *g, LLVMValueRef x);
LLVMValueRef ptc__cg_log(ptc_cg *g, LLVMValueRef x);
LLVMValueRef ptc__cg_tanh(ptc_cg *g, LLVMValueRef x);

/* ---- cpu_emit.c ------------------------------------------------------------ */

/* Adds the kernel `ptc_k<id>` of one group to g->M and sets *fn to it.
 * Returns 0 (the group analysis admits only ops the emitter knows). */
int ptc__cg_emit_group(ptc_cg *g, ptc_func *f, const ptc_group_sig *sig, LLVMValueRef *fn);

#endif /* PTC_CODEGEN_CPU_INTERNAL_H */
