/* test_ckpt.c -- the checkpoint reader against tilings made here: random
 * tensors of rank 0 to 4 cut into random grids of blocks, the blocks
 * spread over several shard files at random offsets with gaps, and a
 * manifest written by hand (the format of docs/checkpoints.md).  Every
 * random box read back must hold exactly the whole tensor's elements; the
 * checksums must verify, and a flipped bit must not; manifests whose blocks
 * overlap, leave a gap or reach past their file must be refused. */
#include <errno.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/ckpt.h"

static int failures;
#define CHECK(c)                                                        \
  do {                                                                  \
    if (!(c)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      failures++;                                                       \
    }                                                                   \
  } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static int64_t rnd(int64_t n) { /* [0, n) */
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (int64_t)(rng % (uint64_t)n);
}

static char dir[256];

static void hex(const unsigned char *d, size_t n, char *out) {
  unsigned char md[32];
  unsigned int k = 0;
  EVP_Digest(d, n, md, &k, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

typedef struct tiling {
  int32_t rank;
  int64_t dims[PTC_MAX_RANK];
  int32_t nb;
  int64_t origin[64][PTC_MAX_RANK], bdims[64][PTC_MAX_RANK];
} tiling;

/* A random grid of blocks over random dims: along each dim, up to 3 parts
 * between distinct random cut points. */
static void make_tiling(tiling *t) {
  t->rank = (int32_t)rnd(5);
  int64_t cuts[PTC_MAX_RANK][8], parts[PTC_MAX_RANK];
  for (int32_t d = 0; d < t->rank; d++) {
    t->dims[d] = 1 + rnd(7);
    /* the points 1..dims-1 shuffled; the first parts-1 of them, sorted */
    int64_t pts[8], n = t->dims[d] - 1;
    for (int64_t i = 0; i < n; i++) pts[i] = i + 1;
    for (int64_t i = n - 1; i > 0; i--) {
      int64_t j = rnd(i + 1), x = pts[i];
      pts[i] = pts[j];
      pts[j] = x;
    }
    parts[d] = 1 + rnd(n < 2 ? n + 1 : 3);
    cuts[d][0] = 0;
    for (int64_t i = 1; i < parts[d]; i++) cuts[d][i] = pts[i - 1];
    for (int64_t i = 1; i < parts[d]; i++)
      for (int64_t j = i; j > 1 && cuts[d][j] < cuts[d][j - 1]; j--) {
        int64_t x = cuts[d][j];
        cuts[d][j] = cuts[d][j - 1];
        cuts[d][j - 1] = x;
      }
    cuts[d][parts[d]] = t->dims[d];
  }
  t->nb = 0;
  int64_t idx[PTC_MAX_RANK] = {0};
  for (;;) {
    for (int32_t d = 0; d < t->rank; d++) {
      t->origin[t->nb][d] = cuts[d][idx[d]];
      t->bdims[t->nb][d] = cuts[d][idx[d] + 1] - cuts[d][idx[d]];
    }
    t->nb++;
    int32_t d = t->rank - 1;
    for (; d >= 0; d--) {
      if (++idx[d] < parts[d]) break;
      idx[d] = 0;
    }
    if (d < 0) break;
  }
}

static json_t *ints(const int64_t *v, int32_t n) {
  json_t *a = json_array();
  for (int32_t i = 0; i < n; i++) json_array_append_new(a, json_integer(v[i]));
  return a;
}

/* Writes the checkpoint dir/ck of tiling t (values: the flat index), the
 * blocks spread over nfiles files with gaps.  bad: 0 none, 1 two blocks
 * overlap, 2 a block is missing, 3 a block reaches past its file. */
static void write_ckpt(const char *path, const tiling *t, int nfiles, int bad) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", path, path);
  CHECK(system(cmd) == 0);
  unsigned char *files[3] = {0};
  int64_t flen[3] = {0};
  json_t *blocks = json_array();
  int64_t st[PTC_MAX_RANK], s = 1;
  for (int32_t d = t->rank - 1; d >= 0; d--) {
    st[d] = s;
    s *= t->dims[d];
  }
  for (int32_t b = 0; b < t->nb; b++) {
    if (bad == 2 && b == t->nb - 1 && t->nb > 1) break;
    int f = (int)rnd(nfiles);
    int64_t n = 1;
    for (int32_t d = 0; d < t->rank; d++) n *= t->bdims[b][d];
    int64_t off = flen[f] + 4 * rnd(3);
    files[f] = realloc(files[f], (size_t)(off + 4 * n));
    memset(files[f] + flen[f], 0xAB, (size_t)(off - flen[f]));
    float *x = (float *)(files[f] + off);
    for (int64_t e = 0; e < n; e++) {
      int64_t rem = e, g = 0;
      for (int32_t d = t->rank - 1; d >= 0; d--) {
        g += (t->origin[b][d] + rem % t->bdims[b][d]) * st[d];
        rem /= t->bdims[b][d];
      }
      x[e] = (float)g;
    }
    flen[f] = off + 4 * n;
    char name[32];
    snprintf(name, sizeof name, "rank-%05d.bin", f);
    int64_t o2[PTC_MAX_RANK];
    memcpy(o2, t->origin[b], sizeof o2);
    json_array_append_new(blocks, json_pack("{s:s,s:I,s:I,s:o,s:o}", "file", name, "offset",
                                            (json_int_t)off, "bytes", (json_int_t)(4 * n),
                                            "origin", ints(o2, t->rank), "dims",
                                            ints(t->bdims[b], t->rank)));
    if (bad == 1 && b == 0) /* the same box again */
      json_array_append_new(blocks, json_deep_copy(json_array_get(blocks, 0)));
  }
  json_t *fl = json_array();
  for (int f = 0; f < nfiles; f++) {
    char name[32], h[65], *p;
    snprintf(name, sizeof name, "rank-%05d.bin", f);
    size_t pl = strlen(path) + 40;
    p = malloc(pl);
    snprintf(p, pl, "%s/%s", path, name);
    FILE *o = fopen(p, "wb");
    if (flen[f]) CHECK(fwrite(files[f], 1, (size_t)flen[f], o) == (size_t)flen[f]);
    fclose(o);
    free(p);
    hex(files[f] ? files[f] : (const unsigned char *)"", (size_t)flen[f], h);
    int64_t len = bad == 3 && f == 0 ? (flen[f] > 4 ? flen[f] - 4 : 0) : flen[f];
    json_array_append_new(fl, json_pack("{s:s,s:I,s:s}", "name", name, "bytes", (json_int_t)len,
                                        "sha256", h));
    free(files[f]);
  }
  json_t *root = json_pack(
      "{s:s,s:i,s:i,s:s,s:s,s:o,s:[{s:s,s:s,s:s,s:o,s:o}]}", "format", PTRT_CKPT_FORMAT,
      "version", PTRT_CKPT_VERSION, "step", 3, "fingerprint",
      "0000000000000000000000000000000000000000000000000000000000000000", "checksum", "sha256",
      "files", fl, "tensors", "name", "x", "kind", "parameter", "dtype", "F32", "shape",
      ints(t->dims, t->rank), "blocks", blocks);
  size_t pl = strlen(path) + 20;
  char *mp = malloc(pl);
  snprintf(mp, pl, "%s/manifest.json", path);
  CHECK(json_dump_file(root, mp, JSON_INDENT(1)) == 0);
  free(mp);
  json_decref(root);
}

static void check_boxes(ptc_ctx *ctx, const ptrt_ckpt *ck, const tiling *t) {
  const ptrt_ckpt_tensor *x = ptrt_ckpt_find(ck, "x");
  CHECK(x && x->rank == t->rank);
  if (!x) return;
  int64_t st[PTC_MAX_RANK], s = 1;
  for (int32_t d = t->rank - 1; d >= 0; d--) {
    st[d] = s;
    s *= t->dims[d];
  }
  for (int k = 0; k < 12; k++) {
    int64_t o[PTC_MAX_RANK], dm[PTC_MAX_RANK], n = 1;
    for (int32_t d = 0; d < t->rank; d++) {
      o[d] = rnd(t->dims[d]);
      dm[d] = 1 + rnd(t->dims[d] - o[d]);
      n *= dm[d];
    }
    float *out = malloc((size_t)n * sizeof *out);
    CHECK(ptrt_ckpt_read_box(ctx, ck, x, o, dm, out) == 0);
    for (int64_t e = 0; e < n; e++) {
      int64_t rem = e, g = 0;
      for (int32_t d = t->rank - 1; d >= 0; d--) {
        g += (o[d] + rem % dm[d]) * st[d];
        rem /= dm[d];
      }
      if (out[e] != (float)g) {
        fprintf(stderr, "rank %d box element %lld: %g, want %lld\n", t->rank, (long long)e,
                (double)out[e], (long long)g);
        failures++;
        break;
      }
    }
    free(out);
  }
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/test_ckpt.XXXXXX");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  char path[300];
  snprintf(path, sizeof path, "%s/step-3", dir);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  int refusals = 0, multi = 0;
  for (int trial = 0; trial < 300; trial++) {
    tiling t;
    make_tiling(&t);
    write_ckpt(path, &t, 1 + (int)rnd(3), 0);
    ptrt_ckpt *ck = ptrt_ckpt_open(ctx, path);
    CHECK(ck != NULL);
    if (!ck) {
      fprintf(stderr, "%s", ptc_ctx_diag_text(ctx));
      break;
    }
    CHECK(ptrt_ckpt_step(ck) == 3);
    check_boxes(ctx, ck, &t);
    if (trial % 10 == 0) CHECK(ptrt_ckpt_verify(ctx, ck, NULL) == 0);
    ptrt_ckpt_close(ck);
    multi += t.nb > 1;
    if (trial % 5 == 0 && t.nb > 1 && refusals++ < 12) { /* refusals */
      static const char *const why[] = {"", "overlap", "of its", "does not fit"};
      for (int bad = 1; bad <= 3; bad++) {
        ptc_ctx_reset_errors(ctx);
        write_ckpt(path, &t, 1, bad);
        ck = ptrt_ckpt_open(ctx, path);
        CHECK(ck == NULL);
        CHECK(strstr(ptc_ctx_diag_text(ctx), why[bad]) != NULL);
        ptrt_ckpt_close(ck);
      }
    }
    ptc_ctx_reset_errors(ctx);
  }
  CHECK(refusals >= 10 && multi >= 100); /* the random tilings cover what they should */
  /* a flipped bit fails verification, naming the shard */
  tiling t = {.rank = 1, .dims = {8}, .nb = 1, .bdims = {{8}}};
  write_ckpt(path, &t, 1, 0);
  char bin[400];
  snprintf(bin, sizeof bin, "%s/rank-00000.bin", path);
  FILE *f = fopen(bin, "r+b");
  fseek(f, 5, SEEK_SET);
  int c = fgetc(f);
  fseek(f, 5, SEEK_SET);
  fputc(c ^ 1, f);
  fclose(f);
  ptrt_ckpt *ck = ptrt_ckpt_open(ctx, path);
  CHECK(ck && ptrt_ckpt_verify(ctx, ck, NULL) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "rank-00000.bin: error: SHA-256") != NULL);
  ptrt_ckpt_close(ck);
  /* not a checkpoint */
  CHECK(ptrt_ckpt_open(ctx, dir) == NULL);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "not a checkpoint: it has no manifest.json") != NULL);
  ptc_ctx_destroy(ctx);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) failures++;
  if (failures) {
    fprintf(stderr, "test_ckpt: %d failure(s)\n", failures);
    return 1;
  }
  printf("test_ckpt: ok\n");
  return 0;
}
