/* kernels.c -- the kernel table (one entry per opcode), the dtype checks a
 * program runs before it starts, and the element-wise, shape, reduction,
 * collective and bookkeeping kernels.  The neural-network kernels are in
 * kernels_nn.c, attention in attention.c.
 *
 * Semantics are those of the reference evaluator ir/eval.c, in f32: tests
 * (tests/unit/test_rt_kernels.c) run every opcode against it.  Element-wise
 * kernels and row-wise reductions split their rows over the thread pool.
 * On a partitioned plan each kernel computes this device's piece of the
 * result (internal.h: kparts, kpiece; tests/unit/test_rt_spmd.c runs
 * sharded functions on simulated meshes against the evaluator).
 *
 * bf16 and f16 values: the kernels of ops that compute see f32 only (the
 * executor widens and rounds around them: exec.c); constant, cast, the
 * shape ops and the collectives take 16-bit data themselves (constant and
 * cast round as runtime/half.h says; the communicator reduces 16-bit
 * buffers in f32: ptrt_comm's all_reduce16 and reduce_scatter16).
 */
#include <stdarg.h>
#include <stdio.h>

#include "codegen/codegen.h"
#include "runtime/half.h"
#include "runtime/internal.h"

int ptrt__op_error(const ptrt_kargs *k, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  ptc_error(k->env->ctx, k->op->loc, "%s: %s", ptc_opinfo_get(k->op->code)->name, msg);
  return -1;
}

/* ---- broadcasting --------------------------------------------------------- */

void ptrt__bcast_plan(ptrt_bcast *b, const ptc_type *out, int nin,
                      const ptc_type *const *in) {
  /* full-rank strides, 0 where an operand is broadcast */
  int64_t st[2][PTC_MAX_RANK] = {{0}};
  for (int k = 0; k < nin; k++) {
    int64_t s = 1;
    for (int32_t d = out->rank - 1; d >= 0; d--) {
      int32_t id = in[k]->rank - out->rank + d;
      int64_t dim = id >= 0 ? in[k]->dims[id] : 1;
      st[k][d] = dim == 1 ? 0 : s;
      s *= dim;
    }
  }
  b->rank = 0;
  for (int32_t d = 0; d < out->rank; d++) {
    if (out->dims[d] == 1) continue;
    int32_t r = b->rank;
    bool merge = r > 0;
    for (int k = 0; merge && k < nin; k++)
      merge = st[k][d] * out->dims[d] == b->st[k][r - 1] ||
              (st[k][d] == 0 && b->st[k][r - 1] == 0);
    if (merge) {
      b->dims[r - 1] *= out->dims[d];
      for (int k = 0; k < nin; k++) b->st[k][r - 1] = st[k][d];
    } else {
      b->dims[r] = out->dims[d];
      for (int k = 0; k < 2; k++) b->st[k][r] = k < nin ? st[k][d] : 0;
      b->rank++;
    }
  }
  if (b->rank == 0) { /* a scalar, or all dims of size 1 */
    b->rank = 1;
    b->dims[0] = 1;
    b->st[0][0] = b->st[1][0] = 0;
  }
  b->row_len = b->dims[b->rank - 1];
  b->rows = 1;
  for (int32_t d = 0; d < b->rank - 1; d++) b->rows *= b->dims[d];
}

void ptrt__bcast_row(const ptrt_bcast *b, int64_t r, int64_t *o0, int64_t *o1) {
  int64_t a = 0, c = 0;
  for (int32_t d = b->rank - 2; d >= 0; d--) {
    int64_t i = r % b->dims[d];
    r /= b->dims[d];
    a += i * b->st[0][d];
    c += i * b->st[1][d];
  }
  *o0 = a;
  *o1 = c;
}

/* ---- element-wise binary ops -------------------------------------------- */

typedef struct bin_job {
  const ptrt_bcast *b;
  ptc_opcode code;
  int cmp; /* compare: 0 ge, 1 gt, 2 eq */
  const float *x, *y;
  float *o;
} bin_job;

/* One row: n outputs, operand strides sx, sy in {0, 1}. */
#define BIN_LOOP(EXPR)                                                        \
  do {                                                                        \
    if (sx == 1 && sy == 1)                                                   \
      for (int64_t i = 0; i < n; i++) { float a = x[i], c = y[i]; o[i] = (EXPR); } \
    else if (sx == 1)                                                         \
      for (int64_t i = 0; i < n; i++) { float a = x[i], c = y[0]; o[i] = (EXPR); } \
    else if (sy == 1)                                                         \
      for (int64_t i = 0; i < n; i++) { float a = x[0], c = y[i]; o[i] = (EXPR); } \
    else                                                                      \
      for (int64_t i = 0; i < n; i++) { float a = x[0], c = y[0]; o[i] = (EXPR); } \
  } while (0)

/* Work items are pieces of rows: a long row (a same-shape op collapses to
 * one) is cut into pieces of BIN_PIECE elements so every thread gets some. */
enum { BIN_PIECE = 16384 };

static void bin_rows(void *arg, int64_t i0, int64_t i1) {
  const bin_job *j = arg;
  const ptrt_bcast *b = j->b;
  int64_t sx = b->st[0][b->rank - 1], sy = b->st[1][b->rank - 1];
  int64_t pieces = (b->row_len + BIN_PIECE - 1) / BIN_PIECE;
  for (int64_t it = i0; it < i1; it++) {
    int64_t r = it / pieces, lo = (it % pieces) * BIN_PIECE;
    int64_t n = b->row_len - lo < BIN_PIECE ? b->row_len - lo : BIN_PIECE;
    int64_t ox, oy;
    ptrt__bcast_row(b, r, &ox, &oy);
    const float *x = j->x + ox + lo * sx, *y = j->y + oy + lo * sy;
    float *o = j->o + r * b->row_len + lo;
    switch (j->code) {
    case PTC_OP_ADD: BIN_LOOP(a + c); break;
    case PTC_OP_SUB: BIN_LOOP(a - c); break;
    case PTC_OP_MUL: BIN_LOOP(a * c); break;
    case PTC_OP_DIV: BIN_LOOP(a / c); break;
    case PTC_OP_MAXIMUM: BIN_LOOP(a > c ? a : c); break;
    case PTC_OP_COMPARE:
      if (j->cmp == 0) BIN_LOOP(a >= c ? 1.0f : 0.0f);
      else if (j->cmp == 1) BIN_LOOP(a > c ? 1.0f : 0.0f);
      else BIN_LOOP(a == c ? 1.0f : 0.0f);
      break;
    default: PTC_UNREACHABLE();
    }
  }
}

static int k_binary(const ptrt_kargs *k) {
  ptrt_bcast b;
  const ptc_type *ins[2] = {kin_t(k, 0), kin_t(k, 1)};
  ptrt__bcast_plan(&b, kout_t(k, 0), 2, ins);
  bin_job j = {&b, k->op->code, 0, kin_f(k, 0), kin_f(k, 1), kout_f(k, 0)};
  if (k->op->code == PTC_OP_COMPARE) {
    const ptc_attr *a = ptc_op_attr(k->op, "cmp");
    const char *c = a ? a->u.s : "ge";
    j.cmp = strcmp(c, "gt") == 0 ? 1 : strcmp(c, "eq") == 0 ? 2 : 0;
  }
  int64_t pieces = (b.row_len + BIN_PIECE - 1) / BIN_PIECE;
  int64_t len = b.row_len < BIN_PIECE ? b.row_len : BIN_PIECE;
  ptrt_parallel_for(k->env->pool, b.rows * pieces, grain_for(len), bin_rows, &j);
  return 0;
}

/* select c, a, b: a copy of a when the scalar c is not 0, else of b (the
 * side not taken is never read: it may hold an overflowed step's NaNs). */
static int k_select(const ptrt_kargs *k) {
  const void *src = kin_f(k, 0)[0] != 0.0f ? k->in[1] : k->in[2];
  if (src != k->out[0]) memcpy(k->out[0], src, (size_t)ptc_type_bytes(kout_t(k, 0)));
  return 0;
}

/* ---- element-wise unary ops and activation gradients --------------------- */

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */

typedef struct un_job {
  ptc_opcode code;
  const float *x, *g; /* g: the incoming gradient of *_grad ops */
  float *o;
} un_job;

static void un_range(void *arg, int64_t b, int64_t e) {
  const un_job *j = arg;
  const float *x = j->x, *g = j->g;
  float *o = j->o;
  switch (j->code) {
  case PTC_OP_NEG: for (int64_t i = b; i < e; i++) o[i] = -x[i]; break;
  case PTC_OP_EXP: for (int64_t i = b; i < e; i++) o[i] = ptrt_expf(x[i]); break;
  case PTC_OP_LOG: for (int64_t i = b; i < e; i++) o[i] = logf(x[i]); break;
  case PTC_OP_SQRT: for (int64_t i = b; i < e; i++) o[i] = sqrtf(x[i]); break;
  case PTC_OP_RSQRT: for (int64_t i = b; i < e; i++) o[i] = 1.0f / sqrtf(x[i]); break;
  case PTC_OP_TANH: for (int64_t i = b; i < e; i++) o[i] = tanhf(x[i]); break;
  case PTC_OP_SIGMOID:
    for (int64_t i = b; i < e; i++) o[i] = 1.0f / (1.0f + ptrt_expf(-x[i]));
    break;
  case PTC_OP_RELU: for (int64_t i = b; i < e; i++) o[i] = x[i] > 0 ? x[i] : 0.0f; break;
  case PTC_OP_GELU:
    /* 0.5 v (1 + tanh u) = v sigmoid(2u): one expf instead of tanhf */
    for (int64_t i = b; i < e; i++) {
      float v = x[i], u = GELU_K * (v + 0.044715f * v * v * v);
      o[i] = v / (1.0f + ptrt_expf(-2.0f * u));
    }
    break;
  case PTC_OP_SILU:
    for (int64_t i = b; i < e; i++) o[i] = x[i] / (1.0f + ptrt_expf(-x[i]));
    break;
  case PTC_OP_RELU_GRAD:
    for (int64_t i = b; i < e; i++) o[i] = x[i] > 0 ? g[i] : 0.0f;
    break;
  case PTC_OP_GELU_GRAD:
    /* with s = sigmoid(2u): tanh u = 2s - 1 and 1 - tanh^2 u = 4 s (1 - s) */
    for (int64_t i = b; i < e; i++) {
      float v = x[i], u = GELU_K * (v + 0.044715f * v * v * v);
      float s = 1.0f / (1.0f + ptrt_expf(-2.0f * u));
      float du = GELU_K * (1.0f + 3.0f * 0.044715f * v * v);
      o[i] = g[i] * (s + 2.0f * v * s * (1.0f - s) * du);
    }
    break;
  case PTC_OP_SILU_GRAD:
    for (int64_t i = b; i < e; i++) {
      float s = 1.0f / (1.0f + ptrt_expf(-x[i]));
      o[i] = g[i] * s * (1.0f + x[i] * (1.0f - s));
    }
    break;
  default: PTC_UNREACHABLE();
  }
}

static int k_unary(const ptrt_kargs *k) {
  un_job j = {k->op->code, kin_f(k, 0), NULL, kout_f(k, 0)};
  ptrt_parallel_for(k->env->pool, ptc_type_numel(kout_t(k, 0)), 16384, un_range, &j);
  return 0;
}

/* relu_grad / gelu_grad / silu_grad g, x: operand 0 is g, 1 is x */
static int k_act_grad(const ptrt_kargs *k) {
  un_job j = {k->op->code, kin_f(k, 1), kin_f(k, 0), kout_f(k, 0)};
  ptrt_parallel_for(k->env->pool, ptc_type_numel(kout_t(k, 0)), 8192, un_range, &j);
  return 0;
}

/* ---- sources, casts, copies ------------------------------------------------ */

static int k_constant(const ptrt_kargs *k) {
  const ptc_type *t = kout_t(k, 0);
  double v = ptc_op_attr_float(k->op, "value", 0);
  int64_t n = ptc_type_numel(t);
  switch (t->dtype) {
  case PTC_DTYPE_F32: {
    float *o = k->out[0];
    for (int64_t i = 0; i < n; i++) o[i] = (float)v;
    break;
  }
  case PTC_DTYPE_I32: {
    int32_t *o = k->out[0];
    for (int64_t i = 0; i < n; i++) o[i] = (int32_t)v;
    break;
  }
  case PTC_DTYPE_I64: {
    int64_t *o = k->out[0];
    for (int64_t i = 0; i < n; i++) o[i] = (int64_t)v;
    break;
  }
  case PTC_DTYPE_BF16:
  case PTC_DTYPE_F16: {
    uint16_t *o = k->out[0], h = ptrt_half_round(t->dtype, (float)v);
    for (int64_t i = 0; i < n; i++) o[i] = h;
    break;
  }
  default: PTC_UNREACHABLE();
  }
  return 0;
}

static double load_as_double(const void *p, ptc_dtype t, int64_t i) {
  switch (t) {
  case PTC_DTYPE_F32: return ((const float *)p)[i];
  case PTC_DTYPE_I32: return ((const int32_t *)p)[i];
  case PTC_DTYPE_I64: return (double)((const int64_t *)p)[i];
  case PTC_DTYPE_BF16:
  case PTC_DTYPE_F16: return ptrt_half_load(t, p, i);
  default: PTC_UNREACHABLE();
  }
}

/* trunc(v) clamped to [-lim, lim] (NaN to 0), so the conversion is defined */
static double saturate(double v, double lim) {
  if (v != v) return 0;
  v = trunc(v);
  return v > lim ? lim : v < -lim ? -lim : v;
}

/* cast: float to integer truncates toward zero, as the evaluator does; to
 * bf16 or f16 through f32 (exact from any float dtype held here, so the
 * one rounding is f32 to 16 bits) */
static int k_cast(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  int64_t n = ptc_type_numel(ot);
  for (int64_t i = 0; i < n; i++) {
    double v = load_as_double(k->in[0], it->dtype, i);
    switch (ot->dtype) {
    case PTC_DTYPE_F32: ((float *)k->out[0])[i] = (float)v; break;
    case PTC_DTYPE_I32: ((int32_t *)k->out[0])[i] = (int32_t)saturate(v, 2147483647.0); break;
    case PTC_DTYPE_I64:
      ((int64_t *)k->out[0])[i] = (int64_t)saturate(v, 9223372036854774784.0);
      break;
    case PTC_DTYPE_BF16:
    case PTC_DTYPE_F16: ((uint16_t *)k->out[0])[i] = ptrt_half_round(ot->dtype, (float)v); break;
    default: PTC_UNREACHABLE();
    }
  }
  return 0;
}

/* reshape (when the executor does not alias it) and one-rank identities */
static int k_copy(const ptrt_kargs *k) {
  if (k->out[0] != k->in[0])
    memcpy(k->out[0], k->in[0], (size_t)ptc_type_bytes(kout_t(k, 0)));
  return 0;
}

static int k_broadcast_to(const ptrt_kargs *k) {
  const ptc_type *ot = kout_t(k, 0), *it = kin_t(k, 0);
  ptrt_bcast b;
  ptrt__bcast_plan(&b, ot, 1, &it);
  int es = ptc_dtype_size(ot->dtype);
  const char *x = k->in[0];
  char *o = k->out[0];
  int64_t len = b.row_len, sx = b.st[0][b.rank - 1];
  for (int64_t r = 0; r < b.rows; r++) {
    int64_t ox, unused;
    ptrt__bcast_row(&b, r, &ox, &unused);
    char *dst = o + r * len * es;
    if (sx == 1) {
      memcpy(dst, x + ox * es, (size_t)(len * es));
    } else {
      for (int64_t i = 0; i < len; i++) memcpy(dst + i * es, x + ox * es, (size_t)es);
    }
  }
  return 0;
}

/* ---- shape ops (any element size) ----------------------------------------- */

static int k_transpose(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  const ptc_attr *p = ptc_op_attr(k->op, "perm");
  int es = ptc_dtype_size(it->dtype);
  int64_t ist[PTC_MAX_RANK], s = 1;
  for (int32_t d = it->rank - 1; d >= 0; d--) {
    ist[d] = s;
    s *= it->dims[d];
  }
  int32_t r = ot->rank;
  if (r == 0) return k_copy(k);
  /* source stride of each output dim; rows are the last output dim */
  int64_t sst[PTC_MAX_RANK];
  for (int32_t d = 0; d < r; d++) sst[d] = ist[p->u.ints.v[d]];
  int64_t len = ot->dims[r - 1], rows = ptc_type_numel(ot) / (len ? len : 1);
  if (len == 0) return 0;
  const char *x = k->in[0];
  char *o = k->out[0];
  for (int64_t row = 0; row < rows; row++) {
    int64_t rem = row, src = 0;
    for (int32_t d = r - 2; d >= 0; d--) {
      src += (rem % ot->dims[d]) * sst[d];
      rem /= ot->dims[d];
    }
    char *dst = o + row * len * es;
    int64_t step = sst[r - 1];
    if (es == 4) {
      const float *xs = (const float *)x + src;
      float *ds = (float *)dst;
      for (int64_t i = 0; i < len; i++) ds[i] = xs[i * step];
    } else {
      for (int64_t i = 0; i < len; i++)
        memcpy(dst + i * es, x + (src + i * step) * es, (size_t)es);
    }
  }
  return 0;
}

static int k_slice(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  int64_t axis = ptc_op_attr_int(k->op, "axis", 0), start = ptc_op_attr_int(k->op, "start", 0);
  int64_t outer, len, inner;
  axis_split(it, axis, &outer, &len, &inner);
  int64_t es = ptc_dtype_size(it->dtype), olen = ot->dims[axis];
  const char *x = k->in[0];
  char *o = k->out[0];
  for (int64_t i = 0; i < outer; i++)
    memcpy(o + i * olen * inner * es, x + (i * len + start) * inner * es,
           (size_t)(olen * inner * es));
  return 0;
}

static int k_pad(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  int64_t axis = ptc_op_attr_int(k->op, "axis", 0), before = ptc_op_attr_int(k->op, "before", 0);
  int64_t outer, len, inner;
  axis_split(it, axis, &outer, &len, &inner);
  int64_t es = ptc_dtype_size(it->dtype), olen = ot->dims[axis];
  const char *x = k->in[0];
  char *o = k->out[0];
  memset(o, 0, (size_t)ptc_type_bytes(ot));
  for (int64_t i = 0; i < outer; i++)
    memcpy(o + (i * olen + before) * inner * es, x + i * len * inner * es,
           (size_t)(len * inner * es));
  return 0;
}

static int k_concat(const ptrt_kargs *k) {
  const ptc_type *ot = kout_t(k, 0);
  int64_t axis = ptc_op_attr_int(k->op, "axis", 0);
  int64_t outer, olen, inner;
  axis_split(ot, axis, &outer, &olen, &inner);
  int64_t es = ptc_dtype_size(ot->dtype), off = 0;
  char *o = k->out[0];
  for (int32_t a = 0; a < k->op->nin; a++) {
    int64_t len = kin_t(k, a)->dims[axis];
    const char *x = k->in[a];
    for (int64_t i = 0; i < outer; i++)
      memcpy(o + (i * olen + off) * inner * es, x + i * len * inner * es,
             (size_t)(len * inner * es));
    off += len;
  }
  return 0;
}

/* ---- reductions -------------------------------------------------------------- */

typedef struct red_job {
  ptc_opcode code;
  const float *x;
  float *o;
  int64_t len, inner; /* the reduced run and what follows it */
  double scale;
} red_job;

/* Reduced axes contiguous and innermost: one output per row of len. */
static void red_rows(void *arg, int64_t r0, int64_t r1) {
  const red_job *j = arg;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = j->x + r * j->len;
    if (j->code == PTC_OP_REDUCE_MAX) {
      float m = -INFINITY;
      for (int64_t i = 0; i < j->len; i++) m = x[i] > m ? x[i] : m;
      j->o[r] = m;
    } else {
      double s = 0;
      for (int64_t i = 0; i < j->len; i++) s += x[i];
      j->o[r] = (float)(s * j->scale);
    }
  }
}

/* Reduced axes contiguous and followed by `inner` kept elements: outputs
 * [outer, inner]; columns [c0, c1) of every outer row. */
typedef struct red_cols_job {
  const red_job *j;
  int64_t outer;
} red_cols_job;

static void red_cols(void *arg, int64_t c0, int64_t c1) {
  const red_cols_job *cj = arg;
  const red_job *j = cj->j;
  int64_t w = c1 - c0;
  double *acc = ptc_xmalloc((size_t)w * sizeof *acc);
  for (int64_t o = 0; o < cj->outer; o++) {
    const float *x = j->x + o * j->len * j->inner;
    bool mx = j->code == PTC_OP_REDUCE_MAX;
    for (int64_t c = 0; c < w; c++) acc[c] = mx ? -INFINITY : 0;
    for (int64_t r = 0; r < j->len; r++) {
      const float *row = x + r * j->inner + c0;
      if (mx)
        for (int64_t c = 0; c < w; c++) acc[c] = row[c] > acc[c] ? row[c] : acc[c];
      else
        for (int64_t c = 0; c < w; c++) acc[c] += row[c];
    }
    float *out = j->o + o * j->inner + c0;
    for (int64_t c = 0; c < w; c++) out[c] = (float)(mx ? acc[c] : acc[c] * j->scale);
  }
  free(acc);
}

/* A few long rows (a whole tensor's sum of squares, say): each row is cut
 * into fixed pieces reduced in parallel, then the pieces are combined in
 * order -- the same bits on any number of threads. */
enum { RED_PIECE = 65536 };

typedef struct piece_job {
  const red_job *j;
  int64_t pieces; /* per row */
  double *part;   /* [rows * pieces] */
} piece_job;

static void red_pieces(void *arg, int64_t b, int64_t e) {
  const piece_job *pj = arg;
  const red_job *j = pj->j;
  bool mx = j->code == PTC_OP_REDUCE_MAX;
  for (int64_t t = b; t < e; t++) {
    int64_t row = t / pj->pieces, piece = t % pj->pieces;
    int64_t lo = piece * RED_PIECE, hi = lo + RED_PIECE < j->len ? lo + RED_PIECE : j->len;
    const float *x = j->x + row * j->len;
    float acc[8];
    for (int q = 0; q < 8; q++) acc[q] = mx ? -INFINITY : 0.0f;
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8)
      for (int q = 0; q < 8; q++) acc[q] = mx ? (x[i + q] > acc[q] ? x[i + q] : acc[q]) : acc[q] + x[i + q];
    double r = mx ? -INFINITY : 0;
    for (int q = 0; q < 8; q++) r = mx ? (acc[q] > r ? acc[q] : r) : r + acc[q];
    for (; i < hi; i++) r = mx ? (x[i] > r ? x[i] : r) : r + x[i];
    pj->part[t] = r;
  }
}

static void reduce_long_rows(const ptrt_kargs *k, const red_job *j, int64_t rows) {
  piece_job pj = {j, (j->len + RED_PIECE - 1) / RED_PIECE, NULL};
  pj.part = ptc_xmalloc((size_t)(rows * pj.pieces) * sizeof *pj.part);
  ptrt_parallel_for(k->env->pool, rows * pj.pieces, 1, red_pieces, &pj);
  bool mx = j->code == PTC_OP_REDUCE_MAX;
  for (int64_t r = 0; r < rows; r++) {
    double acc = mx ? -INFINITY : 0;
    for (int64_t q = 0; q < pj.pieces; q++) {
      double v = pj.part[r * pj.pieces + q];
      acc = mx ? (v > acc ? v : acc) : acc + v;
    }
    j->o[r] = (float)(mx ? acc : acc * j->scale);
  }
  free(pj.part);
}

static int k_reduce(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0);
  const ptc_attr *ax = ptc_op_attr(k->op, "axes");
  bool red[PTC_MAX_RANK] = {false};
  for (int32_t i = 0; i < ax->u.ints.n; i++) red[ax->u.ints.v[i]] = true;
  int64_t count = 1;
  int32_t first = -1, last = -1;
  for (int32_t d = 0; d < it->rank; d++)
    if (red[d] && it->dims[d] != 1) {
      count *= it->dims[d];
      if (first < 0) first = d;
      last = d;
    }
  /* contiguous when every dim between first and last (of size > 1) is reduced */
  bool contiguous = true;
  for (int32_t d = first; first >= 0 && d <= last; d++)
    if (!red[d] && it->dims[d] != 1) contiguous = false;
  /* a mean divides by the whole tensor's count: each reduced dimension
   * split over the mesh has parts - 1 more pieces elsewhere (the result is
   * then this device's share of a partial sum) */
  int64_t parts = 1;
  for (int32_t d = 0; d < it->rank; d++)
    if (red[d]) parts *= kparts(k, k->op->in[0], d);
  double scale = k->op->code == PTC_OP_REDUCE_MEAN
                     ? 1.0 / ((double)(count ? count : 1) * (double)parts)
                     : 1.0;
  const float *x = kin_f(k, 0);
  float *o = kout_f(k, 0);
  int64_t on = ptc_type_numel(kout_t(k, 0));
  if (first < 0) { /* nothing (of size > 1) held here is reduced: a copy, or a scaled one */
    for (int64_t i = 0; i < on; i++) o[i] = (float)(x[i] * scale);
    return 0;
  }
  if (contiguous) {
    int64_t outer = 1, inner = 1;
    for (int32_t d = 0; d < first; d++) outer *= it->dims[d];
    for (int32_t d = last + 1; d < it->rank; d++) inner *= it->dims[d];
    red_job j = {k->op->code, x, o, count, inner, scale};
    if (inner == 1 && outer < 64 && count >= 2 * RED_PIECE) {
      reduce_long_rows(k, &j, outer);
    } else if (inner == 1) {
      ptrt_parallel_for(k->env->pool, outer, grain_for(count), red_rows, &j);
    } else {
      red_cols_job cj = {&j, outer};
      ptrt_parallel_for(k->env->pool, inner, grain_for(outer * count) < 64 ? 64 : grain_for(outer * count),
                        red_cols, &cj);
    }
    return 0;
  }
  /* general: accumulate every element into its output (serial) */
  int64_t ost[PTC_MAX_RANK], s = 1;
  for (int32_t d = it->rank - 1; d >= 0; d--) {
    ost[d] = red[d] ? 0 : s;
    if (!red[d]) s *= it->dims[d];
  }
  bool mx = k->op->code == PTC_OP_REDUCE_MAX;
  double *acc = ptc_xmalloc((size_t)(on ? on : 1) * sizeof *acc);
  for (int64_t i = 0; i < on; i++) acc[i] = mx ? -INFINITY : 0;
  int64_t n = ptc_type_numel(it);
  for (int64_t i = 0; i < n; i++) {
    int64_t rem = i, oi = 0;
    for (int32_t d = it->rank - 1; d >= 0; d--) {
      oi += (rem % it->dims[d]) * ost[d];
      rem /= it->dims[d];
    }
    if (mx) acc[oi] = x[i] > acc[oi] ? x[i] : acc[oi];
    else acc[oi] += x[i];
  }
  for (int64_t i = 0; i < on; i++) o[i] = (float)(mx ? acc[i] : acc[i] * scale);
  free(acc);
  return 0;
}

/* ---- collectives and transfers -------------------------------------------- */

static int mesh_axis_of(const ptrt_kargs *k) {
  const ptc_attr *a = ptc_op_attr(k->op, "axis");
  const ptc_mesh *m = &k->f->mod->mesh;
  return a ? ptc_mesh_axis(m, a->u.s, strlen(a->u.s)) : -1;
}

static ptrt_reduce reduce_of(const ptc_op *op) {
  const ptc_attr *a = ptc_op_attr(op, "op");
  const char *s = a ? a->u.s : "sum";
  if (strcmp(s, "mean") == 0) return PTRT_REDUCE_MEAN;
  if (strcmp(s, "max") == 0) return PTRT_REDUCE_MAX;
  if (strcmp(s, "min") == 0) return PTRT_REDUCE_MIN;
  return PTRT_REDUCE_SUM;
}

static int comm_status(const ptrt_kargs *k, int rc) {
  if (rc == 0) return 0;
  return ptrt__op_error(k, "the %s communicator failed (rank %d of %d)",
                        k->env->comm->name, k->env->comm->rank, k->env->comm->size);
}

static const char *axis_name(const ptrt_kargs *k, int axis) {
  const ptc_mesh *m = &k->f->mod->mesh;
  return axis >= 0 && axis < m->naxes ? m->axes[axis].name : "?";
}

/* Says what the next communicator call is for, so that a peer's error or
 * timeout can name it: "<op> over <axis> at <file:line:col> (op N of @f)"
 * ("send to stage P (tag T)", "recv from stage P (tag T)" for a transfer). */
static void comm_note_as(const ptrt_kargs *k, const char *over) {
  ptrt_comm_state *st = k->env->comm->state;
  const char *op = ptc_opinfo_get(k->op->code)->name;
  long long idx = (long long)(k->op - k->f->ops);
  ptc_loc l = k->op->loc;
  if (l.file && l.line > 0)
    snprintf(st->what, sizeof st->what, "%s %s at %s:%d:%d (op %lld of @%s)", op, over,
             l.file, l.line, l.col > 0 ? l.col : 1, idx, k->f->name);
  else
    snprintf(st->what, sizeof st->what, "%s %s at op %lld of @%s", op, over, idx, k->f->name);
}

static void comm_note(const ptrt_kargs *k, int axis) {
  char over[32];
  snprintf(over, sizeof over, "over %s", axis_name(k, axis));
  comm_note_as(k, over);
}

static void comm_note_peer(const ptrt_kargs *k) {
  char with[64];
  snprintf(with, sizeof with, "%s stage %lld (tag %lld)",
           k->op->code == PTC_OP_SEND ? "to" : "from",
           (long long)ptc_op_attr_int(k->op, "peer", 0), (long long)ptc_op_attr_int(k->op, "tag", 0));
  comm_note_as(k, with);
}

/* all_gather, reduce_scatter and shard: the local shapes say how many
 * devices of `axis` the dimension is cut over (g); the communicator's mesh
 * must agree, else the program was localized for another mesh. */
static int group_check(const ptrt_kargs *k, int axis, int64_t dim, int64_t g) {
  const ptrt_comm *c = k->env->comm;
  int64_t have = axis >= 0 && axis < c->mesh.naxes ? c->mesh.axes[axis].size : 1;
  if (g == have) return 0;
  return ptrt__op_error(k, "the local shapes cut dimension %lld over %lld devices of %s, "
                        "but the %s communicator has %lld there: run a partitioned plan "
                        "with one rank per device of its mesh", (long long)dim,
                        (long long)g, axis_name(k, axis), c->name, (long long)have);
}

/* The group of an op that cuts or joins dimension `dim` over `axis`
 * (all_gather, reduce_scatter, shard): g devices, from the local shapes of
 * the whole side and the piece side, checked against the communicator.
 * Returns 0, or -1 after reporting. */
static int split_group(const ptrt_kargs *k, const ptc_type *whole, const ptc_type *piece,
                       int64_t *dim, int *axis, int64_t *g) {
  *dim = ptc_op_attr_int(k->op, "dim", 0);
  *axis = mesh_axis_of(k);
  *g = piece->dims[*dim] ? whole->dims[*dim] / piece->dims[*dim] : 1;
  return group_check(k, *axis, *dim, *g);
}

/* Types are one device's pieces (on one device, whole tensors, where
 * every collective leaves the value as it is); the communicator moves the
 * data where there are peers. */
/* The communicator's 16-bit collective, or a report at the op that it has
 * none (NULL). */
static int no_half(const ptrt_kargs *k) {
  return ptrt__op_error(k, "%s of %s: the %s communicator has no 16-bit collectives; run "
                        "the plan with ptrun's own communicators (one rank, or MPI)",
                        ptc_opinfo_get(k->op->code)->name,
                        ptc_dtype_name(kout_t(k, 0)->dtype), k->env->comm->name);
}

static int k_all_reduce(const ptrt_kargs *k) {
  const ptc_type *t = kout_t(k, 0);
  int64_t n = ptc_type_numel(t);
  int axis = mesh_axis_of(k);
  const ptrt_comm *c = k->env->comm;
  k_copy(k);
  if (ptrt_is_half(t->dtype) && !c->all_reduce16) return no_half(k);
  comm_note(k, axis);
  if (ptrt_is_half(t->dtype))
    return comm_status(k, c->all_reduce16(c, axis, reduce_of(k->op), t->dtype, k->out[0], n));
  return comm_status(k, c->all_reduce(c, axis, reduce_of(k->op), kout_f(k, 0), n));
}

/* Collectives that only move data (all_gather, broadcast) take integer
 * values too: the communicator's f32 slots carry their bytes, 4 at a time
 * (an i64 element is two words), untouched.  16-bit floats go through the
 * 16-bit slots, an element at a time. */
static int64_t words_per_elem(const ptc_type *t) { return ptc_dtype_size(t->dtype) / 4; }

/* all_gather of n elements of type t from each rank of axis into out. */
static int gather_elems(const ptrt_kargs *k, int axis, ptc_dtype t, const void *in, void *out,
                        int64_t n) {
  const ptrt_comm *c = k->env->comm;
  if (ptrt_is_half(t)) return comm_status(k, c->all_gather16(c, axis, in, out, n));
  int64_t w = ptc_dtype_size(t) / 4;
  return comm_status(k, c->all_gather(c, axis, in, out, n * w));
}

/* Moves g device blocks of `outer` rows of blk bytes between the layout a
 * tensor has ([outer][g][blk]: the blocks interleaved along dim) and the one
 * a communicator uses ([g][outer][blk]: each device's block contiguous). */
static void blocks_interleave(void *dst, const void *src, int64_t g, int64_t outer,
                              int64_t blk, bool to_contiguous) {
  char *d = dst;
  const char *s = src;
  for (int64_t j = 0; j < g; j++)
    for (int64_t r = 0; r < outer; r++) {
      int64_t a = (r * g + j) * blk, b = (j * outer + r) * blk;
      memcpy(d + (to_contiguous ? b : a), s + (to_contiguous ? a : b), (size_t)blk);
    }
}

/* all_gather {axis, dim}: [.., L, ..] -> [.., g*L, ..], block j (from the
 * device at coordinate j of axis) at [j*L, (j+1)*L) of dim.  The
 * communicator gathers whole buffers, one after the other: that is the
 * result when nothing precedes dim; otherwise they arrive [g][outer][L][inner]
 * in a scratch buffer and are interleaved. */
static int k_all_gather(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  int64_t dim, g;
  int axis;
  if (split_group(k, ot, it, &dim, &axis, &g) != 0) return -1;
  if (ptrt_is_half(it->dtype) && !k->env->comm->all_gather16) return no_half(k);
  int64_t es = ptc_dtype_size(it->dtype), n = ptc_type_numel(it), outer, len, inner;
  axis_split(it, dim, &outer, &len, &inner);
  comm_note(k, axis);
  if (outer == 1 || g == 1) return gather_elems(k, axis, it->dtype, k->in[0], k->out[0], n);
  void *tmp = ptrt_alloc(g * n * es);
  if (!tmp)
    return ptrt__op_error(k, "out of memory: %lld bytes to gather into", (long long)(g * n * es));
  int rc = gather_elems(k, axis, it->dtype, k->in[0], tmp, n);
  /* one outer row of one device's block, in bytes */
  if (rc == 0) blocks_interleave(k->out[0], tmp, g, outer, len * inner * es, false);
  ptrt_free(tmp);
  return rc;
}

/* reduce_scatter {axis, dim}: [.., g*L, ..] -> [.., L, ..], this device
 * keeping block coord[axis] of dim of the reduction.  The communicator
 * keeps the coord[axis]-th contiguous part, so when something precedes dim
 * the blocks are first made contiguous: [g][outer][L][inner]. */
static int k_reduce_scatter(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  const ptrt_comm *c = k->env->comm;
  int64_t dim, g;
  int axis;
  if (split_group(k, it, ot, &dim, &axis, &g) != 0) return -1;
  bool half = ptrt_is_half(it->dtype);
  if (half && !c->reduce_scatter16) return no_half(k);
  int64_t es = ptc_dtype_size(it->dtype), n = ptc_type_numel(it), outer, len, inner;
  axis_split(ot, dim, &outer, &len, &inner);
  comm_note(k, axis);
  const void *src = k->in[0];
  void *tmp = NULL;
  if (outer > 1 && g > 1) {
    tmp = ptrt_alloc(n * es);
    if (!tmp)
      return ptrt__op_error(k, "out of memory: %lld bytes to scatter from", (long long)(n * es));
    blocks_interleave(tmp, k->in[0], g, outer, len * inner * es, true);
    src = tmp;
  }
  int rc = half ? c->reduce_scatter16(c, axis, reduce_of(k->op), it->dtype, src, k->out[0], n)
                : c->reduce_scatter(c, axis, reduce_of(k->op), src, k->out[0], n);
  ptrt_free(tmp);
  return comm_status(k, rc);
}

/* shard {axis, dim}: [.., g*L, ..] -> [.., L, ..], this device's piece
 * coord[axis] of its block; no communication.  Any element size. */
static int k_shard(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *ot = kout_t(k, 0);
  const ptrt_comm *c = k->env->comm;
  int64_t dim, g;
  int axis;
  if (split_group(k, it, ot, &dim, &axis, &g) != 0) return -1;
  int64_t piece = g > 1 ? c->coord[axis] : 0;
  int64_t outer, len, inner;
  axis_split(it, dim, &outer, &len, &inner);
  int64_t es = ptc_dtype_size(it->dtype), olen = ot->dims[dim];
  const char *x = k->in[0];
  char *o = k->out[0];
  for (int64_t r = 0; r < outer; r++)
    memcpy(o + r * olen * inner * es, x + (r * len + piece * olen) * inner * es,
           (size_t)(olen * inner * es));
  return 0;
}

/* to_partial {axis}: the value on the axis' first device, zeros on the
 * others (their shares of a sum); no communication.  Any element size. */
static int k_to_partial(const ptrt_kargs *k) {
  const ptc_type *t = kout_t(k, 0);
  int axis = mesh_axis_of(k);
  const ptrt_comm *c = k->env->comm;
  size_t bytes = (size_t)ptc_type_bytes(t);
  if (axis < 0 || axis >= c->mesh.naxes || c->coord[axis] == 0) {
    if (k->out[0] != k->in[0]) memcpy(k->out[0], k->in[0], bytes);
  } else {
    memset(k->out[0], 0, bytes);
  }
  return 0;
}

static int k_broadcast(const ptrt_kargs *k) {
  int axis = mesh_axis_of(k);
  const ptrt_comm *c = k->env->comm;
  const ptc_type *t = kout_t(k, 0);
  int root = (int)ptc_op_attr_int(k->op, "root", 0);
  k_copy(k);
  if (ptrt_is_half(t->dtype)) {
    if (!c->broadcast16) return no_half(k);
    comm_note(k, axis);
    return comm_status(k, c->broadcast16(c, axis, root, k->out[0], ptc_type_numel(t)));
  }
  comm_note(k, axis);
  return comm_status(k, c->broadcast(c, axis, root, kout_f(k, 0),
                                     ptc_type_numel(t) * words_per_elem(t)));
}

/* The world rank of pipeline stage `peer` (the op's attribute): the rank
 * whose mesh coordinates are this rank's with coord[pp] = peer.  -1 after
 * reporting at the op. */
static int stage_rank(const ptrt_kargs *k) {
  const ptrt_comm *c = k->env->comm;
  int64_t stage = ptc_op_attr_int(k->op, "peer", -1);
  int pp = ptc_mesh_axis(&c->mesh, "pp", 2);
  if (pp < 0)
    return ptrt__op_error(k, "a transfer with pipeline stage %lld, but the %s communicator's "
                          "mesh has no pp axis: run a pipeline-parallel plan with one rank per "
                          "device of its mesh", (long long)stage, c->name);
  if (stage < 0 || stage >= c->mesh.axes[pp].size || stage == c->coord[pp])
    return ptrt__op_error(k, "a transfer with pipeline stage %lld, but this rank is stage %d "
                          "of %lld: the plan is damaged; recompile it", (long long)stage,
                          (int)c->coord[pp], (long long)c->mesh.axes[pp].size);
  int32_t coord[PTC_MAX_MESH_AXES];
  memcpy(coord, c->coord, sizeof coord);
  coord[pp] = (int32_t)stage;
  return (int)ptc_mesh_rank(&c->mesh, coord);
}

static int k_send(const ptrt_kargs *k) {
  const ptrt_comm *c = k->env->comm;
  if (!c->send)
    return ptrt__op_error(k, "the %s communicator has no pipeline peers; run a "
                          "pipeline-parallel plan under mpirun with one rank per "
                          "device of its mesh", c->name);
  int peer = stage_rank(k);
  if (peer < 0) return -1;
  comm_note_peer(k);
  return comm_status(k, c->send(c, peer, (int)ptc_op_attr_int(k->op, "tag", 0), k->in[0],
                                ptc_type_bytes(kin_t(k, 0))));
}

static int k_recv(const ptrt_kargs *k) {
  const ptrt_comm *c = k->env->comm;
  if (!c->recv)
    return ptrt__op_error(k, "the %s communicator has no pipeline peers; run a "
                          "pipeline-parallel plan under mpirun with one rank per "
                          "device of its mesh", c->name);
  int peer = stage_rank(k);
  if (peer < 0) return -1;
  comm_note_peer(k);
  return comm_status(k, c->recv(c, peer, (int)ptc_op_attr_int(k->op, "tag", 0), k->out[0],
                                ptc_type_bytes(kout_t(k, 0))));
}

/* assign and return are carried out by the executor (exec.c) */
static int k_nothing(const ptrt_kargs *k) { return 0; }

/* ---- the table -------------------------------------------------------------- */

/* Designated initialisers: an opcode added to ops.def without a kernel here
 * is NULL, which ptrt_kernel_check reports and test_rt_kernels lists. */
static const ptrt_kernel_fn table[PTC_OP_COUNT] = {
    [PTC_OP_CONSTANT] = k_constant,
    [PTC_OP_ADD] = k_binary,
    [PTC_OP_SUB] = k_binary,
    [PTC_OP_MUL] = k_binary,
    [PTC_OP_DIV] = k_binary,
    [PTC_OP_MAXIMUM] = k_binary,
    [PTC_OP_NEG] = k_unary,
    [PTC_OP_EXP] = k_unary,
    [PTC_OP_LOG] = k_unary,
    [PTC_OP_SQRT] = k_unary,
    [PTC_OP_RSQRT] = k_unary,
    [PTC_OP_TANH] = k_unary,
    [PTC_OP_SIGMOID] = k_unary,
    [PTC_OP_RELU] = k_unary,
    [PTC_OP_GELU] = k_unary,
    [PTC_OP_SILU] = k_unary,
    [PTC_OP_CAST] = k_cast,
    [PTC_OP_RESHAPE] = k_copy,
    [PTC_OP_TRANSPOSE] = k_transpose,
    [PTC_OP_SLICE] = k_slice,
    [PTC_OP_PAD] = k_pad,
    [PTC_OP_CONCAT] = k_concat,
    [PTC_OP_BROADCAST_TO] = k_broadcast_to,
    [PTC_OP_REDUCE_SUM] = k_reduce,
    [PTC_OP_REDUCE_MEAN] = k_reduce,
    [PTC_OP_REDUCE_MAX] = k_reduce,
    [PTC_OP_MATMUL] = ptrt__k_matmul,
    [PTC_OP_EMBEDDING] = ptrt__k_embedding,
    [PTC_OP_SOFTMAX] = ptrt__k_softmax,
    [PTC_OP_LAYERNORM] = ptrt__k_layernorm,
    [PTC_OP_RMSNORM] = ptrt__k_rmsnorm,
    [PTC_OP_ROPE] = ptrt__k_rope,
    [PTC_OP_ATTENTION] = ptrt__k_attention,
    [PTC_OP_CROSS_ENTROPY] = ptrt__k_cross_entropy,
    [PTC_OP_COMPARE] = k_binary,
    [PTC_OP_SELECT] = k_select,
    [PTC_OP_RELU_GRAD] = k_act_grad,
    [PTC_OP_GELU_GRAD] = k_act_grad,
    [PTC_OP_SILU_GRAD] = k_act_grad,
    [PTC_OP_SOFTMAX_GRAD] = ptrt__k_softmax_grad,
    [PTC_OP_LAYERNORM_GRAD] = ptrt__k_layernorm_grad,
    [PTC_OP_RMSNORM_GRAD] = ptrt__k_rmsnorm_grad,
    [PTC_OP_ATTENTION_GRAD] = ptrt__k_attention_grad,
    [PTC_OP_CROSS_ENTROPY_GRAD] = ptrt__k_cross_entropy_grad,
    [PTC_OP_EMBEDDING_GRAD] = ptrt__k_embedding_grad,
    [PTC_OP_ALL_REDUCE] = k_all_reduce,
    [PTC_OP_ALL_GATHER] = k_all_gather,
    [PTC_OP_REDUCE_SCATTER] = k_reduce_scatter,
    [PTC_OP_BROADCAST] = k_broadcast,
    [PTC_OP_SHARD] = k_shard,
    [PTC_OP_TO_PARTIAL] = k_to_partial,
    [PTC_OP_SEND] = k_send,
    [PTC_OP_RECV] = k_recv,
    [PTC_OP_ASSIGN] = k_nothing,
    [PTC_OP_ADAMW] = ptrt__k_adamw,
    [PTC_OP_SGD] = ptrt__k_sgd,
    [PTC_OP_RETURN] = k_nothing,
};

ptrt_kernel_fn ptrt_kernel_get(ptc_opcode op) {
  return (unsigned)op < PTC_OP_COUNT ? table[op] : NULL;
}

/* ---- what each kernel accepts ------------------------------------------------- */

static bool is_index(ptc_dtype t) { return t == PTC_DTYPE_I32 || t == PTC_DTYPE_I64; }
/* floats the kernels compute with: f32, or bf16/f16 widened to it */
static bool is_float(ptc_dtype t) { return t == PTC_DTYPE_F32 || ptrt_is_half(t); }
static bool is_held(ptc_dtype t) { return is_float(t) || is_index(t); }

/* Operand i of op is an integer index (embedding ids, class targets). */
static bool index_operand(ptc_opcode c, int i) {
  switch (c) {
  case PTC_OP_EMBEDDING: return i == 0;
  case PTC_OP_CROSS_ENTROPY: return i == 1;
  case PTC_OP_CROSS_ENTROPY_GRAD: return i == 2;
  case PTC_OP_EMBEDDING_GRAD: return i == 1;
  default: return false;
  }
}

/* Ops that move data without arithmetic take integers too: those that take
 * 16-bit data as stored (codegen/liveness.c), but for the reductions of
 * the collectives, which add. */
static bool any_held_dtype(ptc_opcode c) {
  return ptc_op_moves_bytes(c) && c != PTC_OP_ALL_REDUCE && c != PTC_OP_REDUCE_SCATTER;
}

int ptrt_kernel_check(ptc_ctx *ctx, const ptc_func *f, const ptc_op *op) {
  const char *name = ptc_opinfo_get(op->code)->name;
  if (!ptrt_kernel_get(op->code)) {
    ptc_error(ctx, op->loc, "%s: the CPU runtime has no kernel for this op; "
              "this ptrun is older than the ptc that wrote the plan", name);
    return -1;
  }
  bool any = any_held_dtype(op->code);
  for (int32_t i = 0; i < op->nin + op->nout; i++) {
    bool is_in = i < op->nin;
    int32_t v = is_in ? op->in[i] : op->out[i - op->nin];
    ptc_dtype t = f->values[v].type.dtype;
    bool ok;
    if (any) ok = is_held(t);
    else if (is_in && index_operand(op->code, i)) ok = is_index(t);
    else ok = is_float(t);
    if (!ok) {
      ptc_error(ctx, op->loc, "%s: %s %d is %s, which the CPU runtime does not run "
                "(it computes in f32, from f32, bf16 or f16 values, with i32 or i64 "
                "indices)", name,
                is_in ? "operand" : "result", is_in ? i : i - op->nin,
                ptc_dtype_name(t));
      return -1;
    }
  }
  return 0;
}
