/* test_files.h -- a scratch directory for tests that write files: a
 * fresh mkdtemp directory under $TMPDIR, names inside it, raw writes, and
 * removal at the end. */
#ifndef PTC_TEST_FILES_H
#define PTC_TEST_FILES_H

#include <stdio.h>
#include <stdlib.h>

#include "ir/ir.h"

static char root[256];

/* Creates the scratch directory; `tag` names it. */
static inline void scratch_init(const char *tag) {
  const char *tmp = getenv("TMPDIR");
  snprintf(root, sizeof root, "%s/%s.XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
  PTC_ASSERT(mkdtemp(root));
}

static inline void scratch_fini(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
}

/* root/name, from a ring of 8 buffers (valid for the next 7 calls). */
static inline const char *file(const char *name) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 512, "%s/%s", root, name);
  return p;
}

static inline void write_raw(const char *name, const void *data, size_t n) {
  FILE *f = fopen(file(name), "wb");
  PTC_ASSERT(f);
  if (n) PTC_ASSERT(fwrite(data, 1, n, f) == n);
  fclose(f);
}

#endif
