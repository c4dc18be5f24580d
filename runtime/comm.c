/* comm.c -- communicators.  A communicator is a table of function pointers
 * (ptrt.h), chosen when ptrun starts, so an MPI (or NCCL) implementation
 * slots in without the kernels knowing.  This file holds the one-rank
 * communicator: every collective over a mesh of one device is the identity
 * (the value does not change; only its layout would), and pipeline
 * transfers have no peer. */
#include <string.h>

#include "runtime/ptrt.h"

static int single_all_reduce(const ptrt_comm *c, int axis, ptrt_reduce op, float *buf,
                             int64_t n) {
  return 0; /* one contributor: sum, mean, max and min are all the value */
}

static int single_all_gather(const ptrt_comm *c, int axis, const float *in, float *out,
                             int64_t n) {
  if (out != in) memmove(out, in, (size_t)n * sizeof *in);
  return 0;
}

static int single_reduce_scatter(const ptrt_comm *c, int axis, ptrt_reduce op,
                                 const float *in, float *out, int64_t n) {
  if (out != in) memmove(out, in, (size_t)n * sizeof *in);
  return 0;
}

static int single_broadcast(const ptrt_comm *c, int axis, int root, float *buf,
                            int64_t n) {
  return 0;
}

/* 16-bit buffers: the same identities */
static int single_all_reduce16(const ptrt_comm *c, int axis, ptrt_reduce op, ptc_dtype t,
                               uint16_t *buf, int64_t n) {
  return 0;
}

static int single_all_gather16(const ptrt_comm *c, int axis, const uint16_t *in,
                               uint16_t *out, int64_t n) {
  if (out != in) memmove(out, in, (size_t)n * sizeof *in);
  return 0;
}

static int single_reduce_scatter16(const ptrt_comm *c, int axis, ptrt_reduce op, ptc_dtype t,
                                   const uint16_t *in, uint16_t *out, int64_t n) {
  if (out != in) memmove(out, in, (size_t)n * sizeof *in);
  return 0;
}

static int single_broadcast16(const ptrt_comm *c, int axis, int root, uint16_t *buf,
                              int64_t n) {
  return 0;
}

static int single_flush(const ptrt_comm *c) {
  return 0; /* no sends, so none pending */
}

static ptrt_comm_state single_state;

static const ptrt_comm single = {
    .name = "single",
    .rank = 0,
    .size = 1,
    .all_reduce = single_all_reduce,
    .all_gather = single_all_gather,
    .reduce_scatter = single_reduce_scatter,
    .broadcast = single_broadcast,
    .all_reduce16 = single_all_reduce16,
    .all_gather16 = single_all_gather16,
    .reduce_scatter16 = single_reduce_scatter16,
    .broadcast16 = single_broadcast16,
    .send = NULL, /* one rank has no pipeline peer */
    .recv = NULL,
    .flush = single_flush,
    .world_max = NULL,
    .state = &single_state,
    .impl = NULL,
};

const ptrt_comm *ptrt_comm_single(void) { return &single; }
