/* dce.c -- dead-code elimination.
 *
 * One reverse sweep per function: an op is live when it has an effect (it
 * is not PTC_OPF_PURE, or it is a collective, a transfer or the terminator)
 * or when a live op uses one of its results.  Walking backwards sees every
 * use before the definition, so one sweep removes whole dead chains.
 */
#include "passes/passes.h"

#include <stdlib.h>

/* Ops that may be removed when nothing reads their results. */
static bool removable(const ptc_op *op) {
  uint32_t fl = ptc_opinfo_get(op->code)->flags;
  return (fl & PTC_OPF_PURE) &&
         !(fl & (PTC_OPF_SIDE_EFFECT | PTC_OPF_COLLECTIVE | PTC_OPF_TERMINATOR));
}

int32_t ptc_dce_func(ptc_func *f) {
  if (f->nops == 0) return 0;
  bool *used = ptc_xcalloc((size_t)(f->nvalues ? f->nvalues : 1), sizeof(bool));
  bool *keep = ptc_xcalloc((size_t)f->nops, sizeof(bool));
  int32_t removed = 0;
  for (int32_t i = f->nops - 1; i >= 0; i--) {
    const ptc_op *op = &f->ops[i];
    bool live = !removable(op);
    for (int32_t r = 0; r < op->nout && !live; r++) live = used[op->out[r]];
    keep[i] = live;
    if (!live) {
      removed++;
      continue;
    }
    for (int32_t k = 0; k < op->nin; k++) used[op->in[k]] = true;
  }
  if (removed) ptc_func_erase_ops(f, keep);
  free(keep);
  free(used);
  return removed;
}

static int dce_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  (void)o;
  for (int32_t i = 0; i < m->nfuncs; i++)
    if (ptc_dce_func(m->funcs[i]) > 0) *changed = true;
  return 0;
}

const ptc_pass_info ptc_pass_dce = {
    .name = "dce",
    .summary = "remove pure ops whose results are unused",
    .opts = NULL,
    .nopts = 0,
    .run = dce_run,
};
