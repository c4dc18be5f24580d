/* sharding.h -- sharding rules (shard_rules.c) shared by the partitioning
 * passes (partition.c) and the checker of partitioned ops. */
#ifndef PTC_SHARDING_H
#define PTC_SHARDING_H

#include "ir/ir.h"

#define PTC_SR_MAX_FACTORS 24
#define PTC_SR_MAX_IO 12 /* operands + results */

/* The factors of one op (see shard_rules.c).  dim[f][io] is the dimension
 * factor f indexes in operand io (io < nin) or result io - nin, or -1. */
typedef struct ptc_shard_rule {
  int32_t nf;
  int8_t dim[PTC_SR_MAX_FACTORS][PTC_SR_MAX_IO];
  bool whole[PTC_SR_MAX_FACTORS];
} ptc_shard_rule;

/* Fills r for op; false when the op has no rule (collectives, transfers,
 * assign, return, or more than PTC_SR_MAX_IO operands and results). */
bool ptc_shard_rule_get(const ptc_func *f, const ptc_op *op, ptc_shard_rule *r);

#endif /* PTC_SHARDING_H */
