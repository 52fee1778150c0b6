# Runs external_batch as three separate OS processes, as the README shows:
#   cmake -DEXE=<external_batch> -DDIR=<scratch dir> -P run_both.cmake
# Fails unless run 2 (which defines nothing) finishes the wait with the fields it
# passed, and run 3 (the host again) completes the instance with them.
file(REMOVE_RECURSE "${DIR}")
foreach(mode IN ITEMS submit batch resume)
  execute_process(COMMAND "${EXE}" ${mode} "${DIR}"
    RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE errors)
  message("${output}${errors}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "external_batch ${mode} exited with ${result}")
  endif()
  set(${mode}_output "${output}")
endforeach()
foreach(expected IN ITEMS "is Waiting at step 'QueueForBatch'")
  if(NOT submit_output MATCHES "${expected}")
    message(FATAL_ERROR "run 1 did not print: ${expected}")
  endif()
endforeach()
foreach(expected IN ITEMS "1 pending job" "0 step\\(s\\) still wait"
                          "is Running at step 'QueueForBatch'")
  if(NOT batch_output MATCHES "${expected}")
    message(FATAL_ERROR "run 2 did not print: ${expected}")
  endif()
endforeach()
if(batch_output MATCHES "Report:")
  message(FATAL_ERROR "run 2 ran the host's step Report, though it defines nothing")
endif()
foreach(expected IN ITEMS "Report: order A-17 exported 1284 rows in batch run nightly-1"
                          "is Completed at step 'Report'.*ExportedRows=1284"
                          "BatchRun=nightly-1")
  if(NOT resume_output MATCHES "${expected}")
    message(FATAL_ERROR "run 3 did not print: ${expected}")
  endif()
endforeach()
