#!/usr/bin/env bash
# Runs libpdkv's kv_bench and ucx_perftest (ucp_put_bw, ucp_am_bw, tag_bw) on the same transport and
# message sizes, on loopback, and prints pdserve / best-perftest-mode per size and transport, twice:
#  - like-for-like: kv_bench --slots 1, one message-size buffer per side, which is perftest's working set
#    (its bw tests rewrite one buffer of the message size on each side, cache-resident up to ~L3/2);
#  - streaming: kv_bench's default, 64 distinct block slots per side (4 transfers x 16 blocks), a pool
#    larger than the cache from 1 MiB up, as real KV pools are; compared with the same perftest figures.
# Units are MB/s as ucx_perftest reports them (2^20 bytes/s); the table shows GB/s = MB/s / 1024.
# Usage: benchmarks/kv_bench.sh [build-dir]   (env BYTES: bytes per kv_bench run, default 4e9;
#        KVB_ARGS: more kv_bench arguments for both sides, e.g. "--linger 0" for the A/B of interrupt moderation)
set -euo pipefail
BUILD=${1:-build}
KVB=$BUILD/benchmarks/kv_bench
BYTES=${BYTES:-4000000000}
KVB_ARGS=${KVB_ARGS:-}
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
export UCX_WARN_UNUSED_ENV_VARS=n
PORT=$((20000 + RANDOM % 20000))

kvbench() { # size slots (0: kv_bench's default, streaming) -> MB/s
  rm -f "$TMP/desc"
  "$KVB" recv --desc-out "$TMP/desc" --size "$1" --slots "$2" $KVB_ARGS 2>/dev/null & local r=$!; PIDS+=($r)
  local out; out=$(timeout 120 "$KVB" send --desc "$TMP/desc" --size "$1" --slots "$2" --bytes "$BYTES" $KVB_ARGS 2>/dev/null | grep RESULT || true)
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

printf "%-4s %-9s %10s %10s %10s %10s %10s %8s %8s\n" tr size pd_1slot pd_stream ucp_put_bw ucp_am_bw tag_bw "ratio_1" "ratio_st"
for tr in sm tcp; do
  if [ $tr = sm ]; then export UCX_TLS=posix,cma,self; unset UCX_NET_DEVICES
  else export UCX_TLS=tcp,self UCX_NET_DEVICES=lo; fi
  for size in 65536 1048576 9437184; do
    kv1=$(kvbench $size 1); kvs=$(kvbench $size 0)
    put=$(perftest ucp_put_bw $size); am=$(perftest ucp_am_bw $size); tag=$(perftest tag_bw $size)
    python3 - "$tr" "$size" "$kv1" "$kvs" "$put" "$am" "$tag" <<'PY'
import sys
tr, size, *vals = sys.argv[1:]
v = [float(x) / 1024 if x else float("nan") for x in vals]
best = max(x for x in v[2:] if x == x) if any(x == x for x in v[2:]) else float("nan")
print("%-4s %-9s %10.2f %10.2f %10.2f %10.2f %10.2f %8.2f %8.2f" % (tr, size, *v, v[0] / best, v[1] / best))
PY
  done
done
echo "(GB/s = 2^30 bytes/s; pd_1slot = kv_bench --slots 1 (perftest's working set: one message-size buffer per side),"
echo " pd_stream = kv_bench's 64 block slots per side (streaming through a pool); ratio_1 = pd_1slot / best perftest mode"
echo " (like-for-like), ratio_st = pd_stream / best perftest mode; UCX_TLS sm=posix,cma,self tcp=tcp,self on lo)"
