/* types.c -- dtypes, static shapes, the device mesh and shardings.
 *
 * The mesh grammar accepted by --mesh (DESIGN.md "Mesh and ranks"):
 *   N            dp=N
 *   AxB          dp=A, tp=B
 *   AxBxC        pp=A, dp=B, tp=C
 *   pp=A,dp=B,tp=C   named axes, any subset, any order; stored pp, dp, tp
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

static const struct {
  const char *name;
  int size;
  bool is_float;
} dtypes[] = {
    [PTC_DTYPE_F32] = {"f32", 4, true},  [PTC_DTYPE_F64] = {"f64", 8, true},
    [PTC_DTYPE_BF16] = {"bf16", 2, true}, [PTC_DTYPE_F16] = {"f16", 2, true},
    [PTC_DTYPE_I64] = {"i64", 8, false}, [PTC_DTYPE_I32] = {"i32", 4, false},
    [PTC_DTYPE_I8] = {"i8", 1, false},   [PTC_DTYPE_BOOL] = {"bool", 1, false},
};
_Static_assert(sizeof dtypes / sizeof dtypes[0] == PTC_DTYPE_COUNT,
               "dtype table out of sync with ptc_dtype");

const char *ptc_dtype_name(ptc_dtype t) {
  PTC_ASSERT((unsigned)t < PTC_DTYPE_COUNT);
  return dtypes[t].name;
}

int ptc_dtype_from_name(const char *s, size_t n) {
  for (int i = 0; i < PTC_DTYPE_COUNT; i++)
    if (strlen(dtypes[i].name) == n && memcmp(dtypes[i].name, s, n) == 0) return i;
  return -1;
}

int ptc_dtype_size(ptc_dtype t) {
  PTC_ASSERT((unsigned)t < PTC_DTYPE_COUNT);
  return dtypes[t].size;
}

bool ptc_dtype_is_float(ptc_dtype t) {
  PTC_ASSERT((unsigned)t < PTC_DTYPE_COUNT);
  return dtypes[t].is_float;
}

/* Shapes are validated against PTC_MAX_ELEMENTS when built, so these
 * products cannot overflow. */
int64_t ptc_type_numel(const ptc_type *t) {
  int64_t n = 1;
  for (int32_t i = 0; i < t->rank; i++) n *= t->dims[i];
  return n;
}

int64_t ptc_type_bytes(const ptc_type *t) {
  return ptc_type_numel(t) * ptc_dtype_size(t->dtype);
}

bool ptc_type_eq(const ptc_type *a, const ptc_type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int32_t i = 0; i < a->rank; i++)
    if (a->dims[i] != b->dims[i]) return false;
  return true;
}

void ptc_type_print(ptc_buf *b, const ptc_type *t) {
  ptc_buf_printf(b, "%s[", ptc_dtype_name(t->dtype));
  for (int32_t i = 0; i < t->rank; i++)
    ptc_buf_printf(b, i ? ",%lld" : "%lld", (long long)t->dims[i]);
  ptc_buf_puts(b, "]");
}

/* ---- mesh -------------------------------------------------------------- */

static const char *const canon_axes[] = {"pp", "dp", "tp"};
enum { NCANON = 3 };
/* A mesh bigger than this is surely a typo; 2^24 devices. */
#define MAX_MESH_SIZE (INT64_C(1) << 24)

static int canon_index(const char *s, size_t n) {
  for (int i = 0; i < NCANON; i++)
    if (strlen(canon_axes[i]) == n && memcmp(canon_axes[i], s, n) == 0) return i;
  return -1;
}

/* Parses a positive decimal at *p; advances p. */
static bool parse_size(const char **p, int64_t *out) {
  const char *s = *p;
  if (!isdigit((unsigned char)*s)) return false;
  int64_t v = 0;
  while (isdigit((unsigned char)*s)) {
    if (!ptc_mul_ovf(v, 10, &v) || !ptc_add_ovf(v, *s - '0', &v)) return false;
    s++;
  }
  *p = s;
  *out = v;
  return true;
}

int ptc_mesh_parse(const char *s, ptc_mesh *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  int64_t sizes[NCANON] = {0, 0, 0};
  bool given[NCANON] = {false, false, false};
  const char *p = s;
  if (!*s) {
    snprintf(err, errlen, "empty mesh; expected e.g. 8, 2x4, 2x2x2 or pp=2,dp=2,tp=2");
    return -1;
  }
  if (isdigit((unsigned char)*s)) {
    int64_t v[4];
    int n = 0;
    for (;;) {
      if (n == 3) {
        snprintf(err, errlen, "at most 3 dimensions (pp x dp x tp) in '%s'", s);
        return -1;
      }
      if (!parse_size(&p, &v[n])) {
        if (isdigit((unsigned char)*p))
          snprintf(err, errlen, "size at offset %d of '%s' is too large", (int)(p - s), s);
        else
          snprintf(err, errlen, "expected a size at offset %d of '%s'; "
                   "expected e.g. 8, 2x4 or 2x2x2", (int)(p - s), s);
        return -1;
      }
      n++;
      if (*p == 0) break;
      if (*p != 'x') {
        snprintf(err, errlen, "unexpected '%c' at offset %d of '%s'; "
                 "dimensions are separated by 'x' (2x4)", *p, (int)(p - s), s);
        return -1;
      }
      p++;
    }
    static const int first_axis[] = {1, 1, 0}; /* by count: dp | dp,tp | pp,dp,tp */
    for (int i = 0; i < n; i++) {
      int ax = first_axis[n - 1] + i;
      sizes[ax] = v[i];
      given[ax] = true;
    }
  } else {
    for (;;) {
      const char *name = p;
      while (isalpha((unsigned char)*p)) p++;
      size_t nlen = (size_t)(p - name);
      int ax = canon_index(name, nlen);
      if (ax < 0) {
        snprintf(err, errlen, "unknown mesh axis '%.*s' in '%s'; the axes are "
                 "pp, dp and tp", (int)(nlen ? nlen : 1), nlen ? name : p, s);
        return -1;
      }
      if (given[ax]) {
        snprintf(err, errlen, "axis '%s' given twice in '%s'", canon_axes[ax], s);
        return -1;
      }
      if (*p != '=') {
        snprintf(err, errlen, "expected '=' after '%s' in '%s' (e.g. dp=2)",
                 canon_axes[ax], s);
        return -1;
      }
      p++;
      if (!parse_size(&p, &sizes[ax])) {
        snprintf(err, errlen, isdigit((unsigned char)*p) ? "size after '%s=' in '%s' is too large"
                 : "expected a size after '%s=' in '%s'", canon_axes[ax], s);
        return -1;
      }
      given[ax] = true;
      if (*p == 0) break;
      if (*p != ',') {
        snprintf(err, errlen, "unexpected '%c' in '%s'; axes are separated by ','",
                 *p, s);
        return -1;
      }
      p++;
    }
  }
  int64_t total = 1;
  for (int i = 0; i < NCANON; i++) {
    if (!given[i]) continue;
    if (sizes[i] < 1) {
      snprintf(err, errlen, "axis %s has size %lld; every axis needs at least 1 device",
               canon_axes[i], (long long)sizes[i]);
      return -1;
    }
    if (!ptc_mul_ovf(total, sizes[i], &total) || total > MAX_MESH_SIZE) {
      snprintf(err, errlen, "mesh '%s' has more than %lld devices", s,
               (long long)MAX_MESH_SIZE);
      return -1;
    }
    snprintf(out->axes[out->naxes].name, sizeof out->axes[0].name, "%s", canon_axes[i]);
    out->axes[out->naxes].size = sizes[i];
    out->naxes++;
  }
  return 0;
}

int ptc_mesh_axis(const ptc_mesh *m, const char *name, size_t n) {
  for (int i = 0; i < m->naxes; i++)
    if (strlen(m->axes[i].name) == n && memcmp(m->axes[i].name, name, n) == 0) return i;
  return -1;
}

int64_t ptc_mesh_size(const ptc_mesh *m) {
  int64_t n = 1;
  for (int i = 0; i < m->naxes; i++) n *= m->axes[i].size;
  return n;
}

void ptc_mesh_print(ptc_buf *b, const ptc_mesh *m) {
  if (m->naxes == 0) return;
  ptc_buf_puts(b, "mesh<");
  for (int i = 0; i < m->naxes; i++)
    ptc_buf_printf(b, "%s%s=%lld", i ? ", " : "", m->axes[i].name,
                   (long long)m->axes[i].size);
  ptc_buf_puts(b, ">");
}

/* ---- sharding ---------------------------------------------------------- */

static void print_axes(ptc_buf *b, uint8_t mask, const ptc_mesh *m) {
  int n = __builtin_popcount(mask);
  if (n > 1) ptc_buf_puts(b, "(");
  bool first = true;
  for (int i = 0; i < PTC_MAX_MESH_AXES; i++) {
    if (!(mask & (1u << i))) continue;
    if (!first) ptc_buf_puts(b, ",");
    first = false;
    if (m && i < m->naxes) ptc_buf_puts(b, m->axes[i].name);
    else ptc_buf_printf(b, "axis%d", i);
  }
  if (n > 1) ptc_buf_puts(b, ")");
}

void ptc_sharding_print(ptc_buf *b, const ptc_sharding *s, int32_t rank,
                        const ptc_mesh *m) {
  if (!s->present) return;
  bool any_split = false;
  for (int32_t d = 0; d < rank; d++) any_split |= s->dim_axes[d] != 0;
  if (any_split || !s->partial) {
    ptc_buf_puts(b, "shard<");
    for (int32_t d = 0; d < rank; d++) {
      if (d) ptc_buf_puts(b, ",");
      if (s->dim_axes[d]) print_axes(b, s->dim_axes[d], m);
      else ptc_buf_puts(b, "_");
    }
    ptc_buf_puts(b, ">");
  }
  if (s->partial) {
    if (any_split || !s->partial) ptc_buf_puts(b, " ");
    ptc_buf_puts(b, "partial<");
    bool first = true;
    for (int i = 0; i < PTC_MAX_MESH_AXES; i++) {
      if (!(s->partial & (1u << i))) continue;
      if (!first) ptc_buf_puts(b, ",");
      first = false;
      if (m && i < m->naxes) ptc_buf_puts(b, m->axes[i].name);
      else ptc_buf_printf(b, "axis%d", i);
    }
    ptc_buf_puts(b, ">");
  }
}

bool ptc_sharding_eq(const ptc_sharding *a, const ptc_sharding *b, int32_t rank) {
  if (a->present != b->present) return false;
  if (!a->present) return true;
  if (a->partial != b->partial) return false;
  for (int32_t d = 0; d < rank; d++)
    if (a->dim_axes[d] != b->dim_axes[d]) return false;
  return true;
}

/* ---- the local view ------------------------------------------------------ */

int64_t ptc_shard_parts(const ptc_mesh *m, uint8_t axes) {
  int64_t n = 1;
  for (int i = 0; i < m->naxes; i++)
    if (axes & (1u << i)) n *= m->axes[i].size;
  return n;
}

void ptc_local_type(const ptc_mesh *m, const ptc_type *global, const ptc_sharding *s,
                    ptc_type *local) {
  *local = *global;
  if (!s || !s->present) return;
  for (int32_t d = 0; d < global->rank; d++)
    if (s->dim_axes[d]) local->dims[d] = global->dims[d] / ptc_shard_parts(m, s->dim_axes[d]);
}

int64_t ptc_shard_index(const ptc_mesh *m, uint8_t axes, const int32_t *coord) {
  int64_t idx = 0;
  for (int i = 0; i < m->naxes; i++)
    if (axes & (1u << i)) idx = idx * m->axes[i].size + coord[i];
  return idx;
}

void ptc_mesh_coord(const ptc_mesh *m, int64_t rank, int32_t *coord) {
  for (int i = m->naxes - 1; i >= 0; i--) {
    coord[i] = (int32_t)(rank % m->axes[i].size);
    rank /= m->axes[i].size;
  }
}

int64_t ptc_mesh_rank(const ptc_mesh *m, const int32_t *coord) {
  int64_t r = 0;
  for (int i = 0; i < m->naxes; i++) r = r * m->axes[i].size + coord[i];
  return r;
}
