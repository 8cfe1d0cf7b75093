# System libraries (Debian packages installed by scripts/install-deps.sh).
find_package(Threads REQUIRED)
find_package(CURL REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(ZLIB REQUIRED)
find_package(SQLite3 REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
# The pipeline's page parser (Debian's libsimdjson-dev).
find_package(simdjson REQUIRED)
# Boost 1.74 ships a CMake config; Asio and Beast are header-only.
find_package(Boost 1.74 REQUIRED CONFIG)
# CMake 4 renamed the SQLite target; Debian's CMake 3.25 has only the old name.
if(TARGET SQLite3::SQLite3)
  set(ISTHMUS_SQLITE_TARGET SQLite3::SQLite3)
else()
  set(ISTHMUS_SQLITE_TARGET SQLite::SQLite3)
endif()
