/* passes.h -- the pass manager: passes as data, pipelines as strings.
 *
 * A pass is a row of data (ptc_pass_info): a name, a one-line summary, the
 * options it takes and a run function.  Every pass is listed once, in
 * passes/registry.c, next to the default pipeline string.  A pipeline is
 * text in MLIR's syntax, `canonicalize{max-iterations=4},cse,dce`, parsed
 * into a ptc_pipeline and run over one module by ptc_pipeline_run, which also
 * does the instrumentation (IR dumps before/after passes, --dump-ir files,
 * verification after each pass, timing).
 *
 * Invariants:
 *  - A pass takes a verified module and leaves a verified module, or returns
 *    -1 after reporting through ptc_error on the module's context.
 *  - A pass sets *changed to true when it changed the module (it may be left
 *    false only when the printed IR is identical before and after).
 *  - Passes keep no state between runs: everything they need is in the
 *    module and in their options.
 *
 * Ownership: ptc_pipeline_parse returns a pipeline the caller owns
 * (ptc_pipeline_destroy); ptc_pass_info rows are static and never freed.
 */
#ifndef PTC_PASSES_H
#define PTC_PASSES_H

#include "ir/ir.h"

/* ---- options ----------------------------------------------------------- */

typedef enum ptc_pass_opt_kind {
  PTC_PASS_OPT_INT,    /* an integer in [min, max] */
  PTC_PASS_OPT_BOOL,   /* true/false/1/0; a bare `name` means true */
  PTC_PASS_OPT_FLOAT,  /* a finite number in [fmin, fmax] */
  PTC_PASS_OPT_CHOICE, /* one word of `choices` ("adamw|sgd"); value = its index */
} ptc_pass_opt_kind;

/* One option a pass accepts, e.g. canonicalize's max-iterations. */
typedef struct ptc_pass_opt_spec {
  const char *name; /* spelling in the pipeline, e.g. "max-iterations" */
  ptc_pass_opt_kind kind;
  int64_t dflt; /* default value (bool: 0 or 1) */
  int64_t min, max; /* accepted range for INT options */
  const char *help; /* one line */
  double fdflt, fmin, fmax; /* FLOAT options: default and range */
  const char *choices;      /* CHOICE options: "a|b|c"; dflt is an index */
} ptc_pass_opt_spec;

#define PTC_PASS_MAX_OPTS 12

/* The option values one pass instance runs with: every option of its spec,
 * in spec order, defaulted where the pipeline did not set it. */
typedef struct ptc_pass_opts {
  const struct ptc_pass_info *pass;
  int64_t value[PTC_PASS_MAX_OPTS]; /* INT, BOOL, CHOICE (index) */
  double fvalue[PTC_PASS_MAX_OPTS]; /* FLOAT */
  bool given[PTC_PASS_MAX_OPTS];
} ptc_pass_opts;

/* Value of option `name` of the pass.  Asking for an option the pass does
 * not declare is an internal bug (aborts). */
int64_t ptc_pass_opt_int(const ptc_pass_opts *o, const char *name);
bool ptc_pass_opt_bool(const ptc_pass_opts *o, const char *name);
double ptc_pass_opt_float(const ptc_pass_opts *o, const char *name);
/* Index of the chosen word in the option's `choices`. */
int ptc_pass_opt_choice(const ptc_pass_opts *o, const char *name);
/* The n-th word of a "a|b|c" choices string, into buf. */
const char *ptc_pass_choice_word(const char *choices, int n, char *buf, size_t len);

/* ---- passes ------------------------------------------------------------ */

/* Runs the pass over m.  Returns 0, or -1 after reporting an error. */
typedef int (*ptc_pass_fn)(ptc_module *m, const ptc_pass_opts *o,
                           bool *changed);

typedef struct ptc_pass_info {
  const char *name;    /* as written in pipelines: "canonicalize" */
  const char *summary; /* one line for --help */
  const ptc_pass_opt_spec *opts;
  int32_t nopts; /* <= PTC_PASS_MAX_OPTS */
  ptc_pass_fn run;
} ptc_pass_info;

/* The passes, each defined in passes/<name>.c. */
extern const ptc_pass_info ptc_pass_canonicalize;
extern const ptc_pass_info ptc_pass_cse;
extern const ptc_pass_info ptc_pass_dce;
extern const ptc_pass_info ptc_pass_autodiff;
extern const ptc_pass_info ptc_pass_optimizer;
extern const ptc_pass_info ptc_pass_fuse;
extern const ptc_pass_info ptc_pass_shard;
extern const ptc_pass_info ptc_pass_pipeline;
extern const ptc_pass_info ptc_pass_comm_check;
extern const ptc_pass_info ptc_pass_bucket;
extern const ptc_pass_info ptc_pass_precision;
extern const ptc_pass_info ptc_pass_recompute;

/* Mixed precision (passes/precision.c): the name suffix of a 16-bit
 * weight copy ("bf16", "f16"; NULL for other dtypes), and the 16-bit copy
 * of trainable parameter p (the state variable @<p>.<suffix> the step
 * reads in its place), or -1 when p has none. */
const char *ptc_precision_suffix(ptc_dtype t);
int32_t ptc_precision_copy_of(const ptc_module *m, int32_t p);

/* pipeline.c: the schedule of a pipelined module run in a timing model
 * (each forward or backward unit takes its chunk's FLOPs on one rank, a
 * transfer is ready when its sender's unit ends), checking every transfer's
 * order, microbatch, shape and dtype, that every stage reaches the end, and
 * that the once-per-step functions meet in the same collectives over pp.
 * Returns 0, or -1 (reported when `report`).  Modules without a pipeline:
 * stages = 0. */
#define PTC_PIPE_MAX_STAGES 64
typedef struct ptc_pipe_sim {
  int32_t stages;
  int64_t fwd_units, bwd_units;
  double busy[PTC_PIPE_MAX_STAGES];        /* FLOPs of work per stage */
  double makespan;                         /* FLOPs-time to the last unit's end */
  int64_t inflight_bytes[PTC_PIPE_MAX_STAGES]; /* peak stashed activations */
} ptc_pipe_sim;
int ptc_pipeline_simulate(ptc_module *m, ptc_pipe_sim *out, bool report);
/* The bubble: idle over ideal time, (makespan - mean busy) / mean busy. */
double ptc_pipe_bubble(const ptc_pipe_sim *sim);
/* The stage a pipeline function runs on (@fwd.<c>, @bwd.<c>: c mod stages;
 * @step.<s>: s), or -1 for another function. */
int32_t ptc_pipe_stage_of(const ptc_func *f, int32_t stages);
/* What the variables a stage's functions read take (m localized: each of
 * its ranks): trainable elements and bytes, state bytes. */
void ptc_pipe_stage_vars(const ptc_module *m, int32_t stage, int32_t stages, int64_t *count,
                         int64_t *param_bytes, int64_t *state_bytes);
extern const ptc_pass_info ptc_pass_partition;

/* Helpers passes share.  dce.c: removes the pure ops of f whose results
 * nothing uses (one reverse sweep); returns how many it removed. */
int32_t ptc_dce_func(ptc_func *f);

/* ---- registry.c --------------------------------------------------------- */

/* Every registered pass, in the order --help lists them. */
const ptc_pass_info *const *ptc_pass_registry(int32_t *n);
/* The pass named s[0..n), or NULL. */
const ptc_pass_info *ptc_pass_find(const char *s, size_t n);
/* The pipeline ptc runs on .ptg input when --pass-pipeline is not given. */
const char *ptc_default_pipeline(void);
/* Appends "canonicalize, cse, dce" (the registered names) to b. */
void ptc_pass_list_names(ptc_buf *b);

/* ---- manager.c: pipelines ------------------------------------------------ */

typedef struct ptc_pipeline_entry {
  const ptc_pass_info *pass;
  ptc_pass_opts opts;
} ptc_pipeline_entry;

typedef struct ptc_pipeline {
  int32_t n;
  ptc_pipeline_entry *entries; /* heap */
} ptc_pipeline;

/* Parses a pipeline (grammar in manager.c).  `text` is registered as the
 * source "<command line>" so errors point into it with a caret.  Returns a
 * pipeline the caller owns, or NULL after reporting. */
ptc_pipeline *ptc_pipeline_parse(ptc_ctx *ctx, const char *text);
void ptc_pipeline_destroy(ptc_pipeline *p);
/* Appends the canonical text of p (options only where given). */
void ptc_pipeline_print(ptc_buf *b, const ptc_pipeline *p);

/* Checks a comma-separated list of pass names (the value of option
 * `option`, e.g. "--print-ir-after"); reports an unknown name with a caret
 * and the list of known passes.  Returns 0 or -1. */
int ptc_pass_names_check(ptc_ctx *ctx, const char *option, const char *names);

/* ---- manager.c: running ---------------------------------------------------- */

/* Instrumentation, with MLIR's meanings.  Initialise with
 * ptc_pm_config_init, then set fields. */
typedef struct ptc_pm_config {
  bool print_before_all;
  bool print_after_all;
  const char *print_before; /* comma-separated pass names, or NULL */
  const char *print_after;  /* comma-separated pass names, or NULL */
  /* Print after a pass only when it changed the printed IR.  Alone it means
   * "after every pass that changed something"; with print_after_all or
   * print_after it filters those. */
  bool print_after_change;
  bool print_after_failure; /* print the IR after a pass (or its verify) fails */
  const char *dump_dir;     /* write 00-input.ptir, NN-<pass>.ptir; or NULL */
  bool verify_each;         /* verify after every pass (default true) */
  bool time_passes;         /* print an execution-time report */
  FILE *dump_stream;        /* IR dumps; NULL means stderr */
  FILE *timing_stream;      /* the time report; NULL means stderr */
} ptc_pm_config;

void ptc_pm_config_init(ptc_pm_config *c);

/* Runs every pass of p over m in order, with c's instrumentation (c may be
 * NULL: defaults).  Stops at the first failure: a pass error, a verifier
 * failure after a pass (reported naming the pass), or a failed dump write.
 * Returns 0 or -1 (reported). */
int ptc_pipeline_run(ptc_module *m, const ptc_pipeline *p,
                     const ptc_pm_config *c);

/* ---- manager.c: files ----------------------------------------------------- */

/* Writes data to path atomically (path.tmp, then rename), so a failure never
 * leaves a half-written file; on failure removes the temporary, reports an
 * error naming the path and the system's reason, and returns -1. */
int ptc_write_file_atomic(ptc_ctx *ctx, const char *path, const char *data,
                          size_t len);
/* Creates directory `path` and missing parents (an existing directory is
 * fine).  Reports and returns -1 on failure. */
int ptc_make_dirs(ptc_ctx *ctx, const char *path);

#endif /* PTC_PASSES_H */
