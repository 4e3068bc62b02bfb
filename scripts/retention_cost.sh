#!/usr/bin/env bash
# What the retention-gap check costs: feedgate binaries (BINS, name=path
# pairs, e.g. one built without the check and one with it) under the same
# `feedgate-loadgen fanout` loads, taking turns, RUNS times each. Per run: the
# loadgen's JSON, feedgate's CPU time (/proc/<pid>/task/*/schedstat, the
# whole run, connecting included) and Redis's (INFO cpu, and XREAD's share
# from INFO commandstats). feedgate runs with --cores 1 on SERVER_CPU; Redis
# and the loadgen share LOAD_CPU.
#
#   BINS="base=/tmp/fg-base new=/tmp/fg-new" RUNS=3 scripts/retention_cost.sh OUTDIR
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?output directory}
read -r -a BINS <<<"${BINS:?name=path pairs of feedgate binaries}"
RUNS=${RUNS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
LOADGEN=${LOADGEN:-target/release/feedgate-loadgen}
mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%d\n", s}'; }

RPORT=$(free_port)
taskset -c "$LOAD_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 20000 --logfile "$OUT/redis.log" &
RPID=$!
FPID=
trap 'kill $RPID ${FPID:-} 2>/dev/null || true' EXIT
until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.1; done
printf '[[namespaces]]\nprefix = "ps."\nsource = "pubsub"\n' >"$OUT/feedgate.toml"

# name: loadgen fanout arguments (SCENARIOS overrides, one per line)
DEFAULT_SCENARIOS="k1-r100:-n 1 -c 1 -r 100 -p 100
k10-r100:-n 10 -c 10 -r 100 -p 100
k100-r100:-n 100 -c 100 -r 100 -p 100
k10-r100-1k:-n 1000 -c 10 -r 100 -p 100
k10-r20k:-n 20 -c 10 -r 20000 -p 100"
mapfile -t SCENARIOS <<<"${SCENARIOS:-$DEFAULT_SCENARIOS}"

for run in $(seq "$RUNS"); do
  for scenario in "${SCENARIOS[@]}"; do
    name=${scenario%%:*}
    read -r -a args <<<"${scenario#*:}"
    for pair in "${BINS[@]}"; do
      which=${pair%%=*}
      bin=${pair#*=}
      redis-cli -p "$RPORT" flushall >/dev/null
      port=$(free_port)
      taskset -c "$SERVER_CPU" "$bin" --listen "127.0.0.1:$port" --redis "redis://127.0.0.1:$RPORT" \
        --cores 1 --config "$OUT/feedgate.toml" --log warn 2>>"$OUT/feedgate-$which.log" &
      FPID=$!
      until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
      redis-cli -p "$RPORT" config resetstat >/dev/null
      r0=$(redis-cli -p "$RPORT" info cpu | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END{print s}')
      f0=$(cpu_ns "$FPID")
      taskset -c "$LOAD_CPU" "$LOADGEN" fanout --url "ws://127.0.0.1:$port/ws" \
        --redis "redis://127.0.0.1:$RPORT" --warmup 1 -d 5 --cpu "$LOAD_CPU" "${args[@]}" \
        >"$OUT/$name-$which-$run.json" 2>>"$OUT/loadgen.log"
      f1=$(cpu_ns "$FPID")
      r1=$(redis-cli -p "$RPORT" info cpu | awk -F: '/^used_cpu_(user|sys):/{s+=$2} END{print s}')
      xread=$(redis-cli -p "$RPORT" info commandstats | tr -d '\r' | sed -n 's/^cmdstat_xread:calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2/p')
      kill "$FPID"
      wait "$FPID" 2>/dev/null || true
      FPID=
      echo "{\"scenario\":\"$name\",\"binary\":\"$which\",\"run\":$run,\"feedgate_cpu_ns\":$((f1 - f0)),\"redis_cpu_s\":$(awk -v a="$r0" -v b="$r1" 'BEGIN{printf "%.6f", b - a}'),\"xread_calls\":${xread%% *},\"xread_usec\":${xread##* }}" \
        >>"$OUT/cpu.jsonl"
      echo "run $run $name $which done" >&2
    done
  done
done
