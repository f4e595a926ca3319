#!/usr/bin/env bash
# Runs libpdkv's kv_bench and ucx_perftest (ucp_put_bw, ucp_am_bw, tag_bw) on the same transport and
# message sizes, on loopback, and prints pdserve / best-perftest-mode per size and transport.
# Units are MB/s as ucx_perftest reports them (2^20 bytes/s); the table shows GB/s = MB/s / 1024.
# Usage: benchmarks/kv_bench.sh [build-dir]   (env BYTES: bytes per kv_bench run, default 4e9)
set -euo pipefail
BUILD=${1:-build}
KVB=$BUILD/benchmarks/kv_bench
BYTES=${BYTES:-4000000000}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
export UCX_WARN_UNUSED_ENV_VARS=n
PORT=$((20000 + RANDOM % 20000))

kvbench() { # size -> MB/s
  rm -f "$TMP/desc"
  "$KVB" recv --desc-out "$TMP/desc" --size "$1" 2>/dev/null & local r=$!; PIDS+=($r)
  local out; out=$(timeout 120 "$KVB" send --desc "$TMP/desc" --size "$1" --bytes "$BYTES" 2>/dev/null | grep RESULT || true)
  kill $r 2>/dev/null || true; wait $r 2>/dev/null || true
  echo "$out" | sed -n 's/.*MBps=\([0-9.]*\).*/\1/p'
}

perftest() { # test size -> MB/s (overall bandwidth column)
  PORT=$((PORT + 1))
  local iters=$(( BYTES / $2 )); [ $iters -lt 200 ] && iters=200
  ucx_perftest -p $PORT >/dev/null 2>&1 & local s=$!; PIDS+=($s)
  sleep 0.5
  local out; out=$(timeout 120 ucx_perftest 127.0.0.1 -p $PORT -t "$1" -s "$2" -n $iters -w 20 -f 2>/dev/null | tail -1 || true)
  kill $s 2>/dev/null || true; wait $s 2>/dev/null || true
  echo "$out" | awk '{print $6}'
}

printf "%-4s %-9s %10s %10s %10s %10s %7s\n" tr size pdserve ucp_put_bw ucp_am_bw tag_bw ratio
for tr in sm tcp; do
  if [ $tr = sm ]; then export UCX_TLS=posix,cma,self; unset UCX_NET_DEVICES
  else export UCX_TLS=tcp,self UCX_NET_DEVICES=lo; fi
  for size in 65536 1048576 9437184; do
    kv=$(kvbench $size); put=$(perftest ucp_put_bw $size); am=$(perftest ucp_am_bw $size); tag=$(perftest tag_bw $size)
    python3 - "$tr" "$size" "$kv" "$put" "$am" "$tag" <<'PY'
import sys
tr, size, *vals = sys.argv[1:]
v = [float(x) / 1024 if x else float("nan") for x in vals]
best = max(x for x in v[1:] if x == x) if any(x == x for x in v[1:]) else float("nan")
print("%-4s %-9s %10.2f %10.2f %10.2f %10.2f %7.2f" % (tr, size, v[0], v[1], v[2], v[3], v[0] / best))
PY
  done
done
echo "(GB/s = 2^30 bytes/s; ratio = pdserve / best perftest mode; UCX_TLS sm=posix,cma,self tcp=tcp,self on lo)"
