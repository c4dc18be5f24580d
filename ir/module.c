/* module.c -- modules, their parameter table, attributes and functions.
 * A module owns its memory through one arena plus a few heap vectors, all
 * released by ptc_module_destroy. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

ptc_module *ptc_module_create(ptc_ctx *ctx, const char *name) {
  ptc_module *m = ptc_xcalloc(1, sizeof *m);
  m->ctx = ctx;
  ptc_arena_init(&m->arena);
  m->name = ptc_arena_strdup(&m->arena, name ? name : "module");
  return m;
}

static void func_free(ptc_func *f) {
  free(f->args);
  free(f->result_types);
  free(f->result_shards);
  free(f->ops);
  free(f->values);
  free(f->param_value);
  free(f);
}

void ptc_module_destroy(ptc_module *m) {
  if (!m) return;
  for (int32_t i = 0; i < m->nfuncs; i++) func_free(m->funcs[i]);
  free(m->funcs);
  free(m->params);
  free(m->param_hash);
  ptc_arena_fini(&m->arena);
  free(m);
}

static uint32_t name_hash(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

/* Slot of `name` in the index: where it is, or the empty slot it goes to. */
static int32_t param_slot(const ptc_module *m, const char *name) {
  uint32_t mask = (uint32_t)m->cap_param_hash - 1;
  uint32_t j = name_hash(name) & mask;
  while (m->param_hash[j] >= 0 && strcmp(m->params[m->param_hash[j]].name, name) != 0)
    j = (j + 1) & mask;
  return (int32_t)j;
}

static void param_index_grow(ptc_module *m) {
  int32_t cap = m->cap_param_hash ? 2 * m->cap_param_hash : 128;
  free(m->param_hash);
  m->param_hash = ptc_xmalloc((size_t)cap * sizeof *m->param_hash);
  for (int32_t i = 0; i < cap; i++) m->param_hash[i] = -1;
  m->cap_param_hash = cap;
  for (int32_t i = 0; i < m->nparams; i++)
    m->param_hash[param_slot(m, m->params[i].name)] = i;
}

int32_t ptc_module_find_param(const ptc_module *m, const char *name) {
  if (m->cap_param_hash == 0) return -1;
  return m->param_hash[param_slot(m, name)];
}

int32_t ptc_module_add_param(ptc_module *m, const char *name,
                             const ptc_type *type, ptc_init init, ptc_loc loc) {
  int32_t prev = ptc_module_find_param(m, name);
  if (prev >= 0) {
    ptc_error(m->ctx, loc, "parameter '%s' is already defined", name);
    if (m->params[prev].loc.file)
      ptc_note(m->ctx, m->params[prev].loc, "'%s' was defined here", name);
    return -1;
  }
  if (m->nparams == m->cap_params) {
    m->cap_params = m->cap_params ? 2 * m->cap_params : 64;
    m->params = ptc_xrealloc(m->params, (size_t)m->cap_params * sizeof *m->params);
  }
  if ((m->nparams + 1) * 2 > m->cap_param_hash) param_index_grow(m);
  ptc_param *p = &m->params[m->nparams];
  memset(p, 0, sizeof *p);
  p->name = ptc_arena_strdup(&m->arena, name);
  p->trainable = true;
  p->type = *type;
  p->init = init;
  if (init.from) p->init.from = ptc_arena_strdup(&m->arena, init.from); /* the caller's may go */
  p->loc = loc;
  m->param_hash[param_slot(m, p->name)] = m->nparams;
  return m->nparams++;
}

int64_t ptc_module_param_count(const ptc_module *m) {
  int64_t n = 0;
  for (int32_t i = 0; i < m->nparams; i++)
    if (m->params[i].trainable) n += ptc_type_numel(&m->params[i].type);
  return n;
}

/* ---- attributes -------------------------------------------------------- */

/* Copies an attribute's payload into the arena. */
static ptc_attr attr_copy(ptc_arena *a, const ptc_attr *src) {
  ptc_attr d = *src;
  d.name = ptc_arena_strdup(a, src->name);
  if (src->kind == PTC_ATTR_STR || src->kind == PTC_ATTR_SYM)
    d.u.s = ptc_arena_strdup(a, src->u.s ? src->u.s : "");
  if (src->kind == PTC_ATTR_INTS) {
    d.u.ints.v = ptc_arena_alloc(a, (size_t)src->u.ints.n * sizeof(int64_t) + 1);
    if (src->u.ints.n) memcpy(d.u.ints.v, src->u.ints.v, (size_t)src->u.ints.n * sizeof(int64_t));
  }
  return d;
}

/* Insertion sort: ops have a handful of attributes. */
int32_t ptc__attrs_copy_sorted(ptc_arena *a, const ptc_attr *src, int32_t n,
                               ptc_attr **out, int32_t *dup) {
  ptc_attr *v = n ? ptc_arena_alloc(a, (size_t)n * sizeof *v) : NULL;
  for (int32_t i = 0; i < n; i++) {
    ptc_attr x = attr_copy(a, &src[i]);
    int32_t j = i;
    while (j > 0 && strcmp(v[j - 1].name, x.name) > 0) {
      v[j] = v[j - 1];
      j--;
    }
    if (j > 0 && strcmp(v[j - 1].name, x.name) == 0) {
      if (dup) *dup = i;
      return -1;
    }
    v[j] = x;
  }
  *out = v;
  return 0;
}

void ptc_module_set_attr(ptc_module *m, const ptc_attr *a) {
  ptc_attr *v = ptc_arena_alloc(&m->arena, (size_t)(m->nattr + 1) * sizeof *v);
  int32_t n = 0;
  bool placed = false;
  for (int32_t i = 0; i < m->nattr; i++) {
    int c = strcmp(m->attrs[i].name, a->name);
    if (c == 0) continue; /* replaced */
    if (c > 0 && !placed) {
      v[n++] = attr_copy(&m->arena, a);
      placed = true;
    }
    v[n++] = m->attrs[i];
  }
  if (!placed) v[n++] = attr_copy(&m->arena, a);
  m->attrs = v;
  m->nattr = n;
}

const ptc_attr *ptc_module_get_attr(const ptc_module *m, const char *name) {
  for (int32_t i = 0; i < m->nattr; i++)
    if (strcmp(m->attrs[i].name, name) == 0) return &m->attrs[i];
  return NULL;
}

/* ---- functions --------------------------------------------------------- */

ptc_func *ptc_module_find_func(const ptc_module *m, const char *name) {
  for (int32_t i = 0; i < m->nfuncs; i++)
    if (strcmp(m->funcs[i]->name, name) == 0) return m->funcs[i];
  return NULL;
}

ptc_func *ptc_module_add_func(ptc_module *m, const char *name, ptc_loc loc) {
  ptc_func *prev = ptc_module_find_func(m, name);
  if (prev) {
    ptc_error(m->ctx, loc, "function '@%s' is already defined", name);
    return NULL;
  }
  if (m->nfuncs == m->cap_funcs) {
    m->cap_funcs = m->cap_funcs ? 2 * m->cap_funcs : 4;
    m->funcs = ptc_xrealloc(m->funcs, (size_t)m->cap_funcs * sizeof *m->funcs);
  }
  ptc_func *f = ptc_xcalloc(1, sizeof *f);
  f->mod = m;
  f->name = ptc_arena_strdup(&m->arena, name);
  f->loc = loc;
  m->funcs[m->nfuncs++] = f;
  return f;
}

/* ---- clone ------------------------------------------------------------- */

static ptc_func *func_clone(ptc_module *dst, const ptc_func *f) {
  ptc_func *g = ptc_module_add_func(dst, f->name, f->loc);
  PTC_ASSERT(g);
  g->nargs = f->nargs;
  g->args = ptc_xmalloc((size_t)(f->nargs + 1) * sizeof *g->args);
  if (f->nargs) memcpy(g->args, f->args, (size_t)f->nargs * sizeof *g->args);
  g->nresults = f->nresults;
  g->result_types = ptc_xmalloc((size_t)(f->nresults + 1) * sizeof *g->result_types);
  g->result_shards = ptc_xmalloc((size_t)(f->nresults + 1) * sizeof *g->result_shards);
  if (f->nresults) memcpy(g->result_types, f->result_types, (size_t)f->nresults * sizeof *g->result_types);
  if (f->nresults) memcpy(g->result_shards, f->result_shards, (size_t)f->nresults * sizeof *g->result_shards);
  g->nvalues = g->cap_values = f->nvalues;
  g->values = ptc_xmalloc((size_t)(f->nvalues + 1) * sizeof *g->values);
  for (int32_t i = 0; i < f->nvalues; i++) {
    g->values[i] = f->values[i];
    if (f->values[i].name) g->values[i].name = ptc_arena_strdup(&dst->arena, f->values[i].name);
  }
  g->nops = g->cap_ops = f->nops;
  g->ops = ptc_xmalloc((size_t)(f->nops + 1) * sizeof *g->ops);
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *o = &f->ops[i];
    ptc_op *p = &g->ops[i];
    *p = *o;
    p->in = ptc_arena_alloc(&dst->arena, (size_t)o->nin * sizeof(int32_t) + 1);
    p->out = ptc_arena_alloc(&dst->arena, (size_t)o->nout * sizeof(int32_t) + 1);
    memcpy(p->in, o->in, (size_t)o->nin * sizeof(int32_t));
    memcpy(p->out, o->out, (size_t)o->nout * sizeof(int32_t));
    int32_t dup = -1;
    int32_t rc = ptc__attrs_copy_sorted(&dst->arena, o->attrs, o->nattr, &p->attrs, &dup);
    PTC_ASSERT(rc == 0);
  }
  g->cap_param_value = f->cap_param_value;
  g->param_value = ptc_xmalloc((size_t)(f->cap_param_value + 1) * sizeof(int32_t));
  if (f->cap_param_value)
    memcpy(g->param_value, f->param_value, (size_t)f->cap_param_value * sizeof(int32_t));
  return g;
}

ptc_module *ptc_module_clone(const ptc_module *m) {
  ptc_module *d = ptc_module_create(m->ctx, m->name);
  d->loc = m->loc;
  d->mesh = m->mesh;
  for (int32_t i = 0; i < m->nattr; i++) ptc_module_set_attr(d, &m->attrs[i]);
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    int32_t k = ptc_module_add_param(d, p->name, &p->type, p->init, p->loc);
    PTC_ASSERT(k == i);
    d->params[k].shard = p->shard;
    d->params[k].trainable = p->trainable;
  }
  for (int32_t i = 0; i < m->nfuncs; i++) func_clone(d, m->funcs[i]);
  return d;
}

ptc_module *ptc_module_localize(const ptc_module *m) {
  ptc_module *d = ptc_module_clone(m);
  const ptc_mesh *mesh = &d->mesh;
  for (int32_t i = 0; i < d->nparams; i++)
    ptc_local_type(mesh, &m->params[i].type, &m->params[i].shard, &d->params[i].type);
  for (int32_t fi = 0; fi < d->nfuncs; fi++) {
    ptc_func *f = d->funcs[fi];
    for (int32_t v = 0; v < f->nvalues; v++) {
      ptc_type g = f->values[v].type;
      ptc_local_type(mesh, &g, &f->values[v].shard, &f->values[v].type);
    }
    for (int32_t r = 0; r < f->nresults; r++) {
      ptc_type g = f->result_types[r];
      ptc_local_type(mesh, &g, &f->result_shards[r], &f->result_types[r]);
    }
  }
  return d;
}

void ptc_module_remove_func(ptc_module *m, ptc_func *f) {
  for (int32_t i = 0; i < m->nfuncs; i++) {
    if (m->funcs[i] != f) continue;
    func_free(f);
    memmove(&m->funcs[i], &m->funcs[i + 1], (size_t)(m->nfuncs - i - 1) * sizeof *m->funcs);
    m->nfuncs--;
    return;
  }
}
