/* test_rt_safetensors.c -- safetensors files: the writer's bytes, a round
 * trip, weights saved and loaded by parameter name, and clear errors for
 * files that do not match the model or the format. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/ptrt.h"
#include "test.h"
#include "test_files.h"


static void test_format(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  float a[6] = {1, 2, 3, 4, 5, 6};
  int32_t b[3] = {7, -8, 9};
  ptrt_st_entry e[2] = {{"a.w", PTC_DTYPE_F32, 2, (const int64_t[]){2, 3}, a},
                        {"b", PTC_DTYPE_I32, 1, (const int64_t[]){3}, b}};
  CHECK(ptrt_st_write(ctx, file("x.safetensors"), e, 2) == 0);
  /* the layout: u64 header length (a multiple of 8), JSON, then data */
  FILE *f = fopen(file("x.safetensors"), "rb");
  uint64_t hl = 0;
  PTC_ASSERT(fread(&hl, 8, 1, f) == 1);
  char hdr[512] = {0};
  PTC_ASSERT(hl < sizeof hdr && fread(hdr, 1, hl, f) == hl);
  fclose(f);
  CHECK(hl % 8 == 0);
  CHECK_MSG(strstr(hdr, "\"a.w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}") &&
                strstr(hdr, "\"b\":{\"dtype\":\"I32\",\"shape\":[3],\"data_offsets\":[24,36]}"),
            "%s", hdr);
  ptrt_st *s = ptrt_st_open(ctx, file("x.safetensors"));
  PTC_ASSERT(s);
  CHECK(ptrt_st_count(s) == 2);
  const ptrt_st_tensor *ta = ptrt_st_find(s, "a.w"), *tb = ptrt_st_find(s, "b");
  CHECK(ta && ta->dtype == PTC_DTYPE_F32 && ta->rank == 2 && ta->dims[1] == 3);
  CHECK(tb && tb->dtype == PTC_DTYPE_I32 && memcmp(ptrt_st_data(s, tb), b, sizeof b) == 0);
  CHECK(memcmp(ptrt_st_data(s, ta), a, sizeof a) == 0);
  CHECK(ptrt_st_find(s, "c") == NULL);
  ptrt_st_close(s);
  ptc_ctx_destroy(ctx);
}

static const char *open_err(const char *name) {
  static char diag[2048];
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptrt_st *s = ptrt_st_open(ctx, file(name));
  CHECK_MSG(s == NULL, "%s opened", name);
  snprintf(diag, sizeof diag, "%s", ptc_ctx_diag_text(ctx));
  ptrt_st_close(s);
  ptc_ctx_destroy(ctx);
  return diag;
}

/* A file with header text h (padded) and n data bytes. */
static void write_st(const char *name, const char *h, size_t n) {
  size_t hl = strlen(h);
  char *buf = calloc(8 + hl + n + 1, 1);
  uint64_t len = hl;
  memcpy(buf, &len, 8);
  memcpy(buf + 8, h, hl);
  write_raw(name, buf, 8 + hl + n);
  free(buf);
}

static void test_bad_files(void) {
  const char *d;
  write_raw("short.st", "abc", 3);
  d = open_err("short.st");
  CHECK_MSG(strstr(d, "too short"), "%s", d);
  uint64_t huge = 1ull << 40;
  write_raw("len.st", &huge, 8);
  d = open_err("len.st");
  CHECK_MSG(strstr(d, "header length"), "%s", d);
  write_st("json.st", "{\"a\": [", 0);
  d = open_err("json.st");
  CHECK_MSG(strstr(d, "not a JSON object"), "%s", d);
  write_st("range.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
  d = open_err("range.st");
  CHECK_MSG(strstr(d, "tensor 'a': bytes [0, 16) are outside the 8-byte data section"), "%s", d);
  write_st("size.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", 16);
  d = open_err("size.st");
  CHECK_MSG(strstr(d, "16 bytes for 3 elements of F32"), "%s", d);
  write_st("dtype.st", "{\"a\":{\"dtype\":\"U7\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
  d = open_err("dtype.st");
  CHECK_MSG(strstr(d, "dtype U7 is not supported"), "%s", d);
  write_st("overlap.st",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12);
  d = open_err("overlap.st");
  CHECK_MSG(strstr(d, "overlap"), "%s", d);
}

static const char *model_ir =
    "module @m {\n"
    "  param @w : f32[3,2] init normal(1.0)\n"
    "  param @b : f32[2] init ones\n"
    "  state @w.m : f32[3,2] init zeros\n"
    "}\n";

static void test_weights(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_parse_module(ctx, "m.ptir", model_ir, strlen(model_ir));
  PTC_ASSERT(m);
  ptrt_vars *v = ptrt_vars_create(ctx, m, NULL), *u = ptrt_vars_create(ctx, m, NULL);
  ptrt_vars_init(v, 7, NULL);
  ptrt_vars_init(u, 8, NULL);
  CHECK(ptrt_save_weights(ctx, file("w.safetensors"), v) == 0);
  ptrt_st *s = ptrt_st_open(ctx, file("w.safetensors"));
  CHECK(s && ptrt_st_count(s) == 2 && ptrt_st_find(s, "w") && !ptrt_st_find(s, "w.m"));
  ptrt_st_close(s);
  CHECK(memcmp(ptrt_vars_data(u, 0), ptrt_vars_data(v, 0), 24) != 0);
  CHECK(ptrt_load_weights(ctx, file("w.safetensors"), u) == 0);
  CHECK(memcmp(ptrt_vars_data(u, 0), ptrt_vars_data(v, 0), 24) == 0);

  /* a file for another model: every mismatch named, then one summary */
  float x[6] = {0};
  ptrt_st_entry e[2] = {{"w", PTC_DTYPE_F32, 2, (const int64_t[]){2, 3}, x},
                        {"extra", PTC_DTYPE_F32, 1, (const int64_t[]){2}, x}};
  CHECK(ptrt_st_write(ctx, file("bad.safetensors"), e, 2) == 0);
  CHECK(ptrt_load_weights(ctx, file("bad.safetensors"), u) == -1);
  const char *d = ptc_ctx_diag_text(ctx);
  CHECK_MSG(strstr(d, "tensor 'w' is F32[2,3], but the parameter is F32[3,2]") &&
                strstr(d, "has no tensor for the parameter 'b'") &&
                strstr(d, "tensor 'extra' is not a parameter of the model") &&
                strstr(d, "3 problems above"),
            "%s", d);
  /* a checkpoint carries the state and the step; weights are not one */
  ptrt_vars_data(v, 2)[5] = 0.25f;
  CHECK(ptrt_save_checkpoint(ctx, file("ck.safetensors"), v, 17) == 0);
  int64_t step = -1;
  CHECK(ptrt_load_checkpoint(ctx, file("ck.safetensors"), u, &step) == 0 && step == 17);
  CHECK(memcmp(ptrt_vars_data(u, 2), ptrt_vars_data(v, 2), 24) == 0);
  ptrt_st *ck = ptrt_st_open(ctx, file("ck.safetensors"));
  CHECK(ck && ptrt_st_find(ck, "w.m") && strcmp(ptrt_st_step(ck), "17") == 0);
  ptrt_st_close(ck);
  CHECK(ptrt_load_checkpoint(ctx, file("w.safetensors"), u, &step) == -1);
  CHECK_MSG(strstr(ptc_ctx_diag_text(ctx), "not a checkpoint"), "%s", ptc_ctx_diag_text(ctx));
  ptrt_vars_destroy(v);
  ptrt_vars_destroy(u);
  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

int main(void) {
  scratch_init("test_rt_st");
  test_format();
  test_bad_files();
  test_weights();
  scratch_fini();
  return test_report("test_rt_safetensors");
}
