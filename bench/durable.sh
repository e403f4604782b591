#!/usr/bin/env bash
# Durable-engine numbers for the README, in one run on this machine:
#  1. durable SET, `--durability sync`, node on CPU 0 (`--cores 1`), client on CPU 1,
#     50 connections x pipeline 1, 50-byte keys, 500-byte values; beside it Redis 7 with
#     `appendfsync always` driven by redis-benchmark with the same shape;
#  2. recovery: KEYS keys (default 1M) written, node stopped, restart timed to its ready line,
#     with the replay rate the node logs;
#  3. memory: RSS per key with every value cached, and restarted with `--cache-bytes 0` (values
#     on disk only), with GET throughput and latency when every read goes to the disk;
#  4. compaction under an overwrite load (100k keys, sync mode): foreground SET rate and
#     latency, and the data directory's size, with compaction on (live ratio 0.5) and off.
# usage: bench/durable.sh [SECONDS] [KEYS]     (needs redis-server, redis-benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
secs=${1:-10}
keys=${2:-1000000}
cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release
port() { free_port; }

echo "== 1. durable SET, 50 connections x pipeline 1, ${secs}s" >&2
p=$(port)
taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$p" --data-dir "$work/sync" \
  >"$work/sync.out" 2>"$work/sync.err" &
node=$!; pids+=("$node"); wait_ready "$work/sync.out"
t0=$(ticks "$node"); s0=$(date +%s.%N)
taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$p" --keys 100000 --mix set=1 \
  --connections 50 --pipeline 1 --duration "$secs" --warmup 2 2>/dev/null >"$work/sync.txt"
t1=$(ticks "$node"); s1=$(date +%s.%N)
kill "$node"; wait "$node" 2>/dev/null || true
cpu=$(cpu_pct "$t0" "$t1" "$s0" "$s1")
corekv_row=$(awk '$1=="set" {printf "%.0f %s %s %s", $3, $4, $6, $7}' "$work/sync.txt")

rp=$(port)
mkdir -p "$work/redis"
taskset -c 0 redis-server --port "$rp" --dir "$work/redis" --save "" --appendonly yes \
  --appendfsync always >"$work/redis.log" 2>&1 &
redis=$!; pids+=("$redis"); sleep 0.5
key=$bench_key
value=$bench_value
t0=$(ticks "$redis"); s0=$(date +%s.%N)
out=$(taskset -c 1 redis-benchmark -p "$rp" -c 50 -P 1 -n $((secs * 30000)) -r 100000 \
  SET "$key" "$value" 2>/dev/null | tr '\r' '\n')
t1=$(ticks "$redis"); s1=$(date +%s.%N)
kill "$redis"; wait "$redis" 2>/dev/null || true
rcpu=$(cpu_pct "$t0" "$t1" "$s0" "$s1")
rps=$(echo "$out" | awk '/throughput summary/ {printf "%.0f", $3}')
rlat=$(echo "$out" | awk '/latency summary/ {getline; getline; printf "%.0f %.0f", $3*1000, $5*1000}')
printf '\n%-28s %10s %8s %8s %9s %5s\n' server ops_per_sec p50_us p99_us p99.9_us cpu%
read -r a b c d <<<"$corekv_row"
printf '%-28s %10s %8s %8s %9s %5s\n' "corekv --durability sync" "$a" "$b" "$c" "$d" "$cpu"
read -r a b <<<"$rlat"
printf '%-28s %10s %8s %8s %9s %5s\n' "redis appendfsync always" "$rps" "$a" "$b" "-" "$rcpu"

echo "== 2. recovery and memory, $keys keys" >&2
p=$(port)
taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$p" --data-dir "$work/big" \
  --durability periodic >"$work/big.out" 2>"$work/big.err" &
node=$!; pids+=("$node"); wait_ready "$work/big.out"
taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$p" --keys "$keys" --preload --mix set=1 \
  --duration 1 --warmup 0 --connections 50 >/dev/null 2>&1
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$node/status")
kill "$node"; wait "$node" 2>/dev/null || true
disk=$(du -sb "$work/big" | awk '{print $1}')
s0=$(date +%s.%N)
taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$p" --data-dir "$work/big" \
  >"$work/big2.out" 2>"$work/big2.err" &
node=$!; pids+=("$node"); wait_ready "$work/big2.out"
s1=$(date +%s.%N)
rss2_kb=$(awk '/VmRSS/ {print $2}' "/proc/$node/status")
kill "$node"; wait "$node" 2>/dev/null || true
# Values on disk only: nothing cached, every GET reads its record with direct I/O.
taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$p" --data-dir "$work/big" \
  --cache-bytes 0 >"$work/big3.out" 2>"$work/big3.err" &
node=$!; pids+=("$node"); wait_ready "$work/big3.out"
rss3_kb=$(awk '/VmRSS/ {print $2}' "/proc/$node/status")
taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$p" --keys "$keys" --mix get=1 \
  --connections 50 --duration "$secs" --warmup 1 2>/dev/null >"$work/cold.txt"
kill "$node"; wait "$node" 2>/dev/null || true
echo
echo "keys: $keys (50 B keys, 500 B values); data dir after the load: $((disk / 1000000)) MB"
awk -v s="$s0" -v e="$s1" 'BEGIN{printf "restart to ready: %.2f s\n", e-s}'
grep -o 'recovered.*' "$work/big2.err" | sed 's/^/  /'
awk -v r="$rss_kb" -v k="$keys" 'BEGIN{printf "RSS after the load, values cached: %.0f MB, %.0f B per key\n", r/1024, r*1024/k}'
awk -v r="$rss2_kb" -v k="$keys" 'BEGIN{printf "RSS after restart (log tail cached, rest on disk): %.0f MB, %.0f B per key\n", r/1024, r*1024/k}'
awk -v r="$rss3_kb" -v k="$keys" 'BEGIN{printf "RSS after restart, values on disk only: %.0f MB, %.0f B per key\n", r/1024, r*1024/k}'
awk '$1=="get" {printf "GET from disk (50 conns x P1): %.0f ops/s, p50 %s us, p99 %s us, p99.9 %s us\n", $3, $4, $6, $7}' "$work/cold.txt"

echo "== 4. compaction under overwrite load, ${secs}s each" >&2
printf '\n%-16s %10s %8s %8s %9s %9s %10s\n' compaction ops_per_sec p50_us p99_us p99.9_us disk_MB live_MB
for mode in on off; do
  ratio=0.5; [ "$mode" = off ] && ratio=0.000001
  p=$(port)
  taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off --listen "127.0.0.1:$p" --data-dir "$work/c-$mode" \
    --segment-bytes-max 8388608 --compaction-live-ratio "$ratio" \
    >"$work/c-$mode.out" 2>"$work/c-$mode.err" &
  node=$!; pids+=("$node"); wait_ready "$work/c-$mode.out"
  taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$p" --keys 100000 --preload --mix set=1 \
    --connections 50 --duration "$secs" --warmup 1 2>/dev/null >"$work/c-$mode.txt"
  live=$("$bin/corekv" stats --addr "127.0.0.1:$p" | awk '/log_live_bytes/ {t=1; next} t && $1=="all" {print $6}')
  disk=$(du -sb "$work/c-$mode" | awk '{print $1}')
  kill "$node"; wait "$node" 2>/dev/null || true
  awk -v m="$mode" -v d="$disk" -v l="$live" '$1=="set" {printf "%-16s %10.0f %8s %8s %9s %9.0f %10.0f\n", m, $3, $4, $6, $7, d/1e6, l/1e6}' "$work/c-$mode.txt"
done
echo "($(date -u +%F), $(nproc) CPUs)"
