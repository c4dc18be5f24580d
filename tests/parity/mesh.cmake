# tests/parity/mesh.cmake: the partitioner's acceptance tests, label "mesh".
# Included from the top-level CMakeLists.txt next to the PyTorch parity
# tests.  Each test compiles a tiny model for a device mesh, trains it 20
# steps as one rank per device under mpirun (tests/parity/run-mesh), and
# checks every step's loss against the same model trained on one rank to
# 1e-5 relative.  The single-rank runs are fixtures: mesh.MODEL.ref writes
# parity/mesh/MODEL.ref.jsonl for the tests of MODEL.
#
#   dp=2, tp=2, tp=2 with sequence parallelism      2 ranks  (gpt2, llama)
#   2x4 (dp=2, tp=4)                                 8 ranks  (gpt2, llama)
#   dp=8 with ZeRO 1, 2 and 3                        8 ranks  (gpt2, llama)
#   dp=4                                             4 ranks  (mlp)
#
# Pipeline meshes (pp) are not partitioned yet and have no test here.
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

# ptc_add_mesh_test(MODEL NAME RANKS MESH_ARGS) -- mesh.MODEL.NAME.  The
# 8-rank runs oversubscribe the machine on their own: one at a time.
function(ptc_add_mesh_test model name ranks mesh_args)
  set(test mesh.${model}.${name})
  add_test(NAME ${test}
           COMMAND ${PTC_MESH_RUN} ${CMAKE_BINARY_DIR} ${model} ${PTC_MESH_${model}}
                   ${mesh_args} ${ranks} ${PTC_MESH_DIR}/${model}.${name}
                   ${PTC_MESH_DIR}/${model}.ref.jsonl)
  set_tests_properties(${test} PROPERTIES LABELS "mesh" TIMEOUT 300 PROCESSORS ${ranks}
                       FIXTURES_REQUIRED mesh.${model}.ref SKIP_RETURN_CODE 77)
  if(MPIEXEC_EXECUTABLE)  # the launcher CMake found, not whichever is first on PATH
    set_tests_properties(${test} PROPERTIES ENVIRONMENT "MPIRUN=${MPIEXEC_EXECUTABLE}")
  endif()
  if(ranks GREATER 2)
    set_tests_properties(${test} PROPERTIES RESOURCE_LOCK ptc_mesh_many_ranks)
  endif()
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
add_test(NAME mesh.gpt2deep.pp4.interleaved
         COMMAND ${PTC_MESH_RUN} ${CMAKE_BINARY_DIR} gpt2 ${PTC_MESH_gpt2deep}
                 "--mesh pp=4 --batch 2 --microbatches 4 --pp-schedule interleaved --virtual-stages 2"
                 4 ${PTC_MESH_DIR}/gpt2deep.pp4.interleaved ${PTC_MESH_DIR}/gpt2deep.ref.jsonl)
set_tests_properties(mesh.gpt2deep.pp4.interleaved PROPERTIES LABELS "mesh" TIMEOUT 300
                     PROCESSORS 4 FIXTURES_REQUIRED mesh.gpt2deep.ref SKIP_RETURN_CODE 77
                     RESOURCE_LOCK ptc_mesh_many_ranks)
if(MPIEXEC_EXECUTABLE)
  set_tests_properties(mesh.gpt2deep.pp4.interleaved PROPERTIES
                       ENVIRONMENT "MPIRUN=${MPIEXEC_EXECUTABLE}")
endif()
# the MLP over two stages (a weight gradient computed next to its layer)
ptc_add_mesh_test(mlp pp2.1f1b 2 "--mesh pp=2 --batch 16 --microbatches 2 --pp-schedule 1f1b")
# pipelines combined with ZeRO and sequence parallelism, and a stage that
# holds no parameter (the MLP over four stages)
ptc_add_mesh_test(gpt2 pp2dp4.zero3 8 "--mesh pp=2,dp=4 --batch 4 --microbatches 2 --zero 3")
ptc_add_mesh_test(gpt2 pp2dp2tp2.zero1.sp 8 "--mesh pp=2,dp=2,tp=2 --batch 4 --microbatches 2 --zero 1 --sequence-parallel")
ptc_add_mesh_test(mlp pp4 4 "--mesh pp=4 --batch 16 --microbatches 2")
