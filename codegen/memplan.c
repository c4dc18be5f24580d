/* memplan.c -- the memory plan of a compiled module: what every rank
 * holds, by category, at the peak of its step, and the figures beside it
 * (FLOPs, bytes sent per mesh axis, the pipeline's bubble).
 *
 * Everything here is computed from types, never from tensor data, so a
 * report for a 1,000-rank mesh and a 175-billion-parameter model costs the
 * IR of one copy of the model (docs/memory.md).
 *
 * What a rank holds is what ptrun allocates for it (tools/ptrun.c):
 *
 *   variables    every variable its functions read, each rounded up to 64
 *                bytes (runtime/init.c): parameters (or their 16-bit
 *                copies), optimizer state (moments, fp32 master weights,
 *                the loss scale), gradient accumulators
 *   fixed        argument and result buffers of its programs that are not
 *                bound to a stash set (the batch, the loss, the norm)
 *   arena        one region the rank's programs share, run one at a time:
 *                the largest of their static plans (codegen/liveness.c),
 *                16-bit conversion workspace included
 *   stash        per pipeline chunk, one set of the forward's results per
 *                microbatch in flight at most (the schedule's order says
 *                how many), each result 64-byte aligned
 *
 * so `total` is the figure ptrun's measured peak must equal.  The split by
 * category is taken at the op where the arena holds the most live bytes:
 * activations (forward values kept for the backward, and stash sets),
 * gradients (values of %grad.<p>, what reductions and slices make of them,
 * accumulators), communication buffers (gradient buckets, updated pieces
 * gathered back), ZeRO-3 gather buffers (parameters gathered for use) and
 * workspace (everything else: backward temporaries, recomputed values,
 * conversion scratch, gaps of the static placement).
 *
 * Ranks whose figures are equal are one group: all ranks of an SPMD plan
 * (every rank holds pieces of the same shapes), the ranks of one pipeline
 * stage otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/codegen.h"
#include "codegen/memplan.h"
#include "passes/passes.h"

const char *const ptc_mem_cat_names[PTC_MEM_NCAT] = {
    [PTC_MEM_PARAMS] = "parameters",       [PTC_MEM_GRADS] = "gradients",
    [PTC_MEM_OPTIM] = "optimizer state",   [PTC_MEM_ACTS] = "activations",
    [PTC_MEM_COMM] = "communication",      [PTC_MEM_GATHER] = "zero-3 gather",
    [PTC_MEM_WORKSPACE] = "workspace",     [PTC_MEM_IO] = "inputs and results",
};

ptc_func *ptc_plan_entry(const ptc_module *m) {
  ptc_func *f = ptc_module_find_func(m, "step");
  if (!f && ptc_module_get_attr(m, "pipeline.stages")) f = ptc_module_find_func(m, "step.0");
  return f ? f : ptc_module_find_func(m, "forward");
}

static int64_t align64(int64_t n) { return (n + 63) & ~(int64_t)63; }

/* The category of variable p. */
static int var_cat(const ptc_module *m, int32_t p) {
  const ptc_param *v = &m->params[p];
  size_t n = strlen(v->name);
  if (n > 9 && strcmp(v->name + n - 9, ".grad_acc") == 0) return PTC_MEM_GRADS;
  if (v->trainable) return ptc_precision_copy_of(m, p) >= 0 ? PTC_MEM_OPTIM : PTC_MEM_PARAMS;
  if (v->init.kind == PTC_INIT_COPY) return PTC_MEM_PARAMS;
  return PTC_MEM_OPTIM;
}

static bool is_collective(ptc_opcode c) {
  return (ptc_opinfo_get(c)->flags & PTC_OPF_COLLECTIVE) != 0;
}

/* The op that computes the loss: what the first result is made from
 * (through reductions over the mesh), or -1. */
static int32_t loss_op(const ptc_func *f) {
  const ptc_op *ret = &f->ops[f->nops - 1];
  if (ret->code != PTC_OP_RETURN || ret->nin == 0) return -1;
  int32_t v = ret->in[0];
  while (f->values[v].kind == PTC_VALUE_OP) {
    const ptc_op *op = &f->ops[f->values[v].def];
    if (!(is_collective(op->code) || op->code == PTC_OP_CAST) || op->nin == 0)
      return f->values[v].def;
    v = op->in[0];
  }
  return -1;
}

/* Per value of f, its category (transient values; variables and
 * arguments get theirs elsewhere).  fwd_end: ops up to it are the forward
 * (-1: none, e.g. a pipeline's backward chunk; nops: all of them). */
static int8_t *value_cats(const ptc_func *f, int32_t fwd_end) {
  int8_t *cat = ptc_xcalloc((size_t)f->nvalues + 1, sizeof *cat);
  for (int32_t v = 0; v < f->nvalues; v++) cat[v] = PTC_MEM_WORKSPACE;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    bool any_grad = false, any_comm = false, from_var = false;
    int32_t ngrad = 0;
    for (int32_t k = 0; k < op->nin; k++) {
      const ptc_value *iv = &f->values[op->in[k]];
      if (iv->kind == PTC_VALUE_OP) {
        any_grad |= cat[op->in[k]] == PTC_MEM_GRADS;
        ngrad += cat[op->in[k]] == PTC_MEM_GRADS;
        any_comm |= cat[op->in[k]] == PTC_MEM_COMM;
      } else if (iv->kind == PTC_VALUE_PARAM) {
        from_var = true;
        any_grad |= var_cat(f->mod, iv->def) == PTC_MEM_GRADS;
      }
    }
    int c;
    if (ptc_op_attr_bool(op, "recompute", false)) c = PTC_MEM_WORKSPACE;
    else if (op->code == PTC_OP_ALL_GATHER && from_var) c = PTC_MEM_GATHER;
    else if (op->code == PTC_OP_CONCAT && ngrad > 1) c = PTC_MEM_COMM; /* a bucket */
    else if (any_comm && (is_collective(op->code) || op->code == PTC_OP_RESHAPE)) c = PTC_MEM_COMM;
    else if (any_grad || any_comm) c = PTC_MEM_GRADS;
    else if (i <= fwd_end) c = PTC_MEM_ACTS;
    else c = PTC_MEM_WORKSPACE;
    for (int32_t r = 0; r < op->nout; r++) {
      int32_t v = op->out[r];
      const char *n = f->values[v].name;
      cat[v] = (int8_t)(n && strncmp(n, "grad.", 5) == 0 && c != PTC_MEM_COMM ? PTC_MEM_GRADS : c);
      /* a scalar made from gradients (the norm) is workspace */
      if (f->values[v].type.rank == 0 && cat[v] == PTC_MEM_GRADS) cat[v] = PTC_MEM_WORKSPACE;
    }
    /* the update's outputs and what is gathered back after it are not
     * gradients, though made from them */
    if (op->code == PTC_OP_ADAMW || op->code == PTC_OP_SGD)
      for (int32_t r = 0; r < op->nout; r++) cat[op->out[r]] = PTC_MEM_WORKSPACE;
    if (op->code == PTC_OP_ALL_GATHER && !from_var && cat[op->out[0]] == PTC_MEM_WORKSPACE)
      cat[op->out[0]] = PTC_MEM_COMM;
  }
  return cat;
}

/* One program's figures: its arena (total), fixed buffers, the live
 * bytes by category at its fullest op, and gradients live when the update
 * begins. */
typedef struct prog_figs {
  int64_t arena, fixed;
  int64_t at_peak[PTC_MEM_NCAT];
  int64_t live_peak;          /* the most live bytes at one op */
  int32_t peak_op;
  int64_t acts_kept;          /* activations live after the forward's last op */
  int64_t grads_at_update;    /* gradient bytes live when the update begins */
  double model_flops, hw_flops;
} prog_figs;

static void prog_analyze(const ptc_func *f, bool fwd_chunk, bool bwd_chunk,
                         const bool *bound_arg, const bool *bound_res, prog_figs *o) {
  memset(o, 0, sizeof *o);
  ptc_liveness l;
  ptc_liveness_compute(&l, f, true, false, true);
  o->arena = l.total;
  for (int32_t i = 0; i < f->nargs; i++)
    if (!bound_arg || !bound_arg[i]) o->fixed += ptc_type_bytes(&f->values[f->args[i]].type);
  for (int32_t i = 0; i < f->nresults; i++)
    if (!bound_res || !bound_res[i]) o->fixed += ptc_type_bytes(&f->result_types[i]);
  int32_t lop = fwd_chunk ? f->nops : bwd_chunk ? -1 : loss_op(f);
  int8_t *cat = value_cats(f, lop);
  /* The update begins after the backward: after the last op that makes a
   * %grad.<p> value and the reductions issued right after it (packing
   * into buckets included).  At ZeRO stage 1 those reductions wait for the
   * update (passes/partition.c) and belong to it. */
  int32_t upd = -1;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    if (op->code == PTC_OP_ADAMW || op->code == PTC_OP_SGD) break;
    for (int32_t r = 0; r < op->nout; r++) {
      const char *n = f->values[op->out[r]].name;
      if (n && strncmp(n, "grad.", 5) == 0) upd = i + 1;
    }
  }
  const ptc_attr *za = ptc_module_get_attr(f->mod, "zero");
  bool stage1 = za && za->kind == PTC_ATTR_INT && za->u.i == 1;
  while (!stage1 && upd > 0 && upd < f->nops) {
    const ptc_op *op = &f->ops[upd];
    bool comm = is_collective(op->code) || op->code == PTC_OP_RESHAPE ||
                op->code == PTC_OP_CONCAT || op->code == PTC_OP_SLICE;
    bool on_grads = op->nin > 0 && (cat[op->in[0]] == PTC_MEM_GRADS || cat[op->in[0]] == PTC_MEM_COMM);
    if (!comm || !on_grads) break;
    upd++;
  }
  o->live_peak = -1;
  for (int32_t i = 0; i < f->nops; i++) {
    int64_t c[PTC_MEM_NCAT] = {0}, live = 0;
    for (int32_t v = 0; v < f->nvalues; v++) {
      if (!ptc_liveness_allocates(&l, v) || l.where[v] != PTC_LIVE_TRANSIENT) continue;
      int32_t last = l.last[v];
      if (l.first[v] > i || last == -1 || (last != PTC_LIVE_END && last < i)) continue;
      int64_t n = ptc_type_bytes(&f->values[v].type);
      c[cat[v]] += n;
      live += n;
    }
    if (l.snapshot[i]) {
      c[PTC_MEM_WORKSPACE] += l.snapshot[i];
      live += l.snapshot[i];
    }
    if (l.workspace && l.workspace[i]) {
      c[PTC_MEM_WORKSPACE] += l.workspace[i];
      live += l.workspace[i];
    }
    if (live > o->live_peak) {
      o->live_peak = live;
      o->peak_op = i;
      memcpy(o->at_peak, c, sizeof c);
    }
    if (i == lop + 1 || (lop == f->nops && i == f->nops - 1)) o->acts_kept = c[PTC_MEM_ACTS];
    if (i == upd) {
      /* what is live as the update begins: made before it */
      int64_t gsum = 0;
      for (int32_t v = 0; v < f->nvalues; v++) {
        if (!ptc_liveness_allocates(&l, v) || l.where[v] != PTC_LIVE_TRANSIENT) continue;
        int32_t last = l.last[v];
        if (l.first[v] >= i || last == -1 || (last != PTC_LIVE_END && last < i)) continue;
        if (cat[v] == PTC_MEM_GRADS) gsum += ptc_type_bytes(&f->values[v].type);
      }
      o->grads_at_update = gsum;
    }
  }
  if (upd < 0 || upd >= f->nops) o->grads_at_update = 0;
  for (int32_t i = 0; i < f->nops; i++) {
    double fl = ptc_op_cost(f, &f->ops[i]).flops;
    o->hw_flops += fl;
    if (!ptc_op_attr_bool(&f->ops[i], "recompute", false)) o->model_flops += fl;
  }
  free(cat);
  ptc_liveness_fini(&l);
}

/* "F0.1 B0.1 ..." -> how many sets of each chunk are in flight at most. */
static void max_in_flight(const char *order, int32_t nchunks, int32_t *most) {
  int32_t *live = ptc_xcalloc((size_t)nchunks + 1, sizeof *live);
  for (int32_t c = 0; c < nchunks; c++) most[c] = 0;
  const char *p = order;
  while (*p) {
    while (*p == ' ') p++;
    if (!*p) break;
    char kind = *p++;
    long c = strtol(p, (char **)&p, 10);
    if (*p == '.') strtol(p + 1, (char **)&p, 10);
    if (c < 0 || c >= nchunks) continue;
    if (kind == 'F' && ++live[c] > most[c]) most[c] = live[c];
    if (kind == 'B' && live[c] > 0) live[c]--;
  }
  free(live);
}

static void comm_of(const ptc_func *gf, double times, ptc_memplan_group *g, int naxes) {
  double s[PTC_MAX_MESH_AXES];
  int64_t c[PTC_MAX_MESH_AXES];
  ptc_comm_volume(gf, s, c);
  for (int a = 0; a < naxes; a++) {
    g->sent[a] += times * s[a];
    g->calls[a] += (int64_t)times * c[a];
  }
}

static void vars_of(const ptc_module *lm, const bool *hold, ptc_memplan_group *g) {
  for (int32_t p = 0; p < lm->nparams; p++) {
    if (hold && !hold[p]) continue;
    int64_t n = align64(ptc_type_bytes(&lm->params[p].type));
    int c = var_cat(lm, p);
    g->vars[c] += n;
    g->vars_exact[c] += ptc_type_bytes(&lm->params[p].type);
    g->vars_total += n;
    if (lm->params[p].trainable) g->param_count += ptc_type_numel(&lm->params[p].type);
  }
}

static void add_prog(ptc_memplan_group *g, const prog_figs *pf, const char *fname) {
  g->fixed += pf->fixed;
  if (pf->arena > g->arena) g->arena = pf->arena;
  if (pf->live_peak > g->live_peak) {
    g->live_peak = pf->live_peak;
    memcpy(g->at_peak, pf->at_peak, sizeof g->at_peak);
    snprintf(g->peak_at, sizeof g->peak_at, "@%s op %d", fname, pf->peak_op);
  }
}

static void finish(ptc_memplan_group *g) {
  /* what ptrun holds: the arena at its largest, whatever is live in it */
  g->total = g->vars_total + g->fixed + g->arena + g->stash;
  for (int c = 0; c < PTC_MEM_NCAT; c++) g->cat[c] = g->vars[c] + g->at_peak[c];
  g->cat[PTC_MEM_IO] += g->fixed;
  g->cat[PTC_MEM_ACTS] += g->stash;
  g->cat[PTC_MEM_WORKSPACE] += g->arena - g->live_peak; /* placement gaps */
  /* as the literature counts them: tensor bytes, without alignment */
  g->model_states = g->vars_exact[PTC_MEM_PARAMS] + g->vars_exact[PTC_MEM_OPTIM] +
                    g->vars_exact[PTC_MEM_GRADS] + g->grads_at_update;
}

/* The world ranks of group g, as "pp=1" or "all". */
static void group_ranks(const ptc_module *m, ptc_memplan_group *g, int pp) {
  int64_t size = ptc_mesh_size(&m->mesh);
  if (size < 1) size = 1;
  if (g->stage < 0 || pp < 0) {
    g->nranks = size;
    g->first_rank = 0;
    return;
  }
  g->nranks = size / m->mesh.axes[pp].size;
  int32_t coord[PTC_MAX_MESH_AXES] = {0};
  coord[pp] = g->stage;
  g->first_rank = ptc_mesh_rank(&m->mesh, coord);
}

int ptc_memplan_compute(const ptc_module *m, ptc_memplan *out) {
  memset(out, 0, sizeof *out);
  const ptc_attr *pa = ptc_module_get_attr(m, "partitioned");
  bool part = pa && pa->kind == PTC_ATTR_BOOL && pa->u.b && ptc_mesh_size(&m->mesh) > 1;
  ptc_module *lm = part ? ptc_module_localize(m) : NULL;
  const ptc_module *vm = lm ? lm : m;
  out->naxes = m->mesh.naxes;
  out->nranks = m->mesh.naxes ? ptc_mesh_size(&m->mesh) : 1;
  const ptc_attr *sa = ptc_module_get_attr(m, "pipeline.stages");
  int pp = ptc_mesh_axis(&m->mesh, "pp", 2);
  if (!sa) {
    ptc_func *gf = ptc_plan_entry(m);
    if (!gf) {
      if (lm) ptc_module_destroy(lm);
      return -1;
    }
    const ptc_func *f = ptc_module_find_func(vm, gf->name);
    ptc_memplan_group *g = &out->groups[out->ngroups++];
    g->stage = -1;
    bool *hold = ptc_xcalloc((size_t)vm->nparams + 1, sizeof *hold);
    for (int32_t p = 0; p < vm->nparams; p++) hold[p] = true; /* ptrun holds them all */
    vars_of(vm, hold, g);
    free(hold);
    prog_figs pf;
    prog_analyze(f, false, false, NULL, NULL, &pf);
    add_prog(g, &pf, f->name);
    g->acts_kept = pf.acts_kept;
    g->grads_at_update = pf.grads_at_update;
    g->model_flops = pf.model_flops;
    g->hw_flops = pf.hw_flops;
    comm_of(gf, 1, g, out->naxes);
    group_ranks(m, g, -1);
    finish(g);
  } else {
    int32_t P = (int32_t)sa->u.i;
    const ptc_attr *va = ptc_module_get_attr(m, "pipeline.virtual");
    const ptc_attr *ma = ptc_module_get_attr(m, "pipeline.microbatches");
    int32_t V = va ? (int32_t)va->u.i : 1, M = ma ? (int32_t)ma->u.i : 1;
    int32_t NC = P * V;
    out->microbatches = M;
    ptc_pipe_sim sim;
    if (ptc_pipeline_simulate((ptc_module *)m, &sim, false) == 0 && sim.stages == P)
      out->bubble = ptc_pipe_bubble(&sim);
    int32_t *most = ptc_xcalloc((size_t)NC + 1, sizeof *most);
    for (int32_t s = 0; s < P && s < PTC_PIPE_MAX_STAGES; s++) {
      ptc_memplan_group *g = &out->groups[out->ngroups++];
      g->stage = s;
      char key[48];
      snprintf(key, sizeof key, "pipeline.order.%d", s);
      const ptc_attr *oa = ptc_module_get_attr(m, key);
      max_in_flight(oa && oa->kind == PTC_ATTR_STR ? oa->u.s : "", NC, most);
      bool *hold = ptc_xcalloc((size_t)vm->nparams + 1, sizeof *hold);
      for (int32_t k = 0; k <= 2 * V; k++) {
        char name[32];
        int32_t c = s + (k / 2) * P;
        if (k == 2 * V) snprintf(name, sizeof name, "step.%d", s);
        else snprintf(name, sizeof name, "%s.%d", k % 2 ? "bwd" : "fwd", c);
        const ptc_func *f = ptc_module_find_func(vm, name);
        const ptc_func *gf = ptc_module_find_func(m, name);
        if (!f || !gf) continue;
        for (int32_t p = 0; p < vm->nparams && p < f->cap_param_value; p++)
          if (f->param_value[p] >= 0) hold[p] = true;
        bool fwd = k < 2 * V && k % 2 == 0, bwd = k < 2 * V && k % 2 == 1;
        bool *barg = ptc_xcalloc((size_t)f->nargs + 1, sizeof *barg);
        bool *bres = ptc_xcalloc((size_t)f->nresults + 1, sizeof *bres);
        if (fwd) {
          for (int32_t r = 0; r < f->nresults; r++) bres[r] = true;
          int64_t set = 0;
          for (int32_t r = 0; r < f->nresults; r++) set += align64(ptc_type_bytes(&f->result_types[r]));
          g->stash += set * most[c];
          g->stash_set += set;
          if (most[c] > g->in_flight) g->in_flight = most[c];
        }
        if (bwd)
          for (int32_t a = 0; a < f->nargs; a++) {
            const char *n = f->values[f->args[a]].name;
            barg[a] = n && strncmp(n, "stash.", 6) == 0;
          }
        prog_figs pf;
        prog_analyze(f, fwd, bwd, barg, bres, &pf);
        free(barg);
        free(bres);
        add_prog(g, &pf, f->name);
        double times = k == 2 * V ? 1 : M;
        g->model_flops += times * pf.model_flops;
        g->hw_flops += times * pf.hw_flops;
        /* a pipeline's gradients rest in its accumulators (variables) */
        comm_of(gf, times, g, out->naxes);
      }
      g->acts_kept = g->stash_set;
      vars_of(vm, hold, g);
      free(hold);
      group_ranks(m, g, pp);
      finish(g);
    }
    free(most);
  }
  if (lm) ptc_module_destroy(lm);
  return 0;
}

/* ---- sizes ------------------------------------------------------------------ */

int ptc_parse_bytes(const char *s, int64_t *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || !(v >= 0)) return -1;
  while (*end == ' ') end++;
  double mul = 1;
  static const struct { const char *suf; double mul; } units[] = {
      {"", 1},          {"B", 1},          {"KiB", 1024.0},   {"MiB", 1048576.0},
      {"GiB", 1073741824.0}, {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6},
      {"GB", 1e9},      {"TB", 1e12},      {"K", 1024.0},     {"M", 1048576.0},
      {"G", 1073741824.0}, {"T", 1099511627776.0},
  };
  bool found = false;
  for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
    if (strcmp(end, units[i].suf) == 0) {
      mul = units[i].mul;
      found = true;
      break;
    }
  if (!found || v * mul > 9.0e18) return -1;
  *out = (int64_t)(v * mul + 0.5);
  return 0;
}

/* ---- printing ------------------------------------------------------------------ */

static void put_bytes(ptc_buf *b, double n) { ptc_buf_put_bytes(b, n); }

int32_t ptc_memplan_first_over(const ptc_memplan *p, int64_t limit) {
  for (int32_t i = 0; i < p->ngroups; i++)
    if (p->groups[i].total > limit) return i;
  return -1;
}

void ptc_memplan_print(ptc_buf *b, const ptc_module *m, const ptc_memplan *p,
                       int64_t device_memory) {
  ptc_buf_printf(b, "memory per rank (bytes; %lld rank%s in %d group%s of equal figures):\n",
                 (long long)p->nranks, p->nranks == 1 ? "" : "s", p->ngroups,
                 p->ngroups == 1 ? "" : "s");
  for (int32_t i = 0; i < p->ngroups; i++) {
    const ptc_memplan_group *g = &p->groups[i];
    if (g->stage >= 0)
      ptc_buf_printf(b, "  stage %d: %lld ranks from rank %lld\n", g->stage,
                     (long long)g->nranks, (long long)g->first_rank);
    else
      ptc_buf_printf(b, "  every rank (%lld):\n", (long long)g->nranks);
    for (int c = 0; c < PTC_MEM_NCAT; c++) {
      ptc_buf_printf(b, "    %-20s %16lld  (", ptc_mem_cat_names[c], (long long)g->cat[c]);
      put_bytes(b, (double)g->cat[c]);
      ptc_buf_puts(b, ")\n");
    }
    ptc_buf_printf(b, "    %-20s %16lld  (", "total", (long long)g->total);
    put_bytes(b, (double)g->total);
    ptc_buf_printf(b, ")  peak at %s", g->peak_at);
    if (device_memory > 0)
      ptc_buf_printf(b, "; %s --device-memory", g->total <= device_memory ? "fits" : "DOES NOT FIT");
    ptc_buf_puts(b, "\n");
    ptc_buf_printf(b, "    held: variables %lld + fixed %lld + arena %lld + stash %lld\n",
                   (long long)g->vars_total, (long long)g->fixed, (long long)g->arena,
                   (long long)g->stash);
    ptc_buf_printf(b, "    model states %lld (params + optimizer state + gradients when the update "
                   "begins), activations kept %lld per microbatch", (long long)g->model_states,
                   (long long)g->acts_kept);
    if (g->stage >= 0)
      ptc_buf_printf(b, ", %d in flight at most", g->in_flight);
    ptc_buf_puts(b, "\n");
    ptc_buf_printf(b, "    flops per step: model %.6g, hardware %.6g (with recompute)\n",
                   g->model_flops, g->hw_flops);
    if (p->naxes) {
      ptc_buf_puts(b, "    sent per step:");
      for (int a = 0; a < p->naxes; a++) {
        ptc_buf_printf(b, " %s %.0f bytes (", m->mesh.axes[a].name, g->sent[a]);
        put_bytes(b, g->sent[a]);
        ptc_buf_printf(b, ", %lld calls)%s", (long long)g->calls[a], a + 1 < p->naxes ? "," : "");
      }
      ptc_buf_puts(b, "\n");
    }
  }
  if (p->microbatches)
    ptc_buf_printf(b, "  pipeline bubble: %.2f%% of ideal time (%d microbatches)\n",
                   100 * p->bubble, p->microbatches);
  if (device_memory > 0) {
    int32_t bad = ptc_memplan_first_over(p, device_memory);
    if (bad < 0) {
      ptc_buf_puts(b, "fits: every rank within --device-memory ");
      put_bytes(b, (double)device_memory);
      ptc_buf_puts(b, "\n");
    } else {
      const ptc_memplan_group *g = &p->groups[bad];
      ptc_buf_printf(b, "does not fit: rank %lld%s needs ", (long long)g->first_rank,
                     g->stage >= 0 ? " (first of its stage)" : "");
      put_bytes(b, (double)g->total);
      ptc_buf_puts(b, " of ");
      put_bytes(b, (double)device_memory);
      ptc_buf_puts(b, "\n");
    }
  }
}

void ptc_memplan_json(ptc_buf *b, const ptc_module *m, const ptc_memplan *p,
                      int64_t device_memory) {
  ptc_buf_printf(b, "{\"module\": \"%s\", \"parameters\": %lld, \"ranks\": %lld, "
                 "\"microbatches\": %d, \"bubble\": %.6f, ", m->name,
                 (long long)ptc_module_param_count(m), (long long)p->nranks, p->microbatches,
                 p->bubble);
  if (device_memory > 0) {
    int32_t bad = ptc_memplan_first_over(p, device_memory);
    ptc_buf_printf(b, "\"device_memory\": %lld, \"fits\": %s, \"first_rank_over\": %lld, ",
                   (long long)device_memory, bad < 0 ? "true" : "false",
                   bad < 0 ? -1LL : (long long)p->groups[bad].first_rank);
  }
  ptc_buf_puts(b, "\"groups\": [");
  for (int32_t i = 0; i < p->ngroups; i++) {
    const ptc_memplan_group *g = &p->groups[i];
    ptc_buf_printf(b, "%s\n  {\"stage\": %d, \"ranks\": %lld, \"first_rank\": %lld, "
                   "\"total\": %lld, \"peak_at\": \"%s\", \"bytes\": {", i ? "," : "",
                   g->stage, (long long)g->nranks, (long long)g->first_rank,
                   (long long)g->total, g->peak_at);
    for (int c = 0; c < PTC_MEM_NCAT; c++)
      ptc_buf_printf(b, "%s\"%s\": %lld", c ? ", " : "", ptc_mem_cat_names[c], (long long)g->cat[c]);
    ptc_buf_printf(b, "}, \"variables\": %lld, \"fixed\": %lld, \"arena\": %lld, \"stash\": %lld, "
                   "\"model_states\": %lld, \"gradients_at_update\": %lld, "
                   "\"activations_kept\": %lld, \"in_flight\": %d, \"parameters\": %lld, "
                   "\"model_flops\": %.17g, \"hardware_flops\": %.17g, \"sent\": {",
                   (long long)g->vars_total, (long long)g->fixed, (long long)g->arena,
                   (long long)g->stash, (long long)g->model_states,
                   (long long)g->grads_at_update, (long long)g->acts_kept, g->in_flight,
                   (long long)g->param_count, g->model_flops, g->hw_flops);
    for (int a = 0; a < p->naxes; a++)
      ptc_buf_printf(b, "%s\"%s\": %.0f", a ? ", " : "", m->mesh.axes[a].name, g->sent[a]);
    ptc_buf_puts(b, "}, \"calls\": {");
    for (int a = 0; a < p->naxes; a++)
      ptc_buf_printf(b, "%s\"%s\": %lld", a ? ", " : "", m->mesh.axes[a].name,
                     (long long)g->calls[a]);
    ptc_buf_puts(b, "}}");
  }
  ptc_buf_puts(b, "\n]}\n");
}
