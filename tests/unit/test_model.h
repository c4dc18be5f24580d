/* test_model.h -- compiling a model of models/ in a unit test: read the
 * .ptg, apply "K=V,..." overrides, lower it, and (with a pipeline) run the
 * passes.  Shared by the tests that need whole models. */
#ifndef PTC_TEST_MODEL_H
#define PTC_TEST_MODEL_H

#include <stdlib.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"

/* The module of `path` with `sets`, after `pipeline` (NULL: none), or NULL
 * with the errors in ctx.  Caller owns the module. */
static inline ptc_module *test_compile_model(ptc_ctx *ctx, const char *path,
                                             const char *sets, const char *pipeline) {
  size_t len;
  char *text = ptc_read_file(ctx, path, &len);
  if (!text) return NULL;
  ptc_define *defs = NULL;
  int32_t ndefs = 0;
  ptc_module *m = NULL;
  if (ptc_defines_parse(ctx, sets, &defs, &ndefs) == 0)
    m = ptc_frontend_compile(ctx, path, text, len, defs, ndefs);
  free(defs);
  free(text);
  if (!m || !pipeline) return m;
  ptc_pipeline *p = ptc_pipeline_parse(ctx, pipeline);
  if (!p || ptc_pipeline_run(m, p, NULL) != 0) {
    ptc_pipeline_destroy(p);
    ptc_module_destroy(m);
    return NULL;
  }
  ptc_pipeline_destroy(p);
  return m;
}

#endif
