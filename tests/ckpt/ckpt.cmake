# tests/ckpt/ckpt.cmake: checkpoints (runtime/ckpt.c, ptrun --ckpt-dir,
# tools/ptckpt.c), label "ckpt".  Included from the top-level
# CMakeLists.txt when the runtime is built.  Each test is one scenario of
# tests/ckpt/run-ckpt (its header says what each checks); the ones that
# need mpirun exit 77 (skipped) without it.
#
#   ckpt.exact ckpt.faults ckpt.settings ckpt.convert ckpt.nan ckpt.async
#   ckpt.tiers                                    one rank
#   ckpt.signal                                   one rank, then 4 ranks
#   ckpt.mesh-8to1 ckpt.mesh-zero ckpt.mesh-1to2  resume on another mesh
#   ckpt.mesh-pp                                  a pipelined plan, when
#                                                 ptc compiles pp meshes
#   ckpt.kill-rank                                8 ranks, one killed
set(PTC_CKPT_RUN ${CMAKE_SOURCE_DIR}/tests/ckpt/run-ckpt)
set(PTC_CKPT_DIR ${CMAKE_BINARY_DIR}/ckpt)

foreach(t exact faults settings convert nan signal async tiers
          mesh-8to1 mesh-zero mesh-1to2 mesh-pp kill-rank)
  add_test(NAME ckpt.${t}
           COMMAND ${PTC_CKPT_RUN} ${CMAKE_BINARY_DIR} ${PTC_CKPT_DIR}/${t} ${t})
  set_tests_properties(ckpt.${t} PROPERTIES LABELS "ckpt" TIMEOUT 300 SKIP_RETURN_CODE 77)
  if(MPIEXEC_EXECUTABLE)  # the launcher CMake found, not whichever is first on PATH
    set_tests_properties(ckpt.${t} PROPERTIES ENVIRONMENT "MPIRUN=${MPIEXEC_EXECUTABLE}")
  endif()
endforeach()
# The runs of many ranks oversubscribe the machine on their own.
set_tests_properties(ckpt.mesh-8to1 ckpt.mesh-zero ckpt.mesh-pp ckpt.kill-rank ckpt.signal
                     PROPERTIES RESOURCE_LOCK ptc_mesh_many_ranks PROCESSORS 2)

# The reader against random tilings and damaged manifests (ASan and UBSan
# where the build has them), label "unit" too.
if(PTC_SANITIZE)
  set(PTC_CKPT_TEST_RT ptrt_san)
  set(PTC_CKPT_TEST_FLAGS ${PTC_SAN_FLAGS})
else()
  set(PTC_CKPT_TEST_RT ptrt)
  set(PTC_CKPT_TEST_FLAGS)
endif()
add_executable(test_ckpt ${CMAKE_SOURCE_DIR}/tests/ckpt/test_ckpt.c)
target_compile_options(test_ckpt PRIVATE ${PTC_WARN} ${PTC_CKPT_TEST_FLAGS})
target_link_libraries(test_ckpt PRIVATE ${PTC_CKPT_TEST_RT})
add_test(NAME unit.test_ckpt COMMAND test_ckpt)
set_tests_properties(unit.test_ckpt PROPERTIES LABELS "unit;ckpt" TIMEOUT 120)
