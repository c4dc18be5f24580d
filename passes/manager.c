/* manager.c -- parses pipeline strings and runs them with instrumentation.
 *
 * The manager is the only place that knows about dumps, verification and
 * timing, so passes stay small: a pass only transforms the module.  Dumps
 * are exactly ptc_print_module's text, so any dump can be fed back to
 * `ptc -x ptir` and continue from there (as with mlir-opt).
 */
#include "passes/passes.h"

#include <errno.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* ======================================================================
 * Options
 * ====================================================================== */

static int opt_index(const ptc_pass_opts *o, const char *name) {
  PTC_ASSERT(o->pass != NULL);
  for (int32_t i = 0; i < o->pass->nopts; i++)
    if (strcmp(o->pass->opts[i].name, name) == 0) return i;
  ptc_fatal(__FILE__, __LINE__, "pass '%s' has no option '%s'", o->pass->name,
            name);
}

int64_t ptc_pass_opt_int(const ptc_pass_opts *o, const char *name) {
  int i = opt_index(o, name);
  PTC_ASSERT(o->pass->opts[i].kind == PTC_PASS_OPT_INT);
  return o->value[i];
}

bool ptc_pass_opt_bool(const ptc_pass_opts *o, const char *name) {
  int i = opt_index(o, name);
  PTC_ASSERT(o->pass->opts[i].kind == PTC_PASS_OPT_BOOL);
  return o->value[i] != 0;
}

double ptc_pass_opt_float(const ptc_pass_opts *o, const char *name) {
  int i = opt_index(o, name);
  PTC_ASSERT(o->pass->opts[i].kind == PTC_PASS_OPT_FLOAT);
  return o->fvalue[i];
}

int ptc_pass_opt_choice(const ptc_pass_opts *o, const char *name) {
  int i = opt_index(o, name);
  PTC_ASSERT(o->pass->opts[i].kind == PTC_PASS_OPT_CHOICE);
  return (int)o->value[i];
}

const char *ptc_pass_choice_word(const char *choices, int n, char *buf, size_t len) {
  const char *p = choices;
  for (int k = 0; k < n && p; k++) {
    p = strchr(p, '|');
    if (p) p++;
  }
  if (!p) p = "";
  size_t w = strcspn(p, "|");
  snprintf(buf, len, "%.*s", (int)w, p);
  return buf;
}

/* Index of word val[0..n) in choices, or -1. */
static int choice_index(const char *choices, const char *val, size_t n) {
  int k = 0;
  for (const char *p = choices; *p; k++) {
    size_t w = strcspn(p, "|");
    if (w == n && memcmp(p, val, n) == 0) return k;
    p += w;
    if (*p == '|') p++;
  }
  return -1;
}

static void opts_init(ptc_pass_opts *o, const ptc_pass_info *pass) {
  memset(o, 0, sizeof *o);
  PTC_ASSERT(pass->nopts >= 0 && pass->nopts <= PTC_PASS_MAX_OPTS);
  o->pass = pass;
  for (int32_t i = 0; i < pass->nopts; i++) {
    o->value[i] = pass->opts[i].dflt;
    o->fvalue[i] = pass->opts[i].fdflt;
  }
}

/* ======================================================================
 * Pipeline parsing
 * ====================================================================== */

/* Parser state over the registered "<command line>" source. */
typedef struct pp_state {
  ptc_ctx *ctx;
  const char *file; /* interned source name */
  const char *text;
  size_t len, pos;
} pp_state;

static ptc_loc pp_loc(const pp_state *s, size_t off) {
  ptc_loc l = {s->file, 1, 1};
  for (size_t i = 0; i < off && i < s->len; i++) {
    if (s->text[i] == '\n') {
      l.line++;
      l.col = 1;
    } else {
      l.col++;
    }
  }
  return l;
}

static void pp_skip_ws(pp_state *s) {
  while (s->pos < s->len &&
         (s->text[s->pos] == ' ' || s->text[s->pos] == '\t' ||
          s->text[s->pos] == '\n' || s->text[s->pos] == '\r'))
    s->pos++;
}

static bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

/* "'x'" for a printable character, else its byte value: never half of a
 * UTF-8 sequence in a message. */
static const char *pp_char(char c, char buf[16]) {
  unsigned char u = (unsigned char)c;
  if (u >= 0x20 && u < 0x7f) snprintf(buf, 16, "'%c'", c);
  else snprintf(buf, 16, "byte 0x%02x", u);
  return buf;
}

static size_t pp_name(pp_state *s) {
  size_t start = s->pos;
  while (s->pos < s->len && is_name_char(s->text[s->pos])) s->pos++;
  return s->pos - start;
}

static bool parse_i64(const char *s, size_t n, int64_t *out) {
  size_t i = 0;
  bool neg = false;
  if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i == n) return false;
  int64_t v = 0;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    int64_t d = s[i] - '0';
    if (!ptc_mul_ovf(v, 10, &v) || !ptc_add_ovf(v, neg ? -d : d, &v))
      return false;
  }
  *out = v;
  return true;
}

static bool parse_bool(const char *s, size_t n, int64_t *out) {
  if ((n == 4 && memcmp(s, "true", 4) == 0) || (n == 1 && s[0] == '1')) {
    *out = 1;
    return true;
  }
  if ((n == 5 && memcmp(s, "false", 5) == 0) || (n == 1 && s[0] == '0')) {
    *out = 0;
    return true;
  }
  return false;
}

static void list_options(ptc_buf *b, const ptc_pass_info *pass) {
  for (int32_t i = 0; i < pass->nopts; i++) {
    if (i) ptc_buf_puts(b, ", ");
    ptc_buf_puts(b, pass->opts[i].name);
  }
}

/* opt := OPTNAME ['=' VALUE]     (a bare boolean option means true) */
static int pp_option(pp_state *s, ptc_pipeline_entry *e) {
  const ptc_pass_info *pass = e->pass;
  size_t start = s->pos;
  size_t n = pp_name(s);
  if (n == 0) {
    ptc_error(s->ctx, pp_loc(s, start), "expected an option name or '}'");
    return -1;
  }
  const char *name = s->text + start;
  int idx = -1;
  for (int32_t i = 0; i < pass->nopts; i++)
    if (strlen(pass->opts[i].name) == n &&
        memcmp(pass->opts[i].name, name, n) == 0)
      idx = i;
  if (idx < 0) {
    ptc_buf b;
    ptc_buf_init(&b);
    if (pass->nopts == 0) {
      ptc_buf_puts(&b, "it takes no options");
    } else {
      ptc_buf_puts(&b, "its options are: ");
      list_options(&b, pass);
    }
    ptc_error(s->ctx, pp_loc(s, start), "unknown option '%.*s' for pass '%s'; %s",
              (int)n, name, pass->name, b.data);
    ptc_buf_fini(&b);
    return -1;
  }
  const ptc_pass_opt_spec *spec = &pass->opts[idx];
  if (e->opts.given[idx]) {
    ptc_error(s->ctx, pp_loc(s, start), "option '%s' of pass '%s' given twice",
              spec->name, pass->name);
    return -1;
  }
  int64_t v = 1;
  size_t vstart = s->pos;
  size_t vlen = 0;
  if (s->pos < s->len && s->text[s->pos] == '=') {
    s->pos++;
    vstart = s->pos;
    while (s->pos < s->len && s->text[s->pos] != '}' &&
           s->text[s->pos] != ',' && s->text[s->pos] != ' ' &&
           s->text[s->pos] != '\t' && s->text[s->pos] != '\n')
      s->pos++;
    vlen = s->pos - vstart;
    const char *val = s->text + vstart;
    if (spec->kind == PTC_PASS_OPT_INT) {
      if (!parse_i64(val, vlen, &v) || v < spec->min || v > spec->max) {
        ptc_error(s->ctx, pp_loc(s, vstart),
                  "option '%s' of pass '%s' expects an integer in [%lld, %lld], "
                  "got '%.*s'",
                  spec->name, pass->name, (long long)spec->min,
                  (long long)spec->max, (int)vlen, val);
        return -1;
      }
    } else if (spec->kind == PTC_PASS_OPT_FLOAT) {
      char num[64];
      char *end = NULL;
      double f = 0;
      bool good = vlen > 0 && vlen < sizeof num;
      if (good) {
        memcpy(num, val, vlen);
        num[vlen] = 0;
        f = strtod(num, &end);
        good = *end == 0 && isfinite(f) && f >= spec->fmin && f <= spec->fmax;
      }
      if (!good) {
        ptc_error(s->ctx, pp_loc(s, vstart),
                  "option '%s' of pass '%s' expects a number in [%g, %g], got '%.*s'",
                  spec->name, pass->name, spec->fmin, spec->fmax, (int)vlen, val);
        return -1;
      }
      e->opts.fvalue[idx] = f;
    } else if (spec->kind == PTC_PASS_OPT_CHOICE) {
      int k = choice_index(spec->choices, val, vlen);
      if (k < 0) {
        ptc_error(s->ctx, pp_loc(s, vstart),
                  "option '%s' of pass '%s' is one of %s, got '%.*s'", spec->name,
                  pass->name, spec->choices, (int)vlen, val);
        return -1;
      }
      v = k;
    } else if (!parse_bool(val, vlen, &v)) {
      ptc_error(s->ctx, pp_loc(s, vstart),
                "option '%s' of pass '%s' expects true or false, got '%.*s'",
                spec->name, pass->name, (int)vlen, val);
      return -1;
    }
  } else if (spec->kind != PTC_PASS_OPT_BOOL) {
    ptc_error(s->ctx, pp_loc(s, s->pos),
              "option '%s' of pass '%s' needs a value: %s=N", spec->name,
              pass->name, spec->name);
    return -1;
  }
  e->opts.value[idx] = v;
  e->opts.given[idx] = true;
  return 0;
}

/* pass := NAME ['{' [opt ((WS | ',') opt)*] '}'] */
static int pp_pass(pp_state *s, ptc_pipeline_entry *e) {
  size_t start = s->pos;
  size_t n = pp_name(s);
  if (n == 0) {
    char cb[16];
    if (s->pos < s->len)
      ptc_error(s->ctx, pp_loc(s, start), "expected a pass name, found %s",
                pp_char(s->text[s->pos], cb));
    else
      ptc_error(s->ctx, pp_loc(s, start), "expected a pass name");
    return -1;
  }
  const ptc_pass_info *pass = ptc_pass_find(s->text + start, n);
  if (!pass) {
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_pass_list_names(&b);
    ptc_error(s->ctx, pp_loc(s, start), "unknown pass '%.*s'; known passes: %s",
              (int)n, s->text + start, b.data);
    ptc_buf_fini(&b);
    return -1;
  }
  e->pass = pass;
  opts_init(&e->opts, pass);
  pp_skip_ws(s);
  if (s->pos >= s->len || s->text[s->pos] != '{') return 0;
  size_t open = s->pos++;
  for (;;) {
    while (s->pos < s->len &&
           (s->text[s->pos] == ',' || s->text[s->pos] == ' ' ||
            s->text[s->pos] == '\t' || s->text[s->pos] == '\n'))
      s->pos++;
    if (s->pos >= s->len) {
      ptc_error(s->ctx, pp_loc(s, open), "unterminated '{' in options of pass '%s'",
                pass->name);
      return -1;
    }
    if (s->text[s->pos] == '}') {
      s->pos++;
      return 0;
    }
    if (pp_option(s, e) != 0) return -1;
  }
}

/* pipeline := [pass (',' pass)*]     (whitespace allowed between tokens;
 *                                     an empty pipeline runs nothing) */
ptc_pipeline *ptc_pipeline_parse(ptc_ctx *ctx, const char *text) {
  pp_state s = {ctx, NULL, text, strlen(text), 0};
  s.file = ptc_ctx_add_source(ctx, "<command line>", text, s.len);
  ptc_pipeline *p = ptc_xcalloc(1, sizeof *p);
  int32_t cap = 0;
  pp_skip_ws(&s);
  if (s.pos == s.len) return p;
  for (;;) {
    if (p->n == cap) {
      cap = cap ? cap * 2 : 8;
      p->entries = ptc_xrealloc(p->entries, (size_t)cap * sizeof *p->entries);
    }
    ptc_pipeline_entry *e = &p->entries[p->n];
    memset(e, 0, sizeof *e);
    if (pp_pass(&s, e) != 0) goto fail;
    p->n++;
    pp_skip_ws(&s);
    if (s.pos == s.len) return p;
    if (s.text[s.pos] != ',') {
      char cb[16];
      ptc_error(ctx, pp_loc(&s, s.pos), "expected ',' between passes, found %s",
                pp_char(s.text[s.pos], cb));
      goto fail;
    }
    s.pos++;
    pp_skip_ws(&s);
  }
fail:
  ptc_pipeline_destroy(p);
  return NULL;
}

void ptc_pipeline_destroy(ptc_pipeline *p) {
  if (!p) return;
  free(p->entries);
  free(p);
}

void ptc_pipeline_print(ptc_buf *b, const ptc_pipeline *p) {
  for (int32_t i = 0; i < p->n; i++) {
    const ptc_pipeline_entry *e = &p->entries[i];
    if (i) ptc_buf_puts(b, ",");
    ptc_buf_puts(b, e->pass->name);
    bool any = false;
    for (int32_t k = 0; k < e->pass->nopts; k++) {
      if (!e->opts.given[k]) continue;
      ptc_buf_puts(b, any ? " " : "{");
      any = true;
      const ptc_pass_opt_spec *spec = &e->pass->opts[k];
      char word[64];
      if (spec->kind == PTC_PASS_OPT_BOOL)
        ptc_buf_printf(b, "%s=%s", spec->name, e->opts.value[k] ? "true" : "false");
      else if (spec->kind == PTC_PASS_OPT_FLOAT) {
        ptc_buf_printf(b, "%s=", spec->name);
        ptc_buf_put_double(b, e->opts.fvalue[k]);
      } else if (spec->kind == PTC_PASS_OPT_CHOICE)
        ptc_buf_printf(b, "%s=%s", spec->name,
                       ptc_pass_choice_word(spec->choices, (int)e->opts.value[k], word,
                                            sizeof word));
      else
        ptc_buf_printf(b, "%s=%lld", spec->name, (long long)e->opts.value[k]);
    }
    if (any) ptc_buf_puts(b, "}");
  }
}

int ptc_pass_names_check(ptc_ctx *ctx, const char *option, const char *names) {
  size_t len = strlen(names);
  /* Quote the option as typed so the caret lands in the right place. */
  ptc_buf src;
  ptc_buf_init(&src);
  ptc_buf_printf(&src, "%s=%s", option, names);
  const char *file = ptc_ctx_add_source(ctx, "<command line>", src.data, src.len);
  size_t base = strlen(option) + 1;
  int rc = 0;
  size_t i = 0;
  for (;;) {
    size_t start = i;
    while (i < len && names[i] != ',') i++;
    if (i == start || !ptc_pass_find(names + start, i - start)) {
      ptc_buf b;
      ptc_buf_init(&b);
      ptc_pass_list_names(&b);
      ptc_loc loc = {file, 1, (int32_t)(base + start + 1)};
      if (i == start)
        ptc_error(ctx, loc, "%s: expected a pass name; known passes: %s", option,
                  b.data);
      else
        ptc_error(ctx, loc, "%s: unknown pass '%.*s'; known passes: %s", option,
                  (int)(i - start), names + start, b.data);
      ptc_buf_fini(&b);
      rc = -1;
      break;
    }
    if (i == len) break;
    i++;
  }
  ptc_buf_fini(&src);
  return rc;
}

/* ======================================================================
 * Files
 * ====================================================================== */

int ptc_write_file_atomic(ptc_ctx *ctx, const char *path, const char *data,
                          size_t len) {
  size_t n = strlen(path);
  char *tmp = ptc_xmalloc(n + 5);
  memcpy(tmp, path, n);
  memcpy(tmp + n, ".tmp", 5);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    ptc_error(ctx, ptc_loc_unknown, "cannot write '%s': %s", path, strerror(errno));
    free(tmp);
    return -1;
  }
  bool ok = fwrite(data, 1, len, f) == len;
  int err = errno;
  if (fflush(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (ok && rename(tmp, path) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    remove(tmp);
    ptc_error(ctx, ptc_loc_unknown, "cannot write '%s': %s", path, strerror(err));
  }
  free(tmp);
  return ok ? 0 : -1;
}

/* Makes directory `part`, a prefix of `full` (the path named in errors). */
static int make_one_dir(ptc_ctx *ctx, const char *full, const char *part) {
  if (mkdir(part, 0777) == 0) return 0;
  int err = errno;
  struct stat st;
  if (stat(part, &st) == 0) {
    if (S_ISDIR(st.st_mode)) return 0;
    ptc_error(ctx, ptc_loc_unknown,
              "cannot create directory '%s': '%s' exists and is not a directory",
              full, part);
    return -1;
  }
  ptc_error(ctx, ptc_loc_unknown, "cannot create directory '%s': %s", full,
            strerror(err));
  return -1;
}

int ptc_make_dirs(ptc_ctx *ctx, const char *path) {
  size_t n = strlen(path);
  if (n == 0) {
    ptc_error(ctx, ptc_loc_unknown, "empty directory name");
    return -1;
  }
  char *p = ptc_xmalloc(n + 1);
  memcpy(p, path, n + 1);
  int rc = 0;
  /* Parents first; a leading '/' is the root, not a component. */
  for (size_t i = 1; i < n && rc == 0; i++) {
    if (p[i] != '/' || p[i - 1] == '/') continue;
    p[i] = '\0';
    rc = make_one_dir(ctx, path, p);
    p[i] = '/';
  }
  if (rc == 0) rc = make_one_dir(ctx, path, p);
  free(p);
  return rc;
}

/* ======================================================================
 * Running
 * ====================================================================== */

void ptc_pm_config_init(ptc_pm_config *c) {
  memset(c, 0, sizeof *c);
  c->verify_each = true;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Is `name` one of the comma-separated names in list? */
static bool in_list(const char *list, const char *name) {
  if (!list) return false;
  size_t n = strlen(name);
  const char *p = list;
  for (;;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && memcmp(p, name, n) == 0) return true;
    if (!end) return false;
    p = end + 1;
  }
}

/* The banner FileCheck tests match, then the module, then a blank line. */
static void print_dump(FILE *f, const char *when, const char *pass,
                       const char *suffix, const ptc_buf *text) {
  fprintf(f, "// -----// IR Dump %s %s%s //----- //\n", when, pass, suffix);
  if (text->len) fwrite(text->data, 1, text->len, f);
  fputc('\n', f);
  fflush(f);
}

static void module_text(ptc_buf *b, const ptc_module *m) {
  b->len = 0;
  ptc_print_module(b, m);
}

/* Writes DIR/NN-name.ptir with the module's text. */
static int dump_file(ptc_module *m, const char *dir, int index,
                     const char *name, const ptc_buf *text) {
  ptc_buf path;
  ptc_buf_init(&path);
  size_t n = strlen(dir);
  bool slash = n > 0 && dir[n - 1] == '/';
  ptc_buf_printf(&path, "%s%s%02d-%s.ptir", dir, slash ? "" : "/", index, name);
  int rc = ptc_write_file_atomic(m->ctx, path.data, text->len ? text->data : "",
                                 text->len);
  ptc_buf_fini(&path);
  return rc;
}

typedef struct pm_timing {
  double *pass_secs; /* [p->n] */
  double verify_secs;
  double start;
  int32_t ran; /* passes that started */
} pm_timing;

static void print_time_report(FILE *f, const ptc_pipeline *p,
                              const pm_timing *t, bool verify) {
  double total = now_seconds() - t->start;
  double sum = t->verify_secs;
  for (int32_t i = 0; i < t->ran; i++) sum += t->pass_secs[i];
  double other = total > sum ? total - sum : 0.0;
  double denom = total > 0 ? total : 1.0;
  const char *rule =
      "===-------------------------------------------------------------------"
      "------===";
  fprintf(f, "%s\n%*s... Pass execution timing report ...\n%s\n", rule, 20, "",
          rule);
  fprintf(f, "  Total Execution Time: %.4f seconds\n\n", total);
  fprintf(f, "  ----Wall Time----  ----Name----\n");
  for (int32_t i = 0; i < t->ran; i++)
    fprintf(f, "  %8.4f (%5.1f%%)  %s\n", t->pass_secs[i],
            100.0 * t->pass_secs[i] / denom, p->entries[i].pass->name);
  if (verify)
    fprintf(f, "  %8.4f (%5.1f%%)  %s\n", t->verify_secs,
            100.0 * t->verify_secs / denom, "(verifier)");
  fprintf(f, "  %8.4f (%5.1f%%)  %s\n", other, 100.0 * other / denom,
          "(instrumentation)");
  fprintf(f, "  %8.4f (%5.1f%%)  %s\n", total, 100.0, "Total");
  fflush(f);
}

int ptc_pipeline_run(ptc_module *m, const ptc_pipeline *p,
                     const ptc_pm_config *cfg) {
  ptc_pm_config defaults;
  if (!cfg) {
    ptc_pm_config_init(&defaults);
    cfg = &defaults;
  }
  ptc_ctx *ctx = m->ctx;
  FILE *out = cfg->dump_stream ? cfg->dump_stream : stderr;
  /* Alone, after-change means "after every pass that changed the IR". */
  bool after_filtered = cfg->print_after_all || cfg->print_after;
  bool need_before_text = cfg->print_after_change;
  pm_timing t = {ptc_xcalloc((size_t)(p->n ? p->n : 1), sizeof(double)), 0.0,
                 now_seconds(), 0};
  ptc_buf before, after;
  ptc_buf_init(&before);
  ptc_buf_init(&after);
  int rc = 0;

  if (cfg->dump_dir) {
    module_text(&after, m);
    if (ptc_make_dirs(ctx, cfg->dump_dir) != 0 ||
        dump_file(m, cfg->dump_dir, 0, "input", &after) != 0) {
      rc = -1;
      goto done;
    }
  }

  for (int32_t i = 0; i < p->n; i++) {
    const ptc_pipeline_entry *e = &p->entries[i];
    const char *name = e->pass->name;
    bool print_before = cfg->print_before_all || in_list(cfg->print_before, name);
    if (print_before || need_before_text) module_text(&before, m);
    if (print_before) print_dump(out, "Before", name, "", &before);

    int errors = ptc_ctx_error_count(ctx);
    bool changed = false;
    double t0 = now_seconds();
    int prc = e->pass->run(m, &e->opts, &changed);
    t.pass_secs[i] = now_seconds() - t0;
    t.ran = i + 1;
    if (prc != 0 && ptc_ctx_error_count(ctx) == errors)
      ptc_error(ctx, ptc_loc_unknown, "pass '%s' failed", name);
    if (prc == 0 && cfg->verify_each) {
      double v0 = now_seconds();
      int vrc = ptc_verify_module(m);
      t.verify_secs += now_seconds() - v0;
      if (vrc != 0) {
        ptc_error(ctx, ptc_loc_unknown, "the IR is invalid after pass '%s'",
                  name);
        prc = -1;
      }
    }
    if (prc != 0) {
      if (cfg->print_after_failure) {
        module_text(&after, m);
        print_dump(out, "After", name, " Failed", &after);
      }
      rc = -1;
      goto done;
    }

    bool print_after = after_filtered
                           ? cfg->print_after_all || in_list(cfg->print_after, name)
                           : cfg->print_after_change;
    if (print_after || cfg->dump_dir || need_before_text) module_text(&after, m);
    bool same_text = need_before_text && before.len == after.len &&
                     (after.len == 0 || memcmp(before.data, after.data, after.len) == 0);
    /* The contract that lets later passes trust *changed. */
    if (need_before_text && !same_text && !changed)
      ptc_fatal(__FILE__, __LINE__, "pass '%s' changed the IR but did not say so",
                name);
    if (print_after && cfg->print_after_change && same_text) print_after = false;
    if (print_after) print_dump(out, "After", name, "", &after);
    if (cfg->dump_dir && dump_file(m, cfg->dump_dir, i + 1, name, &after) != 0) {
      rc = -1;
      goto done;
    }
  }

done:
  if (cfg->time_passes)
    print_time_report(cfg->timing_stream ? cfg->timing_stream : stderr, p, &t,
                      cfg->verify_each);
  free(t.pass_secs);
  ptc_buf_fini(&before);
  ptc_buf_fini(&after);
  return rc;
}
