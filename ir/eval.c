/* eval.c -- the reference evaluator: runs a ptir function on host tensors
 * in double precision, one op at a time, with the plainest loops that state
 * each op's meaning.
 *
 * It is the numerics oracle inside the project: passes are tested by
 * evaluating a function before and after them, gradients against finite
 * differences, and generated kernels against it.  Speed is not a goal.
 *
 * Semantics are the global view: a sharded value is evaluated as the whole
 * tensor it stands for, so collectives (which change only the layout) are
 * the identity here.  send/recv cross functions and are not evaluable.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static double *alloc_data(const ptc_type *t) {
  return ptc_xcalloc((size_t)ptc_type_numel(t) + 1, sizeof(double));
}

/* Row-major strides of a type. */
static void strides_of(const ptc_type *t, int64_t *st) {
  int64_t s = 1;
  for (int32_t d = t->rank - 1; d >= 0; d--) {
    st[d] = s;
    s *= t->dims[d];
  }
}

/* Rounds v to what dtype t can hold (the reference rounds where the IR
 * stores at lower precision). */
static double round_to(ptc_dtype t, double v) {
  switch (t) {
  case PTC_DTYPE_F64: return v;
  case PTC_DTYPE_F32: return (double)(float)v;
  case PTC_DTYPE_BF16: {
    if (isnan(v)) return v; /* a NaN stays one (its payload may sit in the low bits) */
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
  }
  case PTC_DTYPE_F16: {
    if (!isfinite(v)) return v;
    double a = fabs(v);
    if (a >= 65520.0) return v < 0 ? -INFINITY : INFINITY;
    int e;
    frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1;
    if (exp < -14) exp = -14; /* subnormals share the smallest exponent */
    double q = ldexp(1.0, exp - 10);
    return copysign(nearbyint(a / q) * q, v);
  }
  case PTC_DTYPE_I64:
  case PTC_DTYPE_I32:
  case PTC_DTYPE_I8: return trunc(v);
  case PTC_DTYPE_BOOL: return v != 0;
  case PTC_DTYPE_COUNT: break;
  }
  return v;
}

/* Index of the broadcast operand element for output index `o`. */
static int64_t bcast_index(const ptc_type *out, const ptc_type *in, int64_t o) {
  int64_t st[PTC_MAX_RANK], idx = 0;
  strides_of(in, st);
  for (int32_t d = out->rank - 1; d >= 0; d--) {
    int64_t c = o % out->dims[d];
    o /= out->dims[d];
    int32_t id = in->rank - out->rank + d;
    if (id >= 0 && in->dims[id] != 1) idx += c * st[id];
  }
  return idx;
}

static double gelu(double x) {
  const double k = 0.7978845608028654; /* sqrt(2/pi) */
  return 0.5 * x * (1 + tanh(k * (x + 0.044715 * x * x * x)));
}

static double gelu_deriv(double x) {
  const double k = 0.7978845608028654;
  double th = tanh(k * (x + 0.044715 * x * x * x));
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x);
}

static double silu_deriv(double x) {
  double s = 1 / (1 + exp(-x));
  return s * (1 + x * (1 - s));
}

/* outer x len x inner: the split of a shape around one axis */
static void around_axis(const ptc_type *t, int64_t axis, int64_t *outer, int64_t *len,
                        int64_t *inner) {
  *outer = 1;
  *inner = 1;
  for (int32_t d = 0; d < axis; d++) *outer *= t->dims[d];
  for (int32_t d = (int32_t)axis + 1; d < t->rank; d++) *inner *= t->dims[d];
  *len = t->dims[axis];
}

typedef struct ev {
  ptc_func *f;
  ptc_ctx *ctx;
  double **data; /* per value id */
} ev;

static const ptc_type *T(ev *e, int32_t id) { return &e->f->values[id].type; }

static int eval_op(ev *e, const ptc_op *op) {
  const ptc_type *ot = op->nout ? T(e, op->out[0]) : NULL;
  double *o = NULL;
  if (op->nout) o = e->data[op->out[0]] = alloc_data(ot);
  const double *a = op->nin > 0 ? e->data[op->in[0]] : NULL;
  const double *b = op->nin > 1 ? e->data[op->in[1]] : NULL;
  const ptc_type *at = op->nin > 0 ? T(e, op->in[0]) : NULL;
  const ptc_type *bt = op->nin > 1 ? T(e, op->in[1]) : NULL;
  int64_t n = ot ? ptc_type_numel(ot) : 0;

  switch (op->code) {
  case PTC_OP_CONSTANT: {
    double v = ptc_op_attr_float(op, "value", 0);
    for (int64_t i = 0; i < n; i++) o[i] = v;
    break;
  }
  case PTC_OP_ADD:
  case PTC_OP_SUB:
  case PTC_OP_MUL:
  case PTC_OP_DIV:
  case PTC_OP_MAXIMUM:
    for (int64_t i = 0; i < n; i++) {
      double x = a[bcast_index(ot, at, i)], y = b[bcast_index(ot, bt, i)];
      double r;
      switch (op->code) {
      case PTC_OP_ADD: r = x + y; break;
      case PTC_OP_SUB: r = x - y; break;
      case PTC_OP_MUL: r = x * y; break;
      case PTC_OP_DIV:
        r = ptc_dtype_is_float(ot->dtype) ? x / y : (y != 0 ? trunc(x / y) : 0);
        break;
      default: r = x > y ? x : y; break;
      }
      o[i] = r;
    }
    break;
  case PTC_OP_NEG: for (int64_t i = 0; i < n; i++) o[i] = -a[i]; break;
  case PTC_OP_EXP: for (int64_t i = 0; i < n; i++) o[i] = exp(a[i]); break;
  case PTC_OP_LOG: for (int64_t i = 0; i < n; i++) o[i] = log(a[i]); break;
  case PTC_OP_SQRT: for (int64_t i = 0; i < n; i++) o[i] = sqrt(a[i]); break;
  case PTC_OP_RSQRT: for (int64_t i = 0; i < n; i++) o[i] = 1 / sqrt(a[i]); break;
  case PTC_OP_TANH: for (int64_t i = 0; i < n; i++) o[i] = tanh(a[i]); break;
  case PTC_OP_SIGMOID: for (int64_t i = 0; i < n; i++) o[i] = 1 / (1 + exp(-a[i])); break;
  case PTC_OP_RELU: for (int64_t i = 0; i < n; i++) o[i] = a[i] > 0 ? a[i] : 0; break;
  case PTC_OP_GELU: for (int64_t i = 0; i < n; i++) o[i] = gelu(a[i]); break;
  case PTC_OP_SILU: for (int64_t i = 0; i < n; i++) o[i] = a[i] / (1 + exp(-a[i])); break;
  case PTC_OP_CAST: for (int64_t i = 0; i < n; i++) o[i] = round_to(ot->dtype, a[i]); break;
  case PTC_OP_RESHAPE: memcpy(o, a, (size_t)n * sizeof *o); break;
  case PTC_OP_BROADCAST_TO:
    for (int64_t i = 0; i < n; i++) o[i] = a[bcast_index(ot, at, i)];
    break;
  case PTC_OP_TRANSPOSE: {
    const ptc_attr *p = ptc_op_attr(op, "perm");
    int64_t ist[PTC_MAX_RANK];
    strides_of(at, ist);
    for (int64_t i = 0; i < n; i++) {
      int64_t rem = i, src = 0;
      for (int32_t d = ot->rank - 1; d >= 0; d--) {
        int64_t c = rem % ot->dims[d];
        rem /= ot->dims[d];
        src += c * ist[p->u.ints.v[d]];
      }
      o[i] = a[src];
    }
    break;
  }
  case PTC_OP_SLICE: {
    int64_t axis = ptc_op_attr_int(op, "axis", 0), s = ptc_op_attr_int(op, "start", 0);
    int64_t outer = 1, inner = 1;
    for (int32_t d = 0; d < axis; d++) outer *= at->dims[d];
    for (int32_t d = (int32_t)axis + 1; d < at->rank; d++) inner *= at->dims[d];
    int64_t len = ot->dims[axis];
    for (int64_t i = 0; i < outer; i++)
      memcpy(o + i * len * inner, a + (i * at->dims[axis] + s) * inner,
             (size_t)(len * inner) * sizeof *o);
    break;
  }
  case PTC_OP_CONCAT: {
    int64_t axis = ptc_op_attr_int(op, "axis", 0);
    int64_t outer = 1, inner = 1;
    for (int32_t d = 0; d < axis; d++) outer *= ot->dims[d];
    for (int32_t d = (int32_t)axis + 1; d < ot->rank; d++) inner *= ot->dims[d];
    int64_t off = 0;
    for (int32_t k = 0; k < op->nin; k++) {
      const ptc_type *kt = T(e, op->in[k]);
      int64_t len = kt->dims[axis];
      for (int64_t i = 0; i < outer; i++)
        memcpy(o + (i * ot->dims[axis] + off) * inner, e->data[op->in[k]] + i * len * inner,
               (size_t)(len * inner) * sizeof *o);
      off += len;
    }
    break;
  }
  case PTC_OP_REDUCE_SUM:
  case PTC_OP_REDUCE_MEAN:
  case PTC_OP_REDUCE_MAX: {
    const ptc_attr *ax = ptc_op_attr(op, "axes");
    bool red[PTC_MAX_RANK] = {false};
    for (int32_t i = 0; i < ax->u.ints.n; i++) red[ax->u.ints.v[i]] = true;
    /* the output index of each input element: keepdim or not, the kept
     * dims appear in order */
    int64_t ost[PTC_MAX_RANK], k = 1, count = 1;
    for (int32_t d = at->rank - 1; d >= 0; d--) {
      ost[d] = red[d] ? 0 : k;
      if (!red[d]) k *= at->dims[d];
      else count *= at->dims[d];
    }
    bool mx = op->code == PTC_OP_REDUCE_MAX;
    for (int64_t i = 0; i < n; i++) o[i] = mx ? -INFINITY : 0;
    int64_t an = ptc_type_numel(at);
    for (int64_t i = 0; i < an; i++) {
      int64_t rem = i, oi = 0;
      for (int32_t d = at->rank - 1; d >= 0; d--) {
        oi += (rem % at->dims[d]) * ost[d];
        rem /= at->dims[d];
      }
      if (mx) o[oi] = a[i] > o[oi] ? a[i] : o[oi];
      else o[oi] += a[i];
    }
    if (op->code == PTC_OP_REDUCE_MEAN)
      for (int64_t i = 0; i < n; i++) o[i] /= (double)count;
    break;
  }
  case PTC_OP_MATMUL: {
    bool ta = ptc_op_attr_bool(op, "transpose_a", false);
    bool tb = ptc_op_attr_bool(op, "transpose_b", false);
    int64_t M = ot->dims[ot->rank - 2], N = ot->dims[ot->rank - 1];
    int64_t K = ta ? at->dims[at->rank - 2] : at->dims[at->rank - 1];
    ptc_type obatch = *ot, abatch = *at, bbatch = *bt;
    obatch.rank -= 2;
    abatch.rank -= 2;
    bbatch.rank -= 2;
    int64_t nb = ptc_type_numel(&obatch);
    for (int64_t bi = 0; bi < nb; bi++) {
      const double *A = a + bcast_index(&obatch, &abatch, bi) * M * K;
      const double *B = b + bcast_index(&obatch, &bbatch, bi) * K * N;
      double *C = o + bi * M * N;
      for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
          double s = 0;
          for (int64_t kk = 0; kk < K; kk++)
            s += (ta ? A[kk * M + i] : A[i * K + kk]) * (tb ? B[j * K + kk] : B[kk * N + j]);
          C[i * N + j] = s;
        }
    }
    break;
  }
  case PTC_OP_EMBEDDING: {
    int64_t rows = bt->dims[0], w = bt->dims[1], m = ptc_type_numel(at);
    for (int64_t i = 0; i < m; i++) {
      int64_t id = (int64_t)a[i];
      if (id < 0 || id >= rows) {
        ptc_error(e->ctx, op->loc, "embedding: index %lld out of range [0, %lld)",
                  (long long)id, (long long)rows);
        return -1;
      }
      memcpy(o + i * w, b + id * w, (size_t)w * sizeof *o);
    }
    break;
  }
  case PTC_OP_SOFTMAX: {
    int64_t axis = ptc_op_attr_int(op, "axis", 0), outer = 1, inner = 1, len = at->dims[axis];
    for (int32_t d = 0; d < axis; d++) outer *= at->dims[d];
    for (int32_t d = (int32_t)axis + 1; d < at->rank; d++) inner *= at->dims[d];
    for (int64_t i = 0; i < outer; i++)
      for (int64_t j = 0; j < inner; j++) {
        const double *x = a + i * len * inner + j;
        double *y = o + i * len * inner + j;
        double mx = -INFINITY, s = 0;
        for (int64_t k = 0; k < len; k++) mx = x[k * inner] > mx ? x[k * inner] : mx;
        for (int64_t k = 0; k < len; k++) s += y[k * inner] = exp(x[k * inner] - mx);
        for (int64_t k = 0; k < len; k++) y[k * inner] /= s;
      }
    break;
  }
  case PTC_OP_LAYERNORM:
  case PTC_OP_RMSNORM: {
    double eps = ptc_op_attr_float(op, "eps", 1e-5);
    int64_t c = at->dims[at->rank - 1], rows = n / (c ? c : 1);
    const double *g = b, *bias = op->code == PTC_OP_LAYERNORM ? e->data[op->in[2]] : NULL;
    for (int64_t r = 0; r < rows; r++) {
      const double *x = a + r * c;
      double *y = o + r * c, mean = 0, var = 0;
      if (bias) {
        for (int64_t k = 0; k < c; k++) mean += x[k];
        mean /= (double)c;
      }
      for (int64_t k = 0; k < c; k++) var += (x[k] - mean) * (x[k] - mean);
      var /= (double)c;
      double rs = 1 / sqrt(var + eps);
      for (int64_t k = 0; k < c; k++)
        y[k] = (x[k] - mean) * rs * g[k] + (bias ? bias[k] : 0);
    }
    break;
  }
  case PTC_OP_ROPE: {
    double theta = ptc_op_attr_float(op, "theta", 10000);
    int64_t B = at->dims[0], S = at->dims[1], H = at->dims[2], D = at->dims[3], h2 = D / 2;
    /* inverse rotates by -angle: the transpose of the rotation */
    double sign = ptc_op_attr_bool(op, "inverse", false) ? -1 : 1;
    for (int64_t bi = 0; bi < B; bi++)
      for (int64_t t = 0; t < S; t++)
        for (int64_t h = 0; h < H; h++) {
          const double *x = a + ((bi * S + t) * H + h) * D;
          double *y = o + ((bi * S + t) * H + h) * D;
          for (int64_t i = 0; i < h2; i++) {
            double ang = (double)t * pow(theta, -2.0 * (double)i / (double)D);
            double cs = cos(ang), sn = sign * sin(ang);
            y[i] = x[i] * cs - x[i + h2] * sn;
            y[i + h2] = x[i + h2] * cs + x[i] * sn;
          }
        }
    break;
  }
  case PTC_OP_ATTENTION: {
    const ptc_type *vt = T(e, op->in[2]);
    const double *q = a, *k = b, *v = e->data[op->in[2]];
    int64_t B = at->dims[0], Tq = at->dims[1], H = at->dims[2], D = at->dims[3];
    int64_t S = bt->dims[1], G = bt->dims[2], E = vt->dims[3];
    bool causal = ptc_op_attr_bool(op, "causal", false);
    double scale = ptc_op_attr_float(op, "scale", 1 / sqrt((double)D));
    double *p = ptc_xmalloc((size_t)(S + 1) * sizeof *p);
    for (int64_t bi = 0; bi < B; bi++)
      for (int64_t h = 0; h < H; h++) {
        int64_t g = h / (H / G);
        for (int64_t t = 0; t < Tq; t++) {
          const double *qv = q + ((bi * Tq + t) * H + h) * D;
          int64_t last = causal ? t + 1 : S;
          double mx = -INFINITY, sum = 0;
          for (int64_t s = 0; s < last; s++) {
            const double *kv = k + ((bi * S + s) * G + g) * D;
            double d = 0;
            for (int64_t i = 0; i < D; i++) d += qv[i] * kv[i];
            p[s] = d * scale;
            mx = p[s] > mx ? p[s] : mx;
          }
          for (int64_t s = 0; s < last; s++) sum += p[s] = exp(p[s] - mx);
          double *ov = o + ((bi * Tq + t) * H + h) * E;
          for (int64_t s = 0; s < last; s++) {
            const double *vv = v + ((bi * S + s) * G + g) * E;
            for (int64_t i = 0; i < E; i++) ov[i] += p[s] / sum * vv[i];
          }
        }
      }
    free(p);
    break;
  }
  case PTC_OP_CROSS_ENTROPY: {
    int64_t C = at->dims[at->rank - 1], rows = ptc_type_numel(bt);
    int64_t classes = ptc_op_attr_int(op, "classes", C);
    double total = 0;
    for (int64_t r = 0; r < rows; r++) {
      const double *x = a + r * C;
      int64_t t = (int64_t)b[r];
      if (t < 0 || t >= classes) {
        ptc_error(e->ctx, op->loc, "cross_entropy: target %lld out of range [0, %lld)",
                  (long long)t, (long long)classes);
        return -1;
      }
      double mx = -INFINITY, s = 0;
      for (int64_t c = 0; c < classes; c++) mx = x[c] > mx ? x[c] : mx;
      for (int64_t c = 0; c < classes; c++) s += exp(x[c] - mx);
      total += log(s) + mx - x[t];
    }
    o[0] = rows ? total / (double)rows : 0;
    break;
  }
  case PTC_OP_PAD: {
    int64_t axis = ptc_op_attr_int(op, "axis", 0), lo = ptc_op_attr_int(op, "before", 0);
    int64_t outer, len, inner;
    around_axis(at, axis, &outer, &len, &inner);
    for (int64_t i = 0; i < outer; i++) /* the rest stays zero */
      memcpy(o + (i * ot->dims[axis] + lo) * inner, a + i * len * inner,
             (size_t)(len * inner) * sizeof *o);
    break;
  }
  case PTC_OP_COMPARE: {
    const char *cmp = ptc_op_attr(op, "cmp")->u.s;
    int kind = strcmp(cmp, "ge") == 0 ? 0 : strcmp(cmp, "gt") == 0 ? 1 : 2;
    for (int64_t i = 0; i < n; i++) {
      double x = a[bcast_index(ot, at, i)], y = b[bcast_index(ot, bt, i)];
      o[i] = (kind == 0 ? x >= y : kind == 1 ? x > y : x == y) ? 1.0 : 0.0;
    }
    break;
  }
  case PTC_OP_SELECT: {
    const double *c = e->data[op->in[2]];
    for (int64_t i = 0; i < n; i++) o[i] = a[0] != 0 ? b[i] : c[i];
    break;
  }
  case PTC_OP_RELU_GRAD: for (int64_t i = 0; i < n; i++) o[i] = b[i] > 0 ? a[i] : 0; break;
  case PTC_OP_GELU_GRAD: for (int64_t i = 0; i < n; i++) o[i] = a[i] * gelu_deriv(b[i]); break;
  case PTC_OP_SILU_GRAD: for (int64_t i = 0; i < n; i++) o[i] = a[i] * silu_deriv(b[i]); break;
  case PTC_OP_SOFTMAX_GRAD: {
    /* dx = y * (g - sum(g * y)) along the axis */
    int64_t outer, len, inner;
    around_axis(bt, ptc_op_attr_int(op, "axis", 0), &outer, &len, &inner);
    for (int64_t i = 0; i < outer; i++)
      for (int64_t j = 0; j < inner; j++) {
        int64_t base = i * len * inner + j;
        double dot = 0;
        for (int64_t k = 0; k < len; k++) dot += a[base + k * inner] * b[base + k * inner];
        for (int64_t k = 0; k < len; k++)
          o[base + k * inner] = b[base + k * inner] * (a[base + k * inner] - dot);
      }
    break;
  }
  case PTC_OP_LAYERNORM_GRAD:
  case PTC_OP_RMSNORM_GRAD: {
    /* xhat = (x - mean) * rs; dxhat = g * gamma;
     * dx = rs * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
     * (rmsnorm: mean = 0 and no mean(dxhat) term); dgamma = sum g * xhat,
     * dbeta = sum g over the rows */
    bool ln = op->code == PTC_OP_LAYERNORM_GRAD;
    double eps = ptc_op_attr_float(op, "eps", 1e-5);
    const double *g = a, *x = b, *gm = e->data[op->in[2]];
    const ptc_type *gt = T(e, op->in[2]);
    double *dg = e->data[op->out[1]] = alloc_data(gt);
    double *db = ln ? (e->data[op->out[2]] = alloc_data(gt)) : NULL;
    int64_t c = bt->dims[bt->rank - 1], rows = n / (c ? c : 1);
    double *xh = ptc_xmalloc((size_t)(c + 1) * sizeof *xh);
    for (int64_t r = 0; r < rows; r++) {
      const double *xr = x + r * c, *gr = g + r * c;
      double mean = 0, var = 0, m1 = 0, m2 = 0;
      if (ln) {
        for (int64_t k = 0; k < c; k++) mean += xr[k];
        mean /= (double)c;
      }
      for (int64_t k = 0; k < c; k++) var += (xr[k] - mean) * (xr[k] - mean);
      var /= (double)c;
      double rs = 1 / sqrt(var + eps);
      for (int64_t k = 0; k < c; k++) {
        xh[k] = (xr[k] - mean) * rs;
        double d = gr[k] * gm[k];
        m1 += d;
        m2 += d * xh[k];
        dg[k] += gr[k] * xh[k];
        if (db) db[k] += gr[k];
      }
      m1 = ln ? m1 / (double)c : 0;
      m2 /= (double)c;
      for (int64_t k = 0; k < c; k++) o[r * c + k] = rs * (gr[k] * gm[k] - m1 - xh[k] * m2);
    }
    free(xh);
    break;
  }
  case PTC_OP_ATTENTION_GRAD: {
    /* Recomputes P = softmax(scale q kᵀ) per (batch, head, query), then
     * dV += Pᵀ g, dP = g vᵀ, dS = P * (dP - sum(P * dP)), dQ = scale dS k,
     * dK += scale dSᵀ q.  Query heads h of a group share kv head h / (H/G). */
    const double *g = a, *q = b, *k = e->data[op->in[2]], *v = e->data[op->in[3]];
    const ptc_type *qt = bt, *kt = T(e, op->in[2]), *vt = T(e, op->in[3]);
    int64_t B = qt->dims[0], Tq = qt->dims[1], H = qt->dims[2], D = qt->dims[3];
    int64_t S = kt->dims[1], G = kt->dims[2], E = vt->dims[3];
    bool causal = ptc_op_attr_bool(op, "causal", false);
    double scale = ptc_op_attr_float(op, "scale", 1 / sqrt((double)D));
    double *dq = o, *dk = e->data[op->out[1]] = alloc_data(kt),
           *dv = e->data[op->out[2]] = alloc_data(vt);
    double *p = ptc_xmalloc((size_t)(2 * S + 1) * sizeof *p), *dp = p + S;
    for (int64_t bi = 0; bi < B; bi++)
      for (int64_t h = 0; h < H; h++) {
        int64_t gi = h / (H / G);
        for (int64_t t = 0; t < Tq; t++) {
          const double *qv = q + ((bi * Tq + t) * H + h) * D;
          const double *gv = g + ((bi * Tq + t) * H + h) * E;
          int64_t last = causal ? t + 1 : S;
          double mx = -INFINITY, sum = 0, pdp = 0;
          for (int64_t s = 0; s < last; s++) {
            const double *kv = k + ((bi * S + s) * G + gi) * D;
            double d = 0;
            for (int64_t i = 0; i < D; i++) d += qv[i] * kv[i];
            p[s] = d * scale;
            mx = p[s] > mx ? p[s] : mx;
          }
          for (int64_t s = 0; s < last; s++) sum += p[s] = exp(p[s] - mx);
          for (int64_t s = 0; s < last; s++) {
            p[s] /= sum;
            const double *vv = v + ((bi * S + s) * G + gi) * E;
            double *dvv = dv + ((bi * S + s) * G + gi) * E;
            double d = 0;
            for (int64_t i = 0; i < E; i++) {
              d += gv[i] * vv[i];
              dvv[i] += p[s] * gv[i];
            }
            dp[s] = d;
            pdp += p[s] * d;
          }
          double *dqv = dq + ((bi * Tq + t) * H + h) * D;
          for (int64_t s = 0; s < last; s++) {
            double ds = p[s] * (dp[s] - pdp) * scale;
            const double *kv = k + ((bi * S + s) * G + gi) * D;
            double *dkv = dk + ((bi * S + s) * G + gi) * D;
            for (int64_t i = 0; i < D; i++) {
              dqv[i] += ds * kv[i];
              dkv[i] += ds * qv[i];
            }
          }
        }
      }
    free(p);
    break;
  }
  case PTC_OP_CROSS_ENTROPY_GRAD: {
    /* d mean(loss) / d logits = g / rows * (softmax - onehot(target)) over
     * the real classes, 0 on padding */
    const ptc_type *tt = T(e, op->in[2]);
    const double *x0 = b, *tg = e->data[op->in[2]];
    int64_t C = bt->dims[bt->rank - 1], rows = ptc_type_numel(tt);
    int64_t classes = ptc_op_attr_int(op, "classes", C);
    double scale = rows ? a[0] / (double)rows : 0;
    for (int64_t r = 0; r < rows; r++) {
      const double *x = x0 + r * C;
      double *dx = o + r * C;
      int64_t t = (int64_t)tg[r];
      if (t < 0 || t >= classes) {
        ptc_error(e->ctx, op->loc, "cross_entropy_grad: target %lld out of range [0, %lld)",
                  (long long)t, (long long)classes);
        return -1;
      }
      double mx = -INFINITY, s = 0;
      for (int64_t c = 0; c < classes; c++) mx = x[c] > mx ? x[c] : mx;
      for (int64_t c = 0; c < classes; c++) s += exp(x[c] - mx);
      for (int64_t c = 0; c < classes; c++)
        dx[c] = scale * (exp(x[c] - mx) / s - (c == t ? 1.0 : 0.0));
    }
    break;
  }
  case PTC_OP_EMBEDDING_GRAD: {
    int64_t rows = ot->dims[0], w = ot->dims[1], m = ptc_type_numel(bt);
    for (int64_t i = 0; i < m; i++) {
      int64_t id = (int64_t)b[i];
      if (id < 0 || id >= rows) {
        ptc_error(e->ctx, op->loc, "embedding_grad: index %lld out of range [0, %lld)",
                  (long long)id, (long long)rows);
        return -1;
      }
      for (int64_t j = 0; j < w; j++) o[id * w + j] += a[i * w + j];
    }
    break;
  }
  case PTC_OP_ALL_REDUCE:
  case PTC_OP_ALL_GATHER:
  case PTC_OP_REDUCE_SCATTER:
  case PTC_OP_BROADCAST:
  case PTC_OP_SHARD:
  case PTC_OP_TO_PARTIAL:
    memcpy(o, a, (size_t)n * sizeof *o); /* layout changes, value does not */
    break;
  case PTC_OP_SEND:
  case PTC_OP_RECV:
    ptc_error(e->ctx, op->loc, "%s cannot be evaluated by the reference evaluator: "
              "it crosses pipeline stages", ptc_opinfo_get(op->code)->name);
    return -1;
  case PTC_OP_ASSIGN: break; /* committed when the function returns */
  case PTC_OP_ADAMW: {
    double b1 = ptc_op_attr_float(op, "beta1", 0.9), b2 = ptc_op_attr_float(op, "beta2", 0.999);
    double eps = ptc_op_attr_float(op, "eps", 1e-8), wd = ptc_op_attr_float(op, "weight_decay", 0);
    const double *g = b, *m = e->data[op->in[2]], *v = e->data[op->in[3]];
    double lr = e->data[op->in[4]][0], t = e->data[op->in[5]][0];
    double *p1 = o, *m1 = e->data[op->out[1]] = alloc_data(at),
           *v1 = e->data[op->out[2]] = alloc_data(at);
    double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t);
    for (int64_t i = 0; i < n; i++) {
      m1[i] = b1 * m[i] + (1 - b1) * g[i];
      v1[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      double p = a[i] * (1 - lr * wd);
      p1[i] = p - lr * (m1[i] / c1) / (sqrt(v1[i] / c2) + eps);
    }
    break;
  }
  case PTC_OP_SGD: {
    double mom = ptc_op_attr_float(op, "momentum", 0), wd = ptc_op_attr_float(op, "weight_decay", 0);
    bool nest = ptc_op_attr_bool(op, "nesterov", false);
    const double *g = b, *buf = e->data[op->in[2]];
    double lr = e->data[op->in[3]][0];
    double *p1 = o, *buf1 = e->data[op->out[1]] = alloc_data(at);
    for (int64_t i = 0; i < n; i++) {
      double d = g[i] + wd * a[i];
      buf1[i] = mom * buf[i] + d;
      p1[i] = a[i] - lr * (nest ? d + mom * buf1[i] : buf1[i]);
    }
    break;
  }
  case PTC_OP_RETURN: break;
  case PTC_OP_COUNT: PTC_UNREACHABLE();
  }
  /* store at the results' precision */
  for (int32_t r = 0; r < op->nout; r++) {
    const ptc_type *rt = T(e, op->out[r]);
    double *rd = e->data[op->out[r]];
    int64_t rn = ptc_type_numel(rt);
    if (rt->dtype != PTC_DTYPE_F64)
      for (int64_t i = 0; i < rn; i++) rd[i] = round_to(rt->dtype, rd[i]);
  }
  return 0;
}

int ptc_eval_func(ptc_func *f, const ptc_tensor *args, ptc_tensor *params,
                  ptc_tensor *results) {
  ev e = {f, f->mod->ctx, ptc_xcalloc((size_t)f->nvalues + 1, sizeof(double *))};
  int rc = -1;
  for (int32_t i = 0; i < f->nargs; i++) {
    const ptc_type *t = T(&e, f->args[i]);
    PTC_ASSERT(ptc_type_eq(t, &args[i].type));
    e.data[f->args[i]] = alloc_data(t);
    memcpy(e.data[f->args[i]], args[i].data, (size_t)ptc_type_numel(t) * sizeof(double));
  }
  for (int32_t id = 0; id < f->nvalues; id++) {
    if (f->values[id].kind != PTC_VALUE_PARAM) continue;
    const ptc_tensor *p = &params[f->values[id].def];
    PTC_ASSERT(ptc_type_eq(&f->values[id].type, &p->type));
    e.data[id] = alloc_data(&p->type);
    memcpy(e.data[id], p->data, (size_t)ptc_type_numel(&p->type) * sizeof(double));
  }
  for (int32_t i = 0; i < f->nops; i++)
    if (eval_op(&e, &f->ops[i]) < 0) goto out;
  /* assigns commit at exit: every read above saw the entry values */
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    if (op->code != PTC_OP_ASSIGN) continue;
    ptc_tensor *dst = &params[f->values[op->in[0]].def];
    memcpy(dst->data, e.data[op->in[1]], (size_t)ptc_type_numel(&dst->type) * sizeof(double));
  }
  const ptc_op *ret = &f->ops[f->nops - 1];
  for (int32_t i = 0; i < ret->nin; i++) {
    results[i].type = *T(&e, ret->in[i]);
    results[i].data = alloc_data(&results[i].type);
    memcpy(results[i].data, e.data[ret->in[i]],
           (size_t)ptc_type_numel(&results[i].type) * sizeof(double));
  }
  rc = 0;
out:
  for (int32_t i = 0; i < f->nvalues; i++) free(e.data[i]);
  free(e.data);
  return rc;
}

/* ---- deterministic test data ---------------------------------------------- */

/* splitmix64: a counter-based generator, so element i of a tensor depends
 * only on (seed, i) */
static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void ptc_tensor_fill_random(ptc_tensor *t, uint64_t seed, double lo, double hi) {
  int64_t n = ptc_type_numel(&t->type);
  bool is_int = !ptc_dtype_is_float(t->type.dtype);
  for (int64_t i = 0; i < n; i++) {
    double u = (double)(mix64(seed * 0x100000001b3ull + (uint64_t)i) >> 11) * 0x1.0p-53;
    double v = lo + (hi - lo) * u;
    t->data[i] = is_int ? floor(v) : round_to(t->type.dtype, v);
  }
}

ptc_tensor ptc_tensor_new(const ptc_type *t) {
  ptc_tensor r = {*t, alloc_data(t)};
  return r;
}

void ptc_tensor_free(ptc_tensor *t) {
  free(t->data);
  t->data = NULL;
}
