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
 */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "codegen/codegen.h"
#include "runtime/fused.h"
#include "runtime/ptrt.h"

#define RECOMPILE "recompile the model with 'ptc MODEL.ptg -o %s'"

static char *join(const char *dir, const char *name) {
  size_t n = strlen(dir) + strlen(name) + 2;
  char *s = ptc_xmalloc(n);
  snprintf(s, n, "%s/%s", dir, name);
  return s;
}


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
  char *path = join(dir, name);
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
  char *mpath_heap = join(dir, "manifest.json");
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
  if (strcmp(target, "cpu") != 0) {
    ptrt_file_error(ctx, mpath, "the plan targets '%s'; this ptrun runs 'cpu' plans", target);
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
  char *ir_path = join(dir, "step.ptir");
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
  p->entry = ptc_module_find_func(p->mod, entry);
  if (!p->entry || (strcmp(entry, "step") != 0 && strcmp(entry, "forward") != 0)) {
    ptrt_file_error(ctx, mpath, "the entry function '@%s' is %s; " RECOMPILE, entry,
                    p->entry ? "neither @step nor @forward" : "not in step.ptir", dir);
    return fail(p, root);
  }
  p->training = strcmp(entry, "step") == 0;
  p->forward = ptc_module_find_func(p->mod, "forward");
  /* the local view runs; on one device it is the module itself */
  p->local = p->mod;
  p->local_entry = p->entry;
  p->local_forward = p->forward;
  if (ptc_mesh_size(&p->mod->mesh) > 1) {
    p->local = ptc_module_localize(p->mod);
    p->local_entry = ptc_module_find_func(p->local, p->entry->name);
    p->local_forward = p->forward ? ptc_module_find_func(p->local, "forward") : NULL;
    PTC_ASSERT(p->local_entry && (p->local_forward != NULL) == (p->forward != NULL));
  }
  if (have_kernels) {
    char *kpath_heap = join(dir, "kernels.so");
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
    p->fused = ptrt_fused_open(ctx, kpath, p->local_entry);
    if (!p->fused) return fail(p, root);
  }
  json_decref(root);
  return p;
}

void ptrt_plan_close(ptrt_plan *p) {
  if (!p) return;
  ptrt_fused_close(p->fused);
  if (p->local != p->mod) ptc_module_destroy(p->local);
  ptc_module_destroy(p->mod);
  free(p->dir);
  free(p->model);
  free(p->ptc_version);
  free(p);
}
