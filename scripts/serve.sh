#!/usr/bin/env bash
# The main job: sets up (idempotently), unpacks the default model (models/demo-v3.tar.xz, a small trained
# checkpoint; MTP speculative decoding on, configs/local-1p1d/decode.yaml) if it is not yet, starts a local
# pdserve-router + pdserve-prefill + pdserve-decode (configs/local-1p1d/), waits until they are healthy and
# prints a working curl example once all three answer /health. Ctrl-C stops all three.
# It also supervises them: a process that fails (non-zero status or a signal: a crash, an abort inside a library,
# the OOM killer) is started again with the same arguments after a back-off (1 s, doubling to 30 s; reset once it
# has run for 60 s), and the router takes it back into scheduling when its /health answers. Five failures within
# 60 s of their starts in a row stop everything with an error instead (a process that cannot start, say a port in
# use). A clean exit (status 0: an instance drained with POST /internal/drain) is not restarted, as systemd's
# Restart=on-failure does. --no-restart turns supervision off: the first failure then stops the others.
# --prefill-ranks N / --decode-ranks N run that pool as one instance over N MPI ranks on this host (mpirun -np N,
# expert parallelism, docs/scaling.md); a rank that dies takes its instance down and the script starts it again.
# --model models/tiny generates and serves the random-weight test model instead.
# Usage: scripts/serve.sh [--model DIR] [--config-dir DIR] [--log-dir DIR] [--no-restart] [--prefill-ranks N]
#                         [--decode-ranks N]
# Environment: PD_BUILD_DIR (default build), PD_SKIP_SETUP=1 (do not run scripts/setup.sh: the binaries are built)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/demo-v3
CONF=configs/local-1p1d
LOGS=logs
RESTART=1
PRANKS=1
DRANKS=1
USAGE="usage: scripts/serve.sh [--model DIR] [--config-dir DIR] [--log-dir DIR] [--no-restart] [--prefill-ranks N] [--decode-ranks N]"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --config-dir) CONF=$2; shift 2 ;;
    --log-dir) LOGS=$2; shift 2 ;;
    --no-restart) RESTART=0; shift ;;
    --prefill-ranks) PRANKS=$2; shift 2 ;;
    --decode-ranks) DRANKS=$2; shift 2 ;;
    *) echo "$USAGE" >&2; exit 2 ;;
  esac
done
for n in "$PRANKS" "$DRANKS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "serve: a rank count must be a positive number, not '$n'" >&2; echo "$USAGE" >&2; exit 2; }
done
BUILD=${PD_BUILD_DIR:-build}
[ "${PD_SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh >/dev/null
if [ ! -f "$MODEL/config.json" ] && [ -f "$MODEL.tar.xz" ]; then
  echo "serve: unpacking $MODEL.tar.xz into $(dirname "$MODEL")/"
  tar xJf "$MODEL.tar.xz" -C "$(dirname "$MODEL")"
elif [ ! -f "$MODEL/config.json" ] && [ "$(basename "$MODEL")" = tiny ]; then
  echo "serve: generating the random-weight test model in $MODEL (tiny preset, DeepSeek-V3 layout and tokenizer)"
  "$BUILD/tools/pdserve-model" generate --preset tiny --out "$MODEL"
fi
[ -f "$MODEL/config.json" ] || { echo "serve: no model at $MODEL (no config.json there, no $MODEL.tar.xz)" >&2; exit 2; }
mkdir -p "$LOGS"

NAMES=(decode prefill router)
declare -A CMD PID STARTED FAST BACKOFF
ranks() { # N: the mpirun prefix and, after it, the binary; N=1: the binary alone. Ranks on this host only: shared
  # memory between them, mpirun's own channel on loopback.
  local n=$1
  [ "$n" = 1 ] && return
  local root=""
  [ "$(id -u)" = 0 ] && root="--allow-run-as-root"
  # its own session, out of reach of a Ctrl-C: a signal to mpirun ends its job hard (it forwards it to every rank and
  # kills them 1 s later). The stop signal goes to rank 0 instead (cleanup): it drains, the others follow it.
  echo "setsid mpirun $root -np $n --oversubscribe --bind-to none --mca pml ob1 --mca btl self,vader --mca oob_tcp_if_include lo"
}
dp() { [ "$1" = 1 ] || echo "--data-parallel-size $1 --enable-expert-parallel"; }
CMD[decode]="$(ranks "$DRANKS") $BUILD/decode/pdserve-decode --config $CONF/decode.yaml --model $MODEL $(dp "$DRANKS")"
CMD[prefill]="$(ranks "$PRANKS") $BUILD/prefill/pdserve-prefill --config $CONF/prefill.yaml --model $MODEL $(dp "$PRANKS")"
CMD[router]="$BUILD/router/pdserve-router --config $CONF/router.yaml --model $MODEL"
stopping=0

start() { # name: starts it, its stderr appended to $LOGS/<name>.log
  local n=$1
  # shellcheck disable=SC2086 # the command's words were built above, paths without spaces
  ${CMD[$n]} > /dev/null 2>> "$LOGS/$n.log" &
  PID[$n]=$!
  STARTED[$n]=$SECONDS
}

cleanup() {
  trap - INT TERM EXIT
  stopping=1
  local p=() n
  for n in "${NAMES[@]}"; do
    [ -n "${PID[$n]:-}" ] || continue
    case "${CMD[$n]}" in
      setsid\ mpirun*) # rank 0, which drains and then stops the others (see ranks()); mpirun while it has none
        local r="" c
        for c in $(pgrep -P "${PID[$n]}"); do
          tr '\0' '\n' < "/proc/$c/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=0' && r=$c
        done
        p+=("${r:-${PID[$n]}}") ;;
      *) p+=("${PID[$n]}") ;;
    esac
  done
  [ ${#p[@]} -gt 0 ] && kill -TERM "${p[@]}" 2>/dev/null
  wait 2>/dev/null || true
  echo "serve: stopped"
}
trap cleanup INT TERM EXIT

PORT=$(awk '/^port:/{print $2}' "$CONF/router.yaml")
PPORT=$(awk '/^port:/{print $2}' "$CONF/prefill.yaml")
DPORT=$(awk '/^port:/{print $2}' "$CONF/decode.yaml")
for n in "${NAMES[@]}"; do : > "$LOGS/$n.log"; start "$n"; FAST[$n]=0; BACKOFF[$n]=1; done
healthy() { # all three answer /health with 200
  local p
  for p in "$PORT" "$PPORT" "$DPORT"; do curl -sf "http://127.0.0.1:$p/health" > /dev/null 2>&1 || return 1; done
}
for _ in $(seq 1 600); do
  healthy && break
  for n in "${NAMES[@]}"; do
    kill -0 "${PID[$n]}" 2>/dev/null || { echo "serve: pdserve-$n exited at start-up; see $LOGS/*.log" >&2; tail -n 5 "$LOGS"/*.log >&2; exit 1; }
  done
  sleep 0.2
done
healthy || { echo "serve: not healthy after 120 s; see $LOGS/" >&2; exit 1; }
NAME=$(basename "$MODEL")
cat <<MSG
serve: router http://127.0.0.1:$PORT (OpenAI API), prefill :$PPORT, decode :$DPORT; logs in $LOGS/. Try:

  curl http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "$NAME", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'

Ctrl-C stops all three.
MSG

# Supervision: wait for any child; one that exited while we are not stopping is started again.
while [ $stopping = 0 ]; do
  wait -n 2>/dev/null || true
  [ $stopping = 1 ] && break
  for n in "${NAMES[@]}"; do
    [ -z "${PID[$n]}" ] && continue
    kill -0 "${PID[$n]}" 2>/dev/null && continue
    rc=0; wait "${PID[$n]}" 2>/dev/null || rc=$?
    ran=$((SECONDS - ${STARTED[$n]}))
    if [ $rc = 0 ]; then # a clean exit (a drained instance, a deliberate stop): not a failure, as systemd's on-failure
      echo "serve: pdserve-$n exited cleanly after ${ran} s (drained or stopped); not restarting it" >&2
      PID[$n]=""
      left=0; for m in "${NAMES[@]}"; do [ -n "${PID[$m]}" ] && left=1; done
      [ $left = 0 ] && { echo "serve: no process left" >&2; exit 0; }
      continue
    fi
    if [ $RESTART = 0 ]; then
      echo "serve: pdserve-$n failed (status $rc) after ${ran} s; stopping (--no-restart); see $LOGS/$n.log" >&2
      exit 1
    fi
    if [ $ran -ge 60 ]; then FAST[$n]=0; BACKOFF[$n]=1; else FAST[$n]=$((${FAST[$n]} + 1)); fi
    if [ "${FAST[$n]}" -ge 5 ]; then
      echo "serve: pdserve-$n failed 5 times in a row within 60 s of starting (last status $rc); stopping; see $LOGS/$n.log" >&2
      tail -n 5 "$LOGS/$n.log" >&2
      exit 1
    fi
    echo "serve: pdserve-$n failed (status $rc) after ${ran} s; restarting it in ${BACKOFF[$n]} s; see $LOGS/$n.log" >&2
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) serve: failed with status $rc after ${ran} s; restarting in ${BACKOFF[$n]} s" >> "$LOGS/$n.log"
    sleep "${BACKOFF[$n]}" & wait $! || true
    [ $stopping = 1 ] && break
    b=$((${BACKOFF[$n]} * 2)); BACKOFF[$n]=$((b > 30 ? 30 : b))
    start "$n"
    echo "serve: pdserve-$n started again (pid ${PID[$n]})" >&2
  done
done
