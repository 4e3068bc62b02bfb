#!/usr/bin/env bash
# Finer sweep: feedgate vs the tokio peer, 1.1x steps from 400 msg/s (40k deliveries/s).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository root
OUT=results/sweep-fine-2026-11-27; mkdir -p $OUT  # needs target/release/{feedgate,feedgate-loadgen} and the tokio peer built
RPORT=16420
taskset -c 1 redis-server --port $RPORT --bind 127.0.0.1 --save '' --appendonly no --logfile $OUT/redis.log &
RP=$!
sleep 0.5
printf '[[namespaces]]\nprefix = "ps."\nsource = "pubsub"\n' > $OUT/feedgate.toml
for run in 1 2 3; do
  for server in feedgate tokio; do
    off=0; [ $server = tokio ] && off=1; port=$((18200 + run * 10 + off))
    if [ $server = feedgate ]; then
      taskset -c 0 target/release/feedgate --listen 127.0.0.1:$port --redis redis://127.0.0.1:$RPORT --cores 1 --config $OUT/feedgate.toml --log warn 2>/dev/null &
    else
      PORT=$port REDIS_URL=redis://127.0.0.1:$RPORT taskset -c 0 loadgen/peers/tokio/target/release/tokio-peer 2>/dev/null &
    fi
    SP=$!
    sleep 1
    taskset -c 1 target/release/feedgate-loadgen sweep --url ws://127.0.0.1:$port/ws --redis redis://127.0.0.1:$RPORT \
      -n 1000 -c 10 -p 100 --start-rate 400 --factor 1.1 --max-rate 1200 --warmup 1 -d 3 --p99-bound-us 10000 --cpu 1 \
      >> $OUT/$server.jsonl 2>> $OUT/$server.log || true
    kill $SP; wait $SP 2>/dev/null || true
  done
done
kill $RP; wait $RP 2>/dev/null || true
# The machine's ceiling, measured right after, for the percentages.
for run in 1 2 3; do
  target/release/feedgate-loadgen limit -n 1000 --frame-bytes 150 -d 3 --writer-cpu 0 --sink-cpu 1 \
    >> $OUT/limit.jsonl 2>> $OUT/limit.log
done
