/* ptdata.c -- turns text into an llm.c token file with a byte-level
 * tokenizer: every byte of the input is one token (ids 0..255), so any
 * model whose vocabulary has at least 256 entries can train on it.
 *
 *   ptdata TEXT... -o OUT.bin
 *
 * The files are concatenated in the order given.  Exit status: 0 success,
 * 1 an unreadable input or unwritable output, 2 a malformed command line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/ptrt.h"

enum { EXIT_USER = 1, EXIT_USAGE = 2 };

static void help(FILE *f) {
  fprintf(f, "usage: ptdata TEXT... -o OUT.bin\n\n"
             "Writes the bytes of the TEXT files, in order, as one llm.c token file\n"
             "(header: magic %d, version %d, token count; then one uint16 token per\n"
             "byte, ids 0..255) for 'ptrun PLAN --data OUT.bin'.  '-' reads standard\n"
             "input.\n", PTRT_TOKENS_MAGIC, PTRT_TOKENS_VERSION);
}

/* Appends the bytes of path (or stdin for "-") as tokens. */
static int read_into(ptc_ctx *ctx, const char *path, uint16_t **tok, int64_t *n, int64_t *cap) {
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) {
    ptrt_file_error(ctx, path, "cannot open: %s", strerror(errno));
    return -1;
  }
  unsigned char buf[65536];
  size_t got;
  while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
    if (*n + (int64_t)got > INT32_MAX) {
      ptrt_file_error(ctx, path, "the text passes %d bytes, the most one token file "
                      "holds; split it into several files (ptrun takes --data A,B)",
                      INT32_MAX);
      if (f != stdin) fclose(f);
      return -1;
    }
    if (*n + (int64_t)got > *cap) {
      *cap = (*cap ? *cap * 2 : 1 << 20) + (int64_t)got;
      *tok = ptc_xrealloc(*tok, (size_t)*cap * sizeof **tok);
    }
    for (size_t i = 0; i < got; i++) (*tok)[(*n)++] = buf[i];
  }
  int bad = ferror(f);
  if (f != stdin) fclose(f);
  if (bad) {
    ptrt_file_error(ctx, path, "cannot read");
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  const char *out = NULL;
  const char **in = ptc_xcalloc((size_t)argc + 1, sizeof *in);
  int nin = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
      help(stdout);
      free(in);
      return 0;
    } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
      if (i + 1 >= argc) {
        fprintf(stderr, "ptdata: error: %s needs a file name; see 'ptdata --help'\n", a);
        free(in);
        return EXIT_USAGE;
      }
      out = argv[++i];
    } else if (!strncmp(a, "-o", 2) && a[2]) {
      out = a + 2;
    } else if (a[0] == '-' && a[1]) {
      fprintf(stderr, "ptdata: error: unknown option '%s'; see 'ptdata --help'\n", a);
      free(in);
      return EXIT_USAGE;
    } else {
      in[nin++] = a;
    }
  }
  if (!nin || !out) {
    fprintf(stderr, "ptdata: error: %s; see 'ptdata --help'\n",
            !nin ? "no input text given" : "no output given (-o OUT.bin)");
    free(in);
    return EXIT_USAGE;
  }
  ptc_ctx *ctx = ptc_ctx_create();
  uint16_t *tok = NULL;
  int64_t n = 0, cap = 0;
  int status = 0;
  for (int i = 0; i < nin && !status; i++)
    if (read_into(ctx, in[i], &tok, &n, &cap) != 0) status = EXIT_USER;
  if (!status && n == 0) {
    ptrt_file_error(ctx, "ptdata", "the input holds no bytes: nothing to tokenize");
    status = EXIT_USER;
  }
  if (!status && ptrt_tokens_write(ctx, out, tok, n) != 0) status = EXIT_USER;
  if (!status) printf("ptdata: wrote %lld tokens to %s\n", (long long)n, out);
  free(tok);
  free(in);
  ptc_ctx_destroy(ctx);
  return status;
}
