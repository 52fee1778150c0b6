# The optional add-on asyncflow::rest: K2's Workflow REST callback routes on a
# host's cpp-httplib server (include/asyncflow/rest.hpp, src/rest/).
#
# ASYNCFLOW_BUILD_REST:
#   AUTO (default)  build it when cpp-httplib (pkg-config "cpp-httplib", as Debian's
#                   libcpp-httplib-dev ships it), nlohmann_json (CMake config,
#                   nlohmann-json3-dev) and expat (libexpat1-dev, the XML fields'
#                   parser) are found; otherwise say so and skip it
#   ON              build it; a missing dependency is a configure error
#   OFF             never build it
# The core library never depends on them. Sets ASYNCFLOW_REST_BUILT.

set(ASYNCFLOW_BUILD_REST AUTO CACHE STRING
  "Build the asyncflow::rest add-on (needs cpp-httplib and nlohmann-json): AUTO, ON or OFF")
set_property(CACHE ASYNCFLOW_BUILD_REST PROPERTY STRINGS AUTO ON OFF)

set(ASYNCFLOW_REST_BUILT OFF)
string(TOUPPER "${ASYNCFLOW_BUILD_REST}" _asyncflow_rest_mode)

if(_asyncflow_rest_mode STREQUAL "AUTO" OR ASYNCFLOW_BUILD_REST)
  set(_asyncflow_rest_missing)
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    # Debian's cpp-httplib is a compiled library whose pkg-config Cflags carry the
    # CPPHTTPLIB_*_SUPPORT defines it was built with; every user of httplib.h must
    # see them, so the imported target is linked PUBLIC below.
    pkg_check_modules(cpp-httplib QUIET IMPORTED_TARGET cpp-httplib)
  endif()
  if(NOT TARGET PkgConfig::cpp-httplib)
    list(APPEND _asyncflow_rest_missing "cpp-httplib via pkg-config (Debian: libcpp-httplib-dev)")
  endif()
  find_package(EXPAT QUIET)
  if(NOT TARGET EXPAT::EXPAT)
    list(APPEND _asyncflow_rest_missing "expat (Debian: libexpat1-dev)")
  endif()
  find_package(nlohmann_json 3 CONFIG QUIET)
  if(NOT TARGET nlohmann_json::nlohmann_json)
    list(APPEND _asyncflow_rest_missing "nlohmann_json (Debian: nlohmann-json3-dev)")
  endif()

  if(_asyncflow_rest_missing)
    list(JOIN _asyncflow_rest_missing ", " _asyncflow_rest_missing)
    if(_asyncflow_rest_mode STREQUAL "AUTO")
      message(STATUS "asyncflow: not building the asyncflow::rest add-on; missing: "
                     "${_asyncflow_rest_missing}")
    else()
      message(FATAL_ERROR "asyncflow: ASYNCFLOW_BUILD_REST=${ASYNCFLOW_BUILD_REST} but "
                          "missing: ${_asyncflow_rest_missing}")
    endif()
  else()
    set(ASYNCFLOW_REST_BUILT ON)
    message(STATUS "asyncflow: building the asyncflow::rest add-on "
                   "(cpp-httplib ${cpp-httplib_VERSION})")
  endif()
endif()

if(ASYNCFLOW_REST_BUILT)
  add_library(asyncflow_rest
    src/rest/rest.cpp
    src/rest/routes.cpp
    src/rest/bodies.cpp
    src/rest/xml.cpp
    src/rest/authorizers.cpp
    src/rest/views.cpp
    src/rest/openapi.cpp)
  add_library(asyncflow::rest ALIAS asyncflow_rest)
  set_target_properties(asyncflow_rest PROPERTIES
    CXX_EXTENSIONS OFF
    VERSION ${PROJECT_VERSION}
    SOVERSION ${PROJECT_VERSION_MAJOR}
    EXPORT_NAME rest)
  target_include_directories(asyncflow_rest PRIVATE ${PROJECT_SOURCE_DIR}/src)
  # nlohmann_json is header-only and stays out of rest.hpp, so an installed
  # asyncflow::rest does not need it; cpp-httplib is PUBLIC (see above).
  target_link_libraries(asyncflow_rest
    PUBLIC asyncflow PkgConfig::cpp-httplib
    PRIVATE $<BUILD_INTERFACE:nlohmann_json::nlohmann_json> $<BUILD_INTERFACE:asyncflow_warnings>
      EXPAT::EXPAT)

  if(ASYNCFLOW_INSTALL)
    # A separate export set, so the package config loads it only where
    # cpp-httplib can be found (find_package(asyncflow COMPONENTS rest)).
    install(TARGETS asyncflow_rest EXPORT asyncflowRestTargets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    install(FILES include/asyncflow/rest.hpp DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/asyncflow)
    install(EXPORT asyncflowRestTargets
      NAMESPACE asyncflow::
      DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/asyncflow)
  endif()
endif()
