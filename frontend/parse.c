/* parse.c -- .ptg text to a syntax tree.
 *
 * Recursive descent with one token of lookahead (two for keyword arguments).
 * A newline ends a statement, except inside ( ) and [ ], where the parser
 * tells the token reader to skip newlines.  Every recursive rule counts its
 * nesting and every node records its depth, so hostile input such as 100k
 * open parentheses or a 1M-term sum gets an error, not a stack overflow in
 * here or in the lowering that walks the tree.
 *
 * The tree lives in an arena owned by the caller; names are interned in the
 * context so the lowering compares them by pointer.
 */
#include <stdlib.h>
#include <string.h>

#include "frontend/ptg_internal.h"

typedef struct parser {
  ptc_ctx *ctx;
  ptc_arena *arena;
  ptg_lexer lx;
  ptg_token tok;   /* current token, not yet consumed */
  int32_t bracket; /* open ( and [ : newlines are blanks inside them */
  int32_t nest;    /* recursion depth of expression and block rules */
  int64_t nodes;
  bool failed;
} parser;

/* ---- tokens ---------------------------------------------------------------- */

static int advance(parser *p) {
  do {
    if (ptg_lex_next(&p->lx, &p->tok) < 0) {
      p->failed = true;
      return -1;
    }
  } while (p->tok.kind == PTG_TOK_NEWLINE && p->bracket > 0);
  return 0;
}

/* The token after the current one, without consuming anything. */
static int peek2(parser *p, ptg_token *t) {
  ptg_lexer save = p->lx;
  int rc;
  p->lx.quiet = true;
  do {
    rc = ptg_lex_next(&p->lx, t);
  } while (rc == 0 && t->kind == PTG_TOK_NEWLINE && p->bracket > 0);
  p->lx = save;
  /* a bad token is reported when it is really read */
  if (rc < 0) t->kind = PTG_TOK_EOF;
  return 0;
}

static bool at(const parser *p, ptg_tok_kind k) { return p->tok.kind == k; }

static bool at_word(const parser *p, const char *w) {
  size_t n = strlen(w);
  return p->tok.kind == PTG_TOK_IDENT && p->tok.len == n &&
         memcmp(p->tok.start, w, n) == 0;
}

/* Describes the current token for "expected X, got Y". */
static void tok_text(const ptg_token *t, char *buf, size_t cap) {
  switch (t->kind) {
  case PTG_TOK_EOF:
  case PTG_TOK_NEWLINE: snprintf(buf, cap, "%s", ptg_tok_desc(t->kind)); break;
  case PTG_TOK_IDENT:
  case PTG_TOK_INT:
  case PTG_TOK_FLOAT:
    if (t->len > 40) snprintf(buf, cap, "'%.40s...'", t->start);
    else snprintf(buf, cap, "'%.*s'", (int)t->len, t->start);
    break;
  default: snprintf(buf, cap, "%s", ptg_tok_desc(t->kind)); break;
  }
}

static int fail_expected(parser *p, const char *what) {
  if (p->failed) return -1;
  char got[64];
  tok_text(&p->tok, got, sizeof got);
  ptc_error(p->ctx, p->tok.loc, "expected %s, got %s", what, got);
  p->failed = true;
  return -1;
}

static int expect(parser *p, ptg_tok_kind k, const char *what) {
  if (!at(p, k)) return fail_expected(p, what);
  return advance(p);
}

/* Opening and closing brackets move the newline-skipping depth before the
 * next token is read, so the token after '(' already skips newlines and the
 * one after ')' does not. */
static int open_bracket(parser *p) {
  p->bracket++;
  return advance(p);
}

static int close_bracket(parser *p, ptg_tok_kind k, const char *what) {
  if (!at(p, k)) return fail_expected(p, what);
  p->bracket--;
  return advance(p);
}

static const char *intern_tok(parser *p, const ptg_token *t) {
  return ptc_intern(p->ctx, t->start, t->len);
}

/* ---- nodes ------------------------------------------------------------------ */

static ptg_node *new_node(parser *p, ptg_node_kind k, ptc_loc loc) {
  if (++p->nodes > PTG_MAX_NODES) {
    ptc_error(p->ctx, loc, "the file is too large: more than %lld "
              "expressions", (long long)PTG_MAX_NODES);
    p->failed = true;
    return NULL;
  }
  ptg_node *n = ptc_arena_alloc(p->arena, sizeof *n);
  n->kind = k;
  n->loc = loc;
  n->start = loc;
  n->depth = 1;
  return n;
}

/* Sets the node's depth from its children; refuses trees too deep to walk. */
static int finish_node(parser *p, ptg_node *n) {
  int32_t d = 0;
  for (int32_t i = 0; i < n->nkids; i++)
    if (n->kids[i] && n->kids[i]->depth > d) d = n->kids[i]->depth;
  n->depth = d + 1;
  if (n->depth > PTG_MAX_TREE_DEPTH) {
    ptc_error(p->ctx, n->loc, "expression is too deeply nested or too long "
              "(more than %d levels); split it into several statements",
              PTG_MAX_TREE_DEPTH);
    p->failed = true;
    return -1;
  }
  return 0;
}

/* A growable list of node pointers, copied into the arena when done. */
typedef struct nodevec {
  ptg_node **v;
  const char **kw;
  ptc_loc *kwloc;
  int32_t n, cap;
} nodevec;

static void nv_push(nodevec *nv, ptg_node *x, const char *kw, ptc_loc kwloc) {
  if (nv->n == nv->cap) {
    nv->cap = nv->cap ? 2 * nv->cap : 8;
    nv->v = ptc_xrealloc(nv->v, (size_t)nv->cap * sizeof *nv->v);
    nv->kw = ptc_xrealloc(nv->kw, (size_t)nv->cap * sizeof *nv->kw);
    nv->kwloc = ptc_xrealloc(nv->kwloc, (size_t)nv->cap * sizeof *nv->kwloc);
  }
  nv->v[nv->n] = x;
  nv->kw[nv->n] = kw;
  nv->kwloc[nv->n] = kwloc;
  nv->n++;
}

static void nv_free(nodevec *nv) {
  free(nv->v);
  free(nv->kw);
  free(nv->kwloc);
}

static void nv_move(parser *p, nodevec *nv, ptg_node *n, bool with_kw) {
  n->nkids = nv->n;
  n->kids = ptc_arena_alloc(p->arena, (size_t)nv->n * sizeof *n->kids + 1);
  if (nv->n) memcpy(n->kids, nv->v, (size_t)nv->n * sizeof *n->kids);
  if (with_kw) {
    n->kw = ptc_arena_alloc(p->arena, (size_t)nv->n * sizeof *n->kw + 1);
    n->kwloc = ptc_arena_alloc(p->arena, (size_t)nv->n * sizeof *n->kwloc + 1);
    if (nv->n) {
      memcpy(n->kw, nv->kw, (size_t)nv->n * sizeof *n->kw);
      memcpy(n->kwloc, nv->kwloc, (size_t)nv->n * sizeof *n->kwloc);
    }
  }
  nv_free(nv);
}

static int enter(parser *p) {
  if (++p->nest > PTG_MAX_NEST) {
    ptc_error(p->ctx, p->tok.loc, "nested too deeply (more than %d levels)",
              PTG_MAX_NEST);
    p->failed = true;
    return -1;
  }
  return 0;
}

/* ---- expressions -------------------------------------------------------------- */

static ptg_node *parse_expr(parser *p);
static ptg_node *parse_unary(parser *p);

/* list := '[' [expr {',' expr}] ']' */
static ptg_node *parse_list(parser *p) {
  ptg_node *n = new_node(p, PTG_N_LIST, p->tok.loc);
  if (!n || open_bracket(p) < 0) return NULL;
  nodevec nv = {0};
  while (!at(p, PTG_TOK_RBRACKET)) {
    ptg_node *e = parse_expr(p);
    if (!e) {
      nv_free(&nv);
      return NULL;
    }
    nv_push(&nv, e, NULL, ptc_loc_unknown);
    if (!at(p, PTG_TOK_COMMA)) break;
    if (advance(p) < 0) {
      nv_free(&nv);
      return NULL;
    }
  }
  nv_move(p, &nv, n, false);
  if (close_bracket(p, PTG_TOK_RBRACKET, "',' or ']'") < 0) return NULL;
  return finish_node(p, n) < 0 ? NULL : n;
}

/* args := [arg {',' arg}]     arg := NAME '=' expr | expr */
static ptg_node *parse_call(parser *p, const ptg_token *name) {
  ptg_node *n = new_node(p, PTG_N_CALL, name->loc);
  if (!n) return NULL;
  n->name = intern_tok(p, name);
  if (open_bracket(p) < 0) return NULL;
  nodevec nv = {0};
  while (!at(p, PTG_TOK_RPAREN)) {
    const char *kw = NULL;
    ptc_loc kwloc = ptc_loc_unknown;
    if (at(p, PTG_TOK_IDENT)) {
      ptg_token nx;
      peek2(p, &nx);
      if (nx.kind == PTG_TOK_EQ) {
        kw = intern_tok(p, &p->tok);
        kwloc = p->tok.loc;
        if (advance(p) < 0 || advance(p) < 0) goto fail;
      }
    }
    ptg_node *e = parse_expr(p);
    if (!e) goto fail;
    nv_push(&nv, e, kw, kwloc);
    if (!at(p, PTG_TOK_COMMA)) break;
    if (advance(p) < 0) goto fail;
  }
  nv_move(p, &nv, n, true);
  if (close_bracket(p, PTG_TOK_RPAREN, "',' or ')'") < 0) return NULL;
  return finish_node(p, n) < 0 ? NULL : n;
fail:
  nv_free(&nv);
  return NULL;
}

/* primary := INT | FLOAT | 'true' | 'false' | NAME | NAME '(' args ')'
 *          | '(' expr ')' | list */
static ptg_node *parse_primary(parser *p) {
  ptg_token t = p->tok;
  switch (t.kind) {
  case PTG_TOK_INT:
  case PTG_TOK_FLOAT: {
    ptg_node *n = new_node(p, t.kind == PTG_TOK_INT ? PTG_N_INT : PTG_N_FLOAT, t.loc);
    if (!n) return NULL;
    n->ival = t.ival;
    n->fval = t.fval;
    return advance(p) < 0 ? NULL : n;
  }
  case PTG_TOK_IDENT: {
    if (at_word(p, "true") || at_word(p, "false")) {
      ptg_node *n = new_node(p, PTG_N_BOOL, t.loc);
      if (!n) return NULL;
      n->ival = at_word(p, "true");
      return advance(p) < 0 ? NULL : n;
    }
    if (advance(p) < 0) return NULL;
    if (at(p, PTG_TOK_LPAREN)) return parse_call(p, &t);
    ptg_node *n = new_node(p, PTG_N_NAME, t.loc);
    if (!n) return NULL;
    n->name = intern_tok(p, &t);
    return n;
  }
  case PTG_TOK_LPAREN: {
    if (open_bracket(p) < 0) return NULL;
    ptg_node *e = parse_expr(p);
    if (!e) return NULL;
    if (close_bracket(p, PTG_TOK_RPAREN, "')'") < 0) return NULL;
    return e;
  }
  case PTG_TOK_LBRACKET: return parse_list(p);
  default: fail_expected(p, "an expression"); return NULL;
  }
}

/* item := [expr] ':' [expr] | expr */
static ptg_node *parse_index_item(parser *p) {
  ptg_node *lo = NULL, *hi = NULL;
  ptc_loc loc = p->tok.loc;
  if (!at(p, PTG_TOK_COLON)) {
    lo = parse_expr(p);
    if (!lo) return NULL;
    if (!at(p, PTG_TOK_COLON)) return lo;
  }
  ptc_loc colon = p->tok.loc;
  if (advance(p) < 0) return NULL;
  if (!at(p, PTG_TOK_COMMA) && !at(p, PTG_TOK_RBRACKET)) {
    hi = parse_expr(p);
    if (!hi) return NULL;
  }
  ptg_node *n = new_node(p, PTG_N_SLICE, lo ? loc : colon);
  if (!n) return NULL;
  n->nkids = 2;
  n->kids = ptc_arena_alloc(p->arena, 2 * sizeof *n->kids);
  n->kids[0] = lo;
  n->kids[1] = hi;
  if (lo) n->start = lo->start;
  return finish_node(p, n) < 0 ? NULL : n;
}

/* postfix := primary { '^' 'T' | '[' item {',' item} ']' } */
static ptg_node *parse_postfix(parser *p) {
  ptg_node *e = parse_primary(p);
  while (e) {
    if (at(p, PTG_TOK_CARET)) {
      ptg_node *n = new_node(p, PTG_N_TRANSPOSE, p->tok.loc);
      if (!n || advance(p) < 0) return NULL;
      if (!at_word(p, "T")) {
        fail_expected(p, "'T' after '^' (X^T transposes the last two "
                      "dimensions)");
        return NULL;
      }
      if (advance(p) < 0) return NULL;
      n->nkids = 1;
      n->kids = ptc_arena_alloc(p->arena, sizeof *n->kids);
      n->kids[0] = e;
      n->start = e->start;
      if (finish_node(p, n) < 0) return NULL;
      e = n;
    } else if (at(p, PTG_TOK_LBRACKET)) {
      ptg_node *n = new_node(p, PTG_N_INDEX, p->tok.loc);
      if (!n || open_bracket(p) < 0) return NULL;
      nodevec nv = {0};
      nv_push(&nv, e, NULL, ptc_loc_unknown);
      for (;;) {
        ptg_node *it = parse_index_item(p);
        if (!it) {
          nv_free(&nv);
          return NULL;
        }
        nv_push(&nv, it, NULL, ptc_loc_unknown);
        if (!at(p, PTG_TOK_COMMA)) break;
        if (advance(p) < 0) {
          nv_free(&nv);
          return NULL;
        }
      }
      nv_move(p, &nv, n, false);
      n->start = e->start;
      if (close_bracket(p, PTG_TOK_RBRACKET, "',' or ']'") < 0) return NULL;
      if (finish_node(p, n) < 0) return NULL;
      e = n;
    } else {
      break;
    }
  }
  return e;
}

static ptg_node *binary_node(parser *p, ptg_tok_kind op, ptc_loc loc,
                             ptg_node *a, ptg_node *b) {
  ptg_node *n = new_node(p, PTG_N_BINARY, loc);
  if (!n) return NULL;
  n->op = op;
  n->nkids = 2;
  n->kids = ptc_arena_alloc(p->arena, 2 * sizeof *n->kids);
  n->kids[0] = a;
  n->kids[1] = b;
  n->start = a->start;
  return finish_node(p, n) < 0 ? NULL : n;
}

/* power := postfix ['**' unary]      (right-associative, binds tighter than
 * unary minus on its left: -2**2 is -4, as in Python) */
static ptg_node *parse_power(parser *p) {
  ptg_node *a = parse_postfix(p);
  if (!a || !at(p, PTG_TOK_STARSTAR)) return a;
  ptc_loc loc = p->tok.loc;
  if (advance(p) < 0) return NULL;
  ptg_node *b = parse_unary(p);
  if (!b) return NULL;
  return binary_node(p, PTG_TOK_STARSTAR, loc, a, b);
}

/* unary := ('-' | '+') unary | power */
static ptg_node *parse_unary(parser *p) {
  if (enter(p) < 0) return NULL;
  ptg_node *r;
  if (at(p, PTG_TOK_MINUS) || at(p, PTG_TOK_PLUS)) {
    bool neg = at(p, PTG_TOK_MINUS);
    ptc_loc loc = p->tok.loc;
    if (advance(p) < 0) {
      r = NULL;
    } else {
      ptg_node *e = parse_unary(p);
      r = e;
      if (e && neg) {
        r = new_node(p, PTG_N_NEG, loc);
        if (r) {
          r->nkids = 1;
          r->kids = ptc_arena_alloc(p->arena, sizeof *r->kids);
          r->kids[0] = e;
          if (finish_node(p, r) < 0) r = NULL;
        }
      }
    }
  } else {
    r = parse_power(p);
  }
  p->nest--;
  return r;
}

/* mult := unary {('*' | '/' | '//' | '%' | '@') unary} */
static ptg_node *parse_mult(parser *p) {
  ptg_node *a = parse_unary(p);
  while (a && (at(p, PTG_TOK_STAR) || at(p, PTG_TOK_SLASH) ||
               at(p, PTG_TOK_SLASHSLASH) || at(p, PTG_TOK_PERCENT) ||
               at(p, PTG_TOK_AT))) {
    ptg_tok_kind op = p->tok.kind;
    ptc_loc loc = p->tok.loc;
    if (advance(p) < 0) return NULL;
    ptg_node *b = parse_unary(p);
    if (!b) return NULL;
    a = binary_node(p, op, loc, a, b);
  }
  return a;
}

/* expr := mult {('+' | '-') mult} */
/* (Every recursive path passes through parse_unary, which counts nesting.) */
static ptg_node *parse_expr(parser *p) {
  ptg_node *a = parse_mult(p);
  while (a && (at(p, PTG_TOK_PLUS) || at(p, PTG_TOK_MINUS))) {
    ptg_tok_kind op = p->tok.kind;
    ptc_loc loc = p->tok.loc;
    if (advance(p) < 0) return NULL;
    ptg_node *b = parse_mult(p);
    a = b ? binary_node(p, op, loc, a, b) : NULL;
  }
  return a;
}

/* ---- statements ------------------------------------------------------------- */

static ptg_stmt *new_stmt(parser *p, ptg_stmt_kind k, ptc_loc loc) {
  /* statements count with nodes: `input x : []` has no expression */
  if (++p->nodes > PTG_MAX_NODES) {
    ptc_error(p->ctx, loc, "the file is too large: more than %lld "
              "statements and expressions", (long long)PTG_MAX_NODES);
    p->failed = true;
    return NULL;
  }
  ptg_stmt *s = ptc_arena_alloc(p->arena, sizeof *s);
  s->kind = k;
  s->loc = loc;
  return s;
}

static bool is_keyword(const ptg_token *t) {
  static const char *const kws[] = {"const", "input", "param", "repeat",
                                    "true", "false"};
  for (int i = 0; i < PTC_ARRAY_LEN(kws); i++)
    if (t->len == strlen(kws[i]) && memcmp(t->start, kws[i], t->len) == 0)
      return true;
  return false;
}

/* Reads a declared name (not a keyword) into s->names[0]. */
static int one_name(parser *p, ptg_stmt *s, const char *what) {
  if (!at(p, PTG_TOK_IDENT) || is_keyword(&p->tok)) return fail_expected(p, what);
  s->nnames = 1;
  s->names = ptc_arena_alloc(p->arena, sizeof *s->names);
  s->name_locs = ptc_arena_alloc(p->arena, sizeof *s->name_locs);
  s->names[0] = intern_tok(p, &p->tok);
  s->name_locs[0] = p->tok.loc;
  return advance(p);
}

/* type := [DTYPE] '[' [expr {',' expr}] ']' */
static int parse_type(parser *p, ptg_typeexpr *t) {
  t->dtype = -1;
  t->dtype_loc = p->tok.loc;
  if (at(p, PTG_TOK_IDENT)) {
    int d = ptc_dtype_from_name(p->tok.start, p->tok.len);
    if (d < 0) {
      char got[64];
      tok_text(&p->tok, got, sizeof got);
      ptc_error(p->ctx, p->tok.loc, "unknown dtype %s (expected f32, f64, "
                "bf16, f16, i64, i32, i8 or bool)", got);
      p->failed = true;
      return -1;
    }
    t->dtype = d;
    if (advance(p) < 0) return -1;
  }
  if (!at(p, PTG_TOK_LBRACKET))
    return fail_expected(p, "a shape like [dim, dim] (optionally after a "
                         "dtype: i32[batch, seq])");
  t->loc = p->tok.loc;
  if (open_bracket(p) < 0) return -1;
  nodevec nv = {0};
  while (!at(p, PTG_TOK_RBRACKET)) {
    ptg_node *e = parse_expr(p);
    if (!e) {
      nv_free(&nv);
      return -1;
    }
    nv_push(&nv, e, NULL, ptc_loc_unknown);
    if (!at(p, PTG_TOK_COMMA)) break;
    if (advance(p) < 0) {
      nv_free(&nv);
      return -1;
    }
  }
  t->ndims = nv.n;
  t->dims = ptc_arena_alloc(p->arena, (size_t)nv.n * sizeof *t->dims + 1);
  if (nv.n) memcpy(t->dims, nv.v, (size_t)nv.n * sizeof *t->dims);
  nv_free(&nv);
  return close_bracket(p, PTG_TOK_RBRACKET, "',' or ']'");
}

/* init := 'zeros' | 'ones' | 'normal' '(' expr ')'
 *       | 'scaled' '(' expr ',' expr ')' */
static int parse_init(parser *p, ptg_stmt *s) {
  static const struct {
    const char *name;
    ptc_init_kind kind;
    int nargs;
    const char *usage;
  } inits[] = {
      {"zeros", PTC_INIT_ZEROS, 0, "zeros"},
      {"ones", PTC_INIT_ONES, 0, "ones"},
      {"normal", PTC_INIT_NORMAL, 1, "normal(std)"},
      {"scaled", PTC_INIT_SCALED, 2, "scaled(std, depth)"},
  };
  if (!at(p, PTG_TOK_IDENT))
    return fail_expected(p, "an init: zeros, ones, normal(std) or "
                         "scaled(std, depth)");
  int k = -1;
  for (int i = 0; i < PTC_ARRAY_LEN(inits); i++)
    if (at_word(p, inits[i].name)) k = i;
  if (k < 0) {
    char got[64];
    tok_text(&p->tok, got, sizeof got);
    ptc_error(p->ctx, p->tok.loc, "unknown init %s (expected zeros, ones, "
              "normal(std) or scaled(std, depth))", got);
    p->failed = true;
    return -1;
  }
  s->init = inits[k].kind;
  s->init_loc = p->tok.loc;
  if (advance(p) < 0) return -1;
  nodevec nv = {0};
  if (at(p, PTG_TOK_LPAREN)) {
    if (open_bracket(p) < 0) return -1;
    while (!at(p, PTG_TOK_RPAREN)) {
      ptg_node *e = parse_expr(p);
      if (!e) {
        nv_free(&nv);
        return -1;
      }
      nv_push(&nv, e, NULL, ptc_loc_unknown);
      if (!at(p, PTG_TOK_COMMA)) break;
      if (advance(p) < 0) {
        nv_free(&nv);
        return -1;
      }
    }
    if (close_bracket(p, PTG_TOK_RPAREN, "',' or ')'") < 0) {
      nv_free(&nv);
      return -1;
    }
  }
  if (nv.n != inits[k].nargs) {
    nv_free(&nv);
    ptc_error(p->ctx, s->init_loc, "init '%s' takes %d argument%s: write %s",
              inits[k].name, inits[k].nargs, inits[k].nargs == 1 ? "" : "s",
              inits[k].usage);
    p->failed = true;
    return -1;
  }
  s->ninit = nv.n;
  s->init_args = ptc_arena_alloc(p->arena, (size_t)nv.n * sizeof *s->init_args + 1);
  if (nv.n) memcpy(s->init_args, nv.v, (size_t)nv.n * sizeof *s->init_args);
  nv_free(&nv);
  return 0;
}

/* A growable list of statements. */
typedef struct stmtvec {
  ptg_stmt **v;
  int32_t n, cap;
} stmtvec;

static void sv_push(stmtvec *sv, ptg_stmt *s) {
  if (sv->n == sv->cap) {
    sv->cap = sv->cap ? 2 * sv->cap : 16;
    sv->v = ptc_xrealloc(sv->v, (size_t)sv->cap * sizeof *sv->v);
  }
  sv->v[sv->n++] = s;
}

static int parse_stmt(parser *p, bool top, stmtvec *sv);

/* stmts := { [stmt] NEWLINE }, up to '}' (in a block) or end of file (at
 * the top level). */
static int parse_stmts(parser *p, bool top, ptc_loc brace, ptg_stmt ***out,
                       int32_t *nout, bool *has_params) {
  stmtvec sv = {0};
  for (;;) {
    while (at(p, PTG_TOK_NEWLINE))
      if (advance(p) < 0) goto fail;
    if (at(p, PTG_TOK_EOF)) {
      if (!top) {
        ptc_error(p->ctx, brace, "unterminated block: this '{' has no "
                  "matching '}'");
        p->failed = true;
        goto fail;
      }
      break;
    }
    if (at(p, PTG_TOK_RBRACE)) {
      if (top) {
        ptc_error(p->ctx, p->tok.loc, "unexpected '}' outside a repeat block");
        p->failed = true;
        goto fail;
      }
      break;
    }
    int32_t first = sv.n;
    if (parse_stmt(p, top, &sv) < 0) goto fail;
    for (int32_t i = first; i < sv.n; i++)
      if (sv.v[i]->kind == PTG_S_PARAM ||
          (sv.v[i]->kind == PTG_S_REPEAT && sv.v[i]->has_params))
        *has_params = true;
    if (!at(p, PTG_TOK_NEWLINE) && !at(p, PTG_TOK_EOF) && !at(p, PTG_TOK_RBRACE)) {
      fail_expected(p, "end of line after the statement");
      goto fail;
    }
  }
  *out = ptc_arena_alloc(p->arena, (size_t)sv.n * sizeof **out + 1);
  if (sv.n) memcpy(*out, sv.v, (size_t)sv.n * sizeof *sv.v);
  *nout = sv.n;
  free(sv.v);
  return 0;
fail:
  free(sv.v);
  return -1;
}

/* stmt := 'const' NAME '=' expr {',' NAME '=' expr}
 *       | 'input' NAME ':' type
 *       | 'param' NAME ':' type ['~' init]
 *       | 'repeat' expr ['as' NAME] '{' stmts '}'
 *       | NAME {',' NAME} '=' expr
 * A `const` with several names becomes one statement per name.  Appends the
 * statements to sv. */
static int parse_stmt(parser *p, bool top, stmtvec *sv) {
  ptc_loc loc = p->tok.loc;
  if (at_word(p, "const")) {
    if (!top) {
      ptc_error(p->ctx, loc, "constants must be declared at the top level, "
                "not inside a repeat block");
      p->failed = true;
      return -1;
    }
    if (advance(p) < 0) return -1;
    for (;;) {
      ptg_stmt *s = new_stmt(p, PTG_S_CONST, p->tok.loc);
      if (!s) return -1;
      if (one_name(p, s, "a constant name") < 0) return -1;
      if (expect(p, PTG_TOK_EQ, "'=' after the constant's name") < 0) return -1;
      s->expr = parse_expr(p);
      if (!s->expr) return -1;
      sv_push(sv, s);
      if (!at(p, PTG_TOK_COMMA)) return 0;
      if (advance(p) < 0) return -1;
    }
  }
  if (at_word(p, "input") || at_word(p, "param")) {
    bool param = at_word(p, "param");
    if (!param && !top) {
      ptc_error(p->ctx, loc, "inputs must be declared at the top level, not "
                "inside a repeat block");
      p->failed = true;
      return -1;
    }
    ptg_stmt *s = new_stmt(p, param ? PTG_S_PARAM : PTG_S_INPUT, loc);
    if (!s) return -1;
    if (advance(p) < 0) return -1;
    if (one_name(p, s, param ? "a parameter name" : "an input name") < 0) return -1;
    if (expect(p, PTG_TOK_COLON, "':' and a type") < 0) return -1;
    if (parse_type(p, &s->type) < 0) return -1;
    if (param && at(p, PTG_TOK_TILDE)) {
      if (advance(p) < 0 || parse_init(p, s) < 0) return -1;
    }
    sv_push(sv, s);
    return 0;
  }
  if (at_word(p, "repeat")) {
    ptg_stmt *s = new_stmt(p, PTG_S_REPEAT, loc);
    if (!s) return -1;
    if (advance(p) < 0) return -1;
    s->expr = parse_expr(p);
    if (!s->expr) return -1;
    if (at_word(p, "as")) {
      if (advance(p) < 0) return -1;
      if (!at(p, PTG_TOK_IDENT) || is_keyword(&p->tok)) {
        fail_expected(p, "a name after 'as' (the prefix of the block's "
                      "parameter names)");
        return -1;
      }
      s->prefix = intern_tok(p, &p->tok);
      if (advance(p) < 0) return -1;
    }
    if (!at(p, PTG_TOK_LBRACE)) {
      fail_expected(p, "'{' to open the repeat block");
      return -1;
    }
    s->brace_loc = p->tok.loc;
    if (enter(p) < 0 || advance(p) < 0) return -1;
    if (parse_stmts(p, false, s->brace_loc, &s->body, &s->nbody,
                    &s->has_params) < 0)
      return -1;
    p->nest--;
    /* at '}' */
    if (advance(p) < 0) return -1;
    if (s->has_params && !s->prefix) {
      ptc_error(p->ctx, loc, "this repeat block declares parameters, so it "
                "needs a name prefix for them: write `repeat N as NAME {`");
      p->failed = true;
      return -1;
    }
    sv_push(sv, s);
    return 0;
  }
  if (at(p, PTG_TOK_IDENT) && !is_keyword(&p->tok)) {
    ptg_stmt *s = new_stmt(p, PTG_S_ASSIGN, loc);
    if (!s) return -1;
    const char *names[64];
    ptc_loc locs[64];
    int32_t n = 0;
    for (;;) {
      if (!at(p, PTG_TOK_IDENT) || is_keyword(&p->tok)) {
        fail_expected(p, "a name to assign to");
        return -1;
      }
      if (n == PTC_ARRAY_LEN(names)) {
        ptc_error(p->ctx, p->tok.loc, "too many names on the left of '=' "
                  "(at most %d)", PTC_ARRAY_LEN(names));
        p->failed = true;
        return -1;
      }
      names[n] = intern_tok(p, &p->tok);
      locs[n] = p->tok.loc;
      n++;
      if (advance(p) < 0) return -1;
      if (!at(p, PTG_TOK_COMMA)) break;
      if (advance(p) < 0) return -1;
    }
    if (!at(p, PTG_TOK_EQ)) {
      if (n == 1 && at(p, PTG_TOK_LPAREN))
        fail_expected(p, "'='; a statement is an assignment `name = "
                      "expression`, a call alone does nothing");
      else
        fail_expected(p, n == 1 ? "'=' (statements are assignments, or "
                      "start with const, input, param or repeat)" : "'='");
      return -1;
    }
    if (advance(p) < 0) return -1;
    s->nnames = n;
    s->names = ptc_arena_alloc(p->arena, (size_t)n * sizeof *s->names);
    s->name_locs = ptc_arena_alloc(p->arena, (size_t)n * sizeof *s->name_locs);
    memcpy(s->names, names, (size_t)n * sizeof *names);
    memcpy(s->name_locs, locs, (size_t)n * sizeof *locs);
    s->expr = parse_expr(p);
    if (!s->expr) return -1;
    sv_push(sv, s);
    return 0;
  }
  fail_expected(p, "a statement (const, input, param, repeat or an "
                "assignment)");
  return -1;
}

int ptg_parse(ptc_ctx *ctx, ptc_arena *arena, const char *file,
              const char *text, size_t len, ptg_program *out) {
  parser p;
  memset(&p, 0, sizeof p);
  p.ctx = ctx;
  p.arena = arena;
  ptg_lex_init(&p.lx, ctx, file, text, len);
  memset(out, 0, sizeof *out);
  if (advance(&p) < 0) return -1;
  bool has_params = false;
  if (parse_stmts(&p, true, ptc_loc_unknown, &out->stmts, &out->nstmts,
                  &has_params) < 0)
    return -1;
  out->eof_loc = p.tok.loc;
  return 0;
}
