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
 * The ops' arithmetic is not written here: each op's math is a program of
 * codegen/opmath.h (the one description the CUDA emitter prints too), and
 * om_build turns a program into instructions, one case per node kind.
 * This file supplies the programs' leaves (operands at the loop position,
 * row statistics, reductions, column indices) and the loops around them.
 * Semantics are those of ir/eval.c, computed in f32 (bias corrections of
 * AdamW in double, as the runtime's kernel does).
 *
 * bf16 / f16 values are computed in f32 too: the emitter works on a view of
 * the function with every 16-bit type read as f32, and only the loads and
 * stores of a 16-bit buffer know better -- a load widens (exactly), a store
 * rounds to nearest even as runtime/half.h does, bit for bit.  A 16-bit
 * value that never leaves the group is never rounded (docs/fusion.md,
 * "16-bit values").
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
  ptc_dtype *slot_dt; /* [nslot] the buffer's dtype (bf16 / f16: 16-bit storage) */
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
  ptc_opmath **ew;       /* [ops] element-wise ops' programs (opmath.h) */
  ptc_om_rowop **rop;    /* [ops] row ops' descriptions */
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

static bool is_half(ptc_dtype t) { return t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16; }

/* The element type a slot's buffer holds: a 16-bit slot holds i16 (bf16,
 * handled as bits) or half (f16); other slots hold their value's type. */
static LLVMTypeRef elem_type(kern *k, int32_t slot, ptc_dtype t, int lanes) {
  LLVMTypeRef e;
  switch (k->slot_dt[slot]) {
  case PTC_DTYPE_BF16: e = LLVMInt16TypeInContext(k->g->C); break;
  case PTC_DTYPE_F16: e = LLVMHalfTypeInContext(k->g->C); break;
  default: return ptc__cg_type(k->g, t, lanes);
  }
  return lanes > 1 ? LLVMVectorType(e, (unsigned)lanes) : e;
}

static LLVMValueRef gep(kern *k, int32_t slot, ptc_dtype t, LLVMValueRef idx) {
  return LLVMBuildGEP2(B_, elem_type(k, slot, t, 1), k->ptr[slot], &idx, 1, "");
}

/* lanes elements of a slot from idx on, as t (a 16-bit slot: widened to f32,
 * exactly: bf16 is an f32's top half, every f16 is an f32). */
static LLVMValueRef load(kern *k, int32_t slot, ptc_dtype t, LLVMValueRef idx, int lanes) {
  ptc_dtype st = k->slot_dt[slot];
  LLVMValueRef p = gep(k, slot, t, idx);
  LLVMTypeRef ty = elem_type(k, slot, t, lanes);
  if (lanes > 1) p = LLVMBuildBitCast(B_, p, LLVMPointerType(ty, 0), "");
  LLVMValueRef v = LLVMBuildLoad2(B_, ty, p, "");
  LLVMSetAlignment(v, (unsigned)ptc_dtype_size(is_half(st) ? st : t));
  if (st == PTC_DTYPE_BF16) {
    v = LLVMBuildZExt(B_, v, ptc__cg_i32(k->g, lanes), "");
    v = LLVMBuildShl(B_, v, ptc__cg_ci32(k->g, lanes, 16), "");
    v = LLVMBuildBitCast(B_, v, ptc__cg_f32(k->g, lanes), "");
  } else if (st == PTC_DTYPE_F16) {
    v = LLVMBuildFPExt(B_, v, ptc__cg_f32(k->g, lanes), "");
  }
  return v;
}

/* f32 val rounded to bf16 bits as runtime/half.h does it: a NaN stays a
 * quiet NaN with its sign, everything else rounds to nearest even on the
 * bit pattern (overflowing to an infinity). */
static LLVMValueRef round_bf16(kern *k, LLVMValueRef val) {
  int l = ptc__cg_lanes(val);
  LLVMValueRef u = LLVMBuildBitCast(B_, val, ptc__cg_i32(k->g, l), "");
  LLVMValueRef hi = LLVMBuildLShr(B_, u, ptc__cg_ci32(k->g, l, 16), "");
  LLVMValueRef ax = LLVMBuildAnd(B_, u, ptc__cg_ci32(k->g, l, 0x7fffffff), "");
  LLVMValueRef nan = LLVMBuildICmp(B_, LLVMIntUGT, ax, ptc__cg_ci32(k->g, l, 0x7f800000), "");
  LLVMValueRef qnan = LLVMBuildOr(B_, hi, ptc__cg_ci32(k->g, l, 0x40), "");
  LLVMValueRef odd = LLVMBuildAnd(B_, hi, ptc__cg_ci32(k->g, l, 1), "");
  LLVMValueRef r = LLVMBuildAdd(B_, u, LLVMBuildAdd(B_, odd, ptc__cg_ci32(k->g, l, 0x7fff), ""), "");
  r = LLVMBuildLShr(B_, r, ptc__cg_ci32(k->g, l, 16), "");
  r = LLVMBuildSelect(B_, nan, qnan, r, "");
  LLVMTypeRef i16 = LLVMInt16TypeInContext(k->g->C);
  return LLVMBuildTrunc(B_, r, l > 1 ? LLVMVectorType(i16, (unsigned)l) : i16, "");
}

/* Stores val (lanes from idx on); a 16-bit slot gets val rounded once, here
 * (bf16: round_bf16; f16: fptrunc, IEEE round to nearest even with
 * subnormals and overflow to infinity, as runtime/half.h). */
static void store(kern *k, int32_t slot, ptc_dtype t, LLVMValueRef idx, LLVMValueRef val) {
  ptc_dtype st = k->slot_dt[slot];
  int lanes = ptc__cg_lanes(val);
  if (st == PTC_DTYPE_BF16) val = round_bf16(k, val);
  else if (st == PTC_DTYPE_F16) val = LLVMBuildFPTrunc(B_, val, elem_type(k, slot, t, lanes), "");
  LLVMValueRef p = gep(k, slot, t, idx);
  if (lanes > 1) p = LLVMBuildBitCast(B_, p, LLVMPointerType(LLVMTypeOf(val), 0), "");
  LLVMValueRef s = LLVMBuildStore(B_, val, p);
  LLVMSetAlignment(s, (unsigned)ptc_dtype_size(is_half(st) ? st : t));
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
static void emit_ew(kern *k, int32_t opi, LLVMValueRef *in, int lanes, LLVMValueRef *out);
static LLVMValueRef rowop_elem(kern *k, int32_t opi, int32_t r, pos *p);
static LLVMValueRef *fresh_cache(kern *k);

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
    if (k->rop[opi - k->sig->first]) {
      r = rowop_elem(k, opi, k->f->values[v].res, p);
    } else {
      LLVMValueRef in[8], out[4];
      PTC_ASSERT(op->nin <= 8 && op->nout <= 4);
      for (int32_t a = 0; a < op->nin; a++) in[a] = eval(k, op->in[a], p);
      emit_ew(k, opi, in, p->lanes, out);
      for (int32_t a = 0; a < op->nout; a++) p->cache[op->out[a]] = out[a];
      return p->cache[v];
    }
  }
  p->cache[v] = r;
  return r;
}

/* ---- the ops' math: opmath programs to instructions ------------------------- */

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

static bool is_float(ptc_dtype t) { return t == PTC_DTYPE_F32 || t == PTC_DTYPE_F64; }

/* x converted from `from` to `to` (float to integer truncates).  f64 only
 * appears in once-per-call programs, as a scalar. */
static LLVMValueRef convert(kern *k, LLVMValueRef x, ptc_dtype from, ptc_dtype to, int l) {
  if (from == to) return x;
  LLVMTypeRef t = to == PTC_DTYPE_F64 ? LLVMDoubleTypeInContext(k->g->C) : ptc__cg_type(k->g, to, l);
  if (is_float(from) && is_float(to))
    return to == PTC_DTYPE_F64 ? LLVMBuildFPExt(B_, x, t, "") : LLVMBuildFPTrunc(B_, x, t, "");
  if (is_float(from)) return LLVMBuildFPToSI(B_, x, t, "");
  if (is_float(to)) return LLVMBuildSIToFP(B_, x, t, "");
  return to == PTC_DTYPE_I64 ? LLVMBuildSExt(B_, x, t, "") : LLVMBuildTrunc(B_, x, t, "");
}

static unsigned int_bits(LLVMValueRef v) {
  LLVMTypeRef t = LLVMTypeOf(v);
  if (LLVMGetTypeKind(t) == LLVMVectorTypeKind) t = LLVMGetElementType(t);
  return LLVMGetIntTypeWidth(t);
}

/* Column indices j, j+1, ... as i32 (a row is shorter than 2^31: checked
 * when the kernel is made), cheaper to compare than i64 lanes. */
static LLVMValueRef columns(kern *k, pos *p) {
  LLVMValueRef j32 = LLVMBuildTrunc(B_, p->j, ptc__cg_i32(k->g, 1), "");
  LLVMValueRef j = ptc__cg_splat(k->g, j32, p->lanes);
  return p->lanes > 1 ? LLVMBuildAdd(B_, j, k->iota, "") : j;
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

/* Where a program's leaves come from. */
typedef struct omenv {
  int32_t opi;
  int lanes;
  LLVMValueRef *in;        /* element-wise ops, optimizer factors: the operands */
  pos *p;                  /* row ops' per-column programs: operands at p (else per row) */
  const LLVMValueRef *red; /* a phase's statistics program: its reductions */
} omenv;

/* Operand a of a row op's program (n->a[1] >= 0: at the column that row
 * statistic holds, the logit of a cross-entropy target). */
static LLVMValueRef om_operand(kern *k, const omenv *e, const ptc_om_node *n) {
  const ptc_op *op = &k->f->ops[e->opi];
  int32_t v = op->in[n->a[0]];
  if (n->a[1] >= 0) {
    pos q = {1, k->aux[e->opi - k->sig->first][n->a[1]], fresh_cache(k)};
    LLVMValueRef r = eval(k, v, &q);
    free(q.cache);
    return r;
  }
  if (e->p) return eval(k, v, e->p);
  const ptc_om_rowop *r = k->rop[e->opi - k->sig->first];
  return eval_row(k, v, r && r->row_operand[n->a[0]] ? ROWM : FULL);
}

/* Builds the instructions of program pr, one case per node kind, over
 * e->lanes lanes, and returns its results in out[] (a statistics
 * program's results also go to the op's statistics, k->aux).  The node
 * forms map one to one: fma to llvm.fmuladd, exp / log / tanh to the
 * polynomial transcendentals of cpu_math.c, sqrt and pow to their LLVM
 * intrinsics, max to `a > b ? a : b`, select to an fcmp (ordered) or a
 * signed icmp and a select.  Column indices are i32 (COL), so an integer
 * comparison narrows its wider side. */
static void om_build(kern *k, const ptc_opmath *pr, const omenv *e, LLVMValueRef *out) {
  LLVMValueRef v[PTC_OM_MAX_NODES];
  LLVMValueRef *aux = k->aux[e->opi - k->sig->first];
  const ptc_op *op = &k->f->ops[e->opi];
  ptc_cg *g = k->g;
  int l = e->lanes;
  for (int i = 0; i < pr->n; i++) {
    const ptc_om_node *n = &pr->node[i];
    ptc_dtype dt = (ptc_dtype)n->dt;
    bool fl = is_float(dt);
    bool arith = n->kind >= PTC_OM_ADD;
    LLVMValueRef a = arith && n->a[0] >= 0 ? v[n->a[0]] : NULL;
    LLVMValueRef b = arith && n->a[1] >= 0 ? v[n->a[1]] : NULL;
    LLVMValueRef r;
    switch ((ptc_om_kind)n->kind) {
    case PTC_OM_IN: r = e->in ? e->in[n->a[0]] : om_operand(k, e, n); break;
    case PTC_OM_AUX: case PTC_OM_STAT:
      PTC_ASSERT(n->a[0] < NAUX && aux[n->a[0]]);
      r = ptc__cg_splat(g, aux[n->a[0]], l);
      break;
    case PTC_OM_RED: r = e->red[n->a[0]]; break;
    case PTC_OM_COL: r = columns(k, e->p); break;
    case PTC_OM_TARGET: r = target_of(k, op->in[n->a[0]], (int64_t)n->k); break;
    case PTC_OM_CONST:
      r = dt == PTC_DTYPE_F64 ? LLVMConstReal(LLVMDoubleTypeInContext(g->C), n->k)
                              : ptc__cg_const(g, dt, l, n->k);
      break;
    case PTC_OM_ADD: r = fl ? LLVMBuildFAdd(B_, a, b, "") : LLVMBuildAdd(B_, a, b, ""); break;
    case PTC_OM_SUB: r = fl ? LLVMBuildFSub(B_, a, b, "") : LLVMBuildSub(B_, a, b, ""); break;
    case PTC_OM_MUL: r = fl ? LLVMBuildFMul(B_, a, b, "") : LLVMBuildMul(B_, a, b, ""); break;
    case PTC_OM_DIV: r = fl ? LLVMBuildFDiv(B_, a, b, "") : int_div(k, dt, l, a, b); break;
    case PTC_OM_MAX:
      r = fl ? ptc__cg_fmax(g, a, b)
             : LLVMBuildSelect(B_, LLVMBuildICmp(B_, LLVMIntSGT, a, b, ""), a, b, "");
      break;
    case PTC_OM_NEG: r = fl ? LLVMBuildFNeg(B_, a, "") : LLVMBuildNeg(B_, a, ""); break;
    case PTC_OM_FMA: r = ptc__cg_fma(g, a, b, v[n->a[2]]); break;
    case PTC_OM_EXP: PTC_ASSERT(dt == PTC_DTYPE_F32); r = ptc__cg_exp(g, a); break;
    case PTC_OM_LOG: PTC_ASSERT(dt == PTC_DTYPE_F32); r = ptc__cg_log(g, a); break;
    case PTC_OM_TANH: PTC_ASSERT(dt == PTC_DTYPE_F32); r = ptc__cg_tanh(g, a); break;
    case PTC_OM_SQRT: r = ptc__cg_intrinsic(g, "llvm.sqrt", &a, 1); break;
    case PTC_OM_POW: {
      LLVMValueRef args[2] = {a, b};
      r = ptc__cg_intrinsic(g, "llvm.pow", args, 2);
      break;
    }
    case PTC_OM_CVT: r = convert(k, a, (ptc_dtype)pr->node[n->a[0]].dt, dt, l); break;
    case PTC_OM_SELECT: {
      LLVMValueRef c;
      if (is_float((ptc_dtype)pr->node[n->a[0]].dt)) {
        static const LLVMRealPredicate rp[] = {LLVMRealOGT, LLVMRealOGE, LLVMRealOEQ, LLVMRealOLT};
        c = LLVMBuildFCmp(B_, rp[n->pred], a, b, "");
      } else {
        static const LLVMIntPredicate ip[] = {LLVMIntSGT, LLVMIntSGE, LLVMIntEQ, LLVMIntSLT};
        if (int_bits(a) > int_bits(b)) a = LLVMBuildTrunc(B_, a, LLVMTypeOf(b), "");
        if (int_bits(b) > int_bits(a)) b = LLVMBuildTrunc(B_, b, LLVMTypeOf(a), "");
        c = LLVMBuildICmp(B_, ip[n->pred], a, b, "");
      }
      r = LLVMBuildSelect(B_, c, v[n->a[2]], v[n->a[3]], "");
      break;
    }
    default: PTC_UNREACHABLE();
    }
    v[i] = r;
  }
  for (int o = 0; o < pr->nout; o++) {
    out[o] = v[pr->out[o]];
    if (pr->dst[o] >= 0) {
      PTC_ASSERT(pr->dst[o] < NAUX);
      aux[pr->dst[o]] = out[o];
    }
  }
}

/* ---- element-wise ops ------------------------------------------------------- */

/* The results of element-wise op opi from its operand values in[]. */
static void emit_ew(kern *k, int32_t opi, LLVMValueRef *in, int lanes, LLVMValueRef *out) {
  const ptc_opmath *pr = k->ew[opi - k->sig->first];
  PTC_ASSERT(pr); /* ptc_op_fusible admits no op opmath does not describe */
  omenv e = {.opi = opi, .lanes = lanes, .in = in};
  om_build(k, pr, &e, out);
}

/* The once-per-call factors of an optimizer op (its lr and step are
 * SCALAR values, checked by the analysis): k->aux of the op. */
static void optimizer_aux(kern *k, int32_t opi) {
  const ptc_op *op = &k->f->ops[opi];
  ptc_opmath pr;
  ptc_om_optimizer_aux(k->f, op, &pr);
  LLVMValueRef in[8], out[PTC_OM_MAX_OUT];
  PTC_ASSERT(op->nin <= 8 && pr.nout <= NAUX);
  for (int32_t a = 0; a < op->nin; a++) in[a] = k->scal[op->in[a]];
  omenv e = {.opi = opi, .lanes = 1, .in = in};
  om_build(k, &pr, &e, out);
  for (int o = 0; o < pr.nout; o++) k->aux[opi - k->sig->first][o] = out[o];
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

/* A phase's per-column program: the values it reduces. */
typedef struct phase_cl {
  int32_t opi;
  const ptc_opmath *elem;
} phase_cl;

static void phase_fn(kern *k, pos *p, LLVMValueRef *vals, void *cl) {
  const phase_cl *c = cl;
  omenv e = {.opi = c->opi, .lanes = p->lanes, .p = p};
  om_build(k, c->elem, &e, vals);
}

/* A reduction op's operand. */
static void operand_fn(kern *k, pos *p, LLVMValueRef *vals, void *cl) {
  const int32_t *opi = cl;
  vals[0] = eval(k, k->f->ops[*opi].in[0], p);
}

/* Whether phases ph, ph+1 of r are a max over an operand and the online
 * sum of exp(x - max) after it (a softmax's statistics): *operand, and the
 * statistics they set. */
static bool softmax_pair(const ptc_om_rowop *r, int ph, int *operand, int16_t *smax,
                         int16_t *ssum) {
  if (ph + 1 >= r->nphase || !r->phase[ph + 1].online) return false;
  const ptc_om_phase *p = &r->phase[ph];
  if (p->nred != 1 || !p->max[0] || p->elem.n != 1 || p->elem.node[0].kind != PTC_OM_IN ||
      p->elem.node[0].a[1] >= 0 || p->stats.nout != 1 || r->phase[ph + 1].stats.nout != 1)
    return false;
  *operand = p->elem.node[0].a[0];
  *smax = p->stats.dst[0];
  *ssum = r->phase[ph + 1].stats.dst[0];
  return true;
}

/* Phases ph, ph+1 of op i when an earlier op of the group has computed the
 * same softmax statistics for this row (same value, same bound: a
 * cross-entropy and its gradient over the same logits): copied. */
static bool reuse_softmax(kern *k, int32_t i, int ph) {
  const ptc_om_rowop *r = k->rop[i - k->sig->first];
  int a, b;
  int16_t smax, ssum, omax, osum;
  if (!softmax_pair(r, ph, &a, &smax, &ssum)) return false;
  int32_t x = k->f->ops[i].in[a];
  for (int32_t j = k->sig->first; j < i; j++) {
    const ptc_om_rowop *o = k->rop[j - k->sig->first];
    LLVMValueRef *oa = k->aux[j - k->sig->first];
    for (int q = 0; o && q < o->nphase; q++) {
      if (!softmax_pair(o, q, &b, &omax, &osum) || k->f->ops[j].in[b] != x ||
          o->phase[q].bound != r->phase[ph].bound || !oa[omax] || !oa[osum])
        continue;
      k->aux[i - k->sig->first][smax] = oa[omax];
      k->aux[i - k->sig->first][ssum] = oa[osum];
      return true;
    }
  }
  return false;
}

/* Row-scope work of row op i: its per-row program, its phases (each a
 * reduction loop and its statistics), its per-row values, and a mean over
 * rows (the cross-entropy loss) added to its output. */
static void rowop_row(kern *k, int32_t i) {
  const ptc_op *op = &k->f->ops[i];
  const ptc_om_rowop *r = k->rop[i - k->sig->first];
  LLVMValueRef *aux = k->aux[i - k->sig->first], out[PTC_OM_MAX_OUT];
  omenv e = {.opi = i, .lanes = 1};
  om_build(k, &r->pre, &e, out);
  for (int ph = 0; ph < r->nphase; ph++) {
    if (reuse_softmax(k, i, ph)) {
      ph++;
      continue;
    }
    const ptc_om_phase *p = &r->phase[ph];
    phase_cl c = {i, &p->elem};
    LLVMValueRef red[2];
    PTC_ASSERT(p->nred <= 2);
    row_reduce(k, p->bound, p->nred, p->max, phase_fn, &c, red);
    e.red = red;
    om_build(k, &p->stats, &e, out);
    e.red = NULL;
  }
  om_build(k, &r->post, &e, out);
  for (int32_t o = 0; o < r->nres; o++) {
    int32_t slot = k->out_slot[op->out[o]];
    if (r->res_kind[o] != PTC_OM_RES_ROWMEAN || slot < 0) continue;
    LLVMValueRef cur = load(k, slot, PTC_DTYPE_F32, i64c(k, 0), 1);
    LLVMValueRef add = LLVMBuildFMul(B_, aux[r->row_stat[o]],
                                     CF(1, ptc_om_rowmean_scale(k->f, op, k->sig->work)), "");
    store(k, slot, PTC_DTYPE_F32, i64c(k, 0), LLVMBuildFAdd(B_, cur, add, ""));
  }
}

/* Element (result r) of a row op at p, from its statistics. */
static LLVMValueRef rowop_elem(kern *k, int32_t opi, int32_t r, pos *p) {
  const ptc_om_rowop *d = k->rop[opi - k->sig->first];
  PTC_ASSERT(d && r < d->nres && d->elem[r].nout == 1);
  omenv e = {.opi = opi, .lanes = p->lanes, .p = p};
  LLVMValueRef out[PTC_OM_MAX_OUT];
  om_build(k, &d->elem[r], &e, out);
  return out[0];
}

static bool any_result_needed(const kern *k, const ptc_op *op) {
  for (int32_t r = 0; r < op->nout; r++)
    if (k->need[op->out[r]]) return true;
  return false;
}

/* Row-scope work of op i (ROWWISE): statistics, per-row values. */
static void row_scope_op(kern *k, int32_t i) {
  const ptc_op *op = &k->f->ops[i];
  if (!any_result_needed(k, op)) return;
  if (k->rop[i - k->sig->first]) {
    rowop_row(k, i);
    return;
  }
  if (ptc_om_is_reduce(op->code)) {
    if (lv(k, op->out[0]) != PTC_GROUP_ROW) return; /* accumulated in the row loop */
    bool mx;
    double scale;
    ptc_om_reduce(k->f, op, &mx, &scale);
    LLVMValueRef s;
    row_reduce(k, k->L, 1, &mx, operand_fn, &i, &s);
    if (scale != 1.0) s = LLVMBuildFMul(B_, s, CF(1, scale), "");
    k->rowv[op->out[0]] = s;
    return;
  }
  if (lv(k, op->out[0]) == PTC_GROUP_ROW) { /* a per-row element-wise op */
    LLVMValueRef in[8], out[4];
    for (int32_t a = 0; a < op->nin; a++)
      in[a] = eval_row(k, op->in[a], k->sig->op_mode[i - k->sig->first]);
    emit_ew(k, i, in, 1, out);
    for (int32_t r = 0; r < op->nout; r++) k->rowv[op->out[r]] = out[r];
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
  free(k->slot_dt);
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
  for (int32_t i = 0; i < k->sig->end - k->sig->first; i++) {
    free(k->ew[i]);
    free(k->rop[i]);
  }
  free(k->ew);
  free(k->rop);
  free(k->aux);
}

int ptc__cg_emit_group(ptc_cg *g, ptc_func *f, const ptc_group_sig *sig, LLVMValueRef *fn) {
  /* The kernel computes in f32: it sees f with every bf16 / f16 type read
   * as f32 (the op programs of opmath then are f32 programs), and only its
   * loads and stores know a buffer's 16-bit dtype (slot_dt).  A 16-bit
   * value internal to the group is never rounded: it stays an f32. */
  ptc_dtype *slot_dt = ptc_xcalloc((size_t)(sig->nin + sig->nout) + 1, sizeof *slot_dt);
  for (int32_t s = 0; s < sig->nin + sig->nout; s++)
    slot_dt[s] = f->values[s < sig->nin ? sig->in[s] : sig->out[s - sig->nin]].type.dtype;
  ptc_value *wide_values = ptc_xmalloc(((size_t)f->nvalues + 1) * sizeof *wide_values);
  memcpy(wide_values, f->values, (size_t)f->nvalues * sizeof *wide_values);
  for (int32_t v = 0; v < f->nvalues; v++)
    if (is_half(wide_values[v].type.dtype)) wide_values[v].type.dtype = PTC_DTYPE_F32;
  ptc_func wide = *f;
  wide.values = wide_values;
  f = &wide;
  kern kk = {.g = g, .B = g->B, .f = f, .sig = sig, .W = g->W,
             .rowwise = sig->kind == PTC_GROUP_ROWWISE};
  kern *k = &kk;
  size_t nv = (size_t)f->nvalues + 1;
  k->nslot = sig->nin + sig->nout;
  k->ptr = ptc_xcalloc((size_t)k->nslot + 1, sizeof *k->ptr);
  k->slot_dt = slot_dt;
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
  k->ew = ptc_xcalloc((size_t)(sig->end - sig->first) + 1, sizeof *k->ew);
  k->rop = ptc_xcalloc((size_t)(sig->end - sig->first) + 1, sizeof *k->rop);
  for (int32_t i = sig->first; i < sig->end; i++) { /* each op's math, from opmath */
    const ptc_op *op = &f->ops[i];
    if (ptc_om_is_rowop(op->code)) {
      k->rop[i - sig->first] = ptc_xmalloc(sizeof(ptc_om_rowop));
      int rc = ptc_om_rowop_describe(f, op, k->rop[i - sig->first]);
      PTC_ASSERT(rc == 0);
    } else if (!ptc_om_is_reduce(op->code)) {
      ptc_opmath pr;
      if (ptc_om_elementwise(f, op, &pr) == 0) {
        k->ew[i - sig->first] = ptc_xmalloc(sizeof pr);
        *k->ew[i - sig->first] = pr;
      }
    }
  }
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
    k->ptr[s] = LLVMBuildBitCast(B_, pp, LLVMPointerType(elem_type(k, s, vty(k, v)->dtype, 1), 0),
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
    emit_ew(k, i, in, 1, out);
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
    a->scale = 1.0;
    bool mx;
    if (red) ptc_om_reduce(f, op, &mx, &a->scale);
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
  free(wide_values);
  return 0;
}
