/* attention.c -- fused scaled-dot-product attention, forward and backward,
 * that never holds the B x H x T x S score tensor.
 *
 * Forward (FlashAttention's online softmax): for each (batch, head, block
 * of PTRT_ATTN_BR query rows) the keys are visited in blocks of
 * PTRT_ATTN_BC; each block's scores update a running max, a running sum
 * and an accumulator of weighted values, rescaled when the max grows.
 * Causal attention skips the key blocks after the last row of the block.
 *
 * Backward: per (batch, key/value head) -- the unit that owns dK and dV,
 * so no two threads add into one row -- each query head of the group and
 * each row block first recomputes its row's log-sum-exp L and output O
 * (to get D = dO . O), then revisits every key block: P = exp(S - L),
 * dP = dO V^T, dS = P (dP - D), and dQ += dS K, dK += dS^T Q, dV += P^T dO
 * (the scale folded into dQ and dK).
 *
 * Layouts are those of the op: q [B, T, H, D], k [B, S, G, D],
 * v [B, S, G, E], out [B, T, H, E]; query head h reads key/value head
 * h / (H / G).  Inner loops run over a contiguous dimension so they
 * vectorise without reassociation: the key block is transposed into
 * kt[D][BC] for the scores.
 */
#include "runtime/internal.h"

enum { BR = PTRT_ATTN_BR, BC = PTRT_ATTN_BC };

typedef struct attn {
  const float *q, *k, *v, *go; /* go: the gradient of the output */
  float *o, *dq, *dk, *dv;
  int64_t B, T, H, D, S, G, E;
  float scale;
  bool causal;
} attn;

/* Per-thread scratch for one block of rows against one block of keys. */
typedef struct scratch {
  float *qb;  /* [BR][D] */
  float *kt;  /* [D][BC] */
  float *kb;  /* [BC][D] */
  float *vb;  /* [BC][E] */
  float *vt;  /* [E][BC] */
  float *s;   /* [BR][BC] scores, then probabilities */
  float *dp;  /* [BR][BC] */
  float *acc; /* [BR][E] */
  float *gb;  /* [BR][E] dO rows */
  float *dqb; /* [BR][D] */
  float *dkt; /* [D][BC] dK of the key block, transposed */
  float *dvt; /* [E][BC] dV of the key block, transposed */
  float m[BR], l[BR], lse[BR], dd[BR];
} scratch;

static void scratch_init(scratch *w, const attn *a) {
  size_t D = (size_t)a->D, E = (size_t)a->E;
  w->qb = ptc_xmalloc((BR * D + 1) * sizeof(float));
  w->kt = ptc_xmalloc((D * BC + 1) * sizeof(float));
  w->kb = ptc_xmalloc((BC * D + 1) * sizeof(float));
  w->vb = ptc_xmalloc((BC * E + 1) * sizeof(float));
  w->vt = ptc_xmalloc((E * BC + 1) * sizeof(float));
  w->s = ptc_xmalloc(BR * BC * sizeof(float));
  w->dp = ptc_xmalloc(BR * BC * sizeof(float));
  w->acc = ptc_xmalloc((BR * E + 1) * sizeof(float));
  w->gb = ptc_xmalloc((BR * E + 1) * sizeof(float));
  w->dqb = ptc_xmalloc((BR * D + 1) * sizeof(float));
  w->dkt = ptc_xmalloc((D * BC + 1) * sizeof(float));
  w->dvt = ptc_xmalloc((E * BC + 1) * sizeof(float));
}

static void scratch_fini(scratch *w) {
  free(w->qb);
  free(w->kt);
  free(w->kb);
  free(w->vb);
  free(w->vt);
  free(w->s);
  free(w->dp);
  free(w->acc);
  free(w->gb);
  free(w->dqb);
  free(w->dkt);
  free(w->dvt);
}

/* Rows [t0, t0+nr) of query head h of batch b into qb (and dO into gb). */
static void load_rows(const attn *a, scratch *w, int64_t b, int64_t h, int64_t t0,
                      int64_t nr, bool grad) {
  for (int64_t r = 0; r < nr; r++) {
    memcpy(w->qb + r * a->D, a->q + ((b * a->T + t0 + r) * a->H + h) * a->D,
           (size_t)a->D * sizeof(float));
    if (grad)
      memcpy(w->gb + r * a->E, a->go + ((b * a->T + t0 + r) * a->H + h) * a->E,
             (size_t)a->E * sizeof(float));
  }
}

/* Keys and values [s0, s0+nc) of head g of batch b: kt (transposed), and
 * kb / vt when the backward needs them. */
static void load_keys(const attn *a, scratch *w, int64_t b, int64_t g, int64_t s0,
                      int64_t nc, bool grad) {
  for (int64_t c = 0; c < nc; c++) {
    const float *kr = a->k + ((b * a->S + s0 + c) * a->G + g) * a->D;
    const float *vr = a->v + ((b * a->S + s0 + c) * a->G + g) * a->E;
    for (int64_t d = 0; d < a->D; d++) w->kt[d * BC + c] = kr[d];
    memcpy(w->vb + c * a->E, vr, (size_t)a->E * sizeof(float));
    if (grad) {
      memcpy(w->kb + c * a->D, kr, (size_t)a->D * sizeof(float));
      for (int64_t e = 0; e < a->E; e++) w->vt[e * BC + c] = vr[e];
    }
  }
}

/* s[r][c] = scale * q_r . k_c, -inf where causality masks it. */
static void scores(const attn *a, scratch *w, int64_t t0, int64_t nr, int64_t s0,
                   int64_t nc) {
  for (int64_t r = 0; r < nr; r++) {
    float *s = w->s + r * BC;
    for (int64_t c = 0; c < nc; c++) s[c] = 0.0f;
    const float *q = w->qb + r * a->D;
    for (int64_t d = 0; d < a->D; d++) ptrt_axpy(s, q[d], w->kt + d * BC, nc);
    for (int64_t c = 0; c < nc; c++) s[c] *= a->scale;
    if (a->causal)
      for (int64_t c = 0; c < nc; c++)
        if (s0 + c > t0 + r) s[c] = -INFINITY;
  }
}

/* One row block of one head: the online softmax over every key block.
 * Leaves m, l and the unnormalised acc in w. */
static void forward_block(const attn *a, scratch *w, int64_t b, int64_t h, int64_t t0,
                          int64_t nr) {
  int64_t g = h / (a->H / a->G);
  int64_t send = a->causal ? t0 + nr : a->S; /* keys this block can see */
  for (int64_t r = 0; r < nr; r++) {
    w->m[r] = -INFINITY;
    w->l[r] = 0.0f;
  }
  memset(w->acc, 0, (size_t)(nr * a->E) * sizeof(float));
  for (int64_t s0 = 0; s0 < send; s0 += BC) {
    int64_t nc = send - s0 < BC ? send - s0 : BC;
    load_keys(a, w, b, g, s0, nc, false);
    scores(a, w, t0, nr, s0, nc);
    for (int64_t r = 0; r < nr; r++) {
      float *s = w->s + r * BC, mx = ptrt_max(s, nc);
      mx = w->m[r] > mx ? w->m[r] : mx;
      if (mx == -INFINITY) continue; /* every key of the block masked */
      float corr = ptrt_expf(w->m[r] - mx), sum = 0.0f;
      for (int64_t c = 0; c < nc; c++) s[c] = ptrt_expf(s[c] - mx);
      sum = ptrt_sum(s, nc);
      w->l[r] = w->l[r] * corr + sum;
      w->m[r] = mx;
      float *acc = w->acc + r * a->E;
      if (corr != 1.0f)
        for (int64_t e = 0; e < a->E; e++) acc[e] *= corr;
      for (int64_t c = 0; c < nc; c++) ptrt_axpy(acc, s[c], w->vb + c * a->E, a->E);
    }
  }
}

/* work items: (b, h, row block) */
static void fwd_items(void *arg, int64_t i0, int64_t i1) {
  const attn *a = arg;
  int64_t nblk = (a->T + BR - 1) / BR;
  scratch w;
  scratch_init(&w, a);
  for (int64_t i = i0; i < i1; i++) {
    int64_t blk = i % nblk, h = (i / nblk) % a->H, b = i / (nblk * a->H);
    int64_t t0 = blk * BR, nr = a->T - t0 < BR ? a->T - t0 : BR;
    load_rows(a, &w, b, h, t0, nr, false);
    forward_block(a, &w, b, h, t0, nr);
    for (int64_t r = 0; r < nr; r++) {
      float *o = a->o + ((b * a->T + t0 + r) * a->H + h) * a->E;
      float inv = w.l[r] > 0 ? 1.0f / w.l[r] : 0.0f;
      for (int64_t e = 0; e < a->E; e++) o[e] = w.acc[r * a->E + e] * inv;
    }
  }
  scratch_fini(&w);
}

static void attn_setup(const ptrt_kargs *k, int q_operand, attn *a) {
  const ptc_type *qt = kin_t(k, q_operand), *kt = kin_t(k, q_operand + 1),
                 *vt = kin_t(k, q_operand + 2);
  memset(a, 0, sizeof *a);
  a->q = kin_f(k, q_operand);
  a->k = kin_f(k, q_operand + 1);
  a->v = kin_f(k, q_operand + 2);
  a->B = qt->dims[0];
  a->T = qt->dims[1];
  a->H = qt->dims[2];
  a->D = qt->dims[3];
  a->S = kt->dims[1];
  a->G = kt->dims[2];
  a->E = vt->dims[3];
  a->causal = ptc_op_attr_bool(k->op, "causal", false);
  a->scale = (float)ptc_op_attr_float(k->op, "scale", 1 / sqrt((double)a->D));
}

int ptrt__k_attention(const ptrt_kargs *k) {
  attn a;
  attn_setup(k, 0, &a);
  a.o = kout_f(k, 0);
  int64_t nblk = (a.T + BR - 1) / BR;
  ptrt_parallel_for(k->env->pool, a.B * a.H * nblk, 1, fwd_items, &a);
  return 0;
}

/* ---- backward ------------------------------------------------------------ */

static void backward_block(const attn *a, scratch *w, int64_t b, int64_t h, int64_t t0,
                           int64_t nr) {
  int64_t g = h / (a->H / a->G);
  forward_block(a, w, b, h, t0, nr);
  /* L = m + log l;  D = dO . O with O = acc / l */
  for (int64_t r = 0; r < nr; r++) {
    float inv = w->l[r] > 0 ? 1.0f / w->l[r] : 0.0f;
    double d = 0;
    for (int64_t e = 0; e < a->E; e++) d += (double)w->gb[r * a->E + e] * w->acc[r * a->E + e];
    w->dd[r] = (float)(d * inv);
    w->lse[r] = w->l[r] > 0 ? w->m[r] + logf(w->l[r]) : INFINITY;
  }
  memset(w->dqb, 0, (size_t)(nr * a->D) * sizeof(float));
  int64_t send = a->causal ? t0 + nr : a->S;
  for (int64_t s0 = 0; s0 < send; s0 += BC) {
    int64_t nc = send - s0 < BC ? send - s0 : BC;
    load_keys(a, w, b, g, s0, nc, true);
    scores(a, w, t0, nr, s0, nc);
    memset(w->dkt, 0, (size_t)(a->D * BC) * sizeof(float));
    memset(w->dvt, 0, (size_t)(a->E * BC) * sizeof(float));
    for (int64_t r = 0; r < nr; r++) {
      float *p = w->s + r * BC, *dp = w->dp + r * BC;
      for (int64_t c = 0; c < nc; c++) p[c] = ptrt_expf(p[c] - w->lse[r]); /* masked: 0 */
      /* dP = dO V^T, and dV^T += dO^T P (both over the block's keys) */
      for (int64_t c = 0; c < nc; c++) dp[c] = 0.0f;
      const float *go = w->gb + r * a->E;
      for (int64_t e = 0; e < a->E; e++) {
        ptrt_axpy(dp, go[e], w->vt + e * BC, nc);
        ptrt_axpy(w->dvt + e * BC, go[e], p, nc);
      }
      /* dS = P (dP - D), with the scale folded in */
      for (int64_t c = 0; c < nc; c++) dp[c] = p[c] * (dp[c] - w->dd[r]) * a->scale;
      /* dK^T += Q^T dS */
      const float *q = w->qb + r * a->D;
      for (int64_t d = 0; d < a->D; d++) ptrt_axpy(w->dkt + d * BC, q[d], dp, nc);
      /* dQ += dS K */
      float *dq = w->dqb + r * a->D;
      for (int64_t c = 0; c < nc; c++) ptrt_axpy(dq, dp[c], w->kb + c * a->D, a->D);
    }
    /* the block's dK and dV into their rows (this work item owns them) */
    for (int64_t c = 0; c < nc; c++) {
      float *dv = a->dv + ((b * a->S + s0 + c) * a->G + g) * a->E;
      float *dk = a->dk + ((b * a->S + s0 + c) * a->G + g) * a->D;
      for (int64_t e = 0; e < a->E; e++) dv[e] += w->dvt[e * BC + c];
      for (int64_t d = 0; d < a->D; d++) dk[d] += w->dkt[d * BC + c];
    }
  }
  for (int64_t r = 0; r < nr; r++)
    memcpy(a->dq + ((b * a->T + t0 + r) * a->H + h) * a->D, w->dqb + r * a->D,
           (size_t)a->D * sizeof(float));
}

/* work items: (b, g) -- each owns dK and dV of its key/value head */
static void bwd_items(void *arg, int64_t i0, int64_t i1) {
  const attn *a = arg;
  scratch w;
  scratch_init(&w, a);
  int64_t per = a->H / a->G;
  for (int64_t i = i0; i < i1; i++) {
    int64_t g = i % a->G, b = i / a->G;
    for (int64_t s = 0; s < a->S; s++) {
      memset(a->dk + ((b * a->S + s) * a->G + g) * a->D, 0, (size_t)a->D * sizeof(float));
      memset(a->dv + ((b * a->S + s) * a->G + g) * a->E, 0, (size_t)a->E * sizeof(float));
    }
    for (int64_t h = g * per; h < (g + 1) * per; h++)
      for (int64_t t0 = 0; t0 < a->T; t0 += BR) {
        int64_t nr = a->T - t0 < BR ? a->T - t0 : BR;
        load_rows(a, &w, b, h, t0, nr, true);
        backward_block(a, &w, b, h, t0, nr);
      }
  }
  scratch_fini(&w);
}

/* attention_grad g, q, k, v -> dq, dk, dv */
int ptrt__k_attention_grad(const ptrt_kargs *k) {
  attn a;
  attn_setup(k, 1, &a);
  a.go = kin_f(k, 0);
  a.dq = kout_f(k, 0);
  a.dk = kout_f(k, 1);
  a.dv = kout_f(k, 2);
  ptrt_parallel_for(k->env->pool, a.B * a.G, 1, bwd_items, &a);
  return 0;
}
