/* frontend.h -- the .ptg model language: source text in, ptir module out.
 *
 * A .ptg file declares constants (overridable from the command line),
 * inputs, parameters with their init, and expressions over tensors, with
 * `repeat` for layers.  The frontend lowers it to one function, @forward,
 * whose arguments are the inputs and whose single result is `loss`.
 * See docs/ptg.md for the language.
 *
 * Every diagnostic carries file:line:col, the source line and a caret.
 * Overrides that came from the command line are reported at
 * "<command line>:1:col" against the text of the override itself.
 */
#ifndef PTC_FRONTEND_H
#define PTC_FRONTEND_H

#include "ir/ir.h"

/* One `--set` / `--batch` / `--seq` override, K=V.  `text` is the whole
 * option value as the user typed it ("layers=2,dim=64") and off/len locate
 * this override inside it, for diagnostics. */
typedef struct ptc_define {
  const char *name;  /* constant name */
  const char *value; /* its value as text: an integer or a number */
  const char *text;  /* the option value it came from, may be NULL */
  int32_t off;       /* byte offset of name within text */
} ptc_define;

/* Parses "K=V[,K=V...]" as given to --set into defines appended to *out
 * (heap array, grown with ptc_xrealloc; caller frees the array; strings
 * point into `text`, which must outlive them, or into copies in ctx).
 * Reports a malformed list at "<command line>" and returns -1. */
int ptc_defines_parse(ptc_ctx *ctx, const char *text, ptc_define **out,
                      int32_t *n);

/* Compiles .ptg source to a module the caller owns, or returns NULL after
 * reporting the first error.  `name` is the file name used in locations.
 * Every define must name a constant of the file (an unknown one is an
 * error listing the constants there are).  The text need not be
 * NUL-terminated. */
ptc_module *ptc_frontend_compile(ptc_ctx *ctx, const char *name,
                                 const char *text, size_t len,
                                 const ptc_define *defines, int32_t ndefines);

/* Bounds that keep any input fast: an absurd size or a huge unroll gets an
 * error naming the limit instead of eating the machine. */
typedef struct ptc_frontend_limits {
  int64_t max_ops;    /* ops in @forward (default 1,000,000) */
  int64_t max_params; /* parameter tensors (default 1,000,000) */
  int64_t max_steps;  /* statements run + repeat iterations (default 10,000,000) */
  int64_t max_repeat; /* iterations of one repeat (default 1,000,000) */
} ptc_frontend_limits;

/* The defaults above. */
void ptc_frontend_default_limits(ptc_frontend_limits *lim);

/* ptc_frontend_compile with explicit limits (NULL: the defaults).  Fuzzers
 * use small ones. */
ptc_module *ptc_frontend_compile_limited(ptc_ctx *ctx, const char *name,
                                         const char *text, size_t len,
                                         const ptc_define *defines,
                                         int32_t ndefines,
                                         const ptc_frontend_limits *lim);

#endif /* PTC_FRONTEND_H */
