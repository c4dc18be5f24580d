/* util.c -- the small things everything else leans on: fatal errors for
 * internal bugs, the arena that owns a module's memory, overflow-checked
 * arithmetic for shapes, and a growable text buffer for printing. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"

_Noreturn void ptc_fatal(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "ptc: internal error at %s:%d: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  abort();
}

void *ptc_xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) ptc_fatal(__FILE__, __LINE__, "out of memory (%zu bytes)", n);
  return p;
}

void *ptc_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) ptc_fatal(__FILE__, __LINE__, "out of memory (%zu x %zu bytes)", n, size);
  return p;
}

void *ptc_xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) ptc_fatal(__FILE__, __LINE__, "out of memory (%zu bytes)", n);
  return q;
}

/* ---- arena ------------------------------------------------------------- */

struct ptc_arena_chunk {
  ptc_arena_chunk *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
};

enum { ARENA_CHUNK = 64 * 1024 };

void ptc_arena_init(ptc_arena *a) { memset(a, 0, sizeof *a); }

void ptc_arena_fini(ptc_arena *a) {
  ptc_arena_chunk *c = a->head;
  while (c) {
    ptc_arena_chunk *next = c->next;
    free(c);
    c = next;
  }
  memset(a, 0, sizeof *a);
}

void *ptc_arena_alloc(ptc_arena *a, size_t n) {
  size_t need = (n + 15) & ~(size_t)15;
  ptc_arena_chunk *c = a->head;
  if (!c || c->cap - c->used < need) {
    /* Big requests get a chunk of their own, placed behind the current one
     * so the current chunk's free space is not wasted. */
    size_t cap = need > ARENA_CHUNK / 4 ? need : ARENA_CHUNK;
    ptc_arena_chunk *nc = ptc_xmalloc(sizeof *nc + cap);
    nc->used = 0;
    nc->cap = cap;
    if (c && cap != ARENA_CHUNK) {
      nc->next = c->next;
      c->next = nc;
    } else {
      nc->next = c;
      a->head = nc;
    }
    c = nc;
  }
  void *p = c->data + c->used;
  c->used += need;
  a->bytes += need;
  memset(p, 0, n);
  return p;
}

char *ptc_arena_strndup(ptc_arena *a, const char *s, size_t n) {
  char *p = ptc_arena_alloc(a, n + 1);
  memcpy(p, s, n);
  p[n] = 0;
  return p;
}

char *ptc_arena_strdup(ptc_arena *a, const char *s) {
  return ptc_arena_strndup(a, s, strlen(s));
}

char *ptc_arena_printf(ptc_arena *a, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  PTC_ASSERT(n >= 0);
  char *p = ptc_arena_alloc(a, (size_t)n + 1);
  vsnprintf(p, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  return p;
}

/* ---- checked arithmetic ------------------------------------------------ */

bool ptc_mul_ovf(int64_t a, int64_t b, int64_t *out) {
  return !__builtin_mul_overflow(a, b, out);
}

bool ptc_add_ovf(int64_t a, int64_t b, int64_t *out) {
  return !__builtin_add_overflow(a, b, out);
}

/* ---- buffer ------------------------------------------------------------ */

void ptc_buf_init(ptc_buf *b) { memset(b, 0, sizeof *b); }

void ptc_buf_fini(ptc_buf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

static void buf_reserve(ptc_buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  b->data = ptc_xrealloc(b->data, cap);
  b->cap = cap;
}

void ptc_buf_put(ptc_buf *b, const char *s, size_t n) {
  buf_reserve(b, n);
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = 0;
}

void ptc_buf_puts(ptc_buf *b, const char *s) { ptc_buf_put(b, s, strlen(s)); }

void ptc_buf_printf(ptc_buf *b, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  PTC_ASSERT(n >= 0);
  buf_reserve(b, (size_t)n);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  b->len += (size_t)n;
}

void ptc_buf_put_double(ptc_buf *b, double v) {
  if (isnan(v)) {
    ptc_buf_puts(b, "nan");
    return;
  }
  if (isinf(v)) {
    ptc_buf_puts(b, v < 0 ? "-inf" : "inf");
    return;
  }
  char tmp[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (strtod(tmp, NULL) == v) break;
  }
  /* Never look like an integer: "2" -> "2.0" (but "1e+20" is fine). */
  if (!strpbrk(tmp, ".eEn")) strcat(tmp, ".0");
  ptc_buf_puts(b, tmp);
}

void ptc_buf_put_bytes(ptc_buf *b, double v) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (v >= 1024.0 && u < PTC_ARRAY_LEN(units) - 1) {
    v /= 1024.0;
    u++;
  }
  ptc_buf_printf(b, u ? "%.1f %s" : "%.0f %s", v, units[u]);
}

void ptc_bytes_text(char *out, size_t cap, double bytes) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_buf_put_bytes(&b, bytes);
  snprintf(out, cap, "%s", b.data);
  ptc_buf_fini(&b);
}

char *ptc_path_join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *s = ptc_xmalloc(n);
  snprintf(s, n, "%s/%s", dir, name);
  return s;
}

char *ptc_slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  ptc_buf b;
  ptc_buf_init(&b);
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ptc_buf_put(&b, chunk, n);
  int err = ferror(f) ? EIO : 0;
  fclose(f);
  if (err) {
    ptc_buf_fini(&b);
    errno = err;
    return NULL;
  }
  if (!b.data) ptc_buf_put(&b, "", 0);
  *len = b.len;
  return b.data;
}
