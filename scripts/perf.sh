#!/usr/bin/env bash
# Issue 9's measurements: feedgate against the tokio peer, servers alternating
# run by run (feedgate, tokio, feedgate, ...), CPU seconds of the server from
# /proc/PID/stat over each measured window divided by its deliveries. Writes
# results/perf-<date>.md (medians) and the raw JSON lines under
# results/perf-<date>/raw/.
#
#   bash scripts/perf.sh                          # every section, 3 rounds
#   ROUNDS=1 SECTIONS="curve" bash scripts/perf.sh
#
# Sections:
#   table  CPU per delivery in three fan-out scenarios (both servers)
#   curve  write_delay_us 0 250 500 1000 2000 5000 on 50 subs x 5 channels at
#          10,000 msg/s: CPU per delivery and p99 (tokio peer alongside)
#   sweep  highest sustained deliveries/s with p99 under 10 ms and under 100 ms
#          (one sweep to the 100 ms bound per run; the 10 ms figure is its
#          highest step under 10 ms), write delay 0
#   busy   p50/p99 at 1,000 and 50,000 deliveries/s with and without
#          --busy-poll, alternating, BUSY_ROUNDS (5) rounds
#   idle   memory per idle subscribed connection at 10,000 connections
#
# Pinning: the server on SERVER_CPU (feedgate with --cores 1), Redis and the
# load generator on LOAD_CPU. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ROUNDS=${ROUNDS:-3}
BUSY_ROUNDS=${BUSY_ROUNDS:-5}
SECTIONS=${SECTIONS:-"table curve sweep busy idle"}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
WARMUP=${WARMUP:-2}
DURATION=${DURATION:-6}
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-results/perf-$DATE}
RAW=$OUT/raw
mkdir -p "$RAW"

command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
echo "== building"
cargo build --release -q -p feedgate-server -p feedgate-loadgen
cargo build --release -q --manifest-path loadgen/peers/tokio/Cargo.toml
LOADGEN=$ROOT/target/release/feedgate-loadgen

# shellcheck source=scripts/bench_common.sh
. scripts/bench_common.sh
start_redis
REDIS=redis://127.0.0.1:$RPORT

SPID=""
URL=""
start_server() { # name [feedgate flags...] -> sets SPID and URL
  local name=$1; shift
  local port; port=$(free_port)
  case $name in
    feedgate) taskset -c "$SERVER_CPU" "$ROOT/target/release/feedgate" --listen "127.0.0.1:$port" \
                --redis "$REDIS" --cores 1 --log warn "$@" 2>>"$RAW/$name.log" & ;;
    tokio) PORT=$port REDIS_URL=$REDIS taskset -c "$SERVER_CPU" \
             loadgen/peers/tokio/target/release/tokio-peer 2>>"$RAW/$name.log" & ;;
  esac
  SPID=$!
  PIDS+=("$SPID")
  URL=ws://127.0.0.1:$port/ws
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not start" >&2; return 1
}
stop_server() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }

run_load() { # label args... ; appends one JSON line to $RAW/<label>.jsonl
  local label=$1; shift
  echo "   $label"
  taskset -c "$LOAD_CPU" "$LOADGEN" "$@" --url "$URL" --redis "$REDIS" --cpu "$LOAD_CPU" \
    >>"$RAW/$label.jsonl" 2>>"$RAW/$label.log" \
    || echo "{\"error\":\"run failed\",\"label\":\"$label\"}" >>"$RAW/$label.jsonl"
}

# One fan-out on a fresh server: server label n c rate [feedgate flags...]
fanout_once() {
  local server=$1 label=$2 n=$3 c=$4 rate=$5; shift 5
  start_server "$server" "$@"
  run_load "$label" fanout -n "$n" -c "$c" -r "$rate" -p 100 --warmup "$WARMUP" -d "$DURATION" --server-pid "$SPID"
  stop_server
}

has() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }

for round in $(seq "$ROUNDS"); do
  if has table; then
    echo "== table, round $round"
    for server in feedgate tokio; do
      # deliveries/s = rate x subscribers per channel
      fanout_once "$server" "table-$server-n1000-c10-r500" 1000 10 500
      fanout_once "$server" "table-$server-n50-c5-r10000" 50 5 10000
      fanout_once "$server" "table-$server-n1000-c10-r2000" 1000 10 2000
    done
  fi
  if has curve; then
    echo "== write-delay curve, round $round"
    for delay in 0 250 500 1000 2000 5000; do
      fanout_once feedgate "curve-feedgate-wd$delay" 50 5 10000 --write-delay-us "$delay"
    done
    fanout_once tokio "curve-tokio" 50 5 10000
  fi
  if has sweep; then
    echo "== sweep, round $round"
    for server in feedgate tokio; do
      start_server "$server"
      run_load "sweep-$server" sweep -n 1000 -c 10 -p 100 --start-rate 100 --factor 1.25 \
        --warmup 1 -d 3 --p99-bound-us 100000 --server-pid "$SPID"
      stop_server
    done
  fi
  if has idle; then
    echo "== idle, round $round"
    for server in feedgate tokio; do
      start_server "$server"
      run_load "idle-$server" idle -n 10000 -c 100 --pid "$SPID"
      stop_server
    done
  fi
done

if has busy; then
  for round in $(seq "$BUSY_ROUNDS"); do
    echo "== busy poll, round $round"
    for rate in 10 500; do # x 100 subscribers per channel: 1,000 and 50,000 deliveries/s
      fanout_once feedgate "busy-off-r$rate" 1000 10 "$rate"
      fanout_once feedgate "busy-on-r$rate" 1000 10 "$rate" --busy-poll
    done
  done
fi

echo "== summary"
python3 scripts/perf_summary.py "$RAW" "$OUT.md" --commit "$(git rev-parse --short HEAD)" \
  --command "ROUNDS=$ROUNDS BUSY_ROUNDS=$BUSY_ROUNDS SECTIONS=\"$SECTIONS\" bash scripts/perf.sh" \
  --machine "$(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(free -g | awk '/Mem:/{print $2}') GiB, Linux $(uname -r)"
echo "wrote $OUT.md"
