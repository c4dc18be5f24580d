/* ir.h -- ptir, the graph IR every part of ptc reads and writes.
 *
 * One header for the whole IR library: context and diagnostics, arena,
 * types, mesh and sharding, attributes, modules, functions, ops, the builder,
 * the verifier, the printer and the parser.
 *
 * Invariants (checked by ptc_verify_module):
 *  - A module owns everything in it through its arena (names, attributes,
 *    operand arrays) and a few growable vectors; ptc_module_destroy frees all
 *    of it at once.  Nothing in a module is freed one by one.
 *  - Values are referred to by small integer ids local to their function.
 *    A value is a function argument, an op result, or a read of a module
 *    parameter (one such value per parameter used in the function).
 *  - A function is one ordered list of ops in SSA form: every operand is
 *    defined before its use; the last op is `return`.
 *  - Types are static (dtype + shape) and carry the *global* shape; an
 *    optional sharding says how the global tensor is split over the mesh.
 *  - Every op carries the source location it came from; passes copy it.
 *
 * Errors: library functions report through ptc_error() on the module's
 * context and return a status (0 ok, -1 failed) or NULL.  Only tools/ decide
 * exit codes.  Internal bugs abort through PTC_ASSERT with file:line.
 */
#ifndef PTC_IR_H
#define PTC_IR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define PTC_VERSION_STRING "0.1.0"

/* ======================================================================
 * util.c -- assertions, arena, checked arithmetic
 * ====================================================================== */

#define PTC_ASSERT(c)                                                       \
  do {                                                                      \
    if (!(c)) ptc_fatal(__FILE__, __LINE__, "assertion failed: %s", #c);   \
  } while (0)
#define PTC_UNREACHABLE() ptc_fatal(__FILE__, __LINE__, "unreachable")
#define PTC_ARRAY_LEN(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Prints "ptc: internal error at FILE:LINE: ..." and aborts. */
_Noreturn void ptc_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* malloc/realloc/calloc that abort on exhaustion (an internal failure). */
void *ptc_xmalloc(size_t n);
void *ptc_xcalloc(size_t n, size_t size);
void *ptc_xrealloc(void *p, size_t n);

/* Bump allocator; memory is released all at once by ptc_arena_fini. */
typedef struct ptc_arena_chunk ptc_arena_chunk;
typedef struct ptc_arena {
  ptc_arena_chunk *head;
  size_t bytes; /* total handed out, for --report */
} ptc_arena;

void ptc_arena_init(ptc_arena *a);
void ptc_arena_fini(ptc_arena *a);
/* Zeroed memory, 16-byte aligned, valid until ptc_arena_fini. */
void *ptc_arena_alloc(ptc_arena *a, size_t n);
char *ptc_arena_strndup(ptc_arena *a, const char *s, size_t n);
char *ptc_arena_strdup(ptc_arena *a, const char *s);
char *ptc_arena_printf(ptc_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Overflow-checked int64 arithmetic: return false on overflow. */
bool ptc_mul_ovf(int64_t a, int64_t b, int64_t *out);
bool ptc_add_ovf(int64_t a, int64_t b, int64_t *out);

/* Growable byte buffer (heap), used by the printer and diagnostics. */
typedef struct ptc_buf {
  char *data;
  size_t len, cap;
} ptc_buf;
void ptc_buf_init(ptc_buf *b);
void ptc_buf_fini(ptc_buf *b);
void ptc_buf_put(ptc_buf *b, const char *s, size_t n);
void ptc_buf_puts(ptc_buf *b, const char *s);
void ptc_buf_printf(ptc_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Shortest decimal that reads back to exactly `v` and is never spelt like an
 * integer ("1.0", "1e-05", "inf", "-inf", "nan"). */
void ptc_buf_put_double(ptc_buf *b, double v);
/* Reads a whole file into a NUL-terminated heap buffer (caller frees);
 * NULL with errno set.  For callers that report errors themselves; see
 * ptc_read_file for the reporting variant. */
char *ptc_slurp(const char *path, size_t *len);
/* "dir/name" (heap, caller frees). */
char *ptc_path_join(const char *dir, const char *name);
/* A byte count in binary units: "512 B", "1.5 KiB", "2.1 GiB". */
void ptc_buf_put_bytes(ptc_buf *b, double bytes);
/* The same into out[0..cap) (truncated to fit). */
void ptc_bytes_text(char *out, size_t cap, double bytes);

/* ======================================================================
 * diag.c -- context, source buffers, diagnostics
 * ====================================================================== */

/* A source position.  `file` is interned in the context (pointer equality
 * means same file); line and col are 1-based; file == NULL means unknown. */
typedef struct ptc_loc {
  const char *file;
  int32_t line, col;
} ptc_loc;

typedef enum ptc_severity {
  PTC_SEV_ERROR,
  PTC_SEV_WARNING,
  PTC_SEV_NOTE,
} ptc_severity;

/* The context outlives every module made in it.  It holds interned strings,
 * source buffers (to show the offending line under a diagnostic), the
 * diagnostic stream and the error count.  Not thread-safe. */
typedef struct ptc_ctx ptc_ctx;

ptc_ctx *ptc_ctx_create(void); /* caller owns; ptc_ctx_destroy */
void ptc_ctx_destroy(ptc_ctx *ctx);
/* Where diagnostics go (default stderr). */
void ptc_ctx_set_diag_stream(ptc_ctx *ctx, FILE *f);
/* Diagnostics can also be captured instead of printed (tests, fuzzers):
 * with capture on they are appended to an internal buffer. */
void ptc_ctx_set_diag_capture(ptc_ctx *ctx, bool on);
const char *ptc_ctx_diag_text(const ptc_ctx *ctx); /* owned by ctx */
int ptc_ctx_error_count(const ptc_ctx *ctx);
void ptc_ctx_reset_errors(ptc_ctx *ctx);

/* Interned copy of s[0..n), owned by ctx; equal strings give equal pointers. */
const char *ptc_intern(ptc_ctx *ctx, const char *s, size_t n);
const char *ptc_intern_cstr(ptc_ctx *ctx, const char *s);

/* Registers a source buffer under `name` (copied) so diagnostics can quote
 * its lines; returns the interned name.  A location in a file never
 * registered is quoted by reading that file on demand, when it exists. */
const char *ptc_ctx_add_source(ptc_ctx *ctx, const char *name,
                               const char *text, size_t len);

/* "file:line:col: error: msg" + the source line + a caret under col.
 * Long lines are trimmed around the caret.  Unknown locations print
 * "ptc: error: msg". */
void ptc_diag(ptc_ctx *ctx, ptc_severity sev, ptc_loc loc, const char *fmt,
              ...) __attribute__((format(printf, 4, 5)));
void ptc_vdiag(ptc_ctx *ctx, ptc_severity sev, ptc_loc loc, const char *fmt,
               va_list ap);
#define ptc_error(ctx, loc, ...) ptc_diag((ctx), PTC_SEV_ERROR, (loc), __VA_ARGS__)
#define ptc_warning(ctx, loc, ...) ptc_diag((ctx), PTC_SEV_WARNING, (loc), __VA_ARGS__)
#define ptc_note(ctx, loc, ...) ptc_diag((ctx), PTC_SEV_NOTE, (loc), __VA_ARGS__)

extern const ptc_loc ptc_loc_unknown;

/* Reads a whole file into a NUL-terminated heap buffer (caller frees).
 * Reports a diagnostic naming the file on failure and returns NULL. */
char *ptc_read_file(ptc_ctx *ctx, const char *path, size_t *len_out);

/* Checks that text is something a parser should look at: not binary (no NUL,
 * valid UTF-8).  Reports at the first bad byte and returns -1. */
int ptc_check_text(ptc_ctx *ctx, const char *name, const char *text,
                   size_t len);

/* ======================================================================
 * types.c -- dtypes, shapes, mesh, sharding
 * ====================================================================== */

typedef enum ptc_dtype {
  PTC_DTYPE_F32,
  PTC_DTYPE_F64,
  PTC_DTYPE_BF16,
  PTC_DTYPE_F16,
  PTC_DTYPE_I64,
  PTC_DTYPE_I32,
  PTC_DTYPE_I8,
  PTC_DTYPE_BOOL,
  PTC_DTYPE_COUNT
} ptc_dtype;

const char *ptc_dtype_name(ptc_dtype t);              /* "f32" */
int ptc_dtype_from_name(const char *s, size_t n);     /* -1 if unknown */
int ptc_dtype_size(ptc_dtype t);                      /* bytes */
bool ptc_dtype_is_float(ptc_dtype t);

#define PTC_MAX_RANK 8
/* Upper bound on any tensor's element count: keeps byte counts in int64. */
#define PTC_MAX_ELEMENTS (INT64_C(1) << 50)

typedef struct ptc_type {
  ptc_dtype dtype;
  int32_t rank; /* 0 = scalar */
  int64_t dims[PTC_MAX_RANK];
} ptc_type;

int64_t ptc_type_numel(const ptc_type *t);
int64_t ptc_type_bytes(const ptc_type *t);
bool ptc_type_eq(const ptc_type *a, const ptc_type *b);
void ptc_type_print(ptc_buf *b, const ptc_type *t); /* "f32[8,1024]" */

/* Mesh: named axes in canonical order pp, dp, tp (only those given). */
#define PTC_MAX_MESH_AXES 4
typedef struct ptc_mesh {
  int32_t naxes; /* 0: one device, no mesh */
  struct {
    char name[8];
    int64_t size;
  } axes[PTC_MAX_MESH_AXES];
} ptc_mesh;

/* Parses "8", "2x4", "2x2x2", "pp=2,dp=2,tp=2".  On failure writes a
 * message (what is wrong and what is accepted) to err and returns -1. */
int ptc_mesh_parse(const char *s, ptc_mesh *out, char *err, size_t errlen);
int ptc_mesh_axis(const ptc_mesh *m, const char *name, size_t n); /* -1 */
int64_t ptc_mesh_size(const ptc_mesh *m); /* product; 1 without mesh */
void ptc_mesh_print(ptc_buf *b, const ptc_mesh *m); /* "mesh<dp=2, tp=4>" */

/* Sharding of a value over the mesh, GSPMD style.  dim_axes[d] is a bitmask
 * of mesh axes dimension d is split over (major axis = lower mesh index);
 * 0 means replicated.  partial is a bitmask of axes over which the value is
 * a partial sum.  Text: "shard<dp,_,(dp,tp)> partial<tp>". */
typedef struct ptc_sharding {
  bool present;
  uint8_t dim_axes[PTC_MAX_RANK];
  uint8_t partial;
} ptc_sharding;

void ptc_sharding_print(ptc_buf *b, const ptc_sharding *s, int32_t rank,
                        const ptc_mesh *m); /* nothing when !present */
bool ptc_sharding_eq(const ptc_sharding *a, const ptc_sharding *b,
                     int32_t rank);

/* The local view.  Rank r of the world sits at mesh coordinates
 * ptc_mesh_coord(m, r): row-major over the axes in mesh order (pp, dp, tp),
 * the last axis fastest, so tp groups are runs of consecutive ranks.  A
 * dimension split over the axes `axes` is cut into ptc_shard_parts equal
 * contiguous pieces, and the device at `coord` holds piece
 * ptc_shard_index(m, axes, coord): a mixed-radix number whose major digit is
 * the lowest mesh axis.  So splitting a piece further over an axis minor to
 * all of its axes cuts the device's contiguous block into contiguous blocks,
 * which is the invariant all_gather, reduce_scatter and shard keep. */
int64_t ptc_shard_parts(const ptc_mesh *m, uint8_t axes);
int64_t ptc_shard_index(const ptc_mesh *m, uint8_t axes, const int32_t *coord);
void ptc_mesh_coord(const ptc_mesh *m, int64_t rank, int32_t *coord);
int64_t ptc_mesh_rank(const ptc_mesh *m, const int32_t *coord);
/* The shape one device holds: each split dimension divided by its parts
 * (s may be NULL or absent: the global type). */
void ptc_local_type(const ptc_mesh *m, const ptc_type *global, const ptc_sharding *s,
                    ptc_type *local);

/* ======================================================================
 * Attributes
 * ====================================================================== */

typedef enum ptc_attr_kind {
  PTC_ATTR_INT,   /* 3 */
  PTC_ATTR_FLOAT, /* 1e-05, 2.0 */
  PTC_ATTR_BOOL,  /* true */
  PTC_ATTR_STR,   /* "text" */
  PTC_ATTR_SYM,   /* tp, sum (a bare identifier) */
  PTC_ATTR_INTS,  /* [0, 2, 1, 3] */
  PTC_ATTR_DTYPE, /* bf16 */
} ptc_attr_kind;

typedef struct ptc_attr {
  const char *name; /* interned */
  ptc_attr_kind kind;
  union {
    int64_t i;
    double f;
    bool b;
    const char *s; /* STR and SYM; arena */
    struct {
      int32_t n;
      int64_t *v; /* arena */
    } ints;
    ptc_dtype dtype;
  } u;
} ptc_attr;

/* Attribute lists on ops are kept sorted by name (so text order does not
 * matter and printing is canonical). */

/* ======================================================================
 * Op table (ops.def) and ops.c: verifier / shape rule / cost per op
 * ====================================================================== */

typedef enum ptc_opcode {
#define PTC_OP(E, n, mi, ma, no, fl, at) PTC_OP_##E,
#include "ops.def"
#undef PTC_OP
  PTC_OP_COUNT
} ptc_opcode;

enum {
  PTC_OPF_PURE = 1u << 0,        /* no side effects: CSE/DCE may touch it */
  PTC_OPF_ELEMENTWISE = 1u << 1, /* element-wise with broadcasting */
  PTC_OPF_COLLECTIVE = 1u << 2,  /* communicates over the mesh */
  PTC_OPF_SIDE_EFFECT = 1u << 3, /* never removed */
  PTC_OPF_TERMINATOR = 1u << 4,  /* must be last */
  PTC_OPF_TYPE_GIVEN = 1u << 5,  /* result type is stated, not inferred */
};

typedef struct ptc_opinfo {
  const char *name;
  int32_t min_in, max_in; /* max_in -1: variadic */
  int32_t nout;
  uint32_t flags;
  const char *attrs; /* schema, see ops.def */
} ptc_opinfo;

const ptc_opinfo *ptc_opinfo_get(ptc_opcode op);
int ptc_opcode_from_name(const char *s, size_t n); /* -1 if unknown */

/* ======================================================================
 * Module, params, functions, values, ops
 * ====================================================================== */

typedef enum ptc_init_kind {
  PTC_INIT_NONE,   /* no init given (e.g. loaded from a checkpoint) */
  PTC_INIT_ZEROS,  /* init zeros */
  PTC_INIT_ONES,   /* init ones */
  PTC_INIT_NORMAL, /* init normal(std) */
  PTC_INIT_SCALED, /* init scaled(std, depth): normal(std / sqrt(2*depth)) */
  PTC_INIT_COPY,   /* init copy(@from): the cast of another variable */
} ptc_init_kind;

typedef struct ptc_init {
  ptc_init_kind kind;
  double std;
  int64_t depth;
  const char *from; /* PTC_INIT_COPY: the source variable's name (arena) */
} ptc_init;

/* A module variable: a trainable parameter ("param" in text) or training
 * state that is not trained, such as optimizer moments ("state"). */
typedef struct ptc_param {
  const char *name; /* arena, unique in module, e.g. "h0.attn.qkv.w" */
  bool trainable;   /* set by ptc_module_add_param; false for state */
  ptc_type type;
  ptc_sharding shard;
  ptc_init init;
  ptc_loc loc;
} ptc_param;

typedef enum ptc_value_kind {
  PTC_VALUE_ARG,   /* def = argument index */
  PTC_VALUE_OP,    /* def = op index, res = result index */
  PTC_VALUE_PARAM, /* def = param index in the module */
} ptc_value_kind;

typedef struct ptc_value {
  ptc_type type;
  ptc_sharding shard;
  ptc_value_kind kind;
  int32_t def, res;
  const char *name; /* arena; NULL: printed as %N (numbered in order) */
} ptc_value;

typedef struct ptc_op {
  ptc_opcode code;
  int32_t nin, nout;
  int32_t *in;  /* value ids, arena */
  int32_t *out; /* value ids, arena */
  int32_t nattr;
  ptc_attr *attrs; /* arena, sorted by name */
  ptc_loc loc;
} ptc_op;

typedef struct ptc_module ptc_module;

typedef struct ptc_func {
  ptc_module *mod;
  const char *name; /* arena */
  ptc_loc loc;
  int32_t nargs;
  int32_t *args; /* value ids of arguments (heap) */
  int32_t nresults;
  ptc_type *result_types; /* heap: the signature's "-> ..." */
  ptc_sharding *result_shards;
  /* ops in program order (heap vector; indices change on insert/erase) */
  ptc_op *ops;
  int32_t nops, cap_ops;
  /* value table (heap vector; ids are stable) */
  ptc_value *values;
  int32_t nvalues, cap_values;
  /* param index -> value id of its read in this function, or -1 (heap) */
  int32_t *param_value;
  int32_t cap_param_value;
} ptc_func;

struct ptc_module {
  ptc_ctx *ctx;
  ptc_arena arena;
  const char *name; /* arena */
  ptc_loc loc;
  ptc_mesh mesh;
  int32_t nattr; /* module attributes, sorted by name */
  ptc_attr *attrs;
  ptc_param *params; /* heap vector */
  int32_t nparams, cap_params;
  int32_t *param_hash; /* open-addressing index of params by name (heap) */
  int32_t cap_param_hash;
  ptc_func **funcs; /* heap vector of heap funcs */
  int32_t nfuncs, cap_funcs;
};

/* ---- module.c ---------------------------------------------------------- */

/* Caller owns the module; destroy frees everything it holds. */
ptc_module *ptc_module_create(ptc_ctx *ctx, const char *name);
void ptc_module_destroy(ptc_module *m);

/* Adds a trainable parameter (set ->trainable = false after for state);
 * returns its index, or -1 (duplicate name: reported). */
int32_t ptc_module_add_param(ptc_module *m, const char *name,
                             const ptc_type *type, ptc_init init, ptc_loc loc);
int32_t ptc_module_find_param(const ptc_module *m, const char *name); /* -1 */
/* Total element count of all trainable parameters (global, unsharded). */
int64_t ptc_module_param_count(const ptc_module *m);

/* Sets (or replaces) a module attribute; the attr is copied into the arena. */
void ptc_module_set_attr(ptc_module *m, const ptc_attr *a);
const ptc_attr *ptc_module_get_attr(const ptc_module *m, const char *name);

/* Functions are owned by the module. */
ptc_func *ptc_module_add_func(ptc_module *m, const char *name, ptc_loc loc);
ptc_func *ptc_module_find_func(const ptc_module *m, const char *name);
/* Removes and frees f (a function of m). */
void ptc_module_remove_func(ptc_module *m, ptc_func *f);

/* Deep copy (same ctx); caller owns the result. */
ptc_module *ptc_module_clone(const ptc_module *m);
/* A copy whose types are what one device holds (ptc_local_type of every
 * param, value and result; shardings kept, so a kernel can still tell
 * which dimensions are split and where its piece starts).  Identical on
 * every device of an SPMD module, so the runtime, the memory planner and
 * the kernel generator all run on it.  Not meant to be verified or printed:
 * shape rules speak of global shapes.  Caller owns the result. */
ptc_module *ptc_module_localize(const ptc_module *m);

/* ---- func.c ------------------------------------------------------------ */

/* Adds a function argument; returns its value id. name may be NULL. */
int32_t ptc_func_add_arg(ptc_func *f, const char *name, const ptc_type *type,
                         const ptc_sharding *shard);
/* Declares one result type of the function signature. */
void ptc_func_add_result(ptc_func *f, const ptc_type *type,
                         const ptc_sharding *shard);
/* Value id that reads module param p in this function (made on first use). */
int32_t ptc_func_param_value(ptc_func *f, int32_t p);

static inline ptc_value *ptc_func_value(ptc_func *f, int32_t id) {
  return &f->values[id];
}

/* Builds an op and appends it (ptc_build) or inserts it before op index
 * `pos` (ptc_build_at).  The result types and shardings are computed by the
 * op's shape rule; for PTC_OPF_TYPE_GIVEN ops `given` must supply them, and
 * for others `given` (may be NULL) is checked against what the rule infers.
 * Attributes are copied and sorted.  On error (bad arity, attribute, shapes)
 * reports at `loc` and returns -1 and the function is unchanged; otherwise
 * returns the new op's index.  Result value ids: f->ops[idx].out. */
typedef struct ptc_build_args {
  ptc_opcode code;
  int32_t nin;
  const int32_t *in;
  int32_t nattr;
  const ptc_attr *attrs;
  int32_t ngiven;
  const ptc_type *given;         /* may be NULL */
  const ptc_sharding *given_shard; /* may be NULL: shardings inferred/none */
  ptc_loc loc;
} ptc_build_args;

int32_t ptc_build(ptc_func *f, const ptc_build_args *a);
int32_t ptc_build_at(ptc_func *f, int32_t pos, const ptc_build_args *a);

/* Convenience: result value id of a single-result op build, or -1. */
int32_t ptc_build1(ptc_func *f, ptc_opcode code, const int32_t *in,
                   int32_t nin, const ptc_attr *attrs, int32_t nattr,
                   ptc_loc loc);

/* Replaces every use of value `from` with `to` in ops at index >= start. */
void ptc_func_replace_uses(ptc_func *f, int32_t from, int32_t to,
                           int32_t start);
/* Removes ops for which keep[i] is false (compacts; fixes value defs). */
void ptc_func_erase_ops(ptc_func *f, const bool *keep);
/* Recomputes value->def/res for op results after ops moved. */
void ptc_func_reindex(ptc_func *f);

/* Attribute access on ops (NULL when absent). */
const ptc_attr *ptc_op_attr(const ptc_op *op, const char *name);
int64_t ptc_op_attr_int(const ptc_op *op, const char *name, int64_t dflt);
double ptc_op_attr_float(const ptc_op *op, const char *name, double dflt);
bool ptc_op_attr_bool(const ptc_op *op, const char *name, bool dflt);

/* Attribute constructors (name interned by the caller's ctx, or any string
 * that outlives the build call: builders copy). */
ptc_attr ptc_attr_int(const char *name, int64_t v);
ptc_attr ptc_attr_float(const char *name, double v);
ptc_attr ptc_attr_bool(const char *name, bool v);
ptc_attr ptc_attr_sym(const char *name, const char *s);
ptc_attr ptc_attr_str(const char *name, const char *s);
ptc_attr ptc_attr_ints(const char *name, const int64_t *v, int32_t n);
ptc_attr ptc_attr_dtype(const char *name, ptc_dtype t);
bool ptc_attr_eq(const ptc_attr *a, const ptc_attr *b);

/* ---- ops.c: shape rules, verifier, cost -------------------------------- */

/* What a shape rule sees.  Rules read inputs/attrs and write out types and
 * shardings; on error they call ptc_error at loc and return -1. */
typedef struct ptc_infer {
  ptc_ctx *ctx;
  const ptc_module *mod;
  ptc_opcode code;
  ptc_loc loc;
  int32_t nin;
  const ptc_type *in;          /* [nin] */
  const ptc_sharding *in_shard; /* [nin] */
  int32_t nattr;
  const ptc_attr *attrs;
  int32_t nout;
  ptc_type *out;            /* [nout]; for TYPE_GIVEN ops: pre-filled */
  ptc_sharding *out_shard;  /* [nout]; pre-filled with given or absent */
} ptc_infer;

/* Runs the op's shape rule (arity and attributes were checked by the builder).
 * Returns 0 or -1 (reported). */
int ptc_op_infer(ptc_infer *inf);

typedef struct ptc_cost {
  double flops; /* floating-point operations (multiply-add = 2) */
  double bytes; /* bytes read + written, unfused */
} ptc_cost;

/* Cost of one op of f (global, i.e. for the whole unsharded tensor). */
ptc_cost ptc_op_cost(const ptc_func *f, const ptc_op *op);
/* FLOPs of one call of f: ptc_op_cost summed over its ops (of the shapes f
 * states: a localized function gives one rank's). */
double ptc_func_flops(const ptc_func *f);
/* The same with recomputed ops (recompute = true) counted again: what the
 * hardware executes.  ptc_func_flops leaves them out: the model's FLOPs,
 * which MFU is measured by. */
double ptc_func_hw_flops(const ptc_func *f);

/* ---- shard_rules.c: how each op may be split ------------------------------ */

#define PTC_SR_MAX_FACTORS 24
#define PTC_SR_MAX_IO 12 /* operands + results */

/* The factors of one op (see shard_rules.c).  dim[f][io] is the dimension
 * factor f indexes in operand io (io < nin) or result io - nin, or -1. */
typedef struct ptc_shard_rule {
  int32_t nf;
  int8_t dim[PTC_SR_MAX_FACTORS][PTC_SR_MAX_IO];
  bool whole[PTC_SR_MAX_FACTORS];
  /* split allowed; the op reduces over it itself, so results lacking it
   * are whole, not partial (vocabulary-parallel cross-entropy) */
  bool internal[PTC_SR_MAX_FACTORS];
} ptc_shard_rule;

/* Fills r for op; false when the op has no rule (collectives, transfers,
 * assign, return, or more than PTC_SR_MAX_IO operands and results). */
bool ptc_shard_rule_get(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r);

/* Checks op of a partitioned function: its operands' layouts must agree on
 * every factor (no operand partial, no axis on two factors, no split of a
 * whole factor) and its results must be laid out as those factors make
 * them; `assign` must write the variable's stored layout and `return`
 * whole values.  Reports at the op and returns -1 when not. */
int ptc_shard_check_op(ptc_func *f, const ptc_op *op);

/* Bytes one device sends per call of f, per mesh axis, under the ring
 * model, and the number of collectives per axis (sent, calls: arrays of
 * PTC_MAX_MESH_AXES): all_reduce of B local bytes over n devices sends
 * 2(n-1)/n*B, all_gather (n-1)/n of its local result, reduce_scatter
 * (n-1)/n of its local operand, broadcast (n-1)/n*B, send B (counted on
 * pp); shard sends nothing.  The runtime's communicators count the same
 * way from the calls they make, so the two can be compared. */
void ptc_comm_volume(const ptc_func *f, double *sent, int64_t *calls);

/* ---- verify.c ---------------------------------------------------------- */

/* Checks every invariant of the module; reports the first broken one with
 * the op's location and returns -1, else 0. */
int ptc_verify_module(ptc_module *m);
int ptc_verify_func(ptc_func *f);

/* ======================================================================
 * print.c / parse.c -- the textual form (.ptir)
 * ====================================================================== */

/* Appends the module's canonical text.  print(parse(print(m))) == print(m). */
void ptc_print_module(ptc_buf *b, const ptc_module *m);
/* Writes to a FILE (returns -1 on write error). */
int ptc_write_module(FILE *f, const ptc_module *m);

/* Parses .ptir text; `name` is the file name for diagnostics.  Returns a
 * module the caller owns, or NULL after reporting the first error with
 * file:line:col.  The text need not be NUL-terminated. */
ptc_module *ptc_parse_module(ptc_ctx *ctx, const char *name, const char *text,
                             size_t len);

/* ======================================================================
 * eval.c -- the reference evaluator (double precision, global view)
 * ====================================================================== */

/* A host tensor for the evaluator: every dtype is held as double. */
typedef struct ptc_tensor {
  ptc_type type;
  double *data; /* heap, numel(type) elements */
} ptc_tensor;

ptc_tensor ptc_tensor_new(const ptc_type *t); /* zeroed; ptc_tensor_free */
void ptc_tensor_free(ptc_tensor *t);
/* Fills with values uniform in [lo, hi) from a counter-based generator keyed
 * by (seed, element index); integers are floored, floats rounded to the
 * dtype. */
void ptc_tensor_fill_random(ptc_tensor *t, uint64_t seed, double lo, double hi);

/* Runs f on `args` (f->nargs tensors) and `params` (one per module param,
 * indexed like m->params; only those f reads or assigns are touched; an
 * `assign` overwrites its variable's tensor when f returns).  On success
 * fills results[0..nresults) with tensors the caller frees and returns 0;
 * a runtime error (an index out of range) is reported at the op and -1
 * returned.  Collectives are the identity (they change layout, not value);
 * send/recv are refused. */
int ptc_eval_func(ptc_func *f, const ptc_tensor *args, ptc_tensor *params,
                  ptc_tensor *results);

/* ======================================================================
 * group.c -- fused groups: what the `fuse` pass marks and codegen compiles
 * ====================================================================== */

/* A group is a run of contiguous ops of one function that carry the same
 * integer attribute `group = N` (the generic attribute every op accepts;
 * N is unique in the module).  It becomes one kernel, `ptc_k<N>`, that
 * computes every op of the run in one pass over an iteration space.
 * Everything about a group -- its inputs, outputs, iteration space, how
 * each value is computed -- is derived from the IR by ptc_group_analyze,
 * so the fuse pass, the verifier, codegen and the runtime agree by
 * construction.  docs/fusion.md describes the kernel ABI. */

#define PTC_GROUP_ATTR "group"

typedef enum ptc_group_kind {
  PTC_GROUP_ELEMENTWISE, /* work items: the elements of the iteration shape */
  PTC_GROUP_ROWWISE,     /* work items: its rows (every dim but the last) */
} ptc_group_kind;

/* How often a value of the group is computed inside the kernel. */
typedef enum ptc_group_level {
  PTC_GROUP_SCALAR = 0, /* once per kernel call: numel 1, or a splat constant */
  PTC_GROUP_ROW = 1,    /* once per row (ROWWISE): a row reduction and what follows */
  PTC_GROUP_ELEM = 2,   /* once per element */
  PTC_GROUP_ACC = 3,    /* accumulated over the work items (a reduction across
                           rows or elements); not readable inside the group */
} ptc_group_level;

/* How an output is written.  STORE: every element exactly once.  SUM /
 * MAX: the kernel combines its contribution into what the buffer holds,
 * so the caller fills the buffer with 0 (SUM) or -inf (MAX) first, and
 * when it splits the work gives each part its own buffer and combines
 * them after (runtime/fused.c). */
typedef enum ptc_group_combine {
  PTC_GROUP_STORE,
  PTC_GROUP_SUM,
  PTC_GROUP_MAX,
} ptc_group_combine;

/* How an element-wise op inside a ROWWISE group indexes its operands:
 * against the iteration shape (FULL), or against its rows (ROW_MODE: the
 * op works on per-row values shaped like the iteration shape minus its
 * last dim, such as cross_entropy's targets). */
enum { PTC_GROUP_MODE_FULL = 0, PTC_GROUP_MODE_ROW = 1 };

typedef struct ptc_group_sig {
  int64_t id;            /* N of `group = N` (-1 for an unnamed trial) */
  ptc_group_kind kind;
  int32_t first, end;    /* the group's ops: f->ops[first .. end) */
  ptc_type iter;         /* the iteration shape */
  int64_t row_len;       /* ROWWISE: iter's last dim; ELEMENTWISE: 1 */
  int64_t work;          /* work items: elements (ELEMENTWISE) or rows */
  int32_t nin, nout;
  int32_t *in;           /* [nin] external inputs in order of first use
                            (parameter reads included) */
  int32_t *out;          /* [nout] results read after the group (by later
                            ops, `return` or `assign`), in definition order */
  ptc_group_combine *combine; /* [nout] */
  int8_t *level;         /* [f->nvalues] ptc_group_level of every value the
                            group defines or reads; -1 for the others */
  uint8_t *op_mode;      /* [end - first] PTC_GROUP_MODE_* per op */
  double flops;          /* ptc_op_cost of the ops, summed */
  double bytes;          /* fused traffic: inputs read once, outputs written once */
} ptc_group_sig;

/* The group id of op, or -1 when it has no `group` attribute. */
int64_t ptc_op_group(const ptc_op *op);
/* Whether op is of a kind a group can hold (element-wise ops and their
 * gradients, adamw/sgd, constants, broadcast_to, reductions, and the row
 * ops softmax/layernorm/rmsnorm/cross_entropy and their gradients over the
 * last axis) with dtypes the kernels handle (f32; i32/i64 for integer
 * arithmetic and indices).  Whether it fits a particular group is
 * ptc_group_analyze's question. */
bool ptc_op_fusible(const ptc_func *f, const ptc_op *op);

/* Analyzes ops [first, end) of f as one group.  last_use (may be NULL:
 * computed) gives, per value id, the index of the last op reading it or
 * -1.  On success fills *sig (release with ptc_group_sig_fini) and returns
 * 0.  When the ops cannot form one kernel returns -1, writes the reason to
 * why (may be NULL) and the offending op's index to *bad_op (may be NULL);
 * nothing is reported and *sig holds nothing to release. */
int ptc_group_analyze(ptc_func *f, int32_t first, int32_t end, const int32_t *last_use,
                      ptc_group_sig *sig, char *why, size_t whylen, int32_t *bad_op);

/* Op `op` alone as one GPU kernel (codegen/cuda_emit.c, runtime/cuda_exec.c:
 * a fusible op the fuse pass left out).  As ptc_group_analyze, but an
 * accumulated result may be 16-bit (the CUDA kernel sums it in an f32
 * workspace the runtime rounds once) and may reduce by any ratio. */
int ptc_group_analyze_solo(ptc_func *f, int32_t op, const int32_t *last_use, ptc_group_sig *sig);

/* The signature of the group whose first op is f->ops[first_op] (it ends
 * where the attribute's value changes).  Reports an error at the
 * offending op's location and returns -1 when the run is not a valid
 * group. */
int ptc_group_signature(ptc_func *f, int32_t first_op, ptc_group_sig *sig);
void ptc_group_sig_fini(ptc_group_sig *sig);

/* Per value id, the index of the last op of f that reads it, or -1
 * (heap, caller frees). */
int32_t *ptc_func_last_use(const ptc_func *f);

/* Checks every group of f: contiguous, unique ids, each a valid kernel.
 * Reports the first problem at an op's location; returns 0 or -1.  The
 * verifier runs it. */
int ptc_group_verify(ptc_func *f);

/* The kernel symbol of group id: "ptc_k<id>". */
void ptc_group_kernel_name(int64_t id, char *buf, size_t len);

/* ======================================================================
 * dot.c -- Graphviz
 * ====================================================================== */
void ptc_print_dot(ptc_buf *b, const ptc_module *m);

#endif /* PTC_IR_H */
