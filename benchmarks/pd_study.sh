#!/usr/bin/env bash
# The PD-vs-colocated study: for each deployment (colocated, 1P1D, 1P2D) started from configs/ on ports it
# picks, a pdserve-bench sweep over request rates; then `pdserve-bench compare` writes the plots and a table.
# Usage: benchmarks/pd_study.sh [--model DIR] [--out DIR] [--rates 1,2,4] [--num-prompts N] [--input-len N]
#                                [--output-len N] [--goodput 'ttft:MS tpot:MS'] [--deployments colocated,1p1d,1p2d]
# Extra server flags go in PD_SERVER_ARGS (e.g. "--kv-cache-memory 512M"). Needs a build in build/.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=build/models/tiny OUT=build/pd_study RATES=2,4,8 N=40 IN=256 OUTLEN=32 GOODPUT="ttft:1000 tpot:100"
DEPLOYMENTS=colocated,1p1d,1p2d
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;; --out) OUT=$2; shift 2 ;; --rates) RATES=$2; shift 2 ;;
    --num-prompts) N=$2; shift 2 ;; --input-len) IN=$2; shift 2 ;; --output-len) OUTLEN=$2; shift 2 ;;
    --goodput) GOODPUT=$2; shift 2 ;; --deployments) DEPLOYMENTS=$2; shift 2 ;;
    *) sed -n '2,7p' "$0" >&2; exit 2 ;;
  esac
done
B=build
[ -x $B/benchmarks/pdserve-bench ] || { echo "pd_study: build first (cmake --build build)" >&2; exit 1; }
[ -f "$MODEL/config.json" ] || { echo "pd_study: no model in $MODEL (build/tools/pdserve-model generate ...)" >&2; exit 1; }
mkdir -p "$OUT"
pids=()
stop_all() {
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT INT TERM

# start NAME CMD...: runs CMD with --port 0, waits for "READY <port>", sets PORT
start() {
  local name=$DEP-$1; shift
  rm -f "$OUT/$name.out"   # before the start: the parent must never read an old file
  "$@" --port 0 > "$OUT/$name.out" 2> "$OUT/$name.log" & pids+=($!)
  for _ in $(seq 1 1200); do
    PORT=$(awk '/^READY /{print $2; exit}' "$OUT/$name.out" 2>/dev/null || true)
    [ -n "$PORT" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || { echo "pd_study: $name exited; see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "pd_study: $name did not start" >&2; exit 1
}

SERVER=(--model "$MODEL" ${PD_SERVER_ARGS:-})
results=()
for dep in ${DEPLOYMENTS//,/ }; do
  DEP=$dep
  echo "pd_study: === $dep ==="
  case "$dep" in
    colocated)
      start decode $B/decode/pdserve-decode --config configs/local-1p1d/decode.yaml "${SERVER[@]}" --colocated; D=$PORT
      start router $B/router/pdserve-router --config configs/local-1p1d/router.yaml --model "$MODEL" --prefill "" --decode 127.0.0.1:$D ;;
    1p1d)
      start decode $B/decode/pdserve-decode --config configs/local-1p1d/decode.yaml "${SERVER[@]}"; D=$PORT
      start prefill $B/prefill/pdserve-prefill --config configs/local-1p1d/prefill.yaml "${SERVER[@]}"; P=$PORT
      start router $B/router/pdserve-router --config configs/local-1p1d/router.yaml --model "$MODEL" --prefill 127.0.0.1:$P --decode 127.0.0.1:$D ;;
    1p2d)
      start decode0 $B/decode/pdserve-decode --config configs/local-1p1d/decode.yaml "${SERVER[@]}"; D0=$PORT
      start decode1 $B/decode/pdserve-decode --config configs/local-1p1d/decode.yaml "${SERVER[@]}"; D1=$PORT
      start prefill $B/prefill/pdserve-prefill --config configs/local-1p1d/prefill.yaml "${SERVER[@]}"; P=$PORT
      start router $B/router/pdserve-router --config configs/local-1p2d/router.yaml --model "$MODEL" --prefill 127.0.0.1:$P --decode 127.0.0.1:$D0,127.0.0.1:$D1 ;;
    *) echo "pd_study: unknown deployment $dep" >&2; exit 2 ;;
  esac
  R=$PORT
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$R/health" > /dev/null && break; sleep 0.1; done
  $B/benchmarks/pdserve-bench --port "$R" --label "$dep" --num-prompts "$N" --random-input-len "$IN" \
    --random-output-len "$OUTLEN" --ignore-eos --num-warmups 2 --sweep-rates "$RATES" --goodput "$GOODPUT" \
    --save-result "$OUT/$dep.json" | tee "$OUT/$dep.txt"
  results+=("$OUT/$dep.json")
  stop_all
done
$B/benchmarks/pdserve-bench compare "${results[@]}" --out-dir "$OUT"
cat "$OUT/summary.md"
