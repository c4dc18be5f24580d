/* lex.c -- tokens of the .ptg language, produced one at a time.
 *
 * Tokens are made on demand so memory does not grow with the input: a file
 * that is one 100 MB line of blanks costs a scan, not a token array.
 * Columns count bytes (as ptc_check_text and the diagnostics do).  Numbers
 * are checked here, whole: `1e`, `0x10`, `12abc` and integers past int64 are
 * errors at the number, not confusing parse errors later.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/ptg_internal.h"

void ptg_lex_init(ptg_lexer *lx, ptc_ctx *ctx, const char *file,
                  const char *text, size_t len) {
  memset(lx, 0, sizeof *lx);
  lx->ctx = ctx;
  lx->file = file;
  lx->src = text;
  lx->p = text;
  lx->end = text + len;
  lx->line_start = text;
  lx->line = 1;
}

const char *ptg_tok_desc(ptg_tok_kind k) {
  switch (k) {
  case PTG_TOK_EOF: return "end of file";
  case PTG_TOK_NEWLINE: return "end of line";
  case PTG_TOK_IDENT: return "a name";
  case PTG_TOK_INT: return "an integer";
  case PTG_TOK_FLOAT: return "a number";
  case PTG_TOK_LPAREN: return "'('";
  case PTG_TOK_RPAREN: return "')'";
  case PTG_TOK_LBRACKET: return "'['";
  case PTG_TOK_RBRACKET: return "']'";
  case PTG_TOK_LBRACE: return "'{'";
  case PTG_TOK_RBRACE: return "'}'";
  case PTG_TOK_COMMA: return "','";
  case PTG_TOK_COLON: return "':'";
  case PTG_TOK_EQ: return "'='";
  case PTG_TOK_TILDE: return "'~'";
  case PTG_TOK_PLUS: return "'+'";
  case PTG_TOK_MINUS: return "'-'";
  case PTG_TOK_STAR: return "'*'";
  case PTG_TOK_SLASH: return "'/'";
  case PTG_TOK_SLASHSLASH: return "'//'";
  case PTG_TOK_PERCENT: return "'%'";
  case PTG_TOK_STARSTAR: return "'**'";
  case PTG_TOK_AT: return "'@'";
  case PTG_TOK_CARET: return "'^'";
  }
  return "a token";
}

static bool is_alpha(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_digit(int c) { return c >= '0' && c <= '9'; }
static bool is_alnum(int c) { return is_alpha(c) || is_digit(c); }

__attribute__((format(printf, 3, 4))) static int lex_error(ptg_lexer *lx,
                                                          ptc_loc loc,
                                                          const char *fmt,
                                                          ...) {
  if (lx->quiet) return -1;
  va_list ap;
  va_start(ap, fmt);
  ptc_vdiag(lx->ctx, PTC_SEV_ERROR, loc, fmt, ap);
  va_end(ap);
  return -1;
}

static ptc_loc loc_at(const ptg_lexer *lx, const char *p) {
  ptc_loc l = {lx->file, lx->line, (int32_t)(p - lx->line_start) + 1};
  return l;
}

/* The text of a bad number for a message: the run of characters that look
 * like part of it, cut to something readable. */
static void number_text(const char *s, const char *end, char *out, size_t cap) {
  const char *p = s;
  while (p < end && (is_alnum((unsigned char)*p) || *p == '.' ||
                     ((*p == '+' || *p == '-') && p > s &&
                      (p[-1] == 'e' || p[-1] == 'E'))))
    p++;
  size_t n = (size_t)(p - s);
  if (n + 1 > cap) {
    snprintf(out, cap, "%.*s...", (int)(cap - 4), s);
  } else {
    memcpy(out, s, n);
    out[n] = 0;
  }
}

/* Scans the number at s (which starts with a digit or '.'), strictly.
 * Returns the length consumed, or 0 with a message in err. */
static size_t scan_number(const char *s, const char *end, bool *is_int,
                          int64_t *iv, double *fv, char *err, size_t errlen) {
  const char *p = s;
  bool isint = true;
  while (p < end && is_digit((unsigned char)*p)) p++;
  if (p < end && *p == '.') {
    isint = false;
    p++;
    while (p < end && is_digit((unsigned char)*p)) p++;
  }
  if (p == s || (p == s + 1 && *s == '.')) {
    snprintf(err, errlen, "expected digits");
    return 0;
  }
  char text[64];
  if (p < end && (*p == 'e' || *p == 'E')) {
    isint = false;
    const char *q = p + 1;
    if (q < end && (*q == '+' || *q == '-')) q++;
    if (q >= end || !is_digit((unsigned char)*q)) {
      number_text(s, end, text, sizeof text);
      snprintf(err, errlen, "invalid number '%s': the exponent has no digits",
               text);
      return 0;
    }
    while (q < end && is_digit((unsigned char)*q)) q++;
    p = q;
  }
  if (p < end && (is_alnum((unsigned char)*p) || *p == '.')) {
    number_text(s, end, text, sizeof text);
    if (p == s + 1 && *s == '0' && (*p == 'x' || *p == 'X' || *p == 'b' ||
                                    *p == 'o'))
      snprintf(err, errlen, "invalid number '%s': only decimal numbers are "
               "supported", text);
    else
      snprintf(err, errlen, "invalid number '%s'", text);
    return 0;
  }
  size_t n = (size_t)(p - s);
  if (isint) {
    int64_t v = 0;
    for (const char *q = s; q < p; q++) {
      int d = *q - '0';
      if (v > (INT64_MAX - d) / 10) {
        number_text(s, end, text, sizeof text);
        snprintf(err, errlen, "integer '%s' is too large (the largest is "
                 "9223372036854775807)", text);
        return 0;
      }
      v = v * 10 + d;
    }
    *is_int = true;
    *iv = v;
    return n;
  }
  /* strtod needs a terminated copy; very long numbers are refused rather
   * than copied. */
  if (n > 1000) {
    snprintf(err, errlen, "number is too long (%zu characters)", n);
    return 0;
  }
  char buf[1001];
  memcpy(buf, s, n);
  buf[n] = 0;
  errno = 0;
  double v = strtod(buf, NULL);
  if (!isfinite(v) || (errno == ERANGE && fabs(v) > 1)) {
    number_text(s, end, text, sizeof text);
    snprintf(err, errlen, "number '%s' is too large", text);
    return 0;
  }
  *is_int = false;
  *fv = v;
  return n;
}

int ptg_parse_number(const char *s, size_t n, bool *is_int, int64_t *i,
                     double *f, char *err, size_t errlen) {
  bool neg = false;
  const char *end = s + n;
  if (n > 0 && (*s == '-' || *s == '+')) {
    neg = *s == '-';
    s++;
  }
  if (s >= end || !(is_digit((unsigned char)*s) || *s == '.')) {
    snprintf(err, errlen, "expected a number");
    return -1;
  }
  size_t k = scan_number(s, end, is_int, i, f, err, errlen);
  if (k == 0) return -1;
  if (s + k != end) {
    snprintf(err, errlen, "unexpected text after the number");
    return -1;
  }
  if (neg) {
    if (*is_int) *i = -*i;
    else *f = -*f;
  }
  return 0;
}

/* Length of the UTF-8 character at p (valid: ptc_check_text ran). */
static size_t utf8_len(const char *p, const char *end) {
  unsigned char c = (unsigned char)*p;
  size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  if (k > (size_t)(end - p)) k = (size_t)(end - p);
  return k;
}

int ptg_lex_next(ptg_lexer *lx, ptg_token *t) {
  const char *p = lx->p, *end = lx->end;
  /* blanks and comments */
  for (;;) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\f' ||
                       *p == '\v'))
      p++;
    if (p < end && *p == '#') {
      const char *nl = memchr(p, '\n', (size_t)(end - p));
      p = nl ? nl : end;
      continue;
    }
    break;
  }
  memset(t, 0, sizeof *t);
  t->start = p;
  t->loc = loc_at(lx, p);
  if (p >= end) {
    t->kind = PTG_TOK_EOF;
    lx->p = p;
    return 0;
  }
  char c = *p;
  if (c == '\n') {
    t->kind = PTG_TOK_NEWLINE;
    t->len = 1;
    lx->p = p + 1;
    lx->line++;
    lx->line_start = p + 1;
    return 0;
  }
  if (is_alpha((unsigned char)c)) {
    const char *q = p;
    for (;;) {
      while (q < end && is_alnum((unsigned char)*q)) q++;
      /* a dot joins name parts (attn.qkv.w) when a part follows it */
      if (q + 1 < end && *q == '.' && is_alnum((unsigned char)q[1])) {
        q++;
        continue;
      }
      break;
    }
    if (q - p > PTG_MAX_NAME) {
      return lex_error(lx, t->loc, "name '%.32s...' is too long (%zu "
                       "characters; at most %d)", p, (size_t)(q - p),
                       PTG_MAX_NAME);
    }
    t->kind = PTG_TOK_IDENT;
    t->len = (size_t)(q - p);
    lx->p = q;
    return 0;
  }
  if (is_digit((unsigned char)c) ||
      (c == '.' && p + 1 < end && is_digit((unsigned char)p[1]))) {
    char err[160];
    bool isint = false;
    size_t n = scan_number(p, end, &isint, &t->ival, &t->fval, err, sizeof err);
    if (n == 0) return lex_error(lx, t->loc, "%s", err);
    t->kind = isint ? PTG_TOK_INT : PTG_TOK_FLOAT;
    t->len = n;
    lx->p = p + n;
    return 0;
  }
  size_t len = 1;
  switch (c) {
  case '(': t->kind = PTG_TOK_LPAREN; break;
  case ')': t->kind = PTG_TOK_RPAREN; break;
  case '[': t->kind = PTG_TOK_LBRACKET; break;
  case ']': t->kind = PTG_TOK_RBRACKET; break;
  case '{': t->kind = PTG_TOK_LBRACE; break;
  case '}': t->kind = PTG_TOK_RBRACE; break;
  case ',': t->kind = PTG_TOK_COMMA; break;
  case ':': t->kind = PTG_TOK_COLON; break;
  case '=': t->kind = PTG_TOK_EQ; break;
  case '~': t->kind = PTG_TOK_TILDE; break;
  case '+': t->kind = PTG_TOK_PLUS; break;
  case '-': t->kind = PTG_TOK_MINUS; break;
  case '%': t->kind = PTG_TOK_PERCENT; break;
  case '@': t->kind = PTG_TOK_AT; break;
  case '^': t->kind = PTG_TOK_CARET; break;
  case '*':
    if (p + 1 < end && p[1] == '*') {
      t->kind = PTG_TOK_STARSTAR;
      len = 2;
    } else {
      t->kind = PTG_TOK_STAR;
    }
    break;
  case '/':
    if (p + 1 < end && p[1] == '/') {
      t->kind = PTG_TOK_SLASHSLASH;
      len = 2;
    } else {
      t->kind = PTG_TOK_SLASH;
    }
    break;
  default: {
    unsigned char u = (unsigned char)c;
    if (u < 0x20 || u == 0x7f)
      return lex_error(lx, t->loc, "unexpected control character 0x%02x", u);
    if (u == '"' || u == '\'')
      return lex_error(lx, t->loc, "unexpected quote: .ptg has no strings");
    return lex_error(lx, t->loc, "unexpected character '%.*s'",
                     (int)utf8_len(p, end), p);
  }
  }
  t->len = len;
  lx->p = p + len;
  return 0;
}
