/* test_rt_data.c -- llm.c token files: the batch layout of the numerics
 * contract, several files as one stream, wrapping, and a clear error (and
 * no crash) for every kind of bad file; and the block of a whole tensor
 * each device of a mesh keeps (ptrt_local_block). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/ptrt.h"
#include "test.h"
#include "test_files.h"


/* tokens 0..n-1 (mod 200) */
static void write_seq(const char *name, int64_t n, int first) {
  uint16_t *t = malloc((size_t)n * sizeof *t + 1);
  for (int64_t i = 0; i < n; i++) t[i] = (uint16_t)((first + i) % 200);
  ptc_ctx *ctx = ptc_ctx_create();
  PTC_ASSERT(ptrt_tokens_write(ctx, file(name), t, n) == 0);
  ptc_ctx_destroy(ctx);
  free(t);
}

static const char *open_err(const char *name, int64_t vocab) {
  static char diag[2048];
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  const char *paths[1] = {file(name)};
  ptrt_tokens *t = ptrt_tokens_open(ctx, paths, 1, vocab, "the 200 rows of @wte");
  CHECK_MSG(t == NULL, "%s opened", name);
  snprintf(diag, sizeof diag, "%s", ptc_ctx_diag_text(ctx));
  ptrt_tokens_close(t);
  ptc_ctx_destroy(ctx);
  return diag;
}

static void test_layout(void) {
  write_seq("a.bin", 1000, 0);
  ptc_ctx *ctx = ptc_ctx_create();
  const char *paths[1] = {file("a.bin")};
  ptrt_tokens *t = ptrt_tokens_open(ctx, paths, 1, 200, "x");
  PTC_ASSERT(t);
  CHECK(ptrt_tokens_count(t) == 1000);
  enum { B = 3, T = 16 };
  int32_t in[B * T], tg[B * T];
  bool wrapped = false;
  for (int64_t s = 0; s < 40; s++) {
    CHECK(ptrt_tokens_batch(ctx, t, s, B, T, in, tg, &wrapped) == 0);
    for (int64_t b = 0; b < B; b++) {
      int64_t start = ((s * B + b) * T) % (1000 - T - 1);
      for (int64_t i = 0; i < T; i++) {
        CHECK(in[b * T + i] == (start + i) % 200);
        CHECK(tg[b * T + i] == (start + i + 1) % 200);
      }
    }
    /* rows start at 0, 16, 32, ...: the first past 1000 - 17 = 983 wraps */
    CHECK(wrapped == ((s * B + B - 1) * T >= 1000 - T - 1));
    if (wrapped) break;
  }
  CHECK(wrapped);
  ptrt_tokens_close(t);
  ptc_ctx_destroy(ctx);
}

static void test_shards(void) {
  write_seq("s1.bin", 50, 0);
  write_seq("s2.bin", 7, 50);
  write_seq("s3.bin", 60, 57);
  ptc_ctx *ctx = ptc_ctx_create();
  const char *paths[3] = {file("s1.bin"), file("s2.bin"), file("s3.bin")};
  ptrt_tokens *t = ptrt_tokens_open(ctx, paths, 3, 200, "x");
  PTC_ASSERT(t);
  CHECK(ptrt_tokens_count(t) == 117);
  int32_t in[10], tg[10];
  /* row 0 of batch 4 at T = 10: start 40, crossing both file boundaries */
  CHECK(ptrt_tokens_batch(ctx, t, 4, 1, 10, in, tg, NULL) == 0);
  for (int i = 0; i < 10; i++) CHECK(in[i] == 40 + i && tg[i] == 41 + i);
  CHECK(ptrt_tokens_batch(ctx, t, 5, 1, 10, in, tg, NULL) == 0);
  for (int i = 0; i < 10; i++) CHECK(in[i] == 50 + i);
  ptrt_tokens_close(t);
  ptc_ctx_destroy(ctx);
}

static void test_bad_files(void) {
  const char *d;
  write_raw("empty.bin", "", 0);
  d = open_err("empty.bin", 200);
  CHECK_MSG(strstr(d, "empty.bin: error: empty file"), "%s", d);

  int32_t h[256] = {20240520, 1, 100};
  write_raw("short.bin", h, 100);
  d = open_err("short.bin", 200);
  CHECK_MSG(strstr(d, "shorter than the 1024-byte header"), "%s", d);

  int32_t bad[256] = {12345, 1, 0};
  write_raw("magic.bin", bad, sizeof bad);
  d = open_err("magic.bin", 200);
  CHECK_MSG(strstr(d, "magic.bin: error: bad magic number 12345 (expected 20240520)"), "%s", d);

  int32_t v2[256] = {20240520, 2, 0};
  write_raw("v2.bin", v2, sizeof v2);
  d = open_err("v2.bin", 200);
  CHECK_MSG(strstr(d, "version 2"), "%s", d);

  write_seq("trunc.bin", 100, 0);
  PTC_ASSERT(truncate(file("trunc.bin"), 1024 + 150) == 0);
  d = open_err("trunc.bin", 200);
  CHECK_MSG(strstr(d, "the header says 100 tokens (1224 bytes in all) but the file has 1174 "
                      "bytes"), "%s", d);

  write_raw("none.bin", h, 0);
  int32_t zero[256] = {20240520, 1, 0};
  write_raw("none.bin", zero, sizeof zero);
  d = open_err("none.bin", 200);
  CHECK_MSG(strstr(d, "holds no tokens"), "%s", d);

  write_seq("range.bin", 300, 0);
  d = open_err("range.bin", 150);
  CHECK_MSG(strstr(d, "token 150 at position 150 is not below 150, the 200 rows of @wte"), "%s", d);

  d = open_err("missing.bin", 200);
  CHECK_MSG(strstr(d, "missing.bin: error: cannot open"), "%s", d);

  /* too few tokens for one row: an error at batch time, not a crash */
  write_seq("tiny.bin", 5, 0);
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  const char *paths[1] = {file("tiny.bin")};
  ptrt_tokens *t = ptrt_tokens_open(ctx, paths, 1, 200, "x");
  PTC_ASSERT(t);
  int32_t in[16];
  CHECK(ptrt_tokens_batch(ctx, t, 0, 1, 16, in, NULL, NULL) == -1);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "holds 5 tokens"), "%s", ptc_ctx_diag_text(ctx));
  ptrt_tokens_close(t);
  ptc_ctx_destroy(ctx);
}

/* One device's block of a whole tensor: element by element, each local
 * multi-index l maps to global index piece(d) * L[d] + l[d], piece(d) the
 * device's ptc_shard_index for dimension d's axes. */
static void check_block(const ptc_mesh *m, const ptc_type *g, const ptc_sharding *s,
                        const char *what) {
  int64_t n = ptc_type_numel(g), es = ptc_dtype_size(g->dtype);
  unsigned char *whole = malloc((size_t)(n * es) + 1);
  for (int64_t i = 0; i < n * es; i++) whole[i] = (unsigned char)(i * 7 + i / 251);
  int64_t devices = ptc_mesh_size(m);
  for (int64_t r = 0; r < devices; r++) {
    int32_t co[PTC_MAX_MESH_AXES] = {0};
    if (m->naxes) ptc_mesh_coord(m, r, co);
    ptc_type lt;
    ptc_local_type(m, g, s, &lt);
    int64_t ln = ptc_type_numel(&lt);
    unsigned char *b = malloc((size_t)(ln * es) + 1);
    ptrt_local_block(m, co, g, s, whole, b);
    int bad = 0;
    for (int64_t i = 0; i < ln; i++) {
      int64_t rem = i, gi = 0, st = 1;
      for (int32_t d = g->rank - 1; d >= 0; d--) {
        uint8_t axes = s && s->present ? s->dim_axes[d] : 0;
        int64_t piece = ptc_shard_parts(m, axes) > 1 ? ptc_shard_index(m, axes, co) : 0;
        gi += (piece * lt.dims[d] + rem % lt.dims[d]) * st;
        rem /= lt.dims[d];
        st *= g->dims[d];
      }
      bad += memcmp(b + i * es, whole + gi * es, (size_t)es) != 0;
    }
    CHECK_MSG(bad == 0, "%s: device %lld: %d of %lld elements are not the block's", what,
              (long long)r, bad, (long long)ln);
    free(b);
  }
  free(whole);
}

static void test_local_block(void) {
  ptc_mesh m, none = {0};
  char err[128];
  PTC_ASSERT(ptc_mesh_parse("dp=2,tp=4", &m, err, sizeof err) == 0);
  ptc_type i32 = {PTC_DTYPE_I32, 3, {6, 4, 10}}, f32 = {PTC_DTYPE_F32, 2, {8, 12}};
  ptc_type i64 = {PTC_DTYPE_I64, 2, {16, 3}}, sc = {PTC_DTYPE_F32, 0, {0}};
  ptc_sharding a = {true, {1, 2, 0}, 0};     /* <dp, tp, _> */
  ptc_sharding b = {true, {0, 0, 1}, 2};     /* <_, _, dp> partial<tp>: the last dim */
  ptc_sharding c = {true, {2, 1}, 0};        /* <tp, dp> */
  ptc_sharding d = {true, {3, 0}, 0};        /* <(dp,tp), _> */
  ptc_sharding rep = {true, {0, 0, 0}, 2};   /* replicated, partial<tp> */
  check_block(&m, &i32, &a, "i32[6,4,10] shard<dp,tp,_>");
  check_block(&m, &i32, &b, "i32[6,4,10] shard<_,_,dp> partial<tp>");
  check_block(&m, &f32, &c, "f32[8,12] shard<tp,dp>");
  check_block(&m, &i64, &d, "i64[16,3] shard<(dp,tp),_>");
  check_block(&m, &i32, &rep, "replicated");
  check_block(&m, &i32, NULL, "no sharding");
  check_block(&m, &sc, NULL, "a scalar");
  check_block(&none, &f32, &c, "a mesh without axes");
  /* the block's origin, and the whole tensor's dims from the local type */
  ptc_type lt = {PTC_DTYPE_F32, 2, {4, 3}};
  int32_t co[PTC_MAX_MESH_AXES] = {1, 2};
  int64_t gd[PTC_MAX_RANK], org[PTC_MAX_RANK];
  ptrt_block_origin(&m, co, &lt, &d, gd, org); /* (dp,tp) piece 1*4+2 = 6 of 8 */
  CHECK(gd[0] == 32 && gd[1] == 3 && org[0] == 24 && org[1] == 0);
  ptrt_block_origin(&m, co, &lt, &c, gd, org); /* tp piece 2 of 4, dp piece 1 of 2 */
  CHECK(gd[0] == 16 && gd[1] == 6 && org[0] == 8 && org[1] == 3);
}

int main(void) {
  scratch_init("test_rt_data");
  test_layout();
  test_shards();
  test_bad_files();
  test_local_block();
  scratch_fini();
  return test_report("test_rt_data");
}
