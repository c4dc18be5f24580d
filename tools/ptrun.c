/* ptrun.c -- runs a plan: trains (or evaluates) a model on CPU ranks.
 *
 *   ptrun PLAN --data FILE[,FILE...] --steps N [options]
 *   mpirun -np 8 ptrun PLAN ...      (a plan for a mesh of 8 devices)
 *
 * The tool owns the command line, the loop over steps, what is printed and
 * the exit status; loading, kernels, data and weights are library calls
 * (runtime/ptrt.h).  Exit status: 0 success; 1 a bad plan, data file,
 * weights file or a failed step; 2 a malformed command line.
 *
 * A plan for one device runs on one process.  A plan for a mesh of N > 1
 * devices runs as N ranks started by a launcher (mpirun, srun), one per
 * device: every rank executes the plan's local view on its own pieces,
 * builds the same global batch and keeps its block of it.  Rank 0 alone
 * prints and writes --log; diagnostics of any rank go to its standard
 * error prefixed "rank N: ", and a rank that fails ends every rank
 * (ptrt_comm_abort) so none waits for it.  A pipelined plan (a mesh with a
 * pp axis) runs one stage per pp coordinate: setup_pipe and train_pipe
 * below.  See docs/runtime.md.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ptc_config.h"
#include "codegen/memplan.h"
#include "runtime/ckpt.h"
#include "runtime/cuda.h"
#include "runtime/ptrt.h"

enum { EXIT_USER = 1, EXIT_USAGE = 2 };

/* ---- options ---------------------------------------------------------------- */

typedef struct config {
  const char *plan;
  const char **data, **val; /* heap lists of paths */
  int32_t ndata, nval;
  char **owned; /* heap copies the lists point into */
  int32_t nowned;
  const char *inputs, *val_inputs;
  int64_t steps;
  double lr, min_lr;
  bool min_lr_given;
  int64_t warmup, decay_steps;
  bool warmup_given, decay_given;
  uint64_t seed;
  int threads;
  const char *log;
  int64_t val_every, val_batches;
  bool val_every_given;
  double peak_gflops;
  const char *save, *load;
  const char *resume; /* "": the newest checkpoint in --ckpt-dir */
  const char *ckpt_dir, *ckpt_durable;
  int64_t ckpt_every, ckpt_keep, ckpt_durable_every, nan_patience;
  bool ckpt_async;
  ptrt_on_nan on_nan;
  int64_t print_every;
  bool check_numerics, profile, check_memory;
  int64_t device_memory; /* --device-memory: bytes a rank may hold, 0: no limit */
  double timeout;
  const char *comm_stats;
  bool help, version;
} config;

/* K_OPTSTR: a string that may be left out ("" then) */
typedef enum opt_kind { K_FLAG, K_STR, K_OPTSTR, K_LIST, K_INT, K_FLOAT } opt_kind;

typedef struct option {
  const char *name;
  opt_kind kind;
  const char *metavar, *help;
} option;

static const option options[] = {
    {"data", K_LIST, "FILE[,FILE]", "llm.c token files, read as one stream (repeatable)"},
    {"val", K_LIST, "FILE[,FILE]", "validation token files (or, for --inputs models, a "
                                   "safetensors file)"},
    {"inputs", K_STR, "F.safetensors", "inputs that are not tokens, one tensor [N, ...] per "
                                       "argument of the step, named after it"},
    {"steps", K_INT, "N", "the number of the last step (required)"},
    {"lr", K_FLOAT, "X", "peak learning rate (default 1e-3)"},
    {"warmup", K_INT, "W", "linear warm-up steps (default: N/10, at most 100)"},
    {"decay-steps", K_INT, "D", "step where the cosine decay reaches --min-lr (default N)"},
    {"min-lr", K_FLOAT, "X", "learning rate at the end of the decay (default lr/10)"},
    {"seed", K_INT, "S", "seed of the parameter init (default 1337)"},
    {"threads", K_INT, "N", "threads of this rank (default: cores / ranks on the node)"},
    {"log", K_STR, "FILE.jsonl", "JSON lines: the configuration, then one object per step"},
    {"val-every", K_INT, "K", "validation loss every K steps (default N/10) and at the end"},
    {"val-batches", K_INT, "V", "batches per validation (default 8)"},
    {"peak-gflops", K_FLOAT, "G", "the peak MFU is measured against (default: measure "
                                  "sgemm at start)"},
    {"save-weights", K_STR, "F.safetensors", "write the trained parameters at the end"},
    {"load-weights", K_STR, "F.safetensors", "start from these parameters instead of the "
                                             "init"},
    {"ckpt-dir", K_STR, "DIR", "write checkpoints into DIR/step-N: sharded, atomic, loadable "
                               "on any mesh (docs/checkpoints.md)"},
    {"ckpt-every", K_INT, "N", "a checkpoint every N steps; one is always written at --steps "
                               "and on SIGTERM or SIGUSR1 (then ptrun stops)"},
    {"ckpt-keep", K_INT, "K", "keep the newest K checkpoints in --ckpt-dir (default: all)"},
    {"ckpt-async", K_FLAG, NULL, "write checkpoints in the background from a copy of the "
                                 "variables taken at the step boundary"},
    {"ckpt-durable", K_STR, "DIR", "a second tier for rarer checkpoints (and the last); "
                                   "--ckpt-dir keeps none older than its newest"},
    {"ckpt-durable-every", K_INT, "M", "a checkpoint into --ckpt-durable every M steps"},
    {"resume", K_OPTSTR, "[PATH]", "continue from the newest checkpoint in --ckpt-dir (a fresh "
                                   "start when there is none), or from PATH"},
    {"on-nan", K_STR, "skip|stop", "undo a step whose loss or gradient norm is not finite; "
                                   "stop: stop after --nan-patience in a row, checkpointing"},
    {"nan-patience", K_INT, "K", "with --on-nan stop: undone steps in a row before stopping "
                                 "(default 1)"},
    {"print-every", K_INT, "K", "print one step line every K steps (default 1)"},
    {"timeout", K_FLOAT, "SECONDS", "a rank of a multi-rank run that waits this long for "
                                    "a peer stops every rank, naming the collective "
                                    "(default 300)"},
    {"comm-stats", K_STR, "FILE.jsonl", "write, from rank 0, one JSON line per rank: the bytes "
                                        "and calls of a training step per mesh axis"},
    {"check-numerics", K_FLAG, NULL, "stop at the first op that produces a NaN or an "
                                     "infinity, naming it"},
    {"profile", K_FLAG, NULL, "print the time spent in each kind of op at the end"},
    {"device-memory", K_STR, "SIZE", "the memory of one device, e.g. 80GiB: a rank whose "
                                     "memory plan needs more stops before it starts"},
    {"check-memory", K_FLAG, NULL, "check that no two live buffers ever share a byte, and "
                                   "that what each rank holds equals the plan's memory plan "
                                   "(ptc --report); a difference stops the run"},
    {"help", K_FLAG, NULL, "print this help and exit"},
    {"version", K_FLAG, NULL, "print the version and exit"},
};

static void print_help(FILE *f) {
  fprintf(f, "usage: ptrun PLAN --data FILE[,FILE...] --steps N [options]\n"
             "\n"
             "Trains the model of PLAN (a directory written by 'ptc MODEL.ptg -o PLAN')\n"
             "on CPU, or on NVIDIA GPUs for a plan written with --target cuda:sm_NN\n"
             "(each rank takes the GPU of its node-local rank), printing one line per\n"
             "step.  A plan without a training step (@forward only) is evaluated on\n"
             "the same batches.  A plan for a mesh of N devices runs as N ranks:\n"
             "'mpirun -np N ptrun PLAN ...' (or srun -n N).\n\n");
  enum { COL = 32, WIDTH = 80 };
  for (int i = 0; i < PTC_ARRAY_LEN(options); i++) {
    char lhs[64];
    snprintf(lhs, sizeof lhs, "--%s%s%s", options[i].name, options[i].metavar ? " " : "",
             options[i].metavar ? options[i].metavar : "");
    int n = fprintf(f, "  %s", lhs);
    if (n + 1 > COL) {
      fputc('\n', f);
      n = 0;
    }
    /* the help, wrapped at WIDTH under column COL */
    const char *p = options[i].help;
    for (bool first = true; *p; first = false) {
      size_t len = strlen(p), take = len;
      if (len > WIDTH - COL) {
        take = WIDTH - COL;
        while (take > 0 && p[take] != ' ') take--;
        if (take == 0) take = WIDTH - COL;
      }
      fprintf(f, "%*s%.*s\n", first ? COL - n : COL, "", (int)take, p);
      p += take;
      while (*p == ' ') p++;
    }
  }
  fprintf(f, "\nExit status: 0 success, 1 a bad plan, file or step, 2 a malformed "
             "command line.\n");
}

static int usage(const char *fmt, const char *arg) {
  fprintf(stderr, "ptrun: error: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "; see 'ptrun --help'\n");
  return EXIT_USAGE;
}

/* Appends the comma-separated paths of val to a list. */
static void add_list(config *c, const char ***list, int32_t *n, const char *val) {
  char *copy = strdup(val);
  PTC_ASSERT(copy);
  c->owned = ptc_xrealloc(c->owned, (size_t)(c->nowned + 1) * sizeof *c->owned);
  c->owned[c->nowned++] = copy;
  for (char *p = copy, *tok; (tok = strtok_r(p, ",", &p)) != NULL;) {
    *list = ptc_xrealloc(*list, (size_t)(*n + 1) * sizeof **list);
    (*list)[(*n)++] = tok;
  }
}

static void config_fini(config *c) {
  for (int32_t i = 0; i < c->nowned; i++) free(c->owned[i]);
  free(c->owned);
  free(c->data);
  free(c->val);
}

static int set_option(config *c, const option *o, const char *val) {
  char *end = NULL;
  long long iv = 0;
  double fv = 0;
  if (o->kind == K_INT) {
    iv = strtoll(val, &end, 10);
    if (!*val || *end || iv < 0) {
      fprintf(stderr, "ptrun: error: --%s '%s': expected a non-negative integer\n", o->name,
              val);
      return EXIT_USER;
    }
  } else if (o->kind == K_FLOAT) {
    fv = strtod(val, &end);
    if (!*val || *end || !(fv >= 0) || isinf(fv)) {
      fprintf(stderr, "ptrun: error: --%s '%s': expected a non-negative number\n", o->name,
              val);
      return EXIT_USER;
    }
  }
  const char *n = o->name;
  if (!strcmp(n, "data")) add_list(c, &c->data, &c->ndata, val);
  else if (!strcmp(n, "val")) add_list(c, &c->val, &c->nval, val);
  else if (!strcmp(n, "inputs")) c->inputs = val;
  else if (!strcmp(n, "steps")) c->steps = iv;
  else if (!strcmp(n, "lr")) c->lr = fv;
  else if (!strcmp(n, "warmup")) c->warmup = iv, c->warmup_given = true;
  else if (!strcmp(n, "decay-steps")) c->decay_steps = iv, c->decay_given = true;
  else if (!strcmp(n, "min-lr")) c->min_lr = fv, c->min_lr_given = true;
  else if (!strcmp(n, "seed")) c->seed = (uint64_t)iv;
  else if (!strcmp(n, "threads")) {
    if (iv < 1 || iv > 4096) {
      fprintf(stderr, "ptrun: error: --threads %s: expected 1 to 4096\n", val);
      return EXIT_USER;
    }
    c->threads = (int)iv;
  } else if (!strcmp(n, "log")) c->log = val;
  else if (!strcmp(n, "val-every")) c->val_every = iv, c->val_every_given = true;
  else if (!strcmp(n, "val-batches")) c->val_batches = iv;
  else if (!strcmp(n, "peak-gflops")) c->peak_gflops = fv;
  else if (!strcmp(n, "save-weights")) c->save = val;
  else if (!strcmp(n, "load-weights")) c->load = val;
  else if (!strcmp(n, "resume")) c->resume = val;
  else if (!strcmp(n, "ckpt-dir")) c->ckpt_dir = val;
  else if (!strcmp(n, "ckpt-every")) c->ckpt_every = iv;
  else if (!strcmp(n, "ckpt-keep")) c->ckpt_keep = iv;
  else if (!strcmp(n, "ckpt-async")) c->ckpt_async = true;
  else if (!strcmp(n, "ckpt-durable")) c->ckpt_durable = val;
  else if (!strcmp(n, "ckpt-durable-every")) c->ckpt_durable_every = iv;
  else if (!strcmp(n, "nan-patience")) c->nan_patience = iv;
  else if (!strcmp(n, "on-nan")) {
    if (strcmp(val, "skip") && strcmp(val, "stop")) {
      fprintf(stderr, "ptrun: error: --on-nan %s: expected skip or stop\n", val);
      return EXIT_USER;
    }
    c->on_nan = !strcmp(val, "skip") ? PTRT_ON_NAN_SKIP : PTRT_ON_NAN_STOP;
  }
  else if (!strcmp(n, "print-every")) c->print_every = iv ? iv : 1;
  else if (!strcmp(n, "timeout")) {
    if (!(fv > 0)) {
      fprintf(stderr, "ptrun: error: --timeout %s: expected a positive number of seconds\n",
              val);
      return EXIT_USER;
    }
    c->timeout = fv;
  } else if (!strcmp(n, "comm-stats")) c->comm_stats = val;
  else if (!strcmp(n, "check-numerics")) c->check_numerics = true;
  else if (!strcmp(n, "profile")) c->profile = true;
  else if (!strcmp(n, "check-memory")) c->check_memory = true;
  else if (!strcmp(n, "device-memory")) {
    if (ptc_parse_bytes(val, &c->device_memory) != 0 || c->device_memory <= 0) {
      fprintf(stderr, "ptrun: error: --device-memory '%s': expected a size such as 80GiB, "
              "512MiB or a number of bytes\n", val);
      return EXIT_USER;
    }
  }
  else if (!strcmp(n, "help")) c->help = true;
  else if (!strcmp(n, "version")) c->version = true;
  return 0;
}

static int parse_args(config *c, int argc, char **argv, bool *steps_given) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (a[0] != '-' || !a[1]) {
      if (c->plan) return usage("more than one plan ('%s')", a);
      c->plan = a;
      continue;
    }
    if (a[1] != '-') return usage("unknown option '%s'", a);
    const char *name = a + 2, *eq = strchr(name, '=');
    size_t len = eq ? (size_t)(eq - name) : strlen(name);
    const option *o = NULL;
    for (int k = 0; k < PTC_ARRAY_LEN(options) && !o; k++)
      if (strlen(options[k].name) == len && !strncmp(options[k].name, name, len)) o = &options[k];
    if (!o) return usage("unknown option '%s'", a);
    const char *val = NULL;
    if (o->kind == K_FLAG) {
      if (eq) return usage("option '%s' takes no value", a);
    } else if (eq) {
      val = eq + 1;
    } else if (o->kind == K_OPTSTR) {
      /* the next word is its value unless it is an option, or the plan is
       * still to come (then the word is the plan) */
      val = i + 1 < argc && argv[i + 1][0] != '-' && c->plan ? argv[++i] : "";
    } else {
      if (i + 1 >= argc) return usage("option '%s' needs a value", a);
      val = argv[++i];
    }
    if (!strcmp(o->name, "steps")) *steps_given = true;
    int st = set_option(c, o, val);
    if (st) return st;
  }
  return 0;
}

/* ---- the run ---------------------------------------------------------------- */

/* How each argument of a function is fed.  F_STASH: a pipelined backward's
 * %stash.<k>, bound to its forward's result k (not fed from data). */
typedef enum feed { F_TOKENS, F_TARGETS, F_LR, F_STEP, F_ROWS, F_STASH } feed;

/* A function to run: its local view (what runs) and the function as the
 * plan wrote it (whole tensors: what the data gives). */
typedef struct binding {
  ptc_func *f;  /* local: the program's function */
  ptc_func *gf; /* global: the same arguments, whole */
  ptrt_program *prog;
  feed *feeds;  /* per argument */
  void **whole; /* per argument: the global batch, when the argument is split */
  int64_t B, T; /* of the token arguments (global) */
  bool tokens;  /* reads the token stream */
} binding;

typedef struct pipe_state pipe_state; /* a pipelined plan's stage (below) */

typedef struct run {
  config *c;
  ptc_ctx *ctx;
  ptrt_plan *plan;
  ptrt_pool *pool;
  ptrt_env env;
  ptrt_comm *mpi; /* owned: the communicator of a multi-rank run, else NULL */
  int rank;       /* in the world; 0 on one process */
  bool quiet;     /* prints nothing: not rank 0 */
  bool capture;   /* diagnostics are captured and printed with "rank N: " */
  size_t diag_done; /* of the captured text, what is printed */
  ptrt_vars *vars;
  ptrt_arena arena; /* the transient buffers of every program, one at a time */
  binding train, val; /* val.f NULL: no validation; unused for a pipelined plan */
  pipe_state *pipe;   /* a pipelined plan: this rank's stage, else NULL */
  ptrt_ckpt_session *ck; /* checkpoints, resume, --on-nan; NULL without them */
  ptrt_cuda *gpu;        /* a CUDA plan's GPU, or NULL */
  ptrt_tokens *data, *vdata;
  ptrt_st *inputs, *vinputs;
  ptrt_schedule sched;
  double flops, peak_gflops;
  int64_t devices; /* of the plan's mesh */
  FILE *log;
  bool tty;
  bool wrapped_logged;
  int64_t first_step; /* 1, or the step after a checkpoint's */
  int step_width; /* digits of --steps, so the step column lines up */
  /* communication of the training steps (validation not counted) */
  int64_t comm_steps;
  double comm_sent[PTC_MAX_MESH_AXES];
  int64_t comm_calls[PTC_MAX_MESH_AXES];
} run;

static void pipe_config_json(run *r, json_t *o);
static void pipe_fini(pipe_state *ps);
static int memory_report(run *r);

static const char *arg_name(const ptc_func *f, int32_t i) {
  const char *n = f->values[f->args[i]].name;
  return n ? n : "";
}

static bool is_scalar_f32(const ptc_type *t) {
  return t->rank == 0 && t->dtype == PTC_DTYPE_F32;
}

/* Prints what the diagnostics captured since the last call, each line
 * prefixed with this rank (a multi-rank run); nothing otherwise. */
static void flush_diags(run *r) {
  if (!r->capture) return;
  const char *t = ptc_ctx_diag_text(r->ctx);
  size_t n = strlen(t);
  fflush(stdout);
  for (size_t i = r->diag_done; i < n;) {
    const char *nl = memchr(t + i, '\n', n - i);
    size_t len = nl ? (size_t)(nl - (t + i)) + 1 : n - i;
    fprintf(stderr, "rank %d: %.*s%s", r->rank, (int)len, t + i, nl ? "" : "\n");
    i += len;
  }
  r->diag_done = n;
  fflush(stderr);
}

/* Decides how each argument of the global function gf is fed (f is its
 * local view); reports what is missing. */
static int bind(run *r, binding *b, ptc_func *f, ptc_func *gf) {
  b->f = f;
  b->gf = gf;
  PTC_ASSERT(f->nargs == gf->nargs);
  b->feeds = ptc_xcalloc((size_t)gf->nargs + 1, sizeof *b->feeds);
  b->whole = ptc_xcalloc((size_t)gf->nargs + 1, sizeof *b->whole);
  for (int32_t i = 0; i < gf->nargs; i++) {
    const char *n = arg_name(gf, i);
    const ptc_type *t = &gf->values[gf->args[i]].type;
    bool tok = !strcmp(n, "tokens"), tgt = !strcmp(n, "targets");
    if (tok || tgt) {
      if (t->dtype != PTC_DTYPE_I32 || t->rank != 2) {
        ptc_error(r->ctx, gf->loc, "argument %%%s of @%s must be i32[batch, seq] to read "
                  "the token stream", n, gf->name);
        return -1;
      }
      if (b->tokens && (t->dims[0] != b->B || t->dims[1] != b->T)) {
        ptc_error(r->ctx, gf->loc, "%%tokens and %%targets of @%s differ in shape", gf->name);
        return -1;
      }
      b->feeds[i] = tok ? F_TOKENS : F_TARGETS;
      b->tokens = true;
      b->B = t->dims[0];
      b->T = t->dims[1];
    } else if ((!strcmp(n, "lr") || !strcmp(n, "step")) && is_scalar_f32(t)) {
      b->feeds[i] = !strcmp(n, "lr") ? F_LR : F_STEP;
    } else if (r->plan->pipe && !strncmp(n, "stash.", 6)) {
      b->feeds[i] = F_STASH;
      continue; /* this rank's piece, straight from the forward */
    } else {
      b->feeds[i] = F_ROWS;
    }
    /* a split argument: the rank builds the whole batch, then keeps its block */
    if (!ptc_type_eq(t, &f->values[f->args[i]].type))
      b->whole[i] = ptc_xmalloc((size_t)ptc_type_bytes(t) + 1);
  }
  return 0;
}

static void binding_fini(binding *b) {
  ptrt_program_destroy(b->prog);
  for (int32_t i = 0; b->whole && i < b->gf->nargs; i++) free(b->whole[i]);
  free(b->whole);
  free(b->feeds);
}

/* The bound on token ids: the rows of the embedding table the tokens index
 * and the classes of the loss the targets feed, whichever is smaller
 * (global types: the whole table). */
static int64_t token_bound(const ptc_func *f, char *what, size_t cap) {
  int64_t bound = 65536;
  snprintf(what, cap, "the range of a uint16 token");
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    const ptc_value *v0 = op->nin > 0 ? &f->values[op->in[0]] : NULL;
    const ptc_value *v1 = op->nin > 1 ? &f->values[op->in[1]] : NULL;
    if (op->code == PTC_OP_EMBEDDING && v0->kind == PTC_VALUE_ARG && v0->name &&
        !strcmp(v0->name, "tokens")) {
      int64_t rows = v1->type.dims[0];
      if (rows < bound) {
        bound = rows;
        if (v1->kind == PTC_VALUE_PARAM)
          snprintf(what, cap, "the %lld rows of the embedding table @%s", (long long)rows,
                   f->mod->params[v1->def].name);
        else
          snprintf(what, cap, "the %lld rows of the embedding table", (long long)rows);
      }
    }
    if (op->code == PTC_OP_CROSS_ENTROPY && v1->kind == PTC_VALUE_ARG && v1->name &&
        !strcmp(v1->name, "targets")) {
      int64_t c = ptc_op_attr_int(op, "classes", v0->type.dims[v0->type.rank - 1]);
      if (c < bound) {
        bound = c;
        snprintf(what, cap, "the model's %lld classes (cross_entropy's classes)",
                 (long long)c);
      }
    }
  }
  return bound;
}

static int check_rows(run *r, const binding *b, ptrt_st *st, const char *flag) {
  for (int32_t i = 0; i < b->gf->nargs; i++) {
    if (b->feeds[i] != F_ROWS) continue;
    const ptc_type *t = &b->gf->values[b->gf->args[i]].type;
    if (!st) {
      ptc_buf tb;
      ptc_buf_init(&tb);
      ptc_type_print(&tb, t);
      ptrt_error(r->ctx, "@%s takes %%%s : %s; give it with %s FILE.safetensors (a tensor "
                 "named '%s' of N rows)", b->gf->name, arg_name(b->gf, i), tb.data, flag,
                 arg_name(b->gf, i));
      ptc_buf_fini(&tb);
      return -1;
    }
    if (ptrt_rows_check(r->ctx, st, arg_name(b->gf, i), t) != 0) return -1;
  }
  return 0;
}

/* Fills the arguments of b for batch s (0-based) of step `step`: the whole
 * batch, as on one device, then each split argument's block. */
static int feed_args(run *r, binding *b, const ptrt_tokens *tk, const ptrt_st *st, int64_t s,
                     int64_t step, double lr, bool *wrapped) {
  ptc_func *gf = b->gf;
  int32_t *tokens = NULL, *targets = NULL;
  for (int32_t i = 0; i < gf->nargs; i++) {
    void *buf = b->whole[i] ? b->whole[i] : ptrt_program_arg(b->prog, i);
    switch (b->feeds[i]) {
    case F_TOKENS: tokens = buf; break;
    case F_TARGETS: targets = buf; break;
    case F_LR: *(float *)buf = (float)lr; break;
    case F_STEP: *(float *)buf = (float)step; break;
    case F_ROWS: ptrt_rows_batch(st, arg_name(gf, i), &gf->values[gf->args[i]].type, s, buf); break;
    case F_STASH: break;
    }
  }
  if (b->tokens) {
    int32_t *scratch = NULL;
    if (!tokens) tokens = scratch = ptc_xmalloc((size_t)(b->B * b->T) * sizeof *scratch);
    int rc = ptrt_tokens_batch(r->ctx, tk, s, b->B, b->T, tokens, targets, wrapped);
    free(scratch);
    if (rc != 0) return -1;
  }
  const ptrt_comm *c = r->env.comm;
  for (int32_t i = 0; i < gf->nargs; i++)
    if (b->whole[i]) {
      const ptc_value *v = &gf->values[gf->args[i]];
      ptrt_local_block(&c->mesh, c->coord, &v->type, &v->shard, b->whole[i],
                       ptrt_program_arg(b->prog, i));
    }
  return 0;
}

static void log_json(run *r, json_t *o) {
  if (!r->log) {
    json_decref(o);
    return;
  }
  char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
  json_decref(o);
  if (s) {
    fprintf(r->log, "%s\n", s);
    fflush(r->log);
    free(s);
  }
}

static void clear_progress(run *r) {
  if (r->tty) fputs("\r\033[K", stderr);
}

static void progress(run *r, int64_t step, double elapsed) {
  if (!r->tty) return;
  int64_t n = r->c->steps, width = 30, done = n ? step * width / n : width;
  char bar[64];
  for (int64_t i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
  bar[width] = '\0';
  int64_t done_here = step - r->first_step + 1;
  double eta = done_here > 0 ? elapsed / (double)done_here * (double)(n - step) : 0;
  fprintf(stderr, "\r\033[K[%s] %lld/%lld  eta %.0fs", bar, (long long)step, (long long)n,
          eta);
  fflush(stderr);
}

/* Mean loss over the validation batches. */
static int validate(run *r, int64_t step, double *out) {
  binding *b = &r->val;
  const ptrt_tokens *tk = r->vdata;
  const ptrt_st *st = r->vinputs;
  double sum = 0;
  int64_t nb = r->c->val_batches;
  for (int64_t v = 0; v < nb; v++) {
    if (feed_args(r, b, tk, st, v, step, 0.0, NULL) != 0) return -1;
    if (ptrt_program_run(b->prog, false) != 0) return -1;
    sum += *(const float *)ptrt_program_result(b->prog, 0);
  }
  *out = nb ? sum / (double)nb : 0;
  return 0;
}

static void mesh_text(char *out, size_t cap, const ptc_mesh *m) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_mesh_print(&b, m);
  snprintf(out, cap, "%s", b.data);
  ptc_buf_fini(&b);
}

static json_t *config_json(run *r) {
  config *c = r->c;
  json_t *data = json_array(), *val = json_array();
  for (int32_t i = 0; i < c->ndata; i++) json_array_append_new(data, json_string(c->data[i]));
  for (int32_t i = 0; i < c->nval; i++) json_array_append_new(val, json_string(c->val[i]));
  json_t *o = json_object();
  json_object_set_new(o, "plan", json_string(c->plan));
  json_object_set_new(o, "model", json_string(r->plan->model));
  json_object_set_new(o, "entry", json_string(r->pipe ? "pipeline" : r->train.f->name));
  json_object_set_new(o, "ptc_version", json_string(r->plan->ptc_version));
  json_object_set_new(o, "ptrun_version", json_string(PTC_VERSION_STRING));
  json_object_set_new(o, "data", data);
  json_object_set_new(o, "val", val);
  json_object_set_new(o, "inputs", c->inputs ? json_string(c->inputs) : json_null());
  json_object_set_new(o, "steps", json_integer(c->steps));
  json_object_set_new(o, "lr", json_real(c->lr));
  json_object_set_new(o, "min_lr", json_real(r->sched.min_lr));
  json_object_set_new(o, "warmup", json_integer(r->sched.warmup));
  json_object_set_new(o, "decay_steps", json_integer(r->sched.decay_steps));
  json_object_set_new(o, "seed", json_integer((json_int_t)c->seed));
  json_object_set_new(o, "threads", json_integer(c->threads));
  json_object_set_new(o, "batch", json_integer(r->train.B));
  json_object_set_new(o, "seq", json_integer(r->train.T));
  if (r->pipe) pipe_config_json(r, o);
  json_object_set_new(o, "val_every", json_integer(c->val_every));
  json_object_set_new(o, "val_batches", json_integer(c->val_batches));
  json_object_set_new(o, "peak_gflops", json_real(r->peak_gflops));
  json_object_set_new(o, "flops_per_step", json_real(r->flops));
  json_object_set_new(o, "parameters", json_integer(ptc_module_param_count(r->plan->mod)));
  json_object_set_new(o, "load_weights", c->load ? json_string(c->load) : json_null());
  json_object_set_new(o, "save_weights", c->save ? json_string(c->save) : json_null());
  json_object_set_new(o, "resume", c->resume ? json_string(c->resume) : json_null());
  json_object_set_new(o, "first_step", json_integer(r->first_step));
  json_object_set_new(o, "communicator", json_string(r->env.comm->name));
  json_object_set_new(o, "ranks", json_integer(r->env.comm->size));
  if (r->devices > 1) {
    char mt[128];
    mesh_text(mt, sizeof mt, &r->plan->mod->mesh);
    json_object_set_new(o, "mesh", json_string(mt));
    json_object_set_new(o, "timeout", json_real(c->timeout));
  }
  return json_pack("{s:o}", "config", o);
}

/* ---- ranks -------------------------------------------------------------------- */

/* A launcher's environment variable as a count (-1 when unset or not one). */
static long env_count(const char *name) {
  const char *s = getenv(name);
  if (!s || !*s) return -1;
  char *end;
  long v = strtol(s, &end, 10);
  return end == s || v < 0 ? -1 : v;
}

/* This process's rank and the world's size as the launcher states them
 * (before any communicator exists): Open MPI, PMI (MPICH, Intel MPI),
 * PMIx, Slurm.  -1 when unknown. */
static long launcher_rank(void) {
  static const char *const names[] = {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK",
                                      "SLURM_PROCID"};
  for (int i = 0; i < PTC_ARRAY_LEN(names); i++) {
    long v = env_count(names[i]);
    if (v >= 0) return v;
  }
  return -1;
}

static long launcher_size(void) {
  static const char *const names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"};
  for (int i = 0; i < PTC_ARRAY_LEN(names); i++) {
    long v = env_count(names[i]);
    if (v >= 1) return v;
  }
  return -1;
}

/* The flags that read or write whole tensors of one device's variables. */
static const char *whole_tensor_flag(const config *c) {
  return c->save ? "--save-weights" : c->load ? "--load-weights" : NULL;
}

/* Chooses the communicator for the plan: the one-rank table for a plan of
 * one device run alone, MPI for a plan of N > 1 devices under a launcher.
 * Refuses the other combinations (on rank 0 only when every rank would
 * say the same).  0, or -1 after reporting. */
static int choose_comm(run *r, bool launched) {
  config *c = r->c;
  const ptc_mesh *mesh = &r->plan->mod->mesh;
  char mt[128];
  mesh_text(mt, sizeof mt, mesh);
  r->env.comm = ptrt_comm_single();
  if (r->devices == 1) {
    if (!launched) return 0;
    if (r->rank == 0) {
      long n = launcher_size();
      char ranks[64] = "several ranks";
      if (n > 1) snprintf(ranks, sizeof ranks, "%ld ranks", n);
      ptrt_error(r->ctx, "the plan is for one device, but a launcher started %s: each "
                 "would train the whole model alone on the same batches; run one ptrun "
                 "without mpirun or srun, or compile the model for a mesh ('ptc MODEL.ptg "
                 "--mesh N -o PLAN')", ranks);
    }
    return -1;
  }
  const char *flag = whole_tensor_flag(c);
  if (flag) {
    if (r->rank <= 0)
      ptrt_error(r->ctx, "%s reads or writes the whole tensors of a single-device plan, but "
                 "this plan is split over %s (%lld devices); run it without %s", flag, mt,
                 (long long)r->devices, flag);
    return -1;
  }
  if (!launched) {
    ptrt_error(r->ctx, "the plan is for %s (%lld devices); run it with mpirun -np %lld ptrun "
               "%s ... (or srun -n %lld)", mt, (long long)r->devices, (long long)r->devices,
               c->plan, (long long)r->devices);
    return -1;
  }
  r->mpi = ptrt_comm_mpi_create(r->ctx, mesh, c->timeout);
  if (!r->mpi) return -1;
  r->env.comm = r->mpi;
  r->rank = r->mpi->rank;
  r->quiet = r->rank != 0;
  return 0;
}

/* Opens --data (and token --val) for a plan that reads tokens, else
 * refuses --data; opens --inputs and safetensors --val.  fname names the
 * function that reads them. */
static int open_inputs(run *r, bool tokens, const char *fname, int64_t bound,
                       const char *what) {
  config *c = r->c;
  if (tokens) {
    if (!c->ndata) {
      ptrt_error(r->ctx, "@%s reads tokens: give the training data with --data FILE "
                 "(make one with 'ptdata TEXT -o FILE')", fname);
      return -1;
    }
    r->data = ptrt_tokens_open(r->ctx, c->data, c->ndata, bound, what);
    if (!r->data) return -1;
    if (c->nval) {
      r->vdata = ptrt_tokens_open(r->ctx, c->val, c->nval, bound, what);
      if (!r->vdata) return -1;
    }
  } else if (c->ndata) {
    ptrt_error(r->ctx, "@%s has no %%tokens argument, so --data has nothing to feed; "
               "its inputs come from --inputs FILE.safetensors", fname);
    return -1;
  }
  if (c->inputs) {
    r->inputs = ptrt_st_open(r->ctx, c->inputs);
    if (!r->inputs) return -1;
  }
  if (c->val_inputs) {
    r->vinputs = ptrt_st_open(r->ctx, c->val_inputs);
    if (!r->vinputs) return -1;
  }
  return 0;
}

/* The step (or @forward) of a single-device or SPMD plan: bindings, data,
 * variables and programs. */
static int setup_step(run *r) {
  config *c = r->c;
  ptrt_plan *pl = r->plan;
  if (bind(r, &r->train, pl->local_entry, pl->entry) != 0) return -1;
  /* --val is a token file like --data, or for models that read rows, a
   * safetensors file like --inputs */
  if (!r->train.tokens && c->nval) {
    if (c->nval != 1) {
      ptrt_error(r->ctx, "@%s reads rows, not tokens: --val takes one safetensors file",
                 r->train.f->name);
      return -1;
    }
    c->val_inputs = c->val[0];
    c->nval = 0;
  }
  /* validation runs @forward when the plan keeps one, else only the part of
   * @step that computes the loss */
  if (c->nval || c->val_inputs) {
    if (pl->forward) {
      if (bind(r, &r->val, pl->local_forward, pl->forward) != 0) return -1;
    } else if (bind(r, &r->val, pl->local_entry, pl->entry) != 0) {
      return -1;
    }
  }
  /* data */
  char what[160];
  int64_t bound = token_bound(r->train.gf, what, sizeof what);
  if (open_inputs(r, r->train.tokens, r->train.f->name, bound, what) != 0) return -1;
  if (check_rows(r, &r->train, r->inputs, "--inputs") != 0) return -1;
  if (r->val.f && check_rows(r, &r->val, r->vinputs, "--val") != 0) return -1;
  if (r->val.f && r->val.tokens && !r->vdata) {
    ptrt_error(r->ctx, "@forward reads tokens: give validation data with --val FILE");
    return -1;
  }

  /* variables (this rank's pieces) and programs */
  r->vars = ptrt_vars_create(r->ctx, pl->local, r->env.comm);
  if (!r->vars) return -1;
  ptrt_vars_init(r->vars, c->seed, r->pool);
  if (c->load && ptrt_load_weights(r->ctx, c->load, r->vars) != 0) return -1;
  if (r->gpu && ptrt_cuda_vars_attach(r->gpu, r->ctx, r->vars) != 0) return -1;
  r->first_step = 1;
  ptrt_program_opts topts = {.in_place = pl->training, .fused = pl->fused, .arena = &r->arena};
  r->train.prog = ptrt_program_create(&r->env, r->train.f, r->vars, &topts);
  if (!r->train.prog) return -1;
  if (r->val.f) {
    ptrt_program_opts vopts = {.loss_only = true, .arena = &r->arena};
    r->val.prog = ptrt_program_create(&r->env, r->val.f, r->vars, &vopts);
    if (!r->val.prog) return -1;
  }
  ptrt_program_set_check_finite(r->train.prog, c->check_numerics);
  ptrt_program_set_check_memory(r->train.prog, c->check_memory);
  ptrt_program_set_profile(r->train.prog, c->profile);
  /* MFU: the model's FLOPs (whole tensors) against the peak of every device */
  r->flops = ptrt_func_flops(r->train.gf);
  return 0;
}

/* ---- pipeline-parallel plans: this rank's stage ------------------------------- */

/* A chunk of this rank's stage: its forward and backward, and the stash
 * between them.  Each microbatch in flight owns one stash set, a block
 * holding every result of @fwd.<c> (64-byte aligned pieces): the forward's
 * results are written into it and the backward reads its %stash.<k> from
 * it, so nothing is copied.  After the backward the set is kept for the
 * next forward: the sets allocated are the most microbatches ever in
 * flight on this chunk. */
typedef struct pipe_chunk {
  int32_t chunk;
  binding fwd, bwd;
  int32_t nres;        /* results of @fwd.<c> */
  int64_t *res_off;    /* heap: per result, its offset in a set */
  int32_t *stash_res;  /* heap: per argument of @bwd.<c>, the result it takes, or -1 */
  int64_t set_bytes;
  char **live;         /* heap: per microbatch, its set while in flight, else NULL */
  char **spare;        /* heap: sets whose backward ran */
  int32_t nspare;
} pipe_chunk;

struct pipe_state {
  const ptrt_pipe *pp;
  int32_t stage;
  const ptrt_pipe_unit *order; /* this stage's */
  int32_t norder;
  pipe_chunk *chunks;  /* this stage's chunks, stage + k*P for k < V */
  binding step;        /* @step.<stage> */
  int64_t B, T;        /* a microbatch's tokens (tokens plans) */
  bool tokens;
  int64_t rows;        /* a microbatch's rows (--inputs plans) */
  int64_t stash_bytes; /* stash sets allocated now */
};

/* The stage's functions, i < 2V + 1: forward and backward of each chunk,
 * then @step.<stage>. */
static int32_t pipe_nfuncs(const pipe_state *ps) { return 2 * ps->pp->virtual_stages + 1; }
static binding *pipe_binding(pipe_state *ps, int32_t i) {
  if (i == 2 * ps->pp->virtual_stages) return &ps->step;
  pipe_chunk *pc = &ps->chunks[i / 2];
  return i % 2 ? &pc->bwd : &pc->fwd;
}

static void pipe_fini(pipe_state *ps) {
  if (!ps) return;
  for (int32_t k = 0; ps->chunks && k < ps->pp->virtual_stages; k++) {
    pipe_chunk *pc = &ps->chunks[k];
    for (int32_t mb = 0; pc->live && mb < ps->pp->microbatches; mb++) ptrt_free(pc->live[mb]);
    for (int32_t i = 0; i < pc->nspare; i++) ptrt_free(pc->spare[i]);
    binding_fini(&pc->fwd);
    binding_fini(&pc->bwd);
    free(pc->res_off);
    free(pc->stash_res);
    free(pc->live);
    free(pc->spare);
  }
  free(ps->chunks);
  binding_fini(&ps->step);
  free(ps);
}

/* Binds the plan's function `name` (local view and as written). */
static int pipe_bind(run *r, binding *b, const char *name) {
  ptc_func *gf = NULL, *f = ptrt_plan_func(r->plan, name, &gf);
  PTC_ASSERT(f && gf); /* ptrt_plan_open checked every function is there */
  return bind(r, b, f, gf);
}

/* The stash of chunk pc: where each result of @fwd.<c> sits in a set, and
 * which result each %stash.<k> of @bwd.<c> takes (of the same bytes). */
static int pipe_stash_layout(run *r, pipe_chunk *pc) {
  const ptc_func *fw = pc->fwd.f, *bw = pc->bwd.f;
  const ptc_op *ret = &fw->ops[fw->nops - 1];
  pc->nres = ret->nin;
  pc->res_off = ptc_xcalloc((size_t)pc->nres + 1, sizeof *pc->res_off);
  int64_t off = 0;
  for (int32_t k = 0; k < pc->nres; k++) {
    pc->res_off[k] = off;
    off += (ptc_type_bytes(&fw->values[ret->in[k]].type) + 63) & ~(int64_t)63;
  }
  pc->set_bytes = off;
  pc->stash_res = ptc_xcalloc((size_t)bw->nargs + 1, sizeof *pc->stash_res);
  for (int32_t i = 0; i < bw->nargs; i++) {
    pc->stash_res[i] = -1;
    if (pc->bwd.feeds[i] != F_STASH) continue;
    char *end;
    long k = strtol(arg_name(bw, i) + 6, &end, 10);
    const ptc_type *t = &bw->values[bw->args[i]].type;
    if (*end || k < 0 || k >= pc->nres ||
        !ptc_type_eq(t, &fw->values[ret->in[k]].type)) {
      ptc_error(r->ctx, bw->loc, "argument %%%s of @%s does not match a result of @%s (it "
                "has %d): the plan is damaged; recompile it", arg_name(bw, i), bw->name,
                fw->name, pc->nres);
      return -1;
    }
    pc->stash_res[i] = (int32_t)k;
  }
  pc->live = ptc_xcalloc((size_t)r->pipe->pp->microbatches + 1, sizeof *pc->live);
  pc->spare = ptc_xcalloc((size_t)r->pipe->pp->microbatches + 1, sizeof *pc->spare);
  return 0;
}

/* The shape of a microbatch, from every function of the plan (whole
 * tensors): tokens [B, T] or rows, the same everywhere.  Reports a
 * mismatch. */
static int pipe_batch_shape(run *r, pipe_state *ps) {
  const ptc_module *m = r->plan->mod;
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    const ptc_func *f = m->funcs[fi];
    for (int32_t i = 0; i < f->nargs; i++) {
      const char *n = arg_name(f, i);
      const ptc_type *t = &f->values[f->args[i]].type;
      if (!strcmp(n, "lr") || !strcmp(n, "step") || !strncmp(n, "stash.", 6) || t->rank == 0)
        continue;
      bool tok = !strcmp(n, "tokens") || !strcmp(n, "targets");
      if (tok && t->rank == 2) {
        if (ps->tokens && (t->dims[0] != ps->B || t->dims[1] != ps->T)) {
          ptc_error(r->ctx, f->loc, "%%%s of @%s is not a microbatch of the shape the "
                    "plan's other functions read; recompile the plan", n, f->name);
          return -1;
        }
        ps->tokens = true;
        ps->B = t->dims[0];
        ps->T = t->dims[1];
      } else if (!ps->rows) {
        ps->rows = t->dims[0];
      }
    }
  }
  return 0;
}

/* The bound on token ids over every forward of the plan. */
static int64_t pipe_token_bound(const ptrt_plan *pl, char *what, size_t cap) {
  int64_t bound = -1;
  for (int32_t c = 0; c < pl->pipe->chunks; c++) {
    char name[32], w[160];
    snprintf(name, sizeof name, "fwd.%d", c);
    int64_t b = token_bound(ptc_module_find_func(pl->mod, name), w, sizeof w);
    if (bound < 0 || b < bound) {
      bound = b;
      snprintf(what, cap, "%s", w);
    }
  }
  return bound;
}

/* Which variables this stage's functions read: the only ones it holds. */
static bool *pipe_held(pipe_state *ps, const ptc_module *lm) {
  bool *hold = ptc_xcalloc((size_t)lm->nparams + 1, sizeof *hold);
  for (int32_t i = 0; i < pipe_nfuncs(ps); i++) {
    const ptc_func *f = pipe_binding(ps, i)->f;
    for (int32_t p = 0; p < lm->nparams && p < f->cap_param_value; p++)
      if (f->param_value[p] >= 0) hold[p] = true;
  }
  return hold;
}

/* What the units of a step accumulate (a gradient, the loss) @step.<stage>
 * consumes: a variable a forward or backward of this stage assigns but the
 * stage's @step never reads would be an accumulation nobody uses, e.g. a
 * gradient added up on a stage that does not update its parameter.  Such
 * a plan would train wrongly without a sign; it is refused. */
static int pipe_check_accumulators(run *r, pipe_state *ps) {
  const ptc_func *sf = ps->step.f;
  int bad = 0;
  for (int32_t i = 0; i < pipe_nfuncs(ps) - 1; i++) {
    const ptc_func *f = pipe_binding(ps, i)->f;
    for (int32_t k = 0; k < f->nops; k++) {
      const ptc_op *op = &f->ops[k];
      if (op->code != PTC_OP_ASSIGN) continue;
      const ptc_value *v = &f->values[op->in[0]];
      if (v->kind != PTC_VALUE_PARAM) continue;
      int32_t p = v->def;
      if (p < sf->cap_param_value && sf->param_value[p] >= 0) continue;
      ptc_error(r->ctx, op->loc, "@%s (stage %d) accumulates into @%s, which @%s never "
                "reads: what it adds up would be lost (for a gradient: the stage that "
                "updates the parameter never sees it); the plan is inconsistent, "
                "recompile it", f->name, ps->stage, f->mod->params[p].name, sf->name);
      bad++;
    }
  }
  return bad ? -1 : 0;
}

static int pipe_program(run *r, binding *b) {
  ptrt_program_opts o = {.in_place = true, .fused = ptrt_plan_fused_of(r->plan, b->f),
                         .arena = &r->arena};
  b->prog = ptrt_program_create(&r->env, b->f, r->vars, &o);
  ptrt_program_set_check_memory(b->prog, r->c->check_memory);
  if (!b->prog) return -1;
  ptrt_program_set_check_finite(b->prog, r->c->check_numerics);
  ptrt_program_set_profile(b->prog, r->c->profile);
  return 0;
}

/* A pipelined plan: this rank's stage (its mesh coordinate on pp), the
 * bindings and programs of its functions, data, and the variables its
 * functions read.  The model FLOPs of a step are every chunk's forward and
 * backward on each microbatch and every stage's @step. */
static int setup_pipe(run *r) {
  config *c = r->c;
  ptrt_plan *pl = r->plan;
  const ptrt_pipe *pp = pl->pipe;
  if (c->nval) { /* every rank would say it: rank 0 does */
    if (!r->quiet)
      ptrt_error(r->ctx, "--val: validation of a pipeline-parallel plan is not supported yet; "
                 "run without --val, or validate with a plan of the same model compiled "
                 "without pp in its mesh");
    return -1;
  }
  pipe_state *ps = r->pipe = ptc_xcalloc(1, sizeof *ps);
  ps->pp = pp;
  ps->stage = r->env.comm->coord[pp->pp_axis];
  ps->order = pp->order[ps->stage];
  ps->norder = pp->norder[ps->stage];
  ps->chunks = ptc_xcalloc((size_t)pp->virtual_stages, sizeof *ps->chunks);
  for (int32_t k = 0; k < pp->virtual_stages; k++) {
    pipe_chunk *pc = &ps->chunks[k];
    pc->chunk = ps->stage + k * pp->stages;
    char name[32];
    snprintf(name, sizeof name, "fwd.%d", pc->chunk);
    if (pipe_bind(r, &pc->fwd, name) != 0) return -1;
    snprintf(name, sizeof name, "bwd.%d", pc->chunk);
    if (pipe_bind(r, &pc->bwd, name) != 0) return -1;
    if (pipe_stash_layout(r, pc) != 0) return -1;
  }
  char name[32];
  snprintf(name, sizeof name, "step.%d", ps->stage);
  if (pipe_bind(r, &ps->step, name) != 0) return -1;
  if (pipe_check_accumulators(r, ps) != 0) return -1;
  if (pipe_batch_shape(r, ps) != 0) return -1;
  /* what the log's config and the header state: one microbatch */
  r->train.tokens = ps->tokens;
  r->train.B = ps->B;
  r->train.T = ps->T;

  /* data: every rank opens and checks it, whether or not its stage reads it */
  char what[160];
  int64_t bound = pipe_token_bound(pl, what, sizeof what);
  if (open_inputs(r, ps->tokens, "fwd.0", bound, what) != 0) return -1;
  for (int32_t i = 0; i < pipe_nfuncs(ps); i++)
    if (check_rows(r, pipe_binding(ps, i), r->inputs, "--inputs") != 0) return -1;

  /* the variables of this stage (its pieces) and programs */
  bool *hold = pipe_held(ps, pl->local);
  r->vars = ptrt_vars_create_subset(r->ctx, pl->local, r->env.comm, hold);
  free(hold);
  if (!r->vars) return -1;
  ptrt_vars_init(r->vars, c->seed, r->pool);
  if (r->gpu && ptrt_cuda_vars_attach(r->gpu, r->ctx, r->vars) != 0) return -1;
  r->first_step = 1;
  for (int32_t i = 0; i < pipe_nfuncs(ps); i++)
    if (pipe_program(r, pipe_binding(ps, i)) != 0) return -1;

  r->flops = 0;
  for (int32_t fi = 0; fi < pl->mod->nfuncs; fi++) {
    const ptc_func *f = pl->mod->funcs[fi];
    double n = !strncmp(f->name, "step.", 5) ? 1 : (double)pp->microbatches;
    r->flops += n * ptrt_func_flops(f);
  }
  return 0;
}

/* The pipeline's settings in the log's config. */
static void pipe_config_json(run *r, json_t *o) {
  const ptrt_pipe *pp = r->pipe->pp;
  json_object_set_new(o, "pipeline", json_pack("{s:i,s:i,s:i,s:s}", "stages", (int)pp->stages,
                                               "microbatches", (int)pp->microbatches,
                                               "virtual_stages", (int)pp->virtual_stages,
                                               "schedule", pp->schedule));
}

/* ---- checkpoints, signals, non-finite steps (runtime/ckpt.h) -------------- */

/* Set by SIGTERM and SIGUSR1 (how a scheduler announces preemption): at the
 * next step boundary the ranks agree to write a checkpoint and stop. */
static volatile sig_atomic_t stop_signal;

static void on_stop_signal(int sig) { stop_signal = 1; }

/* The checkpoint options that only make sense together; 0, or EXIT_USAGE
 * after saying why. */
static int ckpt_check_args(const config *c) {
  if (!c->ckpt_dir && (c->ckpt_every || c->ckpt_keep || c->ckpt_async || c->ckpt_durable))
    return usage("--ckpt-every, --ckpt-keep, --ckpt-async and --ckpt-durable need "
                 "--ckpt-dir DIR%s", "");
  if (c->ckpt_durable_every && !c->ckpt_durable)
    return usage("--ckpt-durable-every needs --ckpt-durable DIR%s", "");
  if (c->resume && !*c->resume && !c->ckpt_dir)
    return usage("--resume without a PATH resumes from the newest checkpoint in --ckpt-dir; "
                 "give --ckpt-dir DIR or --resume PATH%s", "");
  if (c->nan_patience && c->on_nan != PTRT_ON_NAN_STOP)
    return usage("--nan-patience counts the steps --on-nan stop undoes before stopping; "
                 "give --on-nan stop%s", "");
  return 0;
}

/* After the variables exist, before the first step: the session, the
 * signal handlers, and --resume (which sets the first step). */
static int ckpt_setup(run *r) {
  config *c = r->c;
  if (!c->ckpt_dir && !c->resume && c->on_nan == PTRT_ON_NAN_FAIL) return 0;
  int64_t mbs = r->pipe ? r->pipe->pp->microbatches : 1;
  ptrt_ckpt_settings s = {.sched = r->sched, .seed = c->seed, .batch = r->train.B * mbs,
                          .seq = r->train.T,
                          .data_tokens = r->data ? ptrt_tokens_count(r->data) : 0,
                          .data_files = c->data, .ndata = c->ndata};
  ptrt_ckpt_opts o = {.dir = c->ckpt_dir, .every = c->ckpt_every, .keep = (int32_t)c->ckpt_keep,
                      .durable = c->ckpt_durable, .durable_every = c->ckpt_durable_every,
                      .async = c->ckpt_async, .resume = c->resume, .on_nan = c->on_nan,
                      .nan_patience = c->nan_patience ? c->nan_patience : 1,
                      .stop_signal = &stop_signal, .out = r->quiet ? NULL : stdout};
  r->ck = ptrt_ckpt_session_create(r->ctx, &o, r->env.comm, r->vars, r->plan->mod,
                                   r->plan->model, "ptrun " PTC_VERSION_STRING, &s);
  if (!r->ck) return -1;
  if (c->ckpt_dir) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
  }
  const char *from = NULL;
  if (ptrt_ckpt_session_resume(r->ck, &r->first_step, &from) != 0) return -1;
  if (from) c->resume = from;
  if (from && !r->quiet) {
    printf("ptrun: resuming after step %lld of %s\n", (long long)r->first_step - 1, from);
    if (r->first_step > c->steps)
      printf("ptrun: the checkpoint is at step %lld, --steps is %lld: no step to run\n",
             (long long)r->first_step - 1, (long long)c->steps);
  }
  return 0;
}

/* Before a step: with --on-nan, the copy of the variables it may be undone
 * from. */
static void ckpt_before(run *r, int64_t step) {
  if (r->ck) ptrt_ckpt_session_step_begin(r->ck, step);
}

/* After a step, before it is reported: 1 when a result of b was not finite
 * and the step was undone (logged here), -1 when the run must stop, else 0. */
static int ckpt_after(run *r, const binding *b, int64_t step) {
  if (!r->ck) return 0;
  float res[32];
  int32_t n = 0;
  const ptc_op *ret = &b->f->ops[b->f->nops - 1];
  for (int32_t i = 0; i < ret->nin && n < PTC_ARRAY_LEN(res); i++)
    if (is_scalar_f32(&b->f->values[ret->in[i]].type))
      res[n++] = *(const float *)ptrt_program_result(b->prog, i);
  int rc = ptrt_ckpt_session_step_end(r->ck, step, res, n);
  if (rc <= 0) return rc;
  json_t *vals = json_array();
  char text[256] = "";
  size_t k = 0;
  for (int32_t i = 0; i < n; i++) {
    char v[32];
    snprintf(v, sizeof v, "%g", (double)res[i]);
    json_array_append_new(vals, json_string(v));
    if (k < sizeof text) k += (size_t)snprintf(text + k, sizeof text - k, " %s", v);
  }
  log_json(r, json_pack("{s:I,s:s,s:o}", "step", (json_int_t)step, "skipped",
                        "a result is not finite; the update was undone", "results", vals));
  if (!r->quiet) {
    clear_progress(r);
    printf("step %*lld/%lld | results%s: not finite, the update is undone (--on-nan)\n",
           r->step_width, (long long)step, (long long)r->c->steps, text);
    fflush(stdout);
  }
  return 1;
}

/* At the end of a step: a checkpoint when one is due.  1: stop now (a
 * signal; the checkpoint is written), -1: stop with an error, else 0. */
static int ckpt_boundary(run *r, int64_t step) {
  if (!r->ck) return 0;
  clear_progress(r);
  int rc = ptrt_ckpt_session_boundary(r->ck, step, r->c->steps);
  return rc == 2 ? -1 : rc;
}

/* Everything before the first step. */
static int setup(run *r) {
  config *c = r->c;
  bool launched = ptrt_launched_multi();
  if (launched) { /* until the communicator says, the launcher names the rank */
    long lr = launcher_rank();
    r->rank = lr >= 0 ? (int)lr : 0;
    r->quiet = r->rank != 0;
    r->capture = true;
    ptc_ctx_set_diag_capture(r->ctx, true);
  }
  if (ptrt_cuda_is_plan(c->plan)) { /* a GPU plan: its kernels loaded on this rank's GPU */
    if (c->ckpt_dir || c->resume || c->on_nan != PTRT_ON_NAN_FAIL || c->ckpt_durable) {
      ptrt_error(r->ctx, "--ckpt-dir, --resume, --ckpt-durable and --on-nan are not supported "
                 "for CUDA plans yet; --save-weights and --load-weights are");
      return -1;
    }
    r->gpu = ptrt_cuda_open(r->ctx, c->plan, NULL, 0);
    if (!r->gpu) return -1; /* reported, e.g. "this plan is for cuda:sm_90; no CUDA driver here" */
    r->env.gpu = r->gpu;
  }
  r->plan = ptrt_plan_open(r->ctx, c->plan);
  if (!r->plan) return -1;
  r->env.ctx = r->ctx;
  r->devices = ptc_mesh_size(&r->plan->mod->mesh);
  if (c->device_memory > 0) { /* every rank judges the whole mesh: they refuse together */
    ptc_memplan mp;
    int32_t bad = ptc_memplan_compute(r->plan->mod, &mp) == 0
                      ? ptc_memplan_first_over(&mp, c->device_memory) : -1;
    if (bad >= 0) {
      char need[32], have[32];
      ptc_bytes_text(need, sizeof need, (double)mp.groups[bad].total);
      ptc_bytes_text(have, sizeof have, (double)c->device_memory);
      if (!launched || r->rank == 0)
        ptrt_error(r->ctx, "the plan does not fit --device-memory %s: rank %lld needs %s "
                   "(ptc --report shows where); compile it with --recompute auto "
                   "--device-memory %s, a larger mesh or a higher --zero stage", have,
                   (long long)mp.groups[bad].first_rank, need, have);
      return -1;
    }
  }
  if (choose_comm(r, launched) != 0) return -1;
  r->pool = ptrt_pool_create(r->ctx, c->threads);
  if (!r->pool) return -1;
  r->env.pool = r->pool;
  ptrt_blas_set_threads(c->threads);

  /* the schedule */
  r->sched.lr = c->lr;
  r->sched.min_lr = c->min_lr_given ? c->min_lr : c->lr / 10;
  r->sched.decay_steps = c->decay_given ? c->decay_steps : c->steps;
  r->sched.warmup = c->warmup_given ? c->warmup : (c->steps / 10 < 100 ? c->steps / 10 : 100);
  if (!c->val_every_given) c->val_every = c->steps / 10 > 0 ? c->steps / 10 : 1;

  if ((r->plan->pipe ? setup_pipe(r) : setup_step(r)) != 0) return -1;
  if (ckpt_setup(r) != 0) return -1;
  if (c->peak_gflops > 0) r->peak_gflops = c->peak_gflops;
  else if (r->gpu && ptrt_cuda_peak_gflops(r->gpu) > 0) r->peak_gflops = ptrt_cuda_peak_gflops(r->gpu);
  else if (!r->quiet) r->peak_gflops = ptrt_measure_sgemm_gflops(0.3);
  else r->peak_gflops = 1; /* printed by rank 0 only */
  if (c->log && !r->quiet) {
    r->log = fopen(c->log, "w");
    if (!r->log) {
      ptrt_file_error(r->ctx, c->log, "cannot write the log: %s", strerror(errno));
      return -1;
    }
  }
  log_json(r, config_json(r));
  return 0;
}

static void print_header(run *r) {
  config *c = r->c;
  if (r->quiet) return;
  char pb[32], vb[32];
  ptc_bytes_text(pb, sizeof pb, 4.0 * (double)ptc_module_param_count(r->plan->mod));
  ptc_bytes_text(vb, sizeof vb, (double)r->vars->bytes);
  const pipe_state *ps = r->pipe;
  printf("ptrun: plan %s (@%s, %s), %lld parameters (%s), variables %s%s\n", c->plan,
         r->plan->model, ps ? "pipelined training step"
                         : r->plan->training ? "training step" : "evaluation only: no @step",
         (long long)ptc_module_param_count(r->plan->mod), pb, vb,
         ps ? " on rank 0 (its stage's)" : r->devices > 1 ? " per rank" : "");
  if (r->devices > 1) {
    char mt[128];
    mesh_text(mt, sizeof mt, &r->plan->mod->mesh);
    printf("ptrun: %lld ranks on %s (%s communicator, timeout %g s), each running its "
           "pieces of the plan\n", (long long)r->devices, mt, r->env.comm->name, c->timeout);
  }
  if (ps)
    printf("ptrun: pipeline of %d stages x %d chunk%s, schedule %s, %d microbatches per "
           "step\n", (int)ps->pp->stages, (int)ps->pp->virtual_stages,
           ps->pp->virtual_stages == 1 ? "" : "s", ps->pp->schedule, (int)ps->pp->microbatches);
  if (r->gpu) {
    int32_t on = 0, staged = 0;
    const ptrt_cuda_prog *gp = r->train.prog ? ptrt_program_gpu(r->train.prog) : NULL;
    if (gp) ptrt_cuda_prog_counts(gp, &on, &staged);
    char mem[32];
    ptc_bytes_text(mem, sizeof mem, (double)ptrt_cuda_allocated(r->gpu));
    char ops[128] = "";
    if (gp) /* a pipeline stage has several programs: not counted here */
      snprintf(ops, sizeof ops, "; %d ops on the GPU, %d staged through the host (CPU "
               "kernels, MPI collectives)", (int)on, (int)staged);
    printf("ptrun: %s on %s (%s held on the device)%s%s\n", ptrt_cuda_target(r->gpu),
           ptrt_cuda_device(r->gpu), mem, r->devices > 1 ? " on rank 0" : "", ops);
  }
  printf("ptrun: %d thread%s%s, %.3g GFLOP per step, peak %.1f GFLOP/s%s (%s)\n", c->threads,
         c->threads == 1 ? "" : "s", r->devices > 1 ? " per rank" : "", r->flops / 1e9,
         r->peak_gflops, r->devices > 1 ? " per rank" : "",
         c->peak_gflops > 0 ? "--peak-gflops"
         : r->gpu ? "the device's dense bf16 peak; --peak-gflops sets another"
                  : "sgemm measured at start");
  char mbs[64] = "";
  int64_t rows = r->train.B;
  if (ps) {
    rows *= ps->pp->microbatches;
    snprintf(mbs, sizeof mbs, " (%d microbatches of %lld)", (int)ps->pp->microbatches,
             (long long)r->train.B);
  }
  if (r->train.tokens)
    printf("ptrun: data %lld tokens, batch %lld x %lld%s; lr %.3g, warm-up %lld, cosine to "
           "%.3g at step %lld\n", (long long)ptrt_tokens_count(r->data), (long long)rows,
           (long long)r->train.T, mbs, r->sched.lr, (long long)r->sched.warmup,
           r->sched.min_lr, (long long)r->sched.decay_steps);
  fflush(stdout);
}

/* One training step's communication, from the communicator's counters. */
static int run_step(run *r, binding *b) {
  const ptrt_comm_state *st = r->env.comm->state;
  double sent[PTC_MAX_MESH_AXES];
  int64_t calls[PTC_MAX_MESH_AXES];
  memcpy(sent, st->sent, sizeof sent);
  memcpy(calls, st->calls, sizeof calls);
  int rc = ptrt_program_run(b->prog, r->plan->training);
  for (int a = 0; a < PTC_MAX_MESH_AXES; a++) {
    r->comm_sent[a] += st->sent[a] - sent[a];
    r->comm_calls[a] += st->calls[a] - calls[a];
  }
  r->comm_steps++;
  return rc;
}

/* What a step's line and log record say besides the step function's
 * results. */
typedef struct step_line {
  int64_t step;
  double lr, dt;
  double mem, peak_mem;  /* bytes this rank holds in this step, and at most */
  double per_step;       /* tokens (or rows) of the step's whole batch */
  bool tokens;           /* per_step counts tokens, not rows */
  double peak;           /* FLOP/s of the whole mesh */
} step_line;

/* The end of a training step in either loop: a checkpoint or a signal
 * may stop the run (then *nrun counts the steps done), else the progress
 * line.  Returns -1 (failed), 1 (stop) or 0. */
static int end_of_step(run *r, int64_t step, double t_start, int64_t *nrun) {
  int stop = ckpt_boundary(r, step);
  if (stop < 0) return -1;
  if (stop) {
    *nrun = step - r->first_step + 1;
    return 1;
  }
  if (!r->quiet) progress(r, step, ptrt_now() - t_start);
  return 0;
}

/* Logs, and on rank 0 prints, one training step: the loss (result 0 of b's
 * program, whole on every rank after the plan's collectives), the other
 * f32[] results, time, throughput, MFU and memory.  -1 after reporting a
 * loss that is not finite. */
static int report_step(run *r, const binding *b, const step_line *l) {
  config *c = r->c;
  int64_t step = l->step;
  float loss = *(const float *)ptrt_program_result(b->prog, 0);
  if (!isfinite(loss)) {
    clear_progress(r);
    ptrt_error(r->ctx, "step %lld: the loss is %s; rerun with --check-numerics to stop "
               "at the first op that produces it, or lower --lr", (long long)step,
               isnan(loss) ? "NaN" : "infinite");
    return -1;
  }
  double mfu = r->flops / l->dt / l->peak;
  double rate = l->per_step / l->dt;
  bool tokens = l->tokens;
  json_t *rec = json_pack("{s:I,s:f,s:f,s:f,s:f,s:f,s:I,s:I}", "step", (json_int_t)step,
                          "loss", (double)loss, "lr", l->lr, "ms", 1e3 * l->dt,
                          tokens ? "tokens_per_s" : "rows_per_s", rate, "mfu", mfu,
                          "mem_bytes", (json_int_t)l->mem, "peak_bytes",
                          (json_int_t)l->peak_mem);
  char extra[256] = "";
  size_t ne = 0;
  const ptc_op *ret = &b->f->ops[b->f->nops - 1];
  for (int32_t i = 1; i < ret->nin; i++) {
    if (!is_scalar_f32(&b->f->values[ret->in[i]].type)) continue;
    float v = *(const float *)ptrt_program_result(b->prog, i);
    /* named as the IR names the value (the optimizer's %grad_norm),
     * else by position */
    char key[64];
    const char *vname = b->f->values[ret->in[i]].name;
    if (vname && strlen(vname) < sizeof key) snprintf(key, sizeof key, "%s", vname);
    else snprintf(key, sizeof key, "r%d", i);
    json_object_set_new(rec, key, json_real(v));
    if (ne < sizeof extra)
      ne += (size_t)snprintf(extra + ne, sizeof extra - ne, " | %s %.4g", key, v);
  }
  log_json(r, rec);
  /* fp16 (passes/optimizer.c): a step whose gradients overflowed kept its
   * old values and halved the loss scale; say so whatever --print-every */
  for (int32_t i = 1; i < ret->nin; i++) {
    const char *vname = b->f->values[ret->in[i]].name;
    if (!vname || strcmp(vname, "overflow") != 0) continue;
    if (*(const float *)ptrt_program_result(b->prog, i) == 0.0f || r->quiet) break;
    float scale = 0;
    for (int32_t k = 1; k < ret->nin; k++) {
      const char *kn = b->f->values[ret->in[k]].name;
      if (kn && strcmp(kn, "loss_scale") == 0) scale = *(const float *)ptrt_program_result(b->prog, k);
    }
    clear_progress(r);
    printf("step %*lld/%lld | fp16 gradients overflowed: update skipped, loss scale lowered "
           "to %g\n", r->step_width, (long long)step, (long long)c->steps, (double)scale);
    fflush(stdout);
    break;
  }
  if (!r->quiet && (step % c->print_every == 0 || step == c->steps || step == r->first_step)) {
    char mb[32], pk[32];
    ptc_bytes_text(mb, sizeof mb, l->mem);
    ptc_bytes_text(pk, sizeof pk, l->peak_mem);
    clear_progress(r);
    char lrs[32] = "";
    if (r->plan->training) snprintf(lrs, sizeof lrs, " | lr %.3e", l->lr);
    printf("step %*lld/%lld | loss %.6f%s | %8.1f ms | %9.0f %s | MFU %5.1f%% | "
           "mem %s (peak %s)%s\n", r->step_width, (long long)step, (long long)c->steps,
           loss, lrs, 1e3 * l->dt, rate, tokens ? "tok/s" : "rows/s", 100 * mfu, mb, pk, extra);
    fflush(stdout);
  }
  return 0;
}

static int train(run *r) {
  config *c = r->c;
  binding *b = &r->train;
  int64_t per_step = b->tokens ? b->B * b->T : 0;
  const char *unit = "tok/s";
  if (!b->tokens) {
    per_step = 1;
    for (int32_t i = 0; i < b->gf->nargs; i++)
      if (b->feeds[i] == F_ROWS) {
        per_step = b->gf->values[b->gf->args[i]].type.dims[0];
        break;
      }
    unit = "rows/s";
  }
  /* the whole mesh's peak: MFU counts the model's FLOPs once */
  double peak = r->peak_gflops * 1e9 * (double)r->devices;
  r->step_width = snprintf(NULL, 0, "%lld", (long long)c->steps);
  double t_start = ptrt_now(), t_steps = 0;
  int64_t nrun = c->steps >= r->first_step ? c->steps - r->first_step + 1 : 0;
  for (int64_t step = r->first_step; step <= c->steps; step++) {
    double lr = ptrt_schedule_lr(&r->sched, step);
    bool wrapped = false;
    if (feed_args(r, b, r->data, r->inputs, step - 1, step, lr, &wrapped) != 0) return -1;
    if (wrapped && !r->wrapped_logged && !r->quiet) {
      clear_progress(r);
      printf("ptrun: step %lld: the training data (%lld tokens) wrapped around to its "
             "start\n", (long long)step, (long long)ptrt_tokens_count(r->data));
      r->wrapped_logged = true;
    }
    ckpt_before(r, step);
    double t0 = ptrt_now();
    if (run_step(r, b) != 0) {
      ptrt_error(r->ctx, "step %lld failed (above)", (long long)step);
      return -1;
    }
    double dt = ptrt_now() - t0;
    t_steps += dt;
    ptrt_mem mem = ptrt_program_mem(b->prog);
    double base = (double)(mem.vars + mem.fixed);
    step_line line = {step, lr, dt, base + (double)mem.run_peak, base + (double)mem.peak,
                      (double)per_step, b->tokens, peak};
    int undone = ckpt_after(r, b, step);
    if (undone < 0 || (!undone && report_step(r, b, &line) != 0)) return -1;
    bool val_now = (c->nval || c->val_inputs) &&
                   (step % c->val_every == 0 || step == c->steps);
    if (val_now) {
      double vl;
      if (validate(r, step, &vl) != 0) return -1;
      if (!r->quiet) {
        clear_progress(r);
        printf("step %*lld/%lld | val loss %.6f (%lld batches)\n", r->step_width,
               (long long)step, (long long)c->steps, vl, (long long)c->val_batches);
        fflush(stdout);
      }
      log_json(r, json_pack("{s:I,s:f}", "step", (json_int_t)step, "val_loss", vl));
    }
    int stop = end_of_step(r, step, t_start, &nrun);
    if (stop < 0) return -1;
    if (stop) break;
  }
  if (nrun > 0 && memory_report(r) != 0) return -1;
  if (r->quiet) return 0;
  clear_progress(r);
  if (nrun > 0) {
    ptrt_mem mem = ptrt_program_mem(b->prog);
    char pk[32];
    ptc_bytes_text(pk, sizeof pk, (double)(mem.vars + mem.fixed + mem.peak));
    printf("ptrun: %lld steps in %.2f s: %.0f %s, MFU %.1f%%, peak memory %s%s "
           "(transient %lld bytes, planned %lld)\n", (long long)nrun, t_steps,
           (double)per_step * (double)nrun / t_steps, unit,
           100 * r->flops * (double)nrun / t_steps / peak, pk,
           r->devices > 1 ? " per rank" : "", (long long)mem.peak,
           (long long)ptrt_program_planned_peak(b->prog));
  }
  if (c->profile) ptrt_program_print_profile(b->prog, stdout);
  return 0;
}

/* ---- memory: what this rank holds against the plan --------------------------- */

/* What the runtime allocated for this rank's training programs, and the
 * memory plan's figures for the rank (codegen/memplan.c, the same numbers
 * `ptc --report` prints). */
typedef struct mem_figs {
  int64_t vars, fixed, arena, stash, held; /* allocated now */
  int64_t touched;                         /* the highest arena byte any run used */
  int64_t plan, plan_arena;                /* -1: no plan figures */
} mem_figs;

static int64_t peak_rss(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
  fclose(f);
  return kb < 0 ? -1 : (int64_t)kb * 1024;
}

/* What the rank holds now: the allocations, without the plan's figures. */
static void held(const run *r, mem_figs *m) {
  memset(m, 0, sizeof *m);
  m->vars = r->vars->bytes;
  m->arena = r->arena.size;
  m->stash = r->pipe ? r->pipe->stash_bytes : 0;
  int32_t n = r->pipe ? pipe_nfuncs(r->pipe) : 1;
  for (int32_t i = 0; i < n; i++) {
    const ptrt_program *p = r->pipe ? pipe_binding(r->pipe, i)->prog : r->train.prog;
    ptrt_mem pm = ptrt_program_mem(p);
    m->fixed += pm.fixed;
    if (pm.peak > m->touched) m->touched = pm.peak;
  }
  m->held = m->vars + m->fixed + m->arena + m->stash;
  m->plan = m->plan_arena = -1;
}

static void measure(run *r, mem_figs *m) {
  held(r, m);
  ptc_memplan plan;
  if (ptc_memplan_compute(r->plan->mod, &plan) == 0) {
    int32_t g = r->pipe ? r->pipe->stage : 0;
    if (g >= 0 && g < plan.ngroups) {
      m->plan = plan.groups[g].total;
      m->plan_arena = plan.groups[g].arena;
    }
  }
}

/* After the steps: rank 0 prints what it holds beside the plan and the
 * process's peak RSS; with --check-memory every rank compares its own and
 * a difference is an error.  0 or -1. */
static int memory_report(run *r) {
  mem_figs m;
  measure(r, &m);
  bool same = m.held == m.plan && m.touched == m.plan_arena;
  if (r->c->check_memory && !same) {
    ptrt_error(r->ctx, "--check-memory: rank %d holds %lld bytes (variables %lld + buffers "
               "%lld + arena %lld + stash %lld; the runs used %lld bytes of the arena) but "
               "the plan says %lld (arena %lld): the memory plan and the runtime disagree; "
               "please report it with the plan", r->rank, (long long)m.held,
               (long long)m.vars, (long long)m.fixed, (long long)m.arena, (long long)m.stash,
               (long long)m.touched, (long long)m.plan, (long long)m.plan_arena);
    return -1;
  }
  if (r->quiet) return 0;
  char h[32], rss[32];
  ptc_bytes_text(h, sizeof h, (double)m.held);
  int64_t rs = peak_rss();
  ptc_bytes_text(rss, sizeof rss, (double)(rs > 0 ? rs : 0));
  printf("ptrun: memory of rank 0: holds %lld bytes (%s: variables %lld + buffers %lld + "
         "arena %lld + stash %lld), plan %lld%s; arena high-water %lld; process peak RSS %s\n",
         (long long)m.held, h, (long long)m.vars, (long long)m.fixed, (long long)m.arena,
         (long long)m.stash, (long long)m.plan, same ? " (equal)" : " (DIFFERENT)",
         (long long)m.touched, rs > 0 ? rss : "unknown");
  return 0;
}

/* ---- the pipelined training loop ---------------------------------------------- */

/* Bytes this rank holds for the run: the variables of its stage, every
 * program's arguments, results and arena, and the stash sets. */
static double pipe_mem(const run *r) {
  mem_figs m;
  held(r, &m);
  return (double)m.held;
}

/* F<c>.<mb>: the forward of a chunk on microbatch mb of the step, its
 * results into a stash set of their own. */
static int pipe_forward(run *r, pipe_chunk *pc, int32_t mb, int64_t step, double lr,
                        bool *wrapped) {
  pipe_state *ps = r->pipe;
  char *set = pc->nspare ? pc->spare[--pc->nspare] : NULL;
  if (!set) {
    set = ptrt_alloc(pc->set_bytes);
    if (!set) {
      ptrt_error(r->ctx, "out of memory for the %lld-byte stash of @%s (microbatch %d)",
                 (long long)pc->set_bytes, pc->fwd.f->name, mb);
      return -1;
    }
    ps->stash_bytes += pc->set_bytes;
  }
  pc->live[mb] = set;
  for (int32_t k = 0; k < pc->nres; k++)
    ptrt_program_bind_result(pc->fwd.prog, k, set + pc->res_off[k]);
  int64_t s = (step - 1) * ps->pp->microbatches + mb; /* the global microbatch index */
  if (feed_args(r, &pc->fwd, r->data, r->inputs, s, step, lr, wrapped) != 0) return -1;
  return ptrt_program_run(pc->fwd.prog, true);
}

/* B<c>.<mb>: the backward, reading the stash its forward left; the set is
 * then free for another microbatch. */
static int pipe_backward(run *r, pipe_chunk *pc, int32_t mb, int64_t step, double lr) {
  pipe_state *ps = r->pipe;
  char *set = pc->live[mb];
  PTC_ASSERT(set); /* ptrt_plan_open checked that F comes before B */
  for (int32_t i = 0; i < pc->bwd.f->nargs; i++)
    if (pc->stash_res[i] >= 0)
      ptrt_program_bind_arg(pc->bwd.prog, i, set + pc->res_off[pc->stash_res[i]]);
  int64_t s = (step - 1) * ps->pp->microbatches + mb;
  if (feed_args(r, &pc->bwd, r->data, r->inputs, s, step, lr, NULL) != 0) return -1;
  int rc = ptrt_program_run(pc->bwd.prog, true);
  pc->live[mb] = NULL;
  pc->spare[pc->nspare++] = set;
  return rc;
}

/* One training step of this stage: its order of forward and backward
 * units over the step's microbatches, then @step.<stage> (the mean loss
 * and gradients, the optimizer), then every send this rank issued
 * delivered.  -1 after reporting. */
static int pipe_step(run *r, int64_t step, double lr, bool *wrapped) {
  pipe_state *ps = r->pipe;
  const ptrt_comm *c = r->env.comm;
  for (int32_t k = 0; k < ps->norder; k++) {
    ptrt_pipe_unit u = ps->order[k];
    pipe_chunk *pc = &ps->chunks[u.chunk / ps->pp->stages];
    int rc = u.backward ? pipe_backward(r, pc, u.mb, step, lr)
                        : pipe_forward(r, pc, u.mb, step, lr, wrapped);
    if (rc != 0) {
      ptrt_error(r->ctx, "step %lld failed at %c%d.%d (@%s on microbatch %d of stage %d's "
                 "order, above)", (long long)step, u.backward ? 'B' : 'F', u.chunk, u.mb,
                 u.backward ? pc->bwd.f->name : pc->fwd.f->name, u.mb, ps->stage);
      return -1;
    }
  }
  if (feed_args(r, &ps->step, NULL, NULL, 0, step, lr, NULL) != 0 ||
      ptrt_program_run(ps->step.prog, true) != 0) {
    ptrt_error(r->ctx, "step %lld failed in @%s (above)", (long long)step, ps->step.f->name);
    return -1;
  }
  snprintf(c->state->what, sizeof c->state->what, "the end of step %lld", (long long)step);
  if (c->flush && c->flush(c) != 0) {
    ptrt_error(r->ctx, "step %lld: a pipeline transfer failed (above)", (long long)step);
    return -1;
  }
  return 0;
}

/* The training loop of a pipelined plan: as train(), with a step made of
 * this stage's units; the loss and the gradient norm are @step.<stage>'s
 * results, the same on every rank. */
static int train_pipe(run *r) {
  config *c = r->c;
  pipe_state *ps = r->pipe;
  const ptrt_comm_state *st = r->env.comm->state;
  int64_t per_step = ps->pp->microbatches * (ps->tokens ? ps->B * ps->T : ps->rows);
  double peak = r->peak_gflops * 1e9 * (double)r->devices;
  r->step_width = snprintf(NULL, 0, "%lld", (long long)c->steps);
  double t_start = ptrt_now(), t_steps = 0, mem_peak = 0;
  int64_t nrun = c->steps >= r->first_step ? c->steps - r->first_step + 1 : 0;
  for (int64_t step = r->first_step; step <= c->steps; step++) {
    double lr = ptrt_schedule_lr(&r->sched, step);
    double sent[PTC_MAX_MESH_AXES];
    int64_t calls[PTC_MAX_MESH_AXES];
    memcpy(sent, st->sent, sizeof sent);
    memcpy(calls, st->calls, sizeof calls);
    bool wrapped = false;
    ckpt_before(r, step);
    double t0 = ptrt_now();
    if (pipe_step(r, step, lr, &wrapped) != 0) return -1;
    double dt = ptrt_now() - t0;
    t_steps += dt;
    for (int a = 0; a < PTC_MAX_MESH_AXES; a++) {
      r->comm_sent[a] += st->sent[a] - sent[a];
      r->comm_calls[a] += st->calls[a] - calls[a];
    }
    r->comm_steps++;
    if (wrapped && !r->wrapped_logged && !r->quiet) {
      clear_progress(r);
      printf("ptrun: step %lld: the training data (%lld tokens) wrapped around to its "
             "start\n", (long long)step, (long long)ptrt_tokens_count(r->data));
      r->wrapped_logged = true;
    }
    double mem = pipe_mem(r);
    mem_peak = mem > mem_peak ? mem : mem_peak;
    step_line line = {step, lr, dt, mem, mem_peak, (double)per_step, ps->tokens, peak};
    int undone = ckpt_after(r, &ps->step, step);
    if (undone < 0 || (!undone && report_step(r, &ps->step, &line) != 0)) return -1;
    int stop = end_of_step(r, step, t_start, &nrun);
    if (stop < 0) return -1;
    if (stop) break;
  }
  if (nrun > 0 && memory_report(r) != 0) return -1;
  if (r->quiet) return 0;
  clear_progress(r);
  if (nrun > 0) {
    char pk[32], sb[32];
    ptc_bytes_text(pk, sizeof pk, mem_peak);
    ptc_bytes_text(sb, sizeof sb, (double)ps->stash_bytes);
    printf("ptrun: %lld steps in %.2f s: %.0f %s, MFU %.1f%%, peak memory %s on rank 0 "
           "(stage %d; stash %s)\n", (long long)nrun, t_steps,
           (double)per_step * (double)nrun / t_steps, ps->tokens ? "tok/s" : "rows/s",
           100 * r->flops * (double)nrun / t_steps / peak, pk, ps->stage, sb);
  }
  if (c->profile)
    for (int32_t i = 0; i < pipe_nfuncs(ps); i++) {
      const binding *b = pipe_binding(ps, i);
      printf("@%s: ", b->f->name);
      ptrt_program_print_profile(b->prog, stdout);
    }
  return 0;
}

/* ---- communication statistics ---------------------------------------------- */

/* Per rank: steps, then per mesh axis the bytes and calls of all its
 * training steps, each number as two floats (hi + lo: integers below 2^48
 * exactly), gathered over the mesh's axes from the last to the first so
 * that every rank ends with the world's, in rank order. */
enum { STAT_NUMS = 1 + 2 * PTC_MAX_MESH_AXES, STAT_FLOATS = 2 * STAT_NUMS };

static void stat_put(float *v, int i, double x) {
  v[2 * i] = (float)x;
  v[2 * i + 1] = (float)(x - (double)v[2 * i]);
}
static double stat_get(const float *v, int i) { return (double)v[2 * i] + (double)v[2 * i + 1]; }

/* The world's numbers (heap: size * STAT_FLOATS), or NULL after reporting. */
static float *gather_stats(run *r) {
  const ptrt_comm *c = r->env.comm;
  int64_t world = c->size;
  float *buf = ptc_xcalloc((size_t)(world * STAT_FLOATS), sizeof *buf);
  float *tmp = ptc_xcalloc((size_t)(world * STAT_FLOATS), sizeof *tmp);
  stat_put(buf, 0, (double)r->comm_steps);
  for (int a = 0; a < PTC_MAX_MESH_AXES; a++) {
    stat_put(buf, 1 + 2 * a, r->comm_sent[a]);
    stat_put(buf, 2 + 2 * a, (double)r->comm_calls[a]);
  }
  int64_t len = STAT_FLOATS;
  for (int a = c->mesh.naxes - 1; a >= 0; a--) {
    snprintf(c->state->what, sizeof c->state->what, "gathering --comm-stats over %s",
             c->mesh.axes[a].name);
    if (c->all_gather(c, a, buf, tmp, len) != 0) {
      ptrt_error(r->ctx, "gathering the communication statistics failed (above)");
      free(buf);
      free(tmp);
      return NULL;
    }
    len *= c->mesh.axes[a].size;
    memcpy(buf, tmp, (size_t)len * sizeof *buf);
  }
  free(tmp);
  return buf;
}

static json_t *stat_per_step(double total, double steps, bool integral) {
  double v = steps > 0 ? total / steps : 0;
  if (integral && v == floor(v)) return json_integer((json_int_t)v);
  return json_real(v);
}

/* Rank 0 prints its bytes per step per axis and writes --comm-stats. */
static int comm_report(run *r) {
  const ptrt_comm *c = r->env.comm;
  const ptc_mesh *m = &c->mesh;
  if (r->devices > 1 && !r->quiet && r->comm_steps > 0) {
    printf("comm:");
    for (int a = 0; a < m->naxes; a++) {
      char b[32];
      ptc_bytes_text(b, sizeof b, r->comm_sent[a] / (double)r->comm_steps);
      double calls = (double)r->comm_calls[a] / (double)r->comm_steps;
      printf("%s %s %s/step (%g call%s)", a ? "," : "", m->axes[a].name, b, calls,
             calls == 1 ? "" : "s");
    }
    printf(" sent by rank 0 per training step\n");
    fflush(stdout);
  }
  if (!r->c->comm_stats) return 0;
  float *all = gather_stats(r);
  if (!all) return -1;
  int rc = 0;
  if (!r->quiet) {
    FILE *f = fopen(r->c->comm_stats, "w");
    if (!f) {
      ptrt_file_error(r->ctx, r->c->comm_stats, "cannot write: %s", strerror(errno));
      free(all);
      return -1;
    }
    for (int64_t k = 0; k < c->size; k++) {
      const float *v = all + k * STAT_FLOATS;
      double steps = stat_get(v, 0);
      json_t *sent = json_object(), *calls = json_object();
      for (int a = 0; a < m->naxes; a++) {
        json_object_set_new(sent, m->axes[a].name, stat_per_step(stat_get(v, 1 + 2 * a), steps, false));
        json_object_set_new(calls, m->axes[a].name, stat_per_step(stat_get(v, 2 + 2 * a), steps, true));
      }
      json_t *o = json_pack("{s:I,s:I,s:o,s:o}", "rank", (json_int_t)k, "steps",
                            (json_int_t)steps, "sent", sent, "calls", calls);
      char *line = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
      json_decref(o);
      if (line) fprintf(f, "%s\n", line);
      free(line);
    }
    if (fclose(f) != 0) {
      ptrt_file_error(r->ctx, r->c->comm_stats, "cannot write: %s", strerror(errno));
      rc = -1;
    }
  }
  free(all);
  return rc;
}

static void run_fini(run *r) {
  if (r->log) fclose(r->log);
  binding_fini(&r->train);
  binding_fini(&r->val);
  pipe_fini(r->pipe);
  ptrt_ckpt_session_destroy(r->ck); /* before the variables it writes from */
  if (r->gpu && r->vars) ptrt_cuda_free(r->gpu, r->vars->dev);
  ptrt_vars_destroy(r->vars);
  ptrt_arena_fini(&r->arena);
  ptrt_tokens_close(r->data);
  ptrt_tokens_close(r->vdata);
  ptrt_st_close(r->inputs);
  ptrt_st_close(r->vinputs);
  ptrt_pool_destroy(r->pool);
  ptrt_plan_close(r->plan);
  ptrt_cuda_close(r->gpu);
}

int main(int argc, char **argv) {
  config c;
  memset(&c, 0, sizeof c);
  c.lr = 1e-3;
  c.seed = 1337;
  c.threads = ptrt_default_threads();
  c.val_batches = 8;
  c.print_every = 1;
  c.timeout = 300;
  bool steps_given = false;
  int status = parse_args(&c, argc, argv, &steps_given);
  if (status == 0 && c.help) {
    print_help(stdout);
  } else if (status == 0 && c.version) {
    printf("ptrun %s, %s\n", PTC_VERSION_STRING,
           PTC_HAVE_MPI ? "with MPI (plans for a mesh run under mpirun or srun)"
                        : "without MPI (single-device plans only)");
  } else if (status == 0) {
    if (!c.plan) status = usage("no plan given%s", "");
    else if (!steps_given) status = usage("--steps N is required (the last step's number)%s", "");
    else if (c.load && c.resume)
      status = usage("--load-weights and --resume both set the variables; give one%s", "");
    else status = ckpt_check_args(&c);
  }
  if (status != 0 || c.help || c.version) {
    config_fini(&c);
    return status;
  }
  ptc_ctx *ctx = ptc_ctx_create();
  run r;
  memset(&r, 0, sizeof r);
  r.c = &c;
  r.ctx = ctx;
  status = setup(&r);
  /* a refusal at set-up is the same on every rank: they meet and end
   * together once rank 0 has said why (an abort could cut that off) */
  bool setup_failed = status != 0;
  r.tty = isatty(2) && !r.quiet;
  if (status == 0) { /* warnings: the same on every rank, so rank 0's are enough */
    if (r.quiet) r.diag_done = strlen(ptc_ctx_diag_text(ctx));
    flush_diags(&r);
  }
  if (status == 0) {
    print_header(&r);
    status = r.pipe ? train_pipe(&r) : train(&r);
  }
  if (status == 0 && c.save && r.gpu && ptrt_cuda_vars_download(r.gpu, ctx, r.vars) != 0)
    status = -1;
  if (status == 0 && c.save && ptrt_save_weights(ctx, c.save, r.vars) != 0) status = -1;
  if (status == 0 && r.ck && ptrt_ckpt_session_finish(r.ck) != 0) status = -1;
  if (status == 0) status = comm_report(&r);
  flush_diags(&r);
  if (status != 0 && r.mpi && !setup_failed)
    ptrt_comm_abort(r.mpi, EXIT_USER); /* no rank waits for this one */
  if (status != 0 && !r.mpi) ptrt_comm_mpi_unwind(c.timeout); /* rank 0 printed why, first */
  run_fini(&r);
  ptrt_comm_mpi_destroy(r.mpi);
  ptc_ctx_destroy(ctx);
  config_fini(&c);
  return status == 0 ? 0 : EXIT_USER;
}
