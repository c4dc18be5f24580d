/* test_rt_memplan.c -- the static memory plan (codegen/liveness.c): every
 * transient buffer of a tiny GPT-2, a tiny Llama and the MLP, compiled
 * through the frontend and the default pipeline, has an offset in one
 * arena, and no two buffers whose lifetimes meet share a byte -- for a
 * training run (in place, fused groups), a plain run and a loss-only run.
 * A plan made wrong on purpose must be caught.
 *
 * The f32 scratch of ops with bf16/f16 values (the workspace) is planned
 * too: the models (all f32) need none, and a function with 16-bit values
 * gets, per op that computes, 4 bytes per element of each 16-bit operand
 * and result (64-aligned), one region of the largest after the buffers. */
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
  /* the workspace: each op's figure, the largest, after the buffers */
  int64_t ws = 0;
  for (int32_t i = 0; i < l.nops; i++) {
    bool alone = l.run[i] && !(groups && ptc_op_group(&f->ops[i]) >= 0);
    CHECK_MSG(l.workspace[i] == (alone ? ptc_op_workspace(f, &f->ops[i]) : 0),
              "%s @%s op %d: workspace %lld", model, f->name, i, (long long)l.workspace[i]);
    if (l.workspace[i] > ws) ws = l.workspace[i];
  }
  CHECK_MSG(l.workspace_peak == ws && l.total == l.workspace_offset + ws &&
                (ws == 0 ? l.workspace_offset == l.peak
                         : l.workspace_offset >= l.peak && l.workspace_offset % 64 == 0),
            "%s @%s: workspace %lld at %lld, arena %lld, total %lld", model, f->name,
            (long long)l.workspace_peak, (long long)l.workspace_offset, (long long)l.peak,
            (long long)l.total);
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

/* A step with bf16 activations and an f32 master weight: workspace where
 * 16-bit values are computed with, none for the ops that move bytes. */
static void check_half(void) {
  static const char *text =
      "module @m {\n  param @w : f32[16,8] init normal(0.02)\n"
      "  state @w.bf16 : bf16[16,8] init copy(@w)\n  param @g : f32[8] init ones\n"
      "  func @step(%x: f32[4,16], %t: i32[4]) -> f32[] {\n"
      "    %xb = cast %x {to = bf16} : bf16[4,16]\n"
      "    %h = matmul %xb, @w.bf16 : bf16[4,8]\n"
      "    %a = gelu %h : bf16[4,8]\n"
      "    %r = reshape %a : bf16[32]\n"
      "    %s = slice %r {axis = 0, end = 32, start = 0} : bf16[32]\n"
      "    %b = reshape %s : bf16[4,8]\n"
      "    %loss = cross_entropy %b, %t {classes = 8} : f32[]\n"
      "    return %loss\n  }\n}\n";
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_parse_module(ctx, "half.ptir", text, strlen(text));
  CHECK_MSG(m && ptc_verify_module(m) == 0, "%s", ptc_ctx_diag_text(ctx));
  if (m) {
    ptc_func *f = m->funcs[0];
    check_func("half", f, true, false, true);
    check_func("half", f, false, true, false);
    ptc_liveness l;
    ptc_liveness_compute(&l, f, true, false, true);
    /* matmul: x 4x16, w 16x8, h 4x8 (256 + 512 + 128); gelu 128 + 128;
     * cross_entropy: logits 128 (its loss and targets are not 16-bit) */
    int64_t want[] = {0, 896, 256, 0, 0, 0, 128, 0};
    for (int32_t i = 0; i < f->nops && i < 8; i++)
      CHECK_MSG(l.workspace[i] == want[i], "op %d: workspace %lld, want %lld", i,
                (long long)l.workspace[i], (long long)want[i]);
    CHECK(l.workspace_peak == 896 && ptc_plan_transient_peak(f) == l.total &&
          l.total == (l.peak + 63) / 64 * 64 + 896);
    ptc_liveness_fini(&l);
    ptc_module_destroy(m);
  }
  ptc_ctx_destroy(ctx);
}

int main(void) {
  check_half();
  check_model("models/gpt2.ptg", "layers=2,dim=32,heads=2,vocab=64,ctx=16,batch=2,seq=16");
  check_model("models/llama.ptg",
              "layers=2,dim=32,heads=4,kv_heads=2,ffn=64,vocab=64,ctx=16,batch=2,seq=16");
  check_model("models/mlp.ptg", "hidden=16,batch=4");
  return test_report("test_rt_memplan");
}
