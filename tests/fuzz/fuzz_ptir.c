/* fuzz_ptir.c -- libFuzzer target for the .ptir parser and printer.
 *
 * Properties checked on every input:
 *  - the parser returns a module with no diagnostics, or NULL with exactly
 *    one error (never more, never none);
 *  - a module that parses prints to text that parses again and prints the
 *    same (print(parse(print(m))) == print(m));
 *  - no crash, leak, hang or sanitizer report anywhere on the way.
 * Diagnostics are captured, not printed, so the fuzzer's output stays
 * readable. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static _Noreturn void fail(const char *what, const ptc_ctx *ctx,
                           const char *text) {
  fprintf(stderr, "fuzz_ptir: %s\n--- diagnostics ---\n%s\n--- text ---\n%s\n",
          what, ptc_ctx_diag_text(ctx), text ? text : "(none)");
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_parse_module(ctx, "fuzz.ptir", (const char *)data, size);
  if (!m) {
    if (ptc_ctx_error_count(ctx) != 1)
      fail("a rejected input must give exactly one error", ctx, NULL);
    ptc_ctx_destroy(ctx);
    return 0;
  }
  if (ptc_ctx_error_count(ctx) != 0)
    fail("an accepted input reported errors", ctx, NULL);

  ptc_buf first, second;
  ptc_buf_init(&first);
  ptc_buf_init(&second);
  ptc_print_module(&first, m);
  ptc_module *again = ptc_parse_module(ctx, "printed.ptir", first.data, first.len);
  if (!again) fail("the printed module does not parse", ctx, first.data);
  ptc_print_module(&second, again);
  if (first.len != second.len || memcmp(first.data, second.data, first.len) != 0) {
    fprintf(stderr, "--- second print ---\n%s\n", second.data);
    fail("print(parse(print(m))) differs from print(m)", ctx, first.data);
  }

  /* The Graphviz emitter reads the same module: keep it crash-free too. */
  ptc_buf dot;
  ptc_buf_init(&dot);
  ptc_print_dot(&dot, m);
  ptc_buf_fini(&dot);

  ptc_buf_fini(&first);
  ptc_buf_fini(&second);
  ptc_module_destroy(again);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
  return 0;
}
