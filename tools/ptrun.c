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
 * (ptrt_comm_abort) so none waits for it.  See docs/runtime.md.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ptc_config.h"
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
  const char *save_ckpt, *resume;
  int64_t print_every;
  bool check_numerics, profile;
  double timeout;
  const char *comm_stats;
  bool help, version;
} config;

typedef enum opt_kind { K_FLAG, K_STR, K_LIST, K_INT, K_FLOAT } opt_kind;

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
    {"save-checkpoint", K_STR, "F.safetensors", "write every variable (parameters and "
                                                "optimizer state) and the step at the end"},
    {"resume", K_STR, "F.safetensors", "continue from a checkpoint: its variables, from the "
                                       "step after its own to --steps"},
    {"print-every", K_INT, "K", "print one step line every K steps (default 1)"},
    {"timeout", K_FLOAT, "SECONDS", "a rank of a multi-rank run that waits this long for "
                                    "a peer stops every rank, naming the collective "
                                    "(default 300)"},
    {"comm-stats", K_STR, "FILE.jsonl", "write, from rank 0, one JSON line per rank: the bytes "
                                        "and calls of a training step per mesh axis"},
    {"check-numerics", K_FLAG, NULL, "stop at the first op that produces a NaN or an "
                                     "infinity, naming it"},
    {"profile", K_FLAG, NULL, "print the time spent in each kind of op at the end"},
    {"help", K_FLAG, NULL, "print this help and exit"},
    {"version", K_FLAG, NULL, "print the version and exit"},
};

static void print_help(FILE *f) {
  fprintf(f, "usage: ptrun PLAN --data FILE[,FILE...] --steps N [options]\n"
             "\n"
             "Trains the model of PLAN (a directory written by 'ptc MODEL.ptg -o PLAN')\n"
             "on CPU, printing one line per step.  A plan without a training step\n"
             "(@forward only) is evaluated on the same batches.  A plan for a mesh of\n"
             "N devices runs as N ranks: 'mpirun -np N ptrun PLAN ...' (or srun -n N).\n\n");
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
  else if (!strcmp(n, "save-checkpoint")) c->save_ckpt = val;
  else if (!strcmp(n, "resume")) c->resume = val;
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

/* How each argument of a function is fed. */
typedef enum feed { F_TOKENS, F_TARGETS, F_LR, F_STEP, F_ROWS } feed;

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
  binding train, val; /* val.f NULL: no validation */
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

static void human_bytes(char *out, size_t cap, double v) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_buf_put_bytes(&b, v);
  snprintf(out, cap, "%s", b.data);
  ptc_buf_fini(&b);
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
  json_object_set_new(o, "entry", json_string(r->train.f->name));
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
  return c->save ? "--save-weights" : c->load ? "--load-weights"
         : c->save_ckpt ? "--save-checkpoint" : c->resume ? "--resume" : NULL;
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
  r->plan = ptrt_plan_open(r->ctx, c->plan);
  if (!r->plan) return -1;
  r->env.ctx = r->ctx;
  r->devices = ptc_mesh_size(&r->plan->mod->mesh);
  if (choose_comm(r, launched) != 0) return -1;
  r->pool = ptrt_pool_create(r->ctx, c->threads);
  if (!r->pool) return -1;
  r->env.pool = r->pool;
  ptrt_blas_set_threads(c->threads);

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
  /* the schedule */
  r->sched.lr = c->lr;
  r->sched.min_lr = c->min_lr_given ? c->min_lr : c->lr / 10;
  r->sched.decay_steps = c->decay_given ? c->decay_steps : c->steps;
  r->sched.warmup = c->warmup_given ? c->warmup : (c->steps / 10 < 100 ? c->steps / 10 : 100);
  if (!c->val_every_given) c->val_every = c->steps / 10 > 0 ? c->steps / 10 : 1;

  /* data */
  char what[160];
  int64_t bound = token_bound(r->train.gf, what, sizeof what);
  if (r->train.tokens) {
    if (!c->ndata) {
      ptrt_error(r->ctx, "@%s reads tokens: give the training data with --data FILE "
                 "(make one with 'ptdata TEXT -o FILE')", r->train.f->name);
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
               "its inputs come from --inputs FILE.safetensors", r->train.f->name);
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
  r->first_step = 1;
  if (c->resume) {
    int64_t done = 0;
    if (ptrt_load_checkpoint(r->ctx, c->resume, r->vars, &done) != 0) return -1;
    r->first_step = done + 1;
  }
  ptrt_program_opts topts = {.in_place = pl->training, .fused = pl->fused};
  r->train.prog = ptrt_program_create(&r->env, r->train.f, r->vars, &topts);
  if (!r->train.prog) return -1;
  if (r->val.f) {
    ptrt_program_opts vopts = {.loss_only = true};
    r->val.prog = ptrt_program_create(&r->env, r->val.f, r->vars, &vopts);
    if (!r->val.prog) return -1;
  }
  ptrt_program_set_check_finite(r->train.prog, c->check_numerics);
  ptrt_program_set_profile(r->train.prog, c->profile);
  /* MFU: the model's FLOPs (whole tensors) against the peak of every device */
  r->flops = ptrt_func_flops(r->train.gf);
  if (c->peak_gflops > 0) r->peak_gflops = c->peak_gflops;
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
  human_bytes(pb, sizeof pb, 4.0 * (double)ptc_module_param_count(r->plan->mod));
  human_bytes(vb, sizeof vb, (double)r->vars->bytes);
  printf("ptrun: plan %s (@%s, %s), %lld parameters (%s), variables %s%s\n", c->plan,
         r->plan->model, r->plan->training ? "training step" : "evaluation only: no @step",
         (long long)ptc_module_param_count(r->plan->mod), pb, vb,
         r->devices > 1 ? " per rank" : "");
  if (r->devices > 1) {
    char mt[128];
    mesh_text(mt, sizeof mt, &r->plan->mod->mesh);
    printf("ptrun: %lld ranks on %s (%s communicator, timeout %g s), each running its "
           "pieces of the plan\n", (long long)r->devices, mt, r->env.comm->name, c->timeout);
  }
  printf("ptrun: %d thread%s%s, %.3g GFLOP per step, peak %.1f GFLOP/s%s (%s)\n", c->threads,
         c->threads == 1 ? "" : "s", r->devices > 1 ? " per rank" : "", r->flops / 1e9,
         r->peak_gflops, r->devices > 1 ? " per rank" : "",
         c->peak_gflops > 0 ? "--peak-gflops" : "sgemm measured at start");
  if (r->train.tokens)
    printf("ptrun: data %lld tokens, batch %lld x %lld; lr %.3g, warm-up %lld, cosine to "
           "%.3g at step %lld\n", (long long)ptrt_tokens_count(r->data),
           (long long)r->train.B, (long long)r->train.T, r->sched.lr,
           (long long)r->sched.warmup, r->sched.min_lr, (long long)r->sched.decay_steps);
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
  if (r->first_step > 1 && !r->quiet)
    printf("ptrun: resuming after step %lld of %s\n", (long long)r->first_step - 1, c->resume);
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
    double t0 = ptrt_now();
    if (run_step(r, b) != 0) {
      ptrt_error(r->ctx, "step %lld failed (above)", (long long)step);
      return -1;
    }
    double dt = ptrt_now() - t0;
    t_steps += dt;
    /* the loss is whole on every rank after the plan's collectives */
    float loss = *(const float *)ptrt_program_result(b->prog, 0);
    if (!isfinite(loss)) {
      clear_progress(r);
      ptrt_error(r->ctx, "step %lld: the loss is %s; rerun with --check-numerics to stop "
                 "at the first op that produces it, or lower --lr", (long long)step,
                 isnan(loss) ? "NaN" : "infinite");
      return -1;
    }
    ptrt_mem mem = ptrt_program_mem(b->prog);
    double base = (double)(mem.vars + mem.fixed);
    double mfu = r->flops / dt / peak;
    double rate = (double)per_step / dt;
    json_t *rec = json_pack("{s:I,s:f,s:f,s:f,s:f,s:f,s:I,s:I}", "step", (json_int_t)step,
                            "loss", (double)loss, "lr", lr, "ms", 1e3 * dt,
                            b->tokens ? "tokens_per_s" : "rows_per_s", rate, "mfu", mfu,
                            "mem_bytes", (json_int_t)(base + (double)mem.run_peak),
                            "peak_bytes", (json_int_t)(base + (double)mem.peak));
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
    if (!r->quiet && (step % c->print_every == 0 || step == c->steps || step == r->first_step)) {
      char mb[32], pk[32];
      human_bytes(mb, sizeof mb, base + (double)mem.run_peak);
      human_bytes(pk, sizeof pk, base + (double)mem.peak);
      clear_progress(r);
      char lrs[32] = "";
      if (r->plan->training) snprintf(lrs, sizeof lrs, " | lr %.3e", lr);
      printf("step %*lld/%lld | loss %.6f%s | %8.1f ms | %9.0f %s | MFU %5.1f%% | "
             "mem %s (peak %s)%s\n", r->step_width, (long long)step, (long long)c->steps,
             loss, lrs, 1e3 * dt, rate, unit, 100 * mfu, mb, pk, extra);
      fflush(stdout);
    }
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
    if (!r->quiet) progress(r, step, ptrt_now() - t_start);
  }
  if (r->quiet) return 0;
  clear_progress(r);
  if (nrun > 0) {
    ptrt_mem mem = ptrt_program_mem(b->prog);
    char pk[32];
    human_bytes(pk, sizeof pk, (double)(mem.vars + mem.fixed + mem.peak));
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
      human_bytes(b, sizeof b, r->comm_sent[a] / (double)r->comm_steps);
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
  ptrt_vars_destroy(r->vars);
  ptrt_tokens_close(r->data);
  ptrt_tokens_close(r->vdata);
  ptrt_st_close(r->inputs);
  ptrt_st_close(r->vinputs);
  ptrt_pool_destroy(r->pool);
  ptrt_plan_close(r->plan);
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
  r.tty = isatty(2) && !r.quiet;
  if (status == 0) { /* warnings: the same on every rank, so rank 0's are enough */
    if (r.quiet) r.diag_done = strlen(ptc_ctx_diag_text(ctx));
    flush_diags(&r);
  }
  if (status == 0) {
    print_header(&r);
    status = train(&r);
  }
  if (status == 0 && c.save && ptrt_save_weights(ctx, c.save, r.vars) != 0) status = -1;
  if (status == 0 && c.save_ckpt &&
      ptrt_save_checkpoint(ctx, c.save_ckpt, r.vars,
                           c.steps > r.first_step - 1 ? c.steps : r.first_step - 1) != 0)
    status = -1;
  if (status == 0) status = comm_report(&r);
  flush_diags(&r);
  if (status != 0 && r.mpi) ptrt_comm_abort(r.mpi, EXIT_USER); /* no rank waits for this one */
  run_fini(&r);
  ptrt_comm_mpi_destroy(r.mpi);
  ptc_ctx_destroy(ctx);
  config_fini(&c);
  return status == 0 ? 0 : EXIT_USER;
}
