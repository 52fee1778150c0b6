# Runs one libFuzzer target for a bounded time (a ctest entry of test/fuzz):
#   cmake -DFUZZER=<exe> -DSEEDS=<corpus/target> -DSCRATCH=<dir> -DSECONDS=<n>
#         [-DFLAGS=<libFuzzer flags, ;-separated>] -P run_fuzzer.cmake
# The committed seeds are only read: libFuzzer writes new inputs to the first
# corpus directory, the scratch one, emptied first, and crash files beside it.
# Fails when the fuzzer finds a crash, a leak, a timeout or runs out of memory.

foreach(variable FUZZER SEEDS SCRATCH SECONDS)
  if(NOT DEFINED ${variable})
    message(FATAL_ERROR "run_fuzzer.cmake: -D${variable}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE ${SCRATCH})
file(MAKE_DIRECTORY ${SCRATCH}/corpus ${SCRATCH}/artifacts)

execute_process(
  COMMAND ${FUZZER}
    -max_total_time=${SECONDS}
    -timeout=10
    -rss_limit_mb=2048
    -print_final_stats=1
    ${FLAGS}
    -artifact_prefix=${SCRATCH}/artifacts/
    ${SCRATCH}/corpus
    ${SEEDS}
  RESULT_VARIABLE result)

file(GLOB seeds ${SEEDS}/*)
file(GLOB found ${SCRATCH}/corpus/*)
list(LENGTH seeds seedCount)
list(LENGTH found foundCount)
message(STATUS "${seedCount} seeds, ${foundCount} new inputs in ${SCRATCH}/corpus")

if(NOT result EQUAL 0)
  file(GLOB artifacts ${SCRATCH}/artifacts/*)
  message(FATAL_ERROR "the fuzzer failed (${result}); reproduce with: ${FUZZER} ${artifacts}")
endif()
