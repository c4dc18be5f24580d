# tests/parity/mesh.cmake: the partitioner's acceptance tests, label "mesh".
# Included from the top-level CMakeLists.txt next to the PyTorch parity
# tests.  Each test compiles a tiny model for a device mesh, trains it 20
# steps as one rank per device under mpirun (tests/parity/run-mesh), and
# checks every step's loss and gradient norm against the same model trained
# on one rank to 1e-5 relative.  The single-rank runs are fixtures:
# mesh.MODEL.ref writes parity/mesh/MODEL.ref.jsonl for the tests of MODEL.
#
#   dp=2, tp=2, tp=2 with sequence parallelism      2 ranks  (gpt2, llama)
#   2x4 (dp=2, tp=4)                                 8 ranks  (gpt2, llama)
#   dp=8 with ZeRO 1, 2 and 3                        8 ranks  (gpt2, llama)
#   dp=4                                             4 ranks  (mlp)
#   pipelines (gpipe, 1f1b, interleaved, with dp, tp, ZeRO, SP)
#   full recomputation with SP, a pipeline and ZeRO-3
#   mixed precision (label "mesh;precision", at the end of this file)
if(NOT PTC_HAVE_MPI)
  message(STATUS "ptc: MPI not found: the mesh tests (tests/parity/mesh.cmake) off")
  return()
endif()

# Sizes every mesh divides: batch 8 over dp up to 8; heads, kv_heads (GQA
# 2:1 in the Llama), the MLP's hidden width and the vocabulary over tp up to 4.
set(PTC_MESH_gpt2 "layers=2,dim=64,heads=4,vocab=256,ctx=64,batch=8,seq=32")
set(PTC_MESH_llama "layers=2,dim=64,heads=8,kv_heads=4,ffn=128,vocab=256,ctx=64,batch=8,seq=32")
set(PTC_MESH_mlp "inputs=64,hidden=64,classes=10,batch=32")
set(PTC_MESH_RUN ${CMAKE_SOURCE_DIR}/tests/parity/run-mesh)
set(PTC_MESH_DIR ${CMAKE_BINARY_DIR}/parity/mesh)

foreach(model gpt2 llama mlp)
  add_test(NAME mesh.${model}.ref
           COMMAND ${PTC_MESH_RUN} ${CMAKE_BINARY_DIR} ${model} ${PTC_MESH_${model}} none 1
                   ${PTC_MESH_DIR}/${model}.ref ${PTC_MESH_DIR}/${model}.ref.jsonl)
  set_tests_properties(mesh.${model}.ref PROPERTIES LABELS "mesh" TIMEOUT 120
                       FIXTURES_SETUP mesh.${model}.ref SKIP_RETURN_CODE 77)
endforeach()

# ptc_mesh_launcher(TEST RANKS) -- the launcher CMake found (not whichever
# is first on PATH), and the 3-or-more-rank runs one at a time: they
# oversubscribe the machine on their own.
function(ptc_mesh_launcher test ranks)
  if(MPIEXEC_EXECUTABLE)
    set_tests_properties(${test} PROPERTIES ENVIRONMENT "MPIRUN=${MPIEXEC_EXECUTABLE}")
  endif()
  if(ranks GREATER 2)
    set_tests_properties(${test} PROPERTIES RESOURCE_LOCK ptc_mesh_many_ranks)
  endif()
endfunction()

# ptc_add_mesh_test_cfg(MODEL CFG NAME RANKS MESH_ARGS) -- mesh.CFG.NAME:
# models/MODEL.ptg with the sizes PTC_MESH_CFG, against mesh.CFG.ref.
function(ptc_add_mesh_test_cfg model cfg name ranks mesh_args)
  set(test mesh.${cfg}.${name})
  add_test(NAME ${test}
           COMMAND ${PTC_MESH_RUN} ${CMAKE_BINARY_DIR} ${model} ${PTC_MESH_${cfg}}
                   ${mesh_args} ${ranks} ${PTC_MESH_DIR}/${cfg}.${name}
                   ${PTC_MESH_DIR}/${cfg}.ref.jsonl)
  set_tests_properties(${test} PROPERTIES LABELS "mesh" TIMEOUT 300 PROCESSORS ${ranks}
                       FIXTURES_REQUIRED mesh.${cfg}.ref SKIP_RETURN_CODE 77)
  ptc_mesh_launcher(${test} ${ranks})
endfunction()

# ptc_add_mesh_test(MODEL NAME RANKS MESH_ARGS) -- mesh.MODEL.NAME.
function(ptc_add_mesh_test model name ranks mesh_args)
  ptc_add_mesh_test_cfg(${model} ${model} ${name} ${ranks} "${mesh_args}")
endfunction()

foreach(model gpt2 llama)
  ptc_add_mesh_test(${model} dp2 2 "--mesh dp=2")
  ptc_add_mesh_test(${model} tp2 2 "--mesh tp=2")
  ptc_add_mesh_test(${model} tp2.sp 2 "--mesh tp=2 --sequence-parallel")
  ptc_add_mesh_test(${model} dp2tp4 8 "--mesh 2x4")
  ptc_add_mesh_test(${model} dp8.zero1 8 "--mesh dp=8 --zero 1")
  ptc_add_mesh_test(${model} dp8.zero2 8 "--mesh dp=8 --zero 2")
  ptc_add_mesh_test(${model} dp8.zero3 8 "--mesh dp=8 --zero 3")
endforeach()
ptc_add_mesh_test(mlp dp4 4 "--mesh dp=4")

# Pipeline parallelism: each step runs M microbatches of --batch rows, the
# same M x batch rows the one-rank reference trains on.
foreach(model gpt2 llama)
  ptc_add_mesh_test(${model} pp2.gpipe 2 "--mesh pp=2 --batch 4 --microbatches 2 --pp-schedule gpipe")
  ptc_add_mesh_test(${model} pp2.1f1b 2 "--mesh pp=2 --batch 2 --microbatches 4 --pp-schedule 1f1b")
  ptc_add_mesh_test(${model} pp2dp2tp2.1f1b 8 "--mesh pp=2,dp=2,tp=2 --batch 4 --microbatches 2 --pp-schedule 1f1b")
endforeach()

# The interleaved schedule needs a chunk per layer: an 8-layer GPT-2 over
# pp=4 with 2 virtual stages, against its own one-rank reference.
set(PTC_MESH_gpt2deep "layers=8,dim=64,heads=4,vocab=256,ctx=64,batch=8,seq=32")
add_test(NAME mesh.gpt2deep.ref
         COMMAND ${PTC_MESH_RUN} ${CMAKE_BINARY_DIR} gpt2 ${PTC_MESH_gpt2deep} none 1
                 ${PTC_MESH_DIR}/gpt2deep.ref ${PTC_MESH_DIR}/gpt2deep.ref.jsonl)
set_tests_properties(mesh.gpt2deep.ref PROPERTIES LABELS "mesh" TIMEOUT 120
                     FIXTURES_SETUP mesh.gpt2deep.ref SKIP_RETURN_CODE 77)
ptc_add_mesh_test_cfg(gpt2 gpt2deep pp4.interleaved 4
                      "--mesh pp=4 --batch 2 --microbatches 4 --pp-schedule interleaved --virtual-stages 2")
# the MLP over two stages (a weight gradient computed next to its layer)
ptc_add_mesh_test(mlp pp2.1f1b 2 "--mesh pp=2 --batch 16 --microbatches 2 --pp-schedule 1f1b")
# pipelines combined with ZeRO and sequence parallelism, and a stage that
# holds no parameter (the MLP over four stages)
ptc_add_mesh_test(gpt2 pp2dp4.zero3 8 "--mesh pp=2,dp=4 --batch 4 --microbatches 2 --zero 3")
ptc_add_mesh_test(gpt2 pp2dp2tp2.zero1.sp 8 "--mesh pp=2,dp=2,tp=2 --batch 4 --microbatches 2 --zero 1 --sequence-parallel")
ptc_add_mesh_test(mlp pp4 4 "--mesh pp=4 --batch 16 --microbatches 2")

# Full recomputation changes where values come from, never what they are:
# the same bound (1e-5) with sequence parallelism (each layer's input kept
# split over tp, gathered again for its recomputation), a pipeline (the
# copies run in the backward chunk, from the stash of the layer inputs) and
# ZeRO-3 (parameters gathered again for the recomputed forward).
ptc_add_mesh_test(gpt2 tp2.sp.rc 2 "--mesh tp=2 --sequence-parallel --recompute full")
ptc_add_mesh_test(llama pp2.1f1b.rc 2 "--mesh pp=2 --batch 2 --microbatches 4 --pp-schedule 1f1b --recompute full")
ptc_add_mesh_test(gpt2 dp4.zero3.rc 4 "--mesh dp=4 --zero 3 --recompute full")
ptc_add_mesh_test(llama dp2.zero3.rc 2 "--mesh dp=2 --zero 3 --recompute full")

# ---- mixed precision ------------------------------------------------------
# bf16 and fp16 (ptc --precision) on meshes.  u is the 16-bit type's unit
# roundoff: 2^-8 for bf16, 2^-11 for fp16.  Two bounds per test:
#
#  - against the fp32 reference (mesh.MODEL.ref): 5u, as tests/precision/
#    run-precision derives it (each op rounds its result to 16 bits; over
#    20 stable AdamW steps the loss moves by well under that: measured 5e-4
#    for bf16, 3e-5 for fp16);
#  - against the same precision on one rank (mesh.MODEL.PREC.ref, itself
#    held to fp32 at 5u): u.  A mesh cannot agree to the bit: it rounds
#    16-bit partial results where one rank does not -- each dp rank's (and
#    each microbatch's) gradient before they are summed, each tp rank's
#    partial product before the all-reduce -- one extra rounding of at most
#    u per element, which moves the 20-step trajectory by a fraction of u
#    (measured: 1.1e-4 for bf16, 1.1e-5 for fp16 in the loss, 6e-4 and 7e-5
#    in the gradient norm).  A gradient reduced wrongly (a shard lost, a
#    16-bit sum in the wrong dtype) moves it by far more.
#
# fp16 tests also compare the overflow flag and the loss scale exactly (no
# step overflows here; tests/precision/fp16-overflow forces overflows, on
# dp=2 with ZeRO too).  Full recomputation under bf16 must give the same
# losses as the same mesh without it, to the bit (bound 0).
set(PTC_MESH_U_bf16 0.00390625)   # 2^-8
set(PTC_MESH_5U_bf16 0.01953125)  # 5 2^-8
set(PTC_MESH_U_fp16 0.00048828125)   # 2^-11
set(PTC_MESH_5U_fp16 0.00244140625)  # 5 2^-11

# mesh.MODEL.PREC.ref: PREC on one rank, held to fp32 at 5u; the fixture of
# the PREC tests of MODEL.
function(ptc_add_mesh_prec_ref model prec)
  set(test mesh.${model}.${prec}.ref)
  add_test(NAME ${test}
           COMMAND ${PTC_MESH_RUN} --against ${PTC_MESH_DIR}/${model}.ref.jsonl ${PTC_MESH_5U_${prec}}
                   ${CMAKE_BINARY_DIR} ${model} ${PTC_MESH_${model}} "none --precision ${prec}" 1
                   ${PTC_MESH_DIR}/${model}.${prec}.ref ${PTC_MESH_DIR}/${model}.${prec}.ref.jsonl)
  set_tests_properties(${test} PROPERTIES LABELS "mesh;precision" TIMEOUT 120
                       FIXTURES_SETUP ${test} FIXTURES_REQUIRED mesh.${model}.ref
                       SKIP_RETURN_CODE 77)
endfunction()

# ptc_add_mesh_prec_test(MODEL PREC NAME RANKS MESH_ARGS [SAME_AS NAME2]) --
# mesh.MODEL.PREC.NAME: MESH_ARGS --precision PREC against PREC on one rank
# (u) and fp32 (5u); SAME_AS: also against mesh.MODEL.PREC.NAME2's losses
# within u (that test becomes a fixture): recomputation moves the bounds of
# fused groups, which round only their 16-bit outputs (docs/fusion.md).
function(ptc_add_mesh_prec_test model prec name ranks mesh_args)
  cmake_parse_arguments(ARG "" "SAME_AS" "" ${ARGN})
  set(test mesh.${model}.${prec}.${name})
  set(extra --against ${PTC_MESH_DIR}/${model}.ref.jsonl ${PTC_MESH_5U_${prec}})
  set(fixtures mesh.${model}.ref mesh.${model}.${prec}.ref)
  if(ARG_SAME_AS)
    list(APPEND extra --against ${PTC_MESH_DIR}/${model}.${prec}.${ARG_SAME_AS}/run.jsonl
         ${PTC_MESH_U_${prec}})
    list(APPEND fixtures mesh.${model}.${prec}.${ARG_SAME_AS})
    set_tests_properties(mesh.${model}.${prec}.${ARG_SAME_AS} PROPERTIES
                         FIXTURES_SETUP mesh.${model}.${prec}.${ARG_SAME_AS})
  endif()
  add_test(NAME ${test}
           COMMAND ${PTC_MESH_RUN} --rtol ${PTC_MESH_U_${prec}} ${extra}
                   ${CMAKE_BINARY_DIR} ${model} ${PTC_MESH_${model}}
                   "${mesh_args} --precision ${prec}" ${ranks} ${PTC_MESH_DIR}/${model}.${prec}.${name}
                   ${PTC_MESH_DIR}/${model}.${prec}.ref.jsonl)
  set_tests_properties(${test} PROPERTIES LABELS "mesh;precision" TIMEOUT 300
                       PROCESSORS ${ranks} FIXTURES_REQUIRED "${fixtures}"
                       SKIP_RETURN_CODE 77)
  ptc_mesh_launcher(${test} ${ranks})
endfunction()

foreach(model gpt2 llama)
  ptc_add_mesh_prec_ref(${model} bf16)
  ptc_add_mesh_prec_test(${model} bf16 dp2 2 "--mesh dp=2")
  ptc_add_mesh_prec_test(${model} bf16 tp2 2 "--mesh tp=2")
  ptc_add_mesh_prec_test(${model} bf16 tp2.sp 2 "--mesh tp=2 --sequence-parallel")
  ptc_add_mesh_prec_test(${model} bf16 pp2.gpipe 2 "--mesh pp=2 --batch 4 --microbatches 2 --pp-schedule gpipe")
  ptc_add_mesh_prec_test(${model} bf16 dp2.zero1 2 "--mesh dp=2 --zero 1")
  ptc_add_mesh_prec_test(${model} bf16 dp2.zero2 2 "--mesh dp=2 --zero 2")
endforeach()
ptc_add_mesh_prec_test(gpt2 bf16 dp4.zero3 4 "--mesh dp=4 --zero 3")
# fp32 gradients (--grad-dtype fp32): accumulated over microbatches and
# reduced over dp in fp32
ptc_add_mesh_prec_test(gpt2 bf16 pp2.gpipe.grad32 2 "--mesh pp=2 --batch 4 --microbatches 2 --pp-schedule gpipe --grad-dtype fp32")
ptc_add_mesh_prec_test(gpt2 bf16 dp2.zero2.grad32 2 "--mesh dp=2 --zero 2 --grad-dtype fp32")
ptc_add_mesh_prec_test(llama bf16 dp2.zero3 2 "--mesh dp=2 --zero 3")
ptc_add_mesh_prec_test(gpt2 bf16 tp2.sp.rc 2 "--mesh tp=2 --sequence-parallel --recompute full"
                       SAME_AS tp2.sp)
ptc_add_mesh_prec_test(llama bf16 pp2.gpipe.rc 2 "--mesh pp=2 --batch 4 --microbatches 2 --pp-schedule gpipe --recompute full"
                       SAME_AS pp2.gpipe)
ptc_add_mesh_prec_test(llama bf16 dp2.zero3.rc 2 "--mesh dp=2 --zero 3 --recompute full"
                       SAME_AS dp2.zero3)
# fp16: loss scaling on every mesh axis
ptc_add_mesh_prec_ref(gpt2 fp16)
ptc_add_mesh_prec_test(gpt2 fp16 dp2.zero1 2 "--mesh dp=2 --zero 1")
ptc_add_mesh_prec_test(gpt2 fp16 tp2.sp 2 "--mesh tp=2 --sequence-parallel")
ptc_add_mesh_prec_test(gpt2 fp16 pp2.gpipe 2 "--mesh pp=2 --batch 4 --microbatches 2 --pp-schedule gpipe")

# pp=4 with tp=2: the middle stages hold no tied embedding but take part in
# its gradient's all-reduce over pp, with zeros laid out as the holders'
# vocabulary-split gradient (8 ranks)
ptc_add_mesh_test_cfg(gpt2 gpt2deep pp4tp2 8 "--mesh pp=4,tp=2 --microbatches 4 --batch 2")
