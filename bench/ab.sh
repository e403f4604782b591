#!/usr/bin/env bash
# A/B of two builds of the node on one machine, alternated so that drift hits both alike: the
# server pinned to CPU 0 (`--cores 1`, default durability), the load generator to CPU 1, 100k
# keys preloaded, 50 connections, 5 s per run. Prints ops/s and server CPU microseconds per
# request (from /proc) for GET P16, SET P1 and SET P16, ROUNDS times each.
#
# usage: bench/ab.sh BEFORE_RELEASE_DIR AFTER_RELEASE_DIR [ROUNDS]
#   e.g. git worktree add /tmp/before <rev> && (cd /tmp/before && cargo build --release)
#        bench/ab.sh /tmp/before/target/release target/release
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
[ $# -ge 2 ] || { echo "usage: bench/ab.sh BEFORE_RELEASE_DIR AFTER_RELEASE_DIR [ROUNDS]" >&2; exit 2; }
before=$1 after=$2 rounds=${3:-3}
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true

run() { # bin mix pipeline -> "ops cpu_us_per_op"
  local bin=$1 mix=$2 pl=$3 port pid t0 t1 out ops
  port=$(free_port)
  rm -rf "$work/data"
  taskset -c 0 "$bin/corekv" serve --cores 1 --resp-listen off --http-listen off \
    --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/out" 2>"$work/err" &
  pid=$!; pids+=("$pid"); wait_ready "$work/out"
  taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$port" --keys 100000 --preload \
    --mix set=1 --duration 1 --warmup 0 >/dev/null 2>&1
  t0=$(ticks "$pid")
  out=$(taskset -c 1 "$bin/corekv-loadgen" --addr "127.0.0.1:$port" --keys 100000 \
    --mix "$mix=1" --value-size 500 --connections 50 --pipeline "$pl" --duration 5 --warmup 1 \
    2>/dev/null)
  t1=$(ticks "$pid")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  ops=$(echo "$out" | awk -v op="$mix" '$1==op {print $3}')
  awk -v o="$ops" -v a="$t0" -v b="$t1" -v hz="$hz" \
    'BEGIN{printf "%8.0f ops/s %7.2f cpu_us/op", o, (b-a)/hz*1e6/(o*6)}'
}

for round in $(seq "$rounds"); do
  for shape in "get 16" "set 1" "set 16"; do
    set -- $shape
    printf "round %s %-4s P%-2s before %s\n" "$round" "$1" "$2" "$(run "$before" "$1" "$2")"
    printf "round %s %-4s P%-2s after  %s\n" "$round" "$1" "$2" "$(run "$after" "$1" "$2")"
  done
done
echo "$(date -u +%F): bench/ab.sh $before $after $rounds"
