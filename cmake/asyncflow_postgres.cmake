# The optional add-on asyncflow::postgres: the PostgreSQL Store
# (include/asyncflow/postgres_store.hpp, src/store/postgres/), on libpq.
#
# ASYNCFLOW_BUILD_POSTGRES:
#   AUTO (default)  build it when libpq is found (pkg-config "libpq", as Debian's
#                   libpq-dev ships it); otherwise say so and skip it
#   ON              build it; a missing libpq is a configure error
#   OFF             never build it
# The core library never depends on libpq. Sets ASYNCFLOW_POSTGRES_BUILT.

set(ASYNCFLOW_BUILD_POSTGRES AUTO CACHE STRING
  "Build the asyncflow::postgres add-on (needs libpq): AUTO, ON or OFF")
set_property(CACHE ASYNCFLOW_BUILD_POSTGRES PROPERTY STRINGS AUTO ON OFF)

set(ASYNCFLOW_POSTGRES_BUILT OFF)
string(TOUPPER "${ASYNCFLOW_BUILD_POSTGRES}" _asyncflow_postgres_mode)

if(_asyncflow_postgres_mode STREQUAL "AUTO" OR ASYNCFLOW_BUILD_POSTGRES)
  find_package(PkgConfig QUIET)
  if(PKG_CONFIG_FOUND)
    pkg_check_modules(libpq QUIET IMPORTED_TARGET libpq)
  endif()
  if(NOT TARGET PkgConfig::libpq)
    if(_asyncflow_postgres_mode STREQUAL "AUTO")
      message(STATUS "asyncflow: not building the asyncflow::postgres add-on; missing: "
                     "libpq via pkg-config (Debian: libpq-dev)")
    else()
      message(FATAL_ERROR "asyncflow: ASYNCFLOW_BUILD_POSTGRES=${ASYNCFLOW_BUILD_POSTGRES} but "
                          "libpq is missing (pkg-config libpq; Debian: libpq-dev)")
    endif()
  else()
    set(ASYNCFLOW_POSTGRES_BUILT ON)
    message(STATUS "asyncflow: building the asyncflow::postgres add-on (libpq ${libpq_VERSION})")
  endif()
endif()

if(ASYNCFLOW_POSTGRES_BUILT)
  add_library(asyncflow_postgres
    src/store/postgres/codec.cpp
    src/store/postgres/pq.cpp
    src/store/postgres/postgres_store.cpp
    src/store/postgres/schema.cpp)
  add_library(asyncflow::postgres ALIAS asyncflow_postgres)
  set_target_properties(asyncflow_postgres PROPERTIES
    CXX_EXTENSIONS OFF
    VERSION ${PROJECT_VERSION}
    SOVERSION ${PROJECT_VERSION_MAJOR}
    EXPORT_NAME postgres)
  target_include_directories(asyncflow_postgres PRIVATE ${PROJECT_SOURCE_DIR}/src)
  # libpq stays out of postgres_store.hpp: PRIVATE, exported as a link
  # dependency of a static library only.
  target_link_libraries(asyncflow_postgres
    PUBLIC asyncflow
    PRIVATE fmt::fmt PkgConfig::libpq $<BUILD_INTERFACE:asyncflow_warnings>)

  if(ASYNCFLOW_INSTALL)
    install(TARGETS asyncflow_postgres EXPORT asyncflowPostgresTargets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
      RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
    install(FILES include/asyncflow/postgres_store.hpp
      DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/asyncflow)
    install(EXPORT asyncflowPostgresTargets
      NAMESPACE asyncflow::
      DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/asyncflow)
  endif()
endif()
