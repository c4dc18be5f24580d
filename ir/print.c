/* print.c -- the canonical text of a module (.ptir).
 *
 * The printer decides the one spelling every module has, so that
 * print(parse(print(m))) == print(m) byte for byte: fixed spacing, attributes
 * sorted by name, floats in their shortest exact form, unnamed values numbered
 * %0, %1, ... in order of definition.  Anything a module may hold that the
 * grammar cannot spell as is (a value name with odd characters, two values of
 * one function with the same name, a string with control bytes) is printed in
 * a form that reads back to an equivalent module instead of being dropped:
 * names fall back to numbers and strings are escaped.  The grammar is in
 * parse.c and docs/ptir.md. */
#include <stdlib.h>
#include <string.h>

#include "ir.h"

/* ---- strings ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence starting at s (at most n bytes long),
 * or 0 when the bytes there are not one: such bytes are escaped, so the
 * printed text is always valid UTF-8 (the parser rejects anything else). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  unsigned min;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) len = 2, min = 0x80;
  else if (c >= 0xe0 && c <= 0xef) len = 3, min = 0x800;
  else if (c >= 0xf0 && c <= 0xf4) len = 4, min = 0x10000;
  else return 0;
  if (len > n) return 0;
  unsigned cp = c & (0x3fu >> (len - 1));
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

/* "text" with \" \\ \n \t and \xNN for every other byte that is not
 * printable ASCII or part of a valid UTF-8 sequence. */
static void put_string(ptc_buf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)(s ? s : "");
  size_t n = strlen((const char *)p);
  ptc_buf_put(b, "\"", 1);
  for (size_t i = 0; i < n;) {
    unsigned c = p[i];
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      ptc_buf_put(b, e, 2);
      i++;
    } else if (c == '\n') {
      ptc_buf_put(b, "\\n", 2);
      i++;
    } else if (c == '\t') {
      ptc_buf_put(b, "\\t", 2);
      i++;
    } else if (c >= 0x20 && c < 0x7f) {
      ptc_buf_put(b, (const char *)p + i, 1);
      i++;
    } else {
      size_t k = c >= 0x80 ? utf8_seq(p + i, n - i) : 0;
      if (k) {
        ptc_buf_put(b, (const char *)p + i, k);
        i += k;
      } else {
        char e[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
        ptc_buf_put(b, e, 4);
        i++;
      }
    }
  }
  ptc_buf_put(b, "\"", 1);
}

static bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '.';
}

/* A value name the printer may keep: NAME ([A-Za-z0-9_.]+) and not made only
 * of digits (that spelling means "unnamed, numbered by the printer"). */
static bool value_name_ok(const char *s) {
  if (!s || !*s) return false;
  bool digits_only = true;
  for (const char *q = s; *q; q++) {
    if (!is_name_char(*q)) return false;
    if (*q < '0' || *q > '9') digits_only = false;
  }
  return !digits_only;
}

static void put_loc(ptc_buf *b, ptc_loc loc) {
  if (!loc.file) return;
  ptc_buf_puts(b, " loc(");
  put_string(b, loc.file);
  ptc_buf_printf(b, ":%d:%d)", (int)loc.line, (int)loc.col);
}

/* ---- attributes --------------------------------------------------------- */

static void put_attr_value(ptc_buf *b, const ptc_attr *a) {
  switch (a->kind) {
  case PTC_ATTR_INT:
    ptc_buf_printf(b, "%lld", (long long)a->u.i);
    break;
  case PTC_ATTR_FLOAT:
    ptc_buf_put_double(b, a->u.f);
    break;
  case PTC_ATTR_BOOL:
    ptc_buf_puts(b, a->u.b ? "true" : "false");
    break;
  case PTC_ATTR_STR:
    put_string(b, a->u.s);
    break;
  case PTC_ATTR_SYM:
    ptc_buf_puts(b, a->u.s ? a->u.s : "");
    break;
  case PTC_ATTR_INTS:
    ptc_buf_put(b, "[", 1);
    for (int32_t i = 0; i < a->u.ints.n; i++)
      ptc_buf_printf(b, "%s%lld", i ? ", " : "", (long long)a->u.ints.v[i]);
    ptc_buf_put(b, "]", 1);
    break;
  case PTC_ATTR_DTYPE:
    ptc_buf_puts(b, ptc_dtype_name(a->u.dtype));
    break;
  }
}

/* Sorted by name whatever order the list is in (ops keep theirs sorted;
 * module attributes are sorted too, but sorting here costs nothing and
 * keeps the output canonical for any caller). */
static int attr_cmp(const void *x, const void *y) {
  const ptc_attr *a = *(const ptc_attr *const *)x;
  const ptc_attr *b = *(const ptc_attr *const *)y;
  return strcmp(a->name, b->name);
}

static void put_attrs(ptc_buf *b, const ptc_attr *attrs, int32_t n) {
  if (n <= 0) return;
  const ptc_attr **order = ptc_xmalloc((size_t)n * sizeof *order);
  for (int32_t i = 0; i < n; i++) order[i] = &attrs[i];
  qsort(order, (size_t)n, sizeof *order, attr_cmp);
  ptc_buf_puts(b, " {");
  for (int32_t i = 0; i < n; i++) {
    ptc_buf_printf(b, "%s%s = ", i ? ", " : "", order[i]->name);
    put_attr_value(b, order[i]);
  }
  ptc_buf_put(b, "}", 1);
  free(order);
}

/* ---- types -------------------------------------------------------------- */

static void put_rtype(ptc_buf *b, const ptc_type *t, const ptc_sharding *s,
                      const ptc_mesh *m) {
  ptc_type_print(b, t);
  if (s && s->present) {
    ptc_buf_put(b, " ", 1);
    ptc_sharding_print(b, s, t->rank, m);
  }
}

static void put_init(ptc_buf *b, const ptc_init *in) {
  switch (in->kind) {
  case PTC_INIT_NONE:
    return;
  case PTC_INIT_ZEROS:
    ptc_buf_puts(b, " init zeros");
    return;
  case PTC_INIT_ONES:
    ptc_buf_puts(b, " init ones");
    return;
  case PTC_INIT_NORMAL:
    ptc_buf_puts(b, " init normal(");
    ptc_buf_put_double(b, in->std);
    ptc_buf_put(b, ")", 1);
    return;
  case PTC_INIT_SCALED:
    ptc_buf_puts(b, " init scaled(");
    ptc_buf_put_double(b, in->std);
    ptc_buf_printf(b, ", %lld)", (long long)in->depth);
    return;
  case PTC_INIT_COPY:
    ptc_buf_printf(b, " init copy(@%s)", in->from ? in->from : "?");
    return;
  }
}

/* ---- value names -------------------------------------------------------- */

/* The spelling of each value of a function: its own name where that is a
 * valid, unique NAME, else a number.  Numbers are handed out in order of
 * definition (arguments, then results in op order) and count only the
 * values that get one. */
typedef struct names {
  const char **name; /* [nvalues]: kept name, or NULL */
  int64_t *num;      /* [nvalues]: number when name is NULL */
  /* open-addressing set of kept names, to catch duplicates */
  const char **set;
  size_t set_cap;
} names;

static size_t hash_str(const char *s) {
  size_t h = 1469598103934665603u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h;
}

/* Adds s to the set; false if it was already there. */
static bool set_add(names *nm, const char *s) {
  size_t mask = nm->set_cap - 1;
  for (size_t i = hash_str(s) & mask;; i = (i + 1) & mask) {
    if (!nm->set[i]) {
      nm->set[i] = s;
      return true;
    }
    if (strcmp(nm->set[i], s) == 0) return false;
  }
}

static void assign(names *nm, const ptc_func *f, int32_t id, int64_t *next) {
  if (id < 0 || id >= f->nvalues) return;
  const char *s = f->values[id].name;
  if (value_name_ok(s) && set_add(nm, s)) {
    nm->name[id] = s;
  } else {
    nm->name[id] = NULL;
    nm->num[id] = (*next)++;
  }
}

static void names_init(names *nm, const ptc_func *f) {
  size_t n = f->nvalues > 0 ? (size_t)f->nvalues : 1;
  nm->name = ptc_xcalloc(n, sizeof *nm->name);
  nm->num = ptc_xcalloc(n, sizeof *nm->num);
  nm->set_cap = 16;
  while (nm->set_cap < 2 * n) nm->set_cap *= 2;
  nm->set = ptc_xcalloc(nm->set_cap, sizeof *nm->set);
  int64_t next = 0;
  for (int32_t i = 0; i < f->nargs; i++) assign(nm, f, f->args[i], &next);
  for (int32_t i = 0; i < f->nops; i++)
    for (int32_t r = 0; r < f->ops[i].nout; r++)
      assign(nm, f, f->ops[i].out[r], &next);
}

static void names_fini(names *nm) {
  free(nm->name);
  free(nm->num);
  free(nm->set);
}

static void put_value(ptc_buf *b, const ptc_func *f, const names *nm,
                      int32_t id) {
  if (id < 0 || id >= f->nvalues) {
    /* Not a value of this function: the verifier rejects such a module;
     * print something visibly wrong rather than crash. */
    ptc_buf_printf(b, "%%<bad value %d>", (int)id);
    return;
  }
  const ptc_value *v = &f->values[id];
  if (v->kind == PTC_VALUE_PARAM) {
    const ptc_module *m = f->mod;
    if (m && v->def >= 0 && v->def < m->nparams)
      ptc_buf_printf(b, "@%s", m->params[v->def].name);
    else
      ptc_buf_printf(b, "@<bad param %d>", (int)v->def);
    return;
  }
  if (nm->name[id])
    ptc_buf_printf(b, "%%%s", nm->name[id]);
  else
    ptc_buf_printf(b, "%%%lld", (long long)nm->num[id]);
}

/* ---- module ------------------------------------------------------------- */

static void put_op(ptc_buf *b, const ptc_func *f, const names *nm,
                   const ptc_op *op) {
  const ptc_mesh *mesh = &f->mod->mesh;
  ptc_buf_puts(b, "    ");
  for (int32_t r = 0; r < op->nout; r++) {
    if (r) ptc_buf_puts(b, ", ");
    put_value(b, f, nm, op->out[r]);
  }
  if (op->nout > 0) ptc_buf_puts(b, " = ");
  const ptc_opinfo *info =
      (unsigned)op->code < PTC_OP_COUNT ? ptc_opinfo_get(op->code) : NULL;
  ptc_buf_puts(b, info ? info->name : "<bad op>");
  for (int32_t i = 0; i < op->nin; i++) {
    ptc_buf_puts(b, i ? ", " : " ");
    put_value(b, f, nm, op->in[i]);
  }
  put_attrs(b, op->attrs, op->nattr);
  for (int32_t r = 0; r < op->nout; r++) {
    ptc_buf_puts(b, r ? ", " : " : ");
    int32_t id = op->out[r];
    if (id >= 0 && id < f->nvalues)
      put_rtype(b, &f->values[id].type, &f->values[id].shard, mesh);
    else
      ptc_buf_puts(b, "<bad value>");
  }
  put_loc(b, op->loc);
  ptc_buf_put(b, "\n", 1);
}

static void put_func(ptc_buf *b, const ptc_func *f) {
  const ptc_mesh *mesh = &f->mod->mesh;
  names nm;
  names_init(&nm, f);
  ptc_buf_printf(b, "  func @%s(", f->name);
  for (int32_t i = 0; i < f->nargs; i++) {
    if (i) ptc_buf_puts(b, ", ");
    int32_t id = f->args[i];
    put_value(b, f, &nm, id);
    ptc_buf_puts(b, ": ");
    if (id >= 0 && id < f->nvalues)
      put_rtype(b, &f->values[id].type, &f->values[id].shard, mesh);
  }
  ptc_buf_put(b, ")", 1);
  if (f->nresults > 0) {
    bool paren = f->nresults > 1;
    ptc_buf_puts(b, paren ? " -> (" : " -> ");
    for (int32_t i = 0; i < f->nresults; i++) {
      if (i) ptc_buf_puts(b, ", ");
      put_rtype(b, &f->result_types[i],
                f->result_shards ? &f->result_shards[i] : NULL, mesh);
    }
    if (paren) ptc_buf_put(b, ")", 1);
  }
  put_loc(b, f->loc);
  ptc_buf_puts(b, " {\n");
  for (int32_t i = 0; i < f->nops; i++) put_op(b, f, &nm, &f->ops[i]);
  ptc_buf_puts(b, "  }\n");
  names_fini(&nm);
}

static void put_param(ptc_buf *b, const ptc_module *m, const ptc_param *p) {
  ptc_buf_printf(b, "  %s @%s : ", p->trainable ? "param" : "state", p->name);
  put_rtype(b, &p->type, &p->shard, &m->mesh);
  put_init(b, &p->init);
  put_loc(b, p->loc);
  ptc_buf_put(b, "\n", 1);
}

void ptc_print_module(ptc_buf *b, const ptc_module *m) {
  ptc_buf_printf(b, "module @%s", m->name ? m->name : "");
  if (m->mesh.naxes > 0) {
    ptc_buf_put(b, " ", 1);
    ptc_mesh_print(b, &m->mesh);
  }
  if (m->nattr > 0) {
    ptc_buf_puts(b, " attributes");
    put_attrs(b, m->attrs, m->nattr);
  }
  ptc_buf_puts(b, " {\n");
  for (int32_t i = 0; i < m->nparams; i++) put_param(b, m, &m->params[i]);
  for (int32_t i = 0; i < m->nfuncs; i++) {
    /* A blank line between the params block and each func. */
    if (i > 0 || m->nparams > 0) ptc_buf_put(b, "\n", 1);
    put_func(b, m->funcs[i]);
  }
  ptc_buf_puts(b, "}\n");
}

int ptc_write_module(FILE *f, const ptc_module *m) {
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_print_module(&b, m);
  size_t n = b.len ? fwrite(b.data, 1, b.len, f) : 0;
  int rc = (n == b.len && fflush(f) == 0 && !ferror(f)) ? 0 : -1;
  ptc_buf_fini(&b);
  return rc;
}
