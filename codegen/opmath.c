/* opmath.c -- the scalar math of the fusible ops as programs (opmath.h),
 * and their interpreter.
 *
 * Each builder below is the one place an op's arithmetic is written.  The
 * forms are chosen for f32: GELU is x s with s = 1 / (1 + e^{-2u}) (=
 * 0.5 (1 + tanh u)), which keeps its negative tail's relative precision
 * where 1 + tanh u would cancel; its gradient guards e^{-2u} = inf (s (1 -
 * s) is then 0, not inf * 0).  AdamW's bias corrections are computed in
 * double, as the runtime's kernel does.  Constants are rounded to their
 * node's dtype when the program is built, so every consumer sees the same
 * bits.
 */
#include "codegen/opmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define F32 PTC_DTYPE_F32
#define F64 PTC_DTYPE_F64
#define I64 PTC_DTYPE_I64

static double round_to(ptc_dtype dt, double v) {
  switch (dt) {
  case PTC_DTYPE_F32: return (double)(float)v;
  case PTC_DTYPE_I32: return isfinite(v) ? (double)(int32_t)(uint32_t)(int64_t)v : 0;
  case PTC_DTYPE_I64: return isfinite(v) ? (double)(int64_t)v : 0;
  default: return v;
  }
}

/* ---- building ------------------------------------------------------------- */

static int16_t node(ptc_opmath *p, ptc_om_kind kind, ptc_dtype dt, int a0, int a1, int a2, int a3,
                    double k) {
  PTC_ASSERT(p->n < PTC_OM_MAX_NODES);
  ptc_om_node *n = &p->node[p->n];
  n->kind = (uint8_t)kind;
  n->pred = 0;
  n->dt = (uint8_t)dt;
  n->a[0] = (int16_t)a0;
  n->a[1] = (int16_t)a1;
  n->a[2] = (int16_t)a2;
  n->a[3] = (int16_t)a3;
  n->k = k;
  return p->n++;
}

static ptc_dtype dt_of(const ptc_opmath *p, int16_t x) { return (ptc_dtype)p->node[x].dt; }
static int16_t IN(ptc_opmath *p, int a, ptc_dtype dt) { return node(p, PTC_OM_IN, dt, a, -1, -1, -1, 0); }
static int16_t IN_AT(ptc_opmath *p, int a, int stat) {
  return node(p, PTC_OM_IN, F32, a, stat, -1, -1, 0);
}
static int16_t AUX(ptc_opmath *p, int a) { return node(p, PTC_OM_AUX, F32, a, -1, -1, -1, 0); }
static int16_t ST(ptc_opmath *p, int a, ptc_dtype dt) { return node(p, PTC_OM_STAT, dt, a, -1, -1, -1, 0); }
static int16_t RED(ptc_opmath *p, int a) { return node(p, PTC_OM_RED, F32, a, -1, -1, -1, 0); }
static int16_t K(ptc_opmath *p, ptc_dtype dt, double v) {
  return node(p, PTC_OM_CONST, dt, -1, -1, -1, -1, round_to(dt, v));
}
static int16_t CF(ptc_opmath *p, double v) { return K(p, F32, v); }
static int16_t bin(ptc_opmath *p, ptc_om_kind k, int16_t x, int16_t y) {
  return node(p, k, dt_of(p, x), x, y, -1, -1, 0);
}
static int16_t un(ptc_opmath *p, ptc_om_kind k, int16_t x) { return node(p, k, dt_of(p, x), x, -1, -1, -1, 0); }
static int16_t ADD(ptc_opmath *p, int16_t x, int16_t y) { return bin(p, PTC_OM_ADD, x, y); }
static int16_t SUB(ptc_opmath *p, int16_t x, int16_t y) { return bin(p, PTC_OM_SUB, x, y); }
static int16_t MUL(ptc_opmath *p, int16_t x, int16_t y) { return bin(p, PTC_OM_MUL, x, y); }
static int16_t DIV(ptc_opmath *p, int16_t x, int16_t y) { return bin(p, PTC_OM_DIV, x, y); }
static int16_t FMA(ptc_opmath *p, int16_t x, int16_t y, int16_t z) {
  return node(p, PTC_OM_FMA, dt_of(p, x), x, y, z, -1, 0);
}
static int16_t EXP(ptc_opmath *p, int16_t x) { return un(p, PTC_OM_EXP, x); }
static int16_t SEL(ptc_opmath *p, ptc_om_pred pr, int16_t x, int16_t y, int16_t t, int16_t e) {
  int16_t n = node(p, PTC_OM_SELECT, dt_of(p, t), x, y, t, e, 0);
  p->node[n].pred = (uint8_t)pr;
  return n;
}
static int16_t CVT(ptc_opmath *p, int16_t x, ptc_dtype to) {
  return node(p, PTC_OM_CVT, to, x, -1, -1, -1, 0);
}
static void OUT(ptc_opmath *p, int16_t x) {
  PTC_ASSERT(p->nout < PTC_OM_MAX_OUT);
  p->dst[p->nout] = -1;
  p->out[p->nout++] = x;
}
static void SET(ptc_opmath *p, int stat, int16_t x) { /* a statistics program's result */
  PTC_ASSERT(p->nout < PTC_OM_MAX_OUT);
  p->dst[p->nout] = (int16_t)stat;
  p->out[p->nout++] = x;
}

static void init(ptc_opmath *p) { memset(p, 0, sizeof *p); }

/* A value's dtype in a program: bf16 / f16 values are computed in f32 (the
 * emitters load them widened and round what they store). */
static ptc_dtype vdt(const ptc_func *f, int32_t v) {
  ptc_dtype t = f->values[v].type.dtype;
  return t == PTC_DTYPE_BF16 || t == PTC_DTYPE_F16 ? PTC_DTYPE_F32 : t;
}

/* s = 1 / (1 + e^{-2u}), u = sqrt(2/pi) (x + 0.044715 x^3); *e = e^{-2u} */
static int16_t gelu_s(ptc_opmath *p, int16_t x, int16_t x2, int16_t *e) {
  int16_t in = FMA(p, MUL(p, x2, CF(p, 0.044715)), x, x);
  int16_t m2u = MUL(p, in, CF(p, -2 * 0.7978845608028654));
  *e = EXP(p, m2u);
  return DIV(p, CF(p, 1.0), ADD(p, CF(p, 1.0), *e));
}

static int16_t sigmoid(ptc_opmath *p, int16_t x) {
  return DIV(p, CF(p, 1.0), ADD(p, CF(p, 1.0), EXP(p, un(p, PTC_OM_NEG, x))));
}

int ptc_om_elementwise(const ptc_func *f, const ptc_op *op, ptc_opmath *p) {
  init(p);
  ptc_dtype dt = vdt(f, op->out[0]);
  bool fl = dt == F32;
  int16_t x = op->nin > 0 ? IN(p, 0, vdt(f, op->in[0])) : -1;
  int16_t y = op->nin > 1 ? IN(p, 1, vdt(f, op->in[1])) : -1;
  switch (op->code) {
  case PTC_OP_CONSTANT: OUT(p, K(p, dt, ptc_op_attr_float(op, "value", 0))); return 0;
  case PTC_OP_BROADCAST_TO: OUT(p, x); return 0;
  case PTC_OP_ADD: OUT(p, ADD(p, x, y)); return 0;
  case PTC_OP_SUB: OUT(p, SUB(p, x, y)); return 0;
  case PTC_OP_MUL: OUT(p, MUL(p, x, y)); return 0;
  case PTC_OP_DIV: OUT(p, DIV(p, x, y)); return 0;
  case PTC_OP_MAXIMUM: OUT(p, fl ? bin(p, PTC_OM_MAX, x, y) : SEL(p, PTC_OM_GT, x, y, x, y)); return 0;
  case PTC_OP_NEG: OUT(p, un(p, PTC_OM_NEG, x)); return 0;
  case PTC_OP_EXP: OUT(p, EXP(p, x)); return 0;
  case PTC_OP_LOG: OUT(p, un(p, PTC_OM_LOG, x)); return 0;
  case PTC_OP_SQRT: OUT(p, un(p, PTC_OM_SQRT, x)); return 0;
  case PTC_OP_RSQRT: OUT(p, DIV(p, CF(p, 1.0), un(p, PTC_OM_SQRT, x))); return 0;
  case PTC_OP_TANH: OUT(p, un(p, PTC_OM_TANH, x)); return 0;
  case PTC_OP_SIGMOID: OUT(p, sigmoid(p, x)); return 0;
  case PTC_OP_RELU: {
    int16_t z = CF(p, 0.0);
    OUT(p, SEL(p, PTC_OM_GT, x, z, x, z));
    return 0;
  }
  case PTC_OP_GELU: {
    int16_t e;
    OUT(p, MUL(p, x, gelu_s(p, x, MUL(p, x, x), &e)));
    return 0;
  }
  case PTC_OP_SILU:
    OUT(p, DIV(p, x, ADD(p, CF(p, 1.0), EXP(p, un(p, PTC_OM_NEG, x)))));
    return 0;
  case PTC_OP_CAST: OUT(p, CVT(p, x, dt)); return 0;
  case PTC_OP_COMPARE: {
    const char *c = ptc_op_attr(op, "cmp")->u.s;
    ptc_om_pred pr = strcmp(c, "ge") == 0 ? PTC_OM_GE : strcmp(c, "gt") == 0 ? PTC_OM_GT : PTC_OM_EQ;
    OUT(p, SEL(p, pr, x, y, CF(p, 1.0), CF(p, 0.0)));
    return 0;
  }
  case PTC_OP_RELU_GRAD: { /* g, x */
    int16_t z = CF(p, 0.0);
    OUT(p, SEL(p, PTC_OM_GT, y, z, x, z));
    return 0;
  }
  case PTC_OP_GELU_GRAD: {
    /* d/dx = s + 2 x s (1 - s) k (1 + 3 * 0.044715 x^2), 1 - s = e s */
    int16_t x2 = MUL(p, y, y), e;
    int16_t sg = gelu_s(p, y, x2, &e);
    int16_t s1 = MUL(p, e, sg);
    s1 = SEL(p, PTC_OM_EQ, e, CF(p, INFINITY), CF(p, 1.0), s1);
    int16_t inner = FMA(p, x2, CF(p, 3 * 0.044715), CF(p, 1.0));
    int16_t b = MUL(p, MUL(p, CF(p, 2 * 0.7978845608028654), y), MUL(p, MUL(p, sg, s1), inner));
    OUT(p, MUL(p, x, ADD(p, sg, b)));
    return 0;
  }
  case PTC_OP_SILU_GRAD: { /* s (1 + x (1 - s)) */
    int16_t s = sigmoid(p, y);
    int16_t d = MUL(p, s, FMA(p, y, SUB(p, CF(p, 1.0), s), CF(p, 1.0)));
    OUT(p, MUL(p, x, d));
    return 0;
  }
  case PTC_OP_ADAMW: { /* p, g, m, v, lr, step; AUX: lr, decay, 1/c1, 1/c2 */
    double b1 = ptc_op_attr_float(op, "beta1", 0.9), b2 = ptc_op_attr_float(op, "beta2", 0.999);
    double eps = ptc_op_attr_float(op, "eps", 1e-8);
    int16_t g = y, m = IN(p, 2, F32), v = IN(p, 3, F32);
    int16_t m1 = ADD(p, MUL(p, CF(p, b1), m), MUL(p, CF(p, 1.0f - (float)b1), g));
    int16_t v1 = ADD(p, MUL(p, CF(p, b2), v), MUL(p, MUL(p, CF(p, 1.0f - (float)b2), g), g));
    int16_t vh = MUL(p, v1, AUX(p, 3));
    int16_t den = ADD(p, un(p, PTC_OM_SQRT, vh), CF(p, eps));
    int16_t step = DIV(p, MUL(p, AUX(p, 0), MUL(p, m1, AUX(p, 2))), den);
    OUT(p, SUB(p, MUL(p, x, AUX(p, 1)), step));
    OUT(p, m1);
    OUT(p, v1);
    return 0;
  }
  case PTC_OP_SGD: { /* p, g, buf, lr; AUX: lr */
    double mom = ptc_op_attr_float(op, "momentum", 0), wd = ptc_op_attr_float(op, "weight_decay", 0);
    bool nest = ptc_op_attr_bool(op, "nesterov", false);
    int16_t d = FMA(p, CF(p, wd), x, y);
    int16_t buf = FMA(p, CF(p, mom), IN(p, 2, F32), d);
    int16_t upd = nest ? FMA(p, CF(p, mom), buf, d) : buf;
    OUT(p, SUB(p, x, MUL(p, AUX(p, 0), upd)));
    OUT(p, buf);
    return 0;
  }
  default: return -1;
  }
}

void ptc_om_optimizer_aux(const ptc_func *f, const ptc_op *op, ptc_opmath *p) {
  init(p);
  if (op->code == PTC_OP_SGD) {
    OUT(p, IN(p, 3, F32));
    return;
  }
  if (op->code != PTC_OP_ADAMW) return;
  double b1 = ptc_op_attr_float(op, "beta1", 0.9), b2 = ptc_op_attr_float(op, "beta2", 0.999);
  double wd = ptc_op_attr_float(op, "weight_decay", 0);
  int16_t lr = IN(p, 4, F32);
  int16_t t = CVT(p, IN(p, 5, vdt(f, op->in[5])), F64);
  int16_t c[2];
  double beta[2] = {b1, b2};
  for (int i = 0; i < 2; i++) { /* 1 / (1 - beta^t) in double */
    int16_t ci = SUB(p, K(p, F64, 1.0), bin(p, PTC_OM_POW, K(p, F64, beta[i]), t));
    c[i] = CVT(p, DIV(p, K(p, F64, 1.0), ci), F32);
  }
  OUT(p, lr);
  OUT(p, SUB(p, CF(p, 1.0), MUL(p, lr, CF(p, wd))));
  OUT(p, c[0]);
  OUT(p, c[1]);
}

bool ptc_om_is_rowop(ptc_opcode c) {
  return c == PTC_OP_SOFTMAX || c == PTC_OP_LAYERNORM || c == PTC_OP_RMSNORM ||
         c == PTC_OP_SOFTMAX_GRAD || c == PTC_OP_LAYERNORM_GRAD || c == PTC_OP_RMSNORM_GRAD ||
         c == PTC_OP_CROSS_ENTROPY || c == PTC_OP_CROSS_ENTROPY_GRAD;
}

bool ptc_om_is_reduce(ptc_opcode c) {
  return c == PTC_OP_REDUCE_SUM || c == PTC_OP_REDUCE_MEAN || c == PTC_OP_REDUCE_MAX;
}

int64_t ptc_om_split_parts(const ptc_func *f, int32_t v, uint32_t dims) {
  const ptc_value *val = &f->values[v];
  int64_t n = 1;
  if (!val->shard.present || !f->mod) return 1;
  for (int32_t d = 0; d < val->type.rank; d++)
    if (dims >> d & 1) n *= ptc_shard_parts(&f->mod->mesh, val->shard.dim_axes[d]);
  return n;
}

void ptc_om_reduce(const ptc_func *f, const ptc_op *op, bool *max, double *scale) {
  *max = op->code == PTC_OP_REDUCE_MAX;
  *scale = 1.0;
  if (op->code != PTC_OP_REDUCE_MEAN) return;
  /* the whole count: reduced dimensions split over the mesh count every piece */
  const ptc_attr *ax = ptc_op_attr(op, "axes");
  uint32_t dims = 0;
  for (int32_t a = 0; ax && a < ax->u.ints.n; a++) dims |= 1u << ax->u.ints.v[a];
  *scale = (double)ptc_type_numel(&f->values[op->out[0]].type) /
           (double)ptc_type_numel(&f->values[op->in[0]].type) /
           (double)ptc_om_split_parts(f, op->in[0], dims);
}

double ptc_om_rowmean_scale(const ptc_func *f, const ptc_op *op, int64_t rows) {
  int32_t tgt = op->code == PTC_OP_CROSS_ENTROPY ? op->in[1] : -1;
  double n = (double)rows * (double)(tgt >= 0 ? ptc_om_split_parts(f, tgt, ~0u) : 1);
  return 1.0 / n;
}

/* ---- row ops ---------------------------------------------------------------- */

static ptc_om_phase *phase(ptc_om_rowop *r, int64_t bound, int nred, bool max0, bool max1) {
  PTC_ASSERT(r->nphase < PTC_OM_MAX_PHASES);
  ptc_om_phase *ph = &r->phase[r->nphase++];
  ph->nred = (int16_t)nred;
  ph->max[0] = max0;
  ph->max[1] = max1;
  ph->bound = bound;
  init(&ph->elem);
  init(&ph->stats);
  return ph;
}

/* STAT(s) = max over [0, bound) of operand x; STAT(s+1) = 1 / sum exp(x - max) */
static void softmax_phases(ptc_om_rowop *r, int x, int64_t bound, int s) {
  ptc_om_phase *ph = phase(r, bound, 1, true, false);
  OUT(&ph->elem, IN(&ph->elem, x, F32));
  SET(&ph->stats, s, RED(&ph->stats, 0));
  ph = phase(r, bound, 1, false, false);
  ph->online = true;
  OUT(&ph->elem, EXP(&ph->elem, SUB(&ph->elem, IN(&ph->elem, x, F32), ST(&ph->elem, s, F32))));
  SET(&ph->stats, s + 1, DIV(&ph->stats, CF(&ph->stats, 1.0), RED(&ph->stats, 0)));
}

/* STAT(0) = mean (0 when not centred), STAT(1) = 1 / sqrt(var + eps) of operand x */
static void norm_phases(ptc_om_rowop *r, int x, int64_t L, double eps, bool centred) {
  double invc = 1.0 / (double)L;
  ptc_om_phase *ph;
  if (centred) {
    ph = phase(r, L, 1, false, false);
    OUT(&ph->elem, IN(&ph->elem, x, F32));
    SET(&ph->stats, 0, MUL(&ph->stats, RED(&ph->stats, 0), CF(&ph->stats, invc)));
    ph = phase(r, L, 1, false, false);
    int16_t d = SUB(&ph->elem, IN(&ph->elem, x, F32), ST(&ph->elem, 0, F32));
    OUT(&ph->elem, MUL(&ph->elem, d, d));
  } else {
    ph = phase(r, L, 1, false, false);
    int16_t v = IN(&ph->elem, x, F32);
    OUT(&ph->elem, MUL(&ph->elem, v, v));
    SET(&ph->stats, 0, CF(&ph->stats, 0.0));
  }
  ptc_opmath *s = &ph->stats;
  int16_t var = ADD(s, MUL(s, RED(s, 0), CF(s, invc)), CF(s, eps));
  SET(s, 1, DIV(s, CF(s, 1.0), un(s, PTC_OM_SQRT, var)));
}

/* (x - STAT0) * STAT1 */
static int16_t xhat(ptc_opmath *p, int x) {
  return MUL(p, SUB(p, IN(p, x, F32), ST(p, 0, F32)), ST(p, 1, F32));
}

int ptc_om_rowop_describe(const ptc_func *f, const ptc_op *op, ptc_om_rowop *r) {
  memset(r, 0, sizeof *r);
  if (!ptc_om_is_rowop(op->code)) return -1;
  bool grad = op->code == PTC_OP_LAYERNORM_GRAD || op->code == PTC_OP_RMSNORM_GRAD ||
              op->code == PTC_OP_CROSS_ENTROPY_GRAD;
  const ptc_type *xt = &f->values[op->in[grad ? 1 : 0]].type;
  int64_t L = xt->dims[xt->rank - 1];
  double eps = ptc_op_attr_float(op, "eps", 1e-5);
  r->nres = (int16_t)op->nout;
  ptc_opmath *e0 = &r->elem[0];
  for (int i = 0; i < PTC_OM_MAX_OUT; i++) init(&r->elem[i]);
  init(&r->pre);
  init(&r->post);
  switch (op->code) {
  case PTC_OP_SOFTMAX:
    r->nstats = 2;
    softmax_phases(r, 0, L, 0);
    OUT(e0, MUL(e0, EXP(e0, SUB(e0, IN(e0, 0, F32), ST(e0, 0, F32))), ST(e0, 1, F32)));
    return 0;
  case PTC_OP_LAYERNORM: case PTC_OP_RMSNORM: {
    r->nstats = 2;
    norm_phases(r, 0, L, eps, op->code == PTC_OP_LAYERNORM);
    int16_t y = MUL(e0, xhat(e0, 0), IN(e0, 1, F32));
    OUT(e0, op->code == PTC_OP_LAYERNORM ? ADD(e0, y, IN(e0, 2, F32)) : y);
    return 0;
  }
  case PTC_OP_SOFTMAX_GRAD: { /* g, y: y (g - sum(g y)) */
    r->nstats = 1;
    ptc_om_phase *ph = phase(r, L, 1, false, false);
    OUT(&ph->elem, MUL(&ph->elem, IN(&ph->elem, 0, F32), IN(&ph->elem, 1, F32)));
    SET(&ph->stats, 0, RED(&ph->stats, 0));
    OUT(e0, MUL(e0, IN(e0, 1, F32), SUB(e0, IN(e0, 0, F32), ST(e0, 0, F32))));
    return 0;
  }
  case PTC_OP_LAYERNORM_GRAD: case PTC_OP_RMSNORM_GRAD: { /* g, x, gamma -> dx, dgamma[, dbeta] */
    bool ln = op->code == PTC_OP_LAYERNORM_GRAD;
    r->nstats = 4;
    norm_phases(r, 1, L, eps, ln);
    ptc_om_phase *ph = phase(r, L, 2, false, false);
    ptc_opmath *pe = &ph->elem, *ps = &ph->stats;
    int16_t gg = MUL(pe, IN(pe, 0, F32), IN(pe, 2, F32));
    OUT(pe, gg);
    OUT(pe, MUL(pe, gg, xhat(pe, 1)));
    int16_t invc = CF(ps, 1.0 / (double)L);
    SET(ps, 2, ln ? MUL(ps, RED(ps, 0), invc) : CF(ps, 0.0));
    SET(ps, 3, MUL(ps, RED(ps, 1), invc));
    int16_t xh = xhat(e0, 1);
    int16_t g2 = MUL(e0, IN(e0, 0, F32), IN(e0, 2, F32));
    int16_t d = SUB(e0, SUB(e0, g2, ST(e0, 2, F32)), MUL(e0, xh, ST(e0, 3, F32)));
    OUT(e0, MUL(e0, ST(e0, 1, F32), d));
    ptc_opmath *e1 = &r->elem[1];
    r->res_kind[1] = PTC_OM_RES_ROWSUM;
    OUT(e1, MUL(e1, IN(e1, 0, F32), xhat(e1, 1)));
    if (ln) {
      ptc_opmath *e2 = &r->elem[2];
      r->res_kind[2] = PTC_OM_RES_ROWSUM;
      OUT(e2, IN(e2, 0, F32));
    }
    return 0;
  }
  case PTC_OP_CROSS_ENTROPY: { /* logits, targets -> mean loss */
    int64_t classes = ptc_op_attr_int(op, "classes", L);
    r->nstats = 4;
    r->row_operand[1] = true;
    SET(&r->pre, 2, node(&r->pre, PTC_OM_TARGET, I64, 1, -1, -1, -1, (double)classes));
    softmax_phases(r, 0, classes, 0);
    /* loss = log(sum) + max - x[t] = max - x[t] - log(1/sum) */
    ptc_opmath *q = &r->post;
    SET(q, 3, SUB(q, SUB(q, ST(q, 0, F32), IN_AT(q, 0, 2)), un(q, PTC_OM_LOG, ST(q, 1, F32))));
    r->res_kind[0] = PTC_OM_RES_ROWMEAN;
    r->row_stat[0] = 3;
    return 0;
  }
  case PTC_OP_CROSS_ENTROPY_GRAD: { /* g, logits, targets: g/rows (softmax - onehot) */
    int64_t classes = ptc_op_attr_int(op, "classes", L);
    /* the whole batch's rows, as the runtime's kernel counts them */
    int64_t rows = ptc_type_numel(&f->values[op->in[2]].type) * ptc_om_split_parts(f, op->in[2], ~0u);
    r->nstats = 4;
    r->row_operand[2] = true;
    SET(&r->pre, 3, node(&r->pre, PTC_OM_TARGET, I64, 2, -1, -1, -1, (double)classes));
    softmax_phases(r, 1, classes, 0);
    ptc_opmath *q = &r->post;
    SET(q, 2, MUL(q, IN(q, 0, F32), CF(q, 1.0 / (double)rows)));
    int16_t sm = MUL(e0, EXP(e0, SUB(e0, IN(e0, 1, F32), ST(e0, 0, F32))), ST(e0, 1, F32));
    int16_t col = node(e0, PTC_OM_COL, I64, -1, -1, -1, -1, 0);
    int16_t hit = SEL(e0, PTC_OM_EQ, col, ST(e0, 3, I64), CF(e0, 1.0), CF(e0, 0.0));
    int16_t v = MUL(e0, ST(e0, 2, F32), SUB(e0, sm, hit));
    if (classes < L) v = SEL(e0, PTC_OM_LT, col, K(e0, I64, (double)classes), v, CF(e0, 0.0));
    OUT(e0, v);
    return 0;
  }
  default: return -1;
  }
}

/* ---- the interpreter ----------------------------------------------------------- */

static double fmax_sel(double a, double b) { return a > b ? a : b; }

static double int_div(double x, double y, ptc_dtype dt) {
  int64_t a = (int64_t)x, b = (int64_t)y;
  if (b == 0) return 0;
  if (b == -1) return round_to(dt, (double)(int64_t)(0 - (uint64_t)a));
  return (double)(a / b);
}

void ptc_om_run(const ptc_opmath *p, ptc_om_env *env, double *out) {
  double v[PTC_OM_MAX_NODES];
  for (int i = 0; i < p->n; i++) {
    const ptc_om_node *n = &p->node[i];
    ptc_dtype dt = (ptc_dtype)n->dt;
    bool fl = dt == F32 || dt == F64;
    double a = n->a[0] >= 0 && n->kind >= PTC_OM_ADD ? v[n->a[0]] : 0;
    double b = n->a[1] >= 0 && n->kind >= PTC_OM_ADD ? v[n->a[1]] : 0;
    double r = 0;
    switch ((ptc_om_kind)n->kind) {
    case PTC_OM_IN:
      r = n->a[1] >= 0 ? env->in_at(env->cl, n->a[0], (int64_t)env->stat[n->a[1]]) : env->in[n->a[0]];
      break;
    case PTC_OM_AUX: r = env->aux[n->a[0]]; break;
    case PTC_OM_STAT: r = env->stat[n->a[0]]; break;
    case PTC_OM_RED: r = env->red[n->a[0]]; break;
    case PTC_OM_COL: r = (double)env->col; break;
    case PTC_OM_TARGET: {
      double t = floor(env->in[n->a[0]]);
      if (!(t >= 0 && t < n->k)) {
        env->status = 1;
        t = 0;
      }
      r = t;
      break;
    }
    case PTC_OM_CONST: r = n->k; break;
    case PTC_OM_ADD: r = a + b; break;
    case PTC_OM_SUB: r = a - b; break;
    case PTC_OM_MUL: r = a * b; break;
    case PTC_OM_DIV: r = fl ? a / b : int_div(a, b, dt); break;
    case PTC_OM_MAX: r = fmax_sel(a, b); break;
    case PTC_OM_NEG: r = -a; break;
    case PTC_OM_FMA: r = dt == F32 ? (double)fmaf((float)a, (float)b, (float)v[n->a[2]])
                                   : fma(a, b, v[n->a[2]]);
      break;
    case PTC_OM_EXP: r = dt == F32 ? (double)expf((float)a) : exp(a); break;
    case PTC_OM_LOG: r = dt == F32 ? (double)logf((float)a) : log(a); break;
    case PTC_OM_SQRT: r = dt == F32 ? (double)sqrtf((float)a) : sqrt(a); break;
    case PTC_OM_TANH: r = dt == F32 ? (double)tanhf((float)a) : tanh(a); break;
    case PTC_OM_POW: r = pow(a, b); break;
    case PTC_OM_CVT: r = fl ? a : trunc(a); break;
    case PTC_OM_SELECT: {
      bool c;
      switch ((ptc_om_pred)n->pred) {
      case PTC_OM_GT: c = a > b; break;
      case PTC_OM_GE: c = a >= b; break;
      case PTC_OM_EQ: c = a == b; break;
      default: c = a < b; break;
      }
      r = c ? v[n->a[2]] : v[n->a[3]];
      break;
    }
    default: PTC_UNREACHABLE();
    }
    v[i] = round_to(dt, r);
  }
  for (int i = 0; i < p->nout; i++) {
    out[i] = v[p->out[i]];
    if (p->dst[i] >= 0) env->stat[p->dst[i]] = out[i];
  }
}

const char *ptc_om_kind_name(ptc_om_kind k) {
  static const char *const names[PTC_OM_KIND_COUNT] = {
      "in", "aux", "stat", "red", "col", "target", "const", "add", "sub", "mul", "div", "max",
      "neg", "fma", "exp", "log", "sqrt", "tanh", "pow", "cvt", "select"};
  return (unsigned)k < PTC_OM_KIND_COUNT ? names[k] : "?";
}

/* ---- whole ops over tensors ------------------------------------------------------ */

/* Index into a tensor of type s of the element at flat index e of type t
 * (numpy broadcasting, right-aligned). */
static int64_t bcast(const ptc_type *t, const ptc_type *s, int64_t e) {
  int64_t idx = 0, stride = 1;
  for (int32_t d = t->rank - 1; d >= 0; d--) {
    int64_t c = e % t->dims[d];
    e /= t->dims[d];
    int32_t sd = s->rank - t->rank + d;
    if (sd < 0) continue;
    if (s->dims[sd] != 1) idx += c * stride;
    stride *= s->dims[sd];
  }
  return idx;
}

typedef struct row_cl {
  const ptc_func *f;
  const ptc_op *op;
  const double *const *ins;
  const ptc_type *x; /* the row op's main operand */
  int64_t row, L;
} row_cl;

static double row_in_at(void *cl, int32_t a, int64_t col) {
  row_cl *c = cl;
  const ptc_type *s = &c->f->values[c->op->in[a]].type;
  return c->ins[a][bcast(c->x, s, c->row * c->L + col)];
}

static void gather(row_cl *c, const ptc_om_rowop *r, int64_t col, double *in) {
  for (int32_t a = 0; a < c->op->nin; a++) {
    const ptc_type *s = &c->f->values[c->op->in[a]].type;
    if (r->row_operand[a]) {
      ptc_type rows = *c->x;
      rows.rank--;
      in[a] = c->ins[a][bcast(&rows, s, c->row)];
    } else {
      in[a] = c->ins[a][bcast(c->x, s, c->row * c->L + col)];
    }
  }
}

static int eval_rowop(const ptc_func *f, const ptc_op *op, const double *const *ins, double **outs) {
  ptc_om_rowop r;
  if (ptc_om_rowop_describe(f, op, &r) != 0) return -1;
  bool grad = op->code == PTC_OP_LAYERNORM_GRAD || op->code == PTC_OP_RMSNORM_GRAD ||
              op->code == PTC_OP_CROSS_ENTROPY_GRAD;
  const ptc_type *x = &f->values[op->in[grad ? 1 : 0]].type;
  int64_t L = x->dims[x->rank - 1], rows = ptc_type_numel(x) / L;
  for (int32_t o = 0; o < op->nout; o++)
    if (r.res_kind[o] != PTC_OM_RES_ELEM)
      memset(outs[o], 0, (size_t)ptc_type_numel(&f->values[op->out[o]].type) * sizeof(double));
  row_cl c = {f, op, ins, x, 0, L};
  double in[8], stat[PTC_OM_MAX_STATS] = {0}, red[2], tmp[PTC_OM_MAX_OUT];
  int status = 0;
  for (int64_t row = 0; row < rows; row++) {
    c.row = row;
    ptc_om_env env = {in, row_in_at, &c, NULL, stat, red, 0, 0};
    gather(&c, &r, 0, in);
    ptc_om_run(&r.pre, &env, tmp);
    for (int ph = 0; ph < r.nphase; ph++) {
      const ptc_om_phase *p = &r.phase[ph];
      for (int i = 0; i < p->nred; i++) red[i] = p->max[i] ? -INFINITY : 0.0;
      for (int64_t j = 0; j < p->bound; j++) {
        gather(&c, &r, j, in);
        env.col = j;
        ptc_om_run(&p->elem, &env, tmp);
        for (int i = 0; i < p->nred; i++)
          red[i] = p->max[i] ? fmax_sel(tmp[i], red[i]) : (double)(float)(red[i] + tmp[i]);
      }
      ptc_om_run(&p->stats, &env, tmp);
    }
    gather(&c, &r, 0, in);
    ptc_om_run(&r.post, &env, tmp);
    for (int32_t o = 0; o < op->nout; o++) {
      if (r.res_kind[o] == PTC_OM_RES_ROWMEAN) {
        outs[o][0] += stat[r.row_stat[o]] / (double)rows;
        continue;
      }
      for (int64_t j = 0; j < L; j++) {
        gather(&c, &r, j, in);
        env.col = j;
        ptc_om_run(&r.elem[o], &env, tmp);
        if (r.res_kind[o] == PTC_OM_RES_ELEM) outs[o][row * L + j] = tmp[0];
        else outs[o][j] += tmp[0];
      }
    }
    status |= env.status;
  }
  return status;
}

int ptc_om_eval_op(const ptc_func *f, const ptc_op *op, const double *const *ins, double **outs) {
  if (ptc_om_is_rowop(op->code)) return eval_rowop(f, op, ins, outs);
  if (ptc_om_is_reduce(op->code)) {
    bool mx;
    double scale;
    ptc_om_reduce(f, op, &mx, &scale);
    const ptc_type *t = &f->values[op->in[0]].type;
    const ptc_attr *ax = ptc_op_attr(op, "axes");
    bool red[PTC_MAX_RANK] = {false};
    for (int32_t i = 0; i < ax->u.ints.n; i++) red[ax->u.ints.v[i]] = true;
    int64_t nout = ptc_type_numel(&f->values[op->out[0]].type);
    for (int64_t i = 0; i < nout; i++) outs[0][i] = mx ? -INFINITY : 0.0;
    for (int64_t e = 0; e < ptc_type_numel(t); e++) {
      int64_t rem = e, oi = 0, os = 1;
      for (int32_t d = t->rank - 1; d >= 0; d--) {
        int64_t cd = rem % t->dims[d];
        rem /= t->dims[d];
        if (red[d]) continue;
        oi += cd * os;
        os *= t->dims[d];
      }
      double v = (double)(float)(ins[0][e] * scale);
      outs[0][oi] = mx ? fmax_sel(v, outs[0][oi]) : outs[0][oi] + v;
    }
    return 0;
  }
  ptc_opmath p, aux;
  if (ptc_om_elementwise(f, op, &p) != 0) return -1;
  ptc_om_optimizer_aux(f, op, &aux);
  double in[8], auxv[PTC_OM_MAX_OUT], out[PTC_OM_MAX_OUT];
  const ptc_type *t = &f->values[op->out[0]].type;
  ptc_om_env env = {in, NULL, NULL, auxv, NULL, NULL, 0, 0};
  if (aux.nout) {
    for (int32_t a = 0; a < op->nin; a++) in[a] = ins[a][0];
    ptc_om_run(&aux, &env, auxv);
  }
  for (int64_t e = 0; e < ptc_type_numel(t); e++) {
    for (int32_t a = 0; a < op->nin; a++) in[a] = ins[a][bcast(t, &f->values[op->in[a]].type, e)];
    ptc_om_run(&p, &env, out);
    for (int32_t r = 0; r < op->nout; r++) outs[r][e] = out[r];
  }
  return 0;
}

void ptc_om_align_strides(const ptc_type *s, int32_t tr, int64_t *st) {
  int64_t sst[PTC_MAX_RANK], m = 1;
  for (int32_t d = s->rank - 1; d >= 0; d--) {
    sst[d] = m;
    m *= s->dims[d];
  }
  for (int32_t d = 0; d < tr; d++) {
    int32_t sd = s->rank - tr + d;
    st[d] = sd >= 0 && s->dims[sd] != 1 ? sst[sd] : 0;
  }
}
