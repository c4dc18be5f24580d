/* test_ir.c -- unit tests of the IR library core: arena, buffers and float
 * printing, diagnostics, mesh parsing, shardings, the builder's shape rules
 * and errors, and the verifier. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "test.h"

static void test_arena_and_buf(void) {
  ptc_arena a;
  ptc_arena_init(&a);
  char *big = ptc_arena_alloc(&a, 1 << 20); /* bigger than a chunk */
  big[(1 << 20) - 1] = 1;
  char *s = ptc_arena_strdup(&a, "hello");
  CHECK(strcmp(s, "hello") == 0);
  for (int i = 0; i < 10000; i++) {
    int64_t *p = ptc_arena_alloc(&a, 24);
    CHECK(((uintptr_t)p & 15) == 0);
    CHECK(p[0] == 0 && p[1] == 0 && p[2] == 0);
  }
  ptc_arena_fini(&a);

  static const double vals[] = {0.02, 1e-5, 1.0, 2.0, -3.5, 0.1, 1e300, 5e-324,
                                123456789.0, 0.0, 1.0 / 3};
  for (int i = 0; i < PTC_ARRAY_LEN(vals); i++) {
    ptc_buf b;
    ptc_buf_init(&b);
    ptc_buf_put_double(&b, vals[i]);
    CHECK_MSG(strtod(b.data, NULL) == vals[i], "%s does not read back", b.data);
    CHECK_MSG(strpbrk(b.data, ".e") != NULL, "%s looks like an integer", b.data);
    ptc_buf_fini(&b);
  }
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_buf_put_double(&b, 0.02);
  CHECK_STR(b.data, "0.02");
  b.len = 0;
  ptc_buf_put_double(&b, 1e-5);
  CHECK_STR(b.data, "1e-05");
  b.len = 0;
  ptc_buf_put_double(&b, 2);
  CHECK_STR(b.data, "2.0");
  b.len = 0;
  ptc_buf_put_double(&b, -INFINITY);
  CHECK_STR(b.data, "-inf");
  ptc_buf_fini(&b);

  int64_t r;
  CHECK(!ptc_mul_ovf(INT64_MAX / 2, 3, &r));
  CHECK(ptc_mul_ovf(1 << 20, 1 << 20, &r) && r == (int64_t)1 << 40);
}

static void test_diag(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  const char *src = "const a = 1\nx = foo(a)\n";
  const char *f = ptc_ctx_add_source(ctx, "m.ptg", src, strlen(src));
  ptc_loc loc = {f, 2, 5};
  ptc_error(ctx, loc, "unknown function '%s'", "foo");
  CHECK(ptc_ctx_error_count(ctx) == 1);
  CHECK_STR(ptc_ctx_diag_text(ctx),
            "m.ptg:2:5: error: unknown function 'foo'\n"
            " 2 | x = foo(a)\n"
            "   |     ^\n");
  ptc_ctx_reset_errors(ctx);

  /* a long line is cut to a window around the caret */
  size_t n = 100000;
  char *line = malloc(n + 1);
  memset(line, 'a', n);
  memcpy(line + 50000, "BAD", 3);
  line[n] = 0;
  const char *g = ptc_ctx_add_source(ctx, "long.ptg", line, n);
  ptc_loc l2 = {g, 1, 50001};
  ptc_error(ctx, l2, "bad");
  const char *t = ptc_ctx_diag_text(ctx);
  CHECK(strlen(t) < 400);
  CHECK(strstr(t, "...") != NULL);
  CHECK(strstr(t, "BAD") != NULL);
  /* the caret sits under the B */
  const char *quoted = strstr(t, " | ");
  const char *caret_line = strstr(quoted + 1, " | ");
  CHECK(quoted && caret_line);
  size_t col_b = (size_t)(strstr(quoted, "BAD") - quoted);
  size_t col_c = (size_t)(strchr(caret_line, '^') - caret_line);
  CHECK_MSG(col_b == col_c, "caret at %zu, B at %zu", col_c, col_b);
  free(line);

  /* interning */
  CHECK(ptc_intern_cstr(ctx, "abc") == ptc_intern(ctx, "abcdef", 3));

  /* binary input */
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_check_text(ctx, "bin", "ab\ncd\0e", 7) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "bin:2:3: error: file is not text: NUL byte"));
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_check_text(ctx, "bin", "\xff", 1) == -1);
  CHECK(ptc_check_text(ctx, "ok", "h\xc3\xa9llo", 6) == 0);
  ptc_ctx_destroy(ctx);
}

static void test_mesh(void) {
  ptc_mesh m;
  char err[256];
  CHECK(ptc_mesh_parse("8", &m, err, sizeof err) == 0);
  CHECK(m.naxes == 1 && strcmp(m.axes[0].name, "dp") == 0 && m.axes[0].size == 8);
  CHECK(ptc_mesh_parse("2x4", &m, err, sizeof err) == 0);
  CHECK(m.naxes == 2 && strcmp(m.axes[1].name, "tp") == 0 && m.axes[1].size == 4);
  CHECK(ptc_mesh_parse("2x2x2", &m, err, sizeof err) == 0);
  CHECK(m.naxes == 3 && strcmp(m.axes[0].name, "pp") == 0);
  CHECK(ptc_mesh_parse("tp=2,pp=4", &m, err, sizeof err) == 0);
  CHECK(m.naxes == 2 && strcmp(m.axes[0].name, "pp") == 0 && m.axes[0].size == 4);
  CHECK(ptc_mesh_size(&m) == 8);
  ptc_buf b;
  ptc_buf_init(&b);
  ptc_mesh_print(&b, &m);
  CHECK_STR(b.data, "mesh<pp=4, tp=2>");
  ptc_buf_fini(&b);
  static const char *bad[] = {"", "2x", "x2", "0", "2x0", "2x2x2x2", "pp=2,pp=2",
                              "xx=2", "dp", "dp=", "dp=2,", "2y4",
                              "99999999999999999999999", "65536x65536"};
  for (int i = 0; i < PTC_ARRAY_LEN(bad); i++)
    CHECK_MSG(ptc_mesh_parse(bad[i], &m, err, sizeof err) == -1 && err[0],
              "mesh '%s' should be rejected", bad[i]);
}

static ptc_type T(ptc_dtype d, int rank, ...) {
  ptc_type t = {.dtype = d, .rank = rank};
  va_list ap;
  va_start(ap, rank);
  for (int i = 0; i < rank; i++) t.dims[i] = va_arg(ap, int);
  va_end(ap);
  return t;
}

static void test_build(void) {
  ptc_ctx *ctx = ptc_ctx_create();
  ptc_ctx_set_diag_capture(ctx, true);
  ptc_module *m = ptc_module_create(ctx, "t");
  char err[128];
  CHECK(ptc_mesh_parse("2x4", &m->mesh, err, sizeof err) == 0);
  ptc_type wt = T(PTC_DTYPE_F32, 2, 64, 256);
  ptc_init init = {.kind = PTC_INIT_NORMAL, .std = 0.02};
  int32_t pw = ptc_module_add_param(m, "w", &wt, init, ptc_loc_unknown);
  CHECK(pw == 0);
  CHECK(ptc_module_add_param(m, "w", &wt, init, ptc_loc_unknown) == -1);
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_module_param_count(m) == 64 * 256);

  ptc_func *f = ptc_module_add_func(m, "forward", ptc_loc_unknown);
  ptc_type xt = T(PTC_DTYPE_F32, 3, 8, 16, 64);
  int32_t x = ptc_func_add_arg(f, "x", &xt, NULL);
  int32_t w = ptc_func_param_value(f, pw);
  CHECK(ptc_func_param_value(f, pw) == w);

  int32_t in[3] = {x, w};
  int32_t y = ptc_build1(f, PTC_OP_MATMUL, in, 2, NULL, 0, ptc_loc_unknown);
  CHECK(y >= 0);
  ptc_type want = T(PTC_DTYPE_F32, 3, 8, 16, 256);
  CHECK(ptc_type_eq(&f->values[y].type, &want));

  /* contracting mismatch: x @ x */
  in[1] = x;
  CHECK(ptc_build1(f, PTC_OP_MATMUL, in, 2, NULL, 0, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "matmul: contracting dimensions differ"));
  ptc_ctx_reset_errors(ctx);

  /* transpose_b makes it fit: [8,16,64] @ [8,16,64]^T -> [8,16,16] */
  ptc_attr tb = ptc_attr_bool("transpose_b", true);
  int32_t s = ptc_build1(f, PTC_OP_MATMUL, in, 2, &tb, 1, ptc_loc_unknown);
  CHECK(s >= 0 && f->values[s].type.dims[2] == 16);

  /* arity and attributes */
  CHECK(ptc_build1(f, PTC_OP_ADD, in, 1, NULL, 0, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "op 'add' takes 2 operands, got 1"));
  ptc_ctx_reset_errors(ctx);
  ptc_attr bogus = ptc_attr_int("bogus", 1);
  CHECK(ptc_build1(f, PTC_OP_ADD, in, 2, &bogus, 1, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "takes no attributes"));
  ptc_ctx_reset_errors(ctx);
  CHECK(ptc_build1(f, PTC_OP_SOFTMAX, in, 1, NULL, 0, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "requires attribute 'axis'"));
  ptc_ctx_reset_errors(ctx);
  ptc_attr ax = ptc_attr_int("axis", 3);
  CHECK(ptc_build1(f, PTC_OP_SOFTMAX, in, 1, &ax, 1, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "axis 3 is out of range"));
  ptc_ctx_reset_errors(ctx);
  ptc_attr eps_int = ptc_attr_int("eps", 1); /* an int where a float goes */
  ptc_type gt = T(PTC_DTYPE_F32, 1, 64);
  int32_t g = ptc_func_add_arg(f, "g", &gt, NULL);
  int32_t ln_in[3] = {x, g, g};
  int32_t ln = ptc_build1(f, PTC_OP_LAYERNORM, ln_in, 3, &eps_int, 1, ptc_loc_unknown);
  CHECK(ln >= 0);
  const ptc_op *lnop = &f->ops[f->values[ln].def];
  CHECK(lnop->attrs[0].kind == PTC_ATTR_FLOAT && lnop->attrs[0].u.f == 1.0);

  /* broadcasting */
  int32_t bin[2] = {x, g};
  int32_t sum = ptc_build1(f, PTC_OP_ADD, bin, 2, NULL, 0, ptc_loc_unknown);
  CHECK(sum >= 0 && ptc_type_eq(&f->values[sum].type, &xt));
  bin[1] = y;
  CHECK(ptc_build1(f, PTC_OP_ADD, bin, 2, NULL, 0, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "do not broadcast"));
  ptc_ctx_reset_errors(ctx);

  /* reshape needs its type; element counts must agree */
  ptc_type rt = T(PTC_DTYPE_F32, 4, 8, 16, 4, 16);
  ptc_build_args ra = {.code = PTC_OP_RESHAPE, .nin = 1, .in = &x, .ngiven = 1,
                       .given = &rt};
  CHECK(ptc_build(f, &ra) >= 0);
  rt.dims[3] = 17;
  CHECK(ptc_build(f, &ra) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "different element counts"));
  ptc_ctx_reset_errors(ctx);

  /* absurd shapes are refused */
  ptc_type huge = T(PTC_DTYPE_F32, 4, 1 << 20, 1 << 20, 1 << 20, 2);
  ra.given = &huge;
  CHECK(ptc_build(f, &ra) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "more than 2^50 elements"));
  ptc_ctx_reset_errors(ctx);

  /* collectives: sharding flows through */
  ptc_sharding part = {.present = true, .partial = 2}; /* partial<tp> */
  ptc_build_args ca = {.code = PTC_OP_RESHAPE, .nin = 1, .in = &y, .ngiven = 1,
                       .given = &f->values[y].type, .given_shard = &part};
  int32_t pidx = ptc_build(f, &ca);
  CHECK(pidx >= 0);
  int32_t pv = f->ops[pidx].out[0];
  ptc_attr ar[2] = {ptc_attr_sym("axis", "tp"), ptc_attr_sym("op", "sum")};
  int32_t red = ptc_build1(f, PTC_OP_ALL_REDUCE, &pv, 1, ar, 2, ptc_loc_unknown);
  CHECK(red >= 0 && f->values[red].shard.present && f->values[red].shard.partial == 0);
  ar[0] = ptc_attr_sym("axis", "pp");
  CHECK(ptc_build1(f, PTC_OP_ALL_REDUCE, &pv, 1, ar, 2, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "axis 'pp' is not an axis of the module's mesh<dp=2, tp=4>"));
  ptc_ctx_reset_errors(ctx);
  /* reduce_scatter over tp on dim 2 (256 / 4) */
  ptc_attr rs[3] = {ptc_attr_sym("axis", "tp"), ptc_attr_int("dim", 2),
                    ptc_attr_sym("op", "sum")};
  int32_t sc = ptc_build1(f, PTC_OP_REDUCE_SCATTER, &pv, 1, rs, 3, ptc_loc_unknown);
  CHECK(sc >= 0 && f->values[sc].shard.dim_axes[2] == 2 && f->values[sc].shard.partial == 0);
  ptc_attr ag[2] = {ptc_attr_sym("axis", "tp"), ptc_attr_int("dim", 2)};
  int32_t gath = ptc_build1(f, PTC_OP_ALL_GATHER, &sc, 1, ag, 2, ptc_loc_unknown);
  CHECK(gath >= 0 && f->values[gath].shard.dim_axes[2] == 0);
  CHECK(ptc_build1(f, PTC_OP_ALL_GATHER, &gath, 1, ag, 2, ptc_loc_unknown) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "nothing to gather"));
  ptc_ctx_reset_errors(ctx);
  /* a split that does not divide */
  ptc_sharding bad = {.present = true};
  bad.dim_axes[1] = 2; /* 16 over tp=4 is fine */
  ra.given = &xt;
  ra.given_shard = &bad;
  CHECK(ptc_build(f, &ra) >= 0);
  ptc_type odd = T(PTC_DTYPE_F32, 3, 8, 18, 64);
  ptc_type odd_src = T(PTC_DTYPE_F32, 3, 8, 18, 64);
  int32_t oarg = ptc_func_add_arg(f, "o", &odd_src, NULL);
  ra.in = &oarg;
  ra.given = &odd;
  CHECK(ptc_build(f, &ra) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "does not divide evenly over 4 devices"));
  ptc_ctx_reset_errors(ctx);

  /* function must end with return matching its signature */
  CHECK(ptc_verify_module(m) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "does not end with 'return'"));
  ptc_ctx_reset_errors(ctx);
  ptc_func_add_result(f, &want, NULL);
  ptc_build_args ret = {.code = PTC_OP_RETURN, .nin = 1, .in = &x};
  CHECK(ptc_build(f, &ret) >= 0);
  CHECK(ptc_verify_module(m) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "'return' operand 0 is f32[8,16,64] but '@forward' declares f32[8,16,256]"));
  ptc_ctx_reset_errors(ctx);
  f->ops[f->nops - 1].in[0] = y;
  CHECK(ptc_verify_module(m) == 0);

  /* use before definition is caught by the verifier */
  ptc_build_args na = {.code = PTC_OP_NEG, .nin = 1, .in = &y};
  CHECK(ptc_build_at(f, 0, &na) == 0);
  CHECK(ptc_verify_module(m) == -1);
  CHECK(strstr(ptc_ctx_diag_text(ctx), "used before it is defined"));
  ptc_ctx_reset_errors(ctx);
  bool *keep = calloc((size_t)f->nops, 1);
  for (int i = 1; i < f->nops; i++) keep[i] = true;
  ptc_func_erase_ops(f, keep);
  free(keep);
  CHECK(ptc_verify_module(m) == 0);

  /* clone is deep and verifies */
  ptc_module *c = ptc_module_clone(m);
  CHECK(ptc_verify_module(c) == 0);
  CHECK(c->funcs[0]->nops == f->nops);
  ptc_module_destroy(c);

  /* costs: matmul 2*M*N*K */
  ptc_cost mc = ptc_op_cost(f, &f->ops[f->values[y].def]);
  CHECK(mc.flops == 2.0 * 8 * 16 * 256 * 64);
  CHECK(mc.bytes == 4.0 * (8 * 16 * 64 + 64 * 256 + 8 * 16 * 256));

  ptc_module_destroy(m);
  ptc_ctx_destroy(ctx);
}

static void test_op_table(void) {
  for (int i = 0; i < PTC_OP_COUNT; i++) {
    const ptc_opinfo *info = ptc_opinfo_get((ptc_opcode)i);
    CHECK(ptc_opcode_from_name(info->name, strlen(info->name)) == i);
    CHECK(info->max_in < 0 || info->max_in >= info->min_in);
  }
  CHECK(ptc_opcode_from_name("nope", 4) == -1);
  for (int i = 0; i < PTC_DTYPE_COUNT; i++) {
    const char *n = ptc_dtype_name((ptc_dtype)i);
    CHECK(ptc_dtype_from_name(n, strlen(n)) == i);
  }
}

int main(void) {
  test_arena_and_buf();
  test_diag();
  test_mesh();
  test_op_table();
  test_build();
  return test_report("test_ir");
}
