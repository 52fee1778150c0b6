# Builds and runs test/package/consumer against asyncflow; fails on any step.
#
#   cmake -DMODE=find_package|add_subdirectory
#         -DSOURCE_DIR=<asyncflow source> -DBUILD_DIR=<asyncflow build, built>
#         -DWORK_DIR=<scratch dir, wiped> -DCONSUMER_DIR=<test/package/consumer>
#         [-DGENERATOR=...] [-DMAKE_PROGRAM=...] [-DCXX_COMPILER=...] [-DBUILD_TYPE=...]
#         -P run.cmake
#
# find_package:      installs BUILD_DIR into WORK_DIR/prefix, then builds the
#                    consumer with CMAKE_PREFIX_PATH pointing there only.
# add_subdirectory:  builds the consumer with add_subdirectory(SOURCE_DIR).
cmake_minimum_required(VERSION 3.21)

foreach(var MODE SOURCE_DIR WORK_DIR CONSUMER_DIR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()

# Runs a command; stops the script with its output when it fails.
function(run_step description)
  message(STATUS "package.${MODE}: ${description}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE result
    OUTPUT_VARIABLE output
    ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "package.${MODE}: ${description} failed (${result}):\n${output}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(config_args)
if(DEFINED BUILD_TYPE AND NOT BUILD_TYPE STREQUAL "")
  set(config_args --config "${BUILD_TYPE}")
endif()

set(configure_args -S "${CONSUMER_DIR}" -B "${WORK_DIR}/consumer"
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
if(DEFINED GENERATOR AND NOT GENERATOR STREQUAL "")
  list(APPEND configure_args -G "${GENERATOR}")
endif()
if(DEFINED MAKE_PROGRAM AND NOT MAKE_PROGRAM STREQUAL "")
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(DEFINED CXX_COMPILER AND NOT CXX_COMPILER STREQUAL "")
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(DEFINED BUILD_TYPE AND NOT BUILD_TYPE STREQUAL "")
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
endif()

if(MODE STREQUAL "find_package")
  if(NOT DEFINED BUILD_DIR OR BUILD_DIR STREQUAL "")
    message(FATAL_ERROR "run.cmake: find_package needs -DBUILD_DIR=<built asyncflow tree>")
  endif()
  set(prefix "${WORK_DIR}/prefix")
  run_step("install ${BUILD_DIR} into ${prefix}"
    "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}" ${config_args})
  list(APPEND configure_args -DASYNCFLOW_CONSUME=find_package "-DCMAKE_PREFIX_PATH=${prefix}")
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND configure_args -DASYNCFLOW_CONSUME=add_subdirectory
    "-DASYNCFLOW_SOURCE_DIR=${SOURCE_DIR}")
else()
  message(FATAL_ERROR "run.cmake: unknown MODE '${MODE}'")
endif()

run_step("configure the consumer" "${CMAKE_COMMAND}" ${configure_args})

if(MODE STREQUAL "find_package")
  # The package must come from the scratch prefix, not from anywhere else.
  file(STRINGS "${WORK_DIR}/consumer/CMakeCache.txt" found REGEX "^asyncflow_DIR:")
  string(REGEX REPLACE "^asyncflow_DIR:[A-Z]+=" "" found "${found}")
  file(REAL_PATH "${prefix}" real_prefix)
  file(REAL_PATH "${found}" real_found)
  string(FIND "${real_found}" "${real_prefix}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR
      "package.find_package: found asyncflow in '${found}', not under '${prefix}'")
  endif()
endif()

run_step("build the consumer"
  "${CMAKE_COMMAND}" --build "${WORK_DIR}/consumer" --parallel 2 ${config_args})

# The consumer's own ctest test runs the program; --build-config covers
# multi-config generators.
set(ctest_args)
if(DEFINED BUILD_TYPE AND NOT BUILD_TYPE STREQUAL "")
  set(ctest_args --build-config "${BUILD_TYPE}")
endif()
run_step("run the consumer"
  "${CMAKE_CTEST_COMMAND}" --test-dir "${WORK_DIR}/consumer" --output-on-failure
  --no-tests=error ${ctest_args})
message(STATUS "package.${MODE}: passed")
