#!/usr/bin/env bash
# Slow consumers (PROTOCOL.md section 6): for each slow-consumer policy, the same
# fanout with and without one stalled neighbour (a client that subscribes, then
# never reads), RUNS runs each. Writes results/slow-consumer-<date>.md: medians of
# the healthy clients' p50/p99, what happened to the stalled client (close code,
# gaps and their `dropped`, deliveries), and the server's RSS while it was held;
# raw JSON and logs under results/slow-consumer-<date>/raw/.
#
# Needs release binaries (it does not build them):
#   cargo build --release -p feedgate-server -p feedgate-loadgen
#   bash scripts/bench-slow-consumer.sh
#   RUNS=1 POLICIES="disconnect" bash scripts/bench-slow-consumer.sh
#
# Pinning: feedgate (--cores 1) on SERVER_CPU, Redis and the load generator on
# LOAD_CPU. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

USAGE="usage: [RUNS=3] [POLICIES=\"disconnect drop_oldest conflate\"] [MAX_RATE=R] [OUT=results/NAME] bash scripts/bench-slow-consumer.sh"
case "${1:-}" in
  -h|--help) echo "$USAGE"; sed -n '2,15p' "$0"; exit 0 ;;
  "") ;;
  *) echo "$USAGE" >&2; exit 2 ;;
esac

RUNS=${RUNS:-3}
POLICIES=${POLICIES:-"disconnect drop_oldest conflate"}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
# The scenario: CONNECTIONS healthy clients over CHANNELS channels, RATE messages/s
# in total, PAYLOAD bytes each, cycling over KEYS instruments (field `sym`). The
# stalled neighbour subscribes to channel 0 and so gets RATE/CHANNELS messages/s.
# The defaults (20,000 deliveries/s) stay well under a 2-core machine's ceiling.
CONNECTIONS=${CONNECTIONS:-20}
CHANNELS=${CHANNELS:-1}
RATE=${RATE:-1000}
PAYLOAD=${PAYLOAD:-1024}
KEYS=${KEYS:-10}
# Before the queue can overflow, the server's socket send buffer (up to
# net.ipv4.tcp_wmem's max, 4 MiB by default) fills: at 1,000 x 1 KiB messages/s
# that takes about 3.5 s, so the warm-up is long enough for the policy to act
# before the measured window starts.
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-10}
# A small outbound queue and a small receive buffer on the stalled client, so the
# stall reaches the server's policy within the warm-up rather than after minutes
# of filling buffers.
QUEUE_BYTES=${QUEUE_BYTES:-262144}
STALLED_RCVBUF=${STALLED_RCVBUF:-16384}
# A stalled client reads nothing, not even its close frame, until the run ends;
# the server cuts off a closing connection that has not moved a byte for the pong
# timeout. 60 s keeps the close frame readable for the whole run.
PONG_TIMEOUT_MS=${PONG_TIMEOUT_MS:-60000}
# When set, every subscribe (healthy and stalled) carries "max_rate": MAX_RATE.
MAX_RATE=${MAX_RATE:-}
FEEDGATE=${FEEDGATE:-$ROOT/target/release/feedgate}
LOADGEN=${LOADGEN:-$ROOT/target/release/feedgate-loadgen}
DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-results/slow-consumer-$DATE}
RAW=$OUT/raw

die() { echo "bench-slow-consumer: $*" >&2; exit 1; }
for n in RUNS CONNECTIONS CHANNELS KEYS QUEUE_BYTES STALLED_RCVBUF PONG_TIMEOUT_MS SERVER_CPU LOAD_CPU; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
done
for p in $POLICIES; do
  case $p in disconnect|drop_oldest|conflate) ;; *) die "unknown policy '$p' (disconnect, drop_oldest, conflate)" ;; esac
done
[[ -x $FEEDGATE ]] || die "no server binary at $FEEDGATE; build it first: cargo build --release -p feedgate-server -p feedgate-loadgen"
[[ -x $LOADGEN ]] || die "no load generator at $LOADGEN; build it first: cargo build --release -p feedgate-server -p feedgate-loadgen"
for tool in redis-server taskset python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
(( SERVER_CPU < $(nproc) && LOAD_CPU < $(nproc) )) || die "SERVER_CPU=$SERVER_CPU / LOAD_CPU=$LOAD_CPU: this machine has $(nproc) CPUs"
mkdir -p "$RAW"
RAW_SHOWN=$RAW
RAW=$(cd "$RAW" && pwd)

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}
# Drops a PID that has been waited for, so cleanup never signals a reused one.
forget() {
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits until 127.0.0.1:$1 accepts connections (up to 10 s).
wait_port() {
  python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.time() + 10
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}
# Sends one command to the Redis at 127.0.0.1:$1 and checks it was not an error.
redis_cmd() {
  python3 - "$@" <<'PY'
import socket, sys
port, args = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port), timeout=5)
s.sendall(b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args]))
reply = s.recv(4096)
sys.exit(1 if reply.startswith(b"-") or not reply else 0)
PY
}

RPORT=$(free_port)
taskset -c "$LOAD_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 20000 --logfile "$RAW/redis.log" &
PIDS+=($!)
wait_port "$RPORT" || die "redis-server did not start (see $RAW/redis.log)"

NAMESPACES=(--namespace lg.disconnect.=stream:disconnect
            --namespace lg.drop_oldest.=stream:drop_oldest
            --namespace lg.conflate.=stream:conflate:sym)
SERVER_FLAGS=(--cores 1 --outbound-queue-bytes "$QUEUE_BYTES" --pong-timeout-ms "$PONG_TIMEOUT_MS"
              "${NAMESPACES[@]}" --log warn)
: >"$RAW/commands.txt"

start_server() { # label -> sets SPID and PORT
  PORT=$(free_port)
  local cmd=(taskset -c "$SERVER_CPU" "$FEEDGATE" --listen "127.0.0.1:$PORT" --redis "redis://127.0.0.1:$RPORT"
             "${SERVER_FLAGS[@]}")
  echo "${cmd[*]}" >>"$RAW/commands.txt"
  "${cmd[@]}" 2>"$RAW/$1.server.log" &
  SPID=$!
  PIDS+=("$SPID")
  wait_port "$PORT" || die "feedgate did not start (see $RAW/$1.server.log)"
}

stop_server() {
  kill "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  forget "$SPID"
}

for policy in $POLICIES; do
  for variant in alone stalled; do
    label=$policy-$variant
    for run in $(seq "$RUNS"); do
      echo "== $label run $run"
      redis_cmd "$RPORT" FLUSHALL || die "FLUSHALL failed on the benchmark's Redis"
      start_server "$label-$run"
      cmd=(taskset -c "$LOAD_CPU" "$LOADGEN" fanout --url "ws://127.0.0.1:$PORT/ws" --redis "redis://127.0.0.1:$RPORT"
           -n "$CONNECTIONS" -c "$CHANNELS" -r "$RATE" -p "$PAYLOAD" --keys "$KEYS" --policy "$policy"
           --warmup "$WARMUP" -d "$DURATION" --cpu "$LOAD_CPU" --server-pid "$SPID"
           --out "$RAW/json" --name "$label-$run")
      [[ $variant == stalled ]] && cmd+=(--stalled 1 --slow-rcvbuf "$STALLED_RCVBUF")
      [[ -n $MAX_RATE ]] && cmd+=(--max-rate "$MAX_RATE")
      echo "${cmd[*]}" >>"$RAW/commands.txt"
      log=$RAW/$label-$run.log
      # In the background and waited for, so a signal stops the run at once.
      "${cmd[@]}" >>"$RAW/$label.jsonl" 2>"$log" &
      LPID=$!
      PIDS+=("$LPID")
      status=0
      wait "$LPID" || status=$?
      forget "$LPID"
      if (( status != 0 )); then
        echo "   run failed with status $status (see $log)" >&2
        echo "{\"error\":\"run failed\",\"label\":\"$label\",\"run\":$run}" >>"$RAW/$label.jsonl"
      fi
      grep -v '^wrote ' "$log" | sed 's/^/   /' || true
      stop_server
    done
  done
done

echo "== summary"
COMMIT=$(git rev-parse HEAD)
git diff --quiet HEAD -- . ":(exclude)results" 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
MACHINE="$(uname -srm), $(nproc) CPUs ($(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p')), $(free -g | awk '/Mem:/{print $2}') GiB"
python3 - "$RAW" "$OUT.md" "$RAW_SHOWN" <<PY
import json, pathlib, statistics, sys

raw, out, shown = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
policies, runs = "$POLICIES".split(), int("$RUNS")

def load(label):
    path = raw / f"{label}.jsonl"
    docs = [json.loads(l) for l in path.read_text().splitlines() if l.startswith("{")] if path.exists() else []
    return [d for d in docs if "error" not in d], sum(1 for d in docs if "error" in d)

def worst(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None

def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

def fmt(v, digits=0, unit=""):
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"

def stalled_end(extra):
    if extra["end"] == "closed":
        return f"closed {extra['close_code']}"
    return extra["end"]

lines = [
    f"# Slow consumers: policies with and without a stalled neighbour ($DATE)",
    "",
    f"- machine: $MACHINE",
    f"- commit: $COMMIT",
    f"- command: \`RUNS=$RUNS POLICIES=\"$POLICIES\" CONNECTIONS=$CONNECTIONS CHANNELS=$CHANNELS RATE=$RATE PAYLOAD=$PAYLOAD KEYS=$KEYS WARMUP=$WARMUP DURATION=$DURATION QUEUE_BYTES=$QUEUE_BYTES STALLED_RCVBUF=$STALLED_RCVBUF PONG_TIMEOUT_MS=$PONG_TIMEOUT_MS MAX_RATE=$MAX_RATE bash scripts/bench-slow-consumer.sh\`",
    "- feedgate pinned to CPU $SERVER_CPU with \`--cores 1\`; Redis and feedgate-loadgen share CPU $LOAD_CPU",
    f"- every figure is the median of {runs} runs (a fresh server each run); the exact command of every run is in \`{shown}/commands.txt\`, raw JSON and logs in \`{shown}\`",
    "- scenario: $CONNECTIONS healthy clients, channels: $CHANNELS, $RATE msg/s in total, $PAYLOAD-byte payloads over $KEYS keys; "
    "with a stalled neighbour, one more client on channel 0 (SO_RCVBUF $STALLED_RCVBUF) that subscribes and then reads nothing until the run ends",
    "",
    "## Healthy clients",
    "",
    "| policy | stalled neighbour | p50 us | p99 us | p99.9 us | deliveries/s | skipped | lost | dup | out of order | stale | failed runs |",
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
stalled_rows = []
for policy in policies:
    for variant in ("alone", "stalled"):
        docs, failed = load(f"{policy}-{variant}")
        res = [d["result"] for d in docs]
        lat = [r["latency_us"] for r in res]
        lines.append(
            f"| {policy} | {'yes' if variant == 'stalled' else 'no'} "
            f"| {fmt(med([l['p50'] for l in lat]))} | {fmt(med([l['p99'] for l in lat]))} "
            f"| {fmt(med([l['p99_9'] for l in lat]))} | {fmt(med([r['deliveries_per_sec'] for r in res]))} "
            f"| {fmt(med([r['skipped'] for r in res]))} | {fmt(worst([r['lost'] for r in res]))} "
            f"| {fmt(worst([r['duplicated'] for r in res]))} | {fmt(worst([r['out_of_order'] for r in res]))} "
            f"| {fmt(worst([r['stale'] for r in res]))} | {failed} |"
        )
        rss = [d["server_rss_bytes"]["after"] / 2**20 for d in docs if d.get("server_rss_bytes")]
        rss_before = [d["server_rss_bytes"]["before"] / 2**20 for d in docs if d.get("server_rss_bytes")]
        extras = [x for d in docs for x in d.get("extras", []) if x["kind"] == "stalled"]
        ends = {}
        for x in extras:
            ends[stalled_end(x)] = ends.get(stalled_end(x), 0) + 1
        outcome = ", ".join(f"{k} x{v}" for k, v in sorted(ends.items())) if extras else "-"
        stalled_rows.append(
            f"| {policy} | {'yes' if variant == 'stalled' else 'no'} | {outcome} "
            f"| {fmt(med([x['deliveries'] for x in extras])) if extras else '-'} "
            f"| {fmt(med([x['gaps'] for x in extras])) if extras else '-'} "
            f"| {fmt(med([x['gap_dropped'] for x in extras])) if extras else '-'} "
            f"| {fmt(med([x['counts']['silent_holes'] for x in extras])) if extras else '-'} "
            f"| {fmt(med(rss_before), 1)} | {fmt(med(rss), 1)} |"
        )
lines += [
    "",
    "Latency, deliveries/s and \`skipped\` are medians; \`lost\`, \`dup\`, \`out of order\` and \`stale\` are the worst run's.",
    "\`lost\` counts what the policy does not allow: under \`disconnect\` any missing delivery, under",
    "\`drop_oldest\` one no \`gap\` announced, under \`conflate\` (or \`max_rate\`) a channel's newest message",
    "that never arrived; \`skipped\` what it allows (announced, or conflated away). See docs/benchmarks.md.",
    "",
    "## The stalled neighbour and the server",
    "",
    "| policy | stalled neighbour | its outcome | deliveries it read | gaps | gaps' dropped | silent holes | server RSS before, MiB | server RSS with it held, MiB |",
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
] + stalled_rows + [
    "",
    "The stalled client reads what it was sent only after the measured window: its deliveries are what the",
    "kernel and the server kept for it. RSS is the server's VmRSS after connecting and at the end of the",
    "window, while the stalled client is still connected and unread.",
    "",
    "## Commands",
    "",
    "Every server start and load run, in order (ports are picked free each time):",
    "",
    "\`\`\`sh",
] + (raw / "commands.txt").read_text().splitlines() + [
    "\`\`\`",
    "",
]
out.write_text("\n".join(lines))
PY
echo "wrote $OUT.md"
