/* cpu.c -- the CPU code generator: fused groups to a shared object,
 * ahead of time, through the LLVM 14 C API.
 *
 * One LLVM module holds a function per group (cpu_emit.c writes them);
 * LLVM's O3 pipeline (the new pass manager, LLVMRunPasses) optimizes it for
 * the target CPU, the target machine writes an object file, and the
 * system C compiler links that into the .so the plan carries.  ptrun
 * dlopen()s it (runtime/fused.c) and never needs LLVM.
 *
 * Targets: "cpu" is the machine ptc runs on (LLVMGetHostCPUName and its
 * features), "cpu:generic" baseline x86-64 (SSE2), "cpu:NAME" a CPU LLVM
 * knows by name.  The instruction-set extensions the code may use are
 * recorded ("requires" in the info JSON) so ptrun can refuse, by name, a
 * plan built for a CPU it is not running on.
 */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

#include "codegen/codegen.h"
#include "codegen/cpu_internal.h"

#ifndef PTC_CC_PATH
#define PTC_CC_PATH ""
#endif

extern char **environ;

/* ---- targets ------------------------------------------------------------- */

/* Extensions ptrun checks with __builtin_cpu_supports (same spelling as
 * LLVM's feature names). */
static const char *const checkable[] = {
    "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma", "bmi", "bmi2",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512vnni",
};

#define V2 "sse3,ssse3,sse4.1,sse4.2,popcnt"
#define V3 V2 ",avx,avx2,fma,bmi,bmi2"
#define V4 V3 ",avx512f,avx512dq,avx512cd,avx512bw,avx512vl"

/* x86 CPUs by LLVM name, with what they require of the machine. */
static const struct {
  const char *name, *requires;
} named_cpus[] = {
    {"x86-64", ""},
    {"x86-64-v2", V2},
    {"x86-64-v3", V3},
    {"x86-64-v4", V4},
    {"nehalem", V2},
    {"westmere", V2},
    {"sandybridge", V2 ",avx"},
    {"ivybridge", V2 ",avx"},
    {"haswell", V3},
    {"broadwell", V3},
    {"skylake", V3},
    {"alderlake", V3},
    {"znver1", V3},
    {"znver2", V3},
    {"znver3", V3},
    {"skylake-avx512", V4},
    {"cascadelake", V4 ",avx512vnni"},
    {"cooperlake", V4 ",avx512vnni"},
    {"icelake-client", V4 ",avx512vnni"},
    {"icelake-server", V4 ",avx512vnni"},
    {"tigerlake", V4 ",avx512vnni"},
    {"sapphirerapids", V4 ",avx512vnni"},
};

typedef struct target {
  char kind[16];      /* "cpu" */
  char *cpu;          /* heap */
  char *features;     /* heap: the LLVM feature string ("" for a named CPU) */
  char requires[256]; /* comma-separated checkable extensions */
  char *triple;       /* LLVM message: LLVMDisposeMessage */
  int W;
} target;

static void target_fini(target *t) {
  free(t->cpu);
  free(t->features);
  if (t->triple) LLVMDisposeMessage(t->triple);
  memset(t, 0, sizeof *t);
}

static bool has_word(const char *list, const char *w) {
  size_t n = strlen(w);
  for (const char *p = list; (p = strstr(p, w)) != NULL; p += n)
    if ((p == list || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return true;
  return false;
}

static int resolve_target(ptc_ctx *ctx, const char *spec, target *t) {
  memset(t, 0, sizeof *t);
  snprintf(t->kind, sizeof t->kind, "cpu");
  t->triple = LLVMGetDefaultTargetTriple();
  bool x86 = strncmp(t->triple, "x86_64", 6) == 0;
  if (strcmp(spec, "cpu") == 0) {
    char *name = LLVMGetHostCPUName(), *feat = LLVMGetHostCPUFeatures();
    t->cpu = strdup(name);
    t->features = strdup(feat);
    LLVMDisposeMessage(name);
    LLVMDisposeMessage(feat);
    /* the checkable extensions the feature string turns on */
    size_t n = 0;
    for (int i = 0; i < PTC_ARRAY_LEN(checkable); i++) {
      char plus[32];
      snprintf(plus, sizeof plus, "+%s", checkable[i]);
      size_t pl = strlen(plus);
      for (const char *p = t->features; (p = strstr(p, plus)) != NULL; p += pl)
        if ((p[pl] == 0 || p[pl] == ',') && (p == t->features || p[-1] == ',')) {
          n += (size_t)snprintf(t->requires + n, sizeof t->requires - n, "%s%s", n ? "," : "",
                                checkable[i]);
          break;
        }
    }
  } else if (strncmp(spec, "cpu:", 4) == 0 && spec[4]) {
    const char *name = spec + 4;
    if (strcmp(name, "generic") == 0) name = x86 ? "x86-64" : "generic";
    t->cpu = strdup(name);
    t->features = strdup("");
    bool known = !x86;
    for (int i = 0; i < PTC_ARRAY_LEN(named_cpus) && !known; i++)
      if (strcmp(named_cpus[i].name, name) == 0) {
        snprintf(t->requires, sizeof t->requires, "%s", named_cpus[i].requires);
        known = true;
      }
    if (!known) {
      ptc_buf b;
      ptc_buf_init(&b);
      for (int i = 0; i < PTC_ARRAY_LEN(named_cpus); i++)
        ptc_buf_printf(&b, "%s%s", i ? ", " : "", named_cpus[i].name);
      ptc_error(ctx, ptc_loc_unknown, "--target %s: unknown CPU '%s'; known CPUs: generic, %s",
                spec, name, b.data);
      ptc_buf_fini(&b);
      target_fini(t);
      return -1;
    }
  } else {
    ptc_error(ctx, ptc_loc_unknown, "--target %s: unknown target; use cpu (this machine), "
              "cpu:generic (any x86-64) or cpu:NAME (e.g. cpu:x86-64-v3)", spec);
    target_fini(t);
    return -1;
  }
  /* 256-bit vectors where AVX exists (also on AVX-512 machines, whose
   * 512-bit units slow the clock that the BLAS shares); else SSE's 128 */
  t->W = has_word(t->requires, "avx") ? 8 : 4;
  return 0;
}

/* ---- the module ------------------------------------------------------------ */

typedef struct build {
  target t;
  LLVMTargetMachineRef tm;
  ptc_cg g;
  int32_t nkernels;  /* groups, each a symbol */
  int32_t ndistinct; /* kernels compiled (the others are aliases) */
} build;

static void build_fini(build *b) {
  if (b->g.B) LLVMDisposeBuilder(b->g.B);
  if (b->g.M) LLVMDisposeModule(b->g.M);
  if (b->g.C) LLVMContextDispose(b->g.C);
  if (b->tm) LLVMDisposeTargetMachine(b->tm);
  target_fini(&b->t);
}

/* A group's structure, as text: input types, each op with its operands
 * (input k, or result r of the group's op i), attributes but `group` and `recompute`,
 * result types, and which results leave the group.  Groups with equal
 * keys compute the same function of their buffers, so they share one
 * kernel: a transformer's layers repeat the same few groups, and
 * compiling each once cuts LLVM's time by the number of layers. */
static void group_key(ptc_buf *b, const ptc_func *f, const ptc_group_sig *sig) {
  for (int32_t k = 0; k < sig->nin; k++) {
    ptc_type_print(b, &f->values[sig->in[k]].type);
    ptc_buf_puts(b, ",");
  }
  for (int32_t i = sig->first; i < sig->end; i++) {
    const ptc_op *op = &f->ops[i];
    ptc_buf_printf(b, ";%s", ptc_opinfo_get(op->code)->name);
    for (int32_t a = 0; a < op->nin; a++) {
      const ptc_value *v = &f->values[op->in[a]];
      if (v->kind == PTC_VALUE_OP && v->def >= sig->first && v->def < sig->end) {
        ptc_buf_printf(b, " v%d.%d", (int)(v->def - sig->first), (int)v->res);
      } else {
        for (int32_t k = 0; k < sig->nin; k++)
          if (sig->in[k] == op->in[a]) ptc_buf_printf(b, " i%d", (int)k);
      }
    }
    for (int32_t a = 0; a < op->nattr; a++) {
      const ptc_attr *at = &op->attrs[a];
      if (strcmp(at->name, PTC_GROUP_ATTR) == 0 || strcmp(at->name, "recompute") == 0) continue;
      ptc_buf_printf(b, " %s=", at->name);
      switch (at->kind) {
      case PTC_ATTR_INT: ptc_buf_printf(b, "%lld", (long long)at->u.i); break;
      case PTC_ATTR_FLOAT: ptc_buf_put_double(b, at->u.f); break;
      case PTC_ATTR_BOOL: ptc_buf_puts(b, at->u.b ? "true" : "false"); break;
      case PTC_ATTR_STR: case PTC_ATTR_SYM: ptc_buf_puts(b, at->u.s); break;
      case PTC_ATTR_DTYPE: ptc_buf_puts(b, ptc_dtype_name(at->u.dtype)); break;
      case PTC_ATTR_INTS:
        for (int32_t k = 0; k < at->u.ints.n; k++)
          ptc_buf_printf(b, "%s%lld", k ? "," : "[", (long long)at->u.ints.v[k]);
        ptc_buf_puts(b, "]");
        break;
      }
    }
    for (int32_t r = 0; r < op->nout; r++) {
      ptc_buf_puts(b, r ? "," : " :");
      ptc_type_print(b, &f->values[op->out[r]].type);
    }
  }
  ptc_buf_puts(b, ";out");
  for (int32_t o = 0; o < sig->nout; o++) {
    const ptc_value *v = &f->values[sig->out[o]];
    ptc_buf_printf(b, " v%d.%d", (int)(v->def - sig->first), (int)v->res);
  }
}

typedef struct kernel_seen {
  char *key; /* heap */
  LLVMValueRef fn;
} kernel_seen;

/* Every group of every function: checks ids are unique in the module. */
static int emit_all(ptc_module *m, build *b) {
  int32_t nids = 0, cap = 0, nseen = 0;
  int64_t *ids = NULL;
  kernel_seen *seen = NULL;
  int rc = 0;
  for (int32_t fi = 0; fi < m->nfuncs && rc == 0; fi++) {
    ptc_func *f = m->funcs[fi];
    for (int32_t i = 0; i < f->nops && rc == 0;) {
      int64_t id = ptc_op_group(&f->ops[i]);
      if (id < 0) {
        i++;
        continue;
      }
      for (int32_t k = 0; k < nids; k++)
        if (ids[k] == id) {
          ptc_error(m->ctx, f->ops[i].loc, "group %lld appears twice in the module; "
                    "group ids must be unique to name their kernels (rerun fuse)",
                    (long long)id);
          rc = -1;
        }
      if (rc) break;
      if (nids == cap) {
        cap = cap ? 2 * cap : 64;
        ids = ptc_xrealloc(ids, (size_t)cap * sizeof *ids);
        seen = ptc_xrealloc(seen, (size_t)cap * sizeof *seen);
      }
      ids[nids++] = id;
      ptc_group_sig sig;
      if (ptc_group_signature(f, i, &sig) < 0) {
        rc = -1;
        break;
      }
      ptc_buf key;
      ptc_buf_init(&key);
      group_key(&key, f, &sig);
      LLVMValueRef same = NULL;
      for (int32_t k = 0; k < nseen && !same; k++)
        if (strcmp(seen[k].key, key.data) == 0) same = seen[k].fn;
      if (same) {
        char name[48];
        ptc_group_kernel_name(sig.id, name, sizeof name);
        LLVMAddAlias2(b->g.M, LLVMGlobalGetValueType(same), 0, same, name);
        ptc_buf_fini(&key);
      } else {
        seen[nseen].key = key.data; /* the buffer's heap string, kept */
        rc = ptc__cg_emit_group(&b->g, f, &sig, &seen[nseen].fn);
        nseen++;
        b->ndistinct++;
      }
      i = sig.end;
      ptc_group_sig_fini(&sig);
      b->nkernels++;
    }
  }
  for (int32_t k = 0; k < nseen; k++) free(seen[k].key);
  free(seen);
  free(ids);
  return rc;
}

/* Target, module, kernels, verification, O3.  On success b holds the
 * optimized module. */
static int build_module(ptc_module *m, const char *spec, build *b) {
  ptc_ctx *ctx = m->ctx;
  memset(b, 0, sizeof *b);
  if (LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter()) {
    ptc_error(ctx, ptc_loc_unknown, "LLVM has no code generator for this machine");
    return -1;
  }
  if (resolve_target(ctx, spec, &b->t) < 0) return -1;
  LLVMTargetRef T;
  char *msg = NULL;
  if (LLVMGetTargetFromTriple(b->t.triple, &T, &msg)) {
    ptc_error(ctx, ptc_loc_unknown, "LLVM cannot generate code for %s: %s", b->t.triple, msg);
    LLVMDisposeMessage(msg);
    return -1;
  }
  b->tm = LLVMCreateTargetMachine(T, b->t.triple, b->t.cpu, b->t.features,
                                  LLVMCodeGenLevelAggressive, LLVMRelocPIC,
                                  LLVMCodeModelDefault);
  b->g.C = LLVMContextCreate();
  b->g.M = LLVMModuleCreateWithNameInContext("ptc_kernels", b->g.C);
  b->g.B = LLVMCreateBuilderInContext(b->g.C);
  b->g.W = b->t.W;
  b->g.cpu = b->t.cpu;
  b->g.features = b->t.features;
  LLVMSetTarget(b->g.M, b->t.triple);
  LLVMTargetDataRef dl = LLVMCreateTargetDataLayout(b->tm);
  LLVMSetModuleDataLayout(b->g.M, dl);
  LLVMDisposeTargetData(dl);
  if (emit_all(m, b) < 0) return -1;
  if (LLVMVerifyModule(b->g.M, LLVMReturnStatusAction, &msg)) {
    /* a bug in cpu_emit.c, not in the user's program */
    ptc_error(ctx, ptc_loc_unknown, "internal error: the generated kernels do not verify: %s",
              msg);
    LLVMDisposeMessage(msg);
    return -1;
  }
  LLVMDisposeMessage(msg);
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(po, 1);
  LLVMPassBuilderOptionsSetSLPVectorization(po, 1);
  LLVMPassBuilderOptionsSetLoopUnrolling(po, 1);
  LLVMPassBuilderOptionsSetLoopInterleaving(po, 1);
  LLVMErrorRef err = LLVMRunPasses(b->g.M, "default<O3>", b->tm, po);
  LLVMDisposePassBuilderOptions(po);
  if (err) {
    char *e = LLVMGetErrorMessage(err);
    ptc_error(ctx, ptc_loc_unknown, "internal error: LLVM's optimizer failed: %s", e);
    LLVMDisposeErrorMessage(e);
    return -1;
  }
  return 0;
}

/* ---- linking ------------------------------------------------------------------ */

bool ptc_codegen_cpu_can_link(char *why, size_t len) {
  const char *cc = PTC_CC_PATH;
  if (cc[0] && access(cc, X_OK) == 0) return true;
  if (why && len)
    snprintf(why, len, "no C compiler at '%s' (found when ptc was configured)",
             cc[0] ? cc : "(none found)");
  return false;
}

static int link_shared(ptc_ctx *ctx, const char *obj, const char *out) {
  const char *cc = PTC_CC_PATH;
  if (!ptc_codegen_cpu_can_link(NULL, 0)) {
    ptc_error(ctx, ptc_loc_unknown, "cannot link the kernels: no C compiler at '%s' (found "
              "when ptc was configured); install one (apt-get install gcc) and reconfigure",
              cc[0] ? cc : "(none found)");
    return -1;
  }
  char *argv[] = {(char *)cc, "-shared", "-Wl,-z,noexecstack", "-o", (char *)out,
                  (char *)obj, "-lm", NULL};
  pid_t pid;
  int rc = posix_spawn(&pid, cc, NULL, NULL, argv, environ);
  if (rc != 0) {
    ptc_error(ctx, ptc_loc_unknown, "cannot run the C compiler %s to link the kernels: %s", cc,
              strerror(rc));
    return -1;
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) {
      ptc_error(ctx, ptc_loc_unknown, "waiting for %s: %s", cc, strerror(errno));
      return -1;
    }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ptc_error(ctx, ptc_loc_unknown, "linking the kernels into %s failed (%s %s); its "
              "messages are above", out, cc,
              WIFEXITED(status) ? "exited with an error" : "was killed");
    return -1;
  }
  return 0;
}

static void put_json_str(ptc_buf *b, const char *s) {
  ptc_buf_puts(b, "\"");
  for (; *s; s++) {
    if (*s == '"' || *s == '\\') ptc_buf_printf(b, "\\%c", *s);
    else if ((unsigned char)*s < 0x20) ptc_buf_printf(b, "\\u%04x", *s);
    else ptc_buf_put(b, s, 1);
  }
  ptc_buf_puts(b, "\"");
}

int ptc_codegen_cpu(ptc_module *m, const char *target_spec, const char *out_so, ptc_buf *info) {
  build b;
  int rc = build_module(m, target_spec, &b);
  char *obj = NULL;
  if (rc == 0) {
    size_t n = strlen(out_so) + 8;
    obj = ptc_xmalloc(n);
    snprintf(obj, n, "%s.o", out_so);
    char *msg = NULL;
    if (LLVMTargetMachineEmitToFile(b.tm, b.g.M, obj, LLVMObjectFile, &msg)) {
      ptc_error(m->ctx, ptc_loc_unknown, "cannot write the kernels' object file %s: %s", obj,
                msg);
      LLVMDisposeMessage(msg);
      rc = -1;
    } else {
      rc = link_shared(m->ctx, obj, out_so);
      remove(obj);
    }
  }
  if (rc == 0 && info) {
    ptc_buf_puts(info, "{\"target\": ");
    put_json_str(info, target_spec);
    ptc_buf_puts(info, ", \"cpu\": ");
    put_json_str(info, b.t.cpu);
    ptc_buf_puts(info, ", \"triple\": ");
    put_json_str(info, b.t.triple);
    ptc_buf_puts(info, ", \"features\": ");
    put_json_str(info, b.t.features);
    ptc_buf_puts(info, ", \"requires\": ");
    put_json_str(info, b.t.requires);
    ptc_buf_printf(info, ", \"vector_width\": %d, \"kernels\": %d, \"distinct_kernels\": %d}",
                   b.t.W, (int)b.nkernels, (int)b.ndistinct);
  }
  free(obj);
  build_fini(&b);
  return rc;
}

int ptc_codegen_cpu_ir(ptc_module *m, const char *target_spec, ptc_buf *ir) {
  build b;
  int rc = build_module(m, target_spec, &b);
  if (rc == 0) {
    char *s = LLVMPrintModuleToString(b.g.M);
    ptc_buf_puts(ir, s);
    LLVMDisposeMessage(s);
  }
  build_fini(&b);
  return rc;
}
