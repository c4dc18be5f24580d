/* plan.c -- reading a plan directory (docs/plan.md), refusing anything
 * that is not exactly what ptc wrote.
 *
 * Order of checks: the directory, manifest.json (JSON, format name,
 * version, target, checksum algorithm, file list), each listed file's
 * presence, size and SHA-256, then step.ptir through the parser and the
 * verifier, then the fused kernels (kernels.so, when listed): the CPU has
 * every extension they were built for, and they load with a kernel for
 * every group of the entry function.  Each refusal is one diagnostic naming the file and the
 * problem, and says what to do (recompile with `ptc MODEL -o PLAN`).
 *
 * A plan for a mesh of more than one device is also localized here
 * (ptc_module_localize): ranks run that view, and the fused kernels,
 * generated from it, are bound to its entry function.
 *
 * A pipeline-parallel plan (entry "pipeline") has no single entry: its
 * module attributes give the stages, microbatches and each stage's order
 * of forward and backward units, which are checked here (every unit of
 * the stage's chunks once, a backward after its forward, every function
 * present), and every function gets its own fused kernels.
 */
#include <errno.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "codegen/codegen.h"
#include "runtime/fused.h"
#include "runtime/ptrt.h"

#define RECOMPILE "recompile the model with 'ptc MODEL.ptg -o %s'"



static bool plain_name(const char *s) {
  if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return false;
  for (; *s; s++)
    if (*s == '/' || *s == '\\' || (unsigned char)*s < 0x20) return false;
  return true;
}

/* A string member of the manifest, or NULL after reporting. */
static const char *need_str(ptc_ctx *ctx, const char *mpath, json_t *obj, const char *key,
                            const char *dir) {
  json_t *v = json_object_get(obj, key);
  if (json_is_string(v)) return json_string_value(v);
  ptrt_file_error(ctx, mpath, "'%s' is %s, expected a string: the manifest is damaged; "
                  RECOMPILE, key, v ? "not a string" : "missing", dir);
  return NULL;
}

/* Checks one listed file; returns its contents (heap) when keep, else
 * frees them.  -1 after reporting. */
static int check_file(ptc_ctx *ctx, const char *dir, const char *mpath, json_t *entry,
                      const char **name_out, char **keep, size_t *keep_len) {
  const char *name = need_str(ctx, mpath, entry, "name", dir);
  if (!name) return -1;
  if (!plain_name(name)) {
    ptrt_file_error(ctx, mpath, "lists the file '%s', which is not a plain file name "
                    "in the plan directory; " RECOMPILE, name, dir);
    return -1;
  }
  const char *want = need_str(ctx, mpath, entry, "sha256", dir);
  json_t *bytes = json_object_get(entry, "bytes");
  if (!want) return -1;
  if (!json_is_integer(bytes) || json_integer_value(bytes) < 0) {
    ptrt_file_error(ctx, mpath, "the size of '%s' is missing or not a count; " RECOMPILE,
                    name, dir);
    return -1;
  }
  char *path = ptc_path_join(dir, name);
  int rc = -1;
  struct stat st;
  if (stat(path, &st) != 0) {
    ptrt_file_error(ctx, path, "missing (%s), but the manifest lists it: the plan is "
                    "incomplete; " RECOMPILE, strerror(errno), dir);
    goto out;
  }
  if (!S_ISREG(st.st_mode)) {
    ptrt_file_error(ctx, path, "is not a regular file; " RECOMPILE, dir);
    goto out;
  }
  size_t len = 0;
  char *data = ptc_slurp(path, &len);
  if (!data) {
    ptrt_file_error(ctx, path, "cannot read: %s", strerror(errno));
    goto out;
  }
  json_int_t expect = json_integer_value(bytes);
  if ((json_int_t)len != expect) {
    ptrt_file_error(ctx, path, "%zu bytes, but the manifest records %lld: the file is %s; "
                    RECOMPILE, len, (long long)expect,
                    (json_int_t)len < expect ? "truncated" : "longer than written", dir);
    free(data);
    goto out;
  }
  char got[65];
  ptc_sha256_hex(data, len, got);
  if (strcmp(got, want) != 0) {
    ptrt_file_error(ctx, path, "SHA-256 %.12s... does not match %.12s... in the "
                    "manifest: the file is corrupted or was changed after ptc wrote "
                    "it; " RECOMPILE, got, want, dir);
    free(data);
    goto out;
  }
  *name_out = name;
  if (keep) {
    *keep = data;
    *keep_len = len;
  } else {
    free(data);
  }
  rc = 0;
out:
  free(path);
  return rc;
}

/* ---- pipeline-parallel plans ------------------------------------------------ */

/* A module attribute that must be an integer in [lo, hi]; -1 after
 * reporting. */
static int pipe_int(ptc_ctx *ctx, const ptrt_plan *p, const char *mpath, const char *name,
                    int64_t lo, int64_t hi, int32_t *out) {
  const ptc_attr *a = ptc_module_get_attr(p->mod, name);
  if (!a || a->kind != PTC_ATTR_INT || a->u.i < lo || a->u.i > hi) {
    ptrt_file_error(ctx, mpath, "the entry is a pipeline, but step.ptir's module attribute "
                    "%s is %s (expected an integer from %lld to %lld); " RECOMPILE, name,
                    a ? "out of range or not an integer" : "missing", (long long)lo,
                    (long long)hi, p->dir);
    return -1;
  }
  *out = (int32_t)a->u.i;
  return 0;
}

/* "F0.0 F0.1 B0.0 ..." into units; -1 when malformed. */
static int parse_order(const char *s, ptrt_pipe_unit **out, int32_t *n) {
  int32_t cap = 16;
  *n = 0;
  *out = ptc_xmalloc((size_t)cap * sizeof **out);
  while (*s) {
    while (*s == ' ') s++;
    if (!*s) break;
    char kind = *s++;
    char *end;
    long c = strtol(s, &end, 10);
    if ((kind != 'F' && kind != 'B') || end == s || *end != '.' || c < 0) return -1;
    s = end + 1;
    long mb = strtol(s, &end, 10);
    if (end == s || mb < 0 || (*end && *end != ' ')) return -1;
    s = end;
    if (*n == cap) {
      cap *= 2;
      *out = ptc_xrealloc(*out, (size_t)cap * sizeof **out);
    }
    (*out)[(*n)++] = (ptrt_pipe_unit){kind == 'B', (int32_t)c, (int32_t)mb};
  }
  return 0;
}

/* Stage s's order: every unit of a chunk of this stage, each forward and
 * backward of every microbatch exactly once, a backward after its
 * forward.  -1 after reporting. */
static int check_order(ptc_ctx *ctx, const ptrt_plan *p, const char *mpath, int32_t s) {
  const ptrt_pipe *pp = p->pipe;
  int32_t n = pp->norder[s];
  int32_t cells = pp->chunks * pp->microbatches;
  uint8_t *seen = ptc_xcalloc((size_t)cells + 1, 1); /* bit 0 forward, bit 1 backward */
  int rc = -1;
  const char *why = NULL;
  char unit[48] = "";
  for (int32_t k = 0; k < n && !why; k++) {
    ptrt_pipe_unit u = pp->order[s][k];
    snprintf(unit, sizeof unit, "%c%d.%d", u.backward ? 'B' : 'F', u.chunk, u.mb);
    if (u.chunk >= pp->chunks || u.mb >= pp->microbatches) why = "names no chunk or microbatch of the plan";
    else if (u.chunk % pp->stages != s) why = "names a chunk of another stage";
    else {
      uint8_t *c = &seen[u.chunk * pp->microbatches + u.mb], bit = u.backward ? 2 : 1;
      if (*c & bit) why = "repeats a unit";
      else if (u.backward && !(*c & 1)) why = "runs a backward before its forward";
      *c |= bit;
    }
  }
  for (int32_t c = s; c < pp->chunks && !why; c += pp->stages)
    for (int32_t mb = 0; mb < pp->microbatches && !why; mb++)
      if (seen[c * pp->microbatches + mb] != 3) {
        snprintf(unit, sizeof unit, "%c%d.%d", seen[c * pp->microbatches + mb] & 1 ? 'B' : 'F',
                 c, mb);
        why = "leaves out a unit";
      }
  if (why)
    ptrt_file_error(ctx, mpath, "pipeline.order.%d of step.ptir %s (%s); " RECOMPILE, s, why,
                    unit, p->dir);
  else
    rc = 0;
  free(seen);
  return rc;
}

/* The module attributes of a pipelined plan and its functions; -1 after
 * reporting. */
static int open_pipeline(ptc_ctx *ctx, ptrt_plan *p, const char *mpath) {
  ptrt_pipe *pp = p->pipe = ptc_xcalloc(1, sizeof *pp);
  if (pipe_int(ctx, p, mpath, "pipeline.stages", 2, 1 << 20, &pp->stages) != 0 ||
      pipe_int(ctx, p, mpath, "pipeline.microbatches", 1, 1 << 20, &pp->microbatches) != 0 ||
      pipe_int(ctx, p, mpath, "pipeline.virtual", 1, 1 << 10, &pp->virtual_stages) != 0)
    return -1;
  pp->order = ptc_xcalloc((size_t)pp->stages, sizeof *pp->order);
  pp->norder = ptc_xcalloc((size_t)pp->stages, sizeof *pp->norder);
  pp->chunks = pp->stages * pp->virtual_stages;
  const ptc_attr *sch = ptc_module_get_attr(p->mod, "pipeline.schedule");
  pp->schedule = sch && (sch->kind == PTC_ATTR_SYM || sch->kind == PTC_ATTR_STR) ? sch->u.s : "?";
  const ptc_mesh *mesh = &p->mod->mesh;
  pp->pp_axis = ptc_mesh_axis(mesh, "pp", 2);
  if (pp->pp_axis < 0 || mesh->axes[pp->pp_axis].size != pp->stages) {
    ptrt_file_error(ctx, mpath, "step.ptir is a pipeline of %d stages, but its mesh has %s; "
                    RECOMPILE, pp->stages, pp->pp_axis < 0 ? "no pp axis" : "another pp size",
                    p->dir);
    return -1;
  }
  for (int32_t s = 0; s < pp->stages; s++) {
    char key[48];
    snprintf(key, sizeof key, "pipeline.order.%d", s);
    const ptc_attr *a = ptc_module_get_attr(p->mod, key);
    if (!a || a->kind != PTC_ATTR_STR || parse_order(a->u.s, &pp->order[s], &pp->norder[s]) != 0) {
      ptrt_file_error(ctx, mpath, "the entry is a pipeline, but step.ptir's module attribute "
                      "%s is missing or not a list like \"F0.0 B0.0\"; " RECOMPILE, key, p->dir);
      return -1;
    }
    if (check_order(ctx, p, mpath, s) != 0) return -1;
  }
  for (int32_t i = 0; i < 2 * pp->chunks + pp->stages; i++) {
    char name[48];
    if (i < pp->chunks) snprintf(name, sizeof name, "fwd.%d", i);
    else if (i < 2 * pp->chunks) snprintf(name, sizeof name, "bwd.%d", i - pp->chunks);
    else snprintf(name, sizeof name, "step.%d", i - 2 * pp->chunks);
    if (!ptc_module_find_func(p->mod, name)) {
      ptrt_file_error(ctx, mpath, "the entry is a pipeline of %d chunks on %d stages, but "
                      "step.ptir has no @%s; " RECOMPILE, pp->chunks, pp->stages, name, p->dir);
      return -1;
    }
  }
  p->training = true;
  return 0;
}

/* The fused kernels of every function of the local view. */
static int open_fn_fused(ptc_ctx *ctx, ptrt_plan *p, const char *kpath) {
  p->fn_fused = ptc_xcalloc((size_t)p->local->nfuncs + 1, sizeof *p->fn_fused);
  for (int32_t i = 0; i < p->local->nfuncs; i++) {
    p->fn_fused[i] = ptrt_fused_open(ctx, kpath, p->local->funcs[i]);
    if (!p->fn_fused[i]) return -1;
    if (ptrt_fused_count(p->fn_fused[i]) == 0) {
      ptrt_fused_close(p->fn_fused[i]);
      p->fn_fused[i] = NULL;
    }
  }
  return 0;
}

ptc_func *ptrt_plan_func(const ptrt_plan *p, const char *name, ptc_func **global) {
  if (global) *global = ptc_module_find_func(p->mod, name);
  return ptc_module_find_func(p->local, name);
}

const ptrt_fused *ptrt_plan_fused_of(const ptrt_plan *p, const ptc_func *local_f) {
  if (!p->fn_fused) return local_f == p->local_entry ? p->fused : NULL;
  for (int32_t i = 0; i < p->local->nfuncs; i++)
    if (p->local->funcs[i] == local_f) return p->fn_fused[i];
  return NULL;
}

static ptrt_plan *fail(ptrt_plan *p, json_t *root) {
  json_decref(root);
  ptrt_plan_close(p);
  return NULL;
}

ptrt_plan *ptrt_plan_open(ptc_ctx *ctx, const char *dir) {
  struct stat st;
  if (stat(dir, &st) != 0) {
    ptrt_file_error(ctx, dir, "no such plan (%s); compile one with 'ptc MODEL.ptg -o %s'",
                    strerror(errno), dir);
    return NULL;
  }
  if (!S_ISDIR(st.st_mode)) {
    ptrt_file_error(ctx, dir, "not a plan: a plan is the directory 'ptc MODEL.ptg -o %s' "
                    "writes", dir);
    return NULL;
  }
  ptrt_plan *p = ptc_xcalloc(1, sizeof *p);
  p->dir = ptc_xmalloc(strlen(dir) + 1);
  strcpy(p->dir, dir);
  char *mpath_heap = ptc_path_join(dir, "manifest.json");
  const char *mpath = ptc_intern_cstr(ctx, mpath_heap);
  free(mpath_heap);
  json_t *root = NULL;
  if (stat(mpath, &st) != 0) {
    ptrt_file_error(ctx, mpath, "missing: '%s' is not a complete plan; " RECOMPILE, dir, dir);
    return fail(p, root);
  }
  json_error_t jerr;
  root = json_load_file(mpath, JSON_REJECT_DUPLICATES, &jerr);
  if (!root) {
    ptc_loc loc = {mpath, jerr.line > 0 ? jerr.line : 0, jerr.column > 0 ? jerr.column : 1};
    ptc_error(ctx, loc, "the manifest is not valid JSON (%s): it is corrupted; " RECOMPILE,
              jerr.text, dir);
    return fail(p, root);
  }
  if (!json_is_object(root)) {
    ptrt_file_error(ctx, mpath, "the manifest is not a JSON object; " RECOMPILE, dir);
    return fail(p, root);
  }
  const char *format = need_str(ctx, mpath, root, "format", dir);
  if (!format) return fail(p, root);
  if (strcmp(format, PTRT_PLAN_FORMAT) != 0) {
    ptrt_file_error(ctx, mpath, "format '%s' is not '%s': this is not a ptc plan", format,
                    PTRT_PLAN_FORMAT);
    return fail(p, root);
  }
  json_t *ver = json_object_get(root, "version");
  if (!json_is_integer(ver)) {
    ptrt_file_error(ctx, mpath, "the plan version is missing; " RECOMPILE, dir);
    return fail(p, root);
  }
  if (json_integer_value(ver) != PTRT_PLAN_VERSION) {
    ptrt_file_error(ctx, mpath, "plan version %lld, but this ptrun (ptc %s) reads version "
                    "%d: recompile the model with the ptc of this release "
                    "('ptc MODEL.ptg -o %s')", (long long)json_integer_value(ver),
                    PTC_VERSION_STRING, PTRT_PLAN_VERSION, dir);
    return fail(p, root);
  }
  const char *target = need_str(ctx, mpath, root, "target", dir);
  if (!target) return fail(p, root);
  if (strcmp(target, "cpu") != 0 && strncmp(target, "cuda:", 5) != 0) {
    ptrt_file_error(ctx, mpath, "the plan targets '%s'; this ptrun runs 'cpu' and 'cuda:' "
                    "plans", target);
    return fail(p, root);
  }
  const char *algo = need_str(ctx, mpath, root, "checksum", dir);
  if (!algo) return fail(p, root);
  if (strcmp(algo, "sha256") != 0) {
    ptrt_file_error(ctx, mpath, "checksums are '%s'; this ptrun checks 'sha256'; "
                    RECOMPILE, algo, dir);
    return fail(p, root);
  }
  const char *model = need_str(ctx, mpath, root, "model", dir);
  const char *pv = need_str(ctx, mpath, root, "ptc_version", dir);
  const char *entry = need_str(ctx, mpath, root, "entry", dir);
  if (!model || !pv || !entry) return fail(p, root);
  p->model = ptc_xmalloc(strlen(model) + 1);
  strcpy(p->model, model);
  p->ptc_version = ptc_xmalloc(strlen(pv) + 1);
  strcpy(p->ptc_version, pv);

  json_t *files = json_object_get(root, "files");
  if (!json_is_array(files)) {
    ptrt_file_error(ctx, mpath, "'files' is missing or not a list; " RECOMPILE, dir);
    return fail(p, root);
  }
  char *ir = NULL;
  size_t ir_len = 0;
  bool have_ir = false, have_kernels = false;
  for (size_t i = 0; i < json_array_size(files); i++) {
    json_t *e = json_array_get(files, i);
    if (!json_is_object(e)) {
      ptrt_file_error(ctx, mpath, "entry %zu of 'files' is not an object; " RECOMPILE, i, dir);
      free(ir);
      return fail(p, root);
    }
    json_t *nm = json_object_get(e, "name");
    bool is_ir = json_is_string(nm) && strcmp(json_string_value(nm), "step.ptir") == 0;
    const char *name;
    if (check_file(ctx, dir, mpath, e, &name, is_ir && !have_ir ? &ir : NULL, &ir_len) != 0) {
      free(ir);
      return fail(p, root);
    }
    have_ir |= is_ir;
    have_kernels |= json_is_string(nm) && strcmp(json_string_value(nm), "kernels.so") == 0;
  }
  if (!have_ir) {
    ptrt_file_error(ctx, mpath, "lists no step.ptir, the schedule to run; " RECOMPILE, dir);
    return fail(p, root);
  }
  char *ir_path = ptc_path_join(dir, "step.ptir");
  p->mod = ptc_parse_module(ctx, ir_path, ir, ir_len);
  free(ir);
  if (p->mod && ptc_verify_module(p->mod) != 0) {
    ptc_module_destroy(p->mod);
    p->mod = NULL;
  }
  if (!p->mod) {
    ptrt_file_error(ctx, ir_path, "the plan's IR does not parse or verify (above), though "
                    "its checksum matches: it was written by a ptc that disagrees with "
                    "this ptrun; " RECOMPILE, dir);
    free(ir_path);
    return fail(p, root);
  }
  free(ir_path);
  if (strcmp(entry, "pipeline") == 0) {
    if (open_pipeline(ctx, p, mpath) != 0) return fail(p, root);
  } else {
    p->entry = ptc_module_find_func(p->mod, entry);
    if (!p->entry || (strcmp(entry, "step") != 0 && strcmp(entry, "forward") != 0)) {
      ptrt_file_error(ctx, mpath, "the entry function '@%s' is %s; " RECOMPILE, entry,
                      p->entry ? "neither @step, @forward nor a pipeline" : "not in step.ptir",
                      dir);
      return fail(p, root);
    }
    p->training = strcmp(entry, "step") == 0;
    p->forward = ptc_module_find_func(p->mod, "forward");
  }
  /* the local view runs; on one device it is the module itself */
  p->local = p->mod;
  p->local_entry = p->entry;
  p->local_forward = p->forward;
  if (ptc_mesh_size(&p->mod->mesh) > 1) {
    p->local = ptc_module_localize(p->mod);
    p->local_entry = p->entry ? ptc_module_find_func(p->local, p->entry->name) : NULL;
    p->local_forward = p->forward ? ptc_module_find_func(p->local, "forward") : NULL;
    PTC_ASSERT((p->local_entry != NULL) == (p->entry != NULL) &&
               (p->local_forward != NULL) == (p->forward != NULL));
  }
  if (have_kernels) {
    char *kpath_heap = ptc_path_join(dir, "kernels.so");
    const char *kpath = ptc_intern_cstr(ctx, kpath_heap);
    free(kpath_heap);
    json_t *info = json_object_get(root, "kernels");
    json_t *req = json_object_get(info, "requires"), *cpu = json_object_get(info, "cpu");
    if (!json_is_object(info) || !json_is_string(req)) {
      ptrt_file_error(ctx, mpath, "lists kernels.so but not the CPU features it needs "
                      "('kernels.requires'): the manifest is damaged; " RECOMPILE, dir);
      return fail(p, root);
    }
    if (ptrt_fused_check_cpu(ctx, kpath, json_is_string(cpu) ? json_string_value(cpu) : NULL,
                             json_string_value(req)) != 0)
      return fail(p, root);
    /* kpath has a '/', so dlopen takes it as a path, not a name to search */
    if (p->pipe) {
      if (open_fn_fused(ctx, p, kpath) != 0) return fail(p, root);
    } else {
      p->fused = ptrt_fused_open(ctx, kpath, p->local_entry);
      if (!p->fused) return fail(p, root);
    }
  }
  json_decref(root);
  return p;
}

void ptrt_plan_close(ptrt_plan *p) {
  if (!p) return;
  ptrt_fused_close(p->fused);
  for (int32_t i = 0; p->fn_fused && i < p->local->nfuncs; i++) ptrt_fused_close(p->fn_fused[i]);
  free(p->fn_fused);
  if (p->pipe) {
    for (int32_t s = 0; s < p->pipe->stages; s++) free(p->pipe->order[s]);
    free(p->pipe->order);
    free(p->pipe->norder);
    free(p->pipe);
  }
  if (p->local != p->mod) ptc_module_destroy(p->local);
  ptc_module_destroy(p->mod);
  free(p->dir);
  free(p->model);
  free(p->ptc_version);
  free(p);
}
