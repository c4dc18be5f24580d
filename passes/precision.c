/* precision.c -- the `precision` pass: mixed-precision training.
 *
 * After autodiff and before the pipeline, recompute and optimizer passes,
 * with dtype = bf16 or fp16, @step (loss and one gradient per trainable
 * parameter) is rewritten so that its tensors are stored at 16 bits:
 *
 *  - Every trainable parameter @p stays an fp32 variable, the master
 *    weight, that only the optimizer reads.  The step reads instead a new
 *    state variable @p.bf16 (or @p.f16): the 16-bit working copy, `init
 *    copy(@p)`, which the optimizer pass rewrites after each update as the
 *    cast of the new master weight.
 *  - Every float value the step computes becomes 16-bit (activations,
 *    their gradients, the parameter gradients), except what must stay
 *    fp32: the loss (cross_entropy returns f32 for 16-bit logits; another
 *    loss is cast up before it is returned) and the seed of the backward
 *    pass (an f32 scalar: under fp16 it carries the loss scale, which 16
 *    bits could not hold).  Float inputs of the model are cast down where
 *    the step starts.
 *  - Gradients are returned at 16 bits (ZeRO's accounting: 2 bytes per
 *    parameter); grad-dtype = fp32 casts them up before they leave the
 *    backward, so accumulation and reduction run in fp32 (Megatron's
 *    main_grad), at 4 bytes per parameter.
 *
 * Compute precision is the backend's business: the CPU kernels compute in
 * fp32 and round their results (docs/runtime.md), the GPU path uses bf16
 * tensor-core products with fp32 accumulation.  Reductions inside one
 * kernel (a matrix product's dot products, a norm's mean, a softmax's sum)
 * always accumulate in fp32.
 *
 * fp16 also needs loss scaling: the optimizer pass reads the module
 * attribute `precision` and, for fp16, scales the seed by the dynamic loss
 * scale and skips the update of a step whose gradients overflow
 * (passes/optimizer.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

enum { PREC_FP32, PREC_BF16, PREC_FP16 };
enum { GRAD_LOW, GRAD_FP32 };

static const ptc_pass_opt_spec precision_opts[] = {
    {.name = "dtype", .kind = PTC_PASS_OPT_CHOICE, .choices = "fp32|bf16|fp16",
     .dflt = PREC_FP32, .help = "the dtype activations, gradients and weight copies are stored in"},
    {.name = "grad-dtype", .kind = PTC_PASS_OPT_CHOICE, .choices = "low|fp32", .dflt = GRAD_LOW,
     .help = "parameter gradients at the 16-bit dtype (low) or fp32"},
};

const char *ptc_precision_suffix(ptc_dtype t) {
  return t == PTC_DTYPE_BF16 ? "bf16" : t == PTC_DTYPE_F16 ? "f16" : NULL;
}

int32_t ptc_precision_copy_of(const ptc_module *m, int32_t p) {
  const ptc_attr *a = ptc_module_get_attr(m, "precision");
  if (!a || a->kind != PTC_ATTR_STR || p < 0 || p >= m->nparams) return -1;
  const char *suf = strcmp(a->u.s, "bf16") == 0 ? "bf16" : strcmp(a->u.s, "fp16") == 0 ? "f16" : NULL;
  if (!suf) return -1;
  char name[1024];
  snprintf(name, sizeof name, "%s.%s", m->params[p].name, suf);
  int32_t c = ptc_module_find_param(m, name);
  return c >= 0 && !m->params[c].trainable ? c : -1;
}

/* Every use of v is operand 0 (the seed) of a cross_entropy_grad. */
static bool only_seed(const ptc_func *f, int32_t v) {
  bool any = false;
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    for (int32_t k = 0; k < op->nin; k++) {
      if (op->in[k] != v) continue;
      if (op->code != PTC_OP_CROSS_ENTROPY_GRAD || k != 0) return false;
      any = true;
    }
  }
  return any;
}

/* Re-runs op i's shape rule on its operands' (changed) types; results take
 * the rule's types.  TYPE_GIVEN ops keep their shapes at dtype `want`. */
static int retype_op(ptc_func *f, int32_t i, ptc_dtype want) {
  ptc_op *op = &f->ops[i];
  ptc_type in[64], out[8];
  ptc_sharding ins[64], outs[8];
  PTC_ASSERT(op->nin <= 64 && op->nout <= 8);
  for (int32_t k = 0; k < op->nin; k++) {
    in[k] = f->values[op->in[k]].type;
    ins[k] = f->values[op->in[k]].shard;
  }
  for (int32_t r = 0; r < op->nout; r++) {
    out[r] = f->values[op->out[r]].type;
    outs[r] = f->values[op->out[r]].shard;
    if (ptc_opinfo_get(op->code)->flags & PTC_OPF_TYPE_GIVEN) {
      if (op->code == PTC_OP_CONSTANT) {
        if (ptc_dtype_is_float(out[r].dtype)) out[r].dtype = want;
      } else if (op->nin > 0) {
        out[r].dtype = in[0].dtype;
      }
    }
  }
  ptc_infer inf = {.ctx = f->mod->ctx, .mod = f->mod, .code = op->code, .loc = op->loc,
                   .nin = op->nin, .in = in, .in_shard = ins, .nattr = op->nattr,
                   .attrs = op->attrs, .nout = op->nout, .out = out, .out_shard = outs};
  if (ptc_op_infer(&inf) != 0) return -1;
  for (int32_t r = 0; r < op->nout; r++) f->values[op->out[r]].type = out[r];
  return 0;
}

static int32_t cast_to(ptc_func *f, int32_t pos, int32_t v, ptc_dtype t, ptc_loc loc) {
  ptc_attr a = ptc_attr_dtype("to", t);
  int32_t in[1] = {v};
  ptc_build_args ba = {.code = PTC_OP_CAST, .nin = 1, .in = in, .nattr = 1, .attrs = &a,
                       .loc = loc};
  int32_t idx = pos < 0 ? ptc_build(f, &ba) : ptc_build_at(f, pos, &ba);
  return idx < 0 ? -1 : f->ops[idx].out[0];
}

/* fp16: state @loss_scale (the scale in units of 2^16, init 1) and
 * @loss_scale.good (finite steps in a row); every cross_entropy_grad's
 * seed is multiplied by 2^16 * @loss_scale.  Autodiff's seed is a constant
 * (1.0) that only seeds: it takes the factor 2^16 itself, so the backward
 * starts from one op, mul(seed, @loss_scale), next to its
 * cross_entropy_grad.  (The pipeline pass places a backward op that reads
 * no forward value by its users, and a longer chain of them -- a constant
 * 2^16, its product with @loss_scale, then the seed's -- could land on
 * the wrong stage.)  Another seed is multiplied by @loss_scale * 2^16. */
static int scale_seeds(ptc_module *m, ptc_func *f) {
  ptc_type scalar = {.dtype = PTC_DTYPE_F32, .rank = 0};
  int32_t sv = ptc_module_add_param(m, "loss_scale", &scalar, (ptc_init){.kind = PTC_INIT_ONES},
                                    f->loc);
  int32_t gv = sv < 0 ? -1 : ptc_module_add_param(m, "loss_scale.good", &scalar,
                                                   (ptc_init){.kind = PTC_INIT_ZEROS}, f->loc);
  if (sv < 0 || gv < 0) return -1;
  m->params[sv].trainable = m->params[gv].trainable = false;
  int32_t read = ptc_func_param_value(f, sv);
  int32_t nv0 = f->nvalues; /* every seed is one of these */
  bool *scaled = ptc_xcalloc((size_t)nv0 + 1, sizeof *scaled);
  int32_t seeds = 0, S = -1;
  int rc = -1;
  for (int32_t i = 0; i < f->nops; i++) {
    if (f->ops[i].code != PTC_OP_CROSS_ENTROPY_GRAD) continue;
    ptc_loc loc = f->ops[i].loc;
    int32_t seed = f->ops[i].in[0], by = read;
    const ptc_value *v = &f->values[seed];
    if (seed < nv0 && v->kind == PTC_VALUE_OP && f->ops[v->def].code == PTC_OP_CONSTANT &&
        only_seed(f, seed)) {
      ptc_op *c = &f->ops[v->def];
      for (int32_t k = 0; k < c->nattr && !scaled[seed]; k++)
        if (strcmp(c->attrs[k].name, "value") == 0 && c->attrs[k].kind == PTC_ATTR_FLOAT) {
          c->attrs[k].u.f *= 65536.0;
          scaled[seed] = true;
        }
    }
    if (!scaled[seed]) {
      if (S < 0) {
        ptc_attr u = ptc_attr_float("value", 65536.0);
        ptc_build_args cb = {.code = PTC_OP_CONSTANT, .nattr = 1, .attrs = &u, .ngiven = 1,
                             .given = &scalar, .loc = loc};
        int32_t ci = ptc_build_at(f, i, &cb);
        if (ci < 0) goto out;
        int32_t in[2] = {read, f->ops[ci].out[0]};
        ptc_build_args mb = {.code = PTC_OP_MUL, .nin = 2, .in = in, .loc = loc};
        int32_t mi = ptc_build_at(f, ci + 1, &mb);
        if (mi < 0) goto out;
        S = f->ops[mi].out[0];
        i = mi + 1; /* the cross_entropy_grad again */
      }
      by = S;
    }
    int32_t in[2] = {f->ops[i].in[0], by};
    ptc_build_args sb = {.code = PTC_OP_MUL, .nin = 2, .in = in, .loc = loc};
    int32_t si = ptc_build_at(f, i, &sb);
    if (si < 0) goto out;
    f->ops[si + 1].in[0] = f->ops[si].out[0];
    i = si + 1;
    seeds++;
  }
  if (seeds == 0) {
    ptc_error(m->ctx, f->loc, "precision: fp16 scales the loss, and @step's loss is not a "
              "cross_entropy the pass knows how to seed; train in bf16 (no loss scaling "
              "needed) or fp32");
    goto out;
  }
  rc = 0;
out:
  free(scaled);
  return rc;
}

static int precision_run(ptc_module *m, const ptc_pass_opts *o, bool *changed) {
  int which = ptc_pass_opt_choice(o, "dtype");
  if (which == PREC_FP32) return 0;
  ptc_ctx *ctx = m->ctx;
  ptc_func *f = ptc_module_find_func(m, "step");
  if (!f) {
    ptc_error(ctx, m->loc, "precision: the module has no function @step; run it right "
              "after autodiff (--pass-pipeline=...,autodiff,precision{dtype=bf16},...)");
    return -1;
  }
  if (ptc_module_get_attr(m, "precision")) {
    ptc_error(ctx, f->loc, "precision: @step is already in mixed precision (module "
              "attribute `precision`); was the pass run twice?");
    return -1;
  }
  ptc_dtype lt = which == PREC_BF16 ? PTC_DTYPE_BF16 : PTC_DTYPE_F16;
  const char *suf = ptc_precision_suffix(lt);
  for (int32_t i = 0; i < f->nops; i++)
    if (f->ops[i].code == PTC_OP_ADAMW || f->ops[i].code == PTC_OP_SGD ||
        f->ops[i].code == PTC_OP_ASSIGN) {
      ptc_error(ctx, f->ops[i].loc, "precision: @step already updates its variables; "
                "run precision before the optimizer pass");
      return -1;
    }
  ptc_attr pa = ptc_attr_str("precision", which == PREC_BF16 ? "bf16" : "fp16");
  ptc_module_set_attr(m, &pa);
  *changed = true;

  /* 1. the step reads each trainable parameter's 16-bit copy */
  int32_t np0 = m->nparams;
  for (int32_t p = 0; p < np0; p++) {
    if (!m->params[p].trainable || p >= f->cap_param_value || f->param_value[p] < 0) continue;
    if (!ptc_dtype_is_float(m->params[p].type.dtype)) continue;
    char name[1024];
    snprintf(name, sizeof name, "%s.%s", m->params[p].name, suf);
    if (ptc_module_find_param(m, name) >= 0) {
      ptc_error(ctx, m->params[p].loc, "precision: a variable @%s exists already; the "
                "16-bit copy of @%s needs that name", name, m->params[p].name);
      return -1;
    }
    ptc_param src = m->params[p]; /* add_param may move m->params */
    ptc_type t = src.type;
    t.dtype = lt;
    ptc_init init = {.kind = PTC_INIT_COPY, .from = src.name};
    int32_t c = ptc_module_add_param(m, name, &t, init, src.loc);
    if (c < 0) return -1;
    m->params[c].trainable = false;
    m->params[c].shard = src.shard;
    /* the value that read @p now reads @c */
    int32_t v = f->param_value[p];
    f->param_value[p] = -1;
    ptc_func_param_value(f, c); /* grows the table; makes a value we replace */
    int32_t nv = f->param_value[c];
    ptc_func_replace_uses(f, v, nv, 0);
  }

  /* 2. float inputs are cast down where the step starts */
  int32_t at = 0;
  for (int32_t a = 0; a < f->nargs; a++) {
    int32_t v = f->args[a];
    if (f->values[v].type.dtype != PTC_DTYPE_F32) continue;
    int32_t c = cast_to(f, at, v, lt, f->loc);
    if (c < 0) return -1;
    ptc_func_replace_uses(f, v, c, at + 1);
    at++;
  }

  /* 3. every float result becomes 16-bit, by the shape rules: constants
   * are the only ops that choose a dtype; the seed stays f32 */
  for (int32_t i = at; i < f->nops; i++) {
    ptc_op *op = &f->ops[i];
    if (op->code == PTC_OP_RETURN) break;
    if (op->code == PTC_OP_CONSTANT && only_seed(f, op->out[0])) continue;
    if (op->code == PTC_OP_CAST) {
      /* a cast the model wrote to f32 now goes to the working dtype */
      for (int32_t k = 0; k < op->nattr; k++)
        if (strcmp(op->attrs[k].name, "to") == 0 && op->attrs[k].u.dtype == PTC_DTYPE_F32)
          op->attrs[k].u.dtype = lt;
    }
    if (retype_op(f, i, lt) != 0) {
      ptc_error(ctx, op->loc, "precision: %s cannot take %s operands (above)",
                ptc_opinfo_get(op->code)->name, ptc_dtype_name(lt));
      return -1;
    }
  }

  /* 3b. fp16: the backward starts from the loss scale, not 1 (the
   * optimizer unscales; passes/optimizer.c) */
  if (which == PREC_FP16 && scale_seeds(m, f) != 0) return -1;

  /* 4. results: the loss in f32; gradients at the chosen dtype */
  ptc_op *ret = &f->ops[f->nops - 1];
  PTC_ASSERT(ret->code == PTC_OP_RETURN);
  bool g32 = ptc_pass_opt_choice(o, "grad-dtype") == GRAD_FP32;
  int32_t nret = ret->nin; /* ret moves as casts are inserted */
  for (int32_t r = 0; r < nret; r++) {
    int32_t v = f->ops[f->nops - 1].in[r];
    ptc_dtype want = r == 0 || g32 ? PTC_DTYPE_F32 : lt;
    if (f->values[v].type.dtype != want && ptc_dtype_is_float(f->values[v].type.dtype)) {
      const char *nm = f->values[v].name;
      int32_t c = cast_to(f, f->nops - 1, v, want, f->ops[f->nops - 1].loc);
      if (c < 0) return -1;
      if (nm) { /* the name (%grad.<p>) moves to what the step returns */
        f->values[c].name = nm;
        f->values[v].name = NULL;
      }
      f->ops[f->nops - 1].in[r] = c;
    }
    f->result_types[r] = f->values[f->ops[f->nops - 1].in[r]].type;
  }
  if (g32) {
    ptc_attr ga = ptc_attr_str("precision.grad", "fp32");
    ptc_module_set_attr(m, &ga);
  }
  return 0;
}

const ptc_pass_info ptc_pass_precision = {
    .name = "precision",
    .summary = "mixed precision: 16-bit activations, gradients and weight copies, fp32 "
               "master weights and optimizer state",
    .opts = precision_opts,
    .nopts = PTC_ARRAY_LEN(precision_opts),
    .run = precision_run,
};
