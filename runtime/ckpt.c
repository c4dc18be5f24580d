/* ckpt.c -- checkpoints that survive crashes and outlive the mesh that
 * wrote them (ckpt.h; docs/checkpoints.md is the format's reference).
 *
 * Why a manifest of blocks rather than one file per rank: a rank of
 * another mesh (another tp, dp, ZeRO stage, or one process) must find the
 * bytes of its own piece of every variable without knowing how the writer
 * was laid out.  Each block records its box in the whole tensor; a reader
 * intersects its box with every block's and reads just the overlap.
 *
 * Why the order of writes: a checkpoint that a crash, a kill or a full
 * disk interrupts must never be mistaken for a complete one, and the
 * previous one must survive.  Every rank writes and syncs its shard file
 * and a small index of it (rank-R.json) in a temporary directory; the
 * ranks agree that all succeeded; rank 0 merges the indexes into
 * manifest.json (with each shard file's SHA-256), syncs it and the
 * directory, and publishes the directory with one rename, then syncs the
 * parent.  Only step-<N> directories with a manifest count.
 *
 * Faults are injected for the tests by PTC_CKPT_FAULT=POINT[@STEP] (every
 * rank, or only PTC_CKPT_FAULT_RANK): after-data, before-fsync and
 * before-rename kill the process with SIGKILL at that point of the write,
 * after-publish just after the rename; stall-after-publish sleeps there (so
 * a test can kill the run from outside at a known point); enospc makes the
 * shard file's writes fail as a full disk does; nan makes the step's
 * results count as not finite (for --on-nan).
 */
#include "runtime/ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ckpt.c writes the host's bytes as little-endian"
#endif

enum { BLOCK_ALIGN = 64, ERR_CAP = 512 };

/* An error of the shard writer, which may run on a thread of its own and
 * so cannot report through a ptc_ctx: the caller reports it. */
typedef struct werr {
  char path[ERR_CAP];
  char msg[ERR_CAP];
} werr;

static void werr_set(werr *e, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void werr_set(werr *e, const char *path, const char *fmt, ...) {
  snprintf(e->path, sizeof e->path, "%s", path);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
}

static void werr_report(ptc_ctx *ctx, const werr *e) {
  ptrt_file_error(ctx, e->path, "%s", e->msg);
}

/* ---- small helpers ---------------------------------------------------------- */


static char *xstrdup(const char *s) {
  char *d = strdup(s);
  PTC_ASSERT(d);
  return d;
}

static json_t *ints_json(const int64_t *v, int32_t n) {
  json_t *a = json_array();
  for (int32_t i = 0; i < n; i++) json_array_append_new(a, json_integer((json_int_t)v[i]));
  return a;
}

static void shape_text(char *out, size_t cap, ptc_dtype dt, int32_t rank, const int64_t *d) {
  size_t k = (size_t)snprintf(out, cap, "%s[", ptrt_st_dtype_name(dt));
  for (int32_t i = 0; i < rank && k < cap; i++)
    k += (size_t)snprintf(out + k, cap - k, i ? ",%lld" : "%lld", (long long)d[i]);
  if (k < cap) snprintf(out + k, cap - k, "]");
}

static int64_t volume(int32_t rank, const int64_t *dims) {
  int64_t n = 1;
  for (int32_t d = 0; d < rank; d++) n *= dims[d];
  return n;
}

/* A json_dumps that never fails for the objects made here. */
static char *dump(const json_t *o, size_t flags) {
  char *s = json_dumps(o, flags | JSON_REAL_PRECISION(17));
  PTC_ASSERT(s);
  return s;
}

static void sha256_hex(const unsigned char md[32], char out[65]) {
  static const char hx[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hx[md[i] >> 4];
    out[2 * i + 1] = hx[md[i] & 15];
  }
  out[64] = '\0';
}

static void sha256_text(const char *s, char out[65]) {
  unsigned char md[32];
  unsigned int n = 0;
  int ok = EVP_Digest(s, strlen(s), md, &n, EVP_sha256(), NULL);
  PTC_ASSERT(ok == 1 && n == 32);
  sha256_hex(md, out);
}

/* Every rank's max of *v (the one-rank table: v itself).  `what` names the
 * agreement for a timeout's message. */
static int agree(const ptrt_comm *c, double *v, const char *what) {
  if (!c || c->size <= 1 || !c->world_max) return 0;
  snprintf(c->state->what, sizeof c->state->what, "%s", what);
  return c->world_max(c, v);
}

static int comm_rank(const ptrt_comm *c) { return c ? c->rank : 0; }

static int fsync_path(const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  errno = e;
  return rc;
}

/* mkdir -p; 0 or -1 with errno. */
static int make_dirs(const char *path) {
  char *p = xstrdup(path);
  int rc = 0;
  for (char *s = p + 1; rc == 0; s++) {
    if (*s != '/' && *s) continue;
    char c = *s;
    *s = '\0';
    if (mkdir(p, 0777) != 0 && errno != EEXIST) rc = -1;
    struct stat st;
    if (rc == 0 && (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))) {
      errno = ENOTDIR;
      rc = -1;
    }
    *s = c;
    if (!c) break;
  }
  free(p);
  return rc;
}

/* Removes a directory of plain files (what a checkpoint is). */
static int remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (!d) return errno == ENOENT ? 0 : -1;
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char *f = ptc_path_join(path, e->d_name);
    struct stat st;
    if (lstat(f, &st) == 0 && S_ISDIR(st.st_mode)) {
      if (remove_tree(f) != 0) rc = -1;
    } else if (unlink(f) != 0) {
      rc = -1;
    }
    free(f);
  }
  closedir(d);
  if (rmdir(path) != 0) rc = -1;
  return rc;
}

/* "step-<digits>" -> the number, else -1. */
static int64_t step_of(const char *name) {
  if (strncmp(name, "step-", 5) != 0 || !name[5]) return -1;
  int64_t v = 0;
  for (const char *p = name + 5; *p; p++) {
    if (*p < '0' || *p > '9' || v > (INT64_MAX - 9) / 10) return -1;
    v = v * 10 + (*p - '0');
  }
  return v;
}

static bool has_manifest(const char *dir) {
  char *m = ptc_path_join(dir, "manifest.json");
  struct stat st;
  bool ok = stat(m, &st) == 0 && S_ISREG(st.st_mode);
  free(m);
  return ok;
}

static uint64_t random_suffix(void) {
  uint64_t x = 0;
  FILE *f = fopen("/dev/urandom", "rb");
  if (f) {
    if (fread(&x, sizeof x, 1, f) != 1) x = 0;
    fclose(f);
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  x ^= (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
  return x & ((UINT64_C(1) << 48) - 1); /* exact in a double */
}

/* ---- faults (tests) ---------------------------------------------------------- */

typedef enum fault {
  FAULT_NONE,
  FAULT_AFTER_DATA,
  FAULT_BEFORE_FSYNC,
  FAULT_BEFORE_RENAME,
  FAULT_AFTER_PUBLISH,
  FAULT_STALL_AFTER_PUBLISH,
  FAULT_ENOSPC,
  FAULT_NAN,
  FAULT_BAD, /* an unknown point: the write refuses */
} fault;

static const char *const fault_names[] = {
    "", "after-data", "before-fsync", "before-rename", "after-publish",
    "stall-after-publish", "enospc", "nan",
};

/* The fault PTC_CKPT_FAULT asks for at this step on this rank. */
static fault fault_for(int64_t step, int rank) {
  const char *s = getenv("PTC_CKPT_FAULT");
  if (!s || !*s) return FAULT_NONE;
  const char *at = strchr(s, '@');
  size_t n = at ? (size_t)(at - s) : strlen(s);
  fault f = FAULT_BAD;
  for (int i = 1; i < PTC_ARRAY_LEN(fault_names); i++)
    if (strlen(fault_names[i]) == n && !strncmp(fault_names[i], s, n)) f = (fault)i;
  if (f == FAULT_BAD) return f;
  if (at) {
    char *end;
    long long st = strtoll(at + 1, &end, 10);
    if (!at[1] || *end) return FAULT_BAD;
    if (st != step) return FAULT_NONE;
  }
  const char *r = getenv("PTC_CKPT_FAULT_RANK");
  if (r && *r && atoi(r) != rank) return FAULT_NONE;
  return f;
}

static void crash_if(fault have, fault want) {
  if (have != want) return;
  fflush(NULL);
  raise(SIGKILL);
}

static void stall_if(fault have) {
  if (have != FAULT_STALL_AFTER_PUBLISH) return;
  fflush(NULL);
  for (int i = 0; i < 6000; i++) { /* at most 10 minutes */
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

/* ---- the fingerprint --------------------------------------------------------- */

/* Variables that hold nothing between steps: a pipelined plan's gradient
 * and loss accumulators (passes/pipeline.c names them <param>.grad_acc and
 * pipeline.loss), which @step.<s> resets.  They are neither written nor
 * compared, and a load leaves their init (zeros): so a checkpoint of a
 * pipelined plan is one of the model, loadable without a pipeline. */
static bool transient_var(const char *name) {
  size_t n = strlen(name), k = strlen(".grad_acc");
  return !strcmp(name, "pipeline.loss") || (n > k && !strcmp(name + n - k, ".grad_acc"));
}

/* "adamw beta1=0.9 beta2=0.95 eps=1e-08 weight_decay=0.1" for the update of
 * each parameter, from whichever function of the module holds it. */
static json_t *optimizer_json(const ptc_module *m) {
  json_t *updates = json_object();
  double clip = 0;
  for (int32_t fi = 0; fi < m->nfuncs; fi++) {
    const ptc_func *f = m->funcs[fi];
    for (int32_t i = 0; i < f->nops; i++) {
      const ptc_op *op = &f->ops[i];
      if (op->code != PTC_OP_ADAMW && op->code != PTC_OP_SGD) continue;
      const ptc_value *p = &f->values[op->in[0]];
      if (p->kind != PTC_VALUE_PARAM) continue;
      ptc_buf b;
      ptc_buf_init(&b);
      ptc_buf_puts(&b, ptc_opinfo_get(op->code)->name);
      for (int32_t a = 0; a < op->nattr; a++) {
        const ptc_attr *at = &op->attrs[a];
        if (!strcmp(at->name, "group")) continue; /* the fusion's grouping */
        ptc_buf_printf(&b, " %s=", at->name);
        switch (at->kind) {
        case PTC_ATTR_INT: ptc_buf_printf(&b, "%lld", (long long)at->u.i); break;
        case PTC_ATTR_FLOAT: ptc_buf_put_double(&b, at->u.f); break;
        case PTC_ATTR_BOOL: ptc_buf_puts(&b, at->u.b ? "true" : "false"); break;
        case PTC_ATTR_STR:
        case PTC_ATTR_SYM: ptc_buf_puts(&b, at->u.s); break;
        default: ptc_buf_puts(&b, "?"); break;
        }
      }
      json_object_set_new(updates, m->params[p->def].name, json_string(b.data));
      ptc_buf_fini(&b);
    }
    /* gradient clipping: %clip_scale = div <clip>, maximum(norm + eps, <clip>) */
    for (int32_t v = 0; v < f->nvalues; v++) {
      const ptc_value *val = &f->values[v];
      if (!val->name || strcmp(val->name, "clip_scale") || val->kind != PTC_VALUE_OP) continue;
      const ptc_op *div = &f->ops[val->def];
      if (div->nin < 1) continue;
      const ptc_value *num = &f->values[div->in[0]];
      if (num->kind == PTC_VALUE_OP && f->ops[num->def].code == PTC_OP_CONSTANT)
        clip = ptc_op_attr_float(&f->ops[num->def], "value", 0);
    }
  }
  return json_pack("{s:f,s:o}", "clip", clip, "updates", updates);
}

static json_t *training_json(const ptrt_ckpt_settings *s) {
  return json_pack("{s:f,s:f,s:I,s:I,s:I,s:I,s:I}", "lr", s->sched.lr, "min_lr",
                   s->sched.min_lr, "warmup", (json_int_t)s->sched.warmup, "decay_steps",
                   (json_int_t)s->sched.decay_steps, "batch", (json_int_t)s->batch, "seq",
                   (json_int_t)s->seq, "data_tokens", (json_int_t)s->data_tokens);
}

/* The variables as logical tensors, from the global module. */
static json_t *model_tensors_json(const ptc_module *m) {
  json_t *a = json_array();
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (transient_var(p->name)) continue;
    json_array_append_new(a, json_pack("{s:s,s:s,s:s,s:o}", "name", p->name, "kind",
                                       p->trainable ? "parameter" : "state", "dtype",
                                       ptrt_st_dtype_name(p->type.dtype), "shape",
                                       ints_json(p->type.dims, p->type.rank)));
  }
  return a;
}

static int cmp_name(const void *a, const void *b) {
  const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
  return strcmp(json_string_value(json_object_get(x, "name")),
                json_string_value(json_object_get(y, "name")));
}

/* SHA-256 of the canonical text of (tensors by name, optimizer, training). */
static void fingerprint(const json_t *tensors, const json_t *opt, const json_t *train,
                        char out[65]) {
  size_t n = json_array_size(tensors);
  json_t **v = ptc_xcalloc(n + 1, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = json_array_get(tensors, i);
  qsort(v, n, sizeof *v, cmp_name);
  json_t *t = json_array();
  for (size_t i = 0; i < n; i++)
    json_array_append_new(t, json_pack("[O,O,O,O]", json_object_get(v[i], "name"),
                                       json_object_get(v[i], "kind"),
                                       json_object_get(v[i], "dtype"),
                                       json_object_get(v[i], "shape")));
  free(v);
  json_t *o = json_pack("{s:o,s:O,s:O}", "tensors", t, "optimizer", opt, "training",
                        train ? train : json_null());
  char *s = dump(o, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(o);
  sha256_text(s, out);
  free(s);
}

/* ---- writing: one rank's shard ------------------------------------------------ */

/* Whether this device writes variable p: coordinate 0 on every axis that
 * does not split it, so each replica group writes once (a pipeline stage
 * writes what it holds; the manifest keeps one copy of a box). */
static bool writes_var(const ptrt_vars *v, int32_t i) {
  const ptc_param *p = &v->mod->params[i];
  if (!ptrt_vars_holds(v, i) || transient_var(p->name)) return false;
  uint8_t split = 0;
  if (p->shard.present)
    for (int32_t d = 0; d < p->type.rank; d++) split |= p->shard.dim_axes[d];
  for (int32_t a = 0; a < v->mesh.naxes; a++) {
    if (split & (1u << a) || !strcmp(v->mesh.axes[a].name, "pp")) continue;
    if (v->coord[a] != 0) return false;
  }
  return true;
}

typedef struct shard_writer {
  int fd;
  EVP_MD_CTX *md;
  int64_t off;
  fault f;
  werr *err;
  const char *path;
} shard_writer;

static int put(shard_writer *w, const void *data, int64_t n) {
  const unsigned char *p = data;
  if (w->f == FAULT_ENOSPC && n > 0) {
    /* a full disk: part of the bytes land, then the write fails */
    ssize_t part = write(w->fd, p, (size_t)(n / 2));
    (void)part;
    werr_set(w->err, w->path, "cannot write the checkpoint's shard: %s", strerror(ENOSPC));
    return -1;
  }
  EVP_DigestUpdate(w->md, p, (size_t)n);
  while (n > 0) {
    size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
    ssize_t k = write(w->fd, p, chunk);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      werr_set(w->err, w->path, "cannot write the checkpoint's shard: %s",
               k < 0 ? strerror(errno) : "no progress");
      return -1;
    }
    p += k;
    n -= k;
    w->off += k;
  }
  return 0;
}

/* Writes tmp/rank-R.bin (this rank's blocks, each at a multiple of 64
 * bytes) and tmp/rank-R.json (their index, the file's size and SHA-256),
 * and syncs both.  A rank that writes nothing writes neither.  On failure
 * fills err and returns -1; thread-safe (no ctx): the asynchronous writer
 * runs it too. */
static int write_shard(const char *tmp, int rank, const ptrt_vars *v,
                       const unsigned char *base, int64_t step, werr *err) {
  const ptc_module *m = v->mod;
  bool any = false;
  for (int32_t i = 0; i < m->nparams && !any; i++) any = writes_var(v, i);
  if (!any) return 0;
  char name[32], iname[32];
  snprintf(name, sizeof name, "rank-%05d.bin", rank);
  snprintf(iname, sizeof iname, "rank-%05d.json", rank);
  char *path = ptc_path_join(tmp, name), *ipath = ptc_path_join(tmp, iname);
  shard_writer w = {.fd = -1, .f = fault_for(step, rank), .err = err, .path = path};
  json_t *blocks = json_array();
  int rc = -1;
  w.fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (w.fd < 0) {
    werr_set(err, path, "cannot create the checkpoint's shard: %s", strerror(errno));
    goto out;
  }
  w.md = EVP_MD_CTX_new();
  PTC_ASSERT(w.md && EVP_DigestInit_ex(w.md, EVP_sha256(), NULL) == 1);
  static const unsigned char zeros[BLOCK_ALIGN];
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!writes_var(v, i)) continue;
    int64_t pad = (BLOCK_ALIGN - w.off % BLOCK_ALIGN) % BLOCK_ALIGN;
    if (put(&w, zeros, pad) != 0) goto out;
    int64_t gdims[PTC_MAX_RANK], origin[PTC_MAX_RANK], bytes = ptc_type_bytes(&p->type);
    ptrt_block_origin(&v->mesh, v->coord, &p->type, &p->shard, gdims, origin);
    json_array_append_new(
        blocks, json_pack("{s:s,s:s,s:s,s:o,s:I,s:I,s:o,s:o}", "name", p->name, "kind",
                          p->trainable ? "parameter" : "state", "dtype",
                          ptrt_st_dtype_name(p->type.dtype), "shape", ints_json(gdims, p->type.rank),
                          "offset", (json_int_t)w.off, "bytes", (json_int_t)bytes, "origin",
                          ints_json(origin, p->type.rank), "dims",
                          ints_json(p->type.dims, p->type.rank)));
    if (put(&w, base + v->offset[i], bytes) != 0) goto out;
  }
  crash_if(w.f, FAULT_AFTER_DATA);
  unsigned char md[32];
  unsigned int mdn = 0;
  EVP_DigestFinal_ex(w.md, md, &mdn);
  char hex[65];
  sha256_hex(md, hex);
  json_t *idx = json_pack("{s:i,s:s,s:I,s:s,s:O}", "rank", rank, "file", name, "bytes",
                          (json_int_t)w.off, "sha256", hex, "blocks", blocks);
  char *text = dump(idx, JSON_COMPACT);
  json_decref(idx);
  int ifd = open(ipath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  size_t tl = strlen(text);
  bool ok = ifd >= 0 && write(ifd, text, tl) == (ssize_t)tl;
  free(text);
  crash_if(w.f, FAULT_BEFORE_FSYNC);
  ok = ok && fsync(ifd) == 0;
  if (ifd >= 0 && close(ifd) != 0) ok = false;
  if (!ok) {
    werr_set(err, ipath, "cannot write the checkpoint's index: %s", strerror(errno));
    goto out;
  }
  if (fsync(w.fd) != 0) {
    werr_set(err, path, "cannot flush the checkpoint's shard to disk: %s", strerror(errno));
    goto out;
  }
  rc = 0;
out:
  if (w.fd >= 0 && close(w.fd) != 0 && rc == 0) {
    werr_set(err, path, "cannot write the checkpoint's shard: %s", strerror(errno));
    rc = -1;
  }
  if (w.md) EVP_MD_CTX_free(w.md);
  json_decref(blocks);
  free(path);
  free(ipath);
  return rc;
}

/* ---- writing: the manifest (rank 0) ------------------------------------------ */

static bool box_eq(const json_t *a, const json_t *b) {
  return json_equal(json_object_get(a, "origin"), json_object_get(b, "origin")) &&
         json_equal(json_object_get(a, "dims"), json_object_get(b, "dims"));
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The indexes rank-*.json of tmp, in rank order (heap names). */
static char **list_indexes(const char *tmp, int32_t *n) {
  *n = 0;
  DIR *d = opendir(tmp);
  if (!d) return NULL;
  char **names = NULL;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (strncmp(e->d_name, "rank-", 5) || len < 10 || strcmp(e->d_name + len - 5, ".json"))
      continue;
    names = ptc_xrealloc(names, (size_t)(*n + 1) * sizeof *names);
    names[(*n)++] = xstrdup(e->d_name);
  }
  closedir(d);
  if (*n) qsort(names, (size_t)*n, sizeof *names, cmp_str);
  return names;
}

static int check_tiling(ptc_ctx *ctx, const char *where, const ptrt_ckpt_tensor *t);

/* Merges the ranks' indexes into the manifest's files and tensors. */
static json_t *merge_indexes(ptc_ctx *ctx, const char *tmp, json_t **files_out) {
  int32_t n = 0;
  char **names = list_indexes(tmp, &n);
  json_t *files = json_array(), *tensors = json_array(), *by_name = json_object();
  bool bad = false;
  for (int32_t i = 0; i < n && !bad; i++) {
    char *path = ptc_path_join(tmp, names[i]);
    json_error_t je;
    json_t *idx = json_load_file(path, 0, &je);
    if (!json_is_object(idx)) {
      ptrt_file_error(ctx, path, "the rank's index of its shard is not readable JSON (%s)",
                      je.text);
      bad = true;
    } else {
      json_array_append_new(files, json_pack("{s:O,s:O,s:O}", "name",
                                             json_object_get(idx, "file"), "bytes",
                                             json_object_get(idx, "bytes"), "sha256",
                                             json_object_get(idx, "sha256")));
      size_t k;
      json_t *b;
      json_array_foreach(json_object_get(idx, "blocks"), k, b) {
        const char *tn = json_string_value(json_object_get(b, "name"));
        json_t *t = json_object_get(by_name, tn);
        if (!t) {
          t = json_pack("{s:O,s:O,s:O,s:O,s:[]}", "name", json_object_get(b, "name"), "kind",
                        json_object_get(b, "kind"), "dtype", json_object_get(b, "dtype"),
                        "shape", json_object_get(b, "shape"), "blocks");
          json_object_set(by_name, tn, t);
          json_array_append_new(tensors, t);
        } else if (!json_equal(json_object_get(t, "shape"), json_object_get(b, "shape")) ||
                   !json_equal(json_object_get(t, "dtype"), json_object_get(b, "dtype"))) {
          ptrt_error(ctx, "ranks disagree on the shape of '%s' while checkpointing; every "
                     "rank must run the same plan", tn);
          bad = true;
          break;
        }
        json_t *blocks = json_object_get(t, "blocks");
        bool dup = false;
        size_t j;
        json_t *o;
        json_array_foreach(blocks, j, o) dup |= box_eq(o, b);
        if (dup) continue; /* a replica on another pipeline stage */
        json_array_append_new(blocks, json_pack("{s:O,s:O,s:O,s:O,s:O}", "file",
                                                json_object_get(idx, "file"), "offset",
                                                json_object_get(b, "offset"), "bytes",
                                                json_object_get(b, "bytes"), "origin",
                                                json_object_get(b, "origin"), "dims",
                                                json_object_get(b, "dims")));
      }
    }
    json_decref(idx);
    free(path);
  }
  for (int32_t i = 0; i < n; i++) free(names[i]);
  free(names);
  json_decref(by_name);
  if (bad) {
    json_decref(files);
    json_decref(tensors);
    return NULL;
  }
  *files_out = files;
  return tensors;
}

/* Writes tmp/manifest.json and syncs it. */
static int write_manifest(ptc_ctx *ctx, const char *tmp, const ptrt_ckpt_write *w,
                          const ptrt_comm *comm, int64_t *bytes_out, int32_t *nfiles_out) {
  json_t *files = NULL;
  json_t *tensors = merge_indexes(ctx, tmp, &files);
  if (!tensors) return -1;
  /* the blocks must tile every tensor the model has */
  const ptc_module *g = w->global;
  int bad = 0;
  for (int32_t i = 0; i < g->nparams; i++) {
    bool found = transient_var(g->params[i].name);
    size_t k;
    json_t *t;
    json_array_foreach(tensors, k, t) found |= !strcmp(
        json_string_value(json_object_get(t, "name")), g->params[i].name);
    if (!found) {
      ptrt_error(ctx, "no rank wrote the variable '%s' into the checkpoint", g->params[i].name);
      bad++;
    }
  }
  size_t k;
  json_t *t;
  json_array_foreach(tensors, k, t) {
    ptrt_ckpt_tensor tt = {.name = json_string_value(json_object_get(t, "name"))};
    json_t *sh = json_object_get(t, "shape"), *bl = json_object_get(t, "blocks");
    tt.rank = (int32_t)json_array_size(sh);
    tt.dtype = (ptc_dtype)ptrt_st_dtype_from(json_string_value(json_object_get(t, "dtype")));
    for (int32_t d = 0; d < tt.rank; d++)
      tt.dims[d] = json_integer_value(json_array_get(sh, (size_t)d));
    ptrt_ckpt_block *b = ptc_xcalloc(json_array_size(bl) + 1, sizeof *b);
    size_t j;
    json_t *o;
    json_array_foreach(bl, j, o) {
      for (int32_t d = 0; d < tt.rank; d++) {
        b[j].origin[d] = json_integer_value(json_array_get(json_object_get(o, "origin"), (size_t)d));
        b[j].dims[d] = json_integer_value(json_array_get(json_object_get(o, "dims"), (size_t)d));
      }
    }
    tt.blocks = b;
    tt.nblocks = (int32_t)json_array_size(bl);
    if (check_tiling(ctx, tmp, &tt) != 0) bad++;
    free(b);
  }
  int64_t total = 0;
  json_array_foreach(files, k, t) total += json_integer_value(json_object_get(t, "bytes"));
  *bytes_out = total;
  *nfiles_out = (int32_t)json_array_size(files);
  json_t *tj = json_array();
  json_array_extend(tj, tensors);
  json_t *opt = optimizer_json(g);
  json_t *train = w->settings ? training_json(w->settings) : json_null();
  char fp[65];
  fingerprint(tensors, opt, json_is_null(train) ? NULL : train, fp);
  json_t *data = json_object();
  if (w->settings) {
    json_t *df = json_array();
    for (int32_t i = 0; i < w->settings->ndata; i++)
      json_array_append_new(df, json_string(w->settings->data_files[i]));
    json_object_set_new(data, "files", df);
    json_object_set_new(data, "next_batch", json_integer((json_int_t)w->step));
  }
  json_t *root = json_object();
  json_object_set_new(root, "format", json_string(PTRT_CKPT_FORMAT));
  json_object_set_new(root, "version", json_integer(PTRT_CKPT_VERSION));
  json_object_set_new(root, "step", json_integer((json_int_t)w->step));
  json_object_set_new(root, "model", json_string(w->model ? w->model : ""));
  json_object_set_new(root, "written_by", json_string(w->written_by ? w->written_by : ""));
  json_object_set_new(root, "written_on",
                      json_pack("{s:s,s:i}", "mesh", w->mesh ? w->mesh : "", "ranks",
                                comm ? comm->size : 1));
  json_object_set_new(root, "fingerprint", json_string(fp));
  json_object_set_new(root, "training", train);
  json_object_set_new(root, "optimizer", opt);
  json_object_set_new(root, "data", data);
  json_object_set_new(root, "rng", w->settings ? json_pack("{s:I}", "init_seed",
                                                           (json_int_t)w->settings->seed)
                                               : json_object());
  json_object_set_new(root, "checksum", json_string("sha256"));
  json_object_set_new(root, "files", files);
  json_object_set_new(root, "tensors", tj);
  json_decref(tensors);
  char *text = dump(root, JSON_INDENT(1));
  json_decref(root);
  if (bad) {
    free(text);
    return -1;
  }
  char *path = ptc_path_join(tmp, "manifest.json");
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  size_t tl = strlen(text);
  bool ok = fd >= 0 && write(fd, text, tl) == (ssize_t)tl && write(fd, "\n", 1) == 1 &&
            fsync(fd) == 0;
  if (fd >= 0 && close(fd) != 0) ok = false;
  if (!ok) ptrt_file_error(ctx, path, "cannot write the checkpoint's manifest: %s", strerror(errno));
  free(text);
  free(path);
  return ok ? 0 : -1;
}

/* The indexes have served; the manifest holds what they said. */
static void remove_indexes(const char *tmp) {
  int32_t n = 0;
  char **names = list_indexes(tmp, &n);
  for (int32_t i = 0; i < n; i++) {
    char *p = ptc_path_join(tmp, names[i]);
    unlink(p);
    free(p);
    free(names[i]);
  }
  free(names);
}

/* Rank 0: manifest, sync, rename into place, sync the parent. */
static int publish(ptc_ctx *ctx, const ptrt_ckpt_write *w, const ptrt_comm *comm,
                   const char *tmp, uint64_t sfx) {
  int64_t bytes = 0;
  int32_t nfiles = 0;
  if (write_manifest(ctx, tmp, w, comm, &bytes, &nfiles) != 0) return -1;
  remove_indexes(tmp);
  if (fsync_path(tmp) != 0) {
    ptrt_file_error(ctx, tmp, "cannot flush the checkpoint's directory: %s", strerror(errno));
    return -1;
  }
  fault f = fault_for(w->step, 0);
  crash_if(f, FAULT_BEFORE_RENAME);
  char name[48];
  snprintf(name, sizeof name, "step-%lld", (long long)w->step);
  char *final = ptc_path_join(w->dir, name), *old = NULL;
  struct stat st;
  if (stat(final, &st) == 0) { /* a checkpoint of an abandoned branch of the run */
    char oname[80];
    snprintf(oname, sizeof oname, ".old-step-%lld-%012llx", (long long)w->step,
             (unsigned long long)sfx);
    old = ptc_path_join(w->dir, oname);
    if (rename(final, old) != 0) {
      ptrt_file_error(ctx, final, "cannot move the earlier checkpoint of this step aside: %s",
                      strerror(errno));
      free(final);
      free(old);
      return -1;
    }
  }
  int rc = 0;
  if (rename(tmp, final) != 0 || fsync_path(w->dir) != 0) {
    ptrt_file_error(ctx, final, "cannot publish the checkpoint: %s", strerror(errno));
    rc = -1;
  }
  if (old) remove_tree(old);
  free(final);
  free(old);
  if (rc == 0) {
    crash_if(f, FAULT_AFTER_PUBLISH);
    stall_if(f);
  }
  return rc;
}

/* The temporary directory every rank of this write uses (heap). */
static char *tmp_name(const char *dir, int64_t step, uint64_t sfx) {
  char name[80];
  snprintf(name, sizeof name, ".tmp-step-%lld-%012llx", (long long)step,
           (unsigned long long)sfx);
  return ptc_path_join(dir, name);
}

/* The first half of a save (collective): the temporary name every rank
 * agrees on, the directories made.  -1 after reporting. */
static int save_begin(ptc_ctx *ctx, const ptrt_ckpt_write *w, const ptrt_comm *comm,
                      char **tmp, uint64_t *sfx) {
  int rank = comm_rank(comm);
  fault f = fault_for(w->step, rank);
  if (f == FAULT_BAD) {
    ptrt_error(ctx, "PTC_CKPT_FAULT='%s' is not a fault point: one of after-data, "
               "before-fsync, before-rename, after-publish, stall-after-publish, enospc, nan, "
               "optionally followed by @STEP", getenv("PTC_CKPT_FAULT"));
    return -1;
  }
  double s = rank == 0 ? (double)random_suffix() : 0;
  char what[96];
  snprintf(what, sizeof what, "naming the checkpoint of step %lld", (long long)w->step);
  if (agree(comm, &s, what) != 0) return -1;
  *sfx = (uint64_t)s;
  *tmp = tmp_name(w->dir, w->step, *sfx);
  if (make_dirs(w->dir) != 0 || (mkdir(*tmp, 0777) != 0 && errno != EEXIST)) {
    ptrt_file_error(ctx, *tmp, "cannot create the checkpoint's directory: %s",
                    strerror(errno));
    /* the others learn it at the agreement after their writes */
    return 1;
  }
  return 0;
}

/* The second half (collective): agreement on every rank's write, rank 0
 * publishes, agreement on that.  local_rc: this rank's write. */
static int save_end(ptc_ctx *ctx, const ptrt_ckpt_write *w, const ptrt_comm *comm,
                    const char *tmp, uint64_t sfx, int local_rc) {
  int rank = comm_rank(comm);
  char what[96];
  snprintf(what, sizeof what, "agreeing that every rank wrote the checkpoint of step %lld",
           (long long)w->step);
  double bad = local_rc != 0 ? 1 : 0;
  if (agree(comm, &bad, what) != 0) return -1;
  if (bad > 0) {
    if (rank == 0) {
      remove_tree(tmp);
      if (local_rc == 0)
        ptrt_error(ctx, "the checkpoint of step %lld failed on another rank (its message "
                   "says why); nothing was published", (long long)w->step);
    }
    if (local_rc != 0)
      ptrt_error(ctx, "the checkpoint of step %lld was not written; earlier checkpoints in "
                 "%s are untouched", (long long)w->step, w->dir);
    return -1;
  }
  double pub = 0;
  if (rank == 0 && publish(ctx, w, comm, tmp, sfx) != 0) {
    remove_tree(tmp);
    pub = 1;
  }
  snprintf(what, sizeof what, "publishing the checkpoint of step %lld", (long long)w->step);
  if (agree(comm, &pub, what) != 0) return -1;
  if (pub > 0) {
    if (rank != 0) return -1; /* rank 0 said why */
    ptrt_error(ctx, "the checkpoint of step %lld was not published; earlier checkpoints in "
               "%s are untouched", (long long)w->step, w->dir);
    return -1;
  }
  return 0;
}

int ptrt_ckpt_save(ptc_ctx *ctx, const ptrt_ckpt_write *w, const ptrt_comm *comm,
                   const ptrt_vars *v, const unsigned char *base) {
  char *tmp = NULL;
  uint64_t sfx = 0;
  int rc = save_begin(ctx, w, comm, &tmp, &sfx);
  if (rc < 0) return -1;
  int local = rc;
  if (local == 0) {
    werr err;
    local = write_shard(tmp, comm_rank(comm), v, base ? base : v->base, w->step, &err);
    if (local != 0) werr_report(ctx, &err);
  }
  rc = save_end(ctx, w, comm, tmp, sfx, local);
  free(tmp);
  return rc;
}

/* ---- finding and pruning ---------------------------------------------------- */

typedef struct found {
  int64_t *steps;
  int32_t n;
} found;

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

/* The complete checkpoints of dir, ascending.  -1: dir unreadable (errno). */
static int list_steps(const char *dir, found *out) {
  out->steps = NULL;
  out->n = 0;
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? 0 : -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    int64_t s = step_of(e->d_name);
    if (s < 0) continue;
    char *p = ptc_path_join(dir, e->d_name);
    bool ok = has_manifest(p);
    free(p);
    if (!ok) continue;
    out->steps = ptc_xrealloc(out->steps, (size_t)(out->n + 1) * sizeof *out->steps);
    out->steps[out->n++] = s;
  }
  closedir(d);
  if (out->n) qsort(out->steps, (size_t)out->n, sizeof *out->steps, cmp_i64);
  return 0;
}

static char *step_path(const char *dir, int64_t step) {
  char name[48];
  snprintf(name, sizeof name, "step-%lld", (long long)step);
  return ptc_path_join(dir, name);
}

char *ptrt_ckpt_latest(ptc_ctx *ctx, const char *dir, int64_t *step) {
  found f;
  *step = -1;
  if (list_steps(dir, &f) != 0) {
    ptrt_file_error(ctx, dir, "cannot read the checkpoint directory: %s", strerror(errno));
    return NULL;
  }
  char *p = NULL;
  if (f.n) {
    *step = f.steps[f.n - 1];
    p = step_path(dir, *step);
  }
  free(f.steps);
  return p;
}

char *ptrt_ckpt_resolve(ptc_ctx *ctx, const char *path) {
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
    ptrt_file_error(ctx, path, "%s: --resume takes a checkpoint (a step-N directory) or a "
                    "directory of them", stat(path, &st) != 0 ? strerror(errno)
                                                               : "not a directory");
    return NULL;
  }
  if (has_manifest(path)) return xstrdup(path);
  int64_t step;
  char *p = ptrt_ckpt_latest(ctx, path, &step);
  if (!p && step == -1 && ptc_ctx_error_count(ctx) == 0)
    ptrt_file_error(ctx, path, "holds no complete checkpoint (no step-N directory with a "
                    "manifest.json)");
  return p;
}

int ptrt_ckpt_prune(ptc_ctx *ctx, const char *dir, int32_t keep, int64_t below,
                    int64_t spare, bool stale) {
  found f;
  if (list_steps(dir, &f) != 0) return 0;
  int removed = 0;
  for (int32_t i = 0; i < f.n; i++) {
    bool old = keep > 0 && i < f.n - keep;
    if ((old || f.steps[i] < below) && f.steps[i] != spare) {
      char *p = step_path(dir, f.steps[i]);
      /* unpublish first: a crash half-way leaves no step-N without its data */
      char *m = ptc_path_join(p, "manifest.json");
      if (unlink(m) == 0 && remove_tree(p) == 0) removed++;
      free(m);
      free(p);
    }
  }
  free(f.steps);
  if (!stale) return removed;
  DIR *d = opendir(dir);
  if (!d) return removed;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, ".tmp-step-", 10) && strncmp(e->d_name, ".old-step-", 10)) continue;
    char *p = ptc_path_join(dir, e->d_name);
    if (remove_tree(p) == 0) removed++;
    free(p);
  }
  closedir(d);
  (void)ctx;
  return removed;
}

/* ---- reading ------------------------------------------------------------------ */

struct ptrt_ckpt {
  char *path;
  json_t *root;
  int64_t step;
  const char *fingerprint;
  ptrt_ckpt_file *files;
  int32_t nfiles;
  ptrt_ckpt_tensor *tensors;
  int32_t ntensors;
  ptrt_ckpt_block *blocks;
  int *fds; /* per file, opened on first read (-1) */
};

void ptrt_ckpt_close(ptrt_ckpt *ck) {
  if (!ck) return;
  for (int32_t i = 0; ck->fds && i < ck->nfiles; i++)
    if (ck->fds[i] >= 0) close(ck->fds[i]);
  free(ck->fds);
  free(ck->files);
  free(ck->tensors);
  free(ck->blocks);
  json_decref(ck->root);
  free(ck->path);
  free(ck);
}

const char *ptrt_ckpt_path(const ptrt_ckpt *ck) { return ck->path; }
int64_t ptrt_ckpt_step(const ptrt_ckpt *ck) { return ck->step; }
const char *ptrt_ckpt_fingerprint(const ptrt_ckpt *ck) { return ck->fingerprint; }
int32_t ptrt_ckpt_tensor_count(const ptrt_ckpt *ck) { return ck->ntensors; }
const ptrt_ckpt_tensor *ptrt_ckpt_tensor_at(const ptrt_ckpt *ck, int32_t i) {
  return &ck->tensors[i];
}
int32_t ptrt_ckpt_file_count(const ptrt_ckpt *ck) { return ck->nfiles; }
const ptrt_ckpt_file *ptrt_ckpt_file_at(const ptrt_ckpt *ck, int32_t i) { return &ck->files[i]; }
const void *ptrt_ckpt_manifest(const ptrt_ckpt *ck) { return ck->root; }

const ptrt_ckpt_tensor *ptrt_ckpt_find(const ptrt_ckpt *ck, const char *name) {
  for (int32_t i = 0; i < ck->ntensors; i++)
    if (!strcmp(ck->tensors[i].name, name)) return &ck->tensors[i];
  return NULL;
}

#define DAMAGED "the manifest is damaged or not from this version of ptrun"

/* A list of rank non-negative integers (at most PTC_MAX_RANK). */
static bool read_ints(json_t *a, int32_t rank, int64_t *out) {
  if (!json_is_array(a) || json_array_size(a) != (size_t)rank) return false;
  for (int32_t d = 0; d < rank; d++) {
    json_t *x = json_array_get(a, (size_t)d);
    if (!json_is_integer(x) || json_integer_value(x) < 0) return false;
    out[d] = json_integer_value(x);
  }
  return true;
}

static bool boxes_overlap(int32_t rank, const ptrt_ckpt_block *a, const ptrt_ckpt_block *b) {
  for (int32_t d = 0; d < rank; d++)
    if (a->origin[d] >= b->origin[d] + b->dims[d] || b->origin[d] >= a->origin[d] + a->dims[d])
      return false;
  return true;
}

/* The blocks of t lie inside it, do not overlap, and add up to it. */
static int check_tiling(ptc_ctx *ctx, const char *where, const ptrt_ckpt_tensor *t) {
  int64_t sum = 0;
  for (int32_t i = 0; i < t->nblocks; i++) {
    const ptrt_ckpt_block *b = &t->blocks[i];
    for (int32_t d = 0; d < t->rank; d++)
      if (b->origin[d] + b->dims[d] > t->dims[d]) {
        ptrt_file_error(ctx, where, "a block of '%s' reaches past its dimension %d; " DAMAGED,
                        t->name, d);
        return -1;
      }
    sum += volume(t->rank, b->dims);
  }
  /* pairwise only where that stays cheap; the sum catches a gap either way */
  for (int32_t i = 0; t->nblocks <= 1024 && i < t->nblocks; i++)
    for (int32_t j = i + 1; j < t->nblocks; j++)
      if (volume(t->rank, t->blocks[i].dims) && volume(t->rank, t->blocks[j].dims) &&
          boxes_overlap(t->rank, &t->blocks[i], &t->blocks[j])) {
        ptrt_file_error(ctx, where, "two blocks of '%s' overlap; " DAMAGED, t->name);
        return -1;
      }
  if (sum != volume(t->rank, t->dims)) {
    ptrt_file_error(ctx, where, "the blocks of '%s' hold %lld of its %lld elements; " DAMAGED,
                    t->name, (long long)sum, (long long)volume(t->rank, t->dims));
    return -1;
  }
  return 0;
}

static int parse_tensor(ptc_ctx *ctx, ptrt_ckpt *ck, const char *mpath, json_t *t,
                        ptrt_ckpt_tensor *out, int32_t *nb) {
  json_t *name = json_object_get(t, "name"), *kind = json_object_get(t, "kind"),
         *dt = json_object_get(t, "dtype"), *sh = json_object_get(t, "shape"),
         *bl = json_object_get(t, "blocks");
  if (!json_is_string(name) || !json_is_string(kind) || !json_is_string(dt) ||
      !json_is_array(sh) || !json_is_array(bl) || json_array_size(sh) > PTC_MAX_RANK) {
    ptrt_file_error(ctx, mpath, "a tensor entry lacks name, kind, dtype, shape or blocks; "
                    DAMAGED);
    return -1;
  }
  out->name = json_string_value(name);
  out->trainable = !strcmp(json_string_value(kind), "parameter");
  int d = ptrt_st_dtype_from(json_string_value(dt));
  out->rank = (int32_t)json_array_size(sh);
  if (d < 0 || !read_ints(sh, out->rank, out->dims) ||
      (!out->trainable && strcmp(json_string_value(kind), "state"))) {
    ptrt_file_error(ctx, mpath, "tensor '%s': bad dtype, kind or shape; " DAMAGED, out->name);
    return -1;
  }
  out->dtype = (ptc_dtype)d;
  int64_t numel = 1;
  for (int32_t i = 0; i < out->rank; i++)
    if (!ptc_mul_ovf(numel, out->dims[i], &numel) || numel > PTC_MAX_ELEMENTS) {
      ptrt_file_error(ctx, mpath, "tensor '%s' is too large; " DAMAGED, out->name);
      return -1;
    }
  size_t k;
  json_t *b;
  json_array_foreach(bl, k, b) {
    ptrt_ckpt_block *x = &ck->blocks[*nb];
    json_t *file = json_object_get(b, "file"), *off = json_object_get(b, "offset"),
           *bytes = json_object_get(b, "bytes");
    x->file = -1;
    for (int32_t i = 0; json_is_string(file) && i < ck->nfiles; i++)
      if (!strcmp(ck->files[i].name, json_string_value(file))) x->file = i;
    if (x->file < 0 || !json_is_integer(off) || !json_is_integer(bytes) ||
        !read_ints(json_object_get(b, "origin"), out->rank, x->origin) ||
        !read_ints(json_object_get(b, "dims"), out->rank, x->dims)) {
      ptrt_file_error(ctx, mpath, "tensor '%s': block %zu names no listed file or lacks "
                      "offset, bytes, origin or dims; " DAMAGED, out->name, k);
      return -1;
    }
    x->offset = json_integer_value(off);
    x->bytes = json_integer_value(bytes);
    if (x->offset < 0 || x->bytes != volume(out->rank, x->dims) * ptc_dtype_size(out->dtype) ||
        x->offset + x->bytes > ck->files[x->file].bytes) {
      ptrt_file_error(ctx, mpath, "tensor '%s': block %zu's byte range does not fit its "
                      "dims or the file '%s'; " DAMAGED, out->name, k, ck->files[x->file].name);
      return -1;
    }
    (*nb)++;
  }
  return 0;
}

static bool plain_name(const char *s) {
  if (!*s || !strcmp(s, ".") || !strcmp(s, "..")) return false;
  for (; *s; s++)
    if (*s == '/' || (unsigned char)*s < 0x20) return false;
  return true;
}

ptrt_ckpt *ptrt_ckpt_open(ptc_ctx *ctx, const char *path) {
  char *mpath = ptc_path_join(path, "manifest.json");
  ptrt_ckpt *ck = ptc_xcalloc(1, sizeof *ck);
  ck->path = xstrdup(path);
  json_error_t je;
  ck->root = json_load_file(mpath, JSON_REJECT_DUPLICATES, &je);
  if (!json_is_object(ck->root)) {
    struct stat st;
    if (stat(mpath, &st) != 0)
      ptrt_file_error(ctx, path, "not a checkpoint: it has no manifest.json (%s); a "
                      "checkpoint is a step-N directory that ptrun --ckpt-dir writes",
                      strerror(errno));
    else
      ptrt_file_error(ctx, mpath, "not readable JSON (line %d: %s); " DAMAGED, je.line,
                      je.text);
    goto fail;
  }
  json_t *r = ck->root;
  json_t *fmt = json_object_get(r, "format"), *ver = json_object_get(r, "version"),
         *step = json_object_get(r, "step"), *files = json_object_get(r, "files"),
         *tensors = json_object_get(r, "tensors"), *fp = json_object_get(r, "fingerprint");
  if (!json_is_string(fmt) || strcmp(json_string_value(fmt), PTRT_CKPT_FORMAT)) {
    ptrt_file_error(ctx, mpath, "the format is not '%s': not a checkpoint", PTRT_CKPT_FORMAT);
    goto fail;
  }
  if (!json_is_integer(ver) || json_integer_value(ver) != PTRT_CKPT_VERSION) {
    ptrt_file_error(ctx, mpath, "checkpoint format version %lld; this ptrun reads version %d",
                    json_is_integer(ver) ? (long long)json_integer_value(ver) : -1LL,
                    PTRT_CKPT_VERSION);
    goto fail;
  }
  if (!json_is_integer(step) || json_integer_value(step) < 0 || !json_is_array(files) ||
      !json_is_array(tensors) || !json_is_string(fp)) {
    ptrt_file_error(ctx, mpath, "step, fingerprint, files or tensors is missing; " DAMAGED);
    goto fail;
  }
  ck->step = json_integer_value(step);
  ck->fingerprint = json_string_value(fp);
  ck->nfiles = (int32_t)json_array_size(files);
  ck->files = ptc_xcalloc((size_t)ck->nfiles + 1, sizeof *ck->files);
  ck->fds = ptc_xcalloc((size_t)ck->nfiles + 1, sizeof *ck->fds);
  for (int32_t i = 0; i < ck->nfiles; i++) {
    json_t *f = json_array_get(files, (size_t)i);
    json_t *n = json_object_get(f, "name"), *b = json_object_get(f, "bytes"),
           *h = json_object_get(f, "sha256");
    ck->fds[i] = -1;
    if (!json_is_string(n) || !plain_name(json_string_value(n)) || !json_is_integer(b) ||
        json_integer_value(b) < 0 || !json_is_string(h) || strlen(json_string_value(h)) != 64) {
      ptrt_file_error(ctx, mpath, "file entry %d lacks a plain name, bytes or sha256; " DAMAGED,
                      i);
      goto fail;
    }
    ck->files[i] = (ptrt_ckpt_file){json_string_value(n), json_integer_value(b),
                                    json_string_value(h)};
  }
  size_t nblocks = 0, k;
  json_t *t;
  json_array_foreach(tensors, k, t) nblocks += json_array_size(json_object_get(t, "blocks"));
  ck->ntensors = (int32_t)json_array_size(tensors);
  ck->tensors = ptc_xcalloc((size_t)ck->ntensors + 1, sizeof *ck->tensors);
  ck->blocks = ptc_xcalloc(nblocks + 1, sizeof *ck->blocks);
  int32_t nb = 0;
  json_array_foreach(tensors, k, t) {
    ptrt_ckpt_tensor *x = &ck->tensors[k];
    int32_t first = nb;
    if (parse_tensor(ctx, ck, mpath, t, x, &nb) != 0) goto fail;
    x->blocks = ck->blocks + first;
    x->nblocks = nb - first;
    if (check_tiling(ctx, mpath, x) != 0) goto fail;
    for (size_t j = 0; j < k; j++)
      if (!strcmp(ck->tensors[j].name, x->name)) {
        ptrt_file_error(ctx, mpath, "tensor '%s' is listed twice; " DAMAGED, x->name);
        goto fail;
      }
  }
  free(mpath);
  return ck;
fail:
  free(mpath);
  ptrt_ckpt_close(ck);
  return NULL;
}

/* Checks one shard file's size and SHA-256; reports. */
static int verify_file(ptc_ctx *ctx, const ptrt_ckpt *ck, int32_t i) {
  const ptrt_ckpt_file *f = &ck->files[i];
  char *path = ptc_path_join(ck->path, f->name);
  int rc = -1;
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    ptrt_file_error(ctx, path, "cannot open the checkpoint's shard: %s", strerror(errno));
    goto out;
  }
  if ((int64_t)st.st_size != f->bytes) {
    ptrt_file_error(ctx, path, "%lld bytes, but the manifest records %lld: the shard is %s",
                    (long long)st.st_size, (long long)f->bytes,
                    (int64_t)st.st_size < f->bytes ? "truncated" : "longer than written");
    goto out;
  }
  EVP_MD_CTX *md = EVP_MD_CTX_new();
  PTC_ASSERT(md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1);
  enum { CHUNK = 4 << 20 };
  unsigned char *buf = ptc_xmalloc(CHUNK);
  for (;;) {
    ssize_t n = read(fd, buf, CHUNK);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ptrt_file_error(ctx, path, "cannot read: %s", strerror(errno));
      free(buf);
      EVP_MD_CTX_free(md);
      goto out;
    }
    if (n == 0) break;
    EVP_DigestUpdate(md, buf, (size_t)n);
  }
  free(buf);
  unsigned char d[32];
  unsigned int dn = 0;
  EVP_DigestFinal_ex(md, d, &dn);
  EVP_MD_CTX_free(md);
  char hex[65];
  sha256_hex(d, hex);
  if (strcmp(hex, f->sha256)) {
    ptrt_file_error(ctx, path, "SHA-256 %.12s... does not match %.12s... in the manifest: the "
                    "shard is corrupted or was changed after it was written", hex, f->sha256);
    goto out;
  }
  rc = 0;
out:
  if (fd >= 0) close(fd);
  free(path);
  return rc;
}

int ptrt_ckpt_verify(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptrt_comm *comm) {
  int rank = comm_rank(comm), size = comm && comm->world_max ? comm->size : 1;
  if (!comm || !comm->world_max) rank = 0;
  double bad = 0;
  for (int32_t i = 0; i < ck->nfiles; i++)
    if (i % size == rank && verify_file(ctx, ck, i) != 0) bad = 1;
  bool mine = bad > 0;
  if (agree(comm, &bad, "agreeing that the checkpoint's checksums hold") != 0) return -1;
  if (bad > 0) {
    if (!mine && rank == 0)
      ptrt_error(ctx, "a shard of %s failed its check on another rank (its message says "
                 "which)", ck->path);
    return -1;
  }
  return 0;
}

static int open_shard(ptc_ctx *ctx, const ptrt_ckpt *ck, int32_t i) {
  if (ck->fds[i] >= 0) return ck->fds[i];
  char *path = ptc_path_join(ck->path, ck->files[i].name);
  int fd = open(path, O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || (int64_t)st.st_size != ck->files[i].bytes) {
    ptrt_file_error(ctx, path, fd < 0 ? "cannot open the checkpoint's shard: %s"
                               : "the shard's size is not the manifest's%s",
                    fd < 0 ? strerror(errno) : "");
    if (fd >= 0) close(fd);
    free(path);
    return -1;
  }
  free(path);
  ck->fds[i] = fd;
  return fd;
}

static int read_at(ptc_ctx *ctx, const ptrt_ckpt *ck, int32_t file, int fd, void *dst,
                   int64_t n, int64_t off) {
  unsigned char *p = dst;
  while (n > 0) {
    size_t chunk = n > (1 << 30) ? (size_t)1 << 30 : (size_t)n;
    ssize_t k = pread(fd, p, chunk, (off_t)off);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      ptrt_file_error(ctx, ck->files[file].name, "cannot read the checkpoint's shard in %s: %s",
                      ck->path, k < 0 ? strerror(errno) : "unexpected end of file");
      return -1;
    }
    p += k;
    n -= k;
    off += k;
  }
  return 0;
}

/* Copies the intersection [lo, hi) of block b and the box (origin, dims)
 * into out: runs of consecutive elements in both, read straight into place
 * or, when there are many short runs close together, through one read of
 * the span. */
static int copy_isect(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptrt_ckpt_tensor *t,
                      const ptrt_ckpt_block *b, const int64_t *lo, const int64_t *hi,
                      const int64_t *origin, const int64_t *dims, unsigned char *out) {
  int fd = open_shard(ctx, ck, b->file);
  if (fd < 0) return -1;
  int32_t n = t->rank;
  int64_t es = ptc_dtype_size(t->dtype);
  if (n == 0) return read_at(ctx, ck, b->file, fd, out, es, b->offset);
  int64_t sst[PTC_MAX_RANK], dst[PTC_MAX_RANK], ext[PTC_MAX_RANK];
  int64_t s = 1, q = 1;
  for (int32_t d = n - 1; d >= 0; d--) {
    sst[d] = s;
    dst[d] = q;
    s *= b->dims[d];
    q *= dims[d];
    ext[d] = hi[d] - lo[d];
  }
  /* dims c+1.. are whole in both the block and the box: one run spans them */
  int32_t c = n - 1;
  int64_t run = ext[n - 1];
  while (c > 0 && ext[c] == b->dims[c] && ext[c] == dims[c]) {
    c--;
    run *= ext[c];
  }
  int64_t runs = 1;
  for (int32_t d = 0; d < c; d++) runs *= ext[d];
  int64_t first = 0, last = 0;
  for (int32_t d = 0; d < n; d++) {
    first += (lo[d] - b->origin[d]) * sst[d];
    last += (d < c ? hi[d] - 1 - b->origin[d] : lo[d] - b->origin[d]) * sst[d];
  }
  int64_t span = (last + run - first) * es;
  unsigned char *scratch = NULL;
  if (runs > 16 && span <= (64 << 20)) {
    scratch = ptc_xmalloc((size_t)span + 1);
    if (read_at(ctx, ck, b->file, fd, scratch, span, b->offset + first * es) != 0) {
      free(scratch);
      return -1;
    }
  }
  int64_t idx[PTC_MAX_RANK] = {0};
  int rc = 0;
  for (int64_t r = 0; r < runs && rc == 0; r++) {
    int64_t so = 0, dof = 0;
    for (int32_t d = 0; d < n; d++) {
      int64_t pos = lo[d] + (d < c ? idx[d] : 0);
      so += (pos - b->origin[d]) * sst[d];
      dof += (pos - origin[d]) * dst[d];
    }
    if (scratch)
      memcpy(out + dof * es, scratch + (so - first) * es, (size_t)(run * es));
    else
      rc = read_at(ctx, ck, b->file, fd, out + dof * es, run * es, b->offset + so * es);
    for (int32_t d = c - 1; d >= 0; d--) { /* the next run: odometer over dims < c */
      if (++idx[d] < ext[d]) break;
      idx[d] = 0;
    }
  }
  free(scratch);
  return rc;
}

int ptrt_ckpt_read_box(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptrt_ckpt_tensor *t,
                       const int64_t *origin, const int64_t *dims, void *out) {
  int64_t want = volume(t->rank, dims), got = 0;
  for (int32_t i = 0; i < t->nblocks; i++) {
    const ptrt_ckpt_block *b = &t->blocks[i];
    int64_t lo[PTC_MAX_RANK], hi[PTC_MAX_RANK], v = 1;
    for (int32_t d = 0; d < t->rank; d++) {
      lo[d] = origin[d] > b->origin[d] ? origin[d] : b->origin[d];
      int64_t e1 = origin[d] + dims[d], e2 = b->origin[d] + b->dims[d];
      hi[d] = e1 < e2 ? e1 : e2;
      v *= hi[d] > lo[d] ? hi[d] - lo[d] : 0;
    }
    if (v == 0) continue;
    if (copy_isect(ctx, ck, t, b, lo, hi, origin, dims, out) != 0) return -1;
    got += v;
  }
  if (got != want) {
    ptrt_file_error(ctx, ck->path, "the blocks of '%s' hold %lld of the %lld elements asked "
                    "for; " DAMAGED, t->name, (long long)got, (long long)want);
    return -1;
  }
  return 0;
}

int ptrt_ckpt_load_vars(ptc_ctx *ctx, const ptrt_ckpt *ck, ptrt_vars *v) {
  const ptc_module *m = v->mod;
  int bad = 0;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!ptrt_vars_holds(v, i) || transient_var(p->name)) continue; /* see transient_var */
    int64_t gdims[PTC_MAX_RANK], origin[PTC_MAX_RANK];
    ptrt_block_origin(&v->mesh, v->coord, &p->type, &p->shard, gdims, origin);
    const ptrt_ckpt_tensor *t = ptrt_ckpt_find(ck, p->name);
    if (!t) {
      ptrt_file_error(ctx, ck->path, "has no tensor for the %s '%s'",
                      p->trainable ? "parameter" : "state variable", p->name);
      bad++;
      continue;
    }
    bool same = t->rank == p->type.rank && t->dtype == p->type.dtype;
    for (int32_t d = 0; same && d < t->rank; d++) same = t->dims[d] == gdims[d];
    if (!same) {
      char a[128], b[128];
      shape_text(a, sizeof a, t->dtype, t->rank, t->dims);
      shape_text(b, sizeof b, p->type.dtype, p->type.rank, gdims);
      ptrt_file_error(ctx, ck->path, "tensor '%s' is %s, but the model's is %s", p->name, a, b);
      bad++;
      continue;
    }
    if (ptrt_ckpt_read_box(ctx, ck, t, origin, p->type.dims, ptrt_vars_data(v, i)) != 0)
      return -1;
  }
  return bad ? -1 : 0;
}

/* ---- comparing ---------------------------------------------------------------- */

static void diff_line(ptc_buf *b, int *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void diff_line(ptc_buf *b, int *n, const char *fmt, ...) {
  (*n)++;
  if (*n > 40) return; /* the count says the rest */
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  ptc_buf_printf(b, "\n  %s", line);
}

static void value_text(char *out, size_t cap, const json_t *v) {
  if (!v) snprintf(out, cap, "(none)");
  else if (json_is_integer(v)) snprintf(out, cap, "%lld", (long long)json_integer_value(v));
  else if (json_is_number(v)) snprintf(out, cap, "%.9g", json_number_value(v));
  else if (json_is_string(v)) snprintf(out, cap, "%s", json_string_value(v));
  else snprintf(out, cap, "?");
}

int ptrt_ckpt_check(ptc_ctx *ctx, const ptrt_ckpt *ck, const ptc_module *global,
                    const ptrt_ckpt_settings *s) {
  /* the same fingerprint: nothing to list */
  json_t *ct0 = json_object_get(ck->root, "training");
  json_t *mt = model_tensors_json(global), *mo = optimizer_json(global);
  json_t *tr = s && json_is_object(ct0) ? training_json(s) : NULL;
  char fp[65];
  fingerprint(mt, mo, tr, fp);
  json_decref(mt);
  json_decref(mo);
  json_decref(tr);
  if (!strcmp(fp, ck->fingerprint)) return 0;
  ptc_buf b;
  ptc_buf_init(&b);
  int n = 0;
  /* the variables */
  for (int32_t i = 0; i < global->nparams; i++) {
    const ptc_param *p = &global->params[i];
    if (transient_var(p->name)) continue;
    const ptrt_ckpt_tensor *t = ptrt_ckpt_find(ck, p->name);
    char a[128], c[128];
    shape_text(c, sizeof c, p->type.dtype, p->type.rank, p->type.dims);
    if (!t) {
      diff_line(&b, &n, "%s '%s' %s: not in the checkpoint",
                p->trainable ? "parameter" : "state", p->name, c);
      continue;
    }
    shape_text(a, sizeof a, t->dtype, t->rank, t->dims);
    if (strcmp(a, c)) diff_line(&b, &n, "'%s': %s in the checkpoint, %s now", p->name, a, c);
    else if (t->trainable != p->trainable)
      diff_line(&b, &n, "'%s': a %s in the checkpoint, a %s now", p->name,
                t->trainable ? "parameter" : "state variable",
                p->trainable ? "parameter" : "state variable");
  }
  for (int32_t i = 0; i < ck->ntensors; i++)
    if (ptc_module_find_param(global, ck->tensors[i].name) < 0)
      diff_line(&b, &n, "'%s': in the checkpoint, not in the model", ck->tensors[i].name);
  /* the optimizer */
  json_t *opt = optimizer_json(global), *copt = json_object_get(ck->root, "optimizer");
  char x[256], y[256];
  value_text(x, sizeof x, json_object_get(copt, "clip"));
  value_text(y, sizeof y, json_object_get(opt, "clip"));
  if (!json_equal(json_object_get(copt, "clip"), json_object_get(opt, "clip")))
    diff_line(&b, &n, "gradient clipping (ptc --clip): %s in the checkpoint, %s now", x, y);
  json_t *cu = json_object_get(copt, "updates"), *nu = json_object_get(opt, "updates");
  const char *key;
  json_t *val;
  json_object_foreach(nu, key, val) {
    json_t *old = json_object_get(cu, key);
    if (old && !json_equal(old, val))
      diff_line(&b, &n, "update of '%s': %s in the checkpoint, %s now", key,
                json_string_value(old), json_string_value(val));
  }
  json_decref(opt);
  /* the training settings */
  json_t *ct = json_object_get(ck->root, "training");
  if (s && json_is_object(ct)) {
    json_t *nt = training_json(s);
    static const char *const what[][2] = {
        {"lr", "--lr"}, {"min_lr", "--min-lr"}, {"warmup", "--warmup"},
        {"decay_steps", "--decay-steps"}, {"batch", "the batch (ptc --batch)"},
        {"seq", "the sequence length (ptc --seq)"}, {"data_tokens", "tokens of --data"},
    };
    for (int i = 0; i < PTC_ARRAY_LEN(what); i++) {
      json_t *o = json_object_get(ct, what[i][0]), *w = json_object_get(nt, what[i][0]);
      bool eq = o && json_is_number(o) && json_number_value(o) == json_number_value(w);
      if (eq) continue;
      value_text(x, sizeof x, o);
      value_text(y, sizeof y, w);
      diff_line(&b, &n, "%s: %s in the checkpoint, %s now", what[i][1], x, y);
    }
    json_decref(nt);
  }
  if (n) {
    ptrt_error(ctx, "%s was written by a run with other training settings; %d difference%s:%s%s"
               "\nresume with the settings it was written with (--decay-steps and --warmup "
               "default to values derived from --steps), or start a new run in another "
               "--ckpt-dir", ck->path, n, n == 1 ? "" : "s", b.data,
               n > 40 ? "\n  ..." : "");
  }
  ptc_buf_fini(&b);
  return n ? -1 : 0;
}

/* ---- the session ---------------------------------------------------------------- */

typedef struct async_job {
  pthread_t thread;
  bool running;        /* a thread was started and not joined */
  atomic_int done;     /* the thread finished */
  int rc;              /* its result */
  werr err;            /* its message */
  char *tmp;           /* the temporary directory */
  uint64_t sfx;
  ptrt_ckpt_write w;   /* dir borrowed from the session */
  int rank;
  const ptrt_vars *v;
  const unsigned char *snapshot;
  double t0;
} async_job;

struct ptrt_ckpt_session {
  ptc_ctx *ctx;
  ptrt_ckpt_opts o;
  const ptrt_comm *comm;
  ptrt_vars *v;
  const ptc_module *global;
  char *model, *written_by;
  ptrt_ckpt_settings set;
  char mesh[128];
  char *resumed, *last;
  int64_t last_durable; /* the newest durable checkpoint's step (0: none) */
  /* --on-nan */
  unsigned char *backup;
  int64_t nan_run, nan_first;
  bool nan_stop;
  /* --ckpt-async */
  unsigned char *snapshot;
  async_job job;
  /* what the training loop spent on checkpoints */
  int32_t written;
  double waited; /* seconds inside boundaries that wrote or published */
};

static void say(const ptrt_ckpt_session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(const ptrt_ckpt_session *s, const char *fmt, ...) {
  if (!s->o.out) return;
  va_list ap;
  va_start(ap, fmt);
  fputs("ptrun: ", s->o.out);
  vfprintf(s->o.out, fmt, ap);
  fputc('\n', s->o.out);
  fflush(s->o.out);
  va_end(ap);
}

ptrt_ckpt_session *ptrt_ckpt_session_create(ptc_ctx *ctx, const ptrt_ckpt_opts *o,
                                            const ptrt_comm *comm, ptrt_vars *v,
                                            const ptc_module *global, const char *model,
                                            const char *written_by,
                                            const ptrt_ckpt_settings *set) {
  ptrt_ckpt_session *s = ptc_xcalloc(1, sizeof *s);
  s->ctx = ctx;
  s->o = *o;
  s->comm = comm;
  s->v = v;
  s->global = global;
  s->model = xstrdup(model ? model : "");
  s->written_by = xstrdup(written_by ? written_by : "");
  s->set = *set;
  ptc_buf mb;
  ptc_buf_init(&mb);
  ptc_mesh_print(&mb, &v->mesh);
  snprintf(s->mesh, sizeof s->mesh, "%s", v->mesh.naxes ? mb.data : "one device");
  ptc_buf_fini(&mb);
  /* host copies of the variables: the async writer's, and the one a
   * non-finite step is undone from */
  if ((o->async && !(s->snapshot = ptrt_alloc(v->bytes))) ||
      (o->on_nan != PTRT_ON_NAN_FAIL && !(s->backup = ptrt_alloc(v->bytes)))) {
    ptrt_error(ctx, "cannot allocate %lld bytes for a copy of the variables (%s)",
               (long long)v->bytes, o->on_nan != PTRT_ON_NAN_FAIL ? "--on-nan" : "--ckpt-async");
    ptrt_ckpt_session_destroy(s);
    return NULL;
  }
  /* what interrupted writers left behind */
  if (comm_rank(comm) == 0) {
    const char *dirs[2] = {o->dir, o->durable};
    for (int i = 0; i < 2; i++) {
      if (!dirs[i]) continue;
      int k = ptrt_ckpt_prune(ctx, dirs[i], 0, 0, -1, true);
      if (k) say(s, "removed %d incomplete checkpoint%s that an interrupted run left in %s", k,
                 k == 1 ? "" : "s", dirs[i]);
    }
  }
  if (o->durable) {
    found f;
    if (list_steps(o->durable, &f) == 0 && f.n) s->last_durable = f.steps[f.n - 1];
    free(f.steps);
  }
  return s;
}

static void join_job(ptrt_ckpt_session *s) {
  if (!s->job.running) return;
  pthread_join(s->job.thread, NULL);
  s->job.running = false;
}

void ptrt_ckpt_session_destroy(ptrt_ckpt_session *s) {
  if (!s) return;
  join_job(s);
  free(s->job.tmp);
  ptrt_free(s->backup);
  ptrt_free(s->snapshot);
  free(s->model);
  free(s->written_by);
  free(s->resumed);
  free(s->last);
  free(s);
}

const char *ptrt_ckpt_session_last(const ptrt_ckpt_session *s) { return s->last; }

int ptrt_ckpt_session_resume(ptrt_ckpt_session *s, int64_t *first_step, const char **from) {
  *first_step = 1;
  *from = NULL;
  if (!s->o.resume) return 0;
  char *path = NULL;
  if (*s->o.resume) {
    path = ptrt_ckpt_resolve(s->ctx, s->o.resume);
    if (!path) return -1;
  } else {
    int64_t best = -1;
    const char *dirs[2] = {s->o.dir, s->o.durable};
    for (int i = 0; i < 2; i++) {
      if (!dirs[i]) continue;
      int64_t st;
      char *p = ptrt_ckpt_latest(s->ctx, dirs[i], &st);
      if (!p && st == -1 && ptc_ctx_error_count(s->ctx)) {
        free(path);
        return -1;
      }
      if (p && st > best) {
        free(path);
        path = p;
        best = st;
      } else {
        free(p);
      }
    }
    if (!path) {
      say(s, "no checkpoint in %s%s%s: starting at step 1", s->o.dir,
          s->o.durable ? " or " : "", s->o.durable ? s->o.durable : "");
      return 0;
    }
  }
  ptrt_ckpt *ck = ptrt_ckpt_open(s->ctx, path);
  int rc = ck ? 0 : -1;
  if (rc == 0) rc = ptrt_ckpt_verify(s->ctx, ck, s->comm);
  if (rc == 0) rc = ptrt_ckpt_check(s->ctx, ck, s->global, &s->set);
  if (rc == 0) rc = ptrt_ckpt_load_vars(s->ctx, ck, s->v);
  if (rc == 0) {
    *first_step = ptrt_ckpt_step(ck) + 1;
    s->resumed = path;
    *from = path;
    path = NULL;
  }
  ptrt_ckpt_close(ck);
  free(path);
  return rc;
}

void ptrt_ckpt_session_step_begin(ptrt_ckpt_session *s, int64_t step) {
  if (s->backup) memcpy(s->backup, s->v->base, (size_t)s->v->bytes);
}

int ptrt_ckpt_session_step_end(ptrt_ckpt_session *s, int64_t step, const float *results,
                               int32_t n) {
  bool finite = fault_for(step, comm_rank(s->comm)) != FAULT_NAN;
  for (int32_t i = 0; i < n; i++) finite &= isfinite(results[i]) != 0;
  if (finite || s->o.on_nan == PTRT_ON_NAN_FAIL) {
    if (finite) s->nan_run = 0;
    return 0;
  }
  memcpy(s->v->base, s->backup, (size_t)s->v->bytes);
  if (s->nan_run++ == 0) s->nan_first = step;
  if (s->o.on_nan == PTRT_ON_NAN_STOP && s->nan_run >= s->o.nan_patience) {
    s->nan_stop = true;
    if (!s->o.dir) {
      ptrt_error(s->ctx, "steps %lld to %lld: %lld non-finite steps in a row (--on-nan stop "
                 "--nan-patience %lld), each undone; stopping (no --ckpt-dir: nothing saved)",
                 (long long)s->nan_first, (long long)step, (long long)s->nan_run,
                 (long long)s->o.nan_patience);
      return -1;
    }
  }
  return 1;
}

static int finish_job(ptrt_ckpt_session *s);

/* The second half of an asynchronous write, once every rank's thread is
 * done (or right away when `wait`).  1 still running, 0 published, -1. */
static int poll_job(ptrt_ckpt_session *s, bool wait) {
  if (!s->job.tmp) return 0;
  if (wait) {
    join_job(s);
  } else {
    double busy = atomic_load(&s->job.done) ? 0 : 1;
    if (agree(s->comm, &busy, "asking whether every rank finished writing its checkpoint") != 0)
      return -1;
    if (busy > 0) return 1;
    join_job(s);
  }
  return finish_job(s);
}

static const char *dir_of(const ptrt_ckpt_session *s, bool durable) {
  return durable ? s->o.durable : s->o.dir;
}

static void after_publish(ptrt_ckpt_session *s, const ptrt_ckpt_write *w, double t0,
                          bool async) {
  free(s->last);
  s->last = step_path(w->dir, w->step);
  bool durable = s->o.durable && !strcmp(w->dir, s->o.durable);
  if (durable) s->last_durable = w->step;
  say(s, "checkpoint %s written in %.0f ms%s", s->last, 1e3 * (ptrt_now() - t0),
      async ? " (in the background)" : "");
  s->written++;
  if (comm_rank(s->comm) != 0) return;
  /* the local tier keeps --ckpt-keep and nothing older than the durable one */
  int64_t below = s->o.durable ? s->last_durable : 0;
  ptrt_ckpt_prune(s->ctx, s->o.dir, s->o.keep, below, durable ? -1 : w->step, false);
}

static int finish_job(ptrt_ckpt_session *s) {
  async_job *j = &s->job;
  if (j->rc < 0) werr_report(s->ctx, &j->err);
  int rc = save_end(s->ctx, &j->w, s->comm, j->tmp, j->sfx, j->rc);
  if (rc == 0) after_publish(s, &j->w, j->t0, true);
  free(j->tmp);
  j->tmp = NULL;
  return rc;
}

static void *job_main(void *arg) {
  async_job *j = arg;
  j->rc = write_shard(j->tmp, j->rank, j->v, j->snapshot, j->w.step, &j->err);
  atomic_store(&j->done, 1);
  return NULL;
}

/* Writes the checkpoint of `step` to the local or durable tier. */
static int write_ckpt(ptrt_ckpt_session *s, int64_t step, bool durable, bool async) {
  ptrt_ckpt_write w = {.dir = dir_of(s, durable), .step = step, .global = s->global,
                       .model = s->model, .settings = &s->set, .written_by = s->written_by,
                       .mesh = s->mesh};
  double t0 = ptrt_now();
  if (!async) {
    if (ptrt_ckpt_save(s->ctx, &w, s->comm, s->v, NULL) != 0) return -1;
    after_publish(s, &w, t0, false);
    return 0;
  }
  async_job *j = &s->job;
  char *tmp = NULL;
  uint64_t sfx = 0;
  int rc = save_begin(s->ctx, &w, s->comm, &tmp, &sfx);
  if (rc < 0) return -1;
  memcpy(s->snapshot, s->v->base, (size_t)s->v->bytes);
  j->w = w;
  j->tmp = tmp;
  j->sfx = sfx;
  j->rank = comm_rank(s->comm);
  j->v = s->v;
  j->snapshot = s->snapshot;
  j->t0 = t0;
  j->rc = rc; /* 1: this rank could not make the directory (reported) */
  werr_set(&j->err, tmp, "cannot create the checkpoint's directory");
  atomic_store(&j->done, rc != 0);
  if (rc == 0) {
    if (pthread_create(&j->thread, NULL, job_main, j) == 0) j->running = true;
    else job_main(j); /* no thread to be had: write it now */
  }
  return 0;
}

static int boundary(ptrt_ckpt_session *s, int64_t step, int64_t last);

int ptrt_ckpt_session_boundary(ptrt_ckpt_session *s, int64_t step, int64_t last) {
  double t0 = ptrt_now();
  int32_t before = s->written;
  bool pending = s->job.tmp != NULL;
  int rc = boundary(s, step, last);
  if (s->written != before || pending || s->job.tmp) s->waited += ptrt_now() - t0;
  return rc;
}

static int boundary(ptrt_ckpt_session *s, int64_t step, int64_t last) {
  const ptrt_ckpt_opts *o = &s->o;
  if (s->job.tmp && poll_job(s, false) < 0) return -1;
  double sig = o->stop_signal && *o->stop_signal ? 1 : 0;
  if (o->dir && agree(s->comm, &sig, "agreeing whether to stop (SIGTERM or SIGUSR1)") != 0)
    return -1;
  bool stop = sig > 0, nan = s->nan_stop;
  bool due = o->dir && o->every > 0 && step % o->every == 0;
  bool durable = o->durable && o->durable_every > 0 && step % o->durable_every == 0;
  bool end = step == last || stop || nan;
  if (!o->dir || !(due || durable || end)) return nan ? 2 : 0;
  if (end && o->durable) durable = true;
  bool async = o->async && !end;
  if (s->job.tmp && poll_job(s, true) < 0) return -1;
  if (write_ckpt(s, step, durable, async) != 0) return -1;
  if (nan) {
    ptrt_error(s->ctx, "steps %lld to %lld: %lld non-finite steps in a row (--on-nan stop "
               "--nan-patience %lld), each undone; stopping. %s holds the variables from "
               "before them: lower --lr, or compile with --clip, and resume from it",
               (long long)s->nan_first, (long long)step, (long long)s->nan_run,
               (long long)o->nan_patience, s->last);
    return 2;
  }
  if (stop) {
    say(s, "stopping after step %lld on a signal (SIGTERM or SIGUSR1); resume with --resume",
        (long long)step);
    return 1;
  }
  return 0;
}

int ptrt_ckpt_session_finish(ptrt_ckpt_session *s) {
  double t0 = ptrt_now();
  if (s->job.tmp && poll_job(s, true) != 0) return -1;
  s->waited += ptrt_now() - t0;
  if (s->written)
    say(s, "%d checkpoint%s written; training waited %.0f ms for them (%.1f ms each)", s->written,
        s->written == 1 ? "" : "s", 1e3 * s->waited, 1e3 * s->waited / s->written);
  return 0;
}
