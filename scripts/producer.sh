#!/usr/bin/env bash
# Synthetic market-data producer for feedgate demos.
#
# Writes random-walk ticks for a handful of symbols into Redis Streams
# (XADD md.<SYM> MAXLEN ~ N * data '{"sym":...,"px":...,"qty":...,"side":...,"ts":...}')
# and a heartbeat on the pub/sub channel ps.heartbeat now and then.
#
# All commands go through ONE long-lived redis-cli that reads them from a pipe:
# no process is started per command (or per tick: the pause between ticks is a
# bash builtin).
#
# usage: bash scripts/producer.sh [--host H] [--port P] [--interval SECONDS]
#                                 [--maxlen N] [--duration SECONDS] [--quiet]
set -euo pipefail

host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}
interval=0.2      # seconds between rounds; each round ticks every symbol
maxlen=10000      # XADD MAXLEN ~ (approximate trimming)
duration=0        # 0: run until stopped
quiet=0

usage() {
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --host) host=${2:?--host needs a value}; shift 2 ;;
        --port) port=${2:?--port needs a value}; shift 2 ;;
        --interval) interval=${2:?--interval needs a value}; shift 2 ;;
        --maxlen) maxlen=${2:?--maxlen needs a value}; shift 2 ;;
        --duration) duration=${2:?--duration needs a value}; shift 2 ;;
        --quiet) quiet=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "producer: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

[[ $port =~ ^[0-9]+$ ]] || { echo "producer: --port must be a number" >&2; exit 2; }
[[ $maxlen =~ ^[0-9]+$ ]] || { echo "producer: --maxlen must be a number" >&2; exit 2; }
[[ $duration =~ ^[0-9]+$ ]] || { echo "producer: --duration must be whole seconds" >&2; exit 2; }
[[ $interval =~ ^[0-9]*\.?[0-9]+$ ]] || { echo "producer: --interval must be a number of seconds" >&2; exit 2; }
command -v redis-cli >/dev/null || { echo "producer: redis-cli not found (apt-get install redis-tools)" >&2; exit 1; }

reply=$(redis-cli -h "$host" -p "$port" PING 2>&1 || true)
if [ "$reply" != "PONG" ]; then
    echo "producer: Redis at $host:$port does not answer PING: $reply" >&2
    exit 1
fi

# Symbols: name, start price in integer minor units, decimals, largest step.
syms=(BTC-USD ETH-USD SOL-USD AAPL EUR-USD)
px=(6500000 350000 15000 19000 108000)
dec=(2 2 2 2 5)
step=(2500 150 15 8 6)
floor=(100000 10000 500 500 50000)
sides=(buy sell)

# Formats integer minor units $1 with $2 decimals as a JSON number.
fmt_dec() {
    local v=$1 d=$2 scale=1 i
    for ((i = 0; i < d; i++)); do scale=$((scale * 10)); done
    printf -v REPLY '%d.%0*d' $((v / scale)) "$d" $((v % scale))
}

now_ms() {
    local t=${EPOCHREALTIME/[.,]/}   # microseconds since the epoch
    REPLY=$((t / 1000))
}

# One redis-cli, reading commands line by line from fd 3.
exec 3> >(exec redis-cli -h "$host" -p "$port" >/dev/null)
cli_pid=$!

# A descriptor that never becomes readable: `read -t` on it is a sleep without a process.
exec 4<> <(:)

stopping=0
finish() {
    stopping=1
    exec 3>&- 2>/dev/null || true   # EOF for redis-cli
    kill "$cli_pid" 2>/dev/null || true
    wait "$cli_pid" 2>/dev/null || true
}
trap finish EXIT
trap 'exit 0' INT TERM
trap 'exit 0' PIPE

[ "$quiet" = 1 ] || echo "producer: ${#syms[@]} symbols every ${interval}s into $host:$port (streams md.*, pub/sub ps.heartbeat)"

start=$SECONDS
round=0
beat=0
beat_every=$(awk -v i="$interval" 'BEGIN { n = int(1 / i + 0.5); if (n < 1) n = 1; print n }')
while [ "$stopping" = 0 ]; do
    if [ "$duration" -gt 0 ] && [ $((SECONDS - start)) -ge "$duration" ]; then
        break
    fi
    now_ms; ts=$REPLY
    batch=""
    for i in "${!syms[@]}"; do
        s=${step[$i]}
        p=$((px[i] + RANDOM % (2 * s + 1) - s))
        [ "$p" -ge "${floor[$i]}" ] || p=${floor[$i]}
        px[i]=$p
        fmt_dec "$p" "${dec[$i]}"; price=$REPLY
        fmt_dec $((RANDOM % 5000 + 1)) 3; qty=$REPLY
        side=${sides[RANDOM % 2]}
        batch+="XADD md.${syms[$i]} MAXLEN ~ $maxlen * data '{\"sym\":\"${syms[$i]}\",\"px\":$price,\"qty\":$qty,\"side\":\"$side\",\"ts\":$ts}'"$'\n'
    done
    if [ $((round % beat_every)) -eq 0 ]; then
        beat=$((beat + 1))
        batch+="PUBLISH ps.heartbeat '{\"seq\":$beat,\"ts\":$ts}'"$'\n'
    fi
    printf '%s' "$batch" >&3 || break
    if ! kill -0 "$cli_pid" 2>/dev/null; then
        echo "producer: redis-cli exited" >&2
        exit 1
    fi
    round=$((round + 1))
    read -r -t "$interval" -u 4 _ || true
done
