/* test.h -- the few macros the C unit tests share.  A failed check prints
 * file:line and the expression and the test carries on; test_report()
 * returns the exit status. */
#ifndef PTC_TEST_H
#define PTC_TEST_H

#include <stdio.h>
#include <string.h>

static int test_failures, test_checks;

#define CHECK_MSG(cond, ...)                                              \
  do {                                                                    \
    test_checks++;                                                        \
    if (!(cond)) {                                                        \
      test_failures++;                                                    \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                       \
      fputc('\n', stderr);                                                \
    }                                                                     \
  } while (0)
#define CHECK(cond) CHECK_MSG(cond, "%s", "")
#define CHECK_STR(got, want)                                              \
  CHECK_MSG(strcmp((got), (want)) == 0, "got\n%s\nwant\n%s", (got), (want))

static inline int test_report(const char *name) {
  printf("%s: %d checks, %d failed\n", name, test_checks, test_failures);
  return test_failures ? 1 : 0;
}

#endif
