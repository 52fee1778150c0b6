# Writes the OpenAPI description (print_openapi) to a file and lints it with
# Redocly CLI; fails on any problem it reports.
#
#   cmake -DPRINT=<print_openapi> -DREDOCLY=<redocly> -DWORK_DIR=<dir> -P lint_openapi.cmake
cmake_minimum_required(VERSION 3.21)

file(MAKE_DIRECTORY "${WORK_DIR}")
set(document "${WORK_DIR}/openapi.json")
execute_process(COMMAND "${PRINT}" OUTPUT_FILE "${document}" RESULT_VARIABLE printed)
if(NOT printed EQUAL 0)
  message(FATAL_ERROR "print_openapi failed (${printed})")
endif()
# recommended-strict: Redocly's recommended rules, every warning an error. No
# telemetry and no update check: CI reaches no network here.
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
          "${REDOCLY}" lint --extends=recommended-strict --format=stylish "${document}"
  RESULT_VARIABLE linted OUTPUT_VARIABLE output ERROR_VARIABLE output)
message("${output}")
if(NOT linted EQUAL 0)
  message(FATAL_ERROR "redocly lint found problems in ${document} (${linted})")
endif()
