/* ptc.c -- the compiler driver: read a model, run a pass pipeline, emit.
 *
 *   ptc FILE.ptg|FILE.ptir [options]
 *
 * The driver owns the command line and the exit status, and nothing else:
 * reading, compiling, passes and printing are library calls.  Exit status:
 * 0 success; 1 a user error (bad input, a bad option value, a failed pass);
 * 2 a usage error (unknown option, missing argument).  Internal bugs abort
 * through ptc_fatal.  Output files are written atomically, so an error never
 * leaves a half-written -o file behind.  See docs/driver.md.
 */
#include <stdlib.h>
#include <string.h>

#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "codegen/memplan.h"
#if PTC_HAVE_PLAN
#include "codegen/codegen.h"
#include "codegen/cuda.h"
#endif

enum { EXIT_USER = 1, EXIT_USAGE = 2 };

/* ---- the option table ------------------------------------------------------ */

typedef enum opt_id {
  O_HELP,
  O_VERSION,
  O_LANG,
  O_OUT,
  O_EMIT,
  O_SET,
  O_BATCH,
  O_SEQ,
  O_MESH,
  O_ZERO,
  O_SEQ_PAR,
  O_PP_SCHEDULE,
  O_MICROBATCHES,
  O_VIRTUAL,
  O_TARGET,
  O_PIPELINE,
  O_PRINT_BEFORE_ALL,
  O_PRINT_AFTER_ALL,
  O_PRINT_BEFORE,
  O_PRINT_AFTER,
  O_PRINT_AFTER_CHANGE,
  O_PRINT_AFTER_FAILURE,
  O_DUMP_IR,
  O_VERIFY_EACH,
  O_NO_VERIFY_EACH,
  O_TIME_PASSES,
  O_REPORT,
  O_PRECISION,
  O_GRAD_DTYPE,
  O_RECOMPUTE,
  O_DEVICE_MEMORY,
} opt_id;

typedef enum arg_kind {
  ARG_NONE,     /* a flag: --report */
  ARG_REQUIRED, /* --mesh 2x4 or --mesh=2x4 */
  ARG_BOOL,     /* --verify-each or --verify-each=false */
  ARG_OPTIONAL, /* --report or --report=json (never the next argument) */
} arg_kind;

typedef struct option {
  const char *name; /* long name without "--" */
  char short_name;  /* or 0 */
  arg_kind arg;
  opt_id id;
  const char *metavar;
  const char *help;
  const char *section; /* starts a new section of --help when non-NULL */
} option;

static const option options[] = {
    {"lang", 'x', ARG_REQUIRED, O_LANG, "ptg|ptir",
     "input language (default: from the extension, .ptg or .ptir)", "Input"},
    {"set", 0, ARG_REQUIRED, O_SET, "K=V[,K=V...]",
     "override constants of a .ptg model (repeatable)", NULL},
    {"batch", 0, ARG_REQUIRED, O_BATCH, "N", "same as --set batch=N", NULL},
    {"seq", 0, ARG_REQUIRED, O_SEQ, "T", "same as --set seq=T", NULL},
    {"mesh", 0, ARG_REQUIRED, O_MESH, "SHAPE",
     "device mesh: 8 (dp), 2x4 (dp x tp), 2x2x2 (pp x dp x tp) or "
     "pp=2,dp=2,tp=2 (default: one device)",
     NULL},
    {"zero", 0, ARG_REQUIRED, O_ZERO, "0|1|2|3",
     "ZeRO stage over dp: 1 shards optimizer state, 2 also gradients, 3 also "
     "parameters (default 0; sets shard{zero=N} in the default pipeline)",
     NULL},
    {"pp-schedule", 0, ARG_REQUIRED, O_PP_SCHEDULE, "gpipe|1f1b|interleaved",
     "pipeline schedule over the mesh's pp axis (default 1f1b)", NULL},
    {"microbatches", 0, ARG_REQUIRED, O_MICROBATCHES, "M",
     "microbatches per step; each is --batch rows, so a step trains on M x batch "
     "(default 1)",
     NULL},
    {"virtual-stages", 0, ARG_REQUIRED, O_VIRTUAL, "V",
     "model chunks per pipeline stage (interleaved schedule)", NULL},
    {"sequence-parallel", 0, ARG_NONE, O_SEQ_PAR, NULL,
     "split activations outside tensor-parallel regions on their sequence "
     "dimension over tp (Megatron's sequence parallelism)",
     NULL},
    {"precision", 0, ARG_REQUIRED, O_PRECISION, "fp32|bf16|fp16",
     "store activations, gradients and weight copies at 16 bits with fp32 master "
     "weights and optimizer state; fp16 adds dynamic loss scaling (default fp32)",
     "Memory"},
    {"grad-dtype", 0, ARG_REQUIRED, O_GRAD_DTYPE, "low|fp32",
     "with --precision: gradients at 16 bits (low, the default) or fp32", NULL},
    {"recompute", 0, ARG_REQUIRED, O_RECOMPUTE, "none|selective|full|auto",
     "activation recomputation: selective recomputes the attention core, full keeps "
     "only each layer's input, auto the least that fits --device-memory",
     NULL},
    {"device-memory", 0, ARG_REQUIRED, O_DEVICE_MEMORY, "SIZE",
     "memory of one device, e.g. 80GiB: --report says whether every rank fits, "
     "--recompute auto makes it fit",
     NULL},
    {"pass-pipeline", 0, ARG_REQUIRED, O_PIPELINE, "P",
     "passes to run, e.g. 'canonicalize{max-iterations=4},cse,dce' "
     "(default: the default pipeline for .ptg, no passes for .ptir)",
     "Compilation"},
    {"verify-each", 0, ARG_BOOL, O_VERIFY_EACH, "[=true|false]",
     "verify the IR after every pass (default true)", NULL},
    {"no-verify-each", 0, ARG_NONE, O_NO_VERIFY_EACH, NULL,
     "same as --verify-each=false", NULL},
    {"emit", 0, ARG_REQUIRED, O_EMIT, "ir|dot",
     "what to write: the IR (.ptir text) or a Graphviz graph (default ir)",
     "Output"},
    {"output", 'o', ARG_REQUIRED, O_OUT, "OUT",
     "write the plan directory OUT for ptrun; with --emit, or when OUT is "
     "'-' (standard output) or ends in .ptir or .dot, write the IR (or "
     "graph) text there instead",
     NULL},
    {"target", 0, ARG_REQUIRED, O_TARGET, "cpu|cpu:generic|cpu:NAME|cuda:sm_NN",
     "what the plan's kernels are built for: this machine's CPU (default "
     "cpu), any x86-64 (cpu:generic), a named CPU such as cpu:x86-64-v3, or "
     "an NVIDIA GPU architecture such as cuda:sm_80 or cuda:sm_90 (CUDA C "
     "compiled with NVRTC, which must be installed; docs/cuda.md)",
     NULL},
    {"report", 0, ARG_OPTIONAL, O_REPORT, "[=text|json]",
     "print the plan's figures: per rank memory by category, FLOPs, bytes per mesh "
     "axis, pipeline bubble (json: the same, machine-readable)",
     NULL},
    {"print-ir-before-all", 0, ARG_NONE, O_PRINT_BEFORE_ALL, NULL,
     "print the IR to stderr before every pass", "Debugging"},
    {"print-ir-after-all", 0, ARG_NONE, O_PRINT_AFTER_ALL, NULL,
     "print the IR to stderr after every pass", NULL},
    {"print-ir-before", 0, ARG_REQUIRED, O_PRINT_BEFORE, "NAME[,NAME]",
     "print the IR before the named passes", NULL},
    {"print-ir-after", 0, ARG_REQUIRED, O_PRINT_AFTER, "NAME[,NAME]",
     "print the IR after the named passes", NULL},
    {"print-ir-after-change", 0, ARG_NONE, O_PRINT_AFTER_CHANGE, NULL,
     "print after a pass only if it changed the IR (alone: after every pass "
     "that changed it)",
     NULL},
    {"print-ir-after-failure", 0, ARG_NONE, O_PRINT_AFTER_FAILURE, NULL,
     "print the IR after a pass that fails", NULL},
    {"dump-ir", 0, ARG_REQUIRED, O_DUMP_IR, "DIR",
     "write DIR/00-input.ptir and DIR/NN-<pass>.ptir after each pass", NULL},
    {"time-passes", 0, ARG_NONE, O_TIME_PASSES, NULL,
     "print the wall time of each pass to stderr", NULL},
    {"help", 'h', ARG_NONE, O_HELP, NULL, "print this help and exit", "Other"},
    {"version", 0, ARG_NONE, O_VERSION, NULL, "print the version and exit",
     NULL},
};

/* ---- what the command line asked for ---------------------------------------- */

typedef enum lang { LANG_AUTO, LANG_PTG, LANG_PTIR } lang;
typedef enum emit_kind { EMIT_IR, EMIT_DOT } emit_kind;

typedef struct driver {
  ptc_ctx *ctx;
  const char *input;
  lang lang;
  ptc_define *defines; /* heap */
  int32_t ndefines;
  char **owned; /* heap strings the defines point into (--batch, --seq) */
  int32_t nowned;
  const char *mesh_text;
  int zero;             /* --zero, -1 when not given */
  const char *pp_schedule; /* --pp-schedule */
  long microbatches;       /* --microbatches, 0 when not given */
  long virtual_stages;     /* --virtual-stages, 0 when not given */
  bool sequence_parallel;
  const char *precision;  /* --precision: fp32, bf16, fp16 (NULL: not given) */
  const char *grad_dtype; /* --grad-dtype: low, fp32 */
  const char *recompute;  /* --recompute: none, selective, full, auto */
  int64_t device_memory;  /* --device-memory in bytes, 0 when not given */
  bool report_json;
  char *pipeline_owned; /* the default pipeline with shard options */
  const char *target; /* --target: cpu, cpu:generic, cpu:NAME */
  const char *pipeline_text; /* NULL: the default for the input language */
  const char *emit_text;
  emit_kind emit;
  bool emit_given;
  const char *out_path;
  bool report;
  bool help, version;
  ptc_pm_config pm;
} driver;

static void driver_fini(driver *d) {
  for (int32_t i = 0; i < d->nowned; i++) free(d->owned[i]);
  free(d->owned);
  free(d->pipeline_owned);
  free(d->defines);
}

/* ---- help ----------------------------------------------------------------- */

/* Prints "  LHS  help" with the help wrapped at 80 columns under column 32. */
static void help_row(FILE *f, const char *lhs, const char *help) {
  enum { COL = 32, WIDTH = 80 };
  int n = fprintf(f, "  %s", lhs);
  if (n + 2 > COL) {
    fputc('\n', f);
    n = 0;
  }
  const char *p = help;
  bool first = true;
  while (*p) {
    /* the longest run of words that fits in WIDTH - COL columns */
    size_t len = strlen(p), take = len;
    if (len > WIDTH - COL) {
      take = WIDTH - COL;
      while (take > 0 && p[take] != ' ') take--;
      if (take == 0) take = WIDTH - COL;
    }
    fprintf(f, "%*s%.*s\n", first ? COL - n : COL, "", (int)take, p);
    first = false;
    p += take;
    while (*p == ' ') p++;
  }
}

static void print_help(FILE *f) {
  fprintf(f,
          "usage: ptc FILE.ptg|FILE.ptir [options]\n"
          "\n"
          "Compiles a model (.ptg) or reads ptir (.ptir), runs a pass pipeline\n"
          "over it, and writes the result.  Options take values as --opt=V or\n"
          "--opt V; boolean options take =true or =false.\n");
  for (int i = 0; i < PTC_ARRAY_LEN(options); i++) {
    const option *o = &options[i];
    if (o->section) fprintf(f, "\n%s:\n", o->section);
    char lhs[80];
    int n = 0;
    if (o->short_name)
      n = snprintf(lhs, sizeof lhs, "-%c, --%s", o->short_name, o->name);
    else
      n = snprintf(lhs, sizeof lhs, "    --%s", o->name);
    if (o->metavar && n > 0 && (size_t)n < sizeof lhs)
      snprintf(lhs + n, sizeof lhs - (size_t)n, o->arg == ARG_BOOL || o->arg == ARG_OPTIONAL ? "%s" : " %s",
               o->metavar);
    help_row(f, lhs, o->help);
  }
  int32_t np;
  const ptc_pass_info *const *passes = ptc_pass_registry(&np);
  fprintf(f, "\nPasses (for --pass-pipeline; default pipeline: %s):\n",
          ptc_default_pipeline());
  for (int32_t i = 0; i < np; i++) {
    help_row(f, passes[i]->name, passes[i]->summary);
    for (int32_t k = 0; k < passes[i]->nopts; k++) {
      const ptc_pass_opt_spec *s = &passes[i]->opts[k];
      char lhs[80], help[512];
      char word[64];
      if (s->kind == PTC_PASS_OPT_INT) {
        snprintf(lhs, sizeof lhs, "  %s=N", s->name);
        snprintf(help, sizeof help, "%s (default %lld)", s->help, (long long)s->dflt);
      } else if (s->kind == PTC_PASS_OPT_FLOAT) {
        snprintf(lhs, sizeof lhs, "  %s=X", s->name);
        snprintf(help, sizeof help, "%s (default %g)", s->help, s->fdflt);
      } else if (s->kind == PTC_PASS_OPT_CHOICE) {
        snprintf(lhs, sizeof lhs, "  %s=%s", s->name, s->choices);
        snprintf(help, sizeof help, "%s (default %s)", s->help,
                 ptc_pass_choice_word(s->choices, (int)s->dflt, word, sizeof word));
      } else {
        snprintf(lhs, sizeof lhs, "  %s=true|false", s->name);
        snprintf(help, sizeof help, "%s (default %s)", s->help,
                 s->dflt ? "true" : "false");
      }
      help_row(f, lhs, help);
    }
  }
  fprintf(f,
          "\nExit status: 0 success, 1 an error in the input or an option "
          "value,\n2 a malformed command line.\n");
}

/* ---- argument parsing ------------------------------------------------------- */

static size_t edit_distance(const char *a, const char *b) {
  size_t na = strlen(a), nb = strlen(b);
  if (na > 64 || nb > 64) return 99;
  size_t row[65];
  for (size_t j = 0; j <= nb; j++) row[j] = j;
  for (size_t i = 1; i <= na; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= nb; j++) {
      size_t up = row[j];
      size_t best = diag + (a[i - 1] != b[j - 1]);
      if (row[j] + 1 < best) best = row[j] + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[nb];
}

static int usage_error(driver *d, const char *fmt, const char *arg) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_buf_printf(&b, fmt, arg);
  ptc_error(d->ctx, ptc_loc_unknown, "%s; see 'ptc --help'", b.data);
  ptc_buf_fini(&b);
  return EXIT_USAGE;
}

static int unknown_option(driver *d, const char *arg, size_t namelen) {
  char name[128];
  size_t n = namelen < sizeof name - 1 ? namelen : sizeof name - 1;
  memcpy(name, arg, n);
  name[n] = '\0';
  const char *best = NULL;
  size_t best_d = 3; /* suggest only close misspellings */
  for (int i = 0; i < PTC_ARRAY_LEN(options); i++) {
    size_t dist = edit_distance(name[1] == '-' ? name + 2 : name + 1, options[i].name);
    if (dist < best_d) {
      best_d = dist;
      best = options[i].name;
    }
  }
  if (best)
    ptc_error(d->ctx, ptc_loc_unknown,
              "unknown option '%s' (did you mean '--%s'?); see 'ptc --help'", name,
              best);
  else
    ptc_error(d->ctx, ptc_loc_unknown, "unknown option '%s'; see 'ptc --help'", name);
  return EXIT_USAGE;
}

static void add_defines(driver *d, const char *text, int *status) {
  if (ptc_defines_parse(d->ctx, text, &d->defines, &d->ndefines) != 0)
    *status = EXIT_USER;
}

/* Applies one option with its value (NULL for flags). */
static int apply_option(driver *d, const option *o, const char *val) {
  int status = 0;
  switch (o->id) {
  case O_HELP: d->help = true; break;
  case O_VERSION: d->version = true; break;
  case O_LANG:
    if (strcmp(val, "ptg") == 0) d->lang = LANG_PTG;
    else if (strcmp(val, "ptir") == 0) d->lang = LANG_PTIR;
    else {
      ptc_error(d->ctx, ptc_loc_unknown,
                "-x '%s': unknown language; use -x ptg or -x ptir", val);
      return EXIT_USER;
    }
    break;
  case O_OUT:
    if (!*val) {
      ptc_error(d->ctx, ptc_loc_unknown, "-o needs a file name ('-' for standard output)");
      return EXIT_USER;
    }
    d->out_path = val;
    break;
  case O_EMIT:
    d->emit_given = true;
    d->emit_text = val;
    if (strcmp(val, "ir") == 0) d->emit = EMIT_IR;
    else if (strcmp(val, "dot") == 0) d->emit = EMIT_DOT;
    else {
      ptc_error(d->ctx, ptc_loc_unknown, "--emit '%s': use --emit=ir or --emit=dot",
                val);
      return EXIT_USER;
    }
    break;
  case O_SET: add_defines(d, val, &status); break;
  case O_BATCH:
  case O_SEQ: {
    const char *k = o->id == O_BATCH ? "batch=" : "seq=";
    size_t n = strlen(k) + strlen(val) + 1;
    char *s = ptc_xmalloc(n);
    snprintf(s, n, "%s%s", k, val);
    d->owned = ptc_xrealloc(d->owned, (size_t)(d->nowned + 1) * sizeof *d->owned);
    d->owned[d->nowned++] = s;
    add_defines(d, s, &status);
    break;
  }
  case O_MESH: d->mesh_text = val; break;
  case O_ZERO:
    if (strlen(val) != 1 || val[0] < '0' || val[0] > '3') {
      ptc_error(d->ctx, ptc_loc_unknown, "--zero '%s': the ZeRO stages are 0, 1, 2 and 3",
                val);
      return EXIT_USER;
    }
    d->zero = val[0] - '0';
    break;
  case O_SEQ_PAR: d->sequence_parallel = true; break;
  case O_PP_SCHEDULE:
    if (strcmp(val, "gpipe") != 0 && strcmp(val, "1f1b") != 0 && strcmp(val, "interleaved") != 0) {
      ptc_error(d->ctx, ptc_loc_unknown, "--pp-schedule '%s': the schedules are gpipe, 1f1b "
                "and interleaved", val);
      return EXIT_USER;
    }
    d->pp_schedule = val;
    break;
  case O_MICROBATCHES:
  case O_VIRTUAL: {
    char *end;
    long n = strtol(val, &end, 10);
    if (*val == 0 || *end || n < 1 || n > (o->id == O_VIRTUAL ? 64 : 1 << 20)) {
      ptc_error(d->ctx, ptc_loc_unknown, "--%s '%s': expected a whole number from 1 to %d",
                o->id == O_VIRTUAL ? "virtual-stages" : "microbatches", val,
                o->id == O_VIRTUAL ? 64 : 1 << 20);
      return EXIT_USER;
    }
    if (o->id == O_VIRTUAL) d->virtual_stages = n;
    else d->microbatches = n;
    break;
  }
  case O_TARGET:
    if (strncmp(val, "cuda", 4) == 0) {
#if PTC_HAVE_PLAN
      char arch[16];
      if (!ptc_cuda_target_parse(val, arch, sizeof arch)) {
        ptc_error(d->ctx, ptc_loc_unknown, "--target '%s': a CUDA target names the GPU "
                  "architecture, cuda:sm_NN (e.g. cuda:sm_80 for A100, cuda:sm_90 for H100)", val);
        return EXIT_USER;
      }
#else
      ptc_error(d->ctx, ptc_loc_unknown, "--target '%s': this ptc was built without plan "
                "output (libjansson-dev, libssl-dev), which CUDA targets write", val);
      return EXIT_USER;
#endif
    } else if (strcmp(val, "cpu") != 0 && strncmp(val, "cpu:", 4) != 0) {
      ptc_error(d->ctx, ptc_loc_unknown, "--target '%s': the targets are cpu (this "
                "machine), cpu:generic (any x86-64) and cpu:NAME (e.g. cpu:x86-64-v3) for "
                "the CPU, cuda:sm_NN (e.g. cuda:sm_90) for an NVIDIA GPU", val);
      return EXIT_USER;
    }
    d->target = val;
    break;
  case O_PIPELINE: d->pipeline_text = val; break;
  case O_PRINT_BEFORE_ALL: d->pm.print_before_all = true; break;
  case O_PRINT_AFTER_ALL: d->pm.print_after_all = true; break;
  case O_PRINT_BEFORE:
    if (ptc_pass_names_check(d->ctx, "--print-ir-before", val) != 0) return EXIT_USER;
    d->pm.print_before = val;
    break;
  case O_PRINT_AFTER:
    if (ptc_pass_names_check(d->ctx, "--print-ir-after", val) != 0) return EXIT_USER;
    d->pm.print_after = val;
    break;
  case O_PRINT_AFTER_CHANGE: d->pm.print_after_change = true; break;
  case O_PRINT_AFTER_FAILURE: d->pm.print_after_failure = true; break;
  case O_DUMP_IR:
    if (!*val) {
      ptc_error(d->ctx, ptc_loc_unknown, "--dump-ir needs a directory name");
      return EXIT_USER;
    }
    d->pm.dump_dir = val;
    break;
  case O_VERIFY_EACH:
    if (!val || strcmp(val, "true") == 0 || strcmp(val, "1") == 0) {
      d->pm.verify_each = true;
    } else if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0) {
      d->pm.verify_each = false;
    } else {
      ptc_error(d->ctx, ptc_loc_unknown,
                "--verify-each='%s': use --verify-each=true or =false", val);
      return EXIT_USER;
    }
    break;
  case O_NO_VERIFY_EACH: d->pm.verify_each = false; break;
  case O_TIME_PASSES: d->pm.time_passes = true; break;
  case O_REPORT:
    if (val && strcmp(val, "json") != 0 && strcmp(val, "text") != 0) {
      ptc_error(d->ctx, ptc_loc_unknown, "--report='%s': use --report, --report=text or "
                "--report=json", val);
      return EXIT_USER;
    }
    d->report = true;
    d->report_json = val && strcmp(val, "json") == 0;
    break;
  case O_PRECISION:
  case O_GRAD_DTYPE:
  case O_RECOMPUTE: {
    static const char *const words[3][5] = {{"fp32", "bf16", "fp16", NULL},
                                            {"low", "fp32", NULL},
                                            {"none", "selective", "full", "auto", NULL}};
    int w = o->id == O_PRECISION ? 0 : o->id == O_GRAD_DTYPE ? 1 : 2;
    int k = 0;
    while (words[w][k] && strcmp(words[w][k], val) != 0) k++;
    if (!words[w][k]) {
      ptc_error(d->ctx, ptc_loc_unknown, "--%s '%s': use %s", o->name, val, o->metavar);
      return EXIT_USER;
    }
    if (w == 0) d->precision = words[w][k];
    else if (w == 1) d->grad_dtype = words[w][k];
    else d->recompute = words[w][k];
    break;
  }
  case O_DEVICE_MEMORY:
    if (ptc_parse_bytes(val, &d->device_memory) != 0 || d->device_memory <= 0) {
      ptc_error(d->ctx, ptc_loc_unknown, "--device-memory '%s': expected a size such as "
                "80GiB, 40GB, 512MiB or a number of bytes", val);
      return EXIT_USER;
    }
    break;
  }
  return status;
}

/* Parses argv into d.  Returns 0, EXIT_USER or EXIT_USAGE (reported).
 * Every option is applied in order, so later ones win. */
static int parse_args(driver *d, int argc, char **argv) {
  bool only_files = false;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (only_files || arg[0] != '-' || strcmp(arg, "-") == 0) {
      if (d->input)
        return usage_error(d, "more than one input file ('%s')", arg);
      d->input = arg;
      continue;
    }
    if (strcmp(arg, "--") == 0) {
      only_files = true;
      continue;
    }
    const option *o = NULL;
    const char *val = NULL;
    bool has_val = false;
    if (arg[1] == '-') {
      const char *name = arg + 2;
      const char *eq = strchr(name, '=');
      size_t n = eq ? (size_t)(eq - name) : strlen(name);
      for (int k = 0; k < PTC_ARRAY_LEN(options) && !o; k++)
        if (strlen(options[k].name) == n && memcmp(options[k].name, name, n) == 0)
          o = &options[k];
      if (!o) return unknown_option(d, arg, (size_t)(eq ? eq - arg : (ptrdiff_t)strlen(arg)));
      if (eq) {
        val = eq + 1;
        has_val = true;
      }
    } else {
      for (int k = 0; k < PTC_ARRAY_LEN(options) && !o; k++)
        if (options[k].short_name && options[k].short_name == arg[1]) o = &options[k];
      if (!o) return unknown_option(d, arg, strlen(arg));
      if (arg[2]) {
        if (o->arg != ARG_REQUIRED) return unknown_option(d, arg, strlen(arg));
        val = arg + 2; /* -xptir, -oOUT */
        has_val = true;
      }
    }
    if (o->arg == ARG_OPTIONAL && !has_val) val = NULL;
    if (o->arg == ARG_NONE && has_val) {
      char what[96];
      snprintf(what, sizeof what, "--%s", o->name);
      return usage_error(d, "option '%s' takes no value", what);
    }
    if (o->arg == ARG_REQUIRED && !has_val) {
      if (i + 1 >= argc) {
        char what[96];
        snprintf(what, sizeof what, "%s", arg);
        return usage_error(d, "option '%s' needs a value", what);
      }
      val = argv[++i];
    }
    int st = apply_option(d, o, val);
    if (st) return st;
  }
  return 0;
}

/* ---- steps ------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Standard input, for `ptc -x ptir -` in a pipe. */
static char *read_stdin(ptc_ctx *ctx, size_t *len_out) {
  ptc_buf b;
  ptc_buf_init(&b);
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0) ptc_buf_put(&b, chunk, n);
  if (ferror(stdin)) {
    ptc_error(ctx, ptc_loc_unknown, "cannot read standard input");
    ptc_buf_fini(&b);
    return NULL;
  }
  if (!b.data) ptc_buf_put(&b, "", 0);
  *len_out = b.len;
  return b.data;
}

static ptc_module *load_module(driver *d) {
  size_t len = 0;
  bool is_stdin = strcmp(d->input, "-") == 0;
  const char *name = is_stdin ? "<stdin>" : d->input;
  char *text = is_stdin ? read_stdin(d->ctx, &len) : ptc_read_file(d->ctx, d->input, &len);
  if (!text) return NULL;
  ptc_module *m;
  if (d->lang == LANG_PTG) {
    m = ptc_frontend_compile(d->ctx, name, text, len, d->defines, d->ndefines);
  } else {
    m = ptc_parse_module(d->ctx, name, text, len);
  }
  free(text);
  return m;
}

/* --mesh: the frontend's module gets it; a ptir module must agree with the
 * mesh its shardings were written for. */
static int apply_mesh(driver *d, ptc_module *m, const ptc_mesh *mesh) {
  if (!d->mesh_text) return 0;
  if (d->lang == LANG_PTIR && m->mesh.naxes > 0) {
    bool same = m->mesh.naxes == mesh->naxes;
    for (int i = 0; same && i < mesh->naxes; i++)
      same = strcmp(m->mesh.axes[i].name, mesh->axes[i].name) == 0 &&
             m->mesh.axes[i].size == mesh->axes[i].size;
    if (!same) {
      ptc_buf b;
      ptc_buf_init(&b);
      ptc_mesh_print(&b, &m->mesh);
      ptc_error(d->ctx, ptc_loc_unknown,
                "--mesh '%s': the input already has %s and its shardings refer to "
                "it; drop --mesh or edit the module's mesh",
                d->mesh_text, b.data);
      ptc_buf_fini(&b);
      return -1;
    }
  }
  m->mesh = *mesh;
  return 0;
}

static int cmp_count_desc(const void *a, const void *b) {
  const int64_t *x = a, *y = b; /* {count, opcode} pairs */
  if (x[0] != y[0]) return x[0] < y[0] ? 1 : -1;
  return x[1] < y[1] ? -1 : x[1] > y[1];
}

static void human_flops(ptc_buf *b, double v) {
  static const char *const units[] = {"", "k", "M", "G", "T", "P", "E"};
  int u = 0;
  while (v >= 1000.0 && u < PTC_ARRAY_LEN(units) - 1) {
    v /= 1000.0;
    u++;
  }
  ptc_buf_printf(b, "%.3g %sFLOP", v, units[u]);
}

/* The --report summary.  `parameters: N` is a plain integer so scripts can
 * read it. */
static void write_report(ptc_buf *b, const ptc_module *m, int64_t device_memory) {
  ptc_buf_printf(b, "module: @%s\n", m->name);
  if (m->mesh.naxes) {
    ptc_buf_puts(b, "mesh: ");
    ptc_mesh_print(b, &m->mesh);
    ptc_buf_printf(b, " (%lld devices)\n", (long long)ptc_mesh_size(&m->mesh));
  } else {
    ptc_buf_puts(b, "mesh: none (1 device)\n");
  }
  int64_t bytes = 0, state_bytes = 0;
  int32_t ntrain = 0;
  for (int32_t i = 0; i < m->nparams; i++) {
    if (m->params[i].trainable) {
      ntrain++;
      bytes += ptc_type_bytes(&m->params[i].type);
    } else {
      state_bytes += ptc_type_bytes(&m->params[i].type);
    }
  }
  ptc_buf_printf(b, "param tensors: %d\n", ntrain);
  ptc_buf_printf(b, "parameters: %lld\n", (long long)ptc_module_param_count(m));
  ptc_buf_printf(b, "parameter bytes: %lld (", (long long)bytes);
  ptc_buf_put_bytes(b, (double)bytes);
  ptc_buf_puts(b, ")\n");
  if (ntrain < m->nparams) {
    ptc_buf_printf(b, "state tensors: %d\n", m->nparams - ntrain);
    ptc_buf_printf(b, "state bytes: %lld (", (long long)state_bytes);
    ptc_buf_put_bytes(b, (double)state_bytes);
    ptc_buf_puts(b, ")\n");
  }
  ptc_buf_printf(b, "functions: %d\n", m->nfuncs);
  int64_t counts[PTC_OP_COUNT][2];
  for (int k = 0; k < PTC_OP_COUNT; k++) {
    counts[k][0] = 0;
    counts[k][1] = k;
  }
  int64_t total_ops = 0;
  for (int32_t i = 0; i < m->nfuncs; i++) {
    const ptc_func *f = m->funcs[i];
    ptc_buf_printf(b, "  @%s: %d args, %d results, %d ops\n", f->name, f->nargs,
                   f->nresults, f->nops);
    for (int32_t k = 0; k < f->nops; k++) counts[f->ops[k].code][0]++;
    total_ops += f->nops;
  }
  qsort(counts, PTC_OP_COUNT, sizeof counts[0], cmp_count_desc);
  ptc_buf_printf(b, "ops by kind: %lld in all\n", (long long)total_ops);
  for (int k = 0; k < PTC_OP_COUNT && counts[k][0] > 0; k++)
    ptc_buf_printf(b, "  %-16s %lld\n",
                   ptc_opinfo_get((ptc_opcode)counts[k][1])->name,
                   (long long)counts[k][0]);
  /* FLOPs of each function: @forward (the model as written) or @step
   * (forward, backward and update, once autodiff has run). */
  for (int32_t i = 0; i < m->nfuncs; i++) {
    const ptc_func *f = m->funcs[i];
    double flops = ptc_func_flops(f);
    ptc_buf_printf(b, "flops @%s: %.0f (", f->name, flops);
    human_flops(b, flops);
    ptc_buf_puts(b, " per call, whole mesh)\n");
  }
  /* per rank: the memory plan (codegen/memplan.c) */
  ptc_memplan plan;
  if (ptc_memplan_compute(m, &plan) != 0) return;
  const ptc_attr *rc = ptc_module_get_attr(m, "recompute.mode");
  const ptc_attr *pr = ptc_module_get_attr(m, "precision");
  const ptc_attr *rl = ptc_module_get_attr(m, "recompute.layers");
  const ptc_attr *ro = ptc_module_get_attr(m, "recompute.ops");
  ptc_buf_printf(b, "precision: %s, recompute: %s",
                 pr && pr->kind == PTC_ATTR_STR ? pr->u.s : "fp32",
                 rc && rc->kind == PTC_ATTR_STR ? rc->u.s : "none");
  if (rl && rl->kind == PTC_ATTR_INT && rc && strcmp(rc->u.s, "full") == 0)
    ptc_buf_printf(b, " (%lld layer%s)", (long long)rl->u.i, rl->u.i == 1 ? "" : "s");
  if (ro && ro->kind == PTC_ATTR_INT)
    ptc_buf_printf(b, ", %lld ops recomputed", (long long)ro->u.i);
  ptc_buf_puts(b, "\n");
  ptc_memplan_print(b, m, &plan, device_memory);
}

static int write_stdout(ptc_ctx *ctx, const ptc_buf *b) {
  if (b->len && fwrite(b->data, 1, b->len, stdout) != b->len) goto fail;
  if (fflush(stdout) != 0) goto fail;
  return 0;
fail:
  ptc_error(ctx, ptc_loc_unknown, "cannot write to standard output");
  return -1;
}

/* -o OUT without --emit writes a plan directory, except to standard output
 * and to files named like text (.ptir, .dot), which get the IR as before. */
static bool wants_plan(const driver *d) {
  return d->out_path && !d->emit_given && strcmp(d->out_path, "-") != 0 &&
         !ends_with(d->out_path, ".ptir") && !ends_with(d->out_path, ".dot");
}

static int write_plan(driver *d, ptc_module *m) {
#if PTC_HAVE_PLAN
  return ptc_plan_write_target(m, d->out_path, d->target ? d->target : "cpu");
#else
  ptc_error(d->ctx, ptc_loc_unknown,
            "-o '%s': this ptc was built without plan output (install libjansson-dev "
            "and libssl-dev, then reconfigure); use --emit=ir to write the IR",
            d->out_path);
  return -1;
#endif
}

/* Whether a flag sets an option of a default-pipeline pass. */
static bool driver_pass_opts(const driver *d) {
  return d->zero >= 0 || d->sequence_parallel || d->pp_schedule || d->microbatches ||
         d->virtual_stages || d->precision || d->grad_dtype;
}

/* The default pipeline with the options the flags set, each written on the
 * pass it belongs to: precision{...}, recompute{...}, pipeline{...},
 * shard{...}.  recompute_layers > 0 recomputes only that many layers
 * (full mode; --recompute auto's search). */
static char *default_with_options(const driver *d, const char *recompute, long layers) {
  const char *dp = ptc_default_pipeline();
  ptc_buf b;
  ptc_buf_init(&b);
  const char *p = dp;
  while (*p) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    ptc_buf_put(&b, p, n);
    if (n == 9 && !memcmp(p, "precision", 9) && d->precision)
      ptc_buf_printf(&b, "{dtype=%s,grad-dtype=%s}", d->precision,
                     d->grad_dtype ? d->grad_dtype : "low");
    else if (n == 9 && !memcmp(p, "recompute", 9) && recompute) {
      ptc_buf_printf(&b, "{mode=%s", recompute);
      if (layers > 0) ptc_buf_printf(&b, ",layers=%ld", layers);
      ptc_buf_puts(&b, "}");
    } else if (n == 8 && !memcmp(p, "pipeline", 8))
      ptc_buf_printf(&b, "{schedule=%s,microbatches=%ld,virtual-stages=%ld}",
                     d->pp_schedule ? d->pp_schedule : "1f1b",
                     d->microbatches ? d->microbatches : 1,
                     d->virtual_stages ? d->virtual_stages : 1);
    else if (n == 5 && !memcmp(p, "shard", 5))
      ptc_buf_printf(&b, "{zero=%d,sequence-parallel=%s}", d->zero < 0 ? 0 : d->zero,
                     d->sequence_parallel ? "true" : "false");
    if (!e) break;
    ptc_buf_puts(&b, ",");
    p = e + 1;
  }
  ptc_buf_put(&b, "", 1);
  return b.data;
}

/* Reads the input and runs pipe over it: the compiled module, or NULL
 * (reported). */
static ptc_module *compile(driver *d, const ptc_mesh *mesh, ptc_pipeline *pipe) {
  ptc_module *m = load_module(d);
  if (!m) return NULL;
  if (d->target && strncmp(d->target, "cuda:", 5) == 0) {
    /* the memory plan of a GPU: kernels widen 16-bit values in registers,
     * so no op needs f32 scratch (codegen/liveness.c) */
    ptc_attr dev = ptc_attr_str("device", "gpu");
    ptc_module_set_attr(m, &dev);
  }
  /* The input must be valid before any pass sees it (a pass may assume it). */
  if (apply_mesh(d, m, mesh) != 0 || ptc_verify_module(m) != 0 ||
      ptc_pipeline_run(m, pipe, &d->pm) != 0) {
    ptc_module_destroy(m);
    return NULL;
  }
  return m;
}

/* One candidate of --recompute auto: the module, its largest rank total
 * and its hardware FLOPs per step (all groups), or -1. */
static int try_recompute(driver *d, const ptc_mesh *mesh, const char *mode, long layers,
                         ptc_module **mo, int64_t *need, int64_t *rank, double *hw) {
  char *text = default_with_options(d, mode, layers);
  ptc_pipeline *pipe = ptc_pipeline_parse(d->ctx, text);
  free(text);
  if (!pipe) return -1;
  ptc_pm_config quiet = d->pm; /* dumps and prints belong to the chosen one */
  ptc_pm_config_init(&d->pm);
  d->pm.verify_each = quiet.verify_each;
  ptc_module *m = compile(d, mesh, pipe);
  d->pm = quiet;
  ptc_pipeline_destroy(pipe);
  if (!m) return -1;
  ptc_memplan plan;
  if (ptc_memplan_compute(m, &plan) != 0) {
    ptc_module_destroy(m);
    return -1;
  }
  *need = 0;
  *hw = 0;
  for (int32_t i = 0; i < plan.ngroups; i++) {
    if (plan.groups[i].total > *need) {
      *need = plan.groups[i].total;
      *rank = plan.groups[i].first_rank;
    }
    *hw += plan.groups[i].hw_flops * (double)plan.groups[i].nranks;
  }
  *mo = m;
  return 0;
}

/* --recompute auto: the least recomputation under which every rank fits
 * --device-memory, among none, selective, and full recomputation of the
 * first k layers (k = 1 .. all; more layers never need more memory, so k is
 * found by bisection).  Candidates are compiled whole: the figures compared
 * are the exact plans.  What was tried and chosen goes to `why`. */
static int recompute_auto(driver *d, const ptc_mesh *mesh, ptc_module **out, ptc_buf *why) {
  int64_t limit = d->device_memory, need, rank;
  double hw, hw0 = 0;
  ptc_module *m = NULL;
  ptc_buf_puts(why, "recompute auto (--device-memory ");
  ptc_buf_put_bytes(why, (double)limit);
  ptc_buf_puts(why, "):\n");
  static const char *const modes[] = {"none", "selective"};
  for (int i = 0; i < 2; i++) {
    if (try_recompute(d, mesh, modes[i], 0, &m, &need, &rank, &hw) != 0) return -1;
    if (i == 0) hw0 = hw;
    ptc_buf_printf(why, "  %-22s rank %lld needs ", modes[i], (long long)rank);
    ptc_buf_put_bytes(why, (double)need);
    if (need <= limit) {
      ptc_buf_printf(why, ": fits; chosen (recompute adds %.2f%% FLOPs)\n",
                     hw0 > 0 ? 100 * (hw - hw0) / hw0 : 0.0);
      *out = m;
      return 0;
    }
    ptc_buf_puts(why, ": does not fit\n");
    ptc_module_destroy(m);
  }
  /* a model without repeated layers has no full recomputation: say so */
  ptc_ctx_set_diag_capture(d->ctx, true);
  int frc = try_recompute(d, mesh, "full", 0, &m, &need, &rank, &hw);
  ptc_ctx_set_diag_capture(d->ctx, false);
  if (frc != 0) {
    const char *text = ptc_ctx_diag_text(d->ctx);
    bool no_layers = strstr(text, "found no layers") != NULL;
    if (!no_layers) fputs(text, stderr);
    if (no_layers) {
      ptc_buf_puts(why, "  full                   not available: the model has no repeated "
                   "layers\n");
      ptc_error(d->ctx, ptc_loc_unknown, "--recompute auto: the model does not fit in "
                "--device-memory with selective recomputation, and it has no repeated "
                "layers to recompute whole; use more devices (a larger tp, pp or ZeRO stage) "
                "or a smaller batch");
      fputs(why->data, stderr);
    }
    return -1;
  }
  const ptc_attr *la = ptc_module_get_attr(m, "recompute.layers");
  long L = la && la->kind == PTC_ATTR_INT ? (long)la->u.i : 0;
  ptc_buf_printf(why, "  %-22s rank %lld needs ", "full (every layer)", (long long)rank);
  ptc_buf_put_bytes(why, (double)need);
  if (need > limit) {
    ptc_buf_puts(why, ": does not fit\n");
    ptc_module_destroy(m);
    ptc_buf nb;
    ptc_buf_init(&nb);
    ptc_buf_put_bytes(&nb, (double)need);
    ptc_buf_puts(&nb, " of ");
    ptc_buf_put_bytes(&nb, (double)limit);
    ptc_error(d->ctx, ptc_loc_unknown, "--recompute auto: the model does not fit in "
              "--device-memory even with full recomputation: rank %lld needs %s; use more "
              "devices (a larger tp, pp or ZeRO stage) or a smaller batch", (long long)rank,
              nb.data);
    ptc_buf_fini(&nb);
    fputs(why->data, stderr);
    return -1;
  }
  ptc_buf_puts(why, ": fits\n");
  ptc_module *best = m;
  double best_hw = hw;
  long lo = 1, hi = L; /* hi fits (L: every layer) */
  while (L > 1 && lo < hi) {
    long mid = lo + (hi - lo) / 2;
    ptc_module *c = NULL;
    if (try_recompute(d, mesh, "full", mid, &c, &need, &rank, &hw) != 0) {
      ptc_module_destroy(best);
      return -1;
    }
    char label[64];
    snprintf(label, sizeof label, "full on %ld of %ld layers", mid % 100000000L, L % 100000000L);
    ptc_buf_printf(why, "  %-22s rank %lld needs ", label, (long long)rank);
    ptc_buf_put_bytes(why, (double)need);
    if (need <= limit) {
      ptc_buf_puts(why, ": fits\n");
      ptc_module_destroy(best);
      best = c;
      best_hw = hw;
      hi = mid;
    } else {
      ptc_buf_puts(why, ": does not fit\n");
      ptc_module_destroy(c);
      lo = mid + 1;
    }
  }
  ptc_buf_printf(why, "  chosen: full recomputation of %ld of %ld layers (recompute adds "
                 "%.2f%% FLOPs)\n", hi, L, hw0 > 0 ? 100 * (best_hw - hw0) / hw0 : 0.0);
  *out = best;
  return 0;
}

/* The whole compilation, after the command line is understood. */
static int run(driver *d) {
  ptc_mesh mesh;
  memset(&mesh, 0, sizeof mesh);
  if (d->mesh_text) {
    char err[256];
    if (ptc_mesh_parse(d->mesh_text, &mesh, err, sizeof err) != 0) {
      ptc_error(d->ctx, ptc_loc_unknown, "--mesh '%s': %s", d->mesh_text, err);
      return EXIT_USER;
    }
  }
  if (d->lang == LANG_AUTO) {
    if (ends_with(d->input, ".ptg")) d->lang = LANG_PTG;
    else if (ends_with(d->input, ".ptir")) d->lang = LANG_PTIR;
    else if (strcmp(d->input, "-") == 0) {
      ptc_error(d->ctx, ptc_loc_unknown,
                "reading standard input needs the language: -x ptg or -x ptir");
      return EXIT_USER;
    } else {
      ptc_error(d->ctx, ptc_loc_unknown,
                "cannot tell the language of '%s' from its name; use -x ptg or "
                "-x ptir", d->input);
      return EXIT_USER;
    }
  }
  if (d->lang == LANG_PTIR && d->ndefines > 0) {
    ptc_error(d->ctx, ptc_loc_unknown,
              "--set, --batch and --seq set constants of a .ptg model; '%s' is "
              "ptir", d->input);
    return EXIT_USER;
  }
  const char *ptext = d->pipeline_text;
  if (ptext && (driver_pass_opts(d) || d->recompute)) {
    ptc_error(d->ctx, ptc_loc_unknown, "--zero, --sequence-parallel, --pp-schedule, "
              "--microbatches, --virtual-stages, --precision, --grad-dtype and --recompute "
              "set options of the default pipeline's passes; with --pass-pipeline write "
              "them there, e.g. precision{dtype=bf16},recompute{mode=full},"
              "pipeline{schedule=1f1b,microbatches=4},...,shard{zero=2}");
    return EXIT_USER;
  }
  if (d->recompute && !strcmp(d->recompute, "auto") && d->device_memory <= 0) {
    ptc_error(d->ctx, ptc_loc_unknown, "--recompute auto chooses what to recompute so that "
              "every rank fits in --device-memory; give it, e.g. --device-memory 80GiB");
    return EXIT_USER;
  }
  if (!ptext && d->lang == LANG_PTG && (driver_pass_opts(d) || d->recompute)) {
    d->pipeline_owned = default_with_options(d, d->recompute && strcmp(d->recompute, "auto")
                                                    ? d->recompute : "none", 0);
    ptext = d->pipeline_owned;
  }
  if (!ptext) ptext = d->lang == LANG_PTG ? ptc_default_pipeline() : "";
  ptc_pipeline *pipe = ptc_pipeline_parse(d->ctx, ptext);
  if (!pipe) return EXIT_USER;

  int status = EXIT_USER;
  ptc_buf out;
  ptc_buf_init(&out);
  ptc_module *m = NULL;
  ptc_buf why; /* what --recompute auto tried and chose */
  ptc_buf_init(&why);
  if (d->recompute && !strcmp(d->recompute, "auto") && !d->pipeline_text &&
      d->lang == LANG_PTG) {
    if (recompute_auto(d, &mesh, &m, &why) != 0) goto done;
  } else {
    m = compile(d, &mesh, pipe);
    if (!m) goto done;
  }

  /* Output: the emitted form goes to -o or stdout; --report and --dump-ir
   * are outputs of their own, so with them stdout gets the IR only when
   * --emit asks for it. */
  bool emit = d->out_path || d->emit_given || !(d->report || d->pm.dump_dir);
  if (emit && wants_plan(d)) {
    if (write_plan(d, m) != 0) goto done;
  } else if (emit) {
    if (d->emit == EMIT_DOT) ptc_print_dot(&out, m);
    else ptc_print_module(&out, m);
    bool to_stdout = !d->out_path || strcmp(d->out_path, "-") == 0;
    if (to_stdout ? write_stdout(d->ctx, &out) != 0
                  : ptc_write_file_atomic(d->ctx, d->out_path,
                                          out.len ? out.data : "", out.len) != 0)
      goto done;
  }
  if (d->report) {
    ptc_buf rb;
    ptc_buf_init(&rb);
    if (d->report_json) {
      ptc_memplan plan;
      if (ptc_memplan_compute(m, &plan) == 0) ptc_memplan_json(&rb, m, &plan, d->device_memory);
      else ptc_buf_puts(&rb, "{}\n");
    } else {
      write_report(&rb, m, d->device_memory);
      if (why.len) ptc_buf_put(&rb, why.data, why.len);
    }
    int wr = write_stdout(d->ctx, &rb);
    ptc_buf_fini(&rb);
    if (wr != 0) goto done;
  } else if (why.len) {
    fwrite(why.data, 1, why.len, stderr);
  }
  status = 0;
done:
  ptc_buf_fini(&out);
  ptc_buf_fini(&why);
  ptc_module_destroy(m);
  ptc_pipeline_destroy(pipe);
  return status;
}

int main(int argc, char **argv) {
  driver d;
  memset(&d, 0, sizeof d);
  d.ctx = ptc_ctx_create();
  d.zero = -1;
  ptc_pm_config_init(&d.pm);
  int status = parse_args(&d, argc, argv);
  if (status == 0) {
    if (d.help) {
      print_help(stdout);
    } else if (d.version) {
      printf("ptc %s\n", PTC_VERSION_STRING);
    } else if (!d.input) {
      status = usage_error(&d, "no input file%s", "");
    } else {
      status = run(&d);
    }
  }
  driver_fini(&d);
  ptc_ctx_destroy(d.ctx);
  return status;
}
