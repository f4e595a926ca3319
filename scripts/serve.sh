#!/usr/bin/env bash
# The main job: sets up (idempotently), generates the default model if it is missing, starts a local
# pdserve-router + pdserve-prefill + pdserve-decode (configs/local-1p1d/), waits until they are healthy and
# prints a working curl example. Ctrl-C stops all three.
# Usage: scripts/serve.sh [--model DIR] [--config-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/tiny
CONF=configs/local-1p1d
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --config-dir) CONF=$2; shift 2 ;;
    *) echo "usage: scripts/serve.sh [--model DIR] [--config-dir DIR]" >&2; exit 2 ;;
  esac
done
scripts/setup.sh >/dev/null
if [ ! -f "$MODEL/config.json" ]; then
  echo "serve: generating the default model in $MODEL (tiny preset, DeepSeek-V3 layout and tokenizer)"
  build/tools/pdserve-model generate --preset tiny --out "$MODEL"
fi
mkdir -p logs
pids=()
cleanup() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
  echo "serve: stopped"
}
trap cleanup INT TERM EXIT
build/decode/pdserve-decode --config "$CONF/decode.yaml" --model "$MODEL" > /dev/null 2> logs/decode.log & pids+=($!)
build/prefill/pdserve-prefill --config "$CONF/prefill.yaml" --model "$MODEL" > /dev/null 2> logs/prefill.log & pids+=($!)
build/router/pdserve-router --config "$CONF/router.yaml" --model "$MODEL" > /dev/null 2> logs/router.log & pids+=($!)
PORT=$(awk '/^port:/{print $2}' "$CONF/router.yaml")
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && break
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || { echo "serve: a process exited; see logs/*.log" >&2; tail -5 logs/*.log >&2; exit 1; }; done
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/health" > /dev/null || { echo "serve: not healthy after 60 s; see logs/" >&2; exit 1; }
NAME=$(basename "$MODEL")
cat <<MSG
serve: router http://127.0.0.1:$PORT (OpenAI API), prefill :8100, decode :8200; logs in logs/. Try:

  curl http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$NAME", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'

Ctrl-C stops all three.
MSG
wait
