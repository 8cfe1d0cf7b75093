#!/usr/bin/env bash
# Installs the Debian packages the build needs, when they are missing.
# As root it runs apt-get; otherwise it prints the one command to run and fails.
#   scripts/install-deps.sh          build and test packages
#   scripts/install-deps.sh bench    also what the benchmarks drive (wrk, Google Benchmark, perf)
set -euo pipefail

packages=(g++ make cmake ninja-build pkg-config git
          libboost-dev libcurl4-openssl-dev libssl-dev zlib1g-dev libbrotli-dev
          nlohmann-json3-dev libsimdjson-dev libsqlite3-dev libgtest-dev libgmock-dev python3-venv
          openssl nginx-light
          librabbitmq-dev libhiredis-dev rabbitmq-server redis-server  # scale-out: queue and coordination
          clang libclang-rt-14-dev)  # the fuzz targets: clang 14 and its libFuzzer runtime
if [ "${1:-}" = bench ]; then
  packages+=(wrk libbenchmark-dev linux-perf)  # perf: bench/pipeline --profile
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A python3 that is not Debian's (pyenv, say) brings its own venv module.
if [[ " ${missing[*]} " == *" python3-venv "* ]] && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
  read -r -a missing <<< "${missing[*]}"
fi
[ ${#missing[@]} -eq 0 ] && exit 0

line="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "isthmus needs these Debian packages. Run, as root:" >&2
  echo "  apt-get update && $line" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
$line
