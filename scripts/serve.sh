#!/usr/bin/env bash
# The main job. Sets up (idempotently), generates the default model if it is missing, and runs it.
# Until the servers land (router/prefill/decode), this is an offline generation through the engine.
# Usage: scripts/serve.sh [--model DIR] [pdserve-model run options...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null

MODEL=models/tiny
if [ "${1:-}" = "--model" ]; then MODEL=$2; shift 2; fi
if [ ! -f "$MODEL/config.json" ]; then
  echo "serve: generating the default model ($MODEL, tiny preset with the DeepSeek-V3 tokenizer)"
  build/tools/pdserve-model generate --preset tiny --out "$MODEL"
fi
build/tools/pdserve-model inspect "$MODEL"
echo
echo "serve: offline generation (greedy, 32 tokens) from token ids 0,100,200,300:"
exec build/tools/pdserve-model run --model "$MODEL" --tokens 0,100,200,300 --max-tokens 32 "$@"
