/* cpu_math.c -- IR building blocks for the CPU kernels, and exp, log and
 * tanh as branch-free polynomials.
 *
 * Why our own transcendentals: a call to libm's expf inside a loop stops
 * LLVM from vectorizing it (Debian's LLVM has no vector math library to
 * map it to), and exp sits in every softmax, GELU and cross-entropy.  So,
 * as XLA does, the kernels carry their own: range reduction and a minimax
 * polynomial from Cephes (exp, log) and the Cephes tanh, written once over
 * IR values that are either a float or a vector of floats.  Special cases
 * are handled with selects, not branches, so a vector of mixed inputs
 * (a NaN next to a subnormal next to inf) gets each lane right.
 * tests/unit/test_cpu_codegen.c checks them against libm in ulps over a
 * sweep of every binade, and at the extremes.
 */
#include <math.h>
#include <string.h>

#include "codegen/cpu_internal.h"

/* ---- types and constants --------------------------------------------- */

static LLVMTypeRef vec(LLVMTypeRef t, int lanes) {
  return lanes == 1 ? t : LLVMVectorType(t, (unsigned)lanes);
}

LLVMTypeRef ptc__cg_f32(ptc_cg *g, int lanes) { return vec(LLVMFloatTypeInContext(g->C), lanes); }
LLVMTypeRef ptc__cg_i32(ptc_cg *g, int lanes) { return vec(LLVMInt32TypeInContext(g->C), lanes); }
LLVMTypeRef ptc__cg_i64(ptc_cg *g, int lanes) { return vec(LLVMInt64TypeInContext(g->C), lanes); }

LLVMTypeRef ptc__cg_type(ptc_cg *g, ptc_dtype t, int lanes) {
  switch (t) {
  case PTC_DTYPE_F32: return ptc__cg_f32(g, lanes);
  case PTC_DTYPE_I32: return ptc__cg_i32(g, lanes);
  case PTC_DTYPE_I64: return ptc__cg_i64(g, lanes);
  default: PTC_UNREACHABLE(); /* the group analysis admits no other dtype */
  }
}

static LLVMValueRef splat_const(LLVMValueRef c, int lanes) {
  if (lanes == 1) return c;
  LLVMValueRef v[64];
  PTC_ASSERT(lanes <= 64);
  for (int i = 0; i < lanes; i++) v[i] = c;
  return LLVMConstVector(v, (unsigned)lanes);
}

LLVMValueRef ptc__cg_cf(ptc_cg *g, int lanes, double v) {
  return splat_const(LLVMConstReal(LLVMFloatTypeInContext(g->C), (double)(float)v), lanes);
}
LLVMValueRef ptc__cg_ci32(ptc_cg *g, int lanes, int64_t v) {
  return splat_const(LLVMConstInt(LLVMInt32TypeInContext(g->C), (unsigned long long)v, 1),
                     lanes);
}
LLVMValueRef ptc__cg_ci64(ptc_cg *g, int lanes, int64_t v) {
  return splat_const(LLVMConstInt(LLVMInt64TypeInContext(g->C), (unsigned long long)v, 1),
                     lanes);
}

LLVMValueRef ptc__cg_const(ptc_cg *g, ptc_dtype t, int lanes, double v) {
  switch (t) {
  case PTC_DTYPE_F32: return ptc__cg_cf(g, lanes, v);
  case PTC_DTYPE_I32: return ptc__cg_ci32(g, lanes, (int64_t)v);
  case PTC_DTYPE_I64: return ptc__cg_ci64(g, lanes, (int64_t)v);
  default: PTC_UNREACHABLE();
  }
}

int ptc__cg_lanes(LLVMValueRef v) {
  LLVMTypeRef t = LLVMTypeOf(v);
  return LLVMGetTypeKind(t) == LLVMVectorTypeKind ? (int)LLVMGetVectorSize(t) : 1;
}

LLVMValueRef ptc__cg_splat(ptc_cg *g, LLVMValueRef s, int lanes) {
  if (lanes == 1) return s;
  PTC_ASSERT(ptc__cg_lanes(s) == 1);
  LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(s), (unsigned)lanes);
  LLVMValueRef v = LLVMBuildInsertElement(g->B, LLVMGetUndef(vt), s,
                                          LLVMConstInt(LLVMInt32TypeInContext(g->C), 0, 0), "");
  LLVMValueRef zero = LLVMConstNull(LLVMVectorType(LLVMInt32TypeInContext(g->C), (unsigned)lanes));
  return LLVMBuildShuffleVector(g->B, v, LLVMGetUndef(vt), zero, "splat");
}

LLVMValueRef ptc__cg_intrinsic(ptc_cg *g, const char *name, LLVMValueRef *args, int n) {
  unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
  PTC_ASSERT(id != 0);
  LLVMTypeRef t = LLVMTypeOf(args[0]);
  LLVMValueRef fn = LLVMGetIntrinsicDeclaration(g->M, id, &t, 1);
  LLVMTypeRef fty = LLVMIntrinsicGetType(g->C, id, &t, 1);
  return LLVMBuildCall2(g->B, fty, fn, args, (unsigned)n, "");
}

LLVMValueRef ptc__cg_fma(ptc_cg *g, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
  LLVMValueRef args[3] = {a, b, c};
  return ptc__cg_intrinsic(g, "llvm.fmuladd", args, 3);
}

LLVMValueRef ptc__cg_fmax(ptc_cg *g, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef gt = LLVMBuildFCmp(g->B, LLVMRealOGT, x, y, "");
  return LLVMBuildSelect(g->B, gt, x, y, "");
}

LLVMValueRef ptc__cg_alloca(ptc_cg *g, LLVMTypeRef t, const char *name) {
  LLVMBuilderRef b = LLVMCreateBuilderInContext(g->C);
  LLVMPositionBuilderBefore(b, g->alloca_at);
  LLVMValueRef a = LLVMBuildAlloca(b, t, name);
  LLVMDisposeBuilder(b);
  return a;
}

/* Combines the two halves of v until one lane is left. */
static LLVMValueRef hreduce(ptc_cg *g, LLVMValueRef v, bool max) {
  int n = ptc__cg_lanes(v);
  LLVMTypeRef i32 = LLVMInt32TypeInContext(g->C);
  while (n > 1) {
    int h = n / 2;
    LLVMValueRef lo[32], hi[32];
    for (int i = 0; i < h; i++) {
      lo[i] = LLVMConstInt(i32, (unsigned)i, 0);
      hi[i] = LLVMConstInt(i32, (unsigned)(i + h), 0);
    }
    LLVMValueRef a = LLVMBuildShuffleVector(g->B, v, LLVMGetUndef(LLVMTypeOf(v)),
                                            LLVMConstVector(lo, (unsigned)h), "");
    LLVMValueRef b = LLVMBuildShuffleVector(g->B, v, LLVMGetUndef(LLVMTypeOf(v)),
                                            LLVMConstVector(hi, (unsigned)h), "");
    if (h == 1) {
      a = LLVMBuildExtractElement(g->B, a, LLVMConstInt(i32, 0, 0), "");
      b = LLVMBuildExtractElement(g->B, b, LLVMConstInt(i32, 0, 0), "");
    }
    v = max ? ptc__cg_fmax(g, b, a) : LLVMBuildFAdd(g->B, a, b, "");
    n = h;
  }
  return v;
}

LLVMValueRef ptc__cg_hsum(ptc_cg *g, LLVMValueRef v) { return hreduce(g, v, false); }
LLVMValueRef ptc__cg_hmax(ptc_cg *g, LLVMValueRef v) { return hreduce(g, v, true); }

/* ---- transcendentals ----------------------------------------------------- */

#define CF(v) ptc__cg_cf(g, L, (v))
#define CI(v) ptc__cg_ci32(g, L, (v))
#define FMA(a, b, c) ptc__cg_fma(g, (a), (b), (c))
#define MUL(a, b) LLVMBuildFMul(g->B, (a), (b), "")
#define ADD(a, b) LLVMBuildFAdd(g->B, (a), (b), "")
#define SUB(a, b) LLVMBuildFSub(g->B, (a), (b), "")

static LLVMValueRef intr2(ptc_cg *g, const char *name, LLVMValueRef a, LLVMValueRef b) {
  LLVMValueRef args[2] = {a, b};
  return ptc__cg_intrinsic(g, name, args, 2);
}

static LLVMValueRef isnan_(ptc_cg *g, LLVMValueRef x) {
  return LLVMBuildFCmp(g->B, LLVMRealUNO, x, x, "isnan");
}

/* exp(x) = 2^n * e^r, n = rint(x / ln 2), |r| <= ln2 / 2 (Cody-Waite with
 * ln 2 in two parts), e^r by Cephes' degree-6 polynomial.  2^n is applied
 * as two factors 2^(n/2) * 2^(n - n/2), each a normal float for every n
 * in [-150, 128], so results overflow to inf and underflow through the
 * subnormals with a single rounding. */
LLVMValueRef ptc__cg_exp(ptc_cg *g, LLVMValueRef x) {
  int L = ptc__cg_lanes(x);
  /* clamp with compare-and-select (plain max/min instructions; a NaN goes
   * through as garbage here and is restored at the end) */
  LLVMValueRef xc = LLVMBuildSelect(g->B, LLVMBuildFCmp(g->B, LLVMRealOLT, x, CF(-104.0), ""),
                                    CF(-104.0), x, "");
  xc = LLVMBuildSelect(g->B, LLVMBuildFCmp(g->B, LLVMRealOGT, xc, CF(89.0), ""), CF(89.0), xc, "");
  /* n = rint(x / ln 2) by adding 1.5 * 2^23: n lands in the mantissa's low
   * bits, read back as an integer; kf - 1.5 * 2^23 is n as a float */
  LLVMValueRef kf = FMA(xc, CF(1.44269504088896341), CF(12582912.0));
  LLVMTypeRef it = ptc__cg_i32(g, L);
  LLVMValueRef ni = LLVMBuildSub(g->B, LLVMBuildBitCast(g->B, kf, it, ""), CI(0x4B400000), "");
  LLVMValueRef n = SUB(kf, CF(12582912.0));
  LLVMValueRef r = FMA(n, CF(-0.693359375), xc);
  r = FMA(n, CF(2.12194440e-4), r);
  LLVMValueRef p = CF(1.9875691500e-4);
  p = FMA(p, r, CF(1.3981999507e-3));
  p = FMA(p, r, CF(8.3334519073e-3));
  p = FMA(p, r, CF(4.1665795894e-2));
  p = FMA(p, r, CF(1.6666665459e-1));
  p = FMA(p, r, CF(5.0000001201e-1));
  LLVMValueRef y = FMA(p, MUL(r, r), r);
  y = ADD(y, CF(1.0));
  LLVMValueRef n1 = LLVMBuildAShr(g->B, ni, CI(1), "");
  LLVMValueRef n2 = LLVMBuildSub(g->B, ni, n1, "");
  LLVMTypeRef ft = ptc__cg_f32(g, L);
  LLVMValueRef s1 = LLVMBuildBitCast(
      g->B, LLVMBuildShl(g->B, LLVMBuildAdd(g->B, n1, CI(127), ""), CI(23), ""), ft, "");
  LLVMValueRef s2 = LLVMBuildBitCast(
      g->B, LLVMBuildShl(g->B, LLVMBuildAdd(g->B, n2, CI(127), ""), CI(23), ""), ft, "");
  LLVMValueRef res = MUL(MUL(y, s1), s2);
  return LLVMBuildSelect(g->B, isnan_(g, x), x, res, "exp");
}

/* log(x) = e ln 2 + log(m), m in [sqrt(1/2), sqrt(2)), Cephes' logf
 * polynomial; subnormals are scaled by 2^23 first. */
LLVMValueRef ptc__cg_log(ptc_cg *g, LLVMValueRef x) {
  int L = ptc__cg_lanes(x);
  LLVMTypeRef it = ptc__cg_i32(g, L), ft = ptc__cg_f32(g, L);
  LLVMValueRef den = LLVMBuildFCmp(g->B, LLVMRealOLT, x, CF(1.17549435e-38), "");
  LLVMValueRef xs = LLVMBuildSelect(g->B, den, MUL(x, CF(8388608.0)), x, "");
  LLVMValueRef eadj = LLVMBuildSelect(g->B, den, CF(-23.0), CF(0.0), "");
  LLVMValueRef bits = LLVMBuildBitCast(g->B, xs, it, "");
  LLVMValueRef ei = LLVMBuildSub(
      g->B, LLVMBuildAnd(g->B, LLVMBuildLShr(g->B, bits, CI(23), ""), CI(0xff), ""), CI(126), "");
  LLVMValueRef e = LLVMBuildSIToFP(g->B, ei, ft, "");
  LLVMValueRef mb = LLVMBuildOr(g->B, LLVMBuildAnd(g->B, bits, CI((int32_t)0x807fffff), ""),
                                CI(0x3f000000), "");
  LLVMValueRef m = LLVMBuildBitCast(g->B, mb, ft, "");
  LLVMValueRef lt = LLVMBuildFCmp(g->B, LLVMRealOLT, m, CF(0.707106781186547524), "");
  e = SUB(ADD(e, eadj), LLVMBuildSelect(g->B, lt, CF(1.0), CF(0.0), ""));
  m = SUB(LLVMBuildSelect(g->B, lt, ADD(m, m), m, ""), CF(1.0));
  LLVMValueRef z = MUL(m, m);
  LLVMValueRef y = CF(7.0376836292e-2);
  y = FMA(y, m, CF(-1.1514610310e-1));
  y = FMA(y, m, CF(1.1676998740e-1));
  y = FMA(y, m, CF(-1.2420140846e-1));
  y = FMA(y, m, CF(1.4249322787e-1));
  y = FMA(y, m, CF(-1.6668057665e-1));
  y = FMA(y, m, CF(2.0000714765e-1));
  y = FMA(y, m, CF(-2.4999993993e-1));
  y = FMA(y, m, CF(3.3333331174e-1));
  y = MUL(MUL(y, m), z);
  y = FMA(e, CF(-2.12194440e-4), y);
  y = FMA(z, CF(-0.5), y);
  LLVMValueRef res = ADD(m, y);
  res = FMA(e, CF(0.693359375), res);
  /* special cases, in the order that makes each win */
  res = LLVMBuildSelect(g->B, LLVMBuildFCmp(g->B, LLVMRealOEQ, x, CF(INFINITY), ""), x, res, "");
  res = LLVMBuildSelect(g->B, LLVMBuildFCmp(g->B, LLVMRealOEQ, x, CF(0.0), ""), CF(-INFINITY),
                        res, "");
  res = LLVMBuildSelect(g->B, LLVMBuildFCmp(g->B, LLVMRealOLT, x, CF(0.0), ""), CF(NAN), res, "");
  return LLVMBuildSelect(g->B, isnan_(g, x), x, res, "log");
}

/* tanh: Cephes' tanhf.  |x| < 0.625: x + x^3 P(x^2); else
 * sign(x) (1 - 2 / (e^{2|x|} + 1)), which reaches +-1 exactly where e^{2|x|}
 * overflows.  Both are computed and one selected, so no branch. */
LLVMValueRef ptc__cg_tanh(ptc_cg *g, LLVMValueRef x) {
  int L = ptc__cg_lanes(x);
  LLVMValueRef ax = ptc__cg_intrinsic(g, "llvm.fabs", &x, 1);
  LLVMValueRef e = ptc__cg_exp(g, ADD(ax, ax));
  LLVMValueRef big = SUB(CF(1.0), LLVMBuildFDiv(g->B, CF(2.0), ADD(e, CF(1.0)), ""));
  big = intr2(g, "llvm.copysign", big, x);
  LLVMValueRef z = MUL(x, x);
  LLVMValueRef p = CF(-5.70498872745e-3);
  p = FMA(p, z, CF(2.06390887954e-2));
  p = FMA(p, z, CF(-5.37397155531e-2));
  p = FMA(p, z, CF(1.33314422036e-1));
  p = FMA(p, z, CF(-3.33332819422e-1));
  LLVMValueRef small = FMA(MUL(p, z), x, x);
  LLVMValueRef use_big = LLVMBuildFCmp(g->B, LLVMRealOGE, ax, CF(0.625), "");
  LLVMValueRef res = LLVMBuildSelect(g->B, use_big, big, small, "");
  return LLVMBuildSelect(g->B, isnan_(g, x), x, res, "tanh");
}
