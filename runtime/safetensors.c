/* safetensors.c -- the Hugging Face safetensors format, for exchanging
 * weights with PyTorch (--save-weights, --load-weights) and for inputs that
 * are not token streams (--inputs).
 *
 * A file is an unsigned little-endian 64-bit header length N, N bytes of
 * JSON -- {"name": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
 * ..., "__metadata__": {...}} -- then the data, each tensor's raw
 * little-endian bytes at [b, e) of the data section.  The reader checks
 * everything a truncated or hand-made file could get wrong before any
 * tensor is used; the writer pads the header with spaces to a multiple of
 * 8 bytes, as the reference implementation does, and renames into place.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/ptrt.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

enum { MAX_HEADER = 100 << 20 }; /* the format's own limit */

struct ptrt_st {
  char *path;
  char *step; /* __metadata__.step of a checkpoint, or NULL */
  void *map;
  size_t map_len;
  const unsigned char *data; /* the data section */
  int64_t data_len;
  ptrt_st_tensor *t;
  int32_t n;
};

static const struct {
  const char *name;
  ptc_dtype dtype;
} dtypes[] = {
    {"F32", PTC_DTYPE_F32}, {"F64", PTC_DTYPE_F64}, {"F16", PTC_DTYPE_F16},
    {"BF16", PTC_DTYPE_BF16}, {"I64", PTC_DTYPE_I64}, {"I32", PTC_DTYPE_I32},
    {"I8", PTC_DTYPE_I8}, {"BOOL", PTC_DTYPE_BOOL},
};

int ptrt_st_dtype_from(const char *s) {
  for (int i = 0; i < PTC_ARRAY_LEN(dtypes); i++)
    if (strcmp(dtypes[i].name, s) == 0) return (int)dtypes[i].dtype;
  return -1;
}

const char *ptrt_st_dtype_name(ptc_dtype t) {
  for (int i = 0; i < PTC_ARRAY_LEN(dtypes); i++)
    if (dtypes[i].dtype == t) return dtypes[i].name;
  return "?";
}

void ptrt_st_close(ptrt_st *s) {
  if (!s) return;
  for (int32_t i = 0; i < s->n; i++) free((char *)s->t[i].name);
  free(s->t);
  free(s->step);
  if (s->map) munmap(s->map, s->map_len);
  free(s->path);
  free(s);
}

static int cmp_begin(const void *a, const void *b) {
  const ptrt_st_tensor *x = *(ptrt_st_tensor *const *)a, *y = *(ptrt_st_tensor *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin;
}

/* One header entry into s->t[s->n]; -1 after reporting. */
static int read_entry(ptc_ctx *ctx, ptrt_st *s, const char *name, json_t *e) {
  const char *path = s->path;
  json_t *dt = json_object_get(e, "dtype"), *sh = json_object_get(e, "shape"),
         *off = json_object_get(e, "data_offsets");
  if (!json_is_object(e) || !json_is_string(dt) || !json_is_array(sh) ||
      !json_is_array(off) || json_array_size(off) != 2) {
    ptrt_file_error(ctx, path, "tensor '%s': the header entry needs \"dtype\", \"shape\" "
                    "and \"data_offsets\": [begin, end]", name);
    return -1;
  }
  int d = ptrt_st_dtype_from(json_string_value(dt));
  if (d < 0) {
    ptrt_file_error(ctx, path, "tensor '%s': dtype %s is not supported (F32, F64, F16, "
                    "BF16, I64, I32, I8, BOOL)", name, json_string_value(dt));
    return -1;
  }
  ptrt_st_tensor *t = &s->t[s->n];
  memset(t, 0, sizeof *t);
  t->dtype = (ptc_dtype)d;
  if (json_array_size(sh) > PTC_MAX_RANK) {
    ptrt_file_error(ctx, path, "tensor '%s': rank %zu is above %d", name,
                    json_array_size(sh), PTC_MAX_RANK);
    return -1;
  }
  t->rank = (int32_t)json_array_size(sh);
  int64_t numel = 1;
  for (int32_t i = 0; i < t->rank; i++) {
    json_t *v = json_array_get(sh, (size_t)i);
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        !ptc_mul_ovf(numel, json_integer_value(v), &numel) || numel > PTC_MAX_ELEMENTS) {
      ptrt_file_error(ctx, path, "tensor '%s': the shape is not a list of sizes", name);
      return -1;
    }
    t->dims[i] = json_integer_value(v);
  }
  json_t *b = json_array_get(off, 0), *en = json_array_get(off, 1);
  if (!json_is_integer(b) || !json_is_integer(en)) {
    ptrt_file_error(ctx, path, "tensor '%s': data_offsets are not integers", name);
    return -1;
  }
  t->begin = json_integer_value(b);
  t->end = json_integer_value(en);
  if (t->begin < 0 || t->end < t->begin || t->end > s->data_len) {
    ptrt_file_error(ctx, path, "tensor '%s': bytes [%lld, %lld) are outside the %lld-byte "
                    "data section: the file is truncated or damaged", name,
                    (long long)t->begin, (long long)t->end, (long long)s->data_len);
    return -1;
  }
  if (t->end - t->begin != numel * ptc_dtype_size(t->dtype)) {
    ptrt_file_error(ctx, path, "tensor '%s': %lld bytes for %lld elements of %s", name,
                    (long long)(t->end - t->begin), (long long)numel,
                    ptrt_st_dtype_name(t->dtype));
    return -1;
  }
  t->name = strdup(name);
  PTC_ASSERT(t->name);
  s->n++;
  return 0;
}

ptrt_st *ptrt_st_open(ptc_ctx *ctx, const char *path) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    ptrt_file_error(ctx, path, "cannot open: %s", strerror(errno));
    return NULL;
  }
  struct stat stt;
  if (fstat(fd, &stt) != 0 || !S_ISREG(stt.st_mode)) {
    ptrt_file_error(ctx, path, "not a regular file");
    close(fd);
    return NULL;
  }
  ptrt_st *s = ptc_xcalloc(1, sizeof *s);
  s->path = strdup(path);
  PTC_ASSERT(s->path);
  size_t len = (size_t)stt.st_size;
  if (len < 8) {
    ptrt_file_error(ctx, path, "%zu bytes: too short for a safetensors file", len);
    close(fd);
    ptrt_st_close(s);
    return NULL;
  }
  void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    ptrt_file_error(ctx, path, "cannot map: %s", strerror(errno));
    ptrt_st_close(s);
    return NULL;
  }
  s->map = map;
  s->map_len = len;
  uint64_t hlen;
  memcpy(&hlen, map, 8);
  if (hlen > MAX_HEADER || hlen > len - 8) {
    ptrt_file_error(ctx, path, "the header length %llu does not fit the file's %zu bytes: "
                    "not a safetensors file, or truncated", (unsigned long long)hlen, len);
    ptrt_st_close(s);
    return NULL;
  }
  s->data = (const unsigned char *)map + 8 + hlen;
  s->data_len = (int64_t)(len - 8 - hlen);
  json_error_t jerr;
  json_t *root = json_loadb((const char *)map + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
  if (!json_is_object(root)) {
    ptrt_file_error(ctx, path, "the header is not a JSON object (%s)",
                    root ? "another JSON value" : jerr.text);
    json_decref(root);
    ptrt_st_close(s);
    return NULL;
  }
  s->t = ptc_xcalloc(json_object_size(root) + 1, sizeof *s->t);
  const char *key;
  json_t *val;
  json_t *meta = json_object_get(root, "__metadata__");
  json_t *step = json_is_object(meta) ? json_object_get(meta, "step") : NULL;
  if (json_is_string(step)) {
    s->step = strdup(json_string_value(step));
    PTC_ASSERT(s->step);
  }
  json_object_foreach(root, key, val) {
    if (strcmp(key, "__metadata__") == 0) continue;
    if (read_entry(ctx, s, key, val) != 0) {
      json_decref(root);
      ptrt_st_close(s);
      return NULL;
    }
  }
  json_decref(root);
  /* no two tensors may share bytes */
  ptrt_st_tensor **by = ptc_xcalloc((size_t)s->n + 1, sizeof *by);
  for (int32_t i = 0; i < s->n; i++) by[i] = &s->t[i];
  qsort(by, (size_t)s->n, sizeof *by, cmp_begin);
  for (int32_t i = 1; i < s->n; i++)
    if (by[i]->begin < by[i - 1]->end && by[i]->end > by[i]->begin) {
      ptrt_file_error(ctx, path, "tensors '%s' and '%s' overlap in the data section",
                      by[i - 1]->name, by[i]->name);
      free(by);
      ptrt_st_close(s);
      return NULL;
    }
  free(by);
  return s;
}

int32_t ptrt_st_count(const ptrt_st *s) { return s->n; }
const ptrt_st_tensor *ptrt_st_tensor_at(const ptrt_st *s, int32_t i) { return &s->t[i]; }
const char *ptrt_st_path(const ptrt_st *s) { return s->path; }

const ptrt_st_tensor *ptrt_st_find(const ptrt_st *s, const char *name) {
  for (int32_t i = 0; i < s->n; i++)
    if (strcmp(s->t[i].name, name) == 0) return &s->t[i];
  return NULL;
}

const void *ptrt_st_data(const ptrt_st *s, const ptrt_st_tensor *t) {
  return s->data + t->begin;
}

/* Metadata values are strings (the format's rule); `step` marks a
 * checkpoint. */
static int st_write(ptc_ctx *ctx, const char *path, const ptrt_st_entry *e, int32_t n,
                    int64_t step) {
  json_t *root = json_object();
  json_t *meta = json_pack("{s:s}", "format", "pt");
  if (step >= 0) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)step);
    json_object_set_new(meta, "step", json_string(buf));
  }
  json_object_set_new(root, "__metadata__", meta);
  int64_t off = 0;
  for (int32_t i = 0; i < n; i++) {
    json_t *shape = json_array();
    int64_t numel = 1;
    for (int32_t d = 0; d < e[i].rank; d++) {
      json_array_append_new(shape, json_integer(e[i].dims[d]));
      numel *= e[i].dims[d];
    }
    int64_t bytes = numel * ptc_dtype_size(e[i].dtype);
    json_object_set_new(root, e[i].name,
                        json_pack("{s:s,s:o,s:[I,I]}", "dtype", ptrt_st_dtype_name(e[i].dtype), "shape",
                                  shape, "data_offsets", (json_int_t)off,
                                  (json_int_t)(off + bytes)));
    off += bytes;
  }
  char *hdr = json_dumps(root, JSON_COMPACT);
  json_decref(root);
  PTC_ASSERT(hdr);
  size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
  size_t plen = strlen(path) + 5;
  char *tmp = ptc_xmalloc(plen);
  snprintf(tmp, plen, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  bool ok = f != NULL;
  if (ok) {
    uint64_t h = padded;
    ok = fwrite(&h, 8, 1, f) == 1 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (int32_t i = 0; ok && i < n; i++) {
      int64_t numel = 1;
      for (int32_t d = 0; d < e[i].rank; d++) numel *= e[i].dims[d];
      size_t bytes = (size_t)(numel * ptc_dtype_size(e[i].dtype));
      ok = bytes == 0 || fwrite(e[i].data, 1, bytes, f) == bytes;
    }
    ok = (fclose(f) == 0) && ok;
  }
  if (ok && rename(tmp, path) != 0) ok = false;
  if (!ok) {
    ptrt_file_error(ctx, path, "cannot write: %s", strerror(errno));
    remove(tmp);
  }
  free(tmp);
  free(hdr);
  return ok ? 0 : -1;
}

int ptrt_st_write(ptc_ctx *ctx, const char *path, const ptrt_st_entry *e, int32_t n) {
  return st_write(ctx, path, e, n, -1);
}

const char *ptrt_st_step(const ptrt_st *s) { return s->step; }

/* ---- weights ---------------------------------------------------------------- */

/* Every trainable param (and, for a checkpoint, the state too). */
static int save_vars(ptc_ctx *ctx, const char *path, const ptrt_vars *v, bool state,
                     int64_t step) {
  const ptc_module *m = v->mod;
  ptrt_st_entry *e = ptc_xcalloc((size_t)m->nparams + 1, sizeof *e);
  int32_t n = 0;
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!p->trainable && !state) continue;
    e[n++] = (ptrt_st_entry){p->name, p->type.dtype, p->type.rank, p->type.dims,
                             ptrt_vars_data(v, i)};
  }
  int rc = st_write(ctx, path, e, n, step);
  free(e);
  return rc;
}

int ptrt_save_weights(ptc_ctx *ctx, const char *path, const ptrt_vars *v) {
  return save_vars(ctx, path, v, false, -1);
}

int ptrt_save_checkpoint(ptc_ctx *ctx, const char *path, const ptrt_vars *v, int64_t step) {
  return save_vars(ctx, path, v, true, step);
}

static void shape_str(char *out, size_t cap, int32_t rank, const int64_t *dims) {
  size_t k = (size_t)snprintf(out, cap, "[");
  for (int32_t d = 0; d < rank && k < cap; d++)
    k += (size_t)snprintf(out + k, cap - k, d ? ",%lld" : "%lld", (long long)dims[d]);
  if (k < cap) snprintf(out + k, cap - k, "]");
}

static int load_vars(ptc_ctx *ctx, const char *path, ptrt_vars *v, bool state,
                     int64_t *step) {
  ptrt_st *s = ptrt_st_open(ctx, path);
  if (!s) return -1;
  const ptc_module *m = v->mod;
  int bad = 0;
  if (step) {
    char *end = NULL;
    long long st = s->step ? strtoll(s->step, &end, 10) : -1;
    if (!s->step || *end || st < 0) {
      ptrt_file_error(ctx, path, "not a checkpoint (no step in its metadata): --resume takes "
                      "what --save-checkpoint writes; --load-weights takes weights");
      ptrt_st_close(s);
      return -1;
    }
    *step = st;
  }
  bool *used = ptc_xcalloc((size_t)s->n + 1, sizeof *used);
  for (int32_t i = 0; i < m->nparams; i++) {
    const ptc_param *p = &m->params[i];
    if (!p->trainable && !state) continue;
    const ptrt_st_tensor *t = ptrt_st_find(s, p->name);
    if (!t) {
      ptrt_file_error(ctx, path, "has no tensor for the %s '%s'",
                      p->trainable ? "parameter" : "state variable", p->name);
      bad++;
      continue;
    }
    used[t - s->t] = true;
    bool same = t->rank == p->type.rank;
    for (int32_t d = 0; same && d < t->rank; d++) same = t->dims[d] == p->type.dims[d];
    if (t->dtype != p->type.dtype || !same) {
      char a[128], b[128];
      shape_str(a, sizeof a, t->rank, t->dims);
      shape_str(b, sizeof b, p->type.rank, p->type.dims);
      ptrt_file_error(ctx, path, "tensor '%s' is %s%s, but the %s is %s%s", p->name,
                      ptrt_st_dtype_name(t->dtype), a,
                      p->trainable ? "parameter" : "state variable",
                      ptrt_st_dtype_name(p->type.dtype), b);
      bad++;
      continue;
    }
    memcpy(ptrt_vars_data(v, i), ptrt_st_data(s, t), (size_t)(t->end - t->begin));
  }
  for (int32_t i = 0; i < s->n; i++)
    if (!used[i]) {
      ptrt_file_error(ctx, path, "tensor '%s' is not a %s of the model", s->t[i].name,
                      state ? "variable" : "parameter");
      bad++;
    }
  free(used);
  ptrt_st_close(s);
  if (bad) {
    ptrt_error(ctx, "'%s' does not match the model's %s (%d problem%s above); %s", path,
               state ? "variables" : "parameters", bad, bad == 1 ? "" : "s",
               state ? "resume from a checkpoint of the same plan"
                     : "save weights from a run of the same plan, or convert the names");
    return -1;
  }
  return 0;
}

int ptrt_load_weights(ptc_ctx *ctx, const char *path, ptrt_vars *v) {
  if (load_vars(ctx, path, v, false, NULL) != 0) return -1;
  /* Mixed precision: the step reads the 16-bit working copies (init
   * copy(@p)), not the parameters just loaded; they were made from the
   * seed's init and must follow.  Weights load into whole tensors, so each
   * copy is the cast of its source's memory (the seed is not used). */
  ptrt_vars_refresh_copies(v, 0, NULL);
  return 0;
}

int ptrt_load_checkpoint(ptc_ctx *ctx, const char *path, ptrt_vars *v, int64_t *step) {
  return load_vars(ctx, path, v, true, step);
}
