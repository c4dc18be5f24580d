/* cpu_emit.c -- one fused group to one LLVM function.
 *
 *   i32 ptc_k<N>(i8** bufs, i64 begin, i64 end)
 *
 * bufs holds the group's external inputs, then its outputs (the order of
 * ptc_group_sig); [begin, end) are the work items this call does:
 * elements of the iteration shape (ELEMENTWISE) or rows (ROWWISE).  It
 * returns 0, or 1 when an index (a cross-entropy target) was out of range.
 *
 * The loop nest is written out here, vectorized by hand: the iteration
 * shape is seen as rows of length L (ROWWISE: its last dim; ELEMENTWISE:
 * the innermost run of dims left after merging the dims every operand
 * treats alike), and each row segment is a loop of W-lane vector bodies
 * and a scalar tail.  A value is computed where its level says
 * (ptc_group_level): SCALAR ones once before the loops, ROW ones once per
 * row (a row op's statistics: one loop per reduction), ELEM ones inside a
 * loop body, on demand, recomputed in each loop that needs them (a chain
 * of element-wise ops feeding a LayerNorm is re-evaluated in its mean,
 * variance and output loops rather than stored: re-reading a row from L1
 * is cheaper than writing and reading a temporary).  Writing the vector
 * code ourselves, instead of hoping LLVM's vectorizer takes the loop,
 * makes the reductions vector code too (LLVM would not reassociate them)
 * and keeps the kernels fast whatever the cost model thinks.
 *
 * Semantics are those of ir/eval.c, computed in f32 (bias corrections of
 * AdamW in double, as the runtime's kernel does).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/cpu_internal.h"
#include "codegen/opmath.h"

enum { FULL = PTC_GROUP_MODE_FULL, ROWM = PTC_GROUP_MODE_ROW };
enum { NAUX = 6 };

typedef struct imap {
  bool used;
  int64_t st[PTC_MAX_RANK]; /* per outer dim */
  int64_t inner;            /* stride along the row: 0 or 1 */
} imap;

typedef struct kern {
  ptc_cg *g;
  LLVMBuilderRef B;
  ptc_func *f;
  const ptc_group_sig *sig;
  int W;
  bool rowwise;
  /* the loop nest: rows over `outer` dims, each of length L */
  int32_t nouter;
  int64_t outer[PTC_MAX_RANK];
  int64_t L;
  /* buffers */
  int32_t nslot;
  LLVMValueRef *ptr;  /* [nslot] typed pointers */
  int32_t *in_slot;   /* [nvalues] */
  int32_t *out_slot;  /* [nvalues] */
  imap *map[2];       /* [nvalues] per mode: inputs; FULL also ACC outputs */
  bool *need;         /* [nvalues] read inside the group or an output */
  /* values */
  LLVMValueRef *scal; /* [nvalues] SCALAR level */
  LLVMValueRef *rowv; /* [nvalues] ROW level this row (and ROW-mode input loads) */
  LLVMValueRef *rowx; /* [nvalues] FULL-mode input loads at row scope */
  LLVMValueRef *base[2]; /* [nvalues] this row's base offsets per mode */
  LLVMValueRef (*aux)[NAUX]; /* [ops] statistics of row ops, factors of optimizers */
  LLVMValueRef fn, begin, end, rowidx, status;
  LLVMValueRef iota; /* <0, 1, ..., W-1> as i32 */
} kern;

/* A position inside a row loop: lanes j .. j+lanes-1 of the current row. */
typedef struct pos {
  int lanes;
  LLVMValueRef j; /* i64 */
  LLVMValueRef *cache; /* [nvalues] */
} pos;

static const ptc_type *vty(const kern *k, int32_t v) { return &k->f->values[v].type; }
static bool internal(const kern *k, int32_t v) {
  const ptc_value *val = &k->f->values[v];
  return val->kind == PTC_VALUE_OP && val->def >= k->sig->first && val->def < k->sig->end;
}
static int lv(const kern *k, int32_t v) { return k->sig->level[v]; }

#define B_ (k->B)
#define CF(l, v) ptc__cg_cf(k->g, (l), (v))

/* ---- loads, stores, loops ------------------------------------------------- */

static LLVMValueRef gep(kern *k, int32_t slot, ptc_dtype t, LLVMValueRef idx) {
  return LLVMBuildGEP2(B_, ptc__cg_type(k->g, t, 1), k->ptr[slot], &idx, 1, "");
}

static LLVMValueRef load(kern *k, int32_t slot, ptc_dtype t, LLVMValueRef idx, int lanes) {
  LLVMValueRef p = gep(k, slot, t, idx);
  LLVMTypeRef ty = ptc__cg_type(k->g, t, lanes);
  if (lanes > 1) p = LLVMBuildBitCast(B_, p, LLVMPointerType(ty, 0), "");
  LLVMValueRef v = LLVMBuildLoad2(B_, ty, p, "");
  LLVMSetAlignment(v, (unsigned)ptc_dtype_size(t));
  return v;
}

static void store(kern *k, int32_t slot, ptc_dtype t, LLVMValueRef idx, LLVMValueRef val) {
  LLVMValueRef p = gep(k, slot, t, idx);
  int lanes = ptc__cg_lanes(val);
  if (lanes > 1) p = LLVMBuildBitCast(B_, p, LLVMPointerType(LLVMTypeOf(val), 0), "");
  LLVMValueRef s = LLVMBuildStore(B_, val, p);
  LLVMSetAlignment(s, (unsigned)ptc_dtype_size(t));
}

static LLVMValueRef i64c(kern *k, int64_t v) { return ptc__cg_ci64(k->g, 1, v); }

typedef void (*body_fn)(kern *k, int lanes, LLVMValueRef j, int part, void *cl);

/* A counted loop: for (; j + step <= j1; j += step) body(...). */
static void emit_counted(kern *k, LLVMValueRef jp, LLVMValueRef j1, int lanes, int parts,
                         body_fn fn, void *cl, const char *name) {
  LLVMContextRef C = k->g->C;
  LLVMTypeRef i64 = ptc__cg_i64(k->g, 1);
  int64_t step = (int64_t)lanes * parts;
  LLVMBasicBlockRef cond = LLVMAppendBasicBlockInContext(C, k->fn, name);
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(C, k->fn, name);
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(C, k->fn, name);
  LLVMBuildBr(B_, cond);
  LLVMPositionBuilderAtEnd(B_, cond);
  LLVMValueRef j = LLVMBuildLoad2(B_, i64, jp, "");
  LLVMValueRef c = LLVMBuildICmp(B_, LLVMIntSLE, LLVMBuildAdd(B_, j, i64c(k, step), ""), j1, "");
  LLVMBuildCondBr(B_, c, body, done);
  LLVMPositionBuilderAtEnd(B_, body);
  j = LLVMBuildLoad2(B_, i64, jp, "");
  for (int u = 0; u < parts; u++)
    fn(k, lanes, u ? LLVMBuildAdd(B_, j, i64c(k, (int64_t)u * lanes), "") : j, u, cl);
  LLVMBuildStore(B_, LLVMBuildAdd(B_, j, i64c(k, step), ""), jp);
  LLVMBuildBr(B_, cond);
  LLVMPositionBuilderAtEnd(B_, done);
}

/* j over [j0, j1): `parts` vectors of W lanes per trip while they fit
 * (each `part` may keep its own accumulators, which breaks the dependency
 * chain of a reduction), then single vectors, then scalars. */
static void emit_loop_parts(kern *k, LLVMValueRef j0, LLVMValueRef j1, int parts, body_fn fn,
                            void *cl) {
  LLVMValueRef jp = ptc__cg_alloca(k->g, ptc__cg_i64(k->g, 1), "j");
  LLVMBuildStore(B_, j0, jp);
  if (parts > 1) emit_counted(k, jp, j1, k->W, parts, fn, cl, "vloopN");
  emit_counted(k, jp, j1, k->W, 1, fn, cl, "vloop");
  emit_counted(k, jp, j1, 1, 1, fn, cl, "sloop");
}

static void emit_loop(kern *k, LLVMValueRef j0, LLVMValueRef j1, body_fn fn, void *cl) {
  emit_loop_parts(k, j0, j1, 1, fn, cl);
}

/* ---- evaluation ----------------------------------------------------------- */

static LLVMValueRef eval(kern *k, int32_t v, pos *p);
static void emit_ew(kern *k, const ptc_op *op, int32_t opi, LLVMValueRef *in, int lanes,
                    LLVMValueRef *out);
static LLVMValueRef rowop_elem(kern *k, int32_t opi, int32_t r, pos *p);

/* An input's value at the current row, read in `mode` (a per-row value). */
static LLVMValueRef eval_row(kern *k, int32_t v, int mode) {
  if (!internal(k, v)) {
    const ptc_type *t = vty(k, v);
    if (ptc_type_numel(t) == 1) return k->scal[v];
    LLVMValueRef *cache = mode == ROWM ? k->rowv : k->rowx;
    if (!cache[v]) {
      PTC_ASSERT(k->base[mode][v]);
      cache[v] = load(k, k->in_slot[v], t->dtype, k->base[mode][v], 1);
    }
    return cache[v];
  }
  if (lv(k, v) == PTC_GROUP_SCALAR) return k->scal[v];
  PTC_ASSERT(lv(k, v) == PTC_GROUP_ROW && k->rowv[v]);
  return k->rowv[v];
}

static LLVMValueRef eval(kern *k, int32_t v, pos *p) {
  if (p->cache[v]) return p->cache[v];
  const ptc_type *t = vty(k, v);
  LLVMValueRef r;
  if (!internal(k, v)) {
    if (ptc_type_numel(t) == 1) {
      r = ptc__cg_splat(k->g, k->scal[v], p->lanes);
    } else {
      const imap *m = &k->map[FULL][v];
      PTC_ASSERT(m->used && k->base[FULL][v]);
      /* loaded here, not through the row cache: this code may sit in a
       * loop body that later row-scope code does not see */
      if (m->inner)
        r = load(k, k->in_slot[v], t->dtype, LLVMBuildAdd(B_, k->base[FULL][v], p->j, ""),
                 p->lanes);
      else
        r = ptc__cg_splat(k->g, load(k, k->in_slot[v], t->dtype, k->base[FULL][v], 1),
                          p->lanes);
    }
  } else if (lv(k, v) == PTC_GROUP_SCALAR) {
    r = ptc__cg_splat(k->g, k->scal[v], p->lanes);
  } else if (lv(k, v) == PTC_GROUP_ROW) {
    PTC_ASSERT(k->rowv[v]);
    r = ptc__cg_splat(k->g, k->rowv[v], p->lanes);
  } else {
    PTC_ASSERT(lv(k, v) == PTC_GROUP_ELEM);
    int32_t opi = k->f->values[v].def;
    const ptc_op *op = &k->f->ops[opi];
    if (op->code == PTC_OP_SOFTMAX || op->code == PTC_OP_LAYERNORM ||
        op->code == PTC_OP_RMSNORM || op->code == PTC_OP_SOFTMAX_GRAD ||
        op->code == PTC_OP_LAYERNORM_GRAD || op->code == PTC_OP_RMSNORM_GRAD ||
        op->code == PTC_OP_CROSS_ENTROPY_GRAD) {
      r = rowop_elem(k, opi, k->f->values[v].res, p);
    } else {
      LLVMValueRef in[8], out[4];
      PTC_ASSERT(op->nin <= 8 && op->nout <= 4);
      for (int32_t a = 0; a < op->nin; a++) in[a] = eval(k, op->in[a], p);
      emit_ew(k, op, opi, in, p->lanes, out);
      for (int32_t a = 0; a < op->nout; a++) p->cache[op->out[a]] = out[a];
      return p->cache[v];
    }
  }
  p->cache[v] = r;
  return r;
}

/* ---- element-wise ops ------------------------------------------------------- */

static LLVMValueRef bin_float(kern *k, ptc_opcode c, LLVMValueRef x, LLVMValueRef y) {
  switch (c) {
  case PTC_OP_ADD: return LLVMBuildFAdd(B_, x, y, "");
  case PTC_OP_SUB: return LLVMBuildFSub(B_, x, y, "");
  case PTC_OP_MUL: return LLVMBuildFMul(B_, x, y, "");
  case PTC_OP_DIV: return LLVMBuildFDiv(B_, x, y, "");
  default: return ptc__cg_fmax(k->g, x, y);
  }
}

/* Integer division as ir/eval.c defines it: truncated, 0 for a zero
 * divisor (and no undefined overflow for MIN / -1: it wraps). */
static LLVMValueRef int_div(kern *k, ptc_dtype t, int lanes, LLVMValueRef x, LLVMValueRef y) {
  LLVMValueRef zero = ptc__cg_const(k->g, t, lanes, 0), one = ptc__cg_const(k->g, t, lanes, 1);
  LLVMValueRef mone = ptc__cg_const(k->g, t, lanes, -1);
  LLVMValueRef y0 = LLVMBuildICmp(B_, LLVMIntEQ, y, zero, "");
  LLVMValueRef ym1 = LLVMBuildICmp(B_, LLVMIntEQ, y, mone, "");
  LLVMValueRef safe = LLVMBuildSelect(B_, LLVMBuildOr(B_, y0, ym1, ""), one, y, "");
  LLVMValueRef q = LLVMBuildSDiv(B_, x, safe, "");
  q = LLVMBuildSelect(B_, ym1, LLVMBuildNeg(B_, x, ""), q, "");
  return LLVMBuildSelect(B_, y0, zero, q, "");
}

static LLVMValueRef bin_int(kern *k, ptc_opcode c, ptc_dtype t, int lanes, LLVMValueRef x,
                            LLVMValueRef y) {
  switch (c) {
  case PTC_OP_ADD: return LLVMBuildAdd(B_, x, y, "");
  case PTC_OP_SUB: return LLVMBuildSub(B_, x, y, "");
  case PTC_OP_MUL: return LLVMBuildMul(B_, x, y, "");
  case PTC_OP_DIV: return int_div(k, t, lanes, x, y);
  default: return LLVMBuildSelect(B_, LLVMBuildICmp(B_, LLVMIntSGT, x, y, ""), x, y, "");
  }
}

static LLVMValueRef sigmoid(kern *k, int l, LLVMValueRef x) {
  LLVMValueRef e = ptc__cg_exp(k->g, LLVMBuildFNeg(B_, x, ""));
  return LLVMBuildFDiv(B_, CF(l, 1.0), LLVMBuildFAdd(B_, CF(l, 1.0), e, ""), "");
}

/* GPT-2's GELU is 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
 * 0.5 (1 + tanh(u)) is the logistic function of 2u: s = 1 / (1 + e^{-2u}),
 * and 1 - s = e^{-2u} s.  Written that way nothing cancels where tanh(u)
 * is near -1 (x below about -3), so GELU's small negative tail keeps f32's
 * relative precision; the other form loses every digit there.  *e gets
 * e^{-2u} for the gradient. */
static LLVMValueRef gelu_s(kern *k, int l, LLVMValueRef x, LLVMValueRef x2, LLVMValueRef *e) {
  LLVMValueRef in = ptc__cg_fma(k->g, LLVMBuildFMul(B_, x2, CF(l, 0.044715), ""), x, x);
  LLVMValueRef m2u = LLVMBuildFMul(B_, in, CF(l, -2 * 0.7978845608028654), "");
  *e = ptc__cg_exp(k->g, m2u);
  return LLVMBuildFDiv(B_, CF(l, 1.0), LLVMBuildFAdd(B_, CF(l, 1.0), *e, ""), "");
}

static LLVMValueRef convert(kern *k, LLVMValueRef x, ptc_dtype from, ptc_dtype to, int l) {
  if (from == to) return x;
  LLVMTypeRef t = ptc__cg_type(k->g, to, l);
  if (from == PTC_DTYPE_F32) return LLVMBuildFPToSI(B_, x, t, "");
  if (to == PTC_DTYPE_F32) return LLVMBuildSIToFP(B_, x, t, "");
  return to == PTC_DTYPE_I64 ? LLVMBuildSExt(B_, x, t, "") : LLVMBuildTrunc(B_, x, t, "");
}

static void emit_ew(kern *k, const ptc_op *op, int32_t opi, LLVMValueRef *in, int l,
                    LLVMValueRef *out) {
  ptc_dtype dt = vty(k, op->out[0])->dtype;
  bool fl = dt == PTC_DTYPE_F32;
  LLVMValueRef x = op->nin > 0 ? in[0] : NULL, y = op->nin > 1 ? in[1] : NULL;
  LLVMValueRef one = fl ? CF(l, 1.0) : NULL, zero = fl ? CF(l, 0.0) : NULL;
  LLVMValueRef *aux = k->aux[opi - k->sig->first];
  switch (op->code) {
  case PTC_OP_CONSTANT:
    out[0] = ptc__cg_const(k->g, dt, l, ptc_op_attr_float(op, "value", 0));
    return;
  case PTC_OP_BROADCAST_TO: out[0] = x; return;
  case PTC_OP_ADD: case PTC_OP_SUB: case PTC_OP_MUL: case PTC_OP_DIV: case PTC_OP_MAXIMUM:
    out[0] = fl ? bin_float(k, op->code, x, y) : bin_int(k, op->code, dt, l, x, y);
    return;
  case PTC_OP_NEG:
    out[0] = fl ? LLVMBuildFNeg(B_, x, "") : LLVMBuildNeg(B_, x, "");
    return;
  case PTC_OP_EXP: out[0] = ptc__cg_exp(k->g, x); return;
  case PTC_OP_LOG: out[0] = ptc__cg_log(k->g, x); return;
  case PTC_OP_SQRT: out[0] = ptc__cg_intrinsic(k->g, "llvm.sqrt", &x, 1); return;
  case PTC_OP_RSQRT:
    out[0] = LLVMBuildFDiv(B_, one, ptc__cg_intrinsic(k->g, "llvm.sqrt", &x, 1), "");
    return;
  case PTC_OP_TANH: out[0] = ptc__cg_tanh(k->g, x); return;
  case PTC_OP_SIGMOID: out[0] = sigmoid(k, l, x); return;
  case PTC_OP_RELU:
    out[0] = LLVMBuildSelect(B_, LLVMBuildFCmp(B_, LLVMRealOGT, x, zero, ""), x, zero, "");
    return;
  case PTC_OP_GELU: { /* x s */
    LLVMValueRef e;
    out[0] = LLVMBuildFMul(B_, x, gelu_s(k, l, x, LLVMBuildFMul(B_, x, x, ""), &e), "");
    return;
  }
  case PTC_OP_SILU:
    out[0] = LLVMBuildFDiv(
        B_, x, LLVMBuildFAdd(B_, one, ptc__cg_exp(k->g, LLVMBuildFNeg(B_, x, "")), ""), "");
    return;
  case PTC_OP_CAST:
    out[0] = convert(k, x, vty(k, op->in[0])->dtype, dt, l);
    return;
  case PTC_OP_COMPARE: {
    const char *cmp = ptc_op_attr(op, "cmp")->u.s;
    LLVMRealPredicate pr = strcmp(cmp, "ge") == 0   ? LLVMRealOGE
                           : strcmp(cmp, "gt") == 0 ? LLVMRealOGT
                                                    : LLVMRealOEQ;
    out[0] = LLVMBuildSelect(B_, LLVMBuildFCmp(B_, pr, x, y, ""), one, zero, "");
    return;
  }
  case PTC_OP_RELU_GRAD: /* g, x */
    out[0] = LLVMBuildSelect(B_, LLVMBuildFCmp(B_, LLVMRealOGT, y, zero, ""), x, zero, "");
    return;
  case PTC_OP_GELU_GRAD: {
    /* d/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) k (1 + 3 * 0.044715 x^2)
     *      = s + 2 x s (1 - s) k (1 + 3 * 0.044715 x^2), 1 - s = e s */
    LLVMValueRef x2 = LLVMBuildFMul(B_, y, y, ""), e;
    LLVMValueRef sg = gelu_s(k, l, y, x2, &e);
    LLVMValueRef s1 = LLVMBuildFMul(B_, e, sg, ""); /* inf * 0 where e overflows: 1 */
    s1 = LLVMBuildSelect(B_, LLVMBuildFCmp(B_, LLVMRealOEQ, e, CF(l, INFINITY), ""), one, s1, "");
    LLVMValueRef inner = ptc__cg_fma(k->g, x2, CF(l, 3 * 0.044715), one);
    LLVMValueRef b = LLVMBuildFMul(
        B_, LLVMBuildFMul(B_, CF(l, 2 * 0.7978845608028654), y, ""),
        LLVMBuildFMul(B_, LLVMBuildFMul(B_, sg, s1, ""), inner, ""), "");
    out[0] = LLVMBuildFMul(B_, x, LLVMBuildFAdd(B_, sg, b, ""), "");
    return;
  }
  case PTC_OP_SILU_GRAD: { /* s (1 + x (1 - s)) */
    LLVMValueRef s = sigmoid(k, l, y);
    LLVMValueRef d = LLVMBuildFMul(
        B_, s, ptc__cg_fma(k->g, y, LLVMBuildFSub(B_, one, s, ""), one), "");
    out[0] = LLVMBuildFMul(B_, x, d, "");
    return;
  }
  case PTC_OP_ADAMW: { /* p, g, m, v, lr, step; aux: lr, decay, 1/c1, 1/c2 */
    double b1 = ptc_op_attr_float(op, "beta1", 0.9), b2 = ptc_op_attr_float(op, "beta2", 0.999);
    double eps = ptc_op_attr_float(op, "eps", 1e-8);
    LLVMValueRef g = in[1], m = in[2], v = in[3];
    LLVMValueRef lr = ptc__cg_splat(k->g, aux[0], l), decay = ptc__cg_splat(k->g, aux[1], l);
    LLVMValueRef ic1 = ptc__cg_splat(k->g, aux[2], l), ic2 = ptc__cg_splat(k->g, aux[3], l);
    LLVMValueRef m1 = LLVMBuildFAdd(B_, LLVMBuildFMul(B_, CF(l, b1), m, ""),
                                    LLVMBuildFMul(B_, CF(l, 1.0f - (float)b1), g, ""), "");
    LLVMValueRef v1 = LLVMBuildFAdd(
        B_, LLVMBuildFMul(B_, CF(l, b2), v, ""),
        LLVMBuildFMul(B_, LLVMBuildFMul(B_, CF(l, 1.0f - (float)b2), g, ""), g, ""), "");
    LLVMValueRef vh = LLVMBuildFMul(B_, v1, ic2, "");
    LLVMValueRef den = LLVMBuildFAdd(B_, ptc__cg_intrinsic(k->g, "llvm.sqrt", &vh, 1),
                                     CF(l, eps), "");
    LLVMValueRef step = LLVMBuildFDiv(B_, LLVMBuildFMul(B_, lr, LLVMBuildFMul(B_, m1, ic1, ""), ""),
                                      den, "");
    out[0] = LLVMBuildFSub(B_, LLVMBuildFMul(B_, x, decay, ""), step, "");
    out[1] = m1;
    out[2] = v1;
    return;
  }
  case PTC_OP_SGD: { /* p, g, buf, lr */
    double mom = ptc_op_attr_float(op, "momentum", 0), wd = ptc_op_attr_float(op, "weight_decay", 0);
    bool nest = ptc_op_attr_bool(op, "nesterov", false);
    LLVMValueRef lr = ptc__cg_splat(k->g, aux[0], l);
    LLVMValueRef d = ptc__cg_fma(k->g, CF(l, wd), x, in[1]);
    LLVMValueRef buf = ptc__cg_fma(k->g, CF(l, mom), in[2], d);
    LLVMValueRef upd = nest ? ptc__cg_fma(k->g, CF(l, mom), buf, d) : buf;
    out[0] = LLVMBuildFSub(B_, x, LLVMBuildFMul(B_, lr, upd, ""), "");
    out[1] = buf;
    return;
  }
  default:
    PTC_UNREACHABLE(); /* ptc_op_fusible admits no other op here */
  }
}

/* The once-per-call factors of an optimizer op (its lr and step are
 * SCALAR values, checked by the analysis). */
static void optimizer_aux(kern *k, int32_t opi) {
  const ptc_op *op = &k->f->ops[opi];
  LLVMValueRef *aux = k->aux[opi - k->sig->first];
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(k->g->C), f32 = ptc__cg_f32(k->g, 1);
  if (op->code == PTC_OP_SGD) {
    aux[0] = k->scal[op->in[3]];
    return;
  }
  double b1 = ptc_op_attr_float(op, "beta1", 0.9), b2 = ptc_op_attr_float(op, "beta2", 0.999);
  double wd = ptc_op_attr_float(op, "weight_decay", 0);
  LLVMValueRef lr = k->scal[op->in[4]];
  LLVMValueRef t = LLVMBuildFPExt(B_, k->scal[op->in[5]], f64, "");
  /* c = 1 - beta^t in double, as the runtime's adamw kernel computes it */
  LLVMValueRef c[2];
  double beta[2] = {b1, b2};
  for (int i = 0; i < 2; i++) {
    LLVMValueRef args[2] = {LLVMConstReal(f64, beta[i]), t};
    LLVMValueRef pw = ptc__cg_intrinsic(k->g, "llvm.pow", args, 2);
    LLVMValueRef ci = LLVMBuildFSub(B_, LLVMConstReal(f64, 1.0), pw, "");
    c[i] = LLVMBuildFPTrunc(B_, LLVMBuildFDiv(B_, LLVMConstReal(f64, 1.0), ci, ""), f32, "");
  }
  aux[0] = lr;
  aux[1] = LLVMBuildFSub(B_, CF(1, 1.0), LLVMBuildFMul(B_, lr, CF(1, wd), ""), "decay");
  aux[2] = c[0];
  aux[3] = c[1];
}

/* ---- row reductions ----------------------------------------------------------- */

enum { MAXACC = 4, PARTS = 4 };
typedef void (*red_fn)(kern *k, pos *p, LLVMValueRef *vals, void *cl);

typedef struct red_job {
  int n;
  bool max[MAXACC];
  LLVMValueRef vacc[MAXACC][PARTS], sacc[MAXACC];
  red_fn fn;
  void *cl;
} red_job;

static LLVMValueRef *fresh_cache(kern *k) {
  return ptc_xcalloc((size_t)k->f->nvalues + 1, sizeof(LLVMValueRef));
}

static void red_body(kern *k, int lanes, LLVMValueRef j, int part, void *cl) {
  red_job *r = cl;
  pos p = {lanes, j, fresh_cache(k)};
  LLVMValueRef vals[MAXACC];
  r->fn(k, &p, vals, r->cl);
  for (int a = 0; a < r->n; a++) {
    LLVMValueRef acc = lanes > 1 ? r->vacc[a][part] : r->sacc[a];
    LLVMTypeRef t = ptc__cg_f32(k->g, lanes);
    LLVMValueRef cur = LLVMBuildLoad2(B_, t, acc, "");
    LLVMValueRef nv = r->max[a] ? ptc__cg_fmax(k->g, vals[a], cur)
                                : LLVMBuildFAdd(B_, cur, vals[a], "");
    LLVMBuildStore(B_, nv, acc);
  }
  free(p.cache);
}

/* Reduces n expressions over columns [0, bound) of the current row, with
 * PARTS vector accumulators each, combined in a fixed order. */
static void row_reduce(kern *k, int64_t bound, int n, const bool *is_max, red_fn fn, void *cl,
                       LLVMValueRef *out) {
  red_job r = {.n = n, .fn = fn, .cl = cl};
  for (int a = 0; a < n; a++) {
    r.max[a] = is_max[a];
    double id = is_max[a] ? -INFINITY : 0.0;
    for (int u = 0; u < PARTS; u++) {
      r.vacc[a][u] = ptc__cg_alloca(k->g, ptc__cg_f32(k->g, k->W), "vacc");
      LLVMBuildStore(B_, CF(k->W, id), r.vacc[a][u]);
    }
    r.sacc[a] = ptc__cg_alloca(k->g, ptc__cg_f32(k->g, 1), "sacc");
    LLVMBuildStore(B_, CF(1, id), r.sacc[a]);
  }
  emit_loop_parts(k, i64c(k, 0), i64c(k, bound), bound >= PARTS * k->W ? PARTS : 1, red_body, &r);
  for (int a = 0; a < n; a++) {
    LLVMValueRef v[PARTS];
    for (int u = 0; u < PARTS; u++) v[u] = LLVMBuildLoad2(B_, ptc__cg_f32(k->g, k->W), r.vacc[a][u], "");
    LLVMValueRef s = LLVMBuildLoad2(B_, ptc__cg_f32(k->g, 1), r.sacc[a], "");
    if (is_max[a]) {
      LLVMValueRef m = ptc__cg_fmax(k->g, ptc__cg_fmax(k->g, v[1], v[0]), ptc__cg_fmax(k->g, v[3], v[2]));
      out[a] = ptc__cg_fmax(k->g, s, ptc__cg_hmax(k->g, m));
    } else {
      LLVMValueRef m = LLVMBuildFAdd(B_, LLVMBuildFAdd(B_, v[0], v[1], ""),
                                     LLVMBuildFAdd(B_, v[2], v[3], ""), "");
      out[a] = LLVMBuildFAdd(B_, ptc__cg_hsum(k->g, m), s, "");
    }
  }
}

/* The expressions the row ops reduce. */
typedef struct rx {
  int32_t opi;
  int what;
} rx;
enum { RX_X, RX_EXP_SHIFT, RX_SQDEV, RX_SQ, RX_DOT, RX_NORMGRAD };

static void rx_fn(kern *k, pos *p, LLVMValueRef *vals, void *cl) {
  const rx *r = cl;
  const ptc_op *op = &k->f->ops[r->opi];
  LLVMValueRef *aux = k->aux[r->opi - k->sig->first];
  int l = p->lanes;
  bool grad = op->code == PTC_OP_LAYERNORM_GRAD || op->code == PTC_OP_RMSNORM_GRAD ||
              op->code == PTC_OP_CROSS_ENTROPY_GRAD || op->code == PTC_OP_SOFTMAX_GRAD;
  LLVMValueRef x = eval(k, op->in[grad && op->code != PTC_OP_SOFTMAX_GRAD ? 1 : 0], p);
  switch (r->what) {
  case RX_X: vals[0] = x; break;
  case RX_EXP_SHIFT: /* exp(x - max) */
    vals[0] = ptc__cg_exp(k->g, LLVMBuildFSub(B_, x, ptc__cg_splat(k->g, aux[0], l), ""));
    break;
  case RX_SQDEV: { /* (x - mean)^2 */
    LLVMValueRef d = LLVMBuildFSub(B_, x, ptc__cg_splat(k->g, aux[0], l), "");
    vals[0] = LLVMBuildFMul(B_, d, d, "");
    break;
  }
  case RX_SQ: vals[0] = LLVMBuildFMul(B_, x, x, ""); break;
  case RX_DOT: /* softmax_grad: g * y */
    vals[0] = LLVMBuildFMul(B_, x, eval(k, op->in[1], p), "");
    break;
  case RX_NORMGRAD: { /* g * gamma, g * gamma * xhat */
    LLVMValueRef gg = LLVMBuildFMul(B_, eval(k, op->in[0], p), eval(k, op->in[2], p), "");
    LLVMValueRef mean = op->code == PTC_OP_LAYERNORM_GRAD ? ptc__cg_splat(k->g, aux[0], l)
                                                          : CF(l, 0.0);
    LLVMValueRef xh = LLVMBuildFMul(B_, LLVMBuildFSub(B_, x, mean, ""),
                                    ptc__cg_splat(k->g, aux[1], l), "");
    vals[0] = gg;
    vals[1] = LLVMBuildFMul(B_, gg, xh, "");
    break;
  }
  }
}

static LLVMValueRef reduce1(kern *k, int32_t opi, int what, int64_t bound, bool max) {
  rx r = {opi, what};
  LLVMValueRef out;
  row_reduce(k, bound, 1, &max, rx_fn, &r, &out);
  return out;
}

/* Max and 1/sum(exp(x - max)) over [0, bound) of a row op's input; shared
 * by softmax, cross_entropy and its gradient over the same logits. */
static void softmax_stats(kern *k, int32_t opi, int64_t bound) {
  const ptc_op *op = &k->f->ops[opi];
  int32_t x = op->in[op->code == PTC_OP_CROSS_ENTROPY_GRAD ? 1 : 0];
  LLVMValueRef *aux = k->aux[opi - k->sig->first];
  for (int32_t i = k->sig->first; i < opi; i++) {
    const ptc_op *o = &k->f->ops[i];
    LLVMValueRef *oa = k->aux[i - k->sig->first];
    int64_t ob = o->code == PTC_OP_SOFTMAX
                     ? k->L
                     : ptc_op_attr_int(o, "classes", k->L);
    bool same = (o->code == PTC_OP_SOFTMAX || o->code == PTC_OP_CROSS_ENTROPY ||
                 o->code == PTC_OP_CROSS_ENTROPY_GRAD) &&
                o->in[o->code == PTC_OP_CROSS_ENTROPY_GRAD ? 1 : 0] == x && ob == bound &&
                oa[0] && oa[1];
    if (same) {
      aux[0] = oa[0];
      aux[1] = oa[1];
      return;
    }
  }
  aux[0] = reduce1(k, opi, RX_X, bound, true);
  LLVMValueRef s = reduce1(k, opi, RX_EXP_SHIFT, bound, false);
  aux[1] = LLVMBuildFDiv(B_, CF(1, 1.0), s, "inv_sum");
}

/* mean (layernorm only) and 1/sqrt(var + eps) of the row op's input */
static void norm_stats(kern *k, int32_t opi, bool centred) {
  const ptc_op *op = &k->f->ops[opi];
  LLVMValueRef *aux = k->aux[opi - k->sig->first];
  double eps = ptc_op_attr_float(op, "eps", 1e-5), invc = 1.0 / (double)k->L;
  LLVMValueRef var;
  if (centred) {
    aux[0] = LLVMBuildFMul(B_, reduce1(k, opi, RX_X, k->L, false), CF(1, invc), "mean");
    var = reduce1(k, opi, RX_SQDEV, k->L, false);
  } else {
    aux[0] = CF(1, 0.0);
    var = reduce1(k, opi, RX_SQ, k->L, false);
  }
  var = LLVMBuildFAdd(B_, LLVMBuildFMul(B_, var, CF(1, invc), ""), CF(1, eps), "");
  aux[1] = LLVMBuildFDiv(B_, CF(1, 1.0), ptc__cg_intrinsic(k->g, "llvm.sqrt", &var, 1), "rs");
}

/* Column indices j, j+1, ... as i32 (a row is shorter than 2^31: checked
 * when the kernel is made), cheaper to compare than i64 lanes. */
static LLVMValueRef columns(kern *k, pos *p) {
  LLVMValueRef j32 = LLVMBuildTrunc(B_, p->j, ptc__cg_i32(k->g, 1), "");
  LLVMValueRef j = ptc__cg_splat(k->g, j32, p->lanes);
  return p->lanes > 1 ? LLVMBuildAdd(B_, j, k->iota, "") : j;
}

/* Element (result r) of a row op at p, from its statistics. */
static LLVMValueRef rowop_elem(kern *k, int32_t opi, int32_t r, pos *p) {
  const ptc_op *op = &k->f->ops[opi];
  LLVMValueRef *aux = k->aux[opi - k->sig->first];
  int l = p->lanes;
  LLVMValueRef a0 = aux[0] ? ptc__cg_splat(k->g, aux[0], l) : NULL;
  LLVMValueRef a1 = aux[1] ? ptc__cg_splat(k->g, aux[1], l) : NULL;
  switch (op->code) {
  case PTC_OP_SOFTMAX: {
    LLVMValueRef x = eval(k, op->in[0], p);
    return LLVMBuildFMul(B_, ptc__cg_exp(k->g, LLVMBuildFSub(B_, x, a0, "")), a1, "");
  }
  case PTC_OP_LAYERNORM: case PTC_OP_RMSNORM: {
    LLVMValueRef x = eval(k, op->in[0], p);
    LLVMValueRef xh = LLVMBuildFMul(B_, LLVMBuildFSub(B_, x, a0, ""), a1, "");
    LLVMValueRef y = LLVMBuildFMul(B_, xh, eval(k, op->in[1], p), "");
    return op->code == PTC_OP_LAYERNORM ? LLVMBuildFAdd(B_, y, eval(k, op->in[2], p), "") : y;
  }
  case PTC_OP_SOFTMAX_GRAD: { /* y (g - dot) */
    LLVMValueRef g = eval(k, op->in[0], p), y = eval(k, op->in[1], p);
    return LLVMBuildFMul(B_, y, LLVMBuildFSub(B_, g, a0, ""), "");
  }
  case PTC_OP_LAYERNORM_GRAD: case PTC_OP_RMSNORM_GRAD: {
    LLVMValueRef g = eval(k, op->in[0], p), x = eval(k, op->in[1], p);
    LLVMValueRef xh = LLVMBuildFMul(B_, LLVMBuildFSub(B_, x, a0, ""), a1, "");
    if (r == 1) return LLVMBuildFMul(B_, g, xh, ""); /* dgamma's term */
    if (r == 2) return g;                            /* dbeta's term */
    LLVMValueRef gg = LLVMBuildFMul(B_, g, eval(k, op->in[2], p), "");
    LLVMValueRef m1 = ptc__cg_splat(k->g, aux[2], l), m2 = ptc__cg_splat(k->g, aux[3], l);
    LLVMValueRef d = LLVMBuildFSub(B_, LLVMBuildFSub(B_, gg, m1, ""),
                                   LLVMBuildFMul(B_, xh, m2, ""), "");
    return LLVMBuildFMul(B_, a1, d, "");
  }
  case PTC_OP_CROSS_ENTROPY_GRAD: { /* scale (softmax - onehot(t)) below classes, else 0 */
    LLVMValueRef x = eval(k, op->in[1], p);
    LLVMValueRef sm = LLVMBuildFMul(B_, ptc__cg_exp(k->g, LLVMBuildFSub(B_, x, a0, "")), a1, "");
    LLVMValueRef c = columns(k, p);
    LLVMValueRef t32 = LLVMBuildTrunc(B_, aux[3], ptc__cg_i32(k->g, 1), "");
    LLVMValueRef hit = LLVMBuildICmp(B_, LLVMIntEQ, c, ptc__cg_splat(k->g, t32, l), "");
    LLVMValueRef d = LLVMBuildFSub(
        B_, sm, LLVMBuildSelect(B_, hit, CF(l, 1.0), CF(l, 0.0), ""), "");
    LLVMValueRef v = LLVMBuildFMul(B_, ptc__cg_splat(k->g, aux[2], l), d, "");
    int64_t classes = ptc_op_attr_int(op, "classes", k->L);
    if (classes < k->L)
      v = LLVMBuildSelect(B_, LLVMBuildICmp(B_, LLVMIntSLT, c, ptc__cg_ci32(k->g, l, classes), ""),
                          v, CF(l, 0.0), "");
    return v;
  }
  default: PTC_UNREACHABLE();
  }
}

/* A target at the current row as i64, checked against [0, classes): an
 * out-of-range one is replaced by 0 and flags the call's status. */
static LLVMValueRef target_of(kern *k, int32_t v, int64_t classes) {
  LLVMValueRef t = eval_row(k, v, ROWM);
  if (vty(k, v)->dtype != PTC_DTYPE_I64) t = LLVMBuildSExt(B_, t, ptc__cg_i64(k->g, 1), "");
  LLVMValueRef ok = LLVMBuildAnd(B_, LLVMBuildICmp(B_, LLVMIntSGE, t, i64c(k, 0), ""),
                                 LLVMBuildICmp(B_, LLVMIntSLT, t, i64c(k, classes), ""), "");
  LLVMTypeRef i32 = ptc__cg_i32(k->g, 1);
  LLVMValueRef st = LLVMBuildLoad2(B_, i32, k->status, "");
  LLVMBuildStore(B_, LLVMBuildSelect(B_, ok, st, ptc__cg_ci32(k->g, 1, 1), ""), k->status);
  return LLVMBuildSelect(B_, ok, t, i64c(k, 0), "target");
}

static bool any_result_needed(const kern *k, const ptc_op *op) {
  for (int32_t r = 0; r < op->nout; r++)
    if (k->need[op->out[r]]) return true;
  return false;
}

/* Row-scope work of op i (ROWWISE): statistics, per-row values. */
static void row_scope_op(kern *k, int32_t i) {
  const ptc_op *op = &k->f->ops[i];
  LLVMValueRef *aux = k->aux[i - k->sig->first];
  if (!any_result_needed(k, op)) return;
  switch (op->code) {
  case PTC_OP_SOFTMAX: softmax_stats(k, i, k->L); return;
  case PTC_OP_LAYERNORM: norm_stats(k, i, true); return;
  case PTC_OP_RMSNORM: norm_stats(k, i, false); return;
  case PTC_OP_SOFTMAX_GRAD: {
    rx r = {i, RX_DOT};
    bool mx = false;
    row_reduce(k, k->L, 1, &mx, rx_fn, &r, &aux[0]);
    return;
  }
  case PTC_OP_LAYERNORM_GRAD: case PTC_OP_RMSNORM_GRAD: {
    norm_stats(k, i, op->code == PTC_OP_LAYERNORM_GRAD);
    rx r = {i, RX_NORMGRAD};
    bool mx[2] = {false, false};
    LLVMValueRef m[2];
    row_reduce(k, k->L, 2, mx, rx_fn, &r, m);
    LLVMValueRef invc = CF(1, 1.0 / (double)k->L);
    aux[2] = op->code == PTC_OP_LAYERNORM_GRAD ? LLVMBuildFMul(B_, m[0], invc, "m1") : CF(1, 0.0);
    aux[3] = LLVMBuildFMul(B_, m[1], invc, "m2");
    return;
  }
  case PTC_OP_CROSS_ENTROPY: {
    int64_t classes = ptc_op_attr_int(op, "classes", k->L);
    softmax_stats(k, i, classes);
    LLVMValueRef t = target_of(k, op->in[1], classes);
    pos p = {1, t, fresh_cache(k)}; /* the logit of the target */
    LLVMValueRef xt = eval(k, op->in[0], &p);
    free(p.cache);
    /* loss = log(sum) + max - x[t] = max - x[t] - log(1/sum) */
    LLVMValueRef loss = LLVMBuildFSub(B_, LLVMBuildFSub(B_, aux[0], xt, ""),
                                      ptc__cg_log(k->g, aux[1]), "loss");
    int32_t o = k->out_slot[op->out[0]];
    if (o >= 0) { /* the mean over the rows: sum loss / rows */
      LLVMValueRef cur = load(k, o, PTC_DTYPE_F32, i64c(k, 0), 1);
      LLVMValueRef add = LLVMBuildFMul(B_, loss, CF(1, 1.0 / (double)k->sig->work), "");
      store(k, o, PTC_DTYPE_F32, i64c(k, 0), LLVMBuildFAdd(B_, cur, add, ""));
    }
    return;
  }
  case PTC_OP_CROSS_ENTROPY_GRAD: {
    int64_t classes = ptc_op_attr_int(op, "classes", k->L);
    softmax_stats(k, i, classes);
    aux[2] = LLVMBuildFMul(B_, eval_row(k, op->in[0], FULL),
                           CF(1, 1.0 / (double)k->sig->work), "scale");
    aux[3] = target_of(k, op->in[2], classes);
    return;
  }
  case PTC_OP_REDUCE_SUM: case PTC_OP_REDUCE_MEAN: case PTC_OP_REDUCE_MAX: {
    if (lv(k, op->out[0]) != PTC_GROUP_ROW) return; /* accumulated in the row loop */
    bool mx = op->code == PTC_OP_REDUCE_MAX;
    LLVMValueRef s = reduce1(k, i, RX_X, k->L, mx);
    if (op->code == PTC_OP_REDUCE_MEAN) s = LLVMBuildFMul(B_, s, CF(1, 1.0 / (double)k->L), "");
    k->rowv[op->out[0]] = s;
    return;
  }
  default:
    if (lv(k, op->out[0]) == PTC_GROUP_ROW) { /* a per-row element-wise op */
      LLVMValueRef in[8], out[4];
      for (int32_t a = 0; a < op->nin; a++)
        in[a] = eval_row(k, op->in[a], k->sig->op_mode[i - k->sig->first]);
      emit_ew(k, op, i, in, 1, out);
      for (int32_t r = 0; r < op->nout; r++) k->rowv[op->out[r]] = out[r];
    }
    return;
  }
}

/* ---- the row segment: outputs per element, accumulations ------------------- */

typedef struct accout {
  int32_t v;          /* the output value */
  int32_t slot;
  bool max;
  double scale;       /* reduce_mean: 1/count */
  int32_t expr_op;    /* the op whose operand or result is accumulated */
  int32_t expr_res;   /* row op: result index; reduce: -1 (its operand) */
  LLVMValueRef vacc, sacc; /* inner stride 0: per-row accumulators */
} accout;

typedef struct seg {
  int32_t nstore;
  int32_t *store; /* ELEM outputs */
  int32_t nacc;
  accout *acc;
} seg;

static LLVMValueRef acc_expr(kern *k, const accout *a, pos *p) {
  const ptc_op *op = &k->f->ops[a->expr_op];
  LLVMValueRef e = a->expr_res < 0 ? eval(k, op->in[0], p) : rowop_elem(k, a->expr_op, a->expr_res, p);
  if (a->scale != 1.0) e = LLVMBuildFMul(B_, e, CF(p->lanes, a->scale), "");
  return e;
}

static void seg_body(kern *k, int lanes, LLVMValueRef j, int part, void *cl) {
  (void)part;
  seg *s = cl;
  pos p = {lanes, j, fresh_cache(k)};
  LLVMValueRef eidx = LLVMBuildAdd(B_, LLVMBuildMul(B_, k->rowidx, i64c(k, k->L), ""), j, "");
  for (int32_t o = 0; o < s->nstore; o++) {
    int32_t v = s->store[o];
    store(k, k->out_slot[v], vty(k, v)->dtype, eidx, eval(k, v, &p));
  }
  for (int32_t o = 0; o < s->nacc; o++) {
    accout *a = &s->acc[o];
    LLVMValueRef e = acc_expr(k, a, &p);
    const imap *m = &k->map[FULL][a->v];
    if (m->inner) { /* a column sum: read, combine, write back */
      LLVMValueRef idx = LLVMBuildAdd(B_, k->base[FULL][a->v], j, "");
      LLVMValueRef cur = load(k, a->slot, PTC_DTYPE_F32, idx, lanes);
      store(k, a->slot, PTC_DTYPE_F32, idx,
            a->max ? ptc__cg_fmax(k->g, e, cur) : LLVMBuildFAdd(B_, cur, e, ""));
    } else {
      LLVMValueRef acc = lanes > 1 ? a->vacc : a->sacc;
      LLVMValueRef cur = LLVMBuildLoad2(B_, ptc__cg_f32(k->g, lanes), acc, "");
      LLVMBuildStore(B_, a->max ? ptc__cg_fmax(k->g, e, cur) : LLVMBuildFAdd(B_, cur, e, ""),
                     acc);
    }
  }
  free(p.cache);
}

static void emit_segment(kern *k, seg *s, LLVMValueRef j0, LLVMValueRef j1) {
  for (int32_t o = 0; o < s->nacc; o++) {
    accout *a = &s->acc[o];
    if (k->map[FULL][a->v].inner) continue;
    double id = a->max ? -INFINITY : 0.0;
    a->vacc = ptc__cg_alloca(k->g, ptc__cg_f32(k->g, k->W), "racc");
    a->sacc = ptc__cg_alloca(k->g, ptc__cg_f32(k->g, 1), "racc1");
    LLVMBuildStore(B_, CF(k->W, id), a->vacc);
    LLVMBuildStore(B_, CF(1, id), a->sacc);
  }
  emit_loop(k, j0, j1, seg_body, s);
  for (int32_t o = 0; o < s->nacc; o++) {
    accout *a = &s->acc[o];
    if (k->map[FULL][a->v].inner) continue;
    LLVMValueRef v = LLVMBuildLoad2(B_, ptc__cg_f32(k->g, k->W), a->vacc, "");
    LLVMValueRef sc = LLVMBuildLoad2(B_, ptc__cg_f32(k->g, 1), a->sacc, "");
    LLVMValueRef tot = a->max ? ptc__cg_fmax(k->g, sc, ptc__cg_hmax(k->g, v))
                              : LLVMBuildFAdd(B_, ptc__cg_hsum(k->g, v), sc, "");
    LLVMValueRef idx = k->base[FULL][a->v];
    LLVMValueRef cur = load(k, a->slot, PTC_DTYPE_F32, idx, 1);
    store(k, a->slot, PTC_DTYPE_F32, idx,
          a->max ? ptc__cg_fmax(k->g, tot, cur) : LLVMBuildFAdd(B_, cur, tot, ""));
  }
}

/* ---- index maps and the iteration space ----------------------------------------- */

/* The keepdim shape of what an ACC output accumulates, aligned to X. */
static ptc_type acc_shape(const kern *k, int32_t v) {
  const ptc_op *op = &k->f->ops[k->f->values[v].def];
  if (op->code != PTC_OP_REDUCE_SUM && op->code != PTC_OP_REDUCE_MEAN &&
      op->code != PTC_OP_REDUCE_MAX)
    return *vty(k, v); /* dgamma [C], the loss [] */
  ptc_type t = *vty(k, op->in[0]);
  const ptc_attr *ax = ptc_op_attr(op, "axes");
  for (int32_t i = 0; i < ax->u.ints.n; i++) t.dims[ax->u.ints.v[i]] = 1;
  return t;
}

typedef struct mapreq {
  int32_t v;
  int mode;
  ptc_type shape;
  int64_t st[PTC_MAX_RANK]; /* over X's dims (FULL) or its rows (ROW) */
} mapreq;

static void add_req(mapreq *r, int32_t *n, int32_t v, int mode, const ptc_type *s) {
  for (int32_t i = 0; i < *n; i++)
    if (r[i].v == v && r[i].mode == mode) return;
  r[*n].v = v;
  r[*n].mode = mode;
  r[*n].shape = *s;
  (*n)++;
}

/* Works out the loop nest and each buffer's index map. */
static void plan_maps(kern *k) {
  const ptc_group_sig *sig = k->sig;
  ptc_func *f = k->f;
  const ptc_type *x = &sig->iter;
  int32_t cap = 4, nreq = 0;
  for (int32_t i = sig->first; i < sig->end; i++) cap += f->ops[i].nin + f->ops[i].nout;
  mapreq *req = ptc_xcalloc((size_t)cap, sizeof *req);
  for (int32_t i = sig->first; i < sig->end; i++) {
    const ptc_op *op = &f->ops[i];
    for (int32_t a = 0; a < op->nin; a++) {
      int32_t v = op->in[a];
      if (internal(k, v) || ptc_type_numel(vty(k, v)) == 1) continue;
      int mode = sig->op_mode[i - sig->first];
      if ((op->code == PTC_OP_CROSS_ENTROPY && a == 1) ||
          (op->code == PTC_OP_CROSS_ENTROPY_GRAD && a == 2))
        mode = ROWM;
      add_req(req, &nreq, v, mode, vty(k, v));
    }
  }
  for (int32_t o = 0; o < sig->nout; o++)
    if (sig->combine[o] != PTC_GROUP_STORE) {
      ptc_type s = acc_shape(k, sig->out[o]);
      add_req(req, &nreq, sig->out[o], FULL, &s);
    }
  for (int32_t r = 0; r < nreq; r++) {
    int32_t tr = req[r].mode == ROWM ? x->rank - 1 : x->rank;
    ptc_om_align_strides(&req[r].shape, tr, req[r].st);
  }

  if (k->rowwise) {
    k->nouter = x->rank - 1;
    for (int32_t d = 0; d < k->nouter; d++) k->outer[d] = x->dims[d];
    k->L = x->dims[x->rank - 1];
    for (int32_t r = 0; r < nreq; r++) {
      imap *m = &k->map[req[r].mode][req[r].v];
      m->used = true;
      for (int32_t d = 0; d < k->nouter; d++) m->st[d] = req[r].st[d];
      m->inner = req[r].mode == ROWM ? 0 : req[r].st[x->rank - 1];
    }
  } else {
    /* merge neighbouring dims of X that every map treats alike (both
     * broadcast or both not): the innermost merged run is the row */
    int32_t nd = 0, last_of[PTC_MAX_RANK];
    int64_t size[PTC_MAX_RANK];
    for (int32_t d = 0; d < x->rank; d++) {
      if (x->dims[d] == 1) continue;
      bool merge = nd > 0;
      for (int32_t r = 0; r < nreq && merge; r++)
        merge = (req[r].st[last_of[nd - 1]] != 0) == (req[r].st[d] != 0);
      if (merge) {
        size[nd - 1] *= x->dims[d];
        last_of[nd - 1] = d;
      } else {
        size[nd] = x->dims[d];
        last_of[nd++] = d;
      }
    }
    if (nd == 0) { /* a single element */
      size[0] = 1;
      last_of[0] = -1;
      nd = 1;
    }
    k->nouter = nd - 1;
    for (int32_t d = 0; d < nd - 1; d++) k->outer[d] = size[d];
    k->L = size[nd - 1];
    for (int32_t r = 0; r < nreq; r++) {
      imap *m = &k->map[FULL][req[r].v];
      m->used = true;
      for (int32_t d = 0; d < nd; d++) {
        int64_t s = last_of[d] >= 0 ? req[r].st[last_of[d]] : 0;
        if (d < nd - 1) m->st[d] = s;
        else m->inner = s;
      }
    }
  }
  free(req);
}

/* Coordinates of the current row and every map's base offset. */
static void row_bases(kern *k) {
  LLVMValueRef coord[PTC_MAX_RANK], rem = k->rowidx;
  for (int32_t d = k->nouter - 1; d >= 0; d--) {
    LLVMValueRef n = i64c(k, k->outer[d]);
    coord[d] = d == 0 ? rem : LLVMBuildURem(B_, rem, n, "");
    if (d > 0) rem = LLVMBuildUDiv(B_, rem, n, "");
  }
  for (int mode = 0; mode < 2; mode++)
    for (int32_t v = 0; v < k->f->nvalues; v++) {
      const imap *m = &k->map[mode][v];
      k->base[mode][v] = NULL;
      if (!m->used) continue;
      LLVMValueRef b = i64c(k, 0);
      for (int32_t d = 0; d < k->nouter; d++)
        if (m->st[d]) b = LLVMBuildAdd(B_, b, LLVMBuildMul(B_, coord[d], i64c(k, m->st[d]), ""), "");
      k->base[mode][v] = b;
    }
}

/* ---- the kernel ------------------------------------------------------------------ */

static void kern_free(kern *k) {
  free(k->ptr);
  free(k->in_slot);
  free(k->out_slot);
  free(k->map[0]);
  free(k->map[1]);
  free(k->need);
  free(k->scal);
  free(k->rowv);
  free(k->rowx);
  free(k->base[0]);
  free(k->base[1]);
  free(k->aux);
}

int ptc__cg_emit_group(ptc_cg *g, ptc_func *f, const ptc_group_sig *sig, LLVMValueRef *fn) {
  kern kk = {.g = g, .B = g->B, .f = f, .sig = sig, .W = g->W,
             .rowwise = sig->kind == PTC_GROUP_ROWWISE};
  kern *k = &kk;
  size_t nv = (size_t)f->nvalues + 1;
  k->nslot = sig->nin + sig->nout;
  k->ptr = ptc_xcalloc((size_t)k->nslot + 1, sizeof *k->ptr);
  k->in_slot = ptc_xmalloc(nv * sizeof *k->in_slot);
  k->out_slot = ptc_xmalloc(nv * sizeof *k->out_slot);
  for (size_t v = 0; v < nv; v++) k->in_slot[v] = k->out_slot[v] = -1;
  for (int32_t i = 0; i < sig->nin; i++) k->in_slot[sig->in[i]] = i;
  for (int32_t i = 0; i < sig->nout; i++) k->out_slot[sig->out[i]] = sig->nin + i;
  k->map[0] = ptc_xcalloc(nv, sizeof(imap));
  k->map[1] = ptc_xcalloc(nv, sizeof(imap));
  k->need = ptc_xcalloc(nv, sizeof(bool));
  k->scal = ptc_xcalloc(nv, sizeof(LLVMValueRef));
  k->rowv = ptc_xcalloc(nv, sizeof(LLVMValueRef));
  k->rowx = ptc_xcalloc(nv, sizeof(LLVMValueRef));
  k->base[0] = ptc_xcalloc(nv, sizeof(LLVMValueRef));
  k->base[1] = ptc_xcalloc(nv, sizeof(LLVMValueRef));
  k->aux = ptc_xcalloc((size_t)(sig->end - sig->first) + 1, sizeof *k->aux);
  for (int32_t i = sig->first; i < sig->end; i++)
    for (int32_t a = 0; a < f->ops[i].nin; a++) k->need[f->ops[i].in[a]] = true;
  for (int32_t o = 0; o < sig->nout; o++) k->need[sig->out[o]] = true;
  plan_maps(k);

  /* the function and its entry: pointers, status */
  LLVMContextRef C = g->C;
  LLVMTypeRef i8p = LLVMPointerType(LLVMInt8TypeInContext(C), 0);
  LLVMTypeRef i64 = ptc__cg_i64(g, 1), i32 = ptc__cg_i32(g, 1);
  LLVMTypeRef params[3] = {LLVMPointerType(i8p, 0), i64, i64};
  char name[48];
  ptc_group_kernel_name(sig->id, name, sizeof name);
  k->fn = LLVMAddFunction(g->M, name, LLVMFunctionType(i32, params, 3, 0));
  *fn = k->fn;
  LLVMAddAttributeAtIndex(k->fn, LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(C, LLVMGetEnumAttributeKindForName("nounwind", 8), 0));
  if (g->cpu) LLVMAddTargetDependentFunctionAttr(k->fn, "target-cpu", g->cpu);
  if (g->features && g->features[0])
    LLVMAddTargetDependentFunctionAttr(k->fn, "target-features", g->features);
  LLVMValueRef bufs = LLVMGetParam(k->fn, 0);
  k->begin = LLVMGetParam(k->fn, 1);
  k->end = LLVMGetParam(k->fn, 2);
  LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(C, k->fn, "entry");
  LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(C, k->fn, "body");
  LLVMPositionBuilderAtEnd(B_, entry);
  g->alloca_at = LLVMBuildBr(B_, body);
  LLVMPositionBuilderAtEnd(B_, body);
  for (int32_t s = 0; s < k->nslot; s++) {
    int32_t v = s < sig->nin ? sig->in[s] : sig->out[s - sig->nin];
    LLVMValueRef idx = i64c(k, s);
    LLVMValueRef pp = LLVMBuildLoad2(B_, i8p, LLVMBuildGEP2(B_, i8p, bufs, &idx, 1, ""), "");
    k->ptr[s] = LLVMBuildBitCast(B_, pp, LLVMPointerType(ptc__cg_type(g, vty(k, v)->dtype, 1), 0),
                                 "");
  }
  k->status = ptc__cg_alloca(g, i32, "status");
  LLVMBuildStore(B_, ptc__cg_ci32(g, 1, 0), k->status);
  {
    LLVMValueRef lanes[64];
    for (int i = 0; i < k->W; i++) lanes[i] = LLVMConstInt(i32, (unsigned long long)i, 0);
    k->iota = LLVMConstVector(lanes, (unsigned)k->W);
  }

  /* once per call: scalar inputs, scalar ops, optimizer factors */
  for (int32_t i = 0; i < sig->nin; i++)
    if (ptc_type_numel(vty(k, sig->in[i])) == 1)
      k->scal[sig->in[i]] = load(k, i, vty(k, sig->in[i])->dtype, i64c(k, 0), 1);
  for (int32_t i = sig->first; i < sig->end; i++) {
    const ptc_op *op = &f->ops[i];
    if (op->code == PTC_OP_ADAMW || op->code == PTC_OP_SGD) optimizer_aux(k, i);
    if (lv(k, op->out[0]) != PTC_GROUP_SCALAR) continue;
    pos p = {1, i64c(k, 0), fresh_cache(k)};
    LLVMValueRef in[8], out[4];
    for (int32_t a = 0; a < op->nin; a++) in[a] = eval(k, op->in[a], &p);
    free(p.cache);
    emit_ew(k, op, i, in, 1, out);
    for (int32_t r = 0; r < op->nout; r++) k->scal[op->out[r]] = out[r];
  }

  /* what the row loop writes */
  seg s = {0};
  s.store = ptc_xcalloc((size_t)sig->nout + 1, sizeof *s.store);
  s.acc = ptc_xcalloc((size_t)sig->nout + 1, sizeof *s.acc);
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    const ptc_op *op = &f->ops[f->values[v].def];
    if (lv(k, v) == PTC_GROUP_ELEM) s.store[s.nstore++] = v;
    if (lv(k, v) != PTC_GROUP_ACC || op->code == PTC_OP_CROSS_ENTROPY) continue;
    accout *a = &s.acc[s.nacc++];
    a->v = v;
    a->slot = k->out_slot[v];
    a->max = sig->combine[o] == PTC_GROUP_MAX;
    a->expr_op = f->values[v].def;
    bool red = op->code == PTC_OP_REDUCE_SUM || op->code == PTC_OP_REDUCE_MEAN ||
               op->code == PTC_OP_REDUCE_MAX;
    a->expr_res = red ? -1 : f->values[v].res;
    a->scale = op->code == PTC_OP_REDUCE_MEAN
                   ? (double)ptc_type_numel(vty(k, v)) / (double)ptc_type_numel(vty(k, op->in[0]))
                   : 1.0;
  }

  /* the row loop */
  LLVMValueRef rp = ptc__cg_alloca(g, i64, "row");
  LLVMValueRef r0, r1;
  if (k->rowwise) {
    r0 = k->begin;
    r1 = k->end;
  } else {
    r0 = LLVMBuildSDiv(B_, k->begin, i64c(k, k->L), "");
    r1 = LLVMBuildSDiv(B_, LLVMBuildAdd(B_, k->end, i64c(k, k->L - 1), ""), i64c(k, k->L), "");
  }
  LLVMBuildStore(B_, r0, rp);
  LLVMBasicBlockRef rc = LLVMAppendBasicBlockInContext(C, k->fn, "rcond");
  LLVMBasicBlockRef rb = LLVMAppendBasicBlockInContext(C, k->fn, "rbody");
  LLVMBasicBlockRef rdone = LLVMAppendBasicBlockInContext(C, k->fn, "rdone");
  LLVMBuildBr(B_, rc);
  LLVMPositionBuilderAtEnd(B_, rc);
  LLVMValueRef r = LLVMBuildLoad2(B_, i64, rp, "");
  LLVMBuildCondBr(B_, LLVMBuildICmp(B_, LLVMIntSLT, r, r1, ""), rb, rdone);
  LLVMPositionBuilderAtEnd(B_, rb);
  k->rowidx = LLVMBuildLoad2(B_, i64, rp, "r");
  memset(k->rowv, 0, nv * sizeof *k->rowv);
  memset(k->rowx, 0, nv * sizeof *k->rowx);
  row_bases(k);
  LLVMValueRef j0 = i64c(k, 0), j1 = i64c(k, k->L);
  if (k->rowwise) {
    for (int32_t i = sig->first; i < sig->end; i++) row_scope_op(k, i);
  } else {
    LLVMValueRef start = LLVMBuildMul(B_, k->rowidx, i64c(k, k->L), "");
    LLVMValueRef b = LLVMBuildSub(B_, k->begin, start, ""), e = LLVMBuildSub(B_, k->end, start, "");
    j0 = LLVMBuildSelect(B_, LLVMBuildICmp(B_, LLVMIntSGT, b, j0, ""), b, j0, "j0");
    j1 = LLVMBuildSelect(B_, LLVMBuildICmp(B_, LLVMIntSLT, e, j1, ""), e, j1, "j1");
  }
  if (s.nstore || s.nacc) emit_segment(k, &s, j0, j1);
  for (int32_t o = 0; o < sig->nout && k->rowwise; o++) {
    int32_t v = sig->out[o];
    if (lv(k, v) == PTC_GROUP_ROW) store(k, k->out_slot[v], vty(k, v)->dtype, k->rowidx, k->rowv[v]);
  }
  LLVMBuildStore(B_, LLVMBuildAdd(B_, k->rowidx, i64c(k, 1), ""), rp);
  LLVMBuildBr(B_, rc);

  /* scalar outputs: written by the call that starts the work */
  LLVMPositionBuilderAtEnd(B_, rdone);
  LLVMBasicBlockRef st = LLVMAppendBasicBlockInContext(C, k->fn, "scalars");
  LLVMBasicBlockRef ret = LLVMAppendBasicBlockInContext(C, k->fn, "ret");
  LLVMBuildCondBr(B_, LLVMBuildICmp(B_, LLVMIntEQ, k->begin, i64c(k, 0), ""), st, ret);
  LLVMPositionBuilderAtEnd(B_, st);
  for (int32_t o = 0; o < sig->nout; o++) {
    int32_t v = sig->out[o];
    if (lv(k, v) == PTC_GROUP_SCALAR)
      store(k, k->out_slot[v], vty(k, v)->dtype, i64c(k, 0), k->scal[v]);
  }
  LLVMBuildBr(B_, ret);
  LLVMPositionBuilderAtEnd(B_, ret);
  LLVMBuildRet(B_, LLVMBuildLoad2(B_, i32, k->status, ""));

  free(s.store);
  free(s.acc);
  kern_free(k);
  return 0;
}
