# tests/mpi: the MPI communicator (runtime/comm_mpi.c) under mpirun, label
# "mpi".  Included from the top-level CMakeLists.txt when the runtime is
# built; without MPI the tests are not registered.
#
#   mpi.comm.2x4, mpi.comm.pp2dp2tp2  every collective on every axis, the
#                                     counters, transfers (8 ranks)
#   mpi.comm.chunked                  the same through 5-element MPI calls,
#                                     with an axis of size 1 (4 ranks)
#   mpi.launch                        ptrt_launched_multi (no mpirun)
#   mpi.timeout                       a rank that never arrives ends the run
#   mpi.mismatch                      a world that is not the mesh's size
#   mpi.kill_rank                     SIGKILL one rank of a training run: all end
if(NOT PTC_HAVE_MPI)
  message(STATUS "ptc: MPI not found: tests/mpi off")
  return()
endif()
if(NOT MPIEXEC_EXECUTABLE)
  message(STATUS "ptc: MPI found but not mpiexec/mpirun: tests/mpi off")
  return()
endif()

# the sanitizer build where there is one; LeakSanitizer would report what
# MPI keeps until the process ends
if(PTC_SANITIZE)
  set(PTC_MPI_TEST_RT ptrt_san)
  set(PTC_MPI_TEST_FLAGS ${PTC_SAN_FLAGS})
  set(PTC_MPI_TEST_ENV "ASAN_OPTIONS=detect_leaks=0")
else()
  set(PTC_MPI_TEST_RT ptrt)
  set(PTC_MPI_TEST_FLAGS)
  set(PTC_MPI_TEST_ENV)
endif()

add_executable(test_comm ${CMAKE_SOURCE_DIR}/tests/mpi/test_comm.c)
target_compile_options(test_comm PRIVATE ${PTC_WARN} ${PTC_MPI_TEST_FLAGS})
target_link_libraries(test_comm PRIVATE ${PTC_MPI_TEST_RT})
# its own copy of the communicator, cutting every MPI call at 5 elements
# (bytes); it takes the place of the library's
add_executable(test_comm_chunked ${CMAKE_SOURCE_DIR}/tests/mpi/test_comm.c
               ${CMAKE_SOURCE_DIR}/runtime/comm_mpi.c)
target_compile_definitions(test_comm_chunked PRIVATE PTRT_MPI_CHUNK=5)
target_compile_options(test_comm_chunked PRIVATE ${PTC_WARN} ${PTC_MPI_TEST_FLAGS})
target_link_libraries(test_comm_chunked PRIVATE ${PTC_MPI_TEST_RT})

# Open MPI refuses root and more ranks than cores unless told
set(PTC_MPIEXEC ${MPIEXEC_EXECUTABLE})
execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE PTC_MPIEXEC_VERSION
                ERROR_QUIET)
if(PTC_MPIEXEC_VERSION MATCHES "Open MPI|OpenRTE")
  list(APPEND PTC_MPIEXEC --allow-run-as-root --oversubscribe)
endif()
list(APPEND PTC_MPIEXEC ${MPIEXEC_PREFLAGS})

# ptc_add_mpi_test(NAME RANKS COMMAND...)
function(ptc_add_mpi_test name ranks)
  add_test(NAME ${name} COMMAND ${PTC_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} ${ranks} ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "mpi" TIMEOUT 180 PROCESSORS 2
                       ENVIRONMENT "${PTC_MPI_TEST_ENV}")
endfunction()

ptc_add_mpi_test(mpi.comm.2x4 8 $<TARGET_FILE:test_comm> 2x4 check)
ptc_add_mpi_test(mpi.comm.pp2dp2tp2 8 $<TARGET_FILE:test_comm> pp=2,dp=2,tp=2 check)
ptc_add_mpi_test(mpi.comm.chunked 4 $<TARGET_FILE:test_comm_chunked> pp=1,dp=2,tp=2 check)

add_test(NAME mpi.launch COMMAND test_comm launch)
set_tests_properties(mpi.launch PROPERTIES LABELS "mpi" TIMEOUT 60
                     ENVIRONMENT "${PTC_MPI_TEST_ENV}")

# Expected failures: a non-zero exit, in time, with the message.
set(PTC_EXPECT_FAILURE ${CMAKE_SOURCE_DIR}/tests/mpi/expect-failure)
add_test(NAME mpi.timeout
         COMMAND ${PTC_EXPECT_FAILURE} 30
                 "rank [0-9]+ \\(dp=[01], tp=[0-3]\\): timed out after 2 s waiting for peers in"
                 "timed out after 2 s waiting for peers in all_reduce over tp in the timeout check"
                 -- ${PTC_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} 8 $<TARGET_FILE:test_comm> 2x4 timeout)
add_test(NAME mpi.mismatch
         COMMAND ${PTC_EXPECT_FAILURE} 30
                 "ptrun: error: the plan's mesh<dp=2, tp=4> has 8 devices but mpirun started 2 ranks; run mpirun -np 8"
                 -- ${PTC_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} 2 $<TARGET_FILE:test_comm> 2x4 check)
set_tests_properties(mpi.timeout mpi.mismatch PROPERTIES LABELS "mpi" TIMEOUT 90
                     ENVIRONMENT "${PTC_MPI_TEST_ENV}")

# A rank killed mid-training (SIGKILL) ends the whole run in bounded time.
if(TARGET ptrun AND TARGET ptdata)
  add_test(NAME mpi.kill_rank COMMAND ${CMAKE_SOURCE_DIR}/tests/mpi/kill-rank
           ${CMAKE_BINARY_DIR} ${CMAKE_BINARY_DIR}/mpi/kill-rank)
  set_tests_properties(mpi.kill_rank PROPERTIES LABELS "mpi" TIMEOUT 180 PROCESSORS 4
                       SKIP_RETURN_CODE 77 RESOURCE_LOCK ranks)
  # 16-bit collectives: sums combined in fp32 and rounded, on the wire at 16 bits
  add_executable(test_half ${CMAKE_SOURCE_DIR}/tests/mpi/test_half.c)
  target_compile_options(test_half PRIVATE ${PTC_WARN} ${PTC_MPI_TEST_FLAGS})
  target_link_libraries(test_half PRIVATE ${PTC_MPI_TEST_RT})
  ptc_add_mpi_test(mpi.half 2 $<TARGET_FILE:test_half>)
  add_executable(test_half_chunked ${CMAKE_SOURCE_DIR}/tests/mpi/test_half.c ${CMAKE_SOURCE_DIR}/runtime/comm_mpi.c)
  target_compile_definitions(test_half_chunked PRIVATE PTRT_MPI_CHUNK=5)
  target_compile_options(test_half_chunked PRIVATE ${PTC_WARN} ${PTC_MPI_TEST_FLAGS})
  target_link_libraries(test_half_chunked PRIVATE ${PTC_MPI_TEST_RT})
  ptc_add_mpi_test(mpi.half.chunked 2 $<TARGET_FILE:test_half_chunked>)
endif()
