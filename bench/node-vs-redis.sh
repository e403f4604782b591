#!/usr/bin/env bash
# The node benchmark of the README: corekv pinned to CPU 0 (`--cores 1`), the client pinned to
# CPU 1, 50 connections at pipeline 1 and 16, 50-byte keys, 500-byte values, 1M keys
# preloaded. corekv is driven by corekv-loadgen (native protocol); Redis 7, in the same run and
# on the same CPU, by redis-benchmark with the same shape, for scale. Server CPU is read from
# /proc over each measured run, so throughput can be compared per CPU second too.
#
# usage: bench/node-vs-redis.sh [SECONDS_PER_SHAPE]    (default 10; needs redis-server,
#        redis-benchmark: apt-get install redis-server redis-tools)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10}
keys=1000000

command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server redis-tools)" >&2; exit 2; }
cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release


# ---- corekv
port=$(free_port)
taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$port" --data-dir "$work/data" \
  >"$work/node.out" 2>"$work/node.err" &
node=$!; pids+=("$node")
for _ in $(seq 100); do grep -q ready "$work/node.out" 2>/dev/null && break; sleep 0.05; done
echo "preloading $keys keys into corekv ..." >&2
taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$port" --keys $keys --preload \
  --mix set=1 --duration 1 --warmup 0 >/dev/null 2>&1

declare -A result
for pipeline in 1 16; do
  for op in set get; do
    t0=$(ticks "$node"); s0=$(date +%s.%N)
    out=$(taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$port" --keys $keys \
      --mix "$op=1" --connections 50 --pipeline $pipeline --duration "$secs" --warmup 2 2>/dev/null)
    t1=$(ticks "$node"); s1=$(date +%s.%N)
    cpu=$(cpu_pct "$t0" "$t1" "$s0" "$s1")
    # table row: op count ops/s p50 p90 p99 p99.9 max
    row=$(echo "$out" | awk -v op="$op" '$1==op {printf "%.0f %s %s %s", $3, $4, $6, $7}')
    result[corekv,$op,$pipeline]="$row $cpu"
  done
done
kill "$node"; wait "$node" 2>/dev/null || true

# ---- redis
rport=$(free_port)
taskset -c 0 redis-server --port "$rport" --save "" --appendonly no >"$work/redis.log" 2>&1 &
redis=$!; pids+=("$redis")
sleep 0.5
key=$bench_key
value=$bench_value
echo "preloading redis ..." >&2
taskset -c 1 redis-benchmark -p "$rport" -c 50 -P 16 -n $((keys * 3)) -r $keys -q \
  SET "$key" "$value" >/dev/null 2>&1
for pipeline in 1 16; do
  for op in set get; do
    n=$(( pipeline == 1 ? 200000 * secs / 10 : 2000000 * secs / 10 ))
    args=(SET "$key" "$value"); [ "$op" = get ] && args=(GET "$key")
    t0=$(ticks "$redis"); s0=$(date +%s.%N)
    out=$(taskset -c 1 redis-benchmark -p "$rport" -c 50 -P $pipeline -n $n -r $keys "${args[@]}" 2>/dev/null | tr '\r' '\n')
    t1=$(ticks "$redis"); s1=$(date +%s.%N)
    cpu=$(cpu_pct "$t0" "$t1" "$s0" "$s1")
    rps=$(echo "$out" | awk '/throughput summary/ {printf "%.0f", $3}')
    # redis-benchmark's summary gives avg min p50 p95 p99 max (ms): take p50 and p99
    lat=$(echo "$out" | awk '/latency summary/ {getline; getline; printf "%.0f %.0f", $3*1000, $5*1000}')
    result[redis,$op,$pipeline]="$rps $lat - $cpu"
  done
done

printf '\n%-8s %-3s | %10s %8s %8s %9s %5s | %10s %8s %8s %5s | %7s\n' \
  shape op corekv_ops p50_us p99_us p99.9_us cpu% redis_ops p50_us p99_us cpu% ratio
for pipeline in 1 16; do
  for op in set get; do
    read -r c_ops c_p50 c_p99 c_p999 c_cpu <<<"${result[corekv,$op,$pipeline]}"
    read -r r_ops r_p50 r_p99 _ r_cpu <<<"${result[redis,$op,$pipeline]}"
    ratio=$(awk -v a="$c_ops" -v b="$r_ops" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "-" }')
    printf '%-8s %-3s | %10s %8s %8s %9s %5s | %10s %8s %8s %5s | %7s\n' \
      "50xP$pipeline" "$op" "$c_ops" "$c_p50" "$c_p99" "$c_p999" "$c_cpu" "$r_ops" "$r_p50" "$r_p99" "$r_cpu" "$ratio"
  done
done
echo
echo "corekv: corekv-loadgen (native protocol); redis: redis-benchmark (RESP); $(date -u +%F)"
