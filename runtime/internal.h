/* internal.h -- what the runtime's kernel files share and nothing outside
 * runtime/ needs: operand access, error reporting at an op, grain sizes,
 * and the broadcast iterator of the element-wise kernels. */
#ifndef PTRT_INTERNAL_H
#define PTRT_INTERNAL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ptrt.h"

static inline const ptc_type *kin_t(const ptrt_kargs *k, int i) {
  return &k->f->values[k->op->in[i]].type;
}
static inline const ptc_type *kout_t(const ptrt_kargs *k, int i) {
  return &k->f->values[k->op->out[i]].type;
}
static inline const float *kin_f(const ptrt_kargs *k, int i) {
  return (const float *)k->in[i];
}
static inline float *kout_f(const ptrt_kargs *k, int i) { return (float *)k->out[i]; }

/* The SPMD view (ptrt.h): f's types are one device's pieces, and a kernel
 * that needs the whole tensor's size or where its piece starts reads the
 * value's sharding on the communicator's mesh.  The one-rank table has a
 * mesh without axes, so every dimension is in 1 part and piece 0 there.
 * kparts: the parts dimension d of value v is cut into; kpiece: which of
 * them this device holds. */
static inline int64_t kparts(const ptrt_kargs *k, int32_t v, int32_t d) {
  const ptc_sharding *s = &k->f->values[v].shard;
  return s->present ? ptc_shard_parts(&k->env->comm->mesh, s->dim_axes[d]) : 1;
}
static inline int64_t kpiece(const ptrt_kargs *k, int32_t v, int32_t d) {
  const ptc_sharding *s = &k->f->values[v].shard;
  if (kparts(k, v, d) == 1) return 0;
  return ptc_shard_index(&k->env->comm->mesh, s->dim_axes[d], k->env->comm->coord);
}

/* "<op>: msg" at the op's location; returns -1. */
int ptrt__op_error(const ptrt_kargs *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Reads element i of an integer index buffer (i32 or i64). */
static inline int64_t index_at(const void *p, ptc_dtype t, int64_t i) {
  return t == PTC_DTYPE_I64 ? ((const int64_t *)p)[i] : ((const int32_t *)p)[i];
}

/* e^x in f32 without a library call, so loops over it vectorise: 2^k
 * times a degree-6 polynomial on |r| <= ln2/2 (Cody-Waite reduction), about
 * 2 ulp from expf.  Exact at the edges: -inf and anything below the
 * smallest normal's log give 0, above the largest give inf, NaN stays. */
static inline float ptrt_expf(float x) {
  float xc = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
  float kf = xc * 1.44269504f + 12582912.0f; /* 1.5 * 2^23: k in the low bits */
  uint32_t kb;
  memcpy(&kb, &kf, 4);
  kf -= 12582912.0f;
  float r = xc - kf * 0.693145751953125f;
  r -= kf * 1.428606765330187e-06f;
  float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666667e-1f +
            r * (4.1666668e-2f + r * (8.3333338e-3f + r * 1.3888889e-3f)))));
  uint32_t pb;
  memcpy(&pb, &p, 4);
  pb += (kb - 0x4B400000u) << 23; /* times 2^k */
  memcpy(&p, &pb, 4);
  p = x < -87.5f ? 0.0f : p;
  p = x > 88.5f ? INFINITY : p;
  return x != x ? x : p;
}

/* Inner loops of attention run over a head dimension (16 to 128): ask for
 * 8-wide vectors without interleaving, so short loops take the vector path
 * instead of the scalar remainder. */
#if defined(__clang__)
#define PTRT_VEC8 _Pragma("clang loop vectorize_width(8) interleave_count(1)")
#else
#define PTRT_VEC8 _Pragma("GCC ivdep")
#endif

/* y += a x over n floats that do not overlap */
static inline void ptrt_axpy(float *restrict y, float a, const float *restrict x, int64_t n) {
  PTRT_VEC8
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

/* The largest of n floats (-inf for none); eight lanes so it vectorises. */
static inline float ptrt_max(const float *x, int64_t n) {
  float m[8];
  for (int j = 0; j < 8; j++) m[j] = -INFINITY;
  int64_t n8 = n & ~(int64_t)7;
  for (int64_t i = 0; i < n8; i += 8)
    for (int j = 0; j < 8; j++) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
  float r = -INFINITY;
  for (int j = 0; j < 8; j++) r = m[j] > r ? m[j] : r;
  for (int64_t i = n8; i < n; i++) r = x[i] > r ? x[i] : r;
  return r;
}

/* The sum of n floats, in eight lanes. */
static inline float ptrt_sum(const float *x, int64_t n) {
  float s[8] = {0};
  int64_t n8 = n & ~(int64_t)7;
  for (int64_t i = 0; i < n8; i += 8)
    for (int j = 0; j < 8; j++) s[j] += x[i + j];
  float r = 0;
  for (int j = 0; j < 8; j++) r += s[j];
  for (int64_t i = n8; i < n; i++) r += x[i];
  return r;
}

/* Items per chunk so that a chunk is worth a wake-up: about 32k element
 * operations. */
static inline int64_t grain_for(int64_t cost_per_item) {
  int64_t g = 32768 / (cost_per_item > 0 ? cost_per_item : 1);
  return g < 1 ? 1 : g;
}

/* rows x len view of a tensor around one axis: outer, len, inner. */
static inline void axis_split(const ptc_type *t, int64_t axis, int64_t *outer,
                              int64_t *len, int64_t *inner) {
  int64_t o = 1, in = 1;
  for (int32_t d = 0; d < axis; d++) o *= t->dims[d];
  for (int32_t d = (int32_t)axis + 1; d < t->rank; d++) in *= t->dims[d];
  *outer = o;
  *len = t->dims[axis];
  *inner = in;
}

/* Broadcasting of up to two operands against an output shape, collapsed:
 * size-1 dims dropped, neighbouring dims merged where every operand is
 * contiguous across them.  st[k][d] is operand k's stride (0 where it is
 * broadcast) on collapsed dim d; the last dim is the row. */
typedef struct ptrt_bcast {
  int32_t rank;
  int64_t dims[PTC_MAX_RANK];
  int64_t st[2][PTC_MAX_RANK];
  int64_t rows, row_len;
} ptrt_bcast;

void ptrt__bcast_plan(ptrt_bcast *b, const ptc_type *out, int nin,
                      const ptc_type *const *in);
/* Element offsets of operand 0 and 1 at the start of row r. */
void ptrt__bcast_row(const ptrt_bcast *b, int64_t r, int64_t *o0, int64_t *o1);

/* kernels_nn.c and attention.c entry points the table in kernels.c uses */
#define PTRT_NN_KERNELS(X)                                                    \
  X(matmul) X(embedding) X(softmax) X(layernorm) X(rmsnorm) X(rope)            \
  X(cross_entropy) X(softmax_grad) X(layernorm_grad) X(rmsnorm_grad)           \
  X(cross_entropy_grad) X(embedding_grad) X(attention) X(attention_grad)       \
  X(adamw) X(sgd)
#define PTRT_DECLARE_KERNEL(n) int ptrt__k_##n(const ptrt_kargs *k);
PTRT_NN_KERNELS(PTRT_DECLARE_KERNEL)

#endif /* PTRT_INTERNAL_H */
