/* internal.h -- helpers shared by the files of ir/ and nothing else. */
#ifndef PTC_IR_INTERNAL_H
#define PTC_IR_INTERNAL_H

#include "ir.h"

/* Copies n attrs into a fresh arena array sorted by name.  Returns -1 and
 * sets *dup to the index (in src) of a repeated name. */
int32_t ptc__attrs_copy_sorted(ptc_arena *a, const ptc_attr *src, int32_t n,
                               ptc_attr **out, int32_t *dup);

/* Checks that a sharding fits a type on the module's mesh: axes exist, an
 * axis splits at most one dimension and is not also partial, and each split
 * dimension divides by its axes' sizes.  `what` names the value for the
 * message ("result 0 of matmul", "parameter 'wte'").  Reports at loc. */
int ptc__check_sharding(const ptc_module *m, ptc_loc loc, const ptc_type *t,
                        const ptc_sharding *s, const char *what);

/* Checks a type's shape: rank, non-negative dims, element count within
 * PTC_MAX_ELEMENTS.  Reports at loc. */
int ptc__check_type(ptc_ctx *ctx, ptc_loc loc, const ptc_type *t,
                    const char *what);

/* Runs an op's shape rule and checks given types/shardings (func.c);
 * shared by the builder and the verifier. */
int ptc__op_check(ptc_func *f, const ptc_build_args *a, const ptc_attr *attrs,
                  ptc_type *out_t, ptc_sharding *out_s);

/* Checks attributes (sorted) against the op's schema; converts int to float
 * where a number is expected. */
int ptc__check_attrs(ptc_ctx *ctx, ptc_loc loc, const ptc_opinfo *info,
                     ptc_attr *attrs, int32_t nattr);

/* The kind letter of an attribute every op accepts, whatever its schema
 * (`group = N`, the fused group an op belongs to), or 0. */
char ptc__generic_attr_kind(const char *name, size_t n);

#endif
