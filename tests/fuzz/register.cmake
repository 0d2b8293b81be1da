# Registers the ctest tests fuzz/<target>: each libFuzzer target runs a fixed
# number of inputs (tests/fuzz/check) over its committed seed corpus.
#
# The targets need clang's libFuzzer runtime and coverage instrumentation on
# the libraries they link, while this build may use gcc; so they are built by
# a second CMake configuration of this source tree (BINARY_DIR fuzz/, clang,
# -DBRIX_FUZZ=ON), as an ExternalProject that is part of `all`: a fresh clone
# builds them with everything else, and its own dependency tracking keeps
# rebuilds incremental. Without a clang that links -fsanitize=fuzzer
# (Debian: clang and libclang-rt-14-dev, installed by scripts/setup) the
# tests are left out with a message.
if(BRIX_FUZZ)
  return()
endif()

find_program(BRIX_FUZZ_CC NAMES clang clang-16 clang-15 clang-14)
set(brix_fuzz_ok FALSE)
if(BRIX_FUZZ_CC)
  set(probe ${CMAKE_CURRENT_BINARY_DIR}/fuzz-probe.c)
  file(WRITE ${probe} "#include <stddef.h>\n#include <stdint.h>\n"
       "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\n"
       "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; return n > 1 && 0; }\n")
  execute_process(COMMAND ${BRIX_FUZZ_CC} -fsanitize=fuzzer,address,undefined ${probe}
                          -o ${CMAKE_CURRENT_BINARY_DIR}/fuzz-probe
                  RESULT_VARIABLE probe_rc OUTPUT_QUIET ERROR_QUIET)
  if(probe_rc EQUAL 0)
    set(brix_fuzz_ok TRUE)
  endif()
endif()
if(NOT brix_fuzz_ok)
  message(STATUS "fuzz: no clang with libFuzzer found (scripts/setup installs clang and "
                 "libclang-rt-14-dev): the fuzz/* tests are not registered")
  return()
endif()

include(ExternalProject)
# $(MAKE) shares the parent make's job slots; other generators build on their own
if(CMAKE_GENERATOR MATCHES "Make")
  set(brix_fuzz_build $(MAKE) brix_fuzzers)
else()
  set(brix_fuzz_build ${CMAKE_COMMAND} --build <BINARY_DIR> --target brix_fuzzers)
endif()
ExternalProject_Add(brix_fuzz
  SOURCE_DIR ${CMAKE_SOURCE_DIR}
  BINARY_DIR ${CMAKE_BINARY_DIR}/fuzz
  CMAKE_ARGS -DCMAKE_C_COMPILER=${BRIX_FUZZ_CC} -DBRIX_FUZZ=ON -DBRIX_TESTS=OFF
             -DCMAKE_BUILD_TYPE=
  BUILD_COMMAND ${brix_fuzz_build}
  INSTALL_COMMAND ""
  BUILD_ALWAYS ON
  USES_TERMINAL_BUILD OFF)

# The number of inputs each target runs in `make test` (the seed corpus
# included), chosen so each takes a few seconds under ASan; a target without
# an entry runs BRIX_FUZZ_RUNS_DEFAULT. -max_total_time in tests/fuzz/check
# bounds a slow machine.
set(BRIX_FUZZ_RUNS_DEFAULT 30000)
set(BRIX_FUZZ_RUNS_fuzz_kv_events 4000)
set(BRIX_FUZZ_RUNS_fuzz_kvproto 6000)

file(GLOB fuzz_srcs CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_*.c)
foreach(src ${fuzz_srcs})
  get_filename_component(name ${src} NAME_WE)
  set(runs ${BRIX_FUZZ_RUNS_DEFAULT})
  if(DEFINED BRIX_FUZZ_RUNS_${name})
    set(runs ${BRIX_FUZZ_RUNS_${name}})
  endif()
  add_test(NAME fuzz/${name}
           COMMAND ${CMAKE_SOURCE_DIR}/tests/fuzz/check ${CMAKE_BINARY_DIR}/fuzz/${name} ${runs}
                   ${CMAKE_BINARY_DIR}/fuzz-work/${name})
  # RUN_SERIAL: a fuzzer keeps a core busy, and the integration tests'
  # timing-sensitive steps (start-up, signals) should not compete with it
  set_tests_properties(fuzz/${name} PROPERTIES LABELS fuzz TIMEOUT 120 RUN_SERIAL ON)
endforeach()
