#!/usr/bin/env bash
# Durable-engine numbers for the README, in one run on this machine:
#  1. durable SET, `--durability sync`, node on CPU 0 (`--cores 1`), client on CPU 1,
#     50 connections x pipeline 1, 50-byte keys, 500-byte values; beside it Redis 7 with
#     `appendfsync always` driven by redis-benchmark with the same shape;
#  2. recovery: KEYS keys (default 1M) written, node stopped, restart timed to its ready line,
#     with the replay rate the node logs;
#  3. memory: RSS per key with every value cached (this engine keeps values in memory).
# usage: bench/durable.sh [SECONDS] [KEYS]     (needs redis-server, redis-benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
keys=${2:-1000000}
work=$(mktemp -d -p "${TMPDIR:-/var/tmp}")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet -p corekv -p corekv-loadgen
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
bin=target/release
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
port() { echo $((20000 + RANDOM % 20000)); }
wait_ready() { for _ in $(seq 12000); do grep -q ready "$1" 2>/dev/null && return 0; sleep 0.05; done; return 1; }

echo "== 1. durable SET, 50 connections x pipeline 1, ${secs}s" >&2
p=$(port)
taskset -c 0 "$bin/corekv" serve --cores 1 --listen "127.0.0.1:$p" --data-dir "$work/sync" \
  >"$work/sync.out" 2>"$work/sync.err" &
node=$!; pids+=("$node"); wait_ready "$work/sync.out"
t0=$(ticks "$node"); s0=$(date +%s.%N)
taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$p" --keys 100000 --mix set=1 \
  --connections 50 --pipeline 1 --duration "$secs" --warmup 2 2>/dev/null >"$work/sync.txt"
t1=$(ticks "$node"); s1=$(date +%s.%N)
kill "$node"; wait "$node" 2>/dev/null || true
cpu=$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$hz" 'BEGIN{printf "%.0f", (b-a)/hz/(e-s)*100}')
corekv_row=$(awk '$1=="set" {printf "%.0f %s %s %s", $3, $4, $6, $7}' "$work/sync.txt")

rp=$(port)
mkdir -p "$work/redis"
taskset -c 0 redis-server --port "$rp" --dir "$work/redis" --save "" --appendonly yes \
  --appendfsync always >"$work/redis.log" 2>&1 &
redis=$!; pids+=("$redis"); sleep 0.5
key="key:__rand_int__$(printf 'k%.0s' $(seq 34))"
value=$(head -c 500 /dev/zero | tr '\0' 'v')
t0=$(ticks "$redis"); s0=$(date +%s.%N)
out=$(taskset -c 1 redis-benchmark -p "$rp" -c 50 -P 1 -n $((secs * 30000)) -r 100000 \
  SET "$key" "$value" 2>/dev/null | tr '\r' '\n')
t1=$(ticks "$redis"); s1=$(date +%s.%N)
kill "$redis"; wait "$redis" 2>/dev/null || true
rcpu=$(awk -v a="$t0" -v b="$t1" -v s="$s0" -v e="$s1" -v hz="$hz" 'BEGIN{printf "%.0f", (b-a)/hz/(e-s)*100}')
rps=$(echo "$out" | awk '/throughput summary/ {printf "%.0f", $3}')
rlat=$(echo "$out" | awk '/latency summary/ {getline; getline; printf "%.0f %.0f", $3*1000, $5*1000}')
printf '\n%-28s %10s %8s %8s %9s %5s\n' server ops_per_sec p50_us p99_us p99.9_us cpu%
read -r a b c d <<<"$corekv_row"
printf '%-28s %10s %8s %8s %9s %5s\n' "corekv --durability sync" "$a" "$b" "$c" "$d" "$cpu"
read -r a b <<<"$rlat"
printf '%-28s %10s %8s %8s %9s %5s\n' "redis appendfsync always" "$rps" "$a" "$b" "-" "$rcpu"

echo "== 2. recovery and memory, $keys keys" >&2
p=$(port)
taskset -c 0 "$bin/corekv" serve --cores 1 --listen "127.0.0.1:$p" --data-dir "$work/big" \
  --durability periodic >"$work/big.out" 2>"$work/big.err" &
node=$!; pids+=("$node"); wait_ready "$work/big.out"
taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$p" --keys "$keys" --preload --mix set=1 \
  --duration 1 --warmup 0 --connections 50 >/dev/null 2>&1
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$node/status")
kill "$node"; wait "$node" 2>/dev/null || true
disk=$(du -sb "$work/big" | awk '{print $1}')
s0=$(date +%s.%N)
taskset -c 0 "$bin/corekv" serve --cores 1 --listen "127.0.0.1:$p" --data-dir "$work/big" \
  >"$work/big2.out" 2>"$work/big2.err" &
node=$!; pids+=("$node"); wait_ready "$work/big2.out"
s1=$(date +%s.%N)
kill "$node"; wait "$node" 2>/dev/null || true
echo
echo "keys: $keys (50 B keys, 500 B values); data dir after the load: $((disk / 1000000)) MB"
awk -v s="$s0" -v e="$s1" 'BEGIN{printf "restart to ready: %.2f s\n", e-s}'
grep -o 'recovered.*' "$work/big2.err" | sed 's/^/  /'
awk -v r="$rss_kb" -v k="$keys" 'BEGIN{printf "RSS with all values cached: %.0f MB, %.0f B per key\n", r/1024, r*1024/k}'
echo "($(date -u +%F), $(nproc) CPUs)"
