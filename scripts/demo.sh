#!/usr/bin/env bash
# feedgate live demo: Redis + feedgate + a synthetic market-data feed.
#
# usage: bash scripts/demo.sh [--duration SECONDS] [--no-build]
#
#   --duration SECONDS  stop everything by itself after SECONDS (default: run until Ctrl-C)
#   --no-build          use the already built target/release/feedgate
#
# Environment:
#   FEEDGATE_DEMO_PORT  port feedgate listens on, on 127.0.0.1 (default 8080)
#
# What it does: installs redis-server/redis-tools from apt when they are missing;
# uses the Redis answering on 127.0.0.1:6379 if there is one, else starts its own
# (free port, no persistence, in a temp dir); builds feedgate in release; starts it
# with a demo config (channels starting with `ps.` are pub/sub, all others Redis
# Streams); runs scripts/producer.sh (ticks on md.<SYM> streams, a heartbeat on
# ps.heartbeat); prints how to connect. Ctrl-C (or the end of --duration) stops
# everything it started.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

duration=0
build=1
port=${FEEDGATE_DEMO_PORT:-8080}

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=${2:?--duration needs a value}; shift 2 ;;
        --duration=*) duration=${1#*=}; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'demo: unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $duration =~ ^[0-9]+$ ]] || die "--duration must be whole seconds"
if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    die "FEEDGATE_DEMO_PORT must be a port number, not '$port'"
fi

# ---------------------------------------------------------------- helpers

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A free TCP port on 127.0.0.1 (asks the kernel through python3 when it is there,
# else probes a range).
free_port() {
    local p
    if command -v python3 >/dev/null 2>&1; then
        p=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null) && { echo "$p"; return 0; }
    fi
    for p in $(seq 16379 16479) $(seq 26379 26479); do
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    return 1
}

# HTTP status code of GET http://127.0.0.1:$1$2, with bash alone (no curl needed).
http_status() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$2" "$1" >&3
        IFS=' ' read -r -t 2 _ code _ <&3 || exit 1
        echo "$code"
    ) 2>/dev/null
}

pause() { read -r -t "$1" -u "$sleep_fd" _ || true; }

# Starts "$@" in the background, in a session of its own (so a Ctrl-C in the
# terminal reaches only this script, which then stops everything in order); the
# pid is in $!.
spawn() {
    if command -v setsid >/dev/null 2>&1; then
        setsid "$@" </dev/null &
    else
        "$@" </dev/null &
    fi
}

# True while process $1 runs (an exited child that is not reaped yet does not count:
# bash does not reap children while it runs a trap).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

# Stops one of our processes: TERM, then KILL after $2 seconds.
stop_pid() {
    local pid=$1 grace=$2 i
    [ -n "$pid" ] || return 0
    if running "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            running "$pid" || break
            pause 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

need_sudo() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------- prerequisites

if [ "$build" = 1 ] && ! command -v cargo >/dev/null 2>&1; then
    die "cargo not found: this demo builds feedgate from source; install the Rust toolchain (rustup) first"
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and apt-get is not available: install Redis yourself"
    say "installing redis-server and redis-tools from apt"
    need_sudo apt-get update -qq
    # (Where the package starts a system-wide Redis on 6379, the demo uses it.)
    need_sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
fi

# ---------------------------------------------------------------- state and cleanup

tmp=$(mktemp -d "${TMPDIR:-/tmp}/feedgate-demo.XXXXXX")
redis_pid=""
feedgate_pid=""
producer_pid=""
exec {sleep_fd}<> <(:)   # never readable: `read -t` on it sleeps without a process

cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    set +e
    if [ -n "$producer_pid$feedgate_pid$redis_pid" ]; then
        say "stopping"
    fi
    stop_pid "$producer_pid" 5
    stop_pid "$feedgate_pid" 10
    stop_pid "$redis_pid" 10
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ "$rc" -ne 143 ]; then
        local f
        for f in "$tmp"/*.log; do
            [ -s "$f" ] || continue
            printf '\n[demo] last lines of %s:\n' "${f##*/}" >&2
            tail -n 20 "$f" >&2
        done
    fi
    rm -rf "$tmp"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- build

if port_in_use "$port"; then
    die "127.0.0.1:$port is taken; choose another port: FEEDGATE_DEMO_PORT=8090 bash scripts/demo.sh"
fi

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) \
    || target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/release/feedgate

if [ "$build" = 1 ]; then
    say "building feedgate (cargo build --release -p feedgate-server)"
    cargo build --release -p feedgate-server || die "cargo build --release -p feedgate-server failed"
fi
[ -x "$bin" ] || die "no binary at $bin (run: cargo build --release -p feedgate-server)"

# ---------------------------------------------------------------- Redis

redis_port=6379
if [ "$(redis-cli -h 127.0.0.1 -p 6379 PING 2>/dev/null || true)" = PONG ]; then
    say "using the Redis already answering on 127.0.0.1:6379 (demo streams md.* go into its db 0)"
else
    started=0
    for _ in 1 2 3; do
        redis_port=$(free_port) || die "found no free port for redis-server"
        spawn redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$tmp" --daemonize no --logfile "$tmp/redis.log"
        redis_pid=$!
        for _ in $(seq 50); do
            if [ "$(redis-cli -h 127.0.0.1 -p "$redis_port" PING 2>/dev/null || true)" = PONG ]; then
                started=1
                break
            fi
            running "$redis_pid" || break
            pause 0.1
        done
        [ "$started" = 1 ] && break
        stop_pid "$redis_pid" 2
        redis_pid=""
    done
    [ "$started" = 1 ] || die "could not start redis-server (see $tmp/redis.log)"
    say "started redis-server on 127.0.0.1:$redis_port (no persistence, pid $redis_pid)"
fi
redis_url="redis://127.0.0.1:$redis_port"

# ---------------------------------------------------------------- feedgate

cat >"$tmp/feedgate.toml" <<EOF
# feedgate demo configuration (written by scripts/demo.sh)
listen = "127.0.0.1:$port"
redis = "$redis_url"
log = "info"

# Channels starting with "ps." are Redis pub/sub (ephemeral).
# Every other channel is a Redis Stream whose key is the channel name (durable, replayable).
[[namespaces]]
prefix = "ps."
source = "pubsub"
EOF

say "starting feedgate on 127.0.0.1:$port (log: $tmp/feedgate.log)"
# The flags repeat the file so that FEEDGATE_* variables in the environment cannot
# override them (flags win over the environment, the environment over the file).
spawn env -u FEEDGATE_DEMO_PORT "$bin" --config "$tmp/feedgate.toml" --listen "127.0.0.1:$port" --redis "$redis_url" \
    --namespace ps.=pubsub >"$tmp/feedgate.log" 2>&1
feedgate_pid=$!

ready=0
for _ in $(seq 300); do
    if [ "$(http_status "$port" /readyz || true)" = 200 ]; then
        ready=1
        break
    fi
    running "$feedgate_pid" || die "feedgate exited during start-up"
    pause 0.1
done
[ "$ready" = 1 ] || die "feedgate was not ready (GET /readyz) after 30 seconds"
say "feedgate is ready"

# ---------------------------------------------------------------- producer

spawn bash "$root/scripts/producer.sh" --host 127.0.0.1 --port "$redis_port" --quiet \
    >"$tmp/producer.log" 2>&1
producer_pid=$!
say "producer running: md.BTC-USD md.ETH-USD md.SOL-USD md.AAPL md.EUR-USD (streams, 5 ticks/s each), ps.heartbeat (pub/sub, 1/s)"

# ---------------------------------------------------------------- how to connect

extra=""
if [ "$(http_status "$port" / || true)" = 200 ]; then
    extra+="  Dashboard   http://127.0.0.1:$port/"$'\n'
fi
if [ "$(http_status "$port" /metrics || true)" = 200 ]; then
    extra+="  Metrics     http://127.0.0.1:$port/metrics"$'\n'
fi
cat <<EOF

  feedgate demo is live
  ---------------------
  WebSocket   ws://127.0.0.1:$port/ws
  Ready       http://127.0.0.1:$port/readyz
${extra}
  Send one JSON object per text frame, for example:
    {"op":"subscribe","channel":"md.BTC-USD","req":1}
    {"op":"subscribe","channel":"md.ETH-USD","last":10,"req":2}
    {"op":"subscribe","channel":"ps.heartbeat","req":3}
  and receive deliveries like:
    {"ch":"md.BTC-USD","id":"1732700000000-0","data":{"sym":"BTC-USD","px":65012.5,...}}

  With Node.js:   npx wscat -c ws://127.0.0.1:$port/ws     (then paste a subscribe line)

  With Python (pip install websockets), paste:

python3 - <<'PY'
import asyncio, json, websockets
async def main():
    async with websockets.connect("ws://127.0.0.1:$port/ws") as ws:
        await ws.send(json.dumps({"op": "subscribe", "channel": "md.BTC-USD", "last": 5, "req": 1}))
        async for message in ws:
            print(message)
asyncio.run(main())
PY

  Publish your own:  redis-cli -p $redis_port XADD md.TEST '*' data '{"hello":"world"}'
                     redis-cli -p $redis_port PUBLISH ps.chat '"hi"'

EOF
if [ "$duration" -gt 0 ]; then
    say "stopping by itself in $duration s (--duration)"
else
    say "Ctrl-C stops everything"
fi

# ---------------------------------------------------------------- supervise

start=$SECONDS
while :; do
    if [ "$duration" -gt 0 ] && [ $((SECONDS - start)) -ge "$duration" ]; then
        say "--duration reached"
        exit 0
    fi
    running "$feedgate_pid" || die "feedgate exited"
    running "$producer_pid" || die "the producer exited"
    if [ -n "$redis_pid" ]; then
        running "$redis_pid" || die "redis-server exited"
    fi
    pause 1
done
