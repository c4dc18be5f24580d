/* test_rt_plan.c -- the plan directory: what codegen/plan.c writes,
 * runtime/plan.c reads back, and every damaged plan is refused with the
 * file and the problem named. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codegen/codegen.h"
#include "codegen/memplan.h"
#include "runtime/ptrt.h"
#include "test.h"

static const char *tiny_ir =
    "module @tiny {\n"
    "  param @w : f32[4,3] init normal(0.02)\n"
    "  param @b : f32[3] init zeros\n"
    "  state @w.m : f32[4,3] init zeros\n"
    "  func @forward(%x: f32[2,4], %y: i32[2]) -> f32[] {\n"
    "    %0 = matmul %x, @w : f32[2,3]\n"
    "    %1 = add %0, @b : f32[2,3]\n"
    "    %2 = reshape %1 : f32[6]\n"
    "    %3 = reshape %2 : f32[2,3]\n"
    "    %l = cross_entropy %3, %y : f32[]\n"
    "    return %l\n"
    "  }\n"
    "}\n";

static char root[256];

static char *path(const char *a, const char *b) {
  static char buf[4][512];
  static int k;
  char *p = buf[k++ % 4];
  snprintf(p, 512, "%s/%s%s%s", root, a, b ? "/" : "", b ? b : "");
  return p;
}

static ptc_module *tiny(ptc_ctx *ctx) {
  ptc_module *m = ptc_parse_module(ctx, "tiny.ptir", tiny_ir, strlen(tiny_ir));
  PTC_ASSERT(m && ptc_verify_module(m) == 0);
  return m;
}

static void write_plan(const char *name) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_module *m = tiny(ctx);
  CHECK(ptc_plan_write(m, path(name, NULL)) == 0);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* Opens plan `name`; returns the diagnostics (static) and whether it opened. */
static const char *open_plan(const char *name, bool *ok) {
  static char diag[4096];
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_plan *p = ptrt_plan_open(ctx, path(name, NULL));
  *ok = p != NULL;
  snprintf(diag, sizeof diag, "%s", ptc_ctx_diag_text(ctx));
  ptrt_plan_close(p);
  ptc_ctx_destroy(ctx);
  return diag;
}

static void expect_refusal(const char *name, const char *what) {
  bool ok;
  const char *d = open_plan(name, &ok);
  CHECK_MSG(!ok && strstr(d, what) && strstr(d, "-o "), "plan %s: want '%s', got:\n%s", name,
            what, d);
}

static void replace_in_file(const char *file, const char *from, const char *to) {
  FILE *f = fopen(file, "rb");
  PTC_ASSERT(f);
  char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  char *at = strstr(buf, from);
  PTC_ASSERT(at);
  char out[8192];
  snprintf(out, sizeof out, "%.*s%s%s", (int)(at - buf), buf, to, at + strlen(from));
  f = fopen(file, "wb");
  fputs(out, f);
  fclose(f);
}

static void test_sha256(void) {
  char hex[65];
  ptc_sha256_hex("abc", 3, hex);
  CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  ptc_sha256_hex("", 0, hex);
  CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_roundtrip(void) {
  write_plan("good");
  bool ok;
  const char *d = open_plan("good", &ok);
  CHECK_MSG(ok, "%s", d);
  struct stat st;
  CHECK(stat(path("good", "report.txt"), &st) == 0 && st.st_size > 100);
  CHECK((st.st_mode & 0444) == 0444); /* readable like any file ptc writes */

  ptc_ctx *ctx = ptc_ctx_create();
  ptrt_plan *p = ptrt_plan_open(ctx, path("good", NULL));
  CHECK(p && !p->training && strcmp(p->entry->name, "forward") == 0 &&
        strcmp(p->model, "tiny") == 0 && p->mod->nparams == 3 && !p->mod->params[2].trainable);
  /* the report states the memory plan, whose arena is what the executor
   * measures */
  ptc_buf rep;
  ptc_buf_init(&rep);
  ptc_plan_report(&rep, p->mod, p->entry);
  CHECK_MSG(strstr(rep.data, "memory per rank") && strstr(rep.data, "optimizer state"), "%s",
            rep.data);
  ptc_memplan mp;
  CHECK(ptc_memplan_compute(p->mod, &mp) == 0 && mp.ngroups == 1 &&
        mp.groups[0].arena == ptc_plan_transient_peak(p->entry));
  ptrt_vars *v = ptrt_vars_create(ctx, p->mod, NULL);
  ptrt_env env = {ctx, NULL, ptrt_comm_single(), NULL};
  ptrt_program_opts po = {.in_place = true};
  ptrt_program *prog = ptrt_program_create(&env, p->entry, v, &po);
  CHECK(prog && ptrt_program_planned_peak(prog) == ptc_plan_transient_peak(p->entry));
  /* 24 (matmul) at offset 0 and 24 (add; the reshapes alias it) at the
   * next 64-byte boundary, live at once: an 88-byte arena */
  CHECK_MSG(ptc_plan_transient_peak(p->entry) == 88, "peak %lld",
            (long long)ptc_plan_transient_peak(p->entry));
  ptrt_program_destroy(prog);
  ptrt_vars_destroy(v);
  ptc_buf_fini(&rep);
  ptrt_plan_close(p);
  ptc_ctx_destroy(ctx);
}

/* A plan for a mesh: the module as written stays (global types), and the
 * local view, what runs, holds one device's pieces; on one device the
 * local view is the module itself. */
static void test_local_view(void) {
  static const char *text =
      "module @split mesh<dp=2, tp=2> {\n"
      "  param @w : f32[4,6] shard<_,tp> init normal(0.02)\n"
      "  func @forward(%x: f32[8,4] shard<dp,_>) -> f32[8,6] shard<dp,tp> {\n"
      "    %0 = matmul %x, @w : f32[8,6] shard<dp,tp>\n"
      "    return %0\n"
      "  }\n"
      "}\n";
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_module *m = ptc_parse_module(ctx, "split.ptir", text, strlen(text));
  PTC_ASSERT(m);
  CHECK(ptc_plan_write(m, path("split", NULL)) == 0);
  ptc_module_destroy(m);
  ptrt_plan *p = ptrt_plan_open(ctx, path("split", NULL));
  PTC_ASSERT(p);
  CHECK(p->local != p->mod && p->local_entry && p->local_entry->mod == p->local &&
        p->local_forward == p->local_entry && p->entry->mod == p->mod);
  CHECK(p->mod->params[0].type.dims[1] == 6 && p->local->params[0].type.dims[1] == 3);
  const ptc_value *gx = &p->entry->values[p->entry->args[0]];
  const ptc_value *lx = &p->local_entry->values[p->local_entry->args[0]];
  CHECK(gx->type.dims[0] == 8 && lx->type.dims[0] == 4 && lx->shard.present);
  ptrt_plan_close(p);
  p = ptrt_plan_open(ctx, path("good", NULL));
  PTC_ASSERT(p);
  CHECK(p->local == p->mod && p->local_entry == p->entry && p->local_forward == p->forward);
  ptrt_plan_close(p);
  ptc_ctx_destroy(ctx);
}

static void test_refusals(void) {
  expect_refusal("nothing-here", "no such plan");

  write_plan("no-manifest");
  remove(path("no-manifest", "manifest.json"));
  expect_refusal("no-manifest", "manifest.json: error: missing");

  write_plan("no-ir");
  remove(path("no-ir", "step.ptir"));
  expect_refusal("no-ir", "step.ptir: error: missing");

  write_plan("truncated");
  PTC_ASSERT(truncate(path("truncated", "step.ptir"), 100) == 0);
  expect_refusal("truncated", "the file is truncated");

  write_plan("corrupt");
  replace_in_file(path("corrupt", "step.ptir"), "normal(0.02)", "normal(0.03)");
  expect_refusal("corrupt", "SHA-256");

  write_plan("version");
  replace_in_file(path("version", "manifest.json"), "\"version\": 1", "\"version\": 2");
  expect_refusal("version", "plan version 2, but this ptrun");

  write_plan("badjson");
  replace_in_file(path("badjson", "manifest.json"), "\"files\"", "files");
  expect_refusal("badjson", "manifest.json:");

  write_plan("notplan");
  replace_in_file(path("notplan", "manifest.json"), "ptc-plan", "zip");
  bool ok;
  const char *d = open_plan("notplan", &ok);
  CHECK_MSG(!ok && strstr(d, "format 'zip' is not 'ptc-plan'"), "%s", d);

  write_plan("escape");
  replace_in_file(path("escape", "manifest.json"), "\"report.txt\"", "\"../report.txt\"");
  expect_refusal("escape", "not a plain file name");

  write_plan("target");
  replace_in_file(path("target", "manifest.json"), "\"cpu\"", "\"cuda\"");
  d = open_plan("target", &ok);
  CHECK_MSG(!ok && strstr(d, "targets 'cuda'"), "%s", d);
}

static void test_replace(void) {
  /* an existing plan is replaced whole; a non-plan directory is refused */
  write_plan("again");
  write_plan("again");
  bool ok;
  open_plan("again", &ok);
  CHECK(ok);
  PTC_ASSERT(mkdir(path("other", NULL), 0777) == 0);
  FILE *f = fopen(path("other", "keep.txt"), "w");
  fputs("mine\n", f);
  fclose(f);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = tiny(ctx);
  CHECK(ptc_plan_write(m, path("other", NULL)) == -1);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "is not a plan"), "%s", ptc_ctx_diag_text(ctx));
  struct stat st;
  CHECK(stat(path("other", "keep.txt"), &st) == 0);
  /* a module with nothing to run has no plan */
  ptc_module *empty = ptc_module_create(ctx, "empty");
  CHECK(ptc_plan_write(empty, path("empty", NULL)) == -1);
  CHECK(stat(path("empty", NULL), &st) != 0);
  ptc_module_destroy(empty);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

/* A pipeline-parallel plan (entry "pipeline"): its schedule from the module
 * attributes, one function per chunk and stage, the refusals of a broken
 * order, and programs whose stash buffers belong to the caller. */
static const char *pipe_ir =
    "module @pipe mesh<pp=2> attributes {pipeline.microbatches = 2, "
    "pipeline.order.0 = \"F0.0 F0.1 B0.0 B0.1\", pipeline.order.1 = \"F1.0 B1.0 F1.1 B1.1\", "
    "pipeline.schedule = \"1f1b\", pipeline.stages = 2, pipeline.virtual = 1} {\n"
    "  param @w : f32[4] init normal(0.02)\n"
    "  state @w.grad_acc : f32[4] init zeros\n"
    "  func @fwd.0(%x: f32[2,4]) -> (f32[2,4], f32[2,4]) {\n"
    "    %0 = mul %x, @w : f32[2,4]\n"
    "    send %0 {peer = 1, tag = 0}\n"
    "    return %x, %0\n"
    "  }\n"
    "  func @fwd.1() -> (f32[2,4]) {\n"
    "    %0 = recv {peer = 0, tag = 0} : f32[2,4]\n"
    "    return %0\n"
    "  }\n"
    "  func @bwd.0(%stash.0: f32[2,4], %stash.1: f32[2,4]) {\n"
    "    %0 = recv {peer = 1, tag = 1} : f32[2,4]\n"
    "    %1 = mul %0, %stash.0 : f32[2,4]\n"
    "    %2 = reduce_sum %1 {axes = [0]} : f32[4]\n"
    "    %3 = add @w.grad_acc, %2 : f32[4]\n"
    "    assign @w.grad_acc, %3\n"
    "    return\n"
    "  }\n"
    "  func @bwd.1(%stash.0: f32[2,4]) {\n"
    "    send %stash.0 {peer = 0, tag = 1}\n"
    "    return\n"
    "  }\n"
    "  func @step.0(%lr: f32[], %step: f32[]) -> (f32[]) {\n"
    "    %0 = reduce_sum @w.grad_acc {axes = [0]} : f32[]\n"
    "    return %0\n"
    "  }\n"
    "  func @step.1(%lr: f32[], %step: f32[]) -> (f32[]) {\n"
    "    %0 = constant {value = 0.0} : f32[]\n"
    "    return %0\n"
    "  }\n"
    "}\n";

static void write_pipe(const char *name, const char *from, const char *to) {
  char text[4096];
  const char *at = from ? strstr(pipe_ir, from) : NULL;
  PTC_ASSERT(!from || at);
  if (at)
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - pipe_ir), pipe_ir, to, at + strlen(from));
  else
    snprintf(text, sizeof text, "%s", pipe_ir);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_module *m = ptc_parse_module(ctx, "pipe.ptir", text, strlen(text));
  PTC_ASSERT(m && ptc_verify_module(m) == 0);
  CHECK(ptc_plan_write(m, path(name, NULL)) == 0);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

static void test_pipeline(void) {
  write_pipe("pipe", NULL, NULL);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_plan *p = ptrt_plan_open(ctx, path("pipe", NULL));
  CHECK_MSG(p, "%s", ptc_ctx_diag_text(ctx));
  if (!p) return;
  const ptrt_pipe *pp = p->pipe;
  CHECK(pp && p->training && !p->entry && !p->local_entry && pp->stages == 2 &&
        pp->microbatches == 2 && pp->virtual_stages == 1 && pp->chunks == 2 &&
        strcmp(pp->schedule, "1f1b") == 0 && pp->pp_axis == 0);
  CHECK(pp->norder[1] == 4 && !pp->order[1][0].backward && pp->order[1][1].backward &&
        pp->order[1][1].chunk == 1 && pp->order[1][1].mb == 0 && pp->order[1][2].mb == 1);
  ptc_func *g = NULL, *f = ptrt_plan_func(p, "fwd.0", &g);
  CHECK(f && g && f->mod == p->local && g->mod == p->mod && !ptrt_plan_func(p, "fwd.2", NULL));
  /* a forward's results written straight into the caller's stash, which
   * the backward then reads */
  ptrt_vars *v = ptrt_vars_create(ctx, p->local, NULL);
  ptrt_vars_init(v, 1, NULL);
  /* stage 1 of the mesh: @step.1 calls no communicator */
  ptrt_comm_state st;
  memset(&st, 0, sizeof st);
  ptrt_comm stage1 = {.name = "fake", .rank = 1, .size = 2, .mesh = p->mod->mesh,
                      .coord = {1}, .state = &st};
  ptrt_env env = {ctx, NULL, &stage1, NULL};
  ptc_func *step = ptrt_plan_func(p, "step.1", NULL);
  ptrt_program *prog = ptrt_program_create(&env, step, v, NULL);
  CHECK(prog && ptrt_program_result_bytes(prog, 0) == 4);
  if (prog) {
    float out[16] __attribute__((aligned(64))) = {1};
    int64_t fixed = ptrt_program_mem(prog).fixed;
    ptrt_program_bind_result(prog, 0, out);
    CHECK(ptrt_program_mem(prog).fixed == fixed - 4 && ptrt_program_result(prog, 0) == out);
    CHECK(ptrt_program_run(prog, true) == 0 && out[0] == 0.0f);
    ptrt_program_destroy(prog);
  }
  ptrt_vars_destroy(v);
  ptrt_plan_close(p);
  ptc_ctx_destroy(ctx);

  write_pipe("pipe-order", "F0.0 F0.1 B0.0 B0.1", "B0.0 F0.0 F0.1 B0.1");
  expect_refusal("pipe-order", "pipeline.order.0 of step.ptir runs a backward before its "
                               "forward (B0.0)");
  write_pipe("pipe-chunk", "F1.0 B1.0 F1.1 B1.1", "F0.0 B1.0 F1.1 B1.1");
  expect_refusal("pipe-chunk", "names a chunk of another stage (F0.0)");
  write_pipe("pipe-short", "F1.0 B1.0 F1.1 B1.1", "F1.0 B1.0 F1.1");
  expect_refusal("pipe-short", "leaves out a unit (B1.1)");
  write_pipe("pipe-stages", "pipeline.stages = 2", "pipeline.stages = 3");
  expect_refusal("pipe-stages", "is a pipeline of 3 stages, but its mesh has another pp size");
}

int main(void) {
  const char *tmp = getenv("TMPDIR");
  snprintf(root, sizeof root, "%s/test_rt_plan.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  PTC_ASSERT(mkdtemp(root));
  test_sha256();
  test_roundtrip();
  test_local_view();
  test_refusals();
  test_replace();
  test_pipeline();
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
  return test_report("test_rt_plan");
}
