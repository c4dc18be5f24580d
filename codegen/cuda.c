/* cuda.c -- compiles a module's CUDA kernels with NVRTC (cuda.h).
 *
 * libnvrtc is opened with dlopen the first time a cuda target is asked
 * for: ptc links no CUDA library, builds where CUDA is absent, and says
 * what is missing only when it is needed.  Where it looks, in order: the
 * PTC_NVRTC variable (a path; when set, nothing else), libnvrtc.so and its versioned names on the
 * loader's path, $CUDA_HOME / $CUDA_PATH / the toolkit found at configure
 * time.  The kernels include cuda_bf16.h and cuda_fp16.h, so NVRTC is
 * given the toolkit's include directory (PTC_CUDA_INCLUDE, $CUDA_HOME/
 * include, ..., configure time's).
 *
 * One translation unit holds every kernel; NVRTC compiles it once to a
 * cubin for the target's architecture and to PTX (for a driver that
 * JIT-compiles for a newer GPU).  Options: C++17, --fmad=false (a * b + c
 * is rounded twice unless the op's description says fma, as on the CPU),
 * -Xptxas=-v, whose report gives each kernel's registers, stack and spills
 * for the manifest.  A compilation error is reported at the IR op whose
 * kernel the error's line falls in, naming the kernel.
 */
#include <ctype.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "codegen/cuda_internal.h"

#ifndef PTC_NVRTC_PATH
#define PTC_NVRTC_PATH ""
#endif
#ifndef PTC_CUDA_INCLUDE_DIR
#define PTC_CUDA_INCLUDE_DIR ""
#endif

/* ---- NVRTC, opened at run time ----------------------------------------------- */

typedef struct nvrtc_api {
  void *lib;
  char path[512];
  const char *(*GetErrorString)(int);
  int (*Version)(int *, int *);
  int (*CreateProgram)(void **, const char *, const char *, int, const char *const *,
                       const char *const *);
  int (*DestroyProgram)(void **);
  int (*CompileProgram)(void *, int, const char *const *);
  int (*GetProgramLogSize)(void *, size_t *);
  int (*GetProgramLog)(void *, char *);
  int (*GetPTXSize)(void *, size_t *);
  int (*GetPTX)(void *, char *);
  int (*GetCUBINSize)(void *, size_t *);
  int (*GetCUBIN)(void *, char *);
} nvrtc_api;

static nvrtc_api nv;

static bool try_open(const char *path) {
  if (!path || !path[0]) return false;
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
  nv.lib = h;
  snprintf(nv.path, sizeof nv.path, "%s", path);
  return true;
}

static bool nvrtc_open(char *why, size_t len) {
  if (nv.GetCUBIN) return true;
  const char *env = getenv("PTC_NVRTC");
  if (env && env[0]) { /* the library to use, and no other */
    if (try_open(env)) goto found;
    if (why) snprintf(why, len, "NVRTC not found: PTC_NVRTC is '%s', which does not load (%s)",
                      env, dlerror());
    return false;
  }
  bool ok = false;
  static const char *const names[] = {"libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12",
                                      "libnvrtc.so.11.2"};
  for (int i = 0; !ok && i < PTC_ARRAY_LEN(names); i++) ok = try_open(names[i]);
  const char *homes[] = {getenv("CUDA_HOME"), getenv("CUDA_PATH"), "/usr/local/cuda"};
  char p[600];
  for (int i = 0; !ok && i < PTC_ARRAY_LEN(homes); i++) {
    if (!homes[i] || !homes[i][0]) continue;
    snprintf(p, sizeof p, "%s/lib64/libnvrtc.so", homes[i]);
    ok = try_open(p);
  }
  if (!ok) ok = try_open(PTC_NVRTC_PATH);
  if (!ok) {
    if (why)
      snprintf(why, len, "NVRTC (libnvrtc.so) not found: tried $PTC_NVRTC, libnvrtc.so, "
               "libnvrtc.so.13, libnvrtc.so.12 on the loader's path, $CUDA_HOME/lib64, "
               "$CUDA_PATH/lib64 and /usr/local/cuda/lib64; install the CUDA toolkit (or "
               "its nvrtc package) or set PTC_NVRTC to the library's path");
    return false;
  }
found:
#define SYM(field, name)                                                          \
  do {                                                                            \
    *(void **)&nv.field = dlsym(nv.lib, name);                                    \
    if (!nv.field) {                                                              \
      if (why) snprintf(why, len, "'%s' has no %s: not a usable NVRTC", nv.path, name); \
      dlclose(nv.lib);                                                            \
      memset(&nv, 0, sizeof nv);                                                  \
      return false;                                                               \
    }                                                                             \
  } while (0)
  SYM(GetErrorString, "nvrtcGetErrorString");
  SYM(Version, "nvrtcVersion");
  SYM(CreateProgram, "nvrtcCreateProgram");
  SYM(DestroyProgram, "nvrtcDestroyProgram");
  SYM(CompileProgram, "nvrtcCompileProgram");
  SYM(GetProgramLogSize, "nvrtcGetProgramLogSize");
  SYM(GetProgramLog, "nvrtcGetProgramLog");
  SYM(GetPTXSize, "nvrtcGetPTXSize");
  SYM(GetPTX, "nvrtcGetPTX");
  SYM(GetCUBINSize, "nvrtcGetCUBINSize");
  SYM(GetCUBIN, "nvrtcGetCUBIN");
#undef SYM
  return true;
}

bool ptc_cuda_nvrtc_available(char *why, size_t len) { return nvrtc_open(why, len); }

static bool has_header(const char *dir) {
  if (!dir || !dir[0]) return false;
  char p[600];
  struct stat st;
  snprintf(p, sizeof p, "%s/cuda_bf16.h", dir);
  return stat(p, &st) == 0;
}

/* The toolkit's include directory, or NULL. */
static const char *cuda_include(char *buf, size_t len) {
  const char *env = getenv("PTC_CUDA_INCLUDE");
  if (has_header(env)) return env;
  const char *homes[] = {getenv("CUDA_HOME"), getenv("CUDA_PATH"), "/usr/local/cuda"};
  for (int i = 0; i < PTC_ARRAY_LEN(homes); i++) {
    if (!homes[i] || !homes[i][0]) continue;
    snprintf(buf, len, "%s/include", homes[i]);
    if (has_header(buf)) return buf;
  }
  /* beside the library: <root>/lib64/libnvrtc.so -> <root>/include */
  snprintf(buf, len, "%s", nv.path);
  char *s = strrchr(buf, '/');
  if (s) {
    *s = 0;
    s = strrchr(buf, '/');
    if (s) {
      snprintf(s, len - (size_t)(s - buf), "/include");
      if (has_header(buf)) return buf;
    }
  }
  if (has_header(PTC_CUDA_INCLUDE_DIR)) return PTC_CUDA_INCLUDE_DIR;
  return NULL;
}

bool ptc_cuda_target_parse(const char *target, char *arch, size_t len) {
  if (!target || strncmp(target, "cuda:sm_", 8) != 0) return false;
  const char *n = target + 8;
  size_t d = strspn(n, "0123456789");
  if (d < 2 || d > 3) return false;
  int v = atoi(n);
  if (v < 70 || v > 120) return false;
  /* sm_90a and friends: architecture-specific features, same naming */
  if (n[d] && !(n[d] == 'a' && n[d + 1] == 0)) return false;
  snprintf(arch, len, "%s", target + 5);
  return true;
}

/* ---- ptxas -v ------------------------------------------------------------------- */

static void parse_usage(ptc_cuda_src *src, const char *log) {
  char cur[128] = {0};
  for (const char *l = log; l && *l;) {
    const char *e = strchr(l, '\n');
    size_t n = e ? (size_t)(e - l) : strlen(l);
    char ln[512];
    snprintf(ln, sizeof ln, "%.*s", (int)(n < sizeof ln - 1 ? n : sizeof ln - 1), l);
    const char *q;
    if ((q = strstr(ln, "Compiling entry function '"))) {
      sscanf(q + strlen("Compiling entry function '"), "%127[^']", cur);
    } else if ((q = strstr(ln, "Function properties for "))) {
      sscanf(q + strlen("Function properties for "), "%127s", cur);
    } else if (strstr(ln, "bytes stack frame")) {
      long long stack = 0, ss = 0, sl = 0;
      const char *p = ln;
      while (*p && !isdigit((unsigned char)*p)) p++;
      if (sscanf(p, "%lld bytes stack frame, %lld bytes spill stores, %lld bytes spill loads", &stack,
                 &ss, &sl) == 3)
        for (int32_t i = 0; i < src->nk; i++)
          if (strcmp(src->k[i].function, cur) == 0) {
            src->k[i].stack = stack;
            src->k[i].spill_stores = ss;
            src->k[i].spill_loads = sl;
          }
    } else if ((q = strstr(ln, "Used "))) {
      int regs = 0;
      if (sscanf(q, "Used %d registers", &regs) == 1)
        for (int32_t i = 0; i < src->nk; i++)
          if (strcmp(src->k[i].function, cur) == 0) {
            src->k[i].registers = regs;
            src->k[i].have_usage = true;
          }
    }
    l = e ? e + 1 : NULL;
  }
}

/* ---- errors ------------------------------------------------------------------------- */

static void report_errors(ptc_module *m, ptc_cuda_src *src, const char *arch, const char *log) {
  int reported = 0;
  for (const char *l = log; l && *l && reported < 20;) {
    const char *e = strchr(l, '\n');
    size_t n = e ? (size_t)(e - l) : strlen(l);
    int line = 0;
    if (strstr(l, "error") && strstr(l, "error") < l + n &&
        sscanf(l, "kernels.cu(%d)", &line) == 1) {
      const ptc_cuda_kernel *k = NULL;
      for (int32_t i = 0; i < src->nk && !k; i++)
        if (src->k[i].line0 <= line && line < src->k[i].line1) k = &src->k[i];
      if (k && k->func && k->op >= 0) {
        const ptc_op *op = &k->func->ops[k->op];
        ptc_error(m->ctx, op->loc, "NVRTC cannot compile kernel %s (%s, at '%s' in @%s) for %s: %.*s",
                  k->name, k->kind, ptc_opinfo_get(op->code)->name, k->func->name, arch, (int)n, l);
      } else {
        ptc_error(m->ctx, ptc_loc_unknown, "NVRTC cannot compile the kernels' common code for "
                  "%s: %.*s", arch, (int)n, l);
      }
      reported++;
    }
    l = e ? e + 1 : NULL;
  }
  if (!reported)
    ptc_error(m->ctx, ptc_loc_unknown, "NVRTC cannot compile the kernels for %s:\n%s", arch, log);
}

/* ---- the manifest's description ---------------------------------------------------------- */

static void kernel_json(ptc_buf *b, const ptc_cuda_kernel *k) {
  ptc_buf_puts(b, "{\"name\": ");
  ptc__json_str(b, k->name);
  ptc_buf_puts(b, ", \"function\": ");
  ptc__json_str(b, k->function);
  ptc_buf_printf(b, ", \"kind\": \"%s\"", k->kind);
  if (k->group >= 0) ptc_buf_printf(b, ", \"group\": %lld", (long long)k->group);
  if (k->func) {
    ptc_buf_puts(b, ", \"func\": ");
    ptc__json_str(b, k->func->name);
  }
  if (k->func && k->op >= 0) {
    const ptc_op *op = &k->func->ops[k->op];
    ptc_buf_printf(b, ", \"op\": %d", k->op);
    if (op->loc.file) {
      char loc[600];
      snprintf(loc, sizeof loc, "%s:%d:%d", op->loc.file, op->loc.line, op->loc.col);
      ptc_buf_puts(b, ", \"loc\": ");
      ptc__json_str(b, loc);
    }
  }
  ptc_buf_printf(b, ", \"grid\": [%lld, %lld, %lld], \"block\": [%lld, %lld, %lld], \"shared_bytes\": 0",
                 (long long)k->grid[0], (long long)k->grid[1], (long long)k->grid[2],
                 (long long)k->block[0], (long long)k->block[1], (long long)k->block[2]);
  if (k->have_usage)
    ptc_buf_printf(b, ", \"registers\": %d, \"stack_bytes\": %lld, \"spill_stores\": %lld, "
                   "\"spill_loads\": %lld", k->registers, (long long)k->stack,
                   (long long)k->spill_stores, (long long)k->spill_loads);
  ptc_buf_puts(b, ", \"params\": ");
  ptc_buf_put(b, k->params.data ? k->params.data : "[]", k->params.data ? k->params.len : 2);
  if (k->extra.len) ptc_buf_put(b, k->extra.data, k->extra.len);
  ptc_buf_puts(b, "}");
}

static void info_json(ptc_cuda_out *out, ptc_cuda_src *src, const char *target, const char *ver) {
  ptc_buf *b = &out->info;
  int32_t distinct = 0;
  for (int32_t i = 0; i < src->nk; i++) distinct += strcmp(src->k[i].name, src->k[i].function) == 0;
  ptc_buf_puts(b, "{\"target\": ");
  ptc__json_str(b, target);
  ptc_buf_printf(b, ", \"arch\": \"%s\", \"nvrtc\": \"%s\", \"source\": \"kernels.cu\", "
                 "\"cubin\": \"kernels.%s.cubin\", \"ptx\": \"kernels.%s.ptx\", "
                 "\"abi\": \"group kernels: (inputs..., outputs..., int *status); sum/max outputs "
                 "are combined into what the buffer holds (fill with 0 / -inf first)\", "
                 "\"kernels\": %d, \"distinct_kernels\": %d, \"list\": [",
                 out->arch, ver, out->arch, out->arch, src->nk, distinct);
  for (int32_t i = 0; i < src->nk; i++) {
    ptc_buf_puts(b, i ? ",\n    " : "\n    ");
    kernel_json(b, &src->k[i]);
  }
  ptc_buf_puts(b, "],\n  \"matmuls\": ");
  ptc_buf_put(b, src->matmuls.data, src->matmuls.len);
  ptc_buf_puts(b, "}");
}

/* ---- driver --------------------------------------------------------------------------------- */

int ptc_codegen_cuda_source(ptc_module *m, ptc_buf *source) {
  ptc_cuda_src src;
  if (ptc__cuda_emit_module(m, &src) != 0) return -1;
  ptc_buf_put(source, src.text.data, src.text.len);
  ptc__cuda_src_fini(&src);
  return 0;
}

void ptc_cuda_out_fini(ptc_cuda_out *out) {
  ptc_buf_fini(&out->source);
  ptc_buf_fini(&out->ptx);
  ptc_buf_fini(&out->cubin);
  ptc_buf_fini(&out->info);
  ptc_buf_fini(&out->ptxas_log);
}

int ptc_codegen_cuda(ptc_module *m, const char *target, ptc_cuda_out *out) {
  memset(out, 0, sizeof *out);
  if (!ptc_cuda_target_parse(target, out->arch, sizeof out->arch)) {
    ptc_error(m->ctx, ptc_loc_unknown, "--target '%s': a CUDA target is cuda:sm_NN (e.g. "
              "cuda:sm_80, cuda:sm_90)", target);
    return -1;
  }
  char why[512];
  if (!nvrtc_open(why, sizeof why)) {
    ptc_error(m->ctx, ptc_loc_unknown, "--target %s needs NVRTC to compile the plan's kernels: %s",
              target, why);
    return -1;
  }
  char incbuf[600];
  const char *inc = cuda_include(incbuf, sizeof incbuf);
  if (!inc) {
    ptc_error(m->ctx, ptc_loc_unknown, "--target %s: NVRTC is '%s' but the CUDA headers "
              "(cuda_bf16.h) are not found: set PTC_CUDA_INCLUDE or CUDA_HOME to the toolkit",
              target, nv.path);
    return -1;
  }
  ptc_cuda_src src;
  if (ptc__cuda_emit_module(m, &src) != 0) return -1;
  int rc = -1;
  void *prog = NULL;
  char *log = NULL;
  int maj = 0, min = 0;
  nv.Version(&maj, &min);
  char ver[32];
  snprintf(ver, sizeof ver, "%d.%d", maj, min);
  int r = nv.CreateProgram(&prog, src.text.data, "kernels.cu", 0, NULL, NULL);
  if (r != 0) {
    ptc_error(m->ctx, ptc_loc_unknown, "NVRTC: cannot create a program: %s", nv.GetErrorString(r));
    goto out;
  }
  char archopt[64], incopt[700];
  snprintf(archopt, sizeof archopt, "--gpu-architecture=%s", out->arch);
  snprintf(incopt, sizeof incopt, "-I%s", inc);
  const char *opts[] = {archopt, "--std=c++17", "--fmad=false", "-Xptxas=-v", incopt};
  r = nv.CompileProgram(prog, PTC_ARRAY_LEN(opts), opts);
  size_t loglen = 0;
  nv.GetProgramLogSize(prog, &loglen);
  log = ptc_xcalloc(loglen + 1, 1);
  if (loglen) nv.GetProgramLog(prog, log);
  if (r != 0) {
    report_errors(m, &src, out->arch, log);
    goto out;
  }
  size_t n = 0;
  nv.GetCUBINSize(prog, &n);
  char *cub = ptc_xmalloc(n + 1);
  nv.GetCUBIN(prog, cub);
  ptc_buf_put(&out->cubin, cub, n);
  free(cub);
  n = 0;
  nv.GetPTXSize(prog, &n);
  char *ptx = ptc_xcalloc(n + 1, 1);
  nv.GetPTX(prog, ptx);
  ptc_buf_put(&out->ptx, ptx, strlen(ptx));
  free(ptx);
  ptc_buf_puts(&out->ptxas_log, log);
  parse_usage(&src, log);
  ptc_buf_put(&out->source, src.text.data, src.text.len);
  info_json(out, &src, target, ver);
  out->nkernels = src.nk;
  rc = 0;
out:
  if (prog) nv.DestroyProgram(&prog);
  free(log);
  ptc__cuda_src_fini(&src);
  if (rc != 0) {
    ptc_cuda_out_fini(out);
  }
  return rc;
}
