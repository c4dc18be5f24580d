/* diag.c -- the compile context: interned strings, source buffers and
 * diagnostics.  Every user-facing error in the compiler goes through
 * ptc_diag, so they all look alike:
 *
 *   models/gpt2.ptg:14:7: error: matmul: contracting dimensions differ (768 vs 512)
 *      14 |   h = x @ w
 *         |       ^
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ir.h"

const ptc_loc ptc_loc_unknown = {NULL, 0, 0};

typedef struct source {
  const char *name; /* interned */
  char *text;       /* heap copy */
  size_t len;
  /* line start offsets, built on first quote */
  size_t *lines;
  int32_t nlines;
} source;

struct ptc_ctx {
  ptc_arena arena;
  /* open-addressing hash set of interned strings */
  const char **strs;
  size_t nstrs, cap_strs;
  source *srcs;
  int32_t nsrcs, cap_srcs;
  FILE *out;
  bool capture;
  ptc_buf captured;
  int errors;
};

ptc_ctx *ptc_ctx_create(void) {
  ptc_ctx *c = ptc_xcalloc(1, sizeof *c);
  ptc_arena_init(&c->arena);
  c->out = stderr;
  ptc_buf_init(&c->captured);
  return c;
}

void ptc_ctx_destroy(ptc_ctx *c) {
  if (!c) return;
  for (int32_t i = 0; i < c->nsrcs; i++) {
    free(c->srcs[i].text);
    free(c->srcs[i].lines);
  }
  free(c->srcs);
  free(c->strs);
  ptc_buf_fini(&c->captured);
  ptc_arena_fini(&c->arena);
  free(c);
}

void ptc_ctx_set_diag_stream(ptc_ctx *c, FILE *f) { c->out = f; }
void ptc_ctx_set_diag_capture(ptc_ctx *c, bool on) { c->capture = on; }
const char *ptc_ctx_diag_text(const ptc_ctx *c) {
  return c->captured.data ? c->captured.data : "";
}
int ptc_ctx_error_count(const ptc_ctx *c) { return c->errors; }
void ptc_ctx_reset_errors(ptc_ctx *c) {
  c->errors = 0;
  c->captured.len = 0;
  if (c->captured.data) c->captured.data[0] = 0;
}

/* ---- interning --------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h;
}

static void intern_grow(ptc_ctx *c) {
  size_t cap = c->cap_strs ? c->cap_strs * 2 : 256;
  const char **strs = ptc_xcalloc(cap, sizeof *strs);
  for (size_t i = 0; i < c->cap_strs; i++) {
    const char *s = c->strs[i];
    if (!s) continue;
    size_t j = hash_bytes(s, strlen(s)) & (cap - 1);
    while (strs[j]) j = (j + 1) & (cap - 1);
    strs[j] = s;
  }
  free(c->strs);
  c->strs = strs;
  c->cap_strs = cap;
}

const char *ptc_intern(ptc_ctx *c, const char *s, size_t n) {
  if ((c->nstrs + 1) * 2 > c->cap_strs) intern_grow(c);
  size_t j = hash_bytes(s, n) & (c->cap_strs - 1);
  for (;;) {
    const char *t = c->strs[j];
    if (!t) break;
    if (strncmp(t, s, n) == 0 && t[n] == 0 && memchr(s, 0, n) == NULL) return t;
    j = (j + 1) & (c->cap_strs - 1);
  }
  const char *copy = ptc_arena_strndup(&c->arena, s, n);
  c->strs[j] = copy;
  c->nstrs++;
  return copy;
}

const char *ptc_intern_cstr(ptc_ctx *c, const char *s) {
  return ptc_intern(c, s, strlen(s));
}

/* ---- sources ----------------------------------------------------------- */

const char *ptc_ctx_add_source(ptc_ctx *c, const char *name, const char *text,
                               size_t len) {
  const char *iname = ptc_intern_cstr(c, name);
  source *s = NULL;
  for (int32_t i = 0; i < c->nsrcs; i++)
    if (c->srcs[i].name == iname) s = &c->srcs[i];
  if (!s) {
    if (c->nsrcs == c->cap_srcs) {
      c->cap_srcs = c->cap_srcs ? 2 * c->cap_srcs : 8;
      c->srcs = ptc_xrealloc(c->srcs, (size_t)c->cap_srcs * sizeof *c->srcs);
    }
    s = &c->srcs[c->nsrcs++];
  } else {
    free(s->text);
    free(s->lines);
  }
  memset(s, 0, sizeof *s);
  s->name = iname;
  s->text = ptc_xmalloc(len + 1);
  memcpy(s->text, text, len);
  s->text[len] = 0;
  s->len = len;
  return iname;
}

enum { MAX_LAZY_SOURCE = 64 << 20 };

/* The source for `name`: registered, or read from disk on demand. */
static source *find_source(ptc_ctx *c, const char *name) {
  for (int32_t i = 0; i < c->nsrcs; i++)
    if (c->srcs[i].name == name) return &c->srcs[i];
  struct stat st;
  if (stat(name, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > MAX_LAZY_SOURCE)
    return NULL;
  FILE *f = fopen(name, "rb");
  if (!f) return NULL;
  char *text = ptc_xmalloc((size_t)st.st_size + 1);
  size_t n = fread(text, 1, (size_t)st.st_size, f);
  fclose(f);
  ptc_ctx_add_source(c, name, text, n);
  free(text);
  return &c->srcs[c->nsrcs - 1];
}

/* Returns the text of line `line` (1-based) without its newline. */
static bool source_line(source *s, int32_t line, const char **start,
                        size_t *len) {
  if (!s->lines) {
    int32_t n = 1;
    for (size_t i = 0; i < s->len; i++) n += s->text[i] == '\n';
    s->lines = ptc_xmalloc((size_t)(n + 1) * sizeof *s->lines);
    s->nlines = 0;
    s->lines[s->nlines++] = 0;
    for (size_t i = 0; i < s->len; i++)
      if (s->text[i] == '\n') s->lines[s->nlines++] = i + 1;
    s->lines[s->nlines] = s->len + 1;
  }
  if (line < 1 || line > s->nlines) return false;
  size_t b = s->lines[line - 1];
  size_t e = s->lines[line] - 1; /* position of '\n' or len */
  if (e > s->len) e = s->len;
  if (e > b && s->text[e - 1] == '\r') e--;
  *start = s->text + b;
  *len = e - b;
  return true;
}

/* ---- emitting ---------------------------------------------------------- */

static const char *sev_name(ptc_severity s) {
  switch (s) {
  case PTC_SEV_ERROR: return "error";
  case PTC_SEV_WARNING: return "warning";
  case PTC_SEV_NOTE: return "note";
  }
  return "error";
}

static size_t utf8_seq(const unsigned char *s, size_t n);

enum { QUOTE_WIDTH = 100 };

/* Quotes `line` with a caret under byte column col (1-based).  Lines longer
 * than QUOTE_WIDTH are cut to a window around the caret, marked with "...";
 * non-printable bytes show as '?'; the caret counts UTF-8 characters. */
static void quote_line(ptc_buf *b, int32_t lineno, const char *text, size_t len,
                       int32_t col) {
  size_t c0 = col > 0 ? (size_t)col - 1 : 0;
  if (c0 > len) c0 = len;
  size_t from = 0, to = len;
  if (len > QUOTE_WIDTH) {
    from = c0 > QUOTE_WIDTH / 2 ? c0 - QUOTE_WIDTH / 2 : 0;
    to = from + QUOTE_WIDTH;
    if (to > len) {
      to = len;
      from = to > QUOTE_WIDTH ? to - QUOTE_WIDTH : 0;
    }
    /* do not start or end inside a UTF-8 sequence */
    while (from > 0 && ((unsigned char)text[from] & 0xC0) == 0x80) from--;
    while (to < len && ((unsigned char)text[to] & 0xC0) == 0x80) to++;
  }
  char num[16];
  int w = snprintf(num, sizeof num, "%d", lineno);
  ptc_buf_printf(b, " %s | ", num);
  if (from > 0) ptc_buf_puts(b, "...");
  size_t caret = from > 0 ? 3 : 0;
  for (size_t i = from; i < to;) {
    unsigned char ch = (unsigned char)text[i];
    size_t k = utf8_seq((const unsigned char *)text + i, to - i);
    if (k > 1) { /* a whole valid multi-byte character: one column */
      ptc_buf_put(b, text + i, k);
    } else {
      /* control bytes and invalid UTF-8 show as '?', one column each */
      if (ch == '\t') ch = ' ';
      else if (ch < 0x20 || ch >= 0x7f) ch = '?';
      ptc_buf_put(b, (const char *)&ch, 1);
      k = 1;
    }
    if (i < c0) caret++;
    i += k;
  }
  if (to < len) ptc_buf_puts(b, "...");
  ptc_buf_printf(b, "\n %*s | ", w, "");
  for (size_t i = 0; i < caret; i++) ptc_buf_put(b, " ", 1);
  ptc_buf_puts(b, "^\n");
}

void ptc_vdiag(ptc_ctx *c, ptc_severity sev, ptc_loc loc, const char *fmt,
               va_list ap) {
  ptc_buf b;
  ptc_buf_init(&b);
  if (loc.file && loc.line > 0)
    ptc_buf_printf(&b, "%s:%d:%d: %s: ", loc.file, loc.line,
                   loc.col > 0 ? loc.col : 1, sev_name(sev));
  else if (loc.file)
    ptc_buf_printf(&b, "%s: %s: ", loc.file, sev_name(sev));
  else
    ptc_buf_printf(&b, "ptc: %s: ", sev_name(sev));
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n > 0) {
    char *msg = ptc_xmalloc((size_t)n + 1);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    ptc_buf_put(&b, msg, (size_t)n);
    free(msg);
  }
  ptc_buf_puts(&b, "\n");
  if (loc.file && loc.line > 0) {
    source *s = find_source(c, loc.file);
    const char *text;
    size_t len;
    if (s && source_line(s, loc.line, &text, &len))
      quote_line(&b, loc.line, text, len, loc.col);
  }
  if (sev == PTC_SEV_ERROR) c->errors++;
  if (c->capture) {
    ptc_buf_put(&c->captured, b.data, b.len);
  } else {
    fflush(stdout);
    fwrite(b.data, 1, b.len, c->out);
    fflush(c->out);
  }
  ptc_buf_fini(&b);
}

void ptc_diag(ptc_ctx *c, ptc_severity sev, ptc_loc loc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  ptc_vdiag(c, sev, loc, fmt, ap);
  va_end(ap);
}

/* ---- files ------------------------------------------------------------- */

enum { MAX_INPUT = 1 << 30 };

char *ptc_read_file(ptc_ctx *c, const char *path, size_t *len_out) {
  ptc_loc where = {ptc_intern_cstr(c, path), 0, 0};
  struct stat st;
  if (stat(path, &st) != 0) {
    ptc_error(c, where, "cannot open file: %s", strerror(errno));
    return NULL;
  }
  if (S_ISDIR(st.st_mode)) {
    ptc_error(c, where, "is a directory, expected a file");
    return NULL;
  }
  FILE *f = fopen(path, "rb");
  if (!f) {
    ptc_error(c, where, "cannot open file: %s", strerror(errno));
    return NULL;
  }
  /* Read in chunks: works for pipes and files whose size changes. */
  size_t cap = S_ISREG(st.st_mode) && st.st_size > 0 ? (size_t)st.st_size + 1 : 65536;
  size_t len = 0;
  char *buf = ptc_xmalloc(cap + 1);
  for (;;) {
    if (len == cap) {
      if (cap >= MAX_INPUT) {
        fclose(f);
        free(buf);
        ptc_error(c, where, "file is larger than %d MiB; refusing to read it",
                  MAX_INPUT >> 20);
        return NULL;
      }
      cap *= 2;
      buf = ptc_xrealloc(buf, cap + 1);
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    free(buf);
    ptc_error(c, where, "read error");
    return NULL;
  }
  buf[len] = 0;
  *len_out = len;
  return buf;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t k;
  uint32_t cp;
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) { k = 2; cp = c & 0x1F; }
  else if (c >= 0xE0 && c <= 0xEF) { k = 3; cp = c & 0x0F; }
  else if (c >= 0xF0 && c <= 0xF4) { k = 4; cp = c & 0x07; }
  else return 0;
  if (k > n) return 0;
  for (size_t i = 1; i < k; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return k;
}

int ptc_check_text(ptc_ctx *c, const char *name, const char *text, size_t len) {
  const unsigned char *s = (const unsigned char *)text;
  int32_t line = 1, col = 1;
  for (size_t i = 0; i < len;) {
    size_t k = s[i] ? utf8_seq(s + i, len - i) : 0;
    if (k == 0) {
      ptc_loc loc = {ptc_intern_cstr(c, name), line, col};
      if (s[i] == 0)
        ptc_error(c, loc, "file is not text: NUL byte at offset %zu; "
                  "expected a UTF-8 text file", i);
      else
        ptc_error(c, loc, "file is not text: invalid UTF-8 byte 0x%02x at "
                  "offset %zu; expected a UTF-8 text file", s[i], i);
      return -1;
    }
    if (s[i] == '\n') {
      line++;
      col = 1;
    } else {
      col += (int32_t)k; /* columns count bytes, as the lexers do */
    }
    i += k;
  }
  return 0;
}
