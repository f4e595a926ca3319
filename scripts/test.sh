#!/usr/bin/env bash
# The test command: sets up (idempotently), builds, and runs every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
PD_TEST_TOOLS=1 scripts/setup.sh "$@"   # with the test-only tools (headless Chromium for the dashboard test)
cd "${PD_BUILD_DIR:-build}"
ctest --output-on-failure -j2 --timeout 900
