/* ptg_internal.h -- what the pieces of the .ptg frontend share: tokens, the
 * syntax tree, and the lowering state.  Not a public header: everything
 * outside frontend/ goes through frontend.h.
 *
 * The frontend works in three steps:
 *   lex.c     text -> tokens, on demand (a 100 MB line costs no memory)
 *   parse.c   tokens -> syntax tree, in an arena owned by the compile call
 *   lower.c   syntax tree -> ptir, evaluating constants and unrolling
 *             `repeat` as it goes; builtins.c holds the function table.
 * Every step reports its first error through ptc_error and stops.
 */
#ifndef PTC_PTG_INTERNAL_H
#define PTC_PTG_INTERNAL_H

#include "frontend/frontend.h"

/* Syntactic nesting (brackets, unary operators, blocks) the parser accepts
 * before it refuses: keeps its recursion far from the stack's end. */
#define PTG_MAX_NEST 200
/* Depth of the syntax tree (a long chain `a + b + c ...` is deep too): the
 * lowering recurses over it. */
#define PTG_MAX_TREE_DEPTH 1000
/* Syntax tree nodes per file: bounds the parser's memory. */
#define PTG_MAX_NODES (INT64_C(1) << 22)
/* Longest name: names end up in messages and in the IR. */
#define PTG_MAX_NAME 256
/* Most arguments a builtin's signature may declare. */
#define PTG_MAX_SIG 8

/* ======================================================================
 * lex.c
 * ====================================================================== */

typedef enum ptg_tok_kind {
  PTG_TOK_EOF,
  PTG_TOK_NEWLINE,
  PTG_TOK_IDENT, /* a name, possibly dotted: attn.qkv.w */
  PTG_TOK_INT,
  PTG_TOK_FLOAT,
  PTG_TOK_LPAREN,
  PTG_TOK_RPAREN,
  PTG_TOK_LBRACKET,
  PTG_TOK_RBRACKET,
  PTG_TOK_LBRACE,
  PTG_TOK_RBRACE,
  PTG_TOK_COMMA,
  PTG_TOK_COLON,
  PTG_TOK_EQ,
  PTG_TOK_TILDE,
  PTG_TOK_PLUS,
  PTG_TOK_MINUS,
  PTG_TOK_STAR,
  PTG_TOK_SLASH,
  PTG_TOK_SLASHSLASH,
  PTG_TOK_PERCENT,
  PTG_TOK_STARSTAR,
  PTG_TOK_AT,
  PTG_TOK_CARET,
} ptg_tok_kind;

typedef struct ptg_token {
  ptg_tok_kind kind;
  const char *start; /* into the source text */
  size_t len;
  ptc_loc loc;
  int64_t ival; /* PTG_TOK_INT */
  double fval;  /* PTG_TOK_FLOAT */
} ptg_token;

typedef struct ptg_lexer {
  ptc_ctx *ctx;
  const char *file; /* interned */
  const char *src, *p, *end;
  const char *line_start;
  int32_t line;
  bool quiet; /* lookahead: errors are left for the real read */
} ptg_lexer;

void ptg_lex_init(ptg_lexer *lx, ptc_ctx *ctx, const char *file,
                  const char *text, size_t len);
/* Reads the next token into *t.  Returns 0, or -1 after reporting a bad
 * character or number. */
int ptg_lex_next(ptg_lexer *lx, ptg_token *t);
/* Human-readable spelling of a token kind for messages ("')'", "a name"). */
const char *ptg_tok_desc(ptg_tok_kind k);

/* Parses a number written as in .ptg (an integer, or a decimal with an
 * optional exponent) spanning exactly s[0..n), with an optional leading '-'.
 * Sets *is_int and *i or *f.  On failure returns -1 and writes why to err. */
int ptg_parse_number(const char *s, size_t n, bool *is_int, int64_t *i,
                     double *f, char *err, size_t errlen);

/* ======================================================================
 * parse.c -- the syntax tree
 * ====================================================================== */

typedef enum ptg_node_kind {
  PTG_N_INT,       /* ival */
  PTG_N_FLOAT,     /* fval */
  PTG_N_BOOL,      /* ival 0/1 */
  PTG_N_NAME,      /* name */
  PTG_N_NEG,       /* -kids[0] */
  PTG_N_BINARY,    /* kids[0] op kids[1]; op is the token kind */
  PTG_N_TRANSPOSE, /* kids[0]^T */
  PTG_N_INDEX,     /* kids[0][kids[1], ...]; items are exprs or SLICE */
  PTG_N_SLICE,     /* kids[0]:kids[1], either may be NULL */
  PTG_N_CALL,      /* name(kids...), kw[i] names keyword arguments */
  PTG_N_LIST,      /* [kids...] */
} ptg_node_kind;

typedef struct ptg_node ptg_node;
struct ptg_node {
  ptg_node_kind kind;
  ptg_tok_kind op;
  ptc_loc loc;   /* the operator token, call name or literal */
  ptc_loc start; /* where the whole expression starts */
  int32_t depth;
  int64_t ival;
  double fval;
  const char *name; /* interned */
  int32_t nkids;
  ptg_node **kids;
  const char **kw;  /* CALL: keyword of each argument, or NULL */
  ptc_loc *kwloc;   /* CALL: location of each keyword */
};

typedef enum ptg_stmt_kind {
  PTG_S_CONST,  /* const name = expr */
  PTG_S_INPUT,  /* input name : type */
  PTG_S_PARAM,  /* param name : type [~ init] */
  PTG_S_ASSIGN, /* names... = expr */
  PTG_S_REPEAT, /* repeat expr [as prefix] { body } */
} ptg_stmt_kind;

typedef struct ptg_typeexpr {
  int dtype;        /* ptc_dtype, or -1 when not written (f32) */
  ptc_loc dtype_loc; /* the dtype, or the '[' when not written */
  ptc_loc loc;      /* the '[' */
  int32_t ndims;
  ptg_node **dims;
} ptg_typeexpr;

typedef struct ptg_stmt ptg_stmt;
struct ptg_stmt {
  ptg_stmt_kind kind;
  ptc_loc loc; /* first token */
  /* CONST, INPUT, PARAM: name; ASSIGN: names */
  int32_t nnames;
  const char **names;
  ptc_loc *name_locs;
  ptg_node *expr; /* CONST, ASSIGN: the value; REPEAT: the count */
  ptg_typeexpr type;
  /* PARAM: init */
  ptc_init_kind init;
  ptc_loc init_loc;
  int32_t ninit;
  ptg_node **init_args;
  /* REPEAT */
  const char *prefix; /* NULL without `as` */
  ptc_loc brace_loc;
  bool has_params; /* the body (or a nested one) declares a param */
  int32_t nbody;
  ptg_stmt **body;
};

typedef struct ptg_program {
  int32_t nstmts;
  ptg_stmt **stmts;
  ptc_loc eof_loc;
} ptg_program;

/* Parses the whole text into `arena`.  Returns 0, or -1 after reporting the
 * first error. */
int ptg_parse(ptc_ctx *ctx, ptc_arena *arena, const char *file,
              const char *text, size_t len, ptg_program *out);

/* ======================================================================
 * lower.c / builtins.c -- evaluation and lowering
 * ====================================================================== */

typedef enum ptg_vkind {
  PTG_V_NUM,
  PTG_V_BOOL,
  PTG_V_TENSOR,
  PTG_V_TUPLE, /* the results of split() */
} ptg_vkind;

/* What an expression evaluates to. */
typedef struct ptg_val {
  ptg_vkind kind;
  /* NUM */
  bool is_int;
  int64_t i;
  double f;
  bool inexact;          /* came from an int / int that did not divide */
  int64_t div_a, div_b;  /* ... namely div_a / div_b */
  /* BOOL */
  bool b;
  /* TENSOR: value id; pend_t = a ^T not yet applied (so a matmul can take
   * it as transpose_a/b instead of a transpose op) */
  int32_t id;
  bool pend_t;
  ptc_loc t_loc;
  /* TUPLE */
  int32_t n;
  int32_t *ids;
} ptg_val;

typedef enum ptg_bkind {
  PTG_B_CONST,
  PTG_B_INPUT,
  PTG_B_VALUE,
  PTG_B_PARAM,
} ptg_bkind;

typedef struct ptg_bind {
  const char *name; /* interned: compared by pointer */
  ptg_bkind kind;
  ptg_val val;   /* CONST, INPUT, VALUE */
  int32_t param; /* PARAM: module param index */
  ptc_loc loc;
} ptg_bind;

/* A scope: the file's top level, or one iteration of a repeat body.  An
 * open-addressing table keyed by interned name pointers. */
typedef struct ptg_scope ptg_scope;
struct ptg_scope {
  ptg_scope *parent;
  ptg_bind *slots;
  int32_t cap, n;
};

typedef struct ptg_lower {
  ptc_ctx *ctx;
  const char *file;
  ptc_arena *arena; /* scratch for the compile (tuples) */
  ptc_module *mod;
  ptc_func *fn;
  const ptc_define *defs;
  int32_t ndefs;
  ptc_frontend_limits lim;
  int64_t steps;   /* statements run + repeat iterations */
  int64_t mult;    /* runs still due of the current statement list (>= 1) */
  ptg_scope *scope;
  ptc_buf prefix;  /* param name prefix of the current iteration: "h3." */
  /* full param name (interned) -> param index */
  const char **pkeys;
  int32_t *pvals;
  int32_t pcap, pn;
  bool has_loss;
  int32_t loss;
} ptg_lower;

/* Evaluates an expression.  Returns 0 or -1 (reported). */
int ptg_eval(ptg_lower *L, const ptg_node *n, ptg_val *out);
/* Turns a value into a tensor value id (applying a pending ^T); reports
 * "<what> must be a tensor" at loc for numbers. */
int ptg_as_tensor(ptg_lower *L, const ptg_val *v, ptc_loc loc,
                  const char *what, int32_t *id);
/* An integer from a number value, or -1 with a message naming `what`. */
int ptg_as_int(ptg_lower *L, const ptg_val *v, ptc_loc loc, const char *what,
               int64_t *out);
/* Builds one op (checked against the op budget); returns its single result
 * value id or -1. */
int32_t ptg_build1(ptg_lower *L, ptc_opcode code, const int32_t *in,
                   int32_t nin, const ptc_attr *attrs, int32_t nattr,
                   ptc_loc loc);
/* Builds a TYPE_GIVEN op with result type *t. */
int32_t ptg_build_typed(ptg_lower *L, ptc_opcode code, const int32_t *in,
                        int32_t nin, const ptc_attr *attrs, int32_t nattr,
                        const ptc_type *t, ptc_loc loc);
/* A scalar constant of the given dtype. */
int32_t ptg_constant(ptg_lower *L, double v, ptc_dtype dt, ptc_loc loc);
/* Element-wise binary op on two values (numbers become constants). */
int ptg_binary(ptg_lower *L, ptc_opcode code, const ptg_val *a,
               const ptg_val *b, ptc_loc loc, ptg_val *out);
static inline const ptc_type *ptg_type_of(ptg_lower *L, int32_t id) {
  return &L->fn->values[id].type;
}
void ptg_num_int(ptg_val *v, int64_t i);
void ptg_num_float(ptg_val *v, double f);
void ptg_tensor(ptg_val *v, int32_t id);
/* "a number", "a tensor f32[8,768]", ... for messages */
const char *ptg_val_desc(ptg_lower *L, const ptg_val *v, char *buf,
                         size_t len);

/* Evaluates a call to a builtin.  Reports an unknown function. */
int ptg_call(ptg_lower *L, const ptg_node *n, ptg_val *out);
/* Closest builtin name to `name` for "did you mean" (NULL if none close). */
const char *ptg_builtin_suggest(const char *name);
/* Edit distance (a swap of neighbours is one edit), and how far a name may
 * be from a suggestion. */
int ptg_edit_distance(const char *a, const char *b);
int ptg_suggest_limit(const char *name);

#endif /* PTC_PTG_INTERNAL_H */
