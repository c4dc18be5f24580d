/* fuzz_ptg.c -- libFuzzer target for the .ptg frontend.
 *
 * Any input must either compile or be refused with a diagnostic: no crash,
 * no sanitizer report, no hang, no leak.  What compiles must print as ptir
 * that parses back and prints identically, so the frontend can never build
 * a module the textual form cannot carry.
 *
 * The limits are far below the defaults so that no input can ask for a long
 * unroll (the run uses -timeout=10); the input's first line may also carry
 * overrides as `#set K=V,...`, which puts ptc_defines_parse and the
 * override path under the fuzzer as well.
 */
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Overrides from a first line "#set K=V,...", as --set would give them. */
static char *first_line_set(const uint8_t *data, size_t size) {
  if (size < 5 || memcmp(data, "#set ", 5) != 0) return NULL;
  const uint8_t *nl = memchr(data, '\n', size);
  size_t n = (nl ? (size_t)(nl - data) : size) - 5;
  if (memchr(data + 5, 0, n)) return NULL;
  char *s = malloc(n + 1);
  memcpy(s, data + 5, n);
  s[n] = 0;
  return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);

  ptc_define *defs = NULL;
  int32_t ndefs = 0;
  char *set = first_line_set(data, size);
  if (set && ptc_defines_parse(ctx, set, &defs, &ndefs) < 0) {
    free(defs);
    defs = NULL;
    ndefs = 0;
    ptc_ctx_reset_errors(ctx); /* compile the model without them */
  }

  ptc_frontend_limits lim;
  ptc_frontend_default_limits(&lim);
  lim.max_ops = 20000;
  lim.max_params = 2000;
  lim.max_steps = 100000;
  lim.max_repeat = 10000;

  ptc_module *m = ptc_frontend_compile_limited(ctx, "fuzz.ptg", (const char *)data,
                                               size, defs, ndefs, &lim);
  if (m) {
    if (ptc_ctx_error_count(ctx) != 0) abort(); /* success must be clean */
    ptc_buf a, b;
    ptc_buf_init(&a);
    ptc_buf_init(&b);
    ptc_print_module(&a, m);
    ptc_module *back = ptc_parse_module(ctx, "fuzz.ptir", a.data, a.len);
    if (!back) {
      fprintf(stderr, "printed module does not parse:\n%s\n%s", a.data,
              ptc_ctx_diag_text(ctx));
      abort();
    }
    ptc_print_module(&b, back);
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) {
      fprintf(stderr, "reprint differs:\n%s\n-----\n%s", a.data, b.data);
      abort();
    }
    ptc_module_destroy(back);
    ptc_module_destroy(m);
    ptc_buf_fini(&a);
    ptc_buf_fini(&b);
  } else if (ptc_ctx_error_count(ctx) == 0) {
    fprintf(stderr, "compile failed without a diagnostic\n");
    abort();
  }
  free(defs);
  free(set);
  ptc_ctx_destroy(ctx);
  return 0;
}
