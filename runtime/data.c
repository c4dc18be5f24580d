/* data.c -- training data: llm.c token files read as one stream, rows of
 * safetensors inputs for models that do not read tokens, and the block of
 * a whole tensor one device of a mesh holds (every rank of an SPMD run
 * builds the global batch, then keeps its block).
 *
 * A token file (llm.c's format, what its data scripts write) is a header
 * of 256 little-endian int32 -- magic 20240520, version 1, the token count
 * -- then that many uint16 tokens.  Files are mapped read-only and checked
 * completely when opened (magic, version, size against the count, every
 * token against the vocabulary), so a bad file stops the run before the
 * first step, with the file and the problem named, and never later.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/ptrt.h"

#define MAKE_ONE "make one with 'ptdata TEXT... -o FILE' or llm.c's data scripts"

typedef struct tfile {
  char *path;
  void *map;
  size_t map_len;
  const uint16_t *tok;
  int64_t n;
  int64_t start; /* index of its first token in the stream */
} tfile;

struct ptrt_tokens {
  tfile *files;
  int32_t nfiles;
  int64_t n;
};

void ptrt_tokens_close(ptrt_tokens *t) {
  if (!t) return;
  for (int32_t i = 0; i < t->nfiles; i++) {
    if (t->files[i].map) munmap(t->files[i].map, t->files[i].map_len);
    free(t->files[i].path);
  }
  free(t->files);
  free(t);
}

static int open_one(ptc_ctx *ctx, const char *path, tfile *tf, int64_t vocab,
                    const char *vocab_what) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    ptrt_file_error(ctx, path, "cannot open the token file: %s", strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ptrt_file_error(ctx, path, "not a regular file; a token file is " MAKE_ONE);
    close(fd);
    return -1;
  }
  size_t len = (size_t)st.st_size;
  if (len == 0) {
    ptrt_file_error(ctx, path, "empty file: not an llm.c token file; " MAKE_ONE);
    close(fd);
    return -1;
  }
  if (len < PTRT_TOKENS_HEADER_BYTES) {
    ptrt_file_error(ctx, path, "%zu bytes, shorter than the %d-byte header of an llm.c "
                    "token file: truncated, or not a token file; " MAKE_ONE, len,
                    PTRT_TOKENS_HEADER_BYTES);
    close(fd);
    return -1;
  }
  void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    ptrt_file_error(ctx, path, "cannot map the token file: %s", strerror(errno));
    return -1;
  }
  tf->map = map;
  tf->map_len = len;
  int32_t h[3];
  memcpy(h, map, sizeof h);
  if (h[0] != PTRT_TOKENS_MAGIC) {
    ptrt_file_error(ctx, path, "bad magic number %d (expected %d): not an llm.c token "
                    "file; " MAKE_ONE, h[0], PTRT_TOKENS_MAGIC);
    return -1;
  }
  if (h[1] != PTRT_TOKENS_VERSION) {
    ptrt_file_error(ctx, path, "token file version %d; this ptrun reads version %d "
                    "(uint16 tokens)%s", h[1], PTRT_TOKENS_VERSION,
                    h[1] == 2 ? ": version 2 is llm.c's 32-bit format for Llama 3" : "");
    return -1;
  }
  int64_t n = h[2];
  if (n < 0 || (int64_t)len != PTRT_TOKENS_HEADER_BYTES + 2 * n) {
    ptrt_file_error(ctx, path, "the header says %lld tokens (%lld bytes in all) but the "
                    "file has %zu bytes: it is truncated or damaged", (long long)n,
                    (long long)(PTRT_TOKENS_HEADER_BYTES + 2 * n), len);
    return -1;
  }
  if (n == 0) {
    ptrt_file_error(ctx, path, "holds no tokens; " MAKE_ONE);
    return -1;
  }
  tf->tok = (const uint16_t *)((const char *)map + PTRT_TOKENS_HEADER_BYTES);
  tf->n = n;
  for (int64_t i = 0; i < n; i++)
    if (tf->tok[i] >= vocab) {
      ptrt_file_error(ctx, path, "token %u at position %lld is not below %lld, %s: the "
                      "file was made for another vocabulary", tf->tok[i], (long long)i,
                      (long long)vocab, vocab_what);
      return -1;
    }
  return 0;
}

ptrt_tokens *ptrt_tokens_open(ptc_ctx *ctx, const char *const *paths, int32_t n,
                              int64_t vocab, const char *vocab_what) {
  ptrt_tokens *t = ptc_xcalloc(1, sizeof *t);
  t->files = ptc_xcalloc((size_t)n + 1, sizeof *t->files);
  for (int32_t i = 0; i < n; i++) {
    tfile *tf = &t->files[t->nfiles++];
    tf->path = ptc_xmalloc(strlen(paths[i]) + 1);
    strcpy(tf->path, paths[i]);
    if (open_one(ctx, paths[i], tf, vocab, vocab_what) != 0) {
      ptrt_tokens_close(t);
      return NULL;
    }
    tf->start = t->n;
    t->n += tf->n;
  }
  return t;
}

int64_t ptrt_tokens_count(const ptrt_tokens *t) { return t->n; }

/* Copies tokens [g, g+len) of the stream (within it) to out. */
static void copy_tokens(const ptrt_tokens *t, int64_t g, int64_t len, int32_t *out) {
  int32_t lo = 0, hi = t->nfiles - 1;
  while (lo < hi) { /* the last file whose start <= g */
    int32_t mid = (lo + hi + 1) / 2;
    if (t->files[mid].start <= g) lo = mid;
    else hi = mid - 1;
  }
  int32_t f = lo;
  for (int64_t i = 0; i < len; i++, g++) {
    while (g >= t->files[f].start + t->files[f].n) f++;
    out[i] = t->files[f].tok[g - t->files[f].start];
  }
}

int ptrt_tokens_batch(ptc_ctx *ctx, const ptrt_tokens *t, int64_t s, int64_t B, int64_t T,
                      int32_t *inputs, int32_t *targets, bool *wrapped) {
  if (t->n < T + 2) {
    ptrt_file_error(ctx, t->files[0].path, "the data holds %lld tokens, but one batch row "
                    "reads %lld (seq + 1) and the stream needs at least %lld: give more "
                    "text, or compile with a smaller --seq", (long long)t->n,
                    (long long)T + 1, (long long)T + 2);
    return -1;
  }
  int64_t span = t->n - T - 1;
  int32_t *row = ptc_xmalloc((size_t)(T + 1) * sizeof *row);
  for (int64_t b = 0; b < B; b++) {
    int64_t u = (s * B + b) * T;
    if (u >= span && wrapped) *wrapped = true;
    copy_tokens(t, u % span, T + 1, row);
    memcpy(inputs + b * T, row, (size_t)T * sizeof *row);
    if (targets) memcpy(targets + b * T, row + 1, (size_t)T * sizeof *row);
  }
  free(row);
  return 0;
}

int ptrt_tokens_write(ptc_ctx *ctx, const char *path, const uint16_t *tokens, int64_t n) {
  if (n < 0 || n > INT32_MAX) {
    ptrt_file_error(ctx, path, "%lld tokens do not fit the format's 32-bit count",
                    (long long)n);
    return -1;
  }
  size_t plen = strlen(path) + 5;
  char *tmp = ptc_xmalloc(plen);
  snprintf(tmp, plen, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    ptrt_file_error(ctx, path, "cannot write: %s", strerror(errno));
    free(tmp);
    return -1;
  }
  int32_t h[PTRT_TOKENS_HEADER_INTS] = {PTRT_TOKENS_MAGIC, PTRT_TOKENS_VERSION, (int32_t)n};
  bool ok = fwrite(h, sizeof h, 1, f) == 1;
  if (ok && n) ok = fwrite(tokens, sizeof *tokens, (size_t)n, f) == (size_t)n;
  ok = (fclose(f) == 0) && ok;
  if (ok && rename(tmp, path) != 0) ok = false;
  if (!ok) {
    ptrt_file_error(ctx, path, "cannot write: %s", strerror(errno));
    remove(tmp);
  }
  free(tmp);
  return ok ? 0 : -1;
}

/* ---- rows of safetensors inputs ------------------------------------------ */

static const char *st_dtype_name(ptc_dtype t) {
  const char *s = ptrt_st_dtype_name(t);
  return strcmp(s, "?") ? s : ptc_dtype_name(t);
}

int ptrt_rows_check(ptc_ctx *ctx, const ptrt_st *st, const char *name, const ptc_type *arg) {
  const ptrt_st_tensor *t = ptrt_st_find(st, name);
  const char *path = ptrt_st_path(st);
  if (!t) {
    ptrt_file_error(ctx, path, "has no tensor '%s' for the model's input %%%s", name, name);
    return -1;
  }
  if (t->dtype != arg->dtype) {
    ptrt_file_error(ctx, path, "tensor '%s' is %s, but the input %%%s is %s", name,
                    st_dtype_name(t->dtype), name, st_dtype_name(arg->dtype));
    return -1;
  }
  bool ok = arg->rank >= 1 && t->rank == arg->rank && t->dims[0] >= 1;
  for (int32_t d = 1; ok && d < arg->rank; d++) ok = t->dims[d] == arg->dims[d];
  if (!ok) {
    ptc_buf a;
    ptc_buf_init(&a);
    ptc_type_print(&a, arg);
    ptrt_file_error(ctx, path, "tensor '%s' must be [N, ...] with the trailing "
                    "dimensions of the input %%%s : %s (N rows, at least 1)", name, name,
                    a.data);
    ptc_buf_fini(&a);
    return -1;
  }
  return 0;
}

void ptrt_rows_batch(const ptrt_st *st, const char *name, const ptc_type *arg, int64_t s,
                     void *out) {
  const ptrt_st_tensor *t = ptrt_st_find(st, name);
  PTC_ASSERT(t);
  int64_t B = arg->dims[0], N = t->dims[0];
  int64_t row = ptc_type_bytes(arg) / (B ? B : 1);
  const char *src = ptrt_st_data(st, t);
  for (int64_t b = 0; b < B; b++)
    memcpy((char *)out + b * row, src + ((s * B + b) % N) * row, (size_t)row);
}

/* ---- one device's block ---------------------------------------------------- */

void ptrt_block_origin(const ptc_mesh *mesh, const int32_t *coord, const ptc_type *local,
                       const ptc_sharding *s, int64_t *gdims, int64_t *origin) {
  for (int32_t d = 0; d < local->rank; d++) {
    uint8_t axes = s && s->present ? s->dim_axes[d] : 0;
    int64_t parts = ptc_shard_parts(mesh, axes); /* 1 on a mesh without axes */
    gdims[d] = local->dims[d] * parts;
    origin[d] = parts > 1 ? ptc_shard_index(mesh, axes, coord) * local->dims[d] : 0;
  }
}

void ptrt_local_block(const ptc_mesh *mesh, const int32_t *coord, const ptc_type *g,
                      const ptc_sharding *s, const void *src, void *dst) {
  ptc_type lt;
  ptc_local_type(mesh, g, s, &lt); /* the global type on a mesh without axes */
  int64_t es = ptc_dtype_size(g->dtype), n = ptc_type_numel(&lt);
  if (n == 0) return;
  if (lt.rank == 0 || ptc_type_eq(&lt, g)) {
    memcpy(dst, src, (size_t)(n * es));
    return;
  }
  int64_t gdims[PTC_MAX_RANK], origin[PTC_MAX_RANK], gst[PTC_MAX_RANK];
  ptrt_block_origin(mesh, coord, &lt, s, gdims, origin);
  int64_t st = 1;
  for (int32_t d = g->rank - 1; d >= 0; d--) {
    gst[d] = st;
    st *= g->dims[d];
  }
  /* rows of the last dimension are contiguous in both */
  int32_t last = lt.rank - 1;
  int64_t len = lt.dims[last], rows = n / len;
  const char *x = src;
  char *o = dst;
  for (int64_t r = 0; r < rows; r++) {
    int64_t rem = r, off = origin[last];
    for (int32_t d = last - 1; d >= 0; d--) {
      off += (origin[d] + rem % lt.dims[d]) * gst[d];
      rem /= lt.dims[d];
    }
    memcpy(o + r * len * es, x + off * es, (size_t)(len * es));
  }
}
