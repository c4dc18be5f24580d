/* dot.c -- a module as a Graphviz digraph (`ptc --emit=dot`).
 *
 * One cluster per function; one node per op labelled with the op's name and
 * result types; function arguments (inverted houses) and parameter reads
 * (cylinders) as distinct shapes, so the data flowing in is visible at a
 * glance; collectives filled, since they are where the time goes on a mesh.
 * Edges run from each operand's definition to its use.  Render with
 * `dot -Tsvg`. */
#include <string.h>

#include "ir.h"

/* A DOT string body: quotes and backslashes escaped, newlines as \n (which
 * DOT renders as a centred line break), other control bytes dropped. */
static void put_escaped(ptc_buf *b, const char *s) {
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      ptc_buf_put(b, e, 2);
    } else if (c == '\n') {
      ptc_buf_puts(b, "\\n");
    } else if (c >= 0x20 && c != 0x7f) {
      ptc_buf_put(b, (const char *)&c, 1);
    }
  }
}

/* Escapes the text of a scratch buffer into b. */
static void put_escaped_buf(ptc_buf *b, ptc_buf *text) {
  put_escaped(b, text->data ? text->data : "");
  text->len = 0;
  if (text->data) text->data[0] = 0;
}

static void put_type(ptc_buf *t, const ptc_module *m, const ptc_type *ty,
                     const ptc_sharding *s) {
  ptc_type_print(t, ty);
  if (s && s->present) {
    ptc_buf_puts(t, " ");
    ptc_sharding_print(t, s, ty->rank, &m->mesh);
  }
}

/* The node that defines value `id` of function `fi`. */
static void put_def_node(ptc_buf *b, const ptc_func *f, int fi, int32_t id) {
  const ptc_value *v = &f->values[id];
  if (v->kind == PTC_VALUE_OP)
    ptc_buf_printf(b, "f%d_op%d", fi, (int)v->def);
  else
    ptc_buf_printf(b, "f%d_v%d", fi, (int)id);
}

static void put_func(ptc_buf *b, const ptc_module *m, const ptc_func *f,
                     int fi) {
  ptc_buf t;
  ptc_buf_init(&t);
  ptc_buf_printf(b, "  subgraph \"cluster_%d\" {\n    label=\"@", fi);
  put_escaped(b, f->name);
  ptc_buf_puts(b, "\";\n");

  /* Arguments and parameter reads. */
  for (int32_t id = 0; id < f->nvalues; id++) {
    const ptc_value *v = &f->values[id];
    if (v->kind == PTC_VALUE_ARG) {
      if (v->name) ptc_buf_printf(&t, "%%%s", v->name);
      else ptc_buf_printf(&t, "arg %d", (int)v->def);
      ptc_buf_puts(b, "    ");
      put_def_node(b, f, fi, id);
      ptc_buf_puts(b, " [shape=invhouse, label=\"");
    } else if (v->kind == PTC_VALUE_PARAM && v->def >= 0 &&
               v->def < m->nparams) {
      ptc_buf_printf(&t, "@%s", m->params[v->def].name);
      ptc_buf_puts(b, "    ");
      put_def_node(b, f, fi, id);
      ptc_buf_puts(b, " [shape=cylinder, label=\"");
    } else {
      continue;
    }
    ptc_buf_puts(&t, "\n");
    put_type(&t, m, &v->type, &v->shard);
    put_escaped_buf(b, &t);
    ptc_buf_puts(b, "\"];\n");
  }

  /* Ops, then their operand edges. */
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    const ptc_opinfo *info = ptc_opinfo_get(op->code);
    ptc_buf_puts(&t, info->name);
    for (int32_t r = 0; r < op->nout; r++) {
      const ptc_value *v = &f->values[op->out[r]];
      ptc_buf_puts(&t, "\n");
      put_type(&t, m, &v->type, &v->shard);
    }
    const char *shape = "box";
    const char *style = "rounded";
    if (op->code == PTC_OP_RETURN) shape = "house", style = "solid";
    else if (info->flags & PTC_OPF_COLLECTIVE) style = "rounded,filled";
    ptc_buf_printf(b, "    f%d_op%d [shape=%s, style=\"%s\"%s, label=\"", fi,
                   (int)i, shape, style,
                   (info->flags & PTC_OPF_COLLECTIVE) ? ", fillcolor=lightblue"
                                                      : "");
    put_escaped_buf(b, &t);
    ptc_buf_puts(b, "\"];\n");
  }
  for (int32_t i = 0; i < f->nops; i++) {
    const ptc_op *op = &f->ops[i];
    for (int32_t k = 0; k < op->nin; k++) {
      int32_t id = op->in[k];
      if (id < 0 || id >= f->nvalues) continue;
      ptc_buf_puts(b, "    ");
      put_def_node(b, f, fi, id);
      ptc_buf_printf(b, " -> f%d_op%d", fi, (int)i);
      /* Operand order matters for all but the first operand of most ops. */
      if (op->nin > 1) ptc_buf_printf(b, " [label=\"%d\"]", (int)k);
      ptc_buf_puts(b, ";\n");
    }
  }
  ptc_buf_puts(b, "  }\n");
  ptc_buf_fini(&t);
}

void ptc_print_dot(ptc_buf *b, const ptc_module *m) {
  ptc_buf_puts(b, "digraph \"");
  put_escaped(b, m->name);
  ptc_buf_puts(b, "\" {\n  node [fontname=\"monospace\", fontsize=10];\n"
                  "  edge [fontname=\"monospace\", fontsize=8];\n");
  for (int32_t i = 0; i < m->nfuncs; i++) put_func(b, m, m->funcs[i], (int)i);
  ptc_buf_puts(b, "}\n");
}
