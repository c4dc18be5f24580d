/* test_rt_memplan.c -- the static memory plan (codegen/liveness.c): every
 * transient buffer of a tiny GPT-2, a tiny Llama and the MLP, compiled
 * through the frontend and the default pipeline, has an offset in one
 * arena, and no two buffers whose lifetimes meet share a byte -- for a
 * training run (in place, fused groups), a plain run and a loss-only run.
 * A plan made wrong on purpose must be caught. */
#include <stdlib.h>
#include <string.h>

#include "codegen/codegen.h"
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "test.h"
#include "test_model.h"


/* The last op a root's buffer is live at. */
static int32_t end_of(const ptc_liveness *l, int32_t v) {
  return l->last[v] == PTC_LIVE_END ? l->nops : l->last[v];
}

/* One function under one set of options: a clean plan, and one whose two
 * largest overlapping-in-time buffers are moved onto each other is not. */
static void check_func(const char *model, const ptc_func *f, bool in_place, bool loss_only,
                       bool groups) {
  ptc_liveness l;
  ptc_liveness_compute(&l, f, in_place, loss_only, groups);
  char why[256];
  int32_t bad = ptc_liveness_check_overlap(&l, f, why, sizeof why);
  CHECK_MSG(bad == 0, "%s @%s (in_place %d, loss_only %d, groups %d): %d violations: %s",
            model, f->name, in_place, loss_only, groups, bad, why);
  /* the arena holds every buffer at once at most, and the largest one */
  int64_t sum = 0, largest = 0;
  int32_t a = -1, b = -1;
  for (int32_t v = 0; v < f->nvalues; v++) {
    if (!ptc_liveness_allocates(&l, v) || l.last[v] == -1) continue;
    int64_t n = ptc_type_bytes(&f->values[v].type);
    sum += (n + 63) / 64 * 64;
    if (n > largest) largest = n;
    CHECK(l.offset[v] >= 0 && l.offset[v] % 64 == 0);
    /* two buffers alive together, both non-empty: a and b */
    if (n > 0 && a >= 0 && b < 0 && l.first[v] <= end_of(&l, a) && l.first[a] <= end_of(&l, v))
      b = v;
    if (n > 0 && a < 0) a = v;
  }
  for (int32_t i = 0; i < l.nops; i++) sum += (l.snapshot[i] + 63) / 64 * 64;
  CHECK_MSG(l.peak >= largest && l.peak <= sum, "%s @%s: arena %lld, largest %lld, sum %lld",
            model, f->name, (long long)l.peak, (long long)largest, (long long)sum);
  if (a >= 0 && b >= 0) {
    l.offset[b] = l.offset[a];
    CHECK_MSG(ptc_liveness_check_overlap(&l, f, why, sizeof why) > 0 && why[0],
              "%s @%s: values %d and %d share an offset unnoticed", model, f->name, a, b);
  }
  ptc_liveness_fini(&l);
}

static void check_model(const char *path, const char *sets) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = test_compile_model(ctx, path, sets, ptc_default_pipeline());
  CHECK_MSG(m, "%s did not compile", path);
  if (m) {
    CHECK(m->nfuncs > 0);
    for (int32_t i = 0; i < m->nfuncs; i++) {
      const ptc_func *f = m->funcs[i];
      check_func(path, f, true, false, true);
      check_func(path, f, false, false, false);
      check_func(path, f, false, true, false);
    }
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

int main(void) {
  check_model("models/gpt2.ptg", "layers=2,dim=32,heads=2,vocab=64,ctx=16,batch=2,seq=16");
  check_model("models/llama.ptg",
              "layers=2,dim=32,heads=4,kv_heads=2,ffn=64,vocab=64,ctx=16,batch=2,seq=16");
  check_model("models/mlp.ptg", "hidden=16,batch=4");
  return test_report("test_rt_memplan");
}
