# Shared by the benchmark scripts (sourced, not run): a free loopback port, the
# list of started processes stopped on exit, and a Redis for the run.
#   needs: LOAD_CPU (the CPU Redis is pinned to) and RAW (where its log goes)
#   sets:  PIDS, RPORT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# Starts redis-server on a free port, pinned to LOAD_CPU; waits until it answers.
start_redis() {
  RPORT=$(free_port)
  taskset -c "$LOAD_CPU" redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no \
    --maxclients 20000 --logfile "$RAW/redis.log" &
  PIDS+=($!)
  until redis-cli -p "$RPORT" ping >/dev/null 2>&1; do sleep 0.1; done
}
