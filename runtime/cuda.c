/* cuda.c -- opening a CUDA plan up to the GPU (runtime/cuda.h).
 *
 * Everything that can be checked without a GPU is checked first, so a
 * damaged or mismatched plan is reported as such on any machine; the
 * driver is opened last, with dlopen, and its absence is one clear
 * message rather than a loader error at start-up.
 */
#include "runtime/cuda.h"
#include "runtime/cuda_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "codegen/codegen.h"
#include "runtime/ptrt.h"

#define RECOMPILE "recompile the model with 'ptc MODEL.ptg --target %s -o %s'"


/* Reports at path and copies the message to why. */
static void fail(ptc_ctx *ctx, const char *path, char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(ptc_ctx *ctx, const char *path, char *why, size_t len, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (why && len) snprintf(why, len, "%s", msg);
  ptc_loc loc = {path ? ptc_intern_cstr(ctx, path) : NULL, 0, 0};
  ptc_error(ctx, path ? loc : ptc_loc_unknown, "%s", msg);
}

static json_t *load_manifest(const char *dir) {
  char *mp = ptc_path_join(dir, "manifest.json");
  json_error_t jerr;
  json_t *root = json_load_file(mp, JSON_REJECT_DUPLICATES, &jerr);
  free(mp);
  if (root && !json_is_object(root)) {
    json_decref(root);
    root = NULL;
  }
  return root;
}

bool ptrt_cuda_is_plan(const char *dir) {
  json_t *root = load_manifest(dir);
  json_t *t = root ? json_object_get(root, "target") : NULL;
  bool cuda = json_is_string(t) && strncmp(json_string_value(t), "cuda:", 5) == 0;
  json_decref(root);
  return cuda;
}

static bool plain_name(const char *s) {
  return s[0] && s[0] != '.' && !strchr(s, '/');
}

/* Every listed file: present, its size and SHA-256.  Returns 0 or -1. */
static int check_files(ptc_ctx *ctx, const char *dir, const char *mpath, json_t *files,
                       const char *target, char *why, size_t len) {
  for (size_t i = 0; i < json_array_size(files); i++) {
    json_t *e = json_array_get(files, i);
    const char *name = json_string_value(json_object_get(e, "name"));
    const char *want = json_string_value(json_object_get(e, "sha256"));
    json_t *bytes = json_object_get(e, "bytes");
    if (!name || !plain_name(name) || !want || !json_is_integer(bytes)) {
      fail(ctx, mpath, why, len, "entry %zu of 'files' is damaged; " RECOMPILE, i, target, dir);
      return -1;
    }
    char *path = ptc_path_join(dir, name);
    size_t n = 0;
    char *data = ptc_slurp(path, &n);
    int rc = 0;
    if (!data) {
      fail(ctx, path, why, len, "missing or unreadable (%s), but the manifest lists it; " RECOMPILE,
           strerror(errno), target, dir);
      rc = -1;
    } else if ((json_int_t)n != json_integer_value(bytes)) {
      fail(ctx, path, why, len, "%zu bytes, but the manifest records %lld; " RECOMPILE, n,
           (long long)json_integer_value(bytes), target, dir);
      rc = -1;
    } else {
      char got[65];
      ptc_sha256_hex(data, n, got);
      if (strcmp(got, want) != 0) {
        fail(ctx, path, why, len, "its SHA-256 is not the manifest's: the file changed after "
             "ptc wrote it; " RECOMPILE, target, dir);
        rc = -1;
      }
    }
    free(data);
    free(path);
    if (rc) return -1;
  }
  return 0;
}

static bool listed(json_t *files, const char *name) {
  for (size_t i = 0; i < json_array_size(files); i++) {
    const char *n = json_string_value(json_object_get(json_array_get(files, i), "name"));
    if (n && strcmp(n, name) == 0) return true;
  }
  return false;
}

/* Whether the cubin's symbol names hold `fn` (a NUL-terminated entry). */
static bool has_symbol(const char *cubin, size_t n, const char *fn) {
  size_t l = strlen(fn);
  for (const char *p = cubin; p + l < cubin + n; p++) {
    p = memchr(p, fn[0], (size_t)(cubin + n - p));
    if (!p || p + l >= cubin + n) break;
    if (memcmp(p, fn, l) == 0 && p[l] == 0 && (p == cubin || p[-1] == 0 || p[-1] == '.'))
      return true;
  }
  return false;
}

/* The kernels: the cubin is for the arch, each listed function is in it,
 * and every group of every function of the module has its kernel. */
static int check_kernels(ptc_ctx *ctx, ptrt_cuda *c, const char *dir, const char *mpath,
                         json_t *root, ptc_module *mod, char **cubin, size_t *cubin_len,
                         char *why, size_t len) {
  json_t *info = json_object_get(root, "kernels"), *files = json_object_get(root, "files");
  const char *cname = json_string_value(json_object_get(info, "cubin"));
  const char *pname = json_string_value(json_object_get(info, "ptx"));
  const char *arch = json_string_value(json_object_get(info, "arch"));
  json_t *list = json_object_get(info, "list");
  if (!json_is_object(info) || !cname || !pname || !arch || !json_is_array(list)) {
    fail(ctx, mpath, why, len, "a cuda plan without its 'kernels' (cubin, ptx, arch, list): the "
         "manifest is damaged; " RECOMPILE, c->target, dir);
    return -1;
  }
  if (strcmp(arch, c->arch) != 0 || !listed(files, cname) || !listed(files, pname)) {
    fail(ctx, mpath, why, len, "the kernels are for '%s' and the plan for '%s', or the cubin "
         "or PTX is not among the plan's files; " RECOMPILE, arch, c->target, c->target, dir);
    return -1;
  }
  char *cpath = ptc_path_join(dir, cname);
  *cubin = ptc_slurp(cpath, cubin_len);
  const unsigned char *u = (const unsigned char *)*cubin;
  int sm = *cubin && *cubin_len > 64 ? (int)((u[48] | u[49] << 8 | u[50] << 16) >> 8 & 0xff) : -1;
  bool elf = *cubin && *cubin_len > 64 && memcmp(u, "\177ELF", 4) == 0 && (u[18] | u[19] << 8) == 190;
  char want[16];
  snprintf(want, sizeof want, "sm_%d", sm);
  if (!elf || strncmp(want, c->arch, strlen(want)) != 0) {
    fail(ctx, cpath, why, len, "is not a CUDA cubin for %s (%s); " RECOMPILE, c->arch,
         elf ? want : "not a CUDA ELF file", c->target, dir);
    free(cpath);
    return -1;
  }
  free(cpath);
  c->nkernels = (int32_t)json_array_size(list);
  for (size_t i = 0; i < json_array_size(list); i++) {
    const char *fn = json_string_value(json_object_get(json_array_get(list, i), "function"));
    if (!fn || !has_symbol(*cubin, *cubin_len, fn)) {
      fail(ctx, mpath, why, len, "kernel %zu ('%s') is not in %s; " RECOMPILE, i, fn ? fn : "?",
           cname, c->target, dir);
      return -1;
    }
  }
  for (int32_t fi = 0; fi < mod->nfuncs; fi++) {
    const ptc_func *f = mod->funcs[fi];
    for (int32_t k = 0; k < f->nops; k++) {
      int64_t g = ptc_op_group(&f->ops[k]);
      if (g < 0 || (k > 0 && ptc_op_group(&f->ops[k - 1]) == g)) continue;
      bool found = false;
      for (size_t i = 0; i < json_array_size(list) && !found; i++) {
        json_t *gi = json_object_get(json_array_get(list, i), "group");
        found = json_is_integer(gi) && json_integer_value(gi) == g;
      }
      if (!found) {
        fail(ctx, mpath, why, len, "group %lld of @%s has no kernel in the plan; " RECOMPILE,
             (long long)g, f->name, c->target, dir);
        return -1;
      }
    }
  }
  return 0;
}

const char *ptrt__cu_err(const ptrt_cu_driver *d, CUresult r) {
  const char *s = NULL;
  if (d->GetErrorString) d->GetErrorString(r, &s);
  return s ? s : "unknown error";
}

static int open_driver(ptc_ctx *ctx, ptrt_cuda *c, const char *dir, char *why, size_t len) {
  ptrt_cu_driver *d = &c->drv;
  d->lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!d->lib) {
    fail(ctx, NULL, why, len, "this plan is for %s; no CUDA driver here (libcuda.so.1 not "
         "found): run it on a machine with an NVIDIA GPU", c->target);
    return -1;
  }
#define SYM(field, name)                                                              \
  do {                                                                                \
    *(void **)&d->field = dlsym(d->lib, name);                                        \
    if (!d->field) {                                                                  \
      fail(ctx, NULL, why, len, "the CUDA driver (libcuda.so.1) has no %s: it is too old " \
           "for this ptrun; update the NVIDIA driver", name);                          \
      return -1;                                                                      \
    }                                                                                 \
  } while (0)
  SYM(Init, "cuInit");
  SYM(DeviceGetCount, "cuDeviceGetCount");
  SYM(DeviceGet, "cuDeviceGet");
  SYM(DeviceGetName, "cuDeviceGetName");
  SYM(DeviceGetAttribute, "cuDeviceGetAttribute");
  SYM(PrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
  SYM(PrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
  SYM(CtxSetCurrent, "cuCtxSetCurrent");
  SYM(ModuleLoadData, "cuModuleLoadData");
  SYM(ModuleUnload, "cuModuleUnload");
  SYM(ModuleGetFunction, "cuModuleGetFunction");
  SYM(GetErrorString, "cuGetErrorString");
  SYM(MemAlloc, "cuMemAlloc_v2");
  SYM(MemFree, "cuMemFree_v2");
  SYM(MemGetInfo, "cuMemGetInfo_v2");
  SYM(MemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
  SYM(MemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
  SYM(MemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2");
  SYM(Memcpy2DAsync, "cuMemcpy2DAsync_v2");
  SYM(MemsetD8Async, "cuMemsetD8Async");
  SYM(MemsetD16Async, "cuMemsetD16Async");
  SYM(MemsetD32Async, "cuMemsetD32Async");
  SYM(LaunchKernel, "cuLaunchKernel");
  SYM(StreamCreate, "cuStreamCreate");
  SYM(StreamDestroy, "cuStreamDestroy_v2");
  SYM(StreamSynchronize, "cuStreamSynchronize");
  SYM(EventCreate, "cuEventCreate");
  SYM(EventDestroy, "cuEventDestroy_v2");
  SYM(EventRecord, "cuEventRecord");
  SYM(EventSynchronize, "cuEventSynchronize");
  SYM(EventElapsedTime, "cuEventElapsedTime");
#undef SYM
  (void)dir;
  CUresult r = d->Init(0);
  int n = 0;
  if (r == 0) r = d->DeviceGetCount(&n);
  if (r != 0 || n == 0) {
    fail(ctx, NULL, why, len, "this plan is for %s; the CUDA driver is here but %s: run it on a "
         "machine with an NVIDIA GPU", c->target, r ? ptrt__cu_err(d, r) : "there is no CUDA device");
    return -1;
  }
  /* each rank of a node takes the GPU of its local rank (several ranks
   * share one when there are fewer GPUs than ranks) */
  c->ordinal = (int)(ptrt_cuda_local_rank() % n);
  d->DeviceGet(&c->dev, c->ordinal);
  d->DeviceGetName(c->device, (int)sizeof c->device, c->dev);
  int maj = 0, min = 0;
  d->DeviceGetAttribute(&maj, CU_ATTR_CC_MAJOR, c->dev);
  d->DeviceGetAttribute(&min, CU_ATTR_CC_MINOR, c->dev);
  int want = atoi(c->arch + 3);
  if (maj * 10 + min < want) {
    fail(ctx, NULL, why, len, "this plan is for %s, but device %d (%s) is compute capability "
         "%d.%d: recompile with --target cuda:sm_%d%d", c->target, c->ordinal, c->device, maj,
         min, maj, min);
    return -1;
  }
  d->DeviceGetAttribute(&c->sm_count, CU_ATTR_SM_COUNT, c->dev);
  r = d->PrimaryCtxRetain(&c->ctx, c->dev);
  if (r == 0) {
    c->have_ctx = true;
    r = d->CtxSetCurrent(c->ctx);
  }
  if (r == 0) r = d->StreamCreate(&c->stream, 1 /* CU_STREAM_NON_BLOCKING */);
  if (r != 0) {
    fail(ctx, NULL, why, len, "cannot make a CUDA context on %s: %s", c->device, ptrt__cu_err(d, r));
    return -1;
  }
  return 0;
}

ptrt_cuda *ptrt_cuda_open(ptc_ctx *ctx, const char *dir, char *why, size_t len) {
  ptrt_cuda *c = ptc_xcalloc(1, sizeof *c);
  char *mpath = ptc_path_join(dir, "manifest.json");
  json_t *root = load_manifest(dir);
  ptc_module *mod = NULL;
  char *cubin = NULL, *ptx = NULL;
  size_t cubin_len = 0;
  bool ok = false;
  if (!root) {
    fail(ctx, mpath, why, len, "missing or not a JSON object: '%s' is not a plan", dir);
    goto out;
  }
  const char *format = json_string_value(json_object_get(root, "format"));
  const char *target = json_string_value(json_object_get(root, "target"));
  json_t *ver = json_object_get(root, "version"), *files = json_object_get(root, "files");
  if (!format || strcmp(format, PTC_PLAN_FORMAT) != 0 || !json_is_integer(ver) ||
      json_integer_value(ver) != PTC_PLAN_VERSION || !target || !json_is_array(files)) {
    fail(ctx, mpath, why, len, "not a ptc plan of version %d (format, version, target or files "
         "missing); recompile the model with this release's ptc", PTC_PLAN_VERSION);
    goto out;
  }
  snprintf(c->target, sizeof c->target, "%s", target);
  if (strncmp(target, "cuda:", 5) != 0) {
    fail(ctx, mpath, why, len, "the plan targets '%s', not a CUDA GPU", target);
    goto out;
  }
  snprintf(c->arch, sizeof c->arch, "%s", target + 5);
  if (check_files(ctx, dir, mpath, files, c->target, why, len) != 0) goto out;
  {
    char *ir_path = ptc_path_join(dir, "step.ptir");
    size_t n = 0;
    char *ir = ptc_slurp(ir_path, &n);
    mod = ir ? ptc_parse_module(ctx, ptc_intern_cstr(ctx, ir_path), ir, n) : NULL;
    free(ir);
    if (mod && ptc_verify_module(mod) != 0) {
      ptc_module_destroy(mod);
      mod = NULL;
    }
    if (!mod) fail(ctx, ir_path, why, len, "the plan's IR is missing or does not verify; " RECOMPILE,
                   c->target, dir);
    free(ir_path);
    if (!mod) goto out;
  }
  if (check_kernels(ctx, c, dir, mpath, root, mod, &cubin, &cubin_len, why, len) != 0) goto out;
  /* the GPU: only now */
  if (open_driver(ctx, c, dir, why, len) != 0) goto out;
  {
    int maj = atoi(c->arch + 3) / 10, dmaj = 0;
    c->drv.DeviceGetAttribute(&dmaj, CU_ATTR_CC_MAJOR, c->dev);
    const void *image = cubin;
    if (dmaj != maj) { /* another major version: the driver compiles the PTX */
      const char *pname = json_string_value(json_object_get(json_object_get(root, "kernels"), "ptx"));
      char *pp = ptc_path_join(dir, pname);
      size_t pn = 0;
      ptx = ptc_slurp(pp, &pn);
      free(pp);
      image = ptx;
    }
    CUresult r = image ? c->drv.ModuleLoadData(&c->mod, image) : 1;
    if (r != 0) {
      fail(ctx, NULL, why, len, "cannot load the plan's kernels on %s: %s", c->device,
           ptrt__cu_err(&c->drv, r));
      goto out;
    }
    json_t *list = json_object_get(json_object_get(root, "kernels"), "list");
    for (size_t i = 0; i < json_array_size(list); i++) {
      const char *fn = json_string_value(json_object_get(json_array_get(list, i), "function"));
      CUfunction h;
      r = c->drv.ModuleGetFunction(&h, c->mod, fn);
      if (r != 0) {
        fail(ctx, NULL, why, len, "kernel '%s' does not load on %s: %s", fn, c->device,
             ptrt__cu_err(&c->drv, r));
        goto out;
      }
      c->nfunctions++;
    }
    if (ptrt__cuda_load_table(ctx, c, root, why, len) != 0) goto out;
    c->manifest = json_incref(root);
  }
  ok = true;
out:
  free(mpath);
  free(cubin);
  free(ptx);
  if (mod) ptc_module_destroy(mod);
  json_decref(root);
  if (!ok) {
    ptrt_cuda_close(c);
    return NULL;
  }
  return c;
}

void ptrt_cuda_close(ptrt_cuda *c) {
  if (!c) return;
  ptrt__cuda_release(c);
  if (c->mod) c->drv.ModuleUnload(c->mod);
  if (c->have_ctx) c->drv.PrimaryCtxRelease(c->dev);
  if (c->drv.lib) dlclose(c->drv.lib);
  json_decref(c->manifest);
  free(c->k);
  free(c);
}

const char *ptrt_cuda_target(const ptrt_cuda *c) { return c->target; }
const char *ptrt_cuda_device(const ptrt_cuda *c) { return c->device; }
int32_t ptrt_cuda_nkernels(const ptrt_cuda *c) { return c->nkernels; }
