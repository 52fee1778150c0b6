# Runs the rest_callback example as two OS processes on loopback:
#   cmake -DERP=<rest_callback_erp> -DHOST=<rest_callback_host> -DDIR=<scratch dir> -P run_both.cmake
# The ERP starts first and prints its address (a port the OS picked); the host,
# reading the ERP's output on stdin, starts two orders: PO-1001, which the ERP
# accepts and later finishes over the REST route, and PO-1002, which the ERP
# refuses with HTTP 500. The host then stops the ERP (POST /stop). A hung run
# is killed after TIMEOUT seconds.
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}")
execute_process(
  COMMAND "${ERP}" --refuse PO-1002 --api-key ctest-key
  COMMAND "${HOST}" --erp - --order PO-1001 --expect-refusal PO-1002 --api-key ctest-key
          --db "${DIR}/workflows.db" --timeout 30
  TIMEOUT 60
  RESULTS_VARIABLE results OUTPUT_VARIABLE output ERROR_VARIABLE errors)
message("${output}${errors}")
if(NOT results STREQUAL "0;0")
  message(FATAL_ERROR "rest_callback_erp; rest_callback_host exited with: ${results}")
endif()
foreach(expected IN ITEMS
    "the ERP listens on http://127.0.0.1:[0-9]+"
    "REST routes on http://127.0.0.1:[0-9]+/api/workflow/v1"
    "order PO-1001 accepted as ERP-7001"
    "ERP answered HTTP 202 [^\n]*ErpTicket=ERP-7001; waiting"
    # Waiting first, or a callback that beat the handler's return: both are right.
    "instance 1 (waits at 'SubmitToErp'|: the finish call came before the handler returned)"
    "callback for PO-1001 answered HTTP 204"
    "Record: order PO-1001 is Approved by erp-approvals \\(ticket ERP-7001\\)"
    "order PO-1002 refused"
    "ERP answered HTTP 500 [^\n]*failing the step"
    "PO-1001 \\(instance 1\\): Completed;[^\n]*ErpStatus=Approved[^\n]*-- as expected"
    "PO-1002 \\(instance 2\\): Failed;[^\n]*-- as expected"
    "stopping \\(POST /stop\\)"
    "done: every instance ended as expected")
  if(NOT output MATCHES "${expected}")
    message(FATAL_ERROR "the run did not print: ${expected}")
  endif()
endforeach()
