#!/usr/bin/env bash
# The test command: sets up (idempotently), builds, and runs every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh "$@"
cd "${PD_BUILD_DIR:-build}"
ctest --output-on-failure -j2 --timeout 900
