/* plan.c -- writes a plan directory: manifest.json, step.ptir, report.txt
 * and, when the module has fused groups, kernels.so (docs/plan.md).
 *
 * The directory is built under a temporary name next to the destination
 * and renamed into place, so a failed write leaves nothing half-made and a
 * reader never sees a plan whose manifest and files disagree.  Checksums
 * are SHA-256 (OpenSSL's libcrypto): the plan holds code ptrun will run,
 * so it gets the standard digest that anyone can check with `sha256sum`,
 * and plan files are small enough that a faster non-cryptographic hash
 * would save nothing that matters.
 */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codegen/codegen.h"
#include "codegen/cuda.h"
#include "codegen/memplan.h"
#include "passes/passes.h"
#include "ptc_config.h"


/* A pipelined plan: per stage, its chunks, memory, FLOPs, the bubble and the
 * activations in flight, from the schedule's timing model. */
static void pipeline_report(ptc_buf *b, ptc_module *m) {
  ptc_pipe_sim sim;
  if (ptc_pipeline_simulate(m, &sim, false) != 0 || sim.stages == 0) return;
  const ptc_attr *mb = ptc_module_get_attr(m, "pipeline.microbatches");
  const ptc_attr *sc = ptc_module_get_attr(m, "pipeline.schedule");
  const ptc_attr *vs = ptc_module_get_attr(m, "pipeline.virtual");
  ptc_buf_printf(b, "\npipeline: %d stages, %lld microbatches per step, schedule %s, %lld "
                 "chunk%s per stage\n", sim.stages, mb ? (long long)mb->u.i : 1LL,
                 sc ? sc->u.s : "?", vs ? (long long)vs->u.i : 1LL,
                 vs && vs->u.i > 1 ? "s" : "");
  double busy = 0;
  for (int32_t s = 0; s < sim.stages; s++) busy += sim.busy[s];
  ptc_buf_printf(b, "  bubble: %.1f%% (idle over ideal time: makespan %.4g vs %.4g FLOP of "
                 "work per stage, timing model: a unit takes its FLOPs)\n",
                 100.0 * ptc_pipe_bubble(&sim), sim.makespan, busy / sim.stages);
  ptc_module *lm = ptc_module_get_attr(m, "partitioned") ? ptc_module_localize(m) : NULL;
  const ptc_module *vm = lm ? lm : m;
  for (int32_t s = 0; s < sim.stages; s++) {
    int64_t pcount, pbytes, sbytes;
    ptc_pipe_stage_vars(vm, s, sim.stages, &pcount, &pbytes, &sbytes);
    ptc_buf_printf(b, "  stage %d: busy %.4g FLOP/step, idle %.1f%%, parameters ", s,
                   sim.busy[s], sim.makespan > 0 ? 100.0 * (1 - sim.busy[s] / sim.makespan) : 0.0);
    ptc_buf_put_bytes(b, (double)pbytes);
    ptc_buf_puts(b, ", state ");
    ptc_buf_put_bytes(b, (double)sbytes);
    ptc_buf_puts(b, ", activations in flight at most ");
    ptc_buf_put_bytes(b, (double)sim.inflight_bytes[s]);
    ptc_buf_puts(b, " (per rank)\n");
  }
  if (lm) ptc_module_destroy(lm);
}

/* ---- the report ------------------------------------------------------- */

/* Bytes each rank sends per step, per mesh axis (ptc_comm_volume). */
static void comm_rows(ptc_buf *b, const ptc_func *f) {
  const ptc_mesh *mesh = &f->mod->mesh;
  double sent[PTC_MAX_MESH_AXES];
  int64_t calls[PTC_MAX_MESH_AXES];
  ptc_comm_volume(f, sent, calls);
  ptc_buf_puts(b, "\ncommunication per step, each rank (ring model: all_reduce 2(n-1)/n, "
               "all_gather and reduce_scatter (n-1)/n of the whole buffer):\n");
  for (int a = 0; a < mesh->naxes; a++) {
    ptc_buf_printf(b, "  %-4s %16.0f bytes  (", mesh->axes[a].name, sent[a]);
    ptc_buf_put_bytes(b, sent[a]);
    ptc_buf_printf(b, ")  in %lld collectives\n", (long long)calls[a]);
  }
}

static bool partitioned(const ptc_module *m) {
  const ptc_attr *a = ptc_module_get_attr(m, "partitioned");
  return a && a->kind == PTC_ATTR_BOOL && a->u.b && ptc_mesh_size(&m->mesh) > 1;
}

static void plan_report(ptc_buf *b, const ptc_module *m, const ptc_func *f, bool local,
                        const ptc_module *gm);

void ptc_plan_report(ptc_buf *b, const ptc_module *m, const ptc_func *f) {
  if (!partitioned(m)) {
    plan_report(b, m, f, false, m);
    return;
  }
  /* sizes and FLOPs of one rank: the module as each device holds it */
  ptc_module *lm = ptc_module_localize(m);
  const ptc_func *lf = ptc_module_find_func(lm, f->name);
  plan_report(b, lm, lf, true, m);
  comm_rows(b, f);
  ptc_module_destroy(lm);
}

static void plan_report(ptc_buf *b, const ptc_module *m, const ptc_func *f, bool local,
                        const ptc_module *gm) {
  ptc_buf_printf(b, "plan of @%s, written by ptc %s for target cpu\n", m->name,
                 PTC_VERSION_STRING);
  ptc_buf_puts(b, "mesh: ");
  if (m->mesh.naxes) {
    ptc_mesh_print(b, &m->mesh);
    ptc_buf_printf(b, " (%lld ranks)\n", (long long)ptc_mesh_size(&m->mesh));
  } else {
    ptc_buf_puts(b, "none (1 rank)\n");
  }
  bool training = strcmp(f->name, "step") == 0;
  ptc_buf_printf(b, "entry: @%s (%s)\n", f->name,
                 training ? "a training step" : "evaluation only: no @step");
  ptc_buf_puts(b, "\narguments:\n");
  for (int32_t i = 0; i < f->nargs; i++) {
    const ptc_value *v = &f->values[f->args[i]];
    ptc_buf_printf(b, "  %%%-18s ", v->name ? v->name : "?");
    ptc_type_print(b, &v->type);
    ptc_buf_puts(b, "\n");
  }
  ptc_buf_puts(b, "results:");
  for (int32_t i = 0; i < f->nresults; i++) {
    ptc_buf_puts(b, i ? ", " : " ");
    ptc_type_print(b, &f->result_types[i]);
    const ptc_op *ret = &f->ops[f->nops - 1];
    const char *vn = i < ret->nin ? f->values[ret->in[i]].name : NULL;
    if (i == 0) ptc_buf_puts(b, " (loss)");
    else if (vn) ptc_buf_printf(b, " (%s)", vn);
    else ptc_buf_printf(b, " (r%d)", i);
  }
  ptc_buf_puts(b, "\n");

  int64_t pcount = 0, ntrain = 0;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (p->trainable) {
      pcount += ptc_type_numel(&p->type);
      ntrain++;
    }
  }
  if (local)
    ptc_buf_printf(b, "\nparameters: %lld in %lld tensors on each rank (its pieces)\n",
                   (long long)pcount, (long long)ntrain);
  else
    ptc_buf_printf(b, "\nparameters: %lld in %lld tensors\n", (long long)pcount,
                   (long long)ntrain);
  if (gm) { /* the memory plan of every rank group (codegen/memplan.c) */
    ptc_memplan plan;
    ptc_buf_puts(b, "\n");
    if (ptc_memplan_compute(gm, &plan) == 0) ptc_memplan_print(b, gm, &plan, 0);
  }

  double by_kind[PTC_OP_COUNT] = {0}, total = 0;
  int64_t nk[PTC_OP_COUNT] = {0};
  for (int32_t i = 0; i < f->nops; i++) {
    if (ptc_op_attr_bool(&f->ops[i], "recompute", false)) continue; /* model FLOPs */
    double fl = ptc_op_cost(f, &f->ops[i]).flops;
    by_kind[f->ops[i].code] += fl;
    nk[f->ops[i].code]++;
    total += fl;
  }
  ptc_buf_printf(b, "\nflops per step%s: %.0f (%.3g GFLOP), model FLOPs of @%s by "
                 "ptc_op_cost\n", local ? " on each rank" : "", total, total / 1e9, f->name);
  for (;;) { /* kinds by share, largest first */
    int best = -1;
    for (int k = 0; k < PTC_OP_COUNT; k++)
      if (nk[k] && (best < 0 || by_kind[k] > by_kind[best])) best = k;
    if (best < 0) break;
    ptc_buf_printf(b, "  %-20s %6lld ops  %6.2f%%\n", ptc_opinfo_get((ptc_opcode)best)->name,
                   (long long)nk[best], total > 0 ? 100 * by_kind[best] / total : 0.0);
    nk[best] = 0;
  }
  ptc_buf_puts(b, "\nvariables:\n");
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    ptc_buf_printf(b, "  %-6s @%-28s ", p->trainable ? "param" : "state", p->name);
    ptc_type_print(b, &p->type);
    ptc_buf_puts(b, "\n");
  }
}

/* ---- files --------------------------------------------------------------- */


static int put_file(ptc_ctx *ctx, const char *dir, const char *name, const char *data,
                    size_t len) {
  char *path = ptc_path_join(dir, name);
  FILE *f = fopen(path, "wb");
  bool ok = f && (len == 0 || fwrite(data, 1, len, f) == len);
  if (f) ok = (fclose(f) == 0) && ok;
  if (!ok) ptc_error(ctx, ptc_loc_unknown, "cannot write '%s': %s", path, strerror(errno));
  free(path);
  return ok ? 0 : -1;
}

/* Removes the regular files in dir, then dir (a plan has no subdirectories). */
static void remove_tree(const char *dir) {
  DIR *d = opendir(dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
      char *p = ptc_path_join(dir, e->d_name);
      remove(p);
      free(p);
    }
    closedir(d);
  }
  rmdir(dir);
}

/* What is at `dir` now: 0 nothing, 1 an empty directory or a plan (safe to
 * replace), -1 something else (reported). */
static int existing(ptc_ctx *ctx, const char *dir) {
  struct stat st;
  if (stat(dir, &st) != 0) return 0;
  if (!S_ISDIR(st.st_mode)) {
    ptc_error(ctx, ptc_loc_unknown, "cannot write the plan '%s': a file of that name "
              "exists; remove it, or write the IR with --emit=ir", dir);
    return -1;
  }
  char *man = ptc_path_join(dir, "manifest.json");
  bool is_plan = stat(man, &st) == 0;
  free(man);
  if (is_plan) return 1;
  DIR *d = opendir(dir);
  bool empty = true;
  if (d) {
    struct dirent *e;
    while (empty && (e = readdir(d)) != NULL)
      empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
    closedir(d);
  }
  if (empty) return 1;
  ptc_error(ctx, ptc_loc_unknown, "cannot write the plan '%s': the directory exists and "
            "is not a plan (no manifest.json); remove it or choose another -o", dir);
  return -1;
}

static json_t *file_entry(const char *name, const char *data, size_t len) {
  char hex[65];
  ptc_sha256_hex(data, len, hex);
  return json_pack("{s:s,s:I,s:s}", "name", name, "bytes", (json_int_t)len, "sha256", hex);
}

static bool has_groups(const ptc_module *m) {
  for (int32_t i = 0; i < m->nfuncs; i++)
    for (int32_t k = 0; k < m->funcs[i]->nops; k++)
      if (ptc_op_group(&m->funcs[i]->ops[k]) >= 0) return true;
  return false;
}

/* Compiles the groups into tmp/kernels.so; appends its file entry to files
 * and returns the code generator's description (for the manifest's
 * "kernels"), or NULL after reporting. */
static json_t *write_kernels(ptc_module *m, const char *target, const char *tmp,
                             json_t *files) {
#if PTC_HAVE_LLVM
  char *so = ptc_path_join(tmp, "kernels.so");
  ptc_buf info;
  ptc_buf_init(&info);
  json_t *desc = NULL;
  if (ptc_codegen_cpu(m, target, so, &info) != 0) goto out;
  size_t len = 0;
  char *data = ptc_slurp(so, &len);
  if (!data) {
    ptc_error(m->ctx, ptc_loc_unknown, "cannot read back '%s': %s", so, strerror(errno));
    goto out;
  }
  json_array_append_new(files, file_entry("kernels.so", data, len));
  free(data);
  json_error_t jerr;
  desc = json_loadb(info.data ? info.data : "", info.len, 0, &jerr);
  PTC_ASSERT(desc); /* the code generator writes valid JSON */
out:
  ptc_buf_fini(&info);
  free(so);
  return desc;
#else
  (void)target;
  (void)tmp;
  (void)files;
  (void)m;
  return NULL; /* refused before the plan was started */
#endif
}

/* A CUDA target: every kernel of the module (fused groups, attention, the
 * multi-tensor AdamW) compiled by NVRTC into tmp/kernels.<arch>.cubin and
 * .ptx, with the CUDA C they came from (kernels.cu); appends their file
 * entries and returns the manifest's "kernels" (codegen/cuda.h), or NULL
 * after reporting. */
static json_t *write_cuda_kernels(ptc_module *m, const char *target, const char *tmp,
                                  json_t *files) {
  ptc_cuda_out co;
  if (ptc_codegen_cuda(m, target, &co) != 0) return NULL;
  char cubin[64], ptx[64];
  snprintf(cubin, sizeof cubin, "kernels.%s.cubin", co.arch);
  snprintf(ptx, sizeof ptx, "kernels.%s.ptx", co.arch);
  const struct {
    const char *name;
    const ptc_buf *b;
  } out[] = {{"kernels.cu", &co.source}, {cubin, &co.cubin}, {ptx, &co.ptx}};
  json_t *desc = NULL;
  for (size_t i = 0; i < sizeof out / sizeof out[0]; i++) {
    const char *d = out[i].b->data ? out[i].b->data : "";
    if (put_file(m->ctx, tmp, out[i].name, d, out[i].b->len) != 0) goto done;
    json_array_append_new(files, file_entry(out[i].name, d, out[i].b->len));
  }
  json_error_t jerr;
  desc = json_loadb(co.info.data ? co.info.data : "", co.info.len, 0, &jerr);
  PTC_ASSERT(desc); /* the code generator writes valid JSON */
done:
  ptc_cuda_out_fini(&co);
  return desc;
}

static json_t *mesh_json(const ptc_mesh *m) {
  json_t *o = json_object();
  for (int32_t i = 0; i < m->naxes; i++)
    json_object_set_new(o, m->axes[i].name, json_integer(m->axes[i].size));
  return o;
}

int ptc_plan_write(ptc_module *m, const char *dir) { return ptc_plan_write_target(m, dir, "cpu"); }

int ptc_plan_write_target(ptc_module *m, const char *dir, const char *target) {
  ptc_ctx *ctx = m->ctx;
  ptc_func *entry = ptc_plan_entry(m);
  if (!entry) {
    ptc_error(ctx, ptc_loc_unknown, "cannot write a plan for @%s: it has no @step or "
              "@forward function to run; write the IR with --emit=ir", m->name);
    return -1;
  }
  bool cuda = strncmp(target, "cuda:", 5) == 0;
  bool kernels = cuda || has_groups(m);
  if (kernels && !cuda && !PTC_HAVE_LLVM) {
    ptc_error(ctx, ptc_loc_unknown, "cannot write a plan for @%s: it has fused groups (the "
              "'fuse' pass) and this ptc was built without LLVM to compile them; drop "
              "'fuse' from --pass-pipeline, or build ptc with LLVM (llvm-dev) and "
              "reconfigure", m->name);
    return -1;
  }
  int ex = existing(ctx, dir);
  if (ex < 0) return -1;

  size_t tlen = strlen(dir) + 16;
  char *tmp = ptc_xmalloc(tlen);
  snprintf(tmp, tlen, "%s.tmp-XXXXXX", dir);
  if (!mkdtemp(tmp)) {
    ptc_error(ctx, ptc_loc_unknown, "cannot write the plan '%s': %s", dir, strerror(errno));
    free(tmp);
    return -1;
  }
  /* mkdtemp makes the directory private; a plan is as readable as any
   * file the user writes */
  mode_t mask = umask(0);
  umask(mask);
  chmod(tmp, 0777 & ~mask);
  int rc = -1;
  ptc_buf ir, rep;
  ptc_buf_init(&ir);
  ptc_buf_init(&rep);
  json_t *man = NULL;
  char *mtext = NULL;
  ptc_print_module(&ir, m);
  ptc_plan_report(&rep, m, entry);
  pipeline_report(&rep, m);
  const char *irs = ir.data ? ir.data : "", *reps = rep.data ? rep.data : "";
  if (put_file(ctx, tmp, "step.ptir", irs, ir.len) != 0 ||
      put_file(ctx, tmp, "report.txt", reps, rep.len) != 0)
    goto out;
  json_t *files = json_array();
  json_array_append_new(files, file_entry("step.ptir", irs, ir.len));
  json_array_append_new(files, file_entry("report.txt", reps, rep.len));
  json_t *kdesc;
  /* kernels are compiled for the shapes each rank holds */
  ptc_module *km = kernels && partitioned(m) ? ptc_module_localize(m) : NULL;
  if (!kernels) kdesc = NULL;
  else if (cuda) kdesc = write_cuda_kernels(km ? km : m, target, tmp, files);
  else kdesc = write_kernels(km ? km : m, target, tmp, files);
  if (km) ptc_module_destroy(km);
  if (kernels && !kdesc) {
    json_decref(files);
    goto out;
  }
  man = json_pack("{s:s,s:i,s:s,s:s,s:o,s:s,s:s,s:s,s:o}", "format", PTC_PLAN_FORMAT,
                  "version", PTC_PLAN_VERSION, "ptc_version", PTC_VERSION_STRING, "model",
                  m->name, "mesh", mesh_json(&m->mesh), "target", cuda ? target : "cpu", "entry",
                  ptc_module_get_attr(m, "pipeline.stages") ? "pipeline" : entry->name,
                  "checksum", "sha256", "files", files);
  PTC_ASSERT(man);
  /* what the kernels were built for: ptrun checks "requires" on its CPU */
  if (kdesc) json_object_set_new(man, "kernels", kdesc);
  mtext = json_dumps(man, JSON_INDENT(2));
  PTC_ASSERT(mtext);
  size_t mlen = strlen(mtext);
  mtext = ptc_xrealloc(mtext, mlen + 2);
  memcpy(mtext + mlen, "\n", 2); /* a text file ends with a newline */
  if (put_file(ctx, tmp, "manifest.json", mtext, mlen + 1) != 0) goto out;
  /* install: move an old plan aside, the new one in, then drop the old */
  if (ex == 1) {
    char *old = ptc_xmalloc(tlen);
    snprintf(old, tlen, "%s.old-XXXXXX", dir);
    if (!mkdtemp(old) || rename(dir, old) != 0) {
      ptc_error(ctx, ptc_loc_unknown, "cannot replace the plan '%s': %s", dir,
                strerror(errno));
      rmdir(old);
      free(old);
      goto out;
    }
    if (rename(tmp, dir) != 0) {
      ptc_error(ctx, ptc_loc_unknown, "cannot write the plan '%s': %s", dir, strerror(errno));
      rename(old, dir);
      free(old);
      goto out;
    }
    remove_tree(old);
    free(old);
  } else if (rename(tmp, dir) != 0) {
    ptc_error(ctx, ptc_loc_unknown, "cannot write the plan '%s': %s", dir, strerror(errno));
    goto out;
  }
  rc = 0;
out:
  if (rc != 0) remove_tree(tmp);
  free(tmp);
  free(mtext);
  json_decref(man);
  ptc_buf_fini(&ir);
  ptc_buf_fini(&rep);
  return rc;
}
