#!/usr/bin/env bash
# The test command: sets up (idempotently), builds, runs every test with CTest; then builds the whole tree with
# AddressSanitizer + UndefinedBehaviorSanitizer and runs every test again (PD_SANITIZE_TESTS=0 skips that pass),
# and runs each libFuzzer target over a fixed number of inputs (PD_FUZZ_TESTS=0 skips that).
set -euo pipefail
cd "$(dirname "$0")/.."
export PD_TEST_TOOLS=1 # test-only tools (headless Chromium for the dashboard test)
scripts/setup.sh "$@"
(cd "${PD_BUILD_DIR:-build}" && ctest --output-on-failure -j2 --timeout 900)
if [ "${PD_SANITIZE_TESTS:-1}" != 0 ]; then
  echo "test: the same suite under ASan + UBSan (build-asan/)"
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPD_SANITIZE=address,undefined > /dev/null
  cmake --build build-asan -j"$(nproc)" > build-asan.log 2>&1 || { tail -40 build-asan.log; exit 1; }
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0
  export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
  export LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0
  (cd build-asan && ctest --output-on-failure -j2 --timeout 1500)
fi
if [ "${PD_FUZZ_TESTS:-1}" != 0 ]; then
  echo "test: fuzz targets (build-fuzz/, clang + libFuzzer, a fixed seed and number of inputs each)"
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DPD_FUZZ=ON -DPD_SANITIZE=address,undefined > /dev/null
  cmake --build build-fuzz -j"$(nproc)" --target fuzz_safetensors fuzz_tokenizer fuzz_chat_template fuzz_yaml_opts fuzz_router_request fuzz_http \
    > build-fuzz.log 2>&1 || { tail -40 build-fuzz.log; exit 1; }
  (cd build-fuzz && ctest --output-on-failure -L fuzz)
fi
