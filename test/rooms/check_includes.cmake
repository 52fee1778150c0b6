# ctest rooms.includes: the include rules of src/README.md, checked on every
# source file, so that a wrong arrow between rooms fails the suite.
#   model/  includes no engine/, store/ or rest/ header, nor asyncflow/engine.hpp
#           or asyncflow/store.hpp (it is pure: no threads, no store calls)
#   engine/ includes no store/ or rest/ header (storage only through store.hpp)
#   store/  includes no engine/, model/ or rest/ header
#   rest/   includes no engine/, model/ or store/ header (the public API only)
#   util/   includes nothing of another room
# Usage: cmake -DSOURCE_DIR=<repo> -P check_includes.cmake

set(rules
  "model|engine/|store/|rest/|asyncflow/engine.hpp|asyncflow/store.hpp"
  "engine|store/|rest/"
  "store|engine/|model/|rest/"
  "rest|engine/|model/|store/"
  "util|engine/|model/|store/|rest/")
set(broken "")
foreach(rule IN LISTS rules)
  string(REPLACE "|" ";" parts "${rule}")
  list(POP_FRONT parts room)
  file(GLOB_RECURSE files "${SOURCE_DIR}/src/${room}/*.cpp" "${SOURCE_DIR}/src/${room}/*.hpp")
  foreach(file IN LISTS files)
    file(STRINGS "${file}" includes REGEX "^#include \"")
    foreach(line IN LISTS includes)
      foreach(forbidden IN LISTS parts)
        string(FIND "${line}" "\"${forbidden}" at)
        if(NOT at EQUAL -1)
          file(RELATIVE_PATH shown "${SOURCE_DIR}" "${file}")
          list(APPEND broken "${shown}: ${line} (room ${room} may not include ${forbidden})")
        endif()
      endforeach()
    endforeach()
  endforeach()
endforeach()
if(broken)
  list(JOIN broken "\n  " text)
  message(FATAL_ERROR "include rules of src/README.md broken:\n  ${text}")
endif()
message(STATUS "rooms: every include follows src/README.md")
