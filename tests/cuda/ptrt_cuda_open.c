/* ptrt_cuda_open.c -- `ptrt-cuda-open PLAN`: opens a CUDA plan with
 * runtime/cuda.c (ptrt_cuda_open) and says what happened: on a machine
 * without a GPU, the plan's checks and then the message that there is no
 * driver; with one, the device and how many kernels were loaded.  The lit
 * tests under tests/lit/cuda run it, as ptrun would call the same function.
 * Exit status: 0 loaded, 1 refused. */
#include <stdio.h>

#include "ir/ir.h"
#include "runtime/cuda.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: ptrt-cuda-open PLAN\n");
    return 2;
  }
  ptc_ctx *ctx = ptc_ctx_create();
  if (!ptrt_cuda_is_plan(argv[1])) fprintf(stderr, "note: '%s' is not a CUDA plan\n", argv[1]);
  char why[1024] = {0};
  ptrt_cuda *c = ptrt_cuda_open(ctx, argv[1], why, sizeof why);
  if (c) {
    printf("loaded %d kernels of a %s plan on %s\n", ptrt_cuda_nkernels(c), ptrt_cuda_target(c),
           ptrt_cuda_device(c));
    ptrt_cuda_close(c);
  }
  ptc_ctx_destroy(ctx);
  return c ? 0 : 1;
}
