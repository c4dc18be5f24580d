/* kernels_nn.c -- the neural-network kernels: matrix products (OpenBLAS),
 * embedding lookups, softmax, the norms, rotary embeddings, the loss, their
 * gradients, and the optimizer updates.
 *
 * On a partitioned plan the embedding kernels take the row offset of a
 * table split on its rows, and the loss divides by the whole batch's rows
 * (internal.h: kparts, kpiece).
 *
 * Row-wise kernels split rows over the thread pool.  Kernels that sum over
 * rows (the gains' and biases' gradients, the loss) keep one partial per
 * fixed-size chunk of rows and add the partials in order, so the result is
 * the same bits whatever --threads is.  Sums over a row are in double.
 */
#include <cblas.h>
#include <limits.h>
#include <stdio.h>

#include "runtime/internal.h"

/* ---- matmul -------------------------------------------------------------- */

/* Element offset (in matrices) of batch index bi of `out` in operand t's
 * batch dims (NumPy broadcasting of the leading dims). */
static int64_t batch_offset(const ptc_type *out, int32_t orank, const ptc_type *t,
                            int32_t trank, int64_t bi) {
  int64_t idx = 0, st = 1;
  for (int32_t d = orank - 1; d >= 0; d--) {
    int64_t c = bi % out->dims[d];
    bi /= out->dims[d];
    int32_t td = trank - orank + d;
    if (td >= 0) {
      if (t->dims[td] != 1) idx += c * st;
      st *= t->dims[td];
    }
  }
  return idx;
}

int ptrt__k_matmul(const ptrt_kargs *k) {
  const ptc_type *at = kin_t(k, 0), *bt = kin_t(k, 1), *ot = kout_t(k, 0);
  bool ta = ptc_op_attr_bool(k->op, "transpose_a", false);
  bool tb = ptc_op_attr_bool(k->op, "transpose_b", false);
  int64_t M = ot->dims[ot->rank - 2], N = ot->dims[ot->rank - 1];
  int64_t K = ta ? at->dims[at->rank - 2] : at->dims[at->rank - 1];
  int32_t ob = ot->rank - 2, ab = at->rank - 2, bb = bt->rank - 2;
  int64_t nb = 1, na = 1;
  for (int32_t d = 0; d < ob; d++) nb *= ot->dims[d];
  for (int32_t d = 0; d < ab; d++) na *= at->dims[d];
  float *C = kout_f(k, 0);
  const float *A = kin_f(k, 0), *B = kin_f(k, 1);
  if (M == 0 || N == 0 || nb == 0) return 0;
  if (K == 0) {
    memset(C, 0, (size_t)ptc_type_bytes(ot));
    return 0;
  }
  /* A's batch folds into M when B has none and A is stored [batch*M, K] */
  int64_t Mf = M, loops = nb;
  if (bb == 0 && !ta && na == nb) {
    Mf = M * nb;
    loops = 1;
  }
  if (Mf > INT_MAX || N > INT_MAX || K > INT_MAX)
    return ptrt__op_error(k, "dimensions %lld x %lld x %lld exceed what the BLAS "
                          "accepts (32-bit sizes)", (long long)Mf, (long long)N,
                          (long long)K);
  int lda = (int)(ta ? M : K), ldb = (int)(tb ? K : N);
  for (int64_t bi = 0; bi < loops; bi++) {
    const float *Ab = A + batch_offset(ot, ob, at, ab, bi) * M * K;
    const float *Bb = B + batch_offset(ot, ob, bt, bb, bi) * K * N;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans,
                tb ? CblasTrans : CblasNoTrans, (int)Mf, (int)N, (int)K, 1.0f, Ab, lda,
                Bb, ldb, 0.0f, C + bi * M * N, (int)N);
  }
  return 0;
}

/* ---- embedding ------------------------------------------------------------ */

/* Checks every id against [0, rows); reports the first bad one. */
static int check_ids(const ptrt_kargs *k, int operand, int64_t n, int64_t rows,
                     const char *what) {
  const void *ids = k->in[operand];
  ptc_dtype t = kin_t(k, operand)->dtype;
  for (int64_t i = 0; i < n; i++) {
    int64_t id = index_at(ids, t, i);
    if (id < 0 || id >= rows)
      return ptrt__op_error(k, "%s %lld at position %lld is out of range [0, %lld)",
                            what, (long long)id, (long long)i, (long long)rows);
  }
  return 0;
}

typedef struct emb_job {
  const void *ids;
  ptc_dtype idt;
  const float *table;
  float *out;
  int64_t w;
  int64_t off, rows; /* the table's rows held here: [off, off + rows) */
  bool split;
} emb_job;

static void emb_rows(void *arg, int64_t b, int64_t e) {
  const emb_job *j = arg;
  if (!j->split) {
    for (int64_t i = b; i < e; i++)
      memcpy(j->out + i * j->w, j->table + index_at(j->ids, j->idt, i) * j->w,
             (size_t)j->w * sizeof(float));
    return;
  }
  for (int64_t i = b; i < e; i++) {
    int64_t r = index_at(j->ids, j->idt, i) - j->off;
    if (r >= 0 && r < j->rows)
      memcpy(j->out + i * j->w, j->table + r * j->w, (size_t)j->w * sizeof(float));
    else
      memset(j->out + i * j->w, 0, (size_t)j->w * sizeof(float));
  }
}

/* embedding ids, table [V, D]: a table split on its rows holds [off, off +
 * V_local) here; other ids give zero rows (the result is this device's
 * share of a partial sum). */
int ptrt__k_embedding(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 0), *tt = kin_t(k, 1);
  int64_t n = ptc_type_numel(it), rows = tt->dims[0], w = tt->dims[1];
  int64_t parts = kparts(k, k->op->in[1], 0);
  if (check_ids(k, 0, n, rows * parts, "index") != 0) return -1;
  emb_job j = {k->in[0], it->dtype, kin_f(k, 1), kout_f(k, 0), w,
               kpiece(k, k->op->in[1], 0) * rows, rows, parts > 1};
  ptrt_parallel_for(k->env->pool, n, grain_for(w), emb_rows, &j);
  return 0;
}

/* embedding_grad g [..., D], ids [...] -> [V, D]: columns are split over
 * threads, so each output element is summed by one thread in id order. */
typedef struct embg_job {
  const void *ids;
  ptc_dtype idt;
  const float *g;
  float *out;
  int64_t n, w;
  int64_t off, rows; /* the result's rows held here: [off, off + rows) */
} embg_job;

static void embg_cols(void *arg, int64_t c0, int64_t c1) {
  const embg_job *j = arg;
  for (int64_t i = 0; i < j->n; i++) {
    int64_t r = index_at(j->ids, j->idt, i) - j->off;
    if (r < 0 || r >= j->rows) continue; /* another device's row */
    const float *gr = j->g + i * j->w;
    float *o = j->out + r * j->w;
    for (int64_t c = c0; c < c1; c++) o[c] += gr[c];
  }
}

static void zero_rows(void *arg, int64_t b, int64_t e) {
  const embg_job *j = arg;
  memset(j->out + b * j->w, 0, (size_t)((e - b) * j->w) * sizeof(float));
}

/* A result split on its rows holds [off, off + V_local) here: only ids in
 * that range accumulate. */
int ptrt__k_embedding_grad(const ptrt_kargs *k) {
  const ptc_type *it = kin_t(k, 1), *ot = kout_t(k, 0);
  int64_t n = ptc_type_numel(it), rows = ot->dims[0], w = ot->dims[1];
  if (check_ids(k, 1, n, rows * kparts(k, k->op->out[0], 0), "index") != 0) return -1;
  embg_job z = {NULL, it->dtype, NULL, kout_f(k, 0), 0, w, 0, rows};
  ptrt_parallel_for(k->env->pool, rows, grain_for(w / 8 + 1), zero_rows, &z);
  embg_job j = {k->in[1], it->dtype, kin_f(k, 0), kout_f(k, 0), n, w,
                kpiece(k, k->op->out[0], 0) * rows, rows};
  ptrt_parallel_for(k->env->pool, w, 64, embg_cols, &j);
  return 0;
}

/* ---- softmax and its gradient --------------------------------------------- */

typedef struct sm_job {
  const float *x, *g; /* softmax: x;  softmax_grad: g and y (in x) */
  float *o;
  int64_t len, inner;
  bool grad;
} sm_job;

/* rows r are (outer, inner) pairs: elements x[(o*len + k)*inner + i] */
static void sm_rows(void *arg, int64_t r0, int64_t r1) {
  const sm_job *j = arg;
  int64_t len = j->len, in = j->inner;
  for (int64_t r = r0; r < r1; r++) {
    int64_t base = (r / in) * len * in + r % in;
    const float *x = j->x + base;
    float *o = j->o + base;
    if (j->grad) { /* y * (g - sum(g * y)) */
      const float *g = j->g + base;
      double s = 0;
      for (int64_t k = 0; k < len; k++) s += (double)g[k * in] * x[k * in];
      float sf = (float)s;
      for (int64_t k = 0; k < len; k++) o[k * in] = x[k * in] * (g[k * in] - sf);
      continue;
    }
    float mx = -INFINITY;
    for (int64_t k = 0; k < len; k++) mx = x[k * in] > mx ? x[k * in] : mx;
    for (int64_t k = 0; k < len; k++) o[k * in] = ptrt_expf(x[k * in] - mx);
    double s = 0;
    for (int64_t k = 0; k < len; k++) s += o[k * in];
    float inv = (float)(1.0 / s);
    for (int64_t k = 0; k < len; k++) o[k * in] *= inv;
  }
}

int ptrt__k_softmax(const ptrt_kargs *k) {
  int64_t outer, len, inner;
  axis_split(kin_t(k, 0), ptc_op_attr_int(k->op, "axis", 0), &outer, &len, &inner);
  sm_job j = {kin_f(k, 0), NULL, kout_f(k, 0), len, inner, false};
  ptrt_parallel_for(k->env->pool, outer * inner, grain_for(4 * len), sm_rows, &j);
  return 0;
}

int ptrt__k_softmax_grad(const ptrt_kargs *k) {
  int64_t outer, len, inner;
  axis_split(kin_t(k, 1), ptc_op_attr_int(k->op, "axis", 0), &outer, &len, &inner);
  sm_job j = {kin_f(k, 1), kin_f(k, 0), kout_f(k, 0), len, inner, true};
  ptrt_parallel_for(k->env->pool, outer * inner, grain_for(3 * len), sm_rows, &j);
  return 0;
}

/* ---- layernorm and rmsnorm ---------------------------------------------- */

typedef struct norm_job {
  const float *x, *gain, *bias, *g;
  float *y;
  int64_t c;
  float eps;
  bool center; /* layernorm subtracts the mean; rmsnorm does not */
  /* gradients: per-chunk partial sums of dgain, dbias ([nchunks][c]) */
  double *pgain, *pbias;
  int64_t grain;
} norm_job;

/* mean and 1/sqrt(var + eps) of one row (mean 0 for rmsnorm) */
static void row_stats(const norm_job *j, const float *x, float *mean, float *rstd) {
  int64_t c = j->c;
  double m = 0, v = 0;
  if (j->center) {
    for (int64_t i = 0; i < c; i++) m += x[i];
    m /= (double)c;
  }
  for (int64_t i = 0; i < c; i++) v += (x[i] - m) * (x[i] - m);
  v /= (double)c;
  *mean = (float)m;
  *rstd = (float)(1.0 / sqrt(v + j->eps));
}

static void norm_rows(void *arg, int64_t r0, int64_t r1) {
  const norm_job *j = arg;
  int64_t c = j->c;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = j->x + r * c;
    float *y = j->y + r * c, mean, rs;
    row_stats(j, x, &mean, &rs);
    if (j->bias)
      for (int64_t i = 0; i < c; i++) y[i] = (x[i] - mean) * rs * j->gain[i] + j->bias[i];
    else
      for (int64_t i = 0; i < c; i++) y[i] = (x[i] - mean) * rs * j->gain[i];
  }
}

int ptrt__k_layernorm(const ptrt_kargs *k) {
  const ptc_type *xt = kin_t(k, 0);
  int64_t c = xt->dims[xt->rank - 1], rows = c ? ptc_type_numel(xt) / c : 0;
  norm_job j = {kin_f(k, 0), kin_f(k, 1), kin_f(k, 2), NULL, kout_f(k, 0), c,
                (float)ptc_op_attr_float(k->op, "eps", 1e-5), true, NULL, NULL, 0};
  ptrt_parallel_for(k->env->pool, rows, grain_for(6 * c), norm_rows, &j);
  return 0;
}

int ptrt__k_rmsnorm(const ptrt_kargs *k) {
  const ptc_type *xt = kin_t(k, 0);
  int64_t c = xt->dims[xt->rank - 1], rows = c ? ptc_type_numel(xt) / c : 0;
  norm_job j = {kin_f(k, 0), kin_f(k, 1), NULL, NULL, kout_f(k, 0), c,
                (float)ptc_op_attr_float(k->op, "eps", 1e-5), false, NULL, NULL, 0};
  ptrt_parallel_for(k->env->pool, rows, grain_for(4 * c), norm_rows, &j);
  return 0;
}

/* dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * gain
 * (rmsnorm: without the mean(dxhat) term); dgain += g * xhat, dbias += g. */
static void norm_grad_rows(void *arg, int64_t r0, int64_t r1) {
  const norm_job *j = arg;
  int64_t c = j->c, chunk = r0 / j->grain;
  double *pg = j->pgain + chunk * c, *pb = j->pbias ? j->pbias + chunk * c : NULL;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = j->x + r * c, *g = j->g + r * c;
    float *dx = j->y + r * c, mean, rs;
    row_stats(j, x, &mean, &rs);
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < c; i++) {
      float xh = (x[i] - mean) * rs, dxh = g[i] * j->gain[i];
      s1 += dxh;
      s2 += (double)dxh * xh;
      pg[i] += (double)g[i] * xh;
    }
    if (pb)
      for (int64_t i = 0; i < c; i++) pb[i] += g[i];
    float m1 = j->center ? (float)(s1 / (double)c) : 0.0f, m2 = (float)(s2 / (double)c);
    for (int64_t i = 0; i < c; i++) {
      float xh = (x[i] - mean) * rs;
      dx[i] = rs * (g[i] * j->gain[i] - m1 - xh * m2);
    }
  }
}

/* layernorm_grad g, x, gain -> dx, dgain, dbias;  rmsnorm_grad -> dx, dgain */
static int norm_grad(const ptrt_kargs *k, bool center) {
  const ptc_type *xt = kin_t(k, 1);
  int64_t c = xt->dims[xt->rank - 1], rows = c ? ptc_type_numel(xt) / c : 0;
  const int64_t grain = 32;
  int64_t nchunks = (rows + grain - 1) / grain;
  norm_job j = {kin_f(k, 1), kin_f(k, 2), NULL, kin_f(k, 0), kout_f(k, 0), c,
                (float)ptc_op_attr_float(k->op, "eps", 1e-5), center, NULL, NULL, grain};
  j.pgain = ptc_xcalloc((size_t)(nchunks * c + 1), sizeof(double));
  if (center) j.pbias = ptc_xcalloc((size_t)(nchunks * c + 1), sizeof(double));
  ptrt_parallel_for(k->env->pool, rows, grain, norm_grad_rows, &j);
  float *dg = kout_f(k, 1), *db = center ? kout_f(k, 2) : NULL;
  for (int64_t i = 0; i < c; i++) {
    double sg = 0, sb = 0;
    for (int64_t ch = 0; ch < nchunks; ch++) {
      sg += j.pgain[ch * c + i];
      if (db) sb += j.pbias[ch * c + i];
    }
    dg[i] = (float)sg;
    if (db) db[i] = (float)sb;
  }
  free(j.pgain);
  free(j.pbias);
  return 0;
}

int ptrt__k_layernorm_grad(const ptrt_kargs *k) { return norm_grad(k, true); }
int ptrt__k_rmsnorm_grad(const ptrt_kargs *k) { return norm_grad(k, false); }

/* ---- rope -------------------------------------------------------------------- */

typedef struct rope_job {
  const float *x;
  float *y;
  const float *cs, *sn; /* [T][D/2] */
  int64_t T, H, D;
} rope_job;

/* rows are (b, t) pairs; each holds H heads of D */
static void rope_rows(void *arg, int64_t r0, int64_t r1) {
  const rope_job *j = arg;
  int64_t h2 = j->D / 2;
  for (int64_t r = r0; r < r1; r++) {
    int64_t t = r % j->T;
    const float *cs = j->cs + t * h2, *sn = j->sn + t * h2;
    for (int64_t h = 0; h < j->H; h++) {
      const float *x = j->x + (r * j->H + h) * j->D;
      float *y = j->y + (r * j->H + h) * j->D;
      for (int64_t i = 0; i < h2; i++) {
        float a = x[i], b = x[i + h2];
        y[i] = a * cs[i] - b * sn[i];
        y[i + h2] = b * cs[i] + a * sn[i];
      }
    }
  }
}

/* Rotate-half RoPE at positions 0..T-1; inverse = true rotates back (the
 * negative angle), which is rope's gradient. */
int ptrt__k_rope(const ptrt_kargs *k) {
  const ptc_type *xt = kin_t(k, 0);
  int64_t B = xt->dims[0], T = xt->dims[1], H = xt->dims[2], D = xt->dims[3], h2 = D / 2;
  double theta = ptc_op_attr_float(k->op, "theta", 10000);
  double sign = ptc_op_attr_bool(k->op, "inverse", false) ? -1.0 : 1.0;
  float *cs = ptc_xmalloc((size_t)(T * h2 + 1) * sizeof *cs);
  float *sn = ptc_xmalloc((size_t)(T * h2 + 1) * sizeof *sn);
  for (int64_t t = 0; t < T; t++)
    for (int64_t i = 0; i < h2; i++) {
      double ang = (double)t * pow(theta, -2.0 * (double)i / (double)D);
      cs[t * h2 + i] = (float)cos(ang);
      sn[t * h2 + i] = (float)(sign * sin(ang));
    }
  rope_job j = {kin_f(k, 0), kout_f(k, 0), cs, sn, T, H, D};
  ptrt_parallel_for(k->env->pool, B * T, grain_for(3 * H * D), rope_rows, &j);
  free(cs);
  free(sn);
  return 0;
}

/* ---- cross entropy ------------------------------------------------------ */

typedef struct ce_job {
  const float *x, *g;
  const void *tgt;
  ptc_dtype tt;
  float *out;   /* the gradient (cross_entropy_grad) */
  double *loss; /* per row (cross_entropy) */
  int64_t C, classes;
  float scale; /* gradient: g / rows */
} ce_job;

/* log-sum-exp over the real classes of one row, and its max.  Eight
 * running sums, so the loop vectorises; each holds a few thousand terms of
 * at most 1, well within f32's precision for a loss. */
static double row_lse(const float *x, int64_t classes, float *mx_out) {
  float mx = ptrt_max(x, classes);
  int64_t c8 = classes & ~(int64_t)7;
  float s8[8] = {0};
  for (int64_t c = 0; c < c8; c += 8)
    for (int j = 0; j < 8; j++) s8[j] += ptrt_expf(x[c + j] - mx);
  double s = 0;
  for (int j = 0; j < 8; j++) s += s8[j];
  for (int64_t c = c8; c < classes; c++) s += ptrt_expf(x[c] - mx);
  *mx_out = mx;
  return log(s) + mx;
}

static void ce_rows(void *arg, int64_t r0, int64_t r1) {
  const ce_job *j = arg;
  for (int64_t r = r0; r < r1; r++) {
    const float *x = j->x + r * j->C;
    int64_t t = index_at(j->tgt, j->tt, r);
    float mx;
    double lse = row_lse(x, j->classes, &mx);
    if (j->loss) {
      j->loss[r] = lse - x[t];
      continue;
    }
    float *o = j->out + r * j->C;
    float l = (float)lse;
    for (int64_t c = 0; c < j->classes; c++) o[c] = j->scale * ptrt_expf(x[c] - l);
    for (int64_t c = j->classes; c < j->C; c++) o[c] = 0.0f;
    o[t] -= j->scale;
  }
}

static int ce_check(const ptrt_kargs *k, int tgt_operand, int64_t rows, int64_t classes) {
  return check_ids(k, tgt_operand, rows, classes, "target");
}

/* The loss is a mean over every row of the whole batch: the rows here
 * times the parts the targets' dimensions are split into (the classes are
 * whole on every device). */
static int64_t ce_global_rows(const ptrt_kargs *k, int tgt_operand, int64_t rows) {
  const ptc_type *tt = kin_t(k, tgt_operand);
  for (int32_t d = 0; d < tt->rank; d++) rows *= kparts(k, k->op->in[tgt_operand], d);
  return rows;
}

/* ---- vocabulary-parallel: the classes split over mesh axes ------------------ */

/* all_reduce of n floats over every axis in `axes`, noting what for the
 * communicator's messages. */
static int vp_reduce(const ptrt_kargs *k, uint8_t axes, ptrt_reduce op, float *buf, int64_t n) {
  const ptrt_comm *c = k->env->comm;
  for (int a = 0; a < c->mesh.naxes; a++) {
    if (!(axes & (1u << a)) || c->mesh.axes[a].size <= 1) continue;
    snprintf(c->state->what, sizeof c->state->what, "%s over %s (vocabulary-parallel) at %s:%d:%d",
             ptc_opinfo_get(k->op->code)->name, c->mesh.axes[a].name,
             k->op->loc.file ? k->op->loc.file : "?", k->op->loc.line, k->op->loc.col);
    if (c->all_reduce(c, a, op, buf, n) != 0)
      return ptrt__op_error(k, "the %s communicator failed (rank %d of %d)", c->name, c->rank,
                            c->size);
  }
  return 0;
}

/* Loss (g == NULL: per-row loss into loss[]) or gradient (into out) of a
 * cross-entropy whose classes are split: this device holds columns
 * [off, off + C) of the classes.  The row max, the sum of exponentials and
 * the target's logit are all-reduced over the class axes. */
static int ce_vocab_parallel(const ptrt_kargs *k, int at, double *loss, float *out, float scale) {
  const ptc_type *lt = kin_t(k, at), *tt = kin_t(k, at + 1);
  int32_t lv = k->op->in[at];
  int64_t C = lt->dims[lt->rank - 1], rows = ptc_type_numel(tt);
  int64_t off = kpiece(k, lv, lt->rank - 1) * C;
  int64_t classes = ptc_op_attr_int(k->op, "classes", C * kparts(k, lv, lt->rank - 1));
  int64_t valid = classes - off < 0 ? 0 : classes - off > C ? C : classes - off;
  uint8_t axes = k->f->values[lv].shard.dim_axes[lt->rank - 1];
  const float *x = kin_f(k, at);
  const void *tgt = k->in[at + 1];
  float *buf = ptc_xmalloc((size_t)(3 * rows + 1) * sizeof *buf);
  float *mx = buf, *sum = buf + rows, *tl = buf + 2 * rows;
  for (int64_t r = 0; r < rows; r++) mx[r] = ptrt_max(x + r * C, valid);
  int rc = vp_reduce(k, axes, PTRT_REDUCE_MAX, mx, rows);
  for (int64_t r = 0; rc == 0 && r < rows; r++) {
    double s = 0;
    for (int64_t c = 0; c < valid; c++) s += ptrt_expf(x[r * C + c] - mx[r]);
    sum[r] = (float)s;
    int64_t t = index_at(tgt, tt->dtype, r) - off;
    tl[r] = t >= 0 && t < C ? x[r * C + t] : 0.0f;
  }
  if (rc == 0) rc = vp_reduce(k, axes, PTRT_REDUCE_SUM, sum, rows);
  if (rc == 0 && loss) rc = vp_reduce(k, axes, PTRT_REDUCE_SUM, tl, rows);
  for (int64_t r = 0; rc == 0 && r < rows; r++) {
    double lse = log((double)sum[r]) + mx[r];
    if (loss) {
      loss[r] = lse - tl[r];
      continue;
    }
    float *o = out + r * C;
    float l = (float)lse;
    for (int64_t c = 0; c < valid; c++) o[c] = scale * ptrt_expf(x[r * C + c] - l);
    for (int64_t c = valid; c < C; c++) o[c] = 0.0f;
    int64_t t = index_at(tgt, tt->dtype, r) - off;
    if (t >= 0 && t < C) o[t] -= scale;
  }
  free(buf);
  return rc;
}

int ptrt__k_cross_entropy(const ptrt_kargs *k) {
  const ptc_type *lt = kin_t(k, 0), *tt = kin_t(k, 1);
  int64_t C = lt->dims[lt->rank - 1], rows = ptc_type_numel(tt);
  if (kparts(k, k->op->in[0], lt->rank - 1) > 1) {
    int64_t gc = C * kparts(k, k->op->in[0], lt->rank - 1);
    if (ce_check(k, 1, rows, ptc_op_attr_int(k->op, "classes", gc)) != 0) return -1;
    int64_t all = ce_global_rows(k, 1, rows);
    double *loss = ptc_xmalloc((size_t)(rows + 1) * sizeof *loss);
    int rc = ce_vocab_parallel(k, 0, loss, NULL, 0);
    double total = 0;
    for (int64_t r = 0; r < rows; r++) total += loss[r];
    free(loss);
    kout_f(k, 0)[0] = (float)(all ? total / (double)all : 0);
    return rc;
  }
  int64_t classes = ptc_op_attr_int(k->op, "classes", C);
  if (ce_check(k, 1, rows, classes) != 0) return -1;
  int64_t all = ce_global_rows(k, 1, rows);
  double *loss = ptc_xmalloc((size_t)(rows + 1) * sizeof *loss);
  ce_job j = {kin_f(k, 0), NULL, k->in[1], tt->dtype, NULL, loss, C, classes, 0};
  ptrt_parallel_for(k->env->pool, rows, grain_for(3 * classes), ce_rows, &j);
  double total = 0;
  for (int64_t r = 0; r < rows; r++) total += loss[r];
  free(loss);
  kout_f(k, 0)[0] = (float)(all ? total / (double)all : 0);
  return 0;
}

/* cross_entropy_grad g, logits, targets: g / rows * (softmax - onehot) over
 * the real classes, 0 on padded ones (rows: of the whole batch) */
int ptrt__k_cross_entropy_grad(const ptrt_kargs *k) {
  const ptc_type *lt = kin_t(k, 1), *tt = kin_t(k, 2);
  int64_t C = lt->dims[lt->rank - 1], rows = ptc_type_numel(tt);
  if (kparts(k, k->op->in[1], lt->rank - 1) > 1) {
    int64_t gc = C * kparts(k, k->op->in[1], lt->rank - 1);
    if (ce_check(k, 2, rows, ptc_op_attr_int(k->op, "classes", gc)) != 0) return -1;
    int64_t all = ce_global_rows(k, 2, rows);
    float scale = all ? (float)((double)kin_f(k, 0)[0] / (double)all) : 0.0f;
    return ce_vocab_parallel(k, 1, NULL, kout_f(k, 0), scale);
  }
  int64_t classes = ptc_op_attr_int(k->op, "classes", C);
  if (ce_check(k, 2, rows, classes) != 0) return -1;
  int64_t all = ce_global_rows(k, 2, rows);
  float scale = all ? (float)((double)kin_f(k, 0)[0] / (double)all) : 0.0f;
  ce_job j = {kin_f(k, 1), NULL, k->in[2], tt->dtype, kout_f(k, 0), NULL, C, classes, scale};
  ptrt_parallel_for(k->env->pool, rows, grain_for(4 * classes), ce_rows, &j);
  return 0;
}

/* ---- optimizer updates ---------------------------------------------------- */

typedef struct opt_job {
  const float *p, *g, *m, *v;
  float *p1, *m1, *v1;
  float b1, b2, eps, wd, lr, mom;
  double c1, c2;
  bool nesterov;
} opt_job;

static void adamw_range(void *arg, int64_t b, int64_t e) {
  const opt_job *j = arg;
  float ic1 = (float)(1.0 / j->c1), ic2 = (float)(1.0 / j->c2), decay = 1.0f - j->lr * j->wd;
  for (int64_t i = b; i < e; i++) {
    float g = j->g[i];
    float m = j->b1 * j->m[i] + (1.0f - j->b1) * g;
    float v = j->b2 * j->v[i] + (1.0f - j->b2) * g * g;
    j->m1[i] = m;
    j->v1[i] = v;
    j->p1[i] = j->p[i] * decay - j->lr * (m * ic1) / (sqrtf(v * ic2) + j->eps);
  }
}

/* adamw p, g, m, v, lr, step -> p', m', v' (PyTorch's AdamW) */
int ptrt__k_adamw(const ptrt_kargs *k) {
  double b1 = ptc_op_attr_float(k->op, "beta1", 0.9), b2 = ptc_op_attr_float(k->op, "beta2", 0.999);
  double t = kin_f(k, 5)[0];
  opt_job j = {kin_f(k, 0), kin_f(k, 1), kin_f(k, 2), kin_f(k, 3), kout_f(k, 0), kout_f(k, 1),
               kout_f(k, 2), (float)b1, (float)b2,
               (float)ptc_op_attr_float(k->op, "eps", 1e-8),
               (float)ptc_op_attr_float(k->op, "weight_decay", 0), kin_f(k, 4)[0], 0,
               1 - pow(b1, t), 1 - pow(b2, t), false};
  ptrt_parallel_for(k->env->pool, ptc_type_numel(kin_t(k, 0)), 16384, adamw_range, &j);
  return 0;
}

static void sgd_range(void *arg, int64_t b, int64_t e) {
  const opt_job *j = arg;
  for (int64_t i = b; i < e; i++) {
    float d = j->g[i] + j->wd * j->p[i];
    float buf = j->mom * j->m[i] + d;
    j->m1[i] = buf;
    j->p1[i] = j->p[i] - j->lr * (j->nesterov ? d + j->mom * buf : buf);
  }
}

/* sgd p, g, buf, lr -> p', buf' (PyTorch's SGD with momentum) */
int ptrt__k_sgd(const ptrt_kargs *k) {
  opt_job j = {kin_f(k, 0), kin_f(k, 1), kin_f(k, 2), NULL, kout_f(k, 0), kout_f(k, 1), NULL,
               0, 0, 0, (float)ptc_op_attr_float(k->op, "weight_decay", 0), kin_f(k, 3)[0],
               (float)ptc_op_attr_float(k->op, "momentum", 0), 0, 0,
               ptc_op_attr_bool(k->op, "nesterov", false)};
  ptrt_parallel_for(k->env->pool, ptc_type_numel(kin_t(k, 0)), 16384, sgd_range, &j);
  return 0;
}
