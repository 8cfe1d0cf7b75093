# System libraries (Debian packages installed by scripts/install-deps.sh).
#
# Each is looked for without REQUIRED, so that a machine missing several gets one message naming
# every Debian package to install, instead of one CMake error per rebuild. To see that message,
# hide a library: cmake -DCMAKE_DISABLE_FIND_PACKAGE_CURL=ON ...
find_package(Threads REQUIRED)

set(ISTHMUS_MISSING_PACKAGES "")
# isthmus_find(<debian package> <find_package arguments...>)
macro(isthmus_find debian_package name)
  find_package(${name} ${ARGN} QUIET)
  if(NOT ${name}_FOUND)
    list(APPEND ISTHMUS_MISSING_PACKAGES ${debian_package})
  endif()
endmacro()

isthmus_find(libcurl4-openssl-dev CURL)
isthmus_find(libssl-dev OpenSSL)
isthmus_find(zlib1g-dev ZLIB)
isthmus_find(libsqlite3-dev SQLite3)
isthmus_find(nlohmann-json3-dev nlohmann_json 3.10)
# The pipeline's page parser.
isthmus_find(libsimdjson-dev simdjson)
# The RabbitMQ backend of the queue (AmqpQueue); Debian's 0.11 ships a CMake config.
isthmus_find(librabbitmq-dev rabbitmq-c CONFIG)
# Boost 1.74 ships a CMake config; Asio and Beast are header-only.
isthmus_find(libboost-dev Boost 1.74 CONFIG)
# Coordination (shared limits, leases) on Redis. Debian's hiredis config sets variables, not a
# target, and loads even when the library itself is gone: check what it found.
isthmus_find(libhiredis-dev Hiredis 0.14 CONFIG)  # its version file needs a version asked for
if(Hiredis_FOUND AND (NOT HIREDIS_INCLUDE_DIRS OR NOT HIREDIS_LIBRARIES))
  list(APPEND ISTHMUS_MISSING_PACKAGES libhiredis-dev)
endif()
if(ISTHMUS_PYTHON)
  isthmus_find(python3-dev Python 3.9 COMPONENTS Interpreter Development.Module)
endif()
if(ISTHMUS_TESTS)
  isthmus_find(libgtest-dev GTest)
endif()

if(ISTHMUS_MISSING_PACKAGES)
  list(JOIN ISTHMUS_MISSING_PACKAGES " " _isthmus_missing)
  message(FATAL_ERROR
    "isthmus needs system libraries this machine does not have (or has too old): ${_isthmus_missing}\n"
    "Install them with the project's script, which knows every package the build and tests need:\n"
    "  sudo bash scripts/install-deps.sh\n"
    "or only these:\n"
    "  sudo apt-get install ${_isthmus_missing}")
endif()

if(NOT TARGET isthmus::hiredis)
  add_library(isthmus::hiredis INTERFACE IMPORTED)
  set_target_properties(isthmus::hiredis PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${HIREDIS_INCLUDE_DIRS}" INTERFACE_LINK_LIBRARIES "${HIREDIS_LIBRARIES}")
endif()

# CMake 4 renamed the SQLite target; Debian's CMake 3.25 has only the old name.
if(TARGET SQLite3::SQLite3)
  set(ISTHMUS_SQLITE_TARGET SQLite3::SQLite3)
else()
  set(ISTHMUS_SQLITE_TARGET SQLite::SQLite3)
endif()
