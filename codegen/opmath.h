/* opmath.h -- the scalar math of every fusible op, written once.
 *
 * A fused group's kernel is a loop nest (codegen/cpu_emit.c for LLVM,
 * codegen/cuda_emit.c for CUDA C) around the ops' arithmetic.  The loop
 * nests differ by target; the arithmetic must not.  This file describes it
 * as data: each op becomes a small straight-line *program* of typed nodes
 * (add, mul, fma, exp, select, ...), and every consumer walks the same
 * program -- the CUDA emitter prints it as C statements, the LLVM emitter
 * builds instructions from it, and ptc_om_run interprets it (the unit test
 * tests/unit/test_opmath.c holds that interpretation against ir/eval.c for
 * every fusible op).
 *
 * Element-wise ops (ptc_om_elementwise) are one program: operands in,
 * results out.  Optimizers also have a once-per-call program
 * (ptc_om_optimizer_aux: AdamW's bias corrections, in double) whose
 * results the element program reads as AUX nodes.
 *
 * Row ops (ptc_om_rowop) are a sequence of *phases* over one row of the
 * iteration shape: each phase reduces one or two element expressions
 * across the row's columns (sum or max) and then computes per-row
 * statistics from the reductions; after the phases come per-row values
 * (a cross-entropy loss), then one element program per result.  A phase
 * marked `online` is the sum of exp(x - m) whose m is the previous phase's
 * max over the same x: an emitter may compute the pair in one pass with a
 * running max (what the CUDA emitter does), or in two (the LLVM emitter).
 *
 * Node values have a dtype: f32 (all float arithmetic of the kernels), f64
 * (AdamW's 1 - beta^t, as the runtime computes it), i32 or i64 (integer
 * arithmetic, cross-entropy targets, column indices).  Integer division is
 * ir/eval.c's: truncated, 0 for a zero divisor, wrapping for MIN / -1.
 * MAX is `a > b ? a : b` (NaN in b propagates, NaN in a does not), as the
 * runtime's kernels have it.
 */
#ifndef PTC_OPMATH_H
#define PTC_OPMATH_H

#include "ir/ir.h"

typedef enum ptc_om_kind {
  PTC_OM_IN,     /* operand a[0] of the op (a[1] >= 0: read at column STAT(a[1])) */
  PTC_OM_AUX,    /* once-per-call factor a[0] (optimizers) */
  PTC_OM_STAT,   /* row statistic a[0] */
  PTC_OM_RED,    /* in a phase's statistics program: the phase's reduction a[0] */
  PTC_OM_COL,    /* the column index within the row (i64) */
  PTC_OM_TARGET, /* operand a[0] at this row as i64, checked against [0, k): an
                    index outside becomes 0 and flags the kernel's status */
  PTC_OM_CONST,  /* k */
  PTC_OM_ADD, PTC_OM_SUB, PTC_OM_MUL, PTC_OM_DIV, PTC_OM_MAX, PTC_OM_NEG,
  PTC_OM_FMA,    /* a0 * a1 + a2, rounded once */
  PTC_OM_EXP, PTC_OM_LOG, PTC_OM_SQRT, PTC_OM_TANH,
  PTC_OM_POW,    /* a0 ^ a1 (f64 only) */
  PTC_OM_CVT,    /* a0 converted to the node's dtype (f32 <-> int: truncation) */
  PTC_OM_SELECT, /* (a0 PRED a1) ? a2 : a3, compared in a0's dtype */
  PTC_OM_KIND_COUNT
} ptc_om_kind;

typedef enum ptc_om_pred { PTC_OM_GT, PTC_OM_GE, PTC_OM_EQ, PTC_OM_LT } ptc_om_pred;

enum { PTC_OM_MAX_NODES = 40, PTC_OM_MAX_OUT = 4, PTC_OM_MAX_STATS = 8, PTC_OM_MAX_PHASES = 3 };

typedef struct ptc_om_node {
  uint8_t kind;   /* ptc_om_kind */
  uint8_t pred;   /* ptc_om_pred (SELECT) */
  uint8_t dt;     /* ptc_dtype: F32, F64, I32 or I64 */
  int16_t a[4];   /* operand nodes (earlier in the program), or indices */
  double k;       /* CONST: the value (already rounded to dt); TARGET: classes */
} ptc_om_node;

/* A straight-line program: nodes in order, each reading earlier ones. */
typedef struct ptc_opmath {
  int16_t n;
  ptc_om_node node[PTC_OM_MAX_NODES];
  int16_t nout;
  int16_t out[PTC_OM_MAX_OUT]; /* result nodes */
  int16_t dst[PTC_OM_MAX_OUT]; /* statistics programs: the STAT each result sets */
} ptc_opmath;

typedef struct ptc_om_phase {
  int16_t nred;                /* 1 or 2 reductions */
  bool max[2];                 /* per reduction: max (else sum) */
  bool online;                 /* sum of exp(x - STAT) after a max over the same x */
  int64_t bound;               /* columns [0, bound) are reduced */
  ptc_opmath elem;             /* per column: the nred values to reduce */
  ptc_opmath stats;            /* per row: RED(i) -> STATs */
} ptc_om_phase;

/* What a row op's result is, per row. */
typedef enum ptc_om_result {
  PTC_OM_RES_ELEM,     /* one value per element: elem[r] */
  PTC_OM_RES_ROWMEAN,  /* one scalar: the mean over rows of STAT(row_stat[r]) */
  PTC_OM_RES_ROWSUM,   /* accumulated across rows: elem[r] summed over rows
                          (a gain's gradient [C]) */
} ptc_om_result;

typedef struct ptc_om_rowop {
  int16_t nstats;
  ptc_opmath pre;      /* per row, before the phases (targets) */
  int16_t nphase;
  ptc_om_phase phase[PTC_OM_MAX_PHASES];
  ptc_opmath post;     /* per row, after the phases (a loss, a scale) */
  int16_t nres;
  uint8_t res_kind[PTC_OM_MAX_OUT];
  int16_t row_stat[PTC_OM_MAX_OUT]; /* ROWMEAN: the stat */
  ptc_opmath elem[PTC_OM_MAX_OUT];  /* ELEM / ROWSUM: the element */
  /* operands read per row (ROW mode): cross-entropy targets */
  bool row_operand[8];
} ptc_om_rowop;

/* Whether op is a row op this file describes (softmax, layernorm, rmsnorm,
 * cross_entropy and their gradients). */
bool ptc_om_is_rowop(ptc_opcode code);
/* Whether op is a reduction (reduce_sum, reduce_mean, reduce_max). */
bool ptc_om_is_reduce(ptc_opcode code);

/* The element program of an element-wise op of f (every fusible op but the
 * row ops and reductions).  Operand dtypes come from f.  Returns 0, or -1
 * for an op it does not describe. */
int ptc_om_elementwise(const ptc_func *f, const ptc_op *op, ptc_opmath *p);
/* The once-per-call program of adamw / sgd (reads the op's scalar operands:
 * lr, step): its results are AUX(0..nout).  0 results for other ops. */
void ptc_om_optimizer_aux(const ptc_func *f, const ptc_op *op, ptc_opmath *p);
/* The description of a row op over rows of length L (the last dim of its
 * main operand).  Returns 0, or -1 when op is not a row op. */
int ptc_om_rowop_describe(const ptc_func *f, const ptc_op *op, ptc_om_rowop *r);
/* A reduction: max (else sum), and the factor of reduce_mean (1/count, else
 * 1).  Counts are the whole tensor's: on a partitioned function (local
 * types, shardings kept) a reduced dimension split over the mesh counts
 * every device's piece, as the runtime's kernels do, so a fused kernel's
 * mean is this device's share of the whole mean. */
void ptc_om_reduce(const ptc_func *f, const ptc_op *op, bool *max, double *scale);
/* The factor of a row-mean result (cross_entropy's loss) over `rows` rows
 * here: 1 / (rows x the pieces its targets are split into). */
double ptc_om_rowmean_scale(const ptc_func *f, const ptc_op *op, int64_t rows);
/* The product of the mesh pieces of value v over the dimensions in the
 * bit set dims (1: not split, or no mesh). */
int64_t ptc_om_split_parts(const ptc_func *f, int32_t v, uint32_t dims);

/* ---- the interpreter (the reference for both emitters) ---- */

/* Inputs of one evaluation.  Values are held as double and rounded to the
 * node's dtype after each node, so f32 programs give f32 results. */
typedef struct ptc_om_env {
  const double *in;    /* operands (scalars at this position) */
  double (*in_at)(void *cl, int32_t operand, int64_t col); /* IN with a column */
  void *cl;
  const double *aux;
  double *stat;
  const double *red;
  int64_t col;
  int32_t status;      /* set to 1 by a TARGET out of range */
} ptc_om_env;

/* Runs p; writes its results to out[0..nout). */
void ptc_om_run(const ptc_opmath *p, ptc_om_env *env, double *out);

/* Evaluates one fusible op over whole tensors the way the kernels do (f32
 * arithmetic, numpy broadcasting of operands to the result, row ops row by
 * row, reductions over their axes): ins[a] holds operand a's elements as
 * its type in f says, outs[r] receives result r's.  Returns the status (1:
 * a target out of range), or -1 when op is not fusible. */
int ptc_om_eval_op(const ptc_func *f, const ptc_op *op, const double *const *ins, double **outs);

/* Printable name of a node kind ("fma"). */
const char *ptc_om_kind_name(ptc_om_kind k);

/* Row-major strides of s right-aligned against an iteration shape of rank
 * tr: 0 where s broadcasts (its dimension is 1 or missing).  Both code
 * generators index a group's inputs with them. */
void ptc_om_align_strides(const ptc_type *s, int32_t tr, int64_t *st);

#endif /* PTC_OPMATH_H */
