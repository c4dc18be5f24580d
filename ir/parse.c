/* parse.c -- reads .ptir text back into a module.
 *
 * A hand-written lexer and recursive-descent parser.  It builds the module
 * only through the public IR API (ptc_module_add_param, ptc_func_add_arg,
 * ptc_build, ...), so a module read from text has passed the same checks as
 * one built by a pass: arity, attributes, shapes, and finally
 * ptc_verify_module.
 *
 * Two kinds of location meet here.  The loc("...":L:C) written after an op
 * names the .ptg line the op came from; it is stored on the op and printed
 * back.  Errors in the .ptir text itself are reported at their position in
 * that text, including errors the builder and the verifier find: params,
 * funcs and ops carry their position in the .ptir file until the module has
 * verified, and only then receive their loc(...).  So a user editing a dump
 * is pointed at the line to fix.
 *
 * Every malformed input gets exactly one diagnostic (the first problem) and
 * NULL; the parser never recurses deeper than a fixed few levels and keeps
 * every name lookup hashed, so its time is linear in the input.
 *
 * The grammar (docs/ptir.md explains each piece):
 *
 *   module   := 'module' '@'NAME [mesh] ['attributes' attrdict]
 *               '{' param* func* '}'
 *   mesh     := 'mesh' '<' AXIS '=' INT (',' AXIS '=' INT)* '>'
 *   param    := ('param' | 'state') '@'NAME ':' type [sharding] ['init' init] [loc]
 *   init     := 'zeros' | 'ones' | 'normal' '(' FLOAT ')'
 *             | 'scaled' '(' FLOAT ',' INT ')' | 'copy' '(' '@'NAME ')'
 *   func     := 'func' '@'NAME '(' [arg (',' arg)*] ')' ['->' results] [loc]
 *               '{' op* '}'
 *   arg      := '%'NAME ':' type [sharding]
 *   results  := rtype | '(' rtype (',' rtype)* ')'
 *   rtype    := type [sharding]
 *   op       := [VAL (',' VAL)* '='] OPNAME [operand (',' operand)*]
 *               [attrdict] [':' rtype (',' rtype)*] [loc]
 *   operand  := '%'NAME | '@'NAME
 *   type     := DTYPE '[' [INT (',' INT)*] ']'
 *   sharding := 'shard' '<' [dim (',' dim)*] '>' ['partial' '<' axes '>']
 *             | 'partial' '<' axes '>'
 *   dim      := '_' | AXIS | '(' AXIS (',' AXIS)+ ')'
 *   attrdict := '{' [NAME '=' attr (',' NAME '=' attr)*] '}'
 *   attr     := INT | FLOAT | 'true' | 'false' | STRING | IDENT | DTYPE
 *             | '[' [INT (',' INT)*] ']'
 *   loc      := 'loc' '(' STRING ':' INT ':' INT ')'
 *
 * Lexical: `//` comments to end of line; NAME is [A-Za-z0-9_.]+; IDENT is
 * [A-Za-z_][A-Za-z0-9_.]*; INT is -?[0-9]+ (int64); FLOAT is
 * -?[0-9]+(.[0-9]+)?([eE][+-]?[0-9]+)? with a '.' or exponent, or inf, -inf,
 * nan; STRING is "..." with escapes \" \\ \n \t \xNN.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ======================================================================
 * Hash map from a name (bytes in the source text) to an int
 * ====================================================================== */

typedef struct smap_ent {
  const char *k; /* NULL: empty slot */
  size_t n;
  int32_t v;
  int32_t line, col; /* where the name was defined, for redefinitions */
} smap_ent;

typedef struct smap {
  smap_ent *e;
  size_t cap, count;
} smap;

static size_t hash_bytes(const char *s, size_t n) {
  size_t h = 1469598103934665603u;
  for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211u;
  return h;
}

static void smap_fini(smap *m) {
  free(m->e);
  memset(m, 0, sizeof *m);
}

/* Empties the map; a large table is dropped so that clearing many small
 * maps after one big one stays linear. */
static void smap_clear(smap *m) {
  if (m->cap > 64) {
    smap_fini(m);
  } else if (m->e) {
    memset(m->e, 0, m->cap * sizeof *m->e);
    m->count = 0;
  }
}

static smap_ent *smap_find(const smap *m, const char *k, size_t n) {
  if (!m->cap) return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = hash_bytes(k, n) & mask;; i = (i + 1) & mask) {
    smap_ent *e = &m->e[i];
    if (!e->k) return NULL;
    if (e->n == n && memcmp(e->k, k, n) == 0) return e;
  }
}

/* Inserts a name known to be absent. */
static smap_ent *smap_put(smap *m, const char *k, size_t n, int32_t v,
                          int32_t line, int32_t col) {
  if (2 * (m->count + 1) > m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 16;
    smap_ent *old = m->e;
    size_t oldcap = m->cap;
    m->e = ptc_xcalloc(cap, sizeof *m->e);
    m->cap = cap;
    for (size_t i = 0; i < oldcap; i++) {
      if (!old[i].k) continue;
      size_t j = hash_bytes(old[i].k, old[i].n) & (cap - 1);
      while (m->e[j].k) j = (j + 1) & (cap - 1);
      m->e[j] = old[i];
    }
    free(old);
  }
  size_t mask = m->cap - 1;
  size_t i = hash_bytes(k, n) & mask;
  while (m->e[i].k) i = (i + 1) & mask;
  m->e[i] = (smap_ent){k, n, v, line, col};
  m->count++;
  return &m->e[i];
}

/* ======================================================================
 * Lexer
 * ====================================================================== */

typedef enum tok_kind {
  T_EOF,
  T_ERROR, /* already reported */
  T_IDENT,
  T_ATNAME,  /* @NAME; s/n is NAME */
  T_PCTNAME, /* %NAME; s/n is NAME */
  T_INT,
  T_FLOAT,
  T_STRING, /* decoded text in parser.str */
  T_LBRACE,
  T_RBRACE,
  T_LPAREN,
  T_RPAREN,
  T_LBRACK,
  T_RBRACK,
  T_LT,
  T_GT,
  T_COMMA,
  T_COLON,
  T_EQ,
  T_ARROW,
} tok_kind;

typedef struct token {
  tok_kind kind;
  const char *s; /* spelling in the source (for names: without the sigil) */
  size_t n;
  int64_t i;
  double f;
  int32_t line, col;
} token;

/* Most characters a numeric literal may have: longer ones are refused
 * rather than copied (no float needs more than a few dozen digits). */
enum { MAX_NUMBER_LEN = 400 };

typedef struct parser {
  ptc_ctx *ctx;
  const char *file; /* interned name of the .ptir text */
  const char *src;
  size_t len, pos;
  int32_t line;
  size_t line_start;
  token tok;
  ptc_buf str; /* decoded text of the current STRING token */
  bool failed;
  int errors_before; /* ctx error count when parsing began */

  ptc_module *m;
  ptc_arena scratch; /* attribute payloads until the builder copies them */
  smap params, funcs, values, attrnames;

  /* per-op scratch vectors, reused */
  int32_t *in;
  int32_t nin, cap_in;
  ptc_attr *attrs;
  int32_t nattr, cap_attrs;
  ptc_type *types;
  ptc_sharding *shards;
  int32_t ntypes, cap_types;
  token *names;
  int32_t nnames, cap_names;
  int64_t *ints;
  int32_t nints, cap_ints;

  /* the loc(...) of every param, func and op (in order), stored once the
   * module has verified */
  ptc_loc *param_locs, *func_locs, *op_locs;
  int32_t nparam_locs, cap_param_locs, nfunc_locs, cap_func_locs, nop_locs,
      cap_op_locs;
} parser;

/* Grows a heap vector *v of *cap elements of size sz to hold need. */
static void grow(void *v, int32_t *cap, int32_t need, size_t sz) {
  if (need <= *cap) return;
  int32_t c = *cap ? *cap : 8;
  while (c < need) {
    PTC_ASSERT(c <= INT32_MAX / 2);
    c *= 2;
  }
  *(void **)v = ptc_xrealloc(*(void **)v, (size_t)c * sz);
  *cap = c;
}

static void push_loc(ptc_loc **v, int32_t *n, int32_t *cap, ptc_loc loc) {
  grow(v, cap, *n + 1, sizeof **v);
  (*v)[(*n)++] = loc;
}

static ptc_loc loc_at(const parser *p, int32_t line, int32_t col) {
  return (ptc_loc){p->file, line, col};
}

/* Reports the first error only: everything after it is a consequence. */
__attribute__((format(printf, 4, 5))) static void perr(parser *p, int32_t line,
                                                       int32_t col,
                                                       const char *fmt, ...) {
  if (p->failed) return;
  p->failed = true;
  va_list ap;
  va_start(ap, fmt);
  ptc_vdiag(p->ctx, PTC_SEV_ERROR, loc_at(p, line, col), fmt, ap);
  va_end(ap);
}

#define PERR_TOK(p, ...) perr((p), (p)->tok.line, (p)->tok.col, __VA_ARGS__)

static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_alpha(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_name_char(int c) { return is_alpha(c) || is_digit(c) || c == '.'; }

static int peekc(const parser *p, size_t off) {
  return p->pos + off < p->len ? (unsigned char)p->src[p->pos + off] : -1;
}

static int32_t cur_col(const parser *p) {
  size_t c = p->pos - p->line_start + 1;
  return c > INT32_MAX ? INT32_MAX : (int32_t)c;
}

/* Skips whitespace and // comments (to the end of the line). */
static void skip_space(parser *p) {
  while (p->pos < p->len) {
    int c = peekc(p, 0);
    if (c == '\n') {
      p->pos++;
      if (p->line < INT32_MAX) p->line++;
      p->line_start = p->pos;
    } else if (c == ' ' || c == '\t' || c == '\r') {
      p->pos++;
    } else if (c == '/' && peekc(p, 1) == '/') {
      while (p->pos < p->len && p->src[p->pos] != '\n') p->pos++;
    } else {
      return;
    }
  }
}

static void lex_error(parser *p, token *t, const char *msg) {
  perr(p, t->line, t->col, "%s", msg);
  t->kind = T_ERROR;
}

/* STRING: decodes into p->str.  The token starts at the opening quote. */
static void lex_string(parser *p, token *t) {
  p->str.len = 0;
  if (p->str.data) p->str.data[0] = 0;
  p->pos++; /* opening quote */
  for (;;) {
    int c = peekc(p, 0);
    if (c < 0 || c == '\n') {
      lex_error(p, t, "unterminated string");
      return;
    }
    if (c == '"') {
      p->pos++;
      break;
    }
    if (c != '\\') {
      char ch = (char)c;
      ptc_buf_put(&p->str, &ch, 1);
      p->pos++;
      continue;
    }
    int e = peekc(p, 1);
    char ch;
    if (e == '"' || e == '\\') {
      ch = (char)e;
      p->pos += 2;
    } else if (e == 'n') {
      ch = '\n';
      p->pos += 2;
    } else if (e == 't') {
      ch = '\t';
      p->pos += 2;
    } else if (e == 'x') {
      int h[2];
      for (int k = 0; k < 2; k++) {
        int d = peekc(p, 2 + (size_t)k);
        h[k] = is_digit(d) ? d - '0'
               : (d >= 'a' && d <= 'f') ? d - 'a' + 10
               : (d >= 'A' && d <= 'F') ? d - 'A' + 10
                                        : -1;
      }
      if (h[0] < 0 || h[1] < 0) {
        perr(p, p->line, cur_col(p), "\\x in a string needs two hex digits");
        t->kind = T_ERROR;
        return;
      }
      if (h[0] == 0 && h[1] == 0) {
        perr(p, p->line, cur_col(p), "a string cannot hold a NUL byte (\\x00)");
        t->kind = T_ERROR;
        return;
      }
      ch = (char)(h[0] * 16 + h[1]);
      p->pos += 4;
    } else {
      perr(p, p->line, cur_col(p),
           "unknown escape in string (use \\\" \\\\ \\n \\t or \\xNN)");
      t->kind = T_ERROR;
      return;
    }
    ptc_buf_put(&p->str, &ch, 1);
  }
  t->kind = T_STRING;
  t->n = p->pos - (size_t)(t->s - p->src);
}

/* INT or FLOAT, with an optional leading '-'.  The token starts at the
 * sign or first digit. */
static void lex_number(parser *p, token *t) {
  size_t start = p->pos;
  bool is_float = false;
  if (peekc(p, 0) == '-') p->pos++;
  while (is_digit(peekc(p, 0))) p->pos++;
  if (peekc(p, 0) == '.' && is_digit(peekc(p, 1))) {
    is_float = true;
    p->pos++;
    while (is_digit(peekc(p, 0))) p->pos++;
  }
  if (peekc(p, 0) == 'e' || peekc(p, 0) == 'E') {
    size_t k = 1;
    if (peekc(p, k) == '+' || peekc(p, k) == '-') k++;
    if (is_digit(peekc(p, k))) {
      is_float = true;
      p->pos += k;
      while (is_digit(peekc(p, 0))) p->pos++;
    }
  }
  size_t n = p->pos - start;
  t->s = p->src + start;
  t->n = n;
  if (is_name_char(peekc(p, 0))) {
    while (is_name_char(peekc(p, 0))) p->pos++;
    perr(p, t->line, t->col, "malformed number '%.*s'",
         (int)(p->pos - start > 64 ? 64 : p->pos - start), t->s);
    t->kind = T_ERROR;
    return;
  }
  if (!is_float) {
    /* Accumulate as a negative number so INT64_MIN fits. */
    bool neg = t->s[0] == '-';
    int64_t v = 0;
    for (size_t i = neg ? 1 : 0; i < n; i++) {
      int d = t->s[i] - '0';
      if (v < (INT64_MIN + d) / 10) {
        perr(p, t->line, t->col, "integer '%.*s' is out of range",
             (int)(n > 64 ? 64 : n), t->s);
        t->kind = T_ERROR;
        return;
      }
      v = v * 10 - d;
    }
    if (!neg) {
      if (v == INT64_MIN) {
        perr(p, t->line, t->col, "integer '%.*s' is out of range",
             (int)(n > 64 ? 64 : n), t->s);
        t->kind = T_ERROR;
        return;
      }
      v = -v;
    }
    t->kind = T_INT;
    t->i = v;
    return;
  }
  if (n > MAX_NUMBER_LEN) {
    perr(p, t->line, t->col, "number is too long (%zu characters)", n);
    t->kind = T_ERROR;
    return;
  }
  char tmp[MAX_NUMBER_LEN + 1];
  memcpy(tmp, t->s, n);
  tmp[n] = 0;
  errno = 0;
  char *end = NULL;
  double v = strtod(tmp, &end);
  /* Subnormal results set ERANGE too, and the printer writes them (e.g.
   * 5e-324): only overflow and underflow all the way to zero are errors. */
  bool zero_text = true;
  for (size_t i = 0; i < n && tmp[i] != 'e' && tmp[i] != 'E'; i++)
    if (tmp[i] >= '1' && tmp[i] <= '9') zero_text = false;
  if (end != tmp + n || isinf(v) || (v == 0 && !zero_text)) {
    perr(p, t->line, t->col, "number '%.*s' is out of range",
         (int)(n > 64 ? 64 : n), t->s);
    t->kind = T_ERROR;
    return;
  }
  t->kind = T_FLOAT;
  t->f = v;
}

static const char *char_desc(int c, char *buf, size_t n) {
  if (c >= 0x21 && c < 0x7f)
    snprintf(buf, n, "'%c'", c);
  else
    snprintf(buf, n, "byte 0x%02x", (unsigned)c & 0xffu);
  return buf;
}

/* Lexes the next token into p->tok. */
static void next(parser *p) {
  token *t = &p->tok;
  if (p->failed) { /* stay stuck on the first error */
    t->kind = T_ERROR;
    return;
  }
  skip_space(p);
  memset(t, 0, sizeof *t);
  t->line = p->line;
  t->col = cur_col(p);
  t->s = p->src + p->pos;
  if (p->pos >= p->len) {
    t->kind = T_EOF;
    return;
  }
  int c = peekc(p, 0);
  static const struct {
    char c;
    tok_kind k;
  } punct[] = {{'{', T_LBRACE}, {'}', T_RBRACE}, {'(', T_LPAREN},
               {')', T_RPAREN}, {'[', T_LBRACK}, {']', T_RBRACK},
               {'<', T_LT},     {'>', T_GT},     {',', T_COMMA},
               {':', T_COLON},  {'=', T_EQ}};
  for (int i = 0; i < PTC_ARRAY_LEN(punct); i++) {
    if (c == punct[i].c) {
      t->kind = punct[i].k;
      t->n = 1;
      p->pos++;
      return;
    }
  }
  if (c == '-' && peekc(p, 1) == '>') {
    t->kind = T_ARROW;
    t->n = 2;
    p->pos += 2;
    return;
  }
  if (c == '-' && is_alpha(peekc(p, 1))) {
    /* -inf is the only negative word */
    if (p->len - p->pos >= 4 && memcmp(p->src + p->pos, "-inf", 4) == 0 &&
        !is_name_char(peekc(p, 4))) {
      t->kind = T_FLOAT;
      t->f = -INFINITY;
      t->n = 4;
      p->pos += 4;
      return;
    }
    lex_error(p, t, "expected a number after '-'");
    return;
  }
  if (is_digit(c) || c == '-') {
    if (c == '-' && !is_digit(peekc(p, 1))) {
      lex_error(p, t, "expected a number after '-'");
      return;
    }
    lex_number(p, t);
    return;
  }
  if (c == '@' || c == '%') {
    size_t start = ++p->pos;
    while (is_name_char(peekc(p, 0))) p->pos++;
    if (p->pos == start) {
      lex_error(p, t, c == '@' ? "expected a name after '@'"
                               : "expected a name after '%'");
      return;
    }
    t->kind = c == '@' ? T_ATNAME : T_PCTNAME;
    t->s = p->src + start;
    t->n = p->pos - start;
    return;
  }
  if (is_alpha(c)) {
    size_t start = p->pos;
    while (is_name_char(peekc(p, 0))) p->pos++;
    t->kind = T_IDENT;
    t->n = p->pos - start;
    return;
  }
  if (c == '"') {
    lex_string(p, t);
    return;
  }
  char buf[16];
  perr(p, t->line, t->col, "unexpected character %s",
       char_desc(c, buf, sizeof buf));
  t->kind = T_ERROR;
}

/* ======================================================================
 * Token helpers
 * ====================================================================== */

static bool is_kw(const token *t, const char *kw) {
  size_t n = strlen(kw);
  return t->kind == T_IDENT && t->n == n && memcmp(t->s, kw, n) == 0;
}

static bool ok(const parser *p) { return !p->failed; }

/* "found ..." text for an unexpected token. */
static const char *tok_desc(const token *t, char *buf, size_t n) {
  int len = t->n > 40 ? 40 : (int)t->n;
  const char *more = t->n > 40 ? "..." : "";
  switch (t->kind) {
  case T_EOF: return "end of file";
  case T_ERROR: return "an error";
  case T_IDENT: snprintf(buf, n, "'%.*s%s'", len, t->s, more); break;
  case T_ATNAME: snprintf(buf, n, "'@%.*s%s'", len, t->s, more); break;
  case T_PCTNAME: snprintf(buf, n, "'%%%.*s%s'", len, t->s, more); break;
  case T_INT:
  case T_FLOAT: snprintf(buf, n, "number '%.*s%s'", len, t->s, more); break;
  case T_STRING: return "a string";
  default: snprintf(buf, n, "'%.*s'", (int)t->n, t->s); break;
  }
  return buf;
}

static void expected(parser *p, const char *what) {
  char buf[96];
  PERR_TOK(p, "expected %s, found %s", what, tok_desc(&p->tok, buf, sizeof buf));
}

/* Consumes a token of kind k or reports "expected <what>". */
static bool expect(parser *p, tok_kind k, const char *what) {
  if (!ok(p)) return false;
  if (p->tok.kind != k) {
    expected(p, what);
    return false;
  }
  next(p);
  return ok(p);
}

static bool accept(parser *p, tok_kind k) {
  if (!ok(p) || p->tok.kind != k) return false;
  next(p);
  return ok(p);
}

static bool expect_kw(parser *p, const char *kw) {
  if (!ok(p)) return false;
  if (!is_kw(&p->tok, kw)) {
    char what[32];
    snprintf(what, sizeof what, "'%s'", kw);
    expected(p, what);
    return false;
  }
  next(p);
  return ok(p);
}

/* INT (consumed) into *v, within [lo, hi]. */
static bool parse_int(parser *p, int64_t lo, int64_t hi, const char *what,
                      int64_t *v) {
  if (!ok(p)) return false;
  if (p->tok.kind != T_INT) {
    expected(p, what);
    return false;
  }
  if (p->tok.i < lo || p->tok.i > hi) {
    PERR_TOK(p, "%s must be between %lld and %lld, not %lld", what,
             (long long)lo, (long long)hi, (long long)p->tok.i);
    return false;
  }
  *v = p->tok.i;
  next(p);
  return ok(p);
}

/* FLOAT or INT (consumed) into *v. */
static bool parse_number(parser *p, const char *what, double *v) {
  if (!ok(p)) return false;
  if (p->tok.kind == T_FLOAT) {
    *v = p->tok.f;
  } else if (p->tok.kind == T_INT) {
    *v = (double)p->tok.i;
  } else if (is_kw(&p->tok, "inf") || is_kw(&p->tok, "nan")) {
    *v = p->tok.s[0] == 'i' ? INFINITY : NAN;
  } else {
    expected(p, what);
    return false;
  }
  next(p);
  return ok(p);
}

/* ======================================================================
 * Types, shardings, locations
 * ====================================================================== */

/* type := DTYPE '[' [INT (',' INT)*] ']' */
static bool parse_type(parser *p, ptc_type *t) {
  if (!ok(p)) return false;
  memset(t, 0, sizeof *t);
  if (p->tok.kind != T_IDENT) {
    expected(p, "a type such as f32[8,16]");
    return false;
  }
  int dt = ptc_dtype_from_name(p->tok.s, p->tok.n);
  if (dt < 0) {
    char buf[96];
    PERR_TOK(p, "unknown dtype %s", tok_desc(&p->tok, buf, sizeof buf));
    return false;
  }
  t->dtype = (ptc_dtype)dt;
  next(p);
  if (!expect(p, T_LBRACK, "'[' after the dtype")) return false;
  int64_t numel = 1;
  if (p->tok.kind != T_RBRACK) {
    for (;;) {
      int32_t line = p->tok.line, col = p->tok.col;
      if (t->rank == PTC_MAX_RANK) {
        PERR_TOK(p, "a type has at most %d dimensions", PTC_MAX_RANK);
        return false;
      }
      int64_t d;
      if (!parse_int(p, 0, PTC_MAX_ELEMENTS, "a dimension size", &d))
        return false;
      if (!ptc_mul_ovf(numel, d, &numel) || numel > PTC_MAX_ELEMENTS) {
        perr(p, line, col, "tensor has more than 2^50 elements");
        return false;
      }
      t->dims[t->rank++] = d;
      if (!accept(p, T_COMMA)) break;
    }
  }
  return expect(p, T_RBRACK, "',' or ']' in the shape");
}

/* The mesh index of the AXIS token (consumed), or -1 after reporting. */
static int parse_axis(parser *p) {
  if (!ok(p)) return -1;
  if (p->tok.kind != T_IDENT) {
    expected(p, "a mesh axis");
    return -1;
  }
  const ptc_mesh *mesh = &p->m->mesh;
  int a = ptc_mesh_axis(mesh, p->tok.s, p->tok.n);
  if (a < 0) {
    char names[64] = "";
    size_t off = 0;
    for (int i = 0; i < mesh->naxes && off < sizeof names; i++)
      off += (size_t)snprintf(names + off, sizeof names - off, "%s%s",
                              i ? ", " : "", mesh->axes[i].name);
    int len = p->tok.n > 40 ? 40 : (int)p->tok.n;
    if (mesh->naxes == 0)
      PERR_TOK(p, "unknown mesh axis '%.*s' (the module has no mesh)", len,
               p->tok.s);
    else
      PERR_TOK(p, "unknown mesh axis '%.*s' (the mesh has %s)", len, p->tok.s,
               names);
    return -1;
  }
  next(p);
  return ok(p) ? a : -1;
}

/* dim := '_' | AXIS | '(' AXIS (',' AXIS)+ ')'
 * Axes of one dimension go major to minor, which is mesh order. */
static bool parse_dim(parser *p, uint8_t *mask) {
  *mask = 0;
  if (is_kw(&p->tok, "_")) {
    next(p);
    return ok(p);
  }
  if (!accept(p, T_LPAREN)) {
    if (!ok(p)) return false;
    int a = parse_axis(p);
    if (a < 0) return false;
    *mask = (uint8_t)(1u << a);
    return true;
  }
  int last = -1, count = 0;
  for (;;) {
    int32_t line = p->tok.line, col = p->tok.col;
    int a = parse_axis(p);
    if (a < 0) return false;
    if (a <= last) {
      perr(p, line, col,
           a == last ? "mesh axis '%s' appears twice in one dimension"
                     : "axes of one dimension go in mesh order (major first): "
                       "'%s' comes too late",
           p->m->mesh.axes[a].name);
      return false;
    }
    last = a;
    count++;
    *mask |= (uint8_t)(1u << a);
    if (!accept(p, T_COMMA)) break;
  }
  if (!ok(p)) return false;
  if (count < 2) {
    PERR_TOK(p, "parentheses group two or more axes; write a single axis "
                "without them");
    return false;
  }
  return expect(p, T_RPAREN, "',' or ')' after a mesh axis");
}

/* '<' AXIS (',' AXIS)* '>' after 'partial' */
static bool parse_partial(parser *p, uint8_t *mask) {
  if (!expect(p, T_LT, "'<' after 'partial'")) return false;
  for (;;) {
    int32_t line = p->tok.line, col = p->tok.col;
    int a = parse_axis(p);
    if (a < 0) return false;
    if (*mask & (1u << a)) {
      perr(p, line, col, "mesh axis '%s' appears twice in partial<>",
           p->m->mesh.axes[a].name);
      return false;
    }
    *mask |= (uint8_t)(1u << a);
    if (!accept(p, T_COMMA)) break;
  }
  return expect(p, T_GT, "',' or '>' in partial<>");
}

/* sharding := 'shard' '<' [dim (',' dim)*] '>' ['partial' '<' axes '>']
 *           | 'partial' '<' axes '>'
 * Optional: leaves s->present false when neither keyword follows. */
static bool parse_sharding(parser *p, int32_t rank, ptc_sharding *s) {
  memset(s, 0, sizeof *s);
  if (!ok(p)) return false;
  if (is_kw(&p->tok, "shard")) {
    int32_t line = p->tok.line, col = p->tok.col;
    s->present = true;
    next(p);
    if (!expect(p, T_LT, "'<' after 'shard'")) return false;
    int32_t n = 0;
    uint8_t used = 0;
    if (p->tok.kind != T_GT) {
      for (;;) {
        if (n == rank) {
          perr(p, line, col, "sharding has more dimensions than the type (%d)",
               (int)rank);
          return false;
        }
        int32_t dl = p->tok.line, dc = p->tok.col;
        uint8_t mask;
        if (!parse_dim(p, &mask)) return false;
        if (mask & used) {
          perr(p, dl, dc, "a mesh axis splits more than one dimension");
          return false;
        }
        used |= mask;
        s->dim_axes[n++] = mask;
        if (!accept(p, T_COMMA)) break;
      }
    }
    if (!expect(p, T_GT, "',' or '>' in shard<>")) return false;
    if (n != rank) {
      perr(p, line, col, "sharding has %d dimension%s but the type has %d",
           (int)n, n == 1 ? "" : "s", (int)rank);
      return false;
    }
    if (is_kw(&p->tok, "partial")) {
      next(p);
      if (!parse_partial(p, &s->partial)) return false;
    }
    return true;
  }
  if (is_kw(&p->tok, "partial")) {
    s->present = true;
    next(p);
    return parse_partial(p, &s->partial);
  }
  return true;
}

/* rtype := type [sharding] */
static bool parse_rtype(parser *p, ptc_type *t, ptc_sharding *s) {
  return parse_type(p, t) && parse_sharding(p, t->rank, s);
}

/* loc := 'loc' '(' STRING ':' INT ':' INT ')'   (optional) */
static bool parse_opt_loc(parser *p, ptc_loc *loc) {
  *loc = ptc_loc_unknown;
  if (!ok(p) || !is_kw(&p->tok, "loc")) return ok(p);
  next(p);
  if (!expect(p, T_LPAREN, "'(' after 'loc'")) return false;
  if (p->tok.kind != T_STRING) {
    expected(p, "a file name string in loc(...)");
    return false;
  }
  const char *file = ptc_intern(p->ctx, p->str.data ? p->str.data : "",
                                p->str.len);
  next(p);
  int64_t line, col;
  if (!expect(p, T_COLON, "':' after the file name") ||
      !parse_int(p, 0, INT32_MAX, "a line number", &line) ||
      !expect(p, T_COLON, "':' after the line number") ||
      !parse_int(p, 0, INT32_MAX, "a column number", &col) ||
      !expect(p, T_RPAREN, "')' to close loc(...)"))
    return false;
  *loc = (ptc_loc){file, (int32_t)line, (int32_t)col};
  return true;
}

/* NUL-terminated copy of a token's spelling, valid until the parse ends. */
static const char *tok_cstr(parser *p, const token *t) {
  return ptc_arena_strndup(&p->scratch, t->s, t->n);
}

/* ======================================================================
 * Attributes
 * ====================================================================== */

/* The kind letter ops.def gives attribute `name` of an op ("axis:y op:y"),
 * or 0 when the op has no such attribute. */
static char schema_kind(const char *schema, const char *name, size_t n) {
  const char *s = schema;
  while (s && *s) {
    while (*s == ' ') s++;
    const char *colon = strchr(s, ':');
    if (!colon) break;
    if ((size_t)(colon - s) == n && memcmp(s, name, n) == 0) return colon[1];
    s = strchr(colon, ' ');
  }
  return 0;
}

/* attr := INT | FLOAT | 'true' | 'false' | STRING | IDENT | DTYPE
 *       | '[' [INT (',' INT)*] ']'
 * `want` is the kind letter of the op's schema (0: module attribute): it
 * resolves spellings that fit two kinds (an INT where a float is wanted, a
 * symbol spelt like a dtype or a bool). */
static bool parse_attr_value(parser *p, char want, ptc_attr *a) {
  token *t = &p->tok;
  switch (t->kind) {
  case T_INT:
    if (want == 'f') {
      a->kind = PTC_ATTR_FLOAT;
      a->u.f = (double)t->i;
    } else {
      a->kind = PTC_ATTR_INT;
      a->u.i = t->i;
    }
    break;
  case T_FLOAT:
    a->kind = PTC_ATTR_FLOAT;
    a->u.f = t->f;
    break;
  case T_STRING:
    a->kind = PTC_ATTR_STR;
    a->u.s = ptc_arena_strndup(&p->scratch, p->str.data ? p->str.data : "",
                               p->str.len);
    break;
  case T_IDENT: {
    int dt = ptc_dtype_from_name(t->s, t->n);
    if (want == 'y') {
      a->kind = PTC_ATTR_SYM;
      a->u.s = tok_cstr(p, t);
    } else if (is_kw(t, "true") || is_kw(t, "false")) {
      a->kind = PTC_ATTR_BOOL;
      a->u.b = t->s[0] == 't';
    } else if (is_kw(t, "inf") || is_kw(t, "nan")) {
      a->kind = PTC_ATTR_FLOAT;
      a->u.f = t->s[0] == 'i' ? INFINITY : NAN;
    } else if (dt >= 0) {
      a->kind = PTC_ATTR_DTYPE;
      a->u.dtype = (ptc_dtype)dt;
    } else {
      a->kind = PTC_ATTR_SYM;
      a->u.s = tok_cstr(p, t);
    }
    break;
  }
  case T_LBRACK: {
    next(p);
    p->nints = 0;
    if (ok(p) && p->tok.kind != T_RBRACK) {
      for (;;) {
        int64_t v;
        if (!parse_int(p, INT64_MIN, INT64_MAX, "an integer", &v)) return false;
        grow(&p->ints, &p->cap_ints, p->nints + 1, sizeof *p->ints);
        p->ints[p->nints++] = v;
        if (!accept(p, T_COMMA)) break;
      }
    }
    if (!expect(p, T_RBRACK, "',' or ']' in the list")) return false;
    a->kind = PTC_ATTR_INTS;
    a->u.ints.n = p->nints;
    a->u.ints.v = ptc_arena_alloc(&p->scratch,
                                  (size_t)(p->nints ? p->nints : 1) * sizeof(int64_t));
    if (p->nints) memcpy(a->u.ints.v, p->ints, (size_t)p->nints * sizeof(int64_t));
    return true;
  }
  default:
    expected(p, "an attribute value");
    return false;
  }
  next(p);
  return ok(p);
}

/* attrdict := '{' [NAME '=' attr (',' NAME '=' attr)*] '}'
 * Appends to p->attrs.  `info` is the op (NULL: module attributes, which
 * have no schema). */
static bool parse_attrdict(parser *p, const ptc_opinfo *info) {
  p->nattr = 0;
  smap_clear(&p->attrnames);
  if (!expect(p, T_LBRACE, "'{'")) return false;
  if (accept(p, T_RBRACE)) return true;
  for (;;) {
    if (!ok(p)) return false;
    if (p->tok.kind != T_IDENT) {
      expected(p, "an attribute name");
      return false;
    }
    token name = p->tok;
    int len = name.n > 40 ? 40 : (int)name.n;
    smap_ent *prev = smap_find(&p->attrnames, name.s, name.n);
    if (prev) {
      perr(p, name.line, name.col,
           "attribute '%.*s' is given twice (first at %d:%d)", len, name.s,
           (int)prev->line, (int)prev->col);
      return false;
    }
    char kind = 0;
    if (info) {
      kind = schema_kind(info->attrs, name.s, name.n);
      if (!kind) kind = ptc__generic_attr_kind(name.s, name.n);
      if (!kind) {
        perr(p, name.line, name.col, "op '%s' has no attribute '%.*s'",
             info->name, len, name.s);
        return false;
      }
    }
    smap_put(&p->attrnames, name.s, name.n, 0, name.line, name.col);
    next(p);
    if (!expect(p, T_EQ, "'=' after the attribute name")) return false;
    ptc_attr a;
    memset(&a, 0, sizeof a);
    a.name = ptc_intern(p->ctx, name.s, name.n);
    token vtok = p->tok;
    if (!parse_attr_value(p, kind, &a)) return false;
    /* A collective's axis must name an axis of the module's mesh. */
    if (info && (info->flags & PTC_OPF_COLLECTIVE) && a.kind == PTC_ATTR_SYM &&
        strcmp(a.name, "axis") == 0 &&
        ptc_mesh_axis(&p->m->mesh, a.u.s, strlen(a.u.s)) < 0) {
      perr(p, vtok.line, vtok.col, "unknown mesh axis '%.*s'%s",
           vtok.n > 40 ? 40 : (int)vtok.n, vtok.s,
           p->m->mesh.naxes ? "" : " (the module has no mesh)");
      return false;
    }
    grow(&p->attrs, &p->cap_attrs, p->nattr + 1, sizeof *p->attrs);
    p->attrs[p->nattr++] = a;
    if (!accept(p, T_COMMA)) break;
  }
  return expect(p, T_RBRACE, "',' or '}' in the attributes");
}

/* ======================================================================
 * Module header, params
 * ====================================================================== */

/* mesh := 'mesh' '<' AXIS '=' INT (',' AXIS '=' INT)* '>'
 * The axes are handed to ptc_mesh_parse as "dp=2,tp=4", so the text accepts
 * exactly the meshes --mesh does. */
static bool parse_mesh(parser *p) {
  int32_t line = p->tok.line, col = p->tok.col;
  next(p);
  if (!expect(p, T_LT, "'<' after 'mesh'")) return false;
  ptc_buf spec;
  ptc_buf_init(&spec);
  bool good = false;
  for (int n = 0;; n++) {
    if (!ok(p)) break;
    if (p->tok.kind != T_IDENT) {
      expected(p, "a mesh axis name");
      break;
    }
    if (n == PTC_MAX_MESH_AXES) {
      PERR_TOK(p, "a mesh has at most %d axes", PTC_MAX_MESH_AXES);
      break;
    }
    ptc_buf_printf(&spec, "%s%.*s=", n ? "," : "",
                   (int)(p->tok.n > 32 ? 32 : p->tok.n), p->tok.s);
    next(p);
    int64_t size;
    if (!expect(p, T_EQ, "'=' after the axis name") ||
        !parse_int(p, 1, INT32_MAX, "the axis size", &size))
      break;
    ptc_buf_printf(&spec, "%lld", (long long)size);
    if (!accept(p, T_COMMA)) {
      good = expect(p, T_GT, "',' or '>' in mesh<>");
      break;
    }
  }
  if (good) {
    char err[256] = "";
    ptc_mesh mesh;
    memset(&mesh, 0, sizeof mesh);
    if (ptc_mesh_parse(spec.data, &mesh, err, sizeof err) != 0) {
      perr(p, line, col, "invalid mesh: %s", err);
      good = false;
    } else {
      p->m->mesh = mesh;
    }
  }
  ptc_buf_fini(&spec);
  return good;
}

/* init := 'zeros' | 'ones' | 'normal' '(' FLOAT ')'
 *       | 'scaled' '(' FLOAT ',' INT ')' | 'copy' '(' '@'NAME ')'
 * (copy names a variable that may come later: the verifier checks it) */
static bool parse_init(parser *p, ptc_init *in) {
  memset(in, 0, sizeof *in);
  if (is_kw(&p->tok, "zeros")) {
    in->kind = PTC_INIT_ZEROS;
  } else if (is_kw(&p->tok, "ones")) {
    in->kind = PTC_INIT_ONES;
  } else if (is_kw(&p->tok, "normal") || is_kw(&p->tok, "scaled")) {
    bool scaled = p->tok.s[0] == 's';
    in->kind = scaled ? PTC_INIT_SCALED : PTC_INIT_NORMAL;
    next(p);
    if (!expect(p, T_LPAREN, scaled ? "'(' after 'scaled'" : "'(' after 'normal'") ||
        !parse_number(p, "the standard deviation", &in->std))
      return false;
    if (scaled && (!expect(p, T_COMMA, "',' after the standard deviation") ||
                   !parse_int(p, 1, INT32_MAX, "the depth", &in->depth)))
      return false;
    return expect(p, T_RPAREN, "')' after the init arguments");
  } else if (is_kw(&p->tok, "copy")) {
    in->kind = PTC_INIT_COPY;
    next(p);
    if (!expect(p, T_LPAREN, "'(' after 'copy'")) return false;
    if (p->tok.kind != T_ATNAME) {
      expected(p, "'@name' of the variable to copy");
      return false;
    }
    /* interned in the context: the name outlives the parser and any clone
     * of the module (ptc_init is copied by value) */
    in->from = ptc_intern_cstr(p->ctx, tok_cstr(p, &p->tok));
    next(p);
    return expect(p, T_RPAREN, "')' after the variable to copy");
  } else {
    expected(p, "an init (zeros, ones, normal(STD), scaled(STD, DEPTH) or copy(@VAR))");
    return false;
  }
  next(p);
  return ok(p);
}

/* param := ('param' | 'state') '@'NAME ':' type [sharding] ['init' init] [loc] */
static bool parse_param(parser *p) {
  bool trainable = is_kw(&p->tok, "param");
  next(p); /* 'param' or 'state' */
  if (!ok(p)) return false;
  if (p->tok.kind != T_ATNAME) {
    expected(p, "'@name' after 'param'");
    return false;
  }
  token name = p->tok;
  smap_ent *prev = smap_find(&p->params, name.s, name.n);
  if (prev) {
    perr(p, name.line, name.col, "param @%.*s is already defined at %d:%d",
         name.n > 60 ? 60 : (int)name.n, name.s, (int)prev->line,
         (int)prev->col);
    return false;
  }
  next(p);
  ptc_type type;
  ptc_sharding shard;
  ptc_init init = {PTC_INIT_NONE, 0, 0, NULL};
  ptc_loc loc;
  if (!expect(p, T_COLON, "':' after the param name") ||
      !parse_rtype(p, &type, &shard))
    return false;
  if (is_kw(&p->tok, "init")) {
    next(p);
    if (!parse_init(p, &init)) return false;
  }
  if (!parse_opt_loc(p, &loc)) return false;
  int before = ptc_ctx_error_count(p->ctx);
  int32_t idx = ptc_module_add_param(p->m, tok_cstr(p, &name), &type, init,
                                     loc_at(p, name.line, name.col));
  if (idx < 0) {
    if (ptc_ctx_error_count(p->ctx) == before)
      perr(p, name.line, name.col, "cannot add param @%.*s",
           name.n > 60 ? 60 : (int)name.n, name.s);
    p->failed = true;
    return false;
  }
  p->m->params[idx].shard = shard;
  p->m->params[idx].trainable = trainable;
  push_loc(&p->param_locs, &p->nparam_locs, &p->cap_param_locs, loc);
  smap_put(&p->params, name.s, name.n, idx, name.line, name.col);
  return true;
}

/* ======================================================================
 * Functions and ops
 * ====================================================================== */

static bool is_number_name(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!is_digit(s[i])) return false;
  return true;
}

/* Records %name as defined at t (checking it is new).  id -1 marks a name
 * whose op is still being parsed: using it is a use before definition. */
static bool define_value(parser *p, const token *t, int32_t id) {
  smap_ent *prev = smap_find(&p->values, t->s, t->n);
  if (prev) {
    perr(p, t->line, t->col, "value %%%.*s is already defined at %d:%d",
         t->n > 60 ? 60 : (int)t->n, t->s, (int)prev->line, (int)prev->col);
    return false;
  }
  smap_put(&p->values, t->s, t->n, id, t->line, t->col);
  return true;
}

/* operand := '%'NAME | '@'NAME */
static bool parse_operand(parser *p, ptc_func *f) {
  token t = p->tok;
  int32_t id;
  int len = t.n > 60 ? 60 : (int)t.n;
  if (t.kind == T_PCTNAME) {
    smap_ent *e = smap_find(&p->values, t.s, t.n);
    if (!e || e->v < 0) {
      PERR_TOK(p, "use of undefined value %%%.*s", len, t.s);
      return false;
    }
    id = e->v;
  } else if (t.kind == T_ATNAME) {
    smap_ent *e = smap_find(&p->params, t.s, t.n);
    if (!e) {
      PERR_TOK(p, "use of undefined param @%.*s", len, t.s);
      return false;
    }
    id = ptc_func_param_value(f, e->v);
  } else {
    expected(p, "an operand ('%value' or '@param')");
    return false;
  }
  grow(&p->in, &p->cap_in, p->nin + 1, sizeof *p->in);
  p->in[p->nin++] = id;
  next(p);
  return ok(p);
}

/* Checks a `return` against the function's signature, as the verifier does
 * (types, and shardings where the signature gives one), but at once and at
 * the op's position in the text. */
static bool check_return(parser *p, ptc_func *f, const token *optok) {
  if (p->nin != f->nresults) {
    perr(p, optok->line, optok->col,
         "'return' gives %d value%s but @%s returns %d", (int)p->nin,
         p->nin == 1 ? "" : "s", f->name, (int)f->nresults);
    return false;
  }
  for (int32_t i = 0; i < p->nin; i++) {
    const ptc_value *v = &f->values[p->in[i]];
    const ptc_sharding *rs = &f->result_shards[i];
    if (ptc_type_eq(&v->type, &f->result_types[i]) &&
        (!rs->present || ptc_sharding_eq(&v->shard, rs, v->type.rank)))
      continue;
    ptc_buf have, want;
    ptc_buf_init(&have);
    ptc_buf_init(&want);
    ptc_type_print(&have, &v->type);
    if (v->shard.present) {
      ptc_buf_puts(&have, " ");
      ptc_sharding_print(&have, &v->shard, v->type.rank, &p->m->mesh);
    }
    ptc_type_print(&want, &f->result_types[i]);
    if (rs->present) {
      ptc_buf_puts(&want, " ");
      ptc_sharding_print(&want, rs, f->result_types[i].rank, &p->m->mesh);
    }
    perr(p, optok->line, optok->col,
         "'return' value %d is %s but @%s returns %s", (int)i, have.data,
         f->name, want.data);
    ptc_buf_fini(&have);
    ptc_buf_fini(&want);
    return false;
  }
  return true;
}

/* op := [VAL (',' VAL)* '='] OPNAME [operand (',' operand)*] [attrdict]
 *       [':' rtype (',' rtype)*] [loc] */
static bool parse_op(parser *p, ptc_func *f) {
  p->nnames = p->nin = p->nattr = p->ntypes = 0;
  if (p->tok.kind == T_PCTNAME) {
    for (;;) {
      if (p->tok.kind != T_PCTNAME) {
        expected(p, "a result name ('%name')");
        return false;
      }
      if (!define_value(p, &p->tok, -1)) return false;
      grow(&p->names, &p->cap_names, p->nnames + 1, sizeof *p->names);
      p->names[p->nnames++] = p->tok;
      next(p);
      if (!accept(p, T_COMMA)) break;
    }
    if (!expect(p, T_EQ, "'=' or ',' after the result names")) return false;
  }
  if (p->tok.kind != T_IDENT) {
    expected(p, "an op name");
    return false;
  }
  token optok = p->tok;
  int code = ptc_opcode_from_name(optok.s, optok.n);
  if (code < 0) {
    PERR_TOK(p, "unknown op '%.*s'", optok.n > 40 ? 40 : (int)optok.n,
             optok.s);
    return false;
  }
  const ptc_opinfo *info = ptc_opinfo_get((ptc_opcode)code);
  if (p->nnames != info->nout) {
    if (info->nout == 0)
      PERR_TOK(p, "op '%s' has no result to name", info->name);
    else
      PERR_TOK(p, "op '%s' has %d result%s; write '%%name = %s ...'",
               info->name, (int)info->nout, info->nout == 1 ? "" : "s",
               info->name);
    return false;
  }
  next(p);
  if (ok(p) && (p->tok.kind == T_PCTNAME || p->tok.kind == T_ATNAME)) {
    do {
      if (!parse_operand(p, f)) return false;
    } while (accept(p, T_COMMA));
  }
  if (ok(p) && p->tok.kind == T_LBRACE && !parse_attrdict(p, info))
    return false;
  /* parse_attrdict left p->nattr; without a dict there are none. */
  if (accept(p, T_COLON)) {
    for (;;) {
      if (p->ntypes == info->nout) {
        PERR_TOK(p, "op '%s' has %d result%s", info->name, (int)info->nout,
                 info->nout == 1 ? "" : "s");
        return false;
      }
      grow(&p->types, &p->cap_types, p->ntypes + 1, sizeof *p->types);
      /* types and shards share a capacity: grow both together */
      p->shards = ptc_xrealloc(p->shards, (size_t)p->cap_types * sizeof *p->shards);
      if (!parse_rtype(p, &p->types[p->ntypes], &p->shards[p->ntypes]))
        return false;
      p->ntypes++;
      if (!accept(p, T_COMMA)) break;
    }
    if (ok(p) && p->ntypes != info->nout) {
      perr(p, optok.line, optok.col, "op '%s' has %d results but %d types are given",
           info->name, (int)info->nout, (int)p->ntypes);
      return false;
    }
  } else if (ok(p) && info->nout > 0 && (info->flags & PTC_OPF_TYPE_GIVEN)) {
    expected(p, "':' and the result type (this op does not infer it)");
    return false;
  }
  ptc_loc oploc;
  if (!parse_opt_loc(p, &oploc)) return false;

  if (code == PTC_OP_RETURN && !check_return(p, f, &optok)) return false;

  ptc_build_args args = {
      .code = (ptc_opcode)code,
      .nin = p->nin,
      .in = p->in,
      .nattr = p->nattr,
      .attrs = p->attrs,
      .ngiven = p->ntypes,
      .given = p->ntypes ? p->types : NULL,
      .given_shard = p->ntypes ? p->shards : NULL,
      .loc = loc_at(p, optok.line, optok.col),
  };
  int before = ptc_ctx_error_count(p->ctx);
  int32_t idx = ptc_build(f, &args);
  if (idx < 0) {
    if (ptc_ctx_error_count(p->ctx) == before)
      perr(p, optok.line, optok.col, "invalid '%s' op", info->name);
    p->failed = true;
    return false;
  }
  ptc_op *op = &f->ops[idx];
  push_loc(&p->op_locs, &p->nop_locs, &p->cap_op_locs, oploc);
  for (int32_t r = 0; r < op->nout && r < p->nnames; r++) {
    const token *nt = &p->names[r];
    ptc_value *v = &f->values[op->out[r]];
    /* The text is the truth about a result's sharding: a value printed
     * without one has none, whatever the rule would have inferred. */
    if (p->ntypes) v->shard = p->shards[r];
    if (!is_number_name(nt->s, nt->n))
      v->name = ptc_arena_strndup(&p->m->arena, nt->s, nt->n);
    smap_find(&p->values, nt->s, nt->n)->v = op->out[r];
  }
  return true;
}

/* arg := '%'NAME ':' type [sharding] */
static bool parse_arg(parser *p, ptc_func *f) {
  if (p->tok.kind != T_PCTNAME) {
    expected(p, "an argument ('%name: type')");
    return false;
  }
  token name = p->tok;
  if (!define_value(p, &name, -1)) return false;
  next(p);
  ptc_type type;
  ptc_sharding shard;
  if (!expect(p, T_COLON, "':' after the argument name") ||
      !parse_rtype(p, &type, &shard))
    return false;
  const char *cname =
      is_number_name(name.s, name.n) ? NULL : tok_cstr(p, &name);
  int32_t id = ptc_func_add_arg(f, cname, &type, shard.present ? &shard : NULL);
  if (id < 0) {
    perr(p, name.line, name.col, "cannot add argument %%%.*s",
         name.n > 60 ? 60 : (int)name.n, name.s);
    return false;
  }
  f->values[id].shard = shard;
  smap_find(&p->values, name.s, name.n)->v = id;
  return true;
}

/* results := rtype | '(' rtype (',' rtype)* ')' */
static bool parse_results(parser *p, ptc_func *f) {
  bool paren = accept(p, T_LPAREN);
  for (;;) {
    ptc_type t;
    ptc_sharding s;
    if (!parse_rtype(p, &t, &s)) return false;
    ptc_func_add_result(f, &t, &s);
    if (!paren || !accept(p, T_COMMA)) break;
  }
  return !paren || expect(p, T_RPAREN, "',' or ')' after the result types");
}

/* func := 'func' '@'NAME '(' [arg (',' arg)*] ')' ['->' results] [loc]
 *         '{' op* '}' */
static bool parse_func(parser *p) {
  next(p); /* 'func' */
  if (!ok(p)) return false;
  if (p->tok.kind != T_ATNAME) {
    expected(p, "'@name' after 'func'");
    return false;
  }
  token name = p->tok;
  smap_ent *prev = smap_find(&p->funcs, name.s, name.n);
  if (prev) {
    perr(p, name.line, name.col, "func @%.*s is already defined at %d:%d",
         name.n > 60 ? 60 : (int)name.n, name.s, (int)prev->line,
         (int)prev->col);
    return false;
  }
  smap_put(&p->funcs, name.s, name.n, 0, name.line, name.col);
  next(p);
  ptc_func *f = ptc_module_add_func(p->m, tok_cstr(p, &name),
                                    loc_at(p, name.line, name.col));
  if (!f) {
    perr(p, name.line, name.col, "cannot add func @%.*s",
         name.n > 60 ? 60 : (int)name.n, name.s);
    return false;
  }
  smap_fini(&p->values); /* value names are local to a function */
  if (!expect(p, T_LPAREN, "'(' after the func name")) return false;
  if (p->tok.kind != T_RPAREN) {
    do {
      if (!parse_arg(p, f)) return false;
    } while (accept(p, T_COMMA));
  }
  if (!expect(p, T_RPAREN, "',' or ')' after an argument")) return false;
  if (accept(p, T_ARROW) && !parse_results(p, f)) return false;
  ptc_loc floc;
  if (!parse_opt_loc(p, &floc)) return false;
  push_loc(&p->func_locs, &p->nfunc_locs, &p->cap_func_locs, floc);
  if (!expect(p, T_LBRACE, "'{' to open the func body")) return false;
  while (ok(p) && p->tok.kind != T_RBRACE) {
    if (p->tok.kind == T_EOF) {
      expected(p, "'}' to close the func body");
      return false;
    }
    if (f->nops > 0 && f->ops[f->nops - 1].code == PTC_OP_RETURN) {
      expected(p, "'}' after 'return', the last op of a function");
      return false;
    }
    if (!parse_op(p, f)) return false;
  }
  if (!ok(p)) return false;
  if (f->nops == 0 || f->ops[f->nops - 1].code != PTC_OP_RETURN) {
    PERR_TOK(p, "func @%s must end with 'return'", f->name);
    return false;
  }
  next(p); /* '}' */
  return ok(p);
}

/* module := 'module' '@'NAME [mesh] ['attributes' attrdict]
 *           '{' param* func* '}' */
static bool parse_module(parser *p) {
  if (!expect_kw(p, "module")) return false;
  if (p->tok.kind != T_ATNAME) {
    expected(p, "'@name' after 'module'");
    return false;
  }
  token name = p->tok;
  p->m = ptc_module_create(p->ctx, tok_cstr(p, &name));
  p->m->loc = loc_at(p, name.line, name.col);
  next(p);
  if (ok(p) && is_kw(&p->tok, "mesh") && !parse_mesh(p)) return false;
  if (ok(p) && is_kw(&p->tok, "attributes")) {
    next(p);
    if (!parse_attrdict(p, NULL)) return false;
    for (int32_t i = 0; i < p->nattr; i++) ptc_module_set_attr(p->m, &p->attrs[i]);
  }
  if (!expect(p, T_LBRACE, "'{' to open the module body")) return false;
  while (ok(p) && (is_kw(&p->tok, "param") || is_kw(&p->tok, "state")))
    if (!parse_param(p)) return false;
  while (ok(p) && is_kw(&p->tok, "func"))
    if (!parse_func(p)) return false;
  if (!ok(p)) return false;
  if (is_kw(&p->tok, "param") || is_kw(&p->tok, "state")) {
    PERR_TOK(p, "params come before the first func");
    return false;
  }
  if (!expect(p, T_RBRACE, "'param', 'func' or '}'")) return false;
  if (p->tok.kind != T_EOF) {
    expected(p, "end of file after the module");
    return false;
  }
  return true;
}

/* Gives params, funcs and ops the loc(...) the text gave them, in place of
 * their positions in the text (see the top of this file). */
static void set_locs(parser *p) {
  ptc_module *m = p->m;
  PTC_ASSERT(p->nparam_locs == m->nparams && p->nfunc_locs == m->nfuncs);
  for (int32_t i = 0; i < m->nparams; i++) m->params[i].loc = p->param_locs[i];
  int32_t k = 0;
  for (int32_t i = 0; i < m->nfuncs; i++) {
    ptc_func *f = m->funcs[i];
    f->loc = p->func_locs[i];
    for (int32_t j = 0; j < f->nops; j++) {
      PTC_ASSERT(k < p->nop_locs);
      f->ops[j].loc = p->op_locs[k++];
    }
  }
  PTC_ASSERT(k == p->nop_locs);
}

ptc_module *ptc_parse_module(ptc_ctx *ctx, const char *name, const char *text,
                             size_t len) {
  if (!name) name = "<input>";
  if (!text) text = "";
  if (ptc_check_text(ctx, name, text, len) != 0) return NULL;
  parser p;
  memset(&p, 0, sizeof p);
  p.ctx = ctx;
  p.file = ptc_ctx_add_source(ctx, name, text, len);
  p.src = text;
  p.len = len;
  p.line = 1;
  p.errors_before = ptc_ctx_error_count(ctx);
  ptc_arena_init(&p.scratch);
  ptc_buf_init(&p.str);
  next(&p);
  bool good = parse_module(&p) && ok(&p);
  if (good) {
    int before = ptc_ctx_error_count(ctx);
    if (ptc_verify_module(p.m) != 0) {
      if (ptc_ctx_error_count(ctx) == before)
        ptc_error(ctx, loc_at(&p, 1, 1), "the module does not verify");
      good = false;
    } else {
      set_locs(&p);
    }
  } else if (!p.failed || ptc_ctx_error_count(ctx) == p.errors_before) {
    /* Every failing path reports; this guards the promise of one error. */
    ptc_error(ctx, loc_at(&p, p.tok.line, p.tok.col), "cannot parse the module");
  }
  ptc_module *m = good ? p.m : NULL;
  if (!good && p.m) ptc_module_destroy(p.m);
  ptc_arena_fini(&p.scratch);
  ptc_buf_fini(&p.str);
  smap_fini(&p.params);
  smap_fini(&p.funcs);
  smap_fini(&p.values);
  smap_fini(&p.attrnames);
  free(p.in);
  free(p.attrs);
  free(p.types);
  free(p.shards);
  free(p.names);
  free(p.ints);
  free(p.param_locs);
  free(p.func_locs);
  free(p.op_locs);
  return m;
}
